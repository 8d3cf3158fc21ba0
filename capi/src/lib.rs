//! The C ABI of filerep (`libfilerep.so`, `libfilerep.a`, `include/filerep.h`).
//!
//! A C storage process opens its segment from the segment's configuration
//! file and so becomes the segment: it takes the arbiter's orders, serves as
//! primary or mirror, tracks changes and resyncs, all on threads of its own
//! process. Its storage calls go to the acting primary in the same process.
//!
//! Rules every function keeps (docs/c-api.md says them for C programmers):
//! - it returns a `FILEREP_*` code; on failure the calling thread's last
//!   error message ([`filerep_last_error`]) says what and where;
//! - a pointer, length, path or handle that is not right is refused with
//!   `FILEREP_ERR_INVALID` (or `FILEREP_ERR_CLOSED`) before anything changes;
//! - no panic crosses the boundary: it is caught, the segment is faulted
//!   (it stops, as a crash would), and the call returns `FILEREP_ERR_FAULTED`;
//! - the library keeps no pointer it was given once the call returns.
//!
//! `unsafe` appears only where a C pointer is read or written, each block
//! with the reason it is sound.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
// The C names are the ABI.
#![allow(non_camel_case_types)]

// catch_unwind is how no panic crosses into C: it needs unwinding.
#[cfg(panic = "abort")]
compile_error!("the C ABI catches panics at its boundary: build it with panic = \"unwind\"");

use filerep_lib::cluster::client::ErrorClass;
use filerep_lib::cluster::segment::{Acting, Segment, SegmentConfig, SegmentHandle, Storage};
use filerep_lib::Error;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

// ---- codes -----------------------------------------------------------------

/// Success.
pub const FILEREP_OK: c_int = 0;
/// A bad argument: a null pointer, a length that does not match, a path that
/// is not a relative filespace path, a filespace that does not exist, a bad
/// configuration file. Nothing was changed.
pub const FILEREP_ERR_INVALID: c_int = 1;
/// This segment is not the acting primary (the mirror, no role yet, handing
/// its role over, stopping): retry on the acting primary. Nothing was changed.
pub const FILEREP_ERR_NOT_PRIMARY: c_int = 2;
/// The pair cannot take the change now (the mirror was lost and the arbiter
/// has not decided or demoted this segment, or change tracking failed).
pub const FILEREP_ERR_UNAVAILABLE: c_int = 3;
/// The segment faulted (a failed fsync, or an internal error): it stopped;
/// close the handle. The arbiter and `filerep recover` decide what follows.
pub const FILEREP_ERR_FAULTED: c_int = 4;
/// Anything else: an I/O error, an address that cannot be bound.
pub const FILEREP_ERR_IO: c_int = 5;
/// The path, or a directory on the way to it, does not exist.
pub const FILEREP_ERR_NOT_FOUND: c_int = 6;
/// The path exists already (create, mkdir).
pub const FILEREP_ERR_EXISTS: c_int = 7;
/// The directory to remove, or to rename over, is not empty.
pub const FILEREP_ERR_NOT_EMPTY: c_int = 8;
/// The primary's disk is full.
pub const FILEREP_ERR_NO_SPACE: c_int = 9;
/// The handle was closed, or never opened.
pub const FILEREP_ERR_CLOSED: c_int = 10;

// The codes 1 to 9 are the local client socket's error classes.
const _: () = {
    assert!(ErrorClass::Invalid as c_int == FILEREP_ERR_INVALID);
    assert!(ErrorClass::NotPrimary as c_int == FILEREP_ERR_NOT_PRIMARY);
    assert!(ErrorClass::Unavailable as c_int == FILEREP_ERR_UNAVAILABLE);
    assert!(ErrorClass::Faulted as c_int == FILEREP_ERR_FAULTED);
    assert!(ErrorClass::Other as c_int == FILEREP_ERR_IO);
    assert!(ErrorClass::NotFound as c_int == FILEREP_ERR_NOT_FOUND);
    assert!(ErrorClass::Exists as c_int == FILEREP_ERR_EXISTS);
    assert!(ErrorClass::NotEmpty as c_int == FILEREP_ERR_NOT_EMPTY);
    assert!(ErrorClass::NoSpace as c_int == FILEREP_ERR_NO_SPACE);
};

/// Waiting for the arbiter's first order.
pub const FILEREP_ROLE_IDLE: c_int = 0;
/// Carrying out an order (becoming primary or mirror).
pub const FILEREP_ROLE_STARTING: c_int = 1;
/// The mirror: storage calls return FILEREP_ERR_NOT_PRIMARY.
pub const FILEREP_ROLE_MIRROR: c_int = 2;
/// The acting primary: storage calls are served.
pub const FILEREP_ROLE_PRIMARY: c_int = 3;
/// Not serving (stopped, faulted, or an order failed).
pub const FILEREP_ROLE_STOPPED: c_int = 4;

/// Not the primary (no mode), catalog letter '-'.
pub const FILEREP_MODE_NONE: c_int = 0;
/// Streaming to the mirror, in sync ('s').
pub const FILEREP_MODE_SYNCHRONIZED: c_int = 1;
/// Streaming while a resync brings the mirror up to date ('r').
pub const FILEREP_MODE_RESYNCHRONIZING: c_int = 2;
/// Alone, every change recorded in the change-log ('c').
pub const FILEREP_MODE_CHANGE_TRACKING: c_int = 3;
/// The mirror was lost; the arbiter is deciding, calls wait ('d').
pub const FILEREP_MODE_DECIDING: c_int = 4;
/// The pair failed here (demoted, or no decision): calls fail ('f').
pub const FILEREP_MODE_FAILED: c_int = 5;

// ---- types -----------------------------------------------------------------

/// An open segment. Opaque: `id` names it in this process and means nothing
/// else; ids are never reused, so a closed handle is refused
/// (FILEREP_ERR_CLOSED), never mistaken for another. Copy it freely between
/// threads. The zero value is never a valid handle.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct filerep_segment {
    pub id: u64,
}

/// Where a segment stands (filerep_segment_info).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct filerep_info {
    /// The segment's dbid and content, from its configuration.
    pub dbid: u32,
    pub content: u32,
    /// FILEREP_ROLE_*.
    pub role: c_int,
    /// FILEREP_MODE_* (FILEREP_MODE_NONE unless role is FILEREP_ROLE_PRIMARY).
    pub mode: c_int,
    /// The generation of the role (0 while idle or stopped).
    pub generation: u64,
    /// Bytes in a block: the length of every block buffer.
    pub block_size: u32,
    /// Filespaces: valid `fs` arguments are 0 to filespaces - 1.
    pub filespaces: u32,
}

// ---- errors ----------------------------------------------------------------

/// A refused or failed call: its code and what to say.
struct Failure {
    code: c_int,
    message: String,
}

impl Failure {
    fn invalid(message: impl Into<String>) -> Failure {
        Failure { code: FILEREP_ERR_INVALID, message: message.into() }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure { code: ErrorClass::of(&e) as c_int, message: e.to_string() }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: String) {
    // A NUL inside would cut the C string short; it cannot come from a path
    // (refused) but could from an OS message.
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// The message of the last call on this thread that failed ("" if none
/// has). The string belongs to the library: it stays valid, unchanged,
/// until the next call on this thread that fails, or the thread's end.
/// Copy it to keep it longer. Never null.
#[no_mangle]
pub extern "C" fn filerep_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The name of a FILEREP_* code ("FILEREP_ERR_CLOSED"), or "unknown code".
/// A static string: never freed, never null.
#[no_mangle]
pub extern "C" fn filerep_error_name(code: c_int) -> *const c_char {
    let name: &'static std::ffi::CStr = match code {
        FILEREP_OK => c"FILEREP_OK",
        FILEREP_ERR_INVALID => c"FILEREP_ERR_INVALID",
        FILEREP_ERR_NOT_PRIMARY => c"FILEREP_ERR_NOT_PRIMARY",
        FILEREP_ERR_UNAVAILABLE => c"FILEREP_ERR_UNAVAILABLE",
        FILEREP_ERR_FAULTED => c"FILEREP_ERR_FAULTED",
        FILEREP_ERR_IO => c"FILEREP_ERR_IO",
        FILEREP_ERR_NOT_FOUND => c"FILEREP_ERR_NOT_FOUND",
        FILEREP_ERR_EXISTS => c"FILEREP_ERR_EXISTS",
        FILEREP_ERR_NOT_EMPTY => c"FILEREP_ERR_NOT_EMPTY",
        FILEREP_ERR_NO_SPACE => c"FILEREP_ERR_NO_SPACE",
        FILEREP_ERR_CLOSED => c"FILEREP_ERR_CLOSED",
        _ => c"unknown code",
    };
    name.as_ptr()
}

/// The library's version, e.g. "0.1.0". A static string.
#[no_mangle]
pub extern "C" fn filerep_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

// ---- open segments ---------------------------------------------------------

struct Entry {
    handle: SegmentHandle,
    storage: Storage,
}

/// Every open segment by id. Held only to look one up or to add or remove
/// one: a call runs on its own reference, never under this lock.
static SEGMENTS: Mutex<BTreeMap<u64, Arc<Entry>>> = Mutex::new(BTreeMap::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn segments() -> std::sync::MutexGuard<'static, BTreeMap<u64, Arc<Entry>>> {
    SEGMENTS.lock().unwrap_or_else(|e| e.into_inner())
}

fn entry(seg: filerep_segment) -> Result<Arc<Entry>, Failure> {
    let found = segments().get(&seg.id).cloned();
    found.ok_or_else(|| closed(seg))
}

fn closed(seg: filerep_segment) -> Failure {
    Failure { code: FILEREP_ERR_CLOSED, message: format!("segment handle {} is closed or was never opened", seg.id) }
}

/// Run one call: a failure becomes its code and the thread's last error;
/// a panic is caught, faults the segment (if the call had one) and becomes
/// FILEREP_ERR_FAULTED.
fn guard(name: &str, seg: Option<filerep_segment>, f: impl FnOnce() -> Result<(), Failure>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => FILEREP_OK,
        Ok(Err(Failure { code, message })) => {
            set_last_error(format!("{name}: {message}"));
            code
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            // Dropping a payload can itself panic; that one stays here too.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            let reason = format!("internal error in {name} (a panic: {what})");
            let faulted = seg.and_then(|s| segments().get(&s.id).cloned());
            let _ = catch_unwind(AssertUnwindSafe(|| {
                if let Some(e) = &faulted {
                    e.handle.fault(&reason);
                }
            }));
            set_last_error(format!("{name}: {reason}: the segment is faulted and stopped; close it"));
            FILEREP_ERR_FAULTED
        }
    }
}

/// A storage call on an open segment.
fn with_storage(name: &str, seg: filerep_segment, f: impl FnOnce(&Storage) -> Result<(), Failure>) -> c_int {
    guard(name, Some(seg), || f(&entry(seg)?.storage))
}

/// A storage call on one path.
///
/// # Safety
/// `path` is null or a NUL-terminated string.
unsafe fn on_path(
    name: &str,
    seg: filerep_segment,
    path: *const c_char,
    f: impl FnOnce(&Storage, &str) -> filerep_lib::Result<()>,
) -> c_int {
    with_storage(name, seg, |s| {
        // SAFETY: the caller's guarantee for path, passed on.
        let path = unsafe { c_path(path, "path") }?;
        Ok(f(s, path)?)
    })
}

/// A storage call on one path and the caller's bytes.
///
/// # Safety
/// `path` is null or a NUL-terminated string; `buf` is null or points to
/// `len` readable bytes.
unsafe fn on_path_data(
    name: &str,
    seg: filerep_segment,
    (path, buf, len): (*const c_char, *const c_void, usize),
    f: impl FnOnce(&Storage, &str, &[u8]) -> filerep_lib::Result<()>,
) -> c_int {
    with_storage(name, seg, |s| {
        // SAFETY: the caller's guarantees for path and buf, passed on.
        let (path, data) = unsafe { (c_path(path, "path")?, in_buf(buf, len, "buf")?) };
        Ok(f(s, path, data)?)
    })
}

/// A storage call on one path whose answer goes to `*out`.
///
/// # Safety
/// `path` is null or a NUL-terminated string; `out` is null or points to a
/// writable `T`.
unsafe fn on_path_out<T>(
    name: &str,
    seg: filerep_segment,
    (path, out): (*const c_char, *mut T),
    f: impl FnOnce(&Storage, &str) -> filerep_lib::Result<T>,
) -> c_int {
    with_storage(name, seg, |s| {
        out_ptr(out, "out")?;
        // SAFETY: the caller's guarantee for path, passed on.
        let path = unsafe { c_path(path, "path") }?;
        let v = f(s, path)?;
        // SAFETY: out passed out_ptr; the caller guarantees it is writable.
        unsafe { put(out, v) };
        Ok(())
    })
}

static LOG_INIT: Once = Once::new();

/// With FILEREP_LOG set (as for the `filerep` command: "warn", "info",
/// "filerep=debug"), the library logs to stderr. A process that installed
/// its own tracing subscriber keeps it.
fn init_logging() {
    LOG_INIT.call_once(|| {
        if let Ok(filter) = std::env::var("FILEREP_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        }
    });
}

// ---- reading C arguments -----------------------------------------------------

/// A NUL-terminated UTF-8 string of at most `max` bytes.
///
/// # Safety
/// `p` is null or points to memory readable up to its NUL or `max` bytes,
/// whichever comes first, that does not change during the call.
unsafe fn c_str<'a>(p: *const c_char, what: &str, max: usize) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(Failure::invalid(format!("{what} is a null pointer")));
    }
    // SAFETY: p is not null; the caller guarantees it is readable up to its
    // NUL or `max` bytes, and strnlen reads no further than either.
    let n = unsafe { libc::strnlen(p, max + 1) };
    if n > max {
        return Err(Failure::invalid(format!("{what} is longer than {max} bytes")));
    }
    // SAFETY: the n bytes before the NUL were just found readable, and
    // they do not change during the call.
    let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), n) };
    std::str::from_utf8(bytes).map_err(|_| Failure::invalid(format!("{what} is not UTF-8")))
}

/// A path inside a filespace (checked fully by the storage call).
///
/// # Safety
/// As [`c_str`].
unsafe fn c_path<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    // SAFETY: the caller's guarantee, passed on.
    unsafe { c_str(p, what, filerep_lib::protocol::path::MAX_PATH_BYTES) }
}

/// The caller's buffer to read from.
///
/// # Safety
/// `p` is null or points to `len` readable bytes that do not change during
/// the call.
unsafe fn in_buf<'a>(p: *const c_void, len: usize, what: &str) -> Result<&'a [u8], Failure> {
    if p.is_null() {
        return Err(Failure::invalid(format!("{what} is a null pointer (length {len})")));
    }
    if len > isize::MAX as usize {
        return Err(Failure::invalid(format!("{what} length {len} is beyond any buffer")));
    }
    // SAFETY: not null, len fits an allocation; the caller guarantees len
    // readable bytes that stay unchanged during the call.
    Ok(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) })
}

/// The caller's buffer to write into.
///
/// # Safety
/// `p` is null or points to `len` writable bytes that nothing else reads or
/// writes during the call.
unsafe fn out_buf<'a>(p: *mut c_void, len: usize, what: &str) -> Result<&'a mut [u8], Failure> {
    if p.is_null() {
        return Err(Failure::invalid(format!("{what} is a null pointer (length {len})")));
    }
    if len > isize::MAX as usize {
        return Err(Failure::invalid(format!("{what} length {len} is beyond any buffer")));
    }
    // SAFETY: not null, len fits an allocation; the caller guarantees len
    // writable bytes used by nothing else during the call.
    Ok(unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) })
}

/// Check an out-pointer before the call does anything.
fn out_ptr<T>(p: *mut T, what: &str) -> Result<(), Failure> {
    if p.is_null() {
        return Err(Failure::invalid(format!("{what} is a null pointer")));
    }
    if !p.is_aligned() {
        return Err(Failure::invalid(format!("{what} is not aligned for its type")));
    }
    Ok(())
}

/// Write a result through an out-pointer checked by [`out_ptr`].
///
/// # Safety
/// `p` passed [`out_ptr`] and points to a `T` the caller lets us write.
unsafe fn put<T>(p: *mut T, v: T) {
    // SAFETY: not null and aligned (out_ptr); the caller guarantees it is
    // a writable T.
    unsafe { p.write(v) }
}

// ---- the segment -------------------------------------------------------------

/// Open the segment described by the configuration file at `config_path`
/// (the JSON file `filerep segment --config` reads: docs/operations.md) and
/// start it in this process: it binds its control, replication and client
/// socket addresses and waits, idle, for the arbiter's order. On success
/// `*out` is the new handle; on failure `*out` is left as it was.
///
/// # Safety
/// `config_path` is null or a NUL-terminated string; `out` is null or
/// points to a writable filerep_segment.
#[no_mangle]
pub unsafe extern "C" fn filerep_segment_open(config_path: *const c_char, out: *mut filerep_segment) -> c_int {
    guard("filerep_segment_open", None, || {
        out_ptr(out, "out")?;
        // SAFETY: the caller's guarantee for config_path.
        let path = unsafe { c_str(config_path, "config_path", 4096) }?;
        init_logging();
        let cfg = SegmentConfig::load(std::path::Path::new(path))?;
        let handle = Segment::open(cfg)?.start()?;
        let storage = handle.storage();
        let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
        segments().insert(id, Arc::new(Entry { handle, storage }));
        // SAFETY: out passed out_ptr; the caller guarantees it is writable.
        unsafe { put(out, filerep_segment { id }) };
        Ok(())
    })
}

/// Stop the segment in order and forget the handle: it stops taking
/// orders, a primary has its mirror confirm everything durable and shuts
/// down, the threads end, the client socket file is removed. Calls still
/// running on other threads finish or fail with FILEREP_ERR_NOT_PRIMARY;
/// every later call with this handle fails with FILEREP_ERR_CLOSED. Close
/// a faulted segment too. A process that exits without closing is, to the
/// pair, a crash.
#[no_mangle]
pub extern "C" fn filerep_segment_close(seg: filerep_segment) -> c_int {
    guard("filerep_segment_close", Some(seg), || {
        // Out of the table first: one close wins, later calls see it closed.
        let removed = segments().remove(&seg.id);
        let e = removed.ok_or_else(|| closed(seg))?;
        e.handle.close();
        tracing::info!(id = seg.id, "segment closed");
        Ok(())
    })
}

/// Role, mode and generation of the segment, its block size and number of
/// filespaces, into `*out`.
///
/// # Safety
/// `out` is null or points to a writable filerep_info.
#[no_mangle]
pub unsafe extern "C" fn filerep_segment_info(seg: filerep_segment, out: *mut filerep_info) -> c_int {
    guard("filerep_segment_info", Some(seg), || {
        out_ptr(out, "out")?;
        let e = entry(seg)?;
        let i = e.handle.info();
        let role = match i.acting {
            Acting::Idle => FILEREP_ROLE_IDLE,
            Acting::Starting => FILEREP_ROLE_STARTING,
            Acting::Mirror => FILEREP_ROLE_MIRROR,
            Acting::Primary => FILEREP_ROLE_PRIMARY,
            Acting::Stopped => FILEREP_ROLE_STOPPED,
        };
        let mode = match i.mode {
            's' => FILEREP_MODE_SYNCHRONIZED,
            'r' => FILEREP_MODE_RESYNCHRONIZING,
            'c' => FILEREP_MODE_CHANGE_TRACKING,
            'd' => FILEREP_MODE_DECIDING,
            'f' => FILEREP_MODE_FAILED,
            _ => FILEREP_MODE_NONE,
        };
        let info = filerep_info {
            dbid: i.dbid,
            content: i.content,
            role: if i.fault.is_some() { FILEREP_ROLE_STOPPED } else { role },
            mode,
            generation: i.generation,
            block_size: e.storage.block_size(),
            filespaces: e.storage.filespaces().len() as u32,
        };
        // SAFETY: out passed out_ptr; the caller guarantees it is writable.
        unsafe { put(out, info) };
        Ok(())
    })
}

/// Wait until the segment acts as the primary (the arbiter's order), at
/// most `timeout_ms` milliseconds. FILEREP_ERR_NOT_PRIMARY, saying what it
/// is instead, when the time is up.
#[no_mangle]
pub extern "C" fn filerep_segment_wait_primary(seg: filerep_segment, timeout_ms: u32) -> c_int {
    with_storage("filerep_segment_wait_primary", seg, |s| Ok(s.wait_primary(Duration::from_millis(timeout_ms.into()))?))
}

/// The index of the filespace called `name` (as in the configuration's
/// `filespaces`, e.g. "pg_system") into `*out`.
///
/// # Safety
/// `name` is null or a NUL-terminated string; `out` is null or points to a
/// writable uint16_t.
#[no_mangle]
pub unsafe extern "C" fn filerep_filespace_index(seg: filerep_segment, name: *const c_char, out: *mut u16) -> c_int {
    with_storage("filerep_filespace_index", seg, |s| {
        out_ptr(out, "out")?;
        // SAFETY: the caller's guarantee for name.
        let name = unsafe { c_str(name, "name", 64) }?;
        let names = s.filespaces();
        let i = names.iter().position(|n| n == name).ok_or_else(|| {
            Failure::invalid(format!("no filespace is named {name:?} (there are: {})", names.join(", ")))
        })?;
        // SAFETY: out passed out_ptr; the caller guarantees it is writable.
        unsafe { put(out, i as u16) };
        Ok(())
    })
}

// ---- relation files ------------------------------------------------------------

/// Create a relation (or flat) file `path` in filespace `fs`; fails with
/// FILEREP_ERR_EXISTS if it exists.
///
/// # Safety
/// `path` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn filerep_create(seg: filerep_segment, fs: u16, path: *const c_char) -> c_int {
    // SAFETY: the caller's guarantee for path, passed on.
    unsafe { on_path("filerep_create", seg, path, |s, p| s.create(fs, p)) }
}

/// Write block `block` of `path` (an evicted dirty buffer) from `buf`, which
/// holds `len` bytes: exactly the block size.
///
/// # Safety
/// `path` is null or a NUL-terminated string; `buf` is null or points to
/// `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn filerep_write_block(
    seg: filerep_segment,
    fs: u16,
    path: *const c_char,
    block: u64,
    buf: *const c_void,
    len: usize,
) -> c_int {
    // SAFETY: the caller's guarantees for path and buf, passed on.
    unsafe { on_path_data("filerep_write_block", seg, (path, buf, len), |s, p, d| s.write_block(fs, p, block, d)) }
}

/// Append block `block` to `path`: `block` must equal its number of blocks.
/// `buf` holds `len` bytes, exactly the block size.
///
/// # Safety
/// As filerep_write_block.
#[no_mangle]
pub unsafe extern "C" fn filerep_extend(
    seg: filerep_segment,
    fs: u16,
    path: *const c_char,
    block: u64,
    buf: *const c_void,
    len: usize,
) -> c_int {
    // SAFETY: the caller's guarantees for path and buf, passed on.
    unsafe { on_path_data("filerep_extend", seg, (path, buf, len), |s, p, d| s.extend(fs, p, block, d)) }
}

/// Read block `block` of `path` into `buf`, which has room for `len` bytes:
/// exactly the block size. A block past the end of the file is an error.
///
/// # Safety
/// `path` is null or a NUL-terminated string; `buf` is null or points to
/// `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn filerep_read_block(
    seg: filerep_segment,
    fs: u16,
    path: *const c_char,
    block: u64,
    buf: *mut c_void,
    len: usize,
) -> c_int {
    with_storage("filerep_read_block", seg, |s| {
        // SAFETY: the caller's guarantees for path and buf.
        let (path, out) = unsafe { (c_path(path, "path")?, out_buf(buf, len, "buf")?) };
        Ok(s.read_block(fs, path, block, out)?)
    })
}

/// The number of whole blocks of `path` into `*out`.
///
/// # Safety
/// `path` is null or a NUL-terminated string; `out` is null or points to a
/// writable uint64_t.
#[no_mangle]
pub unsafe extern "C" fn filerep_nblocks(seg: filerep_segment, fs: u16, path: *const c_char, out: *mut u64) -> c_int {
    // SAFETY: the caller's guarantees for path and out, passed on.
    unsafe { on_path_out("filerep_nblocks", seg, (path, out), |s, p| s.nblocks(fs, p)) }
}

/// Truncate `path` to `nblocks` blocks.
///
/// # Safety
/// `path` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn filerep_truncate(seg: filerep_segment, fs: u16, path: *const c_char, nblocks: u64) -> c_int {
    // SAFETY: the caller's guarantee for path, passed on.
    unsafe { on_path("filerep_truncate", seg, path, |s, p| s.truncate(fs, p, nblocks)) }
}

/// Remove the file `path`.
///
/// # Safety
/// `path` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn filerep_unlink(seg: filerep_segment, fs: u16, path: *const c_char) -> c_int {
    // SAFETY: the caller's guarantee for path, passed on.
    unsafe { on_path("filerep_unlink", seg, path, |s, p| s.unlink(fs, p)) }
}

/// Make `path` durable on both hosts (fsync).
///
/// # Safety
/// `path` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn filerep_sync(seg: filerep_segment, fs: u16, path: *const c_char) -> c_int {
    // SAFETY: the caller's guarantee for path, passed on.
    unsafe { on_path("filerep_sync", seg, path, |s, p| s.sync(fs, p)) }
}

// ---- flat and log files ----------------------------------------------------------

/// Write `len` bytes (1 to 262144) from `buf` at byte `offset` of `path`.
///
/// # Safety
/// `path` is null or a NUL-terminated string; `buf` is null or points to
/// `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn filerep_write_at(
    seg: filerep_segment,
    fs: u16,
    path: *const c_char,
    offset: u64,
    buf: *const c_void,
    len: usize,
) -> c_int {
    // SAFETY: the caller's guarantees for path and buf, passed on.
    unsafe { on_path_data("filerep_write_at", seg, (path, buf, len), |s, p, d| s.write_at(fs, p, offset, d)) }
}

/// Make `path` durable on both hosts (a log flush).
///
/// # Safety
/// `path` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn filerep_flush(seg: filerep_segment, fs: u16, path: *const c_char) -> c_int {
    // SAFETY: the caller's guarantee for path, passed on.
    unsafe { on_path("filerep_flush", seg, path, |s, p| s.flush(fs, p)) }
}

/// Set the length of `path` to `len` bytes (shorter or longer).
///
/// # Safety
/// `path` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn filerep_set_len(seg: filerep_segment, fs: u16, path: *const c_char, len: u64) -> c_int {
    // SAFETY: the caller's guarantee for path, passed on.
    unsafe { on_path("filerep_set_len", seg, path, |s, p| s.set_len(fs, p, len)) }
}

/// The length of `path` in bytes into `*out`.
///
/// # Safety
/// `path` is null or a NUL-terminated string; `out` is null or points to a
/// writable uint64_t.
#[no_mangle]
pub unsafe extern "C" fn filerep_len(seg: filerep_segment, fs: u16, path: *const c_char, out: *mut u64) -> c_int {
    // SAFETY: the caller's guarantees for path and out, passed on.
    unsafe { on_path_out("filerep_len", seg, (path, out), |s, p| s.len(fs, p)) }
}

// ---- filespace operations ----------------------------------------------------------

/// Create the directory `path` (its parent must exist).
///
/// # Safety
/// `path` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn filerep_mkdir(seg: filerep_segment, fs: u16, path: *const c_char) -> c_int {
    // SAFETY: the caller's guarantee for path, passed on.
    unsafe { on_path("filerep_mkdir", seg, path, |s, p| s.mkdir(fs, p)) }
}

/// Remove the empty directory `path`.
///
/// # Safety
/// `path` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn filerep_rmdir(seg: filerep_segment, fs: u16, path: *const c_char) -> c_int {
    // SAFETY: the caller's guarantee for path, passed on.
    unsafe { on_path("filerep_rmdir", seg, path, |s, p| s.rmdir(fs, p)) }
}

/// Rename the file or directory `from` to `to` within filespace `fs`,
/// atomically (a file at `to` is replaced, as by rename(2)).
///
/// # Safety
/// `from` and `to` are null or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn filerep_rename(
    seg: filerep_segment,
    fs: u16,
    from: *const c_char,
    to: *const c_char,
) -> c_int {
    with_storage("filerep_rename", seg, |s| {
        // SAFETY: the caller's guarantees for from and to.
        let (from, to) = unsafe { (c_path(from, "from")?, c_path(to, "to")?) };
        Ok(s.rename(fs, from, to)?)
    })
}

/// A directory fsync: every namespace change made before the call (create,
/// unlink, rename, mkdir, rmdir, in any directory) durable on both hosts.
/// `dir` names an existing directory; "" is the filespace's root.
///
/// # Safety
/// `dir` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn filerep_sync_dir(seg: filerep_segment, fs: u16, dir: *const c_char) -> c_int {
    with_storage("filerep_sync_dir", seg, |s| {
        // SAFETY: the caller's guarantee for dir.
        let dir = unsafe { c_path(dir, "dir") }?;
        Ok(s.sync_dir(fs, dir)?)
    })
}

/// Whether `path` exists (file or directory) into `*out`.
///
/// # Safety
/// `path` is null or a NUL-terminated string; `out` is null or points to a
/// writable bool.
#[no_mangle]
pub unsafe extern "C" fn filerep_exists(seg: filerep_segment, fs: u16, path: *const c_char, out: *mut bool) -> c_int {
    // SAFETY: the caller's guarantees for path and out, passed on.
    unsafe { on_path_out("filerep_exists", seg, (path, out), |s, p| s.exists(fs, p)) }
}

#[cfg(test)]
mod tests;
