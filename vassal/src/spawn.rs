//! The one place the vassal runs code between fork and exec.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::{signal, SigHandler, SigSet, SigmaskHow, Signal};

/// Makes the child start with every signal unblocked and at its default
/// action: the supervisor blocks the signals it reads through its signalfd,
/// and a blocked mask is inherited across exec.
pub fn reset_signals(cmd: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only sigprocmask and sigaction (through nix), both async-signal-safe; it
    // allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            for sig in [
                Signal::SIGHUP,
                Signal::SIGINT,
                Signal::SIGQUIT,
                Signal::SIGTERM,
                Signal::SIGUSR1,
                Signal::SIGUSR2,
                Signal::SIGCHLD,
                Signal::SIGWINCH,
                Signal::SIGPIPE,
            ] {
                let _ = signal(sig, SigHandler::SigDfl);
            }
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
            Ok(())
        });
    }
}
