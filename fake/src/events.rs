//! Status-change events, as the real service publishes them: each scripted step of each
//! execution goes to EventBridge with PutEvents (AWS JSON 1.1, source `aws.supplychain`) at the
//! step's time. Loss, repeats and delay (so reordering) are scriptable, since EventBridge
//! delivers at least once and out of order.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::queue::QueueSender;
use crate::{FakeServer, ScriptedExecution, Shared, describe_execution, lock};

/// How the fake publishes events.
#[derive(Debug, Clone)]
pub struct EventPublishing {
    /// The EventBridge endpoint, `http://host:port` (moto's server in the tests).
    pub endpoint_url: String,
    pub region: String,
    pub account: String,
    /// The share of events never sent.
    pub drop: f64,
    /// The share of events sent twice.
    pub duplicate: f64,
    /// Each event is sent after a uniform delay up to this, so later changes can come first.
    pub max_delay: Duration,
    /// Send straight into this queue, as the rule's SQS target would, instead of through
    /// EventBridge (the benchmark; see [`crate::FakeQueue`]).
    pub queue: Option<QueueSender>,
}

impl EventPublishing {
    pub fn to(endpoint_url: &str) -> Self {
        Self {
            endpoint_url: endpoint_url.trim_end_matches('/').to_string(),
            region: "us-east-1".into(),
            account: "123456789012".into(),
            drop: 0.0,
            duplicate: 0.0,
            max_delay: Duration::ZERO,
            queue: None,
        }
    }

    /// Publishing straight into `queue`.
    pub fn into_queue(queue: QueueSender) -> Self {
        Self {
            queue: Some(queue),
            ..Self::to("http://unused")
        }
    }
}

/// What was published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    pub sent: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub failed: u64,
    /// Executions whose SUCCEEDED or FAILED event was dropped: only polling can find their end.
    pub ends_dropped: Vec<String>,
}

impl FakeServer {
    /// Publishes every step of the current script at its time (steps already past go at once),
    /// until all are sent. The task's result says what happened to them.
    pub fn publish_events(&self, publishing: EventPublishing) -> JoinHandle<Published> {
        let shared = self.shared.clone();
        tokio::spawn(async move { publish(shared, publishing).await })
    }
}

/// Entries one PutEvents call takes at most (EventBridge's limit).
const ENTRIES_PER_CALL: usize = 10;
/// PutEvents calls in flight at once.
const CALLS_IN_FLIGHT: usize = 8;

async fn publish(shared: Arc<Shared>, publishing: EventPublishing) -> Published {
    let mut due = planned(&shared, &publishing);
    due.sort_by_key(|(at, _)| *at);
    let mut published = Published::default();
    let mut due = due.into_iter().peekable();
    while let Some((at, first)) = due.next() {
        tokio::time::sleep_until(shared.started + at).await;
        // Everything due by now goes together, in calls of up to ten entries.
        let now = shared.started.elapsed();
        let mut batch = vec![first];
        while let Some((_, entry)) = due.next_if(|(at, _)| *at <= now) {
            batch.push(entry);
        }
        let changes = copies(&shared, &publishing, batch, &mut published);
        if let Some(queue) = &publishing.queue {
            for change in &changes {
                queue.send(envelope(&publishing, change).to_string());
            }
            published.sent += changes.len() as u64;
            continue;
        }
        let entries: Vec<Value> = changes.iter().map(put_entry).collect();
        let calls: Vec<_> = entries
            .chunks(ENTRIES_PER_CALL)
            .map(|chunk| {
                let (publishing, chunk) = (publishing.clone(), chunk.to_vec());
                async move { put_events(&publishing, &chunk).await }
            })
            .collect();
        let mut calls = futures_util::stream::iter(calls).buffer_unordered(CALLS_IN_FLIGHT);
        while let Some((sent, failed)) = calls.next().await {
            published.sent += sent;
            published.failed += failed;
        }
    }
    published
}

/// One status change to publish: the event's `detail`, and when it happened.
#[derive(Clone)]
struct Change {
    detail: Value,
    at: SystemTime,
}

/// The changes to send, after the scripted loss and repeats.
fn copies(
    shared: &Shared,
    publishing: &EventPublishing,
    batch: Vec<Change>,
    published: &mut Published,
) -> Vec<Change> {
    let mut rng = lock(&shared.rng);
    let mut changes = Vec::with_capacity(batch.len());
    for change in batch {
        if rng.f64() < publishing.drop {
            published.dropped += 1;
            let detail = &change.detail;
            if matches!(detail["status"].as_str(), Some("SUCCEEDED" | "FAILED")) {
                let id = detail["flowExecutionId"].as_str().unwrap_or_default();
                published.ends_dropped.push(id.to_string());
            }
            continue;
        }
        if rng.f64() < publishing.duplicate {
            published.duplicated += 1;
            changes.push(change.clone());
        }
        changes.push(change);
    }
    changes
}

/// Every step of every execution, as a change, with the time to send it.
fn planned(shared: &Shared, publishing: &EventPublishing) -> Vec<(Duration, Change)> {
    let scripts: Vec<ScriptedExecution> = lock(&shared.scenario).scenario.executions.clone();
    let mut rng = lock(&shared.rng);
    let mut due = Vec::new();
    for script in &scripts {
        for step in &script.timeline {
            let Some(execution) = describe_execution(shared, script, step.at) else {
                continue;
            };
            let delay = publishing.max_delay.mul_f64(rng.f64());
            let change = Change {
                detail: detail(publishing, &execution),
                at: shared.started_wall + step.at,
            };
            due.push((step.at + delay, change));
        }
    }
    due
}

/// The `detail` the service sends for one execution's wire form.
fn detail(publishing: &EventPublishing, execution: &Value) -> Value {
    let iso = |v: &Value| {
        v.as_f64()
            .map(|secs| {
                let t = UNIX_EPOCH + Duration::from_secs_f64(secs.max(0.0));
                humantime::format_rfc3339_seconds(t).to_string()
            })
            .unwrap_or_default()
    };
    let source = &execution["sourceInfo"];
    let mut detail = json!({
        "version": "1.0",
        "instanceId": execution["instanceId"],
        "flowArn": format!(
            "arn:aws:scn:{}:{}:instance/{}/data-integration-flows/{}",
            publishing.region,
            publishing.account,
            execution["instanceId"].as_str().unwrap_or_default(),
            execution["flowName"].as_str().unwrap_or_default()
        ),
        "flowExecutionId": execution["executionId"],
        "status": execution["status"],
        "startTime": iso(&execution["startTime"]),
        "endTime": iso(&execution["endTime"]),
        "message": execution["message"].as_str().unwrap_or_default(),
        "sourceType": source["sourceType"].as_str().unwrap_or_default(),
    });
    if let Some(s3) = source.get("s3Source") {
        detail["sourceInfo"] = json!({ "s3Source": s3 });
    }
    if let Some(dataset) = source.get("datasetSource") {
        detail["sourceInfo"] = json!({ "datasetSource": dataset });
    }
    detail
}

const SOURCE: &str = "aws.supplychain";
const DETAIL_TYPE: &str = "AWS Supply Chain Data Integration Status Change";

/// The PutEvents entry of a change.
fn put_entry(change: &Change) -> Value {
    json!({
        "Source": SOURCE,
        "DetailType": DETAIL_TYPE,
        "Detail": change.detail.to_string(),
        "Resources": [],
        "Time": change.at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    })
}

/// The EventBridge envelope of a change, as the rule's SQS target receives it.
fn envelope(publishing: &EventPublishing, change: &Change) -> Value {
    let detail = &change.detail;
    let text = |field: &str| detail[field].as_str().unwrap_or_default().to_string();
    json!({
        "version": "0",
        "id": format!("{}-{}", text("flowExecutionId"), text("status")),
        "detail-type": DETAIL_TYPE,
        "source": SOURCE,
        "account": publishing.account,
        "time": humantime::format_rfc3339_seconds(change.at).to_string(),
        "region": publishing.region,
        "resources": [],
        "detail": detail,
    })
}

/// One PutEvents call; returns how many entries were sent and how many failed.
async fn put_events(publishing: &EventPublishing, entries: &[Value]) -> (u64, u64) {
    let answer = aws_json(
        &publishing.endpoint_url,
        &publishing.region,
        "events",
        "AWSEvents.PutEvents",
        &json!({ "Entries": entries }),
    )
    .await;
    let total = entries.len() as u64;
    match answer.map(|a| a["FailedEntryCount"].as_u64()) {
        Ok(Some(failed)) => (total - failed.min(total), failed.min(total)),
        _ => (0, total),
    }
}

/// One call of an AWS JSON protocol (`target` as `Service.Operation`: `AWSEvents.PutRule`,
/// `AmazonSQS.CreateQueue`) over a fresh HTTP/1.1 connection, signed with a placeholder that
/// a local implementation such as moto accepts. Returns the answer's JSON, or the error.
pub async fn aws_json(
    endpoint_url: &str,
    region: &str,
    service: &str,
    target: &str,
    body: &Value,
) -> Result<Value, String> {
    let version = if matches!(service, "sqs" | "dynamodb") {
        "1.0"
    } else {
        "1.1"
    };
    let request = Request::post("/")
        .header("content-type", format!("application/x-amz-json-{version}"))
        .header("x-amz-target", target);
    let bytes = post(endpoint_url, region, service, request, body.to_string())
        .await
        .map_err(|e| format!("{target} {e}"))?;
    Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// One call of an AWS query protocol (IAM, STS: `Action=CreateUser&…`), as [`aws_json`] makes
/// its calls. Returns the answer's XML, or the error.
pub async fn aws_query(
    endpoint_url: &str,
    region: &str,
    service: &str,
    params: &[(&str, &str)],
) -> Result<String, String> {
    let body: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", form_encoded(k), form_encoded(v)))
        .collect();
    let request = Request::post("/").header("content-type", "application/x-www-form-urlencoded");
    let bytes = post(endpoint_url, region, service, request, body.join("&")).await?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `text` percent-encoded for a form body or a URL's query: every byte but the unreserved ones
/// as `%XX`.
pub fn form_encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// POSTs `body` with the placeholder signature for `service` in `region`; the answer's bytes
/// when it is a success.
async fn post(
    endpoint_url: &str,
    region: &str,
    service: &str,
    request: hyper::http::request::Builder,
    body: String,
) -> Result<Bytes, String> {
    let authority = endpoint_url
        .split("://")
        .nth(1)
        .ok_or("the endpoint is not a URL")?
        .trim_end_matches('/')
        .to_string();
    let stream = TcpStream::connect(&authority)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let day: String = date.chars().filter(char::is_ascii_digit).take(8).collect();
    let request = request
        .header("host", &authority)
        .header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential=AKIDFAKE/{day}/{region}/{service}/aws4_request, SignedHeaders=host, Signature=0"
            ),
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status.is_success() {
        Ok(bytes)
    } else {
        Err(format!(
            "answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        ))
    }
}
