//! The subscription API: `POST /subscribe` with a [`model::subscription::Signed`]
//! body, over a unix socket shared into every container; and `GET /routes`:
//! the caller's site's domains as they are routed now (the site is the one
//! whose uid the kernel gives for the caller; root names one with
//! `?site=NAME`).

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

/// `GET /routes`: the routes of the caller's site (root: of `?site=NAME`).
fn routes(state: &State, query: Option<&str>, peer: u32) -> Response<Body> {
    let dominion = state.routes.dominion();
    let site = if peer == 0 {
        query
            .unwrap_or_default()
            .split('&')
            .find_map(|kv| kv.strip_prefix("site="))
            .map(str::to_owned)
    } else {
        dominion
            .sites
            .iter()
            .find(|(_, s)| s.uid == Some(peer))
            .map(|(name, _)| name.clone())
    };
    let Some(site) = site.filter(|s| dominion.sites.contains_key(s)) else {
        let why = if peer == 0 {
            "GET /routes?site=NAME, a site of the dominion".to_owned()
        } else {
            format!("uid {peer} is no site's")
        };
        return refuse(StatusCode::NOT_FOUND, why);
    };
    let mut report = state.routes.report(&site);
    if let Some(acme) = &state.acme {
        for r in report.iter_mut().filter(|r| r.certificate.is_none()) {
            if let Some(i) = acme.issued(&r.domain) {
                r.certificate = Some("acme".into());
                r.certificate_expires = Some(i.not_after);
                r.issuer = i.key.cert.first().and_then(|c| crate::verify::issuer(c));
            }
            r.acme_error = acme.error(&r.domain).or_else(|| {
                r.domain.starts_with("*.").then(|| {
                    "a wildcard: ACME's http-01 and tls-alpn-01 cannot prove it; \
                     subscribe it with a certificate of your own"
                        .to_owned()
                })
            });
        }
    }
    let mut body = serde_json::to_vec(&report).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Handles one API request from a process of uid `peer`.
pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    peer: u32,
) -> Result<Response<Body>, std::convert::Infallible> {
    use crate::metrics::SubRefusal as Why;
    let reading = req.method() == Method::GET && req.uri().path() == "/routes";
    if !reading && (req.method() != Method::POST || req.uri().path() != "/subscribe") {
        state.stats.sub_refused(Why::BadCall);
        return Ok(refuse(
            StatusCode::NOT_FOUND,
            "POST /subscribe or GET /routes".into(),
        ));
    }
    // Counted by the caller's uid, which the kernel vouches for: a flood of
    // forged requests spends the sender's own budget, never a neighbour's.
    // Root (the host's own tools) is not rated; tenants' uids are never 0.
    if peer != 0 && !state.api_rate.allow(&peer) {
        state.stats.sub_refused(Why::Rate);
        return Ok(refuse(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many requests from uid {peer}: at most {} a second",
                crate::API_RATE
            ),
        ));
    }
    // A report scans the route table: rated like a subscription.
    if reading {
        return Ok(routes(&state, req.uri().query(), peer));
    }
    let collect = Limited::new(req.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(crate::API_TIMEOUT, collect).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => {
            state.stats.sub_refused(Why::TooLarge);
            return Ok(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("requests are limited to {MAX_BODY} bytes"),
            ));
        }
        Err(_) => {
            state.stats.sub_refused(Why::Timeout);
            return Ok(refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not come within {:?}", crate::API_TIMEOUT),
            ));
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
            if let Err(e) = state.routes.apply(&v) {
                tracing::warn!(site = %v.sub.site, error = %e, "subscription refused");
                state.stats.sub_refused(Why::NotApplied);
                return Ok(refuse(StatusCode::FORBIDDEN, e.to_string()));
            }
            state.stats.subscribed();
            tracing::info!(site = %v.sub.site, domain = %v.sub.domain, backend = %v.sub.backend, action = ?v.sub.action, "subscription");
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
            state.stats.sub_refused(Why::Unverified);
            Ok(refuse(StatusCode::FORBIDDEN, e.to_string()))
        }
    }
}
