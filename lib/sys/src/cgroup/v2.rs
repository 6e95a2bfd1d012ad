//! The unified (v2) hierarchy: one tree, controllers enabled in
//! `cgroup.subtree_control` down the path, no processes in inner nodes.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    join, mkdir_p, read, read_procs, rmdir_tree, settle, write, CgroupTree, Limits, Result, Stats,
    Version, CPU_PERIOD_US,
};

/// The controllers the emperor enables for its subtree.
const WANTED: &[&str] = &["cpu", "memory", "pids"];

/// A v2 tree rooted at a cgroup2 mount (or a fake tree in tests).
#[derive(Debug, Clone)]
pub struct V2 {
    root: PathBuf,
    /// The cgroup delegated to us (relative to `root`), when another manager
    /// (systemd) owns what is above it: nothing above it is written, and it
    /// is never removed itself.
    delegated: Option<PathBuf>,
}

impl V2 {
    /// A tree rooted at `root` (normally `/sys/fs/cgroup`), all of it ours.
    pub fn new(root: PathBuf) -> V2 {
        V2 {
            root,
            delegated: None,
        }
    }

    /// A tree of which only `delegated` (a path below `root`, such as a
    /// systemd scope with `Delegate=yes`) and what is below it are ours.
    pub fn delegated(root: PathBuf, delegated: &str) -> Result<V2> {
        join(&root, delegated)?;
        Ok(V2 {
            root,
            delegated: Some(PathBuf::from(delegated)),
        })
    }

    /// Whether the cgroup at `rel` (relative to the root) is ours to write.
    fn ours(&self, rel: &Path) -> bool {
        self.delegated.as_ref().is_none_or(|d| rel.starts_with(d))
    }

    fn dir(&self, path: &str) -> Result<PathBuf> {
        join(&self.root, path)
    }

    fn frozen(dir: &Path) -> Result<bool> {
        Ok(read(dir, "cgroup.events")?
            .lines()
            .any(|l| l.trim() == "frozen 1"))
    }
}

impl CgroupTree for V2 {
    fn version(&self) -> Version {
        Version::V2
    }

    fn create(&self, path: &str) -> Result<()> {
        let leaf = self.dir(path)?;
        mkdir_p(&leaf)?;
        let top = match &self.delegated {
            Some(d) => self.root.join(d),
            None => self.root.clone(),
        };
        let available = read(&top, "cgroup.controllers")?;
        let enable: Vec<String> = WANTED
            .iter()
            .filter(|c| available.split_whitespace().any(|a| a == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if enable.is_empty() {
            return Ok(());
        }
        // Enable the controllers in every ancestor of the leaf that is ours,
        // from the top down.
        let mut rel = PathBuf::new();
        for part in Path::new(path)
            .parent()
            .into_iter()
            .flat_map(|p| p.components())
        {
            if self.ours(&rel) {
                write(
                    &self.root.join(&rel),
                    "cgroup.subtree_control",
                    &enable.join(" "),
                )?;
            }
            rel.push(part);
        }
        write(
            &self.root.join(&rel),
            "cgroup.subtree_control",
            &enable.join(" "),
        )
    }

    fn set_limits(&self, path: &str, l: &Limits) -> Result<()> {
        let dir = self.dir(path)?;
        write(
            &dir,
            "memory.max",
            &l.memory.map_or("max".into(), |m| m.to_string()),
        )?;
        let quota = l
            .cpu
            .map_or("max".into(), |c| super::cpu_quota_us(c).to_string());
        write(&dir, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
        write(
            &dir,
            "pids.max",
            &l.pids.map_or("max".into(), |p| p.to_string()),
        )
    }

    fn attach(&self, path: &str, pid: i32) -> Result<()> {
        write(&self.dir(path)?, "cgroup.procs", &pid.to_string())
    }

    fn join(&self, path: &str) -> Result<super::Join> {
        Ok(super::Join::IntoCgroup(super::open_for(
            "open",
            &self.dir(path)?,
            true,
        )?))
    }

    fn procs(&self, path: &str) -> Result<Vec<i32>> {
        read_procs(&self.dir(path)?)
    }

    fn freeze(&self, path: &str, frozen: bool) -> Result<()> {
        let dir = self.dir(path)?;
        write(&dir, "cgroup.freeze", if frozen { "1" } else { "0" })?;
        let what = if frozen { "freeze" } else { "thaw" };
        settle(&dir, what, Duration::from_secs(5), || {
            Ok(V2::frozen(&dir)? == frozen)
        })
    }

    fn is_frozen(&self, path: &str) -> Result<bool> {
        V2::frozen(&self.dir(path)?)
    }

    fn kill_all(&self, path: &str) -> Result<()> {
        // cgroup.kill (5.14+) kills the whole subtree at once, racing no fork.
        write(&self.dir(path)?, "cgroup.kill", "1")
    }

    fn remove(&self, path: &str) -> Result<()> {
        let dir = self.dir(path)?;
        if self.delegated.as_deref() == Some(Path::new(path)) {
            // The delegated cgroup is its owner's to remove (systemd ends a
            // scope once it is empty): only what is in it goes.
            for e in std::fs::read_dir(&dir)
                .map_err(|e| super::io_err("list", &dir, e))?
                .flatten()
            {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    rmdir_tree(&e.path())?;
                }
            }
            return Ok(());
        }
        rmdir_tree(&dir)
    }

    fn stats(&self, path: &str) -> Result<Stats> {
        let (memory, pids) = self.usage(path)?;
        let dir = self.dir(path)?;
        Ok(Stats {
            memory,
            pids,
            cpu_usec: super::keyed(&dir, "cpu.stat", "usage_usec"),
            oom_kills: super::keyed(&dir, "memory.events", "oom_kill"),
        })
    }

    fn open_usage(&self, paths: &[&str], keep: usize) -> Vec<Result<super::Opened>> {
        let root = match super::open_root(&self.root) {
            Ok(fd) => fd,
            Err(e) => return super::each_failed(paths, &e),
        };
        let at = |rel: &str, file: &str| super::open_at(root.as_fd(), &self.root, rel, file);
        super::batch(paths, |i, p| {
            super::UsageFiles::new(at(p, "memory.current")?, at(p, "pids.current")?)
                .read_keeping(p, i < keep)
        })
    }

    fn exists(&self, path: &str) -> bool {
        self.dir(path).map(|d| d.is_dir()).unwrap_or(false)
    }

    fn dirs(&self, path: &str) -> Result<Vec<PathBuf>> {
        Ok(vec![self.dir(path)?])
    }
}

#[cfg(test)]
mod tests {
    //! These run against a FAKE cgroup2 tree (plain files in a temporary
    //! directory): this development host has its controllers on v1, so the v2
    //! code paths are checked for the files they write, not against the kernel.
    use super::*;

    fn fake() -> (tempfile::TempDir, V2) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma\n",
        )
        .unwrap();
        let tree = V2::new(dir.path().to_path_buf());
        (dir, tree)
    }

    #[test]
    fn a_delegated_tree_writes_nothing_above_its_scope_and_keeps_the_scope() {
        let dir = tempfile::tempdir().unwrap();
        let scope = dir.path().join("machine.slice/imperium.scope");
        std::fs::create_dir_all(&scope).unwrap();
        std::fs::write(scope.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let t = V2::delegated(dir.path().to_path_buf(), "machine.slice/imperium.scope").unwrap();
        t.create("machine.slice/imperium.scope/group1/site52")
            .unwrap();
        for above in ["", "machine.slice"] {
            assert!(
                !dir.path()
                    .join(above)
                    .join("cgroup.subtree_control")
                    .exists(),
                "systemd's {above:?} was written"
            );
        }
        for ours in [
            "machine.slice/imperium.scope",
            "machine.slice/imperium.scope/group1",
        ] {
            let got = std::fs::read_to_string(dir.path().join(ours).join("cgroup.subtree_control"))
                .unwrap();
            assert_eq!(got, "+cpu +memory +pids", "in {ours:?}");
        }
        t.remove("machine.slice/imperium.scope").unwrap();
        assert!(scope.is_dir(), "the scope is systemd's to remove");
        assert!(!scope.join("group1").exists(), "what is in it is gone");
        assert!(V2::delegated(dir.path().to_path_buf(), "../x").is_err());
    }

    #[test]
    fn create_enables_controllers_down_the_path() {
        let (dir, t) = fake();
        t.create("imperium/group1/site52").unwrap();
        for d in ["", "imperium", "imperium/group1"] {
            let got =
                std::fs::read_to_string(dir.path().join(d).join("cgroup.subtree_control")).unwrap();
            assert_eq!(got, "+cpu +memory +pids", "in {d:?}");
        }
        assert!(
            !dir.path()
                .join("imperium/group1/site52/cgroup.subtree_control")
                .exists(),
            "a leaf enables nothing"
        );
        assert!(t.exists("imperium/group1/site52"));
        assert!(t.create("imperium/../etc").is_err());
        assert!(t.create("/abs").is_err());
    }

    #[test]
    fn limits_in_v2_files() {
        let (dir, t) = fake();
        t.create("imperium/s").unwrap();
        t.set_limits(
            "imperium/s",
            &Limits {
                memory: Some(256 << 20),
                cpu: Some(0.5),
                pids: Some(200),
            },
        )
        .unwrap();
        let f = |n: &str| std::fs::read_to_string(dir.path().join("imperium/s").join(n)).unwrap();
        assert_eq!(f("memory.max"), "268435456");
        assert_eq!(f("cpu.max"), "50000 100000");
        assert_eq!(f("pids.max"), "200");
        t.set_limits("imperium/s", &Limits::default()).unwrap();
        assert_eq!(f("memory.max"), "max");
        assert_eq!(f("cpu.max"), "max 100000");
        assert_eq!(f("pids.max"), "max");
    }

    #[test]
    fn freeze_kill_attach_remove() {
        let (dir, t) = fake();
        t.create("imperium/s").unwrap();
        let d = dir.path().join("imperium/s");
        // The kernel would update cgroup.events; the fake says "frozen" up front.
        std::fs::write(d.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        t.freeze("imperium/s", true).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join("cgroup.freeze")).unwrap(),
            "1"
        );
        assert!(t.is_frozen("imperium/s").unwrap());
        assert!(matches!(
            t.freeze("imperium/s", false),
            Err(super::super::CgroupError::Timeout { .. })
        ));
        t.kill_all("imperium/s").unwrap();
        assert_eq!(std::fs::read_to_string(d.join("cgroup.kill")).unwrap(), "1");
        t.attach("imperium/s", 42).unwrap();
        assert_eq!(t.procs("imperium/s").unwrap(), [42]);
        std::fs::write(d.join("memory.current"), "4096\n").unwrap();
        std::fs::write(d.join("pids.current"), "3\n").unwrap();
        std::fs::write(d.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
        std::fs::write(d.join("memory.events"), "low 0\noom 2\noom_kill 1\n").unwrap();
        assert_eq!(
            t.stats("imperium/s").unwrap(),
            Stats {
                memory: 4096,
                pids: 3,
                cpu_usec: Some(1500),
                oom_kills: Some(1),
            }
        );
        assert_eq!(t.usage("imperium/s").unwrap(), (4096, 3));
        t.remove("imperium").unwrap();
        assert!(!dir.path().join("imperium").exists());
    }

    #[test]
    fn usage_of_many_cgroups_comes_back_in_order_and_a_bad_path_fails_alone() {
        let (dir, t) = fake();
        // Past one reader's share, so that the batch is split over threads.
        let names: Vec<String> = (0..1200).map(|i| format!("imperium/s{i}")).collect();
        for (i, n) in names.iter().enumerate() {
            let d = dir.path().join(n);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("memory.current"), format!("{}\n", i * 4096)).unwrap();
            std::fs::write(d.join("pids.current"), format!("{}\n", i % 7)).unwrap();
        }
        // A planted symlink is not followed out of the tree.
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/memory.current"), "1\n").unwrap();
        std::fs::write(dir.path().join("outside/pids.current"), "1\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), dir.path().join("imperium/link"))
            .unwrap();
        let mut paths: Vec<&str> = names.iter().map(String::as_str).collect();
        paths.insert(600, "imperium/gone");
        paths.insert(700, "imperium/../outside");
        paths.insert(800, "imperium/link");
        // Nor is a planted parent.
        std::fs::create_dir_all(dir.path().join("outside/s1")).unwrap();
        std::fs::write(dir.path().join("outside/s1/memory.current"), "1\n").unwrap();
        std::fs::write(dir.path().join("outside/s1/pids.current"), "1\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), dir.path().join("planted")).unwrap();
        paths.insert(900, "planted/s1");
        let got = t.usage_all(&paths);
        assert_eq!(got.len(), paths.len());
        for (p, r) in paths.iter().zip(&got) {
            match p.strip_prefix("imperium/s") {
                Some(i) => {
                    let i: u64 = i.parse().unwrap();
                    assert_eq!(*r.as_ref().unwrap(), (i * 4096, i % 7), "{p}");
                }
                None => assert!(r.is_err(), "{p} read as {r:?}"),
            }
        }
    }
}
