//! `filerep segment`: the segment storage process. It hosts the storage
//! layer in whichever role the arbiter gives it: a mirror (the applier
//! behind the replication port) or the primary (the storage API, served to
//! local clients over a Unix socket, shipping to the mirror or tracking
//! changes alone). It never picks a role itself: it starts idle, writes
//! nothing, and waits for the arbiter's order (brief rules 3 and 7).
//!
//! Orders arrive on the control endpoint ([`crate::cluster::control`]): probe,
//! become mirror, become primary, hand over / add / clear changes, stop.
//!
//! [`Segment::start`] runs it inside the calling process (the control
//! server, the client socket and `/metrics` on their own threads) and hands
//! back a [`SegmentHandle`]; its [`Storage`] is the storage API of the
//! acting primary, for a storage process that is the segment itself (the C
//! ABI). `filerep segment` is the same, started and waited for.

use crate::cluster::client::{self, ErrorClass, Request};
use crate::cluster::control;
pub use crate::cluster::storage::Storage;
use crate::config::{Filespace, PairIdentity, SyncLevel};
use crate::durable::changelog::ChangeLog;
use crate::error::{Error, Result};
use crate::io::admission::{Gate, Stop, Ticket};
use crate::io::disk::{Disk, FsPath, StdDisk};
use crate::protocol::handshake::ClusterKey;
use crate::protocol::path::RelPath;
use crate::runtime::arbiter::{Arbiter, Decision};
use crate::runtime::mirror::{MirrorConfig, MirrorServer};
use crate::runtime::primary::{ChangeTracking, Mode, Primary, PrimaryConfig};
use std::net::TcpListener;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

mod config;
mod messages;
mod orders;
mod status;

pub use config::{MountEntry, RoleRecord, SegmentConfig};
pub use messages::*;

/// Client connections served at once, once they made a request (before it,
/// they are held to the admission gate's small budget: [`crate::io::admission`]).
pub const MAX_CLIENTS: usize = 256;
/// Most entries in a handed-over change set.
pub const MAX_WIRE_ENTRIES: usize = 1 << 20;

// ---- the process -------------------------------------------------------------

enum Role {
    Idle,
    Starting,
    Mirror { server: Arc<MirrorServer>, stop: Arc<Stop>, thread: JoinHandle<()> },
    Primary(Arc<Primary>),
    Stopped(String),
}

pub(crate) struct Shared {
    pub(crate) cfg: SegmentConfig,
    key: ClusterKey,
    pub(crate) filespaces: Vec<Filespace>,
    disk: Arc<dyn Disk>,
    changelog: Arc<ChangeLog>,
    /// Where it listens as a mirror; rebound by `Rebind` (addmirrors may
    /// give a primary a new replication port).
    data_listener: Mutex<TcpListener>,
    role: Mutex<Role>,
    stop: Arc<Stop>,
    /// Serializes orders: one role change at a time.
    orders: Mutex<()>,
    /// Held while an order that needs an epoch is checked and carried
    /// out: no order of an older epoch runs after one of a newer.
    fence: Mutex<()>,
    /// The highest arbiter epoch obeyed, as recorded in `roles.json`
    /// (changed only under `fence`; read by the status without it).
    epoch: std::sync::atomic::AtomicU64,
    resync: Mutex<ResyncState>,
    /// Signalled when a resync thread ends.
    resync_ended: std::sync::Condvar,
    verify: Mutex<VerifyJob>,
    /// Why the segment faulted, if it did ([`SegmentHandle::fault`]): every
    /// storage call fails with it, and the segment stops.
    fault: Mutex<Option<String>>,
    /// What its mirror role's state file says (a disk fault, a session cut
    /// by the host going down): read at start, then kept as the mirror
    /// role sees it, for the probes and orders of a segment that is not
    /// (or no longer) a mirror, so a restarted one still says its files
    /// are in doubt (`status::MirrorRecord`).
    mirror_record: Mutex<status::MirrorRecord>,
    /// How many times this process took the primary role (changed under
    /// the role lock): while it stays the same, nothing but this primary's
    /// own changes touched the filespaces, so a mount in this process may
    /// keep the kernel's cached pages of its files across opens.
    primary_terms: std::sync::atomic::AtomicU64,
}

/// The running (or last) verification, and the last report.
#[derive(Default)]
struct VerifyJob {
    id: u64,
    repair: bool,
    running: bool,
    progress: Option<Arc<crate::verify::online::VerifyProgress>>,
    report: Option<crate::verify::online::VerifyReport>,
    error: Option<String>,
}

#[derive(Default)]
struct ResyncState {
    running: bool,
    /// The running resync is a full one.
    full: bool,
    progress: Option<Arc<crate::runtime::resync::Progress>>,
    error: Option<String>,
}

pub struct Segment {
    shared: Arc<Shared>,
    control: TcpListener,
    clients: UnixListener,
    metrics: Option<TcpListener>,
}

/// An order refused, said in the log and answered with the reason.
fn refused(why: String) -> SegmentResponse {
    tracing::warn!(reason = %why, "order refused");
    SegmentResponse::Refused(why)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Segment {
    /// Open the filespaces and the change-log, bind every endpoint. Nothing
    /// is written to the filespaces until the arbiter gives a role.
    pub fn open(cfg: SegmentConfig) -> Result<Segment> {
        cfg.check()?;
        let key = ClusterKey::from_file(&cfg.key_file).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let filespaces = cfg.filespaces()?;
        let roots: Vec<_> = filespaces.iter().map(|f| f.root.clone()).collect();
        let disk = crate::io::disk::open_local_with(&roots, cfg.prefer_uring, cfg.direct)?;
        crate::io::disk::check_largest_file(&roots)?;
        // Named durably before anything is written in it: a power cut must
        // not take the change-log (and the activity log in it) away.
        crate::durable::files::create_dir_all(&cfg.state_dir)?;
        let state_disk: Arc<dyn Disk> = Arc::new(StdDisk::open(std::slice::from_ref(&cfg.state_dir))?);
        let log_path = FsPath::new(0, RelPath::new("changelog")?);
        let changelog = if state_disk.exists(&log_path)? {
            let (log, rec) = ChangeLog::open(state_disk, log_path)?;
            let set = log.change_set();
            tracing::warn!(
                groups = rec.groups,
                torn = rec.torn_bytes,
                blocks = set.distinct_blocks(),
                extents = set.extents.values().map(|e| e.len()).sum::<usize>(),
                paths = set.touched.len(),
                "change-log recovered: everything in it counts as changed"
            );
            log
        } else {
            ChangeLog::create(state_disk, log_path, cfg.block_size)?
        };
        let control = TcpListener::bind(&cfg.control_listen)
            .map_err(|e| Error::io(format!("binding {}", cfg.control_listen), e))?;
        let data_listener =
            TcpListener::bind(&cfg.data_listen).map_err(|e| Error::io(format!("binding {}", cfg.data_listen), e))?;
        let metrics = match &cfg.metrics_listen {
            Some(a) if cfg!(feature = "metrics-http") => {
                Some(TcpListener::bind(a).map_err(|e| Error::io(format!("binding metrics_listen {a}"), e))?)
            }
            Some(a) => {
                return Err(Error::InvalidArgument(format!(
                    "metrics_listen is {a}, but this build of the library serves no /metrics (built without the feature metrics-http); remove the setting or rebuild with it"
                )))
            }
            None => None,
        };
        let epoch = RoleRecord::load(&cfg.state_dir)?.epoch;
        // A mirror session this segment's host went down in the middle of:
        // it must say so until a new session streams (a state file that
        // cannot be read stops the mirror role when it starts, with why).
        // A record that cannot be read may have held a fault: in doubt too.
        let (cut, mirror_fault) = match crate::runtime::mirror::MirrorState::load(&cfg.state_dir) {
            Ok(state) => (crate::runtime::mirror::lost_power_since(state.streaming_boot.as_deref()), state.fault),
            Err(e) => (false, Some(format!("its mirror state file cannot be read: {e}"))),
        };
        if let Some(fault) = &mirror_fault {
            tracing::warn!(
                %fault,
                "this segment faulted as mirror: its files are in doubt until a full resync rebuilds them \
                 (filerep recover -F)"
            );
        }
        if cut {
            tracing::warn!(
                "this segment's host went down while its mirror role streamed: it will not be promoted \
                 until its primary streams to it again (filerep recover)"
            );
        }
        let _ = std::fs::remove_file(&cfg.socket);
        let clients = UnixListener::bind(&cfg.socket)
            .map_err(|e| Error::io(format!("binding socket {}", cfg.socket.display()), e))?;
        let shared = Arc::new(Shared {
            cfg,
            key,
            filespaces,
            disk,
            changelog: Arc::new(changelog),
            data_listener: Mutex::new(data_listener),
            role: Mutex::new(Role::Idle),
            stop: Stop::new().map_err(|e| Error::io("making the stop signal", e))?,
            orders: Mutex::new(()),
            fence: Mutex::new(()),
            epoch: std::sync::atomic::AtomicU64::new(epoch),
            resync: Mutex::new(ResyncState::default()),
            resync_ended: std::sync::Condvar::new(),
            verify: Mutex::new(VerifyJob::default()),
            fault: Mutex::new(None),
            mirror_record: Mutex::new(status::MirrorRecord { fault: mirror_fault, lost_power_streaming: cut }),
            primary_terms: std::sync::atomic::AtomicU64::new(0),
        });
        Ok(Segment { shared, control, clients, metrics })
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn control_addr(&self) -> Result<std::net::SocketAddr> {
        self.control.local_addr().map_err(|e| Error::io("control address", e))
    }

    /// Stops [`Segment::run`] (wire it to signals with [`Stop::on_signals`]).
    pub fn stop_signal(&self) -> Arc<Stop> {
        self.shared.stop.clone()
    }

    /// Serve until stopped (an order, or the flag).
    pub fn run(self) -> Result<()> {
        self.start()?.wait();
        Ok(())
    }

    /// Serve from threads of this process: the control server, the client
    /// socket and `/metrics`. Nothing here needs the `filerep` command.
    pub fn start(self) -> Result<SegmentHandle> {
        let Segment { shared, control, clients, metrics } = self;
        let control_addr = control.local_addr().map_err(|e| Error::io("control address", e))?;
        let c_shared = shared.clone();
        let timeout = Duration::from_secs(10);
        let control_thread = std::thread::Builder::new()
            .name("filerep-control".into())
            .spawn({
                let (key, stop) = (shared.key.clone(), shared.stop.clone());
                let limits = shared.cfg.limits(control::MAX_CONNECTIONS);
                move || {
                    control::serve(control, key, stop, (limits, control::MAX_BODY), timeout, move |r| c_shared.order(r))
                }
            })
            .map_err(|e| Error::io("spawning the control thread", e))?;
        let metrics_thread = match spawn_metrics(metrics, &shared) {
            Ok(t) => t,
            Err(e) => {
                shared.stop.stop();
                let _ = control_thread.join();
                return Err(e);
            }
        };
        let s = shared.clone();
        let main = std::thread::Builder::new().name("filerep-segment".into()).spawn(move || {
            let span = tracing::info_span!("segment", dbid = s.cfg.dbid, content = s.cfg.content);
            let _e = span.enter();
            tracing::info!("segment idle: waiting for the arbiter");
            s.serve_clients(&clients);
            let _ = control_thread.join();
            if let Some(t) = metrics_thread {
                let _ = t.join();
            }
            // After an order in progress, and no order after this (each
            // checks the flag under the same lock).
            let _order = lock(&s.orders);
            let role = std::mem::replace(&mut *lock(&s.role), Role::Stopped("stopped".into()));
            s.end_role(role);
            let _ = std::fs::remove_file(&s.cfg.socket);
            tracing::info!("segment stopped");
        });
        match main {
            Ok(t) => Ok(SegmentHandle { shared, control_addr, main: Mutex::new(Some(t)) }),
            Err(e) => {
                shared.stop.stop();
                Err(Error::io("spawning the segment thread", e))
            }
        }
    }
}

/// A segment running in this process ([`Segment::start`]). Dropping it
/// leaves the segment running; [`SegmentHandle::close`] stops it in order.
pub struct SegmentHandle {
    shared: Arc<Shared>,
    control_addr: std::net::SocketAddr,
    main: Mutex<Option<JoinHandle<()>>>,
}

/// Where a segment stands: its role, the pair's mode as its primary sees
/// it, and the generation of that role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub dbid: u32,
    pub content: u32,
    pub acting: Acting,
    /// As in [`SegmentStatus::mode`]: `s`, `r`, `c`, `d`, `f`, or `-`.
    pub mode: char,
    pub generation: u64,
    /// Why it faulted, if it did.
    pub fault: Option<String>,
}

impl SegmentHandle {
    /// The storage API, routed to the acting primary in this process.
    pub fn storage(&self) -> Storage {
        Storage::new(self.shared.clone())
    }

    /// Role, mode and generation (cheap: no statistics). A segment told to
    /// stop is `Stopped` at once, before its role has ended.
    pub fn info(&self) -> SegmentInfo {
        let v = self.shared.role_view();
        SegmentInfo {
            dbid: self.shared.cfg.dbid,
            content: self.shared.cfg.content,
            acting: if self.stopping() { Acting::Stopped } else { v.acting },
            mode: v.mode,
            generation: v.generation,
            fault: lock(&self.shared.fault).clone(),
        }
    }

    /// The full status, as the arbiter's probe sees it.
    pub fn status(&self) -> SegmentStatus {
        self.shared.status()
    }

    pub fn control_addr(&self) -> std::net::SocketAddr {
        self.control_addr
    }

    /// The replication address, where it takes a primary's stream as the mirror.
    pub fn data_addr(&self) -> Result<std::net::SocketAddr> {
        lock(&self.shared.data_listener).local_addr().map_err(|e| Error::io("replication address", e))
    }

    /// Whether the segment was stopped (an order, [`Self::close`], a fault).
    pub fn stopping(&self) -> bool {
        self.shared.stopping()
    }

    /// Fault the segment: every storage call fails with `Faulted(reason)`
    /// from now on, and it stops serving (its role ends, the arbiter stops
    /// hearing from it and decides, as for a crash). The first reason stays.
    pub fn fault(&self, reason: &str) {
        {
            let mut f = lock(&self.shared.fault);
            if f.is_none() {
                tracing::error!(dbid = self.shared.cfg.dbid, reason, "segment faulted: stopping");
                *f = Some(reason.to_string());
            }
        }
        self.shared.stop.stop();
    }

    /// Wait until the segment has stopped (an order, the stop signal, a
    /// fault) and its role has ended.
    pub fn wait(&self) {
        // Held through the join: a second caller returns once it is over.
        let mut main = lock(&self.main);
        if let Some(t) = main.take() {
            if t.join().is_err() {
                tracing::error!("the segment thread panicked");
            }
        }
    }

    /// Stop serving and end the role in order (a primary's mirror confirms
    /// everything durable first), then return. Calls made meanwhile fail
    /// with `NotPrimary`.
    pub fn close(&self) {
        self.shared.stop.stop();
        self.wait();
    }
}

impl Shared {
    pub(crate) fn stopping(&self) -> bool {
        self.stop.is_stopped()
    }

    /// Serve local clients until stopped, one thread each, admitted by the
    /// gate.
    fn serve_clients(self: &Arc<Self>, clients: &UnixListener) {
        let gate = Gate::new("client socket", self.cfg.limits(MAX_CLIENTS));
        let served = crate::io::admission::serve(clients, &gate, &self.stop, |stream, ticket| {
            let s = self.clone();
            let spawned =
                std::thread::Builder::new().name("filerep-client".into()).spawn(move || s.serve_client(stream, ticket));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot spawn a client thread");
            }
        });
        if let Err(e) = served {
            tracing::error!(error = %e, "client socket failed: stopping");
            self.stop.stop();
        }
    }

    /// End a role: a mirror's sessions finish (what they applied is made
    /// durable) before anything else runs; a primary stops taking calls.
    fn end_role(&self, role: Role) {
        match role {
            Role::Mirror { server, stop, thread } => {
                stop.stop();
                let _ = thread.join();
                // As its last session left it (its end syncs, which may fault).
                self.note_mirror(&server);
                tracing::info!("mirror stopped");
            }
            Role::Primary(p) => {
                if let Err(e) = p.shutdown(Duration::from_secs(5)) {
                    tracing::warn!(error = %e, "primary shut down uncleanly");
                }
            }
            Role::Idle | Role::Starting | Role::Stopped(_) => {}
        }
    }

    fn remote_arbiter(&self) -> RemoteArbiter {
        RemoteArbiter {
            addr: self.cfg.arbiter.clone(),
            key: self.key.clone(),
            dbid: self.cfg.dbid,
            timeout: Duration::from_millis(self.cfg.decision_timeout_ms),
        }
    }

    /// A replication connection to `addr`.
    fn connect(&self, addr: &str) -> Result<crate::io::net::Conn> {
        let target = std::net::ToSocketAddrs::to_socket_addrs(addr)
            .map_err(|e| Error::io(format!("resolving {addr}"), e))?
            .next()
            .ok_or_else(|| Error::InvalidArgument(format!("{addr} resolves to nothing")))?;
        let s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(10))
            .map_err(|e| Error::io(format!("connecting to the mirror at {addr}"), e))?;
        crate::io::net::tcp(s).map_err(|e| Error::io("setting up the connection", e))
    }

    fn become_mirror(&self, generation: u64) -> Result<()> {
        let _order = lock(&self.orders);
        if self.stopped_for_orders() {
            return Err(Error::Rejected("the segment is stopping".into()));
        }
        let mut role = lock(&self.role);
        if let Role::Mirror { server, .. } = &*role {
            if server.generation() >= generation {
                return Ok(());
            }
        }
        if matches!(&*role, Role::Starting) {
            return Err(Error::Rejected("already carrying out an order".into()));
        }
        let old = std::mem::replace(&mut *role, Role::Starting);
        drop(role);
        self.end_role(old);
        let mcfg = MirrorConfig {
            cluster_id: self.cfg.cluster_id,
            content_id: self.cfg.content,
            block_size: self.cfg.block_size,
            filespaces: self.filespaces.clone(),
            key: self.key.clone(),
            generation,
            tuning: self.cfg.tuning(),
            prefer_uring: self.cfg.prefer_uring,
            direct: self.cfg.direct,
            state_dir: Some(self.cfg.state_dir.clone()),
        };
        let result = (|| {
            RoleRecord::note(&self.cfg.state_dir, None, Some(generation))?;
            // Files an earlier fault as primary left in doubt are made
            // durable as they read before a resync compares them.
            self.settle_in_doubt()?;
            let server = Arc::new(MirrorServer::with_disk(mcfg, self.disk.clone())?);
            let listener = lock(&self.data_listener).try_clone().map_err(|e| Error::io("replication listener", e))?;
            let stop = Stop::new().map_err(|e| Error::io("making the stop signal", e))?;
            let (s, st) = (server.clone(), stop.clone());
            let thread = std::thread::Builder::new()
                .name("filerep-mirror".into())
                .spawn(move || {
                    if let Err(e) = s.serve(&listener, &st) {
                        tracing::error!(error = %e, "mirror serving failed");
                    }
                })
                .map_err(|e| Error::io("spawning the mirror thread", e))?;
            Ok(Role::Mirror { server, stop, thread })
        })();
        match result {
            Ok(r) => {
                tracing::warn!(generation, "role: mirror");
                *lock(&self.role) = r;
                Ok(())
            }
            Err(e) => {
                *lock(&self.role) = Role::Stopped(format!("cannot serve as mirror: {e}"));
                Err(e)
            }
        }
    }

    fn become_primary(self: Arc<Self>, generation: u64, mirror: Option<String>) {
        let _order = lock(&self.orders);
        if self.stopped_for_orders() {
            return;
        }
        let span = tracing::info_span!("become_primary", generation);
        let _e = span.enter();
        let result = self.start_primary(generation, mirror);
        let mut role = lock(&self.role);
        match result {
            Ok(p) => {
                tracing::warn!(generation, mode = ?p.mode(), "role: primary");
                self.primary_terms.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                *role = Role::Primary(Arc::new(p));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot serve as primary");
                *role = Role::Stopped(format!("cannot serve as primary: {e}"));
            }
        }
    }

    /// Rewrite and sync what an earlier fault as primary left in doubt
    /// (docs/architecture.md 6.1), before this segment takes a role or
    /// hands its change set over.
    fn settle_in_doubt(&self) -> Result<()> {
        crate::exec::doubt::settle_in_doubt(self.disk.as_ref(), &self.changelog, crate::core::planted_in_process())
            .map(drop)
    }

    fn start_primary(&self, generation: u64, mirror: Option<String>) -> Result<Primary> {
        RoleRecord::note(&self.cfg.state_dir, Some(generation), None)?;
        // Before the mirror's handshake, not after it (`Primary::launch`
        // settles too, for the library's other users, but after the
        // handshake): rewriting can outlast the mirror's silence timeout.
        self.settle_in_doubt()?;
        let decision_timeout = Duration::from_millis(self.cfg.decision_timeout_ms);
        let arbiter = Arc::new(self.remote_arbiter());
        let cfg = PrimaryConfig {
            identity: PairIdentity {
                cluster_id: self.cfg.cluster_id,
                content_id: self.cfg.content,
                block_size: self.cfg.block_size,
                generation,
            },
            filespaces: self.filespaces.clone(),
            key: self.key.clone(),
            sync_level: SyncLevel::parse(&self.cfg.sync_level)?,
            tuning: self.cfg.tuning(),
            prefer_uring: self.cfg.prefer_uring,
            direct: self.cfg.direct,
            change_tracking: Some(ChangeTracking {
                changelog: self.changelog.clone(),
                arbiter: arbiter.clone(),
                decision_timeout,
            }),
        };
        let Some(addr) = mirror else {
            return Primary::start_alone(cfg, self.disk.clone(), "the arbiter marked the mirror down");
        };
        let connected =
            self.connect(&addr).and_then(|conn| Primary::start_with_disk(cfg.clone(), self.disk.clone(), conn, &addr));
        match connected {
            Ok(p) => Ok(p),
            Err(e) => {
                // Rule 3: never on alone without the arbiter's word.
                let why = format!("mirror unreachable at start: {e}");
                match arbiter.mirror_lost(self.cfg.content, generation, &why) {
                    Ok(Decision::MirrorDown) => Primary::start_alone(cfg, self.disk.clone(), &why),
                    Ok(Decision::Demoted) => Err(Error::Rejected("the arbiter says this segment was demoted".into())),
                    Err(a) => Err(Error::MirrorLost(format!("{why}; {a}"))),
                }
            }
        }
    }

    /// Whether the segment is stopping; if so its role is left stopped (an
    /// order that arrived as it stopped may have set it starting). Called
    /// with the orders lock held.
    fn stopped_for_orders(&self) -> bool {
        if !self.stopping() {
            return false;
        }
        let mut role = lock(&self.role);
        if matches!(&*role, Role::Starting) {
            *role = Role::Stopped("stopped".into());
        }
        true
    }

    /// This process's current term as the acting primary (see
    /// `primary_terms`), or None when it is not the acting primary.
    pub(crate) fn primary_term(&self) -> Option<u64> {
        if lock(&self.fault).is_some() {
            return None;
        }
        let role = lock(&self.role);
        match &*role {
            Role::Primary(_) => Some(self.primary_terms.load(std::sync::atomic::Ordering::SeqCst)),
            _ => None,
        }
    }

    /// The acting primary this segment hosts, for one storage call.
    pub(crate) fn acting_primary(&self) -> Result<Arc<Primary>> {
        let fault = lock(&self.fault).clone();
        if let Some(why) = fault {
            return Err(Error::Faulted(why));
        }
        let dbid = self.cfg.dbid;
        match &*lock(&self.role) {
            Role::Primary(p) => Ok(p.clone()),
            Role::Mirror { server, .. } => Err(Error::NotPrimary(format!(
                "segment {dbid} is the mirror (generation {}): retry on the primary",
                server.generation()
            ))),
            Role::Idle | Role::Starting => {
                Err(Error::NotPrimary(format!("segment {dbid} has no role yet: retry shortly")))
            }
            Role::Stopped(w) => Err(Error::NotPrimary(format!("segment {dbid} is not serving: {w}"))),
        }
    }

    /// Serve one local client. Until its first request arrives whole, the
    /// connection is held to the gate's unauthenticated budget and deadline
    /// (an idle connection is closed; [`client::Client`] reconnects once
    /// for a first call on a connection closed unused).
    fn serve_client(self: &Arc<Self>, mut stream: UnixStream, mut ticket: Ticket) {
        let storage = Storage::new(self.clone());
        let left = ticket.deadline().saturating_duration_since(std::time::Instant::now());
        if stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).is_err() {
            return;
        }
        loop {
            let body = match client::read_message(&mut stream) {
                Ok(Some(b)) => b,
                Ok(None) => return,
                Err(e) => {
                    match ticket.closed() {
                        Some(why) => tracing::debug!(reason = %why, "client connection closed before a request"),
                        None if crate::io::net::is_timeout(&e) => {
                            tracing::debug!("client connection closed: no request within the deadline")
                        }
                        None => tracing::warn!(error = %e, "client connection closed"),
                    }
                    return;
                }
            };
            let decoded = Request::decode(&body);
            if decoded.is_ok() {
                if let Err(e) = ticket.authenticate() {
                    let refusal = client::response(Err((ErrorClass::Unavailable, format!("segment busy: {e}"))));
                    let _ = std::io::Write::write_all(&mut stream, &refusal);
                    return;
                }
                // A known client may stay idle between calls.
                if stream.set_read_timeout(None).is_err() {
                    return;
                }
            }
            let result = match decoded {
                Ok(req) => {
                    // A caller with file system semantics (the separate mount).
                    let r = match req.flags & client::FLAG_QUEUED {
                        0 => storage.request(&req),
                        _ => storage.queued().request(&req),
                    };
                    r.map_err(|e| (ErrorClass::of(&e), e.to_string()))
                }
                Err(e) => Err((ErrorClass::Invalid, format!("malformed request: {e}"))),
            };
            if std::io::Write::write_all(&mut stream, &client::response(result)).is_err() {
                return;
            }
        }
    }
}

/// The `/metrics` server's thread, when `metrics_listen` is set.
#[cfg(feature = "metrics-http")]
fn spawn_metrics(listener: Option<TcpListener>, shared: &Arc<Shared>) -> Result<Option<std::thread::JoinHandle<()>>> {
    let Some(listener) = listener else { return Ok(None) };
    let (s, stop) = (shared.clone(), shared.stop.clone());
    tracing::info!(addr = ?listener.local_addr().ok(), "serving /metrics");
    let t = std::thread::Builder::new()
        .name("filerep-metrics".into())
        .spawn(move || crate::cluster::metrics::serve(listener, stop.flag(), || s.status()))
        .map_err(|e| Error::io("spawning the metrics thread", e))?;
    Ok(Some(t))
}

/// Without the HTTP server `Segment::open` refuses `metrics_listen`.
#[cfg(not(feature = "metrics-http"))]
fn spawn_metrics(_listener: Option<TcpListener>, _shared: &Arc<Shared>) -> Result<Option<std::thread::JoinHandle<()>>> {
    Ok(None)
}

#[cfg(test)]
mod tests;
