//! What the emperor derives from its state for others to read, each in one
//! place: the uid and NSS tables, the runtime records and login links (for
//! the PAM module), the ssh keys (for sshd) and the dominion (for the router).

use super::*;

/// What a login link points at: the record, relative to the links' directory.
pub(super) fn login_target(name: &Name) -> PathBuf {
    PathBuf::from(format!("../vassals/{name}.json"))
}

/// Points `<run-dir>/logins/<user>` at the vassal's record (atomically: a new
/// link renamed over the old one).
pub(super) fn link_login(
    l: &model::layout::Layout,
    user: &Name,
    name: &Name,
) -> std::io::Result<()> {
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

impl Manager {
    /// Puts the uids given since the last save on disk. The NSS table made
    /// from them is written after the starts that wait for this (see
    /// [`Manager::refresh_nss`]): nothing in a start reads it, and it is a
    /// new copy of every tenant's entry.
    /// Gives these users their uids, if they have none, and writes the
    /// table once for all of them (one durable write instead of one a start).
    pub(super) fn allocate_uids(&mut self, users: &[Name]) {
        // In a cluster a uid is the cluster's: none is made here.
        if self.cfg.cluster.is_some() {
            return;
        }
        let mut allocated = false;
        for user in users {
            allocated |= self
                .uids
                .allocate(user.as_str())
                .map(|(_, changed)| changed)
                .unwrap_or(false);
        }
        if allocated {
            self.uids_unsaved = true;
            match self.save_uids() {
                Ok(()) => self.uids_unsaved = false,
                Err(e) => tracing::error!(error = %e, "saving the uid table failed"),
            }
        }
    }

    /// Takes the cluster's uids into the host's table, saved before the
    /// answer: a file is copied here only once its uid is on disk.
    pub(super) fn adopt_uids(&mut self, given: Vec<(Name, u32)>) -> Result<(), String> {
        let mut refused = Vec::new();
        let mut changed = false;
        for (login, uid) in given {
            self.cluster_refused.remove(&login);
            match self.uids.adopt(login.as_str(), uid) {
                Ok(c) => changed |= c,
                Err(e) => refused.push(e.to_string()),
            }
        }
        if changed {
            self.save_uids()
                .map_err(|e| format!("saving the uid table: {e}"))?;
        }
        match refused.is_empty() {
            true => Ok(()),
            false => Err(refused.join("; ")),
        }
    }

    pub(super) fn save_uids(&mut self) -> std::io::Result<()> {
        self.uids.commit(&self.cfg.layout.uid_table())?;
        self.nss_stale = true;
        Ok(())
    }

    /// Writes the NSS table if tenants were added since it was written (a
    /// failure is logged and tried again after the next starts).
    pub(super) fn refresh_nss(&mut self) {
        if !self.nss_stale {
            return;
        }
        match self.write_nss() {
            Ok(()) => self.nss_stale = false,
            Err(e) => tracing::error!(error = %e, "writing the NSS table failed"),
        }
    }

    /// Every tenant ever given a uid, for `getent passwd` and `ls -l` on the host
    /// (archived homes keep their owner's name).
    pub(super) fn write_nss(&self) -> std::io::Result<()> {
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
        // Derived from the uid table (which is written durably first) and
        // written again at every start of the emperor: replaced whole, without
        // the fsyncs that a new tenant's start would wait for.
        model::atomic::replace(
            &self.cfg.layout.nss_table(),
            &model::nss::encode(&tenants),
            0o644,
        )
    }

    /// Tells the router (through `<run-dir>/router/dominion.json`) which site
    /// owns which domains, each site's public key and whether it is suspended.
    /// Called after every event, and written only when it changed. A site's
    /// entry is built again only when a scan acted on its file (or it is
    /// new); the others are checked in place for what their states change
    /// (uid, suspension, address), so an event costs no allocation per site.
    pub fn publish_dominion(&mut self) {
        use model::subscription::SiteRoutes;
        let mut changed = std::mem::take(&mut self.dominion_unwritten);
        let dirty = std::mem::take(&mut self.dominion_dirty);
        let mut d = std::mem::take(&mut self.dominion);
        d.schema_version = 1;
        let mut routed = 0;
        // The entries changed, whose text is made again.
        let mut touched: Vec<&Name> = Vec::new();
        // A site's key, derived when its entry is built or its uid moved.
        let key = |name: &Name, uid: u32| {
            self.site_keys
                .public(name, uid)
                .map_err(
                    |e| tracing::warn!(vassal = %name, error = %e, "no key pair for the router"),
                )
                .ok()
        };
        for (name, v) in &self.vassals {
            let Some((s, uid, suspended)) = self.routed(v) else {
                if d.sites.remove(name.as_str()).is_some() {
                    changed = true;
                    touched.push(name);
                }
                continue;
            };
            let address = self.v4_of(name);
            let entry = d.sites.get_mut(name.as_str());
            let kept = match entry {
                // Its file is what it was: only what its state gives may move.
                Some(e) if !dirty.contains(name) => {
                    if e.uid != Some(uid) {
                        match key(name, uid) {
                            Some(k) => e.public_key = k,
                            None => {
                                d.sites.remove(name.as_str());
                                changed = true;
                                touched.push(name);
                                continue;
                            }
                        }
                    }
                    if e.uid != Some(uid) || e.suspended != suspended || e.address != address {
                        e.uid = Some(uid);
                        e.suspended = suspended;
                        e.address = address;
                        changed = true;
                        touched.push(name);
                    }
                    true
                }
                _ => false,
            };
            if !kept {
                let Some(public_key) = key(name, uid) else {
                    if d.sites.remove(name.as_str()).is_some() {
                        changed = true;
                        touched.push(name);
                    }
                    continue;
                };
                let new = SiteRoutes {
                    public_key,
                    domains: s.domains.iter().map(|x| x.to_string()).collect(),
                    sockets: self.cfg.layout.sockets(name).display().to_string(),
                    uid: Some(uid),
                    suspended,
                    // Set while a site moves to another host: not done by this emperor yet.
                    moving: Vec::new(),
                    requests: s.limits.requests,
                    address,
                };
                if d.sites.get(name.as_str()) != Some(&new) {
                    d.sites.insert(name.to_string(), new);
                    changed = true;
                    touched.push(name);
                }
            }
            routed += 1;
        }
        // Entries of vassals gone.
        if d.sites.len() != routed {
            d.sites.retain(|n, _| {
                self.vassals
                    .get(n.as_str())
                    .and_then(|v| self.routed(v))
                    .is_some()
            });
            self.dominion_text.retain(|n| d.sites.contains_key(n));
            changed = true;
        }
        for name in touched {
            match d.sites.get(name.as_str()) {
                Some(r) => self.dominion_text.set(name.as_str(), r),
                None => self.dominion_text.remove(name.as_str()),
            }
        }
        self.dominion = d;
        if !changed {
            return;
        }
        let bytes = self.dominion_text.to_vec();
        // Every test run checks the text follows the entries.
        debug_assert_eq!(
            bytes,
            serde_json::to_vec(&self.dominion).unwrap_or_default(),
            "the dominion's text and entries differ"
        );
        let dir = self.cfg.layout.router_dir();
        let _ = std::fs::create_dir_all(&dir);
        // Root's only: the directory is shared into every container, and a
        // site learns no other customer's domains.
        if let Err(e) = model::atomic::replace(&self.cfg.layout.dominion(), &bytes, 0o600) {
            self.dominion_unwritten = true;
            tracing::warn!(error = %e, "writing the dominion failed")
        }
    }

    /// A site the router is told of: its file, its uid, and whether it is
    /// suspended (itself, or its group).
    fn routed<'a>(&self, v: &'a Vassal) -> Option<(&'a model::config::SiteFile, u32, bool)> {
        let (VassalFile::Site(s), Some(uid)) = (&v.file, v.uid) else {
            return None;
        };
        let frozen = s
            .group
            .as_ref()
            .is_some_and(|g| self.suspended_groups.contains(g));
        Some((s, uid, v.life.state == State::Suspended || frozen))
    }

    pub(super) fn write_record(&self, name: &Name) {
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
    pub(super) fn remove_record(&self, name: &Name, file: &VassalFile) {
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
    pub(super) fn sync_ssh_keys(&mut self, want: &BTreeMap<Name, VassalFile>) {
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
                self.install_ssh_keys(user, text);
            }
        }
        self.ssh_keys = Some(now);
    }

    /// Installs the keys of one more vassal let run (see [`Manager::sync_ssh_keys`]).
    pub(super) fn ssh_keys_added(&mut self, name: &Name, file: &VassalFile) {
        let keys = &file.container().ssh_keys;
        if keys.is_empty() {
            return;
        }
        let (user, text) = (file.user(name), keys.join("\n") + "\n");
        if self.ssh_keys.as_ref().and_then(|k| k.get(&user)) != Some(&text) {
            self.install_ssh_keys(&user, &text);
        }
        self.ssh_keys.get_or_insert_default().insert(user, text);
    }

    /// Removes the keys of a vassal whose file is gone (see [`Manager::sync_ssh_keys`]).
    pub(super) fn ssh_keys_removed(&mut self, name: &Name) {
        let Some(v) = self.vassals.get(name) else {
            return;
        };
        let user = v.file.user(name);
        if self
            .ssh_keys
            .as_mut()
            .and_then(|k| k.remove(&user))
            .is_some()
        {
            let _ = std::fs::remove_file(self.cfg.layout.ssh_keys(&user));
        }
    }

    fn install_ssh_keys(&self, user: &Name, text: &str) {
        let path = self.cfg.layout.ssh_keys(user);
        if let Err(e) = model::atomic::replace(&path, text.as_bytes(), 0o644) {
            tracing::error!(user = %user, error = %e, "installing ssh keys failed");
        }
    }
}
