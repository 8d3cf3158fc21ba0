//! filerep: block-level file replication for a segment's data directory.
//!
//! Layers, bottom up; each imports only layers below it:
//! - [`protocol`]: the wire format (frames, handshake, path rules), sans I/O.
//! - [`core`]: the rules as I/O-free state machines (events in, commands out).
//! - [`io`]: the `Disk` and connection traits with real and simulated backends.
//! - [`durable`]: the change-log (with the activity log's records) and the catalog.
//! - [`exec`]: the core's commands carried out on disks and change-logs,
//!   with no threads (the runtime and the simulator share it).
//! - [`runtime`]: threads and sockets that execute the core (primary, mirror
//!   and its applier, resync).
//! - [`cluster`]: the segment process, the control channel, the local client,
//!   the arbiter process, metrics and the mirror layout.
//! - [`verify`] and [`mount`]: comparison of two copies; a filespace as a
//!   FUSE file system.
//! - [`sim`]: the deterministic simulator.
//!
//! The `filerep` command, the benchmark and the demo workload live in the
//! `filerep-tools` crate of the workspace, so a host that links this library
//! carries none of what only they need.

// A lock guard in an `if let` or `match` scrutinee lives through the whole
// body: a call once waited for the arbiter's decision holding the marks
// lock, and the decision waited for it ("no decision in time").
#![warn(clippy::significant_drop_in_scrutinee)]

pub mod cluster;
pub mod config;
pub mod core;
pub mod durable;
pub mod error;
pub mod exec;
pub mod io;
pub mod mount;
pub mod protocol;
pub mod runtime;
pub mod sim;
pub mod verify;

pub use error::{Error, Result};
