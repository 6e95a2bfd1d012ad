//! The wire types of the router's signed subscription API, shared by the router
//! (which verifies) and the vassal (which signs).
//!
//! A request is a [`Signed`]: `payload` is the JSON text of a
//! [`Subscription`], and `signature` the base64 of the site's Ed25519
//! signature over exactly those bytes. The router verifies the bytes it
//! received before it parses them, so there is no canonicalisation to get
//! wrong on either side.

use serde::{Deserialize, Serialize};

/// What a subscription asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Route the domain to the backend (or refresh the route).
    Subscribe,
    /// Stop routing the domain to the backend.
    Unsubscribe,
}

/// One subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// Subscribe or unsubscribe.
    pub action: Action,
    /// The site that signs.
    pub site: String,
    /// The domain to route (`example.com` or a name under a wildcard the site owns).
    pub domain: String,
    /// A socket name in the site's socket directory (no `/`).
    pub backend: String,
    /// Share of the load against the domain's other backends (1-100).
    #[serde(default = "one")]
    pub weight: u32,
    /// A certificate chain for the domain, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// Its private key, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Plain HTTP requests for the domain are answered with a redirect to
    /// HTTPS once the router serves a certificate for it (the site's or ACME's).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redirect: bool,
    /// Seconds since the Unix epoch when it was signed.
    pub timestamp: u64,
    /// A value used once (hex, 16 to 64 characters).
    pub nonce: String,
}

fn one() -> u32 {
    1
}

/// A signed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    /// The JSON text of a [`Subscription`].
    pub payload: String,
    /// base64 (standard, padded) of the Ed25519 signature over `payload`'s bytes.
    pub signature: String,
}

/// What the router answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// Whether the subscription was taken.
    pub ok: bool,
    /// Why not, in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds the route lives unless refreshed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
}

/// One domain of a site as the router routes it now (`GET /routes` on its
/// subscription socket: a site's own, or any site's for root).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct RouteReport {
    /// The domain (`*.example.com` for the names under it).
    pub domain: String,
    /// Its live backends.
    pub backends: Vec<BackendReport>,
    /// When the certificate the site gave for it expires (`notAfter`,
    /// seconds since the epoch); absent: the router's default one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_expires: Option<i64>,
    /// Where its certificate comes from: `site` (the tenant's own), `acme`
    /// (the router got it), absent: the router's default one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Who issued that certificate (its issuer's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Why the router could not get it a certificate through ACME, lately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme_error: Option<String>,
}

/// A backend of a routed domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct BackendReport {
    /// The socket's name in the site's socket directory, or `tcp:PORT`.
    pub backend: String,
    /// Its share of the load.
    pub weight: u32,
    /// Seconds it lives unless the site's vassal subscribes it again.
    pub expires_in: u64,
}

/// The router's view of one site, written by the emperor (the dominator).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SiteRoutes {
    /// The site's Ed25519 public key, base64.
    pub public_key: String,
    /// The domains it owns (`*.example.com` covers the names under it).
    pub domains: Vec<String>,
    /// Its socket directory on the host.
    pub sockets: String,
    /// The site's uid: the router connects only to sockets it owns. Absent
    /// (an old dominion): the router connects to none of the site's sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Suspended sites answer 503.
    #[serde(default)]
    pub suspended: bool,
    /// Domains being moved (to another host): 503 until the move is over.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moving: Vec<String>,
    /// Requests in flight to the site at once (508 past it); the router's
    /// default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u32>,
    /// The site's own address: `tcp:PORT` backends are that port on it (and
    /// nothing else). Absent: the site has no TCP backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::Ipv4Addr>,
}

/// The dominion's JSON text, kept with each site's entry serialized once:
/// one more site on a host of 10,000 serializes one entry and copies the
/// others' bytes, instead of formatting every key and domain again.
#[derive(Debug, Default)]
pub struct DominionText {
    sites: std::collections::BTreeMap<String, Vec<u8>>,
}

impl DominionText {
    /// The entry of `name` is now `routes`.
    pub fn set(&mut self, name: &str, routes: &SiteRoutes) {
        // A string, and a struct of strings, numbers and an address: they
        // always serialize.
        let mut bytes = serde_json::to_vec(name).unwrap_or_default();
        bytes.push(b':');
        bytes.extend(serde_json::to_vec(routes).unwrap_or_default());
        // Kept for the site's life: no room to grow (10,000 of them).
        bytes.shrink_to_fit();
        self.sites.insert(name.to_owned(), bytes);
    }

    /// `name` has no entry any more.
    pub fn remove(&mut self, name: &str) {
        self.sites.remove(name);
    }

    /// Keeps the entries of the sites `keep` says.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.sites.retain(|n, _| keep(n));
    }

    /// The whole dominion as JSON (schema version 1), as
    /// `serde_json::to_vec(&Dominion)` writes it.
    pub fn to_vec(&self) -> Vec<u8> {
        let len: usize = self.sites.values().map(|b| b.len() + 1).sum();
        let mut out = Vec::with_capacity(len + 64);
        out.extend_from_slice(b"{\"schemaVersion\":1,\"sites\":{");
        for (i, entry) in self.sites.values().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(entry);
        }
        out.extend_from_slice(b"}}");
        out
    }
}

/// Everything the dominator tells the router.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dominion {
    /// Schema version (1).
    pub schema_version: u32,
    /// Sites by name.
    pub sites: std::collections::BTreeMap<String, SiteRoutes>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(i: u32) -> SiteRoutes {
        SiteRoutes {
            public_key: format!("key{i}+/="),
            domains: vec![format!("s{i}.example.org"), "*.x.test".into()],
            sockets: format!("/run/imperium/sockets/s{i}"),
            uid: Some(30000 + i),
            suspended: i % 2 == 0,
            moving: Vec::new(),
            requests: (i % 3 == 0).then_some(i),
            address: (i % 4 == 0).then(|| std::net::Ipv4Addr::new(10, 0, 0, i as u8)),
        }
    }

    #[test]
    fn the_dominion_text_is_the_dominion_serialized() {
        let mut d = Dominion {
            schema_version: 1,
            sites: Default::default(),
        };
        let mut text = DominionText::default();
        assert_eq!(text.to_vec(), serde_json::to_vec(&d).unwrap());
        for i in 0..40u32 {
            let name = if i == 7 {
                "we\"ird\\".to_owned()
            } else {
                format!("s{i}")
            };
            d.sites.insert(name.clone(), routes(i));
            text.set(&name, &routes(i));
            if i % 5 == 0 {
                let gone = format!("s{}", i / 2);
                d.sites.remove(&gone);
                text.remove(&gone);
            }
            if i % 11 == 0 {
                d.sites.insert("s1".into(), routes(i + 100));
                text.set("s1", &routes(i + 100));
            }
            assert_eq!(text.to_vec(), serde_json::to_vec(&d).unwrap());
        }
        d.sites.retain(|n, _| n.len() < 3);
        text.retain(|n| n.len() < 3);
        let bytes = text.to_vec();
        assert_eq!(bytes, serde_json::to_vec(&d).unwrap());
        assert_eq!(serde_json::from_slice::<Dominion>(&bytes).unwrap(), d);
    }
}
