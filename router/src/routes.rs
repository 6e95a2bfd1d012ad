//! The route table: domain -> the site that owns it, its backends and its
//! certificate. Readers take a snapshot without a lock; a change builds a new
//! table under one writer lock and swaps it in, so two changes never lose one
//! another, and a certificate lives exactly as long as its domain's route.

// A persistent map: a copy shares all but the changed path, so a change
// costs O(log n) however many domains there are, and readers never wait.
use imbl::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use model::subscription::{Action, Dominion};
use rustls::sign::CertifiedKey;

use crate::conn::{Entered, SiteLoad};
use crate::verify::Verified;

/// How many backends one domain may have.
pub const MAX_BACKENDS: usize = 16;
/// How many domains one site may have routed at once by default (names under a wildcard count one each).
pub const MAX_ROUTES_PER_SITE: usize = 1024;
/// Requests one site may have in flight at once by default.
pub const MAX_REQUESTS_PER_SITE: usize = 256;

/// One backend of a domain: a socket in the owning site's directory.
#[derive(Debug, PartialEq, Eq)]
pub struct Backend {
    /// The site's socket directory on the host.
    pub dir: PathBuf,
    /// The socket's name in it.
    pub name: String,
    /// The uid that must own the socket.
    pub uid: Option<u32>,
    /// A `tcp:PORT` backend: that port of the site's own address.
    pub tcp: Option<std::net::SocketAddr>,
    /// `dir/name`, for logs and the connection pool.
    pub path: PathBuf,
    /// Its share of the load.
    pub weight: u32,
    /// Its subscription asked plain HTTP to be sent to HTTPS.
    pub redirect: bool,
    /// When it expires unless refreshed.
    pub expires: Instant,
}

/// A domain's routes.
#[derive(Debug, Default)]
pub struct Entry {
    /// The site that owns the domain.
    pub site: String,
    /// Its backends.
    pub backends: Vec<Arc<Backend>>,
    /// Backend indexes, each `weight / gcd` times, spread out: the request
    /// counter picks the first backend to try in O(1).
    ring: Vec<u8>,
    /// The certificate the site gave for the domain.
    pub cert: Option<Arc<CertifiedKey>>,
    /// When it expires, seconds since the epoch.
    pub cert_not_after: Option<i64>,
    /// The site's requests in flight (shared by all its domains).
    pub load: Arc<SiteLoad>,
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Entry {
    fn new(site: &str, load: Arc<SiteLoad>) -> Entry {
        Entry {
            site: site.to_owned(),
            load,
            ..Default::default()
        }
    }

    /// A copy to change (the ring is rebuilt after the change).
    fn to_edit(&self) -> Entry {
        Entry {
            site: self.site.clone(),
            backends: self.backends.clone(),
            ring: Vec::new(),
            cert: self.cert.clone(),
            cert_not_after: self.cert_not_after,
            load: self.load.clone(),
        }
    }

    /// Rebuilds the ring after the backends changed: each backend `weight / g`
    /// times (g the gcd of all weights), interleaved so that equal weights
    /// alternate.
    fn rebuild(&mut self) {
        let g = self.backends.iter().fold(0, |g, b| gcd(g, b.weight)).max(1);
        let shares: Vec<u32> = self.backends.iter().map(|b| b.weight / g).collect();
        let top = shares.iter().copied().max().unwrap_or(0);
        self.ring.clear();
        for round in 0..top {
            for (i, s) in shares.iter().enumerate() {
                if round < *s {
                    self.ring.push(i as u8);
                }
            }
        }
    }
}

/// The backends to try for one request: the one the ring picks, then the
/// others in their order. No allocation per request.
#[derive(Debug, Clone)]
pub struct Pick {
    entry: Arc<Entry>,
    first: usize,
    cap: usize,
    /// When it was looked up: a backend live then is tried (one clock read a request).
    now: Instant,
}

impl Pick {
    /// A place in the site's load, unless it is at its cap.
    pub fn enter(&self) -> Option<Entered> {
        self.entry.load.enter(self.cap)
    }

    /// The site.
    pub fn site(&self) -> &str {
        &self.entry.site
    }

    /// The site's access log: its sink, and a backend that says where its
    /// socket directory is and who owns it.
    pub fn log(&self) -> (Arc<SiteLoad>, Arc<Backend>) {
        (
            self.entry.load.clone(),
            self.entry.backends[self.first].clone(),
        )
    }

    /// The site's requests refused so far for being past its cap.
    pub fn refused(&self) -> u64 {
        self.entry.load.refused()
    }

    /// The site's load (its counters).
    pub fn load(&self) -> &Arc<SiteLoad> {
        &self.entry.load
    }

    /// Whether plain HTTP is to be sent to HTTPS (a live backend's
    /// subscription asked it).
    pub fn redirects(&self) -> bool {
        self.entry
            .backends
            .iter()
            .any(|b| b.redirect && b.expires > self.now)
    }

    /// The backends in the order to try them, skipping expired ones.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Backend>> + '_ {
        let n = self.entry.backends.len();
        let now = self.now;
        (0..n)
            .map(move |i| &self.entry.backends[(self.first + i) % n])
            .filter(move |b| b.expires > now)
    }
}

/// What a request for a host leads to.
#[derive(Debug)]
pub enum Route {
    /// No site serves this host.
    Unknown,
    /// The site is suspended.
    Suspended,
    /// The domain is being moved.
    Moving,
    /// Another host of the cluster serves the domain, and cannot be
    /// reached from here now (its lease expired, or its router does not
    /// answer).
    Elsewhere,
    /// Backends to try, in order.
    Backends(Pick),
}

/// Why a subscription was not applied although it was well signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CapError {
    /// The domain has as many backends as allowed.
    #[error("{domain} already has {MAX_BACKENDS} backends (the most a domain may have)")]
    Backends {
        /// The domain.
        domain: String,
    },
    /// The site has as many routed domains as allowed.
    #[error("site {site} already routes {max} domains (the most a site may)")]
    Routes {
        /// The site.
        site: String,
        /// The cap.
        max: usize,
    },
}

#[derive(Debug, Clone, Default)]
struct Table {
    by_domain: HashMap<String, Arc<Entry>>,
    per_site: HashMap<String, usize>,
}

impl Table {
    fn remove(&mut self, domain: &str) {
        if let Some(e) = self.by_domain.remove(domain) {
            if let Some(n) = self.per_site.get_mut(&e.site) {
                *n -= 1;
                if *n == 0 {
                    self.per_site.remove(&e.site);
                }
            }
        }
    }

    fn insert(&mut self, domain: String, e: Entry) {
        *self.per_site.entry(e.site.clone()).or_default() += 1;
        self.by_domain.insert(domain, Arc::new(e));
    }
}

/// The router's routes and what the dominator said.
#[derive(Debug)]
pub struct Routes {
    table: ArcSwap<Table>,
    dominion: ArcSwap<Dominion>,
    next: AtomicUsize,
    write: Mutex<()>,
    ttl: Duration,
    max_routes: usize,
    /// Requests in flight per site, shared by the site's entries.
    loads: Mutex<std::collections::HashMap<String, Arc<SiteLoad>>>,
    max_requests: usize,
    /// The other hosts of a cluster and the domains they serve.
    peers: ArcSwap<model::cluster::Peers>,
}

/// Whether `name` is in `set`, or the wildcard one level up is.
fn in_set(set: &std::collections::BTreeSet<String>, name: &str) -> bool {
    if set.is_empty() {
        return false;
    }
    set.contains(name)
        || name
            .split_once('.')
            .is_some_and(|(_, parent)| set.contains(&format!("*.{parent}")))
}

/// Where a domain served on another host of the cluster goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elsewhere {
    /// The host that serves it.
    pub host: String,
    /// Its router's peer listener; `None` while its lease has expired.
    pub router: Option<std::net::SocketAddr>,
}

impl Routes {
    /// An empty table; subscriptions live `ttl` unless refreshed; a site
    /// routes at most `max_routes` domains.
    pub fn new(dominion: Dominion, ttl: Duration, max_routes: usize) -> Routes {
        Routes {
            table: ArcSwap::from_pointee(Table::default()),
            dominion: ArcSwap::from_pointee(dominion),
            next: AtomicUsize::new(0),
            write: Mutex::new(()),
            ttl,
            max_routes,
            loads: Mutex::default(),
            max_requests: MAX_REQUESTS_PER_SITE,
            peers: ArcSwap::from_pointee(model::cluster::Peers::default()),
        }
    }

    /// What the emperor said of the other hosts of its cluster.
    pub fn set_peers(&self, peers: model::cluster::Peers) {
        self.peers.store(Arc::new(peers));
    }

    /// Whether another host serves any domain (then the first bytes of a
    /// connection are read to learn where it goes).
    pub fn has_peers(&self) -> bool {
        !self.peers.load().domains.is_empty()
    }

    /// The host that serves `name` elsewhere in the cluster (the exact
    /// name, else the wildcard one level up), if another does.
    pub fn elsewhere(&self, name: &str) -> Option<Elsewhere> {
        let peers = self.peers.load();
        if peers.domains.is_empty() || in_set(&peers.moving, name) {
            return None;
        }
        let host = peers.domains.get(name).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            peers.domains.get(&format!("*.{parent}"))
        })?;
        Some(Elsewhere {
            host: host.clone(),
            router: peers.routers.get(host).copied(),
        })
    }

    /// What a request for `host` gets when no route of this host serves
    /// it: 503 for a site just moved here (until it subscribes) or served
    /// by a host out of reach, else 404.
    fn unrouted(&self, host: &str) -> Route {
        let peers = self.peers.load();
        if in_set(&peers.arriving, host) {
            return Route::Moving;
        }
        drop(peers);
        if self.elsewhere(host).is_some() {
            return Route::Elsewhere;
        }
        Route::Unknown
    }

    /// Requests a site may have in flight when the dominion does not say.
    pub fn with_max_requests(mut self, n: usize) -> Routes {
        self.max_requests = n.max(1);
        self
    }

    /// The load of a site (one for all its domains).
    fn load_of(&self, site: &str) -> Arc<SiteLoad> {
        let mut loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        loads.entry(site.to_owned()).or_default().clone()
    }

    /// Each site's load (its counters), by site.
    pub fn loads(&self) -> Vec<(String, Arc<SiteLoad>)> {
        let loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        loads.iter().map(|(s, l)| (s.clone(), l.clone())).collect()
    }

    /// The site's domains as they are routed now, by domain.
    pub fn report(&self, site: &str) -> Vec<model::subscription::RouteReport> {
        use model::subscription::{BackendReport, RouteReport};
        let now = Instant::now();
        let t = self.table.load();
        let mut out: Vec<RouteReport> = t
            .by_domain
            .iter()
            .filter(|(_, e)| e.site == site)
            .filter_map(|(domain, e)| {
                let backends: Vec<BackendReport> = e
                    .backends
                    .iter()
                    .filter(|b| b.expires > now)
                    .map(|b| BackendReport {
                        backend: match b.tcp {
                            Some(a) => format!("tcp:{}", a.port()),
                            None => b.name.clone(),
                        },
                        weight: b.weight,
                        expires_in: b.expires.saturating_duration_since(now).as_secs(),
                    })
                    .collect();
                (!backends.is_empty()).then(|| RouteReport {
                    domain: domain.clone(),
                    backends,
                    certificate_expires: e.cert.as_ref().and(e.cert_not_after),
                    certificate: e.cert.as_ref().map(|_| "site".to_owned()),
                    issuer: e
                        .cert
                        .as_ref()
                        .and_then(|c| crate::verify::issuer(c.cert.first()?)),
                    acme_error: None,
                })
            })
            .collect();
        out.sort_by(|a, b| a.domain.cmp(&b.domain));
        out
    }

    /// The routed domains that carry no certificate of their site's own
    /// (wildcards left out: ACME's HTTP-01 cannot prove them), each with its
    /// site, visited without copying the table.
    pub fn each_uncertified(&self, mut f: impl FnMut(&str, &str)) {
        let now = Instant::now();
        let t = self.table.load();
        for (d, e) in &t.by_domain {
            if !d.starts_with("*.")
                && e.cert.is_none()
                && e.backends.iter().any(|b| b.expires > now)
            {
                f(d, &e.site);
            }
        }
    }

    /// Whether `name` itself is routed now (a live backend).
    pub fn is_routed(&self, name: &str) -> bool {
        let now = Instant::now();
        self.table
            .load()
            .by_domain
            .get(name)
            .is_some_and(|e| e.backends.iter().any(|b| b.expires > now))
    }

    /// Each site's first certificate to expire among its live routes
    /// (`notAfter`, seconds since the epoch).
    pub fn cert_expiries(&self) -> std::collections::BTreeMap<String, i64> {
        let now = Instant::now();
        let mut out = std::collections::BTreeMap::new();
        for e in self.table.load().by_domain.values() {
            let Some(t) = e.cert_not_after else { continue };
            if e.backends.iter().any(|b| b.expires > now) {
                let first = out.entry(e.site.clone()).or_insert(t);
                *first = (*first).min(t);
            }
        }
        out
    }

    fn change(&self, f: impl FnOnce(&mut Table)) {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut t = (**self.table.load()).clone();
        f(&mut t);
        self.table.store(Arc::new(t));
    }

    /// What the dominator said last.
    pub fn dominion(&self) -> Arc<Dominion> {
        self.dominion.load_full()
    }

    /// Replaces the dominion, dropping routes (and their certificates) of
    /// domains their site no longer owns.
    pub fn set_dominion(&self, d: Dominion) {
        self.change(|t| {
            let gone: Vec<String> = t
                .by_domain
                .iter()
                .filter(|(domain, e)| {
                    !d.sites
                        .get(&e.site)
                        .is_some_and(|s| crate::verify::owns(&s.domains, domain))
                })
                .map(|(domain, _)| domain.clone())
                .collect();
            for domain in gone {
                t.remove(&domain);
            }
            self.loads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|site, _| d.sites.contains_key(site));
            self.dominion.store(Arc::new(d));
        });
    }

    /// How long a subscription lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Applies a verified subscription, within the caps.
    pub fn apply(&self, v: &Verified) -> Result<(), CapError> {
        let mut result = Ok(());
        let uid = self
            .dominion
            .load()
            .sites
            .get(&v.sub.site)
            .and_then(|s| s.uid);
        self.change(|t| {
            let domain = &v.sub.domain;
            match v.sub.action {
                Action::Subscribe => {
                    let mut e = match t.by_domain.get(domain) {
                        // The dominator moved the domain: the old site's backends and certificate go.
                        Some(old) if old.site == v.sub.site => old.to_edit(),
                        _ => Entry::new(&v.sub.site, self.load_of(&v.sub.site)),
                    };
                    let fresh = t
                        .by_domain
                        .get(domain)
                        .is_none_or(|old| old.site != v.sub.site);
                    if fresh && t.per_site.get(&v.sub.site).copied().unwrap_or(0) >= self.max_routes
                    {
                        result = Err(CapError::Routes {
                            site: v.sub.site.clone(),
                            max: self.max_routes,
                        });
                        return;
                    }
                    e.backends.retain(|b| b.name != v.sub.backend);
                    if e.backends.len() >= MAX_BACKENDS {
                        result = Err(CapError::Backends {
                            domain: domain.clone(),
                        });
                        return;
                    }
                    e.backends.push(Arc::new(Backend {
                        dir: v.dir.clone(),
                        path: v.dir.join(&v.sub.backend),
                        name: v.sub.backend.clone(),
                        uid,
                        tcp: v.tcp,
                        weight: v.sub.weight,
                        redirect: v.sub.redirect,
                        expires: Instant::now() + self.ttl,
                    }));
                    if let Some(c) = &v.cert {
                        e.cert = Some(c.clone());
                        e.cert_not_after = v.cert_not_after;
                    }
                    e.rebuild();
                    t.remove(domain);
                    t.insert(domain.clone(), e);
                }
                Action::Unsubscribe => {
                    let Some(old) = t.by_domain.get(domain).cloned() else {
                        return;
                    };
                    if old.site != v.sub.site {
                        return;
                    }
                    let mut e = old.to_edit();
                    e.backends.retain(|b| b.name != v.sub.backend);
                    t.remove(domain);
                    if !e.backends.is_empty() {
                        e.rebuild();
                        t.insert(domain.clone(), e);
                    }
                }
            }
        });
        result
    }

    /// Removes expired backends, and domains (with their certificates) left with none.
    pub fn sweep(&self) {
        let now = Instant::now();
        let stale = |e: &Entry| e.backends.iter().any(|b| b.expires <= now);
        if !self.table.load().by_domain.values().any(|e| stale(e)) {
            return;
        }
        self.change(|t| {
            let touched: Vec<(String, Arc<Entry>)> = t
                .by_domain
                .iter()
                .filter(|(_, e)| stale(e))
                .map(|(d, e)| (d.clone(), e.clone()))
                .collect();
            for (domain, old) in touched {
                t.remove(&domain);
                let mut e = old.to_edit();
                e.backends.retain(|b| b.expires > now);
                if !e.backends.is_empty() {
                    e.rebuild();
                    t.insert(domain, e);
                }
            }
        });
    }

    /// The entry for `host`: the exact name, else the wildcard one level up.
    fn entry(&self, host: &str) -> Option<Arc<Entry>> {
        let t = self.table.load();
        if let Some(e) = t.by_domain.get(host) {
            return Some(e.clone());
        }
        let (_, parent) = host.split_once('.')?;
        // A stack buffer would do; names are short and this is one small string.
        t.by_domain.get(&format!("*.{parent}")).cloned()
    }

    /// The certificate for an SNI name, if a live route for it carries one.
    pub fn cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let now = Instant::now();
        let live = |e: &Arc<Entry>| {
            e.backends
                .iter()
                .any(|b| b.expires > now)
                .then(|| e.cert.clone())
                .flatten()
        };
        let t = self.table.load();
        if let Some(c) = t.by_domain.get(name).and_then(live) {
            return Some(c);
        }
        let (_, parent) = name.split_once('.')?;
        t.by_domain.get(&format!("*.{parent}")).and_then(live)
    }

    /// How many domains are routed (for tests and logs).
    pub fn len(&self) -> usize {
        self.table.load().by_domain.len()
    }

    /// Whether no domain is routed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The backends for `host`, by weight, starting at the next in turn.
    pub fn lookup(&self, host: &str) -> Route {
        self.lookup_at(host, Instant::now())
    }

    /// [`Routes::lookup`] with the clock already read.
    pub fn lookup_at(&self, host: &str, now: Instant) -> Route {
        // A site on its way between hosts: frozen, or stopping where it was.
        if in_set(&self.peers.load().moving, host) {
            return Route::Moving;
        }
        let Some(e) = self.entry(host) else {
            return self.unrouted(host);
        };
        let dominion = self.dominion.load();
        let Some(site) = dominion.sites.get(&e.site) else {
            return Route::Suspended;
        };
        if site.suspended {
            return Route::Suspended;
        }
        if site
            .moving
            .iter()
            .any(|m| m == host || crate::verify::owns(std::slice::from_ref(m), host))
        {
            return Route::Moving;
        }
        if e.ring.is_empty() {
            return self.unrouted(host);
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % e.ring.len();
        let first = e.ring[turn] as usize;
        let cap = site
            .requests
            .map_or(self.max_requests, |r| r as usize)
            .max(1);
        let pick = Pick {
            entry: e,
            first,
            cap,
            now,
        };
        if pick.iter().next().is_none() {
            return self.unrouted(host);
        }
        Route::Backends(pick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(weights: &[u32]) -> Entry {
        let mut e = Entry::new("s", Arc::default());
        for (i, w) in weights.iter().enumerate() {
            e.backends.push(Arc::new(Backend {
                dir: PathBuf::from("/d"),
                path: PathBuf::from(format!("/d/b{i}")),
                name: format!("b{i}"),
                uid: Some(1),
                tcp: None,
                redirect: false,
                weight: *w,
                expires: Instant::now() + Duration::from_secs(60),
            }));
        }
        e.rebuild();
        e
    }

    #[test]
    fn another_hosts_domains_go_there_or_answer_503_and_a_move_answers_503() {
        let routes = Routes::new(Dominion::default(), Duration::from_secs(60), 10);
        let addr: std::net::SocketAddr = "192.0.2.2:8444".parse().unwrap();
        let mut peers = model::cluster::Peers {
            routers: [("h2".to_owned(), addr)].into(),
            domains: [
                ("shop.example".to_owned(), "h2".to_owned()),
                ("*.blog.example".to_owned(), "h3".to_owned()),
            ]
            .into(),
            ..Default::default()
        };
        routes.set_peers(peers.clone());
        assert!(routes.has_peers());
        let there = routes.elsewhere("shop.example").unwrap();
        assert_eq!((there.host.as_str(), there.router), ("h2", Some(addr)));
        // h3's lease expired: no router to pass to, 503 here.
        let down = routes.elsewhere("a.blog.example").unwrap();
        assert_eq!((down.host.as_str(), down.router), ("h3", None));
        assert!(matches!(routes.lookup("a.blog.example"), Route::Elsewhere));
        assert!(matches!(routes.lookup("other.example"), Route::Unknown));
        // Moving: 503 here, not passed on; arriving: 503 until routed.
        peers.moving.insert("shop.example".to_owned());
        peers.arriving.insert("new.example".to_owned());
        routes.set_peers(peers);
        assert!(routes.elsewhere("shop.example").is_none());
        assert!(matches!(routes.lookup("shop.example"), Route::Moving));
        assert!(matches!(routes.lookup("new.example"), Route::Moving));
        routes.set_peers(model::cluster::Peers::default());
        assert!(!routes.has_peers());
        assert!(matches!(routes.lookup("shop.example"), Route::Unknown));
    }

    #[test]
    fn the_ring_shares_by_weight_and_stays_small() {
        let e = entry(&[1, 3]);
        let count = |i: u8| e.ring.iter().filter(|x| **x == i).count();
        assert_eq!((count(0), count(1)), (1, 3));
        // Equal weights of any size reduce to one slot each.
        assert_eq!(entry(&[100, 100, 100]).ring.len(), 3);
        assert_eq!(entry(&[100; MAX_BACKENDS]).ring.len(), MAX_BACKENDS);
        // The worst case stays bounded: 16 backends of co-prime weights.
        let mut w: Vec<u32> = vec![100; MAX_BACKENDS - 1];
        w.push(99);
        assert!(entry(&w).ring.len() <= MAX_BACKENDS * 100);
    }

    #[test]
    fn a_pick_tries_every_live_backend_once_starting_at_its_turn() {
        let e = Arc::new(entry(&[1, 1, 1]));
        let p = Pick {
            now: Instant::now(),
            entry: e,
            first: 2,
            cap: 1,
        };
        let names: Vec<&str> = p.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["b2", "b0", "b1"]);
    }
}
