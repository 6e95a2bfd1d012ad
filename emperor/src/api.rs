//! The admin's HTTP API on `<run-dir>/api.sock` (root's, 0600), and
//! `/metrics` there and, when asked (`--metrics-listen ADDR`), on a TCP
//! address for a Prometheus server (metrics only: no API without a
//! socket's permissions). The manager does the work (control requests);
//! this only maps HTTP onto them. Bounded like the control socket: a few
//! connections at once, a few seconds each, 64 KiB a body.
//!
//! `/v1/vassals` (GET: every vassal's status), `/v1/vassals/NAME` (GET: its
//! status and file; PUT: its file, TOML, validated and kept only if the
//! emperor accepts it, else 422 and nothing changed; DELETE: the file
//! removed, the vassal stopped, its home archived), and
//! `/v1/vassals/NAME/{restart,suspend,resume}` (POST). The directory stays
//! the one source of truth: a file written here and one edited by hand are
//! the same thing.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Bytes;
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::control;
use crate::manager::Event;

/// Connections served at once (per listener).
const CONNECTIONS: usize = 32;
/// Connections the containers' shared socket serves at once, and of them
/// one caller's (one vassal's user) and one group's (the group's own and
/// all its sites'): a tenant holding event streams open, or a reseller
/// with many sites doing so, cannot take the places of everyone else.
const SHARED: usize = 4096;
const PER_CALLER: usize = 8;
const PER_GROUP: usize = 64;
/// How long one connection lives at most (an event stream's; any other
/// connection carries one request, with 5 s for its head and its body).
const LIFETIME: Duration = Duration::from_secs(3600);
/// How long a connection to the metrics address lives at most (a scraper
/// that stops reading gives its place back).
const METRICS_LIFETIME: Duration = Duration::from_secs(10);
/// How long a request's body may take.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// An event stream says it is alive this often.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// An answer's body.
type Body = BoxBody<Bytes, std::convert::Infallible>;
use model::metrics::{OPENMETRICS, PROMETHEUS};

/// Something that accepts connections.
pub trait Accept: Send + 'static {
    /// The stream of one connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// How many connections it serves at once.
    const PLACES: usize = CONNECTIONS;
    /// The next connection.
    fn accept(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<Accepted<Self::Io>>> + Send;
}

/// A connection accepted.
pub struct Accepted<Io> {
    /// Its stream.
    pub io: Io,
    /// Its own scope, when the listener's is its caller's ([`Serves::Caller`]).
    pub scope: Option<Serves>,
    /// The places it takes until it closes (see [`Callers`]).
    pub held: Vec<tokio::sync::OwnedSemaphorePermit>,
}

impl<Io> Accepted<Io> {
    fn plain(io: Io) -> Self {
        Accepted {
            io,
            scope: None,
            held: Vec::new(),
        }
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Accepted<Self::Io>> {
        tokio::net::UnixListener::accept(self)
            .await
            .map(|(s, _)| Accepted::plain(s))
    }
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Accepted<Self::Io>> {
        tokio::net::TcpListener::accept(self)
            .await
            .map(|(s, _)| Accepted::plain(s))
    }
}

/// Who may call on the containers' shared socket: each vassal runs as a
/// user of its own (uids are never reused), so the kernel's word on a
/// connection's peer (`SO_PEERCRED`) names the vassal whose scope it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The vassal.
    pub name: String,
    /// Whether it is a group (its scope: the group and its sites).
    pub group: bool,
    /// The group whose places it shares (a site's group; a group itself).
    pub reseller: Option<String>,
}

/// The callers by uid, kept by the manager as vassals start and go.
pub type Scopes = Arc<std::sync::RwLock<std::collections::HashMap<u32, Caller>>>;

/// The containers' shared socket (`api.sock`, bound read-only into every
/// container at `/run/imperium/api`): anyone may connect (0666), a
/// connection is served in the scope of its peer's vassal and closed
/// unanswered when its uid is no running vassal's (root's included: the
/// admin has a socket of its own). One socket for every container keeps
/// the emperor's descriptors to one per site (its init's pidfd).
#[derive(Debug)]
pub struct Callers {
    /// The socket.
    pub listener: tokio::net::UnixListener,
    /// Who is who.
    pub scopes: Scopes,
    /// The places taken, by caller (`uid:N`) and by group (`group:G`).
    places: std::sync::Mutex<std::collections::HashMap<String, Arc<Semaphore>>>,
}

impl Callers {
    /// Serves `listener` to the callers of `scopes`.
    pub fn new(listener: tokio::net::UnixListener, scopes: Scopes) -> Self {
        Callers {
            listener,
            scopes,
            places: Default::default(),
        }
    }

    /// A place of `key`'s (of `n`), if one is free.
    fn place(&self, key: String, n: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let mut places = self.places.lock().unwrap_or_else(|p| p.into_inner());
        if places.len() > 2 * SHARED {
            // Nobody holds a place of these (a permit holds its semaphore).
            places.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let sem = places
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(n)))
            .clone();
        sem.try_acquire_owned().ok()
    }
}

impl Accept for Callers {
    type Io = tokio::net::UnixStream;
    const PLACES: usize = SHARED;
    async fn accept(&self) -> std::io::Result<Accepted<Self::Io>> {
        loop {
            let (s, _) = self.listener.accept().await?;
            let Ok(uid) = s.peer_cred().map(|c| c.uid()) else {
                continue;
            };
            let caller = self
                .scopes
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&uid)
                .cloned();
            let Some(caller) = caller else {
                tracing::debug!(uid, "api: a caller that is no vassal, closed");
                continue;
            };
            let mut held = Vec::new();
            let Some(mine) = self.place(format!("uid:{uid}"), PER_CALLER) else {
                tracing::debug!(vassal = %caller.name, "api: the caller's places are full");
                continue;
            };
            held.push(mine);
            if let Some(g) = &caller.reseller {
                let Some(group) = self.place(format!("group:{g}"), PER_GROUP) else {
                    tracing::debug!(group = %g, "api: the group's places are full");
                    continue;
                };
                held.push(group);
            }
            return Ok(Accepted {
                io: s,
                scope: Some(Serves::Scoped {
                    name: caller.name,
                    group: caller.group,
                }),
                held,
            });
        }
    }
}

/// A vassal file's largest body.
const BODY_MAX: usize = 64 * 1024;

/// Requests a container's own socket may make a second, sustained, and in a
/// burst: each is work on the emperor's loop (a status of every vassal), so
/// a tenant cannot make it the whole host's.
const SCOPED_RATE: (f64, f64) = (5.0, 20.0);

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: std::time::Instant,
}

/// Token buckets by scope (one for a container's socket; one per scoped
/// token over TCP, so one reseller's panel cannot slow another's).
#[derive(Debug, Default)]
struct Rates(std::sync::Mutex<std::collections::HashMap<String, Bucket>>);

impl Rates {
    /// Takes a token of `key`'s bucket if there is one.
    fn take(&self, key: &str) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = crate::clock::now();
        let b = m.entry(key.to_owned()).or_insert(Bucket {
            tokens: SCOPED_RATE.1,
            at: now,
        });
        let gained = now.saturating_duration_since(b.at).as_secs_f64() * SCOPED_RATE.0;
        b.tokens = (b.tokens + gained).min(SCOPED_RATE.1);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What a listener serves.
#[derive(Debug, Clone)]
pub enum Serves {
    /// `/metrics` and `/v1/...` (the admin's socket).
    Api,
    /// `/metrics` only (a TCP address).
    Metrics,
    /// `/v1/...` in the scope of each connection's caller (the
    /// containers' shared socket, [`Callers`]).
    Caller,
    /// `/v1/...` for one vassal, from inside its container: a group's
    /// scope is the group and its sites (its files go to its drop
    /// directory), a site's is the site alone (read it, restart it). What is
    /// outside is answered 404, as if it did not exist.
    Scoped {
        /// The vassal whose socket it is.
        name: String,
        /// Whether it is a group.
        group: bool,
    },
    /// `/v1/...` and `/metrics` over TLS for remote panels: each request's
    /// bearer token gives its scope (an admin's token is the admin's socket,
    /// a group's or a site's token is that vassal's own socket); no token,
    /// or one unknown or revoked, is 401.
    Remote(Arc<crate::tokens::Tokens>),
}

impl Serves {
    /// What a request may do here: `None` without a good token.
    fn for_request<B>(&self, req: &Request<B>) -> Option<Serves> {
        let Serves::Remote(tokens) = self else {
            return Some(self.clone());
        };
        let auth = req.headers().get(hyper::header::AUTHORIZATION)?;
        Some(match tokens.scope_of(auth.as_bytes())? {
            crate::tokens::Scope::Admin => Serves::Api,
            crate::tokens::Scope::Group(name) => Serves::Scoped { name, group: true },
            crate::tokens::Scope::Site(name) => Serves::Scoped { name, group: false },
        })
    }
}

/// How long a client has for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The TLS settings of `--api-listen`: the certificate chain and key of
/// these PEM files, HTTP/1.1.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context;
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).with_context(|| format!("{}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("{}: certificates", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{}: no certificate", cert.display());
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("{}", key.display()))?,
    ))
    .with_context(|| format!("{}: key", key.display()))?
    .with_context(|| format!("{}: no private key", key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("the certificate and its key")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Serves `listener` until the emperor ends; over TLS when `tls` is given.
pub async fn serve<A: Accept>(
    listener: A,
    tls: Option<tokio_rustls::TlsAcceptor>,
    serves: Serves,
    tx: mpsc::UnboundedSender<Event>,
    events: tokio::sync::broadcast::Sender<crate::manager::Told>,
) {
    let places = Arc::new(Semaphore::new(A::PLACES));
    let rates = Arc::new(Rates::default());
    let mut wait = Duration::from_millis(10);
    loop {
        let accepted = match listener.accept().await {
            Ok(a) => {
                wait = Duration::from_millis(10);
                a
            }
            Err(e) => {
                tracing::warn!(error = %e, "api: accept failed; backing off");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            continue; // full: closed at once
        };
        let Accepted { io, scope, held } = accepted;
        let serves = match scope {
            Some(s) => s,
            None if matches!(serves, Serves::Caller) => continue,
            None => serves.clone(),
        };
        let (tx, rates, events, tls) = (tx.clone(), rates.clone(), events.clone(), tls.clone());
        tokio::spawn(async move {
            let _places = (place, held);
            match tls {
                None => connection(io, serves, tx, rates, events).await,
                Some(tls) => {
                    if let Ok(Ok(io)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(io)).await
                    {
                        connection(io, serves, tx, rates, events).await
                    }
                }
            }
        });
    }
}

/// One connection: one request, or one event stream.
async fn connection<I>(
    io: I,
    serves: Serves,
    tx: mpsc::UnboundedSender<Event>,
    rates: Arc<Rates>,
    events: tokio::sync::broadcast::Sender<crate::manager::Told>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let serves_metrics = matches!(serves, Serves::Metrics);
    let svc = hyper::service::service_fn(move |req| {
        let (tx, rates, events) = (tx.clone(), rates.clone(), events.clone());
        let serves = serves.for_request(&req);
        async move {
            let Some(serves) = serves else {
                let mut r = plain(StatusCode::UNAUTHORIZED, "a bearer token, please".into());
                r.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    hyper::header::HeaderValue::from_static("Bearer"),
                );
                return Ok(r);
            };
            if let Serves::Scoped { name, group } = &serves {
                let key = format!("{}:{name}", if *group { "group" } else { "site" });
                if !rates.take(&key) {
                    let mut r = plain(StatusCode::TOO_MANY_REQUESTS, "slow down".into());
                    r.headers_mut().insert(
                        hyper::header::RETRY_AFTER,
                        hyper::header::HeaderValue::from_static("1"),
                    );
                    return Ok(r);
                }
            }
            answer(req, serves, tx, events).await
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5))
        .keep_alive(false)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(io), svc);
    // Only an event stream lives long; the metrics address carries none.
    let lifetime = if serves_metrics {
        METRICS_LIFETIME
    } else {
        LIFETIME
    };
    let _ = tokio::time::timeout(lifetime, conn).await;
}

type Answer = Result<Response<Body>, std::convert::Infallible>;

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(text + "\n")).boxed());
    *r.status_mut() = status;
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    json_bytes(status, v.to_string().into_bytes())
}

/// A JSON answer of this text.
fn json_bytes(status: StatusCode, text: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(text)).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Asks the manager; `None` when it is gone.
async fn ask(
    tx: &mpsc::UnboundedSender<Event>,
    req: control::Request,
) -> Option<control::Response> {
    let (rtx, rrx) = oneshot::channel();
    tx.send(Event::Control(req, rtx)).ok()?;
    rrx.await.ok()
}

/// A manager's refusal as an HTTP status: an unknown vassal is 404.
fn refused(why: String, otherwise: StatusCode) -> Response<Body> {
    let status = if why.starts_with("no vassal named") {
        StatusCode::NOT_FOUND
    } else {
        otherwise
    };
    json(status, &serde_json::json!({ "error": why }))
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    serves: Serves,
    tx: mpsc::UnboundedSender<Event>,
    events: tokio::sync::broadcast::Sender<crate::manager::Told>,
) -> Answer {
    let path = req.uri().path().to_owned();
    let scope = match &serves {
        Serves::Metrics if path == "/metrics" => return metrics(req, tx).await,
        Serves::Metrics => return Ok(plain(StatusCode::NOT_FOUND, "only /metrics here".into())),
        Serves::Api if path == "/metrics" => return metrics(req, tx).await,
        Serves::Api => None,
        Serves::Scoped { name, group } => Some((name.as_str(), *group)),
        // Resolved to one of the above (by its token, by its caller) before it comes here.
        Serves::Remote(_) | Serves::Caller => {
            return Ok(plain(StatusCode::UNAUTHORIZED, "no scope".into()))
        }
    };
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    use hyper::Method as M;
    let method = req.method().clone();
    if let (Some(scope), ["v1", "vassals", name, ..]) = (scope, parts.as_slice()) {
        // Outside the scope: as if it did not exist (a PUT may make one).
        if method != M::PUT && !in_scope(&tx, scope, name).await {
            return Ok(refused(
                format!("no vassal named {name:?}"),
                StatusCode::NOT_FOUND,
            ));
        }
    }
    match (method, parts.as_slice()) {
        (M::GET, ["v1", "openapi.json"]) => Ok(json(
            StatusCode::OK,
            &serde_json::to_value(ApiDoc::openapi()).unwrap_or_default(),
        )),
        (M::GET, ["v1", "vassals"]) => list(&tx, scope).await,
        (M::GET, ["v1", "events"]) => Ok(stream(events.subscribe(), scope)),
        (M::GET, ["v1", "vassals", name]) => get(&tx, name).await,
        (M::PUT, ["v1", "vassals", name]) => {
            let name = (*name).to_owned();
            let into = match scope {
                None => None,
                // A reseller writes its sites into its drop directory.
                Some((g, true)) if name != g => {
                    if exists_outside(&tx, g, &name).await {
                        let why = format!("no vassal named {name:?}");
                        return Ok(refused(why, StatusCode::NOT_FOUND));
                    }
                    Some(g.to_owned())
                }
                Some(_) => return Ok(not_here()),
            };
            let is_json = req
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            put(&tx, name, into, is_json, req.into_body()).await
        }
        (M::DELETE, ["v1", "vassals", name]) => match scope {
            None => delete(&tx, name, None).await,
            Some((g, true)) if *name != g => delete(&tx, name, Some(g.to_owned())).await,
            Some(_) => Ok(not_here()),
        },
        (M::GET, ["v1", "vassals", name, "subscriptions"]) => subscriptions(&tx, name).await,
        (M::GET, ["v1", "vassals", name, "notifications"]) => {
            notifications(&tx, name, req.uri().query()).await
        }
        // The admin, or a reseller to its sites (not to itself: its own
        // notifications are the admin's to write).
        (M::POST, ["v1", "vassals", name, "notifications"]) => match scope {
            None => notify(&tx, name, "admin", req.into_body()).await,
            Some((g, true)) if *name != g => notify(&tx, name, "reseller", req.into_body()).await,
            Some(_) => Ok(not_here()),
        },
        // The tenant marks its own read (and the admin any).
        (M::POST, ["v1", "vassals", name, "notifications", "read"]) => match scope {
            None => mark_read(&tx, name, req.into_body()).await,
            Some((own, false)) if *name == own => mark_read(&tx, name, req.into_body()).await,
            Some(_) => Ok(not_here()),
        },
        // Only the admin moves a site between hosts.
        (M::POST, ["v1", "vassals", name, "move"]) => match scope {
            None => move_to(&tx, name, req.into_body()).await,
            Some(_) => Ok(not_here()),
        },
        (M::POST, ["v1", "vassals", name, action]) => match scope {
            // A tenant may restart its site; a reseller may act on its
            // sites and restart its own container (freezing it would
            // freeze the caller).
            Some((own, false)) if *action != "restart" || *name != own => Ok(not_here()),
            Some((own, true)) if *name == own && *action != "restart" => Ok(not_here()),
            _ => act(&tx, name, action).await,
        },
        (_, ["v1", "vassals", ..]) => Ok(plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET, PUT or DELETE /v1/vassals/NAME; POST /v1/vassals/NAME/{restart,suspend,resume,move}; \
             GET or POST /v1/vassals/NAME/notifications; POST /v1/vassals/NAME/notifications/read"
                .into(),
        )),
        _ => Ok(plain(StatusCode::NOT_FOUND, format!("nothing at {path}"))),
    }
}

/// `GET /v1/events`: Server-Sent Events, one `state` event per change of a
/// vassal's state in the scope (`data` is its name, group, state and
/// reason, JSON), a `lagged` event when the reader fell behind (it should
/// read `/v1/vassals` again), a comment every 15 s.
fn stream(
    rx: tokio::sync::broadcast::Receiver<crate::manager::Told>,
    scope: Option<(&str, bool)>,
) -> Response<Body> {
    use tokio::sync::broadcast::error::RecvError;
    let scope = scope.map(|(n, g)| (n.to_owned(), g));
    let events =
        futures_util::stream::unfold((rx, scope, true), |(mut rx, scope, first)| async move {
            if first {
                // The reader knows it is subscribed: what changes from now on comes.
                let hello: Result<Frame<Bytes>, std::convert::Infallible> =
                    Ok(Frame::data(Bytes::from_static(b": subscribed\n\n")));
                return Some((hello, (rx, scope, false)));
            }
            loop {
                let text = match tokio::time::timeout(KEEP_ALIVE, rx.recv()).await {
                    Err(_) => ": alive\n\n".to_owned(),
                    Ok(Ok(told)) => {
                        let (vassal, group) = told.whose();
                        let mine = match &scope {
                            None => true,
                            Some((g, true)) => group == Some(g.as_str()),
                            Some((s, false)) => vassal == s,
                        };
                        if !mine {
                            continue;
                        }
                        let (event, data) = told.event();
                        format!("event: {event}\ndata: {data}\n\n")
                    }
                    Ok(Err(RecvError::Lagged(n))) => format!("event: lagged\ndata: {n}\n\n"),
                    Ok(Err(RecvError::Closed)) => return None,
                };
                let frame: Result<Frame<Bytes>, std::convert::Infallible> =
                    Ok(Frame::data(Bytes::from(text)));
                return Some((frame, (rx, scope, false)));
            }
        });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(events)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

/// 405: in the scope, not to be done from there.
fn not_here() -> Response<Body> {
    json(
        StatusCode::METHOD_NOT_ALLOWED,
        &serde_json::json!({ "error": "not allowed from this socket" }),
    )
}

/// Whether the status row `row` is in `scope` (a group: the group and its
/// sites; a site: itself).
fn row_in(scope: (&str, bool), row: &serde_json::Value) -> bool {
    match scope {
        (g, true) => row["group"] == g,
        (s, false) => row["name"] == s,
    }
}

/// The status row of the vassal `name`, if there is one (its usage read
/// for it alone).
async fn row_of(tx: &mpsc::UnboundedSender<Event>, name: &str) -> Option<serde_json::Value> {
    let req = control::Request::Get {
        name: name.to_owned(),
    };
    ask(tx, req).await.filter(|r| r.ok).map(|r| r.data)
}

/// Whether the vassal `name` is in `scope`.
async fn in_scope(tx: &mpsc::UnboundedSender<Event>, scope: (&str, bool), name: &str) -> bool {
    row_of(tx, name)
        .await
        .is_some_and(|row| row_in(scope, &row))
}

/// Whether a vassal `name` exists outside the group `g`.
async fn exists_outside(tx: &mpsc::UnboundedSender<Event>, g: &str, name: &str) -> bool {
    row_of(tx, name)
        .await
        .is_some_and(|row| !row_in((g, true), &row))
}

/// The OpenAPI document of `/v1`, made from the handlers below and the
/// status row's own type (`GET /v1/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "imperium emperor API",
        version = "1",
        description = "The admin's API on <run-dir>/api.sock"
    ),
    paths(
        list,
        get,
        put,
        delete,
        act,
        move_to,
        notifications,
        notify,
        mark_read,
        subscriptions
    ),
    components(schemas(
        crate::manager::StatusRow,
        crate::manager::StatusUsage,
        Vassal,
        Failure,
        Written,
        model::notification::Notification,
        Message,
        MoveTo,
        ReadMark,
        model::subscription::RouteReport,
        model::subscription::BackendReport
    ))
)]
pub struct ApiDoc;

pub use utoipa::OpenApi;

/// A refusal: the one-line reason.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Failure {
    /// Why.
    pub error: String,
}

/// A vassal file written.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Written {
    /// The vassal.
    pub name: String,
    /// Whether it is new.
    pub created: bool,
}

/// A vassal's status row and its file.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Vassal {
    /// The status row.
    #[serde(flatten)]
    pub row: crate::manager::StatusRow,
    /// The text of its vassal file (absent: not readable).
    pub file: Option<String>,
}

fn gone() -> Response<Body> {
    plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "the emperor is stopping".into(),
    )
}

/// Every vassal's status.
#[utoipa::path(get, path = "/v1/vassals", responses(
    (status = 200, description = "Every vassal", body = [crate::manager::StatusRow])
))]
async fn list(tx: &mpsc::UnboundedSender<Event>, scope: Option<(&str, bool)>) -> Answer {
    Ok(match ask(tx, control::Request::Status).await {
        // The admin's: the rows as the emperor wrote them.
        Some(control::Response { raw: Some(raw), .. }) if scope.is_none() => {
            json_bytes(StatusCode::OK, raw)
        }
        Some(r) => {
            let data = r.value();
            match (scope, data.as_array()) {
                (Some(scope), Some(rows)) => {
                    let mine: Vec<&serde_json::Value> =
                        rows.iter().filter(|row| row_in(scope, row)).collect();
                    json(StatusCode::OK, &serde_json::json!(mine))
                }
                _ => json(StatusCode::OK, &data),
            }
        }
        None => gone(),
    })
}

/// One vassal's status and file.
#[utoipa::path(get, path = "/v1/vassals/{name}",
    params(("name" = String, Path, description = "The vassal")),
    responses(
        (status = 200, description = "The vassal", body = Vassal),
        (status = 404, description = "No such vassal", body = Failure),
    ))]
async fn get(tx: &mpsc::UnboundedSender<Event>, name: &str) -> Answer {
    let req = control::Request::Get {
        name: name.to_owned(),
    };
    Ok(match ask(tx, req).await {
        Some(r) if r.ok => json(StatusCode::OK, &r.data),
        Some(r) => refused(r.error.unwrap_or_default(), StatusCode::NOT_FOUND),
        None => gone(),
    })
}

/// Writes a vassal file into the admin directory; kept only if the emperor
/// accepts it.
#[utoipa::path(put, path = "/v1/vassals/{name}",
    params(("name" = String, Path, description = "The vassal")),
    request_body(description = "The vassal file: its TOML text, or the same as a JSON object",
        content((String = "application/toml"), (Object = "application/json"))),
    responses(
        (status = 201, description = "Created and accepted", body = Written),
        (status = 200, description = "Replaced and accepted", body = Written),
        (status = 408, description = "The body did not come within 5 s", body = Failure),
        (status = 413, description = "Over 64 KiB", body = Failure),
        (status = 422, description = "Refused: nothing changed", body = Failure),
    ))]
async fn put(
    tx: &mpsc::UnboundedSender<Event>,
    name: String,
    group: Option<String>,
    is_json: bool,
    body: hyper::body::Incoming,
) -> Answer {
    let body = match body_of(body).await {
        Ok(b) => b,
        Err(r) => return Ok(r),
    };
    let text = if is_json {
        // The same file as JSON: written as the TOML it stands for.
        serde_json::from_slice::<serde_json::Value>(&body)
            .map_err(|e| format!("the body is not JSON: {e}"))
            .and_then(|v| {
                toml::to_string(&v).map_err(|e| format!("the body is not a vassal file: {e}"))
            })
    } else {
        String::from_utf8(body.to_vec()).map_err(|_| "the file is not UTF-8 text".to_owned())
    };
    let text = match text {
        Ok(t) => t,
        Err(why) => {
            return Ok(json(
                StatusCode::UNPROCESSABLE_ENTITY,
                &serde_json::json!({ "error": why }),
            ))
        }
    };
    Ok(
        match ask(tx, control::Request::Put { name, text, group }).await {
            Some(r) if r.ok => {
                let created = r.data["created"].as_bool().unwrap_or(false);
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                json(status, &r.data)
            }
            Some(r) => refused(
                r.error.unwrap_or_default(),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            None => gone(),
        },
    )
}

/// Removes a vassal file from the admin directory: the vassal stops and
/// its home is archived.
#[utoipa::path(delete, path = "/v1/vassals/{name}",
    params(("name" = String, Path, description = "The vassal")),
    responses(
        (status = 200, description = "Removed"),
        (status = 404, description = "No such file in the admin directory", body = Failure),
    ))]
async fn delete(tx: &mpsc::UnboundedSender<Event>, name: &str, group: Option<String>) -> Answer {
    let req = control::Request::Delete {
        name: name.to_owned(),
        group,
    };
    Ok(match ask(tx, req).await {
        Some(r) if r.ok => json(StatusCode::OK, &r.data),
        Some(r) => refused(r.error.unwrap_or_default(), StatusCode::CONFLICT),
        None => gone(),
    })
}

/// Restarts, suspends (freezes) or resumes a vassal.
#[utoipa::path(post, path = "/v1/vassals/{name}/{action}",
    params(
        ("name" = String, Path, description = "The vassal"),
        ("action" = String, Path, description = "restart, suspend or resume"),
    ),
    responses(
        (status = 200, description = "Done"),
        (status = 404, description = "No such vassal or action", body = Failure),
        (status = 409, description = "Refused now (the reason says why)", body = Failure),
    ))]
async fn act(tx: &mpsc::UnboundedSender<Event>, name: &str, action: &str) -> Answer {
    let name = name.to_owned();
    let req = match action {
        "restart" => control::Request::Restart { name },
        "suspend" => control::Request::Suspend { name },
        "resume" => control::Request::Resume { name },
        _ => {
            let why = format!("no action {action:?} (restart, suspend, resume)");
            return Ok(json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({ "error": why }),
            ));
        }
    };
    Ok(match ask(tx, req).await {
        Some(r) if r.ok => json(StatusCode::OK, &r.data),
        Some(r) => refused(r.error.unwrap_or_default(), StatusCode::CONFLICT),
        None => gone(),
    })
}

/// A request's JSON body as `T` (`None`: empty), or the answer saying it
/// is not what was wanted (`want`: its shape).
async fn json_of<T: serde::de::DeserializeOwned>(
    body: hyper::body::Incoming,
    want: &str,
) -> Result<Option<T>, Response<Body>> {
    let body = body_of(body).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| unreadable(want, &e.to_string()))
}

/// 422: the body is not `want`, because `why`.
fn unreadable(want: &str, why: &str) -> Response<Body> {
    let why = format!("the body: {why} (want {want})");
    json(
        StatusCode::UNPROCESSABLE_ENTITY,
        &serde_json::json!({ "error": why }),
    )
}

/// A request's body, within its time and size.
async fn body_of(body: hyper::body::Incoming) -> Result<Bytes, Response<Body>> {
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, BODY_MAX).collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Err(_) => {
            let why = format!("the body did not come within {BODY_TIMEOUT:?}");
            Err(json(
                StatusCode::REQUEST_TIMEOUT,
                &serde_json::json!({ "error": why }),
            ))
        }
        Ok(Err(e)) => {
            let why = format!("the body: {e} (at most {BODY_MAX} bytes)");
            Err(json(
                StatusCode::PAYLOAD_TOO_LARGE,
                &serde_json::json!({ "error": why }),
            ))
        }
    }
}

/// A site's notifications, newest last: alarms (OOM kills, memory near its
/// limit, restart loops, disk) and messages from the admin or the reseller.
/// Read from inside the running site, as its user.
#[utoipa::path(get, path = "/v1/vassals/{name}/notifications",
    params(
        ("name" = String, Path, description = "The vassal"),
        ("unread" = Option<bool>, Query, description = "Only those not marked read"),
        ("limit" = Option<u32>, Query, description = "How many at most (50; 1,000 at most)"),
    ),
    responses(
        (status = 200, description = "Its notifications, oldest first", body = [model::notification::Notification]),
        (status = 400, description = "A limit that is not a count", body = Failure),
        (status = 404, description = "No such vassal", body = Failure),
        (status = 409, description = "Not running, or its answer failed", body = Failure),
    ))]
async fn notifications(
    tx: &mpsc::UnboundedSender<Event>,
    name: &str,
    query: Option<&str>,
) -> Answer {
    let (mut unread, mut limit) = (false, None);
    for (k, v) in query
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
    {
        match k {
            "unread" => unread = v == "true" || v == "1",
            "limit" => match v.parse::<u32>() {
                Ok(n) => limit = Some(n),
                Err(_) => {
                    let why = format!("limit {v:?} is not a count");
                    return Ok(json(
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({ "error": why }),
                    ));
                }
            },
            _ => {}
        }
    }
    let req = control::Request::Notifications {
        name: name.to_owned(),
        unread,
        limit,
    };
    Ok(match ask(tx, req).await {
        Some(r) if r.ok => json(StatusCode::OK, &r.data),
        Some(r) => refused(r.error.unwrap_or_default(), StatusCode::CONFLICT),
        None => gone(),
    })
}

/// A site's domains as the router routes them now: each with its live
/// backends and when its certificate expires.
#[utoipa::path(get, path = "/v1/vassals/{name}/subscriptions",
    params(("name" = String, Path, description = "The vassal")),
    responses(
        (status = 200, description = "Its routed domains (none for a group or a stopped site)",
            body = [model::subscription::RouteReport]),
        (status = 404, description = "No such vassal", body = Failure),
        (status = 502, description = "The router could not be asked", body = Failure),
    ))]
async fn subscriptions(tx: &mpsc::UnboundedSender<Event>, name: &str) -> Answer {
    let req = control::Request::Subscriptions {
        name: name.to_owned(),
    };
    Ok(match ask(tx, req).await {
        Some(r) if r.ok => json(StatusCode::OK, &r.data),
        Some(r) => refused(r.error.unwrap_or_default(), StatusCode::BAD_GATEWAY),
        None => gone(),
    })
}

/// Where a site goes.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct MoveTo {
    /// The host (as its emperor's `--host` names it).
    pub host: String,
}

/// Moves an admin site with its home to another host of the cluster
/// (`emperor move`): the move begins, and `emperor cluster` follows it.
#[utoipa::path(post, path = "/v1/vassals/{name}/move",
    params(("name" = String, Path, description = "The site")),
    request_body(content = MoveTo, content_type = "application/json"),
    responses(
        (status = 202, description = "The move has begun"),
        (status = 409, description = "Refused (not in cluster mode, no such site or host, a move under way...)", body = Failure),
        (status = 422, description = "Not a host to move to", body = Failure),
    ))]
async fn move_to(
    tx: &mpsc::UnboundedSender<Event>,
    name: &str,
    body: hyper::body::Incoming,
) -> Answer {
    let host = match json_of::<MoveTo>(body, r#"{"host": "NAME"}"#).await {
        Ok(Some(m)) => m.host,
        Ok(None) => return Ok(unreadable(r#"{"host": "NAME"}"#, "empty")),
        Err(r) => return Ok(r),
    };
    let req = control::Request::Move {
        name: name.to_owned(),
        host,
    };
    Ok(match ask(tx, req).await {
        Some(r) if r.ok => json(StatusCode::ACCEPTED, &r.data),
        Some(r) => refused(r.error.unwrap_or_default(), StatusCode::CONFLICT),
        None => gone(),
    })
}

/// A message for a site.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct Message {
    /// One line, at most 1,000 bytes.
    pub message: String,
}

/// Leaves a message among a site's notifications (the admin's, or a
/// reseller's to its sites).
#[utoipa::path(post, path = "/v1/vassals/{name}/notifications",
    params(("name" = String, Path, description = "The vassal")),
    request_body(content = Message, content_type = "application/json"),
    responses(
        (status = 201, description = "Stored"),
        (status = 404, description = "No such vassal", body = Failure),
        (status = 422, description = "Not a message, or not stored (the reason says why)", body = Failure),
    ))]
async fn notify(
    tx: &mpsc::UnboundedSender<Event>,
    name: &str,
    from: &str,
    body: hyper::body::Incoming,
) -> Answer {
    let want = r#"{"message": "..."}"#;
    let message = match json_of::<Message>(body, want).await {
        Ok(Some(m)) => m.message,
        Ok(None) => return Ok(unreadable(want, "empty")),
        Err(r) => return Ok(r),
    };
    let req = control::Request::Notify {
        name: name.to_owned(),
        message,
        from: Some(from.to_owned()),
    };
    Ok(match ask(tx, req).await {
        Some(r) if r.ok => json(StatusCode::CREATED, &r.data),
        Some(r) => refused(
            r.error.unwrap_or_default(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        None => gone(),
    })
}

/// Up to which notification to mark read.
#[derive(serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct ReadMark {
    /// The last one read (absent: all of them).
    #[serde(default)]
    pub upto: Option<i64>,
}

/// Marks a site's notifications read, up to one or all (the tenant's, or
/// the admin's).
#[utoipa::path(post, path = "/v1/vassals/{name}/notifications/read",
    params(("name" = String, Path, description = "The vassal")),
    request_body(content = Option<ReadMark>, content_type = "application/json"),
    responses(
        (status = 200, description = "Read up to this one", body = ReadMark),
        (status = 404, description = "No such vassal", body = Failure),
        (status = 409, description = "Not running, or its answer failed", body = Failure),
        (status = 422, description = "Not a mark", body = Failure),
    ))]
async fn mark_read(
    tx: &mpsc::UnboundedSender<Event>,
    name: &str,
    body: hyper::body::Incoming,
) -> Answer {
    let mark = match json_of::<ReadMark>(body, r#"{"upto": N} or nothing"#).await {
        Ok(m) => m.unwrap_or(ReadMark { upto: None }),
        Err(r) => return Ok(r),
    };
    let req = control::Request::NotificationsRead {
        name: name.to_owned(),
        upto: mark.upto,
    };
    Ok(match ask(tx, req).await {
        Some(r) if r.ok => json(StatusCode::OK, &r.data),
        Some(r) => refused(r.error.unwrap_or_default(), StatusCode::CONFLICT),
        None => gone(),
    })
}

async fn metrics<B>(req: Request<B>, tx: mpsc::UnboundedSender<Event>) -> Answer {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics".into()));
    }
    let open = model::metrics::wants_openmetrics(
        req.headers()
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    let Some(resp) = ask(&tx, control::Request::Metrics).await else {
        return Ok(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the emperor is stopping".into(),
        ));
    };
    let text = resp.data.as_str().unwrap_or_default().to_owned();
    let (text, kind) = if open {
        (text, OPENMETRICS)
    } else {
        (model::metrics::prometheus_text(&text), PROMETHEUS)
    };
    let mut r = Response::new(Full::new(Bytes::from(text)).boxed());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(kind),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `curl` as `uid` on `socket`: the status it got (0: none).
    fn curl_as(uid: u32, socket: &std::path::Path) -> u16 {
        use std::os::unix::process::CommandExt;
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg("--unix-socket")
            .arg(socket)
            .arg("http://localhost/v1/openapi.json")
            .uid(uid)
            .gid(uid)
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
    }

    /// Event streams held open as their callers (killed when dropped).
    struct Streams(Vec<std::process::Child>);

    impl Drop for Streams {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    impl Streams {
        /// Opens the event stream as `uid`; whether it was served (its
        /// first line came) or closed unanswered.
        fn open(&mut self, uid: u32, socket: &std::path::Path) -> bool {
            use std::io::BufRead;
            use std::os::unix::process::CommandExt;
            let mut child = std::process::Command::new("curl")
                .args(["-sN", "--max-time", "60", "--unix-socket"])
                .arg(socket)
                .arg("http://localhost/v1/events")
                .stdout(std::process::Stdio::piped())
                .uid(uid)
                .gid(uid)
                .spawn()
                .expect("run curl");
            let mut first = String::new();
            let out = child.stdout.take().expect("piped");
            let _ = std::io::BufReader::new(out).read_line(&mut first);
            self.0.push(child);
            first.starts_with(": subscribed")
        }

        /// Opens it, trying again for a while: a place given back (a
        /// request answered) is free once its connection's task has ended.
        #[allow(clippy::disallowed_methods)] // a test's own deadline
        fn open_soon(&mut self, uid: u32, socket: &std::path::Path) -> bool {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                if self.open(uid, socket) {
                    return true;
                }
                if std::time::Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "root: run the README's test command"]
    async fn the_shared_socket_serves_vassals_users_only_each_within_its_places() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let (tx, _rx) = mpsc::unbounded_channel();
        let (events, _) = tokio::sync::broadcast::channel(4);
        // Nine sites of a group g (uids 64100..), and a site of no group.
        let scopes: Scopes = Default::default();
        let site = |n: &str, g: Option<&str>| Caller {
            name: n.into(),
            group: false,
            reseller: g.map(str::to_owned),
        };
        {
            let mut s = scopes.write().unwrap();
            for i in 0..9 {
                s.insert(64100 + i, site(&format!("s{i}"), Some("g")));
            }
            s.insert(64200, site("lone", None));
        }
        let server = tokio::spawn(serve(
            Callers::new(listener, scopes.clone()),
            None,
            Serves::Caller,
            tx,
            events,
        ));
        let (p, sc) = (path.clone(), scopes.clone());
        tokio::task::spawn_blocking(move || {
            assert_eq!(
                [curl_as(0, &p), curl_as(64100, &p), curl_as(64300, &p)],
                [0, 200, 0],
                "root, a vassal's user, a user of no vassal"
            );
            sc.write().unwrap().remove(&64100);
            assert_eq!(curl_as(64100, &p), 0, "a vassal gone");
            sc.write().unwrap().insert(64100, site("s0", Some("g")));
            // One caller holds its eight places; a ninth connection is
            // closed, while the next caller is served.
            let mut held = Streams(Vec::new());
            assert!((0..PER_CALLER).all(|_| held.open_soon(64100, &p)));
            assert!(!held.open(64100, &p), "a caller past its places");
            assert_eq!(curl_as(64101, &p), 200);
            // Seven more of the group's sites hold theirs: the group's 64
            // places are taken; its ninth site waits, a site of no group not.
            for uid in 64101..64108 {
                assert!((0..PER_CALLER).all(|_| held.open_soon(uid, &p)), "{uid}");
            }
            assert_eq!(curl_as(64108, &p), 0, "a group past its places");
            assert_eq!(curl_as(64200, &p), 200, "a site of no group");
            drop(held);
        })
        .await
        .unwrap();
        server.abort();
    }
}
