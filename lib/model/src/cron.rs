//! Cron schedules: the five fields `minute hour day-of-month month day-of-week`,
//! each `*`, a number, a range `a-b`, a list `a,b`, and steps `*/n` or `a-b/n`,
//! with the usual rule that when both day fields are restricted either may match.
//! Nicknames: `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.

use std::fmt;
use std::str::FromStr;

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    text: String,
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    dom_any: bool,
    dow_any: bool,
}

/// Why a schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schedule {text:?}: {why}")]
pub struct CronError {
    text: String,
    why: String,
}

/// A moment in civil time (UTC), minute resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moment {
    /// 0-59.
    pub minute: u32,
    /// 0-23.
    pub hour: u32,
    /// 1-31.
    pub day: u32,
    /// 1-12.
    pub month: u32,
    /// 0-6, Sunday = 0.
    pub weekday: u32,
    /// The year.
    pub year: i64,
}

impl Moment {
    /// `YYYY-MM-DD`.
    pub fn date(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    /// The UTC moment of `secs` seconds since the Unix epoch.
    pub fn from_unix(secs: u64) -> Moment {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // Civil from days (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Moment {
            minute: (rem / 60 % 60) as u32,
            hour: (rem / 3600) as u32,
            day,
            month,
            // 1970-01-01 was a Thursday (4).
            weekday: ((days + 4) % 7) as u32,
            year: yoe + era * 400 + i64::from(month <= 2),
        }
    }
}

fn field(text: &str, spec: &str, lo: u32, hi: u32, name: &str) -> Result<(u64, bool), CronError> {
    let err = |why: String| CronError {
        text: text.to_owned(),
        why,
    };
    let mut bits = 0u64;
    for part in spec.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| err(format!("bad step in {name} field {part:?}")))?,
            ),
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = a.parse().map_err(|_| err(format!("bad {name} {a:?}")))?;
            let b = b.parse().map_err(|_| err(format!("bad {name} {b:?}")))?;
            (a, b)
        } else {
            let v = range
                .parse()
                .map_err(|_| err(format!("bad {name} {range:?}")))?;
            (v, if part.contains('/') { hi } else { v })
        };
        // Sunday may be written 7.
        let (a, b) = if name == "day-of-week" {
            (a, b.min(7))
        } else {
            (a, b)
        };
        if a < lo || b > hi.max(if name == "day-of-week" { 7 } else { hi }) || a > b {
            return Err(err(format!("{name} {range:?} is outside {lo}-{hi}")));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << (if name == "day-of-week" { v % 7 } else { v });
            v += step;
        }
    }
    Ok((bits, spec == "*"))
}

impl FromStr for Schedule {
    type Err = CronError;
    fn from_str(s: &str) -> Result<Schedule, CronError> {
        let expanded = match s.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        if f.len() != 5 {
            return Err(CronError {
                text: s.to_owned(),
                why: "needs five fields: minute hour day-of-month month day-of-week".into(),
            });
        }
        let (minute, _) = field(s, f[0], 0, 59, "minute")?;
        let (hour, _) = field(s, f[1], 0, 23, "hour")?;
        let (dom, dom_any) = field(s, f[2], 1, 31, "day-of-month")?;
        let (month, _) = field(s, f[3], 1, 12, "month")?;
        let (dow, dow_any) = field(s, f[4], 0, 6, "day-of-week")?;
        Ok(Schedule {
            text: s.to_owned(),
            minute,
            hour,
            dom,
            month,
            dow,
            dom_any,
            dow_any,
        })
    }
}

impl Schedule {
    /// Whether the schedule fires in this minute.
    pub fn matches(&self, m: &Moment) -> bool {
        let bit = |set: u64, v: u32| set & (1 << v) != 0;
        let dom = bit(self.dom, m.day);
        let dow = bit(self.dow, m.weekday);
        let day = match (self.dom_any, self.dow_any) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            (false, false) => dom || dow,
        };
        bit(self.minute, m.minute) && bit(self.hour, m.hour) && bit(self.month, m.month) && day
    }

    /// The first whole minute strictly after `after` (Unix seconds) at which the
    /// schedule fires, searching at most a year ahead.
    pub fn next_after(&self, after: u64) -> Option<u64> {
        let mut t = (after / 60 + 1) * 60;
        for _ in 0..(366 * 24 * 60) {
            if self.matches(&Moment::from_unix(t)) {
                return Some(t);
            }
            t += 60;
        }
        None
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_time() {
        // 2026-11-21 23:42:00 UTC, a Saturday.
        let m = Moment::from_unix(1_795_304_520);
        assert_eq!(
            (m.day, m.month, m.hour, m.minute, m.weekday),
            (21, 11, 23, 42, 6)
        );
        assert_eq!(m.date(), "2026-11-21");
        let m = Moment::from_unix(951_782_400); // 2000-02-29 00:00, Tuesday
        assert_eq!((m.day, m.month, m.weekday), (29, 2, 2));
        assert_eq!(m.date(), "2000-02-29");
        // January and February count in the year they are in.
        assert_eq!(Moment::from_unix(1_735_689_600).date(), "2025-01-01");
        assert_eq!(Moment::from_unix(67_090_118_400).date(), "4096-01-01");
    }

    #[test]
    fn next_runs() {
        let at = |s: &str, t: u64| s.parse::<Schedule>().unwrap().next_after(t).unwrap();
        let base = 1_795_304_520; // Sat 2026-11-21 23:42
        assert_eq!(at("* * * * *", base), base + 60);
        assert_eq!(at("*/15 * * * *", base), base + 3 * 60);
        assert_eq!(at("0 3 * * *", base), base + 18 * 60 + 3 * 3600);
        assert_eq!(at("@daily", base), base + 18 * 60);
        // Monday 03:30: Sunday passes, Monday comes.
        assert_eq!(
            at("30 3 * * 1", base),
            base + 18 * 60 + 24 * 3600 + 3 * 3600 + 30 * 60
        );
        assert_eq!(at("30 3 * * 7", base), at("30 3 * * 0", base));
        // Either day field may match when both are restricted.
        assert_eq!(at("0 0 1 * 0", base), base + 18 * 60); // Sunday the 22nd
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "*/0 * * * *",
            "a * * * *",
            "5-1 * * * *",
            "* * * * 8",
        ] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad:?}");
        }
    }
}
