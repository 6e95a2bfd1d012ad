//! The built module exports what libpam looks up, and links libpam itself.

use std::process::Command;

#[test]
fn the_module_exports_the_pam_hooks() {
    let module = e2e::bin_dir().join("libpam_imperium.so");
    let syms = e2e::exported_functions(&module);
    for f in [
        "pam_sm_acct_mgmt",
        "pam_sm_open_session",
        "pam_sm_close_session",
        "pam_sm_setcred",
        "pam_sm_authenticate",
    ] {
        assert!(syms.iter().any(|s| s == f), "{f} not exported: {syms:?}");
    }
    let deps = Command::new("readelf")
        .arg("-d")
        .arg(&module)
        .output()
        .unwrap();
    let deps = String::from_utf8_lossy(&deps.stdout);
    assert!(deps.contains("[libpam.so.0]"), "{deps}");
}
