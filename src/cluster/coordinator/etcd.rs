//! The catalog on etcd, and the arbiters' leadership by an etcd lease
//! (docs/catalog.md, "On etcd").
//!
//! Keys, under the cluster's prefix `P`:
//!
//! | key | value (JSON) |
//! |---|---|
//! | `P/meta` | the cluster id and block size |
//! | `P/pair/<content, 10 digits>` | one pair: roles, mode, status, generation, addresses |
//! | `P/solo/<content, 10 digits>` | one content without a mirror |
//! | `P/history/<sequence, 20 digits>` | one history entry |
//! | `P/leader` | the acting arbiter's address, bound to its lease |
//!
//! The acting arbiter is the one whose `P/leader` key exists under its
//! lease; its epoch is that key's create revision (etcd revisions only
//! grow, so each new leader's epoch is above every earlier one's). Every
//! commit is a transaction that checks that key is still this arbiter's
//! at that revision, and that each pair it replaces is at the revision it
//! was read at; a pair and its history entries go in one transaction.

use super::{EtcdSpec, CALL_TIMEOUT, CAMPAIGN_EVERY, LEASE_TTL, RENEW_EVERY};
use crate::core::lease::Lead;
use crate::core::pair::HistoryEntry;
use crate::durable::catalog::{
    Catalog, CatalogPair, CatalogSolo, CatalogStore, Committed, Leadership, Snapshot, MAX_HISTORY,
};
use crate::error::{Error, Result};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use xxhash_rust::xxh3::xxh3_64;

/// Most operations in one transaction (etcd refuses more than 128 by default).
const MAX_TXN_OPS: usize = 100;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    cluster_id: u64,
    block_size: u32,
}

pub struct EtcdStore {
    rt: tokio::runtime::Runtime,
    client: Client,
    spec: EtcdSpec,
    me: String,
    lead: Arc<Mutex<Lead>>,
    /// The origin of the leadership's clock ([`Lead`] counts from it).
    origin: Instant,
    stop: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn coord(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Coordinator(format!("{what}: {e}"))
}

/// `f` within one call's time limit.
async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| coord(what, e)),
        Err(_) => Err(Error::Coordinator(format!("{what}: no answer within {} ms", CALL_TIMEOUT.as_millis()))),
    }
}

/// A client of `spec`'s members on `rt` (it connects as calls need it).
fn client_on(rt: &tokio::runtime::Runtime, spec: &EtcdSpec) -> Result<Client> {
    let options = ConnectOptions::new().with_connect_timeout(CALL_TIMEOUT).with_timeout(CALL_TIMEOUT);
    rt.block_on(timed("connecting to etcd", Client::connect(spec.endpoints.clone(), Some(options))))
}

/// A runtime for one call of a tool (`init`, a catalog read), and a client on it.
fn one_shot(spec: &EtcdSpec) -> Result<(tokio::runtime::Runtime, Client)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the etcd client's runtime", e))?;
    let client = client_on(&rt, spec)?;
    Ok((rt, client))
}

impl EtcdStore {
    /// Connect, and start campaigning for leadership in the background.
    pub fn open(spec: EtcdSpec, me: &str) -> Result<EtcdStore> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("filerep-etcd")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the etcd client's runtime", e))?;
        let client = client_on(&rt, &spec)?;
        let store = EtcdStore {
            rt,
            client,
            spec,
            me: me.to_string(),
            lead: Arc::new(Mutex::new(Lead::Unreachable("not elected yet".into()))),
            origin: Instant::now(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (client, lead, stop) = (store.client.clone(), store.lead.clone(), store.stop.clone());
        let (leader_key, me, origin) = (store.key("leader"), store.me.clone(), store.origin);
        store.rt.spawn(async move { campaign(client, leader_key, me, (lead, origin), stop).await });
        Ok(store)
    }

    fn key(&self, rest: &str) -> String {
        self.spec.key(rest)
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Step down at once: the next arbiter need not wait out the lease.
        let lead = lock(&self.lead).clone();
        if let Lead::Acting { lease, .. } = lead {
            let mut c = self.client.clone();
            let _ = self.rt.block_on(timed("revoking the lease", c.lease_revoke(lease)));
        }
    }
}

/// The leadership loop: a standby campaigns for the leader key; the
/// leader renews its lease and, if it cannot, stops acting by its own
/// clock before the lease can expire in etcd ([`Lead`]).
async fn campaign(
    client: Client,
    leader_key: String,
    me: String,
    (lead, origin): (Arc<Mutex<Lead>>, Instant),
    stop: Arc<AtomicBool>,
) {
    let mut keeper: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)> = None;
    while !stop.load(Ordering::SeqCst) {
        let current = lock(&lead).clone();
        match current {
            Lead::Acting { epoch, lease, .. } => {
                let sent = origin.elapsed();
                let renewed = renew(&client, lease, &mut keeper).await;
                let (lost, now) = {
                    let mut l = lock(&lead);
                    let lost = match &renewed {
                        Ok(alive) => l.renewal_answered(epoch, sent, *alive),
                        Err(e) => l.renewal_failed(epoch, origin.elapsed(), &e.cause()),
                    };
                    (lost, l.clone())
                };
                if lost {
                    tracing::error!(epoch, state = ?now, "this arbiter no longer acts");
                    keeper = None;
                } else if let Err(e) = &renewed {
                    tracing::warn!(epoch, error = %e, "lease renewal failed; trying again");
                }
                tokio::time::sleep(RENEW_EVERY).await;
            }
            _ => {
                let attempt = origin.elapsed();
                let next = match elect(&client, &leader_key, &me).await {
                    Ok(Ok((epoch, lease))) => {
                        tracing::warn!(epoch, arbiter = %me, "this arbiter acts");
                        Lead::elected(epoch, lease, attempt)
                    }
                    Ok(Err(leader)) => Lead::Standby { leader },
                    Err(e) => Lead::Unreachable(e.cause()),
                };
                let acting = matches!(next, Lead::Acting { .. });
                *lock(&lead) = next;
                if !acting {
                    tokio::time::sleep(CAMPAIGN_EVERY).await;
                }
            }
        }
    }
}

/// One renewal: whether the lease still lives.
async fn renew(
    client: &Client,
    lease: i64,
    keeper: &mut Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
) -> Result<bool> {
    if keeper.is_none() {
        let mut c = client.clone();
        *keeper = Some(timed("opening the lease renewal", c.lease_keep_alive(lease)).await?);
    }
    let Some((k, stream)) = keeper.as_mut() else { return Ok(false) };
    let answer = async {
        k.keep_alive().await?;
        stream.message().await
    };
    match timed("renewing the lease", answer).await {
        Ok(Some(r)) => Ok(r.ttl() > 0),
        Ok(None) => {
            *keeper = None;
            Err(Error::Coordinator("the lease renewal stream ended".into()))
        }
        Err(e) => {
            *keeper = None;
            Err(e)
        }
    }
}

/// Try to become the leader: `Ok(Ok((epoch, lease)))` if this arbiter now
/// holds the leader key, `Ok(Err(leader))` if another does.
async fn elect(client: &Client, leader_key: &str, me: &str) -> Result<std::result::Result<(u64, i64), Option<String>>> {
    let mut c = client.clone();
    // Cheap first: no lease granted while another leads.
    let held = timed("reading the leader", c.get(leader_key, None)).await?;
    if let Some(kv) = held.kvs().first() {
        return Ok(Err(Some(String::from_utf8_lossy(kv.value()).into_owned())));
    }
    let lease = timed("granting a lease", c.lease_grant(LEASE_TTL.as_secs() as i64, None)).await?.id();
    let txn = Txn::new()
        .when([Compare::create_revision(leader_key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(leader_key, me, Some(PutOptions::new().with_lease(lease)))])
        .or_else([TxnOp::get(leader_key, None)]);
    let r = timed("campaigning", c.txn(txn)).await?;
    if r.succeeded() {
        let epoch = r.header().map(|h| h.revision()).unwrap_or(0);
        if epoch <= 0 {
            return Err(Error::Coordinator("etcd answered without a revision".into()));
        }
        return Ok(Ok((epoch as u64, lease)));
    }
    let _ = timed("revoking an unused lease", c.lease_revoke(lease)).await;
    let leader = r.op_responses().into_iter().find_map(|op| match op {
        etcd_client::TxnOpResponse::Get(g) => {
            g.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        }
        _ => None,
    });
    Ok(Err(leader))
}

/// Per key: the content it belongs to (none: `meta`), and its value.
type Values = BTreeMap<String, (Option<u32>, Vec<u8>)>;
/// Writes to commit: per key, its new value (`None`: delete it).
type Writes = Vec<(String, Option<Vec<u8>>)>;

/// The history entry numbered `seq` (relative to the prefix).
fn history_key(seq: u64) -> String {
    format!("history/{seq:020}")
}

fn is_history(key: &str) -> bool {
    key.contains("/history/")
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// The catalog's keys and values (all but the history).
fn values(cat: &Catalog, spec: &EtcdSpec) -> Result<Values> {
    let key = |rest: &str| spec.key(rest);
    let mut out = BTreeMap::new();
    let meta = Meta { cluster_id: cat.cluster_id, block_size: cat.block_size };
    out.insert(key("meta"), (None, json(&meta)?));
    for p in &cat.pairs {
        out.insert(key(&format!("pair/{:010}", p.pair.content)), (Some(p.pair.content), json(p)?));
    }
    for s in &cat.unmirrored {
        out.insert(key(&format!("solo/{:010}", s.content)), (Some(s.content), json(s)?));
    }
    Ok(out)
}

fn parse<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|e| Error::Damaged {
        what: "catalog on etcd",
        path: key.to_string(),
        reason: e.to_string(),
        restore: "put a good value back with etcdctl, or the catalog again with filerep init --coordinator".into(),
    })
}

/// Put a new cluster's catalog on etcd under the prefix: refused if one is
/// there already (`filerep init --coordinator`).
pub fn initialize(spec: &EtcdSpec, cat: &Catalog) -> Result<()> {
    let (rt, mut c) = one_shot(spec)?;
    rt.block_on(async {
        let meta_key = spec.key("meta");
        let vals = values(cat, spec)?;
        let mut ops: Vec<TxnOp> = Vec::new();
        for (k, (_, v)) in &vals {
            if *k != meta_key {
                ops.push(TxnOp::put(k.as_str(), v.clone(), None));
            }
        }
        // The meta key last: a catalog is there once it is.
        let mut chunks: Vec<Vec<TxnOp>> = ops.chunks(MAX_TXN_OPS).map(|c| c.to_vec()).collect();
        if let Some((_, v)) = vals.get(&meta_key) {
            chunks.push(vec![TxnOp::put(meta_key.as_str(), v.clone(), None)]);
        }
        for chunk in chunks {
            let txn = Txn::new().when([Compare::create_revision(meta_key.as_str(), CompareOp::Equal, 0)]).and_then(chunk);
            if !timed("writing the catalog", c.txn(txn)).await?.succeeded() {
                return Err(Error::InvalidArgument(format!(
                    "a catalog is already on etcd under {}: choose another prefix, or remove it with etcdctl del --prefix {}/",
                    spec.prefix, spec.prefix
                )));
            }
        }
        Ok(())
    })
}

/// The catalog stored under the spec's prefix, with its revisions.
async fn read_snapshot(c: &mut Client, spec: &EtcdSpec) -> Result<Snapshot> {
    let prefix = format!("{}/", spec.prefix);
    let r = timed("reading the catalog", c.get(prefix.as_str(), Some(GetOptions::new().with_prefix()))).await?;
    let (mut meta, mut pairs, mut solos, mut history) = (None, Vec::new(), Vec::new(), Vec::new());
    let mut stored = BTreeMap::new();
    for kv in r.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let rest = &key[prefix.len()..];
        let v = kv.value();
        let mut keep = || stored.insert(key.clone(), (kv.mod_revision(), xxh3_64(v)));
        if rest == "meta" {
            meta = Some(parse::<Meta>(&key, v)?);
            keep();
        } else if rest.starts_with("pair/") {
            pairs.push(parse::<CatalogPair>(&key, v)?);
            keep();
        } else if rest.starts_with("solo/") {
            solos.push(parse::<CatalogSolo>(&key, v)?);
            keep();
        } else if let Some(seq) = rest.strip_prefix("history/") {
            let seq: u64 = seq.parse().map_err(|_| coord("reading the history", format!("key {key}")))?;
            history.push((seq, parse::<HistoryEntry>(&key, v)?));
        }
    }
    let Some(meta) = meta else {
        return Err(Error::Coordinator(format!(
            "no catalog on etcd under {}: make the cluster with filerep init --coordinator",
            spec.prefix
        )));
    };
    history.sort_by_key(|(seq, _)| *seq);
    let history_total = history.last().map_or(0, |(seq, _)| seq + 1);
    let skip = history.len().saturating_sub(MAX_HISTORY);
    pairs.sort_by_key(|p| p.pair.content);
    solos.sort_by_key(|s| s.content);
    let catalog = Catalog {
        cluster_id: meta.cluster_id,
        block_size: meta.block_size,
        pairs,
        unmirrored: solos,
        history: history.into_iter().skip(skip).map(|(_, h)| h).collect(),
        history_total,
        arbiter_epoch: 0,
    };
    catalog.check().map_err(|reason| Error::Damaged {
        what: "catalog on etcd",
        path: spec.name(),
        reason,
        restore: "put a good catalog back with filerep init --coordinator after removing this one".into(),
    })?;
    Ok(Snapshot { catalog, stored, history_stored: history_total })
}

/// The catalog on etcd, read once (the cluster tools; no leadership).
pub fn read(spec: &EtcdSpec) -> Result<Catalog> {
    let (rt, mut c) = one_shot(spec)?;
    Ok(rt.block_on(read_snapshot(&mut c, spec))?.catalog)
}

impl CatalogStore for EtcdStore {
    fn load(&self) -> Result<Snapshot> {
        let mut c = self.client.clone();
        self.rt.block_on(read_snapshot(&mut c, &self.spec))
    }

    fn commit(&self, snap: &mut Snapshot) -> Result<Committed> {
        let Leadership::Acting { epoch } = self.leadership() else {
            return Err(Error::Coordinator("this arbiter does not act".into()));
        };
        let leader_key = self.key("leader");
        let vals = values(&snap.catalog, &self.spec)?;
        // Per content: its puts and deletes, its history entries.
        let mut groups: BTreeMap<Option<u32>, Writes> = BTreeMap::new();
        for (k, (content, v)) in &vals {
            if snap.stored.get(k).map(|(_, h)| *h) != Some(xxh3_64(v)) {
                groups.entry(*content).or_default().push((k.clone(), Some(v.clone())));
            }
        }
        for k in snap.stored.keys().filter(|k| !vals.contains_key(*k)) {
            let content = k.rsplit('/').next().and_then(|c| c.parse::<u32>().ok());
            groups.entry(content).or_default().push((k.clone(), None));
        }
        let cat = &snap.catalog;
        let first_new =
            cat.history.len().saturating_sub((cat.history_total.saturating_sub(snap.history_stored)) as usize);
        for (i, h) in cat.history.iter().enumerate().skip(first_new) {
            let seq = cat.history_total - (cat.history.len() - i) as u64;
            groups.entry(Some(h.content)).or_default().push((self.key(&history_key(seq)), Some(json(h)?)));
        }
        // Groups packed into transactions of at most MAX_TXN_OPS writes.
        let mut txns: Vec<Writes> = vec![Vec::new()];
        for (_, writes) in groups {
            if txns.last().is_some_and(|t| !t.is_empty() && t.len() + writes.len() > MAX_TXN_OPS) {
                txns.push(Vec::new());
            }
            if let Some(t) = txns.last_mut() {
                t.extend(writes);
            }
        }
        // The oldest history past the kept count goes with the last one.
        let keep_from = cat.history_total.saturating_sub(MAX_HISTORY as u64);
        let trim = keep_from > 0 && keep_from / 1000 != snap.history_stored.saturating_sub(MAX_HISTORY as u64) / 1000;
        for (n, writes) in txns.iter().enumerate() {
            if writes.is_empty() {
                continue;
            }
            let mut when = vec![
                Compare::value(leader_key.as_str(), CompareOp::Equal, self.me.as_str()),
                Compare::create_revision(leader_key.as_str(), CompareOp::Equal, epoch as i64),
            ];
            let mut ops = Vec::with_capacity(writes.len() + 1);
            for (k, v) in writes {
                match snap.stored.get(k) {
                    Some((rev, _)) => when.push(Compare::mod_revision(k.as_str(), CompareOp::Equal, *rev)),
                    None if !is_history(k) => when.push(Compare::create_revision(k.as_str(), CompareOp::Equal, 0)),
                    None => {}
                }
                ops.push(match v {
                    Some(v) => TxnOp::put(k.as_str(), v.clone(), None),
                    None => TxnOp::delete(k.as_str(), None),
                });
            }
            if trim && n + 1 == txns.len() {
                let (from, to) = (self.key(&history_key(0)), self.key(&history_key(keep_from)));
                ops.push(TxnOp::delete(from.as_str(), Some(etcd_client::DeleteOptions::new().with_range(to.as_str()))));
            }
            let mut c = self.client.clone();
            let r = self.rt.block_on(timed("committing the catalog", c.txn(Txn::new().when(when).and_then(ops))))?;
            if !r.succeeded() {
                return self.why_refused(epoch);
            }
            let rev = r.header().map(|h| h.revision()).unwrap_or(0);
            for (k, v) in writes {
                match v {
                    Some(v) if !is_history(k) => {
                        snap.stored.insert(k.clone(), (rev, xxh3_64(v)));
                    }
                    Some(_) => {}
                    None => {
                        snap.stored.remove(k);
                    }
                }
            }
        }
        snap.history_stored = cat.history_total;
        Ok(Committed::Done)
    }

    fn describe(&self) -> String {
        self.spec.name()
    }

    fn leadership(&self) -> Leadership {
        lock(&self.lead).at(self.origin.elapsed())
    }
}

impl EtcdStore {
    /// A commit's compares failed: this arbiter lost the leader key (it no
    /// longer acts: an error), or a pair changed since it was read.
    fn why_refused(&self, epoch: u64) -> Result<Committed> {
        let mut c = self.client.clone();
        let leader_key = self.key("leader");
        let r = self.rt.block_on(timed("reading the leader", c.get(leader_key.as_str(), None)))?;
        let ours =
            r.kvs().first().is_some_and(|kv| kv.value() == self.me.as_bytes() && kv.create_revision() == epoch as i64);
        if ours {
            return Ok(Committed::Conflict("a pair changed on etcd since it was read".into()));
        }
        let leader = r.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
        tracing::error!(epoch, ?leader, "this arbiter's leadership is gone: it no longer acts");
        *lock(&self.lead) = Lead::Standby { leader: leader.clone() };
        Err(Error::Coordinator(format!(
            "this arbiter (epoch {epoch}) no longer acts{}",
            leader.map(|l| format!("; {l} does")).unwrap_or_default()
        )))
    }
}
