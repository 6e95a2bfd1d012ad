//! The emperor as systemd runs it on a real host (cgroup v2): its unit, the
//! site tree in a delegated scope of its own, restarts and a watchdog that
//! leave the sites running, and `emperor shutdown` that ends them all.
//!
//! These need systemd as PID 1: `scripts/test-vm` runs them in a VM; the
//! host's run (`scripts/test`, no systemd here) skips the `systemd_` tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::{alive, bin, require_root, vassal_bin, wait_for, wait_for_or, Emperor};

fn require_systemd() {
    let pid1 = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    assert_eq!(
        pid1.trim(),
        "systemd",
        "this test needs systemd as PID 1: run scripts/test-vm"
    );
}

fn systemctl(args: &[&str]) -> String {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .expect("systemctl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The pid of `name`'s init once the emperor answers and says it runs
/// (the emperor may be starting: no answer is not yet a failure).
fn running(e: &Emperor, name: &str, what: &str) -> i32 {
    wait_for(Duration::from_secs(20), what, || {
        let out = e.cli(&["status", "--json"]);
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        rows.as_array()?
            .iter()
            .find(|r| r["name"] == name && r["state"] == "running")
            .and_then(|r| r["pid"].as_i64())
            .map(|p| p as i32)
    })
}

fn main_pid(unit: &str) -> i32 {
    systemctl(&["show", "-p", "MainPID", "--value", unit])
        .parse()
        .unwrap_or(0)
}

/// The emperor's unit, written where systemd reads runtime units; removed,
/// with its scope and everything in it, when dropped.
struct Unit {
    name: String,
    scope: String,
    file: PathBuf,
}

impl Unit {
    fn new(e: &Emperor) -> Unit {
        let name = format!("{}.service", e.cgroup_root);
        let file = Path::new("/run/systemd/system").join(&name);
        let text = format!(
            "[Service]\n\
             Type=notify\n\
             NotifyAccess=main\n\
             ExecStart={emperor} --run-dir {run} serve --vassals {vassals} --home-root {home} \
             --state-dir {state} --cgroup-root {root} --systemd-scope --stop-grace 3 \
             --vassal-bin {vassal}\n\
             WatchdogSec=10\n\
             Restart=on-failure\n\
             RestartSec=1\n\
             KillMode=process\n\
             TimeoutStopSec=5\n",
            emperor = bin("emperor").display(),
            vassal = vassal_bin().display(),
            run = e.run_dir.display(),
            vassals = e.vassals.display(),
            home = e.home_root.display(),
            state = e.state_dir.display(),
            root = e.cgroup_root,
        );
        std::fs::write(&file, text).expect("unit file");
        systemctl(&["daemon-reload"]);
        Unit {
            name,
            scope: format!("{}.scope", e.cgroup_root),
            file,
        }
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        systemctl(&["stop", &self.name]);
        systemctl(&["kill", "--signal=KILL", &self.scope]);
        systemctl(&["stop", &self.scope]);
        let _ = std::fs::remove_file(&self.file);
        systemctl(&["daemon-reload"]);
        systemctl(&["reset-failed", &self.name]);
    }
}

#[test]
fn systemd_sites_live_in_a_delegated_scope_and_outlive_restarts_of_the_emperor() {
    require_root();
    require_systemd();
    let e = Emperor::new();
    let unit = Unit::new(&e);
    e.write("site1", "kind = \"site\"\n");
    systemctl(&["start", &unit.name]);
    assert_eq!(systemctl(&["is-active", &unit.name]), "active");
    let init = running(&e, "site1", "the site running");

    // The site is in the emperor's scope under machine.slice, not in its unit.
    let cgroup = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap();
    let want = format!("0::/machine.slice/{}/_admin/site1\n", unit.scope);
    assert_eq!(cgroup, want);
    assert_eq!(systemctl(&["is-active", &unit.scope]), "active");
    assert_eq!(
        std::fs::read_to_string("/sys/fs/cgroup/machine.slice/cgroup.subtree_control")
            .unwrap()
            .split_whitespace()
            .filter(|c| ["cpu", "memory", "pids"].contains(c))
            .count(),
        3,
        "systemd delegated the controllers the sites need"
    );
    let status = systemctl(&["show", "-p", "StatusText", "--value", &unit.name]);
    assert_eq!(status, "1 of 1 vassals running, 0 refused");

    // `systemctl restart`: the site keeps running, the new emperor adopts it.
    let first = main_pid(&unit.name);
    systemctl(&["restart", &unit.name]);
    let second = main_pid(&unit.name);
    assert!(second != first && second != 0, "a new emperor");
    assert_eq!(
        running(&e, "site1", "the site adopted"),
        init,
        "the same init, adopted"
    );

    // A hung emperor: the watchdog restarts it; the site is not touched.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let third = wait_for(Duration::from_secs(20), "the watchdog's restart", || {
        let p = main_pid(&unit.name);
        (p != second && p != 0).then_some(p)
    });
    assert_eq!(running(&e, "site1", "the site adopted again"), init);
    assert!(alive(init));
    assert_ne!(third, second);

    // `systemctl stop` ends the emperor alone.
    systemctl(&["stop", &unit.name]);
    assert_eq!(systemctl(&["is-active", &unit.name]), "inactive");
    assert!(alive(init), "the site outlives its emperor's stop");

    // `emperor shutdown` ends every site, and with them the scope.
    systemctl(&["start", &unit.name]);
    assert_eq!(running(&e, "site1", "the site adopted"), init);
    let out = e.cli(&["shutdown"]);
    assert!(out.status.success(), "{out:?}");
    wait_for(Duration::from_secs(20), "the site stopped", || {
        (!alive(init)).then_some(())
    });
    let scope_dir = Path::new("/sys/fs/cgroup/machine.slice").join(&unit.scope);
    wait_for_or(
        Duration::from_secs(20),
        "systemd removing the scope",
        || (!scope_dir.exists()).then_some(()),
        || scope_left(&unit, &scope_dir),
    );
}

/// What is left of a scope that should be gone: its unit's state, each
/// cgroup under it with the processes in it, and what systemd and the
/// emperor logged.
fn scope_left(unit: &Unit, dir: &Path) -> String {
    let mut seen = systemctl(&["show", "-p", "ActiveState,SubState,LoadState", &unit.scope]);
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        let comms: Vec<String> = procs
            .split_whitespace()
            .map(|p| {
                let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                format!("{p} {}", comm.trim())
            })
            .collect();
        seen += &format!("\n{}: {comms:?}", d.display());
        dirs.extend(
            std::fs::read_dir(&d)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    let journal = Command::new("journalctl")
        .args(["--no-pager", "-o", "short-monotonic", "-n", "60", "-u"])
        .args([&unit.scope, "-u", &unit.name])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    format!("{seen}\njournal:\n{journal}")
}

/// What scripts/install touches, to compare before and after.
fn host_files() -> Vec<String> {
    let mut seen = Vec::new();
    for f in ["/etc/nsswitch.conf", "/etc/pam.d/sshd"] {
        seen.push(format!(
            "{f}: {}",
            std::fs::read_to_string(f).unwrap_or_default()
        ));
    }
    for d in [
        "/etc/ssh/sshd_config.d",
        "/etc/systemd/system",
        "/etc/imperium",
        "/usr/local/bin",
        "/usr/local/share/doc",
        "/lib/x86_64-linux-gnu/security",
    ] {
        let mut names: Vec<String> = std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        seen.push(format!("{d}: {names:?}"));
    }
    seen.push(format!(
        "nss module: {}",
        Path::new("/lib/x86_64-linux-gnu/libnss_imperium.so.2").exists()
    ));
    seen
}

fn script(name: &str, args: &[&str]) -> std::process::Output {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    Command::new(repo.join("scripts").join(name))
        .args(args)
        .output()
        .expect("the script")
}

/// Undoes an install even when the test fails: its sites, the install, the
/// state the emperor made.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("/usr/local/bin/emperor")
            .arg("shutdown")
            .output();
        let _ = script("uninstall", &[]);
        for d in [
            "/home/virtual",
            "/var/lib/imperium",
            "/run/imperium",
            "/etc/imperium",
        ] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[test]
fn systemd_install_lets_a_tenant_ssh_into_its_site_and_uninstall_leaves_the_host_as_before() {
    require_root();
    require_systemd();
    for d in ["/home/virtual", "/var/lib/imperium", "/etc/imperium"] {
        assert!(!Path::new(d).exists(), "{d} exists before the install");
    }
    let before = host_files();
    let bins = e2e::bin_dir().display().to_string();

    let dry = script("install", &["--dry-run", "--bin-dir", &bins]);
    assert!(dry.status.success(), "{dry:?}");
    let said = String::from_utf8_lossy(&dry.stdout).into_owned();
    for change in [
        "would: install /usr/local/bin/emperor",
        "would: edit /etc/pam.d/sshd",
        "would: edit /etc/nsswitch.conf",
        "would: install /etc/ssh/sshd_config.d/imperium.conf",
        "would: systemctl enable --now imperium-emperor",
    ] {
        assert!(said.contains(change), "{change:?} not in:\n{said}");
    }
    assert_eq!(host_files(), before, "a dry run changes nothing");

    let _undo = Installed;
    let out = script("install", &["--bin-dir", &bins]);
    assert!(out.status.success(), "{out:?}");
    for u in ["imperium-emperor", "imperium-router"] {
        assert_eq!(systemctl(&["is-active", u]), "active", "{u}");
    }
    // The shared router comes before any one site's work under contention.
    let weight =
        std::fs::read_to_string("/sys/fs/cgroup/system.slice/imperium-router.service/cpu.weight");
    assert_eq!(weight.unwrap().trim(), "1000", "the router's CPU weight");
    let again = script("install", &["--bin-dir", &bins]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to do"),
        "a second install changes nothing: {again:?}"
    );

    // A tenant's site, and the tenant logging in over the host's own sshd.
    let keys = e2e::sshd::Keys::new();
    std::fs::write(
        "/etc/imperium/vassals/site9.toml",
        format!(
            "kind = \"site\"\n[container]\nssh_keys = [\"{}\"]\n",
            keys.public()
        ),
    )
    .unwrap();
    wait_for(Duration::from_secs(20), "site9 running", || {
        let out = Command::new("/usr/local/bin/emperor")
            .args(["status", "--json"])
            .output()
            .ok()?;
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        rows.as_array()?
            .iter()
            .any(|r| r["name"] == "site9" && r["state"] == "running")
            .then_some(())
    });
    systemctl(&["restart", "ssh"]);
    let login = e2e::sshd::client(
        &keys,
        22,
        120,
        "site9",
        &[],
        "hostname; cat /proc/1/comm; id -un",
    )
    .output()
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&login.stdout),
        "site9\nvassal\nsite9\n",
        "the tenant lands in its own container: {login:?}"
    );

    let out = Command::new("/usr/local/bin/emperor")
        .arg("shutdown")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::remove_file("/etc/imperium/vassals/site9.toml").unwrap();
    let out = script("uninstall", &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(host_files(), before, "the host is as it was");
}

/// Puts back /etc/default/etcd and etcd as they were, even when the test
/// fails.
struct EtcdMember {
    before: String,
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        let _ = script("uninstall", &[]);
        let _ = std::fs::write("/etc/default/etcd", &self.before);
        let _ = std::fs::remove_dir_all("/etc/imperium");
        let _ = std::fs::remove_dir_all("/var/lib/etcd/imperium");
        let _ = Command::new("systemctl").args(["restart", "etcd"]).output();
    }
}

#[test]
fn systemd_install_sets_up_an_etcd_member_that_asks_clients_for_certificates() {
    require_root();
    require_systemd();
    let pki = tempfile::tempdir().unwrap();
    let p = |f: &str| pki.path().join(f);
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let s = |x: &Path| x.display().to_string();
    let (ca_key, ca) = (s(&p("ca-key.pem")), s(&p("ca.pem")));
    let ca_req = [
        "req", "-x509", "-subj", "/CN=ca", "-days", "2", "-keyout", &ca_key, "-out", &ca,
    ];
    openssl(&[&ca_req[..], &ec].concat());
    for (name, alt) in [("m1", "IP:127.0.0.1"), ("admin", "DNS:admin")] {
        std::fs::write(
            p(&format!("{name}.ext")),
            format!("subjectAltName={alt}\nextendedKeyUsage=serverAuth,clientAuth\n"),
        )
        .unwrap();
        let (key, csr, crt) = (
            s(&p(&format!("{name}-key.pem"))),
            s(&p(&format!("{name}.csr"))),
            s(&p(&format!("{name}.pem"))),
        );
        let subj = format!("/CN={name}");
        openssl(
            &[
                &["req"][..],
                &ec,
                &["-subj", &subj, "-keyout", &key, "-out", &csr],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-CAcreateserial",
            "-in",
            &csr,
            "-CA",
            &s(&p("ca.pem")),
            "-CAkey",
            &s(&p("ca-key.pem")),
            "-extfile",
            &s(&p(&format!("{name}.ext"))),
            "-out",
            &crt,
        ]);
    }
    let before = std::fs::read_to_string("/etc/default/etcd").unwrap_or_default();
    let _undo = EtcdMember {
        before: before.clone(),
    };
    let args = [
        "--etcd-member",
        "m1",
        "--etcd-cluster",
        "m1=https://127.0.0.1:2380",
        "--etcd-tls",
        &s(pki.path()),
    ];
    let dry = script("install", &[&["--dry-run"][..], &args].concat());
    assert!(dry.status.success(), "{dry:?}");
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("would: install /etc/default/etcd"),
        "{dry:?}"
    );
    assert_eq!(
        std::fs::read_to_string("/etc/default/etcd").unwrap_or_default(),
        before,
        "a dry run changes nothing"
    );
    let out = script("install", &args);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(systemctl(&["is-active", "etcd"]), "active");
    let ctl = |with_cert: bool, more: &[&str]| {
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                "https://127.0.0.1:2379",
                "--dial-timeout",
                "10s",
            ])
            .args(["--command-timeout", "20s", "--cacert", &s(&p("ca.pem"))]);
        if with_cert {
            c.args([
                "--cert",
                &s(&p("admin.pem")),
                "--key",
                &s(&p("admin-key.pem")),
            ]);
        }
        c.args(more).output().unwrap()
    };
    let put = wait_for(Duration::from_secs(60), "the member answering", || {
        let o = ctl(true, &["put", "/imperium/ready", "1"]);
        o.status.success().then_some(o)
    });
    assert!(String::from_utf8_lossy(&put.stdout).contains("OK"));
    let get = ctl(true, &["get", "--print-value-only", "/imperium/ready"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "1");
    // A client without a certificate of the CA gets nothing.
    let anon = ctl(false, &["get", "/imperium/ready"]);
    assert!(!anon.status.success(), "{anon:?}");
    let again = script("install", &args);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to do"),
        "{again:?}"
    );
    let out = script("uninstall", &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string("/etc/default/etcd").unwrap_or_default(),
        before
    );
    assert!(!Path::new("/etc/imperium/etcd").exists());
}
