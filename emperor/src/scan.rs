//! Reading the vassal directories: the admin directory and each group's drop
//! directory, one `<name>.toml` per vassal.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

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
    /// The last scan's entries, by path.
    pub previous: &'a std::collections::BTreeMap<PathBuf, Entry>,
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
    writes: &Writes<'_>,
) -> Vec<Entry> {
    let Ok(dirfd) = sys::fs::open_dir(dir) else {
        return Vec::new();
    };
    let Ok(rd) = std::fs::read_dir(sys::fs::fd_path(dirfd.as_fd())) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let file_name = e.file_name();
        let path = dir.join(&file_name);
        let Some(stem) = file_name.to_str().and_then(|f| f.strip_suffix(".toml")) else {
            continue;
        };
        if stem.starts_with('.') {
            continue; // editors' and our own temporary files
        }
        if (writes.settling)(&path) {
            // Half written (an scp, an editor saving in place): as it was.
            out.extend(writes.previous.get(&path).cloned());
            continue;
        }
        let name: Name = match stem.parse() {
            Ok(n) => n,
            Err(err) => {
                ignored.push((path, format!("vassal file name refused: {err}")));
                continue;
            }
        };
        let parsed = match sys::fs::read_regular(dirfd.as_fd(), Path::new(&file_name), MAX_FILE) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => VassalFile::parse(&name, &text),
                Err(_) => Err(ConfigError::Syntax("not UTF-8 text".into())),
            },
            Err(sys::fs::ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                continue; // removed while we looked
            }
            Err(sys::fs::ReadError::NotFile) if e.file_type().is_ok_and(|t| t.is_dir()) => continue,
            Err(err) => Err(ConfigError::Syntax(format!("refused unread: {err}"))),
        };
        out.push(Entry {
            name,
            path,
            source: source.clone(),
            parsed,
        });
    }
    out
}

/// Reads the admin directory and the drop directories of `groups` (and of every
/// group the admin directory names); what is not a vassal goes to `ignored`.
pub fn scan(
    layout: &Layout,
    groups: &BTreeSet<Name>,
    ignored: &mut Vec<Ignored>,
    writes: &Writes<'_>,
) -> Vec<Entry> {
    let mut entries = scan_dir(&layout.vassals, &Source::Admin, ignored, writes);
    let mut all: BTreeSet<Name> = groups.clone();
    all.extend(
        entries
            .iter()
            .filter(|e| matches!(e.parsed, Ok(VassalFile::Group(_))))
            .map(|e| e.name.clone()),
    );
    for g in &all {
        entries.extend(scan_dir(
            &layout.drop_dir(g),
            &Source::Drop(g.clone()),
            ignored,
            writes,
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
