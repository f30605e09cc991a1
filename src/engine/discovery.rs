//! Discovery of new executions for `[[flow]]` entries: what is known of each watched flow, and
//! the rules of a discovery round. The engine sends the requests (through the same queue,
//! request slots and rate limiter as polls) and adds what a round finds to the watch set.
//!
//! A round lists the flow's executions page by page. The model promises no sort order, so each
//! page is judged as a whole: paging goes on while a page holds something new inside the `since`
//! window, or an execution inside the window that is still running; a page of nothing but settled
//! history (known and finished, or started before the window) ends the round. A round also ends
//! after `max_pages_per_round` pages; if the last page still held new executions, the next round
//! resumes from its `nextToken`, so a long backlog is worked off a bounded number of pages at a
//! time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::engine::views::FlowView;

use crate::api::ApiError;
use crate::engine::pacing::Backoff;
use crate::engine::policy::ListFailure;
use crate::engine::seen::Seen;
use crate::model::{ApiStatus, FlowEntry, Observation, Outcome, unix_seconds};

/// What is known of one `[[flow]]` entry.
#[derive(Debug)]
pub struct FlowWatch {
    pub entry: FlowEntry,
    /// When flowwatch first watched this flow (kept across restarts): the window's start when
    /// the entry has no `since`.
    pub first_seen: SystemTime,
    /// The round in progress, if any.
    pub round: Option<Round>,
    /// Where the next round starts when the last one stopped at the page bound with more to read.
    pub resume_token: Option<String>,
    /// Executions discovery found in this flow since flowwatch started.
    pub executions_found: u64,
    pub lists: Lists,
    /// The API says the flow does not exist.
    pub missing: bool,
    /// Pages of the last completed round.
    pub last_round_pages: u32,
    /// Listed items that break the wire format, already logged at warn: the same one comes
    /// every round. At most [`INVALID_REMEMBERED`].
    pub invalid_logged: Seen,
}

/// How listing one flow goes: when a round last finished and the next is due, what the last
/// List said, and the ladder that paces retries of a failing page.
#[derive(Debug)]
pub struct Lists {
    pub last_success: Option<SystemTime>,
    pub next_round: Option<SystemTime>,
    pub last_error: Option<String>,
    pub last_outcome: Option<Outcome>,
    pub backoff: Backoff,
}

/// How many invalid listed items a flow remembers having logged.
pub const INVALID_REMEMBERED: usize = 1_000;

/// A discovery round in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    /// The token of the next page to read; `None` for the first page.
    pub token: Option<String>,
    /// Pages read so far in this round.
    pub pages: u32,
}

/// How one listed execution relates to what flowwatch knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    /// Not known, started inside the window: it joins the watch set.
    New,
    /// Already known (watched, or remembered in the state database).
    Known,
    /// Started before the window: ignored.
    Old,
}

/// What a page says about going on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Read the page of this token now.
    Page(String),
    /// The round is over; `resume` is where the next one starts (None: at the top).
    Done { resume: Option<String> },
}

impl FlowWatch {
    pub fn new(entry: FlowEntry, first_seen: SystemTime, backoff: Backoff) -> Self {
        Self {
            entry,
            first_seen,
            round: None,
            resume_token: None,
            executions_found: 0,
            lists: Lists {
                last_success: None,
                next_round: None,
                last_error: None,
                last_outcome: None,
                backoff,
            },
            missing: false,
            last_round_pages: 0,
            invalid_logged: Seen::new(INVALID_REMEMBERED),
        }
    }

    /// The earliest start time (unix seconds) of an execution this flow watches.
    pub fn window_start(&self, now: SystemTime) -> f64 {
        let start = match self.entry.since {
            Some(since) => now.checked_sub(since).unwrap_or(UNIX_EPOCH),
            None => self.first_seen,
        };
        unix_seconds(start)
    }

    /// The token of the next request, starting a round if none is in progress.
    pub fn next_token(&mut self) -> Option<String> {
        if self.round.is_none() {
            self.round = Some(Round {
                token: self.resume_token.take(),
                pages: 0,
            });
        }
        self.round.as_ref().and_then(|r| r.token.clone())
    }

    /// Judges a page that was read: where to go on, given how its executions relate to what is
    /// known (`listed`) and the page's `nextToken`.
    pub fn after_page(
        &mut self,
        listed: &[(Listed, &Observation)],
        window_start: f64,
        next_token: Option<String>,
        max_pages: u32,
    ) -> Next {
        let round = self.round.get_or_insert(Round {
            token: None,
            pages: 0,
        });
        round.pages += 1;
        let pages = round.pages;
        let any_new = listed.iter().any(|(l, _)| *l == Listed::New);
        let running_in_window = listed.iter().any(|(l, o)| {
            *l != Listed::Old
                && o.status == ApiStatus::InProgress
                && o.start_time.is_none_or(|t| t >= window_start)
        });
        let go_on = any_new || running_in_window;
        match next_token {
            Some(token) if go_on && pages < max_pages => {
                round.token = Some(token.clone());
                Next::Page(token)
            }
            next => {
                self.round = None;
                self.last_round_pages = pages;
                // Only a backlog of new executions is resumed; a page bound hit while reading
                // running ones starts at the top again, where new executions show up first.
                let resume = next.filter(|_| any_new && pages >= max_pages);
                self.resume_token = resume.clone();
                Next::Done { resume }
            }
        }
    }

    /// Forgets the round in progress (after a token the API refused).
    pub fn abandon_round(&mut self) {
        self.round = None;
        self.resume_token = None;
    }

    /// A List page came back: the flow exists and its failures are over. Listed items that
    /// break the wire format (`invalid`) are logged, each once at warn. Returns whether the flow
    /// was missing until now.
    pub fn answered(&mut self, invalid: &[String]) -> bool {
        self.lists.last_error = None;
        self.lists.backoff.reset();
        for problem in invalid {
            if self.invalid_logged.first(problem) {
                tracing::warn!(flow = %self.entry.key, problem = %problem,
                    "skipping a listed execution that breaks the wire format (repeats are logged at debug)");
            } else {
                tracing::debug!(flow = %self.entry.key, problem = %problem,
                    "skipping a listed execution that breaks the wire format");
            }
        }
        std::mem::replace(&mut self.missing, false)
    }

    /// A List failed as `decision` judges `error`. Returns whether the flow just went missing.
    pub fn failed_with(&mut self, error: &ApiError, decision: &ListFailure) -> bool {
        self.lists.last_error = Some(error.to_string());
        if decision.abandon_round {
            self.abandon_round();
        }
        let newly_missing = decision.flow_missing && !self.missing;
        self.missing |= decision.flow_missing;
        newly_missing
    }

    /// A round ended at `wall`; `resumes` when it stopped at the page bound with new executions
    /// still coming, so the next one goes on from there.
    pub fn round_done(&mut self, wall: SystemTime, resumes: bool) {
        self.lists.last_success = Some(wall);
        let key = &self.entry.key;
        tracing::debug!(flow = %key, pages = self.last_round_pages, "discovery round done");
        if resumes {
            tracing::info!(flow = %key, pages = self.last_round_pages,
                "discovery stopped at discovery.max_pages_per_round with new executions still coming: the next round goes on from there");
        }
    }

    /// What `/status` shows of this flow; `watched` of its executions are in the watch set.
    pub fn view(&self, watched: usize, now: SystemTime) -> FlowView {
        FlowView {
            key: self.entry.key.clone(),
            since: self.entry.since,
            window_start: UNIX_EPOCH + Duration::from_secs_f64(self.window_start(now).max(0.0)),
            labels: self.entry.labels.clone(),
            discovered: self.executions_found,
            watched_executions: watched,
            flow_not_found: self.missing,
            round_in_progress: self.round.is_some(),
            last_round_pages: self.last_round_pages,
            resume_token_pending: self.resume_token.is_some(),
            last_success: self.lists.last_success,
            next_round: self.lists.next_round,
            last_outcome: self.lists.last_outcome,
            last_error: self.lists.last_error.clone(),
        }
    }
}

/// How a listed execution relates to what is known: `known` says whether flowwatch has seen it.
pub fn classify_listed(known: bool, observation: &Observation, window_start: f64) -> Listed {
    if known {
        Listed::Known
    } else if observation.start_time.is_some_and(|t| t < window_start) {
        Listed::Old
    } else {
        Listed::New
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::engine::pacing::BackoffPolicy;
    use crate::model::FlowKey;

    #[test]
    fn an_invalid_listed_item_is_logged_once_however_many_rounds_list_it() {
        let mut f = flow(None);
        let problem = "an item with an invalid executionId";
        assert!(f.invalid_logged.first(problem));
        for _ in 0..100 {
            assert!(
                !f.invalid_logged.first(problem),
                "every later round: debug only"
            );
        }
        assert!(f.invalid_logged.first("another problem"));
        for n in 0..INVALID_REMEMBERED {
            f.invalid_logged.first(&format!("item {n}"));
        }
        assert!(
            f.invalid_logged.remembered() <= INVALID_REMEMBERED,
            "bounded"
        );
    }

    fn flow(since: Option<Duration>) -> FlowWatch {
        let policy = BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(8),
            multiplier: 2.0,
        };
        FlowWatch::new(
            FlowEntry {
                key: FlowKey {
                    instance_id: "8850c54e-e187-4fa7-89d4-6370f165174d".into(),
                    flow_name: "daily-orders".into(),
                },
                since,
                expect_success_within: None,
                labels: BTreeMap::new(),
            },
            UNIX_EPOCH + Duration::from_secs(1_000_000),
            policy.start(),
        )
    }

    fn obs(status: ApiStatus, start: f64) -> Observation {
        Observation {
            status,
            source_info: None,
            message: None,
            start_time: Some(start),
            end_time: None,
            diagnostic_reports_root_s3_uri: None,
        }
    }

    #[test]
    fn the_window_starts_at_first_sight_unless_since_says_otherwise() {
        let now = UNIX_EPOCH + Duration::from_secs(2_000_000);
        assert_eq!(flow(None).window_start(now), 1_000_000.0);
        assert_eq!(
            flow(Some(Duration::from_secs(3600))).window_start(now),
            2_000_000.0 - 3600.0
        );
        let new = obs(ApiStatus::Succeeded, 1_500_000.0);
        assert_eq!(classify_listed(false, &new, 1_000_000.0), Listed::New);
        assert_eq!(classify_listed(true, &new, 1_000_000.0), Listed::Known);
        assert_eq!(classify_listed(false, &new, 1_600_000.0), Listed::Old);
    }

    #[test]
    fn a_page_of_settled_history_ends_the_round() {
        let mut f = flow(None);
        assert_eq!(f.next_token(), None);
        let done = obs(ApiStatus::Succeeded, 1_500_000.0);
        let old = obs(ApiStatus::InProgress, 10.0);
        let next = f.after_page(
            &[(Listed::Known, &done), (Listed::Old, &old)],
            1_000_000.0,
            Some("t2".into()),
            10,
        );
        assert_eq!(next, Next::Done { resume: None });
        assert!(f.round.is_none());
        assert_eq!(f.last_round_pages, 1);
    }

    #[test]
    fn new_or_running_executions_inside_the_window_keep_the_round_going() {
        let mut f = flow(None);
        f.next_token();
        let running = obs(ApiStatus::InProgress, 1_500_000.0);
        let next = f.after_page(
            &[(Listed::Known, &running)],
            1_000_000.0,
            Some("t2".into()),
            10,
        );
        assert_eq!(next, Next::Page("t2".into()));
        assert_eq!(f.next_token().as_deref(), Some("t2"));
        let done = obs(ApiStatus::Failed, 1_500_000.0);
        let next = f.after_page(&[(Listed::New, &done)], 1_000_000.0, Some("t3".into()), 10);
        assert_eq!(next, Next::Page("t3".into()));
        // The last page: no token.
        let next = f.after_page(&[(Listed::New, &done)], 1_000_000.0, None, 10);
        assert_eq!(next, Next::Done { resume: None });
        assert_eq!(f.last_round_pages, 3);
    }

    #[test]
    fn a_backlog_past_the_page_bound_resumes_next_round() {
        let mut f = flow(Some(Duration::from_secs(86_400)));
        f.next_token();
        let done = obs(ApiStatus::Succeeded, 1_500_000.0);
        assert_eq!(
            f.after_page(&[(Listed::New, &done)], 0.0, Some("t2".into()), 2),
            Next::Page("t2".into())
        );
        assert_eq!(
            f.after_page(&[(Listed::New, &done)], 0.0, Some("t3".into()), 2),
            Next::Done {
                resume: Some("t3".into())
            }
        );
        // The next round starts where this one stopped.
        assert_eq!(f.next_token().as_deref(), Some("t3"));
        // Running executions at the bound do not resume: the next round starts at the top.
        let running = obs(ApiStatus::InProgress, 1_500_000.0);
        assert_eq!(
            f.after_page(&[(Listed::Known, &running)], 0.0, Some("t4".into()), 1),
            Next::Done { resume: None }
        );
        assert_eq!(f.next_token(), None);
    }
}
