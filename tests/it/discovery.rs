//! Watching whole flows: `[[flow]]` entries discover executions with
//! ListDataIntegrationFlowExecutions (through the SDK, against the fake's paged List), announce
//! each once, across restarts too, page no further than settled history, and survive throttling,
//! errors, a flow that does not exist and a reload that removes the flow. In-process daemons on
//! tokio's paused clock.

use std::time::Duration;

use flowwatch_fake::{FakeServer, Scenario, ScriptedExecution, ScriptedFlow};
use flowwatch_testkit::*;
use serde_json::Value;

const LIST: &str = "ListDataIntegrationFlowExecutions";

/// An execution of `flow` that started `ago` seconds before the fake did and is already `status`.
fn past(flow: &str, n: usize, ago: u64, status: &str) -> ScriptedExecution {
    let mut e = scripted(flow, n, &[(0, status)]);
    e.started_before = Some(Duration::from_secs(ago));
    e
}

/// A watchlist of `[[flow]]` entries, each `(flow_name, since)`.
fn flow_entries(flows: &[(&str, Option<&str>)]) -> String {
    let mut text = String::new();
    for (flow, since) in flows {
        text.push_str(&format!(
            "[[flow]]\ninstance_id = \"{INSTANCE}\"\nflow_name = \"{flow}\"\nlabels = {{ team = \"{flow}-team\" }}\n"
        ));
        if let Some(since) = since {
            text.push_str(&format!("since = \"{since}\"\n"));
        }
        text.push('\n');
    }
    text
}

/// A workspace whose config has `[discovery]` settings and a watchlist of `watchlist` text.
fn workspace(
    fake: &FakeServer,
    discovery: &str,
    watchlist: &str,
) -> (Workspace, std::path::PathBuf) {
    let ws = Workspace::new();
    let settings = format!("{POLLING}\n[discovery]\n{discovery}\n");
    let config = ws.config(&fake.endpoint_url(), &settings, &scenario(Vec::new()));
    ws.write("watchlist.toml", watchlist);
    (ws, config)
}

fn lists_of(fake: &FakeServer, flow: &str) -> u64 {
    fake.stats()
        .lists_by_flow
        .get(&format!("{INSTANCE}/{flow}"))
        .copied()
        .unwrap_or(0)
}

/// The events of execution `n`, as (from, to) pairs.
fn moves_of(ws: &Workspace, n: usize) -> Vec<(String, String)> {
    let id = execution_id(n);
    ws.events()
        .iter()
        .filter(|e| e["data"]["execution_id"] == id.as_str())
        .map(|e| {
            (
                e["data"]["from_status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                e["data"]["to_status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

fn assert_unique_ids(ws: &Workspace) {
    let ids: Vec<String> = ws
        .events()
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_string())
        .collect();
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "an event was announced twice: {ids:?}"
    );
}

fn pair(from: &str, to: &str) -> (String, String) {
    (from.to_string(), to.to_string())
}

/// The events of an execution first seen running that ended `end`.
fn ran_to(end: &str) -> Vec<(String, String)> {
    vec![pair("UNKNOWN", "IN_PROGRESS"), pair("IN_PROGRESS", end)]
}

fn flow_status<'a>(status: &'a Value, flow: &str) -> &'a Value {
    status["flows"]
        .as_array()
        .and_then(|all| all.iter().find(|f| f["flow_name"] == flow))
        .unwrap_or(&Value::Null)
}

#[tokio::test(start_paused = true)]
async fn new_executions_are_discovered_as_they_start_and_each_is_announced_once() {
    let mut executions = vec![
        // History from before flowwatch first saw the flow: ignored by default.
        past("orders", 1, 3600, "SUCCEEDED"),
        past("orders", 2, 7200, "FAILED"),
        past("orders", 3, 600, "IN_PROGRESS"),
        scripted("orders", 10, &[(5, "IN_PROGRESS"), (20, "SUCCEEDED")]),
        scripted("orders", 11, &[(12, "IN_PROGRESS"), (16, "FAILED")]),
        // Already terminal when List first shows it: one event, never polled.
        scripted("orders", 12, &[(30, "FAILED")]),
        // Listed explicitly too: its own entry, not announced again by discovery.
        scripted("orders", 13, &[(3, "IN_PROGRESS"), (25, "SUCCEEDED")]),
    ];
    executions.push(scripted("other", 20, &[(2, "IN_PROGRESS")]));
    let fake = FakeServer::start(scenario(executions)).await.expect("fake");
    let mut watchlist = flow_entries(&[("orders", None)]);
    watchlist.push_str(&format!(
        "[[execution]]\ninstance_id = \"{INSTANCE}\"\nflow_name = \"orders\"\nexecution_id = \"{}\"\n",
        execution_id(13)
    ));
    let (ws, config) = workspace(&fake, "interval = \"2s\"", &watchlist);
    let daemon = Daemon::start(&config, &fake, false).await;

    eventually(
        Duration::from_secs(60),
        "every new execution terminal",
        || async {
            daemon.execution(10).await["status"] == "SUCCEEDED"
                && daemon.execution(11).await["status"] == "FAILED"
                && daemon.execution(12).await["status"] == "FAILED"
                && daemon.execution(13).await["status"] == "SUCCEEDED"
        },
    )
    .await;
    // More rounds see the same executions again.
    tokio::time::sleep(Duration::from_secs(10)).await;

    for n in [1, 2, 3, 20] {
        assert!(moves_of(&ws, n).is_empty(), "execution {n} is not watched");
    }
    assert_eq!(moves_of(&ws, 10), ran_to("SUCCEEDED"));
    assert_eq!(moves_of(&ws, 11), ran_to("FAILED"));
    assert_eq!(moves_of(&ws, 12), vec![pair("UNKNOWN", "FAILED")]);
    assert_eq!(
        arrivals_of(&fake, 12).len(),
        0,
        "an execution listed as terminal is not polled"
    );
    assert_eq!(moves_of(&ws, 13).len(), 2, "{:?}", moves_of(&ws, 13));
    assert_unique_ids(&ws);
    let failed = ws
        .events()
        .into_iter()
        .find(|e| e["data"]["execution_id"] == execution_id(12).as_str())
        .expect("the FAILED event");
    assert_eq!(failed["data"]["labels"]["team"], "orders-team");
    assert_eq!(failed["data"]["message"], "execution 12 failed");

    let m = daemon.metrics().await;
    let flow = [("flow_name", "orders")];
    assert_eq!(
        sample(&m, "flowwatch_discovered_executions_total", &flow),
        Some(3.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            "flowwatch_discovery_last_success_timestamp_seconds",
            &flow
        )
        .is_some_and(|t| t > 1.7e9),
        "{m}"
    );
    assert_eq!(
        sample(&m, "flowwatch_discovery_flow_not_found", &flow),
        Some(0.0)
    );
    let listed = sample(
        &m,
        "flowwatch_api_requests_total",
        &[("operation", LIST), ("outcome", "success")],
    )
    .unwrap_or(0.0);
    assert_eq!(listed as u64, lists_of(&fake, "orders"), "{m}");
    assert_eq!(
        sample(
            &m,
            "flowwatch_transitions_total",
            &[("flow_name", "orders"), ("to_status", "FAILED")]
        ),
        Some(2.0)
    );
    let status = daemon.status().await;
    let orders = flow_status(&status, "orders");
    assert_eq!(orders["discovered"], 3, "{orders}");
    assert_eq!(orders["labels"]["team"], "orders-team");
    assert_eq!(daemon.execution(10).await["origin"], "discovered");
    assert_eq!(daemon.execution(13).await["origin"], "watchlist");

    // After retain_terminal (30 s), terminal discovered executions leave the watch set and
    // /metrics; later rounds still know them.
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_eq!(daemon.execution(10).await, Value::Null);
    assert_eq!(daemon.execution(13).await["status"], "SUCCEEDED");
    let m = daemon.metrics().await;
    assert!(
        !m.contains(&format!("execution_id=\"{}\"", execution_id(11))),
        "series of a dropped discovered execution:\n{m}"
    );
    assert_unique_ids(&ws);
    assert_eq!(moves_of(&ws, 12).len(), 1);
    daemon.stop().await;
}

/// A flow with 1,000 past executions, 95 of them inside a 24 h window.
fn long_history(flow: &str) -> Vec<ScriptedExecution> {
    (1..=1000)
        .map(|n| {
            let ago = if n <= 95 {
                n as u64 * 600
            } else {
                2 * 86_400 + n as u64 * 60
            };
            past(
                flow,
                n,
                ago,
                if n % 10 == 0 { "FAILED" } else { "SUCCEEDED" },
            )
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn paging_reads_the_window_and_stops_at_settled_history() {
    let mut executions = long_history("orders");
    // A second flow with the same history shape but no `since`: nothing is new to it.
    executions.extend(long_history("returns").into_iter().map(|mut e| {
        e.execution_id = e.execution_id.replacen("8000", "9000", 1);
        e
    }));
    let fake = FakeServer::start(scenario(executions)).await.expect("fake");
    let watchlist = flow_entries(&[("orders", Some("24h")), ("returns", None)]);
    let (ws, config) = workspace(&fake, "interval = \"60s\"\npage_size = 20", &watchlist);
    let daemon = Daemon::start(&config, &fake, false).await;

    eventually(Duration::from_secs(30), "the first rounds", || async {
        let status = daemon.status().await;
        flow_status(&status, "orders")["last_success"].is_string()
            && flow_status(&status, "returns")["last_success"].is_string()
    })
    .await;
    // 95 new in pages 1..5 (the 5th also holds 5 old ones), then a page of history: 6 calls.
    assert_eq!(lists_of(&fake, "orders"), 6);
    assert_eq!(
        flow_status(&daemon.status().await, "orders")["last_round_pages"],
        6
    );
    // Nothing after the flow was first seen: one page of history ends the round.
    assert_eq!(lists_of(&fake, "returns"), 1);
    assert_eq!(ws.events().len(), 95);
    assert!(
        ws.events()
            .iter()
            .all(|e| e["data"]["from_status"] == "UNKNOWN")
    );
    assert_eq!(
        fake.stats().requests,
        7,
        "executions listed as terminal are not polled"
    );

    // Later rounds: the first page holds nothing new and nothing running, and ends the round.
    tokio::time::sleep(Duration::from_secs(125)).await;
    assert_eq!(lists_of(&fake, "orders"), 8);
    assert_eq!(lists_of(&fake, "returns"), 3);
    assert_eq!(ws.events().len(), 95);
    assert_unique_ids(&ws);
    daemon.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_backlog_past_the_page_bound_is_worked_off_over_rounds() {
    let fake = FakeServer::start(scenario(long_history("orders")))
        .await
        .expect("fake");
    let watchlist = flow_entries(&[("orders", Some("24h"))]);
    let (ws, config) = workspace(
        &fake,
        "interval = \"10s\"\npage_size = 20\nmax_pages_per_round = 2",
        &watchlist,
    );
    let daemon = Daemon::start(&config, &fake, false).await;
    eventually(Duration::from_secs(5), "the first round", || async {
        flow_status(&daemon.status().await, "orders")["last_success"].is_string()
    })
    .await;
    assert_eq!(lists_of(&fake, "orders"), 2);
    assert_eq!(ws.events().len(), 40);
    assert_eq!(
        flow_status(&daemon.status().await, "orders")["resume_token_pending"],
        true
    );
    eventually(Duration::from_secs(60), "the whole window", || async {
        ws.events().len() == 95
    })
    .await;
    // Rounds of 2, 2, then 2 (the rest, and a page of history).
    assert_eq!(lists_of(&fake, "orders"), 6);
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(lists_of(&fake, "orders"), 7, "back to one page at the top");
    assert_unique_ids(&ws);
    daemon.stop().await;
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_nothing_is_announced_again_and_what_started_meanwhile_is_found() {
    let script = scenario(vec![
        scripted("orders", 1, &[(3, "IN_PROGRESS"), (8, "SUCCEEDED")]),
        scripted("orders", 2, &[(4, "IN_PROGRESS"), (100, "FAILED")]),
        // Starts and ends while flowwatch is down.
        scripted("orders", 3, &[(40, "IN_PROGRESS"), (50, "SUCCEEDED")]),
    ]);
    let fake = FakeServer::start(script).await.expect("fake");
    let (ws, config) = workspace(
        &fake,
        "interval = \"2s\"",
        &flow_entries(&[("orders", None)]),
    );

    let first = Daemon::start(&config, &fake, false).await;
    eventually(Duration::from_secs(30), "two discovered", || async {
        first.execution(1).await["status"] == "SUCCEEDED"
            && first.execution(2).await["status"] == "IN_PROGRESS"
    })
    .await;
    first.stop().await;
    assert_eq!(ws.events().len(), 3);

    tokio::time::sleep(Duration::from_secs(60)).await;
    let second = Daemon::start(&config, &fake, false).await;
    assert_eq!(
        second.execution(2).await["status"],
        "IN_PROGRESS",
        "a running discovered execution is back before any request"
    );
    // Terminal discovered executions leave /status after retain_terminal: read the events.
    eventually(
        Duration::from_secs(60),
        "the missed one and the failure",
        || async { moves_of(&ws, 3).len() == 1 && moves_of(&ws, 2).len() == 2 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(moves_of(&ws, 1).len(), 2);
    assert_eq!(moves_of(&ws, 2), ran_to("FAILED"));
    assert_eq!(moves_of(&ws, 3), vec![pair("UNKNOWN", "SUCCEEDED")]);
    assert_unique_ids(&ws);
    second.stop().await;
}

fn flow_with_faults(flow: &str, faults: Vec<flowwatch_fake::FaultWindow>) -> ScriptedFlow {
    ScriptedFlow {
        instance_id: INSTANCE.to_string(),
        flow_name: flow.to_string(),
        faults,
    }
}

fn window(
    from: u64,
    until: u64,
    probability: f64,
    fault: flowwatch_fake::Fault,
) -> flowwatch_fake::FaultWindow {
    flowwatch_fake::FaultWindow {
        from: Duration::from_secs(from),
        until: Some(Duration::from_secs(until)),
        probability,
        fault,
    }
}

#[tokio::test(start_paused = true)]
async fn a_throttled_or_failing_list_slows_down_and_recovers() {
    let mut script = scenario(vec![scripted(
        "orders",
        1,
        &[(2, "IN_PROGRESS"), (40, "SUCCEEDED")],
    )]);
    script.flows.push(flow_with_faults(
        "orders",
        vec![
            window(
                0,
                15,
                1.0,
                flowwatch_fake::Fault::Error {
                    error_type: "ThrottlingException".into(),
                    http_status: None,
                    message: Some("Rate exceeded".into()),
                    retry_after_ms: Some(2000),
                },
            ),
            window(15, 25, 0.5, api_error("InternalServerException")),
            window(15, 25, 0.2, flowwatch_fake::Fault::Reset),
        ],
    ));
    let fake = FakeServer::start(script).await.expect("fake");
    let (ws, config) = workspace(
        &fake,
        "interval = \"1s\"",
        &flow_entries(&[("orders", None)]),
    );
    let daemon = Daemon::start(&config, &fake, false).await;

    tokio::time::sleep(Duration::from_secs(14)).await;
    let m = daemon.metrics().await;
    let throttled = sample(
        &m,
        "flowwatch_api_requests_total",
        &[("operation", LIST), ("outcome", "throttled")],
    )
    .unwrap_or(0.0);
    assert!(throttled >= 1.0, "{m}");
    assert!(
        throttled <= 8.0,
        "throttled List requests are spaced by the retry-after hint: {throttled}"
    );
    assert!(
        sample(&m, "flowwatch_rate_limit_requests_per_second", &[]).is_some_and(|r| r < 20.0),
        "the global rate was cut:\n{m}"
    );
    let status = daemon.status().await;
    assert_eq!(flow_status(&status, "orders")["last_outcome"], "throttled");
    assert!(
        daemon.execution(1).await.is_null(),
        "not discovered while throttled"
    );

    eventually(
        Duration::from_secs(60),
        "discovery after the faults",
        || async { daemon.execution(1).await["status"] == "SUCCEEDED" },
    )
    .await;
    assert_eq!(moves_of(&ws, 1).len(), 2);
    let status = daemon.status().await;
    assert_eq!(flow_status(&status, "orders")["last_outcome"], "success");
    daemon.stop().await;
}

#[tokio::test(start_paused = true)]
async fn discovery_shares_the_rate_limit_with_polling_and_keeps_clear_of_throttling() {
    // 30 running executions polled every second, and three flows listed every second, against
    // a server that allows what flowwatch is configured for.
    let mut executions: Vec<ScriptedExecution> = (1..=30)
        .map(|n| scripted("polled", n, &[(0, "IN_PROGRESS")]))
        .collect();
    for (i, flow) in ["a", "b", "c"].into_iter().enumerate() {
        executions.push(scripted(flow, 100 + i, &[(3, "IN_PROGRESS")]));
    }
    let mut script = scenario(executions);
    script.rate_limit = Some(flowwatch_fake::FakeRateLimit {
        requests_per_second: 10.0,
        burst: 10.0,
        retry_after_ms: None,
    });
    let fake = FakeServer::start(script).await.expect("fake");
    let mut watchlist = flow_entries(&[("a", None), ("b", None), ("c", None)]);
    for n in 1..=30 {
        watchlist.push_str(&format!(
            "[[execution]]\ninstance_id = \"{INSTANCE}\"\nflow_name = \"polled\"\nexecution_id = \"{}\"\n",
            execution_id(n)
        ));
    }
    let ws = Workspace::new();
    let polling = POLLING
        .replace(
            "max_requests_per_second = 20.0",
            "max_requests_per_second = 10.0",
        )
        .replace("max_interval = \"8s\"", "max_interval = \"1s\"");
    let config = ws.config(
        &fake.endpoint_url(),
        &format!("{polling}\n[discovery]\ninterval = \"1s\"\n"),
        &scenario(Vec::new()),
    );
    ws.write("watchlist.toml", &watchlist);
    let daemon = Daemon::start(&config, &fake, false).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let stats = fake.stats();
    let share = stats.throttled as f64 / stats.requests as f64;
    assert!(
        share < 0.05,
        "{} of {} requests throttled",
        stats.throttled,
        stats.requests
    );
    assert!(
        stats.requests as f64 >= 60.0 * 10.0 * 0.8,
        "the budget is used: {} requests in 60 s",
        stats.requests
    );
    for flow in ["a", "b", "c"] {
        let lists = lists_of(&fake, flow);
        assert!(lists >= 10, "flow {flow} is listed in turn: {lists} times");
    }
    for n in 100..=102 {
        assert_eq!(daemon.execution(n).await["status"], "IN_PROGRESS");
    }
    daemon.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_flow_that_does_not_exist_is_reported_and_asked_again_rarely() {
    let fake = FakeServer::start(scenario(Vec::new())).await.expect("fake");
    let (ws, config) = workspace(
        &fake,
        "interval = \"2s\"",
        &flow_entries(&[("ghost", None)]),
    );
    let daemon = Daemon::start(&config, &fake, false).await;
    tokio::time::sleep(Duration::from_secs(59)).await;
    // Asked at start, then every 10 intervals (20 s).
    assert!(
        lists_of(&fake, "ghost") <= 4,
        "{}",
        lists_of(&fake, "ghost")
    );
    let m = daemon.metrics().await;
    assert_eq!(
        sample(
            &m,
            "flowwatch_discovery_flow_not_found",
            &[("flow_name", "ghost")]
        ),
        Some(1.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            "flowwatch_api_requests_total",
            &[("operation", LIST), ("outcome", "not_found")]
        )
        .is_some_and(|n| n >= 1.0)
    );
    let status = daemon.status().await;
    let ghost = flow_status(&status, "ghost");
    assert_eq!(ghost["flow_not_found"], true, "{ghost}");
    assert!(
        ghost["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("does not exist")),
        "{ghost}"
    );

    // The flow is created, and runs.
    fake.set_scenario(scenario(vec![scripted("ghost", 1, &[(70, "IN_PROGRESS")])]));
    eventually(Duration::from_secs(40), "the flow's execution", || async {
        daemon.execution(1).await["status"] == "IN_PROGRESS"
    })
    .await;
    let m = daemon.metrics().await;
    assert_eq!(
        sample(
            &m,
            "flowwatch_discovery_flow_not_found",
            &[("flow_name", "ghost")]
        ),
        Some(0.0)
    );
    assert_eq!(moves_of(&ws, 1), vec![pair("UNKNOWN", "IN_PROGRESS")]);
    daemon.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_flow_removed_by_reload_leaves_with_its_executions_and_series() {
    let script: Scenario = scenario(vec![
        scripted("orders", 1, &[(2, "IN_PROGRESS")]),
        scripted("orders", 2, &[(2, "IN_PROGRESS")]),
        scripted("kept", 3, &[(0, "IN_PROGRESS")]),
    ]);
    let fake = FakeServer::start(script).await.expect("fake");
    let listed = format!(
        "[[execution]]\ninstance_id = \"{INSTANCE}\"\nflow_name = \"kept\"\nexecution_id = \"{}\"\n",
        execution_id(3)
    );
    let both = format!("{}{listed}", flow_entries(&[("orders", None)]));
    let (ws, config) = workspace(&fake, "interval = \"1s\"", &both);
    let daemon = Daemon::start(&config, &fake, false).await;
    eventually(Duration::from_secs(20), "two discovered", || async {
        daemon.execution(1).await["status"] == "IN_PROGRESS"
            && daemon.execution(2).await["status"] == "IN_PROGRESS"
    })
    .await;

    ws.write("watchlist.toml", &listed);
    let (code, body) = http(daemon.addr, "POST", "/-/reload").await;
    assert_eq!(code, 200, "{body}");
    let status = daemon.status().await;
    assert_eq!(
        status["flows"].as_array().map(Vec::len),
        Some(0),
        "{status}"
    );
    assert!(daemon.execution(1).await.is_null());
    assert_eq!(daemon.execution(3).await["status"], "IN_PROGRESS");
    let m = daemon.metrics().await;
    assert!(
        !m.contains(&format!("execution_id=\"{}\"", execution_id(1))),
        "{m}"
    );
    assert!(
        sample(
            &m,
            "flowwatch_discovered_executions_total",
            &[("flow_name", "orders")]
        )
        .is_none(),
        "{m}"
    );
    let lists = lists_of(&fake, "orders");
    let polls = arrivals_of(&fake, 1).len();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        lists_of(&fake, "orders") <= lists + 1,
        "no more List requests"
    );
    assert!(arrivals_of(&fake, 1).len() <= polls + 1, "no more polls");
    daemon.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_hour_of_a_flow_with_history_costs_what_the_readme_says() {
    // Default polling and discovery settings; one execution of 10 minutes in the hour, beside
    // 1,000 past executions.
    let mut executions = long_history("orders");
    executions.push(scripted(
        "orders",
        5000,
        &[(600, "IN_PROGRESS"), (1200, "SUCCEEDED")],
    ));
    let fake = FakeServer::start(scenario(executions)).await.expect("fake");
    let ws = Workspace::new();
    let defaults = "[polling]\nretain_terminal = \"1h\"\n[discovery]\ninterval = \"1m\"\n";
    let config = ws.config(&fake.endpoint_url(), defaults, &scenario(Vec::new()));
    ws.write("watchlist.toml", &flow_entries(&[("orders", None)]));
    let daemon = Daemon::start(&config, &fake, false).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let lists = lists_of(&fake, "orders");
    let gets = arrivals_of(&fake, 5000).len();
    eprintln!("one hour: {lists} List calls, {gets} Get calls for the one execution");
    assert!((60..=72).contains(&lists), "{lists} List calls");
    assert!((5..=20).contains(&gets), "{gets} Get calls");
    assert_eq!(moves_of(&ws, 5000), ran_to("SUCCEEDED"));
    daemon.stop().await;
}

#[tokio::test]
async fn exit_when_done_refuses_a_watchlist_with_flows() {
    let fake = FakeServer::start(scenario(Vec::new())).await.expect("fake");
    let (_ws, config) = workspace(&fake, "", &flow_entries(&[("orders", None)]));
    let settings = flowwatch::Settings::load(&config).expect("valid config");
    let client = std::sync::Arc::new(flowwatch::testing::local_client(
        &fake.endpoint_url(),
        Duration::from_secs(2),
    ));
    let options = flowwatch::RunOptions {
        exit_when: flowwatch::ExitWhen::AllDone,
        ..flowwatch::RunOptions::default()
    };
    let result = flowwatch::run_with(settings, client, options, flowwatch::Shutdown::new()).await;
    match result {
        Err(e @ flowwatch::Error::Config(_)) => {
            assert!(
                e.to_string()
                    .contains("--exit-when-done cannot be used with [[flow]] entries"),
                "{e}"
            );
            assert_eq!(e.exit_code(), 2);
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_repeated_or_malformed_listed_item_is_counted_once_or_skipped() {
    let mut bad = scripted("orders", 2, &[(3, "IN_PROGRESS")]);
    bad.execution_id = "NOT-A-UUID".to_string();
    let twice = scripted("orders", 1, &[(3, "SUCCEEDED")]);
    let fake = FakeServer::start(scenario(vec![twice.clone(), twice, bad]))
        .await
        .expect("fake");
    let (ws, config) = workspace(
        &fake,
        "interval = \"1s\"",
        &flow_entries(&[("orders", None)]),
    );
    let daemon = Daemon::start(&config, &fake, false).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(moves_of(&ws, 1), vec![pair("UNKNOWN", "SUCCEEDED")]);
    assert_eq!(ws.events().len(), 1, "the malformed item is skipped");
    let status = daemon.status().await;
    assert_eq!(flow_status(&status, "orders")["last_outcome"], "success");
    assert_eq!(flow_status(&status, "orders")["discovered"], 1);
    daemon.stop().await;
}
