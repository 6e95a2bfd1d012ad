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

use crate::routes::Route;
use crate::State;

fn upgrading_request(req: &Request<Incoming>) -> bool {
    req.headers().get(UPGRADE).is_some()
        && req
            .headers()
            .get(CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
}

/// A new HTTP/1.1 connection to a backend's socket.
async fn connect(path: &std::path::Path) -> std::io::Result<Sender> {
    let stream = UnixStream::connect(path).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// In turn from `order`: an idle connection (when `pooled`), else a new one;
/// a backend that refuses is skipped for this request only.
async fn pick<'a>(
    state: &State,
    order: impl Iterator<Item = &'a std::path::PathBuf>,
    pooled: bool,
) -> Option<(std::path::PathBuf, Sender)> {
    for path in order {
        if let Some(s) = pooled.then(|| state.pool.take(path)).flatten() {
            return Some((path.clone(), s));
        }
        match connect(path).await {
            Ok(s) => return Some((path.clone(), s)),
            Err(e) => {
                tracing::debug!(backend = %path.display(), error = %e, "backend refused; trying the next")
            }
        }
    }
    None
}

/// A connection to a backend, ready for a request.
pub type Sender = hyper::client::conn::http1::SendRequest<Incoming>;

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

/// The host a request is for, lower case, without a port.
fn host_of(req: &Request<Incoming>) -> Option<String> {
    let raw = req
        .headers()
        .get(HOST)
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

/// Answers one request.
pub async fn handle(
    state: Arc<State>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    scheme: &'static str,
) -> Result<Response<Body>, std::convert::Infallible> {
    let Some(host) = host_of(&req) else {
        return Ok(page(StatusCode::BAD_REQUEST, "No Host."));
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

    let Some((backend, mut sender)) = pick(&state, backends.iter(), !upgrading).await else {
        return Ok(page(
            StatusCode::BAD_GATEWAY,
            "The site's application is not answering.",
        ));
    };
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
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
                    let first = std::iter::once(&backend);
                    let order = first.chain(backends.iter().filter(|p| **p != backend));
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
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                state.pool.put(backend, sender);
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
    Ok(resp.map(|b| b.boxed()))
}
