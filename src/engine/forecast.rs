//! How long a flow's executions run, learnt from the ones that finished, and when that says to
//! poll a running execution next.
//!
//! Executions of one flow tend to take about as long every run. For each flow the durations
//! (end − start, as the API reports them) of its most recent runs, by end time, are kept sorted:
//! `[flow_health] history` of them, the same durations the store keeps and flow health reads
//! (the median, for an expected end). For a running
//! execution of age `a`, the durations longer than `a` are the runs it may still turn out like;
//! the next poll goes at the median of those, so about half of such executions have ended by
//! then, and the next one again at the median of the rest. An execution is spared while it is
//! younger than every duration seen (certainly still running) and polled densely around the time
//! runs like it end. When the execution has outlived every duration seen, the backoff ladder
//! decides, as without a forecast.
//!
//! Before a flow has [`MIN_SAMPLES`] durations, [`SCOUTS`] of its running executions are its
//! scouts and the others are spared (polled at `max_interval`). While others are spared, the
//! scouts are polled every `initial_interval`, so they end the wait soon after they finish: then
//! their durations say when the others are due, and those are rescheduled at once. A flow with
//! few executions at a time (the usual case) only has scouts, which climb the backoff ladder as
//! without a forecast.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::model::{ExecutionKey, FlowKey};

/// Durations needed before they are trusted.
pub const MIN_SAMPLES: usize = 2;
/// Running executions per flow that climb the ladder while the flow has no forecast yet.
pub const SCOUTS: usize = 3;

/// What to do about a running execution's next poll.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Plan {
    /// Poll in this many seconds: about when runs like it end.
    In(f64),
    /// Climb the backoff ladder.
    Ladder,
    /// Poll at `initial_interval`: a scout that others wait for.
    Dense,
    /// Poll at `max_interval`, or sooner when the flow's scouts have finished.
    Spare,
}

/// The durations of one flow's most recent runs.
#[derive(Debug, Default)]
struct Durations {
    /// (end time, duration) of the most recent runs, by end time.
    recent: VecDeque<(f64, f64)>,
    sorted: Vec<f64>,
}

impl Durations {
    /// Keeps the duration of a run that ended at `ended`, unless `capacity` more recent ones are
    /// known; the oldest goes when there are more.
    fn record(&mut self, ended: f64, seconds: f64, capacity: usize) {
        let at = self.recent.partition_point(|(e, _)| *e <= ended);
        if at == 0 && self.recent.len() >= capacity {
            return;
        }
        self.recent.insert(at, (ended, seconds));
        let i = self.sorted.partition_point(|d| *d < seconds);
        self.sorted.insert(i, seconds);
        while self.recent.len() > capacity {
            if let Some((_, old)) = self.recent.pop_front()
                && let Ok(i) = self.sorted.binary_search_by(|d| d.total_cmp(&old))
            {
                self.sorted.remove(i);
            }
        }
    }

    fn median(&self) -> Option<f64> {
        self.sorted.get(self.sorted.len() / 2).copied()
    }

    fn until_next_check(&self, age: f64) -> Option<f64> {
        if self.sorted.len() < MIN_SAMPLES {
            return None;
        }
        let longer = &self.sorted[self.sorted.partition_point(|d| *d <= age)..];
        let median = longer.get(longer.len() / 2)?;
        Some(median - age)
    }
}

/// What is known of one flow.
#[derive(Debug, Default)]
struct FlowForecast {
    durations: Durations,
    scouts: HashSet<String>,
    spared: HashSet<ExecutionKey>,
    /// New entries polled at start-up while the flow had no forecast.
    admitted: usize,
}

/// Durations per flow, by instance and flow name (looked up without allocating).
#[derive(Debug)]
pub struct Forecast {
    flows: HashMap<String, HashMap<String, FlowForecast>>,
    /// Durations kept per flow (`flow_health.history`).
    capacity: usize,
}

impl Default for Forecast {
    fn default() -> Self {
        Self::new(crate::input::config::FlowHealthSettings::default().history)
    }
}

impl Forecast {
    pub fn new(capacity: usize) -> Self {
        Self {
            flows: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The median of the flow's recent durations, once it has at least `min` of them.
    pub fn median(&self, instance_id: &str, flow_name: &str, min: usize) -> Option<f64> {
        let durations = &self.flows.get(instance_id)?.get(flow_name)?.durations;
        (durations.sorted.len() >= min)
            .then(|| durations.median())
            .flatten()
    }

    /// How many durations are known for a flow.
    pub fn samples(&self, instance_id: &str, flow_name: &str) -> usize {
        self.flows
            .get(instance_id)
            .and_then(|f| f.get(flow_name))
            .map_or(0, |f| f.durations.sorted.len())
    }

    /// The flow's forecast, created when missing. A known flow is found without allocating,
    /// since this runs on every poll of a running execution. Never `None` in practice.
    fn flow_mut(&mut self, instance_id: &str, flow_name: &str) -> Option<&mut FlowForecast> {
        let known = self
            .flows
            .get(instance_id)
            .is_some_and(|flows| flows.contains_key(flow_name));
        if !known {
            self.flows
                .entry(instance_id.to_string())
                .or_default()
                .insert(flow_name.to_string(), FlowForecast::default());
        }
        self.flows
            .get_mut(instance_id)
            .and_then(|flows| flows.get_mut(flow_name))
    }

    /// Records a finished execution's duration (seconds; ignored unless finite and positive)
    /// and when it ended. When this gives the flow its forecast, returns the spared executions,
    /// to reschedule.
    pub fn record(&mut self, key: &ExecutionKey, ended: f64, seconds: f64) -> Vec<ExecutionKey> {
        let capacity = self.capacity;
        let Some(flow) = self.flow_mut(&key.instance_id, &key.flow_name) else {
            return Vec::new();
        };
        flow.scouts.remove(&*key.execution_id);
        if !(seconds.is_finite() && seconds > 0.0 && ended.is_finite()) {
            return Vec::new();
        }
        flow.durations.record(ended, seconds, capacity);
        if flow.durations.sorted.len() >= MIN_SAMPLES {
            flow.scouts.clear();
            let mut due: Vec<ExecutionKey> = flow.spared.drain().collect();
            due.sort();
            due
        } else {
            Vec::new()
        }
    }

    /// Brings back a flow's durations, (end time, seconds), from the store.
    pub fn restore(&mut self, flow: &FlowKey, durations: &[(f64, f64)]) {
        let capacity = self.capacity;
        if let Some(f) = self.flow_mut(&flow.instance_id, &flow.flow_name) {
            for &(ended, seconds) in durations {
                if seconds.is_finite() && seconds > 0.0 && ended.is_finite() {
                    f.durations.record(ended, seconds, capacity);
                }
            }
        }
    }

    /// Whether a newly watched execution waits for its flow's scouts rather than being polled at
    /// start-up: past the first [`SCOUTS`] new entries of a flow with no forecast, it does (and
    /// is polled at `max_interval` at the latest).
    pub fn spare_new(&mut self, key: &ExecutionKey) -> bool {
        let Some(flow) = self.flow_mut(&key.instance_id, &key.flow_name) else {
            return false;
        };
        if flow.durations.sorted.len() >= MIN_SAMPLES {
            return false;
        }
        if flow.admitted < SCOUTS {
            flow.admitted += 1;
            return false;
        }
        flow.spared.insert(key.clone());
        true
    }

    /// Forgets an execution that left the watch set or finished: it neither scouts nor waits.
    pub fn forget_execution(&mut self, key: &ExecutionKey) {
        if let Some(flow) = self
            .flows
            .get_mut(&*key.instance_id)
            .and_then(|flows| flows.get_mut(&*key.flow_name))
        {
            flow.scouts.remove(&*key.execution_id);
            flow.spared.remove(key);
        }
    }

    /// What to do about the next poll of a running execution of age `age` (seconds).
    pub fn plan(&mut self, key: &ExecutionKey, age: f64) -> Plan {
        let Some(flow) = self.flow_mut(&key.instance_id, &key.flow_name) else {
            return Plan::Ladder;
        };
        if flow.durations.sorted.len() >= MIN_SAMPLES {
            return flow
                .durations
                .until_next_check(age)
                .map_or(Plan::Ladder, Plan::In);
        }
        if flow.scouts.contains(&*key.execution_id) {
            return if flow.spared.is_empty() {
                Plan::Ladder
            } else {
                Plan::Dense
            };
        }
        if flow.scouts.len() < SCOUTS {
            flow.scouts.insert(key.execution_id.to_string());
            return Plan::Ladder;
        }
        flow.spared.insert(key.clone());
        Plan::Spare
    }

    /// Seconds from now until a running execution of age `age` should be polled, or `None` when
    /// the flow's durations say nothing about it.
    #[cfg(test)]
    pub fn until_next_check(&self, instance_id: &str, flow_name: &str, age: f64) -> Option<f64> {
        self.flows
            .get(instance_id)?
            .get(flow_name)?
            .durations
            .until_next_check(age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_forecast_before_enough_runs_or_past_the_longest() {
        let mut f = Forecast::default();
        f.record(&key(1), 100.0, 60.0);
        assert_eq!(f.until_next_check("i", "f", 10.0), None);
        f.record(&key(2), 101.0, 62.0);
        f.record(&key(3), 102.0, 58.0);
        assert_eq!(f.median("i", "f", 3), Some(60.0));
        assert_eq!(f.median("i", "f", 4), None, "not enough runs");
        assert_eq!(f.until_next_check("i", "other", 10.0), None);
        // Younger than every run: wait for the median run.
        assert_eq!(f.until_next_check("i", "f", 10.0), Some(50.0));
        // Past the median: the median of the longer runs.
        assert_eq!(f.until_next_check("i", "f", 60.5), Some(1.5));
        // Past the longest: no forecast, the ladder decides.
        assert_eq!(f.until_next_check("i", "f", 63.0), None);
    }

    #[test]
    fn only_the_most_recent_durations_by_end_time_count() {
        let mut f = Forecast::new(5);
        for n in 0..5 {
            f.record(&key(n), 1000.0 + n as f64, 10.0);
        }
        for n in 5..10 {
            f.record(&key(n), 2000.0 + n as f64, 100.0);
        }
        assert_eq!(f.samples("i", "f"), 5);
        assert_eq!(f.until_next_check("i", "f", 0.0), Some(100.0));
        // A run older than every one kept (history found late) does not push a newer one out.
        f.record(&key(20), 500.0, 1.0);
        assert_eq!(f.median("i", "f", 1), Some(100.0));
        f.record(&key(21), 3000.0, f64::NAN);
        f.record(&key(22), 3000.0, -1.0);
        assert_eq!(f.samples("i", "f"), 5);
    }

    fn key(n: usize) -> ExecutionKey {
        ExecutionKey::from_checked("i", "f", format!("e{n}"))
    }

    #[test]
    fn scouts_climb_the_ladder_and_the_others_wait_for_their_durations() {
        let mut f = Forecast::default();
        for n in 0..SCOUTS {
            assert_eq!(f.plan(&key(n), 1.0), Plan::Ladder);
        }
        assert_eq!(
            f.plan(&key(0), 6.0),
            Plan::Ladder,
            "alone, a scout climbs the ladder"
        );
        assert_eq!(f.plan(&key(10), 1.0), Plan::Spare);
        assert_eq!(f.plan(&key(11), 1.0), Plan::Spare);
        assert_eq!(f.plan(&key(10), 9.0), Plan::Spare, "spared once");
        assert_eq!(f.plan(&key(0), 12.0), Plan::Dense, "others wait for it");
        assert!(f.record(&key(0), 100.0, 30.0).is_empty());
        let due = f.record(&key(1), 101.0, 32.0);
        assert_eq!(due, vec![key(10), key(11)]);
        assert_eq!(f.plan(&key(10), 20.0), Plan::In(12.0));
        assert_eq!(
            f.plan(&key(2), 20.0),
            Plan::In(12.0),
            "scouts follow the forecast too"
        );
    }

    #[test]
    fn new_entries_past_the_scouts_wait_until_the_flow_has_a_forecast() {
        let mut f = Forecast::default();
        let spared: Vec<bool> = (0..5).map(|n| f.spare_new(&key(n))).collect();
        assert_eq!(spared, [false, false, false, true, true]);
        f.record(&key(0), 100.0, 30.0);
        assert_eq!(f.record(&key(1), 101.0, 30.0), vec![key(3), key(4)]);
        assert!(!f.spare_new(&key(5)), "with a forecast, nothing waits");
    }

    #[test]
    fn executions_that_leave_are_forgotten_so_nothing_grows() {
        let mut f = Forecast::default();
        for n in 0..1000 {
            f.spare_new(&key(n));
        }
        for n in 0..1000 {
            f.forget_execution(&key(n));
        }
        let flow = &f.flows["i"]["f"];
        assert!(flow.spared.is_empty() && flow.scouts.is_empty());
    }
}
