//! The tenant's own files: `~/vassals/<name>.toml`, one process or one scheduled
//! job each, kept running by the vassal inside the container.
//!
//! ```toml
//! command = ["python3", "-m", "http.server", "8000"]   # argv; no shell unless you name one
//! workdir = "app"              # relative to the home, or absolute (default: the home)
//! env = { MODE = "prod" }      # added to HOME, USER, LOGNAME, SHELL, PATH
//! restart = "always"           # always | on-failure | never
//! stop_signal = "TERM"         # TERM INT QUIT HUP USR1 USR2 KILL
//! grace = 10                   # seconds between stop_signal and SIGKILL
//! log_max = "10M"              # ~/logs/<name>.log is rotated past this size
//!
//! schedule = "0 3 * * *"       # makes it a job: runs at these times, never two at once
//! timeout = 3600               # a job running longer is stopped (seconds)
//!
//! [http]                       # serve these domains through the shared router
//! domains = ["shop.test"]
//! socket = "web.sock"          # a unix socket in /run/imperium/sockets/, or "tcp:8080" (the site's address)
//! ready_timeout = 60           # seconds a new instance has to accept on it
//! http_redirect = true         # plain HTTP gets a 308 to HTTPS once a certificate is served
//! ```
//!
//! `{socket}` in the command or an env value is replaced by the path of the
//! socket this instance is to listen on (also in `$SOCKET`). A process that
//! takes it so is restarted without a gap: the new instance starts beside the
//! old one on the other of `<socket>` and `<socket>.1`, is subscribed once it
//! accepts, and only then is the old one withdrawn and stopped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::cron::Schedule;
use crate::name::Name;
use crate::size::Size;

/// When a process that ended is started again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Restart {
    /// Whatever the exit.
    #[default]
    Always,
    /// Unless it exited with code 0.
    OnFailure,
    /// Never.
    Never,
}

/// The signals a process may be stopped with.
pub const STOP_SIGNALS: &[(&str, i32)] = &[
    ("TERM", 15),
    ("INT", 2),
    ("QUIT", 3),
    ("HUP", 1),
    ("USR1", 10),
    ("USR2", 12),
    ("KILL", 9),
];

/// One tenant process file, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessFile {
    /// argv.
    pub command: Vec<String>,
    /// Working directory (relative to the home, or absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Restart policy of a long-running process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<Restart>,
    /// Stop signal name.
    #[serde(default = "default_signal")]
    pub stop_signal: String,
    /// Seconds between the stop signal and SIGKILL.
    #[serde(default = "default_grace")]
    pub grace: f64,
    /// Size past which the log is rotated.
    #[serde(default = "default_log_max")]
    pub log_max: Size,
    /// Cron schedule: makes the file a job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// A job's time limit in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// The domains this process serves through the shared router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Http>,
}

/// The `[http]` table: subscribe these domains to the router while the process runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Domains (the site must own them).
    pub domains: Vec<String>,
    /// The socket the process listens on: a name in `/run/imperium/sockets/`,
    /// or `tcp:PORT`, that port on the site's own address.
    pub socket: String,
    /// Certificate chain (PEM), a path in the home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// Its key (PEM), a path in the home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Share of the load against the domain's other backends (1-100).
    #[serde(default = "one")]
    pub weight: u32,
    /// Answer plain HTTP with a redirect (308) to HTTPS once the router
    /// serves a certificate for the domain (the site's own or ACME's).
    #[serde(default)]
    pub http_redirect: bool,
    /// Seconds a new instance has to accept on its socket; past it, a restart
    /// that hands over gives the new one up and the old one keeps serving.
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout: f64,
}

fn default_ready_timeout() -> f64 {
    60.0
}

/// What the vassal replaces in a command's arguments and env values by the
/// path of the socket the instance is to listen on.
pub const SOCKET_PLACEHOLDER: &str = "{socket}";

/// Whether a name can be a socket file in the site's socket directory:
/// letters, digits, `.`, `_`, `-`, at most 100, not starting with a dot.
pub fn is_socket_name(s: &str) -> bool {
    (1..=100).contains(&s.len())
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The port of a `tcp:PORT` backend (1-65535), `None` for anything else.
pub fn tcp_port(s: &str) -> Option<u16> {
    let port = s.strip_prefix("tcp:")?;
    if port.is_empty() || port.starts_with('0') || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse::<u16>().ok()
}

fn one() -> u32 {
    1
}

fn default_signal() -> String {
    "TERM".into()
}
fn default_grace() -> f64 {
    10.0
}
fn default_log_max() -> Size {
    Size(10 << 20)
}

fn schedule_is_some(f: &ProcessFile) -> bool {
    f.schedule.is_some()
}

/// A validated process file.
#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    /// What was written.
    pub file: ProcessFile,
    /// The signal number to stop it with.
    pub stop_signal: i32,
    /// The schedule of a job; `None` for a long-running process.
    pub schedule: Option<Schedule>,
}

impl Process {
    /// Parses and validates the file of process `name`.
    pub fn parse(_name: &Name, text: &str) -> Result<Process, ConfigError> {
        let file: ProcessFile = toml::from_str(text).map_err(|e| crate::config::syntax(e, text))?;
        let bad = |why: String| Err(ConfigError::Syntax(why));
        if file.command.is_empty() || file.command[0].is_empty() {
            return bad(
                "command must name a program: command = [\"program\", \"arg\", ...]".into(),
            );
        }
        if file
            .command
            .iter()
            .chain(file.env.values())
            .chain(file.env.keys())
            .any(|s| s.contains('\0'))
        {
            return bad("command and env may not hold NUL bytes".into());
        }
        if let Some(k) = file.env.keys().find(|k| k.is_empty() || k.contains('=')) {
            return bad(format!("env key {k:?} is not a variable name"));
        }
        let Some(&(_, stop_signal)) = STOP_SIGNALS
            .iter()
            .find(|(n, _)| *n == file.stop_signal.trim_start_matches("SIG"))
        else {
            return bad(format!(
                "stop_signal {:?} is not one of TERM INT QUIT HUP USR1 USR2 KILL",
                file.stop_signal
            ));
        };
        if !(file.grace.is_finite() && (0.0..=3600.0).contains(&file.grace)) {
            return bad(format!(
                "grace {} is not between 0 and 3600 seconds",
                file.grace
            ));
        }
        if let Some(h) = &file.http {
            if h.domains.is_empty() {
                return bad("http.domains is empty".into());
            }
            if let Some(d) = h
                .domains
                .iter()
                .find(|d| d.parse::<crate::name::Domain>().is_err())
            {
                return bad(format!(
                    "http.domains: {d:?} is not a valid lower-case domain"
                ));
            }
            let s = &h.socket;
            if s.starts_with("tcp:") && tcp_port(s).is_none() {
                return bad(format!(
                    "http.socket {s:?}: a TCP backend is tcp:PORT, a port from 1 to 65535 on the site's own address"
                ));
            }
            if !is_socket_name(s) && tcp_port(s).is_none() {
                return bad(format!(
                    "http.socket {s:?} is not a socket name: the process listens on a unix socket \
                     named in /run/imperium/sockets/ (letters, digits, . _ -, e.g. \"web.sock\") \
                     or on tcp:PORT (the site's own address)"
                ));
            }
            if !(h.ready_timeout.is_finite() && (0.1..=3600.0).contains(&h.ready_timeout)) {
                return bad(format!(
                    "http.ready_timeout {} is not between 0.1 and 3600 seconds",
                    h.ready_timeout
                ));
            }
            if h.cert.is_some() != h.key.is_some() {
                return bad("http.cert and http.key go together".into());
            }
            if !(1..=100).contains(&h.weight) {
                return bad(format!("http.weight {} is not between 1 and 100", h.weight));
            }
            if schedule_is_some(&file) {
                return bad("a scheduled job cannot serve http".into());
            }
        }
        if file.log_max.0 < 4096 {
            return bad(format!("log_max {} is below 4K", file.log_max));
        }
        let schedule = match &file.schedule {
            Some(s) => Some(
                s.parse::<Schedule>()
                    .map_err(|e| ConfigError::Syntax(e.to_string()))?,
            ),
            None => None,
        };
        match (&schedule, file.restart, file.timeout) {
            (Some(_), Some(_), _) => {
                return bad("a scheduled job has no restart policy (it runs at its times)".into())
            }
            (None, _, Some(_)) => {
                return bad(
                    "timeout is for scheduled jobs; a process is stopped with `vassal stop`".into(),
                )
            }
            (_, _, Some(t)) if !(t.is_finite() && t > 0.0) => {
                return bad(format!("timeout {t} is not a positive number of seconds"))
            }
            _ => {}
        }
        Ok(Process {
            file,
            stop_signal,
            schedule,
        })
    }

    /// The restart policy (jobs: never).
    pub fn restart(&self) -> Restart {
        if self.schedule.is_some() {
            Restart::Never
        } else {
            self.file.restart.unwrap_or_default()
        }
    }

    /// Whether a restart can start the new instance beside the old one: the
    /// process serves http and takes its socket path from the vassal
    /// (`{socket}` in its command or env), so the two listen apart.
    pub fn hands_over(&self) -> bool {
        self.file
            .http
            .as_ref()
            .is_some_and(|h| tcp_port(&h.socket).is_none())
            && self
                .file
                .command
                .iter()
                .chain(self.file.env.values())
                .any(|a| a.contains(SOCKET_PLACEHOLDER))
    }

    /// Whether a change from `self` to `new` needs the running process restarted.
    pub fn needs_restart(&self, new: &Process) -> bool {
        let (a, b) = (&self.file, &new.file);
        a.command != b.command
            || a.workdir != b.workdir
            || a.env != b.env
            || self.schedule.is_some() != new.schedule.is_some()
            // The process listens on the socket it was started with.
            || a.http.as_ref().map(|h| &h.socket) != b.http.as_ref().map(|h| &h.socket)
    }
}

#[cfg(test)]
mod tests {
    proptest::proptest! {
        #[test]
        fn a_tenants_process_file_never_panics_the_parser(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = super::Process::parse(&"fuzz".parse().unwrap(), &text);
        }

        #[test]
        fn tomlish_process_files_get_one_line_errors(text in "(command = \"[a-z /-]{0,20}\"\n)?(\\[(http|cron)\\]\n)?([a-z_]{1,9} = (\"[a-zA-Z0-9.*/ -]{0,12}\"|-?[0-9]{1,20}|\\[\"[a-z.]{0,9}\"\\]|true)\n){0,6}") {
            if let Err(e) = super::Process::parse(&"fuzz".parse().unwrap(), &text) {
                proptest::prop_assert!(!e.to_string().contains('\n'));
            }
        }
    }

    use super::*;

    fn n() -> Name {
        "web".parse().unwrap()
    }

    #[test]
    fn processes_and_jobs() {
        let p = Process::parse(&n(), "command = [\"sleep\", \"1\"]").unwrap();
        assert_eq!(p.restart(), Restart::Always);
        assert_eq!(p.stop_signal, 15);
        assert_eq!(p.file.grace, 10.0);
        let j = Process::parse(
            &n(),
            "command = [\"true\"]\nschedule = \"*/5 * * * *\"\ntimeout = 60",
        )
        .unwrap();
        assert_eq!(j.restart(), Restart::Never);
        assert!(j.schedule.is_some());
        let p = Process::parse(&n(), "command = [\"x\"]\nrestart = \"on-failure\"\nstop_signal = \"SIGINT\"\ngrace = 0.5\nenv = { A = \"1\" }").unwrap();
        assert_eq!((p.restart(), p.stop_signal), (Restart::OnFailure, 2));
    }

    #[test]
    fn http_redirect_is_off_unless_asked() {
        let http = |extra: &str| {
            let text = format!(
                "command = [\"x\"]\n[http]\ndomains = [\"a.test\"]\nsocket = \"w.sock\"\n{extra}"
            );
            Process::parse(&n(), &text).unwrap().file.http.unwrap()
        };
        assert!(!http("").http_redirect);
        assert!(http("http_redirect = true").http_redirect);
    }

    #[test]
    fn refusals_are_one_line() {
        for (text, want) in [
            ("", "missing field `command`"),
            ("command = []", "must name a program"),
            ("command = [\"x\"]\nstop_signal = \"STOP\"", "stop_signal"),
            ("command = [\"x\"]\ngrace = -1", "grace"),
            ("command = [\"x\"]\nschedule = \"61 * * * *\"", "minute"),
            (
                "command = [\"x\"]\nschedule = \"* * * * *\"\nrestart = \"always\"",
                "no restart policy",
            ),
            (
                "command = [\"x\"]\ntimeout = 5",
                "timeout is for scheduled jobs",
            ),
            ("command = [\"x\"]\ncolour = 1", "unknown field"),
            (
                "command = [\"x\"]\nenv = { \"A=B\" = \"1\" }",
                "not a variable name",
            ),
            (
                "command = [\"x\"]\nrestart = \"sometimes\"",
                "unknown variant",
            ),
        ] {
            let e = Process::parse(&n(), text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e:?}");
        }
    }

    #[test]
    fn a_backend_is_a_socket_name_and_handing_over_needs_the_placeholder() {
        let file = |socket: &str, command: &str| {
            Process::parse(
                &n(),
                &format!(
                    "command = {command}\n[http]\ndomains = [\"a.test\"]\nsocket = \"{socket}\"\n"
                ),
            )
        };
        for bad in [
            "127.0.0.1:8080",
            "localhost:80",
            "../x",
            ".hidden",
            "a b",
            "",
        ] {
            let e = file(bad, "[\"app\"]").unwrap_err().to_string();
            assert!(e.contains("is not a socket name"), "{bad}: {e}");
        }
        for bad in ["tcp:", "tcp:0", "tcp:65536", "tcp:080", "tcp:80x", "tcp:-1"] {
            let e = file(bad, "[\"app\"]").unwrap_err().to_string();
            assert!(e.contains("a TCP backend is tcp:PORT"), "{bad}: {e}");
        }
        let tcp = file("tcp:8080", "[\"app\", \"{socket}\"]").unwrap();
        assert!(
            !tcp.hands_over(),
            "one port: no second instance beside the first"
        );
        assert_eq!(tcp_port("tcp:8080"), Some(8080));
        let plain = file("web.sock", "[\"app\", \"/run/imperium/sockets/web.sock\"]").unwrap();
        assert!(!plain.hands_over());
        let takes = file("web.sock", "[\"app\", \"--bind\", \"unix:{socket}\"]").unwrap();
        assert!(takes.hands_over());
        assert_eq!(takes.file.http.unwrap().ready_timeout, 60.0);
        // Another socket is a restart: the process listens where it was started.
        assert!(file("web.sock", "[\"app\"]")
            .unwrap()
            .needs_restart(&file("app.sock", "[\"app\"]").unwrap()));
    }
}
