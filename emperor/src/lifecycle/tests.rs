//! Every transition of a vassal, with made-up times: no container, no
//! cgroup, no root.

use std::collections::BTreeMap;

use super::*;

#[allow(clippy::disallowed_methods)]
fn t0() -> Instant {
    Instant::now()
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

const THROTTLE: Throttle = Throttle {
    base: Duration::from_secs(1),
    max: Duration::from_secs(4),
    healthy: Duration::from_secs(30),
};

fn ctx() -> Ctx<'static> {
    Ctx {
        throttle: &THROTTLE,
        suspended_group: None,
    }
}

fn name(s: &str) -> Name {
    s.parse().unwrap()
}

/// A vassal whose init runs since `at`.
fn running(at: Instant) -> Life {
    let mut l = Life::default();
    assert_eq!(l.on(Event::Start, at, &ctx()), [Effect::Start]);
    assert!(l.on(Event::Started, at, &ctx()).is_empty());
    l
}

fn exited(gen: u64) -> Event {
    Event::Exited {
        gen,
        exit: "exited with code 1".into(),
    }
}

#[test]
fn a_new_vassal_starts_and_runs() {
    let t = t0();
    let l = running(t);
    assert_eq!((l.state, l.gen, l.since), (State::Running, 1, Some(t)));
    assert_eq!(l.reason, None);
}

#[test]
fn a_site_of_a_suspended_group_waits_for_the_resume() {
    let t = t0();
    let g = name("shop");
    let frozen = Ctx {
        suspended_group: Some(&g),
        ..ctx()
    };
    let mut l = Life::default();
    assert!(l.on(Event::Start, t, &frozen).is_empty(), "not started");
    assert_eq!(l.state, State::Stopped);
    assert_eq!(
        l.reason.as_deref(),
        Some("group shop is suspended; starts on resume")
    );
    assert_eq!(
        l.on(Event::GroupResumed { own_frozen: false }, t, &ctx()),
        [Effect::Start],
        "started once the group runs again"
    );
    assert_eq!(l.state, State::Starting);
}

#[test]
fn a_group_resume_leaves_a_site_suspended_on_its_own_suspended() {
    let t = t0();
    let mut own = running(t);
    assert!(own
        .on(Event::GroupResumed { own_frozen: true }, t, &ctx())
        .is_empty());
    assert_eq!(own.state, State::Suspended);
    let mut other = running(t);
    other.on(Event::GroupResumed { own_frozen: false }, t, &ctx());
    assert_eq!(other.state, State::Running);
}

#[test]
fn a_dead_init_is_restarted_at_once_then_throttled() {
    let mut t = t0();
    let mut l = running(t);
    let mut waits = Vec::new();
    for _ in 0..5 {
        t += secs(2.0);
        let fx = l.on(exited(l.gen), t, &ctx());
        let [Effect::Restart { delay, gen }] = fx[..] else {
            panic!("{fx:?}");
        };
        assert_eq!(gen, l.gen);
        assert_eq!(l.state, State::Starting);
        waits.push(delay.as_secs());
        assert_eq!(
            l.on(Event::RestartDue { gen }, t + delay, &ctx()),
            [Effect::Start],
            "started once its leftovers are gone and the delay passed"
        );
        l.on(Event::Started, t, &ctx());
    }
    assert_eq!(waits, [0, 1, 2, 4, 4], "doubling up to the max");
    assert_eq!(l.restarts, 5);
    assert_eq!(l.throttled, 4, "every restart but the first waited");
    assert!(l.reason.is_none(), "a running init has no reason to show");
}

#[test]
fn the_reason_of_a_death_says_how_and_when() {
    let t = t0();
    let mut l = running(t);
    l.on(exited(1), t + secs(3.0), &ctx());
    assert_eq!(
        l.reason.as_deref(),
        Some("init exited with code 1 after 3.0s; restart in 0ns")
    );
}

#[test]
fn a_healthy_run_forgets_earlier_deaths() {
    let t = t0();
    let mut l = running(t);
    l.backoff.quick_deaths = 3;
    let fx = l.on(exited(1), t + secs(31.0), &ctx());
    assert_eq!(
        fx,
        [Effect::Restart {
            delay: Duration::ZERO,
            gen: 1
        }]
    );
}

#[test]
fn stale_events_change_nothing() {
    let t = t0();
    let mut l = running(t);
    // An exit of an earlier start.
    assert!(l.on(exited(0), t, &ctx()).is_empty());
    assert_eq!(l.state, State::Running);
    // A restart planned for an earlier start.
    assert!(l.on(Event::RestartDue { gen: 0 }, t, &ctx()).is_empty());
    // A restart due while it runs.
    assert!(l.on(Event::RestartDue { gen: 1 }, t, &ctx()).is_empty());
}

#[test]
fn an_exit_while_stopping_is_the_stop_not_a_death() {
    let t = t0();
    let mut l = running(t);
    assert_eq!(
        l.on(Event::Stop(After::Remove), t, &ctx()),
        [Effect::BeginStop]
    );
    assert_eq!(
        (l.state, l.reason.as_deref()),
        (State::Stopped, Some("stopping: file removed"))
    );
    assert!(l.on(exited(1), t, &ctx()).is_empty(), "no restart");
    assert_eq!(l.restarts, 0);
    assert_eq!(l.on(Event::StopDone, t, &ctx()), [Effect::Archive]);
}

#[test]
fn what_follows_a_stop() {
    let t = t0();
    for (then, next) in [
        (After::Remove, Effect::Archive),
        (After::Forget, Effect::Forget),
        (After::Start, Effect::Start),
    ] {
        let mut l = running(t);
        l.on(Event::Stop(then), t, &ctx());
        assert_eq!(l.on(Event::StopDone, t, &ctx()), [next], "{then:?}");
        assert!(!l.running());
    }
}

#[test]
fn a_restart_by_hand_stops_then_starts_a_running_vassal() {
    let t = t0();
    let mut l = running(t);
    assert_eq!(l.restart(&name("web"), &ctx()), Ok(vec![Effect::BeginStop]));
    assert_eq!(l.reason.as_deref(), Some("restarting"));
    assert_eq!(
        l.restart(&name("web"), &ctx()),
        Err(Refusal::Stopping(name("web")))
    );
    assert_eq!(l.on(Event::StopDone, t, &ctx()), [Effect::Start]);
    assert_eq!((l.state, l.restarts), (State::Starting, 1));
}

#[test]
fn a_restart_by_hand_of_a_throttled_vassal_starts_it_now() {
    let t = t0();
    let mut l = running(t);
    l.on(exited(1), t, &ctx());
    l.on(Event::Started, t, &ctx());
    let fx = l.on(exited(2), t, &ctx());
    let [Effect::Restart { gen, .. }] = fx[..] else {
        panic!("{fx:?}");
    };
    assert_eq!(l.restart(&name("web"), &ctx()), Ok(vec![Effect::Start]));
    assert_eq!(l.backoff, Backoff::default(), "the throttle is forgotten");
    assert!(
        l.on(Event::RestartDue { gen }, t, &ctx()).is_empty(),
        "the restart planned before is stale"
    );
}

#[test]
fn a_start_failure_is_retried_only_when_transient() {
    let t = t0();
    let mut l = Life::default();
    l.on(Event::Start, t, &ctx());
    let fx = l.on(
        Event::StartFailed {
            error: "start failed: cannot allocate memory".into(),
            transient: true,
        },
        t,
        &ctx(),
    );
    assert_eq!(
        fx,
        [Effect::RestartAfter {
            delay: Duration::ZERO,
            gen: 0
        }]
    );
    assert_eq!(l.state, State::Starting);
    assert_eq!(
        l.on(Event::RestartDue { gen: 0 }, t, &ctx()),
        [Effect::Start]
    );
    let fx = l.on(
        Event::StartFailed {
            error: "no such user".into(),
            transient: false,
        },
        t,
        &ctx(),
    );
    assert!(fx.is_empty(), "waits for an edit or a restart by hand");
    assert_eq!(
        (l.state, l.reason.as_deref()),
        (State::Failed, Some("no such user"))
    );
    assert!(l.on(Event::RestartDue { gen: 0 }, t, &ctx()).is_empty());
}

#[test]
fn an_adopted_init_keeps_its_freezer_state() {
    let t = t0();
    let l = Life::adopted(true, t);
    assert_eq!((l.state, l.running(), l.gen), (State::Suspended, true, 1));
    assert_eq!(Life::adopted(false, t).state, State::Running);
    let mut l = Life::adopted(false, t);
    assert_eq!(
        l.on(exited(1), t + secs(60.0), &ctx()),
        [Effect::Restart {
            delay: Duration::ZERO,
            gen: 1
        }],
        "an adopted init that dies is restarted like any other"
    );
}

#[test]
fn suspend_and_resume_need_a_running_init_and_a_running_group() {
    let t = t0();
    let (web, shop) = (name("web"), name("shop"));
    let idle = Life::default();
    assert_eq!(
        idle.may_freeze(&web, true, None),
        Err(Refusal::NotRunning(web.clone()))
    );
    assert_eq!(
        Refusal::NotRunning(web.clone()).to_string(),
        "web is not running"
    );
    let mut l = running(t);
    assert_eq!(l.may_freeze(&web, true, Some(&shop)), Ok(()));
    assert_eq!(
        l.may_freeze(&web, false, Some(&shop)),
        Err(Refusal::GroupSuspended {
            name: web.clone(),
            group: shop.clone()
        })
    );
    assert_eq!(
        l.may_freeze(&web, false, Some(&shop))
            .unwrap_err()
            .to_string(),
        "web's group shop is suspended; resume the group"
    );
    l.on(Event::Frozen(true), t, &ctx());
    assert_eq!(l.state, State::Suspended);
    l.on(Event::Stop(After::Start), t, &ctx());
    assert_eq!(
        l.may_freeze(&web, false, None),
        Err(Refusal::NotRunning(web.clone())),
        "not while it stops"
    );
    l.on(Event::Frozen(true), t, &ctx());
    assert_eq!(
        l.state,
        State::Stopped,
        "a freeze that ends after the stop began changes nothing"
    );
}

#[test]
fn only_the_user_group_and_root_need_a_new_container() {
    let site = |extra: &str| -> VassalFile {
        VassalFile::parse(
            &name("web"),
            &format!("kind = \"site\"\ndomains = [\"a.example\"]\n{extra}"),
        )
        .unwrap()
    };
    let base = site("");
    assert!(!needs_restart(&base, &site("[limits]\nmemory = \"256M\"")));
    assert!(needs_restart(&base, &site("user = \"other\"")));
}

#[test]
fn stops_go_sites_first_and_starts_groups_first() {
    let group = |n: &str| VassalFile::parse(&name(n), "kind = \"group\"").unwrap();
    let site = |n: &str| {
        VassalFile::parse(&name(n), "kind = \"site\"\ndomains = [\"a.example\"]").unwrap()
    };
    let previous = BTreeMap::from([
        (name("a-group"), group("a-group")),
        (name("b-site"), site("b-site")),
    ]);
    let want = BTreeMap::from([
        (name("c-site"), site("c-site")),
        (name("d-group"), group("d-group")),
    ]);
    let mut actions = vec![
        Action::Start(name("c-site")),
        Action::Start(name("d-group")),
        Action::Stop(name("a-group")),
        Action::Stop(name("b-site")),
    ];
    order(&mut actions, &want, &previous);
    assert_eq!(
        actions,
        [
            Action::Stop(name("b-site")),
            Action::Stop(name("a-group")),
            Action::Start(name("d-group")),
            Action::Start(name("c-site")),
        ]
    );
}

#[test]
fn a_states_shown_name_is_the_one_status_serializes() {
    use State::*;
    for s in [Starting, Running, Suspended, Stopped, Failed, Rejected] {
        assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
    }
}
