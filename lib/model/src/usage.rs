//! A vassal's disk usage, as the emperor reads it from the kernel and
//! writes it for the vassal inside (`/run/imperium/usage/storage.json`).

use serde::{Deserialize, Serialize};

/// Bytes and inodes used, and their caps (absent: none, or not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    /// Bytes used.
    pub bytes: u64,
    /// Their cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_limit: Option<u64>,
    /// Files and directories, where the backend counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inodes: Option<u64>,
    /// Their cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inodes_limit: Option<u64>,
}
