//! What a probe of the segment sees: its role, mode and generation, and
//! whether its files are in doubt, read under the role lock (`role_view`),
//! with the statistics around them (`status`).

use super::*;

pub(super) struct RoleView {
    pub(super) acting: Acting,
    pub(super) generation: u64,
    pub(super) mode: char,
    pub(super) detail: String,
    /// A mirror whose disk failed (or, idle, whose state file says so).
    pub(super) faulted: bool,
    /// Not a primary, and its mirror role's last session was cut by the host going down.
    pub(super) lost_power_streaming: bool,
    pub(super) primary: Option<Arc<Primary>>,
}

/// What a mirror role's state file says of its files, as the segment
/// keeps it between roles (`Shared::mirror_record`).
#[derive(Clone, Debug, Default)]
pub(super) struct MirrorRecord {
    /// Its disk failed (rule 8): in doubt until a full resync rebuilds them.
    pub(super) fault: Option<String>,
    /// A session was cut by the host going down: what it acknowledged as
    /// applied may be gone.
    pub(super) lost_power_streaming: bool,
}

impl Shared {
    /// Keep what mirror role `server` says of its files now; returns it.
    pub(super) fn note_mirror(&self, server: &MirrorServer) -> MirrorRecord {
        let now = MirrorRecord { fault: server.fault(), lost_power_streaming: server.lost_power_streaming() };
        lock(&self.mirror_record).clone_from(&now);
        now
    }

    /// What the mirror role last said of its files (or its state file, at start).
    pub(super) fn mirror_record(&self) -> MirrorRecord {
        lock(&self.mirror_record).clone()
    }

    /// The role, the mode its primary sees and the generation, read under
    /// the role lock only (no statistics).
    pub(super) fn role_view(&self) -> RoleView {
        let role = lock(&self.role);
        // A mirror whose disk failed (rule 8) says so: it is never promoted.
        // A primary whose disk failed refuses every change: the arbiter
        // promotes its mirror if that is in sync (else the content is down).
        let (fault, lost_power_streaming) = match &*role {
            Role::Primary(p) => (p.faulted(), false),
            Role::Mirror { server, .. } => {
                let r = self.note_mirror(server);
                (r.fault, r.lost_power_streaming)
            }
            Role::Idle | Role::Starting | Role::Stopped(_) => {
                let r = self.mirror_record();
                (r.fault, r.lost_power_streaming)
            }
        };
        let faulted = fault.is_some();
        let (acting, generation, mode, detail, primary) = match &*role {
            Role::Idle => {
                let detail = match &fault {
                    Some(f) => format!("waiting for the arbiter; faulted as mirror: {f}"),
                    None => "waiting for the arbiter".to_string(),
                };
                (Acting::Idle, 0, '-', detail, None)
            }
            Role::Starting => (Acting::Starting, 0, '-', "carrying out an order".to_string(), None),
            Role::Mirror { server, .. } => {
                (Acting::Mirror, server.generation(), '-', fault.clone().unwrap_or_else(|| "serving".into()), None)
            }
            Role::Primary(p) => {
                let (mode, detail) = match p.mode() {
                    Mode::Streaming if p.resyncing() => ('r', "resynchronizing the mirror".to_string()),
                    Mode::Streaming => ('s', "streaming to the mirror".to_string()),
                    Mode::Deciding => ('d', "mirror lost: asking the arbiter".to_string()),
                    Mode::ChangeTracking => ('c', "change tracking".to_string()),
                    Mode::Failed(w) => ('f', w),
                };
                let detail = match &fault {
                    Some(f) => format!("faulted: {f}"),
                    None => detail,
                };
                (Acting::Primary, p.generation(), mode, detail, Some(p.clone()))
            }
            Role::Stopped(w) => (Acting::Stopped, 0, '-', w.clone(), None),
        };
        RoleView { acting, generation, mode, detail, faulted, lost_power_streaming, primary }
    }

    pub(super) fn status(&self) -> SegmentStatus {
        let RoleView { acting, generation, mode, detail, faulted, lost_power_streaming, primary } = self.role_view();
        // A segment faulted through its handle (a caught panic in the C ABI)
        // counts too, for the probes that reach it before it stops.
        let faulted = faulted || lock(&self.fault).is_some();
        let unheard = primary.as_ref().is_some_and(|p| p.failed_unheard());
        let replication = primary.map(|p| p.replication());
        let verify = {
            let v = lock(&self.verify);
            (v.id > 0).then(|| crate::verify::online::VerifyState {
                id: v.id,
                repair: v.repair,
                running: v.running,
                progress: v.progress.as_ref().map(|p| p.snapshot()).unwrap_or_default(),
                summary: v.report.as_ref().map(|r| r.summary.clone()),
                error: v.error.clone(),
            })
        };
        let rs = lock(&self.resync);
        SegmentStatus {
            dbid: self.cfg.dbid,
            content: self.cfg.content,
            acting,
            generation,
            mode,
            detail,
            changes_pending: !self.changelog.is_empty(),
            faulted,
            unheard,
            lost_power_streaming,
            resync: rs.progress.as_ref().map(|p| p.snapshot()),
            resync_error: rs.error.clone(),
            verify,
            replication,
            changelog: Some(self.changelog.stats()),
            epoch: self.epoch.load(std::sync::atomic::Ordering::SeqCst),
        }
    }
}
