//! I/O-free state machines: events in, decisions out. No threads, files,
//! sockets or clocks inside, so they are tested exhaustively without any.

pub mod arbiter;
pub mod mirror;
pub mod pair;
pub mod primary;
