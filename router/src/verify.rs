//! Checking a signed subscription: pure, no I/O. The router calls [`verify`]
//! with what the dominator said and the time; only what passes is applied.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use model::subscription::{Action, Dominion, Signed, Subscription};
use model::Domain;
use rustls::sign::CertifiedKey;

/// How far a timestamp may be from the router's clock, in seconds.
pub const WINDOW: u64 = 30;

/// Why a subscription was refused. Each `Display` is the one-line answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// Not a signed request, or its payload is not a subscription.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The dominator knows no such site.
    #[error("unknown site {0}")]
    UnknownSite(String),
    /// The signature does not verify with the site's key.
    #[error("bad signature")]
    Signature,
    /// The timestamp is outside the window.
    #[error("timestamp {0} is more than {WINDOW} s away from the router's clock")]
    Stale(u64),
    /// The nonce was seen already.
    #[error("nonce already used")]
    Replay,
    /// The site does not own the domain.
    #[error("site {site} does not own {domain}")]
    NotOwned {
        /// The site.
        site: String,
        /// The domain.
        domain: String,
    },
    /// The backend name leaves the site's socket directory.
    #[error("backend {0:?} is not a socket name in the site's directory, nor tcp:PORT of a site with an address")]
    Backend(String),
    /// Out-of-range weight.
    #[error("weight {0} is not between 1 and 100")]
    Weight(u32),
    /// The certificate or key is unusable for the domain.
    #[error("certificate refused: {0}")]
    Certificate(String),
}

/// Nonces seen within the window, to refuse replays.
#[derive(Debug, Default)]
pub struct Nonces {
    seen: HashMap<String, u64>,
}

impl Nonces {
    fn check_and_add(&mut self, nonce: &str, now: u64) -> bool {
        self.seen.retain(|_, t| *t + 2 * WINDOW >= now);
        self.seen.insert(nonce.to_owned(), now).is_none()
    }
}

/// A subscription that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    /// What it asks.
    pub sub: Subscription,
    /// The site's socket directory on the host (the backend is `sub.backend` in it).
    pub dir: PathBuf,
    /// For a `tcp:PORT` backend: that port on the site's own address.
    pub tcp: Option<std::net::SocketAddr>,
    /// The certificate to serve for the domain, if one came with it.
    pub cert: Option<Arc<CertifiedKey>>,
    /// When that certificate expires (its `notAfter`), seconds since the epoch.
    pub cert_not_after: Option<i64>,
}

/// When a certificate expires (its `notAfter`), seconds since the epoch.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Who issued a certificate (its issuer's distinguished name).
pub fn issuer(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.issuer().to_string())
}

/// Whether `site_domains` own `domain` (exactly, or under a wildcard).
pub fn owns(site_domains: &[String], domain: &str) -> bool {
    site_domains.iter().any(|d| {
        d == domain
            || d.strip_prefix("*.").is_some_and(|parent| {
                domain.strip_suffix(parent).is_some_and(|head| {
                    head.ends_with('.') && head.len() > 1 && !head[..head.len() - 1].contains('.')
                })
            })
    })
}

/// Checks the request `body` against the dominion at time `now` (Unix seconds).
pub fn verify(
    body: &[u8],
    dominion: &Dominion,
    now: u64,
    nonces: &mut Nonces,
) -> Result<Verified, VerifyError> {
    let signed: Signed =
        serde_json::from_slice(body).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    let sub: Subscription =
        serde_json::from_str(&signed.payload).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    let site = dominion
        .sites
        .get(&sub.site)
        .ok_or_else(|| VerifyError::UnknownSite(sub.site.clone()))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key_bytes: [u8; 32] = b64
        .decode(&site.public_key)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or(VerifyError::Signature)?;
    let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| VerifyError::Signature)?;
    let sig_bytes: [u8; 64] = b64
        .decode(&signed.signature)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or(VerifyError::Signature)?;
    key.verify(
        signed.payload.as_bytes(),
        &Signature::from_bytes(&sig_bytes),
    )
    .map_err(|_| VerifyError::Signature)?;

    if sub.timestamp.abs_diff(now) > WINDOW {
        return Err(VerifyError::Stale(sub.timestamp));
    }
    let n = &sub.nonce;
    if !(16..=64).contains(&n.len()) || !n.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(VerifyError::Malformed(
            "nonce must be 16 to 64 hex digits".into(),
        ));
    }
    if sub.domain.parse::<Domain>().is_err() || !owns(&site.domains, &sub.domain) {
        return Err(VerifyError::NotOwned {
            site: sub.site.clone(),
            domain: sub.domain.clone(),
        });
    }
    let b = &sub.backend;
    if b.is_empty() || b.len() > 100 || b == "." || b == ".." || b.contains(['/', '\0']) {
        return Err(VerifyError::Backend(b.clone()));
    }
    // A TCP backend is a port of the site's own address, never an address the site names.
    let tcp = match (
        b.starts_with("tcp:"),
        model::process::tcp_port(b),
        site.address,
    ) {
        (false, _, _) => None,
        (true, Some(port), Some(addr)) => Some(std::net::SocketAddr::from((addr, port))),
        (true, _, _) => return Err(VerifyError::Backend(b.clone())),
    };
    if sub.action == Action::Subscribe && !(1..=100).contains(&sub.weight) {
        return Err(VerifyError::Weight(sub.weight));
    }
    let cert = match (&sub.cert, &sub.key, sub.action) {
        (Some(c), Some(k), Action::Subscribe) => Some(load_cert(c, k, &sub.domain)?),
        (None, None, _) | (_, _, Action::Unsubscribe) => None,
        _ => {
            return Err(VerifyError::Certificate(
                "a certificate needs its key, and a key its certificate".into(),
            ))
        }
    };
    let cert_not_after = cert.as_ref().and_then(|c| not_after(c.cert.first()?));
    // Only a request that passed every other check spends its nonce.
    if !nonces.check_and_add(n, now) {
        return Err(VerifyError::Replay);
    }
    Ok(Verified {
        dir: PathBuf::from(&site.sockets),
        tcp,
        cert,
        cert_not_after,
        sub,
    })
}

/// Parses a PEM chain and key, checks they belong together and cover `domain`.
pub fn load_cert(
    chain_pem: &str,
    key_pem: &str,
    domain: &str,
) -> Result<Arc<CertifiedKey>, VerifyError> {
    let bad = |why: String| VerifyError::Certificate(why);
    let chain: Vec<_> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("unreadable certificate: {e}")))?;
    if chain.is_empty() {
        return Err(bad("no certificate in the PEM".into()));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| bad(format!("unreadable key: {e}")))?
        .ok_or_else(|| bad("no private key in the PEM".into()))?;
    let provider = rustls::crypto::ring::default_provider();
    let ck = CertifiedKey::from_der(chain, key, &provider).map_err(|e| bad(format!("{e}")))?;
    let ee = webpki::EndEntityCert::try_from(&ck.cert[0]).map_err(|e| bad(format!("{e}")))?;
    // A wildcard subscription must be covered by a wildcard certificate: check a name under it.
    let probe = match domain.strip_prefix("*.") {
        Some(parent) => format!("imperium-probe.{parent}"),
        None => domain.to_owned(),
    };
    let name =
        rustls::pki_types::ServerName::try_from(probe.as_str()).map_err(|e| bad(format!("{e}")))?;
    ee.verify_is_valid_for_subject_name(&name)
        .map_err(|_| bad(format!("the certificate does not cover {domain}")))?;
    Ok(Arc::new(ck))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership() {
        let d = vec!["example.com".to_owned(), "*.shop.org".to_owned()];
        assert!(owns(&d, "example.com"));
        assert!(owns(&d, "a.shop.org"));
        assert!(owns(&d, "*.shop.org"));
        assert!(!owns(&d, "a.b.shop.org"));
        assert!(!owns(&d, "shop.org"));
        assert!(!owns(&d, "evilshop.org"));
        assert!(!owns(&d, "www.example.com"));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let mut n = Nonces::default();
            let _ = verify(&bytes, &Dominion::default(), 0, &mut n);
        }
    }
}
