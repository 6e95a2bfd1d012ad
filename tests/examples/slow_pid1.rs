//! A stand-in PID 1 for one end-to-end test: it waits, then becomes the real
//! vassal, which the test binds beside it in the place of `vassal-notify`
//! (`/run/imperium/bin/vassal-notify` inside the container). The wait opens
//! the window every init has between its exec and its own signal handling, so
//! that a stop sent in it can be seen to be kept, not dropped. It changes no
//! signal mask or handler of its own (the plan's mask is what the vassal gets).

use std::ffi::CString;
use std::os::unix::ffi::OsStringExt;

fn main() {
    std::thread::sleep(std::time::Duration::from_secs(2));
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.into_vec()).expect("no NUL in arguments"))
        .collect();
    let real = c"/run/imperium/bin/vassal-notify";
    // execv keeps the signal mask (std's Command would reset it).
    let err = nix::unistd::execv(real, &args).unwrap_err();
    eprintln!("slow_pid1: exec {real:?}: {err}");
    std::process::exit(127);
}
