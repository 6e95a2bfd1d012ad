//! btrfs subvolumes and qgroups through the kernel's ioctls (`linux/btrfs.h`):
//! the handful a home needs, no more. Each call takes a descriptor of a
//! directory on the filesystem, opened by the caller.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

const MAGIC: u8 = 0x94;
/// `BTRFS_PATH_NAME_MAX`.
const NAME_MAX: usize = 4087;
/// A subvolume's root directory is this inode (`BTRFS_FIRST_FREE_OBJECTID`).
pub const SUBVOLUME_ROOT_INO: u64 = 256;
/// `BTRFS_QUOTA_CTL_ENABLE`.
const QUOTA_CTL_ENABLE: u64 = 1;
/// `BTRFS_QGROUP_LIMIT_MAX_RFER`.
const LIMIT_MAX_RFER: u64 = 1;

#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; NAME_MAX + 1],
}

#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

#[repr(C)]
struct QgroupAssignArgs {
    assign: u64,
    src: u64,
    dst: u64,
}

#[repr(C)]
struct QgroupCreateArgs {
    create: u64,
    qgroupid: u64,
}

#[repr(C)]
struct QgroupLimit {
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    lim: QgroupLimit,
}

#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

#[repr(C)]
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    rest: [u8; 1024 - 32],
}

/// The ioctls, as nix declares them (unsafe: the caller passes a struct of
/// the size the number encodes).
mod raw {
    use super::*;
    nix::ioctl_write_ptr!(subvol_create, MAGIC, 14, VolArgs);
    nix::ioctl_readwrite!(ino_lookup, MAGIC, 18, InoLookupArgs);
    nix::ioctl_read!(fs_info, MAGIC, 31, FsInfoArgs);
    nix::ioctl_readwrite!(quota_ctl, MAGIC, 40, QuotaCtlArgs);
    nix::ioctl_write_ptr!(quota_rescan_raw, MAGIC, 44, RescanArgs);
    nix::ioctl_write_ptr!(qgroup_assign_raw, MAGIC, 41, QgroupAssignArgs);
    nix::ioctl_write_ptr!(qgroup_create_raw, MAGIC, 42, QgroupCreateArgs);
    nix::ioctl_read!(qgroup_limit_raw, MAGIC, 43, QgroupLimitArgs);
}
use raw::*;

/// A qgroup id: `level/id`.
pub fn qgroupid(level: u16, id: u64) -> u64 {
    (u64::from(level) << 48) | (id & ((1 << 48) - 1))
}

/// Turns quota accounting on (again: no harm).
pub fn quota_enable(fs: BorrowedFd<'_>) -> io::Result<()> {
    let mut args = QuotaCtlArgs {
        cmd: QUOTA_CTL_ENABLE,
        status: 0,
    };
    // SAFETY: `args` is a valid, initialised struct of the size the ioctl
    // number encodes, alive for the call.
    unsafe { quota_ctl(fs.as_raw_fd(), &mut args) }?;
    Ok(())
}

/// Makes the subvolume `name` in the directory `parent`.
pub fn subvolume_create(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let bytes = name.to_bytes();
    if bytes.is_empty() || bytes.len() > NAME_MAX || bytes.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut args = VolArgs {
        fd: 0,
        name: [0; NAME_MAX + 1],
    };
    args.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: as above; the name is NUL-terminated within the array.
    unsafe { subvol_create(parent.as_raw_fd(), &args) }?;
    Ok(())
}

/// The id of the subvolume `fd` is in.
pub fn subvolume_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut args = InoLookupArgs {
        treeid: 0,
        objectid: SUBVOLUME_ROOT_INO,
        name: [0; 4080],
    };
    // SAFETY: as above.
    unsafe { ino_lookup(fd.as_raw_fd(), &mut args) }?;
    Ok(args.treeid)
}

/// The filesystem's id, as `/sys/fs/btrfs/<fsid>` names it.
pub fn fsid(fd: BorrowedFd<'_>) -> io::Result<String> {
    let mut args = FsInfoArgs {
        max_id: 0,
        num_devices: 0,
        fsid: [0; 16],
        rest: [0; 1024 - 32],
    };
    // SAFETY: as above.
    unsafe { fs_info(fd.as_raw_fd(), &mut args) }?;
    let h: Vec<String> = args.fsid.iter().map(|b| format!("{b:02x}")).collect();
    let h = h.concat();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// Makes the qgroup `qgroupid` unless it exists.
pub fn qgroup_create(fs: BorrowedFd<'_>, qgroupid: u64) -> io::Result<()> {
    let args = QgroupCreateArgs {
        create: 1,
        qgroupid,
    };
    // SAFETY: as above.
    match unsafe { qgroup_create_raw(fs.as_raw_fd(), &args) } {
        Ok(_) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Counts qgroup `src` in `dst` too (no harm if it already is).
pub fn qgroup_assign(fs: BorrowedFd<'_>, src: u64, dst: u64) -> io::Result<()> {
    relation(fs, src, dst, true)
}

/// Takes qgroup `src` out of `dst` (not in it: nothing to do).
pub fn qgroup_remove(fs: BorrowedFd<'_>, src: u64, dst: u64) -> io::Result<()> {
    relation(fs, src, dst, false)
}

fn relation(fs: BorrowedFd<'_>, src: u64, dst: u64, assign: bool) -> io::Result<()> {
    let args = QgroupAssignArgs {
        assign: u64::from(assign),
        src,
        dst,
    };
    // SAFETY: as above.
    match unsafe { qgroup_assign_raw(fs.as_raw_fd(), &args) } {
        Ok(0) | Err(nix::errno::Errno::EEXIST | nix::errno::Errno::ENOENT) => Ok(()),
        // The kernel could not update the counts at once (`src` shares
        // extents outside itself): they are counted again from scratch.
        Ok(_) => quota_rescan(fs),
        Err(e) => Err(e.into()),
    }
}

/// `struct btrfs_ioctl_quota_rescan_args`.
#[repr(C)]
#[derive(Default)]
struct RescanArgs {
    flags: u64,
    progress: u64,
    reserved: [u64; 6],
}

/// Starts counting every qgroup again (in the background; one running
/// already is fine).
pub fn quota_rescan(fs: BorrowedFd<'_>) -> io::Result<()> {
    let args = RescanArgs::default();
    // SAFETY: as above.
    match unsafe { quota_rescan_raw(fs.as_raw_fd(), &args) } {
        Ok(_) | Err(nix::errno::Errno::EINPROGRESS) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Caps what qgroup `qgroupid` references at `bytes` (`None`: no cap).
pub fn qgroup_limit(fs: BorrowedFd<'_>, qgroupid: u64, bytes: Option<u64>) -> io::Result<()> {
    let mut args = QgroupLimitArgs {
        qgroupid,
        lim: QgroupLimit {
            flags: LIMIT_MAX_RFER,
            max_rfer: bytes.unwrap_or(u64::MAX),
            max_excl: 0,
            rsv_rfer: 0,
            rsv_excl: 0,
        },
    };
    // SAFETY: as above.
    unsafe { qgroup_limit_raw(fs.as_raw_fd(), &mut args) }?;
    Ok(())
}

/// What qgroup `level/id` references now and its cap, from
/// `/sys/fs/btrfs/<fsid>/qgroups/<level>_<id>/` (bytes; `None`: no cap).
pub fn qgroup_usage(fs: BorrowedFd<'_>, qgroupid: u64) -> io::Result<(u64, Option<u64>)> {
    let dir = std::path::Path::new("/sys/fs/btrfs")
        .join(fsid(fs)?)
        .join("qgroups")
        .join(format!("{}_{}", qgroupid >> 48, qgroupid & ((1 << 48) - 1)));
    let read = |f: &str| -> io::Result<u64> {
        let s = std::fs::read_to_string(dir.join(f))?;
        s.trim()
            .parse()
            .map_err(|_| io::Error::other(format!("{}: not a number", dir.join(f).display())))
    };
    let used = read("referenced")?;
    let cap = read("max_referenced")?;
    Ok((used, (cap != u64::MAX).then_some(cap)))
}
