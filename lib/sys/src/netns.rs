//! A small pool of fresh network namespaces, made ahead of time.
//!
//! Creating a network namespace costs about a millisecond (more than all the
//! mounts of a container together); a helper thread makes a few in advance, with
//! `lo` already up, so that a start only has to join one. When the pool is empty
//! a start makes its own, as without a pool.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};

use nix::sched::{setns, unshare, CloneFlags};

/// How long the helper waits after a namespace was taken before it makes the next.
const REFILL_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// Network namespaces ready to be joined.
#[derive(Debug)]
pub struct NetnsPool {
    inner: Arc<(Mutex<Vec<OwnedFd>>, Condvar)>,
}

impl NetnsPool {
    /// Starts the helper thread that keeps `size` namespaces ready.
    pub fn start(size: usize) -> std::io::Result<NetnsPool> {
        let inner: Arc<(Mutex<Vec<OwnedFd>>, Condvar)> =
            Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let home = open_ns("/proc/thread-self/ns/net")?;
        let shared = inner.clone();
        std::thread::Builder::new()
            .name("netns-pool".into())
            .spawn(move || {
                loop {
                    // Wait until the pool needs another one.
                    {
                        let (lock, cv) = &*shared;
                        let Ok(mut ready) = lock.lock() else { return };
                        while ready.len() >= size {
                            match cv.wait(ready) {
                                Ok(r) => ready = r,
                                Err(_) => return,
                            }
                        }
                    }
                    // Not while the start that took one is still under way: both
                    // would compete for the same cores.
                    std::thread::sleep(REFILL_DELAY);
                    let ns = match make_one(&home) {
                        Ok(Some(ns)) => ns,
                        // Could not make one (a shortage): starts make their own; try later.
                        Ok(None) => {
                            std::thread::sleep(std::time::Duration::from_secs(1));
                            continue;
                        }
                        // Stuck in a foreign namespace: stop making any.
                        Err(()) => return,
                    };
                    let (lock, _) = &*shared;
                    match lock.lock() {
                        Ok(mut ready) => ready.push(ns),
                        Err(_) => return,
                    }
                }
            })?;
        Ok(NetnsPool { inner })
    }

    /// A fresh namespace with `lo` up, if one is ready.
    pub fn take(&self) -> Option<OwnedFd> {
        let (lock, cv) = &*self.inner;
        let ns = lock.lock().ok()?.pop();
        cv.notify_one();
        ns
    }
}

/// A fresh namespace with `lo` up, made by a thread that ends right after
/// (no thread of the caller changes namespace).
pub fn fresh() -> std::io::Result<OwnedFd> {
    std::thread::scope(|s| {
        s.spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            let ns = open_ns("/proc/thread-self/ns/net")?;
            if !crate::launch::bring_loopback_up() {
                return Err(std::io::Error::other("bringing lo up failed"));
            }
            Ok(ns)
        })
        .join()
        .map_err(|_| std::io::Error::other("namespace thread panicked"))?
    })
}

fn open_ns(path: &str) -> std::io::Result<OwnedFd> {
    Ok(std::fs::File::open(path)?.into())
}

/// Makes a namespace in this thread, brings `lo` up, and comes back home.
/// `Err` if the thread could not come back (it must then make no more).
fn make_one(home: &OwnedFd) -> Result<Option<OwnedFd>, ()> {
    if unshare(CloneFlags::CLONE_NEWNET).is_err() {
        return Ok(None);
    }
    let ns = open_ns("/proc/thread-self/ns/net").ok();
    let up = crate::launch::bring_loopback_up();
    setns(home.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|_| ())?;
    Ok(ns.filter(|_| up))
}

#[cfg(test)]
mod tests {
    #[test]
    #[ignore = "root: run the README's test command"]
    fn root_takes_fresh_namespaces() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let pool = super::NetnsPool::start(2).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let a = loop {
            if let Some(ns) = pool.take() {
                break ns;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the pool made nothing"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let own = std::fs::metadata("/proc/self/ns/net").unwrap();
        use std::os::unix::fs::MetadataExt;
        let theirs = std::fs::File::from(a).metadata().unwrap();
        assert_ne!(own.ino(), theirs.ino(), "a pooled namespace is the host's");
    }
}
