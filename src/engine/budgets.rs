//! Request budgets: one per AWS account and region, as AWS's quotas are. Each holds the due-time
//! queue of its instances' jobs and a rate limiter (token bucket, AIMD) of its own, so throttling
//! in one account never slows another, and one budget's backlog never waits at the head of a
//! queue that others share. The in-flight bound stays one for the process.

use std::collections::HashMap;

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

/// One budget: its key, its queue of due jobs and its rate.
#[derive(Debug)]
pub struct Budget {
    pub key: BudgetKey,
    pub due: DueQueue<Job>,
    pub limiter: std::sync::Arc<RateLimiter>,
}

/// Every budget, and which serves each instance.
#[derive(Debug)]
pub struct Budgets {
    budgets: Vec<Budget>,
    of_instance: HashMap<String, usize>,
}

impl Budgets {
    pub fn new(plan: BudgetPlan) -> Self {
        let budgets = plan
            .budgets
            .into_iter()
            .map(|(key, rate)| Budget {
                key,
                due: DueQueue::default(),
                limiter: std::sync::Arc::new(RateLimiter::new(rate)),
            })
            .collect();
        Self {
            budgets,
            of_instance: plan.of_instance,
        }
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
}
