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
    /// Who calls on the containers' shared API socket (see
    /// [`crate::api::Callers`]): a running vassal's user, in its scope (a
    /// group's: the group and its sites; a site's: the site alone).
    pub fn scopes(&self) -> crate::api::Scopes {
        self.scopes.clone()
    }

    /// `v`'s user calls in `name`'s scope from now on (its init runs).
    pub(super) fn know_caller(&self, name: &Name, v: &Vassal) {
        let Some(uid) = v.uid else {
            return;
        };
        let caller = crate::api::Caller {
            name: name.to_string(),
            group: matches!(v.file, VassalFile::Group(_)),
            reseller: v
                .group()
                .map(Name::to_string)
                .or_else(|| matches!(v.file, VassalFile::Group(_)).then(|| name.to_string())),
        };
        let mut scopes = self.scopes.write().unwrap_or_else(|p| p.into_inner());
        scopes.insert(uid, caller);
    }

    /// `v` is gone: its user calls in no scope.
    pub(super) fn forget_caller(&self, name: &Name, v: &Vassal) {
        let Some(uid) = v.uid else {
            return;
        };
        let mut scopes = self.scopes.write().unwrap_or_else(|p| p.into_inner());
        if scopes.get(&uid).is_some_and(|c| c.name == name.as_str()) {
            scopes.remove(&uid);
        }
    }
}

impl Manager {
    /// What the cluster agent reports, for the metrics.
    pub fn cluster_stats(&self) -> Arc<crate::cluster::Stats> {
        self.cluster_stats.clone()
    }

    /// The vassals this engine has, kept up to date for the cluster's
    /// agent (what this host holds).
    pub fn cluster_vassals(
        &mut self,
    ) -> tokio::sync::watch::Receiver<BTreeMap<Name, crate::cluster::Held>> {
        let (tx, rx) = tokio::sync::watch::channel(self.held());
        self.cluster_vassals = Some(tx);
        rx
    }

    /// Each vassal's login, and for a site of a reseller's drop directory
    /// what it claims.
    fn held(&self) -> BTreeMap<Name, crate::cluster::Held> {
        let mut admin = BTreeSet::new();
        let mut dropped = BTreeMap::new();
        for e in self.last_entries.values() {
            match &e.source {
                model::catalog::Source::Admin => {
                    admin.insert(&e.name);
                }
                model::catalog::Source::Drop(g) => {
                    dropped.insert(&e.name, g);
                }
            }
        }
        self.vassals
            .iter()
            .map(|(name, v)| {
                let login = v.file.user(name);
                let claims = match (&v.file, dropped.get(name)) {
                    (VassalFile::Site(s), Some(g)) if !admin.contains(name) => {
                        Some(model::cluster::DroppedClaims {
                            group: (*g).clone(),
                            login: login.clone(),
                            domains: s.domains.iter().map(|d| d.to_string()).collect(),
                        })
                    }
                    _ => None,
                };
                (
                    name.clone(),
                    crate::cluster::Held {
                        has_uid: self.uids.users.contains_key(login.as_str()),
                        login,
                        dropped: claims,
                    },
                )
            })
            .collect()
    }

    /// The admin's writes go to the cluster's agent from now on (its
    /// receiving end is returned).
    pub fn cluster_writes(&mut self) -> mpsc::Receiver<crate::cluster::Ask> {
        let (tx, rx) = mpsc::channel(crate::cluster::WRITES);
        self.cluster_writes = Some(tx);
        rx
    }

    /// The event streams' source.
    pub fn events(&self) -> tokio::sync::broadcast::Sender<Told> {
        self.events.clone()
    }

    /// Tells the event streams what changed since the last call (a state or
    /// its reason; a vassal gone). Called after each batch of events: the
    /// changes are found in place, without building every vassal's again.
    pub fn publish_changes(&mut self) {
        let digest = self.changes_digest();
        if self.told_digest == Some(digest) {
            return;
        }
        if let Some(tx) = &self.cluster_vassals {
            let now = self.held();
            tx.send_if_modified(|held| {
                let changed = *held != now;
                if changed {
                    *held = now;
                }
                changed
            });
        }
        let mut told = std::mem::take(&mut self.told);
        let events = self.events.clone();
        let mut now = 0;
        self.each_change(|name, group, state, reason| {
            now += 1;
            let same = told.get(name).is_some_and(|c| {
                c.group.as_deref() == group
                    && c.state == state.as_str()
                    && c.reason.as_deref() == reason
            });
            if !same {
                let c = Change {
                    vassal: name.to_string(),
                    group: group.map(str::to_owned),
                    state: state.as_str().to_owned(),
                    reason: reason.map(str::to_owned),
                };
                let _ = events.send(Told::State(c.clone()));
                told.insert(name.clone(), c);
            }
        });
        if told.len() != now {
            told.retain(|name, c| {
                let here = self.vassals.contains_key(name) || self.rejected.contains_key(name);
                if !here {
                    let _ = events.send(Told::State(Change {
                        state: "removed".into(),
                        reason: None,
                        ..c.clone()
                    }));
                }
                here
            });
        }
        self.told = told;
    }
}
