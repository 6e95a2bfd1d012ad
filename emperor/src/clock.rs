//! The emperor's one clock: tokio's, which tests pause and advance. Clippy
//! refuses `Instant::now` and `SystemTime::now` anywhere else (`clippy.toml`);
//! transitions take the time as a value.
#![allow(clippy::disallowed_methods)]

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The time now.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The wall clock (how old a file is).
pub fn wall() -> SystemTime {
    SystemTime::now()
}

/// Seconds since the epoch (the name of an archived home).
pub fn wall_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
