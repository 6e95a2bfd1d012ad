//! A removed vassal's home goes to the archive (renamed; copied off the loop
//! across filesystems); `emperor purge` deletes archived homes.

use super::*;

impl Manager {
    /// Moves a removed vassal's home into the archive and removes its runtime traces.
    pub(super) fn archive(&mut self, name: &Name, v: &Vassal) {
        let l = &self.cfg.layout;
        let _ = std::fs::remove_dir_all(l.sockets(name));
        let _ = std::fs::remove_file(l.utmp(name));
        let _ = std::fs::remove_file(l.site_key(name));
        let home = match &v.file {
            VassalFile::Group(_) => {
                // rmdir may wait for the kernel: off the loop.
                let (tree, cg) = (self.tree.clone(), l.group_cgroup(name));
                tokio::task::spawn_blocking(move || tree.remove(&cg));
                self.suspended_groups.remove(name);
                l.group_home(name)
            }
            VassalFile::Site(s) => {
                if s.group.is_some() {
                    let link = l.site_link(name);
                    if link
                        .symlink_metadata()
                        .map(|m| m.file_type().is_symlink())
                        .unwrap_or(false)
                    {
                        let _ = std::fs::remove_file(link);
                    }
                }
                l.site_home(s.group.as_ref(), name)
            }
        };
        if home.symlink_metadata().is_err() {
            return;
        }
        let stamp = crate::clock::wall_secs();
        let dest = l.archive_dir().join(format!("{name}-{stamp}"));
        match std::fs::rename(&home, &dest) {
            Ok(()) => tracing::info!(vassal = %name, archive = %dest.display(), "home archived"),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                // Another filesystem: the copy can take long, so it runs off
                // the loop. The home is first moved aside in its own directory
                // (instant, and the name is free for a new site at once).
                let aside = home.with_file_name(format!(".{name}.archiving-{stamp}"));
                if let Err(e) = std::fs::rename(&home, &aside) {
                    tracing::error!(vassal = %name, error = %e, "archiving the home failed; it stays in place");
                    return;
                }
                // Copied under a hidden name, then renamed: the archive never
                // shows a half copy under the home's archived name.
                let part = l.archive_dir().join(format!(".{name}-{stamp}.copying"));
                let name = name.clone();
                std::thread::spawn(move || {
                    let ok = std::process::Command::new("mv")
                        .arg(&aside)
                        .arg(&part)
                        .stdin(std::process::Stdio::null())
                        .status()
                        .map(|s| s.success())
                        .unwrap_or(false)
                        && std::fs::rename(&part, &dest).is_ok();
                    if ok {
                        tracing::info!(vassal = %name, archive = %dest.display(), "home archived");
                    } else {
                        tracing::error!(vassal = %name, aside = %aside.display(), "copying the home to the archive failed; it stays aside");
                    }
                });
            }
            Err(e) => {
                tracing::error!(vassal = %name, error = %e, "archiving the home failed; it stays in place")
            }
        }
    }

    /// Deletes `archive/<name>-<time>` directories; returns how many.
    pub(super) fn purge(&self, name: &Name) -> std::io::Result<usize> {
        let mut count = 0;
        for e in std::fs::read_dir(self.cfg.layout.archive_dir())?.flatten() {
            let file_name = e.file_name();
            let Some(stamp) = file_name
                .to_str()
                .and_then(|f| f.strip_prefix(name.as_str()))
                .and_then(|r| r.strip_prefix('-'))
            else {
                continue;
            };
            if !stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_digit()) {
                std::fs::remove_dir_all(e.path())?;
                tracing::info!(vassal = %name, archive = %e.path().display(), "archive purged");
                count += 1;
            }
        }
        Ok(count)
    }
}
