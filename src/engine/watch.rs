//! The watch set: which executions and flows the engine watches, how a new watchlist replaces
//! the old one (entries that stay keep their state and schedule), what comes back from the store
//! at start-up, how long a terminal execution's series stay, and the `/status` document.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::api::FlowExecutions;
use crate::engine::Engine;
use crate::engine::discovery::FlowWatch;
use crate::engine::pacing::startup_offset;
use crate::engine::pool::Job;
use crate::engine::state::{ExecutionState, executions_by_status};
use crate::engine::views::{FlowView, ReloadSummary, StatusQuery, StatusView};
use crate::input::watchlist::Watchlist;
use crate::model::{ExecutionKey, FlowEntry, FlowKey, WatchEntry, unix_seconds};

/// The API lists a year of executions; what is known of older ones can go.
const LISTED_HISTORY: Duration = Duration::from_secs(366 * 24 * 3600);

impl<C: FlowExecutions> Engine<C> {
    /// Installs a new watchlist. New entries' first polls are spread over `initial_interval`.
    /// Discovered executions stay while their flow does.
    pub(super) fn replace(&mut self, watchlist: Watchlist) -> ReloadSummary {
        let now = Instant::now();
        let removed = self.remove_unwanted(&watchlist);
        let mut summary = ReloadSummary {
            removed,
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
                state.found_by_discovery = false;
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
            if self.flows.contains_key(&entry.key) {
                self.relabel_flow(entry);
                continue;
            }
            let offset = startup_offset(i, flow_count, self.polling.initial_interval);
            self.watch_flow(entry, now, now + offset);
        }
        summary
    }

    /// Takes out of the watch set every execution and flow the new watchlist no longer has;
    /// returns how many executions left.
    fn remove_unwanted(&mut self, watchlist: &Watchlist) -> usize {
        let wanted: HashSet<&ExecutionKey> = watchlist.entries.iter().map(|e| &e.key).collect();
        let wanted_flows: HashSet<&FlowKey> = watchlist.flows.iter().map(|f| &f.key).collect();
        let removed: Vec<ExecutionKey> = self
            .executions
            .iter()
            .filter(|(k, s)| {
                let listed = wanted.contains(k);
                let flow_stays = s.found_by_discovery && wanted_flows.contains(&FlowKey::of(k));
                !(listed || flow_stays)
            })
            .map(|(k, _)| k.clone())
            .collect();
        if !removed.is_empty() {
            let gone: HashSet<&ExecutionKey> = removed.iter().collect();
            self.series_drops.retain(|k| !gone.contains(k));
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
            self.unschedule(&Job::List(key.clone()));
            self.flows.remove(key);
            self.publisher.flow_left(key);
            tracing::info!(flow = %key, "flow no longer watched: its discovered executions left the watch set");
        }
        removed.len()
    }

    /// A `[[flow]]` entry that stays takes its new labels (and so do its discovered executions)
    /// and its new `expect_success_within`.
    fn relabel_flow(&mut self, entry: FlowEntry) {
        let Some(flow) = self.flows.get_mut(&entry.key) else {
            return;
        };
        if flow.entry.expect_success_within != entry.expect_success_within {
            self.publisher
                .success_expected_within(&entry.key, entry.expect_success_within);
        }
        if flow.entry.labels != entry.labels {
            for state in self.executions.values_mut() {
                if state.found_by_discovery && FlowKey::of(&state.entry.key) == entry.key {
                    state.entry.labels = entry.labels.clone();
                }
            }
        }
        flow.entry = entry;
    }

    /// Adds an execution to the watch set with what the store knows of it; it is polled from
    /// `first_poll` unless it is done. Returns whether it was scheduled.
    pub(super) fn restore_execution(
        &mut self,
        entry: WatchEntry,
        discovered: bool,
        first_poll: Instant,
    ) -> bool {
        let now = Instant::now();
        let key = entry.key.clone();
        let mut state = ExecutionState::new(entry, self.backoff.start());
        state.found_by_discovery = discovered;
        if let Some(restored) = self.publisher.restored(&key) {
            state.restore(restored, crate::model::unix_seconds(SystemTime::now()));
        }
        let observation = state.observation.as_deref();
        self.publisher
            .execution_joined(&key, state.status, observation);
        self.export_freshness_of(&key);
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
    pub(super) fn forget_execution(&mut self, key: &ExecutionKey) {
        self.unschedule(&Job::Get(key.clone()));
        self.forecast.forget_execution(key);
        if let Some(state) = self.executions.remove(key) {
            self.publisher.execution_left(key, state.status);
        }
        self.series_dropped.remove(key);
    }

    /// Starts watching a `[[flow]]` entry: its discovered executions come back from the store,
    /// and its first discovery round is due at `first_round`.
    fn watch_flow(&mut self, entry: FlowEntry, now: Instant, first_round: Instant) {
        let key = entry.key.clone();
        let wall = SystemTime::now();
        let first_seen = self.publisher.flow_first_seen(&key, wall);
        self.publisher
            .flow_joined(&key, entry.expect_success_within);
        self.flow_watched_since(&key, first_seen);
        let flow = FlowWatch::new(entry, first_seen, self.backoff.start());
        let forget_before = wall.checked_sub(LISTED_HISTORY).unwrap_or(wall);
        let ended_after = unix_seconds(wall) - self.polling.retain_terminal.as_secs_f64();
        let restored = self
            .publisher
            .discovered_to_restore(&key, ended_after, forget_before);
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
        self.schedule_job(Job::List(key), first_round);
    }

    pub(super) fn schedule(&mut self, key: &ExecutionKey, at: Instant) {
        self.schedule_job(Job::Get(key.clone()), at);
    }

    /// Puts `job` in the queue at `at`, moving it if it was queued. Nothing is queued for an
    /// execution or flow that is not watched.
    pub(super) fn schedule_job(&mut self, job: Job, at: Instant) {
        let next = Some(SystemTime::now() + at.saturating_duration_since(Instant::now()));
        let previous = match &job {
            Job::Get(key) => self.executions.get_mut(key).map(|state| {
                state.next_poll = next;
                state.slot.take()
            }),
            Job::List(flow) => self.flows.get_mut(flow).map(|flow| {
                flow.next_round = next;
                flow.slot.take()
            }),
        };
        let Some(previous) = previous else {
            return;
        };
        if let Some(previous) = previous {
            self.due.remove(&previous);
        }
        let slot = Some(self.due.push(at, job.clone()));
        match &job {
            Job::Get(key) => {
                if let Some(state) = self.executions.get_mut(key) {
                    state.slot = slot;
                }
            }
            Job::List(flow) => {
                if let Some(flow) = self.flows.get_mut(flow) {
                    flow.slot = slot;
                }
            }
        }
    }

    pub(super) fn unschedule(&mut self, job: &Job) {
        let slot = match job {
            Job::Get(key) => self.executions.get_mut(key).and_then(|s| s.slot.take()),
            Job::List(flow) => self.flows.get_mut(flow).and_then(|f| f.slot.take()),
        };
        if let Some(slot) = slot {
            self.due.remove(&slot);
        }
    }

    /// The per-execution series of a terminal execution go `retain_terminal` after `now`.
    pub(super) fn drop_series_later(&mut self, key: &ExecutionKey, now: Instant) {
        self.series_drops
            .push(now + self.polling.retain_terminal, key.clone());
    }

    pub(super) fn drop_expired_series(&mut self) {
        self.end_turn(true);
        let now = Instant::now();
        while let Some(key) = self.series_drops.pop_due(now) {
            if self
                .executions
                .get(&key)
                .is_some_and(|s| s.found_by_discovery)
            {
                // Discovered executions leave the watch set too; the store remembers them.
                tracing::debug!(execution = %key, "a terminal discovered execution leaves the watch set");
                self.forget_execution(&key);
                continue;
            }
            tracing::debug!(execution = %key, "dropping the series of a terminal execution");
            self.publisher.series_expired(&key);
            self.series_dropped.insert(key);
        }
    }

    /// The `/status` document, with the executions `query` selects (the counts cover them all).
    pub(super) fn status_view(&self, query: &StatusQuery) -> StatusView {
        let by_status = executions_by_status(self.executions.values().map(|s| &**s));
        let selected = self.executions.values().filter(|s| {
            query.flow.as_ref().is_none_or(|f| {
                *s.entry.key.instance_id == *f.instance_id && *s.entry.key.flow_name == *f.flow_name
            })
        });
        let mut total = 0;
        let mut executions = Vec::new();
        for (i, s) in selected.enumerate() {
            total += 1;
            if i >= query.offset && executions.len() < query.limit {
                executions.push(s.view(!self.series_dropped.contains(&s.entry.key)));
            }
        }
        let next = query.offset + executions.len();
        StatusView {
            watched: self.executions.len(),
            flows: self.flow_views(SystemTime::now()),
            by_status,
            in_flight: self.pool.in_flight(),
            rate_limit_requests_per_second: self.pool.rate(),
            executions_total: total,
            offset: query.offset,
            limit: query.limit,
            next_offset: (next < total).then_some(next),
            push: self.push.as_ref().map(|p| p.view()),
            executions,
        }
    }

    /// Each watched flow as `/status` shows it, with how many executions it found are watched.
    fn flow_views(&self, now: SystemTime) -> Vec<FlowView> {
        let mut per_flow: HashMap<FlowKey, usize> = HashMap::new();
        for state in self.executions.values().filter(|s| s.found_by_discovery) {
            *per_flow.entry(FlowKey::of(&state.entry.key)).or_default() += 1;
        }
        self.flows
            .iter()
            .map(|(k, f)| f.view(per_flow.get(k).copied().unwrap_or(0), now))
            .collect()
    }
}
