//! The proxy: the Host of a request picks the domain's backends (unix sockets
//! in the owning site's socket directory); the first that accepts the
//! connection gets the request. Websocket upgrades are passed through.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONNECTION, HOST, TE, TRAILER, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::conn::InFlight;
use crate::routes::{Backend, Route};
use crate::State;

fn upgrading_request(req: &Request<Incoming>) -> bool {
    req.headers().get(UPGRADE).is_some()
        && req
            .headers()
            .get(CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
}

/// The client of a connection, as every request on it tells the backend.
#[derive(Debug)]
pub struct Client {
    /// Its address.
    pub addr: SocketAddr,
    /// Its address as `X-Forwarded-For` gives it (made once per connection).
    pub ip: HeaderValue,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub scheme: &'static str,
}

impl Client {
    /// The client at `addr`, over `scheme`.
    pub fn new(addr: SocketAddr, scheme: &'static str) -> Client {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Client { addr, ip, scheme }
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Why the router would not connect to a backend's socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The dominion gave no uid for the site (written by an older emperor).
    #[error("the site's uid is unknown")]
    NoUid,
    /// Opening it (a symlink anywhere is refused here).
    #[error("opening {0}")]
    Open(#[source] std::io::Error),
    /// Not a socket (a symlink, a file).
    #[error("not a socket")]
    NotSocket,
    /// A socket of another owner.
    #[error("owned by uid {found}, not the site's uid {uid}")]
    Owner {
        /// Its owner.
        found: u32,
        /// The site's uid.
        uid: u32,
    },
    /// Connecting to it.
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    /// The HTTP/1.1 handshake.
    #[error("handshake: {0}")]
    Handshake(#[source] hyper::Error),
}

/// Opens the backend's socket as a tenant controls its directory: the one
/// name in the site's socket directory, no symlink, a socket the site's uid
/// owns; checked on the descriptor, at every connect.
pub fn open_socket(b: &Backend) -> Result<std::os::fd::OwnedFd, ConnectError> {
    open_socket_at(&b.dir, &b.name, b.uid)
}

/// [`open_socket`] for the socket `name` of a site's directory `dir`, owned by `uid`.
pub fn open_socket_at(
    dir: &std::path::Path,
    name: &str,
    uid: Option<u32>,
) -> Result<std::os::fd::OwnedFd, ConnectError> {
    use std::os::fd::AsFd;
    let uid = uid.ok_or(ConnectError::NoUid)?;
    let dir = sys::fs::open_dir(dir).map_err(ConnectError::Open)?;
    let fd = sys::fs::open_beneath(dir.as_fd(), std::path::Path::new(name), libc::O_PATH)
        .map_err(ConnectError::Open)?;
    let st = sys::fs::stat(fd.as_fd()).map_err(ConnectError::Open)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(ConnectError::NotSocket);
    }
    if st.st_uid != uid {
        return Err(ConnectError::Owner {
            found: st.st_uid,
            uid,
        });
    }
    Ok(fd)
}

/// A new connection to a backend: its TCP port, or its socket opened as
/// [`open_socket`] does.
pub async fn connect_stream(b: &Backend) -> Result<Stream, ConnectError> {
    use std::os::fd::AsFd;
    if let Some(addr) = b.tcp {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(ConnectError::Connect)?;
        let _ = stream.set_nodelay(true);
        return Ok(Stream::Tcp(stream));
    }
    let fd = open_socket(b)?;
    // Through the descriptor: the kernel connects to the inode just checked.
    let stream = UnixStream::connect(sys::fs::fd_path(fd.as_fd()))
        .await
        .map_err(ConnectError::Connect)?;
    Ok(Stream::Unix(stream))
}

/// A connection to a backend: a unix socket, or a TCP port of the site's address.
#[derive(Debug)]
pub enum Stream {
    /// A socket in the site's socket directory.
    Unix(UnixStream),
    /// A port of the site's own address.
    Tcp(tokio::net::TcpStream),
}

impl Stream {
    /// A read that never waits (`WouldBlock` without a system call when the
    /// event loop has not seen the socket readable).
    pub fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.try_read(buf),
            Stream::Tcp(s) => s.try_read(buf),
        }
    }
}

macro_rules! either_stream {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Unix($s) => {
                let $s = std::pin::Pin::new($s);
                $e
            }
            Stream::Tcp($s) => {
                let $s = std::pin::Pin::new($s);
                $e
            }
        }
    };
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        either_stream!(self, s => s.poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        either_stream!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        either_stream!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        either_stream!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        either_stream!(self, s => s.poll_shutdown(cx))
    }
}

/// A new HTTP/1.1 connection to a backend's socket.
async fn connect(b: &Backend) -> Result<Sender, ConnectError> {
    handshake(connect_stream(b).await?).await
}

/// HTTP/1.1 over a new backend connection, driven by a task of its own.
async fn handshake<T>(io: T) -> Result<Sender, ConnectError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// A connection to a backend for one request.
struct Conn {
    backend: Arc<Backend>,
    sender: Sender,
    /// Taken from the pool (the backend may have closed it meanwhile).
    reused: bool,
}

/// In turn from `order`: an idle connection (when `pooled`), else a new one;
/// a backend that refuses is skipped for this request only.
async fn pick<'a>(
    state: &State,
    order: impl Iterator<Item = &'a Arc<Backend>>,
    pooled: bool,
) -> Option<Conn> {
    for backend in order {
        while let Some(mut sender) = pooled.then(|| state.pool().take(&backend.path)).flatten() {
            // Put back as soon as its last answer was read: ready in a moment.
            if sender.ready().await.is_ok() {
                return Some(Conn {
                    backend: backend.clone(),
                    sender,
                    reused: true,
                });
            }
        }
        match connect(backend).await {
            Ok(sender) => {
                return Some(Conn {
                    backend: backend.clone(),
                    sender,
                    reused: false,
                })
            }
            Err(e) => {
                tracing::debug!(backend = %backend.path.display(), error = %e, "backend refused; trying the next")
            }
        }
    }
    None
}

/// What goes to a backend: a small body read whole (so the request can be
/// sent again), or the client's body streamed, each part within the body timeout.
pub type ReqBody = Either<Full<Bytes>, crate::conn::TimeoutBody<Incoming>>;

/// A connection to a backend, ready for a request.
pub type Sender = hyper::client::conn::http1::SendRequest<ReqBody>;

/// Idle connections to backends, by socket path, and how many requests wait
/// for the first answer on a new connection.
#[derive(Debug)]
pub struct Pool<C = Sender> {
    slots: std::sync::Mutex<std::collections::HashMap<Vec<u8>, Slot<C>, fnv::FnvBuildHasher>>,
}

impl<C> Default for Pool<C> {
    fn default() -> Self {
        Pool {
            slots: Default::default(),
        }
    }
}

/// A backend connection that may be kept between requests.
pub trait Reusable {
    /// Known to be closed already (it is then not handed out again).
    fn is_closed(&self) -> bool;
}

impl Reusable for Sender {
    fn is_closed(&self) -> bool {
        Sender::is_closed(self)
    }
}

/// A backend's key in the pool: its path's bytes (`Path`'s own hash walks
/// its components).
fn key(path: &std::path::Path) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes()
}

// FNV: the pool is looked up twice a request by a short path the router's
// own routes hold (not a client's input), so SipHash's cost buys nothing.

#[derive(Debug)]
struct Slot<C> {
    idle: Vec<C>,
    /// Requests sent on new connections that have no answer yet: a number
    /// for each, and since when.
    waiting: Vec<(u64, std::time::Instant)>,
    next: u64,
    /// Until when connections are not kept: the backend closed a kept one
    /// before it could be used (it closes after every answer, as uWSGI's
    /// `--http-socket` does without saying so).
    fresh_only_until: Option<std::time::Instant>,
}

impl<C> Default for Slot<C> {
    fn default() -> Self {
        Slot {
            idle: Vec::new(),
            waiting: Vec::new(),
            next: 0,
            fresh_only_until: None,
        }
    }
}

impl<C> Slot<C> {
    /// Whether a request has waited on a new connection longer than a
    /// backend that accepts it would take.
    fn stalled(&self) -> bool {
        self.waiting.iter().any(|(_, t)| t.elapsed() >= STALLED)
    }

    fn fresh_only(&self) -> bool {
        self.fresh_only_until
            .is_some_and(|t| std::time::Instant::now() < t)
    }
}

/// How long a backend that closed a kept connection gets new ones only.
const FRESH_ONLY: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a request on a new connection waits before the router takes it
/// that the backend does not accept new connections while it holds kept ones.
const STALLED: std::time::Duration = std::time::Duration::from_millis(50);

/// Idle connections kept per backend.
const POOL_PER_BACKEND: usize = 256;

impl<C: Reusable> Pool<C> {
    /// An idle connection to the backend at `path`, if one is kept.
    pub fn take(&self, path: &std::path::Path) -> Option<C> {
        let mut slots = self.slots.lock().ok()?;
        let list = &mut slots.get_mut(key(path))?.idle;
        while let Some(s) = list.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    /// Keeps a connection whose answer is done, unless a request has waited
    /// long on a new connection to the same backend: an application server
    /// that gives a worker to each connection (uWSGI's `--http11-socket`)
    /// then has all its workers on kept connections and the new ones are
    /// never accepted, so the connection is closed to free its worker.
    pub fn put(&self, path: &std::path::Path, sender: C) {
        if let Ok(mut slots) = self.slots.lock() {
            let slot = match slots.get_mut(key(path)) {
                Some(s) => s,
                None => slots.entry(key(path).to_vec()).or_default(),
            };
            if !slot.stalled() && !slot.fresh_only() && slot.idle.len() < POOL_PER_BACKEND {
                slot.idle.push(sender);
            }
        }
    }

    /// Drops the idle connections of a backend that closed one of them, and
    /// keeps none for a while.
    pub fn forget(&self, path: &std::path::Path) {
        if let Ok(mut slots) = self.slots.lock() {
            if let Some(slot) = slots.get_mut(key(path)) {
                slot.idle.clear();
                slot.fresh_only_until = Some(std::time::Instant::now() + FRESH_ONLY);
            }
        }
    }

    /// Notes a request waiting on a new connection until the guard drops.
    pub fn waiting<'a>(&'a self, path: &'a std::path::Path) -> Waiting<'a, C> {
        let mut id = 0;
        if let Ok(mut slots) = self.slots.lock() {
            let slot = match slots.get_mut(key(path)) {
                Some(s) => s,
                None => slots.entry(key(path).to_vec()).or_default(),
            };
            slot.next += 1;
            id = slot.next;
            slot.waiting.push((id, std::time::Instant::now()));
        }
        Waiting {
            pool: self,
            path,
            id,
        }
    }
}

/// A request waiting for the first answer on a new connection.
pub struct Waiting<'a, C> {
    pool: &'a Pool<C>,
    path: &'a std::path::Path,
    id: u64,
}

impl<C> Drop for Waiting<'_, C> {
    fn drop(&mut self) {
        if let Ok(mut slots) = self.pool.slots.lock() {
            if let Some(slot) = slots.get_mut(key(self.path)) {
                slot.waiting.retain(|(id, _)| *id != self.id);
            }
        }
    }
}

/// A connection to a backend that goes back to the pool when dropped (with
/// the body of its answer, read to the end or abandoned).
struct Kept {
    state: Arc<State>,
    backend: Arc<Backend>,
    sender: Option<Sender>,
}

impl Drop for Kept {
    fn drop(&mut self) {
        if let Some(s) = self.sender.take().filter(|s| !s.is_closed()) {
            self.state.pool().put(&self.backend.path, s);
        }
    }
}

/// The largest request body read whole before it goes to a backend (so that
/// the request can be sent again); larger ones are streamed.
pub const REPLAY_BODY: u64 = 16 * 1024;

/// A request read whole: it can be sent as many times as needed.
struct Replay {
    method: hyper::Method,
    uri: hyper::Uri,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Replay {
    fn request(&self) -> Request<ReqBody> {
        let mut r = Request::new(Either::Left(Full::new(self.body.clone())));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// Reads a request with no body or a small one whole; hands back a larger one
/// to stream.
async fn prepare(
    req: Request<Incoming>,
    every: std::time::Duration,
) -> Result<Result<Replay, Request<ReqBody>>, Response<Body>> {
    use hyper::body::Body as _;
    let small = req.body().is_end_stream()
        || req
            .body()
            .size_hint()
            .exact()
            .is_some_and(|n| n <= REPLAY_BODY);
    let (parts, body) = req.into_parts();
    let body = crate::conn::TimeoutBody::new(body, every);
    if !small {
        return Ok(Err(Request::from_parts(parts, Either::Right(body))));
    }
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if caused_by_body_timeout(e.as_ref()) => {
            return Err(page(
                StatusCode::REQUEST_TIMEOUT,
                "The request body did not come in time.",
            ))
        }
        Err(_) => return Err(page(StatusCode::BAD_REQUEST, "The request body broke off.")),
    };
    Ok(Ok(Replay {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
    }))
}

/// Methods that may be sent twice (RFC 9110, 9.2.2).
pub(crate) fn idempotent(m: &hyper::Method) -> bool {
    use hyper::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
        Method::TRACE,
    ]
    .contains(m)
}

/// The headers that concern one connection only (RFC 9110, 7.6.1), in
/// lower case: both HTTP/1.1 paths drop them.
pub(crate) const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Removes the headers that concern one connection only: the hop-by-hop ones
/// and those the `Connection` header names (RFC 9110, 7.6.1).
fn strip_hop_by_hop(h: &mut hyper::HeaderMap) {
    // [`HOP_BY_HOP`], as header names.
    static HOP: [HeaderName; 6] = [
        CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        TE,
        TRAILER,
        UPGRADE,
    ];
    // One pass over the names: which of them are there (most messages have
    // none, or only `Connection: keep-alive`). A match on the name's text
    // compares lengths first: most names are told apart without a byte read.
    let mut present = [false; 6];
    for k in h.keys() {
        let i = match k.as_str() {
            "connection" => 0,
            "keep-alive" => 1,
            "proxy-connection" => 2,
            "te" => 3,
            "trailer" => 4,
            "upgrade" => 5,
            _ => continue,
        };
        present[i] = true;
    }
    // `Connection: keep-alive` or `close` names nothing more to remove.
    let plain = |v: &HeaderValue| {
        let v = v.as_bytes();
        v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
    };
    if present[0] && !h.get_all(CONNECTION).iter().all(plain) {
        let named: Vec<HeaderName> = h
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            // `keep-alive`, `close`, `upgrade`: nothing more to remove.
            .filter(|t| {
                !["keep-alive", "close", "upgrade"]
                    .iter()
                    .any(|k| t.eq_ignore_ascii_case(k))
            })
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .filter(|n| !HOP.contains(n))
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for (n, _) in HOP.iter().zip(present).filter(|(_, p)| *p) {
        h.remove(n);
    }
}

/// Tries of one request: the first and two more on new connections.
pub(crate) const MAX_ATTEMPTS: usize = 3;

/// How long a backend has to start its answer.
pub const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The body of every answer.
pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A body of these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The page of an answer the router makes itself.
pub(crate) fn page_html(status: StatusCode, text: &str) -> String {
    format!("<!doctype html><title>{status}</title><h1>{status}</h1><p>{text}</p>\n")
}

fn page(status: StatusCode, text: &'static str) -> Response<Body> {
    let body = page_html(status, text);
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.extensions_mut().insert(RouterMade(text));
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// A page that says when to ask again (`Retry-After`, seconds).
fn page_retry(status: StatusCode, text: &'static str, after: &'static str) -> Response<Body> {
    let mut r = page(status, text);
    r.headers_mut()
        .insert("retry-after", HeaderValue::from_static(after));
    r
}

/// The host a request is for, lower case, without a port. Two `Host`
/// headers are no host at all (the request is refused).
fn host_of(req: &Request<Incoming>) -> Option<String> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return None;
    }
    let raw = first
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())?;
    Some(normal_host(raw))
}

/// A `Host` as routes are keyed: lower case, without a port or a final dot.
pub(crate) fn normal_host(raw: &str) -> String {
    // A port is stripped; an IPv6 literal (colons inside) is left alone.
    let host = match raw.rsplit_once(':') {
        Some((h, port))
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') =>
        {
            h
        }
        _ => raw,
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn caused_by_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<crate::conn::BodyTimeout>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Answers one request; a site's request goes to its access log once its
/// answer is done.
pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    client: Arc<Client>,
    in_flight: InFlight,
) -> Result<Response<Body>, std::convert::Infallible> {
    // The CA checking an HTTP-01 challenge (any host: the token names it).
    if let (Some(acme), "http") = (&state.acme, client.scheme) {
        if let Some(token) = req
            .uri()
            .path()
            .strip_prefix("/.well-known/acme-challenge/")
        {
            return Ok(match acme.challenge(token) {
                Some(key_auth) => {
                    let mut r = Response::new(full(key_auth));
                    r.headers_mut()
                        .insert("content-type", HeaderValue::from_static("text/plain"));
                    r
                }
                None => page(StatusCode::NOT_FOUND, "No such challenge."),
            });
        }
    }
    let Some(host) = host_of(&req) else {
        return Ok(page(StatusCode::BAD_REQUEST, "No Host, or more than one."));
    };
    let t0 = std::time::Instant::now();
    let route = state.routes.lookup_at(&host, t0);
    if let (Route::Backends(pick), "http") = (&route, client.scheme) {
        if pick.redirects()
            && crate::tls::own_cert(&state.routes, state.acme.as_deref(), &host).is_some()
        {
            return Ok(to_https(&req, &host, state.https_port));
        }
    }
    let load = match &route {
        Route::Backends(pick) => Some(pick.load().clone()),
        Route::Unknown => {
            state.stats.unknown_host();
            None
        }
        _ => None,
    };
    let mut log = match &route {
        Route::Backends(pick) => {
            let (load, via) = pick.log();
            load.log.wanted().then(|| {
                let note = crate::access::Request::new(&req, client.addr.ip(), &host);
                Logged::new(note, load, via)
            })
        }
        _ => None,
    };
    let (resp, hold) = match forward(&state, req, host, route, &client).await {
        Ok((resp, hold)) => (resp.map(Either::Left), Some(hold)),
        Err(page) => (page.map(Either::Right), None),
    };
    state.stats.observe(t0.elapsed());
    if let Some(load) = load {
        load.answered(resp.status().as_u16());
    }
    if let Some(l) = &mut log {
        l.status = resp.status().as_u16();
        l.error = resp.extensions().get::<RouterMade>().map(|m| m.0);
    }
    // The request stays in flight (the client connection is not idle), the
    // site's place and the backend's connection are held, until the
    // answer's body is done: one wrapping for all of them.
    Ok(resp.map(move |b| {
        let mut log = log;
        b.map_frame(move |f| {
            let _ = (&in_flight, &hold);
            if let (Some(l), Some(d)) = (&mut log, f.data_ref()) {
                l.bytes += d.len() as u64;
            }
            f
        })
        .boxed()
    }))
}

/// A 308 to the same target over HTTPS (the method and body kept).
fn to_https(req: &Request<Incoming>, host: &str, port: u16) -> Response<Body> {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = match port {
        443 => format!("https://{host}{target}"),
        p => format!("https://{host}:{p}{target}"),
    };
    let mut r = page(
        StatusCode::PERMANENT_REDIRECT,
        "This site is served over HTTPS.",
    );
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            r.headers_mut().insert(hyper::header::LOCATION, v);
        }
        Err(_) => *r.status_mut() = StatusCode::BAD_REQUEST,
    }
    r
}

/// An answer the router made itself, and why (for the access log).
#[derive(Debug, Clone, Copy)]
struct RouterMade(&'static str);

/// A request on its way to the site's access log: sent when dropped (its
/// answer's body done, or abandoned).
pub(crate) struct Logged {
    note: crate::access::Request,
    load: Arc<crate::conn::SiteLoad>,
    via: Arc<Backend>,
    pub(crate) status: u16,
    pub(crate) error: Option<&'static str>,
    pub(crate) bytes: u64,
    /// Not sent after all: the request went to another path, which logs it.
    pub(crate) passed_on: bool,
}

impl Logged {
    /// A request noted for `load`'s log, through a backend of its site.
    pub(crate) fn new(
        note: crate::access::Request,
        load: Arc<crate::conn::SiteLoad>,
        via: Arc<Backend>,
    ) -> Logged {
        Logged {
            note,
            load,
            via,
            status: 0,
            error: None,
            bytes: 0,
            passed_on: false,
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if self.passed_on {
            return;
        }
        let line = self.note.finish(self.status, self.bytes, self.error);
        self.load.log.send(&self.via, &line);
    }
}

/// Forwards a request to the route's backends.
async fn forward(
    state: &Arc<State>,
    mut req: Request<Incoming>,
    host: String,
    route: Route,
    client: &Client,
) -> Result<(Response<Incoming>, Hold), Response<Body>> {
    let mut backends = match route {
        Route::Unknown => {
            return Err(page(
                StatusCode::NOT_FOUND,
                "No site serves this domain here.",
            ))
        }
        Route::Suspended => {
            return Err(page_retry(
                StatusCode::SERVICE_UNAVAILABLE,
                "This site is suspended.",
                "120",
            ));
        }
        Route::Moving => {
            return Err(page_retry(
                StatusCode::SERVICE_UNAVAILABLE,
                "This site is moving; it will be back in a moment.",
                "30",
            ));
        }
        Route::Elsewhere => {
            return Err(page_retry(
                StatusCode::SERVICE_UNAVAILABLE,
                "The host of this site cannot be reached now; try again in a moment.",
                "30",
            ));
        }
        Route::Backends(b) => b,
    };
    // The site's place: one slow site cannot hold every connection of the router.
    let Some(entered) = backends.enter() else {
        let refused = backends.refused();
        if refused.is_power_of_two() {
            tracing::warn!(
                site = backends.site(),
                refused,
                "site at its cap of requests in flight: 508"
            );
        }
        return Err(page_retry(
            StatusCode::LOOP_DETECTED,
            "This site has reached its limit of requests in progress; try again in a moment.",
            "5",
        ));
    };

    // Headers for the backend: who asked, over what; the Host is kept.
    let h = req.headers_mut();
    let xff = match h.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", client.addr.ip())).ok(),
        None => Some(client.ip.clone()),
    };
    if let Some(v) = xff {
        h.insert(X_FORWARDED_FOR, v);
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(client.scheme));
    if !h.contains_key(HOST) {
        if let Ok(v) = HeaderValue::from_str(&host) {
            h.insert(HOST, v);
        }
    }
    // The backend speaks HTTP/1.1: origin-form target (made only when the
    // client sent another form: absolute, or HTTP/2's).
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        if let Ok(uri) = path.parse() {
            *req.uri_mut() = uri;
        }
    }
    *req.version_mut() = hyper::Version::HTTP_11;
    // Hop-by-hop headers concern the client's connection, not ours to the backend.
    let upgrading = upgrading_request(&req);
    if !upgrading {
        strip_hop_by_hop(req.headers_mut());
    }
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    let method = req.method().clone();
    let (replay, mut req) = match prepare(req, state.body_timeout).await {
        Ok(Ok(replay)) => {
            let req = replay.request();
            (Some(replay), req)
        }
        Ok(Err(streamed)) => (None, streamed),
        Err(page) => return Err(page),
    };
    let Some(mut conn) = pick(state, backends.iter(), !upgrading).await else {
        return Err(page(
            StatusCode::BAD_GATEWAY,
            "The site's application is not answering.",
        ));
    };
    // A request the backend never got, or that failed on a kept connection
    // before any answer (the backend closed it meanwhile, as uWSGI's
    // `--http-socket` does after each answer), or an idempotent one that
    // failed before any answer, goes again on a new connection: to the same
    // backend first, then to the next that accepts.
    let mut attempts = 1;
    let mut resp = loop {
        let waiting = (!conn.reused).then(|| state.pool().waiting(&conn.backend.path));
        let sent = tokio::time::timeout(RESPONSE_TIMEOUT, conn.sender.try_send_request(req)).await;
        drop(waiting);
        let mut e = match sent {
            Ok(Ok(r)) => break r,
            Ok(Err(e)) => e,
            Err(_) => {
                return Err(page(
                    StatusCode::GATEWAY_TIMEOUT,
                    "The site's application did not answer in time.",
                ))
            }
        };
        if caused_by_body_timeout(e.error()) {
            return Err(page(
                StatusCode::REQUEST_TIMEOUT,
                "The request body did not come in time.",
            ));
        }
        if conn.reused {
            state.pool().forget(&conn.backend.path);
        }
        let again = match (e.take_message(), &replay) {
            (Some(unsent), _) => Some(unsent),
            (None, Some(r)) if conn.reused || idempotent(&method) => Some(r.request()),
            _ => None,
        };
        tracing::debug!(backend = %conn.backend.path.display(), error = %e.error(), reused = conn.reused, again = again.is_some(), "request failed");
        let Some(again) = again.filter(|_| attempts < MAX_ATTEMPTS) else {
            return Err(page(
                StatusCode::BAD_GATEWAY,
                "The site's application failed to answer.",
            ));
        };
        req = again;
        attempts += 1;
        // The routes as they are now: a backend may have been handed over meanwhile.
        if let Route::Backends(now) = state.routes.lookup(&host) {
            backends = now;
        }
        let failed = &conn.backend.path;
        let same = backends.iter().filter(|b| b.path == *failed);
        let others = backends.iter().filter(|b| b.path != *failed);
        conn = match pick(state, same.chain(others), false).await {
            Some(c) => c,
            None => {
                return Err(page(
                    StatusCode::BAD_GATEWAY,
                    "The site's application is not answering.",
                ))
            }
        };
    };
    // Back to the pool once the answer's body has gone through.
    let kept = (!upgrading).then(|| Kept {
        state: state.clone(),
        backend: conn.backend,
        sender: Some(conn.sender),
    });
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(c), Ok(b)) = (client_upgrade.await, backend_upgrade.await) {
                    let _ =
                        tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(b))
                            .await;
                }
            });
        }
    }
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The backend's connection is its own business (gunicorn says
        // `Connection: close` on every answer): the client's lives by its own rules.
        strip_hop_by_hop(resp.headers_mut());
    }
    // A websocket is not a request in progress: it leaves the site's count.
    let entered = (resp.status() != StatusCode::SWITCHING_PROTOCOLS).then_some(entered);
    Ok((
        resp,
        Hold {
            _entered: entered,
            _kept: kept,
        },
    ))
}

/// What an answer's body holds until it is done: the site's place, and the
/// backend's connection (back to the pool when dropped).
struct Hold {
    _entered: Option<crate::conn::Entered>,
    _kept: Option<Kept>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = hyper::HeaderMap::new();
        for (k, v) in [
            ("connection", "close, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("content-type", "text/plain"),
            ("set-cookie", "a=b"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type", "set-cookie"]);
    }
}
