//! The daemon end to end, in-process: the real SDK over HTTP against the fake Supply Chain API,
//! on tokio's paused clock (the fake, the daemon and the test share one runtime, so scripted
//! minutes pass in milliseconds and nothing depends on wall-clock sleeps).

use std::time::Duration;

use flowwatch::Finish;
use flowwatch_fake::FakeSource;
use flowwatch_testkit::*;

#[tokio::test(start_paused = true)]
async fn executions_reach_terminal_status_with_one_event_per_transition() {
    let mut ok = scripted("daily-orders", 1, &[(0, "IN_PROGRESS"), (30, "SUCCEEDED")]);
    ok.source = Some(FakeSource::S3 {
        bucket_name: "landing".into(),
        key: "orders/day.csv".into(),
    });
    let mut failing = scripted("supplier-feed", 2, &[(0, "IN_PROGRESS"), (45, "FAILED")]);
    failing.source = Some(FakeSource::Dataset {
        dataset_identifier: format!(
            "arn:aws:scn:us-east-1:123456789012:instance/{INSTANCE}/namespaces/asc/datasets/orders"
        ),
    });
    failing.diagnostic_reports_root_s3_uri = Some("s3://diagnostics/feed/".into());
    let scenario = scenario(vec![ok, failing]);
    let fake = flowwatch_fake::FakeServer::start(scenario.clone())
        .await
        .expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), POLLING, &scenario);
    let daemon = Daemon::start(&config, &fake, true).await;
    let finish = daemon.finish().await;
    assert_eq!(finish, Finish::AllDone { failed: true });

    let events = ws.events();
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(events.len(), 4, "{ids:?}");
    for (n, to) in [
        (1, "IN_PROGRESS"),
        (1, "SUCCEEDED"),
        (2, "IN_PROGRESS"),
        (2, "FAILED"),
    ] {
        let want = format!(
            "{INSTANCE}/{}/{}/{to}",
            if n == 1 {
                "daily-orders"
            } else {
                "supplier-feed"
            },
            execution_id(n)
        );
        assert_eq!(
            ids.iter().filter(|id| **id == want).count(),
            1,
            "{want} in {ids:?}"
        );
    }
    let failed = events
        .iter()
        .find(|e| e["data"]["to_status"] == "FAILED")
        .expect("a FAILED event");
    assert_eq!(failed["specversion"], "1.0");
    assert_eq!(failed["type"], "flowwatch.execution.transition");
    assert_eq!(failed["data"]["from_status"], "IN_PROGRESS");
    assert_eq!(failed["data"]["message"], "execution 2 failed");
    assert_eq!(
        failed["data"]["diagnostic_reports_root_s3_uri"],
        "s3://diagnostics/feed/"
    );
    assert_eq!(failed["data"]["source_info"]["source_type"], "DATASET");
    assert!(
        failed["data"]["source_info"]["dataset_source"]["dataset_identifier"]
            .as_str()
            .is_some_and(|a| a.starts_with("arn:aws:scn:"))
    );
    assert!(failed["data"]["start_time"].is_string() && failed["data"]["end_time"].is_string());
    assert_eq!(failed["data"]["labels"]["team"], "tests");
    let succeeded = events
        .iter()
        .find(|e| e["data"]["to_status"] == "SUCCEEDED")
        .expect("a SUCCEEDED event");
    assert_eq!(
        succeeded["data"]["source_info"]["s3_source"]["bucket_name"],
        "landing"
    );
    assert_eq!(
        succeeded["data"]["source_info"]["s3_source"]["key"],
        "orders/day.csv"
    );
    fake.stop().await;
}

async fn start(
    executions: Vec<flowwatch_fake::ScriptedExecution>,
    polling: &str,
    exit_when_done: bool,
) -> (flowwatch_fake::FakeServer, Workspace, Daemon) {
    let scenario = scenario(executions);
    let fake = flowwatch_fake::FakeServer::start(scenario.clone())
        .await
        .expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), polling, &scenario);
    let daemon = Daemon::start(&config, &fake, exit_when_done).await;
    (fake, ws, daemon)
}

fn status_of(metrics: &str, n: usize, status: &str) -> Option<f64> {
    let id = execution_id(n);
    sample(
        metrics,
        "flowwatch_execution_status",
        &[("execution_id", &id), ("status", status)],
    )
}

#[tokio::test(start_paused = true)]
async fn metrics_status_and_series_retention_follow_the_contract() {
    let mut failing = scripted("supplier-feed", 1, &[(0, "IN_PROGRESS"), (10, "FAILED")]);
    failing.diagnostic_reports_root_s3_uri = Some("s3://diagnostics/feed/".into());
    let running = scripted("daily-orders", 2, &[(0, "IN_PROGRESS")]);
    let (fake, ws, daemon) = start(vec![failing, running], POLLING, false).await;

    let m = daemon.metrics().await;
    assert_eq!(
        sample(
            &m,
            "flowwatch_transitions_total",
            &[("flow_name", "supplier-feed"), ("to_status", "FAILED")]
        ),
        Some(0.0),
        "the FAILED counter exists at 0 before any transition:\n{m}"
    );
    assert_eq!(status_of(&m, 1, "UNKNOWN"), Some(1.0));

    eventually(Duration::from_secs(60), "the FAILED transition", || async {
        daemon.execution(1).await["status"] == "FAILED"
    })
    .await;
    let m = daemon.metrics().await;
    assert_eq!(status_of(&m, 1, "FAILED"), Some(1.0), "{m}");
    assert_eq!(
        sample(
            &m,
            "flowwatch_execution_failure_info",
            &[
                ("execution_id", &execution_id(1)),
                ("message", "execution 1 failed")
            ]
        ),
        Some(1.0),
        "the failure message is exported for alerts:\n{m}"
    );
    for other in ["UNKNOWN", "IN_PROGRESS", "SUCCEEDED", "NOT_FOUND"] {
        assert_eq!(status_of(&m, 1, other), Some(0.0), "one-hot {other}");
    }
    assert_eq!(
        sample(
            &m,
            "flowwatch_transitions_total",
            &[("flow_name", "supplier-feed"), ("to_status", "FAILED")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "flowwatch_transitions_total",
            &[("flow_name", "supplier-feed"), ("to_status", "NOT_FOUND")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&m, "flowwatch_watched_executions", &[("status", "FAILED")]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "flowwatch_watched_executions",
            &[("status", "IN_PROGRESS")]
        ),
        Some(1.0)
    );
    let successes = sample(
        &m,
        "flowwatch_api_requests_total",
        &[("outcome", "success")],
    )
    .unwrap_or(0.0);
    assert!(successes >= 3.0, "{m}");
    assert_eq!(
        sample(&m, "flowwatch_api_request_duration_seconds_count", &[]),
        Some(fake.stats().requests as f64)
    );
    assert!(
        sample(
            &m,
            "flowwatch_execution_end_time_seconds",
            &[("execution_id", &execution_id(1))]
        )
        .is_some_and(|t| t > 1.7e9)
    );
    assert!(
        sample(
            &m,
            "flowwatch_execution_start_time_seconds",
            &[("execution_id", &execution_id(2))]
        )
        .is_some()
    );
    assert_eq!(
        sample(&m, "flowwatch_rate_limit_requests_per_second", &[]),
        Some(20.0)
    );
    assert_eq!(
        sample(
            &m,
            "flowwatch_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "flowwatch_events_total",
            &[("sink", "file"), ("result", "success")]
        ),
        Some(3.0)
    );

    let failed = daemon.execution(1).await;
    assert_eq!(failed["polling"], false);
    assert_eq!(failed["message"], "execution 1 failed");
    assert_eq!(
        failed["diagnostic_reports_root_s3_uri"],
        "s3://diagnostics/feed/"
    );
    assert!(failed["attempts"].as_u64().is_some_and(|a| a >= 2));
    assert!(failed["last_poll"].is_string() && failed["next_poll"].is_null());
    assert_eq!(failed["labels"]["team"], "tests");
    let running = daemon.execution(2).await;
    assert_eq!(running["status"], "IN_PROGRESS");
    assert!(running["next_poll"].is_string(), "{running}");

    // A terminal execution stops being polled; its series go after retain_terminal (30s).
    let polls = arrivals_of(&fake, 1).len();
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(
        arrivals_of(&fake, 1).len(),
        polls,
        "no polls after a terminal status"
    );
    let m = daemon.metrics().await;
    assert_eq!(
        status_of(&m, 1, "FAILED"),
        None,
        "series dropped after retain_terminal:\n{m}"
    );
    assert!(!m.contains("flowwatch_execution_failure_info{"), "{m}");
    assert_eq!(status_of(&m, 2, "IN_PROGRESS"), Some(1.0));
    assert_eq!(
        sample(
            &m,
            "flowwatch_transitions_total",
            &[("flow_name", "supplier-feed"), ("to_status", "FAILED")]
        ),
        Some(1.0),
        "counters stay"
    );
    assert_eq!(daemon.execution(1).await["metrics_retained"], false);

    assert_eq!(daemon.stop().await, Finish::Shutdown);
    assert_eq!(ws.events().len(), 3);
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn health_endpoints_answer_and_anything_else_is_404() {
    let (fake, _ws, daemon) = start(
        vec![scripted("f", 1, &[(0, "IN_PROGRESS")])],
        POLLING,
        false,
    )
    .await;
    eventually(Duration::from_secs(10), "readiness", || async {
        daemon.get("/readyz").await.0 == 200
    })
    .await;
    assert_eq!(daemon.get("/livez").await.0, 200);
    let (code, body) = daemon.get("/readyz").await;
    assert_eq!((code, body.as_str()), (200, r#"{"status":"ready"}"#));
    assert_eq!(daemon.get("/nope").await.0, 404);
    assert_eq!(daemon.get("/metrics/extra").await.0, 404);
    assert_eq!(http(daemon.addr, "POST", "/status").await.0, 405);
    let doc = daemon.status().await;
    assert_eq!(doc["watched"], 1);
    assert_eq!(doc["by_status"]["IN_PROGRESS"], 1);
    daemon.stop().await;
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_api_is_never_polled_faster_than_the_rate_limit_and_startup_is_spread() {
    let executions: Vec<_> = (1..=40)
        .map(|n| scripted("bulk", n, &[(0, "IN_PROGRESS"), (40, "SUCCEEDED")]))
        .collect();
    let polling = POLLING
        .replace(
            "max_requests_per_second = 20.0",
            "max_requests_per_second = 5.0",
        )
        .replace("initial_interval = \"1s\"", "initial_interval = \"10s\"")
        .replace("max_interval = \"8s\"", "max_interval = \"20s\"")
        // The start-up spread of the ladder; with the forecast, a flow's executions past its
        // scouts wait for them instead (tests/forecast.rs).
        + "adaptive = false\n";
    let (fake, _ws, daemon) = start(executions, &polling, true).await;
    assert_eq!(daemon.finish().await, Finish::AllDone { failed: false });
    let all: Vec<f64> = fake
        .stats()
        .arrivals
        .iter()
        .map(|(t, _)| t.as_secs_f64())
        .collect();
    // Requests exactly 0.2 s apart put 6 in a closed 1 s window; the timer's millisecond
    // granularity is the tolerance.
    let peak = peak_in_window(&all, 0.999);
    assert!(peak <= 5, "at most 5 requests in any second, saw {peak}");
    // The first poll of every execution comes in the first 10 s and is spread over them.
    let firsts: Vec<f64> = (1..=40).map(|n| arrivals_of(&fake, n)[0]).collect();
    let last_first = firsts.iter().copied().fold(0.0, f64::max);
    assert!(last_first <= 10.5, "{firsts:?}");
    assert!(peak_in_window(&firsts, 0.999) <= 5, "{firsts:?}");
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn schedule_lag_shows_polls_waiting_for_the_rate_limit_and_returns_to_zero() {
    // 60 first polls due within 1 s and 4 requests a second allowed: 15 s of work. Each
    // execution is over at its first answer, so the queue empties after that.
    let executions: Vec<_> = (1..=60)
        .map(|n| scripted("bulk", n, &[(0, "SUCCEEDED")]))
        .collect();
    let polling = POLLING.replace(
        "max_requests_per_second = 20.0",
        "max_requests_per_second = 4.0",
    ) + "adaptive = false\n";
    let (fake, _ws, daemon) = start(executions, &polling, false).await;
    let lag = || async {
        sample(
            &daemon.metrics().await,
            "flowwatch_schedule_lag_seconds",
            &[],
        )
    };
    tokio::time::sleep(Duration::from_secs(8)).await;
    let behind = lag().await.expect("the lag gauge is exported");
    assert!(
        (5.0..9.0).contains(&behind),
        "8 s in, the oldest due poll has waited about 7 s: {behind}"
    );
    eventually(
        Duration::from_secs(30),
        "every execution SUCCEEDED",
        || async { daemon.status().await["by_status"]["SUCCEEDED"] == 60 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        lag().await,
        Some(0.0),
        "nothing is overdue once the queue is empty"
    );
    daemon.stop().await;
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_from_initial_to_max_interval_within_jitter_bounds() {
    let (fake, _ws, daemon) = start(
        vec![scripted("slow", 1, &[(0, "IN_PROGRESS")])],
        POLLING,
        false,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(200)).await;
    let arrivals = arrivals_of(&fake, 1);
    let gaps: Vec<f64> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 20, "{gaps:?}");
    // The first poll is a transition (UNKNOWN -> IN_PROGRESS), which resets the ladder.
    for (i, gap) in gaps.iter().enumerate() {
        let ceiling = (2f64.powi(i as i32)).min(8.0);
        assert!(
            *gap >= 1.0 - 1e-6 && *gap <= ceiling + 0.05,
            "gap {i} = {gap}, ceiling {ceiling}: {gaps:?}"
        );
    }
    let late = &gaps[5..];
    assert!(
        late.iter().any(|g| *g > 4.0),
        "delays reach the upper steps: {gaps:?}"
    );
    let mean = late.iter().sum::<f64>() / late.len() as f64;
    assert!(
        (3.0..6.0).contains(&mean),
        "uniform in [1, 8] averages 4.5, got {mean}"
    );
    daemon.stop().await;
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_throttling_storm_slows_the_global_rate_and_throttles_are_not_attempts() {
    let storm = |n| {
        with_fault(
            scripted("stormy", n, &[(0, "IN_PROGRESS"), (90, "SUCCEEDED")]),
            0,
            Some(60),
            0.9,
            api_error("ThrottlingException"),
        )
    };
    let (fake, _ws, daemon) = start((1..=10).map(storm).collect(), POLLING, false).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let m = daemon.metrics().await;
    let rate = sample(&m, "flowwatch_rate_limit_requests_per_second", &[]).unwrap_or(f64::NAN);
    assert!(
        rate < 5.0,
        "the rate is cut well below 20 during the storm: {rate}"
    );
    let throttled = sample(
        &m,
        "flowwatch_api_requests_total",
        &[("outcome", "throttled")],
    )
    .unwrap_or(0.0);
    assert!(throttled > 10.0, "{m}");
    let e = daemon.execution(1).await;
    let requests = arrivals_of(&fake, 1).len() as u64;
    assert!(
        e["attempts"].as_u64().is_some_and(|a| a < requests),
        "throttled polls are not attempts: {e} vs {requests} requests"
    );
    assert!(e["last_error"].is_string() || e["status"] == "IN_PROGRESS");
    let during: Vec<f64> = fake
        .stats()
        .arrivals
        .iter()
        .map(|(t, _)| t.as_secs_f64())
        .filter(|t| *t > 5.0 && *t < 60.0)
        .collect();
    assert!(
        during.len() < 200,
        "the storm is not hammered: {} requests in 55 s",
        during.len()
    );

    eventually(
        Duration::from_secs(120),
        "every execution SUCCEEDED after the storm",
        || async { daemon.status().await["by_status"]["SUCCEEDED"] == 10 },
    )
    .await;
    let rate = sample(
        &daemon.metrics().await,
        "flowwatch_rate_limit_requests_per_second",
        &[],
    )
    .unwrap_or(0.0);
    assert!(
        rate > 5.0,
        "the rate recovers additively after the storm: {rate}"
    );
    daemon.stop().await;
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_hint_is_honoured() {
    let execution = with_fault(
        scripted("hinted", 1, &[(0, "IN_PROGRESS"), (20, "SUCCEEDED")]),
        0,
        Some(1),
        1.0,
        flowwatch_fake::Fault::Error {
            error_type: "ThrottlingException".into(),
            http_status: None,
            message: None,
            retry_after_ms: Some(6000),
        },
    );
    let (fake, _ws, daemon) = start(vec![execution], POLLING, true).await;
    assert_eq!(daemon.finish().await, Finish::AllDone { failed: false });
    let arrivals = arrivals_of(&fake, 1);
    assert!(
        arrivals[1] - arrivals[0] >= 6.0,
        "the second request waits for the hint: {arrivals:?}"
    );
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn quota_exceeded_slows_down_like_throttling() {
    let execution = with_fault(
        scripted("quota", 1, &[(0, "IN_PROGRESS"), (20, "SUCCEEDED")]),
        0,
        Some(10),
        1.0,
        api_error("ServiceQuotaExceededException"),
    );
    let (fake, _ws, daemon) = start(vec![execution], POLLING, false).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let m = daemon.metrics().await;
    assert!(
        sample(
            &m,
            "flowwatch_api_requests_total",
            &[("outcome", "quota_exceeded")]
        )
        .is_some_and(|n| n >= 1.0)
    );
    assert!(
        sample(&m, "flowwatch_rate_limit_requests_per_second", &[]).is_some_and(|r| r < 20.0),
        "{m}"
    );
    eventually(
        Duration::from_secs(60),
        "success after the quota window",
        || async { daemon.execution(1).await["status"] == "SUCCEEDED" },
    )
    .await;
    daemon.stop().await;
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_execution_that_appears_late_is_not_reported_missing() {
    let late = scripted("late", 1, &[(12, "IN_PROGRESS"), (25, "SUCCEEDED")]);
    let (fake, ws, daemon) = start(vec![late], POLLING, true).await;
    assert_eq!(daemon.finish().await, Finish::AllDone { failed: false });
    let to: Vec<String> = ws
        .events()
        .iter()
        .map(|e| e["data"]["to_status"].to_string())
        .collect();
    assert_eq!(to, vec!["\"IN_PROGRESS\"", "\"SUCCEEDED\""]);
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_missing_execution_becomes_not_found_after_the_grace_period() {
    let known = scripted("known", 1, &[(0, "SUCCEEDED")]);
    let fake = flowwatch_fake::FakeServer::start(scenario(vec![known]))
        .await
        .expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), POLLING, &scenario(vec![]));
    ws.write_watchlist(
        [
            ("known", execution_id(1).as_str()),
            ("ghost", execution_id(2).as_str()),
        ]
        .into_iter(),
    );
    let daemon = Daemon::start(&config, &fake, true).await;
    let started = tokio::time::Instant::now();
    assert_eq!(daemon.finish().await, Finish::AllDone { failed: true });
    assert!(
        started.elapsed() >= Duration::from_secs(20),
        "not before the 20 s grace"
    );
    let events = ws.events();
    let ghost = events
        .iter()
        .find(|e| e["data"]["flow_name"] == "ghost")
        .expect("a NOT_FOUND event");
    assert_eq!(ghost["data"]["from_status"], "UNKNOWN");
    assert_eq!(ghost["data"]["to_status"], "NOT_FOUND");
    assert_eq!(
        ghost["id"],
        format!("{INSTANCE}/ghost/{}/NOT_FOUND", execution_id(2))
    );
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn access_denied_fails_readiness_until_it_recovers() {
    let denied = with_fault(
        scripted("denied", 1, &[(0, "IN_PROGRESS"), (70, "SUCCEEDED")]),
        0,
        Some(50),
        1.0,
        api_error("AccessDeniedException"),
    );
    let (fake, _ws, daemon) = start(vec![denied], POLLING, false).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (code, body) = daemon.get("/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("denied access"), "{body}");
    assert_eq!(daemon.get("/livez").await.0, 200, "alive while not ready");
    let arrivals = arrivals_of(&fake, 1);
    let gaps: Vec<f64> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g >= 7.9),
        "denied polls run at max_interval: {gaps:?}"
    );
    let m = daemon.metrics().await;
    assert!(
        sample(
            &m,
            "flowwatch_api_requests_total",
            &[("outcome", "access_denied")]
        )
        .is_some_and(|n| n >= 2.0)
    );

    eventually(
        Duration::from_secs(60),
        "readiness after access is granted",
        || async { daemon.get("/readyz").await.0 == 200 },
    )
    .await;
    eventually(Duration::from_secs(60), "SUCCEEDED", || async {
        daemon.execution(1).await["status"] == "SUCCEEDED"
    })
    .await;
    daemon.stop().await;
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_validation_error_stops_polling_the_entry() {
    let invalid = with_fault(
        scripted("invalid", 1, &[(0, "IN_PROGRESS")]),
        0,
        None,
        1.0,
        api_error("ValidationException"),
    );
    let (fake, ws, daemon) = start(vec![invalid], POLLING, true).await;
    assert_eq!(daemon.finish().await, Finish::AllDone { failed: true });
    assert_eq!(arrivals_of(&fake, 1).len(), 1, "one call, then no more");
    let events = ws.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "flowwatch.execution.rejected");
    assert!(
        events[0]["data"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("ValidationException"))
    );
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_backoff_and_counted() {
    use flowwatch_fake::Fault;
    let faults = [
        api_error("InternalServerException"),
        api_error("ConflictException"),
        Fault::Hang,
        Fault::Reset,
        Fault::Body {
            http_status: 502,
            content_type: "text/html".into(),
            body: "<html>Bad Gateway</html>".into(),
        },
        Fault::Body {
            http_status: 200,
            content_type: "application/json".into(),
            body: "{\"flowExecution\": {\"instanceId".into(),
        },
        Fault::Body {
            http_status: 200,
            content_type: "application/json".into(),
            body: "{}".into(),
        },
    ];
    let executions = faults
        .into_iter()
        .enumerate()
        .map(|(i, fault)| {
            with_fault(
                scripted("flaky", i + 1, &[(0, "IN_PROGRESS"), (40, "SUCCEEDED")]),
                0,
                Some(25),
                1.0,
                fault,
            )
        })
        .collect();
    let (fake, ws, daemon) = start(executions, POLLING, false).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(daemon.get("/livez").await.0, 200);
    let m = daemon.metrics().await;
    for outcome in ["internal_error", "conflict", "timeout", "transport_error"] {
        assert!(
            sample(&m, "flowwatch_api_requests_total", &[("outcome", outcome)])
                .is_some_and(|n| n >= 1.0),
            "{outcome}:\n{m}"
        );
    }
    let hung = daemon.execution(3).await;
    assert!(
        hung["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out")),
        "{hung}"
    );
    let arrivals = arrivals_of(&fake, 1);
    let gaps: Vec<f64> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g >= 0.999),
        "never sooner than initial_interval: {gaps:?}"
    );
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    assert!(mean > 1.5, "the delays grow with each failure: {gaps:?}");
    eventually(
        Duration::from_secs(90),
        "every execution SUCCEEDED",
        || async { daemon.status().await["by_status"]["SUCCEEDED"] == 7 },
    )
    .await;
    assert_eq!(
        ws.events().len(),
        14,
        "IN_PROGRESS and SUCCEEDED once each; none for the errors"
    );
    daemon.stop().await;
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_unrecognised_status_is_kept_as_unknown_and_polling_continues() {
    let odd = scripted("odd", 1, &[(0, "PAUSED"), (10, "SUCCEEDED")]);
    let (fake, ws, daemon) = start(vec![odd], POLLING, false).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let e = daemon.execution(1).await;
    assert_eq!(e["status"], "UNKNOWN");
    assert_eq!(e["api_status"], "PAUSED");
    assert!(
        e["last_error"]
            .as_str()
            .is_some_and(|m| m.contains("PAUSED")),
        "{e}"
    );
    eventually(Duration::from_secs(30), "SUCCEEDED", || async {
        daemon.execution(1).await["status"] == "SUCCEEDED"
    })
    .await;
    let events = ws.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["from_status"], "UNKNOWN");
    daemon.stop().await;
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn reload_adds_and_removes_entries_and_keeps_the_state_of_the_rest() {
    let executions = vec![
        scripted("keep", 1, &[(0, "IN_PROGRESS")]),
        scripted("drop", 2, &[(0, "IN_PROGRESS")]),
        scripted("add", 3, &[(0, "IN_PROGRESS")]),
    ];
    let script = scenario(executions);
    let fake = flowwatch_fake::FakeServer::start(script.clone())
        .await
        .expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), POLLING, &script);
    ws.write_watchlist(
        [
            ("keep", execution_id(1).as_str()),
            ("drop", execution_id(2).as_str()),
        ]
        .into_iter(),
    );
    let daemon = Daemon::start(&config, &fake, false).await;
    eventually(Duration::from_secs(20), "both polled", || async {
        daemon.status().await["by_status"]["IN_PROGRESS"] == 2
    })
    .await;
    let kept_attempts = daemon.execution(1).await["attempts"].as_u64().unwrap_or(0);

    ws.write_watchlist(
        [
            ("keep", execution_id(1).as_str()),
            ("add", execution_id(3).as_str()),
        ]
        .into_iter(),
    );
    let (code, body) = http(daemon.addr, "POST", "/-/reload").await;
    assert_eq!(code, 200, "{body}");
    // The file watcher may have applied the change before this request did; either way the
    // reload succeeds and the result is the same.
    assert!(body.contains("\"result\":\"success\""), "{body}");
    let doc = daemon.status().await;
    assert_eq!(doc["watched"], 2);
    assert_eq!(daemon.execution(2).await, serde_json::Value::Null);
    let kept = daemon.execution(1).await;
    assert_eq!(
        kept["status"], "IN_PROGRESS",
        "kept entries keep their state"
    );
    assert!(kept["attempts"].as_u64().unwrap_or(0) >= kept_attempts);
    assert_eq!(
        status_of(&daemon.metrics().await, 2, "IN_PROGRESS"),
        None,
        "removed series are dropped"
    );
    eventually(
        Duration::from_secs(20),
        "the new entry is polled",
        || async { daemon.execution(3).await["status"] == "IN_PROGRESS" },
    )
    .await;

    // An invalid watchlist is refused with its location, and the old one keeps running.
    ws.write("watchlist.toml", "[[execution]]\ninstance_id = \"nope\"\n");
    let (code, body) = http(daemon.addr, "POST", "/-/reload").await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("watchlist.toml:2:15: invalid instance_id"),
        "{body}"
    );
    assert_eq!(daemon.status().await["watched"], 2);
    daemon.stop().await;
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_is_bounded_even_with_a_hung_request_in_flight() {
    let hung = with_fault(
        scripted("hung", 1, &[(0, "IN_PROGRESS")]),
        0,
        None,
        1.0,
        flowwatch_fake::Fault::Hang,
    );
    let polling = POLLING.replace("request_timeout = \"2s\"", "request_timeout = \"60s\"");
    let (fake, _ws, daemon) = start(vec![hung], &polling, false).await;
    eventually(
        Duration::from_secs(10),
        "the request is in flight",
        || async { daemon.status().await["in_flight"] == 1 },
    )
    .await;
    let started = tokio::time::Instant::now();
    assert_eq!(daemon.stop().await, Finish::Shutdown);
    let took = started.elapsed();
    assert!(took <= Duration::from_secs(11), "shutdown took {took:?}");
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn thirty_percent_server_errors_still_converge_to_the_right_statuses() {
    use flowwatch_fake::Fault;
    let executions: Vec<_> = (1..=20)
        .map(|n| {
            let terminal = if n % 5 == 0 { "FAILED" } else { "SUCCEEDED" };
            let fault = if n % 2 == 0 {
                api_error("InternalServerException")
            } else {
                Fault::Body {
                    http_status: 503,
                    content_type: "text/html".into(),
                    body: "<html>503 Service Unavailable</html>".into(),
                }
            };
            with_fault(
                scripted("flaky", n, &[(0, "IN_PROGRESS"), (20 + n as u64, terminal)]),
                0,
                None,
                0.3,
                fault,
            )
        })
        .collect();
    let (fake, ws, daemon) = start(executions, POLLING, false).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(daemon.get("/livez").await.0, 200);
    let m = daemon.metrics().await;
    assert!(
        sample(
            &m,
            "flowwatch_api_requests_total",
            &[("outcome", "internal_error")]
        )
        .is_some_and(|n| n >= 5.0),
        "{m}"
    );
    eventually(
        Duration::from_secs(120),
        "every execution terminal",
        || async {
            let doc = daemon.status().await;
            doc["by_status"]["SUCCEEDED"] == 16 && doc["by_status"]["FAILED"] == 4
        },
    )
    .await;
    assert_eq!(
        ws.events().len(),
        40,
        "IN_PROGRESS and the terminal status once each"
    );
    daemon.stop().await;
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_huge_failure_message_is_cut_before_it_is_stored_served_or_emitted() {
    let mut huge = scripted("f", 1, &[(0, "IN_PROGRESS"), (2, "FAILED")]);
    huge.timeline[1].message = Some(format!("{}END", "x".repeat(200_000)));
    let (fake, ws, daemon) = start(vec![huge], POLLING, false).await;
    eventually(Duration::from_secs(30), "FAILED", || async {
        daemon.execution(1).await["status"] == "FAILED"
    })
    .await;
    let served = daemon.execution(1).await["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let emitted = ws
        .events()
        .iter()
        .find(|e| e["data"]["to_status"] == "FAILED")
        .and_then(|e| e["data"]["message"].as_str().map(str::to_string))
        .unwrap_or_default();
    for text in [&served, &emitted] {
        assert_eq!(text.chars().count(), 4096, "cut to 4,096 characters");
        assert!(text.ends_with('…') && !text.contains("END"));
    }
    daemon.stop().await;
    fake.stop().await;
}

/// Plays `fault` on every poll for the first 10 s, then ordinary answers: waits until a poll is
/// cut off at the 1 MiB bound, and until ordinary answers come through again. Returns the calls
/// counted by outcome when the cut-off was seen.
async fn cut_off_by(fault: flowwatch_fake::Fault) -> (f64, Option<f64>) {
    let execution = with_fault(
        scripted("f", 1, &[(0, "IN_PROGRESS")]),
        0,
        Some(10),
        1.0,
        fault,
    );
    let (fake, _ws, daemon) = start(vec![execution], POLLING, false).await;
    eventually(Duration::from_secs(8), "a cut-off answer", || async {
        daemon.execution(1).await["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("larger than 1048576 bytes"))
    })
    .await;
    let metrics = daemon.metrics().await;
    let calls = |outcome: &str| {
        sample(
            &metrics,
            "flowwatch_api_requests_total",
            &[
                ("operation", "GetDataIntegrationFlowExecution"),
                ("outcome", outcome),
            ],
        )
    };
    let counted = (
        calls("internal_error").unwrap_or_default(),
        calls("timeout"),
    );
    eventually(
        Duration::from_secs(60),
        "ordinary answers again",
        || async { daemon.execution(1).await["status"] == "IN_PROGRESS" },
    )
    .await;
    daemon.stop().await;
    fake.stop().await;
    counted
}

#[tokio::test(start_paused = true)]
async fn an_answer_over_1_mib_is_cut_off_and_counted_as_an_internal_error() {
    let huge = flowwatch_fake::Fault::Body {
        http_status: 200,
        content_type: "application/json".to_string(),
        body: format!(
            "{{\"flowExecution\":{{\"message\":\"{}\"}}}}",
            "x".repeat(100 << 20)
        ),
    };
    let (internal, _) = cut_off_by(huge).await;
    assert!(internal >= 1.0, "counted as internal_error: {internal}");
}

#[tokio::test(start_paused = true)]
async fn an_endless_answer_is_read_to_1_mib_then_dropped_not_until_the_timeout() {
    let (_, timeouts) = cut_off_by(flowwatch_fake::Fault::Endless).await;
    assert_eq!(
        timeouts,
        Some(0.0),
        "stopped at the bound, not at the request timeout"
    );
}
