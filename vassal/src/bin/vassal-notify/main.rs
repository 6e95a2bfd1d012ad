//! `vassal-notify`: the site's notifications database, on its own.
//!
//! SQLite (and the libm it links) stays out of PID 1: the supervisor starts
//! this program to store an alarm, and `vassal notify` and `vassal
//! notifications` hand their arguments to it. Every vassal maps what PID 1
//! links; this runs for a moment and is gone.

mod db;
#[path = "../../entry.rs"]
mod entry;

const USAGE: &str = "usage: vassal-notify notify KIND MESSAGE [KIND MESSAGE]...
       vassal-notify notifications [--json] [--unread] [-n COUNT]
       vassal-notify notifications read [UPTO]";

fn main() {
    entry::main(run)
}

fn run(args: &[String]) -> Result<i32, String> {
    let home = entry::home();
    let path = db::path(&home);
    let writing = |e: rusqlite::Error| format!("writing {}: {e}", path.display());
    let reading = |e: rusqlite::Error| format!("reading {}: {e}", path.display());
    match (
        args.first().map(String::as_str),
        args.get(1).map(String::as_str),
    ) {
        (Some("notify"), _) => {
            let pairs = &args[1..];
            if pairs.is_empty() || pairs.len() % 2 != 0 {
                return Err("notify needs a kind and a message (or several of each)".into());
            }
            let notes: Vec<(&str, &str)> = pairs
                .chunks(2)
                .map(|p| (p[0].as_str(), p[1].as_str()))
                .collect();
            db::add(&home, &notes).map_err(writing)?;
        }
        (Some("notifications"), Some("read")) => {
            let upto = match args.get(2) {
                None => None,
                Some(v) => Some(
                    v.parse::<i64>()
                        .map_err(|_| format!("{v:?} is not a notification's number"))?,
                ),
            };
            println!("{}", db::mark_read(&home, upto).map_err(writing)?);
        }
        (Some("notifications"), _) => {
            let json = args.iter().any(|a| a == "--json");
            let unread = args.iter().any(|a| a == "--unread");
            let n = args
                .iter()
                .position(|a| a == "-n")
                .and_then(|i| args.get(i + 1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(50usize)
                .min(1000);
            let list = db::list(&home, n, unread).map_err(reading)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else if list.is_empty() {
                println!("no notifications");
            } else {
                for n in list {
                    let mark = if n.read { ' ' } else { '*' };
                    println!("{:>5}{mark} {}  {:<12} {}", n.id, n.date, n.kind, n.message);
                }
            }
        }
        _ => {
            eprintln!("{USAGE}");
            return Ok(2);
        }
    }
    Ok(0)
}
