//! The agent's configuration: one [`AgentConfig`], read from a TOML file, then overridden by
//! `CASSETTE_*` environment variables, then by command-line flags (the CLI applies those).
//!
//! ```toml
//! location = "s3://backups/prod"
//! state_dir = "/var/lib/cassette-agent"
//!
//! [node]                      # only needed when Cassandra cannot be asked (stopped node)
//! cluster = "prod"
//! host_id = "1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3"
//!
//! [storage]
//! s3_endpoint = "https://rgw.example.com"
//!
//! [transfer]
//! concurrency = 8
//! bandwidth = "100MiB/s"
//!
//! [cassandra]
//! cassandra_yaml = "/etc/cassandra/cassandra.yaml"
//! ```
//!
//! Environment: `CASSETTE_LOCATION`, `CASSETTE_STATE_DIR`, and `CASSETTE_<SECTION>__<FIELD>` for
//! any field of a section (`CASSETTE_TRANSFER__CONCURRENCY=4`,
//! `CASSETTE_CASSANDRA__JMX_PORT=7299`). Values are read as TOML when they parse (numbers,
//! booleans, `["a", "b"]`), else as text. A misspelt field is an error, like in the file.

use std::path::{Path, PathBuf};

use cassette_common::location::StorageLocation;
use serde::{Deserialize, Serialize};

use crate::cassandra::CassandraConfig;
use crate::hashcache::HashCacheConfig;
use crate::ops::backup::BackupConfig;
use crate::ops::commitlog::CommitLogConfig;
use crate::ops::locks::LockConfig;
use crate::ops::remove::RemovalConfig;
use crate::ops::restore::RestoreConfig;
use crate::ops::{ManifestLimits, NodeOverride};
use crate::storage::{StorageConfig, TransferConfig};

/// Where the config file is looked for when neither `--config` nor `CASSETTE_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/cassette/agent.toml";

/// Sections of [`AgentConfig`] that `CASSETTE_<SECTION>__<FIELD>` may set.
const SECTIONS: [&str; 11] = [
    "node",
    "storage",
    "transfer",
    "cassandra",
    "hash_cache",
    "backup",
    "restore",
    "commitlog",
    "locks",
    "removal",
    "manifests",
];

/// Top-level fields that `CASSETTE_<FIELD>` may set.
const TOP_LEVEL: [&str; 2] = ["location", "state_dir"];

/// Everything the agent's commands can be configured with.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Repository location: `s3://bucket[/prefix]`, `azure://container[/prefix]`,
    /// `gs://bucket[/prefix]` or `file:///path`.
    pub location: Option<StorageLocation>,
    /// The agent's own state (hash cache, remembered node identity, manifest cache). Default:
    /// `/var/lib/cassette-agent` as root, else `~/.local/state/cassette-agent`.
    pub state_dir: Option<PathBuf>,
    /// The node's cluster and host id, for when Cassandra cannot be asked.
    pub node: NodeOverride,
    /// How to reach the storage.
    pub storage: StorageConfig,
    /// Transfer limits.
    pub transfer: TransferConfig,
    /// How to reach Cassandra.
    pub cassandra: CassandraConfig,
    /// The hash cache (its path defaults to `<state_dir>/hash-cache`).
    pub hash_cache: HashCacheConfig,
    /// Backups.
    pub backup: BackupConfig,
    /// Restores.
    pub restore: RestoreConfig,
    /// Commit-log archiving and point-in-time restore.
    pub commitlog: CommitLogConfig,
    /// Lock timing (removals against running backups).
    pub locks: LockConfig,
    /// Removal safety.
    pub removal: RemovalConfig,
    /// Limits on manifests read from storage.
    pub manifests: ManifestLimits,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file or the environment does not parse.
    #[error("{origin}: {message}")]
    Parse {
        /// The file, or "CASSETTE_* environment".
        origin: String,
        /// What is wrong (serde names the field).
        message: String,
    },
    /// Values that parse but cannot work together.
    #[error("invalid configuration: {}", problems.join("; "))]
    Invalid {
        /// Every problem found.
        problems: Vec<String>,
    },
}

impl AgentConfig {
    /// Loads the file (if any), applies the environment, and validates the result.
    ///
    /// `file`: the `--config` flag; else `CASSETTE_CONFIG`; else [`DEFAULT_CONFIG_PATH`] when it
    /// exists. An explicitly named file must exist.
    pub fn load(file: Option<&Path>, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let explicit = file
            .map(Path::to_path_buf)
            .or_else(|| env.iter().find(|(k, _)| k == "CASSETTE_CONFIG").map(|(_, v)| PathBuf::from(v)));
        let (path, required) = match explicit {
            Some(p) => (Some(p), true),
            None => (Some(PathBuf::from(DEFAULT_CONFIG_PATH)), false),
        };
        let mut table = toml::Table::new();
        let mut origin = "CASSETTE_* environment".to_owned();
        if let Some(p) = &path {
            match std::fs::read_to_string(p) {
                Ok(text) => {
                    table = toml::from_str(&text)
                        .map_err(|e| ConfigError::Parse { origin: p.display().to_string(), message: e.to_string() })?;
                    origin = format!("{} with the CASSETTE_* environment", p.display());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {}
                Err(e) => return Err(ConfigError::Read { path: p.clone(), source: e }),
            }
        }
        apply_env(&mut table, env)?;
        let cfg: AgentConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse { origin, message: e.to_string() })?;
        Ok(cfg)
    }

    /// Every problem of the settings, one line each (Cassandra settings are checked when the
    /// adapter is built, since not every command talks to Cassandra).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut add = |section: &str, r: Result<(), Vec<String>>| {
            if let Err(p) = r {
                problems
                    .extend(p.into_iter().map(|x| if x.starts_with(section) { x } else { format!("{section}: {x}") }));
            }
        };
        add("storage", self.storage.validate());
        add("transfer", self.transfer.validate());
        add("backup", self.backup.validate());
        add("commitlog", self.commitlog.validate());
        add("locks", self.locks.validate());
        add("removal", self.removal.validate());
        add("manifests", self.manifests.validate());
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid { problems }) }
    }
}

/// Parses an environment value as TOML if it is one (number, boolean, array, quoted string),
/// else takes it as text.
fn env_value(v: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("x = {v}")) {
        Ok(mut t) => t.remove("x").unwrap_or_else(|| toml::Value::String(v.to_owned())),
        Err(_) => toml::Value::String(v.to_owned()),
    }
}

fn apply_env(table: &mut toml::Table, env: &[(String, String)]) -> Result<(), ConfigError> {
    for (k, v) in env {
        let Some(rest) = k.strip_prefix("CASSETTE_") else { continue };
        let rest = rest.to_ascii_lowercase();
        match rest.split_once("__") {
            Some((section, field)) if SECTIONS.contains(&section) => {
                if field.is_empty() {
                    return Err(ConfigError::Parse { origin: k.clone(), message: "no field after the section".into() });
                }
                let entry = table.entry(section.to_owned()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let toml::Value::Table(t) = entry else {
                    return Err(ConfigError::Parse {
                        origin: k.clone(),
                        message: format!("{section} is not a section"),
                    });
                };
                t.insert(field.to_owned(), env_value(v));
            }
            Some((section, _)) => {
                return Err(ConfigError::Parse {
                    origin: k.clone(),
                    message: format!("unknown section {section:?} (sections: {})", SECTIONS.join(", ")),
                });
            }
            // Other CASSETTE_* variables belong to flags (CASSETTE_OUTPUT) or to tests.
            None if TOP_LEVEL.contains(&rest.as_str()) => {
                table.insert(rest, toml::Value::String(v.clone()));
            }
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn file_then_environment() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("agent.toml");
        std::fs::write(
            &p,
            "location = \"file:///srv/backups\"\n[transfer]\nconcurrency = 3\nbandwidth = \"10MiB/s\"\n[locks]\nrefresh = \"10s\"\nstale_after = \"2m\"\n[cassandra]\ndata_file_directories = [\"/d1\", \"/d2\"]\n",
        )
        .unwrap();
        let c = AgentConfig::load(
            Some(&p),
            &env(&[
                ("CASSETTE_TRANSFER__CONCURRENCY", "5"),
                ("CASSETTE_OUTPUT", "json"),
                ("CASSETTE_REQUIRE_EMULATORS", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.location.as_ref().unwrap().to_string(), "file:///srv/backups");
        assert_eq!(c.transfer.concurrency, 5, "the environment overrides the file");
        assert_eq!(c.transfer.bandwidth.unwrap().0, 10 << 20);
        assert_eq!(c.locks.refresh, std::time::Duration::from_secs(10));
        assert_eq!(c.cassandra.data_file_directories.len(), 2);
        c.validate().unwrap();
        let c = AgentConfig::load(
            Some(&p),
            &env(&[("CASSETTE_CASSANDRA__DATA_FILE_DIRECTORIES", "[\"/x\"]"), ("CASSETTE_LOCATION", "s3://bkt/p")]),
        )
        .unwrap();
        assert_eq!(c.cassandra.data_file_directories, vec![PathBuf::from("/x")]);
        assert_eq!(c.location.unwrap().to_string(), "s3://bkt/p");
    }

    #[test]
    fn mistakes_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("agent.toml");
        std::fs::write(&p, "[transfer]\nconcurency = 3\n").unwrap();
        let e = AgentConfig::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("concurency") && e.contains("agent.toml"), "{e}");
        let e = AgentConfig::load(None, &env(&[("CASSETTE_TRANSFR__X", "1")])).unwrap_err().to_string();
        assert!(e.contains("unknown section") && e.contains("CASSETTE_TRANSFR__X"), "{e}");
        let e = AgentConfig::load(None, &env(&[("CASSETTE_LOCKS__REFRESH", "soon")])).unwrap_err().to_string();
        assert!(e.contains("refresh") || e.contains("soon"), "{e}");
        let e = AgentConfig::load(Some(&tmp.path().join("missing.toml")), &[]).unwrap_err().to_string();
        assert!(e.contains("missing.toml"), "{e}");
        let c = AgentConfig {
            transfer: TransferConfig { concurrency: 0, ..Default::default() },
            locks: LockConfig { stale_after: std::time::Duration::from_secs(1), ..Default::default() },
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("concurrency") && e.contains("stale_after"), "{e}");
    }
}
