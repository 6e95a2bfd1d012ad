//! Opening paths that a tenant or a reseller controls.
//!
//! Whatever lies under a home, a drop directory or a socket directory can be
//! swapped for a symlink at any moment. These helpers open such a path once,
//! relative to a directory descriptor the caller trusts, refusing every
//! symlink on the way (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`),
//! and hand back the descriptor: the caller checks it with `fstat` and acts on
//! it, never on the path again.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput.into())
}

fn openat2(dir: RawFd, path: &Path, flags: libc::c_int, resolve: u64) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    // SAFETY: open_how is plain data; zeroed is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
    how.resolve = resolve;
    loop {
        // SAFETY: openat2 reads the NUL-terminated path and `how` (of the size we
        // pass) and returns a new descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir,
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a descriptor openat2 just returned, owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EAGAIN) && err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Every `RESOLVE_*` flag that keeps a lookup inside `dir` and off symlinks.
const BENEATH: u64 = libc::RESOLVE_BENEATH
    | libc::RESOLVE_NO_SYMLINKS
    | libc::RESOLVE_NO_MAGICLINKS
    | libc::RESOLVE_NO_XDEV;

/// Opens `path` (relative) under `dir` with `flags` (`O_*`): no component may
/// be a symlink, `..` may not leave `dir`, and no mount point is crossed.
///
/// On a kernel without `openat2` (before 5.6, as RHEL 8's), a path of one
/// plain name is opened with `openat(O_NOFOLLOW)`, which is the same for a
/// single component: the name is taken in `dir` itself and a symlink is not
/// followed. Any longer path is then refused (`ENOSYS`).
pub fn open_beneath(dir: BorrowedFd<'_>, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    match openat2(dir.as_raw_fd(), path, flags, BENEATH) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => open_name(dir, path, flags),
        r => r,
    }
}

/// `open_beneath` without `openat2`: one plain name in `dir`, not followed
/// if a symlink (`ENOSYS` for any other path).
fn open_name(dir: BorrowedFd<'_>, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let mut parts = path.components();
    let (Some(std::path::Component::Normal(_)), None) = (parts.next(), parts.next()) else {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    };
    let c = cpath(path)?;
    // SAFETY: openat reads the NUL-terminated name relative to a descriptor
    // we borrow; it returns a new descriptor or -1.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor openat just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the absolute `path` with `flags`, refusing a symlink anywhere on it.
/// Mount points may be crossed (host paths span filesystems).
pub fn open_no_symlinks(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    openat2(
        libc::AT_FDCWD,
        path,
        flags,
        libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    )
}

/// Opens a directory the caller trusts (an admin path) as an `O_PATH` handle.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    // SAFETY: open reads the NUL-terminated path and returns a new descriptor or -1.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor open just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstat` of a descriptor.
pub fn stat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data that fstat fills in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into `st`, which lives across the call.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// The path through which the kernel resolves to exactly what `fd` holds
/// (`/proc/self/fd/N`): for a call that takes only a path, such as `connect`.
pub fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `MOUNT_ATTR_*` bits for [`open_bind`].
pub mod attr {
    /// Read-only.
    pub const RDONLY: u64 = 0x1;
    /// Set-user-id bits ignored.
    pub const NOSUID: u64 = 0x2;
    /// Device nodes refused.
    pub const NODEV: u64 = 0x4;
    /// Execution refused.
    pub const NOEXEC: u64 = 0x8;
}

/// A detached copy of the mount at `source` (with every mount below it when
/// `recursive`), with `attrs` set on each of them and private propagation,
/// ready to be attached elsewhere with `move_mount`. `source` is opened
/// without following any symlink, so what is attached is what was checked:
/// the caller may look at the returned `stat` (owner, type) before using it.
pub fn open_bind(source: &Path, recursive: bool, attrs: u64) -> io::Result<(OwnedFd, libc::stat)> {
    let fd = open_no_symlinks(source, libc::O_PATH)?;
    let st = stat(fd.as_fd())?;
    let mut flags = (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint
        | libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: open_tree takes a descriptor, an empty NUL-terminated path (with
    // AT_EMPTY_PATH: the descriptor itself) and flags; it returns a new descriptor or -1.
    let tree = unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), c"".as_ptr(), flags) };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor open_tree just returned, owned by nobody else.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as RawFd) };
    // struct mount_attr { u64 attr_set, attr_clr, propagation, userns_fd; }
    let set: [u64; 4] = [attrs, 0, libc::MS_PRIVATE, 0];
    // SAFETY: mount_setattr reads `set` (of the size passed) for the mounts of the
    // detached tree `tree` (AT_EMPTY_PATH, every mount below with AT_RECURSIVE).
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            set.as_ptr(),
            std::mem::size_of_val(&set),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((tree, st))
}

/// Why a file under a tenant's control was not read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// Opening or reading it.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A symlink (refused, never followed).
    #[error("a symlink (not followed)")]
    Symlink,
    /// Not a regular file (a fifo, a device, a directory).
    #[error("not a regular file")]
    NotFile,
    /// More bytes than allowed.
    #[error("larger than {0} bytes")]
    TooLarge(u64),
}

/// Reads the regular file `name` in `dir`, never through a symlink, never
/// blocking on a fifo or a device, and never more than `max` bytes (counted on
/// what is read from the descriptor, not on a size that can change meanwhile).
pub fn read_regular(dir: BorrowedFd<'_>, name: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let fd = match open_beneath(
        dir,
        name,
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
    ) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(ReadError::Symlink),
        Err(e) => return Err(e.into()),
    };
    let st = stat(fd.as_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(ReadError::NotFile);
    }
    let mut buf = Vec::new();
    std::fs::File::from(fd)
        .take(max + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(ReadError::TooLarge(max));
    }
    Ok(buf)
}

/// Replaces (or makes) the file `name` in `dir` with `bytes`, owned by
/// `owner`, atomically, in a directory somebody else controls: the bytes go
/// to a temporary name made anew (`O_EXCL|O_NOFOLLOW`, after removing
/// whatever was planted there: a link is removed, never followed), then
/// `renameat` over `name` (which replaces a link at `name` itself, never
/// its target). `name` is one plain name.
pub fn replace_in(dir: BorrowedFd<'_>, name: &str, bytes: &[u8], owner: u32) -> io::Result<()> {
    use nix::fcntl::{openat, renameat, OFlag};
    use nix::sys::stat::Mode;
    use nix::unistd::{fchown, unlinkat, UnlinkatFlags};
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let tmp = format!(".{name}.imperium-tmp");
    let at = Some(dir.as_raw_fd());
    match unlinkat(at, tmp.as_str(), UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let raw = openat(
        at,
        tmp.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )?;
    // SAFETY: a descriptor openat just returned, owned by nobody else.
    let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    let written = io::Write::write_all(&mut f, bytes)
        .and_then(|()| {
            fchown(f.as_raw_fd(), Some(owner.into()), Some(owner.into())).map_err(io::Error::from)
        })
        .and_then(|()| f.sync_all())
        .and_then(|()| renameat(at, tmp.as_str(), at, name).map_err(io::Error::from));
    if written.is_err() {
        let _ = unlinkat(at, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    written
}

/// Removes the entry `name` of `dir` (a link itself, never its target).
pub fn remove_in(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    if name.is_empty() || name.contains('/') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    nix::unistd::unlinkat(
        Some(dir.as_raw_fd()),
        name,
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_a_file_without_following_what_was_planted() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let outside = d.join("outside");
        std::fs::write(&outside, b"root's").unwrap();
        let drop = d.join("drop");
        std::fs::create_dir(&drop).unwrap();
        // Links planted at the temporary name and at the name itself.
        std::os::unix::fs::symlink(&outside, drop.join(".a.toml.imperium-tmp")).unwrap();
        std::os::unix::fs::symlink(&outside, drop.join("a.toml")).unwrap();
        let dir = open_dir(&drop).unwrap();
        replace_in(dir.as_fd(), "a.toml", b"new", 0).unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"root's");
        let m = std::fs::symlink_metadata(drop.join("a.toml")).unwrap();
        assert!(m.is_file());
        assert_eq!(std::fs::read(drop.join("a.toml")).unwrap(), b"new");
        assert!(!drop.join(".a.toml.imperium-tmp").exists());
        assert!(replace_in(dir.as_fd(), "../x", b"", 0).is_err());
        std::os::unix::fs::symlink(&outside, drop.join("b.toml")).unwrap();
        remove_in(dir.as_fd(), "b.toml").unwrap();
        assert!(outside.exists());
    }

    #[test]
    fn reads_regular_files_only_and_never_follows_links() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::write(d.join("ok"), b"hello").unwrap();
        std::fs::write(d.join("big"), vec![b'x'; 100]).unwrap();
        std::os::unix::fs::symlink(d.join("ok"), d.join("link")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", d.join("zero")).unwrap();
        nix::unistd::mkfifo(&d.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        let dir = open_dir(d).unwrap();
        let r = |n: &str| read_regular(dir.as_fd(), Path::new(n), 10);
        assert_eq!(r("ok").unwrap(), b"hello");
        assert!(matches!(r("big"), Err(ReadError::TooLarge(10))));
        assert!(matches!(r("link"), Err(ReadError::Symlink)));
        assert!(matches!(r("zero"), Err(ReadError::Symlink)));
        // Opened without blocking, then refused by type.
        assert!(matches!(r("fifo"), Err(ReadError::NotFile)));
        assert!(matches!(r("sub"), Err(ReadError::NotFile)));
        assert!(r("../ok").is_err(), "`..` may not leave the directory");
        assert!(r("missing").is_err());
    }

    #[test]
    fn without_openat2_one_name_is_opened_and_a_link_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::write(d.join("file"), b"x").unwrap();
        std::os::unix::fs::symlink(d.join("file"), d.join("link")).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/inner"), b"y").unwrap();
        let dir = open_dir(d).unwrap();
        let open = |n: &str| open_name(dir.as_fd(), Path::new(n), libc::O_PATH);
        let mode = |fd: OwnedFd| stat(fd.as_fd()).unwrap().st_mode & libc::S_IFMT;
        assert_eq!(mode(open("file").unwrap()), libc::S_IFREG);
        // The link itself, never what it points at: a caller checking the type refuses it.
        assert_eq!(mode(open("link").unwrap()), libc::S_IFLNK);
        for longer in ["sub/inner", "../x", "/etc/passwd", "."] {
            assert_eq!(
                open(longer).unwrap_err().raw_os_error(),
                Some(libc::ENOSYS),
                "{longer}"
            );
        }
    }

    #[test]
    fn open_beneath_refuses_a_symlink_on_the_way() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::create_dir(d.join("real")).unwrap();
        std::fs::write(d.join("real/f"), b"x").unwrap();
        std::os::unix::fs::symlink("real", d.join("via")).unwrap();
        let dir = open_dir(d).unwrap();
        assert!(open_beneath(dir.as_fd(), Path::new("real/f"), libc::O_PATH).is_ok());
        let e = open_beneath(dir.as_fd(), Path::new("via/f"), libc::O_PATH).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        assert!(open_no_symlinks(&d.join("via/f"), libc::O_PATH).is_err());
        assert!(open_no_symlinks(&d.join("real/f"), libc::O_PATH).is_ok());
    }
}
