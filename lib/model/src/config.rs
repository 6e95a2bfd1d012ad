//! The vassal files of the admin and reseller directories: one group or one site
//! per TOML file, name = file stem. Parsing rejects unknown keys; `validate`
//! checks every rule that needs only the file itself (cross-file rules such as
//! budgets and domain ownership live in [`crate::catalog`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::name::{Domain, Name};
use crate::size::Size;

/// The file format version this build writes and reads by default.
pub const FORMAT_VERSION: u32 = 1;

/// Why a vassal file was refused. The `Display` of each variant is the one-line
/// reason shown by `emperor status` and in the log.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file name is not `<name>.toml` with a valid name.
    #[error(transparent)]
    Name(#[from] crate::name::NameError),
    /// TOML syntax, an unknown key or a value of the wrong type.
    #[error("{0}")]
    Syntax(String),
    /// `kind` is missing or not `group`/`site`.
    #[error("kind must be \"group\" or \"site\"")]
    Kind,
    /// `version` names a format this build does not read.
    #[error("version {0} is not supported (this emperor reads version {FORMAT_VERSION})")]
    Version(u32),
    /// A limit is out of range.
    #[error("limits.{key}: {why}")]
    Limit {
        /// The key under `[limits]`.
        key: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A domain appears twice in one file.
    #[error("domain {0} is listed twice")]
    DuplicateDomain(Domain),
    /// An SSH public key line is malformed.
    #[error("container.ssh_keys[{0}] is not an OpenSSH public key line")]
    SshKey(usize),
    /// `rootfs` is neither `host` nor a clean absolute path.
    #[error("container.rootfs must be \"host\" or a clean absolute path, not {0:?}")]
    Rootfs(String),
    /// The name is reserved for the layout.
    #[error("name {0} is reserved")]
    Reserved(Name),
    /// An egress entry is not `ADDRESS[/LEN][:PORT]`.
    #[error("network.egress[{0}]: {1}")]
    Egress(usize, String),
    /// A site of a group names a host: it runs where its group runs.
    #[error("host is the group's to set: site of group {0} runs where the group runs")]
    HostOfGroupSite(Name),
}

/// `kind = "group"` or `kind = "site"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Kind {
    /// A reseller group: a cgroup subtree with a budget, and the reseller's own container.
    Group,
    /// A site: one tenant's container.
    Site,
}

/// How a group's budget is shared among its sites.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Mode {
    /// The sum of the sites' limits must fit the group's limits.
    #[default]
    Reserved,
    /// Sites may be promised more than the group holds; the group's cgroup caps the total.
    Overcommit,
}

/// Resource limits; an absent key means "no limit of its own".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Hard memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    /// Disk quota on the home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Size>,
    /// Files and directories the home may hold (where the backend counts
    /// them: XFS and ext4 project quotas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inodes: Option<u64>,
    /// CPU bandwidth in cores (0.5 = half a core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Maximum number of processes and threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Groups only: how many sites the group may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sites: Option<u64>,
    /// Sites only: requests the router lets in flight to the site at once
    /// (the excess gets 508); the router's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u32>,
}

/// The most a site's `requests` limit may be.
pub const MAX_REQUESTS: u32 = 100_000;

/// The smallest memory limit accepted: a vassal and a shell must fit.
pub const MIN_MEMORY: u64 = 8 << 20;
/// The largest CPU figure accepted, in cores.
pub const MAX_CPU: f64 = 4096.0;

impl Limits {
    fn validate(&self, is_group: bool) -> Result<(), ConfigError> {
        let limit = |key, why: String| Err(ConfigError::Limit { key, why });
        if let Some(m) = self.memory {
            if m.0 < MIN_MEMORY {
                return limit("memory", format!("{m} is below the minimum of 8M"));
            }
        }
        if let Some(s) = self.storage {
            if s.0 < 1 << 20 {
                return limit("storage", format!("{s} is below the minimum of 1M"));
            }
        }
        if let Some(i) = self.inodes {
            if i < 16 {
                return limit("inodes", format!("{i} is below the minimum of 16"));
            }
        }
        if let Some(c) = self.cpu {
            if !(c.is_finite() && (0.01..=MAX_CPU).contains(&c)) {
                return limit(
                    "cpu",
                    format!("{c} is not between 0.01 and {MAX_CPU} cores"),
                );
            }
        }
        if let Some(p) = self.pids {
            if p < 2 {
                return limit("pids", format!("{p} is below the minimum of 2"));
            }
        }
        if self.sites.is_some() && !is_group {
            return limit("sites", "only a group has a sites limit".into());
        }
        if let Some(r) = self.requests {
            if is_group {
                return limit("requests", "only a site has a requests limit".into());
            }
            if !(1..=MAX_REQUESTS).contains(&r) {
                return limit(
                    "requests",
                    format!("{r} is not between 1 and {MAX_REQUESTS}"),
                );
            }
        }
        Ok(())
    }
}

/// The root filesystem of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum Rootfs {
    /// A read-only view of the host's own OS (`/usr`, `/bin`, `/lib*`).
    #[default]
    Host,
    /// A distro tree at this absolute path, bound read-only.
    Path(PathBuf),
}

impl Serialize for Rootfs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Rootfs::Host => s.serialize_str("host"),
            Rootfs::Path(p) => s.serialize_str(&p.to_string_lossy()),
        }
    }
}

impl<'de> Deserialize<'de> for Rootfs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Rootfs, D::Error> {
        let s = String::deserialize(d)?;
        if s == "host" {
            return Ok(Rootfs::Host);
        }
        let p = PathBuf::from(&s);
        let clean = p.is_absolute()
            && !s.contains('\0')
            && p.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::RootDir | std::path::Component::Normal(_)
                )
            });
        if clean && p.parent().is_some() {
            Ok(Rootfs::Path(p))
        } else {
            Err(serde::de::Error::custom(ConfigError::Rootfs(s)))
        }
    }
}

/// The `[container]` table of a site or group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Container {
    /// The root filesystem.
    pub rootfs: Rootfs,
    /// OpenSSH public keys allowed to log in as the tenant.
    pub ssh_keys: Vec<String>,
}

/// The `[network]` table of a site or group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// Outbound SMTP (ports 25, 465, 587). A reseller's site gets it only if
    /// the group's own file (the admin's) allows it too.
    pub smtp: bool,
    /// When not empty, the only destinations the vassal may open connections
    /// to: `ADDRESS[/LEN][:PORT]` (IPv6 in brackets with a port), TCP and UDP.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<String>,
}

/// A reseller group's file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    /// Always `group`.
    pub kind: Kind,
    /// The file format version.
    #[serde(default = "default_version")]
    pub version: u32,
    /// Reserved or overcommit.
    #[serde(default)]
    pub mode: Mode,
    /// The reseller's login name (default: the group's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Name>,
    /// The host that runs the group and its sites (read in cluster mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Name>,
    /// The group's budget.
    #[serde(default)]
    pub limits: Limits,
    /// The reseller's own container.
    #[serde(default)]
    pub container: Container,
    /// The group's network.
    #[serde(default)]
    pub network: Network,
}

/// A site's file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteFile {
    /// Always `site`.
    pub kind: Kind,
    /// The file format version.
    #[serde(default = "default_version")]
    pub version: u32,
    /// The reseller group; absent for an admin-owned site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Name>,
    /// Domains the site serves.
    #[serde(default)]
    pub domains: Vec<Domain>,
    /// The tenant's login name (default: the site's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Name>,
    /// The host that runs an admin site (read in cluster mode only); a
    /// group's site runs where its group runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Name>,
    /// The site's own limits.
    #[serde(default)]
    pub limits: Limits,
    /// The container.
    #[serde(default)]
    pub container: Container,
    /// The site's network.
    #[serde(default)]
    pub network: Network,
}

fn default_version() -> u32 {
    FORMAT_VERSION
}

/// One parsed, self-consistent vassal file.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum VassalFile {
    /// A reseller group.
    Group(GroupFile),
    /// A site.
    Site(SiteFile),
}

/// Names that would collide with the on-disk layout.
const RESERVED: &[&str] = &["vassals", "archive", "sockets", "roots", "usr-local"];

impl VassalFile {
    /// Parses and validates the text of the file for the vassal `name`.
    pub fn parse(name: &Name, text: &str) -> Result<VassalFile, ConfigError> {
        if RESERVED.contains(&name.as_str()) {
            return Err(ConfigError::Reserved(name.clone()));
        }
        let table: toml::Table = toml::from_str(text).map_err(|e| syntax(e, text))?;
        let file = match table.get("kind").and_then(|k| k.as_str()) {
            Some("group") => VassalFile::Group(table.try_into().map_err(|e| syntax(e, text))?),
            Some("site") => VassalFile::Site(table.try_into().map_err(|e| syntax(e, text))?),
            _ => return Err(ConfigError::Kind),
        };
        file.validate()?;
        Ok(file)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let (version, limits, container, is_group) = match self {
            VassalFile::Group(g) => (g.version, &g.limits, &g.container, true),
            VassalFile::Site(s) => (s.version, &s.limits, &s.container, false),
        };
        if version != FORMAT_VERSION {
            return Err(ConfigError::Version(version));
        }
        limits.validate(is_group)?;
        for (i, key) in container.ssh_keys.iter().enumerate() {
            if !is_ssh_key(key) {
                return Err(ConfigError::SshKey(i));
            }
        }
        let network = match self {
            VassalFile::Group(g) => &g.network,
            VassalFile::Site(s) => &s.network,
        };
        if network.egress.len() > crate::network::EGRESS_MAX {
            return Err(ConfigError::Egress(
                crate::network::EGRESS_MAX,
                format!("at most {} entries", crate::network::EGRESS_MAX),
            ));
        }
        for (i, e) in network.egress.iter().enumerate() {
            crate::network::Egress::parse(e).map_err(|why| ConfigError::Egress(i, why))?;
        }
        if let VassalFile::Site(SiteFile {
            group: Some(g),
            host: Some(_),
            ..
        }) = self
        {
            return Err(ConfigError::HostOfGroupSite(g.clone()));
        }
        if let VassalFile::Site(s) = self {
            let mut seen = std::collections::BTreeSet::new();
            for d in &s.domains {
                if !seen.insert(d) {
                    return Err(ConfigError::DuplicateDomain(d.clone()));
                }
            }
        }
        Ok(())
    }

    /// Reads back a file saved as JSON (in a runtime record).
    pub fn from_json(value: serde_json::Value) -> Option<VassalFile> {
        match value.get("kind")?.as_str()? {
            "group" => serde_json::from_value(value).ok().map(VassalFile::Group),
            "site" => serde_json::from_value(value).ok().map(VassalFile::Site),
            _ => None,
        }
    }

    /// `group` or `site`.
    pub fn kind(&self) -> Kind {
        match self {
            VassalFile::Group(_) => Kind::Group,
            VassalFile::Site(_) => Kind::Site,
        }
    }

    /// The limits of the file.
    pub fn limits(&self) -> &Limits {
        match self {
            VassalFile::Group(g) => &g.limits,
            VassalFile::Site(s) => &s.limits,
        }
    }

    /// The container table of the file.
    pub fn container(&self) -> &Container {
        match self {
            VassalFile::Group(g) => &g.container,
            VassalFile::Site(s) => &s.container,
        }
    }

    /// The login name: `user`, or the vassal's own name.
    pub fn user(&self, name: &Name) -> Name {
        let user = match self {
            VassalFile::Group(g) => g.user.as_ref(),
            VassalFile::Site(s) => s.user.as_ref(),
        };
        user.unwrap_or(name).clone()
    }
}

pub(crate) fn syntax(e: toml::de::Error, text: &str) -> ConfigError {
    // toml's Display spans several lines (a snippet of the file); keep its
    // message and the line number, so the reason stays one line.
    let mut message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    if message.is_empty() {
        message = "invalid TOML".to_owned();
    }
    let reason = match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message,
    };
    ConfigError::Syntax(reason)
}

fn is_ssh_key(line: &str) -> bool {
    const TYPES: &[&str] = &[
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    if line.contains(['\n', '\r', '\0']) {
        return false;
    }
    let mut parts = line.split_ascii_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return false;
    };
    TYPES.contains(&kind)
        && blob.len() >= 16
        && blob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        s.parse().unwrap()
    }

    #[test]
    fn minimal_site() {
        let f = VassalFile::parse(&n("site52"), "kind = \"site\"").unwrap();
        let VassalFile::Site(s) = &f else { panic!() };
        assert_eq!(s.group, None);
        assert_eq!(s.container.rootfs, Rootfs::Host);
        assert_eq!(f.user(&n("site52")), n("site52"));
        assert!(s.domains.is_empty());
    }

    #[test]
    fn a_host_is_named_by_a_group_or_an_admin_site_never_by_a_groups_site() {
        let g = VassalFile::parse(&n("g1"), "kind = \"group\"\nhost = \"h1\"").unwrap();
        assert!(
            matches!(g, VassalFile::Group(GroupFile { host: Some(ref h), .. }) if h == &n("h1"))
        );
        assert!(VassalFile::parse(&n("a1"), "kind = \"site\"\nhost = \"h2\"").is_ok());
        let e = VassalFile::parse(&n("s1"), "kind = \"site\"\ngroup = \"g1\"\nhost = \"h2\"")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "host is the group's to set: site of group g1 runs where the group runs"
        );
    }

    #[test]
    fn full_site_and_group() {
        let site = r#"
kind = "site"
group = "group1"
domains = ["example.com", "*.example.com"]
user = "tenant52"
[limits]
memory = "256M"
storage = "2G"
cpu = 0.5
pids = 200
[container]
rootfs = "host"
ssh_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO0 tenant@laptop"]
"#;
        let f = VassalFile::parse(&n("site52"), site).unwrap();
        assert_eq!(f.limits().memory, Some(Size(256 << 20)));
        assert_eq!(f.limits().cpu, Some(0.5));
        assert_eq!(f.user(&n("site52")), n("tenant52"));
        let group =
            "kind = \"group\"\nmode = \"overcommit\"\n[limits]\nmemory = 536870912\nsites = 50\n";
        let VassalFile::Group(g) = VassalFile::parse(&n("group1"), group).unwrap() else {
            panic!()
        };
        assert_eq!(g.mode, Mode::Overcommit);
        assert_eq!(g.limits.memory, Some(Size(512 << 20)));
    }

    #[test]
    fn rejections_are_one_line() {
        let cases: &[(&str, &str)] = &[
            ("kind = \"site\"\ncolour = 1", "unknown field"),
            (
                "kind = \"site\"\n[limits]\nmemory = \"lots\"",
                "size \"lots\"",
            ),
            (
                "kind = \"site\"\n[limits]\nmemory = \"1M\"",
                "limits.memory",
            ),
            ("kind = \"site\"\n[limits]\ncpu = 0.0", "limits.cpu"),
            ("kind = \"site\"\n[limits]\npids = 1", "limits.pids"),
            ("kind = \"site\"\n[limits]\nsites = 3", "only a group"),
            ("kind = \"vm\"", "kind must be"),
            ("", "kind must be"),
            (
                "kind = \"site\"\ndomains = [\"a.com\", \"a.com\"]",
                "listed twice",
            ),
            ("kind = \"site\"\ndomains = [\"A.com\"]", "not a valid"),
            ("kind = \"site\"\ngroup = \"../etc\"", "must match"),
            ("kind = \"site\"\n[container]\nrootfs = \"../x\"", "rootfs"),
            (
                "kind = \"site\"\n[container]\nrootfs = \"/srv/../etc\"",
                "rootfs",
            ),
            (
                "kind = \"site\"\n[container]\nssh_keys = [\"hello\"]",
                "ssh_keys[0]",
            ),
            ("kind = \"site\"\nversion = 9", "version 9"),
            ("kind = ", "invalid"),
        ];
        for (text, want) in cases {
            let err = VassalFile::parse(&n("site1"), text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
            assert!(!err.contains('\n'), "{text:?}: multi-line reason {err:?}");
        }
        assert!(VassalFile::parse(&n("vassals"), "kind = \"site\"").is_err());
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = VassalFile::parse(&n("fuzz"), &text);
        }

        #[test]
        fn parser_never_panics_on_tomlish(text in "(kind = \"(site|group)\"\n)?(\\[(limits|container)\\]\n)?([a-z_]{1,8} = (\"[a-zA-Z0-9.*/ -]{0,12}\"|-?[0-9]{1,20}(\\.[0-9]+)?|\\[\\]|true)\n){0,6}") {
            if let Err(e) = VassalFile::parse(&n("fuzz"), &text) {
                proptest::prop_assert!(!e.to_string().contains('\n'));
            }
        }
    }
}
