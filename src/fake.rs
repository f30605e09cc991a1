//! A fake of the Supply Chain API's `GetDataIntegrationFlowExecution`, speaking the real restJson1
//! wire format: the same route, epoch-second timestamps, `x-amzn-errortype` error headers with the
//! model's HTTP codes, and the `x-amz-retry-after` hint. Each execution follows a scripted status
//! timeline, with fault windows (errors, throttling, hangs, resets, garbage bodies), behind an
//! optional global rate limit. It serves the integration tests and `flowwatch demo`.
//!
//! Time is tokio time measured from [`FakeServer::start`], so a paused clock drives it too.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the fake serves.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A global limit across all requests; past it, ThrottlingException (HTTP 429).
    #[serde(default)]
    pub rate_limit: Option<FakeRateLimit>,
    #[serde(default, rename = "execution")]
    pub executions: Vec<ScriptedExecution>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeRateLimit {
    pub requests_per_second: f64,
    #[serde(default = "one")]
    pub burst: f64,
    /// Sent as `x-amz-retry-after` (milliseconds) with each throttle, when set.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

fn one() -> f64 {
    1.0
}

/// One execution's script.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedExecution {
    pub instance_id: String,
    pub flow_name: String,
    pub execution_id: String,
    /// Status changes over time. Before the first step the execution does not exist yet
    /// (ResourceNotFoundException), as when a new execution lags.
    #[serde(default)]
    pub timeline: Vec<Step>,
    #[serde(default)]
    pub faults: Vec<FaultWindow>,
    #[serde(default)]
    pub source: Option<FakeSource>,
    #[serde(default)]
    pub diagnostic_reports_root_s3_uri: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Since the fake started, humantime (`"0s"`, `"12s"`).
    #[serde(with = "humantime_text")]
    pub at: Duration,
    /// Sent as is, so unrecognised values can be scripted too.
    pub status: String,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "type")]
pub enum FakeSource {
    S3 { bucket_name: String, key: String },
    Dataset { dataset_identifier: String },
}

/// A fault applied to a share of requests during a time window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultWindow {
    #[serde(with = "humantime_text", default)]
    pub from: Duration,
    #[serde(with = "humantime_opt", default)]
    pub until: Option<Duration>,
    /// The share of requests in the window that get the fault, from 0 to 1.
    #[serde(default = "one")]
    pub probability: f64,
    pub fault: Fault,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "kind")]
pub enum Fault {
    /// A modelled error: `error_type` is one of the seven exception names (its HTTP code follows
    /// the model), or any other name with an explicit `http_status`.
    Error {
        error_type: String,
        #[serde(default)]
        http_status: Option<u16>,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        retry_after_ms: Option<u64>,
    },
    /// The request is never answered.
    Hang,
    /// The connection is dropped without a response.
    Reset,
    /// Any status, content type and body: HTML error pages, truncated or non-JSON bodies.
    Body {
        http_status: u16,
        #[serde(default = "json_content_type")]
        content_type: String,
        body: String,
    },
}

fn json_content_type() -> String {
    "application/json".to_string()
}

/// The model's HTTP code for each modelled exception.
pub fn http_status_of(error_type: &str) -> Option<u16> {
    Some(match error_type {
        "ValidationException" => 400,
        "ServiceQuotaExceededException" => 402,
        "AccessDeniedException" => 403,
        "ResourceNotFoundException" => 404,
        "ConflictException" => 409,
        "ThrottlingException" => 429,
        "InternalServerException" => 500,
        _ => return None,
    })
}

/// What the fake has seen, for assertions and the demo's summary.
#[derive(Debug, Clone, Default)]
pub struct FakeStats {
    pub requests: u64,
    pub throttled: u64,
    pub by_http_status: BTreeMap<u16, u64>,
    pub by_execution: HashMap<String, u64>,
    /// When each request arrived (tokio time since start) and for which execution id.
    pub arrivals: Vec<(Duration, String)>,
}

struct Shared {
    scenario: Mutex<Scenario>,
    stats: Mutex<FakeStats>,
    bucket: Mutex<(f64, Instant)>,
    started: Instant,
    started_wall: SystemTime,
    rng: Mutex<fastrand::Rng>,
    shutdown: CancellationToken,
}

/// A running fake on a loopback port.
pub struct FakeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FakeServer {
    /// Starts on an ephemeral port of 127.0.0.1.
    pub async fn start(scenario: Scenario) -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), scenario).await
    }

    pub async fn start_on(addr: SocketAddr, scenario: Scenario) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let burst = scenario.rate_limit.as_ref().map_or(1.0, |r| r.burst);
        let shared = Arc::new(Shared {
            scenario: Mutex::new(scenario),
            stats: Mutex::new(FakeStats::default()),
            bucket: Mutex::new((burst, Instant::now())),
            started: Instant::now(),
            started_wall: SystemTime::now(),
            rng: Mutex::new(fastrand::Rng::with_seed(0x5eed)),
            shutdown: CancellationToken::new(),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Self { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to give the SDK as its endpoint.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> FakeStats {
        lock(&self.shared.stats).clone()
    }

    /// Time since the fake started, on its clock.
    pub fn elapsed(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// Replaces the script; time keeps counting from the original start.
    pub fn set_scenario(&self, scenario: Scenario) {
        *lock(&self.shared.scenario) = scenario;
    }

    pub async fn stop(self) {
        self.shared.shutdown.cancel();
        let _ = self.task.await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { handle(&shared, req).await }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Returned by the handler to make hyper drop the connection without an answer.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the fake")
    }
}

impl std::error::Error for DropConnection {}

enum Answer {
    Respond(Response<Full<Bytes>>),
    Hang,
    Reset,
}

async fn handle(
    shared: &Shared,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, DropConnection> {
    let answer = answer(shared, &req);
    match answer {
        Answer::Respond(response) => {
            let code = response.status().as_u16();
            let mut stats = lock(&shared.stats);
            *stats.by_http_status.entry(code).or_default() += 1;
            if code == 429 {
                stats.throttled += 1;
            }
            Ok(response)
        }
        Answer::Hang => {
            shared.shutdown.cancelled().await;
            Err(DropConnection)
        }
        Answer::Reset => Err(DropConnection),
    }
}

fn answer(shared: &Shared, req: &Request<Incoming>) -> Answer {
    let now = shared.started.elapsed();
    let path = req.uri().path().to_string();
    let ids = parse_route(&path);
    {
        let mut stats = lock(&shared.stats);
        stats.requests += 1;
        let id = ids.as_ref().map_or_else(String::new, |(_, _, e)| e.clone());
        *stats.by_execution.entry(id.clone()).or_default() += 1;
        stats.arrivals.push((now, id));
    }
    if req.method() != Method::GET {
        return Answer::Respond(error(
            405,
            "UnknownOperationException",
            "only GET is served by this fake",
            None,
        ));
    }
    let Some((instance_id, flow_name, execution_id)) = ids else {
        return Answer::Respond(error(
            404,
            "UnknownOperationException",
            &format!("no operation at {path}"),
            None,
        ));
    };
    let signed = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256 "));
    if !signed {
        return Answer::Respond(error(
            403,
            "AccessDeniedException",
            "Missing Authentication Token: the request is not SigV4-signed",
            None,
        ));
    }

    let scenario = lock(&shared.scenario).clone();
    if let Some(limit) = &scenario.rate_limit {
        let mut bucket = lock(&shared.bucket);
        let (tokens, at) = *bucket;
        let refreshed =
            (tokens + at.elapsed().as_secs_f64() * limit.requests_per_second).min(limit.burst);
        if refreshed < 1.0 {
            *bucket = (refreshed, Instant::now());
            return Answer::Respond(error(
                429,
                "ThrottlingException",
                "Rate exceeded",
                limit.retry_after_ms,
            ));
        }
        *bucket = (refreshed - 1.0, Instant::now());
    }

    let Some(script) = scenario.executions.iter().find(|e| {
        e.instance_id == instance_id && e.flow_name == flow_name && e.execution_id == execution_id
    }) else {
        return Answer::Respond(not_found(&instance_id, &flow_name, &execution_id));
    };

    for window in &script.faults {
        let active = now >= window.from && window.until.is_none_or(|u| now < u);
        if !active || lock(&shared.rng).f64() >= window.probability {
            continue;
        }
        return match &window.fault {
            Fault::Hang => Answer::Hang,
            Fault::Reset => Answer::Reset,
            Fault::Error {
                error_type,
                http_status,
                message,
                retry_after_ms,
            } => {
                let code = http_status.or(http_status_of(error_type)).unwrap_or(500);
                let message = message
                    .clone()
                    .unwrap_or_else(|| format!("scripted {error_type}"));
                Answer::Respond(error(code, error_type, &message, *retry_after_ms))
            }
            Fault::Body {
                http_status,
                content_type,
                body,
            } => Answer::Respond(response(*http_status, content_type, body.clone(), &[])),
        };
    }

    let current = script.timeline.iter().rev().find(|s| s.at <= now);
    let Some(step) = current else {
        return Answer::Respond(not_found(&instance_id, &flow_name, &execution_id));
    };
    let epoch = |d: Duration| {
        (shared.started_wall + d)
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |t| t.as_secs_f64().floor())
    };
    let mut execution = json!({
        "instanceId": instance_id,
        "flowName": flow_name,
        "executionId": execution_id,
        "status": step.status,
        "startTime": epoch(script.timeline[0].at),
    });
    let terminal = matches!(step.status.as_str(), "SUCCEEDED" | "FAILED");
    if terminal {
        execution["endTime"] = json!(epoch(step.at));
    }
    if let Some(message) = &step.message {
        execution["message"] = json!(message);
    }
    match &script.source {
        Some(FakeSource::S3 { bucket_name, key }) => {
            execution["sourceInfo"] =
                json!({"sourceType": "S3", "s3Source": {"bucketName": bucket_name, "key": key}});
        }
        Some(FakeSource::Dataset { dataset_identifier }) => {
            execution["sourceInfo"] = json!({"sourceType": "DATASET", "datasetSource": {"datasetIdentifier": dataset_identifier}});
        }
        None => {}
    }
    if let Some(uri) = &script.diagnostic_reports_root_s3_uri {
        execution["outputMetadata"] = json!({"diagnosticReportsRootS3URI": uri});
    }
    let body = json!({ "flowExecution": execution }).to_string();
    Answer::Respond(response(200, "application/json", body, &[]))
}

/// Splits `/api-data/data-integration/instance/{i}/data-integration-flows/{f}/executions/{e}`.
fn parse_route(path: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        [
            "api-data",
            "data-integration",
            "instance",
            i,
            "data-integration-flows",
            f,
            "executions",
            e,
        ] => Some((percent_decode(i)?, percent_decode(f)?, percent_decode(e)?)),
        _ => None,
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn not_found(instance_id: &str, flow_name: &str, execution_id: &str) -> Response<Full<Bytes>> {
    error(
        404,
        "ResourceNotFoundException",
        &format!(
            "Flow execution {execution_id} of flow {flow_name} in instance {instance_id} does not exist"
        ),
        None,
    )
}

/// A restJson1 error: the type in `x-amzn-errortype`, the text in a JSON `message`.
fn error(
    code: u16,
    error_type: &str,
    message: &str,
    retry_after_ms: Option<u64>,
) -> Response<Full<Bytes>> {
    let retry = retry_after_ms.map(|ms| ms.to_string());
    let mut headers = vec![("x-amzn-errortype", error_type.to_string())];
    if let Some(ms) = retry {
        headers.push(("x-amz-retry-after", ms));
    }
    let body: Value = json!({ "message": message });
    response(code, "application/json", body.to_string(), &headers)
}

fn response(
    code: u16,
    content_type: &str,
    body: String,
    headers: &[(&str, String)],
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = response.headers_mut();
    if let Ok(v) = content_type.parse() {
        h.insert("content-type", v);
    }
    if let Ok(v) = format!("fake-{}", fastrand::u64(..)).parse() {
        h.insert("x-amzn-requestid", v);
    }
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            value.parse(),
        ) {
            h.insert(n, v);
        }
    }
    response
}

mod humantime_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

mod humantime_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// A scenario in TOML (see `config/demo/scenario.toml`).
pub fn parse_scenario(text: &str) -> Result<Scenario, String> {
    toml_edit::de::from_str(text).map_err(|e| e.to_string())
}
