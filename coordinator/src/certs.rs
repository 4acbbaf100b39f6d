//! The deployment's CA and its certificates (`cassette certs init|issue|show`).
//!
//! `init` makes a CA (`ca.pem`, `ca.key`) in a directory; `issue` makes a certificate for one
//! role and name (`<name>.pem`, `<name>.key`, plus a copy of `ca.pem` beside them is the only
//! other file a process needs). The role is carried as a SAN URI (see
//! [`cassette_common::tls`]). Private keys are written with mode 0600 from their first byte,
//! never through a link or a file someone else created, and never overwritten unless asked.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use cassette_common::tls::{CertInfo, Role};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration as TimeDuration, OffsetDateTime};

/// A certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or written.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file exists and `force` was not given.
    #[error("{} already exists: pass --force to replace it", .0.display())]
    Exists(PathBuf),
    /// Generating or parsing failed.
    #[error("{0}")]
    Crypto(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
}

fn crypto(what: &str) -> impl FnOnce(rcgen::Error) -> CertError + '_ {
    move |e| CertError::Crypto(format!("{what}: {e}"))
}

/// Files written by an operation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Written {
    /// The certificate.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
    /// The certificate's details.
    pub subject: String,
    /// Role, for issued certificates.
    pub role: Option<Role>,
    /// SANs.
    pub names: Vec<String>,
    /// End of validity (RFC 3339).
    pub not_after: String,
}

/// Writes `contents` to `path` without ever writing through something planted on the way.
///
/// The data goes to a new temporary file in the same directory, opened with `O_CREAT|O_EXCL`
/// and `O_NOFOLLOW` under a name no one can predict, with its final mode (0600 for keys) from
/// the first byte, synced, then moved into place: with `force` by a rename (which replaces a
/// link at `path` instead of following it), otherwise by a hard link that fails if `path`
/// exists in any form, a dangling link included. Directories created on the way are 0700.
fn write_file(path: &Path, contents: &str, private: bool, force: bool) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |op| move |source| CertError::Io { op, path: path.to_owned(), source };
    if !force && std::fs::symlink_metadata(path).is_ok() {
        return Err(CertError::Exists(path.to_owned()));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io("create the directory of"))?;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.{:016x}.tmp", std::process::id(), rand::random::<u64>()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(if private { 0o600 } else { 0o644 })
            .open(&tmp)
            .map_err(io("create a temporary file beside"))?;
        f.write_all(contents.as_bytes()).map_err(io("write"))?;
        f.sync_all().map_err(io("sync"))?;
        if force {
            std::fs::rename(&tmp, path).map_err(io("rename into"))
        } else {
            std::fs::hard_link(&tmp, path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    CertError::Exists(path.to_owned())
                } else {
                    CertError::Io { op: "link into place", path: path.to_owned(), source: e }
                }
            })
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    written?;
    // The new name is durable once its directory is.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Refuses (before anything is written) when one of `paths` exists in any form, a dangling
/// link included, unless `force`.
fn refuse_existing(paths: &[&Path], force: bool) -> Result<(), CertError> {
    match paths.iter().find(|p| std::fs::symlink_metadata(p).is_ok()) {
        Some(p) if !force => Err(CertError::Exists(p.to_path_buf())),
        _ => Ok(()),
    }
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io { op: "read", path: path.to_owned(), source })
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Creates a CA in `dir` (`ca.pem`, `ca.key`), valid for `days`.
pub fn init_ca(dir: &Path, name: &str, days: u32, force: bool) -> Result<Written, CertError> {
    let key = KeyPair::generate().map_err(crypto("generate the CA key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(crypto("CA parameters"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "Cassette");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - TimeDuration::minutes(5);
    params.not_after = now + TimeDuration::days(i64::from(days));
    let cert = params.self_signed(&key).map_err(crypto("sign the CA certificate"))?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    refuse_existing(&[&cert_path, &key_path], force)?;
    write_file(&key_path, &key.serialize_pem(), true, force)?;
    write_file(&cert_path, &cert.pem(), false, force)?;
    Ok(Written {
        cert: cert_path,
        key: key_path,
        subject: name.to_owned(),
        role: None,
        names: vec![],
        not_after: rfc3339(params.not_after),
    })
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// The role.
    pub role: Role,
    /// The common name (and file name).
    pub name: String,
    /// DNS names and IP addresses the holder serves under (servers: every address clients dial).
    pub sans: Vec<String>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl IssueRequest {
    /// Valid from now (minus five minutes of clock skew) for `days`.
    pub fn valid_for_days(role: Role, name: &str, sans: Vec<String>, days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            role,
            name: name.to_owned(),
            sans,
            not_before: now - TimeDuration::minutes(5),
            not_after: now + TimeDuration::days(i64::from(days)),
        }
    }
}

/// Issues a certificate with the CA given as PEM text; returns `(certificate PEM, key PEM)`.
pub fn issue_pem(ca_cert_pem: &str, ca_key_pem: &str, req: &IssueRequest) -> Result<(String, String), CertError> {
    let name_ok = !req.name.is_empty() && req.name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !name_ok {
        return Err(CertError::Invalid(format!(
            "invalid name {:?}: use letters, digits, '.', '_' and '-' (it is also the file name)",
            req.name
        )));
    }
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(crypto("read the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(crypto("read the CA certificate"))?;
    let key = KeyPair::generate().map_err(crypto("generate a key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(crypto("certificate parameters"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, req.name.as_str());
    dn.push(DnType::OrganizationalUnitName, req.role.as_str());
    params.distinguished_name = dn;
    let uri = req.role.uri().try_into().map_err(crypto("role URI"))?;
    params.subject_alt_names.push(SanType::URI(uri));
    for s in &req.sans {
        match s.parse::<IpAddr>() {
            Ok(ip) => params.subject_alt_names.push(SanType::IpAddress(ip)),
            Err(_) => params.subject_alt_names.push(SanType::DnsName(
                s.clone().try_into().map_err(|e| CertError::Invalid(format!("SAN {s:?}: {e}")))?,
            )),
        }
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every Cassette process is both a TLS client and (most) a server.
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = req.not_before;
    params.not_after = req.not_after;
    let cert = params.signed_by(&key, &issuer).map_err(crypto("sign the certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Issues a certificate with the CA in `ca_dir` and writes `<name>.pem` and `<name>.key` into `out_dir`.
pub fn issue(ca_dir: &Path, out_dir: &Path, req: &IssueRequest, force: bool) -> Result<Written, CertError> {
    let (cert_pem, key_pem) = issue_pem(&read(&ca_dir.join("ca.pem"))?, &read(&ca_dir.join("ca.key"))?, req)?;
    let (cert_path, key_path) = (out_dir.join(format!("{}.pem", req.name)), out_dir.join(format!("{}.key", req.name)));
    refuse_existing(&[&cert_path, &key_path], force)?;
    write_file(&key_path, &key_pem, true, force)?;
    write_file(&cert_path, &cert_pem, false, force)?;
    if out_dir != ca_dir && std::fs::symlink_metadata(out_dir.join("ca.pem")).is_err() {
        write_file(&out_dir.join("ca.pem"), &read(&ca_dir.join("ca.pem"))?, false, false)?;
    }
    Ok(Written {
        cert: cert_path,
        key: key_path,
        subject: req.name.clone(),
        role: Some(req.role),
        names: req.sans.clone(),
        not_after: rfc3339(req.not_after),
    })
}

/// Reads a certificate file's details.
pub fn show(path: &Path) -> Result<Vec<CertInfo>, CertError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = read(path)?;
    let mut out = Vec::new();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let c = c.map_err(|e| CertError::Invalid(format!("{}: not PEM: {e}", path.display())))?;
        out.push(CertInfo::parse(&c).map_err(|e| CertError::Invalid(format!("{}: {e}", path.display())))?);
    }
    if out.is_empty() {
        return Err(CertError::Invalid(format!("{}: no certificate in the file", path.display())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_issue_show() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test-ca", 10, false).unwrap();
        assert!(matches!(init_ca(dir.path(), "again", 10, false), Err(CertError::Exists(_))));
        let w = issue(
            dir.path(),
            &dir.path().join("out"),
            &IssueRequest::valid_for_days(Role::Agent, "node1", vec!["127.0.0.2".into(), "node1.example".into()], 30),
            false,
        )
        .unwrap();
        let info = &show(&w.cert).unwrap()[0];
        assert_eq!(info.role, Some(Role::Agent));
        assert_eq!(info.common_name, "node1");
        assert_eq!(info.names, vec!["127.0.0.2".to_owned(), "node1.example".to_owned()]);
        assert!(dir.path().join("out/ca.pem").exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&w.key).unwrap().permissions().mode() & 0o777, 0o600);
        let ca = &show(&dir.path().join("ca.pem")).unwrap()[0];
        assert!(ca.is_ca && ca.role.is_none());
        let bad = IssueRequest::valid_for_days(Role::Agent, "../x", vec![], 1);
        assert!(matches!(issue(dir.path(), dir.path(), &bad, false), Err(CertError::Invalid(_))));
    }

    #[test]
    fn keys_are_never_written_through_a_planted_link_or_a_readable_file() {
        // - a symbolic link planted where a temporary file used to be written (`node1.tmp`) is
        //   not followed: the file it points to keeps its content and the key is a regular file;
        // - a world-readable file planted at that name does not make the key readable: 0600;
        // - the CA's key is written the same way.
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        std::fs::create_dir(&ca).unwrap();
        let victim_ca = dir.path().join("victim-ca");
        std::fs::write(&victim_ca, "victim").unwrap();
        std::os::unix::fs::symlink(&victim_ca, ca.join("ca.tmp")).unwrap();
        init_ca(&ca, "test-ca", 10, false).unwrap();
        assert_eq!(std::fs::read_to_string(&victim_ca).unwrap(), "victim", "the CA key went through a link");
        let meta = std::fs::symlink_metadata(ca.join("ca.key")).unwrap();
        assert!(meta.file_type().is_file(), "ca.key is not a regular file: {meta:?}");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);

        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "victim").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&victim, out.join("node1.tmp")).unwrap();
        let w = issue(&ca, &out, &IssueRequest::valid_for_days(Role::Agent, "node1", vec![], 30), false).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim", "the key went through a link");
        let meta = std::fs::symlink_metadata(&w.key).unwrap();
        assert!(meta.file_type().is_file(), "{} is not a regular file: {meta:?}", w.key.display());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(std::fs::read_to_string(&w.key).unwrap().contains("PRIVATE KEY"));

        let planted = out.join("node2.tmp");
        std::fs::write(&planted, "").unwrap();
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o666)).unwrap();
        let w = issue(&ca, &out, &IssueRequest::valid_for_days(Role::Agent, "node2", vec![], 30), false).unwrap();
        assert_eq!(std::fs::metadata(&w.key).unwrap().permissions().mode() & 0o777, 0o600);
        // Replacing with --force never follows a link at the key's own path either.
        std::fs::remove_file(&w.key).unwrap();
        std::os::unix::fs::symlink(&victim, &w.key).unwrap();
        assert!(matches!(
            issue(&ca, &out, &IssueRequest::valid_for_days(Role::Agent, "node2", vec![], 30), false),
            Err(CertError::Exists(_))
        ));
        issue(&ca, &out, &IssueRequest::valid_for_days(Role::Agent, "node2", vec![], 30), true).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim");
        assert!(std::fs::symlink_metadata(&w.key).unwrap().file_type().is_file());
    }
}
