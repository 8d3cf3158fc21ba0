//! Asking the acting arbiter among a cluster's arbiters: what a primary
//! does when it loses its mirror, and what the operator tools do.

use super::*;

/// The arbiters of a cluster as its files name them: one address, or
/// several separated by commas (one acts at a time, on a coordinator).
pub fn arbiter_addresses(arbiters: &str) -> Vec<&str> {
    arbiters.split(',').map(str::trim).filter(|a| !a.is_empty()).collect()
}

/// Most arbiters one [`ask`] tries, named ones included: a bound on
/// arbiters that name each other as leader.
const MAX_ASKED: usize = 16;

/// Ask the acting arbiter among `arbiters` (comma-separated): each in
/// turn, past those that do not answer or do not act, the one named as
/// leader first, within `timeout` in all. The last failure if none acts.
pub fn ask(
    arbiters: &str,
    key: &ClusterKey,
    req: &ArbiterRequest,
    timeout: Duration,
) -> std::result::Result<ArbiterResponse, String> {
    let mut todo: std::collections::VecDeque<String> =
        arbiter_addresses(arbiters).into_iter().map(String::from).collect();
    let mut asked: Vec<String> = Vec::new();
    let mut last = format!("no arbiter address in {arbiters:?}");
    let deadline = Instant::now() + timeout;
    while let Some(addr) = todo.pop_front() {
        if asked.contains(&addr) || asked.len() >= MAX_ASKED {
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            last = format!("{last}; no time left to ask {addr}");
            break;
        }
        // A host that is gone does not refuse: its connection hangs. Each
        // arbiter still to ask gets its share of the time (at least a
        // second), so one lost host does not use up all of it.
        let candidates = todo.iter().filter(|a| !asked.contains(*a)).count() as u32 + 1;
        let share = (left / candidates).max(Duration::from_secs(1)).min(left);
        asked.push(addr.clone());
        match control::call::<_, ArbiterResponse>(&addr, key, req, share) {
            Ok(ArbiterResponse::NotActing { leader, why }) => {
                last = format!("{addr}: {why}");
                if let Some(l) = leader.filter(|l| !asked.contains(l)) {
                    todo.push_front(l);
                }
            }
            Ok(answer) => return Ok(answer),
            Err(e) => last = e.to_string(),
        }
    }
    Err(if asked.len() > 1 { format!("no arbiter acts ({} asked); last: {last}", asked.len()) } else { last })
}

/// Ask the acting arbiter for its catalog (operators, tests).
pub fn fetch_catalog(arbiters: &str, key: &ClusterKey, timeout: Duration) -> Result<Catalog> {
    match ask(arbiters, key, &ArbiterRequest::Catalog, timeout) {
        Ok(ArbiterResponse::Catalog(c)) => Ok(*c),
        Ok(other) => Err(Error::InvalidArgument(format!("the arbiter answered {other:?}"))),
        Err(e) => Err(Error::InvalidArgument(e)),
    }
}
