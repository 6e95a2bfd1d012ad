//! The proxy: the Host of a request picks the domain's backends (unix sockets
//! in the owning site's socket directory); the first that accepts the
//! connection gets the request. Websocket upgrades are passed through.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, HOST, UPGRADE};
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
    use std::os::fd::AsFd;
    let uid = b.uid.ok_or(ConnectError::NoUid)?;
    let dir = sys::fs::open_dir(&b.dir).map_err(ConnectError::Open)?;
    let fd = sys::fs::open_beneath(dir.as_fd(), std::path::Path::new(&b.name), libc::O_PATH)
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

/// A new HTTP/1.1 connection to a backend's socket.
async fn connect(b: &Backend) -> Result<Sender, ConnectError> {
    use std::os::fd::AsFd;
    let fd = open_socket(b)?;
    // Through the descriptor: the kernel connects to the inode just checked.
    let stream = UnixStream::connect(sys::fs::fd_path(fd.as_fd()))
        .await
        .map_err(ConnectError::Connect)?;
    drop(fd);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// In turn from `order`: an idle connection (when `pooled`), else a new one;
/// a backend that refuses is skipped for this request only.
async fn pick<'a>(
    state: &State,
    order: impl Iterator<Item = &'a Arc<Backend>>,
    pooled: bool,
) -> Option<(&'a Arc<Backend>, Sender)> {
    for b in order {
        if let Some(s) = pooled.then(|| state.pool.take(&b.path)).flatten() {
            return Some((b, s));
        }
        match connect(b).await {
            Ok(s) => return Some((b, s)),
            Err(e) => {
                tracing::debug!(backend = %b.path.display(), error = %e, "backend refused; trying the next")
            }
        }
    }
    None
}

/// What goes to a backend: the client's body, each part within the body timeout.
pub type ReqBody = crate::conn::TimeoutBody<Incoming>;

/// A connection to a backend, ready for a request.
pub type Sender = hyper::client::conn::http1::SendRequest<ReqBody>;

/// Idle connections to backends, by socket path.
#[derive(Debug, Default)]
pub struct Pool {
    idle: std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, Vec<Sender>>>,
}

/// Idle connections kept per backend.
const POOL_PER_BACKEND: usize = 64;

impl Pool {
    fn take(&self, path: &std::path::Path) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(path)?;
        while let Some(s) = list.pop() {
            if s.is_ready() && !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put(&self, path: std::path::PathBuf, sender: Sender) {
        if let Ok(mut idle) = self.idle.lock() {
            let list = idle.entry(path).or_default();
            if list.len() < POOL_PER_BACKEND {
                list.push(sender);
            }
        }
    }
}

/// How long a backend has to start its answer.
pub const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The body of every answer.
pub type Body = BoxBody<Bytes, hyper::Error>;

fn page(status: StatusCode, text: &str) -> Response<Body> {
    let body = format!("<!doctype html><title>{status}</title><h1>{status}</h1><p>{text}</p>\n");
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
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
    // A port is stripped; an IPv6 literal (colons inside) is left alone.
    let host = match raw.rsplit_once(':') {
        Some((h, port))
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') =>
        {
            h
        }
        _ => raw,
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
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

/// Answers one request.
pub async fn handle(
    state: Arc<State>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    scheme: &'static str,
    in_flight: InFlight,
) -> Result<Response<Body>, std::convert::Infallible> {
    let Some(host) = host_of(&req) else {
        return Ok(page(StatusCode::BAD_REQUEST, "No Host, or more than one."));
    };
    let backends = match state.routes.lookup(&host) {
        Route::Unknown => {
            return Ok(page(
                StatusCode::NOT_FOUND,
                "No site serves this domain here.",
            ))
        }
        Route::Suspended => {
            let mut r = page(StatusCode::SERVICE_UNAVAILABLE, "This site is suspended.");
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("120"));
            return Ok(r);
        }
        Route::Moving => {
            let mut r = page(
                StatusCode::SERVICE_UNAVAILABLE,
                "This site is moving; it will be back in a moment.",
            );
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("30"));
            return Ok(r);
        }
        Route::Backends(b) => b,
    };

    // Headers for the backend: who asked, over what; the Host is kept.
    let h = req.headers_mut();
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert("x-forwarded-for", v);
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static(scheme));
    if !h.contains_key(HOST) {
        if let Ok(v) = HeaderValue::from_str(&host) {
            h.insert(HOST, v);
        }
    }
    // The backend speaks HTTP/1.1: origin-form target.
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    if let Ok(uri) = path.parse() {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = hyper::Version::HTTP_11;
    // Hop-by-hop headers concern the client's connection, not ours to the backend.
    if !upgrading_request(&req) {
        for h in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
        ] {
            req.headers_mut().remove(h);
        }
    }
    let upgrading = upgrading_request(&req);

    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    let every = state.body_timeout;
    let req = req.map(|b| crate::conn::TimeoutBody::new(b, every));
    let Some((backend, mut sender)) = pick(&state, backends.iter(), !upgrading).await else {
        return Ok(page(
            StatusCode::BAD_GATEWAY,
            "The site's application is not answering.",
        ));
    };
    // A kept connection the backend closed meanwhile gives the request back
    // unsent: it goes once more, on a new connection to the same backend or,
    // if that one is gone too, to the next that accepts.
    let mut req = req;
    let mut retried = false;
    let mut backend = backend;
    let mut resp = loop {
        match tokio::time::timeout(RESPONSE_TIMEOUT, sender.try_send_request(req)).await {
            Ok(Ok(r)) => break r,
            Ok(Err(mut e)) => match (e.take_message(), retried) {
                (Some(back), false) => {
                    retried = true;
                    req = back;
                    let first = std::iter::once(backend);
                    let order = first.chain(backends.iter().filter(|b| !Arc::ptr_eq(b, backend)));
                    (backend, sender) = match pick(&state, order, false).await {
                        Some(c) => c,
                        None => {
                            return Ok(page(
                                StatusCode::BAD_GATEWAY,
                                "The site's application is not answering.",
                            ))
                        }
                    };
                }
                _ if caused_by_body_timeout(e.error()) => {
                    return Ok(page(
                        StatusCode::REQUEST_TIMEOUT,
                        "The request body did not come in time.",
                    ))
                }
                _ => {
                    return Ok(page(
                        StatusCode::BAD_GATEWAY,
                        "The site's application failed to answer.",
                    ))
                }
            },
            Err(_) => {
                return Ok(page(
                    StatusCode::GATEWAY_TIMEOUT,
                    "The site's application did not answer in time.",
                ))
            }
        }
    };
    if !upgrading {
        // Back to the pool once the answer's body has gone through.
        let state = state.clone();
        let path = backend.path.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                state.pool.put(path, sender);
            }
        });
    }
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
    // The request stays in flight (the client connection is not idle) until its answer's body is done.
    Ok(resp.map(move |b| {
        b.map_frame(move |f| {
            let _ = &in_flight;
            f
        })
        .boxed()
    }))
}
