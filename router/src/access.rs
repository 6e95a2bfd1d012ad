//! Each site's access log, handed to the site's own vassal: one datagram per
//! request to the socket `.access-log` in the site's socket directory, which
//! the vassal (the tenant) binds and appends to `~/logs/access.log`. The
//! router never opens a path in a tenant's home; the socket is opened like a
//! backend's (no symlink, owned by the site's uid). A line the vassal is too
//! slow for is dropped, never queued.

use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::routes::Backend;

/// The name the vassal binds in the site's socket directory (a backend's
/// name cannot start with a dot, so no backend can be it).
pub const SOCKET: &str = model::layout::names::ACCESS_LOG_SOCKET;

/// How long after a failed open the router tries again.
const RETRY: Duration = Duration::from_secs(1);

/// The longest line sent; longer ones are cut.
pub const MAX_LINE: usize = 2048;

/// One site's connection to its vassal's log socket.
#[derive(Debug, Default)]
pub struct Sink {
    state: Mutex<SinkState>,
}

#[derive(Debug, Default)]
struct SinkState {
    socket: Option<UnixDatagram>,
    retry_at: Option<Instant>,
    dropped: u64,
}

impl Sink {
    /// Sends one line (best effort). `via` is a backend of the site: its
    /// directory and uid say where the log socket is and who must own it.
    pub fn send(&self, via: &Backend, line: &[u8]) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        if s.socket.is_none() {
            if s.retry_at.is_some_and(|t| Instant::now() < t) {
                return;
            }
            match open(via) {
                Some(sock) => {
                    s.socket = Some(sock);
                    s.retry_at = None;
                }
                None => {
                    s.retry_at = Some(Instant::now() + RETRY);
                    return;
                }
            }
        }
        let Some(sock) = &s.socket else { return };
        match sock.send(line) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => s.dropped += 1,
            // The vassal went (restart, stop): open again later.
            Err(_) => {
                s.socket = None;
                s.retry_at = Some(Instant::now() + RETRY);
            }
        }
    }

    /// Whether a line would be sent now (the socket is open, or may be tried
    /// again): the router builds none for a site whose vassal has no log socket.
    pub fn wanted(&self) -> bool {
        self.state
            .lock()
            .map(|s| s.socket.is_some() || s.retry_at.is_none_or(|t| Instant::now() >= t))
            .unwrap_or(false)
    }

    /// Lines dropped because the vassal did not keep up.
    pub fn dropped(&self) -> u64 {
        self.state.lock().map(|s| s.dropped).unwrap_or(0)
    }
}

fn open(via: &Backend) -> Option<UnixDatagram> {
    let fd = crate::proxy::open_socket_at(&via.dir, SOCKET, via.uid).ok()?;
    let sock = UnixDatagram::unbound().ok()?;
    sock.set_nonblocking(true).ok()?;
    // Through the descriptor checked: the kernel connects to that inode.
    sock.connect(sys::fs::fd_path(fd.as_fd())).ok()?;
    Some(sock)
}

/// What is known of a request when it comes in.
#[derive(Debug)]
pub struct Request {
    peer: std::net::IpAddr,
    line: String,
    referer: String,
    agent: String,
    host: String,
    at: SystemTime,
    start: Instant,
}

/// A request's line and the headers the log shows, as they came.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    /// Its method.
    pub method: &'a str,
    /// Its target.
    pub target: &'a [u8],
    /// `HTTP/1.1` and so on.
    pub version: &'static str,
    /// Its `Referer`.
    pub referer: Option<&'a [u8]>,
    /// Its `User-Agent`.
    pub agent: Option<&'a [u8]>,
}

/// Writes `s` for a quoted field: `"` and `\` and bytes outside printable
/// ASCII as `\xHH`, as nginx does, so a client cannot forge a line.
fn quoted(s: &[u8], out: &mut String) {
    use std::fmt::Write;
    for &b in s {
        match b {
            b'"' | b'\\' => {
                let _ = write!(out, "\\x{b:02X}");
            }
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02X}");
            }
        }
    }
}

impl Request {
    /// Notes a request as it comes in.
    pub fn new<B>(req: &hyper::Request<B>, peer: std::net::IpAddr, host: &str) -> Request {
        let header = |name| req.headers().get(name).map(|v| v.as_bytes());
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let version = match req.version() {
            hyper::Version::HTTP_10 => "HTTP/1.0",
            hyper::Version::HTTP_2 => "HTTP/2.0",
            _ => "HTTP/1.1",
        };
        Request::of(
            Line {
                method: req.method().as_str(),
                target: target.as_bytes(),
                version,
                referer: header(hyper::header::REFERER),
                agent: header(hyper::header::USER_AGENT),
            },
            peer,
            host,
        )
    }

    /// Notes a request from its parts as they came.
    pub fn of(l: Line<'_>, peer: std::net::IpAddr, host: &str) -> Request {
        let field = |v: Option<&[u8]>| {
            let mut s = String::new();
            match v {
                Some(v) => quoted(v, &mut s),
                None => s.push('-'),
            }
            s
        };
        let mut line = String::new();
        quoted(l.method.as_bytes(), &mut line);
        line.push(' ');
        quoted(l.target, &mut line);
        line.push(' ');
        line.push_str(l.version);
        let mut h = String::new();
        quoted(host.as_bytes(), &mut h);
        Request {
            peer,
            line,
            referer: field(l.referer),
            agent: field(l.agent),
            host: h,
            at: SystemTime::now(),
            start: Instant::now(),
        }
    }

    /// The line in the combined format, then the host, the seconds taken and,
    /// for an answer the router made itself, why.
    pub fn finish(&self, status: u16, bytes: u64, error: Option<&str>) -> Vec<u8> {
        let secs = self
            .at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut out = format!(
            "{} - - [{}] \"{}\" {status} {bytes} \"{}\" \"{}\" host=\"{}\" time={:.3}",
            self.peer,
            clf_time(secs),
            self.line,
            self.referer,
            self.agent,
            self.host,
            self.start.elapsed().as_secs_f64(),
        );
        if let Some(e) = error {
            out.push_str(" router=\"");
            quoted(e.as_bytes(), &mut out);
            out.push('"');
        }
        let mut bytes = out.into_bytes();
        bytes.truncate(MAX_LINE - 1);
        bytes.push(b'\n');
        bytes
    }
}

/// `01/Dec/2026:09:00:00 +0000` for Unix seconds (UTC).
fn clf_time(secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_the_common_log_format() {
        assert_eq!(clf_time(0), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(clf_time(951_782_400), "29/Feb/2000:00:00:00 +0000");
        assert_eq!(clf_time(1_796_115_600), "01/Dec/2026:09:00:00 +0000");
    }

    #[test]
    fn a_client_cannot_forge_a_line() {
        let req = hyper::Request::builder()
            .uri("/a?b=%22")
            .header("user-agent", "x\" 200 0 \"\t1.2.3.4 - - fake")
            .body(())
            .unwrap();
        let r = Request::new(&req, "127.0.0.1".parse().unwrap(), "shop.test");
        let line = String::from_utf8(r.finish(502, 0, Some("no backend"))).unwrap();
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.ends_with("router=\"no backend\"\n"), "{line}");
        assert!(
            line.contains("\"x\\x22 200 0 \\x22\\x091.2.3.4 - - fake\""),
            "{line}"
        );
    }
}
