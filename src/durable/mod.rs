//! What must survive a crash, each format documented in `docs/`: the
//! [`changelog`] (change tracking, the activity log's records of rule 5,
//! resync progress) and the [`catalog`] with its append-only [`history`] and the [`store`] that keeps it; the [`sealed`] framing every JSON
//! state file is written in; [`files`], the one way small state files are
//! replaced and directories made. When records are written and dropped is
//! decided by the core; this layer keeps them.

pub mod catalog;
pub mod changelog;
pub mod files;
pub mod history;
pub mod mirror_state;
pub mod sealed;
pub mod store;

#[cfg(test)]
mod crashtest;
