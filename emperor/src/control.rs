//! The control socket: one JSON request per line, one JSON response per line.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// A request to the emperor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Every vassal's status.
    Status,
    /// Stop and start a vassal.
    Restart {
        /// The vassal.
        name: String,
    },
    /// Freeze a vassal (a group: with all its sites).
    Suspend {
        /// The vassal.
        name: String,
    },
    /// Thaw a vassal.
    Resume {
        /// The vassal.
        name: String,
    },
    /// The OCI spec of a vassal.
    Spec {
        /// The vassal.
        name: String,
    },
    /// Store a message among a vassal's notifications.
    Notify {
        /// The vassal.
        name: String,
        /// One line.
        message: String,
    },
    /// Delete the archived homes of a removed vassal.
    Purge {
        /// The vassal.
        name: String,
    },
    /// Stop every vassal, then the emperor.
    Shutdown,
}

pub use model::control::Response;

/// Why the CLI could not get an answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("the emperor is not running (no control socket at {0})")]
    NotRunning(String),
    /// The conversation broke.
    #[error("talking to the emperor at {path}: {err}")]
    Io {
        /// The socket.
        path: String,
        /// The error.
        #[source]
        err: std::io::Error,
    },
}

/// Sends one request and reads the response.
pub async fn call(socket: &Path, req: &Request) -> Result<Response, ClientError> {
    let path = socket.display().to_string();
    let io = |err| ClientError::Io {
        path: path.clone(),
        err,
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(path.clone())
            }
            _ => io(e),
        })?;
    let (rd, mut wr) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(|e| io(e.into()))?;
    line.push(b'\n');
    wr.write_all(&line).await.map_err(io)?;
    let mut answer = String::new();
    BufReader::new(rd)
        .read_line(&mut answer)
        .await
        .map_err(io)?;
    if answer.is_empty() {
        return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    serde_json::from_str(&answer).map_err(|e| io(e.into()))
}

#[cfg(test)]
mod tests {
    proptest::proptest! {
        #[test]
        fn any_request_line_is_parsed_or_refused_without_a_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..1024)) {
            let _ = serde_json::from_slice::<super::Request>(&bytes);
        }

        #[test]
        fn jsonish_requests_never_panic(cmd in "(status|restart|suspend|resume|spec|notify|purge|shutdown|[a-z]{0,8})", name in ".{0,40}", extra in "(, \"message\": \".{0,20}\")?") {
            let line = format!("{{\"cmd\": \"{cmd}\", \"name\": {name:?}{extra}}}");
            let _ = serde_json::from_str::<super::Request>(&line);
        }
    }
}
