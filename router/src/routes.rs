//! The route table: domain -> the site that owns it and its backends. Readers
//! take a snapshot without a lock; a change builds a new table and swaps it in.

// A persistent map: a copy shares all but the changed path, so a change
// costs O(log n) however many domains there are, and readers never wait.
use imbl::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use model::subscription::{Action, Dominion};

use crate::verify::Verified;

/// One backend of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Its unix socket on the host.
    pub path: PathBuf,
    /// Its share of the load.
    pub weight: u32,
    /// When it expires unless refreshed.
    pub expires: Instant,
}

/// A domain's routes.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// The site that owns the domain.
    pub site: String,
    /// Its backends.
    pub backends: Vec<Backend>,
}

/// What a request for a host leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// No site serves this host.
    Unknown,
    /// The site is suspended.
    Suspended,
    /// The domain is being moved.
    Moving,
    /// Backends to try, in order.
    Backends(Vec<PathBuf>),
}

/// The router's routes and what the dominator said.
#[derive(Debug)]
pub struct Routes {
    table: ArcSwap<HashMap<String, Entry>>,
    dominion: ArcSwap<Dominion>,
    next: AtomicUsize,
    write: Mutex<()>,
    ttl: Duration,
}

impl Routes {
    /// An empty table; subscriptions live `ttl` unless refreshed.
    pub fn new(dominion: Dominion, ttl: Duration) -> Routes {
        Routes {
            table: ArcSwap::from_pointee(HashMap::new()),
            dominion: ArcSwap::from_pointee(dominion),
            next: AtomicUsize::new(0),
            write: Mutex::new(()),
            ttl,
        }
    }

    /// What the dominator said last.
    pub fn dominion(&self) -> Arc<Dominion> {
        self.dominion.load_full()
    }

    /// Replaces the dominion, dropping routes of domains their site no longer owns.
    pub fn set_dominion(&self, d: Dominion) {
        let _w = self.write.lock();
        let mut t = (**self.table.load()).clone();
        t.retain(|domain, e| {
            d.sites
                .get(&e.site)
                .is_some_and(|s| crate::verify::owns(&s.domains, domain))
        });
        self.dominion.store(Arc::new(d));
        self.table.store(Arc::new(t));
    }

    /// How long a subscription lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Applies a verified subscription.
    pub fn apply(&self, v: &Verified) {
        let _w = self.write.lock();
        let mut t = (**self.table.load()).clone();
        let now = Instant::now();
        match v.sub.action {
            Action::Subscribe => {
                let e = t.entry(v.sub.domain.clone()).or_default();
                if e.site != v.sub.site {
                    // The dominator moved the domain: the old site's backends go.
                    *e = Entry {
                        site: v.sub.site.clone(),
                        backends: Vec::new(),
                    };
                }
                e.backends.retain(|b| b.path != v.backend);
                e.backends.push(Backend {
                    path: v.backend.clone(),
                    weight: v.sub.weight,
                    expires: now + self.ttl,
                });
            }
            Action::Unsubscribe => {
                if let Some(e) = t.get_mut(&v.sub.domain) {
                    e.backends.retain(|b| b.path != v.backend);
                    if e.backends.is_empty() {
                        t.remove(&v.sub.domain);
                    }
                }
            }
        }
        self.table.store(Arc::new(t));
    }

    /// Removes expired backends.
    pub fn sweep(&self) {
        let now = Instant::now();
        let t = self.table.load();
        if !t
            .values()
            .any(|e| e.backends.iter().any(|b| b.expires <= now))
        {
            return;
        }
        let _w = self.write.lock();
        let mut t = (**self.table.load()).clone();
        for (_, e) in t.iter_mut() {
            e.backends.retain(|b| b.expires > now);
        }
        t.retain(|_, e| !e.backends.is_empty());
        self.table.store(Arc::new(t));
    }

    /// The backends for `host`, by weight, starting at the next in turn.
    pub fn lookup(&self, host: &str) -> Route {
        let t = self.table.load();
        let wildcard = host
            .split_once('.')
            .map(|(_, parent)| format!("*.{parent}"));
        let Some(e) = t.get(host).or_else(|| wildcard.and_then(|w| t.get(&w))) else {
            return Route::Unknown;
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
        let now = Instant::now();
        let live: Vec<&Backend> = e.backends.iter().filter(|b| b.expires > now).collect();
        if live.is_empty() {
            return Route::Unknown;
        }
        // Smooth enough weighted round robin: each backend appears `weight`
        // times in the ring; the next request starts one further.
        let ring: Vec<&Backend> = live
            .iter()
            .flat_map(|b| std::iter::repeat_n(*b, b.weight as usize))
            .collect();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % ring.len();
        let mut order: Vec<PathBuf> = Vec::new();
        for b in ring[start..].iter().chain(&ring[..start]) {
            if !order.contains(&b.path) {
                order.push(b.path.clone());
            }
        }
        Route::Backends(order)
    }
}
