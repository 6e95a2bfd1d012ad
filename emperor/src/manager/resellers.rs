//! What a reseller sees from inside its group's container: its sites'
//! states and usage, and its drop directory's refusals, written where the
//! group's vassal reads them (`vassal sites`, and its notifications).

use super::*;

impl Manager {
    /// Writes each running group's `sites.json` (`<run-dir>/usage/<group>/`,
    /// bound read-only at `/run/imperium/usage`), when it changed.
    pub(super) fn publish_sites(&mut self) {
        let groups: BTreeSet<Name> = self
            .vassals
            .iter()
            .filter(|(_, v)| matches!(v.file, VassalFile::Group(_)) && v.init.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        if groups.is_empty() {
            return;
        }
        // Only those groups' sites are read (not every vassal of the host at every scan).
        let (mut rows, probes) = self.rows(status::Which::SitesOf(&groups));
        self.readers().fill(&mut rows, &probes);
        for g in groups {
            let sites = model::usage::Sites {
                sites: rows.iter().filter_map(|r| r.site_of(&g)).collect(),
                refused: self.refused.get(&g).cloned().unwrap_or_default(),
            };
            let Ok(bytes) = serde_json::to_vec(&sites) else {
                continue;
            };
            if self.last_sites.get(&g) == Some(&bytes) {
                continue;
            }
            let file = self
                .cfg
                .layout
                .usage_dir(&g)
                .join(model::layout::inside::SITES_FILE);
            match model::atomic::write(&file, &bytes, 0o644) {
                Ok(()) => {
                    self.last_sites.insert(g, bytes);
                }
                Err(e) => {
                    tracing::warn!(group = %g, error = %e, "writing the group's sites failed")
                }
            }
        }
    }
}

impl Manager {
    /// Each running vassal's own API socket, `api.sock` in
    /// `<run-dir>/api/<name>/` (bound read-only at `/run/imperium/api` in its
    /// container), the tenant's (or reseller's) only: a group's answers for
    /// the group and its sites, a site's for the site alone. Made again
    /// after the emperor restarts (the directory is what is bound, so the
    /// new socket appears in running containers); gone with the vassal.
    pub(super) fn ensure_api_sockets(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let gone: Vec<Name> = self
            .api_sockets
            .keys()
            .filter(|n| !self.vassals.contains_key(*n))
            .cloned()
            .collect();
        for n in gone {
            if let Some(task) = self.api_sockets.remove(&n) {
                task.abort();
            }
            let _ = std::fs::remove_dir_all(self.cfg.layout.api_dir(&n));
        }
        for (name, v) in &self.vassals {
            let (Some(uid), true) = (v.uid, v.init.is_some()) else {
                continue;
            };
            if self.api_sockets.contains_key(name) {
                continue;
            }
            let dir = self.cfg.layout.api_dir(name);
            let path = dir.join(model::layout::inside::API_SOCKET);
            let made = std::fs::create_dir_all(&dir)
                .and_then(|()| {
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                })
                .and_then(|()| match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                })
                .and_then(|()| tokio::net::UnixListener::bind(&path))
                .and_then(|l| {
                    std::os::unix::fs::chown(&path, Some(uid), Some(uid))?;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                    Ok(l)
                });
            match made {
                Ok(listener) => {
                    let scope = crate::api::Serves::Scoped {
                        name: name.to_string(),
                        group: matches!(v.file, VassalFile::Group(_)),
                    };
                    let task = tokio::spawn(crate::api::serve(
                        crate::api::OwnedBy { listener, uid },
                        None,
                        scope,
                        self.tx.clone(),
                        self.events.clone(),
                    ));
                    self.api_sockets.insert(name.clone(), task);
                }
                Err(e) => tracing::warn!(vassal = %name, error = %e, "no API socket for it"),
            }
        }
    }
}

impl Manager {
    /// The event streams' source.
    pub fn events(&self) -> tokio::sync::broadcast::Sender<Told> {
        self.events.clone()
    }

    /// Tells the event streams what changed since the last call (a state or
    /// its reason; a vassal gone). Called after each batch of events.
    pub fn publish_changes(&mut self) {
        let digest = self.changes_digest();
        if self.told_digest == Some(digest) {
            return;
        }
        self.told_digest = Some(digest);
        let now = self.changes_now();
        for (name, c) in &now {
            if self.told.get(name) != Some(c) {
                let _ = self.events.send(Told::State(c.clone()));
            }
        }
        for (name, c) in &self.told {
            if !now.contains_key(name) {
                let _ = self.events.send(Told::State(Change {
                    state: "removed".into(),
                    reason: None,
                    ..c.clone()
                }));
            }
        }
        self.told = now;
    }
}
