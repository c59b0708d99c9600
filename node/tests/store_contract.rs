//! The contract every [`Store`] backend must honour, written once and run
//! against each backend.
//!
//! A backend joins the suite with one line, `store_contract!(name, fresh)`,
//! where `fresh` evaluates to `Option<Box<dyn TestDb>>`: a new, empty
//! database, or `None` when the backend is not available here (the test then
//! passes with a note, as ScyllaDB does without `SCYLLA_URI`). The macro
//! generates one `#[test]` per case in a module named after the backend, so
//! `cargo test --test store_contract sqlite::` runs one backend.
//!
//! Every case opens its own empty database. Handles opened on the same
//! database behave as separate processes would. A handle's transaction holds
//! the database until `commit`/`rollback`, so a case that uses two handles
//! from one thread ends the batch of one before using the other.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chat_node::store::scylla::{ScyllaOptions, ScyllaStore};
use chat_node::store::sqlite::{SqliteStore, SyncPolicy};
use chat_node::store::{
    Contact, Conversation, GroupInfo, NewMessage, Role, Store, StoreError, Target, Unread, UserId,
};

/// One empty database of some backend.
pub trait TestDb {
    /// A new handle on this database, as another process would open it.
    fn open(&self) -> Box<dyn Store>;

    /// Whether old messages leave by table TTL (ScyllaDB) rather than by
    /// `compact`: then `compact` deletes nothing and `pending_total` is not
    /// tracked (`None`), and the cases check exactly that instead.
    fn expires_by_ttl(&self) -> bool {
        false
    }
}

/// A SQLite database file in a temporary directory.
struct SqliteDb {
    dir: tempfile::TempDir,
    sync: SyncPolicy,
}

impl SqliteDb {
    fn fresh(sync: SyncPolicy) -> Option<Box<dyn TestDb>> {
        let dir = tempfile::tempdir().expect("temporary directory");
        Some(Box::new(SqliteDb { dir, sync }))
    }
}

impl TestDb for SqliteDb {
    fn open(&self) -> Box<dyn Store> {
        let path = self.dir.path().join("chat.db");
        Box::new(SqliteStore::open(&path, self.sync).expect("open sqlite store"))
    }
}

/// The variable naming the ScyllaDB cluster the suite runs against:
/// comma-separated `host:port` contact points.
const SCYLLA_URI: &str = "SCYLLA_URI";
const SCYLLA_SKIPPED: &str = "ScyllaDB backend skipped: set SCYLLA_URI=host:port to run the store contract suite against ScyllaDB";

/// A keyspace of its own on the cluster named by `SCYLLA_URI`, created with
/// the schema and dropped with this value.
struct ScyllaDb {
    options: ScyllaOptions,
}

impl ScyllaDb {
    fn fresh() -> Option<Box<dyn TestDb>> {
        let Ok(uri) = std::env::var(SCYLLA_URI) else {
            eprintln!("{SCYLLA_SKIPPED}");
            return None;
        };
        let options = ScyllaOptions {
            nodes: uri
                .split(',')
                .map(str::trim)
                .filter(|node| !node.is_empty())
                .map(str::to_owned)
                .collect(),
            keyspace: format!("chat_test_{:016x}", rand::random::<u64>()),
            replication: "1".into(),
            consistency: "one".into(),
            message_ttl: Duration::from_secs(86_400),
            history_retention: None,
            init_schema: true,
        };
        // The first handle creates the keyspace; the others open it as nodes
        // started without --init-schema do.
        drop(ScyllaStore::open(&options).expect("create the test keyspace"));
        Some(Box::new(ScyllaDb {
            options: ScyllaOptions {
                init_schema: false,
                ..options
            },
        }))
    }
}

impl TestDb for ScyllaDb {
    fn expires_by_ttl(&self) -> bool {
        true
    }

    fn open(&self) -> Box<dyn Store> {
        Box::new(ScyllaStore::open(&self.options).expect("open scylla store"))
    }
}

impl Drop for ScyllaDb {
    fn drop(&mut self) {
        let keyspace = &self.options.keyspace;
        let dropped = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|runtime| {
                runtime.block_on(async {
                    let session = ::scylla::client::session_builder::SessionBuilder::new()
                        .known_nodes(&self.options.nodes)
                        .build()
                        .await
                        .map_err(|e| e.to_string())?;
                    session
                        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                })
            });
        if let Err(e) = dropped {
            eprintln!("could not drop the test keyspace {keyspace}: {e}");
        }
    }
}

/// Generates the whole contract suite for one backend.
macro_rules! store_contract {
    ($backend:ident, $fresh:expr) => {
        mod $backend {
            use super::*;

            fn fresh() -> Option<Box<dyn TestDb>> {
                $fresh
            }

            store_contract!(@cases
                users_get_distinct_increasing_ids_and_unique_names,
                ids_are_never_reused_after_compaction,
                users_are_looked_up_by_id,
                one_session_per_user,
                leases_decide_who_is_online,
                friendship_is_mutual_and_shows_presence,
                groups_list_creator_first_then_join_order,
                friends_are_removed_both_ways,
                users_are_found_by_exact_name,
                leaving_hands_the_group_on_and_the_last_one_out_deletes_it,
                only_the_creator_removes_members,
                a_member_who_left_gets_no_more_group_messages,
                direct_history_pages_back_through_both_directions,
                group_history_starts_when_the_member_joined,
                read_positions_only_move_forward_and_count_readers,
                unread_counts_messages_from_others_above_the_read_position,
                groups_come_in_pages_of_a_member_budget,
                direct_messages_wait_in_order_until_acked,
                group_message_is_stored_once_for_its_members,
                pending_total_counts_unacked_deliveries,
                compact_deletes_only_what_everyone_acked,
                compact_works_in_slices_of_at_most_limit,
                committed_data_survives_reopening,
                rollback_discards_the_batch,
                two_handles_share_one_database,
                concurrent_handles_never_collide,
                domain_errors_leave_the_batch_usable,
            );
        }
    };
    (@cases $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                match fresh() {
                    Some(db) => cases::$case(&*db),
                    None => eprintln!("skipped: backend not configured"),
                }
            }
        )*
    };
}

store_contract!(sqlite, SqliteDb::fresh(SyncPolicy::Normal));
store_contract!(sqlite_full_sync, SqliteDb::fresh(SyncPolicy::Full));
store_contract!(scylla, ScyllaDb::fresh());

/// Says whether the `scylla::` cases above run against a server or pass
/// without one, so that the skip shows in the test list.
#[test]
fn scylla_backend_status() {
    match std::env::var(SCYLLA_URI) {
        Ok(uri) => {
            eprintln!("ScyllaDB backend: the scylla:: store contract cases run against {uri}")
        }
        Err(_) => eprintln!("{SCYLLA_SKIPPED}"),
    }
}

/// The cases, each on a fresh database.
mod cases {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA";
    const NOBODY: UserId = 999_999;

    fn user(s: &mut dyn Store, name: &str) -> UserId {
        s.create_user(name, HASH).expect("create user")
    }

    fn text(from: UserId, name: &str, to: Target, text: &str) -> NewMessage {
        NewMessage {
            sender_id: from,
            sender_name: name.to_owned(),
            target: to,
            time_ms: 1_700_000_000_000,
            text: text.to_owned(),
        }
    }

    fn send(s: &mut dyn Store, from: UserId, name: &str, to: Target, body: &str) -> u64 {
        s.append(&text(from, name, to, body)).expect("append").id
    }

    fn texts(s: &mut dyn Store, user: UserId) -> Vec<String> {
        s.pending(user, 0, 1000)
            .expect("pending")
            .into_iter()
            .map(|m| m.text)
            .collect()
    }

    /// Checks `pending_total`: `n` where the backend counts it, `None` where
    /// it does not ([`TestDb::expires_by_ttl`]).
    fn assert_total(db: &dyn TestDb, s: &mut dyn Store, n: u64) {
        let want = (!db.expires_by_ttl()).then_some(n);
        assert_eq!(s.pending_total().unwrap(), want, "pending_total");
    }

    /// Checks what `compact` deleted: `n` where the backend compacts, nothing
    /// where messages leave by TTL.
    fn assert_compacted(db: &dyn TestDb, s: &mut dyn Store, n: u64) {
        let want = if db.expires_by_ttl() { 0 } else { n };
        assert_eq!(s.compact(usize::MAX).unwrap(), want, "compact");
    }

    /// Gives each node a lease that outlives the case.
    fn live(s: &mut dyn Store, nodes: &[&str]) {
        for node in nodes {
            s.renew_lease(node, Duration::from_secs(3600)).unwrap();
        }
    }

    fn member_names(g: &GroupInfo) -> Vec<(&str, Role)> {
        g.members
            .iter()
            .map(|m| (m.name.as_str(), m.role))
            .collect()
    }

    pub fn users_get_distinct_increasing_ids_and_unique_names(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        let bob = user(&mut *s, "bob");
        let carol = user(&mut *s, "carol");
        assert!(alice > 0 && alice < bob && bob < carol);

        assert_eq!(s.create_user("alice", HASH), Err(StoreError::NameTaken));
        s.commit().unwrap();
        assert_eq!(
            s.create_user("bob", "other hash"),
            Err(StoreError::NameTaken)
        );

        // The refusal cost nothing: the next name gets the next id.
        let dave = user(&mut *s, "dave");
        assert!(dave > carol);
        s.commit().unwrap();
        assert_eq!(s.user(bob).unwrap().unwrap().password_hash, HASH);
    }

    pub fn ids_are_never_reused_after_compaction(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        let bob = user(&mut *s, "bob");
        let first = send(&mut *s, bob, "bob", Target::User(alice), "one");
        let last = send(&mut *s, bob, "bob", Target::User(alice), "two");
        s.ack(alice, last).unwrap();
        s.commit().unwrap();
        // The newest message stays until a newer one is stored: its id is
        // the base of the next (SQLite).
        assert_compacted(db, &mut *s, 1);
        s.commit().unwrap();
        drop(s);

        // With every message acknowledged and compacted, and across a
        // reopen, ids go on.
        let mut s = db.open();
        assert!(s.pending(alice, 0, 10).unwrap().is_empty());
        let next = send(&mut *s, alice, "alice", Target::User(bob), "three");
        assert!(next > last && last > first, "{next} after {last}");
        let carol = user(&mut *s, "carol");
        assert!(carol > bob);
        s.commit().unwrap();
    }

    pub fn users_are_looked_up_by_id(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = s.create_user("alice", "hash-a").unwrap();
        let bob = s.create_user("bob", "hash-b").unwrap();
        s.commit().unwrap();

        let found = s.user(bob).unwrap().unwrap();
        assert_eq!((found.id, found.name.as_str()), (bob, "bob"));
        assert_eq!(found.password_hash, "hash-b");
        assert_eq!(s.user(alice).unwrap().unwrap().name, "alice");
        assert_eq!(s.user(NOBODY).unwrap(), None);
        assert_eq!(s.user(0).unwrap(), None);
        assert_eq!(s.user(u64::MAX).unwrap(), None);
        s.commit().unwrap();
    }

    pub fn one_session_per_user(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        let bob = user(&mut *s, "bob");
        let carol = user(&mut *s, "carol");

        live(&mut *s, &["node-1", "node-2"]);
        s.claim_session(alice, "node-1", 7).unwrap();
        assert_eq!(
            s.claim_session(alice, "node-2", 1),
            Err(StoreError::AlreadyOnline(alice))
        );
        assert_eq!(
            s.claim_session(NOBODY, "node-1", 1),
            Err(StoreError::UnknownUser(NOBODY))
        );

        // Only the holder of the claim (node and epoch) releases it.
        assert!(!s.release_session(alice, "node-1", 6).unwrap());
        assert!(!s.release_session(alice, "node-2", 7).unwrap());
        assert_eq!(
            s.claim_session(alice, "node-1", 8),
            Err(StoreError::AlreadyOnline(alice))
        );
        assert!(s.release_session(alice, "node-1", 7).unwrap());
        assert!(!s.release_session(alice, "node-1", 7).unwrap());
        s.claim_session(alice, "node-1", 8).unwrap();
        s.commit().unwrap();

        // A node restarting after a crash frees exactly its own claims.
        s.claim_session(carol, "node-1", 9).unwrap();
        s.claim_session(bob, "node-2", 3).unwrap();
        assert_eq!(s.release_node("node-1").unwrap(), vec![alice, carol]);
        assert!(s.release_node("node-1").unwrap().is_empty());
        s.claim_session(alice, "node-2", 4).unwrap();
        assert_eq!(
            s.claim_session(bob, "node-1", 10),
            Err(StoreError::AlreadyOnline(bob))
        );
        s.commit().unwrap();
        assert_eq!(s.release_node("node-2").unwrap(), vec![alice, bob]);
        s.commit().unwrap();
    }

    pub fn leases_decide_who_is_online(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        let bob = user(&mut *s, "bob");
        let carol = user(&mut *s, "carol");
        s.add_friend(alice, bob).unwrap();
        s.add_friend(alice, carol).unwrap();
        live(&mut *s, &["steady"]);
        s.renew_lease("brief", Duration::from_millis(300)).unwrap();
        s.claim_session(bob, "brief", 1).unwrap();
        s.claim_session(carol, "steady", 1).unwrap();
        s.commit().unwrap();

        assert_eq!(s.session_node(bob).unwrap().as_deref(), Some("brief"));
        assert_eq!(s.session_node(alice).unwrap(), None);
        assert_eq!(s.session_node(NOBODY).unwrap(), None);
        let online = |s: &mut dyn Store| -> Vec<bool> {
            s.friends(alice).unwrap().iter().map(|c| c.online).collect()
        };
        assert_eq!(online(&mut *s), vec![true, true]);
        assert!(s.expired_nodes().unwrap().is_empty());
        assert_eq!(
            s.claim_session(bob, "steady", 2),
            Err(StoreError::AlreadyOnline(bob))
        );
        s.commit().unwrap();

        // Once its lease is over, a node's claims no longer count.
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(s.session_node(bob).unwrap(), None);
        assert_eq!(online(&mut *s), vec![false, true]);
        assert_eq!(s.expired_nodes().unwrap(), vec!["brief".to_string()]);
        s.commit().unwrap();

        // A login elsewhere takes the claim over; the dead node's release
        // leaves it alone.
        s.claim_session(bob, "steady", 2).unwrap();
        assert_eq!(s.session_node(bob).unwrap().as_deref(), Some("steady"));
        assert!(s.expired_nodes().unwrap().is_empty());
        assert!(s.release_node("brief").unwrap().is_empty());
        assert!(!s.release_session(bob, "brief", 1).unwrap());
        assert_eq!(online(&mut *s), vec![true, true]);
        s.commit().unwrap();

        // A claim counts from the moment its node's lease is live again.
        s.claim_session(alice, "brief", 3).unwrap();
        assert_eq!(s.session_node(alice).unwrap(), None);
        s.renew_lease("brief", Duration::from_secs(3600)).unwrap();
        assert_eq!(s.session_node(alice).unwrap().as_deref(), Some("brief"));
        s.end_lease("steady").unwrap();
        assert_eq!(online(&mut *s), vec![false, false]);
        assert_eq!(s.expired_nodes().unwrap(), vec!["steady".to_string()]);
        assert_eq!(s.release_node("steady").unwrap(), vec![bob, carol]);
        assert!(s.expired_nodes().unwrap().is_empty());
        s.commit().unwrap();
    }

    pub fn friendship_is_mutual_and_shows_presence(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        let bob = user(&mut *s, "bob");
        let carol = user(&mut *s, "carol");
        live(&mut *s, &["node-1"]);
        s.claim_session(bob, "node-1", 1).unwrap();

        let contact = s.add_friend(alice, bob).unwrap();
        assert_eq!(
            contact,
            Contact {
                id: bob,
                name: "bob".into(),
                online: true
            }
        );
        let offline = s.add_friend(carol, alice).unwrap();
        assert_eq!((offline.id, offline.online), (alice, false));
        s.commit().unwrap();
        // The counts the friend limit uses.
        assert_eq!(s.friend_count(alice).unwrap(), 2);
        assert_eq!(s.friend_count(bob).unwrap(), 1);

        let alice_friends = s.friends(alice).unwrap();
        assert_eq!(
            alice_friends
                .iter()
                .map(|c| (c.id, c.online))
                .collect::<Vec<_>>(),
            vec![(bob, true), (carol, false)]
        );
        let bob_friends = s.friends(bob).unwrap();
        assert_eq!(bob_friends.len(), 1);
        assert_eq!((bob_friends[0].id, bob_friends[0].online), (alice, false));

        assert_eq!(
            s.add_friend(bob, alice),
            Err(StoreError::AlreadyFriends(bob, alice))
        );
        assert_eq!(
            s.add_friend(alice, NOBODY),
            Err(StoreError::UnknownUser(NOBODY))
        );
        assert_eq!(
            s.add_friend(NOBODY, alice),
            Err(StoreError::UnknownUser(NOBODY))
        );
        // Callers refuse self-friendship first; the store refuses it too,
        // with a domain error that leaves the batch usable.
        let own = s.add_friend(alice, alice).unwrap_err();
        assert!(!matches!(own, StoreError::Backend(_)), "{own:?}");
        assert!(s.friends(alice).unwrap().iter().all(|c| c.id != alice));

        assert!(s.release_session(bob, "node-1", 1).unwrap());
        assert!(!s.friends(alice).unwrap()[0].online);
        s.commit().unwrap();
    }

    pub fn friends_are_removed_both_ways(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        let bob = user(&mut *s, "bob");
        let carol = user(&mut *s, "carol");
        s.add_friend(alice, bob).unwrap();
        s.add_friend(alice, carol).unwrap();
        s.commit().unwrap();
        s.remove_friend(bob, alice).unwrap();
        s.commit().unwrap();
        let ids = |s: &mut dyn Store, u| {
            s.friends(u)
                .unwrap()
                .iter()
                .map(|c| c.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&mut *s, alice), vec![carol]);
        assert!(ids(&mut *s, bob).is_empty());
        assert_eq!(s.friend_count(alice).unwrap(), 1);
        assert_eq!(
            s.remove_friend(alice, bob),
            Err(StoreError::NotFriends(alice, bob))
        );
        assert_eq!(
            s.remove_friend(alice, NOBODY),
            Err(StoreError::NotFriends(alice, NOBODY))
        );
        // Friends again after removal.
        s.add_friend(bob, alice).unwrap();
        s.commit().unwrap();
        assert_eq!(ids(&mut *s, bob), vec![alice]);
    }

    pub fn users_are_found_by_exact_name(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        user(&mut *s, "alice2");
        live(&mut *s, &["node-1"]);
        s.claim_session(alice, "node-1", 1).unwrap();
        s.commit().unwrap();
        assert_eq!(
            s.find_user("alice").unwrap(),
            Some(Contact {
                id: alice,
                name: "alice".into(),
                online: true
            })
        );
        assert_eq!(s.find_user("alic").unwrap(), None, "no prefix match");
        assert_eq!(s.find_user("ALICE").unwrap(), None, "exact");
        assert_eq!(s.find_user("").unwrap(), None);
    }

    pub fn leaving_hands_the_group_on_and_the_last_one_out_deletes_it(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        let bob = user(&mut *s, "bob");
        let carol = user(&mut *s, "carol");
        let g = s.create_group(alice, "g", "d").unwrap();
        s.join_group(g, bob).unwrap();
        s.join_group(g, carol).unwrap();
        s.commit().unwrap();

        // The creator leaves: bob, the longest-standing member, takes over.
        s.leave_group(g, alice).unwrap();
        s.commit().unwrap();
        let info = s.group(g).unwrap().expect("the group stays");
        assert_eq!(
            member_names(&info),
            vec![("bob", Role::Creator), ("carol", Role::Normal)]
        );
        assert_eq!(
            s.leave_group(g, alice),
            Err(StoreError::NotAMember {
                user: alice,
                group: g
            }),
            "leaving twice"
        );
        assert!(s.groups(alice).unwrap().is_empty());
        assert_eq!(s.group_count(alice).unwrap(), 0);
        // The new creator may remove members.
        s.remove_member(g, bob, carol).unwrap();
        s.commit().unwrap();
        // The last one out: the group is gone and its id is not reused; its
        // messages go with it.
        send(&mut *s, bob, "bob", Target::Group(g), "last words");
        s.leave_group(g, bob).unwrap();
        // A newer message: compaction keeps the newest one.
        send(&mut *s, carol, "carol", Target::User(bob), "later");
        s.commit().unwrap();
        assert_compacted(db, &mut *s, 1);
        assert_eq!(s.group(g).unwrap(), None);
        assert_eq!(s.leave_group(g, bob), Err(StoreError::UnknownGroup(g)));
        assert_eq!(
            s.join_group(g, carol),
            Err(StoreError::UnknownGroup(g)),
            "a deleted group can not be joined"
        );
        let next = s.create_group(carol, "h", "").unwrap();
        assert!(next > g, "group ids are never reused");
        s.commit().unwrap();
    }

    pub fn only_the_creator_removes_members(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        let bob = user(&mut *s, "bob");
        let carol = user(&mut *s, "carol");
        let g = s.create_group(alice, "g", "").unwrap();
        s.join_group(g, bob).unwrap();
        s.join_group(g, carol).unwrap();
        s.commit().unwrap();
        assert_eq!(
            s.remove_member(g, bob, carol),
            Err(StoreError::NotCreator {
                user: bob,
                group: g
            })
        );
        assert_eq!(
            s.remove_member(g, alice, NOBODY),
            Err(StoreError::NotAMember {
                user: NOBODY,
                group: g
            })
        );
        assert_eq!(
            s.remove_member(g + 1000, alice, bob),
            Err(StoreError::UnknownGroup(g + 1000))
        );
        s.remove_member(g, alice, bob).unwrap();
        s.commit().unwrap();
        let info = s.group(g).unwrap().unwrap();
        assert_eq!(
            member_names(&info),
            vec![("alice", Role::Creator), ("carol", Role::Normal)]
        );
        assert_eq!(
            s.remove_member(g, alice, bob),
            Err(StoreError::NotAMember {
                user: bob,
                group: g
            }),
            "removed twice"
        );
        // A removed member may join again (as a new member).
        s.join_group(g, bob).unwrap();
        s.commit().unwrap();
        assert_eq!(s.member_count(g).unwrap(), 3);
    }

    pub fn a_member_who_left_gets_no_more_group_messages(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        let bob = user(&mut *s, "bob");
        let carol = user(&mut *s, "carol");
        let g = s.create_group(alice, "g", "").unwrap();
        s.join_group(g, bob).unwrap();
        s.join_group(g, carol).unwrap();
        s.commit().unwrap();
        send(&mut *s, alice, "alice", Target::Group(g), "before");
        s.leave_group(g, bob).unwrap();
        s.remove_member(g, alice, carol).unwrap();
        s.commit().unwrap();
        send(&mut *s, alice, "alice", Target::Group(g), "after");
        for (who, why) in [(bob, "bob left"), (carol, "carol was removed")] {
            assert!(!texts(&mut *s, who).contains(&"after".to_owned()), "{why}");
        }
        assert_eq!(s.group_members(g).unwrap(), vec![alice]);
        let refused = s.append(&text(bob, "bob", Target::Group(g), "hi"));
        assert_eq!(
            refused,
            Err(StoreError::NotAMember {
                user: bob,
                group: g
            })
        );
    }

    fn page_texts(page: &chat_node::store::HistoryPage) -> Vec<&str> {
        page.messages.iter().map(|m| m.text.as_str()).collect()
    }

    pub fn direct_history_pages_back_through_both_directions(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        let bob = user(&mut *s, "bob");
        let carol = user(&mut *s, "carol");
        for i in 0..4 {
            send(&mut *s, alice, "alice", Target::User(bob), &format!("a{i}"));
            send(&mut *s, bob, "bob", Target::User(alice), &format!("b{i}"));
        }
        // Other conversations never show.
        send(&mut *s, alice, "alice", Target::User(carol), "to carol");
        send(&mut *s, carol, "carol", Target::User(bob), "carol to bob");
        s.commit().unwrap();
        // Acknowledged messages are history too.
        let last = s.pending(bob, 0, 100).unwrap().last().unwrap().id;
        s.ack(bob, last).unwrap();
        s.commit().unwrap();

        let first = s
            .history(alice, Conversation::Direct(bob), None, 3)
            .unwrap();
        assert_eq!(page_texts(&first), vec!["b3", "a3", "b2"]);
        assert!(first.more);
        let before = first.messages.last().unwrap().id;
        let second = s
            .history(alice, Conversation::Direct(bob), Some(before), 10)
            .unwrap();
        assert_eq!(page_texts(&second), vec!["a2", "b1", "a1", "b0", "a0"]);
        assert!(!second.more);
        // The same conversation from the other side, and an exact fit.
        let theirs = s
            .history(bob, Conversation::Direct(alice), None, 8)
            .unwrap();
        assert_eq!(theirs.messages.len(), 8);
        assert!(!theirs.more, "exactly 8: nothing older");
        assert_eq!(
            s.history(alice, Conversation::Direct(NOBODY), None, 10),
            Err(StoreError::UnknownUser(NOBODY))
        );
        let none = s
            .history(alice, Conversation::Direct(alice), None, 10)
            .unwrap();
        assert!(none.messages.is_empty() && !none.more);
        // A message to oneself is a conversation with oneself.
        send(&mut *s, carol, "carol", Target::User(carol), "note to self");
        let own = s
            .history(carol, Conversation::Direct(carol), None, 10)
            .unwrap();
        assert_eq!(page_texts(&own), vec!["note to self"]);
        s.commit().unwrap();
    }

    pub fn group_history_starts_when_the_member_joined(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        let bob = user(&mut *s, "bob");
        let dave = user(&mut *s, "dave");
        let g = s.create_group(alice, "g", "").unwrap();
        let other = s.create_group(alice, "other", "").unwrap();
        s.commit().unwrap();
        send(&mut *s, alice, "alice", Target::Group(g), "before bob");
        send(&mut *s, alice, "alice", Target::Group(other), "elsewhere");
        s.commit().unwrap();
        s.join_group(g, bob).unwrap();
        s.commit().unwrap();
        send(&mut *s, bob, "bob", Target::Group(g), "bob here");
        send(&mut *s, alice, "alice", Target::Group(g), "welcome");
        s.commit().unwrap();
        let bobs = s.history(bob, Conversation::Group(g), None, 10).unwrap();
        assert_eq!(page_texts(&bobs), vec!["welcome", "bob here"]);
        assert_eq!(bobs.read_up_to, 0);
        let alices = s.history(alice, Conversation::Group(g), None, 2).unwrap();
        assert_eq!(page_texts(&alices), vec!["welcome", "bob here"]);
        assert!(alices.more);
        assert_eq!(
            s.history(dave, Conversation::Group(g), None, 10),
            Err(StoreError::NotAMember {
                user: dave,
                group: g
            })
        );
        assert_eq!(
            s.history(alice, Conversation::Group(g + 1000), None, 10),
            Err(StoreError::UnknownGroup(g + 1000))
        );
        // Once out of the group, no more history.
        s.leave_group(g, bob).unwrap();
        s.commit().unwrap();
        assert_eq!(
            s.history(bob, Conversation::Group(g), None, 10),
            Err(StoreError::NotAMember {
                user: bob,
                group: g
            })
        );
    }

    pub fn read_positions_only_move_forward_and_count_readers(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        let bob = user(&mut *s, "bob");
        let carol = user(&mut *s, "carol");
        let m1 = send(&mut *s, alice, "alice", Target::User(bob), "1");
        let m2 = send(&mut *s, alice, "alice", Target::User(bob), "2");
        s.commit().unwrap();
        assert!(s.mark_read(bob, Conversation::Direct(alice), m2).unwrap());
        assert!(
            !s.mark_read(bob, Conversation::Direct(alice), m1).unwrap(),
            "never back"
        );
        assert!(
            !s.mark_read(bob, Conversation::Direct(alice), m2).unwrap(),
            "same"
        );
        assert_eq!(
            s.mark_read(bob, Conversation::Direct(alice), m2 + 1000),
            Err(StoreError::BeyondNewest {
                up_to: m2 + 1000,
                newest: m2
            })
        );
        assert_eq!(
            s.mark_read(bob, Conversation::Direct(NOBODY), 1),
            Err(StoreError::UnknownUser(NOBODY))
        );
        s.commit().unwrap();
        // Alice sees how far bob read; bob's own page shows alice's (none).
        let page = s
            .history(alice, Conversation::Direct(bob), None, 10)
            .unwrap();
        assert_eq!(page.read_up_to, m2);
        let page = s
            .history(bob, Conversation::Direct(alice), None, 10)
            .unwrap();
        assert_eq!(page.read_up_to, 0);

        let g = s.create_group(alice, "g", "").unwrap();
        s.join_group(g, bob).unwrap();
        s.join_group(g, carol).unwrap();
        s.commit().unwrap();
        let g1 = send(&mut *s, alice, "alice", Target::Group(g), "g1");
        let g2 = send(&mut *s, alice, "alice", Target::Group(g), "g2");
        s.commit().unwrap();
        assert!(s.mark_read(bob, Conversation::Group(g), g2).unwrap());
        assert!(s.mark_read(carol, Conversation::Group(g), g1).unwrap());
        s.commit().unwrap();
        assert_eq!(s.readers(alice, g, g1).unwrap(), (2, 3));
        assert_eq!(s.readers(alice, g, g2).unwrap(), (1, 3));
        let dave = user(&mut *s, "dave");
        assert_eq!(
            s.readers(dave, g, g1),
            Err(StoreError::NotAMember {
                user: dave,
                group: g
            })
        );
        assert_eq!(
            s.mark_read(dave, Conversation::Group(g), g1),
            Err(StoreError::NotAMember {
                user: dave,
                group: g
            })
        );
        // A member who leaves is no longer counted.
        s.leave_group(g, bob).unwrap();
        s.commit().unwrap();
        assert_eq!(s.readers(alice, g, g1).unwrap(), (1, 2));
    }

    pub fn unread_counts_messages_from_others_above_the_read_position(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        let bob = user(&mut *s, "bob");
        let carol = user(&mut *s, "carol");
        let g = s.create_group(alice, "g", "").unwrap();
        s.join_group(g, bob).unwrap();
        s.commit().unwrap();
        assert!(s.unread(bob).unwrap().is_empty());
        let mut last = 0;
        for i in 0..3 {
            last = send(&mut *s, alice, "alice", Target::User(bob), &format!("{i}"));
        }
        send(&mut *s, carol, "carol", Target::User(bob), "c");
        send(
            &mut *s,
            bob,
            "bob",
            Target::User(alice),
            "own messages are not unread",
        );
        send(&mut *s, alice, "alice", Target::Group(g), "g1");
        send(&mut *s, bob, "bob", Target::Group(g), "own");
        s.commit().unwrap();
        let mut want = vec![
            Unread {
                conversation: Conversation::Direct(alice),
                count: 3,
            },
            Unread {
                conversation: Conversation::Direct(carol),
                count: 1,
            },
            Unread {
                conversation: Conversation::Group(g),
                count: 1,
            },
        ];
        let sorted = |mut v: Vec<Unread>| {
            v.sort_by_key(|u| u.conversation);
            v
        };
        assert_eq!(sorted(s.unread(bob).unwrap()), want);
        s.mark_read(bob, Conversation::Direct(alice), last - 1)
            .unwrap();
        s.commit().unwrap();
        want[0].count = 1;
        assert_eq!(sorted(s.unread(bob).unwrap()), want);
        s.mark_read(bob, Conversation::Direct(alice), last).unwrap();
        s.commit().unwrap();
        want.remove(0);
        assert_eq!(sorted(s.unread(bob).unwrap()), want);
        // Alice's unread: bob's direct message and nothing from the group
        // but bob's message there.
        assert_eq!(
            sorted(s.unread(alice).unwrap()),
            vec![
                Unread {
                    conversation: Conversation::Direct(bob),
                    count: 1
                },
                Unread {
                    conversation: Conversation::Group(g),
                    count: 1
                }
            ]
        );
    }

    pub fn groups_come_in_pages_of_a_member_budget(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        let bob = user(&mut *s, "bob");
        let small = s.create_group(alice, "small", "").unwrap();
        let big = s.create_group(alice, "big", "").unwrap();
        s.join_group(big, bob).unwrap();
        let last = s.create_group(alice, "last", "").unwrap();
        s.commit().unwrap();
        let ids = |page: Vec<GroupInfo>| page.iter().map(|g| g.id).collect::<Vec<_>>();
        assert_eq!(ids(s.groups_page(alice, 0, 2).unwrap()), vec![small]);
        assert_eq!(ids(s.groups_page(alice, 0, 3).unwrap()), vec![small, big]);
        assert_eq!(
            ids(s.groups_page(alice, small, 1).unwrap()),
            vec![big],
            "at least one"
        );
        assert_eq!(ids(s.groups_page(alice, big, 100).unwrap()), vec![last]);
        assert!(s.groups_page(alice, last, 100).unwrap().is_empty());
        assert_eq!(
            s.groups_page(alice, 0, 100).unwrap(),
            s.groups(alice).unwrap(),
            "a page is what `groups` shows"
        );
        s.commit().unwrap();
    }

    pub fn groups_list_creator_first_then_join_order(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        let bob = user(&mut *s, "bob");
        let carol = user(&mut *s, "carol");
        let dave = user(&mut *s, "dave");

        let rust = s.create_group(carol, "rust", "crabs only").unwrap();
        assert_eq!(s.group_members(rust).unwrap(), vec![carol]);
        live(&mut *s, &["node-1"]);
        s.claim_session(alice, "node-1", 1).unwrap();
        let joined = s.join_group(rust, alice).unwrap();
        assert_eq!((joined.id, joined.name.as_str()), (rust, "rust"));
        assert_eq!(joined.description, "crabs only");
        assert_eq!(
            member_names(&joined),
            vec![("carol", Role::Creator), ("alice", Role::Normal)]
        );
        assert!(joined.members[1].online && !joined.members[0].online);
        let joined = s.join_group(rust, bob).unwrap();
        assert_eq!(
            member_names(&joined),
            vec![
                ("carol", Role::Creator),
                ("alice", Role::Normal),
                ("bob", Role::Normal)
            ]
        );
        s.commit().unwrap();
        // The counts the group limits use.
        assert_eq!(s.member_count(rust).unwrap(), 3);
        assert_eq!(s.group_count(alice).unwrap(), 1);
        assert_eq!(s.group_count(carol).unwrap(), 1);

        assert_eq!(
            s.join_group(rust, bob),
            Err(StoreError::AlreadyMember {
                user: bob,
                group: rust
            })
        );
        assert_eq!(
            s.join_group(rust, carol),
            Err(StoreError::AlreadyMember {
                user: carol,
                group: rust
            })
        );
        assert_eq!(
            s.join_group(rust + 1000, dave),
            Err(StoreError::UnknownGroup(rust + 1000))
        );
        assert_eq!(
            s.join_group(rust, NOBODY),
            Err(StoreError::UnknownUser(NOBODY))
        );
        assert_eq!(
            s.create_group(NOBODY, "ghosts", ""),
            Err(StoreError::UnknownUser(NOBODY))
        );
        assert_eq!(
            s.group_members(rust + 1000),
            Err(StoreError::UnknownGroup(rust + 1000))
        );

        let go = s.create_group(bob, "go", "gophers").unwrap();
        assert!(go > rust);
        s.commit().unwrap();

        assert_eq!(s.group_members(rust).unwrap(), vec![carol, alice, bob]);
        let bobs: Vec<_> = s.groups(bob).unwrap();
        assert_eq!(
            bobs.iter().map(|g| g.id).collect::<Vec<_>>(),
            vec![rust, go]
        );
        assert_eq!(member_names(&bobs[1]), vec![("bob", Role::Creator)]);
        assert_eq!(bobs[0].members.len(), 3);
        assert_eq!(s.groups(alice).unwrap().len(), 1);
        assert!(s.groups(dave).unwrap().is_empty());
        s.commit().unwrap();
    }

    pub fn direct_messages_wait_in_order_until_acked(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        let bob = user(&mut *s, "bob");
        let carol = user(&mut *s, "carol");

        let m1 = s
            .append(&NewMessage {
                sender_id: bob,
                sender_name: "bob".into(),
                target: Target::User(alice),
                time_ms: 42,
                text: "hi alice".into(),
            })
            .unwrap();
        assert_eq!((m1.recipient_id, m1.group_id), (alice, 0));
        let m2 = send(
            &mut *s,
            carol,
            "carol",
            Target::User(alice),
            "hello from carol",
        );
        let _to_bob = send(&mut *s, carol, "carol", Target::User(bob), "bob only");
        let m3 = send(&mut *s, bob, "bob", Target::User(alice), "are you there?");
        let note = send(&mut *s, alice, "alice", Target::User(alice), "note to self");
        assert!(m1.id < m2 && m2 < m3 && m3 < note);
        s.commit().unwrap();

        let pending = s.pending(alice, 0, 100).unwrap();
        assert_eq!(pending[0], m1);
        // The count the mailbox cap uses: direct messages waiting, at most `limit`.
        assert_eq!(s.pending_direct(alice, 100).unwrap(), 4);
        assert_eq!(s.pending_direct(alice, 2).unwrap(), 2);
        assert_eq!(s.pending_direct(bob, 100).unwrap(), 1);
        assert_eq!(
            texts(&mut *s, alice),
            vec![
                "hi alice",
                "hello from carol",
                "are you there?",
                "note to self"
            ]
        );
        assert_eq!(pending[1].sender_name, "carol");

        // `limit` keeps the oldest; `after` skips what was already pushed.
        let first_two: Vec<_> = s
            .pending(alice, 0, 2)
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(first_two, vec![m1.id, m2]);
        let later: Vec<_> = s
            .pending(alice, m2, 100)
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(later, vec![m3, note]);
        assert!(s.pending(alice, note, 100).unwrap().is_empty());
        assert!(s.pending(alice, 0, 0).unwrap().is_empty());

        // Acks move the cursor up, never down.
        assert_eq!(s.cursor(alice).unwrap(), 0);
        s.ack(alice, m2).unwrap();
        assert_eq!(s.cursor(alice).unwrap(), m2);
        s.ack(alice, m1.id).unwrap();
        assert_eq!(s.cursor(alice).unwrap(), m2);
        s.commit().unwrap();
        assert_eq!(
            texts(&mut *s, alice),
            vec!["are you there?", "note to self"]
        );
        assert_eq!(
            s.pending_direct(alice, 100).unwrap(),
            2,
            "acked ones leave the count"
        );
        // `after` below the cursor does not bring acked messages back.
        assert_eq!(s.pending(alice, m1.id, 100).unwrap().len(), 2);
        assert_eq!(texts(&mut *s, bob), vec!["bob only"]);

        assert_eq!(
            s.append(&text(alice, "alice", Target::User(NOBODY), "void")),
            Err(StoreError::UnknownUser(NOBODY))
        );
        assert_eq!(
            s.pending(NOBODY, 0, 10),
            Err(StoreError::UnknownUser(NOBODY))
        );
        assert_eq!(s.ack(NOBODY, 1), Err(StoreError::UnknownUser(NOBODY)));
        assert_eq!(s.cursor(NOBODY), Err(StoreError::UnknownUser(NOBODY)));
        s.commit().unwrap();
    }

    pub fn group_message_is_stored_once_for_its_members(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        let bob = user(&mut *s, "bob");
        let carol = user(&mut *s, "carol");
        let dave = user(&mut *s, "dave");
        let g = s.create_group(alice, "book club", "").unwrap();
        s.join_group(g, bob).unwrap();
        s.claim_session(bob, "node-1", 1).unwrap();

        let before = s
            .append(&text(alice, "alice", Target::Group(g), "first chapter"))
            .unwrap();
        assert_eq!((before.recipient_id, before.group_id), (0, g));
        s.join_group(g, carol).unwrap();
        let after = send(&mut *s, bob, "bob", Target::Group(g), "second chapter");
        s.commit().unwrap();

        // Carol joined after the first message: she gets only the second.
        assert_eq!(texts(&mut *s, carol), vec!["second chapter"]);
        // Nobody gets their own message back; online or not, members get
        // the same stored message.
        assert_eq!(texts(&mut *s, bob), vec!["first chapter"]);
        assert_eq!(texts(&mut *s, alice), vec!["second chapter"]);
        assert_eq!(s.pending(alice, 0, 10).unwrap()[0].id, after);
        assert_eq!(s.pending(carol, 0, 10).unwrap()[0].id, after);
        assert_eq!(s.pending(bob, 0, 10).unwrap()[0], before);
        assert!(texts(&mut *s, dave).is_empty());

        assert_eq!(
            s.append(&text(dave, "dave", Target::Group(g), "let me in")),
            Err(StoreError::NotAMember {
                user: dave,
                group: g
            })
        );
        assert_eq!(
            s.append(&text(dave, "dave", Target::Group(g + 100), "anyone?")),
            Err(StoreError::UnknownGroup(g + 100))
        );

        // Group and direct messages interleave by id; `after` applies to both.
        let direct = send(&mut *s, dave, "dave", Target::User(carol), "psst");
        let third = send(&mut *s, alice, "alice", Target::Group(g), "third chapter");
        s.commit().unwrap();
        assert_eq!(
            texts(&mut *s, carol),
            vec!["second chapter", "psst", "third chapter"]
        );
        let ids: Vec<_> = s
            .pending(carol, after, 10)
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, vec![direct, third]);
        let ids: Vec<_> = s
            .pending(carol, 0, 2)
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, vec![after, direct]);
        s.ack(carol, direct).unwrap();
        assert_eq!(texts(&mut *s, carol), vec!["third chapter"]);
        s.commit().unwrap();
    }

    pub fn pending_total_counts_unacked_deliveries(db: &dyn TestDb) {
        let mut s = db.open();
        assert_total(db, &mut *s, 0);
        let alice = user(&mut *s, "alice");
        let bob = user(&mut *s, "bob");
        let carol = user(&mut *s, "carol");
        let g = s.create_group(alice, "trio", "").unwrap();
        s.join_group(g, bob).unwrap();
        s.join_group(g, carol).unwrap();

        let direct = send(&mut *s, bob, "bob", Target::User(alice), "hi");
        let grouped = send(&mut *s, alice, "alice", Target::Group(g), "hello all");
        // One direct delivery, two group deliveries (not to the sender).
        assert_total(db, &mut *s, 3);
        s.commit().unwrap();

        // A late joiner adds nothing for older messages.
        let dave = user(&mut *s, "dave");
        s.join_group(g, dave).unwrap();
        assert_total(db, &mut *s, 3);

        s.ack(alice, direct).unwrap();
        assert_total(db, &mut *s, 2);
        s.ack(bob, grouped).unwrap();
        assert_total(db, &mut *s, 1);
        s.ack(carol, grouped).unwrap();
        assert_total(db, &mut *s, 0);
        s.commit().unwrap();

        send(&mut *s, dave, "dave", Target::Group(g), "late hello");
        assert_total(db, &mut *s, 3);
        s.commit().unwrap();
    }

    pub fn compact_works_in_slices_of_at_most_limit(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        let bob = user(&mut *s, "bob");
        let mut last = 0;
        for i in 0..5 {
            last = send(&mut *s, bob, "bob", Target::User(alice), &format!("m{i}"));
        }
        // The newest message, waiting: compaction keeps the newest.
        send(&mut *s, alice, "alice", Target::User(bob), "waiting");
        s.ack(alice, last).unwrap();
        s.commit().unwrap();
        let slices: Vec<u64> = (0..4).map(|_| s.compact(2).unwrap()).collect();
        s.commit().unwrap();
        if db.expires_by_ttl() {
            assert_eq!(slices, vec![0; 4]);
            assert!(texts(&mut *s, alice).is_empty(), "acked: nothing pending");
        } else {
            assert_eq!(slices, vec![2, 2, 1, 0]);
            assert!(texts(&mut *s, alice).is_empty());
        }
    }

    pub fn compact_deletes_only_what_everyone_acked(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        let bob = user(&mut *s, "bob");
        let carol = user(&mut *s, "carol");
        let g = s.create_group(alice, "pair", "").unwrap();
        s.join_group(g, bob).unwrap();

        let d1 = send(&mut *s, bob, "bob", Target::User(alice), "d1");
        let _d2 = send(&mut *s, bob, "bob", Target::User(alice), "d2");
        let gm = send(&mut *s, alice, "alice", Target::Group(g), "g1");
        let _to_carol = send(&mut *s, alice, "alice", Target::User(carol), "c1");
        // A late joiner, who never acks, does not hold back older messages.
        s.join_group(g, carol).unwrap();
        s.ack(alice, d1).unwrap();
        s.commit().unwrap();

        assert_compacted(db, &mut *s, 1);
        s.commit().unwrap();
        assert_eq!(texts(&mut *s, alice), vec!["d2"]);
        assert_eq!(texts(&mut *s, bob), vec!["g1"]);
        assert_eq!(texts(&mut *s, carol), vec!["c1"]);
        assert_total(db, &mut *s, 3);
        assert_compacted(db, &mut *s, 0);

        // Once every member is past the group message it goes, with the
        // direct message alice acknowledged on the way.
        s.ack(bob, gm).unwrap();
        s.ack(alice, gm).unwrap();
        assert_compacted(db, &mut *s, 2);
        s.commit().unwrap();
        assert!(texts(&mut *s, alice).is_empty());
        assert!(texts(&mut *s, bob).is_empty());
        assert_eq!(texts(&mut *s, carol), vec!["c1"]);
        assert_total(db, &mut *s, 1);
        s.commit().unwrap();
    }

    pub fn committed_data_survives_reopening(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        let bob = user(&mut *s, "bob");
        s.add_friend(alice, bob).unwrap();
        let g = s.create_group(alice, "keep", "kept").unwrap();
        s.join_group(g, bob).unwrap();
        let m1 = send(&mut *s, alice, "alice", Target::User(bob), "persist me");
        send(&mut *s, alice, "alice", Target::Group(g), "me too");
        s.ack(bob, m1).unwrap();
        live(&mut *s, &["node-1"]);
        s.claim_session(alice, "node-1", 5).unwrap();
        s.commit().unwrap();
        // A batch never committed dies with its handle.
        user(&mut *s, "ghost");
        send(&mut *s, bob, "bob", Target::User(alice), "lost");
        drop(s);

        let mut s = db.open();
        assert_eq!(s.user(alice).unwrap().unwrap().name, "alice");
        assert_eq!(s.friends(bob).unwrap()[0].id, alice);
        assert!(s.friends(bob).unwrap()[0].online);
        let groups = s.groups(bob).unwrap();
        assert_eq!((groups[0].id, groups[0].description.as_str()), (g, "kept"));
        assert_eq!(s.cursor(bob).unwrap(), m1);
        assert_eq!(texts(&mut *s, bob), vec!["me too"]);
        assert!(texts(&mut *s, alice).is_empty());
        assert_eq!(
            s.claim_session(alice, "node-2", 1),
            Err(StoreError::AlreadyOnline(alice))
        );
        assert_eq!(s.release_node("node-1").unwrap(), vec![alice]);
        // The name of the lost registration is free.
        user(&mut *s, "ghost");
        s.commit().unwrap();
    }

    pub fn rollback_discards_the_batch(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        s.commit().unwrap();

        let bob = user(&mut *s, "bob");
        send(&mut *s, bob, "bob", Target::User(alice), "never sent");
        s.ack(alice, 1_000).unwrap();
        s.claim_session(alice, "node-1", 1).unwrap();
        s.rollback();

        assert_eq!(s.user(bob).unwrap(), None);
        assert!(texts(&mut *s, alice).is_empty());
        assert_eq!(s.cursor(alice).unwrap(), 0);
        s.claim_session(alice, "node-1", 2).unwrap();
        // The store goes on: the name is free again.
        let bob = user(&mut *s, "bob");
        s.commit().unwrap();
        assert_eq!(s.user(bob).unwrap().unwrap().name, "bob");
        // A rollback with nothing open and a commit with nothing open are
        // harmless.
        s.commit().unwrap();
        s.rollback();
        s.commit().unwrap();
    }

    pub fn two_handles_share_one_database(db: &dyn TestDb) {
        let mut a = db.open();
        let mut b = db.open();
        let alice = user(&mut *a, "alice");
        a.commit().unwrap();

        assert_eq!(b.user(alice).unwrap().unwrap().name, "alice");
        assert_eq!(b.create_user("alice", HASH), Err(StoreError::NameTaken));
        let bob = user(&mut *b, "bob");
        assert!(bob > alice);
        live(&mut *b, &["node-b"]);
        b.claim_session(bob, "node-b", 1).unwrap();
        let m = send(&mut *b, bob, "bob", Target::User(alice), "across");
        b.commit().unwrap();

        assert_eq!(a.create_user("bob", HASH), Err(StoreError::NameTaken));
        assert_eq!(
            a.claim_session(bob, "node-a", 1),
            Err(StoreError::AlreadyOnline(bob))
        );
        assert_eq!(texts(&mut *a, alice), vec!["across"]);
        a.ack(alice, m).unwrap();
        a.commit().unwrap();

        assert_eq!(b.cursor(alice).unwrap(), m);
        assert_total(db, &mut *b, 0);
        b.commit().unwrap();
    }

    pub fn concurrent_handles_never_collide(db: &dyn TestDb) {
        const THREADS: usize = 3;
        const BATCHES: usize = 10;
        const PER_BATCH: usize = 20;
        let mut setup = db.open();
        let target = user(&mut *setup, "target");
        live(&mut *setup, &["node-0", "node-1", "node-2"]);
        setup.commit().unwrap();
        drop(setup);

        let handles: Vec<Box<dyn Store>> = (0..THREADS).map(|_| db.open()).collect();
        let results: Vec<(Vec<UserId>, Vec<u64>, bool)> = std::thread::scope(|scope| {
            let workers: Vec<_> = handles
                .into_iter()
                .enumerate()
                .map(|(t, mut s)| {
                    scope.spawn(move || {
                        let (mut users, mut messages) = (Vec::new(), Vec::new());
                        let mut claimed = false;
                        for b in 0..BATCHES {
                            for i in 0..PER_BATCH {
                                // Every thread races for the same names too.
                                let shared = format!("shared-{b}-{i}");
                                match s.create_user(&shared, HASH) {
                                    Ok(id) => users.push(id),
                                    Err(StoreError::NameTaken) => {}
                                    Err(e) => panic!("{e}"),
                                }
                                users.push(user(&mut *s, &format!("t{t}-{b}-{i}")));
                                messages.push(send(
                                    &mut *s,
                                    target,
                                    "target",
                                    Target::User(target),
                                    "x",
                                ));
                            }
                            match s.claim_session(target, &format!("node-{t}"), b as u64) {
                                Ok(()) => claimed = true,
                                Err(StoreError::AlreadyOnline(_)) => {}
                                Err(e) => panic!("{e}"),
                            }
                            s.commit().unwrap();
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        (users, messages, claimed)
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });

        let users: BTreeSet<UserId> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
        let user_count: usize = results.iter().map(|r| r.0.len()).sum();
        assert_eq!(users.len(), user_count, "a user id was handed out twice");
        assert_eq!(user_count, BATCHES * PER_BATCH * (THREADS + 1));
        let messages: BTreeSet<u64> = results.iter().flat_map(|r| r.1.iter().copied()).collect();
        assert_eq!(messages.len(), THREADS * BATCHES * PER_BATCH);
        assert_eq!(results.iter().filter(|r| r.2).count(), 1, "one claim wins");

        let mut s = db.open();
        assert_eq!(s.pending(target, 0, 10_000).unwrap().len(), messages.len());
        s.commit().unwrap();
    }

    pub fn domain_errors_leave_the_batch_usable(db: &dyn TestDb) {
        let mut s = db.open();
        let alice = user(&mut *s, "alice");
        let bob = user(&mut *s, "bob");
        let g = s.create_group(alice, "g", "").unwrap();
        s.commit().unwrap();

        // One batch mixing refusals and good writes.
        assert_eq!(
            s.append(&text(alice, "alice", Target::User(NOBODY), "lost")),
            Err(StoreError::UnknownUser(NOBODY))
        );
        let ok = send(&mut *s, alice, "alice", Target::User(bob), "delivered");
        assert_eq!(
            s.append(&text(bob, "bob", Target::Group(g), "not yet")),
            Err(StoreError::NotAMember {
                user: bob,
                group: g
            })
        );
        assert_eq!(s.create_user("alice", HASH), Err(StoreError::NameTaken));
        let carol = user(&mut *s, "carol");
        assert_eq!(
            s.join_group(g, alice),
            Err(StoreError::AlreadyMember {
                user: alice,
                group: g
            })
        );
        s.join_group(g, bob).unwrap();
        assert_eq!(
            s.add_friend(alice, NOBODY),
            Err(StoreError::UnknownUser(NOBODY))
        );
        s.add_friend(alice, carol).unwrap();
        assert_eq!(
            s.claim_session(NOBODY, "n", 1),
            Err(StoreError::UnknownUser(NOBODY))
        );
        live(&mut *s, &["n"]);
        s.claim_session(carol, "n", 1).unwrap();
        s.commit().unwrap();
        drop(s);

        let mut s = db.open();
        let pending = s.pending(bob, 0, 10).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!((pending[0].id, pending[0].text.as_str()), (ok, "delivered"));
        assert_eq!(s.group_members(g).unwrap(), vec![alice, bob]);
        assert_eq!(s.friends(carol).unwrap()[0].id, alice);
        assert!(s.friends(alice).unwrap()[0].online);
        assert_total(db, &mut *s, 1);
        s.commit().unwrap();
    }
}

/// Appends 100,000 direct messages in batches of 500 (one commit per batch)
/// with each sync policy and prints the cost per append and per commit.
///
/// `cargo test --release -p chat-node --test store_contract -- --ignored --nocapture`
#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn sqlite_append_throughput() {
    const USERS: u64 = 1_000;
    const MESSAGES: usize = 100_000;
    const BATCH: usize = 500;
    for sync in [SyncPolicy::Normal, SyncPolicy::Full] {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("bench.db"), sync).unwrap();
        let users: Vec<UserId> = (0..USERS)
            .map(|i| s.create_user(&format!("user{i}"), "hash").unwrap())
            .collect();
        s.commit().unwrap();

        let text = "x".repeat(100);
        let (mut appending, mut committing) = (Duration::ZERO, Duration::ZERO);
        let started = Instant::now();
        for batch in 0..MESSAGES / BATCH {
            let t = Instant::now();
            for i in 0..BATCH {
                let n = batch * BATCH + i;
                let from = users[n % users.len()];
                let to = users[(n * 7 + 1) % users.len()];
                s.append(&NewMessage {
                    sender_id: from,
                    sender_name: "someone".into(),
                    target: Target::User(to),
                    time_ms: n as u64,
                    text: text.clone(),
                })
                .unwrap();
            }
            appending += t.elapsed();
            let t = Instant::now();
            s.commit().unwrap();
            committing += t.elapsed();
        }
        let total = started.elapsed();

        let t = Instant::now();
        let backlog = s.pending_total().unwrap().unwrap_or_default();
        let counting = t.elapsed();
        for &u in &users {
            s.ack(u, u64::MAX).unwrap();
        }
        s.commit().unwrap();
        let t = Instant::now();
        let deleted = s.compact(usize::MAX).unwrap();
        s.commit().unwrap();
        let compacting = t.elapsed();

        println!(
            "sqlite {sync:?}: {:.2} µs/append, {:.0} µs/commit ({} per commit), \
             {:.0} messages/s overall; pending_total of {backlog} in {:?}, \
             compact of {deleted} in {:?}",
            appending.as_secs_f64() * 1e6 / MESSAGES as f64,
            committing.as_secs_f64() * 1e6 / (MESSAGES / BATCH) as f64,
            BATCH,
            MESSAGES as f64 / total.as_secs_f64(),
            counting,
            compacting,
        );
    }
}

/// Where a child process of [`sqlite_processes_share_one_file`] finds its
/// database, and which child it is.
const CHILD_DB: &str = "CHAT_STORE_CONTRACT_CHILD_DB";
const CHILD_TAG: &str = "CHAT_STORE_CONTRACT_CHILD_TAG";
const CHILD_BATCHES: usize = 10;
const CHILD_PER_BATCH: usize = 10;

/// Real processes, not just handles, on one file: the test binary runs
/// itself three times as [`sqlite_child_writer`]; the children race for the
/// same names and the same session while each registers its own users.
#[test]
fn sqlite_processes_share_one_file() {
    const CHILDREN: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let mut s = SqliteStore::open(&path, SyncPolicy::Normal).unwrap();
    let target = s.create_user("target", "hash").unwrap();
    for t in 0..CHILDREN {
        s.renew_lease(&format!("process-{t}"), Duration::from_secs(3600))
            .unwrap();
    }
    s.commit().unwrap();

    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..CHILDREN)
        .map(|t| {
            std::process::Command::new(&exe)
                .args(["--exact", "sqlite_child_writer", "--ignored", "--nocapture"])
                .env(CHILD_DB, &path)
                .env(CHILD_TAG, t.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "child failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let names = CHILD_BATCHES * CHILD_PER_BATCH;
    let mut ids = BTreeSet::new();
    for i in 0..names {
        // Every shared name registered exactly once, every own name once.
        assert_eq!(
            s.create_user(&format!("shared-{i}"), "hash"),
            Err(StoreError::NameTaken)
        );
        for t in 0..CHILDREN {
            assert_eq!(
                s.create_user(&format!("p{t}-{i}"), "hash"),
                Err(StoreError::NameTaken)
            );
        }
    }
    let last = s.create_user("last", "hash").unwrap();
    for id in target..last {
        if let Some(u) = s.user(id).unwrap() {
            assert!(ids.insert(u.name));
        }
    }
    assert_eq!(ids.len(), 1 + names * (CHILDREN + 1));
    assert_eq!(
        s.pending(target, 0, 100_000).unwrap().len(),
        names * CHILDREN
    );
    // Exactly one child won the session.
    let holders: usize = (0..CHILDREN)
        .map(|t| s.release_node(&format!("process-{t}")).unwrap().len())
        .sum();
    assert_eq!(holders, 1);
    s.commit().unwrap();
}

/// The body of one child process of [`sqlite_processes_share_one_file`];
/// does nothing when run on its own.
#[test]
#[ignore = "helper: run as a child process by sqlite_processes_share_one_file"]
fn sqlite_child_writer() {
    let (Ok(path), Ok(tag)) = (std::env::var(CHILD_DB), std::env::var(CHILD_TAG)) else {
        return;
    };
    let mut s = SqliteStore::open(std::path::Path::new(&path), SyncPolicy::Normal).unwrap();
    let target = 1;
    for b in 0..CHILD_BATCHES {
        for i in 0..CHILD_PER_BATCH {
            let n = b * CHILD_PER_BATCH + i;
            match s.create_user(&format!("shared-{n}"), "hash") {
                Ok(_) | Err(StoreError::NameTaken) => {}
                Err(e) => panic!("{e}"),
            }
            s.create_user(&format!("p{tag}-{n}"), "hash").unwrap();
            s.append(&NewMessage {
                sender_id: target,
                sender_name: "target".into(),
                target: Target::User(target),
                time_ms: 0,
                text: format!("from {tag}"),
            })
            .unwrap();
        }
        match s.claim_session(target, &format!("process-{tag}"), b as u64) {
            Ok(()) | Err(StoreError::AlreadyOnline(_)) => {}
            Err(e) => panic!("{e}"),
        }
        s.commit().unwrap();
    }
}
