//! The default seccomp filter of a container, compiled by libseccomp in the
//! parent into a BPF program that the child loads with one `prctl` before exec.
//!
//! Tenants hold no capabilities, so most dangerous calls already fail; the filter
//! narrows the kernel surface further (keyrings, bpf, perf, userfaultfd,
//! io_uring, new namespaces, module and kexec calls, and the few ioctls that
//! would step out of a disk quota).

use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};

/// Why the filter could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeccompError {
    /// libseccomp refused a rule or the export.
    #[error("libseccomp: {0}")]
    Lib(#[from] libseccomp::error::SeccompError),
    /// Writing or reading the exported program.
    #[error("exporting the seccomp program: {0}")]
    Io(#[from] std::io::Error),
}

/// Calls refused with EPERM.
pub const DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "swapoff",
    "swapon",
    "syslog",
    "umount2",
    "unshare",
    "userfaultfd",
    "vhangup",
];

/// `ioctl` commands refused with EPERM: the ones that would let a tenant
/// step out of its disk quota. A btrfs subvolume or snapshot made inside a
/// home has a qgroup of its own, outside the home's cap and the group's; a
/// project id changed on the tenant's own files leaves the project quota
/// (the kernel lets an owner change it outside user namespaces).
pub const IOCTLS_DENIED: &[(u64, &str)] = &[
    (0x5000_9401, "BTRFS_IOC_SNAP_CREATE"),
    (0x5000_940e, "BTRFS_IOC_SUBVOL_CREATE"),
    (0x5000_9417, "BTRFS_IOC_SNAP_CREATE_V2"),
    (0x5000_9418, "BTRFS_IOC_SUBVOL_CREATE_V2"),
    (0x401c_5820, "FS_IOC_FSSETXATTR"),
];

/// Namespace flags refused in `clone`.
pub const NS_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// Builds the default filter and returns its BPF program (an array of
/// `struct sock_filter`, native endian).
pub fn default_program() -> Result<Vec<u8>, SeccompError> {
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow)?;
    // The calls in a binary tree, not a list: the kernel works out at each
    // load which calls the filter always allows by running it for every
    // call number, so a shorter path per call halves what every start pays
    // to load it (`examples/seccomp_cost.rs`: 46 us against 87), and calls
    // judged on their arguments (clone, ioctl) cost fewer instructions.
    ctx.set_ctl_optimize(2)?;
    for name in DENIED {
        // A call this architecture lacks needs no rule.
        if let Ok(call) = ScmpSyscall::from_name(name) {
            ctx.add_rule(ScmpAction::Errno(libc::EPERM), call)?;
        }
    }
    let clone = ScmpSyscall::from_name("clone")?;
    for flag in NS_FLAGS {
        let cmp = ScmpArgCompare::new(0, ScmpCompareOp::MaskedEqual(flag), flag);
        ctx.add_rule_conditional(ScmpAction::Errno(libc::EPERM), clone, &[cmp])?;
    }
    // The command is an `unsigned int`: only the low 32 bits count.
    let ioctl = ScmpSyscall::from_name("ioctl")?;
    for (cmd, _) in IOCTLS_DENIED {
        let cmp = ScmpArgCompare::new(1, ScmpCompareOp::MaskedEqual(0xffff_ffff), *cmd);
        ctx.add_rule_conditional(ScmpAction::Errno(libc::EPERM), ioctl, &[cmp])?;
    }
    // clone3 passes its flags in memory, where a filter cannot look: answer
    // ENOSYS so that libc falls back to clone, which is checked above.
    ctx.add_rule(
        ScmpAction::Errno(libc::ENOSYS),
        ScmpSyscall::from_name("clone3")?,
    )?;
    let mut file = tempfile_in_memory()?;
    ctx.export_bpf(&mut file)?;
    use std::io::{Read, Seek};
    file.rewind()?;
    let mut prog = Vec::new();
    file.read_to_end(&mut prog)?;
    Ok(prog)
}

fn tempfile_in_memory() -> std::io::Result<std::fs::File> {
    let fd = nix::sys::memfd::memfd_create(
        c"seccomp-bpf",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )?;
    Ok(std::fs::File::from(fd))
}

#[cfg(test)]
mod tests {
    #[test]
    fn program_is_whole_instructions() {
        let prog = super::default_program().unwrap();
        assert!(!prog.is_empty());
        assert_eq!(prog.len() % std::mem::size_of::<libc::sock_filter>(), 0);
    }
}
