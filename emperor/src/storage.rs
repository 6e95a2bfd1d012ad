//! Disk quotas: the kernel enforces each vassal's `storage` (and `inodes`).
//!
//! The backend follows the filesystem under the home root. On XFS and ext4
//! with project quotas on, each home is a project (id = the tenant's uid)
//! that its files inherit, capped in blocks and inodes; projects do not
//! nest, so a group's total is held by the budget rules, not the kernel. On btrfs each home
//! is a subvolume of its own, capped by its level-0 qgroup, and every group has
//! a level-1 qgroup (`1/<the group's uid>`) that holds its sites' and its own,
//! so the kernel caps the group's total too: that is how an overcommitted
//! group is held to its budget. All through the kernel's ioctls
//! (`sys::btrfs`); nothing shells out. Other filesystems: limits are reported
//! as not enforced.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sys::btrfs;

/// `statfs`'s `f_type` for btrfs, XFS and ext4.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
const XFS_SUPER_MAGIC: i64 = 0x5846_5342;
const EXT4_SUPER_MAGIC: i64 = 0xef53;

/// What enforces `storage` under a home root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// btrfs qgroups.
    Btrfs,
    /// XFS or ext4 project quotas (the filesystem's name).
    Project(&'static str),
    /// Nothing: why not, in one line.
    None(String),
}

impl Backend {
    /// The backend for the filesystem of `home_root`, quotas turned on if
    /// they were off.
    pub fn detect(home_root: &Path) -> Backend {
        let st = match nix::sys::statfs::statfs(home_root) {
            Ok(st) => st,
            Err(e) => return Backend::None(format!("statfs {}: {e}", home_root.display())),
        };
        let project = match st.filesystem_type().0 as i64 {
            BTRFS_SUPER_MAGIC => None,
            XFS_SUPER_MAGIC => Some("xfs"),
            EXT4_SUPER_MAGIC => Some("ext4"),
            _ => {
                return Backend::None(format!(
                    "{} is on none of btrfs, XFS or ext4",
                    home_root.display()
                ))
            }
        };
        if let Some(fs) = project {
            // Project 0 answers when project quotas are on.
            return match open_dir(home_root).and_then(|fd| sys::quota::usage(fd.as_fd(), 0)) {
                Ok(_) => Backend::Project(fs),
                Err(e) => Backend::None(format!(
                    "project quotas are off on {} ({fs}: {e}); mount it with prjquota{}",
                    home_root.display(),
                    if fs == "ext4" {
                        " on a filesystem made with -O quota,project"
                    } else {
                        ""
                    }
                )),
            };
        }
        match open_dir(home_root).and_then(|fd| btrfs::quota_enable(fd.as_fd())) {
            Ok(()) => Backend::Btrfs,
            Err(e) => Backend::None(format!("turning btrfs quotas on: {e}")),
        }
    }

    /// Whether limits are enforced.
    pub fn enforced(&self) -> bool {
        !matches!(self, Backend::None(_))
    }
}

fn open_dir(p: &Path) -> io::Result<OwnedFd> {
    Ok(OwnedFd::from(
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(p)?,
    ))
}

/// The level-1 qgroup of a group (by its reseller's uid).
pub fn group_qgroup(group_uid: u32) -> u64 {
    btrfs::qgroupid(1, u64::from(group_uid))
}

/// Makes `home` a new subvolume (root's, 0755), counted in the group's
/// qgroup `group` (made if missing) as well as its own; whether it made one.
/// An existing home is left as it is (a plain directory from before quotas:
/// [`limit_home`] says it is not enforced).
pub fn make_home(home: &Path, group: Option<u64>) -> io::Result<bool> {
    if home.symlink_metadata().is_ok() {
        return Ok(false);
    }
    let parent = home
        .parent()
        .ok_or_else(|| io::Error::other("a home has a parent"))?;
    let name = CString::new(
        home.file_name()
            .ok_or_else(|| io::Error::other("a home has a name"))?
            .as_bytes(),
    )
    .map_err(|_| io::Error::other("a NUL in a home's name"))?;
    std::fs::create_dir_all(parent)?;
    let dir = open_dir(parent)?;
    btrfs::subvolume_create(dir.as_fd(), &name)?;
    if let Some(g) = group {
        let id = subvolume_of(home)?.ok_or_else(|| io::Error::other("a new subvolume"))?;
        btrfs::qgroup_create(dir.as_fd(), g)?;
        // A new, empty subvolume: counting it in the group needs no rescan.
        btrfs::qgroup_assign(dir.as_fd(), btrfs::qgroupid(0, id), g)?;
    }
    Ok(true)
}

/// The subvolume id of a home, `None` if it is not a subvolume's root.
fn subvolume_of(home: &Path) -> io::Result<Option<u64>> {
    use std::os::unix::fs::MetadataExt;
    let fd = open_dir(home)?;
    let meta = std::fs::File::from(fd.try_clone()?).metadata()?;
    if meta.ino() != btrfs::SUBVOLUME_ROOT_INO {
        return Ok(None);
    }
    btrfs::subvolume_id(fd.as_fd()).map(Some)
}

/// Caps a home at `bytes` (`None`: no cap). Errors when the home is not a
/// subvolume (it predates quotas).
pub fn limit_home(home: &Path, bytes: Option<u64>) -> io::Result<()> {
    let id = home_qgroup(home)?;
    limit(home, id, bytes)
}

fn home_qgroup(home: &Path) -> io::Result<u64> {
    let id = subvolume_of(home)?.ok_or_else(|| {
        io::Error::other(format!(
            "{} is not a subvolume (made before quotas were on): not enforced",
            home.display()
        ))
    })?;
    Ok(btrfs::qgroupid(0, id))
}

/// Caps the qgroup `qgroupid` (made if missing) at `bytes` (`None`: no cap);
/// `any` is a directory on the filesystem.
pub fn limit(any: &Path, qgroupid: u64, bytes: Option<u64>) -> io::Result<()> {
    let fd = open_dir(any)?;
    // A subvolume's own (level 0) qgroup comes with it.
    if qgroupid >> 48 != 0 {
        btrfs::qgroup_create(fd.as_fd(), qgroupid)?;
    }
    btrfs::qgroup_limit(fd.as_fd(), qgroupid, bytes)
}

/// Makes a new home the tenant's project (`uid`), inherited by what is made
/// in it; whether it made the directory. An existing home gets the project
/// on its top directory (what is made from then on counts).
pub fn make_project_home(home: &Path, uid: u32) -> io::Result<bool> {
    let made = home.symlink_metadata().is_err();
    if made {
        std::fs::create_dir_all(home)?;
    }
    sys::quota::set_project(open_dir(home)?.as_fd(), uid)?;
    Ok(made)
}

/// Moves a site's home from `old` to `new` (same filesystem: both are under
/// the home root) when the site changes group, so that its files and its
/// count go along: with btrfs its subvolume leaves the old group's qgroup
/// (`from`) for the new one's (`to`); with project quotas it keeps the
/// tenant's project (`uid`) although XFS refuses to rename a directory into
/// a directory of another inherited project, so the top takes the new
/// parent's project for the rename only. `new` must not exist; `old` must
/// be a directory (not a link).
pub fn move_home(
    backend: &Backend,
    old: &Path,
    new: &Path,
    uid: u32,
    from: Option<u64>,
    to: Option<u64>,
) -> io::Result<()> {
    if !old.symlink_metadata()?.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            old.display()
        )));
    }
    let parent = new
        .parent()
        .ok_or_else(|| io::Error::other("a home has a parent"))?;
    std::fs::create_dir_all(parent)?;
    match backend {
        Backend::Project(_) => {
            let (theirs, inherit) = sys::quota::project(open_dir(parent)?.as_fd())?;
            let top = open_dir(old)?;
            if inherit && theirs != uid {
                sys::quota::set_project(top.as_fd(), theirs)?;
            }
            let moved = std::fs::rename(old, new);
            sys::quota::set_project(top.as_fd(), uid)?;
            moved
        }
        Backend::Btrfs => {
            std::fs::rename(old, new)?;
            let id = subvolume_of(new)?.map(|id| btrfs::qgroupid(0, id));
            if let Some(id) = id {
                let fd = open_dir(new)?;
                if let Some(g) = from {
                    btrfs::qgroup_remove(fd.as_fd(), id, g)?;
                }
                if let Some(g) = to {
                    btrfs::qgroup_create(fd.as_fd(), g)?;
                    btrfs::qgroup_assign(fd.as_fd(), id, g)?;
                }
            }
            Ok(())
        }
        Backend::None(_) => std::fs::rename(old, new),
    }
}

/// Puts a whole home, made before project quotas were on, into the
/// tenant's project `uid` (see [`sys::quota::project_tree`]).
pub fn project_home(home: &Path, uid: u32) -> io::Result<sys::quota::Tree> {
    sys::quota::project_tree(open_dir(home)?.as_fd(), uid)
}

/// Applies a vassal's `storage` (and `inodes`): with btrfs, a site's on its
/// home and a group's on its level-1 qgroup (`group`), which holds its sites
/// and its own home; with project quotas, on the home's project (`uid`).
pub fn apply(
    backend: &Backend,
    layout: &model::Layout,
    file: &model::VassalFile,
    home: &Path,
    uid: u32,
    group: Option<u64>,
) -> io::Result<()> {
    let bytes = file.limits().storage.map(|s| s.0);
    match (backend, file) {
        (Backend::None(_), _) => Ok(()),
        (Backend::Project(_), _) => {
            let fd = open_dir(&layout.home_root)?;
            sys::quota::set_limits(fd.as_fd(), uid, bytes, file.limits().inodes)
        }
        (Backend::Btrfs, model::VassalFile::Site(_)) => limit_home(home, bytes),
        (Backend::Btrfs, model::VassalFile::Group(_)) => match group {
            Some(g) => limit(&layout.home_root, g, bytes),
            None => Ok(()),
        },
    }
}

/// What a vassal uses on disk and its caps.
pub fn usage_of(
    backend: &Backend,
    layout: &model::Layout,
    home: &Path,
    uid: u32,
    group: Option<u64>,
    is_group: bool,
) -> io::Result<model::usage::Disk> {
    match backend {
        Backend::None(why) => Err(io::Error::other(why.clone())),
        Backend::Project(_) => {
            let u = sys::quota::usage(open_dir(&layout.home_root)?.as_fd(), uid)?;
            Ok(model::usage::Disk {
                bytes: u.bytes,
                bytes_limit: u.bytes_limit,
                inodes: Some(u.inodes),
                inodes_limit: u.inodes_limit,
            })
        }
        Backend::Btrfs => {
            let (b, cap) = match (is_group, group) {
                (true, Some(g)) => usage(&layout.home_root, Some(g))?,
                _ => usage(home, None)?,
            };
            Ok(model::usage::Disk {
                bytes: b,
                bytes_limit: cap,
                inodes: None,
                inodes_limit: None,
            })
        }
    }
}

/// Used and cap (bytes) of a home's own qgroup, or of `qgroupid`.
pub fn usage(home: &Path, qgroupid: Option<u64>) -> io::Result<(u64, Option<u64>)> {
    let id = match qgroupid {
        Some(q) => q,
        None => home_qgroup(home)?,
    };
    let fd = open_dir(home)?;
    btrfs::qgroup_usage(fd.as_fd(), id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// MiB written to `dir/name` before the filesystem refused, up to `max`.
    fn fill(dir: &Path, name: &str, max: usize) -> (usize, Option<i32>) {
        let mut f = std::fs::File::create(dir.join(name)).unwrap();
        let chunk = vec![7u8; 1 << 20];
        for i in 0..max {
            if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_data()) {
                return (i, e.raw_os_error());
            }
        }
        (max, None)
    }

    #[test]
    #[ignore = "root: run the README's test command"]
    fn root_btrfs_caps_each_home_and_a_groups_total() {
        let l = e2e::LoopBtrfs::new(1 << 30);
        let root = l.mnt();
        assert_eq!(Backend::detect(&root), Backend::Btrfs);
        assert_eq!(Backend::detect(&root), Backend::Btrfs, "on twice is fine");
        assert!(!Backend::detect(Path::new("/proc")).enforced());
        let group = group_qgroup(40000);
        let (a, b) = (root.join("a"), root.join("b"));
        assert!(make_home(&a, Some(group)).unwrap());
        assert!(make_home(&b, Some(group)).unwrap());
        assert!(
            !make_home(&a, Some(group)).unwrap(),
            "already there: left as it is"
        );
        for h in [&a, &b] {
            limit_home(h, Some(100 << 20)).unwrap();
        }
        limit(&root, group, Some(150 << 20)).unwrap();
        // One home stops at its own cap.
        let (wrote, err) = fill(&a, "big", 300);
        assert_eq!(err, Some(libc::EDQUOT), "wrote {wrote} MiB");
        assert!((90..=100).contains(&wrote), "{wrote} MiB");
        // The other at what is left of the group's (overcommit: 2 x 100 > 150).
        let (wrote_b, err) = fill(&b, "big", 300);
        assert_eq!(err, Some(libc::EDQUOT));
        assert!(wrote + wrote_b <= 150, "{wrote} + {wrote_b} MiB");
        assert!(wrote_b >= 40, "{wrote_b} MiB");
        let (used, cap) = usage(&a, None).unwrap();
        assert_eq!(cap, Some(100 << 20));
        assert!(used >= (wrote as u64) << 20, "{used}");
        // An edit in place: a larger cap lets more in.
        limit_home(&b, Some(120 << 20)).unwrap();
        limit(&root, group, Some(250 << 20)).unwrap();
        let (more, _) = fill(&b, "more", 300);
        assert!(more >= 10, "{more} MiB");
        // A plain directory is not a home with a cap.
        std::fs::create_dir(root.join("plain")).unwrap();
        let e = limit_home(&root.join("plain"), Some(1 << 20)).unwrap_err();
        assert!(e.to_string().contains("not a subvolume"), "{e}");
    }
}
