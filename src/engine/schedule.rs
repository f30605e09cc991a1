//! The schedule: when each Get and List is due, and the pool that sends them within their
//! budget's rate and the in-flight bound. It owns the budgets (a due-time queue and a rate
//! limiter per account and region) and each queued job's place in them, the backoff policy every
//! ladder starts from, and the randomness of every delay; the engine says what to schedule, the
//! schedule says when it may go.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use crate::api::FlowExecutions;
use crate::engine::budgets::{BudgetChanges, BudgetKey, BudgetPlan, Budgets};
use crate::engine::pacing::{Backoff, BackoffPolicy};
use crate::engine::policy::{Delay, RateFeedback};
use crate::engine::pool::{Answer, Job, Request, RequestPool, Turn};
use crate::engine::queue::Slot;
use crate::input::config::{DiscoverySettings, PollingSettings};

pub struct Schedule<C> {
    /// Gets and Lists, by budget and by when they are due.
    budgets: Budgets,
    /// Where each queued job sits, by budget: a job is queued at most once.
    slots: HashMap<Job, (usize, Slot)>,
    pool: RequestPool<C>,
    backoff: BackoffPolicy,
    rng: fastrand::Rng,
}

impl<C: FlowExecutions> Schedule<C> {
    pub fn new(
        client: Arc<C>,
        polling: &PollingSettings,
        discovery: &DiscoverySettings,
        budgets: BudgetPlan,
    ) -> Self {
        let pool = RequestPool::new(
            client,
            polling.max_in_flight,
            polling.request_timeout,
            discovery.page_size,
        );
        Self {
            budgets: Budgets::new(budgets),
            slots: HashMap::new(),
            pool,
            backoff: BackoffPolicy::from_settings(polling),
            rng: fastrand::Rng::new(),
        }
    }

    /// Queues `job` at `at`, moving it if it was queued.
    pub fn put(&mut self, job: Job, at: Instant) {
        self.remove(&job);
        let budget = self.budgets.of_job(&job);
        let slot = self.budgets.push(budget, at, job.clone());
        self.slots.insert(job, (budget, slot));
    }

    /// Takes `job` out of the queue, if it is there.
    pub fn remove(&mut self, job: &Job) {
        if let Some((budget, slot)) = self.slots.remove(job) {
            self.budgets.remove(budget, &slot);
        }
    }

    /// Installs the budgets of `plan` (a reload changed the instances): every queued job moves,
    /// at its due time, to the budget `plan` gives its instance. Requests in flight finish as
    /// they are; their answers adjust the rate of the budget their instance has now.
    pub fn replan(&mut self, plan: BudgetPlan) -> BudgetChanges {
        let (next, changes) = self.budgets.successor(plan);
        let old = std::mem::replace(&mut self.budgets, next);
        self.slots.clear();
        let mut jobs: Vec<(Slot, Job)> = old.into_jobs().collect();
        jobs.sort_by_key(|(slot, _)| *slot);
        for ((at, _), job) in jobs {
            self.put(job, at);
        }
        changes
    }

    pub fn is_queued(&self, job: &Job) -> bool {
        self.slots.contains_key(job)
    }

    /// When the next job of any budget is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.budgets.next_due()
    }

    /// Whether anything is queued or in flight.
    pub fn is_busy(&self) -> bool {
        !self.budgets.is_empty() || self.pool.in_flight() > 0
    }

    /// How late the most overdue job is at `now`, in seconds.
    pub fn lag(&self, now: Instant) -> f64 {
        self.next_due()
            .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64())
    }

    /// Resolves when the budget that can go first has a due job and a token, and a request slot
    /// is free; never while nothing is queued. A budget waiting for its token never holds a
    /// slot, so a throttled account cannot keep the others waiting. Cancel-safe.
    pub fn turn(&self) -> impl Future<Output = Option<Turn>> + 'static {
        let first = self.budgets.first_ready();
        let limiter = first.map(|(budget, _)| self.budgets.get(budget).limiter.clone());
        let permits = self.pool.permits();
        async move {
            let (budget, at) = first?;
            sleep_until(at).await;
            let permit = permits.acquire_owned().await.ok()?;
            limiter?.acquire().await;
            Some(Turn::new(permit, budget))
        }
    }

    /// A slot and a token of a budget whose head job is due at `now`, when both are free at
    /// once; the budget whose head has waited longest first.
    pub fn try_turn(&self, now: Instant) -> Option<Turn> {
        let mut due: Vec<(Instant, usize)> = self
            .budgets
            .iter()
            .filter_map(|(i, b)| b.due.next_due().filter(|at| *at <= now).map(|at| (at, i)))
            .collect();
        due.sort_unstable();
        let permit = self.pool.try_permit()?;
        let budget = due
            .into_iter()
            .map(|(_, budget)| budget)
            .find(|budget| self.budgets.get(*budget).limiter.try_acquire())?;
        Some(Turn::new(permit, budget))
    }

    /// Takes the job at the head of `budget`'s queue.
    pub fn pop_head(&mut self, budget: usize) -> Option<Job> {
        let job = self.budgets.pop_head(budget)?;
        self.slots.remove(&job);
        Some(job)
    }

    pub fn send(&mut self, turn: Turn, request: Request) {
        self.pool.send(turn, request);
    }

    /// The next answer; `None` when nothing is in flight.
    pub async fn next_answer(&mut self) -> Option<Answer> {
        self.pool.next().await
    }

    /// An answer that is already in, without waiting.
    pub fn ready(&mut self) -> Option<Answer> {
        self.pool.ready()
    }

    pub fn in_flight(&self) -> usize {
        self.pool.in_flight()
    }

    pub fn cancel_all(&mut self) {
        self.pool.cancel_all();
    }

    /// The account and region whose budget `instance_id`'s calls take.
    pub fn budget_of(&self, instance_id: &str) -> &BudgetKey {
        &self.budgets.get(self.budgets.of_instance(instance_id)).key
    }

    /// The rate of every budget together, in requests per second.
    pub fn rate(&self) -> f64 {
        self.budgets.iter().map(|(_, b)| b.limiter.rate()).sum()
    }

    /// Each budget's rate, in requests per second.
    pub fn rates(&self) -> Vec<(&BudgetKey, f64)> {
        self.budgets
            .iter()
            .map(|(_, b)| (&b.key, b.limiter.rate()))
            .collect()
    }

    /// Adjusts the rate of `instance_id`'s budget to what an answer says; returns the budget
    /// and its new rate when it changed.
    pub fn feedback(&self, instance_id: &str, feedback: RateFeedback) -> Option<(&BudgetKey, f64)> {
        let budget = self.budgets.get(self.budgets.of_instance(instance_id));
        let limiter = &budget.limiter;
        let before = limiter.rate();
        match feedback {
            RateFeedback::Cut { retry_after } => limiter.on_throttle(retry_after),
            RateFeedback::Restore => limiter.on_success(),
            RateFeedback::Keep => {}
        }
        let after = limiter.rate();
        (after != before).then_some((&budget.key, after))
    }

    /// A fresh backoff ladder, at its first step.
    pub fn ladder(&self) -> Backoff {
        self.backoff.start()
    }

    /// A [`Delay`] as a duration on `ladder`; `None` for [`Delay::Never`].
    pub fn delay(&mut self, delay: Delay, ladder: &mut Backoff) -> Option<Duration> {
        match delay {
            Delay::Climb => Some(ladder.next_delay(&mut self.rng)),
            Delay::Hold { at_least } => Some(ladder.jittered(&mut self.rng).max(at_least)),
            Delay::Fixed(d) => Some(d),
            Delay::Spread(base) => Some(base + base.mul_f64(0.1 * self.rng.f64())),
            Delay::Never => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tests::scripted::Scripted;
    use crate::model::ExecutionKey;

    fn schedule() -> Schedule<Scripted> {
        let polling = PollingSettings::default();
        let api = Arc::new(Scripted::default());
        let plan = BudgetPlan::single("us-east-1", polling.max_requests_per_second);
        Schedule::new(api, &polling, &DiscoverySettings::default(), plan)
    }

    fn job(n: u32) -> Job {
        Job::Get(ExecutionKey::from_checked("i", "f", format!("e{n}")))
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_is_queued_once_and_putting_it_again_moves_it() {
        let mut s = schedule();
        let now = Instant::now();
        s.put(job(1), now + Duration::from_secs(10));
        s.put(job(2), now + Duration::from_secs(5));
        s.put(job(1), now + Duration::from_secs(1));
        assert_eq!(s.next_due(), Some(now + Duration::from_secs(1)));
        assert_eq!(s.pop_head(0), Some(job(1)));
        assert!(!s.is_queued(&job(1)), "popped jobs are no longer queued");
        assert_eq!(s.pop_head(0), Some(job(2)));
        assert_eq!(s.pop_head(0), None, "job 1 was queued once, not twice");
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_job_leaves_the_queue_and_nothing_else_does() {
        let mut s = schedule();
        let now = Instant::now();
        s.put(job(1), now);
        s.put(job(2), now);
        s.remove(&job(1));
        s.remove(&job(3));
        assert!(s.is_queued(&job(2)) && !s.is_queued(&job(1)));
        assert_eq!(s.pop_head(0), Some(job(2)));
        assert!(!s.is_busy());
    }

    #[tokio::test(start_paused = true)]
    async fn delays_follow_the_decision() {
        let mut s = schedule();
        let mut ladder = s.ladder();
        assert_eq!(s.delay(Delay::Never, &mut ladder), None);
        let fixed = Duration::from_secs(120);
        assert_eq!(s.delay(Delay::Fixed(fixed), &mut ladder), Some(fixed));
        assert_eq!(
            s.delay(Delay::Climb, &mut ladder),
            Some(Duration::from_secs(5)),
            "the first step is initial_interval"
        );
        let held = s.delay(
            Delay::Hold {
                at_least: Duration::from_secs(30),
            },
            &mut ladder,
        );
        assert!(held >= Some(Duration::from_secs(30)));
        let base = Duration::from_secs(300);
        for _ in 0..100 {
            let spread = s.delay(Delay::Spread(base), &mut ladder);
            assert!(spread.is_some_and(|d| d >= base && d <= base.mul_f64(1.1)));
        }
    }
}
