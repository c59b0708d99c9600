//! `chat`: the seed's interactive client (`ChatClient IP PORT`) over the
//! node's FlatBuffers protocol.
//!
//! Menu `1. login`, `2. register`, `3. quit`; after login it shows the user's
//! friends, groups, unread counts per conversation and offline messages,
//! then reads commands (`help`, `chat:friendid:message`,
//! `addfriend:friendid`, `removefriend:friendid`,
//! `creategroup:groupname:groupdesc`, `addgroup:groupid`,
//! `leavegroup:groupid`, `removemember:groupid:userid`, `groupinfo:groupid`,
//! `readers:groupid:messageid`, `find:username`, `groupchat:groupid:message`, `history:userid[:beforeid]`,
//! `grouphistory:groupid[:beforeid]`, `read:userid`, `loginout`) while
//! printing incoming messages, presence changes, read receipts and removals
//! (from a group, from a friend list), acknowledging every message it
//! prints. Reads lines from stdin, so scripts can drive it through a pipe;
//! ends on EOF.
//!
//! `history` and `grouphistory` print one page (the node's default, 50
//! messages) **oldest first**, like a chat window, each line with its
//! message id; with `beforeid` the page ends below that id, and when older
//! messages exist the last line says which command shows them
//! (`more: use history:ID:<oldest id>`).
//!
//! When the connection drops, `chat` says
//! `connection lost; reconnecting in N ms (attempt K)`, connects again (to
//! the same `--addr`, or asks the `--balancer` again) with exponential
//! backoff and jitter, logs in again with the same id and password and says
//! `reconnected to ADDRESS`; the messages stored meanwhile are then printed,
//! none twice (see `chat_client::reconnect`). Commands typed while it is
//! reconnecting fail ("not connected ...; the request was not sent") and are
//! not sent later. Before login, a register or login that finds the
//! connection gone says `connection to the server lost: ...`, reconnects the
//! same way (without logging in) and shows the menu again.
//!
//! `read:ID` marks the direct conversation with user ID read up to the
//! newest message of it this client has seen in this login: pushed, pending
//! at login, sent with `chat`, or shown by `history`. When it has seen none,
//! it asks the node for the conversation's newest message (a history page
//! of one) and marks up to that, so `read:ID` right after login marks
//! everything read.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use chat_client::duration::parse_duration;
use chat_client::reconnect::{Backoff, Endpoint, ReconnectingClient, SessionEvent};
use chat_client::{
    ClientConfig, ClientError, Conversation, ErrorCode, Event, Group, History, Login, Message,
    MessageId, Unread, UserId,
};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};

const EXAMPLES: &str = "\
Examples:
  chat                              connect to 127.0.0.1:6000
  chat --addr 10.0.0.5:6000         connect to another node
  chat --balancer 127.0.0.1:8001    ask a chat-balancer (redirect port) for a node
  chat 127.0.0.1 6000               the seed client's `ChatClient IP PORT` form
  printf '1\\n5\\nsecret\\nchat:6:hello\\nloginout\\n3\\n' | chat
                                    log in as user 5, message user 6, quit
  (printf '1\\n6\\nsecret\\n'; sleep 5) | chat --linger 1s
                                    log in as user 6 and print what arrives
  printf '1\\n5\\nsecret\\nhistory:6\\nread:6\\nloginout\\n3\\n' | chat
                                    show user 5's latest messages with user 6
                                    (oldest first), then mark them read

After login: help, chat:friendid:message, addfriend:friendid,
removefriend:friendid, creategroup:groupname:groupdesc, addgroup:groupid,
leavegroup:groupid, removemember:groupid:userid, groupinfo:groupid,
readers:groupid:messageid, find:username, groupchat:groupid:message, history:userid[:beforeid],
grouphistory:groupid[:beforeid], read:userid, loginout.

history and grouphistory print a page of up to 50 messages, oldest first;
beforeid shows the messages older than that id. read:userid marks the
conversation read up to the newest message of it seen since login (else its
newest message); the other user gets a read receipt.

When the connection drops, chat reconnects by itself (with backoff); logged in,
it logs in again and prints the messages stored meanwhile, none twice.";

/// Interactive chat client for the chat node (the seed's `ChatClient`, over
/// the FlatBuffers protocol). Reads commands from stdin, one per line.
#[derive(Debug, Parser)]
#[command(name = "chat", version, after_help = EXAMPLES)]
struct Args {
    /// Address of the chat node.
    #[arg(long, default_value = "127.0.0.1:6000")]
    addr: String,
    /// A chat-balancer's redirect address: ask it which node to use, then
    /// connect there (overrides --addr).
    #[arg(long)]
    balancer: Option<String>,
    /// Server IP (with PORT, the seed's form; overrides --addr).
    #[arg(requires = "port")]
    ip: Option<String>,
    /// Server port.
    port: Option<u16>,
    /// After stdin ends while logged in, keep printing incoming messages
    /// this long before exiting.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    linger: Duration,
}

impl Args {
    fn address(&self) -> String {
        match (&self.ip, self.port) {
            (Some(ip), Some(port)) if ip.contains(':') => format!("[{ip}]:{port}"),
            (Some(ip), Some(port)) => format!("{ip}:{port}"),
            _ => self.addr.clone(),
        }
    }
}

/// A command typed after login.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Help,
    Chat {
        to: u64,
        text: String,
    },
    AddFriend(u64),
    RemoveFriend(u64),
    CreateGroup {
        name: String,
        description: String,
    },
    AddGroup(u64),
    LeaveGroup(u64),
    RemoveMember {
        group: u64,
        member: u64,
    },
    GroupInfo(u64),
    /// How many members of a group read up to a message.
    Readers {
        group: u64,
        message: u64,
    },
    Find(String),
    GroupChat {
        group: u64,
        text: String,
    },
    /// A page of the direct conversation with `peer`, below `before`.
    History {
        peer: u64,
        before: Option<u64>,
    },
    /// A page of group `group`'s messages, below `before`.
    GroupHistory {
        group: u64,
        before: Option<u64>,
    },
    /// Marks the direct conversation with this user read.
    Read(u64),
    LoginOut,
}

const HELP: &[(&str, &str, &str)] = &[
    ("help", "show all supported commands", "help"),
    ("chat", "one-to-one chat", "chat:friendid:message"),
    ("addfriend", "add a friend", "addfriend:friendid"),
    ("removefriend", "remove a friend", "removefriend:friendid"),
    (
        "creategroup",
        "create a group",
        "creategroup:groupname:groupdesc",
    ),
    ("addgroup", "join a group", "addgroup:groupid"),
    ("leavegroup", "leave a group", "leavegroup:groupid"),
    (
        "removemember",
        "remove a member from a group you created",
        "removemember:groupid:userid",
    ),
    (
        "groupinfo",
        "show a group and its members",
        "groupinfo:groupid",
    ),
    (
        "readers",
        "how many members of a group read up to a message",
        "readers:groupid:messageid",
    ),
    ("find", "look a user up by name", "find:username"),
    ("groupchat", "group chat", "groupchat:groupid:message"),
    (
        "history",
        "show a page of your messages with a user, oldest first",
        "history:userid[:beforeid]",
    ),
    (
        "grouphistory",
        "show a page of a group's messages, oldest first",
        "grouphistory:groupid[:beforeid]",
    ),
    ("read", "mark your messages with a user read", "read:userid"),
    ("loginout", "log out", "loginout"),
];

fn usage(command: &str) -> String {
    let format = HELP
        .iter()
        .find(|(name, _, _)| *name == command)
        .map_or("", |(_, _, format)| format);
    format!("invalid input, format {format}")
}

fn parse_id(s: &str, command: &str) -> Result<u64, String> {
    s.trim().parse().map_err(|_| usage(command))
}

/// Parses one input line: `Ok(None)` for a blank line. As in the seed, the
/// command is what precedes the first `:`, and a message is everything after
/// the id's `:` (colons included).
fn parse_command(line: &str) -> Result<Option<Command>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Ok(None);
    }
    let (name, rest) = match line.split_once(':') {
        Some((name, rest)) => (name.trim(), Some(rest)),
        None => (line.trim(), None),
    };
    let two = |rest: Option<&str>| -> Result<(String, String), String> {
        rest.and_then(|r| r.split_once(':'))
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .ok_or_else(|| usage(name))
    };
    let id = |rest: Option<&str>| parse_id(rest.ok_or_else(|| usage(name))?, name);
    // `id[:before]`; a missing, empty or 0 `before` is "from the newest".
    let page = |rest: Option<&str>| -> Result<(u64, Option<u64>), String> {
        let rest = rest.ok_or_else(|| usage(name))?;
        let (id, before) = match rest.split_once(':') {
            Some((id, before)) if !before.trim().is_empty() => {
                (id, Some(parse_id(before, name)?).filter(|&b| b != 0))
            }
            Some((id, _)) => (id, None),
            None => (rest, None),
        };
        Ok((parse_id(id, name)?, before))
    };
    let cmd = match name {
        "help" => Command::Help,
        "loginout" => Command::LoginOut,
        "chat" => {
            let (to, text) = two(rest)?;
            Command::Chat {
                to: parse_id(&to, name)?,
                text,
            }
        }
        "groupchat" => {
            let (group, text) = two(rest)?;
            Command::GroupChat {
                group: parse_id(&group, name)?,
                text,
            }
        }
        "creategroup" => {
            let (name, description) = two(rest)?;
            Command::CreateGroup { name, description }
        }
        "removemember" => {
            let (group, member) = two(rest)?;
            Command::RemoveMember {
                group: parse_id(&group, name)?,
                member: parse_id(&member, name)?,
            }
        }
        "readers" => {
            let (group, message) = two(rest)?;
            Command::Readers {
                group: parse_id(&group, name)?,
                message: parse_id(&message, name)?,
            }
        }
        "find" => match rest.map(str::trim) {
            Some(user) if !user.is_empty() => Command::Find(user.to_owned()),
            _ => return Err(usage(name)),
        },
        "addfriend" => Command::AddFriend(id(rest)?),
        "removefriend" => Command::RemoveFriend(id(rest)?),
        "addgroup" => Command::AddGroup(id(rest)?),
        "leavegroup" => Command::LeaveGroup(id(rest)?),
        "groupinfo" => Command::GroupInfo(id(rest)?),
        "history" => {
            let (peer, before) = page(rest)?;
            Command::History { peer, before }
        }
        "grouphistory" => {
            let (group, before) = page(rest)?;
            Command::GroupHistory { group, before }
        }
        "read" => Command::Read(id(rest)?),
        _ => return Err("invalid input command!".to_owned()),
    };
    Ok(Some(cmd))
}

/// A message as the seed's client prints it.
fn format_message(m: &Message) -> String {
    let line = format!(
        "{} [{}]{} said: {}",
        chat_schema::time::UtcTime(m.time_ms),
        m.sender_id,
        m.sender_name,
        m.text
    );
    if m.is_group() {
        format!("[group {}] {line}", m.group_id)
    } else {
        line
    }
}

/// The lines `history`/`grouphistory` print for `page` of `conversation`
/// (`command` is how the user asked, for the hint to the next page):
/// oldest first, each with its id.
fn history_lines(conversation: Conversation, page: &History) -> Vec<String> {
    let (what, command, id) = match conversation {
        Conversation::Direct(peer) => (format!("with user {peer}"), "history", peer),
        Conversation::Group(group) => (format!("in group {group}"), "grouphistory", group),
    };
    if page.messages.is_empty() {
        return vec![format!("no messages {what}")];
    }
    let mut lines = vec![format!(
        "{} message{} {what}, oldest first:",
        page.messages.len(),
        if page.messages.len() == 1 { "" } else { "s" }
    )];
    for m in page.messages.iter().rev() {
        lines.push(format!("#{} {}", m.id, format_message(m)));
    }
    if let Conversation::Direct(peer) = conversation
        && page.read_up_to != 0
    {
        lines.push(format!("user {peer} has read up to #{}", page.read_up_to));
    }
    if let Some(oldest) = page.next_before() {
        lines.push(format!("more: use {command}:{id}:{oldest}"));
    }
    lines
}

/// The lines listing unread messages at login (none when nothing is unread).
fn unread_lines(unread: &[Unread]) -> Vec<String> {
    unread
        .iter()
        .filter_map(|u| {
            let count = if u.count >= 999 {
                "999+".to_string()
            } else {
                u.count.to_string()
            };
            match u.conversation()? {
                Conversation::Direct(peer) => Some(format!("user {peer}: {count} unread")),
                Conversation::Group(group) => Some(format!("group {group}: {count} unread")),
            }
        })
        .collect()
}

fn online(b: bool) -> &'static str {
    if b { "online" } else { "offline" }
}

fn show_login(login: &Login) {
    println!("======================login user======================");
    println!(
        "current login user => id:{} name:{}",
        login.user_id, login.name
    );
    println!("----------------------friend list---------------------");
    for f in &login.friends {
        println!("{} {} {}", f.id, f.name, online(f.online));
    }
    println!("----------------------group list----------------------");
    for g in &login.groups {
        show_group(g);
    }
    let unread = unread_lines(&login.unread);
    if !unread.is_empty() {
        println!("----------------------unread messages-----------------");
        for line in unread {
            println!("{line}");
        }
    }
    println!("======================================================");
}

/// A group's line, then one line per member: id, name, online state, role.
fn show_group(g: &Group) {
    println!("{} {} {}", g.id, g.name, g.description);
    for m in &g.members {
        let role = match m.role {
            chat_client::Role::Creator => "creator",
            _ => "normal",
        };
        println!("{} {} {} {role}", m.id, m.name, online(m.online));
    }
}

/// The line printed for an event other than a message, if any.
fn notice(ev: &Event) -> Option<String> {
    match ev {
        Event::Message(_) => None,
        Event::Presence {
            user_id,
            name,
            online: on,
        } => Some(format!("[{user_id}]{name} is {}", online(*on))),
        Event::RemovedFromGroup { group_id } => Some(format!("removed from group {group_id}")),
        Event::Group(g) => Some(format!(
            "group [{}]{} ({} members)",
            g.id,
            g.name,
            g.members.len()
        )),
        Event::FriendRemoved { friend_id } => {
            Some(format!("user {friend_id} removed you from their friends"))
        }
        Event::ReadReceipt {
            reader_id, up_to, ..
        } => Some(format!("user {reader_id} read your messages up to {up_to}")),
        Event::Unsolicited {
            reply: chat_client::Reply::Error { code, message, .. },
            ..
        } => Some(format!("server: {message} [{code}]")),
        Event::Unsolicited { .. } => None,
    }
}

/// The line printed for news of the connection (none for a push).
fn connection_notice(ev: &SessionEvent) -> Option<String> {
    match ev {
        SessionEvent::Event(_) => None,
        SessionEvent::Reconnecting {
            attempt,
            after,
            reason,
        } => Some(format!(
            "connection lost; reconnecting in {} ms (attempt {attempt}): {reason}",
            after.as_millis()
        )),
        SessionEvent::Reconnected { address, .. } => Some(format!("reconnected to {address}")),
    }
}

fn show_help() {
    println!("show command list >>>");
    for (name, what, format) in HELP {
        println!("{name} : {what}, format {format}");
    }
    println!();
}

fn show_error(what: &str, e: &ClientError) {
    match e {
        ClientError::Server {
            code,
            message,
            retry_after,
        } => match retry_after {
            Some(after) => println!(
                "{what} failed: {message} [{code}], try again in {} ms",
                after.as_millis()
            ),
            None => println!("{what} failed: {message} [{code}]"),
        },
        other => println!("{what} failed: {other}"),
    }
}

/// Lines from stdin.
struct Input {
    lines: Lines<BufReader<Stdin>>,
}

impl Input {
    /// Prints `prompt` and reads a line; `None` at EOF.
    async fn ask(&mut self, prompt: &str) -> Option<String> {
        print!("{prompt}");
        let _ = std::io::stdout().flush();
        self.line().await
    }

    async fn line(&mut self) -> Option<String> {
        match self.lines.next_line().await {
            Ok(Some(l)) => Some(l.trim_end_matches('\r').to_owned()),
            Ok(None) => None,
            Err(e) => {
                eprintln!("reading stdin: {e}");
                None
            }
        }
    }
}

/// How a phase of the session ended.
enum End {
    /// The user asked to quit, or stdin ended.
    Quit,
    /// Back to the first menu.
    LoggedOut,
    /// The connection is gone.
    Lost(ClientError),
}

struct Session {
    /// Drops duplicates and acknowledges what it hands out.
    client: ReconnectingClient,
    input: Input,
    linger: Duration,
    /// The logged-in user (0 before login).
    me: UserId,
    /// Per user, the newest message of the direct conversation with them
    /// this login has seen (what `read:ID` marks read up to).
    newest_direct: HashMap<UserId, MessageId>,
}

impl Session {
    async fn run(&mut self) -> End {
        loop {
            println!("========================");
            println!("1. login");
            println!("2. register");
            println!("3. quit");
            println!("========================");
            let Some(choice) = self.input.ask("choice:").await else {
                return End::Quit;
            };
            let end = match choice.trim() {
                "1" => self.login().await,
                "2" => self.register().await,
                "3" => return End::Quit,
                "" => continue,
                _ => {
                    println!("invalid input!");
                    continue;
                }
            };
            match end {
                End::LoggedOut => continue,
                end => return end,
            }
        }
    }

    async fn register(&mut self) -> End {
        let Some(name) = self.input.ask("username:").await else {
            return End::Quit;
        };
        let Some(password) = self.input.ask("userpassword:").await else {
            return End::Quit;
        };
        let client = match self.client.client() {
            Ok(c) => c.clone(),
            Err(e) => return self.reconnect_before_login(e).await,
        };
        match client.register(&name, &password).await {
            Ok(id) => println!("name {name} register success, userid is {id}, do not forget it!"),
            Err(ClientError::Server {
                code: ErrorCode::NameTaken,
                ..
            }) => println!("name {name} is already exist, register error!"),
            Err(e @ ClientError::Server { .. }) => show_error("register", &e),
            Err(e) => return self.reconnect_before_login(e).await,
        }
        End::LoggedOut
    }

    async fn login(&mut self) -> End {
        let Some(id) = self.input.ask("userid:").await else {
            return End::Quit;
        };
        let Some(password) = self.input.ask("userpassword:").await else {
            return End::Quit;
        };
        let Ok(id) = id.trim().parse::<u64>() else {
            println!("invalid userid!");
            return End::LoggedOut;
        };
        let login = match self.client.login(id, &password).await {
            Ok(login) => login,
            Err(ClientError::Server { message, code, .. }) => {
                println!("{message} [{code}]");
                return End::LoggedOut;
            }
            Err(e) => return self.reconnect_before_login(e).await,
        };
        self.me = login.user_id;
        self.newest_direct.clear();
        show_login(&login);
        if !login.pending.is_empty() {
            println!("----------------------offline messages----------------");
            for m in &login.pending {
                self.print_message(m);
            }
        }
        show_help();
        self.chat().await
    }

    /// Before login, a request that found the connection gone (`e`): says
    /// so and connects again as after login (backoff, the same endpoints),
    /// printing each attempt, then goes back to the menu. Lines typed
    /// meanwhile are not kept; stdin's end quits.
    async fn reconnect_before_login(&mut self, e: ClientError) -> End {
        println!("connection to the server lost: {e}");
        loop {
            tokio::select! {
                ev = self.client.next_event() => match ev {
                    Ok(ev @ SessionEvent::Reconnected { .. }) => {
                        self.print_event(ev);
                        return End::LoggedOut;
                    }
                    Ok(ev) => self.print_event(ev),
                    Err(e) => return End::Lost(e),
                },
                line = self.input.line() => {
                    if line.is_none() {
                        return End::Quit;
                    }
                    println!("not connected (reconnecting); the input was not used");
                }
            }
        }
    }

    /// Remembers `id` as seen in the direct conversation with `peer`.
    fn saw_direct(&mut self, peer: UserId, id: MessageId) {
        let newest = self.newest_direct.entry(peer).or_default();
        *newest = (*newest).max(id);
    }

    /// Prints a message (the client has dropped duplicates and
    /// acknowledged it).
    fn print_message(&mut self, m: &Message) {
        if let Conversation::Direct(peer) = Conversation::of(m, self.me) {
            self.saw_direct(peer, m.id);
        }
        println!("{}", format_message(m));
    }

    fn print_event(&mut self, ev: SessionEvent) {
        match ev {
            SessionEvent::Event(Event::Message(m)) => self.print_message(&m),
            SessionEvent::Event(other) => {
                if let Some(line) = notice(&other) {
                    println!("{line}");
                }
            }
            news => {
                if let Some(line) = connection_notice(&news) {
                    println!("{line}");
                }
            }
        }
    }

    /// The logged-in loop: commands from stdin, events from the node.
    async fn chat(&mut self) -> End {
        loop {
            tokio::select! {
                line = self.input.line() => {
                    let Some(line) = line else {
                        self.linger().await;
                        return End::Quit;
                    };
                    match parse_command(&line) {
                        Ok(None) => {}
                        Ok(Some(cmd)) => {
                            if let Some(end) = self.execute(cmd).await {
                                return end;
                            }
                        }
                        Err(e) => println!("{e}"),
                    }
                }
                ev = self.client.next_event() => match ev {
                    Ok(ev) => self.print_event(ev),
                    Err(e) => return End::Lost(e),
                }
            }
        }
    }

    /// Prints what arrives for `self.linger`.
    async fn linger(&mut self) {
        let deadline = tokio::time::Instant::now() + self.linger;
        while let Ok(Ok(ev)) = tokio::time::timeout_at(deadline, self.client.next_event()).await {
            self.print_event(ev);
        }
    }

    async fn execute(&mut self, cmd: Command) -> Option<End> {
        if cmd == Command::Help {
            show_help();
            return None;
        }
        let c = match self.client.client() {
            Ok(c) => c.clone(),
            Err(e) => {
                println!("{e}");
                return None;
            }
        };
        let failed = match cmd {
            Command::Help => None,
            Command::Chat { to, text } => match c.send_direct(to, &text).await {
                Ok(sent) => {
                    self.saw_direct(to, sent.message_id);
                    None
                }
                Err(e) => Some(("chat", e)),
            },
            Command::GroupChat { group, text } => c
                .send_group(group, &text)
                .await
                .err()
                .map(|e| ("groupchat", e)),
            Command::AddFriend(id) => match c.add_friend(id).await {
                Ok(f) => {
                    println!("added friend {} {} {}", f.id, f.name, online(f.online));
                    None
                }
                Err(e) => Some(("addfriend", e)),
            },
            Command::CreateGroup { name, description } => {
                match c.create_group(&name, &description).await {
                    Ok(id) => {
                        println!("created group {id} {name}");
                        None
                    }
                    Err(e) => Some(("creategroup", e)),
                }
            }
            Command::AddGroup(id) => match c.join_group(id).await {
                Ok(g) => {
                    println!(
                        "joined group {} {} ({} members)",
                        g.id,
                        g.name,
                        g.members.len()
                    );
                    None
                }
                Err(e) => Some(("addgroup", e)),
            },
            Command::RemoveFriend(id) => match c.remove_friend(id).await {
                Ok(()) => {
                    println!("removed friend {id}");
                    None
                }
                Err(e) => Some(("removefriend", e)),
            },
            Command::LeaveGroup(id) => match c.leave_group(id).await {
                Ok(()) => {
                    println!("left group {id}");
                    None
                }
                Err(e) => Some(("leavegroup", e)),
            },
            Command::RemoveMember { group, member } => match c.remove_member(group, member).await {
                Ok(()) => {
                    println!("removed user {member} from group {group}");
                    None
                }
                Err(e) => Some(("removemember", e)),
            },
            Command::GroupInfo(id) => match c.group_info(id).await {
                Ok(g) => {
                    show_group(&g);
                    None
                }
                Err(e) => Some(("groupinfo", e)),
            },
            Command::Readers { group, message } => match c.readers(group, message).await {
                Ok((readers, members)) => {
                    println!("{readers} of {members} members read group {group} up to {message}");
                    None
                }
                Err(e) => Some(("readers", e)),
            },
            Command::Find(name) => match c.find_user(&name).await {
                Ok(u) => {
                    println!("{} {} {}", u.id, u.name, online(u.online));
                    None
                }
                Err(e) => Some(("find", e)),
            },
            Command::History { peer, before } => {
                let conversation = Conversation::Direct(peer);
                match c.history(conversation, before, None).await {
                    Ok(page) => {
                        if let Some(newest) = page.messages.first() {
                            self.saw_direct(peer, newest.id);
                        }
                        for line in history_lines(conversation, &page) {
                            println!("{line}");
                        }
                        None
                    }
                    Err(e) => Some(("history", e)),
                }
            }
            Command::GroupHistory { group, before } => {
                let conversation = Conversation::Group(group);
                match c.history(conversation, before, None).await {
                    Ok(page) => {
                        for line in history_lines(conversation, &page) {
                            println!("{line}");
                        }
                        None
                    }
                    Err(e) => Some(("grouphistory", e)),
                }
            }
            Command::Read(peer) => self.read(peer).await.err().map(|e| ("read", e)),
            Command::LoginOut => match self.client.logout().await {
                Ok(()) => return Some(End::LoggedOut),
                Err(e) => Some(("loginout", e)),
            },
        };
        // A lost connection is noticed (and made again) by the event loop;
        // the command is not sent again.
        if let Some((what, e)) = failed {
            show_error(what, &e);
        }
        None
    }
}

impl Session {
    /// `read:ID`: marks the direct conversation with `peer` read up to the
    /// newest message of it seen in this login, else up to its newest
    /// message (asked with a one-message history page).
    async fn read(&mut self, peer: UserId) -> Result<(), ClientError> {
        let conversation = Conversation::Direct(peer);
        let up_to = match self.newest_direct.get(&peer) {
            Some(&id) => Some(id),
            None => self
                .client
                .client()?
                .history(conversation, None, Some(1))
                .await?
                .messages
                .first()
                .map(|m| m.id),
        };
        let Some(up_to) = up_to else {
            println!("no messages with user {peer} to mark read");
            return Ok(());
        };
        self.saw_direct(peer, up_to);
        self.client.client()?.mark_read(conversation, up_to).await?;
        println!("marked your messages with user {peer} read up to {up_to}");
        Ok(())
    }
}

/// Where `chat` connects, and connects again after a drop.
fn endpoints(args: &Args) -> Vec<Endpoint> {
    match &args.balancer {
        Some(balancer) => vec![Endpoint::Redirect(balancer.clone())],
        None => vec![Endpoint::Node(args.address())],
    }
}

async fn run(args: Args) -> ExitCode {
    let endpoints = endpoints(&args);
    let config = ClientConfig {
        keepalive: Some(Duration::from_secs(60)),
        ..ClientConfig::default()
    };
    let client = match ReconnectingClient::connect(endpoints, config, Backoff::default()).await {
        Ok(c) => {
            if let Some(balancer) = &args.balancer {
                eprintln!("balancer {balancer} chose {}", c.address().unwrap_or("?"));
            }
            c
        }
        Err(e) => {
            eprintln!(
                "connect server error: {}: {e}",
                args.balancer.clone().unwrap_or_else(|| args.address())
            );
            return ExitCode::FAILURE;
        }
    };
    let mut session = Session {
        client,
        input: Input {
            lines: BufReader::new(tokio::io::stdin()).lines(),
        },
        linger: args.linger,
        me: 0,
        newest_direct: HashMap::new(),
    };
    let code = match session.run().await {
        End::Quit | End::LoggedOut => ExitCode::SUCCESS,
        End::Lost(e) => {
            println!("connection to the server lost: {e}");
            ExitCode::FAILURE
        }
    };
    session.client.close().await;
    code
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(args));
    let _ = std::io::stdout().flush();
    // A read of stdin may still be pending in a blocking thread: do not wait
    // for it.
    std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_like_the_seed() {
        let ok = |s: &str| parse_command(s).unwrap().unwrap();
        assert_eq!(ok("help"), Command::Help);
        assert_eq!(ok("loginout\r"), Command::LoginOut);
        assert_eq!(
            ok("chat:6:hello: world"),
            Command::Chat {
                to: 6,
                text: "hello: world".into()
            }
        );
        assert_eq!(
            ok("chat:6:"),
            Command::Chat {
                to: 6,
                text: String::new()
            }
        );
        assert_eq!(ok("addfriend:12"), Command::AddFriend(12));
        assert_eq!(ok("addfriend: 12 "), Command::AddFriend(12));
        assert_eq!(
            ok("creategroup:rust:crabs: all of them"),
            Command::CreateGroup {
                name: "rust".into(),
                description: "crabs: all of them".into()
            }
        );
        assert_eq!(ok("addgroup:3"), Command::AddGroup(3));
        assert_eq!(
            ok("groupchat:3:hi all"),
            Command::GroupChat {
                group: 3,
                text: "hi all".into()
            }
        );
        assert_eq!(parse_command("   ").unwrap(), None);
    }

    #[test]
    fn friend_and_group_management_commands_parse() {
        let ok = |s: &str| parse_command(s).unwrap().unwrap();
        assert_eq!(ok("removefriend:12"), Command::RemoveFriend(12));
        assert_eq!(ok("removefriend: 12 "), Command::RemoveFriend(12));
        assert_eq!(ok("leavegroup:5"), Command::LeaveGroup(5));
        assert_eq!(
            ok("removemember:5:7"),
            Command::RemoveMember {
                group: 5,
                member: 7
            }
        );
        assert_eq!(
            ok("removemember: 5 : 7\r"),
            Command::RemoveMember {
                group: 5,
                member: 7
            }
        );
        assert_eq!(ok("groupinfo:5"), Command::GroupInfo(5));
        assert_eq!(
            ok("readers:5:42"),
            Command::Readers {
                group: 5,
                message: 42
            }
        );
        assert_eq!(ok("find:alice"), Command::Find("alice".into()));
        assert_eq!(ok("find: bob smith "), Command::Find("bob smith".into()));
        assert_eq!(ok("find:a:b"), Command::Find("a:b".into()));

        let err = |s: &str| parse_command(s).unwrap_err();
        assert_eq!(
            err("removefriend"),
            "invalid input, format removefriend:friendid"
        );
        assert_eq!(
            err("leavegroup:x"),
            "invalid input, format leavegroup:groupid"
        );
        assert_eq!(
            err("removemember:5"),
            "invalid input, format removemember:groupid:userid"
        );
        assert_eq!(
            err("removemember:5:x"),
            "invalid input, format removemember:groupid:userid"
        );
        assert_eq!(err("groupinfo"), "invalid input, format groupinfo:groupid");
        assert_eq!(
            err("readers:5"),
            "invalid input, format readers:groupid:messageid"
        );
        assert_eq!(err("find"), "invalid input, format find:username");
        assert_eq!(err("find:  "), "invalid input, format find:username");
    }

    #[test]
    fn every_command_is_in_the_help() {
        for name in [
            "help",
            "chat",
            "addfriend",
            "removefriend",
            "creategroup",
            "addgroup",
            "leavegroup",
            "removemember",
            "groupinfo",
            "readers",
            "find",
            "groupchat",
            "history",
            "grouphistory",
            "read",
            "loginout",
        ] {
            assert!(
                HELP.iter().any(|(n, _, _)| *n == name),
                "{name} missing from HELP"
            );
        }
        for (_, _, format) in HELP {
            assert!(EXAMPLES.contains(format), "{format} missing from --help");
        }
    }

    #[test]
    fn history_and_read_commands_parse() {
        let ok = |s: &str| parse_command(s).unwrap().unwrap();
        assert_eq!(
            ok("history:6"),
            Command::History {
                peer: 6,
                before: None
            }
        );
        assert_eq!(
            ok("history: 6 : 40 \r"),
            Command::History {
                peer: 6,
                before: Some(40)
            }
        );
        for newest in ["history:6:", "history:6:0"] {
            assert_eq!(
                ok(newest),
                Command::History {
                    peer: 6,
                    before: None
                },
                "{newest}"
            );
        }
        assert_eq!(
            ok("grouphistory:3"),
            Command::GroupHistory {
                group: 3,
                before: None
            }
        );
        assert_eq!(
            ok("grouphistory:3:100"),
            Command::GroupHistory {
                group: 3,
                before: Some(100)
            }
        );
        assert_eq!(ok("read:6"), Command::Read(6));
        assert_eq!(ok("read: 6 "), Command::Read(6));

        let err = |s: &str| parse_command(s).unwrap_err();
        for bad in [
            "history",
            "history:",
            "history:x",
            "history:6:x",
            "history:6:1:2",
        ] {
            assert_eq!(
                err(bad),
                "invalid input, format history:userid[:beforeid]",
                "{bad}"
            );
        }
        for bad in ["grouphistory", "grouphistory:x:1", "grouphistory:3:-1"] {
            assert_eq!(
                err(bad),
                "invalid input, format grouphistory:groupid[:beforeid]",
                "{bad}"
            );
        }
        for bad in ["read", "read:", "read:x", "read:6:7"] {
            assert_eq!(err(bad), "invalid input, format read:userid", "{bad}");
        }
    }

    fn message(id: u64, sender_id: u64, recipient_id: u64, group_id: u64) -> Message {
        Message {
            id,
            sender_id,
            sender_name: if sender_id == 5 { "alice" } else { "bob" }.into(),
            recipient_id,
            group_id,
            time_ms: 0,
            text: format!("m{id}"),
        }
    }

    #[test]
    fn history_pages_print_oldest_first_with_the_next_command() {
        let page = History {
            messages: vec![message(12, 5, 6, 0), message(9, 6, 5, 0)],
            more: true,
            read_up_to: 12,
        };
        assert_eq!(
            history_lines(Conversation::Direct(6), &page),
            [
                "2 messages with user 6, oldest first:",
                "#9 1970-01-01 00:00:00 [6]bob said: m9",
                "#12 1970-01-01 00:00:00 [5]alice said: m12",
                "user 6 has read up to #12",
                "more: use history:6:9",
            ]
        );
        let page = History {
            messages: vec![message(4, 6, 0, 3)],
            more: false,
            read_up_to: 0,
        };
        assert_eq!(
            history_lines(Conversation::Group(3), &page),
            [
                "1 message in group 3, oldest first:",
                "#4 [group 3] 1970-01-01 00:00:00 [6]bob said: m4",
            ]
        );
        let page = History {
            messages: vec![message(40, 6, 0, 3)],
            more: true,
            read_up_to: 0,
        };
        assert_eq!(
            history_lines(Conversation::Group(3), &page).last().unwrap(),
            "more: use grouphistory:3:40"
        );
        assert_eq!(
            history_lines(Conversation::Direct(6), &History::default()),
            ["no messages with user 6"]
        );
    }

    #[test]
    fn unread_counts_and_read_receipts_are_shown() {
        let unread = [
            Unread {
                peer_id: 6,
                group_id: 0,
                count: 3,
            },
            Unread {
                peer_id: 0,
                group_id: 3,
                count: 999,
            },
            Unread {
                peer_id: 0,
                group_id: 0,
                count: 1,
            },
        ];
        assert_eq!(
            unread_lines(&unread),
            ["user 6: 3 unread", "group 3: 999+ unread"]
        );
        assert!(unread_lines(&[]).is_empty());
        assert_eq!(
            notice(&Event::ReadReceipt {
                reader_id: 7,
                peer_id: 5,
                up_to: 42
            })
            .as_deref(),
            Some("user 7 read your messages up to 42")
        );
    }

    #[test]
    fn removals_are_announced() {
        assert_eq!(
            notice(&Event::RemovedFromGroup { group_id: 5 }).as_deref(),
            Some("removed from group 5")
        );
        assert_eq!(
            notice(&Event::FriendRemoved { friend_id: 7 }).as_deref(),
            Some("user 7 removed you from their friends")
        );
        assert_eq!(
            notice(&Event::Presence {
                user_id: 2,
                name: "bob".into(),
                online: false
            })
            .as_deref(),
            Some("[2]bob is offline")
        );
    }

    #[test]
    fn bad_commands_say_why() {
        let err = |s: &str| parse_command(s).unwrap_err();
        assert_eq!(err("dance"), "invalid input command!");
        assert_eq!(err("chat:6"), "invalid input, format chat:friendid:message");
        assert_eq!(err("chat"), "invalid input, format chat:friendid:message");
        assert_eq!(
            err("chat:x:hi"),
            "invalid input, format chat:friendid:message"
        );
        assert_eq!(err("addfriend"), "invalid input, format addfriend:friendid");
        assert_eq!(err("addgroup:-1"), "invalid input, format addgroup:groupid");
        assert_eq!(
            err("creategroup:only"),
            "invalid input, format creategroup:groupname:groupdesc"
        );
        assert_eq!(
            err("groupchat:1"),
            "invalid input, format groupchat:groupid:message"
        );
    }

    #[test]
    fn messages_are_formatted_like_the_seed() {
        let mut m = Message {
            id: 1,
            sender_id: 5,
            sender_name: "bob".into(),
            recipient_id: 6,
            group_id: 0,
            time_ms: 0,
            text: "hi".into(),
        };
        assert_eq!(format_message(&m), "1970-01-01 00:00:00 [5]bob said: hi");
        m.group_id = 3;
        assert_eq!(
            format_message(&m),
            "[group 3] 1970-01-01 00:00:00 [5]bob said: hi"
        );
    }

    #[test]
    fn positional_address_overrides_addr() {
        let a = Args::parse_from(["chat", "10.0.0.1", "7000"]);
        assert_eq!(a.address(), "10.0.0.1:7000");
        let a = Args::parse_from(["chat", "::1", "7000"]);
        assert_eq!(a.address(), "[::1]:7000");
        let a = Args::parse_from(["chat", "--addr", "h:1"]);
        assert_eq!(a.address(), "h:1");
        assert_eq!(Args::parse_from(["chat"]).address(), "127.0.0.1:6000");
        assert!(Args::try_parse_from(["chat", "10.0.0.1"]).is_err());
    }

    #[test]
    fn reconnection_is_announced() {
        assert_eq!(
            connection_notice(&SessionEvent::Reconnecting {
                attempt: 2,
                after: Duration::from_millis(150),
                reason: "connection closed".into()
            })
            .as_deref(),
            Some("connection lost; reconnecting in 150 ms (attempt 2): connection closed")
        );
        assert_eq!(
            connection_notice(&SessionEvent::Reconnected {
                address: "127.0.0.1:6000".into(),
                login: None
            })
            .as_deref(),
            Some("reconnected to 127.0.0.1:6000")
        );
        assert_eq!(
            connection_notice(&SessionEvent::Event(Event::FriendRemoved { friend_id: 1 })),
            None
        );
    }

    #[test]
    fn reconnection_goes_where_the_first_connection_went() {
        let a = Args::parse_from(["chat", "10.0.0.1", "7000"]);
        assert_eq!(endpoints(&a), [Endpoint::Node("10.0.0.1:7000".into())]);
        let a = Args::parse_from(["chat", "--balancer", "127.0.0.1:8001"]);
        assert_eq!(endpoints(&a), [Endpoint::Redirect("127.0.0.1:8001".into())]);
    }

    #[test]
    fn cli_definition_is_valid() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
