//! Automatic certificates (ACME, RFC 8555, with instant-acme): a domain a
//! site has subscribed without a certificate of its own gets one from the
//! CA the admin names (`router serve --acme-directory URL`), proved by the
//! HTTP-01 challenge on the router's HTTP listener or the TLS-ALPN-01 one
//! (RFC 8737) on its HTTPS listener, whichever the admin allows and the CA
//! offers, in the admin's order. Only what the dominion
//! gives a site and the site subscribed is ever asked for; a wildcard is
//! skipped (HTTP-01 cannot prove it); a tenant's own certificate always wins.
//!
//! Never a storm: a few orders at once, a global budget of new orders well
//! under Let's Encrypt's (300 per account per 3 hours), and each domain's
//! failures back off (failures squared minutes, a day at most; a nonce the
//! CA refused twice more is tried again in 5 s, uncounted). The account
//! and every certificate live in `<state-dir>/acme/` (0600, written
//! atomically) and are loaded at start without a network call.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;

/// What the admin set.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The CA's directory URL.
    pub directory: String,
    /// The account's contact (`mailto:`).
    pub email: Option<String>,
    /// A PEM file of the root to trust for the CA's own TLS (a private CA,
    /// as the tests' pebble); the system's roots otherwise.
    pub ca: Option<PathBuf>,
    /// The challenges the router answers, the first the CA offers taken.
    pub challenges: Vec<Challenge>,
    /// External Account Binding (RFC 8555, 7.3.4): the key id and the HMAC
    /// key the CA gave, for CAs that tie accounts to a customer of theirs.
    pub eab: Option<(String, Vec<u8>)>,
    /// New orders at most per window (three hours).
    pub max_orders: usize,
}

/// A way to prove control of a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// A token served over HTTP on port 80.
    Http01,
    /// A certificate for the domain served under the ALPN `acme-tls/1` on port 443.
    TlsAlpn01,
}

impl Challenge {
    /// Its name in RFC 8555's registry.
    pub fn name(self) -> &'static str {
        match self {
            Challenge::Http01 => "http-01",
            Challenge::TlsAlpn01 => "tls-alpn-01",
        }
    }

    fn kind(self) -> ChallengeType {
        match self {
            Challenge::Http01 => ChallengeType::Http01,
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        }
    }
}

/// The ALPN protocol of TLS-ALPN-01 validation.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A certificate the CA gave.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The chain and key, for SNI.
    pub key: Arc<CertifiedKey>,
    /// Its `notBefore` and `notAfter`, seconds since the epoch.
    pub not_before: i64,
    /// See `not_before`.
    pub not_after: i64,
}

/// A domain's failures.
#[derive(Debug, Clone)]
struct Failing {
    failures: u32,
    next: Instant,
    error: String,
}

/// Orders in flight at once.
const CONCURRENT: usize = 4;
/// New orders the router may place, at most, per window, by default.
pub const ORDERS_PER_WINDOW: usize = 250;
/// The window of that budget.
const WINDOW: Duration = Duration::from_secs(3 * 3600);
/// How often the routes are looked at.
const TICK: Duration = Duration::from_secs(1);
/// The longest wait after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);
/// The wait after the CA refused a request's nonce even when asked again
/// (RFC 8555, 6.5: its hiccup, not a failure of the order's).
const BAD_NONCE_RETRY: Duration = Duration::from_secs(5);

/// Why an order failed.
#[derive(Debug)]
struct Failure {
    error: String,
    /// The CA refused a request's anti-replay nonce, after the client had
    /// asked again with a fresh one: tried again soon, not counted.
    bad_nonce: bool,
}

impl From<String> for Failure {
    fn from(error: String) -> Failure {
        Failure {
            error,
            bad_nonce: false,
        }
    }
}

impl From<&str> for Failure {
    fn from(error: &str) -> Failure {
        Failure::from(error.to_owned())
    }
}

/// A failed call to the CA during `what`.
fn api(what: &'static str) -> impl Fn(instant_acme::Error) -> Failure {
    move |e| Failure {
        bad_nonce: matches!(&e, instant_acme::Error::Api(p)
            if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:badNonce")),
        error: format!("{what}: {e}"),
    }
}

/// The router's ACME client and what it holds.
pub struct Acme {
    settings: Settings,
    dir: PathBuf,
    /// HTTP-01 tokens and their key authorizations.
    challenges: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01 certificates, by domain, while their order is in flight.
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    certs: ArcSwap<HashMap<String, Issued>>,
    failing: Mutex<HashMap<String, Failing>>,
    in_flight: Mutex<HashSet<String>>,
    /// When each order of the window was placed.
    placed: Mutex<Vec<Instant>>,
    /// Told when an order ends (room for the next).
    ended: tokio::sync::Notify,
    /// The account, once loaded or made (forgotten when the CA no longer
    /// knows it).
    account: tokio::sync::Mutex<Option<Account>>,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("directory", &self.settings.directory)
            .field("certs", &self.certs.load().len())
            .finish()
    }
}

/// Seconds since the epoch.
fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Writes `bytes` to `path` atomically, 0600.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    model::atomic::replace(path, bytes, 0o600)
}

fn cert_file(dir: &Path, domain: &str) -> PathBuf {
    dir.join("certs").join(format!("{domain}.pem"))
}

/// A certificate file's chain and key as the router serves them.
fn load_issued(domain: &str, pem: &str) -> Option<Issued> {
    let key = crate::verify::load_cert(pem, pem, domain).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(key.cert.first()?).ok()?;
    Some(Issued {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        key,
    })
}

impl Acme {
    /// The client, with the certificates already in `<state_dir>/acme/certs`.
    pub fn load(settings: Settings, state_dir: &Path) -> std::io::Result<Acme> {
        let dir = state_dir.join("acme");
        std::fs::create_dir_all(dir.join("certs"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let mut certs = HashMap::new();
        for entry in std::fs::read_dir(dir.join("certs"))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(domain) = name.strip_suffix(".pem") else {
                continue;
            };
            match std::fs::read_to_string(entry.path())
                .ok()
                .and_then(|pem| load_issued(domain, &pem))
            {
                Some(issued) => {
                    certs.insert(domain.to_owned(), issued);
                }
                None => {
                    tracing::warn!(file = %entry.path().display(), "acme: unusable certificate file, ignored")
                }
            }
        }
        tracing::info!(certificates = certs.len(), directory = %settings.directory, "acme: certificates loaded");
        Ok(Acme {
            settings,
            dir,
            challenges: Mutex::new(HashMap::new()),
            alpn: Mutex::new(HashMap::new()),
            certs: ArcSwap::from_pointee(certs),
            failing: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashSet::new()),
            placed: Mutex::new(Vec::new()),
            ended: tokio::sync::Notify::new(),
            account: tokio::sync::Mutex::new(None),
        })
    }

    /// The certificate issued for `name`, if any.
    pub fn cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.certs.load().get(name).map(|i| i.key.clone())
    }

    /// The certificate issued for `name`, with its dates.
    pub fn issued(&self, name: &str) -> Option<Issued> {
        self.certs.load().get(name).cloned()
    }

    /// The key authorization of an HTTP-01 token the CA asks for.
    pub fn challenge(&self, token: &str) -> Option<String> {
        lock(&self.challenges).get(token).cloned()
    }

    /// Whether the CA may check domains over TLS-ALPN-01.
    pub fn tls_alpn(&self) -> bool {
        self.settings.challenges.contains(&Challenge::TlsAlpn01)
    }

    /// The TLS-ALPN-01 certificate of a domain whose order is in flight.
    pub fn alpn_cert(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        lock(&self.alpn).get(domain).cloned()
    }

    /// The last error of a domain that is failing.
    pub fn error(&self, domain: &str) -> Option<String> {
        lock(&self.failing).get(domain).map(|f| f.error.clone())
    }

    /// The domains routed without a certificate of their site's that need
    /// an order now (no certificate, or one in its last third, 30 days at
    /// most before its end), not in flight nor backing off: at most as many
    /// as may start. One look at the routes, the certificates and the
    /// failures for all of them.
    fn due(&self, routes: &crate::routes::Routes, now: Instant) -> Vec<String> {
        let certs = self.certs.load();
        let failing = lock(&self.failing);
        let in_flight = lock(&self.in_flight);
        let room = CONCURRENT.saturating_sub(in_flight.len());
        let secs = now_secs();
        let mut due = Vec::new();
        routes.each_uncertified(|domain, _| {
            let wanted = !in_flight.contains(domain)
                && failing.get(domain).is_none_or(|f| now >= f.next)
                && certs
                    .get(domain)
                    .is_none_or(|i| secs >= renew_at(domain, i));
            if wanted && due.len() < room {
                due.push(domain.to_owned());
            }
        });
        due
    }

    /// Spends one order of the window's budget, if there is one left.
    fn budget(&self, now: Instant) -> bool {
        let mut placed = lock(&self.placed);
        placed.retain(|t| now.saturating_duration_since(*t) < WINDOW);
        if placed.len() >= self.settings.max_orders {
            return false;
        }
        placed.push(now);
        true
    }

    /// Looks at the routes every second and orders what is due, until the
    /// router ends.
    pub async fn run(self: Arc<Self>, routes: Arc<crate::routes::Routes>) {
        let mut told_budget = false;
        loop {
            // Every second, or at once when an order ends and leaves room.
            let _ = tokio::time::timeout(TICK, self.ended.notified()).await;
            let now = Instant::now();
            for domain in self.due(&routes, now) {
                if !self.budget(now) {
                    if !told_budget {
                        tracing::warn!(
                            max = self.settings.max_orders,
                            "acme: the window's orders are spent: waiting for the window"
                        );
                        told_budget = true;
                    }
                    break;
                }
                told_budget = false;
                lock(&self.in_flight).insert(domain.clone());
                let me = self.clone();
                tokio::spawn(async move {
                    let got = me.issue(&domain).await;
                    match got {
                        Ok(issued) => {
                            tracing::info!(%domain, not_after = issued.not_after, "acme: certificate issued");
                            lock(&me.failing).remove(&domain);
                            let mut certs = (**me.certs.load()).clone();
                            certs.insert(domain.clone(), issued);
                            me.certs.store(Arc::new(certs));
                        }
                        Err(Failure { error, bad_nonce }) => {
                            let mut failing = lock(&me.failing);
                            let f = failing.entry(domain.clone()).or_insert(Failing {
                                failures: 0,
                                next: Instant::now(),
                                error: String::new(),
                            });
                            let wait = if bad_nonce {
                                BAD_NONCE_RETRY
                            } else {
                                f.failures += 1;
                                Duration::from_secs(60 * u64::from(f.failures).pow(2))
                                    .min(MAX_BACKOFF)
                            };
                            f.next = Instant::now() + wait;
                            f.error = error.clone();
                            tracing::warn!(%domain, %error, failures = f.failures, retry_in = ?wait, "acme: no certificate");
                        }
                    }
                    lock(&me.in_flight).remove(&domain);
                    me.ended.notify_one();
                });
            }
        }
    }

    /// The account: the one in memory, else the stored one, else a new one
    /// (stored, 0600).
    async fn account(&self) -> Result<Account, String> {
        let mut held = self.account.lock().await;
        if let Some(a) = held.as_ref() {
            return Ok(a.clone());
        }
        let builder = match &self.settings.ca {
            Some(ca) => Account::builder_with_root(ca),
            None => Account::builder(),
        }
        .map_err(|e| format!("the ACME client: {e}"))?;
        let file = self.dir.join("account.json");
        let stored = std::fs::read(&file)
            .ok()
            .and_then(|t| serde_json::from_slice::<AccountCredentials>(&t).ok());
        let account = match stored {
            Some(creds) => builder
                .from_credentials(creds)
                .await
                .map_err(|e| format!("the stored ACME account: {e}"))?,
            None => {
                let contact = self.settings.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let eab = self
                    .settings
                    .eab
                    .as_ref()
                    .map(|(kid, key)| ExternalAccountKey::new(kid.clone(), key));
                let (account, creds) = builder
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.settings.directory.clone(),
                        eab.as_ref(),
                    )
                    .await
                    .map_err(|e| format!("creating the ACME account: {e}"))?;
                let text = serde_json::to_vec(&creds).unwrap_or_default();
                write_private(&file, &text).map_err(|e| format!("{}: {e}", file.display()))?;
                tracing::info!(id = account.id(), "acme: account created");
                account
            }
        };
        *held = Some(account.clone());
        Ok(account)
    }

    /// A new order for `domain`; when the CA no longer knows the stored
    /// account (a CA reset, an account deactivated), a new account is made
    /// and the order placed again once.
    async fn order(&self, domain: &str) -> Result<instant_acme::Order, String> {
        let ids = [Identifier::Dns(domain.to_owned())];
        for first in [true, false] {
            let account = self.account().await?;
            match account.new_order(&NewOrder::new(&ids)).await {
                Ok(order) => return Ok(order),
                Err(instant_acme::Error::Api(p))
                    if first
                        && p.r#type.as_deref()
                            == Some("urn:ietf:params:acme:error:accountDoesNotExist") =>
                {
                    tracing::warn!(
                        "acme: the CA no longer knows the stored account; making a new one"
                    );
                    *self.account.lock().await = None;
                    let _ = std::fs::remove_file(self.dir.join("account.json"));
                }
                Err(e) => return Err(format!("new order: {e}")),
            }
        }
        Err("new order: the CA refused the new account too".into())
    }

    /// One order for `domain`, by the first challenge allowed and offered, to
    /// its certificate (stored).
    async fn issue(&self, domain: &str) -> Result<Issued, Failure> {
        // It names a file: a plain host name only (the dominion's names are).
        if domain.starts_with('.')
            || !domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(format!("{domain:?} is not a plain host name").into());
        }
        let mut order = self.order(domain).await?;
        let mut tokens = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(api("authorization"))?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                s => return Err(format!("authorization is {s:?}").into()),
            }
            let offered = |c: &&Challenge| authz.challenges.iter().any(|o| o.r#type == c.kind());
            let Some(&kind) = self.settings.challenges.iter().find(offered) else {
                return Err("the CA offers none of the challenges the router answers".into());
            };
            let mut challenge = authz
                .challenge(kind.kind())
                .ok_or("the CA took back its challenge")?;
            let key_auth = challenge.key_authorization();
            match kind {
                Challenge::Http01 => {
                    let token = challenge.token.clone();
                    lock(&self.challenges).insert(token.clone(), key_auth.as_str().to_owned());
                    tokens.push(token);
                }
                Challenge::TlsAlpn01 => {
                    let cert = alpn_certificate(domain, key_auth.digest().as_ref())?;
                    lock(&self.alpn).insert(domain.to_owned(), cert);
                }
            }
            challenge.set_ready().await.map_err(api("challenge"))?;
            tracing::info!(%domain, challenge = kind.name(), "acme: challenge ready");
        }
        let retry = RetryPolicy::default().timeout(Duration::from_secs(60));
        let status = order.poll_ready(&retry).await;
        for t in &tokens {
            lock(&self.challenges).remove(t);
        }
        lock(&self.alpn).remove(domain);
        match status.map_err(api("order"))? {
            OrderStatus::Ready => {}
            s => return Err(format!("the order is {s:?} (the challenge failed)").into()),
        }
        let key_pem = order.finalize().await.map_err(api("finalize"))?;
        let chain_pem = order
            .poll_certificate(&retry)
            .await
            .map_err(api("certificate"))?;
        let pem = format!("{chain_pem}\n{key_pem}");
        let issued = load_issued(domain, &pem).ok_or("the CA's certificate does not load")?;
        let file = cert_file(&self.dir, domain);
        write_private(&file, pem.as_bytes()).map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(issued)
    }
}

/// The self-signed certificate of TLS-ALPN-01 for `domain`: its name, and
/// the SHA-256 of the key authorization in the critical acmeIdentifier
/// extension (RFC 8737, 3).
fn alpn_certificate(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let fail = |e: &dyn std::fmt::Display| format!("the tls-alpn-01 certificate: {e}");
    let mut params =
        rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(|e| fail(&e))?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let key = rcgen::KeyPair::generate().map_err(|e| fail(&e))?;
    let cert = params.self_signed(&key).map_err(|e| fail(&e))?;
    // Not through `verify::load_cert` nor `CertifiedKey::from_der`: webpki
    // rightly refuses an unknown critical extension, and this certificate is
    // for the CA's eyes only.
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let provider = rustls::crypto::ring::default_provider();
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| fail(&e))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// When a certificate is renewed (seconds since the epoch): once it enters
/// the last third of its life (30 days before its end at most), later by a
/// jitter of up to a tenth of that window that is the domain's own, so that
/// certificates got together are not all renewed in the same second.
fn renew_at(domain: &str, i: &Issued) -> i64 {
    use std::hash::{Hash, Hasher};
    let window = ((i.not_after - i.not_before).max(0) / 3).min(30 * 86400);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    domain.hash(&mut h);
    let jitter = (h.finish() % (window as u64 / 10 + 1)) as i64;
    i.not_after - window + jitter
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_nonce_is_the_cas_hiccup_and_other_problems_are_failures() {
        let problem = |t: &str| {
            instant_acme::Error::Api(
                serde_json::from_str(&format!(
                    r#"{{"type": "urn:ietf:params:acme:error:{t}", "detail": "d", "status": 400}}"#
                ))
                .unwrap(),
            )
        };
        let nonce = api("authorization")(problem("badNonce"));
        assert!(nonce.bad_nonce);
        assert!(
            nonce.error.starts_with("authorization: API error: d"),
            "{}",
            nonce.error
        );
        assert!(!api("order")(problem("unauthorized")).bad_nonce);
        assert!(!Failure::from("the CA took back its challenge").bad_nonce);
    }

    #[test]
    fn renewal_starts_in_the_last_third_spread_by_domain() {
        let key = alpn_certificate("x.test", &[0; 32]).unwrap();
        let day = 86400;
        for (life, window) in [
            (90 * day, 30 * day),
            (12 * day, 4 * day),
            (365 * day, 30 * day),
        ] {
            let i = Issued {
                key: key.clone(),
                not_before: 1_000_000,
                not_after: 1_000_000 + life,
            };
            let at: Vec<i64> = (0..200)
                .map(|n| renew_at(&format!("d{n}.test"), &i))
                .collect();
            for t in &at {
                assert!(
                    (i.not_after - window..=i.not_after - window + window / 10).contains(t),
                    "{life}: {t}"
                );
            }
            let distinct: HashSet<&i64> = at.iter().collect();
            assert!(distinct.len() > 150, "{life}: {} distinct", distinct.len());
            // The same domain, the same moment.
            assert_eq!(renew_at("d1.test", &i), at[1]);
        }
    }

    #[test]
    fn the_tls_alpn_certificate_carries_the_digest_in_a_critical_extension() {
        let digest = [7u8; 32];
        let key = alpn_certificate("shop.test", &digest).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&key.cert[0]).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        // An OCTET STRING of the 32 bytes.
        assert_eq!(ext.value, [&[0x04, 32][..], &digest].concat());
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", san.value.general_names),
            r#"[DNSName("shop.test")]"#
        );
    }
}
