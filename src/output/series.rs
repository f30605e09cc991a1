//! The per-execution families (status, start, end and expected end time, overdue, failure info,
//! labels), one small row per
//! execution, written out by hand a chunk at a time, so their memory grows by a row per
//! execution and a scrape never holds the rows' lock for long. Every line is what the prometheus
//! crate would write for the same series (a unit test in `metrics` compares them).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use crate::model::{ExecutionKey, Seconds, Status};

/// The per-execution rows, by execution (so by instance, flow and execution id).
#[derive(Debug, Default)]
pub struct Series {
    rows: Mutex<BTreeMap<ExecutionKey, SeriesRow>>,
    /// The label text set last: the executions of one flow, or of one `[[flow]]` entry, usually
    /// share their labels, and so share this text rather than each keeping a copy.
    last_labels: Mutex<Option<Arc<str>>>,
}

impl Series {
    /// The next piece of the per-execution families, or `None` after the last. The rows are
    /// locked for at most [`ROWS_PER_CHUNK`] executions at a time, so a scrape never holds up
    /// the engine for long, whatever the size of the watch set.
    pub fn next_chunk(&self, cursor: &mut SeriesCursor) -> Option<String> {
        while let Some(family) = FAMILIES.get(cursor.family) {
            let mut text = String::with_capacity(family.chunk_capacity());
            let mut last = None;
            let mut seen = 0;
            let mut flow_labels = FlowLabels::default();
            {
                let rows = crate::model::lock(&self.rows);
                let after = cursor
                    .after
                    .as_ref()
                    .map_or(Bound::Unbounded, Bound::Excluded);
                for (key, row) in rows.range((after, Bound::Unbounded)).take(ROWS_PER_CHUNK) {
                    seen += 1;
                    last = Some(key);
                    if !family.has_sample(row) {
                        continue;
                    }
                    if !cursor.header_written {
                        cursor.header_written = true;
                        let _ = write!(
                            text,
                            "# HELP {0} {1}\n# TYPE {0} gauge\n",
                            family.name, family.help
                        );
                    }
                    family.write(&mut text, &mut flow_labels, key, row);
                }
                cursor.after = last.cloned();
            }
            if seen < ROWS_PER_CHUNK {
                *cursor = SeriesCursor {
                    family: cursor.family + 1,
                    ..SeriesCursor::default()
                };
            }
            if !text.is_empty() {
                return Some(text);
            }
        }
        None
    }

    /// The row of `key`, created when missing.
    fn with_row(&self, key: &ExecutionKey, change: impl FnOnce(&mut SeriesRow)) {
        let mut rows = crate::model::lock(&self.rows);
        match rows.get_mut(key) {
            Some(row) => change(row),
            None => {
                let mut row = SeriesRow::default();
                change(&mut row);
                rows.insert(key.clone(), row);
            }
        }
    }

    pub fn set_status(&self, key: &ExecutionKey, status: Status) {
        self.with_row(key, |row| row.status = Some(status));
    }

    /// Keeps a known time when the API leaves it out.
    pub fn set_times(&self, key: &ExecutionKey, start: Option<f64>, end: Option<f64>) {
        self.with_row(key, |row| {
            row.start = Seconds::of(start.or(row.start.get()));
            row.end = Seconds::of(end.or(row.end.get()));
        });
    }

    /// Sets (or, with `None`, removes) the expected end and overdue series.
    pub fn set_expectation(&self, key: &ExecutionKey, expected_end: Option<f64>, overdue: bool) {
        self.with_row(key, |row| {
            row.expected_end = Seconds::of(expected_end);
            row.overdue = overdue;
        });
    }

    pub fn set_failure(&self, key: &ExecutionKey, message: &str) {
        let message: Arc<str> = failure_label(message).into();
        self.with_row(key, |row| row.failure = Some(message));
    }

    /// Sets the labels of an execution joining the watch set.
    pub fn set_labels(&self, key: &ExecutionKey, labels: &BTreeMap<String, String>) {
        let text = self.label_text(labels);
        self.with_row(key, |row| row.labels = text);
    }

    /// Changes the labels of an execution whose series are exported (after `retain_terminal`
    /// they are gone, and stay gone).
    pub fn relabel(&self, key: &ExecutionKey, labels: &BTreeMap<String, String>) {
        let text = self.label_text(labels);
        if let Some(row) = crate::model::lock(&self.rows).get_mut(key) {
            row.labels = text;
        }
    }

    pub fn remove(&self, key: &ExecutionKey) {
        crate::model::lock(&self.rows).remove(key);
    }

    /// `labels` as the text after the ids (`,label_team="planning"`), or `None` when empty.
    fn label_text(&self, labels: &BTreeMap<String, String>) -> Option<Arc<str>> {
        if labels.is_empty() {
            return None;
        }
        let mut text = String::new();
        for (name, value) in crate::output::info_labels::metric_labels(labels) {
            text.push(',');
            text.push_str(&name);
            text.push_str("=\"");
            escape_label(&mut text, value);
            text.push('"');
        }
        let mut last = crate::model::lock(&self.last_labels);
        match last.as_ref() {
            Some(shared) if **shared == *text => Some(shared.clone()),
            _ => {
                let shared: Arc<str> = text.into();
                *last = Some(shared.clone());
                Some(shared)
            }
        }
    }
}

/// What the per-execution families say of one execution. It is kept small: there is one per
/// watched execution.
#[derive(Debug, Default)]
struct SeriesRow {
    start: Seconds,
    end: Seconds,
    /// With it, the overdue series too.
    expected_end: Seconds,
    /// The `message` label of `flowwatch_execution_failure_info`.
    failure: Option<Arc<str>>,
    /// The `label_*` labels of `flowwatch_execution_labels`, as written after the ids.
    labels: Option<Arc<str>>,
    status: Option<Status>,
    overdue: bool,
}

/// Where the writing of the per-execution families stands between chunks.
#[derive(Debug, Default)]
pub struct SeriesCursor {
    family: usize,
    after: Option<ExecutionKey>,
    header_written: bool,
}

/// Executions per chunk of the exposition (and per hold of the rows' lock).
pub(super) const ROWS_PER_CHUNK: usize = 1024;
/// About the longest line of a per-execution family, to size a chunk so it is not regrown.
const LINE_BYTES: usize = 180;

/// One per-execution family.
pub(super) struct Family {
    pub(super) name: &'static str,
    pub(super) help: &'static str,
    kind: FamilyKind,
}

enum FamilyKind {
    Status,
    StartTime,
    EndTime,
    ExpectedEnd,
    Overdue,
    Failure,
    Labels,
}

pub(super) const FAMILIES: [Family; 7] = [
    Family {
        name: "flowwatch_execution_end_time_seconds",
        help: "End time of the flow execution as reported by the API (unix seconds).",
        kind: FamilyKind::EndTime,
    },
    Family {
        name: "flowwatch_execution_expected_end_timestamp_seconds",
        help: "When the flow execution is expected to end: its start plus the median duration of its flow's recent runs (unix seconds).",
        kind: FamilyKind::ExpectedEnd,
    },
    Family {
        name: "flowwatch_execution_failure_info",
        help: "Always 1 for a FAILED flow execution; its message label carries the API's failure message (at most 256 characters).",
        kind: FamilyKind::Failure,
    },
    Family {
        name: "flowwatch_execution_labels",
        help: "Always 1 for a flow execution with watchlist labels (its own or its [[flow]] entry's), as label_<name>, to join on in alerts.",
        kind: FamilyKind::Labels,
    },
    Family {
        name: "flowwatch_execution_overdue",
        help: "1 while the flow execution runs longer than flow_health.overdue_factor times its flow's median duration and flow_health.overdue_min, else 0.",
        kind: FamilyKind::Overdue,
    },
    Family {
        name: "flowwatch_execution_start_time_seconds",
        help: "Start time of the flow execution as reported by the API (unix seconds).",
        kind: FamilyKind::StartTime,
    },
    Family {
        name: "flowwatch_execution_status",
        help: "Current status of a watched flow execution: 1 for its status, 0 for the others.",
        kind: FamilyKind::Status,
    },
];

impl Family {
    /// Room for a chunk of this family: five lines a row for the status, one for the others.
    fn chunk_capacity(&self) -> usize {
        let lines = match self.kind {
            FamilyKind::Status => Status::ALL.len(),
            _ => 1,
        };
        ROWS_PER_CHUNK * lines * LINE_BYTES
    }

    fn has_sample(&self, row: &SeriesRow) -> bool {
        match self.kind {
            FamilyKind::Status => row.status.is_some(),
            FamilyKind::StartTime => row.start.get().is_some(),
            FamilyKind::EndTime => row.end.get().is_some(),
            FamilyKind::ExpectedEnd | FamilyKind::Overdue => row.expected_end.get().is_some(),
            FamilyKind::Failure => row.failure.is_some(),
            // Beside the execution's other series: without per-execution series, only a failed
            // or overdue execution's, which the alerts join on.
            FamilyKind::Labels => {
                row.labels.is_some()
                    && (row.status.is_some()
                        || row.failure.is_some()
                        || row.expected_end.get().is_some())
            }
        }
    }

    /// Writes the family's samples for one execution, labels in name order as the prometheus
    /// crate writes them.
    fn write(&self, out: &mut String, flow: &mut FlowLabels, key: &ExecutionKey, row: &SeriesRow) {
        let flow = flow.of(key);
        let ids = |out: &mut String| {
            out.push_str(self.name);
            out.push_str("{execution_id=\"");
            escape_label(out, &key.execution_id);
            out.push_str(flow);
        };
        let value = |out: &mut String, v: f64| {
            out.push_str("} ");
            write_value(out, v);
            out.push('\n');
        };
        match self.kind {
            FamilyKind::Status => {
                let Some(status) = row.status else { return };
                // The name and ids are the same on the five lines: written once, copied four times.
                let start = out.len();
                ids(out);
                let end = out.len();
                for (i, s) in Status::ALL.into_iter().enumerate() {
                    if i > 0 {
                        out.extend_from_within(start..end);
                    }
                    out.push_str(",status=\"");
                    out.push_str(s.as_str());
                    out.push_str(if s == status { "\"} 1\n" } else { "\"} 0\n" });
                }
            }
            FamilyKind::StartTime
            | FamilyKind::EndTime
            | FamilyKind::ExpectedEnd
            | FamilyKind::Overdue => {
                let sample = match self.kind {
                    FamilyKind::StartTime => row.start.get(),
                    FamilyKind::EndTime => row.end.get(),
                    FamilyKind::ExpectedEnd => row.expected_end.get(),
                    _ => row
                        .expected_end
                        .get()
                        .map(|_| if row.overdue { 1.0 } else { 0.0 }),
                };
                let Some(sample) = sample else { return };
                ids(out);
                value(out, sample);
            }
            FamilyKind::Failure => {
                let Some(message) = &row.failure else { return };
                ids(out);
                out.push_str(",message=\"");
                escape_label(out, message);
                out.push('"');
                value(out, 1.0);
            }
            FamilyKind::Labels => {
                let Some(labels) = &row.labels else { return };
                ids(out);
                out.push_str(labels);
                value(out, 1.0);
            }
        }
    }
}

/// The labels after `execution_id` (`",flow_name="…",instance_id="…"`), escaped once per flow
/// rather than on every line: the rows come in key order, so a flow's executions follow each
/// other and share its instance and flow name.
#[derive(Default)]
struct FlowLabels {
    /// The instance id and flow name `text` was written for.
    ids: Option<(Arc<str>, Arc<str>)>,
    text: String,
}

impl FlowLabels {
    fn of(&mut self, key: &ExecutionKey) -> &str {
        let same = self.ids.as_ref().is_some_and(|(instance, flow)| {
            Arc::ptr_eq(instance, &key.instance_id) && Arc::ptr_eq(flow, &key.flow_name)
        });
        if !same {
            self.text.clear();
            self.text.push_str("\",flow_name=\"");
            escape_label(&mut self.text, &key.flow_name);
            self.text.push_str("\",instance_id=\"");
            escape_label(&mut self.text, &key.instance_id);
            self.text.push('"');
            self.ids = Some((key.instance_id.clone(), key.flow_name.clone()));
        }
        &self.text
    }
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape_label(out: &mut String, value: &str) {
    if memchr::memchr3(b'\\', b'"', b'\n', value.as_bytes()).is_none() {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A sample value as the text format wants it (`+Inf`, `-Inf`, `NaN`).
fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 && !(v == 0.0 && v.is_sign_negative()) {
        // A whole number prints the same either way; as an integer it skips float formatting.
        out.push_str(itoa::Buffer::new().format(v as i64));
    } else {
        let _ = write!(out, "{v}");
    }
}

/// A failure message made fit for a label value: one line, at most 256 characters.
pub(super) fn failure_label(message: &str) -> String {
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
    fn values_are_written_as_rust_displays_them_whole_or_not() {
        for v in [
            0.0,
            1.0,
            -1.0,
            1_794_999_000.0,
            1_794_999_990.5,
            1_794_999_990.123_456_7,
            -1_794_999_990.001,
            1.5,
            999_999_999_999_999.9,
            0.000_001_5,
            1e15,
            1e20,
            -0.0,
            0.25,
        ] {
            let mut out = String::new();
            write_value(&mut out, v);
            assert_eq!(out, format!("{v}"), "{v}");
        }
    }

    #[test]
    fn random_times_and_fractions_are_written_as_rust_displays_them() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut out = String::new();
        for _ in 0..200_000 {
            // Times with milliseconds as the API gives them, and values of every magnitude,
            // whole numbers among them.
            let v = if rng.bool() {
                1.7e9 + f64::from(rng.u32(..1_000_000_000)) / 1000.0
            } else {
                rng.f64() * 10f64.powi(rng.i32(-7..17))
            };
            let v = if rng.bool() { v.trunc() } else { v };
            let v = if rng.bool() { -v } else { v };
            out.clear();
            write_value(&mut out, v);
            assert_eq!(out, format!("{v}"), "{v:e}");
        }
    }
}
