//! imperium's shared model: what a vassal file says, whether it is valid, what the
//! names and uids are, and where everything lives on disk.
//!
//! Everything here is pure data and plain file I/O, so the emperor, the vassal and
//! the two cdylibs (PAM, NSS) read the same files with the same types. This crate
//! must not pull in an async runtime or say `unsafe`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod atomic;
pub mod backoff;
pub mod catalog;
pub mod claims;
pub mod cluster;
pub mod config;
pub mod control;
pub mod cron;
pub mod journal;
pub mod layout;
pub mod metrics;
pub mod name;
pub mod network;
pub mod notification;
pub mod nss;
pub mod process;
pub mod reconcile;
pub mod record;
pub mod size;
pub mod subscription;
pub mod uids;
pub mod usage;

pub use catalog::{Catalog, Verdict};
pub use config::{GroupFile, Kind, Mode, SiteFile, VassalFile};
pub use layout::Layout;
pub use name::{Domain, Name};
