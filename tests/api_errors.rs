//! Every way a GetDataIntegrationFlowExecution call can go wrong, through the real SDK over HTTP
//! against the fake server, and the class flowwatch gives it.

use std::time::Duration;

use flowwatch::ExecutionKey;
use flowwatch::{ApiError, ApiStatus, FlowExecutions, Outcome, static_client};
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
    let client = static_client(&fake.endpoint_url(), Duration::from_secs(2));
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
    let client = static_client(&format!("http://{addr}"), Duration::from_secs(2));
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
