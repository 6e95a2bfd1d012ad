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
    /// The result already written as JSON, in place of `data` (a large
    /// answer made straight from typed rows, never built as a `Value`).
    #[serde(skip)]
    pub raw: Option<Vec<u8>>,
}

impl Response {
    /// A success carrying `data`.
    pub fn ok(data: serde_json::Value) -> Response {
        Response {
            ok: true,
            error: None,
            data,
            raw: None,
        }
    }

    /// A success whose data is this JSON text, sent as it is.
    pub fn ok_raw(json: Vec<u8>) -> Response {
        Response {
            ok: true,
            error: None,
            data: serde_json::Value::Null,
            raw: Some(json),
        }
    }

    /// The data as a value (the raw text parsed, when that is what it holds).
    pub fn value(&self) -> serde_json::Value {
        match &self.raw {
            Some(raw) => serde_json::from_slice(raw).unwrap_or_default(),
            None => self.data.clone(),
        }
    }

    /// A failure with a one-line reason.
    pub fn err(reason: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(reason.into()),
            data: serde_json::Value::Null,
            raw: None,
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
    let mut out = match &resp.raw {
        Some(raw) => {
            let mut out = Vec::with_capacity(raw.len() + 32);
            out.extend_from_slice(br#"{"ok":true,"data":"#);
            out.extend_from_slice(raw);
            out.push(b'}');
            out
        }
        None => serde_json::to_vec(resp).unwrap_or_default(),
    };
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
    let answer = call_line(who, socket, req, timeout)?;
    serde_json::from_str(&answer).map_err(|e| CallError::Io {
        who,
        path: socket.display().to_string(),
        err: e.into(),
    })
}

/// The data of a successful answer line, as the server wrote it (`None`:
/// a refusal, or not a line of [`line`]'s).
pub fn ok_data(answer: &str) -> Option<&str> {
    answer
        .trim_end()
        .strip_prefix(r#"{"ok":true,"data":"#)?
        .strip_suffix('}')
}

/// [`call`], the answer line as it came.
pub fn call_line<R: Serialize>(
    who: Peer,
    socket: &std::path::Path,
    req: &R,
    timeout: Option<std::time::Duration>,
) -> Result<String, CallError> {
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
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_written_ahead_reads_back_as_the_same_answer() {
        let data = serde_json::json!([{"name": "a\"b", "pid": 7}, {"name": "c", "usage": null}]);
        let raw = Response::ok_raw(serde_json::to_vec(&data).unwrap());
        let wire = line(&raw);
        assert_eq!(wire.last(), Some(&b'\n'));
        let back: Response = serde_json::from_slice(&wire).unwrap();
        assert_eq!(back, Response::ok(data.clone()));
        assert_eq!(raw.value(), data);
        assert_eq!(
            wire,
            line(&Response::ok(data.clone())),
            "the same bytes as a value's"
        );
        let text = String::from_utf8(wire).unwrap();
        let passed: serde_json::Value = serde_json::from_str(ok_data(&text).unwrap()).unwrap();
        assert_eq!(passed, data);
        let refused = String::from_utf8(line(&Response::err("no"))).unwrap();
        assert_eq!(ok_data(&refused), None);
    }

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
