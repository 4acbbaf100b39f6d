//! How the agent reaches its Cassandra node.
//!
//! House config shape: `serde(default, deny_unknown_fields)`, a doc comment per field, `Default`,
//! and `validate()` reporting every problem at once. Secrets are paths to files, never inline.
//!
//! # Data and commit-log directories
//!
//! Backups read snapshot files straight from the data directories, so the adapter must know them
//! exactly. They are found in this order (the first that answers wins):
//! 1. [`CassandraConfig::data_file_directories`] (and [`CassandraConfig::commitlog_directory`]) when
//!    set: for unusual setups, or when neither source below is available.
//! 2. Cassandra 4.0+: `system_views.settings` over `cqlsh` — what the running node actually uses,
//!    including `local_system_data_file_directory`.
//! 3. [`CassandraConfig::cassandra_yaml`]: the node's `cassandra.yaml` (3.11 has no settings table).
//!
//! If none answers, every operation that needs the directories fails with an error naming these
//! settings; the adapter never guesses `/var/lib/cassandra`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cassette_common::units::ByteSize;
use serde::{Deserialize, Serialize};

/// Settings of the Cassandra adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CassandraConfig {
    /// The `nodetool` program: a name looked up in `PATH`, or a path.
    pub nodetool: PathBuf,
    /// The `cqlsh` program: a name looked up in `PATH`, or a path.
    pub cqlsh: PathBuf,
    /// JMX host nodetool connects to (`-h`).
    pub jmx_host: String,
    /// JMX port (`-p`).
    pub jmx_port: u16,
    /// JMX user (`-u`). Defaults to the first user listed in `jmx_password_file`.
    pub jmx_username: Option<String>,
    /// JMX password file in nodetool's `-pwf` format (lines `<user> <password>`), passed to
    /// nodetool as a path so the password never appears on a command line.
    pub jmx_password_file: Option<PathBuf>,
    /// Connect to JMX over TLS (`nodetool --ssl`).
    pub jmx_ssl: bool,
    /// Trust store for JMX TLS (`javax.net.ssl.trustStore`). The JMX TLS settings reach nodetool's
    /// JVM through a private argument file named by `JDK_JAVA_OPTIONS` (Java 9 or later; never
    /// through `JAVA_TOOL_OPTIONS`, which the JVM echoes with the passwords).
    pub jmx_truststore: Option<PathBuf>,
    /// File holding the trust store password.
    pub jmx_truststore_password_file: Option<PathBuf>,
    /// Key store for JMX TLS client authentication (`javax.net.ssl.keyStore`).
    pub jmx_keystore: Option<PathBuf>,
    /// File holding the key store password.
    pub jmx_keystore_password_file: Option<PathBuf>,
    /// CQL host cqlsh connects to.
    pub cql_host: String,
    /// CQL native port.
    pub cql_port: u16,
    /// CQL credentials: a properties file with `username=` and `password=` lines (the format of
    /// Esop's `--jmx-credentials`). Handed to cqlsh through a private, temporary cqlshrc.
    pub cql_credentials_file: Option<PathBuf>,
    /// Connect to CQL over TLS (`cqlsh --ssl`).
    pub cql_ssl: bool,
    /// CA certificate (PEM) that signed the node's CQL certificate.
    pub cql_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for CQL TLS client authentication.
    pub cql_client_cert: Option<PathBuf>,
    /// Client private key (PEM) for CQL TLS client authentication.
    pub cql_client_key: Option<PathBuf>,
    /// Check the node's certificate against `cql_ca_file` and its host name.
    pub cql_validate_certificate: bool,
    /// The node's `cassandra.yaml`, read for the data and commit-log directories when the node
    /// cannot tell them (3.11) — see the module documentation.
    pub cassandra_yaml: Option<PathBuf>,
    /// The data directories, overriding discovery. In the node's order (the first holds system tables).
    pub data_file_directories: Vec<PathBuf>,
    /// The commit-log directory, overriding discovery.
    pub commitlog_directory: Option<PathBuf>,
    /// Time allowed for queries (info, status, version, settings).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Time allowed for operations that move data (flush, snapshot, clearsnapshot, import, refresh, truncate).
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// Most bytes of output kept from one command; the rest is dropped (and the command fails).
    pub max_output: ByteSize,
    /// Extra environment for nodetool and cqlsh (e.g. `JAVA_HOME`, `CASSANDRA_CONF`). No secrets here.
    pub env: BTreeMap<String, String>,
    /// Cassandra's pid file (`cassandra -p <file>`, e.g. `/var/run/cassandra/cassandra.pid`). When
    /// set, an in-place restore also requires the process it names to be gone.
    pub pid_file: Option<PathBuf>,
}

impl Default for CassandraConfig {
    fn default() -> Self {
        Self {
            nodetool: PathBuf::from("nodetool"),
            cqlsh: PathBuf::from("cqlsh"),
            jmx_host: "127.0.0.1".into(),
            jmx_port: 7199,
            jmx_username: None,
            jmx_password_file: None,
            jmx_ssl: false,
            jmx_truststore: None,
            jmx_truststore_password_file: None,
            jmx_keystore: None,
            jmx_keystore_password_file: None,
            cql_host: "127.0.0.1".into(),
            cql_port: 9042,
            cql_credentials_file: None,
            cql_ssl: false,
            cql_ca_file: None,
            cql_client_cert: None,
            cql_client_key: None,
            cql_validate_certificate: true,
            cassandra_yaml: None,
            data_file_directories: Vec::new(),
            commitlog_directory: None,
            command_timeout: Duration::from_secs(60),
            operation_timeout: Duration::from_secs(3600),
            max_output: ByteSize(64 << 20),
            env: BTreeMap::new(),
            pid_file: None,
        }
    }
}

impl CassandraConfig {
    /// Every problem with this configuration, one line each.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.nodetool.as_os_str().is_empty() {
            problems.push("nodetool must name the nodetool program (e.g. /usr/bin/nodetool)".to_owned());
        }
        if self.cqlsh.as_os_str().is_empty() {
            problems.push("cqlsh must name the cqlsh program (e.g. /usr/bin/cqlsh)".to_owned());
        }
        for (name, host) in [("jmx_host", &self.jmx_host), ("cql_host", &self.cql_host)] {
            if host.trim().is_empty() || host.contains(char::is_whitespace) {
                problems.push(format!("{name} {host:?} is not a host name or address"));
            }
        }
        for (name, port) in [("jmx_port", self.jmx_port), ("cql_port", self.cql_port)] {
            if port == 0 {
                problems.push(format!("{name} must not be 0"));
            }
        }
        let files: [(&str, &Option<PathBuf>); 9] = [
            ("jmx_password_file", &self.jmx_password_file),
            ("jmx_truststore", &self.jmx_truststore),
            ("jmx_truststore_password_file", &self.jmx_truststore_password_file),
            ("jmx_keystore", &self.jmx_keystore),
            ("jmx_keystore_password_file", &self.jmx_keystore_password_file),
            ("cql_credentials_file", &self.cql_credentials_file),
            ("cql_ca_file", &self.cql_ca_file),
            ("cql_client_cert", &self.cql_client_cert),
            ("cql_client_key", &self.cql_client_key),
        ];
        for (name, path) in files {
            if let Some(p) = path
                && !p.is_file()
            {
                problems.push(format!("{name} {} does not exist or is not a file", p.display()));
            }
        }
        if let Some(p) = &self.cassandra_yaml
            && !p.is_file()
        {
            problems.push(format!("cassandra_yaml {} does not exist or is not a file", p.display()));
        }
        if self.jmx_username.is_some() && self.jmx_password_file.is_none() {
            problems.push(
                "jmx_username is set but jmx_password_file is not: write '<user> <password>' into a file readable only by the agent and set jmx_password_file"
                    .to_owned(),
            );
        }
        if self.jmx_truststore_password_file.is_some() && self.jmx_truststore.is_none() {
            problems.push("jmx_truststore_password_file is set without jmx_truststore".to_owned());
        }
        if self.jmx_keystore_password_file.is_some() && self.jmx_keystore.is_none() {
            problems.push("jmx_keystore_password_file is set without jmx_keystore".to_owned());
        }
        if !self.jmx_ssl && (self.jmx_truststore.is_some() || self.jmx_keystore.is_some()) {
            problems.push("jmx_truststore/jmx_keystore are set but jmx_ssl is false".to_owned());
        }
        if !self.cql_ssl && (self.cql_ca_file.is_some() || self.cql_client_cert.is_some()) {
            problems.push("cql_ca_file/cql_client_cert are set but cql_ssl is false".to_owned());
        }
        if self.cql_client_cert.is_some() != self.cql_client_key.is_some() {
            problems.push("cql_client_cert and cql_client_key must be set together".to_owned());
        }
        for d in &self.data_file_directories {
            if !d.is_absolute() {
                problems.push(format!("data_file_directories entry {} must be an absolute path", d.display()));
            }
        }
        if let Some(d) = &self.commitlog_directory
            && !d.is_absolute()
        {
            problems.push(format!("commitlog_directory {} must be an absolute path", d.display()));
        }
        if self.command_timeout < Duration::from_secs(1) {
            problems.push("command_timeout must be at least 1s".to_owned());
        }
        if self.operation_timeout < self.command_timeout {
            problems.push("operation_timeout must be at least command_timeout".to_owned());
        }
        if self.max_output.0 < 64 << 10 {
            problems.push(format!("max_output {} must be at least 64 KiB", self.max_output));
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') {
                problems.push(format!("env key {k:?} is not an environment variable name"));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }
}

/// Reads a Java-style properties file (`key=value` or `key: value`, `#`/`!` comments). Only what
/// credential files need: no line continuations or escapes.
pub(crate) fn read_properties(path: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        if let Some(i) = line.find(['=', ':']) {
            out.insert(line[..i].trim().to_owned(), line[i + 1..].trim().to_owned());
        }
    }
    Ok(out)
}

/// The first user listed in a JMX password file (`<user> <password>` lines).
pub(crate) fn first_jmx_user(path: &Path) -> std::io::Result<Option<String>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_owned))
}

/// The passwords of a JMX password file (`<user> <password>` lines), so that they can be
/// registered as secrets.
pub(crate) fn jmx_passwords(path: &Path) -> std::io::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(CassandraConfig::default().validate(), Ok(()));
    }

    #[test]
    fn validate_reports_every_problem() {
        let c = CassandraConfig {
            jmx_host: "".into(),
            cql_port: 0,
            jmx_username: Some("cassandra".into()),
            cql_credentials_file: Some("/nonexistent/creds".into()),
            cql_client_cert: Some("/nonexistent/cert.pem".into()),
            data_file_directories: vec!["relative/data".into()],
            command_timeout: Duration::from_millis(10),
            ..CassandraConfig::default()
        };
        let p = c.validate().unwrap_err();
        for needle in [
            "jmx_host",
            "cql_port",
            "jmx_password_file",
            "cql_credentials_file /nonexistent/creds",
            "cql_client_cert and cql_client_key",
            "cql_ssl is false",
            "absolute path",
            "command_timeout",
        ] {
            assert!(p.iter().any(|x| x.contains(needle)), "{needle} missing from {p:#?}");
        }
    }

    #[test]
    fn config_files_reject_unknown_fields_and_read_durations() {
        let e = serde_json::from_str::<CassandraConfig>(r#"{"jmx_prot": 7199}"#).unwrap_err();
        assert!(e.to_string().contains("jmx_prot"), "{e}");
        let c: CassandraConfig =
            serde_json::from_str(r#"{"jmx_port": 7299, "operation_timeout": "2h", "max_output": "1MiB"}"#).unwrap();
        assert_eq!(
            (c.jmx_port, c.operation_timeout, c.max_output),
            (7299, Duration::from_secs(7200), ByteSize(1 << 20))
        );
    }

    #[test]
    fn credential_files() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("creds");
        std::fs::write(&p, "# comment\nusername=cassandra\npassword = s3cr=t\n").unwrap();
        let m = read_properties(&p).unwrap();
        assert_eq!(m["username"], "cassandra");
        assert_eq!(m["password"], "s3cr=t");
        let p = tmp.path().join("jmx.password");
        std::fs::write(&p, "\n# users\nmonitor secret1\nadmin secret2\n").unwrap();
        assert_eq!(first_jmx_user(&p).unwrap().as_deref(), Some("monitor"));
    }
}
