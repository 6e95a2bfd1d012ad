//! The uid allocation table: a tenant's uid is allocated once and never reused,
//! even after the tenant is deleted (its archived files keep their owner).

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The first uid given to a tenant.
pub const FIRST_UID: u32 = 30000;
/// The last uid this table will give (the kernel's overflow uid is 65534).
pub const LAST_UID: u32 = 0x7fff_fffe;

/// Login name → uid, and the next uid to give.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UidTable {
    /// Schema version (1).
    pub schema_version: u32,
    /// The next uid to allocate.
    pub next: u32,
    /// Every login name ever allocated, with its uid.
    pub users: BTreeMap<String, u32>,
}

impl Default for UidTable {
    fn default() -> Self {
        UidTable {
            schema_version: 1,
            next: FIRST_UID,
            users: BTreeMap::new(),
        }
    }
}

impl UidTable {
    /// Loads the table, or an empty one if the file does not exist.
    pub fn load(path: &Path) -> io::Result<UidTable> {
        match std::fs::read(path) {
            Ok(data) => serde_json::from_slice(&data)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(UidTable::default()),
            Err(e) => Err(e),
        }
    }

    /// The uid of `user`, allocating one if it has none. Returns the uid and
    /// whether the table changed (and must be saved before the uid is used).
    pub fn allocate(&mut self, user: &str) -> io::Result<(u32, bool)> {
        if let Some(uid) = self.users.get(user) {
            return Ok((*uid, false));
        }
        let mut uid = self.next.max(FIRST_UID);
        // 65534 is nobody/overflow inside every user namespace: never hand it out.
        if uid == 65534 {
            uid += 1;
        }
        if uid > LAST_UID {
            return Err(io::Error::other("uid space exhausted"));
        }
        self.users.insert(user.to_owned(), uid);
        self.next = uid + 1;
        Ok((uid, true))
    }

    /// Saves the table atomically.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        crate::atomic::write_json(path, self, 0o644)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("uids.json");
        let mut t = UidTable::load(&p).unwrap();
        assert_eq!(t.allocate("a").unwrap(), (30000, true));
        assert_eq!(t.allocate("b").unwrap(), (30001, true));
        assert_eq!(t.allocate("a").unwrap(), (30000, false));
        t.save(&p).unwrap();
        let mut t = UidTable::load(&p).unwrap();
        t.users.remove("a");
        assert_eq!(
            t.allocate("c").unwrap(),
            (30002, true),
            "a's uid is not reused"
        );
        t.next = 65534;
        assert_eq!(t.allocate("d").unwrap(), (65535, true));
    }
}
