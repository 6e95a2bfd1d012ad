//! `libnss_imperium.so.2`: answers passwd, group, shadow and initgroups
//! lookups for tenants from the emperor's table (`<state-dir>/tenants.nss`), so
//! that `getent passwd site52`, `id site52` and `ls -l` show tenant names on the
//! host, even while the emperor is stopped, and a stock `pam_unix` account
//! stack accepts a tenant (password locked: `!`, no ageing).
//!
//! A guest in every process that resolves a name: no threads, no allocation
//! beyond a path, no output, no panic across the C ABI (each entry point is
//! guarded), and every string written only into the caller's buffer (ERANGE
//! when it is too small). A missing or damaged table answers "unavailable" and
//! lets the next source in nsswitch.conf answer.

mod ffi;
mod lookup;

pub use ffi::*;
