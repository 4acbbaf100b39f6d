//! [`NodetoolControl`]: [`super::CassandraControl`] over the `nodetool` and `cqlsh` programs.
//!
//! nodetool is given global options first (`-h`, `-p`, `-u`, `-pwf`, `--ssl`), then the command:
//! after the command name `-p` means `--copy-data` for `import`, so long option names are used
//! everywhere. Credentials never appear on a command line: nodetool reads the JMX password file
//! itself, and cqlsh reads a private cqlshrc (mode 0600, in a directory only the agent can read)
//! generated from `cql_credentials_file` and removed with the adapter.
//!
//! JMX TLS settings (`javax.net.ssl.*`, the store passwords among them) go into a private Java
//! argument file (mode 0600, in a directory only the agent can read, removed with the adapter),
//! named by `JDK_JAVA_OPTIONS=@<file>`: the JVM reads the options from the file, and what it
//! echoes on standard error (`NOTE: Picked up JDK_JAVA_OPTIONS: @…`) is the path, never a
//! password. They used to go into `JAVA_TOOL_OPTIONS`, which every JVM prints verbatim
//! (`Picked up JAVA_TOOL_OPTIONS: …`): into nodetool's output, error messages, job records and
//! the coordinator's logs. `JDK_JAVA_OPTIONS` needs the `java` launcher of Java 9 or later
//! (nodetool on Java 11+); on Java 8 put the settings into nodetool's own
//! `~/.cassandra/nodetool-ssl.properties` instead.
//!
//! Every secret read here (JMX, trust and key store, CQL passwords) is registered with
//! [`cassette_common::redact`], so that no message the agent logs, stores or sends carries it.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use cassette_common::datadir;
use tokio::sync::OnceCell;

use super::config::{self, CassandraConfig};
use super::error::{CassandraError, is_transient_message};
use super::parse;
use super::process::{self, Invocation, Output};
use super::snapshots::{self, Snapshot};
use super::yaml;
use super::{
    ClearSnapshotRequest, ClearTarget, Directories, DirectorySource, FlushRequest, ImportRequest, LiveTable,
    NodeDescription, ReleaseVersion, RingMember, SnapshotRequest, SnapshotScope,
};

/// The Cassandra adapter over `nodetool` and `cqlsh`.
pub struct NodetoolControl {
    config: CassandraConfig,
    jmx_user: Option<String>,
    /// `JDK_JAVA_OPTIONS=@<argument file>` when JMX TLS is configured: a path, no secret.
    jmx_env: Vec<(String, String)>,
    /// Holds the generated Java argument file with the JMX TLS settings; removed on drop.
    jmx_args: Option<(tempfile::TempDir, PathBuf)>,
    /// Holds the generated cqlshrc; removed on drop.
    cqlshrc: Option<(tempfile::TempDir, PathBuf)>,
    version: OnceCell<ReleaseVersion>,
    directories: OnceCell<Directories>,
}

/// Written by hand: the generated files hold credentials, so only their paths are shown.
impl std::fmt::Debug for NodetoolControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodetoolControl")
            .field("nodetool", &self.config.nodetool)
            .field("jmx", &format_args!("{}:{}", self.config.jmx_host, self.config.jmx_port))
            .field("jmx_user", &self.jmx_user)
            .field("jmx_args", &self.jmx_args.as_ref().map(|(_, p)| p))
            .field("cqlshrc", &self.cqlshrc.as_ref().map(|(_, p)| p))
            .finish_non_exhaustive()
    }
}

/// Writes `content` into `name` in a new private directory (0700; the file 0600, created new).
fn private_file(prefix: &str, name: &str, content: &str) -> Result<(tempfile::TempDir, PathBuf), CassandraError> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| CassandraError::files("create a private directory in", std::env::temp_dir(), e))?;
    let path = dir.path().join(name);
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()
    };
    write().map_err(|e| CassandraError::files("write", &path, e))?;
    Ok((dir, path))
}

/// One option of a Java argument file, quoted (`"…"`, with `\` and `"` escaped) so that any
/// character of a password stays part of it.
fn java_arg(option: &str) -> String {
    format!("\"{}\"\n", option.replace('\\', "\\\\").replace('"', "\\\""))
}

impl NodetoolControl {
    /// Checks the configuration and reads the credential files.
    pub fn new(config: CassandraConfig) -> Result<Self, CassandraError> {
        config.validate().map_err(|problems| CassandraError::Config { problems })?;
        let jmx_user = match (&config.jmx_username, &config.jmx_password_file) {
            (Some(u), _) => Some(u.clone()),
            (None, Some(f)) => Some(
                config::first_jmx_user(f)
                    .map_err(|e| CassandraError::files("read jmx_password_file", f, e))?
                    .ok_or_else(|| CassandraError::Config {
                        problems: vec![format!("jmx_password_file {} lists no '<user> <password>' line", f.display())],
                    })?,
            ),
            (None, None) => None,
        };
        if let Some(f) = &config.jmx_password_file {
            // nodetool reads the file itself; its passwords are still secrets of this process.
            for p in config::jmx_passwords(f).map_err(|e| CassandraError::files("read jmx_password_file", f, e))? {
                cassette_common::redact::register(&p);
            }
        }
        let mut opts = Vec::new();
        let password = |file: &Option<PathBuf>, setting: &str| -> Result<Option<String>, CassandraError> {
            match file {
                Some(f) => {
                    let p = std::fs::read_to_string(f)
                        .map_err(|e| CassandraError::files("read", f, format!("{setting}: {e}")))?
                        .trim()
                        .to_owned();
                    cassette_common::redact::register(&p);
                    Ok(Some(p))
                }
                None => Ok(None),
            }
        };
        if let Some(ts) = &config.jmx_truststore {
            opts.push(format!("-Djavax.net.ssl.trustStore={}", ts.display()));
            if let Some(p) = password(&config.jmx_truststore_password_file, "jmx_truststore_password_file")? {
                opts.push(format!("-Djavax.net.ssl.trustStorePassword={p}"));
            }
        }
        if let Some(ks) = &config.jmx_keystore {
            opts.push(format!("-Djavax.net.ssl.keyStore={}", ks.display()));
            if let Some(p) = password(&config.jmx_keystore_password_file, "jmx_keystore_password_file")? {
                opts.push(format!("-Djavax.net.ssl.keyStorePassword={p}"));
            }
        }
        let jmx_args = if opts.is_empty() {
            None
        } else {
            let text: String = opts.iter().map(|o| java_arg(o)).collect();
            Some(private_file("cassette-nodetool-", "jmx-tls.args", &text)?)
        };
        let jmx_env = match &jmx_args {
            Some((_, p)) => vec![("JDK_JAVA_OPTIONS".to_owned(), format!("@{}", p.display()))],
            None => Vec::new(),
        };
        let cqlshrc = Self::cqlshrc(&config)?;
        Ok(Self {
            config,
            jmx_user,
            jmx_env,
            jmx_args,
            cqlshrc,
            version: OnceCell::new(),
            directories: OnceCell::new(),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &CassandraConfig {
        &self.config
    }

    fn cqlshrc(config: &CassandraConfig) -> Result<Option<(tempfile::TempDir, PathBuf)>, CassandraError> {
        let mut ini = String::new();
        if let Some(f) = &config.cql_credentials_file {
            let props =
                config::read_properties(f).map_err(|e| CassandraError::files("read cql_credentials_file", f, e))?;
            let (Some(u), Some(p)) = (props.get("username"), props.get("password")) else {
                return Err(CassandraError::Config {
                    problems: vec![format!(
                        "cql_credentials_file {} must hold 'username=' and 'password=' lines",
                        f.display()
                    )],
                });
            };
            cassette_common::redact::register(p);
            ini.push_str(&format!("[authentication]\nusername = {u}\npassword = {p}\n"));
        }
        if config.cql_ssl {
            ini.push_str("[ssl]\n");
            ini.push_str(&format!("validate = {}\n", config.cql_validate_certificate));
            if let Some(ca) = &config.cql_ca_file {
                ini.push_str(&format!("certfile = {}\n", ca.display()));
            }
            if let (Some(c), Some(k)) = (&config.cql_client_cert, &config.cql_client_key) {
                ini.push_str(&format!("usercert = {}\nuserkey = {}\n", c.display(), k.display()));
            }
        }
        if ini.is_empty() {
            return Ok(None);
        }
        private_file("cassette-cqlsh-", "cqlshrc", &ini).map(Some)
    }

    fn nodetool_args(&self, args: &[String]) -> Vec<String> {
        let mut out =
            vec!["-h".to_owned(), self.config.jmx_host.clone(), "-p".to_owned(), self.config.jmx_port.to_string()];
        if let (Some(u), Some(f)) = (&self.jmx_user, &self.config.jmx_password_file) {
            out.extend(["-u".to_owned(), u.clone(), "-pwf".to_owned(), f.display().to_string()]);
        }
        if self.config.jmx_ssl {
            out.push("--ssl".to_owned());
        }
        out.extend(args.iter().cloned());
        out
    }

    fn env(&self, extra: &[(String, String)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self.config.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.extend(extra.iter().cloned());
        env
    }

    fn timeout(&self, kind: CommandKind) -> (Duration, &'static str) {
        match kind {
            CommandKind::Query => (self.config.command_timeout, "command_timeout"),
            CommandKind::Operation => (self.config.operation_timeout, "operation_timeout"),
        }
    }

    /// Runs nodetool with the configured global options; returns its standard output when it
    /// exited 0, else the classified error.
    pub async fn nodetool(&self, args: &[String]) -> Result<String, CassandraError> {
        self.nodetool_out(args).await.map(|o| o.stdout)
    }

    async fn nodetool_out(&self, args: &[String]) -> Result<Output, CassandraError> {
        let (display, out) = self.nodetool_raw(args).await?;
        self.check_nodetool(display, out)
    }

    /// Runs nodetool and returns the command line shown in errors and the output, whatever the exit code.
    async fn nodetool_raw(&self, args: &[String]) -> Result<(String, Output), CassandraError> {
        let kind = match args.first().map(String::as_str) {
            Some("info" | "status" | "version" | "describecluster" | "listsnapshots" | "ring" | "statusbackup") => {
                CommandKind::Query
            }
            _ => CommandKind::Operation,
        };
        let full = self.nodetool_args(args);
        let display = format!("nodetool {}", args.join(" "));
        let (timeout, timeout_setting) = self.timeout(kind);
        let out = process::run(Invocation {
            program: &self.config.nodetool,
            setting: "nodetool",
            args: full,
            display: display.clone(),
            env: self.env(&self.jmx_env),
            timeout,
            timeout_setting,
            max_output: self.config.max_output.0,
        })
        .await?;
        Ok((display, out))
    }

    fn check_nodetool(&self, display: String, out: Output) -> Result<Output, CassandraError> {
        if out.code == Some(0) {
            // Defensive: an `error: ` line means failure whatever the exit code (a wrapper script
            // may lose it); none of the commands used here prints one on success.
            if let Some(e) = self.error_line(&out) {
                return Err(CassandraError::CommandFailed {
                    command: display,
                    exit_code: 0,
                    transient: is_transient_message(&e),
                    message: e,
                });
            }
            return Ok(out);
        }
        Err(self.classify_nodetool(display, &out))
    }

    fn error_line(&self, out: &Output) -> Option<String> {
        let text = format!("{}\n{}", out.stderr, out.stdout);
        let mut lines = text.lines();
        let first = lines.find_map(|l| l.strip_prefix("error: "))?;
        let mut msg = first.trim().to_owned();
        // The message can span lines until the stack trace.
        for l in lines {
            if l.starts_with("-- StackTrace --") || l.trim().is_empty() || l.starts_with('\t') || l.starts_with("java.")
            {
                break;
            }
            msg.push(' ');
            msg.push_str(l.trim());
        }
        Some(msg)
    }

    fn classify_nodetool(&self, command: String, out: &Output) -> CassandraError {
        if let Some(signal) = out.signal {
            return CassandraError::Killed { command, signal };
        }
        let exit_code = out.code.unwrap_or(-1);
        let text = format!("{}\n{}", out.stderr, out.stdout);
        let address = format!("{}:{}", self.config.jmx_host, self.config.jmx_port);
        if let Some(line) = text.lines().find(|l| l.contains("nodetool: Failed to connect to")) {
            let detail =
                line.split_once("' - ").map(|(_, d)| d).unwrap_or(line).trim().trim_end_matches('.').to_owned();
            if detail.contains("SecurityException") || detail.contains("Authentication failed") {
                return CassandraError::AuthFailed {
                    command,
                    address,
                    detail,
                    setting: "jmx_username and jmx_password_file",
                };
            }
            return CassandraError::NodeDown { command, address, detail };
        }
        if let Some(message) = self.error_line(out) {
            return CassandraError::CommandFailed {
                command,
                exit_code,
                transient: is_transient_message(&message),
                message,
            };
        }
        if let Some(line) = text.lines().find_map(|l| l.strip_prefix("nodetool: ")) {
            return CassandraError::Usage { command, message: line.trim().to_owned() };
        }
        let tail: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let message = tail[tail.len().saturating_sub(3)..].join(" / ");
        let message = if message.is_empty() { "no output".to_owned() } else { message };
        CassandraError::CommandFailed { command, exit_code, transient: is_transient_message(&message), message }
    }

    /// Runs one CQL statement through cqlsh and returns its standard output.
    pub async fn cql(&self, statement: &str, kind: CommandKind) -> Result<String, CassandraError> {
        let (timeout, timeout_setting) = self.timeout(kind);
        let mut args = Vec::new();
        if let Some((_, rc)) = &self.cqlshrc {
            args.push(format!("--cqlshrc={}", rc.display()));
        }
        if self.config.cql_ssl {
            args.push("--ssl".to_owned());
        }
        // cqlsh's own request timeout (default 10 s) would cut long truncates short.
        args.push(format!("--request-timeout={}", timeout.as_secs().max(1)));
        // cqlsh pages `-e` output by 100 rows and gives every page its own column widths (seen
        // on cqlsh 6.2 against 5.0.9): one page keeps one set of column boundaries to parse.
        args.extend([
            self.config.cql_host.clone(),
            self.config.cql_port.to_string(),
            "-e".to_owned(),
            format!("PAGING OFF; {statement}"),
        ]);
        let display = format!("cqlsh {} {} -e {statement:?}", self.config.cql_host, self.config.cql_port);
        let out = process::run(Invocation {
            program: &self.config.cqlsh,
            setting: "cqlsh",
            args,
            display: display.clone(),
            env: self.env(&[]),
            timeout,
            timeout_setting,
            max_output: self.config.max_output.0,
        })
        .await?;
        let text = format!("{}\n{}", out.stderr, out.stdout);
        let address = format!("{}:{}", self.config.cql_host, self.config.cql_port);
        if let Some(line) = text.lines().find(|l| l.starts_with("Connection error:")) {
            let detail = line.trim_start_matches("Connection error:").trim().to_owned();
            if detail.contains("AuthenticationFailed") || detail.contains("Bad credentials") {
                return Err(CassandraError::AuthFailed {
                    command: display,
                    address,
                    detail,
                    setting: "cql_credentials_file",
                });
            }
            return Err(CassandraError::NodeDown { command: display, address, detail });
        }
        if let Some((kind, message)) = parse::cql_error(&text) {
            return Err(CassandraError::Cql { statement: statement.to_owned(), kind, message });
        }
        if let Some(signal) = out.signal {
            return Err(CassandraError::Killed { command: display, signal });
        }
        if out.code != Some(0) {
            let message = parse::excerpt(&text);
            return Err(CassandraError::CommandFailed {
                command: display,
                exit_code: out.code.unwrap_or(-1),
                transient: is_transient_message(&message),
                message,
            });
        }
        Ok(out.stdout)
    }

    fn parse_err(command: &str, out: &str, reason: String) -> CassandraError {
        CassandraError::Parse { command: command.to_owned(), reason, excerpt: parse::excerpt(out) }
    }

    /// The node's release version (asked once, then remembered).
    pub async fn release_version(&self) -> Result<ReleaseVersion, CassandraError> {
        self.version
            .get_or_try_init(|| async {
                let out = self.nodetool_out(&["version".to_owned()]).await?;
                parse::version(&out.stdout).map_err(|r| Self::parse_err("nodetool version", &out.stdout, r))
            })
            .await
            .cloned()
    }

    /// `nodetool listsnapshots`, parsed: Cassandra's own view, including sizes.
    pub async fn listed_snapshots(&self) -> Result<Vec<parse::ListedSnapshot>, CassandraError> {
        let out = self.nodetool_out(&["listsnapshots".to_owned()]).await?;
        parse::list_snapshots(&out.stdout).map_err(|r| Self::parse_err("nodetool listsnapshots", &out.stdout, r))
    }

    async fn discover_directories(&self) -> Result<Directories, CassandraError> {
        if !self.config.data_file_directories.is_empty() {
            return Ok(Directories {
                data: self.config.data_file_directories.clone(),
                local_system_data: None,
                commitlog: self.config.commitlog_directory.clone(),
                source: DirectorySource::Config,
            });
        }
        let mut why = Vec::new();
        match self.release_version().await {
            Ok(v) if v.supports_settings_table() => match self.settings_directories().await {
                Ok(d) => return Ok(d),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the directories from system_views.settings");
                    why.push(format!("system_views.settings: {e}"));
                }
            },
            Ok(v) => why.push(format!("Cassandra {v} has no system_views.settings table")),
            Err(e) => why.push(format!("nodetool version: {e}")),
        }
        if let Some(y) = &self.config.cassandra_yaml {
            let d = yaml::read(y)?;
            if d.data_file_directories.is_empty() {
                why.push(format!("{} does not set data_file_directories", y.display()));
            } else {
                return Ok(Directories {
                    data: d.data_file_directories,
                    local_system_data: d.local_system_data_file_directory,
                    commitlog: self.config.commitlog_directory.clone().or(d.commitlog_directory),
                    source: DirectorySource::CassandraYaml,
                });
            }
        } else {
            why.push("cassandra_yaml is not set".to_owned());
        }
        Err(CassandraError::Directories {
            reason: format!(
                "{}; set cassandra_yaml to the node's cassandra.yaml, or data_file_directories (and commitlog_directory) explicitly",
                why.join("; ")
            ),
        })
    }

    async fn settings_directories(&self) -> Result<Directories, CassandraError> {
        let stmt = "SELECT name, value FROM system_views.settings;";
        let out = self.cql(stmt, CommandKind::Query).await?;
        let rows = parse::cql_rows(&out).map_err(|r| Self::parse_err(stmt, &out, r))?;
        let (Some(ni), Some(vi)) =
            (rows.columns.iter().position(|c| c == "name"), rows.columns.iter().position(|c| c == "value"))
        else {
            return Err(Self::parse_err(stmt, &out, "no 'name' and 'value' columns".into()));
        };
        let value = |name: &str| {
            rows.rows.iter().find(|r| r.get(ni).map(String::as_str) == Some(name)).and_then(|r| r.get(vi)).cloned()
        };
        let data: Vec<PathBuf> = value("data_file_directories")
            .map(|v| parse::java_list(&v).into_iter().map(PathBuf::from).collect())
            .unwrap_or_default();
        if data.is_empty() {
            return Err(Self::parse_err(stmt, &out, "no data_file_directories row".into()));
        }
        let one = |name: &str| value(name).filter(|v| v != "null" && !v.is_empty()).map(PathBuf::from);
        Ok(Directories {
            data,
            local_system_data: one("local_system_data_file_directory"),
            commitlog: self.config.commitlog_directory.clone().or_else(|| one("commitlog_directory")),
            source: DirectorySource::SettingsTable,
        })
    }

    fn check_name(what: &str, name: &str) -> Result<(), CassandraError> {
        if datadir::is_valid_name(name) {
            Ok(())
        } else {
            Err(CassandraError::InvalidRequest {
                what: what.to_owned(),
                reason: format!("{name:?} is not a keyspace or table name (letters, digits and '_', at most 48)"),
            })
        }
    }

    async fn require(
        &self,
        what: &str,
        ok: impl Fn(&ReleaseVersion) -> bool,
        hint: &'static str,
    ) -> Result<ReleaseVersion, CassandraError> {
        let v = self.release_version().await?;
        if ok(&v) {
            Ok(v)
        } else {
            Err(CassandraError::Unsupported { what: what.to_owned(), version: v.raw.clone(), hint })
        }
    }
}

/// Whether a command only reads or moves data: which timeout applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    /// Bounded by `command_timeout`.
    Query,
    /// Bounded by `operation_timeout`.
    Operation,
}

/// A snapshot tag usable in every version: Cassandra 5.0 parses snapshot paths with `[\w-]+`.
fn check_tag(what: &str, tag: &str) -> Result<(), CassandraError> {
    let ok =
        !tag.is_empty() && tag.len() <= 200 && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CassandraError::InvalidRequest {
            what: what.to_owned(),
            reason: format!(
                "snapshot tag {tag:?} must be 1-200 letters, digits, '_' or '-' (Cassandra cannot parse other tags in snapshot paths)"
            ),
        })
    }
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

#[async_trait::async_trait]
impl super::CassandraControl for NodetoolControl {
    async fn describe_node(&self) -> Result<NodeDescription, CassandraError> {
        let info = async {
            let out = self.nodetool_out(&["info".to_owned(), "-T".to_owned()]).await?;
            parse::info(&out.stdout).map_err(|r| Self::parse_err("nodetool info -T", &out.stdout, r))
        };
        let cluster = async {
            let out = self.nodetool_out(&["describecluster".to_owned()]).await?;
            parse::describe_cluster(&out.stdout)
                .map_err(|r| Self::parse_err("nodetool describecluster", &out.stdout, r))
        };
        let (info, cluster, version) = tokio::try_join!(info, cluster, self.release_version())?;
        let directories = self.directories().await?;
        Ok(NodeDescription {
            host_id: info.host_id,
            cluster_name: cluster.name,
            datacenter: info.datacenter,
            rack: info.rack,
            tokens: info.tokens,
            release_version: version,
            partitioner: cluster.partitioner,
            schema_versions: cluster.schema_versions,
            gossip_active: info.gossip_active,
            native_transport_active: info.native_transport_active,
            load: info.load,
            directories,
        })
    }

    async fn ring(&self) -> Result<Vec<RingMember>, CassandraError> {
        let out = self.nodetool_out(&["status".to_owned()]).await?;
        parse::status(&out.stdout).map_err(|r| Self::parse_err("nodetool status", &out.stdout, r))
    }

    async fn is_up(&self) -> Result<bool, CassandraError> {
        match self.nodetool_out(&["info".to_owned()]).await {
            Ok(out) => {
                let info = parse::info(&out.stdout).map_err(|r| Self::parse_err("nodetool info", &out.stdout, r))?;
                Ok(info.gossip_active && info.native_transport_active)
            }
            Err(e) if e.is_node_down() => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn directories(&self) -> Result<Directories, CassandraError> {
        self.directories.get_or_try_init(|| self.discover_directories()).await.cloned()
    }

    async fn flush(&self, request: &FlushRequest) -> Result<(), CassandraError> {
        let mut args = vec!["flush".to_owned()];
        match &request.keyspace {
            Some(ks) => {
                Self::check_name("flush", ks)?;
                args.push(ks.clone());
                for t in &request.tables {
                    Self::check_name("flush", t)?;
                    args.push(t.clone());
                }
            }
            None if !request.tables.is_empty() => {
                return Err(CassandraError::InvalidRequest {
                    what: "flush".into(),
                    reason: "tables were given without their keyspace".into(),
                });
            }
            None => {}
        }
        self.nodetool_out(&args).await.map(|_| ())
    }

    async fn snapshot(&self, request: &SnapshotRequest) -> Result<(), CassandraError> {
        let what = format!("snapshot {}", request.tag);
        check_tag(&what, &request.tag)?;
        let mut args = vec!["snapshot".to_owned(), "--tag".to_owned(), request.tag.clone()];
        if request.skip_flush {
            args.push("--skip-flush".to_owned());
        }
        if let Some(ttl) = request.ttl {
            self.require(
                &format!("{what} with a TTL"),
                ReleaseVersion::supports_snapshot_ttl,
                "take the snapshot without a TTL and clear it yourself",
            )
            .await?;
            if ttl < Duration::from_secs(60) {
                return Err(CassandraError::InvalidRequest {
                    what,
                    reason: format!("ttl {ttl:?} is below Cassandra's minimum of 60 s"),
                });
            }
            args.extend(["--ttl".to_owned(), seconds(ttl)]);
        }
        match &request.scope {
            SnapshotScope::All => {}
            SnapshotScope::Keyspaces(kss) => {
                if kss.is_empty() {
                    return Err(CassandraError::InvalidRequest { what, reason: "no keyspace given".into() });
                }
                for ks in kss {
                    Self::check_name(&what, ks)?;
                }
                args.extend(kss.iter().cloned());
            }
            SnapshotScope::Tables(tables) => {
                if tables.is_empty() {
                    return Err(CassandraError::InvalidRequest { what, reason: "no table given".into() });
                }
                let mut list = Vec::new();
                for (ks, t) in tables {
                    Self::check_name(&what, ks)?;
                    Self::check_name(&what, t)?;
                    list.push(format!("{ks}.{t}"));
                }
                args.extend(["--kt-list".to_owned(), list.join(",")]);
            }
        }
        let out = self.nodetool_out(&args).await?;
        if !out.stdout.contains("Snapshot directory:") && !out.stdout.contains("Requested creating snapshot") {
            return Err(Self::parse_err(
                &format!("nodetool {}", args.join(" ")),
                &out.stdout,
                "no 'Snapshot directory:' confirmation".into(),
            ));
        }
        Ok(())
    }

    async fn list_snapshots(&self, tag: Option<&str>) -> Result<Vec<Snapshot>, CassandraError> {
        if let Some(t) = tag {
            check_tag("list snapshots", t)?;
        }
        let roots = self.directories().await?.all_data_roots();
        let tag = tag.map(str::to_owned);
        tokio::task::spawn_blocking(move || snapshots::scan(&roots, tag.as_deref()))
            .await
            .map_err(|e| CassandraError::files("scan snapshots in", PathBuf::from("data directories"), e))?
    }

    async fn clear_snapshot(&self, request: &ClearSnapshotRequest) -> Result<(), CassandraError> {
        let mut args = vec!["clearsnapshot".to_owned()];
        for ks in &request.keyspaces {
            Self::check_name("clear snapshot", ks)?;
        }
        match &request.target {
            ClearTarget::Tag(tag) => {
                check_tag("clear snapshot", tag)?;
                args.extend(["-t".to_owned(), tag.clone()]);
            }
            ClearTarget::All => {
                // 3.11 clears everything when no tag is given; 4.0+ wants --all.
                if self.release_version().await?.supports_clear_all_flag() {
                    args.push("--all".to_owned());
                }
            }
            ClearTarget::OlderThan(d) => {
                self.require(
                    "clearsnapshot --older-than",
                    ReleaseVersion::supports_clear_older_than,
                    "list the snapshots and clear them by tag",
                )
                .await?;
                args.extend(["--older-than".to_owned(), seconds(*d)]);
            }
        }
        args.extend(request.keyspaces.iter().cloned());
        self.nodetool_out(&args).await.map(|_| ())
    }

    async fn import(&self, request: &ImportRequest) -> Result<(), CassandraError> {
        let what = format!("import into {}.{}", request.keyspace, request.table);
        Self::check_name(&what, &request.keyspace)?;
        Self::check_name(&what, &request.table)?;
        if request.dirs.is_empty() {
            return Err(CassandraError::InvalidRequest { what, reason: "no source directory given".into() });
        }
        if let Some(d) = request.dirs.iter().find(|d| !d.is_absolute()) {
            return Err(CassandraError::InvalidRequest {
                what,
                reason: format!("{} is not an absolute path", d.display()),
            });
        }
        self.require(&what, ReleaseVersion::supports_import, "copy the files into the table directory and use refresh")
            .await?;
        let o = &request.options;
        if o.require_index_components || o.no_index_validation {
            self.require(
                "import --require-index-components / --no-index-validation",
                ReleaseVersion::supports_import_index_options,
                "leave these options off before 5.0",
            )
            .await?;
        }
        let mut args = vec!["import".to_owned()];
        for (on, flag) in [
            (o.keep_level, "--keep-level"),
            (o.keep_repaired, "--keep-repaired"),
            (o.no_verify, "--no-verify"),
            (o.no_verify_tokens, "--no-tokens"),
            (o.no_invalidate_caches, "--no-invalidate-caches"),
            (o.quick, "--quick"),
            (o.extended_verify, "--extended-verify"),
            (o.copy_data, "--copy-data"),
            (o.require_index_components, "--require-index-components"),
            (o.no_index_validation, "--no-index-validation"),
        ] {
            if on {
                args.push(flag.to_owned());
            }
        }
        args.extend([request.keyspace.clone(), request.table.clone()]);
        args.extend(request.dirs.iter().map(|d| d.display().to_string()));
        let (display, out) = self.nodetool_raw(&args).await?;
        if out.code != Some(0)
            && let Some(failed_dirs) = parse::import_failures(&format!("{}\n{}", out.stderr, out.stdout))
        {
            return Err(CassandraError::ImportFailed {
                keyspace: request.keyspace.clone(),
                table: request.table.clone(),
                failed_dirs,
            });
        }
        self.check_nodetool(display, out).map(|_| ())
    }

    async fn refresh(&self, keyspace: &str, table: &str) -> Result<(), CassandraError> {
        Self::check_name("refresh", keyspace)?;
        Self::check_name("refresh", table)?;
        self.nodetool_out(&["refresh".to_owned(), keyspace.to_owned(), table.to_owned()]).await.map(|_| ())
    }

    async fn truncate(&self, keyspace: &str, table: &str) -> Result<(), CassandraError> {
        Self::check_name("truncate", keyspace)?;
        Self::check_name("truncate", table)?;
        self.cql(&format!("TRUNCATE \"{keyspace}\".\"{table}\";"), CommandKind::Operation).await.map(|_| ())
    }

    async fn create_schema(&self, statements: &[cassette_common::cql::SchemaStatement]) -> Result<(), CassandraError> {
        for st in statements {
            Self::check_name("create schema", &st.keyspace)?;
            Self::check_name("create schema", &st.name)?;
        }
        // One cqlsh: its driver waits for schema agreement after each DDL statement. Nothing may
        // follow the last `;`: cqlsh 6.2 reads trailing whitespace as one more, empty statement
        // and fails it with "no viable alternative at input ';'" (seen on 5.0.9).
        let text = format!("{};", statements.iter().map(|s| s.text.as_str()).collect::<Vec<_>>().join(";\n"));
        self.cql(&text, CommandKind::Operation).await.map(|_| ())
    }

    async fn prove_stopped(&self) -> Result<Vec<String>, CassandraError> {
        let dirs = self.directories().await?;
        let y = match &self.config.cassandra_yaml {
            Some(p) => Some(yaml::read(p)?),
            None => None,
        };
        let y = y.unwrap_or_default();
        let mut watched = super::stopped::Watched {
            dirs: dirs.all_data_roots(),
            ports: Vec::new(),
            pid_file: self.config.pid_file.clone(),
            connect_timeout: Duration::from_secs(2),
        };
        watched.dirs.extend(dirs.commitlog.clone());
        let host = self.config.cql_host.clone();
        let native = y.native_transport_port.unwrap_or(self.config.cql_port);
        watched.ports.push(("native transport", host.clone(), native));
        if native != self.config.cql_port {
            watched.ports.push(("native transport, as cql_port says", host.clone(), self.config.cql_port));
        }
        let listen = y.listen_address.clone().filter(|a| !a.is_empty()).unwrap_or(host);
        watched.ports.push(("storage", listen, y.storage_port.unwrap_or(7000)));
        tokio::task::spawn_blocking(move || super::stopped::check(&watched))
            .await
            .map_err(|e| CassandraError::MayBeRunning { reasons: vec![format!("the check did not finish: {e}")] })?
            .map_err(|reasons| CassandraError::MayBeRunning { reasons })
    }

    async fn schema(&self) -> Result<Vec<LiveTable>, CassandraError> {
        use cassette_common::cql::{Column, ColumnKind, TableColumns, normalize_type};
        use std::collections::BTreeMap;
        // Whole tables, filtered here: every version answers these without ALLOW FILTERING.
        let tables_stmt = "SELECT keyspace_name, table_name, id FROM system_schema.tables;";
        let columns_stmt =
            "SELECT keyspace_name, table_name, column_name, kind, position, type FROM system_schema.columns;";
        let (tables_out, columns_out) =
            tokio::try_join!(self.cql(tables_stmt, CommandKind::Query), self.cql(columns_stmt, CommandKind::Query))?;
        let tables = parse::cql_rows(&tables_out).map_err(|r| Self::parse_err(tables_stmt, &tables_out, r))?;
        let columns = parse::cql_rows(&columns_out).map_err(|r| Self::parse_err(columns_stmt, &columns_out, r))?;
        let mut by_table: BTreeMap<(String, String), Vec<Column>> = BTreeMap::new();
        for i in 0..columns.rows.len() {
            let get = |c: &str| columns.get(i, c).unwrap_or_default().to_owned();
            let Some(kind) = ColumnKind::parse(&get("kind")) else {
                return Err(Self::parse_err(
                    columns_stmt,
                    &columns_out,
                    format!("unknown column kind {:?}", get("kind")),
                ));
            };
            // Cassandra writes -1 for regular columns.
            let position = get("position").parse::<i64>().unwrap_or(0).max(0) as usize;
            by_table.entry((get("keyspace_name"), get("table_name"))).or_default().push(Column {
                name: get("column_name"),
                cql_type: normalize_type(&get("type")),
                kind,
                position,
            });
        }
        let mut out = Vec::new();
        for i in 0..tables.rows.len() {
            let get = |c: &str| tables.get(i, c).unwrap_or_default().to_owned();
            let (keyspace, table) = (get("keyspace_name"), get("table_name"));
            let id = get("id")
                .parse::<cassette_common::datadir::TableId>()
                .map_err(|e| Self::parse_err(tables_stmt, &tables_out, format!("table {keyspace}.{table}: {e}")))?;
            let columns = by_table.remove(&(keyspace.clone(), table.clone())).unwrap_or_default();
            out.push(LiveTable { keyspace, table, id, columns: TableColumns { columns } });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn credentials_and_tls_never_reach_the_command_line() {
        let tmp = tempfile::tempdir().unwrap();
        let file = |name: &str, content: &str| {
            let p = tmp.path().join(name);
            std::fs::write(&p, content).unwrap();
            p
        };
        let config = CassandraConfig {
            jmx_password_file: Some(file("jmx.password", "# users\nmonitor s3cret-jmx\n")),
            jmx_ssl: true,
            jmx_truststore: Some(file("truststore.jks", "x")),
            jmx_truststore_password_file: Some(file("ts.pass", "ts-s3cret\n")),
            cql_credentials_file: Some(file("cql.properties", "username=cassandra\npassword=s3cret-cql\n")),
            cql_ssl: true,
            cql_ca_file: Some(file("ca.pem", "x")),
            ..CassandraConfig::default()
        };
        let ctl = NodetoolControl::new(config).unwrap();
        let args = ctl.nodetool_args(&["snapshot".to_owned(), "--tag".to_owned(), "t".to_owned()]);
        let line = args.join(" ");
        assert!(line.starts_with("-h 127.0.0.1 -p 7199 -u monitor -pwf "), "{line}");
        assert!(line.ends_with(" --ssl snapshot --tag t"), "global options come before the command: {line}");
        assert!(!line.contains("s3cret"), "{line}");
        // The TLS settings reach the JVM through a private argument file the environment names:
        // the environment itself (which the JVM echoes) holds no password.
        let env = &ctl.jmx_env;
        assert_eq!(env.len(), 1);
        assert_eq!(env[0].0, "JDK_JAVA_OPTIONS");
        assert!(!env[0].1.contains("s3cret") && env.iter().all(|(k, _)| k != "JAVA_TOOL_OPTIONS"), "{env:?}");
        let (args_dir, args_file) = ctl.jmx_args.as_ref().unwrap();
        assert_eq!(env[0].1, format!("@{}", args_file.display()));
        let args_text = std::fs::read_to_string(args_file).unwrap();
        assert!(
            args_text.contains("\"-Djavax.net.ssl.trustStore=")
                && args_text.contains("\"-Djavax.net.ssl.trustStorePassword=ts-s3cret\"\n"),
            "{args_text}"
        );
        assert_eq!(std::fs::metadata(args_file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(args_dir.path()).unwrap().permissions().mode() & 0o077, 0, "private directory");
        for secret in ["s3cret-jmx", "ts-s3cret", "s3cret-cql"] {
            assert!(!format!("{ctl:?}").contains(secret), "{ctl:?}");
            assert!(
                !cassette_common::redact::redact(&format!("x {secret} y")).contains(secret),
                "{secret} is registered"
            );
        }
        assert_eq!(java_arg("a\\b\"c d"), "\"a\\\\b\\\"c d\"\n");

        let (dir, rc) = ctl.cqlshrc.as_ref().unwrap();
        let text = std::fs::read_to_string(rc).unwrap();
        assert!(text.contains("[authentication]\nusername = cassandra\npassword = s3cret-cql\n"), "{text}");
        assert!(text.contains("[ssl]\nvalidate = true\ncertfile = "), "{text}");
        assert_eq!(std::fs::metadata(rc).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o077, 0, "private directory");
        let path = rc.clone();
        let args_path = args_file.clone();
        drop(ctl);
        assert!(!path.exists(), "the generated cqlshrc is removed with the adapter");
        assert!(!args_path.exists(), "and so is the argument file");
    }

    #[test]
    fn invalid_configuration_is_refused_up_front() {
        let e =
            NodetoolControl::new(CassandraConfig { jmx_port: 0, cql_host: " ".into(), ..CassandraConfig::default() })
                .unwrap_err();
        match e {
            CassandraError::Config { problems } => assert_eq!(problems.len(), 2, "{problems:?}"),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn tags_must_survive_cassandras_path_parsing() {
        for ok in ["daily-2024-01-01", "b_1", "1700000000000"] {
            check_tag("t", ok).unwrap();
        }
        for bad in ["", "a b", "a/b", "a:b", "é", &"x".repeat(201)] {
            assert!(check_tag("t", bad).is_err(), "{bad}");
        }
    }
}
