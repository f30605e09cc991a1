//! The per-execution families (status, start, end and expected end time, overdue, failure info),
//! one small row per execution, written out by hand a chunk at a time, so their memory grows by a
//! row per execution and a scrape never holds the rows' lock for long. Every line is what the
//! prometheus crate would write for the same series (a unit test in `metrics` compares them).
//!
//! A chunk's text is kept once written, within [`WRITTEN_BUDGET`], and the next scrape sends it
//! again unless one of its rows changed, was added or was removed since: between two scrapes most
//! executions do not change (a finished one never does until it is dropped), so most of a scrape
//! is text already written.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::model::{ExecutionKey, Seconds, Status};

/// At most this much written text is kept for later scrapes; past it, chunks are written anew
/// on every scrape, as if nothing were kept.
pub const WRITTEN_BUDGET: usize = 16 << 20;

/// The per-execution rows, by execution (so by instance, flow and execution id).
#[derive(Debug)]
pub struct Series {
    rows: Mutex<Rows>,
}

impl Default for Series {
    fn default() -> Self {
        Self::with_budget(WRITTEN_BUDGET)
    }
}

impl Series {
    fn with_budget(budget: usize) -> Self {
        Self {
            rows: Mutex::new(Rows {
                by_key: BTreeMap::new(),
                changes: 0,
                written: Written::new(budget),
            }),
        }
    }

    /// The next piece of the per-execution families, or `None` after the last. The rows are
    /// locked for at most [`ROWS_PER_CHUNK`] executions at a time, so a scrape never holds up
    /// the engine for long, whatever the size of the watch set.
    pub fn next_chunk(&self, cursor: &mut SeriesCursor) -> Option<Bytes> {
        while cursor.family < FAMILIES.len() {
            let text = crate::model::lock(&self.rows).chunk(cursor);
            if !text.is_empty() {
                return Some(text);
            }
        }
        None
    }

    /// The row of `key`, created when missing; marked changed when `change` changed it.
    fn with_row(&self, key: &ExecutionKey, change: impl FnOnce(&mut SeriesRow)) {
        let mut rows = crate::model::lock(&self.rows);
        let stamp = rows.changes + 1;
        let changed = match rows.by_key.get_mut(key) {
            Some(row) => {
                let before = row.clone();
                change(row);
                let changed = *row != before;
                if changed {
                    row.changed = stamp;
                }
                changed
            }
            None => {
                let mut row = SeriesRow {
                    changed: stamp,
                    ..SeriesRow::default()
                };
                change(&mut row);
                rows.by_key.insert(key.clone(), row);
                true
            }
        };
        if changed {
            rows.changes = stamp;
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

    /// A removed row is a change too: the chunk it was in no longer has the rows it was
    /// written from.
    pub fn remove(&self, key: &ExecutionKey) {
        let mut rows = crate::model::lock(&self.rows);
        if rows.by_key.remove(key).is_some() {
            rows.changes += 1;
        }
    }
}

/// The rows, how many changes they have seen, and the text last written of each chunk.
#[derive(Debug)]
struct Rows {
    by_key: BTreeMap<ExecutionKey, SeriesRow>,
    /// Counts the changes to rows (a row added or removed among them); a row keeps the count of
    /// its own last change.
    changes: u64,
    written: Written,
}

impl Rows {
    /// The text of the chunk at `cursor` (empty when its rows have no sample of its family), the
    /// kept one when its rows are as they were; moves the cursor past it.
    fn chunk(&mut self, cursor: &mut SeriesCursor) -> Bytes {
        let kept = self
            .written
            .get(cursor)
            .filter(|kept| self.unchanged_since(cursor, kept))
            .cloned();
        let chunk = kept.unwrap_or_else(|| {
            let chunk = self.write(cursor);
            self.written.keep(cursor, chunk.clone());
            chunk
        });
        cursor.pass(&chunk);
        if cursor.family == FAMILIES.len() {
            self.written.scraped(cursor.bytes);
        }
        chunk.text
    }

    /// Whether the rows after the cursor are the ones `kept` was written from, none changed.
    fn unchanged_since(&self, cursor: &SeriesCursor, kept: &Chunk) -> bool {
        if kept.as_of == self.changes {
            return true;
        }
        let mut seen = 0;
        let mut last = None;
        for (key, row) in self.after(cursor) {
            if row.changed > kept.as_of {
                return false;
            }
            seen += 1;
            last = Some(key);
        }
        seen == kept.seen && last == kept.last.as_ref()
    }

    fn after(&self, cursor: &SeriesCursor) -> impl Iterator<Item = (&ExecutionKey, &SeriesRow)> {
        let after = cursor
            .after
            .as_ref()
            .map_or(Bound::Unbounded, Bound::Excluded);
        self.by_key
            .range((after, Bound::Unbounded))
            .take(ROWS_PER_CHUNK)
    }

    /// Writes the chunk at `cursor` from the rows as they are.
    fn write(&self, cursor: &SeriesCursor) -> Chunk {
        let family = &FAMILIES[cursor.family];
        let mut text = String::with_capacity(family.chunk_capacity());
        let mut header_written = cursor.header_written;
        let mut flow_labels = FlowLabels::default();
        let mut seen = 0;
        let mut last = None;
        for (key, row) in self.after(cursor) {
            seen += 1;
            last = Some(key);
            if !family.has_sample(row) {
                continue;
            }
            if !header_written {
                header_written = true;
                let _ = write!(
                    text,
                    "# HELP {0} {1}\n# TYPE {0} gauge\n",
                    family.name, family.help
                );
            }
            family.write(&mut text, &mut flow_labels, key, row);
        }
        if self.written.fits {
            // Kept text holds no spare room.
            text.shrink_to_fit();
        }
        Chunk {
            after: cursor.after.clone(),
            header_before: cursor.header_written,
            header_after: header_written,
            as_of: self.changes,
            seen,
            last: last.cloned(),
            text: Bytes::from(text),
        }
    }
}

/// The text of one chunk as written, and what it was written from.
#[derive(Debug, Clone)]
struct Chunk {
    /// The row before its first, and whether its family's header came before it.
    after: Option<ExecutionKey>,
    header_before: bool,
    /// Whether the header was written by the end of it.
    header_after: bool,
    /// [`Rows::changes`] when it was written: a row changed later is not in its text.
    as_of: u64,
    /// How many rows it covers, and the last of them.
    seen: usize,
    last: Option<ExecutionKey>,
    text: Bytes,
}

/// The chunks kept, by family and place in the family, and the bytes of text they hold. Text
/// is kept only while a whole scrape fits in the budget: a watch set too large for it keeps
/// nothing, rather than a budget's worth of chunks that change as often as any other.
#[derive(Debug)]
struct Written {
    by_family: Vec<Vec<Option<Chunk>>>,
    bytes: usize,
    budget: usize,
    /// Whether the last whole scrape fitted in the budget.
    fits: bool,
}

impl Written {
    fn new(budget: usize) -> Self {
        Self {
            by_family: FAMILIES.iter().map(|_| Vec::new()).collect(),
            bytes: 0,
            budget,
            fits: true,
        }
    }

    /// A scrape of `bytes` in all has ended.
    fn scraped(&mut self, bytes: usize) {
        self.fits = bytes <= self.budget;
        if !self.fits {
            self.forget_all();
        }
    }

    fn forget_all(&mut self) {
        self.by_family.iter_mut().for_each(Vec::clear);
        self.bytes = 0;
    }

    /// The chunk kept for the cursor's place, if it starts where the cursor stands.
    fn get(&self, cursor: &SeriesCursor) -> Option<&Chunk> {
        self.by_family[cursor.family]
            .get(cursor.index)?
            .as_ref()
            .filter(|c| c.after == cursor.after && c.header_before == cursor.header_written)
    }

    /// Keeps `chunk` at the cursor's place when the budget has room; the family's later places
    /// go when it is the family's last chunk.
    fn keep(&mut self, cursor: &SeriesCursor, chunk: Chunk) {
        let places = &mut self.by_family[cursor.family];
        if places.len() <= cursor.index {
            places.resize_with(cursor.index + 1, || None);
        }
        let mut freed: usize = places[cursor.index].take().map_or(0, |old| old.text.len());
        if chunk.seen < ROWS_PER_CHUNK {
            freed += places
                .drain(cursor.index + 1..)
                .flatten()
                .map(|c| c.text.len())
                .sum::<usize>();
        }
        self.bytes -= freed;
        if !self.fits {
            return;
        }
        if self.bytes + chunk.text.len() > self.budget {
            self.fits = false;
            return self.forget_all();
        }
        self.bytes += chunk.text.len();
        places[cursor.index] = Some(chunk);
    }
}

/// What the per-execution families say of one execution. It is kept small: there is one per
/// watched execution.
#[derive(Debug, Default, Clone, PartialEq)]
struct SeriesRow {
    start: Seconds,
    end: Seconds,
    /// With it, the overdue series too.
    expected_end: Seconds,
    /// The `message` label of `flowwatch_execution_failure_info`.
    failure: Option<Arc<str>>,
    status: Option<Status>,
    overdue: bool,
    /// The [`Rows::changes`] count of its last change.
    changed: u64,
}

/// Where the writing of the per-execution families stands between chunks.
#[derive(Debug, Default)]
pub struct SeriesCursor {
    family: usize,
    /// The chunk's place in its family.
    index: usize,
    after: Option<ExecutionKey>,
    header_written: bool,
    /// The bytes of text so far in this scrape.
    bytes: usize,
}

impl SeriesCursor {
    /// Moves past `chunk`: to the next chunk of its family, or to the next family after its last.
    fn pass(&mut self, chunk: &Chunk) {
        self.bytes += chunk.text.len();
        if chunk.seen < ROWS_PER_CHUNK {
            *self = SeriesCursor {
                family: self.family + 1,
                bytes: self.bytes,
                ..SeriesCursor::default()
            };
        } else {
            self.index += 1;
            self.after = chunk.last.clone();
            self.header_written = chunk.header_after;
        }
    }
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
}

pub(super) const FAMILIES: [Family; 6] = [
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

    /// Every chunk of one scrape.
    fn scrape(series: &Series) -> Vec<Bytes> {
        let mut cursor = SeriesCursor::default();
        std::iter::from_fn(|| series.next_chunk(&mut cursor)).collect()
    }

    /// The rows of `series` in a new one that has written nothing yet.
    fn unwritten_copy(series: &Series) -> Series {
        let copy = Series::default();
        let rows = crate::model::lock(&series.rows).by_key.clone();
        crate::model::lock(&copy.rows).by_key = rows;
        copy
    }

    fn key(flow: usize, n: usize) -> ExecutionKey {
        ExecutionKey::from_checked("i", format!("flow-{flow}"), format!("e-{n:05}"))
    }

    /// Changes one random row: a field, or the row itself added or removed.
    fn change_one(series: &Series, rng: &mut fastrand::Rng, rows: usize) {
        let k = key(rng.usize(..3), rng.usize(..rows));
        match rng.u8(..6) {
            0 => series.set_status(&k, Status::ALL[rng.usize(..Status::ALL.len())]),
            1 => series.set_times(&k, Some(rng.f64() * 1e9), rng.bool().then_some(1.8e9)),
            2 => series.set_expectation(&k, rng.bool().then_some(1.9e9), rng.bool()),
            3 => series.set_failure(&k, "it \"failed\""),
            _ => series.remove(&k),
        }
    }

    #[test]
    fn every_scrape_is_what_a_first_scrape_of_the_same_rows_writes() {
        let mut rng = fastrand::Rng::with_seed(11);
        let series = Series::default();
        let rows = 3 * ROWS_PER_CHUNK;
        for _ in 0..2 * rows {
            change_one(&series, &mut rng, rows);
        }
        for round in 0..40 {
            // From no change at all to changes in most chunks.
            for _ in 0..rng.usize(..=(round * 3)) {
                change_one(&series, &mut rng, rows);
            }
            assert_eq!(
                scrape(&series).concat(),
                scrape(&unwritten_copy(&series)).concat(),
                "round {round}"
            );
        }
    }

    #[test]
    fn a_chunk_is_written_again_only_when_one_of_its_rows_changed() {
        let series = Series::default();
        for n in 0..3 * ROWS_PER_CHUNK {
            series.set_status(&key(0, n), Status::Succeeded);
        }
        let first = scrape(&series);
        assert_eq!(first.len(), 3, "three chunks of the status family");
        let same = |a: &Bytes, b: &Bytes| a.as_ptr() == b.as_ptr();
        // A status set to what it already is changes nothing.
        series.set_status(&key(0, 5), Status::Succeeded);
        let second = scrape(&series);
        assert!(first.iter().zip(&second).all(|(a, b)| same(a, b)));
        // A change in the second chunk is written there alone.
        series.set_status(&key(0, ROWS_PER_CHUNK + 5), Status::Failed);
        let third = scrape(&series);
        assert!(same(&second[0], &third[0]) && same(&second[2], &third[2]));
        assert!(!same(&second[1], &third[1]));
        // A removed row moves the rows after it: the chunks from its own on are written again.
        series.remove(&key(0, ROWS_PER_CHUNK + 7));
        let fourth = scrape(&series);
        assert!(same(&third[0], &fourth[0]));
        assert!(!same(&third[1], &fourth[1]) && !same(&third[2], &fourth[2]));
        assert_eq!(fourth.concat(), scrape(&unwritten_copy(&series)).concat());
    }

    /// The bytes of text kept, counted, and counted again from the chunks themselves.
    fn kept(series: &Series) -> (usize, usize) {
        let rows = crate::model::lock(&series.rows);
        let counted = rows
            .written
            .by_family
            .iter()
            .flatten()
            .flatten()
            .map(|c| c.text.len())
            .sum();
        (rows.written.bytes, counted)
    }

    #[test]
    fn text_is_kept_only_while_a_whole_scrape_fits_in_the_budget() {
        let series = Series::with_budget(400 * 1024);
        let add = |rows: std::ops::Range<usize>| {
            for n in rows {
                series.set_status(&key(n % 3, n), Status::InProgress);
                series.set_times(&key(n % 3, n), Some(1.8e9 + n as f64), None);
            }
        };
        add(0..ROWS_PER_CHUNK / 2);
        let small = scrape(&series).concat();
        let (bytes, counted) = kept(&series);
        assert_eq!(bytes, small.len(), "all of a scrape that fits is kept");
        assert_eq!(counted, bytes);
        add(ROWS_PER_CHUNK / 2..4 * ROWS_PER_CHUNK);
        let large = scrape(&series).concat();
        assert!(large.len() > 400 * 1024);
        assert_eq!(
            kept(&series),
            (0, 0),
            "a scrape past the budget keeps nothing"
        );
        assert_eq!(scrape(&series).concat(), large);
        assert_eq!(kept(&series), (0, 0));
        for n in ROWS_PER_CHUNK / 2..4 * ROWS_PER_CHUNK {
            series.remove(&key(n % 3, n));
        }
        assert_eq!(scrape(&series).concat(), small);
        let (bytes, _) = kept(&series);
        assert!(bytes == 0 || bytes == small.len());
        scrape(&series);
        assert_eq!(
            kept(&series),
            (small.len(), small.len()),
            "kept again once it fits"
        );
    }

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
