//! The HTTP routes: the status page `/`, `/metrics`, `/livez`, `/readyz`, `/status` and
//! `POST /-/reload`, and the
//! server that bounds what it accepts, so a misbehaving scraper cannot exhaust it. The router is
//! built by [`app`] so tests can call it directly.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::task::JoinSet;

use crate::engine::{EngineHandle, StatusQuery, Unanswered};
use crate::model::FlowKey;
use crate::output::health::{Health, Readiness};
use crate::output::metrics::Metrics;
use crate::output::series::SeriesCursor;
use crate::server::auth::BasicAuth;
use crate::server::reload::{ReloadError, Reloader};
use crate::server::shutdown::Shutdown;
use crate::server::tls::Tls;

/// How long a `/status` document or the status page waits for its turn to ask the engine.
const STATUS_TURN_TIMEOUT: Duration = crate::engine::REPLY_TIMEOUT;

/// What the server accepts from clients.
pub mod limits {
    use std::time::Duration;

    /// A client must send a request's headers within this time (also on an idle keep-alive
    /// connection, and on a new one that sends nothing), or the connection is closed: idle and
    /// slowloris clients hold a slot for at most this long. With `server.max_connections`
    /// slots (1,024 by default), a flood of idle connections cannot keep a probe out.
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
    /// Header lines per request; more get 431.
    pub const MAX_HEADERS: usize = 64;
    /// Read buffer, which bounds the request line and headers together; more get 431.
    pub const MAX_HEADER_BYTES: usize = 16 * 1024;
    /// Request bodies larger than this get 413 (no endpoint reads a body).
    pub const MAX_BODY_BYTES: u64 = 64 * 1024;
    /// A connection is asked to close after this long, however busy, so none lives forever.
    pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
    /// How long open connections get to finish at shutdown, counted from SIGTERM while the
    /// engine drains: the sinks' bound, so a slow client holds the exit no longer than they do.
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
}

#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub engine: EngineHandle,
    pub reload: Reloader,
    /// `server.enable_lifecycle`: whether `POST /-/reload` works.
    pub lifecycle: bool,
    /// One `/status` document or status page is built at a time: each walks the watched
    /// executions on the engine's thread, so a crowd of viewers queues here, not in the engine.
    pub status_gate: Arc<Semaphore>,
    /// `[server.basic_auth_users]`, when any.
    pub auth: Option<Arc<BasicAuth>>,
    /// This replica, when replicas share state (`[state] backend = "dynamodb"`).
    pub replica: Option<Replica>,
}

/// A replica of several sharing state: its name, and whether it leads.
#[derive(Clone, Debug)]
pub struct Replica {
    pub replica_id: String,
    pub leadership: tokio::sync::watch::Receiver<crate::ha::lease::Leadership>,
}

impl Replica {
    /// `/status`'s `replica`: `replica_id`, `leader`, and `since` when it leads.
    fn json(&self) -> serde_json::Value {
        use crate::ha::lease::Leadership;
        let (leader, since) = match &*self.leadership.borrow() {
            Leadership::Leader { since, .. } => (true, Some(crate::model::rfc3339(*since))),
            Leadership::Standby => (false, None),
        };
        json!({"replica_id": self.replica_id, "leader": leader, "since": since})
    }
}

pub fn app(state: AppState) -> Router {
    let router = Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/-/reload", post(reload))
        .fallback(not_found);
    let router = match state.auth.clone() {
        Some(auth) => router.layer(axum::middleware::from_fn(move |request, next| {
            super::auth::require(auth.clone(), request, next)
        })),
        None => router,
    };
    router
        .layer(axum::middleware::from_fn(refuse_large_bodies))
        .with_state(state)
}

async fn refuse_large_bodies(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = request
        .headers()
        .get(header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
        });
    if declared.is_some_and(|n| n > limits::MAX_BODY_BYTES) || chunked {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request bodies are limited to 64 KiB and must declare their length\n",
        )
            .into_response();
    }
    next.run(request).await
}

/// Serves `app` on `listener` until `stop` is requested, within [`limits`] and at most
/// `max_connections` connections at once. A connection turned away at the limit, or closed
/// because its headers did not come in time, is counted and logged (at most every
/// [`WARN_EVERY`]), never dropped silently.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    max_connections: usize,
    tls: Option<Arc<Tls>>,
    metrics: Arc<Metrics>,
    stop: Shutdown,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let refused = Arc::new(Closures::new(metrics.clone(), ConnectionClosed::Limit));
    let timed_out = Arc::new(Closures::new(
        metrics.clone(),
        ConnectionClosed::HeaderTimeout,
    ));
    let no_handshake = Arc::new(Closures::new(metrics, ConnectionClosed::TlsHandshake));
    let mut accept_errors = Every::new(WARN_EVERY);
    let mut connections = JoinSet::new();
    if let Some(tls) = &tls {
        connections.spawn(tls.clone().watch_files(stop.clone()));
    }
    loop {
        let accepted = tokio::select! {
            () = stop.requested() => break,
            accepted = listener.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, usually: wait instead of spinning, and say so at
                // most every WARN_EVERY, with how many failed since.
                if let Some(count) = accept_errors.tick(tokio::time::Instant::now()) {
                    tracing::warn!(error = %e, count,
                        "cannot accept HTTP connections (out of file descriptors? see the open-file limit at start-up)");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.record(max_connections);
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let (stop, timed_out) = (stop.clone(), timed_out.clone());
        let (tls, no_handshake) = (tls.clone(), no_handshake.clone());
        connections.spawn(async move {
            let _slot = slot;
            let timed_out_waiting = match tls {
                None => serve_connection(stream, service, stop).await,
                Some(tls) => match tls.accept(stream, limits::HEADER_READ_TIMEOUT).await {
                    Ok(stream) => serve_connection(stream, service, stop).await,
                    Err(error) => {
                        no_handshake.record_with(max_connections, &error);
                        return;
                    }
                },
            };
            if timed_out_waiting {
                timed_out.record(max_connections);
            }
        });
    }
    while connections.join_next().await.is_some() {}
}

/// Serves one connection until it ends, `stop` is requested or its lifetime is over. Returns
/// whether it was closed because its request headers did not come in time.
async fn serve_connection<S>(
    stream: S,
    service: hyper_util::service::TowerToHyperService<Router>,
    stop: Shutdown,
) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits::HEADER_READ_TIMEOUT)
        .max_headers(limits::MAX_HEADERS)
        .max_buf_size(limits::MAX_HEADER_BYTES);
    let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => return result.is_err_and(|e| e.is_timeout()),
        () = stop.requested() => {}
        () = tokio::time::sleep(limits::CONNECTION_LIFETIME) => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(limits::SHUTDOWN_GRACE, connection).await;
    false
}

/// How often a run of closed connections is logged, with how many there were.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Why the server closed a connection it did not serve.
#[derive(Debug, Clone, Copy)]
pub enum ConnectionClosed {
    /// `server.max_connections` were open.
    Limit,
    /// The client did not send its request headers within the header timeout.
    HeaderTimeout,
    /// The TLS handshake failed (no client certificate, a plain HTTP request...) or did not end
    /// within the header timeout.
    TlsHandshake,
}

impl ConnectionClosed {
    pub fn label(self) -> &'static str {
        match self {
            ConnectionClosed::Limit => "limit",
            ConnectionClosed::HeaderTimeout => "header_timeout",
            ConnectionClosed::TlsHandshake => "tls_handshake",
        }
    }
}

/// A run of happenings logged at most once a period: the first at once, then how many came
/// since, once the period is over.
struct Every {
    period: Duration,
    /// When the last line was logged.
    logged: Option<tokio::time::Instant>,
    /// Happenings since then.
    count: u64,
}

impl Every {
    fn new(period: Duration) -> Self {
        Self {
            period,
            logged: None,
            count: 0,
        }
    }

    /// Counts one; returns how many to report when a line is due now.
    fn tick(&mut self, now: tokio::time::Instant) -> Option<u64> {
        self.count += 1;
        if self.logged.is_some_and(|at| now < at + self.period) {
            return None;
        }
        self.logged = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

/// Closed connections of one kind: each is counted; a warning says how many at most every
/// [`WARN_EVERY`].
struct Closures {
    metrics: Arc<Metrics>,
    why: ConnectionClosed,
    pending: std::sync::Mutex<Every>,
}

impl Closures {
    fn new(metrics: Arc<Metrics>, why: ConnectionClosed) -> Self {
        Self {
            metrics,
            why,
            pending: std::sync::Mutex::new(Every::new(WARN_EVERY)),
        }
    }

    fn record(&self, max_connections: usize) {
        self.record_with(max_connections, "");
    }

    /// Counts one closed connection; `error` says why, when known.
    fn record_with(&self, max_connections: usize, error: &str) {
        self.metrics.connection_closed(self.why.label());
        let now = tokio::time::Instant::now();
        let Some(count) = crate::model::lock(&self.pending).tick(now) else {
            return;
        };
        match self.why {
            ConnectionClosed::Limit => tracing::warn!(
                count,
                max_connections,
                "HTTP connections turned away: server.max_connections are open (see flowwatch_http_connections_closed_total)"
            ),
            ConnectionClosed::HeaderTimeout => {
                tracing::warn!(count, timeout = ?limits::HEADER_READ_TIMEOUT,
                "HTTP connections closed: no complete request headers within the timeout (idle or slow clients)")
            }
            ConnectionClosed::TlsHandshake => tracing::warn!(
                count,
                last_error = error,
                "HTTPS connections closed: the TLS handshake failed or did not end in time"
            ),
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let body = MetricsBody {
        head: Some(state.metrics.render_registry()),
        metrics: state.metrics,
        cursor: SeriesCursor::default(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// The `/metrics` body: the aggregate families, then the per-execution families a chunk at a
/// time as the client reads them, so neither memory nor a lock grows with one scrape of a large
/// watch set.
struct MetricsBody {
    metrics: Arc<Metrics>,
    head: Option<String>,
    cursor: SeriesCursor,
}

impl futures_core::Stream for MetricsBody {
    type Item = Result<bytes::Bytes, std::convert::Infallible>;

    fn poll_next(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let chunk = match this.head.take() {
            Some(head) => Some(head),
            None => this.metrics.next_series_chunk(&mut this.cursor),
        };
        std::task::Poll::Ready(chunk.map(|text| Ok(bytes::Bytes::from(text))))
    }
}

async fn livez(State(state): State<AppState>) -> Response {
    if state.health.is_live() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "scheduler loop is not running\n",
        )
            .into_response()
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.health.readiness() {
        Readiness::Ready => {
            (StatusCode::OK, axum::Json(json!({"status": "ready"}))).into_response()
        }
        Readiness::Standby => (
            StatusCode::OK,
            axum::Json(json!({"status": "ready", "reason": "standby"})),
        )
            .into_response(),
        Readiness::NotReady(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not ready", "reason": reason})),
        )
            .into_response(),
    }
}

/// `/status`: `?limit=N` (at most [`StatusQuery::MAX_LIMIT`]), `?offset=N`, and
/// `?flow=<instance_id>/<flow_name>` select the executions listed. One document is built at a
/// time; the engine copies out only the executions asked for.
async fn status(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let query = match status_query(query.as_deref().unwrap_or_default()) {
        Ok(query) => query,
        Err(problem) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": problem})),
            )
                .into_response();
        }
    };
    let _turn = match status_turn(&state).await {
        Ok(turn) => turn,
        Err(busy) => return busy,
    };
    let view = match state.engine.status(query).await {
        Ok(view) => view,
        Err(unanswered) => return engine_unavailable(unanswered),
    };
    let replica = state.replica.as_ref().map(Replica::json);
    // Built and encoded on the blocking pool: neither holds up the engine's thread.
    let encode = move || {
        let mut document = super::status_json::document(&view);
        if let (Some(replica), Some(fields)) = (replica, document.as_object_mut()) {
            fields.insert("replica".into(), replica);
        }
        serde_json::to_vec(&document)
    };
    match tokio::task::spawn_blocking(encode).await {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        _ => unavailable("the status document could not be built"),
    }
}

/// The executions a `/status` query string asks for.
fn status_query(query: &str) -> Result<StatusQuery, String> {
    let mut selected = StatusQuery {
        flow: None,
        offset: 0,
        limit: StatusQuery::DEFAULT_LIMIT,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            value
                .parse::<usize>()
                .map_err(|_| format!("{name} must be a whole number, not {value:?}"))
        };
        match name {
            "limit" => selected.limit = number()?.clamp(1, StatusQuery::MAX_LIMIT),
            "offset" => selected.offset = number()?,
            "flow" => {
                let (instance_id, flow_name) = value
                    .split_once("%2F")
                    .or_else(|| value.split_once('/'))
                    .ok_or("flow must be <instance_id>/<flow_name>")?;
                selected.flow = Some(FlowKey {
                    instance_id: instance_id.to_string(),
                    flow_name: flow_name.to_string(),
                });
            }
            other => {
                return Err(format!(
                    "unknown parameter {other:?}: use limit, offset or flow"
                ));
            }
        }
    }
    Ok(selected)
}

/// The status page; `?offset=N` starts at the N-th flow.
async fn page(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let offset = query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("offset="))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    let _turn = match status_turn(&state).await {
        Ok(turn) => turn,
        Err(busy) => return busy,
    };
    let overview = match state.engine.overview(offset).await {
        Ok(overview) => overview,
        Err(unanswered) => return engine_unavailable(unanswered),
    };
    match super::page::render(&overview) {
        Ok(html) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    super::page::CONTENT_SECURITY_POLICY.as_str(),
                ),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::REFERRER_POLICY, "no-referrer"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot render the status page");
            unavailable("the status page could not be rendered")
        }
    }
}

async fn reload(State(state): State<AppState>) -> Response {
    if !state.lifecycle {
        return (
            StatusCode::FORBIDDEN,
            axum::Json(json!({
                "result": "failure",
                "error": "POST /-/reload is off: set server.enable_lifecycle = true to allow it; SIGHUP (systemctl reload flowwatch) and saving the watchlist file reload it in any case",
            })),
        )
            .into_response();
    }
    match state.reload.reload().await {
        Ok(reloaded) => {
            let body = json!({"result": "success", "summary": reloaded.to_string()});
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(error) => {
            // The watchlist's own problems are the client's to fix; the rest is this server's.
            let code = match error {
                ReloadError::Invalid(_) => StatusCode::BAD_REQUEST,
                ReloadError::Unread(_) | ReloadError::Engine(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            let body = json!({"result": "failure", "error": error.to_string()});
            (code, axum::Json(body)).into_response()
        }
    }
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "not found: the endpoints are /, /metrics, /livez, /readyz, /status and POST /-/reload\n",
    )
        .into_response()
}

/// The turn of one `/status` document or status page, waited for up to
/// [`STATUS_TURN_TIMEOUT`]; a 503 after that.
async fn status_turn(state: &AppState) -> Result<SemaphorePermit<'_>, Response> {
    match tokio::time::timeout(STATUS_TURN_TIMEOUT, state.status_gate.acquire()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(unavailable(
            "the status is being built for other requests; try again",
        )),
    }
}

/// The 503 of a request the engine did not answer.
fn engine_unavailable(unanswered: Unanswered) -> Response {
    unavailable(&unanswered.to_string())
}

fn unavailable(reason: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"error": reason})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Command, Overview};

    #[tokio::test(start_paused = true)]
    async fn a_run_of_happenings_is_logged_once_a_period_with_its_count() {
        let mut every = Every::new(WARN_EVERY);
        let start = tokio::time::Instant::now();
        assert_eq!(every.tick(start), Some(1), "the first at once");
        let in_between: Vec<Option<u64>> = (1..=274)
            .map(|n| every.tick(start + Duration::from_millis(n * 30)))
            .collect();
        assert!(
            in_between.iter().all(Option::is_none),
            "none within the period"
        );
        assert_eq!(
            every.tick(start + WARN_EVERY),
            Some(275),
            "then how many since"
        );
        assert_eq!(
            every.tick(start + WARN_EVERY + Duration::from_secs(1)),
            None
        );
    }

    fn state(engine: EngineHandle) -> AppState {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        AppState {
            metrics: metrics.clone(),
            health: Arc::new(Health::new()),
            reload: Reloader::new("watchlist.toml".into(), engine.clone(), metrics),
            engine,
            lifecycle: false,
            status_gate: Arc::new(Semaphore::new(1)),
            auth: None,
            replica: None,
        }
    }

    fn overview() -> Overview {
        Overview {
            now: 0.0,
            watched: 0,
            by_status: Vec::new(),
            overdue: 0,
            without_recent_success: 0,
            flows_total: 0,
            offset: 0,
            flows: Vec::new(),
            overdue_factor: 2.0,
            overdue_min: Duration::from_secs(60),
            min_history: 5,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_engine_builds_one_status_page_at_a_time_however_many_viewers_wait() {
        let (handle, mut engine) = EngineHandle::channel();
        let state = state(handle);
        let viewers: Vec<_> = (0..3)
            .map(|_| tokio::spawn(page(State(state.clone()), RawQuery(None))))
            .collect();
        for _ in 0..3 {
            let Some(Command::Overview(_, reply)) = engine.recv().await else {
                panic!("the engine is asked for an overview");
            };
            let next = tokio::time::timeout(Duration::from_secs(1), engine.recv()).await;
            assert!(
                next.is_err(),
                "no other viewer reaches the engine meanwhile"
            );
            assert!(reply.send(overview()).is_ok(), "the viewer waits for it");
        }
        for viewer in viewers {
            let response = viewer.await.expect("the viewer's request ends");
            assert_eq!(response.status(), StatusCode::OK);
        }
    }

    /// `POST /-/reload` with `watchlist` as the file, and the engine answering when `answers`.
    async fn reload_answer(watchlist: &str, answers: bool) -> StatusCode {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("watchlist.toml");
        std::fs::write(&path, watchlist).expect("watchlist");
        let (handle, mut engine) = EngineHandle::channel();
        let mut state = state(handle.clone());
        state.reload = Reloader::new(path, handle, state.metrics.clone());
        state.lifecycle = true;
        let served = tokio::spawn(async move {
            while let Some(command) = engine.recv().await {
                if let Command::Replace(_, _, reply) = command
                    && answers
                {
                    let _ = reply.send(crate::engine::ReloadSummary::default());
                }
            }
        });
        let code = reload(State(state)).await.status();
        served.abort();
        code
    }

    const VALID: &str = "[[execution]]\ninstance_id = \"8850c54e-e187-4fa7-89d4-6370f165174d\"\nflow_name = \"f\"\nexecution_id = \"a1b2c3d4-0000-4000-8000-000000000001\"\n";

    #[tokio::test]
    async fn a_reload_is_400_for_the_watchlist_s_problems_and_503_for_the_server_s() {
        assert_eq!(reload_answer(VALID, true).await, StatusCode::OK);
        assert_eq!(
            reload_answer("[[execution]]\ninstance_id = \"A\"\n", true).await,
            StatusCode::BAD_REQUEST,
            "an invalid watchlist is the client's to fix"
        );
        assert_eq!(
            reload_answer(VALID, false).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "an engine that gives no answer is the server's"
        );
    }
}
