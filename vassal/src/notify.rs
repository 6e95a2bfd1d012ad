//! The site's notifications, through `vassal-notify`: the program beside this
//! one that holds the SQLite database code, so that PID 1 does not map it.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// `vassal-notify`, beside this program (`/run/imperium/bin/` in a container).
pub fn helper() -> PathBuf {
    std::env::current_exe()
        .map(|p| p.with_file_name("vassal-notify"))
        .unwrap_or_else(|_| PathBuf::from(model::layout::inside::NOTIFY))
}

/// Runs `vassal-notify` with these arguments in place of this process;
/// returns only the reason it could not.
pub fn hand_over(args: &[String]) -> String {
    let helper = helper();
    let err = Command::new(&helper).args(args).exec();
    format!("running {}: {err}", helper.display())
}

/// Starts storing notifications (kind, message), in one transaction; the
/// caller reaps the child (its exit status says whether they were stored).
pub fn store(batch: &[&(&str, String)]) -> std::io::Result<Child> {
    let mut cmd = Command::new(helper());
    cmd.arg("notify")
        .args(
            batch
                .iter()
                .flat_map(|(k, m)| [OsStr::new(k), OsStr::new(m)]),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    crate::spawn::reset_signals(&mut cmd);
    cmd.spawn()
}
