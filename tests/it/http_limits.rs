//! The HTTP server bounds what it accepts: header size and count, request bodies, slow clients
//! and the number of connections, and keeps serving /metrics and /livez through all of it.
//! The daemon runs in-process on tokio's paused clock.

use std::time::Duration;

use flowwatch::testing::limits;
use flowwatch_fake::FakeServer;
use flowwatch_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn daemon() -> (FakeServer, Workspace, Daemon) {
    let script = scenario(vec![scripted("f", 1, &[(0, "IN_PROGRESS")])]);
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), POLLING, &script);
    let daemon = Daemon::start(&config, &fake, false).await;
    (fake, ws, daemon)
}

/// Sends raw bytes and returns what the server answered before closing (or within 30 s).
async fn raw(daemon: &Daemon, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(daemon.addr).await.expect("connect");
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).to_string()
}

async fn still_serving(daemon: &Daemon) {
    assert_eq!(daemon.get("/livez").await.0, 200);
    let (code, body) = daemon.get("/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("flowwatch_build_info"));
}

#[tokio::test(start_paused = true)]
async fn oversized_and_too_many_headers_get_431() {
    let (fake, _ws, daemon) = daemon().await;
    let big = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(limits::MAX_HEADER_BYTES * 2)
    );
    let answer = raw(&daemon, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let many: String = (0..limits::MAX_HEADERS + 10)
        .map(|i| format!("X-H{i}: v\r\n"))
        .collect();
    let answer = raw(
        &daemon,
        format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    still_serving(&daemon).await;
    daemon.stop().await;
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn large_or_unbounded_bodies_get_413() {
    let (fake, _ws, daemon) = daemon().await;
    let answer = raw(&daemon, b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let answer = raw(&daemon, b"POST /-/reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let answer = raw(&daemon, b"POST /-/reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "chunked after another coding: {answer}"
    );
    still_serving(&daemon).await;
    daemon.stop().await;
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_client_is_disconnected_after_the_header_timeout() {
    let (fake, _ws, daemon) = daemon().await;
    let mut slow = TcpStream::connect(daemon.addr).await.expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("send");
    let started = tokio::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), slow.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the server must close a connection that never finishes its headers"
    );
    let waited = started.elapsed();
    assert!(
        waited >= limits::HEADER_READ_TIMEOUT
            && waited < limits::HEADER_READ_TIMEOUT + Duration::from_secs(2),
        "{waited:?}"
    );
    still_serving(&daemon).await;
    daemon.stop().await;
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn connections_beyond_the_limit_are_turned_away_counted_and_idle_ones_expire() {
    const LIMIT: usize = 16;
    let script = scenario(vec![scripted("f", 1, &[(0, "IN_PROGRESS")])]);
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), POLLING, &script);
    ws.edit(
        &config,
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\nmax_connections = {LIMIT}"),
    );
    let daemon = Daemon::start(&config, &fake, false).await;
    let mut idle = Vec::new();
    for _ in 0..LIMIT {
        idle.push(TcpStream::connect(daemon.addr).await.expect("connect"));
    }
    // Let the server accept them all.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(daemon.addr).await.expect("connect");
    let _ = extra
        .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), extra.read_to_end(&mut answer)).await;
    assert!(
        answer.is_empty(),
        "a connection past the limit is closed unanswered: {}",
        String::from_utf8_lossy(&answer)
    );
    // The idle ones sent no request: they are closed after the header timeout, and slots free up.
    tokio::time::sleep(limits::HEADER_READ_TIMEOUT + Duration::from_secs(1)).await;
    still_serving(&daemon).await;
    let metrics = daemon.metrics().await;
    let closed = |reason: &str| {
        sample(
            &metrics,
            "flowwatch_http_connections_closed_total",
            &[("reason", reason)],
        )
        .unwrap_or_default()
    };
    assert_eq!(closed("limit"), 1.0, "{metrics}");
    assert_eq!(closed("header_timeout"), LIMIT as f64, "{metrics}");
    drop(idle);
    daemon.stop().await;
    fake.stop().await;
}

/// Keeps `count` connections open that never send a byte, as a flood of idle clients would:
/// each one the server closes is opened again at once. Returns once all `count` are connected.
async fn idle_flood(addr: std::net::SocketAddr, count: usize) -> tokio::task::JoinSet<()> {
    let connected = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..count {
        let connected = connected.clone();
        flood.spawn(async move {
            let mut first = true;
            loop {
                let Ok(mut stream) = TcpStream::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                if std::mem::take(&mut first) {
                    connected.add_permits(1);
                }
                let mut byte = [0u8; 1];
                let _ = stream.read(&mut byte).await;
            }
        });
    }
    let all = u32::try_from(count).expect("a small flood");
    let _ = tokio::time::timeout(Duration::from_secs(30), connected.acquire_many(all))
        .await
        .expect("every flood connection is accepted");
    flood
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_answered_while_300_idle_connections_are_open() {
    let (fake, _ws, daemon) = daemon().await;
    let flood = idle_flood(daemon.addr, 300).await;
    let mut answered = 0;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = std::time::Instant::now();
        let probe = tokio::time::timeout(Duration::from_secs(3), daemon.get("/livez")).await;
        if matches!(probe, Ok((200, _))) {
            answered += 1;
        }
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(answered, 10, "slowest probe {slowest:?}");
    assert!(slowest < Duration::from_secs(3), "{slowest:?}");
    drop(flood);
    daemon.stop().await;
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn reload_over_http_is_off_unless_enable_lifecycle_says_so() {
    let script = scenario(vec![scripted("f", 1, &[(0, "IN_PROGRESS")])]);
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), POLLING, &script);
    ws.edit(&config, "enable_lifecycle = true\n", "");
    let daemon = Daemon::start(&config, &fake, false).await;
    let (code, body) = http(daemon.addr, "POST", "/-/reload").await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("server.enable_lifecycle = true"), "{body}");
    assert!(
        body.contains("SIGHUP"),
        "the hint names what still works: {body}"
    );
    let reloads = sample(
        &daemon.metrics().await,
        "flowwatch_config_reloads_total",
        &[("result", "success")],
    );
    assert_eq!(reloads, Some(0.0), "nothing was reloaded");
    daemon.stop().await;
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn status_lists_one_page_of_executions_at_a_time() {
    let script = scenario(vec![
        scripted("f", 1, &[(0, "IN_PROGRESS")]),
        scripted("f", 2, &[(0, "IN_PROGRESS")]),
        scripted("g", 3, &[(0, "IN_PROGRESS")]),
    ]);
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let config = ws.config(&fake.endpoint_url(), POLLING, &script);
    let daemon = Daemon::start(&config, &fake, false).await;
    let page = |query: &'static str| {
        let addr = daemon.addr;
        async move {
            let (code, body) = http(addr, "GET", &format!("/status{query}")).await;
            (
                code,
                serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default(),
            )
        }
    };
    let ids = |doc: &serde_json::Value| -> Vec<String> {
        doc["executions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["execution_id"].as_str().map(str::to_string))
            .collect()
    };
    let (_, all) = page("").await;
    assert_eq!(ids(&all).len(), 3);
    assert_eq!(all["executions_total"], 3);
    assert_eq!(all["next_offset"], serde_json::Value::Null);
    let (_, second) = page("?limit=1&offset=1").await;
    assert_eq!(ids(&second), [execution_id(2)]);
    assert_eq!(second["next_offset"], 2);
    assert_eq!(second["watched"], 3, "the counts cover every execution");
    let flow = format!("?flow={INSTANCE}/g");
    let addr = daemon.addr;
    let (_, body) = http(addr, "GET", &format!("/status{flow}")).await;
    let of_g: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(ids(&of_g), [execution_id(3)]);
    let (code, body) = http(addr, "GET", "/status?limit=lots").await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("limit must be a whole number"), "{body}");
    daemon.stop().await;
    fake.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_client_still_sending_its_headers_holds_shutdown_no_longer_than_the_grace() {
    let (fake, _ws, daemon) = daemon().await;
    let mut slow = TcpStream::connect(daemon.addr).await.expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("partial headers");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = tokio::time::Instant::now();
    daemon.stop().await;
    let took = asked.elapsed();
    assert_eq!(limits::SHUTDOWN_GRACE, Duration::from_secs(3));
    assert!(
        took <= limits::SHUTDOWN_GRACE + Duration::from_millis(100),
        "SIGTERM took {took:?} with a slow client"
    );
    fake.stop().await;
}
