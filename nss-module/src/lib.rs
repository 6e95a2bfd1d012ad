//! `libnss_imperium.so.2`: answers passwd/group lookups for tenants from the
//! emperor's table.
//!
//! Not built yet: this crate holds the place the workspace layout gives it and
//! exports no NSS entry points, so glibc skips it and the next source answers.
