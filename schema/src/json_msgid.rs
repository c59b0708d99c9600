//! The message ids of the seed's JSON protocol (`docs/protocol.md`, "Message
//! ids"): 1 to 10 are the seed's, 11 and up ours. The node decodes and
//! encodes with them, the client library and the load tester send and read
//! them; this is the one table.

/// → node: login (`id`, `pwd`/`password`); answered by [`LOGIN_ACK`].
pub const LOGIN: u64 = 1;
/// ← node: login reply, success and failure.
pub const LOGIN_ACK: u64 = 2;
/// → node: logout (`id` optional); answered by [`LOGOUT_ACK`].
pub const LOGOUT: u64 = 3;
/// → node: register (`name`, `pwd`/`password`); answered by [`REGISTER_ACK`].
pub const REGISTER: u64 = 4;
/// ← node: register reply.
pub const REGISTER_ACK: u64 = 5;
/// Both ways: one-to-one chat, a request → node (`toid`, `msg`; answered by
/// [`ONE_CHAT_ACK`]) and a push ← node.
pub const ONE_CHAT: u64 = 6;
/// → node: add friend (`friendid`); answered by [`ADD_FRIEND_ACK`].
pub const ADD_FRIEND: u64 = 7;
/// → node: create group (`groupname`, `groupdesc`); answered by
/// [`CREATE_GROUP_ACK`].
pub const CREATE_GROUP: u64 = 8;
/// → node: join group (`groupid`); answered by [`JOIN_GROUP_ACK`].
pub const JOIN_GROUP: u64 = 9;
/// Both ways: group chat, a request → node (`groupid`, `msg`; answered by
/// [`GROUP_CHAT_ACK`]) and a push ← node.
pub const GROUP_CHAT: u64 = 10;
/// ← node: logout reply.
pub const LOGOUT_ACK: u64 = 11;
/// ← node: one-to-one chat reply (`messageid`).
pub const ONE_CHAT_ACK: u64 = 12;
/// ← node: add friend reply.
pub const ADD_FRIEND_ACK: u64 = 13;
/// ← node: create group reply (`groupid`).
pub const CREATE_GROUP_ACK: u64 = 14;
/// ← node: join group reply (`groupid`).
pub const JOIN_GROUP_ACK: u64 = 15;
/// ← node: group chat reply (`messageid`).
pub const GROUP_CHAT_ACK: u64 = 16;
/// ← node: reply to a request of unknown kind (bad JSON, unknown msgid).
pub const GENERIC_ACK: u64 = 17;
/// → node: ping; answered by [`PING_ACK`].
pub const PING: u64 = 18;
/// ← node: ping reply (`time`).
pub const PING_ACK: u64 = 19;
/// → node: load probe (no login needed); answered by [`LOAD_ACK`].
pub const LOAD: u64 = 20;
/// ← node: load report (`nodeid`, `address`, `connections`, `capacity`,
/// `shardbusy`, `outboundbytes`, `draining`).
pub const LOAD_ACK: u64 = 21;
/// → node: remove friend (`friendid`); answered by [`REMOVE_FRIEND_ACK`].
pub const REMOVE_FRIEND: u64 = 30;
/// ← node: remove friend reply.
pub const REMOVE_FRIEND_ACK: u64 = 31;
/// → node: leave group (`groupid`); answered by [`LEAVE_GROUP_ACK`].
pub const LEAVE_GROUP: u64 = 32;
/// ← node: leave group reply.
pub const LEAVE_GROUP_ACK: u64 = 33;
/// → node: remove a member, creator only (`groupid`, `userid`); answered by
/// [`REMOVE_MEMBER_ACK`].
pub const REMOVE_MEMBER: u64 = 34;
/// ← node: remove member reply.
pub const REMOVE_MEMBER_ACK: u64 = 35;
/// → node: group info (`groupid`); answered by [`GROUP_INFO_ACK`].
pub const GROUP_INFO: u64 = 36;
/// ← node: group info reply (`groupid`, `groupname`, `groupdesc`, `users`).
pub const GROUP_INFO_ACK: u64 = 37;
/// → node: find user by name (`name`); answered by [`FIND_USER_ACK`].
pub const FIND_USER: u64 = 38;
/// ← node: find user reply (`userid`, `name`, `state`).
pub const FIND_USER_ACK: u64 = 39;
/// → node: history, a page of a conversation (`peer` or `groupid`,
/// `before`, `limit`); answered by [`HISTORY_ACK`].
pub const HISTORY: u64 = 40;
/// ← node: history reply (`messages`, `more`, `readupto`).
pub const HISTORY_ACK: u64 = 41;
/// → node: mark a conversation read (`peer` or `groupid`, `upto`); answered
/// by [`MARK_READ_ACK`].
pub const MARK_READ: u64 = 42;
/// ← node: mark read reply.
pub const MARK_READ_ACK: u64 = 43;
/// → node: readers of a group message (`groupid`, `messageid`); answered by
/// [`READERS_ACK`].
pub const READERS: u64 = 44;
/// ← node: readers reply (`readers`, `members`).
pub const READERS_ACK: u64 = 45;
/// ← node, push: read receipt (`id` read the conversation with `peer` up to
/// `upto`).
pub const READ_RECEIPT: u64 = 46;
/// ← node, push: the group's creator removed you from `groupid`.
pub const REMOVED_FROM_GROUP: u64 = 47;
/// ← node, push: `friendid` removed you from their friends.
pub const FRIEND_REMOVED: u64 = 48;
/// ← node, push: one of your groups that did not fit in the login reply.
pub const GROUP: u64 = 49;
/// → node: delivery acknowledgement (`messageid`: everything pushed to this
/// session up to it has arrived); answered by [`GENERIC_ACK`]. From the
/// first one on, the session's messages count as delivered only by these,
/// no longer by the client's next request.
pub const DELIVERY_ACK: u64 = 50;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msgids_are_distinct_and_in_their_ranges() {
        let all = [
            LOGIN,
            LOGIN_ACK,
            LOGOUT,
            REGISTER,
            REGISTER_ACK,
            ONE_CHAT,
            ADD_FRIEND,
            CREATE_GROUP,
            JOIN_GROUP,
            GROUP_CHAT,
            LOGOUT_ACK,
            ONE_CHAT_ACK,
            ADD_FRIEND_ACK,
            CREATE_GROUP_ACK,
            JOIN_GROUP_ACK,
            GROUP_CHAT_ACK,
            GENERIC_ACK,
            PING,
            PING_ACK,
            LOAD,
            LOAD_ACK,
            REMOVE_FRIEND,
            REMOVE_FRIEND_ACK,
            LEAVE_GROUP,
            LEAVE_GROUP_ACK,
            REMOVE_MEMBER,
            REMOVE_MEMBER_ACK,
            GROUP_INFO,
            GROUP_INFO_ACK,
            FIND_USER,
            FIND_USER_ACK,
            HISTORY,
            HISTORY_ACK,
            MARK_READ,
            MARK_READ_ACK,
            READERS,
            READERS_ACK,
            READ_RECEIPT,
            REMOVED_FROM_GROUP,
            FRIEND_REMOVED,
            GROUP,
            DELIVERY_ACK,
        ];
        let mut sorted = all.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len());
        let expected: Vec<u64> = (1..=21).chain(30..=50).collect();
        assert_eq!(sorted, expected);
    }
}
