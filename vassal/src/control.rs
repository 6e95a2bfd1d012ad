//! The supervisor's control socket: one JSON request per line, one JSON
//! answer per line, like the emperor's. The client side ([`call`]) and the
//! server's non-blocking reading of requests ([`Client`]).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

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

/// Sends one request to the supervisor and reads its answer (the one
/// JSON-lines protocol of `model::control`, shared with the emperor); the
/// error is a one-line reason.
pub fn call(socket: &Path, req: &Request) -> Result<Response, String> {
    let supervisor = model::control::Peer {
        name: "the vassal supervisor",
        absent: "is not reachable",
    };
    model::control::call(supervisor, socket, req, Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())
}

/// Clients of the control socket served at once (more are closed at accept).
pub const CONTROL_CLIENTS: usize = 16;
/// How long a client has to send its request line.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// A control-socket client whose request line is on its way: read as it
/// comes, so a client that sends nothing never holds PID 1's loop.
pub struct Client {
    stream: UnixStream,
    line: Vec<u8>,
    /// When it connected.
    pub since: Instant,
}

impl Client {
    /// A client just accepted (its socket made non-blocking).
    pub fn new(stream: UnixStream, since: Instant) -> Option<Client> {
        stream.set_nonblocking(true).ok()?;
        Some(Client {
            stream,
            line: Vec::new(),
            since,
        })
    }

    /// Its socket, to poll.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.stream)
    }

    /// The request line once it is all there; `Err` for a client that closed,
    /// failed or sent too much.
    pub fn read_line(&mut self) -> Option<Result<Vec<u8>, ()>> {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Some(Err(())),
                Ok(n) => {
                    self.line.extend_from_slice(&buf[..n]);
                    if let Some(end) = self.line.iter().position(|b| *b == b'\n') {
                        self.line.truncate(end);
                        return Some(Ok(std::mem::take(&mut self.line)));
                    }
                    if self.line.len() > model::control::LINE_MAX {
                        return Some(Err(()));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return Some(Err(())),
            }
        }
    }

    /// Sends the answer (a few KiB at most; a client that does not read it
    /// within a second loses it).
    pub fn reply(self, out: &[u8]) {
        let mut s = self.stream;
        let _ = s.set_nonblocking(false);
        let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = s.write_all(out);
    }
}
