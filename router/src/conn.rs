//! What bounds a client: caps on connections (in all and per client), an idle
//! timeout for connections with no request in flight, a timeout between the
//! frames of a request body, and accept loops that back off when descriptors
//! run out instead of spinning.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Open connections, in all and per key (a client address, a peer uid).
#[derive(Debug)]
pub struct Limits<K> {
    total: AtomicUsize,
    max_total: usize,
    per_key: Mutex<HashMap<K, usize>>,
    max_per_key: usize,
}

/// One admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct Permit<K: Eq + Hash + Clone> {
    limits: Arc<Limits<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Limits<K> {
    /// Connections admitted now.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// At most `max_total` connections, `max_per_key` of them from one key.
    pub fn new(max_total: usize, max_per_key: usize) -> Arc<Limits<K>> {
        Arc::new(Limits {
            total: AtomicUsize::new(0),
            max_total,
            per_key: Mutex::new(HashMap::new()),
            max_per_key,
        })
    }

    /// A place for one more connection from `key`, if there is one.
    pub fn admit(self: &Arc<Self>, key: K) -> Option<Permit<K>> {
        let mut per = self.per_key.lock().unwrap_or_else(|p| p.into_inner());
        let n = per.entry(key.clone()).or_default();
        if *n >= self.max_per_key || self.total.load(Ordering::Relaxed) >= self.max_total {
            if *n == 0 {
                per.remove(&key);
            }
            return None;
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(Permit {
            limits: self.clone(),
            key,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl<K: Eq + Hash + Clone> Drop for Permit<K> {
    fn drop(&mut self) {
        let mut per = self
            .limits
            .per_key
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.key);
            }
        }
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// When a connection last moved a byte, and how many requests it has in flight.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

/// What one site has in flight through the router, and how many requests
/// were refused for being past its cap.
#[derive(Debug, Default)]
pub struct SiteLoad {
    in_flight: AtomicUsize,
    refused: AtomicU64,
    /// Answers by status class (1xx to 5xx).
    answered: [AtomicU64; 5],
    /// Its access log, handed to its vassal.
    pub log: crate::access::Sink,
}

impl SiteLoad {
    /// A place for one more request, unless `cap` are in flight already
    /// (then the refusal is counted).
    pub fn enter(self: &Arc<Self>, cap: usize) -> Option<Entered> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= cap {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Entered(self.clone()))
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// An answer with this status went out.
    pub fn answered(&self, status: u16) {
        if let Some(c) = self.answered.get(usize::from(status / 100).wrapping_sub(1)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Answers so far, by status class.
    pub fn answers(&self) -> [(&'static str, u64); 5] {
        let n = |i: usize| self.answered[i].load(Ordering::Relaxed);
        [
            ("1xx", n(0)),
            ("2xx", n(1)),
            ("3xx", n(2)),
            ("4xx", n(3)),
            ("5xx", n(4)),
        ]
    }
}

/// A request counted in its site's load until dropped.
#[derive(Debug)]
pub struct Entered(Arc<SiteLoad>);

impl Drop for Entered {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request in flight; dropped when its answer has gone out (or was abandoned).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Activity {
    /// A connection that starts now.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        })
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Marks a request in flight until the returned value is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// When the connection becomes idle for `idle`, if nothing moves before.
    fn idle_deadline(&self, idle: Duration) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }

    fn is_idle(&self, idle: Duration) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && Instant::now() >= self.idle_deadline(idle)
    }
}

/// A client's stream that notes every byte it moves, and holds the
/// connection's place (even after a websocket upgrade took the stream over).
#[derive(Debug)]
pub struct Tracked<T, P> {
    inner: T,
    activity: Arc<Activity>,
    _permit: P,
}

impl<T, P> Tracked<T, P> {
    /// Wraps `inner`.
    pub fn new(inner: T, activity: Arc<Activity>, permit: P) -> Tracked<T, P> {
        Tracked {
            inner,
            activity,
            _permit: permit,
        }
    }
}

impl<T: AsyncRead + Unpin, P: Unpin> AsyncRead for Tracked<T, P> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin, P: Unpin> AsyncWrite for Tracked<T, P> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Drives a connection until it ends, or shuts it down gracefully once it has
/// been idle (no request in flight, no byte moved) for `idle`; a connection
/// that does not finish within `grace` after that is dropped.
pub async fn serve_until_idle<C: std::future::Future + Unpin>(
    mut conn: C,
    activity: &Activity,
    idle: Duration,
    grace: Duration,
    shutdown: impl FnOnce(Pin<&mut C>),
) {
    let mut check = activity.idle_deadline(idle);
    loop {
        tokio::select! {
            _ = &mut conn => return,
            _ = tokio::time::sleep_until(check) => {
                if activity.is_idle(idle) {
                    break;
                }
                // Busy (a request in flight) or active since: look again when
                // it could first be idle, and never sooner than a second.
                check = activity
                    .idle_deadline(idle)
                    .max(Instant::now() + Duration::from_secs(1).min(idle));
            }
        }
    }
    shutdown(Pin::new(&mut conn));
    let _ = tokio::time::timeout(grace, conn).await;
}

/// A request body whose frames must each come within a time. The timer is
/// made only once the body makes the reader wait (a request with no body, or
/// one already read, never arms one).
#[derive(Debug)]
pub struct TimeoutBody<B> {
    inner: B,
    every: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> TimeoutBody<B> {
    /// Wraps `inner`: each frame within `every` of the one before.
    pub fn new(inner: B, every: Duration) -> TimeoutBody<B> {
        TimeoutBody {
            inner,
            every,
            sleep: None,
        }
    }
}

/// The client sent no part of its body in time.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no part of its request body for {0:?}")]
pub struct BodyTimeout(pub Duration);

impl<B> Body for TimeoutBody<B>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                // The next frame has its own time from now.
                this.sleep = None;
                Poll::Ready(r.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let every = this.every;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(every))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Waits before the next `accept` after an error (`EMFILE`, `ENFILE`,
/// `ENOBUFS`): doubling from 10 ms up to 1 s, reset by the next success.
#[derive(Debug, Default)]
pub struct Backoff {
    wait: Option<Duration>,
}

impl Backoff {
    /// After a successful accept.
    pub fn reset(&mut self) {
        self.wait = None;
    }

    /// After a failed accept: logs it (once per streak) and sleeps.
    pub async fn failed(&mut self, what: &str, err: &io::Error) {
        let wait = match self.wait {
            None => {
                tracing::warn!(listener = what, error = %err, "accept failed; backing off");
                Duration::from_millis(10)
            }
            Some(w) => (w * 2).min(Duration::from_secs(1)),
        };
        self.wait = Some(wait);
        tokio::time::sleep(wait).await;
    }
}

/// Requests allowed per key (a peer uid): a token bucket of `burst` tokens
/// refilled at `rate` a second. Keys idle long enough to have a full bucket are forgotten.
#[derive(Debug)]
pub struct Rate<K> {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Eq + Hash + Clone> Rate<K> {
    /// `rate` a second, up to `burst` at once.
    pub fn new(rate: f64, burst: f64) -> Rate<K> {
        Rate {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` has a request left now, without spending it.
    pub fn has_left(&self, key: &K) -> bool {
        let now = Instant::now();
        let b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        match b.get(key) {
            None => true,
            Some((tokens, last)) => {
                tokens + now.duration_since(*last).as_secs_f64() * self.rate >= 1.0
            }
        }
    }

    /// Whether `key` may make one more request now.
    pub fn allow(&self, key: &K) -> bool {
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() > 4096 {
            let full = Duration::from_secs_f64(self.burst / self.rate);
            b.retain(|_, (_, t)| now.duration_since(*t) < full);
        }
        let (tokens, last) = b.entry(key.clone()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_per_key_and_in_all_and_give_places_back() {
        let l = Limits::new(3, 2);
        let a1 = l.admit("a").unwrap();
        let _a2 = l.admit("a").unwrap();
        assert!(l.admit("a").is_none(), "per key");
        let _b1 = l.admit("b").unwrap();
        assert!(l.admit("c").is_none(), "in all");
        drop(a1);
        let c = l.admit("c");
        assert!(c.is_some());
        assert_eq!(l.open(), 3);
        drop(c);
        assert_eq!(l.open(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_refills_over_time() {
        let r = Rate::new(10.0, 2.0);
        assert!(r.allow(&1) && r.allow(&1));
        assert!(!r.allow(&1), "burst spent");
        assert!(!r.has_left(&1) && r.has_left(&3));
        assert!(r.allow(&2), "another key has its own bucket");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(r.allow(&1));
        assert!(!r.allow(&1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_shut_down_and_a_busy_one_is_not() {
        let act = Activity::new();
        let idle = Duration::from_secs(5);
        // A request in flight for longer than the idle time: not idle.
        let req = act.begin();
        let never = std::future::pending::<()>();
        let ended = tokio::time::timeout(
            Duration::from_secs(20),
            serve_until_idle(Box::pin(never), &act, idle, Duration::ZERO, |_| {}),
        )
        .await;
        assert!(
            ended.is_err(),
            "a connection with a request in flight stays"
        );
        drop(req);
        let t = Instant::now();
        let mut shut = false;
        serve_until_idle(
            Box::pin(std::future::pending::<()>()),
            &act,
            idle,
            Duration::from_secs(1),
            |_| shut = true,
        )
        .await;
        assert!(shut);
        assert!(t.elapsed() >= idle && t.elapsed() <= idle + Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_sending_fails() {
        use http_body_util::BodyExt;
        let (mut tx, body) =
            http_body_util::channel::Channel::<bytes::Bytes, std::io::Error>::new(1);
        let mut b = TimeoutBody::new(body, Duration::from_secs(2));
        tx.send_data(bytes::Bytes::from_static(b"x")).await.unwrap();
        assert!(b.frame().await.unwrap().is_ok());
        let e = b.frame().await.unwrap().unwrap_err();
        assert!(e.to_string().contains("request body"), "{e}");
        drop(tx);
    }
}
