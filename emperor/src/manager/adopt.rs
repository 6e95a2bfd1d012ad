//! Re-adoption of the inits a previous emperor left running, and the watch
//! on each init (its exit comes back as an event).

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
    pub(super) fn watch_init(&self, name: &Name, v: &mut Vassal, pidfd: Pidfd) {
        self.know_caller(name, v);
        let pidfd = Arc::new(pidfd);
        let (done_tx, done_rx) = watch::channel(false);
        let tx = self.tx.clone();
        let (name, gen) = (name.clone(), v.life.gen);
        let fd = pidfd.clone();
        tokio::spawn(async move {
            sys::pidfd::exited(fd).await;
            let _ = done_tx.send(true);
            let _ = tx.send(Event::Exited { name, gen });
        });
        v.init = Some(Init {
            pidfd,
            exited: done_rx,
        });
    }
}
