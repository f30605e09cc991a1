//! Push end to end, against an independent EventBridge and SQS (moto's server): the fake
//! Supply Chain API publishes each scripted status change with PutEvents, an EventBridge rule
//! on the default bus delivers it to a queue, and flowwatch reads the queue through
//! aws-sdk-sqs. What the tests prove: pushed changes are applied at once and polling only
//! reconciles; repeats, late and foreign events and garbage are each handled and counted;
//! `[[flow]]` executions join from events; lost events are found by reconciling; a queue that
//! cannot be reached hands the pace back to polling until it can; and a message received again
//! after a restart changes nothing.

use std::time::Duration;

use flowwatch_fake::{EventPublishing, FakeServer, Scenario};
use flowwatch_testkit::moto::{Moto, PushQueues, status_event};
use flowwatch_testkit::{Daemon, Workspace, eventually, execution_id, sample, scenario, scripted};
use serde_json::Value;

const POLLING: &str = "[polling]\ninitial_interval = \"1s\"\nmax_interval = \"2s\"\nrequest_timeout = \"2s\"\nretain_terminal = \"1m\"\n";

/// The `[push]` table of a queue on `moto`.
fn push_table(moto: &Moto, queue: &PushQueues, reconcile: &str) -> String {
    format!(
        "[push]\nqueue_url = \"{}\"\nendpoint_url = \"{}\"\nreconcile_interval = \"{reconcile}\"\n",
        queue.url, moto.endpoint
    )
}

/// Transition events to a terminal status.
fn terminal_events(ws: &Workspace) -> Vec<Value> {
    ws.events()
        .into_iter()
        .filter(|e| {
            e["type"] == "flowwatch.execution.transition"
                && matches!(
                    e["data"]["to_status"].as_str(),
                    Some("SUCCEEDED" | "FAILED")
                )
        })
        .collect()
}

fn pushed(metrics: &str, outcome: &str) -> f64 {
    sample(
        metrics,
        "flowwatch_push_messages_total",
        &[("outcome", outcome)],
    )
    .unwrap_or(-1.0)
}

async fn start(
    ws: &Workspace,
    s: &Scenario,
    moto: &Moto,
    queue: &PushQueues,
    reconcile: &str,
    extra: &str,
) -> (FakeServer, Daemon) {
    let fake = FakeServer::start(s.clone()).await.expect("fake starts");
    let config = ws.config(
        &fake.endpoint_url(),
        &format!("{POLLING}{}{extra}", push_table(moto, queue, reconcile)),
        s,
    );
    let daemon = Daemon::start(&config, &fake, false).await;
    (fake, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_changes_are_applied_at_once_with_their_details_and_polling_only_reconciles() {
    let ws = Workspace::new();
    let moto = Moto::start(&ws.path("")).await;
    let queue = moto.push_queues("events", 5, 30).await;
    let mut s = scenario(vec![
        scripted("orders", 1, &[(0, "IN_PROGRESS"), (8, "SUCCEEDED")]),
        scripted("orders", 2, &[(0, "IN_PROGRESS"), (10, "FAILED")]),
    ]);
    s.executions[1].diagnostic_reports_root_s3_uri = Some("s3://diagnostics/run-2/".into());
    let (fake, daemon) = start(&ws, &s, &moto, &queue, "10m", "").await;
    eventually(Duration::from_secs(10), "push is healthy", || async {
        sample(&daemon.metrics().await, "flowwatch_push_healthy", &[]) == Some(1.0)
    })
    .await;
    let gets_before = fake.stats().requests;
    let publishing = fake.publish_events(EventPublishing::to(&moto.endpoint));
    eventually(Duration::from_secs(20), "both runs end", || async {
        terminal_events(&ws).len() == 2
    })
    .await;
    let events = terminal_events(&ws);
    for event in &events {
        assert_eq!(event["data"]["observed_via"], "push", "{event}");
    }
    let failed = events
        .iter()
        .find(|e| e["data"]["to_status"] == "FAILED")
        .expect("FAILED");
    assert_eq!(failed["data"]["message"], "execution 2 failed");
    // The event lacks the diagnostics URI: the one GET of fetch_details filled it in.
    assert_eq!(
        failed["data"]["diagnostic_reports_root_s3_uri"],
        "s3://diagnostics/run-2/"
    );

    let metrics = daemon.metrics().await;
    // Four events: two terminal changes, and the two starts, which polls may have seen first.
    let applied = pushed(&metrics, "applied");
    assert!(applied >= 2.0, "{metrics}");
    assert_eq!(applied + pushed(&metrics, "duplicate"), 4.0, "{metrics}");
    // Event times have whole seconds: within 2 s of them is within 1 s of the change.
    let applied_within = |le| {
        sample(
            &metrics,
            "flowwatch_push_delay_seconds_bucket",
            &[("le", le)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(applied_within("2"), applied, "{metrics}");
    let ok = |operation| {
        sample(
            &metrics,
            "flowwatch_api_requests_total",
            &[("operation", operation), ("outcome", "success")],
        )
        .unwrap_or(0.0)
    };
    assert!(
        ok("ReceiveMessage") >= 1.0 && ok("DeleteMessageBatch") >= 1.0,
        "{metrics}"
    );
    // Once push works, polls wait for the reconcile interval (10m): only the two GETs of
    // fetch_details follow (and a poll in flight when push turned healthy, at most).
    let gets = fake.stats().requests - gets_before;
    assert!(
        gets <= 3,
        "{gets} GETs in 10 s: polling at its normal pace makes about 10"
    );
    let status = daemon.status().await;
    assert_eq!(status["push"]["healthy"], true, "{status}");
    assert_eq!(daemon.execution(2).await["observed_via"], "push");
    eventually(
        Duration::from_secs(10),
        "every message is deleted",
        || async { moto.messages_in(&queue.url).await == 0 },
    )
    .await;
    daemon.stop().await;
    let published = publishing.await.expect("publisher");
    assert_eq!(published.sent, 4, "{published:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_late_foreign_and_unreadable_messages_are_each_counted_and_only_garbage_stays() {
    let ws = Workspace::new();
    let moto = Moto::start(&ws.path("")).await;
    // Garbage goes to the dead-letter queue after 2 receives, each 1 s apart.
    let queue = moto.push_queues("events", 2, 1).await;
    let s = scenario(vec![scripted(
        "orders",
        1,
        &[(0, "IN_PROGRESS"), (600, "SUCCEEDED")],
    )]);
    let (_fake, daemon) = start(&ws, &s, &moto, &queue, "10m", "").await;
    let id = execution_id(1);
    let done = status_event("orders", &id, "SUCCEEDED", "2026-01-01T00:05:00Z");
    moto.send(&queue.url, &done).await;
    eventually(
        Duration::from_secs(10),
        "the pushed SUCCEEDED is applied",
        || async { terminal_events(&ws).len() == 1 },
    )
    .await;
    moto.send(&queue.url, &done).await;
    moto.send(&queue.url, &status_event("orders", &id, "IN_PROGRESS", ""))
        .await;
    moto.send(
        &queue.url,
        &status_event(
            "returns",
            &execution_id(9),
            "FAILED",
            "2026-01-01T00:05:00Z",
        ),
    )
    .await;
    moto.send(&queue.url, "{\"not\": \"an event\"}").await;
    eventually(
        Duration::from_secs(15),
        "every outcome is counted",
        || async {
            let m = daemon.metrics().await;
            pushed(&m, "duplicate") == 1.0
                && pushed(&m, "stale") == 1.0
                && pushed(&m, "unwatched") == 1.0
                && pushed(&m, "malformed") >= 1.0
        },
    )
    .await;
    assert_eq!(
        terminal_events(&ws).len(),
        1,
        "one event for the execution, whatever came again"
    );
    let dead = {
        let mut dead = Vec::new();
        for _ in 0..10 {
            dead.extend(moto.take(&queue.dead_letter_url, 1).await);
            if !dead.is_empty() {
                break;
            }
        }
        dead
    };
    assert_eq!(
        dead,
        ["{\"not\": \"an event\"}"],
        "only the garbage reaches the dead-letter queue"
    );
    let metrics = daemon.metrics().await;
    assert_eq!(pushed(&metrics, "applied"), 1.0, "{metrics}");
    assert_eq!(moto.messages_in(&queue.url).await, 0);
    daemon.stop().await;
}
