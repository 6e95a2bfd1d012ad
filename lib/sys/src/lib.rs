//! imperium's kernel edge: starting a container's init (clone3 into new
//! namespaces, mounts, pivot_root, privileges dropped, seccomp, exec), holding
//! processes by pidfd, and cgroup trees on v1 and v2.
//!
//! This is the only crate of the workspace, besides the cdylibs' FFI modules, that
//! may say `unsafe`; every such block carries a `// SAFETY:` comment. It knows
//! nothing of vassal files: callers hand it plain, prepared data.
#![warn(missing_docs)]

pub mod btrfs;
pub mod cgroup;
pub mod fs;
pub mod heap;
pub mod launch;
pub mod launcher;
pub mod net;
pub mod netns;
pub mod pidfd;
pub mod quota;
pub mod seccomp;

pub use cgroup::{CgroupError, CgroupTree, Limits as CgroupLimits};
pub use launch::{ChildPlan, FsOp, LaunchError, MountOp};
pub use pidfd::Pidfd;
