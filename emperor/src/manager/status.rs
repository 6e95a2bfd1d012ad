//! The rows of `emperor status`.

use std::collections::HashMap;

use super::storage::DiskQuery;
use super::*;

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

/// How old the memory and pids figures of a full `status` may be. Reading
/// them is most of what a status of 10,000 rows costs (two files a site,
/// each a path walk through cgroupfs that the kernel cannot do under RCU),
/// so calls within this of a full read share its figures: a dashboard that
/// asks every second reads the kernel every other time at most.
pub(super) const RECENT: Duration = Duration::from_secs(2);

/// The cgroup figures of the last full `status`, by cgroup, and when they
/// were read.
#[derive(Debug, Default)]
pub(super) struct Recent {
    read_at: Option<Instant>,
    figures: HashMap<String, (u64, u64)>,
}

impl Recent {
    /// The figures of `paths`: those read less than [`RECENT`] before `now`
    /// if every path was read then, else all read again by `read` (and kept;
    /// a cgroup that could not be read is not).
    fn figures(
        &mut self,
        now: Instant,
        paths: &[&str],
        read: impl FnOnce(&[&str]) -> Vec<Result<(u64, u64), sys::cgroup::CgroupError>>,
    ) -> Vec<Option<(u64, u64)>> {
        let fresh = self
            .read_at
            .is_some_and(|t| now.saturating_duration_since(t) < RECENT);
        if fresh && paths.iter().all(|p| self.figures.contains_key(*p)) {
            return paths
                .iter()
                .map(|p| self.figures.get(*p).copied())
                .collect();
        }
        let used: Vec<Option<(u64, u64)>> = read(paths).into_iter().map(Result::ok).collect();
        self.figures = paths
            .iter()
            .zip(&used)
            .filter_map(|(p, u)| Some(((*p).to_owned(), (*u)?)))
            .collect();
        self.read_at = Some(now);
        used
    }
}

/// What reads usage, apart from the manager: status is answered off the
/// loop, so that 10,000 rows never hold up starts and exits.
#[derive(Clone)]
pub(super) struct Readers {
    tree: Arc<dyn CgroupTree>,
    storage: crate::storage::Backend,
    layout: model::Layout,
    recent: Arc<std::sync::Mutex<Recent>>,
}

impl Readers {
    /// Fills in what each probed row uses now (cgroups read in one batch).
    pub(super) fn fill(&self, rows: &mut [Row], probes: &[Probe]) {
        let used = self.tree.usage_all(&Self::paths(rows, probes));
        let used: Vec<_> = used.into_iter().map(Result::ok).collect();
        self.fill_with(rows, probes, used);
    }

    /// [`Readers::fill`] for a full status: the cgroup figures may be up to
    /// [`RECENT`] old. Concurrent calls wait for one read.
    pub(super) fn fill_recent(&self, rows: &mut [Row], probes: &[Probe]) {
        let used = {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            let paths = Self::paths(rows, probes);
            recent.figures(crate::clock::now(), &paths, |p| self.tree.usage_all(p))
        };
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
            recent: self.recent.clone(),
        }
    }

    /// Every row, its usage read and the answer written off the loop.
    pub(super) fn answer_status(&self, reply: oneshot::Sender<Response>) {
        let (mut rows, probes) = self.rows(Which::All);
        let readers = self.readers();
        tokio::task::spawn_blocking(move || {
            readers.fill_recent(&mut rows, &probes);
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
    pub(super) fn each_change(
        &self,
        mut f: impl FnMut(&Name, Option<&str>, State, Option<String>),
    ) {
        for (name, v) in &self.vassals {
            let (state, reason) = self.shown_state(v);
            f(name, row_group(name, v), state, reason);
        }
        for (name, why) in &self.rejected {
            if !self.vassals.contains_key(name) {
                f(name, None, State::Rejected, Some(why.clone()));
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
    fn shown_state(&self, v: &Vassal) -> (State, Option<String>) {
        let mut state = v.life.state;
        let mut reason = v.life.reason.clone();
        if let Some(g) = v.group() {
            if self.suspended_groups.contains(g) && v.init.is_some() {
                state = State::Suspended;
                reason.get_or_insert_with(|| format!("group {g} is suspended"));
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
                reason,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_status_shares_figures_read_within_two_seconds_and_no_older() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let reads = std::cell::Cell::new(0);
        let read = |paths: &[&str]| -> Vec<Result<(u64, u64), sys::cgroup::CgroupError>> {
            reads.set(reads.get() + 1);
            paths
                .iter()
                .map(|p| match *p {
                    "gone" => Err(sys::cgroup::CgroupError::BadPath("gone".into())),
                    _ => Ok((p.len() as u64 + reads.get(), 1)),
                })
                .collect()
        };
        let mut r = Recent::default();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(
            r.figures(at(0), &["a", "bb"], read),
            [Some((2, 1)), Some((3, 1))]
        );
        // Within two seconds: the same figures, the kernel not read.
        assert_eq!(
            r.figures(at(1900), &["bb", "a"], read),
            [Some((3, 1)), Some((2, 1))]
        );
        assert_eq!(reads.get(), 1);
        // A cgroup not read then (a new site): all read again.
        assert_eq!(
            r.figures(at(1900), &["a", "ccc"], read),
            [Some((3, 1)), Some((5, 1))]
        );
        assert_eq!(reads.get(), 2);
        // Two seconds after that read: read again.
        r.figures(at(3900), &["a"], read);
        assert_eq!(reads.get(), 3);
        // A cgroup that could not be read is not kept: it is read next time.
        assert_eq!(
            r.figures(at(3950), &["a", "gone"], read),
            [Some((5, 1)), None]
        );
        r.figures(at(3960), &["a", "gone"], read);
        assert_eq!(reads.get(), 5);
    }
}
