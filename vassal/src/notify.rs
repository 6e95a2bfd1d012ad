//! The site's notifications: alarms raised by the supervisor and messages from
//! the admin or the reseller, kept in `~/.imperium/notifications.db` (SQLite).

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde::Serialize;

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notification {
    /// Its number, increasing.
    pub id: i64,
    /// When, in seconds since the Unix epoch.
    pub at: u64,
    /// The same as a local date and time (`YYYY-MM-DD HH:MM:SS`, the
    /// container's time zone, which is the host's).
    pub date: String,
    /// `oom`, `memory`, `restart-loop`, `admin`, ...
    pub kind: String,
    /// One line for the tenant.
    pub message: String,
}

/// The database of the home `home`.
pub fn path(home: &Path) -> PathBuf {
    model::layout::home::notifications(home)
}

fn open(home: &Path) -> rusqlite::Result<Connection> {
    let _ = std::fs::create_dir_all(model::layout::home::private(home));
    let db = Connection::open(path(home))?;
    db.busy_timeout(std::time::Duration::from_secs(2))?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS notifications (
             id INTEGER PRIMARY KEY,
             at INTEGER NOT NULL,
             kind TEXT NOT NULL,
             message TEXT NOT NULL
         );",
    )?;
    Ok(db)
}

/// Stores a notification.
pub fn add(home: &Path, kind: &str, message: &str) -> rusqlite::Result<()> {
    let at = crate::clock::wall_secs();
    open(home)?.execute(
        "INSERT INTO notifications (at, kind, message) VALUES (?1, ?2, ?3)",
        (at as i64, kind, message),
    )?;
    Ok(())
}

/// The newest `limit` notifications, oldest first.
pub fn list(home: &Path, limit: usize) -> rusqlite::Result<Vec<Notification>> {
    let db = open(home)?;
    let mut stmt =
        db.prepare("SELECT id, at, kind, message, datetime(at, 'unixepoch', 'localtime') FROM notifications ORDER BY id DESC LIMIT ?1")?;
    let mut out: Vec<Notification> = stmt
        .query_map([limit as i64], |r| {
            Ok(Notification {
                id: r.get(0)?,
                at: r.get::<_, i64>(1)? as u64,
                kind: r.get(2)?,
                message: r.get(3)?,
                date: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stores_and_lists_in_order() {
        let home = tempfile::tempdir().unwrap();
        assert!(super::list(home.path(), 10).unwrap().is_empty());
        for i in 0..5 {
            super::add(home.path(), "admin", &format!("message {i}")).unwrap();
        }
        let got = super::list(home.path(), 3).unwrap();
        let msgs: Vec<&str> = got.iter().map(|n| n.message.as_str()).collect();
        assert_eq!(msgs, ["message 2", "message 3", "message 4"]);
        assert!(got.windows(2).all(|w| w[0].id < w[1].id));
        // A local date, as `date` would print it.
        let d = &got[0].date;
        assert!(
            d.len() == 19 && d.as_bytes()[4] == b'-' && d.as_bytes()[13] == b':',
            "{d}"
        );
    }
}
