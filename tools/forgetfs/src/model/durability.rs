//! What moves the live state to the durable one and what a power cut
//! leaves: `fsync` of a file or a directory, the pending (unsynced)
//! changes, the cut itself and the durable image the tests read.

use super::*;

impl Model {
    /// `fsync`/`fdatasync`: of a file, its live content and length become
    /// durable; of a directory, its live entries.
    pub fn fsync(&mut self, ino: Ino) -> Result<(), Errno> {
        match self.kind(ino)? {
            Kind::File => self.sync_file(ino),
            Kind::Dir => {
                self.sync_dir(ino);
                Ok(())
            }
        }
    }

    fn sync_file(&mut self, ino: Ino) -> Result<(), Errno> {
        let dirty = match &self.node(ino)?.body {
            Body::File(f) => f.dirty(),
            Body::Dir(_) => return Err(libc::EISDIR),
        };
        if !dirty {
            if let Ok(f) = self.file_mut(ino) {
                f.last_write = None;
            }
            return Ok(());
        }
        if self.fail_syncs > 0 {
            // As Linux after a failed writeback: EIO, and the dirty pages
            // are clean from now on without having been written (rule 8 of
            // the design: a later fsync must not be trusted with them).
            self.fail_syncs -= 1;
            self.failed_syncs += 1;
            let f = self.file_mut(ino)?;
            let pages = std::mem::take(&mut f.pages);
            f.lost.extend(pages);
            tracing::warn!(ino, "fsync failed on purpose: EIO, its dirty pages let go");
            return Err(libc::EIO);
        }
        self.store_file(ino)?;
        let f = self.file_mut(ino)?;
        let store = f.store.as_ref().ok_or(libc::EIO)?;
        if f.floor < f.durable_len {
            store.set_len(f.floor).map_err(eio)?;
        }
        store.set_len(f.live_len).map_err(eio)?;
        for (&p, page) in &f.pages {
            let end = (p * PAGE + PAGE).min(f.live_len);
            if end > p * PAGE {
                store.write_all_at(&page[..(end - p * PAGE) as usize], p * PAGE).map_err(eio)?;
            }
        }
        // The pages a failed fsync let go stay held (and unwritten).
        let freed = f.pages.len() as u64 * PAGE;
        f.pages.clear();
        f.durable_len = f.live_len;
        f.floor = f.live_len;
        f.last_write = None;
        self.dirty_bytes = self.dirty_bytes.saturating_sub(freed);
        Ok(())
    }

    fn sync_dir(&mut self, ino: Ino) {
        let Ok(d) = self.dir_mut(ino) else { return };
        let old = std::mem::replace(&mut d.durable, d.live.clone());
        let new = d.durable.clone();
        for (name, child) in &new {
            if old.get(name) != Some(child) {
                if let Some(n) = self.nodes.get_mut(child) {
                    n.durable_links += 1;
                }
            }
        }
        for (name, child) in old {
            if new.get(&name) != Some(&child) {
                if let Some(n) = self.nodes.get_mut(&child) {
                    n.durable_links = n.durable_links.saturating_sub(1);
                }
                self.collect(child);
            }
        }
    }

    /// Every inode's first path in the live (or durable) tree, walked by name.
    fn paths(&self, durable: bool) -> HashMap<Ino, String> {
        let mut out = HashMap::from([(ROOT, String::new())]);
        let mut queue = VecDeque::from([ROOT]);
        while let Some(ino) = queue.pop_front() {
            let Ok(d) = self.dir(ino) else { continue };
            let prefix = out.get(&ino).cloned().unwrap_or_default();
            for (name, child) in if durable { &d.durable } else { &d.live } {
                if out.contains_key(child) {
                    continue;
                }
                out.insert(*child, format!("{prefix}/{}", name.to_string_lossy()));
                if self.kind(*child) == Ok(Kind::Dir) {
                    queue.push_back(*child);
                }
            }
        }
        out
    }

    /// What a cut now would throw away.
    pub fn pending(&self) -> Pending {
        let mut p = Pending::default();
        for n in self.nodes.values() {
            match &n.body {
                Body::File(f) if f.unsynced() => {
                    p.files += 1;
                    p.bytes += f.held_pages() * PAGE;
                }
                Body::Dir(d) => p.entries += map_diff(&d.live, &d.durable).len() as u64,
                Body::File(_) => {}
            }
        }
        p
    }

    /// Power cut: only what was made durable stays. With `tear`, the last
    /// unsynced write of each file keeps a seeded prefix of its sectors.
    pub fn cut(&mut self, tear: Option<u64>) -> CutReport {
        let mut r = CutReport::default();
        let live_paths = self.paths(false);
        let name = |ino: Ino| live_paths.get(&ino).cloned().unwrap_or_else(|| format!("(inode {ino}, unnamed)"));
        let mut inos: Vec<Ino> = self.nodes.keys().copied().collect();
        inos.sort_unstable();
        // What is thrown away, before anything changes.
        for &ino in &inos {
            match &self.nodes[&ino].body {
                Body::File(f) if f.unsynced() => {
                    r.files += 1;
                    r.bytes += f.held_pages() * PAGE;
                    r.lines.push(format!(
                        "{}: unsynced changes dropped ({} dirty pages, {} let go by a failed fsync; length {} -> {})",
                        name(ino),
                        f.pages.len(),
                        f.lost.len(),
                        f.live_len,
                        f.durable_len
                    ));
                }
                Body::Dir(d) => {
                    for (entry, what) in map_diff(&d.live, &d.durable) {
                        r.entries += 1;
                        let shown = if ino == ROOT { String::new() } else { name(ino) };
                        r.lines.push(format!("{shown}/{}: {what}", entry.to_string_lossy()));
                    }
                }
                Body::File(_) => {}
            }
        }
        // The durable tree from the root; a directory named twice (a rename
        // whose old directory was not synced) keeps its first name.
        let mut reach: HashSet<Ino> = HashSet::from([ROOT]);
        let mut queue = VecDeque::from([ROOT]);
        let mut parents: HashMap<Ino, Ino> = HashMap::new();
        while let Some(dir) = queue.pop_front() {
            let Ok(d) = self.dir(dir) else { continue };
            let mut keep = BTreeMap::new();
            for (n, child) in &d.durable {
                let is_dir = self.kind(*child) == Ok(Kind::Dir);
                if is_dir && reach.contains(child) {
                    r.lines.push(format!(
                        "{}/{}: a directory named twice in the durable image: this name dropped",
                        name(dir),
                        n.to_string_lossy()
                    ));
                    continue;
                }
                if self.nodes.contains_key(child) {
                    keep.insert(n.clone(), *child);
                    if reach.insert(*child) && is_dir {
                        parents.insert(*child, dir);
                        queue.push_back(*child);
                    }
                }
            }
            if let Ok(d) = self.dir_mut(dir) {
                d.durable = keep;
            }
        }
        for &ino in &inos {
            if !reach.contains(&ino) {
                if let Some(node) = self.nodes.remove(&ino) {
                    r.removed += 1;
                    if let Body::File(f) = node.body {
                        drop(f.store);
                        let _ = std::fs::remove_file(self.store.join(ino.to_string()));
                    }
                }
            }
        }
        // Torn writes, read before the live image goes: the sectors the
        // device had written when the power went hold what the page cache
        // held (other unsynced writes sharing a sector included).
        let mut tears = Vec::new();
        if let Some(seed) = tear {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            for &ino in &inos {
                let last = match self.nodes.get(&ino).map(|n| &n.body) {
                    Some(Body::File(f)) => f.last_write,
                    _ => None,
                };
                let Some((off, len)) = last else { continue };
                let start = off - off % SECTOR;
                let end = torn_end(start, off + len, &mut rng);
                if self.open_store_if_needed(ino).is_err() {
                    continue;
                }
                let Ok(Body::File(f)) = self.node(ino).map(|n| &n.body) else { continue };
                match self.read_live(f, start, end.min(f.live_len)) {
                    Ok(bytes) => tears.push((ino, off, len, start, bytes)),
                    Err(e) => tracing::error!(ino, errno = e, "cannot read a torn write"),
                }
            }
        }
        let mut links: HashMap<Ino, u32> = HashMap::new();
        for &ino in &inos {
            let Some(node) = self.nodes.get_mut(&ino) else { continue };
            node.open = 0;
            match &mut node.body {
                Body::Dir(d) => {
                    d.live = d.durable.clone();
                    d.parent = parents.get(&ino).copied().unwrap_or(ROOT);
                    for c in d.durable.values() {
                        *links.entry(*c).or_default() += 1;
                    }
                }
                Body::File(f) => {
                    f.pages.clear();
                    f.lost.clear();
                    f.live_len = f.durable_len;
                    f.floor = f.durable_len;
                    f.last_write = None;
                }
            }
        }
        let durable_paths = self.paths(true);
        for (ino, off, len, start, bytes) in tears {
            let shown = durable_paths.get(&ino).cloned().unwrap_or_else(|| format!("(inode {ino})"));
            r.torn += 1;
            r.lines.push(format!(
                "{shown}: last write at {off}..{} torn: sectors {start}..{} kept",
                off + len,
                start + bytes.len() as u64
            ));
            if bytes.is_empty() {
                continue;
            }
            match self.store_file(ino).and_then(|s| s.write_all_at(&bytes, start).map_err(eio)) {
                Ok(()) => {
                    if let Ok(f) = self.file_mut(ino) {
                        f.durable_len = f.durable_len.max(start + bytes.len() as u64);
                        f.live_len = f.durable_len;
                        f.floor = f.durable_len;
                    }
                }
                Err(e) => tracing::error!(ino, errno = e, "cannot store a torn write"),
            }
        }
        for (ino, node) in &mut self.nodes {
            let n = if *ino == ROOT { 1 } else { links.get(ino).copied().unwrap_or(0) };
            node.live_links = n;
            node.durable_links = n;
        }
        self.handles.clear();
        self.dirty_bytes = 0;
        self.epoch += 1;
        self.cuts += 1;
        r
    }

    /// The durable image, for tests: every path with its durable content
    /// (`None` for a directory), walked by name from the root.
    pub fn durable_image(&mut self) -> BTreeMap<String, Option<Vec<u8>>> {
        let paths = self.paths(true);
        let mut out = BTreeMap::new();
        let mut list: Vec<(Ino, String)> = paths.into_iter().filter(|(i, _)| *i != ROOT).collect();
        list.sort_by(|a, b| a.1.cmp(&b.1));
        for (ino, path) in list {
            let content = match self.kind(ino) {
                Ok(Kind::Dir) => None,
                _ => {
                    let _ = self.open_store_if_needed(ino);
                    let _ = self.store_file(ino);
                    let Ok(Body::File(f)) = self.node(ino).map(|n| &n.body) else { continue };
                    let mut buf = vec![0u8; f.durable_len as usize];
                    if let Some(s) = &f.store {
                        let _ = s.read_exact_at(&mut buf, 0);
                    }
                    Some(buf)
                }
            };
            out.insert(path, content);
        }
        out
    }
}

/// How each name whose live entry differs from its durable one changed.
fn map_diff(live: &BTreeMap<OsString, Ino>, durable: &BTreeMap<OsString, Ino>) -> Vec<(OsString, &'static str)> {
    let mut out = Vec::new();
    for (n, i) in live {
        match durable.get(n) {
            None => out.push((n.clone(), "created or renamed here, never synced: gone")),
            Some(d) if d != i => out.push((n.clone(), "replaced, never synced: the earlier inode is back")),
            Some(_) => {}
        }
    }
    for n in durable.keys() {
        if !live.contains_key(n) {
            out.push((n.clone(), "removed or renamed away, never synced: back"));
        }
    }
    out
}

/// Where a torn write-back of `start..end` (`start` on a sector boundary)
/// stops: a seeded number of its sectors survive, from none to all.
fn torn_end(start: u64, end: u64, rng: &mut impl Rng) -> u64 {
    let mut bounds = vec![start];
    let mut b = start + SECTOR;
    while b < end {
        bounds.push(b);
        b += SECTOR;
    }
    bounds.push(end);
    bounds[rng.gen_range(0..bounds.len())]
}
