//! What the router says of a site's routes: `GET /routes?site=NAME` on its
//! subscription socket, asked as root.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use model::subscription::RouteReport;

/// How long the router has to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The largest answer read (10,000 domains fit well within).
const ANSWER_MAX: usize = 8 * 1024 * 1024;

/// The site's domains as the router routes them now: none when the router
/// does not know the site (a group, a stopped site) or no router runs; the
/// one-line reason when the router cannot be asked.
pub async fn of(socket: &Path, site: &str) -> Result<Vec<RouteReport>, String> {
    let ask = async {
        let stream = match tokio::net::UnixStream::connect(socket).await {
            Ok(s) => s,
            // No router runs here: nothing is routed.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(Vec::new())
            }
            Err(e) => return Err(format!("the router ({}): {e}", socket.display())),
        };
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("the router: {e}"))?;
        tokio::spawn(conn);
        let req = hyper::Request::get(format!("/routes?site={site}"))
            .header(hyper::header::HOST, "router")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("the router: {e}"))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), ANSWER_MAX)
            .collect()
            .await
            .map_err(|e| format!("the router's answer: {e}"))?
            .to_bytes();
        match status {
            hyper::StatusCode::OK => {
                serde_json::from_slice(&body).map_err(|e| format!("the router's answer: {e}"))
            }
            hyper::StatusCode::NOT_FOUND => Ok(Vec::new()),
            s => Err(format!(
                "the router answered {s}: {}",
                String::from_utf8_lossy(&body).trim()
            )),
        }
    };
    tokio::time::timeout(TIMEOUT, ask)
        .await
        .map_err(|_| format!("the router did not answer within {TIMEOUT:?}"))?
}
