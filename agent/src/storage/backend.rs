//! Builds the [`ObjectStore`] client for a location from configuration and the environment.
//!
//! Credentials come from the providers' standard sources, so the agent runs wherever the
//! provider's own CLI would:
//! - S3: `AWS_*` variables (keys, session token, region, `AWS_ENDPOINT_URL`, web identity, ECS
//!   container credentials), the shared files `~/.aws/credentials` and `~/.aws/config` with
//!   `AWS_PROFILE` (object_store does not read them, so this module does), then the instance role.
//!   `AWS_CA_BUNDLE` adds trusted roots for on-premises endpoints.
//! - Azure: `AZURE_STORAGE_*` variables or `AZURE_STORAGE_CONNECTION_STRING`; conflicting
//!   credential sources are refused instead of silently picking one.
//! - GCS: `GOOGLE_APPLICATION_CREDENTIALS` / `GOOGLE_SERVICE_ACCOUNT*`, then the metadata server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cassette_common::location::{Provider, StorageLocation};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, Checksum};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, Certificate, ClientOptions, ObjectStore, RetryConfig};

use super::config::{S3Checksum, StorageConfig};
use super::error::StoreError;

/// A snapshot of the environment variables the client is built from. Tests pass their own.
///
/// It holds credentials (`AWS_SECRET_ACCESS_KEY`, `AZURE_STORAGE_ACCOUNT_KEY`, …), so its
/// `Debug` shows variable names only.
#[derive(Clone, Default)]
pub struct Environment {
    vars: BTreeMap<String, String>,
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Environment").field("names", &self.vars.keys().collect::<Vec<_>>()).finish()
    }
}

impl Environment {
    /// The process environment.
    pub fn capture() -> Self {
        Self { vars: std::env::vars().collect() }
    }

    /// An environment with exactly these variables.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self { vars: pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect() }
    }

    /// A non-empty variable.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str).filter(|v| !v.trim().is_empty())
    }

    fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.vars
            .iter()
            .filter(move |(k, v)| k.starts_with(prefix) && !v.trim().is_empty())
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn home(&self) -> Option<PathBuf> {
        self.get("HOME").map(PathBuf::from)
    }
}

/// Builds the client for `location`. Nothing is sent over the network here.
pub fn build_store(
    location: &StorageLocation,
    cfg: &StorageConfig,
    env: &Environment,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    if let Err(problems) = cfg.validate() {
        return Err(config_error(location, problems.join("; ")));
    }
    let store: Arc<dyn ObjectStore> = match location.provider() {
        Provider::S3 => Arc::new(
            s3_builder(location, cfg, env)?.build().map_err(|e| config_error(location, format!("S3 client: {e}")))?,
        ),
        Provider::Azure => Arc::new(
            azure_builder(location, cfg, env)?
                .build()
                .map_err(|e| config_error(location, format!("Azure client: {e}")))?,
        ),
        Provider::Gcs => Arc::new(gcs_builder(location, cfg, env)?.build().map_err(|e| {
            config_error(
                location,
                format!("GCS client: {e} (check GOOGLE_APPLICATION_CREDENTIALS or GOOGLE_SERVICE_ACCOUNT_PATH)"),
            )
        })?),
        Provider::File => return local_store(location),
    };
    Ok(if location.prefix().is_empty() { store } else { Arc::new(PrefixStore::new(store, location.prefix())) })
}

fn config_error(location: &StorageLocation, message: String) -> StoreError {
    StoreError::Config { location: location.to_string(), message }
}

/// Client options shared by all providers. They replace whatever the environment loop set on
/// the builder, so everything the environment may say about the client is folded in here.
fn client_options(
    location: &StorageLocation,
    cfg: &StorageConfig,
    env: &Environment,
    endpoint: Option<&str>,
) -> Result<ClientOptions, StoreError> {
    let env_allows_http = ["AWS_ALLOW_HTTP", "AZURE_ALLOW_HTTP", "GOOGLE_ALLOW_HTTP"]
        .iter()
        .any(|k| env.get(k).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1"));
    let http_endpoint = endpoint.is_some_and(|e| e.starts_with("http://"));
    if http_endpoint {
        tracing::warn!(
            endpoint = endpoint.unwrap_or_default(),
            "storage endpoint uses plain HTTP: traffic is not encrypted"
        );
    }
    let mut opts = ClientOptions::new()
        .with_timeout(cfg.request_timeout)
        .with_connect_timeout(cfg.connect_timeout)
        .with_allow_http(cfg.allow_http || env_allows_http || http_endpoint);
    if let Some(proxy) = &cfg.proxy {
        opts = opts.with_proxy_url(proxy);
    }
    if location.provider() == Provider::S3
        && let Some(bundle) = env.get("AWS_CA_BUNDLE")
    {
        let pem = std::fs::read(bundle)
            .map_err(|e| config_error(location, format!("AWS_CA_BUNDLE={bundle}: cannot read the CA bundle: {e}")))?;
        let certs = Certificate::from_pem_bundle(&pem).map_err(|e| {
            config_error(location, format!("AWS_CA_BUNDLE={bundle}: not a PEM certificate bundle: {e}"))
        })?;
        for c in certs {
            opts = opts.with_root_certificate(c);
        }
    }
    Ok(opts)
}

fn retry_config(cfg: &StorageConfig) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: cfg.http_retries,
        retry_timeout: cfg.request_timeout.saturating_mul(2),
    }
}

/// The S3 builder: environment first, then explicit configuration.
pub fn s3_builder(
    location: &StorageLocation,
    cfg: &StorageConfig,
    env: &Environment,
) -> Result<AmazonS3Builder, StoreError> {
    let mut b = AmazonS3Builder::new();
    for (k, v) in env.with_prefix("AWS_") {
        if let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
            b = b.with_config(key, v);
        }
    }
    let has_env_credentials = env.get("AWS_ACCESS_KEY_ID").is_some()
        || env.get("AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
        || env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
        || env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some();
    let profile = shared_profile(env).map_err(|m| config_error(location, m))?;
    if !has_env_credentials
        && let Some(p) = &profile
        && let (Some(id), Some(secret)) = (&p.access_key_id, &p.secret_access_key)
    {
        b = b.with_access_key_id(id).with_secret_access_key(secret);
        if let Some(token) = &p.session_token {
            b = b.with_token(token);
        }
    }
    let region = cfg
        .s3_region
        .clone()
        .or_else(|| env.get("AWS_REGION").map(str::to_owned))
        .or_else(|| env.get("AWS_DEFAULT_REGION").map(str::to_owned))
        .or_else(|| profile.as_ref().and_then(|p| p.region.clone()))
        .unwrap_or_else(|| "us-east-1".to_owned());
    b = b.with_bucket_name(location.bucket()).with_region(region);

    let endpoint = cfg
        .s3_endpoint
        .clone()
        .or_else(|| env.get("AWS_ENDPOINT_URL_S3").map(str::to_owned))
        .or_else(|| env.get("AWS_ENDPOINT_URL").map(str::to_owned))
        .or_else(|| env.get("AWS_ENDPOINT").map(str::to_owned));
    if let Some(e) = &endpoint {
        b = b.with_endpoint(e).with_virtual_hosted_style_request(cfg.s3_virtual_hosted_style);
    }
    b = match cfg.s3_checksum {
        S3Checksum::Crc64nvme => b.with_checksum_algorithm(Checksum::CRC64NVME),
        S3Checksum::Sha256 => b.with_checksum_algorithm(Checksum::SHA256),
        S3Checksum::None => b,
    };
    Ok(b.with_unsigned_payload(!cfg.s3_sign_payload)
        .with_client_options(client_options(location, cfg, env, endpoint.as_deref())?)
        .with_retry(retry_config(cfg)))
}

/// Credentials and region of one profile in the AWS shared files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsProfile {
    /// `aws_access_key_id`.
    pub access_key_id: Option<String>,
    /// `aws_secret_access_key`.
    pub secret_access_key: Option<String>,
    /// `aws_session_token`.
    pub session_token: Option<String>,
    /// `region` (from the config file).
    pub region: Option<String>,
}

/// Reads the profile named by `AWS_PROFILE` (or `default`) from `~/.aws/credentials` and
/// `~/.aws/config` (or `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE`). A profile named
/// explicitly but found in neither file is an error; a missing default profile is not.
fn shared_profile(env: &Environment) -> Result<Option<AwsProfile>, String> {
    let explicit = env.get("AWS_PROFILE").map(str::to_owned);
    let name = explicit.clone().unwrap_or_else(|| "default".to_owned());
    let home = env.home();
    let file = |var: &str, default: &str| -> Option<PathBuf> {
        env.get(var).map(PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
    };
    let mut found = false;
    let mut profile = AwsProfile::default();
    if let Some(path) = file("AWS_SHARED_CREDENTIALS_FILE", "credentials")
        && let Some(section) = read_ini_section(&path, std::slice::from_ref(&name))?
    {
        found = true;
        profile.access_key_id = section.get("aws_access_key_id").cloned();
        profile.secret_access_key = section.get("aws_secret_access_key").cloned();
        profile.session_token = section.get("aws_session_token").cloned();
        profile.region = section.get("region").cloned();
    }
    // The config file names profiles `[profile x]`, except `[default]`.
    if let Some(path) = file("AWS_CONFIG_FILE", "config")
        && let Some(section) = read_ini_section(&path, &[format!("profile {name}"), name.clone()])?
    {
        found = true;
        if profile.region.is_none() {
            profile.region = section.get("region").cloned();
        }
        if profile.access_key_id.is_none() {
            profile.access_key_id = section.get("aws_access_key_id").cloned();
            profile.secret_access_key = section.get("aws_secret_access_key").cloned();
            profile.session_token = section.get("aws_session_token").cloned();
        }
    }
    match (found, explicit) {
        (true, _) => Ok(Some(profile)),
        (false, Some(p)) => Err(format!(
            "AWS_PROFILE={p} names a profile that is in neither ~/.aws/credentials nor ~/.aws/config: add it there or unset AWS_PROFILE"
        )),
        (false, None) => Ok(None),
    }
}

/// The first of `names` found as a `[section]` of an INI file; `Ok(None)` if the file does not exist.
fn read_ini_section(path: &Path, names: &[String]) -> Result<Option<BTreeMap<String, String>>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim().to_owned());
            sections.entry(name.trim().to_owned()).or_default();
        } else if let (Some(section), Some((k, v))) = (&current, line.split_once('=')) {
            sections.entry(section.clone()).or_default().insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    Ok(names.iter().find_map(|n| sections.remove(n)))
}

/// Parsed `AZURE_STORAGE_CONNECTION_STRING`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AzureConnectionString {
    /// `AccountName`.
    pub account: Option<String>,
    /// `AccountKey`.
    pub key: Option<String>,
    /// `SharedAccessSignature`.
    pub sas: Option<String>,
    /// `BlobEndpoint`, or built from `DefaultEndpointsProtocol` and `EndpointSuffix`.
    pub endpoint: Option<String>,
}

impl AzureConnectionString {
    /// Parses `Key=Value;Key=Value` (values may contain `=`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut fields = BTreeMap::new();
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                format!("AZURE_STORAGE_CONNECTION_STRING: {part:?} is not Key=Value (example: DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=...)")
            })?;
            fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
        let account = fields.get("accountname").cloned();
        let endpoint = fields.get("blobendpoint").cloned().or_else(|| {
            let suffix = fields.get("endpointsuffix")?;
            let protocol = fields.get("defaultendpointsprotocol").map(String::as_str).unwrap_or("https");
            Some(format!("{protocol}://{}.blob.{suffix}", account.as_deref()?))
        });
        Ok(Self {
            account,
            key: fields.get("accountkey").cloned(),
            sas: fields.get("sharedaccesssignature").cloned(),
            endpoint,
        })
    }
}

/// The Azure builder, refusing ambiguous credentials.
pub fn azure_builder(
    location: &StorageLocation,
    cfg: &StorageConfig,
    env: &Environment,
) -> Result<MicrosoftAzureBuilder, StoreError> {
    let conn = match env.get("AZURE_STORAGE_CONNECTION_STRING") {
        Some(s) => Some(AzureConnectionString::parse(s).map_err(|m| config_error(location, m))?),
        None => None,
    };
    // Every way of authenticating that is set, by the variables that set it.
    let key_var =
        ["AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_KEY", "AZURE_STORAGE_MASTER_KEY"]
            .into_iter()
            .find(|v| env.get(v).is_some());
    let sas_var = ["AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_SAS_KEY"].into_iter().find(|v| env.get(v).is_some());
    let mut sources: Vec<&str> = Vec::new();
    if conn.as_ref().is_some_and(|c| c.key.is_some() || c.sas.is_some()) {
        sources.push("AZURE_STORAGE_CONNECTION_STRING");
    }
    sources.extend(key_var);
    sources.extend(sas_var);
    if env.get("AZURE_STORAGE_TOKEN").is_some() {
        sources.push("AZURE_STORAGE_TOKEN");
    }
    if env.get("AZURE_CLIENT_SECRET").is_some() || env.get("AZURE_STORAGE_CLIENT_SECRET").is_some() {
        sources.push("AZURE_CLIENT_SECRET (service principal)");
    }
    if sources.len() > 1 {
        return Err(config_error(
            location,
            format!(
                "conflicting Azure credentials: {} are all set; keep exactly one way to authenticate and unset the others",
                sources.join(", ")
            ),
        ));
    }
    let emulator = cfg.azure_use_emulator
        || env.get("AZURE_STORAGE_USE_EMULATOR").is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");

    let mut b = MicrosoftAzureBuilder::new();
    for (k, v) in env.with_prefix("AZURE_") {
        if k == "AZURE_STORAGE_CONNECTION_STRING" {
            continue;
        }
        if let Ok(key) = k.to_ascii_lowercase().parse::<AzureConfigKey>() {
            b = b.with_config(key, v);
        }
    }
    if let Some(var) = key_var {
        // Esop and the Azure CLI also accept AZURE_STORAGE_KEY, which object_store does not know.
        b = b.with_access_key(env.get(var).unwrap_or_default());
    }
    let account = cfg
        .azure_account
        .clone()
        .or_else(|| env.get("AZURE_STORAGE_ACCOUNT_NAME").map(str::to_owned))
        .or_else(|| env.get("AZURE_STORAGE_ACCOUNT").map(str::to_owned))
        .or_else(|| conn.as_ref().and_then(|c| c.account.clone()));
    if let Some(c) = &conn {
        if let Some(k) = &c.key {
            b = b.with_access_key(k);
        }
        if let Some(sas) = &c.sas {
            b = b.with_config(AzureConfigKey::SasKey, sas);
        }
    }
    let endpoint = cfg
        .azure_endpoint
        .clone()
        .or_else(|| env.get("AZURE_STORAGE_ENDPOINT").map(str::to_owned))
        .or_else(|| env.get("AZURE_ENDPOINT").map(str::to_owned))
        .or_else(|| conn.as_ref().and_then(|c| c.endpoint.clone()));
    if let Some(e) = &endpoint {
        b = b.with_endpoint(e.clone());
    }
    match (&account, emulator) {
        (Some(a), _) => b = b.with_account(a),
        (None, true) => {}
        (None, false) => {
            return Err(config_error(
                location,
                "no Azure storage account: set AZURE_STORAGE_ACCOUNT_NAME (or --azure-account, or AccountName in AZURE_STORAGE_CONNECTION_STRING)".into(),
            ));
        }
    }
    if emulator {
        b = b.with_use_emulator(true);
    }
    Ok(b.with_container_name(location.bucket())
        .with_client_options(client_options(location, cfg, env, endpoint.as_deref())?)
        .with_retry(retry_config(cfg)))
}

/// The GCS builder.
pub fn gcs_builder(
    location: &StorageLocation,
    cfg: &StorageConfig,
    env: &Environment,
) -> Result<GoogleCloudStorageBuilder, StoreError> {
    let mut b = GoogleCloudStorageBuilder::new();
    for (k, v) in env.with_prefix("GOOGLE_") {
        if let Ok(key) = k.to_ascii_lowercase().parse::<GoogleConfigKey>() {
            b = b.with_config(key, v);
        }
    }
    if let Some(path) = env.get("SERVICE_ACCOUNT") {
        b = b.with_service_account_path(path);
    }
    let opts = client_options(location, cfg, env, env.get("GOOGLE_BASE_URL"))?;
    Ok(b.with_bucket_name(location.bucket()).with_client_options(opts).with_retry(retry_config(cfg)))
}

fn local_store(location: &StorageLocation) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let dir = location.local_dir().unwrap_or_default();
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(config_error(location, format!("{} exists but is not a directory", dir.display())));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::MissingBucket {
                location: location.to_string(),
                what: "directory",
                hint: format!("create it (mkdir -p {}) or check that its file system is mounted", dir.display()),
            });
        }
        Err(e) => return Err(StoreError::local("stat", dir, e)),
    }
    let fs = LocalFileSystem::new_with_prefix(&dir)
        .map_err(|e| config_error(location, format!("local file system: {e}")))?
        .with_automatic_cleanup(true);
    Ok(Arc::new(fs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::aws::AmazonS3ConfigKey as K;

    fn loc(s: &str) -> StorageLocation {
        s.parse().unwrap()
    }

    #[test]
    fn s3_endpoint_from_option_or_environment_uses_path_style() {
        let env = Environment::from_pairs([
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "SECRET"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_REGION", "eu-west-3"),
        ]);
        let b = s3_builder(&loc("s3://bkt/prefix"), &StorageConfig::default(), &env).unwrap();
        assert_eq!(b.get_config_value(&K::Endpoint).as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(b.get_config_value(&K::VirtualHostedStyleRequest).as_deref(), Some("false"));
        assert_eq!(b.get_config_value(&K::Region).as_deref(), Some("eu-west-3"));
        assert_eq!(b.get_config_value(&K::Bucket).as_deref(), Some("bkt"));
        assert_eq!(b.get_config_value(&K::AccessKeyId).as_deref(), Some("AKID"));
        assert_eq!(b.get_config_value(&K::UnsignedPayload).as_deref(), Some("true"));
        assert_eq!(b.get_config_value(&K::Checksum).as_deref(), Some("crc64nvme"));

        let cfg = StorageConfig {
            s3_endpoint: Some("https://rgw.example.com:8443".into()),
            s3_region: Some("default".into()),
            s3_checksum: S3Checksum::Sha256,
            s3_sign_payload: true,
            ..StorageConfig::default()
        };
        let b = s3_builder(&loc("s3://bkt"), &cfg, &env).unwrap();
        assert_eq!(b.get_config_value(&K::Endpoint).as_deref(), Some("https://rgw.example.com:8443"));
        assert_eq!(b.get_config_value(&K::Region).as_deref(), Some("default"));
        assert_eq!(b.get_config_value(&K::Checksum).as_deref(), Some("sha256"));
        assert_eq!(b.get_config_value(&K::UnsignedPayload).as_deref(), Some("false"));
    }

    #[test]
    fn s3_reads_the_shared_credentials_and_config_files() {
        let dir = tempfile::tempdir().unwrap();
        let aws = dir.path().join(".aws");
        std::fs::create_dir(&aws).unwrap();
        std::fs::write(
            aws.join("credentials"),
            "[default]\naws_access_key_id = DEF\naws_secret_access_key = DEFS\n\n[backup]\naws_access_key_id=BK\naws_secret_access_key=BKS\naws_session_token=TOK\n",
        )
        .unwrap();
        std::fs::write(aws.join("config"), "[default]\nregion = us-west-2\n[profile backup]\nregion=ap-south-1\n")
            .unwrap();
        let home = dir.path().to_str().unwrap();

        let env = Environment::from_pairs([("HOME", home)]);
        let b = s3_builder(&loc("s3://bkt"), &StorageConfig::default(), &env).unwrap();
        assert_eq!(b.get_config_value(&K::AccessKeyId).as_deref(), Some("DEF"));
        assert_eq!(b.get_config_value(&K::Region).as_deref(), Some("us-west-2"));

        let env = Environment::from_pairs([("HOME", home), ("AWS_PROFILE", "backup")]);
        let b = s3_builder(&loc("s3://bkt"), &StorageConfig::default(), &env).unwrap();
        assert_eq!(b.get_config_value(&K::AccessKeyId).as_deref(), Some("BK"));
        assert_eq!(b.get_config_value(&K::Token).as_deref(), Some("TOK"));
        assert_eq!(b.get_config_value(&K::Region).as_deref(), Some("ap-south-1"));

        // Environment credentials win over the file.
        let env =
            Environment::from_pairs([("HOME", home), ("AWS_ACCESS_KEY_ID", "ENV"), ("AWS_SECRET_ACCESS_KEY", "E")]);
        let b = s3_builder(&loc("s3://bkt"), &StorageConfig::default(), &env).unwrap();
        assert_eq!(b.get_config_value(&K::AccessKeyId).as_deref(), Some("ENV"));

        let env = Environment::from_pairs([("HOME", home), ("AWS_PROFILE", "nosuch")]);
        let e = s3_builder(&loc("s3://bkt"), &StorageConfig::default(), &env).unwrap_err().to_string();
        assert!(e.contains("AWS_PROFILE=nosuch") && e.contains("unset AWS_PROFILE"), "{e}");
    }

    #[test]
    fn s3_ca_bundle_must_be_readable_pem() {
        let env = Environment::from_pairs([("AWS_CA_BUNDLE", "/nonexistent/ca.pem")]);
        let e = s3_builder(&loc("s3://bkt"), &StorageConfig::default(), &env).unwrap_err().to_string();
        assert!(e.contains("AWS_CA_BUNDLE=/nonexistent/ca.pem") && e.contains("cannot read"), "{e}");
    }

    #[test]
    fn azure_refuses_conflicting_credentials() {
        let env = Environment::from_pairs([
            ("AZURE_STORAGE_ACCOUNT_NAME", "acct"),
            ("AZURE_STORAGE_ACCOUNT_KEY", "a2V5"),
            ("AZURE_STORAGE_SAS_TOKEN", "sv=2021&sig=x"),
        ]);
        let e = azure_builder(&loc("azure://backups"), &StorageConfig::default(), &env).unwrap_err().to_string();
        assert!(e.contains("conflicting Azure credentials"), "{e}");
        assert!(e.contains("AZURE_STORAGE_ACCOUNT_KEY") && e.contains("AZURE_STORAGE_SAS_TOKEN"), "{e}");

        let env = Environment::from_pairs([
            ("AZURE_STORAGE_CONNECTION_STRING", "AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net"),
            ("AZURE_STORAGE_KEY", "b3RoZXI="),
        ]);
        let e = azure_builder(&loc("azure://backups"), &StorageConfig::default(), &env).unwrap_err().to_string();
        assert!(e.contains("AZURE_STORAGE_CONNECTION_STRING") && e.contains("AZURE_STORAGE_KEY"), "{e}");
    }

    #[test]
    fn azure_needs_an_account_and_reads_connection_strings() {
        let e = azure_builder(&loc("azure://backups"), &StorageConfig::default(), &Environment::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no Azure storage account") && e.contains("AZURE_STORAGE_ACCOUNT_NAME"), "{e}");

        let env = Environment::from_pairs([(
            "AZURE_STORAGE_CONNECTION_STRING",
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net",
        )]);
        let b = azure_builder(&loc("azure://backups/p"), &StorageConfig::default(), &env).unwrap();
        assert_eq!(b.get_config_value(&AzureConfigKey::AccountName).as_deref(), Some("acct"));
        assert_eq!(b.get_config_value(&AzureConfigKey::AccessKey).as_deref(), Some("a2V5"));
        assert_eq!(b.get_config_value(&AzureConfigKey::ContainerName).as_deref(), Some("backups"));
        assert_eq!(
            b.get_config_value(&AzureConfigKey::Endpoint).as_deref(),
            Some("https://acct.blob.core.windows.net")
        );

        let cfg = StorageConfig {
            azure_endpoint: Some("http://127.0.0.1:10000/devstoreaccount1".into()),
            ..StorageConfig::default()
        };
        let env = Environment::from_pairs([("AZURE_STORAGE_ACCOUNT_NAME", "devstoreaccount1")]);
        let b = azure_builder(&loc("azure://backups"), &cfg, &env).unwrap();
        assert_eq!(
            b.get_config_value(&AzureConfigKey::Endpoint).as_deref(),
            Some("http://127.0.0.1:10000/devstoreaccount1")
        );
        assert!(build_store(&loc("azure://backups"), &cfg, &env).is_ok(), "an http endpoint allows http");

        let c = AzureConnectionString::parse(
            "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;AccountName=devstoreaccount1;SharedAccessSignature=sv=2021&sig=a=b",
        )
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:10000/devstoreaccount1"));
        assert_eq!(c.sas.as_deref(), Some("sv=2021&sig=a=b"));
        assert!(AzureConnectionString::parse("garbage").unwrap_err().contains("Key=Value"));
    }

    #[test]
    fn gcs_configuration_comes_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("sa.json");
        std::fs::write(&key, "{}").unwrap();
        let env = Environment::from_pairs([("GOOGLE_SERVICE_ACCOUNT_PATH", key.to_str().unwrap())]);
        let b = gcs_builder(&loc("gs://my-bucket/p"), &StorageConfig::default(), &env).unwrap();
        assert_eq!(b.get_config_value(&GoogleConfigKey::Bucket).as_deref(), Some("my-bucket"));
        assert_eq!(b.get_config_value(&GoogleConfigKey::ServiceAccount).as_deref(), key.to_str());

        // A credentials file that does not exist is reported when the client is built, with a hint.
        let env = Environment::from_pairs([("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/adc.json")]);
        let e = build_store(&loc("gs://my-bucket"), &StorageConfig::default(), &env).unwrap_err().to_string();
        assert!(e.contains("gs://my-bucket") && e.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{e}");
    }

    #[test]
    fn local_directory_must_exist() {
        let e = build_store(&loc("file:///nonexistent/cassette"), &StorageConfig::default(), &Environment::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("directory does not exist") && e.contains("mkdir -p /nonexistent/cassette"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let l = StorageLocation::local(dir.path()).unwrap();
        assert!(build_store(&l, &StorageConfig::default(), &Environment::default()).is_ok());
    }

    #[test]
    fn invalid_storage_config_is_reported_before_building() {
        let cfg = StorageConfig { s3_endpoint: Some("not a url".into()), ..StorageConfig::default() };
        let e = build_store(&loc("s3://bkt"), &cfg, &Environment::default()).unwrap_err().to_string();
        assert!(e.contains("s3_endpoint") && e.contains("https://"), "{e}");
    }

    #[test]
    fn debug_output_shows_no_credentials() {
        let env = Environment::from_pairs([
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-secret"),
            ("AZURE_STORAGE_ACCOUNT_KEY", "a2V5LXNlY3JldA=="),
        ]);
        let text = format!("{env:?}");
        assert!(text.contains("AWS_SECRET_ACCESS_KEY"), "{text}");
        assert!(!text.contains("wJalrXUtnFEMI-secret") && !text.contains("a2V5LXNlY3JldA=="), "{text}");
        let loc: StorageLocation = "azure://backups/p".parse().unwrap();
        let env = Environment::from_pairs([
            ("AZURE_STORAGE_ACCOUNT_NAME", "acct"),
            ("AZURE_STORAGE_ACCOUNT_KEY", "a2V5LXNlY3JldA=="),
        ]);
        let repo =
            crate::storage::Repository::connect(&loc, &StorageConfig::default(), &Default::default(), &env).unwrap();
        let text = format!("{repo:?}");
        assert!(
            text.contains("azure://backups/p") && !text.contains("a2V5") && !text.contains("107, 101, 121"),
            "{text}"
        );
    }
}
