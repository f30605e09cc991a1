//! flowwatch watches AWS Supply Chain data integration flow executions until each is terminal,
//! and makes every state change visible: Prometheus metrics, CloudEvents on stdout and in a file,
//! and health endpoints.
//!
//! [`run`] wires the parts: the watchlist feeds the [`scheduler`], which polls through a
//! [`aws::FlowExecutions`] client paced by [`pacing`], keeps [`state`], and writes [`events`] and
//! [`metrics`]; [`http`] serves them. The shutdown signal is passed in.

mod api;
pub mod demo;
mod engine;
pub mod fake;
mod input;
mod model;
mod output;
mod server;
mod systemd;
mod telemetry;

pub use crate::api::{ApiError, FlowExecutions, static_client};
pub use crate::engine::scheduler::Finish;
pub use crate::input::config::{DEFAULT_CONFIG_PATH, Settings};
pub use crate::model::{ApiStatus, ExecutionKey, Observation, Outcome, Status};
pub use crate::output::store::Store;
pub use crate::server::http::limits;
pub use crate::telemetry::init as init_logging;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::api::SdkFlowExecutions;
use crate::engine::scheduler::{Command, Outputs, Scheduler};
use crate::input::diagnostic::{Diagnostic, Diagnostics, Location};
use crate::input::watchlist::Watchlist;
use crate::output::events::Sinks;
use crate::output::health::Health;
use crate::output::metrics::Metrics;
use crate::server::http::{AppState, ReloadFuture, Reloader};

/// How long the HTTP server may take to close its connections at shutdown.
const HTTP_SHUTDOWN_BOUND: Duration = Duration::from_secs(6);

/// Errors that end the daemon, each with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid config or watchlist: exit 2.
    #[error("{0}")]
    Config(#[from] Diagnostics),
    /// The daemon cannot run (cannot listen, cannot open the event file, no AWS region): exit 3.
    #[error("{0}")]
    Fatal(String),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => 2,
            Error::Fatal(_) => 3,
        }
    }
}

/// `flowwatch check-config`: validates the config, the watchlist and the state directory as
/// `run` would. Returns the summary, or every problem found, one per line.
pub fn check_config(config: &std::path::Path) -> Result<String, String> {
    let settings = match Settings::load(config) {
        Ok(settings) => settings,
        Err(problems) => {
            // The watchlist is checked too when its path can still be read, so one run shows
            // every problem.
            let more = input::config::watchlist_path_hint(config)
                .map(|p| Watchlist::load(&p))
                .and_then(Result::err)
                .map(|more| format!("\n{more}"))
                .unwrap_or_default();
            return Err(format!("{problems}{more}"));
        }
    };
    let watchlist = Watchlist::load(&settings.watchlist);
    let store = Store::check(&settings.state.path)
        .map_err(|e| format!("{}: {}", e.path.display(), e.message));
    match (watchlist, store) {
        (Ok(watchlist), Ok(())) => Ok(input::config::summary(&settings, &watchlist)),
        (Ok(_), Err(store)) => Err(store),
        (Err(problems), Ok(())) => Err(problems.to_string()),
        (Err(problems), Err(store)) => Err(format!("{store}\n{problems}")),
    }
}

/// Options of one daemon run.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Exit once every execution is terminal.
    pub exit_when_done: bool,
    /// Reload the watchlist on SIGHUP (the binary sets this; in-process tests do not).
    pub reload_on_sighup: bool,
    /// Told the HTTP server's address once it is listening (useful with port 0).
    pub bound: Option<oneshot::Sender<SocketAddr>>,
}

/// Runs the daemon against AWS (or `aws.endpoint_url`) until `shutdown` is cancelled.
pub async fn run(
    settings: Settings,
    options: RunOptions,
    shutdown: CancellationToken,
) -> Result<Finish, Error> {
    let client = SdkFlowExecutions::from_settings(&settings.aws, settings.polling.request_timeout)
        .await
        .map_err(Error::Fatal)?;
    run_with(settings, Arc::new(client), options, shutdown).await
}

/// Runs the daemon with a given API client.
pub async fn run_with<C: FlowExecutions>(
    settings: Settings,
    client: Arc<C>,
    options: RunOptions,
    shutdown: CancellationToken,
) -> Result<Finish, Error> {
    // Read before loading, so any change after this moment is seen by the file watch.
    let watched_digest = std::fs::read(&settings.watchlist).ok().map(|b| digest(&b));
    let watchlist = Watchlist::load(&settings.watchlist)?;
    if options.exit_when_done && !watchlist.flows.is_empty() {
        return Err(Error::Config(Diagnostics(vec![Diagnostic::new(
            Location::Path(settings.watchlist.clone()),
            format!(
                "--exit-when-done cannot be used with [[flow]] entries ({} in the watchlist): a watched flow never ends",
                watchlist.flows.len()
            ),
        )])));
    }
    // The scheduler takes the watchlist; no 100,000-entry copy is kept for these counts.
    let (entry_count, flow_count) = (watchlist.entries.len(), watchlist.flows.len());
    let metrics = Arc::new(
        Metrics::with_per_execution(settings.metrics.per_execution)
            .map_err(|e| Error::Fatal(format!("cannot create metrics: {e}")))?,
    );
    let sinks =
        Sinks::open(settings.events.stdout, settings.events.file.as_deref()).map_err(|e| {
            Error::Fatal(format!(
                "cannot open event file {}: {}",
                settings
                    .events
                    .file
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                io_error_text(&e)
            ))
        })?;
    let health = Arc::new(Health::new());
    let store = Store::open(&settings.state.path).map_err(|e| {
        Error::Config(Diagnostics(vec![Diagnostic::new(
            Location::Path(e.path.clone()),
            format!(
                "{} (state.path = {})",
                e.message,
                settings.state.path.display()
            ),
        )]))
    })?;
    let listener = TcpListener::bind(settings.server.listen)
        .await
        .map_err(|e| {
            Error::Fatal(format!(
                "cannot listen on {}: {}",
                settings.server.listen,
                io_error_text(&e)
            ))
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Fatal(format!("cannot read the listening address: {e}")))?;

    let (commands, command_rx) = mpsc::channel(16);
    let reload = reloader(
        settings.watchlist.clone(),
        commands.clone(),
        metrics.clone(),
    );
    let scheduler = Scheduler::new(
        client,
        settings.polling.clone(),
        settings.discovery.clone(),
        watchlist,
        Outputs {
            metrics: metrics.clone(),
            sinks,
            health: health.clone(),
            store,
        },
        options.exit_when_done,
    );
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        %addr,
        watchlist = %settings.watchlist.display(),
        executions = entry_count,
        flows = flow_count,
        "flowwatch is listening"
    );

    let http_stop = CancellationToken::new();
    let app = server::http::app(AppState {
        metrics,
        health,
        commands,
        reload: reload.clone(),
    });
    let server = {
        let stop = http_stop.clone();
        tokio::spawn(server::http::serve(listener, app, stop))
    };
    if let Some(bound) = options.bound {
        let _ = bound.send(addr);
    }
    systemd::ready(&format!(
        "watching {} executions and {} flows; serving on {addr}",
        entry_count, flow_count
    ));
    let stopping = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            systemd::stopping();
        })
    };
    let sighup = options
        .reload_on_sighup
        .then(|| tokio::spawn(reload_on_sighup(reload.clone(), shutdown.clone())));
    let file_watch = tokio::spawn(reload_on_change(
        settings.watchlist.clone(),
        watched_digest,
        reload,
        shutdown.clone(),
    ));

    let finish = scheduler.run(command_rx, shutdown.clone()).await;
    if !shutdown.is_cancelled() {
        // Every execution is terminal (--exit-when-done): stopping on our own.
        stopping.abort();
        systemd::stopping();
    }

    http_stop.cancel();
    if let Some(task) = sighup {
        task.abort();
    }
    file_watch.abort();
    match tokio::time::timeout(HTTP_SHUTDOWN_BOUND, server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "http server task failed"),
        Err(_) => tracing::warn!("http connections still open at shutdown were closed"),
    }
    tracing::info!(?finish, "flowwatch stopped");
    Ok(finish)
}

/// Builds the reload action: read and validate the watchlist file, then hand it to the
/// scheduler. An invalid watchlist is rejected and the old one keeps running.
fn reloader(
    path: std::path::PathBuf,
    commands: mpsc::Sender<Command>,
    metrics: Arc<Metrics>,
) -> Reloader {
    Arc::new(move || -> ReloadFuture {
        let path = path.clone();
        let commands = commands.clone();
        let metrics = metrics.clone();
        Box::pin(async move {
            let result = reload_once(&path, &commands).await;
            metrics.record_reload(result.is_ok());
            result
        })
    })
}

async fn reload_once(
    path: &std::path::Path,
    commands: &mpsc::Sender<Command>,
) -> Result<String, String> {
    let watchlist = match Watchlist::load(path) {
        Ok(w) => w,
        Err(problems) => {
            tracing::error!("reload refused, the old watchlist keeps running: {problems}");
            return Err(problems.to_string());
        }
    };
    let (tx, rx) = oneshot::channel();
    commands
        .send(Command::Replace(watchlist, tx))
        .await
        .map_err(|_| "the scheduler is not running".to_string())?;
    let summary = rx
        .await
        .map_err(|_| "the scheduler stopped during the reload".to_string())?;
    tracing::info!(
        added = summary.added,
        removed = summary.removed,
        kept = summary.kept,
        "watchlist reloaded"
    );
    Ok(format!(
        "{} added, {} removed, {} kept",
        summary.added, summary.removed, summary.kept
    ))
}

/// How often the watchlist file is checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// A fingerprint of the watchlist's content.
fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Reloads when the watchlist's content differs from `seen` (the digest of what was loaded). It
/// reads the file by its path every [`WATCH_INTERVAL`] rather than watching an inode, so an
/// editor's save-by-rename and a Kubernetes ConfigMap update (an atomic swap of the `..data`
/// symlink) are both seen. A content that failed to load is not tried again until it changes.
async fn reload_on_change(
    path: std::path::PathBuf,
    mut seen: Option<u64>,
    reload: Reloader,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The file's identity (size, modification time, inode): its content is read again only when
    // that changes, so a large watchlist costs a stat every interval, not a read and a hash.
    let identity = |m: &std::fs::Metadata| {
        use std::os::unix::fs::MetadataExt;
        (m.len(), m.modified().ok(), m.ino(), m.dev())
    };
    let mut last_identity = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(metadata) = tokio::fs::metadata(&path).await else {
            continue;
        };
        let current = Some(identity(&metadata));
        if current == last_identity {
            continue;
        }
        // Missing for a moment (mid-swap) or unreadable: look again next time.
        let Ok(bytes) = tokio::fs::read(&path).await else {
            continue;
        };
        last_identity = current;
        let now = Some(digest(&bytes));
        if now != seen {
            seen = now;
            tracing::info!(path = %path.display(), "the watchlist changed on disk: reloading");
            let _ = reload().await;
        }
    }
}

#[cfg(unix)]
async fn reload_on_sighup(reload: Reloader, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; use POST /-/reload instead");
        return;
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            received = hup.recv() => {
                if received.is_none() {
                    return;
                }
                tracing::info!("SIGHUP: reloading the watchlist");
                let _ = reload().await;
            }
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_sighup(_reload: Reloader, _shutdown: CancellationToken) {}

/// An I/O error in words, without the `(os error N)` noise.
pub fn io_error_text(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        std::io::ErrorKind::AddrInUse => "address already in use".to_string(),
        _ => e.to_string(),
    }
}
