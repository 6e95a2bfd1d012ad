//! The cross-file rules: which of the parsed vassal files may run.
//!
//! A [`Catalog`] is built from every file found in the admin directory and the
//! reseller drop directories, plus what ran before. It decides, for each name,
//! whether the newest file runs, the last good version keeps running (with the
//! reason the new one was refused), or nothing runs. Budgets of reserved groups,
//! domain ownership, unique user names and the reseller's own directory are
//! checked here; nothing here touches the system.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::config::{ConfigError, GroupFile, Limits, Mode, SiteFile, VassalFile};
use crate::name::Name;
use crate::size::Size;

/// Where a file was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The admin vassal directory.
    Admin,
    /// A reseller group's drop directory.
    Drop(Name),
}

/// One file as read from disk.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The vassal name (file stem).
    pub name: Name,
    /// The file's path.
    pub path: PathBuf,
    /// Which directory it was found in.
    pub source: Source,
    /// The parse result.
    pub parsed: Result<VassalFile, ConfigError>,
}

/// What should happen to one vassal.
// One verdict per vassal file, built once per scan: boxing the file would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Run this file. `reason` says why a newer file was refused, if one was.
    Run {
        /// The accepted file (a site's `group` is filled in for drop-directory sites).
        file: VassalFile,
        /// Whether the limits are dynamic (a site of an overcommitted group).
        dynamic: bool,
        /// Why the newest file is not the one running, if that is so.
        reason: Option<String>,
    },
    /// Nothing runs under this name.
    Reject {
        /// Why.
        reason: String,
    },
}

impl Verdict {
    /// The file to run, if any.
    pub fn file(&self) -> Option<&VassalFile> {
        match self {
            Verdict::Run { file, .. } => Some(file),
            Verdict::Reject { .. } => None,
        }
    }

    /// The reason to show, if any.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Run { reason, .. } => reason.as_deref(),
            Verdict::Reject { reason } => Some(reason),
        }
    }
}

/// Why a file may not run (its one-line text is the reason shown).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The file itself is invalid.
    #[error("{0}")]
    Invalid(ConfigError),
    /// A group file in a reseller's drop directory.
    #[error("a reseller's directory may hold sites only")]
    GroupInDropDir,
    /// A drop-directory site that names a root filesystem.
    #[error("container.rootfs may only be set in the admin directory; a reseller's sites run on the host's")]
    RootfsInDropDir,
    /// A drop-directory site of another group.
    #[error("a site in {owner}'s directory may only belong to {owner}, not {group}")]
    ForeignGroup {
        /// The directory's group.
        owner: Name,
        /// The group the site names.
        group: Name,
    },
    /// A site of a group that does not run.
    #[error("group {0} does not exist")]
    NoGroup(Name),
    /// A group at its `sites` limit.
    #[error("group {group} already holds its maximum of {max} sites")]
    TooManySites {
        /// The group.
        group: Name,
        /// Its limit.
        max: u64,
    },
    /// A site of a reserved group that leaves a budgeted limit unset.
    #[error("limits.{key} must be set: group {group} is reserved with a {key} budget of {budget}")]
    BudgetUnset {
        /// The limit.
        key: &'static str,
        /// The group.
        group: Name,
        /// The group's budget, as written.
        budget: String,
    },
    /// A site of a reserved group asking for more than is left.
    #[error("limits.{key} {want} exceeds group {group}'s reserved {key} budget of {budget}: {left} left")]
    OverBudget {
        /// The limit.
        key: &'static str,
        /// What the site asks for.
        want: String,
        /// The group.
        group: Name,
        /// The group's budget.
        budget: String,
        /// What is left of it.
        left: String,
    },
    /// A domain the site may not claim.
    #[error("{0}")]
    Domain(String),
    /// A login name another vassal holds.
    #[error("user {user} is already taken by {holder}")]
    UserTaken {
        /// The name.
        user: Name,
        /// Who holds it.
        holder: Name,
    },
    /// A login name of the host.
    #[error("user {0} is a host account")]
    HostAccount(Name),
}

/// The decision for every vassal name, and the files shadowed by a name clash.
#[derive(Debug, Default)]
pub struct Catalog {
    /// One verdict per name.
    pub verdicts: BTreeMap<Name, Verdict>,
    /// Files that could not be considered because another file holds the name.
    pub shadowed: Vec<(Name, PathBuf, String)>,
    /// What the verdicts claim, kept to decide one more file (see [`Claimed::add`]).
    pub claimed: Claimed,
}

/// Answers whether a login name already exists on the host.
pub trait HostUsers {
    /// True if `name` is a host account (tenants may not take it).
    fn exists(&self, name: &str) -> bool;
}

impl<F: Fn(&str) -> bool> HostUsers for F {
    fn exists(&self, name: &str) -> bool {
        self(name)
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Usage {
    memory: u64,
    storage: u64,
    cpu: f64,
    pids: u64,
    sites: u64,
}

/// What the files a judgement lets run claim (groups, login names, domains,
/// each group's usage), and the sites it refused. A judgement made again with
/// those files running lets the same run (`a_judgement_is_stable`), so one
/// more file under a new name can be decided against this alone, as a whole
/// judgement would decide it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Claimed {
    groups: BTreeMap<Name, GroupFile>,
    users: BTreeMap<Name, Name>,
    domains: crate::claims::Claims,
    usage: BTreeMap<Name, Usage>,
    /// Groups whose file is gone, run while they hold sites.
    orphaned: BTreeSet<Name>,
    /// The refused site files and why, decided again after each one added.
    refused: BTreeMap<Name, (Source, PathBuf, SiteFile, String)>,
}

/// One more file decided (see [`Claimed::add`]).
#[derive(Debug, PartialEq)]
pub struct Added {
    /// The new file's verdict.
    pub verdict: Verdict,
    /// Sites refused before whose verdict changed (a new reason, or, were
    /// the rules ever not monotonic, a run).
    pub changed: Vec<Redecided>,
}

/// A refused file decided again (see [`Added`]).
#[derive(Debug, PartialEq)]
pub struct Redecided {
    /// Its name.
    pub name: Name,
    /// Where it was found.
    pub source: Source,
    /// Its path.
    pub path: PathBuf,
    /// The new verdict.
    pub verdict: Verdict,
}

impl Catalog {
    /// Decides every vassal from the files found and what ran before.
    /// The entries are borrowed: the caller keeps them (a rescan reuses
    /// the entry of a file that did not change).
    pub fn build(
        entries: &[Entry],
        previous: &BTreeMap<Name, VassalFile>,
        host_users: &dyn HostUsers,
    ) -> Catalog {
        let mut cat = Catalog::default();
        let mut by_name: BTreeMap<&Name, &Entry> = BTreeMap::new();
        // The admin directory wins a name clash; otherwise the first path in order.
        let mut entries: Vec<&Entry> = entries.iter().collect();
        entries.sort_by(|a, b| {
            (a.source != Source::Admin, &a.path).cmp(&(b.source != Source::Admin, &b.path))
        });
        for e in entries {
            if let Some(holder) = by_name.get(&e.name) {
                let why = format!(
                    "name {} is already used by {}",
                    e.name,
                    holder.path.display()
                );
                cat.shadowed.push((e.name.clone(), e.path.clone(), why));
            } else {
                by_name.insert(&e.name, e);
            }
        }

        let mut pass = Claimed::default();
        let host = host_users;

        // Groups first: sites are checked against them.
        for (name, e) in &by_name {
            let new = match (&e.source, &e.parsed) {
                (Source::Drop(_), Ok(VassalFile::Group(_))) => Err(Refusal::GroupInDropDir),
                (_, Ok(VassalFile::Group(g))) => Ok(g.clone()),
                (_, Ok(VassalFile::Site(_))) => continue,
                (_, Err(err)) => Err(Refusal::Invalid(err.clone())),
            };
            let old = match previous.get(*name) {
                Some(VassalFile::Group(g)) => Some(g),
                _ => None,
            };
            if e.parsed.is_err() && !matches!(previous.get(*name), Some(VassalFile::Group(_))) {
                // An unreadable file that did not run as a group: decide it with the sites.
                continue;
            }
            let verdict = pass.try_group(name, new, old, host);
            cat.verdicts.insert((*name).clone(), verdict);
        }
        // A group whose file was removed keeps running while sites still belong to it.
        for (name, old) in previous {
            if let (VassalFile::Group(g), false) = (old, by_name.contains_key(name)) {
                if pass.claim_user(name, &old.user(name), host).is_ok() {
                    pass.groups.insert(name.clone(), g.clone());
                    pass.orphaned.insert(name.clone());
                }
            }
        }

        // Sites: those that ran before keep their claims first, then new ones by name.
        let mut order: Vec<&Name> = by_name
            .iter()
            .filter(|(n, _)| !cat.verdicts.contains_key(**n))
            .map(|(n, _)| *n)
            .collect();
        order.sort_by_key(|n| (!matches!(previous.get(*n), Some(VassalFile::Site(_))), *n));
        for name in order {
            let e = &by_name[name];
            let new = match &e.parsed {
                Ok(VassalFile::Site(s)) => pass.place_site(name, &e.source, s, host),
                Ok(VassalFile::Group(_)) => continue,
                Err(err) => Err(Refusal::Invalid(err.clone())),
            };
            let verdict = match new.map_err(|why| why.to_string()) {
                Ok(v) => v,
                Err(why) => match previous.get(name) {
                    Some(VassalFile::Site(old)) => {
                        match pass.place_site(name, &e.source, old, host) {
                            Ok(Verdict::Run { file, dynamic, .. }) => Verdict::Run {
                                file,
                                dynamic,
                                reason: Some(why),
                            },
                            _ => Verdict::Reject { reason: why },
                        }
                    }
                    _ => Verdict::Reject { reason: why },
                },
            };
            if let (Verdict::Reject { reason }, Ok(VassalFile::Site(s))) = (&verdict, &e.parsed) {
                let file = (e.source.clone(), e.path.clone(), s.clone(), reason.clone());
                pass.refused.insert(name.clone(), file);
            }
            cat.verdicts.insert(name.clone(), verdict);
        }

        let orphaned = std::mem::take(&mut pass.orphaned);
        for name in orphaned {
            let holders: Vec<String> = cat
                .verdicts
                .iter()
                .filter(|(_, v)| matches!(v.file(), Some(VassalFile::Site(s)) if s.group.as_ref() == Some(&name)))
                .map(|(n, _)| n.to_string())
                .collect();
            if holders.is_empty() {
                // It stops: what it claimed is free for the next judgement.
                pass.groups.remove(&name);
                let user = previous[&name].user(&name);
                if pass.users.get(&user) == Some(&name) {
                    pass.users.remove(&user);
                }
                continue;
            }
            let file = previous[&name].clone();
            let reason = format!(
                "file removed; kept running while it holds sites: {}",
                holders.join(", ")
            );
            cat.verdicts.insert(
                name.clone(),
                Verdict::Run {
                    file,
                    dynamic: false,
                    reason: Some(reason),
                },
            );
            pass.orphaned.insert(name);
        }
        // A refusal says what is left once all that may run does.
        for r in pass.redecide_refused(host) {
            if let Verdict::Reject { .. } = r.verdict {
                cat.verdicts.insert(r.name, r.verdict);
            }
        }
        cat.claimed = pass;
        cat
    }
}

impl Claimed {
    /// Decides one more site file, under a name that no file held at the
    /// judgement these claims come from, as a whole judgement of every file
    /// would decide it with what that one let run running: against all that
    /// runs. If it may run, it claims what it holds and the refused sites
    /// are decided again (their reasons say what is left). The verdicts of
    /// the new file and of every refused site whose verdict changed are
    /// returned.
    ///
    /// `None` (nothing changed) when only a whole judgement can say: see
    /// [`Claimed::takes`].
    pub fn add(&mut self, entry: &Entry, host_users: &dyn HostUsers) -> Option<Added> {
        let Ok(VassalFile::Site(site)) = &entry.parsed else {
            return None;
        };
        if !self.takes(entry) {
            return None;
        }
        match self.check_site(&entry.name, &entry.source, site, host_users) {
            Ok((site, dynamic)) => {
                self.claim_site(&entry.name, &site);
                Some(Added {
                    verdict: Verdict::Run {
                        file: VassalFile::Site(site),
                        dynamic,
                        reason: None,
                    },
                    changed: self.redecide_refused(host_users),
                })
            }
            // Nothing more runs: every other refusal stands as it was.
            Err(why) => {
                let reason = why.to_string();
                let file = (
                    entry.source.clone(),
                    entry.path.clone(),
                    site.clone(),
                    reason.clone(),
                );
                self.refused.insert(entry.name.clone(), file);
                Some(Added {
                    verdict: Verdict::Reject { reason },
                    changed: Vec::new(),
                })
            }
        }
    }

    /// Releases what a running site holds, its file gone, and says whether
    /// the claims left are what a whole judgement of the other files would
    /// make: so when nothing is refused (a refused site might now fit) and
    /// no group runs only for its sites (it may now stop), since then every
    /// other file keeps its verdict. `false`, and nothing released, when
    /// only a whole judgement can say, or when these claims do not hold the
    /// site as `site` (the file as it runs, its group filled in).
    pub fn release(&mut self, name: &Name, site: &SiteFile) -> bool {
        let user = site.user.clone().unwrap_or_else(|| name.clone());
        if !self.refused.is_empty()
            || !self.orphaned.is_empty()
            || self.users.get(&user) != Some(name)
        {
            return false;
        }
        self.users.remove(&user);
        for d in &site.domains {
            self.domains.remove(name, d);
        }
        if let Some(g) = &site.group {
            if let Some(u) = self.usage.get_mut(g) {
                u.sites = u.sites.saturating_sub(1);
                u.memory = u
                    .memory
                    .saturating_sub(site.limits.memory.map_or(0, |s| s.0));
                u.storage = u
                    .storage
                    .saturating_sub(site.limits.storage.map_or(0, |s| s.0));
                u.cpu -= site.limits.cpu.unwrap_or(0.0);
                u.pids = u.pids.saturating_sub(site.limits.pids.unwrap_or(0));
                if u.sites == 0 {
                    self.usage.remove(g);
                }
            }
        }
        true
    }

    /// Whether [`Claimed::add`] decides this file: a readable site under a
    /// name these claims did not refuse, while no group runs only for its
    /// sites (its reason names them, a whole judgement says it again).
    pub fn takes(&self, entry: &Entry) -> bool {
        matches!(entry.parsed, Ok(VassalFile::Site(_)))
            && !self.refused.contains_key(&entry.name)
            && self.orphaned.is_empty()
    }

    fn claim_user(
        &mut self,
        vassal: &Name,
        user: &Name,
        host: &dyn HostUsers,
    ) -> Result<(), Refusal> {
        if let Some(holder) = self.users.get(user) {
            if holder != vassal {
                return Err(Refusal::UserTaken {
                    user: user.clone(),
                    holder: holder.clone(),
                });
            }
        }
        if host.exists(user.as_str()) {
            return Err(Refusal::HostAccount(user.clone()));
        }
        self.users.insert(user.clone(), vassal.clone());
        Ok(())
    }

    fn try_group(
        &mut self,
        name: &Name,
        new: Result<GroupFile, Refusal>,
        old: Option<&GroupFile>,
        host: &dyn HostUsers,
    ) -> Verdict {
        let new = new
            .and_then(|g| {
                self.claim_user(name, &VassalFile::Group(g.clone()).user(name), host)?;
                Ok(g)
            })
            .map_err(|why| why.to_string());
        match (new, old) {
            (Ok(g), _) => {
                self.groups.insert(name.clone(), g.clone());
                Verdict::Run {
                    file: VassalFile::Group(g),
                    dynamic: false,
                    reason: None,
                }
            }
            (Err(why), Some(old)) => {
                match self.claim_user(name, &VassalFile::Group(old.clone()).user(name), host) {
                    Ok(()) => {
                        self.groups.insert(name.clone(), old.clone());
                        Verdict::Run {
                            file: VassalFile::Group(old.clone()),
                            dynamic: false,
                            reason: Some(why),
                        }
                    }
                    Err(_) => Verdict::Reject { reason: why },
                }
            }
            (Err(why), None) => Verdict::Reject { reason: why },
        }
    }

    /// Decides a site against what runs and, if it may run, claims what it holds.
    fn place_site(
        &mut self,
        name: &Name,
        source: &Source,
        site: &SiteFile,
        host: &dyn HostUsers,
    ) -> Result<Verdict, Refusal> {
        let (site, dynamic) = self.check_site(name, source, site, host)?;
        self.claim_site(name, &site);
        Ok(Verdict::Run {
            file: VassalFile::Site(site),
            dynamic,
            reason: None,
        })
    }

    /// Whether a site may run beside what runs: the file as it runs (a drop
    /// directory's site gets its group) and whether its limits are dynamic.
    fn check_site(
        &self,
        name: &Name,
        source: &Source,
        site: &SiteFile,
        host: &dyn HostUsers,
    ) -> Result<(SiteFile, bool), Refusal> {
        let mut site = site.clone();
        if let Source::Drop(owner) = source {
            // The root filesystem is what an SSH login and every site process
            // trust (libraries, nsswitch.conf): only the admin chooses it.
            if site.container.rootfs != crate::config::Rootfs::Host {
                return Err(Refusal::RootfsInDropDir);
            }
            match &site.group {
                Some(g) if g != owner => {
                    return Err(Refusal::ForeignGroup {
                        owner: owner.clone(),
                        group: g.clone(),
                    })
                }
                _ => site.group = Some(owner.clone()),
            }
        }
        let mut dynamic = false;
        if let Some(gname) = &site.group {
            let group = self
                .groups
                .get(gname)
                .ok_or_else(|| Refusal::NoGroup(gname.clone()))?;
            let used = self.usage.get(gname);
            if let Some(max) = group.limits.sites {
                if used.map_or(0, |u| u.sites) >= max {
                    return Err(Refusal::TooManySites {
                        group: gname.clone(),
                        max,
                    });
                }
            }
            match group.mode {
                Mode::Overcommit => dynamic = true,
                Mode::Reserved => check_budget(gname, &group.limits, used, &site.limits)?,
            }
        }
        for d in &site.domains {
            self.domains
                .check(name, site.group.as_ref(), d)
                .map_err(Refusal::Domain)?;
        }
        let user = site.user.clone().unwrap_or_else(|| name.clone());
        if let Some(holder) = self.users.get(&user).filter(|h| *h != name) {
            return Err(Refusal::UserTaken {
                user,
                holder: holder.clone(),
            });
        }
        if host.exists(user.as_str()) {
            return Err(Refusal::HostAccount(user));
        }
        Ok((site, dynamic))
    }

    /// Records what a site that may run holds: its login name, its domains,
    /// its share of its group.
    fn claim_site(&mut self, name: &Name, site: &SiteFile) {
        let user = site.user.clone().unwrap_or_else(|| name.clone());
        self.users.insert(user, name.clone());
        for d in &site.domains {
            self.domains.add(name, site.group.as_ref(), d);
        }
        if let Some(g) = &site.group {
            let u = self.usage.entry(g.clone()).or_default();
            u.sites += 1;
            u.memory += site.limits.memory.map_or(0, |s| s.0);
            u.storage += site.limits.storage.map_or(0, |s| s.0);
            u.cpu += site.limits.cpu.unwrap_or(0.0);
            u.pids += site.limits.pids.unwrap_or(0);
        }
    }

    /// Decides every refused site again against all that runs (a refusal
    /// says what is left once everything that may run does, not what was
    /// left at its turn), and returns those whose verdict changed. A site
    /// that may now run keeps its refusal here and is returned with its
    /// run (the rules would not be monotonic: only a whole judgement says).
    fn redecide_refused(&mut self, host: &dyn HostUsers) -> Vec<Redecided> {
        let mut changed = Vec::new();
        let names: Vec<Name> = self.refused.keys().cloned().collect();
        for name in names {
            let (source, path, site, why) = &self.refused[&name];
            let verdict = match self.check_site(&name, source, site, host) {
                Ok((site, dynamic)) => Verdict::Run {
                    file: VassalFile::Site(site),
                    dynamic,
                    reason: None,
                },
                Err(now) if now.to_string() == *why => continue,
                Err(now) => Verdict::Reject {
                    reason: now.to_string(),
                },
            };
            changed.push(Redecided {
                name: name.clone(),
                source: source.clone(),
                path: path.clone(),
                verdict,
            });
        }
        for r in &changed {
            if let (Verdict::Reject { reason }, Some(file)) =
                (&r.verdict, self.refused.get_mut(&r.name))
            {
                file.3 = reason.clone();
            }
        }
        changed
    }
}

fn check_budget(
    group: &Name,
    budget: &Limits,
    used: Option<&Usage>,
    want: &Limits,
) -> Result<(), Refusal> {
    let unset = |key, budget: &dyn std::fmt::Display| Refusal::BudgetUnset {
        key,
        group: group.clone(),
        budget: budget.to_string(),
    };
    let over = |key, want: &dyn std::fmt::Display, budget: &dyn std::fmt::Display, left: String| {
        Refusal::OverBudget {
            key,
            want: want.to_string(),
            group: group.clone(),
            budget: budget.to_string(),
            left,
        }
    };
    let zero = Usage::default();
    let used = used.unwrap_or(&zero);
    let sizes = [
        ("memory", budget.memory, used.memory, want.memory),
        ("storage", budget.storage, used.storage, want.storage),
    ];
    for (key, budget, used, want) in sizes {
        if let Some(budget) = budget {
            let left = budget.0.saturating_sub(used);
            match want {
                None => return Err(unset(key, &budget)),
                Some(w) if w.0 > left => {
                    return Err(over(key, &w, &budget, Size(left).to_string()))
                }
                _ => {}
            }
        }
    }
    if let Some(budget) = budget.cpu {
        let left = (budget - used.cpu).max(0.0);
        match want.cpu {
            None => return Err(unset("cpu", &budget)),
            // A thousandth of a core of slack absorbs float rounding in the sum.
            Some(w) if w > left + 1e-3 => {
                return Err(over("cpu", &w, &budget, format!("{left:.2}")))
            }
            _ => {}
        }
    }
    if let Some(budget) = budget.pids {
        let left = budget.saturating_sub(used.pids);
        match want.pids {
            None => return Err(unset("pids", &budget)),
            Some(w) if w > left => return Err(over("pids", &w, &budget, left.to_string())),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        s.parse().unwrap()
    }

    fn entry(name: &str, text: &str) -> Entry {
        Entry {
            name: n(name),
            path: PathBuf::from(format!("/admin/{name}.toml")),
            source: Source::Admin,
            parsed: VassalFile::parse(&n(name), text),
        }
    }

    fn drop_entry(group: &str, name: &str, text: &str) -> Entry {
        Entry {
            source: Source::Drop(n(group)),
            path: PathBuf::from(format!("/home/{group}/vassals/{name}.toml")),
            ..entry(name, text)
        }
    }

    fn no_host_users(_: &str) -> bool {
        false
    }

    fn build(entries: Vec<Entry>, prev: &BTreeMap<Name, VassalFile>) -> Catalog {
        Catalog::build(&entries, prev, &no_host_users)
    }

    fn running(verdicts: &BTreeMap<Name, Verdict>) -> BTreeMap<Name, VassalFile> {
        verdicts
            .iter()
            .filter_map(|(n, v)| v.file().map(|f| (n.clone(), f.clone())))
            .collect()
    }

    const GROUP: &str = "kind = \"group\"\n[limits]\nmemory = \"512M\"\npids = 300\nsites = 3\n";

    fn site(group: &str, mem: &str) -> String {
        format!("kind = \"site\"\ngroup = \"{group}\"\n[limits]\nmemory = \"{mem}\"\npids = 100\n")
    }

    #[test]
    fn reserved_budget_names_what_is_left() {
        let cat = build(
            vec![
                entry("group1", GROUP),
                entry("site52", &site("group1", "256M")),
                entry("site53", &site("group1", "200M")),
                entry("site54", &site("group1", "100M")),
            ],
            &BTreeMap::new(),
        );
        assert!(cat.verdicts[&n("site52")].file().is_some());
        assert!(cat.verdicts[&n("site53")].file().is_some());
        let why = cat.verdicts[&n("site54")].reason().unwrap();
        assert_eq!(
            why,
            "limits.memory 100M exceeds group group1's reserved memory budget of 512M: 56M left"
        );
    }

    #[test]
    fn reserved_requires_limits_and_overcommit_is_dynamic() {
        let cat = build(
            vec![
                entry("group1", GROUP),
                entry("site52", "kind = \"site\"\ngroup = \"group1\""),
            ],
            &BTreeMap::new(),
        );
        assert!(cat.verdicts[&n("site52")]
            .reason()
            .unwrap()
            .contains("limits.memory must be set"));

        let over = "kind = \"group\"\nmode = \"overcommit\"\n[limits]\nmemory = \"512M\"\n";
        let cat = build(
            vec![
                entry("group1", over),
                entry("site52", &site("group1", "400M")),
                entry("site53", &site("group1", "400M")),
            ],
            &BTreeMap::new(),
        );
        for s in ["site52", "site53"] {
            assert!(
                matches!(cat.verdicts[&n(s)], Verdict::Run { dynamic: true, .. }),
                "{s}"
            );
        }
    }

    #[test]
    fn site_count_domains_users_groups() {
        let cat = build(
            vec![
                entry("group1", GROUP),
                entry("a", &site("group1", "10M")),
                entry("b", &site("group1", "10M")),
                entry("c", &site("group1", "10M")),
                entry("d", &site("group1", "10M")),
                entry("e", "kind = \"site\"\ndomains = [\"x.com\"]"),
                entry("f", "kind = \"site\"\ndomains = [\"x.com\"]"),
                entry("g", "kind = \"site\"\nuser = \"e\""),
                entry("h", "kind = \"site\"\ngroup = \"nope\""),
                entry("root-site", "kind = \"site\"\nuser = \"root\""),
            ],
            &BTreeMap::new(),
        );
        let reason = |s: &str| cat.verdicts[&n(s)].reason().unwrap_or("").to_owned();
        assert!(
            reason("d").contains("maximum of 3 sites"),
            "{}",
            reason("d")
        );
        assert_eq!(reason("f"), "domain x.com is already owned by e");
        assert_eq!(reason("g"), "user e is already taken by e");
        assert_eq!(reason("h"), "group nope does not exist");
        let with_root = Catalog::build(
            &[entry("root-site", "kind = \"site\"\nuser = \"root\"")],
            &BTreeMap::new(),
            &|u: &str| u == "root",
        );
        assert_eq!(
            with_root.verdicts[&n("root-site")].reason(),
            Some("user root is a host account")
        );
    }

    #[test]
    fn bad_edit_keeps_last_good_version() {
        let first = build(
            vec![
                entry("group1", GROUP),
                entry("site52", &site("group1", "256M")),
            ],
            &BTreeMap::new(),
        );
        let prev = running(&first.verdicts);
        let cat = build(
            vec![
                entry("group1", GROUP),
                entry("site52", "kind = \"site\"\nbogus = 1"),
            ],
            &prev,
        );
        let v = &cat.verdicts[&n("site52")];
        assert_eq!(v.file(), prev.get(&n("site52")));
        assert!(v.reason().unwrap().contains("unknown field"));

        // Over budget after an edit: the old version keeps its claim.
        let cat = build(
            vec![
                entry("group1", GROUP),
                entry("site52", &site("group1", "1G")),
            ],
            &prev,
        );
        let v = &cat.verdicts[&n("site52")];
        assert_eq!(v.file(), prev.get(&n("site52")));
        assert!(v.reason().unwrap().contains("exceeds"));
    }

    #[test]
    fn running_sites_keep_their_claims_over_new_ones() {
        let prev = running(
            &build(
                vec![entry("zz", "kind = \"site\"\ndomains = [\"x.com\"]")],
                &BTreeMap::new(),
            )
            .verdicts,
        );
        let cat = build(
            vec![
                entry("aa", "kind = \"site\"\ndomains = [\"x.com\"]"),
                entry("zz", "kind = \"site\"\ndomains = [\"x.com\"]"),
            ],
            &prev,
        );
        assert!(cat.verdicts[&n("zz")].file().is_some());
        assert_eq!(
            cat.verdicts[&n("aa")].reason(),
            Some("domain x.com is already owned by zz")
        );
    }

    /// What one judgement lets run, the next lets run too, whatever order
    /// it takes the running sites in: a reseller's customer who claims the
    /// parent of another group's domain under a name that sorts first must
    /// not stop that site at the next rescan.
    #[test]
    fn a_parent_domain_of_another_groups_site_is_refused_and_the_site_stays() {
        let victim = "kind = \"site\"\ngroup = \"g1\"\ndomains = [\"www.shop.test\"]\n[limits]\nmemory = \"64M\"\npids = 10\n";
        let evil = "kind = \"site\"\ngroup = \"g2\"\ndomains = [\"shop.test\"]\n[limits]\nmemory = \"64M\"\npids = 10\n";
        let entries = || vec![entry("g1", GROUP), entry("g2", GROUP), entry("zz", victim)];
        let prev = running(&build(entries(), &BTreeMap::new()).verdicts);
        let mut with_evil = entries();
        with_evil.push(entry("aa", evil));
        let cat = build(with_evil.clone(), &prev);
        assert_eq!(
            cat.verdicts[&n("aa")].reason(),
            Some("domain shop.test lies above www.shop.test of site zz in another group")
        );
        let again = build(with_evil, &running(&cat.verdicts));
        assert!(again.verdicts[&n("zz")].file().is_some());
        assert_eq!(running(&again.verdicts), running(&cat.verdicts));
    }

    /// Related names for the property tests to claim.
    const DOMAINS: [&str; 6] = [
        "x.test",
        "a.x.test",
        "b.a.x.test",
        "*.x.test",
        "*.a.x.test",
        "y.test",
    ];
    const OVERCOMMIT: &str =
        "kind = \"group\"\nmode = \"overcommit\"\n[limits]\nmemory = \"512M\"\nsites = 3\n";

    /// A site file of the property tests: after `head`, some of [`DOMAINS`],
    /// one of two login names or its own, one of two memory sizes.
    fn generated(head: &str, domains: &[usize], user: usize, memory: usize) -> String {
        let user = ["", "user = \"u1\"\n", "user = \"u2\"\n"][user];
        let memory = ["64M", "300M"][memory];
        let domains: Vec<String> = domains
            .iter()
            .map(|d| format!("\"{}\"", DOMAINS[*d]))
            .collect();
        format!(
            "kind = \"site\"\n{head}{user}domains = [{}]\n[limits]\nmemory = \"{memory}\"\npids = 10\n",
            domains.join(", ")
        )
    }

    proptest::proptest! {
        /// Sites of a reserved group, an overcommitted one and the admin's,
        /// each claiming a few related names, a login name and some memory,
        /// dropped one after another (each judged with those let run before
        /// it running): the sites the last judgement lets run are exactly
        /// those one more lets run.
        #[test]
        fn a_judgement_is_stable(sites in proptest::collection::vec(
            (0usize..3, proptest::collection::vec(0usize..6, 0..3), 0usize..3, 0usize..2), 1..8)
        ) {
            let mut entries = vec![entry("g1", GROUP), entry("g2", OVERCOMMIT)];
            let mut last = build(entries.clone(), &BTreeMap::new()).verdicts;
            for (i, (group, domains, user, memory)) in sites.iter().enumerate() {
                let group = ["", "group = \"g1\"\n", "group = \"g2\"\n"][*group];
                let text = generated(group, domains, *user, *memory);
                // Names in an order of their own, not the order of the list.
                entries.push(entry(&format!("s{}", (i * 5) % 8), &text));
                last = build(entries.clone(), &running(&last)).verdicts;
            }
            // The same verdicts, reasons too: a refusal says what is left
            // once all that runs does, whatever ran when it was first made.
            let again = build(entries, &running(&last)).verdicts;
            proptest::prop_assert_eq!(last, again);
        }

        /// One more site file decided against the last judgement's claims
        /// (sites of a reserved group, an overcommitted one at its limit of
        /// three, the admin's, a reseller's drop directory and a group that
        /// just stopped, related names, login names, budgets) gets the verdict a whole judgement of every
        /// file gives it, the refused files' new reasons are the whole
        /// judgement's, and the claims left are the same.
        #[test]
        fn one_more_file_is_decided_as_a_whole_judgement_would(sites in proptest::collection::vec(
            (0usize..5, proptest::collection::vec(0usize..6, 0..3), 0usize..3, 0usize..2), 1..10)
        ) {
            let mut entries = vec![entry("g1", GROUP), entry("g2", OVERCOMMIT)];
            // g3 ran, and its file is gone: it stops, holding no site.
            let gone = build(vec![entry("g3", GROUP)], &BTreeMap::new());
            let first = build(entries.clone(), &running(&gone.verdicts));
            let (mut verdicts, mut claimed) = (first.verdicts, first.claimed);
            let (mut decided, mut valid) = (0, 0);
            for (i, (group, domains, user, memory)) in sites.iter().enumerate() {
                let head =
                    ["", "group = \"g1\"\n", "group = \"g2\"\n", "", "group = \"g3\"\n"][*group];
                let text = generated(head, domains, *user, *memory);
                let name = format!("s{}", (i * 7) % 10);
                let e = if *group == 3 {
                    drop_entry("g1", &name, &text)
                } else {
                    entry(&name, &text)
                };
                valid += usize::from(e.parsed.is_ok());
                entries.push(e.clone());
                let run: BTreeMap<Name, VassalFile> = verdicts
                    .iter()
                    .filter_map(|(n, v)| Some((n.clone(), v.file()?.clone())))
                    .collect();
                let whole = build(entries.clone(), &run);
                if let Some(added) = claimed.add(&e, &no_host_users) {
                    decided += 1;
                    verdicts.insert(e.name.clone(), added.verdict);
                    verdicts.extend(added.changed.into_iter().map(|r| (r.name, r.verdict)));
                    proptest::prop_assert_eq!(&verdicts, &whole.verdicts);
                    proptest::prop_assert_eq!(&claimed, &whole.claimed);
                }
                verdicts = whole.verdicts;
                claimed = whole.claimed;
            }
            // Only an unreadable file is left to the whole judgement.
            proptest::prop_assert_eq!(decided, valid);
        }

        /// A running site's file removed: when its claims are released
        /// alone (nothing refused, no group kept for its sites), they are
        /// the claims of a whole judgement of the files left, which lets
        /// every other file run as before; otherwise nothing is released.
        #[test]
        fn a_removed_file_is_released_as_a_whole_judgement_would(sites in proptest::collection::vec(
            (0usize..3, proptest::collection::vec(0usize..6, 0..3), 0usize..3, 0usize..2), 1..8),
            pick in 0usize..8
        ) {
            let mut entries = vec![entry("g1", GROUP), entry("g2", OVERCOMMIT)];
            let mut last = build(entries.clone(), &BTreeMap::new());
            for (i, (group, domains, user, memory)) in sites.iter().enumerate() {
                let group = ["", "group = \"g1\"\n", "group = \"g2\"\n"][*group];
                let text = generated(group, domains, *user, *memory);
                entries.push(entry(&format!("s{}", (i * 5) % 8), &text));
                last = build(entries.clone(), &running(&last.verdicts));
            }
            let name = n(&format!("s{pick}"));
            let Some(VassalFile::Site(file)) = last.verdicts.get(&name).and_then(Verdict::file)
            else {
                return Ok(());
            };
            let mut claimed = last.claimed.clone();
            let mut run = running(&last.verdicts);
            run.remove(&name);
            entries.retain(|e| e.name != name);
            let whole = build(entries, &run);
            if claimed.release(&name, file) {
                proptest::prop_assert_eq!(&claimed, &whole.claimed);
                let mut others = last.verdicts.clone();
                others.remove(&name);
                proptest::prop_assert_eq!(&others, &whole.verdicts);
            } else {
                proptest::prop_assert_eq!(&claimed, &last.claimed);
            }
        }
    }

    /// What a removed site held (its domain, its login name, its share of
    /// its group's budget) is free for the next file at once.
    #[test]
    fn a_released_sites_domain_user_and_budget_go_to_the_next_file() {
        let site = |user: &str, mem: &str| {
            format!("kind = \"site\"\ngroup = \"g1\"\nuser = \"{user}\"\ndomains = [\"shop.test\"]\n[limits]\nmemory = \"{mem}\"\npids = 10\n")
        };
        let cat = build(
            vec![entry("g1", GROUP), entry("old", &site("u1", "500M"))],
            &BTreeMap::new(),
        );
        let VassalFile::Site(file) = cat.verdicts[&n("old")].file().unwrap().clone() else {
            panic!("a site");
        };
        let next = entry("new", &site("u1", "400M"));
        let mut held = cat.claimed.clone();
        let refused = held.add(&next, &no_host_users).unwrap().verdict;
        assert!(
            refused.reason().unwrap().contains("memory 400M exceeds"),
            "{refused:?}"
        );
        let mut claimed = cat.claimed.clone();
        assert!(claimed.release(&n("old"), &file));
        assert!(!claimed.clone().release(&n("old"), &file), "released once");
        let added = claimed.add(&next, &no_host_users).unwrap();
        assert_eq!(added.verdict.reason(), None);
        // A refused file: only a whole judgement may release.
        assert!(!held.release(&n("old"), &file));
    }

    #[test]
    fn drop_directories_are_confined() {
        let cat = build(
            vec![
                entry("group1", GROUP),
                entry("group2", GROUP),
                drop_entry(
                    "group1",
                    "mine",
                    "kind = \"site\"\n[limits]\nmemory = \"10M\"\npids = 10",
                ),
                drop_entry("group1", "theirs", &site("group2", "10M")),
                drop_entry("group1", "sneaky", GROUP),
                drop_entry("group1", "group2", &site("group1", "10M")),
                drop_entry(
                    "group1",
                    "rooted",
                    "kind = \"site\"\n[limits]\nmemory = \"10M\"\npids = 10\n[container]\nrootfs = \"/srv/os\"",
                ),
            ],
            &BTreeMap::new(),
        );
        match &cat.verdicts[&n("mine")] {
            Verdict::Run {
                file: VassalFile::Site(s),
                ..
            } => assert_eq!(s.group, Some(n("group1"))),
            v => panic!("{v:?}"),
        }
        assert!(cat.verdicts[&n("theirs")]
            .reason()
            .unwrap()
            .contains("may only belong to group1"));
        assert!(cat.verdicts[&n("sneaky")]
            .reason()
            .unwrap()
            .contains("sites only"));
        assert!(cat.verdicts[&n("rooted")]
            .reason()
            .unwrap()
            .contains("only be set in the admin directory"));
        assert!(cat.verdicts[&n("group2")].file().is_some());
        assert_eq!(cat.shadowed.len(), 1);
        assert!(cat.shadowed[0]
            .2
            .contains("already used by /admin/group2.toml"));
    }

    #[test]
    fn removed_group_is_kept_while_it_holds_sites() {
        let prev = running(
            &build(
                vec![
                    entry("group1", GROUP),
                    entry("site52", &site("group1", "10M")),
                ],
                &BTreeMap::new(),
            )
            .verdicts,
        );
        let cat = build(vec![entry("site52", &site("group1", "10M"))], &prev);
        assert!(cat.verdicts[&n("site52")].file().is_some());
        assert!(cat.verdicts[&n("group1")]
            .reason()
            .unwrap()
            .contains("holds sites: site52"));
        let cat = build(vec![], &prev);
        assert!(cat.verdicts.is_empty());
    }
}

#[cfg(test)]
mod example_configs {
    //! Every example file in configs/vassals parses, and together they are accepted.
    use super::*;

    #[test]
    fn examples_are_valid_together() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/vassals");
        let mut entries = Vec::new();
        for f in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = f.path();
            let name: Name = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            let parsed = VassalFile::parse(&name, &text);
            assert!(parsed.is_ok(), "{}: {:?}", path.display(), parsed);
            entries.push(Entry {
                name,
                path,
                source: Source::Admin,
                parsed,
            });
        }
        assert!(entries.len() >= 4);
        let cat = Catalog::build(&entries, &BTreeMap::new(), &|_: &str| false);
        for (name, v) in &cat.verdicts {
            assert!(
                matches!(v, Verdict::Run { reason: None, .. }),
                "{name}: {v:?}"
            );
        }
    }
}
