//! `router`: one HTTP and HTTPS (SNI) router for every site.
//!
//! The emperor (the dominator) writes which site owns which domains and each
//! site's public key to `<run-dir>/router/dominion.json`; the router keeps a
//! copy in its state directory so that it routes after its own restart even
//! while the emperor is down. Tenants' apps subscribe their domains with signed
//! requests on `<run-dir>/router/subscribe.sock`.

pub mod access;
pub mod acme;
pub mod api;
pub mod conn;
pub mod h1;
pub mod metrics;
pub mod peer;
pub mod proxy;
pub mod routes;
pub mod tls;
pub mod verify;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;

/// The most a client's request head may take (hyper answers 431 past it).
pub const MAX_HEADERS: usize = 64 * 1024;

/// Settings of a router.
#[derive(Debug, Clone)]
pub struct Config {
    /// Plain HTTP listener.
    pub http: SocketAddr,
    /// HTTPS listener.
    pub https: SocketAddr,
    /// Shared with the emperor: `router/dominion.json`, `router/subscribe.sock`.
    pub run_dir: PathBuf,
    /// The router's own persistent state (its copy of the dominion).
    pub state_dir: PathBuf,
    /// How long a subscription lives unless refreshed.
    pub ttl: Duration,
    /// How long a client has for its TLS handshake, and for each request's headers.
    pub header_timeout: Duration,
    /// How long a client connection may sit with no request in flight.
    pub idle_timeout: Duration,
    /// How long a client may pause within a request body.
    pub body_timeout: Duration,
    /// Client connections open at once, in all (HTTP and HTTPS).
    pub max_connections: usize,
    /// Client connections open at once from one address.
    pub max_connections_per_ip: usize,
    /// Domains one site may have routed at once.
    pub max_routes_per_site: usize,
    /// Requests one site may have in flight at once, unless its `[limits]` say.
    pub max_requests_per_site: usize,
    /// Worker threads, each with its own event loop and its own listening
    /// sockets (`SO_REUSEPORT`): a connection lives on one thread.
    pub threads: usize,
    /// Plain HTTP/1.1 requests take the router's own path ([`h1`]); off,
    /// hyper's serves every request.
    pub own_http1: bool,
    /// Where `/metrics` is served (none: nowhere).
    pub metrics: Option<SocketAddr>,
    /// Certificates through ACME (none: off).
    pub acme: Option<acme::Settings>,
    /// The link to the other hosts' routers of a cluster (none: off).
    pub peer: Option<peer::Settings>,
}

impl Config {
    /// The defaults of `router serve` on these listeners and directories.
    pub fn new(
        http: SocketAddr,
        https: SocketAddr,
        run_dir: PathBuf,
        state_dir: PathBuf,
    ) -> Config {
        Config {
            http,
            https,
            run_dir,
            state_dir,
            ttl: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_connections: 20_000,
            max_connections_per_ip: 512,
            max_routes_per_site: routes::MAX_ROUTES_PER_SITE,
            max_requests_per_site: routes::MAX_REQUESTS_PER_SITE,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            own_http1: true,
            metrics: None,
            acme: None,
            peer: None,
        }
    }
}

/// Connections to the subscription API open at once, in all and per peer uid.
pub const API_MAX_CONNECTIONS: usize = 1024;
/// Connections to the subscription API open at once from one uid.
pub const API_MAX_CONNECTIONS_PER_UID: usize = 16;
/// Subscription requests one uid may make a second, sustained.
pub const API_RATE: f64 = 100.0;
/// Subscription requests one uid may make at once.
pub const API_BURST: f64 = 1000.0;
/// How long an API client has for its headers, and for its body.
pub const API_TIMEOUT: Duration = Duration::from_secs(5);

/// What every connection shares.
#[derive(Debug)]
pub struct State {
    /// The routes (and the certificates that go with them).
    pub routes: Arc<routes::Routes>,
    /// Nonces of the window.
    pub nonces: Mutex<verify::Nonces>,
    /// Idle connections to backends.
    /// Idle backend connections, one pool per worker thread (a connection's
    /// task runs on the thread that opened it).
    pub pools: Vec<proxy::Pool>,
    /// The same for the router's own HTTP/1.1 path ([`h1`]).
    pub raw_pools: Vec<proxy::Pool<h1::Upstream>>,
    /// Subscription requests per peer uid.
    pub api_rate: conn::Rate<u32>,
    /// How long a client may pause within a request body.
    pub body_timeout: Duration,
    /// The router's own counters (metrics).
    pub stats: metrics::Stats,
    /// Certificates through ACME, when on.
    pub acme: Option<Arc<acme::Acme>>,
    /// The port of the HTTPS listener (for redirects to it).
    pub https_port: u16,
    /// The TLS of the link to the other hosts' routers, when on.
    pub peering: Option<peer::Peering>,
}

fn dominion_path(run_dir: &Path) -> PathBuf {
    run_dir.join("router").join(model::layout::names::DOMINION)
}

fn saved_path(state_dir: &Path) -> PathBuf {
    state_dir.join(model::layout::names::ROUTER_COPY)
}

/// The largest dominion read (10,000 sites take about 3 MB).
const MAX_DOMINION: u64 = 64 << 20;

fn load<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_DOMINION)
        .read_to_end(&mut bytes)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Raises the soft limit of open files to the hard one, and says how many
/// client connections fit under it (leaving room for backends and files).
fn fit_connections(asked: usize) -> usize {
    let (soft, hard) = match rlimit_nofile() {
        Some(l) => l,
        None => return asked,
    };
    let soft = if soft < hard {
        if set_rlimit_nofile(hard) {
            hard
        } else {
            soft
        }
    } else {
        soft
    };
    // Each client may hold one backend connection too.
    let fit = (soft.saturating_sub(256) / 2) as usize;
    if fit < asked {
        tracing::warn!(
            asked,
            fit,
            "fewer client connections than asked fit under RLIMIT_NOFILE"
        );
    }
    asked.min(fit.max(16))
}

fn rlimit_nofile() -> Option<(u64, u64)> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()
}

thread_local! {
    /// Which worker thread this is (0: the one that runs `run`).
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl State {
    /// This worker thread's pool of idle backend connections.
    pub fn pool(&self) -> &proxy::Pool {
        let i = WORKER.with(std::cell::Cell::get);
        &self.pools[i.min(self.pools.len() - 1)]
    }

    /// This worker thread's pool of idle backend connections of [`h1`].
    pub fn raw_pool(&self) -> &proxy::Pool<h1::Upstream> {
        let i = WORKER.with(std::cell::Cell::get);
        &self.raw_pools[i.min(self.raw_pools.len() - 1)]
    }
}

/// A listening socket that others of the same address may share
/// (`SO_REUSEPORT`: the kernel spreads connections over the workers).
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

fn set_rlimit_nofile(to: u64) -> bool {
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, to, to).is_ok()
}

/// Runs the router until `shutdown` resolves.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let dir = cfg.run_dir.join("router");
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all(&cfg.state_dir)?;
    let dominion = load(&dominion_path(&cfg.run_dir))
        .or_else(|| load(&saved_path(&cfg.state_dir)))
        .unwrap_or_default();
    let routes = Arc::new(
        routes::Routes::new(dominion, cfg.ttl, cfg.max_routes_per_site)
            .with_max_requests(cfg.max_requests_per_site),
    );
    let acme = match &cfg.acme {
        Some(a) => Some(Arc::new(acme::Acme::load(a.clone(), &cfg.state_dir)?)),
        None => None,
    };
    let http = TcpListener::from_std(reuseport_listener(cfg.http)?)?;
    let https = TcpListener::from_std(reuseport_listener(cfg.https)?)?;
    // The other workers listen on the same addresses (the ports taken above
    // when asked for port 0).
    let (http_at, https_at) = (http.local_addr()?, https.local_addr()?);
    let certs = Arc::new(tls::SniCerts::new(routes.clone(), acme.clone())?);
    let state = Arc::new(State {
        routes,
        nonces: Mutex::new(verify::Nonces::default()),
        pools: (0..cfg.threads.max(1))
            .map(|_| proxy::Pool::default())
            .collect(),
        raw_pools: (0..cfg.threads.max(1))
            .map(|_| proxy::Pool::default())
            .collect(),
        api_rate: conn::Rate::new(API_RATE, API_BURST),
        body_timeout: cfg.body_timeout,
        stats: metrics::Stats::default(),
        acme: acme.clone(),
        https_port: https_at.port(),
        peering: match &cfg.peer {
            Some(p) => Some(peer::Peering::load(p).map_err(|e| anyhow::anyhow!("--peer: {e:#}"))?),
            None => None,
        },
    });
    let peer_listener = match &cfg.peer {
        Some(p) => Some(
            TcpListener::bind(p.listen)
                .await
                .map_err(|e| anyhow::anyhow!("--peer {}: {e}", p.listen))?,
        ),
        None => None,
    };

    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(certs);
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if acme.as_ref().is_some_and(|a| a.tls_alpn()) {
        tls.alpn_protocols.push(acme::ACME_TLS_ALPN.to_vec());
    }
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    let mut more = Vec::new();
    for _ in 1..cfg.threads.max(1) {
        more.push((reuseport_listener(http_at)?, reuseport_listener(https_at)?));
    }
    let sock = dir.join(model::layout::names::SUBSCRIBE_SOCKET);
    let _ = std::fs::remove_file(&sock);
    let api = UnixListener::bind(&sock)?;
    // Anyone in any container may call it: the signature says who it is.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666))?;
    let listen = serde_json::json!({ "http": http.local_addr()?.to_string(), "https": https.local_addr()?.to_string() });
    model::atomic::replace(
        &dir.join(model::layout::names::LISTEN),
        listen.to_string().as_bytes(),
        0o644,
    )?;
    let max = fit_connections(cfg.max_connections);
    tracing::info!(http = %http.local_addr()?, https = %https.local_addr()?, max_connections = max, "router ready");
    // Under systemd (`Type=notify`): ready once every listener is bound.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    tokio::spawn(watch_dominion(
        state.clone(),
        cfg.run_dir.clone(),
        cfg.state_dir.clone(),
    ));
    if let Some(acme) = acme {
        tokio::spawn(acme.run(state.routes.clone()));
    }
    let sweeper = state.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            sweeper.routes.sweep();
        }
    });
    let clients = conn::Limits::new(max, cfg.max_connections_per_ip);
    let cfg = Arc::new(cfg);
    tokio::spawn(serve_http(
        http,
        state.clone(),
        cfg.clone(),
        clients.clone(),
        None,
    ));
    tokio::spawn(serve_http(
        https,
        state.clone(),
        cfg.clone(),
        clients.clone(),
        Some(acceptor.clone()),
    ));
    tokio::spawn(serve_api(api, state.clone()));
    if let (Some(listener), Some(peering)) = (peer_listener, state.peering.clone()) {
        tracing::info!(peer = %listener.local_addr()?, "the other hosts' routers served");
        tokio::spawn(serve_peers(
            listener,
            peering,
            state.clone(),
            cfg.clone(),
            clients.clone(),
            acceptor.clone(),
        ));
    }
    if let Some(addr) = cfg.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("metrics address {addr}: {e}"))?;
        tracing::info!(metrics = %listener.local_addr()?, "metrics served");
        tokio::spawn(serve_metrics(listener, state.clone(), clients.clone()));
    }
    for (i, (http, https)) in more.into_iter().enumerate() {
        let (state, cfg, clients, acceptor) = (
            state.clone(),
            cfg.clone(),
            clients.clone(),
            acceptor.clone(),
        );
        std::thread::Builder::new()
            .name(format!("router-{}", i + 1))
            .spawn(move || {
                WORKER.with(|w| w.set(i + 1));
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "a worker thread could not start");
                        return;
                    }
                };
                rt.block_on(async move {
                    let (Ok(http), Ok(https)) =
                        (TcpListener::from_std(http), TcpListener::from_std(https))
                    else {
                        tracing::error!("a worker thread could not listen");
                        return;
                    };
                    tokio::join!(
                        serve_http(http, state.clone(), cfg.clone(), clients.clone(), None),
                        serve_http(https, state, cfg, clients, Some(acceptor)),
                    );
                });
            })?;
    }
    shutdown.await;
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

type ClientPermit = conn::Permit<IpAddr>;

async fn serve_http(
    listener: TcpListener,
    state: Arc<State>,
    cfg: Arc<Config>,
    limits: Arc<conn::Limits<IpAddr>>,
    tls: Option<TlsAcceptor>,
) {
    let what = if tls.is_some() { "https" } else { "http" };
    let mut backoff = conn::Backoff::default();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                backoff.failed(what, &e).await;
                continue;
            }
        };
        backoff.reset();
        // Over a cap: closed at once, before any byte is read.
        let Some(permit) = limits.admit(peer.ip()) else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (state, cfg, tls) = (state.clone(), cfg.clone(), tls.clone());
        tokio::spawn(async move {
            let mut tcp = tcp;
            let mut first = bytes::BytesMut::new();
            // In a cluster: a domain another host serves goes to its router.
            if state.routes.has_peers() {
                let named = tokio::time::timeout(
                    cfg.header_timeout,
                    peer::first_name(&mut tcp, &mut first, tls.is_some()),
                )
                .await;
                let Ok(name) = named else { return };
                if let Some(to) = name.and_then(|n| state.routes.elsewhere(&n)) {
                    if pass(&state, to, &mut tcp, &first, peer).await {
                        return;
                    }
                }
            }
            match tls {
                None => serve_client(tcp, first, false, permit, state, cfg, peer, "http").await,
                Some(acceptor) => {
                    let tcp = h1::Rewind::new(first, tcp);
                    serve_tls(tcp, &acceptor, permit, state, cfg, peer).await
                }
            }
        });
    }
}

/// Passes a client to the router of the host that serves its domain,
/// which it reached at `local`; false if it could not (then the client is
/// answered here: 503 for a host down or out of reach).
async fn pass(
    state: &State,
    to: routes::Elsewhere,
    tcp: &mut tokio::net::TcpStream,
    first: &[u8],
    client: SocketAddr,
) -> bool {
    let (Some(peering), Some(addr)) = (&state.peering, to.router) else {
        return false;
    };
    let local = tcp
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    match peering.connect(&to.host, addr, client, local).await {
        Ok(up) => {
            state.stats.passed(true);
            peer::splice(tcp, first, up).await;
            true
        }
        Err(e) => {
            if state.stats.passed(false).is_power_of_two() {
                tracing::warn!(host = %to.host, %addr, error = %e, "another host's router does not answer; its domains get 503");
            }
            false
        }
    }
}

/// A TLS client: the handshake (SNI picks the certificate), then its requests.
async fn serve_tls<T>(
    io: T,
    acceptor: &TlsAcceptor,
    permit: ClientPermit,
    state: Arc<State>,
    cfg: Arc<Config>,
    peer: SocketAddr,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(Ok(stream)) = tokio::time::timeout(cfg.header_timeout, acceptor.accept(io)).await else {
        return;
    };
    let alpn = stream.get_ref().1.alpn_protocol();
    // TLS-ALPN-01: the handshake was the answer; nothing follows.
    if alpn == Some(acme::ACME_TLS_ALPN) {
        return;
    }
    let h2 = alpn == Some(b"h2");
    serve_client(
        stream,
        bytes::BytesMut::new(),
        h2,
        permit,
        state,
        cfg,
        peer,
        "https",
    )
    .await
}

/// The other hosts' routers: each link (TLS, both certificates from the
/// cluster's CA) carries one client, named by its PROXY header, then the
/// client's own bytes, plain HTTP or TLS, served as on the public
/// listeners (and never passed on again).
async fn serve_peers(
    listener: TcpListener,
    peering: peer::Peering,
    state: Arc<State>,
    cfg: Arc<Config>,
    limits: Arc<conn::Limits<IpAddr>>,
    public: TlsAcceptor,
) {
    let mut backoff = conn::Backoff::default();
    // Links in all, before their certificate is checked: bounded as the
    // clients are (not per address: one host passes many clients).
    let links = conn::Limits::new(cfg.max_connections, cfg.max_connections);
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                backoff.failed("peer", &e).await;
                continue;
            }
        };
        backoff.reset();
        let Some(link_permit) = links.admit(from.ip()) else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (state, cfg, limits, public, acceptor) = (
            state.clone(),
            cfg.clone(),
            limits.clone(),
            public.clone(),
            peering.acceptor.clone(),
        );
        tokio::spawn(async move {
            let _link = link_permit;
            let opened = async {
                let mut link = acceptor.accept(tcp).await?;
                let client = peer::read_proxy(&mut link).await?;
                let mut first = bytes::BytesMut::with_capacity(4096);
                if link.read_buf(&mut first).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                Ok::<_, std::io::Error>((link, client, first))
            };
            let (link, client, first) = match tokio::time::timeout(cfg.header_timeout, opened).await
            {
                Ok(Ok(l)) => l,
                Ok(Err(e)) => {
                    tracing::debug!(%from, error = %e, "a peer link refused");
                    return;
                }
                Err(_) => return,
            };
            // The client's own caps, as if it had come here first.
            let Some(permit) = limits.admit(client.ip()) else {
                return;
            };
            // A TLS record of a handshake: the client's TLS, ended here.
            if first[0] == 0x16 {
                let link = h1::Rewind::new(first, link);
                serve_tls(link, &public, permit, state, cfg, client).await
            } else {
                serve_client(link, first, false, permit, state, cfg, client, "http").await
            }
        });
    }
}

/// One client connection, HTTP/1.1 (with upgrades) or HTTP/2, under the
/// idle timeout; `read`: its bytes already read.
#[allow(clippy::too_many_arguments)]
async fn serve_client<T>(
    io: T,
    read: bytes::BytesMut,
    h2: bool,
    permit: ClientPermit,
    state: Arc<State>,
    cfg: Arc<Config>,
    peer: SocketAddr,
    scheme: &'static str,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let client = Arc::new(proxy::Client::new(peer, scheme));
    let mut io = io;
    let mut read = read;
    if !h2 && cfg.own_http1 {
        match h1::serve(&mut io, &mut read, &state, &cfg, &client).await {
            h1::Next::Closed => return,
            h1::Next::Handoff => {}
        }
    }
    let io = h1::Rewind::new(read, io);
    let activity = conn::Activity::new();
    let io = TokioIo::new(conn::Tracked::new(io, activity.clone(), permit));
    let act = activity.clone();
    let svc = service_fn(move |req| {
        let in_flight = act.begin();
        proxy::handle(state.clone(), req, client.clone(), in_flight)
    });
    let grace = Duration::from_secs(5);
    if h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(128)
            .max_header_list_size(MAX_HEADERS as u32)
            .serve_connection(io, svc);
        conn::serve_until_idle(Box::pin(conn), &activity, cfg.idle_timeout, grace, |c| {
            c.get_mut().as_mut().graceful_shutdown()
        })
        .await;
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(cfg.header_timeout)
            .keep_alive(true)
            .max_header_size(MAX_HEADERS)
            .max_buf_size(MAX_HEADERS)
            .serve_connection(io, svc)
            .with_upgrades();
        conn::serve_until_idle(Box::pin(conn), &activity, cfg.idle_timeout, grace, |c| {
            c.get_mut().as_mut().graceful_shutdown()
        })
        .await;
    }
}

async fn serve_api(listener: UnixListener, state: Arc<State>) {
    let limits = conn::Limits::new(API_MAX_CONNECTIONS, API_MAX_CONNECTIONS_PER_UID);
    let mut backoff = conn::Backoff::default();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                backoff.failed("subscribe", &e).await;
                continue;
            }
        };
        backoff.reset();
        let Ok(uid) = stream.peer_cred().map(|c| c.uid()) else {
            continue;
        };
        // A uid over its rate is closed before any byte is read: refusing a
        // flood costs an accept and a close, not a parsed request each.
        if uid != 0 && !state.api_rate.has_left(&uid) {
            state.stats.sub_refused(metrics::SubRefusal::Rate);
            continue;
        }
        let Some(permit) = limits.admit(uid) else {
            state.stats.sub_refused(metrics::SubRefusal::Rate);
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| api::handle(state.clone(), req, uid));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(API_TIMEOUT)
                .max_header_size(MAX_HEADERS)
                .max_buf_size(MAX_HEADERS)
                .serve_connection(TokioIo::new(stream), svc);
            // Nothing an API call does takes long: a connection lives a bounded time.
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

/// `/metrics` for a Prometheus server: a few connections at once, a few
/// seconds each.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    clients: Arc<conn::Limits<std::net::IpAddr>>,
) {
    let places = Arc::new(tokio::sync::Semaphore::new(16));
    let mut backoff = conn::Backoff::default();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                backoff.failed("metrics", &e).await;
                continue;
            }
        };
        backoff.reset();
        let Ok(place) = places.clone().try_acquire_owned() else {
            continue;
        };
        let (state, clients) = (state.clone(), clients.clone());
        tokio::spawn(async move {
            let _place = place;
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (state, clients) = (state.clone(), clients.clone());
                async move {
                    let mut resp = if req.uri().path() != "/metrics" {
                        let mut r = hyper::Response::new(proxy::full("only /metrics here\n"));
                        *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                        r
                    } else {
                        let open = model::metrics::wants_openmetrics(
                            req.headers()
                                .get(hyper::header::ACCEPT)
                                .and_then(|v| v.to_str().ok()),
                        );
                        let text = metrics::render(&state, clients.total() as u64);
                        let (text, kind) = if open {
                            (text, model::metrics::OPENMETRICS)
                        } else {
                            (
                                model::metrics::prometheus_text(&text),
                                model::metrics::PROMETHEUS,
                            )
                        };
                        let mut r = hyper::Response::new(proxy::full(text));
                        r.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static(kind),
                        );
                        r
                    };
                    resp.headers_mut().insert(
                        hyper::header::CACHE_CONTROL,
                        hyper::header::HeaderValue::from_static("no-store"),
                    );
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .max_buf_size(MAX_HEADERS)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
        });
    }
}

/// Follows the dominator's file; every good version is also saved, so a
/// restarted router routes as before while the emperor is down.
async fn watch_dominion(state: Arc<State>, run_dir: PathBuf, state_dir: PathBuf) {
    let path = dominion_path(&run_dir);
    let peers_path = run_dir.join("router").join(model::layout::names::PEERS);
    // A file is replaced whole (a new inode): its inode and mtime tell a
    // new version even when two come within one tick of the clock.
    let version = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.ino(), m.modified().ok()))
    };
    let mut seen = None;
    let mut peers_seen = None;
    loop {
        // In a cluster: the other hosts' domains (gone: none).
        let mtime = version(&peers_path);
        if mtime != peers_seen {
            peers_seen = mtime;
            let peers = match mtime {
                None => Some(model::cluster::Peers::default()),
                Some(_) => load(&peers_path),
            };
            match peers {
                Some(p) => {
                    if !p.domains.is_empty() && state.peering.is_none() {
                        tracing::warn!("other hosts serve domains, and this router has no --peer link: they get 503 here");
                    }
                    tracing::info!(
                        domains = p.domains.len(),
                        routers = p.routers.len(),
                        moving = p.moving.len(),
                        "the other hosts' domains loaded"
                    );
                    let generation = p.generation;
                    state.routes.set_peers(p);
                    // The emperor waits for this before it freezes a moving
                    // site: from now on its domains answer 503 here.
                    let applied = run_dir
                        .join("router")
                        .join(model::layout::names::PEERS_APPLIED);
                    let said = generation.to_string();
                    if let Err(e) = model::atomic::replace(&applied, said.as_bytes(), 0o600) {
                        tracing::warn!(path = %applied.display(), error = %e, "could not say the peers were taken");
                    }
                }
                None => {
                    tracing::warn!(path = %peers_path.display(), "unreadable peers; keeping the last ones")
                }
            }
        }
        let mtime = version(&path);
        if mtime.is_some() && mtime != seen {
            seen = mtime;
            match load(&path) {
                Some(d) => {
                    let _ = model::atomic::write_json(&saved_path(&state_dir), &d, 0o644);
                    state.routes.set_dominion(d);
                    tracing::info!("dominion loaded");
                }
                None => {
                    tracing::warn!(path = %path.display(), "unreadable dominion; keeping the last one")
                }
            }
        }
        // Two stats every 50 ms: a move waits for this router to take its
        // 503s before it freezes the site.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
