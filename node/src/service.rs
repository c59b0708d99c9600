//! The handlers: what each [`Command`] does, whichever protocol it came in.
//!
//! A handler checks the session (logged in, acting as itself), validates the
//! input against the configured limits, asks the store thread to do the work
//! and turns the outcome into a [`Reply`]. Password hashing runs on the
//! runtime's blocking thread pool so a shard never stalls on it.

use std::rc::Rc;

use crate::command::{Command, ErrorCode, Failure, Push, Reply};
use crate::engine::Op;
use crate::metric_names;
use crate::model::{GroupId, NewMessage, Target, UserId, now_ms};
use crate::password;
use crate::session::{Identity, Session};
use crate::shard::Shard;
use crate::store::StoreError;

const MAX_NAME: usize = 64;
const MAX_PASSWORD: usize = 1024;
const MAX_GROUP_DESCRIPTION: usize = 1024;
/// A login waiting for a silent session to close: how often it tries again,
/// and how many times (about a second in all).
const TAKEOVER_POLL: std::time::Duration = std::time::Duration::from_millis(50);
const TAKEOVER_TRIES: usize = 20;
/// Messages in a page of history when the request does not say, and at most.
const HISTORY_PAGE: usize = 50;
const MAX_HISTORY_PAGE: u32 = 200;

type Outcome = Result<Reply, Failure>;

/// Runs one command for `session` and returns the reply to send.
pub async fn handle(shard: &Rc<Shard>, session: &Rc<Session>, command: Command) -> Reply {
    run(shard, session, command)
        .await
        .unwrap_or_else(Reply::Error)
}

async fn run(shard: &Rc<Shard>, session: &Rc<Session>, command: Command) -> Outcome {
    match command {
        Command::Register { name, password } => register(shard, name, password).await,
        Command::Login { user, password } => login(shard, session, user, password).await,
        Command::Logout { actor } => logout(shard, session, actor).await,
        Command::AddFriend { actor, friend } => add_friend(shard, session, actor, friend).await,
        Command::CreateGroup {
            actor,
            name,
            description,
        } => create_group(shard, session, actor, name, description).await,
        Command::JoinGroup { actor, group } => {
            let who = acting(session, actor)?;
            shard
                .store
                .call(|answer| Op::JoinGroup {
                    group,
                    user: who.user,
                    answer,
                })
                .await
                .map(Reply::GroupJoined)
                .map_err(failure)
        }
        Command::DirectMessage { actor, to, text } => {
            send(shard, session, actor, Target::User(to), text).await
        }
        Command::GroupMessage { actor, group, text } => {
            send(shard, session, actor, Target::Group(group), text).await
        }
        Command::RemoveFriend { actor, friend } => {
            let who = acting(session, actor)?;
            shard
                .store
                .call(|answer| Op::RemoveFriend {
                    user: who.user,
                    friend,
                    answer,
                })
                .await
                .map_err(failure)?;
            Ok(Reply::FriendRemoved)
        }
        Command::LeaveGroup { actor, group } => {
            let who = acting(session, actor)?;
            shard
                .store
                .call(|answer| Op::LeaveGroup {
                    group,
                    user: who.user,
                    answer,
                })
                .await
                .map_err(failure)?;
            Ok(Reply::GroupLeft)
        }
        Command::RemoveMember {
            actor,
            group,
            member,
        } => remove_member(shard, session, actor, group, member).await,
        Command::GroupInfo { actor, group } => {
            let who = acting(session, actor)?;
            shard
                .store
                .call(|answer| Op::GroupInfo {
                    group,
                    user: who.user,
                    answer,
                })
                .await
                .map(Reply::Group)
                .map_err(failure)
        }
        Command::FindUser { name } => find_user(shard, session, name).await,
        Command::History {
            actor,
            conversation,
            before,
            limit,
        } => {
            let who = acting(session, actor)?;
            let limit = match limit {
                None => HISTORY_PAGE,
                Some(n @ 1..=MAX_HISTORY_PAGE) => n as usize,
                Some(n) => {
                    return Err(Failure::new(
                        ErrorCode::BadRequest,
                        format!("limit is {n}; a page holds 1 to {MAX_HISTORY_PAGE} messages"),
                    ));
                }
            };
            shard
                .store
                .call(|answer| Op::History {
                    user: who.user,
                    conversation,
                    before,
                    limit,
                    answer,
                })
                .await
                .map(Reply::History)
                .map_err(failure)
        }
        Command::MarkRead {
            actor,
            conversation,
            up_to,
        } => {
            let who = acting(session, actor)?;
            if up_to == 0 {
                return Err(Failure::new(
                    ErrorCode::BadRequest,
                    "upto must be a message id (1 or more)",
                ));
            }
            shard
                .store
                .call(|answer| Op::MarkRead {
                    user: who.user,
                    conversation,
                    up_to,
                    answer,
                })
                .await
                .map_err(failure)?;
            Ok(Reply::MarkedRead)
        }
        Command::Readers {
            actor,
            group,
            message,
        } => {
            let who = acting(session, actor)?;
            shard
                .store
                .call(|answer| Op::Readers {
                    user: who.user,
                    group,
                    message,
                    answer,
                })
                .await
                .map(|(readers, members)| Reply::Readers { readers, members })
                .map_err(failure)
        }
        Command::DeliveryAck { up_to, quiet } => ack(shard, session, up_to, quiet).await,
        Command::Ping => Ok(Reply::Pong { time_ms: now_ms() }),
        Command::Load => Ok(Reply::Load(shard.load.report())),
    }
}

/// Turns a store refusal into the failure the client sees.
fn failure(e: StoreError) -> Failure {
    let code = match &e {
        StoreError::NameTaken => ErrorCode::NameTaken,
        StoreError::UnknownUser(_) => ErrorCode::UnknownUser,
        StoreError::UnknownGroup(_) => ErrorCode::UnknownGroup,
        StoreError::NotAMember { .. } => ErrorCode::NotAMember,
        StoreError::AlreadyMember { .. } => ErrorCode::AlreadyMember,
        StoreError::AlreadyFriends(..) => ErrorCode::AlreadyFriends,
        StoreError::NotFriends(..) => ErrorCode::NotFriends,
        StoreError::NotCreator { .. } => ErrorCode::NotCreator,
        StoreError::BeyondNewest { .. } => ErrorCode::BadRequest,
        StoreError::AlreadyOnline(_) => ErrorCode::AlreadyOnline,
        StoreError::LimitReached { .. } => ErrorCode::LimitReached,
        StoreError::MailboxFull { .. } => ErrorCode::MailboxFull,
        StoreError::Backend(msg) => {
            tracing::error!(error = %msg, "store failure");
            return Failure::new(ErrorCode::Internal, "internal storage error, try again");
        }
    };
    Failure::new(code, e.to_string())
}

/// The session's identity, if `actor` (the sender id the client wrote) is
/// absent or names the session's own user.
fn acting(session: &Session, actor: Option<UserId>) -> Result<Identity, Failure> {
    let who = session
        .identity()
        .ok_or_else(|| Failure::new(ErrorCode::NotLoggedIn, "log in first"))?;
    match actor {
        Some(id) if id != who.user => Err(Failure::new(
            ErrorCode::Forbidden,
            format!(
                "this session is user {}, it can not act as user {id}",
                who.user
            ),
        )),
        _ => Ok(who),
    }
}

/// The name as stored: `name` under the PRECIS Nickname profile (RFC 8266),
/// at most [`MAX_NAME`] bytes. It maps every space to U+0020, removes
/// leading and trailing spaces and collapses runs of them, maps fullwidth
/// forms to their usual width and normalizes to NFKC, so "alice ", "ａｌｉｃｅ"
/// and "alice" are one name; it refuses control characters and code points
/// that do not show (zero-width, bidi overrides and other format
/// characters), so no name can pass for another by what can not be seen.
fn normalize_name(what: &str, name: &str) -> Result<String, Failure> {
    use precis_core::profile::Profile;
    let refused = |why: &str| {
        Failure::new(
            ErrorCode::InvalidName,
            format!("{what} must be 1 to {MAX_NAME} bytes of visible text{why}"),
        )
    };
    if name.len() > 4 * MAX_NAME {
        return Err(refused(""));
    }
    let normalized = precis_profiles::Nickname::new()
        .enforce(name)
        .map_err(|e| match e {
            precis_core::Error::BadCodepoint(c) => refused(&format!(
                " (U+{:04X} at character {} is not allowed)",
                c.cp,
                c.position + 1
            )),
            _ => refused(""),
        })?;
    if normalized.is_empty() || normalized.len() > MAX_NAME {
        return Err(refused(""));
    }
    Ok(normalized.into_owned())
}

fn check_len(what: &str, value: &str, max: usize, code: ErrorCode) -> Result<(), Failure> {
    if value.len() > max {
        return Err(Failure::new(
            code,
            format!("{what} is {} bytes, the limit is {max}", value.len()),
        ));
    }
    Ok(())
}

fn cost(shard: &Shard) -> password::Cost {
    password::Cost {
        memory_kib: shard.config.argon2_memory_kib,
        iterations: shard.config.argon2_iterations,
    }
}

async fn register(shard: &Rc<Shard>, name: String, password: String) -> Outcome {
    let name = normalize_name("name", &name)?;
    if password.is_empty() {
        return Err(Failure::new(
            ErrorCode::BadRequest,
            "password must not be empty",
        ));
    }
    check_len("password", &password, MAX_PASSWORD, ErrorCode::BadRequest)?;
    let cost = cost(shard);
    let password_hash = tokio::task::spawn_blocking(move || password::hash(&password, cost))
        .await
        .map_err(|e| e.to_string())
        .and_then(|hashed| hashed)
        .map_err(|e| Failure::new(ErrorCode::Internal, format!("hashing failed: {e}")))?;
    let user = shard
        .store
        .call(|answer| Op::Register {
            name,
            password_hash,
            answer,
        })
        .await
        .map_err(failure)?;
    Ok(Reply::Registered { user })
}

async fn login(
    shard: &Rc<Shard>,
    session: &Rc<Session>,
    user: UserId,
    password: String,
) -> Outcome {
    if !session.is_anonymous() {
        return Err(Failure::new(
            ErrorCode::AlreadyLoggedIn,
            "this connection is already logged in; log out first",
        ));
    }
    let invalid = || Failure::new(ErrorCode::InvalidCredentials, "id or password is invalid!");
    let record = shard
        .store
        .call(|answer| Op::User { id: user, answer })
        .await
        .map_err(failure)?
        .ok_or_else(invalid)?;
    let hash = record.password_hash;
    let matches = tokio::task::spawn_blocking(move || password::verify(&password, &hash))
        .await
        .unwrap_or(false);
    if !matches {
        return Err(invalid());
    }
    session.start_login();
    let epoch = shard.next_epoch();
    let page = shard.config.pending_page;
    let claim = || {
        shard.store.call(|answer| Op::Login {
            user,
            shard: shard.id,
            conn: session.conn,
            epoch,
            page,
            answer,
        })
    };
    let mut result = claim().await;
    if matches!(result, Err(StoreError::AlreadyOnline(_))) && !shard.config.takeover_after.is_zero()
    {
        // The user's session may be a silent one (a phone that lost its
        // signal): it closes if so, and its logout frees the user.
        shard.store.tell(Op::Takeover { user }).await;
        for _ in 0..TAKEOVER_TRIES {
            tokio::time::sleep(TAKEOVER_POLL).await;
            result = claim().await;
            if !matches!(result, Err(StoreError::AlreadyOnline(_))) {
                break;
            }
        }
    }
    // Unread counts come from the reader thread, off the write path; a
    // failure there leaves them out rather than failing the login. Before
    // `missed` is read: a push that comes while this waits must still be
    // caught up.
    if let Ok(info) = &mut result {
        match shard.store.call(|answer| Op::Unread { user, answer }).await {
            Ok(unread) => info.unread = unread,
            Err(e) => tracing::warn!(error = %e, user, "unread counts failed; login without them"),
        }
    }
    let missed = session.missed_while_logging_in();
    let info = match result {
        Ok(info) => info,
        Err(e) => {
            session.login_failed();
            return Err(match e {
                StoreError::AlreadyOnline(_) => Failure::new(
                    ErrorCode::AlreadyOnline,
                    "this account is using, input another!",
                ),
                StoreError::UnknownUser(_) => invalid(),
                e => failure(e),
            });
        }
    };
    if session.outbound.closed().is_some() {
        // The client left while the store logged it in: undo the claim.
        shard
            .store
            .tell(Op::Logout {
                user,
                conn: session.conn,
                epoch,
                answer: None,
            })
            .await;
        session.login_failed();
        return Err(Failure::new(
            ErrorCode::Internal,
            "connection closed during login",
        ));
    }
    // More stored messages than one page: the rest follows as a catch-up.
    let backlog = info.pending.len() >= page;
    session.logged_in(
        Identity {
            user,
            name: info.name.as_str().into(),
            epoch,
        },
        info.pending.last().map_or(0, |m| m.id),
        // In a cluster a wake-up from another node may reach this node before
        // the login's route did: one more read after the reply covers it.
        missed || backlog || shard.config.nats.is_some(),
        backlog,
    );
    if info.more_groups > 0 {
        let after = info.groups.last().map_or(0, |g| g.id);
        let (shard, task_session) = (shard.clone(), session.clone());
        session.after_reply(move || {
            tokio::task::spawn_local(send_remaining_groups(shard, task_session, user, after));
        });
    }
    metrics::counter!(metric_names::LOGINS_TOTAL).increment(1);
    Ok(Reply::LoggedIn(Box::new(info)))
}

async fn logout(shard: &Rc<Shard>, session: &Rc<Session>, actor: Option<UserId>) -> Outcome {
    let who = acting(session, actor)?;
    session.log_out();
    shard.flush_delivered(who.user).await;
    shard
        .store
        .call(|answer| Op::Logout {
            user: who.user,
            conn: session.conn,
            epoch: who.epoch,
            answer: Some(answer),
        })
        .await
        .map_err(failure)?;
    Ok(Reply::LoggedOut)
}

async fn add_friend(
    shard: &Rc<Shard>,
    session: &Rc<Session>,
    actor: Option<UserId>,
    friend: UserId,
) -> Outcome {
    let who = acting(session, actor)?;
    if friend == who.user {
        return Err(Failure::new(
            ErrorCode::SelfFriend,
            "you can not add yourself as a friend",
        ));
    }
    shard
        .store
        .call(|answer| Op::AddFriend {
            user: who.user,
            friend,
            answer,
        })
        .await
        .map(Reply::FriendAdded)
        .map_err(failure)
}

async fn create_group(
    shard: &Rc<Shard>,
    session: &Rc<Session>,
    actor: Option<UserId>,
    name: String,
    description: String,
) -> Outcome {
    let who = acting(session, actor)?;
    let name = normalize_name("group name", &name)?;
    check_len(
        "group description",
        &description,
        MAX_GROUP_DESCRIPTION,
        ErrorCode::BadRequest,
    )?;
    let group = shard
        .store
        .call(|answer| Op::CreateGroup {
            creator: who.user,
            name,
            description,
            answer,
        })
        .await
        .map_err(failure)?;
    Ok(Reply::GroupCreated { group })
}

async fn remove_member(
    shard: &Rc<Shard>,
    session: &Rc<Session>,
    actor: Option<UserId>,
    group: GroupId,
    member: UserId,
) -> Outcome {
    let who = acting(session, actor)?;
    if member == who.user {
        return Err(Failure::new(
            ErrorCode::BadRequest,
            "you can not remove yourself from a group; leave it instead",
        ));
    }
    shard
        .store
        .call(|answer| Op::RemoveMember {
            group,
            by: who.user,
            member,
            answer,
        })
        .await
        .map_err(failure)?;
    Ok(Reply::MemberRemoved)
}

/// The user with exactly `name` (after the same normalization as at
/// registration); `UnknownUser` if nobody has it.
async fn find_user(shard: &Rc<Shard>, session: &Rc<Session>, name: String) -> Outcome {
    acting(session, None)?;
    let name = normalize_name("name", &name)?;
    let found = shard
        .store
        .call(|answer| Op::FindUser {
            name: name.clone(),
            answer,
        })
        .await
        .map_err(failure)?;
    found
        .map(Reply::UserFound)
        .ok_or_else(|| Failure::new(ErrorCode::UnknownUser, format!("no user is named {name:?}")))
}

async fn send(
    shard: &Rc<Shard>,
    session: &Rc<Session>,
    actor: Option<UserId>,
    target: Target,
    text: String,
) -> Outcome {
    let who = acting(session, actor)?;
    if let Err(wait_ms) = session.take_send_token() {
        crate::metrics::counter(metric_names::REFUSED_TOTAL, &[("reason", "rate_limited")])
            .increment(1);
        let config = &shard.config;
        return Err(Failure::new(
            ErrorCode::RateLimited,
            format!(
                "sending too fast: at most {} messages a second (bursts of {}); retry in {wait_ms} ms",
                config.send_rate, config.send_burst
            ),
        )
        .retry_after(wait_ms));
    }
    check_len(
        "message text",
        &text,
        shard.config.max_text,
        ErrorCode::TextTooLong,
    )?;
    let message = NewMessage {
        sender_id: who.user,
        sender_name: who.name.to_string(),
        target,
        time_ms: now_ms(),
        text,
    };
    let stored = shard
        .store
        .call(|answer| Op::Append { message, answer })
        .await
        .map_err(failure)?;
    Ok(Reply::MessageSent {
        id: stored.id,
        time_ms: stored.time_ms,
    })
}

/// A quiet acknowledgement (no reply when it succeeds) is stored the way a
/// JSON client's writes are ([`Shard::note_delivered`]): within the shard's
/// acknowledgement delay, one store op per user for all of them meanwhile,
/// at once when the connection closes or logs out. A crash inside the
/// delay delivers those messages again at the next login, as it would any
/// unacknowledged message; one answered acknowledgement is committed before
/// its reply.
async fn ack(shard: &Rc<Shard>, session: &Rc<Session>, up_to: u64, quiet: bool) -> Outcome {
    let Some((who, last_pushed)) = session.delivered() else {
        return Err(Failure::new(ErrorCode::NotLoggedIn, "log in first"));
    };
    if up_to > last_pushed {
        return Err(Failure::new(
            ErrorCode::BadRequest,
            format!(
                "message {up_to} was not delivered to this session (last delivered: {last_pushed})"
            ),
        ));
    }
    if quiet {
        shard.note_delivered(who.user, up_to);
        return Ok(Reply::Acked);
    }
    shard
        .store
        .call(|answer| Op::Ack {
            user: who.user,
            up_to,
            answer: Some(answer),
        })
        .await
        .map_err(failure)?;
    Ok(Reply::Acked)
}

/// Sends the groups a login reply had no room for (those above `after`),
/// a page at a time (`--login-group-members` members) read off the write
/// path, each page once the client's queue has room: what a user in many
/// large groups makes the node hold is one page, not every group. Stops
/// when all are sent, the connection closes or the session's user changes.
async fn send_remaining_groups(
    shard: Rc<Shard>,
    session: Rc<Session>,
    user: UserId,
    mut after: GroupId,
) {
    let generation = session.user_generation();
    let max_members = shard.config.login_group_members;
    loop {
        if !session.outbound.drained().await || session.user_generation() != generation {
            return;
        }
        let page = shard
            .store
            .call(|answer| Op::GroupsPage {
                user,
                after,
                max_members,
                answer,
            })
            .await;
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, user, "reading a login's groups failed; the rest are not sent");
                return;
            }
        };
        if session.user_generation() != generation {
            return;
        }
        let Some(last) = page.last() else {
            return;
        };
        after = last.id;
        for group in page {
            session.deliver(&Push::Group(group));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_or_refused() {
        let ok = |n: &str| normalize_name("name", n).unwrap();
        assert_eq!(ok("alice"), "alice");
        assert_eq!(ok(" alice  "), "alice");
        assert_eq!(ok("al   ice"), "al ice");
        assert_eq!(ok("ａｌｉｃｅ"), "alice");
        assert_eq!(ok("a\u{00A0}b"), "a b");
        assert_eq!(ok("Zoë 李雷"), "Zoë 李雷");
        for bad in [
            "",
            "   ",
            "ali\u{200B}ce",
            "ali\u{202E}ce",
            "x\u{0007}",
            "\u{FEFF}alice",
        ] {
            let e = normalize_name("name", bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidName, "{bad:?}");
        }
        assert!(normalize_name("name", &"x".repeat(MAX_NAME)).is_ok());
        assert!(normalize_name("name", &"x".repeat(MAX_NAME + 1)).is_err());
        let e = normalize_name("name", "ali\u{200B}ce").unwrap_err();
        assert!(e.message.contains("U+200B"), "{}", e.message);
    }
}
