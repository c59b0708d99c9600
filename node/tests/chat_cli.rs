//! The `chat` command-line client against a real node: two users, each in
//! their own `chat` process, register, befriend, chat and group-chat, the way
//! the seed's `ChatClient` is used.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One `chat` process with its stdin and everything it printed so far.
struct Chat {
    child: Child,
    stdin: ChildStdin,
    output: Arc<Mutex<String>>,
}

impl Chat {
    fn start(addr: std::net::SocketAddr) -> Chat {
        let binary =
            chat_testkit::find_binary("chat", "CHAT_BIN").unwrap_or_else(|e| panic!("{e}"));
        let mut child = Command::new(binary)
            .arg("--addr")
            .arg(addr.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chat");
        let stdin = child.stdin.take().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = output.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        Chat {
            child,
            stdin,
            output,
        }
    }

    fn type_line(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Waits until the output contains `text`; returns the output.
    fn expect(&self, text: &str) -> String {
        let started = Instant::now();
        loop {
            let out = self.output.lock().unwrap().clone();
            if out.contains(text) {
                return out;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no {text:?} in:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn quit(mut self) {
        self.type_line("3");
        drop(self.stdin);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "chat exits cleanly");
    }
}

#[test]
fn two_chat_clients_register_befriend_chat_and_group_chat() {
    let node = common::node();
    let mut alice = Chat::start(node.addr);
    let mut bob = Chat::start(node.addr);
    for (c, name) in [(&mut alice, "alice"), (&mut bob, "bob")] {
        c.type_line("2");
        c.type_line(name);
        c.type_line("pw");
        c.expect(&format!("name {name} register success"));
    }
    // Ids are 1 and 2 on a fresh node.
    alice.type_line("1");
    alice.type_line("1");
    alice.type_line("pw");
    alice.expect("alice");
    bob.type_line("1");
    bob.type_line("2");
    bob.type_line("pw");
    bob.expect("bob");

    alice.type_line("addfriend:2");
    alice.type_line("chat:2:hello bob");
    bob.expect("hello bob");
    bob.type_line("chat:1:hi alice");
    alice.expect("hi alice");

    alice.type_line("creategroup:devs:the team");
    alice.expect("created group 1 devs");
    bob.type_line("addgroup:1");
    bob.expect("joined group 1 devs (2 members)");
    alice.type_line("groupchat:1:standup now");
    let out = bob.expect("standup now");
    assert!(out.contains("[1]alice said"), "{out}");

    alice.type_line("loginout");
    bob.type_line("loginout");
    alice.quit();
    bob.quit();
}

#[test]
fn chat_reconnects_by_itself_and_prints_what_came_meanwhile_once() {
    let node = common::node();
    let relay = chat_testkit::Relay::start(node.addr);
    let mut alice = Chat::start(node.addr);
    let mut bob = Chat::start(relay.addr);
    for (c, name) in [(&mut alice, "alice"), (&mut bob, "bob")] {
        c.type_line("2");
        c.type_line(name);
        c.type_line("pw");
        c.expect(&format!("name {name} register success"));
    }
    for (c, id) in [(&mut alice, "1"), (&mut bob, "2")] {
        c.type_line("1");
        c.type_line(id);
        c.type_line("pw");
        c.expect("current login user");
    }
    alice.type_line("chat:2:before the cut");
    bob.expect("before the cut");

    relay.cut();
    bob.expect("connection lost; reconnecting in");
    bob.type_line("chat:1:while away");
    bob.expect("the request was not sent");
    alice.type_line("chat:2:while you were away");
    relay.resume();
    bob.expect("reconnected to");
    let out = bob.expect("while you were away");
    assert_eq!(out.matches("before the cut").count(), 1, "{out}");
    alice.type_line("chat:2:welcome back");
    let out = bob.expect("welcome back");
    assert_eq!(out.matches("while you were away").count(), 1, "{out}");
    // What bob typed while away was not sent, then or later: the
    // conversation holds the three messages alice sent.
    alice.type_line("history:2");
    let alice_out = alice.expect("3 messages with user 2");
    assert!(!alice_out.contains("while away\n"), "{alice_out}");

    alice.type_line("loginout");
    bob.type_line("loginout");
    alice.quit();
    bob.quit();
}

#[test]
fn chat_reconnects_before_login_too() {
    let node = common::node();
    let relay = chat_testkit::Relay::start(node.addr);
    let mut carol = Chat::start(relay.addr);
    carol.expect("3. quit");

    relay.cut();
    carol.type_line("2");
    carol.type_line("carol");
    carol.type_line("pw");
    carol.expect("connection to the server lost");
    carol.expect("reconnecting in");
    relay.resume();
    carol.expect("reconnected to");

    // The menu again, on the new connection.
    carol.type_line("2");
    carol.type_line("carol");
    carol.type_line("pw");
    carol.expect("name carol register success");
    carol.type_line("1");
    carol.type_line("1");
    carol.type_line("pw");
    carol.expect("current login user");
    carol.type_line("loginout");
    carol.quit();
}
