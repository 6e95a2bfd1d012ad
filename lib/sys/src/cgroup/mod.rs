//! cgroup trees, v2 and v1 behind one trait.
//!
//! Both implementations are rooted: they take the directories they work in, so
//! unit tests run them against a fake tree in a temporary directory, and
//! [`detect`] picks the real one from what the host mounts. Paths handed to the
//! trait are relative to each hierarchy's root (`imperium/group1/site52`).

use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

mod v1;
mod v2;

pub use v1::V1;
pub use v2::V2;

/// A cgroup operation that failed, with the file it touched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CgroupError {
    /// Reading or writing a cgroup file or directory.
    #[error("{op} {path}: {err}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        err: io::Error,
    },
    /// A path that is not a clean relative path.
    #[error("cgroup path {0:?} is not a clean relative path")]
    BadPath(String),
    /// The host mounts no usable cgroup hierarchy for a controller.
    #[error("no cgroup hierarchy found for {0}")]
    Missing(&'static str),
    /// Freezing or thawing did not settle in time.
    #[error("{path}: {what} did not settle within {waited:?}")]
    Timeout {
        /// The cgroup.
        path: PathBuf,
        /// Freeze, thaw, or empty.
        what: &'static str,
        /// How long we waited.
        waited: Duration,
    },
}

type Result<T> = std::result::Result<T, CgroupError>;

/// Limits written to a cgroup. `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Hard memory limit in bytes.
    pub memory: Option<u64>,
    /// CPU bandwidth in cores.
    pub cpu: Option<f64>,
    /// Maximum tasks.
    pub pids: Option<u64>,
}

/// Usage figures of a cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Memory in use, bytes.
    pub memory: u64,
    /// Tasks.
    pub pids: u64,
    /// CPU time used so far, microseconds (`None`: not counted here).
    pub cpu_usec: Option<u64>,
    /// Processes the kernel killed for lack of memory so far.
    pub oom_kills: Option<u64>,
}

/// The number after `key ` on a line of a flat-keyed cgroup file.
pub(crate) fn keyed(dir: &Path, file: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(dir.join(file))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Which cgroup layout a tree drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Controllers on separate v1 hierarchies (legacy or hybrid hosts).
    V1,
    /// The unified hierarchy.
    V2,
}

/// The CPU period used for bandwidth limits, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The CFS quota (microseconds per [`CPU_PERIOD_US`]) for `cores` of CPU,
/// at least 1 ms: the one conversion from a file's `cpu` to the kernel's.
pub fn cpu_quota_us(cores: f64) -> u64 {
    ((cores * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

/// How a new process enters its cgroup without the parent migrating it.
///
/// Moving a process into a cgroup after the fact takes the kernel's global
/// threadgroup lock for writing, which waits for an RCU grace period (about
/// 15 ms when nothing else is migrating). Both ways below avoid it.
#[derive(Debug)]
pub enum Join {
    /// v2: `clone3(CLONE_INTO_CGROUP)` with this directory fd.
    IntoCgroup(std::os::fd::OwnedFd),
    /// v1: the single-threaded child writes `0` (itself) to each `tasks` file.
    WriteSelf(Vec<std::os::fd::OwnedFd>),
}

/// One emperor's view of a cgroup tree.
pub trait CgroupTree: Send + Sync + std::fmt::Debug {
    /// v1 or v2.
    fn version(&self) -> Version;
    /// Creates `path` and its parents (and, on v2, enables the controllers down to it).
    fn create(&self, path: &str) -> Result<()>;
    /// Writes the limits of `path`.
    fn set_limits(&self, path: &str, limits: &Limits) -> Result<()>;
    /// Moves `pid` into `path`.
    fn attach(&self, path: &str, pid: i32) -> Result<()>;
    /// Opens what a child needs to enter `path` by itself (see [`Join`]).
    fn join(&self, path: &str) -> Result<Join>;
    /// The processes directly in `path`.
    fn procs(&self, path: &str) -> Result<Vec<i32>>;
    /// Freezes or thaws `path` and everything below it, and waits until it settles.
    fn freeze(&self, path: &str, frozen: bool) -> Result<()>;
    /// Whether `path` is frozen.
    fn is_frozen(&self, path: &str) -> Result<bool>;
    /// Kills every process in `path` and below.
    fn kill_all(&self, path: &str) -> Result<()>;
    /// Removes `path` and every cgroup below it (they must hold no process).
    fn remove(&self, path: &str) -> Result<()>;
    /// Usage of `path`.
    fn stats(&self, path: &str) -> Result<Stats>;
    /// Memory and pids in use now: the two figures a status line shows,
    /// read without the rest of [`CgroupTree::stats`] (two files).
    fn usage(&self, path: &str) -> Result<(u64, u64)> {
        self.usage_all(&[path]).pop().expect("one path, one answer")
    }
    /// [`CgroupTree::usage`] of many cgroups (one answer per path, in order),
    /// each cgroup's files opened, read once and closed.
    fn usage_all(&self, paths: &[&str]) -> Vec<Result<(u64, u64)>> {
        self.open_usage(paths, 0)
            .into_iter()
            .map(|r| r.map(|(used, _)| used))
            .collect()
    }
    /// Memory and pids in use in each of `paths` (one answer per path, in
    /// order), each file opened relative to its hierarchy's root (opened
    /// once for the batch), a long batch split over a few threads. The files
    /// of the first `keep` paths come back open, to be read again; every
    /// other file is closed as soon as it is read, so that a batch never
    /// holds more descriptors than it keeps and its threads are reading.
    fn open_usage(&self, paths: &[&str], keep: usize) -> Vec<Result<Opened>>;
    /// Whether `path` exists.
    fn exists(&self, path: &str) -> bool;
    /// The directories of `path`: one per hierarchy (v1), or the one (v2).
    /// What a process writes its pid into (`cgroup.procs`) to join the cgroup.
    fn dirs(&self, path: &str) -> Result<Vec<PathBuf>>;
}

/// Picks the tree the host provides: v2 when `/sys/fs/cgroup` is the unified
/// hierarchy, otherwise the v1 hierarchies listed in `/proc/self/mountinfo`.
pub fn detect() -> Result<Box<dyn CgroupTree>> {
    let root = Path::new("/sys/fs/cgroup");
    let fs = nix::sys::statfs::statfs(root).map_err(|e| io_err("statfs", root, e.into()))?;
    if fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return Ok(Box::new(V2::new(root.to_path_buf())));
    }
    let mountinfo = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(mountinfo).map_err(|e| io_err("read", mountinfo, e))?;
    Ok(Box::new(V1::from_mountinfo(&text)?))
}

pub(crate) fn io_err(op: &'static str, path: &Path, err: io::Error) -> CgroupError {
    CgroupError::Io {
        op,
        path: path.to_path_buf(),
        err,
    }
}

/// A relative cgroup path, refusing `..`, `.` and absolute paths.
fn clean(rel: &str) -> Result<&Path> {
    let p = Path::new(rel);
    if rel.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(CgroupError::BadPath(rel.to_owned()));
    }
    Ok(p)
}

/// Joins a relative cgroup path onto a hierarchy root (see [`clean`]).
pub(crate) fn join(root: &Path, rel: &str) -> Result<PathBuf> {
    Ok(root.join(clean(rel)?))
}

pub(crate) fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(|e| io_err("write", &path, e))
}

pub(crate) fn read(dir: &Path, file: &str) -> Result<String> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).map_err(|e| io_err("read", &path, e))
}

pub(crate) fn read_u64(dir: &Path, file: &str) -> Result<u64> {
    read(dir, file)?
        .trim()
        .parse()
        .map_err(|_| io_err("parse", &dir.join(file), io::ErrorKind::InvalidData.into()))
}

/// A directory to open files under by relative paths (`O_PATH`).
pub(crate) fn open_root(root: &Path) -> Result<std::os::fd::OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(root)
        .map(Into::into)
        .map_err(|e| io_err("open", root, e))
}

/// `rel/file` under `root` (a descriptor of `root_path`), opened for
/// reading: one short walk from the hierarchy's root.
pub(crate) fn open_at(
    root: std::os::fd::BorrowedFd,
    root_path: &Path,
    rel: &str,
    file: &str,
) -> Result<std::os::fd::OwnedFd> {
    let path = clean(rel)?.join(file);
    match crate::fs::open_beneath(root, &path, libc::O_RDONLY) {
        // A kernel without openat2: by the full path.
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            std::fs::File::open(root_path.join(&path)).map(Into::into)
        }
        r => r,
    }
    .map_err(|e| io_err("open", &root_path.join(&path), e))
}

/// A cgroup's memory and pids usage files, open. Each read is a `pread` of
/// the two: no path walked, where an open costs a lookup and a permission
/// check at every component (kernfs cannot walk paths under RCU). The files
/// of a cgroup since removed fail (`ENODEV`), even once a cgroup of the same
/// path is made again: a kept pair never reads another cgroup's figures.
#[derive(Debug)]
pub struct UsageFiles {
    memory: std::os::fd::OwnedFd,
    pids: std::os::fd::OwnedFd,
}

impl UsageFiles {
    /// The files of one cgroup (see [`CgroupTree::open_usage`]).
    pub(crate) fn new(memory: std::os::fd::OwnedFd, pids: std::os::fd::OwnedFd) -> UsageFiles {
        UsageFiles { memory, pids }
    }

    /// [`UsageFiles::read`], and the files back if `keep`, else closed.
    pub(crate) fn read_keeping(self, path: &str, keep: bool) -> Result<Opened> {
        let used = self.read(path)?;
        Ok((used, keep.then_some(self)))
    }

    /// Memory and pids in use now; `path` names the cgroup in an error.
    pub fn read(&self, path: &str) -> Result<(u64, u64)> {
        let number = |fd: &std::os::fd::OwnedFd| -> io::Result<u64> {
            let mut buf = [0u8; 32];
            let n = nix::sys::uio::pread(fd, &mut buf, 0)?;
            std::str::from_utf8(&buf[..n])
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .ok_or_else(|| io::ErrorKind::InvalidData.into())
        };
        let both = number(&self.memory).and_then(|m| Ok((m, number(&self.pids)?)));
        both.map_err(|e| io_err("read", Path::new(path), e))
    }
}

/// What [`CgroupTree::open_usage`] gives for one cgroup: memory and pids in
/// use, and its files if asked to keep them.
pub type Opened = ((u64, u64), Option<UsageFiles>);

/// The usage files of many cgroups kept open between reads, so that reading
/// the figures of every site is a `pread` of each file and no open: at
/// 10,000 sites, opening 20,000 cgroup files by path is most of what a full
/// `status` costs. They take what the process's open-files limit leaves
/// once a quarter of it is put aside and each cgroup read counts one
/// descriptor of its own (a site's pidfd); past that room, a cgroup's
/// files are opened for each read.
#[derive(Debug, Default)]
pub struct KeptUsage {
    files: std::collections::HashMap<String, UsageFiles>,
    /// How many may be kept (`None`: by the open-files limit).
    most: Option<usize>,
}

impl KeptUsage {
    /// Memory and pids in use in each of `paths` (one answer per path, in
    /// order). A cgroup's kept files are read again; a cgroup not kept, or
    /// whose kept files fail (it was removed, and perhaps made again), is
    /// opened anew. With `all`, `paths` are every cgroup wanted: the files
    /// of any other are closed, and those opened are kept while there is
    /// room. Without, nothing new is kept: the files held are never more
    /// than the cgroups of the last full read, however often cgroups come
    /// and go in between.
    pub fn read(
        &mut self,
        tree: &dyn CgroupTree,
        paths: &[&str],
        all: bool,
    ) -> Vec<Result<(u64, u64)>> {
        // Nothing new is kept by a partial read.
        let room = if all { self.room(paths.len()) } else { 0 };
        if all {
            let wanted: std::collections::HashSet<&str> = paths.iter().copied().collect();
            self.files.retain(|p, _| wanted.contains(p.as_str()));
            // More sites than when these were kept: give back what the room
            // no longer holds.
            let over = self.files.len().saturating_sub(room);
            let extra: Vec<String> = self.files.keys().take(over).cloned().collect();
            for p in extra {
                self.files.remove(&p);
            }
        }
        let kept = &self.files;
        let mut got: Vec<Option<Result<(u64, u64)>>> =
            batch(paths, |_, p| Ok(kept.get(p).and_then(|f| f.read(p).ok())))
                .into_iter()
                .map(|r| r.ok().flatten().map(Ok))
                .collect();
        let missing: Vec<usize> = (0..paths.len()).filter(|i| got[*i].is_none()).collect();
        for i in &missing {
            self.files.remove(paths[*i]);
        }
        let keep = room.saturating_sub(self.files.len());
        let opened = tree.open_usage(&missing.iter().map(|i| paths[*i]).collect::<Vec<_>>(), keep);
        for (i, r) in missing.into_iter().zip(opened) {
            got[i] = Some(r.map(|(used, files)| {
                if let Some(f) = files {
                    self.files.insert(paths[i].to_owned(), f);
                }
                used
            }));
        }
        got.into_iter()
            .map(|r| r.expect("every path answered"))
            .collect()
    }

    /// How many cgroups' files may be kept, `cgroups` being read in all:
    /// two descriptors each, in what the open-files limit leaves once a
    /// quarter of it is put aside (starts, API calls) and each of those
    /// cgroups has one of its own.
    fn room(&self, cgroups: usize) -> usize {
        if let Some(most) = self.most {
            return most;
        }
        let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft);
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        (limit - limit / 4).saturating_sub(cgroups) / 2
    }

    /// How many cgroups' files are kept open.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Every path's answer when the roots they are read under could not be opened.
pub(crate) fn each_failed<T>(paths: &[&str], e: &CgroupError) -> Vec<Result<T>> {
    let why = e.to_string();
    paths
        .iter()
        .map(|p| Err(io_err("read", Path::new(p), io::Error::other(why.clone()))))
        .collect()
}

/// `one` over every path (with its index), in order; past a few hundred
/// paths on up to four threads (10,000 sites are 20,000 cgroup files).
pub(crate) fn batch<T: Send>(
    paths: &[&str],
    one: impl Fn(usize, &str) -> Result<T> + Sync,
) -> Vec<Result<T>> {
    const PER_THREAD: usize = 500;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4)
        .min(paths.len().div_ceil(PER_THREAD));
    if threads <= 1 {
        return paths.iter().enumerate().map(|(i, p)| one(i, p)).collect();
    }
    let one = &one;
    let share = paths.len().div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> = paths
            .chunks(share)
            .enumerate()
            .map(|(n, part)| {
                let each = move || {
                    let first = n * share;
                    part.iter()
                        .enumerate()
                        .map(|(i, p)| one(first + i, p))
                        .collect::<Vec<_>>()
                };
                (part, s.spawn(each))
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|(part, h)| {
                h.join().unwrap_or_else(|_| {
                    part.iter()
                        .map(|p| Err(CgroupError::BadPath(format!("{p}: reader failed"))))
                        .collect()
                })
            })
            .collect()
    })
}

pub(crate) fn read_procs(dir: &Path) -> Result<Vec<i32>> {
    match std::fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("read", &dir.join("cgroup.procs"), e)),
    }
}

pub(crate) fn open_for(op: &'static str, path: &Path, dir: bool) -> Result<std::os::fd::OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    if dir {
        o.read(true).custom_flags(libc::O_DIRECTORY);
    } else {
        o.write(true);
    }
    o.open(path)
        .map(Into::into)
        .map_err(|e| io_err(op, path, e))
}

pub(crate) fn mkdir_p(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_err("mkdir", dir, e))
}

/// Removes `dir` and the cgroup directories below it, deepest first. A cgroup
/// directory is removed with rmdir (its files vanish with it); EBUSY is retried
/// for a short while, since the last tasks may still be exiting.
pub(crate) fn rmdir_tree(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("list", dir, e)),
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            rmdir_tree(&entry.path())?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            // A fake tree in a temporary directory holds plain files: clear them first.
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) && !is_cgroupfs(dir) => {
                for f in std::fs::read_dir(dir)
                    .map_err(|e| io_err("list", dir, e))?
                    .flatten()
                {
                    let _ = std::fs::remove_file(f.path());
                }
                std::fs::remove_dir(dir).map_err(|e| io_err("rmdir", dir, e))?;
                return Ok(());
            }
            Err(e) => return Err(io_err("rmdir", dir, e)),
        }
    }
}

fn is_cgroupfs(dir: &Path) -> bool {
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};
    statfs(dir)
        .map(|s| {
            s.filesystem_type() == CGROUP_SUPER_MAGIC || s.filesystem_type() == CGROUP2_SUPER_MAGIC
        })
        .unwrap_or(false)
}

/// Polls `check` until it returns true or `limit` passes.
pub(crate) fn settle(
    path: &Path,
    what: &'static str,
    limit: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let start = Instant::now();
    loop {
        if check()? {
            return Ok(());
        }
        if start.elapsed() >= limit {
            return Err(CgroupError::Timeout {
                path: path.to_path_buf(),
                what,
                waited: limit,
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub(crate) fn kill_pids(pids: &[i32]) {
    for pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FAKE v2 tree of `n` cgroups `imperium/s<i>` (plain files).
    fn fake(n: usize) -> (tempfile::TempDir, V2, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..n).map(|i| format!("imperium/s{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            set(dir.path(), name, i as u64 * 4096, 1);
        }
        let tree = V2::new(dir.path().to_path_buf());
        (dir, tree, names)
    }

    fn set(root: &Path, name: &str, memory: u64, pids: u64) {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        // Rewritten in place, as the kernel's figures change under an open file.
        std::fs::write(d.join("memory.current"), format!("{memory}\n")).unwrap();
        std::fs::write(d.join("pids.current"), format!("{pids}\n")).unwrap();
    }

    #[test]
    fn kept_usage_files_read_new_figures_and_only_wanted_cgroups_stay_open() {
        // Past one reader's share, so that the batch is split over threads.
        let (dir, tree, names) = fake(600);
        let paths: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut kept = KeptUsage {
            most: Some(200),
            ..KeptUsage::default()
        };
        let first = kept.read(&tree, &paths, true);
        assert!(first.iter().all(Result::is_ok));
        assert_eq!(*first[7].as_ref().unwrap(), (7 * 4096, 1));
        assert_eq!(kept.len(), 200);
        // The figures move under the open files, and under those read
        // without keeping them: the next read sees both.
        set(dir.path(), "imperium/s7", 99, 5);
        set(dir.path(), "imperium/s550", 98, 4);
        let second = kept.read(&tree, &paths, true);
        assert_eq!(*second[7].as_ref().unwrap(), (99, 5));
        assert_eq!(*second[550].as_ref().unwrap(), (98, 4));
        assert_eq!(*second[8].as_ref().unwrap(), (8 * 4096, 1));
        assert_eq!(kept.len(), 200);
        // A part read (one reseller's sites) closes nothing and keeps
        // nothing new; a full read of fewer cgroups closes the files of the
        // others, and a path that cannot be read fails alone and is not kept.
        set(dir.path(), "imperium/s600", 5, 5);
        let part = kept.read(&tree, &[paths[2], "imperium/s600"], false);
        assert_eq!(*part[0].as_ref().unwrap(), (2 * 4096, 1));
        assert_eq!(*part[1].as_ref().unwrap(), (5, 5));
        assert_eq!(kept.len(), 200);
        let fewer = kept.read(&tree, &[paths[1], "imperium/gone", paths[2]], true);
        assert_eq!(*fewer[0].as_ref().unwrap(), (4096, 1));
        assert!(fewer[1].is_err());
        assert_eq!(*fewer[2].as_ref().unwrap(), (2 * 4096, 1));
        assert_eq!(kept.len(), 2);
        // Room by default: three quarters of the open-files limit less one
        // a cgroup read, two a cgroup kept.
        let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .unwrap()
            .0 as usize;
        let room = KeptUsage::default().room(1000);
        assert_eq!(room, (limit - limit / 4).saturating_sub(1000) / 2);
        assert_eq!(KeptUsage::default().room(limit), 0);
    }

    #[test]
    #[ignore = "root: run the README's test command"]
    fn root_kept_usage_files_of_a_removed_cgroup_are_opened_again() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let tree = detect().unwrap();
        let root = format!("imperium-test-kept-{}", std::process::id());
        let site = format!("{root}/s1");
        struct Cleanup<'a>(&'a dyn CgroupTree, &'a str, Vec<std::process::Child>);
        impl Drop for Cleanup<'_> {
            fn drop(&mut self) {
                for c in &mut self.2 {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                let _ = self.0.remove(self.1);
            }
        }
        let mut guard = Cleanup(&*tree, &root, Vec::new());
        let sleeper = |tree: &dyn CgroupTree| {
            let child = std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap();
            tree.attach(&site, child.id() as i32).unwrap();
            child
        };
        tree.create(&site).unwrap();
        guard.2.push(sleeper(&*tree));
        let mut kept = KeptUsage::default();
        assert_eq!(kept.read(&*tree, &[&site], true)[0].as_ref().unwrap().1, 1);
        assert_eq!(kept.len(), 1);
        // The site goes and a cgroup of the same path is made again: the
        // kept files fail, and are opened again on the new cgroup.
        for mut c in guard.2.drain(..) {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while tree.remove(&site).is_err() {
            assert!(Instant::now() < deadline, "the cgroup stayed busy");
            std::thread::sleep(Duration::from_millis(10));
        }
        tree.create(&site).unwrap();
        guard.2.push(sleeper(&*tree));
        guard.2.push(sleeper(&*tree));
        // (Memory a process used before it was moved in stays charged where
        // it was: the count of processes is the new cgroup's own.)
        let (_, pids) = *kept.read(&*tree, &[&site], true)[0].as_ref().unwrap();
        assert_eq!(pids, 2, "the new cgroup's figures");
        assert_eq!(kept.len(), 1);
        drop(guard);
        assert!(!tree.exists(&root));
    }
}
