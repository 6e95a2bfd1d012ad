//! Validated identifiers: vassal and user names, and domains.
//!
//! A `Name` is safe to join onto a path: it is `^[a-z][a-z0-9-]{0,31}$`, so it can
//! hold no `/`, no `..` and no NUL.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a name or a domain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name does not match `^[a-z][a-z0-9-]{0,31}$`.
    #[error("name {0:?} must match ^[a-z][a-z0-9-]{{0,31}}$")]
    BadName(String),
    /// The domain is not a lower-case DNS name, optionally with a leading `*.`.
    #[error(
        "domain {0:?} is not a valid lower-case DNS name (a wildcard only as a leading \"*.\")"
    )]
    BadDomain(String),
}

/// A vassal or user name: `^[a-z][a-z0-9-]{0,31}$`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 32
            && b[0].is_ascii_lowercase()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        if ok {
            Ok(Name(s.to_owned()))
        } else {
            Err(NameError::BadName(s.to_owned()))
        }
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        s.parse()
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Maps keyed by names are looked up by `&str` too: a name orders, compares
/// and hashes as its string does (all three are derived from it).
impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A DNS name a site serves: `example.com` or `*.example.com`, lower case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Domain(String);

impl Domain {
    /// The domain as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is a wildcard (`*.example.com`).
    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }
}

impl FromStr for Domain {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let bad = || NameError::BadDomain(s.to_owned());
        let rest = s.strip_prefix("*.").unwrap_or(s);
        if s.len() > 253 || rest.is_empty() {
            return Err(bad());
        }
        let labels: Vec<&str> = rest.split('.').collect();
        for label in &labels {
            let b = label.as_bytes();
            let ok = !b.is_empty()
                && b.len() <= 63
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
            if !ok {
                return Err(bad());
            }
        }
        // A wildcard must cover a name with at least two labels (`*.com` is refused).
        if s.starts_with("*.") && labels.len() < 2 {
            return Err(bad());
        }
        Ok(Domain(s.to_owned()))
    }
}

impl TryFrom<String> for Domain {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        s.parse()
    }
}

impl From<Domain> for String {
    fn from(d: Domain) -> String {
        d.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "site52", "my-site", "a0123456789012345678901234567890"] {
            assert!(ok.parse::<Name>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "5site",
            "Site",
            "a/b",
            "..",
            "a.b",
            "a_b",
            "-a",
            "a\0",
            "é",
            "a01234567890123456789012345678901",
        ] {
            assert!(bad.parse::<Name>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn domains() {
        for ok in [
            "example.com",
            "*.example.com",
            "a-b.c",
            "localhost",
            "x1.y2.z3",
        ] {
            assert!(ok.parse::<Domain>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "*.com",
            "*",
            "Example.com",
            "a..b",
            "-a.com",
            "a-.com",
            "a.*.com",
            "a b",
            "*.*.com",
            ".com",
            "com.",
        ] {
            assert!(bad.parse::<Domain>().is_err(), "{bad:?}");
        }
    }
}
