//! One process's lifecycle as a pure function, the shape of Horust's
//! `service_handler`: [`Proc::on`] takes the state, an [`Event`] and the time,
//! changes the state and returns the [`Effect`]s to carry out. It starts,
//! signals, connects or subscribes nothing itself: the supervisor's loop does
//! that and feeds what came of it back as events (a launch's pid, whether a
//! socket accepts, the router's answers). So every transition is tested here
//! without a process, a socket or a clock.
//!
//! Longer than the ~600 lines we aim for: every transition of a process is
//! here, to be read and tested together, and half of it is the documentation
//! of its events and effects. Its tests are in `lifecycle/tests.rs`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use model::backoff::{Backoff, Throttle};
use model::process::{Http, Process, Restart};
use model::Name;
use nix::sys::signal::Signal;
use serde::Serialize;

/// The time of an event: monotonic for timers, schedule seconds for jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// For restarts, grace periods and readiness checks.
    pub at: Instant,
    /// Wall-clock microseconds (shown as a process's start time).
    pub wall_us: u64,
    /// Schedule time in seconds (runs faster in tests; see `Clock`).
    pub secs: u64,
}

/// What the whole supervisor is doing, as one process's transitions need it.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    /// Restart throttling.
    pub throttle: Throttle,
    /// The supervisor is shutting down: nothing starts again.
    pub shutting_down: bool,
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
pub enum After {
    /// It stays stopped.
    Stay,
    /// It starts again (a restart that cannot hand over).
    Start,
    /// Its file is gone: it is forgotten.
    Remove,
}

/// Which instance a launch is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The process itself (a start, a restart after a stop, a job's run).
    Main,
    /// A new instance beside the running one, taking over once it accepts.
    Next,
}

/// Something that happened to a process.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Its file appeared: start it, or arm a job's schedule.
    Activate,
    /// Its file changed in a way that needs the running process restarted.
    Replace(Process),
    /// Its file changed in a way the running process takes as it is.
    Update(Process),
    /// Its file is gone.
    Remove,
    /// `vassal start`: start it now (a job runs now; its schedule carries on).
    Start,
    /// `vassal stop`: stop it and keep it stopped (a job's schedule is disarmed).
    Stop,
    /// `vassal restart` / `reload`: hand over when it can, else stop then start.
    Restart,
    /// The supervisor shuts down.
    Shutdown,
    /// A [`Effect::Launch`] started this pid.
    Launched {
        /// The instance.
        role: Role,
        /// Its pid.
        pid: i32,
        /// The socket it was told to listen on.
        socket: Option<String>,
    },
    /// A [`Effect::Launch`] failed.
    LaunchFailed {
        /// The instance.
        role: Role,
        /// Why, in one line.
        error: String,
    },
    /// A child of it ended (reaped).
    Exited {
        /// Its pid.
        pid: i32,
        /// "exited with code 1", "killed by SIGKILL".
        text: String,
        /// Exit code 0.
        ok: bool,
    },
    /// The answer to [`Effect::CheckReady`].
    Accepts {
        /// The socket asked about.
        socket: String,
        /// Something listens there.
        yes: bool,
    },
    /// The router's answers to [`Effect::Subscribe`].
    Subscribed {
        /// One per domain.
        subs: Vec<SubState>,
        /// The shortest time to live granted (seconds).
        ttl: u64,
    },
    /// Time passed: timers that are due fire.
    Tick,
}

/// Something for the supervisor to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Start an instance listening on `socket` (a stale file there removed
    /// first); the result comes back as `Launched` or `LaunchFailed`.
    Launch {
        /// Which instance.
        role: Role,
        /// Its socket, in place of `{socket}` and in `$SOCKET`.
        socket: Option<String>,
    },
    /// Send a signal to a process group.
    Kill {
        /// The group's leader.
        pid: i32,
        /// The signal.
        signal: Signal,
    },
    /// Ask whether something accepts on the socket; `Accepts` follows.
    CheckReady {
        /// The socket.
        socket: String,
    },
    /// Subscribe these domains on this socket to the router; `Subscribed` follows.
    Subscribe(Http),
    /// Withdraw these domains on this socket from the router.
    Withdraw(Http),
    /// Store a notification for the tenant.
    Alarm {
        /// Its kind ("restart-loop").
        kind: &'static str,
        /// One line.
        message: String,
    },
    /// The process is gone for good: drop it from the table.
    Forget,
}

/// The router's last answer for one domain of a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubState {
    /// The domain.
    pub domain: String,
    /// Taken.
    pub ok: bool,
    /// "subscribed for 60 s", or the router's reason.
    pub answer: String,
}

/// A new instance started beside the running one (a restart that hands over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Next {
    /// Its pid.
    pub pid: i32,
    /// The socket it listens on.
    pub socket: String,
    /// When it started.
    pub started: Instant,
    /// The same, in wall-clock microseconds.
    pub started_at_us: u64,
    /// When it is given up if it does not accept by then.
    pub give_up_at: Instant,
}

/// How often a starting instance is asked whether it accepts.
pub const READY_POLL: Duration = Duration::from_millis(20);
/// Quick deaths in a row that make a restart loop worth telling.
pub const LOOP_ALARM: u32 = 5;

/// One process: its file and where it is in its life.
#[derive(Debug, Clone)]
pub struct Proc {
    /// Its name (the file's stem).
    pub name: Name,
    /// The file it runs by.
    pub spec: Process,
    /// Where it is.
    pub state: State,
    /// The running instance.
    pub pid: Option<i32>,
    /// When the running instance started.
    pub started: Option<Instant>,
    /// The same, in wall-clock microseconds.
    pub started_at_us: Option<u64>,
    /// Restarts after deaths.
    pub restarts: u32,
    /// Restart throttling.
    pub backoff: Backoff,
    /// How the last instance ended.
    pub last_exit: Option<String>,
    /// Why it is in its state, when that needs saying.
    pub reason: Option<String>,
    /// When a throttled restart is due.
    pub restart_at: Option<Instant>,
    /// When a stopping instance gets SIGKILL.
    pub kill_at: Option<Instant>,
    /// What follows the end of a stop.
    pub after: After,
    /// A job's next time (schedule seconds).
    pub next_run: Option<u64>,
    /// When a job's run passes its timeout.
    pub job_deadline: Option<Instant>,
    /// Runs of a job skipped because the previous one was still going.
    pub skipped: u32,
    /// The router's answers.
    pub subs: Vec<SubState>,
    /// When the subscriptions are renewed.
    pub refresh_at: Option<Instant>,
    /// The socket the running instance listens on (http processes).
    pub socket: Option<String>,
    /// Whether it accepted there (and was subscribed).
    pub ready: bool,
    /// When to look again whether it accepts.
    pub ready_check_at: Option<Instant>,
    /// A new instance coming up beside the running one.
    pub next: Option<Next>,
    /// Old instances told to stop, with the time of their SIGKILL.
    pub retiring: Vec<(i32, Option<Instant>)>,
}

/// Why a request of the tenant's cannot act on a process now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// `stop` of a process that does not run.
    NotRunning(Name),
    /// `start` of a process that runs.
    AlreadyRunning(Name),
    /// `reload` of a process that cannot start a new instance beside the old.
    CannotHandOver(Name),
    /// `reload` while a hand-over is under way.
    HandingOver(Name),
    /// `reload` before the process accepts: nothing to hand over from.
    NotServing(Name),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotRunning(n) => write!(f, "{n} is not running"),
            Refusal::AlreadyRunning(n) => write!(f, "{n} is already running"),
            Refusal::CannotHandOver(n) => write!(
                f,
                "{n} cannot hand over: it needs [http] and {{socket}} in its command (or env) \
                 so that a new instance listens beside the old one; `vassal restart {n}` stops then starts"
            ),
            Refusal::HandingOver(n) => write!(f, "{n} is already handing over"),
            Refusal::NotServing(n) => write!(f, "{n} is not serving yet: nothing to hand over from"),
        }
    }
}

type Effects = Vec<Effect>;

impl Proc {
    /// A process not started yet.
    pub fn new(name: Name, spec: Process) -> Proc {
        Proc {
            name,
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
    pub fn pids(&self) -> impl Iterator<Item = i32> + '_ {
        self.pid
            .into_iter()
            .chain(self.next.as_ref().map(|n| n.pid))
            .chain(self.retiring.iter().map(|(pid, _)| *pid))
    }

    /// The earliest monotonic timer (a job's next time is in schedule
    /// seconds: see [`Proc::next_run`]).
    pub fn deadline(&self) -> Option<Instant> {
        [
            self.restart_at,
            self.kill_at,
            self.job_deadline,
            self.refresh_at,
            self.ready_check_at,
        ]
        .into_iter()
        .chain(self.retiring.iter().map(|(_, k)| *k))
        .flatten()
        .min()
    }

    /// Why the tenant's request cannot act now, if it cannot: `stop` of a
    /// process that does not run, `start` of one that does, `reload` of one
    /// that cannot hand over now.
    pub fn refusal(&self, ev: &Event, reload: bool) -> Option<Refusal> {
        let n = self.name.clone();
        match ev {
            Event::Stop if self.pid.is_none() && self.state == State::Stopped => {
                Some(Refusal::NotRunning(n))
            }
            Event::Start if self.pid.is_some() => Some(Refusal::AlreadyRunning(n)),
            Event::Restart if reload && !self.spec.hands_over() => Some(Refusal::CannotHandOver(n)),
            Event::Restart if reload && self.next.is_some() => Some(Refusal::HandingOver(n)),
            Event::Restart if reload && !(self.pid.is_some() && self.ready) => {
                Some(Refusal::NotServing(n))
            }
            _ => None,
        }
    }

    /// Takes one event; returns what to do.
    pub fn on(&mut self, ev: Event, now: Now, ctx: &Ctx) -> Effects {
        let mut fx = Vec::new();
        match ev {
            Event::Activate => self.activate(now, &mut fx),
            Event::Replace(spec) => {
                self.spec = spec;
                self.next_run = None;
                if self.pid.is_some() {
                    self.restart(&mut fx, now);
                } else {
                    self.activate(now, &mut fx);
                }
            }
            Event::Update(spec) => {
                let changed = self.spec.file.http != spec.file.http;
                if changed {
                    self.unsubscribe(&mut fx);
                }
                self.spec = spec;
                self.next_run = None;
                self.schedule_next(now);
                if changed {
                    self.subscribe(&mut fx);
                }
            }
            Event::Remove => self.stop(After::Remove, now, &mut fx),
            Event::Start => {
                if self.spec.schedule.is_some() {
                    self.schedule_next(now);
                } else {
                    self.backoff = Backoff::default();
                }
                fx.push(self.launch_main());
            }
            Event::Stop => {
                self.stop(After::Stay, now, &mut fx);
                self.next_run = None;
            }
            Event::Restart => {
                self.backoff = Backoff::default();
                self.restart(&mut fx, now);
            }
            Event::Shutdown => self.stop(After::Stay, now, &mut fx),
            Event::Launched { role, pid, socket } => self.launched(role, pid, socket, now),
            Event::LaunchFailed { role, error } => match role {
                Role::Main => {
                    self.last_exit = Some(error);
                    self.after_exit(Duration::ZERO, false, now, ctx, &mut fx);
                }
                Role::Next => {
                    self.reason = Some(format!("{error}; the running instance keeps serving"));
                }
            },
            Event::Exited { pid, text, ok } => self.exited(pid, text, ok, now, ctx, &mut fx),
            Event::Accepts { socket, yes } => self.accepts(&socket, yes, now, &mut fx),
            Event::Subscribed { subs, ttl } if self.ready => {
                self.subs = subs;
                self.refresh_at = Some(now.at + Duration::from_secs((ttl / 3).max(1)));
            }
            // Answers for an instance that went away in between.
            Event::Subscribed { .. } => {}
            Event::Tick => self.tick(now, ctx, &mut fx),
        }
        fx
    }

    fn launch_main(&self) -> Effect {
        Effect::Launch {
            role: Role::Main,
            socket: self.spec.file.http.as_ref().map(|h| h.socket.clone()),
        }
    }

    /// Starts a process, or arms a job's schedule.
    fn activate(&mut self, now: Now, fx: &mut Effects) {
        if self.spec.schedule.is_some() {
            self.state = State::Scheduled;
            self.schedule_next(now);
        } else {
            fx.push(self.launch_main());
        }
    }

    fn schedule_next(&mut self, now: Now) {
        match &self.spec.schedule {
            Some(s) => {
                if self.next_run.is_none_or(|t| t <= now.secs) {
                    self.next_run = s.next_after(now.secs);
                }
            }
            None => self.next_run = None,
        }
    }

    fn launched(&mut self, role: Role, pid: i32, socket: Option<String>, now: Now) {
        match role {
            Role::Main => {
                self.pid = Some(pid);
                self.started = Some(now.at);
                self.started_at_us = Some(now.wall_us);
                self.state = State::Running;
                self.restart_at = None;
                if let Some(t) = self.spec.file.timeout {
                    self.job_deadline = Some(now.at + Duration::from_secs_f64(t));
                }
                // Subscribed once it accepts on its socket.
                self.ready = false;
                self.ready_check_at = socket.as_ref().map(|_| now.at);
                self.socket = socket;
            }
            Role::Next => {
                let ready_timeout = self
                    .spec
                    .file
                    .http
                    .as_ref()
                    .map_or(60.0, |h| h.ready_timeout);
                self.next = Some(Next {
                    pid,
                    socket: socket.unwrap_or_default(),
                    started: now.at,
                    started_at_us: now.wall_us,
                    give_up_at: now.at + Duration::from_secs_f64(ready_timeout),
                });
                self.reason = None;
                self.ready_check_at = Some(now.at);
            }
        }
    }

    /// Beside the old instance when it can hand over (the old one serves
    /// until the new one accepts), else stop then start.
    fn restart(&mut self, fx: &mut Effects, now: Now) {
        let can = self.spec.hands_over() && self.pid.is_some() && self.ready && self.next.is_none();
        let Some(base) = self
            .spec
            .file
            .http
            .as_ref()
            .map(|h| h.socket.clone())
            .filter(|_| can)
        else {
            return self.stop(After::Start, now, fx);
        };
        // The new one listens on the other of `<socket>` and `<socket>.1`.
        let socket = if self.socket.as_deref() == Some(base.as_str()) {
            format!("{base}.1")
        } else {
            base
        };
        fx.push(Effect::Launch {
            role: Role::Next,
            socket: Some(socket),
        });
    }

    /// Sends the stop signal; SIGKILL follows after the grace period.
    fn stop(&mut self, after: After, now: Now, fx: &mut Effects) {
        // The router stops sending it requests before it is asked to stop.
        self.unsubscribe(fx);
        // Going away: no longer served, nor asked whether it accepts.
        self.ready = false;
        self.ready_check_at = None;
        self.after = after;
        self.restart_at = None;
        self.job_deadline = None;
        if let Some(next) = self.next.take() {
            // A hand-over under way is called off.
            fx.push(Effect::Kill {
                pid: next.pid,
                signal: Signal::SIGKILL,
            });
            self.retiring.push((next.pid, None));
        }
        match self.pid {
            Some(pid) => {
                fx.push(Effect::Kill {
                    pid,
                    signal: self.stop_signal(),
                });
                self.state = State::Stopping;
                self.kill_at = Some(now.at + Duration::from_secs_f64(self.spec.file.grace));
            }
            None => {
                self.state = State::Stopped;
                match after {
                    After::Remove => fx.push(Effect::Forget),
                    After::Start => {
                        self.after = After::Stay;
                        self.activate(now, fx);
                    }
                    After::Stay => self.next_run = None,
                }
            }
        }
    }

    fn stop_signal(&self) -> Signal {
        Signal::try_from(self.spec.stop_signal).unwrap_or(Signal::SIGTERM)
    }

    fn exited(&mut self, pid: i32, text: String, ok: bool, now: Now, ctx: &Ctx, fx: &mut Effects) {
        if let Some(i) = self.retiring.iter().position(|(x, _)| *x == pid) {
            // An old instance, stopped after a hand-over.
            self.retiring.remove(i);
            return;
        }
        if let Some(next) = self.next.take_if(|n| n.pid == pid) {
            self.reason = Some(format!(
                "the new instance {text} before it accepted on {}: the old one keeps serving",
                next.socket
            ));
            return;
        }
        if self.pid != Some(pid) {
            return;
        }
        let uptime = self
            .started
            .map(|s| now.at.saturating_duration_since(s))
            .unwrap_or_default();
        self.unsubscribe(fx);
        self.ready = false;
        self.ready_check_at = None;
        self.pid = None;
        self.kill_at = None;
        self.job_deadline = None;
        self.last_exit = Some(text);
        self.after_exit(uptime, ok, now, ctx, fx);
    }

    fn after_exit(&mut self, uptime: Duration, ok: bool, now: Now, ctx: &Ctx, fx: &mut Effects) {
        match self.after {
            After::Remove => return fx.push(Effect::Forget),
            After::Start => {
                self.after = After::Stay;
                if !ctx.shutting_down {
                    self.activate(now, fx);
                }
                return;
            }
            After::Stay if self.state == State::Stopping => {
                // A job stopped for its timeout keeps its schedule; a stop asked for disarms it.
                self.state = if self.spec.schedule.is_some() && self.next_run.is_some() {
                    State::Scheduled
                } else {
                    State::Stopped
                };
                return;
            }
            After::Stay => {}
        }
        if ctx.shutting_down {
            self.state = State::Stopped;
            return;
        }
        if self.spec.schedule.is_some() {
            self.state = State::Scheduled;
            return;
        }
        let again = match self.spec.restart() {
            Restart::Always => true,
            Restart::OnFailure => !ok,
            _ => false,
        };
        if !again {
            self.state = State::Stopped;
            return;
        }
        let delay = self.backoff.on_death(&ctx.throttle, uptime);
        self.restarts += 1;
        if self.backoff.quick_deaths == LOOP_ALARM {
            fx.push(Effect::Alarm {
                kind: "restart-loop",
                message: format!(
                    "process {} is in a restart loop: {LOOP_ALARM} quick deaths in a row, last {}",
                    self.name,
                    self.last_exit.as_deref().unwrap_or("unknown")
                ),
            });
        }
        if delay.is_zero() {
            fx.push(self.launch_main());
        } else {
            self.state = State::Backoff;
            self.restart_at = Some(now.at + delay);
            self.reason = Some(format!(
                "restarting in {delay:?} ({} quick deaths in a row)",
                self.backoff.quick_deaths
            ));
        }
    }

    /// Whether a starting instance accepts: a first start is then
    /// subscribed; a new instance takes over from the old one, which is
    /// withdrawn from the router and then stopped with its grace.
    fn accepts(&mut self, socket: &str, yes: bool, now: Now, fx: &mut Effects) {
        self.ready_check_at = None;
        if let Some(next) = self.next.as_ref().filter(|n| n.socket == socket) {
            if yes {
                let next = self.next.take().expect("matched above");
                let old_pid = self.pid.replace(next.pid);
                let old_socket = self.socket.replace(next.socket);
                self.started = Some(next.started);
                self.started_at_us = Some(next.started_at_us);
                self.ready = true;
                self.backoff = Backoff::default();
                // The new one in before the old one out: no request finds no backend.
                self.subscribe(fx);
                if let (Some(http), Some(old)) = (&self.spec.file.http, old_socket) {
                    fx.push(Effect::Withdraw(on_socket(http, &old)));
                }
                if let Some(pid) = old_pid {
                    fx.push(Effect::Kill {
                        pid,
                        signal: self.stop_signal(),
                    });
                    let grace = Duration::from_secs_f64(self.spec.file.grace);
                    self.retiring.push((pid, Some(now.at + grace)));
                }
            } else if now.at >= next.give_up_at {
                self.reason = Some(format!(
                    "the new instance did not accept on {} within {:?}: given up, the old one keeps serving",
                    next.socket,
                    next.give_up_at - next.started
                ));
                let pid = next.pid;
                fx.push(Effect::Kill {
                    pid,
                    signal: Signal::SIGKILL,
                });
                self.next = None;
                self.retiring.push((pid, None));
            } else {
                self.ready_check_at = Some(now.at + READY_POLL);
            }
            return;
        }
        if self.pid.is_none() || self.ready || self.socket.as_deref() != Some(socket) {
            return;
        }
        if yes {
            self.ready = true;
            if self
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("not accepting"))
            {
                self.reason = None;
            }
            self.subscribe(fx);
        } else {
            let waited = self
                .started
                .map(|s| now.at.saturating_duration_since(s))
                .unwrap_or_default();
            if waited > Duration::from_secs(1) {
                self.reason = Some(format!(
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
            self.ready_check_at = Some(now.at + wait);
        }
    }

    /// Timers that are due, one kind at a time as the original loop did:
    /// kills always; then the first of readiness, job timeout, refresh,
    /// restart and the job's time.
    fn tick(&mut self, now: Now, ctx: &Ctx, fx: &mut Effects) {
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now.at);
        if due(self.kill_at) {
            if let Some(pid) = self.pid {
                fx.push(Effect::Kill {
                    pid,
                    signal: Signal::SIGKILL,
                });
            }
            self.kill_at = None;
        }
        for (pid, kill_at) in &mut self.retiring {
            if kill_at.is_some_and(|t| t <= now.at) {
                fx.push(Effect::Kill {
                    pid: *pid,
                    signal: Signal::SIGKILL,
                });
                *kill_at = None;
            }
        }
        if ctx.shutting_down {
            return;
        }
        if due(self.ready_check_at) {
            self.ready_check_at = None;
            let socket = match &self.next {
                Some(n) => Some(n.socket.clone()),
                None => self
                    .socket
                    .clone()
                    .filter(|_| self.pid.is_some() && !self.ready),
            };
            if let Some(socket) = socket {
                fx.push(Effect::CheckReady { socket });
            }
            return;
        }
        if due(self.job_deadline) && self.pid.is_some() {
            self.job_deadline = None;
            self.reason = Some("the last run passed its timeout and was stopped".into());
            // Stopped for its timeout, it stays scheduled.
            return self.stop(After::Stay, now, fx);
        }
        if due(self.refresh_at) && self.pid.is_some() && self.ready {
            return self.subscribe(fx);
        }
        if due(self.restart_at) {
            return fx.push(self.launch_main());
        }
        if self.next_run.is_some_and(|t| t <= now.secs) && self.state != State::Stopped {
            if self.pid.is_some() {
                // Never two runs at once.
                self.skipped += 1;
                self.reason = Some(format!(
                    "{} run(s) skipped: the previous run was still going",
                    self.skipped
                ));
            } else {
                fx.push(self.launch_main());
            }
            self.schedule_next(now);
        }
    }

    /// Asks the router to route the domains to the running instance's socket.
    fn subscribe(&mut self, fx: &mut Effects) {
        if let (Some(http), Some(_), Some(socket), true) =
            (&self.spec.file.http, self.pid, &self.socket, self.ready)
        {
            fx.push(Effect::Subscribe(on_socket(http, socket)));
            // Renewed when the answers come back.
            self.refresh_at = None;
        }
    }

    /// Withdraws the running instance from the router (it may still accept:
    /// a changed `[http]` subscribes it again at once).
    fn unsubscribe(&mut self, fx: &mut Effects) {
        if let (Some(http), Some(socket), true) = (&self.spec.file.http, &self.socket, self.ready) {
            fx.push(Effect::Withdraw(on_socket(http, socket)));
        }
        self.subs.clear();
        self.refresh_at = None;
    }
}

/// The files read, against the processes that run: what should run, and
/// the files refused. A bad edit of a running process's file keeps its last
/// good version running, with the reason shown; a good file clears it.
pub fn desired(
    files: BTreeMap<Name, Result<Process, String>>,
    procs: &mut BTreeMap<Name, Proc>,
) -> (BTreeMap<Name, Process>, BTreeMap<Name, String>) {
    let (mut want, mut rejected) = (BTreeMap::new(), BTreeMap::new());
    for (name, file) in files {
        match (file, procs.get_mut(&name)) {
            (Ok(p), old) => {
                if let Some(old) = old {
                    old.reason = None;
                }
                want.insert(name, p);
            }
            (Err(why), Some(old)) if old.after != After::Remove => {
                old.reason = Some(why);
                want.insert(name, old.spec.clone());
            }
            (Err(why), _) => {
                rejected.insert(name, why);
            }
        }
    }
    (want, rejected)
}

/// The `[http]` of a process as one instance subscribes it: with its socket.
pub fn on_socket(http: &Http, socket: &str) -> Http {
    let mut h = http.clone();
    h.socket = socket.to_owned();
    h
}

#[cfg(test)]
mod tests;
