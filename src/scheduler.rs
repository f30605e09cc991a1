//! The scheduler: a due-time queue with one slot per execution, and a bounded pool of in-flight
//! requests, all paced by the global rate limiter. It owns every [`ExecutionState`], turns API
//! answers into transitions, and writes those to metrics and event sinks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::{Id, JoinSet};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::aws::{ApiError, FlowExecutions, Observation, Outcome};
use crate::config::PollingSettings;
use crate::events::{Sinks, Transition, rejected_event};
use crate::health::{HEARTBEAT, Health};
use crate::metrics::Metrics;
use crate::pacing::{BackoffPolicy, RateLimiter, startup_offset};
use crate::state::{ExecutionState, Status, count_by_status, not_found_for};
use crate::store::Store;
use crate::systemd::Watchdog;
use crate::watchlist::{ExecutionKey, Watchlist};

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

type PollResult = (ExecutionKey, Result<Observation, ApiError>, Duration);

pub struct Scheduler<C> {
    client: Arc<C>,
    polling: PollingSettings,
    policy: BackoffPolicy,
    limiter: Arc<RateLimiter>,
    permits: Arc<Semaphore>,
    executions: BTreeMap<ExecutionKey, ExecutionState>,
    due: BTreeMap<(Instant, u64), ExecutionKey>,
    slots: HashMap<ExecutionKey, (Instant, u64)>,
    series_drops: BTreeMap<(Instant, u64), ExecutionKey>,
    series_dropped: HashSet<ExecutionKey>,
    seq: u64,
    tasks: JoinSet<PollResult>,
    task_keys: HashMap<Id, ExecutionKey>,
    metrics: Arc<Metrics>,
    sinks: Sinks,
    health: Arc<Health>,
    rng: fastrand::Rng,
    exit_when_done: bool,
    watchdog: Watchdog,
    store: Store,
    store_error: Option<String>,
    redeliver_after: Option<Instant>,
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
            limiter,
            executions: BTreeMap::new(),
            due: BTreeMap::new(),
            slots: HashMap::new(),
            series_drops: BTreeMap::new(),
            series_dropped: HashSet::new(),
            seq: 0,
            tasks: JoinSet::new(),
            task_keys: HashMap::new(),
            metrics,
            sinks,
            health,
            rng: fastrand::Rng::new(),
            exit_when_done,
            watchdog: Watchdog::from_env(),
            store,
            store_error: None,
            redeliver_after: None,
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

    fn all_done(&self) -> bool {
        self.executions.values().all(ExecutionState::is_done)
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
    fn replace(&mut self, watchlist: Watchlist) -> ReloadSummary {
        let now = Instant::now();
        let wanted: HashSet<&ExecutionKey> = watchlist.entries.iter().map(|e| &e.key).collect();
        let removed: Vec<ExecutionKey> = self
            .executions
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        for key in &removed {
            if let Some(state) = self.executions.remove(key) {
                self.metrics
                    .watched
                    .with_label_values(&[state.status.as_str()])
                    .dec();
            }
            self.unschedule(key);
            self.series_drops.retain(|_, k| k != key);
            self.series_dropped.remove(key);
            self.metrics.drop_execution(key);
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
                summary.kept += 1;
                continue;
            }
            let key = entry.key.clone();
            let mut state = ExecutionState::new(entry, self.policy.start());
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
            }
            let done = state.is_done();
            self.executions.insert(key.clone(), state);
            if done {
                // Known terminal from an earlier run: not polled again; its series stay for
                // retain_terminal from now.
                self.drop_series_later(&key, now);
            } else {
                let offset = startup_offset(index, new_count, self.polling.initial_interval);
                self.schedule(&key, now + offset);
                index += 1;
            }
            summary.added += 1;
        }
        summary
    }

    fn schedule(&mut self, key: &ExecutionKey, at: Instant) {
        self.unschedule(key);
        self.seq += 1;
        let slot = (at, self.seq);
        self.due.insert(slot, key.clone());
        self.slots.insert(key.clone(), slot);
        if let Some(state) = self.executions.get_mut(key) {
            state.next_poll =
                Some(SystemTime::now() + at.saturating_duration_since(Instant::now()));
        }
    }

    fn unschedule(&mut self, key: &ExecutionKey) {
        if let Some(slot) = self.slots.remove(key) {
            self.due.remove(&slot);
        }
    }

    /// Sends the request of the execution at the head of the queue.
    fn dispatch(&mut self, permit: OwnedSemaphorePermit) {
        let Some((_, key)) = self.due.pop_first() else {
            return;
        };
        self.slots.remove(&key);
        let Some(state) = self.executions.get_mut(&key) else {
            return;
        };
        state.last_poll = Some(SystemTime::now());
        state.next_poll = None;
        let client = self.client.clone();
        // A safety net over the SDK's own timeout: a poll can never hang the pool.
        let hard_limit = self.polling.request_timeout + Duration::from_secs(1);
        let task_key = key.clone();
        let handle = self.tasks.spawn(async move {
            let _permit = permit;
            let started = Instant::now();
            let result = match tokio::time::timeout(hard_limit, client.get(&task_key)).await {
                Ok(result) => result,
                Err(_) => Err(ApiError::Timeout),
            };
            (task_key, result, started.elapsed())
        });
        self.task_keys.insert(handle.id(), key);
    }

    fn on_joined(&mut self, joined: Result<(Id, PollResult), tokio::task::JoinError>) {
        match joined {
            Ok((id, (key, result, elapsed))) => {
                self.task_keys.remove(&id);
                self.on_result(key, result, elapsed);
            }
            Err(e) => {
                // A poll task does not panic by design; if one does, its execution is polled
                // again later rather than forgotten.
                let key = self.task_keys.remove(&e.id());
                tracing::error!(error = %e, execution = ?key.as_ref().map(ToString::to_string),
                    "poll task ended abnormally");
                if let Some(key) = key
                    && self.executions.get(&key).is_some_and(|s| !s.is_done())
                {
                    let at = Instant::now() + self.polling.max_interval;
                    self.schedule(&key, at);
                }
            }
        }
    }

    fn on_result(
        &mut self,
        key: ExecutionKey,
        result: Result<Observation, ApiError>,
        elapsed: Duration,
    ) {
        let outcome = result
            .as_ref()
            .map_or_else(ApiError::outcome, |_| Outcome::Success);
        self.metrics.record_request(outcome, elapsed.as_secs_f64());
        self.health.record(outcome, || match &result {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        });
        match &result {
            Err(e @ (ApiError::Throttled { .. } | ApiError::QuotaExceeded { .. })) => {
                let before = self.limiter.rate();
                self.limiter.on_throttle(e.retry_after());
                let after = self.limiter.rate();
                if after < before {
                    tracing::warn!(execution = %key, error = %e, rate = after, retry_after = ?e.retry_after(),
                        "the API is throttling: global request rate cut");
                }
            }
            Ok(_)
            | Err(
                ApiError::NotFound { .. }
                | ApiError::AccessDenied { .. }
                | ApiError::Validation { .. }
                | ApiError::Conflict { .. },
            ) => self.limiter.on_success(),
            Err(_) => {}
        }
        self.metrics.rate_limit.set(self.limiter.rate());

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
                self.metrics.set_times(&key, &observation);
                let applied = state.apply(observation, now, wall);
                if let Some(raw) = applied.unrecognised {
                    tracing::warn!(execution = %key, status = %raw, keeping = %state.status,
                        "the API returned a status flowwatch does not know; keeping the last known status");
                }
                if previous.is_some_and(|p| p != Outcome::Success) {
                    tracing::info!(execution = %key, "polling works again");
                }
                transitions.extend(applied.transition);
                state.backoff.next_delay(&mut self.rng)
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
        let done = self
            .executions
            .get(&key)
            .is_some_and(ExecutionState::is_done);
        if done {
            self.unschedule(&key);
        } else {
            self.schedule(&key, now + delay);
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
            observation.as_ref(),
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

    fn store_failed(&mut self, e: &crate::store::StoreError) {
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
            tracing::debug!(execution = %key, "dropping the series of a terminal execution");
            self.metrics.drop_execution(&key);
            self.series_dropped.insert(key);
        }
    }

    fn status_document(&self) -> Value {
        let counts = count_by_status(self.executions.values());
        let executions: Vec<Value> = self
            .executions
            .values()
            .map(|s| s.to_json(!self.series_dropped.contains(&s.entry.key)))
            .collect();
        json!({
            "watched": self.executions.len(),
            "by_status": counts.iter().map(|(s, n)| (s.as_str().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "in_flight": self.tasks.len(),
            "rate_limit_requests_per_second": self.limiter.rate(),
            "executions": executions,
        })
    }
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
