//! Threads and sockets around the rules: the [`primary`] the host calls, the
//! [`mirror`] daemon, the [`resync`] engine, and the [`arbiter`] interface a
//! primary asks when its mirror is lost.

pub mod arbiter;
pub mod mirror;
pub mod netcheck;
pub mod primary;
pub mod resync;
