//! Replicas on shared state, against moto's DynamoDB.
//!
//! `--only takeover`: how long a standby takes from the end of the old leader's lease to its
//! first poll, with N running executions in the shared table (moto's DynamoDB). The table holds
//! what an old leader left (each execution IN_PROGRESS, its transition counted, nothing waiting
//! in the outbox) and a lease it renewed for the last time just before the standby started; the
//! standby (a release flowwatch with a 3 s lease) waits the lease out, reads the table, restores
//! it and starts polling.
//!
//! `--only state-cost`: CPU per execution on SQLite and on the shared table, and the table's
//! write units per execution.

use futures_util::StreamExt as _;
use serde_json::json;

use super::*;

/// The lease of this run's replicas.
const LEASE: Duration = Duration::from_secs(3);
/// BatchWriteItem takes at most 25 items.
const BATCH: usize = 25;

pub async fn takeover_run(n: usize) {
    let (fake, keys) = running_for_hours(n, 11).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let moto = table_in_moto(dir.path()).await;
    let seeding = Instant::now();
    seed(&moto, &keys).await;
    let seeded = seeding.elapsed();

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
        &format!(
            "[state.dynamodb]\ntable = \"flowwatch\"\nendpoint_url = \"{}\"\nlease_duration = \"{}s\"\nreplica_id = \"standby\"\n",
            moto.endpoint,
            LEASE.as_secs()
        ),
    );
    on_the_shared_table(&config);

    // The old leader's last renewal, now; its lease ends LEASE later.
    moto.call(
        "dynamodb",
        "DynamoDB_20120810.PutItem",
        json!({"TableName": "flowwatch", "Item": {
            "pk": {"S": "lease"}, "sk": {"S": "lease"},
            "holder": {"S": "old"}, "term": {"N": "1"}, "beat": {"N": "7"}}}),
    )
    .await;
    let lease_ends = fake.elapsed() + LEASE;
    let mut child = spawn_flowwatch(&config, dir.path());
    let started = Instant::now();
    let first_poll = loop {
        let first = fake.stats().arrivals.first().map(|(at, _)| *at);
        if let Some(at) = first {
            break at;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "no poll within 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let pid = child.id().expect("child pid");
    let (rss, cpu) = process_usage(pid);
    let takeover = first_poll.saturating_sub(lease_ends);
    println!(
        "| {n} | {:.1} | {:.2} | {:.1} | {:.2} |",
        seeded.as_secs_f64(),
        takeover.as_secs_f64(),
        rss,
        cpu
    );
    let _ = child.kill().await;
}

/// Prints the table's head, for the rows [`takeover_run`] prints.
pub fn takeover_header() {
    println!(
        "\ntakeover with a {} s lease, against moto's DynamoDB:",
        LEASE.as_secs()
    );
    println!("| N | seeding the table s | lease end to first poll s | RSS MiB | CPU s |");
    println!("|---|---|---|---|---|");
}

/// Writes each execution's row and its flow's transition count, as the old leader's commits
/// left them, 25 items a call and 8 calls at a time.
async fn seed(moto: &flowwatch_testkit::moto::Moto, keys: &[(String, String)]) {
    let mut items: Vec<serde_json::Value> = keys
        .iter()
        .map(|(flow, execution)| {
            let row = json!({"instance_id": GENERATED_INSTANCE, "flow_name": flow,
                "execution_id": execution, "status": "IN_PROGRESS", "observation": null,
                "rejected": null});
            item(
                "executions",
                &json!([GENERATED_INSTANCE, flow, execution]),
                &row,
            )
        })
        .collect();
    let mut flows: Vec<&String> = keys.iter().map(|(flow, _)| flow).collect();
    flows.sort();
    flows.dedup();
    for flow in flows {
        let count = keys.iter().filter(|(f, _)| f == flow).count();
        let row = json!({"instance_id": GENERATED_INSTANCE, "flow_name": flow,
            "to_status": "IN_PROGRESS", "count": count});
        items.push(item(
            "transition_counts",
            &json!([GENERATED_INSTANCE, flow, "IN_PROGRESS"]),
            &row,
        ));
    }
    let calls = items.chunks(BATCH).map(|chunk| {
        let writes: Vec<serde_json::Value> = chunk
            .iter()
            .map(|item| json!({"PutRequest": {"Item": item}}))
            .collect();
        moto.call(
            "dynamodb",
            "DynamoDB_20120810.BatchWriteItem",
            json!({"RequestItems": {"flowwatch": writes}}),
        )
    });
    futures_util::stream::iter(calls)
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
}

fn item(table: &str, key: &serde_json::Value, row: &serde_json::Value) -> serde_json::Value {
    json!({"pk": {"S": table}, "sk": {"S": key.to_string()}, "row": {"S": row.to_string()}})
}

/// `--only state-cost`: N executions that start and end within two minutes, watched by one
/// flowwatch on SQLite and then by one on the shared table (moto's DynamoDB, a single replica):
/// CPU per execution of each, and what the shared table was charged.
pub async fn state_cost_runs(n: usize) {
    println!("\nstate backends, {n} executions ending within 2 minutes:");
    println!(
        "| backend | CPU ms / execution | peak RSS MiB | TransactWriteItems / execution | write units / execution |"
    );
    println!("|---|---|---|---|---|");
    for shared in [false, true] {
        state_cost_run(n, shared).await;
    }
}

async fn state_cost_run(n: usize, shared: bool) {
    let (fake, keys) = fake_of(&Generated {
        count: n,
        flows: 5,
        seed: 13,
        durations: Durations::Uniform {
            min: Duration::from_secs(20),
            max: Duration::from_secs(90),
        },
        failed_share: 0.1,
        start_within: Duration::from_secs(10),
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let moto = if shared {
        Some(table_in_moto(dir.path()).await)
    } else {
        None
    };
    let listen = free_port();
    let table = moto.as_ref().map_or_else(String::new, |moto| {
        format!(
            "[state.dynamodb]\ntable = \"flowwatch\"\nendpoint_url = \"{}\"\nreplica_id = \"only\"\n",
            moto.endpoint
        )
    });
    let config = write_flowwatch_files(
        dir.path(),
        listen,
        &fake.endpoint_url(),
        &keys,
        true,
        true,
        200.0,
        16,
        &table,
    );
    if shared {
        on_the_shared_table(&config);
    }
    let mut child = spawn_flowwatch(&config, dir.path());
    let pid = child.id().expect("child pid");
    let started = Instant::now();
    loop {
        let status = fetch(listen, "/status?limit=1")
            .await
            .and_then(|body| serde_json::from_slice::<serde_json::Value>(&body).ok());
        let ended = status.as_ref().is_some_and(|s| {
            s["watched"] == n
                && s["by_status"]["IN_PROGRESS"] == 0
                && s["by_status"]["UNKNOWN"] == 0
        });
        if ended {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "not every execution ended in 15 minutes"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // A second for the last events to leave the table's outbox.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = fetch(listen, "/metrics")
        .await
        .map(|body| String::from_utf8_lossy(&body).to_string())
        .unwrap_or_default();
    let sum = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
            // An empty sum is -0.0.
            + 0.0
    };
    let transactions = sum(
        "flowwatch_api_requests_total{account_id=\"\",operation=\"TransactWriteItems\",outcome=\"success\"",
    );
    let units = sum("flowwatch_state_write_units_total");
    let (rss, cpu) = process_usage(pid);
    println!(
        "| {} | {:.3} | {:.1} | {:.2} | {:.1} |",
        if shared { "dynamodb (moto)" } else { "sqlite" },
        cpu * 1000.0 / n as f64,
        rss,
        transactions / n as f64,
        units / n as f64
    );
    let _ = child.kill().await;
}

/// moto's DynamoDB with the state table, its files in `dir`.
async fn table_in_moto(dir: &Path) -> flowwatch_testkit::moto::Moto {
    let moto = flowwatch_testkit::moto::Moto::start(dir).await;
    moto.create_table("flowwatch", &[("pk", "HASH"), ("sk", "RANGE")])
        .await;
    moto
}

/// Sets `backend = "dynamodb"` in the config [`write_flowwatch_files`] wrote.
fn on_the_shared_table(config: &Path) {
    let text = std::fs::read_to_string(config).expect("config");
    let text = text.replacen("[state]\n", "[state]\nbackend = \"dynamodb\"\n", 1);
    std::fs::write(config, text).expect("config");
}
