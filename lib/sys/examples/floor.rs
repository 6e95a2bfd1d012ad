//! The in-process floor for container start: clone3 into new pid, mount, uts,
//! ipc, net and cgroup namespaces, exec /bin/true, wait. No mounts, no cgroup,
//! no privilege drop: what any launcher pays at least.
//!
//! With `--link`, the floor of a container with a network: the child waits
//! while the parent gives its new network namespace an `eth0` (a veth pair
//! made into it, the host end an isolated port of a bridge, an address, a
//! default route: `sys::net::attach_site`, what the emperor does), then it
//! execs. The bridge, `floor0`, is made in the namespace the example runs
//! in (run it in one of its own: `ip netns exec NS ...`) and removed at the
//! end; each pair goes with its child's namespace.
//!
//! `cargo run --release -p sys --example floor -- [RUNS] [--link]` prints
//! the median, p95 and min in microseconds.
#![allow(unsafe_code)]

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::Instant;

use sys::net::{Netlink, SiteLink};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(200);
    let mut net = args.iter().any(|a| a == "--link").then(|| {
        let mut host = Netlink::open().expect("rtnetlink");
        let bridge = host.ensure_bridge("floor0").expect("bridge floor0");
        let gateway = Ipv4Addr::new(10, 201, 0, 1);
        host.add_address(bridge, gateway.into(), 16)
            .expect("the bridge's address");
        (host, bridge, gateway)
    });
    let flags = libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWCGROUP;
    let path = c"/bin/true";
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs + 10 {
        let mut gate = [0; 2];
        // SAFETY: `gate` has room for the two descriptors pipe2 writes.
        let made = unsafe { libc::pipe2(gate.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(made, 0, "pipe2: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just made by pipe2 and are owned here only.
        let (gate_r, gate_w) =
            unsafe { (OwnedFd::from_raw_fd(gate[0]), OwnedFd::from_raw_fd(gate[1])) };
        let wait_gate = net.is_some();
        let t = Instant::now();
        // SAFETY: a fork-like clone (no CLONE_VM, no stack); the child only
        // calls read, execve and _exit, all async-signal-safe.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                flags as libc::c_ulong | libc::SIGCHLD as libc::c_ulong,
                0,
                0,
                0,
                0,
            )
        };
        if pid == 0 {
            // SAFETY: the child of the clone above; pointers prepared before it.
            unsafe {
                if wait_gate {
                    let mut b = 0u8;
                    libc::read(gate[0], (&mut b as *mut u8).cast(), 1);
                }
                libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
                libc::_exit(127);
            }
        }
        assert!(pid > 0, "clone: {}", std::io::Error::last_os_error());
        drop(gate_r);
        if let Some((host, bridge, gateway)) = net.as_mut() {
            let ns =
                std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("the child's namespace");
            let link = SiteLink {
                host_name: format!("flr{i}"),
                v4: (
                    Ipv4Addr::new(10, 201, 1 + (i / 250) as u8, 1 + (i % 250) as u8),
                    16,
                ),
                gateway4: *gateway,
                v6: None,
            };
            sys::net::attach_site(host, *bridge, ns.as_fd(), &link).expect("the child's link");
            // SAFETY: one byte from a live buffer to our own pipe.
            unsafe { libc::write(gate[1], [1u8].as_ptr().cast(), 1) };
        }
        drop(gate_w);
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        times.push(t.elapsed().as_micros() as u64);
    }
    if let Some((mut host, bridge, _)) = net {
        let _ = host.delete(bridge);
    }
    let mut t: Vec<u64> = times.split_off(10);
    t.sort_unstable();
    println!(
        "{{\"runs\": {runs}, \"median_us\": {}, \"p95_us\": {}, \"min_us\": {}}}",
        t[t.len() / 2],
        t[t.len() * 95 / 100],
        t[0]
    );
}
