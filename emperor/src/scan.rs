//! Reading the vassal directories: the admin directory and each group's drop
//! directory, one `<name>.toml` per vassal.

use std::collections::BTreeSet;
use std::path::Path;

use model::catalog::{Entry, Source};
use model::config::ConfigError;
use model::{Layout, Name, VassalFile};

/// The largest vassal file read; a bigger one is refused unread.
const MAX_FILE: u64 = 64 * 1024;

/// Reads every vassal file of `dir`, found as `source`.
pub fn scan_dir(dir: &Path, source: &Source) -> Vec<Entry> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let path = e.path();
        let file_name = e.file_name();
        let Some(stem) = file_name.to_str().and_then(|f| f.strip_suffix(".toml")) else {
            continue;
        };
        if stem.starts_with('.') {
            continue; // editors' and our own temporary files
        }
        let name: Name = match stem.parse() {
            Ok(n) => n,
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "vassal file name refused");
                continue;
            }
        };
        let parsed = match std::fs::metadata(&path) {
            Ok(m) if !m.is_file() => continue,
            Ok(m) if m.len() > MAX_FILE => Err(ConfigError::Syntax(format!(
                "file is larger than {MAX_FILE} bytes"
            ))),
            Ok(_) => match std::fs::read_to_string(&path) {
                Ok(text) => VassalFile::parse(&name, &text),
                Err(err) => Err(ConfigError::Syntax(format!("unreadable: {err}"))),
            },
            Err(_) => continue, // removed while we looked
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
/// group the admin directory names).
pub fn scan(layout: &Layout, groups: &BTreeSet<Name>) -> Vec<Entry> {
    let mut entries = scan_dir(&layout.vassals, &Source::Admin);
    let mut all: BTreeSet<Name> = groups.clone();
    all.extend(
        entries
            .iter()
            .filter(|e| matches!(e.parsed, Ok(VassalFile::Group(_))))
            .map(|e| e.name.clone()),
    );
    for g in &all {
        entries.extend(scan_dir(&layout.drop_dir(g), &Source::Drop(g.clone())));
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
