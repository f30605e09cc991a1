//! The Prometheus metrics of DESIGN §4, in a [`Metrics`] struct that owns its own registry.

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use std::collections::HashMap;
use std::sync::Mutex;

use crate::aws::{LIST_OPERATION, OPERATION, Observation, Outcome};
use crate::state::Status;
use crate::watchlist::ExecutionKey;

/// Every metric flowwatch exports.
pub struct Metrics {
    registry: Registry,
    pub execution_status: GaugeVec,
    pub execution_start_time: GaugeVec,
    pub execution_end_time: GaugeVec,
    pub execution_failure: GaugeVec,
    /// The message label each exported failure series carries, to find the series again.
    failure_messages: Mutex<HashMap<ExecutionKey, String>>,
    pub transitions: IntCounterVec,
    pub watched: IntGaugeVec,
    pub api_requests: IntCounterVec,
    pub api_duration: HistogramVec,
    pub rate_limit: Gauge,
    pub schedule_lag: Gauge,
    pub events: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_success: Gauge,
    pub config_last_reload_successful: Gauge,
    pub discovered: IntCounterVec,
    pub discovery_last_success: GaugeVec,
    pub discovery_flow_not_found: IntGaugeVec,
    /// Whether per-execution status and time series are exported.
    per_execution: bool,
}

const FLOW_LABELS: [&str; 2] = ["instance_id", "flow_name"];

const EXECUTION_LABELS: [&str; 3] = ["instance_id", "flow_name", "execution_id"];

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        Self::with_per_execution(true)
    }

    /// `per_execution = false` leaves out the per-execution status and time series.
    pub fn with_per_execution(per_execution: bool) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let execution_status = GaugeVec::new(
            Opts::new(
                "flowwatch_execution_status",
                "Current status of a watched flow execution: 1 for its status, 0 for the others.",
            ),
            &["instance_id", "flow_name", "execution_id", "status"],
        )?;
        let execution_start_time = GaugeVec::new(
            Opts::new(
                "flowwatch_execution_start_time_seconds",
                "Start time of the flow execution as reported by the API (unix seconds).",
            ),
            &EXECUTION_LABELS,
        )?;
        let execution_end_time = GaugeVec::new(
            Opts::new(
                "flowwatch_execution_end_time_seconds",
                "End time of the flow execution as reported by the API (unix seconds).",
            ),
            &EXECUTION_LABELS,
        )?;
        let execution_failure = GaugeVec::new(
            Opts::new(
                "flowwatch_execution_failure_info",
                "Always 1 for a FAILED flow execution; its message label carries the API's failure message (at most 256 characters).",
            ),
            &["instance_id", "flow_name", "execution_id", "message"],
        )?;
        let transitions = IntCounterVec::new(
            Opts::new(
                "flowwatch_transitions_total",
                "Status transitions seen, per flow and target status; pre-set to 0 for every watched flow.",
            ),
            &["instance_id", "flow_name", "to_status"],
        )?;
        let watched = IntGaugeVec::new(
            Opts::new(
                "flowwatch_watched_executions",
                "Watched flow executions by current status.",
            ),
            &["status"],
        )?;
        let api_requests = IntCounterVec::new(
            Opts::new(
                "flowwatch_api_requests_total",
                "Supply Chain API requests by operation and outcome.",
            ),
            &["operation", "outcome"],
        )?;
        let api_duration = HistogramVec::new(
            HistogramOpts::new(
                "flowwatch_api_request_duration_seconds",
                "Duration of Supply Chain API requests, whatever their outcome.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["operation"],
        )?;
        let rate_limit = Gauge::new(
            "flowwatch_rate_limit_requests_per_second",
            "Current rate of the global API token bucket (cut on throttling, restored on success).",
        )?;
        let schedule_lag = Gauge::new(
            "flowwatch_schedule_lag_seconds",
            "How long the most overdue queued request (a poll or a List page) has waited past its \
             due time for a request slot or a rate-limit token; 0 when none is overdue.",
        )?;
        let events = IntCounterVec::new(
            Opts::new(
                "flowwatch_events_total",
                "Events written, per sink and result.",
            ),
            &["sink", "result"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("flowwatch_build_info", "Build information; always 1."),
            &["version"],
        )?;

        let config_reloads = IntCounterVec::new(
            Opts::new(
                "flowwatch_config_reloads_total",
                "Watchlist reloads (SIGHUP, POST /-/reload, or a change of the file), by result.",
            ),
            &["result"],
        )?;
        let config_last_reload_success = Gauge::new(
            "flowwatch_config_last_reload_success_timestamp_seconds",
            "When the watchlist was last loaded successfully (unix seconds); start-up counts.",
        )?;
        let config_last_reload_successful = Gauge::new(
            "flowwatch_config_last_reload_successful",
            "1 if the last watchlist reload succeeded, 0 if it was refused (the old watchlist keeps running).",
        )?;
        let discovered = IntCounterVec::new(
            Opts::new(
                "flowwatch_discovered_executions_total",
                "Executions of [[flow]] entries found by ListDataIntegrationFlowExecutions and added to the watch set.",
            ),
            &FLOW_LABELS,
        )?;
        let discovery_last_success = GaugeVec::new(
            Opts::new(
                "flowwatch_discovery_last_success_timestamp_seconds",
                "When a discovery round of the flow last completed without error (unix seconds).",
            ),
            &FLOW_LABELS,
        )?;
        let discovery_flow_not_found = IntGaugeVec::new(
            Opts::new(
                "flowwatch_discovery_flow_not_found",
                "1 while the API answers ResourceNotFoundException for the flow of a [[flow]] entry (it does not exist), else 0.",
            ),
            &FLOW_LABELS,
        )?;
        registry.register(Box::new(discovered.clone()))?;
        registry.register(Box::new(discovery_last_success.clone()))?;
        registry.register(Box::new(discovery_flow_not_found.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(config_last_reload_success.clone()))?;
        registry.register(Box::new(config_last_reload_successful.clone()))?;
        registry.register(Box::new(execution_status.clone()))?;
        registry.register(Box::new(execution_start_time.clone()))?;
        registry.register(Box::new(execution_end_time.clone()))?;
        registry.register(Box::new(execution_failure.clone()))?;
        registry.register(Box::new(transitions.clone()))?;
        registry.register(Box::new(watched.clone()))?;
        registry.register(Box::new(api_requests.clone()))?;
        registry.register(Box::new(api_duration.clone()))?;
        registry.register(Box::new(rate_limit.clone()))?;
        registry.register(Box::new(schedule_lag.clone()))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(build_info.clone()))?;

        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for status in Status::ALL {
            watched.with_label_values(&[status.as_str()]).set(0);
        }
        for operation in [OPERATION, LIST_OPERATION] {
            for outcome in Outcome::ALL {
                api_requests
                    .with_label_values(&[operation, outcome.metric_label()])
                    .reset();
            }
        }
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]).reset();
        }
        config_last_reload_success.set(unix_now());
        config_last_reload_successful.set(1.0);
        for sink in ["stdout", "file"] {
            for result in ["success", "failure"] {
                events.with_label_values(&[sink, result]).reset();
            }
        }
        Ok(Self {
            registry,
            execution_status,
            execution_start_time,
            execution_end_time,
            execution_failure,
            failure_messages: Mutex::new(HashMap::new()),
            transitions,
            watched,
            api_requests,
            api_duration,
            rate_limit,
            schedule_lag,
            events,
            build_info,
            config_reloads,
            config_last_reload_success,
            config_last_reload_successful,
            discovered,
            discovery_last_success,
            discovery_flow_not_found,
            per_execution,
        })
    }

    /// Counts a watchlist reload.
    pub fn record_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.config_reloads.with_label_values(&[result]).inc();
        self.config_last_reload_successful
            .set(if ok { 1.0 } else { 0.0 });
        if ok {
            self.config_last_reload_success.set(unix_now());
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Creates the zero-valued transition counters of a flow, so that `increase()` sees the first
    /// FAILED transition (a series that appears at 1 has no increase).
    pub fn watch_flow(&self, instance_id: &str, flow_name: &str) {
        for to in Status::TARGETS {
            self.transitions
                .with_label_values(&[instance_id, flow_name, to.as_str()])
                .inc_by(0);
        }
    }

    /// Sets the one-hot status gauge of an execution.
    pub fn set_status(&self, key: &ExecutionKey, status: Status) {
        if !self.per_execution {
            return;
        }
        for s in Status::ALL {
            self.execution_status
                .with_label_values(&[
                    &*key.instance_id,
                    &*key.flow_name,
                    &*key.execution_id,
                    s.as_str(),
                ])
                .set(if s == status { 1.0 } else { 0.0 });
        }
    }

    pub fn set_times(&self, key: &ExecutionKey, observation: &Observation) {
        if !self.per_execution {
            return;
        }
        let labels = [&*key.instance_id, &*key.flow_name, &*key.execution_id];
        if let Some(t) = observation.start_time {
            self.execution_start_time.with_label_values(&labels).set(t);
        }
        if let Some(t) = observation.end_time {
            self.execution_end_time.with_label_values(&labels).set(t);
        }
    }

    /// Exports the failure message of a FAILED execution.
    pub fn set_failure(&self, key: &ExecutionKey, message: Option<&str>) {
        let message = failure_label(message.unwrap_or_default());
        self.execution_failure
            .with_label_values(&[
                &*key.instance_id,
                &*key.flow_name,
                &*key.execution_id,
                &message,
            ])
            .set(1.0);
        self.failure_messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), message);
    }

    /// Drops the per-execution series (after `retain_terminal`, or when an entry is removed).
    /// Counters stay.
    pub fn drop_execution(&self, key: &ExecutionKey) {
        let labels = [&*key.instance_id, &*key.flow_name, &*key.execution_id];
        for s in Status::ALL {
            let _ = self.execution_status.remove_label_values(&[
                labels[0],
                labels[1],
                labels[2],
                s.as_str(),
            ]);
        }
        let message = self
            .failure_messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        if let Some(message) = message {
            let _ = self.execution_failure.remove_label_values(&[
                labels[0],
                labels[1],
                labels[2],
                message.as_str(),
            ]);
        }
        let _ = self.execution_start_time.remove_label_values(&labels);
        let _ = self.execution_end_time.remove_label_values(&labels);
    }

    pub fn record_request(&self, operation: &str, outcome: Outcome, seconds: f64) {
        self.api_requests
            .with_label_values(&[operation, outcome.metric_label()])
            .inc();
        self.api_duration
            .with_label_values(&[operation])
            .observe(seconds);
    }

    /// Creates the series of a `[[flow]]` entry, so the first discovery is an increase.
    pub fn watch_discovered_flow(&self, instance_id: &str, flow_name: &str) {
        self.watch_flow(instance_id, flow_name);
        let labels = [instance_id, flow_name];
        self.discovered.with_label_values(&labels).inc_by(0);
        self.discovery_flow_not_found
            .with_label_values(&labels)
            .set(0);
    }

    /// Drops the discovery series of a `[[flow]]` entry removed from the watchlist.
    pub fn drop_discovered_flow(&self, instance_id: &str, flow_name: &str) {
        let labels = [instance_id, flow_name];
        let _ = self.discovered.remove_label_values(&labels);
        let _ = self.discovery_last_success.remove_label_values(&labels);
        let _ = self.discovery_flow_not_found.remove_label_values(&labels);
    }
}

fn unix_now() -> f64 {
    crate::unix_seconds(std::time::SystemTime::now())
}

/// A failure message made fit for a label value: one line, at most 256 characters.
fn failure_label(message: &str) -> String {
    let one_line: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = one_line.trim();
    if trimmed.chars().count() > 256 {
        let mut cut: String = trimmed.chars().take(255).collect();
        cut.push('…');
        cut
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_every_contract_metric() {
        let m = Metrics::new().expect("metrics");
        m.watch_flow("i", "f");
        m.record_request(OPERATION, Outcome::Success, 0.01);
        let key = ExecutionKey::from_checked("i", "f", "e");
        m.set_status(&key, Status::InProgress);
        m.set_times(
            &key,
            &Observation {
                status: crate::aws::ApiStatus::InProgress,
                source_info: None,
                message: None,
                start_time: Some(1.0),
                end_time: Some(2.0),
                diagnostic_reports_root_s3_uri: None,
            },
        );
        m.rate_limit.set(5.0);
        let text = m.render();
        for name in [
            "flowwatch_execution_status{",
            "flowwatch_execution_start_time_seconds{",
            "flowwatch_execution_end_time_seconds{",
            "flowwatch_transitions_total{flow_name=\"f\",instance_id=\"i\",to_status=\"FAILED\"} 0",
            "flowwatch_watched_executions{status=\"UNKNOWN\"} 0",
            "flowwatch_api_requests_total{operation=\"GetDataIntegrationFlowExecution\",outcome=\"throttled\"} 0",
            "flowwatch_api_request_duration_seconds_bucket{",
            "flowwatch_rate_limit_requests_per_second 5",
            "flowwatch_schedule_lag_seconds 0",
            "flowwatch_events_total{result=\"failure\",sink=\"file\"} 0",
            "flowwatch_build_info{version=\"",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        assert!(text.contains(
            "execution_id=\"e\",flow_name=\"f\",instance_id=\"i\",status=\"IN_PROGRESS\"} 1"
        ));
        m.set_failure(&key, Some("line one\nline two"));
        assert!(m.render().contains("message=\"line one line two\""));
        m.drop_execution(&key);
        let text = m.render();
        assert!(!text.contains("flowwatch_execution_status{"));
        assert!(!text.contains("flowwatch_execution_failure_info{"));
        assert_eq!(failure_label(&"x".repeat(300)).chars().count(), 256);
    }
}
