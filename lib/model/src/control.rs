//! The answer of a control socket (the emperor's and the vassal's): one JSON
//! object per line.

use serde::{Deserialize, Serialize};

/// What a supervisor answers to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// A one-line reason when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The result.
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    /// A success carrying `data`.
    pub fn ok(data: serde_json::Value) -> Response {
        Response {
            ok: true,
            error: None,
            data,
        }
    }

    /// A failure with a one-line reason.
    pub fn err(reason: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(reason.into()),
            data: serde_json::Value::Null,
        }
    }
}

/// The longest request line a server reads.
pub const LINE_MAX: usize = 64 * 1024;

/// Reads one request line: the request, or the answer that refuses it.
pub fn request<R: serde::de::DeserializeOwned>(line: &[u8]) -> Result<R, Response> {
    serde_json::from_slice(line).map_err(|e| Response::err(format!("bad request: {e}")))
}

/// An answer as it goes on the wire: one JSON object and a newline.
pub fn line(resp: &Response) -> Vec<u8> {
    let mut out = serde_json::to_vec(resp).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Whom a client talks to, as its messages name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// "the emperor".
    pub name: &'static str,
    /// What its absence is called: "is not running".
    pub absent: &'static str,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Why a client got no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// Nothing listens on the socket.
    #[error("{who} {absent} (no control socket at {path})", absent = who.absent)]
    NotRunning {
        /// Whom.
        who: Peer,
        /// The socket.
        path: String,
    },
    /// The conversation broke.
    #[error("talking to {who} at {path}: {err}")]
    Io {
        /// Whom.
        who: Peer,
        /// The socket.
        path: String,
        /// The error.
        #[source]
        err: std::io::Error,
    },
}

/// Sends one request line to `who` at `socket` and reads the answer line;
/// `timeout` bounds each read and write (`None`: wait, for requests that
/// last as long as a shutdown).
pub fn call<R: Serialize>(
    who: Peer,
    socket: &std::path::Path,
    req: &R,
    timeout: Option<std::time::Duration>,
) -> Result<Response, CallError> {
    use std::io::{BufRead, Write};
    let path = socket.display().to_string();
    let io = |err| CallError::Io {
        who,
        path: path.clone(),
        err,
    };
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            CallError::NotRunning {
                who,
                path: path.clone(),
            }
        }
        _ => io(e),
    })?;
    s.set_read_timeout(timeout).map_err(io)?;
    s.set_write_timeout(timeout).map_err(io)?;
    let mut out = serde_json::to_vec(req).map_err(|e| io(e.into()))?;
    out.push(b'\n');
    s.write_all(&out).map_err(io)?;
    let mut answer = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut answer)
        .map_err(io)?;
    if answer.is_empty() {
        return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    serde_json::from_str(&answer).map_err(|e| io(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_and_its_answer_on_a_real_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            let (s, _) = listener.accept().unwrap();
            let mut rd = std::io::BufReader::new(s.try_clone().unwrap());
            let mut got = Vec::new();
            rd.read_until(b'\n', &mut got).unwrap();
            let answer = match request::<serde_json::Value>(&got) {
                Ok(v) => Response::ok(v["cmd"].clone()),
                Err(refusal) => refusal,
            };
            (&s).write_all(&line(&answer)).unwrap();
        });
        let resp = call(
            Peer {
                name: "the test server",
                absent: "is gone",
            },
            &path,
            &serde_json::json!({"cmd": "status"}),
            Some(std::time::Duration::from_secs(5)),
        )
        .unwrap();
        server.join().unwrap();
        assert_eq!(resp, Response::ok(serde_json::json!("status")));

        let emperor = Peer {
            name: "the emperor",
            absent: "is not running",
        };
        let gone = call(emperor, &dir.path().join("none.sock"), &1, None).unwrap_err();
        assert_eq!(
            gone.to_string(),
            format!(
                "the emperor is not running (no control socket at {})",
                dir.path().join("none.sock").display()
            )
        );
        let bad = request::<serde_json::Value>(b"{not json").unwrap_err();
        assert!(bad.error.unwrap().starts_with("bad request: "));
    }
}
