//! The in-process floor for container start: clone3 into new pid, mount, uts,
//! ipc, net and cgroup namespaces, exec /bin/true, wait. No mounts, no cgroup,
//! no privilege drop: what any launcher pays at least.
//!
//! `cargo run --release -p sys --example floor -- [RUNS]` prints the median,
//! p95 and min in microseconds.
#![allow(unsafe_code)]

use std::time::Instant;

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
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
    for _ in 0..runs + 10 {
        let t = Instant::now();
        // SAFETY: a fork-like clone (no CLONE_VM, no stack); the child only
        // calls execve and _exit, both async-signal-safe.
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
                libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
                libc::_exit(127);
            }
        }
        assert!(pid > 0, "clone: {}", std::io::Error::last_os_error());
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        times.push(t.elapsed().as_micros() as u64);
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
