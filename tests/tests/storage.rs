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
        // Under its archived name once whole (a copy in progress is hidden).
        let d = std::fs::read_dir(&archive)
            .ok()?
            .flatten()
            .find(|d| !d.file_name().to_string_lossy().starts_with('.'))?;
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
        // A home from before quotas were on: 30 MiB deep in it, and a link
        // to 10 MiB outside it that must not count.
        let old = fs.mnt().join("old");
        std::fs::create_dir_all(old.join("www/data")).unwrap();
        std::fs::create_dir_all(fs.mnt().join("outside")).unwrap();
        std::fs::write(old.join("www/data/db"), vec![7u8; 30 << 20]).unwrap();
        std::fs::write(fs.mnt().join("outside/other"), vec![7u8; 10 << 20]).unwrap();
        std::os::unix::fs::symlink("../outside", old.join("www/outside")).unwrap();
        e.write("old", "kind = \"site\"\n[limits]\nstorage = \"100M\"\n");
        e.start();
        assert!(e.log().contains("project quotas"), "{}", e.log());
        wait_for(Duration::from_secs(20), "the old home walked", || {
            e.log()
                .contains("from before quotas now count")
                .then_some(())
        });
        let row = e.wait_row("old", "its older files counted", |r| {
            r["usage"]["storage"]
                .as_u64()
                .is_some_and(|b| b >= 30 << 20)
        });
        let used = row["usage"]["storage"].as_u64().unwrap();
        assert!(used < 40 << 20, "the link's target counted too: {row}");
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

/// The project of the file or directory at `path` (`None`: not there).
fn project_at(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    sys::quota::project(std::os::fd::AsFd::as_fd(&f))
        .ok()
        .map(|p| p.0)
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_a_home_from_before_quotas_joins_its_project_without_following_the_tenants_links() {
    use std::os::unix::fs::symlink;
    let fs = LoopFs::xfs_plain(1 << 30);
    let m = fs.mnt();
    let top = m.join("home");
    let outside = m.join("outside");
    std::fs::create_dir_all(top.join("a/b/c")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(top.join("a/b/c/file"), vec![1u8; 1 << 20]).unwrap();
    std::fs::write(outside.join("secret"), "root's").unwrap();
    symlink(&outside, top.join("to-outside")).unwrap();
    symlink(outside.join("secret"), top.join("a/to-secret")).unwrap();
    nix::unistd::mkfifo(
        &top.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    // Another filesystem mounted inside: not walked.
    std::fs::create_dir(top.join("mnt")).unwrap();
    let tmpfs = top.join("mnt");
    assert!(std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&tmpfs)
        .status()
        .unwrap()
        .success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(tmpfs.clone());
    std::fs::write(tmpfs.join("other"), "x").unwrap();
    // Deeper than the walk goes.
    let mut deep = top.join("deep");
    for _ in 0..sys::quota::MAX_DEPTH + 10 {
        deep.push("d");
    }
    std::fs::create_dir_all(&deep).unwrap();

    // A site's home inside its group's: another project's, left to it.
    std::fs::create_dir(top.join("site")).unwrap();
    let site = std::fs::File::open(top.join("site")).unwrap();
    sys::quota::set_project(std::os::fd::AsFd::as_fd(&site), 777).unwrap();
    std::fs::create_dir(top.join("site/data")).unwrap();
    std::fs::write(top.join("site/data/file"), "the site's").unwrap();

    let dir = std::fs::File::open(&top).unwrap();
    let tree = sys::quota::project_tree(std::os::fd::AsFd::as_fd(&dir), 4242).unwrap();
    assert_eq!(project_at(&top), Some(4242));
    for p in ["site", "site/data", "site/data/file"] {
        assert_eq!(project_at(&top.join(p)), Some(777), "{p} is the site's");
    }
    for p in ["a", "a/b", "a/b/c", "a/b/c/file"] {
        assert_eq!(project_at(&top.join(p)), Some(4242), "{p}");
    }
    for p in [outside.clone(), outside.join("secret"), deep.clone()] {
        assert_eq!(
            project_at(&p),
            Some(0),
            "{} is not the tenant's",
            p.display()
        );
    }
    assert_ne!(
        project_at(&tmpfs.join("other")),
        Some(4242),
        "another filesystem"
    );
    assert!(tree.moved >= 4 + sys::quota::MAX_DEPTH as u64, "{tree:?}");
    assert!(
        tree.skipped >= 5,
        "links, the fifo, the mount, the deepest: {tree:?}"
    );

    // The tenant swaps a directory for a link to the outside while the walk
    // runs, over and over: the outside never joins the project.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (top, outside, stop) = (top.clone(), outside.clone(), stop.clone());
        std::thread::spawn(move || {
            let (real, link) = (top.join("a"), top.join("a.link"));
            symlink(&outside, &link).unwrap();
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // RENAME_EXCHANGE: `a` is the directory or the link, never missing.
                nix::fcntl::renameat2(
                    None,
                    &real,
                    None,
                    &link,
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                )
                .unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    // (One project throughout: XFS refuses a rename between projects.)
    for round in 0..300u32 {
        let _ = sys::quota::project_tree(std::os::fd::AsFd::as_fd(&dir), 4242).unwrap();
        for p in [outside.clone(), outside.join("secret")] {
            assert_eq!(
                project_at(&p),
                Some(0),
                "round {round}: {} joined",
                p.display()
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        swapper.join().unwrap() > 300,
        "the swaps ran during the walks"
    );
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_a_btrfs_home_from_before_quotas_is_capped_after_the_readmes_steps() {
    let fs = LoopBtrfs::new(1 << 30);
    let mut e = Emperor::new();
    e.home_root = fs.mnt();
    // A plain directory: what a home made before quotas were on is.
    let home = fs.mnt().join("old");
    std::fs::create_dir_all(home.join("www")).unwrap();
    std::fs::write(home.join("www/index.html"), vec![b'x'; 5 << 20]).unwrap();
    e.write("old", "kind = \"site\"\n[limits]\nstorage = \"20M\"\n");
    // A home that is a subvolume already, with data not yet written out
    // when the emperor turns quotas on: counted all the same.
    let sub = fs.mnt().join("sub");
    assert!(std::process::Command::new("btrfs")
        .args(["-q", "subvolume", "create"])
        .arg(&sub)
        .status()
        .unwrap()
        .success());
    std::fs::write(sub.join("data"), vec![b'y'; 6 << 20]).unwrap();
    e.write("sub", "kind = \"site\"\n[limits]\nstorage = \"20M\"\n");
    e.start();
    e.wait_row("sub", "its data counted", |r| {
        let _ = std::process::Command::new("sync")
            .arg("-f")
            .arg(&sub)
            .status();
        r["usage"]["storage"].as_u64().is_some_and(|b| b >= 6 << 20)
    });
    let first = e.running_pid("old");
    let uid = e.row("old").unwrap()["uid"].as_u64().unwrap() as u32;
    // The tenant's, as the emperor before quotas made it.
    for p in [&home, &home.join("www"), &home.join("www/index.html")] {
        std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
    }
    assert!(e.row("old").unwrap()["usage"]["storage_limit"].is_null());
    assert!(e.log().contains("not a subvolume"), "{}", e.log());

    // The README's steps: freeze, copy into a subvolume, swap, restart.
    let run = |c: &mut std::process::Command| {
        let out = c.output().unwrap();
        assert!(out.status.success(), "{c:?}: {out:?}");
    };
    assert!(e.cli(&["suspend", "old"]).status.success());
    let new = fs.mnt().join("old.new");
    run(std::process::Command::new("btrfs")
        .args(["-q", "subvolume", "create"])
        .arg(&new));
    run(std::process::Command::new("cp")
        .args(["-a", "--reflink=always"])
        .arg(home.join("."))
        .arg(format!("{}/", new.display())));
    run(std::process::Command::new("mv")
        .arg(&home)
        .arg(fs.mnt().join("old.old")));
    run(std::process::Command::new("mv").arg(&new).arg(&home));
    assert!(e.cli(&["restart", "old"]).status.success());
    // btrfs counts at its next commit (30 s at most): now.
    run(std::process::Command::new("sync").arg("-f").arg(fs.mnt()));
    e.wait_row("old", "a new init, capped", |r| {
        r["state"] == "running"
            && r["pid"].as_i64() != Some(first as i64)
            && r["usage"]["storage_limit"] == 20u64 << 20
            // The copy's blocks are shared, and counted (at the next commit).
            && r["usage"]["storage"].as_u64().is_some_and(|b| b >= 5 << 20)
    });
    // The tenant's files came along, and the cap holds from inside.
    let (wrote, said) = write(&e, "old", "_admin/old", "big", 40);
    assert!(said.contains("Disk quota exceeded"), "{said}");
    assert!(wrote <= 20, "{wrote} MiB: {said}");
    let out = e.exec_in(
        e.running_pid("old"),
        uid,
        &e.cgroup("_admin/old"),
        "stat -c '%s %u' /home/old/www/index.html",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{} {uid}", 5u64 << 20)
    );
    drop(e);
    // The frozen copy of before, as the operator would remove it.
    let _ = std::fs::remove_dir_all(fs.mnt().join("old.old"));
}

#[test]
#[ignore = "root: run the README's test command"]
fn root_a_site_moving_to_another_group_takes_its_home_and_its_count_along() {
    let fs = LoopBtrfs::new(1 << 30);
    let mut e = Emperor::new();
    e.home_root = fs.mnt();
    for g in ["g1", "g2"] {
        e.write(
            g,
            "kind = \"group\"\nmode = \"overcommit\"\n[limits]\nmemory = \"1G\"\nstorage = \"200M\"\n",
        );
    }
    let site = |g: &str| {
        format!(
            "kind = \"site\"\ngroup = \"{g}\"\n[limits]\nmemory = \"128M\"\nstorage = \"100M\"\n"
        )
    };
    e.write("s", &site("g1"));
    e.start();
    let (wrote, said) = write(&e, "s", "g1/s", "data", 30);
    assert_eq!(wrote, 30, "{said}");
    let _ = std::process::Command::new("sync")
        .arg("-f")
        .arg(fs.mnt())
        .status();
    let used = |g: &str| e.row(g).unwrap()["usage"]["storage"].as_u64().unwrap_or(0);
    wait_for(Duration::from_secs(10), "g1 counts the site", || {
        (used("g1") >= 30 << 20).then_some(())
    });
    assert!(used("g2") < 1 << 20, "g2: {}", used("g2"));
    let first = e.running_pid("s");

    e.write("s", &site("g2"));
    e.wait_row("s", "running in g2", |r| {
        r["state"] == "running" && r["group"] == "g2" && r["pid"].as_i64() != Some(first as i64)
    });
    assert!(e.log().contains("home moved with the site"), "{}", e.log());
    // The tenant's file came along, and is counted in g2 now, not in g1.
    let out = e.exec_in(
        e.running_pid("s"),
        e.row("s").unwrap()["uid"].as_u64().unwrap() as u32,
        &e.cgroup("g2/s"),
        "stat -c %s /home/s/data",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (30u64 << 20).to_string(),
        "{out:?}"
    );
    let _ = std::process::Command::new("sync")
        .arg("-f")
        .arg(fs.mnt())
        .status();
    wait_for(Duration::from_secs(10), "g2 counts the site", || {
        (used("g2") >= 30 << 20 && used("g1") < 1 << 20).then_some(())
    });
    assert!(!fs.mnt().join("g1/s").exists(), "nothing left behind");
    let link = std::fs::read_link(fs.mnt().join("s")).unwrap();
    assert_eq!(link, std::path::Path::new("g2/s"), "the home's link");
    // The site is capped as before, and its group's cap holds it too.
    let (more, said) = write(&e, "s", "g2/s", "more", 100);
    assert!(said.contains("Disk quota exceeded"), "{said}");
    assert!(more <= 70, "{more} MiB: {said}");
}

#[test]
#[ignore = "root: run the README's test command"]
fn vm_a_site_moving_to_another_group_keeps_its_project_on_xfs() {
    // XFS refuses to rename a directory into one of another inherited
    // project (each group's home is its reseller's project).
    let fs = LoopFs::xfs(1 << 30);
    let mut e = Emperor::new();
    e.home_root = fs.mnt();
    for g in ["g1", "g2"] {
        e.write(
            g,
            "kind = \"group\"\nmode = \"overcommit\"\n[limits]\nmemory = \"1G\"\n",
        );
    }
    let site = |g: &str| {
        format!(
            "kind = \"site\"\ngroup = \"{g}\"\n[limits]\nmemory = \"128M\"\nstorage = \"40M\"\n"
        )
    };
    e.write("s", &site("g1"));
    e.start();
    let (wrote, said) = write(&e, "s", "g1/s", "data", 10);
    assert_eq!(wrote, 10, "{said}");
    let first = e.running_pid("s");
    e.write("s", &site("g2"));
    e.wait_row("s", "running in g2", |r| {
        r["state"] == "running" && r["group"] == "g2" && r["pid"].as_i64() != Some(first as i64)
    });
    assert!(e.log().contains("home moved with the site"), "{}", e.log());
    e.wait_row("s", "its file still counted", |r| {
        r["usage"]["storage"]
            .as_u64()
            .is_some_and(|b| b >= 10 << 20)
    });
    // Still capped by its own project from inside.
    let (more, said) = write(&e, "s", "g2/s", "more", 60);
    assert!(said.contains("No space left on device"), "{said}");
    assert!(more <= 30, "{more} MiB: {said}");
}
