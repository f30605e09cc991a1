//! Crash safety end to end: the flowwatch binary is killed at random moments, at least 20 times,
//! and restarted each time, while the fake API plays 200 executions with varied durations and
//! failures. At the end, every expected transition has been delivered (none lost); duplicates
//! carry the same event id and content, and there are at most as many as kills (each is a kill
//! between delivery and mark). With SIGTERM instead of SIGKILL there are none.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use flowwatch_fake::{FakeServer, Scenario};
use flowwatch_testkit::*;
use tokio::process::Command;

const EXECUTIONS: usize = 200;
const KILLS: usize = 22;

fn crash_scenario() -> Scenario {
    scenario(
        (1..=EXECUTIONS)
            .map(|n| {
                let ends = 12 + (n as u64 * 7) % 30;
                let terminal = if n % 4 == 0 { "FAILED" } else { "SUCCEEDED" };
                scripted(
                    &format!("flow-{}", n % 10),
                    n,
                    &[(0, "IN_PROGRESS"), (ends, terminal)],
                )
            })
            .collect(),
    )
}

fn expected(script: &Scenario) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for e in &script.executions {
        let key = format!("{}/{}/{}", e.instance_id, e.flow_name, e.execution_id);
        ids.insert(format!("{key}/IN_PROGRESS"));
        ids.insert(format!("{key}/{}", e.timeline[1].status));
    }
    ids
}

const POLLING_FAST: &str = r#"
[polling]
initial_interval = "300ms"
max_interval = "1s"
max_requests_per_second = 300.0
max_in_flight = 16
request_timeout = "2s"
"#;

fn daemon(
    config: &std::path::Path,
    fake: &FakeServer,
    exit_when_done: bool,
) -> tokio::process::Child {
    let mut args = vec!["run", "--config"];
    let config = config.to_string_lossy().to_string();
    args.push(&config);
    if exit_when_done {
        args.push("--exit-when-done");
    }
    Command::new(env!("CARGO_BIN_EXE_flowwatch"))
        .args(&args)
        .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("FLOWWATCH_LOG__LEVEL", "warn")
        .env("FLOWWATCH_AWS__ENDPOINT_URL", fake.endpoint_url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn flowwatch")
}

struct Outcome {
    lines: usize,
    duplicates: usize,
    torn: usize,
}

/// Runs the scenario, interrupting flowwatch `KILLS` times with `signal`, then lets a last run
/// finish; checks the delivered events against the expected set.
async fn interrupted_run(signal: &str) -> Outcome {
    let script = crash_scenario();
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), POLLING_FAST, &script);
    let mut rng = fastrand::Rng::with_seed(0xC0FFEE);
    for i in 0..KILLS {
        let child = daemon(&config, &fake, false);
        // The first run sees every execution IN_PROGRESS; later ones die at random moments.
        let alive = if i == 0 { 3000 } else { rng.u64(150..2500) };
        tokio::time::sleep(Duration::from_millis(alive)).await;
        let pid = child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        let mut child = child;
        let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .expect("stops")
            .expect("wait");
        if signal == "TERM" {
            assert_eq!(exit.code(), Some(0), "SIGTERM is a clean exit");
        }
    }
    let mut last = daemon(&config, &fake, true);
    let exit = tokio::time::timeout(Duration::from_secs(120), last.wait())
        .await
        .expect("the last run finishes")
        .expect("wait");
    assert_eq!(exit.code(), Some(1), "some executions FAILED");

    let text = std::fs::read_to_string(ws.path("events.jsonl")).expect("events");
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let (mut lines, mut duplicates, mut torn) = (0, 0, 0);
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            torn += 1;
            continue;
        };
        lines += 1;
        let id = event["id"].as_str().expect("an id").to_string();
        if let Some(first) = seen.get(&id) {
            assert_eq!(first, line, "a duplicate is the same event, byte for byte");
            duplicates += 1;
        } else {
            seen.insert(id, line.to_string());
        }
    }
    let delivered: BTreeSet<String> = seen.keys().cloned().collect();
    let want = expected(&script);
    let lost: Vec<_> = want.difference(&delivered).collect();
    let extra: Vec<_> = delivered.difference(&want).collect();
    assert!(lost.is_empty(), "{} transitions lost: {lost:?}", lost.len());
    assert!(extra.is_empty(), "unexpected transitions: {extra:?}");
    assert!(
        duplicates <= KILLS,
        "at most one duplicate per kill, saw {duplicates}"
    );
    println!(
        "SIG{signal} x{KILLS}: {} transitions expected, {} delivered ({lines} lines), 0 lost, {duplicates} duplicated, {torn} torn lines",
        want.len(),
        delivered.len()
    );
    fake.stop().await;
    Outcome {
        lines,
        duplicates,
        torn,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_transition() {
    let outcome = interrupted_run("KILL").await;
    assert_eq!(outcome.lines, EXECUTIONS * 2 + outcome.duplicates);
    let _ = std::fs::write(
        format!("{}/crash-sigkill.txt", env!("CARGO_TARGET_TMPDIR")),
        format!(
            "SIGKILL x{KILLS}: {} transitions expected, 0 lost, {} duplicated, {} torn lines\n",
            EXECUTIONS * 2,
            outcome.duplicates,
            outcome.torn
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_at_random_moments_loses_nothing_and_duplicates_nothing() {
    let outcome = interrupted_run("TERM").await;
    assert_eq!(
        outcome.duplicates, 0,
        "a clean shutdown never delivers twice"
    );
    assert_eq!(outcome.torn, 0);
    let _ = std::fs::write(
        format!("{}/crash-sigterm.txt", env!("CARGO_TARGET_TMPDIR")),
        format!(
            "SIGTERM x{KILLS}: {} transitions expected, 0 lost, 0 duplicated\n",
            EXECUTIONS * 2
        ),
    );
}
