//! Metrics text: OpenMetrics (what `prometheus-client` writes) turned into
//! Prometheus's own text format 0.0.4 for clients that did not ask for
//! OpenMetrics (`promtool`, older servers). Shared by the emperor and the
//! router.

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of Prometheus's own text format (0.0.4).
pub const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|v| v.contains("application/openmetrics-text"))
}

/// OpenMetrics text as Prometheus's text format 0.0.4, for a client that did
/// not ask for OpenMetrics (`promtool`, older servers): a counter family's
/// HELP and TYPE name its `_total` samples, and the UNIT and EOF lines go.
pub fn prometheus_text(open: &str) -> String {
    let counters: Vec<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len());
    for l in open.lines() {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .iter()
            .find_map(|p| l.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(&name) {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                };
                out.push_str(&format!("{p}{name} {tail}"));
            }
            None => out.push_str(l),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn counters_name_their_total_in_prometheus_text() {
        let open = "# HELP x_restarts Restarts.\n# TYPE x_restarts counter\nx_restarts_total{v=\"a\"} 1.0\n\
                    # HELP x_mem Memory.\n# TYPE x_mem gauge\n# UNIT x_mem bytes\nx_mem{v=\"a\"} 5\n# EOF\n";
        assert_eq!(
            super::prometheus_text(open),
            "# HELP x_restarts_total Restarts.\n# TYPE x_restarts_total counter\nx_restarts_total{v=\"a\"} 1.0\n\
             # HELP x_mem Memory.\n# TYPE x_mem gauge\nx_mem{v=\"a\"} 5\n"
        );
    }
}
