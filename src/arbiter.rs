//! What the primary asks the arbiter when its mirror stops answering
//! (brief rule 3). Segments never decide on their own: they ask, and until
//! the answer comes their mutating calls wait.
//!
//! The cluster's arbiter process (the fault probe) answers over the network;
//! [`FixedArbiter`] answers from memory for tests and single-pair setups.

/// The arbiter's answer to "my mirror is gone".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The mirror is marked down: go on alone and track every change.
    MirrorDown,
    /// This segment is no longer the primary: fail every call.
    Demoted,
}

pub trait Arbiter: Send + Sync {
    /// Report the loss of the mirror and get a decision. An error means the
    /// arbiter could not be asked; the primary then fails its calls.
    fn mirror_lost(&self, content_id: u32, generation: u64, reason: &str) -> Result<Decision, String>;
}

/// An arbiter that always gives the same answer.
#[derive(Clone, Copy, Debug)]
pub struct FixedArbiter(pub Decision);

impl Arbiter for FixedArbiter {
    fn mirror_lost(&self, content_id: u32, generation: u64, reason: &str) -> Result<Decision, String> {
        tracing::info!(content_id, generation, reason, decision = ?self.0, "arbiter decided");
        Ok(self.0)
    }
}
