//! Restart throttling, as uWSGI's emperor does it: a vassal that dies soon after
//! it started waits longer before each new start; one that ran for a healthy
//! period is restarted at once and its count is reset.

use std::time::Duration;

/// Throttle settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// The delay after the second quick death in a row; it doubles after each one.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
    /// A run at least this long counts as healthy and resets the count.
    pub healthy: Duration,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            healthy: Duration::from_secs(30),
        }
    }
}

/// The throttle state of one supervised thing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backoff {
    /// Deaths in a row, each after less than a healthy run.
    pub quick_deaths: u32,
}

impl Backoff {
    /// Records a death after `uptime` and returns how long to wait before restarting.
    pub fn on_death(&mut self, t: &Throttle, uptime: Duration) -> Duration {
        if uptime >= t.healthy {
            self.quick_deaths = 0;
        }
        self.quick_deaths = self.quick_deaths.saturating_add(1);
        match self.quick_deaths {
            1 => Duration::ZERO,
            n => {
                let shift = (n - 2).min(20);
                t.base.saturating_mul(1 << shift).min(t.max)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_on_crash_loops_and_resets_after_health() {
        let t = Throttle {
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            healthy: Duration::from_secs(10),
        };
        let mut b = Backoff::default();
        let quick = Duration::from_millis(5);
        let got: Vec<u128> = (0..7).map(|_| b.on_death(&t, quick).as_millis()).collect();
        assert_eq!(got, [0, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.on_death(&t, Duration::from_secs(11)), Duration::ZERO);
        assert_eq!(b.on_death(&t, quick), Duration::from_millis(100));
        for _ in 0..100 {
            b.on_death(&t, quick);
        }
        assert_eq!(
            b.on_death(&t, quick),
            t.max,
            "no overflow after many deaths"
        );
    }
}
