//! The real router on loopback: real TLS (a rustls client reads the peer
//! certificate), real backends on unix sockets, real signed subscriptions.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use e2e::wait_for;
use ed25519_dalek::{Signer, SigningKey};
use model::subscription::{Action, Dominion, Signed, SiteRoutes, Subscription};

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A backend on a unix socket: answers `<name>|<host>|<x-forwarded-proto>|<x-forwarded-for>`,
/// and echoes bytes after a websocket upgrade.
struct Backend {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    open: Arc<std::sync::Mutex<Vec<UnixStream>>>,
}

impl Backend {
    fn start(path: &Path, name: &'static str) -> Backend {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let open = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, count, streams) = (stop.clone(), accepted.clone(), open.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        count.fetch_add(1, Ordering::Relaxed);
                        streams.lock().unwrap().push(stream.try_clone().unwrap());
                        std::thread::spawn(move || serve_one(stream, name));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Backend {
            path: path.to_path_buf(),
            stop,
            accepted,
            open,
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // A dead backend: no listener, and its connections closed.
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.path);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn serve_one(stream: UnixStream, name: &str) {
    stream.set_nonblocking(false).unwrap();
    serve(BufReader::new(stream.try_clone().unwrap()), stream, name)
}

/// Answers requests on one connection (any transport): `name|host|proto|for`.
/// A request's line and fields, each without its line end (`None`: the
/// connection ended).
fn read_head_lines(r: &mut impl BufRead) -> Option<Vec<String>> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        if line == "\r\n" {
            return Some(head);
        }
        head.push(line.trim_end().to_owned());
    }
}

fn serve(mut r: impl BufRead, mut w: impl Write, name: &str) {
    // Requests one after another on the same connection (keep-alive).
    while let Some(headers) = read_head_lines(&mut r) {
        let get = |k: &str| {
            headers
                .iter()
                .find_map(|h| {
                    h.split_once(':')
                        .filter(|(n, _)| n.eq_ignore_ascii_case(k))
                        .map(|(_, v)| v.trim().to_owned())
                })
                .unwrap_or_default()
        };
        if get("upgrade").eq_ignore_ascii_case("websocket") {
            w.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").unwrap();
            let mut buf = [0u8; 1024];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if w.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        // A backend named slow-* takes its time.
        if name.starts_with("slow-") {
            std::thread::sleep(Duration::from_millis(1500));
        }
        // The request's body is read before the answer, as an application would.
        let length: usize = get("content-length").parse().unwrap_or(0);
        if length > 0 && r.read_exact(&mut vec![0u8; length]).is_err() {
            return;
        }
        let body = format!(
            "{name}|{}|{}|{}",
            get("host"),
            get("x-forwarded-proto"),
            get("x-forwarded-for")
        );
        // A backend named close-* answers one request per connection.
        let close = get("connection").eq_ignore_ascii_case("close") || name.starts_with("close-");
        let conn = if close { "Connection: close\r\n" } else { "" };
        if write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{conn}\r\n{body}",
            body.len()
        )
        .is_err()
            || close
        {
            return;
        }
    }
}

struct Site {
    name: &'static str,
    key: SigningKey,
    /// Who must own its backend sockets.
    uid: u32,
    /// Its cap on requests in flight, if not the router's default.
    requests: Option<u32>,
    /// Its own address (`tcp:PORT` backends), if it has one.
    address: Option<std::net::Ipv4Addr>,
}

impl Site {
    fn new(name: &'static str) -> Site {
        Site {
            name,
            key: SigningKey::from_bytes(&random::<32>()),
            uid: nix::unistd::geteuid().as_raw(),
            requests: None,
            address: None,
        }
    }

    fn public(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.key.verifying_key().to_bytes())
    }

    fn sign(&self, sub: &Subscription) -> Vec<u8> {
        let payload = serde_json::to_string(sub).unwrap();
        let signature = base64::engine::general_purpose::STANDARD
            .encode(self.key.sign(payload.as_bytes()).to_bytes());
        serde_json::to_vec(&Signed { payload, signature }).unwrap()
    }

    fn sub(&self, domain: &str, backend: &str) -> Subscription {
        Subscription {
            action: Action::Subscribe,
            site: self.name.to_owned(),
            domain: domain.to_owned(),
            backend: backend.to_owned(),
            weight: 1,
            cert: None,
            key: None,
            redirect: false,
            timestamp: now(),
            nonce: hex(&random::<16>()),
        }
    }
}

struct Router {
    dir: tempfile::TempDir,
    child: Option<Child>,
    http: String,
    https: String,
}

impl Router {
    fn dominion(dir: &Path, sites: &[(&Site, &[&str], bool)]) {
        let mut d = Dominion {
            schema_version: 1,
            ..Default::default()
        };
        for (s, domains, suspended) in sites {
            d.sites.insert(
                s.name.to_owned(),
                SiteRoutes {
                    public_key: s.public(),
                    domains: domains.iter().map(|x| x.to_string()).collect(),
                    sockets: dir.join("sockets").join(s.name).display().to_string(),
                    uid: Some(s.uid),
                    suspended: *suspended,
                    moving: Vec::new(),
                    requests: s.requests,
                    address: s.address,
                },
            );
        }
        let path = dir.join("run/router/dominion.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&d).unwrap()).unwrap();
        std::fs::rename(tmp, path).unwrap();
    }

    fn start(dir: tempfile::TempDir, ttl: &str) -> Router {
        Router::start_with(dir, ttl, &[])
    }

    fn start_with(dir: tempfile::TempDir, ttl: &str, extra: &[&str]) -> Router {
        Router::start_under(dir, ttl, extra, &[])
    }

    /// Started through `wrapper` (a command that runs the rest, as `prlimit ... --`).
    fn start_under(dir: tempfile::TempDir, ttl: &str, extra: &[&str], wrapper: &[&str]) -> Router {
        for s in ["site1", "site2"] {
            std::fs::create_dir_all(dir.path().join("sockets").join(s)).unwrap();
        }
        let listen = dir.path().join("run/router/listen.json");
        let _ = std::fs::remove_file(&listen);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("router.log"))
            .unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_router"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_router")),
        };
        let child = cmd
            .args([
                "serve",
                "--http",
                "127.0.0.1:0",
                "--https",
                "127.0.0.1:0",
                "--header-timeout",
                "1",
                "--ttl",
                ttl,
            ])
            .args(extra)
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let v: serde_json::Value =
            wait_for(Duration::from_secs(20), "the router to listen", || {
                serde_json::from_slice(&std::fs::read(&listen).ok()?).ok()
            });
        Router {
            http: v["http"].as_str().unwrap().to_owned(),
            https: v["https"].as_str().unwrap().to_owned(),
            dir,
            child: Some(child),
        }
    }

    fn stop(&mut self) -> tempfile::TempDir {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    fn socket(&self, site: &str, name: &str) -> PathBuf {
        self.dir.path().join("sockets").join(site).join(name)
    }

    /// POSTs a body to the subscription API; returns (status, answer).
    fn post(&self, body: &[u8]) -> (u16, serde_json::Value) {
        let mut s = UnixStream::connect(self.dir.path().join("run/router/subscribe.sock")).unwrap();
        write!(s, "POST /subscribe HTTP/1.1\r\nHost: router\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
        s.write_all(body).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text.split(' ').nth(1).unwrap().parse().unwrap();
        let json = text.split("\r\n\r\n").nth(1).unwrap();
        (status, serde_json::from_str(json).unwrap())
    }

    /// Another call of the subscription socket (`METHOD PATH`), as root: (status, body).
    fn call(&self, line: &str) -> (u16, String) {
        let mut s = UnixStream::connect(self.dir.path().join("run/router/subscribe.sock")).unwrap();
        write!(
            s,
            "{line} HTTP/1.1\r\nHost: router\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text.split(' ').nth(1).unwrap().parse().unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    fn subscribe(&self, site: &Site, sub: &Subscription) -> serde_json::Value {
        let (status, v) = self.post(&site.sign(sub));
        assert_eq!(status, 200, "{v}");
        v
    }

    /// A plain HTTP GET with this Host; returns (status, body).
    fn get(&self, host: &str) -> (u16, String) {
        let s = TcpStream::connect(&self.http).unwrap();
        request(s, host)
    }

    /// An HTTPS GET with SNI; returns (status, body, the certificate served).
    fn get_tls(&self, host: &str) -> (u16, String, Vec<u8>) {
        let (stream, cert) = tls_connect(&self.https, host);
        let (status, body) = request(stream, host);
        (status, body, cert)
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn request<S: Read + Write>(mut s: S, host: &str) -> (u16, String) {
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Accepts any certificate: the tests compare the one served with the one subscribed.
#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_connect(addr: &str, sni: &str) -> (Tls, Vec<u8>) {
    tls_connect_alpn(addr, sni, &[b"http/1.1"])
}

/// A TLS connection offering these protocols (ALPN); returns it and the certificate served.
fn tls_connect_alpn(addr: &str, sni: &str, alpn: &[&[u8]]) -> (Tls, Vec<u8>) {
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AcceptAny))
    .with_no_client_auth();
    let mut cfg = cfg;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(addr).unwrap());
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    let cert = tls.conn.peer_certificates().unwrap()[0].to_vec();
    (tls, cert)
}

/// A self-signed certificate for these names: (chain PEM, key PEM, DER).
fn cert(names: &[&str]) -> (String, String, Vec<u8>) {
    let c =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    (
        c.cert.pem(),
        c.key_pair.serialize_pem(),
        c.cert.der().to_vec(),
    )
}

/// A router with site1 owning `domains` and site2 owning other.org, started with `extra` flags.
fn setup_with(domains: &[&str], extra: &[&str]) -> (Router, Site, Site) {
    let dir = tempfile::tempdir().unwrap();
    let (s1, s2) = (Site::new("site1"), Site::new("site2"));
    Router::dominion(
        dir.path(),
        &[(&s1, domains, false), (&s2, &["other.org"], false)],
    );
    (Router::start_with(dir, "60", extra), s1, s2)
}

fn setup(ttl: &str) -> (Router, Site, Site) {
    let dir = tempfile::tempdir().unwrap();
    let (s1, s2) = (Site::new("site1"), Site::new("site2"));
    Router::dominion(
        dir.path(),
        &[
            (&s1, &["example.com", "*.example.com"], false),
            (&s2, &["other.org"], false),
        ],
    );
    (Router::start(dir, ttl), s1, s2)
}

#[test]
fn routes_by_host_and_serves_each_domain_its_certificate() {
    let (r, s1, s2) = setup("60");
    let _a = Backend::start(&r.socket("site1", "web.sock"), "a");
    let _o = Backend::start(&r.socket("site2", "app.sock"), "o");
    let (pem, key, der) = cert(&["example.com"]);
    let mut sub = s1.sub("example.com", "web.sock");
    sub.cert = Some(pem);
    sub.key = Some(key);
    let ans = r.subscribe(&s1, &sub);
    assert_eq!(ans["ttl"], 60);
    let (opem, okey, oder) = cert(&["other.org"]);
    let mut sub = s2.sub("other.org", "app.sock");
    sub.cert = Some(opem);
    sub.key = Some(okey);
    r.subscribe(&s2, &sub);

    let (status, body) = r.get("example.com");
    assert_eq!(
        (status, body.as_str()),
        (200, "a|example.com|http|127.0.0.1")
    );
    let (status, body, served) = r.get_tls("example.com");
    assert_eq!(
        (status, body.as_str()),
        (200, "a|example.com|https|127.0.0.1")
    );
    assert_eq!(served, der, "SNI example.com got another certificate");
    let (_, body, served) = r.get_tls("other.org");
    assert_eq!(served, oder);
    assert!(body.starts_with("o|other.org|https"));
    // Unknown: 404 on HTTP, the default certificate on HTTPS.
    assert_eq!(r.get("nobody.net").0, 404);
    let (status, _, served) = r.get_tls("nobody.net");
    assert_eq!(status, 404);
    assert!(served != der && served != oder);
    // A name under the wildcard the site owns, subscribed as such.
    r.subscribe(&s1, &s1.sub("*.example.com", "web.sock"));
    assert_eq!(
        r.get("shop.example.com").1,
        "a|shop.example.com|http|127.0.0.1"
    );
    // The routes as the router reports them: the site's own, with the
    // certificate's expiry (rcgen's default notAfter, 4096-01-01).
    let (status, text) = r.call("GET /routes?site=site1");
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let domains: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["domain"].as_str().unwrap())
        .collect();
    assert_eq!(domains, ["*.example.com", "example.com"], "{text}");
    assert_eq!(v[1]["backends"][0]["backend"], "web.sock", "{text}");
    assert!(v[1]["backends"][0]["expires_in"].as_u64().unwrap() <= 60);
    assert_eq!(v[1]["certificate_expires"], 67090118400_i64, "{text}");
    assert!(v[0].get("certificate_expires").is_none(), "{text}");
    assert_eq!(r.call("GET /routes?site=nobody").0, 404);
    assert_eq!(r.call("GET /routes").0, 404);
}

#[test]
fn http_redirect_sends_plain_http_to_https_once_a_certificate_is_served() {
    let (r, s1, _s2) = setup_with(&["red.test", "bare.test", "kept.test"], &[]);
    let _a = Backend::start(&r.socket("site1", "web.sock"), "a");
    let with_cert = |domain: &str, redirect: bool| {
        let (pem, key, _) = cert(&[domain]);
        let mut sub = s1.sub(domain, "web.sock");
        (sub.cert, sub.key, sub.redirect) = (Some(pem), Some(key), redirect);
        r.subscribe(&s1, &sub);
    };
    with_cert("red.test", true);
    with_cert("kept.test", false);
    // Asked, but nothing but the router's default certificate to show: served over HTTP.
    let mut bare = s1.sub("bare.test", "web.sock");
    bare.redirect = true;
    r.subscribe(&s1, &bare);

    let port = r.https.rsplit(':').next().unwrap();
    let text = r.raw("POST /cart?id=7 HTTP/1.1\r\nHost: Red.Test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 308"), "{text}");
    let location = format!("location: https://red.test:{port}/cart?id=7\r\n");
    assert!(text.to_ascii_lowercase().contains(&location), "{text}");
    // Over HTTPS it is served; the others are served over HTTP.
    assert_eq!(r.get_tls("red.test").0, 200);
    assert_eq!(
        r.get("kept.test"),
        (200, "a|kept.test|http|127.0.0.1".into())
    );
    assert_eq!(
        r.get("bare.test"),
        (200, "a|bare.test|http|127.0.0.1".into())
    );
    // Subscribed again without it: no more redirect.
    with_cert("red.test", false);
    assert_eq!(r.get("red.test").0, 200);
}

#[test]
fn a_new_certificate_replaces_the_old_and_a_broken_one_is_refused() {
    let (r, s1, _) = setup("60");
    let _a = Backend::start(&r.socket("site1", "web.sock"), "a");
    let (pem, key, der) = cert(&["example.com"]);
    let mut sub = s1.sub("example.com", "web.sock");
    sub.cert = Some(pem);
    sub.key = Some(key.clone());
    r.subscribe(&s1, &sub);
    assert_eq!(r.get_tls("example.com").2, der);

    let (pem2, key2, der2) = cert(&["example.com", "www.example.com"]);
    let mut sub = s1.sub("example.com", "web.sock");
    sub.cert = Some(pem2);
    sub.key = Some(key2);
    r.subscribe(&s1, &sub);
    assert_eq!(r.get_tls("example.com").2, der2, "no restart needed");

    // Wrong name, mismatched key, garbage: each refused, the last good one stays.
    let (wrong, wrong_key, _) = cert(&["evil.net"]);
    let (other_pem, _, _) = cert(&["example.com"]);
    for (c, k, why) in [
        (wrong, wrong_key, "does not cover example.com"),
        (other_pem, key, "certificate refused"),
        (
            "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n".to_owned(),
            "x".to_owned(),
            "certificate refused",
        ),
    ] {
        let mut sub = s1.sub("example.com", "web.sock");
        sub.cert = Some(c);
        sub.key = Some(k);
        let (status, ans) = r.post(&s1.sign(&sub));
        assert_eq!(status, 403);
        assert!(ans["error"].as_str().unwrap().contains(why), "{ans}");
        assert_eq!(r.get_tls("example.com").2, der2);
    }
}

#[test]
fn forged_stale_replayed_foreign_and_escaping_subscriptions_are_refused() {
    let (r, s1, s2) = setup("60");
    let refused = |body: Vec<u8>, why: &str| {
        let (status, ans) = r.post(&body);
        assert_eq!(status, 403, "{ans}");
        assert!(
            ans["error"].as_str().unwrap().contains(why),
            "{ans} lacks {why}"
        );
    };
    // site2's key claiming to be site1.
    refused(s2.sign(&s1.sub("example.com", "web.sock")), "bad signature");
    // A payload changed after signing.
    let mut signed: Signed =
        serde_json::from_slice(&s1.sign(&s1.sub("example.com", "web.sock"))).unwrap();
    signed.payload = signed.payload.replace("web.sock", "evil.sock");
    refused(serde_json::to_vec(&signed).unwrap(), "bad signature");
    let mut old = s1.sub("example.com", "web.sock");
    old.timestamp -= 3600;
    refused(s1.sign(&old), "timestamp");
    let once = s1.sign(&s1.sub("example.com", "web.sock"));
    assert_eq!(r.post(&once).0, 200);
    refused(once, "nonce already used");
    refused(
        s2.sign(&s2.sub("example.com", "app.sock")),
        "site2 does not own example.com",
    );
    refused(
        s1.sign(&s1.sub("a.b.example.com", "web.sock")),
        "does not own",
    );
    refused(
        s1.sign(&s1.sub("example.com", "../site2/app.sock")),
        "not a socket name",
    );
    refused(b"{\"payload\": 1}".to_vec(), "malformed");
    let (status, _) = r.post(&[0xff; 300]);
    assert_eq!(status, 403);
    // The router still serves.
    assert_eq!(
        r.get("example.com").0,
        502,
        "subscribed, but nothing listens on web.sock"
    );
}

#[test]
fn load_is_shared_by_weight_and_a_dead_backend_is_skipped_then_taken_back() {
    let (r, s1, _) = setup("60");
    let a = Backend::start(&r.socket("site1", "a.sock"), "a");
    let _b = Backend::start(&r.socket("site1", "b.sock"), "b");
    r.subscribe(&s1, &s1.sub("example.com", "a.sock"));
    let mut sub = s1.sub("example.com", "b.sock");
    sub.weight = 3;
    r.subscribe(&s1, &sub);
    let count = |n: usize| {
        let mut hits = (0, 0);
        for _ in 0..n {
            let (status, body) = r.get("example.com");
            assert_eq!(status, 200);
            if body.starts_with("a|") {
                hits.0 += 1
            } else {
                hits.1 += 1
            }
        }
        hits
    };
    assert_eq!(count(40), (10, 30), "weights 1 and 3");
    drop(a);
    assert_eq!(
        count(20),
        (0, 20),
        "a dead backend is skipped, no request fails"
    );
    let _a = Backend::start(&r.socket("site1", "a.sock"), "a");
    assert_eq!(count(40), (10, 30), "its return is picked up at once");
}

#[test]
fn routes_expire_unless_refreshed_and_unsubscribe_removes_them() {
    let (r, s1, _) = setup("1");
    let _a = Backend::start(&r.socket("site1", "a.sock"), "a");
    r.subscribe(&s1, &s1.sub("example.com", "a.sock"));
    assert_eq!(r.get("example.com").0, 200);
    wait_for(Duration::from_secs(5), "expiry", || {
        (r.get("example.com").0 == 404).then_some(())
    });
    r.subscribe(&s1, &s1.sub("example.com", "a.sock"));
    assert_eq!(r.get("example.com").0, 200);
    let mut un = s1.sub("example.com", "a.sock");
    un.action = Action::Unsubscribe;
    r.subscribe(&s1, &un);
    assert_eq!(r.get("example.com").0, 404);
}

#[test]
fn a_suspended_site_answers_503() {
    let (r, s1, s2) = setup("60");
    let _a = Backend::start(&r.socket("site1", "a.sock"), "a");
    r.subscribe(&s1, &s1.sub("example.com", "a.sock"));
    Router::dominion(
        r.dir.path(),
        &[(&s1, &["example.com"], true), (&s2, &["other.org"], false)],
    );
    wait_for(Duration::from_secs(5), "503", || {
        (r.get("example.com").0 == 503).then_some(())
    });
    let text = r.raw("GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 120"),
        "{text}"
    );
}

#[test]
fn a_client_that_never_finishes_its_headers_is_dropped_while_others_are_served() {
    let (r, s1, _) = setup("60");
    let _a = Backend::start(&r.socket("site1", "a.sock"), "a");
    r.subscribe(&s1, &s1.sub("example.com", "a.sock"));
    let mut slow = TcpStream::connect(&r.http).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: exa").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    assert_eq!(
        r.get("example.com").0,
        200,
        "served while a slow client waits"
    );
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    let waited = t.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "the slow client held on for {waited:?}"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
}

#[test]
fn websockets_pass_through_http_and_https() {
    let (r, s1, _) = setup("60");
    let _a = Backend::start(&r.socket("site1", "ws.sock"), "ws");
    let (pem, key, _) = cert(&["example.com"]);
    let mut sub = s1.sub("example.com", "ws.sock");
    sub.cert = Some(pem);
    sub.key = Some(key);
    r.subscribe(&s1, &sub);
    fn echo<S: Read + Write>(mut s: S) {
        s.write_all(b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        s.write_all(b"ping through the router").unwrap();
        let mut back = [0u8; 23];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping through the router");
    }
    echo(TcpStream::connect(&r.http).unwrap());
    echo(tls_connect(&r.https, "example.com").0);
}

#[test]
fn a_restarted_router_knows_the_sites_while_the_emperor_is_down() {
    let (mut r, s1, _) = setup("60");
    // The router has read the dominion: a subscription passes.
    r.subscribe(&s1, &s1.sub("example.com", "a.sock"));
    let dir = r.stop();
    // The emperor is gone: no dominion in the run directory any more.
    std::fs::remove_file(dir.path().join("run/router/dominion.json")).unwrap();
    let r = Router::start(dir, "60");
    let _a = Backend::start(&r.socket("site1", "a.sock"), "a");
    r.subscribe(&s1, &s1.sub("example.com", "a.sock"));
    assert_eq!(r.get("example.com").1, "a|example.com|http|127.0.0.1");
}

#[test]
fn connections_to_a_backend_are_reused() {
    let (r, s1, _) = setup("60");
    let a = Backend::start(&r.socket("site1", "a.sock"), "a");
    r.subscribe(&s1, &s1.sub("example.com", "a.sock"));
    for _ in 0..30 {
        // Each client connection is closed; the router's to the backend is kept.
        assert_eq!(r.get("example.com").0, 200);
    }
    let accepted = a.accepted.load(Ordering::Relaxed);
    assert!(
        accepted <= 3,
        "30 requests opened {accepted} backend connections"
    );
}

#[test]
fn a_moving_domain_answers_503_and_oversized_headers_are_refused() {
    let (r, s1, _) = setup("60");
    let _a = Backend::start(&r.socket("site1", "a.sock"), "a");
    r.subscribe(&s1, &s1.sub("example.com", "a.sock"));
    r.subscribe(&s1, &s1.sub("www.example.com", "a.sock"));
    // The dominator marks one domain as moving.
    let path = r.dir.path().join("run/router/dominion.json");
    let mut d: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    d["sites"]["site1"]["moving"] = serde_json::json!(["www.example.com"]);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&d).unwrap()).unwrap();
    std::fs::rename(tmp, &path).unwrap();
    let (status, body) = wait_for(Duration::from_secs(5), "503 while moving", || {
        let (s, b) = r.get("www.example.com");
        (s == 503).then_some((s, b))
    });
    assert_eq!(status, 503);
    assert!(body.contains("moving"), "{body}");
    assert_eq!(r.get("example.com").0, 200, "only the moving domain");

    // A request head past the limit is refused; the router goes on serving.
    let mut s = TcpStream::connect(&r.http).unwrap();
    let big = "x".repeat(100 * 1024);
    let _ = write!(
        s,
        "GET / HTTP/1.1\r\nHost: example.com\r\nX-Big: {big}\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    assert!(
        !text.starts_with("HTTP/1.1 200"),
        "an oversized head was served"
    );
    assert_eq!(r.get("example.com").0, 200);
}

#[test]
fn https_offers_h2_and_http11() {
    let (r, _, _) = setup("60");
    for (offer, want) in [
        (&[&b"h2"[..], &b"http/1.1"[..]][..], &b"h2"[..]),
        (&[&b"http/1.1"[..]][..], &b"http/1.1"[..]),
    ] {
        let (tls, _) = tls_connect_alpn(&r.https, "example.com", offer);
        assert_eq!(tls.conn.alpn_protocol(), Some(want));
    }
}

#[test]
fn hostile_an_idle_h2_connection_is_closed() {
    let (r, _, _) = setup_with(&["example.com"], &["--idle-timeout", "1"]);
    let (mut tls, _) = tls_connect_alpn(&r.https, "example.com", &[b"h2"]);
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
    // The client's preface and an empty SETTINGS frame, then nothing.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    tls.flush().unwrap();
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Its SETTINGS, then GOAWAY once idle, then the close (after a grace of 5 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = [0u8; 4096];
    let closed = loop {
        assert!(
            Instant::now() < deadline,
            "an idle h2 connection stayed open"
        );
        match tls.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break true,
        }
    };
    assert!(closed);
}

// ---- Hostile tenants and clients -------------------------------------------

/// A router whose site1 runs as a tenant uid (not the test's own), so that a
/// socket of root's is somebody else's.
fn hostile_setup(extra: &[&str]) -> (Router, Site, Site) {
    e2e::require_root();
    let dir = tempfile::tempdir().unwrap();
    let (mut s1, s2) = (Site::new("site1"), Site::new("site2"));
    s1.uid = 30_999;
    Router::dominion(
        dir.path(),
        &[
            (&s1, &["example.com", "*.example.com"], false),
            (&s2, &["other.org"], false),
        ],
    );
    let r = Router::start_with(dir, "60", extra);
    let sockets = r.dir.path().join("sockets/site1");
    std::os::unix::fs::chown(&sockets, Some(s1.uid), Some(s1.uid)).unwrap();
    (r, s1, s2)
}

/// A backend owned by `uid` (as a tenant's would be).
fn tenant_backend(path: &Path, name: &'static str, uid: u32) -> Backend {
    let b = Backend::start(path, name);
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
    b
}

#[test]
#[ignore = "root: chowns sockets to a tenant uid"]
fn hostile_the_router_connects_only_to_the_sites_own_sockets() {
    let (r, s1, _) = hostile_setup(&[]);
    // A server only root may reach, outside every site's directory.
    let secret_dir = r.dir.path().join("root-only");
    std::fs::create_dir(&secret_dir).unwrap();
    let secret = Backend::start(&secret_dir.join("root.sock"), "secret");
    let site = r.dir.path().join("sockets/site1");

    // A symlink to it, and a hard link of it (a socket anyone may write to
    // can be hard-linked by anyone): both subscribed, neither reached.
    std::os::unix::fs::symlink(&secret.path, site.join("link.sock")).unwrap();
    std::fs::hard_link(&secret.path, site.join("hard.sock")).unwrap();
    for name in ["link.sock", "hard.sock"] {
        r.subscribe(&s1, &s1.sub("example.com", name));
        assert_eq!(r.get("example.com").0, 502, "{name}");
        let mut un = s1.sub("example.com", name);
        un.action = Action::Unsubscribe;
        r.subscribe(&s1, &un);
    }
    assert_eq!(secret.accepted.load(Ordering::Relaxed), 0);

    // A race: the subscribed name flips between the tenant's own socket and a
    // link to root's, while requests run. Checked at every connect, the link
    // never wins.
    let own = tenant_backend(&site.join("own.sock"), "close-own", s1.uid);
    r.subscribe(&s1, &s1.sub("example.com", "web.sock"));
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (stop, site, secret) = (stop.clone(), site.clone(), secret.path.clone());
        let own = own.path.clone();
        std::thread::spawn(move || {
            let mut flips = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::remove_file(site.join("t1"));
                std::os::unix::fs::symlink(&secret, site.join("t1")).unwrap();
                std::fs::rename(site.join("t1"), site.join("web.sock")).unwrap();
                let _ = std::fs::remove_file(site.join("t2"));
                std::fs::hard_link(&own, site.join("t2")).unwrap();
                std::fs::rename(site.join("t2"), site.join("web.sock")).unwrap();
                flips += 1;
            }
            flips
        })
    };
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..400 {
        // A fresh backend connection each time: the pool would hide the race.
        r.get_pooled_off("example.com", &mut ok, &mut refused);
    }
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    assert_eq!(
        secret.accepted.load(Ordering::Relaxed),
        0,
        "root's socket reached ({ok} served, {refused} refused, {flips} flips)"
    );
    assert!(ok > 0 && flips > 100, "{ok} served, {flips} flips");
}

impl Router {
    /// What the router answers to these bytes on a new HTTP connection (read to its close).
    fn raw(&self, request: &str) -> String {
        let mut s = TcpStream::connect(&self.http).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text
    }

    /// A GET, counted as served or not.
    fn get_pooled_off(&self, host: &str, ok: &mut u32, refused: &mut u32) {
        let text = self.raw(&format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ));
        match text.split(' ').nth(1) {
            Some("200") => *ok += 1,
            _ => *refused += 1,
        }
    }
}

/// A TCP connection to `addr` from the loopback address `from`.
fn connect_from(from: &str, addr: &str) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &format!("{from}:0")
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.connect(&addr.parse::<std::net::SocketAddr>().unwrap().into())
        .unwrap();
    sock.into()
}

/// Whether the peer has closed `s` (EOF) before `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn hostile_idle_clients_are_capped_and_closed_while_a_neighbour_is_served() {
    let (r, s1, _) = setup_with(
        &["example.com"],
        &["--idle-timeout", "2", "--max-connections-per-ip", "20"],
    );
    let _a = Backend::start(&r.socket("site1", "a.sock"), "a");
    r.subscribe(&s1, &s1.sub("example.com", "a.sock"));

    // 60 connections from one address that send nothing, to both listeners.
    let mut idle: Vec<TcpStream> = (0..30)
        .flat_map(|_| {
            [
                connect_from("127.0.0.2", &r.http),
                connect_from("127.0.0.2", &r.https),
            ]
        })
        .collect();
    // One that finished a request and then sits on its keep-alive connection.
    let mut kept = connect_from("127.0.0.2", &r.http);
    write!(kept, "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n").unwrap();
    // A neighbour on another address is served meanwhile, over HTTP and HTTPS.
    assert_eq!(r.get("example.com").0, 200);
    assert_eq!(r.get_tls("example.com").0, 200);
    // Past the cap, the attacker's connections were closed at once.
    let over = idle
        .iter_mut()
        .map(|s| closed_within(s, Duration::from_millis(300)))
        .filter(|closed| *closed)
        .count();
    assert!(
        over >= 60 - 20,
        "only {over} of 60 closed at once with a cap of 20"
    );
    // The rest, and the kept one, within the timeouts (headers 1 s, idle 2 s).
    let t = Instant::now();
    for s in idle.iter_mut().chain([&mut kept]) {
        assert!(
            closed_within(s, Duration::from_secs(6)),
            "an idle connection still open after {:?}",
            t.elapsed()
        );
    }
    assert_eq!(r.get("example.com").0, 200);
}

#[test]
fn hostile_a_body_that_never_comes_and_two_hosts_are_refused() {
    let (r, s1, _) = setup_with(&["example.com"], &["--body-timeout", "1"]);
    let _a = Backend::start(&r.socket("site1", "a.sock"), "a");
    r.subscribe(&s1, &s1.sub("example.com", "a.sock"));

    let mut s = TcpStream::connect(&r.http).unwrap();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 100\r\n\r\nonly ten.."
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "held {:?}",
        t.elapsed()
    );
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");

    // Two Host headers: which site is meant is not guessed.
    let text = r
        .raw("GET / HTTP/1.1\r\nHost: example.com\r\nHost: other.org\r\nConnection: close\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");

    // The subscription API: headers, then no body; and more connections than one uid may hold.
    let api = r.dir.path().join("run/router/subscribe.sock");
    let mut s = UnixStream::connect(&api).unwrap();
    write!(
        s,
        "POST /subscribe HTTP/1.1\r\nHost: r\r\nContent-Length: 50\r\n\r\n{{"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let mut held: Vec<UnixStream> = (0..40)
        .map(|_| UnixStream::connect(&api).unwrap())
        .collect();
    let shut = held
        .iter_mut()
        .map(|s| {
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            matches!(s.read(&mut [0u8; 16]), Ok(0))
        })
        .filter(|shut| *shut)
        .count();
    assert!(
        shut >= 40 - 16,
        "{shut} of 40 API connections refused, cap 16 per uid"
    );
    drop(held);
    // The uid's own subscriptions still go through once it lets go.
    wait_for(Duration::from_secs(5), "the API to take a request", || {
        let (status, _) = r.post(&s1.sign(&s1.sub("example.com", "a.sock")));
        (status == 200).then_some(())
    });
}

#[test]
fn hostile_a_site_gets_a_bounded_number_of_backends_and_certificates_go_with_their_routes() {
    let (r, s1, _) = setup("2");
    for i in 0..16 {
        r.subscribe(&s1, &s1.sub("example.com", &format!("b{i}.sock")));
    }
    let (status, v) = r.post(&s1.sign(&s1.sub("example.com", "b16.sock")));
    assert_eq!(status, 403);
    assert!(v["error"].as_str().unwrap().contains("16 backends"), "{v}");

    // Certificates subscribed at the same time from two threads: none lost.
    let names: Vec<String> = (0..40).map(|i| format!("n{i}.example.com")).collect();
    let certs: Vec<(String, String, Vec<u8>)> = names.iter().map(|n| cert(&[n])).collect();
    let _b = Backend::start(&r.socket("site1", "c.sock"), "c");
    std::thread::scope(|sc| {
        for half in [0, 1] {
            let (r, s1, names, certs) = (&r, &s1, &names, &certs);
            sc.spawn(move || {
                for i in (half..names.len()).step_by(2) {
                    let mut sub = s1.sub(&names[i], "c.sock");
                    sub.cert = Some(certs[i].0.clone());
                    sub.key = Some(certs[i].1.clone());
                    r.subscribe(s1, &sub);
                }
            });
        }
    });
    for (n, c) in names.iter().zip(&certs) {
        assert_eq!(r.get_tls(n).2, c.2, "{n} serves its own certificate");
    }
    // Unrefreshed, the routes expire, and their certificates with them.
    wait_for(Duration::from_secs(10), "the routes to expire", || {
        names.iter().all(|n| r.get(n).0 == 404).then_some(())
    });
    for (n, c) in names.iter().zip(&certs).take(5) {
        assert_ne!(r.get_tls(n).2, c.2, "{n}'s certificate outlived its route");
    }
}

#[test]
fn hostile_random_request_heads_never_take_the_router_down() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let (r, s1, _) = setup("60");
    let _a = Backend::start(&r.socket("site1", "a.sock"), "a");
    r.subscribe(&s1, &s1.sub("example.com", "a.sock"));
    // Heads that are nearly right (the parser's edges) and bytes that are not.
    let token = "(GET|POST|HEAD|PUT|OPTIONS|CONNECT|PRI|[A-Z]{1,8}|[ -~]{0,6})";
    let target = "(/|\\*|/[ -~]{0,40}|http://[a-z.]{0,12}/|[^\r\n]{0,20})";
    let version = "(HTTP/1\\.1|HTTP/1\\.0|HTTP/2\\.0|HTTP/9|[ -~]{0,8})";
    let header = "([A-Za-z-]{1,12}|Host|Content-Length|Transfer-Encoding|Connection|Upgrade|Expect): ([ -~]{0,30}|chunked|-1|99999999999999999999|example\\.com|[a-z.]{0,10}:[0-9]{0,6})";
    let head = (
        token,
        target,
        version,
        proptest::collection::vec(header, 0..6),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(m, t, v, hs, tail)| {
            let mut b = format!("{m} {t} {v}\r\n").into_bytes();
            for h in hs {
                b.extend_from_slice(h.as_bytes());
                b.extend_from_slice(b"\r\n");
            }
            b.extend_from_slice(b"\r\n");
            b.extend_from_slice(&tail);
            b
        });
    let raw = proptest::collection::vec(any::<u8>(), 0..512);
    let mut runner = TestRunner::new(Config {
        cases: 2000,
        failure_persistence: None,
        ..Config::default()
    });
    let http = r.http.clone();
    runner
        .run(&prop_oneof![head, raw], |bytes| {
            let mut s = TcpStream::connect(&http).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(&bytes);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            Ok(())
        })
        .unwrap();
    assert_eq!(
        r.get("example.com").0,
        200,
        "still serving after 2000 hostile heads"
    );
}

#[test]
fn hostile_a_site_routes_a_bounded_number_of_names_under_its_wildcard() {
    let (r, s1, s2) = setup_with(&["*.example.com"], &["--max-routes-per-site", "2"]);
    r.subscribe(&s1, &s1.sub("a.example.com", "a.sock"));
    r.subscribe(&s1, &s1.sub("b.example.com", "a.sock"));
    // Refreshing a routed name is not a new one.
    r.subscribe(&s1, &s1.sub("a.example.com", "a.sock"));
    let (status, v) = r.post(&s1.sign(&s1.sub("c.example.com", "a.sock")));
    assert_eq!(status, 403);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("already routes 2 domains"),
        "{v}"
    );
    // Another site's budget is its own.
    r.subscribe(&s2, &s2.sub("other.org", "o.sock"));
}

// ---- Real application servers from Debian behind the router ----------------

/// A WSGI app that sets Content-Length (uWSGI's --http-socket then closes
/// after each answer without saying so), and answers `/slow` after a while.
const WSGI_APP: &str = r#"
import time
def application(env, start_response):
    if env.get("PATH_INFO") == "/slow":
        time.sleep(2)
    body = ("app|" + env.get("HTTP_HOST", "")).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#;

/// An application server in its own process group, killed with it.
struct AppServer(Child);

impl AppServer {
    /// `argv` run in `dir` (where app.py is), serving on `socket`.
    fn start(dir: &Path, socket: &Path, argv: &[&str]) -> AppServer {
        use std::os::unix::process::CommandExt;
        std::fs::write(dir.join("app.py"), WSGI_APP).unwrap();
        let log = std::fs::File::create(dir.join(format!("{}.log", argv[0]))).unwrap();
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .current_dir(dir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (scripts/install-deps installs it)", argv[0]));
        wait_for(Duration::from_secs(30), "the app server's socket", || {
            UnixStream::connect(socket).ok()
        });
        AppServer(child)
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(-(self.0.id() as i32));
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// What a bounded keep-alive load saw.
#[derive(Debug, Default)]
struct Load {
    /// Answers by status.
    statuses: std::collections::BTreeMap<u16, usize>,
    /// Times the router closed a client connection (or said it would).
    closed: usize,
}

impl Load {
    fn failed(&self) -> usize {
        self.statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }
}

/// One answer on a kept connection: (status, the router closes it).
fn read_answer(r: &mut BufReader<TcpStream>) -> Option<(u16, bool)> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status = line.split(' ').nth(1)?.parse().ok()?;
    let (mut length, mut close) = (0usize, false);
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            length = v.parse().ok()?;
        } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    r.read_exact(&mut vec![0u8; length]).ok()?;
    Some((status, close))
}

/// `clients` connections at once, each sending `each` GETs one after another
/// and opening a new connection only when the router closed the last.
fn keepalive_load(addr: &str, host: &str, clients: usize, each: usize) -> Load {
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (addr, host) = (addr.to_owned(), host.to_owned());
            std::thread::spawn(move || {
                let mut load = Load::default();
                let mut conn: Option<BufReader<TcpStream>> = None;
                for _ in 0..each {
                    let r = conn.get_or_insert_with(|| {
                        let s = TcpStream::connect(&addr).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                        BufReader::new(s)
                    });
                    let sent = write!(r.get_mut(), "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
                    match sent.ok().and_then(|_| read_answer(r)) {
                        Some((status, close)) => {
                            *load.statuses.entry(status).or_default() += 1;
                            if close {
                                load.closed += 1;
                                conn = None;
                            }
                        }
                        None => {
                            *load.statuses.entry(0).or_default() += 1;
                            load.closed += 1;
                            conn = None;
                        }
                    }
                }
                load
            })
        })
        .collect();
    let mut all = Load::default();
    for t in threads {
        let l = t.join().unwrap();
        for (s, n) in l.statuses {
            *all.statuses.entry(s).or_default() += n;
        }
        all.closed += l.closed;
    }
    all
}

/// The router in front of an application server started by `argv` on site1's web.sock.
fn behind_app_server(argv: &[&str]) {
    let (r, s1, _) = setup("60");
    let socket = r.socket("site1", "web.sock");
    let sock = socket.display().to_string();
    let argv: Vec<String> = argv.iter().map(|a| a.replace("{sock}", &sock)).collect();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let _app = AppServer::start(r.dir.path(), &socket, &argv);
    r.subscribe(&s1, &s1.sub("example.com", "web.sock"));
    assert_eq!(r.get("example.com"), (200, "app|example.com".into()));
    let load = keepalive_load(&r.http, "example.com", 32, 300);
    assert_eq!(
        (load.failed(), load.closed),
        (0, 0),
        "{argv:?}: every answer 2xx on connections the router kept open: {load:?}"
    );
}

#[test]
#[ignore = "needs uWSGI from Debian (scripts/install-deps)"]
fn no_failed_request_behind_uwsgi_http_socket() {
    behind_app_server(&[
        "uwsgi",
        "--plugin",
        "python3",
        "--http-socket",
        "{sock}",
        "--wsgi-file",
        "app.py",
        "--processes",
        "4",
        "--master",
        "--disable-logging",
    ]);
}

#[test]
#[ignore = "needs uWSGI from Debian (scripts/install-deps)"]
fn no_failed_request_behind_uwsgi_http11_socket() {
    behind_app_server(&[
        "uwsgi",
        "--plugin",
        "python3",
        "--http11-socket",
        "{sock}",
        "--wsgi-file",
        "app.py",
        "--processes",
        "4",
        "--disable-logging",
    ]);
}

#[test]
#[ignore = "needs gunicorn from Debian (scripts/install-deps)"]
fn no_failed_request_and_kept_client_connections_behind_gunicorn() {
    behind_app_server(&[
        "gunicorn",
        "--bind",
        "unix:{sock}",
        "--workers",
        "4",
        "app:application",
    ]);
}

#[test]
fn a_site_at_its_cap_of_requests_in_flight_gets_508_while_a_neighbour_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s1, s2) = (Site::new("site1"), Site::new("site2"));
    s1.requests = Some(4);
    Router::dominion(
        dir.path(),
        &[(&s1, &["example.com"], false), (&s2, &["other.org"], false)],
    );
    let r = Router::start(dir, "60");
    let _slow = Backend::start(&r.socket("site1", "slow.sock"), "slow-a");
    let _o = Backend::start(&r.socket("site2", "o.sock"), "o");
    r.subscribe(&s1, &s1.sub("example.com", "slow.sock"));
    r.subscribe(&s2, &s2.sub("other.org", "o.sock"));
    // Ten at once to the slow site: four in flight, six refused at once.
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let http = r.http.clone();
            std::thread::spawn(move || {
                let (status, _) = request(TcpStream::connect(&http).unwrap(), "example.com");
                (status, Instant::now())
            })
        })
        .collect();
    // Meanwhile the neighbour answers as usual.
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..20 {
        assert_eq!(r.get("other.org").0, 200);
    }
    let neighbour_done = Instant::now();
    let answers: Vec<(u16, Instant)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let count = |s: u16| answers.iter().filter(|(x, _)| *x == s).count();
    assert_eq!((count(200), count(508)), (4, 6), "{answers:?}");
    // The neighbour, and every refusal, came before the slow site's answers:
    // nothing waited behind the slow ones.
    let first_slow = answers
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, at)| *at)
        .min()
        .unwrap();
    assert!(
        neighbour_done < first_slow,
        "the neighbour waited for the slow site"
    );
    assert!(answers
        .iter()
        .filter(|(s, _)| *s == 508)
        .all(|(_, at)| *at < first_slow));
    // Once the slow ones are done, the site has its places back.
    assert_eq!(r.get("example.com").0, 200);
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks
        / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .unwrap()
            .unwrap() as f64
}

#[test]
fn hostile_a_router_out_of_descriptors_backs_off_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (s1, s2) = (Site::new("site1"), Site::new("site2"));
    Router::dominion(
        dir.path(),
        &[(&s1, &["example.com"], false), (&s2, &["other.org"], false)],
    );
    // 24 descriptors: about 14 are the router's own, so accept fails with
    // EMFILE after ten clients, before the connection cap (16) is reached.
    let r = Router::start_under(
        dir,
        "60",
        &["--threads", "1"],
        &["prlimit", "--nofile=24:24", "--"],
    );
    let _a = Backend::start(&r.socket("site1", "a.sock"), "a");
    r.subscribe(&s1, &s1.sub("example.com", "a.sock"));
    let pid = r.child.as_ref().unwrap().id();
    let cpu0 = cpu_secs(pid);
    // 40 clients that send nothing: the router runs out of descriptors and
    // the rest wait in the backlog until the header timeout (1 s) frees some.
    let idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(&r.http).unwrap())
        .collect();
    let log = r.dir.path().join("router.log");
    wait_for(
        Duration::from_secs(10),
        "accept to fail and back off",
        || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains("accept failed; backing off"))
        },
    );
    // Every idle client is closed in turn (the backlog drained as descriptors free up).
    for mut s in idle {
        assert!(closed_within(&mut s, Duration::from_secs(20)));
    }
    // And the router serves again.
    wait_for(Duration::from_secs(10), "a request served again", || {
        (r.get("example.com").0 == 200).then_some(())
    });
    // It waited, not spun: a loop retrying accept at once burns a core for
    // the whole time (several seconds here).
    let used = cpu_secs(pid) - cpu0;
    assert!(
        used < 1.0,
        "the router used {used:.2} s of CPU while out of descriptors"
    );
}

/// A backend on TCP, answering like the socket backends (named `tcp`).
fn tcp_backend(addr: &str) -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind(addr).unwrap();
    let at = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || serve(BufReader::new(s.try_clone().unwrap()), s, "tcp"));
        }
    });
    at
}

#[test]
fn a_tcp_backend_is_a_port_of_the_sites_own_address_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s1, s2) = (Site::new("site1"), Site::new("site2"));
    // site1's own address (a site's eth0 on a real host); site2 has none.
    s1.address = Some("127.0.0.2".parse().unwrap());
    Router::dominion(
        dir.path(),
        &[(&s1, &["example.com"], false), (&s2, &["other.org"], false)],
    );
    let r = Router::start(dir, "60");
    let port = tcp_backend("127.0.0.2:0").port();
    let ans = r.subscribe(&s1, &s1.sub("example.com", &format!("tcp:{port}")));
    assert_eq!(ans["ok"], true, "{ans}");
    assert_eq!(
        r.get("example.com"),
        (200, "tcp|example.com|http|127.0.0.1".into())
    );

    // Only a port: no address of the site's choosing, and no TCP without an address.
    for (site, domain, backend) in [
        (&s1, "example.com", "tcp:127.0.0.1:22".to_owned()),
        (&s1, "example.com", "tcp:0".to_owned()),
        (&s2, "other.org", format!("tcp:{port}")),
    ] {
        let (status, ans) = r.post(&site.sign(&site.sub(domain, &backend)));
        assert_eq!(status, 403, "{backend}: {ans}");
        assert!(
            ans["error"].as_str().unwrap().contains("nor tcp:PORT"),
            "{ans}"
        );
    }
    assert_eq!(r.get("other.org").0, 404);
}

/// `GET path` on a plain TCP address with these header lines: (status, body).
fn get_path(addr: &str, path: &str, headers: &str) -> (u16, String) {
    let (status, _, body) =
        e2e::http_exchange_with(addr, "m", path, headers, std::time::Duration::from_secs(10));
    (status, body)
}

#[test]
#[ignore = "needs Debian's prometheus package (promtool): run the README's test command"]
fn metrics_count_answers_by_site_and_pass_promtool() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (r, s1, _s2) = setup_with(&["example.com"], &["--metrics-listen", &addr]);
    let _a = Backend::start(&r.socket("site1", "web.sock"), "a");
    // Its certificate expires on 2031-05-17 (1936742400 s after the epoch).
    let mut params = rcgen::CertificateParams::new(vec!["example.com".to_owned()]).unwrap();
    params.not_after = rcgen::date_time_ymd(2031, 5, 17);
    let key = rcgen::KeyPair::generate().unwrap();
    let made = params.self_signed(&key).unwrap();
    let mut sub = s1.sub("example.com", "web.sock");
    sub.cert = Some(made.pem());
    sub.key = Some(key.serialize_pem());
    r.subscribe(&s1, &sub);
    for _ in 0..5 {
        assert_eq!(r.get("example.com").0, 200);
    }
    for _ in 0..3 {
        assert_eq!(r.get("nobody.net").0, 404);
    }
    // A forged call of the subscription API.
    assert_eq!(r.post(b"{\"not\": \"signed\"}").0, 403);
    let (status, text) = get_path(&addr, "/metrics", "");
    assert_eq!(status, 200);
    let value = |series: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    assert_eq!(
        value(r#"imperium_router_answers_total{site="site1",class="2xx"}"#),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        value("imperium_router_unknown_host_total"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value("imperium_router_subscriptions_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(r#"imperium_router_subscriptions_refused_total{reason="unverified"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(r#"imperium_router_in_flight{site="site1"}"#),
        Some(0.0),
        "{text}"
    );
    assert!(
        value("imperium_router_answer_start_seconds_count").unwrap() >= 8.0,
        "{text}"
    );
    assert!(value("imperium_router_connections").is_some(), "{text}");
    assert_eq!(
        value(r#"imperium_router_certificate_expiry_seconds{site="site1"}"#),
        Some(1936742400.0),
        "{text}"
    );
    // As Prometheus's own tool reads it.
    e2e::promtool_check(&text);
    // Every router series the example dashboard queries is served.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/grafana/imperium.json"),
    )
    .unwrap();
    let mut queried = 0;
    for word in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("imperium_router_") {
            queried += 1;
            let served = text
                .lines()
                .any(|l| l.split(['{', ' ']).next() == Some(word));
            assert!(
                served,
                "the dashboard queries {word}, which the router does not serve"
            );
        }
    }
    assert!(queried >= 3, "{queried}");
    let (_, open) = get_path(
        &addr,
        "/metrics",
        "Accept: application/openmetrics-text\r\n",
    );
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert_eq!(get_path(&addr, "/other", "").0, 404);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's pebble (a real ACME server, RFC 8555) on 127.0.0.1, validating
/// on the router's HTTP port, with pebble-challtestsrv as its DNS server
/// (every name is 127.0.0.1; nothing leaves the machine).
struct Pebble {
    children: Vec<Child>,
    dir: tempfile::TempDir,
    /// The directory URL.
    url: String,
    /// Pebble's own TLS certificate (the router trusts it with --acme-ca).
    tls_ca: PathBuf,
    management: u16,
    /// pebble-challtestsrv's management port (DNS answers to change).
    dns_admin: u16,
    /// External Account Binding required, with this key id and key (base64url).
    eab: Option<(String, String)>,
}

impl Pebble {
    /// Ports are chosen now; `start` runs it, once the router's HTTP port is known.
    fn new() -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let (port, management) = (free_port(), free_port());
        // A CA of the test's, and pebble's certificate from it (a
        // self-signed leaf is no trust anchor for webpki).
        let tls_ca = dir.path().join("ca.crt");
        let run = |args: &[&str]| {
            let made = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(made.status.success(), "openssl {args:?}: {made:?}");
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(&[
            &["req", "-x509"][..],
            &ec,
            &["-days", "2", "-subj", "/CN=imperium test CA"],
        ]
        .concat()
        .iter()
        .chain(&["-keyout", "ca.key", "-out", "ca.crt"])
        .copied()
        .collect::<Vec<_>>());
        run(&[
            &["req"][..],
            &ec,
            &["-subj", "/CN=127.0.0.1", "-keyout", "pebble.key"],
        ]
        .concat()
        .iter()
        .chain(&["-out", "pebble.csr"])
        .copied()
        .collect::<Vec<_>>());
        std::fs::write(
            dir.path().join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "pebble.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "pebble.crt",
        ]);
        Pebble {
            children: Vec::new(),
            url: format!("https://127.0.0.1:{port}/dir"),
            tls_ca,
            management,
            dns_admin: free_port(),
            eab: None,
            dir,
        }
    }

    /// Runs it, validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`.
    fn start(&mut self, http_port: u16, tls_port: u16) {
        let (dns, dns_admin) = (free_port(), self.dns_admin);
        let port = self.url.split(':').nth(2).unwrap().trim_end_matches("/dir");
        let cfg = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{}", self.management),
            "certificate": self.dir.path().join("pebble.crt"),
            "privateKey": self.dir.path().join("pebble.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": self.eab.is_some(),
            "externalAccountMACKeys": self.eab.iter().cloned().collect::<std::collections::HashMap<_, _>>(),
        }});
        let cfg_path = self.dir.path().join("pebble.json");
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let log = |name: &str| std::fs::File::create(self.dir.path().join(name)).unwrap();
        self.children.push(
            Command::new("pebble-challtestsrv")
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-dns01", &format!("127.0.0.1:{dns}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &format!("127.0.0.1:{dns_admin}")])
                .stdout(log("dns.log"))
                .stderr(log("dns.err"))
                .spawn()
                .expect("pebble-challtestsrv (Debian's pebble package)"),
        );
        self.children.push(
            Command::new("pebble")
                .arg("-config")
                .arg(&cfg_path)
                .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .stdout(log("pebble.log"))
                .stderr(log("pebble.err"))
                .spawn()
                .expect("pebble (Debian's pebble package)"),
        );
        // Both of its listeners: they come up one after the other.
        let management = self.management;
        wait_for(Duration::from_secs(20), "pebble to listen", || {
            TcpStream::connect(format!("127.0.0.1:{port}")).ok()?;
            TcpStream::connect(format!("127.0.0.1:{management}")).ok()
        });
    }

    /// The root pebble signs certificates with (it makes one at each start).
    fn root(&self) -> PathBuf {
        let path = self.dir.path().join("root.pem");
        let out = Command::new("curl")
            .args(["-s", "--cacert"])
            .arg(&self.tls_ca)
            .arg(format!("https://127.0.0.1:{}/roots/0", self.management))
            .arg("-o")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        path
    }

    /// The router's log and pebble's, for a failed wait.
    fn logs_with(&self, r: &Router) -> String {
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "router:\n{}\npebble:\n{}{}",
            read(r.dir.path().join("router.log")),
            read(self.dir.path().join("pebble.log")),
            read(self.dir.path().join("pebble.err"))
        )
    }

    /// Makes the DNS answer `host` with `ip` (instead of 127.0.0.1).
    fn resolve(&self, host: &str, ip: &str) {
        let body = serde_json::json!({ "host": format!("{host}."), "addresses": [ip] });
        let out = Command::new("curl")
            .args(["-s", "-f", "-X", "POST", "--data-binary", &body.to_string()])
            .arg(format!("http://127.0.0.1:{}/add-a", self.dns_admin))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    fn stop(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether an HTTPS client that trusts only `root` accepts `name` at `addr`.
fn verified(addr: &str, name: &str, root: &Path) -> bool {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-servername", name])
        .args(["-verify_hostname", name, "-verify_return_error", "-CAfile"])
        .arg(root)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    out.status.success()
        && String::from_utf8_lossy(&out.stdout).contains("Verify return code: 0 (ok)")
}

#[test]
#[ignore = "needs Debian's pebble package: run the README's test command"]
fn acme_certificates_for_subscribed_domains_from_a_real_acme_server() {
    let mut pebble = Pebble::new();
    let acme = ["--acme-directory", &pebble.url.clone(), "--acme-ca"];
    let ca = pebble.tls_ca.display().to_string();
    let extra: Vec<&str> = acme.iter().copied().chain([ca.as_str()]).collect();
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let extra: Vec<&str> = extra
        .into_iter()
        .chain(["--metrics-listen", &metrics])
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (s1, s2) = (Site::new("site1"), Site::new("site2"));
    let names = [
        "shop.test",
        "own.test",
        "*.shop.test",
        "fail.test",
        "renew.test",
        "again.test",
    ];
    Router::dominion(
        dir.path(),
        &[(&s1, &names, false), (&s2, &["other.org"], false)],
    );
    // A certificate got earlier, now in the last third of its life (12 days
    // long, 2 left): renewed once its domain is subscribed.
    let mut params = rcgen::CertificateParams::new(vec!["renew.test".to_owned()]).unwrap();
    let day = |d: i64| {
        rcgen::date_time_ymd(1970, 1, 1)
            + std::time::Duration::from_secs((now() as i64 / 86400 + d) as u64 * 86400)
    };
    params.not_before = day(-10);
    params.not_after = day(2);
    let key = rcgen::KeyPair::generate().unwrap();
    let old = params.self_signed(&key).unwrap();
    std::fs::create_dir_all(dir.path().join("state/acme/certs")).unwrap();
    std::fs::write(
        dir.path().join("state/acme/certs/renew.test.pem"),
        format!("{}{}", old.pem(), key.serialize_pem()),
    )
    .unwrap();
    let mut r = Router::start_with(dir, "60", &extra);
    let http_port: u16 = r.http.rsplit(':').next().unwrap().parse().unwrap();
    pebble.start(http_port, free_port());
    let root = pebble.root();
    let _a = Backend::start(&r.socket("site1", "web.sock"), "a");
    // A domain with no certificate of its own, one with the tenant's, a wildcard.
    r.subscribe(&s1, &s1.sub("shop.test", "web.sock"));
    let (own_pem, own_key, own_der) = cert(&["own.test"]);
    let mut own = s1.sub("own.test", "web.sock");
    own.cert = Some(own_pem);
    own.key = Some(own_key);
    r.subscribe(&s1, &own);
    r.subscribe(&s1, &s1.sub("*.shop.test", "web.sock"));
    // Refreshed while the order goes on (routes live 60 s here anyway).
    let logs = || pebble.logs_with(&r);
    e2e::wait_for_or(
        Duration::from_secs(60),
        "a certificate from pebble for shop.test",
        || verified(&r.https, "shop.test", &root).then_some(()),
        logs,
    );
    // Renewed: the planted certificate gives way to the CA's.
    r.subscribe(&s1, &s1.sub("renew.test", "web.sock"));
    e2e::wait_for_or(
        Duration::from_secs(60),
        "renew.test renewed by pebble",
        || verified(&r.https, "renew.test", &root).then_some(()),
        logs,
    );
    let (status, body, issued) = r.get_tls("shop.test");
    assert_eq!(
        (status, body.as_str()),
        (200, "a|shop.test|https|127.0.0.1")
    );
    // The tenant's own certificate is not replaced; the wildcard got none.
    assert_eq!(r.get_tls("own.test").2, own_der);
    assert!(!verified(&r.https, "x.shop.test", &root));
    let stored = std::fs::read_dir(r.dir.path().join("state/acme/certs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(
        stored.iter().map(String::as_str).collect::<Vec<_>>(),
        ["renew.test.pem", "shop.test.pem"]
    );
    let mode = std::fs::metadata(r.dir.path().join("state/acme/certs/shop.test.pem"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    // The router's report and metric of it.
    let (status, text) = r.call("GET /routes?site=site1");
    assert_eq!(status, 200, "{text}");
    let routes: serde_json::Value = serde_json::from_str(&text).unwrap();
    let shop = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["domain"] == "shop.test")
        .unwrap();
    assert_eq!(shop["certificate"], "acme", "{text}");
    // The wildcard: why it gets none, where `vassal status` shows it.
    let wild = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["domain"] == "*.shop.test")
        .unwrap();
    assert!(
        wild["acme_error"].as_str().unwrap().contains("a wildcard"),
        "{text}"
    );
    assert!(
        shop["issuer"].as_str().unwrap().contains("Pebble"),
        "{text}"
    );
    let not_after = shop["certificate_expires"].as_i64().unwrap();
    assert!(not_after > now() as i64 + 86400, "{text}");
    let (_, m) = get_path(&metrics, "/metrics", "");
    let line = format!(r#"imperium_router_certificate_expiry_seconds{{site="site1"}} {not_after}"#);
    assert!(m.contains(&line), "{line} in\n{m}");

    // A domain the CA cannot validate (its name points where nothing
    // answers): one failed order, then the router waits (a minute, then
    // failures squared), never a loop; the reason is reported.
    pebble.resolve("fail.test", "127.0.0.2");
    r.subscribe(&s1, &s1.sub("fail.test", "web.sock"));
    let failures = || {
        std::fs::read_to_string(r.dir.path().join("router.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("no certificate") && l.contains("fail.test"))
            .count()
    };
    e2e::wait_for_or(
        Duration::from_secs(60),
        "a failed order for fail.test",
        || (failures() == 1).then_some(()),
        logs,
    );
    let (_, text) = r.call("GET /routes?site=site1");
    assert!(text.contains("acme_error"), "{text}");
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        assert_eq!(failures(), 1, "a second order within the back-off");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A restart with the CA gone serves the stored certificate at once.
    pebble.stop();
    let dir = r.stop();
    let mut r = Router::start_with(dir, "60", &extra);
    r.subscribe(&s1, &s1.sub("shop.test", "web.sock"));
    assert_eq!(r.get_tls("shop.test").2, issued);
    assert!(verified(&r.https, "shop.test", &root));
    // The CA comes back with none of its state: the stored account is
    // unknown to it, so the router makes a new one and goes on.
    let http_port: u16 = r.http.rsplit(':').next().unwrap().parse().unwrap();
    pebble.start(http_port, free_port());
    let root = pebble.root();
    r.subscribe(&s1, &s1.sub("again.test", "web.sock"));
    wait_for(
        Duration::from_secs(60),
        "again.test from the reset CA",
        || verified(&r.https, "again.test", &root).then_some(()),
    );
    let log = std::fs::read_to_string(r.dir.path().join("router.log")).unwrap();
    assert!(log.contains("no longer knows the stored account"), "{log}");
    let _ = r.stop();
}

#[test]
#[ignore = "needs Debian's pebble package: run the README's test command"]
fn acme_tls_alpn_01_on_the_https_listener_with_an_external_account_binding() {
    use base64::Engine as _;
    let mut pebble = Pebble::new();
    // The CA ties accounts to a customer of its: a key id and an HMAC key.
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random::<48>());
    pebble.eab = Some(("kid-imperium".into(), key.clone()));
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("eab.key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let (url, ca, key_file) = (
        pebble.url.clone(),
        pebble.tls_ca.display().to_string(),
        key_file.display().to_string(),
    );
    let extra = [
        "--acme-directory",
        &url,
        "--acme-ca",
        &ca,
        "--acme-challenge",
        "tls-alpn-01",
        "--acme-eab-kid",
        "kid-imperium",
        "--acme-eab-key",
        &key_file,
    ];
    let s1 = Site::new("site1");
    Router::dominion(dir.path(), &[(&s1, &["alpn.test", "shop.test"], false)]);
    let mut r = Router::start_with(dir, "60", &extra);
    // HTTP-01 would be checked on a port where nothing listens: only the
    // HTTPS listener can prove the domain.
    let https_port: u16 = r.https.rsplit(':').next().unwrap().parse().unwrap();
    pebble.start(free_port(), https_port);
    let root = pebble.root();
    let _a = Backend::start(&r.socket("site1", "web.sock"), "a");
    r.subscribe(&s1, &s1.sub("alpn.test", "web.sock"));
    let logs = || pebble.logs_with(&r);
    e2e::wait_for_or(
        Duration::from_secs(60),
        "a certificate from pebble for alpn.test over tls-alpn-01",
        || verified(&r.https, "alpn.test", &root).then_some(()),
        logs,
    );
    assert_eq!(r.get_tls("alpn.test").0, 200);
    let log = std::fs::read_to_string(r.dir.path().join("router.log")).unwrap();
    let ready: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("challenge ready"))
        .collect();
    assert!(
        ready.len() == 1 && ready[0].contains("tls-alpn-01"),
        "{log}"
    );
    // Anyone else asking for acme-tls/1 (no order in flight for the name,
    // or a name the router does not route) gets no certificate at all.
    for name in ["alpn.test", "shop.test", "elsewhere.test"] {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &r.https, "-servername", name])
            .args(["-alpn", "acme-tls/1"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() && !text.contains("BEGIN CERTIFICATE"),
            "{name}: {text}"
        );
    }
    // The account was made with the binding (pebble refuses any without).
    let account: serde_json::Value = serde_json::from_slice(
        &std::fs::read(r.dir.path().join("state/acme/account.json")).unwrap(),
    )
    .unwrap();
    assert!(account["id"].as_str().is_some(), "{account}");
    let _ = r.stop();
}

/// A backend answering each path with another framing: `/length`,
/// `/chunked` (an extension and a trailer), `/close` (no length: the body
/// ends when it closes), `/head` (a HEAD's length with no body), `/304`,
/// `/hop` (hop-by-hop fields of its own), `/early` (103 first), `/echo` (the
/// request's fields and body as it got them).
fn framings_backend(path: &Path) -> Backend {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    std::thread::spawn(move || answer_framings(stream));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    Backend {
        path: path.to_path_buf(),
        stop,
        accepted: Default::default(),
        open: Default::default(),
    }
}

fn answer_framings(stream: UnixStream) {
    let mut r = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    while let Some(head) = read_head_lines(&mut r) {
        let (method, target) = {
            let mut p = head[0].split(' ');
            (p.next().unwrap().to_owned(), p.next().unwrap().to_owned())
        };
        let length: usize = head
            .iter()
            .find_map(|h| {
                h.strip_prefix("Content-Length: ")
                    .or(h.strip_prefix("content-length: "))
            })
            .map_or(0, |v| v.parse().unwrap());
        let mut body = vec![0u8; length];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let answer: Vec<u8> = match target.as_str() {
            "/length" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n".to_vec(),
            "/head" if method == "HEAD" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec(),
            "/304" => b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\n\r\n".to_vec(),
            "/hop" => b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            "/early" => b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nlater".to_vec(),
            "/echo" => {
                let mut text = head[1..].join("\n").into_bytes();
                text.extend_from_slice(b"\n\n");
                text.extend_from_slice(&body);
                let mut a = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", text.len()).into_bytes();
                a.extend_from_slice(&text);
                a
            }
            "/close" => {
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil ");
                std::thread::sleep(Duration::from_millis(50));
                let _ = w.write_all(b"close");
                return;
            }
            _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
        };
        if w.write_all(&answer).is_err() {
            return;
        }
    }
}

/// One answer on a kept connection, 1xx skipped: (status, fields in lower
/// case, body decoded).
fn read_full_answer(
    r: &mut impl BufRead,
    head_method: bool,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut fields = Vec::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            if h == "\r\n" {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            fields.push((k.to_ascii_lowercase(), v.trim().to_owned()));
        }
        if (100..200).contains(&status) {
            continue;
        }
        let field = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if head_method || status == 304 {
        } else if field("transfer-encoding").is_some_and(|v| v.ends_with("chunked")) {
            loop {
                let mut size = String::new();
                r.read_line(&mut size).unwrap();
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16).unwrap();
                if n == 0 {
                    // Trailer fields, then the empty line.
                    loop {
                        let mut t = String::new();
                        r.read_line(&mut t).unwrap();
                        if t == "\r\n" {
                            break;
                        }
                    }
                    break;
                }
                let mut chunk = vec![0u8; n + 2];
                r.read_exact(&mut chunk).unwrap();
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = field("content-length") {
            body = vec![0u8; n.parse().unwrap()];
            r.read_exact(&mut body).unwrap();
        } else {
            r.read_to_end(&mut body).unwrap();
        }
        return (status, fields, body);
    }
}

/// Every framing of an answer, hop-by-hop fields both ways, pipelined
/// requests, then a websocket on the same connection: the same through the
/// router's own HTTP/1.1 path and through hyper's (`--hyper-only`).
#[test]
fn both_http11_paths_pass_every_framing_on_one_kept_connection() {
    for extra in [&[][..], &["--hyper-only"][..]] {
        let (r, s1, _) = setup_with(&["example.com", "ws.example.com"], extra);
        let _b = framings_backend(&r.socket("site1", "f.sock"));
        r.subscribe(&s1, &s1.sub("example.com", "f.sock"));
        let s = TcpStream::connect(&r.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut rd = BufReader::new(s);
        let mut ask = |req: &str, head: bool| {
            w.write_all(req.as_bytes()).unwrap();
            read_full_answer(&mut rd, head)
        };
        let get = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: example.com\r\n\r\n");
        let field = |f: &[(String, String)], k: &str| {
            f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        };
        let path = if extra.is_empty() { "own" } else { "hyper" };

        let (st, _, body) = ask(&get("/length"), false);
        assert_eq!((st, body.as_slice()), (200, &b"hello"[..]), "{path}");
        let (st, _, body) = ask(&get("/chunked"), false);
        assert_eq!((st, body.as_slice()), (200, &b"Wikipedia"[..]), "{path}");
        let (st, f, body) = ask("HEAD /head HTTP/1.1\r\nHost: example.com\r\n\r\n", true);
        assert_eq!(
            (st, field(&f, "content-length").as_deref(), body.len()),
            (200, Some("5"), 0),
            "{path}"
        );
        let (st, f, _) = ask(&get("/304"), false);
        assert_eq!(
            (st, field(&f, "etag").as_deref()),
            (304, Some("\"e\"")),
            "{path}"
        );
        let (st, f, body) = ask(&get("/hop"), false);
        assert_eq!((st, body.as_slice()), (200, &b"ok"[..]), "{path}");
        assert_eq!(field(&f, "x-kept").as_deref(), Some("yes"), "{path}");
        for gone in ["x-secret", "keep-alive", "connection"] {
            assert_eq!(field(&f, gone), None, "{path}: {gone} reached the client");
        }
        let (st, _, body) = ask(&get("/early"), false);
        assert_eq!((st, body.as_slice()), (200, &b"later"[..]), "{path}");
        // The backend closes after this body: the client's connection stays.
        let (st, _, body) = ask(&get("/close"), false);
        assert_eq!((st, body.as_slice()), (200, &b"until close"[..]), "{path}");
        let (st, _, body) = ask(
            "POST /echo HTTP/1.1\r\nHost: example.com\r\nConnection: X-Mine\r\nX-Mine: 1\r\nKeep-Alive: 9\r\nX-Forwarded-For: 10.0.0.1\r\nContent-Length: 10\r\n\r\n0123456789",
            false,
        );
        let text = String::from_utf8(body).unwrap().to_ascii_lowercase();
        assert_eq!(st, 200, "{path}");
        assert!(
            text.contains("x-forwarded-for: 10.0.0.1, 127.0.0.1\n"),
            "{path}: {text}"
        );
        assert!(text.contains("x-forwarded-proto: http\n"), "{path}: {text}");
        assert!(
            !text.contains("x-mine") && !text.contains("keep-alive"),
            "{path}: {text}"
        );
        assert!(text.ends_with("\n\n0123456789"), "{path}: {text}");
        // Two requests in one write: two answers, in order.
        let two = format!("{}{}", get("/length"), get("/hop"));
        let (st, _, body) = ask(&two, false);
        assert_eq!((st, body.as_slice()), (200, &b"hello"[..]), "{path}");
        let (st, _, body) = read_full_answer(&mut rd, false);
        assert_eq!((st, body.as_slice()), (200, &b"ok"[..]), "{path}");
        drop(rd);
        drop(w);

        // A websocket after a plain request on one connection (the own
        // path hands the connection over with the bytes it read).
        let _e = Backend::start(&r.socket("site1", "ws.sock"), "e");
        r.subscribe(&s1, &s1.sub("ws.example.com", "ws.sock"));
        let mut s = TcpStream::connect(&r.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET / HTTP/1.1\r\nHost: ws.example.com\r\n\r\nGET /chat HTTP/1.1\r\nHost: ws.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").unwrap();
        let mut rd = BufReader::new(s.try_clone().unwrap());
        let (st, _, body) = read_full_answer(&mut rd, false);
        assert_eq!(
            (st, body.as_slice()),
            (200, &b"e|ws.example.com|http|127.0.0.1"[..]),
            "{path}"
        );
        let mut line = String::new();
        rd.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 101"), "{path}: {line}");
        while line != "\r\n" {
            line.clear();
            rd.read_line(&mut line).unwrap();
        }
        s.write_all(b"ping").unwrap();
        let mut echo = [0u8; 4];
        rd.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"ping", "{path}");
    }
}
