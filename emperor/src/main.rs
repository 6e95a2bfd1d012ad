//! `emperor`: the daemon (`serve`) and the operator's CLI.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use emperor::control::{self, Request};
use model::backoff::Throttle;
use model::layout;

#[derive(Parser)]
#[command(
    name = "emperor",
    version,
    about = "Keeps one container per reseller group and per site"
)]
struct Cli {
    /// The runtime directory (control socket, records).
    #[arg(long, global = true, default_value = layout::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once per run: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground.
    Serve {
        /// The admin vassal directory.
        #[arg(long, default_value = layout::DEFAULT_VASSALS)]
        vassals: PathBuf,
        /// The root of the tenants' homes.
        #[arg(long, default_value = layout::DEFAULT_HOME_ROOT)]
        home_root: PathBuf,
        /// The persistent state directory.
        #[arg(long, default_value = layout::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// The cgroup subtree, relative to each hierarchy's root.
        #[arg(long, default_value = layout::DEFAULT_CGROUP_ROOT)]
        cgroup_root: String,
        /// The vassal binary (default: `vassal` beside this program).
        #[arg(long)]
        vassal_bin: Option<PathBuf>,
        /// Keep the site tree in a systemd scope of its own,
        /// `machine.slice/<cgroup-root>.scope` with `Delegate=yes`, which
        /// outlives restarts of the emperor's service (cgroup v2 under systemd;
        /// the unit file sets it).
        #[arg(long)]
        systemd_scope: bool,
        /// Seconds an init has to exit after SIGTERM.
        #[arg(long, default_value_t = 10.0)]
        stop_grace: f64,
        /// Seconds between two readings of every vassal file without an
        /// inotify event (a missed event, a host account added).
        #[arg(long, default_value_t = emperor::RESCAN.as_secs_f64())]
        rescan: f64,
        /// Throttle: the delay after the second quick death in a row, in seconds (doubles each time).
        #[arg(long, default_value_t = 1.0)]
        throttle_base: f64,
        /// Throttle: the longest delay, in seconds.
        #[arg(long, default_value_t = 60.0)]
        throttle_max: f64,
        /// Throttle: a run this long (seconds) resets the count.
        #[arg(long, default_value_t = 30.0)]
        healthy_after: f64,
        /// The sites' IPv4 address pool (a bridge, NAT and a firewall table
        /// of the emperor's own), or `off`: sites get only their loopback.
        #[arg(long, default_value = model::network::DEFAULT_POOL)]
        network: String,
        /// The sites' IPv6 prefix (a ULA), or `off`.
        #[arg(long, default_value = model::network::DEFAULT_POOL6)]
        network6: String,
        /// TCP ports of the host that sites may reach (say 3306,5432 for the
        /// host's database servers); nothing else of the host answers them.
        #[arg(long, value_delimiter = ',')]
        host_ports: Vec<u16>,
        /// Connections one site may have tracked at once (new ones past it are dropped).
        #[arg(long, default_value_t = emperor::network::SITE_CONNECTIONS)]
        site_connections: u32,
        /// Refuse to start when the home root's filesystem cannot enforce
        /// `storage` limits (else they are reported as not enforced).
        #[arg(long)]
        require_quotas: bool,
        /// Where lxcfs is mounted: each site's /proc/meminfo, cpuinfo, stat,
        /// uptime, loadavg, diskstats and swaps come from there (its own
        /// limits and uptime); `off` for the host's. Used only when lxcfs
        /// answers there.
        #[arg(long, default_value = "/var/lib/lxcfs")]
        lxcfs: String,
        /// Serve `/metrics` (Prometheus) on this TCP address too (say
        /// 127.0.0.1:9105); it is always on `<run-dir>/api.sock`.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Serve the API over TLS on this TCP address for remote panels
        /// (say 0.0.0.0:9443): every request carries a bearer token made by
        /// `emperor token create`, scoped to the admin, a group or a site.
        #[arg(long, value_name = "ADDR", requires_all = ["api_cert", "api_key"])]
        api_listen: Option<std::net::SocketAddr>,
        /// The certificate chain (PEM) of --api-listen.
        #[arg(long, value_name = "FILE")]
        api_cert: Option<PathBuf>,
        /// The private key (PEM) of --api-listen.
        #[arg(long, value_name = "FILE")]
        api_key: Option<PathBuf>,
        /// Clone containers from a small launcher process (`on`: what a start
        /// costs then does not grow with the emperor's memory and descriptors),
        /// or from the emperor itself (`off`).
        #[arg(long, default_value = "on", value_parser = ["on", "off"])]
        launcher: String,
        /// Cluster mode: the vassal files come from etcd (these members'
        /// client URLs, comma-separated), and this host runs those placed on
        /// it; the admin directory holds their copy.
        #[arg(long, value_name = "URLS", value_delimiter = ',', requires = "host")]
        etcd: Vec<String>,
        /// This host's name in the cluster (what `host = "NAME"` in a group's
        /// file names).
        #[arg(long, value_name = "NAME", requires = "etcd")]
        host: Option<model::Name>,
        /// The key prefix of the cluster's state in etcd.
        #[arg(long, value_name = "PREFIX", default_value = model::cluster::DEFAULT_PREFIX)]
        etcd_prefix: String,
        /// The CA (PEM) that signed the members' certificates (https:// URLs).
        #[arg(long, value_name = "FILE")]
        etcd_ca: Option<PathBuf>,
        /// This host's client certificate (PEM), when the members ask for one.
        #[arg(long, value_name = "FILE", requires_all = ["etcd_key", "etcd_ca"])]
        etcd_cert: Option<PathBuf>,
        /// The key (PEM) of --etcd-cert.
        #[arg(long, value_name = "FILE", requires = "etcd_cert")]
        etcd_key: Option<PathBuf>,
        /// Where the other hosts' routers reach this host's router (the
        /// address of its `--peer` listener), for the domains served here.
        #[arg(long, value_name = "ADDR", requires = "etcd")]
        router_peer: Option<std::net::SocketAddr>,
        /// How this host copies the home of a site moving here from another
        /// host: a command (split on spaces, no shell) where `{host}` is the
        /// other host's name, `{home}` the home there and `{dest}` the home
        /// here.
        #[arg(
            long,
            value_name = "COMMAND",
            requires = "etcd",
            default_value = "rsync -aHAX --numeric-ids --delete -e ssh root@{host}:{home}/ {dest}/"
        )]
        home_copy: String,
    },
    /// Bearer tokens of the API over TLS (`serve --api-listen`).
    Token {
        /// The persistent state directory (the tokens' hashes live there).
        #[arg(long, default_value = layout::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Show every vassal.
    Status {
        /// JSON, one object per vassal.
        #[arg(long)]
        json: bool,
    },
    /// Stop and start a vassal.
    Restart { name: String },
    /// Freeze a vassal (a group: with its sites).
    Suspend { name: String },
    /// Thaw a vassal.
    Resume { name: String },
    /// Print the OCI runtime spec (config.json) of a vassal's live container,
    /// or write a standalone bundle that crun or runc can run.
    Spec {
        name: String,
        /// Write a bundle into this new directory: its own root, cgroup,
        /// home, sockets; nothing of the live site but read-only host paths.
        #[arg(long, value_name = "DIR")]
        bundle: Option<std::path::PathBuf>,
        /// With --bundle: copy the home into it (else it starts empty).
        #[arg(long, requires = "bundle")]
        copy_home: bool,
    },
    /// Delete the archived homes of a removed vassal (for good).
    Purge { name: String },
    /// Leave a message among a vassal's notifications (`vassal notifications` shows it).
    Notify { name: String, message: String },
    /// Stop every vassal, then the emperor.
    Shutdown,
    /// Print the metrics (what `/metrics` serves).
    Metrics,
    /// Cluster mode: the hosts alive and every file of the cluster, with
    /// its host, its owner and its state as this host sees it (JSON).
    Cluster,
    /// Cluster mode: move an admin site with its home to another host
    /// (copied while it serves, then frozen for a last copy; its domains
    /// answer 503 meanwhile).
    Move {
        /// The site.
        name: String,
        /// The host it goes to.
        host: String,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Make a token and print it (once: only its hash is kept).
    Create {
        /// `admin`, `group:NAME` (a reseller: the group and its sites) or
        /// `site:NAME` (one tenant).
        #[arg(long)]
        scope: emperor::tokens::Scope,
        /// What it is for (a panel's name, say).
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List the tokens (their ids, scopes and labels).
    List,
    /// Revoke a token by its id: refused from the next request on.
    Revoke { id: String },
}

fn token(state_dir: &std::path::Path, cmd: TokenCmd) -> anyhow::Result<()> {
    use emperor::tokens;
    match cmd {
        TokenCmd::Create { scope, label } => {
            let (token, entry) = tokens::create(state_dir, &scope, &label)?;
            eprintln!(
                "emperor: token {} for {}: shown once, keep it",
                entry.id, entry.scope
            );
            println!("{token}");
        }
        TokenCmd::List => {
            println!("{:<18} {:<24} {:<12} LABEL", "ID", "SCOPE", "CREATED");
            for t in tokens::list(state_dir)? {
                println!("{:<18} {:<24} {:<12} {}", t.id, t.scope, t.created, t.label);
            }
        }
        TokenCmd::Revoke { id } => {
            if !tokens::revoke(state_dir, &id)? {
                bail!("no token {id:?}");
            }
        }
    }
    Ok(())
}

fn main() {
    // The launcher (a copy of this program, started by `serve` below): it
    // clones containers for the emperor and does nothing else.
    if std::env::args_os().nth(1).is_some_and(|a| a == "launcher") {
        sys::launcher::serve();
    }
    let cli = Cli::parse();
    // Started while this process has one thread: the containers it clones
    // are children of this (main) thread, which lives as long as the emperor.
    if let Cmd::Serve { launcher, .. } = &cli.cmd {
        if launcher == "on" {
            if let Err(e) =
                sys::launcher::start(std::path::Path::new("/proc/self/exe"), &["launcher"])
            {
                eprintln!("emperor: no launcher ({e}); containers are cloned by the emperor");
            }
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(real_main(cli)) {
        eprintln!("emperor: {e:#}");
        std::process::exit(1);
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    let req = match cli.cmd {
        Cmd::Serve {
            vassals,
            home_root,
            state_dir,
            cgroup_root,
            vassal_bin,
            systemd_scope,
            stop_grace,
            rescan,
            throttle_base,
            throttle_max,
            healthy_after,
            network,
            network6,
            host_ports,
            site_connections,
            require_quotas,
            lxcfs,
            metrics_listen,
            api_listen,
            api_cert,
            api_key,
            launcher: _,
            etcd,
            host,
            etcd_prefix,
            etcd_ca,
            etcd_cert,
            etcd_key,
            router_peer,
            home_copy,
        } => {
            if !etcd_prefix.starts_with('/') || !etcd_prefix.ends_with('/') {
                bail!("--etcd-prefix must start and end with '/', not {etcd_prefix:?}");
            }
            let cluster = host.map(|host| emperor::cluster::Settings {
                endpoints: etcd,
                host,
                prefix: etcd_prefix,
                tls: etcd_ca.map(|ca| emperor::cluster::Tls {
                    ca,
                    identity: etcd_cert.zip(etcd_key),
                }),
                router_peer,
                home_copy: home_copy.split_whitespace().map(str::to_owned).collect(),
            });
            let vassal_exe = match vassal_bin {
                Some(p) => p,
                None => std::env::current_exe()?.with_file_name("vassal"),
            };
            if !vassal_exe.is_file() {
                bail!(
                    "vassal binary {} not found (use --vassal-bin)",
                    vassal_exe.display()
                );
            }
            let mut tree: Arc<dyn sys::CgroupTree> =
                Arc::from(sys::cgroup::detect().context("finding the cgroup hierarchies")?);
            let mut cgroup_root = cgroup_root;
            if systemd_scope {
                if tree.version() != sys::cgroup::Version::V2 {
                    bail!("--systemd-scope needs cgroup v2 (this host mounts v1)");
                }
                let rel = emperor::scope::ensure(&cgroup_root)?;
                tree = Arc::new(sys::cgroup::V2::delegated(
                    PathBuf::from("/sys/fs/cgroup"),
                    &rel,
                )?);
                cgroup_root = rel;
            }
            let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
            let cfg = emperor::Config {
                layout: model::Layout {
                    vassals,
                    home_root,
                    state_dir,
                    run_dir: cli.run_dir,
                    cgroup_root,
                },
                throttle: Throttle {
                    base: secs(throttle_base),
                    max: secs(throttle_max),
                    healthy: secs(healthy_after),
                },
                stop_grace: secs(stop_grace),
                rescan: secs(rescan),
                vassal_exe,
                systemd_scope,
                require_quotas,
                metrics_listen,
                api_listen: match (api_listen, api_cert, api_key) {
                    (Some(addr), Some(cert), Some(key)) => {
                        Some(emperor::ApiListen { addr, cert, key })
                    }
                    _ => None,
                },
                cluster,
                lxcfs: match lxcfs.as_str() {
                    "off" => None,
                    dir => {
                        let dir = PathBuf::from(dir);
                        // lxcfs answers: its meminfo reads.
                        let up =
                            std::fs::read(dir.join("proc/meminfo")).is_ok_and(|b| !b.is_empty());
                        if up {
                            tracing::info!(lxcfs = %dir.display(), "sites see their own /proc figures");
                        } else {
                            tracing::info!(lxcfs = %dir.display(), "no lxcfs there: sites see the host's /proc figures");
                        }
                        up.then_some(dir)
                    }
                },
                network: match network.as_str() {
                    "off" => None,
                    pool => Some(emperor::network::Settings {
                        pool: model::network::Pool::parse(
                            pool,
                            (network6 != "off").then_some(network6.as_str()),
                        )
                        .map_err(|e| anyhow::anyhow!("--network: {e}"))?,
                        host_ports,
                        site_connections: site_connections.max(1),
                    }),
                },
            };
            tracing::info!(version = ?tree.version(), "cgroups");
            let shutdown = async {
                use tokio::signal::unix::{signal, SignalKind};
                let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
                let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            };
            emperor::run(cfg, tree, shutdown).await?;
            return Ok(());
        }
        Cmd::Status { json } => {
            let socket = cli.run_dir.join(model::layout::names::CONTROL_SOCKET);
            let answer =
                model::control::call_line(control::EMPEROR, &socket, &Request::Status, None)?;
            // The rows as the emperor wrote them: thousands are not parsed
            // only to be written again, nor into a tree of values to lay out.
            let laid_out;
            let rows = match model::control::ok_data(&answer) {
                Some(rows) => rows,
                None => {
                    let resp: model::control::Response = serde_json::from_str(&answer)?;
                    if !resp.ok {
                        bail!("{}", resp.error.unwrap_or_default());
                    }
                    laid_out = resp.data.to_string();
                    &laid_out
                }
            };
            if json {
                println!("{rows}");
            } else {
                print_table(&serde_json::from_str::<Vec<TableRow>>(rows)?)?;
            }
            return Ok(());
        }
        Cmd::Token { state_dir, cmd } => return token(&state_dir, cmd),
        Cmd::Restart { name } => Request::Restart { name },
        Cmd::Suspend { name } => Request::Suspend { name },
        Cmd::Resume { name } => Request::Resume { name },
        Cmd::Spec {
            name, bundle: None, ..
        } => Request::Spec { name },
        Cmd::Spec {
            name,
            bundle: Some(dir),
            copy_home,
        } => Request::Bundle {
            name,
            // The emperor writes it: a path of this process's is made absolute.
            dir: std::path::absolute(&dir)?.display().to_string(),
            copy_home,
        },
        Cmd::Purge { name } => Request::Purge { name },
        Cmd::Notify { name, message } => Request::Notify {
            name,
            message,
            from: None,
        },
        Cmd::Shutdown => Request::Shutdown,
        Cmd::Metrics => Request::Metrics,
        Cmd::Cluster => Request::Cluster,
        Cmd::Move { name, host } => Request::Move { name, host },
    };
    let is_spec = matches!(req, Request::Spec { .. });
    let is_json = is_spec || matches!(req, Request::Cluster);
    let resp = control::call(
        &cli.run_dir.join(model::layout::names::CONTROL_SOCKET),
        &req,
    )?;
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_default());
    }
    if is_json {
        println!("{}", serde_json::to_string_pretty(&resp.data)?);
    }
    if is_spec {
        eprintln!(
            "emperor: this spec describes the live container (its root, cgroup, home and sockets \
             are the live site's): do not run it; `emperor spec NAME --bundle DIR` writes one to run"
        );
    } else if let Some(s) = resp.data.as_str() {
        println!("{s}");
    }
    Ok(())
}

/// The columns of `emperor status`'s table, borrowed from the answer.
#[derive(serde::Deserialize)]
struct TableRow<'a> {
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    group: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    state: std::borrow::Cow<'a, str>,
    pid: Option<i64>,
    uid: Option<u32>,
    #[serde(borrow)]
    limits: Option<TableLimits<'a>>,
    dynamic: bool,
    #[serde(borrow)]
    reason: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct TableLimits<'a> {
    #[serde(borrow)]
    memory: Option<std::borrow::Cow<'a, str>>,
}

fn print_table(rows: &[TableRow]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let or_dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
    let number = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    writeln!(
        out,
        "{:<16} {:<6} {:<12} {:<10} {:>8} {:>6} {:<10} {:<8} REASON",
        "NAME", "KIND", "GROUP", "STATE", "PID", "UID", "MEMORY", "LIMITS"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<16} {:<6} {:<12} {:<10} {:>8} {:>6} {:<10} {:<8} {}",
            r.name,
            or_dash(r.kind.as_deref()),
            or_dash(r.group.as_deref()),
            r.state,
            number(r.pid.map(|p| p.to_string())),
            number(r.uid.map(|u| u.to_string())),
            or_dash(r.limits.as_ref().and_then(|l| l.memory.as_deref())),
            if r.dynamic { "dynamic" } else { "fixed" },
            r.reason.as_deref().unwrap_or("")
        )?;
    }
    out.flush()
}
