//! Crash-safe file writes: a reader sees the old file or the new one, never half.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Writes `data` to `path` through a temporary file in the same directory,
/// `fsync`, `rename`, then `fsync` of the directory.
pub fn write(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_with(path, data, mode, true)
}

/// Like [`write`] without the fsyncs: for runtime files (on tmpfs, gone at
/// reboot anyway), where only "old or new, never half" matters.
pub fn replace(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_with(path, data, mode, false)
}

fn write_with(path: &Path, data: &[u8], mode: u32, durable: bool) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durable {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Serializes `value` as pretty JSON and writes it atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T, mode: u32) -> io::Result<()> {
    let mut data = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    data.push(b'\n');
    write(path, &data, mode)
}

/// Serializes `value` as pretty JSON and [`replace`]s the file with it.
pub fn replace_json<T: serde::Serialize>(path: &Path, value: &T, mode: u32) -> io::Result<()> {
    let mut data = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    data.push(b'\n');
    replace(path, &data, mode)
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        super::write(&p, b"first version, long", 0o600).unwrap();
        super::write(&p, b"second", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
