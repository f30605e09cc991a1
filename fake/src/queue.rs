//! A fast in-memory SQS queue for the benchmark's push rows, speaking the SQS JSON protocol for
//! the two calls flowwatch makes: ReceiveMessage (long poll, visibility timeout) and
//! DeleteMessageBatch. The fake publishes into it what an EventBridge rule's SQS target
//! receives: the raw envelope.
//!
//! The tests use moto's EventBridge and SQS instead, an independent implementation. moto's queue
//! costs time in proportion to the messages it holds (1,000 queued events took minutes to put
//! and take), so at thousands of executions it would measure moto, not flowwatch.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{lock, serve_http1};

/// How long a received message stays hidden unless deleted, as SQS's default.
const VISIBILITY: Duration = Duration::from_secs(30);
/// The largest request body read.
const MAX_REQUEST_BYTES: usize = 1 << 20;

#[derive(Default)]
struct Messages {
    visible: VecDeque<(String, String)>,
    /// By receipt handle: the message and when it shows again.
    in_flight: HashMap<String, ((String, String), Instant)>,
    next: u64,
}

struct Inner {
    messages: Mutex<Messages>,
    arrived: Notify,
    shutdown: CancellationToken,
}

/// A queue on a loopback port; stopped when dropped.
pub struct FakeQueue {
    addr: SocketAddr,
    inner: Arc<Inner>,
}

impl Drop for FakeQueue {
    fn drop(&mut self) {
        self.inner.shutdown.cancel();
    }
}

impl FakeQueue {
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            messages: Mutex::new(Messages::default()),
            arrived: Notify::new(),
            shutdown: CancellationToken::new(),
        });
        let served = inner.clone();
        tokio::spawn(serve_http1(listener, inner.shutdown.clone(), move || {
            let inner = served.clone();
            service_fn(move |req| {
                let inner = inner.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&inner, req).await) }
            })
        }));
        Ok(Self { addr, inner })
    }

    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn queue_url(&self) -> String {
        format!("{}/123456789012/flowwatch-events", self.endpoint_url())
    }

    /// A handle the fake's publisher sends with.
    pub fn sender(&self) -> QueueSender {
        QueueSender(self.inner.clone())
    }

    /// Messages waiting, and messages received but not deleted.
    pub fn depth(&self) -> (usize, usize) {
        let m = lock(&self.inner.messages);
        (m.visible.len(), m.in_flight.len())
    }
}

/// Sends messages into a [`FakeQueue`], as an EventBridge rule's SQS target does.
#[derive(Clone)]
pub struct QueueSender(Arc<Inner>);

impl QueueSender {
    pub fn send(&self, body: String) {
        let mut m = lock(&self.0.messages);
        m.next += 1;
        let id = format!("m-{}", m.next);
        m.visible.push_back((id, body));
        drop(m);
        self.0.arrived.notify_waiters();
    }
}

impl std::fmt::Debug for QueueSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueSender")
    }
}

async fn handle(inner: &Inner, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(body) => serde_json::from_slice::<Value>(&body.to_bytes()).unwrap_or(Value::Null),
        Err(_) => return error(StatusCode::BAD_REQUEST, "InvalidParameterValue"),
    };
    match target.as_str() {
        "AmazonSQS.ReceiveMessage" => receive(inner, &body).await,
        "AmazonSQS.DeleteMessageBatch" => delete_batch(inner, &body),
        _ => error(StatusCode::BAD_REQUEST, "UnsupportedOperation"),
    }
}

async fn receive(inner: &Inner, body: &Value) -> Response<Full<Bytes>> {
    let max = body["MaxNumberOfMessages"]
        .as_u64()
        .unwrap_or(1)
        .clamp(1, 10) as usize;
    let wait = Duration::from_secs(body["WaitTimeSeconds"].as_u64().unwrap_or(0).min(20));
    let deadline = Instant::now() + wait;
    loop {
        let arrived = inner.arrived.notified();
        let taken = take(inner, max);
        if !taken.is_empty() || Instant::now() >= deadline {
            return ok(json!({ "Messages": taken }));
        }
        tokio::select! {
            () = arrived => {}
            () = tokio::time::sleep_until(deadline) => {}
            () = inner.shutdown.cancelled() => return ok(json!({})),
        }
    }
}

/// Up to `max` visible messages, hidden for the visibility timeout; expired ones show again.
fn take(inner: &Inner, max: usize) -> Vec<Value> {
    let mut m = lock(&inner.messages);
    let now = Instant::now();
    let expired: Vec<String> = m
        .in_flight
        .iter()
        .filter(|(_, (_, until))| *until <= now)
        .map(|(receipt, _)| receipt.clone())
        .collect();
    for receipt in expired {
        if let Some((message, _)) = m.in_flight.remove(&receipt) {
            m.visible.push_back(message);
        }
    }
    let mut taken = Vec::new();
    while taken.len() < max {
        let Some((id, body)) = m.visible.pop_front() else {
            break;
        };
        m.next += 1;
        let receipt = format!("r-{}-{id}", m.next);
        taken.push(json!({ "MessageId": id, "ReceiptHandle": receipt, "Body": body }));
        m.in_flight.insert(receipt, ((id, body), now + VISIBILITY));
    }
    taken
}

fn delete_batch(inner: &Inner, body: &Value) -> Response<Full<Bytes>> {
    let mut m = lock(&inner.messages);
    let mut successful = Vec::new();
    let mut failed = Vec::new();
    for entry in body["Entries"].as_array().into_iter().flatten() {
        let receipt = entry["ReceiptHandle"].as_str().unwrap_or_default();
        if m.in_flight.remove(receipt).is_some() {
            successful.push(json!({ "Id": entry["Id"] }));
        } else {
            failed.push(
                json!({ "Id": entry["Id"], "Code": "ReceiptHandleIsInvalid", "SenderFault": true }),
            );
        }
    }
    ok(json!({ "Successful": successful, "Failed": failed }))
}

fn ok(body: Value) -> Response<Full<Bytes>> {
    respond(StatusCode::OK, body)
}

fn error(status: StatusCode, code: &str) -> Response<Full<Bytes>> {
    respond(
        status,
        json!({ "__type": format!("com.amazonaws.sqs#{code}"), "message": code }),
    )
}

fn respond(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-amz-json-1.0"),
    );
    response
}
