//! Real storage servers for tests and benchmarks, each started on a free port and stopped by pid:
//! s3s-fs 0.14.1 (strict S3: verifies signatures and checksums), moto (a second S3
//! implementation), Azurite (Azure Blob), and a plain directory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use cassette_agent::storage::{Environment, Repository, StorageConfig, TransferConfig};
use cassette_common::ids::BlobHash;
use cassette_common::layout;
use cassette_common::location::StorageLocation;
use sha2::{Digest, Sha256};

use crate::process::ManagedProcess;
use crate::tools::{Found, Tool, free_port, require};

/// Azurite's documented development account and key (public, not a secret).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's documented development key.
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Which kind of storage a server provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A local directory (`file://`).
    Local,
    /// s3s-fs 0.14.1.
    S3sFs,
    /// moto_server.
    Moto,
    /// Azurite blob service.
    Azurite,
}

impl Backend {
    /// Every backend the conformance suite covers.
    pub const ALL: [Backend; 4] = [Backend::Local, Backend::S3sFs, Backend::Moto, Backend::Azurite];

    /// A short name for logs and tables.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::S3sFs => "s3s-fs",
            Backend::Moto => "moto",
            Backend::Azurite => "azurite",
        }
    }

    fn tool(self) -> Option<Tool> {
        match self {
            Backend::Local => None,
            Backend::S3sFs => Some(Tool::S3sFs),
            Backend::Moto => Some(Tool::Moto),
            Backend::Azurite => Some(Tool::Azurite),
        }
    }
}

/// A running storage server (or a directory), with a bucket or container ready to use.
#[derive(Debug)]
pub struct StorageServer {
    /// The kind of server.
    pub backend: Backend,
    /// The port it listens on (0 for `Local`).
    pub port: u16,
    /// Bucket or container name.
    pub bucket: String,
    /// Credentials the server accepts.
    pub access_key: String,
    /// Secret the server accepts.
    pub secret_key: String,
    /// Server data (s3s-fs root, the `Local` directory) and logs.
    pub dir: tempfile::TempDir,
    process: Option<ManagedProcess>,
}

impl StorageServer {
    /// Starts a server of this kind. `Ok(None)` means the program is missing and the test may
    /// skip (a message was printed); with `CASSETTE_REQUIRE_EMULATORS=1` that panics instead.
    pub fn start(backend: Backend, test: &str) -> anyhow::Result<Option<Self>> {
        let binary = match backend.tool() {
            None => None,
            Some(tool) => match require(tool, test) {
                Found::At(p) => Some(p),
                Found::Skip => return Ok(None),
            },
        };
        let dir = tempfile::Builder::new().prefix(&format!("cassette-{}-", backend.name())).tempdir()?;
        let access_key = "cassette-test-key".to_owned();
        let secret_key = format!("cassette-secret-{:08x}", rand::random::<u32>());
        let mut last_err = None;
        // A free port can be taken by someone else before the server binds it: try again.
        for _ in 0..3 {
            match Self::try_start(backend, binary.as_deref(), &dir, &access_key, &secret_key) {
                Ok((process, port)) => {
                    let server =
                        Self { backend, port, bucket: "cassette-test".into(), access_key, secret_key, dir, process };
                    server.create_bucket(&server.bucket)?;
                    return Ok(Some(server));
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("could not start {}", backend.name())))
    }

    fn try_start(
        backend: Backend,
        binary: Option<&std::path::Path>,
        dir: &tempfile::TempDir,
        access_key: &str,
        secret_key: &str,
    ) -> anyhow::Result<(Option<ManagedProcess>, u16)> {
        let Some(binary) = binary else { return Ok((None, 0)) };
        let port = free_port()?;
        let log = dir.path().join(format!("{}.log", backend.name()));
        let mut cmd = Command::new(binary);
        match backend {
            Backend::S3sFs => {
                let root = dir.path().join("root");
                std::fs::create_dir_all(&root)?;
                cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--access-key", access_key, "--secret-key", secret_key])
                    .arg(&root);
            }
            Backend::Moto => {
                cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            }
            Backend::Azurite => {
                cmd.args([
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    &port.to_string(),
                    "--inMemoryPersistence",
                    "--silent",
                    "--skipApiVersionCheck",
                    "--disableTelemetry",
                ]);
            }
            Backend::Local => unreachable!("a directory has no server"),
        }
        let mut process = ManagedProcess::spawn(backend.name(), cmd, &log)?;
        wait_http(port, &mut process, Duration::from_secs(60))
            .with_context(|| format!("{} did not start; log:\n{}", backend.name(), process.log_tail(2000)))?;
        Ok((Some(process), port))
    }

    /// Creates a bucket (or container) named `name` on the server.
    pub fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        match self.backend {
            Backend::Local => {}
            // A bucket is a directory under the root.
            Backend::S3sFs => std::fs::create_dir_all(self.dir.path().join("root").join(name))?,
            Backend::Moto => {
                let status = http(self.port, "PUT", &format!("/{name}"), &[])?;
                if status != 200 {
                    bail!("moto: create bucket {name}: HTTP {status}");
                }
            }
            Backend::Azurite => {
                let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
                let version = "2021-08-06";
                let to_sign = format!(
                    "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{name}\nrestype:container"
                );
                let key = base64::engine::general_purpose::STANDARD.decode(AZURITE_KEY)?;
                let sig = base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key, to_sign.as_bytes()));
                let auth = format!("SharedKey {AZURITE_ACCOUNT}:{sig}");
                let status = http(
                    self.port,
                    "PUT",
                    &format!("/{AZURITE_ACCOUNT}/{name}?restype=container"),
                    &[("x-ms-date", &date), ("x-ms-version", version), ("Authorization", &auth)],
                )?;
                if status != 201 && status != 409 {
                    bail!("azurite: create container {name}: HTTP {status}");
                }
            }
        }
        Ok(())
    }

    /// The location of a repository under `prefix` (each test uses its own prefix).
    pub fn location(&self, prefix: &str) -> StorageLocation {
        let s = match self.backend {
            Backend::Local => {
                let dir = self.dir.path().join("repo").join(prefix);
                let _ = std::fs::create_dir_all(&dir);
                format!("file://{}", dir.display())
            }
            Backend::S3sFs | Backend::Moto => format!("s3://{}/{prefix}", self.bucket),
            Backend::Azurite => format!("azure://{}/{prefix}", self.bucket),
        };
        match s.parse() {
            Ok(l) => l,
            Err(e) => panic!("harness built an invalid location {s}: {e}"),
        }
    }

    /// The endpoint URL (`http://127.0.0.1:PORT`), for S3 and Azurite.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Client settings that reach this server.
    pub fn storage_config(&self) -> StorageConfig {
        match self.backend {
            Backend::Local => StorageConfig::default(),
            Backend::S3sFs | Backend::Moto => StorageConfig {
                s3_endpoint: Some(self.endpoint()),
                request_timeout: Duration::from_secs(60),
                ..StorageConfig::default()
            },
            Backend::Azurite => StorageConfig {
                azure_endpoint: Some(format!("{}/{AZURITE_ACCOUNT}", self.endpoint())),
                ..StorageConfig::default()
            },
        }
    }

    /// The credentials, as the standard environment variables a user would set.
    pub fn environment(&self) -> Environment {
        match self.backend {
            Backend::Local => Environment::default(),
            Backend::S3sFs | Backend::Moto => Environment::from_pairs([
                ("AWS_ACCESS_KEY_ID", self.access_key.as_str()),
                ("AWS_SECRET_ACCESS_KEY", self.secret_key.as_str()),
                ("AWS_REGION", "us-east-1"),
            ]),
            Backend::Azurite => Environment::from_pairs([
                ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT),
                ("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY),
            ]),
        }
    }

    /// The variables to give a child process (`cassette-agent`, rclone, aws) so that it reaches
    /// this server with the same credentials.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = match self.backend {
            Backend::Local => vec![],
            Backend::S3sFs | Backend::Moto => vec![
                ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
                ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
                ("AWS_REGION".into(), "us-east-1".into()),
                ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ],
            Backend::Azurite => vec![
                ("AZURE_STORAGE_ACCOUNT_NAME".into(), AZURITE_ACCOUNT.into()),
                ("AZURE_STORAGE_ACCOUNT_KEY".into(), AZURITE_KEY.into()),
                ("AZURE_STORAGE_ENDPOINT".into(), format!("{}/{AZURITE_ACCOUNT}", self.endpoint())),
            ],
        };
        v.retain(|(_, val)| !val.is_empty());
        v
    }

    /// A repository client for `prefix`.
    pub fn repository(&self, prefix: &str, transfer: &TransferConfig) -> Repository {
        match Repository::connect(&self.location(prefix), &self.storage_config(), transfer, &self.environment()) {
            Ok(r) => r,
            Err(e) => panic!("connect to {}: {e}", self.backend.name()),
        }
    }

    /// Where the server keeps a blob's bytes on disk, for corruption tests (s3s-fs and Local).
    pub fn blob_file(&self, prefix: &str, hash: &BlobHash) -> Option<PathBuf> {
        let key = layout::blob_key(hash);
        match self.backend {
            Backend::Local => Some(self.dir.path().join("repo").join(prefix).join(key)),
            Backend::S3sFs => Some(self.dir.path().join("root").join(&self.bucket).join(prefix).join(key)),
            Backend::Moto | Backend::Azurite => None,
        }
    }

    /// Multipart upload parts s3s-fs holds on disk right now (uploads begun but not completed).
    pub fn pending_parts(&self) -> usize {
        let root = self.dir.path().join("root");
        std::fs::read_dir(root)
            .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(".upload_id-")).count())
            .unwrap_or(0)
    }

    /// The server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.process.as_ref().map(|p| p.log_tail(4000)).unwrap_or_default()
    }
}

/// Waits until the port answers HTTP (any status), or the process exits.
fn wait_http(port: u16, process: &mut ManagedProcess, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !process.is_running() {
            bail!("process exited during startup");
        }
        if http(port, "GET", "/", &[]).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("no HTTP answer on port {port} after {timeout:?}")
}

/// A minimal HTTP/1.1 request without a body; returns the status code.
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    let line = String::from_utf8_lossy(&head);
    let code = line.get(9..12).and_then(|c| c.parse().ok()).context("malformed HTTP status line")?;
    Ok(code)
}

/// HMAC-SHA256 (RFC 2104), enough for Azure SharedKey signing in tests.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let mut inner = Sha256::new();
    inner.update(&ipad);
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(&opad);
    outer.update(inner.finalize());
    outer.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex::encode(mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
