//! What the status page at `GET /` shows: counts by status, and per flow its running executions
//! (with their expected end), its recent finished ones, its median duration and last success.
//! Everything is capped, so the page stays small at 100,000 executions: [`FLOWS_PER_PAGE`] flows
//! a page (problems first), [`RUNNING_SHOWN`] running and [`FINISHED_SHOWN`] finished
//! executions a flow, each with the total beside it. `/status` has every execution.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::engine::flow_health::FlowHealth;
use crate::engine::state::ExecutionState;
use crate::engine::watch_set::WatchSet;
use crate::model::{FlowKey, SourceInfo, Status, unix_seconds};

/// Flows on one page.
pub const FLOWS_PER_PAGE: usize = 50;
/// Running executions shown per flow: overdue ones first, then the longest running.
pub const RUNNING_SHOWN: usize = 20;
/// Finished executions shown per flow: the most recent.
pub const FINISHED_SHOWN: usize = 10;

/// The page's content.
#[derive(Debug, Clone, PartialEq)]
pub struct Overview {
    /// Unix seconds.
    pub now: f64,
    pub watched: usize,
    pub by_status: Vec<(Status, i64)>,
    pub overdue: usize,
    /// Flows with `expect_success_within` whose last success is older than that.
    pub without_recent_success: usize,
    pub flows_total: usize,
    /// The index of this page's first flow.
    pub offset: usize,
    pub flows: Vec<FlowOverview>,
    /// The overdue rule, to say it on the page.
    pub overdue_factor: f64,
    pub overdue_min: Duration,
    /// Durations a flow needs before its runs get an expected end.
    pub min_history: usize,
}

impl Overview {
    /// The page of a replica that watches nothing (a standby), with the rules it would apply.
    pub fn nothing_watched(rules: &crate::input::config::FlowHealthSettings) -> Self {
        Self {
            now: unix_seconds(SystemTime::now()),
            watched: 0,
            by_status: Status::ALL.into_iter().map(|s| (s, 0)).collect(),
            overdue: 0,
            without_recent_success: 0,
            flows_total: 0,
            offset: 0,
            flows: Vec::new(),
            overdue_factor: rules.overdue_factor,
            overdue_min: rules.overdue_min,
            min_history: rules.min_history,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FlowOverview {
    pub key: FlowKey,
    /// Watched through a `[[flow]]` entry.
    pub discovered: bool,
    pub median: Option<f64>,
    pub samples: usize,
    pub last_success: Option<f64>,
    pub last_failure: Option<f64>,
    pub expect_success_within: Option<Duration>,
    /// It expects a success within some time, and has none that recent.
    pub without_recent_success: bool,
    pub running: Vec<Running>,
    pub running_total: usize,
    pub overdue: usize,
    pub finished: Vec<Finished>,
    pub finished_total: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    pub execution_id: String,
    /// UNKNOWN until first observed, else IN_PROGRESS.
    pub status: Status,
    pub start: Option<f64>,
    pub expected_end: Option<f64>,
    pub overdue: bool,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub execution_id: String,
    pub status: Status,
    pub start: Option<f64>,
    pub end: Option<f64>,
    pub message: Option<String>,
    pub source: Option<String>,
    pub diagnostics: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// One flow's executions, gathered before the page is cut.
#[derive(Default)]
struct Gathered<'a> {
    running: Vec<&'a ExecutionState>,
    finished: Vec<&'a ExecutionState>,
    overdue: usize,
}

/// The status page's content, from the flow at `offset` (in the page's order).
pub fn overview(watch: &WatchSet, health: &FlowHealth, offset: usize) -> Overview {
    let now = unix_seconds(SystemTime::now());
    let mut flows: Vec<FlowOverview> = gather(watch)
        .into_iter()
        .map(|(key, g)| flow_overview(watch, health, key, g, now))
        .collect();
    flows.sort_by(|a, b| {
        (b.overdue > 0, b.without_recent_success, &a.key).cmp(&(
            a.overdue > 0,
            a.without_recent_success,
            &b.key,
        ))
    });
    let flows_total = flows.len();
    let offset = offset.min(flows_total.saturating_sub(1));
    let settings = health.settings();
    Overview {
        now,
        watched: watch.len(),
        by_status: watch.by_status().into_iter().collect(),
        overdue: flows.iter().map(|f| f.overdue).sum(),
        without_recent_success: flows.iter().filter(|f| f.without_recent_success).count(),
        flows_total,
        offset,
        flows: flows
            .into_iter()
            .skip(offset)
            .take(FLOWS_PER_PAGE)
            .collect(),
        overdue_factor: settings.overdue_factor,
        overdue_min: settings.overdue_min,
        min_history: settings.min_history,
    }
}

/// Every watched flow and every flow with watched executions, with those executions.
fn gather(watch: &WatchSet) -> BTreeMap<FlowKey, Gathered<'_>> {
    let mut gathered: BTreeMap<FlowKey, Gathered<'_>> = watch
        .flow_keys()
        .map(|k| (k.clone(), Gathered::default()))
        .collect();
    let mut current: Option<(FlowKey, Gathered<'_>)> = None;
    // Executions come in key order, so one flow's are together: one FlowKey per flow.
    for state in watch.executions() {
        let key = &state.entry.key;
        let same = current.as_ref().is_some_and(|(f, _)| {
            *f.instance_id == *key.instance_id && *f.flow_name == *key.flow_name
        });
        if !same {
            if let Some((flow, g)) = current.take() {
                gathered.insert(flow, g);
            }
            let flow = FlowKey::of(key);
            let g = gathered.remove(&flow).unwrap_or_default();
            current = Some((flow, g));
        }
        if let Some((_, g)) = current.as_mut() {
            g.add(state);
        }
    }
    if let Some((flow, g)) = current {
        gathered.insert(flow, g);
    }
    gathered
}

fn flow_overview(
    watch: &WatchSet,
    health: &FlowHealth,
    key: FlowKey,
    mut g: Gathered<'_>,
    now: f64,
) -> FlowOverview {
    let freshness = health.freshness(&key);
    let entry = watch.flow(&key).map(|f| &f.entry);
    let within = entry.and_then(|e| e.expect_success_within);
    let without_recent_success = within.is_some_and(|w| {
        freshness
            .success_or_watched()
            .is_none_or(|t| now - t > w.as_secs_f64())
    });
    let (running_total, finished_total) = (g.running.len(), g.finished.len());
    let started = |s: &ExecutionState| start_of(s).unwrap_or(f64::INFINITY);
    g.running.sort_by(|a, b| {
        b.run
            .overdue
            .cmp(&a.run.overdue)
            .then(started(a).total_cmp(&started(b)))
    });
    g.running.truncate(RUNNING_SHOWN);
    let ended = |s: &ExecutionState| end_of(s).unwrap_or(f64::NEG_INFINITY);
    g.finished.sort_by(|a, b| ended(b).total_cmp(&ended(a)));
    g.finished.truncate(FINISHED_SHOWN);
    let min_history = health.settings().min_history;
    FlowOverview {
        median: health
            .forecast()
            .median(&key.instance_id, &key.flow_name, min_history),
        samples: health.forecast().samples(&key.instance_id, &key.flow_name),
        discovered: entry.is_some(),
        key,
        last_success: freshness.last_success,
        last_failure: freshness.last_failure,
        expect_success_within: within,
        without_recent_success,
        running: g.running.iter().map(|s| running(health, s)).collect(),
        running_total,
        overdue: g.overdue,
        finished: g.finished.iter().map(|s| finished(s)).collect(),
        finished_total,
    }
}

fn running(health: &FlowHealth, s: &ExecutionState) -> Running {
    let start = start_of(s);
    let expected_end = start
        .and_then(|t| health.expectation_of(&s.entry.key, t))
        .map(|e| e.expected_end);
    Running {
        execution_id: s.entry.key.execution_id.to_string(),
        status: s.status,
        start,
        expected_end,
        overdue: s.run.overdue,
        labels: s.entry.labels.clone(),
    }
}

impl<'a> Gathered<'a> {
    fn add(&mut self, state: &'a ExecutionState) {
        if state.is_done() {
            self.finished.push(state);
        } else {
            self.overdue += usize::from(state.run.overdue);
            self.running.push(state);
        }
    }
}

fn start_of(s: &ExecutionState) -> Option<f64> {
    s.observation.as_ref().and_then(|o| o.start_time)
}

fn end_of(s: &ExecutionState) -> Option<f64> {
    s.observation.as_ref().and_then(|o| o.end_time)
}

fn finished(s: &ExecutionState) -> Finished {
    let o = s.observation.as_deref();
    Finished {
        execution_id: s.entry.key.execution_id.to_string(),
        status: s.status,
        start: start_of(s),
        end: end_of(s),
        message: s
            .rejected
            .clone()
            .or_else(|| o.and_then(|o| o.message.clone())),
        source: o.and_then(|o| o.source_info.as_ref()).map(source_text),
        diagnostics: o.and_then(|o| o.diagnostic_reports_root_s3_uri.clone()),
        labels: s.entry.labels.clone(),
    }
}

/// Where a run read its data from, in one line.
fn source_text(source: &SourceInfo) -> String {
    match (&source.s3_source, &source.dataset_source) {
        (Some(s3), _) => format!("s3://{}/{}", s3.bucket_name, s3.key),
        (None, Some(dataset)) => format!("dataset {}", dataset.dataset_identifier),
        (None, None) => source.source_type.clone(),
    }
}
