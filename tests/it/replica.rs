//! The state database's replica in moto's DynamoDB: a leader's store ships every commit under
//! its lease, a new leader restores the very same rows, and a replica that does not lead
//! commits nothing.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use flowwatch::ha::lease::{Leadership, LeaseSettings};
use flowwatch::ha::member::Member;
use flowwatch::ha::replication::mirrored_rows;
use flowwatch::ha::{StateTable, TableError};
use flowwatch::testing::Store;
use flowwatch::{ExecutionKey, Status};
use flowwatch_testkit::moto::Moto;
use flowwatch_testkit::*;

const TABLE: &str = "flowwatch";

async fn member(moto: &Moto, id: &str) -> Member {
    let table = StateTable::local(&moto.endpoint, TABLE, Duration::from_secs(2));
    // Long enough for moto's transactions of 100 actions, which take it a while.
    let lease = LeaseSettings {
        replica_id: id.to_string(),
        duration: Duration::from_secs(10),
    };
    Member::start(table, lease)
        .await
        .expect("the table is usable")
}

async fn leads(member: &Member) {
    let mut leadership = member.leadership();
    tokio::time::timeout(
        Duration::from_secs(10),
        leadership.wait_for(Leadership::is_leader),
    )
    .await
    .expect("leads within 10 s")
    .expect("the lease runs");
}

fn key(n: usize) -> ExecutionKey {
    ExecutionKey::new(INSTANCE, "orders", execution_id(n)).expect("a valid key")
}

/// Every mirrored table's rows in the database in `dir`, by table.
fn contents(dir: &std::path::Path) -> BTreeMap<&'static str, Vec<String>> {
    let conn = rusqlite::Connection::open(dir.join("flowwatch.db")).expect("db");
    mirrored_rows(&conn).expect("rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_restores_every_row_the_old_one_committed_and_a_standby_commits_nothing() {
    let ws = Workspace::new();
    let moto = Moto::start(ws.dir.path()).await;
    moto.create_table(TABLE, &[("pk", "HASH"), ("sk", "RANGE")])
        .await;
    let a = member(&moto, "a").await;
    leads(&a).await;
    let b = member(&moto, "b").await;

    let first = ws.path("a");
    let rows = a.load().await.expect("load");
    assert!(rows.is_empty(), "a new table holds no rows: {rows:?}");
    let mut store = Store::restore(&first, Vec::new(), a.shipper()).expect("store");
    store.set_sinks(&["file"]).expect("sinks");
    // 250 transitions in one batch: three transactions of 99 writes and the lease's check.
    let batch = store.batch().expect("batch");
    for n in 1..=250 {
        batch
            .transition(&key(n), Status::InProgress, None, &format!("started {n}"))
            .expect("transition");
    }
    batch.commit().expect("shipped and committed");
    let batch = store.batch().expect("batch");
    batch
        .transition(&key(1), Status::Failed, None, "failed 1")
        .expect("transition");
    batch
        .finished(&key(1), Status::Failed, 1_800_000_100.0, Some(60.0), 20)
        .expect("finished");
    batch.commit().expect("committed");
    store
        .record_discovered(&key(300), SystemTime::now(), None)
        .expect("discovered");
    store.sync_replica().expect("synced");

    // b cannot commit while a leads; a hands over, and b restores the same rows.
    let elsewhere = ws.path("b-early");
    let mut early = Store::restore(&elsewhere, Vec::new(), b.shipper()).expect("store");
    let refused = early.batch().expect("batch");
    refused
        .transition(&key(999), Status::InProgress, None, "never")
        .expect("written locally");
    let error = refused.commit().expect_err("a standby commits nothing");
    assert!(error.to_string().contains("does not lead"), "{error}");
    drop(early);

    a.stop();
    leads(&b).await;
    let rows = b.load().await.expect("load");
    assert_eq!(rows.iter().filter(|(t, _)| *t == "executions").count(), 250);
    let second = ws.path("b");
    let restored = Store::restore(
        &second,
        rows.iter().map(|(t, r)| (*t, r.as_str())),
        b.shipper(),
    )
    .expect("restored");
    drop(restored);
    drop(store);
    assert_eq!(contents(&second), contents(&first));
    assert!(
        !contents(&second)["executions"]
            .iter()
            .any(|row| row.contains(&execution_id(999))),
        "nothing of the standby's refused commit"
    );
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_on_a_missing_table_says_which() {
    let ws = Workspace::new();
    let moto = Moto::start(ws.dir.path()).await;
    let table = StateTable::local(&moto.endpoint, "absent", Duration::from_secs(2));
    let lease = LeaseSettings {
        replica_id: "a".into(),
        duration: Duration::from_secs(3),
    };
    match Member::start(table, lease).await {
        Err(e @ TableError::Missing { .. }) => assert!(e.to_string().contains("\"absent\"")),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a missing table is refused"),
    }
}
