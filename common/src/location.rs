//! Storage locations: where a Cassette repository lives.
//!
//! A location is a URL-like string naming a provider, a bucket (or container, or directory)
//! and an optional key prefix, so several repositories can share one bucket:
//!
//! | form | provider |
//! |---|---|
//! | `s3://bucket[/prefix]` | Amazon S3 and S3-compatible stores (endpoint set separately) |
//! | `azure://container[/prefix]` | Azure Blob Storage (account from the environment) |
//! | `gs://bucket[/prefix]` (also `gcs://`, `gcp://`) | Google Cloud Storage |
//! | `file:///absolute/path` | a local or mounted directory |
//!
//! Parsing is pure: credentials, endpoints and regions are resolved by the agent when it builds
//! the client, from the standard environment variables and credential chains.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The supported schemes, in the order they are listed in error messages.
pub const SUPPORTED_SCHEMES: &str = "s3://, azure://, gs:// (or gcs://, gcp://), file://";

/// Which service holds the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Amazon S3 or an S3-compatible store.
    S3,
    /// Azure Blob Storage.
    Azure,
    /// Google Cloud Storage.
    Gcs,
    /// A directory on a local or mounted file system.
    File,
}

impl Provider {
    /// The canonical scheme, without `://`.
    pub fn scheme(self) -> &'static str {
        match self {
            Provider::S3 => "s3",
            Provider::Azure => "azure",
            Provider::Gcs => "gs",
            Provider::File => "file",
        }
    }

    fn container_word(self) -> &'static str {
        match self {
            Provider::Azure => "container",
            _ => "bucket",
        }
    }
}

/// A parsed, validated storage location.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StorageLocation {
    provider: Provider,
    /// Bucket or container name; for `file://` the absolute directory.
    bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`; empty for the bucket root.
    prefix: String,
}

/// Why a location string was rejected. Every message shows a valid example.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    /// Nothing before `://`, or no `://` at all.
    #[error(
        "storage location {input:?} has no scheme: write it as a URL such as s3://my-backups/prod (supported: {SUPPORTED_SCHEMES})"
    )]
    MissingScheme {
        /// The rejected input.
        input: String,
    },
    /// A scheme Cassette does not support.
    #[error(
        "storage location {input:?} uses the unknown scheme {scheme:?}: supported schemes are {SUPPORTED_SCHEMES} (example: s3://my-backups/prod)"
    )]
    UnknownScheme {
        /// The rejected input.
        input: String,
        /// The scheme that was given.
        scheme: String,
    },
    /// `file://` without an absolute path.
    #[error(
        "storage location {input:?} is not an absolute path: file locations need three slashes and an absolute path, e.g. file:///var/backups/cassette"
    )]
    RelativeFilePath {
        /// The rejected input.
        input: String,
    },
    /// No bucket or container after the scheme.
    #[error(
        "storage location {input:?} names no {word}: write {scheme}://<{word}>[/prefix], e.g. {scheme}://my-backups/prod"
    )]
    EmptyBucket {
        /// The rejected input.
        input: String,
        /// The scheme that was given.
        scheme: &'static str,
        /// "bucket" or "container".
        word: &'static str,
    },
    /// The bucket or container name breaks the provider's naming rules.
    #[error(
        "storage location {input:?}: {word} name {name:?} is invalid: {reason} (example: {scheme}://my-backups/prod)"
    )]
    BadBucketName {
        /// The rejected input.
        input: String,
        /// The rejected name.
        name: String,
        /// "bucket" or "container".
        word: &'static str,
        /// The scheme that was given.
        scheme: &'static str,
        /// Which rule is broken.
        reason: &'static str,
    },
    /// The prefix has an empty, `.` or `..` segment, or a control character.
    #[error(
        "storage location {input:?}: path {prefix:?} is invalid: {reason} (example: s3://my-backups/prod/cluster1)"
    )]
    BadPrefix {
        /// The rejected input.
        input: String,
        /// The rejected prefix or path.
        prefix: String,
        /// Which rule is broken.
        reason: &'static str,
    },
}

impl StorageLocation {
    /// Parses and validates a location string.
    pub fn parse(input: &str) -> Result<Self, LocationError> {
        let trimmed = input.trim();
        let Some((scheme, rest)) = trimmed.split_once("://") else {
            return Err(LocationError::MissingScheme { input: input.to_owned() });
        };
        let provider = match scheme.to_ascii_lowercase().as_str() {
            "s3" | "s3a" => Provider::S3,
            "azure" | "az" => Provider::Azure,
            "gs" | "gcs" | "gcp" => Provider::Gcs,
            "file" => Provider::File,
            "" => return Err(LocationError::MissingScheme { input: input.to_owned() }),
            other => {
                return Err(LocationError::UnknownScheme { input: input.to_owned(), scheme: other.to_owned() });
            }
        };
        if provider == Provider::File {
            return Self::parse_file(input, rest);
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let scheme = provider.scheme();
        let word = provider.container_word();
        if bucket.is_empty() {
            return Err(LocationError::EmptyBucket { input: input.to_owned(), scheme, word });
        }
        if let Err(reason) = validate_bucket(provider, bucket) {
            return Err(LocationError::BadBucketName {
                input: input.to_owned(),
                name: bucket.to_owned(),
                word,
                scheme,
                reason,
            });
        }
        let prefix = normalize_prefix(prefix).map_err(|reason| LocationError::BadPrefix {
            input: input.to_owned(),
            prefix: prefix.to_owned(),
            reason,
        })?;
        Ok(Self { provider, bucket: bucket.to_owned(), prefix })
    }

    fn parse_file(input: &str, rest: &str) -> Result<Self, LocationError> {
        if !rest.starts_with('/') {
            return Err(LocationError::RelativeFilePath { input: input.to_owned() });
        }
        let path = normalize_prefix(rest).map_err(|reason| LocationError::BadPrefix {
            input: input.to_owned(),
            prefix: rest.to_owned(),
            reason,
        })?;
        Ok(Self { provider: Provider::File, bucket: format!("/{path}"), prefix: String::new() })
    }

    /// A `file://` location for an absolute directory.
    pub fn local(dir: &Path) -> Result<Self, LocationError> {
        Self::parse(&format!("file://{}", dir.display()))
    }

    /// Which service holds the data.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Bucket or container name (for `file://`, the absolute directory).
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Key prefix inside the bucket, without leading or trailing `/` (empty at the bucket root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// For `file://` locations, the directory.
    pub fn local_dir(&self) -> Option<PathBuf> {
        (self.provider == Provider::File).then(|| PathBuf::from(&self.bucket))
    }

    /// This location with `segment` appended to the prefix.
    pub fn join(&self, segment: &str) -> Result<Self, LocationError> {
        Self::parse(&format!("{}/{}", self, segment.trim_matches('/')))
    }
}

fn validate_bucket(provider: Provider, name: &str) -> Result<(), &'static str> {
    let len = name.len();
    let first_last_alnum = name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit());
    match provider {
        Provider::S3 => {
            // https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
            if !(3..=63).contains(&len) {
                return Err("S3 bucket names are 3 to 63 characters long");
            }
            if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-') {
                return Err("S3 bucket names use only lowercase letters, digits, '.' and '-'");
            }
            if !first_last_alnum {
                return Err("S3 bucket names start and end with a lowercase letter or digit");
            }
            if name.contains("..") {
                return Err("S3 bucket names cannot contain two adjacent periods");
            }
            if name.split('.').count() == 4 && name.split('.').all(|p| p.parse::<u8>().is_ok()) {
                return Err("S3 bucket names cannot be formatted as an IP address");
            }
        }
        Provider::Azure => {
            // https://learn.microsoft.com/en-us/rest/api/storageservices/naming-and-referencing-containers--blobs--and-metadata
            if !(3..=63).contains(&len) {
                return Err("Azure container names are 3 to 63 characters long");
            }
            if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
                return Err("Azure container names use only lowercase letters, digits and '-'");
            }
            if !first_last_alnum {
                return Err("Azure container names start and end with a lowercase letter or digit");
            }
            if name.contains("--") {
                return Err("Azure container names cannot contain two adjacent hyphens");
            }
        }
        Provider::Gcs => {
            // https://cloud.google.com/storage/docs/buckets#naming
            let max = if name.contains('.') { 222 } else { 63 };
            if len < 3 || len > max {
                return Err("GCS bucket names are 3 to 63 characters long (up to 222 with dots)");
            }
            if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')) {
                return Err("GCS bucket names use only lowercase letters, digits, '.', '-' and '_'");
            }
            if !first_last_alnum {
                return Err("GCS bucket names start and end with a lowercase letter or digit");
            }
            if name.starts_with("goog") {
                return Err("GCS bucket names cannot begin with \"goog\"");
            }
        }
        Provider::File => {}
    }
    Ok(())
}

/// Strips leading and trailing `/` and checks each segment.
fn normalize_prefix(prefix: &str) -> Result<String, &'static str> {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    for segment in trimmed.split('/') {
        if segment.is_empty() {
            return Err("it contains an empty segment ('//')");
        }
        if segment == "." || segment == ".." {
            return Err("'.' and '..' segments are not allowed");
        }
        if segment.chars().any(char::is_control) {
            return Err("control characters are not allowed");
        }
    }
    Ok(trimmed.to_owned())
}

impl FromStr for StorageLocation {
    type Err = LocationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for StorageLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.provider {
            Provider::File => write!(f, "file://{}", self.bucket),
            p if self.prefix.is_empty() => write!(f, "{}://{}", p.scheme(), self.bucket),
            p => write!(f, "{}://{}/{}", p.scheme(), self.bucket, self.prefix),
        }
    }
}

impl fmt::Debug for StorageLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorageLocation({self})")
    }
}

impl Serialize for StorageLocation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StorageLocation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_provider_with_and_without_prefix() {
        let cases = [
            ("s3://my-backups", Provider::S3, "my-backups", "", "s3://my-backups"),
            ("s3://my-backups/prod/c1/", Provider::S3, "my-backups", "prod/c1", "s3://my-backups/prod/c1"),
            ("S3A://my.backups/x", Provider::S3, "my.backups", "x", "s3://my.backups/x"),
            ("azure://backups/prod", Provider::Azure, "backups", "prod", "azure://backups/prod"),
            ("gs://my_bucket/a", Provider::Gcs, "my_bucket", "a", "gs://my_bucket/a"),
            ("gcs://bucket1", Provider::Gcs, "bucket1", "", "gs://bucket1"),
            ("gcp://bucket1/p", Provider::Gcs, "bucket1", "p", "gs://bucket1/p"),
            ("file:///var/backups/", Provider::File, "/var/backups", "", "file:///var/backups"),
            ("file:///", Provider::File, "/", "", "file:///"),
        ];
        for (input, provider, bucket, prefix, display) in cases {
            let loc = StorageLocation::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(loc.provider(), provider, "{input}");
            assert_eq!(loc.bucket(), bucket, "{input}");
            assert_eq!(loc.prefix(), prefix, "{input}");
            assert_eq!(loc.to_string(), display, "{input}");
            assert_eq!(StorageLocation::parse(&loc.to_string()).unwrap(), loc, "display of {input} re-parses");
        }
        assert_eq!(StorageLocation::parse("file:///var/b").unwrap().local_dir().unwrap(), PathBuf::from("/var/b"));
    }

    #[test]
    fn errors_name_the_problem_and_show_an_example() {
        let cases = [
            ("ftp://host/x", "unknown scheme \"ftp\"", "s3://, azure://"),
            ("my-backups/prod", "has no scheme", "s3://my-backups/prod"),
            ("://x", "has no scheme", "supported"),
            ("file://var/backups", "not an absolute path", "file:///var/backups/cassette"),
            ("file://./x", "not an absolute path", "three slashes"),
            ("s3://", "names no bucket", "s3://my-backups/prod"),
            ("s3:///prefix", "names no bucket", "s3://<bucket>"),
            ("azure://", "names no container", "azure://<container>"),
            ("s3://My_Bucket", "only lowercase letters", "example: s3://my-backups/prod"),
            ("s3://ab", "3 to 63 characters", "example"),
            ("s3://192.168.1.10", "IP address", "example"),
            ("s3://-abc", "start and end", "example"),
            ("azure://a--b", "adjacent hyphens", "example"),
            ("gs://_abc", "start and end", "example"),
            ("gs://goog-x", "goog", "example"),
            ("s3://bucket/a//b", "empty segment", "example"),
            ("s3://bucket/a/../b", "'..'", "example"),
            ("file:///var/../etc", "'..'", "example"),
        ];
        for (input, want, example) in cases {
            let err = StorageLocation::parse(input).expect_err(input).to_string();
            assert!(err.contains(want), "{input}: {err:?} should contain {want:?}");
            assert!(err.contains(example), "{input}: {err:?} should contain {example:?}");
        }
    }

    #[test]
    fn join_appends_to_the_prefix() {
        let root = StorageLocation::parse("s3://bkt/prod").unwrap();
        assert_eq!(root.join("/c1/").unwrap().to_string(), "s3://bkt/prod/c1");
        let file = StorageLocation::parse("file:///tmp/x").unwrap();
        assert_eq!(file.join("y").unwrap().local_dir().unwrap(), PathBuf::from("/tmp/x/y"));
    }

    #[test]
    fn serde_uses_the_display_form() {
        let loc = StorageLocation::parse("s3://bkt/prod").unwrap();
        assert_eq!(serde_json::to_string(&loc).unwrap(), "\"s3://bkt/prod\"");
        let err = serde_json::from_str::<StorageLocation>("\"nope://x\"").unwrap_err();
        assert!(err.to_string().contains("unknown scheme"), "{err}");
    }
}
