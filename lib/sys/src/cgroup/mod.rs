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
    /// [`CgroupTree::usage`] of many cgroups (one answer per path, in order):
    /// each file opened relative to its hierarchy's root, opened once for
    /// the batch, and a long batch split over a few threads.
    fn usage_all(&self, paths: &[&str]) -> Vec<Result<(u64, u64)>>;
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

/// The number in `rel/file` under `root` (a descriptor of `root_path`):
/// one short walk from the hierarchy's root, read into a stack buffer.
pub(crate) fn read_u64_at(
    root: std::os::fd::BorrowedFd,
    root_path: &Path,
    rel: &str,
    file: &str,
) -> Result<u64> {
    use std::os::fd::AsRawFd;
    let path = clean(rel)?.join(file);
    let failed = |op, e: io::Error| io_err(op, &root_path.join(&path), e);
    let fd = match crate::fs::open_beneath(root, &path, libc::O_RDONLY) {
        // A kernel without openat2: by the full path.
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            std::fs::File::open(root_path.join(&path)).map(Into::into)
        }
        r => r,
    }
    .map_err(|e| failed("open", e))?;
    let mut buf = [0u8; 32];
    let n = nix::unistd::read(fd.as_raw_fd(), &mut buf).map_err(|e| failed("read", e.into()))?;
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| failed("parse", io::ErrorKind::InvalidData.into()))
}

/// Every path's answer when the roots they are read under could not be opened.
pub(crate) fn each_failed<T>(paths: &[&str], e: &CgroupError) -> Vec<Result<T>> {
    let why = e.to_string();
    paths
        .iter()
        .map(|p| Err(io_err("read", Path::new(p), io::Error::other(why.clone()))))
        .collect()
}

/// `one` over every path, in order; past a few hundred paths on up to four
/// threads (each cgroup file is an open, a read and a close: 10,000 sites
/// are 20,000 of each).
pub(crate) fn batch<T: Send>(
    paths: &[&str],
    one: impl Fn(&str) -> Result<T> + Sync,
) -> Vec<Result<T>> {
    const PER_THREAD: usize = 500;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4)
        .min(paths.len().div_ceil(PER_THREAD));
    if threads <= 1 {
        return paths.iter().map(|p| one(p)).collect();
    }
    let one = &one;
    std::thread::scope(|s| {
        let parts: Vec<_> = paths
            .chunks(paths.len().div_ceil(threads))
            .map(|part| {
                (
                    part,
                    s.spawn(move || part.iter().map(|p| one(p)).collect::<Vec<_>>()),
                )
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
