//! `vassal`: PID 1 of a site's container, running as the tenant, and the
//! tenant's command line.
//!
//! `vassal init` keeps the processes and jobs of `~/vassals/*.toml` running
//! (and does an init's duties: reaping orphans, passing signals on, stopping
//! everything on SIGTERM). The other verbs talk to it over
//! `~/.imperium/vassal.sock`.

/// A line on stderr that never panics: PID 1's stderr is `~/logs/vassal.log`,
/// in a home that may be full (`eprintln!` panics when a write fails).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

mod clock;
mod control;
mod entry;
mod http;
mod lifecycle;
mod logs;
mod notify;
mod site;
mod spawn;
mod supervisor;

use std::path::PathBuf;
use std::time::Duration;

use control::Request;
use model::backoff::Throttle;

const USAGE: &str =
    "usage: vassal init [--throttle-base SECS] [--throttle-max SECS] [--healthy-after SECS] [--processes DIR]
       vassal status [--json]
       vassal start|stop|restart|reload NAME
       vassal notifications [--json] [--unread] [-n COUNT]
       vassal notifications read [UPTO]
       vassal sites [--json]                 (a reseller: the group's sites and refused files)
       vassal notify KIND MESSAGE
       vassal logs NAME [-n LINES]";

fn main() {
    entry::main(run)
}

fn secs(v: Option<&String>, flag: &str) -> Result<Duration, String> {
    v.and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{flag} needs a number of seconds"))
}

fn run(args: &[String]) -> Result<i32, String> {
    let Some(verb) = args.first() else {
        eprintln!("{USAGE}");
        return Ok(2);
    };
    let settings = |args: &[String]| -> Result<supervisor::Settings, String> {
        let mut throttle = Throttle::default();
        let mut processes = None;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--throttle-base" => throttle.base = secs(it.next(), a)?,
                "--throttle-max" => throttle.max = secs(it.next(), a)?,
                "--healthy-after" => throttle.healthy = secs(it.next(), a)?,
                "--processes" => {
                    processes = Some(PathBuf::from(
                        it.next().ok_or("--processes needs a directory")?,
                    ))
                }
                other => return Err(format!("unknown option {other}\n{USAGE}")),
            }
        }
        // Tests run schedules faster than real time; nobody else sets this.
        let clock_scale = std::env::var("IMPERIUM_CLOCK_SCALE")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .unwrap_or(1.0);
        let cgroup_root = std::env::var_os("IMPERIUM_CGROUP_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"));
        Ok(supervisor::Settings {
            home: entry::home(),
            throttle,
            clock_scale,
            cgroup_root,
            processes,
            sockets: std::env::var_os("IMPERIUM_SOCKETS")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(model::layout::inside::SOCKETS)),
            address: std::env::var("IMPERIUM_ADDRESS")
                .ok()
                .and_then(|a| a.parse().ok()),
            usage: std::env::var_os("IMPERIUM_USAGE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(model::layout::inside::USAGE)),
        })
    };
    let socket = || model::layout::home::control_socket(&entry::home());
    let name = || {
        args.get(1)
            .cloned()
            .ok_or_else(|| format!("{verb} needs a process name"))
    };
    let req = match verb.as_str() {
        "init" => return Ok(supervisor::Supervisor::new(settings(&args[1..])?)?.run()),
        "--version" => {
            println!("vassal {}", env!("CARGO_PKG_VERSION"));
            return Ok(0);
        }
        "status" => {
            let resp = control::call(&socket(), &Request::Status)?;
            // The site's routes as the router has them (certificates, ACME's
            // errors): asked here, by the CLI, never by PID 1.
            let mut data = resp.data;
            if let Some(obj) = data.as_object_mut() {
                let routes = http::Subscriber::from_env().routes();
                let v = match routes {
                    Ok(r) => serde_json::to_value(r).unwrap_or_default(),
                    Err(e) => serde_json::json!({ "error": e }),
                };
                obj.insert("routes".into(), v);
            }
            if args.get(1).map(String::as_str) == Some("--json") {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&data).unwrap_or_default()
                );
            } else {
                print_status(&data);
            }
            return Ok(0);
        }
        // The database's verbs are vassal-notify's (SQLite stays out of PID 1).
        "notifications" | "notify" => return Err(notify::hand_over(args)),
        "sites" => {
            let dir = std::path::Path::new(model::layout::inside::USAGE);
            let Some(sites) = site::sites(dir) else {
                return Err(format!(
                    "no sites here ({} has none: this is not a group's container, or the emperor has not written it yet)",
                    dir.join(model::layout::inside::SITES_FILE).display()
                ));
            };
            if args.iter().any(|a| a == "--json") {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&sites).unwrap_or_default()
                );
            } else {
                print_sites(&sites);
            }
            return Ok(0);
        }
        "logs" => {
            let n = name()?;
            let lines = match args.get(2).map(String::as_str) {
                Some("-n") => args
                    .get(3)
                    .and_then(|v| v.parse().ok())
                    .ok_or("-n needs a number")?,
                _ => 100,
            };
            let path = model::layout::home::log(&entry::home(), &n);
            let text = logs::tail(&path, lines)
                .map_err(|e| format!("no log for {n} ({}: {e})", path.display()))?;
            for l in text {
                println!("{l}");
            }
            return Ok(0);
        }
        "start" => Request::Start { name: name()? },
        "stop" => Request::Stop { name: name()? },
        "restart" => Request::Restart { name: name()? },
        "reload" => Request::Reload { name: name()? },
        _ => {
            eprintln!("{USAGE}");
            return Ok(2);
        }
    };
    let resp = control::call(&socket(), &req)?;
    if !resp.ok {
        return Err(resp.error.unwrap_or_default());
    }
    if let Some(s) = resp.data.as_str() {
        println!("{s}");
    }
    Ok(0)
}

fn print_sites(s: &model::usage::Sites) {
    let opt = |v: Option<u64>| {
        v.map(|b| model::size::Size(b).to_string())
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "{:<20} {:<10} {:>8} {:>9} {:>9} {:>9}  REASON",
        "SITE", "STATE", "RESTARTS", "MEMORY", "STORAGE", "LIMIT"
    );
    for r in &s.sites {
        println!(
            "{:<20} {:<10} {:>8} {:>9} {:>9} {:>9}  {}",
            r.name,
            r.state,
            r.restarts,
            opt(r.memory),
            opt(r.storage),
            opt(r.storage_limit),
            r.reason.as_deref().unwrap_or("")
        );
    }
    if !s.refused.is_empty() {
        println!("\nREFUSED FILE          REASON");
        for r in &s.refused {
            println!("{:<21} {}", r.file, r.reason);
        }
    }
}

fn print_status(status: &serde_json::Value) {
    let rows = &status["processes"];
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    println!(
        "{:<16} {:<8} {:<10} {:>7} {:>9} {:>8} {:>9}  LAST EXIT / REASON",
        "NAME", "KIND", "STATE", "PID", "UPTIME", "RESTARTS", "MEMORY"
    );
    for r in rows.as_array().into_iter().flatten() {
        let mem = r["memory"]
            .as_u64()
            .map(|m| format!("{}K", m / 1024))
            .unwrap_or_else(|| "-".into());
        let why = [r["last_exit"].as_str(), r["reason"].as_str()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
        println!(
            "{:<16} {:<8} {:<10} {:>7} {:>9} {:>8} {:>9}  {}",
            s(&r["name"]),
            s(&r["kind"]),
            s(&r["state"]),
            s(&r["pid"]),
            s(&r["uptime_secs"]),
            s(&r["restarts"]),
            mem,
            why
        );
    }
    if let Some(routes) = status["routes"].as_array().filter(|r| !r.is_empty()) {
        println!(
            "{:<32} {:<8} {:<12} ISSUER / ACME ERROR",
            "DOMAIN", "CERT", "EXPIRES"
        );
        for r in routes {
            let expires = r["certificate_expires"]
                .as_i64()
                .map(|t| model::cron::Moment::from_unix(t.max(0) as u64).date())
                .unwrap_or_else(|| "-".to_owned());
            let about = [r["issuer"].as_str(), r["acme_error"].as_str()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ");
            println!(
                "{:<32} {:<8} {:<12} {}",
                s(&r["domain"]),
                r["certificate"].as_str().unwrap_or("default"),
                expires,
                about
            );
        }
    }
    let site = &status["site"];
    if site.is_object() {
        let lim = |v: &serde_json::Value| {
            v.as_u64()
                .map(|n| n.to_string())
                .unwrap_or_else(|| "no limit".into())
        };
        println!(
            "site: memory {} of {} bytes, {} of {} tasks, {} OOM kill(s)",
            site["memory"],
            lim(&site["memory_limit"]),
            site["pids"],
            lim(&site["pids_limit"]),
            site["oom_kills"]
        );
    }
}
