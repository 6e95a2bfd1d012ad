//! The site's own cgroup, as the container sees it: the emperor mounts the
//! cgroup filesystems read-only at /sys/fs/cgroup inside a cgroup namespace
//! rooted at the site, so the root of what is mounted is the site itself.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Serialize;

/// Where the figures are read from: the site's five files, opened once.
/// A reading is then five `pread`s (this runs every second in every site:
/// opening by path would walk the container's mounts five times over).
#[derive(Debug)]
pub struct SiteCgroup {
    memory: File,
    memory_limit: File,
    pids: File,
    pids_limit: File,
    /// `memory.oom_control` (v1) or `memory.events` (v2).
    oom: File,
}

/// The site's figures against its limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Figures {
    /// Memory in use, bytes.
    pub memory: u64,
    /// The memory limit, if any.
    pub memory_limit: Option<u64>,
    /// Tasks.
    pub pids: u64,
    /// The task limit, if any.
    pub pids_limit: Option<u64>,
    /// Processes the kernel killed for lack of memory, so far.
    pub oom_kills: u64,
    /// Disk use and caps, where the host enforces them (as the emperor last
    /// read them from the kernel).
    pub disk: Option<model::usage::Disk>,
}

/// The disk usage the emperor wrote in `dir` (`/run/imperium/usage`).
pub fn disk(dir: &Path) -> Option<model::usage::Disk> {
    let bytes = std::fs::read(dir.join(model::layout::inside::STORAGE_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// In a group's container, its sites and refusals as the emperor wrote them
/// in `dir` (`/run/imperium/usage`).
pub fn sites(dir: &Path) -> Option<model::usage::Sites> {
    let bytes = std::fs::read(dir.join(model::layout::inside::SITES_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The whole of a small file, read from its start.
fn read(f: &File) -> Option<String> {
    let mut buf = [0u8; 512];
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    String::from_utf8(buf[..n].to_vec()).ok()
}

fn num(f: &File) -> Option<u64> {
    read(f)?.trim().parse().ok()
}

fn limit(f: &File) -> Option<u64> {
    // "max" (v2) and the huge v1 default both mean no limit.
    num(f).filter(|v| *v < 1 << 62)
}

fn keyed(f: &File, key: &str) -> Option<u64> {
    read(f)?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
}

impl SiteCgroup {
    /// Finds and opens the site's cgroup files under `root` (normally
    /// /sys/fs/cgroup): v2's, or v1's memory and pids hierarchies.
    pub fn detect(root: &Path) -> Option<SiteCgroup> {
        let open = |names: [&str; 5]| {
            let [memory, memory_limit, pids, pids_limit, oom] =
                names.map(|n| File::open(root.join(n)).ok());
            Some(SiteCgroup {
                memory: memory?,
                memory_limit: memory_limit?,
                pids: pids?,
                pids_limit: pids_limit?,
                oom: oom?,
            })
        };
        if root.join("memory.current").exists() {
            open([
                "memory.current",
                "memory.max",
                "pids.current",
                "pids.max",
                "memory.events",
            ])
        } else {
            open([
                "memory/memory.usage_in_bytes",
                "memory/memory.limit_in_bytes",
                "pids/pids.current",
                "pids/pids.max",
                "memory/memory.oom_control",
            ])
        }
    }

    /// Reads the figures now.
    pub fn figures(&self) -> Figures {
        Figures {
            memory: num(&self.memory).unwrap_or(0),
            memory_limit: limit(&self.memory_limit),
            pids: num(&self.pids).unwrap_or(0),
            pids_limit: limit(&self.pids_limit),
            oom_kills: keyed(&self.oom, "oom_kill ").unwrap_or(0),
            disk: None,
        }
    }
}

/// Memory use (in % of the limit) that raises the alarm, and that clears it.
const MEMORY_ALARM: (u64, u64) = (90, 80);
/// The same for disk use (bytes or inodes); at 100 % a second alarm says
/// the limit is reached (writes fail).
const DISK_ALARM: (u64, u64) = (90, 80);

/// The site's alarms, from one reading of its figures to the next: each OOM
/// kill is told once, high memory once until it falls back below 80%.
#[derive(Debug, Clone, Default)]
pub struct Alarms {
    oom_seen: Option<u64>,
    memory_high: bool,
    /// Disk at 90 % or more; disk full.
    disk_high: bool,
    disk_full: bool,
}

impl Alarms {
    /// Counting OOM kills from `oom_kills` (the count at the supervisor's start).
    pub fn new(oom_kills: Option<u64>) -> Alarms {
        Alarms {
            oom_seen: oom_kills,
            ..Alarms::default()
        }
    }

    /// The alarms a new reading raises, as (kind, message).
    pub fn check(&mut self, f: &Figures) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        match self.oom_seen {
            Some(seen) if f.oom_kills > seen => {
                let limit = f
                    .memory_limit
                    .map(|l| format!(" of {}", model::size::Size(l)))
                    .unwrap_or_default();
                out.push((
                    "oom",
                    format!(
                        "the kernel killed {} process(es) for lack of memory: the site reached its limit{limit} ({} so far)",
                        f.oom_kills - seen,
                        f.oom_kills
                    ),
                ));
            }
            _ => {}
        }
        self.oom_seen = Some(f.oom_kills);
        if let Some(limit) = f.memory_limit.filter(|l| *l > 0) {
            let pct = f.memory * 100 / limit;
            if pct >= MEMORY_ALARM.0 && !self.memory_high {
                self.memory_high = true;
                out.push((
                    "memory",
                    format!(
                        "the site uses {pct}% of its {} memory limit",
                        model::size::Size(limit)
                    ),
                ));
            } else if pct < MEMORY_ALARM.1 {
                self.memory_high = false;
            }
        }
        if let Some(d) = f.disk {
            // The fuller of bytes and inodes, in % of its cap.
            let pct = [
                d.bytes_limit
                    .filter(|l| *l > 0)
                    .map(|l| (d.bytes * 100 / l, "storage")),
                d.inodes_limit
                    .filter(|l| *l > 0)
                    .zip(d.inodes)
                    .map(|(l, n)| (n * 100 / l, "inode")),
            ]
            .into_iter()
            .flatten()
            .max();
            if let Some((pct, what)) = pct {
                if pct >= 100 && !self.disk_full {
                    self.disk_full = true;
                    self.disk_high = true;
                    out.push((
                        "disk",
                        format!(
                            "the site reached its {what} limit: writes fail until it frees space"
                        ),
                    ));
                } else if pct >= DISK_ALARM.0 && !self.disk_high {
                    self.disk_high = true;
                    out.push(("disk", format!("the site uses {pct}% of its {what} limit")));
                } else if pct < DISK_ALARM.1 {
                    self.disk_high = false;
                    self.disk_full = false;
                } else if pct < 100 {
                    self.disk_full = false;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    //! Against fake trees: v2 files written by hand (this host's controllers are
    //! on v1; the container tests read the real v1 files).
    use super::*;

    #[test]
    fn reads_v2_and_v1_files() {
        let d = tempfile::tempdir().unwrap();
        for (f, v) in [
            ("memory.current", "1048576\n"),
            ("memory.max", "134217728\n"),
            ("pids.current", "3\n"),
            ("pids.max", "max\n"),
            ("memory.events", "low 0\nhigh 0\nmax 4\noom 1\noom_kill 2\n"),
        ] {
            std::fs::write(d.path().join(f), v).unwrap();
        }
        let f = SiteCgroup::detect(d.path()).unwrap().figures();
        assert_eq!(
            f,
            Figures {
                memory: 1 << 20,
                memory_limit: Some(128 << 20),
                pids: 3,
                pids_limit: None,
                oom_kills: 2,
                disk: None,
            }
        );

        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("memory")).unwrap();
        std::fs::create_dir_all(d.path().join("pids")).unwrap();
        for (f, v) in [
            ("memory/memory.usage_in_bytes", "4096\n"),
            ("memory/memory.limit_in_bytes", "9223372036854771712\n"),
            (
                "memory/memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n",
            ),
            ("pids/pids.current", "2\n"),
            ("pids/pids.max", "50\n"),
        ] {
            std::fs::write(d.path().join(f), v).unwrap();
        }
        let site = SiteCgroup::detect(d.path()).unwrap();
        let f = site.figures();
        assert_eq!(
            f,
            Figures {
                memory: 4096,
                memory_limit: None,
                pids: 2,
                pids_limit: Some(50),
                oom_kills: 5,
                disk: None,
            }
        );
        // Kept open: the next reading sees what the kernel says then.
        std::fs::write(d.path().join("memory/memory.usage_in_bytes"), "81920\n").unwrap();
        std::fs::write(d.path().join("pids/pids.current"), "12\n").unwrap();
        let f = site.figures();
        assert_eq!((f.memory, f.pids), (81920, 12));
    }

    fn at(memory: u64, oom_kills: u64) -> Figures {
        Figures {
            memory,
            memory_limit: Some(100 << 20),
            oom_kills,
            ..Figures::default()
        }
    }

    #[test]
    fn an_oom_kill_is_told_once_counting_from_the_start() {
        let mut a = Alarms::new(Some(3));
        assert!(
            a.check(&at(0, 3)).is_empty(),
            "kills before the start are not news"
        );
        let got = a.check(&at(0, 5));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "oom");
        assert!(got[0].1.contains("killed 2 process(es)"), "{}", got[0].1);
        assert!(got[0].1.contains("(5 so far)"), "{}", got[0].1);
        assert!(
            a.check(&at(0, 5)).is_empty(),
            "the same kills are told once"
        );
    }

    #[test]
    fn high_memory_is_told_once_until_it_falls_below_80_percent() {
        let mut a = Alarms::new(Some(0));
        let mb = 1 << 20;
        assert!(a.check(&at(89 * mb, 0)).is_empty());
        let got = a.check(&at(95 * mb, 0));
        assert_eq!(got.len(), 1);
        assert!(
            got[0].1.starts_with("the site uses 95% of its"),
            "{}",
            got[0].1
        );
        assert!(a.check(&at(96 * mb, 0)).is_empty(), "still high: not again");
        assert!(a.check(&at(85 * mb, 0)).is_empty(), "85% does not clear it");
        assert!(a.check(&at(91 * mb, 0)).is_empty(), "so 91% is not news");
        assert!(a.check(&at(79 * mb, 0)).is_empty());
        assert_eq!(
            a.check(&at(92 * mb, 0)).len(),
            1,
            "cleared below 80%: told again"
        );
    }

    #[test]
    fn disk_alarms_at_90_percent_and_at_the_limit_once_each() {
        let at = |bytes: u64, inodes: u64| Figures {
            disk: Some(model::usage::Disk {
                bytes,
                bytes_limit: Some(100),
                inodes: Some(inodes),
                inodes_limit: Some(1000),
            }),
            ..Figures::default()
        };
        let mut a = Alarms::new(Some(0));
        assert!(a.check(&at(50, 10)).is_empty());
        let got = a.check(&at(91, 10));
        assert_eq!(got.len(), 1);
        assert!(got[0].1.contains("91% of its storage limit"), "{got:?}");
        assert!(a.check(&at(95, 10)).is_empty(), "told once");
        let got = a.check(&at(100, 10));
        assert!(got[0].1.contains("reached its storage limit"), "{got:?}");
        assert!(a.check(&at(100, 10)).is_empty(), "told once");
        assert!(a.check(&at(70, 10)).is_empty(), "below 80 %: cleared");
        let got = a.check(&at(10, 1000));
        assert!(got[0].1.contains("reached its inode limit"), "{got:?}");
        // Without a cap, nothing to say.
        let none = Figures {
            disk: Some(model::usage::Disk::default()),
            ..Figures::default()
        };
        assert!(Alarms::new(Some(0)).check(&none).is_empty());
    }
}
