//! [`Scripted`]: an in-memory [`FlowExecutions`] whose answers each test scripts, and which
//! records every call with the (paused) time it was made.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::api::{ApiError, FlowExecutions, ListPage};
use crate::model::{ApiStatus, ExecutionKey, FlowKey, Observation};

/// A call the engine made: a Get of an execution or a List page of a flow (with its token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Get(ExecutionKey),
    List(FlowKey, Option<String>),
}

/// Scripted answers, per execution and per flow. Each call takes the next answer; the last one
/// repeats. An execution or flow with no script is not found.
#[derive(Default)]
pub struct Scripted {
    script: Mutex<Script>,
}

#[derive(Default)]
struct Script {
    gets: HashMap<ExecutionKey, VecDeque<Result<Observation, ApiError>>>,
    lists: HashMap<FlowKey, VecDeque<Result<ListPage, ApiError>>>,
    calls: Vec<(Instant, Call)>,
}

impl Scripted {
    /// Adds answers to `key`'s Gets, after those already scripted.
    pub fn gets(
        &self,
        key: &ExecutionKey,
        answers: impl IntoIterator<Item = Result<Observation, ApiError>>,
    ) {
        let mut script = self.lock();
        script.gets.entry(key.clone()).or_default().extend(answers);
    }

    /// Adds pages to `flow`'s Lists, after those already scripted.
    pub fn lists(
        &self,
        flow: &FlowKey,
        pages: impl IntoIterator<Item = Result<ListPage, ApiError>>,
    ) {
        self.lock()
            .lists
            .entry(flow.clone())
            .or_default()
            .extend(pages);
    }

    /// Every call so far, with when it was made.
    pub fn calls(&self) -> Vec<(Instant, Call)> {
        self.lock().calls.clone()
    }

    /// When `key` was polled since `start`, as offsets from it.
    pub fn gets_of(&self, key: &ExecutionKey, start: Instant) -> Vec<Duration> {
        self.calls()
            .into_iter()
            .filter(|(at, call)| *at >= start && *call == Call::Get(key.clone()))
            .map(|(at, _)| at - start)
            .collect()
    }

    /// The Lists of `flow` since `start`: when, and with which token.
    pub fn lists_of(&self, flow: &FlowKey, start: Instant) -> Vec<(Duration, Option<String>)> {
        self.calls()
            .into_iter()
            .filter_map(|(at, call)| match call {
                Call::List(f, token) if f == *flow && at >= start => Some((at - start, token)),
                _ => None,
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Takes the next answer of `queue`, leaving the last one in place to repeat.
fn next<T: Clone>(queue: Option<&mut VecDeque<T>>) -> Option<T> {
    let queue = queue?;
    if queue.len() > 1 {
        queue.pop_front()
    } else {
        queue.front().cloned()
    }
}

impl FlowExecutions for Scripted {
    async fn get(&self, key: &ExecutionKey) -> Result<Observation, ApiError> {
        let mut script = self.lock();
        script.calls.push((Instant::now(), Call::Get(key.clone())));
        next(script.gets.get_mut(key)).unwrap_or_else(|| Err(not_found()))
    }

    async fn list(
        &self,
        flow: &FlowKey,
        next_token: Option<&str>,
        _page_size: i32,
    ) -> Result<ListPage, ApiError> {
        let mut script = self.lock();
        let call = Call::List(flow.clone(), next_token.map(str::to_string));
        script.calls.push((Instant::now(), call));
        next(script.lists.get_mut(flow)).unwrap_or_else(|| Err(not_found()))
    }
}

pub fn not_found() -> ApiError {
    ApiError::NotFound {
        message: "execution not found".into(),
    }
}

pub fn throttled() -> ApiError {
    ApiError::Throttled {
        message: "Rate exceeded".into(),
        retry_after: None,
    }
}

/// An observation of a run that started at `start` (seconds since the epoch).
pub fn running(start: f64) -> Result<Observation, ApiError> {
    Ok(observation(ApiStatus::InProgress, Some(start), None))
}

pub fn succeeded(start: f64, end: f64) -> Result<Observation, ApiError> {
    Ok(observation(ApiStatus::Succeeded, Some(start), Some(end)))
}

pub fn failed(start: f64, end: f64) -> Result<Observation, ApiError> {
    let mut o = observation(ApiStatus::Failed, Some(start), Some(end));
    o.message = Some("column order_id is missing".into());
    Ok(o)
}

pub fn observation(status: ApiStatus, start: Option<f64>, end: Option<f64>) -> Observation {
    Observation {
        status,
        source_info: None,
        message: None,
        start_time: start,
        end_time: end,
        diagnostic_reports_root_s3_uri: None,
    }
}
