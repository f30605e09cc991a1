//! The scheduler: a due-time queue with one slot per execution and per watched flow, and a
//! bounded pool of in-flight requests, all paced by the global rate limiter. It owns every
//! [`ExecutionState`] and [`FlowWatch`], turns API answers into transitions, adds what discovery
//! finds to the watch set, and writes transitions to metrics and event sinks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::{Id, JoinSet};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::api::{ApiError, FlowExecutions, ListPage};
use crate::engine::discovery::{FlowWatch, Listed, Next, classify_listed};
use crate::engine::forecast::{Forecast, Plan};
use crate::engine::pacing::{BackoffPolicy, RateLimiter, startup_offset};
use crate::engine::state::{ExecutionState, count_by_status, not_found_for};
use crate::input::config::{DiscoverySettings, PollingSettings};
use crate::input::watchlist::Watchlist;
use crate::model::{
    ExecutionKey, FlowEntry, FlowKey, Observation, Operation, Outcome, Status, Transition,
    WatchEntry, unix_seconds,
};
use crate::output::events::{Sinks, rejected_event};
use crate::output::health::{HEARTBEAT, Health};
use crate::output::metrics::Metrics;
use crate::output::store::Store;
use crate::systemd::Watchdog;

/// Requests to the scheduler from the HTTP server and signal handlers.
#[derive(Debug)]
pub enum Command {
    /// The `/status` document.
    Status(oneshot::Sender<Value>),
    /// Replace the watchlist: entries that stay keep their state and schedule.
    Replace(Watchlist, oneshot::Sender<ReloadSummary>),
}

/// What a watchlist replacement changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReloadSummary {
    pub added: usize,
    pub removed: usize,
    pub kept: usize,
}

/// Why the scheduler stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The shutdown token was cancelled.
    Shutdown,
    /// Every execution is terminal (only with `exit_when_done`); `failed` if any is FAILED,
    /// NOT_FOUND or rejected.
    AllDone { failed: bool },
}

/// What the queue holds: a poll of one execution, or the next List page of one flow.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Job {
    Poll(ExecutionKey),
    Discover(FlowKey),
}

/// What a request task brings back.
enum Answer {
    Poll(ExecutionKey, Result<Observation, ApiError>),
    List(FlowKey, Result<ListPage, ApiError>),
}

type TaskResult = (Answer, Duration);

/// A flow the API says does not exist is asked again this many discovery intervals later.
const NOT_FOUND_INTERVALS: u32 = 10;

/// The API lists a year of executions; what is known of older ones can go.
const LISTED_HISTORY: Duration = Duration::from_secs(366 * 24 * 3600);

pub struct Scheduler<C> {
    client: Arc<C>,
    polling: PollingSettings,
    discovery: DiscoverySettings,
    policy: BackoffPolicy,
    limiter: Arc<RateLimiter>,
    permits: Arc<Semaphore>,
    /// Boxed: the map's nodes stay small (a B-tree leaf holds eleven entries, often half used).
    executions: BTreeMap<ExecutionKey, Box<ExecutionState>>,
    flows: BTreeMap<FlowKey, FlowWatch>,
    due: BTreeMap<(Instant, u64), Job>,
    series_drops: BTreeMap<(Instant, u64), ExecutionKey>,
    series_dropped: HashSet<ExecutionKey>,
    seq: u64,
    tasks: JoinSet<TaskResult>,
    task_jobs: HashMap<Id, Job>,
    metrics: Arc<Metrics>,
    sinks: Sinks,
    health: Arc<Health>,
    rng: fastrand::Rng,
    exit_when_done: bool,
    watchdog: Watchdog,
    store: Store,
    store_error: Option<String>,
    redeliver_after: Option<Instant>,
    forecast: Forecast,
}

/// How soon delivery is tried again after a sink failed.
const REDELIVERY_INTERVAL: Duration = Duration::from_secs(5);

/// Where the scheduler's results go: metrics, event sinks, health, and the durable store.
pub struct Outputs {
    pub metrics: Arc<Metrics>,
    pub sinks: Sinks,
    pub health: Arc<Health>,
    pub store: Store,
}

impl<C: FlowExecutions> Scheduler<C> {
    pub fn new(
        client: Arc<C>,
        polling: PollingSettings,
        discovery: DiscoverySettings,
        watchlist: Watchlist,
        outputs: Outputs,
        exit_when_done: bool,
    ) -> Self {
        let Outputs {
            metrics,
            sinks,
            health,
            store,
        } = outputs;
        let limiter = Arc::new(RateLimiter::new(polling.max_requests_per_second));
        metrics.rate_limit.set(limiter.rate());
        let mut scheduler = Self {
            client,
            policy: BackoffPolicy::from_settings(&polling),
            permits: Arc::new(Semaphore::new(polling.max_in_flight)),
            polling,
            discovery,
            limiter,
            executions: BTreeMap::new(),
            flows: BTreeMap::new(),
            due: BTreeMap::new(),
            series_drops: BTreeMap::new(),
            series_dropped: HashSet::new(),
            seq: 0,
            tasks: JoinSet::new(),
            task_jobs: HashMap::new(),
            metrics,
            sinks,
            health,
            rng: fastrand::Rng::new(),
            exit_when_done,
            watchdog: Watchdog::from_env(),
            store,
            store_error: None,
            redeliver_after: None,
            forecast: Forecast::default(),
        };
        scheduler.restore_counters();
        scheduler.replace(watchlist);
        scheduler
    }

    /// Brings `flowwatch_transitions_total` back to the stored counts, so `increase()` keeps
    /// working across a restart: the series come back at their old values, not at 0.
    fn restore_counters(&mut self) {
        match self.store.transition_counts() {
            Ok(counts) => {
                for (instance_id, flow_name, to_status, count) in counts {
                    self.metrics
                        .transitions
                        .with_label_values(&[&instance_id, &flow_name, &to_status])
                        .inc_by(count);
                }
            }
            Err(e) => self.store_failed(&e),
        }
    }

    /// Runs until `shutdown` is cancelled, or until every execution is terminal when
    /// `exit_when_done` is set.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) -> Finish {
        self.deliver_pending();
        self.health.set_state_restored();
        // The loop turns at least every half ping period, so a ping is never later than 1.5
        // periods (three quarters of WATCHDOG_USEC), even when a tick lands just short of one.
        let beat = self
            .watchdog
            .period()
            .map_or(HEARTBEAT, |p| (p / 2).min(HEARTBEAT));
        let mut heartbeat = tokio::time::interval(beat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let finish = loop {
            self.health.beat();
            self.watchdog.tick();
            self.health
                .set_polling(!self.due.is_empty() || !self.tasks.is_empty());
            if self.exit_when_done && self.tasks.is_empty() && self.all_done() {
                break Finish::AllDone {
                    failed: self.any_failed(),
                };
            }
            let next_due = self.due.first_key_value().map(|(slot, _)| slot.0);
            self.metrics.schedule_lag.set(next_due.map_or(0.0, |at| {
                Instant::now().saturating_duration_since(at).as_secs_f64()
            }));
            let next_drop = self.series_drops.first_key_value().map(|(slot, _)| slot.0);
            let dispatch = wait_for_turn(next_due, self.permits.clone(), self.limiter.clone());
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break Finish::Shutdown,
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.on_joined(joined);
                }
                Some(command) = commands.recv() => self.on_command(command),
                Some(permit) = dispatch, if next_due.is_some() => self.dispatch(permit),
                () = sleep_until(next_drop.unwrap_or_else(Instant::now)), if next_drop.is_some() => {
                    self.drop_expired_series();
                }
                _ = heartbeat.tick() => {
                    if self.redeliver_after.is_some_and(|t| t <= Instant::now()) {
                        self.deliver_pending();
                    }
                }
            }
        };
        self.drain().await;
        finish
    }

    /// Every execution is terminal, and no flow is watched (flows never end).
    fn all_done(&self) -> bool {
        self.flows.is_empty() && self.executions.values().all(|s| s.is_done())
    }

    fn any_failed(&self) -> bool {
        self.executions
            .values()
            .any(|s| matches!(s.status, Status::Failed | Status::NotFound) || s.rejected.is_some())
    }

    /// Lets in-flight requests finish for a bounded time so their transitions are not lost,
    /// then cancels the rest and flushes the sinks.
    async fn drain(&mut self) {
        self.health.set_stopped();
        let bound = self.polling.request_timeout.min(Duration::from_secs(5));
        let deadline = Instant::now() + bound;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(Some(joined)) => self.on_joined(joined),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        in_flight = self.tasks.len(),
                        "cancelling requests still in flight at shutdown"
                    );
                    self.tasks.shutdown().await;
                    break;
                }
            }
        }
        self.sinks.flush();
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let _ = reply.send(self.status_document());
            }
            Command::Replace(watchlist, reply) => {
                let summary = self.replace(watchlist);
                let _ = reply.send(summary);
            }
        }
    }

    /// Installs a new watchlist. New entries' first polls are spread over `initial_interval`.
    /// Discovered executions stay while their flow does.
    fn replace(&mut self, watchlist: Watchlist) -> ReloadSummary {
        let now = Instant::now();
        let wanted: HashSet<&ExecutionKey> = watchlist.entries.iter().map(|e| &e.key).collect();
        let wanted_flows: HashSet<&FlowKey> = watchlist.flows.iter().map(|f| &f.key).collect();
        let removed: Vec<ExecutionKey> = self
            .executions
            .iter()
            .filter(|(k, s)| {
                let listed = wanted.contains(k);
                let flow_stays = s.discovered && wanted_flows.contains(&FlowKey::of(k));
                !(listed || flow_stays)
            })
            .map(|(k, _)| k.clone())
            .collect();
        if !removed.is_empty() {
            let gone: HashSet<&ExecutionKey> = removed.iter().collect();
            self.series_drops.retain(|_, k| !gone.contains(k));
        }
        for key in &removed {
            self.forget_execution(key);
        }
        let removed_flows: Vec<FlowKey> = self
            .flows
            .keys()
            .filter(|k| !wanted_flows.contains(k))
            .cloned()
            .collect();
        for key in &removed_flows {
            self.unschedule(&Job::Discover(key.clone()));
            self.flows.remove(key);
            self.metrics
                .drop_discovered_flow(&key.instance_id, &key.flow_name);
            if let Err(e) = self.store.forget_flow(key) {
                self.store_failed(&e);
            }
            tracing::info!(flow = %key, "flow no longer watched: its discovered executions left the watch set");
        }
        let mut summary = ReloadSummary {
            removed: removed.len(),
            ..ReloadSummary::default()
        };
        let new_count = watchlist
            .entries
            .iter()
            .filter(|e| !self.executions.contains_key(&e.key))
            .count();
        let mut index = 0;
        for entry in watchlist.entries {
            if let Some(state) = self.executions.get_mut(&entry.key) {
                state.entry.labels = entry.labels;
                state.discovered = false;
                summary.kept += 1;
                continue;
            }
            let offset = startup_offset(index, new_count, self.polling.initial_interval);
            if self.restore_execution(entry, false, now + offset) {
                index += 1;
            }
            summary.added += 1;
        }
        let flow_count = watchlist
            .flows
            .iter()
            .filter(|f| !self.flows.contains_key(&f.key))
            .count();
        for (i, entry) in watchlist.flows.into_iter().enumerate() {
            if let Some(flow) = self.flows.get_mut(&entry.key) {
                if flow.entry.labels != entry.labels {
                    for state in self.executions.values_mut() {
                        if state.discovered && FlowKey::of(&state.entry.key) == entry.key {
                            state.entry.labels = entry.labels.clone();
                        }
                    }
                }
                flow.entry = entry;
                continue;
            }
            let offset = startup_offset(i, flow_count, self.polling.initial_interval);
            self.watch_flow(entry, now, now + offset);
        }
        summary
    }

    /// Adds an execution to the watch set with what the store knows of it; it is polled from
    /// `first_poll` unless it is done. Returns whether it was scheduled.
    fn restore_execution(
        &mut self,
        entry: WatchEntry,
        discovered: bool,
        first_poll: Instant,
    ) -> bool {
        let now = Instant::now();
        let key = entry.key.clone();
        let mut state = ExecutionState::new(entry, self.policy.start());
        state.discovered = discovered;
        match self.store.execution(&key) {
            Ok(Some(restored)) => state.restore(restored, now),
            Ok(None) => {}
            Err(e) => self.store_failed(&e),
        }
        self.metrics.watch_flow(&key.instance_id, &key.flow_name);
        self.metrics.set_status(&key, state.status);
        self.metrics
            .watched
            .with_label_values(&[state.status.as_str()])
            .inc();
        if let Some(observation) = &state.observation {
            self.metrics.set_times(&key, observation);
            if state.status == Status::Failed {
                self.metrics
                    .set_failure(&key, observation.message.as_deref());
            }
            // A run that ended before a restart still says how long the flow's runs take.
            if state.status.is_terminal()
                && let (Some(start), Some(end)) = (observation.start_time, observation.end_time)
            {
                self.forecast.record(
                    &key.instance_id,
                    &key.flow_name,
                    &key.execution_id,
                    end - start,
                );
            }
        }
        // Never observed, in a flow with no forecast yet, past its scouts: it waits for them
        // (at most max_interval). What the store knows is polled at once.
        let first_poll = if self.polling.adaptive
            && state.observation.is_none()
            && !state.is_done()
            && self.forecast.spare_new(&key)
        {
            now + self.polling.max_interval
        } else {
            first_poll
        };
        let done = state.is_done();
        self.executions.insert(key.clone(), Box::new(state));
        if done {
            // Known terminal from an earlier run: not polled again; its series stay for
            // retain_terminal from now.
            self.drop_series_later(&key, now);
            false
        } else {
            self.schedule(&key, first_poll);
            true
        }
    }

    /// Takes an execution out of the watch set, with its series. The caller takes it out of
    /// `series_drops`.
    fn forget_execution(&mut self, key: &ExecutionKey) {
        self.unschedule(&Job::Poll(key.clone()));
        self.forecast.forget_execution(key);
        if let Some(state) = self.executions.remove(key) {
            self.metrics
                .watched
                .with_label_values(&[state.status.as_str()])
                .dec();
        }
        self.series_dropped.remove(key);
        self.metrics.drop_execution(key);
    }

    /// Starts watching a `[[flow]]` entry: its discovered executions come back from the store,
    /// and its first discovery round is due at `first_round`.
    fn watch_flow(&mut self, entry: FlowEntry, now: Instant, first_round: Instant) {
        let key = entry.key.clone();
        let wall = SystemTime::now();
        let first_seen = match self.store.flow_first_seen(&key, wall) {
            Ok(first_seen) => first_seen,
            Err(e) => {
                self.store_failed(&e);
                wall
            }
        };
        self.metrics
            .watch_discovered_flow(&key.instance_id, &key.flow_name);
        let flow = FlowWatch::new(entry, first_seen, self.policy.start());
        let pruned = self
            .store
            .prune_discovered(&key, unix_seconds(wall) - LISTED_HISTORY.as_secs_f64());
        match pruned {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(flow = %key, executions = n, "forgot discovered executions the API no longer lists")
            }
            Err(e) => self.store_failed(&e),
        }
        let retained_from = unix_seconds(wall) - self.polling.retain_terminal.as_secs_f64();
        let restored = match self.store.discovered_to_restore(&key, retained_from) {
            Ok(restored) => restored,
            Err(e) => {
                self.store_failed(&e);
                Vec::new()
            }
        };
        let labels = flow.entry.labels.clone();
        self.flows.insert(key.clone(), flow);
        let count = restored.len();
        for (i, execution) in restored.into_iter().enumerate() {
            if self.executions.contains_key(&execution) {
                continue;
            }
            let entry = WatchEntry {
                key: execution,
                labels: labels.clone(),
            };
            let offset = startup_offset(i, count, self.polling.initial_interval);
            self.restore_execution(entry, true, now + offset);
        }
        if count > 0 {
            tracing::info!(flow = %key, executions = count, "discovered executions restored from the state database");
        }
        self.schedule_job(Job::Discover(key), first_round);
    }

    fn schedule(&mut self, key: &ExecutionKey, at: Instant) {
        self.schedule_job(Job::Poll(key.clone()), at);
    }

    /// Puts `job` in the queue at `at` (moving it if it was queued). Each execution and flow
    /// keeps its own place in the queue, so moving it needs no index beside the queue.
    fn schedule_job(&mut self, job: Job, at: Instant) {
        self.seq += 1;
        let slot = (at, self.seq);
        let next = Some(SystemTime::now() + at.saturating_duration_since(Instant::now()));
        let previous = match &job {
            Job::Poll(key) => self.executions.get_mut(key).map(|state| {
                state.next_poll = next;
                state.slot.replace(slot)
            }),
            Job::Discover(flow) => self.flows.get_mut(flow).map(|flow| {
                flow.next_round = next;
                flow.slot.replace(slot)
            }),
        };
        // Nothing to schedule for an execution or flow that is not watched.
        let Some(previous) = previous else {
            return;
        };
        if let Some(previous) = previous {
            self.due.remove(&previous);
        }
        self.due.insert(slot, job);
    }

    fn unschedule(&mut self, job: &Job) {
        let slot = match job {
            Job::Poll(key) => self.executions.get_mut(key).and_then(|s| s.slot.take()),
            Job::Discover(flow) => self.flows.get_mut(flow).and_then(|f| f.slot.take()),
        };
        if let Some(slot) = slot {
            self.due.remove(&slot);
        }
    }

    /// Sends the request at the head of the queue.
    fn dispatch(&mut self, permit: OwnedSemaphorePermit) {
        let Some((_, job)) = self.due.pop_first() else {
            return;
        };
        let client = self.client.clone();
        // A safety net over the SDK's own timeout: a request can never hang the pool.
        let hard_limit = self.polling.request_timeout + Duration::from_secs(1);
        let handle = match &job {
            Job::Poll(key) => {
                let Some(state) = self.executions.get_mut(key) else {
                    return;
                };
                state.slot = None;
                state.last_poll = Some(SystemTime::now());
                state.next_poll = None;
                let key = key.clone();
                self.tasks.spawn(async move {
                    let _permit = permit;
                    let started = Instant::now();
                    let result = tokio::time::timeout(hard_limit, client.get(&key))
                        .await
                        .unwrap_or(Err(ApiError::Timeout));
                    (Answer::Poll(key, result), started.elapsed())
                })
            }
            Job::Discover(flow_key) => {
                let Some(flow) = self.flows.get_mut(flow_key) else {
                    return;
                };
                flow.slot = None;
                flow.next_round = None;
                let token = flow.next_token();
                let page_size = self.discovery.page_size;
                let flow_key = flow_key.clone();
                self.tasks.spawn(async move {
                    let _permit = permit;
                    let started = Instant::now();
                    let result = tokio::time::timeout(
                        hard_limit,
                        client.list(&flow_key, token.as_deref(), page_size),
                    )
                    .await
                    .unwrap_or(Err(ApiError::Timeout));
                    (Answer::List(flow_key, result), started.elapsed())
                })
            }
        };
        self.task_jobs.insert(handle.id(), job);
    }

    fn on_joined(&mut self, joined: Result<(Id, TaskResult), tokio::task::JoinError>) {
        match joined {
            Ok((id, (answer, elapsed))) => {
                self.task_jobs.remove(&id);
                match answer {
                    Answer::Poll(key, result) => self.on_result(key, result, elapsed),
                    Answer::List(flow, result) => self.on_page(flow, result, elapsed),
                }
            }
            Err(e) => {
                // A request task does not panic by design; if one does, its job is retried
                // later rather than forgotten.
                let job = self.task_jobs.remove(&e.id());
                tracing::error!(error = %e, job = ?job, "request task ended abnormally");
                let at = Instant::now() + self.polling.max_interval;
                match job {
                    Some(Job::Poll(key))
                        if self.executions.get(&key).is_some_and(|s| !s.is_done()) =>
                    {
                        self.schedule(&key, at);
                    }
                    Some(job @ Job::Discover(_)) => self.schedule_job(job, at),
                    _ => {}
                }
            }
        }
    }

    /// Counts a request, and adjusts the global rate: cut on throttling, restored on answers.
    /// Returns the request's outcome.
    fn account(
        &mut self,
        operation: Operation,
        error: Option<&ApiError>,
        elapsed: Duration,
        subject: &dyn std::fmt::Display,
    ) -> Outcome {
        let outcome = error.map_or(Outcome::Success, ApiError::outcome);
        self.metrics
            .record_request(operation, outcome, elapsed.as_secs_f64());
        self.health.record(outcome, || {
            error.map(ToString::to_string).unwrap_or_default()
        });
        match error {
            Some(e @ (ApiError::Throttled { .. } | ApiError::QuotaExceeded { .. })) => {
                let before = self.limiter.rate();
                self.limiter.on_throttle(e.retry_after());
                let after = self.limiter.rate();
                if after < before {
                    tracing::warn!(subject = %subject, operation = operation.as_str(), error = %e, rate = after, retry_after = ?e.retry_after(),
                        "the API is throttling: global request rate cut");
                }
            }
            None
            | Some(
                ApiError::NotFound { .. }
                | ApiError::AccessDenied { .. }
                | ApiError::Validation { .. }
                | ApiError::Conflict { .. },
            ) => self.limiter.on_success(),
            Some(_) => {}
        }
        self.metrics.rate_limit.set(self.limiter.rate());
        outcome
    }

    fn on_result(
        &mut self,
        key: ExecutionKey,
        result: Result<Observation, ApiError>,
        elapsed: Duration,
    ) {
        let outcome = self.account(
            Operation::GetExecution,
            result.as_ref().err(),
            elapsed,
            &key,
        );

        // The entry may have been removed by a reload while its request was in flight.
        let Some(state) = self.executions.get_mut(&key) else {
            return;
        };
        let now = Instant::now();
        let wall = SystemTime::now();
        let previous = state.last_outcome.replace(outcome);
        let mut transitions = Vec::new();
        let mut rejection = None;
        let mut delay = match result {
            Ok(observation) => {
                state.attempts += 1;
                let times_changed = state.observation.as_ref().is_none_or(|o| {
                    o.start_time != observation.start_time || o.end_time != observation.end_time
                });
                if times_changed {
                    self.metrics.set_times(&key, &observation);
                }
                let applied = state.apply(observation, now, wall);
                if let Some(raw) = applied.unrecognised {
                    tracing::warn!(execution = %key, status = %raw, keeping = %state.status,
                        "the API returned a status flowwatch does not know; keeping the last known status");
                }
                if previous.is_some_and(|p| p != Outcome::Success) {
                    tracing::info!(execution = %key, "polling works again");
                }
                transitions.extend(applied.transition);
                poll_delay(
                    state,
                    &mut self.forecast,
                    &self.polling,
                    &mut self.rng,
                    now,
                    wall,
                )
            }
            Err(error) => {
                let counted =
                    !matches!(error.outcome(), Outcome::Throttled | Outcome::QuotaExceeded);
                if counted {
                    state.attempts += 1;
                }
                let throttled = !counted;
                if previous != Some(outcome) && !throttled {
                    let level_error = matches!(
                        error,
                        ApiError::AccessDenied { .. } | ApiError::Validation { .. }
                    );
                    if level_error {
                        tracing::error!(execution = %key, outcome = outcome.metric_label(), error = %error,
                            "poll failed (repeats are logged at debug until the outcome changes)");
                    } else {
                        tracing::warn!(execution = %key, outcome = outcome.metric_label(), error = %error,
                            "poll failed (repeats are logged at debug until the outcome changes)");
                    }
                } else {
                    tracing::debug!(execution = %key, outcome = outcome.metric_label(), error = %error, "poll failed again");
                }
                state.last_error = Some(error.to_string());
                if !matches!(error, ApiError::NotFound { .. }) {
                    state.not_found_since = None;
                }
                match &error {
                    ApiError::Throttled { retry_after, .. }
                    | ApiError::QuotaExceeded { retry_after, .. } => {
                        // Not an attempt: retry at the current step, after the server's hint.
                        state
                            .backoff
                            .jittered(&mut self.rng)
                            .max(retry_after.unwrap_or_default())
                    }
                    ApiError::NotFound { .. } => {
                        state.not_found_since.get_or_insert(now);
                        let waited = not_found_for(state, now).unwrap_or_default();
                        if waited >= self.polling.not_found_grace {
                            transitions.push(state.transition_to(Status::NotFound, now, wall));
                        }
                        state.backoff.next_delay(&mut self.rng)
                    }
                    ApiError::AccessDenied { .. } => self.polling.max_interval,
                    ApiError::Validation { message } => {
                        rejection = Some(message.clone());
                        Duration::ZERO
                    }
                    _ => state.backoff.next_delay(&mut self.rng),
                }
            }
        };
        for transition in transitions {
            if !self.commit_transition(transition, now) {
                delay = self.polling.initial_interval;
            }
        }
        if let Some(message) = rejection
            && !self.commit_rejection(&key, &message, wall)
        {
            delay = self.polling.initial_interval;
        }
        let done = self.executions.get(&key).is_some_and(|s| s.is_done());
        if done {
            self.unschedule(&Job::Poll(key));
        } else {
            self.schedule(&key, now + delay);
        }
    }

    /// Handles one page of a flow's discovery round.
    fn on_page(
        &mut self,
        flow_key: FlowKey,
        result: Result<ListPage, ApiError>,
        elapsed: Duration,
    ) {
        let outcome = self.account(
            Operation::ListExecutions,
            result.as_ref().err(),
            elapsed,
            &flow_key,
        );
        let now = Instant::now();
        let wall = SystemTime::now();
        // The flow may have been removed by a reload while its request was in flight.
        let Some(flow) = self.flows.get_mut(&flow_key) else {
            return;
        };
        let previous = flow.last_outcome.replace(outcome);
        let page = match result {
            Ok(page) => page,
            Err(error) => {
                let delay = self.on_list_error(&flow_key, error, previous);
                self.schedule_job(Job::Discover(flow_key), now + delay);
                return;
            }
        };
        if flow.not_found {
            flow.not_found = false;
            self.metrics
                .discovery_flow_not_found
                .with_label_values(&[&flow_key.instance_id, &flow_key.flow_name])
                .set(0);
            tracing::info!(flow = %flow_key, "the flow exists: discovery works again");
        } else if previous.is_some_and(|p| p != Outcome::Success) {
            tracing::info!(flow = %flow_key, "discovery works again");
        }
        flow.last_error = None;
        flow.backoff.reset();
        let window_start = flow.window_start(wall);
        let labels = flow.entry.labels.clone();
        for problem in &page.invalid {
            tracing::warn!(flow = %flow_key, problem = %problem,
                "skipping a listed execution that breaks the wire format");
        }

        let mut listed = Vec::with_capacity(page.executions.len());
        for (key, observation) in &page.executions {
            let known = self.executions.contains_key(key)
                || self.store.is_known(key).unwrap_or_else(|e| {
                    // Counted as known, so nothing is announced twice; the next round asks again.
                    self.store_failed(&e);
                    true
                });
            listed.push(classify_listed(known, observation, window_start));
        }
        let mut found = 0;
        for ((key, observation), how) in page.executions.iter().zip(&listed) {
            match how {
                // The same id twice in one page is added once.
                Listed::New if !self.executions.contains_key(key) => {
                    let entry = WatchEntry {
                        key: key.clone(),
                        labels: labels.clone(),
                    };
                    if self.add_discovered(entry, observation.clone(), now, wall) {
                        found += 1;
                    }
                }
                Listed::Known if !self.executions.contains_key(key) => {
                    self.adopt(key, &labels, observation, now);
                }
                _ => {}
            }
        }

        let Some(flow) = self.flows.get_mut(&flow_key) else {
            return;
        };
        flow.discovered += found;
        let judged: Vec<(Listed, &Observation)> = listed
            .iter()
            .copied()
            .zip(page.executions.iter().map(|(_, o)| o))
            .collect();
        let next = flow.after_page(
            &judged,
            window_start,
            page.next_token,
            self.discovery.max_pages_per_round,
        );
        match next {
            Next::Page(_) => self.schedule_job(Job::Discover(flow_key), now),
            Next::Done { resume } => {
                flow.last_success = Some(wall);
                tracing::debug!(flow = %flow_key, pages = flow.last_round_pages, "discovery round done");
                if resume.is_some() {
                    tracing::info!(flow = %flow_key, pages = flow.last_round_pages,
                        "discovery stopped at discovery.max_pages_per_round with new executions still coming: the next round goes on from there");
                }
                self.metrics
                    .discovery_last_success
                    .with_label_values(&[&flow_key.instance_id, &flow_key.flow_name])
                    .set(unix_seconds(wall));
                self.schedule_job(Job::Discover(flow_key), now + self.discovery.interval);
            }
        }
    }

    /// Records a failed List request; returns when to ask again (the same page, unless the
    /// error says the round cannot go on).
    fn on_list_error(
        &mut self,
        flow_key: &FlowKey,
        error: ApiError,
        previous: Option<Outcome>,
    ) -> Duration {
        let slow = self.discovery.interval * NOT_FOUND_INTERVALS;
        let Some(flow) = self.flows.get_mut(flow_key) else {
            return slow;
        };
        let outcome = error.outcome();
        let throttled = matches!(outcome, Outcome::Throttled | Outcome::QuotaExceeded);
        flow.last_error = Some(error.to_string());
        if previous != Some(outcome) && !throttled {
            let serious = matches!(
                error,
                ApiError::NotFound { .. }
                    | ApiError::AccessDenied { .. }
                    | ApiError::Validation { .. }
            );
            if serious {
                tracing::error!(flow = %flow_key, outcome = outcome.metric_label(), error = %error,
                    "discovery failed (repeats are logged at debug until the outcome changes)");
            } else {
                tracing::warn!(flow = %flow_key, outcome = outcome.metric_label(), error = %error,
                    "discovery failed (repeats are logged at debug until the outcome changes)");
            }
        } else {
            tracing::debug!(flow = %flow_key, outcome = outcome.metric_label(), error = %error, "discovery failed again");
        }
        match &error {
            ApiError::Throttled { retry_after, .. }
            | ApiError::QuotaExceeded { retry_after, .. } => flow
                .backoff
                .jittered(&mut self.rng)
                .max(retry_after.unwrap_or_default()),
            ApiError::NotFound { .. } => {
                flow.not_found = true;
                flow.abandon_round();
                self.metrics
                    .discovery_flow_not_found
                    .with_label_values(&[&flow_key.instance_id, &flow_key.flow_name])
                    .set(1);
                slow
            }
            ApiError::Validation { .. } => {
                let had_token = flow.round.as_ref().is_some_and(|r| r.token.is_some());
                flow.abandon_round();
                if had_token {
                    // The token was refused (expired?): start again at the top.
                    Duration::ZERO
                } else {
                    slow
                }
            }
            ApiError::AccessDenied { .. } => self.polling.max_interval,
            _ => flow.backoff.next_delay(&mut self.rng),
        }
    }

    /// Adds an execution found by discovery: its listed state is its first observation (one
    /// event from UNKNOWN), and it is polled unless that state is terminal. Returns whether it
    /// joined.
    fn add_discovered(
        &mut self,
        entry: WatchEntry,
        observation: Observation,
        now: Instant,
        wall: SystemTime,
    ) -> bool {
        let key = entry.key.clone();
        if let Err(e) = self
            .store
            .record_discovered(&key, wall, observation.start_time)
        {
            // Not recorded, so not known: the next round finds it again.
            self.store_failed(&e);
            return false;
        }
        let mut state = ExecutionState::new(entry, self.policy.start());
        state.discovered = true;
        self.metrics
            .discovered
            .with_label_values(&[&key.instance_id, &key.flow_name])
            .inc();
        self.metrics.set_status(&key, state.status);
        self.metrics
            .watched
            .with_label_values(&[state.status.as_str()])
            .inc();
        self.metrics.set_times(&key, &observation);
        let applied = state.apply(observation, now, wall);
        if let Some(raw) = applied.unrecognised {
            tracing::warn!(execution = %key, status = %raw,
                "the API listed a status flowwatch does not know; polling it until it is known");
        }
        tracing::info!(execution = %key, status = %state.status, "discovered a new execution");
        let first_poll = poll_delay(
            &mut state,
            &mut self.forecast,
            &self.polling,
            &mut self.rng,
            now,
            wall,
        );
        self.executions.insert(key.clone(), Box::new(state));
        if let Some(transition) = applied.transition {
            self.commit_transition(transition, now);
        }
        if self.executions.get(&key).is_some_and(|s| !s.is_done()) {
            self.schedule(&key, now + first_poll);
        }
        true
    }

    /// Takes back into the watch set a known execution that left it while it still runs (an
    /// explicit entry removed while its flow stays watched), without announcing it again.
    fn adopt(
        &mut self,
        key: &ExecutionKey,
        labels: &std::collections::BTreeMap<String, String>,
        observation: &Observation,
        now: Instant,
    ) {
        if observation.status != crate::model::ApiStatus::InProgress {
            return;
        }
        let still_running = match self.store.execution(key) {
            Ok(Some(r)) => !r.status.is_terminal() && r.rejected.is_none(),
            Ok(None) => true,
            Err(e) => {
                self.store_failed(&e);
                false
            }
        };
        if still_running {
            let entry = WatchEntry {
                key: key.clone(),
                labels: labels.clone(),
            };
            self.restore_execution(entry, true, now);
        }
    }

    /// Commits a transition to the store, then publishes it. When the store cannot take it, the
    /// execution goes back to its previous status, so the next poll detects the transition again
    /// and nothing is published that the store does not hold. Returns whether it was committed.
    fn commit_transition(&mut self, t: Transition, now: Instant) -> bool {
        let event = t.to_cloud_event();
        let committed = self.store.commit(
            &t.key,
            t.to,
            t.observation.as_ref(),
            None,
            Some(t.to),
            &event,
        );
        match committed {
            Ok(seq) => {
                self.store_recovered();
                self.publish(&t, now);
                self.deliver(seq, &event);
                true
            }
            Err(e) => {
                self.store_failed(&e);
                if let Some(state) = self.executions.get_mut(&t.key) {
                    state.revert(&t);
                }
                false
            }
        }
    }

    /// Commits and delivers the event of an entry the API rejected (ValidationException).
    fn commit_rejection(&mut self, key: &ExecutionKey, message: &str, wall: SystemTime) -> bool {
        let Some(state) = self.executions.get(key) else {
            return true;
        };
        let event = rejected_event(key, state.status, message, wall, &state.entry.labels);
        let status = state.status;
        let observation = state.observation.clone();
        match self.store.commit(
            key,
            status,
            observation.as_deref(),
            Some(message),
            None,
            &event,
        ) {
            Ok(seq) => {
                self.store_recovered();
                if let Some(state) = self.executions.get_mut(key) {
                    state.rejected = Some(message.to_string());
                    state.next_poll = None;
                }
                self.deliver(seq, &event);
                true
            }
            Err(e) => {
                self.store_failed(&e);
                false
            }
        }
    }

    /// Writes a committed event to the sinks; it leaves the outbox once every sink took it.
    fn deliver(&mut self, seq: i64, event: &Value) {
        if self.sinks.emit(event, &self.metrics) {
            if let Err(e) = self.store.mark_delivered(seq) {
                // Delivered but not marked: it is delivered again after a restart (same id).
                self.store_failed(&e);
            }
        } else {
            self.redeliver_after = Some(Instant::now() + REDELIVERY_INTERVAL);
        }
    }

    /// Delivers every committed event not delivered yet: at start-up (events of a run that
    /// stopped between commit and delivery) and after a sink failed.
    fn deliver_pending(&mut self) {
        self.redeliver_after = None;
        let pending = match self.store.pending_events() {
            Ok(pending) => pending,
            Err(e) => {
                self.store_failed(&e);
                self.redeliver_after = Some(Instant::now() + REDELIVERY_INTERVAL);
                return;
            }
        };
        if !pending.is_empty() {
            tracing::info!(
                events = pending.len(),
                "delivering events committed but not delivered yet"
            );
        }
        for p in pending {
            self.deliver(p.seq, &p.event);
            if self.redeliver_after.is_some() {
                break;
            }
        }
    }

    fn store_failed(&mut self, e: &crate::output::store::StoreError) {
        if self.store_error.as_deref() != Some(e.message.as_str()) {
            tracing::error!(error = %e, "cannot write the state database; transitions wait until it is writable again");
            self.store_error = Some(e.message.clone());
        }
        self.health.set_store_error(Some(e.to_string()));
    }

    fn store_recovered(&mut self) {
        if self.store_error.take().is_some() {
            tracing::info!("the state database is writable again");
            self.health.set_store_error(None);
        }
    }

    /// Metrics of a committed transition.
    fn publish(&mut self, t: &Transition, now: Instant) {
        let key = &t.key;
        tracing::info!(execution = %key, from = %t.from, to = %t.to, "status transition");
        self.metrics
            .transitions
            .with_label_values(&[&key.instance_id, &key.flow_name, t.to.as_str()])
            .inc();
        self.metrics.set_status(key, t.to);
        if t.to == Status::Failed {
            let message = t.observation.as_ref().and_then(|o| o.message.as_deref());
            self.metrics.set_failure(key, message);
        }
        self.metrics
            .watched
            .with_label_values(&[t.from.as_str()])
            .dec();
        self.metrics
            .watched
            .with_label_values(&[t.to.as_str()])
            .inc();
        if t.to.is_terminal() {
            self.drop_series_later(key, now);
            let duration = t
                .observation
                .as_ref()
                .and_then(|o| Some(o.end_time? - o.start_time?))
                .unwrap_or(f64::NAN);
            self.forecast.forget_execution(key);
            let due = self.forecast.record(
                &key.instance_id,
                &key.flow_name,
                &key.execution_id,
                duration,
            );
            if !due.is_empty() {
                self.reschedule_spared(due, now);
            }
        }
    }

    /// The flow of `spared` executions now has a forecast: each is due when it says.
    fn reschedule_spared(&mut self, spared: Vec<ExecutionKey>, now: Instant) {
        let wall = SystemTime::now();
        tracing::debug!(
            executions = spared.len(),
            "a flow's durations are known: spared executions rescheduled"
        );
        for key in spared {
            let Some(state) = self.executions.get_mut(&key) else {
                continue;
            };
            if state.is_done() || state.slot.is_none() {
                continue;
            }
            // Never observed: its first poll is now.
            if state.observation.is_none() {
                self.schedule(&key, now);
                continue;
            }
            let delay = poll_delay(
                state,
                &mut self.forecast,
                &self.polling,
                &mut self.rng,
                now,
                wall,
            );
            self.schedule(&key, now + delay);
        }
    }

    /// The per-execution series of a terminal execution go `retain_terminal` after `now`.
    fn drop_series_later(&mut self, key: &ExecutionKey, now: Instant) {
        self.seq += 1;
        self.series_drops
            .insert((now + self.polling.retain_terminal, self.seq), key.clone());
    }

    fn drop_expired_series(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.series_drops.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            if self.executions.get(&key).is_some_and(|s| s.discovered) {
                // Discovered executions leave the watch set too; the store remembers them.
                tracing::debug!(execution = %key, "a terminal discovered execution leaves the watch set");
                self.forget_execution(&key);
                continue;
            }
            tracing::debug!(execution = %key, "dropping the series of a terminal execution");
            self.metrics.drop_execution(&key);
            self.series_dropped.insert(key);
        }
    }

    fn status_document(&self) -> Value {
        let counts = count_by_status(self.executions.values().map(|s| &**s));
        let executions: Vec<Value> = self
            .executions
            .values()
            .map(|s| s.to_json(!self.series_dropped.contains(&s.entry.key)))
            .collect();
        let wall = SystemTime::now();
        let mut per_flow: HashMap<FlowKey, usize> = HashMap::new();
        for state in self.executions.values().filter(|s| s.discovered) {
            *per_flow.entry(FlowKey::of(&state.entry.key)).or_default() += 1;
        }
        let flows: Vec<Value> = self
            .flows
            .iter()
            .map(|(k, f)| f.to_json(per_flow.get(k).copied().unwrap_or(0), wall))
            .collect();
        json!({
            "watched": self.executions.len(),
            "flows": flows,
            "by_status": counts.iter().map(|(s, n)| (s.as_str().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "in_flight": self.tasks.len(),
            "rate_limit_requests_per_second": self.limiter.rate(),
            "executions": executions,
        })
    }
}

/// The delay until a successfully polled execution's next poll: around the time runs of its flow
/// end when the forecast knows (running executions with a start time, `polling.adaptive`), else
/// the next step of its backoff ladder. Always within `[initial_interval, max_interval]`.
fn poll_delay(
    state: &mut ExecutionState,
    forecast: &mut Forecast,
    polling: &PollingSettings,
    rng: &mut fastrand::Rng,
    now: Instant,
    wall: SystemTime,
) -> Duration {
    if polling.adaptive
        && state.status == Status::InProgress
        && let Some(start) = state.observation.as_ref().and_then(|o| o.start_time)
    {
        let (at, age_then) = *state
            .age_anchor
            .get_or_insert_with(|| (now, (unix_seconds(wall) - start).max(0.0)));
        let age = age_then + now.saturating_duration_since(at).as_secs_f64();
        match forecast.plan(&state.entry.key, age) {
            Plan::In(wait) => {
                // Clamped as seconds first: absurd API times must not overflow a Duration.
                let (low, high) = (
                    polling.initial_interval.as_secs_f64(),
                    polling.max_interval.as_secs_f64(),
                );
                let wait = if wait.is_nan() { high } else { wait };
                return Duration::from_secs_f64(wait.clamp(low, high));
            }
            Plan::Spare => return polling.max_interval,
            Plan::Dense => return polling.initial_interval,
            Plan::Ladder => {}
        }
    }
    state.backoff.next_delay(rng)
}

/// Resolves when the head of the queue is due, a request slot is free and the rate limiter
/// gives a token. Cancel-safe: nothing is taken unless it resolves.
async fn wait_for_turn(
    due: Option<Instant>,
    permits: Arc<Semaphore>,
    limiter: Arc<RateLimiter>,
) -> Option<OwnedSemaphorePermit> {
    sleep_until(due?).await;
    let permit = permits.acquire_owned().await.ok()?;
    limiter.acquire().await;
    Some(permit)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::ApiStatus;

    #[tokio::test(start_paused = true)]
    async fn absurd_api_times_give_a_delay_within_the_bounds_not_a_panic() {
        let polling = PollingSettings::default();
        let key = ExecutionKey::new(
            "8850c54e-e187-4fa7-89d4-6370f165174d",
            "f",
            "a1b2c3d4-0000-4000-8000-000000000001",
        )
        .expect("valid key");
        let mut forecast = Forecast::default();
        for (n, d) in [1e300, 2e300, 3e300].into_iter().enumerate() {
            forecast.record(&key.instance_id, &key.flow_name, &format!("x{n}"), d);
        }
        let mut state = ExecutionState::new(
            WatchEntry {
                key,
                labels: BTreeMap::new(),
            },
            BackoffPolicy::from_settings(&polling).start(),
        );
        state.status = Status::InProgress;
        state.observation = Some(Box::new(Observation {
            status: ApiStatus::InProgress,
            source_info: None,
            message: None,
            start_time: Some(-1e300),
            end_time: None,
            diagnostic_reports_root_s3_uri: None,
        }));
        let mut rng = fastrand::Rng::with_seed(1);
        let delay = poll_delay(
            &mut state,
            &mut forecast,
            &polling,
            &mut rng,
            Instant::now(),
            SystemTime::now(),
        );
        assert_eq!(delay, polling.max_interval);
    }
}
