//! The emperor's CLI as an operator meets it, without root: clear one-line
//! errors when there is nothing to talk to or nothing to run.

use std::process::Command;

fn emperor() -> Command {
    Command::new(env!("CARGO_BIN_EXE_emperor"))
}

#[test]
fn status_says_when_the_emperor_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["restart", "site1"],
        &["shutdown"],
    ] {
        let out = emperor()
            .arg("--run-dir")
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("the emperor is not running"),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn serve_refuses_a_missing_vassal_binary() {
    let dir = tempfile::tempdir().unwrap();
    let out = emperor()
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .args(["serve", "--vassal-bin", "/nonexistent/vassal", "--vassals"])
        .arg(dir.path().join("v"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("vassal binary /nonexistent/vassal not found"));
}
