//! The rows of `emperor status`.

use super::storage::DiskQuery;
use super::*;
use std::borrow::Cow;

/// One row of `emperor status` (and of the API's `/v1/vassals`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Row {
    /// The vassal.
    name: String,
    /// `site` or `group` (absent: its file was refused).
    #[schema(value_type = Option<String>)]
    kind: Option<Kind>,
    /// Its group (a group: itself).
    group: Option<String>,
    /// `starting`, `running`, `suspended`, `stopped`, `failed`, `rejected`.
    #[schema(value_type = String)]
    state: State,
    /// Its init, in the host's pid namespace.
    pid: Option<i32>,
    /// The tenant's uid.
    uid: Option<u32>,
    /// The tenant's login name.
    user: Option<String>,
    /// Its cgroup, relative to each hierarchy's root.
    cgroup: Option<String>,
    /// Its address, with site networking.
    address: Option<String>,
    /// Its `[limits]`, as in its file.
    #[schema(value_type = Option<Object>)]
    limits: Option<model::config::Limits>,
    /// Accepted beyond an overcommit group's limits.
    dynamic: bool,
    /// What it uses now (running vassals).
    usage: Option<Usage>,
    /// Restarts of its init.
    restarts: u32,
    /// Why it is not running, or why its last edit was refused.
    reason: Option<String>,
}

/// What a running vassal uses.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// Memory in use, bytes.
    memory: u64,
    /// Processes and threads.
    pids: u64,
    /// Bytes on disk, where `storage` is enforced (the kernel's count).
    #[serde(skip_serializing_if = "Option::is_none")]
    storage: Option<u64>,
    /// The cap the kernel enforces (absent: none, or not enforced).
    #[serde(skip_serializing_if = "Option::is_none")]
    storage_limit: Option<u64>,
    /// Files and directories, where the backend counts them.
    #[serde(skip_serializing_if = "Option::is_none")]
    inodes: Option<u64>,
    /// Their cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    inodes_limit: Option<u64>,
}

impl Row {
    /// A site of `group`'s, as its reseller is shown it (`None`: not one).
    pub(super) fn site_of(&self, group: &Name) -> Option<model::usage::SiteState> {
        if self.kind != Some(Kind::Site) || self.group.as_deref() != Some(group.as_str()) {
            return None;
        }
        let state = serde_json::to_value(self.state).ok()?;
        Some(model::usage::SiteState {
            name: self.name.clone(),
            state: state.as_str()?.to_owned(),
            reason: self.reason.clone(),
            restarts: self.restarts,
            memory: self.usage.as_ref().map(|u| u.memory),
            storage: self.usage.as_ref().and_then(|u| u.storage),
            storage_limit: self.usage.as_ref().and_then(|u| u.storage_limit),
        })
    }

    /// The row of a file that runs nothing.
    pub(super) fn rejected(name: &Name, reason: String) -> Row {
        Row {
            name: name.to_string(),
            kind: None,
            group: None,
            state: State::Rejected,
            pid: None,
            uid: None,
            user: None,
            cgroup: None,
            address: None,
            limits: None,
            dynamic: false,
            usage: None,
            restarts: 0,
            reason: Some(reason),
        }
    }
}

/// What a row's usage is read from: its cgroup (the row's), and its disk
/// counters where storage is enforced.
pub(super) struct Probe {
    row: usize,
    disk: Option<DiskQuery>,
}

/// Which rows.
#[derive(Clone, Copy)]
pub(super) enum Which<'a> {
    All,
    One(&'a str),
    /// The sites of these groups.
    SitesOf(&'a BTreeSet<Name>),
}

/// What reads usage, apart from the manager: status is answered off the
/// loop, so that 10,000 rows never hold up starts and exits.
#[derive(Clone)]
pub(super) struct Readers {
    tree: Arc<dyn CgroupTree>,
    storage: crate::storage::Backend,
    layout: model::Layout,
    kept: Arc<std::sync::Mutex<sys::cgroup::KeptUsage>>,
}

impl Readers {
    /// Fills in what each probed row uses now (cgroups read in one batch,
    /// through the files kept open since an earlier read).
    pub(super) fn fill(&self, rows: &mut [Row], probes: &[Probe]) {
        self.fill_from(rows, probes, false);
    }

    /// [`Readers::fill`] for a full status: the rows are every running
    /// vassal, and the files kept for any other cgroup are closed.
    /// Concurrent calls read one after the other.
    pub(super) fn fill_all(&self, rows: &mut [Row], probes: &[Probe]) {
        self.fill_from(rows, probes, true);
    }

    fn fill_from(&self, rows: &mut [Row], probes: &[Probe], all: bool) {
        let used = {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            kept.read(&*self.tree, &Self::paths(rows, probes), all)
        };
        let used = used.into_iter().map(Result::ok).collect();
        self.fill_with(rows, probes, used);
    }

    fn paths<'a>(rows: &'a [Row], probes: &[Probe]) -> Vec<&'a str> {
        probes
            .iter()
            .map(|p| rows[p.row].cgroup.as_deref().unwrap_or_default())
            .collect()
    }

    fn fill_with(&self, rows: &mut [Row], probes: &[Probe], used: Vec<Option<(u64, u64)>>) {
        for (p, used) in probes.iter().zip(used) {
            let Some((memory, pids)) = used else { continue };
            let disk = p
                .disk
                .as_ref()
                .and_then(|q| q.read(&self.storage, &self.layout));
            rows[p.row].usage = Some(Usage {
                memory,
                pids,
                storage: disk.map(|d| d.bytes),
                storage_limit: disk.and_then(|d| d.bytes_limit),
                inodes: disk.and_then(|d| d.inodes),
                inodes_limit: disk.and_then(|d| d.inodes_limit),
            });
        }
    }
}

impl Manager {
    /// One vassal's row (its usage read from the kernel for it alone).
    pub(super) fn status_of(&self, name: &str) -> Option<Row> {
        self.rows_with_usage(Which::One(name)).pop()
    }

    fn rows_with_usage(&self, which: Which) -> Vec<Row> {
        let (mut rows, probes) = self.rows(which);
        self.readers().fill(&mut rows, &probes);
        rows
    }

    pub(super) fn readers(&self) -> Readers {
        Readers {
            tree: self.tree.clone(),
            storage: self.storage.clone(),
            layout: self.cfg.layout.clone(),
            kept: self.kept.clone(),
        }
    }

    /// Every row, its usage read and the answer written off the loop.
    pub(super) fn answer_status(&self, reply: oneshot::Sender<Response>) {
        let (mut rows, probes) = self.rows(Which::All);
        let readers = self.readers();
        tokio::task::spawn_blocking(move || {
            readers.fill_all(&mut rows, &probes);
            // Written straight from the rows: 10,000 of them never become a
            // tree of values to build, write and free.
            let _ = reply.send(Response::ok_raw(
                serde_json::to_vec(&rows).unwrap_or_default(),
            ));
        });
    }

    /// Each name's state and reason as `status` shows them, with its group,
    /// and nothing else (the rest of a row costs paths and strings for every
    /// vassal): what the event streams compare after every event. A name is
    /// told by what holds it: a file shadowed by another of the same name
    /// shows in `status` and in its reseller's refusals, not on the streams
    /// (keyed by name, they would otherwise tell two states for one name).
    pub(super) fn each_change(&self, mut f: impl FnMut(&Name, Option<&str>, State, Option<&str>)) {
        for (name, v) in &self.vassals {
            let (state, reason) = self.shown_state(v);
            f(name, row_group(name, v), state, reason.as_deref());
        }
        for (name, why) in &self.rejected {
            if !self.vassals.contains_key(name) {
                f(name, None, State::Rejected, Some(why));
            }
        }
    }

    /// A digest of what [`Manager::each_change`] gives, built without
    /// allocating: the streams look for changes only when it moved.
    pub(super) fn changes_digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        self.each_change(|name, group, state, reason| {
            (name.as_str(), group, state.as_str(), reason).hash(&mut h);
        });
        h.finish()
    }

    /// A vassal's state and reason as shown: a site of a suspended group
    /// shows as suspended.
    fn shown_state<'a>(&self, v: &'a Vassal) -> (State, Option<Cow<'a, str>>) {
        let mut state = v.life.state;
        let mut reason = v.life.reason.as_deref().map(Cow::Borrowed);
        if let Some(g) = v.group() {
            if self.suspended_groups.contains(g) && v.init.is_some() {
                state = State::Suspended;
                reason.get_or_insert_with(|| Cow::Owned(format!("group {g} is suspended")));
            }
        }
        (state, reason)
    }

    /// The rows `which` asks for, without usage, and what to read for the
    /// usage of those whose init runs.
    pub(super) fn rows(&self, which: Which) -> (Vec<Row>, Vec<Probe>) {
        let only = match which {
            Which::One(o) => Some(o),
            _ => None,
        };
        let mut rows = Vec::new();
        let mut probes = Vec::new();
        for (name, v) in &self.vassals {
            if only.is_some_and(|o| o != name.as_str()) {
                continue;
            }
            if let Which::SitesOf(groups) = which {
                if !v.group().is_some_and(|g| groups.contains(g)) {
                    continue;
                }
            }
            let (state, reason) = self.shown_state(v);
            let cgroup = self.cgroup_of(name, v);
            if v.init.is_some() {
                probes.push(Probe {
                    row: rows.len(),
                    disk: self.disk_query(name, v),
                });
            }
            rows.push(Row {
                name: name.to_string(),
                kind: Some(v.file.kind()),
                group: row_group(name, v).map(str::to_owned),
                state,
                pid: v.init.as_ref().map(|i| i.pidfd.pid()),
                uid: v.uid,
                user: Some(v.file.user(name).to_string()),
                address: self.address_of(name),
                cgroup: Some(cgroup),
                limits: Some(v.file.limits().clone()),
                dynamic: v.dynamic,
                usage: None,
                restarts: v.life.restarts,
                reason: reason.map(Cow::into_owned),
            });
        }
        if matches!(which, Which::SitesOf(_)) {
            return (rows, probes);
        }
        for (name, why) in &self.rejected {
            if only.is_some_and(|o| o != name.as_str()) {
                continue;
            }
            if !self.vassals.contains_key(name) {
                rows.push(Row::rejected(name, why.clone()));
            }
        }
        for (name, path, why) in &self.shadowed {
            if only.is_some_and(|o| o != name.as_str()) {
                continue;
            }
            rows.push(Row::rejected(name, format!("{}: {why}", path.display())));
        }
        (rows, probes)
    }
}

/// The group a row belongs to: a site's group, or a group itself.
fn row_group<'a>(name: &'a Name, v: &'a Vassal) -> Option<&'a str> {
    match &v.file {
        VassalFile::Group(_) => Some(name.as_str()),
        VassalFile::Site(_) => v.group().map(Name::as_str),
    }
}
