//! Reloading the watchlist and the `[[aws.instance]]` tables, on `POST /-/reload`, on SIGHUP,
//! and when either file changes on disk: both files are read and validated here, then handed to
//! the engine together; a problem in either refuses the reload and the old ones keep running.
//! SIGHUP also reopens the event file (log rotation).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use crate::engine::{EngineHandle, ReloadSummary, Unanswered};
use crate::input::config::Settings;
use crate::input::diagnostic::Diagnostics;
use crate::input::watchlist::Watchlist;
use crate::output::metrics::Metrics;
use crate::server::config_reload::{ConfigReload, InstanceChanges};
use crate::server::shutdown::Shutdown;

/// How often the watchlist file is checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// How long reading and validating the files may take: 100,000 entries take about a second and
/// a half; a read that hangs (a stalled NFS or FUSE mount) is given up after this.
pub const LOAD_BOUND: Duration = Duration::from_secs(30);

/// Why a reload changed nothing; the old watchlist keeps running in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new watchlist or config file has problems, each with its location.
    #[error("{0}")]
    Invalid(Diagnostics),
    /// The file could not be read in time (a hung mount), or an earlier read is still stuck.
    #[error("{0}")]
    Unread(String),
    #[error(transparent)]
    Engine(#[from] Unanswered),
}

/// What a reload changed.
#[derive(Debug, Clone, Default)]
pub struct Reloaded {
    pub watchlist: ReloadSummary,
    pub instances: InstanceChanges,
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.watchlist;
        write!(
            f,
            "{} added, {} removed, {} kept",
            s.added, s.removed, s.kept
        )?;
        if !self.instances.is_empty() {
            write!(f, "; {}", self.instances)?;
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct Reloader {
    path: PathBuf,
    engine: EngineHandle,
    metrics: Arc<Metrics>,
    /// The config file's instances, when the daemon runs on AWS clients it can rebuild.
    config: Option<Arc<tokio::sync::Mutex<ConfigReload>>>,
    /// One reload at a time, whatever asked for it: a burst of requests runs one after another
    /// rather than parsing the watchlist many times at once.
    one_at_a_time: Arc<tokio::sync::Mutex<()>>,
    /// A load given up after [`LOAD_BOUND`] is still stuck in its thread: no other starts, so a
    /// hung mount holds one thread, not one per reload.
    loading: Arc<std::sync::atomic::AtomicBool>,
    /// The fingerprint of each file's content as the last load read it, valid or not, whatever
    /// asked for the load: the file watch reloads when a file differs from this.
    read: Arc<std::sync::Mutex<HashMap<PathBuf, u64>>>,
}

impl Reloader {
    pub fn new(path: PathBuf, engine: EngineHandle, metrics: Arc<Metrics>) -> Self {
        Self {
            path,
            engine,
            metrics,
            config: None,
            one_at_a_time: Arc::default(),
            loading: Arc::default(),
            read: Arc::default(),
        }
    }

    /// Reloads the config file's `[[aws.instance]]` tables too; the file watch follows the
    /// config file from its content now.
    pub fn with_config(mut self, config: ConfigReload) -> Self {
        let path = config.path().to_path_buf();
        if let Ok(text) = crate::input::read_text(&path, crate::input::MAX_CONFIG_BYTES) {
            self.remember(&[(path, digest(text.as_bytes()))]);
        }
        self.config = Some(Arc::new(tokio::sync::Mutex::new(config)));
        self
    }

    /// Reads the files and installs them. Resolves to what changed, or to why nothing did.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _turn = self.one_at_a_time.lock().await;
        let result = self.install().await;
        self.metrics.record_reload(result.is_ok());
        result
    }

    async fn install(&self) -> Result<Reloaded, ReloadError> {
        let (settings, watchlist) = match self.load().await {
            Ok(loaded) => loaded,
            Err(refused) => {
                tracing::error!(
                    "reload refused, the old watchlist and instances keep running: {refused}"
                );
                return Err(refused);
            }
        };
        let (instances, budgets) = match (&self.config, settings) {
            (Some(config), Some(settings)) => config.lock().await.apply(&settings).await,
            _ => Default::default(),
        };
        let summary = self.engine.replace(watchlist, budgets).await?;
        tracing::info!(
            added = summary.added,
            removed = summary.removed,
            kept = summary.kept,
            instances_added = ?instances.added,
            instances_removed = ?instances.removed,
            instances_changed = ?instances.changed,
            "watchlist reloaded"
        );
        Ok(Reloaded {
            watchlist: summary,
            instances,
        })
    }

    /// Reads and validates the config file (when its instances reload) and the watchlist on
    /// the blocking pool, within [`LOAD_BOUND`]: the engine, `/livez` and the signals go on
    /// meanwhile, whatever the files do. The problems of both are reported together.
    async fn load(&self) -> Result<(Option<Settings>, Watchlist), ReloadError> {
        use std::sync::atomic::Ordering;
        if self.loading.swap(true, Ordering::AcqRel) {
            return Err(ReloadError::Unread(format!(
                "{}: an earlier read of the watchlist has not finished (a hung mount?)",
                self.path.display()
            )));
        }
        let config = self.config_path().await;
        let (path, loading) = (self.path.clone(), self.loading.clone());
        let load = tokio::task::spawn_blocking(move || {
            let loaded = Loaded::read(config, path);
            loading.store(false, Ordering::Release);
            loaded
        });
        match tokio::time::timeout(LOAD_BOUND, load).await {
            Ok(Ok(loaded)) => {
                self.remember(&loaded.digests);
                both(loaded.settings, loaded.watchlist).map_err(ReloadError::Invalid)
            }
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

    async fn config_path(&self) -> Option<PathBuf> {
        match &self.config {
            Some(config) => Some(config.lock().await.path().to_path_buf()),
            None => None,
        }
    }

    fn remember(&self, digests: &[(PathBuf, u64)]) {
        let mut read = self.read.lock().unwrap_or_else(PoisonError::into_inner);
        read.extend(digests.iter().cloned());
    }

    fn last_read(&self, path: &Path) -> Option<u64> {
        let read = self.read.lock().unwrap_or_else(PoisonError::into_inner);
        read.get(path).copied()
    }

    /// Reloads when the watchlist's or the config file's content differs from what the last
    /// load read (`watchlist_seen`: the watchlist's fingerprint at start). Each file is read by
    /// its path every [`WATCH_INTERVAL`] rather than watched as an inode, so an editor's
    /// save-by-rename and a Kubernetes ConfigMap update (an atomic swap of the `..data` symlink)
    /// are both seen. A content that failed to load is not tried again until it changes.
    pub async fn on_change(self, watchlist_seen: Option<u64>, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut files = vec![WatchedFile::new(self.path.clone())];
        if let Some(digest) = watchlist_seen {
            self.remember(&[(self.path.clone(), digest)]);
        }
        if let Some(config) = self.config_path().await {
            files.push(WatchedFile::new(config));
        }
        loop {
            tokio::select! {
                () = shutdown.requested() => return,
                _ = tick.tick() => {}
            }
            let mut changed = Vec::new();
            for file in &mut files {
                let content = file.content_if_new().await;
                if content.is_some_and(|now| Some(now) != self.last_read(&file.path)) {
                    changed.push(file.path.display().to_string());
                }
            }
            if !changed.is_empty() {
                tracing::info!(files = changed.join(", "), "changed on disk: reloading");
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

/// A file the file watch follows.
struct WatchedFile {
    path: PathBuf,
    /// The file's identity (size, modification time, inode) when last read: its content is read
    /// again only when that changes, so a large watchlist costs a stat every interval, not a read.
    identity: Option<FileIdentity>,
}

type FileIdentity = (u64, Option<std::time::SystemTime>, u64, u64);

impl WatchedFile {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            identity: None,
        }
    }

    /// The content's fingerprint when the file changed since the last look; `None` when it did
    /// not, or is missing for a moment (mid-swap) or unreadable (looked at again next time).
    async fn content_if_new(&mut self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let m = tokio::fs::metadata(&self.path).await.ok()?;
        let identity = Some((m.len(), m.modified().ok(), m.ino(), m.dev()));
        if identity == self.identity {
            return None;
        }
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || {
            crate::input::read_text(&path, crate::input::MAX_WATCHLIST_BYTES)
        });
        let text = read.await.ok()?.ok()?;
        self.identity = identity;
        Some(digest(text.as_bytes()))
    }
}

/// What one load read: the config (when its instances reload) and the watchlist, each checked,
/// and the fingerprint of each file's text.
struct Loaded {
    settings: Result<Option<Settings>, Diagnostics>,
    watchlist: Result<Watchlist, Diagnostics>,
    digests: Vec<(PathBuf, u64)>,
}

impl Loaded {
    fn read(config: Option<PathBuf>, watchlist: PathBuf) -> Self {
        let mut digests = Vec::new();
        let settings = config
            .map(|path| {
                let text = crate::input::read_text(&path, crate::input::MAX_CONFIG_BYTES);
                if let Ok(text) = text {
                    digests.push((path.clone(), digest(text.as_bytes())));
                }
                Settings::load(&path)
            })
            .transpose();
        let text = Watchlist::read(&watchlist);
        if let Ok(text) = &text {
            digests.push((watchlist.clone(), digest(text.as_bytes())));
        }
        Self {
            settings,
            watchlist: text.and_then(|text| Watchlist::parse(&watchlist, &text)),
            digests,
        }
    }
}

/// Both files' contents, or the problems of either or both.
fn both(
    settings: Result<Option<Settings>, Diagnostics>,
    watchlist: Result<Watchlist, Diagnostics>,
) -> Result<(Option<Settings>, Watchlist), Diagnostics> {
    match (settings, watchlist) {
        (Ok(settings), Ok(watchlist)) => Ok((settings, watchlist)),
        (Err(problems), Ok(_)) | (Ok(_), Err(problems)) => Err(problems),
        (Err(mut problems), Err(more)) => {
            problems.0.extend(more.0);
            Err(problems)
        }
    }
}

/// A fingerprint of a file's content.
pub fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}
