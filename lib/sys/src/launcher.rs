//! The launcher: a small single-threaded process that clones containers for
//! the emperor.
//!
//! Cloning copies the caller: its page tables (then copy-on-write faults in
//! both), and its descriptor table, which the child's `execve` then closes
//! one by one. Both grow with the number of sites an emperor holds (two
//! descriptors a site). The emperor therefore starts this process once, at
//! start-up (a copy of itself, run as `emperor launcher`), and sends it each
//! [`ChildPlan`] with the descriptors it names over a `SOCK_SEQPACKET` pair
//! (`SCM_RIGHTS`); the launcher clones with `CLONE_PARENT`, so the init is
//! still the emperor's child (it is reaped, waited for and re-adopted as
//! before), and hands back the pidfd. The child's set-up is the same code,
//! [`crate::launch`]'s.
//!
//! The launcher dies with the emperor (`PR_SET_PDEATHSIG`). If it is gone, a
//! start that never reached it is made in the emperor itself; one that reached
//! it and got no answer fails as transient (the child may exist: the retry
//! kills what is in the site's cgroup first).
#![allow(unsafe_code)]

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

use crate::cgroup::Join;
use crate::launch::{clone_child, ChildPlan, FsOp, LaunchError, MountOp};
use crate::pidfd::Pidfd;

/// The most descriptors one plan may pass (the kernel's `SCM_MAX_FD`).
const MAX_FDS: usize = 253;

/// The largest plan message (a plan is a few tens of KiB).
const MAX_MESSAGE: usize = 1 << 20;

/// How long the launcher may take to answer (a clone takes a millisecond).
const ANSWER_WITHIN_SECS: i64 = 10;

static CURRENT: OnceLock<Launcher> = OnceLock::new();

/// The launcher this process uses, if one was started.
pub(crate) fn current() -> Option<&'static Launcher> {
    CURRENT.get().filter(|l| !l.gone())
}

/// Why a launch through the launcher did not give a child.
#[derive(Debug)]
pub(crate) enum Failed {
    /// The plan never reached it (it is gone, or the plan is too big to
    /// send): nothing was cloned.
    Unreached,
    /// It failed to clone, or ended before answering.
    Launch(LaunchError),
}

/// The emperor's end of the launcher.
#[derive(Debug)]
pub struct Launcher {
    /// Its end of the pair and the process; `None` once it is gone.
    state: Mutex<Option<(OwnedFd, std::process::Child)>>,
}

/// Starts the launcher: runs `exe args...` (the emperor itself, whose `main`
/// calls [`serve`] for those arguments) with its end of the pair as
/// descriptor 3, and makes every later [`crate::launch::start`] of this
/// process go through it. Call it while the process has one thread: the
/// launcher's children are children of the thread that started it, and die
/// if that thread ends before they drop privileges.
pub fn start(exe: &std::path::Path, args: &[&str]) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new(exe);
    cmd.arg0("emperor")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // SAFETY: between fork and exec: dup2 and fcntl only (async-signal-safe),
    // on a descriptor this process holds open.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);
    // A launcher that stops answering (stopped, hung) is given up, not waited for.
    nix::sys::socket::setsockopt(
        &ours,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(ANSWER_WITHIN_SECS, 0),
    )?;
    let launcher = Launcher {
        state: Mutex::new(Some((ours, child))),
    };
    CURRENT
        .set(launcher)
        .map_err(|_| std::io::Error::other("a launcher is already running"))
}

impl Launcher {
    fn gone(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// Has the launcher clone the child for `plan`, with `err_wr` as its
    /// report pipe.
    pub(crate) fn launch(
        &self,
        plan: &ChildPlan,
        join: &Join,
        err_wr: BorrowedFd<'_>,
    ) -> Result<Pidfd, Failed> {
        let mut fds = Vec::new();
        let msg = encode(plan, join, err_wr.as_raw_fd(), &mut fds);
        if fds.len() > MAX_FDS || msg.len() > MAX_MESSAGE {
            return Err(Failed::Unreached);
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some((s, _)) = state.as_ref() else {
            return Err(Failed::Unreached);
        };
        // Once it fails it is stopped, reaped and never asked again.
        let forget = |state: &mut Option<(OwnedFd, std::process::Child)>| {
            if let Some((_, mut child)) = state.take() {
                eprintln!("emperor: the launcher is gone; containers are cloned by the emperor from now on");
                let _ = child.kill();
                let _ = child.wait();
            }
        };
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let sent = loop {
            match sendmsg::<()>(
                s.as_raw_fd(),
                &[IoSlice::new(&msg)],
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r,
            }
        };
        if sent.is_err() {
            forget(&mut state);
            return Err(Failed::Unreached);
        }
        let mut answer = [0u8; 8];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let got = loop {
            let mut iov = [IoSliceMut::new(&mut answer)];
            let r = recvmsg::<()>(
                s.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            );
            if r.as_ref().err() == Some(&nix::errno::Errno::EINTR) {
                continue;
            }
            break r.map(|m| {
                let fd = m.cmsgs().ok().and_then(|mut c| {
                    c.find_map(|c| match c {
                        ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                        _ => None,
                    })
                });
                (m.bytes, fd)
            });
        };
        let (bytes, fd) = match got {
            Ok((8, fd)) => (answer, fd),
            _ => {
                // It ended between the plan and the answer: a child may
                // exist. Transient; the retry empties the cgroup first.
                forget(&mut state);
                return Err(Failed::Launch(LaunchError::Parent {
                    op: "the launcher ended during a start",
                    err: std::io::Error::from_raw_os_error(libc::EAGAIN),
                }));
            }
        };
        // SAFETY: the kernel installed this descriptor in our table just now.
        let fd = fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
        let errno = i32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let pid = i32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        match (errno, fd) {
            (0, Some(fd)) => Ok(Pidfd::from_owned(fd, pid)),
            (errno, _) => Err(Failed::Launch(LaunchError::Parent {
                op: "clone3 (in the launcher)",
                err: std::io::Error::from_raw_os_error(if errno == 0 { libc::EIO } else { errno }),
            })),
        }
    }
}

/// The launcher's side, for `emperor launcher`: serves plans on descriptor 3
/// until the emperor closes its end, or dies.
pub fn serve() -> ! {
    // Only as `emperor serve` starts it: descriptor 3 its end of the pair.
    let ours = nix::sys::socket::getsockopt(
        // SAFETY: borrowed for this one call; an fd that is not open fails it.
        &unsafe { BorrowedFd::borrow_raw(3) },
        nix::sys::socket::sockopt::SockType,
    );
    if ours != Ok(SockType::SeqPacket) {
        eprintln!("emperor launcher: started by `emperor serve` only");
        std::process::exit(2);
    }
    // SAFETY: descriptor 3 is the pair's end the emperor gave this process
    // (checked above); nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(3) };
    // Nothing the emperor was started with stays open here; first, so that
    // no descriptor opened below is closed with them.
    // SAFETY: close_range takes no pointers; 0-3 stay.
    unsafe { libc::close_range(4, libc::c_uint::MAX, 0) };
    // SAFETY: prctl and getppid take no pointers.
    let parent = unsafe {
        let expected = libc::getppid();
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0
            || libc::getppid() != expected
        {
            libc::_exit(1);
        }
        // `ps` and `top` name it (it was exec'd as /proc/self/exe).
        libc::prctl(libc::PR_SET_NAME, c"launcher".as_ptr(), 0, 0, 0);
        expected
    };
    let Ok(parent) = Pidfd::open(parent) else {
        std::process::exit(1)
    };
    let _ = nix::fcntl::fcntl(
        sock.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (n, fds, truncated) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => {
                    let mut fds = Vec::new();
                    if let Ok(c) = m.cmsgs() {
                        for c in c {
                            if let ControlMessageOwned::ScmRights(r) = c {
                                // SAFETY: installed in our table by this recvmsg.
                                fds.extend(
                                    r.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                                );
                            }
                        }
                    }
                    let cut = m
                        .flags
                        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                    (m.bytes, fds, cut)
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => std::process::exit(0),
            }
        };
        if n == 0 {
            // The emperor closed its end.
            std::process::exit(0);
        }
        let result = match decode(&buf[..n], fds) {
            Some((plan, join, err_wr)) if !truncated => {
                clone_child(&plan, &join, err_wr, parent.as_raw_fd(), true)
            }
            _ => Err(LaunchError::Parent {
                op: "reading the plan",
                err: std::io::Error::from_raw_os_error(libc::EINVAL),
            }),
        };
        let (errno, pid, fd) = match &result {
            Ok(p) => (0, p.pid(), Some(p.as_raw_fd())),
            Err(LaunchError::Parent { err, .. } | LaunchError::Child { err, .. }) => {
                (err.raw_os_error().unwrap_or(libc::EIO), 0, None)
            }
        };
        let mut answer = [0u8; 8];
        answer[..4].copy_from_slice(&errno.to_ne_bytes());
        answer[4..].copy_from_slice(&pid.to_ne_bytes());
        let fds: Vec<RawFd> = fd.into_iter().collect();
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let cmsg: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        if sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&answer)],
            cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .is_err()
        {
            std::process::exit(0);
        }
        // The pidfd and the plan's descriptors close here: the emperor and
        // the child hold their own.
        drop(result);
    }
}

/// The wire form of a plan: fields in order, integers little-endian, byte
/// strings with a u32 length, descriptors as indexes into `fds`.
fn encode(plan: &ChildPlan, join: &Join, err_wr: RawFd, fds: &mut Vec<RawFd>) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(16 * 1024));
    let mut fd = |w: &mut Writer, f: RawFd| {
        w.u32(fds.len() as u32);
        fds.push(f);
    };
    fd(&mut w, err_wr);
    match join {
        Join::IntoCgroup(f) => {
            w.u8(0);
            fd(&mut w, f.as_raw_fd());
        }
        Join::WriteSelf(list) => {
            w.u8(1);
            w.u32(list.len() as u32);
            for f in list {
                fd(&mut w, f.as_raw_fd());
            }
        }
    }
    w.u32(plan.namespaces as u32);
    w.bytes(plan.root.as_bytes());
    w.u32(plan.fs.len() as u32);
    for op in &plan.fs {
        match op {
            FsOp::Dir(p, mode) => {
                w.u8(0);
                w.bytes(p.as_bytes());
                w.u32(*mode);
            }
            FsOp::File(p, content) => {
                w.u8(1);
                w.bytes(p.as_bytes());
                w.bytes(content);
            }
            FsOp::Symlink(t, p) => {
                w.u8(2);
                w.bytes(t.as_bytes());
                w.bytes(p.as_bytes());
            }
            FsOp::Device {
                path,
                mode,
                major,
                minor,
            } => {
                w.u8(3);
                w.bytes(path.as_bytes());
                w.u32(*mode);
                w.u32(*major);
                w.u32(*minor);
            }
            FsOp::Mount(m) => {
                w.u8(4);
                w.opt(m.source.as_ref().map(|s| s.as_bytes()));
                w.bytes(m.target.as_bytes());
                w.opt(m.fstype.as_ref().map(|s| s.as_bytes()));
                w.u64(m.flags);
                w.opt(m.data.as_ref().map(|s| s.as_bytes()));
                w.u8(m.remount.is_some() as u8);
                w.u64(m.remount.unwrap_or(0));
            }
            FsOp::Attach { tree, target } => {
                w.u8(5);
                fd(&mut w, tree.as_raw_fd());
                w.bytes(target.as_bytes());
            }
            FsOp::Detach(p) => {
                w.u8(6);
                w.bytes(p.as_bytes());
            }
            FsOp::Rmdir(p) => {
                w.u8(7);
                w.bytes(p.as_bytes());
            }
        }
    }
    w.opt(plan.hostname.as_ref().map(|h| h.as_bytes()));
    w.u8(plan.loopback_up as u8);
    w.u8(plan.readonly_root as u8);
    w.u32(plan.uid);
    w.u32(plan.gid);
    w.bytes(plan.workdir.as_bytes());
    w.bytes(plan.exe.as_bytes());
    for list in [&plan.argv, &plan.env] {
        w.u32(list.len() as u32);
        for a in list {
            w.bytes(a.as_bytes());
        }
    }
    w.opt(plan.seccomp.as_deref());
    w.u32(plan.rlimits.len() as u32);
    for (res, soft, hard) in &plan.rlimits {
        w.u32(*res);
        w.u64(*soft);
        w.u64(*hard);
    }
    match &plan.netns {
        Some(ns) => {
            w.u8(1);
            fd(&mut w, ns.as_raw_fd());
        }
        None => w.u8(0),
    }
    w.u32(plan.held_signals.len() as u32);
    for sig in &plan.held_signals {
        w.u32(*sig as u32);
    }
    w.0
}

/// The plan back from its wire form; `None` if anything is out of place.
fn decode(buf: &[u8], fds: Vec<OwnedFd>) -> Option<(ChildPlan, Join, OwnedFd)> {
    let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    let mut r = Reader(buf);
    let mut fd = |r: &mut Reader| -> Option<OwnedFd> { fds.get_mut(r.u32()? as usize)?.take() };
    let err_wr = fd(&mut r)?;
    let join = match r.u8()? {
        0 => Join::IntoCgroup(fd(&mut r)?),
        1 => {
            let n = r.u32()?;
            let mut list = Vec::new();
            for _ in 0..n {
                list.push(fd(&mut r)?);
            }
            Join::WriteSelf(list)
        }
        _ => return None,
    };
    let namespaces = r.u32()? as i32;
    let root = r.cstring()?;
    let n = r.u32()?;
    let mut ops = Vec::new();
    for _ in 0..n {
        ops.push(match r.u8()? {
            0 => FsOp::Dir(r.cstring()?, r.u32()?),
            1 => FsOp::File(r.cstring()?, r.bytes()?.to_vec()),
            2 => FsOp::Symlink(r.cstring()?, r.cstring()?),
            3 => FsOp::Device {
                path: r.cstring()?,
                mode: r.u32()?,
                major: r.u32()?,
                minor: r.u32()?,
            },
            4 => {
                let source = r.opt_cstring()?;
                let target = r.cstring()?;
                let fstype = r.opt_cstring()?;
                let flags = r.u64()? as libc::c_ulong;
                let data = r.opt_cstring()?;
                let has_remount = r.u8()? == 1;
                let remount = r.u64()? as libc::c_ulong;
                FsOp::Mount(MountOp {
                    source,
                    target,
                    fstype,
                    flags,
                    data,
                    remount: has_remount.then_some(remount),
                })
            }
            5 => FsOp::Attach {
                tree: fd(&mut r)?,
                target: r.cstring()?,
            },
            6 => FsOp::Detach(r.cstring()?),
            7 => FsOp::Rmdir(r.cstring()?),
            _ => return None,
        });
    }
    let hostname = r.opt_cstring()?;
    let loopback_up = r.u8()? == 1;
    let readonly_root = r.u8()? == 1;
    let uid = r.u32()?;
    let gid = r.u32()?;
    let workdir = r.cstring()?;
    let exe = r.cstring()?;
    let mut lists = [Vec::new(), Vec::new()];
    for list in &mut lists {
        let n = r.u32()?;
        for _ in 0..n {
            list.push(r.cstring()?);
        }
    }
    let [argv, env] = lists;
    let seccomp = r.opt()?.map(<[u8]>::to_vec);
    let n = r.u32()?;
    let mut rlimits = Vec::new();
    for _ in 0..n {
        rlimits.push((r.u32()?, r.u64()?, r.u64()?));
    }
    let netns = match r.u8()? {
        1 => Some(fd(&mut r)?),
        _ => None,
    };
    let n = r.u32()?;
    if n > 64 {
        return None;
    }
    let mut held_signals = Vec::new();
    for _ in 0..n {
        held_signals.push(r.u32()? as libc::c_int);
    }
    if !r.0.is_empty() {
        return None;
    }
    let plan = ChildPlan {
        namespaces,
        root,
        fs: ops,
        hostname,
        loopback_up,
        readonly_root,
        uid,
        gid,
        workdir,
        exe,
        argv,
        env,
        seccomp,
        rlimits,
        netns,
        held_signals,
    };
    Some((plan, join, err_wr))
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn opt(&mut self, b: Option<&[u8]>) {
        self.u8(b.is_some() as u8);
        if let Some(b) = b {
            self.bytes(b);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn cstring(&mut self) -> Option<std::ffi::CString> {
        std::ffi::CString::new(self.bytes()?).ok()
    }
    fn opt(&mut self) -> Option<Option<&'a [u8]>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.bytes()?)),
            _ => None,
        }
    }
    fn opt_cstring(&mut self) -> Option<Option<std::ffi::CString>> {
        match self.opt()? {
            None => Some(None),
            Some(b) => Some(Some(std::ffi::CString::new(b).ok()?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn c(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    fn no_fds(s: String) -> String {
        let mut out = String::new();
        let mut rest = s.as_str();
        while let Some(i) = rest.find("fd: ") {
            out.push_str(&rest[..i + 4]);
            out.push('_');
            rest = rest[i + 4..].trim_start_matches(|c: char| c.is_ascii_digit());
        }
        out + rest
    }

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn a_plan_reads_back_as_it_was_written() {
        let plan = ChildPlan {
            namespaces: libc::CLONE_NEWNS | libc::CLONE_NEWPID,
            root: c("/run/x/root"),
            fs: vec![
                FsOp::Dir(c("/run/x/root/etc"), 0o755),
                FsOp::File(c("/run/x/root/etc/hostname"), b"site1\n".to_vec()),
                FsOp::Symlink(c("usr/bin"), c("/run/x/root/bin")),
                FsOp::Device {
                    path: c("/run/x/root/dev/null"),
                    mode: 0o666,
                    major: 1,
                    minor: 3,
                },
                FsOp::Mount(MountOp {
                    source: Some(c("tmpfs")),
                    target: c("/run/x/root/tmp"),
                    fstype: Some(c("tmpfs")),
                    flags: libc::MS_NOSUID,
                    data: None,
                    remount: Some(libc::MS_RDONLY),
                }),
                FsOp::Attach {
                    tree: devnull(),
                    target: c("/run/x/root/usr"),
                },
                FsOp::Detach(c("/run/x/root/old")),
                FsOp::Rmdir(c("/run/x/root/.mask")),
            ],
            hostname: Some(c("site1")),
            loopback_up: true,
            readonly_root: true,
            uid: 30001,
            gid: 30001,
            workdir: c("/home/site1"),
            exe: c("/run/imperium/bin/vassal"),
            argv: vec![c("vassal"), c("init")],
            env: vec![c("HOME=/home/site1")],
            seccomp: Some(vec![1, 2, 3, 4, 5, 6, 7, 8]),
            rlimits: vec![(7, 1024, 4096)],
            netns: Some(devnull()),
            held_signals: vec![libc::SIGTERM, libc::SIGCHLD],
        };
        let join = Join::WriteSelf(vec![devnull(), devnull()]);
        let err = devnull();
        let mut raw = Vec::new();
        let msg = encode(&plan, &join, err.as_raw_fd(), &mut raw);
        // What SCM_RIGHTS gives the launcher: new descriptors, in order.
        let fds: Vec<OwnedFd> = raw
            .iter()
            .map(|fd| {
                // SAFETY: borrowing descriptors this test holds open.
                unsafe { BorrowedFd::borrow_raw(*fd) }
                    .try_clone_to_owned()
                    .unwrap()
            })
            .collect();
        assert_eq!(fds.len(), 5);
        let (back, join_back, _) = decode(&msg, fds).expect("decodes");
        // Descriptor numbers differ; nothing else may.
        assert_eq!(no_fds(format!("{back:?}")), no_fds(format!("{plan:?}")));
        assert!(matches!(join_back, Join::WriteSelf(l) if l.len() == 2));
        // Cut anywhere, or with a descriptor missing: refused, never a panic.
        for cut in 0..msg.len() {
            let fds: Vec<OwnedFd> = (0..5).map(|_| devnull()).collect();
            assert!(decode(&msg[..cut], fds).is_none(), "cut at {cut}");
        }
        let fds: Vec<OwnedFd> = (0..4).map(|_| devnull()).collect();
        assert!(decode(&msg, fds).is_none());
    }
}
