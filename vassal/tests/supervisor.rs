//! The supervisor run as a plain process (a subreaper) on a temporary home,
//! supervising real processes with real signals.

// Black-box: these wait, with deadlines, for real processes in real time.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e::{alive, children, wait_for};
use serde_json::Value;

struct Vassal {
    home: tempfile::TempDir,
    child: Option<Child>,
}

impl Vassal {
    fn start(files: &[(&str, &str)], extra: &[&str], clock_scale: f64) -> Vassal {
        Vassal::start_with(files, extra, clock_scale, None)
    }

    fn start_with(
        files: &[(&str, &str)],
        extra: &[&str],
        clock_scale: f64,
        cgroup: Option<&Path>,
    ) -> Vassal {
        Vassal::start_env(files, extra, clock_scale, cgroup, &[])
    }

    fn start_env(
        files: &[(&str, &str)],
        extra: &[&str],
        clock_scale: f64,
        cgroup: Option<&Path>,
        envs: &[(&str, &Path)],
    ) -> Vassal {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join("vassals")).unwrap();
        let v = Vassal { home, child: None };
        for (name, text) in files {
            v.write(name, text);
        }
        let log = std::fs::File::create(v.home.path().join("supervisor.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vassal"))
            .arg("init")
            .args(extra)
            .env("HOME", v.home.path())
            .env("USER", "tenant")
            .env("IMPERIUM_CLOCK_SCALE", clock_scale.to_string())
            .env(
                "IMPERIUM_CGROUP_DIR",
                cgroup.unwrap_or(Path::new("/nonexistent")),
            )
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut v = v;
        v.child = Some(child);
        wait_for(Duration::from_secs(10), "the control socket", || {
            v.try_status().map(|_| ())
        });
        v
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.home.path().join(rel)
    }

    fn write(&self, name: &str, text: &str) {
        let tmp = self.path(&format!("vassals/.{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path(&format!("vassals/{name}.toml"))).unwrap();
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_vassal"))
            .args(args)
            .env("HOME", self.home.path())
            .output()
            .unwrap()
    }

    fn try_status(&self) -> Option<Vec<Value>> {
        let out = self.cli(&["status", "--json"]);
        out.status.success().then_some(())?;
        serde_json::from_slice::<Value>(&out.stdout).ok()?["processes"]
            .as_array()
            .cloned()
    }

    fn row(&self, name: &str) -> Option<Value> {
        self.try_status()?.into_iter().find(|r| r["name"] == name)
    }

    fn wait_row(&self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let row = self.row(name);
            if let Some(r) = row.as_ref().filter(|r| pred(r)) {
                return r.clone();
            }
            let log = std::fs::read_to_string(self.path("supervisor.log")).unwrap_or_default();
            assert!(
                start.elapsed() < e2e::patience(Duration::from_secs(15)),
                "{name}: timed out waiting for {what}; last row {row:?}; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// SIGTERM, and how long the supervisor took to exit.
    fn terminate(&mut self) -> Duration {
        let mut c = self.child.take().unwrap();
        let t = Instant::now();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the supervisor did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        t.elapsed()
    }
}

impl Drop for Vassal {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(15);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn a_crash_loop_backs_off() {
    let v = Vassal::start(
        &[(
            "crash",
            "command = [\"sh\", \"-c\", \"echo dying; exit 3\"]",
        )],
        &[
            "--throttle-base",
            "0.2",
            "--throttle-max",
            "0.8",
            "--healthy-after",
            "30",
        ],
        1.0,
    );
    let start = Instant::now();
    let row = v.wait_row("crash", "five quick deaths", |r| {
        r["restarts"].as_u64() >= Some(5)
            && r["reason"]
                .as_str()
                .is_some_and(|s| s.contains("restarting in"))
    });
    // Deaths 1-4 wait 0, 0.2, 0.4 and 0.8 s before the next start.
    assert!(
        start.elapsed() >= Duration::from_millis(1350),
        "no back-off: {:?}",
        start.elapsed()
    );
    assert!(
        row["reason"]
            .as_str()
            .unwrap()
            .contains("restarting in 800ms"),
        "{row}"
    );
    assert_eq!(row["last_exit"], "exited with code 3");
    assert!(
        read(&v.path("logs/crash.log"))
            .lines()
            .filter(|l| *l == "dying")
            .count()
            >= 5
    );
}

#[test]
fn restart_policies() {
    let v = Vassal::start(
        &[
            ("once", "command = [\"true\"]\nrestart = \"on-failure\""),
            ("never", "command = [\"false\"]\nrestart = \"never\""),
        ],
        &[],
        1.0,
    );
    let once = v.wait_row("once", "a clean exit", |r| r["state"] == "stopped");
    assert_eq!(
        (once["restarts"].as_u64(), once["last_exit"].as_str()),
        (Some(0), Some("exited with code 0"))
    );
    let never = v.wait_row("never", "a failed exit", |r| r["state"] == "stopped");
    assert_eq!(
        (never["restarts"].as_u64(), never["last_exit"].as_str()),
        (Some(0), Some("exited with code 1"))
    );
}

#[test]
fn stop_is_graceful_then_forced_after_the_grace() {
    let polite = "command = [\"sh\", \"-c\", \"trap 'echo bye > polite.out; exit 0' TERM; while :; do sleep 0.05; done\"]\ngrace = 5";
    let stubborn =
        "command = [\"sh\", \"-c\", \"trap '' TERM; while :; do sleep 0.05; done\"]\ngrace = 0.6";
    let mut v = Vassal::start(&[("polite", polite), ("stubborn", stubborn)], &[], 1.0);
    v.wait_row("polite", "running", |r| r["state"] == "running");
    let stubborn_pid = v.wait_row("stubborn", "running", |r| r["state"] == "running")["pid"]
        .as_i64()
        .unwrap();

    let out = v.cli(&["stop", "polite"]);
    assert!(out.status.success(), "{out:?}");
    let row = v.wait_row("polite", "stopped", |r| r["state"] == "stopped");
    assert_eq!(row["last_exit"], "exited with code 0");
    assert_eq!(read(&v.path("polite.out")), "bye\n");

    let t = Instant::now();
    assert!(v.cli(&["stop", "stubborn"]).status.success());
    let row = v.wait_row("stubborn", "stopped", |r| r["state"] == "stopped");
    assert!(
        t.elapsed() >= Duration::from_millis(550),
        "killed before its grace: {:?}",
        t.elapsed()
    );
    assert_eq!(row["last_exit"], "killed by SIGKILL");
    assert!(!alive(stubborn_pid as i32));

    // A stopped process stays stopped until started again.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(v.row("polite").unwrap()["state"], "stopped");
    assert!(v.cli(&["start", "polite"]).status.success());
    let pid = v.wait_row("polite", "running", |r| r["state"] == "running")["pid"]
        .as_i64()
        .unwrap();

    // SIGTERM to the supervisor stops everything, then it exits.
    let took = v.terminate();
    assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
    assert!(!alive(pid as i32));
}

#[test]
fn jobs_fire_on_schedule_and_never_overlap() {
    // 60x clock: "every minute" is every second. Each run takes 2.5 s.
    let job = "command = [\"sh\", \"-c\", \"mkdir lock || { echo overlap >> runs; exit 1; }; echo run >> runs; sleep 2.5; rmdir lock\"]\nschedule = \"* * * * *\"";
    let v = Vassal::start(&[("tick", job)], &[], 60.0);
    let row = v.wait_row("tick", "two runs and a skipped one", |r| {
        r["skipped"].as_u64() >= Some(1) && read(&v.path("runs")).lines().count() >= 2
    });
    assert_eq!(row["kind"], "job");
    assert!(row["reason"].as_str().unwrap().contains("skipped"), "{row}");
    let runs = read(&v.path("runs"));
    assert!(!runs.contains("overlap"), "two runs at once: {runs}");
    assert!(row["next_run"].as_u64().is_some());
}

#[test]
fn a_job_past_its_timeout_is_stopped() {
    let job = "command = [\"sh\", \"-c\", \"echo start >> runs; sleep 30\"]\nschedule = \"* * * * *\"\ntimeout = 0.5\ngrace = 0.2";
    let v = Vassal::start(&[("slow", job)], &[], 60.0);
    let row = v.wait_row("slow", "a timed-out run", |r| {
        r["reason"].as_str().is_some_and(|s| s.contains("timeout")) && r["state"] == "scheduled"
    });
    assert!(
        row["last_exit"].as_str().unwrap().starts_with("killed by"),
        "{row}"
    );
}

#[test]
fn logs_are_rotated_by_size() {
    let chatty = "command = [\"sh\", \"-c\", \"while :; do head -c 1000 /dev/zero | tr '\\\\0' x; echo; sleep 0.02; done\"]\nlog_max = \"8K\"";
    let v = Vassal::start(&[("chatty", chatty)], &[], 1.0);
    wait_for(Duration::from_secs(15), "two rotations", || {
        v.path("logs/chatty.log.2").exists().then_some(())
    });
    // .2 is a finished copy (.1 may be the one being written right now).
    let two = std::fs::metadata(v.path("logs/chatty.log.2"))
        .unwrap()
        .len();
    assert!(two > 8 * 1024, "rotated before the limit: {two}");
    let now = std::fs::metadata(v.path("logs/chatty.log")).unwrap().len();
    // Checked every second: at most a second of output (about 50K) past the limit.
    assert!(now < 8 * 1024 + 100 * 1024, "{now}");
    // The file may have just been truncated: at most the lines asked for.
    let out = v.cli(&["logs", "chatty", "-n", "2"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).lines().count() <= 2);
    let out = v.cli(&["logs", "chatty.log.1", "-n", "3"]);
    assert!(!out.status.success(), "a log name is a process name");
}

#[test]
fn a_bad_file_stands_beside_good_ones_and_an_edit_keeps_the_last_good_version() {
    let v = Vassal::start(
        &[
            ("good", "command = [\"sleep\", \"30\"]"),
            ("bad", "command = [\"sleep\"\n"),
        ],
        &[],
        1.0,
    );
    let pid = v.wait_row("good", "running", |r| r["state"] == "running")["pid"].clone();
    let bad = v.wait_row("bad", "rejected", |r| r["state"] == "rejected");
    assert!(
        bad["reason"].as_str().unwrap().starts_with("line "),
        "{bad}"
    );
    v.write("good", "command = [\"sleep\", \"30\"]\nshape = \"round\"");
    let row = v.wait_row("good", "a reason", |r| r["reason"].is_string());
    assert_eq!(row["pid"], pid);
    assert!(row["reason"]
        .as_str()
        .unwrap()
        .contains("unknown field `shape`"));
    // A change of grace applies in place; a change of command restarts.
    v.write("good", "command = [\"sleep\", \"30\"]\ngrace = 1");
    let row = v.wait_row("good", "the reason to clear", |r| r["reason"].is_null());
    assert_eq!(row["pid"], pid);
    v.write("good", "command = [\"sleep\", \"31\"]");
    v.wait_row("good", "a new process", |r| {
        r["state"] == "running" && r["pid"] != pid
    });
    // Removing the file stops it.
    std::fs::remove_file(v.path("vassals/good.toml")).unwrap();
    wait_for(Duration::from_secs(10), "good to go", || {
        v.row("good").is_none().then_some(())
    });
}

#[test]
fn orphans_are_reaped() {
    // The shell leaves children behind that end later: they come to the supervisor.
    let v = Vassal::start(&[("parent", "command = [\"sh\", \"-c\", \"for i in 1 2 3 4 5; do (sleep 0.3; exit 7) & done; exit 0\"]\nrestart = \"never\"")], &[], 1.0);
    v.wait_row("parent", "its exit", |r| r["state"] == "stopped");
    // Gone, not left as zombies: a supervisor that did not reap fails here.
    wait_for(Duration::from_secs(5), "the orphans to be reaped", || {
        children(v.pid()).is_empty().then_some(())
    });
}

#[test]
fn the_cli_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vassal"))
        .args(["status"])
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the vassal supervisor is not reachable"));
    let v = Vassal::start(&[("web", "command = [\"sleep\", \"30\"]")], &[], 1.0);
    v.wait_row("web", "running", |r| r["state"] == "running");
    for verb in ["stop", "start", "restart"] {
        let out = v.cli(&[verb, "nope"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no process named \"nope\""),
            "{out:?}"
        );
    }
    let out = v.cli(&["start", "web"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("web is already running"));
    let pid = v.row("web").unwrap()["pid"].clone();
    assert!(v.cli(&["restart", "web"]).status.success());
    v.wait_row("web", "a new pid", |r| {
        r["state"] == "running" && r["pid"] != pid
    });
    let out = v.cli(&["logs", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no log for nope"));
}

fn notifications(v: &Vassal) -> Vec<Value> {
    let out = v.cli(&["notifications", "--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn alarms_wait_until_they_can_be_stored_then_are_stored_in_order() {
    // PID 1 does not carry the database: SQLite is vassal-notify's.
    let pid1 = std::fs::read(env!("CARGO_BIN_EXE_vassal")).unwrap();
    assert!(
        !pid1.windows(15).any(|w| w == b"SQLite format 3"),
        "SQLite is linked into the vassal binary"
    );
    // The database cannot be opened (a directory in its place): the alarms
    // wait, shown by `vassal status`.
    let v = Vassal::start_with(
        &[("crash", "command = [\"false\"]")],
        &["--throttle-base", "0.05", "--throttle-max", "0.1"],
        1.0,
        None,
    );
    let db = v.home.path().join(".imperium/notifications.db");
    std::fs::create_dir_all(&db).unwrap();
    let unsent = || -> Vec<Value> {
        let out = v.cli(&["status", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["unsent"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let waiting = wait_for(Duration::from_secs(10), "an alarm waiting", || {
        let u = unsent();
        u.iter().any(|n| n["kind"] == "restart-loop").then_some(u)
    });
    // Once the database can be written, every waiting alarm is stored, in order.
    std::fs::remove_dir(&db).unwrap();
    wait_for(Duration::from_secs(10), "the alarms stored", || {
        unsent().is_empty().then_some(())
    });
    let stored: Vec<(Value, Value)> = notifications(&v)
        .into_iter()
        .map(|n| (n["kind"].clone(), n["message"].clone()))
        .collect();
    let waited: Vec<(Value, Value)> = waiting
        .into_iter()
        .map(|n| (n["kind"].clone(), n["message"].clone()))
        .collect();
    assert_eq!(stored[..waited.len()], waited[..], "{stored:?}");
}

#[test]
fn alarms_become_notifications() {
    // A FAKE cgroup v2 directory (files written by the test): the real OOM
    // alarm inside a container is in the end-to-end tests.
    let cg = tempfile::tempdir().unwrap();
    let put = |f: &str, v: &str| std::fs::write(cg.path().join(f), v).unwrap();
    put("memory.current", "10485760\n");
    put("memory.max", "104857600\n");
    put("memory.events", "oom 0\noom_kill 0\n");
    put("pids.current", "2\n");
    put("pids.max", "100\n");
    let v = Vassal::start_with(
        &[("crash", "command = [\"false\"]")],
        &["--throttle-base", "0.05", "--throttle-max", "0.1"],
        1.0,
        Some(cg.path()),
    );
    let status: Value = serde_json::from_slice(&v.cli(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["site"]["memory_limit"], 104857600);
    assert_eq!(status["site"]["pids_limit"], 100);
    wait_for(
        Duration::from_secs(10),
        "a restart-loop notification",
        || {
            notifications(&v)
                .into_iter()
                .find(|n| n["kind"] == "restart-loop")
        },
    );
    // Let the supervisor read the first OOM count, then raise it.
    std::thread::sleep(Duration::from_millis(1200));
    put("memory.events", "oom 1\noom_kill 1\n");
    let oom = wait_for(Duration::from_secs(10), "an oom notification", || {
        notifications(&v).into_iter().find(|n| n["kind"] == "oom")
    });
    assert!(
        oom["message"].as_str().unwrap().contains("limit of 100M"),
        "{oom}"
    );
    put("memory.current", "99614720\n");
    let mem = wait_for(Duration::from_secs(10), "a memory notification", || {
        notifications(&v)
            .into_iter()
            .find(|n| n["kind"] == "memory")
    });
    assert!(mem["message"].as_str().unwrap().contains("95%"), "{mem}");
    // Said once, not every second.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        notifications(&v)
            .iter()
            .filter(|n| n["kind"] == "memory")
            .count(),
        1
    );
    // Anyone with access to the home (the emperor, as the tenant) can add one.
    assert!(v
        .cli(&["notify", "admin", "maintenance on sunday"])
        .status
        .success());
    let last = notifications(&v).pop().unwrap();
    assert_eq!(
        (last["kind"].as_str(), last["message"].as_str()),
        (Some("admin"), Some("maintenance on sunday"))
    );
}

#[test]
fn control_clients_that_send_nothing_never_hold_the_loop() {
    let v = Vassal::start(&[("web", "command = [\"sleep\", \"30\"]")], &[], 1.0);
    let first = v.wait_row("web", "running", |r| r["state"] == "running")["pid"]
        .as_i64()
        .unwrap() as i32;
    // A tenant's process opening control connections that send nothing, as
    // fast as it can, for as long as the test runs.
    let socket = v.path(".imperium/vassal.sock");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let made = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let flooder = {
        let (stop, made) = (stop.clone(), made.clone());
        std::thread::spawn(move || {
            let mut held = std::collections::VecDeque::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(s) = std::os::unix::net::UnixStream::connect(&socket) {
                    held.push_back(s);
                    made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if held.len() > 500 {
                    held.pop_front();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    wait_for(Duration::from_secs(10), "the flood under way", || {
        (made.load(std::sync::atomic::Ordering::Relaxed) > 100).then_some(())
    });
    // The supervisor still reaps and restarts: seen in the process table, as
    // the flood keeps the control socket's places taken.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let vassal = v.pid();
    wait_for(Duration::from_secs(10), "a restart while flooded", || {
        children(vassal)
            .iter()
            .any(|(pid, state)| *pid != first && *state != 'Z')
            .then_some(())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flooder.join().unwrap();
    // Once the flood is over, the control socket answers again.
    v.wait_row("web", "running", |r| r["state"] == "running");
}

/// A router that takes each request and never answers: every subscription
/// waits out its 2-second timeout, six seconds for three domains. PID 1 talks
/// to the router from its own thread, so it answers its control socket at
/// once all along, and the refusals show up in the status in the end.
#[test]
fn a_hung_router_never_stalls_the_supervisor() {
    let dir = tempfile::tempdir().unwrap();
    let router = std::os::unix::net::UnixListener::bind(dir.path().join("router.sock")).unwrap();
    router.set_nonblocking(true).unwrap();
    let key = dir.path().join("site.key");
    std::fs::write(&key, "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n").unwrap();
    let sockets = dir.path().join("sockets");
    std::fs::create_dir(&sockets).unwrap();
    let listen = "import socket,os,time; s=socket.socket(socket.AF_UNIX); s.bind(os.environ['SOCKET']); s.listen(); time.sleep(600)";
    let web = format!(
        "command = [\"python3\", \"-c\", \"{listen}\"]\n[http]\ndomains = [\"a.example\", \"b.example\", \"c.example\"]\nsocket = \"web.sock\""
    );
    let v = Vassal::start_env(
        &[("web", &web)],
        &[],
        1.0,
        None,
        &[
            ("IMPERIUM_ROUTER_SOCKET", &dir.path().join("router.sock")),
            ("IMPERIUM_SITE_KEY", &key),
            ("IMPERIUM_SOCKETS", &sockets),
        ],
    );
    let mut held = Vec::new();
    for domain in 1..=2 {
        // The router holds the next subscription request unanswered...
        let (conn, _) = wait_for(Duration::from_secs(10), "a subscription request", || {
            router.accept().ok()
        });
        held.push(conn);
        // ...and the supervisor answers meanwhile.
        let t = Instant::now();
        let row = v.row("web").expect("the status is answered");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "the status took {:?} while domain {domain}'s subscription hangs",
            t.elapsed()
        );
        assert_eq!(row["state"], "running");
        assert_eq!(
            row["subscriptions"],
            serde_json::json!([]),
            "no answers yet"
        );
    }
    drop(held);
    let row = v.wait_row("web", "the answer for every domain", |r| {
        r["subscriptions"].as_array().is_some_and(|a| a.len() == 3)
    });
    for s in row["subscriptions"].as_array().unwrap() {
        assert_eq!(s["ok"], false, "{s}");
        assert!(
            s["answer"]
                .as_str()
                .unwrap()
                .starts_with("router not reachable"),
            "{s}"
        );
    }
}

#[test]
fn an_idle_supervisor_sleeps_and_what_the_emperor_writes_wakes_it() {
    // A FAKE cgroup v2 directory whose figures never move.
    let cg = tempfile::tempdir().unwrap();
    for (f, v) in [
        ("memory.current", "10485760\n"),
        ("memory.max", "104857600\n"),
        ("memory.events", "oom 0\noom_kill 0\n"),
        ("pids.current", "1\n"),
        ("pids.max", "100\n"),
    ] {
        std::fs::write(cg.path().join(f), v).unwrap();
    }
    let usage = tempfile::tempdir().unwrap();
    let v = Vassal::start_env(
        &[],
        &[],
        1.0,
        Some(cg.path()),
        &[("IMPERIUM_USAGE_DIR", usage.path())],
    );
    let pid = v.pid();
    let switches = || -> u64 {
        let s = read(Path::new(&format!("/proc/{pid}/task/{pid}/status")));
        s.lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    };
    // Nothing moves: the housekeeping period doubles (1, 2, 4, 8, 16 s ...),
    // so after 16 s it sleeps for the next 8 (at a 4 s cap it woke twice).
    std::thread::sleep(Duration::from_secs(16));
    let before = switches();
    std::thread::sleep(Duration::from_secs(8));
    let woke = switches() - before;
    assert!(woke <= 1, "an idle supervisor woke {woke} times in 8 s");
    // The emperor tells a reseller's supervisor of its sites: the write wakes
    // it at once, though its next look is 7 s or more away.
    let tmp = usage.path().join(".sites.tmp");
    std::fs::write(
        &tmp,
        r#"{"sites": [{"name": "shop", "state": "failed", "reason": "no init"}], "refused": []}"#,
    )
    .unwrap();
    std::fs::rename(&tmp, usage.path().join("sites.json")).unwrap();
    let told = wait_for(Duration::from_secs(4), "the site's notification", || {
        notifications(&v).into_iter().find(|n| n["kind"] == "site")
    });
    assert_eq!(told["message"], "site shop is failed: no init");
}
