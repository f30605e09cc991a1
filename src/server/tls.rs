//! HTTPS with rustls (no OpenSSL): the server configuration `[server.tls]` describes, read again
//! when its files change (cert-manager rotates them in place), and the handshake of each new
//! connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::input::web::{self, TlsSettings, TlsVersion};
use crate::server::shutdown::Shutdown;

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
    /// A check of the files is under way on the blocking pool (or stuck in a hung mount).
    checking: AtomicBool,
}

struct Current {
    config: Arc<ServerConfig>,
    stamps: Vec<Option<SystemTime>>,
}

impl Tls {
    pub fn new(settings: TlsSettings) -> Result<Self, String> {
        let config = server_config(&settings)?;
        let stamps = stamps(&settings);
        Ok(Self {
            settings,
            current: Mutex::new(Current { config, stamps }),
            checking: AtomicBool::new(false),
        })
    }

    fn config(&self) -> Arc<ServerConfig> {
        crate::model::lock(&self.current).config.clone()
    }

    /// Looks at the certificate files every [`RELOAD_CHECK`] until `stop`, on the blocking
    /// pool: a file on a hung mount stalls one thread, never the handshakes or the engine.
    pub async fn watch_files(self: Arc<Self>, stop: Shutdown) {
        let mut tick = tokio::time::interval(RELOAD_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = stop.requested() => return,
                _ = tick.tick() => {}
            }
            if self.checking.swap(true, Ordering::AcqRel) {
                continue;
            }
            let tls = self.clone();
            drop(tokio::task::spawn_blocking(move || {
                tls.reload_if_changed();
                tls.checking.store(false, Ordering::Release);
            }));
        }
    }

    /// Loads the files again when any changed; keeps the previous ones when they do not load.
    fn reload_if_changed(&self) {
        let stamps = stamps(&self.settings);
        if stamps == crate::model::lock(&self.current).stamps {
            return;
        }
        let loaded = server_config(&self.settings);
        let mut current = crate::model::lock(&self.current);
        current.stamps = stamps;
        match loaded {
            Ok(config) => {
                tracing::info!(cert = %self.settings.cert_file.display(), "TLS certificate files changed: reloaded");
                current.config = config;
            }
            Err(e) => tracing::error!(error = %e,
                "TLS certificate files changed but do not load; keeping the previous ones"),
        }
    }

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
