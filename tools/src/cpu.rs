//! CPU time from /proc, for the benchmarks: the machine's busy time (every
//! process and the kernel's own work, such as the loopback network's) and
//! one process's (all its threads). On two shared cores a throughput ratio
//! is a ratio of CPU per block; these say where the CPU went.

/// Clock ticks per second of the /proc counters.
pub fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().filter(|t| *t > 0).unwrap_or(100) as f64
}

/// The machine's busy time so far, in ticks: user, nice, system, irq and
/// softirq of every CPU (`/proc/stat`; idle, iowait and steal left out).
pub fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal …
    Some([0, 1, 2, 5, 6].iter().map(|i| f.get(*i).copied().unwrap_or(0)).sum())
}

/// A process's CPU time so far (user + system of all its threads), in ticks.
pub fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command, which may hold spaces, in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A process's CPU time so far, in seconds.
pub fn process_seconds(pid: u32) -> Option<f64> {
    process_ticks(pid).map(|t| t as f64 / ticks_per_second())
}

/// CPU counters at one moment: the machine's and some processes'.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub machine: u64,
    pub processes: Vec<u64>,
}

impl Sample {
    pub fn now(pids: &[u32]) -> Sample {
        Sample {
            machine: machine_busy_ticks().unwrap_or(0),
            processes: pids.iter().map(|p| process_ticks(*p).unwrap_or(0)).collect(),
        }
    }

    /// Ticks from `earlier` to this one: the machine's, then each process's.
    pub fn since(&self, earlier: &Sample) -> (u64, Vec<u64>) {
        let procs = self.processes.iter().zip(&earlier.processes).map(|(a, b)| a.saturating_sub(*b)).collect();
        (self.machine.saturating_sub(earlier.machine), procs)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_and_the_machine_count_work_done() {
        let me = std::process::id();
        let (m0, p0) = (super::machine_busy_ticks().unwrap(), super::process_ticks(me).unwrap());
        // Busy for a while: both counters must move (ticks are 10 ms).
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(super::process_ticks(me).unwrap() > p0, "this process's CPU time moved");
        assert!(super::machine_busy_ticks().unwrap() > m0, "the machine's busy time moved");
        assert!(super::process_ticks(u32::MAX).is_none(), "no such process");
    }
}
