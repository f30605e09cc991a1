//! Flow health: a run far longer than its flow's recent runs is overdue, once.

use std::sync::Arc;
use std::time::Duration;

use super::rig::{Rig, Setup, events_of, key, wall, watchlist};
use super::scripted::{Scripted, running, succeeded};
use crate::model::ExecutionKey;

/// An engine watching three runs of "orders" that took a minute each, and one more started
/// `running_for` seconds ago, 30 s after it started.
async fn history_and(running_for: f64) -> (Rig, ExecutionKey) {
    let api = Arc::new(Scripted::default());
    let mut runs: Vec<ExecutionKey> = (1..=3).map(|n| key("orders", n)).collect();
    for (n, k) in runs.iter().enumerate() {
        let start = wall() - 7200.0 + n as f64 * 600.0;
        api.gets(k, [succeeded(start, start + 60.0)]);
    }
    let current = key("orders", 4);
    api.gets(&current, [running(wall() - running_for)]);
    runs.push(current.clone());
    let all: Vec<&ExecutionKey> = runs.iter().collect();
    let rig = Rig::start(api, watchlist(&all, &[]), Setup::ladder()).await;
    rig.until(Duration::from_secs(30)).await;
    (rig, current)
}

#[tokio::test(start_paused = true)]
async fn a_run_far_longer_than_its_flow_s_recent_runs_is_overdue_once() {
    let (rig, current) = history_and(1000.0).await;
    let view = rig.execution(&current).await.expect("watched");
    assert!(
        view.overdue,
        "1,000 s against a median of 60 s and overdue_min of 600 s"
    );
    let series = format!(
        "flowwatch_execution_overdue{{execution_id=\"{}\",flow_name=\"orders\",instance_id=\"{}\"}}",
        current.execution_id, current.instance_id
    );
    assert_eq!(rig.sample(&series), Some(1.0));
    rig.until(Duration::from_secs(900)).await;
    let (_, events) = rig.stop().await;
    assert_eq!(
        events_of(&events, "flowwatch.execution.overdue", &current).len(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_within_its_flow_s_usual_time_has_an_expected_end_and_is_not_overdue() {
    let (rig, current) = history_and(30.0).await;
    let view = rig.execution(&current).await.expect("watched");
    assert!(!view.overdue);
    let start = view
        .observation
        .and_then(|o| o.start_time)
        .expect("a start");
    assert_eq!(
        view.expected_end,
        Some(start + 60.0),
        "start plus the median"
    );
    let (_, events) = rig.stop().await;
    assert!(events_of(&events, "flowwatch.execution.overdue", &current).is_empty());
}
