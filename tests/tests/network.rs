//! Site networking, end to end: the emperor runs in a network namespace the
//! test makes (the "host"), beside a second one playing the internet; packets
//! go only between those two and the sites' own namespaces. The machine's
//! own network and firewall are never touched.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::*;
use nix::sys::signal::Signal;

/// The internet's address, and the host's on the link to it.
const INTERNET: &str = "198.51.100.2";
const HOST_UPLINK: &str = "198.51.100.1";

/// Two named network namespaces linked by a veth pair, and the servers in
/// them; all removed on drop, even when the test fails.
struct Net {
    host: String,
    internet: String,
    servers: Vec<Child>,
}

impl Net {
    fn new() -> Net {
        // Owned (and so removed on drop) before anything is made.
        let net = Net {
            host: unique("imp-host"),
            internet: unique("imp-inet"),
            servers: Vec::new(),
        };
        ip(&["netns", "add", &net.host]);
        ip(&["netns", "add", &net.internet]);
        let (h, i) = (net.host.as_str(), net.internet.as_str());
        ip(&[
            "-n", h, "link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns", i,
        ]);
        for (ns, dev, addr) in [(h, "uplink", HOST_UPLINK), (i, "eth0", INTERNET)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["-n", h, "route", "add", "default", "via", INTERNET]);
        net
    }

    fn path(&self, ns: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(ns)
    }

    /// Runs `script` with python3 inside namespace `ns`, in the background.
    fn serve(&mut self, ns: &str, script: &str) {
        self.spawn(ns, &["/usr/bin/python3", "-c", script]);
    }

    /// Runs a program inside namespace `ns`, in the background.
    fn spawn(&mut self, ns: &str, args: &[&str]) {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.path(ns).display()))
            .arg("--")
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("start a server");
        self.servers.push(child);
    }

    /// The internet's name server (`shop.example` is the internet's
    /// address) and the host's resolver for the sites, run as the shipped
    /// configuration says, forwarding to the internet's.
    fn resolvers(&mut self) {
        let (i, h) = (self.internet.clone(), self.host.clone());
        let common = [
            "/usr/sbin/dnsmasq",
            "--keep-in-foreground",
            "--pid-file=",
            "--user=root",
        ];
        let authority = format!("--address=/shop.example/{INTERNET}");
        let listen = format!("--listen-address={INTERNET}");
        self.spawn(
            &i,
            &[
                &common[..],
                &[
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    &listen,
                    &authority,
                ],
            ]
            .concat(),
        );
        let conf = format!(
            "--conf-file={}/../configs/dnsmasq-imperium.conf",
            env!("CARGO_MANIFEST_DIR")
        );
        let upstream = format!("--server={INTERNET}");
        self.spawn(
            &h,
            &[&common[..], &[&conf, "--no-resolv", &upstream]].concat(),
        );
    }

    /// Checks whether `port` (a site's host end, `imp<offset>`) is a port
    /// of `bridge`, as `ip -o link show master` lists them.
    fn assert_port(&self, bridge: &str, port: &str, on: bool) {
        let out = self.on_host(&["ip", "-o", "link", "show", "master", bridge]);
        let ports = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            ports.contains(&format!("{port}@")),
            on,
            "{port} on {bridge}: {ports}"
        );
    }

    /// Runs a command in the host namespace.
    fn on_host(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path(&self.host).display()))
            .arg("--")
            .args(args)
            .output()
            .expect("nsenter")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.host, &self.internet] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// TCP servers on `ports`: each answers a connection with one line naming
/// the peer's address (`<tag> <peer>`), HTTP-shaped on port 80.
fn servers(ports: &[(u16, &str)]) -> String {
    let list: Vec<String> = ports.iter().map(|(p, t)| format!("({p}, '{t}')")).collect();
    format!(
        r#"
import socket, threading
def run(port, tag):
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('::', port)); s.listen(64)
    while True:
        c, a = s.accept()
        peer = a[0].removeprefix('::ffff:')
        body = f'{{tag}} {{peer}}\n'.encode()
        if port == 80:
            c.recv(4096)
            c.sendall(b'HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n' % len(body) + body)
        else:
            c.sendall(body)
        c.close()
for p, t in [{}]:
    threading.Thread(target=run, args=(p, t)).start()
"#,
        list.join(", ")
    )
}

/// A client inside a site: connects to host:port and prints the first line,
/// or `refused`/`timeout`.
const CLIENT: &str = r#"import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    if sys.argv[2] == '80':
        s.sendall(b'GET / HTTP/1.0\r\n\r\n')
    data = b''
    while True:
        b = s.recv(4096)
        if not b: break
        data += b
    print(data.decode().splitlines()[-1])
except ConnectionRefusedError:
    print('refused')
except ConnectionResetError:
    print('refused')
except OSError:
    print('timeout')
"#;

/// `getent hosts NAME` on the host through glibc with the NSS module in the
/// `hosts` chain (a private mount namespace binds an nsswitch.conf naming it;
/// the machine's own file is never touched).
fn getent_hosts(e: &Emperor, name: &str) -> String {
    let dir = e.dir.path().join("nss");
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    let link = dir.join("lib/libnss_imperium.so.2");
    if !link.exists() {
        std::os::unix::fs::symlink(bin_dir().join("libnss_imperium.so"), &link).unwrap();
    }
    std::fs::write(dir.join("nsswitch.conf"), "hosts: files imperium\n").unwrap();
    let script = format!(
        "mount --bind {} /etc/nsswitch.conf && exec getent hosts \"$0\"",
        dir.join("nsswitch.conf").display()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script, name])
        .env("LD_LIBRARY_PATH", dir.join("lib"))
        .env("IMPERIUM_STATE_DIR", &e.state_dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// How long a client waits before it calls a connection dropped: `secs`,
/// scaled like every deadline but never past 6 s (a connection through the
/// host's NAT is answered in milliseconds even on an emulated CPU; only a
/// drop waits this out).
fn drop_wait(secs: u64) -> f64 {
    patience(Duration::from_secs(secs))
        .min(Duration::from_secs(6))
        .as_secs_f64()
}

struct Site {
    name: &'static str,
    cgroup: String,
}

impl Site {
    fn run(&self, e: &Emperor, script: &str) -> String {
        let init = e.running_pid(self.name);
        let uid = e.row(self.name).expect("row")["uid"].as_u64().expect("uid") as u32;
        let out = e.exec_in(init, uid, &self.cgroup, script);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
            + &String::from_utf8_lossy(&out.stderr)
    }

    fn connect(&self, e: &Emperor, host: &str, port: u16) -> String {
        // A dropped packet waits out the timeout; an answer comes at once
        // (even under emulation: the wait scales, but not past 6 s).
        let wait = drop_wait(2);
        self.run(
            e,
            &format!("python3 -c \"$(cat <<'EOF'\n{CLIENT}\nEOF\n)\" {host} {port} {wait}"),
        )
    }

    fn address(&self, e: &Emperor) -> String {
        e.row(self.name).expect("row")["address"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_sites_reach_the_internet_and_the_allowed_host_ports_and_not_each_other() {
    let mut net = Net::new();
    net.serve(
        &net.internet.clone(),
        &servers(&[(80, "web"), (25, "smtp")]),
    );
    net.resolvers();
    net.serve(
        &net.host.clone(),
        &servers(&[(3306, "db"), (3307, "other")]),
    );
    let mut e = Emperor::new();
    e.netns = Some(net.path(&net.host));
    e.extra = vec!["--host-ports".into(), "3306".into()];
    e.write("site1", "kind = \"site\"\n");
    e.write("mailer", "kind = \"site\"\n[network]\nsmtp = true\n");
    e.write("g1", "kind = \"group\"\n[limits]\nmemory = \"512M\"\n");
    e.write(
        "resold",
        "kind = \"site\"\ngroup = \"g1\"\n[limits]\nmemory = \"128M\"\n[network]\nsmtp = true\n",
    );
    e.start();
    let site = |name: &'static str, cg: &str| Site {
        name,
        cgroup: e.cgroup(cg),
    };
    let site1 = site("site1", "_admin/site1");
    let mailer = site("mailer", "_admin/mailer");
    let resold = site("resold", "g1/resold");

    // Readable, stable addresses from the plan (vassals start in name order);
    // the gateway is the host.
    assert_eq!(site1.address(&e), "10.199.0.3");
    assert_eq!(mailer.address(&e), "10.199.0.2");
    assert_eq!(e.row("g1").unwrap()["address"], "10.199.1.1");
    assert_eq!(resold.address(&e), "10.199.1.2");
    // On the host, `<name>.imperium` is the vassal's address (the NSS module).
    let v6 = getent_hosts(&e, "site1.imperium");
    assert_eq!(v6, "fd69:6d70:6572::3 site1.imperium");
    let shown = site1.run(&e, "ip -o addr show dev eth0; ip route");
    assert!(shown.contains("10.199.0.3/16"), "{shown}");
    assert!(shown.contains("fd69:6d70:6572::3/64"), "{shown}");
    assert!(shown.contains("default via 10.199.0.1"), "{shown}");
    // A host made new puts one block on each bridge: the group's block 1 on
    // `imperium1`, the admin's block 0 on `imperium0`.
    net.assert_port("imperium1", "imp102", true);
    net.assert_port("imperium0", "imp3", true);
    net.assert_port("imperium0", "imp102", false);

    // Out to the internet through NAT: the peer sees the host's address.
    let web = wait_for(Duration::from_secs(10), "the internet", || {
        let got = site1.connect(&e, INTERNET, 80);
        got.starts_with("web").then_some(got)
    });
    assert_eq!(web, format!("web {HOST_UPLINK}"));

    // Names: the host's resolver answers, the site's own name is its address.
    let names = wait_for(Duration::from_secs(10), "a name", || {
        let got = site1.run(&e, "getent hosts shop.example");
        got.contains("shop.example").then_some(got)
    });
    assert!(names.starts_with(INTERNET), "{names}");
    let own = site1.run(&e, "getent ahostsv4 site1");
    assert!(own.starts_with("10.199.0.3 "), "{own}");
    assert_eq!(
        site1.connect(&e, "shop.example", 80),
        format!("web {HOST_UPLINK}")
    );

    // The host: the admin's port only.
    assert_eq!(site1.connect(&e, "10.199.0.1", 3306), "db 10.199.0.3");
    assert_eq!(site1.connect(&e, "10.199.0.1", 3307), "timeout");

    // No site reaches another (a server listens in `mailer`; the host reaches it).
    mailer.run(
        &e,
        &format!(
            "setsid python3 -c \"$(cat <<'EOF'\n{}\nEOF\n)\" >/dev/null 2>&1 < /dev/null &",
            servers(&[(8000, "mailer")])
        ),
    );
    let from_host = wait_for(Duration::from_secs(10), "mailer's server", || {
        let out = net.on_host(&["/usr/bin/python3", "-c", CLIENT, "10.199.0.2", "8000", "2"]);
        let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        got.starts_with("mailer").then_some(got)
    });
    assert_eq!(from_host, "mailer 10.199.0.1");
    assert_eq!(site1.connect(&e, "10.199.0.2", 8000), "timeout");
    assert_eq!(resold.connect(&e, "10.199.0.2", 8000), "timeout");

    // Mail: only where the site's file allows it, and for a reseller's site
    // only if the group's (the admin's) file does too.
    assert_eq!(site1.connect(&e, INTERNET, 25), "refused");
    assert_eq!(resold.connect(&e, INTERNET, 25), "refused");
    assert_eq!(
        mailer.connect(&e, INTERNET, 25),
        format!("smtp {HOST_UPLINK}")
    );
    e.write(
        "g1",
        "kind = \"group\"\n[limits]\nmemory = \"512M\"\n[network]\nsmtp = true\n",
    );
    wait_for(
        Duration::from_secs(10),
        "mail allowed for the group",
        || {
            resold
                .connect(&e, INTERNET, 25)
                .starts_with("smtp")
                .then_some(())
        },
    );
    // And taken away again by the next edit of the group's file.
    e.write("g1", "kind = \"group\"\n[limits]\nmemory = \"512M\"\n");
    wait_for(
        Duration::from_secs(10),
        "mail refused for the group",
        || (resold.connect(&e, INTERNET, 25) == "refused").then_some(()),
    );

    // An emperor killed and started again: same addresses, still connected.
    let init = e.running_pid("site1");
    e.kill(Signal::SIGKILL);
    e.start();
    assert_eq!(e.running_pid("site1"), init, "adopted");
    assert_eq!(site1.address(&e), "10.199.0.3");
    assert_eq!(
        site1.connect(&e, INTERNET, 80),
        format!("web {HOST_UPLINK}")
    );
    assert_eq!(site1.connect(&e, INTERNET, 25), "refused");
    assert_eq!(
        mailer.connect(&e, INTERNET, 25),
        format!("smtp {HOST_UPLINK}")
    );

    // A removed site takes its interface with it.
    let link = |name: &str| net.on_host(&["ip", "link", "show", name]).status.success();
    assert!(link("imp3"), "site1's host end");
    e.remove("site1");
    wait_for(Duration::from_secs(15), "site1's link to go", || {
        (!link("imp3")).then_some(())
    });
    assert!(link("imp2"), "mailer's stays");
    // And its host name; the others' stay.
    wait_for(Duration::from_secs(10), "site1.imperium to go", || {
        getent_hosts(&e, "site1.imperium").is_empty().then_some(())
    });
    assert!(
        getent_hosts(&e, "mailer.imperium").ends_with(" mailer.imperium"),
        "mailer's name stays"
    );
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_sites_past_a_bridges_ports_are_on_the_next_bridge_as_connected_and_isolated() {
    let mut net = Net::new();
    net.serve(&net.internet.clone(), &servers(&[(80, "web")]));
    net.resolvers();
    net.serve(&net.host.clone(), &servers(&[(3306, "db")]));
    let mut e = Emperor::new();
    e.netns = Some(net.path(&net.host));
    e.extra = vec!["--host-ports".into(), "3306".into()];
    // A host with more vassals than one bridge takes (1,023 ports): `far`
    // was given an address of block 5 (the plan's table, as the emperor
    // keeps it), so its port is on the second bridge.
    std::fs::create_dir_all(&e.state_dir).unwrap();
    std::fs::write(
        e.state_dir.join("addresses.json"),
        r#"{"schemaVersion":1,"blocks":{"0":"","5":""},"vassals":{"far":1287}}"#,
    )
    .unwrap();
    e.write("near", "kind = \"site\"\n");
    e.write("far", "kind = \"site\"\n");
    e.start();
    let site = |name: &'static str| Site {
        name,
        cgroup: e.cgroup(&format!("_admin/{name}")),
    };
    let (near, far) = (site("near"), site("far"));
    assert_eq!(near.address(&e), "10.199.0.2");
    assert_eq!(far.address(&e), "10.199.5.7");
    net.assert_port("imperium1", "imp507", true);
    net.assert_port("imperium0", "imp507", false);
    net.assert_port("imperium0", "imp2", true);
    let shown = far.run(&e, "ip -o addr show dev eth0; ip route");
    assert!(shown.contains("10.199.5.7/16"), "{shown}");
    assert!(shown.contains("default via 10.199.0.1"), "{shown}");

    // As connected as a site of the first bridge: the internet through NAT,
    // names, the admin's host port over IPv4 and IPv6.
    let web = wait_for(Duration::from_secs(10), "the internet from far", || {
        let got = far.connect(&e, INTERNET, 80);
        got.starts_with("web").then_some(got)
    });
    assert_eq!(web, format!("web {HOST_UPLINK}"));
    let names = wait_for(Duration::from_secs(10), "a name from far", || {
        let got = far.run(&e, "getent hosts shop.example");
        got.contains("shop.example").then_some(got)
    });
    assert!(names.starts_with(INTERNET), "{names}");
    assert_eq!(far.connect(&e, "10.199.0.1", 3306), "db 10.199.5.7");
    assert_eq!(
        far.connect(&e, "fd69:6d70:6572::1", 3306),
        "db fd69:6d70:6572::5:7"
    );

    // As isolated: the host reaches each site's server, neither site the other's.
    let listen = servers(&[(8000, "site")]);
    for s in [&near, &far] {
        s.run(
            &e,
            &format!("setsid python3 -c \"$(cat <<'EOF'\n{listen}\nEOF\n)\" >/dev/null 2>&1 < /dev/null &"),
        );
    }
    for addr in ["10.199.0.2", "10.199.5.7"] {
        let got = wait_for(Duration::from_secs(10), "a site's server", || {
            let out = net.on_host(&["/usr/bin/python3", "-c", CLIENT, addr, "8000", "2"]);
            let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            got.starts_with("site").then_some(got)
        });
        assert_eq!(got, "site 10.199.0.1", "{addr}");
    }
    assert_eq!(near.connect(&e, "10.199.5.7", 8000), "timeout");
    assert_eq!(far.connect(&e, "10.199.0.2", 8000), "timeout");
    assert_eq!(far.connect(&e, "fd69:6d70:6572::2", 8000), "timeout");
}

/// Opens argv[3] connections to argv[1]:argv[2] and holds them; prints how many opened.
const HOLD: &str = r#"import socket, sys
held = []
for _ in range(int(sys.argv[3])):
    try:
        held.append(socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4])))
    except OSError:
        pass
print(len(held))
"#;

#[test]
#[ignore = "root: run the README's test command"]
fn root_a_site_cannot_fill_the_hosts_connection_table() {
    let mut net = Net::new();
    // A server that holds every connection open.
    net.serve(
        &net.internet.clone(),
        r#"
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 9000)); s.listen(256)
held = []
while True:
    held.append(s.accept()[0])
"#,
    );
    let mut e = Emperor::new();
    e.netns = Some(net.path(&net.host));
    e.extra = vec!["--site-connections".into(), "8".into()];
    e.write("greedy", "kind = \"site\"\n");
    e.write("neighbour", "kind = \"site\"\n");
    e.start();
    let greedy = Site {
        name: "greedy",
        cgroup: e.cgroup("_admin/greedy"),
    };
    let neighbour = Site {
        name: "neighbour",
        cgroup: e.cgroup("_admin/neighbour"),
    };
    let wait = drop_wait(1);
    // 12 connections held open at once: the site's cap lets 8 through.
    let opened = greedy.run(
        &e,
        &format!("python3 -c \"$(cat <<'EOF'\n{HOLD}\nEOF\n)\" {INTERNET} 9000 12 {wait}"),
    );
    assert_eq!(opened, "8", "connections greedy got");
    // Its cap is its own: the neighbour connects.
    let got = wait_for(
        Duration::from_secs(10),
        "the neighbour's connection",
        || {
            let n = neighbour.run(
            &e,
            &format!(
                "python3 -c \"import socket; socket.create_connection(('{INTERNET}', 9000), timeout=2); print('ok')\""
            ),
        );
            (n == "ok").then_some(n)
        },
    );
    assert_eq!(got, "ok");
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_the_router_reaches_a_sites_tcp_backend_on_its_own_address() {
    let net = Net::new();
    let mut e = Emperor::new();
    e.netns = Some(net.path(&net.host));
    e.write("tcpsite", "kind = \"site\"\ndomains = [\"tcp.test\"]\n");
    e.start();
    let init = e.running_pid("tcpsite");
    // The router runs on the host, beside the bridge.
    let router = RouterProc::start(&e);
    let http = router.http.clone();
    // The tenant's app listens on port 8080 of whatever address; `tcp:8080`.
    let home = e.home_root.join("tcpsite");
    std::fs::create_dir_all(home.join("www")).unwrap();
    std::fs::write(home.join("www/index.html"), "served over tcp\n").unwrap();
    wait_for(Duration::from_secs(10), "the vassals directory", || {
        home.join("vassals").is_dir().then_some(())
    });
    write_atomic(
        &home.join("vassals/web.toml"),
        "command = [\"python3\", \"-m\", \"http.server\", \"8080\", \"--directory\", \"/home/tcpsite/www\"]\n\
         [http]\ndomains = [\"tcp.test\"]\nsocket = \"tcp:8080\"\n",
    );
    let get = || {
        let out = net.on_host(&[
            "curl",
            "-s",
            "-H",
            "Host: tcp.test",
            &format!("http://{http}/"),
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let body = wait_for(
        Duration::from_secs(20),
        "the app through the router",
        || {
            let b = get();
            b.contains("served over tcp").then_some(b)
        },
    );
    assert_eq!(body, "served over tcp\n");
    // The vassal saw it accept on the site's own address before subscribing.
    let out = e.exec_in(
        init,
        e.row("tcpsite").unwrap()["uid"].as_u64().unwrap() as u32,
        &e.cgroup("_admin/tcpsite"),
        "HOME=/home/tcpsite /run/imperium/bin/vassal status --json",
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["processes"][0]["subscriptions"][0]["ok"], true,
        "{status}"
    );
    drop(router);
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_a_site_narrows_its_own_egress() {
    let mut net = Net::new();
    net.serve(
        &net.internet.clone(),
        &servers(&[(80, "web"), (8080, "alt")]),
    );
    let mut e = Emperor::new();
    e.netns = Some(net.path(&net.host));
    e.write(
        "narrow",
        &format!("kind = \"site\"\n[network]\negress = [\"{INTERNET}/32:80\"]\n"),
    );
    e.write("free", "kind = \"site\"\n");
    e.start();
    let narrow = Site {
        name: "narrow",
        cgroup: e.cgroup("_admin/narrow"),
    };
    let free = Site {
        name: "free",
        cgroup: e.cgroup("_admin/free"),
    };
    let web = format!("web {HOST_UPLINK}");
    let alt = format!("alt {HOST_UPLINK}");
    assert_eq!(narrow.connect(&e, INTERNET, 80), web);
    assert_eq!(narrow.connect(&e, INTERNET, 8080), "refused");
    assert_eq!(
        free.connect(&e, INTERNET, 8080),
        alt,
        "a list is the site's own"
    );

    // Kept across an emperor restart; an edit applies in place. Killed, the
    // emperor left both addresses in its journal only: read back, they are
    // the sites' own, and a site new at the restart (first by name) gets
    // another.
    let before = [narrow.address(&e), free.address(&e)];
    assert!(e.state_dir.join("addresses.log").exists());
    e.kill(Signal::SIGKILL);
    e.write("aaa", "kind = \"site\"\n");
    e.start();
    e.running_pid("narrow");
    e.running_pid("aaa");
    assert_eq!([narrow.address(&e), free.address(&e)], before);
    let aaa = Site {
        name: "aaa",
        cgroup: e.cgroup("_admin/aaa"),
    };
    assert!(!before.contains(&aaa.address(&e)), "{before:?}");
    // The journal was folded in at the start; it holds the new one alone.
    let log = std::fs::read_to_string(e.state_dir.join("addresses.log")).unwrap();
    assert!(log.lines().count() == 1 && log.ends_with(" aaa\n"), "{log}");
    assert_eq!(narrow.connect(&e, INTERNET, 8080), "refused");
    e.write(
        "narrow",
        &format!("kind = \"site\"\n[network]\negress = [\"{INTERNET}:8080\"]\n"),
    );
    wait_for(Duration::from_secs(10), "the new list", || {
        (narrow.connect(&e, INTERNET, 8080) == alt).then_some(())
    });
    assert_eq!(narrow.connect(&e, INTERNET, 80), "refused");
    e.write("narrow", "kind = \"site\"\n");
    wait_for(Duration::from_secs(10), "the list gone", || {
        (narrow.connect(&e, INTERNET, 80) == web).then_some(())
    });
    let chains = || {
        let out = net.on_host(&["nft", "list", "chains", "inet"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(!chains().contains("egress-"), "the site's chain is gone");
    // A removed site takes its chain with it (and no rescan is needed).
    e.write(
        "narrow",
        &format!("kind = \"site\"\n[network]\negress = [\"{INTERNET}:8080\"]\n"),
    );
    wait_for(Duration::from_secs(10), "the list back", || {
        chains().contains("egress-").then_some(())
    });
    e.remove("narrow");
    wait_for(
        Duration::from_secs(4),
        "the removed site's chain to go",
        || (!chains().contains("egress-")).then_some(()),
    );
    // A bad entry: the file is refused with the reason, the site keeps running.
    e.write(
        "free",
        "kind = \"site\"\n[network]\negress = [\"api.example:443\"]\n",
    );
    let row = e.wait_row("free", "the bad edit's reason", |r| {
        r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("network.egress[0]"))
    });
    assert_eq!(row["state"], "running", "{row}");
}
