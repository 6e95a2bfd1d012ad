//! `getpwnam_r` through glibc with 100,000 tenants: libnss_imperium's table
//! against libnss_files reading a passwd file with the same entries, in the
//! same run. Each source is measured alone (`passwd: imperium` or
//! `passwd: files`) in a private mount namespace whose /etc/nsswitch.conf and
//! /etc/passwd are bound from a temporary directory: the host's are untouched.
//!
//! Run as root after `cargo build --release --workspace`:
//! `target/release/examples/lookup_bench [TENANTS] [LOOKUPS]`.

// The FFI edge: glibc's getpwnam_r, called as any program calls it.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use model::nss::{encode, Tenant};

fn name(i: u64) -> String {
    format!("site{i}")
}

/// A small deterministic generator, so both sources look up the same names.
fn picks(n: u64, count: usize) -> Vec<u64> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        })
        .collect()
}

/// Runs inside the private namespace: times each lookup, prints a summary.
fn measure(source: &str, n: u64, count: usize) {
    let mut buf = vec![0u8; 1024];
    let mut times: Vec<f64> = Vec::with_capacity(count);
    for i in picks(n, count) {
        let c = CString::new(name(i)).unwrap();
        // SAFETY: passwd is plain data that getpwnam_r fills.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut res: *mut libc::passwd = std::ptr::null_mut();
        let t = Instant::now();
        // SAFETY: valid name, struct, buffer and result pointer.
        let rc = unsafe {
            libc::getpwnam_r(
                c.as_ptr(),
                &mut pw,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut res,
            )
        };
        times.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(rc == 0 && !res.is_null(), "{source}: site{i} not found");
        assert_eq!(pw.pw_uid as u64, 30000 + i);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    println!(
        "{source:9} {n} entries, {count} lookups: median {:.2} us, p99 {:.2} us, mean {:.2} us",
        times[times.len() / 2],
        times[times.len() * 99 / 100],
        mean
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--measure") {
        measure(&args[2], args[3].parse().unwrap(), args[4].parse().unwrap());
        return;
    }
    let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let count: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2_000);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tenants: Vec<Tenant> = (0..n)
        .map(|i| Tenant {
            name: name(i),
            uid: 30000 + i as u32,
            home: format!("/home/{}", name(i)),
            shell: "/bin/bash".into(),
        })
        .collect();
    std::fs::create_dir_all(d.join("state")).unwrap();
    std::fs::write(d.join("state/tenants.nss"), encode(&tenants)).unwrap();
    let mut passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    for t in &tenants {
        passwd.push_str(&format!(
            "{0}:x:{1}:{1}:{0}:{2}:{3}\n",
            t.name, t.uid, t.home, t.shell
        ));
    }
    std::fs::write(d.join("passwd"), passwd).unwrap();
    let lib = d.join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    let exe = std::env::current_exe().unwrap();
    let module = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("libnss_imperium.so");
    assert!(module.is_file(), "{} not built", module.display());
    std::os::unix::fs::symlink(&module, lib.join("libnss_imperium.so.2")).unwrap();
    println!(
        "table {} bytes, passwd {} bytes",
        std::fs::metadata(d.join("state/tenants.nss"))
            .unwrap()
            .len(),
        std::fs::metadata(d.join("passwd")).unwrap().len()
    );
    for source in ["imperium", "files", "imperium", "files"] {
        let conf = d.join(format!("nsswitch.{source}"));
        std::fs::write(&conf, format!("passwd: {source}\ngroup: files\n")).unwrap();
        let script = format!(
            "mount --bind {} /etc/nsswitch.conf && mount --bind {} /etc/passwd && exec \"$@\"",
            conf.display(),
            d.join("passwd").display()
        );
        let st = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
            .arg(&exe)
            .args(["--measure", source, &n.to_string(), &count.to_string()])
            .env("LD_LIBRARY_PATH", &lib)
            .env("IMPERIUM_STATE_DIR", d.join("state"))
            .status()
            .unwrap();
        assert!(st.success());
    }
}
