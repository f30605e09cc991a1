//! deploy/grafana/flowwatch.json against the real tools. Every panel's query, with the
//! dashboard's variables put in as Grafana would (`$job`, `$instance`, `$__rate_interval`), is
//! checked by promtool and then run against a real Prometheus scraping `flowwatch demo` every
//! second. Each must return a finite value at some point while the demo plays, except the
//! queries of features the demo does not use, named in [`NO_DATA_IN_THE_DEMO`]; those must
//! return nothing, so the list stays true. dashboard-linter's rules (variables, titles, units,
//! matchers, `$__rate_interval`) are checked by `.ci/dashboard-lint.py`. Needs `prometheus` and
//! `promtool` on PATH; `bash .ci/test` installs them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use flowwatch_testkit::*;
use tokio::process::Command;
use tokio::time::Instant;

/// Panels whose queries return nothing in the demo, and why.
const NO_DATA_IN_THE_DEMO: [(&str, &str); 3] = [
    (
        "Pushed messages by outcome",
        "the demo does not configure [push]",
    ),
    ("Push delay", "the demo does not configure [push]"),
    ("Push healthy", "the demo does not configure [push]"),
];

/// The scrape interval of the test's Prometheus, and what `$__rate_interval` becomes: Grafana
/// makes it at least four scrape intervals.
const SCRAPE: &str = "1s";
const RATE_INTERVAL: &str = "5s";

/// One query of one panel.
struct Query {
    panel: String,
    /// With the dashboard's variables put in.
    expr: String,
}

fn dashboard() -> serde_json::Value {
    let path = format!(
        "{}/deploy/grafana/flowwatch.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).expect("the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every panel's queries, as Grafana sends them for job "flowwatch" and every instance.
fn queries() -> Vec<Query> {
    let dashboard = dashboard();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            out.push(Query {
                panel: panel["title"].as_str().unwrap_or_default().to_string(),
                expr: expr
                    .replace("$__rate_interval", RATE_INTERVAL)
                    .replace("$job", "flowwatch")
                    .replace("$instance", ".+"),
            });
        }
    }
    out
}

/// `promtool check rules` on every query as a recording rule: each must parse and type-check.
fn promtool_checks(ws: &Workspace, queries: &[Query]) {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        let expr = serde_json::to_string(&q.expr).expect("a JSON string is a YAML scalar");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {expr}\n"
        ));
    }
    let file = ws.write("dashboard-rules.yml", &rules);
    let output = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool is installed (bash .ci/test installs it)");
    assert!(
        output.status.success(),
        "promtool refuses a dashboard query:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Whether `expr` has a finite value now in the Prometheus at `prometheus`.
async fn has_data(prometheus: SocketAddr, expr: &str) -> bool {
    let (code, body) = http(
        prometheus,
        "GET",
        &format!("/api/v1/query?query={}", flowwatch_fake::form_encoded(expr)),
    )
    .await;
    assert_eq!(code, 200, "Prometheus refused {expr}: {body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("Prometheus answers JSON");
    answer["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|series| series["value"][1].as_str()?.parse::<f64>().ok())
        .any(f64::is_finite)
}

#[test]
fn docs_dashboards_md_lists_every_row_and_panel() {
    let docs = include_str!("../../docs/dashboards.md").to_lowercase();
    let mut row = String::new();
    for panel in dashboard()["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or_default().to_lowercase();
        if panel["type"] == "row" {
            row = format!("| {title} |");
            assert!(
                docs.contains(&row),
                "docs/dashboards.md has no row {title:?}"
            );
            continue;
        }
        let line = docs
            .lines()
            .find(|l| l.starts_with(&row))
            .unwrap_or_default();
        assert!(
            line.contains(&title),
            "docs/dashboards.md's row {row} does not name the panel {title:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_is_valid_and_returns_data_from_the_demo() {
    let ws = Workspace::new();
    let queries = queries();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    promtool_checks(&ws, &queries);
    for (panel, _) in NO_DATA_IN_THE_DEMO {
        assert!(
            queries.iter().any(|q| q.panel == panel),
            "no panel {panel:?} any more: take it out of NO_DATA_IN_THE_DEMO"
        );
    }

    let demo_port = free_port();
    let _demo = Command::new(env!("CARGO_BIN_EXE_flowwatch"))
        .args([
            "demo",
            "--hold",
            "--listen",
            &format!("127.0.0.1:{demo_port}"),
        ])
        .env("TMPDIR", ws.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(ws.path("demo.log")).expect("log"),
        ))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn flowwatch demo");
    let (_prometheus, prometheus) = spawn_prometheus(
        &ws,
        &format!(
            "global:\n  scrape_interval: {SCRAPE}\nscrape_configs:\n  - job_name: flowwatch\n    static_configs:\n      - targets: ['127.0.0.1:{demo_port}']\n"
        ),
    );

    // The demo plays for about a minute (a run goes overdue from 30 s to 50 s): ask every query
    // each second and remember which have answered.
    let exempt = |q: &Query| NO_DATA_IN_THE_DEMO.iter().any(|(p, _)| *p == q.panel);
    let mut answered = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if http_ready(prometheus).await {
            for (i, q) in queries.iter().enumerate() {
                if !answered.contains(&i) && has_data(prometheus, &q.expr).await {
                    answered.insert(i);
                }
            }
        }
        let waiting = queries
            .iter()
            .enumerate()
            .filter(|(i, q)| !exempt(q) && !answered.contains(i))
            .count();
        if waiting == 0 || Instant::now() > deadline {
            break;
        }
    }
    let silent: Vec<String> = queries
        .iter()
        .enumerate()
        .filter(|(i, q)| !exempt(q) && !answered.contains(i))
        .map(|(_, q)| format!("{}: {}", q.panel, q.expr))
        .collect();
    assert!(
        silent.is_empty(),
        "no data from the demo for:\n{}\n--- demo.log\n{}",
        silent.join("\n"),
        std::fs::read_to_string(ws.path("demo.log")).unwrap_or_default()
    );
    let spoke: Vec<&str> = queries
        .iter()
        .enumerate()
        .filter(|(i, q)| exempt(q) && answered.contains(i))
        .map(|(_, q)| q.panel.as_str())
        .collect();
    assert!(
        spoke.is_empty(),
        "the demo now gives data for {spoke:?}: take them out of NO_DATA_IN_THE_DEMO"
    );
}

/// Whether Prometheus answers its readiness probe yet.
async fn http_ready(prometheus: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(prometheus).await.is_ok()
        && http(prometheus, "GET", "/-/ready").await.0 == 200
}
