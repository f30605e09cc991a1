//! The push family of metrics (DESIGN §4), registered only when `[push]` names a queue, so a
//! daemon without push exports no `flowwatch_push_healthy` to alert on.

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

use crate::model::{Operation, Outcome, PushOutcome};

/// Buckets of `flowwatch_push_delay_seconds`: EventBridge and SQS usually take well under a
/// second; minutes mean a backlog.
const DELAY_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

#[derive(Debug, Clone)]
pub struct PushMetrics {
    messages: IntCounterVec,
    delay: Histogram,
    healthy: Gauge,
    /// `flowwatch_api_requests_total` and `_duration_seconds` of the SQS calls, by
    /// [`Operation::PUSH`] (and outcome), created at 0 here.
    request_counts: Vec<IntCounter>,
    request_durations: Vec<Histogram>,
}

impl PushMetrics {
    /// `queue` is the queue's account and region, the labels of its calls' request series.
    pub fn register(
        registry: &Registry,
        requests: &IntCounterVec,
        durations: &HistogramVec,
        queue: [&str; 2],
    ) -> prometheus::Result<Self> {
        let messages = IntCounterVec::new(
            Opts::new(
                "flowwatch_push_messages_total",
                "Messages received from the push queue, by what became of them: applied, duplicate, stale, unwatched, malformed (left for the dead-letter queue) or contradicted (an end the API still denies).",
            ),
            &["outcome"],
        )?;
        let delay = Histogram::with_opts(
            HistogramOpts::new(
                "flowwatch_push_delay_seconds",
                "From a pushed event's time (when EventBridge received it) to flowwatch applying it.",
            )
            .buckets(DELAY_BUCKETS.to_vec()),
        )?;
        let healthy = Gauge::new(
            "flowwatch_push_healthy",
            "1 while receiving from the push queue works, else 0 (polling then runs at its normal pace).",
        )?;
        registry.register(Box::new(messages.clone()))?;
        registry.register(Box::new(delay.clone()))?;
        registry.register(Box::new(healthy.clone()))?;
        for outcome in PushOutcome::ALL {
            messages.with_label_values(&[outcome.as_str()]).reset();
        }
        let mut request_counts = Vec::new();
        let mut request_durations = Vec::new();
        for operation in Operation::PUSH {
            for outcome in Outcome::ALL {
                let labels = [
                    operation.as_str(),
                    outcome.metric_label(),
                    queue[0],
                    queue[1],
                ];
                request_counts.push(requests.with_label_values(&labels));
            }
            request_durations.push(durations.with_label_values(&[operation.as_str()]));
        }
        Ok(Self {
            messages,
            delay,
            healthy,
            request_counts,
            request_durations,
        })
    }

    /// One SQS call of push.
    pub fn record_request(&self, operation: Operation, outcome: Outcome, seconds: f64) {
        let Some(op) = Operation::PUSH.iter().position(|o| *o == operation) else {
            return;
        };
        if let Some(counter) = self
            .request_counts
            .get(op * Outcome::ALL.len() + outcome as usize)
        {
            counter.inc();
        }
        if let Some(histogram) = self.request_durations.get(op) {
            histogram.observe(seconds);
        }
    }

    pub fn message(&self, outcome: PushOutcome) {
        self.messages.with_label_values(&[outcome.as_str()]).inc();
    }

    pub fn delay(&self, seconds: f64) {
        if seconds.is_finite() {
            self.delay.observe(seconds.max(0.0));
        }
    }

    pub fn healthy(&self, healthy: bool) {
        self.healthy.set(if healthy { 1.0 } else { 0.0 });
    }
}
