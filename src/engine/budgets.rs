//! Request budgets: one per AWS account and region, as AWS's quotas are. Each holds the due-time
//! queue of its instances' jobs and a rate limiter (token bucket, AIMD) of its own, so throttling
//! in one account never slows another, and one budget's backlog never waits at the head of a
//! queue that others share. The in-flight bound stays one for the process.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;

use crate::engine::pacing::RateLimiter;
use crate::engine::pool::Job;
use crate::engine::queue::{DueQueue, Slot};
use crate::input::config::AwsSettings;

/// The account and region a budget serves. The base credentials' account is `""`: flowwatch
/// does not ask STS who it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BudgetKey {
    pub account_id: String,
    pub region: String,
}

/// Which budgets there are, and which serves each instance; the first serves every instance
/// without an `[[aws.instance]]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetPlan {
    budgets: Vec<(BudgetKey, f64)>,
    of_instance: HashMap<String, usize>,
}

impl BudgetPlan {
    /// One budget for everything, at `max_rate`.
    pub fn single(region: &str, max_rate: f64) -> Self {
        Self {
            budgets: vec![(base(region), max_rate)],
            of_instance: HashMap::new(),
        }
    }

    /// A budget per account and region of `aws`'s instances, beside the base one in `region`;
    /// an instance's cap is its own or `max_rate` (the config's checks make the instances of one
    /// budget agree).
    pub fn of(aws: &AwsSettings, region: &str, max_rate: f64) -> Self {
        let mut plan = Self::single(region, max_rate);
        for instance in &aws.instances {
            let key = BudgetKey {
                account_id: instance
                    .role
                    .as_ref()
                    .map_or_else(String::new, |r| r.account_id.clone()),
                region: instance
                    .region
                    .clone()
                    .unwrap_or_else(|| region.to_string()),
            };
            let rate = instance.max_requests_per_second.unwrap_or(max_rate);
            let index = match plan.budgets.iter().position(|(k, _)| *k == key) {
                Some(index) => index,
                None => {
                    plan.budgets.push((key, rate));
                    plan.budgets.len() - 1
                }
            };
            plan.of_instance.insert(instance.id.clone(), index);
        }
        plan
    }

    #[cfg(test)]
    pub fn keys(&self) -> impl Iterator<Item = &BudgetKey> {
        self.budgets.iter().map(|(k, _)| k)
    }
}

fn base(region: &str) -> BudgetKey {
    BudgetKey {
        account_id: String::new(),
        region: region.to_string(),
    }
}

/// What a new plan changed: the budgets gone, and those new or with a new cap (with it).
#[derive(Debug, Default, PartialEq)]
pub struct BudgetChanges {
    pub left: Vec<BudgetKey>,
    pub joined: Vec<(BudgetKey, f64)>,
}

/// One budget: its key, its queue of due jobs and its rate.
#[derive(Debug)]
pub struct Budget {
    pub key: BudgetKey,
    pub due: DueQueue<Job>,
    pub limiter: Arc<RateLimiter>,
}

/// Every budget, and which serves each instance.
#[derive(Debug)]
pub struct Budgets {
    budgets: Vec<Budget>,
    of_instance: HashMap<String, usize>,
}

impl Budgets {
    pub fn new(plan: BudgetPlan) -> Self {
        Self::build(plan, |_, _| None)
    }

    /// The budgets of `plan`, with nothing queued, and what changed from these: a budget whose
    /// account, region and cap stay keeps its limiter, so its AIMD rate and tokens carry on.
    pub fn successor(&self, plan: BudgetPlan) -> (Self, BudgetChanges) {
        let left = self
            .budgets
            .iter()
            .filter(|b| !plan.budgets.iter().any(|(key, _)| *key == b.key))
            .map(|b| b.key.clone())
            .collect();
        let mut joined = Vec::new();
        let next = Self::build(plan, |key, rate| {
            let kept = self
                .budgets
                .iter()
                .find(|b| b.key == *key && b.limiter.max_rate() == rate)
                .map(|b| b.limiter.clone());
            if kept.is_none() {
                joined.push((key.clone(), rate));
            }
            kept
        });
        (next, BudgetChanges { left, joined })
    }

    /// Budgets for `plan`, each with the limiter `reuse` gives for its key and cap, or a new one.
    fn build(
        plan: BudgetPlan,
        mut reuse: impl FnMut(&BudgetKey, f64) -> Option<Arc<RateLimiter>>,
    ) -> Self {
        let budgets = plan
            .budgets
            .into_iter()
            .map(|(key, rate)| Budget {
                limiter: reuse(&key, rate).unwrap_or_else(|| Arc::new(RateLimiter::new(rate))),
                key,
                due: DueQueue::default(),
            })
            .collect();
        Self {
            budgets,
            of_instance: plan.of_instance,
        }
    }

    /// Every queued job with its slot, the budgets emptied.
    pub fn into_jobs(self) -> impl Iterator<Item = (Slot, Job)> {
        self.budgets.into_iter().flat_map(|b| b.due.into_items())
    }

    /// The budget that pays for `job`.
    pub fn of_job(&self, job: &Job) -> usize {
        let instance = match job {
            Job::Get(key) => &*key.instance_id,
            Job::List(flow) => flow.instance_id.as_str(),
        };
        self.of_instance(instance)
    }

    pub fn of_instance(&self, instance_id: &str) -> usize {
        self.of_instance.get(instance_id).copied().unwrap_or(0)
    }

    pub fn get(&self, index: usize) -> &Budget {
        &self.budgets[index]
    }

    pub fn push(&mut self, index: usize, at: Instant, job: Job) -> Slot {
        self.budgets[index].due.push(at, job)
    }

    pub fn remove(&mut self, index: usize, slot: &Slot) {
        self.budgets[index].due.remove(slot);
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, &Budget)> {
        self.budgets.iter().enumerate()
    }

    /// When the earliest job of any budget is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.budgets.iter().filter_map(|b| b.due.next_due()).min()
    }

    pub fn is_empty(&self) -> bool {
        self.budgets.iter().all(|b| b.due.is_empty())
    }

    /// The budget whose head job can go first: when its due time has come and its limiter has a
    /// token, whichever is later, the earliest of all.
    pub fn first_ready(&self) -> Option<(usize, Instant)> {
        self.iter()
            .filter_map(|(i, b)| Some((i, b.due.next_due()?.max(b.limiter.ready_at()))))
            .min_by_key(|(i, at)| (*at, *i))
    }

    /// Takes the head job of budget `index`.
    pub fn pop_head(&mut self, index: usize) -> Option<Job> {
        self.budgets[index].due.pop_first()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::instances::{InstanceSettings, Role};

    fn instance(id: &str, account: Option<&str>, region: Option<&str>) -> InstanceSettings {
        InstanceSettings {
            id: id.into(),
            region: region.map(str::to_string),
            role: account.map(|a| Role {
                arn: format!("arn:aws:iam::{a}:role/r"),
                account_id: a.into(),
                external_id: None,
            }),
            endpoint_url: None,
            max_requests_per_second: None,
        }
    }

    #[test]
    fn instances_of_one_account_and_region_share_a_budget() {
        let aws = AwsSettings {
            instances: vec![
                instance("a", Some("222222222222"), Some("eu-central-1")),
                instance("b", Some("222222222222"), Some("eu-central-1")),
                instance("c", Some("222222222222"), None),
                instance("d", None, Some("eu-west-1")),
                instance("e", None, None),
            ],
            ..AwsSettings::default()
        };
        let plan = BudgetPlan::of(&aws, "us-east-1", 5.0);
        let keys: Vec<(&str, &str)> = plan
            .keys()
            .map(|k| (k.account_id.as_str(), k.region.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("", "us-east-1"),
                ("222222222222", "eu-central-1"),
                ("222222222222", "us-east-1"),
                ("", "eu-west-1"),
            ]
        );
        let budgets = Budgets::new(plan);
        let of = |i: &str| budgets.of_instance(i);
        assert_eq!(of("a"), of("b"));
        assert_eq!(
            of("e"),
            0,
            "the base account and region, as any unlisted instance"
        );
        assert_eq!(of("unlisted"), 0);
        assert_ne!(of("c"), of("a"));
    }

    #[test]
    fn a_new_plan_keeps_the_limiter_of_a_budget_that_stays_and_names_what_changed() {
        let one = |region: &str, rate: f64| AwsSettings {
            instances: vec![InstanceSettings {
                max_requests_per_second: Some(rate),
                ..instance("a", Some("222222222222"), Some(region))
            }],
            ..AwsSettings::default()
        };
        let budgets = Budgets::new(BudgetPlan::of(&one("eu-west-1", 2.0), "us-east-1", 5.0));
        budgets.get(1).limiter.on_throttle(None);
        let cut = budgets.get(1).limiter.rate();
        assert!(cut < 2.0);

        let (same, changes) =
            budgets.successor(BudgetPlan::of(&one("eu-west-1", 2.0), "us-east-1", 5.0));
        assert_eq!(changes, BudgetChanges::default());
        assert!(Arc::ptr_eq(&same.get(1).limiter, &budgets.get(1).limiter));
        assert_eq!(same.get(1).limiter.rate(), cut, "the cut carries on");

        let (capped, changes) =
            budgets.successor(BudgetPlan::of(&one("eu-west-1", 3.0), "us-east-1", 5.0));
        let key = BudgetKey {
            account_id: "222222222222".into(),
            region: "eu-west-1".into(),
        };
        assert_eq!(
            changes.joined,
            [(key.clone(), 3.0)],
            "a new cap, a new limiter"
        );
        assert_eq!(capped.get(1).limiter.rate(), 3.0);

        let (moved, changes) =
            budgets.successor(BudgetPlan::of(&one("eu-central-1", 2.0), "us-east-1", 5.0));
        assert_eq!(changes.left, [key]);
        assert_eq!(changes.joined.len(), 1);
        assert_eq!(moved.get(moved.of_instance("a")).key.region, "eu-central-1");
    }
}
