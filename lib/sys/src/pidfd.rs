//! Processes held by pidfd: the same handle for the emperor's own children and
//! for inits it adopted after a restart, so a reused pid is never signalled.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A process file descriptor.
#[derive(Debug)]
pub struct Pidfd {
    fd: OwnedFd,
    pid: i32,
}

/// How a held process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It ended, but it was not our child, so its status is not ours to read.
    Unknown,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with code {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
            Exit::Unknown => f.write_str("exited"),
        }
    }
}

impl Pidfd {
    /// Opens a pidfd for `pid` (`pidfd_open`, O_CLOEXEC by default).
    pub fn open(pid: i32) -> io::Result<Pidfd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just gave us this fd; nobody else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(Pidfd { fd, pid })
    }

    /// Wraps a pidfd returned by clone3.
    pub(crate) fn from_owned(fd: OwnedFd, pid: i32) -> Pidfd {
        Pidfd { fd, pid }
    }

    /// Makes `cmd` run inside this process's mount namespace (so that paths
    /// resolve as they do in its container, never on the host), in `/`, as
    /// `uid:uid` with no other group.
    pub fn run_inside(&self, cmd: &mut std::process::Command, uid: u32) {
        use std::os::unix::process::CommandExt;
        let fd = self.fd.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and makes
        // only system calls (setns, chdir, setgroups, setresgid, setresuid);
        // `fd` stays open in the parent for as long as `cmd` is being spawned.
        unsafe {
            cmd.pre_exec(move || {
                let check = |r: libc::c_int| {
                    if r < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                };
                check(libc::setns(fd, libc::CLONE_NEWNS))?;
                check(libc::chdir(c"/".as_ptr()))?;
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setresgid(uid, uid, uid))?;
                check(libc::setresuid(uid, uid, uid))
            });
        }
    }

    /// The pid in the host's pid namespace.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `signal` to the process (`pidfd_send_signal`).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the process has ended (the pidfd polls readable), without waiting.
    pub fn has_exited(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        r == 1 && p.revents & libc::POLLIN != 0
    }

    /// Reaps the process if it has ended: `Ok(None)` while it runs.
    pub fn try_reap(&self) -> io::Result<Option<Exit>> {
        // SAFETY: siginfo_t is plain data; zeroed is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid(P_PIDFD) on our pidfd, writing into `info`.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                self.fd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ECHILD) {
                // Not our child (adopted): its parent reaps it.
                return Ok(self.has_exited().then_some(Exit::Unknown));
            }
            return Err(e);
        }
        // SAFETY: waitid filled `info` for a child; si_pid is 0 when none exited.
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        Ok(Some(if info.si_code == libc::CLD_EXITED {
            Exit::Code(status)
        } else {
            Exit::Signal(status)
        }))
    }
}

impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Pidfd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The exits of many processes, watched by one epoll instance: each pidfd is
/// added with a token, and [`Exits::ready`] gives back the tokens of those
/// that ended, each once. One registration in the kernel a process, and
/// nothing more (a task and a registration in tokio's reactor for each
/// process cost the emperor about 1 KiB a site). The instance itself polls
/// readable while an exit is waiting to be read.
#[derive(Debug)]
pub struct Exits {
    epoll: nix::sys::epoll::Epoll,
}

impl Exits {
    /// A new, empty watch (close-on-exec).
    pub fn new() -> io::Result<Exits> {
        let epoll = nix::sys::epoll::Epoll::new(nix::sys::epoll::EpollCreateFlags::EPOLL_CLOEXEC)?;
        Ok(Exits { epoll })
    }

    /// Watches `pidfd` for as long as it is open: its end comes back once,
    /// as `token`. A process that already ended comes back at the next read.
    pub fn add(&self, pidfd: &Pidfd, token: u64) -> io::Result<()> {
        use nix::sys::epoll::{EpollEvent, EpollFlags};
        let event = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT, token);
        self.epoll.add(&pidfd.fd, event)?;
        Ok(())
    }

    /// The tokens of the processes that ended since the last call; never
    /// waits.
    pub fn ready(&self) -> io::Result<Vec<u64>> {
        use nix::sys::epoll::EpollEvent;
        let mut tokens = Vec::new();
        let mut events = [EpollEvent::empty(); 64];
        loop {
            let n = self.epoll.wait(&mut events, 0u8)?;
            tokens.extend(events[..n].iter().map(|e| e.data()));
            if n < events.len() {
                return Ok(tokens);
            }
        }
    }
}

#[cfg(feature = "tokio")]
impl Exits {
    /// Registers the watch with tokio's reactor: the handle polls readable
    /// while an exit waits to be read.
    pub fn registered(
        self: std::sync::Arc<Self>,
    ) -> io::Result<tokio::io::unix::AsyncFd<std::sync::Arc<Exits>>> {
        // SAFETY: the AsyncFd holds an Arc of the Exits that owns the epoll
        // fd, so the fd stays open and unchanged while it is registered.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE)
        };
        registered.map_err(io::Error::from)
    }
}

impl AsRawFd for Exits {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.0.as_raw_fd()
    }
}

/// Waits until the process held by `pidfd` has ended (its pidfd polls readable).
#[cfg(feature = "tokio")]
pub async fn exited(pidfd: std::sync::Arc<Pidfd>) {
    struct Shared(std::sync::Arc<Pidfd>);
    impl AsRawFd for Shared {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
    }
    // SAFETY: `Shared` holds an Arc of the Pidfd that owns the fd, so the fd
    // stays open and unchanged for as long as the AsyncFd registration lives.
    let afd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            Shared(pidfd.clone()),
            tokio::io::Interest::READABLE,
        )
    };
    match afd {
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        // Registration can only fail if the reactor is gone; fall back to polling.
        Err(_) => {
            while !pidfd.has_exited() {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::zombie_processes)] // reaped through the pidfd
    fn exits_gives_back_each_ended_process_once_by_its_token() {
        let exits = Exits::new().unwrap();
        let spawn = |script: &str| {
            let child = std::process::Command::new("sh")
                .args(["-c", script])
                .spawn()
                .unwrap();
            Pidfd::open(child.id() as i32).unwrap()
        };
        let (quick, slow) = (spawn("exit 0"), spawn("exec sleep 30"));
        exits.add(&quick, 7).unwrap();
        exits.add(&slow, 9).unwrap();
        // Poll with a deadline: the quick one's end comes back, the other's not.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut seen = Vec::new();
        while seen.is_empty() && std::time::Instant::now() < deadline {
            seen = exits.ready().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(seen, vec![7]);
        assert!(exits.ready().unwrap().is_empty(), "told once");
        slow.signal(libc::SIGKILL).unwrap();
        let mut seen = Vec::new();
        while seen.is_empty() && std::time::Instant::now() < deadline {
            seen = exits.ready().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(seen, vec![9]);
        let _ = (quick.try_reap(), slow.try_reap());
    }

    #[test]
    #[allow(clippy::zombie_processes)] // reaped through the pidfd
    fn reaps_child_and_sees_exit() {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let pfd = Pidfd::open(child.id() as i32).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(exit) = pfd.try_reap().unwrap() {
                assert_eq!(exit, Exit::Code(7));
                break;
            }
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    #[allow(clippy::zombie_processes)] // reaped through the pidfd
    fn signals_by_pidfd() {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pfd = Pidfd::open(child.id() as i32).unwrap();
        assert!(!pfd.has_exited());
        pfd.signal(libc::SIGKILL).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(exit) = pfd.try_reap().unwrap() {
                assert_eq!(exit, Exit::Signal(libc::SIGKILL));
                break;
            }
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
