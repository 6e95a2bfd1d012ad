//! Certificates by SNI: the certificate a site subscribed with its domain
//! (exact name, then the wildcard one level up), else the one ACME got for
//! a routed name, else the default (and to a CA checking TLS-ALPN-01, the
//! challenge's certificate). They live in
//! the route table, so a certificate goes when its domain's last route goes.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::routes::Routes;

/// The router's certificates.
#[derive(Debug)]
pub struct SniCerts {
    routes: Arc<Routes>,
    acme: Option<Arc<crate::acme::Acme>>,
    default: Arc<CertifiedKey>,
}

impl SniCerts {
    /// Over `routes`, with a self-signed default certificate for unknown names.
    pub fn new(
        routes: Arc<Routes>,
        acme: Option<Arc<crate::acme::Acme>>,
    ) -> anyhow::Result<SniCerts> {
        let cert = rcgen::generate_simple_self_signed(vec!["imperium.invalid".to_owned()])?;
        let default = crate::verify::load_cert(
            &cert.cert.pem(),
            &cert.key_pair.serialize_pem(),
            "imperium.invalid",
        )?;
        Ok(SniCerts {
            routes,
            acme,
            default,
        })
    }

    /// The certificate for a name: the site's own, else the one ACME got
    /// for a routed name, else the default.
    pub fn get(&self, name: &str) -> Arc<CertifiedKey> {
        own_cert(&self.routes, self.acme.as_deref(), name).unwrap_or_else(|| self.default.clone())
    }
}

/// The certificate of a name's own: the site's, else the one ACME got for a
/// routed name (none: the router's default is what SNI shows).
pub fn own_cert(
    routes: &Routes,
    acme: Option<&crate::acme::Acme>,
    name: &str,
) -> Option<Arc<CertifiedKey>> {
    routes.cert(name).or_else(|| {
        let acme = acme?;
        routes.is_routed(name).then(|| acme.cert(name)).flatten()
    })
}

impl ResolvesServerCert for SniCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A CA checking TLS-ALPN-01 gets the challenge's certificate for a
        // domain in flight, or no handshake: never a site's certificate.
        let acme_check = hello
            .alpn()
            .is_some_and(|mut p| p.any(|p| p == crate::acme::ACME_TLS_ALPN));
        if acme_check {
            let acme = self.acme.as_ref()?;
            return acme.alpn_cert(&hello.server_name()?.to_ascii_lowercase());
        }
        Some(match hello.server_name() {
            Some(name) => self.get(&name.to_ascii_lowercase()),
            None => self.default.clone(),
        })
    }
}
