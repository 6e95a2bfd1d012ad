//! The tenant's supervisor: keeps the processes and jobs of `~/vassals/*.toml`
//! running, as PID 1 of the container (or as a subreaper when run by hand).
//!
//! One thread, one `poll(2)` loop over a signalfd (SIGCHLD and the stop
//! signals), inotify on `~/vassals`, and the control socket; timers (restarts,
//! grace periods, job times) set the poll timeout. The only `waitpid(-1)` of
//! the program is in [`Supervisor::reap`]: it reaps the tenant's processes and
//! every orphan the container hands to PID 1.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use model::backoff::{Backoff, Throttle};
use model::process::{Process, Restart};
use model::reconcile::{plan, Action};
use model::Name;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{kill, killpg, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::Serialize;

use crate::control::{Request, Response};
use crate::http::{accepts, on_socket};
use crate::logs::{redirect_output, rotate, AccessLog, ACCESS_LOG_MAX, ACCESS_SOCKET};
use crate::site::SiteCgroup;

/// How the supervisor is set up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The tenant's home.
    pub home: PathBuf,
    /// Restart throttling.
    pub throttle: Throttle,
    /// How fast schedule time runs against real time (1 in production; tests
    /// run minutes in seconds).
    pub clock_scale: f64,
    /// Where the site's cgroup is mounted (/sys/fs/cgroup in a container).
    pub cgroup_root: PathBuf,
    /// The directory of process files, when not `~/vassals` (a reseller's
    /// `~/vassals` is its drop directory of site files: its own processes
    /// live in `~/processes`).
    pub processes: Option<PathBuf>,
    /// The site's socket directory (`/run/imperium/sockets` in the container).
    pub sockets: PathBuf,
}

impl Settings {
    /// The process files: `~/vassals`, or the directory given.
    pub fn vassals(&self) -> PathBuf {
        self.processes
            .clone()
            .unwrap_or_else(|| self.home.join("vassals"))
    }
    /// `~/logs`.
    pub fn logs(&self) -> PathBuf {
        self.home.join("logs")
    }
    /// The control socket, `~/.imperium/vassal.sock`.
    pub fn socket(&self) -> PathBuf {
        self.home
            .join(".imperium")
            .join(model::layout::names::VASSAL_SOCKET)
    }
}

/// The state of one process, as `vassal status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Its process runs.
    Running,
    /// It died and waits for its throttled restart.
    Backoff,
    /// Stopping (signal sent, grace running).
    Stopping,
    /// Stopped by the tenant (`vassal stop`), or ended and not to be restarted.
    Stopped,
    /// A job waiting for its next time.
    Scheduled,
    /// Its file is refused.
    Rejected,
}

/// What follows the end of a process being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Stay,
    Start,
    Remove,
}

struct Proc {
    spec: Process,
    state: State,
    pid: Option<i32>,
    started: Option<Instant>,
    started_at_us: Option<u64>,
    restarts: u32,
    backoff: Backoff,
    last_exit: Option<String>,
    reason: Option<String>,
    restart_at: Option<Instant>,
    kill_at: Option<Instant>,
    after: After,
    next_run: Option<u64>,
    job_deadline: Option<Instant>,
    skipped: u32,
    subs: Vec<SubState>,
    refresh_at: Option<Instant>,
    /// The socket the running instance listens on (http processes).
    socket: Option<String>,
    /// Whether it accepted there (and was subscribed).
    ready: bool,
    /// When to look again whether it accepts.
    ready_check_at: Option<Instant>,
    /// A new instance coming up beside the running one.
    next: Option<Next>,
    /// Old instances told to stop, with the time of their SIGKILL.
    retiring: Vec<(i32, Option<Instant>)>,
}

/// A new instance started beside the running one (a restart that hands over).
struct Next {
    pid: i32,
    socket: String,
    started: Instant,
    started_at_us: Option<u64>,
    give_up_at: Instant,
}

/// How often a starting instance is asked whether it accepts.
const READY_POLL: Duration = Duration::from_millis(20);

/// The router's last answer for one domain of a process.
#[derive(Debug, Clone, Serialize)]
struct SubState {
    domain: String,
    ok: bool,
    answer: String,
}

impl Proc {
    fn new(spec: Process) -> Proc {
        Proc {
            spec,
            state: State::Stopped,
            pid: None,
            started: None,
            started_at_us: None,
            restarts: 0,
            backoff: Backoff::default(),
            last_exit: None,
            reason: None,
            restart_at: None,
            kill_at: None,
            after: After::Stay,
            next_run: None,
            job_deadline: None,
            skipped: 0,
            subs: Vec::new(),
            refresh_at: None,
            socket: None,
            ready: false,
            ready_check_at: None,
            next: None,
            retiring: Vec::new(),
        }
    }

    /// Every process of it still alive: the running instance, a new one
    /// coming up, old ones stopping.
    fn pids(&self) -> impl Iterator<Item = i32> + '_ {
        self.pid
            .into_iter()
            .chain(self.next.as_ref().map(|n| n.pid))
            .chain(self.retiring.iter().map(|(pid, _)| *pid))
    }
}

fn now_us() -> Option<u64> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_micros() as u64)
}

#[derive(Debug, Serialize)]
struct Row {
    name: String,
    kind: &'static str,
    state: State,
    pid: Option<i32>,
    uptime_secs: Option<f64>,
    started_at_us: Option<u64>,
    restarts: u32,
    memory: Option<u64>,
    cpu_secs: Option<f64>,
    last_exit: Option<String>,
    reason: Option<String>,
    schedule: Option<String>,
    next_run: Option<u64>,
    skipped: u32,
    /// The socket the running instance listens on.
    socket: Option<String>,
    subscriptions: Vec<SubState>,
}

/// The supervisor.
pub struct Supervisor {
    cfg: Settings,
    procs: BTreeMap<Name, Proc>,
    rejected: BTreeMap<Name, String>,
    clock_origin: (Instant, u64),
    shutting_down: Option<Instant>,
    site: Option<SiteCgroup>,
    subscriber: crate::http::Subscriber,
    oom_seen: Option<u64>,
    memory_high: bool,
}

/// Memory use (in % of the limit) that raises the alarm, and that clears it.
const MEMORY_ALARM: (u64, u64) = (90, 80);
/// Quick deaths in a row that make a restart loop worth telling.
const LOOP_ALARM: u32 = 5;

/// The signals the supervisor handles; an init ignores all others.
const HANDLED: [Signal; 8] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// The most a shutdown waits for processes beyond their own grace.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(2);

fn wall_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Supervisor {
    /// A supervisor for this home.
    pub fn new(cfg: Settings) -> Supervisor {
        let site = SiteCgroup::detect(&cfg.cgroup_root);
        // OOM kills are counted from the supervisor's start.
        let oom_seen = site.as_ref().map(|s| s.figures().oom_kills);
        Supervisor {
            procs: BTreeMap::new(),
            rejected: BTreeMap::new(),
            site,
            subscriber: crate::http::Subscriber::from_env(),
            cfg,
            clock_origin: (Instant::now(), wall_secs()),
            shutting_down: None,
            oom_seen,
            memory_high: false,
        }
    }

    /// Schedule time: real time, or faster when the clock is scaled.
    fn now_secs(&self) -> u64 {
        let (i0, w0) = self.clock_origin;
        w0 + (i0.elapsed().as_secs_f64() * self.cfg.clock_scale) as u64
    }

    /// The real instant at which schedule time reaches `secs`.
    fn instant_of(&self, secs: u64) -> Instant {
        let (i0, w0) = self.clock_origin;
        i0 + Duration::from_secs_f64(secs.saturating_sub(w0) as f64 / self.cfg.clock_scale)
    }

    /// Runs until SIGTERM (and every process has stopped). Returns the exit code.
    pub fn run(mut self) -> i32 {
        let mut mask = SigSet::empty();
        for s in HANDLED {
            mask.add(s);
        }
        if let Err(e) = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None) {
            eprintln!("vassal: blocking signals: {e}");
            return 1;
        }
        let Ok(sigfd) = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        else {
            eprintln!("vassal: signalfd failed");
            return 1;
        };
        if std::process::id() != 1 {
            // Run by hand: orphans of our processes still come to us.
            let _ = nix::sys::prctl::set_child_subreaper(true);
        }
        for d in [
            self.cfg.vassals(),
            self.cfg.logs(),
            self.cfg.home.join(".imperium"),
        ] {
            let _ = std::fs::create_dir_all(d);
        }
        // The supervisor's own messages go to the tenant's ~/logs/vassal.log
        // (PID 1 is started with /dev/null as stdout and stderr).
        if std::process::id() == 1 {
            redirect_output(&self.cfg.logs().join("vassal.log"));
            // Not dumpable: the tenant's processes (same uid) can neither
            // ptrace PID 1 nor take its descriptors or read its memory.
            let _ = nix::sys::prctl::set_dumpable(false);
        }
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).ok();
        if let Some(i) = &inotify {
            let mask = AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_MODIFY;
            let _ = i.add_watch(&self.cfg.vassals(), mask);
        }
        let socket = self.cfg.socket();
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).ok();
        if let Some(l) = &listener {
            let _ = l.set_nonblocking(true);
        } else {
            eprintln!(
                "vassal: cannot bind {}; no control socket",
                socket.display()
            );
        }

        let mut access = AccessLog::bind(&self.cfg.sockets, &self.cfg.logs());
        let mut clients: Vec<Client> = Vec::new();

        self.reload();
        let mut last_rotation = Instant::now();
        loop {
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(1));
            let timeout = timeout.min(Duration::from_secs(1));
            let mut fds = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
            if let Some(i) = &inotify {
                fds.push(PollFd::new(i.as_fd(), PollFlags::POLLIN));
            }
            if let Some(l) = &listener {
                fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
            }
            if let Some(a) = &access {
                fds.push(PollFd::new(a.socket.as_fd(), PollFlags::POLLIN));
            }
            for c in &clients {
                fds.push(PollFd::new(c.stream.as_fd(), PollFlags::POLLIN));
            }
            let ms = timeout.as_millis().min(u16::MAX as u128) as u16;
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    eprintln!("vassal: poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            drop(fds);
            while let Ok(Some(info)) = sigfd.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => self.reap(),
                    Ok(Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT) => self.begin_shutdown(),
                    Ok(other) => self.forward(other),
                    Err(_) => {}
                }
            }
            self.reap();
            if let Some(i) = &inotify {
                if i.read_events().map(|e| !e.is_empty()).unwrap_or(false) {
                    // Let a burst of writes settle, then read every file once.
                    std::thread::sleep(Duration::from_millis(5));
                    while i.read_events().map(|e| !e.is_empty()).unwrap_or(false) {}
                    if self.shutting_down.is_none() {
                        self.reload();
                    }
                }
            }
            if let Some(l) = &listener {
                while let Ok((stream, _)) = l.accept() {
                    if clients.len() < CONTROL_CLIENTS && stream.set_nonblocking(true).is_ok() {
                        clients.push(Client {
                            stream,
                            line: Vec::new(),
                            since: Instant::now(),
                        });
                    }
                }
            }
            // Each client's request as far as it came; none holds the loop.
            let mut i = 0;
            while i < clients.len() {
                match clients[i].read_line() {
                    Some(Ok(line)) => {
                        let c = clients.swap_remove(i);
                        let out = self.serve(&line);
                        c.reply(&out);
                    }
                    Some(Err(())) => {
                        clients.swap_remove(i);
                    }
                    None if clients[i].since.elapsed() > CONTROL_TIMEOUT => {
                        clients.swap_remove(i);
                    }
                    None => i += 1,
                }
            }
            if let Some(a) = &mut access {
                a.drain();
            }
            self.timers();
            if last_rotation.elapsed() >= Duration::from_secs(1) {
                self.rotate_logs();
                rotate(&self.cfg.logs().join("access.log"), ACCESS_LOG_MAX);
                if let Some(a) = &mut access {
                    a.reopen();
                }
                self.check_site();
                last_rotation = Instant::now();
            }
            if let Some(since) = self.shutting_down {
                let grace = self
                    .procs
                    .values()
                    .map(|p| p.spec.file.grace)
                    .fold(0.0, f64::max);
                let all_gone = self.procs.values().all(|p| p.pids().next().is_none())
                    && !(is_init() && others_alive());
                if all_gone || since.elapsed() > Duration::from_secs_f64(grace) + SHUTDOWN_SLACK {
                    self.kill_everything();
                    let _ = std::fs::remove_file(&socket);
                    if access.is_some() {
                        let _ = std::fs::remove_file(self.cfg.sockets.join(ACCESS_SOCKET));
                    }
                    return 0;
                }
            }
        }
    }

    /// Reads every file of `~/vassals` and brings the processes in line.
    pub fn reload(&mut self) {
        let mut desired: BTreeMap<Name, Process> = BTreeMap::new();
        self.rejected.clear();
        let entries = std::fs::read_dir(self.cfg.vassals())
            .into_iter()
            .flatten()
            .flatten();
        for e in entries {
            let fname = e.file_name();
            let Some(stem) = fname.to_str().and_then(|f| f.strip_suffix(".toml")) else {
                continue;
            };
            if stem.starts_with('.') {
                continue;
            }
            let name: Name = match stem.parse() {
                Ok(n) => n,
                Err(err) => {
                    eprintln!("vassal: {}: {err}", e.path().display());
                    continue;
                }
            };
            let parsed = std::fs::read_to_string(e.path())
                .map_err(|err| err.to_string())
                .and_then(|text| Process::parse(&name, &text).map_err(|err| err.to_string()));
            match parsed {
                Ok(p) => {
                    if let Some(old) = self.procs.get_mut(&name) {
                        old.reason = None;
                    }
                    desired.insert(name, p);
                }
                Err(why) => match self.procs.get_mut(&name) {
                    // The last good version keeps running.
                    Some(old) if old.after != After::Remove => {
                        old.reason = Some(why);
                        desired.insert(name, old.spec.clone());
                    }
                    _ => {
                        self.rejected.insert(name, why);
                    }
                },
            }
        }
        let running: BTreeMap<Name, Process> = self
            .procs
            .iter()
            .filter(|(_, p)| p.after != After::Remove)
            .map(|(n, p)| (n.clone(), p.spec.clone()))
            .collect();
        for action in plan(&desired, &running, Process::needs_restart) {
            match action {
                Action::Stop(n) => self.stop(&n, After::Remove),
                Action::Restart(n) => {
                    if let Some(p) = self.procs.get_mut(&n) {
                        p.spec = desired[&n].clone();
                        p.next_run = None;
                    }
                    if self.procs.get(&n).is_some_and(|p| p.pid.is_some()) {
                        let _ = self.restart(&n);
                    } else {
                        self.activate(&n);
                    }
                }
                Action::Update(n) => {
                    let old_http = self.procs.get(&n).and_then(|p| p.spec.file.http.clone());
                    if old_http != desired[&n].file.http {
                        self.unsubscribe_all(&n);
                    }
                    if let Some(p) = self.procs.get_mut(&n) {
                        p.spec = desired[&n].clone();
                        p.next_run = None;
                    }
                    self.schedule_next(&n);
                    if old_http != desired[&n].file.http {
                        self.subscribe_all(&n);
                    }
                }
                Action::Start(n) => {
                    self.procs.insert(n.clone(), Proc::new(desired[&n].clone()));
                    self.activate(&n);
                }
            }
        }
    }

    /// Starts a process, or arms a job's schedule.
    fn activate(&mut self, name: &Name) {
        let Some(p) = self.procs.get_mut(name) else {
            return;
        };
        if p.spec.schedule.is_some() {
            p.state = State::Scheduled;
            self.schedule_next(name);
        } else {
            self.spawn(name);
        }
    }

    fn schedule_next(&mut self, name: &Name) {
        let now = self.now_secs();
        let Some(p) = self.procs.get_mut(name) else {
            return;
        };
        if let Some(s) = &p.spec.schedule {
            if p.next_run.is_none_or(|t| t <= now) {
                p.next_run = s.next_after(now);
            }
        } else {
            p.next_run = None;
        }
    }

    fn login_env(&self) -> Vec<(String, String)> {
        let home = self.cfg.home.display().to_string();
        let user = std::env::var("USER").unwrap_or_default();
        vec![
            ("HOME".into(), home),
            ("USER".into(), user.clone()),
            ("LOGNAME".into(), user),
            (
                "SHELL".into(),
                std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".into()),
            ),
            (
                "PATH".into(),
                std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
            ),
            (
                "LANG".into(),
                std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into()),
            ),
        ]
    }

    /// Starts one instance of a process; `socket` is the socket it is to
    /// listen on (put in place of `{socket}` and in `$SOCKET`). Returns its pid.
    fn launch(&self, spec: &Process, name: &Name, socket: Option<&str>) -> Result<i32, String> {
        let f = &spec.file;
        let workdir = match &f.workdir {
            Some(w) => self.cfg.home.join(w),
            None => self.cfg.home.clone(),
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.cfg.logs().join(format!("{name}.log")));
        let (out, err) = match log.and_then(|l| Ok((l.try_clone()?, l))) {
            Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
            Err(_) => (Stdio::null(), Stdio::null()),
        };
        let path = socket.map(|s| self.cfg.sockets.join(s).display().to_string());
        let fill = |a: &String| match &path {
            Some(p) => a.replace(model::process::SOCKET_PLACEHOLDER, p),
            None => a.clone(),
        };
        let mut cmd = Command::new(fill(&f.command[0]));
        cmd.args(f.command[1..].iter().map(fill))
            .current_dir(&workdir)
            .env_clear()
            .envs(self.login_env())
            .envs(path.iter().map(|p| ("SOCKET", p)))
            .envs(f.env.iter().map(|(k, v)| (k, fill(v))))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: a stop signal reaches what it forked too.
            .process_group(0);
        crate::spawn::reset_signals(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("could not start {:?}: {e}", f.command[0]))?;
        let pid = child.id() as i32;
        // The child is reaped by `reap`, not through `child`.
        drop(child);
        // A tenant's process is a likelier OOM victim than the init:
        // raising a score needs no privilege.
        let _ = std::fs::write(format!("/proc/{pid}/oom_score_adj"), "300");
        Ok(pid)
    }

    fn spawn(&mut self, name: &Name) {
        let Some(p) = self.procs.get(name) else {
            return;
        };
        let socket = p.spec.file.http.as_ref().map(|h| h.socket.clone());
        let launched = self.launch(&p.spec, name, socket.as_deref());
        let Some(p) = self.procs.get_mut(name) else {
            return;
        };
        match launched {
            Ok(pid) => {
                p.pid = Some(pid);
                p.started = Some(Instant::now());
                p.started_at_us = now_us();
                p.state = State::Running;
                p.restart_at = None;
                if let Some(t) = p.spec.file.timeout {
                    p.job_deadline = Some(Instant::now() + Duration::from_secs_f64(t));
                }
                // Subscribed once it accepts on its socket.
                p.socket = socket;
                p.ready = false;
                p.ready_check_at = p.socket.as_ref().map(|_| Instant::now());
            }
            Err(e) => {
                p.last_exit = Some(e);
                self.after_exit(name, Duration::ZERO, false);
            }
        }
    }

    /// Restarts a process: beside the old instance when it can hand over
    /// (the old one serves until the new one accepts), else stop then start.
    fn restart(&mut self, name: &Name) -> Result<&'static str, String> {
        let Some(p) = self.procs.get(name) else {
            return Err(format!("no process named {name}"));
        };
        let can = p.spec.hands_over() && p.pid.is_some() && p.ready && p.next.is_none();
        if !can {
            self.stop(name, After::Start);
            return Ok("restarting");
        }
        let http = p.spec.file.http.clone().expect("hands over: has http");
        let base = http.socket.clone();
        let socket = if p.socket.as_deref() == Some(base.as_str()) {
            format!("{base}.1")
        } else {
            base
        };
        // A stale socket of an earlier instance would look like the new one accepting.
        let _ = std::fs::remove_file(self.cfg.sockets.join(&socket));
        let launched = self.launch(&p.spec, name, Some(&socket));
        let p = self.procs.get_mut(name).expect("looked up above");
        match launched {
            Ok(pid) => {
                let now = Instant::now();
                p.next = Some(Next {
                    pid,
                    socket,
                    started: now,
                    started_at_us: now_us(),
                    give_up_at: now + Duration::from_secs_f64(http.ready_timeout),
                });
                p.reason = None;
                p.ready_check_at = Some(now);
                Ok("handing over to a new instance")
            }
            Err(e) => {
                p.reason = Some(format!("{e}; the running instance keeps serving"));
                Err(e)
            }
        }
    }

    /// Looks whether a starting instance accepts: a first start is then
    /// subscribed; a new instance takes over from the old one, which is
    /// withdrawn from the router and then stopped with its grace.
    fn check_ready(&mut self, name: &Name) {
        let now = Instant::now();
        let sockets = self.cfg.sockets.clone();
        let Some(p) = self.procs.get_mut(name) else {
            return;
        };
        p.ready_check_at = None;
        if let Some(next) = &p.next {
            if accepts(&sockets.join(&next.socket)) {
                let next = p.next.take().expect("checked");
                let old = (p.pid.replace(next.pid), p.socket.replace(next.socket));
                p.started = Some(next.started);
                p.started_at_us = next.started_at_us;
                p.ready = true;
                p.backoff = Backoff::default();
                // The new one in before the old one out: no request finds no backend.
                self.subscribe_all(name);
                let Some(p) = self.procs.get_mut(name) else {
                    return;
                };
                let http = p.spec.file.http.clone();
                let grace = Duration::from_secs_f64(p.spec.file.grace);
                let sig = Signal::try_from(p.spec.stop_signal).unwrap_or(Signal::SIGTERM);
                if let (Some(http), Some(socket)) = (http, &old.1) {
                    self.withdraw(&on_socket(&http, socket));
                }
                if let (Some(pid), Some(p)) = (old.0, self.procs.get_mut(name)) {
                    let _ = killpg(Pid::from_raw(pid), sig);
                    p.retiring.push((pid, Some(now + grace)));
                }
            } else if now >= next.give_up_at {
                let _ = killpg(Pid::from_raw(next.pid), Signal::SIGKILL);
                p.reason = Some(format!(
                    "the new instance did not accept on {} within {:?}: given up, the old one keeps serving",
                    next.socket,
                    next.give_up_at - next.started
                ));
                let pid = next.pid;
                p.next = None;
                p.retiring.push((pid, None));
            } else {
                p.ready_check_at = Some(now + READY_POLL);
            }
            return;
        }
        let (Some(socket), Some(_), false) = (&p.socket, p.pid, p.ready) else {
            return;
        };
        if accepts(&sockets.join(socket)) {
            p.ready = true;
            if p.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("not accepting"))
            {
                p.reason = None;
            }
            self.subscribe_all(name);
        } else {
            let waited = p.started.map(|s| s.elapsed()).unwrap_or_default();
            if waited > Duration::from_secs(1) {
                p.reason = Some(format!(
                    "not accepting on {socket} yet ({}s): not subscribed",
                    waited.as_secs()
                ));
            }
            // Quick at first, then once a second.
            let wait = if waited < Duration::from_secs(10) {
                READY_POLL
            } else {
                Duration::from_secs(1)
            };
            p.ready_check_at = Some(now + wait);
        }
    }

    /// Reaps every ended child (the tenant's processes and any orphan).
    fn reap(&mut self) {
        loop {
            let (pid, text, ok) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    (pid.as_raw(), format!("exited with code {code}"), code == 0)
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    (pid.as_raw(), format!("killed by {sig}"), false)
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(_) => return,
            };
            let Some(name) = self
                .procs
                .iter()
                .find(|(_, p)| p.pids().any(|x| x == pid))
                .map(|(n, _)| n.clone())
            else {
                continue; // an orphan: reaped, nothing more
            };
            let Some(p) = self.procs.get_mut(&name) else {
                continue;
            };
            if let Some(i) = p.retiring.iter().position(|(x, _)| *x == pid) {
                // An old instance, stopped after a hand-over.
                p.retiring.remove(i);
                continue;
            }
            if let Some(next) = p.next.take_if(|n| n.pid == pid) {
                p.reason = Some(format!(
                    "the new instance {text} before it accepted on {}: the old one keeps serving",
                    next.socket
                ));
                continue;
            }
            let uptime = p.started.map(|s| s.elapsed()).unwrap_or_default();
            self.unsubscribe_all(&name);
            let Some(p) = self.procs.get_mut(&name) else {
                continue;
            };
            p.ready = false;
            p.ready_check_at = None;
            p.pid = None;
            p.kill_at = None;
            p.job_deadline = None;
            p.last_exit = Some(text);
            self.after_exit(&name, uptime, ok);
        }
    }

    fn after_exit(&mut self, name: &Name, uptime: Duration, ok: bool) {
        let throttle = self.cfg.throttle;
        let shutting = self.shutting_down.is_some();
        let Some(p) = self.procs.get_mut(name) else {
            return;
        };
        match p.after {
            After::Remove => {
                self.procs.remove(name);
                return;
            }
            After::Start => {
                p.after = After::Stay;
                if !shutting {
                    self.activate(name);
                }
                return;
            }
            After::Stay if p.state == State::Stopping => {
                // A job stopped for its timeout keeps its schedule; a stop asked for disarms it.
                p.state = if p.spec.schedule.is_some() && p.next_run.is_some() {
                    State::Scheduled
                } else {
                    State::Stopped
                };
                return;
            }
            After::Stay => {}
        }
        if shutting {
            p.state = State::Stopped;
            return;
        }
        if p.spec.schedule.is_some() {
            p.state = State::Scheduled;
            return;
        }
        let again = match p.spec.restart() {
            Restart::Always => true,
            Restart::OnFailure => !ok,
            _ => false,
        };
        if !again {
            p.state = State::Stopped;
            return;
        }
        let delay = p.backoff.on_death(&throttle, uptime);
        p.restarts += 1;
        if p.backoff.quick_deaths == LOOP_ALARM {
            let msg = format!(
                "process {name} is in a restart loop: {LOOP_ALARM} quick deaths in a row, last {}",
                p.last_exit.as_deref().unwrap_or("unknown")
            );
            self.alarm("restart-loop", &msg);
        }
        let Some(p) = self.procs.get_mut(name) else {
            return;
        };
        if delay.is_zero() {
            self.spawn(name);
        } else {
            p.state = State::Backoff;
            p.restart_at = Some(Instant::now() + delay);
            p.reason = Some(format!(
                "restarting in {delay:?} ({} quick deaths in a row)",
                p.backoff.quick_deaths
            ));
        }
    }

    /// Sends the stop signal; SIGKILL follows after the grace period.
    fn stop(&mut self, name: &Name, after: After) {
        // The router stops sending it requests before it is asked to stop.
        self.unsubscribe_all(name);
        let Some(p) = self.procs.get_mut(name) else {
            return;
        };
        // Going away: no longer served, nor asked whether it accepts.
        p.ready = false;
        p.ready_check_at = None;
        p.after = after;
        p.restart_at = None;
        if let Some(next) = p.next.take() {
            // A hand-over under way is called off.
            let _ = killpg(Pid::from_raw(next.pid), Signal::SIGKILL);
            p.retiring.push((next.pid, None));
        }
        match p.pid {
            Some(pid) => {
                let sig = Signal::try_from(p.spec.stop_signal).unwrap_or(Signal::SIGTERM);
                let _ = killpg(Pid::from_raw(pid), sig);
                p.state = State::Stopping;
                p.kill_at = Some(Instant::now() + Duration::from_secs_f64(p.spec.file.grace));
            }
            None => {
                p.state = State::Stopped;
                match after {
                    After::Remove => {
                        self.procs.remove(name);
                    }
                    After::Start => {
                        p.after = After::Stay;
                        self.activate(name);
                    }
                    After::Stay => p.next_run = None,
                }
            }
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutting_down.is_some() {
            return;
        }
        self.shutting_down = Some(Instant::now());
        let names: Vec<Name> = self.procs.keys().cloned().collect();
        for n in names {
            self.stop(&n, After::Stay);
        }
        if is_init() {
            // Everything else in the container (shells, strays) gets SIGTERM too.
            let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
        }
    }

    /// Last step of a shutdown: nothing of the tenant's outlives the supervisor.
    fn kill_everything(&mut self) {
        for pid in self.procs.values().flat_map(Proc::pids) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if is_init() {
            let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Err(Errno::ECHILD) => break,
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(5)),
                _ => {}
            }
        }
    }

    fn forward(&self, sig: Signal) {
        if is_init() {
            let _ = kill(Pid::from_raw(-1), sig);
            return;
        }
        for p in self.procs.values() {
            if let Some(pid) = p.pid {
                let _ = killpg(Pid::from_raw(pid), sig);
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.procs
            .values()
            .flat_map(|p| {
                [
                    p.restart_at,
                    p.kill_at,
                    p.job_deadline,
                    p.refresh_at,
                    p.ready_check_at,
                    p.next_run.map(|t| self.instant_of(t)),
                ]
                .into_iter()
                .chain(p.retiring.iter().map(|(_, k)| *k))
            })
            .flatten()
            .min()
    }

    fn timers(&mut self) {
        let now = Instant::now();
        let now_secs = self.now_secs();
        let names: Vec<Name> = self.procs.keys().cloned().collect();
        for n in names {
            let Some(p) = self.procs.get_mut(&n) else {
                continue;
            };
            if p.kill_at.is_some_and(|t| t <= now) {
                if let Some(pid) = p.pid {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
                p.kill_at = None;
            }
            for (pid, kill_at) in &mut p.retiring {
                if kill_at.is_some_and(|t| t <= now) {
                    let _ = killpg(Pid::from_raw(*pid), Signal::SIGKILL);
                    *kill_at = None;
                }
            }
            if p.ready_check_at.is_some_and(|t| t <= now) && self.shutting_down.is_none() {
                self.check_ready(&n);
                continue;
            }
            if p.job_deadline.is_some_and(|t| t <= now) && p.pid.is_some() {
                p.job_deadline = None;
                p.reason = Some("the last run passed its timeout and was stopped".into());
                self.stop(&n, After::Stay);
                if let Some(p) = self.procs.get_mut(&n) {
                    // A job stopped for its timeout stays scheduled.
                    p.after = After::Stay;
                    p.state = State::Stopping;
                }
                continue;
            }
            if p.refresh_at.is_some_and(|t| t <= now)
                && p.pid.is_some()
                && p.ready
                && self.shutting_down.is_none()
            {
                self.subscribe_all(&n);
                continue;
            }
            if p.restart_at.is_some_and(|t| t <= now) && self.shutting_down.is_none() {
                self.spawn(&n);
                continue;
            }
            if p.next_run.is_some_and(|t| t <= now_secs)
                && self.shutting_down.is_none()
                && p.state != State::Stopped
            {
                if p.pid.is_some() {
                    // Never two runs at once.
                    p.skipped += 1;
                    p.reason = Some(format!(
                        "{} run(s) skipped: the previous run was still going",
                        p.skipped
                    ));
                } else {
                    self.spawn(&n);
                }
                self.schedule_next(&n);
            }
        }
    }

    /// Subscribes every domain of a running process to the router, and plans
    /// the refresh (a third of the router's time to live; soon after a refusal).
    fn subscribe_all(&mut self, name: &Name) {
        let home = self.cfg.home.clone();
        let Some(p) = self.procs.get_mut(name) else {
            return;
        };
        let (Some(http), Some(_), Some(socket)) = (&p.spec.file.http, p.pid, &p.socket) else {
            return;
        };
        let http = on_socket(http, socket);
        let mut subs = Vec::new();
        let mut ttl = u64::MAX;
        for d in &http.domains {
            let (ok, answer) =
                match self
                    .subscriber
                    .send(model::subscription::Action::Subscribe, d, &http, &home)
                {
                    Ok(t) => {
                        ttl = ttl.min(t);
                        (true, format!("subscribed for {t} s"))
                    }
                    Err(e) => {
                        ttl = ttl.min(6);
                        (false, e)
                    }
                };
            subs.push(SubState {
                domain: d.clone(),
                ok,
                answer,
            });
        }
        p.subs = subs;
        p.refresh_at = Some(Instant::now() + Duration::from_secs((ttl / 3).max(1)));
    }

    /// Withdraws these domains on this socket (best effort: routes expire anyway).
    fn withdraw(&self, http: &model::process::Http) {
        for d in &http.domains {
            let _ = self.subscriber.send(
                model::subscription::Action::Unsubscribe,
                d,
                http,
                &self.cfg.home,
            );
        }
    }

    /// Withdraws the running instance of a process from the router (it may
    /// still accept: a changed `[http]` subscribes it again at once).
    fn unsubscribe_all(&mut self, name: &Name) {
        let Some(p) = self.procs.get_mut(name) else {
            return;
        };
        let subscribed = match (&p.spec.file.http, &p.socket) {
            (Some(http), Some(socket)) if p.ready => Some(on_socket(http, socket)),
            _ => None,
        };
        p.subs.clear();
        p.refresh_at = None;
        if let Some(http) = subscribed {
            self.withdraw(&http);
        }
    }

    /// Stores a notification; a failure is only logged (an alarm never stops the supervisor).
    fn alarm(&self, kind: &str, message: &str) {
        if let Err(e) = crate::notify::add(&self.cfg.home, kind, message) {
            eprintln!("vassal: storing the {kind} notification: {e}");
        }
    }

    /// The site's alarms: an OOM kill, memory near the limit.
    fn check_site(&mut self) {
        let Some(site) = &self.site else { return };
        let f = site.figures();
        match self.oom_seen {
            Some(seen) if f.oom_kills > seen => {
                let limit = f
                    .memory_limit
                    .map(|l| format!(" of {}", model::size::Size(l)))
                    .unwrap_or_default();
                let msg = format!(
                    "the kernel killed {} process(es) for lack of memory: the site reached its limit{limit} ({} so far)",
                    f.oom_kills - seen,
                    f.oom_kills
                );
                self.alarm("oom", &msg);
            }
            _ => {}
        }
        self.oom_seen = Some(f.oom_kills);
        if let Some(limit) = f.memory_limit.filter(|l| *l > 0) {
            let pct = f.memory * 100 / limit;
            if pct >= MEMORY_ALARM.0 && !self.memory_high {
                self.memory_high = true;
                self.alarm(
                    "memory",
                    &format!(
                        "the site uses {pct}% of its {} memory limit",
                        model::size::Size(limit)
                    ),
                );
            } else if pct < MEMORY_ALARM.1 {
                self.memory_high = false;
            }
        }
    }

    /// Rotates `~/logs/<name>.log` past its size limit: copy to `.1` (older
    /// copies move to `.2` and `.3`), then truncate. The process keeps its
    /// append-mode descriptor, so its next lines go to the fresh file.
    fn rotate_logs(&self) {
        for (name, p) in &self.procs {
            rotate(
                &self.cfg.logs().join(format!("{name}.log")),
                p.spec.file.log_max.0,
            );
        }
    }

    /// Answers one request line of the control socket.
    fn serve(&mut self, line: &[u8]) -> Vec<u8> {
        let resp = match serde_json::from_slice::<Request>(line) {
            Ok(req) => self.answer(req),
            Err(e) => Response::err(format!("bad request: {e}")),
        };
        let mut out = serde_json::to_vec(&resp).unwrap_or_default();
        out.push(b'\n');
        out
    }

    fn answer(&mut self, req: Request) -> Response {
        let name = match &req {
            Request::Status => {
                let site = self.site.as_ref().map(|s| s.figures());
                return Response::ok(
                    serde_json::json!({ "processes": self.status(), "site": site }),
                );
            }
            Request::Start { name }
            | Request::Stop { name }
            | Request::Restart { name }
            | Request::Reload { name } => name.clone(),
        };
        let Some(n) = name
            .parse::<Name>()
            .ok()
            .filter(|n| self.procs.contains_key(n))
        else {
            return match name
                .parse::<Name>()
                .ok()
                .and_then(|n| self.rejected.get(&n).cloned())
            {
                Some(why) => Response::err(format!("{name} is not running: {why}")),
                None => Response::err(format!(
                    "no process named {name:?} (files live in ~/vassals/)"
                )),
            };
        };
        let p = &self.procs[&n];
        match req {
            Request::Stop { .. } => {
                if p.pid.is_none() && p.state == State::Stopped {
                    return Response::err(format!("{n} is not running"));
                }
                self.stop(&n, After::Stay);
                if let Some(p) = self.procs.get_mut(&n) {
                    p.next_run = None;
                }
                Response::ok(serde_json::json!("stopping"))
            }
            Request::Start { .. } => {
                if p.pid.is_some() {
                    return Response::err(format!("{n} is already running"));
                }
                if p.spec.schedule.is_some() {
                    // Run a job now; its schedule carries on.
                    self.spawn(&n);
                    self.schedule_next(&n);
                } else {
                    self.procs.get_mut(&n).expect("present").backoff = Backoff::default();
                    self.spawn(&n);
                }
                Response::ok(serde_json::json!("started"))
            }
            Request::Restart { .. } => {
                self.procs.get_mut(&n).expect("present").backoff = Backoff::default();
                match self.restart(&n) {
                    Ok(what) => Response::ok(serde_json::json!(what)),
                    Err(e) => Response::err(e),
                }
            }
            Request::Reload { .. } => {
                if !p.spec.hands_over() {
                    return Response::err(format!(
                        "{n} cannot hand over: it needs [http] and {{socket}} in its command (or env) \
                         so that a new instance listens beside the old one; `vassal restart {n}` stops then starts"
                    ));
                }
                if p.next.is_some() {
                    return Response::err(format!("{n} is already handing over"));
                }
                if !(p.pid.is_some() && p.ready) {
                    return Response::err(format!(
                        "{n} is not serving yet: nothing to hand over from"
                    ));
                }
                match self.restart(&n) {
                    Ok(what) => Response::ok(serde_json::json!(what)),
                    Err(e) => Response::err(e),
                }
            }
            Request::Status => unreachable!("answered above"),
        }
    }

    fn status(&self) -> Vec<Row> {
        let mut rows: Vec<Row> = self
            .procs
            .iter()
            .map(|(n, p)| {
                let (memory, cpu) = p.pid.map(proc_usage).unwrap_or((None, None));
                Row {
                    name: n.to_string(),
                    kind: if p.spec.schedule.is_some() {
                        "job"
                    } else {
                        "process"
                    },
                    state: p.state,
                    pid: p.pid,
                    uptime_secs: p
                        .pid
                        .and(p.started)
                        .map(|s| (s.elapsed().as_secs_f64() * 10.0).round() / 10.0),
                    started_at_us: p.pid.and(p.started_at_us),
                    restarts: p.restarts,
                    memory,
                    cpu_secs: cpu,
                    last_exit: p.last_exit.clone(),
                    reason: match &p.next {
                        Some(next) => Some(format!(
                            "handing over to a new instance (pid {}) once it accepts on {}",
                            next.pid, next.socket
                        )),
                        None => p.reason.clone(),
                    },
                    schedule: p.spec.schedule.as_ref().map(|s| s.to_string()),
                    next_run: p.next_run,
                    skipped: p.skipped,
                    socket: p.pid.and(p.socket.clone()),
                    subscriptions: p.subs.clone(),
                }
            })
            .collect();
        for (n, why) in &self.rejected {
            rows.push(Row {
                name: n.to_string(),
                kind: "process",
                state: State::Rejected,
                pid: None,
                uptime_secs: None,
                started_at_us: None,
                restarts: 0,
                memory: None,
                cpu_secs: None,
                last_exit: None,
                reason: Some(why.clone()),
                schedule: None,
                next_run: None,
                skipped: 0,
                socket: None,
                subscriptions: Vec::new(),
            });
        }
        rows
    }
}

/// Whether this is PID 1 of a pid namespace (a container's init).
fn is_init() -> bool {
    std::process::id() == 1
}

/// Whether any process but this one is left in the container.
fn others_alive() -> bool {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten().any(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n != "1" && n.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .unwrap_or(false)
}

/// Resident memory (bytes) and CPU time (seconds) of a process, from /proc.
fn proc_usage(pid: i32) -> (Option<u64>, Option<f64>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let cpu = stat.rfind(')').and_then(|i| {
        let f: Vec<&str> = stat[i + 1..].split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100);
        Some(ticks as f64 / hz as f64)
    });
    (rss, cpu)
}

/// Clients of the control socket served at once (more are closed at accept).
const CONTROL_CLIENTS: usize = 16;
/// How long a client has to send its request line.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request line.
const CONTROL_LINE_MAX: usize = 64 * 1024;

/// A control-socket client whose request line is on its way: read as it
/// comes, so a client that sends nothing never holds PID 1's loop.
struct Client {
    stream: std::os::unix::net::UnixStream,
    line: Vec<u8>,
    since: Instant,
}

impl Client {
    /// The request line once it is all there; `Err` for a client that closed,
    /// failed or sent too much.
    fn read_line(&mut self) -> Option<Result<Vec<u8>, ()>> {
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
                    if self.line.len() > CONTROL_LINE_MAX {
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
    fn reply(self, out: &[u8]) {
        let mut s = self.stream;
        let _ = s.set_nonblocking(false);
        let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = s.write_all(out);
    }
}
