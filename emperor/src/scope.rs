//! On a systemd host (cgroup v2), the site tree lives in a scope of its own,
//! `machine.slice/<name>.scope`, made with `Delegate=yes`: systemd owns every
//! cgroup above it and never touches what is inside, and the scope outlives
//! restarts of the emperor's own service (whose `KillMode=process` stops only
//! the emperor). A scope lives as long as it holds a process: a keeper
//! (`sleep infinity`, started by `systemd-run --scope`) sits in its leaf
//! `_keeper`, so the scope's own node holds none and its controllers can be
//! enabled (cgroup v2's rule: no process in an inner node). The keeper goes at
//! `emperor shutdown`, and systemd then removes the scope.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The slice the scope goes in, beside VMs and other containers.
pub const SLICE: &str = "machine.slice";
/// The keeper's leaf in the scope.
const KEEPER: &str = "_keeper";

const CGROUP_FS: &str = "/sys/fs/cgroup";

/// The scope's cgroup, relative to the cgroup2 mount.
pub fn path(name: &str) -> String {
    format!("{SLICE}/{name}.scope")
}

/// Makes sure the scope exists with its keeper in its leaf; returns its
/// cgroup path relative to the cgroup2 mount. An existing scope (the sites of
/// an emperor that is restarting) is taken as it is.
pub fn ensure(name: &str) -> anyhow::Result<String> {
    let rel = path(name);
    let dir = Path::new(CGROUP_FS).join(&rel);
    if !dir.is_dir() {
        let mut keeper = Command::new("systemd-run")
            .args(["--scope", "--quiet", "--collect", "--slice", SLICE])
            .arg(format!("--unit={name}.scope"))
            .args(["--property=Delegate=yes", "--", "sleep", "infinity"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting systemd-run for the site scope: {e}"))?;
        // The cgroup appears before systemd has moved the keeper into it.
        let has_keeper = || {
            std::fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty())
        };
        let deadline = crate::clock::now() + Duration::from_secs(10);
        while !has_keeper() {
            if let Ok(Some(status)) = keeper.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = keeper.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                anyhow::bail!(
                    "systemd-run could not make {rel} ({status}): {}",
                    err.trim()
                );
            }
            if crate::clock::now() > deadline {
                anyhow::bail!("systemd made no {rel} with its keeper within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // The keeper lives on its own; a thread reaps it when it is killed.
        std::thread::spawn(move || keeper.wait());
    }
    // Whatever sits in the scope's own node (the keeper, just made) moves to
    // the keeper's leaf.
    let leaf = dir.join(KEEPER);
    std::fs::create_dir_all(&leaf)?;
    for pid in std::fs::read_to_string(dir.join("cgroup.procs"))?.split_whitespace() {
        std::fs::write(leaf.join("cgroup.procs"), pid)?;
    }
    let left = std::fs::read_to_string(dir.join("cgroup.procs"))?;
    if !left.trim().is_empty() {
        anyhow::bail!(
            "{rel} still holds processes of its own ({}): its controllers cannot be enabled",
            left.trim()
        );
    }
    Ok(rel)
}

/// Removes the site tree from the scope (every site stopped), then ends the
/// keeper: systemd then finds the scope empty and removes it with the
/// keeper's leaf. Nothing here is removed once the keeper is killed, so that
/// systemd's removal never runs beside ours (a directory it listed and found
/// gone would stop its walk and leave the scope behind).
pub fn release(tree: &dyn sys::cgroup::CgroupTree, rel: &str) {
    let dir: PathBuf = Path::new(CGROUP_FS).join(rel);
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        if name != KEEPER && e.file_type().is_ok_and(|t| t.is_dir()) {
            if let Err(err) = tree.remove(&format!("{rel}/{}", name.to_string_lossy())) {
                tracing::warn!("removing {rel}/{}: {err}", name.to_string_lossy());
            }
        }
    }
    let _ = std::fs::write(dir.join(KEEPER).join("cgroup.kill"), "1");
}
