//! Connecting from a chosen source address: load generators spread many
//! connections over 127.0.0.x because one source address has only ~28 000
//! ephemeral ports towards one destination. With
//! `IP_BIND_ADDRESS_NO_PORT` set before `bind(ip, 0)`, the port is chosen at
//! `connect` time, so ports only need to be unique per destination.

use std::io;
use std::os::fd::AsRawFd;

/// Sets `IP_BIND_ADDRESS_NO_PORT` on a socket not yet bound.
pub fn bind_no_port(socket: &impl AsRawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
