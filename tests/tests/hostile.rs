//! Hostile tenants and resellers, end to end, as root: each test does what an
//! attacker would (symlinks, races retried many times, files that block or
//! balloon, a kill -9 in a burst) against the real emperor and containers,
//! and checks that the host and the neighbours are untouched.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::*;

const GROUP: &str = "kind = \"group\"\n[limits]\nmemory = \"512M\"\ncpu = 1.0\npids = 400\n";

fn uid_of(e: &Emperor, name: &str) -> u32 {
    e.row(name).expect("row")["uid"].as_u64().expect("uid") as u32
}

fn reason(e: &Emperor, name: &str) -> String {
    e.wait_row(name, "a reason", |r| r["reason"].is_string())["reason"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
#[ignore = "root: run the README's test command"]
fn hostile_a_reseller_gets_no_root_filesystem_and_no_other_customers_domains() {
    let mut e = Emperor::new();
    e.write("group1", GROUP);
    e.write("group2", GROUP);
    e.write(
        "victim",
        "kind = \"site\"\ngroup = \"group1\"\ndomains = [\"victim.test\", \"www.shop.test\"]\n[limits]\nmemory = \"64M\"\ncpu = 0.1\npids = 50\n",
    );
    e.start();
    let victim = e.running_pid("victim");
    let drop = e.home_root.join("group2/vassals");
    wait_for(Duration::from_secs(10), "group2's drop directory", || {
        drop.is_dir().then_some(())
    });
    let limits = "[limits]\nmemory = \"64M\"\ncpu = 0.1\npids = 50\n";
    for (name, body, why) in [
        (
            "rooted",
            "[container]\nrootfs = \"/srv\"\n",
            "only be set in the admin directory",
        ),
        (
            "under",
            "domains = [\"www.victim.test\"]\n",
            "lies under victim.test",
        ),
        (
            "cover",
            "domains = [\"*.victim.test\"]\n",
            "overlaps victim.test",
        ),
        (
            "same",
            "domains = [\"victim.test\"]\n",
            "already owned by victim",
        ),
        ("suffix", "domains = [\"*.co.uk\"]\n", "public suffix"),
        // The parent of the victim's name, under a name that sorts before
        // it: let run, the next judgement (taking running sites by name)
        // would have refused the victim its own domain and stopped it.
        (
            "above",
            "domains = [\"shop.test\"]\n",
            "lies above www.shop.test",
        ),
    ] {
        // Keys of the top table first, then [limits] and [container].
        let (top, table) = if body.starts_with('[') {
            ("", body)
        } else {
            (body, "")
        };
        write_atomic(
            &drop.join(format!("{name}.toml")),
            &format!("kind = \"site\"\n{top}{limits}{table}"),
        );
        let r = reason(&e, name);
        assert!(r.contains(why), "{name}: {r}");
    }
    // One more judgement of every file: the victim runs on, the same init.
    e.write("bystander", "kind = \"site\"\n");
    e.running_pid("bystander");
    assert_eq!(e.row("victim").unwrap()["state"], "running");
    assert_eq!(e.running_pid("victim"), victim);
}

/// A tmpfs mounted under a host directory that containers bind, removed on drop.
struct Submount(std::path::PathBuf);

impl Submount {
    fn new(dir: &Path) -> Submount {
        std::fs::create_dir(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=1777,size=1m", "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        let s = Submount(dir.to_path_buf());
        assert!(ok, "mount tmpfs on {}", dir.display());
        s
    }
}

impl Drop for Submount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
#[ignore = "root: run the README's test command"]
fn hostile_host_binds_are_read_only_all_the_way_down() {
    // A world-writable mount below /usr on the host (as /usr/local or a
    // package's cache can be): read-only inside every container all the same.
    let sub = Submount::new(&Path::new("/usr/lib").join(unique("imperium-hostile")));
    let mut e = Emperor::new();
    e.write(
        "site1",
        "kind = \"site\"\n[limits]\nmemory = \"64M\"\ncpu = 0.1\npids = 50\n",
    );
    e.start();
    let pid = e.running_pid("site1");
    let inside = Path::new("/usr/lib").join(sub.0.file_name().unwrap());
    let out = e.exec_in(
        pid,
        uid_of(&e, "site1"),
        &e.cgroup("_admin/site1"),
        &format!("touch {}/planted 2>&1; echo rc=$?", inside.display()),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Read-only file system"), "{text}");
    assert!(!sub.0.join("planted").exists());
}

#[test]
#[ignore = "root: run the README's test command"]
fn hostile_usr_local_swapped_for_a_link_while_the_site_starts_is_never_mounted() {
    let mut e = Emperor::new();
    // Something of the host's that no tenant may see.
    let secret = e.dir.path().join("host-secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("marker"), "host").unwrap();
    e.write(
        "site1",
        "kind = \"site\"\n[limits]\nmemory = \"64M\"\ncpu = 0.1\npids = 50\n",
    );
    e.start();
    let mut pid = e.running_pid("site1");
    let uid = uid_of(&e, "site1");
    let home = e.home_root.join("site1");
    let local = home.join("usr-local");
    // The tenant flips ~/usr-local between its directory and a link to the host's.
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (stop, home, local, secret) =
            (stop.clone(), home.clone(), local.clone(), secret.clone());
        std::thread::spawn(move || {
            // Swapped atomically (RENAME_EXCHANGE), so ~/usr-local always
            // exists: half the time the tenant's directory, half a link to the host's.
            let link = home.join("usr-local.link");
            std::os::unix::fs::symlink(&secret, &link).unwrap();
            let swap = || {
                nix::fcntl::renameat2(
                    None,
                    &local,
                    None,
                    &link,
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                )
                .is_ok()
            };
            let mut flips = 0u32;
            while !stop.load(Ordering::Relaxed) {
                flips += u32::from(swap());
            }
            // Left as the tenant's directory.
            if local
                .symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
            {
                swap();
            }
            flips
        })
    };
    let (mut started, mut refused) = (0, 0);
    let t = Instant::now();
    while started < 25 && t.elapsed() < Duration::from_secs(90) {
        let out = e.cli(&["restart", "site1"]);
        assert!(out.status.success(), "{out:?}");
        let row = e.wait_row("site1", "a new start", |r| {
            (r["state"] == "running" && r["pid"].as_i64() != Some(pid as i64))
                || r["state"] == "failed"
                || r["state"] == "backoff"
        });
        if row["state"] != "running" {
            refused += 1;
            continue;
        }
        started += 1;
        pid = row["pid"].as_i64().unwrap() as i32;
        let out = e.exec_in(
            pid,
            uid,
            &e.cgroup("_admin/site1"),
            "cat /usr/local/marker 2>/dev/null; true",
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("host"),
            "start {started}: the host's directory is mounted at /usr/local"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    assert!(
        started >= 5,
        "{started} starts, {refused} refused, {flips} flips"
    );
}

#[test]
#[ignore = "root: run the README's test command"]
fn hostile_files_that_block_or_balloon_in_a_drop_directory_do_not_stop_the_emperor() {
    let mut e = Emperor::new();
    e.write("group1", GROUP);
    e.start();
    let drop = e.home_root.join("group1/vassals");
    wait_for(Duration::from_secs(10), "the drop directory", || {
        drop.is_dir().then_some(())
    });
    // A link to a file whose read never ends, a fifo nobody writes, a link
    // out of the directory, and a 1 GiB sparse file.
    std::os::unix::fs::symlink("/proc/kmsg", drop.join("kmsg.toml")).unwrap();
    nix::unistd::mkfifo(&drop.join("fifo.toml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", drop.join("passwd.toml")).unwrap();
    let big = std::fs::File::create(drop.join("big.toml")).unwrap();
    big.set_len(1 << 30).unwrap();
    // Closed: a file still open for writing is not judged until it is
    // closed (or 30 s have passed).
    std::mem::drop(big);
    for (name, why) in [
        ("kmsg", "symlink"),
        ("fifo", "not a regular file"),
        ("passwd", "symlink"),
        ("big", "larger than"),
    ] {
        let r = reason(&e, name);
        assert!(r.contains(why), "{name}: {r}");
    }
    // Still answering, and still starting what is good.
    write_atomic(
        &drop.join("good.toml"),
        "kind = \"site\"\n[limits]\nmemory = \"64M\"\ncpu = 0.1\npids = 50\n",
    );
    e.running_pid("good");
    // Rescans (every change of the directory is one) log each refusal once.
    for i in 0..5 {
        write_atomic(&drop.join(".touch"), &i.to_string());
        std::thread::sleep(Duration::from_millis(100));
    }
    e.status();
    let log = e.log();
    let lines = log.lines().filter(|l| l.contains("larger than")).count();
    assert_eq!(lines, 1, "{log}");
    let rss_kb: u64 = proc_status(e.pid(), "VmRSS")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rss_kb < 100 * 1024, "emperor RSS {rss_kb} kB");
}

/// Reads what a process has open, by target.
fn open_files(pid: i32) -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            if let Ok(t) = std::fs::read_link(e.path()) {
                v.push(t.display().to_string());
            }
        }
    }
    v
}

#[test]
#[ignore = "root: run the README's test command"]
fn hostile_a_containers_init_holds_nothing_of_the_emperors_and_cannot_be_ptraced() {
    let mut e = Emperor::new();
    // A root-only file the emperor happens to have open when it starts.
    let secret = e.dir.path().join("root-only");
    std::fs::write(&secret, "secret").unwrap();
    // Handed to the emperor without close-on-exec (as a careless unit file might).
    let fd = nix::fcntl::open(
        &secret,
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    e.write(
        "site1",
        "kind = \"site\"\n[limits]\nmemory = \"64M\"\ncpu = 0.1\npids = 50\n",
    );
    e.start();
    let _ = nix::unistd::close(fd);
    let pid = e.running_pid("site1");
    let files = open_files(pid);
    assert!(
        !files
            .iter()
            .any(|f| f.contains("root-only") || f.contains("emperor.log")),
        "the init holds {files:?}"
    );
    // The tenant cannot read its init's memory or descriptors.
    let out = e.exec_in(
        pid,
        uid_of(&e, "site1"),
        &e.cgroup("_admin/site1"),
        "cat /proc/1/environ >/dev/null 2>&1 && echo READ; ls /proc/1/fd >/dev/null 2>&1 && echo LISTED; echo ran as $(id -u)",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let uid = uid_of(&e, "site1");
    assert!(
        text.contains(&format!("ran as {uid}")),
        "the check did not run: {text}"
    );
    assert!(!text.contains("READ") && !text.contains("LISTED"), "{text}");
}

/// What the dominion tells the router of a site: its public key.
fn public_key(e: &Emperor, site: &str) -> Option<String> {
    let d: serde_json::Value =
        serde_json::from_slice(&std::fs::read(e.run_dir.join("router/dominion.json")).ok()?)
            .ok()?;
    d["sites"][site]["publicKey"].as_str().map(str::to_owned)
}

#[test]
#[ignore = "root: run the README's test command"]
fn hostile_a_site_name_taken_again_by_another_tenant_does_not_get_the_old_key() {
    use base64::Engine;
    use std::os::unix::fs::MetadataExt;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut e = Emperor::new();
    e.write("shop", "kind = \"site\"\ndomains = [\"shop.test\"]\n");
    e.start();
    // The key bound into the container is the site's own, readable by its
    // tenant alone, and the pair of what the router is told.
    let key_in = |e: &Emperor| {
        let out = e.exec_in(
            e.running_pid("shop"),
            uid_of(e, "shop"),
            &e.cgroup("_admin/shop"),
            "cat /run/imperium/site.key",
        );
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let pair = |seed: &str| {
        let seed: [u8; 32] = b64.decode(seed).unwrap().try_into().unwrap();
        let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
        b64.encode(public.to_bytes())
    };
    let old = key_in(&e);
    let told = wait_for_or(
        Duration::from_secs(10),
        "the dominion",
        || public_key(&e, "shop"),
        || std::fs::read_to_string(e.run_dir.join("router/dominion.json")).unwrap_or_default(),
    );
    assert_eq!(pair(&old), told);
    let file = std::fs::metadata(e.run_dir.join("keys/shop.key")).unwrap();
    assert_eq!(
        (file.mode() & 0o777, file.uid()),
        (0o400, uid_of(&e, "shop"))
    );
    let dir = std::fs::metadata(e.run_dir.join("keys")).unwrap();
    assert_eq!((dir.mode() & 0o777, dir.uid()), (0o711, 0));

    // The tenant goes, keeping a copy of its key; the name comes back for
    // another tenant.
    e.remove("shop");
    wait_for(Duration::from_secs(20), "shop gone", || {
        e.row("shop").is_none().then_some(())
    });
    assert!(
        !e.run_dir.join("keys/shop.key").exists(),
        "a removed site's key stays behind"
    );
    e.write(
        "shop",
        "kind = \"site\"\nuser = \"newowner\"\ndomains = [\"shop.test\"]\n",
    );
    e.wait_row("shop", "running", |r| r["state"] == "running");
    let new = key_in(&e);
    assert_ne!(new, old, "the new tenant was given the old tenant's key");
    let told = wait_for(Duration::from_secs(10), "the new key told", || {
        public_key(&e, "shop").filter(|k| *k != pair(&old))
    });
    assert_eq!(pair(&new), told, "the router is told the new pair");
}

/// Inits (pid 1 of their own pid namespace) among the processes of a cgroup.
fn inits_in(cgroup: &str) -> usize {
    read_cgroup("pids", cgroup, "cgroup.procs")
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|v| v.split_whitespace().last().map(|x| x == "1"))
                .unwrap_or(false)
        })
        .count()
}

#[test]
#[ignore = "root: run the README's test command"]
fn hostile_an_emperor_killed_in_a_burst_of_starts_never_leaves_two_inits_in_a_site() {
    let mut e = Emperor::new();
    e.start();
    for (round, delay) in [30u64, 90, 150].into_iter().enumerate() {
        let sites: Vec<String> = (0..30).map(|i| format!("r{round}s{i}")).collect();
        for s in &sites {
            e.write(
                s,
                "kind = \"site\"\n[limits]\nmemory = \"32M\"\npids = 20\n",
            );
        }
        // kill -9 in the middle of the starts (or the restarts the edits cause).
        std::thread::sleep(Duration::from_millis(delay));
        e.kill(nix::sys::signal::Signal::SIGKILL);
        e.start();
        for s in &sites {
            e.running_pid(s);
        }
        for s in &sites {
            let n = inits_in(&e.cgroup(&format!("_admin/{s}")));
            assert_eq!(n, 1, "round {round}: {s} has {n} inits\n{}", e.log());
        }
    }
}

#[test]
#[ignore = "root: run the README's test command"]
fn hostile_an_admin_notification_never_follows_a_tenants_link_to_the_host() {
    let mut e = Emperor::new();
    e.write(
        "site1",
        "kind = \"site\"\n[limits]\nmemory = \"64M\"\npids = 50\n",
    );
    e.start();
    e.running_pid("site1");
    // A directory of the host the tenant's uid could write to, if it were reached.
    let host_dir = std::path::PathBuf::from("/tmp").join(unique("imperium-hostile-notify"));
    std::fs::create_dir(&host_dir).unwrap();
    std::fs::set_permissions(
        &host_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let home = e.home_root.join("site1");
    let _ = std::fs::remove_dir_all(home.join(".imperium"));
    std::os::unix::fs::symlink(&host_dir, home.join(".imperium")).unwrap();
    let _ = e.cli(&["notify", "site1", "maintenance on sunday"]);
    let leaked = std::fs::read_dir(&host_dir).unwrap().count();
    let _ = std::fs::remove_dir_all(&host_dir);
    assert_eq!(
        leaked,
        0,
        "the notification was written into the host's {}",
        host_dir.display()
    );
    // Without the link, the same call stores it in the tenant's home.
    std::fs::remove_file(home.join(".imperium")).unwrap();
    let out = e.cli(&["notify", "site1", "maintenance on sunday"]);
    assert!(out.status.success(), "{out:?}");
    assert!(home.join(".imperium/notifications.db").is_file());
}

#[test]
#[ignore = "root: run the README's test command"]
fn a_resellers_own_container_has_a_working_vassal_that_leaves_site_files_alone() {
    let mut e = Emperor::new();
    e.write("group1", GROUP);
    e.start();
    let pid = e.running_pid("group1");
    let drop = e.home_root.join("group1/vassals");
    write_atomic(
        &drop.join("site9.toml"),
        "kind = \"site\"\n[limits]\nmemory = \"64M\"\ncpu = 0.1\npids = 50\n",
    );
    e.running_pid("site9");
    let uid = uid_of(&e, "group1");
    let run = |script: &str| {
        let script = format!("export HOME=/home/group1; cd; {script}");
        let out = e.exec_in(pid, uid, &e.cgroup("group1/_self"), &script);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    // The reseller's own process, from ~/processes.
    let out =
        run("printf 'command = [\"sleep\", \"600\"]\\n' > ~/processes/panel.toml && echo written");
    assert!(out.contains("written"), "{out}");
    let status = wait_for(Duration::from_secs(10), "the reseller's process", || {
        let s = run("/run/imperium/bin/vassal status; echo rc=$?");
        (s.contains("panel") && s.contains("running")).then_some(s)
    });
    assert!(status.contains("rc=0"), "{status}");
    assert!(
        !status.contains("site9"),
        "a site file taken for a process: {status}"
    );
    let log = run("cat ~/logs/vassal.log 2>/dev/null; true");
    assert!(!log.contains("site9"), "{log}");
}
