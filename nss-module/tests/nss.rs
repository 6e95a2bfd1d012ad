//! The module loaded by glibc itself, by name, as `getent` and any program
//! would: a private mount namespace binds an nsswitch.conf naming it over
//! /etc/nsswitch.conf (the host's file is never touched).

use std::path::{Path, PathBuf};
use std::process::Command;

use model::nss::{encode, Tenant};

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(table: Option<&[u8]>) -> Setup {
        e2e::require_root();
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("lib");
        std::fs::create_dir_all(&lib).unwrap();
        let module = e2e::bin_dir().join("libnss_imperium.so");
        assert!(module.is_file(), "{} not built", module.display());
        std::os::unix::fs::symlink(&module, lib.join("libnss_imperium.so.2")).unwrap();
        std::fs::write(
            dir.path().join("nsswitch.conf"),
            "passwd: files imperium\ngroup: files imperium\nshadow: files imperium\ninitgroups: files imperium\nhosts: files imperium\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        if let Some(t) = table {
            std::fs::write(dir.path().join("state/tenants.nss"), t).unwrap();
        }
        Setup { dir }
    }

    /// Runs a program with the module in the NSS chain; (exit code, stdout).
    fn run(&self, program: &Path, args: &[&str]) -> (i32, String) {
        let conf = self.dir.path().join("nsswitch.conf");
        let script = format!(
            "mount --bind {} /etc/nsswitch.conf && exec \"$@\"",
            conf.display()
        );
        let out = Command::new("unshare")
            .args(["-m", "sh", "-c", &script, "sh"])
            .arg(program)
            .args(args)
            .env("LD_LIBRARY_PATH", self.dir.path().join("lib"))
            .env("IMPERIUM_STATE_DIR", self.dir.path().join("state"))
            .output()
            .unwrap();
        let code = out
            .status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {out:?}"));
        (code, String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn getent(&self, args: &[&str]) -> (i32, String) {
        self.run(Path::new("getent"), args)
    }
}

fn tenants() -> Vec<u8> {
    let list: Vec<Tenant> = (0..100)
        .map(|i| Tenant {
            name: format!("site{i}"),
            uid: 30000 + i,
            home: format!("/home/site{i}"),
            shell: "/bin/bash".into(),
        })
        .collect();
    encode(&list)
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_getent_resolves_tenants_by_name_and_id() {
    let s = Setup::new(Some(&tenants()));
    assert_eq!(
        s.getent(&["passwd", "site52"]),
        (
            0,
            "site52:x:30052:30052:site52:/home/site52:/bin/bash".into()
        )
    );
    assert_eq!(
        s.getent(&["passwd", "30007"]).1,
        "site7:x:30007:30007:site7:/home/site7:/bin/bash"
    );
    assert_eq!(
        s.getent(&["group", "site52"]),
        (0, "site52:x:30052:site52".into())
    );
    assert_eq!(s.getent(&["group", "30099"]).1, "site99:x:30099:site99");
    assert_eq!(
        s.getent(&["passwd", "nobody-here"]).0,
        2,
        "unknown names are not found"
    );
    assert_eq!(
        s.getent(&["passwd", "root"]).0,
        0,
        "the files source still answers first"
    );
    // Locked, no ageing: what a stock pam_unix account check accepts.
    assert_eq!(
        s.getent(&["shadow", "site52"]),
        (0, "site52:!:::::::".into())
    );
    assert_eq!(s.getent(&["shadow", "nobody-here"]).0, 2);
    // getgrouplist(3) with no primary group: initgroups_dyn adds the tenant's own.
    let (code, groups) = s.getent(&["initgroups", "site52"]);
    assert_eq!(
        (code, groups.split_whitespace().collect::<Vec<_>>()),
        (0, vec!["site52", "30052"])
    );
    let (code, id) = s.run(Path::new("id"), &["site3"]);
    assert_eq!(
        (code, id.as_str()),
        (0, "uid=30003(site3) gid=30003(site3) groups=30003(site3)")
    );
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_a_missing_or_corrupt_table_is_unavailable_never_a_crash() {
    let missing = Setup::new(None);
    assert_eq!(missing.getent(&["passwd", "site1"]).0, 2);
    assert_eq!(missing.getent(&["passwd", "root"]).0, 0);
    let mut torn = tenants();
    torn.truncate(torn.len() / 2);
    let mut garbage = tenants();
    for (i, b) in garbage.iter_mut().enumerate().skip(16) {
        *b = (i * 31 % 251) as u8;
    }
    for bad in [torn, garbage, b"IMPNSS1\0".to_vec(), Vec::new()] {
        let s = Setup::new(Some(&bad));
        for args in [
            ["passwd", "site1"],
            ["passwd", "30001"],
            ["group", "site1"],
            ["group", "30001"],
            ["shadow", "site1"],
            ["initgroups", "site1"],
        ] {
            let (code, _) = s.getent(&args);
            assert!(code == 2 || code == 0, "{args:?}: exit {code}");
        }
        assert_eq!(s.getent(&["passwd", "root"]).0, 0);
    }
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_a_short_buffer_gets_erange() {
    let s = Setup::new(Some(&tenants()));
    let src = s.dir.path().join("small.c");
    std::fs::write(
        &src,
        r#"#include <pwd.h>
#include <grp.h>
#include <stdio.h>
#include <errno.h>
#include <shadow.h>
int main(void) {
    struct passwd pw, *res = 0; struct group gr, *gres = 0; struct spwd sp, *sres = 0;
    char small[8], big[1024], big2[1024];
    int e1 = getpwnam_r("site52", &pw, small, sizeof small, &res);
    int e2 = getpwnam_r("site52", &pw, big, sizeof big, &res);
    int e3 = getgrgid_r(30052, &gr, small, sizeof small, &gres);
    int e4 = getgrgid_r(30052, &gr, big2, sizeof big2, &gres);
    int e5 = getspnam_r("site52", &sp, small, sizeof small, &sres);
    char big3[256];
    int e6 = getspnam_r("site52", &sp, big3, sizeof big3, &sres);
    printf("%d %d %s %d %d %s %d %d %s\n", e1 == ERANGE, e2, res ? res->pw_dir : "-", e3 == ERANGE, e4, gres ? gres->gr_mem[0] : "-",
           e5 == ERANGE, e6, sres ? sres->sp_pwdp : "-");
    return 0;
}
"#,
    )
    .unwrap();
    let exe: PathBuf = s.dir.path().join("small");
    let cc = Command::new("cc")
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(cc.status.success(), "{cc:?}");
    assert_eq!(
        s.run(&exe, &[]),
        (0, "1 0 /home/site52 1 0 site52 1 0 !".into())
    );
}

#[test]
fn the_module_exports_the_nss_entry_points() {
    let syms = e2e::exported_functions(&e2e::bin_dir().join("libnss_imperium.so"));
    for f in [
        "_nss_imperium_getpwnam_r",
        "_nss_imperium_getpwuid_r",
        "_nss_imperium_getgrnam_r",
        "_nss_imperium_getgrgid_r",
        "_nss_imperium_getspnam_r",
        "_nss_imperium_initgroups_dyn",
        "_nss_imperium_gethostbyname_r",
        "_nss_imperium_gethostbyname2_r",
    ] {
        assert!(syms.iter().any(|s| s == f), "{f} not exported: {syms:?}");
    }
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_site_names_under_imperium_resolve_to_their_addresses() {
    use model::nss::hosts::{encode, Host};
    let s = Setup::new(Some(&tenants()));
    let hosts = encode(&[
        Host {
            name: "site52".into(),
            v4: "10.199.1.2".parse().unwrap(),
            v6: Some("fd69:6d70:6572::1:2".parse().unwrap()),
        },
        Host {
            name: "old".into(),
            v4: "10.199.0.9".parse().unwrap(),
            v6: None,
        },
    ]);
    std::fs::write(s.dir.path().join("state/hosts.nss"), hosts).unwrap();
    // Through getaddrinfo (without AI_ADDRCONFIG, which `getent ahosts`
    // sets: a host with no address of a family gets no answer in it) and
    // gethostbyname2 (getent hosts).
    let gai = |name: &str, family: &str| {
        s.run(
            Path::new("/usr/bin/python3"),
            &[
                "-c",
                &format!(
                    "import socket; print(sorted({{a[4][0] for a in socket.getaddrinfo('{name}', None, socket.{family})}}))"
                ),
            ],
        )
    };
    assert_eq!(
        gai("site52.imperium", "AF_INET"),
        (0, "['10.199.1.2']".into())
    );
    assert_eq!(
        gai("SITE52.imperium", "AF_INET6"),
        (0, "['fd69:6d70:6572::1:2']".into())
    );
    assert_eq!(
        s.getent(&["hosts", "old.imperium"]),
        (0, "10.199.0.9      old.imperium".into())
    );
    // Only names under the domain, only vassals with an address.
    for miss in ["site52", "nobody.imperium", "x.site52.imperium"] {
        assert_eq!(s.getent(&["hosts", miss]).0, 2, "{miss}");
    }
    // A torn table answers nothing (and the next source may).
    std::fs::write(s.dir.path().join("state/hosts.nss"), b"IMPNSS1\0torn").unwrap();
    assert_eq!(s.getent(&["hosts", "site52.imperium"]).0, 2);
}
