//! Turns a vassal's OCI spec into a running container: prepares the host side
//! (home, socket directory, skeleton root, cgroup), converts the spec into the
//! child's plan and starts the init through `sys::launch`.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use model::VassalFile;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use sys::cgroup::{CgroupError, CgroupTree, Limits};
use sys::launch::{ChildPlan, FsOp, LaunchError, MountOp, Pending};
use sys::Pidfd;

use crate::spec::{self, Input, Source, SpecError};

/// Why a vassal could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The spec could not be built.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Preparing a directory or file on the host.
    #[error("preparing {path}: {err}")]
    Prepare {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        err: io::Error,
    },
    /// A path the emperor is about to mount is a symlink.
    #[error("{0} is a symlink; refusing to mount it")]
    Symlink(PathBuf),
    /// Creating or limiting the cgroup.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Starting the init.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// Processes left in the cgroup did not die.
    #[error("processes left in cgroup {0} did not die")]
    Leftover(String),
    /// A string with a NUL byte (cannot reach the kernel).
    #[error("a path or argument holds a NUL byte")]
    Nul,
    /// Giving the container its network.
    #[error("network: {0}")]
    Network(io::Error),
}

impl SpawnError {
    /// Whether a later try may succeed without a change of the file.
    pub fn is_transient(&self) -> bool {
        match self {
            SpawnError::Launch(e) => e.is_transient(),
            SpawnError::Cgroup(_) | SpawnError::Leftover(_) => true,
            SpawnError::Prepare { err, .. } => {
                matches!(
                    err.raw_os_error(),
                    Some(libc::ENOSPC | libc::EAGAIN | libc::ENOMEM)
                )
            }
            _ => false,
        }
    }
}

fn prep<T>(path: &Path, r: io::Result<T>) -> Result<T, SpawnError> {
    r.map_err(|err| SpawnError::Prepare {
        path: path.to_path_buf(),
        err,
    })
}

/// Creates `dir` (not through a symlink) owned by `uid` with `mode`, or checks the existing one.
fn owned_dir(dir: &Path, uid: Option<u32>, mode: u32) -> Result<(), SpawnError> {
    match dir.symlink_metadata() {
        Ok(m) if m.file_type().is_symlink() => return Err(SpawnError::Symlink(dir.to_path_buf())),
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return prep(dir, Err(e)),
    }
    prep(dir, std::fs::create_dir_all(dir))?;
    own(dir, uid, mode)
}

/// Gives a directory just made its mode and owner (`None`: root's).
fn own(dir: &Path, uid: Option<u32>, mode: u32) -> Result<(), SpawnError> {
    prep(
        dir,
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)),
    )?;
    if let Some(uid) = uid {
        prep(dir, chown(dir, Some(uid), Some(uid)))?;
    }
    Ok(())
}

/// Starts containers.
#[derive(Debug)]
pub struct Spawner {
    tree: Arc<dyn CgroupTree>,
    seccomp: Vec<u8>,
    netns: Option<sys::netns::NetnsPool>,
    net: Option<Arc<crate::network::HostNet>>,
}

impl Spawner {
    /// A spawner over this cgroup tree, with this compiled seccomp program.
    pub fn new(tree: Arc<dyn CgroupTree>, seccomp: Vec<u8>) -> Spawner {
        Spawner {
            tree,
            seccomp,
            netns: None,
            net: None,
        }
    }

    /// Gives every container with an address an `eth0` on the host's bridge.
    pub fn with_network(mut self, net: Arc<crate::network::HostNet>) -> Spawner {
        self.net = Some(net);
        self
    }

    /// Keeps a few network namespaces ready, so that a start joins one instead of making it.
    pub fn with_netns_pool(mut self, size: usize) -> Spawner {
        match sys::netns::NetnsPool::start(size) {
            Ok(pool) => self.netns = Some(pool),
            Err(e) => {
                tracing::warn!(error = %e, "no network namespace pool; each start makes its own")
            }
        }
        self
    }

    /// Prepares the host side of a vassal: its home (and `usr-local`), for a
    /// group its drop directory, for a group's site the `<home_root>/<site>`
    /// symlink, and the socket directory.
    pub fn prepare_host(&self, inp: &Input<'_>) -> Result<(), SpawnError> {
        let home = inp.home();
        // With quotas, a new home is a subvolume counted in its group's
        // qgroup (btrfs), or a directory of the tenant's project (XFS, ext4);
        // the bind below gives it its owner and mode, as to a new directory.
        let mut made_home = false;
        if let Some((backend, group)) = inp.quota {
            use crate::storage::Backend;
            made_home = match backend {
                Backend::Btrfs => {
                    if let VassalFile::Site(s) = inp.file {
                        if let Some(g) = &s.group {
                            let gh = inp.layout.group_home(g);
                            prep(&gh, crate::storage::make_home(&gh, group))?;
                        }
                    }
                    prep(&home, crate::storage::make_home(&home, group))?
                }
                Backend::Project(_) => {
                    prep(&home, crate::storage::make_project_home(&home, inp.uid))?
                }
                Backend::None(_) => false,
            };
            if let Err(e) =
                crate::storage::apply(backend, inp.layout, inp.file, &home, inp.uid, group)
            {
                tracing::warn!(vassal = %inp.name, error = %e, "storage limit not applied");
            }
        }
        if let VassalFile::Site(s) = inp.file {
            if let Some(g) = &s.group {
                owned_dir(&inp.layout.group_home(g), None, 0o755)?;
            }
        }
        // The sources of the container's binds, from the spec's one table.
        for b in spec::binds(inp) {
            match b.make {
                Source::Given => {}
                Source::Dir { owner, mode } if made_home && b.source == home => {
                    own(&b.source, owner, mode)?
                }
                Source::Dir { owner, mode } => owned_dir(&b.source, owner, mode)?,
                Source::Shared => prep(&b.source, std::fs::create_dir_all(&b.source))?,
                Source::File => {
                    if !b.source.is_file() {
                        let parent = b.source.parent().expect("a file in a directory");
                        owned_dir(parent, None, 0o755)?;
                        use std::os::unix::fs::OpenOptionsExt;
                        let made = std::fs::OpenOptions::new()
                            .write(true)
                            .create(true)
                            .truncate(false)
                            .mode(0o644)
                            .open(&b.source);
                        prep(&b.source, made.map(|_| ()))?;
                    }
                }
            }
        }
        match inp.file {
            VassalFile::Group(_) => {
                // What the reseller's own vassal writes gets directories of its own.
                owned_dir(&inp.layout.drop_dir(inp.name), Some(inp.uid), 0o750)?;
                use model::layout::home as h;
                for (dir, mode) in [
                    (h::processes(&home), 0o750),
                    (h::logs(&home), 0o750),
                    (h::private(&home), 0o700),
                ] {
                    owned_dir(&dir, Some(inp.uid), mode)?;
                }
            }
            VassalFile::Site(s) => {
                if s.group.is_some() {
                    let link = inp.layout.site_link(inp.name);
                    if link.symlink_metadata().is_err() {
                        let target = home.strip_prefix(&inp.layout.home_root).unwrap_or(&home);
                        prep(&link, std::os::unix::fs::symlink(target, &link))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Kills whatever is still in a site's cgroup before a start: an init
    /// the emperor did not adopt (one a crashed emperor cloned but never
    /// recorded) must never run beside the new one.
    fn evict(&self, cgroup: &str) -> Result<(), SpawnError> {
        if self.tree.procs(cgroup)?.is_empty() {
            return Ok(());
        }
        tracing::warn!(%cgroup, "processes left in the cgroup of a vassal about to start; killing them");
        self.tree.kill_all(cgroup)?;
        let deadline = crate::clock::now() + std::time::Duration::from_secs(5);
        while !self.tree.procs(cgroup)?.is_empty() {
            if crate::clock::now() > deadline {
                return Err(SpawnError::Leftover(cgroup.to_owned()));
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Ok(())
    }

    /// Starts the vassal's container: spec, skeleton, cgroup, clone, exec.
    pub fn start(&self, inp: &Input<'_>) -> Result<Pidfd, SpawnError> {
        Ok(self.begin(inp)?.wait()?)
    }

    /// Like [`Spawner::start`], but returns once the child is cloned; the child
    /// sets its container up while the caller goes on.
    pub fn begin(&self, inp: &Input<'_>) -> Result<Pending, SpawnError> {
        let t = crate::clock::now();
        self.prepare_host(inp)?;
        let host = crate::clock::now().saturating_duration_since(t);
        let spec = spec::build(inp)?;
        let root = inp.layout.root_dir(inp.name);
        prep(&root, std::fs::create_dir_all(&root))?;
        let mut plan = plan(&spec, &spec::skeleton(inp, &spec), inp.uid, &self.seccomp)?;
        open_binds(&mut plan, &root)?;
        if plan.namespaces & libc::CLONE_NEWNET != 0 {
            let mut ns = self.netns.as_ref().and_then(|p| p.take());
            let address = inp.net.map(|a| a.offset).zip(self.net.as_ref());
            if ns.is_none() && address.is_some() {
                // The link goes in before the clone: the namespace is made here.
                ns = Some(sys::netns::fresh().map_err(SpawnError::Network)?);
            }
            if let Some(ns) = ns {
                if let Some((offset, net)) = address {
                    net.attach(std::os::fd::AsFd::as_fd(&ns), offset)
                        .map_err(SpawnError::Network)?;
                }
                plan.namespaces &= !libc::CLONE_NEWNET;
                plan.loopback_up = false;
                plan.netns = Some(ns);
            }
        }
        let planned = crate::clock::now().saturating_duration_since(t);
        let cgroup = inp.cgroup();
        self.tree.create(&cgroup)?;
        self.evict(&cgroup)?;
        self.tree.set_limits(&cgroup, &cgroup_limits(inp.file))?;
        let join = self.tree.join(&cgroup)?;
        let cgroups = crate::clock::now().saturating_duration_since(t);
        let pending = sys::launch::start(&plan, &join)?;
        tracing::debug!(
            vassal = %inp.name,
            host_us = host.as_micros() as u64,
            plan_us = (planned - host).as_micros() as u64,
            cgroup_us = (cgroups - planned).as_micros() as u64,
            clone_us = (crate::clock::now().saturating_duration_since(t) - cgroups).as_micros() as u64,
            "spawn phases"
        );
        Ok(pending)
    }
}

/// The cgroup limits of a vassal file (a group's own container has none of its
/// own: its group's cgroup caps it).
pub fn cgroup_limits(file: &VassalFile) -> Limits {
    match file {
        VassalFile::Group(_) => Limits::default(),
        VassalFile::Site(s) => Limits {
            memory: s.limits.memory.map(|m| m.0),
            cpu: s.limits.cpu,
            pids: s.limits.pids,
        },
    }
}

/// A group's own limits, for its parent cgroup.
pub fn group_limits(file: &VassalFile) -> Limits {
    let l = file.limits();
    Limits {
        memory: l.memory.map(|m| m.0),
        cpu: l.cpu,
        pids: l.pids,
    }
}

fn cstr(s: impl AsRef<[u8]>) -> Result<CString, SpawnError> {
    CString::new(s.as_ref()).map_err(|_| SpawnError::Nul)
}

/// Mount option words and the `MS_*` flag each sets.
const FLAGS: &[(&str, libc::c_ulong)] = &[
    ("ro", libc::MS_RDONLY),
    ("nosuid", libc::MS_NOSUID),
    ("nodev", libc::MS_NODEV),
    ("noexec", libc::MS_NOEXEC),
    ("relatime", libc::MS_RELATIME),
    ("noatime", libc::MS_NOATIME),
];

/// Opens, here and now, every host path the child would bind by path: each
/// is opened without following a symlink (a tenant's `usr-local` swapped for
/// a link to `/` is refused, not mounted), cloned as a detached mount tree
/// with its flags set on every mount below it (a read-only bind is read-only
/// all the way down), and handed to the child, which attaches exactly that.
/// Binds whose source is under the new root (the child's own tmpfs) stay.
pub fn open_binds(plan: &mut ChildPlan, root: &Path) -> Result<(), SpawnError> {
    use sys::fs::attr;
    let root = root.as_os_str().as_bytes();
    for op in plan.fs.iter_mut() {
        let FsOp::Mount(m) = op else { continue };
        let Some(source) = m.source.as_ref() else {
            continue;
        };
        if m.flags & libc::MS_BIND == 0 || source.as_bytes().starts_with(root) {
            continue;
        }
        let flags = m.remount.unwrap_or(0) | m.flags;
        let attrs = [
            (libc::MS_RDONLY, attr::RDONLY),
            (libc::MS_NOSUID, attr::NOSUID),
            (libc::MS_NODEV, attr::NODEV),
            (libc::MS_NOEXEC, attr::NOEXEC),
        ]
        .iter()
        .filter(|(ms, _)| flags & ms != 0)
        .fold(0, |a, (_, at)| a | at);
        let path = Path::new(std::ffi::OsStr::from_bytes(source.as_bytes()));
        let (tree, _) = prep(
            path,
            sys::fs::open_bind(path, m.flags & libc::MS_REC != 0, attrs),
        )?;
        *op = FsOp::Attach {
            tree,
            target: m.target.clone(),
        };
    }
    Ok(())
}

/// Converts the spec and the skeleton of its root into the child's plan.
pub fn plan(
    spec: &Spec,
    skeleton: &[spec::Skel],
    uid: u32,
    seccomp: &[u8],
) -> Result<ChildPlan, SpawnError> {
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_default();
    let linux = spec.linux().as_ref();
    let mut namespaces = 0;
    for ns in linux
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
    {
        namespaces |= match ns.typ() {
            LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
            LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
            LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
            LinuxNamespaceType::Network => libc::CLONE_NEWNET,
            LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
            LinuxNamespaceType::User => libc::CLONE_NEWUSER,
            _ => 0,
        };
    }
    let under = |p: &Path| {
        cstr(
            root.join(p.strip_prefix("/").unwrap_or(p))
                .as_os_str()
                .as_bytes(),
        )
    };
    // The spec's tmpfs mounts (/tmp, /dev/shm) become directories of the
    // root's own tmpfs, each bound over itself with its flags (writable
    // under the read-only root): the kernel keeps, in every memory cgroup,
    // a slot for every superblock of the host, so each superblock a
    // container makes costs every site's cgroup (README, *Density*).
    let scratch: Vec<(PathBuf, u32)> = spec
        .mounts()
        .iter()
        .flatten()
        .filter(|m| m.typ().as_deref() == Some("tmpfs"))
        .map(|m| {
            let dest = m.destination();
            let mode = m
                .options()
                .iter()
                .flatten()
                .find_map(|o| o.strip_prefix("mode="))
                .and_then(|o| u32::from_str_radix(o, 8).ok())
                .unwrap_or(0o1777);
            (dest.strip_prefix("/").unwrap_or(dest).to_path_buf(), mode)
        })
        .collect();
    let mut fs = Vec::new();
    for e in skeleton {
        fs.push(match e {
            spec::Skel::Dir(p) => {
                let mode = scratch.iter().find(|(d, _)| d == p).map(|(_, m)| *m);
                FsOp::Dir(under(p)?, mode.unwrap_or(0o755))
            }
            spec::Skel::File(p, content) => FsOp::File(under(p)?, content.clone()),
            spec::Skel::Symlink(target, p) => {
                FsOp::Symlink(cstr(target.as_os_str().as_bytes())?, under(p)?)
            }
        });
    }
    for d in linux
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
    {
        fs.push(FsOp::Device {
            path: under(d.path())?,
            mode: d.file_mode().unwrap_or(0o666),
            major: d.major() as u32,
            minor: d.minor() as u32,
        });
    }
    // Read-only binds of /etc entries come from one read-only bind of the
    // rootfs's /etc: a bind inherits its source mount's flags, which saves a
    // remount per entry. The staging mount is detached before pivot_root.
    let staging = Path::new("/.imperium-etc");
    let mut staged: Option<PathBuf> = None;
    for m in spec.mounts().iter().flatten() {
        let target = cstr(
            root.join(m.destination().strip_prefix("/").unwrap_or(m.destination()))
                .as_os_str()
                .as_bytes(),
        )?;
        let opts = m.options().clone().unwrap_or_default();
        let mut flags = 0;
        let mut data = Vec::new();
        let mut is_bind = m.typ().as_deref() == Some("bind");
        let mut recursive = false;
        for o in &opts {
            match o.as_str() {
                "bind" => is_bind = true,
                "rbind" => {
                    is_bind = true;
                    recursive = true;
                }
                "rw" => {}
                o => match FLAGS.iter().find(|(w, _)| *w == o) {
                    Some((_, f)) => flags |= f,
                    None => data.push(o.to_owned()),
                },
            }
        }
        let source_path = m.source().clone().unwrap_or_default();
        let etc_dir = source_path
            .parent()
            .filter(|p| p.file_name() == Some("etc".as_ref()))
            .map(Path::to_path_buf);
        let ro_etc = is_bind
            && flags == libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV
            && etc_dir.is_some();
        if ro_etc && staged.is_none() {
            fs.push(FsOp::Dir(under(staging)?, 0o700));
            fs.push(FsOp::Mount(MountOp {
                source: Some(cstr(
                    etc_dir.clone().unwrap_or_default().as_os_str().as_bytes(),
                )?),
                target: under(staging)?,
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
                remount: Some(flags),
            }));
            staged = etc_dir.clone();
        }
        let source = cstr(source_path.as_os_str().as_bytes())?;
        fs.push(FsOp::Mount(if ro_etc && staged == etc_dir {
            let name = source_path.file_name().unwrap_or_default();
            MountOp {
                source: Some(under(&staging.join(name))?),
                target,
                fstype: None,
                flags: libc::MS_BIND | if recursive { libc::MS_REC } else { 0 },
                data: None,
                remount: None,
            }
        } else if is_bind {
            MountOp {
                source: Some(source),
                target,
                fstype: None,
                flags: libc::MS_BIND | if recursive { libc::MS_REC } else { 0 },
                data: None,
                remount: (flags != 0).then_some(flags),
            }
        } else if m.typ().as_deref() == Some("tmpfs") {
            // A directory of the root's tmpfs (see `scratch`).
            MountOp {
                source: Some(target.clone()),
                target,
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
                remount: Some(flags),
            }
        } else {
            MountOp {
                source: Some(source),
                target,
                fstype: m.typ().as_ref().map(cstr).transpose()?,
                flags,
                data: (!data.is_empty())
                    .then(|| cstr(data.join(",")))
                    .transpose()?,
                remount: None,
            }
        }));
    }
    if staged.is_some() {
        fs.push(FsOp::Detach(under(staging)?));
    }
    // Masked and read-only paths, under /proc (the only pseudo filesystem
    // mounted). A directory is masked by a read-only bind of an empty one of
    // the root's tmpfs, removed again once bound (no tmpfs of its own: see
    // `scratch`); a file by /dev/null.
    let linux_paths = |v: Option<&Vec<String>>| -> Vec<(String, bool)> {
        v.into_iter()
            .flatten()
            .filter(|p| p.starts_with("/proc/"))
            .filter_map(|p| Some((p.clone(), spec::proc_entry(p)?)))
            .collect()
    };
    let empty = under(Path::new("/.imperium-mask"))?;
    let masked = linux_paths(linux.and_then(|l| l.masked_paths().as_ref()));
    let masks_dirs = masked.iter().any(|(_, dir)| *dir);
    if masks_dirs {
        fs.push(FsOp::Dir(empty.clone(), 0o555));
    }
    for (p, dir) in masked {
        let target = under(Path::new(&p))?;
        fs.push(FsOp::Mount(if dir {
            MountOp {
                source: Some(empty.clone()),
                target,
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
                remount: Some(libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC),
            }
        } else {
            MountOp {
                source: Some(cstr("/dev/null")?),
                target,
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
                remount: None,
            }
        }));
    }
    if masks_dirs {
        fs.push(FsOp::Rmdir(empty));
    }
    for (p, _) in linux_paths(linux.and_then(|l| l.readonly_paths().as_ref())) {
        let target = under(Path::new(&p))?;
        fs.push(FsOp::Mount(MountOp {
            source: Some(target.clone()),
            target,
            fstype: None,
            flags: libc::MS_BIND | libc::MS_REC,
            data: None,
            remount: Some(libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC),
        }));
    }
    let process = spec.process().as_ref();
    let mut rlimits = Vec::new();
    for r in process
        .and_then(|p| p.rlimits().as_ref())
        .into_iter()
        .flatten()
    {
        use oci_spec::runtime::PosixRlimitType as T;
        let res = match r.typ() {
            T::RlimitNofile => libc::RLIMIT_NOFILE,
            T::RlimitNproc => libc::RLIMIT_NPROC,
            T::RlimitCore => libc::RLIMIT_CORE,
            T::RlimitStack => libc::RLIMIT_STACK,
            T::RlimitMemlock => libc::RLIMIT_MEMLOCK,
            _ => continue,
        };
        rlimits.push((res, r.soft(), r.hard()));
    }
    let args: Vec<String> = process.and_then(|p| p.args().clone()).unwrap_or_default();
    let env: Vec<String> = process.and_then(|p| p.env().clone()).unwrap_or_default();
    let cwd = process
        .map(|p| p.cwd().clone())
        .unwrap_or_else(|| PathBuf::from("/"));
    let gid = process.map(|p| p.user().gid()).unwrap_or(uid);
    Ok(ChildPlan {
        namespaces,
        root: cstr(root.as_os_str().as_bytes())?,
        fs,
        hostname: spec.hostname().as_ref().map(cstr).transpose()?,
        loopback_up: namespaces & libc::CLONE_NEWNET != 0,
        readonly_root: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        uid: process.map(|p| p.user().uid()).unwrap_or(uid),
        gid,
        workdir: cstr(cwd.as_os_str().as_bytes())?,
        exe: cstr(
            args.first()
                .map(String::as_str)
                .unwrap_or(spec::VASSAL_INSIDE),
        )?,
        argv: args.iter().map(cstr).collect::<Result<_, _>>()?,
        env: env.iter().map(cstr).collect::<Result<_, _>>()?,
        seccomp: (!seccomp.is_empty()).then(|| seccomp.to_vec()),
        rlimits,
        netns: None,
        held_signals: INIT_SIGNALS.to_vec(),
    })
}

/// The signals `vassal init` reads through its signalfd (its `HANDLED`):
/// blocked from its first instruction, so that a stop sent as it starts
/// waits for it (see [`sys::ChildPlan::held_signals`]).
const INIT_SIGNALS: [libc::c_int; 8] = [
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];
