//! Many hosts: where the vassal files live in etcd and which host runs each.
//!
//! In cluster mode every host's emperor reads the same files from one prefix
//! of etcd (`<prefix>vassals/<name>`, the file's text as its value) and keeps
//! in its own admin directory a copy of those placed on it; the emperor's
//! engine judges that directory as it judges any other. A group names its
//! host (`host = "h1"`), its sites run where it runs, and an admin site names
//! its own. This module is the pure part: keys, placement and what a host
//! does to its directory.

use std::collections::{BTreeMap, BTreeSet};

use crate::name::Name;

/// The prefix every key of the cluster lives under, unless told otherwise.
pub const DEFAULT_PREFIX: &str = "/imperium/";

/// Where the vassal files live, under the prefix.
pub const VASSALS: &str = "vassals/";

/// Where each host says it is alive (a key bound to the host's lease).
pub const HOSTS: &str = "hosts/";

/// Where the scheduler records the host it chose for a group or an admin
/// site whose file names none: `placement/<name>` = the host.
pub const PLACEMENT: &str = "placement/";

/// The sites resellers dropped into their groups' directories on the host
/// that holds the group: `dropped/<name>` = what they claim (see
/// [`DroppedClaims`]). The file stays in the drop directory (judged there
/// with a reseller's rules); the cluster knows its name, login and domains.
pub const DROPPED: &str = "dropped/";

/// What a dropped site claims in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DroppedClaims {
    /// The reseller's group.
    pub group: Name,
    /// The tenant's login.
    pub login: Name,
    /// The domains it serves.
    pub domains: Vec<String>,
}

/// The key of a dropped site.
pub fn dropped_key(prefix: &str, name: &Name) -> String {
    format!("{prefix}{DROPPED}{name}")
}

/// The dropped site a key is for.
pub fn dropped_of(prefix: &str, key: &[u8]) -> Option<Name> {
    let key = std::str::from_utf8(key).ok()?;
    key.strip_prefix(prefix)?
        .strip_prefix(DROPPED)?
        .parse()
        .ok()
}

/// Which host owns each vassal: `owners/<name>` = the host.
pub const OWNERS: &str = "owners/";

/// `moves/<name>`: a vassal on its way to another host ([`Move`]).
pub const MOVES: &str = "moves/";

/// The key of a vassal's move.
pub fn move_key(prefix: &str, name: &Name) -> String {
    format!("{prefix}{MOVES}{name}")
}

/// The vassal a move key is for.
pub fn move_of(prefix: &str, key: &[u8]) -> Option<Name> {
    let key = std::str::from_utf8(key).ok()?;
    key.strip_prefix(prefix)?.strip_prefix(MOVES)?.parse().ok()
}

/// A site moving with its home from one host to another (`emperor move`).
/// Each host does its part as the phase says, and moves it on in a
/// transaction that holds only if the move is still as it read it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Move {
    /// The host that runs it (its owner when the move began).
    pub from: Name,
    /// The host it goes to.
    pub to: Name,
    /// Where the move is.
    pub phase: Phase,
    /// Why it failed (phase `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// The phases of a [`Move`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// `to` copies the home while the site serves on `from`.
    Copy,
    /// `from` freezes the site (its domains answer 503 everywhere).
    Freeze,
    /// `to` copies what changed; then one transaction puts the site's
    /// file on `to` and the move in `switched`.
    Final,
    /// The site is `to`'s: `from` kills it still frozen and lets go of it
    /// (its domains answer 503 meanwhile); `to` ends the move once it owns
    /// the site.
    Switched,
    /// Given up (`why` says where); `from` thaws the site, which runs on
    /// there. The admin deletes the key (or moves again).
    Failed,
}

/// The host a file's text names (`host = "..."`), if it is TOML and does.
pub fn host_in(text: &str) -> Option<Name> {
    let t = toml::from_str::<toml::Table>(text).ok()?;
    t.get("host")?.as_str()?.parse().ok()
}

/// `text` with its `host` set to `to` (the rest of the file as written);
/// `None` if it is not TOML.
pub fn with_host(text: &str, to: &Name) -> Option<String> {
    let mut doc = text.parse::<toml_edit::DocumentMut>().ok()?;
    doc["host"] = toml_edit::value(to.as_str());
    Some(doc.to_string())
}

/// The scheduler's election.
pub const LEADER: &str = "leader/scheduler";

/// Where the cluster's uids live: `next`, `by-name/<login>`, `by-uid/<uid>`.
pub const UIDS: &str = "uids/";

/// The largest vassal file a host copies (the API's own limit).
pub const MAX_FILE: usize = 64 * 1024;

/// The key of a vassal's file.
pub fn vassal_key(prefix: &str, name: &Name) -> String {
    format!("{prefix}{VASSALS}{name}")
}

/// The key a host keeps while it is alive.
pub fn alive_key(prefix: &str, host: &Name) -> String {
    format!("{prefix}{HOSTS}{host}/alive")
}

/// The login name a file's tenant gets (`user`, else the vassal's name),
/// read leniently; `None` for a file that is not TOML or names a bad user.
pub fn login_of(name: &Name, text: &str) -> Option<Name> {
    let table = toml::from_str::<toml::Table>(text).ok()?;
    match table.get("user") {
        None => Some(name.clone()),
        Some(u) => u.as_str()?.parse().ok(),
    }
}

/// The key by which a host owns a vassal (its value: the host): while its
/// copy of the file is there, or its site has not yet stopped. A host
/// copies a file only once it owns it, and owns it only if no host does (a
/// transaction), so a vassal never runs on two hosts at once.
pub fn owner_key(prefix: &str, name: &Name) -> String {
    format!("{prefix}{OWNERS}{name}")
}

/// The key of the scheduler's choice for a vassal.
pub fn placement_key(prefix: &str, name: &Name) -> String {
    format!("{prefix}{PLACEMENT}{name}")
}

/// The vassal a placement key is for.
pub fn placement_of(prefix: &str, key: &[u8]) -> Option<Name> {
    let key = std::str::from_utf8(key).ok()?;
    key.strip_prefix(prefix)?
        .strip_prefix(PLACEMENT)?
        .parse()
        .ok()
}

/// The host an alive key is for.
pub fn alive_of(prefix: &str, key: &[u8]) -> Option<Name> {
    let key = std::str::from_utf8(key).ok()?;
    key.strip_prefix(prefix)?
        .strip_prefix(HOSTS)?
        .strip_suffix("/alive")?
        .parse()
        .ok()
}

/// The vassal an owner key is for.
pub fn owner_of(prefix: &str, key: &[u8]) -> Option<Name> {
    let key = std::str::from_utf8(key).ok()?;
    key.strip_prefix(prefix)?.strip_prefix(OWNERS)?.parse().ok()
}

/// The vassal a key names, if it is a vassal file's key with a valid name.
pub fn vassal_name(prefix: &str, key: &[u8]) -> Option<Name> {
    let key = std::str::from_utf8(key).ok()?;
    key.strip_prefix(prefix)?
        .strip_prefix(VASSALS)?
        .parse()
        .ok()
}

/// The cluster's vassal files, each read once, when it changes, for what
/// placement and the scheduler need (a host follows thousands).
#[derive(Debug, Default, Clone)]
pub struct Files {
    entries: BTreeMap<Name, Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    /// The file's text (empty for a dropped site: its file is not here).
    text: String,
    /// A site in a reseller's drop directory: never copied.
    dropped: bool,
    /// When the cluster first had it (etcd's create revision): of two
    /// files claiming one login or domain, the earlier keeps it.
    created: i64,
    head: Option<Head>,
}

/// What placement reads of a file (leniently: only `kind`, `group` and
/// `host`), and what the scheduler counts.
#[derive(Debug, Clone)]
struct Head {
    group_kind: bool,
    group: Option<Name>,
    host: Option<Name>,
    /// The memory of a group or admin site valid on its own (`None`:
    /// another kind, or not valid).
    own_memory: Option<u64>,
    /// The tenant's login (`user`, else the vassal's name) and the
    /// domains it claims: each one vassal's in the whole cluster.
    claims: Vec<String>,
}

impl Files {
    /// Adds or replaces a file, first put at revision `created`.
    pub fn insert(&mut self, name: Name, text: String, created: i64) {
        let head = head(&name, &text);
        self.entries.insert(
            name,
            Entry {
                text,
                dropped: false,
                created,
                head,
            },
        );
    }

    /// Adds or replaces a reseller's dropped site, registered at `created`:
    /// placed with its group, claiming its login and domains, never copied.
    pub fn insert_dropped(&mut self, name: Name, claims: &DroppedClaims, created: i64) {
        self.entries.insert(
            name,
            Entry {
                text: String::new(),
                dropped: true,
                created,
                head: Some(dropped_head(claims)),
            },
        );
    }

    /// Whether `name` is a site of a reseller's drop directory.
    pub fn is_dropped(&self, name: &Name) -> bool {
        self.entries.get(name).is_some_and(|e| e.dropped)
    }

    /// Whether `name` is registered as a dropped site with these claims.
    pub fn is_dropped_as(&self, name: &Name, claims: &DroppedClaims) -> bool {
        let Some(e) = self.entries.get(name) else {
            return false;
        };
        let new = dropped_head(claims);
        e.dropped
            && e.head.as_ref().map(|h| (&h.group, &h.claims)) == Some((&new.group, &new.claims))
    }

    /// Why a new claim set for `name` (a dropped site's) would take what an
    /// earlier file of the cluster claims.
    pub fn dropped_conflict(&self, name: &Name, claims: &DroppedClaims) -> Option<String> {
        self.earlier_claim(name, &dropped_head(claims))
    }

    /// What a file earlier than `name` (every other, if `name` is new)
    /// claims of what `new` claims, as a reason.
    fn earlier_claim(&self, name: &Name, new: &Head) -> Option<String> {
        let mine = self.entries.get(name).map(|e| (e.created, name));
        self.entries
            .iter()
            .filter(|(other, e)| *other != name && mine.is_none_or(|m| (e.created, *other) < m))
            .find_map(|(other, e)| {
                let claims = &e.head.as_ref()?.claims;
                let claim = new.claims.iter().find(|c| claims.contains(c))?;
                Some(reason(claim, other))
            })
    }

    /// The files whose login or a domain an earlier file of the cluster
    /// claims, each with the reason: no host copies them (one that runs
    /// keeps its last copy), so one login or domain is never two vassals'
    /// on two hosts.
    pub fn conflicts(&self) -> BTreeMap<Name, String> {
        let mut by_claim: BTreeMap<&str, Vec<(i64, &Name)>> = BTreeMap::new();
        for (name, e) in &self.entries {
            for c in e.head.iter().flat_map(|h| &h.claims) {
                by_claim.entry(c).or_default().push((e.created, name));
            }
        }
        let mut out = BTreeMap::new();
        for (claim, mut owners) in by_claim {
            if owners.len() < 2 {
                continue;
            }
            owners.sort();
            let first = owners[0].1;
            for (_, name) in &owners[1..] {
                out.entry((*name).clone())
                    .or_insert_with(|| reason(claim, first));
            }
        }
        out
    }

    /// Why `text`, as `name`'s new file, would claim what an earlier file
    /// of the cluster claims (`None`: it would not). An edit keeps its
    /// file's place; a new file comes after every other.
    pub fn conflict_with(&self, name: &Name, text: &str) -> Option<String> {
        self.earlier_claim(name, &head(name, text)?)
    }

    /// Removes a file.
    pub fn remove(&mut self, name: &Name) {
        self.entries.remove(name);
    }

    /// A file's text.
    pub fn text(&self, name: &Name) -> Option<&str> {
        self.entries.get(name).map(|e| e.text.as_str())
    }

    /// How many files.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No file at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl FromIterator<(Name, String)> for Files {
    /// Files all put at once (of two claiming one thing, the first by name
    /// keeps it).
    fn from_iter<I: IntoIterator<Item = (Name, String)>>(iter: I) -> Files {
        let mut files = Files::default();
        for (name, text) in iter {
            files.insert(name, text, 0);
        }
        files
    }
}

/// What placement, the scheduler and the cluster-wide claims read of a file.
fn head(name: &Name, text: &str) -> Option<Head> {
    let t = toml::from_str::<toml::Table>(text).ok()?;
    let name_of = |key: &str| t.get(key)?.as_str()?.parse::<Name>().ok();
    let own_memory = match crate::config::VassalFile::parse(name, text) {
        Ok(crate::config::VassalFile::Site(s)) if s.group.is_some() => None,
        Ok(f) => Some(f.limits().memory.map_or(0, |m| m.0)),
        Err(_) => None,
    };
    let mut claims: Vec<String> = login_of(name, text)
        .map(|l| format!("login {l}"))
        .into_iter()
        .collect();
    if let Some(domains) = t.get("domains").and_then(|d| d.as_array()) {
        claims.extend(
            domains
                .iter()
                .filter_map(|d| d.as_str())
                .map(|d| format!("domain {}", d.to_ascii_lowercase())),
        );
    }
    Some(Head {
        group_kind: t.get("kind").and_then(|k| k.as_str()) == Some("group"),
        group: name_of("group"),
        host: name_of("host"),
        own_memory,
        claims,
    })
}

/// What a dropped site's registration says for placement and claims.
fn dropped_head(claims: &DroppedClaims) -> Head {
    let mut all = vec![format!("login {}", claims.login)];
    all.extend(
        claims
            .domains
            .iter()
            .map(|d| format!("domain {}", d.to_ascii_lowercase())),
    );
    Head {
        group_kind: false,
        group: Some(claims.group.clone()),
        host: None,
        own_memory: None,
        claims: all,
    }
}

fn reason(claim: &str, owner: &Name) -> String {
    format!("{claim} is vassal {owner}'s in the cluster")
}

/// The host each file is placed on: a group's or an admin site's own `host`
/// (else the scheduler's choice, from `chosen`), a group's site its
/// group's. `None` when it cannot be told: the file is not TOML, names no
/// host and was not scheduled, or its group's file is missing or unplaced.
/// Read leniently (only `kind`, `group` and `host`): a file whose limits are
/// wrong still goes to its host, whose engine refuses it with the reason and
/// keeps the last good version running.
pub fn placements(files: &Files, chosen: &BTreeMap<Name, Name>) -> BTreeMap<Name, Option<Name>> {
    let head = |name: &Name| files.entries.get(name)?.head.as_ref();
    let own_host = |name: &Name| -> Option<Name> {
        head(name)?
            .host
            .clone()
            .or_else(|| chosen.get(name).cloned())
    };
    let placed = |name: &Name| -> Option<Name> {
        let h = head(name)?;
        match (&h.group, h.group_kind) {
            (_, true) | (None, false) => own_host(name),
            (Some(g), false) => {
                head(g).filter(|gh| gh.group_kind)?;
                own_host(g)
            }
        }
    };
    files
        .entries
        .keys()
        .map(|n| (n.clone(), placed(n)))
        .collect()
}

/// The scheduler: a host for every group and admin site whose file names
/// none and that has no host yet, each in turn (by name) on the host with
/// the most memory left once what is placed there is counted (`capacity`:
/// the hosts alive and their memory; a file's `limits.memory`, or nothing
/// if unset). A file that is not valid on its own is left for its author to
/// mend. Choices are never revised here: a group stays where it was put.
pub fn schedule(
    files: &Files,
    chosen: &BTreeMap<Name, Name>,
    capacity: &BTreeMap<Name, u64>,
) -> Vec<(Name, Name)> {
    if capacity.is_empty() {
        return Vec::new();
    }
    let mut left: BTreeMap<&Name, i128> = capacity.iter().map(|(h, m)| (h, *m as i128)).collect();
    let mut wanting = Vec::new();
    for (name, placed) in placements(files, chosen) {
        let Some(memory) = files.entries[&name]
            .head
            .as_ref()
            .and_then(|h| h.own_memory)
        else {
            continue;
        };
        let memory = i128::from(memory);
        match placed {
            Some(h) => {
                if let Some(l) = left.get_mut(&h) {
                    *l -= memory;
                }
            }
            None => wanting.push((name, memory)),
        }
    }
    let mut out = Vec::new();
    for (name, memory) in wanting {
        // The most left; the first by name among equals.
        let Some((host, _)) = left
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        else {
            break;
        };
        let host = (*host).clone();
        *left.get_mut(&host).expect("a host of the map") -= memory;
        out.push((name, host));
    }
    out
}

/// What a host's emperor tells its router in cluster mode
/// (`<run-dir>/router/cluster.json`): where the other hosts' routers are,
/// and which host serves each domain this host does not.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peers {
    /// Schema version (1).
    pub schema_version: u32,
    /// Which writing this is: the router says it has taken it by writing
    /// the number into `peers.applied` beside it.
    #[serde(default)]
    pub generation: u64,
    /// The routers of the other hosts alive (their lease held): the address
    /// their peer listener is reached at, by host.
    pub routers: BTreeMap<String, std::net::SocketAddr>,
    /// Each domain a vassal of another host claims (as its file writes it,
    /// `*.` included), and that host. A host missing from `routers` is
    /// down: its domains answer 503.
    pub domains: BTreeMap<String, String>,
    /// Domains of sites being moved: 503 (`Retry-After`) here, whatever
    /// the routes say (the site is frozen, or stopping on the host it left).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub moving: BTreeSet<String>,
    /// Domains of sites just moved here: served once the site subscribes
    /// them, 503 until then (not 404).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub arriving: BTreeSet<String>,
}

impl Files {
    /// The domains `name`'s file claims (lower case, as written).
    pub fn domains(&self, name: &Name) -> Vec<String> {
        self.entries
            .get(name)
            .and_then(|e| e.head.as_ref())
            .map(|h| {
                h.claims
                    .iter()
                    .filter_map(|c| c.strip_prefix("domain ").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `name` is an admin site (no group): what moves on its own.
    pub fn is_admin_site(&self, name: &Name) -> bool {
        self.entries
            .get(name)
            .and_then(|e| e.head.as_ref())
            .is_some_and(|h| !h.group_kind && h.group.is_none() && !h.claims.is_empty())
            && !self.is_dropped(name)
    }

    /// Whether `name`'s file names its host itself.
    pub fn names_host(&self, name: &Name) -> bool {
        self.entries
            .get(name)
            .and_then(|e| e.head.as_ref())
            .is_some_and(|h| h.host.is_some())
    }
}

/// The routes to the other hosts as `me` sees the cluster: each domain of a
/// vassal another host holds (`owners`), or is placed on while no host
/// holds it, goes to that host; a file that lost a claim to an earlier one
/// ([`Files::conflicts`]) routes nothing. `routers`: the hosts alive and
/// the address of their router's peer listener, if they gave one.
pub fn peers(
    files: &Files,
    placed: &BTreeMap<Name, Option<Name>>,
    owners: &BTreeMap<Name, Name>,
    me: &Name,
    routers: &BTreeMap<Name, Option<std::net::SocketAddr>>,
) -> Peers {
    let conflicts = files.conflicts();
    let mut domains = BTreeMap::new();
    for (name, e) in &files.entries {
        if conflicts.contains_key(name) {
            continue;
        }
        let Some(host) = owners
            .get(name)
            .or_else(|| placed.get(name).and_then(Option::as_ref))
        else {
            continue;
        };
        if host == me {
            continue;
        }
        for claim in e.head.iter().flat_map(|h| &h.claims) {
            if let Some(domain) = claim.strip_prefix("domain ") {
                domains.insert(domain.to_owned(), host.to_string());
            }
        }
    }
    Peers {
        schema_version: 1,
        generation: 0,
        routers: routers
            .iter()
            .filter(|(h, _)| *h != me)
            .filter_map(|(h, a)| Some((h.to_string(), (*a)?)))
            .collect(),
        domains,
        moving: BTreeSet::new(),
        arriving: BTreeSet::new(),
    }
}

/// What one host does to its directory so that it holds what the cluster
/// places on it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Files to write (new, or with new text).
    pub write: Vec<(Name, String)>,
    /// Files to remove: gone from the cluster, or placed on another host.
    pub remove: Vec<Name>,
}

impl Plan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.write.is_empty() && self.remove.is_empty()
    }
}

/// Compares the cluster's `files` (`placed` as [`placements`] says) with
/// the host's `local` copies. A file placed on `host` is copied, once no other host holds it (`held_elsewhere`:
/// the host it left has not yet stopped it); one placed elsewhere or gone is
/// removed; one whose place cannot be told stays where it is (its new text
/// written there, so that the engine shows why it is refused), and is
/// copied nowhere new; one in `conflicts` (see [`Files::conflicts`]) is left
/// as it is everywhere.
pub fn plan(
    files: &Files,
    placed: &BTreeMap<Name, Option<Name>>,
    host: &Name,
    local: &BTreeMap<Name, String>,
    held_elsewhere: &BTreeSet<Name>,
    conflicts: &BTreeMap<Name, String>,
) -> Plan {
    let mut plan = Plan::default();
    for (name, entry) in &files.entries {
        if conflicts.contains_key(name) || entry.dropped {
            continue;
        }
        let text = &entry.text;
        let here = local.get(name);
        let keep = match placed.get(name).cloned().flatten() {
            Some(h) => h == *host && (here.is_some() || !held_elsewhere.contains(name)),
            None => here.is_some(),
        };
        if keep {
            if here != Some(text) {
                plan.write.push((name.clone(), text.clone()));
            }
        } else if here.is_some() {
            plan.remove.push(name.clone());
        }
    }
    plan.remove.extend(
        local
            .keys()
            .filter(|n| !files.entries.contains_key(*n))
            .cloned(),
    );
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        s.parse().unwrap()
    }

    fn files(list: &[(&str, &str)]) -> Files {
        list.iter().map(|(k, v)| (n(k), (*v).to_owned())).collect()
    }

    fn texts(list: &[(&str, &str)]) -> BTreeMap<Name, String> {
        list.iter().map(|(k, v)| (n(k), (*v).to_owned())).collect()
    }

    fn plan(
        f: &Files,
        chosen: &BTreeMap<Name, Name>,
        host: &Name,
        local: &BTreeMap<Name, String>,
        held: &BTreeSet<Name>,
    ) -> Plan {
        super::plan(f, &placements(f, chosen), host, local, held, &f.conflicts())
    }

    #[test]
    fn the_peers_route_each_other_hosts_domain_to_the_host_that_holds_it() {
        let mut f = Files::default();
        f.insert(n("g2"), "kind = \"group\"\nhost = \"h2\"\n".into(), 1);
        f.insert(
            n("shop"),
            "kind = \"site\"\ngroup = \"g2\"\ndomains = [\"Shop.example\", \"*.shop.example\"]\n"
                .into(),
            2,
        );
        f.insert(
            n("mine"),
            "kind = \"site\"\nhost = \"h1\"\ndomains = [\"mine.example\"]\n".into(),
            3,
        );
        // Claims shop.example after shop: routes nothing.
        f.insert(
            n("late"),
            "kind = \"site\"\nhost = \"h3\"\ndomains = [\"shop.example\", \"late.example\"]\n"
                .into(),
            4,
        );
        f.insert(
            n("moved"),
            "kind = \"site\"\nhost = \"h1\"\ndomains = [\"moved.example\"]\n".into(),
            5,
        );
        let placed = placements(&f, &BTreeMap::new());
        // moved is placed here but h3 still holds it.
        let owners = BTreeMap::from([(n("moved"), n("h3")), (n("shop"), n("h2"))]);
        let addr = |p: u16| Some(std::net::SocketAddr::from(([192, 0, 2, 1], p)));
        let routers = BTreeMap::from([(n("h1"), addr(1)), (n("h2"), addr(2)), (n("h3"), None)]);
        let p = peers(&f, &placed, &owners, &n("h1"), &routers);
        assert_eq!(
            p.routers,
            BTreeMap::from([("h2".to_owned(), addr(2).unwrap())])
        );
        let d: Vec<(&str, &str)> = p
            .domains
            .iter()
            .map(|(d, h)| (d.as_str(), h.as_str()))
            .collect();
        assert_eq!(
            d,
            [
                ("*.shop.example", "h2"),
                ("moved.example", "h3"),
                ("shop.example", "h2")
            ]
        );
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Peers>(&text).unwrap(), p);
    }

    #[test]
    fn keys_name_only_valid_vassals_under_the_prefix() {
        assert_eq!(
            vassal_key("/imperium/", &n("shop")),
            "/imperium/vassals/shop"
        );
        assert_eq!(
            vassal_name("/imperium/", b"/imperium/vassals/shop"),
            Some(n("shop"))
        );
        for bad in [
            &b"/imperium/vassals/../etc"[..],
            b"/imperium/vassals/a/b",
            b"/imperium/vassals/",
            b"/other/vassals/shop",
            b"/imperium/hosts/h1/alive",
            b"/imperium/vassals/\xff",
        ] {
            assert_eq!(vassal_name("/imperium/", bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_login_is_the_user_key_or_the_vassal_name() {
        assert_eq!(login_of(&n("shop"), "kind = \"site\""), Some(n("shop")));
        assert_eq!(
            login_of(&n("shop"), "kind = \"site\"\nuser = \"bob\""),
            Some(n("bob"))
        );
        assert_eq!(login_of(&n("shop"), "user = \"Bob\""), None);
        assert_eq!(login_of(&n("shop"), "user = ["), None);
    }

    #[test]
    fn a_groups_sites_go_where_the_group_goes() {
        let f = files(&[
            ("g1", "kind = \"group\"\nhost = \"h1\"\n"),
            ("s1", "kind = \"site\"\ngroup = \"g1\"\n"),
            // Limits wrong: still placed, the engine says why.
            (
                "s2",
                "kind = \"site\"\ngroup = \"g1\"\n[limits]\nmemory = \"1\"\n",
            ),
            ("a1", "kind = \"site\"\nhost = \"h2\"\n"),
            ("nohost", "kind = \"group\"\n"),
            ("orphan", "kind = \"site\"\ngroup = \"missing\"\n"),
            ("broken", "kind = \"site\"\nhost = \"h1\"\n[[[\n"),
            ("badhost", "kind = \"site\"\nhost = \"H 1\"\n"),
            // A site is no group: its "sites" are unplaced.
            ("x", "kind = \"site\"\ngroup = \"a1\"\n"),
        ]);
        let p = placements(&f, &BTreeMap::new());
        let h = |s: &str| Some(n(s));
        assert_eq!(p[&n("g1")], h("h1"));
        assert_eq!(p[&n("s1")], h("h1"));
        assert_eq!(p[&n("s2")], h("h1"));
        assert_eq!(p[&n("a1")], h("h2"));
        for none in ["nohost", "orphan", "broken", "badhost", "x"] {
            assert_eq!(p[&n(none)], None, "{none}");
        }
    }

    #[test]
    fn a_host_copies_its_files_removes_the_others_and_keeps_the_unplaceable() {
        let f = files(&[
            ("g1", "kind = \"group\"\nhost = \"h1\"\n"),
            ("s1", "kind = \"site\"\ngroup = \"g1\"\n"),
            ("a2", "kind = \"site\"\nhost = \"h2\"\n"),
            ("broken", "kind = [\n"),
            ("lost", "kind = [\n"),
        ]);
        let local = texts(&[
            ("s1", "kind = \"site\"\ngroup = \"g1\"\n"),
            ("a2", "kind = \"site\"\nhost = \"h1\"\n"),
            ("broken", "kind = \"site\"\nhost = \"h1\"\n"),
            ("gone", "kind = \"site\"\nhost = \"h1\"\n"),
        ]);
        let plan = plan(&f, &BTreeMap::new(), &n("h1"), &local, &BTreeSet::new());
        assert_eq!(
            plan.write,
            vec![
                (n("broken"), "kind = [\n".to_owned()),
                (n("g1"), "kind = \"group\"\nhost = \"h1\"\n".to_owned()),
            ]
        );
        assert_eq!(plan.remove, vec![n("a2"), n("gone")]);
    }

    #[test]
    fn the_scheduler_puts_each_unplaced_group_where_most_memory_is_left() {
        let group = |mem: &str, host: &str| {
            format!("kind = \"group\"\n{host}[limits]\nmemory = \"{mem}\"\n")
        };
        let f: Files = [
            ("g0", group("512M", "host = \"h1\"\n")),
            ("g1", group("256M", "")),
            ("g2", group("256M", "")),
            ("g3", group("512M", "")),
            ("g4", group("1", "")),
            ("s1", "kind = \"site\"\ngroup = \"g1\"\n".to_owned()),
            ("a1", "kind = \"site\"\n".to_owned()),
            ("a2", "kind = \"site\"\n".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (n(k), v))
        .collect();
        let hosts: BTreeMap<Name, u64> = [(n("h1"), 1 << 30), (n("h2"), 1 << 30)].into();
        let chosen: BTreeMap<Name, Name> = [(n("a2"), n("h1"))].into();
        let out = schedule(&f, &chosen, &hosts);
        let h = |s: &str| n(s);
        // h1 has 512M left (g0), h2 1G: a1 (no memory) and g1 go to h2,
        // g2 to h2 (768M > 512M), g3 to h1 (512M each: the first by name);
        // g4 is not valid; a2 was placed before; s1 goes with g1.
        assert_eq!(
            out,
            vec![
                (n("a1"), h("h2")),
                (n("g1"), h("h2")),
                (n("g2"), h("h2")),
                (n("g3"), h("h1")),
            ]
        );
        let mut all = chosen.clone();
        all.extend(out);
        assert!(schedule(&f, &all, &hosts).is_empty(), "choices stand");
        assert_eq!(placements(&f, &all)[&n("s1")], Some(h("h2")));
        assert!(schedule(&f, &BTreeMap::new(), &BTreeMap::new()).is_empty());
    }

    #[test]
    fn a_login_or_a_domain_is_the_earliest_files_in_the_whole_cluster() {
        let mut f = Files::default();
        f.insert(
            n("b1"),
            "kind = \"site\"\nhost = \"h1\"\nuser = \"shop\"\n".into(),
            9,
        );
        f.insert(
            n("a2"),
            "kind = \"site\"\nhost = \"h2\"\nuser = \"shop\"\n".into(),
            12,
        );
        f.insert(
            n("c1"),
            "kind = \"site\"\nhost = \"h1\"\ndomains = [\"x.example\"]\n".into(),
            3,
        );
        f.insert(
            n("d2"),
            "kind = \"site\"\nhost = \"h2\"\ndomains = [\"X.example\"]\n".into(),
            4,
        );
        f.insert(n("shop"), "kind = \"site\"\nhost = \"h2\"\n".into(), 20);
        let c = f.conflicts();
        assert_eq!(c[&n("a2")], "login shop is vassal b1's in the cluster");
        assert_eq!(
            c[&n("d2")],
            "domain x.example is vassal c1's in the cluster"
        );
        assert_eq!(c[&n("shop")], "login shop is vassal b1's in the cluster");
        assert_eq!(c.len(), 3);
        // Not copied where placed; b1 and c1 are.
        let p = super::plan(
            &f,
            &placements(&f, &BTreeMap::new()),
            &n("h2"),
            &BTreeMap::new(),
            &BTreeSet::new(),
            &c,
        );
        assert!(p.write.is_empty(), "{p:?}");
        // Checked before a write: refused, and the file's own old text is
        // no conflict.
        assert_eq!(
            f.conflict_with(&n("new"), "kind = \"site\"\ndomains = [\"x.example\"]\n"),
            Some("domain x.example is vassal c1's in the cluster".into())
        );
        assert_eq!(
            f.conflict_with(&n("c1"), "kind = \"site\"\ndomains = [\"x.example\"]\n"),
            None
        );
    }

    #[test]
    fn a_file_waits_while_another_host_holds_it() {
        let f = files(&[("a1", "kind = \"site\"\nhost = \"h1\"\n")]);
        let held: BTreeSet<Name> = [n("a1")].into();
        assert!(plan(&f, &BTreeMap::new(), &n("h1"), &BTreeMap::new(), &held).is_empty());
        // Its own copy is kept up to date whoever else says it holds it.
        let old = texts(&[("a1", "kind = \"site\"\n")]);
        assert_eq!(
            plan(&f, &BTreeMap::new(), &n("h1"), &old, &held)
                .write
                .len(),
            1
        );
        assert_eq!(
            plan(
                &f,
                &BTreeMap::new(),
                &n("h1"),
                &BTreeMap::new(),
                &BTreeSet::new()
            )
            .write
            .len(),
            1
        );
    }

    #[test]
    fn owner_keys_name_a_vassal() {
        let k = owner_key("/imperium/", &n("shop"));
        assert_eq!(k, "/imperium/owners/shop");
        assert_eq!(owner_of("/imperium/", k.as_bytes()), Some(n("shop")));
        assert_eq!(owner_of("/imperium/", b"/imperium/owners/a/b"), None);
        assert_eq!(owner_of("/imperium/", b"/imperium/vassals/shop"), None);
    }

    proptest::proptest! {
        /// From empty directories, no file is copied to two hosts; a plan
        /// carried out leaves nothing to do.
        #[test]
        fn each_file_lands_on_one_host_and_a_plan_is_done_once_carried_out(
            entries in proptest::collection::vec(
                (0..6usize, 0..2usize, proptest::option::of(0..3usize), proptest::option::of(0..6usize)),
                0..12,
            )
        ) {
            let hosts = [n("h0"), n("h1"), n("h2")];
            let mut f = Files::default();
            for (i, kind, host, group) in entries {
                let mut text = format!("kind = \"{}\"\n", ["group", "site"][kind]);
                if let Some(h) = host {
                    text += &format!("host = \"h{h}\"\n");
                }
                if let Some(g) = group {
                    text += &format!("group = \"v{g}\"\n");
                }
                f.insert(n(&format!("v{i}")), text, 0);
            }
            let mut copies: BTreeMap<Name, usize> = BTreeMap::new();
            for host in &hosts {
                let mut local = BTreeMap::new();
                let p = plan(&f, &BTreeMap::new(), host, &local, &BTreeSet::new());
                proptest::prop_assert!(p.remove.is_empty());
                for (name, text) in p.write {
                    *copies.entry(name.clone()).or_default() += 1;
                    local.insert(name, text);
                }
                proptest::prop_assert!(plan(&f, &BTreeMap::new(), host, &local, &BTreeSet::new()).is_empty());
            }
            proptest::prop_assert!(copies.values().all(|c| *c == 1));
        }
    }
}
