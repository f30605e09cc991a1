//! The leader lease against moto's DynamoDB: replicas in one process, each with its own client,
//! as separate hosts would be. One leads; a standby takes over after a leader dies, at once
//! after a leader shuts down, and nobody leads while the table cannot be reached. Real clock,
//! with a 3 s lease (renewed every second; a margin of 1 s on each side).

use std::time::Duration;

use flowwatch::ha::lease::{Fence, Leadership, Lease, LeaseSettings, fence_check};
use flowwatch::ha::{Failure, StateTable, TableError};
use flowwatch_testkit::moto::Moto;
use flowwatch_testkit::*;
use serde_json::json;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

const TABLE: &str = "flowwatch";
const LEASE: Duration = Duration::from_secs(3);

struct Replica {
    leadership: watch::Receiver<Leadership>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    fn start(moto: &Moto, id: &str) -> Self {
        Self::on(
            StateTable::local(&moto.endpoint, TABLE, Duration::from_secs(1)),
            id,
        )
    }

    fn on(table: StateTable, id: &str) -> Self {
        let settings = LeaseSettings {
            replica_id: id.to_string(),
            duration: LEASE,
        };
        let (lease, leadership) = Lease::new(table, settings);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(lease.run(async move {
            let _ = stopped.await;
        }));
        Self {
            leadership,
            stop: Some(stop),
            task,
        }
    }

    fn fence(&self) -> Option<Fence> {
        match &*self.leadership.borrow() {
            Leadership::Leader { fence, .. } => Some(fence.clone()),
            Leadership::Standby => None,
        }
    }

    /// Shuts it down as SIGTERM would: a leader releases the lease.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }
}

fn leaders(replicas: &[Replica]) -> Vec<usize> {
    (0..replicas.len())
        .filter(|i| replicas[*i].fence().is_some())
        .collect()
}

/// Waits until exactly one of `replicas` leads; returns which, and how long it took.
async fn one_leader(replicas: &[Replica], within: Duration) -> (usize, Duration) {
    let start = Instant::now();
    loop {
        if let [one] = leaders(replicas)[..] {
            return (one, start.elapsed());
        }
        assert!(
            start.elapsed() < within,
            "no single leader within {within:?}: {:?}",
            leaders(replicas)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Samples `replicas` every 50 ms for `span`; fails on two leaders at once, and returns every
/// leader seen.
async fn watch_leaders(replicas: &[Replica], span: Duration) -> Vec<usize> {
    let end = Instant::now() + span;
    let mut seen = Vec::new();
    while Instant::now() < end {
        let now = leaders(replicas);
        assert!(now.len() <= 1, "two leaders at once: {now:?}");
        for leader in now {
            if !seen.contains(&leader) {
                seen.push(leader);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

/// A write of the leader's state under `fence` through `table`, as the store makes them.
async fn fenced_write(table: &StateTable, fence: &Fence) -> Result<(), Failure> {
    let put = aws_sdk_dynamodb::types::Put::builder()
        .table_name(TABLE)
        .item(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("probe".into()),
        )
        .item(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S("probe".into()),
        )
        .build()
        .expect("put");
    table
        .client()
        .transact_write_items()
        .transact_items(fence_check(TABLE, fence)?)
        .transact_items(
            aws_sdk_dynamodb::types::TransactWriteItem::builder()
                .put(put)
                .build(),
        )
        .send()
        .await
        .map(drop)
        .map_err(|e| flowwatch::ha::failure(&e))
}

fn local_table(moto: &Moto) -> StateTable {
    StateTable::local(&moto.endpoint, TABLE, Duration::from_secs(1))
}

async fn moto_with_table(ws: &Workspace) -> Moto {
    let moto = Moto::start(ws.dir.path()).await;
    moto.create_table(TABLE, &[("pk", "HASH"), ("sk", "RANGE")])
        .await;
    moto
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_a_standby_takes_over_within_the_lease_when_it_dies() {
    let ws = Workspace::new();
    let moto = moto_with_table(&ws).await;
    let mut replicas: Vec<Replica> = ["a", "b", "c"]
        .iter()
        .map(|id| Replica::start(&moto, id))
        .collect();
    let (first, _) = one_leader(&replicas, Duration::from_secs(10)).await;
    assert_eq!(
        watch_leaders(&replicas, LEASE + Duration::from_secs(1)).await,
        [first],
        "the leader renews: nobody else leads"
    );
    let lease = moto
        .call(
            "dynamodb",
            "DynamoDB_20120810.GetItem",
            json!({"TableName": TABLE, "Key": {"pk": {"S": "lease"}, "sk": {"S": "lease"}}, "ConsistentRead": true}),
        )
        .await;
    let beats: u64 = lease["Item"]["beat"]["N"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or_default();
    assert!(beats >= 3, "renewed every second: {lease}");
    let old = replicas[first].fence().expect("the leader's fence");
    assert_eq!(
        fenced_write(&local_table(&moto), &old).await,
        Ok(()),
        "the leader commits"
    );

    // Killed: no release. Another takes over once the lease has run out.
    let dead = replicas.remove(first);
    dead.task.abort();
    let (next, took) = one_leader(&replicas, LEASE + Duration::from_secs(5)).await;
    println!("takeover after the leader died: {took:?}");
    assert!(
        took >= LEASE - Duration::from_millis(500),
        "not before the lease ran out: {took:?}"
    );
    let new = replicas[next].fence().expect("the new fence");
    assert_eq!(new.term, old.term + 1);
    assert_eq!(
        fenced_write(&local_table(&moto), &old).await,
        Err(Failure::Conflict),
        "the old leader's writes are fenced off"
    );
    assert_eq!(fenced_write(&local_table(&moto), &new).await, Ok(()));
    for replica in replicas {
        replica.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_shuts_down_hands_over_at_once() {
    let ws = Workspace::new();
    let moto = moto_with_table(&ws).await;
    let mut replicas: Vec<Replica> = ["a", "b"]
        .iter()
        .map(|id| Replica::start(&moto, id))
        .collect();
    let (first, _) = one_leader(&replicas, Duration::from_secs(10)).await;
    let leaving = replicas.remove(first);
    let start = Instant::now();
    leaving.stop().await;
    one_leader(&replicas, LEASE).await;
    let took = start.elapsed();
    println!("takeover after the leader shut down: {took:?}");
    assert!(
        took < LEASE,
        "the released lease is taken at the next read: {took:?}"
    );
    for replica in replicas {
        replica.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_leads_while_the_table_is_paused_and_exactly_one_leads_after() {
    let ws = Workspace::new();
    let moto = moto_with_table(&ws).await;
    let replicas: Vec<Replica> = ["a", "b"]
        .iter()
        .map(|id| Replica::start(&moto, id))
        .collect();
    let (first, _) = one_leader(&replicas, Duration::from_secs(10)).await;
    let until = match &*replicas[first].leadership.borrow() {
        Leadership::Leader { until, .. } => *until,
        Leadership::Standby => panic!("it leads"),
    };
    moto.pause();
    let paused = Instant::now();
    // The leader stops at the end of its lease by its own clock, never later.
    let mut leadership = replicas[first].leadership.clone();
    tokio::time::timeout(LEASE, leadership.wait_for(|l| !l.is_leader()))
        .await
        .expect("the leader stepped down within the lease")
        .expect("the lease runs");
    let stepped_down = Instant::now();
    println!("stepped down {:?} after the pause", stepped_down - paused);
    assert!(stepped_down <= until + Duration::from_millis(100));
    assert!(
        watch_leaders(&replicas, LEASE * 2).await.is_empty(),
        "nobody leads while the table cannot be reached"
    );
    moto.resume();
    let (_, took) = one_leader(&replicas, LEASE * 3).await;
    println!("a leader again {took:?} after the table came back");
    let seen = watch_leaders(&replicas, LEASE).await;
    assert_eq!(seen.len(), 1, "exactly one leads: {seen:?}");
    for replica in replicas {
        replica.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_and_one_with_another_key_schema_are_named() {
    let ws = Workspace::new();
    let moto = Moto::start(ws.dir.path()).await;
    let check = |name: &str| {
        let table = StateTable::local(&moto.endpoint, name, Duration::from_secs(2));
        async move { table.check().await }
    };
    let missing = check("nowhere").await.expect_err("missing");
    assert!(matches!(missing, TableError::Missing { .. }), "{missing}");
    assert!(missing.to_string().contains("\"nowhere\""), "{missing}");

    moto.create_table("orders", &[("id", "HASH")]).await;
    let other = check("orders").await.expect_err("another schema");
    assert_eq!(
        other.to_string(),
        "DynamoDB table \"orders\" in us-east-1 has the key schema id (S, HASH), not pk (S, HASH) and sk (S, RANGE): it is not flowwatch's table"
    );
    moto.create_table(TABLE, &[("pk", "HASH"), ("sk", "RANGE")])
        .await;
    assert_eq!(check(TABLE).await, Ok(()));
}

/// The actions of the replica policy in deploy/aws/flowwatch-state.yaml.
fn template_actions() -> Vec<String> {
    let template = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/aws/flowwatch-state.yaml"
    ))
    .expect("the template");
    template
        .lines()
        .map(str::trim)
        .filter_map(|line| line.strip_prefix("- dynamodb:"))
        .map(|action| format!("dynamodb:{action}"))
        .collect()
}

/// `table` on moto's DynamoDB, signed by the IAM user with `key` and `secret`.
fn table_as(moto: &Moto, table: &str, key: &str, secret: &str) -> StateTable {
    let credentials = aws_credential_types::Credentials::new(key, secret, None, None, "test");
    let shared = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(credentials),
        )
        .build();
    StateTable::from_shared(
        &shared,
        table,
        None,
        Some(&moto.endpoint),
        Duration::from_secs(1),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_template_s_replica_policy_is_enough_to_lead_and_one_without_update_item_is_not() {
    let ws = Workspace::new();
    // Two tables and two users (three IAM actions each) before moto checks callers.
    let moto = Moto::start_with_iam(ws.dir.path(), 8).await;
    moto.create_table(TABLE, &[("pk", "HASH"), ("sk", "RANGE")])
        .await;
    moto.create_table("lacking", &[("pk", "HASH"), ("sk", "RANGE")])
        .await;
    let mut actions = template_actions();
    assert!(actions.len() >= 5, "{actions:?}");
    // AWS authorizes a transaction by its items' actions (PutItem, ConditionCheckItem, …);
    // moto asks about the operation itself, which IAM does not have.
    actions.push("dynamodb:TransactWriteItems".into());
    // The template's actions; moto checks actions, not DynamoDB resource ARNs (it asks about
    // "*"), so the template's scope to its table is cfn-lint's to check, not this test's.
    let policy = |actions: &[String]| {
        json!({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow",
            "Action": actions,
            "Resource": "*",
        }]})
        .to_string()
    };
    let (key, secret) = moto.user("replica", &policy(&actions)).await;
    let without_update: Vec<String> = actions
        .iter()
        .filter(|a| *a != "dynamodb:UpdateItem")
        .cloned()
        .collect();
    let (lacking_key, lacking_secret) = moto.user("lacking", &policy(&without_update)).await;

    let table = table_as(&moto, TABLE, &key, &secret);
    assert_eq!(table.check().await, Ok(()), "DescribeTable is allowed");
    let replica = Replica::on(table, "a");
    let replicas = [replica];
    one_leader(&replicas, Duration::from_secs(10)).await;
    assert_eq!(
        watch_leaders(&replicas, LEASE + Duration::from_secs(1)).await,
        [0],
        "renewals are allowed"
    );
    let fence = replicas[0].fence().expect("leads");
    let written = fenced_write(&table_as(&moto, TABLE, &key, &secret), &fence).await;
    assert_eq!(written, Ok(()), "a fenced write is allowed");

    // Without UpdateItem the lease can be created but not renewed: the replica steps down.
    let lacking = Replica::on(
        table_as(&moto, "lacking", &lacking_key, &lacking_secret),
        "b",
    );
    let mut leadership = lacking.leadership.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        leadership.wait_for(|l| l.is_leader()),
    )
    .await
    .expect("it creates the lease")
    .expect("the lease runs");
    tokio::time::timeout(LEASE, leadership.wait_for(|l| !l.is_leader()))
        .await
        .expect("it steps down within the lease: renewals are refused")
        .expect("the lease runs");
    let [replica] = replicas;
    replica.stop().await;
    lacking.stop().await;
}
