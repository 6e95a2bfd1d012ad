//! Each site's Ed25519 key pair, for the router's subscriptions. The private
//! half is a file owned by the tenant (0400) in the emperor's state directory,
//! bound read-only into the site's container at `/run/imperium/site.key`; the
//! public half goes to the router through the dominion.

use std::io::{self, Read};
use std::os::unix::fs::{chown, OpenOptionsExt, PermissionsExt};

use base64::Engine;
use ed25519_dalek::SigningKey;
use model::{Layout, Name};

/// The base64 public key of `name`, making the pair (owned by `uid`) the first time.
pub fn ensure(layout: &Layout, name: &Name, uid: u32) -> io::Result<String> {
    let dir = layout.site_keys_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
    let path = layout.site_key(name);
    let b64 = base64::engine::general_purpose::STANDARD;
    let seed: [u8; 32] = match std::fs::read_to_string(&path) {
        Ok(text) => b64
            .decode(text.trim())
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a key", path.display()),
                )
            })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
            let tmp = dir.join(format!(".{name}.key.tmp"));
            // Left by a crash or a full disk: it must not fail the site for good.
            match std::fs::remove_file(&tmp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&tmp)?;
            io::Write::write_all(&mut f, format!("{}\n", b64.encode(seed)).as_bytes())?;
            f.sync_all()?;
            chown(&tmp, Some(uid), Some(uid))?;
            std::fs::rename(&tmp, &path)?;
            seed
        }
        Err(e) => return Err(e),
    };
    // The tenant's uid may have changed (a new `user`): the file follows it.
    chown(&path, Some(uid), Some(uid))?;
    Ok(b64.encode(SigningKey::from_bytes(&seed).verifying_key().to_bytes()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn stable_key_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let n: model::Name = "site1".parse().unwrap();
        let uid = nix::unistd::getuid().as_raw();
        let layout = model::Layout {
            state_dir: dir.path().to_path_buf(),
            ..model::Layout::default()
        };
        let a = super::ensure(&layout, &n, uid).unwrap();
        let b = super::ensure(&layout, &n, uid).unwrap();
        assert_eq!(a, b, "the pair is made once");
        // A temporary file left by a crash does not stop the next site's pair.
        let m: model::Name = "site2".parse().unwrap();
        std::fs::write(dir.path().join("keys/.site2.key.tmp"), "half").unwrap();
        assert!(super::ensure(&layout, &m, uid).is_ok());
        assert_eq!(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &a)
                .unwrap()
                .len(),
            32
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(layout.site_key(&n))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
    }
}
