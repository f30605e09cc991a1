//! What the engine hands out about itself: typed copies of its state, taken on the engine's task
//! and turned into JSON or HTML by the server, off it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::model::{FlowKey, Observation, ObservedVia, Outcome, Status, WatchEntry};

/// Which executions one `/status` document lists: those of `flow` (all when `None`), from the
/// `offset`-th, at most `limit` of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusQuery {
    pub flow: Option<FlowKey>,
    pub offset: usize,
    pub limit: usize,
}

impl StatusQuery {
    /// Executions per document unless `limit` says otherwise.
    pub const DEFAULT_LIMIT: usize = 1000;
    /// The most executions one document lists.
    pub const MAX_LIMIT: usize = 10_000;
}

/// The `/status` document: the counts and flows, and the executions the query selected.
#[derive(Debug, Clone)]
pub struct StatusView {
    pub watched: usize,
    pub flows: Vec<FlowView>,
    /// Every status, with how many watched executions have it (zero included).
    pub by_status: BTreeMap<Status, i64>,
    pub in_flight: usize,
    pub rate_limit_requests_per_second: f64,
    /// How many executions the query matches, of which `executions` are the selected slice.
    pub executions_total: usize,
    pub offset: usize,
    pub limit: usize,
    pub next_offset: Option<usize>,
    pub push: Option<PushView>,
    /// Every Supply Chain instance of the watchlist, with where its calls go and whether they
    /// get through.
    pub instances: Vec<InstanceView>,
    pub executions: Vec<ExecutionView>,
}

impl StatusView {
    /// The document of a replica that watches nothing (a standby).
    pub fn nothing_watched(query: &StatusQuery) -> Self {
        Self {
            watched: 0,
            flows: Vec::new(),
            by_status: crate::model::Status::ALL
                .into_iter()
                .map(|s| (s, 0))
                .collect(),
            in_flight: 0,
            rate_limit_requests_per_second: 0.0,
            executions_total: 0,
            offset: query.offset,
            limit: query.limit,
            next_offset: None,
            push: None,
            instances: Vec::new(),
            executions: Vec::new(),
        }
    }
}

/// What `/status` shows of one Supply Chain instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceView {
    pub instance_id: String,
    pub region: String,
    /// `""`: the base credentials' account.
    pub account_id: String,
    pub up: bool,
    /// Why it is down, in the SDK's (or STS's) words; empty while it is up.
    pub reason: String,
}

/// What `/status` shows of one execution.
#[derive(Debug, Clone)]
pub struct ExecutionView {
    pub entry: WatchEntry,
    pub status: Status,
    pub discovered: bool,
    pub observed_via: Option<ObservedVia>,
    pub polling: bool,
    pub attempts: u64,
    pub last_poll: Option<SystemTime>,
    pub next_poll: Option<SystemTime>,
    pub last_outcome: Option<Outcome>,
    pub last_error: Option<String>,
    pub rejected: Option<String>,
    /// Its series are still exported (`retain_terminal` is not over).
    pub retained: bool,
    pub observation: Option<Observation>,
    pub expected_end: Option<f64>,
    pub overdue: bool,
}

/// What `/status` shows of one watched flow (`[[flow]]`).
#[derive(Debug, Clone)]
pub struct FlowView {
    pub key: FlowKey,
    pub since: Option<Duration>,
    /// Executions that started before this are history.
    pub window_start: SystemTime,
    pub labels: BTreeMap<String, String>,
    pub discovered: u64,
    pub watched_executions: usize,
    pub flow_not_found: bool,
    pub round_in_progress: bool,
    pub last_round_pages: u32,
    pub resume_token_pending: bool,
    pub last_success: Option<SystemTime>,
    pub next_round: Option<SystemTime>,
    pub last_outcome: Option<Outcome>,
    pub last_error: Option<String>,
}

/// What `/status` shows of push.
#[derive(Debug, Clone)]
pub struct PushView {
    /// The queue's URL without credentials.
    pub queue_url: String,
    pub healthy: bool,
    pub reason: Option<String>,
    pub reconcile_interval: Duration,
    pub fetch_details: bool,
}

/// What a watchlist replacement changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReloadSummary {
    pub added: usize,
    pub removed: usize,
    pub kept: usize,
}
