//! A file mapped read-only, for the modules that run inside other programs
//! (sshd, every process that resolves a user name): one `open`, `fstat`,
//! `mmap`, and the fd closed at once; the mapping goes with the value. Reading
//! a big table this way costs the pages a lookup touches, not the file.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A read-only private mapping of a whole file.
#[derive(Debug)]
pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    /// Maps `path`. An empty file is an error (`InvalidData`): nothing to map.
    pub fn open(path: &Path) -> io::Result<Mapped> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: open(2) with a valid C path; the fd is closed below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: stat is plain data that fstat fills.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on the fd just opened, into a local struct.
        let len = if unsafe { libc::fstat(fd, &mut st) } == 0 {
            st.st_size.max(0) as usize
        } else {
            0
        };
        let map = if len == 0 {
            libc::MAP_FAILED
        } else {
            // SAFETY: a private read-only mapping of `len` bytes of an open file.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE,
                    fd,
                    0,
                )
            }
        };
        let err = io::Error::last_os_error();
        // SAFETY: closing the fd we opened; the mapping (if any) outlives it.
        unsafe { libc::close(fd) };
        if len == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidData));
        }
        if map == libc::MAP_FAILED {
            return Err(err);
        }
        Ok(Mapped { ptr: map, len })
    }
}

impl std::ops::Deref for Mapped {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `len` readable bytes are mapped at `ptr` until drop.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmapping what `open` mapped; no borrow of it outlives `self`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_a_file_and_refuses_empty_or_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, b"hello table").unwrap();
        assert_eq!(&*Mapped::open(&p).unwrap(), b"hello table");
        std::fs::write(&p, b"").unwrap();
        assert_eq!(
            Mapped::open(&p).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(
            Mapped::open(&dir.path().join("none")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
