//! A vassal's lifecycle as pure functions: [`Life::on`] takes where a vassal
//! is, an [`Event`] and the time, and returns the [`Effect`]s for the manager
//! to carry out (start it, plan a restart, stop it, archive it). Nothing
//! here clones a container, touches a cgroup or reads a clock, so every
//! transition is tested without root.

use std::time::{Duration, Instant};

use model::backoff::{Backoff, Throttle};
use model::reconcile::Action;
use model::{Name, VassalFile};
use serde::Serialize;

/// A vassal's state as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Being started, or waiting for a throttled restart.
    Starting,
    /// Its init runs.
    Running,
    /// Frozen.
    Suspended,
    /// Not running (being stopped, or waiting).
    Stopped,
    /// Could not be started, and will not be retried until its file changes or a restart is asked for.
    Failed,
    /// Its file was refused and no earlier version runs.
    Rejected,
}

impl State {
    /// Its name as shown (`status`, the event streams).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Suspended => "suspended",
            State::Stopped => "stopped",
            State::Failed => "failed",
            State::Rejected => "rejected",
        }
    }
}

/// What to do once a vassal has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Its file is gone: archive it and forget it.
    Remove,
    /// Start it again (a restart).
    Start,
    /// The emperor is shutting down: forget it, keep its home.
    Forget,
}

/// What the rest of the emperor says about a vassal's surroundings.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// Restart throttling.
    pub throttle: &'a Throttle,
    /// Its group, if that is suspended: it does not start until the group resumes.
    pub suspended_group: Option<&'a Name>,
}

/// Something that happened to a vassal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Its file is new: start it.
    Start,
    /// Its init runs (the start finished).
    Started,
    /// The start failed; a transient failure (a full uid table on disk, a
    /// busy kernel) is retried with the throttle, the others wait for an edit.
    StartFailed {
        /// Why, in one line.
        error: String,
        /// Worth retrying by itself.
        transient: bool,
    },
    /// Its init exited.
    Exited {
        /// Which start of it.
        gen: u64,
        /// "exited with code 1", or "exited".
        exit: String,
    },
    /// A throttled restart is due.
    RestartDue {
        /// Which start it was planned for.
        gen: u64,
    },
    /// Stop it; `After` says what follows.
    Stop(After),
    /// The stop finished (init gone, cgroup empty and removed).
    StopDone,
    /// Its group was resumed; `own_frozen` says whether the site's own
    /// cgroup is frozen (suspended on its own, it stays so).
    GroupResumed {
        /// The site's own freezer state.
        own_frozen: bool,
    },
    /// `emperor suspend` (true) or `resume` (false) froze or thawed it.
    Frozen(bool),
}

/// Something for the manager to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Start its container now; `Started` or `StartFailed` follows.
    Start,
    /// Send `RestartDue` for this start after the delay.
    RestartAfter {
        /// How long.
        delay: Duration,
        /// Which start.
        gen: u64,
    },
    /// Its init died: its record and login link go, what is left in its
    /// cgroup is killed (off the loop), and `RestartDue` follows once that is
    /// done and the delay has passed.
    Restart {
        /// The throttle's delay.
        delay: Duration,
        /// Which start.
        gen: u64,
    },
    /// Stop it in the background (SIGTERM, grace, kill, cgroup removed); `StopDone` follows.
    BeginStop,
    /// Archive its home and forget it (its file is gone).
    Archive,
    /// Forget it, keeping its home (the emperor shuts down).
    Forget,
}

/// Where a vassal is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Life {
    /// As reported.
    pub state: State,
    /// Why, when that needs saying.
    pub reason: Option<String>,
    /// Restart throttling.
    pub backoff: Backoff,
    /// Restarts so far.
    pub restarts: u32,
    /// Starts the throttle delayed (a restart loop, a start that failed
    /// for a while).
    pub throttled: u32,
    /// Which start of it this is (events of older starts are stale).
    pub gen: u64,
    /// Being stopped, and what follows.
    pub stopping: Option<After>,
    /// When its running init started; `None` when none runs.
    pub since: Option<Instant>,
}

impl Default for Life {
    fn default() -> Life {
        Life {
            state: State::Starting,
            reason: None,
            backoff: Backoff::default(),
            restarts: 0,
            throttled: 0,
            gen: 0,
            stopping: None,
            since: None,
        }
    }
}

/// Why a control request cannot act on a vassal now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// A restart while it is being stopped.
    #[error("{0} is already stopping")]
    Stopping(Name),
    /// A suspend or resume of a vassal with no init, or one being stopped.
    #[error("{0} is not running")]
    NotRunning(Name),
    /// A resume of a site whose group is suspended.
    #[error("{name}'s group {group} is suspended; resume the group")]
    GroupSuspended {
        /// The site.
        name: Name,
        /// Its group.
        group: Name,
    },
}

type Effects = Vec<Effect>;

impl Life {
    /// The life of an init a previous emperor left running: running, or
    /// suspended if its cgroup is frozen.
    pub fn adopted(frozen: bool, now: Instant) -> Life {
        Life {
            state: if frozen {
                State::Suspended
            } else {
                State::Running
            },
            gen: 1,
            since: Some(now),
            ..Life::default()
        }
    }

    /// Whether an init runs.
    pub fn running(&self) -> bool {
        self.since.is_some()
    }

    /// Takes one event; returns what to do.
    pub fn on(&mut self, ev: Event, now: Instant, ctx: &Ctx) -> Effects {
        match ev {
            Event::Start => {
                if self.running() || self.stopping.is_some() {
                    return vec![];
                }
                self.start(ctx)
            }
            Event::Started => {
                self.gen += 1;
                self.since = Some(now);
                self.state = State::Running;
                self.reason = None;
                vec![]
            }
            Event::StartFailed { error, transient } => {
                if transient {
                    let delay = self.backoff.on_death(ctx.throttle, Duration::ZERO);
                    self.throttled += u32::from(!delay.is_zero());
                    self.state = State::Starting;
                    self.reason = Some(format!("{error}; retry in {delay:?}"));
                    vec![Effect::RestartAfter {
                        delay,
                        gen: self.gen,
                    }]
                } else {
                    self.state = State::Failed;
                    self.reason = Some(error);
                    vec![]
                }
            }
            Event::Exited { gen, exit } => {
                if gen != self.gen || self.stopping.is_some() {
                    return vec![];
                }
                let Some(since) = self.since.take() else {
                    return vec![];
                };
                let uptime = now.saturating_duration_since(since);
                let delay = self.backoff.on_death(ctx.throttle, uptime);
                self.restarts += 1;
                self.throttled += u32::from(!delay.is_zero());
                self.state = State::Starting;
                self.reason = Some(format!(
                    "init {exit} after {uptime:.1?}; restart in {delay:?}"
                ));
                vec![Effect::Restart {
                    delay,
                    gen: self.gen,
                }]
            }
            Event::RestartDue { gen } => {
                if gen == self.gen
                    && !self.running()
                    && self.stopping.is_none()
                    && self.state == State::Starting
                {
                    self.start(ctx)
                } else {
                    vec![]
                }
            }
            Event::Stop(then) => self.stop(then),
            Event::StopDone => {
                self.since = None;
                match self.stopping.take() {
                    Some(After::Start) => {
                        self.restarts += 1;
                        self.state = State::Starting;
                        self.start(ctx)
                    }
                    Some(After::Remove) => vec![Effect::Archive],
                    Some(After::Forget) | None => vec![Effect::Forget],
                }
            }
            Event::GroupResumed { own_frozen } => {
                if self.running() {
                    self.state = if own_frozen {
                        State::Suspended
                    } else {
                        State::Running
                    };
                    vec![]
                } else if self.state == State::Stopped && self.stopping.is_none() {
                    // Its start waited for the group.
                    self.state = State::Starting;
                    self.start(ctx)
                } else {
                    vec![]
                }
            }
            // Stopped while the freezer worked: its state is the stop's.
            Event::Frozen(_) if !self.running() || self.stopping.is_some() => vec![],
            Event::Frozen(frozen) => {
                self.state = if frozen {
                    State::Suspended
                } else {
                    State::Running
                };
                vec![]
            }
        }
    }

    /// Starts it, unless its group is suspended: then it waits for the resume.
    fn start(&mut self, ctx: &Ctx) -> Effects {
        if let Some(g) = ctx.suspended_group {
            self.state = State::Stopped;
            self.reason = Some(format!("group {g} is suspended; starts on resume"));
            return vec![];
        }
        vec![Effect::Start]
    }

    fn stop(&mut self, then: After) -> Effects {
        self.stopping = Some(then);
        self.state = State::Stopped;
        self.reason = Some(
            match then {
                After::Remove => "stopping: file removed",
                After::Start => "restarting",
                After::Forget => "stopping: emperor shutdown",
            }
            .to_owned(),
        );
        vec![Effect::BeginStop]
    }

    /// `emperor restart`: a running vassal is stopped and started; one that
    /// does not run (failed, throttled) is started now, its throttle forgotten.
    pub fn restart(&mut self, name: &Name, ctx: &Ctx) -> Result<Effects, Refusal> {
        if self.stopping.is_some() {
            return Err(Refusal::Stopping(name.clone()));
        }
        if self.running() {
            return Ok(self.stop(After::Start));
        }
        self.backoff = Backoff::default();
        // A restart planned earlier is now stale.
        self.gen += 1;
        self.state = State::Starting;
        Ok(self.start(ctx))
    }

    /// Whether `emperor suspend` / `resume` may act: an init runs and is not
    /// being stopped, and a site is not resumed inside a suspended group.
    pub fn may_freeze(
        &self,
        name: &Name,
        frozen: bool,
        suspended_group: Option<&Name>,
    ) -> Result<(), Refusal> {
        if !self.running() || self.stopping.is_some() {
            return Err(Refusal::NotRunning(name.clone()));
        }
        match suspended_group {
            Some(g) if !frozen => Err(Refusal::GroupSuspended {
                name: name.clone(),
                group: g.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// Whether a change of a vassal's file needs its container started anew
/// (the rest, limits and domains, is applied in place).
pub fn needs_restart(old: &VassalFile, new: &VassalFile) -> bool {
    match (old, new) {
        (VassalFile::Site(a), VassalFile::Site(b)) => {
            a.group != b.group || a.user != b.user || a.container.rootfs != b.container.rootfs
        }
        (VassalFile::Group(a), VassalFile::Group(b)) => {
            a.user != b.user || a.container.rootfs != b.container.rootfs
        }
        _ => true,
    }
}

/// Puts a reconcile's actions in the order they can be carried out: every
/// stop first, sites before their groups (a group's cgroup can only go once
/// its sites' are gone); then restarts and updates; starts last, groups
/// before sites (a site's cgroup lives in its group's).
pub fn order(
    actions: &mut [Action<Name>],
    want: &std::collections::BTreeMap<Name, VassalFile>,
    previous: &std::collections::BTreeMap<Name, VassalFile>,
) {
    let is_group = |n: &Name, m: &std::collections::BTreeMap<Name, VassalFile>| {
        matches!(m.get(n), Some(VassalFile::Group(_)))
    };
    actions.sort_by_key(|a| match a {
        Action::Stop(n) => (0, is_group(n, previous)),
        Action::Restart(_) => (1, false),
        Action::Update(n) => (2, !is_group(n, want)),
        Action::Start(n) => (3, !is_group(n, want)),
    });
}

#[cfg(test)]
mod tests;
