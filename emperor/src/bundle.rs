//! `emperor spec NAME --bundle DIR`: a standalone OCI bundle of a vassal's
//! container, which crun or runc run unmodified beside the live site.
//!
//! The live spec describes the running container: its root is the emperor's
//! mount point, its cgroup the live site's, its binds the live home and
//! sockets. Run as printed, a runtime would share all of them (crun killed a
//! live init that way). The bundle keeps only what is read-only on the host
//! (the OS, the shared `/etc` entries, the vassal binary); everything the
//! container may write gets a place of its own in the bundle, the router's
//! socket and the site's key stay out (a copy must not subscribe the live
//! site's domains), and the runtime makes its own cgroup and namespaces.

use std::io;
use std::os::unix::fs::{chown, DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use model::layout::inside;
use oci_spec::runtime::{Mount, RootBuilder, Spec};

use crate::spec::Skel;

/// What a bundle is made from: the live spec and skeleton, the tenant's uid,
/// the home inside (`/home/<user>`), and the home on the host when it is to
/// be copied.
pub struct Source<'a> {
    /// The live container's spec.
    pub spec: Spec,
    /// The skeleton of its root.
    pub skeleton: &'a [Skel],
    /// The tenant.
    pub uid: u32,
    /// `/home/<user>`.
    pub home_inside: String,
    /// The home on the host, to copy (`None`: the bundle's home starts empty).
    pub copy_home: Option<PathBuf>,
}

/// Writes the bundle into `dir` (made here; it must not exist, and is
/// removed again when the bundle cannot be written whole).
pub fn write(src: Source<'_>, dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().mode(0o711).create(dir)?;
    let written = write_into(src, dir);
    if written.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    written
}

fn write_into(src: Source<'_>, dir: &Path) -> io::Result<()> {
    let rootfs = dir.join("rootfs");
    std::fs::DirBuilder::new().mode(0o755).create(&rootfs)?;
    // No mount point for what stays out.
    let out: Vec<&Path> = [inside::ROUTER, inside::SITE_KEY, inside::API]
        .iter()
        .filter_map(|d| Path::new(d).strip_prefix("/").ok())
        .collect();
    for s in src.skeleton {
        if let Skel::Dir(p) | Skel::File(p, _) = s {
            if out.contains(&p.as_path()) {
                continue;
            }
        }
        match s {
            Skel::Dir(p) => std::fs::DirBuilder::new()
                .mode(0o755)
                .recursive(true)
                .create(rootfs.join(p))?,
            Skel::File(p, content) => std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(rootfs.join(p))
                .and_then(|mut f| io::Write::write_all(&mut f, content))?,
            Skel::Symlink(target, p) => std::os::unix::fs::symlink(target, rootfs.join(p))?,
        }
    }
    // The places the container writes, its own.
    let home = dir.join("home");
    match &src.copy_home {
        Some(live) => copy_tree(live, &home)?,
        None => {
            std::fs::DirBuilder::new().mode(0o750).create(&home)?;
            chown(&home, Some(src.uid), Some(src.uid))?;
        }
    }
    let usr_local = home.join(inside::USR_LOCAL_IN_HOME);
    if usr_local.symlink_metadata().is_err() {
        std::fs::DirBuilder::new().mode(0o755).create(&usr_local)?;
        chown(&usr_local, Some(src.uid), Some(src.uid))?;
    }
    let sockets = dir.join("sockets");
    std::fs::DirBuilder::new().mode(0o750).create(&sockets)?;
    chown(&sockets, Some(src.uid), Some(src.uid))?;
    let usage = dir.join("usage");
    std::fs::DirBuilder::new().mode(0o755).create(&usage)?;
    let utmp = dir.join("utmp");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o664)
        .open(&utmp)?;

    let spec = rewrite(
        src.spec,
        &src.home_inside,
        &[
            ("home", home),
            ("usr-local", usr_local),
            ("sockets", sockets),
            ("usage", usage),
            ("utmp", utmp),
        ],
    )?;
    let json = serde_json::to_vec_pretty(&spec).map_err(io::Error::other)?;
    std::fs::write(dir.join("config.json"), json)
}

/// The live spec made standalone: its root the bundle's `rootfs`, no cgroup
/// path or namespace path of the live site, and every writable bind pointed
/// at the bundle's own place (`own`: home, usr-local, sockets, usage, utmp).
/// A writable bind it does not know is refused rather than shared.
pub fn rewrite(mut spec: Spec, home_inside: &str, own: &[(&str, PathBuf)]) -> io::Result<Spec> {
    let place = |key: &str| {
        own.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, p)| p.clone())
            .ok_or_else(|| io::Error::other(format!("no place for {key}")))
    };
    let mut mounts: Vec<Mount> = Vec::new();
    for mut m in spec.mounts().clone().unwrap_or_default() {
        let dest = m.destination().to_string_lossy().into_owned();
        let key = match dest.as_str() {
            d if d == home_inside => Some("home"),
            "/usr/local" => Some("usr-local"),
            inside::SOCKETS => Some("sockets"),
            inside::USAGE => Some("usage"),
            inside::UTMP => Some("utmp"),
            // A copy must not speak for the live site to the router or the emperor.
            inside::ROUTER | inside::SITE_KEY | inside::API => continue,
            _ => None,
        };
        match key {
            Some(k) => {
                m.set_source(Some(place(k)?));
            }
            None => {
                let options = m.options().clone().unwrap_or_default();
                let bind = m.typ().as_deref() == Some("bind");
                if bind && !options.iter().any(|o| o == "ro") {
                    return Err(io::Error::other(format!(
                        "{dest} is a writable bind the bundle has no place of its own for"
                    )));
                }
            }
        }
        mounts.push(m);
    }
    spec.set_mounts(Some(mounts));
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(true)
            .build()
            .map_err(io::Error::other)?,
    ));
    if let Some(linux) = spec.linux_mut() {
        linux.set_cgroups_path(None);
        if let Some(ns) = linux.namespaces_mut() {
            for n in ns.iter_mut() {
                n.set_path(None);
            }
        }
    }
    Ok(spec)
}

/// `cp -a` of a home (owners, modes, times, links as links; blocks shared
/// where the filesystem can).
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let out = std::process::Command::new("cp")
        .args(["-a", "--reflink=auto", "--"])
        .arg(from)
        .arg(to)
        .stdin(std::process::Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "copying the home: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::MountBuilder;

    fn bind(dest: &str, src: &str, options: &[&str]) -> Mount {
        MountBuilder::default()
            .destination(dest)
            .typ("bind")
            .source(src)
            .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap()
    }

    #[test]
    fn writable_binds_get_the_bundles_own_places_and_the_router_stays_out() {
        let mut spec = Spec::default();
        spec.set_mounts(Some(vec![
            bind("/usr", "/usr", &["rbind", "ro"]),
            bind("/home/s1", "/live/home/s1", &["bind", "rw"]),
            bind("/usr/local", "/live/home/s1/usr-local", &["bind", "rw"]),
            bind(inside::SOCKETS, "/live/run/sockets/s1", &["bind", "rw"]),
            bind(inside::ROUTER, "/live/run/router", &["bind", "ro"]),
            bind(inside::SITE_KEY, "/live/state/keys/s1.key", &["bind", "ro"]),
        ]));
        let own = [
            ("home", PathBuf::from("/b/home")),
            ("usr-local", PathBuf::from("/b/home/usr-local")),
            ("sockets", PathBuf::from("/b/sockets")),
            ("usage", PathBuf::from("/b/usage")),
            ("utmp", PathBuf::from("/b/utmp")),
        ];
        let out = rewrite(spec, "/home/s1", &own).unwrap();
        let got: Vec<(String, String)> = out
            .mounts()
            .clone()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m.destination().display().to_string(),
                    m.source().clone().unwrap().display().to_string(),
                )
            })
            .collect();
        let want = [
            ("/usr", "/usr"),
            ("/home/s1", "/b/home"),
            ("/usr/local", "/b/home/usr-local"),
            (inside::SOCKETS, "/b/sockets"),
        ];
        assert_eq!(
            got,
            want.map(|(a, b)| (a.to_owned(), b.to_owned())).to_vec()
        );
        assert_eq!(out.root().as_ref().unwrap().path(), Path::new("rootfs"));
        assert!(out.linux().as_ref().unwrap().cgroups_path().is_none());

        // A writable bind it has no place for is never shared.
        let mut spec = Spec::default();
        spec.set_mounts(Some(vec![bind("/srv", "/live/srv", &["bind", "rw"])]));
        let err = rewrite(spec, "/home/s1", &own).unwrap_err();
        assert!(err.to_string().contains("/srv is a writable bind"), "{err}");
    }
}
