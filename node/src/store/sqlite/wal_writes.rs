//! A VFS shim that turns SQLite's writes of one commit to the write-ahead
//! log into one `pwrite`.
//!
//! # Why
//!
//! SQLite appends each page a commit changed to the WAL as a frame, with
//! two `pwrite` calls per frame (its 24-byte header, then the page): a
//! direct message is about four frames, so eight system calls, and at
//! 5 000 messages/s `pwrite` was 14 % of the node's CPU. The bytes are
//! contiguous, so one call can write them all. SQLite has no setting for
//! this and no crate does it, hence this shim (about 200 lines over the
//! `unix` VFS, the default one).
//!
//! # How
//!
//! The VFS [`NAME`] is SQLite's default VFS with one change: a WAL file
//! opened through it gathers writes in memory and writes them with one
//! call when
//! - the page of a commit frame (a frame whose header carries the database
//!   size, which only the last frame of a commit does) has been gathered,
//!   so a commit's frames are in the file before `xWrite` returns for its
//!   last one, as without the shim;
//! - or before anything that reads or sizes the file (`xRead`,
//!   `xFileSize`, `xFetch`), syncs it, truncates it or closes it, before
//!   any file control, and before a write that does not continue the
//!   gathered bytes (a rolled-back transaction's frames are then written
//!   out, unused, as SQLite would have written them);
//! - or before gathering more than [`MAX_GATHERED`] bytes (a large
//!   commit, a transaction spilling pages): then a commit takes a few
//!   calls.
//!
//! Every other file (the database, its `-shm` index, journals) is the
//! default VFS's own, untouched.
//!
//! # Failure semantics
//!
//! Unchanged from SQLite's. Other connections and processes read frames
//! only up to the last commit published in the `-shm` index, which SQLite
//! updates after the commit frame's `xWrite` returned, so after the
//! gathered bytes are in the file. A failed write is reported by the
//! `xWrite` (or the call) that triggered it, and the transaction fails as
//! it would have; the gathered bytes are dropped, since SQLite writes a
//! failed transaction's frames again, at the same offsets, if it retries.
//! A process that dies loses only the frames of a commit that had not
//! returned, which SQLite would not have counted as committed either.
//!
//! Costs: one buffer per open WAL file (at most [`MAX_GATHERED`]), one
//! copy of each frame into it.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The VFS's name, for `Connection::open_with_flags_and_vfs`.
pub const NAME: &CStr = c"chat-wal-writes";

/// At most this many bytes are gathered: a write that would pass it writes
/// out what is gathered first. The `unix` VFS writes at most 128 KiB − 1
/// bytes per call (SQLite itself never asks for more than a page), and a
/// commit of a few messages is tens of KiB.
pub const MAX_GATHERED: usize = 96 * 1024;

/// Bytes of a WAL frame header; bytes 4..8 are the database size after a
/// commit (0 in every frame but a commit's last).
const FRAME_HEADER: usize = 24;

/// Registers the VFS (once per process); returns its name.
pub fn register() -> Result<&'static CStr, String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            // SAFETY: sqlite3_vfs_find(NULL) returns the default VFS, which
            // lives as long as the process; the new VFS is leaked, so it
            // does too, as SQLite requires of a registered VFS.
            unsafe {
                let base = ffi::sqlite3_vfs_find(std::ptr::null());
                if base.is_null() {
                    return Err("sqlite: no default VFS".into());
                }
                let mut vfs = *base;
                vfs.zName = NAME.as_ptr();
                vfs.pAppData = base.cast();
                vfs.pNext = std::ptr::null_mut();
                vfs.szOsFile = (std::mem::size_of::<WalFile>() as c_int) + (*base).szOsFile;
                vfs.xOpen = Some(open);
                vfs.xDelete = Some(vfs_delete);
                vfs.xAccess = Some(vfs_access);
                vfs.xFullPathname = Some(vfs_full_pathname);
                vfs.xRandomness = Some(vfs_randomness);
                vfs.xSleep = Some(vfs_sleep);
                vfs.xCurrentTime = Some(vfs_current_time);
                vfs.xGetLastError = Some(vfs_get_last_error);
                vfs.xCurrentTimeInt64 = Some(vfs_current_time_int64);
                // No extensions are loaded; system call overrides are the
                // default VFS's own (they take no state from the VFS).
                let vfs = Box::leak(Box::new(vfs));
                match ffi::sqlite3_vfs_register(vfs, 0) {
                    ffi::SQLITE_OK => Ok(()),
                    rc => Err(format!(
                        "sqlite: registering the {NAME:?} VFS failed ({rc})"
                    )),
                }
            }
        })
        .clone()
        .map(|()| NAME)
}

/// An open WAL file: the default VFS's file follows this struct in the
/// memory SQLite allocated (`szOsFile`).
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    /// The default VFS's file, right after this struct.
    inner: *mut ffi::sqlite3_file,
    gathered: Vec<u8>,
    /// File offset of `gathered[0]`.
    at: i64,
    /// The last frame header gathered was a commit's: flush after its page.
    commit_page_next: bool,
}

static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY (whole function): SQLite passes our VFS, whose pAppData is the
    // default VFS, and `file` points to szOsFile bytes for us to fill.
    unsafe {
        let base = (*vfs).pAppData.cast::<ffi::sqlite3_vfs>();
        let Some(base_open) = (*base).xOpen else {
            return ffi::SQLITE_CANTOPEN;
        };
        if flags & ffi::SQLITE_OPEN_WAL == 0 {
            // Not a WAL: the default VFS's file, as is.
            return base_open(base, name, file, flags, out_flags);
        }
        let wal = file.cast::<WalFile>();
        let inner = wal.add(1).cast::<ffi::sqlite3_file>();
        let rc = base_open(base, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            // SQLite calls xClose only if pMethods is set.
            (*file).pMethods = std::ptr::null();
            return rc;
        }
        wal.write(WalFile {
            base: ffi::sqlite3_file {
                pMethods: &WAL_METHODS,
            },
            inner,
            gathered: Vec::new(),
            at: 0,
            commit_page_next: false,
        });
        ffi::SQLITE_OK
    }
}

/// The WAL file behind `file`.
///
/// # Safety
/// `file` was opened by [`open`] as a WAL file and not yet closed.
unsafe fn wal<'a>(file: *mut ffi::sqlite3_file) -> &'a mut WalFile {
    unsafe { &mut *file.cast::<WalFile>() }
}

/// The default VFS's methods of the file behind `w`.
fn methods(w: &WalFile) -> &ffi::sqlite3_io_methods {
    // SAFETY: the default VFS set pMethods when it opened the file.
    unsafe { &*(*w.inner).pMethods }
}

/// Writes out what is gathered, in one call.
fn flush(w: &mut WalFile) -> c_int {
    if w.gathered.is_empty() {
        return ffi::SQLITE_OK;
    }
    let Some(write) = methods(w).xWrite else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let Ok(len) = c_int::try_from(w.gathered.len()) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // SAFETY: `inner` is open; the buffer is valid for `len` bytes.
    let rc = unsafe { write(w.inner, w.gathered.as_ptr().cast(), len, w.at) };
    #[cfg(test)]
    tests::WRITES.with(|n| n.set(n.get() + 1));
    w.gathered.clear();
    w.commit_page_next = false;
    rc
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amt: c_int,
    offset: i64,
) -> c_int {
    let w = unsafe { wal(file) };
    let Ok(len) = usize::try_from(amt) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // SAFETY: SQLite passes `amt` readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
    if !w.gathered.is_empty()
        && (offset != w.at + w.gathered.len() as i64 || w.gathered.len() + len > MAX_GATHERED)
    {
        let rc = flush(w);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    if w.gathered.is_empty() {
        w.at = offset;
    }
    w.gathered.extend_from_slice(bytes);
    if w.commit_page_next && len != FRAME_HEADER {
        // The page of a commit frame: the commit is whole.
        return flush(w);
    }
    // A frame header (the WAL's own header, at 0, is 32 bytes): does it end
    // a commit?
    w.commit_page_next = len == FRAME_HEADER && offset > 0 && bytes[4..8].iter().any(|&b| b != 0);
    ffi::SQLITE_OK
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    let w = unsafe { wal(file) };
    let flushed = flush(w);
    // SAFETY: `inner` is open; it is closed once, here.
    let closed = match methods(w).xClose {
        Some(close) => unsafe { close(w.inner) },
        None => ffi::SQLITE_OK,
    };
    // SAFETY: written by `open`, dropped once; SQLite frees the memory.
    unsafe { std::ptr::drop_in_place(&mut w.gathered) };
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        closed
    }
}

/// Defines a method that writes out what is gathered, then forwards the
/// call to the default VFS's file.
macro_rules! flush_then {
    ($name:ident, $method:ident ( $($arg:ident : $ty:ty),* )) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            let w = unsafe { wal(file) };
            let rc = flush(w);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            match methods(w).$method {
                Some(inner) => unsafe { inner(w.inner $(, $arg)*) },
                None => ffi::SQLITE_IOERR,
            }
        }
    };
}

/// Defines a method that forwards the call as is.
macro_rules! forward {
    ($name:ident -> $ret:ty, $method:ident ( $($arg:ident : $ty:ty),* )) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> $ret {
            let w = unsafe { wal(file) };
            match methods(w).$method {
                Some(inner) => unsafe { inner(w.inner $(, $arg)*) },
                None => ffi::SQLITE_IOERR,
            }
        }
    };
}

flush_then!(read, xRead(buf: *mut c_void, amt: c_int, offset: i64));
flush_then!(truncate, xTruncate(size: i64));
flush_then!(sync, xSync(flags: c_int));
flush_then!(file_size, xFileSize(size: *mut i64));
flush_then!(file_control, xFileControl(op: c_int, arg: *mut c_void));
flush_then!(fetch, xFetch(offset: i64, amt: c_int, out: *mut *mut c_void));
forward!(lock -> c_int, xLock(level: c_int));
forward!(unlock -> c_int, xUnlock(level: c_int));
forward!(check_reserved_lock -> c_int, xCheckReservedLock(out: *mut c_int));
forward!(sector_size -> c_int, xSectorSize());
forward!(device_characteristics -> c_int, xDeviceCharacteristics());
forward!(shm_map -> c_int, xShmMap(page: c_int, size: c_int, extend: c_int, out: *mut *mut c_void));
forward!(shm_lock -> c_int, xShmLock(offset: c_int, n: c_int, flags: c_int));
forward!(shm_unmap -> c_int, xShmUnmap(delete: c_int));
forward!(unfetch -> c_int, xUnfetch(offset: i64, page: *mut c_void));

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    let w = unsafe { wal(file) };
    if let Some(barrier) = methods(w).xShmBarrier {
        unsafe { barrier(w.inner) }
    }
}

/// The default VFS, kept in our VFS's `pAppData`.
///
/// # Safety
/// `vfs` is the VFS [`register`] made.
unsafe fn base(vfs: *mut ffi::sqlite3_vfs) -> *mut ffi::sqlite3_vfs {
    unsafe { (*vfs).pAppData.cast() }
}

/// Defines a VFS method that calls the default VFS's with the default VFS
/// itself (it may read its own fields).
macro_rules! vfs_forward {
    ($name:ident -> $ret:ty, $method:ident ( $($arg:ident : $ty:ty),* ), $missing:expr) => {
        unsafe extern "C" fn $name(vfs: *mut ffi::sqlite3_vfs $(, $arg: $ty)*) -> $ret {
            let base = unsafe { base(vfs) };
            match unsafe { (*base).$method } {
                Some(inner) => unsafe { inner(base $(, $arg)*) },
                None => $missing,
            }
        }
    };
}

vfs_forward!(vfs_delete -> c_int, xDelete(name: *const c_char, sync_dir: c_int), ffi::SQLITE_IOERR_DELETE);
vfs_forward!(vfs_access -> c_int, xAccess(name: *const c_char, flags: c_int, out: *mut c_int), ffi::SQLITE_IOERR_ACCESS);
vfs_forward!(vfs_full_pathname -> c_int, xFullPathname(name: *const c_char, n: c_int, out: *mut c_char), ffi::SQLITE_CANTOPEN);
vfs_forward!(vfs_randomness -> c_int, xRandomness(n: c_int, out: *mut c_char), 0);
vfs_forward!(vfs_sleep -> c_int, xSleep(micros: c_int), 0);
vfs_forward!(vfs_current_time -> c_int, xCurrentTime(out: *mut f64), ffi::SQLITE_ERROR);
vfs_forward!(vfs_get_last_error -> c_int, xGetLastError(n: c_int, out: *mut c_char), 0);
vfs_forward!(vfs_current_time_int64 -> c_int, xCurrentTimeInt64(out: *mut i64), ffi::SQLITE_ERROR);

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use rusqlite::{Connection, OpenFlags};

    thread_local! {
        /// Writes this thread's WAL files made to the default VFS.
        pub static WRITES: Cell<u64> = const { Cell::new(0) };
    }

    fn open(path: &std::path::Path) -> Connection {
        let vfs = super::register().unwrap();
        let c = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.pragma_update(None, "synchronous", "NORMAL").unwrap();
        c
    }

    fn count(c: &Connection) -> i64 {
        c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_commit_is_one_write_and_readers_see_it_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let writer = open(&path);
        writer
            .execute_batch(
                "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b TEXT);
                 CREATE INDEX t_a ON t (a); CREATE INDEX t_b ON t (b);",
            )
            .unwrap();
        let reader = open(&path);
        for i in 0..200 {
            let before = WRITES.with(Cell::get);
            writer
                .execute(
                    "INSERT INTO t (a, b) VALUES (?1, ?2)",
                    (format!("a{}", i * 7919 % 200), format!("b{i}")),
                )
                .unwrap();
            // Three pages at least (the table and two indexes), six
            // `pwrite`s without the shim: one with it.
            assert_eq!(WRITES.with(Cell::get) - before, 1, "commit {i}");
            assert_eq!(count(&reader), i + 1);
        }
    }

    /// Transactions larger than what is gathered, rolled back ones, and a
    /// file checked whole afterwards through SQLite's own VFS.
    #[test]
    fn spills_rollbacks_and_reopening_keep_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut writer = open(&path);
        writer
            .execute_batch(
                "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB); PRAGMA cache_size = 16;",
            )
            .unwrap();
        let reader = open(&path);
        let big = vec![7u8; 64 * 1024];
        let mut expected = 0;
        for round in 0..6 {
            let tx = writer.transaction().unwrap();
            // About 6 MiB: many times `MAX_GATHERED`, and more than the
            // 16-page cache, so pages spill to the WAL mid-transaction.
            for _ in 0..96 {
                tx.execute("INSERT INTO t (v) VALUES (?1)", [&big]).unwrap();
            }
            if round % 2 == 0 {
                tx.commit().unwrap();
                expected += 96;
            } else {
                tx.rollback().unwrap();
            }
            assert_eq!(count(&reader), expected, "round {round}");
        }
        drop((writer, reader));
        let plain = Connection::open(&path).unwrap();
        let check: String = plain
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        assert_eq!(count(&plain), expected);
    }
}
