//! The [`Publisher`]: the one way anything the engine learns becomes visible. It owns the store,
//! the event sinks, the metrics and the health state, and keeps one rule: nothing is published
//! that the store does not hold. A turn's changes commit in one transaction; only then are they
//! counted, exported and written to the sinks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::model::{
    ExecutionKey, FlowEntry, FlowKey, Freshness, Observation, Overdue, Status, Transition,
    WatchEntry, unix_seconds,
};
use crate::output::events::{Place, overdue_event, rejected_event, transition_event};
use crate::output::health::Health;
use crate::output::internal_events::{
    InternalEvent, OverdueCommitted, StoreFailed, StoreRecovered, TransitionCommitted,
};
use crate::output::metrics::Metrics;
use crate::output::sinks::Sinks;
use crate::output::store::{FlowOutcomes, Restored, Store, StoreError};

/// How long the sinks get at shutdown to write what they were given.
const FLUSH_BOUND: Duration = Duration::from_secs(3);

/// A change the engine decided on, to commit and then publish.
#[derive(Debug, Clone)]
pub enum Change {
    /// A status change, with its event.
    Transition(Transition),
    /// The API rejected an entry as invalid (ValidationException): polling it stops.
    Rejection {
        key: ExecutionKey,
        status: Status,
        observation: Option<Observation>,
        message: String,
        labels: BTreeMap<String, String>,
        at: SystemTime,
    },
    /// A running execution has run far longer than its flow's runs usually take.
    Overdue(Overdue),
    /// A newer answer with the same status but other times: no event.
    Observed {
        key: ExecutionKey,
        status: Status,
        observation: Observation,
    },
}

impl Change {
    /// The execution it changes.
    pub fn key(&self) -> &ExecutionKey {
        match self {
            Change::Transition(t) => &t.key,
            Change::Overdue(o) => &o.key,
            Change::Rejection { key, .. } | Change::Observed { key, .. } => key,
        }
    }
}

/// A run whose end a commit recorded, with what the store now holds of its flow.
struct FinishedRun {
    key: ExecutionKey,
    status: Status,
    seconds: Option<f64>,
    outcomes: FlowOutcomes,
}

/// An event in the outbox, as the line the sinks write.
struct Written {
    seq: i64,
    line: String,
}

pub struct Publisher {
    store: Store,
    sinks: Sinks,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// The last store error, so a run of the same failure is logged once.
    store_error: Option<String>,
    /// Terminal durations kept per flow (`flow_health.history`).
    history: usize,
    /// The Supply Chain instances watched, with their region and account.
    instances: BTreeMap<String, (String, String)>,
}

impl Publisher {
    pub fn new(
        store: Store,
        sinks: Sinks,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        history: usize,
    ) -> Self {
        let publisher = Self {
            store,
            sinks,
            metrics,
            health,
            store_error: None,
            history,
            instances: BTreeMap::new(),
        };
        publisher.restore_counters();
        publisher
    }

    /// Emits one of flowwatch's own happenings: it is logged and counted together.
    pub fn emit(&self, event: impl InternalEvent) {
        event.emit(&self.metrics, &self.health);
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// An execution joined the watch set with what is known of it: its series start.
    pub fn execution_joined(
        &self,
        entry: &WatchEntry,
        status: Status,
        observation: Option<&Observation>,
    ) {
        let m = &self.metrics;
        let key = &entry.key;
        m.preset_flow_transitions(&key.instance_id, &key.flow_name);
        m.set_status(key, status);
        m.set_execution_labels(key, &entry.labels);
        m.watched_moved(None, Some(status));
        if let Some(observation) = observation {
            m.set_times(key, observation);
            if status == Status::Failed {
                m.set_failure(key, observation.message.as_deref());
            }
        }
    }

    /// An execution left the watch set: its series go; counters stay.
    pub fn execution_left(&self, key: &ExecutionKey, status: Status) {
        self.metrics.watched_moved(Some(status), None);
        self.metrics.drop_execution(key);
    }

    /// Discovery found an execution of a watched flow: it joins the watch set, and is counted.
    pub fn execution_discovered(&self, entry: &WatchEntry, status: Status) {
        self.execution_joined(entry, status, None);
        self.metrics
            .execution_discovered(&entry.key.instance_id, &entry.key.flow_name);
    }

    /// A watched execution's labels changed (a reload).
    pub fn execution_relabelled(&self, key: &ExecutionKey, labels: &BTreeMap<String, String>) {
        self.metrics.relabel_execution(key, labels);
    }

    /// A discovery round of a flow read every page it needed.
    pub fn discovery_round_done(&self, flow: &FlowKey, at: f64) {
        self.metrics
            .discovery_round_done(&flow.instance_id, &flow.flow_name, at);
    }

    /// The API says a watched flow does not exist (logged with the failed call).
    pub fn flow_missing(&self, flow: &FlowKey) {
        self.metrics
            .flow_missing(&flow.instance_id, &flow.flow_name, true);
    }

    /// A flow the API said was missing exists after all.
    pub fn flow_found(&self, flow: &FlowKey) {
        tracing::info!(flow = %flow, "the flow exists: discovery works again");
        self.metrics
            .flow_missing(&flow.instance_id, &flow.flow_name, false);
    }

    /// A terminal execution's `retain_terminal` is over: its series go; it stays watched.
    pub fn series_expired(&self, key: &ExecutionKey) {
        self.metrics.drop_execution(key);
    }

    /// The Supply Chain instances watched now, each with its region and account: those that
    /// joined get their series, those that left lose them, and health tracks the new set.
    pub fn instances_watched<'a>(
        &mut self,
        instances: impl Iterator<Item = (&'a str, &'a str, &'a str)>,
    ) {
        let now: BTreeMap<String, (String, String)> = instances
            .map(|(id, region, account)| {
                (id.to_string(), (region.to_string(), account.to_string()))
            })
            .collect();
        for (id, (region, account)) in &self.instances {
            if now.get(id) != Some(&(region.clone(), account.clone())) {
                self.metrics.instance_left(id, region, account);
            }
        }
        for (id, (region, account)) in &now {
            if self.instances.get(id) != Some(&(region.clone(), account.clone())) {
                self.metrics.instance_watched(id, region, account);
            }
        }
        self.health.set_instances(now.keys().map(String::as_str));
        self.instances = now;
    }

    /// A `[[flow]]` entry is watched: its series start at zero, and its
    /// `expect_success_within` and labels are exported.
    pub fn flow_joined(&self, entry: &FlowEntry) {
        let flow = &entry.key;
        self.metrics
            .watch_discovered_flow(&flow.instance_id, &flow.flow_name);
        self.success_expected_within(flow, entry.expect_success_within);
        self.flow_relabelled(flow, &entry.labels);
    }

    /// A `[[flow]]` entry's labels (set, or changed by a reload).
    pub fn flow_relabelled(&self, flow: &FlowKey, labels: &BTreeMap<String, String>) {
        self.metrics.set_flow_labels(flow, labels);
    }

    /// A `[[flow]]` entry's `expect_success_within` (set, changed by a reload, or gone).
    pub fn success_expected_within(&self, flow: &FlowKey, within: Option<Duration>) {
        self.metrics.success_expected_within(
            &flow.instance_id,
            &flow.flow_name,
            within.map(|d| d.as_secs_f64()),
        );
    }

    /// A flow's last success and failure as they stand (after a committed terminal transition,
    /// a restore, or a `[[flow]]` joining).
    pub fn flow_freshness(&self, flow: &FlowKey, freshness: &Freshness) {
        self.metrics.flow_freshness(
            &flow.instance_id,
            &flow.flow_name,
            freshness.success_or_watched(),
            freshness.last_failure,
        );
    }

    /// A running execution's expected end changed (or went: `None`), or it ended.
    pub fn expectation_changed(
        &self,
        key: &ExecutionKey,
        expected_end: Option<f64>,
        overdue: bool,
    ) {
        self.metrics.set_expectation(key, expected_end, overdue);
    }

    /// What the store knows of every flow's finished runs (empty when it cannot be read).
    pub fn flow_history(
        &mut self,
        history: usize,
    ) -> std::collections::BTreeMap<FlowKey, crate::output::store::FlowHistory> {
        let result = self.store.flow_history(history);
        self.read(result, std::collections::BTreeMap::new())
    }

    /// A `[[flow]]` entry left the watchlist: its discovery series go, and so does its first
    /// sighting; what was discovered stays known.
    pub fn flow_left(&mut self, flow: &FlowKey) {
        self.metrics
            .drop_discovered_flow(&flow.instance_id, &flow.flow_name);
        let result = self.store.forget_flow(flow);
        self.read(result, ());
    }

    /// Brings `flowwatch_transitions_total` back to the stored counts, so `increase()` keeps
    /// working across a restart: the series come back at their old values, not at 0.
    fn restore_counters(&self) {
        match self.store.transition_counts() {
            Ok(counts) => {
                for (instance_id, flow_name, to_status, count) in counts {
                    self.metrics
                        .restore_transitions(&instance_id, &flow_name, &to_status, count);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the stored transition counts"),
        }
    }

    /// Commits a turn's changes in one transaction, then publishes them. Returns false when the
    /// store did not take them: then nothing of them is published, and the engine undoes them.
    pub fn commit(&mut self, changes: &[Change]) -> bool {
        if changes.is_empty() {
            return true;
        }
        let (events, runs) = match self.write(changes) {
            Ok(written) => {
                self.store_recovered();
                written
            }
            Err(e) => {
                self.store_failed(&e);
                return false;
            }
        };
        for change in changes {
            self.publish(change);
        }
        for run in &runs {
            self.run_finished(run);
        }
        for event in &events {
            self.deliver(event);
        }
        true
    }

    /// The store's half of [`Self::commit`]: each change's row, and its event in the outbox;
    /// and for each finished run, its flow's duration and latest outcomes.
    fn write(
        &mut self,
        changes: &[Change],
    ) -> Result<(Vec<Written>, Vec<FinishedRun>), StoreError> {
        let batch = self.store.batch()?;
        let mut events = Vec::with_capacity(changes.len());
        let mut runs = Vec::new();
        for change in changes {
            match change {
                Change::Transition(t) => {
                    let line = transition_event(t, place_of(&self.instances, &t.key));
                    let seq = batch.transition(&t.key, t.to, t.observation.as_ref(), &line)?;
                    events.push(Written { seq, line });
                    if let Some((ended, seconds)) = t.run()
                        && let Some(outcomes) =
                            batch.finished(&t.key, t.to, ended, seconds, self.history)?
                    {
                        runs.push(FinishedRun {
                            key: t.key.clone(),
                            status: t.to,
                            seconds,
                            outcomes,
                        });
                    }
                }
                Change::Overdue(o) => {
                    let line = overdue_event(o, place_of(&self.instances, &o.key));
                    let seq = batch.overdue(&o.key, &line)?;
                    events.push(Written { seq, line });
                }
                Change::Rejection {
                    key,
                    status,
                    observation,
                    message,
                    labels,
                    at,
                } => {
                    let place = place_of(&self.instances, key);
                    let line = rejected_event(key, *status, message, *at, labels, place);
                    let seq =
                        batch.rejection(key, *status, observation.as_ref(), message, &line)?;
                    events.push(Written { seq, line });
                }
                Change::Observed {
                    key,
                    status,
                    observation,
                } => batch.observation(key, *status, observation)?,
            }
        }
        batch.commit()?;
        Ok((events, runs))
    }

    /// A committed run's flow: its duration joins the flow's histogram, and its latest success
    /// and failure are exported as the store now holds them.
    fn run_finished(&self, run: &FinishedRun) {
        let (instance_id, flow_name) = (&run.key.instance_id, &run.key.flow_name);
        self.metrics
            .flow_finished(instance_id, flow_name, run.status, run.seconds);
        let FlowOutcomes {
            last_success,
            last_failure,
        } = run.outcomes;
        self.metrics
            .flow_freshness(instance_id, flow_name, last_success, last_failure);
    }

    fn publish(&self, change: &Change) {
        match change {
            Change::Transition(t) => self.emit(TransitionCommitted(t)),
            Change::Rejection { .. } => {}
            Change::Overdue(o) => self.emit(OverdueCommitted(o)),
            Change::Observed {
                key, observation, ..
            } => self.metrics.set_times(key, observation),
        }
    }

    /// Hands a committed event to the sinks' threads; each marks it written when it has.
    fn deliver(&self, event: &Written) {
        self.sinks.deliver(event.seq, &event.line, &self.metrics);
    }

    /// Tells health which sink, if any, is stuck in a write.
    pub fn check_sinks(&self) {
        self.health.set_stalled_sink(self.sinks.stalled());
    }

    /// Reopens the event file by its path (after log rotation).
    pub fn reopen_sinks(&self) {
        self.sinks.reopen();
    }

    /// Lets the sinks write what they were given before exit, for at most [`FLUSH_BOUND`].
    pub fn flush(&self) {
        self.sinks.flush(FLUSH_BOUND);
    }

    fn store_failed(&mut self, e: &StoreError) {
        let first = self.store_error.as_deref() != Some(e.message.as_str());
        self.store_error = Some(e.message.clone());
        self.emit(StoreFailed { error: e, first });
    }

    fn store_recovered(&mut self) {
        if self.store_error.take().is_some() {
            self.emit(StoreRecovered);
        }
    }

    /// Ships to the shared table what writes outside a commit changed, and lets go of the
    /// events every sink has written (`[state] backend = "dynamodb"`; nothing otherwise).
    pub fn sync_replica(&mut self) {
        let result = self.store.sync_replica();
        self.read(result, ());
    }

    /// A store read's answer, or `fallback` (with the failure reported) when it failed.
    fn read<T>(&mut self, result: Result<T, StoreError>, fallback: T) -> T {
        result.unwrap_or_else(|e| {
            self.store_failed(&e);
            fallback
        })
    }

    /// What the store knew of an execution from an earlier run.
    pub fn restored(&mut self, key: &ExecutionKey) -> Option<Restored> {
        let result = self.store.execution(key);
        self.read(result, None)
    }

    /// Whether an execution is known (watched or discovered) from an earlier run. A failed read
    /// counts as known, so nothing is announced twice; the next round asks again.
    pub fn is_known(&mut self, key: &ExecutionKey) -> bool {
        let result = self.store.is_known(key);
        self.read(result, true)
    }

    /// When flowwatch first watched a flow (now, for a new one).
    pub fn flow_first_seen(&mut self, flow: &FlowKey, now: SystemTime) -> SystemTime {
        let result = self.store.flow_first_seen(flow, now);
        self.read(result, now)
    }

    /// Records an execution discovery found; false when the store did not take it (then it is
    /// not known, and the next round finds it again).
    pub fn record_discovered(
        &mut self,
        key: &ExecutionKey,
        now: SystemTime,
        start_time: Option<f64>,
    ) -> bool {
        let result = self
            .store
            .record_discovered(key, now, start_time)
            .map(|()| true);
        self.read(result, false)
    }

    /// The discovered executions of a flow to watch again at start-up: running ones, and those
    /// that ended after `ended_after` (unix seconds). Rows older than `forget_before` go.
    pub fn discovered_to_restore(
        &mut self,
        flow: &FlowKey,
        ended_after: f64,
        forget_before: SystemTime,
    ) -> Vec<ExecutionKey> {
        let pruned = self
            .store
            .prune_discovered(flow, unix_seconds(forget_before));
        match self.read(pruned, 0) {
            0 => {}
            n => tracing::info!(flow = %flow, executions = n,
                "forgot discovered executions the API no longer lists"),
        }
        let result = self.store.discovered_to_restore(flow, ended_after);
        self.read(result, Vec::new())
    }
}

/// Where `key`'s instance is, as the watched instances say (nothing for one no longer watched).
fn place_of<'a>(
    instances: &'a BTreeMap<String, (String, String)>,
    key: &ExecutionKey,
) -> Place<'a> {
    instances
        .get(&*key.instance_id)
        .map_or_else(Place::default, |(region, account_id)| Place {
            region,
            account_id,
        })
}
