//! The exchange on a current-thread tokio runtime (epoll underneath): one
//! task per connection owns its socket, reads and hands what it read to the
//! exchange; one flush task, woken by any read, lets every ready connection
//! read first, commits once and wakes the connections with bytes to write,
//! each of which writes its own: the node's shape (connection tasks, the
//! writer as a task of the shard) with nothing else around it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::rc::Rc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::exchange::Floor;

struct Shared {
    floor: RefCell<Floor>,
    /// Each connection's wake-up for bytes to write.
    writers: RefCell<HashMap<usize, Rc<Notify>>>,
    /// Wakes the flush task.
    flush: Notify,
}

pub fn run(addr: SocketAddr, floor: Floor) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::bind(addr).await?;
        let shared = Rc::new(Shared {
            floor: RefCell::new(floor),
            writers: RefCell::new(HashMap::new()),
            flush: Notify::new(),
        });
        tokio::task::spawn_local(flush(shared.clone()));
        let mut next_token = 0usize;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let token = next_token;
            next_token += 1;
            let wake = Rc::new(Notify::new());
            shared.floor.borrow_mut().open(token);
            shared.writers.borrow_mut().insert(token, wake.clone());
            tokio::task::spawn_local(serve(shared.clone(), token, stream, wake));
        }
    })
}

async fn flush(shared: Rc<Shared>) {
    let mut dirty = Vec::new();
    loop {
        shared.flush.notified().await;
        // Every connection already woken reads before the commit.
        tokio::task::yield_now().await;
        if let Err(e) = shared.floor.borrow_mut().commit(&mut dirty) {
            eprintln!("commit failed: {e}");
            std::process::exit(1);
        }
        let writers = shared.writers.borrow();
        for token in dirty.drain(..) {
            if let Some(wake) = writers.get(&token) {
                wake.notify_one();
            }
        }
    }
}

async fn serve(shared: Rc<Shared>, token: usize, stream: TcpStream, wake: Rc<Notify>) {
    let mut scratch = vec![0u8; 16 * 1024];
    'conn: loop {
        tokio::select! {
            ready = stream.readable() => {
                if ready.is_err() {
                    break;
                }
                loop {
                    match stream.try_read(&mut scratch) {
                        Ok(0) => break 'conn,
                        Ok(n) => {
                            if !shared.floor.borrow_mut().received(token, &scratch[..n]) {
                                break 'conn;
                            }
                            shared.flush.notify_one();
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => break 'conn,
                    }
                }
            }
            _ = wake.notified() => loop {
                match write(&shared, token, &stream) {
                    Written::All => break,
                    Written::Blocked => {
                        if stream.writable().await.is_err() {
                            break 'conn;
                        }
                    }
                    Written::Failed => break 'conn,
                }
            },
        }
    }
    shared.floor.borrow_mut().close(token);
    shared.writers.borrow_mut().remove(&token);
}

enum Written {
    All,
    Blocked,
    Failed,
}

/// Writes what the exchange holds for `token` until it is all written or
/// the socket would block.
fn write(shared: &Shared, token: usize, stream: &TcpStream) -> Written {
    let mut floor = shared.floor.borrow_mut();
    let Some(output) = floor.output(token) else {
        return Written::Failed;
    };
    while !output.is_empty() {
        match stream.try_write(output) {
            Ok(n) => {
                output.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Written::Blocked,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Written::Failed,
        }
    }
    Written::All
}
