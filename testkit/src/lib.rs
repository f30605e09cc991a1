//! Helpers shared by flowwatch's integration tests: a daemon started in-process against the fake
//! Supply Chain API (through the real SDK over HTTP), and a minimal HTTP client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flowwatch::ExitWhen;
use flowwatch::Settings;
use flowwatch::Shutdown;
use flowwatch::testing::local_client;
use flowwatch::{Error, Finish, RunOptions};
use flowwatch_fake::{FakeServer, Scenario, ScriptedExecution, Step};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

pub mod moto;

pub const INSTANCE: &str = "8850c54e-e187-4fa7-89d4-6370f165174d";

/// The n-th test execution id.
pub fn execution_id(n: usize) -> String {
    format!("a1b2c3d4-0000-4000-8000-{n:012}")
}

/// A scripted execution of `flow` with the given `(seconds, status)` timeline.
pub fn scripted(flow: &str, n: usize, timeline: &[(u64, &str)]) -> ScriptedExecution {
    ScriptedExecution {
        instance_id: INSTANCE.to_string(),
        flow_name: flow.to_string(),
        execution_id: execution_id(n),
        timeline: timeline
            .iter()
            .map(|(at, status)| Step {
                at: Duration::from_secs(*at),
                status: status.to_string(),
                message: (*status == "FAILED").then(|| format!("execution {n} failed")),
            })
            .collect(),
        faults: Vec::new(),
        source: None,
        diagnostic_reports_root_s3_uri: None,
        started_before: None,
        ran_for: None,
    }
}

pub fn scenario(executions: Vec<ScriptedExecution>) -> Scenario {
    Scenario {
        executions,
        ..Scenario::default()
    }
}

/// Polling settings for tests: fast, but with the same shape as production.
pub const POLLING: &str = r#"
[polling]
initial_interval = "1s"
max_interval = "8s"
multiplier = 2.0
max_requests_per_second = 20.0
max_in_flight = 8
request_timeout = "2s"
not_found_grace = "20s"
retain_terminal = "30s"
"#;

/// A temporary directory holding a config, a watchlist and the event file.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write test file");
        path
    }

    /// Writes a config pointing at `endpoint`, with `polling` (a `[polling]` table) and a
    /// watchlist of every execution in `scenario`.
    pub fn config(&self, endpoint: &str, polling: &str, scenario: &Scenario) -> PathBuf {
        self.write_watchlist(
            scenario
                .executions
                .iter()
                .map(|e| (e.flow_name.as_str(), e.execution_id.as_str())),
        );
        self.write(
            "flowwatch.toml",
            &format!(
                "watchlist = \"watchlist.toml\"\n[server]\nlisten = \"127.0.0.1:0\"\nenable_lifecycle = true\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n{polling}\n[state]\npath = \"{dir}\"\n[events]\nstdout = false\nfile = \"{dir}/events.jsonl\"\n[log]\nlevel = \"debug\"\n",
                dir = self.dir.path().display()
            ),
        )
    }

    pub fn write_watchlist<'a>(
        &self,
        entries: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> PathBuf {
        let mut text = String::new();
        for (flow, execution) in entries {
            text.push_str(&format!(
                "[[execution]]\ninstance_id = \"{INSTANCE}\"\nflow_name = \"{flow}\"\nexecution_id = \"{execution}\"\nlabels = {{ team = \"tests\" }}\n\n"
            ));
        }
        self.write("watchlist.toml", &text)
    }

    /// Replaces `from` with `to` in a file the workspace wrote (a config key, usually).
    pub fn edit(&self, path: &Path, from: &str, to: &str) {
        let text = std::fs::read_to_string(path).expect("read test file");
        assert!(text.contains(from), "{from:?} is not in {}", path.display());
        std::fs::write(path, text.replace(from, to)).expect("write test file");
    }

    /// Moves the config's state directory (written by [`Workspace::config`]) to `dir`.
    pub fn move_state(&self, config: &Path, dir: &Path) {
        self.edit(
            config,
            &format!("[state]\npath = \"{}\"", self.dir.path().display()),
            &format!("[state]\npath = \"{}\"", dir.display()),
        );
    }

    /// Every event written so far. The file sink writes from a thread of its own, in real time
    /// even on a paused test clock: the file is read until it stops growing (two reads 20 ms
    /// apart agree), so what the daemon committed has reached it.
    pub fn events(&self) -> Vec<Value> {
        let path = self.path("events.jsonl");
        let mut last = read_events(&path);
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(20));
            let now = read_events(&path);
            if now.len() == last.len() {
                return now;
            }
            last = now;
        }
        last
    }
}

pub fn read_events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every event line is JSON"))
        .collect()
}

/// Whether a variable of the test's own environment must not reach a flowwatch it starts:
/// flowwatch's overrides, AWS settings and credentials, and RUST_LOG.
pub fn is_inherited_override(name: &str) -> bool {
    name.starts_with("FLOWWATCH_") || name.starts_with("AWS_") || name == "RUST_LOG"
}

/// A daemon running in this test's runtime.
pub struct Daemon {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    pub task: JoinHandle<Result<Finish, Error>>,
}

impl Daemon {
    pub async fn start(config: &Path, fake: &FakeServer, exit_when_done: bool) -> Self {
        let settings = Settings::load(config).expect("valid test config");
        let client = local_client(&fake.endpoint_url(), settings.polling.request_timeout);
        Self::start_with(config, client, exit_when_done).await
    }

    /// The daemon on `config` with a client of the test's own.
    pub async fn start_with<C: flowwatch::FlowExecutions>(
        config: &Path,
        client: C,
        exit_when_done: bool,
    ) -> Self {
        let settings = Settings::load(config).expect("valid test config");
        let client = Arc::new(client);
        let push_queue = settings
            .push
            .as_ref()
            .map(|push| flowwatch::PushQueue::local_queue(push, settings.polling.request_timeout));
        let shutdown = Shutdown::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let options = RunOptions {
            exit_when: if exit_when_done {
                ExitWhen::AllDone
            } else {
                ExitWhen::Never
            },
            reload_on_sighup: false,
            bound: Some(tx),
            push_queue,
            config_reload: None,
            term: None,
        };
        let task = tokio::spawn(flowwatch::run_with(
            settings,
            client,
            options,
            shutdown.clone(),
        ));
        let addr = rx.await.expect("the daemon starts listening");
        Self {
            addr,
            shutdown,
            task,
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http(self.addr, "GET", path).await
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.1
    }

    pub async fn status(&self) -> Value {
        let (code, body) = self.get("/status").await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("/status is JSON")
    }

    /// The `/status` entry of execution `n`.
    pub async fn execution(&self, n: usize) -> Value {
        let id = execution_id(n);
        self.status().await["executions"]
            .as_array()
            .and_then(|all| {
                all.iter()
                    .find(|e| e["execution_id"] == id.as_str())
                    .cloned()
            })
            .unwrap_or(Value::Null)
    }

    pub async fn stop(self) -> Finish {
        self.shutdown.request();
        self.task
            .await
            .expect("daemon task")
            .expect("daemon result")
    }

    pub async fn finish(self) -> Finish {
        self.task
            .await
            .expect("daemon task")
            .expect("daemon result")
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns the status code and body.
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    try_http(addr, method, path)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} at {addr}: {e}"))
}

/// [`http`], with a failed connection or exchange as an error rather than a panic: for a
/// server that is between two listeners.
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

/// The body of a `Transfer-Encoding: chunked` response (`/metrics` streams its body).
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if size == 0 {
            break;
        }
        body.push_str(after.get(..size).expect("a whole chunk"));
        rest = after.get(size + 2..).unwrap_or_default();
    }
    body
}

/// The value of one sample in a Prometheus exposition, by metric name and label fragments.
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            return None;
        }
        if !labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            return None;
        }
        rest.rsplit(' ').next()?.parse().ok()
    })
}

/// Waits (in test time) until `check` holds, polling every 100 ms, or panics after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Adds a fault window `[from, until)` seconds to an execution's script.
pub fn with_fault(
    mut execution: ScriptedExecution,
    from: u64,
    until: Option<u64>,
    probability: f64,
    fault: flowwatch_fake::Fault,
) -> ScriptedExecution {
    execution.faults.push(flowwatch_fake::FaultWindow {
        from: Duration::from_secs(from),
        until: until.map(Duration::from_secs),
        probability,
        fault,
    });
    execution
}

/// A modelled error fault.
pub fn api_error(error_type: &str) -> flowwatch_fake::Fault {
    flowwatch_fake::Fault::Error {
        error_type: error_type.to_string(),
        http_status: None,
        message: None,
        retry_after_ms: None,
    }
}

/// Arrival times (seconds since the fake started) of the requests for execution `n`.
pub fn arrivals_of(fake: &FakeServer, n: usize) -> Vec<f64> {
    let id = execution_id(n);
    fake.stats()
        .arrivals
        .iter()
        .filter(|(_, e)| *e == id)
        .map(|(t, _)| t.as_secs_f64())
        .collect()
}

/// The most requests seen in any window of `window` seconds.
pub fn peak_in_window(arrivals: &[f64], window: f64) -> usize {
    let mut sorted = arrivals.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut peak = 0;
    let mut start = 0;
    for end in 0..sorted.len() {
        while sorted[end] - sorted[start] >= window {
            start += 1;
        }
        peak = peak.max(end - start + 1);
    }
    peak
}

/// A loopback port nothing listens on now, for a process the test starts (Prometheus,
/// Alertmanager, the flowwatch binary). It comes from below Linux's ephemeral range
/// (32768-60999), where every port-0 bind of the tests draws from, and never twice in one test
/// binary: a port handed out and released cannot be taken by another test's socket before the
/// process it is for binds it.
/// The lines a daemon logged so far.
pub type Log = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// The flowwatch binary `bin` on `config` with `env` (and no inherited AWS or flowwatch
/// settings, no profile, no instance metadata); returns it, its address and its log lines so
/// far.
pub async fn spawn_daemon(
    bin: &str,
    config: &Path,
    env: &[(&str, &str)],
) -> (tokio::process::Child, SocketAddr, Log) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut cmd = tokio::process::Command::new(bin);
    for (name, _) in std::env::vars() {
        if is_inherited_override(&name) {
            cmd.env_remove(name);
        }
    }
    cmd.args(["run", "--config", &config.to_string_lossy()])
        .envs(env.iter().copied())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/flowwatch-test")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/flowwatch-test")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn flowwatch");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let addr = listening_address(&mut lines, |_| {}).await;
    let log = Log::default();
    let kept = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            kept.lock().expect("log").push(line);
        }
    });
    (child, addr, log)
}

/// Sends signal `name` (`HUP`, `TERM`, …) to `child`.
pub fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid])
        .status()
        .expect("kill");
    assert!(status.success());
}

pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = (std::process::id() % 600) * 20;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(20_000 + (offset + n) % 12_000).unwrap_or(20_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Starts the first of `program` (alternative names of one tool) that exists, with its output
/// in `log`; killed when dropped. Panics, naming the Debian packages, when none is installed.
pub fn spawn_tool(program: &[&str], args: &[String], log: &Path) -> tokio::process::Child {
    let file = std::fs::File::create(log).expect("log file");
    for name in program {
        let mut cmd = tokio::process::Command::new(name);
        cmd.args(args)
            .stdout(std::process::Stdio::from(
                file.try_clone().expect("log file"),
            ))
            .stderr(std::process::Stdio::from(
                file.try_clone().expect("log file"),
            ))
            .kill_on_drop(true);
        if let Ok(child) = cmd.spawn() {
            return child;
        }
    }
    panic!(
        "{} is not installed: `apt-get install prometheus prometheus-alertmanager` (bash .ci/test does it)",
        program.join(" or ")
    );
}

/// The address a flowwatch binary logs (`log.format = "json"`) once it listens, read off its
/// stderr `lines` within 30 s; `seen` gets every line read on the way, that one included.
pub async fn listening_address<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    mut seen: impl FnMut(&str),
) -> SocketAddr {
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen(&line);
            let log: Value = serde_json::from_str(&line).unwrap_or_default();
            if log["message"] == "flowwatch is listening" {
                return log["addr"].as_str().and_then(|a| a.parse().ok());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("flowwatch logs its address")
}

/// A real Prometheus with `config` (prometheus.yml), on a free port, its data and log in `ws`;
/// killed when dropped. Returns it and its address.
pub fn spawn_prometheus(ws: &Workspace, config: &str) -> (tokio::process::Child, SocketAddr) {
    let port = free_port();
    let config = ws.write("prometheus.yml", config);
    let prometheus = spawn_tool(
        &["prometheus"],
        &[
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", ws.path("prom-data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ],
        &ws.path("prometheus.log"),
    );
    (prometheus, SocketAddr::from(([127, 0, 0, 1], port)))
}
