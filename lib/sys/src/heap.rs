//! The C allocator's idle memory.
//!
//! glibc's malloc keeps what a burst of work freed (a mass start, a whole
//! judgement, a shutdown wave) in its heap, where it counts in the process's
//! RSS until the same sizes are asked for again. `malloc_trim` hands those
//! free pages back to the kernel; the memory stays usable.
#![allow(unsafe_code)]

/// Returns the free pages of the allocator's heaps to the kernel; whether
/// any were returned. Costs a walk of the free lists (about a millisecond
/// for tens of MiB): for after a burst, not for every event.
pub fn trim() -> bool {
    // SAFETY: malloc_trim takes a plain integer and works on the allocator's
    // own state under its own locks; it frees nothing that is in use.
    unsafe { libc::malloc_trim(0) == 1 }
}
