//! `--only accounts`: ten accounts and regions from one flowwatch, each with its own budget, with
//! and without one of them throttled hard at the fake, beside the same executions in one account.
//! The accounts are ten regions of the base credentials: a budget is an (account, region), so
//! ten regions exercise the same budgets as ten accounts, with no STS in the way.

use super::*;

/// The regions of the ten budgets; the first is the base.
const REGIONS: [&str; 10] = [
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "eu-west-1",
    "eu-west-2",
    "eu-central-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-northeast-1",
];
/// The budget the throttled run throttles hard, and how hard (requests per second).
const THROTTLED: usize = 1;
const THROTTLED_RPS: f64 = 1.0;
/// Each budget's cap; all ten together are the fake's global limit.
const BUDGET_RPS: f64 = 200.0;

fn instance(k: usize) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", k + 1, k + 1)
}

/// One run's figures.
struct AccountsRow {
    label: &'static str,
    n: usize,
    calls: u64,
    throttled: u64,
    cpu_ms_per_execution: f64,
    peak_rss_mib: f64,
    /// p95 detection latency of the executions outside the throttled budget.
    p95_others: f64,
    /// Of the throttled budget's executions: detected / all.
    throttled_detected: Option<(usize, usize)>,
}

pub async fn accounts_runs(per_account: usize) {
    let rows = vec![
        accounts_run("one account", per_account, false, false).await,
        accounts_run("ten accounts", per_account, true, false).await,
        accounts_run("ten accounts, one throttled", per_account, true, true).await,
    ];
    println!(
        "\n{:<30} {:>8} {:>9} {:>9} {:>14} {:>10} {:>16} {:>20}",
        "run",
        "N",
        "calls",
        "throttled",
        "CPU ms / exec",
        "RSS MiB",
        "p95 others (s)",
        "throttled detected"
    );
    for r in &rows {
        println!(
            "{:<30} {:>8} {:>9} {:>9} {:>14.3} {:>10.1} {:>16.2} {:>20}",
            r.label,
            r.n,
            r.calls,
            r.throttled,
            r.cpu_ms_per_execution,
            r.peak_rss_mib,
            r.p95_others,
            r.throttled_detected
                .map_or("-".to_string(), |(d, all)| format!("{d} of {all}"))
        );
    }
    let (calm, stormy) = (rows[1].p95_others, rows[2].p95_others);
    println!(
        "p95 detection of the other nine accounts with one throttled: {stormy:.2} s against {calm:.2} s without ({:+.1} %)",
        (stormy / calm - 1.0) * 100.0
    );
}

async fn accounts_run(
    label: &'static str,
    per_account: usize,
    tables: bool,
    throttle: bool,
) -> AccountsRow {
    let mut executions = generate(&Generated {
        count: per_account * REGIONS.len(),
        flows: 50,
        seed: 25,
        durations: Durations::Uniform {
            min: Duration::from_secs(10),
            max: Duration::from_secs(40),
        },
        failed_share: 0.1,
        start_within: Duration::from_secs(5),
    });
    for (i, e) in executions.iter_mut().enumerate() {
        e.instance_id = instance(i % REGIONS.len());
    }
    let n = executions.len();
    let budget_of: HashMap<String, usize> = executions
        .iter()
        .enumerate()
        .map(|(i, e)| (e.execution_id.clone(), i % REGIONS.len()))
        .collect();
    let ends: HashMap<String, f64> = executions
        .iter()
        .map(|e| {
            let end = e.timeline.last().map_or(0.0, |s| s.at.as_secs_f64());
            (e.execution_id.clone(), end)
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut watchlist = String::new();
    for e in &executions {
        watchlist.push_str(&format!(
            "[[execution]]\ninstance_id = \"{}\"\nflow_name = \"{}\"\nexecution_id = \"{}\"\n\n",
            e.instance_id, e.flow_name, e.execution_id
        ));
    }
    std::fs::write(dir.path().join("watchlist.toml"), watchlist).expect("watchlist");
    let mut scenario = Scenario {
        rate_limit: Some(FakeRateLimit {
            requests_per_second: BUDGET_RPS * REGIONS.len() as f64,
            burst: BUDGET_RPS,
            retry_after_ms: None,
        }),
        executions,
        ..Scenario::default()
    };
    if throttle {
        scenario.signer_limits.push(flowwatch_fake::SignerLimit {
            access_key: "AKIDBENCHMARK".into(),
            region: REGIONS[THROTTLED].into(),
            requests_per_second: THROTTLED_RPS,
            burst: 1.0,
        });
    }
    let fake = FakeServer::start(scenario).await.expect("fake");
    let clock = Instant::now();
    let listen = free_port();
    let instance_tables: String = if tables {
        (1..REGIONS.len())
            .map(|k| {
                format!(
                    "\n[[aws.instance]]\nid = \"{}\"\nregion = \"{}\"\n",
                    instance(k),
                    REGIONS[k]
                )
            })
            .collect()
    } else {
        String::new()
    };
    let single_rate = if tables {
        BUDGET_RPS
    } else {
        BUDGET_RPS * REGIONS.len() as f64
    };
    let config = dir.path().join("flowwatch.toml");
    std::fs::write(
        &config,
        format!(
            "watchlist = \"watchlist.toml\"\n[server]\nlisten = \"{listen}\"\n\
             [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n\
             [polling]\nmax_requests_per_second = {single_rate:.1}\nmax_in_flight = 64\n\
             [state]\npath = \"{dir}\"\n[events]\nstdout = true\nfile = \"\"\n[log]\nlevel = \"warn\"\n{instance_tables}",
            endpoint = fake.endpoint_url(),
            dir = dir.path().display()
        ),
    )
    .expect("config");
    let mut child = spawn_flowwatch(&config, dir.path());
    let pid = child.id().expect("pid");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut detected: HashMap<String, f64> = HashMap::new();
    let others = n - n / REGIONS.len();
    let counted = |id: &str| !throttle || budget_of.get(id) != Some(&THROTTLED);
    let deadline = clock + Duration::from_secs(300);
    let mut usage = (f64::NAN, f64::NAN);
    loop {
        match tokio::time::timeout(Duration::from_secs(1), lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                if let Some(id) = terminal_execution(&line) {
                    detected
                        .entry(id)
                        .or_insert_with(|| clock.elapsed().as_secs_f64());
                }
            }
            Ok(_) => break,
            Err(_) => {}
        }
        let done_others = detected.keys().filter(|id| counted(id)).count();
        if done_others >= if throttle { others } else { n } || Instant::now() > deadline {
            break;
        }
        let now = process_usage(pid);
        if now.0.is_finite() {
            usage = now;
        }
    }
    let last = process_usage(pid);
    let (peak_rss_mib, cpu_seconds) = if last.0.is_finite() { last } else { usage };
    stop(&mut child, pid).await;
    let (calls, throttled) = fake.counts();
    fake.stop().await;
    let mut latencies: Vec<f64> = detected
        .iter()
        .filter(|(id, _)| counted(id))
        .filter_map(|(id, at)| ends.get(id).map(|end| (at - end).max(0.0)))
        .collect();
    latencies.sort_by(f64::total_cmp);
    let p95 = percentile(&latencies, 0.95);
    let throttled_detected = throttle.then(|| {
        let of_throttled = detected
            .keys()
            .filter(|id| budget_of.get(*id) == Some(&THROTTLED))
            .count();
        (of_throttled, n / REGIONS.len())
    });
    AccountsRow {
        label,
        n,
        calls,
        throttled,
        cpu_ms_per_execution: cpu_seconds * 1000.0 / n as f64,
        peak_rss_mib,
        p95_others: p95,
        throttled_detected,
    }
}
