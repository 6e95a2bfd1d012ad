//! The host side of the sites' network: the bridge, the address plan, and the
//! firewall (one nftables table, `inet imperium`, owned by the emperor).
//!
//! Every site's namespace gets `eth0`, one end of a veth pair whose host end
//! is an isolated port of the bridge (the kernel drops frames between two
//! isolated ports), an address from the pool, and a default route through
//! the host. The table masquerades the pool's egress, refuses traffic from
//! the outside and from another site (routed back through the host), opens
//! the host to sites only on the admin's ports, refuses SMTP to sites not
//! allowed to send mail, and caps each site's tracked connections.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::sync::Mutex;

use model::network::{bridge_name, Pool, BRIDGE_PREFIX};
use serde_json::{json, Value};
use sys::net::{Netlink, SiteLink};

/// The emperor's table.
pub const TABLE: &str = "imperium";
/// Outbound ports that need `[network] smtp = true`.
pub const SMTP_PORTS: [u16; 3] = [25, 465, 587];
/// Connections one site may have tracked at once (default).
pub const SITE_CONNECTIONS: u32 = 2048;

/// What the admin chose.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The address pool.
    pub pool: Pool,
    /// Host TCP ports sites may reach (a database, say).
    pub host_ports: Vec<u16>,
    /// Connections one site may have tracked at once.
    pub site_connections: u32,
}

/// The host's bridge and firewall, made or taken over at start.
pub struct HostNet {
    settings: Settings,
    host: Mutex<Netlink>,
    /// The bridges made so far (number → link index); the first at start,
    /// the others when a vassal of theirs first starts.
    bridges: Mutex<BTreeMap<u32, u32>>,
    /// The addresses allowed SMTP, as last applied.
    smtp: Mutex<Option<BTreeSet<IpAddr>>>,
    /// Each narrowed vassal's egress list, by offset, as last applied.
    egress: Mutex<Option<Egress>>,
}

/// Vassals whose egress is narrowed: offset → (its addresses, the list).
pub type Egress = BTreeMap<u32, (Vec<IpAddr>, Vec<model::network::Egress>)>;

impl std::fmt::Debug for HostNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostNet")
            .field("pool", &self.settings.pool.cidr())
            .finish()
    }
}

impl HostNet {
    /// Makes (or finds) the bridge with the host's addresses, turns IPv4
    /// forwarding on, and loads the table. The sites' own elements (who may
    /// send mail) stay as they were until the first [`HostNet::allow_smtp`],
    /// so a restart of the emperor leaves no gap.
    pub fn setup(settings: Settings) -> anyhow::Result<HostNet> {
        use anyhow::Context;
        let mut host = Netlink::open().context("opening rtnetlink")?;
        let first = bridge_name(0);
        let bridge = host
            .ensure_bridge(&first)
            .with_context(|| format!("making the bridge {first}"))?;
        let pool = settings.pool;
        let gw = pool.gateway();
        host.add_address(bridge, IpAddr::V4(pool.v4(gw)), pool.prefix)
            .context("the bridge's IPv4 address")?;
        if let (Some(v6), Some((_, n))) = (pool.v6(gw), pool.base6) {
            host.add_address(bridge, IpAddr::V6(v6), n)
                .context("the bridge's IPv6 address")?;
        }
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .context("turning IPv4 forwarding on")?;
        let exists = nftables::helper::get_current_ruleset_raw(
            None::<&str>,
            ["list", "table", "inet", TABLE],
        )
        .is_ok();
        nft(&ruleset(&settings, !exists)).context("loading the firewall table")?;
        Ok(HostNet {
            settings,
            host: Mutex::new(host),
            bridges: Mutex::new(BTreeMap::from([(0, bridge)])),
            smtp: Mutex::new(None),
            egress: Mutex::new(None),
        })
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.settings.pool
    }

    /// The link of the vassal at `offset` in the pool.
    pub fn link(&self, offset: u32) -> SiteLink {
        let pool = &self.settings.pool;
        SiteLink {
            host_name: format!("imp{offset:x}"),
            v4: (pool.v4(offset), pool.prefix),
            gateway4: pool.v4(pool.gateway()),
            v6: match (pool.v6(offset), pool.v6(pool.gateway()), pool.base6) {
                (Some(a), Some(gw), Some((_, n))) => Some((a, n, gw)),
                _ => None,
            },
        }
    }

    /// Gives the namespace `ns` the vassal's `eth0`.
    pub fn attach(&self, ns: BorrowedFd<'_>, offset: u32) -> std::io::Result<()> {
        let mut host = self
            .host
            .lock()
            .map_err(|_| std::io::Error::other("netlink lock poisoned"))?;
        let k = self.settings.pool.bridge_of(offset);
        let mut bridges = self
            .bridges
            .lock()
            .map_err(|_| std::io::Error::other("bridges lock poisoned"))?;
        let bridge = match bridges.get(&k) {
            Some(b) => *b,
            None => {
                let b = self.more_bridge(&mut host, k)?;
                bridges.insert(k, b);
                b
            }
        };
        drop(bridges);
        sys::net::attach_site(&mut host, bridge, ns, &self.link(offset))
    }

    /// Bridge `k` (beyond the first): the host's gateway addresses on it
    /// too (the sites' gateway is the same everywhere), and routes to its
    /// blocks, more precise than the pool's route through the first.
    fn more_bridge(&self, host: &mut Netlink, k: u32) -> std::io::Result<u32> {
        let pool = &self.settings.pool;
        let name = bridge_name(k);
        let bridge = host.ensure_bridge(&name)?;
        let gw = pool.gateway();
        host.add_address(bridge, IpAddr::V4(pool.v4(gw)), 32)?;
        let (v4, v4_len, v6) = pool.bridge_range(k);
        host.add_link_route(bridge, IpAddr::V4(v4), v4_len)?;
        if let (Some(gw6), Some((v6, v6_len))) = (pool.v6(gw), v6) {
            host.add_address(bridge, IpAddr::V6(gw6), 128)?;
            host.add_link_route(bridge, IpAddr::V6(v6), v6_len)?;
        }
        tracing::info!(bridge = %name, "a bridge for the next blocks of the pool");
        Ok(bridge)
    }

    /// Makes `allowed` the addresses that may send mail (one atomic change,
    /// only when it differs from the last one).
    pub fn allow_smtp(&self, allowed: BTreeSet<IpAddr>) -> anyhow::Result<()> {
        let mut last = self
            .smtp
            .lock()
            .map_err(|_| anyhow::anyhow!("smtp lock poisoned"))?;
        if last.as_ref() == Some(&allowed) {
            return Ok(());
        }
        nft(&smtp_elements(&allowed))?;
        *last = Some(allowed);
        Ok(())
    }
}

impl HostNet {
    /// Makes `want` the narrowed egress lists (one atomic change, only when
    /// it differs from the last one).
    pub fn set_egress(&self, want: Egress) -> anyhow::Result<()> {
        let mut last = self
            .egress
            .lock()
            .map_err(|_| anyhow::anyhow!("egress lock poisoned"))?;
        if last.as_ref() == Some(&want) {
            return Ok(());
        }
        // After a restart the old chains are not known: every chain of ours
        // not wanted now goes.
        let known: BTreeSet<u32> = match last.as_ref() {
            Some(l) => l.keys().copied().collect(),
            None => existing_egress_chains(),
        };
        nft(&egress_elements(&known, &want))?;
        *last = Some(want);
        Ok(())
    }
}

/// The per-vassal egress chains the table holds now (by offset).
fn existing_egress_chains() -> BTreeSet<u32> {
    let Ok(text) =
        nftables::helper::get_current_ruleset_raw(None::<&str>, ["list", "chains", "inet"])
    else {
        return BTreeSet::new();
    };
    let Ok(v) = serde_json::from_str::<Value>(&text) else {
        return BTreeSet::new();
    };
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["chain"]["table"] == TABLE)
        .filter_map(|c| {
            c["chain"]["name"]
                .as_str()?
                .strip_prefix("egress-")
                .map(str::to_owned)
        })
        .filter_map(|hex| u32::from_str_radix(&hex, 16).ok())
        .collect()
}

fn egress_chain(offset: u32) -> String {
    format!("egress-{offset:x}")
}

/// The egress maps' new contents and the chains they jump to, in one transaction.
pub fn egress_elements(known: &BTreeSet<u32>, want: &Egress) -> Value {
    let mut cmds = Vec::new();
    for map in ["egress4", "egress6"] {
        cmds.push(json!({"flush": {"map": {"family": "inet", "table": TABLE, "name": map}}}));
    }
    for off in known.iter().filter(|o| !want.contains_key(o)) {
        let name = egress_chain(*off);
        cmds.push(json!({"flush": {"chain": {"family": "inet", "table": TABLE, "name": name}}}));
        cmds.push(json!({"delete": {"chain": {"family": "inet", "table": TABLE, "name": name}}}));
    }
    for (off, (addrs, list)) in want {
        let name = egress_chain(*off);
        cmds.push(json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": name}}}));
        cmds.push(json!({"flush": {"chain": {"family": "inet", "table": TABLE, "name": name}}}));
        for e in list {
            let proto = if e.addr.is_ipv4() { "ip" } else { "ip6" };
            let mut expr = vec![json!({"match": {"op": "==",
                "left": {"payload": {"protocol": proto, "field": "daddr"}},
                "right": {"prefix": {"addr": e.addr.to_string(), "len": e.len}}}})];
            if let Some(p) = e.port {
                expr.push(
                    json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}},
                    "right": {"set": ["tcp", "udp"]}}}),
                );
                expr.push(json!({"match": {"op": "==",
                    "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": p}}));
            }
            expr.push(json!({"accept": null}));
            cmds.push(rule(&name, expr));
        }
        cmds.push(rule(&name, vec![json!({"reject": null})]));
        for a in addrs {
            let map = if a.is_ipv4() { "egress4" } else { "egress6" };
            cmds.push(
                json!({"add": {"element": {"family": "inet", "table": TABLE, "name": map,
                "elem": [[a.to_string(), {"jump": {"target": name}}]]}}}),
            );
        }
    }
    json!({"nftables": cmds})
}

/// Runs one nftables transaction (all of it or nothing).
fn nft(batch: &Value) -> anyhow::Result<()> {
    nftables::helper::apply_ruleset_raw(
        &batch.to_string(),
        None::<&str>,
        std::iter::empty::<&str>(),
    )
    .map_err(|e| anyhow::anyhow!("nft: {e}"))?;
    Ok(())
}

/// Every bridge the pool may need (a bridge takes 1,023 ports: the pool's
/// sites are spread over several), matched by the prefix of their names:
/// one comparison whatever the pool's size, where a set of names grew the
/// table with the pool (a /8 named 65,536 bridges in each rule).
fn bridges() -> Value {
    json!(format!("{BRIDGE_PREFIX}*"))
}

/// Arriving from a site.
fn iif() -> Value {
    json!({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": bridges()}})
}

/// Leaving towards a site.
fn oif() -> Value {
    json!({"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": bridges()}})
}

fn ct_state(states: &[&str]) -> Value {
    json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": states}})
}

fn rule(chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": "inet", "table": TABLE, "chain": chain, "expr": expr}}})
}

fn chain(name: &str, kind: &str, hook: &str, prio: i32) -> Value {
    json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": name,
        "type": kind, "hook": hook, "prio": prio, "policy": "accept"}}})
}

fn set(name: &str, kind: &str, dynamic: bool) -> Value {
    let mut s = json!({"family": "inet", "table": TABLE, "name": name, "type": kind});
    if dynamic {
        s["size"] = json!(65535);
    }
    json!({"add": {"set": s}})
}

/// The whole table as one transaction: its chains emptied and filled again,
/// its sets made only with the table (`new`), then kept: the per-site
/// connection counts and the mail list survive an emperor restart.
pub fn ruleset(s: &Settings, new: bool) -> Value {
    let pool = &s.pool;
    let mut cmds = vec![json!({"add": {"table": {"family": "inet", "name": TABLE}}})];
    if new {
        cmds.push(set("smtp4", "ipv4_addr", false));
        cmds.push(set("smtp6", "ipv6_addr", false));
        cmds.push(set("conns4", "ipv4_addr", true));
        cmds.push(set("conns6", "ipv6_addr", true));
        for (name, kind) in [("egress4", "ipv4_addr"), ("egress6", "ipv6_addr")] {
            cmds.push(
                json!({"add": {"map": {"family": "inet", "table": TABLE, "name": name,
                "type": kind, "map": "verdict"}}}),
            );
        }
    }
    for (name, kind, hook, prio) in [
        ("prerouting", "filter", "prerouting", -150),
        ("input", "filter", "input", 0),
        ("forward", "filter", "forward", 0),
        ("postrouting", "nat", "postrouting", 100),
    ] {
        cmds.push(chain(name, kind, hook, prio));
        cmds.push(json!({"flush": {"chain": {"family": "inet", "table": TABLE, "name": name}}}));
    }
    // One site, at most this many tracked connections (new ones are dropped).
    for (set, proto) in [("@conns4", "ip"), ("@conns6", "ip6")] {
        cmds.push(rule(
            "prerouting",
            vec![
                iif(),
                ct_state(&["new"]),
                json!({"set": {"op": "add", "set": set,
                    "elem": {"payload": {"protocol": proto, "field": "saddr"}},
                    "stmt": [{"ct count": {"val": s.site_connections, "inv": true}}]}}),
                json!({"drop": null}),
            ],
        ));
    }
    // The host: answers to what it asked, the admin's ports, ping; nothing else.
    cmds.push(rule(
        "input",
        vec![
            iif(),
            ct_state(&["established", "related"]),
            json!({"accept": null}),
        ],
    ));
    if !s.host_ports.is_empty() {
        let ports: Vec<u16> = s.host_ports.clone();
        cmds.push(rule(
            "input",
            vec![
                iif(),
                json!({"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                    "right": {"set": ports}}}),
                json!({"accept": null}),
            ],
        ));
    }
    cmds.push(rule(
        "input",
        vec![
            iif(),
            json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}},
                "right": {"set": ["icmp", "ipv6-icmp"]}}}),
            json!({"accept": null}),
        ],
    ));
    // The resolver on the bridge address (see configs/dnsmasq-imperium.conf).
    for proto in ["udp", "tcp"] {
        cmds.push(rule(
            "input",
            vec![
                iif(),
                json!({"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "dport"}},
                    "right": 53}}),
                json!({"accept": null}),
            ],
        ));
    }
    cmds.push(rule("input", vec![iif(), json!({"drop": null})]));
    // Into a site: only answers. (Sites meet only through the router.)
    cmds.push(rule(
        "forward",
        vec![
            oif(),
            ct_state(&["established", "related"]),
            json!({"accept": null}),
        ],
    ));
    cmds.push(rule("forward", vec![oif(), json!({"drop": null})]));
    // Mail only from the allowed.
    for (set, proto) in [("@smtp4", "ip"), ("@smtp6", "ip6")] {
        cmds.push(rule(
            "forward",
            vec![
                iif(),
                json!({"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                    "right": {"set": SMTP_PORTS}}}),
                json!({"match": {"op": "!=", "left": {"payload": {"protocol": proto, "field": "saddr"}},
                    "right": set}}),
                json!({"reject": {"type": "tcp reset"}}),
            ],
        ));
    }
    // A vassal with an egress list goes through its own chain (see `set_egress`).
    for (map, proto) in [("@egress4", "ip"), ("@egress6", "ip6")] {
        cmds.push(rule(
            "forward",
            vec![
                iif(),
                json!({"vmap": {"key": {"payload": {"protocol": proto, "field": "saddr"}}, "data": map}}),
            ],
        ));
    }
    // Out through the host's address.
    let mut nat = vec![(
        "ip",
        json!({"prefix": {"addr": pool.base.to_string(), "len": pool.prefix}}),
    )];
    if let Some((a, n)) = pool.base6 {
        nat.push(("ip6", json!({"prefix": {"addr": a.to_string(), "len": n}})));
    }
    for (proto, prefix) in nat {
        cmds.push(rule(
            "postrouting",
            vec![
                json!({"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "saddr"}},
                    "right": prefix}}),
                json!({"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": bridges()}}),
                json!({"masquerade": null}),
            ],
        ));
    }
    json!({"nftables": cmds})
}

/// The mail sets' new contents, in one transaction.
pub fn smtp_elements(allowed: &BTreeSet<IpAddr>) -> Value {
    let mut cmds = Vec::new();
    for (name, v6) in [("smtp4", false), ("smtp6", true)] {
        cmds.push(json!({"flush": {"set": {"family": "inet", "table": TABLE, "name": name}}}));
        let elems: Vec<String> = allowed
            .iter()
            .filter(|a| a.is_ipv6() == v6)
            .map(|a| a.to_string())
            .collect();
        if !elems.is_empty() {
            cmds.push(json!({"add": {"element": {"family": "inet", "table": TABLE,
                "name": name, "elem": elems}}}));
        }
    }
    json!({"nftables": cmds})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "root: run the README's test command"]
    fn root_the_kernel_accepts_the_table() {
        // `nft -c` checks a transaction against the kernel without applying it.
        let settings = Settings {
            pool: Pool::parse(
                model::network::DEFAULT_POOL,
                Some(model::network::DEFAULT_POOL6),
            )
            .unwrap(),
            host_ports: vec![3306, 5432],
            site_connections: SITE_CONNECTIONS,
        };
        let check = |v: &Value| {
            nftables::helper::apply_ruleset_raw(&v.to_string(), None::<&str>, ["-c"])
                .map_err(|e| e.to_string())
        };
        check(&ruleset(&settings, true)).unwrap();
    }

    #[test]
    fn the_table_is_the_same_size_for_any_pool() {
        // A /8 pool may need 65,536 bridges: naming each in every rule made
        // a table of 16 MB that took 1.6 s to load.
        let table = |cidr: &str| {
            let settings = Settings {
                pool: Pool::parse(cidr, None).unwrap(),
                host_ports: vec![3306],
                site_connections: SITE_CONNECTIONS,
            };
            ruleset(&settings, true).to_string()
        };
        let (small, big) = (table("10.0.0.0/24"), table("10.0.0.0/8"));
        assert_eq!(
            small.replace("\"len\":24", "\"len\":8"),
            big,
            "only the prefix differs"
        );
        assert!(!big.contains("imperium1\""), "no bridge named one by one");
        assert!(big.contains("\"imperium*\""));
    }
}
