//! The C side: libpam's entry points, and the few system calls that move the
//! calling process (sshd's privileged monitor) into a tenant's container.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use crate::login::{decide, Args, Refusal, Target, Verdict};

const PAM_SUCCESS: c_int = 0;
const PAM_SERVICE_ERR: c_int = 3;
const PAM_SYSTEM_ERR: c_int = 4;
const PAM_PERM_DENIED: c_int = 6;
const PAM_SESSION_ERR: c_int = 14;
const PAM_IGNORE: c_int = 25;
const PAM_ERROR_MSG: c_int = 3;
const LOG_ERR: c_int = 3;
const LOG_INFO: c_int = 6;

/// libpam's opaque handle.
#[repr(C)]
pub struct PamHandle {
    _private: [u8; 0],
}

#[link(name = "pam")]
extern "C" {
    fn pam_get_user(pamh: *mut PamHandle, user: *mut *const c_char, prompt: *const c_char)
        -> c_int;
    fn pam_syslog(pamh: *const PamHandle, priority: c_int, fmt: *const c_char, ...);
    fn pam_putenv(pamh: *mut PamHandle, name_value: *const c_char) -> c_int;
    fn pam_prompt(
        pamh: *mut PamHandle,
        style: c_int,
        response: *mut *mut c_char,
        fmt: *const c_char,
        ...
    ) -> c_int;
}

/// The namespaces a session joins: all of the container's but its user and
/// time namespaces (it has none of its own).
const NAMESPACES: c_int = libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNS;

/// The same, one file each, in the order that works without the atomic
/// `setns(pidfd)` (kernels before 5.8): the mount namespace last.
const NS_FILES: [(&str, c_int); 6] = [
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("pid", libc::CLONE_NEWPID),
    ("mnt", libc::CLONE_NEWNS),
];

/// libpam's handle for the hook being run.
struct Pam(*mut PamHandle);

impl Pam {
    /// The handle libpam passed to a hook.
    ///
    /// # Safety
    /// `pamh` is the live handle of the current call: every method passes it
    /// to libpam, and it must outlive the `Pam`.
    unsafe fn new(pamh: *mut PamHandle) -> Pam {
        Pam(pamh)
    }

    fn log(&self, priority: c_int, msg: &str) {
        let Ok(m) = CString::new(msg.replace('\0', " ")) else {
            return;
        };
        // SAFETY: a live handle from libpam; "%s" with one C string argument.
        unsafe { pam_syslog(self.0, priority, c"%s".as_ptr(), m.as_ptr()) };
    }

    /// Sets `NAME=value` in the session's environment (sshd passes it on,
    /// over its own defaults); whether libpam took it.
    fn putenv(&self, name_value: &str) -> bool {
        let Ok(nv) = CString::new(name_value) else {
            return false;
        };
        // SAFETY: a live handle from libpam; libpam copies the string.
        unsafe { pam_putenv(self.0, nv.as_ptr()) == PAM_SUCCESS }
    }

    /// A short line for the user (sshd shows it before refusing).
    fn tell(&self, msg: &str) {
        let Ok(m) = CString::new(msg.replace('\0', " ")) else {
            return;
        };
        // SAFETY: as pam_error(3) does: no response wanted, "%s" and one string.
        unsafe {
            pam_prompt(
                self.0,
                PAM_ERROR_MSG,
                std::ptr::null_mut(),
                c"%s".as_ptr(),
                m.as_ptr(),
            )
        };
    }

    fn user(&self) -> Option<String> {
        let mut user: *const c_char = std::ptr::null();
        // SAFETY: a live handle; libpam stores a pointer it owns in `user`.
        let rc = unsafe { pam_get_user(self.0, &mut user, std::ptr::null()) };
        if rc != PAM_SUCCESS || user.is_null() {
            return None;
        }
        // SAFETY: libpam returned a NUL-terminated string that lives as long as the handle.
        Some(unsafe { CStr::from_ptr(user) }.to_str().ok()?.to_owned())
    }
}

/// The module arguments as strings.
///
/// # Safety
/// `argv` holds `argc` C strings (libpam's contract).
unsafe fn arguments(argc: c_int, argv: *const *const c_char) -> Vec<String> {
    (0..argc.max(0) as usize)
        .filter_map(|i| {
            // SAFETY: i < argc, per libpam.
            let p = unsafe { *argv.add(i) };
            // SAFETY: each argument is a NUL-terminated string.
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        })
        .collect()
}

/// The passwd uid of `user`, as the calling program's NSS resolves it.
fn passwd_uid(user: &str) -> Option<u32> {
    let name = CString::new(user).ok()?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: passwd is plain data filled by getpwnam_r.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut res: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: valid name, struct, buffer of buf.len() bytes and result pointer.
        let rc = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut pw,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut res,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        return (rc == 0 && !res.is_null()).then_some(pw.pw_uid);
    }
}

/// What both hooks start with: who logs in, and may they.
///
/// # Safety
/// libpam's arguments.
unsafe fn verdict(
    pam: &Pam,
    argc: c_int,
    argv: *const *const c_char,
) -> Result<Verdict, (c_int, String)> {
    // SAFETY: libpam's argc/argv.
    let words = unsafe { arguments(argc, argv) };
    let args = Args::parse(words.iter().map(String::as_str))
        .map_err(|e| (PAM_SERVICE_ERR, format!("pam_imperium: {e}")))?;
    let user = pam
        .user()
        .ok_or((PAM_SERVICE_ERR, "pam_imperium: no user".to_owned()))?;
    let Some(uid) = passwd_uid(&user) else {
        return Ok(Verdict::NotTenant);
    };
    decide(&args, &user, uid, Path::new("/proc")).map_err(|Refusal(m)| (PAM_PERM_DENIED, m))
}

/// Runs a hook body; a panic is a system error, never an unwind into C.
fn guard(f: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(PAM_SYSTEM_ERR)
}

/// `pam_sm_acct_mgmt`: refuses a tenant early (before sshd creates the
/// session) when its container is not running, is suspended, or is not
/// verifiably the one on record. Not a tenant: `PAM_IGNORE`.
///
/// # Safety
/// Called by libpam with a live handle and its arguments.
#[no_mangle]
pub unsafe extern "C" fn pam_sm_acct_mgmt(
    pamh: *mut PamHandle,
    _flags: c_int,
    argc: c_int,
    argv: *const *const c_char,
) -> c_int {
    guard(|| {
        // SAFETY: libpam's live handle for this call.
        let pam = unsafe { Pam::new(pamh) };
        // SAFETY: libpam's arguments, passed on.
        match unsafe { verdict(&pam, argc, argv) } {
            Ok(Verdict::NotTenant) => PAM_IGNORE,
            Ok(Verdict::Enter(_)) => PAM_SUCCESS,
            Err((rc, msg)) => {
                pam.log(LOG_ERR, &msg);
                pam.tell(&msg);
                rc
            }
        }
    })
}

/// `pam_sm_open_session`: moves the calling process into the tenant's site
/// cgroup and namespaces and roots it in the container. sshd forks the user's
/// process after this, so the shell starts inside. Any failure refuses the
/// session (sshd then runs no command).
///
/// # Safety
/// Called by libpam with a live handle and its arguments.
#[no_mangle]
pub unsafe extern "C" fn pam_sm_open_session(
    pamh: *mut PamHandle,
    _flags: c_int,
    argc: c_int,
    argv: *const *const c_char,
) -> c_int {
    let rc = guard(|| {
        // SAFETY: libpam's live handle for this call.
        let pam = unsafe { Pam::new(pamh) };
        // SAFETY: libpam's arguments, passed on.
        let target = match unsafe { verdict(&pam, argc, argv) } {
            Ok(Verdict::NotTenant) => return PAM_IGNORE,
            Ok(Verdict::Enter(t)) => t,
            Err((_, msg)) => {
                pam.log(LOG_ERR, &msg);
                pam.tell(&msg);
                return PAM_SESSION_ERR;
            }
        };
        match enter(&target) {
            Ok(()) => {
                pam.log(
                    LOG_INFO,
                    &format!("session entered container {}", target.vassal),
                );
                // The container's PATH (its tools, `vassal` first), for a
                // command run without a login shell too.
                if !pam.putenv(&format!("PATH={}", model::layout::inside::PATH)) {
                    pam.log(LOG_ERR, "could not set the session's PATH");
                }
                PAM_SUCCESS
            }
            Err(e) => {
                let msg = format!("cannot enter container {}: {e}", target.vassal);
                pam.log(LOG_ERR, &msg);
                pam.tell(&msg);
                PAM_SESSION_ERR
            }
        }
    });
    if rc == PAM_SYSTEM_ERR {
        PAM_SESSION_ERR
    } else {
        rc
    }
}

/// `pam_sm_close_session`: nothing to undo (the process leaves with the session).
///
/// # Safety
/// Called by libpam.
#[no_mangle]
pub unsafe extern "C" fn pam_sm_close_session(
    _pamh: *mut PamHandle,
    _flags: c_int,
    _argc: c_int,
    _argv: *const *const c_char,
) -> c_int {
    PAM_SUCCESS
}

/// `pam_sm_setcred`: no credentials of ours.
///
/// # Safety
/// Called by libpam.
#[no_mangle]
pub unsafe extern "C" fn pam_sm_setcred(
    _pamh: *mut PamHandle,
    _flags: c_int,
    _argc: c_int,
    _argv: *const *const c_char,
) -> c_int {
    PAM_IGNORE
}

/// `pam_sm_authenticate`: not an authentication module.
///
/// # Safety
/// Called by libpam.
#[no_mangle]
pub unsafe extern "C" fn pam_sm_authenticate(
    _pamh: *mut PamHandle,
    _flags: c_int,
    _argc: c_int,
    _argv: *const *const c_char,
) -> c_int {
    PAM_IGNORE
}

fn errno(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Opens `path` with `flags | O_CLOEXEC`.
fn open(path: &str, flags: c_int) -> Result<OwnedFd, String> {
    let c = CString::new(path).map_err(|_| format!("{path}: NUL in path"))?;
    // SAFETY: a valid C path; the fd returned is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno(path));
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The join, strictly in this order: everything opened while `/proc` is still
/// the host's; the cgroup before its namespace; all namespaces at once through
/// the init's pidfd; then the container's root.
fn enter(t: &Target) -> Result<(), String> {
    // SAFETY: pidfd_open(2) with a pid and no flags; the fd is owned below.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, t.pid, 0) } as c_int;
    if raw < 0 {
        return Err(errno("pidfd_open"));
    }
    // SAFETY: a fresh fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
    // The pidfd names whatever process had the pid when it was opened: check
    // it is still the init on record, so a reused pid is never joined.
    if model::record::start_time(Path::new("/proc"), t.pid).ok() != Some(t.start_time) {
        return Err("the container's init is gone".into());
    }
    let root = open(
        &format!("/proc/{}/root", t.pid),
        libc::O_PATH | libc::O_DIRECTORY,
    )?;
    // Moving a process takes the kernel's global threadgroup lock for
    // writing, which waits for an RCU grace period (15-40 ms here, per login).
    // On v1 the calling thread (the only one: the monitor is single-threaded)
    // moves itself through `tasks` with "0", a path that skips that lock; v2
    // has no such path for a domain cgroup: the process's pid to cgroup.procs.
    let joins: Vec<(OwnedFd, String)> = t
        .cgroup_dirs
        .iter()
        .map(|d| {
            let tasks = d.join("tasks");
            Ok(if tasks.exists() {
                (
                    open(&tasks.display().to_string(), libc::O_WRONLY)?,
                    "0".to_owned(),
                )
            } else {
                let procs = d.join("cgroup.procs").display().to_string();
                (
                    open(&procs, libc::O_WRONLY)?,
                    std::process::id().to_string(),
                )
            })
        })
        .collect::<Result<_, String>>()?;
    for (fd, me) in &joins {
        // SAFETY: writing a few bytes from a live buffer to an fd we own.
        let n = unsafe { libc::write(fd.as_raw_fd(), me.as_ptr().cast(), me.len()) };
        if n != me.len() as isize {
            return Err(errno("joining the site's cgroup"));
        }
    }
    // A tenant's session is a likelier OOM victim in its site than the
    // site's init, as the init's own children are (raising needs no
    // privilege; a failure leaves the kernel's default).
    if let Ok(f) = open("/proc/self/oom_score_adj", libc::O_WRONLY) {
        // SAFETY: writing a few bytes from a live buffer to an fd we own.
        let _ = unsafe { libc::write(f.as_raw_fd(), b"300".as_ptr().cast(), 3) };
    }
    // SAFETY: setns(2) on a pidfd we own: joins all the namespaces at once or none.
    if unsafe { libc::setns(pidfd.as_raw_fd(), NAMESPACES) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(format!("setns: {err}"));
        }
        // A kernel without setns(pidfd): nothing was joined, so /proc is still
        // the host's; join one namespace file at a time.
        let files = ns_files(t.pid)?;
        join_files(&files).map_err(|e| format!("setns: {e}"))?;
    }
    root_in(&root).map_err(|e| format!("entering the container's root: {e}"))?;
    confine(&t.seccomp).map_err(|e| format!("loading the containers' seccomp filter: {e}"))
}

/// What the container's init has too: `no_new_privs` and the containers'
/// seccomp filter, for this process and everything the session starts.
fn confine(program: &[u8]) -> std::io::Result<()> {
    // Copied into instructions, so the program is aligned as the kernel wants.
    let insns: Vec<libc::sock_filter> = program
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let prog = libc::sock_fprog {
        len: insns.len() as u16,
        filter: insns.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl(2) with plain integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a filter program that lives across the call; the kernel copies it.
    if unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The init's namespace files, in [`NS_FILES`] order, opened while `/proc`
/// is still the host's.
fn ns_files(pid: i32) -> Result<Vec<(OwnedFd, c_int)>, String> {
    NS_FILES
        .iter()
        .map(|(n, ty)| Ok((open(&format!("/proc/{pid}/ns/{n}"), libc::O_RDONLY)?, *ty)))
        .collect()
}

/// Joins namespace files in order. Only system calls, no allocation.
fn join_files(files: &[(OwnedFd, c_int)]) -> std::io::Result<()> {
    for (fd, ty) in files {
        // SAFETY: setns(2) on a namespace fd we own, with its type.
        if unsafe { libc::setns(fd.as_raw_fd(), *ty) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `fchdir` + `chroot(".")` + `chdir("/")`: the container's root even if its
/// init were chrooted inside its mount namespace. Only system calls.
fn root_in(root: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: fchdir to a directory fd we own; chroot and chdir with static paths.
    let ok = unsafe {
        libc::fchdir(root.as_raw_fd()) == 0
            && libc::chroot(c".".as_ptr()) == 0
            && libc::chdir(c"/".as_ptr()) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    fn link(pid: u32, ns: &str) -> std::path::PathBuf {
        std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap()
    }

    /// The fallback for kernels without `setns(pidfd)`: the namespace files
    /// one by one. Run for real: a process joins a target made by `unshare`
    /// between fork and exec, and the host compares the namespace links.
    #[test]
    #[ignore = "root: run the README's test command"]
    fn namespace_files_join_every_namespace_of_the_target() {
        // --kill-child: the target (pid 1 of its namespace) dies with the
        // wrapper, which the guard kills even when an assertion fails.
        let wrapper = Reap(
            Command::new("unshare")
                .args(["--fork", "--kill-child", "--pid", "--mount", "--uts"])
                .args(["--ipc", "--net", "--cgroup", "--mount-proc", "sleep", "60"])
                .spawn()
                .unwrap(),
        );
        // The target is the wrapper's child (pid 1 of the new pid namespace).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let target: u32 = loop {
            let children =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", wrapper.0.id()))
                    .unwrap_or_default();
            let pid = children
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok());
            // Joined once it sleeps, no longer unshare setting up.
            if let Some(p) = pid.filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c == "sleep\n")
            }) {
                break p;
            }
            assert!(std::time::Instant::now() < deadline, "no target");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let files = ns_files(target as i32).unwrap();
        let root = open(
            &format!("/proc/{target}/root"),
            libc::O_PATH | libc::O_DIRECTORY,
        )
        .unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30").stdin(Stdio::null());
        // SAFETY: between fork and exec the closure makes system calls only.
        unsafe {
            cmd.pre_exec(move || {
                join_files(&files)?;
                root_in(&root)
            });
        }
        let joined = Reap(cmd.spawn().unwrap());
        for ns in ["mnt", "uts", "ipc", "net", "cgroup"] {
            assert_eq!(link(joined.0.id(), ns), link(target, ns), "{ns}");
            assert_ne!(
                link(joined.0.id(), ns),
                link(std::process::id(), ns),
                "{ns}"
            );
        }
        // A pid namespace is joined for the children (sshd forks after the join).
        assert_eq!(link(joined.0.id(), "pid_for_children"), link(target, "pid"));
        drop((joined, wrapper));
        wait_gone(target);
    }

    /// A child killed and waited for when dropped.
    struct Reap(std::process::Child);

    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Polls until `pid` has left /proc (its parent reaps it).
    fn wait_gone(pid: u32) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "{pid} outlived the test"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
