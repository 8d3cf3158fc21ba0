//! What must survive a crash, each format documented in `docs/`: the
//! [`changelog`] (change tracking and resync progress), the [`activity`] log
//! (rule 5, kept inside the change-log file) and the [`catalog`]; the
//! [`sealed`] framing every JSON state file is written in.

pub mod activity;
pub mod catalog;
pub mod changelog;
pub mod sealed;
