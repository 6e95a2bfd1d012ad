//! A site's notification, as the vassal lists it and the emperor's API
//! passes it on.

use serde::{Deserialize, Serialize};

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Notification {
    /// Its number, increasing.
    pub id: i64,
    /// When, in seconds since the Unix epoch.
    pub at: u64,
    /// The same as a local date and time (`YYYY-MM-DD HH:MM:SS`, the
    /// container's time zone, which is the host's).
    pub date: String,
    /// `oom`, `memory`, `restart-loop`, `storage`, `admin`, `reseller`, ...
    pub kind: String,
    /// One line for the tenant.
    pub message: String,
    /// Marked read (`vassal notifications read`, or through the API).
    pub read: bool,
}
