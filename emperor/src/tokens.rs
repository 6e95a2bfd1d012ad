//! Bearer tokens for the API over TLS (`serve --api-listen`): each is scoped
//! to the admin, one group (a reseller) or one site, exactly as the sockets
//! are. Only a token's SHA-256 is kept, in `<state-dir>/api-tokens.json`
//! (root's, 0600); the token itself is printed once, by `emperor token
//! create`. A token is `imp_<id>_<secret>`: the id finds the entry (and
//! names it to `list` and `revoke`), 256 random bits make the secret, so a
//! plain hash is enough (nothing to guess a dictionary from).

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde::{Deserialize, Serialize};

/// The tokens' file in the state directory.
pub const FILE: &str = "api-tokens.json";

/// The largest tokens' file read.
const FILE_MAX: u64 = 1024 * 1024;

/// What a token may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything, as the admin's socket.
    Admin,
    /// One group and its sites, as that group's own socket.
    Group(String),
    /// One site, as its own socket.
    Site(String),
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        let named = |n: &str| {
            n.parse::<model::name::Name>()
                .map(|n| n.to_string())
                .map_err(|e| format!("{n:?}: {e}"))
        };
        match s.split_once(':') {
            None if s == "admin" => Ok(Scope::Admin),
            Some(("group", n)) => Ok(Scope::Group(named(n)?)),
            Some(("site", n)) => Ok(Scope::Site(named(n)?)),
            _ => Err(format!("{s:?}: a scope is admin, group:NAME or site:NAME")),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Admin => f.write_str("admin"),
            Scope::Group(n) => write!(f, "group:{n}"),
            Scope::Site(n) => write!(f, "site:{n}"),
        }
    }
}

/// One token as it is kept: never the token itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// Its public part, which `revoke` takes.
    pub id: String,
    /// `admin`, `group:NAME` or `site:NAME`.
    pub scope: String,
    /// SHA-256 of the whole token, hex.
    pub sha256: String,
    /// What the operator called it (a panel's name, say).
    #[serde(default)]
    pub label: String,
    /// When it was made, seconds since the epoch.
    #[serde(default)]
    pub created: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    tokens: Vec<Entry>,
}

/// Why the tokens' file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing it.
    #[error("{path}: {err}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        #[source]
        err: std::io::Error,
    },
    /// Its contents.
    #[error("{path}: {err}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        #[source]
        err: serde_json::Error,
    },
    /// Random bytes for a new token.
    #[error("no random bytes for a token")]
    Random,
}

fn hash(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn random<const N: usize>() -> Result<[u8; N], Error> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Error::Random)?;
    Ok(b)
}

fn read(path: &Path) -> Result<Stored, Error> {
    let io = |err| Error::Io {
        path: path.display().to_string(),
        err,
    };
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Stored::default()),
        Err(e) => return Err(io(e)),
    };
    let mut buf = Vec::new();
    (&mut f).take(FILE_MAX).read_to_end(&mut buf).map_err(io)?;
    serde_json::from_slice(&buf).map_err(|err| Error::Parse {
        path: path.display().to_string(),
        err,
    })
}

/// Changes the file under a lock (two `token` commands at once both count).
fn change<T>(state_dir: &Path, f: impl FnOnce(&mut Stored) -> T) -> Result<T, Error> {
    let path = state_dir.join(FILE);
    let io = |err| Error::Io {
        path: path.display().to_string(),
        err,
    };
    std::fs::create_dir_all(state_dir).map_err(io)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(state_dir.join(".api-tokens.lock"))
        .map_err(io)?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io(e.into()))?;
    let mut stored = read(&path)?;
    let out = f(&mut stored);
    let tmp = state_dir.join(".api-tokens.json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut t = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    let text = serde_json::to_vec_pretty(&stored).unwrap_or_default();
    t.write_all(&text)
        .and_then(|()| t.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(io)?;
    Ok(out)
}

/// Makes a token for `scope`; the token (shown once) and its entry.
pub fn create(state_dir: &Path, scope: &Scope, label: &str) -> Result<(String, Entry), Error> {
    let id: String = random::<8>()?.iter().map(|b| format!("{b:02x}")).collect();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random::<32>()?);
    let token = format!("imp_{id}_{secret}");
    let entry = Entry {
        id,
        scope: scope.to_string(),
        sha256: hash(&token),
        label: label.to_owned(),
        created: crate::clock::wall_secs(),
    };
    let kept = entry.clone();
    change(state_dir, move |s| s.tokens.push(kept))?;
    Ok((token, entry))
}

/// Removes the token `id`; whether there was one.
pub fn revoke(state_dir: &Path, id: &str) -> Result<bool, Error> {
    change(state_dir, |s| {
        let before = s.tokens.len();
        s.tokens.retain(|t| t.id != id);
        s.tokens.len() != before
    })
}

/// Every token's entry.
pub fn list(state_dir: &Path) -> Result<Vec<Entry>, Error> {
    Ok(read(&state_dir.join(FILE))?.tokens)
}

/// A file's inode, modification time and size: it changed when this did.
type Stamp = (u64, i64, i64, u64);

/// The emperor's view of the tokens' file: read again whenever it changed
/// (a revoked token is refused from the next request on).
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    cache: Mutex<Option<(Stamp, Arc<Vec<Entry>>)>>,
}

impl Tokens {
    /// The tokens of `state_dir`.
    pub fn new(state_dir: &Path) -> Tokens {
        Tokens {
            path: state_dir.join(FILE),
            cache: Mutex::new(None),
        }
    }

    /// The scope of the token in an `Authorization` header's value, if it
    /// is one of ours and not revoked.
    pub fn scope_of(&self, authorization: &[u8]) -> Option<Scope> {
        let token = authorization.strip_prefix(b"Bearer ")?;
        let token = std::str::from_utf8(token).ok()?.trim();
        let id = token.strip_prefix("imp_")?.split_once('_')?.0;
        let entries = self.entries()?;
        let entry = entries.iter().find(|e| e.id == id)?;
        use subtle::ConstantTimeEq;
        let same: bool = hash(token).as_bytes().ct_eq(entry.sha256.as_bytes()).into();
        same.then(|| entry.scope.parse().ok()).flatten()
    }

    fn entries(&self) -> Option<Arc<Vec<Entry>>> {
        let meta = match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.is_file() => m,
            _ => return Some(Arc::default()),
        };
        let stamp = (meta.ino(), meta.mtime(), meta.mtime_nsec(), meta.size());
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, entries)) = cache.as_ref() {
            if *s == stamp {
                return Some(entries.clone());
            }
        }
        match read(&self.path) {
            Ok(s) => {
                let entries = Arc::new(s.tokens);
                *cache = Some((stamp, entries.clone()));
                Some(entries)
            }
            Err(e) => {
                // Fail closed: no token is good while the file is broken.
                tracing::warn!(error = %e, "api tokens unreadable; every token refused");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_has_its_scope_until_revoked_and_is_kept_only_hashed() {
        let d = tempfile::tempdir().unwrap();
        let (token, entry) = create(d.path(), &"group:r1".parse().unwrap(), "panel").unwrap();
        let (admin, _) = create(d.path(), &Scope::Admin, "").unwrap();
        let tokens = Tokens::new(d.path());
        let bearer = |t: &str| format!("Bearer {t}").into_bytes();
        assert_eq!(
            tokens.scope_of(&bearer(&token)),
            Some(Scope::Group("r1".into()))
        );
        assert_eq!(tokens.scope_of(&bearer(&admin)), Some(Scope::Admin));
        let text = std::fs::read_to_string(d.path().join(FILE)).unwrap();
        assert!(!text.contains(&token[5 + 16 + 1..]), "{text}");
        let mode = std::fs::metadata(d.path().join(FILE)).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A forged secret with a real id, a token without the scheme, junk.
        let forged = format!("imp_{}_{}", entry.id, "A".repeat(43));
        assert_eq!(tokens.scope_of(&bearer(&forged)), None);
        assert_eq!(tokens.scope_of(token.as_bytes()), None);
        assert_eq!(tokens.scope_of(b"Bearer imp_"), None);
        assert!(revoke(d.path(), &entry.id).unwrap());
        assert!(!revoke(d.path(), &entry.id).unwrap());
        assert_eq!(tokens.scope_of(&bearer(&token)), None);
        assert_eq!(tokens.scope_of(&bearer(&admin)), Some(Scope::Admin));
        assert_eq!(list(d.path()).unwrap().len(), 1);
    }

    #[test]
    fn scopes_parse_and_refuse_what_is_not_one() {
        assert_eq!("admin".parse(), Ok(Scope::Admin));
        assert_eq!("site:shop".parse(), Ok(Scope::Site("shop".into())));
        assert!("group:../x".parse::<Scope>().is_err());
        assert!("reseller:x".parse::<Scope>().is_err());
        assert!("site:".parse::<Scope>().is_err());
    }

    #[test]
    fn a_broken_file_refuses_every_token() {
        let d = tempfile::tempdir().unwrap();
        let (token, _) = create(d.path(), &Scope::Admin, "").unwrap();
        std::fs::write(d.path().join(FILE), "{not json").unwrap();
        let tokens = Tokens::new(d.path());
        assert_eq!(tokens.scope_of(format!("Bearer {token}").as_bytes()), None);
    }
}
