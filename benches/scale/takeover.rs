//! `--only takeover`: how long a standby takes from the end of the old leader's lease to its
//! first poll, with N running executions in the shared table (moto's DynamoDB). The table holds
//! what an old leader left (each execution IN_PROGRESS, its transition counted, nothing waiting
//! in the outbox) and a lease it renewed for the last time just before the standby started; the
//! standby (a release flowwatch with a 3 s lease) waits the lease out, reads the table, restores
//! it and starts polling.

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
    let moto = flowwatch_testkit::moto::Moto::start(dir.path()).await;
    moto.create_table("flowwatch", &[("pk", "HASH"), ("sk", "RANGE")])
        .await;
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
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text.replacen("[state]\n", "[state]\nbackend = \"dynamodb\"\n", 1);
    std::fs::write(&config, text).expect("config");

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
