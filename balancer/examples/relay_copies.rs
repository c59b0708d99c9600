//! Measures the two ways a relay can move bytes between two sockets, to
//! choose the balancer's: read/write through a user-space buffer (two
//! copies per chunk) versus splice(2) through a pipe (no copy to user space,
//! but a pipe, i.e. two more file descriptors, per direction).
//!
//! One run: a sink that discards, a relay thread per connection in the mode
//! under test, and senders pushing 64 KiB writes for a fixed time, all on
//! loopback. Prints bytes/s through the relay and the relay threads' CPU
//! time per GiB (from `getrusage(RUSAGE_THREAD)`), one JSON line per mode.
//!
//! ```sh
//! cargo run --release -p chat-balancer --example relay_copies -- 4 5
//! ```
//! (arguments: connections, seconds; defaults 4 and 5).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CHUNK: usize = 64 * 1024;

#[derive(Clone, Copy, Debug)]
enum Mode {
    Copy,
    Splice,
}

/// CPU time (user + system) of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Relays `from` to `to` until `from` ends; returns the thread's CPU time.
fn relay(mode: Mode, mut from: TcpStream, mut to: TcpStream) -> Duration {
    match mode {
        Mode::Copy => {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        }
        Mode::Splice => {
            let mut pipe = [0i32; 2];
            // SAFETY: pipe2 fills the two descriptors.
            assert_eq!(
                unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) },
                0
            );
            let (r, w) = (pipe[0], pipe[1]);
            'outer: loop {
                // SAFETY: splice between descriptors we own; null offsets for
                // sockets and pipes.
                let n = unsafe {
                    libc::splice(
                        from.as_raw_fd(),
                        std::ptr::null_mut(),
                        w,
                        std::ptr::null_mut(),
                        CHUNK,
                        libc::SPLICE_F_MOVE,
                    )
                };
                if n <= 0 {
                    break;
                }
                let mut left = n as usize;
                while left > 0 {
                    // SAFETY: as above.
                    let m = unsafe {
                        libc::splice(
                            r,
                            std::ptr::null_mut(),
                            to.as_raw_fd(),
                            std::ptr::null_mut(),
                            left,
                            libc::SPLICE_F_MOVE,
                        )
                    };
                    if m <= 0 {
                        break 'outer;
                    }
                    left -= m as usize;
                }
            }
            // SAFETY: closing the pipe we opened.
            unsafe {
                libc::close(r);
                libc::close(w);
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
    thread_cpu()
}

fn run(mode: Mode, connections: usize, seconds: u64) {
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    {
        let received = received.clone();
        std::thread::spawn(move || {
            for stream in sink.incoming().flatten() {
                let received = received.clone();
                std::thread::spawn(move || {
                    let mut s = stream;
                    let mut buf = vec![0u8; CHUNK];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        received.fetch_add(n as u64, Ordering::Relaxed);
                    }
                });
            }
        });
    }
    let front = TcpListener::bind("127.0.0.1:0").unwrap();
    let front_addr = front.local_addr().unwrap();
    let relays = std::thread::spawn(move || {
        let mut threads = Vec::new();
        for _ in 0..connections {
            let (client, _) = front.accept().unwrap();
            let node = TcpStream::connect(sink_addr).unwrap();
            threads.push(std::thread::spawn(move || relay(mode, client, node)));
        }
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum::<Duration>()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..connections)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(front_addr).unwrap();
                let chunk = vec![7u8; CHUNK];
                while !stop.load(Ordering::Relaxed) {
                    if s.write_all(&chunk).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (start_bytes, started) = (received.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let bytes = received.load(Ordering::Relaxed) - start_bytes;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    let cpu = relays.join().unwrap();
    let total = received.load(Ordering::Relaxed);
    let gib_per_s = bytes as f64 / elapsed.as_secs_f64() / (1u64 << 30) as f64;
    let cpu_ms_per_gib = cpu.as_secs_f64() * 1e3 / (total as f64 / (1u64 << 30) as f64);
    println!(
        "{{\"mode\":\"{mode:?}\",\"connections\":{connections},\"gib_per_s\":{gib_per_s:.3},\"relay_cpu_ms_per_gib\":{cpu_ms_per_gib:.1}}}"
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let connections = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let seconds = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    for mode in [Mode::Copy, Mode::Splice, Mode::Copy, Mode::Splice] {
        run(mode, connections, seconds);
    }
}
