//! Flow health: what each flow's recent runs say about its running executions (when each is
//! expected to end, and whether it is overdue), and when each flow last succeeded and failed.
//!
//! The durations are the forecast's ([`Forecast::median`]), one source of truth for adaptive
//! polling and for flow health: filled from the store at start-up and by every terminal
//! transition committed since, whether polled or listed. Every [`SWEEP`] the engine
//! compares each running execution with its flow's median ([`expectation`], a pure function)
//! and stages one overdue event, once, for an execution that has run too long.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::engine::forecast::Forecast;
use crate::engine::staged::Staged;
use crate::engine::state::ExecutionState;
use crate::input::config::FlowHealthSettings;
use crate::model::{
    ExecutionKey, Expectation, FlowKey, Freshness, Overdue, Seconds, Transition, unix_seconds,
};
use crate::output::publisher::{Change, Publisher};

/// How often running executions are compared with their flow's durations.
pub const SWEEP: Duration = Duration::from_secs(5);

/// When an execution that started at `start` is expected to end, and after how long it is
/// overdue: past both `overdue_factor` × the median and `overdue_min`.
pub fn expectation(start: f64, median: f64, settings: &FlowHealthSettings) -> Expectation {
    Expectation {
        expected_end: start + median,
        median,
        overdue_after: (median * settings.overdue_factor).max(settings.overdue_min.as_secs_f64()),
    }
}

/// The expectation of a running execution of `key`'s flow that started at `start`, once the
/// flow has `min_history` durations.
pub fn expectation_of(
    forecast: &Forecast,
    key: &ExecutionKey,
    start: f64,
    settings: &FlowHealthSettings,
) -> Option<Expectation> {
    let median = forecast.median(&key.instance_id, &key.flow_name, settings.min_history)?;
    Some(expectation(start, median, settings))
}

/// What is known of a flow's finished runs besides their durations, and whether it is exported
/// (only flows watched since start-up are).
#[derive(Debug, Clone, Copy, Default)]
pub struct FlowFreshness {
    pub known: Freshness,
    exported: bool,
}

impl FlowFreshness {
    fn new(known: Freshness) -> Self {
        Self {
            known,
            exported: false,
        }
    }
}

/// Per flow, its [`FlowFreshness`].
pub type FreshnessByFlow = HashMap<FlowKey, FlowFreshness>;

/// Flow health: each flow's recent durations (the forecast), its freshness, and when running
/// executions are next compared with them.
#[derive(Debug)]
pub struct FlowHealth {
    settings: FlowHealthSettings,
    forecast: Forecast,
    /// When each flow last succeeded and failed.
    freshness: FreshnessByFlow,
    /// When running executions are next compared with their flow's durations.
    next_sweep: Instant,
}

impl FlowHealth {
    /// Flow health with each flow's durations and last success and failure from the store. A
    /// flow's freshness is exported once it is watched again ([`Self::export_freshness_of`]).
    pub fn restore(settings: FlowHealthSettings, publisher: &mut Publisher) -> Self {
        let mut forecast = Forecast::new(settings.history);
        let mut freshness = FreshnessByFlow::new();
        for (flow, history) in publisher.flow_history(settings.history) {
            forecast.restore(&flow, &history.durations);
            let known = Freshness {
                last_success: history.last_success,
                last_failure: history.last_failure,
                first_watched: None,
            };
            freshness.insert(flow, FlowFreshness::new(known));
        }
        Self {
            settings,
            forecast,
            freshness,
            next_sweep: Instant::now(),
        }
    }

    pub fn settings(&self) -> &FlowHealthSettings {
        &self.settings
    }

    pub fn forecast(&self) -> &Forecast {
        &self.forecast
    }

    pub fn forecast_mut(&mut self) -> &mut Forecast {
        &mut self.forecast
    }

    /// What is known of `flow`'s finished runs.
    pub fn freshness(&self, flow: &FlowKey) -> Freshness {
        self.freshness
            .get(flow)
            .map(|f| f.known)
            .unwrap_or_default()
    }

    /// When running executions of `key`'s flow that started at `start` should end, and when
    /// they are overdue; `None` until the flow has `min_history` durations.
    pub fn expectation_of(&self, key: &ExecutionKey, start: f64) -> Option<Expectation> {
        expectation_of(&self.forecast, key, start, &self.settings)
    }

    /// An execution of `key`'s flow joined the watch set: what is known of the flow's freshness
    /// is exported, once.
    pub fn export_freshness_of(&mut self, key: &ExecutionKey, publisher: &Publisher) {
        let flow = FlowKey::of(key);
        if let Some(f) = self.freshness.get_mut(&flow)
            && !f.exported
        {
            f.exported = true;
            publisher.flow_freshness(&flow, &f.known);
        }
    }

    /// A `[[flow]]` entry is watched since `first_seen`: with no success known, its freshness is
    /// measured from then.
    pub fn flow_watched_since(
        &mut self,
        flow: &FlowKey,
        first_seen: SystemTime,
        publisher: &Publisher,
    ) {
        let f = self.freshness.entry(flow.clone()).or_default();
        f.known.first_watched = Some(unix_seconds(first_seen));
        f.exported = true;
        publisher.flow_freshness(flow, &f.known);
    }

    /// A terminal transition is durable (and the commit exported its flow's duration and
    /// freshness): the forecast and the freshness the status page shows learn of it, and the
    /// execution, no longer running, is no longer expected to end (`expected_end` was its last
    /// expectation). Returns the executions the forecast spared until now, which the new
    /// duration makes due.
    pub fn learn(
        &mut self,
        t: &Transition,
        expected_end: Option<f64>,
        publisher: &Publisher,
    ) -> Vec<ExecutionKey> {
        let key = &t.key;
        if let Some(expected_end) = expected_end {
            publisher.expectation_changed(key, Some(expected_end), false);
        }
        let run = t.run();
        if let Some((ended, _)) = run {
            let f = self.freshness.entry(FlowKey::of(key)).or_default();
            f.known.finished(t.to, ended);
            f.exported = true;
        }
        // A run without a duration teaches nothing, but still stops counting as a scout.
        let (ended, seconds) = match run {
            Some((ended, Some(seconds))) => (ended, seconds),
            _ => (f64::NAN, f64::NAN),
        };
        self.forecast.forget_execution(key);
        self.forecast.record(key, ended, seconds)
    }

    /// When the next sweep is due.
    pub fn next_sweep(&self) -> Instant {
        self.next_sweep
    }

    /// Compares every running execution with its flow's durations: its expected end is exported
    /// when it changes, and an execution that just became overdue has its event staged.
    pub fn sweep<'a>(
        &mut self,
        running: impl Iterator<Item = (&'a ExecutionKey, &'a mut ExecutionState)>,
        staged: &mut Staged,
        publisher: &Publisher,
        wall: SystemTime,
    ) {
        let now = Instant::now();
        self.next_sweep = now + SWEEP;
        for (key, state) in running {
            let start = state.observation.as_ref().and_then(|o| o.start_time);
            let expected = start.and_then(|start| self.expectation_of(key, start));
            let (Some(start_time), Some(expectation)) = (start, expected) else {
                if state.run.expected_end.get().is_some() {
                    state.run.expected_end = Seconds::default();
                    publisher.expectation_changed(key, None, false);
                }
                continue;
            };
            let running = state.age(now, wall).unwrap_or_default();
            let newly_overdue = !state.run.overdue && running >= expectation.overdue_after;
            if newly_overdue {
                state.run.overdue = true;
                staged.push(Change::Overdue(Overdue {
                    key: key.clone(),
                    start_time,
                    running,
                    expectation,
                    at: wall,
                    labels: state.entry.labels.clone(),
                }));
            }
            if state.run.expected_end.get() != Some(expectation.expected_end) {
                state.run.expected_end = Seconds::of(Some(expectation.expected_end));
                // A new overdue mark shows once it is committed.
                let overdue = state.run.overdue && !newly_overdue;
                publisher.expectation_changed(key, state.run.expected_end.get(), overdue);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Status;

    fn settings(factor: f64, min_secs: u64) -> FlowHealthSettings {
        FlowHealthSettings {
            overdue_factor: factor,
            overdue_min: Duration::from_secs(min_secs),
            ..FlowHealthSettings::default()
        }
    }

    #[test]
    fn a_run_is_expected_at_start_plus_median_and_overdue_past_both_bounds() {
        let e = expectation(1000.0, 300.0, &settings(2.0, 60));
        assert_eq!(e.expected_end, 1300.0);
        assert_eq!(e.median, 300.0);
        assert_eq!(
            e.overdue_after, 600.0,
            "factor x median is the larger bound"
        );
        let short = expectation(1000.0, 10.0, &settings(2.0, 600));
        assert_eq!(
            short.overdue_after, 600.0,
            "overdue_min is the larger bound"
        );
    }

    #[test]
    fn freshness_keeps_the_latest_of_each_outcome_and_falls_back_to_first_watched() {
        let mut f = Freshness {
            first_watched: Some(50.0),
            ..Freshness::default()
        };
        assert_eq!(f.success_or_watched(), Some(50.0));
        f.finished(Status::Succeeded, 200.0);
        f.finished(Status::Succeeded, 100.0);
        f.finished(Status::Failed, 150.0);
        f.finished(Status::NotFound, 999.0);
        assert_eq!(
            f.last_success,
            Some(200.0),
            "an older run found later does not win"
        );
        assert_eq!(f.last_failure, Some(150.0));
        assert_eq!(f.success_or_watched(), Some(200.0));
    }

    #[test]
    fn a_flow_has_an_expectation_only_with_min_history_runs() {
        let mut forecast = Forecast::new(20);
        let key = |n: usize| ExecutionKey::from_checked("i", "f", format!("e{n}"));
        let s = FlowHealthSettings::default();
        for n in 0..2 {
            forecast.record(&key(n), 100.0 + n as f64, 60.0);
        }
        assert_eq!(expectation_of(&forecast, &key(9), 500.0, &s), None);
        forecast.record(&key(2), 200.0, 90.0);
        let e = expectation_of(&forecast, &key(9), 500.0, &s).expect("three runs");
        assert_eq!(e.expected_end, 560.0);
    }
}
