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

/// Waits up to `seconds` for `flowwatch_push_healthy` 1.
async fn push_healthy(daemon: &Daemon, seconds: u64) {
    eventually(Duration::from_secs(seconds), "push is healthy", || async {
        sample(&daemon.metrics().await, "flowwatch_push_healthy", &[]) == Some(1.0)
    })
    .await;
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
    push_healthy(&daemon, 10).await;
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
    // fetch_details follow, and each execution's first poll if it was not made yet (adaptive
    // polling may hold one back while the other scouts its flow).
    let gets = fake.stats().requests - gets_before;
    assert!(
        gets <= 4,
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
    // Without the GET for details a pushed end is taken at its word, which this test counts on:
    // the API still says IN_PROGRESS.
    let (_fake, daemon) = start(&ws, &s, &moto, &queue, "10m", "fetch_details = false\n").await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_end_settles_nothing_and_the_real_one_is_still_seen() {
    let ws = Workspace::new();
    let moto = Moto::start(&ws.path("")).await;
    let queue = moto.push_queues("events", 5, 30).await;
    let s = scenario(vec![scripted(
        "orders",
        1,
        &[(0, "IN_PROGRESS"), (8, "SUCCEEDED")],
    )]);
    let (fake, daemon) = start(&ws, &s, &moto, &queue, "10s", "").await;
    push_healthy(&daemon, 20).await;
    let id = execution_id(1);
    // Whoever may send to the queue writes a FAILED the API does not know of...
    let forged = status_event("orders", &id, "FAILED", "2026-01-01T00:05:00Z");
    moto.send(&queue.url, &forged).await;
    // ...and one from another account, and one from another region.
    let other_account =
        forged.replace(r#""account":"123456789012""#, r#""account":"666666666666""#);
    assert_ne!(other_account, forged);
    moto.send(&queue.url, &other_account).await;
    let other_region = forged.replace("arn:aws:scn:us-east-1:", "arn:aws:scn:eu-west-1:");
    assert_ne!(other_region, forged);
    moto.send(&queue.url, &other_region).await;
    eventually(
        Duration::from_secs(15),
        "each forgery is counted",
        || async {
            let m = daemon.metrics().await;
            pushed(&m, "contradicted") == 1.0 && pushed(&m, "unwatched") == 2.0
        },
    )
    .await;
    let entry = daemon.execution(1).await;
    assert_eq!(entry["status"], "IN_PROGRESS", "{entry}");
    assert!(entry["next_poll"].is_string(), "still polled: {entry}");
    assert!(terminal_events(&ws).is_empty(), "{:?}", ws.events());
    // The real end (8 s in) is found by the next poll: the forgery settled nothing.
    eventually(Duration::from_secs(30), "the real SUCCEEDED", || async {
        !terminal_events(&ws).is_empty()
    })
    .await;
    let ends: Vec<String> = terminal_events(&ws)
        .iter()
        .map(|e| e["data"]["to_status"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(ends, ["SUCCEEDED"]);
    let metrics = daemon.metrics().await;
    assert_eq!(pushed(&metrics, "applied"), 0.0, "{metrics}");
    assert_eq!(moto.messages_in(&queue.url).await, 0, "each was deleted");
    daemon.stop().await;
    fake.stop().await;
}

/// Transition events of execution `n`, as `(to_status, observed_via)`.
fn transitions_of(ws: &Workspace, n: usize) -> Vec<(String, String)> {
    let id = execution_id(n);
    ws.events()
        .into_iter()
        .filter(|e| {
            e["type"] == "flowwatch.execution.transition"
                && e["data"]["execution_id"] == id.as_str()
        })
        .map(|e| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                text(&e["data"]["to_status"]),
                text(&e["data"]["observed_via"]),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_of_a_watched_flow_join_from_their_events_without_a_list_call() {
    let ws = Workspace::new();
    let moto = Moto::start(&ws.path("")).await;
    let queue = moto.push_queues("events", 5, 30).await;
    // The run starts after the first discovery round; the next one is an hour away.
    let s = scenario(vec![scripted(
        "orders",
        7,
        &[(3, "IN_PROGRESS"), (6, "FAILED")],
    )]);
    let fake = FakeServer::start(s.clone()).await.expect("fake starts");
    let config = ws.config(
        &fake.endpoint_url(),
        &format!(
            "{POLLING}[discovery]\ninterval = \"1h\"\n{}",
            push_table(&moto, &queue, "10m")
        ),
        &s,
    );
    ws.write(
        "watchlist.toml",
        &format!("[[flow]]\ninstance_id = \"{}\"\nflow_name = \"orders\"\nlabels = {{ team = \"supply\" }}\n", flowwatch_testkit::INSTANCE),
    );
    let daemon = Daemon::start(&config, &fake, false).await;
    push_healthy(&daemon, 10).await;
    let lists = fake.stats().lists();
    let publishing = fake.publish_events(EventPublishing::to(&moto.endpoint));
    eventually(
        Duration::from_secs(15),
        "the pushed run joins and ends",
        || async { transitions_of(&ws, 7).len() == 2 },
    )
    .await;
    assert_eq!(
        transitions_of(&ws, 7),
        [
            ("IN_PROGRESS".to_string(), "push".to_string()),
            ("FAILED".to_string(), "push".to_string())
        ]
    );
    assert_eq!(fake.stats().lists(), lists, "no List call was needed");
    let joined = daemon.execution(7).await;
    assert_eq!(joined["origin"], "discovered", "{joined}");
    assert_eq!(joined["labels"]["team"], "supply", "{joined}");
    let metrics = daemon.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "flowwatch_discovered_executions_total",
            &[("flow_name", "orders")]
        ),
        Some(1.0)
    );
    daemon.stop().await;
    publishing.await.expect("publisher");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_event_is_lost_is_found_by_reconciling_within_the_interval() {
    let ws = Workspace::new();
    let moto = Moto::start(&ws.path("")).await;
    let queue = moto.push_queues("events", 5, 30).await;
    let s = scenario(vec![scripted(
        "orders",
        1,
        &[(0, "IN_PROGRESS"), (2, "SUCCEEDED")],
    )]);
    let (fake, daemon) = start(&ws, &s, &moto, &queue, "10s", "").await;
    push_healthy(&daemon, 10).await;
    let mut lossy = EventPublishing::to(&moto.endpoint);
    lossy.drop = 1.0;
    let publishing = fake.publish_events(lossy);
    let healthy_at = tokio::time::Instant::now();
    eventually(
        Duration::from_secs(20),
        "the SUCCEEDED no event told",
        || async { terminal_events(&ws).len() == 1 },
    )
    .await;
    let took = healthy_at.elapsed();
    assert!(
        took <= Duration::from_secs(12),
        "found after {took:?}: the reconcile interval is 10 s (+10 % jitter)"
    );
    assert_eq!(
        transitions_of(&ws, 1).last().map(|(_, via)| via.as_str()),
        Some("poll")
    );
    assert_eq!(publishing.await.expect("publisher").dropped, 2);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_queue_leaves_polling_at_its_pace_and_push_recovers_by_itself() {
    let ws = Workspace::new();
    // Nothing listens on the queue's endpoint yet.
    let port = flowwatch_testkit::free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let queue = PushQueues {
        url: format!("{endpoint}/123456789012/events"),
        dead_letter_url: String::new(),
    };
    let s = scenario(vec![
        scripted("orders", 1, &[(0, "IN_PROGRESS"), (3, "SUCCEEDED")]),
        scripted("orders", 2, &[(0, "IN_PROGRESS"), (600, "SUCCEEDED")]),
    ]);
    let fake = FakeServer::start(s.clone()).await.expect("fake starts");
    let push = format!(
        "[push]\nqueue_url = \"{}\"\nendpoint_url = \"{endpoint}\"\nreconcile_interval = \"10m\"\n",
        queue.url
    );
    let config = ws.config(&fake.endpoint_url(), &format!("{POLLING}{push}"), &s);
    let daemon = Daemon::start(&config, &fake, false).await;
    eventually(
        Duration::from_secs(10),
        "polling finds the end at its own pace",
        || async { terminal_events(&ws).len() == 1 },
    )
    .await;
    let metrics = daemon.metrics().await;
    assert_eq!(sample(&metrics, "flowwatch_push_healthy", &[]), Some(0.0));
    assert!(
        sample(
            &metrics,
            "flowwatch_api_requests_total",
            &[
                ("operation", "ReceiveMessage"),
                ("outcome", "transport_error")
            ]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        daemon.get("/readyz").await.0,
        200,
        "polling covers everything: still ready"
    );
    let status = daemon.status().await;
    assert_eq!(status["push"]["healthy"], false, "{status}");
    assert!(
        status["push"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("transport")),
        "{status}"
    );

    let moto = Moto::start_on(&ws.path(""), port).await;
    moto.push_queues("events", 5, 30).await;
    // Receiving retries with a pause of at most 60 s; it has failed for a few seconds here.
    push_healthy(&daemon, 40).await;
    // Polls wait for the reconcile interval again.
    let gets = fake.stats().requests;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        fake.stats().requests - gets <= 1,
        "polling slowed down to reconcile"
    );
    assert_eq!(daemon.status().await["push"]["healthy"], true);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_received_again_after_a_restart_changes_nothing() {
    let ws = Workspace::new();
    let moto = Moto::start(&ws.path("")).await;
    let queue = moto.push_queues("events", 5, 2).await;
    let s = scenario(vec![scripted(
        "orders",
        1,
        &[(0, "IN_PROGRESS"), (600, "SUCCEEDED")],
    )]);
    let failed = status_event("orders", &execution_id(1), "FAILED", "2026-01-01T00:05:00Z");
    let (fake, daemon) = start(&ws, &s, &moto, &queue, "10m", "fetch_details = false\n").await;
    moto.send(&queue.url, &failed).await;
    eventually(
        Duration::from_secs(10),
        "the pushed FAILED is committed",
        || async { terminal_events(&ws).len() == 1 },
    )
    .await;
    daemon.stop().await;
    // As if the daemon had crashed between the commit and the delete: the message comes again.
    // (A long poll cut short at shutdown may still take it, for the queue's visibility timeout
    // of 2 s here: it comes back after that.)
    moto.send(&queue.url, &failed).await;
    let config = ws.path("flowwatch.toml");
    let daemon = Daemon::start(&config, &fake, false).await;
    eventually(
        Duration::from_secs(10),
        "the repeat is received",
        || async { pushed(&daemon.metrics().await, "duplicate") == 1.0 },
    )
    .await;
    assert_eq!(terminal_events(&ws).len(), 1, "no second event");
    let metrics = daemon.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "flowwatch_transitions_total",
            &[("flow_name", "orders"), ("to_status", "FAILED")]
        ),
        Some(1.0)
    );
    eventually(Duration::from_secs(10), "the repeat is deleted", || async {
        moto.messages_in(&queue.url).await == 0
    })
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_and_reordered_events_give_one_event_per_change_and_the_right_end() {
    repeated_and_reordered("fetch_details = false\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_of_an_end_waiting_for_its_get_are_each_counted() {
    let ws = Workspace::new();
    let moto = Moto::start(&ws.path("")).await;
    let queue = moto.push_queues("events", 5, 30).await;
    // Past the first answer every GET hangs until request_timeout (2 s): a pushed end waits that
    // long for its details.
    let s = scenario(vec![flowwatch_testkit::with_fault(
        scripted("orders", 1, &[(0, "IN_PROGRESS")]),
        3,
        None,
        1.0,
        flowwatch_fake::Fault::Hang,
    )]);
    let (fake, daemon) = start(&ws, &s, &moto, &queue, "10m", "").await;
    push_healthy(&daemon, 20).await;
    eventually(Duration::from_secs(10), "the first answer", || async {
        daemon.execution(1).await["status"] == "IN_PROGRESS"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let done = status_event(
        "orders",
        &execution_id(1),
        "SUCCEEDED",
        "2026-01-01T00:05:00Z",
    );
    for _ in 0..5 {
        moto.send(&queue.url, &done).await;
    }
    eventually(Duration::from_secs(20), "five messages counted", || async {
        let m = daemon.metrics().await;
        pushed(&m, "applied") + pushed(&m, "duplicate") == 5.0
    })
    .await;
    let m = daemon.metrics().await;
    assert_eq!(pushed(&m, "applied"), 1.0, "{m}");
    eventually(
        Duration::from_secs(10),
        "the end committed and every message deleted",
        || async { !terminal_events(&ws).is_empty() && moto.messages_in(&queue.url).await == 0 },
    )
    .await;
    assert_eq!(terminal_events(&ws).len(), 1);
    daemon.stop().await;
    fake.stop().await;
}

/// Eight short runs whose events come half of them twice and up to 3 s late: every message is
/// counted once, and each run has one end event, the right one.
async fn repeated_and_reordered(push_extra: &str) {
    let ws = Workspace::new();
    let moto = Moto::start(&ws.path("")).await;
    let queue = moto.push_queues("events", 5, 30).await;
    // Short runs, so a run's end often overtakes its start on the way.
    let s = scenario(
        (1..=8)
            .map(|n| {
                let end = if n % 3 == 0 { "FAILED" } else { "SUCCEEDED" };
                scripted("orders", n, &[(1, "IN_PROGRESS"), (2, end)])
            })
            .collect(),
    );
    let (fake, daemon) = start(&ws, &s, &moto, &queue, "10m", push_extra).await;
    push_healthy(&daemon, 10).await;
    let mut unruly = EventPublishing::to(&moto.endpoint);
    unruly.duplicate = 0.5;
    unruly.max_delay = Duration::from_secs(3);
    let published = fake.publish_events(unruly).await.expect("publisher");
    assert_eq!(published.failed, 0, "{published:?}");
    assert!(published.duplicated > 0, "{published:?}");
    eventually(
        Duration::from_secs(20),
        "every message is dealt with",
        || async {
            let m = daemon.metrics().await;
            let counted: f64 = [
                "applied",
                "duplicate",
                "stale",
                "unwatched",
                "malformed",
                "contradicted",
            ]
            .iter()
            .map(|o| pushed(&m, o))
            .sum();
            counted == published.sent as f64
        },
    )
    .await;
    for n in 1..=8 {
        let end = if n % 3 == 0 { "FAILED" } else { "SUCCEEDED" };
        let ends: Vec<_> = transitions_of(&ws, n)
            .into_iter()
            .filter(|(to, _)| to == "SUCCEEDED" || to == "FAILED")
            .collect();
        assert_eq!(ends.len(), 1, "one end event for execution {n}: {ends:?}");
        assert_eq!(ends[0].0, end, "execution {n}");
        assert_eq!(daemon.execution(n).await["status"], end);
    }
    let m = daemon.metrics().await;
    assert_eq!(pushed(&m, "malformed"), 0.0);
    assert!(
        pushed(&m, "duplicate") >= published.duplicated as f64 - 8.0,
        "{m}"
    );
    println!(
        "sent {} (duplicated {}): applied {}, duplicate {}, stale {}",
        published.sent,
        published.duplicated,
        pushed(&m, "applied"),
        pushed(&m, "duplicate"),
        pushed(&m, "stale")
    );
    daemon.stop().await;
}
