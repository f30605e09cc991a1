//! How long a flow's executions run, learnt from the ones that finished, and when that says to
//! poll a running execution next.
//!
//! Executions of one flow tend to take about as long every run. For each flow the last
//! [`SAMPLES`] durations (end − start, as the API reports them) are kept sorted. For a running
//! execution of age `a`, the durations longer than `a` are the runs it may still turn out like;
//! the next poll goes at the median of those, so about half of such executions have ended by
//! then, and the next one again at the median of the rest. An execution is spared while it is
//! younger than every duration seen (certainly still running) and polled densely around the time
//! runs like it end. When nothing is known (fewer than [`MIN_SAMPLES`] durations, or the execution
//! has outlived every one of them), the backoff ladder decides, as without a forecast.

use std::collections::{HashMap, VecDeque};

/// Durations kept per flow: the recent ones, so a flow that changes speed is followed.
pub const SAMPLES: usize = 64;
/// Durations needed before they are trusted.
pub const MIN_SAMPLES: usize = 3;

/// The recent durations of one flow.
#[derive(Debug, Default)]
struct Durations {
    recent: VecDeque<f64>,
    sorted: Vec<f64>,
}

impl Durations {
    fn record(&mut self, seconds: f64) {
        if self.recent.len() == SAMPLES
            && let Some(old) = self.recent.pop_front()
            && let Ok(i) = self.sorted.binary_search_by(|d| d.total_cmp(&old))
        {
            self.sorted.remove(i);
        }
        self.recent.push_back(seconds);
        let at = self.sorted.partition_point(|d| *d < seconds);
        self.sorted.insert(at, seconds);
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

/// Durations per flow, by instance and flow name (looked up without allocating).
#[derive(Debug, Default)]
pub struct Forecast {
    flows: HashMap<String, HashMap<String, Durations>>,
}

impl Forecast {
    /// Records a finished execution's duration (seconds; ignored unless finite and positive).
    pub fn record(&mut self, instance_id: &str, flow_name: &str, seconds: f64) {
        if !(seconds.is_finite() && seconds > 0.0) {
            return;
        }
        self.flows
            .entry(instance_id.to_string())
            .or_default()
            .entry(flow_name.to_string())
            .or_default()
            .record(seconds);
    }

    /// Seconds from now until a running execution of age `age` should be polled, or `None` when
    /// the flow's durations say nothing about it.
    pub fn until_next_check(&self, instance_id: &str, flow_name: &str, age: f64) -> Option<f64> {
        self.flows
            .get(instance_id)?
            .get(flow_name)?
            .until_next_check(age)
    }

    /// How many durations are known for a flow.
    pub fn samples(&self, instance_id: &str, flow_name: &str) -> usize {
        self.flows
            .get(instance_id)
            .and_then(|f| f.get(flow_name))
            .map_or(0, |d| d.sorted.len())
    }

    /// Forgets a flow (it left the watchlist).
    pub fn forget(&mut self, instance_id: &str, flow_name: &str) {
        if let Some(flows) = self.flows.get_mut(instance_id) {
            flows.remove(flow_name);
            if flows.is_empty() {
                self.flows.remove(instance_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_forecast_before_enough_runs_or_past_the_longest() {
        let mut f = Forecast::default();
        f.record("i", "f", 60.0);
        f.record("i", "f", 62.0);
        assert_eq!(f.until_next_check("i", "f", 10.0), None);
        f.record("i", "f", 58.0);
        assert_eq!(f.until_next_check("i", "other", 10.0), None);
        // Younger than every run: wait for the median run.
        assert_eq!(f.until_next_check("i", "f", 10.0), Some(50.0));
        // Past the median: the median of the longer runs.
        assert_eq!(f.until_next_check("i", "f", 60.5), Some(1.5));
        // Past the longest: no forecast, the ladder decides.
        assert_eq!(f.until_next_check("i", "f", 63.0), None);
    }

    #[test]
    fn only_recent_durations_count() {
        let mut f = Forecast::default();
        for _ in 0..SAMPLES {
            f.record("i", "f", 10.0);
        }
        for _ in 0..SAMPLES {
            f.record("i", "f", 100.0);
        }
        assert_eq!(f.samples("i", "f"), SAMPLES);
        assert_eq!(f.until_next_check("i", "f", 0.0), Some(100.0));
        f.record("i", "f", f64::NAN);
        f.record("i", "f", -1.0);
        assert_eq!(f.samples("i", "f"), SAMPLES);
    }
}
