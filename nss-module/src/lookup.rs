//! The safe side: where the table is, and what it says about a name or an id.

use std::path::PathBuf;

use model::nss::Table;

/// The default state directory.
const DEFAULT_STATE_DIR: &str = model::layout::DEFAULT_STATE_DIR;

/// The table's path: `IMPERIUM_STATE_DIR` (read with `secure_getenv`, so a
/// setuid program ignores it) or the default.
pub fn table_path(secure_env: Option<std::ffi::OsString>) -> PathBuf {
    state_dir(secure_env).join("tenants.nss")
}

/// The hosts table's path, beside the tenants'.
pub fn hosts_path(secure_env: Option<std::ffi::OsString>) -> PathBuf {
    state_dir(secure_env).join("hosts.nss")
}

fn state_dir(secure_env: Option<std::ffi::OsString>) -> PathBuf {
    secure_env
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// One answer, owned (copied out of the mapped table before it is unmapped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Login (and group) name.
    pub name: String,
    /// uid and gid.
    pub uid: u32,
    /// Home.
    pub home: String,
    /// Shell.
    pub shell: String,
}

/// What a lookup asks.
#[derive(Debug, Clone, Copy)]
pub enum Key<'a> {
    /// By name.
    Name(&'a str),
    /// By uid or gid.
    Id(u32),
}

/// Looks `key` up in the table's bytes: `Err(())` when the table is unusable.
pub fn find(bytes: &[u8], key: Key<'_>) -> Result<Option<Found>, ()> {
    let t = Table::open(bytes).ok_or(())?;
    let e = match key {
        Key::Name(n) => t.by_name(n),
        Key::Id(id) => t.by_uid(id),
    };
    Ok(e.map(|e| Found {
        name: e.name.to_owned(),
        uid: e.uid,
        home: e.home.to_owned(),
        shell: e.shell.to_owned(),
    }))
}
