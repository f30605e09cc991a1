//! The request pool: at most `max_in_flight` requests at once, each paced by the one global
//! [`RateLimiter`], each bounded in time. It sends what the engine takes off its queue and hands
//! back the answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::{Instant, sleep_until};

use crate::api::{ApiError, FlowExecutions, ListPage};
use crate::engine::pacing::RateLimiter;
use crate::engine::policy::RateFeedback;
use crate::model::{ExecutionKey, FlowKey, Observation};

/// What the engine's queue holds: a poll of one execution, or the next List page of one flow.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Job {
    Poll(ExecutionKey),
    Discover(FlowKey),
}

impl std::fmt::Display for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Poll(key) => write!(f, "poll of {key}"),
            Job::Discover(flow) => write!(f, "List of {flow}"),
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
    Poll(ExecutionKey, Result<Observation, ApiError>, Duration),
    List(FlowKey, Result<ListPage, ApiError>, Duration),
    /// The request's task ended abnormally (it does not by design); its job, when known, is
    /// retried later rather than forgotten.
    Lost(Option<Job>, String),
}

pub struct RequestPool<C> {
    client: Arc<C>,
    limiter: Arc<RateLimiter>,
    permits: Arc<Semaphore>,
    tasks: JoinSet<Answer>,
    jobs: HashMap<Id, Job>,
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
            tasks: JoinSet::new(),
            jobs: HashMap::new(),
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

    /// Sends `request` in the slot `turn` holds.
    pub fn send(&mut self, turn: Turn, request: Request) {
        let Turn(permit) = turn;
        let (client, hard_limit) = (self.client.clone(), self.hard_limit);
        let page_size = self.page_size;
        let (job, handle) = match request {
            Request::Get(key) => {
                let job = Job::Poll(key.clone());
                let handle = self.tasks.spawn(async move {
                    let _permit = permit;
                    let started = Instant::now();
                    let result = bounded(hard_limit, client.get(&key)).await;
                    Answer::Poll(key, result, started.elapsed())
                });
                (job, handle)
            }
            Request::List { flow, token } => {
                let job = Job::Discover(flow.clone());
                let handle = self.tasks.spawn(async move {
                    let _permit = permit;
                    let started = Instant::now();
                    let page = client.list(&flow, token.as_deref(), page_size);
                    let result = bounded(hard_limit, page).await;
                    Answer::List(flow, result, started.elapsed())
                });
                (job, handle)
            }
        };
        self.jobs.insert(handle.id(), job);
    }

    /// The next answer; `None` when nothing is in flight.
    pub async fn next(&mut self) -> Option<Answer> {
        let joined = self.tasks.join_next_with_id().await?;
        Some(self.answer(joined))
    }

    /// An answer that is already in, without waiting.
    pub fn ready(&mut self) -> Option<Answer> {
        let joined = self.tasks.try_join_next_with_id()?;
        Some(self.answer(joined))
    }

    fn answer(&mut self, joined: Result<(Id, Answer), JoinError>) -> Answer {
        match joined {
            Ok((id, answer)) => {
                self.jobs.remove(&id);
                answer
            }
            Err(e) => Answer::Lost(self.jobs.remove(&e.id()), e.to_string()),
        }
    }

    /// Cancels every request still in flight.
    pub async fn cancel_all(&mut self) {
        self.tasks.shutdown().await;
        self.jobs.clear();
    }

    pub fn in_flight(&self) -> usize {
        self.tasks.len()
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

async fn bounded<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or(Err(ApiError::Timeout))
}
