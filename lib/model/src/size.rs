//! Sizes in vassal files: `512M`, `10G`, or a plain number of bytes.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes. Suffixes K, M, G and T are powers of 1024.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(pub u64);

impl Size {
    /// Parses `512M`, `10G`, `4096`.
    pub fn parse(s: &str) -> Option<Size> {
        let s = s.trim();
        let (digits, mult) = match s.as_bytes().last()? {
            b'K' | b'k' => (&s[..s.len() - 1], 1u64 << 10),
            b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
            b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
            b'T' | b't' => (&s[..s.len() - 1], 1 << 40),
            _ => (s, 1),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse::<u64>().ok()?.checked_mul(mult).map(Size)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (suffix, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
            if n != 0 && n % (1u64 << shift) == 0 {
                return write!(f, "{}{suffix}", n >> shift);
            }
        }
        write!(f, "{n}")
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) if n >= 0 => Ok(Size(n as u64)),
            Raw::Int(n) => Err(serde::de::Error::custom(format!("size {n} is negative"))),
            Raw::Str(s) => Size::parse(&s).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "size {s:?} is not a number of bytes or a number with K, M, G or T"
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_show() {
        assert_eq!(Size::parse("512M"), Some(Size(512 << 20)));
        assert_eq!(Size::parse("10G"), Some(Size(10 << 30)));
        assert_eq!(Size::parse("4096"), Some(Size(4096)));
        assert_eq!(Size::parse("1k"), Some(Size(1024)));
        for bad in [
            "",
            "M",
            "-1M",
            "1.5G",
            "12X",
            "99999999999999999999T",
            "1 G",
        ] {
            assert_eq!(Size::parse(bad), None, "{bad}");
        }
        assert_eq!(Size(512 << 20).to_string(), "512M");
        assert_eq!(Size(1000).to_string(), "1000");
    }
}
