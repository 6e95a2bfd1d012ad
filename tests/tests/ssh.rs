//! SSH entry end to end, as root: the real emperor runs sites, a real sshd
//! (private config, PAM file and nsswitch.conf in a private mount namespace)
//! loads the NSS and PAM modules this workspace built, and a real `ssh` client
//! logs in with a key. Checked from both sides: what the tenant's shell sees,
//! and what the host sees of the session's processes.

use std::process::Output;
use std::time::Duration;

use e2e::sshd::{Keys, Pam, Sshd, ADMIN};
use e2e::*;

fn site(keys: &Keys) -> String {
    format!(
        "kind = \"site\"\n[limits]\nmemory = \"256M\"\ncpu = 0.5\npids = 100\n[container]\nssh_keys = [\"{}\"]\n",
        keys.public()
    )
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The host pids of the processes directly in the site's cgroup (of one
/// controller's hierarchy on v1).
fn site_pids(e: &Emperor, site: &str, controller: &str) -> Vec<i32> {
    let cg = e.cgroup(&format!("_admin/{site}"));
    read_cgroup(controller, &cg, "cgroup.procs")
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_a_tenant_lands_in_its_own_running_container() {
    let keys = Keys::new();
    let mut e = Emperor::new();
    e.write("site52", &site(&keys));
    e.write("site53", &site(&keys));
    e.write(
        "group1",
        &format!(
            "kind = \"group\"\n[limits]\nmemory = \"256M\"\ncpu = 0.5\npids = 100\n[container]\nssh_keys = [\"{}\"]\n",
            keys.public()
        ),
    );
    e.start();
    let init = e.running_pid("site52");
    let other = e.running_pid("site53");
    let reseller = e.running_pid("group1");
    let uid = e.row("site52").unwrap()["uid"].as_u64().unwrap();
    // The keys are where sshd's AuthorizedKeysFile looks.
    assert_eq!(
        std::fs::read_to_string(e.state_dir.join("ssh/site52")).unwrap(),
        format!("{}\n", keys.public())
    );
    std::fs::write(e.home_root.join("site52/marker.txt"), "in the container\n").unwrap();
    let sshd = Sshd::start(keys, &e, Pam::Imperium);

    let probe = "hostname; id -u; id -un; cat ~/marker.txt; \
                 for n in mnt uts ipc net pid cgroup; do readlink /proc/self/ns/$n; done; \
                 tr '\\0' ' ' < /proc/1/cmdline; echo; \
                 ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '; echo; \
                 grep -c . /etc/passwd; \
                 test -e /etc/ssh/sshd_config && echo HOST-ETC || echo no-host-etc; \
                 grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\t' ' '; \
                 unshare -U true 2>/dev/null && echo UNSHARED || echo unshare-refused";
    let out = sshd.ssh("site52", &[], probe);
    assert!(
        out.status.success(),
        "ssh failed: {out:?}\nsshd:\n{}",
        sshd.log()
    );
    let t = text(&out);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines[0], "site52", "hostname");
    assert_eq!(lines[1], uid.to_string(), "uid");
    assert_eq!(lines[2], "site52", "user name");
    assert_eq!(lines[3], "in the container", "the home is the container's");
    for (i, n) in ["mnt", "uts", "ipc", "net", "pid", "cgroup"]
        .iter()
        .enumerate()
    {
        assert_eq!(
            lines[4 + i],
            ns_link(&init.to_string(), n),
            "{n} namespace is not the init's"
        );
        assert_ne!(lines[4 + i], ns_link(&other.to_string(), n));
    }
    assert!(lines[10].contains("vassal"), "pid 1 is {:?}", lines[10]);
    let pids: Vec<i32> = lines[11]
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(pids.contains(&1), "{pids:?}");
    assert!(
        pids.len() < 10 && !pids.contains(&init),
        "the host's processes are visible: {pids:?}"
    );
    assert_eq!(
        lines[12], "3",
        "/etc/passwd is the container's (root, the tenant, nobody)"
    );
    assert_eq!(lines[13], "no-host-etc", "the host's /etc is visible");
    // The container's confinement, as its init has it.
    assert_eq!(
        lines[14..17],
        ["NoNewPrivs: 1", "Seccomp: 2", "unshare-refused"]
    );

    // The tenant's tools by name, with and without a login shell; the
    // notifications with a date.
    let out = sshd.ssh(
        "site52",
        &[],
        "command -v vassal && vassal status | head -1 && vassal notify admin hello && vassal notifications",
    );
    let t = text(&out);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines[0], "/run/imperium/bin/vassal", "{t}");
    assert!(lines[1].starts_with("NAME "), "{t}");
    let note = lines.last().unwrap().split_whitespace().collect::<Vec<_>>();
    let date = format!("{} {}", note[1], note[2]);
    assert!(
        date.len() == 19 && date.as_bytes()[4] == b'-' && date.as_bytes()[13] == b':',
        "a date, not epoch seconds: {t}"
    );
    assert_eq!(note[3..], ["admin", "hello"], "{t}");
    // A session is a likelier OOM victim in its site than the site's init.
    let out = sshd.ssh("site52", &[], "cat /proc/self/oom_score_adj");
    assert_eq!(text(&out).trim(), "300", "{out:?}");
    let out = sshd.ssh("site52", &[], "bash -lc 'echo $PATH'");
    let t = text(&out);
    assert_eq!(t.lines().next(), Some(model::layout::inside::PATH), "{t}");
    let out = sshd.ssh("site52", &["-tt"], "bash -li -c true");
    assert!(
        text(&out).contains("Site site52: processes and jobs in ~/vassals/"),
        "{out:?}"
    );

    // Another tenant lands in its own container, never in site52's.
    let out = sshd.ssh("site53", &[], "hostname; readlink /proc/self/ns/mnt");
    assert_eq!(
        text(&out),
        format!("site53\n{}\n", ns_link(&other.to_string(), "mnt"))
    );

    // A reseller lands in its group's own container.
    let out = sshd.ssh("group1", &[], "hostname; readlink /proc/self/ns/pid");
    assert_eq!(
        text(&out),
        format!("group1\n{}\n", ns_link(&reseller.to_string(), "pid"))
    );

    // A pty from the container's devpts, and a login record in the
    // container's utmp (sshd writes it with the pid it sees, a host pid, so
    // `who`, which hides records of pids it cannot see, lists nothing).
    let out = sshd.ssh(
        "site52",
        &["-tt"],
        "tty; utmpdump /var/run/utmp 2>/dev/null",
    );
    let t = text(&out).replace('\r', "");
    assert!(t.starts_with("/dev/pts/"), "{t:?} {out:?}");
    let tty = t.lines().next().unwrap().trim_start_matches("/dev/");
    assert!(
        t.lines()
            .any(|l| l.contains("[site52") && l.contains(&format!("[{tty}"))),
        "no login record: {t:?}"
    );

    // The session's processes, seen from the host: in the site's cgroup, as
    // the tenant, in the init's namespaces.
    let mut bg = sshd
        .ssh_command("site52", &[], "exec sleep 3")
        .spawn()
        .unwrap();
    let sleeper = wait_for(
        Duration::from_secs(10),
        "the session in the site's cgroup",
        || {
            site_pids(&e, "site52", "pids")
                .into_iter()
                .find(|p| cmdline(*p).starts_with("sleep 3"))
        },
    );
    for c in ["memory", "cpu", "freezer"] {
        assert!(site_pids(&e, "site52", c).contains(&sleeper), "{c}");
    }
    assert_eq!(proc_uid(sleeper) as u64, uid);
    for n in ["mnt", "pid", "net", "uts", "ipc", "cgroup"] {
        assert_eq!(
            ns_link(&sleeper.to_string(), n),
            ns_link(&init.to_string(), n),
            "{n}"
        );
    }
    assert!(bg.wait().unwrap().success());

    // No zombie is left under the container's init after the logouts.
    wait_for(Duration::from_secs(10), "no zombies under the init", || {
        (!children(init).iter().any(|(_, state)| *state == 'Z')).then_some(())
    });
    assert!(alive(init));
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_refused_logins_run_nothing_and_strangers_are_left_alone() {
    let keys = Keys::new();
    let mut e = Emperor::new();
    e.write("site52", &site(&keys));
    e.start();
    let init = e.running_pid("site52");
    let uid = e.row("site52").unwrap()["uid"].as_u64().unwrap();
    let sshd = Sshd::start(keys, &e, Pam::Imperium);
    let ran = e.home_root.join("site52/ran");
    let touch = "touch ~/ran; hostname";

    // An admin account is not a tenant: it logs in on the host as before.
    let out = sshd.ssh(
        ADMIN,
        &[],
        "hostname; readlink /proc/self/ns/pid /proc/self/ns/uts",
    );
    let me = std::process::id().to_string();
    assert_eq!(
        text(&out),
        format!(
            "{}\n{}\n{}\n",
            nix::unistd::gethostname().unwrap().to_string_lossy(),
            ns_link(&me, "pid"),
            ns_link(&me, "uts")
        ),
        "{out:?}\n{}",
        sshd.log()
    );

    // Suspended: refused with the reason, and nothing runs.
    let out = e.cli(&["suspend", "site52"]);
    assert!(out.status.success(), "{out:?}");
    let out = sshd.ssh("site52", &[], touch);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("site52 is suspended"),
        "{out:?}"
    );
    assert!(!ran.exists(), "a command ran in a suspended site");
    // Resumed: in again.
    assert!(e.cli(&["resume", "site52"]).status.success());
    let out = sshd.ssh("site52", &[], "hostname");
    assert_eq!(text(&out), "site52\n", "{out:?}");

    // A record that names a reused pid (a process that is not the init) is
    // not believed.
    let rec_path = e.run_dir.join("vassals/site52.json");
    let good = std::fs::read(&rec_path).unwrap();
    let mut rec: serde_json::Value = serde_json::from_slice(&good).unwrap();
    rec["pid"] = serde_json::json!(std::process::id());
    model::atomic::replace(&rec_path, &serde_json::to_vec(&rec).unwrap(), 0o644).unwrap();
    let out = sshd.ssh("site52", &[], touch);
    assert!(!out.status.success() && !ran.exists(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not running"),
        "{out:?}"
    );
    // A container that cannot be joined (its cgroup is gone): the account
    // check passes, the session fails closed: sshd runs nothing (exit 254).
    rec["pid"] = serde_json::from_slice::<serde_json::Value>(&good).unwrap()["pid"].clone();
    rec["cgroupDirs"] = serde_json::json!(["/sys/fs/cgroup/pids/no-such-cgroup"]);
    model::atomic::replace(&rec_path, &serde_json::to_vec(&rec).unwrap(), 0o644).unwrap();
    let out = sshd.ssh("site52", &[], touch);
    assert_eq!(out.status.code(), Some(254), "{out:?}\n{}", sshd.log());
    assert!(!ran.exists());
    // (sshd prints the session's PAM messages on the session's stdout)
    assert!(
        text(&out).contains("cannot enter container site52"),
        "{out:?}"
    );
    model::atomic::replace(&rec_path, &good, 0o644).unwrap();

    // Stopped (the emperor shut down with its sites): refused, nothing runs,
    // and the names still resolve (sshd found the user through the table).
    assert!(e.cli(&["shutdown"]).status.success());
    wait_for(Duration::from_secs(15), "the site to stop", || {
        (!alive(init)).then_some(())
    });
    let out = sshd.ssh("site52", &[], touch);
    assert!(!out.status.success() && !ran.exists(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not running"),
        "{out:?}\n{}",
        sshd.log()
    );
    // The host still shows tenant names, from the emperor's table.
    let home = e.home_root.join("site52");
    let out = sshd.on_host(&format!(
        "getent passwd site52; id -un {uid}; stat -c %U:%G {}",
        home.display()
    ));
    assert_eq!(
        text(&out),
        format!("site52:x:{uid}:{uid}:site52:/home/site52:/bin/bash\nsite52\nsite52:site52\n"),
        "{out:?}"
    );
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_an_sshd_without_pam_refuses_tenants_as_locked_accounts() {
    let keys = Keys::new();
    let mut e = Emperor::new();
    e.write("site52", &site(&keys));
    e.start();
    e.running_pid("site52");
    let sshd = Sshd::start(keys, &e, Pam::Off);
    // Without PAM nothing would take the tenant into its container: the
    // locked shadow entry from the NSS module keeps it out of the host.
    let out = sshd.ssh("site52", &[], "touch ~/ran; hostname");
    assert!(!out.status.success(), "{out:?}");
    assert!(!e.home_root.join("site52/ran").exists());
    assert!(
        sshd.log()
            .contains("User site52 not allowed because account is locked"),
        "{}",
        sshd.log()
    );
    // The same sshd lets an admin in.
    let out = sshd.ssh(ADMIN, &[], "true");
    assert!(out.status.success(), "{out:?}\n{}", sshd.log());
}
