//! Project quotas (XFS, and ext4 with the `project` and `quota` features):
//! a directory tree is given a project id that its new files inherit, and
//! the kernel caps each project's blocks and inodes. Through `quotactl_fd(2)`
//! on a descriptor of the filesystem and the `FS_IOC_FS{GET,SET}XATTR`
//! ioctls; no block device path, no tool.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `PRJQUOTA` (quota type 2).
const PRJQUOTA: libc::c_int = 2;
/// `FS_XFLAG_PROJINHERIT`: new entries of a directory take its project id.
const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;
/// Quota limits are in blocks of this many bytes (`QIF_DQBLKSIZE`).
const DQBLK: u64 = 1024;

/// `struct fsxattr`.
#[repr(C)]
#[derive(Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// The ioctls, as nix declares them.
mod raw {
    use super::FsXattr;
    nix::ioctl_read!(fs_get_xattr, b'X', 31, FsXattr);
    nix::ioctl_write_ptr!(fs_set_xattr, b'X', 32, FsXattr);
}

fn qcmd(cmd: libc::c_int) -> libc::c_int {
    // QCMD(cmd, type): the command shifted past the type byte.
    ((cmd as u32) << 8 | (PRJQUOTA as u32 & 0xff)) as libc::c_int
}

/// Gives the directory `dir` the project `id`, inherited by what is made in it.
pub fn set_project(dir: BorrowedFd<'_>, id: u32) -> io::Result<()> {
    let mut x = FsXattr::default();
    // SAFETY: `x` is a valid `struct fsxattr`, alive for the call.
    unsafe { raw::fs_get_xattr(dir.as_raw_fd(), &mut x) }?;
    x.projid = id;
    x.xflags |= FS_XFLAG_PROJINHERIT;
    // SAFETY: as above.
    unsafe { raw::fs_set_xattr(dir.as_raw_fd(), &x) }?;
    Ok(())
}

/// Gives the open file `fd` the project `id` (and, to a directory, the
/// inherit flag); whether that changed anything.
fn assign(fd: BorrowedFd<'_>, id: u32, dir: bool) -> io::Result<bool> {
    let mut x = FsXattr::default();
    // SAFETY: `x` is a valid `struct fsxattr`, alive for the call.
    unsafe { raw::fs_get_xattr(fd.as_raw_fd(), &mut x) }?;
    if x.projid == id && (!dir || x.xflags & FS_XFLAG_PROJINHERIT != 0) {
        return Ok(false);
    }
    x.projid = id;
    if dir {
        x.xflags |= FS_XFLAG_PROJINHERIT;
    }
    // SAFETY: as above.
    unsafe { raw::fs_set_xattr(fd.as_raw_fd(), &x) }?;
    Ok(true)
}

/// What [`project_tree`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tree {
    /// Directories and regular files put into the project (those already
    /// in it are not counted).
    pub moved: u64,
    /// Entries left as they were: links, sockets, fifos, devices, other
    /// filesystems, what changed under the walk, what lies deeper than
    /// [`MAX_DEPTH`].
    pub skipped: u64,
}

/// How deep [`project_tree`] goes below the top.
pub const MAX_DEPTH: usize = 256;

/// Puts `top` (a directory opened for reading) and every directory and
/// regular file under it into the project `id`: a tree made before quotas were on,
/// whose files would otherwise count for nobody. What is already in another
/// project (a site's home inside its group's) is left to it, and not walked.
///
/// The tree is its owner's, who may change it during the walk: every entry
/// is opened once, relative to its parent's descriptor, never through a
/// symlink, never on another filesystem, and only what the descriptor shows
/// to be the directory or regular file that was listed is changed. Nothing
/// but directories and regular files is opened (no fifo, no device). At
/// most [`MAX_DEPTH`] descriptors are open at once.
pub fn project_tree(top: BorrowedFd<'_>, id: u32) -> io::Result<Tree> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{fstat, fstatat, Mode, SFlag};
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    let root = fstat(top.as_raw_fd())?;
    // The top first: what is made in it during the walk counts already.
    assign(top, id, true)?;
    let mut tree = Tree::default();
    // Each level: its descriptor and what is left to read of it.
    let mut stack: Vec<(OwnedFd, std::fs::ReadDir)> = Vec::new();
    let first = top.try_clone_to_owned()?;
    let rd = std::fs::read_dir(crate::fs::fd_path(first.as_fd()))?;
    stack.push((first, rd));
    while let Some((dir, entries)) = stack.last_mut() {
        let Some(entry) = entries.next() else {
            stack.pop();
            continue;
        };
        let Ok(entry) = entry else {
            tree.skipped += 1;
            continue;
        };
        let name = entry.file_name();
        let at = dir.as_raw_fd();
        let Ok(st) = fstatat(
            Some(at),
            name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) else {
            tree.skipped += 1; // gone meanwhile
            continue;
        };
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        let is_dir = kind == SFlag::S_IFDIR;
        if st.st_dev != root.st_dev
            || !(is_dir || kind == SFlag::S_IFREG)
            || (is_dir && stack.len() > MAX_DEPTH)
        {
            tree.skipped += 1;
            continue;
        }
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC
            | if is_dir {
                OFlag::O_DIRECTORY
            } else {
                OFlag::empty()
            };
        let Ok(raw) = openat(Some(at), name.as_os_str(), flags, Mode::empty()) else {
            tree.skipped += 1;
            continue;
        };
        // SAFETY: a descriptor openat just returned, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // What was opened must be what was listed (not a swap in between).
        let same = fstat(fd.as_raw_fd()).is_ok_and(|now| {
            (now.st_dev, now.st_ino, now.st_mode) == (st.st_dev, st.st_ino, st.st_mode)
        });
        // Another project's tree (a site's home inside its group's) stays
        // that project's: neither relabelled nor walked.
        if project(fd.as_fd()).is_ok_and(|(p, _)| p != 0 && p != id) {
            tree.skipped += 1;
            continue;
        }
        match same.then(|| assign(fd.as_fd(), id, is_dir)) {
            Some(Ok(changed)) => tree.moved += u64::from(changed),
            _ => {
                tree.skipped += 1;
                continue;
            }
        }
        if is_dir {
            match std::fs::read_dir(crate::fs::fd_path(fd.as_fd())) {
                Ok(rd) => stack.push((fd, rd)),
                Err(_) => tree.skipped += 1,
            }
        }
    }
    Ok(tree)
}

/// The project of `dir` and whether it passes it on.
pub fn project(dir: BorrowedFd<'_>) -> io::Result<(u32, bool)> {
    let mut x = FsXattr::default();
    // SAFETY: as above.
    unsafe { raw::fs_get_xattr(dir.as_raw_fd(), &mut x) }?;
    Ok((x.projid, x.xflags & FS_XFLAG_PROJINHERIT != 0))
}

fn quotactl(fs: BorrowedFd<'_>, cmd: libc::c_int, id: u32, q: &mut libc::dqblk) -> io::Result<()> {
    // SAFETY: quotactl_fd(fd, cmd, id, addr): `fs` is an open descriptor on
    // the filesystem; `q` is a valid `struct if_dqblk` for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            fs.as_raw_fd(),
            qcmd(cmd) as libc::c_uint,
            id as libc::c_uint,
            q as *mut libc::dqblk,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A project's use and hard limits (`None`: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes used.
    pub bytes: u64,
    /// Inodes used.
    pub inodes: u64,
    /// The cap on bytes.
    pub bytes_limit: Option<u64>,
    /// The cap on inodes.
    pub inodes_limit: Option<u64>,
}

/// What project `id` uses on the filesystem of `fs`, and its limits. Fails
/// when project quotas are not on there.
pub fn usage(fs: BorrowedFd<'_>, id: u32) -> io::Result<Usage> {
    // SAFETY: all-zero is a valid `struct if_dqblk`.
    let mut q: libc::dqblk = unsafe { std::mem::zeroed() };
    quotactl(fs, libc::Q_GETQUOTA, id, &mut q)?;
    let cap = |v: u64| (v != 0).then_some(v);
    Ok(Usage {
        bytes: q.dqb_curspace,
        inodes: q.dqb_curinodes,
        bytes_limit: cap(q.dqb_bhardlimit).map(|b| b * DQBLK),
        inodes_limit: cap(q.dqb_ihardlimit),
    })
}

/// Sets project `id`'s hard (and soft, the same) limits (`None`: none).
pub fn set_limits(
    fs: BorrowedFd<'_>,
    id: u32,
    bytes: Option<u64>,
    inodes: Option<u64>,
) -> io::Result<()> {
    // SAFETY: as above.
    let mut q: libc::dqblk = unsafe { std::mem::zeroed() };
    let blocks = bytes.map(|b| b.div_ceil(DQBLK)).unwrap_or(0);
    q.dqb_bhardlimit = blocks;
    q.dqb_bsoftlimit = blocks;
    q.dqb_ihardlimit = inodes.unwrap_or(0);
    q.dqb_isoftlimit = inodes.unwrap_or(0);
    q.dqb_valid = libc::QIF_LIMITS;
    quotactl(fs, libc::Q_SETQUOTA, id, &mut q)
}
