//! Reading the vassal directories: the admin directory and each group's drop
//! directory, one `<name>.toml` per vassal.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::sys::stat::{fstatat, SFlag};

use model::catalog::{Entry, Source};
use model::config::ConfigError;
use model::{Layout, Name, VassalFile};

/// The largest vassal file read; a bigger one is refused unread.
const MAX_FILE: u64 = 64 * 1024;

/// A file of a vassal directory that is not a vassal, and why (logged once per change).
pub type Ignored = (PathBuf, String);

/// What a scan knows of files still being written (see
/// [`crate::watch::Settling`]): a file whose writer has not closed it yet is
/// not judged; the scan keeps what it found of it last time (`previous`, by
/// path), or leaves a new file out until it is whole.
pub struct Writes<'a> {
    /// Whether this file is being written.
    pub settling: &'a dyn Fn(&Path) -> bool,
    /// The last scan's entries, by path: those kept are moved out.
    pub previous: &'a mut Previous,
    /// The stamps of the files the last scan read whole and settled.
    pub stamps: &'a Stamps,
    /// The wall clock's time now (how old a file's last change is).
    pub now: SystemTime,
}

/// What tells that a file is the one read before, unchanged: device, inode,
/// size, modification and change times. A write changes the change time
/// (which no user can set) unless it falls in the same clock tick as the
/// stamp, so a file is only stamped once its last change is [`SETTLED`] old.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// The stamps of a scan's files, by path: a file whose stamp is the same at
/// the next scan is not read and parsed again (its last entry stands). A host
/// of 10,000 sites is rescanned at every change of any file.
pub type Stamps = HashMap<PathBuf, Stamp>;

/// The entries of a scan, by path, for the next one.
pub type Previous = HashMap<PathBuf, Entry>;

/// How old a file's last change must be for its stamp to be kept: far past
/// any timestamp granularity.
const SETTLED: Duration = Duration::from_secs(2);

impl Stamp {
    fn of(st: &nix::sys::stat::FileStat) -> Stamp {
        Stamp {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }

    /// Whether the file last changed at least [`SETTLED`] before `now`.
    fn settled(&self, now: SystemTime) -> bool {
        let (secs, nanos) = self.ctime;
        let Ok(secs) = u64::try_from(secs) else {
            return false;
        };
        let changed =
            SystemTime::UNIX_EPOCH + Duration::new(secs, nanos.clamp(0, 999_999_999) as u32);
        now.duration_since(changed).is_ok_and(|age| age >= SETTLED)
    }
}

/// Reads every vassal file of `dir`, found as `source`.
///
/// A drop directory belongs to a reseller, who may put anything there: each
/// file is opened once, relative to the directory, without following a
/// symlink and without blocking, and only a regular file is read, never past
/// [`MAX_FILE`] bytes of what the descriptor gives.
pub fn scan_dir(
    dir: &Path,
    source: &Source,
    ignored: &mut Vec<Ignored>,
    writes: &mut Writes<'_>,
    stamps: &mut Stamps,
) -> Vec<Entry> {
    let Ok(dirfd) = sys::fs::open_dir(dir) else {
        return Vec::new();
    };
    let Ok(rd) = std::fs::read_dir(sys::fs::fd_path(dirfd.as_fd())) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            look(
                dirfd.as_fd(),
                dir,
                &e.file_name(),
                source,
                ignored,
                writes,
                stamps,
            )
        })
        .collect()
}

/// One file of `dir` as [`scan_dir`] reads it: its entry, or nothing if it
/// is not a vassal file (or is gone).
fn look(
    dirfd: BorrowedFd<'_>,
    dir: &Path,
    file_name: &OsStr,
    source: &Source,
    ignored: &mut Vec<Ignored>,
    writes: &mut Writes<'_>,
    stamps: &mut Stamps,
) -> Option<Entry> {
    let path = dir.join(file_name);
    let stem = file_name.to_str().and_then(|f| f.strip_suffix(".toml"))?;
    if stem.starts_with('.') {
        return None; // editors' and our own temporary files
    }
    if (writes.settling)(&path) {
        // Half written (an scp, an editor saving in place): as it was.
        return writes.previous.remove(&path);
    }
    let name: Name = match stem.parse() {
        Ok(n) => n,
        Err(err) => {
            ignored.push((path, format!("vassal file name refused: {err}")));
            return None;
        }
    };
    // Stamped before it is read: a change during the read shows at the
    // next scan. The entry stands only if its stamp is the same.
    let st = fstatat(
        Some(dirfd.as_raw_fd()),
        file_name,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    );
    if st.is_err_and(|e| e == nix::errno::Errno::ENOENT) {
        return None; // removed while we looked
    }
    let is_dir = st
        .as_ref()
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR);
    let stamp = st
        .ok()
        .filter(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG)
        .map(|st| Stamp::of(&st));
    if let Some(s) = stamp.filter(|s| writes.stamps.get(&path) == Some(s)) {
        if let Some(prev) = writes.previous.remove(&path) {
            stamps.insert(path, s);
            return Some(prev);
        }
    }
    if let Some(s) = stamp.filter(|s| s.settled(writes.now)) {
        stamps.insert(path.clone(), s);
    }
    let parsed = match sys::fs::read_regular(dirfd, Path::new(file_name), MAX_FILE) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => VassalFile::parse(&name, &text),
            Err(_) => Err(ConfigError::Syntax("not UTF-8 text".into())),
        },
        Err(sys::fs::ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return None; // removed while we looked
        }
        Err(sys::fs::ReadError::NotFile) if is_dir => return None,
        Err(err) => Err(ConfigError::Syntax(format!("refused unread: {err}"))),
    };
    Some(Entry {
        name,
        path,
        source: source.clone(),
        parsed,
    })
}

/// The groups whose drop directories a scan reads: those running (`groups`)
/// and those the admin directory's entries name.
pub fn groups_read<'a>(
    groups: &BTreeSet<Name>,
    entries: impl IntoIterator<Item = &'a Entry>,
) -> BTreeSet<Name> {
    let mut all = groups.clone();
    all.extend(
        entries
            .into_iter()
            .filter(|e| e.source == Source::Admin && matches!(e.parsed, Ok(VassalFile::Group(_))))
            .map(|e| e.name.clone()),
    );
    all
}

/// Reads again only the files named in `named` (by inotify) that lie in the
/// admin directory or in a drop directory of `groups`. Returns the entries
/// of the named files still there; the caller keeps the last scan's entries
/// of every other file.
pub fn scan_named(
    layout: &Layout,
    groups: &BTreeSet<Name>,
    named: &HashSet<PathBuf>,
    ignored: &mut Vec<Ignored>,
    writes: &mut Writes<'_>,
    stamps: &mut Stamps,
) -> Vec<Entry> {
    let mut by_dir: HashMap<&Path, Vec<&OsStr>> = HashMap::new();
    for p in named {
        if let (Some(dir), Some(file)) = (p.parent(), p.file_name()) {
            by_dir.entry(dir).or_default().push(file);
        }
    }
    let mut dirs: Vec<(PathBuf, Source)> = vec![(layout.vassals.clone(), Source::Admin)];
    dirs.extend(
        groups
            .iter()
            .map(|g| (layout.drop_dir(g), Source::Drop(g.clone()))),
    );
    let mut out = Vec::new();
    for (dir, source) in dirs {
        let Some(files) = by_dir.get(dir.as_path()) else {
            continue;
        };
        let Ok(dirfd) = sys::fs::open_dir(&dir) else {
            continue;
        };
        for file_name in files {
            out.extend(look(
                dirfd.as_fd(),
                &dir,
                file_name,
                &source,
                ignored,
                writes,
                stamps,
            ));
        }
    }
    out
}

/// Reads the admin directory and the drop directories of `groups` (and of every
/// group the admin directory names); what is not a vassal goes to `ignored`.
pub fn scan(
    layout: &Layout,
    groups: &BTreeSet<Name>,
    ignored: &mut Vec<Ignored>,
    writes: &mut Writes<'_>,
    stamps: &mut Stamps,
) -> Vec<Entry> {
    let mut entries = scan_dir(&layout.vassals, &Source::Admin, ignored, writes, stamps);
    for g in &groups_read(groups, &entries) {
        entries.extend(scan_dir(
            &layout.drop_dir(g),
            &Source::Drop(g.clone()),
            ignored,
            writes,
            stamps,
        ));
    }
    entries
}

/// Login names of the host's own accounts (`/etc/passwd`), which tenants may not take.
pub fn host_users() -> BTreeSet<String> {
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(':').next())
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_once(
        dir: &Path,
        previous: &[Entry],
        old: &Stamps,
        now: SystemTime,
    ) -> (Vec<Entry>, Stamps) {
        let mut previous = previous
            .iter()
            .map(|e| (e.path.clone(), e.clone()))
            .collect();
        let mut writes = Writes {
            settling: &|_| false,
            previous: &mut previous,
            stamps: old,
            now,
        };
        let mut stamps = Stamps::new();
        let entries = scan_dir(
            dir,
            &Source::Admin,
            &mut Vec::new(),
            &mut writes,
            &mut stamps,
        );
        (entries, stamps)
    }

    fn memory(e: &Entry) -> Option<u64> {
        match &e.parsed {
            Ok(VassalFile::Site(s)) => s.limits.memory.map(|m| m.0),
            _ => None,
        }
    }

    #[test]
    fn a_scan_of_named_files_reads_those_in_its_directories_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            vassals: dir.path().join("v"),
            home_root: dir.path().join("home"),
            state_dir: dir.path().join("state"),
            run_dir: dir.path().join("run"),
            cgroup_root: "imperium".into(),
        };
        let g: Name = "group1".parse().unwrap();
        let drop = layout.drop_dir(&g);
        std::fs::create_dir_all(&layout.vassals).unwrap();
        std::fs::create_dir_all(&drop).unwrap();
        let site = "kind = \"site\"\n[limits]\nmemory = \"10M\"\n";
        std::fs::write(layout.vassals.join("a.toml"), site).unwrap();
        std::fs::write(layout.vassals.join("unnamed.toml"), site).unwrap();
        std::fs::write(drop.join("b.toml"), site).unwrap();
        // Named, in a drop directory not read: not looked at.
        let other = layout.drop_dir(&"group2".parse().unwrap());
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("c.toml"), site).unwrap();
        // A link where a file was named: refused unread, as in a full scan.
        std::os::unix::fs::symlink("/etc/passwd", drop.join("evil.toml")).unwrap();
        let named: HashSet<PathBuf> = [
            layout.vassals.join("a.toml"),
            layout.vassals.join("gone.toml"),
            drop.join("b.toml"),
            drop.join("evil.toml"),
            other.join("c.toml"),
        ]
        .into();
        let mut previous = Previous::new();
        let mut writes = Writes {
            settling: &|_| false,
            previous: &mut previous,
            stamps: &Stamps::new(),
            now: crate::clock::wall(),
        };
        let mut got = scan_named(
            &layout,
            &[g.clone()].into(),
            &named,
            &mut Vec::new(),
            &mut writes,
            &mut Stamps::new(),
        );
        got.sort_by(|a, b| a.path.cmp(&b.path));
        let seen: Vec<(String, bool)> = got
            .iter()
            .map(|e| (e.name.to_string(), e.parsed.is_ok()))
            .collect();
        assert_eq!(
            seen,
            [
                ("b".into(), true),
                ("evil".into(), false),
                ("a".into(), true)
            ],
            "{got:?}"
        );
        assert_eq!(got[0].source, Source::Drop(g));
        assert_eq!(got[2].source, Source::Admin);
    }

    #[test]
    fn an_unchanged_settled_file_is_not_read_again_and_a_changed_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("site1.toml");
        std::fs::write(&file, "kind = \"site\"\n[limits]\nmemory = \"10M\"\n").unwrap();
        let later = crate::clock::wall() + Duration::from_secs(3);
        // Just written: read, and not stamped (it may change within the tick).
        let (first, stamps) = scan_once(dir.path(), &[], &Stamps::new(), crate::clock::wall());
        assert_eq!(memory(&first[0]), Some(10 << 20));
        assert!(stamps.is_empty());
        // Settled: stamped.
        let (first, stamps) = scan_once(dir.path(), &first, &Stamps::new(), later);
        assert_eq!(stamps.len(), 1);
        // Unchanged: the last entry stands, unread (a planted one shows it).
        let mut planted = first.clone();
        planted[0].parsed = VassalFile::parse(&"site1".parse().unwrap(), "kind = \"site\"\n");
        let (again, kept) = scan_once(dir.path(), &planted, &stamps, later);
        assert_eq!(memory(&again[0]), None, "read again although unchanged");
        assert_eq!(kept, stamps);
        // Changed, even to the same size: read again.
        std::fs::write(&file, "kind = \"site\"\n[limits]\nmemory = \"20M\"\n").unwrap();
        let (changed, _) = scan_once(dir.path(), &planted, &stamps, later);
        assert_eq!(memory(&changed[0]), Some(20 << 20));
        // Replaced by a link to a file with the same content: refused, not kept.
        let target = dir.path().join("elsewhere");
        std::fs::rename(&file, &target).unwrap();
        std::os::unix::fs::symlink(&target, &file).unwrap();
        let (linked, _) = scan_once(dir.path(), &changed, &stamps, later);
        assert!(linked[0].parsed.is_err(), "{:?}", linked[0].parsed);
    }
}
