//! One more file, or one fewer, decided without judging every file again.
//!
//! A judgement made again with the files it let run running lets the same
//! ones run, so a site file under a new name is decided against what the
//! last judgement's files claim ([`model::catalog::Claimed`]) exactly as a
//! whole judgement would decide it, and a running site's file removed
//! while nothing is refused releases what it claimed, leaving the claims a
//! whole judgement of the other files would make (property tests in
//! `model` hold each equal to the whole judgement). A host of 10,000 sites
//! then judges one more or one fewer in the time of one, not of 10,000.
//! Anything else (a file changed, a group file, a removal while something
//! is refused or kept running for a reason, other host users) is judged
//! whole, and so is every file at the next periodic rescan.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use model::catalog::{Entry, Source, Verdict};
use model::config::VassalFile;
use model::Name;

use super::{After, Manager, Vassal};
use crate::clock::now;

/// What a scan read (see [`Manager::read_dirs`]).
pub(super) enum Read {
    /// Only new site files under new names, decided by [`Manager::judge_added`]
    /// (the last entries stand, with these beside them).
    Added(Vec<Entry>),
    /// Only running sites' files gone, decided by [`Manager::judge_removed`]
    /// (the last entries stand, without these).
    Removed(Vec<Entry>),
    /// Every entry, for a whole judgement.
    All {
        entries: Vec<Entry>,
        ignored: Vec<crate::scan::Ignored>,
        /// Every file is the one the last scan read.
        same: bool,
    },
}

impl Manager {
    /// Whether the files a scan of the named paths found (none of them a
    /// path the last scan read) can be decided against the last judgement's
    /// claims: each is a site under a name no file and no vassal holds,
    /// nothing named became an ignored file, and the host's users are the
    /// ones that judgement saw. No file at all (a temporary file that came
    /// and went) leaves that judgement standing.
    pub(super) fn addable(
        &self,
        fresh: &[Entry],
        ignored: &[crate::scan::Ignored],
        host: &BTreeSet<String>,
    ) -> bool {
        let Some((claimed, seen)) = &self.claimed else {
            return false;
        };
        if seen != host || ignored != self.ignored.as_slice() {
            return false;
        }
        let mut names = BTreeSet::new();
        fresh.iter().all(|e| {
            claimed.takes(e)
                && names.insert(&e.name)
                && !self.vassals.contains_key(&e.name)
                && !self.rejected.contains_key(&e.name)
        })
    }

    /// Decides new site files against the last judgement's claims, records
    /// what is refused (and the refused files whose reasons changed) as a
    /// whole judgement would, and starts what may run. Returns what the
    /// judging took, as [`Manager::reconcile`] does.
    pub(super) fn judge_added(
        &mut self,
        fresh: Vec<Entry>,
        host: BTreeSet<String>,
        began: Instant,
    ) -> Duration {
        let Some((mut claimed, seen)) = self.claimed.take() else {
            return self.judge_whole();
        };
        if fresh.is_empty() {
            self.claimed = Some((claimed, seen));
            return now().saturating_duration_since(began);
        }
        let users = |u: &str| host.contains(u);
        let mut decided = Vec::new();
        for e in fresh {
            match claimed.add(&e, &users) {
                // A refused file that could now run: the rules would not be
                // monotonic, and only a whole judgement knows what follows.
                Some(a) if a.changed.iter().all(|r| r.verdict.file().is_none()) => {
                    decided.push((e, a))
                }
                _ => return self.judge_whole(),
            }
        }
        self.claimed = Some((claimed, seen));
        self.judged.added += decided.len() as u64;
        self.quiet = None;
        let mut starts = Vec::new();
        for (e, added) in decided {
            for r in added.changed {
                if let Verdict::Reject { reason } = r.verdict {
                    tracing::warn!(vassal = %r.name, %reason, "file rejected");
                    self.refusal(&r.source, &r.path, &reason);
                    self.rejected.insert(r.name, reason);
                }
            }
            match added.verdict {
                Verdict::Run { file, dynamic, .. } => {
                    self.ssh_keys_added(&e.name, &file);
                    self.dominion_dirty.insert(e.name.clone());
                    self.vassals
                        .insert(e.name.clone(), Vassal::new(file, dynamic));
                    starts.push(e.name);
                }
                Verdict::Reject { reason } => {
                    tracing::warn!(vassal = %e.name, %reason, "file rejected");
                    self.refusal(&e.source, &e.path, &reason);
                    self.rejected.insert(e.name, reason);
                }
            }
        }
        if !starts.is_empty() {
            self.moved += 1;
            let users: Vec<Name> = starts
                .iter()
                .map(|n| self.vassals[n].file.user(n))
                .collect();
            self.allocate_uids(&users);
        }
        self.to_start.extend(starts);
        let cost = now().saturating_duration_since(began);
        self.start_some();
        cost
    }

    /// Whether files a scan of the named paths found gone (all of them
    /// paths the last scan read, nothing else named) can be decided by
    /// releasing what they claimed: each a site's that runs as judged (not
    /// stopping), under a name no other file holds, nothing refused and no
    /// vassal kept running for a reason (a removal may let another file
    /// run: only a whole judgement says), and the host's users the ones
    /// the last judgement saw.
    pub(super) fn removable(&self, gone: &[Entry], host: &BTreeSet<String>) -> bool {
        let Some((_, seen)) = &self.claimed else {
            return false;
        };
        if gone.is_empty() || seen != host || self.something_held_back() {
            return false;
        }
        let mut names = BTreeSet::new();
        gone.iter().all(|e| {
            names.insert(&e.name)
                && matches!(e.parsed, Ok(VassalFile::Site(_)))
                && self.vassals.get(&e.name).is_some_and(|v| {
                    matches!(v.file, VassalFile::Site(_)) && v.life.stopping.is_none()
                })
        })
    }

    /// Stops and forgets the sites whose files are gone, their claims
    /// released (see [`model::catalog::Claimed::release`]): on a host of
    /// thousands, a removal no longer judges every file again. Returns what
    /// the judging took, as [`Manager::reconcile`] does.
    pub(super) fn judge_removed(&mut self, gone: Vec<Entry>, began: Instant) -> Duration {
        let Some((claimed, _)) = self.claimed.as_mut() else {
            return self.judge_whole();
        };
        for e in &gone {
            let released = match self.vassals.get(&e.name).map(|v| &v.file) {
                Some(VassalFile::Site(site)) => claimed.release(&e.name, site),
                _ => false,
            };
            if !released {
                return self.judge_whole();
            }
        }
        self.judged.removed += gone.len() as u64;
        self.quiet = None;
        self.moved += 1;
        for e in gone {
            self.ssh_keys_removed(&e.name);
            self.dominion_dirty.insert(e.name.clone());
            self.begin_stop(&e.name, After::Remove);
        }
        let cost = now().saturating_duration_since(began);
        self.start_some();
        cost
    }

    /// Leaves the files to a whole judgement, at once.
    fn judge_whole(&mut self) -> Duration {
        self.claimed = None;
        self.scan_all = true;
        self.reconcile()
    }

    /// Tells a reseller why a file of its drop directory does not run (its
    /// reason replaces any it had).
    fn refusal(&mut self, source: &Source, path: &Path, reason: &str) {
        let (Source::Drop(group), Some(file)) = (source, path.file_name()) else {
            return;
        };
        let file = file.to_string_lossy().into_owned();
        let list = self.refused.entry(group.clone()).or_default();
        list.retain(|r| r.file != file);
        list.push(model::usage::Refused {
            file,
            reason: reason.to_owned(),
        });
        list.sort();
    }
}
