//! A table kept on disk as a snapshot, written whole and durably now and
//! then, and a journal beside it of what was added since (`uids.json` →
//! `uids.log`): one addition costs one append and one `fdatasync`, not a
//! new copy of the whole table and two fsyncs.

use std::io;
use std::path::{Path, PathBuf};

/// The state of a snapshot's journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Journal {
    /// The journal exists and its directory entry is on disk.
    made: bool,
    /// An append failed: every change goes into a whole snapshot until one
    /// is written.
    snapshot_only: bool,
}

/// The journal beside a snapshot: `uids.json` → `uids.log`.
pub fn path(snapshot: &Path) -> PathBuf {
    snapshot.with_extension("log")
}

/// An error for a line that cannot be true.
pub fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads the snapshot (`None` if there is none) and the journal's lines
/// (see [`lines`]).
#[allow(clippy::type_complexity)]
pub fn read<T: serde::de::DeserializeOwned>(
    snapshot: &Path,
) -> io::Result<(Option<T>, Vec<(usize, String)>)> {
    let t = match std::fs::read(snapshot) {
        Ok(data) => Some(serde_json::from_slice(&data).map_err(|e| invalid(e.to_string()))?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    Ok((t, lines(snapshot)?))
}

/// The journal's whole lines, numbered from 1 (none if there is no
/// journal). A last line without its newline was torn by a crash before its
/// `fdatasync` returned, so what it adds was never used: it is left out.
pub fn lines(snapshot: &Path) -> io::Result<Vec<(usize, String)>> {
    let data = match std::fs::read(path(snapshot)) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let Some(end) = data.iter().rposition(|b| *b == b'\n') else {
        return Ok(Vec::new());
    };
    data[..end]
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(n, line)| match std::str::from_utf8(line) {
            Ok(text) => Ok((n + 1, text.to_owned())),
            Err(_) => Err(invalid(format!(
                "{} line {}: not UTF-8",
                path(snapshot).display(),
                n + 1
            ))),
        })
        .collect()
}

/// A table kept as a snapshot and a journal: what it adds is written as
/// journal lines into [`Journaled::unsaved`] and put on disk by
/// [`Journaled::commit`] before it is used.
pub trait Journaled: serde::Serialize + serde::de::DeserializeOwned + Default {
    /// Checks the snapshot as read (`path` for the errors) and adds the
    /// journal's lines; a line that cannot be true is refused.
    fn replay(&mut self, path: &Path, lines: Vec<(usize, String)>) -> io::Result<()>;

    /// Loads the snapshot, then the journal's lines (an empty table if
    /// neither exists). Reads only.
    fn load(snapshot: &Path) -> io::Result<Self> {
        let (t, lines) = read(snapshot)?;
        let mut t: Self = t.unwrap_or_default();
        t.replay(snapshot, lines)?;
        Ok(t)
    }

    /// Its journal's state.
    fn journal(&mut self) -> &mut Journal;

    /// Journal lines for what was added since the last commit or save.
    fn unsaved(&mut self) -> &mut String;

    /// Loads the table and, if a journal was left, folds it into a new
    /// snapshot: the emperor's run starts with no journal (and no torn line
    /// a crash may have left at its end).
    fn open(snapshot: &Path) -> io::Result<Self> {
        let mut t = Self::load(snapshot)?;
        if path(snapshot).exists() {
            t.save(snapshot)?;
        }
        Ok(t)
    }

    /// Writes a new snapshot of the whole table, durably, and removes the
    /// journal it now holds.
    fn save(&mut self, snapshot: &Path) -> io::Result<()> {
        crate::atomic::write_json(snapshot, self, 0o644)?;
        self.journal().saved(snapshot)?;
        self.unsaved().clear();
        Ok(())
    }

    /// Puts what was added since the last save or commit on disk before it
    /// is used: one append to the journal, one `fdatasync` (see
    /// [`Journal::append`]); if that fails, a whole snapshot, and so on
    /// until one is written.
    fn commit(&mut self, snapshot: &Path) -> io::Result<()> {
        if self.unsaved().is_empty() {
            return Ok(());
        }
        let lines = std::mem::take(self.unsaved());
        match self.journal().append(snapshot, lines.as_bytes()) {
            Ok(()) => Ok(()),
            Err(_) => {
                *self.unsaved() = lines;
                self.save(snapshot)
            }
        }
    }
}

impl Journal {
    /// Appends `lines` (each ending in a newline) and waits until they are
    /// on disk (and, the first time, the directory entry of the new
    /// journal). If it fails, what of it landed is cut off again, and this
    /// and every append after it fail until [`Journal::saved`]: the caller
    /// writes a whole snapshot instead.
    pub fn append(&mut self, snapshot: &Path, lines: &[u8]) -> io::Result<()> {
        if self.snapshot_only {
            return Err(io::Error::other("a whole snapshot is owed"));
        }
        let r = self.try_append(snapshot, lines);
        self.snapshot_only = r.is_err();
        r
    }

    fn try_append(&mut self, snapshot: &Path, lines: &[u8]) -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(path(snapshot))?;
        let before = f.metadata()?.len();
        // A failed write may leave part of a line: cut it off, so that the
        // next append does not extend it into a line that reads as another.
        let written = (&f).write_all(lines).and_then(|()| f.sync_data());
        if let Err(e) = written {
            let _ = f.set_len(before);
            return Err(e);
        }
        if !self.made {
            let dir = snapshot.parent().unwrap_or(Path::new("."));
            std::fs::File::open(dir)?.sync_all()?;
            self.made = true;
        }
        Ok(())
    }

    /// After a whole snapshot was written durably: removes the journal it
    /// now holds (a crash in between leaves a journal whose lines the
    /// snapshot already has: read again, they change nothing).
    pub fn saved(&mut self, snapshot: &Path) -> io::Result<()> {
        match std::fs::remove_file(path(snapshot)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        *self = Journal::default();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_lines_only_and_a_failed_append_owes_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("t.json");
        assert!(lines(&snap).unwrap().is_empty(), "no journal");
        let mut j = Journal::default();
        j.append(&snap, b"a 1\n").unwrap();
        j.append(&snap, b"b 2\nc 3\n").unwrap();
        assert_eq!(
            lines(&snap).unwrap(),
            vec![(1, "a 1".into()), (2, "b 2".into()), (3, "c 3".into())]
        );
        // A crash during an append: the torn line is left out.
        std::fs::write(path(&snap), "a 1\nb 2").unwrap();
        assert_eq!(lines(&snap).unwrap(), vec![(1, "a 1".into())]);
        // An append that fails (a directory where the journal goes) owes a
        // snapshot: the next append fails too, until `saved`.
        std::fs::remove_file(path(&snap)).unwrap();
        std::fs::create_dir(path(&snap)).unwrap();
        j.append(&snap, b"d 4\n").unwrap_err();
        std::fs::remove_dir(path(&snap)).unwrap();
        j.append(&snap, b"d 4\n").unwrap_err();
        assert!(!path(&snap).exists());
        j.saved(&snap).unwrap();
        j.append(&snap, b"d 4\n").unwrap();
        j.saved(&snap).unwrap();
        assert!(!path(&snap).exists(), "the snapshot holds it");
    }
}
