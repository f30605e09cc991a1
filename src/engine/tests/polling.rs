//! Polls: the backoff ladder, the end of polling, NOT_FOUND's grace, throttling and the error
//! table's other rows.

use std::sync::Arc;
use std::time::Duration;

use super::rig::{Rig, Setup, events_of, key, wall, watchlist};
use super::scripted::{Scripted, failed, not_found, running, succeeded, throttled};
use crate::api::ApiError;
use crate::engine::{ExitWhen, Finish};
use crate::model::{Outcome, Status};

const SECOND: Duration = Duration::from_secs(1);

/// The gaps between consecutive times.
fn gaps(times: &[Duration]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn a_running_execution_climbs_the_backoff_ladder_within_its_jitter() {
    let api = Arc::new(Scripted::default());
    let k = key("orders", 1);
    api.gets(&k, [running(wall() - 60.0)]);
    let rig = Rig::start(api.clone(), watchlist(&[&k], &[]), Setup::ladder()).await;
    rig.until(Duration::from_secs(1200)).await;
    let polls = api.gets_of(&k, rig.start);
    assert_eq!(
        polls.first(),
        Some(&Duration::ZERO),
        "the first poll is at once"
    );
    let gaps = gaps(&polls);
    assert!(gaps.len() >= 10, "{gaps:?}");
    for (n, gap) in gaps.iter().enumerate() {
        // Step n's ceiling: 5 s doubled n times, at most 120 s; the jitter is [5 s, ceiling].
        let ceiling = Duration::from_secs(5 << n.min(5)).min(Duration::from_secs(120));
        assert!(
            *gap >= Duration::from_secs(5) && *gap <= ceiling + Duration::from_millis(10),
            "gap {n} is {gap:?}, outside [5 s, {ceiling:?}]: {gaps:?}"
        );
    }
    assert_eq!(
        gaps[0],
        Duration::from_secs(5),
        "the first step has no room for jitter"
    );
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_execution_that_ends_is_polled_no_more_and_each_change_is_one_event() {
    let api = Arc::new(Scripted::default());
    let k = key("orders", 1);
    let start = wall() - 60.0;
    api.gets(
        &k,
        [
            running(start),
            running(start),
            succeeded(start, start + 50.0),
        ],
    );
    let rig = Rig::start(api.clone(), watchlist(&[&k], &[]), Setup::ladder()).await;
    rig.until(Duration::from_secs(600)).await;
    let polls = api.gets_of(&k, rig.start);
    assert_eq!(
        polls.len(),
        3,
        "polled until SUCCEEDED, then never: {polls:?}"
    );
    let view = rig.execution(&k).await.expect("watched");
    assert_eq!(view.status, Status::Succeeded);
    assert!(!view.polling);
    assert_eq!(view.attempts, 3);
    // The commit exported the flow's duration and latest success with it.
    let exported = |family: &str| {
        rig.metrics.render().lines().find_map(|line| {
            let rest = line.strip_prefix(family)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once("} ")?;
            labels
                .contains("flow_name=\"orders\"")
                .then(|| value.parse::<f64>().ok())?
        })
    };
    let ended = exported("flowwatch_flow_last_success_timestamp_seconds");
    assert!(
        ended.is_some_and(|t| (t - (start + 50.0)).abs() < 0.001),
        "{ended:?}"
    );
    assert_eq!(exported("flowwatch_flow_duration_seconds_sum"), Some(50.0));
    let (_, events) = rig.stop().await;
    let transitions = events_of(&events, "flowwatch.execution.transition", &k);
    let steps: Vec<(&str, &str)> = transitions
        .iter()
        .map(|e| {
            (
                e["data"]["from_status"].as_str().unwrap_or_default(),
                e["data"]["to_status"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [("UNKNOWN", "IN_PROGRESS"), ("IN_PROGRESS", "SUCCEEDED")]
    );
    assert_eq!(transitions[1]["data"]["observed_via"], "poll");
    assert!(
        transitions[1]["data"]["end_time"].is_string(),
        "{}",
        transitions[1]
    );
}

#[tokio::test(start_paused = true)]
async fn the_engine_stops_by_itself_once_all_is_done_and_says_whether_one_failed() {
    let api = Arc::new(Scripted::default());
    let (ok, bad) = (key("orders", 1), key("orders", 2));
    let start = wall() - 60.0;
    api.gets(&ok, [succeeded(start, start + 10.0)]);
    api.gets(&bad, [running(start), failed(start, start + 20.0)]);
    let setup = Setup {
        exit_when: ExitWhen::AllDone,
        ..Setup::ladder()
    };
    let rig = Rig::start(api, watchlist(&[&ok, &bad], &[]), setup).await;
    let (finish, events) = tokio::time::timeout(Duration::from_secs(60), rig.finished())
        .await
        .expect("it stops within a minute");
    assert_eq!(finish, Finish::AllDone { failed: true });
    let failed = events_of(&events, "flowwatch.execution.transition", &bad);
    assert_eq!(
        failed.last().map(|e| &e["data"]["message"]),
        Some(&"column order_id is missing".into())
    );
}

#[tokio::test(start_paused = true)]
async fn not_found_within_the_grace_keeps_the_status_and_polling_goes_on() {
    let api = Arc::new(Scripted::default());
    let k = key("orders", 1);
    api.gets(&k, [Err(not_found()), Err(not_found()), running(wall())]);
    let rig = Rig::start(api.clone(), watchlist(&[&k], &[]), Setup::ladder()).await;
    rig.wait(Duration::from_secs(4)).await;
    let view = rig.execution(&k).await.expect("watched");
    assert_eq!(view.status, Status::Unknown, "not yet NOT_FOUND");
    assert_eq!(view.last_outcome, Some(Outcome::NotFound));
    rig.until(Duration::from_secs(60)).await;
    assert_eq!(
        rig.execution(&k).await.map(|v| v.status),
        Some(Status::InProgress)
    );
    let (_, events) = rig.stop().await;
    let to: Vec<_> = events_of(&events, "flowwatch.execution.transition", &k)
        .iter()
        .map(|e| e["data"]["to_status"].clone())
        .collect();
    assert_eq!(to, ["IN_PROGRESS"], "no NOT_FOUND on the way");
}

#[tokio::test(start_paused = true)]
async fn not_found_past_the_grace_is_not_found_once() {
    let api = Arc::new(Scripted::default());
    let k = key("orders", 1);
    api.gets(&k, [Err(not_found())]);
    let mut setup = Setup::ladder();
    setup.polling.not_found_grace = Duration::from_secs(60);
    let rig = Rig::start(api.clone(), watchlist(&[&k], &[]), setup).await;
    rig.until(Duration::from_secs(50)).await;
    assert_eq!(
        rig.execution(&k).await.map(|v| v.status),
        Some(Status::Unknown)
    );
    rig.until(Duration::from_secs(600)).await;
    let view = rig.execution(&k).await.expect("watched");
    assert_eq!(view.status, Status::NotFound);
    let (_, events) = rig.stop().await;
    let to: Vec<_> = events_of(&events, "flowwatch.execution.transition", &k)
        .iter()
        .map(|e| e["data"]["to_status"].clone())
        .collect();
    assert_eq!(to, ["NOT_FOUND"]);
}

#[tokio::test(start_paused = true)]
async fn throttling_halves_the_global_rate_and_successes_grow_it_back() {
    let api = Arc::new(Scripted::default());
    let k = key("orders", 1);
    api.gets(&k, [Err(throttled()), running(wall())]);
    let rig = Rig::start(api.clone(), watchlist(&[&k], &[]), Setup::ladder()).await;
    let rate = "flowwatch_rate_limit_requests_per_second{account_id=\"\",region=\"us-east-1\"}";
    assert_eq!(rig.sample(rate), Some(5.0));
    rig.wait(SECOND).await;
    assert_eq!(rig.sample(rate), Some(2.5), "cut in half");
    let view = rig.execution(&k).await.expect("watched");
    assert_eq!(view.attempts, 0, "a throttled poll is not an attempt");
    assert_eq!(view.last_outcome, Some(Outcome::Throttled));
    rig.until(Duration::from_secs(900)).await;
    let grown = rig.sample(rate).unwrap_or_default();
    assert!(
        grown > 2.5 && grown <= 5.0,
        "grows back, never past the cap: {grown}"
    );
    let polls = api.gets_of(&k, rig.start);
    assert!(polls[1] - polls[0] >= Duration::from_secs(5), "{polls:?}");
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_hint_holds_the_next_poll_at_least_that_long() {
    let api = Arc::new(Scripted::default());
    let k = key("orders", 1);
    let hinted = ApiError::Throttled {
        message: "Rate exceeded".into(),
        retry_after: Some(Duration::from_secs(30)),
    };
    api.gets(&k, [Err(hinted), running(wall())]);
    let rig = Rig::start(api.clone(), watchlist(&[&k], &[]), Setup::ladder()).await;
    rig.until(Duration::from_secs(120)).await;
    let polls = api.gets_of(&k, rig.start);
    assert!(polls.len() >= 2, "{polls:?}");
    assert!(polls[1] - polls[0] >= Duration::from_secs(30), "{polls:?}");
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn access_denied_is_asked_again_at_max_interval_and_changes_no_status() {
    let api = Arc::new(Scripted::default());
    let k = key("orders", 1);
    let denied = ApiError::AccessDenied {
        message: "not authorized to perform scn:GetDataIntegrationFlowExecution".into(),
    };
    api.gets(&k, [Err(denied)]);
    let rig = Rig::start(api.clone(), watchlist(&[&k], &[]), Setup::ladder()).await;
    rig.until(Duration::from_secs(500)).await;
    let polls = api.gets_of(&k, rig.start);
    assert_eq!(
        gaps(&polls),
        vec![Duration::from_secs(120); polls.len() - 1],
        "every max_interval"
    );
    let view = rig.execution(&k).await.expect("watched");
    assert_eq!(view.status, Status::Unknown);
    assert!(
        view.last_error
            .is_some_and(|e| e.contains("not authorized"))
    );
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_validation_error_rejects_the_execution_once_and_it_is_not_asked_again() {
    let api = Arc::new(Scripted::default());
    let k = key("orders", 1);
    let invalid = ApiError::Validation {
        message: "executionId does not match the pattern".into(),
    };
    api.gets(&k, [Err(invalid)]);
    let rig = Rig::start(api.clone(), watchlist(&[&k], &[]), Setup::ladder()).await;
    rig.until(Duration::from_secs(600)).await;
    assert_eq!(api.gets_of(&k, rig.start).len(), 1);
    let view = rig.execution(&k).await.expect("watched");
    assert!(view.rejected.is_some_and(|r| r.contains("does not match")));
    let (_, events) = rig.stop().await;
    assert_eq!(
        events_of(&events, "flowwatch.execution.rejected", &k).len(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_built_is_retried_at_max_interval_and_is_no_verdict() {
    let api = Arc::new(Scripted::default());
    let k = key("orders", 1);
    let local = ApiError::Local {
        message: "failed to construct request: invalid region".into(),
    };
    api.gets(&k, [Err(local.clone()), Err(local), running(wall())]);
    let rig = Rig::start(api.clone(), watchlist(&[&k], &[]), Setup::ladder()).await;
    rig.until(Duration::from_secs(250)).await;
    let polls = api.gets_of(&k, rig.start);
    let minutes = |m: u64| Duration::from_secs(m * 60);
    assert_eq!(
        polls[..3],
        [minutes(0), minutes(2), minutes(4)],
        "every max_interval"
    );
    let view = rig.execution(&k).await.expect("watched");
    assert_eq!(
        view.status,
        Status::InProgress,
        "the answer once it could be asked"
    );
    let answered = polls.len() as u64 - 2;
    assert_eq!(
        view.attempts, answered,
        "the two failures were no attempts of the execution"
    );
    assert!(view.rejected.is_none(), "never its fate");
    rig.stop().await;
}
