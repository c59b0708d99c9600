//! The exchange on one `mio` poll (edge-triggered epoll): each wake-up reads
//! every ready socket, commits once and writes each touched connection once.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::exchange::Floor;

const LISTENER: Token = Token(usize::MAX);

pub fn run(addr: SocketAddr, mut floor: Floor) -> anyhow::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut sockets: HashMap<usize, TcpStream> = HashMap::new();
    let mut events = Events::with_capacity(1024);
    let mut next_token = 0usize;
    let mut scratch = vec![0u8; 64 * 1024];
    let mut dirty = Vec::new();
    loop {
        poll.poll(&mut events, None)?;
        for event in events.iter() {
            if event.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    stream.set_nodelay(true)?;
                    let token = next_token;
                    next_token += 1;
                    poll.registry().register(
                        &mut stream,
                        Token(token),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    sockets.insert(token, stream);
                    floor.open(token);
                }
                continue;
            }
            let token = event.token().0;
            if event.is_readable() && !read(&mut sockets, &mut floor, token, &mut scratch) {
                sockets.remove(&token);
                floor.close(token);
                continue;
            }
            if event.is_writable() {
                dirty.push(token);
            }
        }
        floor.commit(&mut dirty)?;
        for token in dirty.drain(..) {
            let written = match (sockets.get_mut(&token), floor.output(token)) {
                (Some(stream), Some(output)) => write(stream, output),
                _ => continue,
            };
            if !written {
                sockets.remove(&token);
                floor.close(token);
            }
        }
    }
}

/// Reads all `token` has sent into the exchange; false when it ended.
fn read(
    sockets: &mut HashMap<usize, TcpStream>,
    floor: &mut Floor,
    token: usize,
    scratch: &mut [u8],
) -> bool {
    let Some(stream) = sockets.get_mut(&token) else {
        return true;
    };
    loop {
        match stream.read(scratch) {
            Ok(0) => return false,
            Ok(n) => {
                if !floor.received(token, &scratch[..n]) {
                    return false;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// Writes what it can of `output`, draining it; false when the socket failed.
fn write(stream: &mut TcpStream, output: &mut Vec<u8>) -> bool {
    let mut written = 0;
    let mut ok = true;
    while written < output.len() {
        match stream.write(&output[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                ok = false;
                break;
            }
        }
    }
    output.drain(..written);
    ok
}
