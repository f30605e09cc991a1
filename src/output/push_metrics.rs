//! The push family of metrics (DESIGN §4), registered only when `[push]` names a queue, so a
//! daemon without push exports no `flowwatch_push_healthy` to alert on.

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

use crate::model::PushOutcome;

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
}

impl PushMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let messages = IntCounterVec::new(
            Opts::new(
                "flowwatch_push_messages_total",
                "Messages received from the push queue, by what became of them: applied, duplicate, stale, unwatched or malformed (left for the dead-letter queue).",
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
        Ok(Self {
            messages,
            delay,
            healthy,
        })
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
