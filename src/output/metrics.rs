//! The Prometheus metrics of DESIGN §4, in a [`Metrics`] struct that owns its own registry.
//!
//! The aggregate families live in a prometheus-crate registry; the six per-execution families
//! are rows written by hand (`output::series`), chunk by chunk ([`Metrics::next_series_chunk`]).
//! The engine calls methods that say what happened; no metric is reachable from outside this
//! module.

use std::collections::BTreeMap;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::model::{ExecutionKey, FlowKey, Observation, Operation, Outcome, Status};
use crate::output::info_labels::FlowLabelSeries;
use crate::output::push_metrics::PushMetrics;
#[cfg(test)]
use crate::output::series::{FAMILIES, ROWS_PER_CHUNK, failure_label};
use crate::output::series::{Series, SeriesCursor};

/// Every metric flowwatch exports.
pub struct Metrics {
    registry: Registry,
    /// The per-execution series, by execution (so by instance, flow and execution id).
    series: Series,
    transitions: IntCounterVec,
    watched: IntGaugeVec,
    api_requests: IntCounterVec,
    api_duration: HistogramVec,
    rate_limit: GaugeVec,
    schedule_lag: Gauge,
    events: IntCounterVec,
    config_reloads: IntCounterVec,
    config_last_reload_success: Gauge,
    config_last_reload_successful: Gauge,
    discovered_total: IntCounterVec,
    discovery_last_success: GaugeVec,
    discovery_flow_not_found: IntGaugeVec,
    flow_duration: HistogramVec,
    flow_last_success: GaugeVec,
    flow_last_failure: GaugeVec,
    flow_success_expected_within: GaugeVec,
    flow_labels: FlowLabelSeries,
    http_connections_closed: IntCounterVec,
    http_auth_rejected: IntCounterVec,
    instance_info: IntGaugeVec,
    instance_up: IntGaugeVec,
    /// Whether per-execution status and time series are exported.
    per_execution: bool,
    /// The request durations by operation, looked up once rather than per request.
    request_durations: Vec<Histogram>,
    /// The push family, once `[push]` turned it on.
    push: std::sync::OnceLock<PushMetrics>,
    /// Write units the state table was charged, once replicas share state.
    state_write_units: std::sync::OnceLock<prometheus::IntCounter>,
}

const FLOW_LABELS: [&str; 2] = ["instance_id", "flow_name"];

/// Buckets of `flowwatch_flow_duration_seconds`: 10 s to 24 h.
const FLOW_DURATION_BUCKETS: [f64; 14] = [
    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
    43200.0, 86400.0,
];

impl Metrics {
    #[cfg(test)]
    pub fn new() -> Result<Self, prometheus::Error> {
        Self::with_per_execution(true)
    }

    /// `per_execution = false` leaves out the per-execution status and time series.
    pub fn with_per_execution(per_execution: bool) -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        let mut metrics = Self {
            transitions: counters(
                &r,
                "flowwatch_transitions_total",
                "Status transitions seen, per flow and target status; pre-set to 0 for every watched flow.",
                &["instance_id", "flow_name", "to_status"],
            )?,
            watched: int_gauges(
                &r,
                "flowwatch_watched_executions",
                "Watched flow executions by current status.",
                &["status"],
            )?,
            api_requests: counters(
                &r,
                "flowwatch_api_requests_total",
                "API requests by operation and outcome, and the account and region they went to: the Supply Chain API, and SQS for push.",
                &["operation", "outcome", "account_id", "region"],
            )?,
            api_duration: registered(&r, api_durations()?)?,
            rate_limit: registered(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "flowwatch_rate_limit_requests_per_second",
                        "Current rate of each account and region's token bucket (cut on throttling, restored on success); account_id is \"\" for the base credentials' account.",
                    ),
                    &["account_id", "region"],
                )?,
            )?,
            schedule_lag: gauge(
                &r,
                "flowwatch_schedule_lag_seconds",
                "How long the most overdue queued request (a poll or a List page) has waited past its \
                 due time for a request slot or a rate-limit token; 0 when none is overdue.",
            )?,
            events: counters(
                &r,
                "flowwatch_events_total",
                "Events written, per sink and result.",
                &["sink", "result"],
            )?,
            config_reloads: counters(
                &r,
                "flowwatch_config_reloads_total",
                "Watchlist reloads (SIGHUP, POST /-/reload, or a change of the file), by result.",
                &["result"],
            )?,
            config_last_reload_success: gauge(
                &r,
                "flowwatch_config_last_reload_success_timestamp_seconds",
                "When the watchlist was last loaded successfully (unix seconds); start-up counts.",
            )?,
            config_last_reload_successful: gauge(
                &r,
                "flowwatch_config_last_reload_successful",
                "1 if the last watchlist reload succeeded, 0 if it was refused (the old watchlist keeps running).",
            )?,
            discovered_total: counters(
                &r,
                "flowwatch_discovered_executions_total",
                "Executions of [[flow]] entries found by ListDataIntegrationFlowExecutions and added to the watch set.",
                &FLOW_LABELS,
            )?,
            discovery_last_success: flow_gauges(
                &r,
                "flowwatch_discovery_last_success_timestamp_seconds",
                "When a discovery round of the flow last completed without error (unix seconds).",
            )?,
            discovery_flow_not_found: int_gauges(
                &r,
                "flowwatch_discovery_flow_not_found",
                "1 while the API answers ResourceNotFoundException for the flow of a [[flow]] entry (it does not exist), else 0.",
                &FLOW_LABELS,
            )?,
            flow_duration: registered(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "flowwatch_flow_duration_seconds",
                        "Durations (end - start, as the API reports them) of the flow's executions seen to finish, by final status.",
                    )
                    .buckets(FLOW_DURATION_BUCKETS.to_vec()),
                    &["instance_id", "flow_name", "status"],
                )?,
            )?,
            flow_last_success: flow_gauges(
                &r,
                "flowwatch_flow_last_success_timestamp_seconds",
                "End time of the flow's latest SUCCEEDED execution flowwatch knows (unix seconds); for a [[flow]] entry with none known, when flowwatch first watched the flow.",
            )?,
            flow_last_failure: flow_gauges(
                &r,
                "flowwatch_flow_last_failure_timestamp_seconds",
                "End time of the flow's latest FAILED execution flowwatch knows (unix seconds).",
            )?,
            flow_success_expected_within: flow_gauges(
                &r,
                "flowwatch_flow_success_expected_within_seconds",
                "The expect_success_within of a [[flow]] entry: a success is expected at least this often (seconds).",
            )?,
            flow_labels: registered(&r, FlowLabelSeries::new()?)?,
            instance_info: int_gauges(
                &r,
                "flowwatch_instance_info",
                "Always 1 for each Supply Chain instance of the watchlist, with the region and account its calls go to (account_id \"\": the base credentials').",
                &["instance_id", "region", "account_id"],
            )?,
            instance_up: int_gauges(
                &r,
                "flowwatch_instance_up",
                "0 while every recent call about the instance failed for want of credentials, access or a way to the API; else 1.",
                &["instance_id"],
            )?,
            http_connections_closed: counters(
                &r,
                "flowwatch_http_connections_closed_total",
                "HTTP connections the server closed unserved: reason=\"limit\" (server.max_connections were open), \"header_timeout\" (no complete request headers in time) or \"tls_handshake\" (a failed or slow TLS handshake).",
                &["reason"],
            )?,
            http_auth_rejected: counters(
                &r,
                "flowwatch_http_auth_rejected_total",
                "Requests refused by basic auth: reason=\"credentials\" (missing or wrong, 401) or \"busy\" (too many password checks at once, 503).",
                &["reason"],
            )?,
            series: Series::default(),
            per_execution,
            registry: r,
            request_durations: Vec::new(),
            push: std::sync::OnceLock::new(),
            state_write_units: std::sync::OnceLock::new(),
        };
        metrics.request_series();
        metrics.build_info()?;
        metrics.process()?;
        metrics.preset();
        Ok(metrics)
    }

    /// `flowwatch_build_info`, always 1.
    fn build_info(&self) -> prometheus::Result<()> {
        int_gauges(
            &self.registry,
            "flowwatch_build_info",
            "Build information; always 1.",
            &["version"],
        )?
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
        Ok(())
    }

    /// The standard `process_*` families (CPU, memory, file descriptors, threads), which every
    /// Prometheus client exports and dashboards expect.
    fn process(&self) -> prometheus::Result<()> {
        #[cfg(target_os = "linux")]
        self.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(())
    }

    /// The duration series of the Supply Chain calls, looked up once here rather than per request.
    fn request_series(&mut self) {
        for operation in Operation::SUPPLY_CHAIN {
            self.request_durations
                .push(self.api_duration.with_label_values(&[operation.as_str()]));
        }
    }

    /// Creates at 0 every Supply Chain request series of an account and region's budget, so the
    /// first throttle or denial is an increase.
    pub fn preset_requests(&self, account_id: &str, region: &str) {
        for operation in Operation::SUPPLY_CHAIN {
            for outcome in Outcome::ALL {
                self.requests(operation, outcome, account_id, region)
                    .inc_by(0);
            }
        }
    }

    /// Series that exist from the start, so the first increase is seen by `increase()`.
    fn preset(&self) {
        for status in Status::ALL {
            self.watched.with_label_values(&[status.as_str()]).set(0);
        }
        for reason in ["limit", "header_timeout", "tls_handshake"] {
            self.http_connections_closed
                .with_label_values(&[reason])
                .reset();
        }
        for reason in ["credentials", "busy"] {
            self.http_auth_rejected.with_label_values(&[reason]).reset();
        }
        for result in ["success", "failure"] {
            self.config_reloads.with_label_values(&[result]).reset();
            for sink in ["stdout", "file"] {
                self.events.with_label_values(&[sink, result]).reset();
            }
        }
        self.config_last_reload_success.set(unix_now());
        self.config_last_reload_successful.set(1.0);
    }

    /// Counts an HTTP connection closed unserved, by reason.
    pub fn connection_closed(&self, reason: &str) {
        self.http_connections_closed
            .with_label_values(&[reason])
            .inc();
    }

    /// Counts a request basic auth refused, by reason.
    pub fn auth_rejected(&self, reason: &str) {
        self.http_auth_rejected.with_label_values(&[reason]).inc();
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

    /// The whole text exposition in one string (tests; `/metrics` streams it in chunks).
    #[cfg(test)]
    pub fn render(&self) -> String {
        let mut text = self.render_registry();
        let mut cursor = SeriesCursor::default();
        while let Some(chunk) = self.next_series_chunk(&mut cursor) {
            text.push_str(&chunk);
        }
        text
    }

    /// The next piece of the per-execution families, or `None` after the last.
    pub fn next_series_chunk(&self, cursor: &mut SeriesCursor) -> Option<String> {
        self.series.next_chunk(cursor)
    }

    /// The aggregate families, in the text exposition format.
    pub fn render_registry(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Creates the zero-valued transition counters of a flow, so that `increase()` sees the first
    /// FAILED transition (a series that appears at 1 has no increase).
    pub fn preset_flow_transitions(&self, instance_id: &str, flow_name: &str) {
        for to in Status::TARGETS {
            self.transitions
                .with_label_values(&[instance_id, flow_name, to.as_str()])
                .inc_by(0);
        }
    }

    /// Sets the one-hot status gauge of an execution.
    pub fn set_status(&self, key: &ExecutionKey, status: Status) {
        if self.per_execution {
            self.series.set_status(key, status);
        }
    }

    /// Sets the start and end time series of an execution from what the API said.
    pub fn set_times(&self, key: &ExecutionKey, observation: &Observation) {
        if !self.per_execution || (observation.start_time, observation.end_time) == (None, None) {
            return;
        }
        self.series
            .set_times(key, observation.start_time, observation.end_time);
    }

    /// Sets an execution's expected end and whether it is overdue; `None` removes both. Without
    /// `per_execution`, only overdue executions have these series (the overdue alert reads them).
    pub fn set_expectation(&self, key: &ExecutionKey, expected_end: Option<f64>, overdue: bool) {
        let shown = if self.per_execution || overdue {
            expected_end
        } else {
            None
        };
        self.series.set_expectation(key, shown, overdue);
    }

    /// A run of a flow finished: its duration, when known, is observed by status.
    pub fn flow_finished(
        &self,
        instance_id: &str,
        flow_name: &str,
        status: Status,
        seconds: Option<f64>,
    ) {
        if let Some(seconds) = seconds.filter(|s| s.is_finite() && *s >= 0.0) {
            self.flow_duration
                .with_label_values(&[instance_id, flow_name, status.as_str()])
                .observe(seconds);
        }
    }

    /// Sets a flow's freshness series as they stand (at start-up, or when a `[[flow]]` joins).
    pub fn flow_freshness(
        &self,
        instance_id: &str,
        flow_name: &str,
        last_success: Option<f64>,
        last_failure: Option<f64>,
    ) {
        let labels = [instance_id, flow_name];
        if let Some(t) = last_success {
            self.flow_last_success.with_label_values(&labels).set(t);
        }
        if let Some(t) = last_failure {
            self.flow_last_failure.with_label_values(&labels).set(t);
        }
    }

    /// Sets (or, with `None`, removes) a `[[flow]]` entry's `expect_success_within`.
    pub fn success_expected_within(&self, instance_id: &str, flow_name: &str, within: Option<f64>) {
        let labels = [instance_id, flow_name];
        match within {
            Some(seconds) => self
                .flow_success_expected_within
                .with_label_values(&labels)
                .set(seconds),
            None => {
                let _ = self
                    .flow_success_expected_within
                    .remove_label_values(&labels);
            }
        }
    }

    /// Exports the failure message of a FAILED execution (with or without `per_execution`: the
    /// FAILED alert reads it).
    pub fn set_failure(&self, key: &ExecutionKey, message: Option<&str>) {
        self.series.set_failure(key, message.unwrap_or_default());
    }

    /// Exports the labels of an execution joining the watch set (`flowwatch_execution_labels`,
    /// beside its other series; with or without `per_execution`, as the alerts join on it).
    pub fn set_execution_labels(&self, key: &ExecutionKey, labels: &BTreeMap<String, String>) {
        self.series.set_labels(key, labels);
    }

    /// A watched execution's labels changed (a reload); series already dropped stay dropped.
    pub fn relabel_execution(&self, key: &ExecutionKey, labels: &BTreeMap<String, String>) {
        self.series.relabel(key, labels);
    }

    /// Sets (or, with none, removes) `flowwatch_flow_labels` of a `[[flow]]` entry.
    pub fn set_flow_labels(&self, flow: &FlowKey, labels: &BTreeMap<String, String>) {
        self.flow_labels.set(flow, labels);
    }

    /// A Supply Chain instance joined the watchlist: its info series, and up until its calls say
    /// otherwise.
    pub fn instance_watched(&self, instance_id: &str, region: &str, account_id: &str) {
        self.instance_info
            .with_label_values(&[instance_id, region, account_id])
            .set(1);
        self.instance_up.with_label_values(&[instance_id]).set(1);
    }

    /// A Supply Chain instance left the watchlist: its series go.
    pub fn instance_left(&self, instance_id: &str, region: &str, account_id: &str) {
        let _ = self
            .instance_info
            .remove_label_values(&[instance_id, region, account_id]);
        let _ = self.instance_up.remove_label_values(&[instance_id]);
    }

    /// Whether a watched instance is up, after a call about it.
    pub fn instance_up(&self, instance_id: &str, up: bool) {
        self.instance_up
            .with_label_values(&[instance_id])
            .set(i64::from(up));
    }

    /// Drops the per-execution series (after `retain_terminal`, or when an entry is removed).
    /// Counters stay.
    pub fn drop_execution(&self, key: &ExecutionKey) {
        self.series.remove(key);
    }

    /// A Supply Chain call, to the account and region of its budget.
    pub fn record_request(
        &self,
        operation: Operation,
        outcome: Outcome,
        account_id: &str,
        region: &str,
        seconds: f64,
    ) {
        self.requests(operation, outcome, account_id, region).inc();
        if let Some(histogram) = self.request_durations.get(operation as usize) {
            histogram.observe(seconds);
        }
    }

    /// The request counter of one operation and outcome in an account and region.
    fn requests(
        &self,
        operation: Operation,
        outcome: Outcome,
        account_id: &str,
        region: &str,
    ) -> prometheus::IntCounter {
        let labels = [
            operation.as_str(),
            outcome.metric_label(),
            account_id,
            region,
        ];
        self.api_requests.with_label_values(&labels)
    }

    /// An SQS call of push, to the queue's account and region.
    pub fn record_queue_request(&self, operation: Operation, outcome: Outcome, seconds: f64) {
        if let Some(push) = self.push.get() {
            push.record_request(operation, outcome, seconds);
        }
    }

    /// Registers the push family (`[push]` names a queue); healthy starts at 0 until a first
    /// receive succeeds.
    /// `account_id` and `region` are the queue's, as its URL names them.
    pub fn enable_push(&self, account_id: &str, region: &str) -> prometheus::Result<()> {
        if self.push.get().is_none() {
            let queue = [account_id, region];
            let push = PushMetrics::register(
                &self.registry,
                &self.api_requests,
                &self.api_duration,
                queue,
            )?;
            push.healthy(false);
            let _ = self.push.set(push);
        }
        Ok(())
    }

    /// `n` more calls to the state table of replicas on shared state (its account is not
    /// known: `""`).
    pub fn table_calls(&self, operation: Operation, outcome: Outcome, region: &str, n: u64) {
        self.requests(operation, outcome, "", region).inc_by(n);
    }

    /// Registers the leadership of replicas on shared state: whether this one leads, how often
    /// that changed since the process started, and the write units its commits cost.
    pub fn enable_leadership(&self, leader: bool, changes: u64) -> prometheus::Result<()> {
        let gauge = prometheus::IntGauge::new(
            "flowwatch_leader",
            "1 while this replica leads the replicas sharing the state table, else 0",
        )?;
        gauge.set(i64::from(leader));
        let counter = prometheus::IntCounter::new(
            "flowwatch_leader_changes_total",
            "Times this replica took or lost the lead since it started",
        )?;
        counter.inc_by(changes);
        let units = prometheus::IntCounter::new(
            "flowwatch_state_write_units_total",
            "Write request units the state table was charged for this replica's commits and its lease, as DynamoDB counts them from the items' sizes",
        )?;
        self.registry.register(Box::new(gauge))?;
        self.registry.register(Box::new(counter))?;
        self.registry.register(Box::new(units.clone()))?;
        let _ = self.state_write_units.set(units);
        Ok(())
    }

    /// `n` more write units charged by the state table.
    pub fn state_write_units(&self, n: u64) {
        if let Some(units) = self.state_write_units.get() {
            units.inc_by(n);
        }
    }

    /// The push family, when enabled.
    pub fn push(&self) -> Option<&PushMetrics> {
        self.push.get()
    }

    /// The global request rate changed.
    pub fn rate_changed(&self, account_id: &str, region: &str, requests_per_second: f64) {
        self.rate_limit
            .with_label_values(&[account_id, region])
            .set(requests_per_second);
    }

    /// A budget's account and region are no longer served (a reload): its rate series goes. Its
    /// request counters stay, as history.
    pub fn budget_left(&self, account_id: &str, region: &str) {
        let _ = self.rate_limit.remove_label_values(&[account_id, region]);
    }

    /// How long the most overdue queued request has waited (0 when none is overdue).
    pub fn schedule_lag(&self, seconds: f64) {
        self.schedule_lag.set(seconds);
    }

    /// Counts a committed transition of an execution of `flow`.
    pub fn transition(&self, instance_id: &str, flow_name: &str, to: Status) {
        self.transitions
            .with_label_values(&[instance_id, flow_name, to.as_str()])
            .inc();
    }

    /// Brings a transition counter back to its stored count after a restart.
    pub fn restore_transitions(&self, instance_id: &str, flow_name: &str, to: &str, count: u64) {
        self.transitions
            .with_label_values(&[instance_id, flow_name, to])
            .inc_by(count);
    }

    /// Moves one execution between the `flowwatch_watched_executions` counts: `from` None for an
    /// execution that joins the watch set, `to` None for one that leaves it.
    pub fn watched_moved(&self, from: Option<Status>, to: Option<Status>) {
        if let Some(from) = from {
            self.watched.with_label_values(&[from.as_str()]).dec();
        }
        if let Some(to) = to {
            self.watched.with_label_values(&[to.as_str()]).inc();
        }
    }

    /// Counts one event written (or not) to a sink.
    pub fn event_written(&self, sink: &str, ok: bool) {
        let label = if ok { "success" } else { "failure" };
        self.events.with_label_values(&[sink, label]).inc();
    }

    /// Counts an execution discovery found in a flow.
    pub fn execution_discovered(&self, instance_id: &str, flow_name: &str) {
        self.discovered_total
            .with_label_values(&[instance_id, flow_name])
            .inc();
    }

    /// A discovery round of a flow read every page it needed.
    pub fn discovery_round_done(&self, instance_id: &str, flow_name: &str, at: f64) {
        self.discovery_last_success
            .with_label_values(&[instance_id, flow_name])
            .set(at);
    }

    /// Whether the API says a watched flow does not exist.
    pub fn flow_missing(&self, instance_id: &str, flow_name: &str, missing: bool) {
        self.discovery_flow_not_found
            .with_label_values(&[instance_id, flow_name])
            .set(i64::from(missing));
    }

    /// Creates the series of a `[[flow]]` entry, so the first discovery is an increase.
    pub fn watch_discovered_flow(&self, instance_id: &str, flow_name: &str) {
        self.preset_flow_transitions(instance_id, flow_name);
        let labels = [instance_id, flow_name];
        self.discovered_total.with_label_values(&labels).inc_by(0);
        self.discovery_flow_not_found
            .with_label_values(&labels)
            .set(0);
    }

    /// Drops the discovery series of a `[[flow]]` entry removed from the watchlist.
    pub fn drop_discovered_flow(&self, instance_id: &str, flow_name: &str) {
        let labels = [instance_id, flow_name];
        let _ = self.discovered_total.remove_label_values(&labels);
        let _ = self.discovery_last_success.remove_label_values(&labels);
        let _ = self.discovery_flow_not_found.remove_label_values(&labels);
        let _ = self
            .flow_success_expected_within
            .remove_label_values(&labels);
        self.flow_labels.remove(&FlowKey {
            instance_id: instance_id.to_string(),
            flow_name: flow_name.to_string(),
        });
    }
}

/// `flowwatch_api_request_duration_seconds`, by operation.
fn api_durations() -> prometheus::Result<HistogramVec> {
    HistogramVec::new(
        HistogramOpts::new(
            "flowwatch_api_request_duration_seconds",
            "Duration of API requests (Supply Chain, and SQS for push), whatever their outcome.",
        )
        .buckets(vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ]),
        &["operation"],
    )
}

/// `metric`, registered in `registry`.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> Result<M, prometheus::Error> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn counters(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    registered(r, IntCounterVec::new(Opts::new(name, help), labels)?)
}

fn int_gauges(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    registered(r, IntGaugeVec::new(Opts::new(name, help), labels)?)
}

fn flow_gauges(r: &Registry, name: &str, help: &str) -> prometheus::Result<GaugeVec> {
    registered(r, GaugeVec::new(Opts::new(name, help), &FLOW_LABELS)?)
}

fn gauge(r: &Registry, name: &str, help: &str) -> prometheus::Result<Gauge> {
    registered(r, Gauge::new(name, help)?)
}

fn unix_now() -> f64 {
    crate::model::unix_seconds(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_every_contract_metric() {
        let m = Metrics::new().expect("metrics");
        m.preset_flow_transitions("i", "f");
        m.preset_requests("", "us-east-1");
        m.record_request(Operation::Get, Outcome::Success, "", "us-east-1", 0.01);
        let key = ExecutionKey::from_checked("i", "f", "e");
        m.set_status(&key, Status::InProgress);
        m.set_times(
            &key,
            &Observation {
                status: crate::model::ApiStatus::InProgress,
                source_info: None,
                message: None,
                start_time: Some(1.0),
                end_time: Some(2.0),
                diagnostic_reports_root_s3_uri: None,
            },
        );
        m.rate_changed("", "us-east-1", 5.0);
        m.set_expectation(&key, Some(100.0), false);
        m.flow_finished("i", "f", Status::Succeeded, Some(42.0));
        m.flow_freshness("i", "f", Some(2.0), Some(1.0));
        m.success_expected_within("i", "f", Some(93_600.0));
        let text = m.render();
        for name in [
            "flowwatch_execution_expected_end_timestamp_seconds{execution_id=\"e\",flow_name=\"f\",instance_id=\"i\"} 100",
            "flowwatch_execution_overdue{execution_id=\"e\",flow_name=\"f\",instance_id=\"i\"} 0",
            "flowwatch_flow_duration_seconds_bucket{flow_name=\"f\",instance_id=\"i\",status=\"SUCCEEDED\",le=\"60\"} 1",
            "flowwatch_flow_last_success_timestamp_seconds{flow_name=\"f\",instance_id=\"i\"} 2",
            "flowwatch_flow_last_failure_timestamp_seconds{flow_name=\"f\",instance_id=\"i\"} 1",
            "flowwatch_flow_success_expected_within_seconds{flow_name=\"f\",instance_id=\"i\"} 93600",
            "flowwatch_execution_status{",
            "flowwatch_execution_start_time_seconds{",
            "flowwatch_execution_end_time_seconds{",
            "flowwatch_transitions_total{flow_name=\"f\",instance_id=\"i\",to_status=\"FAILED\"} 0",
            "flowwatch_watched_executions{status=\"UNKNOWN\"} 0",
            "flowwatch_api_requests_total{account_id=\"\",operation=\"GetDataIntegrationFlowExecution\",outcome=\"throttled\",region=\"us-east-1\"} 0",
            "flowwatch_api_request_duration_seconds_bucket{",
            "flowwatch_rate_limit_requests_per_second{account_id=\"\",region=\"us-east-1\"} 5",
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
        assert!(!text.contains("flowwatch_execution_overdue{"));
        m.success_expected_within("i", "f", None);
        assert!(
            !m.render()
                .contains("flowwatch_flow_success_expected_within_seconds{")
        );
        assert_eq!(failure_label(&"x".repeat(300)).chars().count(), 256);
    }

    #[test]
    fn without_per_execution_series_only_failed_and_overdue_executions_carry_their_labels() {
        let m = Metrics::with_per_execution(false).expect("metrics");
        let team = [("team".to_string(), "planning".to_string())].into();
        let [quiet, failed, overdue] =
            ["quiet", "failed", "overdue"].map(|e| ExecutionKey::from_checked("i", "f", e));
        for key in [&quiet, &failed, &overdue] {
            m.set_execution_labels(key, &team);
            m.set_status(key, Status::InProgress);
        }
        m.set_failure(&failed, Some("bad row"));
        m.set_expectation(&overdue, Some(10.0), true);
        let text = m.render();
        let labelled: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("flowwatch_execution_labels{"))
            .collect();
        assert_eq!(
            labelled,
            [
                "flowwatch_execution_labels{execution_id=\"failed\",flow_name=\"f\",instance_id=\"i\",label_team=\"planning\"} 1",
                "flowwatch_execution_labels{execution_id=\"overdue\",flow_name=\"f\",instance_id=\"i\",label_team=\"planning\"} 1",
            ]
        );
    }

    fn observation(start: Option<f64>, end: Option<f64>) -> Observation {
        Observation {
            status: crate::model::ApiStatus::InProgress,
            source_info: None,
            message: None,
            start_time: start,
            end_time: end,
            diagnostic_reports_root_s3_uri: None,
        }
    }

    /// An execution, its status, start and end time, and failure message. A running one (no end
    /// time) is also overdue, with an expected end [`EXPECTED_AFTER`] after its start.
    type TestRow = (ExecutionKey, Status, f64, Option<f64>, Option<&'static str>);

    const EXPECTED_AFTER: f64 = 600.5;

    /// The labels of every test row but [`UNLABELLED`], by watchlist key; one value needs
    /// escaping, and one key sanitising.
    const LABELS: [(&str, &str); 2] = [("cost-centre", "4\"2\\"), ("team", "planning\nops")];
    const UNLABELLED: &str = "e-2";

    /// The per-execution families as the prometheus crate writes them, for comparison.
    fn by_the_prometheus_crate(rows: &[TestRow]) -> String {
        let registry = Registry::new();
        let gauge = |name: &str, labels: &[&str]| {
            let family = FAMILIES.iter().find(|f| f.name == name).expect("family");
            let vec = GaugeVec::new(Opts::new(name, family.help), labels).expect("vec");
            registry.register(Box::new(vec.clone())).expect("register");
            vec
        };
        let ids = ["instance_id", "flow_name", "execution_id"];
        let status = gauge(
            "flowwatch_execution_status",
            &[&ids[..], &["status"]].concat(),
        );
        let start = gauge("flowwatch_execution_start_time_seconds", &ids);
        let end = gauge("flowwatch_execution_end_time_seconds", &ids);
        let expected = gauge("flowwatch_execution_expected_end_timestamp_seconds", &ids);
        let overdue = gauge("flowwatch_execution_overdue", &ids);
        let failure = gauge(
            "flowwatch_execution_failure_info",
            &[&ids[..], &["message"]].concat(),
        );
        let labelled = gauge(
            "flowwatch_execution_labels",
            &[&ids[..], &["label_cost_centre", "label_team"]].concat(),
        );
        for (key, current, started, ended, message) in rows {
            let k = [&*key.instance_id, &*key.flow_name, &*key.execution_id];
            for s in Status::ALL {
                status
                    .with_label_values(&[k[0], k[1], k[2], s.as_str()])
                    .set(if s == *current { 1.0 } else { 0.0 });
            }
            start.with_label_values(&k).set(*started);
            if let Some(t) = ended {
                end.with_label_values(&k).set(*t);
            } else {
                expected.with_label_values(&k).set(started + EXPECTED_AFTER);
                overdue.with_label_values(&k).set(1.0);
            }
            if let Some(m) = message {
                failure
                    .with_label_values(&[k[0], k[1], k[2], &failure_label(m)])
                    .set(1.0);
            }
            if key.execution_id.as_ref() != UNLABELLED {
                labelled
                    .with_label_values(&[k[0], k[1], k[2], LABELS[0].1, LABELS[1].1])
                    .set(1.0);
            }
        }
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut buf)
            .expect("encode");
        String::from_utf8(buf).expect("utf-8")
    }

    #[test]
    fn the_per_execution_families_are_written_as_the_prometheus_crate_writes_them() {
        // Interned as the watchlist does, so a flow's rows share their ids and its label text is
        // reused; one flow name needs escaping.
        let mut names = crate::model::Interner::default();
        let mut key = |flow: &str, n: u32| {
            ExecutionKey::from_checked(
                names.get("8850c54e-e187-4fa7-89d4-6370f165174d"),
                names.get(flow),
                format!("e-{n}"),
            )
        };
        let rows = [
            (
                key("odd\"flow\\", 1),
                Status::InProgress,
                1_700_000_000.125,
                None,
                None,
            ),
            (
                key("b-flow", 2),
                Status::Failed,
                1_700_000_000.0,
                Some(1_700_000_123.25),
                Some("bad \"quote\" and back\\slash\nsecond line"),
            ),
            (
                key("a-flow", 9),
                Status::InProgress,
                1_700_000_500.5,
                None,
                None,
            ),
            (
                key("a-flow", 10),
                Status::Succeeded,
                1_699_999_999.0,
                Some(1_700_000_001.0),
                None,
            ),
        ];
        let m = Metrics::new().expect("metrics");
        let labels = LABELS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (k, status, start, end, message) in &rows {
            if k.execution_id.as_ref() != UNLABELLED {
                m.set_execution_labels(k, &labels);
            }
            m.set_status(k, *status);
            m.set_times(k, &observation(Some(*start), *end));
            if end.is_none() {
                m.set_expectation(k, Some(start + EXPECTED_AFTER), true);
            }
            if message.is_some() {
                m.set_failure(k, *message);
            }
        }
        let mut ours = String::new();
        let mut cursor = SeriesCursor::default();
        while let Some(chunk) = m.next_series_chunk(&mut cursor) {
            ours.push_str(&chunk);
        }
        // The same lines; the order of series within a family means nothing to Prometheus (the
        // crate sorts them by label value, flowwatch by execution).
        let sorted = |text: &str| {
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            lines.sort();
            lines
        };
        assert_eq!(sorted(&ours), sorted(&by_the_prometheus_crate(&rows)));
        assert!(ours.starts_with("# HELP flowwatch_execution_end_time_seconds "));
    }

    #[test]
    fn a_large_watch_set_is_written_in_chunks_with_each_family_whole_and_once() {
        let m = Metrics::new().expect("metrics");
        let count = 2 * ROWS_PER_CHUNK + 500;
        for n in 0..count {
            let k = ExecutionKey::from_checked("i", "f", format!("e-{n:05}"));
            m.set_status(&k, Status::InProgress);
            m.set_times(&k, &observation(Some(n as f64), None));
        }
        let mut cursor = SeriesCursor::default();
        let mut chunks = Vec::new();
        while let Some(chunk) = m.next_series_chunk(&mut cursor) {
            chunks.push(chunk);
        }
        assert!(
            chunks.len() >= 6,
            "two families of 2,548 rows: {} chunks",
            chunks.len()
        );
        let text = chunks.concat();
        for family in [
            "flowwatch_execution_status",
            "flowwatch_execution_start_time_seconds",
        ] {
            assert_eq!(text.matches(&format!("# TYPE {family} gauge")).count(), 1);
        }
        assert_eq!(
            text.matches("flowwatch_execution_end_time_seconds").count(),
            0
        );
        let status_lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("flowwatch_execution_status{"))
            .collect();
        assert_eq!(status_lines.len(), 5 * count);
        // One family's lines are contiguous and in execution order.
        let first = text
            .find("flowwatch_execution_status{")
            .expect("status lines");
        let last = text
            .rfind("flowwatch_execution_status{")
            .expect("status lines");
        assert!(!text[first..last].contains("start_time_seconds{"));
        let execution = |line: &str| line.split("\",flow_name").next().map(str::to_string);
        assert!(
            status_lines
                .windows(2)
                .all(|w| execution(w[0]) <= execution(w[1]))
        );
    }

    /// Every family the exposition can carry: each labelled family is given one series first.
    fn exported_families() -> (Metrics, std::collections::BTreeSet<String>) {
        let metrics = Metrics::new().expect("metrics");
        metrics
            .enable_push("123456789012", "us-east-1")
            .expect("push metrics");
        metrics
            .enable_leadership(true, 1)
            .expect("leadership metrics");
        let key = ExecutionKey::from_checked("i", "f", "e");
        metrics.preset_flow_transitions("i", "f");
        metrics.set_status(&key, Status::Failed);
        let observation = Observation {
            status: crate::model::ApiStatus::Failed,
            source_info: None,
            message: Some("m".into()),
            start_time: Some(1.0),
            end_time: Some(2.0),
            diagnostic_reports_root_s3_uri: None,
        };
        metrics.set_times(&key, &observation);
        metrics.set_expectation(&key, Some(3.0), true);
        metrics.set_failure(&key, Some("m"));
        let team: BTreeMap<String, String> = [("team".to_string(), "t".to_string())].into();
        metrics.set_execution_labels(&key, &team);
        let flow = FlowKey {
            instance_id: "i".into(),
            flow_name: "f".into(),
        };
        metrics.set_flow_labels(&flow, &team);
        metrics.instance_watched("i", "us-east-1", "");
        metrics.flow_finished("i", "f", Status::Failed, Some(1.0));
        metrics.flow_freshness("i", "f", Some(1.0), Some(2.0));
        metrics.success_expected_within("i", "f", Some(60.0));
        metrics.watch_discovered_flow("i", "f");
        metrics.execution_discovered("i", "f");
        metrics.discovery_round_done("i", "f", 1.0);
        metrics.flow_missing("i", "f", true);
        let names = metrics
            .render()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .map(str::to_string)
            .collect();
        (metrics, names)
    }

    #[test]
    fn docs_metrics_md_lists_exactly_the_metrics_flowwatch_exports() {
        let documented: std::collections::BTreeSet<String> = include_str!("../../docs/metrics.md")
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .filter(|name| name.starts_with("flowwatch_") || name.starts_with("process_"))
            .map(str::to_string)
            .collect();
        let (metrics, exported) = exported_families();
        let undocumented: Vec<&String> = exported.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "not in docs/metrics.md: {undocumented:?}"
        );
        // A documented family that no series showed must still be registered: registering
        // another collector of that name is then refused.
        for name in documented.difference(&exported) {
            let probe = Gauge::new(name.as_str(), "probe").expect("a valid name");
            let taken = metrics.registry.register(Box::new(probe)).is_err();
            assert!(
                taken,
                "docs/metrics.md lists {name}, which flowwatch does not register"
            );
        }
    }
}
