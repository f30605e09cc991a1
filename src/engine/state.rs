//! What is known of each watched execution, and the status machine that turns observations into
//! transitions. The engine owns one [`ExecutionState`] per watched execution.

use std::collections::BTreeMap;

use std::time::{Duration, SystemTime};

use crate::engine::views::ExecutionView;
use tokio::time::Instant;

use crate::api::ApiError;
use crate::engine::pacing::Backoff;
use crate::engine::policy::Verdict;
use crate::model::{
    ApiStatus, Observation, ObservedVia, Outcome, Seconds, Status, Transition, WatchEntry,
};
use crate::output::publisher::Change;
use crate::output::store::Restored;

/// Everything known of one execution.
#[derive(Debug)]
pub struct ExecutionState {
    pub entry: WatchEntry,
    pub status: Status,
    /// The last answer. Boxed: it is most of an execution's size, and absent until a first answer.
    pub observation: Option<Box<Observation>>,
    /// How the last answer reached flowwatch.
    pub observed_via: Option<ObservedVia>,
    pub polls: Polls,
    /// Set when the API rejected the request as invalid: polling has stopped.
    pub rejected: Option<String>,
    /// Found by discovery of a `[[flow]]` entry rather than listed in the watchlist.
    pub found_by_discovery: bool,
    pub run: RunHealth,
    /// A pushed terminal change waiting for its GET (`push.fetch_details`).
    pub held_push: Option<Box<HeldPush>>,
    unrecognised_seen: Option<String>,
    /// Times outside the believable window were logged for it (once per execution).
    unbelievable_logged: bool,
}

/// How polling one execution goes: its attempts, its ladder, and what the last poll said.
#[derive(Debug)]
pub struct Polls {
    /// Polls that counted as attempts (throttled polls do not).
    pub attempts: u64,
    pub last_poll: Option<SystemTime>,
    pub next_poll: Option<SystemTime>,
    pub last_error: Option<String>,
    pub last_outcome: Option<Outcome>,
    /// Since when the API has said ResourceNotFound without a break.
    pub not_found_since: Option<Instant>,
    pub backoff: Backoff,
}

/// How a running execution compares with its flow's recent runs.
#[derive(Debug, Default)]
pub struct RunHealth {
    /// When the execution's age (seconds since the API's start time) was first taken, and that
    /// age: later ages count on from it on the monotonic clock.
    pub age_anchor: Option<(Instant, f64)>,
    /// Start plus its flow's median duration, while it runs and the flow has enough history.
    pub expected_end: Seconds,
    /// Its overdue event is staged or committed.
    pub overdue: bool,
}

impl ExecutionState {
    pub fn new(entry: WatchEntry, backoff: Backoff) -> Self {
        Self {
            entry,
            status: Status::Unknown,
            observation: None,
            observed_via: None,
            polls: Polls {
                attempts: 0,
                last_poll: None,
                next_poll: None,
                last_error: None,
                last_outcome: None,
                not_found_since: None,
                backoff,
            },
            rejected: None,
            found_by_discovery: false,
            run: RunHealth::default(),
            held_push: None,
            unrecognised_seen: None,
            unbelievable_logged: false,
        }
    }

    /// No more polls: terminal, or rejected by the API.
    pub fn is_done(&self) -> bool {
        self.status.is_terminal() || self.rejected.is_some()
    }

    /// How long it has run (seconds), when the API gave its start time. The age is taken from the
    /// wall clock once and counted on from there on the monotonic clock, so a wall-clock step
    /// does not make runs look younger or older.
    pub fn age(&mut self, now: Instant, wall: SystemTime) -> Option<f64> {
        let start = self.observation.as_ref().and_then(|o| o.start_time)?;
        let (at, age_then) = *self
            .run
            .age_anchor
            .get_or_insert_with(|| (now, (crate::model::unix_seconds(wall) - start).max(0.0)));
        Some(age_then + now.saturating_duration_since(at).as_secs_f64())
    }

    /// Whether `observation` carries other start or end times than the last answer.
    pub fn times_differ(&self, observation: &Observation) -> bool {
        self.observation.as_ref().is_none_or(|o| {
            o.start_time != observation.start_time || o.end_time != observation.end_time
        })
    }

    /// Whether `observation` brings a start or end time this execution does not have yet.
    pub fn lacks_times_of(&self, observation: &Observation) -> bool {
        let known = self.observation.as_deref();
        let lacks = |theirs: Option<f64>, ours: Option<f64>| theirs.is_some() && ours.is_none();
        lacks(observation.start_time, known.and_then(|o| o.start_time))
            || lacks(observation.end_time, known.and_then(|o| o.end_time))
    }

    /// Keeps an answer the API gave, as `verdict` judged it: a transition moves the status, an
    /// unrecognised status keeps the last known one. Returns the transition, and the raw status
    /// string when it is unrecognised and newly seen (so it is logged once per value).
    pub fn record(
        &mut self,
        observation: Observation,
        verdict: Verdict,
        via: ObservedVia,
        wall: SystemTime,
    ) -> (Option<Transition>, Option<String>) {
        self.polls.not_found_since = None;
        self.observed_via = Some(via);
        let mut unrecognised = None;
        if let ApiStatus::Unrecognised(raw) = &observation.status {
            if self.unrecognised_seen.as_deref() != Some(raw.as_str()) {
                self.unrecognised_seen = Some(raw.clone());
                unrecognised = Some(raw.clone());
            }
            self.polls.last_error = Some(format!(
                "unrecognised status {raw:?} from the API: keeping {}",
                self.status
            ));
        } else {
            self.polls.last_error = None;
        }
        self.observation = Some(Box::new(observation));
        let transition = match verdict {
            Verdict::Transition(to) => Some(self.transition_to(to, via, wall)),
            Verdict::Duplicate | Verdict::Stale | Verdict::Unrecognised => None,
        };
        (transition, unrecognised)
    }

    /// Moves to `to` and describes the move.
    pub fn transition_to(&mut self, to: Status, via: ObservedVia, wall: SystemTime) -> Transition {
        let from = self.status;
        self.status = to;
        self.polls.backoff.reset();
        if to.is_terminal() {
            self.polls.next_poll = None;
        }
        Transition {
            key: self.entry.key.clone(),
            from,
            to,
            at: wall,
            observation: self.observation.as_deref().cloned(),
            labels: self.entry.labels.clone(),
            via,
        }
    }

    /// Takes what the store knew from an earlier run.
    pub fn restore(&mut self, restored: Restored, now: f64) {
        self.status = restored.status;
        self.observation = restored.observation.map(Box::new);
        // An earlier version kept any time the API sent.
        if let Some(o) = self.observation.as_deref_mut() {
            let dropped = o.drop_unbelievable_times(now);
            self.log_unbelievable(&dropped, "store");
        }
        self.rejected = restored.rejected;
        self.run.overdue = restored.overdue;
    }

    /// Logs, once per execution, times taken out of an observation for lying outside the
    /// believable window; `via` says where they came from.
    pub fn log_unbelievable(&mut self, dropped: &[(&'static str, f64)], via: &str) {
        if dropped.is_empty() || self.unbelievable_logged {
            return;
        }
        self.unbelievable_logged = true;
        tracing::warn!(execution = %self.entry.key, via, times = ?dropped,
            "ignoring times before 2000 or more than a day ahead of this clock: the status is applied without them (logged once per execution)");
    }

    /// A poll failed with `error` at `now`: returns the outcome of the call before, and how long
    /// the API has said ResourceNotFound without a break.
    pub fn failed_with(&mut self, error: &ApiError, now: Instant) -> (Option<Outcome>, Duration) {
        if matches!(error, ApiError::NotFound { .. }) {
            self.polls.not_found_since.get_or_insert(now);
        } else {
            self.polls.not_found_since = None;
        }
        let previous = self.polls.last_outcome.replace(error.outcome());
        let not_found = self
            .polls
            .not_found_since
            .map(|t| now.saturating_duration_since(t));
        (previous, not_found.unwrap_or_default())
    }

    /// The API rejected the request as invalid: polling stops, and the rejection is the change.
    pub fn reject(&mut self, message: String, at: SystemTime) -> Change {
        self.rejected = Some(message.clone());
        self.polls.next_poll = None;
        Change::Rejection {
            key: self.entry.key.clone(),
            status: self.status,
            observation: self.observation.as_deref().cloned(),
            message,
            labels: self.entry.labels.clone(),
            at,
        }
    }

    /// Undoes a change the store could not take: back to what the store holds, so the next
    /// answer detects the change again.
    pub fn undo(&mut self, change: Change) {
        match change {
            Change::Transition(t) => self.status = t.from,
            Change::Rejection { .. } => self.rejected = None,
            // Not overdue as far as the store knows: the next sweep stages it again.
            Change::Overdue(_) => self.run.overdue = false,
            // Forgotten, so the next answer's times differ and are staged again.
            Change::Observed { .. } => self.observation = None,
        }
    }

    /// A copy of what `/status` shows of this execution; `retained` says whether its series
    /// are still exported.
    pub fn view(&self, retained: bool) -> ExecutionView {
        ExecutionView {
            entry: self.entry.clone(),
            status: self.status,
            discovered: self.found_by_discovery,
            observed_via: self.observed_via,
            polling: !self.is_done(),
            attempts: self.polls.attempts,
            last_poll: self.polls.last_poll,
            next_poll: self.polls.next_poll,
            last_outcome: self.polls.last_outcome,
            last_error: self.polls.last_error.clone(),
            rejected: self.rejected.clone(),
            retained,
            observation: self.observation.as_deref().cloned(),
            expected_end: self.run.expected_end.get(),
            overdue: self.run.overdue,
        }
    }
}

/// A pushed terminal change waiting for the one GET that fills in what the event lacks
/// (`fetch_details`): applied when that poll answers, with its fields, or as pushed if it fails.
#[derive(Debug)]
pub struct HeldPush {
    pub observation: Observation,
    pub receipts: Vec<String>,
    /// The event's time, for the delay metric.
    pub time: Option<f64>,
}

/// How many watched executions have each status (every status listed, zero or not), for
/// `/status`.
pub fn executions_by_status<'a>(
    states: impl Iterator<Item = &'a ExecutionState>,
) -> BTreeMap<Status, i64> {
    let mut counts: BTreeMap<Status, i64> = Status::ALL.iter().map(|s| (*s, 0)).collect();
    for s in states {
        *counts.entry(s.status).or_default() += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::pacing::BackoffPolicy;
    use crate::engine::policy::judge;
    use crate::model::ExecutionKey;

    fn state() -> ExecutionState {
        let key = ExecutionKey::new(
            "8850c54e-e187-4fa7-89d4-6370f165174d",
            "daily-orders",
            "a1b2c3d4-0000-4000-8000-000000000001",
        )
        .expect("valid key");
        let policy = BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(8),
            multiplier: 2.0,
        };
        ExecutionState::new(
            WatchEntry {
                key,
                labels: BTreeMap::new(),
            },
            policy.start(),
        )
    }

    fn observed(status: ApiStatus) -> Observation {
        Observation {
            status,
            source_info: None,
            message: None,
            start_time: None,
            end_time: None,
            diagnostic_reports_root_s3_uri: None,
        }
    }

    /// Judges and records one observation, as the engine does.
    fn see(s: &mut ExecutionState, status: ApiStatus) -> (Option<Transition>, Option<String>) {
        let verdict = judge(s.status, &status);
        s.record(
            observed(status),
            verdict,
            ObservedVia::Poll,
            SystemTime::now(),
        )
    }

    #[test]
    fn the_first_observation_is_a_transition_from_unknown_and_repeats_are_not() {
        let mut s = state();
        let t = see(&mut s, ApiStatus::InProgress)
            .0
            .expect("first observation");
        assert_eq!((t.from, t.to), (Status::Unknown, Status::InProgress));
        assert_eq!(t.via, ObservedVia::Poll);
        assert!(see(&mut s, ApiStatus::InProgress).0.is_none());
        let t = see(&mut s, ApiStatus::Failed).0.expect("terminal");
        assert_eq!((t.from, t.to), (Status::InProgress, Status::Failed));
        assert!(s.is_done());
    }

    #[test]
    fn an_unrecognised_status_keeps_the_known_one_and_is_reported_once() {
        let mut s = state();
        see(&mut s, ApiStatus::InProgress);
        let (transition, unrecognised) = see(&mut s, ApiStatus::Unrecognised("CANCELLED".into()));
        assert!(transition.is_none());
        assert_eq!(unrecognised.as_deref(), Some("CANCELLED"));
        assert_eq!(s.status, Status::InProgress);
        let (_, again) = see(&mut s, ApiStatus::Unrecognised("CANCELLED".into()));
        assert!(again.is_none());
        assert!(
            s.polls
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("CANCELLED"))
        );
    }
}
