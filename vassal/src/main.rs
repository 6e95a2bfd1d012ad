//! `vassal`: PID 1 of a site's container, running as the tenant.
//!
//! For now it does an init's duties only: it reaps every orphan the container
//! hands it, forwards termination and user signals to every other process of
//! the container, and on SIGTERM exits once they are gone (or kills what is
//! left after a grace period). The tenant's own processes and cron jobs come
//! with the sub-supervisor.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{alarm, Pid};

/// How long the container's processes have to exit after SIGTERM.
const GRACE: Duration = Duration::from_secs(5);

/// The signals an init handles. Everything else is ignored by the kernel for a
/// pid namespace's init, so these are all of them.
const HANDLED: [Signal; 9] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGWINCH,
];

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("init") => init(),
        Some("--version") => println!("vassal {}", env!("CARGO_PKG_VERSION")),
        _ => {
            eprintln!("usage: vassal init    (PID 1 of a site's container)");
            std::process::exit(2);
        }
    }
}

/// Reaps every ended child; returns true when no child is left.
fn reap() -> bool {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return false,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => return true,
            Err(_) => return false,
        }
    }
}

fn init() -> ! {
    let mut set = SigSet::empty();
    for s in HANDLED {
        set.add(s);
    }
    if let Err(e) = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None) {
        eprintln!("vassal: blocking signals: {e}");
        std::process::exit(1);
    }
    let mut terminating = false;
    loop {
        let sig = match set.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        match sig {
            Signal::SIGCHLD => {
                let none_left = reap();
                if terminating && none_left {
                    std::process::exit(0);
                }
            }
            Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT => {
                // -1 from a pid namespace's init reaches every other process in it.
                let _ = kill(Pid::from_raw(-1), sig);
                if !terminating {
                    terminating = true;
                    alarm::set(GRACE.as_secs() as u32);
                }
                if reap() {
                    std::process::exit(0);
                }
            }
            Signal::SIGALRM if terminating => {
                let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
                while !reap() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                std::process::exit(0);
            }
            other => {
                let _ = kill(Pid::from_raw(-1), other);
            }
        }
    }
}
