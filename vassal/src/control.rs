//! The supervisor's control socket: one JSON request per line, one JSON
//! answer per line, like the emperor's.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A request from the tenant's CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Every process.
    Status,
    /// Start a stopped process (or run a job now).
    Start {
        /// The process.
        name: String,
    },
    /// Stop a process and keep it stopped.
    Stop {
        /// The process.
        name: String,
    },
    /// Stop and start a process (handing over when it can).
    Restart {
        /// The process.
        name: String,
    },
    /// Start a new instance beside the old one and hand over to it once it
    /// accepts; the old one keeps serving if the new one never does.
    Reload {
        /// The process.
        name: String,
    },
}

pub use model::control::Response;

/// Sends one request; the error is a one-line reason.
pub fn call(socket: &Path, req: &Request) -> Result<Response, String> {
    let mut s = UnixStream::connect(socket).map_err(|_| {
        format!(
            "the vassal supervisor is not reachable (no control socket at {})",
            socket.display()
        )
    })?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    s.write_all(&line)
        .map_err(|e| format!("talking to the supervisor: {e}"))?;
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .map_err(|e| format!("talking to the supervisor: {e}"))?;
    serde_json::from_str(&answer).map_err(|e| format!("talking to the supervisor: {e}"))
}
