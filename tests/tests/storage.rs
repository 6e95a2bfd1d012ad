//! Disk quotas, end to end: the emperor's home root on a real btrfs (a loop
//! device the test makes and removes), tenants writing from inside their
//! containers.

use std::time::Duration;

use e2e::*;

/// Writes `mib` MiB to `file` in the site as its tenant: (MiB written, dd's complaint).
fn write(e: &Emperor, site: &str, cgroup: &str, file: &str, mib: u32) -> (u64, String) {
    let init = e.running_pid(site);
    let uid = e.row(site).unwrap()["uid"].as_u64().unwrap() as u32;
    let out = e.exec_in(
        init,
        uid,
        &e.cgroup(cgroup),
        &format!("dd if=/dev/zero of=/home/{site}/{file} bs=1M count={mib} conv=fsync 2>&1; stat -c %s /home/{site}/{file}"),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let size: u64 = text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    (size >> 20, text)
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_btrfs_enforces_site_and_group_storage_from_inside_the_containers() {
    let fs = LoopBtrfs::new(2 << 30);
    let mut e = Emperor::new();
    e.home_root = fs.mnt();
    e.write("small", "kind = \"site\"\n[limits]\nstorage = \"100M\"\n");
    e.write("free", "kind = \"site\"\n");
    e.write(
        "g",
        "kind = \"group\"\nmode = \"overcommit\"\n[limits]\nmemory = \"1G\"\nstorage = \"150M\"\n",
    );
    for s in ["g1", "g2"] {
        e.write(
            s,
            "kind = \"site\"\ngroup = \"g\"\n[limits]\nmemory = \"128M\"\nstorage = \"100M\"\n",
        );
    }
    e.start();
    assert!(
        e.log().contains("storage limits enforced by btrfs qgroups"),
        "{}",
        e.log()
    );

    // A site stops at its own limit, as the tenant sees it.
    let (wrote, said) = write(&e, "small", "_admin/small", "big", 300);
    assert!(said.contains("Disk quota exceeded"), "{said}");
    assert!((80..=100).contains(&wrote), "{wrote} MiB: {said}");
    // Hostile: a subvolume of its own (a qgroup outside the cap) or another
    // project id on its files would step out of the limit: both refused to a
    // tenant's own process (under the container's seccomp filter).
    let home = e.home_root.join("free");
    wait_for(Duration::from_secs(10), "free's vassals directory", || {
        home.join("vassals").is_dir().then_some(())
    });
    write_atomic(
        &home.join("vassals/escape.toml"),
        "command = [\"sh\", \"-c\", \"touch f; btrfs subvolume create escape; chattr -p 7 f; echo done\"]\n\
         workdir = \".\"\nrestart = \"never\"\n",
    );
    let log = home.join("logs/escape.log");
    let said = wait_for(Duration::from_secs(10), "the escape attempts", || {
        let t = std::fs::read_to_string(&log).ok()?;
        t.contains("done").then_some(t)
    });
    assert_eq!(
        said.matches("Operation not permitted").count(),
        2,
        "both refused: {said}"
    );
    assert!(!home.join("escape").exists(), "{said}");
    // Its neighbour writes on.
    let (free, said) = write(&e, "free", "_admin/free", "big", 120);
    assert_eq!(free, 120, "{said}");
    // The status shows the kernel's count and cap.
    let row = e.wait_row("small", "its disk usage", |r| {
        r["usage"]["storage"]
            .as_u64()
            .is_some_and(|b| b >= wrote << 20)
    });
    assert_eq!(row["usage"]["storage_limit"], 100u64 << 20, "{row}");
    // The tenant sees it too: the site's figures, and the alarm (kept while
    // the full home cannot store it, stored once there is room again).
    let vassal = |args: &str| {
        let out = e.exec_in(
            e.running_pid("small"),
            e.row("small").unwrap()["uid"].as_u64().unwrap() as u32,
            &e.cgroup("_admin/small"),
            &format!("HOME=/home/small /run/imperium/bin/vassal {args}"),
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let init = e.running_pid("small");
    let status = wait_for(Duration::from_secs(20), "the disk alarm", || {
        let s = vassal("status --json");
        let told = |list: &serde_json::Value| {
            list.as_array()
                .is_some_and(|l| l.iter().any(|n| n["kind"] == "disk"))
        };
        (told(&s["unsent"]) || told(&vassal("notifications --json"))).then_some(s)
    });
    assert_eq!(
        status["site"]["disk"]["bytesLimit"],
        100u64 << 20,
        "{status}"
    );
    assert_eq!(
        e.running_pid("small"),
        init,
        "a full home does not take PID 1 down"
    );
    let out = e.exec_in(
        init,
        e.row("small").unwrap()["uid"].as_u64().unwrap() as u32,
        &e.cgroup("_admin/small"),
        "rm /home/small/big",
    );
    assert!(out.status.success(), "{out:?}");
    let told = wait_for(
        Duration::from_secs(20),
        "the disk notification stored",
        || {
            vassal("notifications --json")
                .as_array()?
                .iter()
                .find(|n| n["kind"] == "disk")
                .cloned()
        },
    );
    assert!(
        told["message"]
            .as_str()
            .unwrap_or_default()
            .contains("storage limit"),
        "{told}"
    );

    // An overcommitted group: each site could take 100M, the group holds 150M.
    let (one, said) = write(&e, "g1", "g/g1", "big", 100);
    assert!(one >= 90, "{one} MiB: {said}");
    let (two, said) = write(&e, "g2", "g/g2", "big", 100);
    assert!(said.contains("Disk quota exceeded"), "{said}");
    assert!(one + two <= 150, "{one} + {two} MiB");
    let group = e.wait_row("g", "the group's usage", |r| {
        r["usage"]["storage"].as_u64().is_some()
    });
    assert_eq!(group["usage"]["storage_limit"], 150u64 << 20, "{group}");

    // An edit applies in place: room again without a restart.
    let init = e.running_pid("small");
    e.write("small", "kind = \"site\"\n[limits]\nstorage = \"200M\"\n");
    wait_for(Duration::from_secs(10), "the new limit", || {
        (e.row("small")?["usage"]["storage_limit"] == 200u64 << 20).then_some(())
    });
    let (more, said) = write(&e, "small", "_admin/small", "more", 50);
    assert_eq!(more, 50, "{said}");
    assert_eq!(e.running_pid("small"), init, "no restart");

    // A removed site's home (a subvolume) is archived with its files, and
    // purged for good.
    e.remove("free");
    let home = e.home_root.join("free");
    wait_for(Duration::from_secs(20), "free's home archived", || {
        (!home.exists()).then_some(())
    });
    let archive = e.state_dir.join("archive");
    let kept = wait_for(Duration::from_secs(20), "the archive", || {
        let d = std::fs::read_dir(&archive).ok()?.flatten().next()?;
        let f = d.path().join("big");
        (std::fs::metadata(&f).ok()?.len() == 120 << 20).then_some(d.path())
    });
    assert!(kept.exists());
    let out = e.cli(&["purge", "free"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!kept.exists());
}

/// Project quotas on XFS and ext4, from inside the containers. VM only
/// (`vm_`): this machine's kernel has no CONFIG_QUOTA; `scripts/test-vm`
/// runs it under Debian's kernel.
#[test]
#[ignore = "root: run the README's test command"]
fn vm_project_quotas_cap_bytes_and_inodes_on_xfs_and_ext4() {
    for (fs, full) in [
        // XFS answers ENOSPC at a project's limit, ext4 EDQUOT.
        (LoopFs::xfs(1 << 30), "No space left on device"),
        (LoopFs::ext4(1 << 30), "Disk quota exceeded"),
    ] {
        let mut e = Emperor::new();
        e.home_root = fs.mnt();
        e.write(
            "small",
            "kind = \"site\"\n[limits]\nstorage = \"20M\"\ninodes = 200\n",
        );
        e.write("free", "kind = \"site\"\n");
        e.start();
        assert!(e.log().contains("project quotas"), "{}", e.log());
        let (wrote, said) = write(&e, "small", "_admin/small", "big", 50);
        assert!(said.contains(full), "{said}");
        assert!(wrote <= 20, "{wrote} MiB: {said}");
        let (free, said) = write(&e, "free", "_admin/free", "big", 30);
        assert_eq!(free, 30, "{said}");
        // Many small files stop at the inode limit.
        let init = e.running_pid("small");
        let uid = e.row("small").unwrap()["uid"].as_u64().unwrap() as u32;
        let out = e.exec_in(
            init,
            uid,
            &e.cgroup("_admin/small"),
            "rm -f /home/small/big; mkdir -p /home/small/many && cd /home/small/many && \
             for i in $(seq 1 400); do touch f$i 2>/dev/null || break; done; ls | wc -l",
        );
        let files: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        assert!((150..200).contains(&files), "{files} files: {out:?}");
        let row = e.wait_row("small", "its inode count", |r| {
            r["usage"]["inodes"].as_u64().is_some_and(|n| n >= files)
        });
        assert_eq!(row["usage"]["inodes_limit"], 200, "{row}");
        assert_eq!(row["usage"]["storage_limit"], 20u64 << 20, "{row}");
        // An edit in place.
        e.write(
            "small",
            "kind = \"site\"\n[limits]\nstorage = \"60M\"\ninodes = 1000\n",
        );
        wait_for(Duration::from_secs(10), "the new limit", || {
            (e.row("small")?["usage"]["storage_limit"] == 60u64 << 20).then_some(())
        });
        let (more, said) = write(&e, "small", "_admin/small", "more", 30);
        assert_eq!(more, 30, "{said}");
        // `df` in the home shows the project's limit, not the filesystem's.
        let out = e.exec_in(
            e.running_pid("small"),
            uid,
            &e.cgroup("_admin/small"),
            "df -k /home/small | tail -1",
        );
        let df = String::from_utf8_lossy(&out.stdout).into_owned();
        let total: u64 = df
            .split_whitespace()
            .nth(1)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        assert_eq!(total, 60 << 10, "df: {df}");
        drop(e);
    }
}
