//! Flow health through the daemon, on tokio's paused clock: a run far longer than its flow's
//! recent runs is overdue once (also across a restart), each flow's last success and failure
//! come from every terminal run flowwatch knows (discovered history included) and come back
//! after a restart, and the status page shows it all.

use std::time::Duration;

use flowwatch_fake::{FakeServer, ScriptedFlow};
use flowwatch_testkit::*;
use serde_json::Value;

const NIGHTLY: &str = "nightly";

fn overdue_events(ws: &Workspace) -> Vec<Value> {
    ws.events()
        .into_iter()
        .filter(|e| e["type"] == "flowwatch.execution.overdue")
        .collect()
}

fn execution_labels(n: usize) -> Vec<(&'static str, String)> {
    vec![
        ("instance_id", INSTANCE.to_string()),
        ("flow_name", NIGHTLY.to_string()),
        ("execution_id", execution_id(n)),
    ]
}

fn gauge(metrics: &str, name: &str, n: usize) -> Option<f64> {
    let labels = execution_labels(n);
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    sample(metrics, name, &labels)
}

#[tokio::test(start_paused = true)]
async fn a_run_far_longer_than_its_flow_usually_takes_is_overdue_once_across_a_restart() {
    // Three runs of 10 s teach the median; the fourth runs 300 s. Overdue after
    // max(2 x 10 s, overdue_min 30 s) = 30 s.
    let mut runs: Vec<_> = (1..=3)
        .map(|n| scripted(NIGHTLY, n, &[(0, "IN_PROGRESS"), (10, "SUCCEEDED")]))
        .collect();
    runs.push(scripted(
        NIGHTLY,
        4,
        &[(0, "IN_PROGRESS"), (300, "SUCCEEDED")],
    ));
    let script = scenario(runs);
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let settings = format!("{POLLING}\n[flow_health]\noverdue_min = \"30s\"\n");
    let config = ws.config(&fake.endpoint_url(), &settings, &script);
    let daemon = Daemon::start(&config, &fake, false).await;

    eventually(Duration::from_secs(60), "execution 4 overdue", || async {
        gauge(&daemon.metrics().await, "flowwatch_execution_overdue", 4) == Some(1.0)
    })
    .await;
    let metrics = daemon.metrics().await;
    let start = gauge(&metrics, "flowwatch_execution_start_time_seconds", 4).expect("start");
    assert_eq!(
        gauge(
            &metrics,
            "flowwatch_execution_expected_end_timestamp_seconds",
            4
        ),
        Some(start + 10.0),
        "start plus the median"
    );
    assert_eq!(
        gauge(&metrics, "flowwatch_execution_overdue", 1),
        None,
        "finished runs of a flow without history then have no expectation"
    );
    let events = overdue_events(&ws);
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(
        event["id"],
        format!("{INSTANCE}/{NIGHTLY}/{}/OVERDUE", execution_id(4))
    );
    assert_eq!(event["data"]["median_duration_seconds"], 10.0);
    assert_eq!(event["data"]["overdue_after_seconds"], 30.0);
    let running = event["data"]["running_seconds"].as_f64().expect("running");
    assert!(
        (30.0..=37.0).contains(&running),
        "seen within a sweep and a poll of the threshold: {running}"
    );
    assert_eq!(event["data"]["labels"]["team"], "tests");
    let (status, page) = daemon.get("/").await;
    assert_eq!(status, 200);
    assert!(
        page.contains(&format!(
            r#"<tr class="execution running overdue" data-execution-id="{}">"#,
            execution_id(4)
        )),
        "{page}"
    );

    daemon.stop().await;
    let daemon = Daemon::start(&config, &fake, false).await;
    eventually(
        Duration::from_secs(30),
        "overdue again after the restart",
        || async { gauge(&daemon.metrics().await, "flowwatch_execution_overdue", 4) == Some(1.0) },
    )
    .await;
    assert_eq!(overdue_events(&ws).len(), 1, "never announced twice");

    eventually(
        Duration::from_secs(400),
        "execution 4 succeeded",
        || async { daemon.execution(4).await["status"] == "SUCCEEDED" },
    )
    .await;
    let metrics = daemon.metrics().await;
    assert_eq!(
        gauge(&metrics, "flowwatch_execution_overdue", 4),
        Some(0.0),
        "a run that ended is no longer overdue"
    );
    let flow = [("instance_id", INSTANCE), ("flow_name", NIGHTLY)];
    let end = gauge(&metrics, "flowwatch_execution_end_time_seconds", 4).expect("end");
    assert_eq!(
        sample(
            &metrics,
            "flowwatch_flow_last_success_timestamp_seconds",
            &flow
        ),
        Some(end)
    );
    let succeeded = [
        ("instance_id", INSTANCE),
        ("flow_name", NIGHTLY),
        ("status", "SUCCEEDED"),
    ];
    assert_eq!(
        sample(
            &metrics,
            "flowwatch_flow_duration_seconds_count",
            &succeeded
        ),
        Some(1.0),
        "this run only: the three before the restart are history, not new observations"
    );
    assert_eq!(overdue_events(&ws).len(), 1);
    daemon.stop().await;
}

#[tokio::test(start_paused = true)]
async fn freshness_comes_from_discovered_history_and_from_first_sight_and_survives_a_restart() {
    // "daily" succeeded 30 h ago and failed 2 h ago; "fresh" has never run.
    let mut success = scripted("daily", 1, &[(0, "SUCCEEDED")]);
    success.started_before = Some(Duration::from_secs(30 * 3600));
    success.ran_for = Some(Duration::from_secs(60));
    let mut failure = scripted("daily", 2, &[(0, "FAILED")]);
    failure.started_before = Some(Duration::from_secs(2 * 3600));
    failure.ran_for = Some(Duration::from_secs(45));
    let mut script = scenario(vec![success, failure]);
    script.flows.push(ScriptedFlow {
        instance_id: INSTANCE.to_string(),
        flow_name: "fresh".to_string(),
        faults: Vec::new(),
    });
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), POLLING, &scenario(Vec::new()));
    let mut watchlist = String::new();
    for flow in ["daily", "fresh"] {
        watchlist.push_str(&format!(
            "[[flow]]\ninstance_id = \"{INSTANCE}\"\nflow_name = \"{flow}\"\nsince = \"8d\"\nexpect_success_within = \"26h\"\n\n"
        ));
    }
    ws.write("watchlist.toml", &watchlist);
    let watched_from = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let daemon = Daemon::start(&config, &fake, false).await;
    let daily = [("instance_id", INSTANCE), ("flow_name", "daily")];
    let fresh = [("instance_id", INSTANCE), ("flow_name", "fresh")];
    eventually(
        Duration::from_secs(30),
        "daily's history discovered",
        || async {
            sample(
                &daemon.metrics().await,
                "flowwatch_flow_last_failure_timestamp_seconds",
                &daily,
            )
            .is_some()
        },
    )
    .await;
    let before = daemon.metrics().await;
    let last_success = sample(
        &before,
        "flowwatch_flow_last_success_timestamp_seconds",
        &daily,
    )
    .expect("success");
    let last_failure = sample(
        &before,
        "flowwatch_flow_last_failure_timestamp_seconds",
        &daily,
    )
    .expect("failure");
    assert!(
        (watched_from - last_success - 30.0 * 3600.0).abs() < 120.0,
        "the success ended 30 h ago: {last_success} vs {watched_from}"
    );
    assert!(last_failure > last_success);
    let first_sight = sample(
        &before,
        "flowwatch_flow_last_success_timestamp_seconds",
        &fresh,
    )
    .expect("a flow with no success is measured from first sight");
    assert!((first_sight - watched_from).abs() < 60.0, "{first_sight}");
    assert_eq!(
        sample(
            &before,
            "flowwatch_flow_success_expected_within_seconds",
            &daily
        ),
        Some(93_600.0)
    );
    let (_, page) = daemon.get("/").await;
    assert!(
        page.contains(r#"id="stale-count">1 flow without a recent success"#),
        "{page}"
    );

    daemon.stop().await;
    let daemon = Daemon::start(&config, &fake, false).await;
    let after = daemon.metrics().await;
    for (name, flow, value) in [
        (
            "flowwatch_flow_last_success_timestamp_seconds",
            &daily,
            last_success,
        ),
        (
            "flowwatch_flow_last_failure_timestamp_seconds",
            &daily,
            last_failure,
        ),
        (
            "flowwatch_flow_last_success_timestamp_seconds",
            &fresh,
            first_sight,
        ),
    ] {
        assert_eq!(
            sample(&after, name, flow),
            Some(value),
            "{name} restored at start-up"
        );
    }

    // A reload changes daily's expect_success_within and removes fresh: the alert's threshold
    // follows, and a removed flow can no longer alert.
    ws.write(
        "watchlist.toml",
        &format!("[[flow]]\ninstance_id = \"{INSTANCE}\"\nflow_name = \"daily\"\nsince = \"8d\"\nexpect_success_within = \"48h\"\n"),
    );
    eventually(Duration::from_secs(10), "the reload", || async {
        let m = daemon.metrics().await;
        sample(&m, "flowwatch_flow_success_expected_within_seconds", &daily) == Some(172_800.0)
            && sample(&m, "flowwatch_flow_success_expected_within_seconds", &fresh).is_none()
    })
    .await;
    daemon.stop().await;
}
