//! Soak: 5,000 executions under continual reloads (half the watchlist swapped every 2 s), with
//! the flowwatch binary's resident memory and open file descriptors sampled every 5 s. After a
//! warm-up both must stay flat. Runs for SOAK_SECONDS (default 150, at most 600); measured here, memory grows while every
//! execution is seen for the first time (about a minute) and is flat after that.

use std::process::Stdio;
use std::time::Duration;

use flowwatch_fake::FakeServer;
use flowwatch_testkit::*;
use tokio::process::Command;

const WATCHED: usize = 5_000;

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

fn watchlist(range: std::ops::Range<usize>) -> String {
    range
        .map(|n| {
            format!(
                "[[execution]]\ninstance_id = \"{INSTANCE}\"\nflow_name = \"soak-{}\"\nexecution_id = \"{}\"\n",
                n % 50,
                execution_id(n)
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_file_descriptors_stay_flat_with_5000_executions_and_continual_reloads() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150)
        .clamp(60, 600);
    // 7,500 scripted executions; the watchlist alternates between two 5,000-entry windows, so
    // every reload removes 2,500 entries and adds 2,500. Every tenth one finishes, so terminal
    // series are dropped too.
    let script = scenario(
        (1..=WATCHED + WATCHED / 2)
            .map(|n| {
                if n % 10 == 0 {
                    scripted(
                        &format!("soak-{}", n % 50),
                        n,
                        &[(0, "IN_PROGRESS"), (5 + (n % 30) as u64, "SUCCEEDED")],
                    )
                } else {
                    scripted(&format!("soak-{}", n % 50), n, &[(0, "IN_PROGRESS")])
                }
            })
            .collect(),
    );
    let fake = FakeServer::start(script.clone()).await.expect("fake");
    let ws = Workspace::new();
    let polling = "[polling]\ninitial_interval = \"1s\"\nmax_interval = \"5s\"\nmax_requests_per_second = 300.0\nmax_in_flight = 16\nrequest_timeout = \"2s\"\nretain_terminal = \"10s\"\n";
    let config = ws.config(&fake.endpoint_url(), polling, &scenario(vec![]));
    ws.write("watchlist.toml", &watchlist(1..WATCHED + 1));
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowwatch"))
        .args(["run", "--config", &config.to_string_lossy()])
        .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("FLOWWATCH_LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(ws.path("flowwatch.log")).expect("log"),
        ))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn flowwatch");
    let pid = child.id().expect("pid");

    let started = tokio::time::Instant::now();
    let mut samples: Vec<(f64, u64, usize)> = Vec::new();
    let mut reloads = 0;
    let mut next_sample = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        reloads += 1;
        let window = if reloads % 2 == 0 {
            1..WATCHED + 1
        } else {
            WATCHED / 2 + 1..WATCHED + WATCHED / 2 + 1
        };
        ws.write("watchlist.toml", &watchlist(window));
        if started.elapsed() >= next_sample {
            next_sample += Duration::from_secs(5);
            let (Some(rss), Some(fds)) = (rss_kib(pid), open_fds(pid)) else {
                let log = std::fs::read_to_string(ws.path("flowwatch.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                panic!(
                    "flowwatch is gone: {:?}; its log ends with:\n{}",
                    child.try_wait(),
                    tail.join("\n")
                );
            };
            samples.push((started.elapsed().as_secs_f64(), rss, fds));
        }
    }
    assert!(
        child.try_wait().expect("wait").is_none(),
        "flowwatch is still running"
    );
    let requests = fake.stats().requests;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert_eq!(exit.code(), Some(0));

    // Warm-up: the first 40 %. Flat: after it, memory stays within 10 % (or 8 MiB) of the
    // warm-up's peak, and descriptors within 20 of theirs.
    let split = (samples.len() * 2 / 5).max(1);
    let (warm, late) = samples.split_at(split);
    let warm_rss = warm.iter().map(|s| s.1).max().unwrap_or(0);
    let late_rss = late.iter().map(|s| s.1).max().unwrap_or(0);
    let warm_fds = warm.iter().map(|s| s.2).max().unwrap_or(0);
    let late_fds = late.iter().map(|s| s.2).max().unwrap_or(0);
    let report = format!(
        "soak: {WATCHED} executions, {seconds} s, {reloads} reloads, {requests} API requests; RSS peak {:.1} MiB after warm-up, {:.1} MiB at the end; open fds {warm_fds} -> {late_fds}; samples (s, KiB, fds): {samples:?}",
        warm_rss as f64 / 1024.0,
        late_rss as f64 / 1024.0,
    );
    println!("{report}");
    let _ = std::fs::write(format!("{}/soak.txt", env!("CARGO_TARGET_TMPDIR")), &report);
    let allowed = (warm_rss as f64 * 1.10).max(warm_rss as f64 + 8.0 * 1024.0);
    assert!((late_rss as f64) <= allowed, "memory grows: {report}");
    assert!(late_fds <= warm_fds + 20, "file descriptors leak: {report}");
    fake.stop().await;
}
