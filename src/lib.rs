//! filerep: block-level file replication for a segment's data directory.
//!
//! Layers, bottom up:
//! - [`protocol`]: the wire format (frames, handshake), sans I/O.
//! - [`core`]: the primary's and mirror's stream logic as state machines.
//! - [`disk`] and [`net`]: narrow traits with real and simulated backends.
//! - [`apply`]: the mirror's executor, shared by the daemon and the simulator.
//! - [`primary`] and [`mirror`]: the runtimes that put it together with threads.
//! - [`sim`]: the deterministic simulator; [`verify`] compares two trees.

// A lock guard in an `if let` or `match` scrutinee lives through the whole
// body: a call once waited for the arbiter's decision holding the marks
// lock, and the decision waited for it ("no decision in time").
#![warn(clippy::significant_drop_in_scrutinee)]

pub mod activity;
pub mod apply;
pub mod arbiter;
pub mod bench;
pub mod bench_resync;
pub mod catalog;
pub mod changelog;
pub mod client;
pub mod cluster;
pub mod config;
pub mod control;
pub mod core;
pub mod disk;
pub mod error;
pub mod hosts;
pub mod layout;
pub mod metrics;
pub mod mirror;
pub mod mount;
pub mod net;
pub mod path;
pub mod primary;
pub mod probe;
pub mod process;
pub mod protocol;
pub mod resync;
pub mod segment;
pub mod sim;
pub mod verify;
pub mod workload;

pub use error::{Error, Result};
