//! Moving bytes between a client and its node once both are connected.
//!
//! Each direction is a [`Pipe`]: bytes read from one socket into its own
//! buffer (16 KiB; it doubles up to 64 KiB while reads fill it, as in a bulk
//! transfer, and goes back to 16 KiB at the first read under 8 KiB) and
//! written whole to the other before the next read, so a slow reader holds
//! back its writer (at most one buffer per direction is in the balancer).
//! Both directions are pumped by the connection's event handler at every
//! readiness event on either socket, so no wake-up can be lost between a
//! reading side and a writing side (the failure issue 18 found in the node
//! when its reader and writer were two tasks on one stream).
//!
//! At EOF:
//! - by default (`--half-close`, nginx's `proxy_half_close on`, HAProxy's
//!   behaviour): the write half towards the other side is shut down and the
//!   reverse direction keeps flowing until it ends too, so a client that
//!   sends its last request and shuts down its side still gets the replies.
//!   When the second direction ends, the connection closes at once: the
//!   close sends the FIN, so no `shutdown` is made for it.
//! - with `--half-close false` (nginx's default, `proxy_half_close off`):
//!   when one side stops sending, both connections are closed. Bytes
//!   already read from that side have been written whole to the other;
//!   bytes the other side was still sending are dropped.
//!
//! Cost per chunk: the readiness event, one `recv` into user space, one
//! `send` out. A `recv` that fills less than the buffer means the socket is
//! drained (the events are edge-triggered: a byte arriving later makes a new
//! event), so a small chat frame costs no extra `recv` that would return
//! EAGAIN; tokio and nginx do the same. splice(2) through a pipe would save
//! the copies but costs a pipe (two more fds) per direction, which at the
//! 20,000-fd ceiling would halve the connections a process can hold; see
//! docs/balancer.md.

use std::io::{self, Write};
use std::net::Shutdown;

use mio::event::Event;
use mio::net::TcpStream;

/// Bytes read per chunk in each direction, at first.
const CHUNK: usize = 16 * 1024;
/// What a direction's buffer grows to, doubling at each read that fills it.
const MAX_CHUNK: usize = 64 * 1024;

/// How a relayed connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed their sending half.
    Closed,
    /// A read or write failed (reset, broken pipe).
    Error,
    /// No byte either way for `idle_timeout`.
    Idle,
}

impl End {
    pub const ALL: [End; 3] = [End::Closed, End::Error, End::Idle];

    pub fn name(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Error => "error",
            End::Idle => "idle",
        }
    }
}

/// How the relay ends at EOF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtEof {
    /// Close both sides at the first EOF (`--half-close false`, nginx's
    /// default).
    CloseBoth,
    /// Shut down the other side's write half and keep relaying the other
    /// way (`--half-close`, the default).
    HalfClose,
}

/// One socket of a connection and what its readiness events have said.
pub struct Side {
    pub stream: TcpStream,
    /// It may have bytes to read: set by a readable event, cleared once a
    /// read drains it.
    readable: bool,
    /// Its peer has closed its sending half (or the socket failed). The EOF
    /// may have come in the same event as the last bytes, so then a short
    /// read does not mean drained: reading goes on until EOF.
    closed: bool,
}

impl Side {
    pub fn new(stream: TcpStream) -> Side {
        Side {
            stream,
            readable: false,
            closed: false,
        }
    }

    /// Notes what a readiness event on this socket says.
    pub fn note(&mut self, event: &Event) {
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.readable = true;
            self.closed |= event.is_read_closed() || event.is_error();
        }
    }
}

/// Whether a direction is still open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Waiting for its source to become readable or its destination
    /// writable.
    Open,
    /// Its source ended and everything read was written.
    Ended,
}

/// One direction: bytes read and not yet written are `buf[start..]`.
pub struct Pipe {
    /// Its capacity is the read size; it is never zeroed (reads go into
    /// its spare capacity).
    buf: Vec<u8>,
    start: usize,
    eof: bool,
    /// Bytes read from the source so far.
    pub moved: u64,
}

impl Pipe {
    /// A direction whose first bytes out are `first` (the PROXY header, if
    /// any; it is not counted in `moved`).
    pub fn new(first: Vec<u8>) -> Pipe {
        Pipe {
            buf: first,
            start: 0,
            eof: false,
            moved: 0,
        }
    }

    /// Moves bytes from `from` to `to` until one would block or `from`
    /// ends; at its end, with [`AtEof::HalfClose`], shuts down `to`'s write
    /// half, unless `other_ended` (the other direction is over too, so the
    /// connection closes and the close sends the FIN: one system call less).
    /// Reads only while `from` may be readable, so that no read is made just
    /// to hear EAGAIN.
    pub fn pump(
        &mut self,
        from: &mut Side,
        to: &mut TcpStream,
        at_eof: AtEof,
        other_ended: bool,
    ) -> io::Result<Flow> {
        loop {
            if !self.flush(to)? {
                return Ok(Flow::Open);
            }
            if self.eof {
                return Ok(Flow::Ended);
            }
            if !from.readable {
                return Ok(Flow::Open);
            }
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() < CHUNK {
                // The first read (or the first after the PROXY header).
                self.buf = Vec::with_capacity(CHUNK);
            }
            let size = self.buf.capacity();
            match socket2::SockRef::from(&from.stream).recv(self.buf.spare_capacity_mut()) {
                Ok(0) => {
                    self.eof = true;
                    if at_eof == AtEof::HalfClose && !other_ended {
                        let _ = to.shutdown(Shutdown::Write);
                    }
                    return Ok(Flow::Ended);
                }
                Ok(n) => {
                    // SAFETY: recv(2) initialized the first n bytes of the
                    // spare capacity it was given.
                    unsafe { self.buf.set_len(n) };
                    self.moved += n as u64;
                    let drained = n < size && !from.closed;
                    // A full read means a bulk transfer: read more per
                    // call. A short one after that means it is over: give
                    // the memory back (once this chunk is written).
                    if n == size && size < MAX_CHUNK {
                        self.buf.reserve_exact(size);
                    }
                    if drained {
                        from.readable = false;
                        let flushed = self.flush(to)?;
                        if flushed && n < CHUNK / 2 && size > CHUNK {
                            self.buf = Vec::with_capacity(CHUNK);
                        }
                        return Ok(Flow::Open);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    from.readable = false;
                    return Ok(Flow::Open);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Its source ended and everything read from it was written.
    pub fn ended(&self) -> bool {
        self.eof && self.start == self.buf.len()
    }

    /// Writes what is buffered: `Ok(true)` once all of it is written,
    /// `Ok(false)` if `to` would block first (its writable event resumes).
    fn flush(&mut self, to: &mut TcpStream) -> io::Result<bool> {
        while self.start < self.buf.len() {
            match to.write(&self.buf[self.start..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.start += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}
