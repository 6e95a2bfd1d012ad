//! Subscribing a process's domains to the shared router: signed with the
//! site's key, sent to the router's socket shared into the container.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use model::process::Http;
use model::subscription::{Action, Answer, Signed, Subscription};

use crate::lifecycle::SubState;

/// Where the key and the router are, and who we are.
#[derive(Debug)]
pub struct Subscriber {
    key: Result<SigningKey, String>,
    socket: PathBuf,
    site: String,
}

impl Subscriber {
    /// From the container's fixed paths (tests point elsewhere through the environment).
    pub fn from_env() -> Subscriber {
        let key_path = std::env::var_os("IMPERIUM_SITE_KEY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(model::layout::inside::SITE_KEY));
        let socket = std::env::var_os("IMPERIUM_ROUTER_SOCKET")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(model::layout::inside::ROUTER)
                    .join(model::layout::names::SUBSCRIBE_SOCKET)
            });
        let key = std::fs::read_to_string(&key_path)
            .map_err(|e| format!("no site key ({}: {e})", key_path.display()))
            .and_then(|t| {
                base64::engine::general_purpose::STANDARD
                    .decode(t.trim())
                    .ok()
                    .and_then(|k| <[u8; 32]>::try_from(k).ok())
                    .map(|seed| SigningKey::from_bytes(&seed))
                    .ok_or_else(|| format!("{} is not a key", key_path.display()))
            });
        Subscriber {
            key,
            socket,
            site: std::env::var("IMPERIUM_VASSAL").unwrap_or_default(),
        }
    }

    /// Sends one (un)subscription; `Ok(ttl)` when the router took it, else its reason.
    pub fn send(
        &self,
        action: Action,
        domain: &str,
        http: &Http,
        home: &Path,
    ) -> Result<u64, String> {
        let key = self.key.as_ref().map_err(Clone::clone)?;
        let read = |p: &Option<String>| -> Result<Option<String>, String> {
            match p {
                None => Ok(None),
                Some(p) => std::fs::read_to_string(home.join(p))
                    .map(Some)
                    .map_err(|e| format!("reading {p}: {e}")),
            }
        };
        let (cert, keypem) = if action == Action::Subscribe {
            (read(&http.cert)?, read(&http.key)?)
        } else {
            (None, None)
        };
        let mut nonce = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut nonce))
            .map_err(|e| e.to_string())?;
        let sub = Subscription {
            action,
            site: self.site.clone(),
            domain: domain.to_owned(),
            backend: http.socket.clone(),
            weight: http.weight,
            redirect: http.http_redirect,
            cert,
            key: keypem,
            timestamp: crate::clock::wall_secs(),
            nonce: nonce.iter().map(|b| format!("{b:02x}")).collect(),
        };
        let payload = serde_json::to_string(&sub).map_err(|e| e.to_string())?;
        let signature = base64::engine::general_purpose::STANDARD
            .encode(key.sign(payload.as_bytes()).to_bytes());
        let body = serde_json::to_vec(&Signed { payload, signature }).map_err(|e| e.to_string())?;
        let answer = self
            .post(&body)
            .map_err(|e| format!("router not reachable at {}: {e}", self.socket.display()))?;
        match answer {
            Answer { ok: true, ttl, .. } => Ok(ttl.unwrap_or(60)),
            Answer { error, .. } => Err(error.unwrap_or_else(|| "refused".into())),
        }
    }

    /// Subscribes every domain; one answer per domain, and the shortest
    /// time to live granted (6 s after a refusal, so it is tried again soon).
    pub fn subscribe_all(&self, http: &Http, home: &Path) -> (Vec<SubState>, u64) {
        let mut ttl = u64::MAX;
        let subs = http
            .domains
            .iter()
            .map(|d| {
                let (ok, answer) = match self.send(Action::Subscribe, d, http, home) {
                    Ok(t) => {
                        ttl = ttl.min(t);
                        (true, format!("subscribed for {t} s"))
                    }
                    Err(e) => {
                        ttl = ttl.min(6);
                        (false, e)
                    }
                };
                SubState {
                    domain: d.clone(),
                    ok,
                    answer,
                }
            })
            .collect();
        (subs, ttl)
    }

    /// Withdraws every domain (best effort: routes expire anyway).
    pub fn withdraw_all(&self, http: &Http, home: &Path) {
        for d in &http.domains {
            let _ = self.send(Action::Unsubscribe, d, http, home);
        }
    }

    /// The site's domains as the router routes them now (`GET /routes`:
    /// the router knows the site by this process's uid), for `vassal status`.
    pub fn routes(&self) -> Result<Vec<model::subscription::RouteReport>, String> {
        let ask = || -> std::io::Result<String> {
            let mut s = UnixStream::connect(&self.socket)?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.set_write_timeout(Some(Duration::from_secs(2)))?;
            write!(
                s,
                "GET /routes HTTP/1.1\r\nHost: router\r\nConnection: close\r\n\r\n"
            )?;
            let mut text = String::new();
            s.take(8 << 20).read_to_string(&mut text)?;
            Ok(text)
        };
        let text = ask().map_err(|e| format!("the router ({}): {e}", self.socket.display()))?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        if head.split(' ').nth(1) == Some("404") {
            return Ok(Vec::new());
        }
        serde_json::from_str(body).map_err(|e| format!("the router's answer: {e}"))
    }

    fn post(&self, body: &[u8]) -> std::io::Result<Answer> {
        let mut s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        write!(s, "POST /subscribe HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
        s.write_all(body)?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let json = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        serde_json::from_str(json)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

/// Whether something listens on this unix socket (a connection it will see
/// closed at once; a full backlog counts as listening).
pub fn accepts(path: &Path) -> bool {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let Ok(addr) = UnixAddr::new(path) else {
        return false;
    };
    let Ok(fd) = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    matches!(
        connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr),
        Ok(()) | Err(nix::errno::Errno::EAGAIN)
    )
}

/// Whether something listens on this TCP address of the site's own (a
/// local connection is answered at once; 20 ms at most).
pub fn accepts_tcp(addr: std::net::SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(20)).is_ok()
}

/// Work for the subscription thread, done in the order given.
#[derive(Debug)]
pub enum Job {
    /// Subscribe every domain; the answers come back as [`Done::Subscribed`].
    Subscribe(model::Name, Http),
    /// Withdraw every domain.
    Withdraw(Http),
    /// Nothing to do but come back in order: a signal that must wait until
    /// the router has heard the jobs before it (an old instance is stopped
    /// only once the new one is subscribed and the old one withdrawn).
    Then(model::Name, crate::lifecycle::Effect),
}

/// What the subscription thread hands back.
#[derive(Debug)]
pub enum Done {
    /// The router's answers for a process.
    Subscribed(model::Name, Vec<SubState>, u64),
    /// A [`Job::Then`], back in its turn.
    Then(model::Name, crate::lifecycle::Effect),
}

/// Jobs queued at most (a full queue refuses a subscription, which is then
/// tried again a few seconds later).
const QUEUE: usize = 256;

/// The thread that talks to the router (each request may wait up to 2 s),
/// so PID 1's loop never does. It wakes the loop through `wake`. It is
/// started by the first job: a site none of whose processes is behind the
/// router never has it (one task less for the kernel to keep per site).
pub struct Worker {
    /// The thread's queue, once started.
    jobs: Option<std::sync::mpsc::SyncSender<Job>>,
    results: std::sync::mpsc::Sender<Done>,
    done: std::sync::mpsc::Receiver<Done>,
    /// Readable when something is done (a byte per result).
    pub wake: UnixStream,
    ring: UnixStream,
    home: PathBuf,
}

impl Worker {
    /// A worker for this home; the thread waits for the first job.
    pub fn new(home: PathBuf) -> std::io::Result<Worker> {
        let (results, done) = std::sync::mpsc::channel();
        let (wake, ring) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        Ok(Worker {
            jobs: None,
            results,
            done,
            wake,
            ring,
            home,
        })
    }

    /// Starts the thread. It takes the caller's signal mask: the
    /// supervisor's handled signals stay blocked in it (they are read
    /// through a signalfd by the loop).
    fn start(&self) -> std::io::Result<std::sync::mpsc::SyncSender<Job>> {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
        let results = self.results.clone();
        let mut ring = self.ring.try_clone()?;
        let home = self.home.clone();
        std::thread::Builder::new()
            .name("subscriptions".into())
            // Signing and one HTTP exchange at a time: a small stack will do.
            .stack_size(256 << 10)
            .spawn(move || {
                let subscriber = Subscriber::from_env();
                for job in queue {
                    let out = match job {
                        Job::Subscribe(name, http) => {
                            let (subs, ttl) = subscriber.subscribe_all(&http, &home);
                            Some(Done::Subscribed(name, subs, ttl))
                        }
                        Job::Withdraw(http) => {
                            subscriber.withdraw_all(&http, &home);
                            None
                        }
                        Job::Then(name, effect) => Some(Done::Then(name, effect)),
                    };
                    if let Some(out) = out {
                        if results.send(out).is_err() {
                            return;
                        }
                        let _ = ring.write_all(&[1]);
                    }
                }
            })?;
        Ok(jobs)
    }

    /// Queues a job, starting the thread for the first; `Err` gives it back
    /// when the queue is full (or the thread could not be started).
    pub fn send(&mut self, job: Job) -> Result<(), Box<Job>> {
        if self.jobs.is_none() {
            match self.start() {
                Ok(jobs) => self.jobs = Some(jobs),
                Err(e) => {
                    say!("vassal: starting the subscription thread: {e}");
                    return Err(Box::new(job));
                }
            }
        }
        let jobs = self.jobs.as_ref().expect("started above");
        jobs.try_send(job).map_err(|e| match e {
            std::sync::mpsc::TrySendError::Full(j)
            | std::sync::mpsc::TrySendError::Disconnected(j) => Box::new(j),
        })
    }

    /// Everything done so far.
    pub fn results(&mut self) -> Vec<Done> {
        let mut buf = [0u8; 256];
        while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
        self.done.try_iter().collect()
    }
}
