//! flowwatch's own happenings, one type each. Emitting one logs it and counts it together, so a
//! log line never goes without its metric, nor a metric without its log line.

use std::fmt::Display;
use std::time::Duration;

use tracing::Level;

use crate::model::{Operation, Outcome, Overdue, Transition};
use crate::output::health::Health;
use crate::output::metrics::Metrics;

/// Something that happened inside flowwatch.
pub trait InternalEvent {
    fn emit(self, metrics: &Metrics, health: &Health);
}

/// A call to the API answered.
pub struct CallSucceeded<'a> {
    pub operation: Operation,
    pub subject: &'a dyn Display,
    /// The Supply Chain instance it was about, and its budget's account and region.
    pub instance_id: &'a str,
    pub account_id: &'a str,
    pub region: &'a str,
    pub elapsed: Duration,
    /// The call before it failed.
    pub recovered: bool,
}

impl InternalEvent for CallSucceeded<'_> {
    fn emit(self, metrics: &Metrics, health: &Health) {
        let seconds = self.elapsed.as_secs_f64();
        metrics.record_request(
            self.operation,
            Outcome::Success,
            self.account_id,
            self.region,
            seconds,
        );
        if let Some(up) = health.record(self.instance_id, Outcome::Success, String::new) {
            metrics.instance_up(self.instance_id, up);
        }
        if self.recovered {
            tracing::info!(subject = %self.subject, operation = self.operation.as_str(),
                "{} works again", what(self.operation));
        }
    }
}

/// A call to the API failed; `level` is how loudly (repeats are quieter).
pub struct CallFailed<'a> {
    pub operation: Operation,
    pub subject: &'a dyn Display,
    /// The Supply Chain instance it was about, and its budget's account and region.
    pub instance_id: &'a str,
    pub account_id: &'a str,
    pub region: &'a str,
    pub outcome: Outcome,
    pub error: &'a dyn Display,
    pub elapsed: Duration,
    pub level: Level,
}

impl InternalEvent for CallFailed<'_> {
    fn emit(self, metrics: &Metrics, health: &Health) {
        let seconds = self.elapsed.as_secs_f64();
        metrics.record_request(
            self.operation,
            self.outcome,
            self.account_id,
            self.region,
            seconds,
        );
        if let Some(up) = health.record(self.instance_id, self.outcome, || self.error.to_string()) {
            metrics.instance_up(self.instance_id, up);
        }
        let (subject, operation, outcome, error) = (
            self.subject,
            self.operation.as_str(),
            self.outcome.metric_label(),
            self.error,
        );
        let what = what(self.operation);
        const REPEATS: &str = "repeats are logged at debug until the outcome changes";
        match self.level {
            Level::ERROR => {
                tracing::error!(subject = %subject, operation, outcome, error = %error, "{what} failed ({REPEATS})")
            }
            Level::WARN => {
                tracing::warn!(subject = %subject, operation, outcome, error = %error, "{what} failed ({REPEATS})")
            }
            _ => {
                tracing::debug!(subject = %subject, operation, outcome, error = %error, "{what} failed again")
            }
        }
    }
}

/// What a call of `operation` is for, in a log line's words.
fn what(operation: Operation) -> &'static str {
    match operation {
        Operation::Get => "polling",
        Operation::List => "discovery",
        Operation::ReceiveMessage => "receiving pushed events",
        Operation::DeleteMessageBatch => "deleting applied pushed events",
        Operation::DescribeTable => "checking the state table",
        Operation::GetItem | Operation::PutItem | Operation::UpdateItem => "the lease",
        Operation::TransactWriteItems => "committing to the state table",
        Operation::Query => "reading the state table",
    }
}

/// The API throttled a call and the global rate was cut.
pub struct RateCut<'a> {
    pub operation: Operation,
    pub subject: &'a dyn Display,
    pub error: &'a dyn Display,
    /// The budget whose rate was cut (`""`: the base credentials' account).
    pub account_id: &'a str,
    pub region: &'a str,
    pub rate: f64,
    pub retry_after: Option<Duration>,
}

impl InternalEvent for RateCut<'_> {
    fn emit(self, metrics: &Metrics, _health: &Health) {
        metrics.rate_changed(self.account_id, self.region, self.rate);
        tracing::warn!(subject = %self.subject, operation = self.operation.as_str(), error = %self.error,
            account_id = self.account_id, region = self.region,
            rate = self.rate, retry_after = %self.retry_after.map_or_else(|| "none".to_string(),
                |d| humantime::format_duration(d).to_string()),
            "the API is throttling: the request rate of this account and region is cut");
    }
}

/// A budget's rate grew back after answers.
pub struct RateRestored<'a> {
    pub account_id: &'a str,
    pub region: &'a str,
    pub rate: f64,
}

impl InternalEvent for RateRestored<'_> {
    fn emit(self, metrics: &Metrics, _health: &Health) {
        metrics.rate_changed(self.account_id, self.region, self.rate);
    }
}

/// A transition is in the store: it is counted, exported and logged.
pub struct TransitionCommitted<'a>(pub &'a Transition);

impl InternalEvent for TransitionCommitted<'_> {
    fn emit(self, metrics: &Metrics, _health: &Health) {
        let t = self.0;
        let key = &t.key;
        tracing::info!(execution = %key, from = %t.from, to = %t.to, via = t.via.as_str(),
            "status transition");
        metrics.transition(&key.instance_id, &key.flow_name, t.to);
        metrics.set_status(key, t.to);
        metrics.watched_moved(Some(t.from), Some(t.to));
        if let Some(observation) = &t.observation {
            metrics.set_times(key, observation);
        }
        if t.to == crate::model::Status::Failed {
            let message = t.observation.as_ref().and_then(|o| o.message.as_deref());
            metrics.set_failure(key, message);
        }
    }
}

/// A running execution became overdue, and that is committed.
pub struct OverdueCommitted<'a>(pub &'a Overdue);

impl InternalEvent for OverdueCommitted<'_> {
    fn emit(self, metrics: &Metrics, _health: &Health) {
        let o = self.0;
        let e = &o.expectation;
        tracing::warn!(execution = %o.key, running_seconds = o.running.round(),
            median_seconds = e.median, expected_end = %crate::model::rfc3339_from_secs(e.expected_end),
            "execution overdue: running far longer than its flow's runs usually take");
        metrics.set_expectation(&o.key, Some(e.expected_end), true);
    }
}

/// The state database could not be written; `first` for the first failure of a run of them.
pub struct StoreFailed<'a> {
    pub error: &'a dyn Display,
    pub first: bool,
}

impl InternalEvent for StoreFailed<'_> {
    fn emit(self, _metrics: &Metrics, health: &Health) {
        if self.first {
            tracing::error!(error = %self.error,
                "cannot write the state database; transitions wait until it is writable again");
        }
        health.set_store_error(Some(self.error.to_string()));
    }
}

/// The state database takes writes again.
pub struct StoreRecovered;

impl InternalEvent for StoreRecovered {
    fn emit(self, _metrics: &Metrics, health: &Health) {
        tracing::info!("the state database is writable again");
        health.set_store_error(None);
    }
}

/// A call to the push queue answered or failed. It is counted only: push failures never make
/// flowwatch unready, since polling covers every execution.
pub struct QueueCall {
    pub operation: Operation,
    pub outcome: Outcome,
    pub elapsed: Duration,
}

impl InternalEvent for QueueCall {
    fn emit(self, metrics: &Metrics, _health: &Health) {
        metrics.record_queue_request(self.operation, self.outcome, self.elapsed.as_secs_f64());
    }
}

/// Receiving from the push queue works: for the first time, or again.
pub struct PushWorking<'a> {
    pub queue_url: &'a str,
    pub again: bool,
}

impl InternalEvent for PushWorking<'_> {
    fn emit(self, metrics: &Metrics, _health: &Health) {
        if let Some(push) = metrics.push() {
            push.healthy(true);
        }
        if self.again {
            tracing::info!(
                queue = self.queue_url,
                "receiving pushed events works again: running executions are polled only to reconcile"
            );
        } else {
            tracing::info!(
                queue = self.queue_url,
                "receiving pushed events: running executions are polled only to reconcile"
            );
        }
    }
}

/// Receiving from the push queue failed; `first` for the first failure of a run of them.
pub struct PushFailing<'a> {
    pub queue_url: &'a str,
    pub error: &'a dyn Display,
    pub first: bool,
    pub retry_in: Duration,
}

impl InternalEvent for PushFailing<'_> {
    fn emit(self, metrics: &Metrics, _health: &Health) {
        if let Some(push) = metrics.push() {
            push.healthy(false);
        }
        let retry_in = humantime::format_duration(self.retry_in).to_string();
        if self.first {
            tracing::warn!(queue = self.queue_url, error = %self.error, retry_in,
                "cannot receive pushed events: polling runs at its normal pace until receiving works again (repeats are logged at debug)");
        } else {
            tracing::debug!(queue = self.queue_url, error = %self.error, retry_in, "receiving pushed events failed again");
        }
    }
}

/// What became of one pushed message; `delay` is from the event's time to now, for applied ones.
pub struct PushMessage {
    pub outcome: crate::model::PushOutcome,
    pub delay: Option<f64>,
}

impl InternalEvent for PushMessage {
    fn emit(self, metrics: &Metrics, _health: &Health) {
        if let Some(push) = metrics.push() {
            push.message(self.outcome);
            if let Some(delay) = self.delay {
                push.delay(delay);
            }
        }
    }
}

/// A pushed message flowwatch cannot read: counted each time it comes, logged the first time.
pub struct PushMalformed<'a> {
    pub message_id: &'a str,
    pub problem: &'a str,
    pub first: bool,
}

impl InternalEvent for PushMalformed<'_> {
    fn emit(self, metrics: &Metrics, health: &Health) {
        PushMessage {
            outcome: crate::model::PushOutcome::Malformed,
            delay: None,
        }
        .emit(metrics, health);
        if self.first {
            tracing::warn!(
                message_id = self.message_id,
                problem = self.problem,
                "a pushed message is not a status change flowwatch can read: it stays in the queue, whose redrive policy moves it to the dead-letter queue"
            );
        }
    }
}

/// A pushed message flowwatch read but does not believe: its end is contradicted by the API's
/// answer (`contradicted`), or its envelope by its own flowArn or the instance's region
/// (`unwatched`). Counted each time, logged the first time for its execution or problem.
pub struct PushRefused<'a> {
    pub outcome: crate::model::PushOutcome,
    pub execution: &'a crate::model::ExecutionKey,
    pub problem: &'a str,
    pub first: bool,
}

impl InternalEvent for PushRefused<'_> {
    fn emit(self, metrics: &Metrics, health: &Health) {
        PushMessage {
            outcome: self.outcome,
            delay: None,
        }
        .emit(metrics, health);
        if self.first {
            tracing::warn!(execution = %self.execution, outcome = self.outcome.as_str(),
                problem = self.problem,
                "a pushed message was not applied: the execution is polled on its own ladder (logged once per execution or problem)");
        }
    }
}

/// Applied messages could not be deleted from the queue: they come back after their visibility
/// timeout, and applying them again changes nothing.
pub struct PushDeleteFailed<'a> {
    pub messages: usize,
    pub error: &'a dyn Display,
}

impl InternalEvent for PushDeleteFailed<'_> {
    fn emit(self, _metrics: &Metrics, _health: &Health) {
        tracing::warn!(messages = self.messages, error = %self.error,
            "cannot delete applied pushed messages: they will be received again, and change nothing");
    }
}
