//! What the primary asks the arbiter when its mirror stops answering
//! (brief rule 3). Segments never decide on their own: they ask, and until
//! the answer comes their mutating calls wait.
//!
//! The cluster's arbiter process (the fault probe) answers over the network;
//! [`FixedArbiter`] answers from memory for tests and single-pair setups.

pub use crate::core::primary::Decision;

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

/// An arbiter for one pair that applies the transitions of
/// [`crate::core::pair`] and keeps their history. The cluster's arbiter
/// process runs one of these per content behind its probe.
pub struct PairArbiter {
    state: std::sync::Mutex<(Pair, Vec<HistoryEntry>)>,
}

use crate::core::pair::{describe, Event, HistoryEntry, Pair, Verdict};

impl PairArbiter {
    pub fn new(pair: Pair) -> PairArbiter {
        PairArbiter { state: std::sync::Mutex::new((pair, Vec::new())) }
    }

    /// Apply an event (from the probe, the operator, or a segment) and
    /// record the change if there was one.
    pub fn apply(&self, event: &Event) -> crate::core::pair::Outcome {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let before = describe(&st.0);
        let outcome = st.0.apply(event);
        if outcome.changed {
            let after = describe(&st.0);
            tracing::warn!(content = st.0.content, %before, %after, reason = %outcome.reason, "pair transition");
            let unix_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let content = st.0.content;
            st.1.push(HistoryEntry { unix_ms, content, before, after, reason: outcome.reason.clone() });
        }
        outcome
    }

    pub fn pair(&self) -> Pair {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    pub fn history(&self) -> Vec<HistoryEntry> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1.clone()
    }
}

impl Arbiter for PairArbiter {
    fn mirror_lost(&self, content_id: u32, generation: u64, reason: &str) -> Result<Decision, String> {
        let reporter = {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.0.content != content_id {
                return Err(format!("this arbiter does not know content {content_id}"));
            }
            st.0.acting_primary().dbid
        };
        tracing::info!(content_id, generation, reason, "a primary reports its mirror lost");
        // The reporter is the acting primary only if its generation is current.
        match self.apply(&Event::MirrorLost { reporter, generation }).verdict {
            Verdict::MirrorDown => Ok(Decision::MirrorDown),
            Verdict::Demoted | Verdict::None => Ok(Decision::Demoted),
        }
    }
}
