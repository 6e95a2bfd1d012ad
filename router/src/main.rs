//! `router serve`: the shared HTTP/HTTPS router.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use router::acme::Challenge;

#[derive(Parser)]
#[command(
    name = "router",
    version,
    about = "The shared HTTP/HTTPS (SNI) router of every site"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the router in the foreground.
    Serve {
        /// Plain HTTP address.
        #[arg(long, default_value = "0.0.0.0:80")]
        http: SocketAddr,
        /// HTTPS address.
        #[arg(long, default_value = "0.0.0.0:443")]
        https: SocketAddr,
        /// The runtime directory shared with the emperor.
        #[arg(long, default_value = model::layout::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// The router's persistent state.
        #[arg(long, default_value = model::layout::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Seconds a subscription lives unless refreshed.
        #[arg(long, default_value_t = 60.0)]
        ttl: f64,
        /// Seconds a client has for its TLS handshake and for each request's headers.
        #[arg(long, default_value_t = 10.0)]
        header_timeout: f64,
        /// Seconds a client connection may stay open with no request in flight.
        #[arg(long, default_value_t = 60.0)]
        idle_timeout: f64,
        /// Seconds a client may pause within a request body.
        #[arg(long, default_value_t = 30.0)]
        body_timeout: f64,
        /// Client connections open at once, in all.
        #[arg(long, default_value_t = 20_000)]
        max_connections: usize,
        /// Client connections open at once from one address.
        #[arg(long, default_value_t = 512)]
        max_connections_per_ip: usize,
        /// Domains one site may have routed at once (names under a wildcard count one each).
        #[arg(long, default_value_t = router::routes::MAX_ROUTES_PER_SITE)]
        max_routes_per_site: usize,
        /// Requests one site may have in flight at once (508 past it), unless
        /// the site's `[limits] requests` says.
        #[arg(long, default_value_t = router::routes::MAX_REQUESTS_PER_SITE)]
        max_requests_per_site: usize,
        /// Worker threads, each with its own event loop (default: one per CPU).
        #[arg(long)]
        threads: Option<usize>,
        /// Serve every HTTP/1.1 request through hyper, none through the
        /// router's own HTTP/1.1 path (for comparing the two).
        #[arg(long)]
        hyper_only: bool,
        /// Serve `/metrics` (Prometheus) on this TCP address (say 127.0.0.1:9106).
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<SocketAddr>,
        /// Obtain certificates through ACME from this directory URL for the
        /// domains sites subscribe without one of their own (HTTP-01 on the
        /// HTTP listener); off when absent.
        #[arg(long, value_name = "URL")]
        acme_directory: Option<String>,
        /// The ACME account's contact.
        #[arg(long, value_name = "EMAIL", requires = "acme_directory")]
        acme_email: Option<String>,
        /// Trust this root (PEM) for the ACME server's own TLS (a private CA).
        #[arg(long, value_name = "FILE", requires = "acme_directory")]
        acme_ca: Option<std::path::PathBuf>,
        /// A challenge to answer (http-01 on the HTTP listener, tls-alpn-01 on
        /// the HTTPS one); repeat it to allow both, in order of preference.
        /// Default: http-01, then tls-alpn-01.
        #[arg(long, value_name = "TYPE", requires = "acme_directory", value_parser = ["http-01", "tls-alpn-01"])]
        acme_challenge: Vec<String>,
        /// New orders at most per three hours (Let's Encrypt allows 300 per
        /// account; raise it only for a CA of your own).
        #[arg(long, value_name = "N", requires = "acme_directory", default_value_t = router::acme::ORDERS_PER_WINDOW)]
        acme_max_orders: usize,
        /// The key id of an External Account Binding the CA gave.
        #[arg(long, value_name = "KID", requires_all = ["acme_directory", "acme_eab_key"])]
        acme_eab_kid: Option<String>,
        /// A file holding the External Account Binding's HMAC key, as the CA
        /// gave it (base64url).
        #[arg(long, value_name = "FILE", requires = "acme_eab_kid")]
        acme_eab_key: Option<std::path::PathBuf>,
        /// In a cluster: take the other hosts' routers' clients on this
        /// address, and pass them the clients of the domains they serve
        /// (TLS both ways with the certificates below).
        #[arg(long, value_name = "ADDR", requires_all = ["peer_ca", "peer_cert", "peer_key"])]
        peer: Option<SocketAddr>,
        /// The cluster's CA (PEM), which signed every host's router certificate.
        #[arg(long, value_name = "FILE", requires = "peer")]
        peer_ca: Option<std::path::PathBuf>,
        /// This router's certificate (PEM), naming its host as the emperor's `--host` does.
        #[arg(long, value_name = "FILE", requires = "peer")]
        peer_cert: Option<std::path::PathBuf>,
        /// The key (PEM) of --peer-cert.
        #[arg(long, value_name = "FILE", requires = "peer")]
        peer_key: Option<std::path::PathBuf>,
    },
}

// Requests allocate and free many small buffers across threads: mimalloc's
// per-thread free lists cost fewer instructions than glibc's arenas (README).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Cmd::Serve {
        http,
        https,
        run_dir,
        state_dir,
        ttl,
        header_timeout,
        idle_timeout,
        body_timeout,
        max_connections,
        max_connections_per_ip,
        max_routes_per_site,
        max_requests_per_site,
        threads,
        hyper_only,
        metrics_listen,
        acme_directory,
        acme_email,
        acme_ca,
        acme_challenge,
        acme_max_orders,
        acme_eab_kid,
        acme_eab_key,
        peer,
        peer_ca,
        peer_cert,
        peer_key,
    } = Cli::parse().cmd;
    let eab = match (acme_eab_kid, acme_eab_key) {
        (Some(kid), Some(file)) => match eab_key(&file) {
            Ok(key) => Some((kid, key)),
            Err(e) => {
                eprintln!("router: --acme-eab-key {}: {e}", file.display());
                std::process::exit(2);
            }
        },
        _ => None,
    };
    let challenges = if acme_challenge.is_empty() {
        vec![Challenge::Http01, Challenge::TlsAlpn01]
    } else {
        let mut c: Vec<Challenge> = acme_challenge
            .iter()
            .map(|t| match t.as_str() {
                "tls-alpn-01" => Challenge::TlsAlpn01,
                _ => Challenge::Http01,
            })
            .collect();
        c.dedup();
        c
    };
    let secs = |s: f64| Duration::from_secs_f64(s.max(0.1));
    let cfg = router::Config {
        ttl: Duration::from_secs_f64(ttl.max(1.0)),
        header_timeout: secs(header_timeout),
        idle_timeout: secs(idle_timeout),
        body_timeout: secs(body_timeout),
        max_connections: max_connections.max(1),
        max_connections_per_ip: max_connections_per_ip.max(1),
        max_routes_per_site: max_routes_per_site.max(1),
        max_requests_per_site: max_requests_per_site.max(1),
        own_http1: !hyper_only,
        metrics: metrics_listen,
        acme: acme_directory.map(|directory| router::acme::Settings {
            directory,
            email: acme_email,
            ca: acme_ca,
            challenges,
            eab,
            max_orders: acme_max_orders.max(1),
        }),
        peer: match (peer, peer_ca, peer_cert, peer_key) {
            (Some(listen), Some(ca), Some(cert), Some(key)) => Some(router::peer::Settings {
                listen,
                ca,
                cert,
                key,
            }),
            _ => None,
        },
        ..router::Config::new(http, https, run_dir, state_dir)
    };
    // This thread is worker 0; `run` starts the others, one event loop each.
    let mut cfg = cfg;
    if let Some(t) = threads {
        cfg.threads = t.max(1);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(router::run(cfg, async {
        let _ = tokio::signal::ctrl_c().await;
    }));
    if let Err(e) = result {
        eprintln!("router: {e:#}");
        std::process::exit(1);
    }
}

/// The HMAC key of an External Account Binding, from a file holding it as
/// CAs give it (base64url, padding and a trailing newline allowed).
fn eab_key(file: &std::path::Path) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim().trim_end_matches('='))
        .map_err(|e| format!("not base64url: {e}"))?;
    if key.is_empty() {
        return Err("empty".into());
    }
    Ok(key)
}
