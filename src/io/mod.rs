//! Local files and connections behind narrow traits, each with a real and a
//! simulated backend: [`disk`] (io_uring, std, simulated) and [`net`] (TCP,
//! in-memory).

pub mod disk;
pub mod net;
