//! An arbiter's leadership on a coordinator, as a plain state machine: a
//! lease granted, renewed or lost, and until when the arbiter may give
//! orders by its own clock. Times are offsets on that clock from any
//! origin the caller keeps. The etcd store ([`crate::cluster::coordinator`])
//! drives it from its renewal loop; the lease model ([`crate::sim::leases`])
//! drives the same code from its schedules.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long the acting arbiter's lease lives without a renewal. A primary
/// that lost its mirror asks the arbiters for up to its decision timeout
/// (5 s by default): a leader that dies is replaced after at most this
/// TTL plus one campaign pause, well inside it. etcd counts leases in
/// whole seconds, and its shortest is about 1.5 election timeouts.
pub const LEASE_TTL: Duration = Duration::from_secs(2);
/// How often the acting arbiter renews its lease: four renewals a TTL, so
/// one lost renewal costs nothing.
pub const RENEW_EVERY: Duration = Duration::from_millis(500);
/// How long before its lease could expire in the coordinator an arbiter
/// stops giving orders: a renewal sent at `t` keeps the lease at least
/// until `t + TTL` there (it can only be received later), so an arbiter
/// that stops at `t + TTL - SAFETY` stops before any other can be elected,
/// with this much left for clock rate differences and an order already in
/// flight (which the segments' epoch check fences anyway).
pub const SAFETY: Duration = Duration::from_millis(700);

/// Whether an arbiter may give orders, as its store decides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Leadership {
    /// It acts, with this epoch: every order carries it, and a segment
    /// refuses orders of an older one.
    Acting { epoch: u64 },
    /// Another arbiter acts (`leader`, if known).
    Standby { leader: Option<String> },
    /// The coordinator cannot be reached (or this arbiter's lease is
    /// lost): nothing is decided.
    Unreachable(String),
}

/// Where an arbiter stands, with what acting needs: its lease and until
/// when (by its own clock) it may order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lead {
    Acting { epoch: u64, lease: i64, until: Duration },
    Standby { leader: Option<String> },
    Unreachable(String),
}

/// The last instant a lease renewed (or granted) by a request sent at
/// `sent` lets its holder order.
fn acting_until(sent: Duration) -> Duration {
    (sent + LEASE_TTL).saturating_sub(SAFETY)
}

impl Lead {
    /// Elected by a campaign sent at `sent`: `epoch`, on `lease`.
    pub fn elected(epoch: u64, lease: i64, sent: Duration) -> Lead {
        Lead::Acting { epoch, lease, until: acting_until(sent) }
    }

    /// A renewal of `epoch`'s lease, sent at `sent`, was answered: the
    /// lease lives (`alive`) or expired. Whether the leadership ended
    /// (also when it had ended meanwhile: a commit found the leader key
    /// gone, or the clock ran out).
    pub fn renewal_answered(&mut self, epoch: u64, sent: Duration, alive: bool) -> bool {
        match self {
            Lead::Acting { epoch: e, until, .. } if *e == epoch && alive => {
                *until = acting_until(sent);
                false
            }
            Lead::Acting { epoch: e, .. } if *e == epoch => {
                *self = Lead::Unreachable("this arbiter's lease expired".into());
                true
            }
            _ => true,
        }
    }

    /// A renewal of `epoch`'s lease got no answer, seen at `now`: the
    /// leadership ends once its time is up (else the next renewal may
    /// still land). Whether it ended.
    pub fn renewal_failed(&mut self, epoch: u64, now: Duration, why: &str) -> bool {
        match self {
            Lead::Acting { epoch: e, until, .. } if *e == epoch => {
                if now < *until {
                    return false;
                }
                *self = Lead::Unreachable(format!("the lease could not be renewed: {why}"));
                true
            }
            _ => true,
        }
    }

    /// The leadership at `now`: an acting one whose time is up lapses.
    pub fn at(&mut self, now: Duration) -> Leadership {
        if let Lead::Acting { until, .. } = self {
            if now >= *until {
                *self = Lead::Unreachable("the lease was not renewed in time".into());
            }
        }
        match self {
            Lead::Acting { epoch, .. } => Leadership::Acting { epoch: *epoch },
            Lead::Standby { leader } => Leadership::Standby { leader: leader.clone() },
            Lead::Unreachable(why) => Leadership::Unreachable(why.clone()),
        }
    }

    /// The epoch it may order at `now`, without changing anything.
    pub fn acting_epoch(&self, now: Duration) -> Option<u64> {
        match self {
            Lead::Acting { epoch, until, .. } if now < *until => Some(*epoch),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_leader_orders_only_until_its_lease_could_expire_less_the_margin() {
        let mut l = Lead::elected(7, 1, ms(1000));
        assert_eq!(l.acting_epoch(ms(2299)), Some(7));
        assert_eq!(l.acting_epoch(ms(2300)), None, "1000 + TTL 2000 - SAFETY 700");
        // A renewal answered moves the limit from when it was sent.
        assert!(!l.renewal_answered(7, ms(1500), true));
        assert_eq!(l.acting_epoch(ms(2799)), Some(7));
        // Unanswered renewals change nothing until the time is up.
        assert!(!l.renewal_failed(7, ms(2700), "no answer"));
        assert!(l.renewal_failed(7, ms(2800), "no answer"));
        assert!(matches!(l.at(ms(2800)), Leadership::Unreachable(_)));
        // An expired lease, or one of an epoch no longer held, ends it.
        let mut l = Lead::elected(8, 2, ms(0));
        assert!(l.renewal_answered(8, ms(100), false));
        assert!(l.renewal_answered(3, ms(100), true));
        let mut l = Lead::elected(9, 3, ms(0));
        assert_eq!(l.at(ms(1299)), Leadership::Acting { epoch: 9 });
        assert!(matches!(l.at(ms(1300)), Leadership::Unreachable(_)));
    }
}
