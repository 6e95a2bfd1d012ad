//! The site's notifications: alarms raised by the supervisor and messages from
//! the admin or the reseller, kept in `~/.imperium/notifications.db` (SQLite).

use std::path::{Path, PathBuf};

use rusqlite::Connection;

pub use model::notification::Notification;

/// The longest message listed (the database is the tenant's: what it holds
/// is bounded on the way out).
const MESSAGE_MAX: usize = 1000;

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
         );
         CREATE TABLE IF NOT EXISTS marks (
             what TEXT PRIMARY KEY,
             upto INTEGER NOT NULL
         );",
    )?;
    Ok(db)
}

/// Seconds since the epoch: the one read of the clock here.
#[allow(clippy::disallowed_methods)]
fn wall_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Stores notifications (kind, message), all or none.
pub fn add(home: &Path, notes: &[(&str, &str)]) -> rusqlite::Result<()> {
    let at = wall_secs() as i64;
    let mut db = open(home)?;
    let tx = db.transaction()?;
    for (kind, message) in notes {
        tx.execute(
            "INSERT INTO notifications (at, kind, message) VALUES (?1, ?2, ?3)",
            (at, kind, message),
        )?;
    }
    tx.commit()
}

/// Up to which notification every one is read.
fn read_upto(db: &Connection) -> rusqlite::Result<i64> {
    use rusqlite::OptionalExtension;
    Ok(db
        .query_row("SELECT upto FROM marks WHERE what = 'read'", [], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0))
}

/// The newest `limit` notifications (only the unread ones when `unread`),
/// oldest first.
pub fn list(home: &Path, limit: usize, unread: bool) -> rusqlite::Result<Vec<Notification>> {
    let db = open(home)?;
    let upto = read_upto(&db)?;
    let mut stmt = db.prepare(
        "SELECT id, at, kind, message, datetime(at, 'unixepoch', 'localtime') FROM notifications \
         WHERE id > ?2 ORDER BY id DESC LIMIT ?1",
    )?;
    let after = if unread { upto } else { i64::MIN };
    let mut out: Vec<Notification> = stmt
        .query_map((limit as i64, after), |r| {
            let id: i64 = r.get(0)?;
            let mut message: String = r.get(3)?;
            if message.len() > MESSAGE_MAX {
                let mut end = MESSAGE_MAX;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
            }
            Ok(Notification {
                id,
                at: r.get::<_, i64>(1)? as u64,
                kind: r.get(2)?,
                message,
                date: r.get(4)?,
                read: id <= upto,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    out.reverse();
    Ok(out)
}

/// Marks every notification up to `upto` read (all of them when `None`);
/// the mark now. A mark never moves back.
pub fn mark_read(home: &Path, upto: Option<i64>) -> rusqlite::Result<i64> {
    let db = open(home)?;
    let last: i64 = db.query_row("SELECT COALESCE(MAX(id), 0) FROM notifications", [], |r| {
        r.get(0)
    })?;
    let upto = upto.unwrap_or(last).min(last).max(read_upto(&db)?);
    db.execute(
        "INSERT INTO marks (what, upto) VALUES ('read', ?1) \
         ON CONFLICT(what) DO UPDATE SET upto = excluded.upto",
        [upto],
    )?;
    Ok(upto)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stores_and_lists_in_order() {
        let home = tempfile::tempdir().unwrap();
        assert!(super::list(home.path(), 10, false).unwrap().is_empty());
        for i in 0..5 {
            super::add(home.path(), &[("admin", &format!("message {i}"))]).unwrap();
        }
        let got = super::list(home.path(), 3, false).unwrap();
        let msgs: Vec<&str> = got.iter().map(|n| n.message.as_str()).collect();
        assert_eq!(msgs, ["message 2", "message 3", "message 4"]);
        assert!(got.windows(2).all(|w| w[0].id < w[1].id));
        // A local date, as `date` would print it.
        let d = &got[0].date;
        assert!(
            d.len() == 19 && d.as_bytes()[4] == b'-' && d.as_bytes()[13] == b':',
            "{d}"
        );
        // Read up to the fourth: one unread left; a mark never moves back
        // nor past the last.
        let fourth = got[1].id;
        assert_eq!(super::mark_read(home.path(), Some(fourth)).unwrap(), fourth);
        let unread = super::list(home.path(), 10, true).unwrap();
        assert_eq!(unread.len(), 1);
        assert_eq!(unread[0].message, "message 4");
        assert!(!unread[0].read);
        assert!(super::list(home.path(), 10, false).unwrap()[3].read);
        assert_eq!(super::mark_read(home.path(), Some(1)).unwrap(), fourth);
        let last = super::mark_read(home.path(), Some(1 << 40)).unwrap();
        assert_eq!(last, got[2].id);
        assert!(super::list(home.path(), 10, true).unwrap().is_empty());
        // A long message is listed cut.
        super::add(home.path(), &[("admin", &"é".repeat(800))]).unwrap();
        let long = super::list(home.path(), 1, true).unwrap();
        assert!(long[0].message.len() <= 1000);
    }
}
