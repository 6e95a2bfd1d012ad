//! Helpers for the end-to-end tests: a real emperor in temporary directories,
//! its CLI, and the kernel's own view of what it started.
//!
//! Every privileged test calls [`require_root`], which panics (never skips)
//! when not root. [`Emperor`] removes everything it created when dropped, even
//! after a failed assertion: the vassals, their cgroups and the directories.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod sshd;

/// Panics unless running as root: a privileged test must never pass without running.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: run the README's test command"
    );
}

/// The directory holding the built binaries (`IMPERIUM_BIN_DIR`, or the target
/// directory this test binary was built in).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("IMPERIUM_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> → target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// A binary of the workspace.
/// The vassal binary the emperors of the tests run as PID 1: the statically
/// linked one `scripts/build-pid1` makes (what is installed) when
/// `IMPERIUM_VASSAL_BIN` names it, else the one cargo built.
pub fn vassal_bin() -> PathBuf {
    match std::env::var_os("IMPERIUM_VASSAL_BIN") {
        Some(p) => PathBuf::from(p),
        None => bin("vassal"),
    }
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} not built: run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// The functions a shared object exports (`nm -D --defined-only`, text symbols).
pub fn exported_functions(lib: &Path) -> Vec<String> {
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(lib)
        .output()
        .expect("nm (binutils)");
    assert!(out.status.success(), "nm {}: {out:?}", lib.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(" T ").map(|(_, name)| name.to_owned()))
        .collect()
}

/// Runs `ip ARGS` (iproute2), which must succeed.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// A random suffix for names that must not collide across parallel tests.
pub fn unique(prefix: &str) -> String {
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("urandom");
    format!("{prefix}-{:08x}", u32::from_ne_bytes(b))
}

/// How long a test may wait for something that takes `d` on this machine:
/// `d` times `IMPERIUM_TEST_SLOWDOWN` (a VM under software emulation runs
/// about 20 times slower; `scripts/test-vm` sets it). Only deadlines scale,
/// never what a test asserts about speed.
pub fn patience(d: Duration) -> Duration {
    let factor = std::env::var("IMPERIUM_TEST_SLOWDOWN")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|f| *f >= 1)
        .unwrap_or(1);
    d * factor
}

/// Polls `f` until it returns `Some`, or panics with `what` after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_for_or(limit, what, f, String::new)
}

/// Like [`wait_for`], and a timeout's message ends with what `seen` says then.
pub fn wait_for_or<T>(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    seen: impl FnOnce() -> String,
) -> T {
    let limit = patience(limit);
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() >= limit {
            panic!("timed out after {limit:?} waiting for {what}; {}", seen());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The v1 hierarchies or the v2 root this host mounts, for checks from outside.
pub fn cgroup_file(controller: &str, cgroup: &str, file: &str) -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if unified {
        Path::new("/sys/fs/cgroup").join(cgroup).join(file)
    } else {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(cgroup)
            .join(file)
    }
}

/// Reads a cgroup file of the site, trimmed.
pub fn read_cgroup(controller: &str, cgroup: &str, file: &str) -> String {
    let p = cgroup_file(controller, cgroup, file);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_owned()
}

/// A running emperor on temporary directories.
pub struct Emperor {
    /// Holds every directory.
    pub dir: tempfile::TempDir,
    /// The admin vassal directory.
    pub vassals: PathBuf,
    /// Homes.
    pub home_root: PathBuf,
    /// State.
    pub state_dir: PathBuf,
    /// Runtime.
    pub run_dir: PathBuf,
    /// The cgroup subtree.
    pub cgroup_root: String,
    /// Extra `serve` flags.
    pub extra: Vec<String>,
    /// The network namespace the emperor runs in, with the sites' network
    /// on (`None`: in the test's own namespace, with `--network off`, so
    /// that the host's network is never touched).
    pub netns: Option<PathBuf>,
    child: Option<Child>,
}

impl Emperor {
    /// Prepares directories; nothing runs yet.
    pub fn new() -> Emperor {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("imperium-test")
            .tempdir()
            .expect("tempdir");
        let p = dir.path();
        let e = Emperor {
            vassals: p.join("vassals"),
            home_root: p.join("home"),
            state_dir: p.join("state"),
            run_dir: p.join("run"),
            cgroup_root: unique("imperium-test"),
            extra: Vec::new(),
            netns: None,
            child: None,
            dir,
        };
        std::fs::create_dir_all(&e.vassals).expect("vassals dir");
        e
    }

    /// Writes an admin vassal file.
    pub fn write(&self, name: &str, text: &str) {
        write_atomic(&self.vassals.join(format!("{name}.toml")), text);
    }

    /// Removes an admin vassal file.
    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.vassals.join(format!("{name}.toml")))
            .expect("remove vassal file");
    }

    /// Starts `emperor serve` and waits for its control socket.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("emperor.log"))
            .expect("log file");
        let child = self
            .command("emperor")
            .arg("--run-dir")
            .arg(&self.run_dir)
            .arg("serve")
            .arg("--vassals")
            .arg(&self.vassals)
            .arg("--home-root")
            .arg(&self.home_root)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--cgroup-root")
            .arg(&self.cgroup_root)
            .arg("--stop-grace")
            .arg("3")
            .args(
                self.netns
                    .is_none()
                    .then_some(["--network", "off"])
                    .into_iter()
                    .flatten(),
            )
            .args(&self.extra)
            .args(
                (!self.extra.iter().any(|a| a == "--vassal-bin"))
                    .then(|| {
                        [
                            std::ffi::OsString::from("--vassal-bin"),
                            vassal_bin().into(),
                        ]
                    })
                    .into_iter()
                    .flatten(),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start emperor");
        self.child = Some(child);
        let start = Instant::now();
        while self.try_status().is_none() {
            if start.elapsed() > patience(Duration::from_secs(10)) {
                panic!(
                    "timed out after 10s waiting for the emperor's control socket; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A command for one of the workspace's binaries, run in the emperor's
    /// network namespace when it has one.
    pub fn command(&self, name: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .arg("--")
                    .arg(bin(name));
                c
            }
            None => Command::new(bin(name)),
        }
    }

    /// The emperor's process.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("started").id() as i32
    }

    /// Sends a signal to the emperor and waits for it to exit.
    pub fn kill(&mut self, sig: nix::sys::signal::Signal) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
            let _ = c.wait();
        }
    }

    /// Has `start` serve the API over TLS on a free loopback port, with a
    /// new self-signed certificate for `localhost`: (the port, the
    /// certificate's file, which a client trusts).
    pub fn api_over_tls(&mut self) -> (u16, PathBuf) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let (cert, key) = (
            self.dir.path().join("api.crt"),
            self.dir.path().join("api.key"),
        );
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args([
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl");
        assert!(made.status.success(), "openssl: {made:?}");
        self.extra.extend([
            "--api-listen".into(),
            format!("127.0.0.1:{port}"),
            "--api-cert".into(),
            cert.display().to_string(),
            "--api-key".into(),
            key.display().to_string(),
        ]);
        (port, cert)
    }

    /// `emperor token ARGS` on this emperor's state directory: what it printed.
    pub fn token(&self, args: &[&str]) -> String {
        let out = Command::new(bin("emperor"))
            .args(["token", "--state-dir"])
            .arg(&self.state_dir)
            .args(args)
            .output()
            .expect("run emperor token");
        assert!(out.status.success(), "emperor token {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs the CLI with these arguments.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("emperor"))
            .arg("--run-dir")
            .arg(&self.run_dir)
            .args(args)
            .output()
            .expect("run emperor CLI")
    }

    fn try_status(&self) -> Option<Vec<Value>> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()?
            .as_array()
            .cloned()
    }

    /// `emperor status --json`.
    pub fn status(&self) -> Vec<Value> {
        self.try_status()
            .unwrap_or_else(|| panic!("status failed; log:\n{}", self.log()))
    }

    /// The status row of `name`.
    pub fn row(&self, name: &str) -> Option<Value> {
        self.status().into_iter().find(|r| r["name"] == name)
    }

    /// Waits until `name`'s row satisfies `pred`, and returns it.
    pub fn wait_row(&self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let limit = patience(Duration::from_secs(15));
        let start = Instant::now();
        loop {
            let row = self.row(name);
            if let Some(r) = row.as_ref().filter(|r| pred(r)) {
                return r.clone();
            }
            if start.elapsed() > limit {
                panic!(
                    "{name}: timed out waiting for {what}; last row: {row:?}\nlog:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for `name` to run and returns its init pid.
    pub fn running_pid(&self, name: &str) -> i32 {
        let r = self.wait_row(name, "running", |r| {
            r["state"] == "running" && r["pid"].is_i64()
        });
        r["pid"].as_i64().expect("pid") as i32
    }

    /// The emperor's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("emperor.log")).unwrap_or_default()
    }

    /// A cgroup path of the tree, relative to a hierarchy root.
    pub fn cgroup(&self, rest: &str) -> String {
        format!("{}/{rest}", self.cgroup_root)
    }

    /// Runs `script` with `sh -c` inside the container of init `pid`, as `uid`,
    /// charged to `cgroup` (as an SSH session would be).
    pub fn exec_in(&self, pid: i32, uid: u32, cgroup: &str, script: &str) -> Output {
        let mut join = String::new();
        for c in ["memory", "pids", "cpu", "freezer"] {
            let f = cgroup_file(c, cgroup, "cgroup.procs");
            join.push_str(&format!("echo $$ > {} && ", f.display()));
            if !Path::new("/sys/fs/cgroup/memory").exists() {
                break; // v2: one hierarchy
            }
        }
        // As a tenant's ssh session (the PAM module) is: a likelier OOM
        // victim in its site than the site's init.
        let wrapper = format!(
            "{join}echo 300 > /proc/self/oom_score_adj && \
             exec nsenter -t {pid} -a -S {uid} -G {uid} -- sh -c \"$0\""
        );
        Command::new("sh")
            .args(["-c", &wrapper, script])
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }
}

impl Default for Emperor {
    fn default() -> Self {
        Emperor::new()
    }
}

impl Drop for Emperor {
    fn drop(&mut self) {
        // A failed test shows what the emperor said last.
        if std::thread::panicking() {
            eprintln!("emperor log (tail):\n{}", tail(&self.log(), 60));
        }
        // The graceful way first: stop every vassal, then the emperor.
        if self.child.is_some() {
            let _ = Command::new(bin("emperor"))
                .arg("--run-dir")
                .arg(&self.run_dir)
                .arg("shutdown")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if let Some(mut c) = self.child.take() {
                let deadline = Instant::now() + patience(Duration::from_secs(10));
                while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // Whatever is left (a failed test, a killed emperor): kill and remove by hand.
        force_cleanup(&self.cgroup_root);
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Kills every process under a cgroup subtree and removes it, in every hierarchy.
pub fn force_cleanup(root: &str) {
    let mut roots: Vec<PathBuf> = Vec::new();
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        roots.push(Path::new("/sys/fs/cgroup").join(root));
    } else {
        for c in ["memory", "pids", "cpu", "freezer", "cpu,cpuacct"] {
            let p = Path::new("/sys/fs/cgroup").join(c).join(root);
            if p.exists()
                && !roots
                    .iter()
                    .any(|r| r.canonicalize().ok() == p.canonicalize().ok())
            {
                roots.push(p);
            }
        }
    }
    for r in &roots {
        thaw_tree(r);
    }
    for _ in 0..200 {
        let mut any = false;
        for r in &roots {
            for pid in procs_under(r) {
                any = true;
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if !any {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for r in &roots {
        rmdir_tree(r);
    }
}

fn thaw_tree(dir: &Path) {
    let f = dir.join("freezer.state");
    if f.exists() {
        let _ = std::fs::write(&f, "THAWED");
    }
    let f = dir.join("cgroup.freeze");
    if f.exists() {
        let _ = std::fs::write(&f, "0");
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            thaw_tree(&e.path());
        }
    }
}

fn procs_under(dir: &Path) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            v.extend(procs_under(&e.path()));
        }
    }
    v
}

fn rmdir_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            rmdir_tree(&e.path());
        }
    }
    for _ in 0..200 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes a file through a temporary name and a rename, as an editor or a deploy tool does.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).expect("write temp");
    std::fs::rename(&tmp, path).expect("rename");
}

/// The uid of a process, from /proc.
pub fn proc_uid(pid: i32) -> u32 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .expect("Uid line")
}

/// A field of /proc/PID/status.
pub fn proc_status(pid: i32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// The namespace link of a process (`/proc/PID/ns/NAME`).
pub fn ns_link(pid: &str, ns: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/{ns}: {e}"))
}

/// The children of `parent` as the host sees them: (pid, state letter).
pub fn children(parent: i32) -> Vec<(i32, char)> {
    let parent = parent.to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let mut f = stat.rsplit_once(") ")?.1.split(' ');
            let state = f.next()?.chars().next()?;
            (f.next()? == parent).then_some((pid, state))
        })
        .collect()
}

/// Whether a pid is alive (and not a zombie).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(") ")
                .map(|(_, r)| r.starts_with('Z'))
                .unwrap_or(true)
        })
        .unwrap_or(false)
}

/// A filesystem on a loop device, mounted at [`LoopFs::mnt`]; unmounted and
/// the device detached on drop, even when a test fails.
pub struct LoopFs {
    dir: tempfile::TempDir,
    dev: Option<String>,
}

/// The btrfs a test makes (see [`LoopFs`]).
pub type LoopBtrfs = LoopFs;

impl LoopFs {
    /// A fresh btrfs of `size` bytes (a sparse image in a temporary directory).
    pub fn new(size: u64) -> LoopFs {
        LoopFs::make(size, &["mkfs.btrfs", "-q"], "defaults")
    }

    /// A fresh XFS with project quotas on.
    pub fn xfs(size: u64) -> LoopFs {
        LoopFs::make(size, &["mkfs.xfs", "-q"], "prjquota")
    }

    /// A fresh XFS, quotas off (project ids are kept in its inodes all the same).
    pub fn xfs_plain(size: u64) -> LoopFs {
        LoopFs::make(size, &["mkfs.xfs", "-q"], "defaults")
    }

    /// A fresh ext4 with project quotas on.
    pub fn ext4(size: u64) -> LoopFs {
        LoopFs::make(
            size,
            &["mkfs.ext4", "-q", "-O", "quota,project"],
            "prjquota",
        )
    }

    fn make(size: u64, mkfs: &[&str], options: &str) -> LoopFs {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("imperium-fs")
            .tempdir()
            .expect("tempdir");
        let img = dir.path().join("img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(size))
            .expect("image");
        let mut b = LoopFs { dir, dev: None };
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&img)
            .output()
            .expect("losetup");
        assert!(out.status.success(), "losetup: {out:?}");
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        b.dev = Some(dev.clone());
        let ok = |c: &mut Command| assert!(c.status().expect("run").success(), "{c:?}");
        ok(Command::new(mkfs[0]).args(&mkfs[1..]).arg(&dev));
        std::fs::create_dir(b.mnt()).expect("mount point");
        ok(Command::new("mount")
            .args(["-o", options])
            .arg(&dev)
            .arg(b.mnt()));
        b
    }

    /// Where it is mounted.
    pub fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mnt()).status();
        if let Some(dev) = &self.dev {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
    }
}

/// A router on loopback sharing the emperor's run directory; killed on drop.
pub struct RouterProc {
    child: std::process::Child,
    /// Its HTTP address.
    pub http: String,
    /// Its HTTPS address.
    pub https: String,
    log: std::path::PathBuf,
}

impl RouterProc {
    /// Starts `router serve` on 127.0.0.1 with the emperor's run directory,
    /// in the emperor's network namespace (where its sites' addresses are).
    pub fn start(e: &Emperor) -> RouterProc {
        RouterProc::start_with(e, &[])
    }

    /// [`RouterProc::start`] with more arguments of `router serve`.
    pub fn start_with(e: &Emperor, more: &[String]) -> RouterProc {
        let listen = e.run_dir.join("router/listen.json");
        let log_path = e.dir.path().join("router.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = e
            .command("router")
            .args(["serve", "--http", "127.0.0.1:0", "--https", "127.0.0.1:0"])
            .arg("--run-dir")
            .arg(&e.run_dir)
            .arg("--state-dir")
            .arg(e.dir.path().join("router-state"))
            .args(more)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let v: serde_json::Value = wait_for(Duration::from_secs(20), "the router", || {
            serde_json::from_slice(&std::fs::read(&listen).ok()?).ok()
        });
        RouterProc {
            child,
            http: v["http"].as_str().unwrap().to_owned(),
            https: v["https"].as_str().unwrap().to_owned(),
            log: log_path,
        }
    }

    /// One GET with this Host: (status, body).
    pub fn get(&self, host: &str) -> (u16, String) {
        http_get(&self.http, host)
    }
}

/// One GET through the router at `addr` with this Host: (status, body).
pub fn http_get(addr: &str, host: &str) -> (u16, String) {
    // A request that reached a site just frozen waits for its thaw: give up, ask again.
    http_request(addr, host, "/", Duration::from_secs(2))
}

/// One GET of `path` with this Host: (status, the answer's header lines, body).
pub fn http_exchange(addr: &str, host: &str, path: &str) -> (u16, String, String) {
    http_exchange_with(addr, host, path, "", Duration::from_secs(10))
}

/// One GET of `path` with this Host and these extra header lines (each
/// ending in CRLF), waiting `wait` at most: (status, head, body, a chunked
/// body's data).
pub fn http_exchange_with(
    addr: &str,
    host: &str,
    path: &str,
    headers: &str,
    wait: Duration,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: e2e\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, head.to_owned(), body)
}

/// Checks a metrics text as Prometheus's own tool does (`promtool check
/// metrics`, from Debian's prometheus package); panics with its complaint.
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package)");
    check
        .stdin
        .as_mut()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(out.status.success(), "promtool: {out:?}\n{text}");
}

/// The data of a chunked body.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    out
}

/// One GET of `path` with this Host, waiting `wait` at most for the answer: (status, body).
pub fn http_request(addr: &str, host: &str, path: &str, wait: Duration) -> (u16, String) {
    let (status, _, body) = http_exchange_with(addr, host, path, "", wait);
    (status, body)
}

impl Drop for RouterProc {
    fn drop(&mut self) {
        // A failed test shows whether the router was still running, and its last words.
        if std::thread::panicking() {
            let exited = self.child.try_wait().ok().flatten();
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("router exited: {exited:?}; log (tail):\n{}", tail(&log, 60));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
