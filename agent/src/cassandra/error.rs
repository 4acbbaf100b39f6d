//! Errors of the Cassandra adapter, and whether a retry makes sense.
//!
//! Every failure of `nodetool` or `cqlsh` is turned into one of these: the exit code, the
//! `nodetool: …` usage line, the `error: …` line before the Java stack trace, the connection
//! failure of a stopped node, `cqlsh`'s `<stdin>:1:InvalidRequest: …` lines. Messages are
//! lowercase, say what was attempted, and what to do about it.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::storage::Retry;

/// An error of the Cassandra adapter.
#[derive(Debug, thiserror::Error)]
pub enum CassandraError {
    /// The adapter's configuration is unusable.
    #[error("cassandra adapter configuration: {}", problems.join("; "))]
    Config {
        /// Every problem found.
        problems: Vec<String>,
    },
    /// The tool could not be started (missing, not executable).
    #[error("start {} for {command}: {source}: set {setting} to the full path of the tool", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The command line being run (without secrets).
        command: String,
        /// Which setting names the program.
        setting: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The tool did not finish in time and was killed.
    #[error(
        "{command}: no answer within {after:?}, killed it: the node may be overloaded; raise {setting} if this is normal"
    )]
    Timeout {
        /// The command line.
        command: String,
        /// The limit.
        after: Duration,
        /// Which timeout setting applied.
        setting: &'static str,
    },
    /// The tool was killed by a signal.
    #[error("{command}: killed by signal {signal}")]
    Killed {
        /// The command line.
        command: String,
        /// The signal number.
        signal: i32,
    },
    /// The node does not answer on JMX or CQL: it is stopped, starting, or unreachable.
    #[error("{command}: cannot reach the node at {address} ({detail}): is Cassandra running and listening there?")]
    NodeDown {
        /// The command line.
        command: String,
        /// `host:port` that was tried.
        address: String,
        /// The tool's message.
        detail: String,
    },
    /// Cassandra may be running on this host although nodetool cannot reach it (or it could not
    /// be proven stopped): see [`super::stopped`].
    #[error(
        "Cassandra may be running on this host even though nodetool cannot reach it (a wrong jmx_host or jmx_port makes a live node look stopped): {}; stop Cassandra (or the process named), or fix the settings named, before its files are replaced",
        reasons.join("; ")
    )]
    MayBeRunning {
        /// What shows it may run, or what could not be checked.
        reasons: Vec<String>,
    },
    /// The node refused the credentials.
    #[error("{command}: authentication failed at {address} ({detail}): check {setting}")]
    AuthFailed {
        /// The command line.
        command: String,
        /// `host:port` that was tried.
        address: String,
        /// The tool's message.
        detail: String,
        /// Which credential setting to check.
        setting: &'static str,
    },
    /// nodetool rejected the command line (exit 1, `nodetool: <message>`).
    #[error("{command}: rejected by nodetool: {message}")]
    Usage {
        /// The command line.
        command: String,
        /// nodetool's message.
        message: String,
    },
    /// The node ran the command and reported an error (exit 2, `error: <message>`), or the tool
    /// failed in another way.
    #[error("{command}: failed (exit code {exit_code}): {message}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// The exit code.
        exit_code: i32,
        /// The error message (first `error:` line, else the last lines of output).
        message: String,
        /// Whether the message says the condition is temporary.
        transient: bool,
    },
    /// `nodetool import` could not import some directories.
    #[error(
        "import into {keyspace}.{table}: Cassandra could not import {}: the files there were left in place; check the node's system.log for the reason",
        failed_dirs.join(", ")
    )]
    ImportFailed {
        /// Keyspace.
        keyspace: String,
        /// Table.
        table: String,
        /// The directories nodetool reported as failed.
        failed_dirs: Vec<String>,
    },
    /// A CQL statement failed.
    #[error("cqlsh {statement:?}: {kind}: {message}")]
    Cql {
        /// The statement.
        statement: String,
        /// The error class cqlsh reported (`InvalidRequest`, `Unavailable`, …).
        kind: String,
        /// The message.
        message: String,
    },
    /// The operation needs a newer Cassandra.
    #[error("{what} is not supported by Cassandra {version}: {hint}")]
    Unsupported {
        /// What was asked for.
        what: String,
        /// The node's release version.
        version: String,
        /// What to do instead.
        hint: &'static str,
    },
    /// A request that cannot be valid (bad names, conflicting options).
    #[error("{what}: {reason}")]
    InvalidRequest {
        /// What was asked for.
        what: String,
        /// Why it is invalid.
        reason: String,
    },
    /// Output that lacks what the adapter needs.
    #[error("{command}: cannot understand the output: {reason} (output starts with {excerpt:?})")]
    Parse {
        /// The command line.
        command: String,
        /// What was missing or malformed.
        reason: String,
        /// The first lines of the output.
        excerpt: String,
    },
    /// The data or commit-log directories could not be found out.
    #[error("find the node's data directories: {reason}")]
    Directories {
        /// Why, and which settings would fix it.
        reason: String,
    },
    /// A file in a data directory could not be read or does not parse.
    #[error("{op} {}: {reason}", path.display())]
    Files {
        /// What was attempted.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl CassandraError {
    /// Whether the operation should be attempted again.
    pub fn retry(&self) -> Retry {
        match self {
            Self::Timeout { .. } | Self::Killed { .. } | Self::NodeDown { .. } => Retry::Backoff,
            Self::CommandFailed { transient: true, .. } => Retry::Backoff,
            Self::Cql { kind, .. } if is_transient_cql(kind) => Retry::Backoff,
            _ => Retry::Never,
        }
    }

    /// Whether the error means the node is not reachable.
    pub fn is_node_down(&self) -> bool {
        matches!(self, Self::NodeDown { .. })
    }

    pub(crate) fn files(op: &'static str, path: impl Into<PathBuf>, reason: impl ToString) -> Self {
        Self::Files { op, path: path.into(), reason: reason.to_string() }
    }
}

/// cqlsh error classes that describe a passing condition.
fn is_transient_cql(kind: &str) -> bool {
    matches!(
        kind,
        "Unavailable"
            | "ReadTimeout"
            | "WriteTimeout"
            | "OperationTimedOut"
            | "Overloaded"
            | "IsBootstrapping"
            | "NoHostAvailable"
            | "ServerError"
            | "TruncateError"
    )
}

/// Whether a nodetool `error:` message describes a passing condition.
pub(crate) fn is_transient_message(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "timed out",
        "timeout",
        "connection refused",
        "connection reset",
        "until bootstrap completes",
        "is not yet started",
        "node is not joined",
        "unavailable",
        "try again",
        "already in progress",
    ]
    .iter()
    .any(|p| m.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_classes() {
        let down = CassandraError::NodeDown {
            command: "nodetool info".into(),
            address: "127.0.0.1:7199".into(),
            detail: "Connection refused".into(),
        };
        assert_eq!(down.retry(), Retry::Backoff);
        assert!(down.is_node_down());
        assert!(down.to_string().contains("is Cassandra running"), "{down}");
        let exists = CassandraError::CommandFailed {
            command: "nodetool snapshot -t a".into(),
            exit_code: 2,
            message: "Snapshot a already exists.".into(),
            transient: is_transient_message("Snapshot a already exists."),
        };
        assert_eq!(exists.retry(), Retry::Never);
        let joining = CassandraError::CommandFailed {
            command: "nodetool snapshot".into(),
            exit_code: 2,
            message: "Cannot snapshot until bootstrap completes".into(),
            transient: is_transient_message("Cannot snapshot until bootstrap completes"),
        };
        assert_eq!(joining.retry(), Retry::Backoff);
        let cql = CassandraError::Cql { statement: "TRUNCATE".into(), kind: "Unavailable".into(), message: "x".into() };
        assert_eq!(cql.retry(), Retry::Backoff);
        let cql =
            CassandraError::Cql { statement: "TRUNCATE".into(), kind: "InvalidRequest".into(), message: "x".into() };
        assert_eq!(cql.retry(), Retry::Never);
        let t = CassandraError::Timeout {
            command: "nodetool flush".into(),
            after: Duration::from_secs(3),
            setting: "operation_timeout",
        };
        assert_eq!(t.retry(), Retry::Backoff);
        assert!(t.to_string().contains("operation_timeout"));
    }
}
