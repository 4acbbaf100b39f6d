//! Mutual TLS between every Cassette process: loading, role checks, reloading, tonic glue.
//!
//! Every certificate is issued by the deployment's own CA (`cassette certs init`) and names its
//! **role** in a subject-alternative-name URI (`urn:cassette:role:coordinator`, `…:agent`,
//! `…:operator`, `…:admin`). Both ends of every connection present a certificate and verify the other's
//! chain against the CA:
//!
//! - the TLS layer accepts only certificates that chain to the CA, are within their validity and
//!   carry a Cassette role; a client also checks that the server has the role it expects (an
//!   operator talks to coordinators, a coordinator to agents and to other coordinators) and the
//!   address it dialled (IP or DNS SAN);
//! - each gRPC service then checks the client's role ([`require_role`]): agents accept only
//!   coordinators, the raft transport only coordinators, the operator API only operators. Doing
//!   this per service (instead of failing the handshake) lets the client get a readable
//!   `PermissionDenied` naming the role it presented and the one required.
//!
//! Certificates, keys and the CA are re-read when their files change ([`TlsContext::reload_if_changed`],
//! called by a small worker), so renewing a certificate needs no restart. A file that fails to
//! load keeps the previous material in use and is retried.
//!
//! Plain text exists only behind an explicit insecure mode ([`TlsMode::Insecure`]); services then
//! skip role checks, and binaries print a warning.
//!
//! # Layout
//! - [`Role`], [`PeerIdentity`], [`TlsPaths`], [`TlsContext`]: material and its identity.
//! - [`serve_incoming`]: accepted connections (TLS handshakes in parallel) as a tonic incoming stream.
//! - [`channel`]: a lazily connecting tonic `Channel` over TLS to one address.
//! - [`explain_transport_error`]: turns TLS failures buried in a tonic error into a sentence.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What a certificate allows its holder to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A coordinator replica: talks to agents and to other replicas.
    Coordinator,
    /// An agent on a Cassandra host.
    Agent,
    /// A person or script using the `cassette` CLI for day-to-day work: backups, restores,
    /// verification, listing.
    Operator,
    /// A person using the `cassette` CLI for what removes data or changes trust: everything an
    /// operator may do, plus purge, delete, schedules, cluster removal, replica membership and
    /// revocation.
    Admin,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Coordinator, Role::Agent, Role::Operator, Role::Admin];

    /// The stable name (`coordinator`, `agent`, `operator`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Agent => "agent",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The SAN URI that carries the role in a certificate.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }
}

impl Role {
    /// "a coordinator", "an agent", "an operator".
    pub fn with_article(self) -> &'static str {
        match self {
            Role::Coordinator => "a coordinator",
            Role::Agent => "an agent",
            Role::Operator => "an operator",
            Role::Admin => "an admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: expected coordinator, agent, operator or admin"))
    }
}

/// Prefix of the SAN URI that names a certificate's role.
pub const ROLE_URI_PREFIX: &str = "urn:cassette:role:";

/// Who is on the other end of a connection, as its certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The certificate's role; `None` on an insecure (plain-text) connection.
    pub role: Option<Role>,
    /// The certificate's common name (empty on an insecure connection).
    pub name: String,
    /// The DNS names and IP addresses the certificate names (its SANs).
    pub names: Vec<String>,
    /// The certificate's serial number (lowercase hex; empty on an insecure connection).
    pub serial: String,
    /// The remote address.
    pub address: Option<SocketAddr>,
}

impl PeerIdentity {
    /// Whether the connection is plain text (insecure mode): no identity is known.
    pub fn is_insecure(&self) -> bool {
        self.role.is_none()
    }

    /// Whether the certificate names `host` (an IP address or a DNS name, as in `host:port`).
    pub fn names_host(&self, host: &str) -> bool {
        names_host(&self.names, host)
    }
}

/// Whether `host` is among `names` (SANs): IP addresses compared as addresses, DNS names
/// without regard to case.
pub fn names_host(names: &[String], host: &str) -> bool {
    let ip = host.parse::<IpAddr>().ok();
    names.iter().any(|n| match (ip, n.parse::<IpAddr>().ok()) {
        (Some(a), Some(b)) => a == b,
        (None, None) => n.eq_ignore_ascii_case(host),
        _ => false,
    })
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.role {
            Some(r) => write!(f, "{r} certificate {:?}", self.name)?,
            None => f.write_str("insecure connection")?,
        }
        if let Some(a) = self.address {
            write!(f, " from {a}")?;
        }
        Ok(())
    }
}

/// Checks the caller's role in a gRPC service: `Ok` when the connection presented one of
/// `allowed`, or when it is an insecure connection (insecure mode checks nothing). The error is
/// a `PermissionDenied` naming what was presented and what `service` requires.
#[allow(clippy::result_large_err)]
pub fn require_role<T>(
    request: &tonic::Request<T>,
    service: &str,
    allowed: &[Role],
) -> Result<PeerIdentity, tonic::Status> {
    check_role(request, service, None, allowed)
}

/// Like [`require_role`], for one call of a service that needs more than the service does
/// (`action` names it: "removing a replica").
#[allow(clippy::result_large_err)]
pub fn require_role_to<T>(
    request: &tonic::Request<T>,
    service: &str,
    action: &str,
    allowed: &[Role],
) -> Result<PeerIdentity, tonic::Status> {
    check_role(request, service, Some(action), allowed)
}

#[allow(clippy::result_large_err)]
fn check_role<T>(
    request: &tonic::Request<T>,
    service: &str,
    action: Option<&str>,
    allowed: &[Role],
) -> Result<PeerIdentity, tonic::Status> {
    let Some(peer) = request.extensions().get::<PeerIdentity>().cloned() else {
        return Err(tonic::Status::internal(format!("{service}: connection identity missing (server misconfigured)")));
    };
    match peer.role {
        None => Ok(peer),
        Some(r) if allowed.contains(&r) => Ok(peer),
        Some(r) => {
            let wanted: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
            let hint = wanted.first().copied().unwrap_or("operator");
            tracing::warn!(%peer, service, action, "refused a request: wrong certificate role");
            let msg = match action {
                None => format!(
                    "{service} accepts only {} certificates, but this connection presented {} certificate ({:?}): use a certificate issued with `cassette certs issue --role {hint}`",
                    wanted.join(" or "),
                    r.with_article(),
                    peer.name,
                ),
                Some(a) => format!(
                    "{a} needs {} certificate, but this connection presented {} certificate ({:?}): ask for one issued with `cassette certs issue --role {hint}` (docs/security.md lists what each role may do)",
                    allowed.iter().map(|r| r.with_article()).collect::<Vec<_>>().join(" or "),
                    r.with_article(),
                    peer.name,
                ),
            };
            Err(tonic::Status::permission_denied(msg))
        }
    }
}

/// Refuses a call from the wrong role before its body is read: a tonic interceptor (it sees the
/// request's headers and the connection's identity, not its message), so a caller with the
/// wrong certificate costs the server no memory and no decoding. Services still call
/// [`require_role`] (or a finer check) on the decoded request.
///
/// The gate also refuses a revoked certificate on a connection opened before it was revoked
/// (handshakes check the list too, see [`TlsContext::set_revocations`]).
#[derive(Debug, Clone)]
pub struct RoleGate {
    service: &'static str,
    allowed: &'static [Role],
    tls: Option<Arc<TlsContext>>,
}

impl RoleGate {
    /// A gate for `service` (named in refusals) that lets `allowed` roles through, and no
    /// certificate that `tls`'s revocation list names.
    pub fn new(service: &'static str, allowed: &'static [Role], tls: &TlsMode) -> Self {
        Self { service, allowed, tls: tls.context().cloned() }
    }
}

impl tonic::service::Interceptor for RoleGate {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let peer = require_role(&request, self.service, self.allowed)?;
        if let Some(ctx) = &self.tls
            && let Some(why) = ctx.revocations().refusal(&peer.serial, &peer.name)
        {
            tracing::warn!(%peer, service = self.service, "refused a request: {why}");
            return Err(tonic::Status::permission_denied(format!(
                "{}: {why}: ask an admin for a new certificate (`cassette certs issue`)",
                self.service
            )));
        }
        Ok(request)
    }
}

/// Limits of one gRPC server. Every limit is a setting; these are the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerLimits {
    /// Largest request message a service decodes, in bytes. A larger one is refused
    /// (`OUT_OF_RANGE`, naming the limit) from its 5-byte length prefix, before it is read.
    pub request_bytes: usize,
    /// Requests (HTTP/2 streams) in flight on one connection; more wait for one to end.
    pub concurrent_streams: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self { request_bytes: 4 << 20, concurrent_streams: 64 }
    }
}

impl ServerLimits {
    /// Every problem with these limits (`prefix` names the settings section).
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.request_bytes < 64 << 10 {
            p.push(format!("{prefix}request_bytes must be at least 65536 (64 KiB)"));
        }
        if self.concurrent_streams == 0 {
            p.push(format!("{prefix}concurrent_streams must be at least 1"));
        }
        p
    }
}

/// Certificates refused at every handshake and every call, whatever their validity: the
/// deny list an admin builds with `cassette certs revoke`. Coordinators hold it in their
/// replicated state; agents receive it from the leader and keep it on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Revocations {
    /// The raft index of the newest revocation: a list with a lower version never replaces one
    /// with a higher version.
    pub version: u64,
    /// Serial numbers (lowercase hex).
    pub serials: std::collections::BTreeSet<String>,
    /// Certificate (common) names: every certificate of that name, issued before or after.
    pub names: std::collections::BTreeSet<String>,
}

impl Revocations {
    /// Why a certificate with `serial` and `name` is refused, or `None` when it is not revoked.
    pub fn refusal(&self, serial: &str, name: &str) -> Option<String> {
        if !serial.is_empty() && self.serials.contains(&serial.to_ascii_lowercase()) {
            return Some(format!("certificate {name:?} (serial {serial}) has been revoked"));
        }
        if self.names.contains(name) {
            return Some(format!("every certificate named {name:?} has been revoked (this one has serial {serial})"));
        }
        None
    }
}

/// Where a process's CA, certificate and key are.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// The CA certificate (PEM) every peer must chain to.
    pub ca: PathBuf,
    /// This process's certificate chain (PEM).
    pub cert: PathBuf,
    /// This process's private key (PEM, PKCS#8).
    pub key: PathBuf,
}

impl TlsPaths {
    /// The conventional layout of a directory made by `cassette certs issue`: `ca.pem`,
    /// `<name>.pem`, `<name>.key`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        Self { ca: dir.join("ca.pem"), cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")) }
    }
}

/// mTLS or plain text.
#[derive(Debug, Clone)]
pub enum TlsMode {
    /// Mutual TLS with this material (the default).
    Mutual(Arc<TlsContext>),
    /// Plain text, no authentication: only behind an explicit `--insecure`.
    Insecure,
}

impl TlsMode {
    /// Loads mutual-TLS material, or insecure mode when `insecure` is set. With `insecure`, paths are ignored.
    pub fn load(paths: Option<&TlsPaths>, insecure: bool) -> Result<Self, TlsError> {
        if insecure {
            return Ok(TlsMode::Insecure);
        }
        let Some(paths) = paths else {
            return Err(TlsError::NoMaterial);
        };
        Ok(TlsMode::Mutual(Arc::new(TlsContext::load(paths.clone())?)))
    }

    /// The context, in mutual mode.
    pub fn context(&self) -> Option<&Arc<TlsContext>> {
        match self {
            TlsMode::Mutual(c) => Some(c),
            TlsMode::Insecure => None,
        }
    }

    /// The warning binaries print in insecure mode.
    pub const INSECURE_WARNING: &'static str = "WARNING: --insecure: connections are plain text and NOT authenticated; anyone who can reach this port can use it. Use mutual TLS (`cassette certs`) outside of tests.";
}

/// The address a server binds: `explicit` (from `--listen` or its variable) when given, else
/// `default`; in insecure mode without an explicit address, the loopback address on the
/// default's port, so plain text is never offered to the network by accident. The second value
/// is what to tell the user (print it and log it), when there is something to say.
pub fn listen_address(
    explicit: Option<SocketAddr>,
    default: SocketAddr,
    insecure: bool,
) -> (SocketAddr, Option<String>) {
    match (explicit, insecure) {
        (Some(a), true) if !a.ip().is_loopback() => (
            a,
            Some(format!(
                "WARNING: --insecure: plain text on {a}: anyone who can reach this address is trusted without a certificate"
            )),
        ),
        (Some(a), _) => (a, None),
        (None, false) => (default, None),
        (None, true) => {
            let a = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), default.port());
            (
                a,
                Some(format!(
                    "--insecure: listening on the loopback address {a} only; pass --listen <address:port> explicitly to accept plain-text connections from other hosts"
                )),
            )
        }
    }
}

/// A TLS problem, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// No paths were given and insecure mode was not asked for.
    #[error(
        "no TLS certificate configured: pass --ca, --cert and --key (files made by `cassette certs init` and `cassette certs issue`), or --insecure for plain text in tests"
    )]
    NoMaterial,
    /// A file could not be read.
    #[error("read {what} {}: {source}", path.display())]
    Read {
        /// Which file ("CA certificate", …).
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file does not hold what it should.
    #[error("{what} {}: {reason}", path.display())]
    Invalid {
        /// Which file.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// One loaded set of material.
struct Loaded {
    fingerprint: Fingerprint,
    key: Arc<CertifiedKey>,
    role: Role,
    name: String,
    serial: String,
    not_after: SystemTime,
    client_verifier: Arc<dyn ClientCertVerifier>,
    server_verifier: Arc<rustls::client::WebPkiServerVerifier>,
}

/// Size and modification time of the three files: a change of any means "reload".
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Vec<(u64, Option<SystemTime>)>);

impl Fingerprint {
    fn of(paths: &TlsPaths) -> Self {
        Self(
            [&paths.ca, &paths.cert, &paths.key]
                .into_iter()
                .map(|p| std::fs::metadata(p).map(|m| (m.len(), m.modified().ok())).unwrap_or((0, None)))
                .collect(),
        )
    }
}

/// The CA, certificate and key of one process, reloaded when the files change.
pub struct TlsContext {
    paths: TlsPaths,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Loaded>>,
    revoked: RwLock<Arc<Revocations>>,
}

impl fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cur = self.current();
        f.debug_struct("TlsContext")
            .field("paths", &self.paths)
            .field("role", &cur.role)
            .field("name", &cur.name)
            .finish()
    }
}

impl TlsContext {
    /// Loads the material; fails with a message naming the file and what is wrong.
    pub fn load(paths: TlsPaths) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let loaded = load(&paths, &provider)?;
        Ok(Self { paths, provider, current: RwLock::new(Arc::new(loaded)), revoked: RwLock::default() })
    }

    /// The revocation list in force.
    pub fn revocations(&self) -> Arc<Revocations> {
        self.revoked.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Puts `list` in force unless the one in force is newer (a higher version). Every later
    /// handshake, in both directions, and every call through a [`RoleGate`] checks it.
    /// Returns whether it changed.
    pub fn set_revocations(&self, list: Revocations) -> bool {
        let mut cur = self.revoked.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if list.version < cur.version || **cur == list {
            return false;
        }
        tracing::info!(
            version = list.version,
            serials = list.serials.len(),
            names = list.names.len(),
            "revocation list updated"
        );
        *cur = Arc::new(list);
        true
    }

    /// This process's serial number (lowercase hex).
    pub fn serial(&self) -> String {
        self.current().serial.clone()
    }

    /// A warning when this process's certificate expires within `within` (or has expired).
    pub fn expiry_warning(&self, within: Duration) -> Option<String> {
        expiry_warning(&self.name(), self.not_after(), within, SystemTime::now())
    }

    fn current(&self) -> Arc<Loaded> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The files.
    pub fn paths(&self) -> &TlsPaths {
        &self.paths
    }

    /// This process's role, from its certificate.
    pub fn role(&self) -> Role {
        self.current().role
    }

    /// This process's certificate name (common name).
    pub fn name(&self) -> String {
        self.current().name.clone()
    }

    /// When this process's certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.current().not_after
    }

    /// Re-reads the files if their size or modification time changed. Returns `Ok(true)` when new
    /// material is in use; on error the previous material stays in use.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let fp = Fingerprint::of(&self.paths);
        if fp == self.current().fingerprint {
            return Ok(false);
        }
        let loaded = load(&self.paths, &self.provider)?;
        tracing::info!(cert = %self.paths.cert.display(), name = %loaded.name, role = %loaded.role, "reloaded TLS certificate");
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(loaded);
        Ok(true)
    }

    /// Runs [`Self::reload_if_changed`] every `interval` until `shutdown`, and logs a warning
    /// when this process's certificate expires within `warn_within`: at the start, after a
    /// reload, and once a day.
    pub fn spawn_reloader(
        self: &Arc<Self>,
        interval: Duration,
        warn_within: Duration,
        shutdown: CancellationToken,
    ) -> crate::worker::WorkerHandle {
        let ctx = Arc::clone(self);
        let warned: Arc<std::sync::Mutex<Option<std::time::Instant>>> = Arc::default();
        let warn = move |ctx: &TlsContext, force: bool| {
            let mut w = warned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if !force && w.is_some_and(|t| t.elapsed() < Duration::from_secs(24 * 3600)) {
                return;
            }
            if let Some(m) = ctx.expiry_warning(warn_within) {
                tracing::warn!(cert = %ctx.paths.cert.display(), "{m}");
                *w = Some(std::time::Instant::now());
            }
        };
        warn(&ctx, true);
        crate::worker::spawn_periodic("tls-reload", interval, shutdown, move |state| {
            let ctx = Arc::clone(&ctx);
            let warn = warn.clone();
            async move {
                match ctx.reload_if_changed() {
                    Ok(true) => {
                        state.set(format!("reloaded {}", ctx.paths.cert.display()));
                        warn(&ctx, true);
                    }
                    Ok(false) => warn(&ctx, false),
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS files changed but cannot be loaded; keeping the previous certificate");
                        state.set(format!("keeping previous certificate: {e}"));
                    }
                }
            }
        })
    }

    /// A server configuration: requires a client certificate from the CA with any Cassette role
    /// (services check the role they need with [`require_role`]).
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let verifier = Arc::new(DynClientVerifier { ctx: Arc::clone(self) });
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_client_cert_verifier(verifier)
                    .with_cert_resolver(Arc::new(DynResolver { ctx: Arc::clone(self) }))
            })
            .unwrap_or_else(|_| unreachable_config());
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        // No session resumption: a resumed session skips the client certificate's verification,
        // and every handshake must check the revocation list (connections are long-lived and
        // few, so full handshakes cost little).
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        Arc::new(cfg)
    }

    /// A client configuration that presents this process's certificate and accepts only a
    /// server certificate with role `expect`.
    pub fn client_config(self: &Arc<Self>, expect: Role) -> Arc<rustls::ClientConfig> {
        let verifier = Arc::new(DynServerVerifier { ctx: Arc::clone(self), expect });
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_client_cert_resolver(Arc::new(DynResolver { ctx: Arc::clone(self) }))
            })
            .unwrap_or_else(|_| unreachable_client_config());
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(cfg)
    }
}

// The aws-lc-rs provider supports the safe default protocol versions; these cannot fail. They are
// functions (not panics in line) to keep the builder chains readable.
#[allow(clippy::panic)]
fn unreachable_config() -> rustls::ServerConfig {
    panic!("the aws-lc-rs provider does not support TLS 1.2/1.3")
}
#[allow(clippy::panic)]
fn unreachable_client_config() -> rustls::ClientConfig {
    panic!("the aws-lc-rs provider does not support TLS 1.2/1.3")
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_owned(), source })
}

fn load(paths: &TlsPaths, provider: &Arc<CryptoProvider>) -> Result<Loaded, TlsError> {
    let fingerprint = Fingerprint::of(paths);
    let invalid = |what, path: &Path, reason: String| TlsError::Invalid { what, path: path.to_owned(), reason };
    let ca_pem = read("CA certificate", &paths.ca)?;
    let mut roots = RootCertStore::empty();
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(&ca_pem) {
        let c = c.map_err(|e| invalid("CA certificate", &paths.ca, format!("not PEM: {e}")))?;
        roots.add(c).map_err(|e| invalid("CA certificate", &paths.ca, format!("not a usable CA certificate: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(invalid("CA certificate", &paths.ca, "no certificate in the file".into()));
    }
    let cert_pem = read("certificate", &paths.cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid("certificate", &paths.cert, format!("not PEM: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(invalid("certificate", &paths.cert, "no certificate in the file".into()));
    };
    let info = CertInfo::parse(leaf).map_err(|e| invalid("certificate", &paths.cert, e))?;
    let role = info.role.ok_or_else(|| {
        invalid(
            "certificate",
            &paths.cert,
            "has no Cassette role (issue it with `cassette certs issue --role …`)".into(),
        )
    })?;
    let key_pem = read("private key", &paths.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| invalid("private key", &paths.key, format!("not a PEM private key: {e}")))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| invalid("private key", &paths.key, format!("unusable: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| invalid("private key", &paths.key, format!("does not match {}: {e}", paths.cert.display())))?;
    let roots = Arc::new(roots);
    let client_verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(provider))
        .build()
        .map_err(|e| invalid("CA certificate", &paths.ca, format!("cannot verify clients with it: {e}")))?;
    let server_verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(provider))
        .build()
        .map_err(|e| invalid("CA certificate", &paths.ca, format!("cannot verify servers with it: {e}")))?;
    Ok(Loaded {
        fingerprint,
        key: Arc::new(certified),
        role,
        name: info.common_name,
        serial: info.serial,
        not_after: info.not_after,
        client_verifier,
        server_verifier,
    })
}

/// How long before its end a certificate is warned about, unless configured otherwise.
pub const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// "certificate "x" expires in N days (…): renew it …" when `not_after` is within `within` of
/// `now`, or has passed.
pub fn expiry_warning(name: &str, not_after: SystemTime, within: Duration, now: SystemTime) -> Option<String> {
    let when = chrono::DateTime::<chrono::Utc>::from(not_after).format("%Y-%m-%d %H:%M UTC");
    match not_after.duration_since(now) {
        Err(_) => Some(format!(
            "certificate {name:?} expired on {when}: issue a new one with `cassette certs issue` and put it in place (it is reloaded without a restart)"
        )),
        Ok(left) if left <= within => Some(format!(
            "certificate {name:?} expires in {} days ({when}): issue a new one with `cassette certs issue` and put it in place (it is reloaded without a restart)",
            left.as_secs() / 86_400
        )),
        Ok(_) => None,
    }
}

/// What Cassette reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject common name.
    pub common_name: String,
    /// The role from the SAN URI, if any.
    pub role: Option<Role>,
    /// End of validity.
    pub not_after: SystemTime,
    /// Start of validity.
    pub not_before: SystemTime,
    /// DNS names and IP addresses in the SAN.
    pub names: Vec<String>,
    /// Whether it is a CA certificate.
    pub is_ca: bool,
    /// Serial number, lowercase hex (what `cassette certs revoke --serial` takes).
    pub serial: String,
}

impl CertInfo {
    /// Parses a DER certificate.
    pub fn parse(der: &[u8]) -> Result<Self, String> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let common_name =
            cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or_default().to_owned();
        let mut role = None;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::URI(u) => {
                        if let Some(r) = u.strip_prefix(ROLE_URI_PREFIX) {
                            role = r.parse().ok();
                        }
                    }
                    GeneralName::DNSName(d) => names.push((*d).to_owned()),
                    GeneralName::IPAddress(b) => {
                        if let Ok(a) = <[u8; 4]>::try_from(*b) {
                            names.push(IpAddr::from(a).to_string());
                        } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                            names.push(IpAddr::from(a).to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        let to_time = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 { SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64) } else { SystemTime::UNIX_EPOCH }
        };
        Ok(Self {
            common_name,
            role,
            not_after: to_time(cert.validity().not_after),
            not_before: to_time(cert.validity().not_before),
            names,
            is_ca: cert.is_ca(),
            serial: hex::encode(cert.raw_serial()),
        })
    }
}

fn role_of(cert: &CertificateDer<'_>) -> Result<(Role, CertInfo), rustls::Error> {
    let info = CertInfo::parse(cert).map_err(rustls::Error::General)?;
    match info.role {
        Some(r) => Ok((r, info)),
        None => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(
            NoRole(info.common_name),
        ))))),
    }
}

#[derive(Debug)]
struct NoRole(String);
impl fmt::Display for NoRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "certificate {:?} carries no Cassette role (urn:cassette:role:…)", self.0)
    }
}
impl std::error::Error for NoRole {}

#[derive(Debug)]
struct WrongRole {
    expected: Role,
    got: Role,
    name: String,
}
impl fmt::Display for WrongRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "expected {} certificate but the server presented {} certificate ({:?})",
            self.expected.with_article(),
            self.got.with_article(),
            self.name
        )
    }
}
impl std::error::Error for WrongRole {}

#[derive(Debug)]
struct DynResolver {
    ctx: Arc<TlsContext>,
}

impl ResolvesServerCert for DynResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.ctx.current().key))
    }
}

impl rustls::client::ResolvesClientCert for DynResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.ctx.current().key))
    }
    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct DynClientVerifier {
    ctx: Arc<TlsContext>,
}

impl ClientCertVerifier for DynClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints only help clients pick among several certificates; ours have one.
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.ctx.current().client_verifier.verify_client_cert(end_entity, intermediates, now)?;
        let (_, info) = role_of(end_entity)?;
        if let Some(why) = self.ctx.revocations().refusal(&info.serial, &info.common_name) {
            tracing::warn!("rejected a TLS connection: the client presented a revoked certificate: {why}");
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked));
        }
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ctx.current().client_verifier.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ctx.current().client_verifier.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.ctx.current().client_verifier.supported_verify_schemes()
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct DynServerVerifier {
    ctx: Arc<TlsContext>,
    expect: Role,
}

impl ServerCertVerifier for DynServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.ctx.current().server_verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let (role, info) = role_of(end_entity)?;
        if let Some(why) = self.ctx.revocations().refusal(&info.serial, &info.common_name) {
            tracing::warn!("refused a server: {why}");
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked));
        }
        if role != self.expect {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(WrongRole { expected: self.expect, got: role, name: info.common_name }),
            ))));
        }
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ctx.current().server_verifier.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ctx.current().server_verifier.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.ctx.current().server_verifier.supported_verify_schemes()
    }
}

/// A server-side connection: plain or TLS, with the peer's identity.
#[derive(Debug)]
pub struct ServerConn {
    io: ServerIo,
    peer: PeerIdentity,
}

#[derive(Debug)]
enum ServerIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl tonic::transport::server::Connected for ServerConn {
    type ConnectInfo = PeerIdentity;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

macro_rules! delegate_io {
    ($ty:ty, $field:ident, $($variant:path),+) => {
        impl AsyncRead for $ty {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                match &mut self.get_mut().$field {
                    $($variant(s) => Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }
        impl AsyncWrite for $ty {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match &mut self.get_mut().$field {
                    $($variant(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match &mut self.get_mut().$field {
                    $($variant(s) => Pin::new(s).poll_flush(cx),)+
                }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match &mut self.get_mut().$field {
                    $($variant(s) => Pin::new(s).poll_shutdown(cx),)+
                }
            }
            fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
                match &mut self.get_mut().$field {
                    $($variant(s) => Pin::new(s).poll_write_vectored(cx, bufs),)+
                }
            }
            fn is_write_vectored(&self) -> bool {
                match &self.$field {
                    $($variant(s) => s.is_write_vectored(),)+
                }
            }
        }
    };
}

delegate_io!(ServerConn, io, ServerIo::Plain, ServerIo::Tls);

/// Time allowed for a TLS handshake before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` until `shutdown`, runs TLS handshakes concurrently (a slow
/// or hostile client cannot stall the accept loop), logs rejected handshakes with the reason,
/// and yields the established connections for `tonic::transport::Server::serve_with_incoming`.
pub fn serve_incoming(
    listener: TcpListener,
    tls: TlsMode,
    shutdown: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<Result<ServerConn, io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tls.context().map(|c| tokio_rustls::TlsAcceptor::from(c.server_config()));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tx.closed() => break,
                a = listener.accept() => a,
            };
            let (stream, addr) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let tx = tx.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let conn = match acceptor {
                    None => ServerConn {
                        io: ServerIo::Plain(stream),
                        peer: PeerIdentity {
                            role: None,
                            name: String::new(),
                            names: Vec::new(),
                            serial: String::new(),
                            address: Some(addr),
                        },
                    },
                    Some(acceptor) => {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream).into_fallible()).await {
                            Err(_) => {
                                tracing::warn!(peer = %addr, "TLS handshake timed out; closing the connection");
                                return;
                            }
                            Ok(Err((e, tcp))) => {
                                tracing::warn!(peer = %addr, "rejected a TLS connection: {}", explain_io_error(&e, Side::Server));
                                drain_then_close(tcp).await;
                                return;
                            }
                            Ok(Ok(tls)) => {
                                let peer = tls
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .and_then(|c| role_of(c).ok())
                                    .map(|(role, info)| PeerIdentity {
                                        role: Some(role),
                                        name: info.common_name,
                                        names: info.names,
                                        serial: info.serial,
                                        address: Some(addr),
                                    });
                                let Some(peer) = peer else {
                                    tracing::warn!(peer = %addr, "TLS connection without a usable client certificate; closing");
                                    return;
                                };
                                ServerConn { io: ServerIo::Tls(Box::new(tls)), peer }
                            }
                        }
                    }
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Reads and discards what the refused client still sends (for at most a second) before closing.
/// Closing at once with unread data makes the kernel answer with a reset, which can destroy the
/// alert we just sent before the client reads it; the client would then see "broken pipe"
/// instead of why it was refused.
async fn drain_then_close(mut tcp: TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// A client-side connection; `prefix` holds bytes read ahead after the handshake.
#[derive(Debug)]
pub struct ClientConn {
    io: ClientIo,
    prefix: Vec<u8>,
    pos: usize,
}

#[derive(Debug)]
enum ClientIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ClientConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        let mut s = ClientStreamRef(&mut this.io);
        Pin::new(&mut s).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut ClientStreamRef(&mut self.get_mut().io)).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut ClientStreamRef(&mut self.get_mut().io)).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut ClientStreamRef(&mut self.get_mut().io)).poll_shutdown(cx)
    }
}

struct ClientStreamRef<'a>(&'a mut ClientIo);

impl AsyncRead for ClientStreamRef<'_> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().0 {
            ClientIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStreamRef<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut().0 {
            ClientIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().0 {
            ClientIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().0 {
            ClientIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Dials one address over TLS (or plain TCP) for a tonic `Channel`.
#[derive(Clone)]
struct Connector {
    address: String,
    first_read: Duration,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector").field("address", &self.address).field("tls", &self.tls.is_some()).finish()
    }
}

impl tower_service::Service<tonic::codegen::http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<ClientConn>;
    type Error = io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: tonic::codegen::http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&this.address).await?;
            let _ = tcp.set_nodelay(true);
            let (io, prefix) = match this.tls {
                None => (ClientIo::Plain(tcp), Vec::new()),
                Some((connector, name)) => {
                    let mut tls = connector.connect(name, tcp).await?;
                    // With TLS 1.3 the server checks our certificate after our side of the
                    // handshake is done, and a refusal only shows on the first read. Read the
                    // server's first bytes (its HTTP/2 settings) now, so that a refusal fails the
                    // connection attempt with the server's reason instead of surfacing later as
                    // a cancelled request or a broken pipe. The bytes are replayed to HTTP/2.
                    let mut first = vec![0u8; 16 * 1024];
                    let n = tokio::time::timeout(this.first_read, tokio::io::AsyncReadExt::read(&mut tls, &mut first))
                        .await
                        .map_err(|_| {
                            io::Error::new(io::ErrorKind::TimedOut, "the server sent nothing after the TLS handshake")
                        })??;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the server closed the connection after the TLS handshake",
                        ));
                    }
                    first.truncate(n);
                    (ClientIo::Tls(Box::new(tls)), first)
                }
            };
            Ok(hyper_util::rt::TokioIo::new(ClientConn { io, prefix, pos: 0 }))
        })
    }
}

/// Timeouts of a client channel.
#[derive(Debug, Clone, Copy)]
pub struct ChannelTimeouts {
    /// TCP connect plus TLS handshake.
    pub connect: Duration,
    /// One request (streams: until the response headers).
    pub request: Option<Duration>,
}

impl Default for ChannelTimeouts {
    fn default() -> Self {
        Self { connect: Duration::from_secs(5), request: Some(Duration::from_secs(30)) }
    }
}

/// A lazily connecting channel to `address` (`host:port`) whose server must hold a `expect`
/// certificate naming `host` (IP or DNS SAN). Cache one per peer: the channel reconnects by itself.
pub fn channel(
    address: &str,
    tls: &TlsMode,
    expect: Role,
    timeouts: ChannelTimeouts,
) -> Result<tonic::transport::Channel, TlsError> {
    let bad = |reason: String| TlsError::Invalid { what: "address", path: PathBuf::from(address), reason };
    let host = host_of(address).ok_or_else(|| bad("expected host:port".into()))?;
    let tls = match tls {
        TlsMode::Insecure => None,
        TlsMode::Mutual(ctx) => {
            let name = ServerName::try_from(host.to_owned()).map_err(|e| bad(format!("invalid host name: {e}")))?;
            Some((tokio_rustls::TlsConnector::from(ctx.client_config(expect)), name))
        }
    };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| bad(format!("not a valid address: {e}")))?
        .connect_timeout(timeouts.connect)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20));
    if let Some(t) = timeouts.request {
        endpoint = endpoint.timeout(t);
    }
    Ok(endpoint.connect_with_connector_lazy(Connector {
        address: address.to_owned(),
        first_read: timeouts.connect,
        tls,
    }))
}

/// The host part of `host:port` or `[v6]:port`.
pub fn host_of(address: &str) -> Option<&str> {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map(|(h, _)| h);
    }
    let (h, p) = address.rsplit_once(':')?;
    p.parse::<u16>().ok()?;
    (!h.is_empty()).then_some(h)
}

/// Which end of a connection is explaining a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The dialling end.
    Client,
    /// The accepting end.
    Server,
}

/// Describes a TLS failure found anywhere in an error's source chain (tonic errors bury it under
/// hyper and io errors), in words that say what to fix. `None` when the chain holds no TLS error.
pub fn explain_transport_error(err: &(dyn std::error::Error + 'static), side: Side) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(explain_rustls(t, side));
        }
        if let Some(io) = e.downcast_ref::<io::Error>()
            && let Some(inner) = io.get_ref()
        {
            if let Some(t) = inner.downcast_ref::<rustls::Error>() {
                return Some(explain_rustls(t, side));
            }
            // tokio-rustls keeps only the text of the rustls error.
            if let Some(t) = rustls_error_from_text(&inner.to_string()) {
                return Some(explain_rustls(&t, side));
            }
        }
        cur = e.source();
    }
    None
}

/// Rebuilds the rustls errors that matter from their text (see `explain_transport_error`).
fn rustls_error_from_text(text: &str) -> Option<rustls::Error> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    if let Some(alert) = text.strip_prefix("received fatal alert: ") {
        let a = match alert.trim() {
            "CertificateRequired" => A::CertificateRequired,
            "UnknownCA" => A::UnknownCA,
            "BadCertificate" => A::BadCertificate,
            "DecryptError" => A::DecryptError,
            "CertificateExpired" => A::CertificateExpired,
            "CertificateRevoked" => A::CertificateRevoked,
            "CertificateUnknown" => A::CertificateUnknown,
            "UnsupportedCertificate" => A::UnsupportedCertificate,
            "AccessDenied" => A::AccessDenied,
            "HandshakeFailure" => A::HandshakeFailure,
            "ProtocolVersion" => A::ProtocolVersion,
            "NoApplicationProtocol" => A::NoApplicationProtocol,
            _ => A::InternalError,
        };
        return Some(E::AlertReceived(a));
    }
    if let Some(detail) = text.strip_prefix("invalid peer certificate: ") {
        let c = if detail.starts_with("UnknownIssuer") {
            C::UnknownIssuer
        } else if detail.starts_with("BadSignature") {
            C::BadSignature
        } else if detail.starts_with("certificate expired") || detail.starts_with("Expired") {
            C::Expired
        } else if detail.starts_with("certificate revoked") || detail.starts_with("Revoked") {
            C::Revoked
        } else if detail.starts_with("certificate not valid yet") || detail.starts_with("NotValidYet") {
            C::NotValidYet
        } else if detail.starts_with("certificate not valid for name") || detail.starts_with("NotValidForName") {
            C::NotValidForName
        } else {
            C::Other(rustls::OtherError(Arc::new(io::Error::other(detail.to_owned()))))
        };
        return Some(E::InvalidCertificate(c));
    }
    if text.starts_with("peer sent no certificates") {
        return Some(E::NoCertificatesPresented);
    }
    if text.starts_with("received corrupt message") || text.contains("InvalidContentType") {
        return Some(E::InvalidMessage(rustls::InvalidMessage::InvalidContentType));
    }
    None
}

fn explain_io_error(e: &io::Error, side: Side) -> String {
    explain_transport_error(e, side).unwrap_or_else(|| e.to_string())
}

fn explain_rustls(e: &rustls::Error, side: Side) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let them = match side {
        Side::Client => "the server",
        Side::Server => "the client",
    };
    match e {
        E::NoCertificatesPresented => {
            format!(
                "{them} presented no certificate: every connection needs a certificate issued by the Cassette CA (`cassette certs issue`)"
            )
        }
        E::InvalidCertificate(C::UnknownIssuer) | E::InvalidCertificate(C::BadSignature) => {
            format!(
                "{them} presented a certificate that was not issued by our CA (unknown issuer): both ends must use certificates from the same `cassette certs init`"
            )
        }
        E::InvalidCertificate(C::Expired) | E::InvalidCertificate(C::ExpiredContext { .. }) => {
            format!("{them} presented an expired certificate: issue a new one with `cassette certs issue` ({e})")
        }
        E::InvalidCertificate(C::Revoked) => {
            format!(
                "{them} presented a revoked certificate (`cassette certs revoke`): it needs a new certificate from `cassette certs issue`"
            )
        }
        E::InvalidCertificate(C::NotValidYet) | E::InvalidCertificate(C::NotValidYetContext { .. }) => {
            format!("{them} presented a certificate that is not valid yet (check the clocks): {e}")
        }
        E::InvalidCertificate(C::NotValidForName) | E::InvalidCertificate(C::NotValidForNameContext { .. }) => {
            format!(
                "{them} presented a certificate that does not name the address we dialled: issue it with --san <that address> ({e})"
            )
        }
        E::InvalidCertificate(C::Other(o)) => format!("{them} presented an unacceptable certificate: {o}"),
        E::AlertReceived(a) => {
            let why = match a {
                A::CertificateRequired => "this end presented no certificate",
                A::UnknownCA | A::BadCertificate | A::DecryptError => {
                    "this end's certificate was not issued by the CA the peer trusts"
                }
                A::CertificateExpired => "this end's certificate has expired",
                A::CertificateRevoked => {
                    "this end's certificate has been revoked (`cassette certs revoke`): ask an admin for a new one"
                }
                A::CertificateUnknown | A::UnsupportedCertificate | A::AccessDenied => {
                    "this end's certificate is not acceptable there (wrong role or no Cassette role)"
                }
                _ => "the handshake failed there",
            };
            let peer = match side {
                Side::Client => "the server",
                Side::Server => "the client",
            };
            format!(
                "{peer} rejected the TLS handshake ({a:?}): {why}; check the certificate with `cassette certs show`"
            )
        }
        E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
            format!("{them} does not speak TLS (is it running with --insecure?): {e}")
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_hosts() {
        assert_eq!("agent".parse::<Role>().unwrap(), Role::Agent);
        assert_eq!("admin".parse::<Role>().unwrap(), Role::Admin);
        assert!("root".parse::<Role>().is_err());
        assert_eq!(Role::Admin.uri(), "urn:cassette:role:admin");
        assert_eq!(Role::Operator.uri(), "urn:cassette:role:operator");
        assert_eq!(host_of("127.0.0.2:7000"), Some("127.0.0.2"));
        assert_eq!(host_of("[::1]:7000"), Some("::1"));
        assert_eq!(host_of("node1.example.com:7000"), Some("node1.example.com"));
        assert_eq!(host_of("node1"), None);
    }

    #[test]
    fn hosts_are_matched_against_certificate_names() {
        let names = vec!["10.0.0.1".to_owned(), "Node1.Example".to_owned(), "::1".to_owned()];
        assert!(names_host(&names, "10.0.0.1") && names_host(&names, "node1.example") && names_host(&names, "0::1"));
        assert!(!names_host(&names, "10.0.0.2") && !names_host(&names, "node2.example"));
    }

    #[test]
    fn revocations_by_serial_and_by_name() {
        let r = Revocations { version: 3, serials: ["0a1b".to_owned()].into(), names: ["mallory".to_owned()].into() };
        assert!(r.refusal("0A1B", "alice").unwrap().contains("serial 0A1B"));
        assert!(r.refusal("ffff", "mallory").unwrap().contains("every certificate named \"mallory\""));
        assert!(r.refusal("ffff", "alice").is_none());
    }

    #[test]
    fn tls_failures_are_explained_even_when_only_their_text_survives() {
        let io = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
        let client = |m: &str| explain_transport_error(&io(m), Side::Client).unwrap();
        assert!(client("received fatal alert: CertificateExpired").contains("this end's certificate has expired"));
        assert!(client("received fatal alert: CertificateRequired").contains("presented no certificate"));
        assert!(client("received fatal alert: UnknownCA").contains("not issued by the CA the peer trusts"));
        assert!(client("received fatal alert: CertificateRevoked").contains("has been revoked"));
        assert!(
            client("invalid peer certificate: UnknownIssuer")
                .contains("the server presented a certificate that was not issued by our CA")
        );
        let server = explain_transport_error(&io("peer sent no certificates"), Side::Server).unwrap();
        assert!(server.contains("the client presented no certificate"), "{server}");
        assert!(explain_transport_error(&io("something else"), Side::Client).is_none());
    }
}
