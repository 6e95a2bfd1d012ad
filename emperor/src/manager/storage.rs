//! A vassal's `storage`: its qgroups, and what status shows of them.

use super::*;

impl Manager {
    /// The level-1 qgroup a vassal counts in: a group's own, a group's
    /// site's group's; none for an admin site.
    pub(super) fn quota_group(&self, name: &Name, file: &VassalFile) -> Option<u64> {
        let group = match file {
            VassalFile::Group(_) => name.clone(),
            VassalFile::Site(s) => s.group.clone()?,
        };
        let user = match self.vassals.get(&group).map(|v| &v.file) {
            Some(f) => f.user(&group),
            None => group.clone(),
        };
        let uid = self.uids.users.get(user.as_str())?;
        Some(crate::storage::group_qgroup(*uid))
    }

    /// A site that changed group takes its home along, before it starts
    /// again: its files, and its count (see [`crate::storage::move_home`]).
    /// A home already at the new place is kept, and the old one left where
    /// it was (one warning says so).
    pub(super) fn move_home(&mut self, name: &Name, file: &VassalFile, uid: u32) {
        let Some((old, from)) = self.vassals.get_mut(name).and_then(|v| v.moving.take()) else {
            return;
        };
        let VassalFile::Site(s) = file else { return };
        let l = &self.cfg.layout;
        let new = l.site_home(s.group.as_ref(), name);
        if old.symlink_metadata().is_err() || old == new {
            return;
        }
        // A site of a group is reached by `<home-root>/<site>`, a link into
        // the group's tree: it must point at the new place (the start makes
        // it again), or give way to the home itself.
        let link = l.site_link(name);
        if link
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            let _ = std::fs::remove_file(&link);
        }
        if new.symlink_metadata().is_ok() {
            tracing::warn!(vassal = %name, old = %old.display(), new = %new.display(),
                "a home is at the new place already; the old one stays where it was");
            return;
        }
        let to = self.quota_group(name, file);
        match crate::storage::move_home(&self.storage, &old, &new, uid, from, to) {
            Ok(()) => tracing::info!(vassal = %name, old = %old.display(), new = %new.display(),
                "home moved with the site to its new group"),
            Err(e) => tracing::warn!(vassal = %name, old = %old.display(), error = %e,
                "moving the home to the new group failed; it stays where it was"),
        }
    }

    /// Applies a vassal's `storage` again (an edit in place).
    pub(super) fn apply_storage(&self, name: &Name) {
        if !self.storage.enforced() {
            return;
        }
        let Some(v) = self.vassals.get(name) else {
            return;
        };
        let Some(uid) = v.uid else { return };
        let home = self.input(name, &v.file, uid).home();
        let group = self.quota_group(name, &v.file);
        if let Err(e) =
            crate::storage::apply(&self.storage, &self.cfg.layout, &v.file, &home, uid, group)
        {
            tracing::warn!(vassal = %name, error = %e, "storage limit not applied");
        }
    }

    /// Bytes used and their cap, inodes used and their cap, for status;
    /// `None` when not enforced.
    pub(super) fn storage_usage(&self, name: &Name, v: &Vassal) -> Option<model::usage::Disk> {
        self.disk_query(name, v)?
            .read(&self.storage, &self.cfg.layout)
    }

    /// What to ask the disk for a vassal's usage (`None`: not enforced).
    pub(super) fn disk_query(&self, name: &Name, v: &Vassal) -> Option<DiskQuery> {
        if !self.storage.enforced() {
            return None;
        }
        let uid = v.uid?;
        Some(DiskQuery {
            home: self.input(name, &v.file, uid).home(),
            uid,
            group: self.quota_group(name, &v.file),
            is_group: matches!(v.file, VassalFile::Group(_)),
        })
    }

    /// With project quotas, a running vassal's home made before they were on
    /// holds files that count for nobody: once, off the loop, the whole tree
    /// is put into the tenant's project ([`sys::quota::project_tree`]); a
    /// root-owned mark in the state directory says it is done.
    pub(super) fn project_old_homes(&mut self) {
        if !matches!(self.storage, crate::storage::Backend::Project(_)) {
            return;
        }
        for (name, v) in &self.vassals {
            let Some(uid) = v.uid else { continue };
            if v.init.is_none()
                || self.projecting.contains(name)
                || self.cfg.layout.projected(uid).exists()
            {
                continue;
            }
            self.projecting.insert(name.clone());
            let home = self.input(name, &v.file, uid).home();
            let (tx, name) = (self.tx.clone(), name.clone());
            tokio::task::spawn_blocking(move || {
                let result = crate::storage::project_home(&home, uid).map_err(|e| e.to_string());
                let _ = tx.send(Event::Projected { name, uid, result });
            });
        }
    }

    /// A walk of [`Manager::project_old_homes`] ended (a failed one is not
    /// tried again before the emperor restarts).
    pub(super) fn projected(
        &mut self,
        name: &Name,
        uid: u32,
        result: Result<sys::quota::Tree, String>,
    ) {
        match result {
            Ok(tree) => {
                let mark = self.cfg.layout.projected(uid);
                let written = mark
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| model::atomic::write(&mark, b"", 0o600));
                if let Err(e) = written {
                    tracing::warn!(vassal = %name, error = %e, "writing the project mark failed");
                }
                if tree.moved > 0 {
                    tracing::info!(vassal = %name, moved = tree.moved, left = tree.skipped,
                        "files of its home from before quotas now count in its project");
                }
            }
            Err(e) => tracing::warn!(vassal = %name, error = %e,
                "its home's older files could not be put into its project; they do not count"),
        }
    }

    /// Writes each running vassal's disk usage where its vassal reads it
    /// (`<run-dir>/usage/<name>/storage.json`, bound read-only inside), when
    /// it changed.
    pub(super) fn publish_usage(&mut self) {
        if !self.storage.enforced() {
            return;
        }
        let mut now = BTreeMap::new();
        for (name, v) in &self.vassals {
            if v.init.is_none() {
                continue;
            }
            if let Some(d) = self.storage_usage(name, v) {
                now.insert(name.clone(), d);
            }
        }
        for (name, d) in now {
            if self.last_usage.get(&name) == Some(&d) {
                continue;
            }
            let dir = self.cfg.layout.usage_dir(&name);
            let file = dir.join(model::layout::inside::STORAGE_FILE);
            match serde_json::to_vec(&d)
                .map_err(std::io::Error::other)
                .and_then(|b| model::atomic::write(&file, &b, 0o644))
            {
                Ok(()) => {
                    self.last_usage.insert(name, d);
                }
                Err(e) => tracing::warn!(vassal = %name, error = %e, "writing disk usage failed"),
            }
        }
    }
}

/// A vassal's disk counters, to read on or off the loop.
pub(super) struct DiskQuery {
    home: PathBuf,
    uid: u32,
    group: Option<u64>,
    is_group: bool,
}

impl DiskQuery {
    pub(super) fn read(
        &self,
        storage: &crate::storage::Backend,
        layout: &model::Layout,
    ) -> Option<model::usage::Disk> {
        let q = self;
        crate::storage::usage_of(storage, layout, &q.home, q.uid, q.group, q.is_group).ok()
    }
}
