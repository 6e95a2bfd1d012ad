//! The imperium emperor: watches the admin vassal directory and the resellers'
//! drop directories, and keeps one container per group and per site.
//!
//! `run` is the daemon; `control` is the socket protocol the CLI speaks. The
//! kernel work lives in the `sys` crate and the file model in `model`: this
//! crate decides what to do and when.

pub mod api;
pub mod bundle;
mod clock;
pub mod cluster;
pub mod control;
pub mod keys;
pub mod lifecycle;
pub mod manager;
pub mod network;
mod pace;
pub mod routes;
pub mod scan;
pub mod scope;
pub mod spawner;
pub mod spec;
pub mod storage;
pub mod tokens;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sys::cgroup::CgroupTree;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

pub use manager::{ApiListen, Config};
use manager::{Event, Manager};

/// Control connections served at once.
pub const CONTROL_CONNECTIONS: usize = 64;
/// How long a control client has to send its request line.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the directories are read again even without an inotify event,
/// by default (`--rescan`).
pub const RESCAN: Duration = Duration::from_secs(5);

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Preparing directories or reading the uid table.
    #[error("preparing the state: {0}")]
    State(#[source] std::io::Error),
    /// Another emperor answers on the control socket.
    #[error("another emperor is running on {0}")]
    AlreadyRunning(String),
    /// Binding the control socket.
    #[error("binding the control socket {path}: {err}")]
    Socket {
        /// The socket path.
        path: String,
        /// The error.
        #[source]
        err: std::io::Error,
    },
    /// Building the seccomp filter.
    #[error(transparent)]
    Seccomp(#[from] sys::seccomp::SeccompError),
    /// Setting up inotify.
    #[error("inotify: {0}")]
    Watch(#[source] std::io::Error),
}

/// The admin's directories (made if missing) and the vassal binary, with
/// every symlink in their paths resolved once here: what a container mounts
/// from them is then opened with no symlink allowed on the way, so a link a
/// tenant plants below them is refused while the admin's own layout works.
fn canonical(mut cfg: Config) -> std::io::Result<Config> {
    let l = &mut cfg.layout;
    for dir in [
        &mut l.vassals,
        &mut l.home_root,
        &mut l.state_dir,
        &mut l.run_dir,
    ] {
        std::fs::create_dir_all(&*dir)?;
        *dir = dir.canonicalize()?;
    }
    cfg.vassal_exe = cfg.vassal_exe.canonicalize()?;
    // Every container binds the notifications' program from beside it.
    let notify = spec::notify_exe(&cfg.vassal_exe);
    if !notify.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{} not found: it is installed beside the vassal binary",
                notify.display()
            ),
        ));
    }
    Ok(cfg)
}

/// Reads the vassal directories and acts on them (see [`pace`]: only the
/// reading and judging are paid for, not the starts that follow).
fn scan(mgr: &mut Manager, watcher: &mut watch::Watcher, pace: &mut pace::Pace) {
    let cost = mgr.reconcile();
    watcher.follow(&mgr.drop_dirs());
    pace.paid(clock::now(), cost);
}

/// Every running vassal holds a descriptor here (its init's pidfd), and
/// each call on the API one while it lasts. The limit is raised to the
/// most the kernel allows a process (`fs.nr_open`, at most 2^20), or at
/// least the soft limit to the hard one when raising the hard one is not
/// allowed (without CAP_SYS_RESOURCE). Containers get their own limits.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let most: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    let want = most.min(1 << 20).max(hard);
    let now = if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        want
    } else if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    tracing::debug!(from = soft, to = now, "open files limit");
}

/// The containers' shared API socket: `<run-dir>/vassal-api/api.sock`,
/// anyone's to connect to (0666), each connection served in the scope of
/// its peer's vassal (see [`api::Callers`]). The per-vassal sockets of an
/// earlier version (`<run-dir>/api/<name>/`) go.
fn serve_containers_api(layout: &model::Layout, mgr: &Manager, tx: &mpsc::UnboundedSender<Event>) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_dir_all(layout.run_dir.join("api"));
    let dir = layout.vassal_api_dir();
    let path = dir.join(model::layout::inside::API_SOCKET);
    let bound = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)))
        .and_then(|()| match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .and_then(|()| UnixListener::bind(&path))
        .and_then(|l| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
            Ok(l)
        });
    match bound {
        Ok(l) => {
            tokio::spawn(api::serve(
                api::Callers::new(l, mgr.scopes()),
                None,
                api::Serves::Caller,
                tx.clone(),
                mgr.events(),
            ));
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "no API socket for the containers")
        }
    }
}

/// Runs the emperor until `shutdown` resolves (sites keep running, for the next
/// emperor to adopt) or a `shutdown` request has stopped every vassal.
pub async fn run(
    cfg: Config,
    tree: Arc<dyn CgroupTree>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let cfg = canonical(cfg).map_err(RunError::State)?;
    raise_nofile();
    let socket = cfg.layout.control_socket();
    // Another emperor is running if it answers; a socket that only accepts
    // (held by a dying copy of a killed emperor, between clone and exec) is stale.
    let probe = socket.clone();
    let probe = tokio::task::spawn_blocking(move || {
        model::control::call(
            control::EMPEROR,
            &probe,
            &control::Request::Status,
            Some(Duration::from_secs(2)),
        )
    });
    if let Ok(Ok(_)) = probe.await {
        return Err(RunError::AlreadyRunning(socket.display().to_string()));
    }
    let seccomp = sys::seccomp::default_program()?;
    // SSH sessions join containers from outside: they load the same filter.
    model::atomic::replace(&cfg.layout.seccomp_program(), &seccomp, 0o644)
        .map_err(RunError::State)?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut mgr = Manager::new(cfg.clone(), tree, seccomp, tx.clone()).map_err(RunError::State)?;
    mgr.adopt();

    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|err| RunError::Socket {
        path: socket.display().to_string(),
        err,
    })?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600));

    let mut watcher =
        watch::Watcher::new(&cfg.layout.vassals, tx.clone()).map_err(RunError::Watch)?;
    mgr.follow_writes(watcher.settling(), watcher.named());
    let inflight = Arc::new(());
    tokio::spawn(serve_control(listener, tx.clone(), inflight.clone()));
    // The admin's API and /metrics on its socket; /metrics on a TCP address when asked.
    let api = cfg.layout.api_socket();
    let _ = std::fs::remove_file(&api);
    match UnixListener::bind(&api) {
        Ok(l) => {
            let _ = std::fs::set_permissions(&api, std::fs::Permissions::from_mode(0o600));
            tokio::spawn(api::serve(
                l,
                None,
                api::Serves::Api,
                tx.clone(),
                mgr.events(),
            ));
        }
        Err(e) => tracing::warn!(path = %api.display(), error = %e, "no API socket"),
    }
    serve_containers_api(&cfg.layout, &mgr, &tx);
    if let Some(addr) = cfg.metrics_listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(%addr, "metrics served");
                tokio::spawn(api::serve(
                    l,
                    None,
                    api::Serves::Metrics,
                    tx.clone(),
                    mgr.events(),
                ));
            }
            Err(e) => tracing::error!(%addr, error = %e, "metrics: cannot listen"),
        }
    }

    if let Some(a) = &cfg.api_listen {
        let listening = match api::tls_acceptor(&a.cert, &a.key) {
            Ok(tls) => tokio::net::TcpListener::bind(a.addr)
                .await
                .map(|l| (l, tls))
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        match listening {
            Ok((l, tls)) => {
                tracing::info!(addr = %a.addr, "API served over TLS, with tokens");
                let tokens = Arc::new(tokens::Tokens::new(&cfg.layout.state_dir));
                tokio::spawn(api::serve(
                    l,
                    Some(tls),
                    api::Serves::Remote(tokens),
                    tx.clone(),
                    mgr.events(),
                ));
            }
            Err(e) => {
                tracing::error!(addr = %a.addr, error = %format!("{e:#}"), "api: not served over TLS")
            }
        }
    }

    if let Some(c) = &cfg.cluster {
        tracing::info!(host = %c.host, endpoints = ?c.endpoints, "cluster mode: vassal files from etcd");
        cluster::spawn(
            c.clone(),
            cluster::Host {
                dir: cfg.layout.vassals.clone(),
                state_dir: cfg.layout.state_dir.clone(),
                uid_table: cfg.layout.uid_table(),
                events: tx.clone(),
                stats: mgr.cluster_stats(),
                writes: mgr.cluster_writes(),
                vassals: mgr.cluster_vassals(),
                peers: cfg.layout.peers(),
                home_root: cfg.layout.home_root.clone(),
            },
        );
    } else {
        // A host that left its cluster routes no domain to other hosts.
        let _ = std::fs::remove_file(cfg.layout.peers());
    }
    mgr.reconcile();
    watcher.follow(&mgr.drop_dirs());
    mgr.publish_dominion();
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tracing::info!(vassals = %cfg.layout.vassals.display(), "emperor ready");

    let mut rescan = tokio::time::interval(cfg.rescan.max(Duration::from_millis(100)));
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut usec = 0;
    let watchdog = sd_notify::watchdog_enabled(false, &mut usec);
    let mut dog = tokio::time::interval(if watchdog {
        Duration::from_micros(usec / 2)
    } else {
        Duration::from_secs(3600)
    });
    tokio::pin!(shutdown);
    let mut status = String::new();
    let mut pace = pace::Pace::default();
    let mut scan_due: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("emperor exiting; vassals keep running");
                break;
            }
            Some(ev) = rx.recv() => {
                let mut files_changed = matches!(ev, Event::FilesChanged);
                if !files_changed {
                    mgr.handle(ev);
                }
                // Take every event already queued, so a burst of file events costs one scan.
                while let Ok(ev) = rx.try_recv() {
                    match ev {
                        Event::FilesChanged => files_changed = true,
                        ev => mgr.handle(ev),
                    }
                }
                files_changed |= mgr.take_rescan();
                if files_changed && scan_due.is_none() {
                    match pace.wait_until(clock::now()) {
                        None => scan(&mut mgr, &mut watcher, &mut pace),
                        Some(due) => scan_due = Some(tokio::time::Instant::from_std(due)),
                    }
                }
                mgr.publish_dominion();
                // systemd's status line (`systemctl status`), when it changed.
                let now = mgr.status_line();
                if now != status {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&now)]);
                    status = now;
                }
                if mgr.shutdown_done() {
                    mgr.finish_shutdown();
                    break;
                }
            }
            // The next batch of a mass start, between events (select! takes
            // ready branches in random order).
            _ = std::future::ready(()), if mgr.starts_pending() => {
                mgr.start_some();
                mgr.publish_dominion();
            }
            _ = tokio::time::sleep_until(scan_due.unwrap_or_else(tokio::time::Instant::now)), if scan_due.is_some() => {
                scan_due = None;
                scan(&mut mgr, &mut watcher, &mut pace);
                mgr.publish_dominion();
            }
            _ = rescan.tick() => {
                mgr.handle(Event::Rescan);
                watcher.follow(&mgr.drop_dirs());
            }
            _ = dog.tick() => {
                if watchdog {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                }
            }
        }
        // What changed, to the API's event streams.
        mgr.publish_changes();
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let _ = std::fs::remove_file(&socket);
    // Let the answers already given (the shutdown's own) reach their callers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while Arc::strong_count(&inflight) > 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn serve_control(
    listener: UnixListener,
    tx: mpsc::UnboundedSender<Event>,
    inflight: Arc<()>,
) {
    // Root's socket (0600), bounded all the same: a stuck client holds one
    // of a few places for a few seconds, and descriptors running out slow
    // the accept loop down instead of spinning it.
    let places = Arc::new(tokio::sync::Semaphore::new(CONTROL_CONNECTIONS));
    let mut wait = Duration::from_millis(10);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                wait = Duration::from_millis(10);
                s
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed; backing off");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            continue;
        };
        let tx = tx.clone();
        let guard = inflight.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let _place = place;
            let (rd, mut wr) = stream.into_split();
            let mut line = Vec::new();
            let mut rd = BufReader::new(rd.take(model::control::LINE_MAX as u64));
            let read = tokio::time::timeout(CONTROL_TIMEOUT, rd.read_until(b'\n', &mut line)).await;
            if !matches!(read, Ok(Ok(_))) {
                return;
            }
            let resp = match model::control::request::<control::Request>(&line) {
                Ok(req) => {
                    let (rtx, rrx) = oneshot::channel();
                    if tx.send(Event::Control(req, rtx)).is_err() {
                        return;
                    }
                    match rrx.await {
                        Ok(r) => r,
                        Err(_) => return,
                    }
                }
                Err(refusal) => refusal,
            };
            let _ = wr.write_all(&model::control::line(&resp)).await;
        });
    }
}
