//! The router's own HTTP/1.1 path for the requests nearly every client
//! sends: a request head parsed in place (httparse), its small body read
//! whole, the head for the backend written in one go on a kept connection,
//! the answer's head parsed in place and its body copied through by its
//! framing (length, chunked, or to the close). One task per client
//! connection does all of it: no second state machine for the backend's
//! connection, no hand-off between tasks, one timer armed only when a read
//! has to wait.
//!
//! Anything else (an upgrade, `Expect`, a streamed or chunked request body,
//! HTTP/1.0, an absolute target, an unknown host, a suspended or moving site,
//! a site at its cap, a redirect to HTTPS, an ACME challenge, a head this
//! parser refuses) hands the connection, with the bytes read of that
//! request, to hyper's path for the rest of its life: every rule of the
//! router lives there, and this path only takes the requests it can answer
//! the same way.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use hyper::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proxy::{self, Client, Stream};
use crate::routes::{Backend, Pick, Route};
use crate::State;

/// Fields read in one request or answer head; a head with more goes to hyper.
const MAX_FIELDS: usize = 64;

/// The most read from a backend at once while copying an answer's body.
const CHUNK: usize = 64 * 1024;

/// The buffer a kept backend connection holds between requests.
const KEPT_BUF: usize = 8 * 1024;

/// How a client connection leaves this path.
#[derive(Debug)]
pub enum Next {
    /// Done: closed, timed out, or broken.
    Closed,
    /// To hyper's path, with the bytes read of the next request (in the buffer).
    Handoff,
}

/// A kept connection to a backend, with what was read from it.
#[derive(Debug)]
pub struct Upstream {
    io: Stream,
    buf: BytesMut,
}

impl proxy::Reusable for Upstream {
    fn is_closed(&self) -> bool {
        // Closed by the backend while idle (gunicorn after its keep-alive
        // time), or sending what no request asked for: not used again. No
        // system call unless the event loop saw the socket readable.
        let mut b = [0u8; 1];
        !matches!(self.io.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// A `Content-Length` value: digits only (`+5` or `5,5` are not lengths).
fn content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// A request this path forwards, made from its head.
struct Plan {
    /// The head's length in the client's buffer.
    head_len: usize,
    /// Its body's length (all of it read before it goes out).
    body_len: usize,
    /// The head (then the body) for the backend.
    out: Vec<u8>,
    host: String,
    pick: Pick,
    head_method: bool,
    idempotent: bool,
    /// The client keeps its connection after this answer.
    keep: bool,
    log: Option<proxy::Logged>,
}

/// What is done with one head of the client's.
enum Parsed {
    /// Forward it.
    Plan(Box<Plan>),
    /// hyper's path answers it.
    Other,
}

/// Serves requests on a client's HTTP/1.1 connection until it ends, or
/// until a request this path does not take (then [`Next::Handoff`] with
/// that request's bytes left in `buf`).
pub async fn serve<T>(
    io: &mut T,
    buf: &mut BytesMut,
    state: &Arc<State>,
    cfg: &crate::Config,
    client: &Client,
) -> Next
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut first = true;
    loop {
        // The first head within the header timeout; on a kept connection,
        // the next request's first byte within the idle timeout, then its
        // head within the header timeout.
        if !first && buf.is_empty() {
            buf.reserve(4096);
            match tokio::time::timeout(cfg.idle_timeout, io.read_buf(buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Next::Closed,
            }
        }
        first = false;
        let plan = match read_head(io, buf, cfg.header_timeout, |req, n| {
            plan(req, n, state, client)
        })
        .await
        {
            Some(Parsed::Plan(p)) => p,
            Some(Parsed::Other) => return Next::Handoff,
            None => return Next::Closed,
        };
        let Some(entered) = plan.pick.enter() else {
            // At its cap: hyper's path counts the refusal, answers 508 and
            // logs it (this path's note of the request is not sent).
            let mut plan = plan;
            if let Some(l) = &mut plan.log {
                l.passed_on = true;
            }
            return Next::Handoff;
        };
        match one(io, buf, *plan, state, cfg).await {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
                return Next::Closed;
            }
        }
        drop(entered);
    }
}

/// Reads until `buf` holds a whole request head (within `timeout`) and
/// hands it to `f`; `None` when the client closed, broke off or took too long.
async fn read_head<T, R>(
    io: &mut T,
    buf: &mut BytesMut,
    timeout: Duration,
    f: impl FnOnce(&httparse::Request<'_, '_>, usize) -> R,
) -> Option<R>
where
    T: AsyncRead + Unpin,
    R: From<Other>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = None;
    loop {
        if head_may_end(buf, &mut seen) {
            let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
            let mut req = httparse::Request::new(&mut fields);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(n)) => return Some(f(&req, n)),
                Ok(httparse::Status::Partial) if buf.len() < crate::MAX_HEADERS => {}
                // Too long, too many fields, malformed: hyper's path answers it.
                _ => return Some(Other.into()),
            }
        }
        buf.reserve(4096);
        match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// Whether to parse `buf` for a head now: at the first look (a head nearly
/// always comes in one read), then only once an empty line may have come
/// after the `*seen` bytes looked at before, or at the size limit. A head
/// sent a byte at a time is parsed a few times, not once a byte.
fn head_may_end(buf: &[u8], seen: &mut Option<usize>) -> bool {
    if buf.is_empty() {
        return false;
    }
    let Some(before) = seen.replace(buf.len()) else {
        return true;
    };
    let from = before.saturating_sub(2);
    buf.len() >= crate::MAX_HEADERS
        || memchr::memchr_iter(b'\n', &buf[from..])
            .any(|i| matches!(&buf[from + i + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
}

/// The request goes to hyper's path.
struct Other;

impl From<Other> for Parsed {
    fn from(_: Other) -> Parsed {
        Parsed::Other
    }
}

fn is(name: &str, what: &str) -> bool {
    name.eq_ignore_ascii_case(what)
}

/// The tokens of a `Connection` header.
fn tokens(v: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// Whether a field is not forwarded: hop-by-hop, or named by `Connection`.
fn hop_by_hop(name: &str, named: &[&[u8]]) -> bool {
    proxy::HOP_BY_HOP.iter().any(|h| is(name, h))
        || named
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
}

/// The names a `Connection` header lists beyond its own words, and whether
/// it says `close`.
fn connection_names<'h>(fields: &[httparse::Header<'h>]) -> (Vec<&'h [u8]>, bool) {
    let mut named = Vec::new();
    let mut close = false;
    for f in fields.iter().filter(|f| is(f.name, "connection")) {
        for t in tokens(f.value) {
            if t.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if !t.eq_ignore_ascii_case(b"keep-alive") && !t.is_empty() {
                named.push(t);
            }
        }
    }
    (named, close)
}

/// Makes the plan for a parsed head, or says it is for hyper's path.
fn plan(
    req: &httparse::Request<'_, '_>,
    head_len: usize,
    state: &State,
    client: &Client,
) -> Parsed {
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Other;
    };
    if method == "CONNECT" || !path.starts_with('/') {
        return Parsed::Other;
    }
    if client.scheme == "http"
        && state.acme.is_some()
        && path.starts_with("/.well-known/acme-challenge/")
    {
        return Parsed::Other;
    }
    let (named, close) = connection_names(req.headers);
    let mut host = None;
    let mut hosts = 0;
    let mut body_len = None;
    let mut forwarded_for = None;
    let (mut referer, mut agent) = (None, None);
    for f in req.headers.iter() {
        let n = f.name;
        if is(n, "host") {
            hosts += 1;
            host = std::str::from_utf8(f.value).ok();
        } else if is(n, "content-length") {
            match (body_len, content_length(f.value)) {
                (None, Some(l)) => body_len = Some(l),
                _ => return Parsed::Other,
            }
        } else if is(n, "transfer-encoding") || is(n, "upgrade") || is(n, "expect") {
            return Parsed::Other;
        } else if is(n, "x-forwarded-for") {
            forwarded_for.get_or_insert(f.value);
        } else if is(n, "referer") {
            referer = Some(f.value);
        } else if is(n, "user-agent") {
            agent = Some(f.value);
        }
    }
    let body_len = body_len.unwrap_or(0);
    let (Some(raw_host), 1) = (host, hosts) else {
        return Parsed::Other;
    };
    if body_len > proxy::REPLAY_BODY {
        return Parsed::Other;
    }
    let host = proxy::normal_host(raw_host);
    let now = std::time::Instant::now();
    let Route::Backends(pick) = state.routes.lookup_at(&host, now) else {
        return Parsed::Other;
    };
    if client.scheme == "http"
        && pick.redirects()
        && crate::tls::own_cert(&state.routes, state.acme.as_deref(), &host).is_some()
    {
        return Parsed::Other;
    }

    let mut out = Vec::with_capacity(head_len + 96 + body_len as usize);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for f in req.headers.iter() {
        if hop_by_hop(f.name, &named)
            || is(f.name, "x-forwarded-for")
            || is(f.name, "x-forwarded-proto")
        {
            continue;
        }
        out.extend_from_slice(f.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(f.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    if let Some(prev) = forwarded_for {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client.ip.as_bytes());
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    out.extend_from_slice(client.scheme.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");

    let log = {
        let (load, via) = pick.log();
        load.log.wanted().then(|| {
            let note = crate::access::Request::of(
                crate::access::Line {
                    method,
                    target: path.as_bytes(),
                    version: "HTTP/1.1",
                    referer,
                    agent,
                },
                client.addr.ip(),
                &host,
            );
            proxy::Logged::new(note, load, via)
        })
    };
    Parsed::Plan(Box::new(Plan {
        head_len,
        body_len: body_len as usize,
        out,
        host,
        pick,
        head_method: method == "HEAD",
        idempotent: hyper::Method::from_bytes(method.as_bytes())
            .is_ok_and(|m| proxy::idempotent(&m)),
        keep: !close,
        log,
    }))
}

/// Why an exchange with a backend failed.
#[derive(Debug)]
enum Broken {
    /// Before any byte of an answer came: the request may go again.
    Before,
    /// After: the answer is lost.
    After,
}

/// An answer's head, made for the client, and how its body ends.
#[derive(Debug)]
struct Answer {
    status: u16,
    out: Vec<u8>,
    body: Framing,
    /// The backend's connection may be kept after the body.
    keep_backend: bool,
}

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// It has none.
    Empty,
    /// After this many bytes.
    Length(u64),
    /// After its last chunk (copied as it is).
    Chunked,
    /// When the backend closes; sent to the client in chunks (`rechunk`), or
    /// as it is with the client's connection closed after.
    Close { rechunk: bool },
}

/// Answers one planned request: `Ok(true)` when the client's connection
/// goes on to its next request.
async fn one<T>(
    io: &mut T,
    buf: &mut BytesMut,
    mut plan: Plan,
    state: &Arc<State>,
    cfg: &crate::Config,
) -> io::Result<bool>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let t0 = std::time::Instant::now();
    let total = plan.head_len + plan.body_len;
    while buf.len() < total {
        buf.reserve(total - buf.len());
        match tokio::time::timeout(cfg.body_timeout, io.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Ok(false),
            Err(_) => {
                let text = "The request body did not come in time.";
                page(io, StatusCode::REQUEST_TIMEOUT, text, false, &mut plan).await?;
                return Ok(false);
            }
        }
    }
    plan.out.extend_from_slice(&buf[plan.head_len..total]);
    buf.advance(total);

    let mut backends = plan.pick.clone();
    let mut conn = pick(state, backends.iter(), true).await;
    let mut attempts = 1;
    let (backend, mut up, answer) = loop {
        let Some((backend, mut up, reused)) = conn else {
            let text = "The site's application is not answering.";
            page(io, StatusCode::BAD_GATEWAY, text, plan.keep, &mut plan).await?;
            return Ok(plan.keep);
        };
        let waiting = (!reused).then(|| state.raw_pool().waiting(&backend.path));
        let sent = tokio::time::timeout(
            proxy::RESPONSE_TIMEOUT,
            exchange(&mut up, &plan.out, io, plan.head_method, plan.keep),
        )
        .await;
        drop(waiting);
        match sent {
            Ok(Ok(a)) => break (backend, up, a),
            Err(_) => {
                let text = "The site's application did not answer in time.";
                page(io, StatusCode::GATEWAY_TIMEOUT, text, plan.keep, &mut plan).await?;
                return Ok(plan.keep);
            }
            Ok(Err(Broken::Before))
                if attempts < proxy::MAX_ATTEMPTS && (reused || plan.idempotent) =>
            {
                // Never answered (a kept connection the backend closed, as
                // uWSGI's `--http-socket` does after each answer): again on a
                // new connection, to the same backend first, then the next.
                if reused {
                    state.raw_pool().forget(&backend.path);
                }
                attempts += 1;
                if let Route::Backends(now) = state.routes.lookup(&plan.host) {
                    backends = now;
                }
                let failed = &backend.path;
                let same = backends.iter().filter(|b| b.path == *failed);
                let others = backends.iter().filter(|b| b.path != *failed);
                conn = pick(state, same.chain(others), false).await;
            }
            Ok(Err(_)) => {
                if reused {
                    state.raw_pool().forget(&backend.path);
                }
                let text = "The site's application failed to answer.";
                page(io, StatusCode::BAD_GATEWAY, text, plan.keep, &mut plan).await?;
                return Ok(plan.keep);
            }
        }
    };
    state.stats.observe(t0.elapsed());
    plan.pick.load().answered(answer.status);
    if let Some(l) = &mut plan.log {
        l.status = answer.status;
    }
    let keep = plan.keep && answer.body != Framing::Close { rechunk: false };
    let done = copy_body(
        io,
        &mut up,
        answer.out,
        answer.body,
        cfg.idle_timeout,
        &mut plan,
    )
    .await?;
    io.flush().await?;
    if done && answer.keep_backend && up.buf.is_empty() {
        // A kept connection holds a small buffer, not the largest body's.
        if up.buf.capacity() > KEPT_BUF {
            up.buf = BytesMut::with_capacity(KEPT_BUF);
        }
        state.raw_pool().put(&backend.path, up);
    }
    Ok(done && keep)
}

/// In turn from `order`: an idle connection (when `pooled`), else a new one;
/// a backend that refuses is skipped for this request only.
async fn pick<'a>(
    state: &State,
    order: impl Iterator<Item = &'a Arc<Backend>>,
    pooled: bool,
) -> Option<(Arc<Backend>, Upstream, bool)> {
    for backend in order {
        if let Some(up) = pooled
            .then(|| state.raw_pool().take(&backend.path))
            .flatten()
        {
            return Some((backend.clone(), up, true));
        }
        match proxy::connect_stream(backend).await {
            Ok(io) => {
                let up = Upstream {
                    io,
                    buf: BytesMut::with_capacity(KEPT_BUF),
                };
                return Some((backend.clone(), up, false));
            }
            Err(e) => {
                tracing::debug!(backend = %backend.path.display(), error = %e, "backend refused; trying the next")
            }
        }
    }
    None
}

/// Sends the request and reads the answer's head (interim answers are
/// passed to the client as they come).
async fn exchange<T>(
    up: &mut Upstream,
    req: &[u8],
    client: &mut T,
    head_method: bool,
    client_keeps: bool,
) -> Result<Answer, Broken>
where
    T: AsyncWrite + Unpin,
{
    up.io.write_all(req).await.map_err(|_| Broken::Before)?;
    up.buf.clear();
    let mut answered = false;
    let mut seen = None;
    loop {
        if head_may_end(&up.buf, &mut seen) {
            let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
            let mut resp = httparse::Response::new(&mut fields);
            match resp.parse(&up.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let code = resp.code.unwrap_or(0);
                    if (100..200).contains(&code) && code != 101 {
                        // 103 Early Hints and the like: to the client as they are.
                        let head = up.buf.split_to(n);
                        client.write_all(&head).await.map_err(|_| Broken::After)?;
                        answered = true;
                        seen = None;
                        continue;
                    }
                    let answer =
                        answer_head(&resp, head_method, client_keeps).ok_or(Broken::After)?;
                    up.buf.advance(n);
                    return Ok(answer);
                }
                Ok(httparse::Status::Partial) if up.buf.len() < crate::MAX_HEADERS => {}
                _ => return Err(Broken::After),
            }
        }
        up.buf.reserve(8192);
        let had = answered || !up.buf.is_empty();
        match up.io.read_buf(&mut up.buf).await {
            Ok(0) | Err(_) if had => return Err(Broken::After),
            Ok(0) | Err(_) => return Err(Broken::Before),
            Ok(_) => {}
        }
    }
}

/// The client's head for a backend's answer, and its framing (RFC 9112,
/// 6.3); `None` for an answer that cannot be passed on (a switch of
/// protocols not asked for, a length that is not one number).
fn answer_head(
    resp: &httparse::Response<'_, '_>,
    head_method: bool,
    client_keeps: bool,
) -> Option<Answer> {
    let code = resp.code?;
    if code == 101 || !(200..1000).contains(&code) {
        return None;
    }
    let (named, close) = connection_names(resp.headers);
    let mut length = None;
    let mut chunked = None;
    for f in resp.headers.iter() {
        if is(f.name, "content-length") {
            let l = content_length(f.value)?;
            if length.is_some_and(|n| n != l) {
                return None;
            }
            length = Some(l);
        } else if is(f.name, "transfer-encoding") {
            chunked = Some(
                tokens(f.value)
                    .next_back()
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")),
            );
        }
    }
    let body = if head_method || code == 204 || code == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::Close { rechunk: false },
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close { rechunk: true },
        }
    };
    let keep_backend = resp.version == Some(1) && !close && !matches!(body, Framing::Close { .. });
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(code).as_slice());
    out.push(b' ');
    match resp.reason.filter(|r| !r.is_empty()) {
        Some(r) => out.extend_from_slice(r.as_bytes()),
        None => out.extend_from_slice(
            StatusCode::from_u16(code)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("")
                .as_bytes(),
        ),
    }
    out.extend_from_slice(b"\r\n");
    for f in resp.headers.iter() {
        // A length beside a transfer coding is not one (RFC 9112, 6.1).
        if hop_by_hop(f.name, &named) || (chunked.is_some() && is(f.name, "content-length")) {
            continue;
        }
        out.extend_from_slice(f.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(f.value);
        out.extend_from_slice(b"\r\n");
    }
    if body == (Framing::Close { rechunk: true }) {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if !client_keeps || body == (Framing::Close { rechunk: false }) {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Some(Answer {
        status: code,
        out,
        body,
        keep_backend,
    })
}

/// A status code's three digits.
fn itoa3(code: u16) -> [u8; 3] {
    [
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]
}

/// Sends the answer's head and copies its body to the client; `Ok(true)`
/// once the body is whole (the backend's connection then ends clean).
async fn copy_body<T>(
    io: &mut T,
    up: &mut Upstream,
    mut out: Vec<u8>,
    framing: Framing,
    write_timeout: Duration,
    plan: &mut Plan,
) -> io::Result<bool>
where
    T: AsyncWrite + Unpin,
{
    let mut sent: u64 = 0;
    let mut chunks = Chunks::default();
    // What the backend sent with its head goes with the client's head.
    let mut left = match framing {
        Framing::Empty => 0,
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut first = true;
    let mut eof = false;
    loop {
        let take = match framing {
            Framing::Empty => 0,
            Framing::Length(_) => (left.min(up.buf.len() as u64)) as usize,
            Framing::Chunked => match chunks.feed(&up.buf) {
                Ok(Some(end)) => {
                    left = 0;
                    end
                }
                Ok(None) => up.buf.len(),
                Err(()) => return Ok(false),
            },
            Framing::Close { .. } => up.buf.len(),
        };
        let data = up.buf.split_to(take);
        sent += take as u64;
        if let Framing::Length(_) = framing {
            left -= take as u64;
        }
        if framing == (Framing::Close { rechunk: true }) {
            if !data.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            }
            if eof {
                out.extend_from_slice(b"0\r\n\r\n");
            }
        } else {
            out.extend_from_slice(&data);
        }
        if !out.is_empty() {
            match tokio::time::timeout(write_timeout, io.write_all(&out)).await {
                Ok(r) => r?,
                Err(_) => return Err(io::ErrorKind::TimedOut.into()),
            }
        }
        if let Some(l) = &mut plan.log {
            l.bytes = sent;
        }
        if left == 0 || eof {
            return Ok(left == 0 || matches!(framing, Framing::Close { .. }));
        }
        if first {
            first = false;
            out = Vec::with_capacity(CHUNK + 32);
        }
        out.clear();
        up.buf.reserve(CHUNK);
        match tokio::time::timeout(proxy::RESPONSE_TIMEOUT, up.io.read_buf(&mut up.buf)).await {
            Ok(Ok(0)) if matches!(framing, Framing::Close { .. }) => eof = true,
            Ok(Ok(n)) if n > 0 => {}
            // Broken off, or silent too long: the client's answer is cut.
            _ => return Ok(false),
        }
    }
}

/// Writes an answer the router made itself (and notes it for the site).
async fn page<T>(
    io: &mut T,
    status: StatusCode,
    text: &'static str,
    keep: bool,
    plan: &mut Plan,
) -> io::Result<()>
where
    T: AsyncWrite + Unpin,
{
    let body = proxy::page_html(status, text);
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n",
        body.len(),
        if keep { "" } else { "connection: close\r\n" },
    );
    plan.pick.load().answered(status.as_u16());
    if let Some(l) = &mut plan.log {
        l.status = status.as_u16();
        l.error = Some(text);
        l.bytes = body.len() as u64;
    }
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    io.write_all(&out).await?;
    io.flush().await
}

/// Finds where a chunked body ends, byte by byte as it passes (RFC 9112, 7.1).
#[derive(Debug, Default)]
struct Chunks {
    at: ChunkAt,
    size: u64,
    digits: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkAt {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    LineStart,
    Trailer,
    TrailerLf,
    EndLf,
}

impl Chunks {
    /// Reads on through `bytes`: `Ok(Some(n))` when the body ends after
    /// `n` of them, `Ok(None)` when it goes on, `Err` when it is not chunked.
    fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.at {
                ChunkAt::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).ok_or(())? as u64;
                        if self.size >> 56 != 0 {
                            return Err(());
                        }
                        self.size = self.size * 16 + d;
                        self.digits = true;
                    }
                    b';' | b' ' | b'\t' if self.digits => self.at = ChunkAt::Ext,
                    b'\r' if self.digits => self.at = ChunkAt::SizeLf,
                    _ => return Err(()),
                },
                ChunkAt::Ext => {
                    if b == b'\r' {
                        self.at = ChunkAt::SizeLf;
                    }
                }
                ChunkAt::SizeLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.at = if self.size == 0 {
                        ChunkAt::LineStart
                    } else {
                        ChunkAt::Data
                    };
                }
                ChunkAt::Data => {
                    let n = self.size.min((bytes.len() - i) as u64);
                    self.size -= n;
                    i += n as usize;
                    if self.size == 0 {
                        self.at = ChunkAt::DataCr;
                    }
                    continue;
                }
                ChunkAt::DataCr => {
                    if b != b'\r' {
                        return Err(());
                    }
                    self.at = ChunkAt::DataLf;
                }
                ChunkAt::DataLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.at = ChunkAt::Size;
                    self.digits = false;
                }
                ChunkAt::LineStart => {
                    self.at = if b == b'\r' {
                        ChunkAt::EndLf
                    } else {
                        ChunkAt::Trailer
                    };
                }
                ChunkAt::Trailer => {
                    if b == b'\r' {
                        self.at = ChunkAt::TrailerLf;
                    }
                }
                ChunkAt::TrailerLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.at = ChunkAt::LineStart;
                }
                ChunkAt::EndLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    return Ok(Some(i + 1));
                }
            }
            i += 1;
        }
        Ok(None)
    }
}

/// A client's stream with the bytes already read from it put back in front.
#[derive(Debug)]
pub struct Rewind<T> {
    before: BytesMut,
    inner: T,
}

impl<T> Rewind<T> {
    /// `inner`, read from `before` first.
    pub fn new(before: BytesMut, inner: T) -> Rewind<T> {
        Rewind { before, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if !self.before.is_empty() {
            let n = self.before.len().min(buf.remaining());
            buf.put_slice(&self.before[..n]);
            self.before.advance(n);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] =
        b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\n\r\n";

    #[test]
    fn a_chunked_body_ends_where_it_ends_however_it_is_cut() {
        let mut with_more = BODY.to_vec();
        with_more.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        for cut in 0..BODY.len() {
            let mut c = Chunks::default();
            let first = c.feed(&with_more[..cut]).unwrap();
            assert_eq!(first, None, "ended early at a cut at {cut}");
            let end = c.feed(&with_more[cut..]).unwrap();
            assert_eq!(end.map(|e| e + cut), Some(BODY.len()), "cut at {cut}");
        }
    }

    #[test]
    fn a_head_is_parsed_only_once_it_may_be_whole() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut seen = None;
        let looked: Vec<usize> = (1..=head.len())
            .filter(|n| head_may_end(&head[..*n], &mut seen))
            .collect();
        assert_eq!(
            looked,
            [1, head.len()],
            "the first look, then the whole head"
        );
        let mut seen = Some(0);
        assert!(
            head_may_end(b"GET / HTTP/1.1\n\n", &mut seen),
            "bare line ends"
        );
        let mut seen = Some(0);
        assert!(!head_may_end(b"GET / HTTP/1.1\r\nHost: a\r\n", &mut seen));
    }

    #[test]
    fn a_length_is_digits_only() {
        assert_eq!(content_length(b" 42 "), Some(42));
        for bad in [
            &b"+5"[..],
            b"-1",
            b"5,5",
            b"",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn what_is_not_chunked_is_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"4\r\nWikiXX",
            b"4\n",
            b"fffffffffffffffff\r\n",
        ] {
            assert!(Chunks::default().feed(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Any chunk sizes, cut anywhere: the end is found exactly; any
        /// bytes at all: no panic.
        #[test]
        fn chunked_bodies_of_any_shape_end_where_they_end(
            sizes in proptest::collection::vec(1usize..300, 0..8),
            cut in 0usize..4000,
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        ) {
            let mut body = Vec::new();
            for n in &sizes {
                body.extend_from_slice(format!("{n:X}\r\n").as_bytes());
                body.extend(std::iter::repeat_n(b'x', *n));
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n\r\n");
            let cut = cut.min(body.len() - 1);
            let mut c = Chunks::default();
            proptest::prop_assert_eq!(c.feed(&body[..cut]), Ok(None));
            proptest::prop_assert_eq!(c.feed(&body[cut..]), Ok(Some(body.len() - cut)));
            let _ = Chunks::default().feed(&noise);
        }
    }

    fn answer(raw: &[u8], head: bool, keeps: bool) -> Option<Answer> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut r = httparse::Response::new(&mut fields);
        assert!(r.parse(raw).unwrap().is_complete());
        answer_head(&r, head, keeps)
    }

    #[test]
    fn an_answer_is_framed_as_rfc_9112_says_and_its_hop_by_hop_fields_stay_behind() {
        let a = answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nSet-Cookie: a=b\r\n\r\n",
            false,
            true,
        )
        .unwrap();
        assert_eq!(a.body, Framing::Length(5));
        assert!(!a.keep_backend, "the backend said close");
        assert_eq!(
            a.out,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: a=b\r\n\r\n"
        );
        let a = answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
            true,
        )
        .unwrap();
        assert_eq!((a.body, a.keep_backend), (Framing::Chunked, true));
        let a = answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            true,
        )
        .unwrap();
        assert_eq!(a.body, Framing::Chunked);
        assert_eq!(
            a.out, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "no length beside a coding"
        );
        let a = answer(b"HTTP/1.0 200 OK\r\n\r\n", false, false).unwrap();
        assert_eq!(a.body, Framing::Close { rechunk: true });
        assert_eq!(
            a.out,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        let a = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true, true).unwrap();
        assert_eq!((a.body, a.keep_backend), (Framing::Empty, true));
        let a = answer(b"HTTP/1.1 304 Not Modified\r\n\r\n", false, true).unwrap();
        assert_eq!(a.body, Framing::Empty);
        assert!(answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            false,
            true
        )
        .is_none());
        assert!(answer(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false, true).is_none());
    }
}
