//! Every CQL statement the backend runs, declared once ([`STATEMENTS`]) and
//! prepared once per handle (`Statements`), with the idempotence and read
//! consistency each gets.

use super::*;

/// Declares every prepared statement once: the public list and the struct
/// holding them prepared.
macro_rules! statements {
    ($($name:ident = $cql:literal;)*) => {
        /// Every CQL statement the backend prepares.
        pub const STATEMENTS: &[&str] = &[$($cql),*];

        pub(super) struct Statements {
            $(pub(super) $name: PreparedStatement,)*
        }

        impl Statements {
            pub(super) async fn prepare(session: &Session, consistency: Consistency) -> Result<Statements> {
                Ok(Statements {
                    $($name: prepare(session, $cql, consistency).await?,)*
                })
            }
        }
    };
}

statements! {
    user_get = "SELECT name, password_hash, acked_up_to FROM users WHERE id = ?";
    user_insert = "INSERT INTO users (id, name, password_hash, acked_up_to) VALUES (?, ?, ?, ?)";
    user_delete = "DELETE FROM users WHERE id = ?";
    cursor_set = "UPDATE users SET acked_up_to = ? WHERE id = ?";
    name_claim = "INSERT INTO user_names (name, id) VALUES (?, ?) IF NOT EXISTS";
    name_get = "SELECT id, WRITETIME(id) FROM user_names WHERE name = ?";
    name_reclaim = "UPDATE user_names SET id = ? WHERE name = ? IF id = ?";
    name_release = "DELETE FROM user_names WHERE name = ? IF id = ?";
    id_block_get = "SELECT next_id FROM id_blocks WHERE kind = ?";
    id_block_init = "INSERT INTO id_blocks (kind, next_id) VALUES (?, ?) IF NOT EXISTS";
    id_block_cas = "UPDATE id_blocks SET next_id = ? WHERE kind = ? IF next_id = ?";
    friend_get = "SELECT friend_id, friend_name FROM friends WHERE user_id = ? AND friend_id = ?";
    friend_list = "SELECT friend_id, friend_name FROM friends WHERE user_id = ?";
    friend_insert = "INSERT INTO friends (user_id, friend_id, friend_name) VALUES (?, ?, ?)";
    friend_delete = "DELETE FROM friends WHERE user_id = ? AND friend_id = ?";
    group_get = "SELECT name, description, creator FROM chat_groups WHERE id = ?";
    group_insert = "INSERT INTO chat_groups (id, name, description, creator) VALUES (?, ?, ?, ?)";
    group_delete = "DELETE FROM chat_groups WHERE id = ?";
    group_creator_set = "UPDATE chat_groups SET creator = ? WHERE id = ?";
    member_list = "SELECT joined_after, user_id, user_name, role FROM group_members WHERE group_id = ?";
    member_insert = "INSERT INTO group_members (group_id, joined_after, user_id, user_name, role) VALUES (?, ?, ?, ?, ?)";
    member_delete = "DELETE FROM group_members WHERE group_id = ? AND joined_after = ? AND user_id = ?";
    member_role_set = "UPDATE group_members SET role = ? WHERE group_id = ? AND joined_after = ? AND user_id = ?";
    membership_get = "SELECT joined_after, role FROM user_groups WHERE user_id = ? AND group_id = ?";
    membership_list = "SELECT group_id, joined_after FROM user_groups WHERE user_id = ?";
    membership_insert = "INSERT INTO user_groups (user_id, group_id, joined_after, role) VALUES (?, ?, ?, ?)";
    membership_delete = "DELETE FROM user_groups WHERE user_id = ? AND group_id = ?";
    membership_role_set = "UPDATE user_groups SET role = ? WHERE user_id = ? AND group_id = ?";
    inbox_insert = "INSERT INTO inbox (user_id, id, sender_id, sender_name, time_ms, body) VALUES (?, ?, ?, ?, ?, ?)";
    inbox_delete = "DELETE FROM inbox WHERE user_id = ? AND id = ?";
    inbox_read = "SELECT id, sender_id, sender_name, time_ms, body FROM inbox WHERE user_id = ? AND id > ? LIMIT ?";
    log_insert = "INSERT INTO group_log (group_id, bucket, id, sender_id, sender_name, time_ms, body) VALUES (?, ?, ?, ?, ?, ?, ?)";
    log_delete = "DELETE FROM group_log WHERE group_id = ? AND bucket = ? AND id = ?";
    log_read = "SELECT id, sender_id, sender_name, time_ms, body FROM group_log WHERE group_id = ? AND bucket = ? AND id > ?";
    direct_history_insert = "INSERT INTO direct_history (user_lo, user_hi, id, sender_id, sender_name, time_ms, body) VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?";
    direct_history_delete = "DELETE FROM direct_history WHERE user_lo = ? AND user_hi = ? AND id = ?";
    direct_history_page = "SELECT id, sender_id, sender_name, time_ms, body FROM direct_history WHERE user_lo = ? AND user_hi = ? AND id < ? LIMIT ?";
    direct_history_newest = "SELECT id FROM direct_history WHERE user_lo = ? AND user_hi = ? LIMIT 1";
    received_insert = "INSERT INTO direct_received (user_id, id, sender_id) VALUES (?, ?, ?) USING TTL ?";
    received_delete = "DELETE FROM direct_received WHERE user_id = ? AND id = ?";
    received_newest = "SELECT id, sender_id FROM direct_received WHERE user_id = ? LIMIT ?";
    group_history_insert = "INSERT INTO group_history (group_id, id, sender_id, sender_name, time_ms, body) VALUES (?, ?, ?, ?, ?, ?) USING TTL ?";
    group_history_delete = "DELETE FROM group_history WHERE group_id = ? AND id = ?";
    group_history_page = "SELECT id, sender_id, sender_name, time_ms, body FROM group_history WHERE group_id = ? AND id > ? AND id < ? LIMIT ?";
    group_history_newest = "SELECT id FROM group_history WHERE group_id = ? LIMIT 1";
    group_history_senders = "SELECT id, sender_id FROM group_history WHERE group_id = ? AND id > ? LIMIT ?";
    read_mark_get = "SELECT up_to FROM read_marks WHERE user_id = ? AND kind = ? AND target = ?";
    read_mark_list = "SELECT kind, target, up_to FROM read_marks WHERE user_id = ?";
    read_mark_set = "UPDATE read_marks SET up_to = ? WHERE user_id = ? AND kind = ? AND target = ?";
    read_mark_delete = "DELETE FROM read_marks WHERE user_id = ? AND kind = ? AND target = ?";
    group_read_get = "SELECT up_to FROM group_reads WHERE group_id = ? AND user_id = ?";
    group_read_list = "SELECT user_id, up_to FROM group_reads WHERE group_id = ?";
    group_read_set = "UPDATE group_reads SET up_to = ? WHERE group_id = ? AND user_id = ?";
    group_read_delete = "DELETE FROM group_reads WHERE group_id = ? AND user_id = ?";
    claim_get = "SELECT node, epoch FROM sessions WHERE user_id = ?";
    claim_insert = "INSERT INTO sessions (user_id, node, epoch) VALUES (?, ?, ?) IF NOT EXISTS";
    claim_takeover = "UPDATE sessions SET node = ?, epoch = ? WHERE user_id = ? IF node = ? AND epoch = ?";
    claim_release = "DELETE FROM sessions WHERE user_id = ? IF node = ? AND epoch = ?";
    claim_release_node = "DELETE FROM sessions WHERE user_id = ? IF node = ?";
    by_node_insert = "INSERT INTO sessions_by_node (node, user_id) VALUES (?, ?)";
    by_node_delete = "DELETE FROM sessions_by_node WHERE node = ? AND user_id = ?";
    by_node_list = "SELECT user_id FROM sessions_by_node WHERE node = ?";
    by_node_any = "SELECT user_id FROM sessions_by_node WHERE node = ? LIMIT 1";
    lease_get = "SELECT expires_ms FROM node_leases WHERE node = ?";
    lease_set = "INSERT INTO node_leases (node, expires_ms) VALUES (?, ?) USING TTL ?";
    lease_end = "DELETE FROM node_leases WHERE node = ?";
    node_register = "INSERT INTO cluster_nodes (bucket, node) VALUES (?, ?)";
    node_forget = "DELETE FROM cluster_nodes WHERE bucket = ? AND node = ?";
    node_list = "SELECT node FROM cluster_nodes WHERE bucket = ?";
}

/// Prepares one statement: plain statements are idempotent (every write
/// carries its timestamp, so a retry applies the same cells), lightweight
/// transactions are not; reads use a consistency that reads accept.
pub(super) async fn prepare(
    session: &Session,
    cql: &'static str,
    consistency: Consistency,
) -> Result<PreparedStatement> {
    let mut statement = session
        .prepare(cql)
        .await
        .map_err(|e| StoreError::Backend(format!("scylla: preparing {cql}: {e}")))?;
    statement.set_is_idempotent(!cql.contains(" IF "));
    if cql.starts_with("SELECT") {
        match consistency {
            Consistency::EachQuorum => statement.set_consistency(Consistency::LocalQuorum),
            Consistency::Any => statement.set_consistency(Consistency::One),
            _ => {}
        }
    }
    Ok(statement)
}
