//! THE path scheme: where vassal files, homes, state and runtime files live.
//! Every component takes its paths from a [`Layout`], so tests run in temporary
//! directories and nobody joins an unchecked string onto a path.

use std::path::PathBuf;

use crate::name::Name;

/// Default admin vassal directory.
pub const DEFAULT_VASSALS: &str = "/etc/imperium/vassals";
/// Default root of the tenants' homes.
pub const DEFAULT_HOME_ROOT: &str = "/home/virtual";
/// Default persistent state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/imperium";
/// Default runtime directory.
pub const DEFAULT_RUN_DIR: &str = "/run/imperium";
/// Default name of the emperor's cgroup subtree.
pub const DEFAULT_CGROUP_ROOT: &str = "imperium";
/// The cgroup of sites that belong to no reseller.
pub const ADMIN_CGROUP: &str = "_admin";
/// The leaf of a group's cgroup that holds the reseller's own container.
pub const SELF_CGROUP: &str = "_self";

/// The directories an emperor works in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The admin vassal directory.
    pub vassals: PathBuf,
    /// Root of homes: `<home_root>/<group>/<site>`, `<home_root>/<site>`.
    pub home_root: PathBuf,
    /// Persistent state.
    pub state_dir: PathBuf,
    /// Runtime files.
    pub run_dir: PathBuf,
    /// The cgroup subtree, relative to each hierarchy's root (may contain `/`).
    pub cgroup_root: String,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            vassals: DEFAULT_VASSALS.into(),
            home_root: DEFAULT_HOME_ROOT.into(),
            state_dir: DEFAULT_STATE_DIR.into(),
            run_dir: DEFAULT_RUN_DIR.into(),
            cgroup_root: DEFAULT_CGROUP_ROOT.into(),
        }
    }
}

impl Layout {
    /// A group's tree, which is also the reseller's home.
    pub fn group_home(&self, group: &Name) -> PathBuf {
        self.home_root.join(group.as_str())
    }

    /// A reseller's drop directory.
    pub fn drop_dir(&self, group: &Name) -> PathBuf {
        home::vassals(&self.group_home(group))
    }

    /// The host's secret from which every site's key for the router is
    /// derived (root's, 0400).
    pub fn site_key_secret(&self) -> PathBuf {
        self.state_dir.join("site-keys.secret")
    }

    /// The directory of the sites' private keys for the router (a runtime
    /// directory: each key is derived again after a reboot).
    pub fn site_keys_dir(&self) -> PathBuf {
        self.run_dir.join("keys")
    }

    /// A site's private key for the router (bound at [`inside::SITE_KEY`]).
    pub fn site_key(&self, site: &Name) -> PathBuf {
        self.site_keys_dir().join(format!("{site}.key"))
    }

    /// Where earlier versions kept the sites' keys, made at random: each
    /// is still used while present, so a site keeps its key across an upgrade.
    pub fn legacy_site_keys_dir(&self) -> PathBuf {
        self.state_dir.join("keys")
    }

    /// A site's key as an earlier version made it (see [`Layout::legacy_site_keys_dir`]).
    pub fn legacy_site_key(&self, site: &Name) -> PathBuf {
        self.legacy_site_keys_dir().join(format!("{site}.key"))
    }

    /// A site's home: inside its group's tree, or directly under the home root.
    pub fn site_home(&self, group: Option<&Name>, site: &Name) -> PathBuf {
        match group {
            Some(g) => self.group_home(g).join(site.as_str()),
            None => self.home_root.join(site.as_str()),
        }
    }

    /// The symlink `<home_root>/<site>` that points into a group's tree.
    pub fn site_link(&self, site: &Name) -> PathBuf {
        self.home_root.join(site.as_str())
    }

    /// The uid allocation table.
    pub fn uid_table(&self) -> PathBuf {
        self.state_dir.join("uids.json")
    }

    /// A vassal's disk usage as the emperor last read it, a root-owned
    /// directory bound read-only at [`inside::USAGE`] in its container.
    pub fn usage_dir(&self, name: &Name) -> PathBuf {
        self.run_dir.join("usage").join(name.as_str())
    }

    /// Present once the home of `uid`, made before project quotas were on,
    /// has been put whole into its project (root's; a tenant cannot forge it).
    pub fn projected(&self, uid: u32) -> PathBuf {
        self.state_dir.join("projected").join(uid.to_string())
    }

    /// The address table (see [`crate::network`]).
    pub fn address_table(&self) -> PathBuf {
        self.state_dir.join("addresses.json")
    }

    /// The tenant table the NSS module reads (see [`crate::nss`]).
    pub fn nss_table(&self) -> PathBuf {
        self.state_dir.join("tenants.nss")
    }

    /// The hosts table the NSS module reads (see [`crate::nss::hosts`]).
    pub fn nss_hosts(&self) -> PathBuf {
        self.state_dir.join("hosts.nss")
    }

    /// Where deleted sites' homes are archived.
    pub fn archive_dir(&self) -> PathBuf {
        self.state_dir.join("archive")
    }

    /// The containers' seccomp program (classic BPF, as the kernel loads it),
    /// published for the PAM module to give SSH sessions the same filter.
    pub fn seccomp_program(&self) -> PathBuf {
        self.run_dir.join("seccomp.bpf")
    }

    /// The control socket of the emperor.
    pub fn control_socket(&self) -> PathBuf {
        self.run_dir.join(names::CONTROL_SOCKET)
    }

    /// The directory of the containers' shared API socket (bound read-only
    /// at [`inside::API`] in every container; each caller is served in its
    /// own vassal's scope).
    pub fn vassal_api_dir(&self) -> PathBuf {
        self.run_dir.join("vassal-api")
    }

    /// The admin's HTTP socket (`/metrics`), root's only.
    pub fn api_socket(&self) -> PathBuf {
        self.run_dir.join("api.sock")
    }

    /// The runtime record of a running vassal (init pid and identity).
    pub fn record(&self, name: &Name) -> PathBuf {
        self.run_dir.join("vassals").join(format!("{name}.json"))
    }

    /// Where the PAM module finds a login's container: a symlink named after
    /// the tenant's user, pointing at its vassal's record.
    pub fn login(&self, user: &Name) -> PathBuf {
        self.logins_dir().join(user.as_str())
    }

    /// The directory of login links.
    pub fn logins_dir(&self) -> PathBuf {
        self.run_dir.join("logins")
    }

    /// The directory of the tenants' SSH public keys, one file per user
    /// (sshd's `AuthorizedKeysFile <state-dir>/ssh/%u`).
    pub fn ssh_keys_dir(&self) -> PathBuf {
        self.state_dir.join("ssh")
    }

    /// A tenant's authorized keys.
    pub fn ssh_keys(&self, user: &Name) -> PathBuf {
        self.ssh_keys_dir().join(user.as_str())
    }

    /// The directory of runtime records.
    pub fn records_dir(&self) -> PathBuf {
        self.run_dir.join("vassals")
    }

    /// The skeleton root a container pivots into.
    pub fn root_dir(&self, name: &Name) -> PathBuf {
        self.run_dir.join("roots").join(name.as_str())
    }

    /// A vassal's socket directory, shared into its container as `/run/imperium/sockets`.
    pub fn sockets(&self, name: &Name) -> PathBuf {
        self.run_dir.join("sockets").join(name.as_str())
    }

    /// A container's login records (`/run/utmp` inside), written by sshd as
    /// root, readable by the tenant (`who`).
    pub fn utmp(&self, name: &Name) -> PathBuf {
        self.run_dir.join("utmp").join(name.as_str())
    }

    /// The directory shared with the router: its subscription socket and the dominion.
    pub fn router_dir(&self) -> PathBuf {
        self.run_dir.join("router")
    }

    /// The dominion the emperor writes for the router.
    pub fn dominion(&self) -> PathBuf {
        self.router_dir().join(names::DOMINION)
    }

    /// Where the other hosts' routers are and which domains they serve
    /// (cluster mode), written by the emperor for the router.
    pub fn peers(&self) -> PathBuf {
        self.router_dir().join(names::PEERS)
    }

    /// A vassal's cgroup path relative to each hierarchy's root.
    pub fn cgroup(&self, kind_group: Option<&Name>, name: &Name, is_group: bool) -> String {
        let root = self.cgroup_root.trim_matches('/');
        match (is_group, kind_group) {
            (true, _) => format!("{root}/{name}/{SELF_CGROUP}"),
            (false, Some(g)) => format!("{root}/{g}/{name}"),
            (false, None) => format!("{root}/{ADMIN_CGROUP}/{name}"),
        }
    }

    /// A group's own cgroup (the parent of its sites and of its `_self` leaf).
    pub fn group_cgroup(&self, group: &Name) -> String {
        format!("{}/{group}", self.cgroup_root.trim_matches('/'))
    }
}

/// File names the emperor, the router, the vassal and the CLIs share, each
/// spelled here once.
pub mod names {
    /// The emperor's control socket, in the run directory.
    pub const CONTROL_SOCKET: &str = "emperor.sock";
    /// What the emperor tells the router, in the router's directory.
    pub const DOMINION: &str = "dominion.json";
    /// What the emperor tells the router of the other hosts (cluster
    /// mode), in the router's directory.
    pub const PEERS: &str = "peers.json";
    /// The generation of `peers.json` the router has taken, beside it.
    pub const PEERS_APPLIED: &str = "peers.applied";
    /// The router's subscription socket, in the router's directory.
    pub const SUBSCRIBE_SOCKET: &str = "subscribe.sock";
    /// The addresses the router listens on, in the router's directory.
    pub const LISTEN: &str = "listen.json";
    /// The router's own copy of the dominion, in its state directory.
    pub const ROUTER_COPY: &str = "router-dominion.json";
    /// The socket a site's vassal binds in the site's socket directory for
    /// the router's access-log lines (a backend's name cannot start with a dot).
    pub const ACCESS_LOG_SOCKET: &str = ".access-log";
    /// The vassal's control socket, in `~/.imperium`.
    pub const VASSAL_SOCKET: &str = "vassal.sock";
}

/// What a home holds, wherever it is mounted (the vassal reads it from
/// inside, the emperor makes it from outside).
pub mod home {
    use std::path::{Path, PathBuf};

    /// The process files (`~/vassals`; a reseller's drop directory of site files).
    pub fn vassals(home: &Path) -> PathBuf {
        home.join("vassals")
    }
    /// A reseller's own process files.
    pub fn processes(home: &Path) -> PathBuf {
        home.join("processes")
    }
    /// The logs: one per process, the supervisor's, the access log.
    pub fn logs(home: &Path) -> PathBuf {
        home.join("logs")
    }
    /// A process's log.
    pub fn log(home: &Path, process: &str) -> PathBuf {
        logs(home).join(format!("{process}.log"))
    }
    /// The supervisor's own log.
    pub fn supervisor_log(home: &Path) -> PathBuf {
        logs(home).join("vassal.log")
    }
    /// The site's access log (written by the vassal from the router's datagrams).
    pub fn access_log(home: &Path) -> PathBuf {
        logs(home).join("access.log")
    }
    /// The supervisor's private directory.
    pub fn private(home: &Path) -> PathBuf {
        home.join(".imperium")
    }
    /// The supervisor's control socket.
    pub fn control_socket(home: &Path) -> PathBuf {
        private(home).join(super::names::VASSAL_SOCKET)
    }
    /// The notifications database.
    pub fn notifications(home: &Path) -> PathBuf {
        private(home).join("notifications.db")
    }
}

/// Where a container sees things, whatever the host layout.
pub mod inside {
    /// The login records inside every container (`/var/run` links to `/run`).
    pub const UTMP: &str = "/run/utmp";
    /// The socket directory inside every container.
    pub const SOCKETS: &str = "/run/imperium/sockets";
    /// The site's private key for router subscriptions.
    pub const SITE_KEY: &str = "/run/imperium/site.key";
    /// The router's directory (its subscription socket) inside every container.
    pub const ROUTER: &str = "/run/imperium/router";
    /// The vassal binary inside every container.
    pub const VASSAL: &str = "/run/imperium/bin/vassal";
    /// The notifications database's program, beside it (SQLite is kept out of PID 1).
    pub const NOTIFY: &str = "/run/imperium/bin/vassal-notify";
    /// Every process's `PATH` in a container (its init's, its SSH sessions'):
    /// the vassal's own directory first, then the usual ones, sbin ones too
    /// (php-fpm, nginx and the like live there).
    pub const PATH: &str =
        "/run/imperium/bin:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";
    /// The directory of the containers' API socket (`api.sock`) inside
    /// each container: a caller is served in its vassal's scope (a
    /// reseller's in a group's container, a tenant's in a site's).
    pub const API: &str = "/run/imperium/api";
    /// The socket's name in it.
    pub const API_SOCKET: &str = "api.sock";
    /// The site's disk usage (written by the emperor) inside every container.
    pub const USAGE: &str = "/run/imperium/usage";
    /// The file in it.
    pub const STORAGE_FILE: &str = "storage.json";
    /// In a group's container, the file of its sites and refusals.
    pub const SITES_FILE: &str = "sites.json";
    /// The home of user `user` inside its container.
    pub fn home(user: &str) -> String {
        format!("/home/{user}")
    }
    /// The directory in the home that is mounted on `/usr/local`.
    pub const USR_LOCAL_IN_HOME: &str = "usr-local";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let l = Layout::default();
        let g: Name = "group1".parse().unwrap();
        let s: Name = "site52".parse().unwrap();
        assert_eq!(
            l.site_home(Some(&g), &s),
            PathBuf::from("/home/virtual/group1/site52")
        );
        assert_eq!(l.site_home(None, &s), PathBuf::from("/home/virtual/site52"));
        assert_eq!(
            l.drop_dir(&g),
            PathBuf::from("/home/virtual/group1/vassals")
        );
        assert_eq!(l.cgroup(Some(&g), &s, false), "imperium/group1/site52");
        assert_eq!(l.cgroup(None, &s, false), "imperium/_admin/site52");
        assert_eq!(l.cgroup(None, &g, true), "imperium/group1/_self");
        assert_eq!(
            l.record(&s),
            PathBuf::from("/run/imperium/vassals/site52.json")
        );
        assert_eq!(l.login(&s), PathBuf::from("/run/imperium/logins/site52"));
        assert_eq!(
            l.ssh_keys(&s),
            PathBuf::from("/var/lib/imperium/ssh/site52")
        );
    }
}
