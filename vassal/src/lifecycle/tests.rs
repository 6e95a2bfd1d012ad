//! Every transition of a process, with made-up times: no process is started,
//! no socket opened, no clock read (but one base instant).
//! Long on purpose: one test per transition, each readable on its own.

use super::*;

/// A fixed base time: schedule second 1,000,040 (20 s past a whole minute).
#[allow(clippy::disallowed_methods)]
fn t0() -> Now {
    Now {
        at: Instant::now(),
        wall_us: 1_000_040_000_000,
        secs: 1_000_040,
    }
}

fn later(now: Now, secs: f64) -> Now {
    let d = Duration::from_secs_f64(secs);
    Now {
        at: now.at + d,
        wall_us: now.wall_us + d.as_micros() as u64,
        secs: now.secs + d.as_secs(),
    }
}

fn ctx() -> Ctx {
    Ctx {
        throttle: Throttle {
            base: Duration::from_secs(1),
            max: Duration::from_secs(8),
            healthy: Duration::from_secs(30),
        },
        shutting_down: false,
    }
}

fn spec(toml: &str) -> Process {
    Process::parse(&"p".parse().unwrap(), toml).unwrap()
}

fn proc_of(toml: &str) -> Proc {
    Proc::new("web".parse().unwrap(), spec(toml))
}

const PLAIN: &str = "command = [\"app\"]";
const JOB: &str = "command = [\"backup\"]\nschedule = \"* * * * *\"";
const WEB: &str = "command = [\"app\", \"--socket\", \"{socket}\"]\ngrace = 3\n\
                   [http]\ndomains = [\"a.example\"]\nsocket = \"web.sock\"\nready_timeout = 5";

fn launch(role: Role, socket: Option<&str>) -> Effect {
    Effect::Launch {
        role,
        socket: socket.map(str::to_owned),
    }
}

fn kill(pid: i32, signal: Signal) -> Effect {
    Effect::Kill { pid, signal }
}

fn exited(pid: i32, ok: bool) -> Event {
    Event::Exited {
        pid,
        text: if ok {
            "exited with code 0".into()
        } else {
            "exited with code 1".into()
        },
        ok,
    }
}

/// Feeds back a launch's pid, as the supervisor does.
fn launched(p: &mut Proc, role: Role, pid: i32, socket: Option<&str>, now: Now) {
    let fx = p.on(
        Event::Launched {
            role,
            pid,
            socket: socket.map(str::to_owned),
        },
        now,
        &ctx(),
    );
    assert!(fx.is_empty(), "{fx:?}");
}

/// A process started at `now` with `pid` (its launch carried out).
fn running(toml: &str, pid: i32, now: Now) -> Proc {
    let mut p = proc_of(toml);
    let fx = p.on(Event::Activate, now, &ctx());
    let socket = match fx.as_slice() {
        [Effect::Launch { socket, .. }] => socket.clone(),
        other => panic!("not a launch: {other:?}"),
    };
    assert!(p
        .on(
            Event::Launched {
                role: Role::Main,
                pid,
                socket
            },
            now,
            &ctx()
        )
        .is_empty());
    p
}

/// A web process started, accepting and subscribed.
fn serving(pid: i32, now: Now) -> Proc {
    let mut p = running(WEB, pid, now);
    assert_eq!(
        p.on(Event::Tick, now, &ctx()),
        [Effect::CheckReady {
            socket: "web.sock".into()
        }]
    );
    let fx = p.on(
        Event::Accepts {
            socket: "web.sock".into(),
            yes: true,
        },
        now,
        &ctx(),
    );
    assert!(matches!(fx.as_slice(), [Effect::Subscribe(h)] if h.socket == "web.sock"));
    p
}

#[test]
fn a_process_is_launched_and_runs() {
    let now = t0();
    let mut p = proc_of(PLAIN);
    assert_eq!(
        p.on(Event::Activate, now, &ctx()),
        [launch(Role::Main, None)]
    );
    assert_eq!(p.state, State::Stopped, "running only once launched");
    launched(&mut p, Role::Main, 40, None, now);
    assert_eq!((p.state, p.pid), (State::Running, Some(40)));
    assert_eq!(p.started_at_us, Some(now.wall_us));
    assert_eq!(p.deadline(), None, "nothing to wait for");
}

#[test]
fn a_job_is_armed_not_started() {
    let now = t0();
    let mut p = proc_of(JOB);
    assert!(p.on(Event::Activate, now, &ctx()).is_empty());
    assert_eq!(p.state, State::Scheduled);
    assert_eq!(
        p.next_run,
        Some(1_000_040 - 20 + 60),
        "the next whole minute"
    );
    assert!(
        p.on(Event::Tick, later(now, 39.0), &ctx()).is_empty(),
        "not yet"
    );
    assert_eq!(
        p.on(Event::Tick, later(now, 40.0), &ctx()),
        [launch(Role::Main, None)]
    );
    assert_eq!(
        p.next_run,
        Some(1_000_040 - 20 + 120),
        "armed for the next one"
    );
}

#[test]
fn a_first_death_restarts_at_once() {
    let now = t0();
    let mut p = running(PLAIN, 40, now);
    let fx = p.on(exited(40, false), later(now, 100.0), &ctx());
    assert_eq!(fx, [launch(Role::Main, None)]);
    assert_eq!(p.restarts, 1);
    assert_eq!(p.last_exit.as_deref(), Some("exited with code 1"));
    assert_eq!(p.pid, None);
}

#[test]
fn quick_deaths_wait_longer_each_time() {
    let mut now = t0();
    let mut p = running(PLAIN, 40, now);
    let mut waits = Vec::new();
    for pid in 41..46 {
        now = later(now, 0.5);
        let fx = p.on(exited(pid - 1, false), now, &ctx());
        if !fx.contains(&launch(Role::Main, None)) {
            assert_eq!(p.state, State::Backoff);
            let due = p.restart_at.expect("a restart is planned");
            waits.push((due - now.at).as_secs());
            assert!(
                p.on(Event::Tick, later(now, 0.9), &ctx()).is_empty(),
                "not before its time"
            );
            now = Now {
                at: due,
                ..later(now, (due - now.at).as_secs_f64())
            };
            assert_eq!(p.on(Event::Tick, now, &ctx()), [launch(Role::Main, None)]);
        } else {
            waits.push(0);
        }
        launched(&mut p, Role::Main, pid, None, now);
        assert_eq!(p.restart_at, None);
    }
    assert_eq!(waits, [0, 1, 2, 4, 8], "doubling from the base, up to max");
    assert!(p
        .reason
        .is_some_and(|r| r.contains("quick deaths in a row")));
}

#[test]
fn a_healthy_run_resets_the_throttle() {
    let now = t0();
    let mut p = running(PLAIN, 40, now);
    p.backoff.quick_deaths = 4;
    let fx = p.on(exited(40, false), later(now, 31.0), &ctx());
    assert_eq!(fx, [launch(Role::Main, None)], "restarted at once");
    assert_eq!(p.backoff.quick_deaths, 1);
}

#[test]
fn a_restart_loop_raises_one_alarm() {
    let mut now = t0();
    let mut p = running(PLAIN, 40, now);
    let mut alarms = 0;
    for pid in 41..50 {
        now = later(now, 0.1);
        for e in p.on(exited(pid - 1, false), now, &ctx()) {
            if let Effect::Alarm { kind, message } = e {
                assert_eq!(kind, "restart-loop");
                assert!(message.starts_with("process web is in a restart loop: 5 quick deaths"));
                assert!(message.ends_with("last exited with code 1"), "{message}");
                alarms += 1;
            }
        }
        launched(&mut p, Role::Main, pid, None, now);
    }
    assert_eq!(alarms, 1, "told once, not at every death");
}

#[test]
fn restart_policies_decide_after_an_exit() {
    let now = t0();
    for (policy, ok, again) in [
        ("on-failure", true, false),
        ("on-failure", false, true),
        ("never", false, false),
        ("always", true, true),
    ] {
        let mut p = running(&format!("{PLAIN}\nrestart = \"{policy}\""), 7, now);
        let fx = p.on(exited(7, ok), later(now, 1.0), &ctx());
        assert_eq!(!fx.is_empty(), again, "{policy} after ok={ok}");
        if !again {
            assert_eq!(p.state, State::Stopped);
        }
    }
}

#[test]
fn a_stop_signals_then_kills_after_the_grace() {
    let now = t0();
    let mut p = running(
        &format!("{PLAIN}\nstop_signal = \"INT\"\ngrace = 2"),
        40,
        now,
    );
    assert_eq!(p.on(Event::Stop, now, &ctx()), [kill(40, Signal::SIGINT)]);
    assert_eq!(p.state, State::Stopping);
    assert!(p.on(Event::Tick, later(now, 1.9), &ctx()).is_empty());
    assert_eq!(
        p.on(Event::Tick, later(now, 2.0), &ctx()),
        [kill(40, Signal::SIGKILL)]
    );
    assert!(
        p.on(Event::Tick, later(now, 3.0), &ctx()).is_empty(),
        "killed once"
    );
    assert!(p.on(exited(40, false), later(now, 3.0), &ctx()).is_empty());
    assert_eq!(p.state, State::Stopped, "stopped by the tenant: no restart");
    assert_eq!(p.restarts, 0);
}

#[test]
fn an_exit_within_the_grace_cancels_the_kill() {
    let now = t0();
    let mut p = running(PLAIN, 40, now);
    p.on(Event::Stop, now, &ctx());
    p.on(exited(40, true), later(now, 0.2), &ctx());
    assert_eq!(p.kill_at, None);
    assert!(p.on(Event::Tick, later(now, 60.0), &ctx()).is_empty());
}

#[test]
fn a_removed_file_stops_the_process_then_forgets_it() {
    let now = t0();
    let mut p = running(PLAIN, 40, now);
    assert_eq!(
        p.on(Event::Remove, now, &ctx()),
        [kill(40, Signal::SIGTERM)]
    );
    assert_eq!(p.on(exited(40, true), now, &ctx()), [Effect::Forget]);

    let mut idle = proc_of(&format!("{PLAIN}\nrestart = \"never\""));
    assert_eq!(idle.on(Event::Remove, now, &ctx()), [Effect::Forget]);
}

#[test]
fn a_restart_that_cannot_hand_over_stops_then_starts() {
    let now = t0();
    let mut p = running(PLAIN, 40, now);
    assert_eq!(
        p.on(Event::Restart, now, &ctx()),
        [kill(40, Signal::SIGTERM)]
    );
    assert_eq!(
        p.on(exited(40, false), later(now, 0.1), &ctx()),
        [launch(Role::Main, None)],
        "started again at once, not throttled"
    );
    assert_eq!(p.after, After::Stay);
}

#[test]
fn a_restart_of_a_stopped_process_starts_it() {
    let now = t0();
    let mut p = running(PLAIN, 40, now);
    p.on(Event::Stop, now, &ctx());
    p.on(exited(40, false), now, &ctx());
    assert_eq!(
        p.on(Event::Restart, now, &ctx()),
        [launch(Role::Main, None)]
    );
}

#[test]
fn a_job_is_skipped_while_its_last_run_goes_on() {
    let now = t0();
    let mut p = proc_of(JOB);
    p.on(Event::Activate, now, &ctx());
    let first = later(now, 40.0);
    assert_eq!(p.on(Event::Tick, first, &ctx()), [launch(Role::Main, None)]);
    launched(&mut p, Role::Main, 50, None, first);
    let second = later(first, 60.0);
    assert!(
        p.on(Event::Tick, second, &ctx()).is_empty(),
        "never two runs at once"
    );
    assert_eq!(p.skipped, 1);
    assert_eq!(
        p.reason.as_deref(),
        Some("1 run(s) skipped: the previous run was still going")
    );
    assert_eq!(
        p.next_run,
        Some(second.secs + 60),
        "the schedule carries on"
    );
    p.on(exited(50, true), later(second, 1.0), &ctx());
    assert_eq!(p.state, State::Scheduled, "a job waits for its next time");
}

#[test]
fn a_job_past_its_timeout_is_stopped_and_stays_scheduled() {
    let now = t0();
    let mut p = proc_of(&format!("{JOB}\ntimeout = 5\ngrace = 1"));
    p.on(Event::Activate, now, &ctx());
    let run = later(now, 40.0);
    p.on(Event::Tick, run, &ctx());
    launched(&mut p, Role::Main, 50, None, run);
    assert!(p.on(Event::Tick, later(run, 4.9), &ctx()).is_empty());
    assert_eq!(
        p.on(Event::Tick, later(run, 5.0), &ctx()),
        [kill(50, Signal::SIGTERM)]
    );
    assert_eq!(
        p.reason.as_deref(),
        Some("the last run passed its timeout and was stopped")
    );
    assert_eq!(
        p.on(Event::Tick, later(run, 6.0), &ctx()),
        [kill(50, Signal::SIGKILL)],
        "the grace, then a kill; the timeout does not fire twice"
    );
    p.on(exited(50, false), later(run, 6.0), &ctx());
    assert_eq!(p.state, State::Scheduled);
    assert!(p.next_run.is_some());
}

#[test]
fn stopping_a_job_disarms_its_schedule() {
    let now = t0();
    let mut p = proc_of(JOB);
    p.on(Event::Activate, now, &ctx());
    assert!(p.on(Event::Stop, now, &ctx()).is_empty());
    assert_eq!((p.state, p.next_run), (State::Stopped, None));
    assert!(p.on(Event::Tick, later(now, 600.0), &ctx()).is_empty());
}

#[test]
fn starting_a_job_runs_it_now_and_keeps_its_schedule() {
    let now = t0();
    let mut p = proc_of(JOB);
    p.on(Event::Activate, now, &ctx());
    let armed = p.next_run;
    assert_eq!(p.on(Event::Start, now, &ctx()), [launch(Role::Main, None)]);
    assert_eq!(p.next_run, armed);
}

#[test]
fn a_start_by_hand_forgets_the_throttle() {
    let now = t0();
    let mut p = running(PLAIN, 40, now);
    p.on(exited(40, false), now, &ctx());
    launched(&mut p, Role::Main, 41, None, now);
    p.on(exited(41, false), now, &ctx());
    assert_eq!(p.state, State::Backoff);
    assert_eq!(p.on(Event::Start, now, &ctx()), [launch(Role::Main, None)]);
    assert_eq!(p.backoff.quick_deaths, 0);
}

#[test]
fn a_failed_launch_counts_as_a_death() {
    let now = t0();
    let mut p = proc_of(PLAIN);
    p.on(Event::Activate, now, &ctx());
    let failed = || Event::LaunchFailed {
        role: Role::Main,
        error: "could not start \"app\": not found".into(),
    };
    assert_eq!(
        p.on(failed(), now, &ctx()),
        [launch(Role::Main, None)],
        "tried again at once"
    );
    assert!(p.on(failed(), now, &ctx()).is_empty());
    assert_eq!(p.state, State::Backoff, "then throttled: no busy loop");
    assert_eq!(
        p.last_exit.as_deref(),
        Some("could not start \"app\": not found")
    );
}

#[test]
fn a_web_process_is_subscribed_only_once_it_accepts() {
    let now = t0();
    let mut p = running(WEB, 40, now);
    assert_eq!(p.socket.as_deref(), Some("web.sock"));
    let check = [Effect::CheckReady {
        socket: "web.sock".into(),
    }];
    assert_eq!(p.on(Event::Tick, now, &ctx()), check);
    let no = |s: &str| Event::Accepts {
        socket: s.into(),
        yes: false,
    };
    assert!(p.on(no("web.sock"), now, &ctx()).is_empty());
    assert_eq!(
        p.ready_check_at,
        Some(now.at + READY_POLL),
        "asked again soon"
    );
    assert!(p.reason.is_none(), "not worth saying within a second");
    let t = later(now, 2.0);
    p.on(no("web.sock"), t, &ctx());
    assert_eq!(
        p.reason.as_deref(),
        Some("not accepting on web.sock yet (2s): not subscribed")
    );
    let t = later(now, 11.0);
    p.on(no("web.sock"), t, &ctx());
    assert_eq!(
        p.ready_check_at,
        Some(t.at + Duration::from_secs(1)),
        "slower after ten seconds"
    );
    let fx = p.on(
        Event::Accepts {
            socket: "web.sock".into(),
            yes: true,
        },
        t,
        &ctx(),
    );
    assert!(
        matches!(fx.as_slice(), [Effect::Subscribe(h)] if h.socket == "web.sock" && h.domains == ["a.example"])
    );
    assert!(p.ready);
    assert_eq!(p.reason, None, "the waiting reason is gone");
}

#[test]
fn subscriptions_are_renewed_at_a_third_of_their_life() {
    let now = t0();
    let mut p = serving(40, now);
    let subs = vec![SubState {
        domain: "a.example".into(),
        ok: true,
        answer: "subscribed for 60 s".into(),
    }];
    p.on(
        Event::Subscribed {
            subs: subs.clone(),
            ttl: 60,
        },
        now,
        &ctx(),
    );
    assert_eq!(p.subs, subs);
    assert!(p.on(Event::Tick, later(now, 19.9), &ctx()).is_empty());
    assert!(matches!(
        p.on(Event::Tick, later(now, 20.0), &ctx()).as_slice(),
        [Effect::Subscribe(_)]
    ));
}

#[test]
fn a_dead_web_process_is_withdrawn_before_it_starts_again() {
    let now = t0();
    let mut p = serving(40, now);
    let fx = p.on(exited(40, false), later(now, 60.0), &ctx());
    assert!(
        matches!(fx.as_slice(), [Effect::Withdraw(h), Effect::Launch { role: Role::Main, socket: Some(s) }] if h.socket == "web.sock" && s == "web.sock"),
        "{fx:?}"
    );
    assert!(!p.ready && p.subs.is_empty());
    // Answers that arrive for the instance that went away change nothing.
    p.on(
        Event::Subscribed {
            subs: vec![],
            ttl: 60,
        },
        now,
        &ctx(),
    );
    assert_eq!(p.refresh_at, None);
}

#[test]
fn a_restart_hands_over_new_in_before_old_out() {
    let now = t0();
    let mut p = serving(40, now);
    assert_eq!(
        p.on(Event::Restart, now, &ctx()),
        [launch(Role::Next, Some("web.sock.1"))],
        "beside the old one, on the other socket"
    );
    launched(&mut p, Role::Next, 41, Some("web.sock.1"), now);
    assert_eq!(p.pid, Some(40), "the old one serves meanwhile");
    assert_eq!(
        p.on(Event::Tick, now, &ctx()),
        [Effect::CheckReady {
            socket: "web.sock.1".into()
        }]
    );
    let t = later(now, 0.5);
    let fx = p.on(
        Event::Accepts {
            socket: "web.sock.1".into(),
            yes: true,
        },
        t,
        &ctx(),
    );
    match fx.as_slice() {
        [Effect::Subscribe(new), Effect::Withdraw(old), Effect::Kill {
            pid: 40,
            signal: Signal::SIGTERM,
        }] => {
            assert_eq!(
                (new.socket.as_str(), old.socket.as_str()),
                ("web.sock.1", "web.sock")
            );
        }
        other => panic!("not new-in, old-out, old stopped: {other:?}"),
    }
    assert_eq!((p.pid, p.socket.as_deref()), (Some(41), Some("web.sock.1")));
    assert!(p.ready && p.next.is_none());
    assert_eq!(
        p.on(Event::Tick, later(t, 3.0), &ctx()),
        [kill(40, Signal::SIGKILL)],
        "the old one gets its grace"
    );
    assert!(p.on(exited(40, false), later(t, 3.0), &ctx()).is_empty());
    assert_eq!(
        p.pids().collect::<Vec<_>>(),
        [41],
        "no restart for the old one"
    );
    assert_eq!(p.restarts, 0);

    // The next hand-over goes back to the first socket.
    assert_eq!(
        p.on(Event::Restart, t, &ctx()),
        [launch(Role::Next, Some("web.sock"))]
    );
}

fn handing_over(now: Now) -> Proc {
    let mut p = serving(40, now);
    p.on(Event::Restart, now, &ctx());
    launched(&mut p, Role::Next, 41, Some("web.sock.1"), now);
    p
}

#[test]
fn a_new_instance_that_never_accepts_is_given_up() {
    let now = t0();
    let mut p = handing_over(now);
    let no = Event::Accepts {
        socket: "web.sock.1".into(),
        yes: false,
    };
    assert!(p.on(no.clone(), later(now, 4.9), &ctx()).is_empty());
    assert_eq!(
        p.on(no, later(now, 5.0), &ctx()),
        [kill(41, Signal::SIGKILL)]
    );
    assert_eq!(
        (p.pid, p.ready),
        (Some(40), true),
        "the old one keeps serving"
    );
    assert!(p
        .reason
        .as_deref()
        .is_some_and(|r| r.starts_with("the new instance did not accept on web.sock.1 within 5s")));
    assert!(p.on(exited(41, false), later(now, 5.0), &ctx()).is_empty());
    assert_eq!(p.pids().collect::<Vec<_>>(), [40]);
}

#[test]
fn a_new_instance_that_dies_leaves_the_old_one_serving() {
    let now = t0();
    let mut p = handing_over(now);
    assert!(p.on(exited(41, false), later(now, 0.3), &ctx()).is_empty());
    assert_eq!(
        p.reason.as_deref(),
        Some("the new instance exited with code 1 before it accepted on web.sock.1: the old one keeps serving")
    );
    assert_eq!((p.pid, p.ready, p.state), (Some(40), true, State::Running));
}

#[test]
fn a_new_instance_that_cannot_start_leaves_the_old_one_serving() {
    let now = t0();
    let mut p = serving(40, now);
    p.on(Event::Restart, now, &ctx());
    p.on(
        Event::LaunchFailed {
            role: Role::Next,
            error: "could not start \"app\": denied".into(),
        },
        now,
        &ctx(),
    );
    assert_eq!(p.pid, Some(40));
    assert_eq!(
        p.reason.as_deref(),
        Some("could not start \"app\": denied; the running instance keeps serving")
    );
}

#[test]
fn a_stop_during_a_hand_over_ends_both_instances() {
    let now = t0();
    let mut p = handing_over(now);
    let fx = p.on(Event::Stop, now, &ctx());
    assert!(
        matches!(
            fx.as_slice(),
            [
                Effect::Withdraw(_),
                Effect::Kill {
                    pid: 41,
                    signal: Signal::SIGKILL
                },
                Effect::Kill {
                    pid: 40,
                    signal: Signal::SIGTERM
                }
            ]
        ),
        "{fx:?}"
    );
    p.on(exited(41, false), now, &ctx());
    p.on(exited(40, true), now, &ctx());
    assert_eq!(p.state, State::Stopped);
    assert_eq!(p.pids().count(), 0);
}

#[test]
fn a_reload_says_why_it_cannot_hand_over() {
    let now = t0();
    let reload = |p: &Proc| p.refusal(&Event::Restart, true).map(|r| r.to_string());
    let plain = running(PLAIN, 40, now);
    assert!(reload(&plain)
        .is_some_and(|r| r.starts_with("web cannot hand over: it needs [http] and {socket}")));
    assert_eq!(
        plain.refusal(&Event::Restart, false),
        None,
        "a restart stops then starts"
    );
    let starting = running(WEB, 40, now);
    assert_eq!(
        reload(&starting).as_deref(),
        Some("web is not serving yet: nothing to hand over from")
    );
    assert_eq!(
        reload(&handing_over(now)).as_deref(),
        Some("web is already handing over")
    );
    assert_eq!(reload(&serving(40, now)), None);
}

#[test]
fn start_and_stop_by_hand_say_when_there_is_nothing_to_do() {
    let now = t0();
    let mut p = running(PLAIN, 40, now);
    assert_eq!(
        p.refusal(&Event::Start, false),
        Some(Refusal::AlreadyRunning(p.name.clone()))
    );
    assert_eq!(p.refusal(&Event::Stop, false), None);
    p.on(Event::Stop, now, &ctx());
    p.on(exited(40, true), now, &ctx());
    assert_eq!(
        p.refusal(&Event::Stop, false)
            .map(|r| r.to_string())
            .as_deref(),
        Some("web is not running")
    );
    assert_eq!(p.refusal(&Event::Start, false), None);
}

#[test]
fn a_shutdown_stops_everything_and_restarts_nothing() {
    let now = t0();
    let mut c = ctx();
    let mut p = running(PLAIN, 40, now);
    c.shutting_down = true;
    assert_eq!(p.on(Event::Shutdown, now, &c), [kill(40, Signal::SIGTERM)]);
    assert!(p.on(exited(40, false), now, &c).is_empty());
    assert_eq!(p.state, State::Stopped);

    let mut job = proc_of(JOB);
    job.on(Event::Activate, now, &ctx());
    job.on(Event::Shutdown, now, &c);
    assert!(
        job.on(Event::Tick, later(now, 3600.0), &c).is_empty(),
        "no job runs during a shutdown"
    );
}

#[test]
fn an_http_edit_moves_the_subscription() {
    let now = t0();
    let mut p = serving(40, now);
    let moved = spec(&WEB.replace("a.example", "b.example"));
    let fx = p.on(Event::Update(moved), now, &ctx());
    match fx.as_slice() {
        [Effect::Withdraw(old), Effect::Subscribe(new)] => {
            assert_eq!(old.domains, ["a.example"]);
            assert_eq!(new.domains, ["b.example"]);
            assert_eq!(new.socket, "web.sock");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.pid, Some(40), "not restarted");

    let mut starting = running(WEB, 50, now);
    let fx = starting.on(
        Event::Update(spec(&WEB.replace("a.example", "c.example"))),
        now,
        &ctx(),
    );
    assert!(fx.is_empty(), "not accepting yet: subscribed once it does");
}

#[test]
fn a_command_edit_of_a_serving_process_hands_over() {
    let now = t0();
    let mut p = serving(40, now);
    let edited = spec(&WEB.replace("\"app\"", "\"app2\""));
    assert_eq!(
        p.on(Event::Replace(edited.clone()), now, &ctx()),
        [launch(Role::Next, Some("web.sock.1"))]
    );
    assert_eq!(p.spec, edited, "the new instance runs the new file");

    let mut stopped = proc_of(&format!("{PLAIN}\nrestart = \"never\""));
    assert_eq!(
        stopped.on(Event::Replace(spec(PLAIN)), now, &ctx()),
        [launch(Role::Main, None)],
        "a process not running is started with the new file"
    );
}

#[test]
fn a_bad_edit_keeps_the_last_good_version_running() {
    let now = t0();
    let name = |s: &str| -> Name { s.parse().unwrap() };
    let mut procs = BTreeMap::from([
        (name("web"), running(PLAIN, 40, now)),
        (name("old"), running(PLAIN, 41, now)),
    ]);
    procs.get_mut(&name("old")).unwrap().after = After::Remove;
    let files = BTreeMap::from([
        (name("web"), Err("command must name a program".to_owned())),
        (name("new"), Err("bad toml".to_owned())),
        (name("old"), Err("still bad".to_owned())),
        (name("ok"), Ok(spec(PLAIN))),
    ]);
    let (want, rejected) = desired(files, &mut procs);
    assert_eq!(
        want.keys().map(Name::as_str).collect::<Vec<_>>(),
        ["ok", "web"]
    );
    assert_eq!(want[&name("web")], spec(PLAIN), "the last good version");
    assert_eq!(
        procs[&name("web")].reason.as_deref(),
        Some("command must name a program")
    );
    assert_eq!(
        rejected.keys().map(Name::as_str).collect::<Vec<_>>(),
        ["new", "old"],
        "a new bad file, and the bad file of a process being removed"
    );

    let fixed = BTreeMap::from([(name("web"), Ok(spec(PLAIN)))]);
    desired(fixed, &mut procs);
    assert_eq!(
        procs[&name("web")].reason,
        None,
        "a good file clears the reason"
    );
}

#[test]
fn a_job_stopped_by_hand_is_not_stopped_again_at_its_timeout() {
    let now = t0();
    let mut p = proc_of(&format!("{JOB}\ntimeout = 5\ngrace = 10"));
    p.on(Event::Activate, now, &ctx());
    p.on(Event::Start, now, &ctx());
    launched(&mut p, Role::Main, 50, None, now);
    assert_eq!(
        p.on(Event::Stop, later(now, 1.0), &ctx()),
        [kill(50, Signal::SIGTERM)]
    );
    assert!(
        p.on(Event::Tick, later(now, 5.0), &ctx()).is_empty(),
        "its grace runs on: no second signal, no new grace"
    );
    assert_eq!(
        p.on(Event::Tick, later(now, 11.0), &ctx()),
        [kill(50, Signal::SIGKILL)]
    );
}
