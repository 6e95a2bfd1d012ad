//! `pam_imperium.so`: lands a tenant's SSH session inside their running
//! container.
//!
//! In sshd's account stack it refuses a tenant whose container is not running,
//! is suspended, or is not verifiably the one the emperor started (pid and
//! start time). In the session stack it moves sshd's privileged monitor into
//! the site's cgroup, joins the container's namespaces through the init's
//! pidfd and roots itself in the container; sshd forks the user's process
//! after that, so the shell starts inside. Anyone not in the emperor's tenant
//! table gets `PAM_IGNORE`.
//!
//! A guest in sshd: no threads (a second thread makes joining a mount
//! namespace fail), no panic across the C ABI, every fd `O_CLOEXEC`, and any
//! doubt refuses the login (fail closed).

mod ffi;
pub mod login;

pub use ffi::*;
