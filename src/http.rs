//! The HTTP routes: `/metrics`, `/livez`, `/readyz`, `/status` and `POST /-/reload`. The router is
//! built by [`app`] so tests can call it directly.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::health::{Health, Readiness};
use crate::metrics::Metrics;
use crate::scheduler::Command;

/// How long `/status` and `/-/reload` wait for the scheduler.
const SCHEDULER_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Re-reads the watchlist and hands it to the scheduler; shared by SIGHUP and `POST /-/reload`.
/// Resolves to a one-line summary, or to the problems that made the new watchlist unusable.
pub type Reloader = Arc<dyn Fn() -> ReloadFuture + Send + Sync>;
pub type ReloadFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub commands: mpsc::Sender<Command>,
    pub reload: Reloader,
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/-/reload", post(reload))
        .fallback(not_found)
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
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
        Readiness::NotReady(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not ready", "reason": reason})),
        )
            .into_response(),
    }
}

async fn status(State(state): State<AppState>) -> Response {
    let (tx, rx) = oneshot::channel();
    if state.commands.send(Command::Status(tx)).await.is_err() {
        return unavailable("the scheduler is not running");
    }
    match tokio::time::timeout(SCHEDULER_REPLY_TIMEOUT, rx).await {
        Ok(Ok(doc)) => axum::Json(doc).into_response(),
        _ => unavailable("the scheduler did not answer in time"),
    }
}

async fn reload(State(state): State<AppState>) -> Response {
    match (state.reload)().await {
        Ok(summary) => (
            StatusCode::OK,
            axum::Json(json!({"result": "success", "summary": summary})),
        )
            .into_response(),
        Err(error) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"result": "failure", "error": error})),
        )
            .into_response(),
    }
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "not found: the endpoints are /metrics, /livez, /readyz, /status and POST /-/reload\n",
    )
        .into_response()
}

fn unavailable(reason: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"error": reason})),
    )
        .into_response()
}
