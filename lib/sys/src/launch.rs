//! Starting a container's init.
//!
//! The emperor is a threaded tokio process, so the child side of the clone may
//! only make async-signal-safe calls: everything it needs (C strings, pointer
//! arrays, the seccomp program, the cgroup fds) is prepared before `clone3`,
//! and the child then makes plain syscalls until `execve`. It reports the step
//! and errno of a failure on a pipe that closes on a successful exec.
//!
//! The order in the child: enter the cgroup (v1: write itself into each
//! hierarchy; v2 was cloned straight into it), a new cgroup namespace rooted
//! there, a private mount tree, a tmpfs root on which the filesystem operations
//! run in order (mount points, symlinks, device nodes, the container's own /etc
//! files, the mounts), hostname, loopback,
//! pivot_root, a read-only root, rlimits, then privileges dropped for good
//! (bounding set, ids, capabilities, no_new_privs), seccomp, exec.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_ulong, c_void, CString};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::cgroup::Join;
use crate::pidfd::Pidfd;

/// One mount the child makes before pivot_root. Targets are host paths under the new root.
#[derive(Debug, Clone)]
pub struct MountOp {
    /// Source (a path for binds, a name for pseudo filesystems).
    pub source: Option<CString>,
    /// Where, as a host path inside the new root.
    pub target: CString,
    /// Filesystem type; `None` for binds.
    pub fstype: Option<CString>,
    /// `MS_*` flags of the mount itself.
    pub flags: c_ulong,
    /// Filesystem data (`mode=1777,size=...`).
    pub data: Option<CString>,
    /// For binds: flags of a remount that follows (read-only, nosuid, ...).
    pub remount: Option<c_ulong>,
}

/// One filesystem operation of the child on its new root, in order. Paths are
/// host paths under the new root.
#[derive(Debug)]
pub enum FsOp {
    /// A directory with this mode.
    Dir(CString, u32),
    /// A regular file (mode 0644) with this content (empty for a mount point).
    File(CString, Vec<u8>),
    /// A symlink: (target, path).
    Symlink(CString, CString),
    /// A character device node (mode includes the permission bits).
    Device {
        /// Where.
        path: CString,
        /// Permission bits.
        mode: u32,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A mount.
    Mount(MountOp),
    /// A mount tree the parent prepared ([`crate::fs::open_bind`]), attached here.
    Attach {
        /// The detached tree.
        tree: OwnedFd,
        /// Where, as a host path inside the new root.
        target: CString,
    },
    /// Detach a mount and remove its (empty) mount point.
    Detach(CString),
    /// Remove an empty directory (a mask's source, once bound where it masks).
    Rmdir(CString),
}

/// Everything the child does, prepared by the parent.
#[derive(Debug)]
pub struct ChildPlan {
    /// `CLONE_NEW*` flags for clone3. `CLONE_NEWCGROUP` is done after the cgroup join.
    pub namespaces: c_int,
    /// The host path of the new root (an existing, empty directory; a tmpfs is mounted on it).
    pub root: CString,
    /// What to do on the new root, in order.
    pub fs: Vec<FsOp>,
    /// Hostname in the new UTS namespace.
    pub hostname: Option<CString>,
    /// Bring `lo` up in the new network namespace.
    pub loopback_up: bool,
    /// Remount the new root read-only at the end.
    pub readonly_root: bool,
    /// The tenant's uid.
    pub uid: u32,
    /// The tenant's gid.
    pub gid: u32,
    /// Working directory inside the container.
    pub workdir: CString,
    /// The program to run, as a path inside the new root.
    pub exe: CString,
    /// argv.
    pub argv: Vec<CString>,
    /// envp.
    pub env: Vec<CString>,
    /// A BPF program (array of `sock_filter`), loaded last before exec.
    pub seccomp: Option<Vec<u8>>,
    /// Resource limits: (`RLIMIT_*`, soft, hard).
    pub rlimits: Vec<(u32, u64, u64)>,
    /// A network namespace made ahead of time to join instead of `CLONE_NEWNET`.
    pub netns: Option<OwnedFd>,
    /// Signals blocked when the init starts: the ones it will read through a
    /// signalfd. An init of a new pid namespace drops a signal it has no
    /// handler for; one blocked is never dropped, and waits for the init.
    pub held_signals: Vec<c_int>,
}

/// The step of the child that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
#[non_exhaustive]
pub enum Step {
    /// Writing itself into its cgroups.
    CgroupJoin = 1,
    /// Joining the network namespace made ahead.
    Netns,
    /// unshare(CLONE_NEWCGROUP).
    CgroupNs,
    /// Opening /dev/null for stdin, stdout and stderr.
    Stdin,
    /// Making / private.
    Private,
    /// Mounting the tmpfs root.
    Root,
    /// One of the filesystem operations.
    Fs,
    /// The read-only remount of a bind.
    Remount,
    /// sethostname.
    Hostname,
    /// Bringing lo up.
    Loopback,
    /// pivot_root and detaching the old root.
    Pivot,
    /// Remounting / read-only.
    RootReadonly,
    /// setrlimit.
    Rlimit,
    /// Dropping capabilities and switching ids.
    Privileges,
    /// no_new_privs.
    NoNewPrivs,
    /// Loading the seccomp filter.
    Seccomp,
    /// execve.
    Exec,
}

impl Step {
    fn from_u32(v: u32) -> Option<Step> {
        use Step::*;
        [
            CgroupJoin,
            Netns,
            CgroupNs,
            Stdin,
            Private,
            Root,
            Fs,
            Remount,
            Hostname,
            Loopback,
            Pivot,
            RootReadonly,
            Rlimit,
            Privileges,
            NoNewPrivs,
            Seccomp,
            Exec,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }

    fn indexed(self) -> bool {
        matches!(self, Step::Fs | Step::Remount | Step::Rlimit)
    }
}

/// Why a launch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The parent could not set up (pipes, clone3).
    #[error("{op}: {err}")]
    Parent {
        /// The call.
        op: &'static str,
        /// Its error.
        #[source]
        err: std::io::Error,
    },
    /// The child failed before exec.
    #[error("container setup failed at {step:?}{}: {err}", if step.indexed() { format!(" #{index}") } else { String::new() })]
    Child {
        /// Which step.
        step: Step,
        /// For indexed steps, which entry of the plan.
        index: u32,
        /// The errno.
        #[source]
        err: std::io::Error,
    },
}

impl LaunchError {
    /// Whether trying again later may succeed (a shortage, not a bad plan).
    pub fn is_transient(&self) -> bool {
        let (LaunchError::Parent { err, .. } | LaunchError::Child { err, .. }) = self;
        matches!(
            err.raw_os_error(),
            Some(
                libc::EAGAIN
                    | libc::ENOMEM
                    | libc::EBUSY
                    | libc::EINTR
                    | libc::ENOSPC
                    | libc::EMFILE
                    | libc::ENFILE
            )
        )
    }
}

/// The raw, pointer-level form of a plan: what the child reads.
struct Prepared<'a> {
    plan: &'a ChildPlan,
    argv: Vec<*const c_char>,
    env: Vec<*const c_char>,
    fprog: Option<libc::sock_fprog>,
    self_join: &'a [OwnedFd],
    /// A pidfd of the emperor (-1 if none), to notice it died before the child was set up.
    parent: RawFd,
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `move_mount` takes the source as the descriptor itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `CLONE_INTO_CGROUP` (Linux 5.7), not in every libc crate.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2 writes two fds into the array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(LaunchError::Parent {
            op: "pipe2",
            err: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A child that has been cloned and is setting its container up.
#[derive(Debug)]
pub struct Pending {
    pidfd: Pidfd,
    err_rd: OwnedFd,
}

impl Pending {
    /// Waits until the child has exec'd (its report pipe closes) or failed.
    pub fn wait(self) -> Result<Pidfd, LaunchError> {
        let mut report = [0u8; 12];
        if read_full(self.err_rd.as_raw_fd(), &mut report) == 0 {
            return Ok(self.pidfd);
        }
        wait_reaped(&self.pidfd);
        let word =
            |i: usize| u32::from_ne_bytes([report[i], report[i + 1], report[i + 2], report[i + 3]]);
        Err(LaunchError::Child {
            step: Step::from_u32(word(0)).unwrap_or(Step::Exec),
            index: word(8),
            err: std::io::Error::from_raw_os_error(word(4) as i32),
        })
    }
}

/// Starts the init described by `plan` in the cgroup `join` leads into, and
/// returns its pidfd once it has exec'd.
pub fn spawn(plan: &ChildPlan, join: &Join) -> Result<Pidfd, LaunchError> {
    start(plan, join)?.wait()
}

/// Clones the init and returns at once: the child sets its container up on its
/// own copy of the plan while the caller prepares the next one (a burst of
/// starts uses every core); [`Pending::wait`] collects the outcome.
///
/// With a [`crate::launcher`] in use (the emperor starts one), the clone is
/// made by that small process, so its cost does not grow with the caller's
/// memory and descriptors; without one, or once it is gone, here.
pub fn start(plan: &ChildPlan, join: &Join) -> Result<Pending, LaunchError> {
    let (err_rd, err_wr) = pipe()?;
    if let Some(l) = crate::launcher::current() {
        match l.launch(plan, join, err_wr.as_fd()) {
            Ok(pidfd) => {
                drop(err_wr);
                return Ok(Pending { pidfd, err_rd });
            }
            // Never reached it: started here instead.
            Err(crate::launcher::Failed::Unreached) => {}
            Err(crate::launcher::Failed::Launch(e)) => return Err(e),
        }
    }
    let parent = Pidfd::open(std::process::id() as i32).ok();
    let parent = parent.as_ref().map_or(-1, |p| p.as_raw_fd());
    let pidfd = clone_child(plan, join, err_wr, parent, false)?;
    Ok(Pending { pidfd, err_rd })
}

/// Clones the child that sets up `plan`'s container, with `err_wr` as its
/// report pipe (closed here once cloned) and `parent` a pidfd of the process
/// it must not outlive (-1: none). With `clone_parent`, the child becomes a
/// child of this process's parent (`CLONE_PARENT`: the launcher's children
/// are the emperor's).
pub(crate) fn clone_child(
    plan: &ChildPlan,
    join: &Join,
    err_wr: OwnedFd,
    parent: RawFd,
    clone_parent: bool,
) -> Result<Pidfd, LaunchError> {
    let mut argv: Vec<*const c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut env: Vec<*const c_char> = plan.env.iter().map(|a| a.as_ptr()).collect();
    env.push(std::ptr::null());
    let fsize = std::mem::size_of::<libc::sock_filter>();
    let fprog = plan.seccomp.as_ref().map(|p| libc::sock_fprog {
        len: (p.len() / fsize) as u16,
        filter: p.as_ptr() as *mut libc::sock_filter,
    });
    let (into_cgroup, self_join): (Option<RawFd>, &[OwnedFd]) = match join {
        Join::IntoCgroup(fd) => (Some(fd.as_raw_fd()), &[]),
        Join::WriteSelf(fds) => (None, fds),
    };
    let prep = Prepared {
        plan,
        argv,
        env,
        fprog,
        self_join,
        parent,
    };

    let mut pidfd: c_int = -1;
    let mut args = CloneArgs {
        flags: libc::CLONE_PIDFD as u64 | (plan.namespaces & !libc::CLONE_NEWCGROUP) as u64,
        pidfd: &mut pidfd as *mut c_int as u64,
        // With CLONE_PARENT the kernel takes the caller's own exit signal
        // (SIGCHLD: the launcher was forked) and wants 0 here.
        exit_signal: if clone_parent {
            0
        } else {
            libc::SIGCHLD as u64
        },
        ..Default::default()
    };
    if clone_parent {
        args.flags |= libc::CLONE_PARENT as u64;
    }
    if let Some(fd) = into_cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd as u64;
    }
    // SAFETY: clone3 without CLONE_VM and without a stack behaves like fork: the
    // child gets a copy of this address space and returns 0 here. The child runs
    // only `child()`, which makes async-signal-safe calls and never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        return Err(LaunchError::Parent {
            op: "clone3",
            err: std::io::Error::last_os_error(),
        });
    }
    if pid == 0 {
        // SAFETY: we are the child; see `child` for what it may do.
        unsafe { child(&prep, err_wr.as_raw_fd()) }
    }
    // SAFETY: clone3 stored a fresh pidfd in `pidfd`.
    let pidfd = Pidfd::from_owned(unsafe { OwnedFd::from_raw_fd(pidfd) }, pid as i32);
    drop(err_wr);
    Ok(pidfd)
}

fn wait_reaped(pidfd: &Pidfd) {
    for _ in 0..5000 {
        if !matches!(pidfd.try_reap(), Ok(None)) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn read_full(fd: RawFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into the unfilled tail of `buf`.
        let r = unsafe { libc::read(fd, buf[got..].as_mut_ptr() as *mut c_void, buf.len() - got) };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if r <= 0 {
            break;
        }
        got += r as usize;
    }
    got
}

/// Reports a failed step to the parent and exits. Async-signal-safe.
///
/// # Safety
/// Only for the child of `spawn`.
unsafe fn fail(err_fd: RawFd, step: Step, index: u32) -> ! {
    // SAFETY: errno location is thread-local and valid in the child.
    let errno = unsafe { *libc::__errno_location() } as u32;
    let mut msg = [0u8; 12];
    msg[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    msg[4..8].copy_from_slice(&errno.to_ne_bytes());
    msg[8..].copy_from_slice(&index.to_ne_bytes());
    // SAFETY: write(2) and _exit(2) are async-signal-safe.
    unsafe {
        libc::write(err_fd, msg.as_ptr() as *const c_void, msg.len());
        libc::_exit(127)
    }
}

fn opt_ptr(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
}

/// The child: plain syscalls on prepared data, then exec. Each step is a
/// function of its own; each reports a failure on `err_fd` and exits.
///
/// # Safety
/// Only called in the child of `clone3`, once. It allocates nothing and calls
/// only async-signal-safe functions.
unsafe fn child(p: &Prepared<'_>, err_fd: RawFd) -> ! {
    // SAFETY: each step's contract is this function's.
    unsafe {
        die_with_parent(p);
        enter_cgroup_and_namespaces(p, err_fd);
        quiet_stdio(err_fd);
        build_root(p.plan, err_fd);
        pivot(p.plan, err_fd);
        drop_privileges(p.plan, err_fd);
        exec(p, err_fd)
    }
}

/// Until it drops privileges (which clears this), the child dies with the
/// emperor.
///
/// # Safety
/// Only in the child of `clone3`, before exec: async-signal-safe calls only,
/// on pointers into the plan the parent prepared (this copy of the address
/// space keeps it alive until exec).
unsafe fn die_with_parent(p: &Prepared<'_>) {
    // SAFETY: prctl and poll on a local struct.
    unsafe {
        // A half-made container is never left for nobody to adopt. Checked once after setting it, in case the emperor is gone
        // already (its pidfd is readable once it has exited).
        let mut gone = libc::pollfd {
            fd: p.parent,
            events: libc::POLLIN,
            revents: 0,
        };
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0
            || (p.parent >= 0 && libc::poll(&mut gone, 1, 0) != 0)
        {
            libc::_exit(127);
        }
    }
}

/// Into the site's cgroup, its network namespace and a new cgroup namespace.
///
/// # Safety
/// Only in the child of `clone3`, before exec: async-signal-safe calls only,
/// on pointers into the plan the parent prepared (this copy of the address
/// space keeps it alive until exec).
unsafe fn enter_cgroup_and_namespaces(p: &Prepared<'_>, err_fd: RawFd) {
    let plan = p.plan;
    // SAFETY: write/setns/unshare on descriptors the plan holds open.
    unsafe {
        // Single-threaded, so moving this thread moves the process, and writing
        // "0" to `tasks` skips the kernel's global threadgroup lock.
        for fd in p.self_join {
            if libc::write(fd.as_raw_fd(), c"0".as_ptr() as *const c_void, 1) != 1 {
                fail(err_fd, Step::CgroupJoin, 0);
            }
        }
        if let Some(ns) = &plan.netns {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) < 0 {
                fail(err_fd, Step::Netns, 0);
            }
        }
        // Now in our cgroup: a new cgroup namespace is rooted there.
        if plan.namespaces & libc::CLONE_NEWCGROUP != 0 && libc::unshare(libc::CLONE_NEWCGROUP) < 0
        {
            fail(err_fd, Step::CgroupNs, 0);
        }
    }
}

/// Standard input and output on /dev/null.
///
/// # Safety
/// Only in the child of `clone3`, before exec: async-signal-safe calls only,
/// on pointers into the plan the parent prepared (this copy of the address
/// space keeps it alive until exec).
unsafe fn quiet_stdio(err_fd: RawFd) {
    // SAFETY: open/dup2/close of /dev/null.
    unsafe {
        // Nothing of the emperor's reaches the container: its stdin, stdout
        // and stderr become /dev/null (the init logs into the site's own
        // files), and every other descriptor closes at exec (below).
        let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if devnull < 0
            || libc::dup2(devnull, 0) < 0
            || libc::dup2(devnull, 1) < 0
            || libc::dup2(devnull, 2) < 0
        {
            fail(err_fd, Step::Stdin, 0);
        }
        if devnull > 2 {
            libc::close(devnull);
        }
    }
}

/// The container's root: a private mount tree, a tmpfs, and the plan's
/// filesystem steps in order; then the hostname and the loopback.
///
/// # Safety
/// Only in the child of `clone3`, before exec: async-signal-safe calls only,
/// on pointers into the plan the parent prepared (this copy of the address
/// space keeps it alive until exec).
unsafe fn build_root(plan: &ChildPlan, err_fd: RawFd) {
    let null = std::ptr::null::<c_char>();
    // SAFETY: mount(2) on C strings of the plan.
    unsafe {
        if libc::mount(
            null,
            c"/".as_ptr(),
            null,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) < 0
        {
            fail(err_fd, Step::Private, 0);
        }
        let root = plan.root.as_ptr();
        // No MS_NODEV: the device nodes of /dev live on this tmpfs (only those
        // the plan creates; the tenant cannot make more). No size: /tmp and
        // /dev/shm are directories of it (the site's memory limit bounds them).
        let tmpfs_opts = c"mode=0755";
        if libc::mount(
            c"tmpfs".as_ptr(),
            root,
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID,
            tmpfs_opts.as_ptr() as *const c_void,
        ) < 0
        {
            fail(err_fd, Step::Root, 0);
        }
        // Every directory, file and node gets the plan's mode as given (a
        // sticky 1777 /tmp, a 0666 /dev/null) without a chmod after each;
        // the init starts with the umask it would have had.
        let umask = libc::umask(0);
        for (i, op) in plan.fs.iter().enumerate() {
            if !fs_op(op, i as u32, err_fd) {
                fail(err_fd, Step::Fs, i as u32);
            }
        }
        libc::umask(umask);
        if let Some(h) = &plan.hostname {
            if libc::sethostname(h.as_ptr(), h.as_bytes().len()) < 0 {
                fail(err_fd, Step::Hostname, 0);
            }
        }
        if plan.loopback_up && !loopback_up() {
            fail(err_fd, Step::Loopback, 0);
        }
    }
}

/// One filesystem step of the plan; false if it failed.
///
/// # Safety
/// Only in the child of `clone3`, before exec: async-signal-safe calls only,
/// on pointers into the plan the parent prepared (this copy of the address
/// space keeps it alive until exec).
unsafe fn fs_op(op: &FsOp, i: u32, err_fd: RawFd) -> bool {
    let null = std::ptr::null::<c_char>();
    // SAFETY: syscalls on C strings and descriptors of the plan.
    unsafe {
        match op {
            // The umask is 0 while the root is built (see `build_root`):
            // each mode is the plan's as given.
            FsOp::Dir(path, mode) => libc::mkdir(path.as_ptr(), *mode) == 0,
            FsOp::Symlink(target, path) => libc::symlink(target.as_ptr(), path.as_ptr()) == 0,
            // An empty file (a mount point) in one call.
            FsOp::File(path, content) if content.is_empty() => {
                libc::mknod(path.as_ptr(), libc::S_IFREG | 0o644, 0) == 0
            }
            FsOp::File(path, content) => {
                let fd = libc::open(
                    path.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                    0o644,
                );
                let written = fd >= 0
                    && libc::write(fd, content.as_ptr() as *const c_void, content.len())
                        == content.len() as isize;
                if fd >= 0 {
                    libc::close(fd);
                }
                written
            }
            FsOp::Device {
                path,
                mode,
                major,
                minor,
            } => {
                libc::mknod(
                    path.as_ptr(),
                    libc::S_IFCHR | *mode,
                    libc::makedev(*major, *minor),
                ) == 0
            }
            FsOp::Mount(m) => {
                let data = opt_ptr(&m.data) as *const c_void;
                if libc::mount(
                    opt_ptr(&m.source),
                    m.target.as_ptr(),
                    opt_ptr(&m.fstype),
                    m.flags,
                    data,
                ) < 0
                {
                    fail(err_fd, Step::Fs, i);
                }
                if let Some(flags) = m.remount {
                    let f = libc::MS_BIND | libc::MS_REMOUNT | flags;
                    if libc::mount(null, m.target.as_ptr(), null, f, std::ptr::null()) < 0 {
                        fail(err_fd, Step::Remount, i);
                    }
                }
                true
            }
            FsOp::Attach { tree, target } => {
                libc::syscall(
                    libc::SYS_move_mount,
                    tree.as_raw_fd(),
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    target.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                ) == 0
            }
            FsOp::Detach(path) => {
                libc::umount2(path.as_ptr(), libc::MNT_DETACH) == 0
                    && libc::rmdir(path.as_ptr()) == 0
            }
            FsOp::Rmdir(path) => libc::rmdir(path.as_ptr()) == 0,
        }
    }
}

/// pivot_root into the new root (and make it read-only if the plan says).
///
/// # Safety
/// Only in the child of `clone3`, before exec: async-signal-safe calls only,
/// on pointers into the plan the parent prepared (this copy of the address
/// space keeps it alive until exec).
unsafe fn pivot(plan: &ChildPlan, err_fd: RawFd) {
    let null = std::ptr::null::<c_char>();
    let root = plan.root.as_ptr();
    // SAFETY: chdir/pivot_root/umount2/mount on C strings.
    unsafe {
        // pivot_root(".", ".") stacks the old root on the new one; detaching
        // it leaves the new root alone (no put_old directory needed).
        if libc::chdir(root) < 0
            || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) < 0
            || libc::umount2(c".".as_ptr(), libc::MNT_DETACH) < 0
            || libc::chdir(c"/".as_ptr()) < 0
        {
            fail(err_fd, Step::Pivot, 0);
        }
        if plan.readonly_root {
            let f = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID;
            if libc::mount(null, c"/".as_ptr(), null, f, std::ptr::null()) < 0 {
                fail(err_fd, Step::RootReadonly, 0);
            }
        }
    }
}

/// Limits, then every capability and the emperor's ids dropped for good.
///
/// # Safety
/// Only in the child of `clone3`, before exec: async-signal-safe calls only,
/// on pointers into the plan the parent prepared (this copy of the address
/// space keeps it alive until exec).
unsafe fn drop_privileges(plan: &ChildPlan, err_fd: RawFd) {
    // SAFETY: setrlimit/prctl/raw set*id and capset on local structs.
    unsafe {
        // Limits first: raising a hard limit needs CAP_SYS_RESOURCE.
        for (i, (res, soft, hard)) in plan.rlimits.iter().enumerate() {
            let lim = libc::rlimit {
                rlim_cur: *soft,
                rlim_max: *hard,
            };
            if libc::setrlimit(*res as _, &lim) < 0 {
                fail(err_fd, Step::Rlimit, i as u32);
            }
        }
        // Drop every capability for good: the bounding set first (needs
        // CAP_SETPCAP, so before the uid change), then ids, then what is left.
        // The kernel refuses the first number past its last capability.
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0
                && *libc::__errno_location() == libc::EINVAL
            {
                break;
            }
        }
        // Raw system calls, not glibc's wrappers: glibc still believes this
        // copy of the emperor has its threads, and its wrappers would signal
        // them all and wait on a lock one of them may have held at the clone
        // (a child was found hung there, between setgroups and setresgid).
        let gid = plan.gid;
        let (uid, one) = (plan.uid as libc::c_long, 1 as libc::c_long);
        let g = gid as libc::c_long;
        if libc::syscall(libc::SYS_setgroups, one, &gid as *const u32) < 0
            || libc::syscall(libc::SYS_setresgid, g, g, g) < 0
            || libc::syscall(libc::SYS_setresuid, uid, uid, uid) < 0
        {
            fail(err_fd, Step::Privileges, 0);
        }
        // struct __user_cap_header_struct { u32 version; int pid; }, version 3
        // takes two __user_cap_data_struct { u32 effective, permitted, inheritable; }.
        let mut hdr: [u32; 2] = [0x2008_0522, 0];
        let data = [0u32; 6];
        if libc::syscall(libc::SYS_capset, &mut hdr as *mut _, data.as_ptr()) < 0
            || libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ) < 0
        {
            fail(err_fd, Step::Privileges, 0);
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            fail(err_fd, Step::NoNewPrivs, 0);
        }
    }
}

/// The working directory, the seccomp filter, descriptors closed at exec,
/// and exec.
///
/// # Safety
/// Only in the child of `clone3`, before exec: async-signal-safe calls only,
/// on pointers into the plan the parent prepared (this copy of the address
/// space keeps it alive until exec).
unsafe fn exec(p: &Prepared<'_>, err_fd: RawFd) -> ! {
    let plan = p.plan;
    // SAFETY: chdir/prctl/close_range/execve on the plan's data.
    unsafe {
        if libc::chdir(plan.workdir.as_ptr()) < 0 {
            libc::chdir(c"/".as_ptr());
        }
        if let Some(prog) = &p.fprog {
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                prog as *const libc::sock_fprog,
                0,
                0,
            ) < 0
            {
                fail(err_fd, Step::Seccomp, 0);
            }
        }
        // The init starts with exactly these blocked: a stop sent between
        // the exec and its signalfd waits for it instead of being dropped.
        let mut held: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut held);
        for &sig in &plan.held_signals {
            libc::sigaddset(&mut held, sig);
        }
        if libc::sigprocmask(libc::SIG_SETMASK, &held, std::ptr::null_mut()) < 0 {
            fail(err_fd, Step::Exec, 0);
        }
        // Whatever this process inherited beyond 0-2 (the emperor's own
        // descriptors, the mount trees, the report pipe) closes at exec.
        if libc::close_range(
            3,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
        ) < 0
        {
            fail(err_fd, Step::Exec, 0);
        }
        libc::execve(plan.exe.as_ptr(), p.argv.as_ptr(), p.env.as_ptr());
        fail(err_fd, Step::Exec, 0)
    }
}

/// Sets IFF_UP on `lo` of the calling thread's network namespace.
pub(crate) fn bring_loopback_up() -> bool {
    // SAFETY: see `loopback_up`: plain syscalls on a local struct.
    unsafe { loopback_up() }
}

/// Sets IFF_UP on `lo`. Async-signal-safe.
///
/// # Safety
/// Plain socket and ioctl calls on a local struct.
unsafe fn loopback_up() -> bool {
    // SAFETY: socket/ioctl/close on a zeroed ifreq naming "lo".
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return false;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as c_char;
        req.ifr_name[1] = b'o' as c_char;
        let mut ok = libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req) >= 0;
        if ok {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            ok = libc::ioctl(s, libc::SIOCSIFFLAGS, &req) >= 0;
        }
        libc::close(s);
        ok
    }
}
