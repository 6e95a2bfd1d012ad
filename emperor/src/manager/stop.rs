//! A vassal's stop, run off the loop: thaw, SIGTERM, the grace, a kill of its
//! cgroup, the cgroup's removal; `StopDone` follows.

use super::*;

/// Runs a cgroup call that may wait for the kernel on tokio's blocking pool.
pub(super) async fn off_loop(
    tree: &Arc<dyn CgroupTree>,
    f: impl FnOnce(&dyn CgroupTree) + Send + 'static,
) {
    let tree = tree.clone();
    let _ = tokio::task::spawn_blocking(move || f(&*tree)).await;
}

impl Manager {
    /// The stop itself, off the loop: thaw, SIGTERM, the grace, a kill of
    /// the cgroup, its removal; `StopDone` follows.
    pub(super) fn stop_task(&mut self, name: &Name) {
        let Some(v) = self.vassals.get(name) else {
            return;
        };
        let cgroup = self.cgroup_of(name, v);
        let group_cg =
            matches!(v.file, VassalFile::Group(_)).then(|| self.cfg.layout.group_cgroup(name));
        let init = v.init.as_ref().map(|i| i.pidfd.clone());
        // Moved to another host: killed while still frozen (a signal waits
        // for the thaw, and a killed task runs no more of its own code).
        let hard = self.moved_away.remove(name);
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
                if hard {
                    let _ = tree.kill_all(&c);
                }
                for cg in g.iter().chain(std::iter::once(&c)) {
                    if tree.is_frozen(cg).unwrap_or(false) {
                        let _ = tree.freeze(cg, false);
                    }
                }
            })
            .await;
            if let Some(pidfd) = init {
                let _ = pidfd.signal(libc::SIGTERM);
                let ended = tokio::time::timeout(grace, sys::pidfd::exited(pidfd.clone()))
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
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        sys::pidfd::exited(pidfd.clone()),
                    )
                    .await;
                }
                let _ = pidfd.try_reap();
            }
            // The init's death ends its pid namespace; wait for the cgroup to empty.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while tree.procs(&cgroup).map(|p| !p.is_empty()).unwrap_or(false)
                && tokio::time::Instant::now() < deadline
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
}
