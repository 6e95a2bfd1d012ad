//! Cluster mode end to end, as root: a three-member etcd (Debian's) and
//! emperor "hosts", each in a network namespace of the test's own, joined by
//! a bridge in another; no packet leaves them. Faults are the test's: a
//! host's traffic dropped by nftables inside its namespace, a compaction.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use e2e::*;
use nix::sys::signal::Signal;

/// The LAN's first three bytes; member `i` of etcd is `.1i`, host `i` `.2i`.
const LAN: &str = "192.0.2";

/// Network namespaces on one bridge; all removed on drop, even when the
/// test fails.
struct Lan {
    switch: String,
    nodes: Vec<String>,
}

impl Lan {
    fn new() -> Lan {
        let lan = Lan {
            switch: unique("imp-lan"),
            nodes: Vec::new(),
        };
        ip(&["netns", "add", &lan.switch]);
        let s = lan.switch.as_str();
        ip(&["-n", s, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", s, "link", "set", "br0", "up"]);
        lan
    }

    /// A new namespace on the LAN with address `LAN.last`.
    fn node(&mut self, last: u8) -> String {
        let ns = unique("imp-node");
        ip(&["netns", "add", &ns]);
        self.nodes.push(ns.clone());
        let port = format!("p{last}");
        ip(&[
            "-n",
            &self.switch,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ]);
        ip(&["-n", &self.switch, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &self.switch, "link", "set", &port, "up"]);
        let addr = format!("{LAN}.{last}/24");
        ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// Drops every packet between `ns` and the LAN (inside `ns`).
    fn cut(&self, ns: &str) {
        nft(
            ns,
            &format!(
                "table inet cut {{ chain o {{ type filter hook output priority 0; ip daddr {LAN}.0/24 drop; }}; \
                 chain i {{ type filter hook input priority 0; ip saddr {LAN}.0/24 drop; }}; }}"
            ),
        );
    }

    fn heal(&self, ns: &str) {
        nft(ns, "delete table inet cut");
    }
}

fn nft(ns: &str, rules: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", rules])
        .output()
        .expect("nft");
    assert!(out.status.success(), "nft {rules}: {out:?}");
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain([&self.switch]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Three etcd members, one per namespace.
struct Etcd {
    dir: tempfile::TempDir,
    members: Vec<(String, Child)>,
    endpoints: String,
    /// With TLS: the CA's and the admin's client certificate and key.
    tls: bool,
}

/// Makes `<dir>/<name>.crt` and `.key`, signed by `<dir>/ca` (or, for
/// `ca`, by itself), for `alt` names.
fn certificate(dir: &std::path::Path, name: &str, alt: &str, usage: &str) {
    let p = |ext: &str| dir.join(format!("{name}.{ext}"));
    let run = |c: &mut Command| {
        let out = c.output().expect("openssl");
        assert!(out.status.success(), "openssl: {out:?}");
    };
    let mut req = Command::new("openssl");
    req.args([
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
    ])
    .args(["-nodes", "-subj", &format!("/CN={name}"), "-keyout"])
    .arg(p("key"));
    if name == "ca" {
        run(req.args(["-x509", "-days", "2", "-out"]).arg(p("crt")));
        return;
    }
    run(req.arg("-out").arg(p("csr")));
    std::fs::write(
        p("ext"),
        format!("subjectAltName={alt}\nextendedKeyUsage={usage}\n"),
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
        .arg(p("csr"))
        .arg("-CA")
        .arg(dir.join("ca.crt"))
        .arg("-CAkey")
        .arg(dir.join("ca.key"))
        .arg("-extfile")
        .arg(p("ext"))
        .arg("-out")
        .arg(p("crt")));
}

impl Etcd {
    fn start(lan: &mut Lan) -> Etcd {
        Etcd::start_with(lan, false)
    }

    /// With `tls`, the members serve their clients over TLS and ask each
    /// for a certificate of the test's own CA.
    fn start_with(lan: &mut Lan, tls: bool) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("imperium-etcd")
            .tempdir()
            .expect("tempdir");
        let scheme = if tls { "https" } else { "http" };
        let peers: Vec<String> = (1..=3)
            .map(|i| format!("e{i}=http://{LAN}.1{i}:2380"))
            .collect();
        let endpoints: Vec<String> = (1..=3)
            .map(|i| format!("{scheme}://{LAN}.1{i}:2379"))
            .collect();
        if tls {
            let ips: Vec<String> = (1..=3).map(|i| format!("IP:{LAN}.1{i}")).collect();
            certificate(dir.path(), "ca", "", "");
            certificate(dir.path(), "server", &ips.join(","), "serverAuth");
            for client in ["admin", "h1"] {
                certificate(dir.path(), client, &format!("DNS:{client}"), "clientAuth");
            }
        }
        let mut etcd = Etcd {
            dir,
            members: Vec::new(),
            endpoints: endpoints.join(","),
            tls,
        };
        for i in 1..=3u8 {
            let ns = lan.node(10 + i);
            let child = etcd.member(i, &ns, &peers.join(","), &lan.switch);
            etcd.members.push((ns, child));
        }
        wait_for_or(
            Duration::from_secs(30),
            "etcd's three members healthy",
            || {
                etcd.ctl(&["endpoint", "health"])
                    .status
                    .success()
                    .then_some(())
            },
            || format!("{:?}\n{}", etcd.ctl(&["endpoint", "health"]), etcd.log()),
        );
        etcd
    }

    /// Starts member `i` in namespace `ns` (again: with the data it had).
    fn member(&self, i: u8, ns: &str, peers: &str, token: &str) -> Child {
        let scheme = if self.tls { "https" } else { "http" };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("e{i}.log")))
            .unwrap();
        let client = format!("{scheme}://{LAN}.1{i}:2379");
        let peer = format!("http://{LAN}.1{i}:2380");
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg("etcd")
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("e{i}")))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", peers])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", token])
            // Tests only: no fsync, and the settings a real cluster wants.
            .args(["--unsafe-no-fsync", "--pre-vote"])
            .args(if self.tls {
                let f = |n: &str| self.dir.path().join(n).display().to_string();
                vec![
                    "--client-cert-auth".to_owned(),
                    format!("--trusted-ca-file={}", f("ca.crt")),
                    format!("--cert-file={}", f("server.crt")),
                    format!("--key-file={}", f("server.key")),
                ]
            } else {
                Vec::new()
            })
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd (Debian's etcd-server)")
    }

    /// Kills member `at` (0-based; SIGKILL) and starts it again on its data.
    fn restart(&mut self, at: usize, token: &str) {
        let _ = self.members[at].1.kill();
        let _ = self.members[at].1.wait();
        let peers: Vec<String> = (1..=3)
            .map(|i| format!("e{i}=http://{LAN}.1{i}:2380"))
            .collect();
        let ns = self.members[at].0.clone();
        let child = self.member(at as u8 + 1, &ns, &peers.join(","), token);
        self.members[at].1 = child;
    }

    /// etcdctl against every member, from the first member's namespace.
    fn ctl(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.members[0].0))
            .arg("--")
            .arg("etcdctl")
            .args(["--endpoints", &self.endpoints, "--command-timeout", "5s"])
            .args(if self.tls {
                ["cacert", "cert", "key"]
                    .iter()
                    .zip(["ca.crt", "admin.crt", "admin.key"])
                    .map(|(flag, f)| format!("--{flag}={}", self.dir.path().join(f).display()))
                    .collect()
            } else {
                Vec::new()
            })
            .args(args)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null())
            .output()
            .expect("etcdctl (Debian's etcd-client)")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Puts a vassal file.
    fn put(&self, name: &str, text: &str) {
        self.ok(&["put", &format!("/imperium/vassals/{name}"), text]);
    }

    fn delete(&self, name: &str) {
        self.ok(&["del", &format!("/imperium/vassals/{name}")]);
    }

    /// The store's revision now.
    fn revision(&self) -> i64 {
        let out = self.ok(&["get", "/", "--prefix", "--keys-only", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("etcdctl's json");
        v["header"]["revision"].as_i64().expect("revision")
    }

    fn log(&self) -> String {
        (1..=3)
            .map(|i| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("e{i}.log")));
                tail(&log.unwrap_or_default(), 5)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for (_, c) in &mut self.members {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An emperor as host `h<i>` of the cluster, in its own namespace on the LAN.
fn host(lan: &mut Lan, etcd: &Etcd, i: u8) -> Emperor {
    host_with(lan, etcd, i, &[])
}

/// [`host`] with more arguments of `emperor serve`.
fn host_with(lan: &mut Lan, etcd: &Etcd, i: u8, more: &[String]) -> Emperor {
    let ns = lan.node(20 + i);
    let mut e = Emperor::new();
    e.netns = Some(PathBuf::from("/run/netns").join(ns));
    e.extra = ["--network", "off", "--rescan", "1", "--etcd"]
        .into_iter()
        .map(str::to_owned)
        .chain([etcd.endpoints.clone(), "--host".into(), format!("h{i}")])
        .chain(more.iter().cloned())
        .collect();
    e.start();
    e
}

/// A LAN, three etcd members and two emperor hosts, h1 and h2 (dropped in
/// the reverse order: hosts first).
fn two_hosts() -> (Lan, Etcd, Emperor, Emperor) {
    let mut lan = Lan::new();
    let etcd = Etcd::start(&mut lan);
    let h1 = host(&mut lan, &etcd, 1);
    let h2 = host(&mut lan, &etcd, 2);
    (lan, etcd, h1, h2)
}

/// Group g1's file, on host h1.
const G1_ON_H1: &str = "kind = \"group\"\nhost = \"h1\"\n[limits]\nmemory = \"256M\"\n";

fn site(host: &str) -> String {
    format!("kind = \"site\"\nhost = \"{host}\"\n[limits]\nmemory = \"64M\"\n")
}

fn running(e: &Emperor, name: &str) -> i32 {
    e.wait_row(name, "running", |r| r["state"] == "running")["pid"]
        .as_i64()
        .expect("pid") as i32
}

fn wait_gone(e: &Emperor, name: &str) {
    wait_for_or(
        Duration::from_secs(20),
        &format!("{name} gone from the host"),
        || e.row(name).is_none().then_some(()),
        || e.log(),
    );
}

/// A call on a host's admin API: the status code and the body.
fn api(e: &Emperor, method: &str, name: &str, body: Option<&str>) -> (String, String) {
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
    ])
    .arg("--unix-socket")
    .arg(e.run_dir.join("api.sock"));
    if let Some(b) = body {
        c.args(["--data-binary", b]);
    }
    let out = c
        .arg(format!("http://localhost/v1/vassals/{name}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_owned(), body.to_owned())
}

fn uid(e: &Emperor, name: &str) -> u64 {
    e.row(name).expect("row")["uid"].as_u64().expect("uid")
}

/// A metric of the emperor's, by its full name.
fn metric(e: &Emperor, name: &str) -> Option<i64> {
    let out = e.cli(&["metrics"]);
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok())?
    })
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_each_file_runs_on_the_host_it_is_placed_on_and_follows_the_cluster() {
    let (_lan, etcd, h1, h2) = two_hosts();

    etcd.put("g1", G1_ON_H1);
    etcd.put(
        "s1",
        "kind = \"site\"\ngroup = \"g1\"\n[limits]\nmemory = \"64M\"\n",
    );
    etcd.put("a2", &site("h2"));
    running(&h1, "g1");
    running(&h1, "s1");
    // a2 was put last: once h2 runs it, h2 has read past g1 and s1.
    let a2 = running(&h2, "a2");
    for (e, name) in [(&h2, "g1"), (&h2, "s1"), (&h1, "a2")] {
        assert!(e.row(name).is_none(), "{name} runs where it is not placed");
    }
    // Each tenant's uid is the cluster's, and no two hosts gave the same.
    let uids: Vec<(&str, u64)> = [(&h1, "g1"), (&h1, "s1"), (&h2, "a2")]
        .into_iter()
        .map(|(e, n)| (n, uid(e, n)))
        .collect();
    for (n, u) in &uids {
        let claimed = etcd.ok(&[
            "get",
            "--print-value-only",
            &format!("/imperium/uids/by-name/{n}"),
        ]);
        assert_eq!(claimed.trim(), u.to_string(), "{n}");
        let owner = etcd.ok(&[
            "get",
            "--print-value-only",
            &format!("/imperium/uids/by-uid/{u}"),
        ]);
        assert_eq!(owner.trim(), *n);
    }
    let distinct: std::collections::BTreeSet<u64> = uids.iter().map(|(_, u)| *u).collect();
    assert_eq!(distinct.len(), 3, "{uids:?}");
    // Each host says it is alive.
    for h in ["h1", "h2"] {
        let alive = etcd.ok(&["get", &format!("/imperium/hosts/{h}/alive")]);
        assert!(alive.contains(&format!("\"host\":\"{h}\"")), "{h}: {alive}");
    }
    // The admin's API on any host writes the cluster's files: put on h2,
    // run by h1, which the file names.
    let (code, body) = api(&h2, "PUT", "api1", Some(&site("h1")));
    assert_eq!(code, "201", "{body}");
    running(&h1, "api1");
    assert!(!h2.vassals.join("api1.toml").exists());
    // A broken file is refused there and then, and etcd never holds it.
    let (code, body) = api(
        &h2,
        "PUT",
        "api2",
        Some("kind = \"site\"\n[limits]\nmemory = \"1\"\n"),
    );
    assert_eq!(code, "422", "{body}");
    assert!(body.contains("limits.memory"), "{body}");
    assert_eq!(etcd.ok(&["get", "/imperium/vassals/api2"]), "");
    // A login (or a domain) is one vassal's in the whole cluster: a file
    // claiming a2's login on h1 is refused by the API, and one put behind
    // its back is copied nowhere, while a2 runs on.
    let dup = "kind = \"site\"\nhost = \"h1\"\nuser = \"a2\"\n[limits]\nmemory = \"64M\"\n";
    let (code, body) = api(&h1, "PUT", "dup", Some(dup));
    assert_eq!(code, "422", "{body}");
    assert!(
        body.contains("login a2 is vassal a2's in the cluster"),
        "{body}"
    );
    etcd.put("dup", dup);
    wait_for(Duration::from_secs(10), "h1 to see the conflict", || {
        (metric(&h1, "imperium_emperor_cluster_conflicts") == Some(1)).then_some(())
    });
    // A file put after it runs on h1: h1 has read past "dup".
    etcd.put("later", &site("h1"));
    running(&h1, "later");
    assert!(h1.row("dup").is_none(), "copied in spite of the conflict");
    // The operator sees it, and why, from any host.
    let out = h1.cli(&["cluster"]);
    assert!(out.status.success(), "{out:?}");
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let file = |n: &str| {
        view["files"]
            .as_array()
            .and_then(|f| f.iter().find(|e| e["name"] == n).cloned())
            .unwrap_or_else(|| panic!("{n} in {view}"))
    };
    assert_eq!(file("dup")["state"], "refused");
    assert_eq!(
        file("dup")["reason"],
        "login a2 is vassal a2's in the cluster"
    );
    assert_eq!(file("a2")["owner"], "h2");
    assert_eq!(file("a2")["state"], "elsewhere");
    assert_eq!(file("later")["state"], "here");
    assert_eq!(view["alive"], serde_json::json!(["h1", "h2"]));
    etcd.delete("later");
    assert_eq!(running(&h2, "a2"), a2);
    etcd.delete("dup");

    // Deleted through h2's API: gone from h1.
    let (code, body) = api(&h2, "DELETE", "api1", None);
    assert_eq!(code, "200", "{body}");
    wait_gone(&h1, "api1");
    assert_eq!(api(&h1, "DELETE", "api1", None).0, "404");

    // The group goes to h2: it and its site stop on h1 and run on h2.
    etcd.put(
        "g1",
        "kind = \"group\"\nhost = \"h2\"\n[limits]\nmemory = \"256M\"\n",
    );
    // Never both hosts at once: h2 starts them once h1 has let go. (h2 is
    // read first: a site still running on h1 after h2 was seen running it
    // ran on both.)
    let has_init = |e: &Emperor, n: &str| e.row(n).is_some_and(|r| r["pid"].is_i64());
    wait_for_or(
        Duration::from_secs(30),
        "the group and its site running on h2",
        || {
            let on2 = ["g1", "s1"].map(|n| has_init(&h2, n));
            let on1 = ["g1", "s1"].map(|n| has_init(&h1, n));
            for i in 0..2 {
                assert!(!(on2[i] && on1[i]), "{} ran on both hosts", ["g1", "s1"][i]);
            }
            (on2 == [true, true]).then_some(())
        },
        || h2.log(),
    );
    running(&h2, "g1");
    running(&h2, "s1");
    wait_gone(&h1, "s1");
    wait_gone(&h1, "g1");
    // The tenants keep their uids on the new host.
    assert_eq!(uid(&h2, "g1"), uids[0].1);
    assert_eq!(uid(&h2, "s1"), uids[1].1);

    // Sites put at once on both hosts, which claim uids at the same time:
    // every uid different.
    let many: Vec<(String, &Emperor)> = (0..8)
        .map(|i| (format!("m{i}"), [&h1, &h2][i % 2]))
        .collect();
    for (i, (n, _)) in many.iter().enumerate() {
        etcd.put(n, &site(["h1", "h2"][i % 2]));
    }
    let mut seen: std::collections::BTreeSet<u64> = distinct.clone();
    for (n, e) in &many {
        running(e, n);
        assert!(
            seen.insert(uid(e, n)),
            "{n}'s uid {} given twice",
            uid(e, n)
        );
    }

    // A broken edit is refused on its host; the last good version runs on.
    etcd.put(
        "a2",
        "kind = \"site\"\nhost = \"h2\"\n[limits]\nmemory = \"1\"\n",
    );
    let row = h2.wait_row("a2", "the edit refused", |r| {
        r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("limits.memory"))
    });
    assert_eq!(row["state"], "running");
    assert_eq!(row["pid"].as_i64(), Some(i64::from(a2)));
    // Unreadable TOML: its place cannot be told, so it stays where it is.
    etcd.put("a2", "kind = [");
    h2.wait_row("a2", "the broken file refused", |r| {
        r["reason"].as_str().is_some_and(|s| s.contains("line 1"))
    });
    assert_eq!(running(&h2, "a2"), a2);

    // Removed from the cluster: stopped.
    etcd.delete("a2");
    wait_gone(&h2, "a2");
    assert_eq!(metric(&h2, "imperium_emperor_cluster_files"), Some(6));
    assert_eq!(metric(&h2, "imperium_emperor_cluster_lists_total"), Some(1));
    assert_eq!(metric(&h1, "imperium_emperor_cluster_connected"), Some(1));
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_a_host_cut_off_keeps_its_sites_and_catches_up_after_a_compaction() {
    let (lan, etcd, h1, h2) = two_hosts();
    etcd.put("a1", &site("h1"));
    etcd.put("b2", &site("h2"));
    let a1 = running(&h1, "a1");
    running(&h2, "b2");

    let ns1 = h1
        .netns
        .as_ref()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    lan.cut(ns1);
    // h1 notices it is cut off, and changes nothing.
    wait_for_or(
        Duration::from_secs(30),
        "h1 to notice it lost etcd",
        || (metric(&h1, "imperium_emperor_cluster_connected") == Some(0)).then_some(()),
        || h1.log(),
    );
    // Its admin's API says so, and writes nothing.
    let (code, body) = api(&h1, "PUT", "a5", Some(&site("h1")));
    assert_eq!(code, "422", "{body}");
    assert!(body.contains("unreachable"), "{body}");
    // a1 moves to h2, which waits: h1 may still run it.
    etcd.put("a1", &site("h2"));
    etcd.put("a3", &site("h1"));
    etcd.put("b4", &site("h2"));
    running(&h2, "b4");
    wait_for(Duration::from_secs(10), "h2 to wait for a1", || {
        (metric(&h2, "imperium_emperor_cluster_waiting") == Some(1)).then_some(())
    });
    assert!(h2.row("a1").is_none(), "started while h1 may run it");
    assert_eq!(running(&h1, "a1"), a1, "a cut-off host keeps its sites");
    assert!(h1.row("a3").is_none());
    assert_eq!(etcd.ok(&["get", "/imperium/vassals/a5"]), "");
    // What h1 last read is compacted away: its watch cannot resume.
    let rev = etcd.revision();
    etcd.ok(&["compaction", &rev.to_string()]);

    lan.heal(ns1);
    running(&h1, "a3");
    wait_gone(&h1, "a1");
    running(&h2, "a1");
    assert_eq!(
        metric(&h1, "imperium_emperor_cluster_lists_total"),
        Some(2),
        "h1 listed again after the compaction; log:\n{}\netcd:\n{}",
        h1.log(),
        etcd.log()
    );
    assert_eq!(metric(&h2, "imperium_emperor_cluster_lists_total"), Some(1));
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_a_joining_host_keeps_its_sites_and_uids_and_a_dead_host_loses_its_alive_key() {
    let mut lan = Lan::new();
    // Over TLS, each side showing a certificate of the cluster's CA.
    let etcd = Etcd::start_with(&mut lan, true);
    let ns = lan.node(21);
    let mut h1 = Emperor::new();
    h1.netns = Some(PathBuf::from("/run/netns").join(&ns));
    // A host with a site of its own, before it joins a cluster.
    h1.write("local", &site("h1"));
    h1.extra = vec!["--network".into(), "off".into()];
    h1.start();
    let local = running(&h1, "local");
    let local_uid = uid(&h1, "local");
    h1.kill(Signal::SIGTERM);
    let pem = |f: &str| etcd.dir.path().join(f).display().to_string();
    h1.extra = ["--network", "off", "--rescan", "1", "--etcd"]
        .into_iter()
        .map(str::to_owned)
        .chain([etcd.endpoints.clone(), "--host".into(), "h1".into()])
        .chain(["--etcd-ca".into(), pem("ca.crt")])
        .chain(["--etcd-cert".into(), pem("h1.crt")])
        .chain(["--etcd-key".into(), pem("h1.key")])
        .collect();
    h1.start();
    assert_eq!(running(&h1, "local"), local, "adopted");
    wait_for_or(
        Duration::from_secs(20),
        "the refusal to empty the host",
        || h1.log().contains("not removing them").then_some(()),
        || h1.log(),
    );
    assert_eq!(running(&h1, "local"), local);
    assert!(h1.vassals.join("local.toml").exists());
    // Its uid is the cluster's now: no host gives it again.
    let claimed = etcd.ok(&["get", "--print-value-only", "/imperium/uids/by-name/local"]);
    assert_eq!(claimed.trim(), local_uid.to_string());
    // Once the cluster holds a file, the host follows it.
    etcd.put("a1", &site("h1"));
    running(&h1, "a1");
    assert_ne!(uid(&h1, "a1"), local_uid);
    wait_gone(&h1, "local");

    // Killed, the host's lease runs out and its alive key goes.
    assert!(!etcd.ok(&["get", "/imperium/hosts/h1/alive"]).is_empty());
    h1.kill(Signal::SIGKILL);
    wait_for(Duration::from_secs(40), "h1's alive key to expire", || {
        etcd.ok(&["get", "/imperium/hosts/h1/alive"])
            .is_empty()
            .then_some(())
    });
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_the_scheduler_spreads_groups_without_a_host_and_another_host_takes_over_its_lead() {
    let mut lan = Lan::new();
    let etcd = Etcd::start(&mut lan);
    let mut hosts = [host(&mut lan, &etcd, 1), host(&mut lan, &etcd, 2)];
    let group = "kind = \"group\"\n[limits]\nmemory = \"256M\"\n";
    let site = |g: &str| format!("kind = \"site\"\ngroup = \"{g}\"\n[limits]\nmemory = \"64M\"\n");
    for g in ["g1", "g2"] {
        etcd.put(g, group);
        etcd.put(&format!("s{}", &g[1..]), &site(g));
    }
    // Equal hosts: one group each, its site with it.
    let on = |name: &str| -> usize {
        wait_for(
            Duration::from_secs(20),
            &format!("{name} running somewhere"),
            || {
                hosts
                    .iter()
                    .position(|e| e.row(name).is_some_and(|r| r["state"] == "running"))
            },
        )
    };
    let (g1, g2) = (on("g1"), on("g2"));
    assert_ne!(g1, g2, "both groups on one host");
    assert_eq!(on("s1"), g1);
    assert_eq!(on("s2"), g2);
    for (g, h) in [("g1", g1), ("g2", g2)] {
        let chosen = etcd.ok(&[
            "get",
            "--print-value-only",
            &format!("/imperium/placement/{g}"),
        ]);
        assert_eq!(chosen.trim(), format!("h{}", h + 1));
    }
    // The leader dies; once its lease has run out the other host leads, and
    // places a new group on the one host alive.
    // The leader: the candidate that has waited longest (etcd's election).
    let lead = etcd.ok(&[
        "get",
        "--prefix",
        "--sort-by=CREATE",
        "--order=ASCEND",
        "--limit=1",
        "--print-value-only",
        "/imperium/leader/scheduler",
    ]);
    let leader = match lead.trim() {
        "h1" => 0,
        "h2" => 1,
        other => panic!("leader {other:?}"),
    };
    hosts[leader].kill(Signal::SIGKILL);
    etcd.put("g3", group);
    let survivor = 1 - leader;
    let g3 = wait_for_or(
        Duration::from_secs(45),
        "g3 placed by the new leader",
        || hosts[survivor].row("g3"),
        || hosts[survivor].log(),
    );
    assert!(
        g3["state"] == "running" || g3["state"] == "starting",
        "{g3}"
    );
    let chosen = etcd.ok(&["get", "--print-value-only", "/imperium/placement/g3"]);
    assert_eq!(chosen.trim(), format!("h{}", survivor + 1));
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_a_resellers_dropped_site_runs_with_the_clusters_uid_and_its_claims_are_the_clusters() {
    let (_lan, etcd, h1, h2) = two_hosts();
    etcd.put("g1", G1_ON_H1);
    etcd.put(
        "a2",
        "kind = \"site\"\nhost = \"h2\"\ndomains = [\"a2.example\"]\n[limits]\nmemory = \"64M\"\n",
    );
    running(&h1, "g1");
    let a2 = running(&h2, "a2");
    // The reseller drops a site into its directory on h1, as itself.
    let reseller = uid(&h1, "g1") as u32;
    let drop = h1.home_root.join("g1/vassals");
    let put_as = |name: &str, text: &str| {
        let tmp = drop.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::os::unix::fs::chown(&tmp, Some(reseller), Some(reseller)).unwrap();
        std::fs::rename(&tmp, drop.join(format!("{name}.toml"))).unwrap();
    };
    put_as("r1", "kind = \"site\"\n[limits]\nmemory = \"64M\"\n");
    running(&h1, "r1");
    let get = |key: &str| {
        etcd.ok(&["get", "--print-value-only", key])
            .trim()
            .to_owned()
    };
    assert_eq!(get("/imperium/uids/by-name/r1"), uid(&h1, "r1").to_string());
    assert_eq!(get("/imperium/owners/r1"), "h1");
    assert!(get("/imperium/dropped/r1").contains("\"group\":\"g1\""));
    let view: serde_json::Value =
        serde_json::from_slice(&h2.cli(&["cluster"]).stdout).expect("json");
    let r1 = view["files"]
        .as_array()
        .and_then(|f| f.iter().find(|e| e["name"] == "r1").cloned())
        .expect("r1 in the view");
    assert_eq!(
        (&r1["state"], &r1["owner"]),
        (&serde_json::json!("dropped"), &serde_json::json!("h1"))
    );
    // Its login is the cluster's: the admin's API on h2 refuses another
    // file taking it.
    let (code, body) = api(
        &h2,
        "PUT",
        "x",
        Some("kind = \"site\"\nhost = \"h2\"\nuser = \"r1\"\n"),
    );
    assert_eq!(code, "422", "{body}");
    assert!(
        body.contains("login r1 is vassal r1's in the cluster"),
        "{body}"
    );
    // A dropped site claiming a2's domain on h2 gets no uid, and says why.
    put_as(
        "r2",
        "kind = \"site\"\ndomains = [\"a2.example\"]\n[limits]\nmemory = \"64M\"\n",
    );
    h1.wait_row("r2", "the refusal", |r| {
        r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("domain a2.example is vassal a2's in the cluster"))
    });
    assert!(h1.row("r2").unwrap()["pid"].is_null());
    // A reseller dropping a file under the name of another host's vassal
    // takes nothing: it gets no uid, says why, and a2 runs on.
    put_as("a2", "kind = \"site\"\n[limits]\nmemory = \"64M\"\n");
    h1.wait_row("a2", "the refusal", |r| {
        r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("vassal a2 is host h2's"))
    });
    assert!(h1.row("a2").unwrap()["pid"].is_null());
    assert_eq!(get("/imperium/owners/a2"), "h2");
    assert_eq!(running(&h2, "a2"), a2);
    // Removed by the reseller: stopped, and the cluster forgets it.
    std::fs::remove_file(drop.join("r1.toml")).unwrap();
    wait_gone(&h1, "r1");
    wait_for(Duration::from_secs(10), "r1's keys gone", || {
        (get("/imperium/owners/r1").is_empty() && get("/imperium/dropped/r1").is_empty())
            .then_some(())
    });
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_the_hosts_follow_the_cluster_while_its_leader_is_stopped_and_a_member_restarts() {
    let (lan, mut etcd, h1, h2) = two_hosts();
    let all = etcd.endpoints.clone();
    etcd.put("a1", &site("h1"));
    running(&h1, "a1");
    // The leader, by etcd's own account, is stopped (SIGSTOP): the other
    // two elect another and the hosts carry on through them.
    let status: serde_json::Value =
        serde_json::from_str(&etcd.ok(&["endpoint", "status", "-w", "json"])).expect("json");
    let leader = status
        .as_array()
        .and_then(|members| {
            members.iter().position(|m| {
                m["Status"]["leader"].as_u64().is_some()
                    && m["Status"]["leader"] == m["Status"]["header"]["member_id"]
            })
        })
        .expect("a leader");
    let pid = nix::unistd::Pid::from_raw(etcd.members[leader].1.id() as i32);
    nix::sys::signal::kill(pid, Signal::SIGSTOP).unwrap();
    let others: Vec<String> = etcd
        .endpoints
        .split(',')
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, e)| e.to_owned())
        .collect();
    etcd.endpoints = others.join(",");
    // Until the two have a new leader, a write times out (and is put again).
    for (name, on) in [("a2", "h2"), ("b1", "h1")] {
        let key = format!("/imperium/vassals/{name}");
        wait_for(
            Duration::from_secs(30),
            "a write with the leader stopped",
            || {
                etcd.ctl(&["put", &key, &site(on)])
                    .status
                    .success()
                    .then_some(())
            },
        );
    }
    let converged = |e: &Emperor, n: &str| {
        wait_for_or(
            Duration::from_secs(40),
            &format!("{n} running while the leader is stopped"),
            || e.row(n).filter(|r| r["state"] == "running"),
            || e.log(),
        )
    };
    converged(&h2, "a2");
    converged(&h1, "b1");
    nix::sys::signal::kill(pid, Signal::SIGCONT).unwrap();

    // Another member killed: the hosts follow a file put meanwhile; started
    // again on its data, the member catches up with what it missed.
    let victim = (leader + 1) % 3;
    let _ = etcd.members[victim].1.kill();
    let _ = etcd.members[victim].1.wait();
    let endpoints: Vec<&str> = all.split(',').collect();
    etcd.endpoints = endpoints
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, e)| *e)
        .collect::<Vec<_>>()
        .join(",");
    wait_for(
        Duration::from_secs(30),
        "a write with a member down",
        || {
            etcd.ctl(&["put", "/imperium/vassals/c1", &site("h2")])
                .status
                .success()
                .then_some(())
        },
    );
    converged(&h2, "c1");
    etcd.restart(victim, &lan.switch);
    etcd.endpoints = endpoints[victim].to_owned();
    wait_for_or(
        Duration::from_secs(30),
        "the restarted member to catch up",
        || {
            let got = etcd.ctl(&[
                "get",
                "--consistency=s",
                "--print-value-only",
                "/imperium/vassals/c1",
            ]);
            String::from_utf8_lossy(&got.stdout)
                .contains("host = \"h2\"")
                .then_some(())
        },
        || etcd.log(),
    );
    etcd.endpoints = all;
    assert!(etcd.ctl(&["endpoint", "health"]).status.success());
}

/// One request from inside `e`'s namespace: (status, body); `how` are
/// curl's arguments (the URL, `--resolve`, a CA...).
fn curl_from(e: &Emperor, how: &[&str]) -> (u16, String, String) {
    let out = Command::new("nsenter")
        .arg(format!(
            "--net={}",
            e.netns.as_ref().expect("a host").display()
        ))
        .args(["--", "curl", "-sS", "-m", "5", "-D", "/dev/stderr"])
        .args(["-w", "\n%{http_code}"])
        .args(how)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.parse().unwrap_or(0),
        body.to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Two hosts on a LAN with an etcd of three, each with its router linked
/// to the other's (one CA, a certificate per host naming it); homes are
/// copied between them by a local rsync (the hosts share this machine's
/// disk: on real hosts it goes over ssh, the default).
struct Routed {
    h1: Emperor,
    r1: RouterProc,
    h2: Emperor,
    r2: RouterProc,
    etcd: Etcd,
    _pki: tempfile::TempDir,
    _lan: Lan,
}

fn routed() -> Routed {
    let mut lan = Lan::new();
    let etcd = Etcd::start(&mut lan);
    let pki = tempfile::tempdir().unwrap();
    certificate(pki.path(), "ca", "", "");
    for h in ["h1", "h2"] {
        certificate(pki.path(), h, &format!("DNS:{h}"), "serverAuth,clientAuth");
    }
    let pem = |f: &str| pki.path().join(f).display().to_string();
    let peer = |i: u8| format!("{LAN}.2{i}:8444");
    let mut start = |i: u8| {
        let e = host_with(
            &mut lan,
            &etcd,
            i,
            &[
                "--router-peer".into(),
                peer(i),
                "--home-copy".into(),
                "rsync -aHAX --numeric-ids --delete {home}/ {dest}/".into(),
            ],
        );
        let router = RouterProc::start_with(
            &e,
            &[
                "--peer".into(),
                peer(i),
                "--peer-ca".into(),
                pem("ca.crt"),
                "--peer-cert".into(),
                pem(&format!("h{i}.crt")),
                "--peer-key".into(),
                pem(&format!("h{i}.key")),
                "--idle-timeout".into(),
                "2".into(),
                "--metrics-listen".into(),
                "127.0.0.1:9106".into(),
            ],
        );
        (e, router)
    };
    let (h1, r1) = start(1);
    let (h2, r2) = start(2);
    Routed {
        h1,
        r1,
        h2,
        r2,
        etcd,
        _pki: pki,
        _lan: lan,
    }
}

/// Site `name` of host `e` serves `domain`: its tenant's app on a unix
/// socket (answering with the headers the router set) and its own
/// certificate, from its home.
fn serve_app(e: &Emperor, name: &str, domain: &str) {
    let uid = uid(e, name) as u32;
    let home = e.home_root.join(name);
    let app = r#"
import http.server, os, socketserver
path = "/run/imperium/sockets/web.sock"
if os.path.exists(path):
    os.unlink(path)
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        h = self.headers
        with open("/home/%s/hits" % os.uname().nodename, "a") as f:
            f.write(h["X-Forwarded-For"] + "\n")
        body = ("hello from %s for %s to %s over %s" % (os.uname().nodename, h["Host"], h["X-Forwarded-For"], h["X-Forwarded-Proto"])).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def address_string(self):
        return "router"
socketserver.UnixStreamServer(path, Hello).serve_forever()
"#;
    std::fs::write(home.join("app.py"), app).unwrap();
    std::fs::create_dir_all(home.join("tls")).unwrap();
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={domain}")])
        .args(["-addext", &format!("subjectAltName=DNS:{domain}")])
        .arg("-keyout")
        .arg(home.join("tls/key.pem"))
        .arg("-out")
        .arg(home.join("tls/cert.pem"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    for f in ["app.py", "tls", "tls/key.pem", "tls/cert.pem"] {
        std::os::unix::fs::chown(home.join(f), Some(uid), Some(uid)).unwrap();
    }
    wait_for(
        Duration::from_secs(10),
        "the site's vassals directory",
        || home.join("vassals").is_dir().then_some(()),
    );
    write_atomic(
        &home.join("vassals/web.toml"),
        &format!("command = [\"python3\", \"/home/{name}/app.py\"]\n[http]\ndomains = [\"{domain}\"]\nsocket = \"web.sock\"\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n"),
    );
}

/// One plain HTTP request for `domain` through router `r`, from inside
/// `e`'s namespace.
fn plain(e: &Emperor, r: &RouterProc, domain: &str) -> (u16, String, String) {
    curl_from(
        e,
        &[
            "-H",
            &format!("Host: {domain}"),
            &format!("http://{}/", r.http),
        ],
    )
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_every_hosts_router_serves_a_domain_of_another_host_and_503_once_its_lease_expired() {
    // Dropped in the reverse order: routers and hosts, then etcd and the LAN.
    let Routed {
        _lan,
        _pki,
        etcd,
        h1,
        r1,
        mut h2,
        r2,
    } = routed();
    etcd.put(
        "shop",
        "kind = \"site\"\nhost = \"h2\"\ndomains = [\"shop.test\", \"*.shop.test\"]\n[limits]\nmemory = \"128M\"\n",
    );
    running(&h2, "shop");
    serve_app(&h2, "shop", "shop.test");
    let home = h2.home_root.join("shop");
    wait_for_or(
        Duration::from_secs(30),
        "the app on its own host's router",
        || (plain(&h2, &r2, "shop.test").0 == 200).then_some(()),
        || format!("{:?}\n{}", plain(&h2, &r2, "shop.test"), h2.log()),
    );
    // Through h1's router: passed to h2's, which knows who the client is.
    let (status, body, _) = wait_for_or(
        Duration::from_secs(20),
        "the app through the other host's router",
        || {
            let a = plain(&h1, &r1, "shop.test");
            (a.0 == 200).then_some(a)
        },
        || h1.log(),
    );
    assert_eq!(
        (status, body.as_str()),
        (200, "hello from shop for shop.test to 127.0.0.1 over http")
    );
    // Over HTTPS the client's TLS goes through to h2: the tenant's own
    // certificate (which never left h2) verifies.
    let port = r1.https.rsplit_once(':').unwrap().1;
    let cert = home.join("tls/cert.pem").display().to_string();
    let resolve = format!("shop.test:{port}:127.0.0.1");
    let url = format!("https://shop.test:{port}/");
    let tls = curl_from(&h1, &["--cacert", &cert, "--resolve", &resolve, &url]);
    assert_eq!(
        (tls.0, tls.1.as_str()),
        (200, "hello from shop for shop.test to 127.0.0.1 over https"),
        "{}",
        tls.2
    );
    // A client passed to h2 that holds its connection open once answered:
    // h2's router closes its side (after the answer to `Connection:
    // close`, or its idle timeout), and h1's lets the client go too (its
    // connections back to none), never holding it for the client.
    let connections = || {
        let (_, text, _) = curl_from(&h1, &["http://127.0.0.1:9106/metrics"]);
        text.lines()
            .find_map(|l| l.strip_prefix("imperium_router_connections "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let hold = format!(
        "import socket, time\ns = socket.create_connection(({:?}, {}))\n\
         s.sendall(b'GET / HTTP/1.1\\r\\nHost: shop.test\\r\\nConnection: close\\r\\n\\r\\n')\n\
         print(s.recv(65536)[:12].decode(), flush=True)\ntime.sleep(30)\n",
        "127.0.0.1",
        r1.http.rsplit_once(':').unwrap().1
    );
    let mut holder = Command::new("nsenter")
        .arg(format!("--net={}", h1.netns.as_ref().unwrap().display()))
        .args(["--", "python3", "-c", &hold])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    {
        use std::io::BufRead;
        let out = holder.stdout.as_mut().unwrap();
        std::io::BufReader::new(out).read_line(&mut said).unwrap();
    }
    assert_eq!(said.trim(), "HTTP/1.1 200");
    // (It sleeps 30 s at most: gone by itself if this fails.)
    wait_for_or(
        Duration::from_secs(10),
        "h1 letting go of a client h2 closed",
        || (connections() == Some(0)).then_some(()),
        || format!("{:?}", connections()),
    );
    let _ = holder.kill();
    let _ = holder.wait();
    let peers = std::fs::read_to_string(h1.run_dir.join("router/peers.json")).unwrap();
    assert!(peers.contains("\"shop.test\":\"h2\""), "{peers}");

    // The peer listener takes only routers of the cluster: a client
    // without a certificate of its CA gets no answer from it.
    let forged = curl_from(
        &h1,
        &[
            "-k",
            "-H",
            "Host: shop.test",
            &format!("https://{LAN}.22:8444/"),
        ],
    );
    assert!(!forged.1.contains("hello"), "{forged:?}");
    assert_eq!(forged.0, 0, "{forged:?}");

    // h2's emperor dies (its router and site run on); once its lease
    // expired, h1 answers 503 for its domains, never a route to it.
    h2.kill(Signal::SIGKILL);
    wait_for(Duration::from_secs(40), "h2's alive key to expire", || {
        etcd.ok(&["get", "/imperium/hosts/h2/alive"])
            .is_empty()
            .then_some(())
    });
    wait_for_or(
        Duration::from_secs(5),
        "503 on h1 once h2's lease expired",
        || (plain(&h1, &r1, "shop.test").0 == 503).then_some(()),
        || h1.log(),
    );
    for _ in 0..5 {
        let (status, _, head) = plain(&h1, &r1, "shop.test");
        assert_eq!(status, 503);
        assert!(
            head.to_ascii_lowercase().contains("retry-after: 30"),
            "{head}"
        );
    }
    let tls = curl_from(&h1, &["-k", "--resolve", &resolve, &url]);
    assert_eq!(tls.0, 503, "{tls:?}");
    // Back, h2 is reached again.
    h2.start();
    wait_for_or(
        Duration::from_secs(30),
        "h1 passing clients to h2 again",
        || (plain(&h1, &r1, "shop.test").0 == 200).then_some(()),
        || h1.log(),
    );
    drop((r1, r2));
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_a_site_moves_to_another_host_with_its_home_and_answers_before_and_after() {
    // Dropped in the reverse order: routers and hosts, then etcd and the LAN.
    let Routed {
        _lan,
        _pki,
        etcd,
        h1,
        r1,
        h2,
        r2,
    } = routed();
    etcd.put(
        "shop",
        "# the shop\nkind = \"site\"\nhost = \"h1\"\ndomains = [\"shop.test\"]\n[limits]\nmemory = \"128M\"\n",
    );
    running(&h1, "shop");
    let uid = uid(&h1, "shop");
    serve_app(&h1, "shop", "shop.test");
    // The tenant's data, with a link and a hard link.
    let home = h1.home_root.join("shop");
    std::fs::create_dir_all(home.join("data")).unwrap();
    std::fs::write(home.join("data/orders.db"), "order 1\n").unwrap();
    std::os::unix::fs::symlink("orders.db", home.join("data/latest")).unwrap();
    for f in ["data", "data/orders.db"] {
        std::os::unix::fs::chown(home.join(f), Some(uid as u32), Some(uid as u32)).unwrap();
    }
    for (e, r) in [(&h1, &r1), (&h2, &r2)] {
        wait_for_or(
            Duration::from_secs(30),
            "the site through each host's router",
            || (plain(e, r, "shop.test").0 == 200).then_some(()),
            || format!("{:?}\n{}", plain(e, r, "shop.test"), e.log()),
        );
    }
    // A move refused: no such host.
    let out = h2.cli(&["move", "shop", "h9"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("h9 is not alive"),
        "{out:?}"
    );

    // Through the admin's API of the host it leaves.
    let out = Command::new("curl")
        .args(["-sS", "-m", "10", "-w", "\n%{http_code}", "-X", "POST"])
        .args(["--data-binary", r#"{"host": "h2"}"#, "--unix-socket"])
        .arg(h1.run_dir.join("api.sock"))
        .arg("http://localhost/v1/vassals/shop/move")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.ends_with("\n202") && said.contains("\"copy\""),
        "{said}"
    );
    // Sampled all along: never running on both hosts; every answer
    // through either router a 200 or a 503 (never a 404 or 502).
    let mut answers = std::collections::BTreeMap::new();
    let moved = wait_for_or(
        Duration::from_secs(60),
        "the site running on h2 and answering there",
        || {
            let on1 = h1.row("shop").is_some_and(|r| r["state"] == "running");
            let on2 = h2.row("shop").is_some_and(|r| r["state"] == "running");
            assert!(!(on1 && on2), "running on both hosts");
            let a = plain(&h1, &r1, "shop.test");
            let b = plain(&h2, &r2, "shop.test");
            for (s, _, _) in [&a, &b] {
                *answers.entry(*s).or_insert(0) += 1;
            }
            assert!(
                [200, 503].contains(&a.0) && [200, 503].contains(&b.0),
                "{a:?} {b:?}\nh1's peers: {}\nh2's peers: {}\nh2: {:?}\n{}",
                std::fs::read_to_string(h1.run_dir.join("router/peers.json")).unwrap_or_default(),
                std::fs::read_to_string(h2.run_dir.join("router/peers.json")).unwrap_or_default(),
                h2.row("shop"),
                etcd.ok(&["get", "--prefix", "/imperium/"]),
            );
            (on2 && !on1
                && a.0 == 200
                && b.0 == 200
                && etcd.ok(&["get", "/imperium/moves/shop"]).is_empty())
            .then_some(a)
        },
        || format!("{}\n---\n{}", h1.log(), h2.log()),
    );
    assert_eq!(
        moved.1,
        "hello from shop for shop.test to 127.0.0.1 over http"
    );
    eprintln!("answers while moving: {answers:?}");
    assert!(answers.contains_key(&503), "a moving window: {answers:?}");
    // Its home came with it, owned by its tenant (the same uid).
    let there = h2.home_root.join("shop");
    assert_eq!(
        std::fs::read_to_string(there.join("data/orders.db")).unwrap(),
        "order 1\n"
    );
    assert_eq!(
        std::fs::read_link(there.join("data/latest")).unwrap(),
        PathBuf::from("orders.db")
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(there.join("data/orders.db"))
            .unwrap()
            .uid() as u64,
        uid
    );
    assert_eq!(self::uid(&h2, "shop"), uid);
    // Every request the site answered on h1 was written before the last
    // copy: its log on h2 (and more lines since) starts with all of h1's.
    let archive = wait_for(Duration::from_secs(10), "h1's archived home", || {
        std::fs::read_dir(h1.state_dir.join("archive"))
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("shop-"))
            .map(|e| e.path())
    });
    let old_hits = std::fs::read_to_string(archive.join("hits")).unwrap();
    let new_hits = std::fs::read_to_string(there.join("hits")).unwrap();
    assert!(
        !old_hits.is_empty() && new_hits.starts_with(&old_hits),
        "h1: {old_hits:?}\nh2: {new_hits:?}"
    );
    // The file says where it runs now; the old home is archived on h1.
    let text = etcd.ok(&["get", "--print-value-only", "/imperium/vassals/shop"]);
    assert!(
        text.contains("host = \"h2\"") && text.contains("# the shop"),
        "{text}"
    );
    wait_gone(&h1, "shop");
    wait_for(Duration::from_secs(10), "the old home archived", || {
        (!home.exists()).then_some(())
    });

    // Its file put back through the API with the old host is refused: the
    // site would start afresh there, without its home.
    let (code, body) = api(
        &h1,
        "PUT",
        "shop",
        Some("kind = \"site\"\nhost = \"h1\"\ndomains = [\"shop.test\"]\n"),
    );
    assert_eq!(code, "422", "{body}");
    assert!(body.contains("emperor move shop h1"), "{body}");

    // A move whose new host is gone (here: never was) fails; the site,
    // frozen meanwhile, is thawed and runs on where it is.
    let fails = |mv: &str, log: &Emperor| {
        etcd.ok(&["put", "/imperium/moves/shop", mv]);
        wait_for_or(
            Duration::from_secs(20),
            "the move failed",
            || {
                let v = etcd.ok(&["get", "--print-value-only", "/imperium/moves/shop"]);
                v.contains("\"failed\"").then_some(v)
            },
            || log.log(),
        )
    };
    let failed = fails(r#"{"from":"h2","to":"h9","phase":"freeze"}"#, &h2);
    assert!(failed.contains("host h9 is gone"), "{failed}");
    // A move that fails after the freeze (a file where h1 would make the
    // home): the site is thawed and serves again.
    let in_way = h1.home_root.join("shop");
    std::fs::write(&in_way, "in the way").unwrap();
    let failed = fails(r#"{"from":"h2","to":"h1","phase":"freeze"}"#, &h1);
    assert!(failed.contains("final: preparing its home"), "{failed}");
    std::fs::remove_file(&in_way).unwrap();
    wait_for_or(
        Duration::from_secs(20),
        "the site thawed and answering",
        || {
            (h2.row("shop").is_some_and(|r| r["state"] == "running")
                && plain(&h1, &r1, "shop.test").0 == 200)
                .then_some(())
        },
        || h2.log(),
    );
    let view: serde_json::Value =
        serde_json::from_slice(&h1.cli(&["cluster"]).stdout).expect("cluster view");
    let shop = view["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "shop")
        .unwrap()
        .clone();
    assert_eq!(shop["move"]["phase"], "failed", "{shop}");
    drop((r1, r2));
}
