//! The emperor's state machine: one task owns every vassal, and everything
//! that happens (a file changed, an init exited, a restart is due, a stop
//! finished, a control request) arrives as an [`Event`] on one channel.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::backoff::Throttle;
use model::catalog::{Catalog, Verdict};
use model::config::Kind;
use model::journal::Journaled;
use model::reconcile::{plan, Action};
use model::record::{self, VassalRecord, SCHEMA_VERSION};
use model::uids::UidTable;
use model::{Layout, Name, VassalFile};
use serde::Serialize;
use sys::cgroup::CgroupTree;
use sys::Pidfd;
use tokio::sync::{mpsc, oneshot};

use crate::clock::now;
use crate::control::{Request, Response};
use crate::lifecycle::{self, needs_restart, After, Effect, Life, State};
use crate::spawner::{cgroup_limits, group_limits, SpawnError, Spawner};
use crate::spec::{self, Input};

mod added;
mod adopt;
mod archive;
mod metrics;
mod network;
mod outputs;
mod requests;
mod resellers;
mod status;
pub use status::{Row as StatusRow, Usage as StatusUsage};
mod stop;
mod storage;

use added::Read;
use stop::off_loop;

/// How many network namespaces the emperor keeps ready for starts.
const NETNS_POOL: usize = 4;
/// Vassals started per turn of the loop (a start takes a few milliseconds).
const START_BATCH: usize = 32;

/// Settings of a running emperor.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where everything lives.
    pub layout: Layout,
    /// Restart throttling.
    pub throttle: Throttle,
    /// How long an init has to exit after SIGTERM before everything in its cgroup is killed.
    pub stop_grace: Duration,
    /// How often every file is read and judged again without an event.
    pub rescan: Duration,
    /// The vassal binary.
    pub vassal_exe: PathBuf,
    /// The site tree is a systemd scope (`layout.cgroup_root`): see `scope`.
    pub systemd_scope: bool,
    /// The sites' network (`None`: each site has only its loopback).
    pub network: Option<crate::network::Settings>,
    /// Refuse to run when `storage` limits cannot be enforced.
    pub require_quotas: bool,
    /// Where lxcfs is mounted (`None`: containers see the host's `/proc`
    /// figures).
    pub lxcfs: Option<PathBuf>,
    /// A TCP address to serve `/metrics` on, besides the admin's socket.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The API over TLS for remote panels, with bearer tokens.
    pub api_listen: Option<ApiListen>,
    /// Cluster mode: the admin directory is a copy of the files etcd
    /// places on this host (`None`: the directory is the admin's).
    pub cluster: Option<crate::cluster::Settings>,
}

/// `--api-listen`: where, and with what certificate.
#[derive(Debug, Clone)]
pub struct ApiListen {
    /// The TCP address.
    pub addr: std::net::SocketAddr,
    /// The certificate chain, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
}

/// Something that happened.
#[derive(Debug)]
pub enum Event {
    /// A vassal file (or directory) changed.
    FilesChanged,
    /// The periodic rescan.
    Rescan,
    /// An init exited.
    Exited {
        /// The vassal.
        name: Name,
        /// Which start of it.
        gen: u64,
    },
    /// A throttled restart is due.
    RestartDue {
        /// The vassal.
        name: Name,
        /// Which start of it.
        gen: u64,
    },
    /// A stop finished.
    StopDone {
        /// The vassal.
        name: Name,
    },
    /// A control request.
    Control(Request, oneshot::Sender<Response>),
    /// A freeze or thaw asked for by a control request finished.
    Froze {
        /// The vassal.
        name: Name,
        /// Frozen (suspend) or thawed (resume).
        frozen: bool,
        /// What the kernel said.
        result: Result<(), String>,
        /// Where the answer goes.
        reply: oneshot::Sender<Response>,
    },
    /// Uids the cluster gave (cluster mode): taken into the host's table
    /// before the files that need them are copied here.
    /// With the logins the cluster refused a uid, and why.
    ClusterUids(
        Vec<(Name, u32)>,
        Vec<(Name, String)>,
        oneshot::Sender<Result<(), String>>,
    ),
    /// A site moved to another host (cluster mode): when its file goes,
    /// it is killed frozen, never thawed to run on after its last copy.
    MovedAway(Name),
    /// Make the home of a site moving here (cluster mode), for the copy:
    /// its path, or why not.
    PrepareHome(Name, String, oneshot::Sender<Result<PathBuf, String>>),
    /// A home from before quotas was put into its project.
    Projected {
        /// The vassal.
        name: Name,
        /// Its uid (the project).
        uid: u32,
        /// What the walk did, or why it failed.
        result: Result<sys::quota::Tree, String>,
    },
}

/// What the API's event streams tell.
#[derive(Debug, Clone)]
pub enum Told {
    /// A vassal's state changed (`event: state`).
    State(Change),
    /// A message was left among a vassal's notifications through the
    /// emperor (`event: notification`). Alarms a site's own vassal raises
    /// inside it are read with `GET /v1/vassals/NAME/notifications`.
    Notification(Note),
}

impl Told {
    /// The vassal it concerns, and its group (a group: itself).
    pub fn whose(&self) -> (&str, Option<&str>) {
        match self {
            Told::State(c) => (&c.vassal, c.group.as_deref()),
            Told::Notification(n) => (&n.vassal, n.group.as_deref()),
        }
    }

    /// Its Server-Sent Event: the event's name and its JSON data.
    pub fn event(&self) -> (&'static str, String) {
        match self {
            Told::State(c) => ("state", serde_json::to_string(c).unwrap_or_default()),
            Told::Notification(n) => ("notification", serde_json::to_string(n).unwrap_or_default()),
        }
    }
}

/// A message left for a vassal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Note {
    /// The vassal.
    pub vassal: String,
    /// Its group (a group: itself).
    pub group: Option<String>,
    /// `admin` or `reseller`.
    pub kind: String,
    /// The message.
    pub message: String,
}

/// A vassal's state changed (the API's event streams).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The vassal.
    pub vassal: String,
    /// Its group (a group: itself), for scoped streams.
    pub group: Option<String>,
    /// `starting`, `running`, `suspended`, `stopped`, `failed`, `rejected`,
    /// or `removed`.
    pub state: String,
    /// Why, when it says.
    pub reason: Option<String>,
}

/// A running init, held by its pidfd (its exit comes back as an event: see
/// [`adopt::InitWatch`]).
struct Init {
    pidfd: Arc<Pidfd>,
}

struct Vassal {
    file: VassalFile,
    dynamic: bool,
    uid: Option<u32>,
    /// Where it is in its life (the pure part: see `lifecycle`).
    life: Life,
    init: Option<Init>,
    /// A site moving to another group: its home as it was, and the qgroup
    /// it counted in (moved before its next start).
    moving: Option<(PathBuf, Option<u64>)>,
}

impl Vassal {
    fn new(file: VassalFile, dynamic: bool) -> Vassal {
        Vassal {
            file,
            dynamic,
            uid: None,
            life: Life::default(),
            init: None,
            moving: None,
        }
    }

    fn group(&self) -> Option<&Name> {
        match &self.file {
            VassalFile::Site(s) => s.group.as_ref(),
            VassalFile::Group(_) => None,
        }
    }
}

/// A start under way: the child is cloned and setting its container up.
struct Begun {
    uid: u32,
    t0: Instant,
    pending: Result<sys::launch::Pending, SpawnError>,
}

/// The emperor.
pub struct Manager {
    cfg: Config,
    tree: Arc<dyn CgroupTree>,
    spawner: Spawner,
    /// Sites moved to another host: killed frozen when they stop here.
    moved_away: BTreeSet<Name>,
    uids: UidTable,
    uids_unsaved: bool,
    /// Tenants were added since the NSS table was written.
    nss_stale: bool,
    net: Option<Arc<crate::network::HostNet>>,
    addresses: model::network::AddressTable,
    /// The hosts table as last written.
    last_hosts: Vec<u8>,
    /// A vassal came, went, changed its file or got its address since the
    /// mail allowlist, the egress lists and the hosts table were made.
    net_stale: bool,
    /// What enforces `storage` under the home root.
    storage: crate::storage::Backend,
    /// Each vassal's disk usage as last published to it.
    last_usage: BTreeMap<Name, model::usage::Disk>,
    /// Homes put into their project (or tried) in this run.
    projecting: BTreeSet<Name>,
    /// Each group's drop-directory refusals, as of the last scan.
    refused: BTreeMap<Name, Vec<model::usage::Refused>>,
    /// What each group's container was last given of its sites.
    last_sites: BTreeMap<Name, Vec<u8>>,
    /// The files being written (from the watcher), not judged until closed.
    settling: Option<crate::watch::Settling>,
    /// The files the watcher named since the last scan (see [`crate::watch::Named`]).
    named: Option<crate::watch::Named>,
    /// The next scan reads every file (the periodic rescan).
    scan_all: bool,
    /// The groups whose drop directories the last scan read: a scan of the
    /// named files only is for the same directories.
    groups_read: BTreeSet<Name>,
    /// The last scan's entries, by path (what a file being written stays).
    last_entries: crate::scan::Previous,
    /// The stamps of the files of the last scan (see [`crate::scan::Stamps`]).
    last_stamps: crate::scan::Stamps,
    /// How long starts took (metrics).
    start_latency: prometheus_client::metrics::histogram::Histogram,
    /// What the cluster agent has done (metrics).
    cluster_stats: Arc<crate::cluster::Stats>,
    /// The admin's writes to the cluster, for its agent (cluster mode).
    cluster_writes: Option<mpsc::Sender<crate::cluster::Ask>>,
    /// The vassals this engine has, for the cluster's agent (cluster mode).
    cluster_vassals: Option<tokio::sync::watch::Sender<BTreeMap<Name, crate::cluster::Held>>>,
    /// Logins the cluster gave no uid, and why (cluster mode).
    cluster_refused: BTreeMap<Name, String>,
    /// Who calls on the containers' shared API socket, by uid.
    scopes: crate::api::Scopes,
    /// Changes of state, for the API's event streams.
    events: tokio::sync::broadcast::Sender<Told>,
    /// Each vassal's state as last told on `events`.
    told: BTreeMap<Name, Change>,
    /// The digest of what `told` was built from (see `changes_digest`).
    told_digest: Option<u64>,
    vassals: BTreeMap<Name, Vassal>,
    rejected: BTreeMap<Name, String>,
    /// Vassals to start, taken [`START_BATCH`] at a time between events.
    to_start: std::collections::VecDeque<Name>,
    /// Files of the vassal directories that are not vassals (logged once per change).
    ignored: Vec<crate::scan::Ignored>,
    shadowed: Vec<(Name, PathBuf, String)>,
    /// The ssh keys installed, by user (`None` until the first reconcile has
    /// read what the directory holds).
    ssh_keys: Option<BTreeMap<Name, String>>,
    tx: mpsc::UnboundedSender<Event>,
    shutdown_reply: Option<oneshot::Sender<Response>>,
    suspended_groups: BTreeSet<Name>,
    /// The host's secret the sites' keys are derived from.
    site_keys: crate::keys::SiteKeys,
    /// What the router was last told (or was to be told: see `dominion_unwritten`).
    dominion: model::subscription::Dominion,
    /// The same as JSON, each site's entry serialized when it changed.
    dominion_text: model::subscription::DominionText,
    /// Sites whose file a scan acted on since the dominion was published:
    /// their entries are built again.
    dominion_dirty: BTreeSet<Name>,
    /// The last write of the dominion failed: the next publish retries.
    dominion_unwritten: bool,
    /// The directories are to be read again (see [`Manager::take_rescan`]).
    rescan: bool,
    /// Counts what happened that a scan's judgement may depend on: every
    /// event but the periodic rescan, every lifecycle decision, every scan
    /// that acted.
    moved: u64,
    /// What the last full judgement saw, if it found nothing to do: `moved`
    /// and the host's users then. A rescan that reads the same files with
    /// both unchanged would find nothing to do again, and stops there.
    quiet: Option<(u64, BTreeSet<String>)>,
    /// How the scans' files were judged (metrics).
    judged: Judged,
    /// What the last judgement's files claim, and the host's users it saw:
    /// a file under a new name is decided against them (see
    /// [`Manager::judge_added`]). `None` after anything a judgement depends
    /// on changed otherwise.
    claimed: Option<(model::catalog::Claimed, BTreeSet<String>)>,
    /// The usage files of the running vassals' cgroups, kept open between
    /// calls of `status` (see [`sys::cgroup::KeptUsage`]).
    kept: Arc<std::sync::Mutex<sys::cgroup::KeptUsage>>,
    /// Every init's exit, watched by one epoll instance (made at the first
    /// init; `None` before, or if it could not be made).
    init_watch: Option<adopt::InitWatch>,
}

/// How the scans' files were judged, counted for the metrics.
#[derive(Debug, Default)]
struct Judged {
    /// Judgements of every file.
    whole: u64,
    /// Periodic rescans that needed none.
    unchanged: u64,
    /// Files under new names decided against the last judgement's claims.
    added: u64,
    /// Removed files whose claims were released alone.
    removed: u64,
}

impl Manager {
    /// A manager; `tx` is the sender of its own event channel.
    pub fn new(
        cfg: Config,
        tree: Arc<dyn CgroupTree>,
        seccomp: Vec<u8>,
        tx: mpsc::UnboundedSender<Event>,
    ) -> std::io::Result<Manager> {
        for d in [
            &cfg.layout.state_dir,
            &cfg.layout.run_dir,
            &cfg.layout.records_dir(),
            &cfg.layout.archive_dir(),
            &cfg.layout.vassals,
            &cfg.layout.home_root,
        ] {
            std::fs::create_dir_all(d)?;
        }
        let uids = UidTable::open(&cfg.layout.uid_table())?;
        let addresses = model::network::AddressTable::open(&cfg.layout.address_table())?;
        let net = match cfg.network.clone() {
            None => None,
            Some(mut settings) => {
                // The layout the table was made with: running sites' ports
                // are where it put them.
                settings.pool.per_bridge = addresses.blocks_per_bridge;
                Some(Arc::new(
                    crate::network::HostNet::setup(settings)
                        .map_err(|e| std::io::Error::other(format!("{e:#}")))?,
                ))
            }
        };
        let storage = crate::storage::Backend::detect(&cfg.layout.home_root);
        match &storage {
            crate::storage::Backend::Btrfs => {
                tracing::info!("storage limits enforced by btrfs qgroups")
            }
            crate::storage::Backend::Project(fs) => {
                tracing::info!("storage limits enforced by {fs} project quotas")
            }
            crate::storage::Backend::None(why) if cfg.require_quotas => {
                return Err(std::io::Error::other(format!(
                    "--require-quotas: storage limits cannot be enforced: {why}"
                )));
            }
            crate::storage::Backend::None(why) => {
                tracing::warn!("storage limits are not enforced: {why}")
            }
        }
        let site_keys = crate::keys::SiteKeys::open(&cfg.layout)?;
        let mut spawner = Spawner::new(tree.clone(), seccomp).with_netns_pool(NETNS_POOL);
        if let Some(n) = &net {
            spawner = spawner.with_network(n.clone());
        }
        let m = Manager {
            spawner,
            moved_away: BTreeSet::new(),
            cfg,
            tree,
            uids,
            uids_unsaved: false,
            nss_stale: false,
            net,
            addresses,
            last_hosts: Vec::new(),
            net_stale: true,
            storage,
            last_usage: BTreeMap::new(),
            projecting: BTreeSet::new(),
            refused: BTreeMap::new(),
            last_sites: BTreeMap::new(),
            settling: None,
            named: None,
            scan_all: true,
            groups_read: BTreeSet::new(),
            last_entries: Default::default(),
            last_stamps: Default::default(),
            start_latency: metrics::start_histogram(),
            cluster_stats: Default::default(),
            cluster_writes: None,
            cluster_vassals: None,
            cluster_refused: BTreeMap::new(),
            scopes: Default::default(),
            events: tokio::sync::broadcast::channel(1024).0,
            told: BTreeMap::new(),
            told_digest: None,
            vassals: BTreeMap::new(),
            rejected: BTreeMap::new(),
            to_start: Default::default(),
            ignored: Vec::new(),
            shadowed: Vec::new(),
            ssh_keys: None,
            tx,
            shutdown_reply: None,
            suspended_groups: BTreeSet::new(),
            site_keys,
            dominion: Default::default(),
            dominion_text: Default::default(),
            dominion_dirty: BTreeSet::new(),
            dominion_unwritten: true,
            rescan: false,
            moved: 0,
            quiet: None,
            judged: Judged::default(),
            claimed: None,
            kept: Default::default(),
            init_watch: None,
        };
        if let Err(e) = m.write_nss() {
            tracing::warn!(error = %e, "writing the NSS table failed");
        }
        Ok(m)
    }

    /// The drop directories to watch.
    pub fn drop_dirs(&self) -> Vec<PathBuf> {
        self.vassals
            .iter()
            .filter(|(_, v)| matches!(v.file, VassalFile::Group(_)))
            .map(|(n, _)| self.cfg.layout.drop_dir(n))
            .collect()
    }

    /// One line for systemd's status: how many vassals run (and how many
    /// are suspended), of how many.
    pub fn status_line(&self) -> String {
        let count = |state| {
            self.vassals
                .values()
                .filter(|v| v.life.state == state)
                .count()
        };
        let suspended = match count(State::Suspended) {
            0 => String::new(),
            n => format!(", {n} suspended"),
        };
        format!(
            "{} of {} vassals running{suspended}, {} refused",
            count(State::Running),
            self.vassals.len(),
            self.rejected.len()
        )
    }

    /// Whether a shutdown has finished (every vassal stopped).
    pub fn shutdown_done(&self) -> bool {
        self.shutdown_reply.is_some() && self.vassals.is_empty()
    }

    /// Finishes a shutdown: removes the emperor's cgroup subtree and answers the caller.
    pub fn finish_shutdown(&mut self) {
        let root = self.cfg.layout.cgroup_root.trim_matches('/');
        if self.cfg.systemd_scope {
            crate::scope::release(self.tree.as_ref(), root);
        } else {
            let _ = self.tree.remove(root);
        }
        if let Some(tx) = self.shutdown_reply.take() {
            let _ = tx.send(Response::ok(serde_json::json!("stopped")));
        }
    }

    /// Reads the directories and brings what runs in line with them; returns
    /// what the reading and judging took (the starts that follow not counted).
    pub fn reconcile(&mut self) -> Duration {
        if self.shutdown_reply.is_some() {
            return Duration::ZERO;
        }
        let began = now();
        self.rescan = false;
        let host = crate::scan::host_users();
        let (entries, ignored, same_files) = match self.read_dirs(&host) {
            Read::Added(fresh) => return self.judge_added(fresh, host, began),
            Read::Removed(gone) => return self.judge_removed(gone, began),
            Read::All {
                entries,
                ignored,
                same,
            } => (entries, ignored, same),
        };
        if same_files
            && ignored == self.ignored
            && self
                .quiet
                .as_ref()
                .is_some_and(|(moved, users)| *moved == self.moved && *users == host)
        {
            // The periodic rescan of a host at rest: the judgement would be
            // the last one's, which found nothing to do.
            self.judged.unchanged += 1;
            self.last_entries = entries.into_iter().map(|e| (e.path.clone(), e)).collect();
            return now().saturating_duration_since(began);
        }
        self.judged.whole += 1;
        let groups = self.group_names();
        for (path, why) in &ignored {
            if !self.ignored.iter().any(|(p, w)| p == path && w == why) {
                tracing::warn!(path = %path.display(), reason = %why, "not a vassal file");
            }
        }
        self.ignored = ignored;
        let previous: BTreeMap<Name, VassalFile> = self
            .vassals
            .iter()
            .filter(|(_, v)| v.life.stopping != Some(After::Remove))
            .map(|(n, v)| (n.clone(), v.file.clone()))
            .collect();
        // Where each file came from: a reseller is told of its own refusals.
        let dropped: BTreeMap<Name, (Name, String)> = entries
            .iter()
            .filter_map(|e| match &e.source {
                model::catalog::Source::Drop(g) => {
                    let file = e.path.file_name()?.to_string_lossy().into_owned();
                    Some((e.name.clone(), (g.clone(), file)))
                }
                model::catalog::Source::Admin => None,
            })
            .collect();
        let mut refused: BTreeMap<Name, Vec<model::usage::Refused>> = BTreeMap::new();
        let mut refuse = |g: &Name, file: String, reason: &str| {
            refused
                .entry(g.clone())
                .or_default()
                .push(model::usage::Refused {
                    file,
                    reason: reason.to_owned(),
                })
        };
        for (path, why) in &self.ignored {
            let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else {
                continue;
            };
            if let Some(g) = groups.iter().find(|g| self.cfg.layout.drop_dir(g) == dir) {
                refuse(g, file.to_string_lossy().into_owned(), why);
            }
        }
        let Catalog {
            verdicts,
            shadowed,
            claimed,
        } = Catalog::build(&entries, &previous, &|u: &str| host.contains(u));
        self.claimed = Some((claimed, host.clone()));
        self.last_entries = entries.into_iter().map(|e| (e.path.clone(), e)).collect();
        for (name, path, why) in &shadowed {
            if let Some((g, file)) = dropped.get(name) {
                if path
                    .file_name()
                    .is_some_and(|f| f.to_string_lossy() == *file)
                {
                    refuse(g, file.clone(), why);
                }
            }
        }
        for (name, verdict) in &verdicts {
            let reason = match verdict {
                Verdict::Run { reason, .. } => reason.as_deref(),
                Verdict::Reject { reason } => Some(reason.as_str()),
            };
            if let (Some((g, file)), Some(r)) = (dropped.get(name), reason) {
                refuse(g, file.clone(), r);
            }
        }
        for list in refused.values_mut() {
            list.sort();
        }
        self.refused = refused;
        self.shadowed = shadowed;
        let before = std::mem::take(&mut self.rejected);
        let mut desired = BTreeMap::new();
        for (name, verdict) in verdicts {
            match verdict {
                Verdict::Run {
                    file,
                    dynamic,
                    reason,
                } => {
                    if let Some(v) = self.vassals.get_mut(&name) {
                        v.dynamic = dynamic;
                        if v.life.reason.as_deref() != reason.as_deref() {
                            if let Some(r) = &reason {
                                tracing::warn!(vassal = %name, reason = %r, "file refused; last good version keeps running");
                            }
                        }
                        // A start failure's reason stays until the next start.
                        if reason.is_some()
                            || v.life.state == State::Running
                            || v.life.state == State::Suspended
                        {
                            v.life.reason = reason;
                        }
                    }
                    desired.insert(name, (file, dynamic));
                }
                Verdict::Reject { reason } => {
                    if before.get(&name) != Some(&reason) {
                        tracing::warn!(vassal = %name, %reason, "file rejected");
                    }
                    self.rejected.insert(name, reason);
                }
            }
        }
        let want: BTreeMap<Name, VassalFile> = desired
            .iter()
            .map(|(n, (f, _))| (n.clone(), f.clone()))
            .collect();
        self.sync_ssh_keys(&want);
        let mut actions = plan(&want, &previous, needs_restart);
        lifecycle::order(&mut actions, &want, &previous);
        let acted = !actions.is_empty();
        if acted {
            self.moved += 1;
        }
        // What the router is told comes from the files that run: only an
        // action changes one, and only its site's entry is built again.
        self.dominion_dirty.extend(actions.iter().map(|a| match a {
            Action::Stop(n) | Action::Restart(n) | Action::Update(n) | Action::Start(n) => {
                n.clone()
            }
        }));
        let users: Vec<Name> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Start(n) => Some(desired[n].0.user(n)),
                _ => None,
            })
            .collect();
        self.allocate_uids(&users);
        let mut starts = Vec::new();
        for action in actions {
            match action {
                Action::Stop(name) => self.begin_stop(&name, After::Remove),
                Action::Restart(name) => {
                    let moving = match (self.vassals.get(&name).map(|v| &v.file), &want[&name]) {
                        (Some(VassalFile::Site(old)), VassalFile::Site(new))
                            if old.group != new.group =>
                        {
                            let home = self.cfg.layout.site_home(old.group.as_ref(), &name);
                            let old = VassalFile::Site(old.clone());
                            Some((home, self.quota_group(&name, &old)))
                        }
                        _ => None,
                    };
                    if let Some(v) = self.vassals.get_mut(&name) {
                        self.net_stale = true;
                        v.file = want[&name].clone();
                        v.moving = moving.or(v.moving.take());
                    }
                    tracing::info!(vassal = %name, "configuration needs a restart");
                    self.begin_stop(&name, After::Start);
                }
                Action::Update(name) => self.update(&name, want[&name].clone()),
                Action::Start(name) => {
                    let (file, dynamic) = desired[&name].clone();
                    self.vassals
                        .insert(name.clone(), Vassal::new(file, dynamic));
                    self.net_stale = true;
                    starts.push(name);
                }
            }
        }
        self.to_start.extend(starts);
        let cost = now().saturating_duration_since(began);
        self.start_some();
        self.quiet = (!acted).then_some((self.moved, host));
        cost
    }

    /// The groups that run: their drop directories are read.
    fn group_names(&self) -> BTreeSet<Name> {
        self.vassals
            .iter()
            .filter(|(_, v)| matches!(v.file, VassalFile::Group(_)))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Reads the vassal directories for a reconcile: the entries found and
    /// the files that are not vassals. Only the files the watcher named are
    /// read again when it named every change (and the periodic rescan did
    /// not ask for all); otherwise every file is, those whose stamps did not
    /// change excepted. New files that can be judged alone are read without
    /// a walk of every vassal: on a host of thousands, that walk alone took
    /// milliseconds after a quiet second, its memory gone cold.
    fn read_dirs(&mut self, host: &BTreeSet<String>) -> Read {
        let mut ignored = Vec::new();
        let settling = self.settling.clone();
        let mut previous = std::mem::take(&mut self.last_entries);
        let mut stamps = std::mem::take(&mut self.last_stamps);
        let unstamped = crate::scan::Stamps::new();
        let mut writes = crate::scan::Writes {
            settling: &|p| settling.as_ref().is_some_and(|s| s.writing(p)),
            previous: &mut previous,
            stamps: &unstamped,
            now: crate::clock::wall(),
        };
        let named = self.named.as_ref().map(|n| n.take());
        let scan_all = std::mem::take(&mut self.scan_all);
        // Whether every file is the one the last scan read (a full scan only).
        let mut same = false;
        let entries = match named {
            Some(c) if !c.all && !scan_all => {
                let paths = c.paths;
                // Whether a file the last scan read changed or went.
                let known = paths.iter().any(|p| writes.previous.contains_key(p));
                // The named files are read again, whatever their stamps.
                for p in &paths {
                    stamps.remove(p);
                }
                ignored = self
                    .ignored
                    .iter()
                    .filter(|(p, _)| !paths.contains(p))
                    .cloned()
                    .collect();
                let fresh = crate::scan::scan_named(
                    &self.cfg.layout,
                    &self.groups_read,
                    &paths,
                    &mut ignored,
                    &mut writes,
                    &mut stamps,
                );
                if !known && self.addable(&fresh, &ignored, host) {
                    // The last entries stand, with the new files beside them.
                    previous.extend(fresh.iter().map(|e| (e.path.clone(), e.clone())));
                    self.last_entries = previous;
                    self.last_stamps = stamps;
                    return Read::Added(fresh);
                }
                if fresh.is_empty() && ignored == self.ignored {
                    // Files the last scan read, gone, and nothing else.
                    let gone: Vec<model::catalog::Entry> = paths
                        .iter()
                        .filter_map(|p| writes.previous.get(p).cloned())
                        .collect();
                    if self.removable(&gone, host) {
                        previous.retain(|p, _| !paths.contains(p));
                        self.last_entries = previous;
                        self.last_stamps = stamps;
                        return Read::Removed(gone);
                    }
                }
                writes.previous.retain(|p, _| !paths.contains(p));
                let mut entries: Vec<model::catalog::Entry> =
                    writes.previous.drain().map(|(_, e)| e).collect();
                entries.extend(fresh);
                // A group's file came or went: its drop directory is read
                // whole, or left, as a full scan would.
                let read = crate::scan::groups_read(&self.group_names(), &entries);
                for g in read.difference(&self.groups_read) {
                    let dir = self.cfg.layout.drop_dir(g);
                    let source = model::catalog::Source::Drop(g.clone());
                    let found = crate::scan::scan_dir(
                        &dir,
                        &source,
                        &mut ignored,
                        &mut writes,
                        &mut stamps,
                    );
                    entries.extend(found);
                }
                let gone: Vec<PathBuf> = self
                    .groups_read
                    .difference(&read)
                    .map(|g| self.cfg.layout.drop_dir(g))
                    .collect();
                if !gone.is_empty() {
                    let left =
                        |p: &std::path::Path| gone.iter().any(|d| p.parent() == Some(d.as_path()));
                    entries.retain(|e| !left(&e.path));
                    ignored.retain(|(p, _)| !left(p));
                    stamps.retain(|p, _| !left(p));
                }
                self.groups_read = read;
                self.last_stamps = stamps;
                entries
            }
            _ => {
                // Unchanged files (by their stamps) are not read again.
                let last = stamps;
                writes.stamps = &last;
                let mut stamps = crate::scan::Stamps::new();
                let groups = self.group_names();
                let entries = crate::scan::scan(
                    &self.cfg.layout,
                    &groups,
                    &mut ignored,
                    &mut writes,
                    &mut stamps,
                );
                // Every entry read from a settled file whose stamp is as
                // last time, and no file more or less.
                same = stamps.len() == entries.len() && stamps == last;
                self.last_stamps = stamps;
                self.groups_read = crate::scan::groups_read(&groups, &entries);
                entries
            }
        };
        Read::All {
            entries,
            ignored,
            same,
        }
    }

    /// Whether the removal of `name` (stopped, archived) may change what
    /// the directories decide: its name was wanted by another file (or its
    /// own is back), or something is refused or kept running for a reason (a
    /// budget, a user, a group kept for its sites) that it may have held.
    /// Otherwise a scan would find what the last one found.
    fn removal_may_change_verdicts(&self, name: &Name) -> bool {
        self.something_held_back() || self.last_entries.values().any(|e| &e.name == name)
    }

    /// Whether a file is refused or shadowed, or a vassal kept running for
    /// a reason: what a removal frees may then let another file run.
    fn something_held_back(&self) -> bool {
        !self.rejected.is_empty()
            || !self.shadowed.is_empty()
            || self.vassals.values().any(|v| v.life.reason.is_some())
    }

    /// Whether something that happened asks for the directories to be read
    /// again, as a file change does (the caller paces it).
    pub fn take_rescan(&mut self) -> bool {
        std::mem::take(&mut self.rescan)
    }

    /// Whether vassals wait to be started (see [`Manager::start_some`]).
    pub fn starts_pending(&self) -> bool {
        !self.to_start.is_empty()
    }

    /// Starts the next few vassals waiting, and refreshes what depends on
    /// who runs. A host brought up with 10,000 files starts them a batch at
    /// a time: requests, exits and file changes are handled in between.
    pub fn start_some(&mut self) {
        if self.shutdown_reply.is_some() {
            self.to_start.clear();
        }
        let n = self.to_start.len().min(START_BATCH);
        let batch: Vec<Name> = self.to_start.drain(..n).collect();
        self.start_many(&batch);
        self.refresh_nss();
        self.refresh_net();
        self.publish_sites();
    }

    fn update(&mut self, name: &Name, file: VassalFile) {
        let Some(v) = self.vassals.get_mut(name) else {
            return;
        };
        self.net_stale = true;
        v.file = file;
        let result = match &v.file {
            VassalFile::Group(_) => self
                .tree
                .set_limits(&self.cfg.layout.group_cgroup(name), &group_limits(&v.file)),
            VassalFile::Site(s) => self.tree.set_limits(
                &self.cfg.layout.cgroup(s.group.as_ref(), name, false),
                &cgroup_limits(&v.file),
            ),
        };
        self.apply_storage(name);
        let Some(v) = self.vassals.get_mut(name) else {
            return;
        };
        match result {
            Ok(()) => tracing::info!(vassal = %name, "limits applied in place"),
            Err(e) => {
                tracing::warn!(vassal = %name, error = %e, "applying limits failed");
                v.life.reason = Some(format!("applying limits: {e}"));
            }
        }
        if v.init.is_some() {
            self.write_record(name);
        }
    }

    fn input<'a>(&'a self, name: &'a Name, file: &'a VassalFile, uid: u32) -> Input<'a> {
        Input {
            name,
            file,
            uid,
            layout: &self.cfg.layout,
            vassal_exe: &self.cfg.vassal_exe,
            cgroup_v2: self.tree.version() == sys::cgroup::Version::V2,
            net: self.net.as_ref().and_then(|n| {
                let off = self.addresses.vassals.get(name.as_str())?;
                Some(n.pool().assigned(*off))
            }),
            quota: self
                .storage
                .enforced()
                .then(|| (&self.storage, self.quota_group(name, file))),
            lxcfs: self.cfg.lxcfs.as_deref(),
        }
    }

    /// Gives one event to a vassal's lifecycle and carries out what follows.
    fn step(&mut self, name: &Name, ev: lifecycle::Event) {
        if let Some(fx) = self.decide(name, |life, ctx| life.on(ev, now(), ctx)) {
            self.apply(name, fx);
        }
    }

    /// Runs a decision of the vassal's lifecycle in its context (its group
    /// suspended or not, the throttle); `None` for a vassal that is gone.
    fn decide<R>(
        &mut self,
        name: &Name,
        f: impl FnOnce(&mut Life, &lifecycle::Ctx) -> R,
    ) -> Option<R> {
        self.moved += 1;
        let group = self.suspended_group(name);
        let v = self.vassals.get_mut(name)?;
        let ctx = lifecycle::Ctx {
            throttle: &self.cfg.throttle,
            suspended_group: group.as_ref(),
        };
        Some(f(&mut v.life, &ctx))
    }

    /// The vassal's group, if it is a site of a suspended group.
    fn suspended_group(&self, name: &Name) -> Option<Name> {
        self.vassals
            .get(name)?
            .group()
            .filter(|g| self.suspended_groups.contains(*g))
            .cloned()
    }

    /// Carries out a lifecycle's effects.
    fn apply(&mut self, name: &Name, fx: Vec<Effect>) {
        for effect in fx {
            match effect {
                Effect::Start => {
                    if let Some(begun) = self.begin_start(name) {
                        self.finish_start(name, begun);
                    }
                    self.refresh_nss();
                }
                Effect::RestartAfter { delay, gen } => self.schedule_restart(name, delay, gen),
                Effect::Restart { delay, gen } => {
                    let Some(v) = self.vassals.get_mut(name) else {
                        continue;
                    };
                    v.init = None;
                    let reason = v.life.reason.as_deref().unwrap_or_default();
                    tracing::warn!(vassal = %name, %reason, "init died");
                    let v = &self.vassals[name];
                    self.remove_record(name, &v.file);
                    // Its leftovers are killed off the loop (v1 freezes to
                    // kill, which can take seconds); the restart follows.
                    let (tree, cgroup) = (self.tree.clone(), self.cgroup_of(name, v));
                    let (tx, name) = (self.tx.clone(), name.clone());
                    tokio::spawn(async move {
                        off_loop(&tree, move |tree| {
                            let _ = tree.kill_all(&cgroup);
                        })
                        .await;
                        tokio::time::sleep(delay).await;
                        let _ = tx.send(Event::RestartDue { name, gen });
                    });
                }
                Effect::BeginStop => self.stop_task(name),
                Effect::Archive => {
                    if let Some(v) = self.vassals.remove(name) {
                        self.net_stale = true;
                        if let VassalFile::Group(_) = v.file {
                            // Its drop directory is no longer read: the
                            // next scan leaves its files, judging whole.
                            self.claimed = None;
                        }
                        self.forget_caller(name, &v);
                        self.archive(name, &v);
                    }
                    if self.removal_may_change_verdicts(name) {
                        // Paced like a file change, and judged whole.
                        self.rescan = true;
                        self.claimed = None;
                    } else {
                        // The host-wide tables without it.
                        self.start_some();
                    }
                }
                Effect::Forget => {
                    let Some(v) = self.vassals.remove(name) else {
                        continue;
                    };
                    self.net_stale = true;
                    self.forget_caller(name, &v);
                    let _ = std::fs::remove_dir_all(self.cfg.layout.sockets(name));
                    let _ = std::fs::remove_dir_all(self.cfg.layout.usage_dir(name));
                    self.last_usage.remove(name);
                    let _ = std::fs::remove_file(self.cfg.layout.utmp(name));
                    if let VassalFile::Group(_) = v.file {
                        let (tree, cg) = (self.tree.clone(), self.cfg.layout.group_cgroup(name));
                        tokio::task::spawn_blocking(move || tree.remove(&cg));
                    }
                    // Its firewall elements and its host name go with it.
                    self.refresh_net();
                    self.continue_shutdown();
                }
            }
        }
    }

    /// Starts several vassals, keeping a few children setting up their
    /// containers at once while the next ones are prepared.
    fn start_many(&mut self, names: &[Name]) {
        const IN_FLIGHT: usize = 8;
        let mut pending: std::collections::VecDeque<(Name, Begun)> =
            std::collections::VecDeque::new();
        for name in names {
            let start = |life: &mut Life, ctx: &lifecycle::Ctx| {
                life.on(lifecycle::Event::Start, now(), ctx) == [Effect::Start]
            };
            if self.decide(name, start) != Some(true) {
                continue;
            }
            if let Some(b) = self.begin_start(name) {
                pending.push_back((name.clone(), b));
            }
            if pending.len() >= IN_FLIGHT {
                let (n, b) = pending.pop_front().expect("non-empty");
                self.finish_start(&n, b);
            }
        }
        while let Some((n, b)) = pending.pop_front() {
            self.finish_start(&n, b);
        }
    }

    /// Prepares and clones a vassal's init; `None` if it cannot start now
    /// (its state says why).
    fn begin_start(&mut self, name: &Name) -> Option<Begun> {
        let file = self.vassals.get(name)?.file.clone();
        let user = file.user(name);
        // In a cluster a uid is the cluster's (claimed by the agent before
        // the file was copied here), never one of this host's own making.
        if self.cfg.cluster.is_some() && !self.uids.users.contains_key(user.as_str()) {
            let why = match self.cluster_refused.get(&user) {
                Some(why) => format!("no uid from the cluster: {why}"),
                None => format!("login {user} has no uid from the cluster yet"),
            };
            self.fail(name, why, true);
            return None;
        }
        let uid = match self.uids.allocate(user.as_str()) {
            Ok((uid, changed)) => {
                // A uid is used only once the table that gives it is on disk.
                if changed || self.uids_unsaved {
                    if let Err(e) = self.save_uids() {
                        self.uids_unsaved = true;
                        self.fail(name, format!("saving the uid table: {e}"), true);
                        return None;
                    }
                    self.uids_unsaved = false;
                }
                uid
            }
            Err(e) => {
                self.fail(name, e.to_string(), false);
                return None;
            }
        };
        self.move_home(name, &file, uid);
        if let Err(e) = self.allocate_address(name, &file) {
            self.fail(name, format!("address: {e}"), true);
            return None;
        }
        if let VassalFile::Group(_) = file {
            let cg = self.cfg.layout.group_cgroup(name);
            if let Err(e) = self
                .tree
                .create(&cg)
                .and_then(|_| self.tree.set_limits(&cg, &group_limits(&file)))
            {
                self.fail(name, e.to_string(), true);
                return None;
            }
        }
        if let VassalFile::Site(_) = file {
            // The site's key for the router, bound into its container.
            if let Err(e) = self.site_keys.write(name, uid) {
                self.fail(name, format!("writing the site's key: {e}"), true);
                return None;
            }
        }
        let t0 = now();
        let pending = self.spawner.begin(&self.input(name, &file, uid));
        Some(Begun { uid, t0, pending })
    }

    fn finish_start(&mut self, name: &Name, begun: Begun) {
        let Begun { uid, t0, pending } = begun;
        let result = pending.and_then(|p| p.wait().map_err(SpawnError::from));
        match result {
            Ok(pidfd) => {
                let pid = pidfd.pid();
                if let Some(v) = self.vassals.get_mut(name) {
                    v.uid = Some(uid);
                }
                self.step(name, lifecycle::Event::Started);
                let mut v = self.vassals.remove(name).expect("present");
                self.watch_init(name, &mut v, pidfd);
                self.vassals.insert(name.clone(), v);
                self.write_record(name);
                let elapsed = now().saturating_duration_since(t0);
                self.start_latency.observe(elapsed.as_secs_f64());
                let elapsed_us = elapsed.as_micros() as u64;
                tracing::info!(vassal = %name, pid, uid, elapsed_us, "started");
            }
            Err(e) => {
                let transient = e.is_transient();
                self.fail(name, format!("start failed: {e}"), transient);
            }
        }
    }

    fn fail(&mut self, name: &Name, error: String, transient: bool) {
        tracing::warn!(vassal = %name, reason = %error, transient, "start failed");
        self.step(name, lifecycle::Event::StartFailed { error, transient });
    }

    fn schedule_restart(&self, name: &Name, delay: Duration, gen: u64) {
        let (tx, name) = (self.tx.clone(), name.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Event::RestartDue { name, gen });
        });
    }

    fn cgroup_of(&self, name: &Name, v: &Vassal) -> String {
        self.input(name, &v.file, 0).cgroup()
    }

    /// Scans from now on leave files being written alone, and read only the
    /// files the watcher named when it named them all (see [`crate::watch`]).
    pub(crate) fn follow_writes(
        &mut self,
        settling: crate::watch::Settling,
        named: crate::watch::Named,
    ) {
        self.settling = Some(settling);
        self.named = Some(named);
        self.scan_all = true;
    }

    /// Stops a vassal in the background; `StopDone` follows.
    fn begin_stop(&mut self, name: &Name, then: After) {
        self.step(name, lifecycle::Event::Stop(then));
    }

    /// Handles one event.
    pub fn handle(&mut self, ev: Event) {
        // What only reads leaves the last judgement standing.
        let reads = matches!(
            &ev,
            Event::Rescan
                | Event::Control(
                    Request::Status
                        | Request::Metrics
                        | Request::Get { .. }
                        | Request::Spec { .. }
                        | Request::Cluster,
                    _
                )
        );
        if !reads {
            self.moved += 1;
        }
        match ev {
            Event::FilesChanged => {
                self.reconcile();
            }
            Event::Rescan => {
                // The safety net: every file, whatever the watcher said.
                self.scan_all = true;
                self.reconcile();
                self.project_old_homes();
                self.publish_usage();
                // What the last seconds freed (each rescan rebuilds the
                // tables of every file) goes back to the kernel.
                sys::heap::trim();
            }
            Event::Projected { name, uid, result } => self.projected(&name, uid, result),
            Event::ClusterUids(given, refused, reply) => {
                for (login, why) in refused {
                    self.cluster_refused.insert(login, why);
                }
                let _ = reply.send(self.adopt_uids(given));
            }
            Event::MovedAway(name) => {
                self.moved_away.insert(name);
            }
            Event::PrepareHome(name, text, reply) => {
                let _ = reply.send(self.prepare_home(&name, &text));
            }
            Event::Exited { name, gen } => self.exited(&name, gen),
            Event::RestartDue { name, gen } => {
                self.step(&name, lifecycle::Event::RestartDue { gen })
            }
            Event::StopDone { name } => self.stop_done(&name),
            Event::Control(req, reply) => self.control(req, reply),
            Event::Froze {
                name,
                frozen,
                result,
                reply,
            } => {
                let answer = self.froze(&name, frozen, result);
                let _ = reply.send(answer);
            }
        }
    }

    fn exited(&mut self, name: &Name, gen: u64) {
        let Some(v) = self.vassals.get(name) else {
            return;
        };
        // How it ended, if it is the init of the current start.
        let exit = v
            .init
            .as_ref()
            .filter(|_| v.life.gen == gen)
            .and_then(|i| i.pidfd.try_reap().ok().flatten())
            .map(|e| e.to_string())
            .unwrap_or_else(|| "exited".into());
        self.step(name, lifecycle::Event::Exited { gen, exit });
    }

    fn stop_done(&mut self, name: &Name) {
        let Some(v) = self.vassals.get_mut(name) else {
            return;
        };
        v.init = None;
        let file = v.file.clone();
        self.remove_record(name, &file);
        let _ = std::fs::remove_dir(self.cfg.layout.root_dir(name));
        tracing::info!(vassal = %name, "stopped");
        self.step(name, lifecycle::Event::StopDone);
    }

    fn continue_shutdown(&mut self) {
        if self.shutdown_reply.is_none() {
            return;
        }
        let sites_left = self
            .vassals
            .values()
            .any(|v| matches!(v.file, VassalFile::Site(_)));
        let names: Vec<Name> = self
            .vassals
            .iter()
            .filter(|(_, v)| {
                v.life.stopping.is_none() && (!sites_left || matches!(v.file, VassalFile::Site(_)))
            })
            .map(|(n, _)| n.clone())
            .collect();
        for n in names {
            self.begin_stop(&n, After::Forget);
        }
    }
}
