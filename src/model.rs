//! The core vocabulary every other module shares: execution and flow keys, statuses, what the
//! API said about an execution (an [`Observation`]), how it was seen ([`ObservedVia`]), the
//! [`Transition`] it caused, and time helpers. It depends on no other module of the crate.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One flow execution, with ids that satisfy the API model.
///
/// The ids live once, behind an `Arc`: the engine's table, its due queue, the forecast and every
/// transition hold the same key, so a copy is a reference count, not three strings. The ids are
/// read through `Deref` (`key.flow_name`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecutionKey(Arc<KeyIds>);

/// The three ids of an [`ExecutionKey`]. The instance and flow are shared by every execution of
/// a flow read from one watchlist (see [`Interner`]).
#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyIds {
    pub instance_id: Arc<str>,
    pub flow_name: Arc<str>,
    pub execution_id: Box<str>,
}

impl ExecutionKey {
    /// Builds a key after checking each id against the API model.
    pub fn new(
        instance_id: impl Into<String>,
        flow_name: impl Into<String>,
        execution_id: impl Into<String>,
    ) -> Result<Self, String> {
        let (instance_id, flow_name, execution_id): (String, String, String) =
            (instance_id.into(), flow_name.into(), execution_id.into());
        let key = Self::from_checked(instance_id, flow_name, execution_id);
        check_uuid("instance_id", &key.instance_id)?;
        check_flow_name(&key.flow_name)?;
        check_uuid("execution_id", &key.execution_id)?;
        Ok(key)
    }

    /// Builds a key from ids already checked (read back from the store, or from a listed flow).
    pub fn from_checked(
        instance_id: impl Into<Arc<str>>,
        flow_name: impl Into<Arc<str>>,
        execution_id: impl Into<Box<str>>,
    ) -> Self {
        Self(Arc::new(KeyIds {
            instance_id: instance_id.into(),
            flow_name: flow_name.into(),
            execution_id: execution_id.into(),
        }))
    }
}

/// Hands out one shared copy of each instance id and flow name, so 100,000 executions of a few
/// hundred flows hold a few hundred copies of them, not 200,000.
#[derive(Debug, Default)]
pub struct Interner {
    seen: std::collections::HashSet<Arc<str>>,
}

impl Interner {
    pub fn get(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.seen.get(text) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(text);
        self.seen.insert(shared.clone());
        shared
    }
}

impl std::ops::Deref for ExecutionKey {
    type Target = KeyIds;

    fn deref(&self) -> &KeyIds {
        &self.0
    }
}

impl fmt::Debug for ExecutionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ExecutionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.instance_id, self.flow_name, self.execution_id
        )
    }
}

/// The model's `UUID` shape: 36 characters, `[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}`.
pub fn check_uuid(field: &str, value: &str) -> Result<(), String> {
    let groups = [8, 4, 4, 4, 12];
    let well_formed = value.len() == 36
        && value.split('-').count() == groups.len()
        && value.split('-').zip(groups).all(|(part, len)| {
            part.len() == len
                && part
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
    if well_formed {
        Ok(())
    } else {
        Err(format!(
            "invalid {field} {value:?}: must be a lowercase UUID of 36 characters \
             (8-4-4-4-12 hex digits [a-f0-9])"
        ))
    }
}

/// The model's `DataIntegrationFlowName` shape: 1 to 256 characters of `[A-Za-z0-9-]`.
pub fn check_flow_name(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 256 {
        return Err(format!(
            "invalid flow_name {value:?}: must be 1 to 256 characters long, not {}",
            value.chars().count()
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(format!(
            "invalid flow_name {value:?}: character {bad:?} is not allowed (only A-Z, a-z, 0-9 and '-')"
        ));
    }
    Ok(())
}

/// One flow, named by instance and flow name: what `[[flow]]` entries watch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub instance_id: String,
    pub flow_name: String,
}

impl FlowKey {
    /// The flow an execution belongs to.
    pub fn of(key: &ExecutionKey) -> Self {
        Self {
            instance_id: key.instance_id.to_string(),
            flow_name: key.flow_name.to_string(),
        }
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.instance_id, self.flow_name)
    }
}

/// Labels one watchlist entry may carry, and the longest name and value (in characters). They
/// travel in every event and in the `flowwatch_execution_labels` and `flowwatch_flow_labels`
/// series, so they are bounded where they are read.
pub const MAX_LABELS: usize = 16;
pub const MAX_LABEL_NAME_CHARS: usize = 64;
pub const MAX_LABEL_VALUE_CHARS: usize = 256;

/// One watchlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEntry {
    pub key: ExecutionKey,
    /// Free-form labels (at most [`MAX_LABELS`]), copied into events, `/status` and the
    /// `flowwatch_execution_labels` series that alerts join on.
    pub labels: BTreeMap<String, String>,
}

/// A `[[flow]]` entry: every execution of the flow is discovered and watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowEntry {
    pub key: FlowKey,
    /// Executions that started before `now - since` are ignored. `None`: those that started
    /// before flowwatch first saw the flow are ignored.
    pub since: Option<Duration>,
    /// A success is expected at least this often (`flowwatch_flow_success_expected_within_seconds`).
    pub expect_success_within: Option<Duration>,
    /// Copied to every discovered execution.
    pub labels: BTreeMap<String, String>,
}

/// An execution's status as flowwatch reports it: the API's three values plus `UNKNOWN` (not yet
/// observed) and `NOT_FOUND` (the API kept saying ResourceNotFound past the grace period).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Unknown,
    InProgress,
    Succeeded,
    Failed,
    NotFound,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Unknown,
        Status::InProgress,
        Status::Succeeded,
        Status::Failed,
        Status::NotFound,
    ];

    /// The statuses a transition can lead to (nothing transitions back to `UNKNOWN`).
    pub const TARGETS: [Status; 4] = [
        Status::InProgress,
        Status::Succeeded,
        Status::Failed,
        Status::NotFound,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Unknown => "UNKNOWN",
            Status::InProgress => "IN_PROGRESS",
            Status::Succeeded => "SUCCEEDED",
            Status::Failed => "FAILED",
            Status::NotFound => "NOT_FOUND",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Terminal executions are not polled again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::NotFound)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status string the API returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum ApiStatus {
    InProgress,
    Succeeded,
    Failed,
    /// A value the model does not (yet) list; kept so it can be logged.
    Unrecognised(String),
}

impl ApiStatus {
    pub fn as_str(&self) -> &str {
        match self {
            ApiStatus::InProgress => "IN_PROGRESS",
            ApiStatus::Succeeded => "SUCCEEDED",
            ApiStatus::Failed => "FAILED",
            ApiStatus::Unrecognised(raw) => raw,
        }
    }
}

impl From<String> for ApiStatus {
    fn from(raw: String) -> Self {
        match raw.as_str() {
            "IN_PROGRESS" => ApiStatus::InProgress,
            "SUCCEEDED" => ApiStatus::Succeeded,
            "FAILED" => ApiStatus::Failed,
            _ => ApiStatus::Unrecognised(raw),
        }
    }
}

impl From<ApiStatus> for String {
    fn from(status: ApiStatus) -> Self {
        status.as_str().to_string()
    }
}

/// Where the execution's data came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub source_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_source: Option<S3Source>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset_source: Option<DatasetSource>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Source {
    pub bucket_name: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetSource {
    pub dataset_identifier: String,
}

/// Everything one successful call told us about an execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub status: ApiStatus,
    pub source_info: Option<SourceInfo>,
    pub message: Option<String>,
    /// Unix time in seconds (the API may send fractions).
    pub start_time: Option<f64>,
    pub end_time: Option<f64>,
    pub diagnostic_reports_root_s3_uri: Option<String>,
}

/// The earliest time from outside flowwatch believes: 2000-01-01T00:00:00Z. AWS Supply Chain is
/// far younger, so an earlier time is a broken clock or a hostile answer.
pub const EARLIEST_BELIEVED: f64 = 946_684_800.0;
/// How far ahead of this host's clock a time from outside may lie: clocks drift, not by a day.
pub const AHEAD_BELIEVED: f64 = 86_400.0;

/// Whether a unix time from outside (the API, a pushed event, a store an older version wrote)
/// lies in the window flowwatch believes: from 2000 to a day ahead of `now`. A `now` before
/// 2000 is this host's clock being wrong (a board without a battery-backed clock, before NTP),
/// not the time being hostile: then only the lower bound holds.
pub fn believable(t: f64, now: f64) -> bool {
    t.is_finite() && t >= EARLIEST_BELIEVED && (!clock_is_set(now) || t <= now + AHEAD_BELIEVED)
}

/// Whether this host's clock, reading `now`, can judge how far ahead a time is.
pub fn clock_is_set(now: f64) -> bool {
    now >= EARLIEST_BELIEVED
}

impl Observation {
    /// Takes out a start or end time outside the [`believable`] window, so that it reaches
    /// neither flow health, nor metrics, nor events. Returns what was taken out, for the log.
    pub fn drop_unbelievable_times(&mut self, now: f64) -> Vec<(&'static str, f64)> {
        let mut dropped = Vec::new();
        for (name, slot) in [
            ("start_time", &mut self.start_time),
            ("end_time", &mut self.end_time),
        ] {
            if let Some(t) = *slot
                && !believable(t, now)
            {
                dropped.push((name, t));
                *slot = None;
            }
        }
        dropped
    }
}

/// The bounded set of API outcomes, used as the `outcome` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Success,
    Throttled,
    QuotaExceeded,
    NotFound,
    AccessDenied,
    Validation,
    Conflict,
    InternalError,
    Timeout,
    TransportError,
    /// The request could not be built here (an invalid region, say): the API never saw it.
    LocalError,
    /// No credentials to sign with: none found, expired, or an AssumeRole that STS refused.
    /// The API never saw the request.
    CredentialsError,
}

impl Outcome {
    /// In declaration order: metrics index their series by `outcome as usize`.
    pub const ALL: [Outcome; 12] = [
        Outcome::Success,
        Outcome::Throttled,
        Outcome::QuotaExceeded,
        Outcome::NotFound,
        Outcome::AccessDenied,
        Outcome::Validation,
        Outcome::Conflict,
        Outcome::InternalError,
        Outcome::Timeout,
        Outcome::TransportError,
        Outcome::LocalError,
        Outcome::CredentialsError,
    ];

    pub fn metric_label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Throttled => "throttled",
            Outcome::QuotaExceeded => "quota_exceeded",
            Outcome::NotFound => "not_found",
            Outcome::AccessDenied => "access_denied",
            Outcome::Validation => "validation",
            Outcome::Conflict => "conflict",
            Outcome::InternalError => "internal_error",
            Outcome::Timeout => "timeout",
            Outcome::TransportError => "transport_error",
            Outcome::LocalError => "local_error",
            Outcome::CredentialsError => "credentials_error",
        }
    }
}

/// An API call flowwatch makes, named as the `operation` metric label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// GetDataIntegrationFlowExecution: one execution, a poll.
    Get,
    /// ListDataIntegrationFlowExecutions: one page of a watched flow's executions.
    List,
    /// SQS, for push: a long poll of the queue.
    ReceiveMessage,
    /// SQS, for push: the messages applied and committed leave the queue.
    DeleteMessageBatch,
    /// DynamoDB, replicas on shared state: the table's check at start-up.
    DescribeTable,
    /// DynamoDB: a standby's read of the lease.
    GetItem,
    /// DynamoDB: the lease created.
    PutItem,
    /// DynamoDB: the lease taken over, renewed or released.
    UpdateItem,
    /// DynamoDB: a commit of the leader's state, fenced by the lease.
    TransactWriteItems,
    /// DynamoDB: a page of the state read at takeover.
    Query,
}

impl Operation {
    /// The Supply Chain API's calls, whose series always exist.
    pub const SUPPLY_CHAIN: [Operation; 2] = [Operation::Get, Operation::List];
    /// The SQS calls of push, whose series exist only with `[push]`.
    pub const PUSH: [Operation; 2] = [Operation::ReceiveMessage, Operation::DeleteMessageBatch];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Get => "GetDataIntegrationFlowExecution",
            Operation::List => "ListDataIntegrationFlowExecutions",
            Operation::ReceiveMessage => "ReceiveMessage",
            Operation::DeleteMessageBatch => "DeleteMessageBatch",
            Operation::DescribeTable => "DescribeTable",
            Operation::GetItem => "GetItem",
            Operation::PutItem => "PutItem",
            Operation::UpdateItem => "UpdateItem",
            Operation::TransactWriteItems => "TransactWriteItems",
            Operation::Query => "Query",
        }
    }
}

/// How an observation reached flowwatch: a poll (GetDataIntegrationFlowExecution), a List page
/// of a watched flow, or a status-change event pushed through SQS. Events and `/status` carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObservedVia {
    Poll,
    List,
    Push,
}

impl ObservedVia {
    pub fn as_str(self) -> &'static str {
        match self {
            ObservedVia::Poll => "poll",
            ObservedVia::List => "list",
            ObservedVia::Push => "push",
        }
    }
}

/// What became of one message received from the push queue (the `outcome` label of
/// `flowwatch_push_messages_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PushOutcome {
    /// It told something new: a transition, or times the execution did not have.
    Applied,
    /// It told what was known already (a repeat, or a change polling saw first).
    Duplicate,
    /// It told a status older than the known one (events arrive out of order).
    Stale,
    /// Its execution is not watched, nor is its flow.
    Unwatched,
    /// It is not an AWS Supply Chain status-change event flowwatch can read: left in the queue,
    /// so the redrive policy moves it to the dead-letter queue.
    Malformed,
    /// A pushed end the API's answer contradicts (the GET still says IN_PROGRESS): not applied.
    Contradicted,
}

impl PushOutcome {
    /// In declaration order: metrics index their series by `outcome as usize`.
    pub const ALL: [PushOutcome; 6] = [
        PushOutcome::Applied,
        PushOutcome::Duplicate,
        PushOutcome::Stale,
        PushOutcome::Unwatched,
        PushOutcome::Malformed,
        PushOutcome::Contradicted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PushOutcome::Applied => "applied",
            PushOutcome::Duplicate => "duplicate",
            PushOutcome::Stale => "stale",
            PushOutcome::Unwatched => "unwatched",
            PushOutcome::Malformed => "malformed",
            PushOutcome::Contradicted => "contradicted",
        }
    }
}

/// A status change of one execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub key: ExecutionKey,
    pub from: Status,
    pub to: Status,
    /// When flowwatch saw it.
    pub at: SystemTime,
    /// The API's latest answer, when there is one (a NOT_FOUND transition has none).
    pub observation: Option<Observation>,
    pub labels: BTreeMap<String, String>,
    /// How the observation that caused it reached flowwatch.
    pub via: ObservedVia,
}

/// A time or duration in seconds, or none: an `Option<f64>` in eight bytes, absent as NaN (the
/// API's JSON numbers are never NaN). For values kept once per execution.
#[derive(Debug, Clone, Copy)]
pub struct Seconds(f64);

impl Default for Seconds {
    fn default() -> Self {
        Self(f64::NAN)
    }
}

impl Seconds {
    pub fn of(value: Option<f64>) -> Self {
        Self(value.unwrap_or(f64::NAN))
    }

    pub fn get(self) -> Option<f64> {
        (!self.0.is_nan()).then_some(self.0)
    }
}

/// When a running execution is expected to end, from its flow's recent durations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expectation {
    /// Start plus the flow's median duration (unix seconds).
    pub expected_end: f64,
    /// The median duration of the flow's recent runs (seconds).
    pub median: f64,
    /// Once it has run this long (seconds), the execution is overdue.
    pub overdue_after: f64,
}

/// A running execution that has run far longer than its flow's runs usually take.
#[derive(Debug, Clone, PartialEq)]
pub struct Overdue {
    pub key: ExecutionKey,
    pub start_time: f64,
    /// How long it had run when flowwatch saw it overdue (seconds).
    pub running: f64,
    pub expectation: Expectation,
    /// When flowwatch saw it.
    pub at: SystemTime,
    pub labels: BTreeMap<String, String>,
}

/// When a flow last succeeded and failed, as far as flowwatch knows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Freshness {
    pub last_success: Option<f64>,
    pub last_failure: Option<f64>,
    /// When flowwatch first watched the flow through a `[[flow]]` entry.
    pub first_watched: Option<f64>,
}

impl Freshness {
    /// The value of `flowwatch_flow_last_success_timestamp_seconds`: the latest success, or, for
    /// a `[[flow]]` entry with none known, when flowwatch first watched it (so a new entry does
    /// not page at once).
    pub fn success_or_watched(&self) -> Option<f64> {
        self.last_success.or(self.first_watched)
    }

    pub fn finished(&mut self, status: Status, ended: f64) {
        let slot = match status {
            Status::Succeeded => &mut self.last_success,
            Status::Failed => &mut self.last_failure,
            _ => return,
        };
        *slot = Some(slot.map_or(ended, |t| t.max(ended)));
    }
}

impl Transition {
    /// For a SUCCEEDED or FAILED run: when it ended (the API's end time, else when flowwatch saw
    /// it) and how long it ran, when both of its times are known.
    pub fn run(&self) -> Option<(f64, Option<f64>)> {
        if !matches!(self.to, Status::Succeeded | Status::Failed) {
            return None;
        }
        let observation = self.observation.as_ref();
        let ended = observation
            .and_then(|o| o.end_time)
            .unwrap_or_else(|| unix_seconds(self.at));
        let seconds = observation
            .and_then(|o| Some(o.end_time? - o.start_time?))
            .filter(|s| s.is_finite() && *s > 0.0);
        Some((ended, seconds))
    }
}

/// RFC 3339 in UTC with whole seconds, as in the contract's example.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// 9999-12-31T23:59:59Z, the last second RFC 3339 can write; an API time past it (or negative,
/// or not a number) is shown as the epoch rather than trusted.
const LAST_RFC3339_SECOND: f64 = 253_402_300_799.0;

/// RFC 3339 for the API's epoch-second timestamps; fractions are kept to the millisecond.
pub fn rfc3339_from_secs(secs: f64) -> String {
    if !(0.0..=LAST_RFC3339_SECOND).contains(&secs) {
        return rfc3339(UNIX_EPOCH);
    }
    let t = UNIX_EPOCH + Duration::from_secs_f64(secs);
    if secs.fract() == 0.0 {
        rfc3339(t)
    } else {
        humantime::format_rfc3339_millis(t).to_string()
    }
}

/// Seconds since the Unix epoch (0 for a time before it), as metrics and the store keep time.
/// What a path that is not a regular file is, in words.
pub fn file_kind(metadata: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = metadata.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_file() {
        "a regular file"
    } else {
        "not a file"
    }
}

pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Locks `mutex`, also when a thread panicked while holding it: every mutex in flowwatch guards
/// plain data that a panic cannot leave half-written.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The longest strings flowwatch keeps from an API answer, in characters: anything longer is
/// cut (ending in `…`) before it is stored, logged, served or emitted, so one huge answer
/// cannot become a huge event, row or `/status` field.
pub mod bounds {
    /// A failure `message`, and the message of an API error.
    pub const MESSAGE: usize = 4096;
    /// A status string flowwatch does not know, and a `sourceType`.
    pub const STATUS: usize = 64;
    /// S3 bucket names, object keys, dataset identifiers and the diagnostics URI.
    pub const LOCATION: usize = 2048;
}

/// `text`, cut to at most `max` characters (the last of them `…`) when it is longer.
pub fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some(_) => {
            let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
            cut.push('…');
            cut
        }
    }
}

/// A URL with any `user:password@` taken out, so that what is shown of it (logs, `/status`, the
/// summary) never carries credentials.
pub fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// An I/O error in words, without the `(os error N)` noise.
pub fn io_error_text(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        std::io::ErrorKind::AddrInUse => "address already in use".to_string(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_outside_2000_to_a_day_ahead_are_taken_out_of_an_observation() {
        let now = 1_800_000_000.0;
        let mut o = Observation {
            status: ApiStatus::Succeeded,
            source_info: None,
            message: None,
            start_time: Some(-1e18),
            end_time: Some(1e300),
            diagnostic_reports_root_s3_uri: None,
        };
        assert_eq!(
            o.drop_unbelievable_times(now),
            vec![("start_time", -1e18), ("end_time", 1e300)]
        );
        assert_eq!((o.start_time, o.end_time), (None, None));
        let year_9999 = 253_402_300_799.0;
        for t in [
            year_9999,
            f64::NAN,
            EARLIEST_BELIEVED - 1.0,
            now + AHEAD_BELIEVED + 1.0,
        ] {
            assert!(!believable(t, now), "{t}");
        }
        for t in [EARLIEST_BELIEVED, now, now + AHEAD_BELIEVED] {
            assert!(believable(t, now), "{t}");
        }
        let unset_clock = 3_600.0;
        assert!(
            believable(now, unset_clock),
            "a clock left at 1970 does not make every time unbelievable"
        );
        assert!(!believable(EARLIEST_BELIEVED - 1.0, unset_clock));
        let mut fine = Observation {
            start_time: Some(now - 60.0),
            end_time: Some(now),
            ..o
        };
        assert!(fine.drop_unbelievable_times(now).is_empty());
        assert_eq!(fine.end_time, Some(now));
    }

    #[test]
    fn credentials_in_a_url_are_never_shown() {
        assert_eq!(
            without_userinfo("http://user:secret@127.0.0.1:4566/path"),
            "http://127.0.0.1:4566/path"
        );
        assert_eq!(
            without_userinfo("https://user:p@ss@sqs.example/1/q?a=b@c"),
            "https://sqs.example/1/q?a=b@c"
        );
        assert_eq!(
            without_userinfo("https://scn.example/a@b"),
            "https://scn.example/a@b"
        );
        assert_eq!(without_userinfo("not a url"), "not a url");
    }

    #[test]
    fn long_strings_are_cut_to_their_bound_with_an_ellipsis() {
        assert_eq!(bounded("short", 10), "short");
        assert_eq!(bounded("exactly10!", 10), "exactly10!");
        assert_eq!(bounded("ééééééééééé", 10), "ééééééééé…");
        let long = bounded(&"x".repeat(100_000), bounds::MESSAGE);
        assert_eq!(long.chars().count(), bounds::MESSAGE);
    }
}
