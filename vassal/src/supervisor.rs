//! The tenant's supervisor: keeps the processes and jobs of `~/vassals/*.toml`
//! running, as PID 1 of the container (or as a subreaper when run by hand).
//!
//! One thread, one `poll(2)` loop over a signalfd (SIGCHLD and the stop
//! signals), inotify on `~/vassals`, the control socket and the access-log
//! socket; timers (restarts, grace periods, job times) set the poll timeout.
//! What happens to a process is decided by the pure [`crate::lifecycle`];
//! this loop only turns the world into its events and carries out its
//! effects. The only `waitpid(-1)` of the program is in [`Supervisor::reap`]:
//! it reaps the tenant's processes and every orphan the container hands to
//! PID 1.
//!
//! Slightly longer than the ~600 lines we aim for: the poll loop and the one
//! place where effects are carried out read best whole; the launch of a
//! process and the status rows are in `supervisor/`.

use std::collections::{BTreeMap, VecDeque};
use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use model::backoff::Throttle;
use model::process::Process;
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

use crate::clock::Clock;
use crate::control::{Client, Request, Response, CONTROL_CLIENTS, CONTROL_TIMEOUT};
use crate::http::{accepts, Done, Job, Worker};
use crate::lifecycle::{desired, Ctx, Effect, Event, Proc, Role, State};
use crate::logs::{redirect_output, rotate, AccessLog, ACCESS_LOG_MAX, ACCESS_SOCKET};
use crate::site::{Alarms, SiteCgroup};

mod launch;
mod status;

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
    /// The site's own address, when it has a network: `tcp:PORT` backends
    /// listen on that port of it.
    pub address: Option<std::net::Ipv4Addr>,
    /// Where the emperor writes the site's disk usage (`/run/imperium/usage`).
    pub usage: PathBuf,
}

impl Settings {
    /// The process files: `~/vassals`, or the directory given.
    pub fn vassals(&self) -> PathBuf {
        self.processes
            .clone()
            .unwrap_or_else(|| model::layout::home::vassals(&self.home))
    }
    /// `~/logs`.
    pub fn logs(&self) -> PathBuf {
        model::layout::home::logs(&self.home)
    }
    /// The control socket, `~/.imperium/vassal.sock`.
    pub fn socket(&self) -> PathBuf {
        model::layout::home::control_socket(&self.home)
    }
}

/// The supervisor.
pub struct Supervisor {
    cfg: Settings,
    clock: Clock,
    procs: BTreeMap<Name, Proc>,
    rejected: BTreeMap<Name, String>,
    shutting_down: Option<Instant>,
    site: Option<SiteCgroup>,
    alarms: Alarms,
    /// Alarms not stored yet, oldest first (`vassal-notify` stores them).
    unsent: VecDeque<(&'static str, String)>,
    /// The `vassal-notify` storing the first alarms of `unsent`: its pid,
    /// how many it stores, since when.
    storing: Option<(i32, usize, Instant)>,
    /// In a group's container: its sites as last read (the reseller is told
    /// what changes).
    sites: Option<model::usage::Sites>,
    /// What the last housekeeping saw (figures, log sizes): an idle site is
    /// looked at less often.
    seen: Option<(crate::site::Figures, u64)>,
    worker: Worker,
}

/// The signals the supervisor handles; an init ignores all others. The
/// emperor starts PID 1 with these already blocked (its `INIT_SIGNALS`), so
/// one sent before the signalfd exists waits for it.
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

fn handled() -> SigSet {
    let mut mask = SigSet::empty();
    for s in HANDLED {
        mask.add(s);
    }
    mask
}

/// Alarms kept waiting to be stored at most (a message is at most 1000 bytes).
const UNSENT_MAX: usize = 256;

/// Alarms stored by one `vassal-notify`, in one transaction.
const STORE_BATCH: usize = 64;

/// How long a `vassal-notify` may take before it is killed and its alarms
/// tried again (SQLite waits at most 2 s for a lock).
const STORE_MAX: Duration = Duration::from_secs(10);

/// The most a shutdown waits for processes beyond their own grace.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(2);

/// Logs and alarms are looked at every second while anything moves; the
/// period doubles, up to this, while nothing does (a host holds thousands of
/// idle sites: each wake-up of each supervisor is the host's CPU; at 4 s,
/// 10,000 idle sites took two thirds of a core). Any request, child, edit or
/// line from the router brings it back to a second.
const QUIET_MAX: Duration = Duration::from_secs(30);

impl Supervisor {
    /// A supervisor for this home.
    /// The handled signals are blocked first (they are read through a
    /// signalfd), so the subscription thread started here never takes one.
    pub fn new(cfg: Settings) -> Result<Supervisor, String> {
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled()), None)
            .map_err(|e| format!("blocking signals: {e}"))?;
        let site = SiteCgroup::detect(&cfg.cgroup_root);
        // OOM kills are counted from the supervisor's start.
        let alarms = Alarms::new(site.as_ref().map(|s| s.figures().oom_kills));
        let worker = Worker::new(cfg.home.clone())
            .map_err(|e| format!("the subscription thread's socket pair: {e}"))?;
        Ok(Supervisor {
            procs: BTreeMap::new(),
            rejected: BTreeMap::new(),
            site,
            alarms,
            unsent: VecDeque::new(),
            storing: None,
            sites: None,
            seen: None,
            worker,
            clock: Clock::new(cfg.clock_scale),
            cfg,
            shutting_down: None,
        })
    }

    /// Runs until SIGTERM (and every process has stopped). Returns the exit code.
    pub fn run(mut self) -> i32 {
        let mask = handled();
        let Ok(sigfd) = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        else {
            say!("vassal: signalfd failed");
            return 1;
        };
        if std::process::id() != 1 {
            // Run by hand: orphans of our processes still come to us.
            let _ = nix::sys::prctl::set_child_subreaper(true);
        }
        for d in [
            self.cfg.vassals(),
            self.cfg.logs(),
            model::layout::home::private(&self.cfg.home),
        ] {
            let _ = std::fs::create_dir_all(d);
        }
        // The supervisor's own messages go to the tenant's ~/logs/vassal.log
        // (PID 1 is started with /dev/null as stdout and stderr).
        if std::process::id() == 1 {
            redirect_output(&model::layout::home::supervisor_log(&self.cfg.home));
            // Not dumpable: the tenant's processes (same uid) can neither
            // ptrace PID 1 nor take its descriptors or read its memory.
            let _ = nix::sys::prctl::set_dumpable(false);
        }
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).ok();
        let mut edits = None;
        if let Some(i) = &inotify {
            let mask = AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_MODIFY;
            edits = i.add_watch(&self.cfg.vassals(), mask).ok();
            // What the emperor writes for the site (disk usage, a
            // reseller's sites) wakes the housekeeping, which reads it.
            let _ = i.add_watch(
                &self.cfg.usage,
                AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE,
            );
        }
        let socket = self.cfg.socket();
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).ok();
        if let Some(l) = &listener {
            let _ = l.set_nonblocking(true);
        } else {
            say!(
                "vassal: cannot bind {}; no control socket",
                socket.display()
            );
        }

        let mut access = AccessLog::bind(&self.cfg.sockets, &self.cfg.home);
        let mut clients: Vec<Client> = Vec::new();

        self.reload();
        let mut quiet = Duration::from_secs(1);
        let mut housekeeping_at = self.clock.now().at + quiet;
        loop {
            let now = self.clock.now().at;
            let longest = if self.shutting_down.is_some() {
                Duration::from_secs(1)
            } else {
                QUIET_MAX
            };
            let timeout = self
                .next_deadline()
                .map_or(housekeeping_at, |d| d.min(housekeeping_at))
                .saturating_duration_since(now)
                .min(longest);
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
            fds.push(PollFd::new(self.worker.wake.as_fd(), PollFlags::POLLIN));
            for c in &clients {
                fds.push(PollFd::new(c.fd(), PollFlags::POLLIN));
            }
            let ms = timeout.as_millis().min(u16::MAX as u128) as u16;
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) | Err(Errno::EINTR) => {}
                Ok(_) => {
                    // Something happened: look at logs and alarms again soon.
                    quiet = Duration::from_secs(1);
                    housekeeping_at = housekeeping_at.min(self.clock.now().at + quiet);
                }
                Err(e) => {
                    say!("vassal: poll: {e}");
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
            self.router_done();
            if let Some(i) = &inotify {
                let edited = |i: &Inotify| {
                    i.read_events()
                        .map(|e| (!e.is_empty(), e.iter().any(|e| Some(e.wd) == edits)))
                        .unwrap_or((false, false))
                };
                if edited(i).1 {
                    // Let a burst of writes settle, then read every file once.
                    std::thread::sleep(Duration::from_millis(5));
                    while edited(i).0 {}
                    if self.shutting_down.is_none() {
                        self.reload();
                    }
                }
            }
            let now = self.clock.now().at;
            if let Some(l) = &listener {
                while let Ok((stream, _)) = l.accept() {
                    if clients.len() < CONTROL_CLIENTS {
                        clients.extend(Client::new(stream, now));
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
                    None if now.saturating_duration_since(clients[i].since) > CONTROL_TIMEOUT => {
                        clients.swap_remove(i);
                    }
                    None => i += 1,
                }
            }
            if let Some(a) = &mut access {
                a.drain();
            }
            self.timers();
            let now = self.clock.now().at;
            if now >= housekeeping_at {
                quiet = if self.housekeeping(&mut access) {
                    Duration::from_secs(1)
                } else {
                    (quiet * 2).min(QUIET_MAX)
                };
                housekeeping_at = now + quiet;
            }
            if let Some(since) = self.shutting_down {
                let grace = self
                    .procs
                    .values()
                    .map(|p| p.spec.file.grace)
                    .fold(0.0, f64::max);
                let all_gone = self.procs.values().all(|p| p.pids().next().is_none())
                    && !(is_init() && others_alive());
                let waited = now.saturating_duration_since(since);
                if all_gone || waited > Duration::from_secs_f64(grace) + SHUTDOWN_SLACK {
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

    fn ctx(&self) -> Ctx {
        Ctx {
            throttle: self.cfg.throttle,
            shutting_down: self.shutting_down.is_some(),
        }
    }

    /// Gives one event to a process and carries out what follows, feeding
    /// the outcome of each effect back until nothing is left. Returns the
    /// error of a hand-over's launch that failed on the way, if one did.
    fn dispatch(&mut self, name: &Name, ev: Event) -> Option<String> {
        let mut failed = None;
        let mut queue = VecDeque::from([ev]);
        while let Some(ev) = queue.pop_front() {
            let (now, ctx) = (self.clock.now(), self.ctx());
            let Some(p) = self.procs.get_mut(name) else {
                break;
            };
            // A signal that follows a word to the router waits for it.
            let mut behind_router = false;
            for effect in p.on(ev, now, &ctx) {
                let effect = match effect {
                    Effect::Subscribe(_) | Effect::Withdraw(_) => {
                        behind_router = true;
                        effect
                    }
                    Effect::Kill { .. } if behind_router => {
                        let job = Job::Then(name.clone(), effect);
                        match self.worker.send(job).map_err(|j| *j) {
                            Ok(()) => continue,
                            // A full queue: the signal goes now.
                            Err(Job::Then(_, effect)) => effect,
                            Err(_) => continue,
                        }
                    }
                    other => other,
                };
                if let Some(back) = self.carry_out(name, effect) {
                    if let Event::LaunchFailed {
                        role: Role::Next,
                        error,
                    } = &back
                    {
                        failed = Some(error.clone());
                    }
                    queue.push_back(back);
                }
            }
        }
        failed
    }

    /// Does one effect; returns the event that reports its outcome.
    fn carry_out(&mut self, name: &Name, effect: Effect) -> Option<Event> {
        match effect {
            Effect::Launch { role, socket } => {
                if role == Role::Next {
                    // A stale socket of an earlier instance would look like the new one accepting.
                    if let Some(s) = &socket {
                        let _ = std::fs::remove_file(self.cfg.sockets.join(s));
                    }
                }
                let spec = self.procs.get(name)?.spec.clone();
                Some(match self.launch(&spec, name, socket.as_deref()) {
                    Ok(pid) => Event::Launched { role, pid, socket },
                    Err(error) => Event::LaunchFailed { role, error },
                })
            }
            Effect::Kill { pid, signal } => {
                let _ = killpg(Pid::from_raw(pid), signal);
                None
            }
            Effect::CheckReady { socket } => {
                let yes = match model::process::tcp_port(&socket) {
                    Some(port) => self
                        .cfg
                        .address
                        .is_some_and(|a| crate::http::accepts_tcp((a, port).into())),
                    None => accepts(&self.cfg.sockets.join(&socket)),
                };
                Some(Event::Accepts { socket, yes })
            }
            Effect::Subscribe(http) => match self.worker.send(Job::Subscribe(name.clone(), http)) {
                Ok(()) => None,
                Err(_) => Some(Event::Subscribed {
                    subs: Vec::new(),
                    ttl: 6,
                }),
            },
            Effect::Withdraw(http) => {
                // Best effort: routes expire anyway.
                let _ = self.worker.send(Job::Withdraw(http));
                None
            }
            Effect::Alarm { kind, message } => {
                self.alarm(kind, &message);
                None
            }
            Effect::Forget => {
                self.procs.remove(name);
                None
            }
        }
    }

    /// Reads every file of `~/vassals` and brings the processes in line.
    pub fn reload(&mut self) {
        let mut parsed: BTreeMap<Name, Result<Process, String>> = BTreeMap::new();
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
                    say!("vassal: {}: {err}", e.path().display());
                    continue;
                }
            };
            let file = std::fs::read_to_string(e.path())
                .map_err(|err| err.to_string())
                .and_then(|text| Process::parse(&name, &text).map_err(|err| err.to_string()));
            parsed.insert(name, file);
        }
        let (want, rejected) = desired(parsed, &mut self.procs);
        self.rejected = rejected;
        let running: BTreeMap<Name, Process> = self
            .procs
            .iter()
            .filter(|(_, p)| p.after != crate::lifecycle::After::Remove)
            .map(|(n, p)| (n.clone(), p.spec.clone()))
            .collect();
        for action in plan(&want, &running, Process::needs_restart) {
            match action {
                Action::Stop(n) => {
                    self.dispatch(&n, Event::Remove);
                }
                Action::Restart(n) => {
                    self.dispatch(&n, Event::Replace(want[&n].clone()));
                }
                Action::Update(n) => {
                    self.dispatch(&n, Event::Update(want[&n].clone()));
                }
                Action::Start(n) => {
                    self.procs
                        .insert(n.clone(), Proc::new(n.clone(), want[&n].clone()));
                    self.dispatch(&n, Event::Activate);
                }
            }
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
            if self.storing.is_some_and(|(p, ..)| p == pid) {
                self.stored(ok, &text);
                continue;
            }
            let owner = self
                .procs
                .iter()
                .find(|(_, p)| p.pids().any(|x| x == pid))
                .map(|(n, _)| n.clone());
            // An orphan is reaped and nothing more.
            if let Some(name) = owner {
                self.dispatch(&name, Event::Exited { pid, text, ok });
            }
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutting_down.is_some() {
            return;
        }
        self.shutting_down = Some(self.clock.now().at);
        let names: Vec<Name> = self.procs.keys().cloned().collect();
        for n in names {
            self.dispatch(&n, Event::Shutdown);
        }
        if is_init() {
            // Everything else in the container (shells, strays) gets SIGTERM too.
            signal_others(Signal::SIGTERM);
        }
    }

    /// Last step of a shutdown: nothing of the tenant's outlives the supervisor.
    fn kill_everything(&mut self) {
        for pid in self.procs.values().flat_map(Proc::pids) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if is_init() {
            signal_others(Signal::SIGKILL);
        }
        let deadline = self.clock.now().at + Duration::from_secs(2);
        while self.clock.now().at < deadline {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Err(Errno::ECHILD) => break,
                Ok(WaitStatus::StillAlive) => {
                    // One forked as the others were listed is killed here.
                    if is_init() {
                        signal_others(Signal::SIGKILL);
                    }
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => {}
            }
        }
    }

    fn forward(&self, sig: Signal) {
        if is_init() {
            signal_others(sig);
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
            .flat_map(|p| [p.deadline(), p.next_run.map(|t| self.clock.instant_of(t))])
            .flatten()
            .min()
    }

    /// Gives every process the time: what is due fires.
    fn timers(&mut self) {
        let names: Vec<Name> = self.procs.keys().cloned().collect();
        for n in names {
            self.dispatch(&n, Event::Tick);
        }
    }

    /// What the subscription thread finished: the router's answers, and
    /// signals that waited for them (sent only to a process still ours: one
    /// reaped meanwhile is left alone, its pid may be another's now).
    fn router_done(&mut self) {
        for done in self.worker.results() {
            match done {
                Done::Subscribed(name, subs, ttl) => {
                    self.dispatch(&name, Event::Subscribed { subs, ttl });
                }
                Done::Then(name, Effect::Kill { pid, signal }) => {
                    if self
                        .procs
                        .get(&name)
                        .is_some_and(|p| p.pids().any(|x| x == pid))
                    {
                        let _ = killpg(Pid::from_raw(pid), signal);
                    }
                }
                Done::Then(..) => {}
            }
        }
    }

    /// Queues a notification and stores it; a failure is only logged (an
    /// alarm never stops the supervisor).
    fn alarm(&mut self, kind: &'static str, message: &str) {
        if self.unsent.len() < UNSENT_MAX {
            self.unsent.push_back((kind, message.to_owned()));
        } else {
            say!("vassal: {UNSENT_MAX} notifications wait to be stored; the {kind} one is dropped");
        }
        self.store();
    }

    /// Starts a `vassal-notify` for the oldest alarms waiting, unless one
    /// runs. A failure leaves them waiting: the likeliest moment to fail (an
    /// OOM kill, with the site at its memory or task limit) is the likeliest
    /// to matter, so they are tried again at the next check.
    fn store(&mut self) {
        if self.storing.is_some() || self.unsent.is_empty() {
            return;
        }
        let n = self.unsent.len().min(STORE_BATCH);
        let batch: Vec<_> = self.unsent.iter().take(n).collect();
        match crate::notify::store(&batch) {
            Ok(child) => self.storing = Some((child.id() as i32, n, self.clock.now().at)),
            Err(e) => say!("vassal: storing {n} notification(s): {e}; tried again in a second"),
        }
    }

    /// The `vassal-notify` storing alarms ended.
    fn stored(&mut self, ok: bool, how: &str) {
        let Some((_, n, _)) = self.storing.take() else {
            return;
        };
        if ok {
            self.unsent.drain(..n.min(self.unsent.len()));
            self.store();
        } else {
            say!(
                "vassal: storing {n} notification(s): vassal-notify {how}; tried again in a second"
            );
        }
    }

    /// Rotates the logs and checks the site's alarms; returns whether
    /// anything moved since the last time (figures, logs' sizes).
    fn housekeeping(&mut self, access: &mut Option<AccessLog>) -> bool {
        let logs = self.rotate_logs()
            + rotate(
                &model::layout::home::access_log(&self.cfg.home),
                ACCESS_LOG_MAX,
            );
        if let Some(a) = access {
            a.reopen();
        }
        // Memory in MiB: an idle site's page counts wobble.
        let seen = self.check_site().map(|f| crate::site::Figures {
            memory: f.memory >> 20,
            ..f
        });
        let moved = match (seen, &self.seen) {
            (Some(f), Some((was, logs_were))) => f != *was || logs != *logs_were,
            _ => true,
        };
        self.seen = seen.map(|f| (f, logs));
        moved
    }

    /// The site's alarms: an OOM kill, memory near the limit; and those that
    /// could not be stored before. Returns the figures read.
    fn check_site(&mut self) -> Option<crate::site::Figures> {
        if let Some((pid, _, since)) = self.storing {
            if self.clock.now().at.saturating_duration_since(since) > STORE_MAX {
                // Reaped as killed: its alarms wait for the next try.
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        self.store();
        let figures = self.figures()?;
        for (kind, message) in self.alarms.check(&figures) {
            self.alarm(kind, &message);
        }
        // A reseller's container: a notification for each change of its
        // sites and each new refusal of its drop directory.
        // What was told is kept in the home, so that nothing is told twice
        // across restarts of this supervisor, and nothing missed meanwhile.
        if let Some(now) = crate::site::sites(&self.cfg.usage) {
            let seen = model::layout::home::private(&self.cfg.home).join("sites-seen.json");
            let before = self.sites.take().unwrap_or_else(|| {
                std::fs::read(&seen)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default()
            });
            let changes = now.changes(&before);
            for message in &changes {
                self.alarm("site", message);
            }
            if !changes.is_empty() {
                if let Ok(bytes) = serde_json::to_vec(&now) {
                    let _ = model::atomic::write(&seen, &bytes, 0o600);
                }
            }
            self.sites = Some(now);
        }
        Some(figures)
    }

    /// The site's cgroup figures and disk usage now.
    fn figures(&self) -> Option<crate::site::Figures> {
        let mut f = self.site.as_ref()?.figures();
        f.disk = crate::site::disk(&self.cfg.usage);
        Some(f)
    }

    /// Rotates `~/logs/<name>.log` past its size limit: copy to `.1` (older
    /// copies move to `.2` and `.3`), then truncate. The process keeps its
    /// append-mode descriptor, so its next lines go to the fresh file.
    /// Returns the sum of the logs' sizes seen (what moved since last time).
    fn rotate_logs(&self) -> u64 {
        self.procs
            .iter()
            .map(|(name, p)| {
                rotate(
                    &model::layout::home::log(&self.cfg.home, name.as_str()),
                    p.spec.file.log_max.0,
                )
            })
            .sum()
    }

    /// Answers one request line of the control socket.
    fn serve(&mut self, line: &[u8]) -> Vec<u8> {
        let resp = match model::control::request::<Request>(line) {
            Ok(req) => self.answer(req),
            Err(refusal) => refusal,
        };
        model::control::line(&resp)
    }

    fn answer(&mut self, req: Request) -> Response {
        let name = match &req {
            Request::Status => {
                let site = self.figures();
                // Alarms not stored yet (a full home): shown here meanwhile.
                let unsent: Vec<_> = self
                    .unsent
                    .iter()
                    .map(|(kind, message)| serde_json::json!({ "kind": kind, "message": message }))
                    .collect();
                return Response::ok(serde_json::json!({
                    "processes": self.status(),
                    "site": site,
                    "unsent": unsent,
                }));
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
        let reload = matches!(req, Request::Reload { .. });
        let (event, done) = match req {
            Request::Stop { .. } => (Event::Stop, "stopping"),
            Request::Start { .. } => (Event::Start, "started"),
            Request::Restart { .. } | Request::Reload { .. } => (Event::Restart, "restarting"),
            Request::Status => unreachable!("answered above"),
        };
        if let Some(refusal) = p.refusal(&event, reload) {
            return Response::err(refusal.to_string());
        }
        let failed = self.dispatch(&n, event);
        let handing_over = self.procs.get(&n).is_some_and(|p| p.next.is_some());
        match failed {
            Some(e) => Response::err(e),
            _ if handing_over && done == "restarting" => {
                Response::ok(serde_json::json!("handing over to a new instance"))
            }
            _ => Response::ok(serde_json::json!(done)),
        }
    }
}

/// Whether this is PID 1 of a pid namespace (a container's init).
fn is_init() -> bool {
    std::process::id() == 1
}

/// The processes of the container but this one, from its own /proc (which
/// lists its pid namespace only); `None` if /proc cannot be read.
fn others() -> Option<Vec<i32>> {
    let dir = std::fs::read_dir("/proc").ok()?;
    Some(
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid > 1)
            .collect(),
    )
}

/// Whether any process but this one is left in the container.
fn others_alive() -> bool {
    others().is_some_and(|p| !p.is_empty())
}

/// Sends `sig` to every other process of the container. Not `kill(-1)`:
/// the kernel answers that by walking every task of the host, which at
/// thousands of containers made each one's stop cost O(host).
fn signal_others(sig: Signal) {
    match others() {
        Some(pids) => {
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), sig);
            }
        }
        None => {
            let _ = kill(Pid::from_raw(-1), sig);
        }
    }
}
