//! Re-adoption of the inits a previous emperor left running, and the watch
//! on each init (its exit comes back as an event).

use std::collections::HashMap;

use super::*;

impl Manager {
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
                    v.life = Life::adopted(frozen, now());
                    tracing::info!(vassal = %rec.name, pid = rec.pid, "adopted");
                    self.watch_init(&rec.name, &mut v, pidfd);
                    self.vassals.insert(rec.name.clone(), v);
                    self.net_stale = true;
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

    /// Watches the init of the vassal's current start (`life.gen`).
    pub(super) fn watch_init(&mut self, name: &Name, v: &mut Vassal, pidfd: Pidfd) {
        self.know_caller(name, v);
        if self.init_watch.is_none() {
            self.init_watch = InitWatch::new(self.tx.clone())
                .inspect_err(|e| tracing::warn!(error = %e, "no epoll for the inits: a task each"))
                .ok();
        }
        let gen = v.life.gen;
        let watched = self.init_watch.as_mut().map(|w| w.add(&pidfd, name, gen));
        let pidfd = Arc::new(pidfd);
        if !matches!(watched, Some(Ok(()))) {
            if let Some(Err(e)) = watched {
                tracing::warn!(vassal = %name, error = %e, "init not in the epoll: a task of its own");
            }
            let (tx, name, fd) = (self.tx.clone(), name.clone(), pidfd.clone());
            tokio::spawn(async move {
                sys::pidfd::exited(fd).await;
                let _ = tx.send(Event::Exited { name, gen });
            });
        }
        v.init = Some(Init { pidfd });
    }
}

/// Every init's exit, watched by one epoll instance that one task reads:
/// each exit comes back as an [`Event::Exited`] with the generation the
/// init was started in. A site costs a registration in the kernel and an
/// entry in `waiting`, instead of a task, a channel and a registration in
/// tokio's reactor (about 1 KiB a site).
pub(super) struct InitWatch {
    exits: Arc<sys::pidfd::Exits>,
    /// Who each token is: the vassal and its init's generation.
    waiting: Arc<std::sync::Mutex<HashMap<u64, (Name, u64)>>>,
    next: u64,
}

impl InitWatch {
    /// The epoll instance, registered with tokio's reactor, and its reader.
    fn new(tx: mpsc::UnboundedSender<Event>) -> std::io::Result<InitWatch> {
        let exits = Arc::new(sys::pidfd::Exits::new()?);
        let afd = exits.clone().registered()?;
        let waiting: Arc<std::sync::Mutex<HashMap<u64, (Name, u64)>>> = Default::default();
        let told = waiting.clone();
        tokio::spawn(async move {
            loop {
                let Ok(mut ready) = afd.readable().await else {
                    return;
                };
                // Cleared before reading: an exit after the read wakes the
                // next round.
                ready.clear_ready();
                let tokens = match afd.get_ref().ready() {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the inits' exits");
                        continue;
                    }
                };
                for token in tokens {
                    let who = told
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&token);
                    if let Some((name, gen)) = who {
                        if tx.send(Event::Exited { name, gen }).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(InitWatch {
            exits,
            waiting,
            next: 0,
        })
    }

    /// Watches `pidfd`, the init of `name` in its generation `gen`.
    fn add(&mut self, pidfd: &Pidfd, name: &Name, gen: u64) -> std::io::Result<()> {
        let token = self.next;
        self.next += 1;
        // In the map first: the exit may be read as soon as it is added.
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.insert(token, (name.clone(), gen));
        if let Err(e) = self.exits.add(pidfd, token) {
            waiting.remove(&token);
            return Err(e);
        }
        Ok(())
    }
}
