//! HTTPS with rustls (no OpenSSL): the server configuration `[server.tls]` describes, read again
//! when its files change (cert-manager rotates them in place), and the handshake of each new
//! connection.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::input::web::{self, TlsSettings, TlsVersion};

/// How often the certificate files are checked for changes.
pub const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// The rustls configuration of `settings`: its certificate and key, client certificates
/// required and verified against `client_ca_file` when set, and no version below
/// `min_version`.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &settings.client_ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in web::certificates(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(
            web::certificates(&settings.cert_file)?,
            web::private_key(&settings.key_file)?,
        )
        .map_err(|e| {
            format!(
                "{} and {}: {e}",
                settings.cert_file.display(),
                settings.key_file.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS side of the server: the current configuration, rebuilt when the files change. A
/// change that does not load is logged and the last good configuration stays.
pub struct Tls {
    settings: TlsSettings,
    current: Mutex<Current>,
}

struct Current {
    config: Arc<ServerConfig>,
    /// When each file last changed, as the configuration was built.
    stamps: Vec<Option<SystemTime>>,
    /// When the files were last looked at.
    checked: tokio::time::Instant,
}

impl Tls {
    pub fn new(settings: TlsSettings) -> Result<Self, String> {
        let config = server_config(&settings)?;
        let stamps = stamps(&settings);
        Ok(Self {
            settings,
            current: Mutex::new(Current {
                config,
                stamps,
                checked: tokio::time::Instant::now(),
            }),
        })
    }

    /// The configuration for a new connection: rebuilt first when a file changed (looked at
    /// most every [`RELOAD_CHECK`]).
    fn config(&self) -> Arc<ServerConfig> {
        let mut current = crate::model::lock(&self.current);
        let now = tokio::time::Instant::now();
        if now < current.checked + RELOAD_CHECK {
            return current.config.clone();
        }
        current.checked = now;
        let stamps = stamps(&self.settings);
        if stamps != current.stamps {
            current.stamps = stamps;
            match server_config(&self.settings) {
                Ok(config) => {
                    tracing::info!(cert = %self.settings.cert_file.display(), "TLS certificate files changed: reloaded");
                    current.config = config;
                }
                Err(e) => tracing::error!(error = %e,
                    "TLS certificate files changed but do not load; keeping the previous ones"),
            }
        }
        current.config.clone()
    }

    /// The handshake of a new connection, within `timeout`.
    pub async fn accept(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, String> {
        let config = self.config();
        match tokio::time::timeout(timeout, TlsAcceptor::from(config).accept(stream)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no TLS handshake within the header timeout".to_string()),
        }
    }
}

/// When each file of `settings` last changed (`None`: unreadable).
fn stamps(settings: &TlsSettings) -> Vec<Option<SystemTime>> {
    [
        Some(&settings.cert_file),
        Some(&settings.key_file),
        settings.client_ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    .collect()
}
