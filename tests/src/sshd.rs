//! A private, real sshd on a free 127.0.0.1 port, with its own config, PAM
//! service file, nsswitch.conf and passwd/shadow/group copies (one extra
//! non-tenant account, `admin1`), all bound over /etc inside a private mount
//! namespace: the host's /etc is never touched. The NSS and PAM modules are
//! the ones this workspace built.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::{bin_dir, wait_for, Emperor};

/// The non-tenant account the private sshd knows.
pub const ADMIN: &str = "admin1";

/// Client and host keys, made before the site files that list the client key.
pub struct Keys {
    /// Holds the keys, the config and the logs.
    pub dir: tempfile::TempDir,
}

impl Keys {
    /// Makes a host key and a client key (ed25519, no passphrase).
    pub fn new() -> Keys {
        crate::require_root();
        let dir = tempfile::Builder::new()
            .prefix("imperium-sshd")
            .tempdir()
            .expect("tempdir");
        for k in ["hostkey", "client"] {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "tenant@test", "-f"])
                .arg(dir.path().join(k))
                .output()
                .expect("ssh-keygen (openssh-client)");
            assert!(out.status.success(), "ssh-keygen: {out:?}");
        }
        Keys { dir }
    }

    /// The client's public key line.
    pub fn public(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("client.pub"))
            .expect("client.pub")
            .trim()
            .to_owned()
    }
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new()
    }
}

/// A running private sshd.
pub struct Sshd {
    keys: Keys,
    child: Child,
    state_dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

/// How the private sshd authorizes and opens sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pam {
    /// `pam_imperium.so` in the account and session stacks.
    Imperium,
    /// The same stacks without it (the login benchmark's baseline).
    Plain,
    /// `UsePAM no`: a misconfigured host.
    Off,
}

impl Sshd {
    /// Starts sshd for the emperor `e`'s tenants, with PAM as `pam` says.
    pub fn start(keys: Keys, e: &Emperor, pam: Pam) -> Sshd {
        let (module, use_pam) = (pam == Pam::Imperium, pam != Pam::Off);
        let d = keys.dir.path().to_path_buf();
        let lib = d.join("lib");
        std::fs::create_dir_all(&lib).expect("lib dir");
        let nss = bin_dir().join("libnss_imperium.so");
        let pam_lib = bin_dir().join("libpam_imperium.so");
        assert!(
            nss.is_file() && pam_lib.is_file(),
            "build the modules first (cargo build --workspace)"
        );
        let _ = std::fs::remove_file(lib.join("libnss_imperium.so.2"));
        std::os::unix::fs::symlink(&nss, lib.join("libnss_imperium.so.2")).expect("symlink");

        // The admin's key and home; tenants' keys come from the emperor.
        std::fs::create_dir_all(d.join("keys")).expect("keys dir");
        std::fs::copy(d.join("client.pub"), d.join("keys").join(ADMIN)).expect("admin key");
        std::fs::create_dir_all(d.join(ADMIN)).expect("admin home");
        std::os::unix::fs::chown(d.join(ADMIN), Some(1999), Some(1999)).expect("chown");

        let etc = |name: &str, extra: &str| {
            let host = std::fs::read_to_string(Path::new("/etc").join(name)).unwrap_or_default();
            std::fs::write(d.join(name), host + extra).expect("etc copy");
        };
        etc(
            "passwd",
            &format!(
                "{ADMIN}:x:1999:1999:admin:{}:/bin/sh\n",
                d.join(ADMIN).display()
            ),
        );
        etc("group", &format!("{ADMIN}:x:1999:\n"));
        etc("shadow", &format!("{ADMIN}:*:19000:0:99999:7:::\n"));
        std::fs::write(
            d.join("nsswitch.conf"),
            "passwd: files imperium\ngroup: files imperium\nshadow: files imperium\n\
             initgroups: files imperium\nhosts: files\n",
        )
        .expect("nsswitch.conf");
        let args = format!(
            "run_dir={} state_dir={}",
            e.run_dir.display(),
            e.state_dir.display()
        );
        let imperium = |stack: &str| {
            if module {
                format!("{stack} {} {args}\n", pam_lib.display())
            } else {
                String::new()
            }
        };
        std::fs::write(
            d.join("pam.sshd"),
            format!(
                "auth required pam_deny.so\n{}account required pam_unix.so\n\
                 session required pam_unix.so\n{}",
                imperium("account requisite"),
                imperium("session required"),
            ),
        )
        .expect("pam file");

        let port = free_port();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/hostkey\nPidFile {d}/sshd.pid\n\
                 UsePAM {}\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin no\n\
                 AuthorizedKeysFile {keys}/%u {d}/keys/%u\n\
                 StrictModes no\nPrintMotd no\nPrintLastLog no\nUseDNS no\nLogLevel VERBOSE\n",
                if use_pam { "yes" } else { "no" },
                d = d.display(),
                keys = e.state_dir.join("ssh").display(),
            ),
        )
        .expect("sshd_config");

        let mut script = format!(
            "set -e; mount -t tmpfs -o mode=755 tmpfs /run; mkdir -m 755 /run/sshd; {}",
            binds(&d)
        );
        script.push_str(&format!(
            "/usr/sbin/sshd -t -f {c}; exec /usr/sbin/sshd -D -e -f {c}",
            c = d.join("sshd_config").display()
        ));
        let log = std::fs::File::create(d.join("sshd.log")).expect("log");
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .env("LD_LIBRARY_PATH", &lib)
            .env("IMPERIUM_STATE_DIR", &e.state_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("unshare (util-linux)");
        let mut s = Sshd {
            keys,
            child,
            port,
            state_dir: e.state_dir.clone(),
        };
        wait_for(Duration::from_secs(10), "sshd to listen", || {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("sshd exited ({st}):\n{}", s.log());
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        s
    }

    /// Runs `pamtester sshd USER acct_mgmt open_session close_session` `n`
    /// times with this sshd's PAM file and NSS setup, `pause` apart (as
    /// logins come: a kernel lock that a burst shares is paid by each), and
    /// returns each run's time: the PAM stack without sshd around it.
    pub fn pamtester(&self, user: &str, n: usize, pause: Duration) -> Vec<Duration> {
        let out = self.on_host(&format!(
            "for i in $(seq {n}); do s=$(date +%s%N); \
             pamtester sshd {user} acct_mgmt open_session close_session >/dev/null; \
             echo $(( $(date +%s%N) - s )); sleep {:.3}; done",
            pause.as_secs_f64()
        ));
        assert!(out.status.success(), "pamtester: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| Duration::from_nanos(l.trim().parse().expect("nanoseconds")))
            .collect()
    }

    /// Runs a shell script on the host with this sshd's NSS and PAM setup (in
    /// a private mount namespace of its own), as `getent` or `ls -l` would run
    /// on a host configured like it.
    pub fn on_host(&self, script: &str) -> Output {
        let d = self.dir();
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!("set -e; {}{script}", binds(&d)))
            .env("LD_LIBRARY_PATH", d.join("lib"))
            .env("IMPERIUM_STATE_DIR", &self.state_dir)
            .output()
            .expect("unshare")
    }

    /// `ssh user@127.0.0.1 command` with the client key (extra flags first).
    pub fn ssh(&self, user: &str, flags: &[&str], command: &str) -> Output {
        self.ssh_command(user, flags, command)
            .output()
            .expect("ssh (openssh-client)")
    }

    /// The ssh command line, to spawn it in the background.
    pub fn ssh_command(&self, user: &str, flags: &[&str], command: &str) -> Command {
        client(&self.keys, self.port, 30, user, flags, command)
    }

    /// sshd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.keys.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// The test directory (keys, configs, the admin's home).
    pub fn dir(&self) -> PathBuf {
        self.keys.dir.path().to_path_buf()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // The listener and every session process still in its private mount
        // namespace (a tenant's session left with its container's cgroup).
        let ns = std::fs::read_link(format!("/proc/{}/ns/mnt", self.child.id()));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let Ok(ns) = ns else { return };
        if std::fs::read_link("/proc/self/ns/mnt").is_ok_and(|me| me == ns) {
            return; // never the host's own namespace
        }
        for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if std::fs::read_link(p.path().join("ns/mnt")).is_ok_and(|l| l == ns) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// The shell commands binding the test's files over /etc (in a private mount namespace).
fn binds(d: &Path) -> String {
    let mut s = String::new();
    for (file, over) in [
        ("pam.sshd", "/etc/pam.d/sshd"),
        ("nsswitch.conf", "/etc/nsswitch.conf"),
        ("passwd", "/etc/passwd"),
        ("group", "/etc/group"),
        ("shadow", "/etc/shadow"),
    ] {
        s.push_str(&format!("mount --bind {} {over}; ", d.join(file).display()));
    }
    s
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// An ssh client for tests: the client key of `keys`, no configuration of the
/// machine's, no host key checks, given up after `limit` seconds.
pub fn client(
    keys: &Keys,
    port: u16,
    limit: u32,
    user: &str,
    flags: &[&str],
    command: &str,
) -> Command {
    let mut c = Command::new("timeout");
    c.arg(limit.to_string())
        .arg("ssh")
        .args(["-F", "/dev/null", "-p", &port.to_string(), "-i"])
        .arg(keys.dir.path().join("client"))
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=INFO",
        ])
        .args(flags)
        .arg(format!("{user}@127.0.0.1"))
        .arg(command)
        .stdin(Stdio::null());
    c
}
