//! Adaptive polling through the daemon, on tokio's paused clock: executions of one flow that take
//! about as long every run are polled around their end, with fewer requests and a shorter
//! detection delay than the backoff ladder alone.

use std::time::Duration;

use flowwatch_fake::{FakeServer, Scenario};
use flowwatch_testkit::*;

/// Default-shaped polling (5 s growing to 2 m), with or without the forecast.
fn polling(adaptive: bool) -> String {
    format!(
        "[polling]\ninitial_interval = \"5s\"\nmax_interval = \"2m\"\nmax_requests_per_second = 50.0\nretain_terminal = \"1h\"\nadaptive = {adaptive}\n"
    )
}

/// `count` executions of `flow` that all start at once and succeed after `duration` seconds.
fn one_flow(flow: &str, count: usize, duration: u64) -> Scenario {
    scenario(
        (1..=count)
            .map(|n| scripted(flow, n, &[(0, "IN_PROGRESS"), (duration, "SUCCEEDED")]))
            .collect(),
    )
}

/// Requests made and the worst detection delay, for 30 executions of one flow that all start at
/// once and take `duration` seconds.
async fn play(adaptive: bool, duration: u64) -> (usize, f64) {
    let script = one_flow("batch", 30, duration);
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), &polling(adaptive), &script);
    let daemon = Daemon::start(&config, &fake, false).await;
    eventually(
        Duration::from_secs(600),
        "every execution SUCCEEDED",
        || async { daemon.status().await["by_status"]["SUCCEEDED"] == 30 },
    )
    .await;
    daemon.stop().await;
    let mut worst: f64 = 0.0;
    for n in 1..=30 {
        let last = arrivals_of(&fake, n).last().copied().unwrap_or(f64::NAN);
        worst = worst.max(last - duration as f64);
    }
    (fake.stats().requests as usize, worst)
}

#[tokio::test(start_paused = true)]
async fn runs_of_one_shape_are_polled_around_their_end_with_fewer_requests() {
    let (plain_requests, plain_delay) = play(false, 100).await;
    let (adaptive_requests, adaptive_delay) = play(true, 100).await;
    assert!(
        adaptive_requests * 10 <= plain_requests * 7,
        "adaptive {adaptive_requests} requests, plain {plain_requests}"
    );
    assert!(
        adaptive_delay < plain_delay && adaptive_delay <= 15.0,
        "worst detection delay: adaptive {adaptive_delay:.1} s, plain {plain_delay:.1} s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_flow_with_few_executions_is_polled_as_without_a_forecast() {
    // Three executions are all scouts: the ladder, exactly as with adaptive = false. The ladder
    // is jittered, so the runs are compared by shape, not by count: every gap between two polls
    // of an execution lies within its step of the ladder (5 s, then up to 10, 20, 40, 80, 120 s).
    // A spared execution would wait max_interval (2 m) for its second poll.
    let script = one_flow("few", 3, 100);
    for adaptive in [false, true] {
        let fake = FakeServer::start(script.clone()).await.expect("fake");
        let ws = Workspace::new();
        let config = ws.config(&fake.endpoint_url(), &polling(adaptive), &script);
        let daemon = Daemon::start(&config, &fake, false).await;
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert_eq!(daemon.status().await["by_status"]["SUCCEEDED"], 3);
        daemon.stop().await;
        for n in 1..=3 {
            let polls = arrivals_of(&fake, n);
            assert!(
                polls.len() >= 4,
                "adaptive {adaptive}, execution {n}: {polls:?}"
            );
            for (step, gap) in polls.windows(2).map(|w| w[1] - w[0]).enumerate() {
                let ceiling = (5.0 * 2f64.powi(step as i32)).min(120.0);
                assert!(
                    (4.9..=ceiling + 0.1).contains(&gap),
                    "adaptive {adaptive}, execution {n}: gap {step} is {gap:.1} s, not within \
                     [5, {ceiling}] s: {polls:?}"
                );
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_known_executions_are_polled_at_once_not_spared() {
    let script = one_flow("batch", 10, 300);
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), &polling(true), &script);
    let first = Daemon::start(&config, &fake, false).await;
    eventually(Duration::from_secs(200), "all ten seen running", || async {
        first.status().await["by_status"]["IN_PROGRESS"] == 10
    })
    .await;
    first.stop().await;
    // They all finish while flowwatch is down; the restarted one knows no durations yet.
    tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_secs(310)).await;
    let second = Daemon::start(&config, &fake, false).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        second.status().await["by_status"]["SUCCEEDED"],
        10,
        "restored executions are polled within initial_interval, not spared for max_interval"
    );
    second.stop().await;
}
