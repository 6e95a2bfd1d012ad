//! The subscription API: `POST /subscribe` with a [`model::subscription::Signed`]
//! body, over a unix socket shared into every container.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use model::subscription::Answer;

use crate::proxy::Body;
use crate::State;

/// The largest request accepted (a certificate chain and key fit well within).
pub const MAX_BODY: usize = 256 * 1024;

fn answer(status: StatusCode, a: &Answer) -> Response<Body> {
    let mut body = serde_json::to_vec(a).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

fn refuse(status: StatusCode, why: String) -> Response<Body> {
    answer(
        status,
        &Answer {
            ok: false,
            error: Some(why),
            ttl: None,
        },
    )
}

/// Handles one API request.
pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    if req.method() != Method::POST || req.uri().path() != "/subscribe" {
        return Ok(refuse(
            StatusCode::NOT_FOUND,
            "POST /subscribe is the only call".into(),
        ));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("requests are limited to {MAX_BODY} bytes"),
            ))
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dominion = state.routes.dominion();
    let verified = {
        let mut nonces = match state.nonces.lock() {
            Ok(n) => n,
            Err(p) => p.into_inner(),
        };
        crate::verify::verify(&body, &dominion, now, &mut nonces)
    };
    match verified {
        Ok(v) => {
            if let Some(cert) = &v.cert {
                state.certs.set(&v.sub.domain, cert.clone());
            }
            state.routes.apply(&v);
            tracing::info!(site = %v.sub.site, domain = %v.sub.domain, backend = %v.backend.display(), action = ?v.sub.action, "subscription");
            Ok(answer(
                StatusCode::OK,
                &Answer {
                    ok: true,
                    error: None,
                    ttl: Some(state.routes.ttl().as_secs()),
                },
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, "subscription refused");
            Ok(refuse(StatusCode::FORBIDDEN, e.to_string()))
        }
    }
}
