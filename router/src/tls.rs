//! Certificates by SNI: exact name, then the wildcard one level up, then the
//! default. The map is swapped whole on change, so a handshake never waits.

// A persistent map: a copy shares all but the changed path, so a change
// costs O(log n) however many domains there are, and readers never wait.
use imbl::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The router's certificates.
#[derive(Debug)]
pub struct SniCerts {
    by_name: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    default: Arc<CertifiedKey>,
}

impl SniCerts {
    /// With a self-signed default certificate for unknown names.
    pub fn new() -> anyhow::Result<SniCerts> {
        let cert = rcgen::generate_simple_self_signed(vec!["imperium.invalid".to_owned()])?;
        let default = crate::verify::load_cert(
            &cert.cert.pem(),
            &cert.key_pair.serialize_pem(),
            "imperium.invalid",
        )?;
        Ok(SniCerts {
            by_name: ArcSwap::from_pointee(HashMap::new()),
            default,
        })
    }

    /// Serves `cert` for `domain` from now on.
    pub fn set(&self, domain: &str, cert: Arc<CertifiedKey>) {
        let mut m = (**self.by_name.load()).clone();
        m.insert(domain.to_owned(), cert);
        self.by_name.store(Arc::new(m));
    }

    /// The certificate for a name.
    pub fn get(&self, name: &str) -> Arc<CertifiedKey> {
        let m = self.by_name.load();
        if let Some(c) = m.get(name) {
            return c.clone();
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(c) = m.get(&format!("*.{parent}")) {
                return c.clone();
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(match hello.server_name() {
            Some(name) => self.get(&name.to_ascii_lowercase()),
            None => self.default.clone(),
        })
    }
}
