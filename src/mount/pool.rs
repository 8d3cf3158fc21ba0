//! Connections to the segment's client socket. The socket answers one
//! request at a time per connection, so concurrent FUSE requests each take
//! their own: idle ones are kept (at most one per FUSE thread), new ones
//! opened on demand. Each carries the queued flag: a file system promises
//! nothing of a change before its fsync, so the mount's changes return
//! once made on the primary and on their way, as the segment's own mount's
//! do; its fsyncs still wait for both hosts.

use crate::cluster::client::{Client, ClientError};
use std::path::PathBuf;
use std::sync::Mutex;

pub(super) struct Pool {
    socket: PathBuf,
    idle: Mutex<Vec<Client>>,
    max_idle: usize,
}

impl Pool {
    pub fn new(socket: PathBuf, max_idle: usize) -> Pool {
        Pool { socket, idle: Mutex::new(Vec::new()), max_idle }
    }

    /// Run one call on a connection of the pool.
    pub fn call<T>(&self, f: impl FnOnce(&mut Client) -> Result<T, ClientError>) -> Result<T, ClientError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut client = match idle {
            Some(c) => c,
            None => {
                let mut c = Client::connect(&self.socket)?;
                c.set_queued(true);
                c
            }
        };
        let r = f(&mut client);
        // A refused call leaves the connection in step; a socket or framing
        // error does not (the segment may have restarted): drop it, and
        // the next call connects afresh.
        if !matches!(r, Err(ClientError::Io(_) | ClientError::Malformed(_))) {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < self.max_idle {
                idle.push(client);
            }
        }
        r
    }
}
