//! The performance benchmark: flowwatch (a release build, as its own process) against the fake
//! Supply Chain API with generated executions and a server-side rate limit, beside the fixed-interval
//! poller a user would otherwise write, against the same scenario and limit. It prints one table.
//!
//! ```text
//! cargo bench --bench scale                          # everything (about 12 minutes on 2 cores)
//! cargo bench --bench scale -- --sizes 1000,10000    # scale runs of these sizes only
//! cargo bench --bench scale -- --only efficiency     # the per-flow and uniform scenarios only
//! cargo bench --bench scale -- --only reload --sizes 100000   # /livez, /status and reloads at 100,000
//! cargo bench --bench scale -- --only scale --sizes 100000 --pollers lean
//!                                   # one poller: flowwatch, lean (per_execution=false), push
//!                                   # (events through the fake's SQS queue, N <= 10,000), baseline
//! FLOWWATCH_BENCH_TIMELINE=dir      # also write each run's requests per second to dir
//! FLOWWATCH_BENCH_WRAP="heaptrack -o /tmp/ht"   # run flowwatch under a profiler
//! FLOWWATCH_BENCH_SCRAPE_SECONDS=15              # scrape /metrics every 15 s, not every second
//! cargo bench --bench scale -- --only scale --sizes 10000 --pollers flowwatch,baseline --repeat 5
//!                                   # the scale runs five times over, each poller in turn
//! cargo bench --bench scale -- --only accounts --sizes 1000
//!                                   # ten accounts and regions of 1,000 executions each, one
//!                                   # throttled hard, beside one account (benches/scale/accounts.rs)
//! cargo bench --bench scale -- --only takeover --sizes 1000,10000
//!                                   # a standby's takeover from the shared table in moto's
//!                                   # DynamoDB: lease end to first poll (benches/scale/shared_state.rs)
//! cargo bench --bench scale -- --only state-cost --sizes 1000
//!                                   # CPU per execution on SQLite and on the shared table, and the
//!                                   # table's write units per execution
//! ```
//!
//! Columns: N; wall time until every execution was detected terminal; API calls (as the server
//! counted them, throttled ones included); calls per execution; throttled share; the answered
//! request rate while some execution still waited for its first answer (the backlog), and while
//! flowwatch was behind its own schedule (a due request waited over 1 s, read from
//! `flowwatch_schedule_lag_seconds` scraped every second), against the server's limit; p50/p95/max detection latency, from the fake's terminal time to the
//! moment the poller reported it (flowwatch: its event on stdout); peak RSS (VmHWM); CPU seconds
//! per 1,000 requests and CPU milliseconds per execution; the slowest `/metrics` scrape and its size; the status page (`GET /`),
//! fetched once when half the executions are detected, its time and size. Under the table, each
//! poller's CPU per 1,000 requests against the baseline's in the same pass, and with `--repeat`
//! the median of those ratios over the passes.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowwatch_fake::{
    Durations, EventPublishing, FakeQueue, FakeRateLimit, FakeServer, GENERATED_INSTANCE,
    Generated, Published, Scenario, generate,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

#[path = "scale/accounts.rs"]
mod accounts;
#[path = "scale/shared_state.rs"]
mod shared_state;

/// Who polls.
#[derive(Debug, Clone)]
enum Poller {
    /// flowwatch, with or without duration-aware scheduling and per-execution series.
    Flowwatch {
        adaptive: bool,
        per_execution: bool,
        max_rps: f64,
        max_in_flight: usize,
        /// Push through moto's EventBridge and SQS, with this share of events dropped.
        push: Option<f64>,
    },
    /// Every execution every `interval`, by `workers` tasks, SDK standard retries on.
    Baseline { interval: Duration, workers: usize },
}

impl Poller {
    fn label(&self) -> String {
        match self {
            Poller::Flowwatch {
                adaptive,
                per_execution,
                push,
                ..
            } => format!(
                "flowwatch{}{}{}",
                if *adaptive { "" } else { " (plain backoff)" },
                if *per_execution {
                    ""
                } else {
                    " (per_execution=false)"
                },
                push.map_or(String::new(), |drop| format!(
                    " push ({:.0} % of events dropped)",
                    drop * 100.0
                ))
            ),
            Poller::Baseline { interval, workers } => format!(
                "baseline {}s {}",
                interval.as_secs(),
                if *workers == 1 {
                    "sequential".to_string()
                } else {
                    format!("{workers} workers")
                }
            ),
        }
    }
}

#[derive(Debug, Clone)]
struct Run {
    scenario_name: &'static str,
    scenario: Generated,
    limit_rps: f64,
    poller: Poller,
    /// Give up after this long.
    timeout: Duration,
}

#[derive(Debug, Default)]
struct Row {
    label: String,
    scenario: String,
    n: usize,
    wall: f64,
    calls: u64,
    throttled: u64,
    backlog_rate: Option<f64>,
    behind_rate: Option<f64>,
    limit: f64,
    p50: f64,
    p95: f64,
    max: f64,
    undetected: usize,
    peak_rss_mib: f64,
    cpu_seconds: f64,
    scrape_ms: Option<f64>,
    scrape_bytes: Option<usize>,
    /// The status page, fetched once halfway: milliseconds and bytes.
    page: Option<(f64, usize)>,
    /// Which pass of `--repeat` measured it.
    pass: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--baseline-child") {
        let spec = args.get(i + 1).expect("--baseline-child takes a spec file");
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(baseline_child(Path::new(spec)));
        return;
    }
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let sizes: Vec<usize> = value("--sizes")
        .unwrap_or_else(|| "1000,10000,100000".to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let only = value("--only");
    let pollers: Option<Vec<String>> =
        value("--pollers").map(|p| p.split(',').map(|s| s.trim().to_string()).collect());
    let passes: usize = value("--repeat")
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let mut rows = Vec::new();
    runtime.block_on(async {
        if only.as_deref() == Some("reload") {
            for n in &sizes {
                reload_run(*n).await;
            }
            return;
        }
        if only.as_deref() == Some("state-cost") {
            for n in &sizes {
                shared_state::state_cost_runs(*n).await;
            }
            return;
        }
        if only.as_deref() == Some("takeover") {
            shared_state::takeover_header();
            for n in &sizes {
                shared_state::takeover_run(*n).await;
            }
            return;
        }
        if only.as_deref() == Some("accounts") {
            for n in &sizes {
                accounts::accounts_runs(*n).await;
            }
            return;
        }
        if only.as_deref() != Some("scale") {
            rows.extend(efficiency_runs().await);
        }
        if only.as_deref() != Some("efficiency") {
            // Pass after pass rather than size after size: a slow spell of the machine then
            // touches every size and poller alike.
            for pass in 0..passes {
                for n in &sizes {
                    let measured = scale_runs(*n, pollers.as_deref()).await;
                    rows.extend(measured.into_iter().map(|r| Row { pass, ..r }));
                }
            }
        }
    });
    if !rows.is_empty() {
        print_table(&rows);
    }
    println!(
        "\nmachine: {} cores, {}; whole benchmark {:.0} s",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        started.elapsed().as_secs_f64()
    );
}

/// The efficiency scenarios: 1,000 executions started together, 50 requests/s, run side by side
/// (each with its own fake) since the load is light and the durations set the wall time.
async fn efficiency_runs() -> Vec<Row> {
    let per_flow = Generated {
        count: 1000,
        flows: 5,
        seed: 20,
        durations: Durations::PerFlow {
            min: Duration::from_secs(20),
            max: Duration::from_secs(120),
            spread: 0.1,
        },
        failed_share: 0.1,
        start_within: Duration::ZERO,
    };
    let uniform = Generated {
        seed: 21,
        durations: Durations::Uniform {
            min: Duration::from_secs(20),
            max: Duration::from_secs(120),
        },
        ..per_flow.clone()
    };
    let flowwatch = |adaptive| Poller::Flowwatch {
        adaptive,
        per_execution: true,
        max_rps: 50.0,
        max_in_flight: 16,
        push: None,
    };
    let baseline = Poller::Baseline {
        interval: Duration::from_secs(5),
        workers: 1,
    };
    let mut runs = Vec::new();
    for (name, scenario) in [("per-flow", per_flow), ("uniform", uniform)] {
        for poller in [flowwatch(true), flowwatch(false), baseline.clone()] {
            runs.push(Run {
                scenario_name: name,
                scenario: scenario.clone(),
                limit_rps: 50.0,
                poller,
                timeout: Duration::from_secs(600),
            });
        }
    }
    let handles: Vec<_> = runs
        .into_iter()
        .map(|run| tokio::spawn(async move { measure(run).await }))
        .collect();
    let mut rows = Vec::new();
    for h in handles {
        rows.push(h.await.expect("run"));
    }
    rows
}

/// The scale runs at N: durations 10–40 s, 10 % FAILED, all started in the first 5 s, against a
/// 2,000 requests/s limit; flowwatch, flowwatch without per-execution series at 100,000, and the
/// baseline with a pool of 16 workers. One at a time: these load both cores.
async fn scale_runs(n: usize, only: Option<&[String]>) -> Vec<Row> {
    let scenario = Generated {
        count: n,
        flows: (n / 200).max(5),
        seed: n as u64,
        durations: Durations::Uniform {
            min: Duration::from_secs(10),
            max: Duration::from_secs(40),
        },
        failed_share: 0.1,
        start_within: Duration::from_secs(5),
    };
    let flowwatch = |per_execution, push| Poller::Flowwatch {
        adaptive: true,
        per_execution,
        max_rps: 2000.0,
        max_in_flight: 64,
        push,
    };
    let mut pollers = vec![("flowwatch", flowwatch(true, None))];
    if n >= 100_000 {
        pollers.push(("lean", flowwatch(false, None)));
    }
    if n <= 10_000 {
        pollers.push(("push", flowwatch(true, Some(PUSH_DROPPED))));
    }
    pollers.push((
        "baseline",
        Poller::Baseline {
            interval: Duration::from_secs(5),
            workers: 16,
        },
    ));
    let mut rows = Vec::new();
    for (name, poller) in pollers {
        if only.is_some_and(|only| !only.iter().any(|o| o == name)) {
            continue;
        }
        rows.push(
            measure(Run {
                scenario_name: "scale",
                scenario: scenario.clone(),
                limit_rps: 2000.0,
                poller,
                timeout: Duration::from_secs(900),
            })
            .await,
        );
    }
    rows
}

/// The share of status-change events the push runs lose on the way.
const PUSH_DROPPED: f64 = 0.05;
/// The push runs' reconcile interval: long enough that no execution (10-40 s) is polled twice
/// unless its end was lost.
const PUSH_RECONCILE: &str = "1m";

/// Plays one run and measures it.
async fn measure(run: Run) -> Row {
    let executions = generate(&run.scenario);
    let n = executions.len();
    // When each execution ends, as an offset from the fake's start.
    let ends: HashMap<String, f64> = executions
        .iter()
        .map(|e| {
            let end = e.timeline.last().map_or(0.0, |s| s.at.as_secs_f64());
            (e.execution_id.clone(), end)
        })
        .collect();
    let last_end = ends.values().copied().fold(0.0, f64::max);
    let keys: Vec<(String, String)> = executions
        .iter()
        .map(|e| (e.flow_name.clone(), e.execution_id.clone()))
        .collect();
    let fake = FakeServer::start(Scenario {
        rate_limit: Some(FakeRateLimit {
            requests_per_second: run.limit_rps,
            burst: (run.limit_rps / 10.0).max(1.0),
            retry_after_ms: None,
        }),
        executions,
        ..Scenario::default()
    })
    .await
    .expect("fake");
    let clock = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = free_port();
    let (push_table, _queue, publisher) = match &run.poller {
        Poller::Flowwatch {
            push: Some(drop), ..
        } => {
            let (table, queue, publisher) = start_push(&fake, *drop).await;
            (table, Some(queue), Some(publisher))
        }
        _ => (String::new(), None, None),
    };
    let mut child = match &run.poller {
        Poller::Flowwatch {
            adaptive,
            per_execution,
            max_rps,
            max_in_flight,
            ..
        } => {
            let config = write_flowwatch_files(
                dir.path(),
                listen,
                &fake.endpoint_url(),
                &keys,
                *adaptive,
                *per_execution,
                *max_rps,
                *max_in_flight,
                &push_table,
            );
            spawn_flowwatch(&config, dir.path())
        }
        Poller::Baseline { interval, workers } => {
            let spec = dir.path().join("baseline.json");
            let ids: Vec<serde_json::Value> = keys
                .iter()
                .map(|(f, e)| serde_json::json!([f, e]))
                .collect();
            std::fs::write(
                &spec,
                serde_json::json!({
                    "endpoint": fake.endpoint_url(),
                    "interval_ms": interval.as_millis() as u64,
                    "workers": workers,
                    "executions": ids,
                })
                .to_string(),
            )
            .expect("write baseline spec");
            tokio::process::Command::new(std::env::current_exe().expect("own path"))
                .arg("--baseline-child")
                .arg(&spec)
                .stdout(Stdio::piped())
                .stderr(log_file(dir.path(), "baseline.log"))
                .kill_on_drop(true)
                .spawn()
                .expect("start the baseline")
        }
    };
    let pid = child.id().expect("child pid");
    let stdout = child.stdout.take().expect("child stdout");
    let detected: Arc<Mutex<HashMap<String, f64>>> = Arc::new(Mutex::new(HashMap::new()));
    let reader = {
        let detected = detected.clone();
        let origin = clock;
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let at = origin.elapsed().as_secs_f64();
                if let Some(id) = terminal_execution(&line) {
                    detected.lock().await.entry(id).or_insert(at);
                }
            }
        })
    };
    let mut scrape_ms: Option<f64> = None;
    let mut scrape_bytes = None;
    let mut last_scrape = Instant::now() - Duration::from_secs(60);
    // Scrape every second while a scrape is quick, else every 5 s; keep each lag reading.
    let mut scrape_every = scrape_interval();
    let mut lags: Vec<(f64, f64)> = Vec::new();
    let mut page = None;
    let deadline = clock + run.timeout;
    // Read while the process lives: the baseline exits once it has seen everything.
    let mut usage = (f64::NAN, f64::NAN);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now_usage = process_usage(pid);
        if now_usage.0.is_finite() {
            usage = now_usage;
        }
        let done = detected.lock().await.len();
        if done >= n || Instant::now() > deadline {
            break;
        }
        let flowwatch = matches!(run.poller, Poller::Flowwatch { .. });
        if flowwatch && page.is_none() && done >= n / 2 {
            let t = Instant::now();
            page = fetch(listen, "/")
                .await
                .map(|body| (t.elapsed().as_secs_f64() * 1000.0, body.len()));
        }
        if matches!(run.poller, Poller::Flowwatch { .. }) && last_scrape.elapsed() > scrape_every {
            last_scrape = Instant::now();
            let t = Instant::now();
            if let Some((size, lag)) = scrape(listen).await {
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                if let Some(lag) = lag {
                    lags.push((t.duration_since(clock).as_secs_f64(), lag));
                }
                if ms > 250.0 {
                    scrape_every = scrape_every.max(Duration::from_secs(5));
                }
                if scrape_ms.is_none_or(|m| ms > m) {
                    scrape_ms = Some(ms);
                    scrape_bytes = Some(size);
                }
            }
        }
    }
    let wall = clock.elapsed().as_secs_f64();
    let last_usage = process_usage(pid);
    let (peak_rss_mib, cpu_seconds) = if last_usage.0.is_finite() {
        last_usage
    } else {
        usage
    };
    stop(&mut child, pid).await;
    reader.abort();
    let (calls, throttled) = fake.counts();
    let stats = fake.stats();
    if let Some(dir) = std::env::var_os("FLOWWATCH_BENCH_TIMELINE") {
        write_timeline(Path::new(&dir), &run, &stats);
    }
    fake.stop().await;

    let ends_dropped = match publisher {
        Some(publisher) => publisher.await.map(|p| p.ends_dropped).unwrap_or_default(),
        None => Vec::new(),
    };
    let detected = detected.lock().await;
    let pushed_p95 = (!ends_dropped.is_empty()).then(|| {
        let lost: std::collections::HashSet<&String> = ends_dropped.iter().collect();
        let mut pushed: Vec<f64> = detected
            .iter()
            .filter(|(id, _)| !lost.contains(id))
            .filter_map(|(id, at)| ends.get(id).map(|end| (at - end).max(0.0)))
            .collect();
        pushed.sort_by(f64::total_cmp);
        (percentile(&pushed, 0.95), ends_dropped.len())
    });
    let mut latencies: Vec<f64> = detected
        .iter()
        .filter_map(|(id, at)| ends.get(id).map(|end| (at - end).max(0.0)))
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |q: f64| percentile(&latencies, q);
    Row {
        label: run.poller.label(),
        scenario: match pushed_p95 {
            Some((p95, lost)) => format!(
                "{} (last end {last_end:.0}s; {lost} ends' events lost; p95 of the others {p95:.2} s)",
                run.scenario_name
            ),
            None => format!("{} (last end {last_end:.0}s)", run.scenario_name),
        },
        n,
        wall,
        calls,
        throttled,
        backlog_rate: backlog_rate(&stats, n, run.limit_rps),
        behind_rate: behind_rate(&stats, &lags),
        limit: run.limit_rps,
        p50: pct(0.50),
        p95: pct(0.95),
        max: latencies.last().copied().unwrap_or(f64::NAN),
        undetected: n - latencies.len(),
        peak_rss_mib,
        cpu_seconds,
        scrape_ms,
        scrape_bytes,
        page,
        pass: 0,
    }
}

/// The `q` quantile of `sorted` by the nearest rank; NaN when it is empty.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(f64::NAN)
}

/// The answered request rate while some execution still waited for its first answer, when the
/// first answers alone need at least 10 s at the limit; `None` when there was no such backlog.
fn backlog_rate(stats: &flowwatch_fake::FakeStats, n: usize, limit: f64) -> Option<f64> {
    if (n as f64) / limit < 10.0 {
        return None;
    }
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut end = None;
    for (at, id) in &stats.arrivals {
        if seen.insert(id.as_str()) && seen.len() == n {
            end = Some(at.as_secs_f64());
            break;
        }
    }
    let end = end?;
    let answered = stats
        .arrivals
        .iter()
        .filter(|(at, _)| at.as_secs_f64() <= end)
        .count() as f64;
    // Throttled requests are in the arrivals too; take them out at the overall throttled share.
    let share = 1.0 - stats.throttled as f64 / stats.requests.max(1) as f64;
    Some(answered * share / end)
}

/// Requests per second of the run, one line per second, for looking at how a run went.
fn write_timeline(dir: &Path, run: &Run, stats: &flowwatch_fake::FakeStats) {
    let mut per_second: Vec<u64> = Vec::new();
    for (at, _) in &stats.arrivals {
        let second = at.as_secs() as usize;
        if per_second.len() <= second {
            per_second.resize(second + 1, 0);
        }
        per_second[second] += 1;
    }
    let name = format!(
        "{}-{}-{}.txt",
        run.scenario_name,
        run.scenario.count,
        run.poller.label().replace([' ', '(', ')', '='], "_")
    );
    let text: String = per_second
        .iter()
        .enumerate()
        .map(|(s, n)| format!("{s} {n}\n"))
        .collect();
    if let Err(e) = std::fs::write(dir.join(name), text) {
        eprintln!("cannot write the timeline: {e}");
    }
}

/// The execution id of a terminal report: a flowwatch event to SUCCEEDED/FAILED, or a
/// baseline line `<execution_id> <status>`.
fn terminal_execution(line: &str) -> Option<String> {
    if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let to = v["data"]["to_status"].as_str()?;
        if matches!(to, "SUCCEEDED" | "FAILED") {
            return v["data"]["execution_id"].as_str().map(str::to_string);
        }
        return None;
    }
    let (id, status) = line.split_once(' ')?;
    matches!(status, "SUCCEEDED" | "FAILED").then(|| id.to_string())
}

/// flowwatch on `config`, its events on a pipe and its log in `dir`. FLOWWATCH_BENCH_WRAP runs
/// it under a profiler, e.g. "heaptrack -o /tmp/ht".
fn spawn_flowwatch(config: &Path, dir: &Path) -> tokio::process::Child {
    let wrap = std::env::var("FLOWWATCH_BENCH_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut c = tokio::process::Command::new(program);
            c.args(words).arg(env!("CARGO_BIN_EXE_flowwatch"));
            c
        }
        None => tokio::process::Command::new(env!("CARGO_BIN_EXE_flowwatch")),
    };
    command
        .args(["run", "--config"])
        .arg(config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_ACCESS_KEY_ID", "AKIDBENCHMARK")
        .env("AWS_SECRET_ACCESS_KEY", "benchmark-secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::piped())
        .stderr(log_file(dir, "flowwatch.log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start flowwatch")
}

/// `--only reload`: N running executions (the memory and probe figures of a large watchlist).
/// While `/livez` is asked every 100 ms, `/status?limit=10000` is fetched and the watchlist,
/// ten entries shorter, reloaded with SIGHUP; twice. Prints each step's time, the slowest
/// `/livez` answer and the peak RSS, against the Deployment's memory limit.
async fn reload_run(n: usize) {
    let (fake, keys) = running_for_hours(n, 7).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = free_port();
    let config = write_flowwatch_files(
        dir.path(),
        listen,
        &fake.endpoint_url(),
        &keys,
        true,
        true,
        2000.0,
        64,
        "",
    );
    let mut child = spawn_flowwatch(&config, dir.path());
    let pid = child.id().expect("child pid");
    let status_of = |path: &'static str| async move {
        fetch(listen, path)
            .await
            .and_then(|body| serde_json::from_slice::<serde_json::Value>(&body).ok())
    };
    let started = Instant::now();
    while status_of("/status?limit=1")
        .await
        .is_none_or(|s| s["by_status"]["IN_PROGRESS"] != n)
    {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not every execution seen in 10 min"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let observed_after = started.elapsed().as_secs_f64();
    let rss_steady = process_usage(pid).0;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let answered =
                    tokio::time::timeout(Duration::from_secs(5), fetch(listen, "/livez")).await;
                slowest = slowest.max(if answered.is_ok() {
                    t.elapsed()
                } else {
                    Duration::from_secs(5)
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            slowest
        })
    };
    println!(
        "\nreload at {n}: every execution observed after {observed_after:.0} s; RSS then {rss_steady:.1} MiB"
    );
    println!("| round | /status?limit=10000 ms | its MB | reload ms (SIGHUP to applied) |");
    println!("|---|---|---|---|");
    for round in 1..=2 {
        let t = Instant::now();
        let page = fetch(listen, "/status?limit=10000")
            .await
            .map_or(0, |b| b.len());
        let status_ms = t.elapsed().as_secs_f64() * 1000.0;
        let kept = n - 10 * round;
        write_flowwatch_files(
            dir.path(),
            listen,
            &fake.endpoint_url(),
            &keys[..kept],
            true,
            true,
            2000.0,
            64,
            "",
        );
        let t = Instant::now();
        let hup = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status();
        assert!(hup.is_ok_and(|s| s.success()), "SIGHUP");
        while status_of("/status?limit=1")
            .await
            .is_none_or(|s| s["watched"] != kept)
        {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "the reload was not applied"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let reload_ms = t.elapsed().as_secs_f64() * 1000.0;
        println!(
            "| {round} | {status_ms:.0} | {:.1} | {reload_ms:.0} |",
            page as f64 / 1e6
        );
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let slowest = prober.await.expect("prober");
    let peak = process_usage(pid).0;
    println!(
        "slowest /livez answer {:.0} ms; peak RSS {peak:.1} MiB (the Deployment's limit: {} MiB)",
        slowest.as_secs_f64() * 1000.0,
        DEPLOYMENT_MEMORY_LIMIT_MIB
    );
    stop(&mut child, pid).await;
    fake.stop().await;
}

/// The memory limit of deploy/kubernetes/deployment.yaml, which the reload run is held against.
const DEPLOYMENT_MEMORY_LIMIT_MIB: u32 = 384;

fn log_file(dir: &Path, name: &str) -> Stdio {
    std::fs::File::create(dir.join(name)).map_or_else(|_| Stdio::null(), Stdio::from)
}

/// The fake with `n` executions that all run for two hours (generated from `seed`), and their
/// (flow, execution id) pairs.
async fn running_for_hours(n: usize, seed: u64) -> (FakeServer, Vec<(String, String)>) {
    fake_of(&Generated {
        count: n,
        flows: (n / 200).max(5),
        seed,
        durations: Durations::Uniform {
            min: Duration::from_secs(7200),
            max: Duration::from_secs(7200),
        },
        failed_share: 0.0,
        start_within: Duration::from_secs(1),
    })
    .await
}

/// The fake with the executions `spec` generates, and their (flow, execution id) pairs.
async fn fake_of(spec: &Generated) -> (FakeServer, Vec<(String, String)>) {
    let executions = generate(spec);
    let keys: Vec<(String, String)> = executions
        .iter()
        .map(|e| (e.flow_name.clone(), e.execution_id.clone()))
        .collect();
    let fake = FakeServer::start(Scenario {
        executions,
        ..Scenario::default()
    })
    .await
    .expect("fake");
    (fake, keys)
}

#[allow(clippy::too_many_arguments)]
fn write_flowwatch_files(
    dir: &Path,
    listen: SocketAddr,
    endpoint: &str,
    keys: &[(String, String)],
    adaptive: bool,
    per_execution: bool,
    max_rps: f64,
    max_in_flight: usize,
    push_table: &str,
) -> PathBuf {
    let mut watchlist =
        std::io::BufWriter::new(std::fs::File::create(dir.join("watchlist.toml")).expect("create"));
    for (flow, execution) in keys {
        writeln!(
            watchlist,
            "[[execution]]\ninstance_id = \"{GENERATED_INSTANCE}\"\nflow_name = \"{flow}\"\nexecution_id = \"{execution}\"\n"
        )
        .expect("write watchlist");
    }
    watchlist.flush().expect("flush watchlist");
    let config = dir.join("flowwatch.toml");
    std::fs::write(
        &config,
        format!(
            "watchlist = \"watchlist.toml\"\n\
             [server]\nlisten = \"{listen}\"\n\
             [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n\
             [polling]\ninitial_interval = \"5s\"\nmax_interval = \"2m\"\nmultiplier = 2.0\n\
             max_requests_per_second = {max_rps:.1}\nmax_in_flight = {max_in_flight}\nrequest_timeout = \"10s\"\n\
             retain_terminal = \"1h\"\nadaptive = {adaptive}\n\
             [metrics]\nper_execution = {per_execution}\n\
             [state]\npath = \"{dir}\"\n\
             [events]\nstdout = true\nfile = \"\"\n\
             [log]\nlevel = \"warn\"\n{push_table}",
            dir = dir.display()
        ),
    )
    .expect("write config");
    config
}

/// The fake's queue, into which the fake publishes every scripted change as an EventBridge
/// rule would deliver it, with the share `lost` of them lost; returns the `[push]` table for
/// flowwatch (no detail GETs: the calls counted are polls only), and the queue, which runs until
/// dropped. (moto, which the tests use, takes minutes for a thousand queued events.)
async fn start_push(
    fake: &FakeServer,
    lost: f64,
) -> (String, FakeQueue, tokio::task::JoinHandle<Published>) {
    let queue = FakeQueue::start().await.expect("the fake queue starts");
    let mut publishing = EventPublishing::into_queue(queue.sender());
    publishing.drop = lost;
    // The publisher ends by itself once every step is sent.
    let publisher = fake.publish_events(publishing);
    let table = format!(
        "[push]\nqueue_url = \"{}\"\nendpoint_url = \"{}\"\nreconcile_interval = \"{PUSH_RECONCILE}\"\nfetch_details = false\n",
        queue.queue_url(),
        queue.endpoint_url()
    );
    (table, queue, publisher)
}

/// A loopback address with a port free right now, for flowwatch to listen on.
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// Stops the poller as systemd would: SIGTERM, then SIGKILL after 30 s. A profiler named in
/// `FLOWWATCH_BENCH_WRAP` gets the SIGTERM and must pass it on: `perf record` and heaptrack stop
/// flowwatch and write their data, but GNU `time` and `perf stat` die and leave flowwatch running
/// (and loading the machine through the next runs).
async fn stop(child: &mut tokio::process::Child, pid: u32) {
    let term = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    if term.is_ok_and(|s| s.success())
        && tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_ok()
    {
        return;
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// How often `/metrics` is scraped: every second (`FLOWWATCH_BENCH_SCRAPE_SECONDS` changes
/// it), every 5 s at the least once a scrape takes over 250 ms.
fn scrape_interval() -> Duration {
    std::env::var("FLOWWATCH_BENCH_SCRAPE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(1), Duration::from_secs)
}

/// The body of `GET path`.
async fn fetch(addr: SocketAddr, path: &str) -> Option<Vec<u8>> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    // HTTP/1.0: the body comes whole until the connection closes, without chunk framing.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some(raw.split_off(head_end + 4))
}

/// Scrapes `/metrics`: the body's size and `flowwatch_schedule_lag_seconds`.
async fn scrape(addr: SocketAddr) -> Option<(usize, Option<f64>)> {
    let body = fetch(addr, "/metrics").await?;
    let text = String::from_utf8_lossy(&body);
    let lag = text.lines().find_map(|line| {
        line.strip_prefix("flowwatch_schedule_lag_seconds ")?
            .trim()
            .parse()
            .ok()
    });
    Some((body.len(), lag))
}

/// The answered request rate while flowwatch was behind its schedule: over the spans between
/// two scrapes that both saw a due request wait more than [`BEHIND`]. `None` when it never was.
fn behind_rate(stats: &flowwatch_fake::FakeStats, lags: &[(f64, f64)]) -> Option<f64> {
    let spans: Vec<(f64, f64)> = lags
        .windows(2)
        .filter(|w| w[0].1 > BEHIND && w[1].1 > BEHIND)
        .map(|w| (w[0].0, w[1].0))
        .collect();
    let length: f64 = spans.iter().map(|(a, b)| b - a).sum();
    if length < 5.0 {
        return None;
    }
    let answered = stats
        .arrivals
        .iter()
        .filter(|(at, _)| {
            let at = at.as_secs_f64();
            spans.iter().any(|(a, b)| (*a..*b).contains(&at))
        })
        .count() as f64;
    let share = 1.0 - stats.throttled as f64 / stats.requests.max(1) as f64;
    Some(answered * share / length)
}

/// Behind schedule: the oldest due request has waited longer than this (seconds).
const BEHIND: f64 = 1.0;

/// Peak RSS (MiB) and CPU seconds (user + system) of a running process.
fn process_usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 14th, stime the 15th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu = (ticks(11) + ticks(12)) / clock_ticks_per_second();
    (hwm_kib / 1024.0, cpu)
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}

fn print_table(rows: &[Row]) {
    println!(
        "\n| poller | scenario | N | wall s | API calls | calls/exec | throttled | backlog rate / limit | rate while behind / limit | p50 s | p95 s | max s | undetected | peak RSS MiB | CPU s / 1000 calls | CPU ms / execution | /metrics ms | /metrics size | status page ms | status page size |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let of_limit = |rate: Option<f64>, none: &str| {
            rate.map_or(none.to_string(), |rate| {
                format!(
                    "{rate:.0} / {:.0} ({:.0} %)",
                    r.limit,
                    100.0 * rate / r.limit
                )
            })
        };
        let backlog = of_limit(r.backlog_rate, "no backlog");
        let behind = of_limit(
            r.behind_rate,
            if r.label.starts_with("baseline") {
                "-"
            } else {
                "never behind"
            },
        );
        println!(
            "| {} | {} | {} | {:.1} | {} | {:.2} | {:.2} % | {} | {} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {:.4} | {:.3} | {} | {} | {} | {} |",
            r.label,
            r.scenario,
            r.n,
            r.wall,
            r.calls,
            r.calls as f64 / r.n.max(1) as f64,
            100.0 * r.throttled as f64 / r.calls.max(1) as f64,
            backlog,
            behind,
            r.p50,
            r.p95,
            r.max,
            r.undetected,
            r.peak_rss_mib,
            cpu_per_1000_calls(r),
            1000.0 * r.cpu_seconds / r.n.max(1) as f64,
            r.scrape_ms.map_or("-".to_string(), |m| format!("{m:.0}")),
            r.scrape_bytes
                .map_or("-".to_string(), |b| format!("{:.1} MB", b as f64 / 1e6)),
            r.page.map_or("-".to_string(), |(ms, _)| format!("{ms:.0}")),
            r.page.map_or("-".to_string(), |(_, b)| format!(
                "{:.0} KB",
                b as f64 / 1e3
            )),
        );
    }
    print_cpu_ratios(rows);
}

fn cpu_per_1000_calls(r: &Row) -> f64 {
    1000.0 * r.cpu_seconds / r.calls.max(1) as f64
}

/// Each poller's CPU per 1,000 calls divided by the baseline's at the same scenario, N and
/// pass: the figure the CPU target is stated in. Over several passes, also the median ratio of
/// each poller and N: one pair moves by about ±10 % from run to run.
fn print_cpu_ratios(rows: &[Row]) {
    let mut ratios: Vec<((String, usize), f64)> = Vec::new();
    for baseline in rows.iter().filter(|r| r.label.starts_with("baseline")) {
        for r in rows.iter().filter(|r| {
            !r.label.starts_with("baseline")
                && r.scenario == baseline.scenario
                && r.n == baseline.n
                && r.pass == baseline.pass
        }) {
            let ratio = cpu_per_1000_calls(r) / cpu_per_1000_calls(baseline);
            println!(
                "CPU per 1,000 calls, {} at {} ({}): {ratio:.2}x the baseline's",
                r.label, r.n, r.scenario,
            );
            ratios.push(((r.label.clone(), r.n), ratio));
        }
    }
    let mut keys: Vec<&(String, usize)> = ratios.iter().map(|(k, _)| k).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let mut of_key: Vec<f64> = ratios
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, r)| *r)
            .collect();
        if of_key.len() < 2 {
            continue;
        }
        of_key.sort_by(f64::total_cmp);
        let median = if of_key.len() % 2 == 1 {
            of_key[of_key.len() / 2]
        } else {
            (of_key[of_key.len() / 2 - 1] + of_key[of_key.len() / 2]) / 2.0
        };
        println!(
            "CPU per 1,000 calls, {} at {}: median {median:.2}x the baseline's over {} passes ({:.2}x to {:.2}x)",
            key.0,
            key.1,
            of_key.len(),
            of_key[0],
            of_key[of_key.len() - 1]
        );
    }
}

/// The baseline: a fixed-interval poller as a user would write it with the SDK (standard
/// retries on), printing `<execution_id> <status>` when an execution is terminal.
async fn baseline_child(spec: &Path) {
    let text = std::fs::read_to_string(spec).expect("read spec");
    let spec: serde_json::Value = serde_json::from_str(&text).expect("spec is JSON");
    let endpoint = spec["endpoint"].as_str().expect("endpoint").to_string();
    let interval = Duration::from_millis(spec["interval_ms"].as_u64().unwrap_or(5000));
    let workers = spec["workers"].as_u64().unwrap_or(1).max(1) as usize;
    let executions: Vec<(String, String)> = spec["executions"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let config = aws_sdk_supplychain::Config::builder()
        .behavior_version(aws_sdk_supplychain::config::BehaviorVersion::latest())
        .region(aws_sdk_supplychain::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_supplychain::config::Credentials::new(
            "AKIDBASELINE",
            "baseline-secret",
            None,
            None,
            "baseline",
        ))
        .endpoint_url(endpoint)
        .retry_config(aws_sdk_supplychain::config::retry::RetryConfig::standard())
        .build();
    let client = aws_sdk_supplychain::Client::from_conf(config);
    let mut active = executions;
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    while !active.is_empty() {
        let pass = Instant::now();
        let queue = Arc::new(std::sync::Mutex::new(std::mem::take(&mut active)));
        let still: Arc<std::sync::Mutex<Vec<(String, String)>>> = Arc::default();
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (queue, still, client, out) =
                (queue.clone(), still.clone(), client.clone(), out.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let next = queue.lock().map(|mut q| q.pop()).unwrap_or(None);
                    let Some((flow, execution)) = next else { break };
                    let answer = client
                        .get_data_integration_flow_execution()
                        .instance_id(GENERATED_INSTANCE)
                        .flow_name(&flow)
                        .execution_id(&execution)
                        .send()
                        .await;
                    let status = answer.ok().and_then(|o| {
                        o.flow_execution()
                            .and_then(|e| e.status().map(|s| s.as_str().to_string()))
                    });
                    match status.as_deref() {
                        Some(s @ ("SUCCEEDED" | "FAILED")) => {
                            if let Ok(mut out) = out.lock() {
                                let _ = writeln!(out, "{execution} {s}");
                                let _ = out.flush();
                            }
                        }
                        _ => {
                            if let Ok(mut still) = still.lock() {
                                still.push((flow, execution));
                            }
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        active = still
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        let elapsed = pass.elapsed();
        if elapsed < interval {
            tokio::time::sleep(interval - elapsed).await;
        }
    }
}
