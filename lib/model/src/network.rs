//! The address plan: every site and group gets an IPv4 address from the
//! emperor's pool and an IPv6 address in its ULA prefix, given once and kept
//! across restarts (recorded in the state directory, like uids).
//!
//! The pool is cut into blocks of 256 addresses, after srvctl's plan: block 0
//! holds the host (`.0.1`, every site's gateway) and admin sites; a group
//! gets blocks of its own, its container at `.1` of its first block and its
//! sites after it. So with the default pool, `10.199.3.7` is the 6th site of
//! the group that owns block 3, and its IPv6 address is `<prefix>::3:7`.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::journal::{invalid, Journal, Journaled};

/// The default IPv4 pool.
pub const DEFAULT_POOL: &str = "10.199.0.0/16";
/// The default IPv6 prefix (a ULA; `fd69:6d70:6572` spells "imper").
pub const DEFAULT_POOL6: &str = "fd69:6d70:6572::/64";
/// Blocks per bridge on a host whose address table was made before the
/// layout was recorded in it: a Linux bridge takes 1,023 ports
/// (`BR_MAX_PORTS`, measured: the 1,024th is refused with EXFULL), and four
/// blocks hold at most 4 × 254 vassals. A new table puts one block on each
/// bridge: adding a port (and bringing it up) walks every port of its
/// bridge, so a bridge of 254 ports costs a start a quarter of one of 1,016.
pub const OLD_BLOCKS_PER_BRIDGE: u32 = 4;
const _: () = assert!(
    OLD_BLOCKS_PER_BRIDGE * 254 < 1023,
    "more vassals than a bridge's ports"
);

fn old_blocks_per_bridge() -> u32 {
    OLD_BLOCKS_PER_BRIDGE
}

/// What every bridge's name starts with: links of the host named so are
/// the emperor's (the firewall matches them by this prefix).
pub const BRIDGE_PREFIX: &str = "imperium";

/// The name of the host's bridge number `k` (`imperium0`, `imperium1`, ...).
pub fn bridge_name(k: u32) -> String {
    format!("{BRIDGE_PREFIX}{k}")
}

/// How many `egress` entries one file may list.
pub const EGRESS_MAX: usize = 64;

/// One `[network] egress` entry: a destination network and maybe one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Egress {
    /// The network's address (host bits zero).
    pub addr: std::net::IpAddr,
    /// Its prefix length.
    pub len: u8,
    /// One port (TCP and UDP), or any.
    pub port: Option<u16>,
}

impl Egress {
    /// Parses `203.0.113.0/24:443`, `198.51.100.7`, `[2001:db8::/32]:443`, `2001:db8::1`.
    pub fn parse(s: &str) -> Result<Egress, String> {
        let bad = |why: &str| Err(format!("{s:?}: {why}"));
        let (net, port) = if let Some(rest) = s.strip_prefix('[') {
            let Some((net, tail)) = rest.split_once(']') else {
                return bad("a '[' without its ']'");
            };
            match tail.strip_prefix(':') {
                Some(p) => (net, Some(p)),
                None if tail.is_empty() => (net, None),
                None => return bad("expected :PORT after ']'"),
            }
        } else if s.matches(':').count() > 1 {
            (s, None) // a bare IPv6 network
        } else {
            match s.split_once(':') {
                Some((n, p)) => (n, Some(p)),
                None => (s, None),
            }
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => Some(n),
                _ => return bad("the port must be 1 to 65535"),
            },
        };
        let (addr, len) = match net.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (net, None),
        };
        let Ok(addr) = addr.parse::<std::net::IpAddr>() else {
            return bad("not an IP address (names are not resolved here)");
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return bad("bad prefix length"),
            },
        };
        let host_bits_zero = match addr {
            std::net::IpAddr::V4(a) => len == 32 || u32::from(a) & (u32::MAX >> len) == 0,
            std::net::IpAddr::V6(a) => len == 128 || u128::from(a) & (u128::MAX >> len) == 0,
        };
        if !host_bits_zero {
            return bad("host bits are set");
        }
        Ok(Egress { addr, len, port })
    }
}

/// An IPv4 pool and an IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// The pool's first address (host bits zero).
    pub base: Ipv4Addr,
    /// Its prefix length, 8 to 24.
    pub prefix: u8,
    /// The IPv6 prefix (a /64 at most: block and host fill the last 32 bits).
    pub base6: Option<(Ipv6Addr, u8)>,
    /// Blocks on each bridge: 1, 2 or 4 (the address table's
    /// [`AddressTable::blocks_per_bridge`]).
    pub per_bridge: u32,
}

impl Pool {
    /// Parses `A.B.C.D/N` (N from 8 to 24, host bits zero).
    pub fn parse(v4: &str, v6: Option<&str>) -> Result<Pool, String> {
        let (addr, len) = v4
            .split_once('/')
            .ok_or_else(|| format!("{v4}: not an address/prefix"))?;
        let base: Ipv4Addr = addr.parse().map_err(|_| format!("{v4}: bad address"))?;
        let prefix: u8 = len.parse().map_err(|_| format!("{v4}: bad prefix"))?;
        if !(8..=24).contains(&prefix) {
            return Err(format!("{v4}: the prefix must be from /8 to /24"));
        }
        if u32::from(base) & (u32::MAX >> prefix) != 0 {
            return Err(format!("{v4}: host bits are set"));
        }
        let base6 = match v6 {
            None => None,
            Some(s) => {
                let (addr, len) = s
                    .split_once('/')
                    .ok_or_else(|| format!("{s}: not an address/prefix"))?;
                let a: Ipv6Addr = addr.parse().map_err(|_| format!("{s}: bad address"))?;
                let n: u8 = len.parse().map_err(|_| format!("{s}: bad prefix"))?;
                if !(48..=96).contains(&n) {
                    return Err(format!("{s}: the prefix must be from /48 to /96"));
                }
                if u128::from(a) & (u128::MAX >> n) != 0 {
                    return Err(format!("{s}: host bits are set"));
                }
                Some((a, n))
            }
        };
        Ok(Pool {
            base,
            prefix,
            base6,
            per_bridge: 1,
        })
    }

    /// How many blocks of 256 the pool holds.
    pub fn blocks(&self) -> u32 {
        1 << (24 - self.prefix)
    }

    /// The IPv4 address at `offset` (block × 256 + host).
    pub fn v4(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + offset)
    }

    /// The IPv6 address at `offset`: `<prefix>::<block>:<host>`.
    pub fn v6(&self, offset: u32) -> Option<Ipv6Addr> {
        self.base6.map(|(a, _)| {
            let block = offset >> 8;
            let host = offset & 0xff;
            Ipv6Addr::from(u128::from(a) | (u128::from(block) << 16) | u128::from(host))
        })
    }

    /// The bridge of the vassal at `offset`.
    pub fn bridge_of(&self, offset: u32) -> u32 {
        (offset >> 8) / self.per_bridge
    }

    /// The addresses of bridge `k`, IPv4 and IPv6 (if any), each with its
    /// prefix length: the host routes them to that bridge.
    pub fn bridge_range(&self, k: u32) -> (Ipv4Addr, u8, Option<(Ipv6Addr, u8)>) {
        let first = k * self.per_bridge * 256;
        // A block is a /24 in IPv4 and 16 bits in IPv6; n blocks, log2(n) more.
        let bits = self.per_bridge.trailing_zeros() as u8;
        (
            self.v4(first),
            (24 - bits).max(self.prefix),
            self.v6(first).map(|a| (a, 128 - 16 - bits)),
        )
    }

    /// The host's own address: every site's gateway.
    pub fn gateway(&self) -> u32 {
        1
    }

    /// What the vassal at `offset` is given.
    pub fn assigned(&self, offset: u32) -> Assigned {
        Assigned {
            offset,
            v4: self.v4(offset),
            v6: self.v6(offset),
            gateway: self.v4(self.gateway()),
        }
    }

    /// The pool as `A.B.C.D/N`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.base, self.prefix)
    }
}

/// A vassal's place in the pool and what follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assigned {
    /// Block × 256 + host.
    pub offset: u32,
    /// Its IPv4 address.
    pub v4: Ipv4Addr,
    /// Its IPv6 address, when the pool has a prefix.
    pub v6: Option<Ipv6Addr>,
    /// The host's address: the gateway and the resolver.
    pub gateway: Ipv4Addr,
}

/// The recorded addresses: which group owns each block, and each vassal's offset.
///
/// On disk like the uid table (see [`crate::journal`]): a snapshot
/// (`addresses.json`) and the additions since in `addresses.log`, one line
/// each: `b <block> <group>` (the group empty for the admin) and
/// `v <offset> <name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddressTable {
    /// Schema version (1).
    pub schema_version: u32,
    /// Block → owning group ("" for the host and admin sites).
    pub blocks: BTreeMap<u32, String>,
    /// Vassal name → offset in the pool.
    pub vassals: BTreeMap<String, u32>,
    /// Blocks on each bridge ([`Pool::per_bridge`]): 1 for a table made
    /// new, 4 for one made before the layout was recorded (its running
    /// sites' ports are where that layout put them).
    #[serde(default = "old_blocks_per_bridge")]
    pub blocks_per_bridge: u32,
    /// Every offset of `vassals` (so that an allocation does not gather them).
    #[serde(skip)]
    taken: BTreeSet<u32>,
    /// Additions not yet on disk, as journal lines.
    #[serde(skip)]
    unsaved: String,
    /// The journal beside the snapshot.
    #[serde(skip)]
    journal: Journal,
}

impl Default for AddressTable {
    /// A table made new: one block a bridge.
    fn default() -> AddressTable {
        AddressTable {
            schema_version: 1,
            blocks: BTreeMap::new(),
            vassals: BTreeMap::new(),
            blocks_per_bridge: 1,
            taken: BTreeSet::new(),
            unsaved: String::new(),
            journal: Journal::default(),
        }
    }
}

impl Journaled for AddressTable {
    /// The snapshot's layout must be one the pool knows and no offset may
    /// be given twice; a journal line that gives a block to another group,
    /// a name another offset or an offset to two names is refused.
    fn replay(&mut self, path: &Path, lines: Vec<(usize, String)>) -> io::Result<()> {
        if ![1, 2, 4].contains(&self.blocks_per_bridge) {
            return Err(invalid(format!(
                "{}: blocksPerBridge must be 1, 2 or 4",
                path.display()
            )));
        }
        self.schema_version = 1;
        self.taken = self.vassals.values().copied().collect();
        if self.taken.len() != self.vassals.len() {
            return Err(invalid(format!(
                "{}: an offset given twice",
                path.display()
            )));
        }
        for (n, text) in lines {
            let bad = || invalid(format!("address journal line {n}: {text:?}"));
            let mut parts = text.splitn(3, ' ');
            let (Some(kind), Some(number), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            let number: u32 = number.parse().map_err(|_| bad())?;
            match kind {
                "b" => match self.blocks.get(&number) {
                    Some(owner) if owner == name => {}
                    Some(_) => return Err(bad()),
                    None => {
                        self.blocks.insert(number, name.to_owned());
                    }
                },
                "v" if !name.is_empty() => match self.vassals.get(name) {
                    Some(&known) if known == number => {}
                    Some(_) => return Err(bad()),
                    None if !self.taken.insert(number) => return Err(bad()),
                    None => {
                        self.vassals.insert(name.to_owned(), number);
                    }
                },
                _ => return Err(bad()),
            }
        }
        Ok(())
    }

    fn journal(&mut self) -> &mut Journal {
        &mut self.journal
    }

    fn unsaved(&mut self) -> &mut String {
        &mut self.unsaved
    }
}

impl AddressTable {
    /// The offset of `name` (a site or group), owned by `group` ("" for the
    /// admin), allocating one if it has none. Returns the offset and whether
    /// the table changed (and must be committed before the address is used).
    /// A group's own container takes its first block's `.1`.
    pub fn allocate(&mut self, pool: &Pool, name: &str, group: &str) -> io::Result<(u32, bool)> {
        if let Some(off) = self.vassals.get(name) {
            return Ok((*off, false));
        }
        self.schema_version = 1;
        // The host's block is always the admin's.
        if !self.blocks.contains_key(&0) {
            self.add_block(0, "");
        }
        let first_host = |block: u32| if block == 0 { 2 } else { 1 };
        let free = self
            .blocks
            .iter()
            .filter(|(block, owner)| *owner == group && **block < pool.blocks())
            .find_map(|(block, _)| {
                (first_host(*block)..=254)
                    .map(|h| block * 256 + h)
                    .find(|o| !self.taken.contains(o))
            });
        let off = match free {
            Some(off) => off,
            None => {
                let block = (1..pool.blocks())
                    .find(|b| !self.blocks.contains_key(b))
                    .ok_or_else(|| {
                        io::Error::other(format!("address pool {} exhausted", pool.cidr()))
                    })?;
                self.add_block(block, group);
                block * 256 + first_host(block)
            }
        };
        self.vassals.insert(name.to_owned(), off);
        self.taken.insert(off);
        self.unsaved.push_str(&format!("v {off} {name}\n"));
        Ok((off, true))
    }

    fn add_block(&mut self, block: u32, group: &str) {
        self.blocks.insert(block, group.to_owned());
        self.unsaved.push_str(&format!("b {block} {group}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Pool {
        Pool::parse(DEFAULT_POOL, Some(DEFAULT_POOL6)).unwrap()
    }

    #[test]
    fn readable_stable_and_per_group_blocks() {
        let p = pool();
        let mut t = AddressTable::default();
        let (a, new) = t.allocate(&p, "site1", "").unwrap();
        assert!(new);
        assert_eq!(p.v4(a), "10.199.0.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(p.v4(p.gateway()).to_string(), "10.199.0.1");
        let (g, _) = t.allocate(&p, "reseller", "reseller").unwrap();
        assert_eq!(p.v4(g).to_string(), "10.199.1.1", "a group's container");
        let (s, _) = t.allocate(&p, "shop", "reseller").unwrap();
        assert_eq!(p.v4(s).to_string(), "10.199.1.2");
        assert_eq!(p.v6(s).unwrap().to_string(), "fd69:6d70:6572::1:2");
        assert_eq!(t.allocate(&p, "site1", "").unwrap(), (a, false), "stable");
        let (other, _) = t.allocate(&p, "x", "other").unwrap();
        assert_eq!(p.v4(other).to_string(), "10.199.2.1");
        // Through the file, as after an emperor restart.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("addresses.json");
        t.save(&path).unwrap();
        let mut back = AddressTable::load(&path).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.allocate(&p, "shop", "reseller").unwrap(), (s, false));
    }

    #[test]
    fn a_new_address_is_appended_and_contradictions_are_refused() {
        let p = pool();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("addresses.json");
        let log = dir.path().join("addresses.log");
        let mut t = AddressTable::open(&path).unwrap();
        t.allocate(&p, "site1", "").unwrap();
        t.save(&path).unwrap();
        let snapshot = std::fs::read(&path).unwrap();
        t.allocate(&p, "shop", "reseller").unwrap();
        t.commit(&path).unwrap();
        t.allocate(&p, "site2", "").unwrap();
        t.commit(&path).unwrap();
        t.commit(&path).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            snapshot,
            "the snapshot untouched"
        );
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "b 1 reseller\nv 257 shop\nv 3 site2\n"
        );
        let content = |t: &AddressTable| (t.blocks.clone(), t.vassals.clone(), t.taken.clone());
        assert_eq!(content(&AddressTable::load(&path).unwrap()), content(&t));
        // The next start folds the journal in; a crash's torn line is left out.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .map(|mut f| std::io::Write::write_all(&mut f, b"v 4 torn").unwrap())
            .unwrap();
        let mut again = AddressTable::open(&path).unwrap();
        assert!(!log.exists());
        assert_eq!(content(&again), content(&t));
        assert_eq!(again.allocate(&p, "torn", "").unwrap(), (4, true));
        // Lines that cannot be true make the table fail to load, loudly.
        for bad in [
            "v 5 site1\n",   // site1 is at 2
            "v 2 other\n",   // 2 is site1's
            "b 1 someone\n", // block 1 is reseller's
            "v 9\n",
            "x 1 a\n",
            "v x a\n",
            "v 6 \n",
        ] {
            std::fs::write(&log, bad).unwrap();
            let err = AddressTable::load(&path).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
    }

    #[test]
    fn a_full_block_spills_into_a_new_one_and_the_pool_ends() {
        let p = Pool::parse("10.0.0.0/23", None).unwrap();
        assert_eq!(p.blocks(), 2);
        let mut t = AddressTable::default();
        for i in 0..253 {
            t.allocate(&p, &format!("a{i}"), "").unwrap();
        }
        let (next, _) = t.allocate(&p, "g", "g").unwrap();
        assert_eq!(p.v4(next).to_string(), "10.0.1.1");
        let e = t.allocate(&p, "spill", "").unwrap_err();
        assert!(e.to_string().contains("exhausted"), "{e}");
        assert_eq!(p.v6(next), None);
    }

    #[test]
    fn one_block_a_bridge_on_a_new_table_four_on_an_old_one() {
        let p = pool();
        assert_eq!(p.bridge_of(255 * 256 + 254), 255, "256 bridges");
        assert_eq!((p.bridge_of(2), p.bridge_of(5 * 256 + 7)), (0, 5));
        let (v4, len, v6) = p.bridge_range(5);
        assert_eq!((v4.to_string(), len), ("10.199.5.0".into(), 24));
        assert_eq!(v6.unwrap(), ("fd69:6d70:6572::5:0".parse().unwrap(), 112));
        // The table says which: a new one 1, one from before the field 4.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("addresses.json");
        assert_eq!(AddressTable::open(&path).unwrap().blocks_per_bridge, 1);
        std::fs::write(
            &path,
            r#"{"schemaVersion":1,"blocks":{"0":""},"vassals":{}}"#,
        )
        .unwrap();
        let mut old = AddressTable::open(&path).unwrap();
        assert_eq!(old.blocks_per_bridge, 4);
        old.save(&path).unwrap();
        assert_eq!(
            AddressTable::load(&path).unwrap().blocks_per_bridge,
            4,
            "kept"
        );
        std::fs::write(
            &path,
            r#"{"schemaVersion":1,"blocks":{},"vassals":{},"blocksPerBridge":3}"#,
        )
        .unwrap();
        assert!(AddressTable::load(&path).is_err());
    }

    #[test]
    fn four_blocks_a_bridge_each_with_its_routes() {
        let mut p = pool();
        p.per_bridge = 4;
        assert_eq!((p.bridge_of(2), p.bridge_of(3 * 256 + 254)), (0, 0));
        assert_eq!(
            (p.bridge_of(4 * 256 + 1), p.bridge_of(255 * 256 + 254)),
            (1, 63)
        );
        let (v4, len, v6) = p.bridge_range(1);
        assert_eq!((v4.to_string(), len), ("10.199.4.0".into(), 22));
        let (v6, len6) = v6.unwrap();
        assert_eq!((v6.to_string(), len6), ("fd69:6d70:6572::4:0".into(), 110));
        // Every address of the bridge's blocks is inside its routes, none of the next.
        let inside =
            |a: std::net::Ipv6Addr| u128::from(a) >> (128 - len6) == u128::from(v6) >> (128 - len6);
        assert!(inside(p.v6(7 * 256 + 254).unwrap()));
        assert!(!inside(p.v6(8 * 256 + 1).unwrap()));
        // A small pool: one bridge, its route the pool's own.
        let mut small = Pool::parse("10.0.0.0/23", None).unwrap();
        small.per_bridge = 4;
        assert_eq!(small.bridge_of(256 + 254), 0);
        assert_eq!(small.bridge_range(0).1, 23);
    }

    #[test]
    fn egress_entries() {
        let ok = |s: &str| Egress::parse(s).unwrap();
        assert_eq!(ok("203.0.113.0/24:443").port, Some(443));
        assert_eq!(ok("198.51.100.7").len, 32);
        assert_eq!(ok("[2001:db8::/32]:443").len, 32);
        assert_eq!(ok("2001:db8::1").port, None);
        assert_eq!(ok("0.0.0.0/0:53").len, 0);
        for bad in [
            "x.test:443",
            "10.0.0.1/24",
            "10.0.0.0/33",
            "10.0.0.0/8:0",
            "[::1",
            "1.2.3.4:http",
        ] {
            assert!(Egress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pools_are_checked() {
        for bad in [
            "10.0.0.0",
            "10.0.0.1/16",
            "10.0.0.0/25",
            "10.0.0.0/7",
            "x/16",
        ] {
            assert!(Pool::parse(bad, None).is_err(), "{bad}");
        }
        assert!(Pool::parse(DEFAULT_POOL, Some("fd00::1/64")).is_err());
        assert!(Pool::parse(DEFAULT_POOL, Some("fd00::/120")).is_err());
    }
}
