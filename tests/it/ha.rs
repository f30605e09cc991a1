//! Replicas on shared state: real flowwatch binaries with `[state] backend = "dynamodb"` against
//! moto's DynamoDB and the fake Supply Chain API. One leads; the others stand by with no API
//! call. A leader killed outright is replaced within the lease and a few seconds, and the event
//! files together hold every transition; a leader frozen past its lease is replaced, and when it
//! thaws it steps down and publishes nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use flowwatch_fake::{FakeServer, Signer};
use flowwatch_testkit::moto::Moto;
use flowwatch_testkit::*;
use serde_json::Value;
use tokio::time::Instant;

const LEASE: Duration = Duration::from_secs(3);

struct Replica {
    id: String,
    config: PathBuf,
    events: PathBuf,
    addr: std::net::SocketAddr,
    child: tokio::process::Child,
    log: Log,
}

impl Replica {
    async fn start(ws: &Workspace, id: &str, fake: &FakeServer, moto: &Moto) -> Self {
        let dir = ws.path(id);
        std::fs::create_dir_all(&dir).expect("state dir");
        let port = free_port();
        let config = ws.write(
            &format!("{id}.toml"),
            &format!(
                "watchlist = \"watchlist.toml\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n\
                 [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{fake}\"\n\
                 [polling]\ninitial_interval = \"200ms\"\nmax_interval = \"1s\"\nrequest_timeout = \"2s\"\n\
                 [state]\npath = \"{dir}\"\nbackend = \"dynamodb\"\n\
                 [state.dynamodb]\ntable = \"flowwatch\"\nendpoint_url = \"{moto}\"\nlease_duration = \"3s\"\nreplica_id = \"{id}\"\n\
                 [events]\nstdout = false\nfile = \"{dir}/events.jsonl\"\n[log]\nformat = \"json\"\n",
                fake = fake.endpoint_url(),
                moto = moto.endpoint,
                dir = dir.display(),
            ),
        );
        Self::spawn(id, config, dir.join("events.jsonl"), id).await
    }

    /// The binary on `config`, signing with an access key of its own (`key`): the fake counts
    /// each replica's calls apart.
    async fn spawn(id: &str, config: PathBuf, events: PathBuf, key: &str) -> Self {
        let key = format!("AKIDREPLICA{}", key.to_uppercase());
        let (child, addr, log) = spawn_daemon(
            env!("CARGO_BIN_EXE_flowwatch"),
            &config,
            &[
                ("AWS_ACCESS_KEY_ID", key.as_str()),
                ("AWS_SECRET_ACCESS_KEY", "replica-test-secret"),
            ],
        )
        .await;
        Self {
            id: id.to_string(),
            config,
            events,
            addr,
            child,
            log,
        }
    }

    /// `GET path`, waiting out the moment between two listeners (a standby's and a leader's).
    async fn get(&self, path: &str) -> (u16, String) {
        for _ in 0..100 {
            if let Ok(answer) = try_http(self.addr, "GET", path).await {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("replica {} does not answer {path}", self.id)
    }

    async fn status(&self) -> Value {
        serde_json::from_str(&self.get("/status").await.1).unwrap_or_default()
    }

    async fn leads(&self) -> bool {
        self.status().await["replica"]["leader"] == true
    }

    fn events(&self) -> Vec<Value> {
        read_events(&self.events)
    }
}

fn calls_by(fake: &FakeServer, key: &str) -> u64 {
    let signer = Signer {
        access_key: format!("AKIDREPLICA{}", key.to_uppercase()),
        region: "us-east-1".into(),
    };
    fake.stats().by_signer.get(&signer).copied().unwrap_or(0)
}

/// The one replica that leads, waiting up to `within`.
async fn leader(replicas: &[Replica], within: Duration) -> usize {
    let start = Instant::now();
    loop {
        let mut leading = Vec::new();
        for (i, r) in replicas.iter().enumerate() {
            if r.leads().await {
                leading.push(i);
            }
        }
        if let [one] = leading[..] {
            return one;
        }
        assert!(
            start.elapsed() < within,
            "no single leader within {within:?}: {leading:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every event of every replica's file: how often each id was written.
fn union(replicas: &[&Replica]) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for replica in replicas {
        for event in replica.events() {
            let id = event["id"].as_str().unwrap_or_default().to_string();
            *ids.entry(id).or_insert(0) += 1;
        }
    }
    ids
}

async fn setup(ws: &Workspace, ends: &[(u64, &str)]) -> (FakeServer, Moto) {
    let runs: Vec<_> = ends
        .iter()
        .enumerate()
        .map(|(i, (at, end))| scripted("orders", i + 1, &[(0, "IN_PROGRESS"), (*at, end)]))
        .collect();
    let script = scenario(runs);
    ws.write_watchlist(
        script
            .executions
            .iter()
            .map(|e| (e.flow_name.as_str(), e.execution_id.as_str())),
    );
    let fake = FakeServer::start(script).await.expect("fake");
    let moto = Moto::start(ws.dir.path()).await;
    moto.create_table("flowwatch", &[("pk", "HASH"), ("sk", "RANGE")])
        .await;
    (fake, moto)
}

/// Two replicas on runs that end as `ends` say, once one leads and has published the runs'
/// starts (and a second more, for them to leave the table's outbox); returns which leads.
async fn two_leading(
    ws: &Workspace,
    ends: &[(u64, &str)],
) -> (FakeServer, Moto, Vec<Replica>, usize) {
    let (fake, moto) = setup(ws, ends).await;
    let mut replicas = Vec::new();
    for id in ["a", "b"] {
        replicas.push(Replica::start(ws, id, &fake, &moto).await);
    }
    let first = leader(&replicas, Duration::from_secs(15)).await;
    eventually(Duration::from_secs(10), "the runs seen started", || async {
        replicas[first].events().len() >= ends.len()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    (fake, moto, replicas, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_the_lease_and_no_transition_is_lost() {
    let ws = Workspace::new();
    let (fake, moto) = setup(&ws, &[(8, "SUCCEEDED"), (12, "FAILED"), (16, "SUCCEEDED")]).await;
    let mut replicas = Vec::new();
    for id in ["a", "b", "c"] {
        replicas.push(Replica::start(&ws, id, &fake, &moto).await);
    }
    let first = leader(&replicas, Duration::from_secs(15)).await;

    // The standbys: ready as standbys, no execution series, no API call.
    for (i, standby) in replicas.iter().enumerate().filter(|(i, _)| *i != first) {
        let (code, body) = standby.get("/readyz").await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("standby"), "{body}");
        let metrics = standby.get("/metrics").await.1;
        assert_eq!(sample(&metrics, "flowwatch_leader", &[]), Some(0.0), "{i}");
        assert!(
            !metrics.contains("flowwatch_execution_status{"),
            "{metrics}"
        );
        assert_eq!(calls_by(&fake, &standby.id), 0, "a standby calls nobody");
        let reads = sample(
            &metrics,
            "flowwatch_api_requests_total",
            &[("operation", "GetItem"), ("outcome", "success")],
        );
        assert!(reads >= Some(1.0), "it reads the lease: {metrics}");
        let status = standby.status().await;
        assert_eq!(status["replica"]["replica_id"], standby.id.as_str());
    }
    // SIGHUP (systemctl reload) leaves a standby standing by, alive.
    let standby = (first + 1) % replicas.len();
    signal(&replicas[standby].child, "HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        replicas[standby].child.try_wait().expect("state").is_none(),
        "a standby survives SIGHUP"
    );
    assert!(!replicas[standby].leads().await);
    let leader_metrics = replicas[first].get("/metrics").await.1;
    assert_eq!(sample(&leader_metrics, "flowwatch_leader", &[]), Some(1.0));
    assert_eq!(
        sample(&leader_metrics, "flowwatch_leader_changes_total", &[]),
        Some(1.0)
    );
    eventually(
        Duration::from_secs(10),
        "the leader's renewals counted",
        || async {
            let metrics = replicas[first].get("/metrics").await.1;
            sample(
                &metrics,
                "flowwatch_api_requests_total",
                &[("operation", "UpdateItem"), ("outcome", "success")],
            ) >= Some(1.0)
        },
    )
    .await;

    eventually(Duration::from_secs(10), "the runs seen started", || async {
        replicas[first].events().len() >= 3
    })
    .await;
    let killed_at = Instant::now();
    let mut dead = replicas.remove(first);
    dead.child.start_kill().expect("SIGKILL");
    let _ = dead.child.wait().await;
    let next = leader(&replicas, LEASE + Duration::from_secs(5)).await;
    let took = killed_at.elapsed();
    println!("takeover after SIGKILL: {took:?}");

    eventually(Duration::from_secs(30), "every run ended", || async {
        replicas[next].status().await["by_status"]["IN_PROGRESS"] == 0
            && replicas[next].status().await["watched"] == 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut all: Vec<&Replica> = replicas.iter().collect();
    all.push(&dead);
    let ids = union(&all);
    let transitions: Vec<(String, String)> = all
        .iter()
        .flat_map(|r| r.events())
        .map(|e| {
            (
                e["data"]["execution_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                e["data"]["to_status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(transitions.len(), 6, "every transition: {transitions:?}");
    assert_eq!(ids.len(), 6, "one id per transition: {ids:?}");
    let repeats: usize = ids.values().map(|n| n - 1).sum();
    println!("events repeated across the takeover: {repeats}");
    assert!(repeats <= 3, "at most the last commit's events: {ids:?}");

    // The killed replica comes back as a standby, and calls nobody.
    let back = Replica::spawn("a2", dead.config.clone(), dead.events.clone(), "a2").await;
    tokio::time::sleep(LEASE).await;
    assert!(!back.leads().await);
    assert_eq!(calls_by(&fake, "a2"), 0);
    for replica in replicas.iter_mut() {
        let _ = replica.child.start_kill();
    }
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_past_its_lease_is_replaced_and_when_it_thaws_it_publishes_nothing() {
    let ws = Workspace::new();
    let (fake, _moto, mut replicas, first) =
        two_leading(&ws, &[(12, "SUCCEEDED"), (14, "FAILED")]).await;
    signal(&replicas[first].child, "STOP");
    let frozen_events = replicas[first].events().len();
    let other = 1 - first;
    let stopped_at = Instant::now();
    eventually(LEASE + Duration::from_secs(5), "another leads", || async {
        replicas[other].leads().await
    })
    .await;
    println!("takeover after SIGSTOP: {:?}", stopped_at.elapsed());
    eventually(
        Duration::from_secs(30),
        "the new leader sees the ends",
        || async { replicas[other].status().await["by_status"]["IN_PROGRESS"] == 0 },
    )
    .await;

    signal(&replicas[first].child, "CONT");
    eventually(
        Duration::from_secs(5),
        "the thawed one stands by",
        || async { replicas[first].status().await["replica"]["leader"] == false },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        replicas[first].events().len(),
        frozen_events,
        "the thawed leader published nothing"
    );
    let log = replicas[first].log.lock().expect("log").join("\n");
    assert!(log.contains("this replica stops leading"), "{log}");
    let ends = replicas[other]
        .events()
        .iter()
        .filter(|e| e["data"]["to_status"] != "IN_PROGRESS")
        .count();
    assert_eq!(ends, 2, "the new leader published both ends");
    for replica in replicas.iter_mut() {
        let _ = replica.child.start_kill();
    }
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_table_is_frozen_no_replica_leads_or_publishes_and_after_exactly_one_leads() {
    let ws = Workspace::new();
    let (fake, moto, mut replicas, first) =
        two_leading(&ws, &[(10, "SUCCEEDED"), (12, "FAILED")]).await;
    moto.pause();
    let paused_at = Instant::now();
    let written = |replicas: &[Replica]| replicas.iter().map(|r| r.events().len()).sum::<usize>();
    let before = written(&replicas);
    eventually(
        LEASE + Duration::from_secs(2),
        "the leader stands by",
        || async { !replicas[first].leads().await },
    )
    .await;
    println!(
        "the leader stood by {:?} after the table froze",
        paused_at.elapsed()
    );
    // Past both ends (at 10 and 12 s): the API says so, but the table cannot take it.
    while paused_at.elapsed() < Duration::from_secs(14) {
        for replica in &replicas {
            assert!(
                !replica.leads().await,
                "{} leads with the table frozen",
                replica.id
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(written(&replicas), before, "nothing published while frozen");

    moto.resume();
    let resumed_at = Instant::now();
    let next = leader(&replicas, LEASE * 4).await;
    println!(
        "a leader {:?} after the table came back",
        resumed_at.elapsed()
    );
    eventually(Duration::from_secs(20), "the ends published", || async {
        replicas[next]
            .events()
            .iter()
            .filter(|e| e["data"]["to_status"] != "IN_PROGRESS")
            .count()
            == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut leading = 0;
    for replica in &replicas {
        leading += usize::from(replica.leads().await);
    }
    assert_eq!(leading, 1, "exactly one leads");
    for replica in replicas.iter_mut() {
        let _ = replica.child.start_kill();
    }
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_stops_the_daemon_with_exit_code_3_naming_it() {
    let ws = Workspace::new();
    let fake = FakeServer::start(scenario(vec![scripted("orders", 1, &[(0, "IN_PROGRESS")])]))
        .await
        .expect("fake");
    ws.write_watchlist([("orders", execution_id(1).as_str())].into_iter());
    let moto = Moto::start(ws.dir.path()).await;
    let config = ws.write(
        "flowwatch.toml",
        &format!(
            "watchlist = \"watchlist.toml\"\n[server]\nlisten = \"127.0.0.1:0\"\n\
             [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\
             [state]\npath = \"{}\"\nbackend = \"dynamodb\"\n\
             [state.dynamodb]\ntable = \"flowwatch-missing\"\nendpoint_url = \"{}\"\n",
            fake.endpoint_url(),
            ws.dir.path().display(),
            moto.endpoint
        ),
    );
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowwatch"))
        .args(["run", "--config", &config.to_string_lossy()])
        .env("AWS_ACCESS_KEY_ID", "AKIDMISSING")
        .env("AWS_SECRET_ACCESS_KEY", "missing-table-secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("exits within 30 s")
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("DynamoDB table \"flowwatch-missing\" does not exist"),
        "{stderr}"
    );
    assert_eq!(fake.stats().requests, 0, "no Supply Chain call");
    fake.stop().await;
}
