//! A fake of the Supply Chain API's `GetDataIntegrationFlowExecution` and
//! `ListDataIntegrationFlowExecutions`, speaking the real restJson1 wire format: the same routes,
//! `maxResults`/`nextToken` paging, epoch-second timestamps, `x-amzn-errortype` error headers with
//! the model's HTTP codes, and the `x-amz-retry-after` hint. Each execution follows a scripted
//! status timeline, with fault windows (errors, throttling, hangs, resets, garbage bodies), behind
//! an optional global rate limit and limits per signer (access key and region, as AWS quotas are
//! per account and region). It records who signed each call, for each instance. It serves the
//! integration tests and `flowwatch demo`.
//!
//! List answers newest first (by start time, then execution id) with a keyset cursor as token,
//! so executions that start between two pages neither repeat nor shift later pages. flowwatch
//! does not rely on that order; the model promises none.
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

mod events;
mod queue;
pub use events::{EventPublishing, Published, aws_json, aws_query, form_encoded};
pub use queue::{FakeQueue, QueueSender};

/// What the fake serves.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A global limit across all requests; past it, ThrottlingException (HTTP 429).
    #[serde(default)]
    pub rate_limit: Option<FakeRateLimit>,
    #[serde(default, rename = "execution")]
    pub executions: Vec<ScriptedExecution>,
    /// Flows that exist without scripted executions, or whose List requests get faults. A flow
    /// with neither an entry here nor an execution does not exist (ResourceNotFoundException).
    #[serde(default, rename = "flow")]
    pub flows: Vec<ScriptedFlow>,
    /// Limits of one signer each (an access key in a region, as AWS quotas are per account and
    /// region), on top of `rate_limit`; past one, that signer's requests get ThrottlingException.
    #[serde(default, rename = "signer_limit")]
    pub signer_limits: Vec<SignerLimit>,
}

/// The rate limit of requests signed by `access_key` for `region`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerLimit {
    pub access_key: String,
    pub region: String,
    pub requests_per_second: f64,
    #[serde(default = "one")]
    pub burst: f64,
}

/// Who signed a request: the access key and region of its SigV4 credential scope.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Signer {
    pub access_key: String,
    pub region: String,
}

impl Signer {
    /// The signer of an `Authorization: AWS4-HMAC-SHA256 Credential=AKID/date/region/scn/…`
    /// header, if it is one.
    fn of(authorization: &str) -> Option<Self> {
        let rest = authorization.strip_prefix("AWS4-HMAC-SHA256 ")?;
        let credential = rest
            .split(',')
            .find_map(|part| part.trim().strip_prefix("Credential="))?;
        let mut scope = credential.split('/');
        let access_key = scope.next()?.to_string();
        let region = scope.nth(1)?.to_string();
        Some(Self { access_key, region })
    }
}

/// A flow as ListDataIntegrationFlowExecutions sees it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedFlow {
    pub instance_id: String,
    pub flow_name: String,
    /// Faults of List requests for this flow.
    #[serde(default)]
    pub faults: Vec<FaultWindow>,
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
    /// History: the execution started this long before the fake did. Its reported start and end
    /// times move back by as much; the timeline still says when it is visible and what it shows.
    #[serde(with = "humantime_opt", default)]
    pub started_before: Option<Duration>,
    /// History: how long the run took. Its start time is reported this long before its first
    /// step, so a run scripted as `[{ at = "0s", status = "SUCCEEDED" }]` has a duration.
    #[serde(with = "humantime_opt", default)]
    pub ran_for: Option<Duration>,
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
    /// A 200 answer whose chunked body never ends.
    Endless,
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
fn http_status_of(error_type: &str) -> Option<u16> {
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
    /// When each request arrived (tokio time since start) and for which execution id (empty for
    /// List requests).
    pub arrivals: Vec<(Duration, String)>,
    /// ListDataIntegrationFlowExecutions requests, by `instance_id/flow_name`.
    pub lists_by_flow: HashMap<String, u64>,
    /// Signed requests by signer, and of those the throttled ones (by either limit).
    pub by_signer: BTreeMap<Signer, u64>,
    pub throttled_by_signer: BTreeMap<Signer, u64>,
    /// The signers of each instance's requests.
    pub signers_of_instance: BTreeMap<String, std::collections::BTreeSet<Signer>>,
}

impl FakeStats {
    /// All List requests.
    pub fn lists(&self) -> u64 {
        self.lists_by_flow.values().sum()
    }
}

/// A scenario with lookups by execution and by flow, so a request costs the same with 100,000
/// scripted executions as with ten.
struct Indexed {
    scenario: Scenario,
    /// `instance/flow/execution` → index in `scenario.executions`.
    by_key: HashMap<String, usize>,
    /// `instance/flow` → indexes of the flow's executions.
    by_flow: HashMap<String, Vec<usize>>,
}

impl Indexed {
    fn new(scenario: Scenario) -> Self {
        let mut by_key = HashMap::with_capacity(scenario.executions.len());
        let mut by_flow: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, e) in scenario.executions.iter().enumerate() {
            by_key
                .entry(format!(
                    "{}/{}/{}",
                    e.instance_id, e.flow_name, e.execution_id
                ))
                .or_insert(i);
            by_flow
                .entry(format!("{}/{}", e.instance_id, e.flow_name))
                .or_default()
                .push(i);
        }
        Self {
            scenario,
            by_key,
            by_flow,
        }
    }
}

struct Shared {
    scenario: Mutex<Indexed>,
    stats: Mutex<FakeStats>,
    bucket: Mutex<(f64, Instant)>,
    /// Each limited signer's bucket, as `bucket`.
    signer_buckets: Mutex<HashMap<Signer, (f64, Instant)>>,
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
    /// Starts serving `scenario` on a free loopback port.
    pub async fn start(scenario: Scenario) -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let burst = scenario.rate_limit.as_ref().map_or(1.0, |r| r.burst);
        let shared = Arc::new(Shared {
            scenario: Mutex::new(Indexed::new(scenario)),
            stats: Mutex::new(FakeStats::default()),
            bucket: Mutex::new((burst, Instant::now())),
            signer_buckets: Mutex::default(),
            started: Instant::now(),
            started_wall: SystemTime::now(),
            rng: Mutex::new(fastrand::Rng::with_seed(0x5eed)),
            shutdown: CancellationToken::new(),
        });
        let served = shared.clone();
        let task = tokio::spawn(serve_http1(listener, shared.shutdown.clone(), move || {
            let shared = served.clone();
            service_fn(move |req| {
                let shared = shared.clone();
                async move { handle(&shared, req).await }
            })
        }));
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

    /// Requests and throttled requests so far, without copying the stats.
    pub fn counts(&self) -> (u64, u64) {
        let stats = lock(&self.shared.stats);
        (stats.requests, stats.throttled)
    }

    /// Time since the fake started, on its clock.
    pub fn elapsed(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// Replaces the script; time keeps counting from the original start.
    pub fn set_scenario(&self, scenario: Scenario) {
        *lock(&self.shared.scenario) = Indexed::new(scenario);
    }

    pub async fn stop(self) {
        self.shared.shutdown.cancel();
        let _ = self.task.await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Accepts connections on `listener` until `shutdown` is cancelled, and serves each with HTTP/1
/// through a service `service` makes for it. The fake API and the fake queue both serve this way.
pub(crate) async fn serve_http1<S>(
    listener: TcpListener,
    shutdown: CancellationToken,
    service: impl Fn() -> S,
) where
    S: hyper::service::HttpService<Incoming> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: Send + 'static,
    <S::ResBody as http_body::Body>::Data: Send,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let service = service();
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A whole answer, or one that never ends (64 KiB chunks, as fast as the client reads).
enum FakeBody {
    Whole(Full<Bytes>),
    Endless,
}

impl http_body::Body for FakeBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            FakeBody::Whole(full) => std::pin::Pin::new(full).poll_frame(cx),
            FakeBody::Endless => {
                static CHUNK: [u8; 64 * 1024] = [b' '; 64 * 1024];
                std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(&CHUNK)))))
            }
        }
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
    Endless,
}

async fn handle(
    shared: &Shared,
    req: Request<Incoming>,
) -> Result<Response<FakeBody>, DropConnection> {
    let answer = answer(shared, &req);
    match answer {
        Answer::Respond(response) => {
            let code = response.status().as_u16();
            let mut stats = lock(&shared.stats);
            *stats.by_http_status.entry(code).or_default() += 1;
            if code == 429 {
                stats.throttled += 1;
            }
            Ok(response.map(FakeBody::Whole))
        }
        Answer::Endless => {
            let mut response = Response::new(FakeBody::Endless);
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
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
    let route = parse_route(&path, req.uri().query());
    {
        let mut stats = lock(&shared.stats);
        stats.requests += 1;
        let id = match &route {
            Some(Route::Get { execution_id, .. }) => execution_id.clone(),
            _ => String::new(),
        };
        if let Some(Route::List {
            instance_id,
            flow_name,
            ..
        }) = &route
        {
            *stats
                .lists_by_flow
                .entry(format!("{instance_id}/{flow_name}"))
                .or_default() += 1;
        }
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
    let Some(route) = route else {
        return Answer::Respond(error(
            404,
            "UnknownOperationException",
            &format!("no operation at {path}"),
            None,
        ));
    };
    let signer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(Signer::of);
    let Some(signer) = signer else {
        return Answer::Respond(error(
            403,
            "AccessDeniedException",
            "Missing Authentication Token: the request is not SigV4-signed",
            None,
        ));
    };
    record_signer(shared, &signer, &route);

    let indexed = lock(&shared.scenario);
    if let Some(throttled) = throttle(shared, &indexed.scenario, &signer) {
        *lock(&shared.stats)
            .throttled_by_signer
            .entry(signer)
            .or_default() += 1;
        return throttled;
    }
    match route {
        Route::Get {
            instance_id,
            flow_name,
            execution_id,
        } => get_execution(
            shared,
            &indexed,
            now,
            &instance_id,
            &flow_name,
            &execution_id,
        ),
        Route::List {
            instance_id,
            flow_name,
            max_results,
            next_token,
        } => list_executions(
            shared,
            &indexed,
            now,
            &instance_id,
            &flow_name,
            max_results,
            next_token.as_deref(),
        ),
    }
}

/// Counts a signed request by its signer and the instance it asks about.
fn record_signer(shared: &Shared, signer: &Signer, route: &Route) {
    let instance_id = match route {
        Route::Get { instance_id, .. } | Route::List { instance_id, .. } => instance_id,
    };
    let mut stats = lock(&shared.stats);
    *stats.by_signer.entry(signer.clone()).or_default() += 1;
    stats
        .signers_of_instance
        .entry(instance_id.clone())
        .or_default()
        .insert(signer.clone());
}

/// ThrottlingException when the global limit, or `signer`'s own, has no token left.
fn throttle(shared: &Shared, scenario: &Scenario, signer: &Signer) -> Option<Answer> {
    if let Some(limit) = &scenario.rate_limit
        && !take_token(
            &mut lock(&shared.bucket),
            limit.requests_per_second,
            limit.burst,
        )
    {
        let throttled = error(
            429,
            "ThrottlingException",
            "Rate exceeded",
            limit.retry_after_ms,
        );
        return Some(Answer::Respond(throttled));
    }
    let limit = scenario
        .signer_limits
        .iter()
        .find(|l| l.access_key == signer.access_key && l.region == signer.region)?;
    let mut buckets = lock(&shared.signer_buckets);
    let bucket = buckets
        .entry(signer.clone())
        .or_insert((limit.burst, Instant::now()));
    (!take_token(bucket, limit.requests_per_second, limit.burst)).then(|| {
        Answer::Respond(error(
            429,
            "ThrottlingException",
            "Rate exceeded for this account and region",
            None,
        ))
    })
}

/// Takes a token from a bucket of `burst` refilled at `rate` per second; false when empty.
fn take_token(bucket: &mut (f64, Instant), rate: f64, burst: f64) -> bool {
    let (tokens, at) = *bucket;
    let refreshed = (tokens + at.elapsed().as_secs_f64() * rate).min(burst);
    if refreshed < 1.0 {
        *bucket = (refreshed, Instant::now());
        return false;
    }
    *bucket = (refreshed - 1.0, Instant::now());
    true
}

fn get_execution(
    shared: &Shared,
    indexed: &Indexed,
    now: Duration,
    instance_id: &str,
    flow_name: &str,
    execution_id: &str,
) -> Answer {
    let script = indexed
        .by_key
        .get(&format!("{instance_id}/{flow_name}/{execution_id}"))
        .map(|&i| &indexed.scenario.executions[i]);
    let Some(script) = script else {
        return Answer::Respond(not_found(instance_id, flow_name, execution_id));
    };
    if let Some(fault) = active_fault(shared, &script.faults, now) {
        return fault;
    }
    let Some(execution) = describe_execution(shared, script, now) else {
        return Answer::Respond(not_found(instance_id, flow_name, execution_id));
    };
    let body = json!({ "flowExecution": execution }).to_string();
    Answer::Respond(response(200, "application/json", body, &[]))
}

/// The fault a request gets now, if any of `faults` strikes.
fn active_fault(shared: &Shared, faults: &[FaultWindow], now: Duration) -> Option<Answer> {
    for window in faults {
        let active = now >= window.from && window.until.is_none_or(|u| now < u);
        if !active || lock(&shared.rng).f64() >= window.probability {
            continue;
        }
        return Some(match &window.fault {
            Fault::Hang => Answer::Hang,
            Fault::Reset => Answer::Reset,
            Fault::Endless => Answer::Endless,
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
        });
    }
    None
}

/// The wire form of an execution as it is now, or `None` before its first step.
fn describe_execution(shared: &Shared, script: &ScriptedExecution, now: Duration) -> Option<Value> {
    let step = script.timeline.iter().rev().find(|s| s.at <= now)?;
    let back = script.started_before.unwrap_or_default();
    let epoch = |d: Duration| {
        (shared.started_wall + d)
            .checked_sub(back)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0.0, |t| t.as_secs_f64().floor())
    };
    let mut execution = json!({
        "instanceId": script.instance_id,
        "flowName": script.flow_name,
        "executionId": script.execution_id,
        "status": step.status,
        "startTime": epoch(script.timeline[0].at) - script.ran_for.unwrap_or_default().as_secs_f64(),
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
    Some(execution)
}

/// One page of a flow's visible executions, newest first, after the cursor in `next_token`.
fn list_executions(
    shared: &Shared,
    indexed: &Indexed,
    now: Duration,
    instance_id: &str,
    flow_name: &str,
    max_results: Option<Result<u32, String>>,
    next_token: Option<&str>,
) -> Answer {
    let scenario = &indexed.scenario;
    let flow = scenario
        .flows
        .iter()
        .find(|f| f.instance_id == instance_id && f.flow_name == flow_name);
    let members: &[usize] = indexed
        .by_flow
        .get(&format!("{instance_id}/{flow_name}"))
        .map_or(&[], Vec::as_slice);
    if flow.is_none() && members.is_empty() {
        return Answer::Respond(error(
            404,
            "ResourceNotFoundException",
            &format!("Flow {flow_name} in instance {instance_id} does not exist"),
            None,
        ));
    }
    let page_size = match max_results {
        None => 20,
        Some(Ok(n)) if (1..=20).contains(&n) => n as usize,
        Some(Ok(n)) => {
            return Answer::Respond(validation(&format!(
                "maxResults {n} is not between 1 and 20"
            )));
        }
        Some(Err(raw)) => {
            return Answer::Respond(validation(&format!("maxResults {raw:?} is not a number")));
        }
    };
    let cursor = match next_token.map(parse_cursor) {
        None => None,
        Some(Some(cursor)) => Some(cursor),
        Some(None) => return Answer::Respond(validation("Invalid nextToken")),
    };
    if let Some(fault) = flow.and_then(|f| active_fault(shared, &f.faults, now)) {
        return fault;
    }
    let mut visible: Vec<((i64, String), Value)> = members
        .iter()
        .map(|&i| &scenario.executions[i])
        .filter_map(|e| {
            let described = describe_execution(shared, e, now)?;
            let start_ms = (described["startTime"].as_f64().unwrap_or(0.0) * 1000.0) as i64;
            Some(((start_ms, e.execution_id.clone()), described))
        })
        .collect();
    // Newest first.
    visible.sort_by(|a, b| b.0.cmp(&a.0));
    let after: Vec<_> = visible
        .into_iter()
        .filter(|(position, _)| cursor.as_ref().is_none_or(|c| position < c))
        .collect();
    let more = after.len() > page_size;
    let page: Vec<_> = after.into_iter().take(page_size).collect();
    let mut body = json!({
        "flowExecutions": page.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
    });
    if more && let Some((last, _)) = page.last() {
        body["nextToken"] = json!(cursor_token(last));
    }
    Answer::Respond(response(200, "application/json", body.to_string(), &[]))
}

/// A page cursor: the position of the last item returned, as an opaque-looking token.
fn cursor_token((start_ms, execution_id): &(i64, String)) -> String {
    let text = format!("{start_ms}/{execution_id}");
    let hex: String = text.bytes().map(|b| format!("{b:02x}")).collect();
    format!("v1.{hex}")
}

fn parse_cursor(token: &str) -> Option<(i64, String)> {
    let hex = token.strip_prefix("v1.")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    let (start, id) = text.split_once('/')?;
    Some((start.parse().ok()?, id.to_string()))
}

fn validation(message: &str) -> Response<Full<Bytes>> {
    error(400, "ValidationException", message, None)
}

enum Route {
    Get {
        instance_id: String,
        flow_name: String,
        execution_id: String,
    },
    List {
        instance_id: String,
        flow_name: String,
        /// `Err` holds a value that is not a number.
        max_results: Option<Result<u32, String>>,
        next_token: Option<String>,
    },
}

/// Splits `/api-data/data-integration/instance/{i}/data-integration-flows/{f}/executions[/{e}]`.
fn parse_route(path: &str, query: Option<&str>) -> Option<Route> {
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
        ] => Some(Route::Get {
            instance_id: percent_decode(i)?,
            flow_name: percent_decode(f)?,
            execution_id: percent_decode(e)?,
        }),
        [
            "api-data",
            "data-integration",
            "instance",
            i,
            "data-integration-flows",
            f,
            "executions",
        ] => {
            let mut max_results = None;
            let mut next_token = None;
            for pair in query
                .unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
            {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                let value = percent_decode(&value.replace('+', " "))?;
                match name {
                    "maxResults" => {
                        max_results = Some(value.parse::<u32>().map_err(|_| value.clone()));
                    }
                    "nextToken" => next_token = Some(value),
                    _ => {}
                }
            }
            Some(Route::List {
                instance_id: percent_decode(i)?,
                flow_name: percent_decode(f)?,
                max_results,
                next_token,
            })
        }
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

/// How [`generate`] draws the durations of executions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Durations {
    /// Every execution's duration is uniform in `[min, max]`, whatever its flow.
    Uniform { min: Duration, max: Duration },
    /// Each flow has a typical duration, uniform in `[min, max]`; each of its executions lasts
    /// that within ±`spread` (0.1 for ±10 %).
    PerFlow {
        min: Duration,
        max: Duration,
        spread: f64,
    },
}

/// A generated scenario: `count` executions spread over `flows` flows of one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub count: usize,
    pub flows: usize,
    pub seed: u64,
    pub durations: Durations,
    /// The share of executions that end FAILED, from 0 to 1.
    pub failed_share: f64,
    /// Executions start at a uniform offset in `[0, start_within]` from the fake's start.
    pub start_within: Duration,
}

/// The instance id of generated executions.
pub const GENERATED_INSTANCE: &str = "5eed0000-0000-4000-8000-000000000000";

/// Scripted executions drawn from `spec` with its seed: the same spec gives the same scenario.
pub fn generate(spec: &Generated) -> Vec<ScriptedExecution> {
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let flows = spec.flows.max(1);
    let uniform = |rng: &mut fastrand::Rng, min: Duration, max: Duration| {
        min + (max.saturating_sub(min)).mul_f64(rng.f64())
    };
    let typical: Vec<Duration> = (0..flows)
        .map(|_| match spec.durations {
            Durations::Uniform { min, max } | Durations::PerFlow { min, max, .. } => {
                uniform(&mut rng, min, max)
            }
        })
        .collect();
    (0..spec.count)
        .map(|n| {
            let flow = n % flows;
            let duration = match spec.durations {
                Durations::Uniform { min, max } => uniform(&mut rng, min, max),
                Durations::PerFlow { spread, .. } => {
                    typical[flow].mul_f64(1.0 + spread * (2.0 * rng.f64() - 1.0))
                }
            };
            let start = spec.start_within.mul_f64(rng.f64());
            let failed = rng.f64() < spec.failed_share;
            let end_status = if failed { "FAILED" } else { "SUCCEEDED" };
            ScriptedExecution {
                instance_id: GENERATED_INSTANCE.to_string(),
                flow_name: format!("flow-{flow:03}"),
                execution_id: format!("{:08x}-0000-4000-8000-{n:012x}", spec.seed as u32),
                timeline: vec![
                    Step {
                        at: start,
                        status: "IN_PROGRESS".to_string(),
                        message: None,
                    },
                    Step {
                        at: start + duration,
                        status: end_status.to_string(),
                        message: failed.then(|| format!("generated failure of execution {n}")),
                    },
                ],
                faults: Vec::new(),
                // As real runs carry them: the benchmark's memory figures include them.
                source: Some(FakeSource::S3 {
                    bucket_name: "aws-supply-chain-data-bench".to_string(),
                    key: format!("inbound/flow-{flow:03}/orders-{n:08}.csv"),
                }),
                diagnostic_reports_root_s3_uri: Some(format!(
                    "s3://aws-supply-chain-data-bench/diagnostics/flow-{flow:03}/{n:08}/"
                )),
                started_before: None,
                ran_for: None,
            }
        })
        .collect()
}

/// A scenario in TOML (see `config/demo/scenario.toml`).
pub fn parse_scenario(text: &str) -> Result<Scenario, String> {
    toml_edit::de::from_str(text).map_err(|e| e.to_string())
}
