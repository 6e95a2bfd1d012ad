//! `router`: one HTTP and HTTPS (SNI) router for every site.
//!
//! The emperor (the dominator) writes which site owns which domains and each
//! site's public key to `<run-dir>/router/dominion.json`; the router keeps a
//! copy in its state directory so that it routes after its own restart even
//! while the emperor is down. Tenants' apps subscribe their domains with signed
//! requests on `<run-dir>/router/subscribe.sock`.

pub mod api;
pub mod proxy;
pub mod routes;
pub mod tls;
pub mod verify;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use model::subscription::Dominion;
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
    /// How long a client has to send its request headers.
    pub header_timeout: Duration,
}

/// What every connection shares.
#[derive(Debug)]
pub struct State {
    /// The routes.
    pub routes: routes::Routes,
    /// The certificates.
    pub certs: Arc<tls::SniCerts>,
    /// Nonces of the window.
    pub nonces: Mutex<verify::Nonces>,
    /// Idle connections to backends.
    pub pool: proxy::Pool,
}

fn dominion_path(run_dir: &Path) -> PathBuf {
    run_dir.join("router").join("dominion.json")
}

fn saved_path(state_dir: &Path) -> PathBuf {
    state_dir.join("router-dominion.json")
}

fn load(path: &Path) -> Option<Dominion> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Runs the router until `shutdown` resolves.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let dir = cfg.run_dir.join("router");
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all(&cfg.state_dir)?;
    let dominion = load(&dominion_path(&cfg.run_dir))
        .or_else(|| load(&saved_path(&cfg.state_dir)))
        .unwrap_or_default();
    let certs = Arc::new(tls::SniCerts::new()?);
    let state = Arc::new(State {
        routes: routes::Routes::new(dominion, cfg.ttl),
        certs: certs.clone(),
        nonces: Mutex::new(verify::Nonces::default()),
        pool: proxy::Pool::default(),
    });

    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(certs);
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    let http = TcpListener::bind(cfg.http).await?;
    let https = TcpListener::bind(cfg.https).await?;
    let sock = dir.join("subscribe.sock");
    let _ = std::fs::remove_file(&sock);
    let api = UnixListener::bind(&sock)?;
    // Anyone in any container may call it: the signature says who it is.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666))?;
    let listen = serde_json::json!({ "http": http.local_addr()?.to_string(), "https": https.local_addr()?.to_string() });
    model::atomic::replace(
        &dir.join("listen.json"),
        listen.to_string().as_bytes(),
        0o644,
    )?;
    tracing::info!(http = %http.local_addr()?, https = %https.local_addr()?, "router ready");

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_HEADERS);
    let builder = Arc::new(builder);

    tokio::spawn(watch_dominion(
        state.clone(),
        cfg.run_dir.clone(),
        cfg.state_dir.clone(),
    ));
    let sweeper = state.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            sweeper.routes.sweep();
        }
    });
    tokio::spawn(serve_http(http, state.clone(), builder.clone(), None));
    tokio::spawn(serve_http(
        https,
        state.clone(),
        builder.clone(),
        Some(acceptor),
    ));
    tokio::spawn(serve_api(api, state.clone()));
    shutdown.await;
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

async fn serve_http(
    listener: TcpListener,
    state: Arc<State>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: Option<TlsAcceptor>,
) {
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (state, builder, tls) = (state.clone(), builder.clone(), tls.clone());
        tokio::spawn(async move {
            let scheme = if tls.is_some() { "https" } else { "http" };
            let svc = service_fn(move |req| proxy::handle(state.clone(), req, peer, scheme));
            match tls {
                None => {
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                        .await;
                }
                Some(acceptor) => {
                    // A handshake that does not finish in time is dropped.
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                }
            }
        });
    }
}

async fn serve_api(listener: UnixListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| api::handle(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Follows the dominator's file; every good version is also saved, so a
/// restarted router routes as before while the emperor is down.
async fn watch_dominion(state: Arc<State>, run_dir: PathBuf, state_dir: PathBuf) {
    let path = dominion_path(&run_dir);
    let mut seen: Option<SystemTime> = None;
    loop {
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
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
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
