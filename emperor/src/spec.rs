//! A vassal's container as an OCI runtime spec (`config.json`), and the
//! skeleton root directory it points at.
//!
//! The spec is the one description of a container: the spawner turns it into
//! the child's plan, and `emperor spec NAME` prints it, so the same site can be
//! run by crun or runc for comparison.
//!
//! Longer than the ~600 lines we aim for: the whole container (namespaces,
//! mounts, devices, limits, seccomp) is described in this one place, and a
//! quarter of the file is its tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use model::config::Rootfs;
use model::layout::inside;
use model::{Layout, Name, VassalFile};
use oci_spec::runtime::{
    Capabilities, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceBuilder,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, LinuxSeccompAction,
    LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscallBuilder, Mount,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

/// Why a spec could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// oci-spec refused a value.
    #[error("building the OCI spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
    /// The rootfs path has no OS in it.
    #[error("rootfs {0} has no usr directory")]
    Rootfs(PathBuf),
}

/// The top-level OS directories shared read-only from the rootfs.
pub const OS_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// The entries of the rootfs's /etc a tenant's programs need; nothing else of
/// the host's /etc (no shadow, no ssh host keys) is visible.
pub const ETC_SHARED: &[&str] = &[
    "alternatives",
    "bash.bashrc",
    "ca-certificates",
    "ca-certificates.conf",
    "environment",
    "gai.conf",
    "host.conf",
    "inputrc",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "php",
    "profile.d",
    "protocols",
    "services",
    "ssl",
    "terminfo",
    "timezone",
];

/// What a start reads of a root filesystem's OS entries (`OS_DIRS`, the
/// `ETC_SHARED` of its /etc, `usr/local`) and of the host's /proc: looked
/// up once and shared by the starts of the next [`VIEW_TTL`], not about a
/// hundred `stat` and `readlink` calls each. An entry the host gains (a
/// package's /etc directory) is in the containers started after that.
#[derive(Debug)]
pub struct OsView {
    /// `usr`, `bin`, ..., `etc/<entry>`: what each is, not following a symlink.
    entries: BTreeMap<PathBuf, Kind>,
    /// `usr` and `usr/local` are directories (through a symlink too).
    usr: bool,
    usr_local: bool,
}

/// One OS entry.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Dir,
    File,
    Link(PathBuf),
}

/// How long a read of the OS entries serves the starts after it.
pub const VIEW_TTL: Duration = Duration::from_secs(2);

impl OsView {
    fn read(os_root: &Path) -> OsView {
        let rels = OS_DIRS
            .iter()
            .map(PathBuf::from)
            .chain(ETC_SHARED.iter().map(|e| Path::new("etc").join(e)));
        let mut entries = BTreeMap::new();
        for rel in rels {
            let p = os_root.join(&rel);
            let kind = match p.symlink_metadata() {
                Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(&p) {
                    Ok(t) => Kind::Link(t),
                    Err(_) => continue,
                },
                Ok(m) if m.is_dir() => Kind::Dir,
                Ok(_) => Kind::File,
                Err(_) => continue,
            };
            entries.insert(rel, kind);
        }
        OsView {
            entries,
            usr: os_root.join("usr").is_dir(),
            usr_local: os_root.join("usr/local").is_dir(),
        }
    }

    /// The view of `os_root`, read again once older than [`VIEW_TTL`].
    pub fn of(os_root: &Path) -> Arc<OsView> {
        static CACHE: Cache<PathBuf, Arc<OsView>> = Mutex::new(BTreeMap::new());
        cached(&CACHE, os_root.to_path_buf(), || {
            Arc::new(OsView::read(os_root))
        })
    }
}

/// Whether a path of the host's /proc exists and is a directory (`None`:
/// absent), for its masks; read again once older than [`VIEW_TTL`].
pub fn proc_entry(path: &str) -> Option<bool> {
    static CACHE: Cache<String, Option<bool>> = Mutex::new(BTreeMap::new());
    cached(&CACHE, path.to_owned(), || {
        Path::new(path).metadata().ok().map(|m| m.is_dir())
    })
}

/// Values read at a time, by key.
type Cache<K, V> = Mutex<BTreeMap<K, (Instant, V)>>;

/// The value of `key` in `cache` if read within [`VIEW_TTL`], else `read()`'s.
fn cached<K: Ord, V: Clone>(cache: &Cache<K, V>, key: K, read: impl FnOnce() -> V) -> V {
    let now = crate::clock::now();
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, value)) = cache.get(&key) {
        if now.saturating_duration_since(*at) < VIEW_TTL {
            return value.clone();
        }
    }
    let value = read();
    cache.insert(key, (now, value.clone()));
    value
}

/// Files of /etc the emperor writes for each container.
pub const ETC_OWN: &[&str] = &[
    "hostname",
    "hosts",
    "resolv.conf",
    "passwd",
    "group",
    "profile",
];

/// A container's `/etc/profile` (login shells, SSH sessions): its `PATH`, the
/// host's `profile.d` and bash settings, and for a person at a terminal
/// where things are.
fn profile(name: &str) -> String {
    format!(
        r#"# /etc/profile of the site {name} (written by imperium).
PATH="{path}"
export PATH
if [ "${{PS1-}}" ]; then
  if [ "${{BASH-}}" ] && [ "$BASH" != "/bin/sh" ] && [ -f /etc/bash.bashrc ]; then
    . /etc/bash.bashrc
  else
    PS1='$ '
  fi
fi
if [ -d /etc/profile.d ]; then
  for i in /etc/profile.d/*.sh; do
    if [ -r "$i" ]; then . "$i"; fi
  done
  unset i
fi
case "$-" in
*i*)
  echo "Site {name}: processes and jobs in ~/vassals/, logs in ~/logs/."
  echo "'vassal status' shows them, 'vassal notifications' the site's alarms and messages."
  ;;
esac
"#,
        path = model::layout::inside::PATH
    )
}

/// The device nodes of a container's /dev: (name, major, minor).
pub const DEVICES: &[(&str, i64, i64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The path of the vassal binary inside every container.
pub const VASSAL_INSIDE: &str = model::layout::inside::VASSAL;

/// `vassal-notify` (the notifications database's program), beside the vassal.
pub fn notify_exe(vassal_exe: &Path) -> PathBuf {
    vassal_exe.with_file_name("vassal-notify")
}

/// What a spec is built from.
#[derive(Debug)]
pub struct Input<'a> {
    /// The vassal's name (also its hostname).
    pub name: &'a Name,
    /// Its accepted file.
    pub file: &'a VassalFile,
    /// The tenant's uid (and gid).
    pub uid: u32,
    /// The layout.
    pub layout: &'a Layout,
    /// The vassal binary on the host.
    pub vassal_exe: &'a Path,
    /// Whether the host's cgroups are v2 (else the v1 hierarchies).
    pub cgroup_v2: bool,
    /// Its address, when sites have a network.
    pub net: Option<model::network::Assigned>,
    /// What enforces `storage`, when something does, and (btrfs) the
    /// group's level-1 qgroup for a group or a group's site.
    pub quota: Option<(&'a crate::storage::Backend, Option<u64>)>,
    /// Where lxcfs is mounted, when the host runs it (see [`LXCFS_PROC`]).
    pub lxcfs: Option<&'a Path>,
}

/// The files of `/proc` that lxcfs answers for the cgroup of whoever reads
/// them (memory and swap against the site's limit, its CPU quota, its own
/// uptime and load): bound over the container's own, so that `free`,
/// `uptime`, `top` and programs that size themselves from `/proc/meminfo`
/// see the site, not the host.
pub const LXCFS_PROC: &[&str] = &[
    "cpuinfo",
    "diskstats",
    "loadavg",
    "meminfo",
    "stat",
    "swaps",
    "uptime",
];

impl Input<'_> {
    /// The tenant's login name.
    pub fn user(&self) -> Name {
        self.file.user(self.name)
    }

    /// The home on the host.
    pub fn home(&self) -> PathBuf {
        match self.file {
            VassalFile::Group(_) => self.layout.group_home(self.name),
            VassalFile::Site(s) => self.layout.site_home(s.group.as_ref(), self.name),
        }
    }

    /// The cgroup path relative to each hierarchy root.
    pub fn cgroup(&self) -> String {
        match self.file {
            VassalFile::Group(_) => self.layout.cgroup(None, self.name, true),
            VassalFile::Site(s) => self.layout.cgroup(s.group.as_ref(), self.name, false),
        }
    }

    /// The root filesystem's top directory.
    pub fn os_root(&self) -> PathBuf {
        match &self.file.container().rootfs {
            Rootfs::Host => PathBuf::from("/"),
            Rootfs::Path(p) => p.clone(),
        }
    }
}

fn bind(dest: &str, source: &Path, opts: &[&str]) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(opts.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()?)
}

fn fs(dest: &str, typ: &str, opts: &[&str]) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(typ)
        .options(opts.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()?)
}

/// How the host side of one of the container's own binds is made before a start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// It is there already (the vassal binary; the site's key, written just before).
    Given,
    /// A directory with this owner (`None`: root) and mode, never a link.
    Dir {
        /// Its owner.
        owner: Option<u32>,
        /// Its mode.
        mode: u32,
    },
    /// A directory root owns, shared by every container (the router's).
    Shared,
    /// An empty file root owns (0644), in a directory root owns.
    File,
}

/// One of the container's own binds (the OS entries of the rootfs aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Where it is mounted in the container.
    pub dest: String,
    /// What is mounted, on the host.
    pub source: PathBuf,
    /// Its mount options.
    pub opts: &'static [&'static str],
    /// How the spawner makes the source before a start.
    pub make: Source,
}

const RW: &[&str] = &["bind", "rw", "nosuid", "nodev"];
const RW_NOEXEC: &[&str] = &["bind", "rw", "nosuid", "nodev", "noexec"];
const RO: &[&str] = &["bind", "ro", "nosuid", "nodev"];
const RO_NOEXEC: &[&str] = &["bind", "ro", "nosuid", "nodev", "noexec"];

/// The container's own binds: the one table the spec mounts and the spawner
/// makes on the host (`Spawner::prepare_host`), so a new bind is one entry here.
pub fn binds(inp: &Input<'_>) -> Vec<Bind> {
    let b = |dest: &str, source: PathBuf, opts, make| Bind {
        dest: dest.to_owned(),
        source,
        opts,
        make,
    };
    let home = inp.home();
    let tenant = |mode| Source::Dir {
        owner: Some(inp.uid),
        mode,
    };
    let mut v = vec![b(
        &inside::home(inp.user().as_str()),
        home.clone(),
        RW,
        match inp.file {
            // A group's tree holds its sites' homes: root owns it, so the
            // reseller cannot swap a site's home for a symlink.
            VassalFile::Group(_) => Source::Dir {
                owner: None,
                mode: 0o755,
            },
            VassalFile::Site(_) => tenant(0o750),
        },
    )];
    if OsView::of(&inp.os_root()).usr_local {
        // The tenant's own /usr/local, kept in the home.
        v.push(b(
            "/usr/local",
            home.join(inside::USR_LOCAL_IN_HOME),
            RW,
            tenant(0o755),
        ));
    }
    v.push(b(
        inside::SOCKETS,
        inp.layout.sockets(inp.name),
        RW_NOEXEC,
        tenant(0o750),
    ));
    // Login records for SSH sessions (sshd writes them as root into the
    // container it joined); the root itself is read-only.
    v.push(b(
        inside::UTMP,
        inp.layout.utmp(inp.name),
        RW_NOEXEC,
        Source::File,
    ));
    v.push(b(
        VASSAL_INSIDE,
        inp.vassal_exe.to_path_buf(),
        RO,
        Source::Given,
    ));
    v.push(b(
        inside::NOTIFY,
        notify_exe(inp.vassal_exe),
        RO,
        Source::Given,
    ));
    // The vassal's disk usage, as the emperor reads it from the kernel.
    v.push(b(
        inside::USAGE,
        inp.layout.usage_dir(inp.name),
        RO_NOEXEC,
        Source::Dir {
            owner: None,
            mode: 0o755,
        },
    ));
    // The containers' API socket (its directory: a socket made again by a
    // restarted emperor appears in running containers).
    v.push(b(
        inside::API,
        inp.layout.vassal_api_dir(),
        RO_NOEXEC,
        Source::Shared,
    ));
    // The router's subscription socket, and a site's key to sign with.
    v.push(b(
        inside::ROUTER,
        inp.layout.router_dir(),
        RO_NOEXEC,
        Source::Shared,
    ));
    if matches!(inp.file, VassalFile::Site(_)) {
        // Written by the manager before the start (`keys::SiteKeys::write`).
        v.push(b(
            inside::SITE_KEY,
            inp.layout.site_key(inp.name),
            RO_NOEXEC,
            Source::Given,
        ));
    }
    if let Some(lxcfs) = inp.lxcfs {
        for f in LXCFS_PROC {
            let source = lxcfs.join("proc").join(f);
            if source.exists() {
                v.push(b(&format!("/proc/{f}"), source, RO_NOEXEC, Source::Given));
            }
        }
    }
    v
}

/// Which OS entries of the rootfs are directories to bind (symlinks are
/// recreated in the skeleton instead, as on usr-merged systems).
fn shared_entries(os_root: &Path, view: &OsView) -> Vec<(String, PathBuf)> {
    view.entries
        .iter()
        .filter(|(rel, kind)| match kind {
            Kind::Dir => true,
            Kind::File => rel.starts_with("etc"),
            Kind::Link(_) => false,
        })
        .map(|(rel, _)| (format!("/{}", rel.display()), os_root.join(rel)))
        .collect()
}

/// Builds the container's spec.
pub fn build(inp: &Input<'_>) -> Result<Spec, SpecError> {
    let user = inp.user();
    let home_inside = inside::home(user.as_str());
    let os_root = inp.os_root();
    let view = OsView::of(&os_root);
    if !view.usr {
        return Err(SpecError::Rootfs(os_root));
    }

    let mut mounts = vec![fs("/proc", "proc", &["nosuid", "noexec", "nodev"])?];
    for (dest, src) in shared_entries(&os_root, &view) {
        mounts.push(bind(&dest, &src, &["rbind", "ro", "nosuid", "nodev"])?);
    }
    mounts.push(fs(
        "/dev/pts",
        "devpts",
        &[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
        ],
    )?);
    mounts.push(fs(
        "/dev/shm",
        "tmpfs",
        &["nosuid", "nodev", "noexec", "mode=1777", "size=65536k"],
    )?);
    mounts.push(fs("/tmp", "tmpfs", &["nosuid", "nodev", "mode=1777"])?);
    for b in binds(inp) {
        mounts.push(bind(&b.dest, &b.source, b.opts)?);
    }
    // The site's own cgroup, read-only: the cgroup namespace roots what is
    // mounted at the site, so the tenant sees its figures and limits and
    // nothing of its neighbours.
    if inp.cgroup_v2 {
        mounts.push(fs(
            "/sys/fs/cgroup",
            "cgroup2",
            &["ro", "nosuid", "nodev", "noexec"],
        )?);
    } else {
        for ctl in ["memory", "pids", "cpu"] {
            mounts.push(fs(
                &format!("/sys/fs/cgroup/{ctl}"),
                "cgroup",
                &["ro", "nosuid", "nodev", "noexec", ctl],
            )?);
        }
    }

    let none: Capabilities = Default::default();
    let caps = LinuxCapabilitiesBuilder::default()
        .bounding(none.clone())
        .effective(none.clone())
        .inheritable(none.clone())
        .permitted(none.clone())
        .ambient(none)
        .build()?;
    let mut env = vec![
        format!("PATH={}", model::layout::inside::PATH),
        format!("HOME={home_inside}"),
        format!("USER={user}"),
        format!("LOGNAME={user}"),
        "SHELL=/bin/bash".to_owned(),
        "LANG=C.UTF-8".to_owned(),
        format!("IMPERIUM_VASSAL={}", inp.name),
    ];
    // The site's own address: where its `tcp:PORT` backends listen.
    if let Some(a) = &inp.net {
        env.push(format!("IMPERIUM_ADDRESS={}", a.v4));
    }
    // Never more than the emperor holds itself: raising a hard limit needs
    // CAP_SYS_RESOURCE, which a confined emperor may lack.
    let nofile_hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(65536)
        .min(65536);
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(inp.uid).gid(inp.uid).build()?)
        .args(init_args(inp.file, &home_inside))
        .env(env)
        .cwd(home_inside.clone())
        .capabilities(caps)
        .no_new_privileges(true)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(4096u64.min(nofile_hard))
            .hard(nofile_hard)
            .build()?])
        .build()?;

    let ns = |t| LinuxNamespaceBuilder::default().typ(t).build();
    let namespaces = vec![
        ns(LinuxNamespaceType::Pid)?,
        ns(LinuxNamespaceType::Mount)?,
        ns(LinuxNamespaceType::Uts)?,
        ns(LinuxNamespaceType::Ipc)?,
        ns(LinuxNamespaceType::Network)?,
        ns(LinuxNamespaceType::Cgroup)?,
    ];
    let limits = inp.file.limits();
    // The devices cgroup list for runtimes that enforce one (crun, runc): deny
    // all, allow the nodes of /dev and the ptys. The emperor itself relies on
    // the tenant holding no CAP_MKNOD and seeing only these nodes.
    let mut allow = vec![LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()?];
    for (major, minor) in DEVICES
        .iter()
        .map(|(_, ma, mi)| (*ma, Some(*mi)))
        .chain([(136, None), (5, Some(2))])
    {
        let mut rule = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(major)
            .access("rwm");
        if let Some(minor) = minor {
            rule = rule.minor(minor);
        }
        allow.push(rule.build()?);
    }
    let mut res = LinuxResourcesBuilder::default().devices(allow);
    if let Some(m) = limits.memory {
        res = res.memory(LinuxMemoryBuilder::default().limit(m.0 as i64).build()?);
    }
    if let Some(c) = limits.cpu {
        let period = sys::cgroup::CPU_PERIOD_US;
        let quota = sys::cgroup::cpu_quota_us(c) as i64;
        res = res.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(period)
                .build()?,
        );
    }
    if let Some(p) = limits.pids {
        res = res.pids(LinuxPidsBuilder::default().limit(p as i64).build()?);
    }

    let devices = DEVICES
        .iter()
        .map(|(name, major, minor)| {
            LinuxDeviceBuilder::default()
                .path(format!("/dev/{name}"))
                .typ(LinuxDeviceType::C)
                .major(*major)
                .minor(*minor)
                .file_mode(0o666u32)
                .uid(0u32)
                .gid(0u32)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .devices(devices)
        .cgroups_path(PathBuf::from(format!("/{}", inp.cgroup())))
        .resources(res.build()?)
        .seccomp(seccomp()?)
        .build()?;
    Ok(SpecBuilder::default()
        .version("1.0.2")
        .hostname(inp.name.as_str())
        .root(
            RootBuilder::default()
                .path(inp.layout.root_dir(inp.name))
                .readonly(true)
                .build()?,
        )
        .mounts(mounts)
        .process(process)
        .linux(linux)
        .build()?)
}

/// `vassal init`, and for a group where its own processes are: a reseller's
/// `~/vassals` is its drop directory of site files.
fn init_args(file: &VassalFile, home_inside: &str) -> Vec<String> {
    let mut args = vec![VASSAL_INSIDE.to_owned(), "init".to_owned()];
    if matches!(file, VassalFile::Group(_)) {
        args.push("--processes".to_owned());
        args.push(
            model::layout::home::processes(Path::new(home_inside))
                .display()
                .to_string(),
        );
    }
    args
}

/// The default seccomp policy in OCI terms (the same rules the spawner compiles).
fn seccomp() -> Result<oci_spec::runtime::LinuxSeccomp, SpecError> {
    let mut rules = vec![LinuxSyscallBuilder::default()
        .names(
            sys::seccomp::DENIED
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(libc::EPERM as u32)
        .build()?];
    for flag in sys::seccomp::NS_FLAGS {
        let arg = LinuxSeccompArgBuilder::default()
            .index(0usize)
            .value(flag)
            .value_two(flag)
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .build()?;
        rules.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone".to_owned()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(libc::EPERM as u32)
                .args(vec![arg])
                .build()?,
        );
    }
    rules.push(
        LinuxSyscallBuilder::default()
            .names(vec!["clone3".to_owned()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(libc::ENOSYS as u32)
            .build()?,
    );
    Ok(LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .syscalls(rules)
        .build()?)
}

/// The lines of the container's /etc/passwd and /etc/group.
fn passwd_and_group(user: &Name, uid: u32) -> (String, String) {
    let home = inside::home(user.as_str());
    (
        format!("root:x:0:0:root:/root:/usr/sbin/nologin\n{user}:x:{uid}:{uid}:{user}:{home}:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
        format!("root:x:0:\n{user}:x:{uid}:\nnogroup:x:65534:\n"),
    )
}

/// One entry of a container's skeleton root, relative to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skel {
    /// A directory (mode 0755).
    Dir(PathBuf),
    /// A file with this content (empty: a mount point).
    File(PathBuf, Vec<u8>),
    /// A symlink: (target, path).
    Symlink(PathBuf, PathBuf),
}

/// The skeleton of the root the spec points at, parents first: a mount point
/// for every mount, the rootfs's symlinks (`/bin -> usr/bin`), and the
/// container's own /etc files. The spawner lays it out on a fresh tmpfs in the
/// container's own mount namespace, so nothing of it is written to the host.
pub fn skeleton(inp: &Input<'_>, spec: &Spec) -> Vec<Skel> {
    use std::collections::BTreeSet;
    let os_root = inp.os_root();
    let mut dirs: BTreeSet<PathBuf> = ["etc", "dev", "proc", "root", "tmp", "var/tmp", "run/lock"]
        .iter()
        .map(PathBuf::from)
        .collect();
    let mut files: Vec<Skel> = Vec::new();
    let mut links: Vec<Skel> = Vec::new();
    let view = OsView::of(&os_root);
    for (rel, kind) in &view.entries {
        if let Kind::Link(target) = kind {
            links.push(Skel::Symlink(target.clone(), rel.clone()));
        }
    }
    for (name, target) in [
        ("dev/ptmx", "pts/ptmx"),
        ("var/run", "../run"),
        ("dev/fd", "/proc/self/fd"),
        ("dev/stdin", "/proc/self/fd/0"),
        ("dev/stdout", "/proc/self/fd/1"),
        ("dev/stderr", "/proc/self/fd/2"),
    ] {
        links.push(Skel::Symlink(target.into(), name.into()));
    }
    for m in spec.mounts().iter().flatten() {
        let dest = m
            .destination()
            .strip_prefix("/")
            .unwrap_or(m.destination())
            .to_path_buf();
        if dest.starts_with("proc/") {
            continue; // inside the container's /proc
        }
        // An OS entry is known from the view; anything else is looked at.
        let os_entry = m
            .source()
            .as_ref()
            .and_then(|s| s.strip_prefix(&os_root).ok())
            .and_then(|rel| view.entries.get(rel));
        let is_file = m.typ().as_deref() == Some("bind")
            && match os_entry {
                Some(kind) => *kind != Kind::Dir,
                None => m.source().as_ref().map(|s| !s.is_dir()).unwrap_or(false),
            };
        let parents: Vec<PathBuf> = dest
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .collect();
        dirs.extend(parents);
        if is_file {
            files.push(Skel::File(dest, Vec::new()));
        } else {
            dirs.insert(dest);
        }
    }
    let user = inp.user();
    let (passwd, group) = passwd_and_group(&user, inp.uid);
    // With a network, the site's own name is its address (else loopback's),
    // and the host (the gateway) is its resolver.
    let own = match inp.net {
        Some(_) => String::new(),
        None => format!(" {}", inp.name),
    };
    let mut hosts = format!("127.0.0.1\tlocalhost{own}\n::1\tlocalhost ip6-localhost{own}\n");
    let resolv = match &inp.net {
        Some(a) => {
            hosts.push_str(&format!("{}\t{}\n", a.v4, inp.name));
            if let Some(v6) = a.v6 {
                hosts.push_str(&format!("{v6}\t{}\n", inp.name));
            }
            format!("nameserver {}\noptions edns0\n", a.gateway).into_bytes()
        }
        None => std::fs::read("/etc/resolv.conf").unwrap_or_default(),
    };
    for (name, content) in [
        ("hostname", format!("{}\n", inp.name).into_bytes()),
        ("hosts", hosts.into_bytes()),
        ("resolv.conf", resolv),
        ("passwd", passwd.into_bytes()),
        ("group", group.into_bytes()),
        ("profile", profile(inp.name.as_str()).into_bytes()),
    ] {
        files.push(Skel::File(Path::new("etc").join(name), content));
    }
    let ancestors: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|d| {
            d.ancestors()
                .skip(1)
                .filter(|a| !a.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .collect::<Vec<_>>()
        })
        .collect();
    dirs.extend(ancestors);
    // Directories that are also symlinks (usr-merged /bin) stay symlinks.
    let linked: BTreeSet<PathBuf> = links
        .iter()
        .filter_map(|l| {
            if let Skel::Symlink(_, p) = l {
                Some(p.clone())
            } else {
                None
            }
        })
        .collect();
    let mut out: Vec<Skel> = dirs
        .into_iter()
        .filter(|d| !linked.contains(d))
        .map(Skel::Dir)
        .collect();
    out.extend(links);
    out.extend(files);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(dir: &Path) -> Layout {
        Layout {
            vassals: dir.join("v"),
            home_root: dir.join("home"),
            state_dir: dir.join("state"),
            run_dir: dir.join("run"),
            cgroup_root: "imperium".into(),
        }
    }

    /// The OS entries are read once for the starts of the next two seconds,
    /// then again: an entry the rootfs gains shows after that, not before.
    #[tokio::test(start_paused = true)]
    async fn the_os_entries_are_read_once_for_two_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        std::fs::write(root.join("etc/host.conf"), "multi on\n").unwrap();
        let view = OsView::of(root);
        let kind = |v: &OsView, rel: &str| v.entries.get(Path::new(rel)).cloned();
        assert_eq!(kind(&view, "usr"), Some(Kind::Dir));
        assert_eq!(kind(&view, "bin"), Some(Kind::Link("usr/bin".into())));
        assert_eq!(kind(&view, "etc/host.conf"), Some(Kind::File));
        assert_eq!(kind(&view, "etc/php"), None);
        assert!(view.usr && !view.usr_local);

        std::fs::create_dir(root.join("etc/php")).unwrap();
        tokio::time::advance(VIEW_TTL - Duration::from_millis(10)).await;
        let again = OsView::of(root);
        assert!(Arc::ptr_eq(&view, &again), "read again within the TTL");
        tokio::time::advance(Duration::from_millis(10)).await;
        let fresh = OsView::of(root);
        assert_eq!(kind(&fresh, "etc/php"), Some(Kind::Dir));
        let shared: Vec<String> = shared_entries(root, &fresh)
            .into_iter()
            .map(|(dest, _)| dest)
            .collect();
        assert_eq!(shared, ["/etc/host.conf", "/etc/php", "/usr"]);
    }

    #[test]
    fn a_site_sees_the_os_its_home_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let l = layout(dir.path());
        let name: Name = "site52".parse().unwrap();
        let file = VassalFile::parse(&name, "kind = \"site\"\ngroup = \"group1\"\n[limits]\nmemory = \"256M\"\ncpu = 0.5\npids = 200\n").unwrap();
        let inp = Input {
            name: &name,
            file: &file,
            uid: 30001,
            layout: &l,
            vassal_exe: Path::new("/usr/bin/true"),
            cgroup_v2: false,
            net: None,
            quota: None,
            lxcfs: None,
        };
        let spec = build(&inp).unwrap();
        let mounts: Vec<(String, String)> = spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| {
                (
                    m.destination().display().to_string(),
                    m.source()
                        .as_ref()
                        .map(|s| s.display().to_string())
                        .unwrap_or_default(),
                )
            })
            .collect();
        let find = |d: &str| {
            mounts
                .iter()
                .find(|(dest, _)| dest == d)
                .map(|(_, s)| s.clone())
        };
        assert_eq!(
            find("/home/site52").unwrap(),
            l.home_root.join("group1/site52").display().to_string()
        );
        assert_eq!(
            find("/usr/local").unwrap(),
            l.home_root
                .join("group1/site52/usr-local")
                .display()
                .to_string()
        );
        assert_eq!(
            find("/run/imperium/sockets").unwrap(),
            l.run_dir.join("sockets/site52").display().to_string()
        );
        assert_eq!(find("/usr").unwrap(), "/usr");
        for (dest, src) in &mounts {
            assert!(
                !src.starts_with("/root")
                    && !src.starts_with("/var")
                    && !src.starts_with("/home/")
                    && src != "/etc",
                "{dest} <- {src}"
            );
            assert!(
                !dest.contains("shadow") && !dest.starts_with("/etc/ssh"),
                "{dest}"
            );
        }
        let usr = spec
            .mounts()
            .iter()
            .flatten()
            .find(|m| m.destination() == Path::new("/usr"))
            .unwrap();
        assert!(usr.options().as_ref().unwrap().contains(&"ro".to_owned()));
        assert_eq!(spec.hostname().as_deref(), Some("site52"));
        let p = spec.process().as_ref().unwrap();
        assert_eq!((p.user().uid(), p.user().gid()), (30001, 30001));
        assert_eq!(p.no_new_privileges(), Some(true));
        let caps = p.capabilities().as_ref().unwrap();
        assert!(
            caps.bounding().as_ref().unwrap().is_empty()
                && caps.effective().as_ref().unwrap().is_empty()
        );
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/imperium/group1/site52"))
        );
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.memory().as_ref().unwrap().limit(), Some(256 << 20));
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(50_000));
        assert_eq!(res.pids().as_ref().unwrap().limit(), 200);
    }

    #[test]
    fn the_plan_follows_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let l = layout(dir.path());
        let name: Name = "site7".parse().unwrap();
        let file = VassalFile::parse(&name, "kind = \"site\"").unwrap();
        let inp = Input {
            name: &name,
            file: &file,
            uid: 30007,
            layout: &l,
            vassal_exe: Path::new("/usr/bin/true"),
            cgroup_v2: false,
            net: None,
            quota: None,
            lxcfs: None,
        };
        let spec = build(&inp).unwrap();
        let plan = crate::spawner::plan(&spec, &skeleton(&inp, &spec), 30007, &[]).unwrap();
        let all = libc::CLONE_NEWPID
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWCGROUP;
        assert_eq!(plan.namespaces, all);
        assert!(plan.readonly_root && plan.loopback_up);
        assert_eq!((plan.uid, plan.gid), (30007, 30007));
        assert_eq!(plan.exe.to_str().unwrap(), VASSAL_INSIDE);
        let root = l.root_dir(&name);
        let path = |c: &std::ffi::CString| c.to_str().unwrap().to_owned();
        let mounts: Vec<(usize, &sys::MountOp)> = plan
            .fs
            .iter()
            .enumerate()
            .filter_map(|(i, o)| {
                if let sys::FsOp::Mount(m) = o {
                    Some((i, m))
                } else {
                    None
                }
            })
            .collect();
        let find = |suffix: &str| {
            mounts
                .iter()
                .find(|(_, m)| path(&m.target) == format!("{}{suffix}", root.display()))
                .unwrap()
        };
        let usr = find("/usr").1;
        assert_eq!(usr.flags, libc::MS_BIND | libc::MS_REC);
        assert_eq!(
            usr.remount,
            Some(libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV)
        );
        // /tmp and /dev/shm: directories of the root's tmpfs (sticky, anyone's),
        // each bound over itself writable; no superblock of their own.
        for (dir, flags) in [
            ("/tmp", libc::MS_NOSUID | libc::MS_NODEV),
            (
                "/dev/shm",
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            ),
        ] {
            let (at, m) = find(dir);
            let whole = format!("{}{dir}", root.display());
            assert_eq!(m.fstype, None, "{dir}");
            assert_eq!(path(m.source.as_ref().unwrap()), whole);
            assert_eq!((m.flags, m.remount), (libc::MS_BIND, Some(flags)), "{dir}");
            let made = plan.fs[..*at].iter().find_map(|o| match o {
                sys::FsOp::Dir(p, mode) if path(p) == whole => Some(*mode),
                _ => None,
            });
            assert_eq!(made, Some(0o1777), "{dir}");
        }
        assert!(
            mounts
                .iter()
                .all(|(_, m)| m.fstype.as_ref().is_none_or(|t| t.to_str() != Ok("tmpfs"))),
            "no tmpfs of its own"
        );
        // /etc entries come from the read-only staging bind (no remount of their own),
        // which is detached again before pivot_root.
        let (ld_at, ld) = find("/etc/ld.so.cache");
        assert_eq!(
            path(ld.source.as_ref().unwrap()),
            format!("{}/.imperium-etc/ld.so.cache", root.display())
        );
        assert_eq!(ld.remount, None);
        let staging = mounts
            .iter()
            .find(|(_, m)| path(&m.target).ends_with("/.imperium-etc"))
            .unwrap();
        assert_eq!(
            staging.1.remount,
            Some(libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV)
        );
        let detach = plan
            .fs
            .iter()
            .position(|o| matches!(o, sys::FsOp::Detach(p) if path(p).ends_with("/.imperium-etc")))
            .unwrap();
        assert!(staging.0 < *ld_at && *ld_at < detach);
        // Device nodes, not binds of the host's.
        let null = plan.fs.iter().find_map(|o| match o {
            sys::FsOp::Device {
                path: p,
                major,
                minor,
                mode,
            } if path(p).ends_with("/dev/null") => Some((*major, *minor, *mode)),
            _ => None,
        });
        assert_eq!(null, Some((1, 3, 0o666)));
        // Every mount point is created before it is mounted on (or lies inside /proc).
        let mut made = std::collections::BTreeSet::new();
        for op in &plan.fs {
            match op {
                sys::FsOp::Dir(p, _) | sys::FsOp::File(p, _) => {
                    made.insert(path(p));
                }
                sys::FsOp::Mount(m) => {
                    let t = path(&m.target);
                    assert!(
                        made.contains(&t) || t.contains("/proc/"),
                        "{t} mounted before it exists"
                    );
                }
                _ => {}
            }
        }
        // The proc mount comes before anything mounted under /proc.
        let proc_at = find("/proc").0;
        assert!(mounts
            .iter()
            .filter(|(_, m)| path(&m.target).contains("/proc/"))
            .all(|(i, _)| *i > proc_at));
    }
}
