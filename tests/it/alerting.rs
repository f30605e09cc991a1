//! The whole alerting path, end to end with the real tools: the fake Supply Chain API, the
//! flowwatch binary, a real Prometheus (1 s scrape and rule evaluation) loading
//! deploy/prometheus/alerts.yml, a real Alertmanager routing by deploy/prometheus/alertmanager.yml,
//! and a webhook receiver owned by this test that records which receiver each notification
//! reached. One test fails an execution (FlowExecutionFailed, routed to its team); the other has
//! a run go overdue and a flow go without a recent success (FlowExecutionOverdue,
//! FlowNoRecentSuccess). Needs `prometheus` and `prometheus-alertmanager` (Debian packages) on
//! PATH; `bash .ci/test` installs them. Every process is killed when the test ends, pass or fail.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use flowwatch_fake::FakeServer;
use flowwatch_testkit::*;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Alert notifications received by the webhook, with their arrival times and the path they were
/// posted to (which receiver of the example config routed them).
type Received = Arc<Mutex<Vec<(Instant, String, serde_json::Value)>>>;

async fn webhook() -> (SocketAddr, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().fallback(post(move |uri: axum::http::Uri, body: String| {
        let sink = sink.clone();
        async move {
            if let Ok(json) = serde_json::from_str(&body) {
                let path = uri.path().to_string();
                sink.lock()
                    .expect("lock")
                    .push((Instant::now(), path, json));
            }
            "ok"
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind webhook");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}

/// A firing alert as the webhook received it.
struct Firing {
    at: Instant,
    /// The webhook path of the receiver it was routed to.
    path: String,
    alert: serde_json::Value,
}

/// Firing alerts named `name` received so far.
fn firing(received: &Received, name: &str) -> Vec<Firing> {
    let mut out = Vec::new();
    for (at, path, notification) in received.lock().expect("lock").iter() {
        for alert in notification["alerts"].as_array().into_iter().flatten() {
            if alert["status"] == "firing" && alert["labels"]["alertname"] == name {
                out.push(Firing {
                    at: *at,
                    path: path.clone(),
                    alert: alert.clone(),
                });
            }
        }
    }
    out
}

fn label(alert: &serde_json::Value, key: &str) -> String {
    alert["labels"][key]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// flowwatch, Prometheus and Alertmanager, running on free ports against `fake`, with
/// notifications going to a webhook owned by the test. Dropping it kills them.
struct Stack {
    received: Received,
    _processes: Vec<Child>,
}

impl Stack {
    async fn start(ws: &Workspace, config: &std::path::Path) -> Self {
        let (hook, received) = webhook().await;
        let (flowwatch_port, alertmanager_port) = (free_port(), free_port());
        let rules = format!(
            "{}/deploy/prometheus/alerts.yml",
            env!("CARGO_MANIFEST_DIR")
        );
        let alertmanager_config = ws.write("alertmanager.yml", &example_alertmanager(hook));
        let alertmanager = spawn_tool(
            &["prometheus-alertmanager", "alertmanager"],
            &[
                format!("--config.file={}", alertmanager_config.display()),
                format!("--storage.path={}", ws.path("am-data").display()),
                format!("--web.listen-address=127.0.0.1:{alertmanager_port}"),
                "--cluster.listen-address=".to_string(),
            ],
            &ws.path("alertmanager.log"),
        );
        let (prometheus, _) = spawn_prometheus(
            ws,
            &format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{alertmanager_port}']\nscrape_configs:\n  - job_name: flowwatch\n    static_configs:\n      - targets: ['127.0.0.1:{flowwatch_port}']\n"
            ),
        );
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowwatch"));
        cmd.args(["run", "--config", &config.to_string_lossy()])
            .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
            .env("AWS_SECRET_ACCESS_KEY", "test-secret")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env(
                "FLOWWATCH_SERVER__LISTEN",
                format!("127.0.0.1:{flowwatch_port}"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(ws.path("flowwatch.log")).expect("log"),
            ))
            .kill_on_drop(true);
        let flowwatch = cmd.spawn().expect("spawn flowwatch");
        Self {
            received,
            _processes: vec![alertmanager, prometheus, flowwatch],
        }
    }

    /// The first firing `name` alert that `matches`, waiting up to `limit` for it; panics with
    /// every log when none comes.
    async fn wait_for(
        &self,
        ws: &Workspace,
        name: &str,
        limit: Duration,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> Firing {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(found) = firing(&self.received, name)
                .into_iter()
                .find(|f| matches(&f.alert))
            {
                return found;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = ["flowwatch.log", "prometheus.log", "alertmanager.log"]
                    .iter()
                    .map(|f| {
                        format!(
                            "--- {f}\n{}",
                            std::fs::read_to_string(ws.path(f)).unwrap_or_default()
                        )
                    })
                    .collect();
                panic!(
                    "no firing {name} within {limit:?}; received {:?}\n{}",
                    self.received.lock().expect("lock"),
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// deploy/prometheus/alertmanager.yml with its receivers' webhooks at `hook` and a first
/// notification after 1 s rather than 10 s, so a test waits for flowwatch, not for the grouping.
fn example_alertmanager(hook: SocketAddr) -> String {
    let path = format!(
        "{}/deploy/prometheus/alertmanager.yml",
        env!("CARGO_MANIFEST_DIR")
    );
    let example = std::fs::read_to_string(path).expect("the example alertmanager.yml");
    for expected in ["http://127.0.0.1:5001/", "group_wait: 10s"] {
        assert!(
            example.contains(expected),
            "{expected} is gone from the example"
        );
    }
    example
        .replace("http://127.0.0.1:5001/", &format!("http://{hook}/"))
        .replace("group_wait: 10s", "group_wait: 1s")
}

/// Writes a report line where .ci/test prints it after the run (captured output is hidden).
fn report(file: &str, text: &str) {
    println!("{text}");
    let _ = std::fs::write(format!("{}/{file}", env!("CARGO_TARGET_TMPDIR")), text);
}

/// Fast polling, so the alerts' latency is Prometheus's and Alertmanager's, not flowwatch's.
const POLLING_FAST: &str = "[polling]\ninitial_interval = \"500ms\"\nmax_interval = \"1s\"\nmax_requests_per_second = 20.0\nrequest_timeout = \"2s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_execution_reaches_the_webhook_as_a_firing_alert_and_a_success_never_does() {
    const FAILS_AT: u64 = 8;
    let script = scenario(vec![
        scripted(
            "supplier-feed",
            1,
            &[(0, "IN_PROGRESS"), (FAILS_AT, "FAILED")],
        ),
        scripted("daily-orders", 2, &[(0, "IN_PROGRESS"), (5, "SUCCEEDED")]),
    ]);
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), POLLING_FAST, &script);
    // The failing execution belongs to the planning team; the other has no labels.
    ws.write(
        "watchlist.toml",
        &format!(
            "[[execution]]\ninstance_id = \"{INSTANCE}\"\nflow_name = \"supplier-feed\"\nexecution_id = \"{}\"\nlabels = {{ team = \"planning\", cost-centre = \"4711\" }}\n\n\
             [[execution]]\ninstance_id = \"{INSTANCE}\"\nflow_name = \"daily-orders\"\nexecution_id = \"{}\"\n",
            execution_id(1),
            execution_id(2)
        ),
    );
    let stack = Stack::start(&ws, &config).await;

    // The fake's clock started with it: FAILED is served from FAILS_AT seconds after its start.
    let failed_at = Instant::now() - fake.elapsed() + Duration::from_secs(FAILS_AT);
    let failing = execution_id(1);
    let Firing { at, path, alert } = stack
        .wait_for(&ws, "FlowExecutionFailed", Duration::from_secs(90), |a| {
            label(a, "execution_id") == failing
        })
        .await;
    assert_eq!(
        label(&alert, "message"),
        "execution 1 failed",
        "the failure message travels in the alert"
    );
    assert_eq!(
        (label(&alert, "label_team").as_str(), path.as_str()),
        ("planning", "/teams/planning"),
        "the owner travels in the alert, and the example routes it to the team"
    );
    let latency = at.saturating_duration_since(failed_at);
    report(
        "alert-latency.txt",
        &format!(
            "alert latency from the fake's FAILED to the webhook: {:.1} s",
            latency.as_secs_f64()
        ),
    );

    // Give a wrongly firing alert for the success time to show up, then check it never did.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let fired: Vec<String> = firing(&stack.received, "FlowExecutionFailed")
        .into_iter()
        .map(|f| label(&f.alert, "execution_id"))
        .collect();
    assert!(
        !fired.contains(&execution_id(2)),
        "the SUCCEEDED execution must not alert: {fired:?}"
    );
    assert!(fired.iter().all(|id| *id == failing), "{fired:?}");
    assert!(latency < Duration::from_secs(30), "latency {latency:?}");
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdue_run_and_a_flow_without_a_recent_success_reach_the_webhook() {
    // "nightly": three runs of 2 s, then one that runs on; overdue after max(2 x 2 s, 5 s).
    // "weekly" ([[flow]], expect_success_within = 1m) last succeeded two hours ago.
    const OVERDUE_AFTER: u64 = 5;
    let mut runs: Vec<_> = (1..=3)
        .map(|n| scripted("nightly", n, &[(0, "IN_PROGRESS"), (2, "SUCCEEDED")]))
        .collect();
    runs.push(scripted(
        "nightly",
        4,
        &[(0, "IN_PROGRESS"), (600, "SUCCEEDED")],
    ));
    let mut weekly = scripted("weekly", 5, &[(0, "SUCCEEDED")]);
    weekly.started_before = Some(Duration::from_secs(2 * 3600));
    weekly.ran_for = Some(Duration::from_secs(30));
    let script = scenario(runs.clone());
    let fake = FakeServer::start(scenario([runs, vec![weekly]].concat()))
        .await
        .expect("fake");
    let ws = Workspace::new();
    let settings = format!(
        "{POLLING_FAST}\n[flow_health]\noverdue_min = \"{OVERDUE_AFTER}s\"\n[discovery]\ninterval = \"2s\"\n"
    );
    let config = ws.config(&fake.endpoint_url(), &settings, &script);
    let watchlist = std::fs::read_to_string(ws.path("watchlist.toml")).expect("watchlist");
    ws.write(
        "watchlist.toml",
        &format!("{watchlist}[[flow]]\ninstance_id = \"{INSTANCE}\"\nflow_name = \"weekly\"\nsince = \"1d\"\nexpect_success_within = \"1m\"\nlabels = {{ team = \"warehouse\" }}\n"),
    );
    let stack = Stack::start(&ws, &config).await;
    let started = Instant::now() - fake.elapsed();

    let stale = stack
        .wait_for(&ws, "FlowNoRecentSuccess", Duration::from_secs(60), |a| {
            label(a, "flow_name") == "weekly"
        })
        .await;
    let summary = stale.alert["annotations"]["summary"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(
        (
            label(&stale.alert, "label_team").as_str(),
            stale.path.as_str()
        ),
        ("warehouse", "/teams/warehouse"),
        "the [[flow]] entry's owner travels in the alert and routes it"
    );
    assert!(
        summary.starts_with("Supply Chain flow weekly has not succeeded for 2h 0m"),
        "{summary}"
    );
    let late = execution_id(4);
    let overdue = stack
        .wait_for(&ws, "FlowExecutionOverdue", Duration::from_secs(60), |a| {
            label(a, "execution_id") == late
        })
        .await;
    let description = overdue.alert["annotations"]["description"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(
        (
            label(&overdue.alert, "label_team").as_str(),
            overdue.path.as_str()
        ),
        ("tests", "/alerts"),
        "a team without a route of its own reaches the shared receiver, its owner named"
    );
    assert!(
        description.contains(&format!("Execution {late} of flow nightly"))
            && description.contains("was expected to end at 20")
            && description.contains(" late."),
        "{description}"
    );
    let overdue_latency = overdue
        .at
        .saturating_duration_since(started + Duration::from_secs(OVERDUE_AFTER));
    report(
        "flow-health-alerts.txt",
        &format!(
            "alert latency: FlowExecutionOverdue {:.1} s after the run became overdue; FlowNoRecentSuccess {:.1} s after flowwatch started",
            overdue_latency.as_secs_f64(),
            stale.at.saturating_duration_since(started).as_secs_f64(),
        ),
    );
    assert!(
        overdue_latency < Duration::from_secs(60),
        "within about a minute: {overdue_latency:?}"
    );
    let wrongly: Vec<String> = firing(&stack.received, "FlowExecutionOverdue")
        .into_iter()
        .map(|f| label(&f.alert, "execution_id"))
        .filter(|id| *id != late)
        .collect();
    assert!(
        wrongly.is_empty(),
        "only the long run is overdue: {wrongly:?}"
    );
    let stale_flows: Vec<String> = firing(&stack.received, "FlowNoRecentSuccess")
        .into_iter()
        .map(|f| label(&f.alert, "flow_name"))
        .collect();
    assert!(
        stale_flows.iter().all(|f| f == "weekly"),
        "a flow without expect_success_within never alerts: {stale_flows:?}"
    );
    fake.stop().await;
}
