//! Hot reload of the watchlist from a change on disk: a plain rewrite, and a Kubernetes
//! ConfigMap update (an atomic swap of the `..data` symlink). An invalid new watchlist is refused
//! with its location, counted, and the old one keeps running. Paused clock, in-process daemon.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use flowwatch_fake::FakeServer;
use flowwatch_testkit::*;

fn watchlist_text(executions: &[(&str, usize)]) -> String {
    executions
        .iter()
        .map(|(flow, n)| {
            format!(
                "[[execution]]\ninstance_id = \"{INSTANCE}\"\nflow_name = \"{flow}\"\nexecution_id = \"{}\"\n\n",
                execution_id(*n)
            )
        })
        .collect()
}

fn three() -> flowwatch_fake::Scenario {
    scenario(vec![
        scripted("keep", 1, &[(0, "IN_PROGRESS")]),
        scripted("drop", 2, &[(0, "IN_PROGRESS")]),
        scripted("add", 3, &[(0, "IN_PROGRESS")]),
    ])
}

async fn watched(daemon: &Daemon) -> Vec<String> {
    let mut flows: Vec<String> = daemon.status().await["executions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["flow_name"].as_str().unwrap_or_default().to_string())
        .collect();
    flows.sort();
    flows
}

fn reloads(metrics: &str, result: &str) -> f64 {
    sample(
        metrics,
        "flowwatch_config_reloads_total",
        &[("result", result)],
    )
    .unwrap_or(f64::NAN)
}

#[tokio::test(start_paused = true)]
async fn a_changed_watchlist_file_is_reloaded_and_an_invalid_one_is_refused() {
    let script = three();
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), POLLING, &script);
    ws.write(
        "watchlist.toml",
        &watchlist_text(&[("keep", 1), ("drop", 2)]),
    );
    let daemon = Daemon::start(&config, &fake, false).await;
    eventually(Duration::from_secs(10), "both polled", || async {
        daemon.status().await["by_status"]["IN_PROGRESS"] == 2
    })
    .await;
    let before = daemon.metrics().await;
    let started_at = sample(
        &before,
        "flowwatch_config_last_reload_success_timestamp_seconds",
        &[],
    )
    .expect("gauge");

    ws.write(
        "watchlist.toml",
        &watchlist_text(&[("keep", 1), ("add", 3)]),
    );
    eventually(Duration::from_secs(10), "the change on disk", || async {
        watched(&daemon).await == ["add", "keep"]
    })
    .await;
    let m = daemon.metrics().await;
    assert_eq!(reloads(&m, "success"), 1.0);
    assert_eq!(
        sample(&m, "flowwatch_config_last_reload_successful", &[]),
        Some(1.0)
    );

    ws.write(
        "watchlist.toml",
        "[[execution]]\ninstance_id = \"not-a-uuid\"\n",
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    let m = daemon.metrics().await;
    assert_eq!(
        reloads(&m, "failure"),
        1.0,
        "counted once, not retried while unchanged:\n{m}"
    );
    assert_eq!(
        sample(&m, "flowwatch_config_last_reload_successful", &[]),
        Some(0.0)
    );
    assert!(
        sample(
            &m,
            "flowwatch_config_last_reload_success_timestamp_seconds",
            &[]
        )
        .is_some_and(|t| t >= started_at),
        "the last success stays"
    );
    assert_eq!(
        watched(&daemon).await,
        ["add", "keep"],
        "the old watchlist keeps running"
    );
    let (code, body) = http(daemon.addr, "POST", "/-/reload").await;
    assert_eq!(code, 400);
    assert!(
        body.contains("watchlist.toml:2:15: invalid instance_id"),
        "{body}"
    );
    daemon.stop().await;
    fake.stop().await;
}

/// Lays out a directory the way the kubelet mounts a ConfigMap: the file is a symlink through
/// `..data`, itself a symlink to a timestamped directory; an update swaps `..data` atomically.
fn configmap_version(dir: &Path, version: &str, watchlist: &str) {
    let versioned = dir.join(version);
    std::fs::create_dir_all(&versioned).expect("version dir");
    std::fs::write(versioned.join("watchlist.toml"), watchlist).expect("watchlist");
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(version, &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    let link = dir.join("watchlist.toml");
    if std::fs::symlink_metadata(&link).is_err() {
        symlink("..data/watchlist.toml", &link).expect("symlink");
    }
}

#[tokio::test(start_paused = true)]
async fn a_configmap_update_that_swaps_the_data_symlink_is_reloaded() {
    let script = three();
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), POLLING, &script);
    let mounted = ws.path("configmap");
    std::fs::create_dir_all(&mounted).expect("dir");
    configmap_version(
        &mounted,
        "..2026_11_25_10_00_00.000000001",
        &watchlist_text(&[("keep", 1)]),
    );
    ws.edit(
        &config,
        "watchlist = \"watchlist.toml\"",
        "watchlist = \"configmap/watchlist.toml\"",
    );
    let daemon = Daemon::start(&config, &fake, false).await;
    assert_eq!(watched(&daemon).await, ["keep"]);

    configmap_version(
        &mounted,
        "..2026_11_25_10_05_00.000000002",
        &watchlist_text(&[("keep", 1), ("add", 3)]),
    );
    std::fs::remove_dir_all(mounted.join("..2026_11_25_10_00_00.000000001"))
        .expect("old version goes");
    eventually(Duration::from_secs(10), "the ConfigMap update", || async {
        watched(&daemon).await == ["add", "keep"]
    })
    .await;
    assert_eq!(reloads(&daemon.metrics().await, "success"), 1.0);
    daemon.stop().await;
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_file_put_back_after_a_reload_by_request_is_reloaded_again() {
    let script = three();
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), POLLING, &script);
    let first = watchlist_text(&[("keep", 1), ("drop", 2)]);
    ws.write("watchlist.toml", &first);
    let daemon = Daemon::start(&config, &fake, false).await;
    assert_eq!(watched(&daemon).await, ["drop", "keep"]);

    // Changed and reloaded by request, then put back before the file watch looks: what runs
    // differs from the file, though the file is as it was at start.
    ws.write(
        "watchlist.toml",
        &watchlist_text(&[("keep", 1), ("add", 3)]),
    );
    let (code, body) = http(daemon.addr, "POST", "/-/reload").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(watched(&daemon).await, ["add", "keep"]);
    ws.write("watchlist.toml", &first);
    eventually(Duration::from_secs(10), "the file put back", || async {
        watched(&daemon).await == ["drop", "keep"]
    })
    .await;
    daemon.stop().await;
    fake.stop().await;
}
