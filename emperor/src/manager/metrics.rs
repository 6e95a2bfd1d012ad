//! Prometheus metrics (OpenMetrics text): each vassal's state, usage and
//! limits, read from the kernel at each scrape, and the emperor's own start
//! latency. Labels are the vassal, its kind and its group: bounded by the
//! vassals the host has, never by requests.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use super::*;

/// Start latency buckets: 1 ms to about 4 s.
pub(super) fn start_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 13))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Vassal {
    vassal: String,
    kind: String,
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VassalState {
    vassal: String,
    state: String,
}

impl Manager {
    /// The text `/metrics` answers.
    pub(super) fn metrics(&self) -> String {
        let mut reg = Registry::with_prefix("imperium");
        let gauge = family::<Gauge>;
        let up = gauge(&mut reg, "vassal_up", "1 when the vassal's init runs", None);
        let memory = gauge(
            &mut reg,
            "vassal_memory",
            "Memory in use",
            Some(Unit::Bytes),
        );
        let memory_limit = gauge(
            &mut reg,
            "vassal_memory_limit",
            "The memory limit",
            Some(Unit::Bytes),
        );
        let pids = gauge(&mut reg, "vassal_tasks", "Processes and threads", None);
        let pids_limit = gauge(&mut reg, "vassal_tasks_limit", "The pids limit", None);
        let storage = gauge(
            &mut reg,
            "vassal_storage",
            "Bytes on disk (where counted)",
            Some(Unit::Bytes),
        );
        let storage_limit = gauge(
            &mut reg,
            "vassal_storage_limit",
            "The storage cap the kernel enforces",
            Some(Unit::Bytes),
        );
        let cpu_limit = gauge(
            &mut reg,
            "vassal_cpu_limit_millicores",
            "The cpu limit",
            None,
        );
        let counter = family::<Counter<f64>>;
        let cpu = counter(&mut reg, "vassal_cpu", "CPU time used", Some(Unit::Seconds));
        let restarts = counter(&mut reg, "vassal_restarts", "Restarts of its init", None);
        let throttled = counter(
            &mut reg,
            "vassal_throttled_starts",
            "Starts the restart throttle delayed",
            None,
        );
        let ooms = counter(
            &mut reg,
            "vassal_oom_kills",
            "Processes killed for lack of memory",
            None,
        );
        let state = Family::<VassalState, Gauge>::default();
        reg.register(
            "vassal_state",
            "1 for the state the vassal is in (starting, running, suspended, stopped, failed)",
            state.clone(),
        );

        for (name, v) in &self.vassals {
            let l = Vassal {
                vassal: name.to_string(),
                kind: format!("{:?}", v.file.kind()).to_lowercase(),
                group: v
                    .group()
                    .map(|g| g.to_string())
                    .unwrap_or_else(|| name_if_group(name, &v.file)),
            };
            let s = match v.group() {
                Some(g) if self.suspended_groups.contains(g) && v.init.is_some() => {
                    State::Suspended
                }
                _ => v.life.state,
            };
            let s = serde_json::to_value(s)
                .ok()
                .and_then(|s| s.as_str().map(str::to_owned))
                .unwrap_or_default();
            state
                .get_or_create(&VassalState {
                    vassal: l.vassal.clone(),
                    state: s,
                })
                .set(1);
            up.get_or_create(&l).set(i64::from(v.init.is_some()));
            restarts
                .get_or_create(&l)
                .inc_by(f64::from(v.life.restarts));
            throttled
                .get_or_create(&l)
                .inc_by(f64::from(v.life.throttled));
            let limits = v.file.limits();
            if let Some(m) = limits.memory {
                memory_limit.get_or_create(&l).set(m.0 as i64);
            }
            if let Some(p) = limits.pids {
                pids_limit.get_or_create(&l).set(p as i64);
            }
            if let Some(c) = limits.cpu {
                cpu_limit.get_or_create(&l).set((c * 1000.0).round() as i64);
            }
            if v.init.is_none() {
                continue;
            }
            if let Ok(st) = self.tree.stats(&self.cgroup_of(name, v)) {
                memory.get_or_create(&l).set(st.memory as i64);
                pids.get_or_create(&l).set(st.pids as i64);
                if let Some(us) = st.cpu_usec {
                    cpu.get_or_create(&l).inc_by(us as f64 / 1e6);
                }
                if let Some(n) = st.oom_kills {
                    ooms.get_or_create(&l).inc_by(n as f64);
                }
            }
            if let Some(d) = self.storage_usage(name, v) {
                storage.get_or_create(&l).set(d.bytes as i64);
                if let Some(cap) = d.bytes_limit {
                    storage_limit.get_or_create(&l).set(cap as i64);
                }
            }
        }
        for (name, help, n) in [
            (
                "emperor_judgements",
                "Judgements of every vassal file against the others (a change, or a rescan that found one)",
                self.judged.whole,
            ),
            (
                "emperor_judgements_added",
                "Files under new names decided against the last judgement's claims, without judging every file again",
                self.judged.added,
            ),
            (
                "emperor_judgements_removed",
                "Running sites' files removed whose claims were released, without judging every file again",
                self.judged.removed,
            ),
            (
                "emperor_rescans_unchanged",
                "Periodic rescans that found the files, the host's users and the vassals as the last judgement left them, and judged nothing again",
                self.judged.unchanged,
            ),
        ] {
            let c = Counter::<u64>::default();
            c.inc_by(n);
            reg.register(name, help, c);
        }
        if self.cfg.cluster.is_some() {
            let c = &self.cluster_stats;
            let relaxed = std::sync::atomic::Ordering::Relaxed;
            for (name, help, v) in [
                (
                    "emperor_cluster_connected",
                    "1 while etcd answers this host's agent",
                    i64::from(c.connected.load(relaxed)),
                ),
                (
                    "emperor_cluster_revision",
                    "The etcd revision this host's admin directory matches",
                    c.revision.load(relaxed),
                ),
                (
                    "emperor_cluster_files",
                    "Vassal files the cluster places on this host",
                    c.files.load(relaxed) as i64,
                ),
                (
                    "emperor_cluster_conflicts",
                    "Files of the cluster not copied anywhere: their login or a domain is an earlier file's",
                    c.conflicts.load(relaxed) as i64,
                ),
                (
                    "emperor_cluster_waiting",
                    "Files placed on this host that another host still holds (its site not yet stopped there)",
                    c.waiting.load(relaxed) as i64,
                ),
            ] {
                let g = Gauge::<i64>::default();
                g.set(v);
                reg.register(name, help, g);
            }
            let lists = Counter::<u64>::default();
            lists.inc_by(c.lists.load(relaxed));
            reg.register(
                "emperor_cluster_lists",
                "Full listings of the cluster's files (at start, and after a compaction cancelled the watch)",
                lists,
            );
        }
        reg.register_with_unit(
            "emperor_start",
            "From a start's decision to its init running",
            Unit::Seconds,
            self.start_latency.clone(),
        );
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }
}

/// A family of one metric per vassal, registered (with its unit, if any).
fn family<M>(reg: &mut Registry, name: &str, help: &str, unit: Option<Unit>) -> Family<Vassal, M>
where
    M: Default,
    Family<Vassal, M>: prometheus_client::registry::Metric + Clone,
{
    let f = Family::<Vassal, M>::default();
    match unit {
        Some(u) => reg.register_with_unit(name, help, u, f.clone()),
        None => reg.register(name, help, f.clone()),
    }
    f
}

/// A group is its own group.
fn name_if_group(name: &Name, file: &VassalFile) -> String {
    match file {
        VassalFile::Group(_) => name.to_string(),
        VassalFile::Site(_) => String::new(),
    }
}
