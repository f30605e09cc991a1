//! Budgets per account and region: one account's throttling and backlog never slow another's.

use std::sync::Arc;
use std::time::Duration;

use super::rig::{REGION, Rig, Setup, wall, watchlist};
use super::scripted::{Scripted, running, throttled};
use crate::engine::BudgetPlan;
use crate::input::config::AwsSettings;
use crate::input::instances::{InstanceSettings, Role};
use crate::model::ExecutionKey;

/// An instance in another account (and region), with its own cap.
pub(super) const OTHER: &str = "9960d65f-f298-4fa7-89d4-6370f165174e";

fn key_in(instance: &str, n: u32) -> ExecutionKey {
    ExecutionKey::new(
        instance,
        "orders",
        format!("a1b2c3d4-0000-4000-8000-{n:012}"),
    )
    .expect("a valid key")
}

/// The base budget at 5/s, and `OTHER`'s account (222222222222) in eu-central-1 at
/// `other_rate`.
pub(super) fn two_budgets(other_rate: f64) -> BudgetPlan {
    let aws = AwsSettings {
        instances: vec![InstanceSettings {
            id: OTHER.into(),
            region: Some("eu-central-1".into()),
            role: Some(Role {
                arn: "arn:aws:iam::222222222222:role/flowwatch-reader".into(),
                account_id: "222222222222".into(),
                external_id: None,
            }),
            endpoint_url: None,
            max_requests_per_second: Some(other_rate),
        }],
        ..AwsSettings::default()
    };
    BudgetPlan::of(&aws, REGION, 5.0)
}

fn rate_of(rig: &Rig, account_id: &str, region: &str) -> Option<f64> {
    rig.sample(&format!(
        "flowwatch_rate_limit_requests_per_second{{account_id=\"{account_id}\",region=\"{region}\"}}"
    ))
}

#[tokio::test(start_paused = true)]
async fn throttling_in_one_account_leaves_the_other_s_rate_and_polls_alone() {
    let api = Arc::new(Scripted::default());
    let (throttled_one, fine) = (key_in(OTHER, 1), key_in(super::rig::INSTANCE, 2));
    api.gets(&throttled_one, [Err(throttled())]);
    api.gets(&fine, [running(wall())]);
    let mut setup = Setup::ladder();
    setup.budgets = Some(two_budgets(5.0));
    let rig = Rig::start(api.clone(), watchlist(&[&throttled_one, &fine], &[]), setup).await;
    rig.until(Duration::from_secs(300)).await;
    let cut = rate_of(&rig, "222222222222", "eu-central-1").expect("its own series");
    assert!(cut < 5.0, "the throttled account's rate is cut: {cut}");
    assert_eq!(rate_of(&rig, "", REGION), Some(5.0), "the other's is not");
    // The ladder (5 s doubling to 2 min) polls the fine one at 0-5 s, then 5, 10, 20, 40, 80
    // and 120 s apart: at least 6 polls in 300 s, as without the throttled account.
    let polls = api.gets_of(&fine, rig.start).len();
    assert!(polls >= 6, "{polls} polls of the fine execution");
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_backlog_in_one_account_never_delays_another_s_due_polls() {
    let api = Arc::new(Scripted::default());
    // 40 executions in an account allowed one request every 10 s, one in the base account.
    let backlog: Vec<ExecutionKey> = (1..=40).map(|n| key_in(OTHER, n)).collect();
    for k in &backlog {
        api.gets(k, [running(wall())]);
    }
    let fine = key_in(super::rig::INSTANCE, 100);
    api.gets(&fine, [running(wall())]);
    let mut setup = Setup::ladder();
    setup.polling.max_in_flight = 1;
    setup.budgets = Some(two_budgets(0.1));
    let mut listed: Vec<&ExecutionKey> = backlog.iter().collect();
    listed.push(&fine);
    let rig = Rig::start(api.clone(), watchlist(&listed, &[]), setup).await;
    rig.until(Duration::from_secs(60)).await;
    let fine_polls = api.gets_of(&fine, rig.start);
    let backlog_polls: usize = backlog
        .iter()
        .map(|k| api.gets_of(k, rig.start).len())
        .sum();
    assert!(
        backlog_polls <= 8,
        "the slow account gets about one call in 10 s: {backlog_polls}"
    );
    // First poll within the start-up spread (5 s), then 5, 10 and 20 s apart.
    assert!(
        fine_polls
            .first()
            .is_some_and(|t| *t <= Duration::from_secs(5)),
        "{fine_polls:?}"
    );
    assert!(fine_polls.len() >= 4, "{fine_polls:?}");
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn each_instance_is_shown_with_its_budget_and_leaves_with_its_last_entry() {
    let api = Arc::new(Scripted::default());
    let (other, base) = (key_in(OTHER, 1), key_in(super::rig::INSTANCE, 2));
    api.gets(&other, [running(wall())]);
    api.gets(&base, [running(wall())]);
    let mut setup = Setup::ladder();
    setup.budgets = Some(two_budgets(5.0));
    let rig = Rig::start(api, watchlist(&[&other, &base], &[]), setup).await;
    rig.until(Duration::from_secs(10)).await;
    let info = format!(
        "flowwatch_instance_info{{account_id=\"222222222222\",instance_id=\"{OTHER}\",region=\"eu-central-1\"}}"
    );
    assert_eq!(rig.sample(&info), Some(1.0));
    assert_eq!(
        rig.sample(&format!("flowwatch_instance_up{{instance_id=\"{OTHER}\"}}")),
        Some(1.0)
    );
    let shown = rig.status().await.instances;
    assert_eq!(shown.len(), 2);
    let other_view = shown
        .iter()
        .find(|i| i.instance_id == OTHER)
        .expect("shown");
    assert_eq!(
        (
            other_view.region.as_str(),
            other_view.account_id.as_str(),
            other_view.up
        ),
        ("eu-central-1", "222222222222", true)
    );
    rig.engine
        .replace(watchlist(&[&base], &[]), None)
        .await
        .expect("the engine answers");
    assert_eq!(rig.sample(&info), None, "gone with its last entry");
    let text = rig.metrics.render();
    let other_series = format!("flowwatch_instance_up{{instance_id=\"{OTHER}\"}}");
    assert!(!text.contains(&other_series), "{text}");
    assert_eq!(rig.status().await.instances.len(), 1);
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_moves_an_instance_to_its_new_budget_and_back_and_its_polls_go_on() {
    let api = Arc::new(Scripted::default());
    let (other, base) = (key_in(OTHER, 1), key_in(super::rig::INSTANCE, 2));
    api.gets(&other, [running(wall())]);
    api.gets(&base, [running(wall())]);
    let both = || watchlist(&[&other, &base], &[]);
    let rig = Rig::start(api.clone(), both(), Setup::ladder()).await;
    let info = |account: &str, region: &str| {
        rig.sample(&format!(
            "flowwatch_instance_info{{account_id=\"{account}\",instance_id=\"{OTHER}\",region=\"{region}\"}}"
        ))
    };
    rig.until(Duration::from_secs(10)).await;
    assert_eq!(info("", REGION), Some(1.0), "on the base credentials first");

    rig.engine
        .replace(both(), Some(two_budgets(0.5)))
        .await
        .expect("the engine answers");
    assert_eq!(info("", REGION), None);
    assert_eq!(info("222222222222", "eu-central-1"), Some(1.0));
    assert_eq!(rate_of(&rig, "222222222222", "eu-central-1"), Some(0.5));
    assert_eq!(rate_of(&rig, "", REGION), Some(5.0));
    let polled = |key: &ExecutionKey| api.gets_of(key, rig.start).len();
    let (other_before, base_before) = (polled(&other), polled(&base));
    rig.until(Duration::from_secs(300)).await;
    assert!(
        polled(&other) > other_before,
        "its queued poll moved with it"
    );
    assert!(polled(&base) > base_before);

    rig.engine
        .replace(both(), Some(BudgetPlan::single(REGION, 5.0)))
        .await
        .expect("the engine answers");
    assert_eq!(info("", REGION), Some(1.0), "back on the base credentials");
    assert_eq!(
        rate_of(&rig, "222222222222", "eu-central-1"),
        None,
        "a budget no instance uses shows no rate"
    );
    let other_before = polled(&other);
    rig.until(Duration::from_secs(600)).await;
    assert!(polled(&other) > other_before);
    assert_eq!(rig.status().await.executions_total, 2);
    rig.stop().await;
}
