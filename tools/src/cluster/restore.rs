//! A damaged cluster file or catalog put back: from the running arbiter,
//! the last good copy, or rebuilt from the segments themselves.
use super::*;

/// What `filerep catalog restore` did, file by file.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Restored {
    /// One line per file: what was wrong and where the good version came from.
    pub done: Vec<String>,
    /// Notes on a rebuilt catalog (what was assumed, what to run next).
    pub notes: Vec<String>,
}

/// Put back a damaged cluster file and catalog. The cluster file comes
/// from its last good copy (`cluster.json.good`), else is rebuilt from the
/// catalog and the segments' configurations. The catalog comes, in this
/// order, from the running arbiter (asked to write the one it holds), its
/// last good copy (`catalog.json.good`), or, when neither is whole and
/// agrees with the segments' configurations (or `rebuild` is asked), from
/// the segments themselves ([`rebuild_catalog`]; `primaries` names the
/// acting primary of a content where the segments cannot tell).
pub fn restore(dir: &ClusterDir, rebuild: bool, primaries: &BTreeMap<u32, u32>) -> Result<Restored> {
    let mut out = Restored::default();
    let key = dir.key()?;
    let file = match dir.load() {
        Ok(f) => f,
        Err(e) => {
            let good = std::fs::read(sealed::good_copy(&dir.cluster_file()))
                .map_err(|e| e.to_string())
                .and_then(|b| ClusterFile::from_bytes(&b));
            let file = match good {
                Ok(f) => {
                    out.done.push(format!(
                        "{}: {}; put back from its last good copy",
                        dir.cluster_file().display(),
                        reason(&e)
                    ));
                    f
                }
                Err(why) => {
                    let (f, notes) = rebuild_cluster_file(dir)?;
                    out.notes.extend(notes);
                    out.done.push(format!(
                        "{}: {}; its last good copy is not whole either ({why}): rebuilt from the catalog and the segments' configurations",
                        dir.cluster_file().display(),
                        reason(&e)
                    ));
                    f
                }
            };
            dir.write_cluster_file(&file)?;
            file
        }
    };
    let catalog_ok = dir.load_catalog(&file);
    if let Some(spec) = &file.coordinator {
        // etcd keeps its own copies on every member: nothing here to put back.
        return match catalog_ok {
            Ok(_) if !rebuild => {
                out.done.push(format!("the catalog on {spec}: whole, and it agrees with the segments: nothing to restore"));
                Ok(out)
            }
            Ok(_) => Err(Error::InvalidArgument(format!(
                "the catalog is on {spec}, whole: a rebuild from the segments is only for a catalog file"
            ))),
            Err(e) => Err(Error::NotDone(format!(
                "the catalog on {spec}: {}; it is etcd's to restore (etcdctl snapshot restore on its members), not this tool's",
                reason(&e)
            ))),
        };
    }
    if catalog_ok.is_ok() && !rebuild {
        if out.done.is_empty() {
            out.done.push(format!(
                "{}: whole, and it agrees with the segments: nothing to restore",
                dir.catalog().display()
            ));
        }
        return Ok(out);
    }
    let why = catalog_ok.err().map_or_else(|| "a rebuild was asked".to_string(), |e| reason(&e));
    // The running arbiter's own catalog: it writes it itself, under its lock.
    if !rebuild {
        if let Ok(live) = filerep::cluster::probe::fetch_catalog(&file.arbiter, &key, Duration::from_secs(3)) {
            if dir.agrees(&file, &live).is_ok() {
                let req = filerep::cluster::segment::ArbiterRequest::StoreCatalog;
                match filerep::cluster::probe::ask(&file.arbiter, &key, &req, Duration::from_secs(10)) {
                    Ok(filerep::cluster::segment::ArbiterResponse::Started) => {
                        dir.load_catalog(&file)?;
                        out.done.push(format!(
                            "{}: {why}; written again by the running arbiter from the catalog it holds",
                            dir.catalog().display()
                        ));
                        return Ok(out);
                    }
                    other => {
                        return Err(Error::NotDone(format!("the running arbiter did not write its catalog: {other:?}")))
                    }
                }
            }
        }
    }
    // With no arbiter running: the file is ours to replace.
    let _lock = filerep::durable::catalog::FileStore::lock(&dir.catalog()).map_err(|e| {
        Error::NotDone(format!("{}; stop it first (filerep stop --cluster-dir {})", e.cause(), dir.root.display()))
    })?;
    if !rebuild {
        let good = sealed::good_copy(&dir.catalog());
        let copy = std::fs::read(&good).map_err(|e| e.to_string()).and_then(|b| {
            let c = Catalog::from_bytes(&b)?;
            dir.agrees(&file, &c)?;
            Ok((b, c))
        });
        match copy {
            Ok((bytes, _)) => {
                sealed::replace(&dir.catalog(), &bytes)
                    .map_err(|e| Error::io(format!("writing {}", dir.catalog().display()), e))?;
                dir.load_catalog(&file)?;
                out.done.push(format!(
                    "{}: {why}; put back from its last good copy {}",
                    dir.catalog().display(),
                    good.display()
                ));
                return Ok(out);
            }
            Err(copy_why) => out.notes.push(format!("the last good copy {} is not usable: {copy_why}", good.display())),
        }
    }
    let (cat, notes) = rebuild_catalog(dir, &file, &key, primaries)?;
    out.notes.extend(notes);
    cat.store(&dir.catalog())?;
    dir.load_catalog(&file)?;
    out.done.push(format!(
        "{}: {why}; rebuilt from the segments' configurations, role records and answers",
        dir.catalog().display()
    ));
    Ok(out)
}

/// What is wrong with a file, without its path.
pub(super) fn reason(e: &Error) -> String {
    match e {
        Error::Damaged { reason, .. } => reason.clone(),
        e => e.cause(),
    }
}

/// The cluster file again, from the catalog (or its last good copy) and
/// the segments' configurations, with notes of what it cannot say.
pub(super) fn rebuild_cluster_file(dir: &ClusterDir) -> Result<(ClusterFile, Vec<String>)> {
    let cat = Catalog::load(&dir.catalog()).or_else(|e| {
        std::fs::read(sealed::good_copy(&dir.catalog()))
            .map_err(|_| e.cause())
            .and_then(|b| Catalog::from_bytes(&b))
            .map_err(|why| {
                Error::NotDone(format!(
                    "the cluster file cannot be rebuilt: neither the catalog nor its last good copy is whole ({why})"
                ))
            })
    })?;
    let mut hosts: Vec<String> = Vec::new();
    let mut filespaces = Vec::new();
    let mut arbiter = None;
    let mut mounts: Vec<super::ClusterMount> = Vec::new();
    let mut served = Vec::new();
    let mut addrs: Vec<(u32, &SegmentAddress)> = cat.addresses().collect();
    addrs.sort_by_key(|(c, a)| (*c, a.dbid));
    for (_, a) in addrs {
        if !hosts.contains(&a.host) {
            hosts.push(a.host.clone());
        }
        let cfg = dir.segment(a.dbid)?;
        if filespaces.is_empty() {
            filespaces =
                cfg.filespaces.iter().map(|f| f.split_once('=').map_or(f.clone(), |(n, _)| n.to_string())).collect();
        }
        // Mounts the tools set up (`BASE/segD`) name their base again (the
        // first segment's, per filespace).
        for m in &cfg.mounts {
            let base = m.mountpoint.parent().filter(|b| super::mountpoint(b, a.dbid) == m.mountpoint);
            if let Some(base) = base {
                if !mounts.iter().any(|x| x.filespace == m.filespace) {
                    mounts.push(super::ClusterMount { filespace: m.filespace.clone(), base: base.to_path_buf() });
                }
            }
            served.push((a.dbid, m.filespace.clone(), m.mountpoint.clone()));
        }
        arbiter.get_or_insert(cfg.arbiter);
    }
    let arbiter = arbiter
        .ok_or_else(|| Error::NotDone("the cluster file cannot be rebuilt: the catalog lists no segment".into()))?;
    // A mount set up otherwise (a configuration edited by hand) is said,
    // not guessed at: the segment still serves it; mirrors added later get
    // the base the file names.
    let notes = served
        .into_iter()
        .filter_map(|(dbid, filespace, mountpoint)| {
            let base = mounts.iter().find(|x| x.filespace == filespace).map(|x| &x.base);
            match base {
                Some(b) if super::mountpoint(b, dbid) == mountpoint => None,
                Some(b) => Some(format!(
                    "segment {dbid} serves filespace {filespace} at {}, not under the base the rebuilt cluster file \
                     names ({}): it still serves it there; mirrors added later are given the file's base",
                    mountpoint.display(),
                    b.display()
                )),
                None => Some(format!(
                    "segment {dbid} serves filespace {filespace} at {}, which is not BASE/seg{dbid}: the rebuilt \
                     cluster file names no base for {filespace}; mirrors added later are given no mount for it",
                    mountpoint.display()
                )),
            }
        })
        .collect();
    let one_machine = hosts::check_hosts(&hosts, false).is_err();
    let file = ClusterFile {
        cluster_id: cat.cluster_id,
        block_size: cat.block_size,
        filespaces,
        hosts,
        arbiter,
        // A cluster on a coordinator has no catalog file to rebuild from.
        coordinator: None,
        placement: (!cat.pairs.is_empty()).then(|| "custom".to_string()),
        one_machine,
        mounts,
    };
    Ok((file, notes))
}

/// What one segment says of itself: as it answers now, and as its state
/// directory records (when it is on this machine).
pub(super) struct Evidence {
    cfg: SegmentConfig,
    live: Option<SegmentStatus>,
    roles: filerep::cluster::segment::RoleRecord,
    mirror_generation: u64,
}

/// A catalog rebuilt from the segments, for when the catalog and its last
/// good copy are both lost: the segments' configurations give every
/// segment (its dbid, content, addresses, directories); which of a pair
/// acts as primary, and the generation, come from the segments running
/// now, else from their role records (`roles.json`: the highest generation
/// each was ordered to act as primary and as mirror), else from
/// `primaries` (content → dbid), else the content is refused. The lower
/// dbid of a pair is its preferred primary (as init and addmirrors number
/// them). A pair is synchronized only if its two segments say so now;
/// every other is `n`, to be rebuilt by `filerep recover -F` (its mirror
/// may lack what the primary wrote while they were apart).
pub fn rebuild_catalog(
    dir: &ClusterDir,
    file: &ClusterFile,
    key: &ClusterKey,
    primaries: &BTreeMap<u32, u32>,
) -> Result<(Catalog, Vec<String>)> {
    let mut evidence: BTreeMap<u32, Vec<Evidence>> = BTreeMap::new();
    for (dbid, cfg) in dir.segment_configs()? {
        if cfg.cluster_id != file.cluster_id || cfg.dbid != dbid {
            return Err(Error::NotDone(format!(
                "segments/dbid{dbid}.json is dbid {} of cluster {:016x}, not dbid {dbid} of this cluster ({:016x}): remove it or put the right one back",
                cfg.dbid, cfg.cluster_id, file.cluster_id
            )));
        }
        let live = probe(&cfg.control_listen, key, Duration::from_secs(2)).filter(|s| s.dbid == dbid);
        let roles = filerep::cluster::segment::RoleRecord::load(&cfg.state_dir).unwrap_or_default();
        let mirror_generation = filerep::runtime::mirror::MirrorState::load(&cfg.state_dir).map_or(0, |m| m.generation);
        evidence.entry(cfg.content).or_default().push(Evidence { cfg, live, roles, mirror_generation });
    }
    let mut cat = Catalog::new(file.cluster_id, file.block_size, Vec::new());
    let mut notes = Vec::new();
    let address = |e: &Evidence| address_of(&e.cfg);
    for (content, mut segs) in evidence {
        segs.sort_by_key(|e| e.cfg.dbid);
        let newest = |e: &Evidence| {
            e.live
                .as_ref()
                .map_or(0, |s| s.generation)
                .max(e.roles.primary)
                .max(e.roles.mirror)
                .max(e.mirror_generation)
        };
        let generation = segs.iter().map(newest).max().unwrap_or(0).max(1);
        match segs.as_slice() {
            [one] => cat.unmirrored.push(CatalogSolo { content, generation, up: false, address: address(one) }),
            [a, b] => {
                let acting_live =
                    |e: &Evidence| e.live.as_ref().filter(|s| s.acting == Acting::Primary).map(|s| s.generation);
                let primary = match (acting_live(a), acting_live(b)) {
                    (Some(x), Some(y)) if x == y => None,
                    (Some(x), Some(y)) => Some(if x > y { 0 } else { 1 }),
                    (Some(_), None) => Some(0),
                    (None, Some(_)) => Some(1),
                    (None, None) if a.roles.primary != b.roles.primary => {
                        Some(if a.roles.primary > b.roles.primary { 0 } else { 1 })
                    }
                    (None, None) => None,
                };
                let primary = match (primary, primaries.get(&content)) {
                    (_, Some(&dbid)) if dbid == a.cfg.dbid => 0,
                    (_, Some(&dbid)) if dbid == b.cfg.dbid => 1,
                    (_, Some(&dbid)) => {
                        return Err(Error::InvalidArgument(format!("--primary {content}={dbid}: content {content}'s segments are dbid {} and {}", a.cfg.dbid, b.cfg.dbid)))
                    }
                    (Some(p), None) => p,
                    (None, None) => {
                        return Err(Error::NotDone(format!(
                            "content {content}: neither dbid {} nor dbid {} answers as primary, and their role records do not tell which acted as primary last; if you know it, say so with --primary {content}=DBID",
                            a.cfg.dbid, b.cfg.dbid
                        )))
                    }
                };
                let (p, m) = if primary == 0 { (a, b) } else { (b, a) };
                let synchronized = p.live.as_ref().is_some_and(|s| s.mode == 's' && s.generation == generation)
                    && m.live.as_ref().is_some_and(|s| s.acting == Acting::Mirror && s.generation == generation);
                let role = |e: &Evidence, r| filerep::core::pair::Segment {
                    dbid: e.cfg.dbid,
                    role: r,
                    preferred_role: if e.cfg.dbid == a.cfg.dbid {
                        filerep::core::pair::Role::Primary
                    } else {
                        filerep::core::pair::Role::Mirror
                    },
                    up: r == filerep::core::pair::Role::Primary || e.live.is_some(),
                };
                let pair = Pair {
                    content,
                    generation,
                    mode: if synchronized {
                        filerep::core::pair::PairMode::Synchronized
                    } else {
                        filerep::core::pair::PairMode::NotInSync
                    },
                    segments: [role(p, filerep::core::pair::Role::Primary), role(m, filerep::core::pair::Role::Mirror)],
                    down: false,
                    full_resync_owed: false,
                };
                if !synchronized {
                    notes.push(format!(
                        "content {content}: dbid {} acts as primary at generation {generation}; the pair is marked not in sync: rebuild its mirror with filerep recover -F --content {content}",
                        p.cfg.dbid
                    ));
                }
                let after = filerep::core::pair::describe(&pair);
                cat.pairs.push(CatalogPair { pair, addresses: [address(p), address(m)] });
                cat.note(
                    content,
                    "catalog lost".into(),
                    after,
                    "catalog rebuilt from the segments (filerep catalog restore)".into(),
                );
            }
            more => {
                return Err(Error::NotDone(format!(
                "content {content} has {} segment configurations ({}); a content has one or two: remove the extra ones",
                more.len(),
                more.iter().map(|e| format!("dbid {}", e.cfg.dbid)).collect::<Vec<_>>().join(", ")
            )))
            }
        }
    }
    cat.pairs.sort_by_key(|p| p.pair.content);
    cat.unmirrored.sort_by_key(|s| s.content);
    cat.check().map_err(|e| Error::NotDone(format!("the rebuilt catalog does not hold together: {e}")))?;
    Ok((cat, notes))
}
