//! The answer of a control socket (the emperor's and the vassal's): one JSON
//! object per line.

use serde::{Deserialize, Serialize};

/// What a supervisor answers to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// A one-line reason when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The result.
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    /// A success carrying `data`.
    pub fn ok(data: serde_json::Value) -> Response {
        Response {
            ok: true,
            error: None,
            data,
        }
    }

    /// A failure with a one-line reason.
    pub fn err(reason: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(reason.into()),
            data: serde_json::Value::Null,
        }
    }
}
