//! The subcommands of `filerep`, one module each (the mirror daemon, `bench`,
//! `sim` and `compare` are small enough to live in `main.rs`).

pub mod batch;
pub mod catalog;
pub mod cluster;
pub mod demo;
pub mod mount;
pub mod ops;
pub mod recover;
pub mod state;
pub mod story;
pub mod target;
pub mod verify;
