//! The uid allocation table: a tenant's uid is allocated once and never reused,
//! even after the tenant is deleted (its archived files keep their owner).

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::journal::{invalid, Journal, Journaled};

/// The first uid given to a tenant.
pub const FIRST_UID: u32 = 30000;
/// The last uid this table will give (the kernel's overflow uid is 65534).
pub const LAST_UID: u32 = 0x7fff_fffe;

/// Login name → uid, and the next uid to give.
///
/// On disk: a snapshot (`uids.json`, written whole and durably) and the
/// allocations made since, appended to a journal beside it (`uids.log`, one
/// line `<uid> <name>` each). A new tenant costs one append and one
/// `fdatasync`, not a new copy of every tenant's entry and two fsyncs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UidTable {
    /// Schema version (1).
    pub schema_version: u32,
    /// The next uid to allocate.
    pub next: u32,
    /// Every login name ever allocated, with its uid.
    pub users: BTreeMap<String, u32>,
    /// Allocations not yet on disk, as journal lines (see [`Journaled::commit`]).
    #[serde(skip)]
    unsaved: String,
    /// The journal beside the snapshot.
    #[serde(skip)]
    journal: Journal,
}

impl Default for UidTable {
    fn default() -> Self {
        UidTable {
            schema_version: 1,
            next: FIRST_UID,
            users: BTreeMap::new(),
            unsaved: String::new(),
            journal: Journal::default(),
        }
    }
}

impl Journaled for UidTable {
    /// A line that gives a name another uid, or a uid to two names, is
    /// refused (the table is wrong, not merely old).
    fn replay(&mut self, _: &Path, lines: Vec<(usize, String)>) -> io::Result<()> {
        let mut taken: std::collections::BTreeSet<u32> = self.users.values().copied().collect();
        for (n, text) in lines {
            let bad = || invalid(format!("uid journal line {n}: {text:?}"));
            let (uid, user) = text.split_once(' ').ok_or_else(bad)?;
            let uid: u32 = uid.parse().map_err(|_| bad())?;
            if user.is_empty() || !(FIRST_UID..=LAST_UID).contains(&uid) {
                return Err(bad());
            }
            match self.users.get(user) {
                Some(&known) if known == uid => continue,
                Some(_) => return Err(bad()),
                None if !taken.insert(uid) => return Err(bad()),
                None => {}
            }
            self.users.insert(user.to_owned(), uid);
            self.next = self.next.max(uid + 1);
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

impl UidTable {
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
        self.unsaved.push_str(&format!("{uid} {user}\n"));
        self.next = uid + 1;
        Ok((uid, true))
    }

    /// Takes `uid` for `user` as given elsewhere (a cluster's table): true
    /// if the table changed (and must be saved before the uid is used).
    /// Refused if `user` has another uid here or `uid` is another user's;
    /// `next` moves past it, so it is never given again.
    pub fn adopt(&mut self, user: &str, uid: u32) -> io::Result<bool> {
        match self.users.get(user) {
            Some(&known) if known == uid => return Ok(false),
            Some(&known) => {
                return Err(io::Error::other(format!(
                    "login {user} is uid {known} on this host, not {uid}"
                )))
            }
            None => {}
        }
        if !(FIRST_UID..=LAST_UID).contains(&uid) {
            return Err(io::Error::other(format!("uid {uid} is out of range")));
        }
        if let Some((other, _)) = self.users.iter().find(|(_, u)| **u == uid) {
            return Err(io::Error::other(format!(
                "uid {uid} is login {other}'s on this host"
            )));
        }
        self.users.insert(user.to_owned(), uid);
        self.unsaved.push_str(&format!("{uid} {user}\n"));
        self.next = self.next.max(uid + 1);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

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

    #[test]
    fn an_adopted_uid_is_kept_and_never_given_again() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("uids.json");
        let mut t = UidTable::open(&p).unwrap();
        assert_eq!(t.allocate("a").unwrap(), (30000, true));
        assert!(t.adopt("b", 30007).unwrap());
        assert!(!t.adopt("b", 30007).unwrap());
        assert!(t.adopt("b", 30008).is_err(), "b has 30007");
        assert!(t.adopt("c", 30000).is_err(), "30000 is a's");
        assert!(t.adopt("c", 100).is_err());
        assert_eq!(t.allocate("d").unwrap(), (30008, true));
        t.commit(&p).unwrap();
        let back = UidTable::load(&p).unwrap();
        assert_eq!(back.users.get("b"), Some(&30007));
        assert_eq!(back.next, 30009);
    }

    /// A table whose snapshot holds "a" (uid 30000): the directory, the
    /// snapshot's and the journal's paths, the table.
    fn saved_with_a() -> (tempfile::TempDir, PathBuf, PathBuf, UidTable) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("uids.json");
        let log = dir.path().join("uids.log");
        let mut t = UidTable::open(&p).unwrap();
        t.allocate("a").unwrap();
        t.save(&p).unwrap();
        (dir, p, log, t)
    }

    #[test]
    fn a_new_tenant_is_one_line_appended_and_the_next_start_folds_them_in() {
        let (_dir, p, log, mut t) = saved_with_a();
        let snapshot = std::fs::read(&p).unwrap();
        t.allocate("b").unwrap();
        t.commit(&p).unwrap();
        t.allocate("c").unwrap();
        t.allocate("b").unwrap();
        t.commit(&p).unwrap();
        t.commit(&p).unwrap();
        // The snapshot untouched; each new name once in the journal.
        assert_eq!(std::fs::read(&p).unwrap(), snapshot);
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "30001 b\n30002 c\n");
        let back = UidTable::load(&p).unwrap();
        assert_eq!((back.users.clone(), back.next), (t.users.clone(), 30003));
        // Opened again (the emperor's next start): one snapshot, no journal.
        let mut again = UidTable::open(&p).unwrap();
        assert!(!log.exists());
        assert_eq!(UidTable::load(&p).unwrap().users, t.users);
        assert_eq!(again.allocate("d").unwrap(), (30003, true));
    }

    #[test]
    fn a_torn_last_line_is_left_out_and_a_contradiction_refused() {
        let (_dir, p, log, _) = saved_with_a();
        // A crash during an append: the uid of "bo" was never used.
        std::fs::write(&log, "30001 b\n30002 bo").unwrap();
        let t = UidTable::load(&p).unwrap();
        assert_eq!(t.users.get("b"), Some(&30001));
        assert_eq!(t.users.get("bo"), None);
        assert_eq!(t.next, 30002);
        // Lines that cannot be true make the table fail to load, loudly.
        for bad in [
            "30005 a\n",          // a's uid is 30000
            "30000 z\n",          // 30000 is a's
            "30001 b\n30001 c\n", // one uid, two names
            "x b\n",
            "30001\n",
            "12 b\n",
        ] {
            std::fs::write(&log, bad).unwrap();
            let err = UidTable::load(&p).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
    }

    #[test]
    fn an_append_that_fails_falls_back_to_a_whole_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("uids.json");
        let log = dir.path().join("uids.log");
        let mut t = UidTable::open(&p).unwrap();
        t.allocate("a").unwrap();
        // The journal cannot be appended to (a directory stands in its
        // place): the commit fails, and the next one writes the table whole
        // instead of appending again.
        std::fs::create_dir(&log).unwrap();
        t.commit(&p).unwrap_err();
        std::fs::remove_dir(&log).unwrap();
        t.commit(&p).unwrap();
        assert!(!log.exists(), "the snapshot was written, not the journal");
        assert_eq!(UidTable::load(&p).unwrap().users.get("a"), Some(&30000));
    }
}
