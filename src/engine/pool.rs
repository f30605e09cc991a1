//! The request pool: at most `max_in_flight` requests at once, each paced by the one global
//! [`RateLimiter`], each bounded in time. It sends what the engine takes off its queue and hands
//! back the answers.
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
use tokio::time::{Instant, sleep_until};

use crate::api::{ApiError, FlowExecutions, ListPage};
use crate::engine::pacing::RateLimiter;
use crate::engine::policy::RateFeedback;
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
    limiter: Arc<RateLimiter>,
    permits: Arc<Semaphore>,
    requests: FuturesUnordered<InFlight>,
    /// A safety net over the SDK's own timeout: a request can never hang the pool.
    hard_limit: Duration,
    page_size: i32,
}

impl<C: FlowExecutions> RequestPool<C> {
    pub fn new(
        client: Arc<C>,
        max_rate: f64,
        max_in_flight: usize,
        request_timeout: Duration,
        page_size: i32,
    ) -> Self {
        Self {
            client,
            limiter: Arc::new(RateLimiter::new(max_rate)),
            permits: Arc::new(Semaphore::new(max_in_flight)),
            requests: FuturesUnordered::new(),
            hard_limit: request_timeout + Duration::from_secs(1),
            page_size,
        }
    }

    /// Resolves when `due` has come, a request slot is free and the rate limiter gives a token.
    /// Cancel-safe: nothing is taken unless it resolves.
    pub fn turn(&self, due: Option<Instant>) -> impl Future<Output = Option<Turn>> + 'static {
        let (permits, limiter) = (self.permits.clone(), self.limiter.clone());
        async move {
            sleep_until(due?).await;
            let permit = permits.acquire_owned().await.ok()?;
            limiter.acquire().await;
            Some(Turn(permit))
        }
    }

    /// A request slot and a rate token, when both are free now.
    pub fn try_turn(&self) -> Option<Turn> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        self.limiter.try_acquire().then_some(Turn(permit))
    }

    /// Sends `request` in the slot `turn` holds.
    pub fn send(&mut self, turn: Turn, request: Request) {
        let Turn(permit) = turn;
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

    /// The global rate, in requests per second.
    pub fn rate(&self) -> f64 {
        self.limiter.rate()
    }

    /// Adjusts the global rate to what an answer says; returns the new rate when it changed.
    pub fn feedback(&self, feedback: RateFeedback) -> Option<f64> {
        let before = self.limiter.rate();
        match feedback {
            RateFeedback::Cut { retry_after } => self.limiter.on_throttle(retry_after),
            RateFeedback::Restore => self.limiter.on_success(),
            RateFeedback::Keep => {}
        }
        let after = self.limiter.rate();
        (after != before).then_some(after)
    }
}

/// A request slot and a rate token, ready to send one request.
pub struct Turn(OwnedSemaphorePermit);

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
