//! Answers to Gets and Lists, and the one path every observation takes. Whatever the source (a
//! poll, a List page, a pushed event), [`Engine::observe`] judges the observed status with the
//! pure [`policy::judge`], records it, and stages what must become visible; [`Engine::end_turn`]
//! commits what a turn staged and publishes it, or undoes it when the store did not take it.
//!
//! A List page of a watched flow: executions it shows take the observation path, new ones join
//! the watch set first, and the page's contents decide whether the discovery round goes on (the
//! rules are in [`crate::engine::discovery`]).

use std::fmt::Display;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::Level;

use crate::api::{ApiError, FlowExecutions, ListPage};
use crate::engine::Engine;
use crate::engine::discovery::{Listed, Next, classify_listed};
use crate::engine::policy::{self, RateFeedback, Verdict};
use crate::engine::pool::{Answer, Job};
use crate::engine::state::ExecutionState;
use crate::model::{
    ApiStatus, ExecutionKey, FlowKey, Observation, ObservedVia, Operation, Outcome, Status,
    Transition, WatchEntry, unix_seconds,
};
use crate::output::internal_events::{CallFailed, CallSucceeded, RateCut, RateRestored};
use crate::output::publisher::Change;

/// A flow the API says does not exist is asked again this many discovery intervals later.
const NOT_FOUND_INTERVALS: u32 = 10;

impl<C: FlowExecutions> Engine<C> {
    pub(super) fn on_answer(&mut self, answer: Answer) {
        match answer {
            Answer::Get(key, Ok(observation), elapsed) => self.polled(key, observation, elapsed),
            Answer::Get(key, Err(error), elapsed) => self.poll_failed(key, error, elapsed),
            Answer::List(flow, Ok(page), elapsed) => self.listed(flow, page, elapsed),
            Answer::List(flow, Err(error), elapsed) => self.list_failed(flow, error, elapsed),
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
        let retry = match &job {
            Job::Get(key) => self.watch.get(key).is_some_and(|s| !s.is_done()),
            Job::List(_) => true,
        };
        if retry {
            self.schedule(job, Instant::now() + self.polling.max_interval);
        }
    }

    /// Counts and logs a call, and adjusts its budget's rate to what its answer says.
    fn call_done(
        &mut self,
        operation: Operation,
        subject: &dyn Display,
        instance_id: &str,
        result: Result<bool, (&ApiError, Level)>,
        elapsed: Duration,
    ) {
        let budget = self.schedule.budget_of(instance_id);
        let (account_id, region) = (budget.account_id.as_str(), budget.region.as_str());
        let error = match result {
            Ok(recovered) => {
                self.publisher.emit(CallSucceeded {
                    operation,
                    subject,
                    instance_id,
                    account_id,
                    region,
                    elapsed,
                    recovered,
                });
                None
            }
            Err((error, level)) => {
                self.publisher.emit(CallFailed {
                    operation,
                    subject,
                    instance_id,
                    account_id,
                    region,
                    outcome: error.outcome(),
                    error,
                    elapsed,
                    level,
                });
                Some(error)
            }
        };
        let feedback = RateFeedback::of(error);
        let Some((budget, rate)) = self.schedule.feedback(instance_id, feedback) else {
            return;
        };
        let (account_id, region) = (budget.account_id.as_str(), budget.region.as_str());
        match (feedback, error) {
            (RateFeedback::Cut { retry_after }, Some(error)) => self.publisher.emit(RateCut {
                operation,
                subject,
                error,
                account_id,
                region,
                rate,
                retry_after,
            }),
            _ => self.publisher.emit(RateRestored {
                account_id,
                region,
                rate,
            }),
        }
    }

    /// A poll answered: the observation takes the one path, and the next poll is planned.
    fn polled(&mut self, key: ExecutionKey, observation: Observation, elapsed: Duration) {
        let previous = self
            .watch
            .get_mut(&key)
            .and_then(|s| s.polls.last_outcome.replace(Outcome::Success));
        let recovered = previous.is_some_and(|p| p != Outcome::Success);
        self.call_done(
            Operation::Get,
            &key,
            &key.instance_id,
            Ok(recovered),
            elapsed,
        );
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
        if let Some(state) = self.watch.get_mut(&key) {
            state.polls.attempts += 1;
        }
        self.plan_next_poll(&key, Instant::now(), wall);
    }

    /// Schedules a running execution's next poll as [`policy::after_success`] decides; nothing
    /// for one that is done.
    pub(super) fn plan_next_poll(&mut self, key: &ExecutionKey, now: Instant, wall: SystemTime) {
        let reconcile = self.push.as_ref().and_then(|p| p.reconcile_every());
        let Some(state) = self.watch.get_mut(key).filter(|s| !s.is_done()) else {
            return;
        };
        let running = state.status == Status::InProgress;
        let plan = if self.polling.adaptive && running && reconcile.is_none() {
            let age = state.age(now, wall);
            age.map(|age| self.health.forecast_mut().plan(key, age))
        } else {
            None
        };
        let bounds = (self.polling.initial_interval, self.polling.max_interval);
        let decision = policy::after_success(state.status, reconcile, plan, bounds);
        if let Some(delay) = self.schedule.delay(decision, &mut state.polls.backoff) {
            self.schedule(Job::Get(key.clone()), now + delay);
        }
    }

    /// A poll failed: the error table decides, and the decision is applied.
    fn poll_failed(&mut self, key: ExecutionKey, error: ApiError, elapsed: Duration) {
        // A pushed change that waited for this poll is applied as pushed.
        if let Some(pushed) = self.release_held(&key, None) {
            self.observe(&key, pushed, ObservedVia::Push, SystemTime::now());
        }
        let now = Instant::now();
        let (previous, not_found) = match self.watch.get_mut(&key) {
            Some(state) => state.failed_with(&error, now),
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
        let log = Err((&error, decision.log));
        self.call_done(Operation::Get, &key, &key.instance_id, log, elapsed);
        let Some(state) = self.watch.get_mut(&key) else {
            return;
        };
        state.polls.attempts += u64::from(decision.attempt);
        state.polls.last_error = Some(error.to_string());
        if state.is_done() {
            // Terminal by a pushed change this poll was for: nothing more to decide.
            return self.schedule.remove(&Job::Get(key));
        }
        let wall = SystemTime::now();
        if let Some(to) = decision.to {
            let t = state.transition_to(to, ObservedVia::Poll, wall);
            self.staged.push(Change::Transition(t));
        }
        if let Some(message) = decision.reject {
            self.staged.push(state.reject(message, wall));
        }
        let done = state.is_done();
        match self.schedule.delay(decision.next, &mut state.polls.backoff) {
            Some(delay) if !done => self.schedule(Job::Get(key), now + delay),
            _ => self.schedule.remove(&Job::Get(key)),
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
        let Some(state) = self.watch.get_mut(key) else {
            return false;
        };
        let dropped = observation.drop_unbelievable_times(unix_seconds(wall));
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
                    self.schedule.remove(&Job::Get(key.clone()));
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

    /// Commits the staged changes in one transaction once their window is over, they are many,
    /// or `force` asks for it now; then lets the engine act on what is durable. When the store did
    /// not take them, every one of them is undone.
    pub(super) fn end_turn(&mut self, force: bool) {
        if !self.staged.ready(force, Instant::now()) {
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

    /// A terminal transition is durable: the series' lifetime starts, and flow health learns
    /// of the run (which may make executions the forecast spared due).
    fn committed(&mut self, t: &Transition, now: Instant) {
        if !t.to.is_terminal() {
            return;
        }
        self.watch.drop_series_later(&t.key, now);
        let expected_end = self
            .watch
            .get(&t.key)
            .and_then(|s| s.run.expected_end.get());
        let due = self.health.learn(t, expected_end, &self.publisher);
        if !due.is_empty() {
            self.reschedule_spared(due, now);
        }
    }

    /// The store did not take a change: the execution goes back to what the store holds, and is
    /// polled again soon, so the next answer detects the change again.
    fn undo(&mut self, change: Change, now: Instant) {
        let key = change.key().clone();
        let Some(state) = self.watch.get_mut(&key) else {
            return;
        };
        state.undo(change);
        if !state.is_done() {
            self.schedule(Job::Get(key), now + self.polling.initial_interval);
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
            let job = Job::Get(key.clone());
            let Some(state) = self.watch.get(&key) else {
                continue;
            };
            if state.is_done() || !self.schedule.is_queued(&job) {
                continue;
            }
            // Never observed: its first poll is now.
            if state.observation.is_none() {
                self.schedule(job, now);
            } else {
                self.plan_next_poll(&key, now, wall);
            }
        }
    }

    /// One page of a flow's discovery round.
    fn listed(&mut self, flow_key: FlowKey, page: ListPage, elapsed: Duration) {
        let previous = self
            .watch
            .flow_mut(&flow_key)
            .and_then(|f| f.lists.last_outcome.replace(Outcome::Success));
        let recovered = previous.is_some_and(|p| p != Outcome::Success);
        self.call_done(
            Operation::List,
            &flow_key,
            &flow_key.instance_id,
            Ok(recovered),
            elapsed,
        );
        // The flow may have been removed by a reload while its request was in flight.
        let Some(flow) = self.watch.flow_mut(&flow_key) else {
            return;
        };
        if flow.answered(&page.invalid) {
            self.publisher.flow_found(&flow_key);
        }
        let wall = SystemTime::now();
        let window_start = flow.window_start(wall);
        let listed: Vec<Listed> = page
            .executions
            .iter()
            .map(|(key, observation)| {
                let known = self.watch.contains(key) || self.publisher.is_known(key);
                classify_listed(known, observation, window_start)
            })
            .collect();
        let found = self.take_listed(&flow_key, &page, &listed, wall);
        self.after_page(flow_key, page, &listed, found, (window_start, wall));
    }

    /// Every execution a page shows takes the observation path; new ones join first, and known
    /// ones that left the watch set while still running come back. Returns how many joined.
    fn take_listed(
        &mut self,
        flow_key: &FlowKey,
        page: &ListPage,
        listed: &[Listed],
        wall: SystemTime,
    ) -> u64 {
        let Some(labels) = self.watch.flow(flow_key).map(|f| f.entry.labels.clone()) else {
            return 0;
        };
        let mut found = 0;
        for ((key, observation), how) in page.executions.iter().zip(listed) {
            let entry = || WatchEntry {
                key: key.clone(),
                labels: labels.clone(),
            };
            if self.watch.contains(key) {
                // Watched already (or the same id twice in one page): one more observation.
                self.observe(key, observation.clone(), ObservedVia::List, wall);
            } else if *how == Listed::New {
                found += u64::from(self.add_discovered(entry(), observation.clone(), wall));
            } else if *how == Listed::Known {
                self.adopt(entry(), observation);
            }
        }
        found
    }

    /// Where the round goes after a page: the next page now, or the next round later.
    fn after_page(
        &mut self,
        flow_key: FlowKey,
        page: ListPage,
        listed: &[Listed],
        found: u64,
        (window_start, wall): (f64, SystemTime),
    ) {
        let Some(flow) = self.watch.flow_mut(&flow_key) else {
            return;
        };
        flow.executions_found += found;
        let judged: Vec<(Listed, &Observation)> = listed
            .iter()
            .copied()
            .zip(page.executions.iter().map(|(_, o)| o))
            .collect();
        let max_pages = self.discovery.max_pages_per_round;
        let next = flow.after_page(&judged, window_start, page.next_token, max_pages);
        let now = Instant::now();
        let at = match next {
            Next::Page(_) => now,
            Next::Done { resume } => {
                flow.round_done(wall, resume.is_some());
                self.publisher
                    .discovery_round_done(&flow_key, unix_seconds(wall));
                now + self.discovery.interval
            }
        };
        self.schedule(Job::List(flow_key), at);
    }

    /// A failed List request: the error table decides when to ask again, and whether the flow
    /// is missing or the round must start over.
    fn list_failed(&mut self, flow_key: FlowKey, error: ApiError, elapsed: Duration) {
        let slow = self.discovery.interval * NOT_FOUND_INTERVALS;
        let (previous, had_token) = match self.watch.flow_mut(&flow_key) {
            Some(flow) => (
                flow.lists.last_outcome.replace(error.outcome()),
                flow.round.as_ref().is_some_and(|r| r.token.is_some()),
            ),
            None => (None, false),
        };
        let decision =
            policy::list_failed(&error, previous, had_token, slow, self.polling.max_interval);
        let log = Err((&error, decision.log));
        self.call_done(
            Operation::List,
            &flow_key,
            &flow_key.instance_id,
            log,
            elapsed,
        );
        // The flow may have been removed by a reload while its request was in flight.
        let Some(flow) = self.watch.flow_mut(&flow_key) else {
            return;
        };
        if flow.failed_with(&error, &decision) {
            self.publisher.flow_missing(&flow_key);
        }
        let delay = self.schedule.delay(decision.next, &mut flow.lists.backoff);
        self.schedule(Job::List(flow_key), Instant::now() + delay.unwrap_or(slow));
    }

    /// Adds an execution found by discovery: its listed state is its first observation (one
    /// event from UNKNOWN), and it is polled unless that state is terminal. Returns whether it
    /// joined.
    fn add_discovered(
        &mut self,
        entry: WatchEntry,
        observation: Observation,
        wall: SystemTime,
    ) -> bool {
        let key = entry.key.clone();
        if !self.join_discovered(entry, observation.start_time, wall) {
            return false;
        }
        self.observe(&key, observation, ObservedVia::List, wall);
        if let Some(state) = self.watch.get(&key) {
            tracing::info!(execution = %key, status = %state.status, via = "list", "discovered a new execution");
        }
        self.plan_next_poll(&key, Instant::now(), wall);
        true
    }

    /// Puts a new execution of a watched flow in the watch set, as UNKNOWN and not yet
    /// scheduled, once the store has recorded it; false when the store did not take it.
    pub(super) fn join_discovered(
        &mut self,
        entry: WatchEntry,
        start_time: Option<f64>,
        wall: SystemTime,
    ) -> bool {
        let key = entry.key.clone();
        let now = unix_seconds(wall);
        let start_time = start_time.filter(|t| crate::model::believable(*t, now));
        if !self.publisher.record_discovered(&key, wall, start_time) {
            return false;
        }
        let mut state = ExecutionState::new(entry, self.schedule.ladder());
        state.found_by_discovery = true;
        self.publisher
            .execution_discovered(&state.entry, state.status);
        self.health.export_freshness_of(&key, &self.publisher);
        self.watch.insert(state);
        true
    }

    /// Takes back into the watch set a known execution that left it while it still runs (an
    /// explicit entry removed while its flow stays watched), without announcing it again.
    pub(super) fn adopt(&mut self, entry: WatchEntry, observation: &Observation) {
        if observation.status != ApiStatus::InProgress {
            return;
        }
        let still_running = self
            .publisher
            .restored(&entry.key)
            .is_none_or(|r| !r.status.is_terminal() && r.rejected.is_none());
        if still_running {
            self.restore_execution(entry, true, Instant::now());
        }
    }
}
