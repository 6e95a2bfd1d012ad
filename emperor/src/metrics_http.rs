//! `/metrics` over HTTP: on the admin's socket `<run-dir>/api.sock` (root's,
//! 0600) and, when asked (`--metrics-listen ADDR`), on a TCP address for a
//! Prometheus server. The manager renders the text (a control request); this
//! only carries it. Bounded like the control socket: a few connections at
//! once, a few seconds each.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::control;
use crate::manager::Event;

/// Connections served at once (per listener).
const CONNECTIONS: usize = 32;
/// How long one connection lives at most.
const LIFETIME: Duration = Duration::from_secs(10);
/// The content type of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of Prometheus's own text format (0.0.4).
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics text as Prometheus's text format 0.0.4, for a client that did
/// not ask for OpenMetrics (`promtool`, older servers): a counter family's
/// HELP and TYPE name its `_total` samples, and the UNIT and EOF lines go.
pub fn prometheus_text(open: &str) -> String {
    let counters: Vec<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len());
    for l in open.lines() {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .iter()
            .find_map(|p| l.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(&name) {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                };
                out.push_str(&format!("{p}{name} {tail}"));
            }
            None => out.push_str(l),
        }
        out.push('\n');
    }
    out
}

/// Something that accepts connections.
pub trait Accept: Send + 'static {
    /// The stream of one connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection.
    fn accept(&self) -> impl std::future::Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        tokio::net::UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        tokio::net::TcpListener::accept(self).await.map(|(s, _)| s)
    }
}

/// Serves `/metrics` on `listener` until the emperor ends.
pub async fn serve(listener: impl Accept, tx: mpsc::UnboundedSender<Event>) {
    let places = Arc::new(Semaphore::new(CONNECTIONS));
    let mut wait = Duration::from_millis(10);
    loop {
        let io = match listener.accept().await {
            Ok(io) => {
                wait = Duration::from_millis(10);
                io
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed; backing off");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            continue; // full: closed at once
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let _place = place;
            let svc = hyper::service::service_fn(move |req| answer(req, tx.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(io), svc);
            let _ = tokio::time::timeout(LIFETIME, conn).await;
        });
    }
}

async fn answer<B>(
    req: Request<B>,
    tx: mpsc::UnboundedSender<Event>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return Ok(plain(StatusCode::NOT_FOUND, "only /metrics here\n"));
    }
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n"));
    }
    let open = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let (rtx, rrx) = oneshot::channel();
    if tx
        .send(Event::Control(control::Request::Metrics, rtx))
        .is_err()
    {
        return Ok(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the emperor is stopping\n",
        ));
    }
    let text = match rrx.await {
        Ok(resp) => resp.data.as_str().unwrap_or_default().to_owned(),
        Err(_) => return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, "no answer\n")),
    };
    let (text, kind) = if open {
        (text, OPENMETRICS)
    } else {
        (prometheus_text(&text), PROMETHEUS)
    };
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(kind),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    #[test]
    fn counters_name_their_total_in_prometheus_text() {
        let open = "# HELP x_restarts Restarts.\n# TYPE x_restarts counter\nx_restarts_total{v=\"a\"} 1.0\n\
                    # HELP x_mem Memory.\n# TYPE x_mem gauge\n# UNIT x_mem bytes\nx_mem{v=\"a\"} 5\n# EOF\n";
        assert_eq!(
            super::prometheus_text(open),
            "# HELP x_restarts_total Restarts.\n# TYPE x_restarts_total counter\nx_restarts_total{v=\"a\"} 1.0\n\
             # HELP x_mem Memory.\n# TYPE x_mem gauge\nx_mem{v=\"a\"} 5\n"
        );
    }
}
