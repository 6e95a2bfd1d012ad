//! The cluster's uid claims against a real etcd (Debian's, one member on
//! 127.0.0.1, no root): hosts claiming at the same time never get the same
//! uid, and a host's own uids join the cluster's table or are refused.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use emperor::cluster::{claim_uid, claim_uids};
use etcd_client::Client;

/// One etcd member on free loopback ports, killed and removed on drop.
struct Etcd {
    _dir: tempfile::TempDir,
    child: Child,
    url: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Etcd {
    fn start() -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .arg("--unsafe-no-fsync")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian's etcd-server)");
        Etcd {
            _dir: dir,
            child,
            url,
        }
    }

    async fn client(&self) -> Client {
        // 20 s at most.
        for _ in 0..400 {
            if let Ok(mut c) = Client::connect([&self.url], None).await {
                if c.get("/", None).await.is_ok() {
                    return c;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("etcd did not answer within 20 s");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_claiming_at_once_never_share_a_uid_and_a_login_keeps_its_own() {
    let etcd = Etcd::start();
    let prefix = "/imperium/";
    // Four "hosts", each with its own connection, claim 25 logins each at
    // the same time, then all of them again.
    let mut tasks = Vec::new();
    for h in 0..4 {
        let mut c = etcd.client().await;
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for round in 0..2 {
                for i in 0..25 {
                    // Round 1 asks for every host's logins: the same answers.
                    let owner = if round == 0 { h } else { (h + 1) % 4 };
                    let login = format!("t{owner}-{i}").parse().unwrap();
                    let uid = claim_uid(&mut c, prefix, &login, None).await.unwrap();
                    got.push((login, uid.unwrap()));
                }
            }
            got
        }));
    }
    let mut by_login = std::collections::BTreeMap::new();
    for t in tasks {
        for (login, uid) in t.await.unwrap() {
            let before = by_login.insert(login.clone(), uid);
            assert!(before.is_none() || before == Some(uid), "{login}: two uids");
        }
    }
    assert_eq!(by_login.len(), 100);
    let uids: std::collections::BTreeSet<u32> = by_login.values().copied().collect();
    assert_eq!(uids.len(), 100, "a uid given twice");
    assert_eq!(uids.first(), Some(&30000));
    let mut c = etcd.client().await;
    let next = c.get("/imperium/uids/next", None).await.unwrap();
    assert_eq!(next.kvs()[0].value(), b"30100");

    // Batches, four hosts at once (each batch one transaction, or one by
    // one when another host moved `next` first): 4 x 120 more, all new.
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(4));
    let mut tasks = Vec::new();
    for h in 0..4 {
        let mut c = etcd.client().await;
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut got = Vec::new();
            for round in 0..3 {
                let logins: Vec<_> = (0..40)
                    .map(|i| format!("b{h}-{round}-{i}").parse().unwrap())
                    .collect();
                got.extend(claim_uids(&mut c, prefix, &logins).await.unwrap());
            }
            got
        }));
    }
    let mut batch = std::collections::BTreeSet::new();
    for t in tasks {
        for (login, uid) in t.await.unwrap() {
            let uid = uid.unwrap();
            assert!(
                !uids.contains(&uid) && batch.insert(uid),
                "{login}: uid {uid} given twice"
            );
        }
    }
    assert_eq!(batch.len(), 480);
    let next = c.get("/imperium/uids/next", None).await.unwrap();
    assert_eq!(next.kvs()[0].value(), b"30580");

    // A joining host's own uid is taken if free, and next moves past it.
    let joiner = "joiner".parse().unwrap();
    assert_eq!(
        claim_uid(&mut c, prefix, &joiner, Some(40000))
            .await
            .unwrap(),
        Ok(40000)
    );
    let next = c.get("/imperium/uids/next", None).await.unwrap();
    assert_eq!(next.kvs()[0].value(), b"40001");
    // A login the cluster knows under another uid, or a uid it gave to
    // another login: refused with the reason.
    let clash = "t0-0".parse().unwrap();
    let why = claim_uid(&mut c, prefix, &clash, Some(40000))
        .await
        .unwrap()
        .unwrap_err();
    assert!(why.contains("on this host and"), "{why}");
    let other = "other".parse().unwrap();
    let why = claim_uid(&mut c, prefix, &other, Some(30005))
        .await
        .unwrap()
        .unwrap_err();
    assert!(why.contains("which the cluster gave to"), "{why}");
}
