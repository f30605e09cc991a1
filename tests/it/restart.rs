//! Durable state across restarts: terminal executions are not polled again, a transition that
//! happened while flowwatch was down is emitted exactly once with its real origin, undelivered
//! events are delivered first, and the transition counters come back so `increase()` alerts keep
//! working. In-process daemons on tokio's paused clock, one state directory.

use std::time::Duration;

use flowwatch::ExecutionKey;
use flowwatch::Status;
use flowwatch::testing::Store;
use flowwatch_fake::FakeServer;
use flowwatch_testkit::*;

fn ids(ws: &Workspace) -> Vec<String> {
    ws.events()
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_terminal_executions_stay_quiet_and_a_missed_failure_is_emitted_once() {
    let script = scenario(vec![
        scripted("done", 1, &[(0, "IN_PROGRESS"), (5, "FAILED")]),
        scripted("running", 2, &[(0, "IN_PROGRESS"), (60, "FAILED")]),
    ]);
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), POLLING, &script);

    let first = Daemon::start(&config, &fake, false).await;
    eventually(
        Duration::from_secs(30),
        "FAILED and IN_PROGRESS",
        || async {
            first.execution(1).await["status"] == "FAILED"
                && first.execution(2).await["status"] == "IN_PROGRESS"
        },
    )
    .await;
    first.stop().await;
    assert_eq!(ids(&ws).len(), 3);

    // Down while execution 2 fails.
    tokio::time::sleep(Duration::from_secs(70)).await;
    let polls_of_done = arrivals_of(&fake, 1).len();

    let second = Daemon::start(&config, &fake, false).await;
    assert_eq!(
        second.execution(1).await["status"],
        "FAILED",
        "restored before any poll"
    );
    let m = second.metrics().await;
    assert_eq!(
        sample(
            &m,
            "flowwatch_transitions_total",
            &[("flow_name", "done"), ("to_status", "FAILED")]
        ),
        Some(1.0),
        "counters come back at their stored values:\n{m}"
    );
    assert!(
        m.contains("flowwatch_execution_failure_info{"),
        "a restored FAILED keeps its alert series"
    );
    eventually(Duration::from_secs(30), "the missed FAILED", || async {
        second.execution(2).await["status"] == "FAILED"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        arrivals_of(&fake, 1).len(),
        polls_of_done,
        "a terminal execution is not polled after a restart"
    );
    let m = second.metrics().await;
    assert_eq!(
        sample(
            &m,
            "flowwatch_transitions_total",
            &[("flow_name", "running"), ("to_status", "FAILED")]
        ),
        Some(1.0),
        "a transition after the restart counts on: increase() sees it"
    );
    second.stop().await;

    let events = ws.events();
    assert_eq!(events.len(), 4, "{:?}", ids(&ws));
    let mut unique = ids(&ws);
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "no duplicates");
    let missed = events
        .iter()
        .find(|e| {
            e["data"]["execution_id"] == execution_id(2).as_str()
                && e["data"]["to_status"] == "FAILED"
        })
        .expect("the missed FAILED");
    assert_eq!(
        missed["data"]["from_status"], "IN_PROGRESS",
        "exactly one IN_PROGRESS -> FAILED, not UNKNOWN -> FAILED"
    );
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn events_committed_but_not_delivered_are_delivered_first_at_start_up() {
    let script = scenario(vec![scripted("flow", 1, &[(0, "IN_PROGRESS")])]);
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), POLLING, &script);
    // A run that stopped between commit and delivery leaves this behind.
    let key = ExecutionKey::new(INSTANCE, "flow", execution_id(1)).expect("key");
    let stranded = serde_json::json!({"specversion": "1.0", "id": format!("{key}/IN_PROGRESS"), "type": "flowwatch.execution.transition"});
    let mut store = Store::open(ws.dir.path()).expect("store");
    let batch = store.batch().expect("batch");
    batch
        .transition(&key, Status::InProgress, None, &stranded.to_string())
        .expect("transition");
    batch.commit().expect("commit");
    drop(store);

    let daemon = Daemon::start(&config, &fake, false).await;
    eventually(Duration::from_secs(10), "the stranded event", || async {
        !ws.events().is_empty()
    })
    .await;
    assert_eq!(ws.events()[0], stranded);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        ws.events().len(),
        1,
        "the restored IN_PROGRESS is not emitted again"
    );
    daemon.stop().await;
    assert!(
        Store::open(ws.dir.path())
            .expect("store")
            .undelivered()
            .expect("outbox")
            == 0,
        "delivery marks it done"
    );
    fake.stop().await;
}
