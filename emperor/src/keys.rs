//! Each site's Ed25519 key pair, for the router's subscriptions. Every key is
//! derived from one secret of the host (`<state-dir>/site-keys.secret`,
//! root's, made once) with HMAC-SHA256 over the site's name and its tenant's
//! uid, so a start writes no durable file: the private half is written to
//! the run directory (`<run-dir>/keys/<site>.key`, owned by the tenant,
//! 0400) and bound read-only into the site's container at
//! `/run/imperium/site.key`; the public half goes to the router through the
//! dominion. A name that comes back under another tenant (another uid: uids
//! are never reused) gets another key, so whoever kept the old one cannot
//! sign for it.

use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

use base64::Engine;
use ed25519_dalek::SigningKey;
use model::{Layout, Name};
use ring::hmac;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The host's key secret, and where sites' keys go.
pub struct SiteKeys {
    secret: hmac::Key,
    layout: Layout,
    /// An earlier version made keys at random there: each is kept.
    legacy: bool,
}

impl std::fmt::Debug for SiteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteKeys").finish_non_exhaustive()
    }
}

impl SiteKeys {
    /// Reads the host's secret, making it (durably) the first time, and
    /// makes the directory the private keys are written to.
    pub fn open(layout: &Layout) -> io::Result<SiteKeys> {
        let path = layout.site_key_secret();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut b = vec![0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
                    .map_err(|_| io::Error::other("no random bytes for the site key secret"))?;
                model::atomic::write(&path, &b, 0o400)?;
                b
            }
            Err(e) => return Err(e),
        };
        if bytes.len() != 32 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a 32-byte secret", path.display()),
            ));
        }
        let dir = layout.site_keys_dir();
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
        Ok(SiteKeys {
            secret: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
            layout: layout.clone(),
            legacy: layout.legacy_site_keys_dir().is_dir(),
        })
    }

    /// The private key of `name` run by `uid`: the one an earlier version
    /// made at random if it is still there, else derived.
    fn seed(&self, name: &Name, uid: u32) -> io::Result<[u8; 32]> {
        let legacy = self.layout.legacy_site_key(name);
        let read = match self.legacy {
            true => std::fs::read_to_string(&legacy),
            false => Err(io::ErrorKind::NotFound.into()),
        };
        match read {
            Ok(text) => B64
                .decode(text.trim())
                .ok()
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} is not a key", legacy.display()),
                    )
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut msg = b"imperium site key\0".to_vec();
                msg.extend_from_slice(name.as_str().as_bytes());
                msg.push(0);
                msg.extend_from_slice(&uid.to_be_bytes());
                let tag = hmac::sign(&self.secret, &msg);
                Ok(tag.as_ref().try_into().expect("HMAC-SHA256 is 32 bytes"))
            }
            Err(e) => Err(e),
        }
    }

    /// The base64 public key of `name` run by `uid`.
    pub fn public(&self, name: &Name, uid: u32) -> io::Result<String> {
        let seed = self.seed(name, uid)?;
        Ok(B64.encode(SigningKey::from_bytes(&seed).verifying_key().to_bytes()))
    }

    /// Writes the private key of `name` run by `uid` where its container
    /// binds it from, owned by `uid`, 0400. The directory is root's (0711):
    /// no tenant can list it, plant a name in it or swap one.
    pub fn write(&self, name: &Name, uid: u32) -> io::Result<()> {
        let seed = self.seed(name, uid)?;
        let tmp = self.layout.site_keys_dir().join(format!(".{name}.key.tmp"));
        // Left by a crash: it must not fail the site for good.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&tmp)?;
            f.write_all(format!("{}\n", B64.encode(seed)).as_bytes())?;
            std::os::unix::fs::fchown(&f, Some(uid), Some(uid))?;
            // A runtime file, derived again after a reboot: no fsync.
            std::fs::rename(&tmp, self.layout.site_key(name))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::SiteKeys;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn layout(dir: &std::path::Path) -> model::Layout {
        model::Layout {
            state_dir: dir.join("state"),
            run_dir: dir.join("run"),
            ..model::Layout::default()
        }
    }

    #[test]
    fn a_sites_key_is_stable_for_its_tenant_and_differs_for_any_other() {
        let dir = tempfile::tempdir().unwrap();
        let l = layout(dir.path());
        std::fs::create_dir_all(&l.state_dir).unwrap();
        let n: model::Name = "site1".parse().unwrap();
        let m: model::Name = "site2".parse().unwrap();
        // A tenant's uid (the test runs as root, which may give files away).
        let uid = 31234;
        let keys = SiteKeys::open(&l).unwrap();
        let a = keys.public(&n, uid).unwrap();
        assert_eq!(
            a,
            SiteKeys::open(&l).unwrap().public(&n, uid).unwrap(),
            "the same after the emperor's restart"
        );
        assert_ne!(a, keys.public(&m, uid).unwrap(), "another site");
        assert_ne!(
            a,
            keys.public(&n, uid + 1).unwrap(),
            "the name under another tenant"
        );
        let other = tempfile::tempdir().unwrap();
        let lo = layout(other.path());
        std::fs::create_dir_all(&lo.state_dir).unwrap();
        assert_ne!(
            a,
            SiteKeys::open(&lo).unwrap().public(&n, uid).unwrap(),
            "another host"
        );

        // The private half, where the container binds it from: the pair's.
        std::fs::write(l.site_keys_dir().join(".site1.key.tmp"), "half").unwrap();
        keys.write(&n, uid).unwrap();
        let text = std::fs::read_to_string(l.site_key(&n)).unwrap();
        let seed: [u8; 32] = base64::Engine::decode(&super::B64, text.trim())
            .unwrap()
            .try_into()
            .unwrap();
        let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
        assert_eq!(base64::Engine::encode(&super::B64, public.to_bytes()), a);
        let meta = std::fs::metadata(l.site_key(&n)).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.uid()), (0o400, uid));
        let dir_mode = std::fs::metadata(l.site_keys_dir())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o711);
        let secret = std::fs::metadata(l.site_key_secret()).unwrap();
        assert_eq!(secret.mode() & 0o777, 0o400);
    }

    #[test]
    fn a_key_made_by_an_earlier_version_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let l = layout(dir.path());
        let n: model::Name = "site1".parse().unwrap();
        let legacy = l.legacy_site_key(&n);
        std::fs::create_dir_all(legacy.parent().unwrap()).unwrap();
        let seed = [7u8; 32];
        std::fs::write(
            &legacy,
            format!("{}\n", base64::Engine::encode(&super::B64, seed)),
        )
        .unwrap();
        let keys = SiteKeys::open(&l).unwrap();
        let want = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
        assert_eq!(
            keys.public(&n, 30000).unwrap(),
            base64::Engine::encode(&super::B64, want.to_bytes())
        );
        std::fs::write(&legacy, "not a key").unwrap();
        assert!(
            keys.public(&n, 30000).is_err(),
            "a damaged key is not replaced silently"
        );
    }
}
