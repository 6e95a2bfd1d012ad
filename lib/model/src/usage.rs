//! A vassal's disk usage, as the emperor reads it from the kernel and
//! writes it for the vassal inside (`/run/imperium/usage/storage.json`).

use serde::{Deserialize, Serialize};

/// Bytes and inodes used, and their caps (absent: none, or not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    /// Bytes used.
    pub bytes: u64,
    /// Their cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_limit: Option<u64>,
    /// Files and directories, where the backend counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inodes: Option<u64>,
    /// Their cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inodes_limit: Option<u64>,
}

/// What a reseller sees of its group (`/run/imperium/usage/sites.json` in
/// the group's container, written by the emperor): its sites and the files
/// of its drop directory that were refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sites {
    /// One per site of the group, by name.
    pub sites: Vec<SiteState>,
    /// The drop directory's refusals, by file.
    pub refused: Vec<Refused>,
}

/// A site of a group, as `emperor status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteState {
    /// The site.
    pub name: String,
    /// `running`, `starting`, `failed`, `suspended`, `stopped`, `rejected`, ...
    pub state: String,
    /// Why it is not running, or why its last edit was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Restarts so far.
    #[serde(default)]
    pub restarts: u32,
    /// Memory in use, bytes (running sites).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Bytes on disk, where counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<u64>,
    /// Their cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_limit: Option<u64>,
}

/// A file of a drop directory that runs nothing (or whose last edit did not
/// take), and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Refused {
    /// Its name in the drop directory.
    pub file: String,
    /// The one-line reason.
    pub reason: String,
}

impl Sites {
    /// What a reseller is told when its group goes from `before` to `self`:
    /// each site whose state (or reason) changed, each site gone, each
    /// refusal that is new.
    pub fn changes(&self, before: &Sites) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.sites {
            let was = before.sites.iter().find(|b| b.name == s.name);
            if was.is_some_and(|b| b.state == s.state && b.reason == s.reason) {
                continue;
            }
            out.push(match &s.reason {
                Some(r) => format!("site {} is {}: {r}", s.name, s.state),
                None => format!("site {} is {}", s.name, s.state),
            });
        }
        for b in &before.sites {
            if !self.sites.iter().any(|s| s.name == b.name) {
                out.push(format!("site {} is gone", b.name));
            }
        }
        for r in &self.refused {
            if !before.refused.contains(r) {
                out.push(format!("{} refused: {}", r.file, r.reason));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str, state: &str, reason: Option<&str>) -> SiteState {
        SiteState {
            name: name.into(),
            state: state.into(),
            reason: reason.map(Into::into),
            ..SiteState::default()
        }
    }

    #[test]
    fn a_reseller_is_told_each_change_once() {
        let before = Sites {
            sites: vec![site("a", "running", None), site("b", "running", None)],
            refused: vec![Refused {
                file: "x.toml".into(),
                reason: "old".into(),
            }],
        };
        let after = Sites {
            sites: vec![
                site("a", "running", None),
                site("c", "starting", None),
                site("b", "failed", Some("exit 1")),
            ],
            refused: vec![
                Refused {
                    file: "x.toml".into(),
                    reason: "old".into(),
                },
                Refused {
                    file: "y.toml".into(),
                    reason: "limits.memory 900M exceeds the group's 128M left".into(),
                },
            ],
        };
        assert_eq!(
            after.changes(&before),
            [
                "site c is starting",
                "site b is failed: exit 1",
                "y.toml refused: limits.memory 900M exceeds the group's 128M left",
            ]
        );
        assert!(after.changes(&after).is_empty());
        assert_eq!(
            before.changes(&after),
            ["site b is running", "site c is gone"]
        );
    }
}
