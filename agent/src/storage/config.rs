//! Configuration of the storage client and of transfers.
//!
//! Both structs follow the house config shape: `serde(default, deny_unknown_fields)`, a doc
//! comment per field, `Default`, and `validate()` that reports every problem at once.

use std::time::Duration;

use cassette_common::units::{ByteSize, Rate};
use serde::{Deserialize, Serialize};

/// Integrity checksum sent with every S3 upload (request and each part), so the server
/// rejects a body that was corrupted on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum S3Checksum {
    /// CRC64/NVME: verified by the server, nearly free on the client (the default).
    #[default]
    Crc64nvme,
    /// SHA-256 of each request body: verified by the server, costs a second SHA-256 pass on the client.
    Sha256,
    /// No checksum header: rely on TLS alone.
    None,
}

/// How to reach the storage provider. Anything unset falls back to the provider's standard
/// environment variables and credential chain (`AWS_*`, `AZURE_STORAGE_*`, `GOOGLE_APPLICATION_CREDENTIALS`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Endpoint of an S3-compatible store (Ceph RGW, MinIO, …), e.g. `https://rgw.example.com:8443`.
    /// Overrides `AWS_ENDPOINT_URL`. With a custom endpoint, requests use path-style addressing.
    pub s3_endpoint: Option<String>,
    /// S3 region. Defaults to `AWS_REGION`, `AWS_DEFAULT_REGION`, the shared config file, then `us-east-1`.
    pub s3_region: Option<String>,
    /// Use virtual-hosted-style addressing (`bucket.endpoint`) even with a custom endpoint.
    pub s3_virtual_hosted_style: bool,
    /// Checksum sent with S3 uploads so the server verifies each body.
    pub s3_checksum: S3Checksum,
    /// Sign request bodies (SigV4 payload hash). Off by default: the checksum already protects
    /// the body, and signing costs another SHA-256 pass over every byte.
    pub s3_sign_payload: bool,
    /// Azure storage account. Defaults to `AZURE_STORAGE_ACCOUNT_NAME` / `AZURE_STORAGE_ACCOUNT`.
    pub azure_account: Option<String>,
    /// Blob service endpoint for Azure Stack, sovereign clouds or an emulator, e.g.
    /// `https://acct.blob.core.chinacloudapi.cn` or `http://127.0.0.1:10000/devstoreaccount1`.
    /// Defaults to `AZURE_STORAGE_ENDPOINT`, then `https://<account>.blob.core.windows.net`.
    pub azure_endpoint: Option<String>,
    /// Talk to the Azurite emulator at `AZURITE_BLOB_STORAGE_URL` with its well-known account
    /// (development only).
    pub azure_use_emulator: bool,
    /// HTTP(S) proxy for all providers, e.g. `http://proxy:3128`. Defaults to `HTTPS_PROXY`.
    pub proxy: Option<String>,
    /// Allow plain-HTTP endpoints. Implied by an explicit `http://` endpoint.
    pub allow_http: bool,
    /// Time allowed for one HTTP request, from connecting to the last byte of the body.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Time allowed to establish a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Retries of one HTTP request inside the client (server errors, timeouts, dropped
    /// connections), before Cassette's own per-file retries take over.
    pub http_retries: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            s3_endpoint: None,
            s3_region: None,
            s3_virtual_hosted_style: false,
            s3_checksum: S3Checksum::default(),
            s3_sign_payload: false,
            azure_account: None,
            azure_endpoint: None,
            azure_use_emulator: false,
            proxy: None,
            allow_http: false,
            request_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            http_retries: 3,
        }
    }
}

impl StorageConfig {
    /// Every problem with this configuration, one line each.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if let Some(e) = &self.s3_endpoint {
            match url::Url::parse(e) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => problems
                    .push(format!("s3_endpoint {e:?} is not an http(s) URL: write it as https://rgw.example.com:8443")),
            }
        }
        if let Some(p) = &self.proxy
            && url::Url::parse(p).map(|u| u.host().is_none()).unwrap_or(true)
        {
            problems.push(format!("proxy {p:?} is not a URL: write it as http://proxy.example.com:3128"));
        }
        if self.request_timeout < Duration::from_secs(1) {
            problems.push("request_timeout must be at least 1s".into());
        }
        if self.connect_timeout < Duration::from_millis(100) {
            problems.push("connect_timeout must be at least 100ms".into());
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }
}

/// Limits and tuning of uploads and downloads. Every limit is here; there are no hidden constants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransferConfig {
    /// Files larger than 1 MiB transferred at once.
    pub concurrency: usize,
    /// Files of at most 1 MiB transferred at once, besides the larger ones. Sending or fetching
    /// a small object is bound by the store's per-request latency (tens of milliseconds on S3),
    /// not by bandwidth or memory, and a Cassandra node has many of them (every SSTable's
    /// small components): many in flight keep the link busy.
    pub small_file_concurrency: usize,
    /// Files up to this size are uploaded in one request; larger ones as multipart uploads,
    /// and downloaded as parallel ranged reads.
    pub multipart_threshold: ByteSize,
    /// Part size for multipart uploads and ranged downloads. Grows automatically for files
    /// that would otherwise need more than 9,000 parts.
    pub part_size: ByteSize,
    /// Parts of one file in flight at once.
    pub parts_per_file: usize,
    /// Upper bound on bytes held in memory by all transfers together (buffers of small files,
    /// parts and ranges in flight). The default, 24 MiB, keeps the agent under 100 MiB on a node
    /// of 80,000 files; against a store on localhost 32 MiB was no faster (1 GiB node on tmpfs:
    /// full backup 18.6-21.8 s either way). Raise it for a distant store, where more bytes in
    /// flight fill the link.
    pub memory_budget: ByteSize,
    /// Process-wide bandwidth limit shared by every stream, e.g. `100MiB/s`. Unlimited when unset.
    pub bandwidth: Option<Rate>,
    /// Attempts per file before a transient failure becomes an error.
    pub max_attempts: u32,
    /// First wait after a transient failure; doubles per attempt (with full jitter) up to `max_backoff`.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Make downloaded files durable before reporting them done: on Linux one `syncfs` per
    /// file system at the end of each batch of files, elsewhere an fsync of each file and its
    /// directory.
    pub fsync: bool,
    /// Uploads of 16 or more files first list the repository's blobs, if it holds at most this
    /// many per file, and then check existence locally instead of with one request per file. A
    /// larger repository is abandoned after a few pages (at most `4 × files / 1000` requests at the
    /// default). The listing costs about 56 bytes of memory per blob. 0 turns it off.
    pub list_blobs_per_file: usize,
    /// Downloaded files being flushed and renamed into place at once. This work runs beside the
    /// downloads (it does not hold one of the `concurrency` slots).
    pub fsync_concurrency: usize,
}

/// Files up to this size count as small (see [`TransferConfig::small_file_concurrency`]).
pub const SMALL_FILE: u64 = 1 << 20;

/// S3's smallest allowed part (all parts but the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest allowed part.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// Parts per upload we aim to stay under (S3 and GCS allow 10,000).
pub const TARGET_MAX_PARTS: u64 = 9_000;

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            small_file_concurrency: 64,
            multipart_threshold: ByteSize(8 << 20),
            part_size: ByteSize(8 << 20),
            parts_per_file: 4,
            memory_budget: ByteSize(24 << 20),
            bandwidth: None,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(20),
            fsync: true,
            list_blobs_per_file: 4,
            fsync_concurrency: 16,
        }
    }
}

impl TransferConfig {
    /// Every problem with this configuration, one line each.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.concurrency == 0 {
            problems.push("concurrency must be at least 1".to_owned());
        }
        if self.small_file_concurrency == 0 {
            problems.push("small_file_concurrency must be at least 1".to_owned());
        }
        if self.fsync_concurrency == 0 {
            problems.push("fsync_concurrency must be at least 1".to_owned());
        }
        if self.parts_per_file == 0 {
            problems.push("parts_per_file must be at least 1".to_owned());
        }
        if self.part_size.0 < MIN_PART_SIZE || self.part_size.0 > MAX_PART_SIZE {
            problems.push(format!("part_size {} must be between 5 MiB and 5 GiB (S3's part limits)", self.part_size));
        }
        if self.multipart_threshold.0 < MIN_PART_SIZE {
            problems.push(format!("multipart_threshold {} must be at least 5 MiB", self.multipart_threshold));
        }
        let need = self.part_size.0.max(self.multipart_threshold.0);
        if self.memory_budget.0 < need {
            problems.push(format!(
                "memory_budget {} must hold at least one part or small file ({})",
                self.memory_budget,
                ByteSize(need)
            ));
        }
        if self.max_attempts == 0 {
            problems.push("max_attempts must be at least 1".to_owned());
        }
        if self.initial_backoff > self.max_backoff {
            problems.push("initial_backoff must not exceed max_backoff".to_owned());
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    /// The part size used for a file of `size` bytes: the configured size, grown so that the
    /// upload needs at most [`TARGET_MAX_PARTS`] parts, rounded up to a whole MiB.
    pub fn part_size_for(&self, size: u64) -> u64 {
        let needed = size.div_ceil(TARGET_MAX_PARTS);
        let part = self.part_size.0.max(needed).min(MAX_PART_SIZE);
        part.div_ceil(1 << 20) * (1 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(StorageConfig::default().validate(), Ok(()));
        assert_eq!(TransferConfig::default().validate(), Ok(()));
    }

    #[test]
    fn validate_reports_every_problem() {
        let t = TransferConfig {
            concurrency: 0,
            part_size: ByteSize(1 << 20),
            memory_budget: ByteSize(1 << 20),
            max_attempts: 0,
            ..TransferConfig::default()
        };
        let problems = t.validate().unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains("part_size")));
        assert!(problems.iter().any(|p| p.contains("memory_budget")));

        let s = StorageConfig {
            s3_endpoint: Some("rgw.example.com".into()),
            proxy: Some("nope".into()),
            ..StorageConfig::default()
        };
        let problems = s.validate().unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems[0].contains("https://rgw.example.com:8443"));
    }

    #[test]
    fn part_size_grows_for_huge_files() {
        let t = TransferConfig::default();
        assert_eq!(t.part_size_for(100 << 20), 8 << 20);
        let huge = 1u64 << 40; // 1 TiB
        let part = t.part_size_for(huge);
        assert!(huge.div_ceil(part) <= TARGET_MAX_PARTS);
        assert_eq!(part % (1 << 20), 0);
    }

    #[test]
    fn config_files_reject_unknown_fields() {
        let e = serde_json::from_str::<TransferConfig>(r#"{"concurency": 4}"#).unwrap_err();
        assert!(e.to_string().contains("concurency"), "{e}");
        let t: TransferConfig = serde_json::from_str(r#"{"bandwidth": "50MiB/s", "max_backoff": "1m"}"#).unwrap();
        assert_eq!(t.bandwidth, Some(Rate(50 << 20)));
        assert_eq!(t.max_backoff, Duration::from_secs(60));
    }
}
