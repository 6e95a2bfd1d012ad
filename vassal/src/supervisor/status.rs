//! The rows of `vassal status`.

use super::*;
use crate::lifecycle::SubState;

#[derive(Debug, Serialize)]
pub(super) struct Row {
    name: String,
    kind: &'static str,
    state: State,
    pid: Option<i32>,
    uptime_secs: Option<f64>,
    started_at_us: Option<u64>,
    restarts: u32,
    memory: Option<u64>,
    cpu_secs: Option<f64>,
    last_exit: Option<String>,
    reason: Option<String>,
    schedule: Option<String>,
    next_run: Option<u64>,
    skipped: u32,
    /// The socket the running instance listens on.
    socket: Option<String>,
    subscriptions: Vec<SubState>,
}

/// Resident memory (bytes) and CPU time (seconds) of a process, from /proc.
pub(super) fn proc_usage(pid: i32) -> (Option<u64>, Option<f64>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let cpu = stat.rfind(')').and_then(|i| {
        let f: Vec<&str> = stat[i + 1..].split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100);
        Some(ticks as f64 / hz as f64)
    });
    (rss, cpu)
}

impl Supervisor {
    pub(super) fn status(&self) -> Vec<Row> {
        let now = self.clock.now().at;
        let mut rows: Vec<Row> = self
            .procs
            .iter()
            .map(|(n, p)| {
                let (memory, cpu) = p.pid.map(proc_usage).unwrap_or((None, None));
                Row {
                    name: n.to_string(),
                    kind: if p.spec.schedule.is_some() {
                        "job"
                    } else {
                        "process"
                    },
                    state: p.state,
                    pid: p.pid,
                    uptime_secs: p.pid.and(p.started).map(|s| {
                        (now.saturating_duration_since(s).as_secs_f64() * 10.0).round() / 10.0
                    }),
                    started_at_us: p.pid.and(p.started_at_us),
                    restarts: p.restarts,
                    memory,
                    cpu_secs: cpu,
                    last_exit: p.last_exit.clone(),
                    reason: match &p.next {
                        Some(next) => Some(format!(
                            "handing over to a new instance (pid {}) once it accepts on {}",
                            next.pid, next.socket
                        )),
                        None => p.reason.clone(),
                    },
                    schedule: p.spec.schedule.as_ref().map(|s| s.to_string()),
                    next_run: p.next_run,
                    skipped: p.skipped,
                    socket: p.pid.and(p.socket.clone()),
                    subscriptions: p.subs.clone(),
                }
            })
            .collect();
        for (n, why) in &self.rejected {
            rows.push(Row {
                name: n.to_string(),
                kind: "process",
                state: State::Rejected,
                pid: None,
                uptime_secs: None,
                started_at_us: None,
                restarts: 0,
                memory: None,
                cpu_secs: None,
                last_exit: None,
                reason: Some(why.clone()),
                schedule: None,
                next_run: None,
                skipped: 0,
                socket: None,
                subscriptions: Vec::new(),
            });
        }
        rows
    }
}
