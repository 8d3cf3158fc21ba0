//! Before a full rebuild empties a segment's directories: whether any of
//! them is, once links are resolved on its machine, another segment's.
use super::*;

/// Why a full rebuild of `content` (`recover -F`, which empties the
/// segment it rebuilds) could delete another segment's files: a directory
/// of one of its segments that, once symbolic links are resolved on its
/// machine, is the same as, inside or around another segment's directory.
/// A link made after `addmirrors` checked the place is how this happens.
/// Machines are asked through their segments; a path no one can look at
/// is compared as written.
pub fn rebuild_overlaps(cat: &Catalog, key: &ClusterKey, content: u32) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut agents: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, a) in cat.addresses() {
        if !names.contains(&a.host) {
            names.push(a.host.clone());
        }
        agents.entry(a.host.clone()).or_default().push(a.control.clone());
    }
    // The catalog's hosts were checked when the cluster was made; one that
    // no longer resolves is asked by name only.
    let resolved = hosts::check_hosts(&names, true).unwrap_or_default();
    let probe = ClusterProbe::new(&resolved).with_agents(key.clone(), agents);
    // Every directory, resolved on its host: (host, dbid, content, filespace, as written, resolved).
    let mut dirs: Vec<(String, u32, u32, String, PathBuf, PathBuf)> = Vec::new();
    let mut by_host: BTreeMap<&str, Vec<(u32, &SegmentAddress)>> = BTreeMap::new();
    for (c, a) in cat.addresses() {
        by_host.entry(a.host.as_str()).or_default().push((c, a));
    }
    for (host, segments) in by_host {
        let mut asked = Vec::new();
        for (c, a) in &segments {
            for f in &a.filespaces {
                let (name, d) = f.split_once('=').unwrap_or(("pg_system", f.as_str()));
                asked.push((*c, a.dbid, name.to_string(), PathBuf::from(d)));
            }
        }
        let paths: Vec<(PathBuf, bool)> = asked.iter().map(|(.., p)| (p.components().collect(), false)).collect();
        let answers = probe.inspect(host, &paths);
        for (i, (c, dbid, name, written)) in asked.into_iter().enumerate() {
            let resolved = match answers.get(i) {
                Some(Ok(info)) => info.resolved.clone(),
                _ => written.components().collect(),
            };
            dirs.push((probe.machine(host), dbid, c, name, written, resolved));
        }
    }
    let mut index: DirIndex<usize> = DirIndex::default();
    let mut problems = Vec::new();
    let say = |i: usize| {
        let (_, dbid, c, name, written, resolved) = &dirs[i];
        let via = if written != resolved {
            format!(" (which is {} once symbolic links are resolved)", layout::shown(resolved))
        } else {
            String::new()
        };
        format!("the {name} directory {}{via} of content {c} (dbid {dbid})", layout::shown(written))
    };
    for i in 0..dirs.len() {
        let (machine, _, c, _, _, resolved) = &dirs[i];
        if let Some((relation, _, &j)) = index.overlap(machine, resolved) {
            // Said from the rebuilt content's side.
            if *c == content {
                problems.push(format!("{} {} {}", say(i), relation.words(), say(j)));
            } else if dirs[j].2 == content {
                let back = match relation {
                    layout::Relation::Same => layout::Relation::Same,
                    layout::Relation::Inside => layout::Relation::Contains,
                    layout::Relation::Contains => layout::Relation::Inside,
                };
                problems.push(format!("{} {} {}", say(j), back.words(), say(i)));
            }
        }
        index.insert(machine, resolved.clone(), i);
    }
    if !problems.is_empty() {
        tracing::warn!(content, problems = problems.len(), "full rebuild refused: segment directories overlap");
    }
    problems
}
