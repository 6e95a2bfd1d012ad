//! The emperor's control requests. The protocol (one JSON request per line,
//! one JSON answer per line) and its client are `model::control`'s, the same
//! as the vassal's.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// A request to the emperor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Every vassal's status.
    Status,
    /// Stop and start a vassal.
    Restart {
        /// The vassal.
        name: String,
    },
    /// Freeze a vassal (a group: with all its sites).
    Suspend {
        /// The vassal.
        name: String,
    },
    /// Thaw a vassal.
    Resume {
        /// The vassal.
        name: String,
    },
    /// The metrics, in the OpenMetrics text format.
    Metrics,
    /// The cluster as this host sees it (cluster mode).
    Cluster,
    /// Move a site with its home to another host (cluster mode).
    Move {
        /// The site.
        name: String,
        /// The host it goes to.
        host: String,
    },
    /// Write an admin vassal file (validated; kept only if the emperor
    /// accepts it: a refused file is put back as it was).
    Put {
        /// The vassal.
        name: String,
        /// The file's text (TOML).
        text: String,
        /// Into this group's drop directory (a reseller's own socket), not
        /// the admin directory.
        #[serde(default)]
        group: Option<String>,
    },
    /// A vassal's status row and its file's text.
    Get {
        /// The vassal.
        name: String,
    },
    /// Remove an admin vassal file (the vassal stops; its home is archived).
    Delete {
        /// The vassal.
        name: String,
        /// From this group's drop directory, not the admin directory.
        #[serde(default)]
        group: Option<String>,
    },
    /// The OCI spec of a vassal.
    Spec {
        /// The vassal.
        name: String,
    },
    /// A standalone OCI bundle of a vassal's container (see `bundle`).
    Bundle {
        /// The vassal.
        name: String,
        /// Where (made; must not exist).
        dir: String,
        /// With a copy of the home (else an empty one).
        copy_home: bool,
    },
    /// Store a message among a vassal's notifications.
    Notify {
        /// The vassal.
        name: String,
        /// One line.
        message: String,
        /// Who says it: `admin` (the default) or `reseller`.
        #[serde(default)]
        from: Option<String>,
    },
    /// A vassal's newest notifications, read from inside it as its user.
    Notifications {
        /// The vassal.
        name: String,
        /// Only those not marked read.
        #[serde(default)]
        unread: bool,
        /// How many at most (50 when absent, 1,000 at most).
        #[serde(default)]
        limit: Option<u32>,
    },
    /// A site's domains as the router routes them now.
    Subscriptions {
        /// The vassal.
        name: String,
    },
    /// Mark a vassal's notifications read, up to one (all when absent).
    NotificationsRead {
        /// The vassal.
        name: String,
        /// The last one to mark.
        #[serde(default)]
        upto: Option<i64>,
    },
    /// Delete the archived homes of a removed vassal.
    Purge {
        /// The vassal.
        name: String,
    },
    /// Stop every vassal, then the emperor.
    Shutdown,
}

pub use model::control::Response;

pub use model::control::CallError;

/// The emperor, as the client's messages name it.
pub const EMPEROR: model::control::Peer = model::control::Peer {
    name: "the emperor",
    absent: "is not running",
};

/// Sends one request to the emperor and reads its answer (the one
/// JSON-lines protocol of `model::control`, shared with the vassal).
pub fn call(socket: &Path, req: &Request) -> Result<Response, CallError> {
    // A shutdown lasts as long as the slowest vassal's stop: no timeout.
    model::control::call(EMPEROR, socket, req, None)
}

#[cfg(test)]
mod tests {
    proptest::proptest! {
        #[test]
        fn any_request_line_is_parsed_or_refused_without_a_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..1024)) {
            let _ = serde_json::from_slice::<super::Request>(&bytes);
        }

        #[test]
        fn jsonish_requests_never_panic(cmd in "(status|restart|suspend|resume|spec|notify|purge|shutdown|[a-z]{0,8})", name in ".{0,40}", extra in "(, \"message\": \".{0,20}\")?") {
            let line = format!("{{\"cmd\": \"{cmd}\", \"name\": {name:?}{extra}}}");
            let _ = serde_json::from_str::<super::Request>(&line);
        }
    }
}
