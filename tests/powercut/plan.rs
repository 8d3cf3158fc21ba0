//! One power-cut round's schedule, all from its seed: the phase the pair
//! is brought into, which hosts lose power, when, and how.

use super::LEVELS;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    Seg(u32),
    Arbiter,
}

/// Which hosts lose power, by their role when it happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Victims {
    None,
    Primary,
    Mirror,
    Arbiter,
    PrimaryMirror,
    PrimaryArbiter,
    MirrorArbiter,
}

impl Victims {
    const ANY: [Victims; 6] = [
        Victims::Primary,
        Victims::Mirror,
        Victims::Arbiter,
        Victims::PrimaryMirror,
        Victims::PrimaryArbiter,
        Victims::MirrorArbiter,
    ];

    pub fn hosts(self, primary: u32, mirror: u32) -> Vec<Host> {
        let (p, m, a) = (Host::Seg(primary), Host::Seg(mirror), Host::Arbiter);
        match self {
            Victims::None => vec![],
            Victims::Primary => vec![p],
            Victims::Mirror => vec![m],
            Victims::Arbiter => vec![a],
            Victims::PrimaryMirror => vec![p, m],
            Victims::PrimaryArbiter => vec![p, a],
            Victims::MirrorArbiter => vec![m, a],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Synchronized,
    ChangeTracking,
    IncrementalResync,
    FullResync,
    /// The primary's host loses power; during the failover that follows,
    /// the second cut (possibly none) lands.
    Failover,
    /// The primary is killed, its mirror promoted; the old primary returns
    /// and a resync runs: the cut lands during that return.
    Return,
}

pub const PHASES: [Phase; 6] = [
    Phase::Synchronized,
    Phase::ChangeTracking,
    Phase::IncrementalResync,
    Phase::FullResync,
    Phase::Failover,
    Phase::Return,
];

/// One round's schedule, all from its seed.
#[derive(Clone, Debug)]
pub struct Plan {
    pub seed: u64,
    pub phase: Phase,
    pub victims: Victims,
    pub delay_ms: u64,
    pub tear: bool,
    pub workload: u64,
    /// A cut of the mirror's host (not the primary's) waits after the
    /// delay for the moment the primary trusts a new checkpoint of the
    /// mirror: its durable mark moved and it retired activity entries.
    pub at_retire: bool,
    /// A cut of the primary's host in change tracking waits after the
    /// delay for a writer to send a first write into a block of its sparse
    /// file, then comes within one fsync of the primary's device and 1 ms:
    /// while the primary records it and writes it.
    pub at_first_write: bool,
}

impl Plan {
    pub fn new(seed: u64) -> Plan {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let phase = PHASES[rng.gen_range(0..PHASES.len())];
        let victims = if phase == Phase::Failover {
            [Victims::None, Victims::Mirror, Victims::Arbiter, Victims::MirrorArbiter][rng.gen_range(0..4)]
        } else {
            Victims::ANY[rng.gen_range(0..Victims::ANY.len())]
        };
        let window = match phase {
            Phase::Synchronized | Phase::ChangeTracking => 800,
            Phase::IncrementalResync => 1200,
            Phase::FullResync => 2000,
            Phase::Failover => 150,
            Phase::Return => 2500,
        };
        let (delay_ms, tear, workload) = (rng.gen_range(0..window), rng.gen_bool(0.5), rng.gen());
        let (at_retire, at_first_write) = (rng.gen_bool(0.75), rng.gen_bool(0.75));
        let mut plan = Plan { seed, phase, victims, delay_ms, tear, workload, at_retire, at_first_write };
        // Aimed at a first write, the cut tears: only a torn write keeps
        // what landed before its record.
        plan.tear |= plan.aimed_at_first_write();
        plan
    }

    /// Whether this round's cut waits for a retire: the mirror's host is
    /// cut, the primary's is not.
    pub fn aimed_at_retire(&self) -> bool {
        self.at_retire && matches!(self.victims, Victims::Mirror | Victims::MirrorArbiter)
    }

    /// Whether this round's cut waits for a first write: the primary's
    /// host is cut in change tracking.
    pub fn aimed_at_first_write(&self) -> bool {
        self.at_first_write
            && self.phase == Phase::ChangeTracking
            && matches!(self.victims, Victims::Primary | Victims::PrimaryMirror | Victims::PrimaryArbiter)
    }

    /// Microseconds from the first write to the aimed cut (seeded), up to
    /// `fsync_us` (the primary's device) and 1 ms more: the write lands,
    /// then its record is synced, or the other way round.
    pub fn first_write_lag_us(&self, fsync_us: u64) -> u64 {
        ChaCha8Rng::seed_from_u64(self.seed ^ 0x5eed).gen_range(0..fsync_us + 1000)
    }

    pub fn level(&self) -> &'static str {
        LEVELS[(self.seed % 3) as usize]
    }

    pub fn describe(&self) -> String {
        let cut = match self.phase {
            Phase::Failover => format!("primary cut, then {:?} after {} ms", self.victims, self.delay_ms),
            _ if self.aimed_at_retire() => {
                format!("cut {:?} at the first retire after {} ms", self.victims, self.delay_ms)
            }
            _ if self.aimed_at_first_write() => {
                format!("cut {:?} into a first write after {} ms", self.victims, self.delay_ms)
            }
            _ => format!("cut {:?} after {} ms", self.victims, self.delay_ms),
        };
        format!(
            "seed {}: {:?}, {cut}{}, sync level {}",
            self.seed,
            self.phase,
            if self.tear { ", torn" } else { "" },
            self.level()
        )
    }
}
