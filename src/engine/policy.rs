//! Pure decisions. Given what is known of an execution (or a watched flow) and what the API just
//! said, these functions return what to do, as data: the status to move to, whether the API
//! rejected the entry, when to ask again, and how loudly to log. The engine applies the decision;
//! nothing here reads a clock, touches the network, the store or the metrics.
//!
//! The error table of DESIGN §3 lives here once, in [`ErrorClass::of`], and is shared by polls
//! and List pages.

use std::time::Duration;

use tracing::Level;

use crate::api::ApiError;
use crate::engine::forecast::Plan;
use crate::model::{ApiStatus, Outcome, PushOutcome, Status};

/// What a failed call calls for: one row per line of the error table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// ThrottlingException, ServiceQuotaExceededException: the global rate is cut, and this
    /// request is retried later without counting as an attempt.
    SlowDown { retry_after: Option<Duration> },
    /// InternalServerException, ConflictException, an invalid response, a timeout, a transport
    /// error: retried with backoff.
    Transient,
    /// ResourceNotFoundException.
    NotFound,
    /// AccessDeniedException: retried at `max_interval`.
    Denied,
    /// ValidationException: the request itself is invalid.
    Invalid,
    /// The request could not be built here (an invalid region, say): retried at
    /// `max_interval`, never an attempt of the execution, never its fate.
    Local,
    /// No usable credentials (none, expired, or AssumeRole refused): as `Local`, the API never
    /// saw the request, so it is retried at `max_interval` and leaves the execution untouched.
    Credentials,
}

impl ErrorClass {
    pub fn of(error: &ApiError) -> Self {
        match error {
            ApiError::Throttled { retry_after, .. }
            | ApiError::QuotaExceeded { retry_after, .. } => ErrorClass::SlowDown {
                retry_after: *retry_after,
            },
            ApiError::NotFound { .. } => ErrorClass::NotFound,
            ApiError::AccessDenied { .. } => ErrorClass::Denied,
            ApiError::Validation { .. } => ErrorClass::Invalid,
            ApiError::Conflict { .. }
            | ApiError::Internal { .. }
            | ApiError::InvalidResponse { .. }
            | ApiError::Timeout
            | ApiError::Transport { .. } => ErrorClass::Transient,
            ApiError::Local { .. } => ErrorClass::Local,
            ApiError::Credentials { .. } => ErrorClass::Credentials,
        }
    }

    /// When to try again, by the error table: throttled calls hold their step for at least the
    /// server's hint, transient failures and ResourceNotFound climb the ladder, AccessDenied
    /// waits `max_interval`, and an invalid request is not sent again.
    pub fn retry_delay(self, max_interval: Duration) -> Delay {
        match self {
            ErrorClass::SlowDown { retry_after } => Delay::Hold {
                at_least: retry_after.unwrap_or_default(),
            },
            ErrorClass::Transient | ErrorClass::NotFound => Delay::Climb,
            ErrorClass::Denied | ErrorClass::Local | ErrorClass::Credentials => {
                Delay::Fixed(max_interval)
            }
            ErrorClass::Invalid => Delay::Never,
        }
    }

    /// Whether an operator must act (access, an invalid request, this process's own set-up):
    /// the first such failure is logged as an error.
    pub fn needs_operator(self) -> bool {
        matches!(
            self,
            ErrorClass::Denied | ErrorClass::Invalid | ErrorClass::Local | ErrorClass::Credentials
        )
    }

    /// Whether the failed call counts as one of the execution's attempts.
    pub fn is_attempt(self) -> bool {
        !matches!(
            self,
            ErrorClass::SlowDown { .. } | ErrorClass::Local | ErrorClass::Credentials
        )
    }
}

/// What an answer (or its absence) means for the global request rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateFeedback {
    /// Throttled: cut the rate, and pause for the server's hint if it gave one.
    Cut { retry_after: Option<Duration> },
    /// The API answered: grow the rate back.
    Restore,
    /// Says nothing about the API's load (a server error, a timeout).
    Keep,
}

impl RateFeedback {
    pub fn of(error: Option<&ApiError>) -> Self {
        match error {
            None => RateFeedback::Restore,
            Some(
                ApiError::NotFound { .. }
                | ApiError::AccessDenied { .. }
                | ApiError::Validation { .. }
                | ApiError::Conflict { .. },
            ) => RateFeedback::Restore,
            Some(e) => match ErrorClass::of(e) {
                ErrorClass::SlowDown { retry_after } => RateFeedback::Cut { retry_after },
                _ => RateFeedback::Keep,
            },
        }
    }
}

/// When to ask again, before jitter. The engine turns it into a duration with the execution's
/// (or flow's) backoff ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delay {
    /// The next step of the backoff ladder.
    Climb,
    /// A jittered delay at the current step, and no sooner than `at_least` (throttled calls).
    Hold { at_least: Duration },
    /// Exactly this long.
    Fixed(Duration),
    /// This long plus up to a tenth more at random, so many executions spread out.
    Spread(Duration),
    /// Not again.
    Never,
}

/// When a running execution that just answered is asked again: every `reconcile` interval (a
/// tenth spread) while push reports its changes; else around when runs of its flow end, as the
/// forecast's `plan` says (adaptive polling, an execution whose age is known); else the next step
/// of its ladder. A forecast wait is clamped to `[initial, max]`, absurd or NaN ones included.
pub fn after_success(
    status: Status,
    reconcile: Option<Duration>,
    plan: Option<Plan>,
    (initial, max): (Duration, Duration),
) -> Delay {
    if status != Status::InProgress {
        return Delay::Climb;
    }
    if let Some(base) = reconcile {
        return Delay::Spread(base);
    }
    match plan {
        Some(Plan::In(wait)) => {
            // Clamped as seconds first: absurd API times must not overflow a Duration.
            let wait = if wait.is_nan() {
                max.as_secs_f64()
            } else {
                wait
            };
            let seconds = wait.clamp(initial.as_secs_f64(), max.as_secs_f64());
            Delay::Fixed(Duration::from_secs_f64(seconds))
        }
        Some(Plan::Spare) => Delay::Fixed(max),
        Some(Plan::Dense) => Delay::Fixed(initial),
        Some(Plan::Ladder) | None => Delay::Climb,
    }
}

/// How loudly a failed call is logged. The first failure of a kind is logged at warn (error for
/// the kinds an operator must act on, `serious`); repeats of the same outcome stay at debug until
/// it changes, and throttling is counted, never logged per call. `previous` is the outcome of the
/// call before.
pub fn failure_log_level(outcome: Outcome, previous: Option<Outcome>, serious: bool) -> Level {
    let throttled = matches!(outcome, Outcome::Throttled | Outcome::QuotaExceeded);
    match (previous == Some(outcome) || throttled, serious) {
        (true, _) => Level::DEBUG,
        (false, true) => Level::ERROR,
        (false, false) => Level::WARN,
    }
}

/// What an observed status means for an execution in `current`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A new status: a transition from `current` to this.
    Transition(Status),
    /// The status flowwatch already has.
    Duplicate,
    /// A status older than what is known: anything after a terminal status (events arrive out
    /// of order). Ignored.
    Stale,
    /// A status string the model does not know: the last known status is kept.
    Unrecognised,
}

pub fn judge(current: Status, observed: &ApiStatus) -> Verdict {
    let observed = match observed {
        ApiStatus::InProgress => Status::InProgress,
        ApiStatus::Succeeded => Status::Succeeded,
        ApiStatus::Failed => Status::Failed,
        ApiStatus::Unrecognised(_) => return Verdict::Unrecognised,
    };
    if observed == current {
        Verdict::Duplicate
    } else if current.is_terminal() {
        Verdict::Stale
    } else {
        Verdict::Transition(observed)
    }
}

/// What a pushed event is worth, given its verdict and whether it brings a start or end time
/// the execution did not have. Only `Applied` events are recorded: a repeat never replaces what
/// a poll saw (the diagnostics URI, say) with the event's thinner copy.
pub fn push_outcome(verdict: Verdict, new_times: bool) -> PushOutcome {
    match verdict {
        Verdict::Transition(_) => PushOutcome::Applied,
        Verdict::Stale => PushOutcome::Stale,
        Verdict::Duplicate | Verdict::Unrecognised if new_times => PushOutcome::Applied,
        Verdict::Duplicate | Verdict::Unrecognised => PushOutcome::Duplicate,
    }
}

/// What becomes of a pushed end that waited for its GET (`push.fetch_details`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldEnd {
    /// The GET shows an end too: its answer, with every field, is applied as pushed.
    Fetched,
    /// The GET could not say (it failed, or its status is one flowwatch does not know): the
    /// pushed end is applied as it came.
    Pushed,
    /// The GET still answers IN_PROGRESS: the API contradicts the event, which settles nothing;
    /// the answer is applied as a poll's.
    Contradicted,
}

/// Judges a held pushed end by its GET's status (`None`: the GET failed).
pub fn settle_held_end(fetched: Option<&ApiStatus>) -> HeldEnd {
    match fetched {
        Some(ApiStatus::Succeeded | ApiStatus::Failed) => HeldEnd::Fetched,
        Some(ApiStatus::InProgress) => HeldEnd::Contradicted,
        Some(ApiStatus::Unrecognised(_)) | None => HeldEnd::Pushed,
    }
}

/// What a failed poll of one execution leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollFailure {
    /// A transition to take (NOT_FOUND once the grace period is over).
    pub to: Option<Status>,
    /// The API rejected the entry as invalid: this message is committed and polling stops.
    pub reject: Option<String>,
    pub next: Delay,
    pub log: Level,
    /// Whether it counts as one of the execution's attempts.
    pub attempt: bool,
}

/// Decides a failed poll. `not_found_for` is how long the API has been saying ResourceNotFound
/// for this execution, this answer included (zero for any other error).
pub fn poll_failed(
    error: &ApiError,
    previous: Option<Outcome>,
    not_found_for: Duration,
    not_found_grace: Duration,
    max_interval: Duration,
) -> PollFailure {
    let class = ErrorClass::of(error);
    let serious = class.needs_operator();
    let gone = class == ErrorClass::NotFound && not_found_for >= not_found_grace;
    PollFailure {
        to: gone.then_some(Status::NotFound),
        reject: (class == ErrorClass::Invalid).then(|| rejection_message(error)),
        next: class.retry_delay(max_interval),
        log: failure_log_level(error.outcome(), previous, serious),
        attempt: class.is_attempt(),
    }
}

fn rejection_message(error: &ApiError) -> String {
    match error {
        ApiError::Validation { message } => message.clone(),
        other => other.to_string(),
    }
}

/// What a failed List request leads to for its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListFailure {
    pub next: Delay,
    pub log: Level,
    /// The API says the flow does not exist.
    pub flow_missing: bool,
    /// The round cannot go on: the next one starts at the top.
    pub abandon_round: bool,
}

/// Decides a failed List request. `had_token` says whether it asked for a page past the first;
/// `slow` is how long to wait for a flow that is missing or a request that keeps being refused.
/// List follows the error table but for two rows: a missing flow is asked again `slow` later,
/// and a refused page restarts its round.
pub fn list_failed(
    error: &ApiError,
    previous: Option<Outcome>,
    had_token: bool,
    slow: Duration,
    max_interval: Duration,
) -> ListFailure {
    let class = ErrorClass::of(error);
    // A missing flow is the operator's to fix too: its name is wrong, or it was deleted.
    let serious = class == ErrorClass::NotFound || class.needs_operator();
    let next = match class {
        ErrorClass::NotFound => Delay::Fixed(slow),
        // A refused token (expired?) starts the round again at the top, at once.
        ErrorClass::Invalid if had_token => Delay::Fixed(Duration::ZERO),
        ErrorClass::Invalid => Delay::Fixed(slow),
        other => other.retry_delay(max_interval),
    };
    ListFailure {
        next,
        log: failure_log_level(error.outcome(), previous, serious),
        flow_missing: class == ErrorClass::NotFound,
        abandon_round: matches!(class, ErrorClass::NotFound | ErrorClass::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(600);
    const MAX: Duration = Duration::from_secs(120);
    const SLOW: Duration = Duration::from_secs(600);

    fn message() -> String {
        "m".to_string()
    }

    fn poll(error: ApiError) -> PollFailure {
        poll_failed(&error, Some(Outcome::Success), Duration::ZERO, GRACE, MAX)
    }

    fn list(error: ApiError, had_token: bool) -> ListFailure {
        list_failed(&error, Some(Outcome::Success), had_token, SLOW, MAX)
    }

    #[test]
    fn throttling_holds_the_step_for_at_least_the_hint_and_is_not_an_attempt() {
        let hint = Duration::from_secs(3);
        let d = poll(ApiError::Throttled {
            message: message(),
            retry_after: Some(hint),
        });
        assert_eq!(d.next, Delay::Hold { at_least: hint });
        assert!(!d.attempt);
        assert_eq!(
            d.log,
            Level::DEBUG,
            "throttling is counted, not logged per call"
        );
        assert_eq!((d.to, d.reject.clone()), (None, None));
        assert_eq!(
            RateFeedback::of(Some(&ApiError::Throttled {
                message: message(),
                retry_after: Some(hint)
            })),
            RateFeedback::Cut {
                retry_after: Some(hint)
            }
        );
    }

    #[test]
    fn quota_exceeded_is_treated_like_throttling() {
        let error = ApiError::QuotaExceeded {
            message: message(),
            retry_after: None,
        };
        let d = poll(error.clone());
        assert_eq!(
            d.next,
            Delay::Hold {
                at_least: Duration::ZERO
            }
        );
        assert!(!d.attempt);
        assert_eq!(
            RateFeedback::of(Some(&error)),
            RateFeedback::Cut { retry_after: None }
        );
        assert_eq!(
            list(error, false).next,
            Delay::Hold {
                at_least: Duration::ZERO
            }
        );
    }

    #[test]
    fn server_errors_conflicts_timeouts_and_transport_errors_climb_the_ladder() {
        for error in [
            ApiError::Internal { message: message() },
            ApiError::InvalidResponse { message: message() },
            ApiError::Conflict { message: message() },
            ApiError::Timeout,
            ApiError::Transport { message: message() },
        ] {
            let d = poll(error.clone());
            assert_eq!(d.next, Delay::Climb, "{error}");
            assert!(d.attempt, "{error}");
            assert_eq!(d.log, Level::WARN, "{error}");
            assert_eq!((d.to, d.reject.clone()), (None, None), "{error}");
            assert_eq!(list(error.clone(), true).next, Delay::Climb, "{error}");
        }
        assert_eq!(
            RateFeedback::of(Some(&ApiError::Timeout)),
            RateFeedback::Keep
        );
        assert_eq!(
            RateFeedback::of(Some(&ApiError::Conflict { message: message() })),
            RateFeedback::Restore
        );
    }

    #[test]
    fn not_found_retries_with_backoff_during_the_grace_period_then_becomes_not_found() {
        let error = ApiError::NotFound { message: message() };
        let early = poll_failed(&error, None, GRACE / 2, GRACE, MAX);
        assert_eq!((early.to, early.next), (None, Delay::Climb));
        let late = poll_failed(&error, Some(Outcome::NotFound), GRACE, GRACE, MAX);
        assert_eq!(late.to, Some(Status::NotFound));
        assert_eq!(late.log, Level::DEBUG, "a repeat is logged at debug");
        let missing = list(error, true);
        assert!(missing.flow_missing && missing.abandon_round);
        assert_eq!(missing.next, Delay::Fixed(SLOW));
        assert_eq!(missing.log, Level::ERROR);
    }

    #[test]
    fn a_pushed_end_is_applied_only_when_the_get_does_not_contradict_it() {
        assert_eq!(settle_held_end(Some(&ApiStatus::Failed)), HeldEnd::Fetched);
        assert_eq!(
            settle_held_end(Some(&ApiStatus::Succeeded)),
            HeldEnd::Fetched
        );
        assert_eq!(
            settle_held_end(Some(&ApiStatus::InProgress)),
            HeldEnd::Contradicted
        );
        assert_eq!(
            settle_held_end(Some(&ApiStatus::Unrecognised("CANCELLED".into()))),
            HeldEnd::Pushed
        );
        assert_eq!(settle_held_end(None), HeldEnd::Pushed, "the GET failed");
    }

    #[test]
    fn a_request_that_cannot_be_built_is_retried_at_max_interval_and_never_rejects() {
        let error = ApiError::Local {
            message: "endpoint params could not be built".to_string(),
        };
        never_reached_the_api(error, Outcome::LocalError);
    }

    #[test]
    fn a_call_without_usable_credentials_is_retried_at_max_interval_and_never_rejects() {
        let error = ApiError::Credentials {
            message: "AccessDenied: User is not authorized to perform: sts:AssumeRole".to_string(),
        };
        assert_eq!(error.outcome(), Outcome::CredentialsError);
        never_reached_the_api(error, Outcome::CredentialsError);
    }

    /// A failure before the request left this process: the execution's state and attempts stay,
    /// it is asked again at `max_interval`, logged as an error once, and the rate stays.
    fn never_reached_the_api(error: ApiError, outcome: Outcome) {
        let d = poll(error.clone());
        assert_eq!(d.reject, None, "the API never saw the request");
        assert_eq!(d.to, None);
        assert_eq!(d.next, Delay::Fixed(MAX));
        assert!(!d.attempt, "not the execution's failure");
        assert_eq!(d.log, Level::ERROR);
        let repeat = poll_failed(&error, Some(outcome), Duration::ZERO, GRACE, MAX);
        assert_eq!(repeat.log, Level::DEBUG);
        let l = list(error.clone(), true);
        assert!(!l.abandon_round && !l.flow_missing);
        assert_eq!(l.next, Delay::Fixed(MAX));
        assert_eq!(RateFeedback::of(Some(&error)), RateFeedback::Keep);
    }

    #[test]
    fn access_denied_retries_at_max_interval_and_is_logged_as_an_error() {
        let d = poll(ApiError::AccessDenied { message: message() });
        assert_eq!(d.next, Delay::Fixed(MAX));
        assert_eq!(d.log, Level::ERROR);
        assert!(d.attempt);
        assert_eq!(
            list(ApiError::AccessDenied { message: message() }, false).next,
            Delay::Fixed(MAX)
        );
    }

    #[test]
    fn validation_rejects_the_entry_and_stops_polling() {
        let d = poll(ApiError::Validation {
            message: "bad id".into(),
        });
        assert_eq!(d.reject.as_deref(), Some("bad id"));
        assert_eq!(d.next, Delay::Never);
        assert_eq!(d.log, Level::ERROR);
    }

    #[test]
    fn a_refused_list_token_restarts_the_round_at_once_and_a_refused_first_page_waits() {
        let refused = |had_token| list(ApiError::Validation { message: message() }, had_token);
        assert_eq!(refused(true).next, Delay::Fixed(Duration::ZERO));
        assert_eq!(refused(false).next, Delay::Fixed(SLOW));
        assert!(refused(true).abandon_round && !refused(true).flow_missing);
    }

    #[test]
    fn a_repeated_failure_is_logged_at_debug_until_the_outcome_changes() {
        let error = ApiError::Internal { message: message() };
        let first = poll_failed(&error, Some(Outcome::Success), Duration::ZERO, GRACE, MAX);
        let again = poll_failed(
            &error,
            Some(Outcome::InternalError),
            Duration::ZERO,
            GRACE,
            MAX,
        );
        assert_eq!((first.log, again.log), (Level::WARN, Level::DEBUG));
    }

    #[test]
    fn a_new_status_is_a_transition_and_the_same_one_a_duplicate() {
        assert_eq!(
            judge(Status::Unknown, &ApiStatus::InProgress),
            Verdict::Transition(Status::InProgress)
        );
        assert_eq!(
            judge(Status::InProgress, &ApiStatus::InProgress),
            Verdict::Duplicate
        );
        assert_eq!(
            judge(Status::InProgress, &ApiStatus::Failed),
            Verdict::Transition(Status::Failed)
        );
    }

    #[test]
    fn nothing_moves_an_execution_back_from_a_terminal_status() {
        assert_eq!(
            judge(Status::Succeeded, &ApiStatus::InProgress),
            Verdict::Stale
        );
        assert_eq!(judge(Status::Failed, &ApiStatus::Succeeded), Verdict::Stale);
        assert_eq!(
            judge(Status::NotFound, &ApiStatus::InProgress),
            Verdict::Stale
        );
        assert_eq!(
            judge(Status::Failed, &ApiStatus::Failed),
            Verdict::Duplicate
        );
    }

    #[test]
    fn an_unrecognised_status_keeps_the_known_one() {
        assert_eq!(
            judge(
                Status::InProgress,
                &ApiStatus::Unrecognised("CANCELLED".into())
            ),
            Verdict::Unrecognised
        );
    }

    #[test]
    fn a_pushed_event_is_applied_only_when_it_tells_something_new() {
        use PushOutcome::*;
        let judged = |current, observed: ApiStatus, new_times| {
            push_outcome(judge(current, &observed), new_times)
        };
        assert_eq!(
            judged(Status::InProgress, ApiStatus::Failed, false),
            Applied
        );
        assert_eq!(
            judged(Status::Unknown, ApiStatus::InProgress, true),
            Applied
        );
        // The same status again: a repeat, unless it brings the start time first.
        assert_eq!(
            judged(Status::InProgress, ApiStatus::InProgress, false),
            Duplicate
        );
        assert_eq!(
            judged(Status::InProgress, ApiStatus::InProgress, true),
            Applied
        );
        assert_eq!(judged(Status::Failed, ApiStatus::Failed, false), Duplicate);
        // A late IN_PROGRESS never undoes a terminal status, nor does the other terminal one.
        assert_eq!(
            judged(Status::Succeeded, ApiStatus::InProgress, true),
            Stale
        );
        assert_eq!(judged(Status::Failed, ApiStatus::Succeeded, false), Stale);
        let unknown = ApiStatus::Unrecognised("PAUSED".into());
        assert_eq!(judged(Status::InProgress, unknown, false), Duplicate);
    }

    #[test]
    fn after_a_success_push_reconciles_the_forecast_plans_and_the_ladder_is_the_rest() {
        let bounds = (Duration::from_secs(5), Duration::from_secs(120));
        let running = Status::InProgress;
        let every = Some(Duration::from_secs(300));
        let spread = Delay::Spread(Duration::from_secs(300));
        assert_eq!(
            after_success(running, every, Some(Plan::Dense), bounds),
            spread
        );
        assert_eq!(after_success(running, None, None, bounds), Delay::Climb);
        assert_eq!(
            after_success(running, None, Some(Plan::Ladder), bounds),
            Delay::Climb
        );
        let fixed = |s: u64| Delay::Fixed(Duration::from_secs(s));
        assert_eq!(
            after_success(running, None, Some(Plan::Spare), bounds),
            fixed(120)
        );
        assert_eq!(
            after_success(running, None, Some(Plan::Dense), bounds),
            fixed(5)
        );
        assert_eq!(
            after_success(running, None, Some(Plan::In(42.0)), bounds),
            fixed(42)
        );
        for absurd in [1e300, -1e300, f64::NAN, f64::INFINITY] {
            let delay = after_success(running, None, Some(Plan::In(absurd)), bounds);
            assert!(
                matches!(delay, Delay::Fixed(d) if d >= bounds.0 && d <= bounds.1),
                "{absurd}: {delay:?}"
            );
        }
        assert_eq!(
            after_success(Status::Unknown, every, Some(Plan::Dense), bounds),
            Delay::Climb,
            "an execution not seen running climbs its ladder"
        );
    }

    #[test]
    fn absurd_api_times_give_a_delay_within_the_bounds_not_a_panic() {
        use crate::engine::forecast::Forecast;
        use crate::model::ExecutionKey;
        let key = |n: usize| ExecutionKey::from_checked("i", "f", format!("x{n}"));
        let mut forecast = Forecast::default();
        for (n, d) in [1e300, 2e300, 3e300].into_iter().enumerate() {
            forecast.record(&key(n), n as f64, d);
        }
        let bounds = (Duration::from_secs(5), Duration::from_secs(120));
        for age in [1e300, f64::MAX, 0.0] {
            let plan = forecast.plan(&key(9), age);
            let delay = after_success(Status::InProgress, None, Some(plan), bounds);
            let within = match delay {
                Delay::Fixed(d) => d >= bounds.0 && d <= bounds.1,
                other => other == Delay::Climb,
            };
            assert!(within, "age {age}: {plan:?} gave {delay:?}");
        }
    }
}
