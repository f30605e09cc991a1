//! The status page at `GET /` in a real headless Chromium (Debian `chromium`; `bash .ci/test`
//! installs it): the DOM lists the executions, marks the overdue one, shows a hostile failure
//! message as text, and the page loads nothing from another host. Screenshots (desktop and
//! phone width) are saved under target/tmp for CI to keep.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flowwatch_fake::FakeServer;
use flowwatch_testkit::*;
use serde_json::Value;

/// A failure message that would load an image from another host and retitle the page, if it
/// were ever written into the page as markup.
const HOSTILE: &str =
    r#"<img src=http://198.51.100.7/pixel.png onerror="document.title='pwned'"> bad row"#;

/// Runs headless Chromium on `url` with `args`; returns its stdout.
async fn chromium(profile: &Path, url: &str, args: &[String]) -> String {
    let mut last_error = String::new();
    for program in ["chromium", "chromium-browser"] {
        let output = tokio::process::Command::new(program)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                &format!("--user-data-dir={}", profile.display()),
            ])
            .args(args)
            .arg(url)
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(Duration::from_secs(60), output).await {
            Ok(Ok(out)) if out.status.success() => {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            Ok(Ok(out)) => last_error = String::from_utf8_lossy(&out.stderr).into_owned(),
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = "timed out after 60 s".into(),
        }
    }
    panic!(
        "headless Chromium did not run ({last_error}): `apt-get install chromium` (bash .ci/test does it)"
    );
}

/// The URLs the page itself asked for (requests whose top frame is the page's site), from a
/// Chromium net log; the browser's own background requests have another isolation key.
fn page_requests(net_log: &Path, site: &str) -> Vec<String> {
    let log: Value = serde_json::from_str(&std::fs::read_to_string(net_log).expect("net log"))
        .expect("net log is JSON");
    let start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].clone();
    log["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == start_job)
        .filter(|e| {
            e["params"]["network_isolation_key"]
                .as_str()
                .is_some_and(|k| k.starts_with(site))
        })
        .filter_map(|e| e["params"]["url"].as_str().map(str::to_string))
        .collect()
}

fn artifact(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_a_real_browser_marks_the_overdue_run_and_shows_hostile_text_as_text() {
    // Three runs of 1 s teach the median; the fourth goes overdue after 3 s; the fifth fails
    // with a hostile message.
    let mut runs: Vec<_> = (1..=3)
        .map(|n| scripted("nightly", n, &[(0, "IN_PROGRESS"), (1, "SUCCEEDED")]))
        .collect();
    runs.push(scripted(
        "nightly",
        4,
        &[(0, "IN_PROGRESS"), (600, "SUCCEEDED")],
    ));
    let mut failing = scripted("intake", 5, &[(0, "IN_PROGRESS"), (1, "FAILED")]);
    failing.timeline[1].message = Some(HOSTILE.to_string());
    runs.push(failing);
    let script = scenario(runs);
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let settings = format!("{POLLING}\n[flow_health]\noverdue_min = \"3s\"\n");
    let config = ws.config(&fake.endpoint_url(), &settings, &script);
    let daemon = Daemon::start(&config, &fake, false).await;
    eventually(Duration::from_secs(30), "execution 4 overdue", || async {
        daemon.status().await["by_status"]["FAILED"] == 1
            && overdue_of(&daemon.metrics().await, 4) == Some(1.0)
    })
    .await;

    let url = format!("http://{}/", daemon.addr);
    let net_log = ws.path("net-log.json");
    let dom = chromium(
        &ws.path("chromium"),
        &url,
        &[
            "--dump-dom".to_string(),
            format!("--log-net-log={}", net_log.display()),
        ],
    )
    .await;
    for n in 1..=5 {
        assert!(
            dom.contains(&format!(r#"data-execution-id="{}""#, execution_id(n))),
            "execution {n} is listed: {dom}"
        );
    }
    assert!(
        dom.contains(&format!(
            r#"<tr class="execution running overdue" data-execution-id="{}">"#,
            execution_id(4)
        )),
        "the overdue run is marked: {dom}"
    );
    assert_eq!(dom.matches("execution running overdue").count(), 1);
    assert!(
        dom.contains("&lt;img src=http://198.51.100.7/pixel.png onerror=\"document.title='pwned'\"&gt; bad row"),
        "the hostile message is text: {dom}"
    );
    assert!(!dom.contains("<img"), "no image element: {dom}");
    assert!(!dom.contains("pwned</title>"), "no script ran: {dom}");
    let requests = page_requests(&net_log, "http://127.0.0.1");
    assert!(
        !requests.is_empty(),
        "the net log shows the page's own request"
    );
    assert!(
        requests.iter().all(|u| u.starts_with(&url)),
        "the page loaded from another host: {requests:?}"
    );

    for (file, size) in [
        ("status-page.png", "1280,1400"),
        ("status-page-phone.png", "390,1400"),
    ] {
        let path = artifact(file);
        let _ = std::fs::remove_file(&path);
        chromium(
            &ws.path("chromium"),
            &url,
            &[
                format!("--screenshot={}", path.display()),
                format!("--window-size={size}"),
                "--hide-scrollbars".to_string(),
            ],
        )
        .await;
        let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        assert!(bytes > 10_000, "{file} was written ({bytes} bytes)");
    }
    daemon.stop().await;
}

fn overdue_of(metrics: &str, n: usize) -> Option<f64> {
    let id = execution_id(n);
    sample(
        metrics,
        "flowwatch_execution_overdue",
        &[
            ("instance_id", INSTANCE),
            ("flow_name", "nightly"),
            ("execution_id", &id),
        ],
    )
}
