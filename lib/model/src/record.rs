//! The runtime record of a running vassal: enough to find and verify its init
//! after an emperor restart, and for the PAM module to find the container.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::Kind;
use crate::name::Name;

/// The current record schema.
pub const SCHEMA_VERSION: u32 = 1;

/// One running vassal, as written in the run directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VassalRecord {
    /// Always [`SCHEMA_VERSION`] when written by this build.
    pub schema_version: u32,
    /// The vassal's name.
    pub name: Name,
    /// Group or site.
    pub kind: Kind,
    /// The container's init, in the host's pid namespace.
    pub pid: i32,
    /// The init's start time in clock ticks since boot (`/proc/PID/stat` field 22):
    /// together with `pid`, the identity of the process (pids are reused).
    pub start_time: u64,
    /// The tenant's uid (and gid).
    pub uid: u32,
    /// The cgroup path relative to each hierarchy's root.
    pub cgroup: String,
    /// The cgroup's directories, one per hierarchy (v1) or one (v2): where an
    /// SSH session writes its pid to be charged to the site.
    #[serde(default)]
    pub cgroup_dirs: Vec<std::path::PathBuf>,
    /// The accepted vassal file the init runs with (as JSON), so that a new
    /// emperor can tell an in-place update from a restart.
    pub config: serde_json::Value,
}

impl VassalRecord {
    /// Reads a record; `Ok(None)` when there is none.
    pub fn load(path: &Path) -> io::Result<Option<VassalRecord>> {
        match std::fs::read(path) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether `pid` under `proc_root` is still the very process this record names.
    pub fn is_alive(&self, proc_root: &Path) -> bool {
        start_time(proc_root, self.pid).ok() == Some(self.start_time)
    }
}

/// The start time of `pid` in clock ticks since boot, from `/proc/PID/stat`.
pub fn start_time(proc_root: &Path, pid: i32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: parse after the last ')'.
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/PID/stat");
    let rest = &stat[stat.rfind(')').ok_or_else(bad)? + 1..];
    // rest starts at field 3 (state); start time is field 22.
    rest.split_ascii_whitespace()
        .nth(19)
        .and_then(|f| f.parse().ok())
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self_is_stable_and_checked() {
        let me = std::process::id() as i32;
        let t = start_time(Path::new("/proc"), me).unwrap();
        assert_eq!(start_time(Path::new("/proc"), me).unwrap(), t);
        let rec = VassalRecord {
            schema_version: SCHEMA_VERSION,
            name: "site1".parse().unwrap(),
            kind: Kind::Site,
            pid: me,
            start_time: t,
            uid: 30000,
            cgroup: "imperium/_admin/site1".into(),
            cgroup_dirs: vec!["/sys/fs/cgroup/imperium/_admin/site1".into()],
            config: serde_json::json!({"kind": "site"}),
        };
        assert!(rec.is_alive(Path::new("/proc")));
        let reused = VassalRecord {
            start_time: t + 1,
            ..rec.clone()
        };
        assert!(!reused.is_alive(Path::new("/proc")));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("site1.json");
        crate::atomic::write_json(&p, &rec, 0o644).unwrap();
        assert_eq!(VassalRecord::load(&p).unwrap(), Some(rec));
        assert_eq!(
            VassalRecord::load(&dir.path().join("none.json")).unwrap(),
            None
        );
    }

    #[test]
    fn stat_with_odd_command_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("7")).unwrap();
        let fields: Vec<String> = (3..=30).map(|i| i.to_string()).collect();
        std::fs::write(
            dir.path().join("7/stat"),
            format!("7 (a ) b) {}", fields.join(" ")),
        )
        .unwrap();
        assert_eq!(start_time(dir.path(), 7).unwrap(), 22);
    }
}
