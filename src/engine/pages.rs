//! What a List page of a watched flow does: executions it shows take the one observation path,
//! new ones join the watch set first, and the page's contents decide whether the discovery round
//! goes on (the rules are in [`crate::engine::discovery`]).

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::api::{ApiError, FlowExecutions, ListPage};
use crate::engine::Engine;
use crate::engine::discovery::{Listed, Next, classify_listed};
use crate::engine::observe::resolve;
use crate::engine::policy;
use crate::engine::pool::Job;
use crate::engine::state::ExecutionState;
use crate::model::{
    ApiStatus, FlowKey, Observation, ObservedVia, Operation, Outcome, WatchEntry, unix_seconds,
};

/// A flow the API says does not exist is asked again this many discovery intervals later.
const NOT_FOUND_INTERVALS: u32 = 10;

impl<C: FlowExecutions> Engine<C> {
    /// Handles one page of a flow's discovery round.
    pub(super) fn on_page(
        &mut self,
        flow_key: FlowKey,
        result: Result<ListPage, ApiError>,
        elapsed: Duration,
    ) {
        let outcome = result
            .as_ref()
            .map_or_else(ApiError::outcome, |_| Outcome::Success);
        let previous = self
            .flows
            .get_mut(&flow_key)
            .and_then(|f| f.last_outcome.replace(outcome));
        let page = match result {
            Ok(page) => page,
            Err(error) => return self.list_failed(flow_key, error, previous, elapsed),
        };
        let recovered = previous.is_some_and(|p| p != Outcome::Success);
        self.call_done(Operation::List, &flow_key, Ok(recovered), elapsed);
        // The flow may have been removed by a reload while its request was in flight.
        let Some(flow) = self.flows.get_mut(&flow_key) else {
            return;
        };
        if flow.missing {
            flow.missing = false;
            self.publisher.flow_found(&flow_key);
        }
        flow.last_error = None;
        flow.backoff.reset();
        let wall = SystemTime::now();
        let window_start = flow.window_start(wall);
        for problem in &page.invalid {
            if flow.invalid_logged.first(problem) {
                tracing::warn!(flow = %flow_key, problem = %problem,
                    "skipping a listed execution that breaks the wire format (repeats are logged at debug)");
            } else {
                tracing::debug!(flow = %flow_key, problem = %problem,
                    "skipping a listed execution that breaks the wire format");
            }
        }
        let listed: Vec<Listed> = page
            .executions
            .iter()
            .map(|(key, observation)| {
                let known = self.executions.contains_key(key) || self.publisher.is_known(key);
                classify_listed(known, observation, window_start)
            })
            .collect();
        let found = self.take_listed(&flow_key, &page, &listed, wall);
        self.after_page(flow_key, page, &listed, found, window_start, wall);
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
        let Some(labels) = self.flows.get(flow_key).map(|f| f.entry.labels.clone()) else {
            return 0;
        };
        let mut found = 0;
        for ((key, observation), how) in page.executions.iter().zip(listed) {
            let entry = || WatchEntry {
                key: key.clone(),
                labels: labels.clone(),
            };
            if self.executions.contains_key(key) {
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
        window_start: f64,
        wall: SystemTime,
    ) {
        let Some(flow) = self.flows.get_mut(&flow_key) else {
            return;
        };
        flow.executions_found += found;
        let judged: Vec<(Listed, &Observation)> = listed
            .iter()
            .copied()
            .zip(page.executions.iter().map(|(_, o)| o))
            .collect();
        let max_pages = self.discovery.max_pages_per_round;
        let now = Instant::now();
        match flow.after_page(&judged, window_start, page.next_token, max_pages) {
            Next::Page(_) => self.schedule_job(Job::List(flow_key), now),
            Next::Done { resume } => {
                flow.last_success = Some(wall);
                tracing::debug!(flow = %flow_key, pages = flow.last_round_pages, "discovery round done");
                if resume.is_some() {
                    tracing::info!(flow = %flow_key, pages = flow.last_round_pages,
                        "discovery stopped at discovery.max_pages_per_round with new executions still coming: the next round goes on from there");
                }
                self.publisher
                    .discovery_round_done(&flow_key, unix_seconds(wall));
                self.schedule_job(Job::List(flow_key), now + self.discovery.interval);
            }
        }
    }

    /// A failed List request: the error table decides when to ask again, and whether the flow
    /// is missing or the round must start over.
    fn list_failed(
        &mut self,
        flow_key: FlowKey,
        error: ApiError,
        previous: Option<Outcome>,
        elapsed: Duration,
    ) {
        let slow = self.discovery.interval * NOT_FOUND_INTERVALS;
        let had_token = self
            .flows
            .get(&flow_key)
            .and_then(|f| f.round.as_ref())
            .is_some_and(|r| r.token.is_some());
        let decision =
            policy::list_failed(&error, previous, had_token, slow, self.polling.max_interval);
        let subject = &flow_key;
        self.call_done(
            Operation::List,
            subject,
            Err((&error, decision.log)),
            elapsed,
        );
        let Some(flow) = self.flows.get_mut(&flow_key) else {
            return;
        };
        flow.last_error = Some(error.to_string());
        if decision.abandon_round {
            flow.abandon_round();
        }
        if decision.flow_missing && !flow.missing {
            flow.missing = true;
            self.publisher.flow_missing(&flow_key);
        }
        let Some(flow) = self.flows.get_mut(&flow_key) else {
            return;
        };
        let delay = resolve(decision.next, &mut flow.backoff, &mut self.rng).unwrap_or(slow);
        self.schedule_job(Job::List(flow_key), Instant::now() + delay);
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
        if let Some(state) = self.executions.get(&key) {
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
        let now = crate::model::unix_seconds(wall);
        let start_time = start_time.filter(|t| crate::model::believable(*t, now));
        if !self.publisher.record_discovered(&key, wall, start_time) {
            return false;
        }
        let mut state = ExecutionState::new(entry, self.backoff.start());
        state.found_by_discovery = true;
        self.publisher.execution_discovered(&key, state.status);
        self.export_freshness_of(&key);
        self.executions.insert(key, Box::new(state));
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
