//! The emperor's state machine: one task owns every vassal, and everything
//! that happens (a file changed, an init exited, a restart is due, a stop
//! finished, a control request) arrives as an [`Event`] on one channel.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::backoff::{Backoff, Throttle};
use model::catalog::{Catalog, Verdict};
use model::config::Kind;
use model::reconcile::{plan, Action};
use model::record::{self, VassalRecord, SCHEMA_VERSION};
use model::uids::UidTable;
use model::{Layout, Name, VassalFile};
use serde::Serialize;
use sys::cgroup::CgroupTree;
use sys::Pidfd;
use tokio::sync::{mpsc, oneshot, watch};

use crate::control::{Request, Response};
use crate::spawner::{cgroup_limits, group_limits, SpawnError, Spawner};
use crate::spec::{self, Input};

/// How many network namespaces the emperor keeps ready for starts.
const NETNS_POOL: usize = 4;

/// Settings of a running emperor.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where everything lives.
    pub layout: Layout,
    /// Restart throttling.
    pub throttle: Throttle,
    /// How long an init has to exit after SIGTERM before everything in its cgroup is killed.
    pub stop_grace: Duration,
    /// The vassal binary.
    pub vassal_exe: PathBuf,
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
}

/// What to do once a vassal has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Its file is gone: archive it and forget it.
    Remove,
    /// Start it again (a restart).
    Start,
    /// The emperor is shutting down: forget it, keep its home.
    Forget,
}

/// A vassal's state as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Being started, or waiting for a throttled restart.
    Starting,
    /// Its init runs.
    Running,
    /// Frozen.
    Suspended,
    /// Not running (being stopped, or waiting).
    Stopped,
    /// Could not be started, and will not be retried until its file changes or a restart is asked for.
    Failed,
    /// Its file was refused and no earlier version runs.
    Rejected,
}

struct Init {
    pidfd: Arc<Pidfd>,
    exited: watch::Receiver<bool>,
    started: Instant,
}

struct Vassal {
    file: VassalFile,
    dynamic: bool,
    reason: Option<String>,
    uid: Option<u32>,
    state: State,
    init: Option<Init>,
    backoff: Backoff,
    restarts: u32,
    gen: u64,
    stopping: Option<After>,
}

impl Vassal {
    fn new(file: VassalFile, dynamic: bool) -> Vassal {
        Vassal {
            file,
            dynamic,
            reason: None,
            uid: None,
            state: State::Starting,
            init: None,
            backoff: Backoff::default(),
            restarts: 0,
            gen: 0,
            stopping: None,
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

/// One row of `emperor status`.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    kind: Option<Kind>,
    group: Option<String>,
    state: State,
    pid: Option<i32>,
    uid: Option<u32>,
    user: Option<String>,
    cgroup: Option<String>,
    limits: Option<model::config::Limits>,
    dynamic: bool,
    usage: Option<Usage>,
    restarts: u32,
    reason: Option<String>,
}

impl Row {
    /// The row of a file that runs nothing.
    fn rejected(name: &Name, reason: String) -> Row {
        Row {
            name: name.to_string(),
            kind: None,
            group: None,
            state: State::Rejected,
            pid: None,
            uid: None,
            user: None,
            cgroup: None,
            limits: None,
            dynamic: false,
            usage: None,
            restarts: 0,
            reason: Some(reason),
        }
    }
}

#[derive(Debug, Serialize)]
struct Usage {
    memory: u64,
    pids: u64,
}

/// The emperor.
pub struct Manager {
    cfg: Config,
    tree: Arc<dyn CgroupTree>,
    spawner: Spawner,
    uids: UidTable,
    uids_unsaved: bool,
    vassals: BTreeMap<Name, Vassal>,
    rejected: BTreeMap<Name, String>,
    /// Files of the vassal directories that are not vassals (logged once per change).
    ignored: Vec<crate::scan::Ignored>,
    shadowed: Vec<(Name, PathBuf, String)>,
    /// The ssh keys installed, by user (`None` until the first reconcile has
    /// read what the directory holds).
    ssh_keys: Option<BTreeMap<Name, String>>,
    tx: mpsc::UnboundedSender<Event>,
    shutdown_reply: Option<oneshot::Sender<Response>>,
    suspended_groups: BTreeSet<Name>,
    public_keys: BTreeMap<Name, String>,
    last_dominion: Vec<u8>,
}

fn needs_restart(old: &VassalFile, new: &VassalFile) -> bool {
    match (old, new) {
        (VassalFile::Site(a), VassalFile::Site(b)) => {
            a.group != b.group || a.user != b.user || a.container.rootfs != b.container.rootfs
        }
        (VassalFile::Group(a), VassalFile::Group(b)) => {
            a.user != b.user || a.container.rootfs != b.container.rootfs
        }
        _ => true,
    }
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
        let uids = UidTable::load(&cfg.layout.uid_table())?;
        let m = Manager {
            spawner: Spawner::new(tree.clone(), seccomp).with_netns_pool(NETNS_POOL),
            cfg,
            tree,
            uids,
            uids_unsaved: false,
            vassals: BTreeMap::new(),
            rejected: BTreeMap::new(),
            ignored: Vec::new(),
            shadowed: Vec::new(),
            ssh_keys: None,
            tx,
            shutdown_reply: None,
            suspended_groups: BTreeSet::new(),
            public_keys: BTreeMap::new(),
            last_dominion: Vec::new(),
        };
        if let Err(e) = m.write_nss() {
            tracing::warn!(error = %e, "writing the NSS table failed");
        }
        Ok(m)
    }

    /// Saves the uid table, then the NSS table made from it.
    fn save_uids(&self) -> std::io::Result<()> {
        self.uids.save(&self.cfg.layout.uid_table())?;
        self.write_nss()
    }

    /// Every tenant ever given a uid, for `getent passwd` and `ls -l` on the host
    /// (archived homes keep their owner's name).
    fn write_nss(&self) -> std::io::Result<()> {
        let tenants: Vec<model::nss::Tenant> = self
            .uids
            .users
            .iter()
            .map(|(name, uid)| model::nss::Tenant {
                name: name.clone(),
                uid: *uid,
                home: model::layout::inside::home(name),
                shell: "/bin/bash".into(),
            })
            .collect();
        model::atomic::write(
            &self.cfg.layout.nss_table(),
            &model::nss::encode(&tenants),
            0o644,
        )
    }

    /// The drop directories to watch.
    pub fn drop_dirs(&self) -> Vec<PathBuf> {
        self.vassals
            .iter()
            .filter(|(_, v)| matches!(v.file, VassalFile::Group(_)))
            .map(|(n, _)| self.cfg.layout.drop_dir(n))
            .collect()
    }

    /// Whether a shutdown has finished (every vassal stopped).
    pub fn shutdown_done(&self) -> bool {
        self.shutdown_reply.is_some() && self.vassals.is_empty()
    }

    /// Finishes a shutdown: removes the emperor's cgroup subtree and answers the caller.
    pub fn finish_shutdown(&mut self) {
        let _ = self
            .tree
            .remove(self.cfg.layout.cgroup_root.trim_matches('/'));
        if let Some(tx) = self.shutdown_reply.take() {
            let _ = tx.send(Response::ok(serde_json::json!("stopped")));
        }
    }

    /// Tells the router (through `<run-dir>/router/dominion.json`) which site
    /// owns which domains, each site's public key and whether it is suspended.
    /// Written only when it changed.
    pub fn publish_dominion(&mut self) {
        use model::subscription::{Dominion, SiteRoutes};
        let mut d = Dominion {
            schema_version: 1,
            ..Default::default()
        };
        for (name, v) in &self.vassals {
            let (VassalFile::Site(s), Some(uid)) = (&v.file, v.uid) else {
                continue;
            };
            if !self.public_keys.contains_key(name) {
                match crate::keys::ensure(&self.cfg.layout.state_dir, name, uid) {
                    Ok(k) => {
                        self.public_keys.insert(name.clone(), k);
                    }
                    Err(e) => {
                        tracing::warn!(vassal = %name, error = %e, "no key pair for the router");
                        continue;
                    }
                }
            }
            let group_frozen = s
                .group
                .as_ref()
                .is_some_and(|g| self.suspended_groups.contains(g));
            d.sites.insert(
                name.to_string(),
                SiteRoutes {
                    public_key: self.public_keys[name].clone(),
                    domains: s.domains.iter().map(|x| x.to_string()).collect(),
                    sockets: self.cfg.layout.sockets(name).display().to_string(),
                    uid: Some(uid),
                    suspended: v.state == State::Suspended || group_frozen,
                    // Set while a site moves to another host: not done by this emperor yet.
                    moving: Vec::new(),
                    requests: s.limits.requests,
                },
            );
        }
        let Ok(bytes) = serde_json::to_vec_pretty(&d) else {
            return;
        };
        if bytes == self.last_dominion {
            return;
        }
        let dir = self.cfg.layout.router_dir();
        let _ = std::fs::create_dir_all(&dir);
        // Root's only: the directory is shared into every container, and a
        // site learns no other customer's domains.
        match model::atomic::replace(&self.cfg.layout.dominion(), &bytes, 0o600) {
            Ok(()) => self.last_dominion = bytes,
            Err(e) => tracing::warn!(error = %e, "writing the dominion failed"),
        }
    }

    /// Re-adopts the inits a previous emperor left running.
    pub fn adopt(&mut self) {
        let Ok(rd) = std::fs::read_dir(self.cfg.layout.records_dir()) else {
            return;
        };
        let proc = std::path::Path::new("/proc");
        for e in rd.flatten() {
            let path = e.path();
            let rec = match VassalRecord::load(&path) {
                Ok(Some(r)) if r.schema_version == SCHEMA_VERSION => r,
                Ok(_) => continue,
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "unreadable record removed");
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
            };
            let file = VassalFile::from_json(rec.config.clone());
            let pidfd = Pidfd::open(rec.pid).ok().filter(|_| rec.is_alive(proc));
            match (file, pidfd) {
                (Some(file), Some(pidfd)) => {
                    let mut v = Vassal::new(file, false);
                    v.uid = Some(rec.uid);
                    let frozen = self.tree.is_frozen(&rec.cgroup).unwrap_or(false);
                    if let VassalFile::Group(_) = v.file {
                        if self
                            .tree
                            .is_frozen(&self.cfg.layout.group_cgroup(&rec.name))
                            .unwrap_or(false)
                        {
                            self.suspended_groups.insert(rec.name.clone());
                        }
                    }
                    v.state = if frozen {
                        State::Suspended
                    } else {
                        State::Running
                    };
                    tracing::info!(vassal = %rec.name, pid = rec.pid, "adopted");
                    self.watch_init(&rec.name, &mut v, pidfd);
                    self.vassals.insert(rec.name.clone(), v);
                    // In this build's form (and with its login link).
                    self.write_record(&rec.name);
                }
                _ => {
                    tracing::info!(vassal = %rec.name, pid = rec.pid, "record of a dead init removed");
                    if self.tree.exists(&rec.cgroup) {
                        let _ = self.tree.kill_all(&rec.cgroup);
                        let _ = self.tree.remove(&rec.cgroup);
                    }
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }

    fn watch_init(&self, name: &Name, v: &mut Vassal, pidfd: Pidfd) {
        v.gen += 1;
        let pidfd = Arc::new(pidfd);
        let (done_tx, done_rx) = watch::channel(false);
        let tx = self.tx.clone();
        let (name, gen) = (name.clone(), v.gen);
        let fd = pidfd.clone();
        tokio::spawn(async move {
            sys::pidfd::exited(fd).await;
            let _ = done_tx.send(true);
            let _ = tx.send(Event::Exited { name, gen });
        });
        v.init = Some(Init {
            pidfd,
            exited: done_rx,
            started: Instant::now(),
        });
    }

    /// Reads the directories and brings what runs in line with them.
    pub fn reconcile(&mut self) {
        if self.shutdown_reply.is_some() {
            return;
        }
        let groups: BTreeSet<Name> = self
            .vassals
            .iter()
            .filter(|(_, v)| matches!(v.file, VassalFile::Group(_)))
            .map(|(n, _)| n.clone())
            .collect();
        let mut ignored = Vec::new();
        let entries = crate::scan::scan(&self.cfg.layout, &groups, &mut ignored);
        for (path, why) in &ignored {
            if !self.ignored.iter().any(|(p, w)| p == path && w == why) {
                tracing::warn!(path = %path.display(), reason = %why, "not a vassal file");
            }
        }
        self.ignored = ignored;
        let host = crate::scan::host_users();
        let previous: BTreeMap<Name, VassalFile> = self
            .vassals
            .iter()
            .filter(|(_, v)| v.stopping != Some(After::Remove))
            .map(|(n, v)| (n.clone(), v.file.clone()))
            .collect();
        let cat = Catalog::build(entries, &previous, &|u: &str| host.contains(u));
        self.shadowed = cat.shadowed;
        let before = std::mem::take(&mut self.rejected);
        let mut desired = BTreeMap::new();
        for (name, verdict) in cat.verdicts {
            match verdict {
                Verdict::Run {
                    file,
                    dynamic,
                    reason,
                } => {
                    if let Some(v) = self.vassals.get_mut(&name) {
                        v.dynamic = dynamic;
                        if v.reason.as_deref() != reason.as_deref() {
                            if let Some(r) = &reason {
                                tracing::warn!(vassal = %name, reason = %r, "file refused; last good version keeps running");
                            }
                        }
                        // A start failure's reason stays until the next start.
                        if reason.is_some()
                            || v.state == State::Running
                            || v.state == State::Suspended
                        {
                            v.reason = reason;
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
        // Sites stop before their groups; groups start before their sites.
        let is_group = |n: &Name, m: &BTreeMap<Name, VassalFile>| {
            matches!(m.get(n), Some(VassalFile::Group(_)))
        };
        actions.sort_by_key(|a| match a {
            Action::Stop(n) => (0, is_group(n, &previous)),
            Action::Restart(_) => (1, false),
            Action::Update(n) => (2, !is_group(n, &want)),
            Action::Start(n) => (3, !is_group(n, &want)),
        });
        // Allocate the uids of every new vassal at once: one durable write of
        // the table instead of one per start.
        let mut allocated = false;
        for a in &actions {
            if let Action::Start(n) = a {
                let user = desired[n].0.user(n);
                allocated |= self
                    .uids
                    .allocate(user.as_str())
                    .map(|(_, changed)| changed)
                    .unwrap_or(false);
            }
        }
        if allocated {
            self.uids_unsaved = true;
            match self.save_uids() {
                Ok(()) => self.uids_unsaved = false,
                Err(e) => tracing::error!(error = %e, "saving the uid table failed"),
            }
        }
        let mut starts = Vec::new();
        for action in actions {
            match action {
                Action::Stop(name) => self.begin_stop(&name, After::Remove),
                Action::Restart(name) => {
                    if let Some(v) = self.vassals.get_mut(&name) {
                        v.file = want[&name].clone();
                    }
                    tracing::info!(vassal = %name, "configuration needs a restart");
                    self.begin_stop(&name, After::Start);
                }
                Action::Update(name) => self.update(&name, want[&name].clone()),
                Action::Start(name) => {
                    let (file, dynamic) = desired[&name].clone();
                    self.vassals
                        .insert(name.clone(), Vassal::new(file, dynamic));
                    starts.push(name);
                }
            }
        }
        self.start_many(&starts);
    }

    fn update(&mut self, name: &Name, file: VassalFile) {
        let Some(v) = self.vassals.get_mut(name) else {
            return;
        };
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
        match result {
            Ok(()) => tracing::info!(vassal = %name, "limits applied in place"),
            Err(e) => {
                tracing::warn!(vassal = %name, error = %e, "applying limits failed");
                v.reason = Some(format!("applying limits: {e}"));
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
        }
    }

    fn start(&mut self, name: &Name) {
        if let Some(begun) = self.begin_start(name) {
            self.finish_start(name, begun);
        }
    }

    /// Starts several vassals, keeping a few children setting up their
    /// containers at once while the next ones are prepared.
    fn start_many(&mut self, names: &[Name]) {
        const IN_FLIGHT: usize = 8;
        let mut pending: std::collections::VecDeque<(Name, Begun)> =
            std::collections::VecDeque::new();
        for name in names {
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
        let v = self.vassals.get_mut(name)?;
        let file = v.file.clone();
        if let Some(g) = v
            .group()
            .filter(|g| self.suspended_groups.contains(*g))
            .cloned()
        {
            v.state = State::Stopped;
            v.reason = Some(format!("group {g} is suspended; starts on resume"));
            return None;
        }
        let user = file.user(name);
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
        let t0 = Instant::now();
        let pending = self.spawner.begin(&self.input(name, &file, uid));
        Some(Begun { uid, t0, pending })
    }

    fn finish_start(&mut self, name: &Name, begun: Begun) {
        let Begun { uid, t0, pending } = begun;
        let result = pending.and_then(|p| p.wait().map_err(SpawnError::from));
        match result {
            Ok(pidfd) => {
                let pid = pidfd.pid();
                let mut v = self.vassals.remove(name).expect("present");
                v.uid = Some(uid);
                v.state = State::Running;
                v.reason = None;
                self.watch_init(name, &mut v, pidfd);
                self.vassals.insert(name.clone(), v);
                self.write_record(name);
                tracing::info!(vassal = %name, pid, uid, elapsed_us = t0.elapsed().as_micros() as u64, "started");
            }
            Err(e) => {
                let transient = e.is_transient();
                self.fail(name, format!("start failed: {e}"), transient);
            }
        }
    }

    fn fail(&mut self, name: &Name, reason: String, transient: bool) {
        let Some(v) = self.vassals.get_mut(name) else {
            return;
        };
        tracing::warn!(vassal = %name, %reason, transient, "start failed");
        if transient {
            let delay = v.backoff.on_death(&self.cfg.throttle, Duration::ZERO);
            v.state = State::Starting;
            v.reason = Some(format!("{reason}; retry in {delay:?}"));
            self.schedule_restart(name, delay);
        } else {
            v.state = State::Failed;
            v.reason = Some(reason);
        }
    }

    fn schedule_restart(&self, name: &Name, delay: Duration) {
        let Some(v) = self.vassals.get(name) else {
            return;
        };
        let (tx, name, gen) = (self.tx.clone(), name.clone(), v.gen);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Event::RestartDue { name, gen });
        });
    }

    fn write_record(&self, name: &Name) {
        let Some(v) = self.vassals.get(name) else {
            return;
        };
        let (Some(init), Some(uid)) = (&v.init, v.uid) else {
            return;
        };
        let pid = init.pidfd.pid();
        let Ok(start_time) = record::start_time(std::path::Path::new("/proc"), pid) else {
            return;
        };
        let cgroup = self.input(name, &v.file, uid).cgroup();
        let rec = VassalRecord {
            schema_version: SCHEMA_VERSION,
            name: name.clone(),
            kind: v.file.kind(),
            pid,
            start_time,
            uid,
            cgroup_dirs: self.tree.dirs(&cgroup).unwrap_or_default(),
            cgroup,
            config: serde_json::to_value(&v.file).unwrap_or_default(),
        };
        let l = &self.cfg.layout;
        if let Err(e) = model::atomic::replace_json(&l.record(name), &rec, 0o644) {
            tracing::error!(vassal = %name, error = %e, "writing the runtime record failed");
        }
        if let Err(e) = link_login(l, &v.file.user(name), name) {
            tracing::error!(vassal = %name, error = %e, "writing the login link failed");
        }
    }

    /// Removes a vassal's runtime record and its login link.
    fn remove_record(&self, name: &Name, file: &VassalFile) {
        let l = &self.cfg.layout;
        let _ = std::fs::remove_file(l.record(name));
        let link = l.login(&file.user(name));
        if std::fs::read_link(&link).is_ok_and(|t| t == login_target(name)) {
            let _ = std::fs::remove_file(link);
        }
    }

    /// Installs every accepted vassal's `ssh_keys` where sshd reads them
    /// (`<state-dir>/ssh/<user>`), and removes the keys of users that are gone.
    /// Files are rewritten only when their content changes.
    fn sync_ssh_keys(&mut self, want: &BTreeMap<Name, VassalFile>) {
        let dir = self.cfg.layout.ssh_keys_dir();
        let mut now: BTreeMap<Name, String> = BTreeMap::new();
        for (name, file) in want {
            let keys = &file.container().ssh_keys;
            if !keys.is_empty() {
                now.insert(file.user(name), keys.join("\n") + "\n");
            }
        }
        if self.ssh_keys.is_none() {
            // First pass: the directory may hold keys of users removed while
            // the emperor was down.
            let made = std::fs::create_dir_all(&dir).and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            });
            if let Err(e) = made {
                tracing::error!(dir = %dir.display(), error = %e, "creating the ssh keys directory failed");
            }
            let old = std::fs::read_dir(&dir).into_iter().flatten().flatten();
            let known: BTreeMap<Name, String> = old
                .filter_map(|e| {
                    let user: Name = e.file_name().to_str()?.parse().ok()?;
                    Some((user, std::fs::read_to_string(e.path()).unwrap_or_default()))
                })
                .collect();
            self.ssh_keys = Some(known);
        }
        let had = self.ssh_keys.take().unwrap_or_default();
        for user in had.keys().filter(|u| !now.contains_key(*u)) {
            let _ = std::fs::remove_file(self.cfg.layout.ssh_keys(user));
        }
        for (user, text) in &now {
            if had.get(user) != Some(text) {
                let path = self.cfg.layout.ssh_keys(user);
                if let Err(e) = model::atomic::replace(&path, text.as_bytes(), 0o644) {
                    tracing::error!(user = %user, error = %e, "installing ssh keys failed");
                }
            }
        }
        self.ssh_keys = Some(now);
    }

    fn cgroup_of(&self, name: &Name, v: &Vassal) -> String {
        self.input(name, &v.file, 0).cgroup()
    }

    /// Stops a vassal in the background; `StopDone` follows.
    fn begin_stop(&mut self, name: &Name, then: After) {
        let Some(v) = self.vassals.get(name) else {
            return;
        };
        let cgroup = self.cgroup_of(name, v);
        let group_cg =
            matches!(v.file, VassalFile::Group(_)).then(|| self.cfg.layout.group_cgroup(name));
        let v = self.vassals.get_mut(name).expect("present");
        v.stopping = Some(then);
        v.state = State::Stopped;
        v.reason = Some(match then {
            After::Remove => "stopping: file removed".to_owned(),
            After::Start => "restarting".to_owned(),
            After::Forget => "stopping: emperor shutdown".to_owned(),
        });
        let init = v.init.as_ref().map(|i| (i.pidfd.clone(), i.exited.clone()));
        let (tree, tx, name, grace) = (
            self.tree.clone(),
            self.tx.clone(),
            name.clone(),
            self.cfg.stop_grace,
        );
        tokio::spawn(async move {
            // The cgroup calls wait for the kernel (a freeze or a kill settles
            // within up to 5 s): on the blocking pool, never on a runtime thread.
            let (g, c) = (group_cg.clone(), cgroup.clone());
            off_loop(&tree, move |tree| {
                for cg in g.iter().chain(std::iter::once(&c)) {
                    if tree.is_frozen(cg).unwrap_or(false) {
                        let _ = tree.freeze(cg, false);
                    }
                }
            })
            .await;
            if let Some((pidfd, mut exited)) = init {
                let _ = pidfd.signal(libc::SIGTERM);
                let ended = tokio::time::timeout(grace, exited.wait_for(|e| *e))
                    .await
                    .is_ok();
                if !ended {
                    tracing::warn!(vassal = %name, ?grace, "init ignored SIGTERM; killing its cgroup");
                    let c = cgroup.clone();
                    off_loop(&tree, move |tree| {
                        let _ = tree.kill_all(&c);
                    })
                    .await;
                    let _ = pidfd.signal(libc::SIGKILL);
                    let _ = tokio::time::timeout(Duration::from_secs(10), exited.wait_for(|e| *e))
                        .await;
                }
                let _ = pidfd.try_reap();
            }
            // The init's death ends its pid namespace; wait for the cgroup to empty.
            let deadline = Instant::now() + Duration::from_secs(10);
            while tree.procs(&cgroup).map(|p| !p.is_empty()).unwrap_or(false)
                && Instant::now() < deadline
            {
                let c = cgroup.clone();
                off_loop(&tree, move |tree| {
                    let _ = tree.kill_all(&c);
                })
                .await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let (c, n) = (cgroup.clone(), name.clone());
            off_loop(&tree, move |tree| {
                if let Err(e) = tree.remove(&c) {
                    tracing::warn!(vassal = %n, error = %e, "removing the cgroup failed");
                }
            })
            .await;
            let _ = tx.send(Event::StopDone { name });
        });
    }

    /// Handles one event.
    pub fn handle(&mut self, ev: Event) {
        match ev {
            Event::FilesChanged | Event::Rescan => self.reconcile(),
            Event::Exited { name, gen } => self.exited(&name, gen),
            Event::RestartDue { name, gen } => {
                if let Some(v) = self.vassals.get(&name) {
                    if v.gen == gen
                        && v.init.is_none()
                        && v.stopping.is_none()
                        && v.state == State::Starting
                    {
                        self.start(&name);
                    }
                }
            }
            Event::StopDone { name } => self.stop_done(&name),
            Event::Control(req, reply) => self.control(req, reply),
        }
    }

    fn exited(&mut self, name: &Name, gen: u64) {
        let Some(v) = self.vassals.get_mut(name) else {
            return;
        };
        if v.gen != gen || v.stopping.is_some() {
            return;
        }
        let Some(init) = v.init.take() else { return };
        let exit = init
            .pidfd
            .try_reap()
            .ok()
            .flatten()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "exited".into());
        let uptime = init.started.elapsed();
        let delay = v.backoff.on_death(&self.cfg.throttle, uptime);
        v.restarts += 1;
        v.state = State::Starting;
        v.reason = Some(format!(
            "init {exit} after {uptime:.1?}; restart in {delay:?}"
        ));
        tracing::warn!(vassal = %name, %exit, ?uptime, ?delay, "init died; restart scheduled");
        let v = self.vassals.get(name).expect("present");
        self.remove_record(name, &v.file);
        let cgroup = self.cgroup_of(name, v);
        let _ = self.tree.kill_all(&cgroup);
        if delay.is_zero() {
            self.start(name);
        } else {
            self.schedule_restart(name, delay);
        }
    }

    fn stop_done(&mut self, name: &Name) {
        let Some(v) = self.vassals.get_mut(name) else {
            return;
        };
        let then = v.stopping.take();
        v.init = None;
        let file = v.file.clone();
        self.remove_record(name, &file);
        let _ = std::fs::remove_dir(self.cfg.layout.root_dir(name));
        tracing::info!(vassal = %name, "stopped");
        match then {
            Some(After::Start) => {
                let v = self.vassals.get_mut(name).expect("present");
                v.restarts += 1;
                v.state = State::Starting;
                self.start(name);
            }
            Some(After::Remove) => {
                let v = self.vassals.remove(name).expect("present");
                self.archive(name, &v);
                self.reconcile();
            }
            Some(After::Forget) | None => {
                let v = self.vassals.remove(name).expect("present");
                let _ = std::fs::remove_dir_all(self.cfg.layout.sockets(name));
                let _ = std::fs::remove_file(self.cfg.layout.utmp(name));
                if let VassalFile::Group(_) = v.file {
                    let _ = self.tree.remove(&self.cfg.layout.group_cgroup(name));
                }
                self.continue_shutdown();
            }
        }
    }

    /// Moves a removed vassal's home into the archive and removes its runtime traces.
    fn archive(&mut self, name: &Name, v: &Vassal) {
        let l = &self.cfg.layout;
        let _ = std::fs::remove_dir_all(l.sockets(name));
        let _ = std::fs::remove_file(l.utmp(name));
        let home = match &v.file {
            VassalFile::Group(_) => {
                let _ = self.tree.remove(&l.group_cgroup(name));
                self.suspended_groups.remove(name);
                l.group_home(name)
            }
            VassalFile::Site(s) => {
                if s.group.is_some() {
                    let link = l.site_link(name);
                    if link
                        .symlink_metadata()
                        .map(|m| m.file_type().is_symlink())
                        .unwrap_or(false)
                    {
                        let _ = std::fs::remove_file(link);
                    }
                }
                l.site_home(s.group.as_ref(), name)
            }
        };
        if home.symlink_metadata().is_err() {
            return;
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let dest = l.archive_dir().join(format!("{name}-{stamp}"));
        match std::fs::rename(&home, &dest) {
            Ok(()) => tracing::info!(vassal = %name, archive = %dest.display(), "home archived"),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                // Another filesystem: the copy can take long, so it runs off
                // the loop. The home is first moved aside in its own directory
                // (instant, and the name is free for a new site at once).
                let aside = home.with_file_name(format!(".{name}.archiving-{stamp}"));
                if let Err(e) = std::fs::rename(&home, &aside) {
                    tracing::error!(vassal = %name, error = %e, "archiving the home failed; it stays in place");
                    return;
                }
                let name = name.clone();
                std::thread::spawn(move || {
                    let ok = std::process::Command::new("mv")
                        .arg(&aside)
                        .arg(&dest)
                        .stdin(std::process::Stdio::null())
                        .status()
                        .map(|s| s.success())
                        .unwrap_or(false);
                    if ok {
                        tracing::info!(vassal = %name, archive = %dest.display(), "home archived");
                    } else {
                        tracing::error!(vassal = %name, aside = %aside.display(), "copying the home to the archive failed; it stays aside");
                    }
                });
            }
            Err(e) => {
                tracing::error!(vassal = %name, error = %e, "archiving the home failed; it stays in place")
            }
        }
    }

    /// Stores a message in the vassal's notifications. The write is made by
    /// the vassal binary running as the tenant, so a link planted in the home
    /// can lead it nowhere the tenant could not write anyway.
    fn notify(&self, name: &Name, message: &str) -> Result<serde_json::Value, String> {
        if message.is_empty() || message.len() > 1000 || message.contains(['\n', '\r', '\0']) {
            return Err("a message is one line of at most 1000 bytes".into());
        }
        let v = &self.vassals[name];
        let uid = v
            .uid
            .or_else(|| self.uids.users.get(v.file.user(name).as_str()).copied())
            .ok_or("no uid allocated yet")?;
        // Written by the tenant's own vassal binary, as the tenant, inside the
        // site's mount namespace: a symlink in the home resolves in the
        // container, never to a path of the host.
        let init = v
            .init
            .as_ref()
            .ok_or("the site is not running; notifications are stored from inside it")?;
        let mut cmd = std::process::Command::new(crate::spec::VASSAL_INSIDE);
        cmd.args(["notify", "admin", message]).env_clear().env(
            "HOME",
            model::layout::inside::home(v.file.user(name).as_str()),
        );
        init.pidfd.run_inside(&mut cmd, uid);
        let out = cmd
            .output()
            .map_err(|e| format!("running the vassal binary: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        tracing::info!(vassal = %name, "notification stored");
        Ok(serde_json::json!("stored"))
    }

    /// Deletes `archive/<name>-<time>` directories; returns how many.
    fn purge(&self, name: &Name) -> std::io::Result<usize> {
        let mut count = 0;
        for e in std::fs::read_dir(self.cfg.layout.archive_dir())?.flatten() {
            let file_name = e.file_name();
            let Some(stamp) = file_name
                .to_str()
                .and_then(|f| f.strip_prefix(name.as_str()))
                .and_then(|r| r.strip_prefix('-'))
            else {
                continue;
            };
            if !stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_digit()) {
                std::fs::remove_dir_all(e.path())?;
                tracing::info!(vassal = %name, archive = %e.path().display(), "archive purged");
                count += 1;
            }
        }
        Ok(count)
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
                v.stopping.is_none() && (!sites_left || matches!(v.file, VassalFile::Site(_)))
            })
            .map(|(n, _)| n.clone())
            .collect();
        for n in names {
            self.begin_stop(&n, After::Forget);
        }
    }

    fn control(&mut self, req: Request, reply: oneshot::Sender<Response>) {
        let answer = match req {
            Request::Status => {
                Response::ok(serde_json::to_value(self.status()).unwrap_or_default())
            }
            Request::Shutdown => {
                tracing::info!("shutdown requested: stopping every vassal");
                self.shutdown_reply = Some(reply);
                self.continue_shutdown();
                return;
            }
            Request::Restart { name } => self.with_vassal(&name, |m, n| {
                let v = m.vassals.get_mut(n).expect("present");
                if v.stopping.is_some() {
                    return Err(format!("{n} is already stopping"));
                }
                if v.init.is_none() {
                    v.backoff = Backoff::default();
                    v.gen += 1;
                    m.start(n);
                } else {
                    m.begin_stop(n, After::Start);
                }
                Ok(serde_json::json!("restarting"))
            }),
            Request::Suspend { name } => self.with_vassal(&name, |m, n| m.freeze(n, true)),
            Request::Resume { name } => self.with_vassal(&name, |m, n| m.freeze(n, false)),
            Request::Notify { name, message } => {
                self.with_vassal(&name, |m, n| m.notify(n, &message))
            }
            Request::Purge { name } => match name.parse::<Name>() {
                Ok(n) => match self.purge(&n) {
                    Ok(0) => Response::err(format!("no archived home of {n}")),
                    Ok(count) => Response::ok(serde_json::json!(format!(
                        "purged {count} archived home(s) of {n}"
                    ))),
                    Err(e) => Response::err(format!("purging {n}: {e}")),
                },
                Err(e) => Response::err(e.to_string()),
            },
            Request::Spec { name } => self.with_vassal(&name, |m, n| {
                let v = &m.vassals[n];
                let uid = match v.uid {
                    Some(u) => u,
                    None => m
                        .uids
                        .users
                        .get(v.file.user(n).as_str())
                        .copied()
                        .ok_or("no uid allocated yet")?,
                };
                let s = spec::build(&m.input(n, &v.file, uid)).map_err(|e| e.to_string())?;
                serde_json::to_value(&s).map_err(|e| e.to_string())
            }),
        };
        let _ = reply.send(answer);
    }

    fn with_vassal(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Manager, &Name) -> Result<serde_json::Value, String>,
    ) -> Response {
        let found = name
            .parse::<Name>()
            .ok()
            .filter(|n| self.vassals.contains_key(n));
        match found {
            Some(n) => match f(self, &n) {
                Ok(v) => Response::ok(v),
                Err(e) => Response::err(e),
            },
            None => match name
                .parse::<Name>()
                .ok()
                .and_then(|n| self.rejected.get(&n).cloned())
            {
                Some(why) => Response::err(format!("{name} is not running: {why}")),
                None => Response::err(format!("no vassal named {name:?}")),
            },
        }
    }

    fn freeze(&mut self, name: &Name, frozen: bool) -> Result<serde_json::Value, String> {
        let v = &self.vassals[name];
        if v.init.is_none() || v.stopping.is_some() {
            return Err(format!("{name} is not running"));
        }
        let is_group = matches!(v.file, VassalFile::Group(_));
        let cg = if is_group {
            self.cfg.layout.group_cgroup(name)
        } else {
            self.cgroup_of(name, v)
        };
        if !frozen {
            if let Some(g) = v.group() {
                if self.suspended_groups.contains(g) {
                    return Err(format!("{name}'s group {g} is suspended; resume the group"));
                }
            }
        }
        self.tree.freeze(&cg, frozen).map_err(|e| e.to_string())?;
        let state = if frozen {
            State::Suspended
        } else {
            State::Running
        };
        self.vassals.get_mut(name).expect("present").state = state;
        if is_group {
            if frozen {
                self.suspended_groups.insert(name.clone());
            } else {
                self.suspended_groups.remove(name);
                // Sites frozen on their own stay frozen; the others run again.
                let sites: Vec<Name> = self
                    .vassals
                    .iter()
                    .filter(|(_, s)| s.group() == Some(name))
                    .map(|(n, _)| n.clone())
                    .collect();
                for s in sites {
                    let cg = self.cgroup_of(&s, &self.vassals[&s]);
                    let own = self.tree.is_frozen(&cg).unwrap_or(false);
                    let sv = self.vassals.get_mut(&s).expect("present");
                    if sv.init.is_some() {
                        sv.state = if own {
                            State::Suspended
                        } else {
                            State::Running
                        };
                    } else if sv.state == State::Stopped && sv.stopping.is_none() {
                        sv.state = State::Starting;
                        self.start(&s);
                    }
                }
            }
        }
        tracing::info!(vassal = %name, frozen, "freezer");
        Ok(serde_json::json!(if frozen {
            "suspended"
        } else {
            "running"
        }))
    }

    fn status(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for (name, v) in &self.vassals {
            let mut state = v.state;
            let mut reason = v.reason.clone();
            if let Some(g) = v.group() {
                if self.suspended_groups.contains(g) && v.init.is_some() {
                    state = State::Suspended;
                    reason.get_or_insert_with(|| format!("group {g} is suspended"));
                }
            }
            let cgroup = self.cgroup_of(name, v);
            let usage = v
                .init
                .as_ref()
                .and_then(|_| self.tree.stats(&cgroup).ok())
                .map(|s| Usage {
                    memory: s.memory,
                    pids: s.pids,
                });
            rows.push(Row {
                name: name.to_string(),
                kind: Some(v.file.kind()),
                group: v
                    .group()
                    .map(|g| g.to_string())
                    .or_else(|| matches!(v.file, VassalFile::Group(_)).then(|| name.to_string())),
                state,
                pid: v.init.as_ref().map(|i| i.pidfd.pid()),
                uid: v.uid,
                user: Some(v.file.user(name).to_string()),
                cgroup: Some(cgroup),
                limits: Some(v.file.limits().clone()),
                dynamic: v.dynamic,
                usage,
                restarts: v.restarts,
                reason,
            });
        }
        for (name, why) in &self.rejected {
            if !self.vassals.contains_key(name) {
                rows.push(Row::rejected(name, why.clone()));
            }
        }
        for (name, path, why) in &self.shadowed {
            rows.push(Row::rejected(name, format!("{}: {why}", path.display())));
        }
        rows
    }
}

/// What a login link points at: the record, relative to the links' directory.
fn login_target(name: &Name) -> PathBuf {
    PathBuf::from(format!("../vassals/{name}.json"))
}

/// Points `<run-dir>/logins/<user>` at the vassal's record (atomically: a new
/// link renamed over the old one).
fn link_login(l: &model::layout::Layout, user: &Name, name: &Name) -> std::io::Result<()> {
    let link = l.login(user);
    if std::fs::read_link(&link).is_ok_and(|t| t == login_target(name)) {
        return Ok(());
    }
    std::fs::create_dir_all(l.logins_dir())?;
    let tmp = l.logins_dir().join(format!(".{user}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(login_target(name), &tmp)?;
    std::fs::rename(&tmp, &link)
}

/// Runs a cgroup call that may wait for the kernel on tokio's blocking pool.
async fn off_loop(tree: &Arc<dyn CgroupTree>, f: impl FnOnce(&dyn CgroupTree) + Send + 'static) {
    let tree = tree.clone();
    let _ = tokio::task::spawn_blocking(move || f(&*tree)).await;
}
