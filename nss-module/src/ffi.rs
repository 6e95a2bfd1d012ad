//! The C side: glibc's NSS entry points, the table mapped read-only, and the
//! packing of answers into the caller's buffer.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::lookup::{find, hosts_path, table_path, Found, Key};
use model::nss::hosts::Host;

/// `enum nss_status`.
const NSS_STATUS_TRYAGAIN: c_int = -2;
const NSS_STATUS_UNAVAIL: c_int = -1;
const NSS_STATUS_NOTFOUND: c_int = 0;
const NSS_STATUS_SUCCESS: c_int = 1;

extern "C" {
    /// glibc's `secure_getenv(3)` (not in the libc crate).
    fn secure_getenv(name: *const c_char) -> *mut c_char;
}

/// Runs `f`; a panic becomes "unavailable" (it never unwinds into libc).
fn guard(f: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(NSS_STATUS_UNAVAIL)
}

/// `IMPERIUM_STATE_DIR`, unless this is a setuid or setgid program.
fn state_env() -> Option<std::ffi::OsString> {
    // SAFETY: secure_getenv (glibc) reads the environment and returns NULL in a
    // setuid or setgid program; the name is a valid C string.
    let env = unsafe { secure_getenv(c"IMPERIUM_STATE_DIR".as_ptr()) };
    (!env.is_null()).then(|| {
        // SAFETY: a non-null result of secure_getenv is a NUL-terminated string.
        let s = unsafe { CStr::from_ptr(env) };
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(s.to_bytes()).to_os_string()
    })
}

/// Maps the table read-only and looks `key` up.
fn lookup(key: Key<'_>) -> Result<Option<Found>, ()> {
    let table = mapfile::Mapped::open(&table_path(state_env())).map_err(|_| ())?;
    find(&table, key)
}

/// Maps the hosts table read-only and looks a host name up.
fn lookup_host(name: &str) -> Result<Option<Host>, ()> {
    let table = mapfile::Mapped::open(&hosts_path(state_env())).map_err(|_| ())?;
    model::nss::hosts::find(&table, name).map_err(|_| ())
}

/// A found entry with a packer over the caller's buffer, or the status that
/// says why there is none.
///
/// # Safety
/// `buf` is valid for writes of `buflen` bytes for as long as the packer is used.
unsafe fn answer(
    found: Result<Option<Found>, ()>,
    buf: *mut c_char,
    buflen: usize,
) -> Result<(Found, Packer), c_int> {
    match found {
        // SAFETY: the caller's contract is the packer's.
        Ok(Some(f)) => Ok((f, unsafe { Packer::new(buf, buflen) })),
        Ok(None) => Err(NSS_STATUS_NOTFOUND),
        Err(()) => Err(NSS_STATUS_UNAVAIL),
    }
}

/// Copies strings into the caller's buffer, NUL-terminated.
struct Packer {
    at: *mut c_char,
    left: usize,
}

impl Packer {
    /// A packer over the caller's buffer.
    ///
    /// # Safety
    /// `at` is valid for writes of `left` bytes for as long as the packer is used.
    unsafe fn new(at: *mut c_char, left: usize) -> Packer {
        Packer { at, left }
    }

    fn str(&mut self, s: &str) -> Option<*mut c_char> {
        let need = s.len() + 1;
        if need > self.left || s.contains('\0') {
            return None;
        }
        let p = self.at;
        // SAFETY: `need` bytes are left in the caller's buffer from `at`.
        unsafe {
            std::ptr::copy_nonoverlapping(s.as_ptr() as *const c_char, p, s.len());
            *p.add(s.len()) = 0;
            self.at = p.add(need);
        }
        self.left -= need;
        Some(p)
    }

    /// A copy of `b` (an address), where the packer stands.
    fn bytes(&mut self, b: &[u8]) -> Option<*mut c_char> {
        if b.len() > self.left {
            return None;
        }
        let p = self.at;
        // SAFETY: `b.len()` bytes are left in the caller's buffer from `at`.
        unsafe {
            std::ptr::copy_nonoverlapping(b.as_ptr() as *const c_char, p, b.len());
            self.at = p.add(b.len());
        }
        self.left -= b.len();
        Some(p)
    }

    /// Room for `n` pointers, aligned.
    fn ptrs(&mut self, n: usize) -> Option<*mut *mut c_char> {
        let align = std::mem::align_of::<*mut c_char>();
        let pad = (align - (self.at as usize) % align) % align;
        let need = pad + n * std::mem::size_of::<*mut c_char>();
        if need > self.left {
            return None;
        }
        // SAFETY: `need` bytes are left; the result is aligned for pointers.
        let p = unsafe { self.at.add(pad) } as *mut *mut c_char;
        // SAFETY: as above.
        self.at = unsafe { self.at.add(need) };
        self.left -= need;
        Some(p)
    }
}

/// # Safety
/// `errnop` is valid (glibc's contract).
unsafe fn range(errnop: *mut c_int) -> c_int {
    // SAFETY: the caller passes a valid errno pointer.
    unsafe { *errnop = libc::ERANGE };
    NSS_STATUS_TRYAGAIN
}

/// # Safety
/// glibc's contract for `getpw*_r` backends: valid pointers, `buf` of `buflen` bytes.
unsafe fn fill_passwd(
    found: Result<Option<Found>, ()>,
    pwd: *mut libc::passwd,
    buf: *mut c_char,
    buflen: usize,
    errnop: *mut c_int,
) -> c_int {
    // SAFETY: `buf` holds `buflen` bytes (glibc's contract, this function's).
    let (f, mut p) = match unsafe { answer(found, buf, buflen) } {
        Ok(x) => x,
        Err(status) => return status,
    };
    let (Some(name), Some(pass), Some(gecos), Some(home), Some(shell)) = (
        p.str(&f.name),
        p.str("x"),
        p.str(&f.name),
        p.str(&f.home),
        p.str(&f.shell),
    ) else {
        // SAFETY: glibc's errno pointer.
        return unsafe { range(errnop) };
    };
    // SAFETY: `pwd` is the caller's struct; the strings live in its buffer.
    unsafe {
        (*pwd).pw_name = name;
        (*pwd).pw_passwd = pass;
        (*pwd).pw_uid = f.uid;
        (*pwd).pw_gid = f.uid;
        (*pwd).pw_gecos = gecos;
        (*pwd).pw_dir = home;
        (*pwd).pw_shell = shell;
    }
    NSS_STATUS_SUCCESS
}

/// # Safety
/// glibc's contract for `getgr*_r` backends.
unsafe fn fill_group(
    found: Result<Option<Found>, ()>,
    grp: *mut libc::group,
    buf: *mut c_char,
    buflen: usize,
    errnop: *mut c_int,
) -> c_int {
    // SAFETY: `buf` holds `buflen` bytes (glibc's contract, this function's).
    let (f, mut p) = match unsafe { answer(found, buf, buflen) } {
        Ok(x) => x,
        Err(status) => return status,
    };
    let (Some(members), Some(name), Some(pass), Some(member)) =
        (p.ptrs(2), p.str(&f.name), p.str("x"), p.str(&f.name))
    else {
        // SAFETY: glibc's errno pointer.
        return unsafe { range(errnop) };
    };
    // SAFETY: `members` points at two pointer slots in the caller's buffer;
    // `grp` is the caller's struct.
    unsafe {
        *members = member;
        *members.add(1) = std::ptr::null_mut();
        (*grp).gr_name = name;
        (*grp).gr_passwd = pass;
        (*grp).gr_gid = f.uid;
        (*grp).gr_mem = members;
    }
    NSS_STATUS_SUCCESS
}

/// The name glibc asks for, if it is UTF-8.
///
/// # Safety
/// `name` is null or a NUL-terminated string that lives for `'a`.
unsafe fn name_of<'a>(name: *const c_char) -> Option<&'a str> {
    if name.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated string (this function's contract).
    unsafe { CStr::from_ptr(name) }.to_str().ok()
}

/// An NSS entry point that looks a tenant up by name and fills glibc's struct.
macro_rules! by_name {
    ($(#[$doc:meta])* $entry:ident, $out:ty, $fill:ident) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// Called by glibc with valid pointers.
        #[no_mangle]
        pub unsafe extern "C" fn $entry(
            name: *const c_char,
            out: *mut $out,
            buf: *mut c_char,
            buflen: libc::size_t,
            errnop: *mut c_int,
        ) -> c_int {
            guard(|| {
                // SAFETY: glibc passes a NUL-terminated name for the call.
                match unsafe { name_of(name) } {
                    // SAFETY: glibc's pointers, passed on.
                    Some(n) => unsafe { $fill(lookup(Key::Name(n)), out, buf, buflen, errnop) },
                    None => NSS_STATUS_NOTFOUND,
                }
            })
        }
    };
}

/// An NSS entry point that looks a tenant up by id and fills glibc's struct.
macro_rules! by_id {
    ($(#[$doc:meta])* $entry:ident, $id:ty, $out:ty, $fill:ident) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// Called by glibc with valid pointers.
        #[no_mangle]
        pub unsafe extern "C" fn $entry(
            id: $id,
            out: *mut $out,
            buf: *mut c_char,
            buflen: libc::size_t,
            errnop: *mut c_int,
        ) -> c_int {
            // SAFETY: glibc's pointers, passed on.
            guard(|| unsafe { $fill(lookup(Key::Id(id)), out, buf, buflen, errnop) })
        }
    };
}

by_name!(
    /// `getpwnam_r` for tenants.
    _nss_imperium_getpwnam_r,
    libc::passwd,
    fill_passwd
);
by_id!(
    /// `getpwuid_r` for tenants.
    _nss_imperium_getpwuid_r,
    libc::uid_t,
    libc::passwd,
    fill_passwd
);
by_name!(
    /// `getgrnam_r`: each tenant has a group of its own name.
    _nss_imperium_getgrnam_r,
    libc::group,
    fill_group
);
by_id!(
    /// `getgrgid_r`: the tenant's own group (gid = uid).
    _nss_imperium_getgrgid_r,
    libc::gid_t,
    libc::group,
    fill_group
);

/// # Safety
/// glibc's contract for `getspnam_r` backends.
unsafe fn fill_shadow(
    found: Result<Option<Found>, ()>,
    sp: *mut libc::spwd,
    buf: *mut c_char,
    buflen: usize,
    errnop: *mut c_int,
) -> c_int {
    // SAFETY: `buf` holds `buflen` bytes (glibc's contract, this function's).
    let (f, mut p) = match unsafe { answer(found, buf, buflen) } {
        Ok(x) => x,
        Err(status) => return status,
    };
    let (Some(name), Some(pass)) = (p.str(&f.name), p.str("!")) else {
        // SAFETY: glibc's errno pointer.
        return unsafe { range(errnop) };
    };
    // SAFETY: `sp` is the caller's struct; the strings live in its buffer.
    unsafe {
        (*sp).sp_namp = name;
        (*sp).sp_pwdp = pass;
        // No password ageing: a tenant has no password, only keys.
        (*sp).sp_lstchg = -1;
        (*sp).sp_min = -1;
        (*sp).sp_max = -1;
        (*sp).sp_warn = -1;
        (*sp).sp_inact = -1;
        (*sp).sp_expire = -1;
        (*sp).sp_flag = libc::c_ulong::MAX;
    }
    NSS_STATUS_SUCCESS
}

by_name!(
    /// `getspnam_r`: a tenant's password is locked (`!`) and has no ageing, so a
    /// stock `pam_unix` account stack accepts a key login through PAM, and an sshd
    /// without PAM (which would not land the tenant in its container) refuses it.
    _nss_imperium_getspnam_r,
    libc::spwd,
    fill_shadow
);

/// `initgroups_dyn`: a tenant's only group is its own (gid = uid); it is added
/// unless it is already the primary group glibc starts from.
///
/// # Safety
/// Called by glibc with valid pointers; `*groupsp` is a malloc'd array of
/// `*size` gids, `*start` of them in use.
#[no_mangle]
pub unsafe extern "C" fn _nss_imperium_initgroups_dyn(
    user: *const c_char,
    group: libc::gid_t,
    start: *mut libc::c_long,
    size: *mut libc::c_long,
    groupsp: *mut *mut libc::gid_t,
    limit: libc::c_long,
    errnop: *mut c_int,
) -> c_int {
    guard(|| {
        // SAFETY: glibc passes a NUL-terminated user name for the call.
        let Some(n) = (unsafe { name_of(user) }) else {
            return NSS_STATUS_NOTFOUND;
        };
        let gid = match lookup(Key::Name(n)) {
            Ok(Some(f)) => f.uid,
            Ok(None) => return NSS_STATUS_NOTFOUND,
            Err(()) => return NSS_STATUS_UNAVAIL,
        };
        if gid == group {
            return NSS_STATUS_SUCCESS;
        }
        // SAFETY: glibc's pointers: start, size and groupsp describe its array.
        unsafe {
            if *start >= *size {
                if limit > 0 && *size >= limit {
                    return NSS_STATUS_SUCCESS; // full: glibc keeps what it has
                }
                let mut grown = (*size).max(1) * 2;
                if limit > 0 {
                    grown = grown.min(limit);
                }
                let p = libc::realloc(
                    (*groupsp).cast(),
                    grown as usize * std::mem::size_of::<libc::gid_t>(),
                );
                if p.is_null() {
                    *errnop = libc::ENOMEM;
                    return NSS_STATUS_TRYAGAIN;
                }
                *groupsp = p.cast();
                *size = grown;
            }
            *(*groupsp).add(*start as usize) = gid;
            *start += 1;
        }
        NSS_STATUS_SUCCESS
    })
}

/// `h_errno` values (netdb.h).
const NETDB_INTERNAL: c_int = -1;
const HOST_NOT_FOUND: c_int = 1;
const NO_DATA: c_int = 4;

/// Fills a `hostent` for `<vassal>.imperium` in family `af`.
///
/// # Safety
/// glibc's contract for `gethostbyname2_r` backends: valid pointers, `buf` of
/// `buflen` bytes.
unsafe fn fill_hostent(
    found: Result<Option<Host>, ()>,
    af: c_int,
    out: *mut libc::hostent,
    buf: *mut c_char,
    buflen: usize,
    errnop: *mut c_int,
    h_errnop: *mut c_int,
) -> c_int {
    let fail = |status: c_int, h: c_int| {
        // SAFETY: glibc passes a valid h_errno pointer.
        unsafe { *h_errnop = h };
        status
    };
    let host = match found {
        Ok(Some(h)) => h,
        Ok(None) => return fail(NSS_STATUS_NOTFOUND, HOST_NOT_FOUND),
        Err(()) => return fail(NSS_STATUS_UNAVAIL, HOST_NOT_FOUND),
    };
    let v4;
    let v6;
    let addr: &[u8] = match (af, host.v6) {
        (libc::AF_INET, _) => {
            v4 = host.v4.octets();
            &v4
        }
        (libc::AF_INET6, Some(a)) => {
            v6 = a.octets();
            &v6
        }
        (libc::AF_INET6, None) => return fail(NSS_STATUS_NOTFOUND, NO_DATA),
        _ => {
            // SAFETY: a valid errno pointer (glibc's contract).
            unsafe { *errnop = libc::EAFNOSUPPORT };
            return fail(NSS_STATUS_UNAVAIL, NETDB_INTERNAL);
        }
    };
    // SAFETY: the caller's buffer, `buflen` bytes (this function's contract).
    let mut p = unsafe { Packer::new(buf, buflen) };
    let name = format!("{}.{}", host.name, model::nss::hosts::DOMAIN);
    // Pointer arrays first (aligned), the address right after them (aligned too).
    let (Some(aliases), Some(list)) = (p.ptrs(1), p.ptrs(2)) else {
        // SAFETY: glibc's pointers.
        return fail(unsafe { range(errnop) }, NETDB_INTERNAL);
    };
    let (Some(a), Some(n)) = (p.bytes(addr), p.str(&name)) else {
        // SAFETY: glibc's pointers.
        return fail(unsafe { range(errnop) }, NETDB_INTERNAL);
    };
    // SAFETY: `aliases` and `list` point into the caller's buffer with room
    // for 1 and 2 pointers; `out` is glibc's hostent.
    unsafe {
        *aliases = std::ptr::null_mut();
        *list = a;
        *list.add(1) = std::ptr::null_mut();
        (*out).h_name = n;
        (*out).h_aliases = aliases;
        (*out).h_addrtype = af;
        (*out).h_length = addr.len() as c_int;
        (*out).h_addr_list = list;
    }
    NSS_STATUS_SUCCESS
}

/// `gethostbyname2_r`: `<vassal>.imperium` is the vassal's address, IPv4 or IPv6.
///
/// # Safety
/// Called by glibc with valid pointers.
#[no_mangle]
pub unsafe extern "C" fn _nss_imperium_gethostbyname2_r(
    name: *const c_char,
    af: c_int,
    out: *mut libc::hostent,
    buf: *mut c_char,
    buflen: libc::size_t,
    errnop: *mut c_int,
    h_errnop: *mut c_int,
) -> c_int {
    guard(|| {
        // SAFETY: glibc passes a NUL-terminated name for the call.
        let found = match unsafe { name_of(name) } {
            Some(n) => lookup_host(n),
            None => Ok(None),
        };
        // SAFETY: glibc's pointers, passed on.
        unsafe { fill_hostent(found, af, out, buf, buflen, errnop, h_errnop) }
    })
}

/// `gethostbyname_r`: the IPv4 answer of [`_nss_imperium_gethostbyname2_r`].
///
/// # Safety
/// Called by glibc with valid pointers.
#[no_mangle]
pub unsafe extern "C" fn _nss_imperium_gethostbyname_r(
    name: *const c_char,
    out: *mut libc::hostent,
    buf: *mut c_char,
    buflen: libc::size_t,
    errnop: *mut c_int,
    h_errnop: *mut c_int,
) -> c_int {
    // SAFETY: glibc's pointers, passed on.
    unsafe {
        _nss_imperium_gethostbyname2_r(name, libc::AF_INET, out, buf, buflen, errnop, h_errnop)
    }
}
