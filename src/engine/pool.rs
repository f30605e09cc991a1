//! The request pool: at most `max_in_flight` requests at once, whatever their budget, each
//! bounded in time. It sends what the engine takes off its queues and hands back the answers.
//!
//! The requests are futures the engine's own task polls, not tasks of their own: an answer wakes
//! the engine directly instead of waking a request task that then wakes the engine, and no task
//! is spawned per request. A request that panics (none does by design) becomes an
//! [`Answer::Lost`] instead of taking the engine down.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::api::{ApiError, FlowExecutions, ListPage};
use crate::model::{ExecutionKey, FlowKey, Observation};

/// What the engine's queue holds: a Get of one execution (a poll), or the next List page of one
/// flow. The same two words name the [`Request`] sent and the [`Answer`] it brings back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Job {
    Get(ExecutionKey),
    List(FlowKey),
}

impl std::fmt::Display for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Get(key) => write!(f, "poll of {key}"),
            Job::List(flow) => write!(f, "List of {flow}"),
        }
    }
}

/// A request to send.
pub enum Request {
    Get(ExecutionKey),
    List {
        flow: FlowKey,
        token: Option<String>,
    },
}

/// What a request brought back, with how long it took.
pub enum Answer {
    Get(ExecutionKey, Result<Observation, ApiError>, Duration),
    List(FlowKey, Result<ListPage, ApiError>, Duration),
    /// The request panicked (it does not by design); its job is retried later rather than
    /// forgotten.
    Lost(Job, String),
}

type InFlight = Pin<Box<dyn Future<Output = Answer> + Send>>;

pub struct RequestPool<C> {
    client: Arc<C>,
    permits: Arc<Semaphore>,
    requests: FuturesUnordered<InFlight>,
    /// A safety net over the SDK's own timeout: a request can never hang the pool.
    hard_limit: Duration,
    page_size: i32,
}

impl<C: FlowExecutions> RequestPool<C> {
    pub fn new(
        client: Arc<C>,
        max_in_flight: usize,
        request_timeout: Duration,
        page_size: i32,
    ) -> Self {
        Self {
            client,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            requests: FuturesUnordered::new(),
            hard_limit: request_timeout + Duration::from_secs(1),
            page_size,
        }
    }

    /// The request slots, to wait for one.
    pub fn permits(&self) -> Arc<Semaphore> {
        self.permits.clone()
    }

    /// A request slot, when one is free now.
    pub fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Sends `request` in the slot `turn` holds.
    pub fn send(&mut self, turn: Turn, request: Request) {
        let Turn { permit, .. } = turn;
        let (client, hard_limit) = (self.client.clone(), self.hard_limit);
        let page_size = self.page_size;
        let (job, call): (Job, InFlight) = match request {
            Request::Get(key) => (
                Job::Get(key.clone()),
                Box::pin(async move {
                    let _permit = permit;
                    let started = Instant::now();
                    let result = bounded(hard_limit, client.get(&key)).await;
                    Answer::Get(key, result, started.elapsed())
                }),
            ),
            Request::List { flow, token } => (
                Job::List(flow.clone()),
                Box::pin(async move {
                    let _permit = permit;
                    let started = Instant::now();
                    let page = client.list(&flow, token.as_deref(), page_size);
                    let result = bounded(hard_limit, page).await;
                    Answer::List(flow, result, started.elapsed())
                }),
            ),
        };
        let guarded = AssertUnwindSafe(call).catch_unwind().map(move |answer| {
            answer.unwrap_or_else(|panic| Answer::Lost(job, panic_text(&*panic)))
        });
        self.requests.push(Box::pin(guarded));
    }

    /// The next answer; `None` when nothing is in flight.
    pub async fn next(&mut self) -> Option<Answer> {
        self.requests.next().await
    }

    /// An answer that is already in, without waiting.
    pub fn ready(&mut self) -> Option<Answer> {
        self.requests.next().now_or_never().flatten()
    }

    /// Cancels every request still in flight.
    pub fn cancel_all(&mut self) {
        self.requests.clear();
    }

    pub fn in_flight(&self) -> usize {
        self.requests.len()
    }
}

/// A request slot and a rate token of one budget, ready to send that budget's next request.
pub struct Turn {
    permit: OwnedSemaphorePermit,
    budget: usize,
}

impl Turn {
    pub fn new(permit: OwnedSemaphorePermit, budget: usize) -> Self {
        Self { permit, budget }
    }

    /// The budget whose token this is: its head job goes.
    pub fn budget(&self) -> usize {
        self.budget
    }
}

fn panic_text(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a request panicked".to_string())
}

async fn bounded<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or(Err(ApiError::Timeout))
}
