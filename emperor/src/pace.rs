//! How often the vassal directories may be scanned while their files keep
//! changing. A scan reads every file's stamp and rebuilds the catalog: on a
//! full host that is tens of milliseconds, and a reseller can rename files
//! in a loop.

use std::time::{Duration, Instant};

/// Each scan is charged ten times its cost (its own time included), so a
/// directory rewritten in a loop takes a tenth of a core at most; a scan
/// over a tenth of [`CAP`] is charged [`CAP`] (a change is never kept waiting
/// longer). What is owed may reach [`BURST`] before a scan waits: a quiet
/// host scans at once, and so does one that had a few changes in a row.
#[derive(Debug, Default)]
pub struct Pace {
    /// When nothing is owed any more (`None`: never scanned).
    free_at: Option<Instant>,
}

const RATIO: u32 = 10;
/// The most one scan adds to what is owed.
pub const CAP: Duration = Duration::from_millis(250);
/// What may be owed while scans still run at once.
pub const BURST: Duration = Duration::from_millis(500);

impl Pace {
    /// When the next scan may run, if it may not run at `now`.
    pub fn wait_until(&self, now: Instant) -> Option<Instant> {
        let due = self.free_at?.checked_sub(BURST)?;
        (due > now).then_some(due)
    }

    /// A scan that took `cost` (its reading and judging, not the starts it
    /// led to) ended at `now`.
    pub fn paid(&mut self, now: Instant, cost: Duration) {
        let from = self.free_at.map_or(now, |f| f.max(now));
        self.free_at = Some(from + (cost * RATIO).min(CAP));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_quiet_host_scans_at_once_and_a_few_changes_in_a_row_too() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let mut p = Pace::default();
        assert_eq!(p.wait_until(t0), None);
        // Scans of 20 ms back to back are charged 200 ms each: after two
        // 380 ms are owed and a third runs at once; after it 560 ms are, and
        // a fourth waits until only the burst is.
        for end in [20, 40] {
            p.paid(t0 + end * MS, 20 * MS);
            assert_eq!(p.wait_until(t0 + end * MS), None, "after {end} ms");
        }
        p.paid(t0 + 60 * MS, 20 * MS);
        let due = p.wait_until(t0 + 60 * MS).expect("paced");
        assert_eq!(due, t0 + 60 * MS + 60 * MS);
        // After a quiet second, nothing is owed.
        assert_eq!(p.wait_until(t0 + 1000 * MS), None);
        p.paid(t0 + 1010 * MS, 10 * MS);
        assert_eq!(p.wait_until(t0 + 1010 * MS), None);
    }

    #[test]
    fn scans_in_a_loop_take_a_tenth_of_the_time_and_a_huge_scan_waits_at_most_the_cap() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let mut p = Pace::default();
        let (mut now, mut scanning) = (t0, Duration::ZERO);
        // Changes arrive without end: scan whenever allowed, 20 ms each.
        while now < t0 + Duration::from_secs(60) {
            if let Some(due) = p.wait_until(now) {
                now = due;
            }
            now += 20 * MS;
            scanning += 20 * MS;
            p.paid(now, 20 * MS);
        }
        let share = scanning.as_secs_f64() / (now - t0).as_secs_f64();
        assert!(
            (0.09..=0.11).contains(&share),
            "scanning {share:.3} of the time"
        );

        // A scan of two seconds is charged the cap, not twenty seconds.
        let mut p = Pace::default();
        let t = t0 + 2000 * MS;
        p.paid(t, 2000 * MS);
        assert_eq!(p.wait_until(t), None);
        p.paid(t, 2000 * MS);
        p.paid(t, 2000 * MS);
        assert_eq!(p.wait_until(t), Some(t + 3 * CAP - BURST));
    }
}
