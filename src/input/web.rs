//! The web settings operators know from exporter-toolkit (Prometheus, Alertmanager,
//! node_exporter): `[server.tls]` (their `tls_server_config`) and `[server.basic_auth_users]`,
//! checked at load so `check-config` reports a bad file or hash with its location.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// `[server.tls]`: serve HTTPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key of the leaf.
    pub key_file: PathBuf,
    /// When set, clients must present a certificate this CA (PEM) signed.
    pub client_ca_file: Option<PathBuf>,
    pub min_version: TlsVersion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// `"TLS1.2"` or `"TLS1.3"` (exporter-toolkit's `TLS12`/`TLS13` too).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.to_ascii_uppercase().replace('.', "").as_str() {
            "TLS12" => Ok(TlsVersion::Tls12),
            "TLS13" => Ok(TlsVersion::Tls13),
            _ => Err(format!(
                "server.tls.min_version must be \"TLS1.2\" or \"TLS1.3\", not {text:?}"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "TLS1.2",
            TlsVersion::Tls13 => "TLS1.3",
        }
    }
}

/// `[server.basic_auth_users]`: user name to bcrypt hash.
pub type BasicAuthUsers = BTreeMap<String, String>;

/// Whether `hash` is a bcrypt hash as `htpasswd -nBC 10` prints it (`$2y$10$` and 53 more
/// characters; `$2a$`, `$2b$` and `$2x$` too), with a cost bcrypt accepts.
pub fn check_bcrypt_hash(user: &str, hash: &str) -> Result<(), String> {
    let parts: Vec<&str> = hash.splitn(4, '$').collect();
    let cost_ok = |c: &str| c.len() == 2 && c.parse::<u32>().is_ok_and(|c| (4..=31).contains(&c));
    match parts.as_slice() {
        ["", "2a" | "2b" | "2x" | "2y", cost, rest] if cost_ok(cost) && rest.len() == 53 => Ok(()),
        _ => Err(format!(
            "server.basic_auth_users.{user} must be a bcrypt hash, as `htpasswd -nBC 10 {user}` prints it after the colon (\"$2y$10$…\", 60 characters)"
        )),
    }
}

/// Problems with the files of `[server.tls]`: each must be readable PEM holding what it should.
pub fn check_tls_files(tls: &TlsSettings) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if let Err(e) = certificates(&tls.cert_file) {
        problems.push(("server.tls.cert_file", e));
    }
    if let Err(e) = private_key(&tls.key_file) {
        problems.push(("server.tls.key_file", e));
    }
    if let Some(ca) = &tls.client_ca_file
        && let Err(e) = certificates(ca)
    {
        problems.push(("server.tls.client_ca_file", e));
    }
    problems
}

/// The certificates of a PEM file: at least one.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = read_pem(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no CERTIFICATE", path.display()));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let text = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(text.as_bytes())
        .map_err(|e| format!("{} holds no readable private key: {e}", path.display()))
}

/// A PEM file's text: a regular file of at most [`crate::input::MAX_PEM_BYTES`].
fn read_pem(path: &Path) -> Result<String, String> {
    crate::input::read_text(path, crate::input::MAX_PEM_BYTES)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcrypt_hashes_as_htpasswd_prints_them_are_accepted_and_others_refused() {
        let good = "$2y$10$ItM5tXBn6sl9qa9PRuWXnuHZvjc5ZPzz2FlV0J9jGcM3Rr9gC0hg6";
        assert!(check_bcrypt_hash("prometheus", good).is_ok());
        for bad in [
            "secret",
            "$2y$10$short",
            "$2y$99$ItM5tXBn6sl9qa9PRuWXnuHZvjc5ZPzz2FlV0J9jGcM3Rr9gC0hg6",
            "$1$10$ItM5tXBn6sl9qa9PRuWXnuHZvjc5ZPzz2FlV0J9jGcM3Rr9gC0hg6",
        ] {
            assert!(check_bcrypt_hash("p", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tls_versions_are_read_in_either_spelling() {
        assert_eq!(TlsVersion::parse("TLS1.2"), Ok(TlsVersion::Tls12));
        assert_eq!(TlsVersion::parse("TLS13"), Ok(TlsVersion::Tls13));
        assert!(TlsVersion::parse("SSL3").is_err());
    }
}
