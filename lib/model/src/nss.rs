//! The tenant table that the NSS module answers from: written atomically by
//! the emperor, read (often, by every process that resolves a name) without
//! parsing: binary search over fixed-size records.
//!
//! Layout, little endian:
//! ```text
//! magic  b"IMPNSS1\0"
//! count  u32, strings_len u32
//! records, sorted by name: count x { uid u32, name (off u32, len u32), home (off, len), shell (off, len) }
//! by_uid: count x u32, record indices sorted by uid
//! strings: strings_len bytes
//! digest: u64 FNV-1a of everything before it
//! ```
//! A reader checks the digest and every offset before it trusts the file, so a
//! torn or corrupt table reads as "unavailable", never as a wrong answer.

const MAGIC: &[u8; 8] = b"IMPNSS1\0";
const RECORD: usize = 28;

/// One tenant as NSS shows it (gid = uid: each tenant has its own group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Login name.
    pub name: String,
    /// uid and gid.
    pub uid: u32,
    /// Home directory (inside the container).
    pub home: String,
    /// Login shell.
    pub shell: String,
}

/// Builds the table's bytes.
pub fn encode(tenants: &[Tenant]) -> Vec<u8> {
    let mut t: Vec<&Tenant> = tenants.iter().collect();
    t.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    t.dedup_by(|a, b| a.name == b.name);
    let mut strings = Vec::new();
    let mut put = |s: &str| {
        let off = strings.len() as u32;
        strings.extend_from_slice(s.as_bytes());
        (off, s.len() as u32)
    };
    let mut records = Vec::with_capacity(t.len() * RECORD);
    for x in &t {
        let (no, nl) = put(&x.name);
        let (ho, hl) = put(&x.home);
        let (so, sl) = put(&x.shell);
        for v in [x.uid, no, nl, ho, hl, so, sl] {
            records.extend_from_slice(&v.to_le_bytes());
        }
    }
    let mut by_uid: Vec<u32> = (0..t.len() as u32).collect();
    by_uid.sort_by_key(|i| t[*i as usize].uid);
    let mut out = Vec::with_capacity(16 + records.len() + by_uid.len() * 4 + strings.len() + 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(t.len() as u32).to_le_bytes());
    out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
    out.extend_from_slice(&records);
    for i in by_uid {
        out.extend_from_slice(&i.to_le_bytes());
    }
    out.extend_from_slice(&strings);
    let d = fnv(&out);
    out.extend_from_slice(&d.to_le_bytes());
    out
}

fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// A checked view of a table's bytes.
#[derive(Debug, Clone, Copy)]
pub struct Table<'a> {
    count: usize,
    records: &'a [u8],
    by_uid: &'a [u8],
    strings: &'a [u8],
}

/// A tenant's entry, borrowed from the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Login name.
    pub name: &'a str,
    /// uid and gid.
    pub uid: u32,
    /// Home.
    pub home: &'a str,
    /// Shell.
    pub shell: &'a str,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Table<'a> {
    /// Checks `bytes` (magic, sizes, digest, every string in bounds and UTF-8,
    /// names sorted); `None` if anything is off.
    pub fn parse(bytes: &'a [u8]) -> Option<Table<'a>> {
        let t = Table::open(bytes)?;
        let (body, digest) = bytes.split_at(bytes.len() - 8);
        if fnv(body) != u64::from_le_bytes(digest.try_into().ok()?) {
            return None;
        }
        let mut prev: Option<&str> = None;
        for i in 0..t.count {
            let e = t.entry(i)?;
            if prev.is_some_and(|p| p.as_bytes() >= e.name.as_bytes()) {
                return None;
            }
            prev = Some(e.name);
            if u32_at(t.by_uid, i * 4)? as usize >= t.count {
                return None;
            }
        }
        Some(t)
    }

    /// Opens `bytes` checking only the header and sizes: O(1), for lookups in
    /// a table written atomically. Every access stays bounds-checked, so a
    /// damaged table gives "not found", never a crash; [`Table::parse`] checks
    /// everything.
    pub fn open(bytes: &'a [u8]) -> Option<Table<'a>> {
        if bytes.len() < 24 || &bytes[..8] != MAGIC {
            return None;
        }
        let body = &bytes[..bytes.len() - 8];
        let count = u32_at(body, 8)? as usize;
        let strings_len = u32_at(body, 12)? as usize;
        let rec_end = 16usize.checked_add(count.checked_mul(RECORD)?)?;
        let uid_end = rec_end.checked_add(count.checked_mul(4)?)?;
        if uid_end.checked_add(strings_len)? != body.len() {
            return None;
        }
        Some(Table {
            count,
            records: &body[16..rec_end],
            by_uid: &body[rec_end..uid_end],
            strings: &body[uid_end..],
        })
    }

    /// How many tenants.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn string(&self, rec: usize, field: usize) -> Option<&'a str> {
        let off = u32_at(self.records, rec * RECORD + 4 + field * 8)? as usize;
        let len = u32_at(self.records, rec * RECORD + 8 + field * 8)? as usize;
        std::str::from_utf8(self.strings.get(off..off.checked_add(len)?)?).ok()
    }

    /// The `i`-th entry in name order.
    pub fn entry(&self, i: usize) -> Option<Entry<'a>> {
        if i >= self.count {
            return None;
        }
        Some(Entry {
            uid: u32_at(self.records, i * RECORD)?,
            name: self.string(i, 0)?,
            home: self.string(i, 1)?,
            shell: self.string(i, 2)?,
        })
    }

    /// By login name: O(log n).
    pub fn by_name(&self, name: &str) -> Option<Entry<'a>> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let e = self.entry(mid)?;
            match e.name.as_bytes().cmp(name.as_bytes()) {
                std::cmp::Ordering::Equal => return Some(e),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }

    /// By uid (or gid): O(log n).
    pub fn by_uid(&self, uid: u32) -> Option<Entry<'a>> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let e = self.entry(u32_at(self.by_uid, mid * 4)? as usize)?;
            match e.uid.cmp(&uid) {
                std::cmp::Ordering::Equal => return Some(e),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }
}

/// The hosts table (`hosts.nss`): every vassal with an address, so that
/// `<name>.imperium` resolves on the host. The same layout and checks as the
/// tenant table, its fields read as: name = the vassal's name, uid = its IPv4
/// address (as a number), home = its IPv6 address as text (empty: none).
pub mod hosts {
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// The domain the host's names live under.
    pub const DOMAIN: &str = "imperium";

    /// One vassal's addresses.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Host {
        /// The vassal's name.
        pub name: String,
        /// Its IPv4 address.
        pub v4: Ipv4Addr,
        /// Its IPv6 address, if any.
        pub v6: Option<Ipv6Addr>,
    }

    /// Builds the table's bytes.
    pub fn encode(hosts: &[Host]) -> Vec<u8> {
        let rows: Vec<super::Tenant> = hosts
            .iter()
            .map(|h| super::Tenant {
                name: h.name.clone(),
                uid: u32::from(h.v4),
                home: h.v6.map(|a| a.to_string()).unwrap_or_default(),
                shell: String::new(),
            })
            .collect();
        super::encode(&rows)
    }

    /// The vassal a host name means: `<name>.imperium` (any case, a final dot allowed).
    pub fn vassal_of(host: &str) -> Option<String> {
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let name = host.strip_suffix(DOMAIN)?.strip_suffix('.')?;
        (!name.is_empty() && !name.contains('.')).then(|| name.to_owned())
    }

    /// The table cannot be read (torn, damaged, or not a table).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Unusable;

    /// Looks a host name up in the table's bytes.
    pub fn find(bytes: &[u8], host: &str) -> Result<Option<Host>, Unusable> {
        let t = super::Table::open(bytes).ok_or(Unusable)?;
        let Some(name) = vassal_of(host) else {
            return Ok(None);
        };
        Ok(t.by_name(&name).map(|e| Host {
            name: e.name.to_owned(),
            v4: Ipv4Addr::from(e.uid),
            v6: e.home.parse().ok(),
        }))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn names_under_the_domain_resolve() {
            let t = encode(&[
                Host {
                    name: "site52".into(),
                    v4: "10.199.1.2".parse().unwrap(),
                    v6: Some("fd69:6d70:6572::1:2".parse().unwrap()),
                },
                Host {
                    name: "a".into(),
                    v4: "10.199.0.2".parse().unwrap(),
                    v6: None,
                },
            ]);
            let h = find(&t, "Site52.Imperium.").unwrap().unwrap();
            assert_eq!(h.v4.to_string(), "10.199.1.2");
            assert_eq!(h.v6.unwrap().to_string(), "fd69:6d70:6572::1:2");
            assert_eq!(find(&t, "a.imperium").unwrap().unwrap().v6, None);
            for miss in [
                "site52",
                "site52.example",
                "x.site52.imperium",
                "imperium",
                ".imperium",
            ] {
                assert_eq!(find(&t, miss).unwrap(), None, "{miss}");
            }
            assert_eq!(find(b"garbage", "a.imperium"), Err(Unusable));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str, uid: u32) -> Tenant {
        Tenant {
            name: name.into(),
            uid,
            home: format!("/home/{name}"),
            shell: "/bin/bash".into(),
        }
    }

    #[test]
    fn lookups_by_name_and_uid() {
        let list: Vec<Tenant> = (0..1000)
            .map(|i| tenant(&format!("site{i}"), 30000 + (i * 7919) % 1000))
            .collect();
        let bytes = encode(&list);
        let t = Table::parse(&bytes).unwrap();
        assert_eq!(t.len(), 1000);
        for x in &list {
            let e = t.by_name(&x.name).unwrap();
            assert_eq!(
                (e.uid, e.home, e.shell),
                (x.uid, x.home.as_str(), "/bin/bash")
            );
            assert_eq!(t.by_uid(x.uid).unwrap().name, x.name);
        }
        assert!(t.by_name("nobody").is_none() && t.by_name("").is_none() && t.by_uid(1).is_none());
        assert!(Table::parse(&encode(&[])).unwrap().is_empty());
    }

    #[test]
    fn a_damaged_table_is_refused() {
        let bytes = encode(&[tenant("a", 30000), tenant("b", 30001)]);
        assert!(
            Table::parse(&bytes[..bytes.len() - 1]).is_none(),
            "truncated"
        );
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(
                Table::parse(&b).is_none(),
                "a flipped bit at {i} went unnoticed"
            );
        }
        assert!(Table::parse(b"").is_none());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Some(t) = Table::parse(&bytes) {
                let _ = t.by_name("x");
                let _ = t.by_uid(30000);
            }
            if let Some(t) = Table::open(&bytes) {
                let _ = t.by_name("x");
                let _ = t.by_uid(30000);
            }
        }
    }
}
