//! The tenant's logs: size rotation, the site's access log (lines the router
//! sends to a socket in the site's socket directory), reading the end of a
//! log, and the supervisor's own output.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Rotates a log past `max` bytes: copy to `.1` (older copies move to `.2`
/// and `.3`), then truncate. A writer keeps its append-mode descriptor, so
/// its next lines go to the fresh file. Returns the size it found (0: none).
pub fn rotate(log: &Path, max: u64) -> u64 {
    let Ok(meta) = std::fs::metadata(log) else {
        return 0;
    };
    if meta.len() <= max {
        return meta.len();
    }
    let old = |i: u32| {
        let mut p = log.as_os_str().to_owned();
        p.push(format!(".{i}"));
        PathBuf::from(p)
    };
    let _ = std::fs::rename(old(2), old(3));
    let _ = std::fs::rename(old(1), old(2));
    if std::fs::copy(log, old(1)).is_ok() {
        if let Ok(f) = OpenOptions::new().write(true).open(log) {
            let _ = f.set_len(0);
        }
    }
    meta.len()
}

/// The socket the router sends the site's access lines to (the router's
/// `access::SOCKET`), in the site's socket directory.
pub const ACCESS_SOCKET: &str = model::layout::names::ACCESS_LOG_SOCKET;
/// `~/logs/access.log` is rotated past this size.
pub const ACCESS_LOG_MAX: u64 = 10 << 20;
/// Lines taken from the socket per turn of the loop (the rest wait).
const ACCESS_BATCH: usize = 512;

/// The router's lines for this site, appended to `~/logs/access.log`.
pub struct AccessLog {
    pub socket: std::os::unix::net::UnixDatagram,
    path: PathBuf,
    file: Option<File>,
    warned: bool,
}

impl AccessLog {
    pub fn bind(sockets: &Path, home: &Path) -> Option<AccessLog> {
        let at = sockets.join(ACCESS_SOCKET);
        let _ = std::fs::remove_file(&at);
        let socket = std::os::unix::net::UnixDatagram::bind(&at).ok()?;
        socket.set_nonblocking(true).ok()?;
        Some(AccessLog {
            socket,
            path: model::layout::home::access_log(home),
            file: None,
            warned: false,
        })
    }

    /// Opens the file again by name at the next line: one the tenant removed
    /// or moved is not written on for good.
    pub fn reopen(&mut self) {
        self.file = None;
    }

    /// Appends what came in. The file is opened without following a
    /// symlink: a link planted there gets no lines (and says so once).
    pub fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        let mut out = Vec::new();
        for _ in 0..ACCESS_BATCH {
            match self.socket.recv(&mut buf) {
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        if out.is_empty() {
            return;
        }
        if self.file.is_none() {
            use std::os::unix::fs::OpenOptionsExt;
            match OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&self.path)
            {
                Ok(f) => {
                    self.file = Some(f);
                    self.warned = false;
                }
                Err(e) => {
                    if !std::mem::replace(&mut self.warned, true) {
                        say!("vassal: {}: {e}; access lines dropped", self.path.display());
                    }
                    return;
                }
            }
        }
        if let Some(f) = &mut self.file {
            if f.write_all(&out).is_err() {
                self.file = None;
            }
        }
    }
}

/// Reads the last `lines` lines of a log.
pub fn tail(path: &Path, lines: usize) -> std::io::Result<Vec<String>> {
    let f = File::open(path)?;
    let mut all: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    for l in BufReader::new(f).lines() {
        all.push_back(l.unwrap_or_default());
        if all.len() > lines {
            all.pop_front();
        }
    }
    Ok(all.into())
}

/// Points stdout and stderr at `path` (appended; not through a symlink).
pub fn redirect_output(path: &Path) {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
    else {
        return;
    };
    for fd in [1, 2] {
        let _ = nix::unistd::dup2(f.as_raw_fd(), fd);
    }
}
