//! Every way a GetDataIntegrationFlowExecution call can go wrong, through the real SDK over HTTP
//! against the fake server, and the class flowwatch gives it.

use std::time::Duration;

use flowwatch::ExecutionKey;
use flowwatch::testing::local_client;
use flowwatch::{ApiError, ApiStatus, FlowExecutions, Outcome};
use flowwatch_fake::{FakeServer, Fault};
use flowwatch_testkit::*;

fn key(n: usize) -> ExecutionKey {
    ExecutionKey::new(INSTANCE, "flow", execution_id(n)).expect("valid key")
}

async fn call_with(fault: Option<Fault>) -> Result<flowwatch::Observation, ApiError> {
    let mut execution = scripted("flow", 1, &[(0, "IN_PROGRESS")]);
    if let Some(fault) = fault {
        execution = with_fault(execution, 0, None, 1.0, fault);
    }
    let fake = FakeServer::start(scenario(vec![execution]))
        .await
        .expect("fake");
    let client = local_client(&fake.endpoint_url(), Duration::from_secs(2));
    let result = client.get(&key(1)).await;
    fake.stop().await;
    result
}

fn body(http_status: u16, content_type: &str, body: &str) -> Fault {
    Fault::Body {
        http_status,
        content_type: content_type.to_string(),
        body: body.to_string(),
    }
}

#[tokio::test]
async fn a_successful_call_returns_every_field() {
    let observation = call_with(None).await.expect("success");
    assert_eq!(observation.status, ApiStatus::InProgress);
    assert!(observation.start_time.is_some_and(|t| t > 1.7e9));
}

#[tokio::test]
async fn each_modelled_exception_maps_to_its_outcome() {
    for (error_type, outcome) in [
        ("ThrottlingException", Outcome::Throttled),
        ("ServiceQuotaExceededException", Outcome::QuotaExceeded),
        ("ResourceNotFoundException", Outcome::NotFound),
        ("AccessDeniedException", Outcome::AccessDenied),
        ("ValidationException", Outcome::Validation),
        ("ConflictException", Outcome::Conflict),
        ("InternalServerException", Outcome::InternalError),
    ] {
        let error = call_with(Some(api_error(error_type)))
            .await
            .expect_err(error_type);
        assert_eq!(error.outcome(), outcome, "{error_type}: {error}");
        assert!(error.to_string().contains(error_type), "{error}");
        assert!(
            error.to_string().contains("scripted"),
            "the server's message is kept: {error}"
        );
    }
}

#[tokio::test]
async fn the_retry_after_header_is_read_as_milliseconds() {
    let fault = Fault::Error {
        error_type: "ThrottlingException".into(),
        http_status: None,
        message: None,
        retry_after_ms: Some(2500),
    };
    let error = call_with(Some(fault)).await.expect_err("throttled");
    assert_eq!(error.retry_after(), Some(Duration::from_millis(2500)));
}

#[tokio::test]
async fn errors_without_a_type_header_are_classified_by_http_status() {
    let error = call_with(Some(body(429, "application/json", "{}")))
        .await
        .expect_err("429");
    assert_eq!(error.outcome(), Outcome::Throttled, "{error}");
    let error = call_with(Some(body(403, "application/json", "{\"message\":\"no\"}")))
        .await
        .expect_err("403");
    assert_eq!(error.outcome(), Outcome::AccessDenied, "{error}");
    let error = call_with(Some(body(
        503,
        "text/html",
        "<html><body>Service Unavailable</body></html>",
    )))
    .await
    .expect_err("html");
    assert_eq!(error.outcome(), Outcome::InternalError, "{error}");
}

#[tokio::test]
async fn the_error_type_can_come_from_the_body_with_a_namespace() {
    let fault = body(
        400,
        "application/json",
        r#"{"__type":"com.amazonaws.scn#ConflictException","message":"busy"}"#,
    );
    let error = call_with(Some(fault)).await.expect_err("conflict");
    assert_eq!(error.outcome(), Outcome::Conflict, "{error}");
}

#[tokio::test]
async fn malformed_success_bodies_are_invalid_responses_not_panics() {
    for bad in [
        "not json at all",
        "<html>oops</html>",
        r#"{"flowExecution": {"instanceId": "8850c54e"#,
        "{}",
        r#"{"somethingElse": 1}"#,
        r#"{"flowExecution": {}}"#,
        r#"{"flowExecution": {"instanceId":"8850c54e-e187-4fa7-89d4-6370f165174d","flowName":"other","executionId":"a1b2c3d4-0000-4000-8000-000000000001","status":"FAILED"}}"#,
        r#"{"flowExecution": {"instanceId":"8850c54e-e187-4fa7-89d4-6370f165174d","flowName":"flow","executionId":"a1b2c3d4-0000-4000-8000-000000000001"}}"#,
        r#"{"flowExecution": {"instanceId":"8850c54e-e187-4fa7-89d4-6370f165174d","flowName":"flow","executionId":"a1b2c3d4-0000-4000-8000-000000000001","status":"IN_PROGRESS","startTime":"yesterday"}}"#,
    ] {
        let error = call_with(Some(body(200, "application/json", bad)))
            .await
            .expect_err(bad);
        assert!(
            matches!(error, ApiError::InvalidResponse { .. }),
            "{bad}: {error:?}"
        );
        assert_eq!(error.outcome(), Outcome::InternalError);
    }
}

#[tokio::test]
async fn an_unknown_status_string_is_kept_for_logging() {
    let body_text = r#"{"flowExecution": {"instanceId":"8850c54e-e187-4fa7-89d4-6370f165174d","flowName":"flow","executionId":"a1b2c3d4-0000-4000-8000-000000000001","status":"CANCELLED"}}"#;
    let observation = call_with(Some(body(200, "application/json", body_text)))
        .await
        .expect("parsed");
    assert_eq!(
        observation.status,
        ApiStatus::Unrecognised("CANCELLED".into())
    );
}

#[tokio::test]
async fn a_dropped_connection_is_a_transport_error() {
    let error = call_with(Some(Fault::Reset)).await.expect_err("reset");
    assert_eq!(error.outcome(), Outcome::TransportError, "{error:?}");
}

#[tokio::test]
async fn a_refused_connection_is_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let client = local_client(&format!("http://{addr}"), Duration::from_secs(2));
    let error = client.get(&key(1)).await.expect_err("refused");
    assert_eq!(error.outcome(), Outcome::TransportError, "{error:?}");
}

#[tokio::test(start_paused = true)]
async fn a_hung_server_is_a_timeout() {
    let started = tokio::time::Instant::now();
    let error = call_with(Some(Fault::Hang)).await.expect_err("hang");
    assert_eq!(error, ApiError::Timeout);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[tokio::test]
async fn a_request_that_cannot_be_built_is_a_local_error_not_the_api_s_verdict() {
    let fake = FakeServer::start(scenario(vec![scripted("flow", 1, &[(0, "IN_PROGRESS")])]))
        .await
        .expect("fake");
    let client = flowwatch::testing::local_client_in_region(
        &fake.endpoint_url(),
        Duration::from_secs(2),
        "us-east-1 ",
    );
    let error = client.get(&key(1)).await.expect_err("no request");
    assert!(matches!(error, ApiError::Local { .. }), "{error:?}");
    assert_eq!(error.outcome(), Outcome::LocalError);
    assert_eq!(error.outcome().metric_label(), "local_error");
    assert_eq!(fake.counts().0, 0, "the request never left the process");
    fake.stop().await;
}

/// The fake with one run of daily-orders that succeeds `at` seconds in, and a workspace whose
/// config points at it.
async fn one_run_that_succeeds_at(at: u64) -> (FakeServer, Workspace, std::path::PathBuf) {
    let scenario = scenario(vec![scripted(
        "daily-orders",
        1,
        &[(0, "IN_PROGRESS"), (at, "SUCCEEDED")],
    )]);
    let fake = FakeServer::start(scenario.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), POLLING, &scenario);
    (fake, ws, config)
}

/// The `to_status` of every event written, in order.
fn to_statuses(ws: &Workspace) -> Vec<String> {
    ws.events()
        .iter()
        .map(|e| e["data"]["to_status"].as_str().unwrap_or("").to_string())
        .collect()
}

/// An execution's store row as an earlier flowwatch left it: rejected for a request its SDK
/// could not build.
fn reject_as_an_earlier_version_did(state: &std::path::Path, n: usize) {
    drop(flowwatch::testing::Store::open(state).expect("a new state database"));
    rusqlite::Connection::open(state.join("flowwatch.db"))
        .and_then(|c| {
            c.execute(
                "INSERT INTO executions (instance_id, flow_name, execution_id, status, observation, rejected)
                 VALUES (?1, 'daily-orders', ?2, 'UNKNOWN', NULL, ?3)",
                [
                    INSTANCE.to_string(),
                    execution_id(n),
                    "failed to construct request: GetDataIntegrationFlowExecutionEndpointParamsInterceptor \
                     read_before_execution interceptor encountered an error"
                        .to_string(),
                ],
            )
        })
        .expect("the old row");
}

#[tokio::test(start_paused = true)]
async fn an_unbuildable_request_is_retried_and_the_execution_ends_once_the_region_is_fixed() {
    let (fake, ws, config) = one_run_that_succeeds_at(30).await;
    let bad_region = flowwatch::testing::local_client_in_region(
        &fake.endpoint_url(),
        Duration::from_secs(2),
        "us-east-1 ",
    );
    let daemon = Daemon::start_with(&config, bad_region, false).await;
    let local_errors = |m: &str| {
        sample(
            m,
            "flowwatch_api_requests_total",
            &[
                ("operation", "GetDataIntegrationFlowExecution"),
                ("outcome", "local_error"),
            ],
        )
        .unwrap_or(0.0)
    };
    // POLLING's max_interval is 8s: three tries within a minute, never rejected.
    eventually(Duration::from_secs(60), "three local errors", || async {
        local_errors(&daemon.metrics().await) >= 3.0
    })
    .await;
    let metrics = daemon.metrics().await;
    let validation = sample(
        &metrics,
        "flowwatch_api_requests_total",
        &[
            ("operation", "GetDataIntegrationFlowExecution"),
            ("outcome", "validation"),
        ],
    );
    assert_eq!(validation, Some(0.0), "{metrics}");
    let entry = daemon.execution(1).await;
    assert_eq!(entry["rejected"], serde_json::Value::Null, "{entry}");
    assert_eq!(entry["last_outcome"], "local_error", "{entry}");
    assert!(entry["next_poll"].is_string(), "still scheduled: {entry}");
    let (code, body) = daemon.get("/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no request could be built"), "{body}");
    assert_eq!(fake.counts().0, 0);
    daemon.stop().await;
    assert!(
        ws.events().is_empty(),
        "no rejection event: {:?}",
        ws.events()
    );

    // The region fixed, the daemon restarted on the same state: the execution is followed to
    // its end.
    let daemon = Daemon::start(&config, &fake, true).await;
    assert_eq!(
        daemon.finish().await,
        flowwatch::Finish::AllDone { failed: false }
    );
    let to = to_statuses(&ws);
    assert_eq!(to.last().map(String::as_str), Some("SUCCEEDED"), "{to:?}");
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_execution_an_earlier_version_rejected_for_a_local_failure_is_polled_again() {
    let (fake, ws, config) = one_run_that_succeeds_at(20).await;
    reject_as_an_earlier_version_did(ws.dir.path(), 1);
    let daemon = Daemon::start(&config, &fake, true).await;
    assert_eq!(
        daemon.finish().await,
        flowwatch::Finish::AllDone { failed: false }
    );
    assert!(fake.counts().0 > 0, "polled again");
    let to = to_statuses(&ws);
    assert!(to.iter().any(|s| s == "SUCCEEDED"), "{to:?}");
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn times_outside_2000_to_a_day_ahead_are_left_out_and_the_end_still_counts() {
    let hostile = format!(
        r#"{{"flowExecution":{{"instanceId":"{INSTANCE}","flowName":"daily-orders","executionId":"{}","status":"SUCCEEDED","startTime":-1e18,"endTime":1e300}}}}"#,
        execution_id(1)
    );
    let year_9999 = format!(
        r#"{{"flowExecution":{{"instanceId":"{INSTANCE}","flowName":"daily-orders","executionId":"{}","status":"FAILED","startTime":1700000000,"endTime":253402300799}}}}"#,
        execution_id(2)
    );
    let scenario = scenario(vec![
        with_fault(
            scripted("daily-orders", 1, &[(0, "IN_PROGRESS")]),
            0,
            None,
            1.0,
            body(200, "application/json", &hostile),
        ),
        with_fault(
            scripted("daily-orders", 2, &[(0, "IN_PROGRESS")]),
            0,
            None,
            1.0,
            body(200, "application/json", &year_9999),
        ),
    ]);
    let fake = FakeServer::start(scenario.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), POLLING, &scenario);
    let daemon = Daemon::start(&config, &fake, false).await;
    eventually(Duration::from_secs(30), "both ends", || async {
        ws.events().len() == 2
    })
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    for event in ws.events() {
        let data = &event["data"];
        assert!(
            matches!(data["to_status"].as_str(), Some("SUCCEEDED" | "FAILED")),
            "the transition is applied: {event}"
        );
        assert!(data["end_time"].is_null(), "{event}");
    }
    let succeeded = ws.events();
    let succeeded = succeeded
        .iter()
        .find(|e| e["data"]["to_status"] == "SUCCEEDED")
        .expect("SUCCEEDED");
    assert!(succeeded["data"]["start_time"].is_null(), "{succeeded}");
    let metrics = daemon.metrics().await;
    let last_success = sample(
        &metrics,
        "flowwatch_flow_last_success_timestamp_seconds",
        &[("flow_name", "daily-orders")],
    )
    .expect("the flow's last success");
    assert!(
        (now - 3600.0..=now + 3600.0).contains(&last_success),
        "the success counts, at when flowwatch saw it: {last_success}\n{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "flowwatch_flow_duration_seconds_count",
            &[("flow_name", "daily-orders")]
        )
        .unwrap_or(0.0),
        0.0,
        "no duration from times not believed:\n{metrics}"
    );
    for line in metrics.lines().filter(|l| l.contains("_time_seconds{")) {
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(value < now + 86_400.0 && value >= 0.0, "{line}");
    }
    daemon.stop().await;
    fake.stop().await;
}

#[tokio::test]
async fn the_fake_names_who_signed_each_call_and_throttles_each_signer_on_its_own() {
    let mut script = scenario(vec![scripted("flow", 1, &[(0, "IN_PROGRESS")])]);
    script.signer_limits.push(flowwatch_fake::SignerLimit {
        access_key: "AKIDTHROTTLED".into(),
        region: "eu-central-1".into(),
        requests_per_second: 0.001,
        burst: 1.0,
    });
    let fake = FakeServer::start(script).await.expect("fake");
    let client = |key: &str, region: &str| {
        flowwatch::testing::local_client_as(
            &fake.endpoint_url(),
            Duration::from_secs(2),
            key,
            region,
        )
    };
    let throttled = client("AKIDTHROTTLED", "eu-central-1");
    let same_key_elsewhere = client("AKIDTHROTTLED", "us-east-1");
    let other = client("AKIDOTHER", "eu-central-1");
    assert!(throttled.get(&key(1)).await.is_ok(), "its one token");
    for _ in 0..3 {
        let error = throttled.get(&key(1)).await.expect_err("its limit");
        assert_eq!(error.outcome(), Outcome::Throttled);
        assert!(same_key_elsewhere.get(&key(1)).await.is_ok());
        assert!(other.get(&key(1)).await.is_ok());
    }
    let stats = fake.stats();
    let signer = |key: &str, region: &str| flowwatch_fake::Signer {
        access_key: key.into(),
        region: region.into(),
    };
    assert_eq!(stats.by_signer[&signer("AKIDTHROTTLED", "eu-central-1")], 4);
    assert_eq!(stats.by_signer[&signer("AKIDTHROTTLED", "us-east-1")], 3);
    assert_eq!(stats.by_signer[&signer("AKIDOTHER", "eu-central-1")], 3);
    assert_eq!(
        stats.throttled_by_signer.keys().collect::<Vec<_>>(),
        [&signer("AKIDTHROTTLED", "eu-central-1")]
    );
    assert_eq!(
        stats.throttled_by_signer[&signer("AKIDTHROTTLED", "eu-central-1")],
        3
    );
    assert_eq!(stats.signers_of_instance[INSTANCE].len(), 3);
    fake.stop().await;
}
