//! inotify on the admin directory and the drop directories: any change of a
//! file there becomes one `FilesChanged` event (the manager rereads the
//! directories; the periodic rescan is the safety net).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use inotify::{Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::mpsc;

use crate::manager::Event;

pub(crate) struct Watcher {
    watches: Watches,
    drops: BTreeMap<PathBuf, WatchDescriptor>,
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
        watches.add(admin, mask())?;
        let mut stream = inotify.into_event_stream(vec![0u8; 16384])?;
        tokio::spawn(async move {
            while let Some(ev) = stream.next().await {
                if ev.is_err() || tx.send(Event::FilesChanged).is_err() {
                    // An overflow or a read error: ask for a full rescan and go on.
                    let _ = tx.send(Event::FilesChanged);
                }
            }
        });
        Ok(Watcher {
            watches,
            drops: BTreeMap::new(),
        })
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
                let _ = self.watches.remove(wd);
            }
        }
        for d in dirs {
            if !self.drops.contains_key(d) {
                if let Ok(wd) = self.watches.add(d, mask()) {
                    self.drops.insert(d.clone(), wd);
                }
            }
        }
    }
}
