//! The router's metrics (`--metrics-listen ADDR`, `/metrics`): answers by
//! site and status class, requests refused at a site's cap, requests in
//! flight, requests for no known site, client connections, how long
//! answers took to start, and when each site's first certificate expires. Counted with plain atomics on the request path
//! (a site's counters live in its `SiteLoad`); rendered at each scrape with
//! prometheus-client. Labels: the site (bounded by the dominion) and the
//! status class; never a domain, a path or a client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// Upper bounds of the latency buckets, seconds.
pub const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Why a call of the subscription API was refused (a label of bounded values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubRefusal {
    /// Not `POST /subscribe`.
    BadCall = 0,
    /// The caller's uid was over its rate.
    Rate,
    /// The body was over the limit.
    TooLarge,
    /// The body did not come in time.
    Timeout,
    /// Not signed by the site, stale, replayed, or not the site's to ask.
    Unverified,
    /// Verified, but past a cap (routes, backends) or not applicable.
    NotApplied,
}

/// The label value of each [`SubRefusal`], in order.
const SUB_REFUSALS: [&str; 6] = [
    "bad_call",
    "rate",
    "too_large",
    "timeout",
    "unverified",
    "not_applied",
];

/// The router's own counters (a site's are in its load).
#[derive(Debug, Default)]
pub struct Stats {
    unknown: AtomicU64,
    /// Clients passed to another host's router, and links that failed.
    passed: [AtomicU64; 2],
    subscriptions: AtomicU64,
    sub_refused: [AtomicU64; SUB_REFUSALS.len()],
    /// Per bucket (not cumulative); the last is past every bound.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Stats {
    /// A request for a host no site serves.
    pub fn unknown_host(&self) {
        self.unknown.fetch_add(1, Ordering::Relaxed);
    }

    /// A client passed to another host's router (or not: its link failed);
    /// how many so far, this one included.
    pub fn passed(&self, ok: bool) -> u64 {
        self.passed[usize::from(!ok)].fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A subscription (or withdrawal) applied.
    pub fn subscribed(&self) {
        self.subscriptions.fetch_add(1, Ordering::Relaxed);
    }

    /// A call of the subscription API refused.
    pub fn sub_refused(&self, why: SubRefusal) {
        self.sub_refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// An answer's head went out `took` after its request's did.
    pub fn observe(&self, took: Duration) {
        let s = took.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

/// The latency histogram as it stands, for the encoder.
#[derive(Debug)]
struct Latency {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Answered {
    site: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Site {
    site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

/// The text `/metrics` answers (OpenMetrics).
pub fn render(state: &crate::State, connections: u64) -> String {
    let mut reg = Registry::with_prefix("imperium_router");
    let answered = Family::<Answered, Counter>::default();
    reg.register(
        "answers",
        "Answers sent for a site's domains, by status class",
        answered.clone(),
    );
    let refused = Family::<Site, Counter>::default();
    reg.register(
        "refused",
        "Requests answered 508: the site was at its cap of requests in flight",
        refused.clone(),
    );
    let in_flight = Family::<Site, Gauge>::default();
    reg.register(
        "in_flight",
        "Requests in flight to the site now",
        in_flight.clone(),
    );
    for (site, load) in state.routes.loads() {
        for (class, n) in load.answers() {
            if n > 0 {
                answered
                    .get_or_create(&Answered {
                        site: site.clone(),
                        class,
                    })
                    .inc_by(n);
            }
        }
        let s = Site { site };
        refused.get_or_create(&s).inc_by(load.refused());
        in_flight.get_or_create(&s).set(load.in_flight() as i64);
    }
    let expiry = Family::<Site, Gauge>::default();
    reg.register_with_unit(
        "certificate_expiry",
        "When the site's first certificate to expire does (notAfter, seconds since the epoch)",
        Unit::Seconds,
        expiry.clone(),
    );
    let mut expiries = state.routes.cert_expiries();
    if let Some(acme) = &state.acme {
        state.routes.each_uncertified(|domain, site| {
            if let Some(i) = acme.issued(domain) {
                let first = expiries.entry(site.to_owned()).or_insert(i.not_after);
                *first = (*first).min(i.not_after);
            }
        });
    }
    for (site, t) in expiries {
        expiry.get_or_create(&Site { site }).set(t);
    }
    let unknown = Counter::<u64>::default();
    unknown.inc_by(state.stats.unknown.load(Ordering::Relaxed));
    reg.register(
        "unknown_host",
        "Requests for a host no site serves (404)",
        unknown,
    );
    let passed = Family::<Outcome, Counter>::default();
    reg.register(
        "peer_connections",
        "Client connections for another host's domain, passed to its router or not (its link failed)",
        passed.clone(),
    );
    for (i, outcome) in ["passed", "failed"].into_iter().enumerate() {
        passed
            .get_or_create(&Outcome { outcome })
            .inc_by(state.stats.passed[i].load(Ordering::Relaxed));
    }
    let subs = Counter::<u64>::default();
    subs.inc_by(state.stats.subscriptions.load(Ordering::Relaxed));
    reg.register(
        "subscriptions",
        "Subscriptions and withdrawals applied",
        subs,
    );
    let sub_refused = Family::<Reason, Counter>::default();
    reg.register(
        "subscriptions_refused",
        "Calls of the subscription API refused, by reason",
        sub_refused.clone(),
    );
    for (i, reason) in SUB_REFUSALS.iter().enumerate() {
        sub_refused
            .get_or_create(&Reason { reason })
            .inc_by(state.stats.sub_refused[i].load(Ordering::Relaxed));
    }
    let conns = Gauge::<i64>::default();
    conns.set(connections as i64);
    reg.register("connections", "Client connections open now", conns);
    let mut buckets = Vec::with_capacity(BUCKETS.len() + 1);
    let mut count = 0;
    for (i, b) in state.stats.buckets.iter().enumerate() {
        let n = b.load(Ordering::Relaxed);
        count += n;
        buckets.push((BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), n));
    }
    reg.register_with_unit(
        "answer_start",
        "From a request's head to its answer's head (the router's work and the backend's)",
        Unit::Seconds,
        Latency {
            sum: state.stats.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            count,
            buckets,
        },
    );
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_its_bucket() {
        let s = Stats::default();
        s.observe(Duration::from_micros(300));
        s.observe(Duration::from_millis(7));
        s.observe(Duration::from_secs(9));
        let n: Vec<u64> = s
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        assert_eq!(n[0], 1, "{n:?}");
        assert_eq!(n[4], 1, "{n:?}"); // <= 10 ms
        assert_eq!(n[BUCKETS.len()], 1, "{n:?}"); // past 2.5 s
        assert_eq!(s.sum_us.load(Ordering::Relaxed), 300 + 7000 + 9_000_000);
    }
}
