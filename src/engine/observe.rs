//! Answers to polls, and the one path every observation takes. Whatever the source (a poll, a
//! List page, a pushed event), [`Engine::observe`] judges the observed status with the pure
//! [`policy::judge`], records it, and stages what must become visible; [`Engine::end_turn`]
//! commits what a turn staged and publishes it, or undoes it when the store did not take it.

use std::fmt::Display;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::Level;

use crate::api::{ApiError, FlowExecutions};
use crate::engine::Engine;
use crate::engine::forecast::{Forecast, Plan};
use crate::engine::pacing::Backoff;
use crate::engine::policy::{self, Delay, RateFeedback, Verdict};
use crate::engine::pool::{Answer, Job};
use crate::engine::state::{ExecutionState, not_found_for};
use crate::input::config::PollingSettings;
use crate::model::{ExecutionKey, Observation, ObservedVia, Operation, Outcome, Transition};
use crate::output::internal_events::{CallFailed, CallSucceeded, RateCut, RateRestored};
use crate::output::publisher::Change;

/// How long a staged change may wait for others to commit with it: the changes of answers that
/// arrive close together share one SQLite transaction and one write per event sink.
const COMMIT_WINDOW: Duration = Duration::from_millis(100);
/// This many staged changes commit at once, whatever their window.
const COMMIT_BATCH: usize = 512;

/// Changes decided but not committed yet.
#[derive(Debug, Default)]
pub struct Staged {
    changes: Vec<Change>,
    /// Receipts of pushed messages, deleted once the changes are committed.
    receipts: Vec<String>,
    /// When the first of them was staged.
    since: Option<Instant>,
}

impl Staged {
    pub(super) fn push(&mut self, change: Change) {
        self.since.get_or_insert_with(Instant::now);
        self.changes.push(change);
    }

    /// A pushed message goes once this turn's changes are committed.
    pub(super) fn ack(&mut self, receipt: String) {
        if !receipt.is_empty() {
            self.since.get_or_insert_with(Instant::now);
            self.receipts.push(receipt);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.receipts.is_empty()
    }

    fn take(&mut self) -> (Vec<Change>, Vec<String>) {
        self.since = None;
        (
            std::mem::take(&mut self.changes),
            std::mem::take(&mut self.receipts),
        )
    }
}

impl<C: FlowExecutions> Engine<C> {
    pub(super) fn on_answer(&mut self, answer: Answer) {
        match answer {
            Answer::Get(key, Ok(observation), elapsed) => self.polled(key, observation, elapsed),
            Answer::Get(key, Err(error), elapsed) => self.poll_failed(key, error, elapsed),
            Answer::List(flow, result, elapsed) => self.on_page(flow, result, elapsed),
            Answer::Lost(job, error) => self.lost(job, &error),
        }
    }

    /// A request panicked (it does not by design): its job is retried later.
    fn lost(&mut self, job: Job, error: &str) {
        tracing::error!(error, job = %job, "request ended abnormally");
        if let Job::Get(key) = &job
            && let Some(pushed) = self.release_held(key, None)
        {
            self.observe(key, pushed, ObservedVia::Push, SystemTime::now());
        }
        let at = Instant::now() + self.polling.max_interval;
        match job {
            Job::Get(key) if self.executions.get(&key).is_some_and(|s| !s.is_done()) => {
                self.schedule(&key, at);
            }
            job @ Job::List(_) => self.schedule_job(job, at),
            Job::Get(_) => {}
        }
    }

    /// Counts and logs a call, and adjusts the global rate to what its answer says.
    pub(super) fn call_done(
        &mut self,
        operation: Operation,
        subject: &dyn Display,
        result: Result<bool, (&ApiError, Level)>,
        elapsed: Duration,
    ) {
        let error = match result {
            Ok(recovered) => {
                self.publisher.emit(CallSucceeded {
                    operation,
                    subject,
                    elapsed,
                    recovered,
                });
                None
            }
            Err((error, level)) => {
                self.publisher.emit(CallFailed {
                    operation,
                    subject,
                    outcome: error.outcome(),
                    error,
                    elapsed,
                    level,
                });
                Some(error)
            }
        };
        let feedback = RateFeedback::of(error);
        let Some(rate) = self.pool.feedback(feedback) else {
            return;
        };
        match (feedback, error) {
            (RateFeedback::Cut { retry_after }, Some(error)) => self.publisher.emit(RateCut {
                operation,
                subject,
                error,
                rate,
                retry_after,
            }),
            _ => self.publisher.emit(RateRestored { rate }),
        }
    }

    /// A poll answered: the observation takes the one path, and the next poll is planned.
    fn polled(&mut self, key: ExecutionKey, observation: Observation, elapsed: Duration) {
        let previous = self
            .executions
            .get_mut(&key)
            .and_then(|s| s.last_outcome.replace(Outcome::Success));
        let recovered = previous.is_some_and(|p| p != Outcome::Success);
        self.call_done(Operation::Get, &key, Ok(recovered), elapsed);
        let wall = SystemTime::now();
        // A pushed end that waited for this poll is applied now, with the poll's fields,
        // unless the poll contradicts it.
        let (observation, via) = match self.release_held(&key, Some(&observation)) {
            Some(pushed) => (pushed, ObservedVia::Push),
            None => (observation, ObservedVia::Poll),
        };
        // The entry may have been removed by a reload while its request was in flight.
        if !self.observe(&key, observation, via, wall) {
            return;
        }
        let now = Instant::now();
        let Some(state) = self.executions.get_mut(&key) else {
            return;
        };
        state.attempts += 1;
        self.plan_next_poll(&key, now, wall);
    }

    /// Schedules a running execution's next poll by [`poll_delay`]; nothing for one that is done.
    pub(super) fn plan_next_poll(&mut self, key: &ExecutionKey, now: Instant, wall: SystemTime) {
        let Some(state) = self.executions.get_mut(key).filter(|s| !s.is_done()) else {
            return;
        };
        let reconcile = self.push.as_ref().and_then(|p| p.reconcile_every());
        let delay = match reconcile {
            // Push reports changes: a poll only reconciles, never sooner than the interval.
            Some(every) if state.status == crate::model::Status::InProgress => {
                every + every.mul_f64(0.1 * self.rng.f64())
            }
            _ => poll_delay(
                state,
                &mut self.forecast,
                &self.polling,
                &mut self.rng,
                now,
                wall,
            ),
        };
        self.schedule(key, now + delay);
    }

    /// A poll failed: the error table decides, and the decision is applied.
    fn poll_failed(&mut self, key: ExecutionKey, error: ApiError, elapsed: Duration) {
        // A pushed change that waited for this poll is applied as pushed.
        if let Some(pushed) = self.release_held(&key, None) {
            self.observe(&key, pushed, ObservedVia::Push, SystemTime::now());
        }
        let now = Instant::now();
        let (previous, not_found) = match self.executions.get_mut(&key) {
            Some(state) => {
                if matches!(error, ApiError::NotFound { .. }) {
                    state.not_found_since.get_or_insert(now);
                } else {
                    state.not_found_since = None;
                }
                let previous = state.last_outcome.replace(error.outcome());
                (previous, not_found_for(state, now).unwrap_or_default())
            }
            None => (None, Duration::ZERO),
        };
        let p = &self.polling;
        let decision = policy::poll_failed(
            &error,
            previous,
            not_found,
            p.not_found_grace,
            p.max_interval,
        );
        self.call_done(Operation::Get, &key, Err((&error, decision.log)), elapsed);
        let Some(state) = self.executions.get_mut(&key) else {
            return;
        };
        state.attempts += u64::from(decision.attempt);
        state.last_error = Some(error.to_string());
        let wall = SystemTime::now();
        if state.is_done() {
            // Terminal by a pushed change this poll was for: nothing more to decide.
            return self.unschedule(&Job::Get(key));
        }
        if let Some(to) = decision.to {
            let t = state.transition_to(to, ObservedVia::Poll, wall);
            self.staged.push(Change::Transition(t));
        }
        if let Some(message) = decision.reject {
            state.rejected = Some(message.clone());
            state.next_poll = None;
            self.staged.push(Change::Rejection {
                key: key.clone(),
                status: state.status,
                observation: state.observation.as_deref().cloned(),
                message,
                labels: state.entry.labels.clone(),
                at: wall,
            });
        }
        match resolve(decision.next, &mut state.backoff, &mut self.rng) {
            Some(delay) if !state.is_done() => self.schedule(&key, now + delay),
            _ => self.unschedule(&Job::Get(key)),
        }
    }

    /// The one path of every observation, polled, listed or pushed: the observed status is
    /// judged against the known one, recorded, and what must become visible is staged for the
    /// end of the turn. Returns false when the execution is not watched.
    pub(super) fn observe(
        &mut self,
        key: &ExecutionKey,
        mut observation: Observation,
        via: ObservedVia,
        wall: SystemTime,
    ) -> bool {
        let Some(state) = self.executions.get_mut(key) else {
            return false;
        };
        let dropped = observation.drop_unbelievable_times(crate::model::unix_seconds(wall));
        state.log_unbelievable(&dropped, via.as_str());
        let verdict = policy::judge(state.status, &observation.status);
        if verdict == Verdict::Stale {
            tracing::debug!(execution = %key, known = %state.status, observed = observation.status.as_str(),
                via = via.as_str(), "ignoring a status older than the one known");
            return true;
        }
        let times_changed = state.times_differ(&observation);
        let (transition, unrecognised) = state.record(observation, verdict, via, wall);
        if let Some(raw) = unrecognised {
            tracing::warn!(execution = %key, status = %raw, keeping = %state.status, via = via.as_str(),
                "the API returned a status flowwatch does not know; keeping the last known status");
        }
        match transition {
            Some(t) => {
                let done = t.to.is_terminal();
                self.staged.push(Change::Transition(t));
                if done {
                    self.unschedule(&Job::Get(key.clone()));
                }
            }
            None if times_changed => {
                if let Some(observation) = state.observation.as_deref() {
                    self.staged.push(Change::Observed {
                        key: key.clone(),
                        status: state.status,
                        observation: observation.clone(),
                    });
                }
            }
            None => {}
        }
        true
    }

    /// When the staged changes must be committed: [`COMMIT_WINDOW`] after the first of them.
    pub(super) fn commit_due(&self) -> Option<Instant> {
        self.staged.since.map(|since| since + COMMIT_WINDOW)
    }

    /// Commits the staged changes in one transaction once their window is over, they are many,
    /// or `force` asks for it now; then lets the engine act on what is durable. When the store did
    /// not take them, every one of them is undone.
    pub(super) fn end_turn(&mut self, force: bool) {
        let due = self.commit_due().is_some_and(|at| at <= Instant::now());
        let many = self.staged.changes.len() >= COMMIT_BATCH;
        if self.staged.is_empty() || !(force || due || many) {
            return;
        }
        let (changes, receipts) = self.staged.take();
        if changes.is_empty() {
            return self.ack(receipts);
        }
        let now = Instant::now();
        if self.publisher.commit(&changes) {
            for change in &changes {
                if let Change::Transition(t) = change {
                    self.committed(t, now);
                }
            }
            self.ack(receipts);
        } else {
            // The pushed messages stay in the queue and come back.
            for change in changes.into_iter().rev() {
                self.undo(change, now);
            }
        }
    }

    /// A terminal transition is durable: the series' lifetime starts, flow health learns of the
    /// run, and its duration teaches the forecast (which may make spared executions of its flow
    /// due).
    fn committed(&mut self, t: &Transition, now: Instant) {
        if !t.to.is_terminal() {
            return;
        }
        let key = &t.key;
        self.drop_series_later(key, now);
        let run = self.run_finished(t);
        self.forecast.forget_execution(key);
        let (ended, seconds) = run.unwrap_or((f64::NAN, f64::NAN));
        let due = self.forecast.record(key, ended, seconds);
        if !due.is_empty() {
            self.reschedule_spared(due, now);
        }
    }

    /// The store did not take a change: the execution goes back to what the store holds, and is
    /// polled again soon, so the next answer detects the change again.
    fn undo(&mut self, change: Change, now: Instant) {
        let key = match change {
            Change::Transition(t) => {
                if let Some(state) = self.executions.get_mut(&t.key) {
                    state.revert(&t);
                }
                t.key
            }
            Change::Rejection { key, .. } => {
                if let Some(state) = self.executions.get_mut(&key) {
                    state.rejected = None;
                }
                key
            }
            Change::Overdue(o) => {
                // Not overdue as far as the store knows: the next sweep stages it again.
                if let Some(state) = self.executions.get_mut(&o.key) {
                    state.overdue = false;
                }
                o.key
            }
            Change::Observed { key, .. } => {
                // Forgotten, so the next answer's times differ and are staged again.
                if let Some(state) = self.executions.get_mut(&key) {
                    state.observation = None;
                }
                key
            }
        };
        if self.executions.get(&key).is_some_and(|s| !s.is_done()) {
            self.schedule(&key, now + self.polling.initial_interval);
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
            } else {
                self.plan_next_poll(&key, now, wall);
            }
        }
    }
}

/// A [`Delay`] as a duration on `backoff`'s ladder; `None` for [`Delay::Never`].
pub(super) fn resolve(
    delay: Delay,
    backoff: &mut Backoff,
    rng: &mut fastrand::Rng,
) -> Option<Duration> {
    match delay {
        Delay::Climb => Some(backoff.next_delay(rng)),
        Delay::Hold { at_least } => Some(backoff.jittered(rng).max(at_least)),
        Delay::Fixed(d) => Some(d),
        Delay::Never => None,
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
        && state.status == crate::model::Status::InProgress
        && let Some(age) = state.age(now, wall)
    {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::engine::pacing::BackoffPolicy;
    use crate::model::{ApiStatus, Status, WatchEntry};

    #[test]
    fn absurd_api_times_give_a_delay_within_the_bounds_not_a_panic() {
        let polling = PollingSettings::default();
        let key = ExecutionKey::new(
            "8850c54e-e187-4fa7-89d4-6370f165174d",
            "f",
            "a1b2c3d4-0000-4000-8000-000000000001",
        )
        .expect("valid key");
        let mut forecast = Forecast::default();
        for (n, d) in [1e300, 2e300, 3e300].into_iter().enumerate() {
            let run = ExecutionKey::from_checked(
                key.instance_id.clone(),
                key.flow_name.clone(),
                format!("x{n}"),
            );
            forecast.record(&run, n as f64, d);
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
