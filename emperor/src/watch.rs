//! inotify on the admin directory and the drop directories: any change of a
//! file there becomes one `FilesChanged` event (the manager rereads the
//! directories; the periodic rescan is the safety net). Files opened for
//! writing and not closed yet are tracked ([`Settling`]): a scan does not
//! judge a file half written by scp or an editor.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::mpsc;

use crate::manager::Event;

pub(crate) struct Watcher {
    watches: Watches,
    drops: BTreeMap<PathBuf, WatchDescriptor>,
    dirs: Arc<Mutex<HashMap<WatchDescriptor, PathBuf>>>,
    settling: Settling,
    named: Named,
}

/// The files events named since the last scan took them: a scan reads only
/// those (and keeps what it knew of the rest) unless `all` says that an
/// event named no file (a lost event, a directory itself gone) or that too
/// many were named, when it reads everything.
#[derive(Clone, Default)]
pub struct Named(Arc<Mutex<Changed>>);

/// What [`Named`] holds.
#[derive(Debug, Default)]
pub struct Changed {
    /// The files named.
    pub paths: HashSet<PathBuf>,
    /// Read everything.
    pub all: bool,
}

/// Files named before a scan reads everything anyway (a reseller creating
/// files without end fills nothing).
const NAMED_MAX: usize = 4096;

impl Named {
    /// What was named since the last call, and no longer kept.
    pub fn take(&self) -> Changed {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A file to read at the next scan (one the emperor wrote itself).
    pub fn name(&self, path: PathBuf) {
        self.note(Some(path));
    }

    fn note(&self, path: Option<PathBuf>) {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match path {
            Some(p) if !c.all && c.paths.len() < NAMED_MAX => {
                c.paths.insert(p);
            }
            _ => {
                c.all = true;
                c.paths.clear();
            }
        }
    }
}

/// How long a file may stay open for writing before it is judged anyway (a
/// writer that hangs, or holds it open for good).
const SETTLE_MAX: Duration = Duration::from_secs(30);

/// The vassal files written to and not closed since, with when that began.
#[derive(Clone, Default)]
pub struct Settling(Arc<Mutex<HashMap<PathBuf, Instant>>>);

impl Settling {
    /// Whether `path` is being written (and not for longer than [`SETTLE_MAX`]).
    pub fn writing(&self, path: &Path) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = crate::clock::now();
        map.get(path)
            .is_some_and(|t| now.saturating_duration_since(*t) < SETTLE_MAX)
    }

    fn note(&self, path: PathBuf, open: bool) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if open {
            map.entry(path).or_insert_with(crate::clock::now);
        } else {
            map.remove(&path);
        }
        // Bounded: a reseller creating files without end fills nothing.
        if map.len() > 4096 {
            map.clear();
        }
    }
}

fn mask() -> WatchMask {
    WatchMask::CLOSE_WRITE
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MODIFY
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::ATTRIB
}

impl Watcher {
    pub(crate) fn new(admin: &Path, tx: mpsc::UnboundedSender<Event>) -> std::io::Result<Watcher> {
        let inotify = Inotify::init()?;
        let mut watches = inotify.watches();
        let wd = watches.add(admin, mask())?;
        let dirs = Arc::new(Mutex::new(HashMap::from([(wd, admin.to_path_buf())])));
        let settling = Settling::default();
        let mut stream = inotify.into_event_stream(vec![0u8; 16384])?;
        let named = Named::default();
        let (known, writes, names) = (dirs.clone(), settling.clone(), named.clone());
        tokio::spawn(async move {
            while let Some(ev) = stream.next().await {
                let Ok(ev) = &ev else {
                    // An overflow or a read error: read everything, and go on.
                    names.note(None);
                    let _ = tx.send(Event::FilesChanged);
                    continue;
                };
                {
                    let dir = known
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&ev.wd)
                        .cloned();
                    names.note(dir.as_ref().zip(ev.name.as_ref()).map(|(d, n)| d.join(n)));
                    if let (Some(dir), Some(name)) = (dir, &ev.name) {
                        let path = dir.join(name);
                        // Only a regular file is written to (a link or a fifo
                        // made is whole at once).
                        let open = ev.mask.contains(EventMask::MODIFY)
                            || (ev.mask.contains(EventMask::CREATE)
                                && path.symlink_metadata().is_ok_and(|m| m.is_file()));
                        let done = ev.mask.intersects(
                            EventMask::CLOSE_WRITE
                                | EventMask::MOVED_TO
                                | EventMask::MOVED_FROM
                                | EventMask::DELETE,
                        );
                        if open || done {
                            writes.note(path, open && !done);
                        }
                    }
                }
                let _ = tx.send(Event::FilesChanged);
            }
        });
        Ok(Watcher {
            watches,
            drops: BTreeMap::new(),
            dirs,
            settling,
            named,
        })
    }

    /// The files named since, for the scans.
    pub(crate) fn named(&self) -> Named {
        self.named.clone()
    }

    /// The files being written, for the scans.
    pub(crate) fn settling(&self) -> Settling {
        self.settling.clone()
    }

    /// Watches exactly these drop directories (those that exist).
    pub(crate) fn follow(&mut self, dirs: &[PathBuf]) {
        let gone: Vec<PathBuf> = self
            .drops
            .keys()
            .filter(|d| !dirs.contains(d))
            .cloned()
            .collect();
        for d in gone {
            if let Some(wd) = self.drops.remove(&d) {
                self.dirs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&wd);
                let _ = self.watches.remove(wd);
            }
        }
        for d in dirs {
            if !self.drops.contains_key(d) {
                if let Ok(wd) = self.watches.add(d, mask()) {
                    self.dirs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(wd.clone(), d.clone());
                    self.drops.insert(d.clone(), wd);
                }
            }
        }
    }
}
