//! The v1 layout (legacy and hybrid hosts): one hierarchy per controller, a
//! process joined in each, the freezer controller for suspend.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use super::{
    join, kill_pids, mkdir_p, read, read_procs, read_u64, rmdir_tree, settle, write, CgroupError,
    CgroupTree, Limits, Result, Stats, Version, CPU_PERIOD_US,
};

/// The controllers the emperor drives on v1.
pub const CONTROLLERS: [&str; 4] = ["memory", "cpu", "pids", "freezer"];

/// v1 hierarchies, by controller (several controllers may share one mount).
#[derive(Debug, Clone)]
pub struct V1 {
    mounts: BTreeMap<&'static str, PathBuf>,
}

impl V1 {
    /// A tree over these hierarchy roots (each of [`CONTROLLERS`] must be given).
    pub fn new(mounts: BTreeMap<&'static str, PathBuf>) -> Result<V1> {
        for c in CONTROLLERS {
            if !mounts.contains_key(c) {
                return Err(CgroupError::Missing(c));
            }
        }
        Ok(V1 { mounts })
    }

    /// Finds each controller's hierarchy in the text of `/proc/self/mountinfo`.
    pub fn from_mountinfo(text: &str) -> Result<V1> {
        let mut mounts = BTreeMap::new();
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mut r = right.split_whitespace();
            if r.next() != Some("cgroup") {
                continue;
            }
            let opts = r.nth(1).unwrap_or("");
            let Some(point) = left.split_whitespace().nth(4) else {
                continue;
            };
            for c in CONTROLLERS {
                if opts.split(',').any(|o| o == c) {
                    mounts.entry(c).or_insert_with(|| PathBuf::from(point));
                }
            }
        }
        V1::new(mounts)
    }

    /// Every distinct hierarchy root.
    fn roots(&self) -> Vec<&PathBuf> {
        let mut v: Vec<&PathBuf> = self.mounts.values().collect();
        v.sort();
        v.dedup();
        v
    }

    fn dir(&self, controller: &str, path: &str) -> Result<PathBuf> {
        join(&self.mounts[controller], path)
    }
}

impl CgroupTree for V1 {
    fn version(&self) -> Version {
        Version::V1
    }

    fn create(&self, path: &str) -> Result<()> {
        for root in self.roots() {
            mkdir_p(&join(root, path)?)?;
        }
        Ok(())
    }

    fn set_limits(&self, path: &str, l: &Limits) -> Result<()> {
        let mem = self.dir("memory", path)?;
        write(
            &mem,
            "memory.limit_in_bytes",
            &l.memory.map_or("-1".into(), |m| m.to_string()),
        )?;
        let cpu = self.dir("cpu", path)?;
        write(&cpu, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
        let quota = l
            .cpu
            .map_or("-1".into(), |c| super::cpu_quota_us(c).to_string());
        write(&cpu, "cpu.cfs_quota_us", &quota)?;
        write(
            &self.dir("pids", path)?,
            "pids.max",
            &l.pids.map_or("max".into(), |p| p.to_string()),
        )
    }

    fn attach(&self, path: &str, pid: i32) -> Result<()> {
        for root in self.roots() {
            write(&join(root, path)?, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    fn join(&self, path: &str) -> Result<super::Join> {
        let mut fds = Vec::new();
        for root in self.roots() {
            fds.push(super::open_for(
                "open",
                &join(root, path)?.join("tasks"),
                false,
            )?);
        }
        Ok(super::Join::WriteSelf(fds))
    }

    fn procs(&self, path: &str) -> Result<Vec<i32>> {
        read_procs(&self.dir("pids", path)?)
    }

    fn freeze(&self, path: &str, frozen: bool) -> Result<()> {
        let dir = self.dir("freezer", path)?;
        let (want, what) = if frozen {
            ("FROZEN", "freeze")
        } else {
            ("THAWED", "thaw")
        };
        write(&dir, "freezer.state", want)?;
        settle(&dir, what, Duration::from_secs(5), || {
            Ok(read(&dir, "freezer.state")?.trim() == want)
        })
    }

    fn is_frozen(&self, path: &str) -> Result<bool> {
        Ok(read(&self.dir("freezer", path)?, "freezer.state")?.trim() != "THAWED")
    }

    fn kill_all(&self, path: &str) -> Result<()> {
        // v1 has no cgroup.kill: freeze so nothing forks while we kill, kill
        // every task below, thaw so the kills are delivered. A cgroup that
        // will not freeze (a task stuck where the freezer cannot reach it) is
        // killed all the same, and again until nothing is left to kill.
        let dir = self.dir("freezer", path)?;
        write(&dir, "freezer.state", "FROZEN")?;
        let _ = settle(&dir, "freeze", Duration::from_millis(500), || {
            Ok(read(&dir, "freezer.state")?.trim() == "FROZEN")
        });
        let tasks = |dir: &std::path::Path| -> Result<Vec<i32>> {
            let mut pids = Vec::new();
            let mut stack = vec![dir.to_path_buf()];
            while let Some(d) = stack.pop() {
                pids.extend(read_procs(&d)?);
                if let Ok(entries) = std::fs::read_dir(&d) {
                    stack.extend(
                        entries
                            .flatten()
                            .filter(|e| e.path().is_dir())
                            .map(|e| e.path()),
                    );
                }
            }
            Ok(pids)
        };
        kill_pids(&tasks(&dir)?);
        self.freeze(path, false)?;
        settle(&dir, "kill", Duration::from_secs(5), || {
            let left = tasks(&dir)?;
            kill_pids(&left);
            Ok(left.is_empty())
        })
    }

    fn remove(&self, path: &str) -> Result<()> {
        for root in self.roots() {
            rmdir_tree(&join(root, path)?)?;
        }
        Ok(())
    }

    fn stats(&self, path: &str) -> Result<Stats> {
        let (used, pids) = self.usage(path)?;
        let memory = self.dir("memory", path)?;
        Ok(Stats {
            memory: used,
            pids,
            // cpuacct shares the cpu hierarchy on the hosts we know (cpu,cpuacct).
            cpu_usec: self
                .dir("cpu", path)
                .ok()
                .and_then(|d| read_u64(&d, "cpuacct.usage").ok())
                .map(|ns| ns / 1000),
            oom_kills: super::keyed(&memory, "memory.oom_control", "oom_kill"),
        })
    }

    fn open_usage(&self, paths: &[&str], keep: usize) -> Vec<Result<super::Opened>> {
        let (memory, pids) = (&self.mounts["memory"], &self.mounts["pids"]);
        let roots = super::open_root(memory).and_then(|m| Ok((m, super::open_root(pids)?)));
        let (m, p) = match roots {
            Ok(r) => r,
            Err(e) => return super::each_failed(paths, &e),
        };
        super::batch(paths, |i, path| {
            super::UsageFiles::new(
                super::open_at(m.as_fd(), memory, path, "memory.usage_in_bytes")?,
                super::open_at(p.as_fd(), pids, path, "pids.current")?,
            )
            .read_keeping(path, i < keep)
        })
    }

    fn exists(&self, path: &str) -> bool {
        self.dir("pids", path).map(|d| d.is_dir()).unwrap_or(false)
    }

    fn dirs(&self, path: &str) -> Result<Vec<PathBuf>> {
        self.roots().into_iter().map(|r| join(r, path)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 24 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:4 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw
29 25 0:26 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:8 - cgroup cgroup rw,memory
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
31 25 0:28 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,pids
32 25 0:29 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,freezer
";

    #[test]
    fn finds_hierarchies() {
        let t = V1::from_mountinfo(MOUNTINFO).unwrap();
        assert_eq!(t.mounts["cpu"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(t.mounts["memory"], PathBuf::from("/sys/fs/cgroup/memory"));
        let no_freezer: String = MOUNTINFO
            .lines()
            .filter(|l| !l.contains("freezer"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(matches!(
            V1::from_mountinfo(&no_freezer),
            Err(CgroupError::Missing("freezer"))
        ));
    }

    #[test]
    fn limits_and_attach_in_fake_tree() {
        let dir = tempfile::tempdir().unwrap();
        let mounts: BTreeMap<&'static str, PathBuf> = CONTROLLERS
            .iter()
            .map(|c| (*c, dir.path().join(c)))
            .collect();
        let t = V1::new(mounts).unwrap();
        t.create("imperium/g/s").unwrap();
        t.set_limits(
            "imperium/g/s",
            &Limits {
                memory: Some(1 << 30),
                cpu: Some(2.0),
                pids: None,
            },
        )
        .unwrap();
        let f = |c: &str, n: &str| {
            std::fs::read_to_string(dir.path().join(c).join("imperium/g/s").join(n)).unwrap()
        };
        assert_eq!(f("memory", "memory.limit_in_bytes"), "1073741824");
        assert_eq!(f("cpu", "cpu.cfs_quota_us"), "200000");
        assert_eq!(f("pids", "pids.max"), "max");
        t.attach("imperium/g/s", 7).unwrap();
        for c in CONTROLLERS {
            assert_eq!(f(c, "cgroup.procs"), "7");
        }
        let put = |c: &str, n: &str, v: &str| {
            std::fs::write(dir.path().join(c).join("imperium/g/s").join(n), v).unwrap()
        };
        put("memory", "memory.usage_in_bytes", "8192\n");
        put("pids", "pids.current", "2\n");
        assert_eq!(t.usage("imperium/g/s").unwrap(), (8192, 2));
        t.remove("imperium").unwrap();
        for c in CONTROLLERS {
            assert!(!dir.path().join(c).join("imperium").exists());
        }
    }
}
