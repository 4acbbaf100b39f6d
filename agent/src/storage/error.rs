//! Errors of the storage engine, and whether a retry makes sense.
//!
//! Messages are lowercase, say what was attempted, name the key or path, and end with what to
//! do about it when that is not obvious.

use std::io;
use std::path::PathBuf;

use cassette_common::ids::BlobHash;
use cassette_common::layout::LayoutError;

/// Whether an operation that failed with this error should be attempted again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Permanent: bad credentials, missing bucket, bad input. Retrying cannot help.
    Never,
    /// Retry at once (the cause is already gone, e.g. a stale cache entry was dropped).
    Now,
    /// Transient: retry after a backoff.
    Backoff,
}

/// An error of the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The client could not be configured from the location, options and environment.
    #[error("cannot use storage location {location}: {message}")]
    Config {
        /// The location.
        location: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The bucket, container or directory does not exist.
    #[error("storage location {location}: the {what} does not exist (or these credentials cannot see it): {hint}")]
    MissingBucket {
        /// The location.
        location: String,
        /// "bucket", "container" or "directory".
        what: &'static str,
        /// How to create it.
        hint: String,
    },
    /// The provider rejected the credentials.
    #[error("{op} {key} in {location}: access denied: {hint} ({source})")]
    Denied {
        /// What was attempted.
        op: &'static str,
        /// The object key.
        key: String,
        /// The location.
        location: String,
        /// Which credentials to check.
        hint: &'static str,
        /// The provider's error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// Any other failure of a storage request.
    #[error("{op} {key} in {location}: {source}")]
    Remote {
        /// What was attempted.
        op: &'static str,
        /// The object key.
        key: String,
        /// The location.
        location: String,
        /// The provider's error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// A local file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Local {
        /// What was attempted.
        op: &'static str,
        /// The local path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Downloaded bytes do not hash to the blob's name.
    #[error(
        "download blob {} to {}: sha256 mismatch (expected {expected}, got {actual}): the stored blob is damaged; nothing was written",
        expected.short(),
        path.display()
    )]
    HashMismatch {
        /// Where the file was going.
        path: PathBuf,
        /// The blob's hash (its name).
        expected: BlobHash,
        /// The hash of what was received.
        actual: BlobHash,
    },
    /// A blob or file has an unexpected size.
    #[error("{what}: size mismatch (expected {expected} bytes, found {actual})")]
    SizeMismatch {
        /// What was checked.
        what: String,
        /// Expected size.
        expected: u64,
        /// Actual size.
        actual: u64,
    },
    /// A file changed between hashing and uploading.
    #[error(
        "upload {}: the file changed while it was being read (hashed as {}, read as {}): will hash it again",
        path.display(),
        expected.short(),
        actual.short()
    )]
    ChangedDuringUpload {
        /// The file.
        path: PathBuf,
        /// The hash it was expected to have.
        expected: BlobHash,
        /// The hash of what was read.
        actual: BlobHash,
    },
    /// The repository's marker forbids using it.
    #[error("storage location {location}: {source}")]
    Layout {
        /// The location.
        location: String,
        /// Why.
        #[source]
        source: LayoutError,
    },
    /// Reading from a location that holds no repository.
    #[error(
        "storage location {location} holds no Cassette repository (no cassette-layout.json at its root): check the location and prefix"
    )]
    NotARepository {
        /// The location.
        location: String,
    },
    /// A document (marker, manifest) that cannot be used.
    #[error("{key} in {location}: {message}")]
    BadDocument {
        /// The object key.
        key: String,
        /// The location.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// The operation was cancelled.
    #[error("transfer cancelled")]
    Cancelled,
}

impl StoreError {
    /// Maps a provider error for `op` on `key`, turning permission and missing-bucket errors
    /// into their own variants with hints.
    pub fn remote(op: &'static str, key: impl Into<String>, location: &str, source: object_store::Error) -> Self {
        let key = key.into();
        let source = Box::new(source);
        match *source {
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                StoreError::Denied { op, key, location: location.to_owned(), hint: credential_hint(location), source }
            }
            _ => StoreError::Remote { op, key, location: location.to_owned(), source },
        }
    }

    /// Wraps a local I/O error.
    pub fn local(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Local { op, path: path.into(), source }
    }

    /// Whether retrying makes sense.
    pub fn retry(&self) -> Retry {
        match self {
            StoreError::Remote { source, .. } => classify_remote(source),
            StoreError::Local { source, .. } => match source.kind() {
                io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Retry::Now,
                _ => Retry::Never,
            },
            // A mismatch may be corruption in transit: one more download decides.
            StoreError::HashMismatch { .. } => Retry::Backoff,
            StoreError::ChangedDuringUpload { .. } => Retry::Now,
            StoreError::Config { .. }
            | StoreError::MissingBucket { .. }
            | StoreError::Denied { .. }
            | StoreError::SizeMismatch { .. }
            | StoreError::Layout { .. }
            | StoreError::NotARepository { .. }
            | StoreError::BadDocument { .. }
            | StoreError::Cancelled => Retry::Never,
        }
    }

    /// The provider's error, if this is one.
    pub fn provider_error(&self) -> Option<&object_store::Error> {
        match self {
            StoreError::Remote { source, .. } | StoreError::Denied { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The HTTP status the provider answered with, when the error carries one.
    pub fn http_status(&self) -> Option<u16> {
        self.provider_error().and_then(http_status)
    }

    /// Whether the provider reported that the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self.provider_error(), Some(object_store::Error::NotFound { .. }))
    }

    /// Whether a create-only write found the object already there.
    pub fn is_already_exists(&self) -> bool {
        matches!(self.provider_error(), Some(object_store::Error::AlreadyExists { .. }))
    }
}

fn classify_remote(e: &object_store::Error) -> Retry {
    use object_store::Error as E;
    match e {
        E::NotFound { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::InvalidPath { .. }
        | E::UnknownConfigurationKey { .. } => Retry::Never,
        // Server errors the client already retried, dropped connections, truncated bodies,
        // timeouts: all transient. The attempt limit bounds the cost of a wrong guess.
        _ => Retry::Backoff,
    }
}

/// The HTTP status in a provider error. object_store maps some responses to typed variants
/// (404 on GET/HEAD to `NotFound`) but reports others, such as a 404 on a listing, only as text
/// ("… status code: 404 Not Found …"), and its status-carrying type is private.
pub fn http_status(e: &object_store::Error) -> Option<u16> {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => return Some(404),
        E::PermissionDenied { .. } => return Some(403),
        E::Unauthenticated { .. } => return Some(401),
        E::Precondition { .. } => return Some(412),
        _ => {}
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push(' ');
        text.push_str(&s.to_string());
        source = s.source();
    }
    let at = text.find("status code: ")? + "status code: ".len();
    text.get(at..at + 3)?.parse().ok()
}

/// Which credentials a user should check for a location's provider.
pub fn credential_hint(location: &str) -> &'static str {
    if location.starts_with("s3://") {
        "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or the instance role) and the bucket policy"
    } else if location.starts_with("azure://") {
        "check AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY, a SAS token, or the service principal, and its role on the container"
    } else if location.starts_with("gs://") {
        "check GOOGLE_APPLICATION_CREDENTIALS (or the instance service account) and its role on the bucket"
    } else {
        "check the directory's owner and permissions"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(msg: &str) -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(io::Error::other(msg.to_owned()))
    }

    #[test]
    fn permanent_provider_errors_are_never_retried() {
        let e = StoreError::remote(
            "put",
            "k",
            "s3://bkt",
            object_store::Error::PermissionDenied { path: "k".into(), source: boxed("403") },
        );
        assert_eq!(e.retry(), Retry::Never);
        let msg = e.to_string();
        assert!(msg.contains("access denied") && msg.contains("AWS_ACCESS_KEY_ID"), "{msg}");
        let e = StoreError::remote(
            "head",
            "k",
            "s3://bkt",
            object_store::Error::NotFound { path: "k".into(), source: boxed("404") },
        );
        assert_eq!(e.retry(), Retry::Never);
        assert!(e.is_not_found());
    }

    #[test]
    fn transport_and_server_errors_back_off() {
        use object_store::client::{HttpError, HttpErrorKind};
        let e = StoreError::remote(
            "put",
            "k",
            "s3://bkt",
            object_store::Error::Generic {
                store: "S3",
                source: Box::new(HttpError::new(HttpErrorKind::Interrupted, io::Error::other("reset"))),
            },
        );
        assert_eq!(e.retry(), Retry::Backoff);
        let e = StoreError::remote(
            "put",
            "k",
            "s3://bkt",
            object_store::Error::Generic { store: "S3", source: boxed("503") },
        );
        assert_eq!(e.retry(), Retry::Backoff);
        let e = StoreError::remote(
            "get",
            "k",
            "s3://bkt",
            object_store::Error::Generic {
                store: "S3",
                source: Box::new(HttpError::new(HttpErrorKind::Decode, io::Error::other("truncated body"))),
            },
        );
        assert_eq!(e.retry(), Retry::Backoff);
    }

    #[test]
    fn http_status_is_found_in_typed_and_textual_errors() {
        let nf = object_store::Error::NotFound { path: "k".into(), source: boxed("x") };
        assert_eq!(http_status(&nf), Some(404));
        let generic = object_store::Error::Generic {
            store: "S3",
            source: boxed(
                "Error performing list request: Server returned non-2xx status code: 404 Not Found: <Error/>",
            ),
        };
        assert_eq!(http_status(&generic), Some(404));
        assert_eq!(http_status(&object_store::Error::Generic { store: "S3", source: boxed("connection reset") }), None);
    }

    #[test]
    fn local_errors_name_the_path() {
        let e = StoreError::local("open", "/data/x", io::Error::from(io::ErrorKind::PermissionDenied));
        assert_eq!(e.retry(), Retry::Never);
        assert!(e.to_string().starts_with("open /data/x: "), "{e}");
    }
}
