//! Users and friendships: registration (the name claimed by a lightweight
//! transaction, orphaned reservations taken back), the in-memory name cache,
//! profiles and cursors, finding a user by name, adding, removing and
//! listing friends.

use super::*;

impl Inner {
    pub(super) fn remember_name(&mut self, id: UserId, name: String) {
        if self.names.len() >= CACHE_LIMIT {
            self.names.clear();
        }
        self.names.insert(id, name);
    }

    /// The profile row of a user: name, password hash, cursor.
    pub(super) async fn profile(&mut self, id: UserId) -> Result<Option<(String, String, i64)>> {
        let Some(k) = key(id) else {
            return Ok(None);
        };
        self.settle(USERS).await?;
        let row = self
            .read_one::<(Option<String>, Option<String>, Option<i64>)>(&self.st.user_get, (k,))
            .await?;
        Ok(match row {
            Some((Some(name), hash, cursor)) => {
                self.remember_name(id, name.clone());
                Some((name, hash.unwrap_or_default(), cursor.unwrap_or(0)))
            }
            _ => None,
        })
    }

    /// The name of a user, `None` if there is no such user.
    pub(super) async fn user_name(&mut self, id: UserId) -> Result<Option<String>> {
        if let Some(name) = self.names.get(&id) {
            return Ok(Some(name.clone()));
        }
        Ok(self.profile(id).await?.map(|(name, _, _)| name))
    }

    pub(super) async fn cursor_of(&mut self, user: UserId) -> Result<i64> {
        if let Some(&cursor) = self.cursors.get(&user) {
            return Ok(cursor);
        }
        let (_, _, cursor) = self
            .profile(user)
            .await?
            .ok_or(StoreError::UnknownUser(user))?;
        self.observe(id_of(cursor));
        Ok(cursor)
    }

    /// Whether a name reservation is a leftover: no user has its id, and it
    /// is older than [`ORPHAN_AFTER`].
    pub(super) async fn name_is_orphaned(&mut self, name: &str, holder: i64) -> Result<bool> {
        if self.user_name(id_of(holder)).await?.is_some() {
            return Ok(false);
        }
        let row = self
            .read_one::<(Option<i64>, Option<i64>)>(&self.st.name_get, (name,))
            .await?;
        let old = now_us() - i64::try_from(ORPHAN_AFTER.as_micros()).unwrap_or(i64::MAX);
        Ok(matches!(row, Some((Some(id), Some(written))) if id == holder && written < old))
    }

    /// Takes `name` for `id`: whether it did.
    pub(super) async fn claim_name(&mut self, name: &str, id: i64) -> Result<bool> {
        let st = Arc::clone(&self.st);
        let cas = self.lwt(&st.name_claim, (name, id)).await?;
        if cas.applied {
            return Ok(true);
        }
        let Some(holder) = cas.bigint("id") else {
            return Ok(false);
        };
        Ok(self.name_is_orphaned(name, holder).await?
            && self
                .lwt(&st.name_reclaim, (id, name, holder))
                .await?
                .applied)
    }

    pub(super) async fn create_user(&mut self, name: &str, password_hash: &str) -> Result<UserId> {
        let st = Arc::clone(&self.st);
        let id = self.peek_user_id().await?;
        // Registered before the transaction: one that fails without an
        // answer (a timeout) may have taken the name, and the rollback that
        // follows the error must give it back.
        self.undo.push(Undo {
            statement: st.name_release.clone(),
            values: Box::new((name.to_owned(), id)),
            conditional: true,
        });
        let claimed = self.claim_name(name, id).await;
        if !matches!(claimed, Ok(false)) {
            self.user_ids.next += 1;
        }
        if !claimed? {
            self.undo.pop();
            return Err(StoreError::NameTaken);
        }
        self.write(
            USERS,
            &st.user_insert,
            Box::new((id, name.to_owned(), password_hash.to_owned(), 0_i64)),
            Some((&st.user_delete, Box::new((id,)))),
        );
        let id = id_of(id);
        self.remember_name(id, name.to_owned());
        self.created_users.push(id);
        Ok(id)
    }

    pub(super) async fn user(&mut self, id: UserId) -> Result<Option<UserRecord>> {
        Ok(self
            .profile(id)
            .await?
            .map(|(name, password_hash, _)| UserRecord {
                id,
                name,
                password_hash,
            }))
    }

    /// The user registered under exactly `name`: the `user_names` row, then
    /// the user it names (a reservation whose registration never completed,
    /// or is still under way elsewhere, names nobody).
    pub(super) async fn find_user(&mut self, name: &str) -> Result<Option<Contact>> {
        // No user has it (a name is a partition key, which may not be
        // empty), and ScyllaDB would refuse the read.
        if name.is_empty() {
            return Ok(None);
        }
        let row = self
            .read_one::<(Option<i64>, Option<i64>)>(&self.st.name_get, (name,))
            .await?;
        let Some((Some(holder), _)) = row else {
            return Ok(None);
        };
        let id = id_of(holder);
        match self.user_name(id).await? {
            Some(stored) if stored == name => {
                let online = self.online(&[id]).await?.pop().unwrap_or(false);
                Ok(Some(Contact {
                    id,
                    name: stored,
                    online,
                }))
            }
            _ => Ok(None),
        }
    }

    // ---- leases and sessions ----

    pub(super) async fn add_friend(&mut self, user: UserId, friend: UserId) -> Result<Contact> {
        let Some(user_name) = self.user_name(user).await? else {
            return Err(StoreError::UnknownUser(user));
        };
        let Some(friend_name) = self.user_name(friend).await? else {
            return Err(StoreError::UnknownUser(friend));
        };
        let (Some(u), Some(f)) = (key(user), key(friend)) else {
            return Err(StoreError::UnknownUser(user));
        };
        if u == f {
            return Err(StoreError::AlreadyFriends(user, friend));
        }
        let st = Arc::clone(&self.st);
        self.settle(FRIENDS).await?;
        if self
            .read_one::<(i64, Option<String>)>(&st.friend_get, (u, f))
            .await?
            .is_some()
        {
            return Err(StoreError::AlreadyFriends(user, friend));
        }
        let online = self.online(&[friend]).await?.pop().unwrap_or(false);
        self.write(
            FRIENDS,
            &st.friend_insert,
            Box::new((u, f, friend_name.clone())),
            Some((&st.friend_delete, Box::new((u, f)))),
        );
        self.write(
            FRIENDS,
            &st.friend_insert,
            Box::new((f, u, user_name)),
            Some((&st.friend_delete, Box::new((f, u)))),
        );
        Ok(Contact {
            id: friend,
            name: friend_name,
            online,
        })
    }

    /// Reads both directions at once and deletes those that exist, so that
    /// a friendship a crash left in one direction can be ended too.
    pub(super) async fn remove_friend(&mut self, user: UserId, friend: UserId) -> Result<()> {
        let not_friends = StoreError::NotFriends(user, friend);
        let (Some(u), Some(f)) = (key(user), key(friend)) else {
            return Err(not_friends);
        };
        if u == f {
            return Err(not_friends);
        }
        let st = Arc::clone(&self.st);
        self.settle(FRIENDS).await?;
        let (mine, theirs) = future::try_join(
            self.read_one::<(i64, Option<String>)>(&st.friend_get, (u, f)),
            self.read_one::<(i64, Option<String>)>(&st.friend_get, (f, u)),
        )
        .await?;
        if mine.is_none() && theirs.is_none() {
            return Err(not_friends);
        }
        for (owner, other, row) in [(u, f, mine), (f, u, theirs)] {
            if let Some((_, name)) = row {
                let undo: Values = Box::new((owner, other, name.unwrap_or_default()));
                self.write(
                    FRIENDS,
                    &st.friend_delete,
                    Box::new((owner, other)),
                    Some((&st.friend_insert, undo)),
                );
            }
        }
        Ok(())
    }

    pub(super) async fn friends(&mut self, user: UserId) -> Result<Vec<Contact>> {
        if self.user_name(user).await?.is_none() {
            return Err(StoreError::UnknownUser(user));
        }
        let u = key(user).ok_or(StoreError::UnknownUser(user))?;
        self.settle(FRIENDS).await?;
        let rows: Vec<(i64, Option<String>)> = self.read_all(&self.st.friend_list, (u,)).await?;
        let ids: Vec<UserId> = rows.iter().map(|(f, _)| id_of(*f)).collect();
        let online = self.online(&ids).await?;
        Ok(rows
            .into_iter()
            .zip(online)
            .map(|((f, name), online)| Contact {
                id: id_of(f),
                name: name.unwrap_or_default(),
                online,
            })
            .collect())
    }

    // ---- groups ----
}
