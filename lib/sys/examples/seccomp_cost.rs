//! What loading the default seccomp filter costs a container's child: the
//! kernel checks, translates and compiles the program and works out which
//! calls it always allows, at every start.
//!
//! `cargo run --release -p sys --example seccomp_cost -- [RUNS]` prints the
//! program's length and the median and p95 of the `prctl` that loads it, in
//! microseconds, each in a forked child of its own.
#![allow(unsafe_code)]

use std::io::Read;
use std::os::fd::FromRawFd;

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let prog = sys::seccomp::default_program().expect("the default filter");
    let fprog = libc::sock_fprog {
        len: (prog.len() / std::mem::size_of::<libc::sock_filter>()) as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut fds = [0; 2];
        // SAFETY: a plain pipe into an array of two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child makes only system calls and writes to its pipe
        // before _exit; the parent is single-threaded.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: the child: no allocation, raw system calls only.
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                let mut a: libc::timespec = std::mem::zeroed();
                let mut b: libc::timespec = std::mem::zeroed();
                libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut a);
                let r = libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &fprog as *const libc::sock_fprog,
                    0,
                    0,
                );
                libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut b);
                let ns: i64 = if r == 0 {
                    (b.tv_sec - a.tv_sec) * 1_000_000_000 + (b.tv_nsec - a.tv_nsec)
                } else {
                    -1
                };
                libc::write(fds[1], (&ns as *const i64).cast(), 8);
                libc::_exit(0);
            }
        }
        // SAFETY: the write end is ours to close; the read end is owned below.
        let mut r = unsafe {
            libc::close(fds[1]);
            std::fs::File::from_raw_fd(fds[0])
        };
        let mut buf = [0u8; 8];
        r.read_exact(&mut buf).expect("the child's figure");
        // SAFETY: reaps the child just forked.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        let ns = i64::from_ne_bytes(buf);
        assert!(ns >= 0, "the filter was refused");
        times.push(ns as f64 / 1000.0);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{} instructions; load: median {:.1} us, p95 {:.1} us",
        fprog.len,
        times[times.len() / 2],
        times[times.len() * 95 / 100]
    );
}
