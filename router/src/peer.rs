//! The routers of a cluster pass each other the clients of the domains
//! served on another host.
//!
//! Each host's emperor writes `<run-dir>/router/peers.json`: the domains the
//! other hosts serve and where their routers' peer listeners are. A client
//! connection whose first request (plain HTTP: its `Host`) or TLS
//! ClientHello (its SNI) names such a domain is passed whole to that host's
//! router: over TLS with both sides' certificates from the cluster's CA,
//! behind a PROXY protocol v2 header that says who the client is, then the
//! client's own bytes. A client's TLS is never ended here: the certificate
//! stays on the host that serves the domain. The receiving router serves
//! what comes in on its peer listener as from its own public listeners, and
//! never passes it on again.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The protocol the routers speak to each other, by ALPN.
pub const ALPN: &[u8] = b"imperium-peer/1";

/// How long a connection to another host's router may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The most read of a client's first bytes to learn its domain: a request
/// head (as [`crate::MAX_HEADERS`]) or a ClientHello.
pub const MAX_FIRST: usize = crate::MAX_HEADERS;

/// The PROXY v2 header's fixed part, and the most its addresses and TLVs
/// may take here (IPv6 addresses take 36 bytes).
const PROXY_FIXED: usize = 16;
const PROXY_MAX_REST: usize = 512;

/// `router serve --peer ADDR --peer-ca --peer-cert --peer-key`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The peer listener.
    pub listen: SocketAddr,
    /// The cluster's CA (PEM): it signed every host router's certificate.
    pub ca: std::path::PathBuf,
    /// This host's router certificate (PEM; its name is the host's name).
    pub cert: std::path::PathBuf,
    /// Its key (PEM).
    pub key: std::path::PathBuf,
}

/// The TLS of both sides of the routers' link.
#[derive(Clone)]
pub struct Peering {
    /// Takes other routers' connections: their certificate required.
    pub acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl std::fmt::Debug for Peering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Peering")
    }
}

fn read_pem(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(1 << 20).read_to_end(&mut bytes))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(bytes)
}

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = read_pem(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate", path.display());
    }
    Ok(certs)
}

impl Peering {
    /// Both sides' TLS from the settings' files.
    pub fn load(s: &Settings) -> anyhow::Result<Peering> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&s.ca)? {
            roots.add(c)?;
        }
        let roots = Arc::new(roots);
        let chain = certs(&s.cert)?;
        let key_pem = read_pem(&s.key)?;
        let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|e| anyhow::anyhow!("{}: {e}", s.key.display()))?
            .ok_or_else(|| anyhow::anyhow!("{}: no private key", s.key.display()))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Peering {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// A link to `host`'s router at `addr` (its certificate must name the
    /// host), with the PROXY header saying `client` reached `local`.
    pub async fn connect(
        &self,
        host: &str,
        addr: SocketAddr,
        client: SocketAddr,
        local: SocketAddr,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| io::Error::other(format!("{host:?} is not a certificate name")))?;
        let link = async {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            let mut tls = self.connector.connect(name, tcp).await?;
            tls.write_all(&proxy_header(client, local)?).await?;
            Ok(tls)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, link)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out"))?
    }
}

/// The PROXY v2 header of a TCP connection from `client` to `local`.
fn proxy_header(client: SocketAddr, local: SocketAddr) -> io::Result<Vec<u8>> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    // Both of one family, as the header wants them.
    let local = match (client, local) {
        (SocketAddr::V6(_), SocketAddr::V4(l)) => {
            SocketAddr::new(l.ip().to_ipv6_mapped().into(), l.port())
        }
        (SocketAddr::V4(_), SocketAddr::V6(l)) => match l.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::new(ip.into(), l.port()),
            None => SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), l.port()),
        },
        _ => local,
    };
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (client, local),
    )
    .build()
}

/// Reads the PROXY v2 header another router sent first: the client it
/// passes on. Anything else (another version, a LOCAL command, no address
/// of a TCP client, a header past 528 bytes) is refused.
pub async fn read_proxy<T: tokio::io::AsyncRead + Unpin>(io: &mut T) -> io::Result<SocketAddr> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
    let mut head = vec![0u8; PROXY_FIXED];
    io.read_exact(&mut head).await?;
    let rest = u16::from_be_bytes([head[14], head[15]]) as usize;
    if rest > PROXY_MAX_REST {
        return Err(bad("a PROXY header too long"));
    }
    head.resize(PROXY_FIXED + rest, 0);
    io.read_exact(&mut head[PROXY_FIXED..]).await?;
    let header = ppp::v2::Header::try_from(head.as_slice()).map_err(|e| bad(&e.to_string()))?;
    if header.command != ppp::v2::Command::Proxy {
        return Err(bad("a PROXY header without a client"));
    }
    match header.addresses {
        ppp::v2::Addresses::IPv4(a) => Ok(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::IPv6(a) => Ok(SocketAddr::from((a.source_address, a.source_port))),
        _ => Err(bad("a PROXY header without a TCP client")),
    }
}

/// Reads a client's first bytes into `buf` until they name the domain
/// asked for: a request head's `Host` (plain HTTP) or a ClientHello's SNI
/// (TLS). `None` when they do not (no name, not HTTP or TLS, past
/// [`MAX_FIRST`], or the client closed); the bytes read stay in `buf`.
pub async fn first_name<T: tokio::io::AsyncRead + Unpin>(
    io: &mut T,
    buf: &mut BytesMut,
    tls: bool,
) -> Option<String> {
    let mut hello = tls.then(rustls::server::Acceptor::default);
    let mut fed = 0;
    loop {
        if buf.len() >= MAX_FIRST {
            return None;
        }
        buf.reserve(4096);
        if io.read_buf(buf).await.ok()? == 0 {
            return None;
        }
        match &mut hello {
            Some(acceptor) => {
                while fed < buf.len() {
                    fed += acceptor.read_tls(&mut &buf[fed..]).ok()?;
                }
                match acceptor.accept() {
                    Ok(Some(accepted)) => {
                        let name = accepted.client_hello().server_name()?.to_owned();
                        return Some(crate::proxy::normal_host(&name));
                    }
                    Ok(None) => continue,
                    Err(_) => return None,
                }
            }
            None => {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(buf) {
                    Ok(httparse::Status::Complete(_)) => {
                        let mut hosts = req
                            .headers
                            .iter()
                            .filter(|h| h.name.eq_ignore_ascii_case("host"));
                        let host = std::str::from_utf8(hosts.next()?.value).ok()?;
                        if hosts.next().is_some() {
                            return None;
                        }
                        return Some(crate::proxy::normal_host(host));
                    }
                    Ok(httparse::Status::Partial) => continue,
                    Err(_) => return None,
                }
            }
        }
    }
}

/// Copies both ways between a client and another host's router, starting
/// with the client's bytes already read, until the other router is done:
/// it keeps every timeout of the connection (headers, idle, body), and a
/// client that stops reading and writing is let go when it closes, not
/// held here.
pub async fn splice<C, U>(client: C, first: &[u8], mut up: U)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if up.write_all(first).await.is_err() {
        return;
    }
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let (mut from_up, mut to_up) = tokio::io::split(up);
    let upward = async {
        let _ = tokio::io::copy(&mut from_client, &mut to_up).await;
        // The client is done sending: the other router hears it, answers
        // what it has, and closes.
        let _ = to_up.shutdown().await;
        std::future::pending::<()>().await
    };
    let downward = async {
        let _ = tokio::io::copy(&mut from_up, &mut to_client).await;
        let _ = to_client.shutdown().await;
    };
    tokio::select! {
        _ = upward => {}
        _ = downward => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and two hosts' certificates from it, in `dir`.
    fn pki(dir: &Path) -> (Settings, Settings) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let host = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec![name.to_owned()])
                .unwrap()
                .signed_by(&key, &ca, &ca_key)
                .unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
            Settings {
                listen: "127.0.0.1:0".parse().unwrap(),
                ca: dir.join("ca.pem"),
                cert: dir.join(format!("{name}.pem")),
                key: dir.join(format!("{name}.key")),
            }
        };
        (host("a"), host("b"))
    }

    #[tokio::test]
    async fn a_link_names_the_client_and_later_links_resume_their_tls() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = pki(dir.path());
        let (a, b) = (Peering::load(&a).unwrap(), Peering::load(&b).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut kinds = Vec::new();
            for _ in 0..3 {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut link = b.acceptor.accept(tcp).await.unwrap();
                let client = read_proxy(&mut link).await.unwrap();
                kinds.push((client, link.get_ref().1.handshake_kind()));
            }
            // A fourth, asked for as another host: refused by the client.
            let (tcp, _) = listener.accept().await.unwrap();
            assert!(b.acceptor.accept(tcp).await.is_err());
            kinds
        });
        let client: SocketAddr = "203.0.113.9:4242".parse().unwrap();
        for _ in 0..3 {
            let mut link = a.connect("b", at, client, at).await.unwrap();
            link.flush().await.unwrap();
            // Read until the server closes: its tickets arrive meanwhile.
            let mut rest = Vec::new();
            let _ = link.read_to_end(&mut rest).await;
        }
        // A host's certificate must name the host it is asked for.
        assert!(a.connect("c", at, client, at).await.is_err());
        let kinds = server.await.unwrap();
        assert!(kinds.iter().all(|(c, _)| *c == client), "{kinds:?}");
        assert_eq!(
            kinds.iter().map(|(_, k)| *k).collect::<Vec<_>>(),
            [
                Some(rustls::HandshakeKind::Full),
                Some(rustls::HandshakeKind::Resumed),
                Some(rustls::HandshakeKind::Resumed)
            ]
        );
    }

    #[tokio::test]
    async fn a_proxy_header_says_who_the_client_is_and_a_bad_one_is_refused() {
        for (client, local) in [
            ("203.0.113.7:5555", "192.0.2.1:443"),
            ("[2001:db8::7]:5555", "192.0.2.1:80"),
        ] {
            let (client, local): (SocketAddr, SocketAddr) =
                (client.parse().unwrap(), local.parse().unwrap());
            let mut bytes = proxy_header(client, local).unwrap();
            bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let mut r = bytes.as_slice();
            assert_eq!(read_proxy(&mut r).await.unwrap(), client);
            assert_eq!(r, b"GET / HTTP/1.1\r\n", "nothing read past the header");
        }
        let mut plain: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(read_proxy(&mut plain).await.is_err());
        let mut long = proxy_header(
            "203.0.113.7:1".parse().unwrap(),
            "192.0.2.1:2".parse().unwrap(),
        )
        .unwrap();
        long[14..16].copy_from_slice(&4000u16.to_be_bytes());
        long.resize(5000, 0);
        assert!(read_proxy(&mut long.as_slice()).await.is_err());
    }

    #[tokio::test]
    async fn the_first_bytes_name_the_domain_by_host_or_by_sni() {
        let mut buf = BytesMut::new();
        let mut req: &[u8] =
            b"GET / HTTP/1.1\r\nHost: Shop.Example:8080\r\nAccept: */*\r\n\r\nrest";
        assert_eq!(
            first_name(&mut req, &mut buf, false).await.as_deref(),
            Some("shop.example")
        );
        assert!(buf.ends_with(b"rest"), "every byte read is kept");
        let mut two: &[u8] = b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n";
        assert_eq!(
            first_name(&mut two, &mut BytesMut::new(), false).await,
            None
        );
        let mut junk: &[u8] = b"\x00\x01 not http\r\n\r\n";
        assert_eq!(
            first_name(&mut junk, &mut BytesMut::new(), false).await,
            None
        );

        // A real ClientHello, from rustls's client.
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            Arc::new(config),
            ServerName::try_from("www.shop.example").unwrap(),
        )
        .unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        // Given a few bytes at a time, as a slow client would.
        let (a, b) = hello.split_at(7);
        let mut stream = a.chain(b);
        let mut buf = BytesMut::new();
        assert_eq!(
            first_name(&mut stream, &mut buf, true).await.as_deref(),
            Some("www.shop.example")
        );
        assert_eq!(&buf[..], &hello[..], "the ClientHello is kept to pass on");
    }
}
