//! Reloading the watchlist, on `POST /-/reload`, on SIGHUP, and when the file changes on disk:
//! the new file is read and validated here, then handed to the engine; an invalid one is refused
//! and the old watchlist keeps running. SIGHUP also reopens the event file (log rotation).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::{EngineHandle, ReloadSummary, Unanswered};
use crate::input::diagnostic::Diagnostics;
use crate::input::watchlist::Watchlist;
use crate::output::metrics::Metrics;
use crate::server::shutdown::Shutdown;

/// How often the watchlist file is checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// How long reading and validating the watchlist may take: 100,000 entries take about a second
/// and a half; a read that hangs (a stalled NFS or FUSE mount) is given up after this.
pub const LOAD_BOUND: Duration = Duration::from_secs(30);

/// Why a reload changed nothing; the old watchlist keeps running in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new watchlist has problems, each with its location.
    #[error("{0}")]
    Invalid(Diagnostics),
    /// The file could not be read in time (a hung mount), or an earlier read is still stuck.
    #[error("{0}")]
    Unread(String),
    #[error(transparent)]
    Engine(#[from] Unanswered),
}

#[derive(Clone)]
pub struct Reloader {
    path: PathBuf,
    engine: EngineHandle,
    metrics: Arc<Metrics>,
    /// One reload at a time, whatever asked for it: a burst of requests runs one after another
    /// rather than parsing the watchlist many times at once.
    one_at_a_time: Arc<tokio::sync::Mutex<()>>,
    /// A load given up after [`LOAD_BOUND`] is still stuck in its thread: no other starts, so a
    /// hung mount holds one thread, not one per reload.
    loading: Arc<std::sync::atomic::AtomicBool>,
}

impl Reloader {
    pub fn new(path: PathBuf, engine: EngineHandle, metrics: Arc<Metrics>) -> Self {
        Self {
            path,
            engine,
            metrics,
            one_at_a_time: Arc::default(),
            loading: Arc::default(),
        }
    }

    /// Reads the watchlist and installs it. Resolves to what changed, or to why nothing did.
    pub async fn reload(&self) -> Result<ReloadSummary, ReloadError> {
        let _turn = self.one_at_a_time.lock().await;
        let result = self.install().await;
        self.metrics.record_reload(result.is_ok());
        result
    }

    async fn install(&self) -> Result<ReloadSummary, ReloadError> {
        let watchlist = match self.load().await {
            Ok(w) => w,
            Err(refused) => {
                tracing::error!("reload refused, the old watchlist keeps running: {refused}");
                return Err(refused);
            }
        };
        let summary = self.engine.replace(watchlist).await?;
        tracing::info!(
            added = summary.added,
            removed = summary.removed,
            kept = summary.kept,
            "watchlist reloaded"
        );
        Ok(summary)
    }

    /// Reads and validates the watchlist on the blocking pool, within [`LOAD_BOUND`]: the
    /// engine, `/livez` and the signals go on meanwhile, whatever the file does.
    async fn load(&self) -> Result<Watchlist, ReloadError> {
        use std::sync::atomic::Ordering;
        if self.loading.swap(true, Ordering::AcqRel) {
            return Err(ReloadError::Unread(format!(
                "{}: an earlier read of the watchlist has not finished (a hung mount?)",
                self.path.display()
            )));
        }
        let (path, loading) = (self.path.clone(), self.loading.clone());
        let load = tokio::task::spawn_blocking(move || {
            let watchlist = Watchlist::load(&path);
            loading.store(false, Ordering::Release);
            watchlist
        });
        match tokio::time::timeout(LOAD_BOUND, load).await {
            Ok(Ok(watchlist)) => watchlist.map_err(ReloadError::Invalid),
            Ok(Err(e)) => Err(ReloadError::Unread(format!(
                "reading the watchlist failed: {e}"
            ))),
            Err(_) => Err(ReloadError::Unread(format!(
                "{}: the watchlist was not read within {}s (a hung mount?)",
                self.path.display(),
                LOAD_BOUND.as_secs()
            ))),
        }
    }

    /// Reloads when the watchlist's content differs from `seen` (the digest of what was
    /// loaded). It reads the file by its path every [`WATCH_INTERVAL`] rather than watching an
    /// inode, so an editor's save-by-rename and a Kubernetes ConfigMap update (an atomic swap of
    /// the `..data` symlink) are both seen. A content that failed to load is not tried again
    /// until it changes.
    pub async fn on_change(self, mut seen: Option<u64>, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The file's identity (size, modification time, inode): its content is read again only
        // when that changes, so a large watchlist costs a stat every interval, not a read.
        let identity = |m: &std::fs::Metadata| {
            use std::os::unix::fs::MetadataExt;
            (m.len(), m.modified().ok(), m.ino(), m.dev())
        };
        let mut last_identity = None;
        loop {
            tokio::select! {
                () = shutdown.requested() => return,
                _ = tick.tick() => {}
            }
            let Ok(metadata) = tokio::fs::metadata(&self.path).await else {
                continue;
            };
            let current = Some(identity(&metadata));
            if current == last_identity {
                continue;
            }
            // Missing for a moment (mid-swap) or unreadable: look again next time.
            let path = self.path.clone();
            let read = tokio::task::spawn_blocking(move || {
                crate::input::read_text(&path, crate::input::MAX_WATCHLIST_BYTES)
            });
            let Ok(Ok(text)) = read.await else {
                continue;
            };
            last_identity = current;
            let now = Some(digest(text.as_bytes()));
            if now != seen {
                seen = now;
                tracing::info!(path = %self.path.display(), "the watchlist changed on disk: reloading");
                let _ = self.reload().await;
            }
        }
    }

    /// Reloads on every SIGHUP until shutdown.
    #[cfg(unix)]
    pub async fn on_sighup(self, shutdown: Shutdown) {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; use POST /-/reload instead");
            return;
        };
        loop {
            tokio::select! {
                () = shutdown.requested() => return,
                received = hup.recv() => {
                    if received.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP: reopening the event file and reloading the watchlist");
                    let _ = self.engine.reopen_sinks().await;
                    let _ = self.reload().await;
                }
            }
        }
    }

    #[cfg(not(unix))]
    pub async fn on_sighup(self, _shutdown: Shutdown) {}
}

/// A fingerprint of the watchlist's content.
pub fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}
