//! The watchlist: which flow executions to watch. It is parsed with spans, so every problem names
//! `file:line:column`, and every problem in the file is reported at once.
//!
//! Ids are checked against the API model's rules here, because the SDK checks none of them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use std::time::Duration;

use toml_edit::{Document, Item, Value};

use crate::input::diagnostic::{Diagnostic, Diagnostics, Location, SourceText, line_of};
use crate::input::duration::{self, DurationError};
use crate::model::{
    ExecutionKey, FlowEntry, FlowKey, Interner, MAX_LABEL_NAME_CHARS, MAX_LABEL_VALUE_CHARS,
    MAX_LABELS, WatchEntry, check_flow_name, check_uuid,
};

/// A parsed, validated watchlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watchlist {
    pub entries: Vec<WatchEntry>,
    pub flows: Vec<FlowEntry>,
}

type Span = Option<std::ops::Range<usize>>;

impl Watchlist {
    /// Reads and validates the watchlist file.
    pub fn load(path: &Path) -> Result<Self, Diagnostics> {
        Self::parse(path, &Self::read(path)?)
    }

    /// The watchlist file's text, within [`crate::input::MAX_WATCHLIST_BYTES`].
    pub fn read(path: &Path) -> Result<String, Diagnostics> {
        crate::input::read_text(path, crate::input::MAX_WATCHLIST_BYTES).map_err(|e| {
            Diagnostics(vec![Diagnostic::new(
                Location::Path(path.to_path_buf()),
                format!("cannot read watchlist: {e}"),
            )])
        })
    }

    /// Validates watchlist text; `path` is only used to name locations.
    ///
    /// A large watchlist is parsed one entry group at a time (see [`entry_chunks`]), so its peak
    /// memory is that of the entries, not of a syntax tree of the whole file; if any group does
    /// not parse on its own, the whole text is parsed at once and its error reported.
    pub fn parse(path: &Path, text: &str) -> Result<Self, Diagnostics> {
        let src = SourceText::new(path, text);
        if text.len() >= CHUNKED_FROM
            && let Some(result) = Self::parse_chunked(&src, text)
        {
            return result;
        }
        let doc = Document::parse(text)
            .map_err(|e| Diagnostics(vec![src.at(e.span(), toml_message(e.message()))]))?;
        let mut collector = Collector::default();
        collector.take(&src, doc.as_table());
        collector.finish(&src)
    }

    /// `None` when some group is not valid TOML on its own.
    fn parse_chunked(src: &SourceText<'_>, text: &str) -> Option<Result<Self, Diagnostics>> {
        let mut collector = Collector::default();
        for range in entry_chunks(text, ENTRIES_PER_CHUNK) {
            let doc = Document::parse(&text[range.clone()]).ok()?;
            collector.take(&src.shifted(range.start), doc.as_table());
        }
        Some(collector.finish(src))
    }
}

/// Watchlists at least this large are parsed in groups of entries.
const CHUNKED_FROM: usize = 256 * 1024;
/// Entries per group.
const ENTRIES_PER_CHUNK: usize = 512;

/// Byte ranges of `text` that each start at a `[[execution]]` or `[[flow]]` header line (the first
/// at 0) and hold `per_chunk` such headers, so each is a TOML document of its own.
fn entry_chunks(text: &str, per_chunk: usize) -> Vec<std::ops::Range<usize>> {
    let mut bounds = vec![0];
    let mut headers = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let head = line.trim();
        let head = head.split_once('#').map_or(head, |(h, _)| h).trim_end();
        if head == "[[execution]]" || head == "[[flow]]" {
            if headers > 0 && headers % per_chunk == 0 {
                bounds.push(offset);
            }
            headers += 1;
        }
        offset += line.len();
    }
    bounds.push(text.len());
    bounds.windows(2).map(|w| w[0]..w[1]).collect()
}

/// Gathers entries and problems from one or more parsed documents of one watchlist.
#[derive(Default)]
struct Collector {
    problems: Vec<Diagnostic>,
    entries: Vec<WatchEntry>,
    flows: Vec<FlowEntry>,
    seen: HashMap<ExecutionKey, usize>,
    seen_flows: HashMap<FlowKey, usize>,
    any_table: bool,
    names: Interner,
}

impl Collector {
    fn take(&mut self, src: &SourceText<'_>, root: &toml_edit::Table) {
        let problems = &mut self.problems;
        for (name, _) in root.iter() {
            if name != "execution" && name != "flow" {
                let span = root.key(name).and_then(|k| k.span());
                problems.push(src.at(
                    span,
                    format!(
                        "unknown key `{name}`: a watchlist holds only [[execution]] and [[flow]] tables"
                    ),
                ));
            }
        }
        let execution_tables = tables_of(src, root, "execution", problems);
        let flow_tables = tables_of(src, root, "flow", problems);
        self.any_table |= !execution_tables.is_empty() || !flow_tables.is_empty();

        for (span, fields) in execution_tables {
            let before = self.problems.len();
            let entry = parse_entry(
                src,
                span.clone(),
                &fields,
                &mut self.problems,
                &mut self.names,
            );
            let Some(entry) = entry else { continue };
            if self.problems.len() > before {
                continue;
            }
            if let Some(d) = duplicate(src, &span, &mut self.seen, &entry.key, "execution") {
                self.problems.push(d);
                continue;
            }
            self.entries.push(entry);
        }
        for (span, fields) in flow_tables {
            let before = self.problems.len();
            let flow = parse_flow(src, span.clone(), &fields, &mut self.problems);
            let Some(flow) = flow else { continue };
            if self.problems.len() > before {
                continue;
            }
            if let Some(d) = duplicate(src, &span, &mut self.seen_flows, &flow.key, "flow") {
                self.problems.push(d);
                continue;
            }
            self.flows.push(flow);
        }
    }

    fn finish(mut self, src: &SourceText<'_>) -> Result<Watchlist, Diagnostics> {
        if !self.any_table && self.problems.is_empty() {
            self.problems.push(src.at(
                None,
                "the watchlist has no [[execution]] or [[flow]] entries: add at least one",
            ));
        }
        if self.problems.is_empty() {
            Ok(Watchlist {
                entries: self.entries,
                flows: self.flows,
            })
        } else {
            Err(Diagnostics(self.problems))
        }
    }
}

/// The `[[name]]` tables (or `name = [{…}]` inline tables) of the document.
fn tables_of<'a>(
    src: &SourceText<'_>,
    root: &'a toml_edit::Table,
    name: &str,
    problems: &mut Vec<Diagnostic>,
) -> Vec<(Span, EntryFields<'a>)> {
    let mut tables = Vec::new();
    match root.get(name) {
        None => {}
        Some(Item::ArrayOfTables(array)) => {
            for table in array.iter() {
                tables.push((table.span(), EntryFields::Table(table)));
            }
        }
        Some(Item::Value(Value::Array(array))) => {
            for value in array.iter() {
                match value {
                    Value::InlineTable(table) => {
                        tables.push((table.span(), EntryFields::Inline(table)))
                    }
                    other => problems.push(src.at(
                        other.span(),
                        format!("expected a {name} table, found {}", other.type_name()),
                    )),
                }
            }
        }
        Some(other) => {
            let span = root.key(name).and_then(|k| k.span());
            problems.push(src.at(
                span.or(other.span()),
                format!(
                    "`{name}` must be an array of tables ([[{name}]]), found {}",
                    other.type_name()
                ),
            ));
        }
    }
    tables
}

/// The problem of an entry listed twice, naming both lines; records the entry's line otherwise.
fn duplicate<K: Clone + Eq + std::hash::Hash + fmt::Display>(
    src: &SourceText<'_>,
    span: &Span,
    seen: &mut HashMap<K, usize>,
    key: &K,
    what: &str,
) -> Option<Diagnostic> {
    let here = src.at(span.clone(), "");
    let line = line_of(&here.location).unwrap_or(0);
    if let Some(first) = seen.get(key) {
        return Some(src.at(
            span.clone(),
            format!(
                "duplicate entry for {what} {key}: already listed at line {first} (this is line {line})"
            ),
        ));
    }
    seen.insert(key.clone(), line);
    None
}

/// A TOML parser message is several lines with a caret diagram; the first line says what is wrong.
pub(crate) fn toml_message(message: &str) -> String {
    let first = message.trim().lines().next().unwrap_or("invalid TOML");
    format!("invalid TOML: {}", first.trim_end_matches('.'))
}

/// `[[execution]]` tables and `execution = [{…}]` inline tables, read the same way.
enum EntryFields<'a> {
    Table(&'a toml_edit::Table),
    Inline(&'a toml_edit::InlineTable),
}

impl EntryFields<'_> {
    fn keys(&self) -> Vec<(String, Option<std::ops::Range<usize>>)> {
        match self {
            Self::Table(t) => t
                .iter()
                .map(|(k, _)| (k.to_string(), t.key(k).and_then(|k| k.span())))
                .collect(),
            Self::Inline(t) => t
                .iter()
                .map(|(k, _)| (k.to_string(), t.key(k).and_then(|k| k.span())))
                .collect(),
        }
    }

    fn get(&self, key: &str) -> Option<FieldValue<'_>> {
        match self {
            Self::Table(t) => t.get(key).map(|item| match item {
                Item::Value(v) => FieldValue::Value(v),
                Item::Table(t) => FieldValue::Table(t),
                other => FieldValue::Other(other.type_name(), other.span()),
            }),
            Self::Inline(t) => t.get(key).map(FieldValue::Value),
        }
    }
}

enum FieldValue<'a> {
    Value(&'a Value),
    Table(&'a toml_edit::Table),
    Other(&'static str, Option<std::ops::Range<usize>>),
}

impl FieldValue<'_> {
    fn span(&self) -> Option<std::ops::Range<usize>> {
        match self {
            Self::Value(v) => v.span(),
            Self::Table(t) => t.span(),
            Self::Other(_, span) => span.clone(),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Self::Value(v) => v.type_name(),
            Self::Table(_) => "table",
            Self::Other(name, _) => name,
        }
    }
}

const ENTRY_KEYS: [&str; 4] = ["instance_id", "flow_name", "execution_id", "labels"];
const FLOW_KEYS: [&str; 5] = [
    "instance_id",
    "flow_name",
    "since",
    "expect_success_within",
    "labels",
];

/// Reads the fields of one `[[table]]`, recording each problem where it sits.
struct FieldReader<'s, 'f, 'p> {
    src: &'s SourceText<'s>,
    span: Span,
    fields: &'f EntryFields<'f>,
    table: &'static str,
    problems: &'p mut Vec<Diagnostic>,
}

impl FieldReader<'_, '_, '_> {
    fn unknown_keys(&mut self, allowed: &[&str]) {
        for (key, key_span) in self.fields.keys() {
            if !allowed.contains(&key.as_str()) {
                self.problems.push(self.src.at(
                    key_span,
                    format!(
                        "unknown key `{key}` in [[{}]]: expected one of {}",
                        self.table,
                        allowed.join(", ")
                    ),
                ));
            }
        }
    }

    /// A required string, checked by `check`.
    fn string(&mut self, name: &str, check: &dyn Fn(&str) -> Result<(), String>) -> Option<String> {
        match self.fields.get(name) {
            None => {
                self.problems.push(self.src.at(
                    self.span.clone(),
                    format!("missing field `{name}` in [[{}]]", self.table),
                ));
                None
            }
            Some(FieldValue::Value(Value::String(s))) => match check(s.value()) {
                Ok(()) => Some(s.value().to_string()),
                Err(message) => {
                    self.problems.push(self.src.at(s.span(), message));
                    None
                }
            },
            Some(other) => {
                self.problems.push(self.src.at(
                    other.span(),
                    format!("`{name}` must be a string, found {}", other.type_name()),
                ));
                None
            }
        }
    }

    /// An optional duration field, checked by `parse`.
    fn duration(
        &mut self,
        name: &str,
        parse: fn(&str) -> Result<Duration, String>,
    ) -> Option<Duration> {
        match self.fields.get(name)? {
            FieldValue::Value(Value::String(s)) => match parse(s.value()) {
                Ok(d) => Some(d),
                Err(message) => {
                    self.problems.push(self.src.at(s.span(), message));
                    None
                }
            },
            other => {
                self.problems.push(self.src.at(
                    other.span(),
                    format!(
                        "`{name}` must be a duration string like \"24h\", found {}",
                        other.type_name()
                    ),
                ));
                None
            }
        }
    }

    fn labels(&mut self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        match self.fields.get("labels") {
            None => {}
            Some(FieldValue::Value(Value::InlineTable(t))) => {
                for (k, v) in t.iter() {
                    label(self.src, k, v.as_str(), v.span(), v.type_name(), &mut labels, self.problems);
                }
            }
            Some(FieldValue::Table(t)) => {
                for (k, item) in t.iter() {
                    let type_name = item.type_name();
                    label(self.src, k, item.as_str(), item.span(), type_name, &mut labels, self.problems);
                }
            }
            Some(other) => self.problems.push(self.src.at(
                other.span(),
                format!(
                    "`labels` must be a table of strings, like labels = {{ team = \"planning\" }}; found {}",
                    other.type_name()
                ),
            )),
        }
        if labels.len() > MAX_LABELS {
            let span = self.fields.get("labels").and_then(|l| l.span());
            self.problems.push(self.src.at(
                span,
                format!(
                    "at most {MAX_LABELS} labels per entry; found {}",
                    labels.len()
                ),
            ));
        }
        labels
    }
}

fn parse_entry(
    src: &SourceText<'_>,
    span: Span,
    fields: &EntryFields<'_>,
    problems: &mut Vec<Diagnostic>,
    names: &mut Interner,
) -> Option<WatchEntry> {
    let mut r = FieldReader {
        src,
        span,
        fields,
        table: "execution",
        problems,
    };
    r.unknown_keys(&ENTRY_KEYS);
    let instance_id = r.string("instance_id", &|v| check_uuid("instance_id", v));
    let flow_name = r.string("flow_name", &check_flow_name);
    let execution_id = r.string("execution_id", &|v| check_uuid("execution_id", v));
    let labels = r.labels();
    let key = ExecutionKey::from_checked(
        names.get(&instance_id?),
        names.get(&flow_name?),
        execution_id?,
    );
    Some(WatchEntry { key, labels })
}

fn parse_flow(
    src: &SourceText<'_>,
    span: Span,
    fields: &EntryFields<'_>,
    problems: &mut Vec<Diagnostic>,
) -> Option<FlowEntry> {
    let mut r = FieldReader {
        src,
        span,
        fields,
        table: "flow",
        problems,
    };
    r.unknown_keys(&FLOW_KEYS);
    let instance_id = r.string("instance_id", &|v| check_uuid("instance_id", v));
    let flow_name = r.string("flow_name", &check_flow_name);
    let since = r.duration("since", parse_since);
    let expect_success_within = r.duration("expect_success_within", parse_expect_success_within);
    let labels = r.labels();
    let key = FlowKey {
        instance_id: instance_id?,
        flow_name: flow_name?,
    };
    Some(FlowEntry {
        key,
        since,
        expect_success_within,
        labels,
    })
}

fn parse_expect_success_within(text: &str) -> Result<Duration, String> {
    match duration::parse(text) {
        Ok(within) if within < Duration::from_secs(60) => Err(format!(
            "expect_success_within {text:?} is shorter than a minute: a flow cannot be expected to succeed that often"
        )),
        Ok(within) => Ok(within),
        Err(DurationError::Syntax(e)) => Err(format!(
            "invalid expect_success_within {text:?}: {e} (write a duration like \"26h\")"
        )),
        Err(DurationError::TooLong) => Err(format!(
            "expect_success_within {text:?} is longer than a year"
        )),
    }
}

fn parse_since(text: &str) -> Result<Duration, String> {
    match duration::parse(text) {
        Ok(since) if since.is_zero() => Err("since must be greater than zero: leave it out to watch only executions that start from now on".to_string()),
        Ok(since) => Ok(since),
        Err(DurationError::Syntax(e)) => Err(format!(
            "invalid since {text:?}: {e} (write a duration like \"24h\" or \"90m\")"
        )),
        Err(DurationError::TooLong) => Err(format!(
            "since {text:?} reaches back more than a year, further than the API lists executions"
        )),
    }
}

fn label(
    src: &SourceText<'_>,
    key: &str,
    value: Option<&str>,
    span: Option<std::ops::Range<usize>>,
    type_name: &str,
    labels: &mut BTreeMap<String, String>,
    problems: &mut Vec<Diagnostic>,
) {
    match value {
        Some(_) if key.is_empty() => problems.push(src.at(span, "label names must not be empty")),
        Some(_) if key.chars().count() > MAX_LABEL_NAME_CHARS => problems.push(src.at(
            span,
            format!("label name `{key}` is longer than {MAX_LABEL_NAME_CHARS} characters"),
        )),
        Some(v) if v.chars().count() > MAX_LABEL_VALUE_CHARS => problems.push(src.at(
            span,
            format!(
                "label `{key}` is longer than {MAX_LABEL_VALUE_CHARS} characters ({})",
                v.chars().count()
            ),
        )),
        Some(v) => {
            labels.insert(key.to_string(), v.to_string());
        }
        None => problems.push(src.at(
            span,
            format!("label `{key}` must be a string, found {type_name}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSTANCE: &str = "8850c54e-e187-4fa7-89d4-6370f165174d";
    const EXECUTION: &str = "a1b2c3d4-0000-4000-8000-000000000001";

    fn parse(text: &str) -> Result<Watchlist, Vec<String>> {
        Watchlist::parse(Path::new("w.toml"), text)
            .map_err(|d| d.0.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_valid_entry_parses_with_its_labels() {
        let text = format!(
            "[[execution]]\ninstance_id = \"{INSTANCE}\"\nflow_name = \"daily-orders\"\nexecution_id = \"{EXECUTION}\"\nlabels = {{ team = \"planning\" }}\n"
        );
        let w = parse(&text).expect("valid watchlist");
        assert_eq!(w.entries.len(), 1);
        assert_eq!(&*w.entries[0].key.flow_name, "daily-orders");
        assert_eq!(w.entries[0].labels["team"], "planning");
    }

    #[test]
    fn uuid_rules_follow_the_api_model() {
        assert!(check_uuid("x", INSTANCE).is_ok());
        assert!(check_uuid("x", &INSTANCE.to_uppercase()).is_err());
        assert!(check_uuid("x", &INSTANCE[..35]).is_err());
        assert!(check_uuid("x", "8850c54e-e187-4fa7-89d4-6370f165174g").is_err());
        assert!(check_uuid("x", "8850c54ee187-4fa7-89d4-6370f165174d0").is_err());
        assert!(check_flow_name("a-B-9").is_ok());
        assert!(check_flow_name("").is_err());
        assert!(check_flow_name(&"a".repeat(256)).is_ok());
        assert!(check_flow_name(&"a".repeat(257)).is_err());
        assert!(check_flow_name("daily_orders").is_err());
    }

    #[test]
    fn every_problem_is_reported_with_its_line_and_column() {
        let text = format!(
            "[[execution]]\ninstance_id = \"nope\"\nflow_name = \"bad name\"\nexecution_id = 7\ncolour = \"red\"\n\n[[execution]]\nflow_name = \"f\"\nexecution_id = \"{EXECUTION}\"\n"
        );
        let errors = parse(&text).expect_err("invalid watchlist");
        assert_eq!(
            errors,
            vec![
                "w.toml:5:1: unknown key `colour` in [[execution]]: expected one of instance_id, flow_name, execution_id, labels".to_string(),
                "w.toml:2:15: invalid instance_id \"nope\": must be a lowercase UUID of 36 characters (8-4-4-4-12 hex digits [a-f0-9])".to_string(),
                "w.toml:3:13: invalid flow_name \"bad name\": character ' ' is not allowed (only A-Z, a-z, 0-9 and '-')".to_string(),
                "w.toml:4:16: `execution_id` must be a string, found integer".to_string(),
                "w.toml:7:1: missing field `instance_id` in [[execution]]".to_string(),
            ]
        );
    }

    #[test]
    fn a_duplicate_names_both_lines() {
        let entry = format!(
            "[[execution]]\ninstance_id = \"{INSTANCE}\"\nflow_name = \"f\"\nexecution_id = \"{EXECUTION}\"\n"
        );
        let errors = parse(&format!("{entry}\n{entry}")).expect_err("duplicate");
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("w.toml:6:1: duplicate entry for execution"),
            "{errors:?}"
        );
        assert!(
            errors[0].contains("already listed at line 1 (this is line 6)"),
            "{errors:?}"
        );
    }

    #[test]
    fn syntax_errors_and_empty_files_are_located() {
        let errors = parse("[[execution]\n").expect_err("syntax");
        assert!(errors[0].starts_with("w.toml:1:"), "{errors:?}");
        assert!(errors[0].contains("invalid TOML"), "{errors:?}");
        let errors = parse("# nothing here\n").expect_err("empty");
        assert_eq!(
            errors,
            vec![
                "w.toml:1:1: the watchlist has no [[execution]] or [[flow]] entries: add at least one"
            ]
        );
    }

    #[test]
    fn flow_entries_parse_beside_executions_with_since_and_labels() {
        let text = format!(
            "[[flow]]\ninstance_id = \"{INSTANCE}\"\nflow_name = \"daily-orders\"\nsince = \"24h\"\nlabels = {{ team = \"orders\" }}\n\n\
             [[flow]]\ninstance_id = \"{INSTANCE}\"\nflow_name = \"returns\"\n\n\
             [[execution]]\ninstance_id = \"{INSTANCE}\"\nflow_name = \"daily-orders\"\nexecution_id = \"{EXECUTION}\"\n"
        );
        let w = parse(&text).expect("valid watchlist");
        assert_eq!(w.entries.len(), 1);
        assert_eq!(w.flows.len(), 2);
        assert_eq!(
            w.flows[0].key.to_string(),
            format!("{INSTANCE}/daily-orders")
        );
        assert_eq!(w.flows[0].since, Some(Duration::from_secs(86_400)));
        assert_eq!(w.flows[0].labels["team"], "orders");
        assert_eq!(w.flows[1].since, None);
        // A watchlist of flows only is fine.
        let only_flow = format!("[[flow]]\ninstance_id = \"{INSTANCE}\"\nflow_name = \"f\"\n");
        assert_eq!(parse(&only_flow).expect("flows only").flows.len(), 1);
    }

    #[test]
    fn a_flow_needs_its_ids_and_a_positive_since() {
        let errors = parse("[[flow]]\nflow_name = \"f\"\nsince = \"0s\"\n").expect_err("invalid");
        assert_eq!(
            errors,
            vec![
                "w.toml:1:1: missing field `instance_id` in [[flow]]".to_string(),
                "w.toml:3:9: since must be greater than zero: leave it out to watch only executions that start from now on".to_string(),
            ]
        );
        let errors = parse(&format!(
            "[[flow]]\ninstance_id = \"{INSTANCE}\"\nflow_name = \"f\"\nsince = 24\n"
        ))
        .expect_err("invalid");
        assert_eq!(
            errors,
            vec!["w.toml:4:9: `since` must be a duration string like \"24h\", found integer"]
        );
    }

    fn many(n: usize) -> String {
        (0..n)
            .map(|i| {
                format!(
                    "[[execution]] # entry {i}\ninstance_id = \"{INSTANCE}\"\nflow_name = \"f{}\"\nexecution_id = \"a1b2c3d4-0000-4000-8000-{i:012}\"\nlabels = {{ n = \"{i}\" }}\n\n",
                    i % 7
                )
            })
            .collect()
    }

    #[test]
    fn executions_of_one_flow_share_its_instance_id_and_name() {
        let w = parse(&many(3000)).expect("valid");
        let (a, b) = (&w.entries[0].key, &w.entries[7].key);
        assert_eq!(a.flow_name, b.flow_name);
        assert!(std::sync::Arc::ptr_eq(&a.flow_name, &b.flow_name));
        assert!(std::sync::Arc::ptr_eq(
            &a.instance_id,
            &w.entries[2999].key.instance_id
        ));
    }

    #[test]
    fn a_large_watchlist_parses_in_groups_with_the_same_result_and_locations() {
        let text = many(3000);
        assert!(text.len() >= CHUNKED_FROM);
        assert!(entry_chunks(&text, ENTRIES_PER_CHUNK).len() > 5);
        let chunked = parse(&text).expect("valid");
        let src = SourceText::new(Path::new("w.toml"), &text);
        let doc = Document::parse(text.as_str()).expect("toml");
        let mut whole = Collector::default();
        whole.take(&src, doc.as_table());
        let whole = whole.finish(&src).expect("valid");
        assert_eq!(chunked, whole);
        assert_eq!(chunked.entries[2999].labels["n"], "2999");

        // A problem in a late group keeps its line; a duplicate names both lines across groups.
        let mut broken = text.replace(
            "execution_id = \"a1b2c3d4-0000-4000-8000-000000002500\"",
            "execution_id = \"nope\"",
        );
        broken.push_str(&many(1));
        let errors = parse(&broken).expect_err("invalid");
        assert_eq!(
            errors,
            vec![
                "w.toml:15004:16: invalid execution_id \"nope\": must be a lowercase UUID of 36 characters (8-4-4-4-12 hex digits [a-f0-9])".to_string(),
                "w.toml:18001:1: duplicate entry for execution 8850c54e-e187-4fa7-89d4-6370f165174d/f0/a1b2c3d4-0000-4000-8000-000000000000: already listed at line 1 (this is line 18001)".to_string(),
            ]
        );
    }

    #[test]
    fn a_header_inside_a_multiline_string_falls_back_to_one_parse() {
        let mut text = many(2000);
        text.push_str(
            "[[execution]]\ninstance_id = \"x\"\nflow_name = \"f\"\nexecution_id = \"\"\"\n[[execution]]\n\"\"\"\n",
        );
        let errors = parse(&text).expect_err("invalid");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("w.toml:12002:15: invalid instance_id"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("w.toml:12004:16: invalid execution_id"),
            "{errors:?}"
        );
    }

    #[test]
    fn labels_must_be_strings() {
        let text = format!(
            "[[execution]]\ninstance_id = \"{INSTANCE}\"\nflow_name = \"f\"\nexecution_id = \"{EXECUTION}\"\nlabels = {{ team = 3 }}\n"
        );
        let errors = parse(&text).expect_err("bad label");
        assert_eq!(
            errors,
            vec!["w.toml:5:19: label `team` must be a string, found integer"]
        );
    }

    #[test]
    fn labels_are_bounded_in_number_name_and_value() {
        let entry = |labels: &str| {
            format!(
                "[[execution]]\ninstance_id = \"{INSTANCE}\"\nflow_name = \"f\"\nexecution_id = \"{EXECUTION}\"\nlabels = {{ {labels} }}\n"
            )
        };
        let sixteen: Vec<String> = (0..16).map(|i| format!("k{i} = \"v\"")).collect();
        assert!(parse(&entry(&sixteen.join(", "))).is_ok());
        let seventeen: Vec<String> = (0..17).map(|i| format!("k{i} = \"v\"")).collect();
        assert_eq!(
            parse(&entry(&seventeen.join(", "))).expect_err("17 labels"),
            vec!["w.toml:5:10: at most 16 labels per entry; found 17"]
        );
        let long_value = format!("team = \"{}\"", "é".repeat(257));
        assert_eq!(
            parse(&entry(&long_value)).expect_err("long value"),
            vec!["w.toml:5:19: label `team` is longer than 256 characters (257)"]
        );
        assert!(parse(&entry(&format!("team = \"{}\"", "é".repeat(256)))).is_ok());
        let long_name = format!("{} = \"v\"", "n".repeat(65));
        let errors = parse(&entry(&long_name)).expect_err("long name");
        assert!(
            errors[0].ends_with("is longer than 64 characters"),
            "{errors:?}"
        );
    }

    #[test]
    fn docs_name_the_label_bounds_the_reader_applies() {
        let docs = include_str!("../../docs/dashboards.md");
        let docs = docs.split_whitespace().collect::<Vec<_>>().join(" ");
        let bounds = format!(
            "at most **{MAX_LABELS}** labels per entry, each name at most **{MAX_LABEL_NAME_CHARS}** and each value at most **{MAX_LABEL_VALUE_CHARS}** characters"
        );
        assert!(
            docs.contains(&bounds),
            "docs/dashboards.md should say: {bounds}"
        );
    }
}
