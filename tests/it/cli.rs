//! The `flowwatch` binary as an operator runs it: command line, exit codes, config errors,
//! environment overrides, signals, and a whole run against the fake API. Each test starts the
//! real binary; the fake runs in the test process.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use flowwatch_fake::FakeServer;
use flowwatch_testkit::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_flowwatch");
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETMARKER";
const SESSION: &str = "SESSIONTOKENMARKER0123456789";
const QUEUE_PASSWORD: &str = "QUEUEPASSWORDMARKER";

/// A command with no inherited FLOWWATCH_ or AWS_ variables.
fn flowwatch(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).kill_on_drop(true);
    for (name, _) in std::env::vars() {
        if is_inherited_override(&name) {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// The environment of a daemon run against the fake: recognisable secrets, so tests can check
/// they never leak.
fn against(cmd: &mut Command, fake: &FakeServer) {
    cmd.env("AWS_ACCESS_KEY_ID", "AKIDTESTMARKER")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_SESSION_TOKEN", SESSION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/flowwatch-test")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/flowwatch-test")
        .env("FLOWWATCH_AWS__ENDPOINT_URL", fake.endpoint_url());
}

async fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the command finishes")
        .expect("the command runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

const FAST: &str = r#"
[polling]
initial_interval = "200ms"
max_interval = "1s"
max_requests_per_second = 50.0
request_timeout = "2s"
not_found_grace = "3s"
retain_terminal = "1m"
"#;

fn example_config() -> String {
    format!("{}/config/flowwatch.toml", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn version_help_and_usage_errors_have_their_exit_codes() {
    let (code, out, _) = output(&mut flowwatch(&["--version"])).await;
    assert_eq!(
        (code, out.trim()),
        (
            0,
            format!("flowwatch {}", env!("CARGO_PKG_VERSION")).as_str()
        )
    );
    let (code, out, _) = output(&mut flowwatch(&["--help"])).await;
    assert_eq!(code, 0);
    for word in ["run", "check-config", "demo", "Exit codes"] {
        assert!(out.contains(word), "{word} in --help:\n{out}");
    }
    let (code, out, _) = output(&mut flowwatch(&["run", "--help"])).await;
    assert!(
        code == 0 && out.contains("--exit-when-done") && out.contains("--config"),
        "{out}"
    );
    let (code, _, err) = output(&mut flowwatch(&["frobnicate"])).await;
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = output(&mut flowwatch(&["run", "--no-such-flag"])).await;
    assert_eq!(code, 2, "{err}");
}

#[tokio::test]
async fn the_example_config_passes_check_config_with_a_summary() {
    let (code, out, err) = output(&mut flowwatch(&[
        "check-config",
        "--config",
        &example_config(),
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("config ok:"), "{out}");
    assert!(
        out.contains("executions: 2, discovered flows: 1, flows: 3, instances: 1"),
        "{out}"
    );
    assert!(out.contains("listen: 0.0.0.0:9726"), "{out}");
}

#[tokio::test]
async fn check_config_reports_every_problem_of_both_files_with_locations() {
    let ws = Workspace::new();
    ws.write(
        "watchlist.toml",
        "[[execution]]\ninstance_id = \"A\"\nflow_name = \"x y\"\n",
    );
    let config = ws.write(
        "flowwatch.toml",
        "watchlist = \"watchlist.toml\"\ncolour = 1\n[server]\nlisten = \"not-an-address\"\n[polling]\ninitial_interval = \"5 parsecs\"\nmultiplier = \"x\"\n[log]\nformat = \"xml\"\n",
    );
    let config = config.to_string_lossy().to_string();
    let (code, out, err) = output(&mut flowwatch(&["check-config", "--config", &config])).await;
    assert_eq!(code, 2);
    assert!(out.is_empty(), "{out}");
    let dir = ws.dir.path().display();
    let expected = [
        format!("{dir}/flowwatch.toml:2:1: unknown key `colour`"),
        format!("{dir}/flowwatch.toml:4:10: server.listen: invalid socket address syntax"),
        format!(
            "{dir}/flowwatch.toml:6:20: polling.initial_interval: invalid duration \"5 parsecs\""
        ),
        format!("{dir}/flowwatch.toml:7:14: polling.multiplier: expected f64, found string \"x\""),
        format!(
            "{dir}/flowwatch.toml:9:10: log.format: unknown value \"xml\", expected one of: text, json"
        ),
        format!("{dir}/watchlist.toml:2:15: invalid instance_id \"A\""),
        format!("{dir}/watchlist.toml:3:13: invalid flow_name \"x y\""),
        format!("{dir}/watchlist.toml:1:1: missing field `execution_id` in [[execution]]"),
    ];
    for line in &expected {
        assert!(
            err.lines().any(|l| l.starts_with(line.as_str())),
            "missing {line:?} in:\n{err}"
        );
    }
    assert_eq!(err.lines().count(), expected.len(), "{err}");
    // `run` refuses the same config with the same exit code.
    let (code, _, _) = output(&mut flowwatch(&["run", "--config", &config])).await;
    assert_eq!(code, 2);
}

#[tokio::test]
async fn environment_overrides_apply_and_bad_ones_name_the_variable() {
    let mut cmd = flowwatch(&["check-config"]);
    cmd.env("FLOWWATCH_CONFIG", example_config())
        .env("FLOWWATCH_POLLING__MAX_INTERVAL", "5m")
        .env("FLOWWATCH_AWS__ENDPOINT_URL", "http://127.0.0.1:4566");
    let (code, out, err) = output(&mut cmd).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("growing x2 to 5m"), "{out}");
    assert!(out.contains("endpoint http://127.0.0.1:4566"), "{out}");

    let mut cmd = flowwatch(&["check-config", "--config", &example_config()]);
    cmd.env("FLOWWATCH_POLLING__MULTIPLIER", "fast")
        .env("FLOWWATCH_COLOUR", "red");
    let (code, _, err) = output(&mut cmd).await;
    assert_eq!(code, 2);
    assert!(err.contains("environment variable FLOWWATCH_POLLING__MULTIPLIER: polling.multiplier: expected f64, found string \"fast\""), "{err}");
    assert!(
        err.contains("environment variable FLOWWATCH_COLOUR: unknown key `colour`"),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_config_and_an_address_in_use_fail_clearly() {
    let (code, _, err) = output(&mut flowwatch(&[
        "run",
        "--config",
        "/nonexistent/flowwatch.toml",
    ]))
    .await;
    assert_eq!(code, 2);
    assert!(
        err.contains(
            "/nonexistent/flowwatch.toml: cannot read config file: no such file or directory"
        ),
        "{err}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let fake = FakeServer::start(scenario(vec![scripted("f", 1, &[(0, "IN_PROGRESS")])]))
        .await
        .expect("fake");
    let ws = Workspace::new();
    let config = ws.config(
        &fake.endpoint_url(),
        FAST,
        &scenario(vec![scripted("f", 1, &[])]),
    );
    let mut cmd = flowwatch(&["run", "--config", &config.to_string_lossy()]);
    against(&mut cmd, &fake);
    cmd.env("FLOWWATCH_SERVER__LISTEN", format!("127.0.0.1:{port}"));
    let (code, _, err) = output(&mut cmd).await;
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!(
            "cannot listen on 127.0.0.1:{port}: address already in use"
        )),
        "{err}"
    );
    fake.stop().await;
}

fn mixed_scenario() -> flowwatch_fake::Scenario {
    scenario(vec![
        scripted("daily-orders", 1, &[(0, "IN_PROGRESS"), (1, "SUCCEEDED")]),
        scripted("supplier-feed", 2, &[(0, "IN_PROGRESS"), (2, "FAILED")]),
    ])
}

/// Runs `flowwatch run --exit-when-done` against a fake playing `script` to its end; returns the
/// workspace, the exit code, stdout and stderr.
async fn run_to_the_end(
    script: &flowwatch_fake::Scenario,
    events_on_stdout: bool,
) -> (Workspace, i32, String, String) {
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), FAST, script);
    if events_on_stdout {
        ws.edit(&config, "stdout = false", "stdout = true");
    }
    let mut cmd = flowwatch(&[
        "run",
        "--exit-when-done",
        "--config",
        &config.to_string_lossy(),
    ]);
    against(&mut cmd, &fake);
    let (code, out, err) = output(&mut cmd).await;
    fake.stop().await;
    (ws, code, out, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exit_when_done_exits_1_on_a_failure_and_0_when_all_succeed() {
    let (ws, code, out, err) = run_to_the_end(&mixed_scenario(), true).await;
    assert_eq!(code, 1, "{err}");
    let stdout_events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("stdout is JSON Lines"))
        .collect();
    assert_eq!(stdout_events.len(), 4, "{out}");
    assert_eq!(
        stdout_events,
        ws.events(),
        "stdout and the file carry the same events"
    );
    for leak in [SECRET, SESSION] {
        assert!(
            !out.contains(leak) && !err.contains(leak),
            "a secret leaked:\n{err}"
        );
    }

    let ok = scenario(vec![scripted(
        "daily-orders",
        1,
        &[(0, "IN_PROGRESS"), (1, "SUCCEEDED")],
    )]);
    let (_, code, _, err) = run_to_the_end(&ok, false).await;
    assert_eq!(code, 0, "{err}");
}

/// A started daemon, the address it logged, and its log lines from the start.
type Spawned = (
    Child,
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
);

/// Starts the daemon and returns it with the address it logged.
async fn spawn_daemon(config: &Path, fake: &FakeServer, log_level: &str) -> Spawned {
    let cmd = flowwatch(&["run", "--config", &config.to_string_lossy()]);
    spawn_command(cmd, fake, log_level).await
}

/// Spawns `cmd` (flowwatch, or a shell that execs it) against `fake` with JSON logs at
/// `log_level`; returns it with its address once it listens, and its log lines.
async fn spawn_command(mut cmd: Command, fake: &FakeServer, log_level: &str) -> Spawned {
    against(&mut cmd, fake);
    cmd.env("FLOWWATCH_LOG__LEVEL", log_level)
        .env("FLOWWATCH_LOG__FORMAT", "json");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn flowwatch");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    // The lines before the address are handed on too, ahead of the rest.
    let (tx, early_rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = listening_address(&mut lines, |line| {
        let _ = tx.send(line.to_string());
    })
    .await;
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, addr, early_rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_daemon_cleanly_and_sighup_reloads_the_watchlist() {
    let script = scenario(vec![
        scripted("daily-orders", 1, &[(0, "IN_PROGRESS")]),
        scripted("added-later", 2, &[(0, "IN_PROGRESS")]),
    ]);
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), FAST, &script);
    ws.write_watchlist([("daily-orders", execution_id(1).as_str())].into_iter());
    let (mut child, addr, mut logs) = spawn_daemon(&config, &fake, "debug").await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while http(addr, "GET", "/readyz").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ws.write_watchlist(
        [
            ("daily-orders", execution_id(1).as_str()),
            ("added-later", execution_id(2).as_str()),
        ]
        .into_iter(),
    );
    signal(&child, "HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = http(addr, "GET", "/status").await;
        if body.contains(&execution_id(2)) && body.contains("\"watched\":2") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (_, metrics) = http(addr, "GET", "/metrics").await;
    signal(&child, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits within 10 s")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .await
        .expect("stdout");
    let mut log = String::new();
    while let Ok(line) = logs.try_recv() {
        log.push_str(&line);
        log.push('\n');
    }
    assert!(log.contains("watchlist reloaded"), "{log}");
    assert!(log.contains("SIGTERM"), "{log}");
    for text in [&stdout, &log, &metrics] {
        for leak in [SECRET, SESSION] {
            assert!(
                !text.contains(leak),
                "a secret leaked into the output:\n{text}"
            );
        }
    }
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systemd_notify_protocol_sends_ready_watchdog_and_stopping() {
    let script = scenario(vec![scripted("daily-orders", 1, &[(0, "IN_PROGRESS")])]);
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), FAST, &script);
    let socket_path = ws.path("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).expect("notify socket");

    let mut cmd = flowwatch(&["run", "--config", &config.to_string_lossy()]);
    against(&mut cmd, &fake);
    cmd.env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let started = tokio::time::Instant::now();
    let mut child = cmd.spawn().expect("spawn flowwatch");

    let mut messages: Vec<(Duration, String)> = Vec::new();
    let mut buf = vec![0u8; 4096];
    let receive = |socket: &tokio::net::UnixDatagram, buf: &mut Vec<u8>| {
        let len = socket.try_recv(buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..len]).to_string())
    };
    // Collect for three seconds: READY once, then a WATCHDOG about every half second.
    while started.elapsed() < Duration::from_secs(3) {
        let _ = tokio::time::timeout(Duration::from_millis(50), socket.readable()).await;
        while let Some(m) = receive(&socket, &mut buf) {
            messages.push((started.elapsed(), m));
        }
    }
    signal(&child, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    while let Some(m) = receive(&socket, &mut buf) {
        messages.push((started.elapsed(), m));
    }

    let ready: Vec<_> = messages
        .iter()
        .filter(|(_, m)| m.lines().any(|l| l == "READY=1"))
        .collect();
    assert_eq!(ready.len(), 1, "{messages:?}");
    assert!(
        ready[0].1.contains("STATUS=watching 1 executions"),
        "{messages:?}"
    );
    let pings: Vec<Duration> = messages
        .iter()
        .filter(|(_, m)| m.trim() == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    assert!(
        pings.len() >= 4,
        "WATCHDOG=1 at half of WATCHDOG_USEC (0.5 s) for 3 s: {messages:?}"
    );
    let gaps: Vec<f64> = pings
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    assert!(
        gaps.iter().all(|g| *g <= 1.0),
        "never a full watchdog interval without a ping: {gaps:?}"
    );
    assert!(
        messages
            .last()
            .is_some_and(|(_, m)| m.contains("STOPPING=1")),
        "{messages:?}"
    );
    fake.stop().await;
}

/// Every output of a run that goes through errors, retries, reloads and trace logging.
async fn outputs_of_a_troubled_run(extra_env: &[(&str, &str)]) -> Vec<(String, String)> {
    use flowwatch_fake::Fault;
    let script = scenario(vec![
        with_fault(
            scripted("throttled", 1, &[(0, "IN_PROGRESS"), (2, "SUCCEEDED")]),
            0,
            Some(1),
            1.0,
            api_error("ThrottlingException"),
        ),
        with_fault(
            scripted("denied", 2, &[(0, "IN_PROGRESS"), (2, "FAILED")]),
            0,
            Some(1),
            1.0,
            api_error("AccessDeniedException"),
        ),
        with_fault(
            scripted("broken", 3, &[(0, "IN_PROGRESS"), (2, "SUCCEEDED")]),
            0,
            Some(1),
            1.0,
            Fault::Reset,
        ),
        with_fault(
            scripted("invalid", 4, &[(0, "IN_PROGRESS")]),
            0,
            None,
            1.0,
            api_error("ValidationException"),
        ),
        scripted("ghost", 5, &[]),
    ]);
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), FAST, &script);
    let mut cmd = flowwatch(&["run", "--config", &config.to_string_lossy()]);
    against(&mut cmd, &fake);
    cmd.env("FLOWWATCH_LOG__LEVEL", "trace")
        .env("FLOWWATCH_EVENTS__STDOUT", "true")
        .env("DATABASE_PASSWORD", SECRET);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn");
    // Let every path run, including the NOT_FOUND grace (3 s) and a refused reload.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut outputs = Vec::new();
    signal(&child, "TERM");
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("exits")
        .expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    outputs.push((
        "stdout".to_string(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    ));
    outputs.push((
        "events file".to_string(),
        std::fs::read_to_string(ws.path("events.jsonl")).unwrap_or_default(),
    ));
    outputs.push(("stderr".to_string(), stderr));
    fake.stop().await;
    outputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_logs_or_events_even_through_errors_and_trace_logging() {
    // `log.level = "trace"` (bare) turns flowwatch's own logging all the way up; the SDK stays
    // at info, so not even the access key id shows.
    for (name, text) in outputs_of_a_troubled_run(&[]).await {
        for leak in [SECRET, SESSION, "AKIDTESTMARKER"] {
            assert!(!text.contains(leak), "{leak} leaked into {name}:\n{text}");
        }
        if name == "stderr" {
            for path in [
                "throttled",
                "access denied",
                "transport error",
                "ValidationException",
                "NOT_FOUND",
            ] {
                assert!(
                    text.contains(path),
                    "the run went through {path:?}:\n{text}"
                );
            }
        }
    }
    // RUST_LOG=trace opens the SDK's own trace logging: its debug output names the access key id
    // (an identifier, as AWS treats it), but the secret key and session token stay redacted.
    for (name, text) in outputs_of_a_troubled_run(&[("RUST_LOG", "trace")]).await {
        for leak in [SECRET, SESSION] {
            assert!(
                !text.contains(leak),
                "{leak} leaked into {name} with RUST_LOG=trace"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_carry_no_credentials() {
    let script = scenario(vec![with_fault(
        scripted("denied", 1, &[(0, "IN_PROGRESS")]),
        0,
        None,
        1.0,
        api_error("AccessDeniedException"),
    )]);
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    // A queue whose URLs carry credentials, on a port nothing listens on: receiving fails and
    // is logged with the queue's URL, and /status shows it.
    let queue = format!("http://probe:{QUEUE_PASSWORD}@127.0.0.1:{}", free_port());
    let push = format!(
        "[push]\nqueue_url = \"{queue}/123456789012/events\"\nendpoint_url = \"{queue}\"\n"
    );
    let config = ws.config(&fake.endpoint_url(), &format!("{FAST}{push}"), &script);
    let (child, addr, mut logs) = spawn_daemon(&config, &fake, "trace").await;
    let mut log_lines = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !log_lines
        .iter()
        .any(|l: &String| l.contains("cannot receive pushed events"))
    {
        match tokio::time::timeout_at(deadline, logs.recv()).await {
            Ok(Some(line)) => log_lines.push(line),
            _ => panic!("no failed receive was logged:\n{}", log_lines.join("\n")),
        }
    }
    let status = http(addr, "GET", "/status").await.1;
    assert!(
        status.contains("http://127.0.0.1:") && status.contains("/123456789012/events"),
        "/status shows the queue without its credentials:\n{status}"
    );
    for path in ["/status", "/metrics", "/readyz", "/livez", "/nope"] {
        let (_, body) = http(addr, "GET", path).await;
        for leak in [SECRET, SESSION, "AKIDTESTMARKER", QUEUE_PASSWORD] {
            assert!(!body.contains(leak), "{leak} leaked into {path}:\n{body}");
        }
    }
    let logged = log_lines.join("\n");
    for leak in [SECRET, SESSION, QUEUE_PASSWORD] {
        assert!(
            !logged.contains(leak),
            "{leak} leaked into the log:\n{logged}"
        );
    }
    let (code, body) = http(addr, "POST", "/-/reload").await;
    assert_eq!(code, 200, "{body}");
    assert!(!body.contains(SECRET));
    signal(&child, "TERM");
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_state_directory_exits_3_naming_the_first() {
    let script = scenario(vec![scripted("daily-orders", 1, &[(0, "IN_PROGRESS")])]);
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), FAST, &script);
    let (mut first, _, _) = spawn_daemon(&config, &fake, "info").await;
    let pid = first.id().expect("pid");

    let mut second = flowwatch(&["run", "--config", &config.to_string_lossy()]);
    against(&mut second, &fake);
    let (code, stdout, stderr) = output(&mut second).await;
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "another flowwatch (pid {pid}) is using the state directory"
        )),
        "{stderr}"
    );
    assert!(
        stdout.is_empty(),
        "the second daemon wrote no event: {stdout}"
    );

    // Once the first is gone (even by SIGKILL), the directory is free again.
    first
        .kill()
        .await
        .expect("the first daemon is killed and reaped");
    let (mut third, addr, _) = spawn_daemon(&config, &fake, "info").await;
    assert_eq!(http(addr, "GET", "/livez").await.0, 200);
    let _ = third.start_kill();
}

/// The ids of the events in `path` (none when it does not exist).
fn event_ids(path: &Path) -> Vec<String> {
    read_events(path)
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_string))
        .collect()
}

async fn wait_for_event(path: &Path, suffix: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !event_ids(path).iter().any(|id| id.ends_with(suffix)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no event ending {suffix} in {}: {:?}",
            path.display(),
            event_ids(path)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_file_follows_log_rotation_by_rename_and_sighup_or_by_deletion() {
    let script = scenario(vec![
        scripted("daily-orders", 1, &[(0, "IN_PROGRESS"), (10, "SUCCEEDED")]),
        scripted("daily-orders", 2, &[(0, "IN_PROGRESS"), (20, "FAILED")]),
    ]);
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), FAST, &script);
    let (child, _, _logs) = spawn_daemon(&config, &fake, "info").await;
    let events = ws.path("events.jsonl");
    let rotated = ws.path("events.jsonl.1");
    wait_for_event(&events, &format!("{}/IN_PROGRESS", execution_id(2))).await;

    // logrotate's default: rename, then SIGHUP. The file reappears at once, empty.
    std::fs::rename(&events, &rotated).expect("rename");
    signal(&child, "HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !events.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reopened on SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_event(&events, &format!("{}/SUCCEEDED", execution_id(1))).await;
    assert_eq!(
        event_ids(&rotated).len(),
        2,
        "the rotated file keeps what it had"
    );

    // Deleted without a signal: the next event notices and goes to a new file at the path.
    std::fs::remove_file(&events).expect("delete");
    wait_for_event(&events, &format!("{}/FAILED", execution_id(2))).await;
    assert_eq!(event_ids(&events).len(), 1, "{:?}", event_ids(&events));
    drop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_whose_stderr_reader_goes_away_keeps_watching() {
    let script = scenario(vec![scripted(
        "daily-orders",
        1,
        &[(0, "IN_PROGRESS"), (3, "SUCCEEDED")],
    )]);
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), FAST, &script);
    // Dropping the log receiver ends the task reading stderr: the pipe closes, and every later
    // log line fails to write.
    let (child, addr, logs) = spawn_daemon(&config, &fake, "debug").await;
    drop(logs);
    wait_for_event(
        &ws.path("events.jsonl"),
        &format!("{}/SUCCEEDED", execution_id(1)),
    )
    .await;
    assert_eq!(http(addr, "GET", "/livez").await.0, 200);
    drop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once_without_waiting_for_the_drain() {
    // From 1 s on every poll hangs, so the first SIGTERM waits up to 5 s for the drain.
    let hanging = with_fault(
        scripted("daily-orders", 1, &[(0, "IN_PROGRESS")]),
        1,
        None,
        1.0,
        flowwatch_fake::Fault::Hang,
    );
    let script = scenario(vec![hanging]);
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let slow = FAST.replace("request_timeout = \"2s\"", "request_timeout = \"30s\"");
    let config = ws.config(&fake.endpoint_url(), &slow, &script);
    let (mut child, _, _logs) = spawn_daemon(&config, &fake, "info").await;
    // Wait until a poll hangs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while fake.stats().requests == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no poll reached the fake"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&child, "TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = tokio::time::Instant::now();
    signal(&child, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    assert!(
        second.elapsed() < Duration::from_secs(2),
        "exited {:?} after the second SIGTERM",
        second.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_nobody_reads_stalls_neither_the_event_file_nor_shutdown() {
    // 300 executions that succeed: some 250 KB of events, far past a 64 KiB pipe.
    const N: usize = 300;
    let script = scenario(
        (1..=N)
            .map(|n| scripted("daily-orders", n, &[(0, "IN_PROGRESS"), (2, "SUCCEEDED")]))
            .collect(),
    );
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), FAST, &script);
    ws.edit(&config, "stdout = false", "stdout = true");
    // spawn_daemon pipes stdout; nobody ever reads it.
    let (mut child, addr, mut logs) = spawn_daemon(&config, &fake, "info").await;
    let events = ws.path("events.jsonl");
    let succeeded = |ids: &[String]| ids.iter().filter(|id| id.ends_with("/SUCCEEDED")).count();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while succeeded(&event_ids(&events)) < N {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the event file has {} of {N} SUCCEEDED events",
            succeeded(&event_ids(&events))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ids = event_ids(&events);
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no event twice in the file");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = http(addr, "GET", "/readyz").await;
        if code == 503 && body.contains("event sink stdout has been blocked in a write") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never said: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let sigterm = tokio::time::Instant::now();
    signal(&child, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("stops within 10 s with stdout stalled")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    println!("SIGTERM with stdout stalled took {:?}", sigterm.elapsed());
    // Only the stalled sink is said not to have finished: the file's flush did not wait for it.
    let mut lines = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(5), logs.recv()).await {
        lines.push(line);
    }
    let unfinished: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("did not finish in time"))
        .collect();
    assert!(
        unfinished.iter().all(|l| l.contains("\"sink\":\"stdout\"")),
        "{unfinished:?}"
    );
}

/// The fake with one execution that runs for good, and a workspace whose config points at it.
async fn one_running_execution() -> (FakeServer, Workspace, std::path::PathBuf) {
    let script = scenario(vec![scripted("f", 1, &[(0, "IN_PROGRESS")])]);
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), FAST, &script);
    (fake, ws, config)
}

/// flowwatch under `ulimit` settings, as a shell applies them before exec.
fn flowwatch_under_ulimit(limits: &str, config: &Path) -> Command {
    let mut cmd = Command::new("bash");
    cmd.args([
        "-c",
        &format!("{limits} && exec \"$0\" run --config \"$1\""),
        BIN,
        &config.to_string_lossy(),
    ])
    .kill_on_drop(true);
    for (name, _) in std::env::vars() {
        if is_inherited_override(&name) {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// The soft and hard `Max open files` of a process, from /proc.
fn open_file_limits(child: &Child) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id().expect("running")))
        .expect("/proc/<pid>/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("the open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[3].to_string(), fields[4].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_file_limit_is_raised_and_a_short_one_is_named_and_logged_once_a_period() {
    let (fake, _ws, config) = one_running_execution().await;

    // A soft limit under a roomy hard one is raised to it.
    let cmd = flowwatch_under_ulimit("ulimit -Sn 100 && ulimit -Hn 4096", &config);
    let (child, _addr, _logs) = spawn_command(cmd, &fake, "info").await;
    assert_eq!(open_file_limits(&child), ("4096".into(), "4096".into()));
    signal(&child, "TERM");
    let _ = child.wait_with_output().await;

    // A hard limit under server.max_connections (1024) is named at start-up, and accepting
    // past it fails quietly: one line a period, not ten a second.
    let cmd = flowwatch_under_ulimit("ulimit -n 64", &config);
    let (child, addr, mut logs) = spawn_command(cmd, &fake, "info").await;
    let mut flood = Vec::new();
    for _ in 0..80 {
        if let Ok(stream) = tokio::net::TcpStream::connect(addr).await {
            flood.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(flood);
    signal(&child, "TERM");
    let mut lines = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(10), logs.recv()).await {
        lines.push(line);
    }
    let text = lines.join("\n");
    assert!(
        text.contains("the open-file limit is 64 (the hard limit)"),
        "the short limit is named:\n{text}"
    );
    let accept_failures = lines
        .iter()
        .filter(|l| l.contains("cannot accept HTTP connections"))
        .count();
    assert_eq!(
        accept_failures, 1,
        "3 s of failing accepts (every 100 ms) log one line:\n{text}"
    );
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watchlist_replaced_by_a_fifo_is_refused_on_sighup_and_sigterm_still_works() {
    let (fake, ws, config) = one_running_execution().await;
    let (child, addr, mut logs) = spawn_daemon(&config, &fake, "info").await;
    let watchlist = ws.path("watchlist.toml");
    std::fs::remove_file(&watchlist).expect("rm");
    let made = std::process::Command::new("mkfifo")
        .arg(&watchlist)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    signal(&child, "HUP");
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = logs.recv().await {
            if line.contains("reload refused") {
                return line;
            }
        }
        String::new()
    })
    .await
    .expect("the reload is refused at once");
    assert!(refused.contains("not a regular file (a FIFO)"), "{refused}");
    let probe = tokio::time::timeout(Duration::from_secs(1), http(addr, "GET", "/livez"))
        .await
        .expect("/livez answers within 1 s");
    assert_eq!(probe.0, 200);
    signal(&child, "TERM");
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("SIGTERM still stops it")
        .expect("output");
    assert_eq!(out.status.code(), Some(0));
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_calls_count_as_credentials_errors_and_never_reach_the_api() {
    let script = scenario(vec![scripted("daily-orders", 1, &[(0, "IN_PROGRESS")])]);
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), FAST, &script);
    let mut cmd = flowwatch(&["run", "--config", &config.to_string_lossy()]);
    // No credentials anywhere the default chain looks.
    cmd.env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/flowwatch-test")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/flowwatch-test")
        .env("FLOWWATCH_LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn flowwatch");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = listening_address(&mut lines, |_| {}).await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let count = |metrics: &str, outcome: &str| {
        sample(
            metrics,
            "flowwatch_api_requests_total",
            &[
                ("operation", "GetDataIntegrationFlowExecution"),
                ("outcome", outcome),
            ],
        )
        .unwrap_or_default()
    };
    eventually(Duration::from_secs(20), "a credentials_error", || async {
        count(&http(addr, "GET", "/metrics").await.1, "credentials_error") >= 1.0
    })
    .await;
    let metrics = http(addr, "GET", "/metrics").await.1;
    assert_eq!(count(&metrics, "transport_error"), 0.0, "{metrics}");
    assert_eq!(fake.stats().requests, 0, "no call reached the API");
    let (code, body) = http(addr, "GET", "/status").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("no usable AWS credentials"),
        "the execution's last error says why: {body}"
    );
    // Retried at max_interval (1 s here), not on the 200 ms ladder: at most about one call a
    // second.
    let before = count(&metrics, "credentials_error");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = count(&http(addr, "GET", "/metrics").await.1, "credentials_error");
    assert!(
        (1.0..=5.0).contains(&(after - before)),
        "{before} then {after} in 3 s"
    );
    let _ = child.start_kill();
    fake.stop().await;
}

#[tokio::test]
async fn check_config_names_each_instance_s_region_account_and_credentials() {
    let ws = Workspace::new();
    ws.write_watchlist([("daily-orders", execution_id(1).as_str())].into_iter());
    let config = ws.write(
        "flowwatch.toml",
        "watchlist = \"watchlist.toml\"\n[aws]\nregion = \"us-east-1\"\n\n\
         [[aws.instance]]\nid = \"8850c54e-e187-4fa7-89d4-6370f165174d\"\nregion = \"eu-central-1\"\n\
         role_arn = \"arn:aws:iam::222222222222:role/flowwatch-reader\"\nexternal_id = \"not-shown-ext\"\n\n\
         [[aws.instance]]\nid = \"9960d65f-f298-4fa7-89d4-6370f165174e\"\n",
    );
    let (code, out, err) = output(&mut flowwatch(&[
        "check-config",
        "--config",
        &config.to_string_lossy(),
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("instance 8850c54e-e187-4fa7-89d4-6370f165174d: region eu-central-1, account 222222222222, assumes arn:aws:iam::222222222222:role/flowwatch-reader with an external id, at most 5 requests/s"),
        "{out}"
    );
    assert!(
        out.contains("instance 9960d65f-f298-4fa7-89d4-6370f165174e: region us-east-1, signed with the base credentials, at most 5 requests/s"),
        "{out}"
    );
    assert!(!out.contains("not-shown-ext"), "{out}");
}
