//! Cluster mode (`serve --etcd URLS --host NAME`): the vassal files of every
//! host live in etcd, and this host keeps a copy of those placed on it in its
//! admin directory, which the engine judges as it judges any directory.
//!
//! The agent lists the files at one revision (in pages), writes what
//! [`model::cluster::plan`] says, then watches from the next revision. A
//! broken connection is watched again from the last revision seen; a watch
//! cancelled because etcd compacted that revision away is listed again
//! (Kubernetes' rule). While etcd cannot be read the directory stays as it
//! is: the host keeps running what it has and changes nothing. The host's
//! `hosts/<name>/alive` key lives as long as its lease, renewed while the
//! emperor runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    Txn, TxnOp, WatchOptions,
};
use futures_util::FutureExt;
use model::cluster;
use model::journal::Journaled;
use model::uids::{UidTable, FIRST_UID, LAST_UID};
use model::Name;
use tokio::sync::{mpsc, oneshot};

use crate::manager::Event;

/// Pages of a full listing.
const PAGE: i64 = 500;
/// How long a call to etcd may take before the connection is given up.
const CALL: Duration = Duration::from_secs(5);
/// The host's lease: etcd forgets `alive` this long after the last renewal.
pub const LEASE_TTL: i64 = 15;
/// The longest wait between two attempts to reach etcd.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// `--etcd`, `--host` and the client's TLS files.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Client URLs of the members (`http://` or, with `tls`, `https://`).
    pub endpoints: Vec<String>,
    /// This host's name in the cluster.
    pub host: Name,
    /// The prefix every key lives under.
    pub prefix: String,
    /// The CA that signed the members' certificates, and this host's own
    /// certificate and key when the members ask clients for one.
    pub tls: Option<Tls>,
    /// Where the other hosts' routers reach this host's router (its peer
    /// listener), told to them through this host's `alive` key.
    pub router_peer: Option<std::net::SocketAddr>,
    /// The command that copies a moving site's home here (`{host}`,
    /// `{home}`, `{dest}` replaced), as argv.
    pub home_copy: Vec<String>,
}

/// The client's TLS files (PEM).
#[derive(Debug, Clone)]
pub struct Tls {
    /// The members' CA.
    pub ca: PathBuf,
    /// This host's client certificate and key.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// What the agent has done, for the metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connected, and the last call answered.
    pub connected: AtomicBool,
    /// The revision the directory matches.
    pub revision: AtomicI64,
    /// Full listings (one at start, one after each compaction cancelled the watch).
    pub lists: AtomicU64,
    /// Files the cluster places on this host.
    pub files: AtomicU64,
    /// Of them, those waiting for another host to let go of them.
    pub waiting: AtomicU64,
    /// Files of the cluster whose login or a domain an earlier file claims.
    pub conflicts: AtomicU64,
}

/// The cluster's files as of `revision`, as the last listing and the watch
/// since have told.
#[derive(Default)]
struct Known {
    files: cluster::Files,
    /// Which host owns each vassal.
    owners: BTreeMap<Name, Name>,
    /// The scheduler's choices.
    chosen: BTreeMap<Name, Name>,
    /// The hosts alive, and their memory.
    alive: BTreeMap<Name, u64>,
    /// The hosts alive, and where their router takes other hosts' clients.
    routers: BTreeMap<Name, Option<std::net::SocketAddr>>,
    /// What the router was last told of the other hosts.
    peers: Option<cluster::Peers>,
    /// Where each host alive keeps its homes.
    homes: BTreeMap<Name, PathBuf>,
    /// Sites moving between hosts, with the value read (a transaction
    /// moving one on holds only if it is still that).
    moves: BTreeMap<Name, (cluster::Move, Vec<u8>)>,
    /// This host's part of the moves (kept across listings).
    work: Work,
    /// The files in conflict at the last pass (each logged once).
    conflicts: BTreeSet<Name>,
    /// What this host holds and another owns, at the last pass (each
    /// logged once).
    clashes: BTreeSet<Name>,
    /// This host's copy (the admin directory's files), as the agent last
    /// read or wrote it: the directory is the agent's own in cluster mode.
    local: Option<BTreeMap<Name, String>>,
    revision: i64,
}

impl Known {
    /// Takes one key's new value (`None`: deleted; else with the revision
    /// that created the key); true if it matters here.
    fn take(&mut self, prefix: &str, key: &[u8], value: Option<(&[u8], i64)>) -> bool {
        if let Some(name) = cluster::vassal_name(prefix, key) {
            match value.and_then(|(v, created)| Some((file_text(&name, v)?, created))) {
                Some((text, created)) => self.files.insert(name, text, created),
                None => self.files.remove(&name),
            }
            return true;
        }
        let created = value.map(|(_, c)| c);
        let value = value.map(|(v, _)| v);
        if let Some(name) = cluster::placement_of(prefix, key) {
            match value.and_then(name_value) {
                Some(host) => self.chosen.insert(name, host),
                None => self.chosen.remove(&name),
            };
            return true;
        }
        if let Some(host) = cluster::alive_of(prefix, key) {
            match value {
                Some(v) => {
                    let v = serde_json::from_slice::<serde_json::Value>(v).unwrap_or_default();
                    let router = v["router"].as_str().and_then(|a| a.parse().ok());
                    self.routers.insert(host.clone(), router);
                    match v["homes"].as_str() {
                        Some(h) => self.homes.insert(host.clone(), PathBuf::from(h)),
                        None => self.homes.remove(&host),
                    };
                    self.alive.insert(host, v["memory"].as_u64().unwrap_or(0))
                }
                None => {
                    self.routers.remove(&host);
                    self.homes.remove(&host);
                    self.alive.remove(&host)
                }
            };
            return true;
        }
        if let Some(name) = cluster::dropped_of(prefix, key) {
            let claims = value.zip(created).and_then(|(v, c)| {
                Some((serde_json::from_slice::<cluster::DroppedClaims>(v).ok()?, c))
            });
            match claims {
                Some((claims, created)) => self.files.insert_dropped(name, &claims, created),
                None => self.files.remove(&name),
            }
            return true;
        }
        if let Some(name) = cluster::move_of(prefix, key) {
            let read = value.and_then(|v| Some((serde_json::from_slice(v).ok()?, v.to_vec())));
            match read {
                Some(m) => self.moves.insert(name, m),
                None => self.moves.remove(&name),
            };
            return true;
        }
        if let Some(name) = cluster::owner_of(prefix, key) {
            match value.and_then(name_value) {
                Some(host) => self.owners.insert(name, host),
                None => self.owners.remove(&name),
            };
            return true;
        }
        false
    }

    /// The vassals some host other than `me` owns.
    fn held_elsewhere(&self, me: &Name) -> BTreeSet<Name> {
        self.owners
            .iter()
            .filter(|(_, h)| *h != me)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// Why a session with etcd ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Ended {
    /// etcd's answer was an error (or the connection broke).
    #[error(transparent)]
    Etcd(#[from] etcd_client::Error),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The watch (or the lease) ended.
    #[error("the watch ended: {0}")]
    Watch(String),
    /// The watch's start revision was compacted away: list again.
    #[error("revision {0} was compacted")]
    Compacted(i64),
    /// Something of this host's refused the step (its directory, its table).
    #[error("{0}")]
    Refused(String),
}

/// A vassal file written (or, `text` `None`, deleted) in the cluster by the
/// admin's API on this host.
#[derive(Debug)]
pub struct Write {
    /// The vassal.
    pub name: Name,
    /// Its new text (validated by the caller), or `None` to delete it.
    pub text: Option<String>,
    /// Where the answer goes: whether the file is new, or why not written.
    pub reply: oneshot::Sender<Result<bool, String>>,
}

/// What the admin asks of the agent: a write, or the cluster as this host
/// sees it.
#[derive(Debug)]
pub enum Ask {
    /// Put or delete a file.
    Write(Write),
    /// The view (`emperor cluster`).
    View(oneshot::Sender<serde_json::Value>),
    /// Move a site to a host (`emperor move`): the move begun, or why not.
    Move(Name, Name, oneshot::Sender<Result<cluster::Move, String>>),
}

/// What the engine has of one vassal, for the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// Its tenant's login.
    pub login: Name,
    /// Whether the host's uid table has the login.
    pub has_uid: bool,
    /// A site of a reseller's drop directory: what it claims.
    pub dropped: Option<cluster::DroppedClaims>,
}

/// Writes waiting for the agent at most.
pub const WRITES: usize = 64;

/// Where the agent writes, and whom it tells.
pub struct Host {
    /// The admin directory (the copy).
    pub dir: PathBuf,
    /// The state directory (`cluster.json`; the uid table, read).
    pub state_dir: PathBuf,
    /// The host's uid table (read: a login it already has keeps its uid).
    pub uid_table: PathBuf,
    /// The manager, which takes the cluster's uids.
    pub events: mpsc::UnboundedSender<Event>,
    /// What the agent did.
    pub stats: Arc<Stats>,
    /// The admin's writes and questions.
    pub writes: mpsc::Receiver<Ask>,
    /// The vassals the engine has (running, stopping or refused).
    pub vassals: tokio::sync::watch::Receiver<BTreeMap<Name, Held>>,
    /// Where the router learns the other hosts' domains (`peers.json`).
    pub peers: PathBuf,
    /// Where this host keeps its homes (told to the others for moves).
    pub home_root: PathBuf,
}

/// Starts the agent (and the host's lease) on the runtime.
pub fn spawn(settings: Settings, mut host: Host) {
    tokio::spawn(async move {
        let mut known = Known::default();
        let mut copies = mpsc::unbounded_channel();
        let mut wait = Duration::from_secs(1);
        let stats = host.stats.clone();
        // One member at a time, the next after a failure: a member that
        // hangs (stopped, cut off) takes a call's timeout, not every call.
        let mut at = 0;
        let mut failed = 0;
        loop {
            let endpoint = &settings.endpoints[at % settings.endpoints.len().max(1)];
            let ended = session(&settings, endpoint, &mut host, &mut known, &mut copies).await;
            if stats.connected.swap(false, Ordering::Relaxed) {
                failed = 0;
                wait = Duration::from_secs(1);
            }
            at += 1;
            failed += 1;
            match ended {
                Ended::Compacted(at) => {
                    tracing::info!(
                        revision = at,
                        "cluster: the watch fell behind a compaction; listing again"
                    );
                    known.revision = 0;
                    wait = Duration::from_secs(1);
                    continue;
                }
                e => {
                    tracing::warn!(%endpoint, error = %e, "cluster: etcd unreachable there; this host keeps what it runs")
                }
            }
            // The other members at once; once every one failed, a pause
            // that doubles (1 s to 30 s).
            let pause = if failed % settings.endpoints.len().max(1) == 0 {
                let w = wait;
                wait = (wait * 2).min(RETRY_MAX);
                w
            } else {
                Duration::from_millis(100)
            };
            // Writes asked meanwhile are refused at once, not kept waiting.
            let pause = tokio::time::sleep(pause);
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    _ = &mut pause => break,
                    Some(ask) = host.writes.recv() => match ask {
                        Ask::Write(w) => {
                            let _ = w.reply.send(Err("etcd is unreachable from this host now: try again".into()));
                        }
                        Ask::View(reply) => {
                            let _ = reply.send(view(&settings, &known, false));
                        }
                        Ask::Move(_, _, reply) => {
                            let _ = reply.send(Err("etcd is unreachable from this host now: try again".into()));
                        }
                    },
                }
            }
        }
    });
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Ended> {
    match tokio::time::timeout(CALL, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Ended::Timeout(CALL)),
    }
}

async fn connect(s: &Settings, endpoint: &str) -> Result<Client, Ended> {
    // etcd sends GOAWAY ("too_many_pings") to a client pinging more often
    // than every 5 s (its --grpc-keepalive-min-time).
    let mut options = ConnectOptions::new()
        .with_require_leader(true)
        .with_connect_timeout(Duration::from_secs(3))
        .with_keep_alive(Duration::from_secs(6), Duration::from_secs(3))
        .with_keep_alive_while_idle(true);
    if let Some(tls) = &s.tls {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| Ended::Refused(format!("{}: {e}", p.display())))
        };
        let mut t = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)?));
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(t);
    }
    timed(Client::connect([endpoint], Some(options))).await
}

/// One connection: list if needed, then follow the watch until it ends.
/// The ends of the channel on which copies of moving homes report.
type Copies = (
    mpsc::UnboundedSender<Copied>,
    mpsc::UnboundedReceiver<Copied>,
);

async fn session(
    s: &Settings,
    endpoint: &str,
    host: &mut Host,
    known: &mut Known,
    copies: &mut Copies,
) -> Ended {
    let stats = host.stats.clone();
    let run = async {
        let mut client = connect(s, endpoint).await?;
        let mut alive = Alive::new(&mut client, s, &host.home_root).await?;
        // The directory is read once a session, then kept as written.
        known.local = None;
        if known.revision == 0 {
            let cluster_id = list(&mut client, &s.prefix, known).await?;
            stats.lists.fetch_add(1, Ordering::Relaxed);
            moves(s, host, &mut client, known, &copies.0).await?;
            first_sync(s, host, &mut client, cluster_id, known).await?;
        } else {
            moves(s, host, &mut client, known, &copies.0).await?;
            sync(s, host, &mut client, known).await?;
        }
        own(s, host, &mut client, known).await?;
        tell_router(s, host, known);
        stats.revision.store(known.revision, Ordering::Relaxed);
        stats.connected.store(true, Ordering::Relaxed);
        // Everything under the prefix: the files, and which host holds what.
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(known.revision + 1);
        let mut watch = timed(client.watch(s.prefix.as_bytes(), Some(options))).await?;
        // One host schedules: the one that wins the election, with its lease.
        let mut elector = client.clone();
        let lease = alive.lease;
        let value = s.host.to_string();
        let campaign = async move {
            elector
                .campaign(format!("{}{}", s.prefix, cluster::LEADER), value, lease)
                .await
        };
        tokio::pin!(campaign);
        let mut leader: Option<etcd_client::LeaderKey> = None;
        loop {
            let message = tokio::select! {
                won = &mut campaign, if leader.is_none() => {
                    let won = won?;
                    let Some(key) = won.leader().cloned() else {
                        return Err(Ended::Watch("the election answered without a key".into()));
                    };
                    tracing::info!("cluster: this host schedules");
                    schedule(s, &mut client, known, &key).await?;
                    leader = Some(key);
                    continue;
                }
                m = watch.message() => m?,
                renewed = alive.renew() => {
                    renewed?;
                    // A site that arrived here a while ago is no longer new.
                    if !known.work.arrived.is_empty() {
                        tell_router(s, host, known);
                    }
                    continue;
                }
                Some(ask) = host.writes.recv() => {
                    match ask {
                        Ask::Write(w) => {
                            let refused = w.text.as_deref().and_then(|t| {
                                known.files.conflict_with(&w.name, t).or_else(|| homeless(known, &w.name, t))
                            });
                            let done = match refused {
                                Some(why) => Err(why),
                                None => write(&mut client, s, &w.name, w.text.as_deref()).await,
                            };
                            let _ = w.reply.send(done);
                        }
                        Ask::View(reply) => {
                            let _ = reply.send(view(s, known, true));
                        }
                        Ask::Move(name, to, reply) => {
                            let _ = reply.send(begin_move(s, &mut client, known, &name, &to).await?);
                        }
                    }
                    continue;
                }
                Some(done) = copies.1.recv() => {
                    copied(s, &mut client, known, done).await?;
                    continue;
                }
                Ok(()) = host.vassals.changed() => {
                    own(s, host, &mut client, known).await?;
                    continue;
                }
            };
            // What has already come is taken as one change (a burst of
            // puts costs one pass, not one each).
            let mut next = Some(message);
            let mut changed = false;
            while let Some(message) = next.take() {
                let Some(m) = message else {
                    return Err(Ended::Watch("closed by the server".into()));
                };
                if m.canceled() {
                    if m.compact_revision() > 0 {
                        return Err(Ended::Compacted(m.compact_revision()));
                    }
                    return Err(Ended::Watch(m.cancel_reason().to_owned()));
                }
                for ev in m.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let value = matches!(ev.event_type(), EventType::Put)
                        .then(|| (kv.value(), kv.create_revision()));
                    changed |= known.take(&s.prefix, kv.key(), value);
                }
                if let Some(h) = m.header() {
                    known.revision = known.revision.max(h.revision());
                }
                next = watch.message().now_or_never().transpose()?;
            }
            if changed {
                if let Some(key) = &leader {
                    schedule(s, &mut client, known, key).await?;
                }
                // Moves first: a site moved away is marked before its file goes.
                moves(s, host, &mut client, known, &copies.0).await?;
                sync(s, host, &mut client, known).await?;
                own(s, host, &mut client, known).await?;
                tell_router(s, host, known);
            }
            stats.revision.store(known.revision, Ordering::Relaxed);
        }
    };
    match run.await {
        Ok(()) => Ended::Watch("ended".into()),
        Err(e) => e,
    }
}

/// Why `text`, as `name`'s new file, is refused: it names another host
/// than the one running the vassal, which would start it there afresh,
/// without its home.
fn homeless(known: &Known, name: &Name, text: &str) -> Option<String> {
    let owner = known.owners.get(name)?;
    let to = cluster::host_in(text)?;
    if &to == owner {
        return None;
    }
    Some(format!(
        "{name} runs on {owner}: `emperor move {name} {to}` moves an admin site there with its \
         home (a group: not yet); to start it afresh on {to}, delete it first"
    ))
}

/// Tells the router where the other hosts' domains are served, when that
/// changed: the host that holds each (or is to), and their routers' peer
/// listeners; a host whose lease expired is left out of the routers, and
/// its domains answer 503 here. A failed write is logged and tried again
/// at the next change.
fn tell_router(s: &Settings, host: &Host, known: &mut Known) {
    let placed = cluster::placements(&known.files, &known.chosen);
    let mut peers = cluster::peers(
        &known.files,
        &placed,
        &known.owners,
        &s.host,
        &known.routers,
    );
    let frozen = known
        .moves
        .iter()
        .filter(|(_, (m, _))| {
            use cluster::Phase::*;
            matches!(m.phase, Freeze | Final | Switched)
        })
        .map(|(n, _)| n);
    for name in frozen {
        peers.moving.extend(known.files.domains(name));
    }
    let now = crate::clock::now();
    known
        .work
        .arrived
        .retain(|_, at| now.duration_since(*at) < ARRIVING);
    for name in known.work.arrived.keys() {
        peers.arriving.extend(known.files.domains(name));
    }
    if let Some(told) = &known.peers {
        peers.generation = told.generation;
        if *told == peers {
            return;
        }
    }
    // Unique across this host's emperors: the router's answer names it.
    peers.generation = crate::clock::wall()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // A map of strings and addresses: it always serializes.
    let bytes = serde_json::to_vec(&peers).unwrap_or_default();
    let written = match host.peers.parent() {
        Some(dir) => std::fs::create_dir_all(dir),
        None => Ok(()),
    }
    .and_then(|()| model::atomic::replace(&host.peers, &bytes, 0o600));
    match written {
        Ok(()) => {
            tracing::info!(
                domains = peers.domains.len(),
                routers = peers.routers.len(),
                "cluster: the router told of the other hosts"
            );
            known.peers = Some(peers);
        }
        Err(e) => {
            tracing::error!(path = %host.peers.display(), error = %e, "cluster: the router could not be told of the other hosts");
            known.peers = None;
        }
    }
}

/// Makes this host's ownership what it holds: every file of its copy, and
/// every vassal its engine still has (a removed file's site until it has
/// stopped). What it holds and does not own yet (a host that joins with
/// sites of its own) it takes if no host owns it; what it owns and no
/// longer holds it lets go. Not bound to its lease: a host cut off or down
/// still owns what it may be running, and no other host starts it until it
/// lets go (or the admin deletes its keys).
async fn own(
    s: &Settings,
    host: &Host,
    client: &mut Client,
    known: &mut Known,
) -> Result<(), Ended> {
    let mut want: BTreeSet<Name> = match &known.local {
        Some(local) => local.keys().cloned().collect(),
        None => read_dir(host.dir.clone()).await?.into_keys().collect(),
    };
    let held = host.vassals.borrow().clone();
    want.extend(held.keys().cloned());
    let mut clashes = BTreeSet::new();
    for name in &want {
        match known.owners.get(name) {
            Some(h) if *h == s.host => {}
            Some(h) => {
                if !known.clashes.contains(name) {
                    tracing::error!(vassal = %name, owner = %h, "cluster: this host holds a vassal another host owns");
                }
                clashes.insert(name.clone());
            }
            None => {
                take(s, client, known, name).await?;
            }
        }
    }
    known.clashes = clashes;
    let mine: Vec<Name> = known
        .owners
        .iter()
        .filter(|(n, h)| **h == s.host && !want.contains(*n))
        .map(|(n, _)| n.clone())
        .collect();
    for name in mine {
        let key = cluster::owner_key(&s.prefix, &name);
        let txn = Txn::new()
            .when(vec![Compare::value(
                key.as_str(),
                CompareOp::Equal,
                s.host.as_str(),
            )])
            .and_then(vec![
                TxnOp::delete(key.as_str(), None),
                TxnOp::delete(cluster::dropped_key(&s.prefix, &name), None),
            ]);
        timed(client.txn(txn)).await?;
        known.owners.remove(&name);
        tracing::info!(vassal = %name, "cluster: let go of it");
    }
    dropped(s, host, client, known, &held).await
}

/// The sites of resellers' drop directories this host owns: registered in
/// the cluster (their login and domains, so that no other file takes them),
/// and given the cluster's uid; one whose login or a domain an earlier file
/// claims gets none, and the engine says why.
async fn dropped(
    s: &Settings,
    host: &Host,
    client: &mut Client,
    known: &mut Known,
    held: &BTreeMap<Name, Held>,
) -> Result<(), Ended> {
    let mut logins = Vec::new();
    let mut refused = Vec::new();
    for (name, h) in held {
        let Some(claims) = &h.dropped else { continue };
        match known.owners.get(name) {
            Some(owner) if *owner == s.host => {}
            Some(owner) => {
                refused.push((h.login.clone(), format!("vassal {name} is host {owner}'s")));
                continue;
            }
            None => continue,
        }
        if let Some(why) = known.files.dropped_conflict(name, claims) {
            refused.push((h.login.clone(), why));
            continue;
        }
        if !known.files.is_dropped_as(name, claims) {
            let key = cluster::dropped_key(&s.prefix, name);
            let value = serde_json::to_string(claims).unwrap_or_default();
            let owner = cluster::owner_key(&s.prefix, name);
            // Only while this host owns it.
            let txn = Txn::new()
                .when(vec![Compare::value(
                    owner.as_str(),
                    CompareOp::Equal,
                    s.host.as_str(),
                )])
                .and_then(vec![TxnOp::put(key.as_str(), value, None)]);
            if !timed(client.txn(txn)).await?.succeeded() {
                continue;
            }
            known
                .files
                .insert_dropped(name.clone(), claims, known.revision + 1);
        }
        if !h.has_uid {
            logins.push(h.login.clone());
        }
    }
    logins.sort();
    logins.dedup();
    let mut given = Vec::new();
    for (login, claimed) in claim_uids(client, &s.prefix, &logins).await? {
        match claimed {
            Ok(uid) => given.push((login, uid)),
            Err(why) => refused.push((login, why)),
        }
    }
    if given.is_empty() && refused.is_empty() {
        return Ok(());
    }
    let (tx, rx) = oneshot::channel();
    let _ = host.events.send(Event::ClusterUids(given, refused, tx));
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(Ended::Refused(format!("the cluster's uids: {why}"))),
        Err(_) => Err(Ended::Refused("the emperor is stopping".into())),
    }
}

/// Takes every one of `names` that no host owns, in transactions of
/// [`BATCH`] (one by one when a batch does not hold): those another host
/// owns.
async fn take_all(
    s: &Settings,
    client: &mut Client,
    known: &mut Known,
    names: &[Name],
) -> Result<Vec<Name>, Ended> {
    let mut lost = Vec::new();
    for chunk in names.chunks(BATCH) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|n| cluster::owner_key(&s.prefix, n))
            .collect();
        let txn = Txn::new()
            .when(
                keys.iter()
                    .map(|k| Compare::create_revision(k.as_str(), CompareOp::Equal, 0))
                    .collect::<Vec<_>>(),
            )
            .and_then(
                keys.iter()
                    .map(|k| TxnOp::put(k.as_str(), s.host.as_str(), None))
                    .collect::<Vec<_>>(),
            );
        if timed(client.txn(txn)).await?.succeeded() {
            for name in chunk {
                known.owners.insert(name.clone(), s.host.clone());
            }
            continue;
        }
        for name in chunk {
            if !take(s, client, known, name).await? {
                lost.push(name.clone());
            }
        }
    }
    Ok(lost)
}

/// Takes `name` for this host if no host owns it: true if this host owns
/// it now (taken, or already its own).
async fn take(
    s: &Settings,
    client: &mut Client,
    known: &mut Known,
    name: &Name,
) -> Result<bool, Ended> {
    let key = cluster::owner_key(&s.prefix, name);
    let txn = Txn::new()
        .when(vec![Compare::create_revision(
            key.as_str(),
            CompareOp::Equal,
            0,
        )])
        .and_then(vec![TxnOp::put(key.as_str(), s.host.as_str(), None)])
        .or_else(vec![TxnOp::get(key.as_str(), None)]);
    let r = timed(client.txn(txn)).await?;
    let owner = if r.succeeded() {
        Some(s.host.clone())
    } else {
        r.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => {
                g.kvs().first().and_then(|kv| name_value(kv.value()))
            }
            _ => None,
        })
    };
    match owner {
        Some(h) => {
            let mine = h == s.host;
            known.owners.insert(name.clone(), h);
            Ok(mine)
        }
        None => Ok(false),
    }
}

/// The cluster as this host last read it: the hosts alive, and each file's
/// host, owner and whether it runs here, waits, or is refused and why.
fn view(s: &Settings, known: &Known, connected: bool) -> serde_json::Value {
    let placements = cluster::placements(&known.files, &known.chosen);
    let conflicts = known.files.conflicts();
    let files: Vec<serde_json::Value> = placements
        .iter()
        .map(|(name, placed)| {
            let owner = known.owners.get(name);
            let here = known.local.as_ref().is_some_and(|l| l.contains_key(name));
            let state = match (conflicts.get(name), placed) {
                (Some(_), _) => "refused",
                _ if known.files.is_dropped(name) => "dropped",
                (None, None) => "unplaced",
                (None, Some(_)) if here => "here",
                (None, Some(h)) if *h == s.host && owner.is_some_and(|o| *o != s.host) => "waiting",
                (None, Some(h)) if *h == s.host => "coming",
                (None, Some(_)) => "elsewhere",
            };
            serde_json::json!({
                "name": name,
                "host": placed,
                "owner": owner,
                "state": state,
                "reason": conflicts.get(name),
                "move": known.moves.get(name).map(|(m, _)| m),
            })
        })
        .collect();
    serde_json::json!({
        "host": s.host,
        "connected": connected,
        "revision": known.revision,
        "alive": known.alive.keys().collect::<Vec<_>>(),
        "files": files,
    })
}

/// Puts or deletes one vassal file: whether it is new, or why not.
async fn write(
    client: &mut Client,
    s: &Settings,
    name: &Name,
    text: Option<&str>,
) -> Result<bool, String> {
    let key = cluster::vassal_key(&s.prefix, name);
    match text {
        Some(text) => {
            let options = PutOptions::new().with_prev_key();
            let put = timed(client.put(key, text, Some(options)))
                .await
                .map_err(|e| format!("etcd: {e}"))?;
            tracing::info!(vassal = %name, "cluster: file written through the API");
            Ok(put.prev_key().is_none())
        }
        None => {
            let gone = timed(client.delete(key, Some(DeleteOptions::new())))
                .await
                .map_err(|e| format!("etcd: {e}"))?;
            if gone.deleted() == 0 {
                return Err(format!("no vassal named {name:?} in the cluster"));
            }
            tracing::info!(vassal = %name, "cluster: file deleted through the API");
            Ok(false)
        }
    }
}

/// A value that names a host.
fn name_value(v: &[u8]) -> Option<Name> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// A file's text as the cluster holds it, if a host may copy it (UTF-8, at
/// most [`cluster::MAX_FILE`] bytes); a refused one is as if absent.
fn file_text(name: &Name, value: &[u8]) -> Option<String> {
    if value.len() > cluster::MAX_FILE {
        tracing::error!(vassal = %name, bytes = value.len(), "cluster: file larger than {} bytes ignored", cluster::MAX_FILE);
        return None;
    }
    match std::str::from_utf8(value) {
        Ok(t) => Some(t.to_owned()),
        Err(_) => {
            tracing::error!(vassal = %name, "cluster: file is not UTF-8: ignored");
            None
        }
    }
}

/// Lists the files and the holds at one revision, in pages; returns the
/// cluster's id.
async fn list(client: &mut Client, prefix: &str, known: &mut Known) -> Result<u64, Ended> {
    let mut fresh = Known::default();
    let mut revision = 0;
    let mut cluster_id = 0;
    for range in [
        cluster::VASSALS,
        cluster::HOSTS,
        cluster::PLACEMENT,
        cluster::OWNERS,
        cluster::DROPPED,
        cluster::MOVES,
    ] {
        let start = format!("{prefix}{range}");
        let end = prefix_end(start.as_bytes());
        let mut from = start.into_bytes();
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let page = timed(client.get(from.clone(), Some(options))).await?;
            if let Some(h) = page.header() {
                if revision == 0 {
                    revision = h.revision();
                }
                cluster_id = h.cluster_id();
            }
            for kv in page.kvs() {
                fresh.take(prefix, kv.key(), Some((kv.value(), kv.create_revision())));
            }
            match (page.more(), page.kvs().last()) {
                (true, Some(last)) => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
    }
    fresh.revision = revision;
    fresh.local = known.local.take();
    fresh.work = std::mem::take(&mut known.work);
    *known = fresh;
    Ok(cluster_id)
}

/// The end of the range of keys that start with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The first directory sync of this emperor. A cluster that holds no file
/// while the directory holds some, and that this host has not followed
/// before (another cluster's id, or another prefix, or none), is most
/// likely a mistake (a new, empty etcd; a wrong prefix): the files are left
/// as they are rather than every site stopped.
async fn first_sync(
    s: &Settings,
    host: &Host,
    client: &mut Client,
    cluster_id: u64,
    known: &mut Known,
) -> Result<(), Ended> {
    let dir = &host.dir;
    let marker = host.state_dir.join("cluster.json");
    let this = serde_json::json!({ "cluster_id": cluster_id.to_string(), "prefix": s.prefix });
    let followed = std::fs::read(&marker)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v == this);
    if !followed {
        register_local_uids(s, host, client).await?;
    }
    if !followed && known.files.is_empty() {
        let local = read_dir(dir.to_owned()).await?;
        let have = local.len();
        known.local = Some(local);
        if have > 0 {
            return Err(Ended::Refused(format!(
                "the cluster holds no vassal file under {}{} and this host, new to it, has {}: \
                 not removing them (put them into the cluster first)",
                s.prefix,
                cluster::VASSALS,
                have
            )));
        }
    }
    sync(s, host, client, known).await?;
    if !followed {
        model::atomic::write(&marker, this.to_string().as_bytes(), 0o644)
            .map_err(|e| Ended::Refused(format!("{}: {e}", marker.display())))?;
    }
    Ok(())
}

/// Makes the directory hold what the cluster places on this host. A file
/// is copied once its login has the cluster's uid in the host's table; one
/// whose login cannot have it (the host gave that login or that uid to
/// another) is not copied, and the log says why.
async fn sync(
    s: &Settings,
    host: &Host,
    client: &mut Client,
    known: &mut Known,
) -> Result<(), Ended> {
    if known.local.is_none() {
        known.local = Some(read_dir(host.dir.clone()).await?);
    }
    let elsewhere = known.held_elsewhere(&s.host);
    let placements = cluster::placements(&known.files, &known.chosen);
    let conflicts = known.files.conflicts();
    for (name, why) in &conflicts {
        if placements.get(name).cloned().flatten().as_ref() == Some(&s.host)
            && !known.conflicts.contains(name)
        {
            tracing::error!(vassal = %name, reason = %why, "cluster: file not copied here");
        }
    }
    known.conflicts = conflicts.keys().cloned().collect();
    host.stats
        .conflicts
        .store(conflicts.len() as u64, Ordering::Relaxed);
    let local = known.local.as_ref().expect("read above");
    let mut plan = cluster::plan(
        &known.files,
        &placements,
        &s.host,
        local,
        &elsewhere,
        &conflicts,
    );
    let here: Vec<&Name> = placements
        .iter()
        .filter(|(_, h)| h.as_ref() == Some(&s.host))
        .map(|(n, _)| n)
        .collect();
    let waiting = here
        .iter()
        .filter(|n| !local.contains_key(**n) && elsewhere.contains(**n))
        .count();
    host.stats.files.store(here.len() as u64, Ordering::Relaxed);
    host.stats.waiting.store(waiting as u64, Ordering::Relaxed);
    if plan.is_empty() {
        return Ok(());
    }
    let table = UidTable::load(&host.uid_table).unwrap_or_default();
    // A login in the host's table has the cluster's uid (taken from it, or
    // given to it when the host joined); the others are claimed.
    let mut wanted: BTreeMap<Name, Vec<Name>> = BTreeMap::new();
    for (name, text) in &plan.write {
        // Not readable: the engine refuses the file and says why.
        if let Some(login) = cluster::login_of(name, text) {
            if !table.users.contains_key(login.as_str()) {
                wanted.entry(login).or_default().push(name.clone());
            }
        }
    }
    let mut given = Vec::new();
    let mut refused = Vec::new();
    let logins: Vec<Name> = wanted.keys().cloned().collect();
    for (login, claimed) in claim_uids(client, &s.prefix, &logins).await? {
        match claimed {
            Ok(uid) => given.push((login, uid)),
            Err(why) => {
                for name in &wanted[&login] {
                    tracing::error!(vassal = %name, reason = %why, "cluster: file not copied here");
                    refused.push(name.clone());
                }
            }
        }
    }
    if !given.is_empty() {
        let (tx, rx) = oneshot::channel();
        let _ = host.events.send(Event::ClusterUids(given, Vec::new(), tx));
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(Ended::Refused(format!("the cluster's uids: {why}"))),
            Err(_) => return Err(Ended::Refused("the emperor is stopping".into())),
        }
    }
    plan.write.retain(|(n, _)| !refused.contains(n));
    // A file new here is copied only once this host owns its vassal.
    let new_here: Vec<Name> = plan
        .write
        .iter()
        .filter(|(n, _)| !known.local.as_ref().is_some_and(|l| l.contains_key(n)))
        .map(|(n, _)| n.clone())
        .collect();
    let lost = take_all(s, client, known, &new_here).await?;
    plan.write.retain(|(n, _)| !lost.contains(n));
    let dir = host.dir.clone();
    let revision = known.revision;
    let done = tokio::task::spawn_blocking(move || -> std::io::Result<cluster::Plan> {
        for (name, text) in &plan.write {
            model::atomic::write(&dir.join(format!("{name}.toml")), text.as_bytes(), 0o644)?;
            tracing::info!(vassal = %name, revision, "cluster: file copied here");
        }
        for name in &plan.remove {
            match std::fs::remove_file(dir.join(format!("{name}.toml"))) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => tracing::info!(vassal = %name, revision, "cluster: file removed here"),
            }
        }
        Ok(plan)
    })
    .await;
    match done {
        Ok(Ok(plan)) => {
            let local = known.local.get_or_insert_with(BTreeMap::new);
            for name in plan.remove {
                local.remove(&name);
            }
            local.extend(plan.write);
            Ok(())
        }
        Ok(Err(e)) => {
            // Read the directory again: what was done before the error.
            known.local = None;
            Err(Ended::Refused(format!("writing the admin directory: {e}")))
        }
        Err(e) => {
            known.local = None;
            Err(Ended::Refused(format!("writing the admin directory: {e}")))
        }
    }
}

/// A host that joins a cluster brings the uids it gave on its own: each goes
/// into the cluster's table under its login (and `next` past it), so that
/// no other host gives it again; one the cluster gave to another login is
/// logged (that tenant's files are then copied to no host here).
async fn register_local_uids(s: &Settings, host: &Host, client: &mut Client) -> Result<(), Ended> {
    let table = UidTable::load(&host.uid_table)
        .map_err(|e| Ended::Refused(format!("{}: {e}", host.uid_table.display())))?;
    for (login, uid) in &table.users {
        let Ok(login) = login.parse::<Name>() else {
            continue;
        };
        if let Err(why) = claim_uid(client, &s.prefix, &login, Some(*uid)).await? {
            tracing::error!(reason = %why, "cluster: this host's uid conflicts with the cluster's");
        }
    }
    Ok(())
}

/// Keys one transaction claims or takes at most (etcd allows 128
/// operations in each of a transaction's lists).
const BATCH: usize = 40;

/// The cluster's uids of `logins`, none of which the host knows: claimed
/// [`BATCH`] at a time in one transaction each (the next uids, none of them
/// or of the logins claimed, `next` as read), or one by one through
/// [`claim_uid`] when a batch does not hold (a login the cluster already
/// knows, or another host's claim meanwhile).
pub async fn claim_uids(
    client: &mut Client,
    prefix: &str,
    logins: &[Name],
) -> Result<Vec<(Name, Result<u32, String>)>, Ended> {
    let uids = format!("{prefix}{}", cluster::UIDS);
    let next_key = format!("{uids}next");
    let mut out = Vec::new();
    for chunk in logins.chunks(BATCH) {
        let (mut uid, next_cmp) = read_next(client, &next_key).await?;
        let mut when = vec![next_cmp];
        let mut then = Vec::new();
        let mut got = Vec::new();
        for login in chunk {
            // 65534 is nobody inside every user namespace.
            if uid == 65534 {
                uid += 1;
            }
            let (by_name, by_uid) = (
                format!("{uids}by-name/{login}"),
                format!("{uids}by-uid/{uid}"),
            );
            when.push(Compare::create_revision(
                by_name.as_str(),
                CompareOp::Equal,
                0,
            ));
            when.push(Compare::create_revision(
                by_uid.as_str(),
                CompareOp::Equal,
                0,
            ));
            then.push(TxnOp::put(by_name.as_str(), uid.to_string(), None));
            then.push(TxnOp::put(by_uid.as_str(), login.as_str(), None));
            got.push((login.clone(), uid));
            uid += 1;
        }
        then.push(TxnOp::put(next_key.as_str(), uid.to_string(), None));
        if uid <= LAST_UID
            && timed(client.txn(Txn::new().when(when).and_then(then)))
                .await?
                .succeeded()
        {
            tracing::info!(
                logins = got.len(),
                first = got[0].1,
                "cluster: uids claimed"
            );
            out.extend(got.into_iter().map(|(l, u)| (l, Ok(u))));
            continue;
        }
        for login in chunk {
            out.push((login.clone(), claim_uid(client, prefix, login, None).await?));
        }
    }
    Ok(out)
}

/// The cluster's next uid (at least [`FIRST_UID`]) and the condition that
/// holds while no other claim has moved it.
async fn read_next(client: &mut Client, next_key: &str) -> Result<(u32, Compare), Ended> {
    let next = timed(client.get(next_key, None)).await?;
    Ok(match next.kvs().first() {
        Some(kv) => (
            std::str::from_utf8(kv.value())
                .ok()
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(FIRST_UID)
                .max(FIRST_UID),
            Compare::mod_revision(next_key, CompareOp::Equal, kv.mod_revision()),
        ),
        None => (
            FIRST_UID,
            Compare::create_revision(next_key, CompareOp::Equal, 0),
        ),
    })
}

/// The cluster's uid of `login`: the one it has, or a new one claimed in a
/// transaction that succeeds only if neither the login nor the uid has been
/// claimed and `next` is as read, so two hosts never give out the same uid
/// and `next` never goes down (no uid is reused). A login this host already
/// has (`here`, from before it joined) keeps its uid if the cluster has not
/// given it to another. The inner error says why a login cannot have one.
pub async fn claim_uid(
    client: &mut Client,
    prefix: &str,
    login: &Name,
    here: Option<u32>,
) -> Result<Result<u32, String>, Ended> {
    let uids = format!("{prefix}{}", cluster::UIDS);
    let by_name = format!("{uids}by-name/{login}");
    let next_key = format!("{uids}next");
    let parse = |v: &[u8]| std::str::from_utf8(v).ok()?.parse::<u32>().ok();
    for _ in 0..100 {
        let got = timed(client.get(by_name.as_str(), None)).await?;
        if let Some(kv) = got.kvs().first() {
            let Some(uid) = parse(kv.value()) else {
                return Ok(Err(format!("{by_name} is not a uid")));
            };
            return Ok(match here {
                Some(h) if h != uid => Err(format!(
                    "login {login} is uid {h} on this host and {uid} in the cluster"
                )),
                _ => Ok(uid),
            });
        }
        let (next_uid, next_cmp) = read_next(client, &next_key).await?;
        let mut uid = here.unwrap_or(next_uid);
        // 65534 is nobody inside every user namespace.
        if uid == 65534 {
            uid += 1;
        }
        if uid > LAST_UID {
            return Ok(Err("the cluster's uid space is exhausted".into()));
        }
        let by_uid = format!("{uids}by-uid/{uid}");
        if here.is_some() {
            let owner = timed(client.get(by_uid.as_str(), None)).await?;
            if let Some(kv) = owner.kvs().first() {
                return Ok(Err(format!(
                    "login {login} is uid {uid} on this host, which the cluster gave to {}",
                    String::from_utf8_lossy(kv.value())
                )));
            }
        }
        let txn = Txn::new()
            .when(vec![
                next_cmp,
                Compare::create_revision(by_name.as_str(), CompareOp::Equal, 0),
                Compare::create_revision(by_uid.as_str(), CompareOp::Equal, 0),
            ])
            .and_then(vec![
                TxnOp::put(next_key.as_str(), next_uid.max(uid + 1).to_string(), None),
                TxnOp::put(by_name.as_str(), uid.to_string(), None),
                TxnOp::put(by_uid.as_str(), login.as_str(), None),
            ]);
        if timed(client.txn(txn)).await?.succeeded() {
            tracing::info!(%login, uid, "cluster: uid claimed");
            return Ok(Ok(uid));
        }
    }
    Err(Ended::Refused(format!(
        "claiming a uid for {login}: 100 transactions lost to other hosts"
    )))
}

/// The directory's vassal files (`<name>.toml`) and their text.
async fn read_dir(dir: PathBuf) -> Result<BTreeMap<Name, String>, Ended> {
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(name) = file_name
                .to_str()
                .and_then(|f| f.strip_suffix(".toml"))
                .and_then(|n| n.parse::<Name>().ok())
            else {
                continue;
            };
            // Not ours if not valid UTF-8: read as text that differs.
            let text = std::fs::read(entry.path())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            files.insert(name, text);
        }
        Ok(files)
    })
    .await;
    match read {
        Ok(Ok(files)) => Ok(files),
        Ok(Err(e)) => Err(Ended::Refused(format!("reading the admin directory: {e}"))),
        Err(e) => Err(Ended::Refused(format!("reading the admin directory: {e}"))),
    }
}

/// How long a site moved here answers 503 rather than 404 until it
/// subscribes its domains (its app starting on this host).
const ARRIVING: Duration = Duration::from_secs(60);

/// This host's part of the moves between hosts.
#[derive(Debug, Default)]
struct Work {
    /// Steps under way here (a copy, a freeze), each done once.
    busy: BTreeSet<(Name, cluster::Phase)>,
    /// Sites this host froze for a move (thawed if the move fails).
    frozen: BTreeSet<Name>,
    /// Sites moved here, and when.
    arrived: BTreeMap<Name, std::time::Instant>,
}

/// A copy of a moving home has ended.
#[derive(Debug)]
pub struct Copied {
    name: Name,
    phase: cluster::Phase,
    /// The move's value when the copy began.
    seen: Vec<u8>,
    result: Result<(), String>,
}

/// Begins moving `name` to `to`: an admin site that runs on another host
/// alive. The move's key is put only if the site's owner and `to`'s alive
/// key are as read and no move is under way (a failed one is replaced).
async fn begin_move(
    s: &Settings,
    client: &mut Client,
    known: &Known,
    name: &Name,
    to: &Name,
) -> Result<Result<cluster::Move, String>, Ended> {
    if known.files.text(name).is_none() {
        return Ok(Err(format!("the cluster has no vassal {name}")));
    }
    if !known.files.is_admin_site(name) {
        return Ok(Err(format!(
            "{name} is not an admin site: a group moves with its sites (not yet), a group's site with its group"
        )));
    }
    let Some(from) = known.owners.get(name).cloned() else {
        return Ok(Err(format!("{name} runs on no host now")));
    };
    if &from == to {
        return Ok(Err(format!("{name} is on {to} already")));
    }
    if !known.alive.contains_key(to) {
        return Ok(Err(format!("host {to} is not alive")));
    }
    let key = cluster::move_key(&s.prefix, name);
    let mut when = vec![
        Compare::value(
            cluster::owner_key(&s.prefix, name),
            CompareOp::Equal,
            from.as_str(),
        ),
        Compare::create_revision(cluster::alive_key(&s.prefix, to), CompareOp::Greater, 0),
    ];
    match known.moves.get(name) {
        Some((m, seen)) if m.phase == cluster::Phase::Failed => {
            when.push(Compare::value(key.as_str(), CompareOp::Equal, seen.clone()))
        }
        Some((m, _)) => {
            return Ok(Err(format!(
                "{name} is already moving to {} ({:?})",
                m.to, m.phase
            )))
        }
        None => when.push(Compare::create_revision(key.as_str(), CompareOp::Equal, 0)),
    }
    let m = cluster::Move {
        from,
        to: to.clone(),
        phase: cluster::Phase::Copy,
        why: None,
    };
    // Names and a phase: it always serializes.
    let value = serde_json::to_vec(&m).unwrap_or_default();
    let txn = Txn::new()
        .when(when)
        .and_then(vec![TxnOp::put(key.as_str(), value, None)]);
    if !timed(client.txn(txn)).await?.succeeded() {
        return Ok(Err(format!(
            "{name} changed meanwhile (its owner, or {to}'s lease): try again"
        )));
    }
    tracing::info!(vassal = %name, from = %m.from, to = %m.to, "cluster: move begun");
    Ok(Ok(m))
}

/// Tells the agent's loop how a step of a move ended.
fn report(
    done: &mpsc::UnboundedSender<Copied>,
    name: Name,
    phase: cluster::Phase,
    seen: Vec<u8>,
    result: Result<(), String>,
) {
    let _ = done.send(Copied {
        name,
        phase,
        seen,
        result,
    });
}

/// Does this host's part of each move, as its phase says: the host a site
/// goes to makes its home and copies it (while it serves, then once more
/// while it is frozen); the host it leaves freezes it, and thaws it if the
/// move failed. Copies run off the agent's loop and report on `done`.
async fn moves(
    s: &Settings,
    host: &Host,
    client: &mut Client,
    known: &mut Known,
    done: &mpsc::UnboundedSender<Copied>,
) -> Result<(), Ended> {
    use cluster::Phase;
    let me = &s.host;
    let now_moves = known.moves.clone();
    let work = &mut known.work;
    work.busy
        .retain(|(n, p)| now_moves.get(n).is_some_and(|(m, _)| m.phase == *p));
    work.frozen.retain(|n| now_moves.contains_key(n));
    for (name, (m, seen)) in now_moves {
        // The host it goes to died on the way: the site runs on here.
        let under_way = matches!(m.phase, Phase::Copy | Phase::Freeze | Phase::Final);
        if under_way && m.from == *me && !known.alive.contains_key(&m.to) {
            report(
                done,
                name,
                m.phase,
                seen,
                Err(format!("host {} is gone", m.to)),
            );
            continue;
        }
        if known.work.busy.contains(&(name.clone(), m.phase)) {
            continue;
        }
        match m.phase {
            Phase::Copy | Phase::Final if m.to == *me => {
                known.work.busy.insert((name.clone(), m.phase));
                let dest = match arrive(s, host, client, known, &name).await? {
                    Ok(dest) => dest,
                    Err(why) => {
                        report(done, name, m.phase, seen, Err(why));
                        continue;
                    }
                };
                let Some(home) = known.homes.get(&m.from).map(|r| r.join(name.as_str())) else {
                    report(
                        done,
                        name,
                        m.phase,
                        seen,
                        Err(format!("host {} says not where its homes are", m.from)),
                    );
                    continue;
                };
                let argv: Vec<String> = s
                    .home_copy
                    .iter()
                    .map(|a| {
                        a.replace("{host}", m.from.as_str())
                            .replace("{home}", &home.display().to_string())
                            .replace("{dest}", &dest.display().to_string())
                    })
                    .collect();
                let done = done.clone();
                tracing::info!(vassal = %name, phase = ?m.phase, from = %m.from, "cluster: copying the home here");
                tokio::spawn(async move {
                    let result = copy_home(argv).await;
                    report(&done, name, m.phase, seen, result);
                });
            }
            Phase::Freeze if m.from == *me => {
                known.work.busy.insert((name.clone(), m.phase));
                // The router answers 503 for the site before it is frozen:
                // no request reaches it frozen, or after the last copy.
                tell_router(s, host, known);
                if !router_took(host, known).await {
                    report(
                        done,
                        name,
                        m.phase,
                        seen,
                        Err(format!(
                            "the router did not take the site's 503s within {ROUTER_TAKES:?}"
                        )),
                    );
                    continue;
                }
                let (tx, rx) = oneshot::channel();
                let ask = crate::control::Request::Suspend {
                    name: name.to_string(),
                };
                let _ = host.events.send(Event::Control(ask, tx));
                let result = match rx.await {
                    Ok(r) if r.ok => Ok(()),
                    Ok(r) => Err(format!("freezing it: {}", r.error.unwrap_or_default())),
                    Err(_) => Err("the emperor is stopping".to_owned()),
                };
                if result.is_ok() {
                    known.work.frozen.insert(name.clone());
                }
                // The next step is the other host's: told by the phase.
                report(done, name, m.phase, seen, result);
            }
            // Moved away: before its file goes (moves come first in a pass),
            // the engine is told to kill it still frozen, so that it never
            // runs again after the last copy; told again after a restart.
            Phase::Switched if m.from == *me => {
                known.work.busy.insert((name.clone(), m.phase));
                known.work.frozen.remove(&name);
                let _ = host.events.send(Event::MovedAway(name));
            }
            // Here, and this host owns it: the move is over.
            Phase::Switched if m.to == *me && known.owners.get(&name) == Some(me) => {
                known.work.busy.insert((name.clone(), m.phase));
                let key = cluster::move_key(&s.prefix, &name);
                let txn = Txn::new()
                    .when(vec![Compare::value(key.as_str(), CompareOp::Equal, seen)])
                    .and_then(vec![TxnOp::delete(key.as_str(), None)]);
                timed(client.txn(txn)).await?;
                known.work.arrived.insert(name.clone(), crate::clock::now());
                tracing::info!(vassal = %name, from = %m.from, "cluster: moved here");
            }
            // Frozen by this move (by this emperor, or by one before its
            // restart: the move failed in its last copy), thawed once.
            Phase::Failed
                if m.from == *me
                    && (known.work.frozen.contains(&name)
                        || m.why.as_deref().is_some_and(|w| w.starts_with("final"))) =>
            {
                known.work.busy.insert((name.clone(), m.phase));
                let (tx, rx) = oneshot::channel();
                let ask = crate::control::Request::Resume {
                    name: name.to_string(),
                };
                let _ = host.events.send(Event::Control(ask, tx));
                if let Ok(r) = rx.await {
                    if !r.ok {
                        tracing::error!(vassal = %name, error = ?r.error, "cluster: a failed move could not thaw the site");
                    }
                }
                known.work.frozen.remove(&name);
                tracing::warn!(vassal = %name, why = ?m.why, "cluster: move failed; the site runs on here");
            }
            _ => {}
        }
    }
    Ok(())
}

/// How long a move waits for the router to take a site's 503s.
const ROUTER_TAKES: Duration = Duration::from_secs(5);

/// Whether this host's router has taken the peers last written (at once
/// when no router runs here: none has ever said where it listens).
async fn router_took(host: &Host, known: &Known) -> bool {
    let Some(dir) = host.peers.parent() else {
        return true;
    };
    if !dir.join(model::layout::names::LISTEN).exists() {
        return true;
    }
    let Some(want) = known.peers.as_ref().map(|p| p.generation) else {
        return false;
    };
    let applied = dir.join(model::layout::names::PEERS_APPLIED);
    let deadline = tokio::time::Instant::now() + ROUTER_TAKES;
    while tokio::time::Instant::now() < deadline {
        let said = std::fs::read_to_string(&applied).unwrap_or_default();
        if said.trim().parse::<u64>().ok() == Some(want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Makes ready a home here for `name`, on its way from another host: its
/// login's uid (the cluster's) in the host's table, its home made as a
/// start would make it. The home's path.
async fn arrive(
    s: &Settings,
    host: &Host,
    client: &mut Client,
    known: &Known,
    name: &Name,
) -> Result<Result<PathBuf, String>, Ended> {
    let Some(text) = known.files.text(name).map(str::to_owned) else {
        return Ok(Err("its file is gone".to_owned()));
    };
    let Some(login) = cluster::login_of(name, &text) else {
        return Ok(Err("its file names no login".to_owned()));
    };
    let mut given = Vec::new();
    for (login, claimed) in claim_uids(client, &s.prefix, &[login]).await? {
        match claimed {
            Ok(uid) => given.push((login, uid)),
            Err(why) => return Ok(Err(why)),
        }
    }
    let (tx, rx) = oneshot::channel();
    let _ = host.events.send(Event::ClusterUids(given, Vec::new(), tx));
    match rx.await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => return Ok(Err(format!("its uid: {why}"))),
        Err(_) => return Ok(Err("the emperor is stopping".to_owned())),
    }
    let (tx, rx) = oneshot::channel();
    let _ = host.events.send(Event::PrepareHome(name.clone(), text, tx));
    Ok(rx
        .await
        .unwrap_or_else(|_| Err("the emperor is stopping".to_owned())))
}

/// Runs the copy command; its last words on failure.
async fn copy_home(argv: Vec<String>) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("no --home-copy command".to_owned());
    };
    use tokio::io::AsyncReadExt;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    // Its last words are kept, bounded; the rest is read and dropped.
    let mut said = Vec::new();
    if let Some(mut err) = child.stderr.take() {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = err.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            said.extend_from_slice(&chunk[..n]);
            if said.len() > 8192 {
                said.drain(..said.len() - 4096);
            }
        }
    }
    let status = child.wait().await.map_err(|e| format!("{program}: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&said);
    let last = said.lines().last().unwrap_or_default();
    Err(format!(
        "{program} failed ({}): {}",
        status,
        last.chars().take(300).collect::<String>()
    ))
}

/// Moves a move on once this host's step is done: after the first copy,
/// the site is to be frozen; after the freeze, copied a last time; after
/// the last copy, one transaction puts its file on the new host (its
/// `host`, or its placement when the file names none) and ends the move,
/// only while the move is as read and the old host still owns the site.
/// A failed step fails the move, with the reason.
async fn copied(
    s: &Settings,
    client: &mut Client,
    known: &mut Known,
    c: Copied,
) -> Result<(), Ended> {
    use cluster::Phase;
    let key = cluster::move_key(&s.prefix, &c.name);
    let Ok(mut m) = serde_json::from_slice::<cluster::Move>(&c.seen) else {
        return Ok(());
    };
    let still = Compare::value(key.as_str(), CompareOp::Equal, c.seen.clone());
    let mut then = Vec::new();
    match (&c.result, c.phase) {
        (Err(why), _) => {
            tracing::error!(vassal = %c.name, phase = ?c.phase, reason = %why, "cluster: move failed");
            m.phase = Phase::Failed;
            m.why = Some(format!("{:?}: {why}", c.phase).to_lowercase());
        }
        (Ok(()), Phase::Copy) => m.phase = Phase::Freeze,
        (Ok(()), Phase::Freeze) => m.phase = Phase::Final,
        (Ok(()), Phase::Final) => {
            let Some(text) = known.files.text(&c.name) else {
                return Ok(());
            };
            if known.files.names_host(&c.name) {
                let Some(text) = cluster::with_host(text, &m.to) else {
                    return Ok(());
                };
                then.push(TxnOp::put(
                    cluster::vassal_key(&s.prefix, &c.name),
                    text,
                    None,
                ));
            } else {
                then.push(TxnOp::put(
                    cluster::placement_key(&s.prefix, &c.name),
                    m.to.as_str(),
                    None,
                ));
            }
            m.phase = Phase::Switched;
            // Names and a phase: it always serializes.
            then.push(TxnOp::put(
                key.as_str(),
                serde_json::to_vec(&m).unwrap_or_default(),
                None,
            ));
            let txn = Txn::new()
                .when(vec![
                    still,
                    Compare::value(
                        cluster::owner_key(&s.prefix, &c.name),
                        CompareOp::Equal,
                        m.from.as_str(),
                    ),
                ])
                .and_then(then);
            if timed(client.txn(txn)).await?.succeeded() {
                tracing::info!(vassal = %c.name, from = %m.from, to = %m.to, "cluster: moved");
            }
            return Ok(());
        }
        (Ok(()), Phase::Failed | Phase::Switched) => return Ok(()),
    }
    // Names and a phase: it always serializes.
    let value = serde_json::to_vec(&m).unwrap_or_default();
    let txn = Txn::new()
        .when(vec![still])
        .and_then(vec![TxnOp::put(key.as_str(), value, None)]);
    timed(client.txn(txn)).await?;
    Ok(())
}

/// The host's `alive` key, bound to a lease renewed every third of its life.
struct Alive {
    lease: i64,
    keeper: etcd_client::LeaseKeeper,
    answers: etcd_client::LeaseKeepAliveStream,
    tick: tokio::time::Interval,
}

impl Alive {
    async fn new(client: &mut Client, s: &Settings, homes: &Path) -> Result<Alive, Ended> {
        let lease = timed(client.lease_grant(LEASE_TTL, None)).await?;
        let value = serde_json::json!({
            "host": s.host,
            "version": env!("CARGO_PKG_VERSION"),
            "memory": memory_total(),
            "router": s.router_peer,
            "homes": homes,
        })
        .to_string();
        timed(client.put(
            cluster::alive_key(&s.prefix, &s.host),
            value,
            Some(PutOptions::new().with_lease(lease.id())),
        ))
        .await?;
        let (keeper, answers) = timed(client.lease_keep_alive(lease.id())).await?;
        let mut tick = tokio::time::interval(Duration::from_secs((LEASE_TTL / 3) as u64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Alive {
            lease: lease.id(),
            keeper,
            answers,
            tick,
        })
    }

    /// Waits for the next renewal and makes it; a lease etcd no longer
    /// knows (it expired while this host was cut off) ends the session, and
    /// the next one takes a new lease.
    async fn renew(&mut self) -> Result<(), Ended> {
        self.tick.tick().await;
        timed(self.keeper.keep_alive()).await?;
        match timed(self.answers.message()).await? {
            Some(a) if a.ttl() > 0 => Ok(()),
            _ => Err(Ended::Watch("the host's lease expired".into())),
        }
    }
}

/// The host's memory (`MemTotal`), in bytes: what the scheduler shares out.
fn memory_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kib = m.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
            kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// Places every group and admin site that names no host and has none yet
/// (see [`cluster::schedule`]), while this host leads: each choice is one
/// transaction that holds only if the vassal is still unplaced, the chosen
/// host alive and this host's leadership key still the one it won with.
async fn schedule(
    s: &Settings,
    client: &mut Client,
    known: &Known,
    leader: &etcd_client::LeaderKey,
) -> Result<(), Ended> {
    for (name, host) in cluster::schedule(&known.files, &known.chosen, &known.alive) {
        let key = cluster::placement_key(&s.prefix, &name);
        // The chosen host must still be alive: a leader that has just won
        // may not yet have read the expiry of the last one's lease (and so
        // of its host's alive key, at the same revision).
        let alive = cluster::alive_key(&s.prefix, &host);
        let txn = Txn::new()
            .when(vec![
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                Compare::create_revision(leader.key(), CompareOp::Equal, leader.rev()),
                Compare::create_revision(alive.as_str(), CompareOp::Greater, 0),
            ])
            .and_then(vec![TxnOp::put(key.as_str(), host.as_str(), None)]);
        if !timed(client.txn(txn)).await?.succeeded() {
            // What changed (a host gone, the lead lost) comes on the watch;
            // the next pass decides again.
            tracing::debug!(vassal = %name, %host, "cluster: the choice no longer holds");
            break;
        }
        tracing::info!(vassal = %name, %host, "cluster: scheduled");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_failed_copy_says_its_last_words_and_no_more() {
        let why = super::copy_home(
            [
                "sh",
                "-c",
                "yes noise | head -c 6000000 >&2; echo the reason >&2; exit 3",
            ]
            .map(str::to_owned)
            .to_vec(),
        )
        .await
        .unwrap_err();
        assert!(
            why.starts_with("sh failed (exit status: 3): the reason"),
            "{why}"
        );
        assert!(super::copy_home(vec!["true".into()]).await.is_ok());
        let none = super::copy_home(vec!["/nonexistent/rsync".into()])
            .await
            .unwrap_err();
        assert!(none.starts_with("/nonexistent/rsync: "), "{none}");
    }

    #[test]
    fn a_prefixs_range_ends_after_its_last_key() {
        assert_eq!(
            super::prefix_end(b"/imperium/vassals/"),
            b"/imperium/vassals0"
        );
        assert_eq!(super::prefix_end(b"a\xff"), b"b");
        assert_eq!(super::prefix_end(b"\xff"), b"\0");
    }
}
