//! Push against polls: pushed changes apply at once, polls only reconcile while receiving works,
//! and a pushed status is never believed over a newer or contradicting one.

use std::sync::Arc;
use std::time::Duration;

use super::rig::{Rig, Setup, events_of, key, wall, watchlist};
use super::scripted::{Scripted, running, succeeded};
use crate::engine::receiver::PushNews;
use crate::model::{ExecutionKey, Status};

const RECONCILE: Duration = Duration::from_secs(300);
const START: &str = "2026-12-01T10:00:00Z";

fn pushed_count(rig: &Rig, outcome: &str) -> f64 {
    let series = format!("flowwatch_push_messages_total{{outcome=\"{outcome}\"}}");
    rig.sample(&series).unwrap_or_default()
}

async fn running_and_pushing(fetch_details: bool) -> (Rig, ExecutionKey) {
    let api = Arc::new(Scripted::default());
    let k = key("orders", 1);
    api.gets(&k, [running(wall() - 60.0)]);
    let setup = Setup::push(RECONCILE, fetch_details);
    let rig = Rig::start(api, watchlist(&[&k], &[]), setup).await;
    rig.push(PushNews::Working).await;
    rig.wait(Duration::from_secs(1)).await;
    (rig, k)
}

#[tokio::test(start_paused = true)]
async fn a_pushed_end_is_applied_at_once_and_its_message_acknowledged() {
    let (mut rig, k) = running_and_pushing(false).await;
    assert_eq!(
        rig.execution(&k).await.map(|v| v.status),
        Some(Status::InProgress)
    );
    rig.push(Rig::pushed(
        &k,
        "SUCCEEDED",
        START,
        Some("2026-12-01T10:05:00Z"),
    ))
    .await;
    rig.wait(Duration::from_secs(1)).await;
    assert_eq!(
        rig.execution(&k).await.map(|v| v.status),
        Some(Status::Succeeded)
    );
    assert_eq!(pushed_count(&rig, "applied"), 1.0);
    let acks = rig.push_acks.as_mut().expect("push").try_recv();
    assert!(
        acks.is_ok_and(|receipts| receipts.len() == 1),
        "deleted once committed"
    );
    let (_, events) = rig.stop().await;
    let ends = events_of(&events, "flowwatch.execution.transition", &k);
    assert_eq!(
        ends.last().map(|e| &e["data"]["observed_via"]),
        Some(&"push".into())
    );
}

#[tokio::test(start_paused = true)]
async fn while_push_works_running_executions_are_polled_only_to_reconcile() {
    let (rig, k) = running_and_pushing(false).await;
    rig.until(Duration::from_secs(1000)).await;
    let polls = rig.api.gets_of(&k, rig.start);
    let gaps: Vec<Duration> = polls.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(!gaps.is_empty(), "{polls:?}");
    assert!(
        gaps.iter()
            .all(|g| *g >= RECONCILE && *g <= RECONCILE.mul_f64(1.1)),
        "{gaps:?}"
    );
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn when_receiving_fails_polling_takes_back_its_own_pace() {
    let (rig, k) = running_and_pushing(false).await;
    rig.push(PushNews::Failing("transport error".into())).await;
    let since = rig.api.gets_of(&k, rig.start).len();
    rig.until(Duration::from_secs(400)).await;
    let polls = rig.api.gets_of(&k, rig.start);
    assert!(polls.len() - since >= 3, "back on the ladder: {polls:?}");
    let view = rig.status().await.push.expect("push is set up");
    assert!(!view.healthy);
    assert_eq!(view.reason.as_deref(), Some("transport error"));
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_older_pushed_status_is_stale_and_changes_nothing() {
    let api = Arc::new(Scripted::default());
    let k = key("orders", 1);
    api.gets(&k, [succeeded(wall() - 100.0, wall() - 10.0)]);
    let rig = Rig::start(api, watchlist(&[&k], &[]), Setup::push(RECONCILE, false)).await;
    rig.push(PushNews::Working).await;
    rig.wait(Duration::from_secs(1)).await;
    rig.push(Rig::pushed(&k, "IN_PROGRESS", START, None)).await;
    rig.wait(Duration::from_secs(1)).await;
    assert_eq!(pushed_count(&rig, "stale"), 1.0);
    assert_eq!(
        rig.execution(&k).await.map(|v| v.status),
        Some(Status::Succeeded)
    );
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pushed_end_the_api_denies_settles_nothing() {
    let (rig, k) = running_and_pushing(true).await;
    rig.push(Rig::pushed(
        &k,
        "FAILED",
        START,
        Some("2026-12-01T10:05:00Z"),
    ))
    .await;
    rig.wait(Duration::from_secs(2)).await;
    assert_eq!(pushed_count(&rig, "contradicted"), 1.0);
    assert_eq!(pushed_count(&rig, "applied"), 0.0);
    assert_eq!(
        rig.execution(&k).await.map(|v| v.status),
        Some(Status::InProgress)
    );
    let (_, events) = rig.stop().await;
    let failed = events_of(&events, "flowwatch.execution.transition", &k)
        .into_iter()
        .filter(|e| e["data"]["to_status"] == "FAILED")
        .count();
    assert_eq!(failed, 0);
}

#[tokio::test(start_paused = true)]
async fn one_queue_carries_every_account_s_events_each_checked_against_its_instance() {
    use super::budgets::{OTHER as MEMBER, two_budgets};
    let api = Arc::new(Scripted::default());
    let member = ExecutionKey::new(MEMBER, "orders", "a1b2c3d4-0000-4000-8000-000000000007")
        .expect("a valid key");
    let (forged, local) = (
        ExecutionKey::new(MEMBER, "orders", "a1b2c3d4-0000-4000-8000-000000000008")
            .expect("a valid key"),
        key("orders", 1),
    );
    for k in [&member, &forged, &local] {
        api.gets(k, [running(wall() - 60.0)]);
    }
    let mut setup = Setup::push(RECONCILE, false);
    setup.budgets = Some(two_budgets(5.0));
    let rig = Rig::start(api, watchlist(&[&member, &forged, &local], &[]), setup).await;
    rig.push(PushNews::Working).await;
    rig.wait(Duration::from_secs(1)).await;
    let end = Some("2026-12-01T10:05:00Z");
    for news in [
        Rig::pushed_from(
            &member,
            "SUCCEEDED",
            START,
            end,
            ("222222222222", "eu-central-1"),
        ),
        Rig::pushed_from(
            &forged,
            "FAILED",
            START,
            end,
            ("333333333333", "eu-central-1"),
        ),
        Rig::pushed_from(&forged, "FAILED", START, end, ("222222222222", "us-east-1")),
        Rig::pushed(&local, "SUCCEEDED", START, end),
    ] {
        rig.push(news).await;
    }
    rig.wait(Duration::from_secs(1)).await;
    let status = |k: &ExecutionKey| {
        let rig = &rig;
        let k = k.clone();
        async move { rig.execution(&k).await.map(|v| v.status) }
    };
    assert_eq!(
        status(&member).await,
        Some(Status::Succeeded),
        "its account and region"
    );
    assert_eq!(status(&local).await, Some(Status::Succeeded));
    assert_eq!(
        status(&forged).await,
        Some(Status::InProgress),
        "another account, or another region, than its instance's"
    );
    assert_eq!(pushed_count(&rig, "applied"), 2.0);
    assert_eq!(pushed_count(&rig, "unwatched"), 2.0);
    rig.stop().await;
}
