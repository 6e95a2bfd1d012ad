//! The safe side: the module's arguments, and whether (and where) a login may
//! enter a container. Everything here reads the host's files; the FFI side
//! runs it before it joins anything.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use model::layout::Layout;
use model::name::Name;
use model::record::VassalRecord;

/// Where the emperor keeps its state and runtime files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `run_dir=`: login links and runtime records.
    pub run_dir: PathBuf,
    /// `state_dir=`: the tenant table.
    pub state_dir: PathBuf,
    /// Who runtime records must belong to: root (the emperor).
    pub owner: u32,
}

impl Args {
    /// Parses the module arguments of the PAM line (`run_dir=DIR state_dir=DIR`).
    pub fn parse<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<Args, String> {
        let d = Layout::default();
        let mut out = Args {
            run_dir: d.run_dir,
            state_dir: d.state_dir,
            owner: 0,
        };
        for a in args {
            match a.split_once('=') {
                Some(("run_dir", v)) if v.starts_with('/') => out.run_dir = v.into(),
                Some(("state_dir", v)) if v.starts_with('/') => out.state_dir = v.into(),
                _ => return Err(format!("unknown or relative module argument {a:?}")),
            }
        }
        Ok(out)
    }

    fn layout(&self) -> Layout {
        Layout {
            run_dir: self.run_dir.clone(),
            state_dir: self.state_dir.clone(),
            ..Layout::default()
        }
    }
}

/// A tenant's running container, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The containers' seccomp program (classic BPF instructions, 8 bytes each).
    pub seccomp: Vec<u8>,
    /// The vassal (site or group) the login belongs to.
    pub vassal: Name,
    /// Its init, in the host's pid namespace.
    pub pid: i32,
    /// The init's start time: with `pid`, its identity.
    pub start_time: u64,
    /// The cgroup directories to join (one per v1 hierarchy, or the v2 one).
    pub cgroup_dirs: Vec<PathBuf>,
}

/// Why a tenant may not log in: a short text for the user, the same for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// What the module makes of a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not a tenant: the module stays out of the way.
    NotTenant,
    /// A tenant whose container is running and may be joined.
    Enter(Target),
}

/// Decides for `user`, whose passwd entry (as sshd resolved it) has `uid`.
/// `proc_root` is `/proc` (a parameter for tests).
pub fn decide(args: &Args, user: &str, uid: u32, proc_root: &Path) -> Result<Verdict, Refusal> {
    let Ok(user) = user.parse::<Name>() else {
        return Ok(Verdict::NotTenant);
    };
    let l = args.layout();
    // Mapped, and opened with the O(1) header check: a lookup touches a few
    // pages of a table that holds every tenant (the emperor replaces it
    // atomically, so it is never torn).
    let table = match mapfile::Mapped::open(&l.nss_table()) {
        Ok(t) => t,
        // No table: the emperor never ran here, so there are no tenants.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Verdict::NotTenant),
        Err(e) => return Err(Refusal(format!("tenant table unreadable: {e}"))),
    };
    let table = model::nss::Table::open(&table)
        .ok_or_else(|| Refusal("tenant table damaged; login refused".into()))?;
    let Some(entry) = table.by_name(user.as_str()) else {
        return Ok(Verdict::NotTenant);
    };
    if entry.uid != uid {
        return Err(Refusal(format!(
            "{user}'s passwd entry (uid {uid}) is not the emperor's (uid {})",
            entry.uid
        )));
    }
    let rec = read_record(&l.login(&user), args.owner)
        .map_err(|e| Refusal(format!("{user}: {e}")))?
        .ok_or_else(|| Refusal(format!("{user}: the container is not running")))?;
    let site = &rec.name;
    if rec.uid != uid {
        return Err(Refusal(format!(
            "{user}: the running container {site} is another tenant's"
        )));
    }
    if !rec.is_alive(proc_root) {
        return Err(Refusal(format!(
            "{user}: the container {site} is not running"
        )));
    }
    if rec.cgroup_dirs.is_empty() {
        return Err(Refusal(format!(
            "{user}: the container {site} has no cgroup on record"
        )));
    }
    if rec.cgroup_dirs.iter().any(|d| frozen(d)) {
        return Err(Refusal(format!("{user}: the site {site} is suspended")));
    }
    let seccomp = read_owned(&l.seccomp_program(), args.owner)
        .map_err(|e| Refusal(format!("{user}: seccomp program: {e}")))?
        .filter(|p| !p.is_empty() && p.len() % 8 == 0 && p.len() / 8 <= 4096)
        .ok_or_else(|| Refusal(format!("{user}: no usable seccomp program published")))?;
    Ok(Verdict::Enter(Target {
        seccomp,
        vassal: rec.name,
        pid: rec.pid,
        start_time: rec.start_time,
        cgroup_dirs: rec.cgroup_dirs,
    }))
}

/// Reads the record a login link points at; only a root-owned file that no one
/// else can write is believed. `Ok(None)`: no record (not running).
fn read_record(path: &Path, owner: u32) -> Result<Option<VassalRecord>, String> {
    let Some(data) = read_owned(path, owner).map_err(|e| format!("runtime record {e}"))? else {
        return Ok(None);
    };
    serde_json::from_slice(&data)
        .map(Some)
        .map_err(|e| format!("runtime record damaged: {e}"))
}

/// Reads a runtime file the emperor wrote: believed only when `owner` owns it
/// and no one else can write it. `Ok(None)`: there is none.
fn read_owned(path: &Path, owner: u32) -> Result<Option<Vec<u8>>, String> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("unreadable: {e}")),
    };
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if meta.uid() != owner || meta.mode() & 0o022 != 0 || !meta.is_file() {
        return Err("not owned by the emperor; refused".into());
    }
    let mut data = Vec::with_capacity(4096);
    f.read_to_end(&mut data).map_err(|e| e.to_string())?;
    Ok(Some(data))
}

/// Whether a cgroup directory is frozen (v1 freezer or v2 `cgroup.events`).
fn frozen(dir: &Path) -> bool {
    if let Ok(s) = std::fs::read_to_string(dir.join("freezer.state")) {
        return s.trim() != "THAWED";
    }
    if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.events")) {
        return s.lines().any(|l| l.trim() == "frozen 1");
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::nss::{encode, Tenant};
    use model::record::SCHEMA_VERSION;

    struct World {
        dir: tempfile::TempDir,
        args: Args,
    }

    impl World {
        fn new() -> World {
            let dir = tempfile::tempdir().unwrap();
            let mut args = Args::parse([
                format!("run_dir={}", dir.path().join("run").display()).as_str(),
                format!("state_dir={}", dir.path().join("state").display()).as_str(),
            ])
            .unwrap();
            args.owner = std::fs::metadata(dir.path()).unwrap().uid();
            std::fs::create_dir_all(&args.state_dir).unwrap();
            std::fs::create_dir_all(args.run_dir.join("logins")).unwrap();
            std::fs::create_dir_all(args.run_dir.join("vassals")).unwrap();
            let tenants = [("site52", 30052), ("site53", 30053)].map(|(n, u)| Tenant {
                name: n.into(),
                uid: u,
                home: format!("/home/{n}"),
                shell: "/bin/bash".into(),
            });
            std::fs::write(args.state_dir.join("tenants.nss"), encode(&tenants)).unwrap();
            std::fs::write(
                args.run_dir.join("seccomp.bpf"),
                [6, 0, 0, 0, 0, 0, 0xff, 0x7f],
            )
            .unwrap();
            World { dir, args }
        }

        /// A record for `site` naming this very process, with a fake cgroup dir.
        fn running(&self, site: &str, user: &str, uid: u32) -> PathBuf {
            let me = std::process::id() as i32;
            let cg = self.dir.path().join("cg").join(site);
            std::fs::create_dir_all(&cg).unwrap();
            let rec = VassalRecord {
                schema_version: SCHEMA_VERSION,
                name: site.parse().unwrap(),
                kind: model::config::Kind::Site,
                pid: me,
                start_time: model::record::start_time(Path::new("/proc"), me).unwrap(),
                uid,
                cgroup: format!("imperium/_admin/{site}"),
                cgroup_dirs: vec![cg.clone()],
                config: serde_json::json!({}),
            };
            let path = self.args.run_dir.join(format!("vassals/{site}.json"));
            std::fs::write(&path, serde_json::to_vec(&rec).unwrap()).unwrap();
            let link = self.args.run_dir.join("logins").join(user);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(format!("../vassals/{site}.json"), link).unwrap();
            cg
        }

        fn decide(&self, user: &str, uid: u32) -> Result<Verdict, Refusal> {
            decide(&self.args, user, uid, Path::new("/proc"))
        }
    }

    fn refused(r: Result<Verdict, Refusal>) -> String {
        match r {
            Err(Refusal(m)) => m,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn arguments() {
        let a = Args::parse([]).unwrap();
        assert_eq!(a.run_dir, PathBuf::from("/run/imperium"));
        assert_eq!(a.state_dir, PathBuf::from("/var/lib/imperium"));
        assert!(Args::parse(["run_dir=relative"]).is_err());
        assert!(Args::parse(["debug"]).is_err());
    }

    #[test]
    fn strangers_are_not_tenants() {
        let w = World::new();
        assert_eq!(w.decide("root", 0), Ok(Verdict::NotTenant));
        assert_eq!(w.decide("admin1", 1500), Ok(Verdict::NotTenant));
        assert_eq!(w.decide("Not A Name", 1500), Ok(Verdict::NotTenant));
        std::fs::remove_file(w.args.state_dir.join("tenants.nss")).unwrap();
        assert_eq!(w.decide("site52", 30052), Ok(Verdict::NotTenant));
    }

    #[test]
    fn a_running_tenant_enters_its_own_container() {
        let w = World::new();
        let cg = w.running("site52", "site52", 30052);
        match w.decide("site52", 30052).unwrap() {
            Verdict::Enter(t) => {
                assert_eq!(t.vassal.as_str(), "site52");
                assert_eq!(t.pid, std::process::id() as i32);
                assert_eq!(t.cgroup_dirs, vec![cg]);
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn every_doubt_refuses() {
        let w = World::new();
        assert!(refused(w.decide("site52", 30052)).contains("not running"));
        let cg = w.running("site52", "site52", 30052);
        // A passwd entry that is not the emperor's.
        assert!(refused(w.decide("site52", 0)).contains("not the emperor's"));
        // Another tenant's link pointing at site52's container.
        w.running("site52", "site53", 30052);
        assert!(refused(w.decide("site53", 30053)).contains("another tenant's"));
        // Suspended (v1 and v2 spellings).
        std::fs::write(cg.join("freezer.state"), "FROZEN\n").unwrap();
        assert!(refused(w.decide("site52", 30052)).contains("suspended"));
        std::fs::remove_file(cg.join("freezer.state")).unwrap();
        std::fs::write(cg.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        assert!(refused(w.decide("site52", 30052)).contains("suspended"));
        std::fs::write(cg.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        assert!(w.decide("site52", 30052).is_ok());
        // A reused pid: same pid, another start time.
        let path = w.args.run_dir.join("vassals/site52.json");
        let mut rec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        rec["startTime"] = serde_json::json!(rec["startTime"].as_u64().unwrap() + 1);
        std::fs::write(&path, serde_json::to_vec(&rec).unwrap()).unwrap();
        assert!(refused(w.decide("site52", 30052)).contains("not running"));
        // Garbage in the record, or in the table.
        std::fs::write(&path, "{").unwrap();
        assert!(refused(w.decide("site52", 30052)).contains("damaged"));
        std::fs::write(w.args.state_dir.join("tenants.nss"), "IMPNSS1\0junk").unwrap();
        assert!(refused(w.decide("site52", 30052)).contains("damaged"));
        std::fs::write(w.args.state_dir.join("tenants.nss"), "").unwrap();
        assert!(refused(w.decide("site52", 30052)).contains("unreadable"));
    }

    #[test]
    fn a_record_others_can_write_is_not_believed() {
        use std::os::unix::fs::PermissionsExt;
        let w = World::new();
        w.running("site52", "site52", 30052);
        let path = w.args.run_dir.join("vassals/site52.json");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(refused(w.decide("site52", 30052)).contains("not owned by the emperor"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let prog = w.args.run_dir.join("seccomp.bpf");
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o646)).unwrap();
        assert!(refused(w.decide("site52", 30052)).contains("seccomp program: not owned"));
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&prog, [0u8; 7]).unwrap();
        assert!(refused(w.decide("site52", 30052)).contains("no usable seccomp program"));
        std::fs::remove_file(&prog).unwrap();
        assert!(refused(w.decide("site52", 30052)).contains("no usable seccomp program"));
        std::fs::write(&prog, [6, 0, 0, 0, 0, 0, 0xff, 0x7f]).unwrap();
        assert!(w.decide("site52", 30052).is_ok());
        let mut other = w.args.clone();
        other.owner += 1;
        assert!(refused(decide(&other, "site52", 30052, Path::new("/proc")))
            .contains("not owned by the emperor"));
    }
}
