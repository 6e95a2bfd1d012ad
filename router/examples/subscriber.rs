//! A load tool for the router benchmark (bench/router.py): signs and sends
//! subscriptions for a site, like a vassal would, and times them.
//!
//! `subscriber SOCKET SITE KEYFILE - pubkey` prints the site's public key;
//! `subscriber SOCKET SITE KEYFILE BACKEND one DOMAIN` subscribes one domain
//! with a fresh certificate;
//! `subscriber SOCKET SITE KEYFILE BACKEND many N`   subscribes N domains
//! `d<i>.bench.test`, each with its own certificate, and prints the time taken.
//! `subscriber SOCKET SITE KEYFILE BACKEND bare N`   subscribes N domains
//! `a<i>.bench.test` with no certificate (for ACME to get one each).
//! `subscriber SOCKET SITE KEYFILE BACKEND latency HTTP_ADDR RUNS`   subscribes a
//! fresh domain and sends requests with its Host until one is routed; prints
//! the median and p95 of subscription-sent to first-routed, in ms.
//! `subscriber SOCKET SITE KEYFILE BACKEND backends DOMAIN FROM TO WEIGHT`
//! subscribes DOMAIN to the backends FROM..TO, of WEIGHT each, named by BACKEND
//! with `{}` replaced by the number (`b{}.sock`).
//! `subscriber SOCKET SITE KEYFILE BACKEND flood DOMAIN SECONDS`   sends signed
//! subscriptions as fast as it can; prints how many were taken and refused.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use model::subscription::{Action, Signed, Subscription};

fn post(socket: &str, body: &[u8]) -> String {
    try_post(socket, body).expect("router socket")
}

/// One request on a new connection; an error when the router refuses the connection (over a cap).
fn try_post(socket: &str, body: &[u8]) -> std::io::Result<String> {
    let mut s = UnixStream::connect(socket)?;
    write!(
        s,
        "POST /subscribe HTTP/1.1\r\nHost: r\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut t = String::new();
    s.read_to_string(&mut t)?;
    Ok(t)
}

fn status(addr: &str, host: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut t = String::new();
    let _ = s.read_to_string(&mut t);
    t.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (socket, site, keyfile, backend, mode) = (&a[1], &a[2], &a[3], &a[4], &a[5]);
    let b64 = base64::engine::general_purpose::STANDARD;
    let seed: [u8; 32] = b64
        .decode(std::fs::read_to_string(keyfile).unwrap().trim())
        .unwrap()
        .try_into()
        .unwrap();
    let key = SigningKey::from_bytes(&seed);
    let mut counter = 0u64;
    let mut sign_to = |domain: &str, cert: Option<(String, String)>, backend: &str, weight: u32| {
        counter += 1;
        let sub = Subscription {
            action: Action::Subscribe,
            site: site.clone(),
            domain: domain.to_owned(),
            backend: backend.to_owned(),
            weight,
            cert: cert.as_ref().map(|c| c.0.clone()),
            key: cert.map(|c| c.1),
            redirect: false,
            timestamp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            nonce: format!("{:016x}{:016x}", std::process::id(), counter),
        };
        let payload = serde_json::to_string(&sub).unwrap();
        let signature = b64.encode(key.sign(payload.as_bytes()).to_bytes());
        serde_json::to_vec(&Signed { payload, signature }).unwrap()
    };
    let mut sign = |domain: &str, cert: Option<(String, String)>| sign_to(domain, cert, backend, 1);
    match mode.as_str() {
        "pubkey" => println!("{}", b64.encode(key.verifying_key().to_bytes())),
        "one" => {
            let domain = &a[6];
            let c = rcgen::generate_simple_self_signed(vec![domain.clone()]).unwrap();
            let answer = post(
                socket,
                &sign(domain, Some((c.cert.pem(), c.key_pair.serialize_pem()))),
            );
            assert!(answer.contains("\"ok\":true"), "{answer}");
        }
        "many" => {
            // Certificates and signatures first, so that the time measured is the router's.
            let n: usize = a[6].parse().unwrap();
            let t = Instant::now();
            let bodies: Vec<Vec<u8>> = (0..n)
                .map(|i| {
                    let domain = format!("d{i}.bench.test");
                    let c = rcgen::generate_simple_self_signed(vec![domain.clone()]).unwrap();
                    sign(&domain, Some((c.cert.pem(), c.key_pair.serialize_pem())))
                })
                .collect();
            let made = t.elapsed().as_secs_f64();
            let t = Instant::now();
            for body in &bodies {
                let answer = post(socket, body);
                assert!(answer.contains("\"ok\":true"), "{answer}");
            }
            println!(
                "{{\"domains\": {n}, \"prepare_seconds\": {made:.3}, \"seconds\": {:.3}}}",
                t.elapsed().as_secs_f64()
            );
        }
        "bare" => {
            let n: usize = a[6].parse().unwrap();
            for i in 0..n {
                let answer = post(socket, &sign(&format!("a{i}.bench.test"), None));
                assert!(answer.contains("\"ok\":true"), "{answer}");
            }
        }
        "latency" => {
            let (addr, runs): (&str, usize) = (&a[6], a[7].parse().unwrap());
            let mut lat = Vec::new();
            for i in 0..runs {
                let domain = format!("fresh{i}-{}.bench.test", std::process::id());
                let t = Instant::now();
                let answer = post(socket, &sign(&domain, None));
                assert!(answer.contains("\"ok\":true"), "{answer}");
                while status(addr, &domain) != 200 {}
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat.sort_by(|x, y| x.partial_cmp(y).unwrap());
            println!(
                "{{\"runs\": {runs}, \"median_ms\": {:.3}, \"p95_ms\": {:.3}}}",
                lat[lat.len() / 2],
                lat[lat.len() * 95 / 100]
            );
        }
        "backends" => {
            let (domain, from, to, weight): (&str, usize, usize, u32) = (
                &a[6],
                a[7].parse().unwrap(),
                a[8].parse().unwrap(),
                a[9].parse().unwrap(),
            );
            for i in from..to {
                let name = backend.replace("{}", &i.to_string());
                let answer = post(socket, &sign_to(domain, None, &name, weight));
                assert!(answer.contains("\"ok\":true"), "{answer}");
            }
        }
        "flood" => {
            let (domain, secs): (&str, f64) = (&a[6], a[7].parse().unwrap());
            let t = Instant::now();
            let (mut taken, mut refused, mut shut) = (0u64, 0u64, 0u64);
            while t.elapsed().as_secs_f64() < secs {
                match try_post(socket, &sign(domain, None)) {
                    Ok(a) if a.contains("\"ok\":true") => taken += 1,
                    Ok(_) => refused += 1,
                    Err(_) => shut += 1,
                }
            }
            println!(
                "{{\"taken\": {taken}, \"refused\": {refused}, \"connections_refused\": {shut}}}"
            );
        }
        other => panic!("unknown mode {other}"),
    }
}
