//! The watch set: how long a terminal execution's series stay, reloads, restarts and `/status`
//! selections.

use std::sync::Arc;
use std::time::Duration;

use super::rig::{Rig, Setup, flow_key, key, wall, watched_flow, watchlist};
use super::scripted::{Scripted, running, succeeded};
use crate::api::ListPage;
use crate::engine::{ReloadSummary, StatusQuery};
use crate::model::ExecutionKey;

fn exports(rig: &Rig, key: &ExecutionKey) -> bool {
    let id = format!("execution_id=\"{}\"", key.execution_id);
    rig.metrics
        .render()
        .lines()
        .any(|l| l.starts_with("flowwatch_execution_status{") && l.contains(&id))
}

#[tokio::test(start_paused = true)]
async fn a_terminal_execution_s_series_go_when_retain_terminal_is_over() {
    let api = Arc::new(Scripted::default());
    let k = key("orders", 1);
    api.gets(&k, [succeeded(wall() - 100.0, wall() - 10.0)]);
    let mut setup = Setup::ladder();
    setup.polling.retain_terminal = Duration::from_secs(600);
    let rig = Rig::start(api, watchlist(&[&k], &[]), setup).await;
    rig.until(Duration::from_secs(590)).await;
    assert!(exports(&rig, &k), "kept while retain_terminal runs");
    assert_eq!(rig.execution(&k).await.map(|v| v.retained), Some(true));
    rig.until(Duration::from_secs(610)).await;
    assert!(!exports(&rig, &k), "gone after it");
    let view = rig.execution(&k).await.expect("still in /status");
    assert!(!view.retained);
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_terminal_discovered_execution_leaves_the_watch_set_after_retain_terminal() {
    let api = Arc::new(Scripted::default());
    let k = key("orders", 1);
    let run = succeeded(wall() + 1.0, wall() + 2.0).expect("scripted");
    let listed = ListPage {
        executions: vec![(k.clone(), run)],
        invalid: Vec::new(),
        next_token: None,
    };
    api.lists(&flow_key("orders"), [Ok(listed)]);
    let mut setup = Setup::ladder();
    setup.polling.retain_terminal = Duration::from_secs(600);
    let flows = [watched_flow("orders", None)];
    let rig = Rig::start(api, watchlist(&[], &flows), setup).await;
    rig.until(Duration::from_secs(10)).await;
    assert!(
        rig.execution(&k).await.is_some(),
        "joined, already SUCCEEDED"
    );
    rig.until(Duration::from_secs(700)).await;
    assert!(
        rig.execution(&k).await.is_none(),
        "left; the store remembers it"
    );
    assert!(!exports(&rig, &k));
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_keeps_what_stays_adds_what_is_new_and_forgets_what_went() {
    let api = Arc::new(Scripted::default());
    let (gone, stays, new) = (key("orders", 1), key("orders", 2), key("orders", 3));
    for k in [&gone, &stays, &new] {
        api.gets(k, [running(wall() - 60.0)]);
    }
    let rig = Rig::start(
        api.clone(),
        watchlist(&[&gone, &stays], &[]),
        Setup::ladder(),
    )
    .await;
    rig.until(Duration::from_secs(100)).await;
    let attempts = rig.execution(&stays).await.expect("watched").attempts;
    assert!(attempts >= 3);
    let summary = rig
        .engine
        .replace(watchlist(&[&stays, &new], &[]), None)
        .await
        .expect("the engine answers");
    assert_eq!(
        summary,
        ReloadSummary {
            added: 1,
            removed: 1,
            kept: 1
        }
    );
    let polls_of_gone = api.gets_of(&gone, rig.start).len();
    rig.until(Duration::from_secs(400)).await;
    assert_eq!(
        api.gets_of(&gone, rig.start).len(),
        polls_of_gone,
        "no poll after it went"
    );
    assert!(rig.execution(&gone).await.is_none());
    let kept = rig.execution(&stays).await.expect("kept");
    assert!(kept.attempts > attempts, "its state and ladder went on");
    assert!(
        !api.gets_of(&new, rig.start).is_empty(),
        "the new one is polled"
    );
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_drops_a_flow_takes_its_discovered_executions_with_it() {
    let api = Arc::new(Scripted::default());
    let found = key("orders", 1);
    let run = running(wall() + 5.0).expect("scripted");
    let listed = ListPage {
        executions: vec![(found.clone(), run)],
        invalid: Vec::new(),
        next_token: None,
    };
    api.lists(&flow_key("orders"), [Ok(listed)]);
    api.gets(&found, [running(wall())]);
    let flows = [watched_flow("orders", None)];
    let rig = Rig::start(api.clone(), watchlist(&[], &flows), Setup::ladder()).await;
    rig.until(Duration::from_secs(10)).await;
    assert_eq!(rig.status().await.watched, 1);
    rig.engine
        .replace(watchlist(&[], &[]), None)
        .await
        .expect("the engine answers");
    let status = rig.status().await;
    assert_eq!((status.watched, status.flows.len()), (0, 0));
    let lists = api.lists_of(&flow_key("orders"), rig.start).len();
    rig.until(Duration::from_secs(300)).await;
    assert_eq!(
        api.lists_of(&flow_key("orders"), rig.start).len(),
        lists,
        "not listed again"
    );
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_terminal_execution_is_not_polled_again_after_a_restart() {
    let api = Arc::new(Scripted::default());
    let (done, running_one) = (key("orders", 1), key("orders", 2));
    api.gets(&done, [succeeded(wall() - 100.0, wall() - 10.0)]);
    api.gets(&running_one, [running(wall() - 100.0)]);
    let list = watchlist(&[&done, &running_one], &[]);
    let rig = Rig::start(api.clone(), list.clone(), Setup::ladder()).await;
    rig.until(Duration::from_secs(30)).await;
    let before = api.gets_of(&done, rig.start).len();
    let rig = rig.restart(list).await;
    rig.wait(Duration::from_secs(300)).await;
    assert_eq!(
        api.gets_of(&done, rig.start).len(),
        0,
        "known SUCCEEDED: not asked again"
    );
    assert_eq!(before, 1);
    assert!(
        !api.gets_of(&running_one, rig.start).is_empty(),
        "the running one is"
    );
    let view = rig.execution(&done).await.expect("watched");
    assert_eq!(view.status, crate::model::Status::Succeeded);
    let (_, events) = rig.stop().await;
    let repeats = super::rig::events_of(&events, "flowwatch.execution.transition", &done);
    assert_eq!(
        repeats.len(),
        1,
        "the one event from the first run, not repeated"
    );
}

#[tokio::test(start_paused = true)]
async fn a_status_query_selects_one_flow_and_pages_through_its_executions() {
    let api = Arc::new(Scripted::default());
    let orders: Vec<ExecutionKey> = (1..=5).map(|n| key("orders", n)).collect();
    let other = key("invoices", 9);
    let mut all: Vec<&ExecutionKey> = orders.iter().collect();
    all.push(&other);
    let rig = Rig::start(api, watchlist(&all, &[]), Setup::ladder()).await;
    let query = |offset| StatusQuery {
        flow: Some(flow_key("orders")),
        offset,
        limit: 2,
    };
    let first = rig.engine.status(query(0)).await.expect("answered");
    assert_eq!((first.watched, first.executions_total), (6, 5));
    assert_eq!(first.executions.len(), 2);
    assert_eq!(first.next_offset, Some(2));
    let last = rig.engine.status(query(4)).await.expect("answered");
    assert_eq!(last.executions.len(), 1);
    assert_eq!(last.next_offset, None);
    assert!(
        last.executions
            .iter()
            .all(|e| &*e.entry.key.flow_name == "orders")
    );
    rig.stop().await;
}

/// `key`'s `flowwatch_execution_labels` sample with these `label_*` labels (`,label_team="x"`).
fn labels_series(key: &ExecutionKey, labels: &str) -> String {
    format!(
        "flowwatch_execution_labels{{execution_id=\"{}\",flow_name=\"{}\",instance_id=\"{}\"{labels}}}",
        key.execution_id, key.flow_name, key.instance_id
    )
}

fn team(name: &str) -> std::collections::BTreeMap<String, String> {
    [("team".to_string(), name.to_string())].into()
}

#[tokio::test(start_paused = true)]
async fn the_labels_series_follow_the_watchlist_and_go_with_the_execution_s_series() {
    let api = Arc::new(Scripted::default());
    let (listed, found) = (key("orders", 1), key("weekly", 2));
    api.gets(&listed, [succeeded(wall() - 100.0, wall() - 10.0)]);
    let listing = ListPage {
        executions: vec![(found.clone(), running(wall() + 1.0).expect("scripted"))],
        invalid: Vec::new(),
        next_token: None,
    };
    api.lists(&flow_key("weekly"), [Ok(listing)]);
    api.gets(&found, [running(wall() + 1.0)]);
    let at = |listed_team: &str, flow_team: &str| {
        let mut list = watchlist(&[&listed], &[watched_flow("weekly", None)]);
        list.entries[0].labels = team(listed_team);
        list.flows[0].labels = team(flow_team);
        list
    };
    let mut setup = Setup::ladder();
    setup.polling.retain_terminal = Duration::from_secs(600);
    let rig = Rig::start(api, at("planning", "forecasting"), setup).await;
    rig.until(Duration::from_secs(10)).await;
    let flow_series = |team: &str| {
        format!(
            "flowwatch_flow_labels{{flow_name=\"weekly\",instance_id=\"{}\",label_team=\"{team}\"}}",
            listed.instance_id
        )
    };
    assert_eq!(
        rig.sample(&labels_series(&listed, ",label_team=\"planning\"")),
        Some(1.0)
    );
    assert_eq!(
        rig.sample(&labels_series(&found, ",label_team=\"forecasting\"")),
        Some(1.0)
    );
    assert_eq!(rig.sample(&flow_series("forecasting")), Some(1.0));

    rig.engine
        .replace(at("billing", "ops"), None)
        .await
        .expect("the engine answers");
    assert_eq!(
        rig.sample(&labels_series(&listed, ",label_team=\"billing\"")),
        Some(1.0)
    );
    assert_eq!(
        rig.sample(&labels_series(&found, ",label_team=\"ops\"")),
        Some(1.0)
    );
    assert_eq!(rig.sample(&flow_series("ops")), Some(1.0));
    assert_eq!(rig.sample(&flow_series("forecasting")), None);
    let text = rig.metrics.render();
    assert_eq!(
        text.matches("flowwatch_execution_labels{").count(),
        2,
        "{text}"
    );

    rig.until(Duration::from_secs(620)).await;
    assert_eq!(
        rig.sample(&labels_series(&listed, ",label_team=\"billing\"")),
        None,
        "gone with the terminal execution's other series"
    );
    rig.engine
        .replace(at("sales", "ops"), None)
        .await
        .expect("the engine answers");
    assert!(
        !rig.metrics
            .render()
            .contains(&listed.execution_id.to_string()),
        "a relabel brings no dropped series back"
    );
    let mut without_flow = at("sales", "ops");
    without_flow.flows.clear();
    rig.engine
        .replace(without_flow, None)
        .await
        .expect("the engine answers");
    let text = rig.metrics.render();
    assert!(!text.contains("flowwatch_flow_labels{"), "{text}");
    assert!(!text.contains("flowwatch_execution_labels{"), "{text}");
    rig.stop().await;
}
