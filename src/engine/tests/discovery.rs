//! Discovery of `[[flow]]` entries: the window of what is new, paging and its bound, and the
//! error table on List.

use std::sync::Arc;
use std::time::Duration;

use super::rig::{Rig, Setup, events_of, flow_key, key, wall, watched_flow, watchlist};
use super::scripted::{Scripted, running, succeeded, throttled};
use crate::api::ListPage;
use crate::model::{ExecutionKey, Observation, Status};

fn page(executions: &[(&ExecutionKey, Observation)], next_token: Option<&str>) -> ListPage {
    ListPage {
        executions: executions
            .iter()
            .map(|(k, o)| ((*k).clone(), o.clone()))
            .collect(),
        invalid: Vec::new(),
        next_token: next_token.map(str::to_string),
    }
}

fn ok(observation: Result<Observation, crate::api::ApiError>) -> Observation {
    observation.expect("a scripted observation")
}

#[tokio::test(start_paused = true)]
async fn new_runs_join_and_runs_that_started_before_the_window_do_not() {
    let api = Arc::new(Scripted::default());
    let (old, new) = (key("orders", 1), key("orders", 2));
    let listed = page(
        &[
            (&old, ok(running(wall() - 3600.0))),
            (&new, ok(running(wall() + 5.0))),
        ],
        None,
    );
    api.lists(&flow_key("orders"), [Ok(listed)]);
    api.gets(&new, [running(wall())]);
    let flows = [watched_flow("orders", None)];
    let rig = Rig::start(api.clone(), watchlist(&[], &flows), Setup::ladder()).await;
    rig.wait(Duration::from_secs(1)).await;
    let status = rig.status().await;
    let watched: Vec<&ExecutionKey> = status.executions.iter().map(|e| &e.entry.key).collect();
    assert_eq!(watched, [&new], "only the run inside the window");
    assert!(status.executions[0].discovered);
    assert_eq!(status.flows[0].discovered, 1);
    rig.wait(Duration::from_secs(30)).await;
    assert!(
        !api.gets_of(&new, rig.start).is_empty(),
        "a discovered run is polled"
    );
    let (_, events) = rig.stop().await;
    let first = events_of(&events, "flowwatch.execution.transition", &new);
    assert_eq!(first[0]["data"]["observed_via"], "list");
    assert!(events_of(&events, "flowwatch.execution.transition", &old).is_empty());
}

#[tokio::test(start_paused = true)]
async fn since_reaches_back_to_runs_that_started_before_flowwatch_saw_the_flow() {
    let api = Arc::new(Scripted::default());
    let old = key("orders", 1);
    let listed = page(&[(&old, ok(running(wall() - 3600.0)))], None);
    api.lists(&flow_key("orders"), [Ok(listed)]);
    api.gets(&old, [running(wall() - 3600.0)]);
    let flows = [watched_flow("orders", Some(Duration::from_secs(7200)))];
    let rig = Rig::start(api, watchlist(&[], &flows), Setup::ladder()).await;
    rig.wait(Duration::from_secs(1)).await;
    assert_eq!(
        rig.execution(&old).await.map(|e| e.status),
        Some(Status::InProgress)
    );
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_round_stops_at_max_pages_and_the_next_round_resumes_from_its_token() {
    let api = Arc::new(Scripted::default());
    let runs: Vec<ExecutionKey> = (1..=3).map(|n| key("orders", n)).collect();
    let new = |n: usize| (&runs[n], ok(running(wall() + 5.0)));
    let pages = [
        Ok(page(&[new(0)], Some("t1"))),
        Ok(page(&[new(1)], Some("t2"))),
        Ok(page(&[new(2)], None)),
    ];
    api.lists(&flow_key("orders"), pages);
    for run in &runs {
        api.gets(run, [running(wall())]);
    }
    let mut setup = Setup::ladder();
    setup.discovery.max_pages_per_round = 2;
    let flows = [watched_flow("orders", None)];
    let rig = Rig::start(api.clone(), watchlist(&[], &flows), setup).await;
    rig.until(Duration::from_secs(61)).await;
    let lists = api.lists_of(&flow_key("orders"), rig.start);
    let tokens: Vec<Option<&str>> = lists.iter().map(|(_, t)| t.as_deref()).collect();
    assert_eq!(
        tokens,
        [None, Some("t1"), Some("t2")],
        "two pages, then the next round goes on from t2"
    );
    // The second page follows as soon as the rate allows (5 a second); the next round after
    // discovery.interval.
    assert!(lists[1].0 <= Duration::from_secs(1), "{lists:?}");
    let round = lists[2].0 - lists[1].0;
    assert!(
        round >= Duration::from_secs(60) && round <= Duration::from_secs(61),
        "{lists:?}"
    );
    assert_eq!(rig.status().await.watched, 3);
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_round_ends_at_settled_history_whatever_the_token_says() {
    let api = Arc::new(Scripted::default());
    let done = key("orders", 1);
    let start = wall() - 3600.0;
    // Finished long ago, before the window: history, so paging further is pointless.
    let listed = page(&[(&done, ok(succeeded(start, start + 60.0)))], Some("more"));
    api.lists(&flow_key("orders"), [Ok(listed)]);
    let flows = [watched_flow("orders", None)];
    let rig = Rig::start(api.clone(), watchlist(&[], &flows), Setup::ladder()).await;
    rig.until(Duration::from_secs(59)).await;
    assert_eq!(
        api.lists_of(&flow_key("orders"), rig.start).len(),
        1,
        "one page"
    );
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_flow_that_does_not_exist_is_asked_again_ten_intervals_later() {
    let api = Arc::new(Scripted::default());
    let flows = [watched_flow("orders", None)];
    let rig = Rig::start(api.clone(), watchlist(&[], &flows), Setup::ladder()).await;
    rig.until(Duration::from_secs(700)).await;
    let times: Vec<Duration> = api
        .lists_of(&flow_key("orders"), rig.start)
        .into_iter()
        .map(|(at, _)| at)
        .collect();
    assert_eq!(times, [Duration::ZERO, Duration::from_secs(600)]);
    assert!(rig.status().await.flows[0].flow_not_found);
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_throttled_list_is_asked_again_from_the_same_place() {
    let api = Arc::new(Scripted::default());
    let new = key("orders", 1);
    let listed = page(&[(&new, ok(running(wall() + 5.0)))], None);
    api.lists(&flow_key("orders"), [Err(throttled()), Ok(listed)]);
    api.gets(&new, [running(wall())]);
    let flows = [watched_flow("orders", None)];
    let rig = Rig::start(api.clone(), watchlist(&[], &flows), Setup::ladder()).await;
    rig.until(Duration::from_secs(30)).await;
    let lists = api.lists_of(&flow_key("orders"), rig.start);
    assert_eq!(lists.len(), 2, "{lists:?}");
    assert_eq!(lists[1].1, None, "the round starts over at the top");
    assert!(
        lists[1].0 >= Duration::from_secs(5),
        "not sooner than initial_interval"
    );
    assert_eq!(rig.status().await.watched, 1);
    rig.stop().await;
}
