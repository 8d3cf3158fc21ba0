//! Local files and connections behind narrow traits, each with a real and a
//! simulated backend: [`disk`] (io_uring, std, simulated) and [`net`] (TCP,
//! in-memory); [`admission`], the accept loop and connection budgets every
//! listener shares.

pub mod admission;
pub mod disk;
pub mod net;
