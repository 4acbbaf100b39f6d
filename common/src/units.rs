//! Human-friendly sizes and rates on the command line: `100MiB/s`, `64MiB`, `1.5GB`.

use std::fmt;
use std::str::FromStr;

/// A number of bytes parsed from text such as `64MiB`, `512 KiB` or `1.5GB` (a bare number is bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// A transfer rate in bytes per second, parsed from `100MiB/s`, `100MiB` or `800Mbit/s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(pub u64);

/// A size or rate that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: {reason} (examples: {examples})")]
pub struct UnitError {
    what: &'static str,
    input: String,
    reason: String,
    examples: &'static str,
}

impl FromStr for ByteSize {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err =
            |reason: String| UnitError { what: "size", input: s.to_owned(), reason, examples: "64MiB, 512KiB, 1.5GB" };
        let v: bytesize::ByteSize = s.trim().parse().map_err(err)?;
        Ok(ByteSize(v.as_u64()))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

impl FromStr for Rate {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| UnitError {
            what: "rate",
            input: s.to_owned(),
            reason,
            examples: "100MiB/s, 50MB/s, 800Mbit/s",
        };
        let t = s.trim();
        let t = t.strip_suffix("/s").or_else(|| t.strip_suffix("ps")).unwrap_or(t).trim();
        let (t, bits) = match t.strip_suffix("bit").or_else(|| t.strip_suffix("b")) {
            // "b" alone is ambiguous with "B"; accept bits only when written out or as a lowercase suffix after a prefix.
            Some(rest) if !rest.is_empty() && !rest.ends_with(['i', 'I']) => (rest, true),
            _ => (t, false),
        };
        let bytes = if bits {
            let v: bytesize::ByteSize = format!("{t}B").parse().map_err(err)?;
            v.as_u64() / 8
        } else {
            let v: bytesize::ByteSize = t.parse().map_err(err)?;
            v.as_u64()
        };
        if bytes == 0 {
            return Err(err("a rate must be greater than zero".into()));
        }
        Ok(Rate(bytes))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", bytesize::ByteSize(self.0).display().iec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!("64MiB".parse::<ByteSize>().unwrap(), ByteSize(64 << 20));
        assert_eq!("512 KiB".parse::<ByteSize>().unwrap(), ByteSize(512 << 10));
        assert_eq!("1GB".parse::<ByteSize>().unwrap(), ByteSize(1_000_000_000));
        assert_eq!("4096".parse::<ByteSize>().unwrap(), ByteSize(4096));
        let e = "lots".parse::<ByteSize>().unwrap_err().to_string();
        assert!(e.contains("\"lots\"") && e.contains("64MiB"), "{e}");
    }

    #[test]
    fn parses_rates() {
        assert_eq!("100MiB/s".parse::<Rate>().unwrap(), Rate(100 << 20));
        assert_eq!("100MiB".parse::<Rate>().unwrap(), Rate(100 << 20));
        assert_eq!("50MB/s".parse::<Rate>().unwrap(), Rate(50_000_000));
        assert_eq!("800Mbit/s".parse::<Rate>().unwrap(), Rate(100_000_000));
        assert_eq!("1Gbps".parse::<Rate>().unwrap(), Rate(125_000_000));
        assert!("0MiB/s".parse::<Rate>().unwrap_err().to_string().contains("greater than zero"));
        assert!("fast".parse::<Rate>().is_err());
        assert_eq!(Rate(100 << 20).to_string(), "100.0 MiB/s");
    }
}

macro_rules! text_serde {
    ($ty:ty) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(serde::Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    Number(u64),
                    Text(String),
                }
                match Raw::deserialize(d)? {
                    Raw::Number(n) => Ok(Self(n)),
                    Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
                }
            }
        }
    };
}
text_serde!(ByteSize);
text_serde!(Rate);

#[cfg(test)]
mod serde_tests {
    use super::*;

    #[test]
    fn sizes_and_rates_serialize_as_text_and_accept_numbers() {
        assert_eq!(serde_json::to_string(&ByteSize(64 << 20)).unwrap(), "\"64.0 MiB\"");
        assert_eq!(serde_json::from_str::<ByteSize>("\"64.0 MiB\"").unwrap(), ByteSize(64 << 20));
        assert_eq!(serde_json::from_str::<ByteSize>("1024").unwrap(), ByteSize(1024));
        assert_eq!(serde_json::from_str::<Rate>("\"10MiB/s\"").unwrap(), Rate(10 << 20));
        assert!(serde_json::from_str::<Rate>("\"soon\"").is_err());
    }
}
