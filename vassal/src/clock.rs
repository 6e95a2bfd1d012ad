//! The supervisor's one clock. Everything else takes the time as a value
//! ([`Now`]), so transitions are tested with made-up times; clippy refuses
//! `Instant::now` and `SystemTime::now` anywhere but here (`clippy.toml`).
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::lifecycle::Now;

/// Real time, with schedule time that may run faster (tests run a job's
/// minutes in seconds).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    wall: u64,
    scale: f64,
}

impl Clock {
    /// Schedule time runs `scale` times as fast as real time (1 in production).
    pub fn new(scale: f64) -> Clock {
        Clock {
            origin: Instant::now(),
            wall: wall_secs(),
            scale,
        }
    }

    /// The time now.
    pub fn now(&self) -> Now {
        let at = Instant::now();
        Now {
            at,
            wall_us: wall_us(),
            secs: self.wall
                + (at.saturating_duration_since(self.origin).as_secs_f64() * self.scale) as u64,
        }
    }

    /// The instant at which schedule time reaches `secs`.
    pub fn instant_of(&self, secs: u64) -> Instant {
        self.origin + Duration::from_secs_f64(secs.saturating_sub(self.wall) as f64 / self.scale)
    }
}

/// Seconds since the epoch (signatures, notifications).
pub fn wall_secs() -> u64 {
    wall_us() / 1_000_000
}

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
