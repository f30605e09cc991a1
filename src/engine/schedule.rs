//! The schedule: when each Get and List is due, and the pool that sends them within the rate and
//! the in-flight bound. It owns the due-time queue and each queued job's place in it, the backoff
//! policy every ladder starts from, and the randomness of every delay; the engine says what to
//! schedule, the schedule says when it may go.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::api::FlowExecutions;
use crate::engine::pacing::{Backoff, BackoffPolicy};
use crate::engine::policy::{Delay, RateFeedback};
use crate::engine::pool::{Answer, Job, Request, RequestPool, Turn};
use crate::engine::queue::{DueQueue, Slot};
use crate::input::config::{DiscoverySettings, PollingSettings};

pub struct Schedule<C> {
    /// Gets and Lists, by when they are due.
    due: DueQueue<Job>,
    /// Where each queued job sits in `due`: a job is queued at most once.
    slots: HashMap<Job, Slot>,
    pool: RequestPool<C>,
    backoff: BackoffPolicy,
    rng: fastrand::Rng,
}

impl<C: FlowExecutions> Schedule<C> {
    pub fn new(client: Arc<C>, polling: &PollingSettings, discovery: &DiscoverySettings) -> Self {
        let pool = RequestPool::new(
            client,
            polling.max_requests_per_second,
            polling.max_in_flight,
            polling.request_timeout,
            discovery.page_size,
        );
        Self {
            due: DueQueue::default(),
            slots: HashMap::new(),
            pool,
            backoff: BackoffPolicy::from_settings(polling),
            rng: fastrand::Rng::new(),
        }
    }

    /// Queues `job` at `at`, moving it if it was queued.
    pub fn put(&mut self, job: Job, at: Instant) {
        if let Some(previous) = self.slots.remove(&job) {
            self.due.remove(&previous);
        }
        let slot = self.due.push(at, job.clone());
        self.slots.insert(job, slot);
    }

    /// Takes `job` out of the queue, if it is there.
    pub fn remove(&mut self, job: &Job) {
        if let Some(slot) = self.slots.remove(job) {
            self.due.remove(&slot);
        }
    }

    pub fn is_queued(&self, job: &Job) -> bool {
        self.slots.contains_key(job)
    }

    /// When the next job is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.next_due()
    }

    /// Whether anything is queued or in flight.
    pub fn is_busy(&self) -> bool {
        !self.due.is_empty() || self.pool.in_flight() > 0
    }

    /// How late the most overdue job is at `now`, in seconds.
    pub fn lag(&self, now: Instant) -> f64 {
        self.next_due()
            .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64())
    }

    /// Resolves when the next job is due and a request slot and a rate token are free; never
    /// while nothing is queued. Cancel-safe.
    pub fn turn(&self) -> impl Future<Output = Option<Turn>> + 'static {
        self.pool.turn(self.next_due())
    }

    /// A slot and a token when a job is due at `now` and both are free at once.
    pub fn try_turn(&self, now: Instant) -> Option<Turn> {
        self.next_due().filter(|at| *at <= now)?;
        self.pool.try_turn()
    }

    /// Takes the job at the head of the queue.
    pub fn pop_head(&mut self) -> Option<Job> {
        let job = self.due.pop_first()?;
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

    /// The global rate, in requests per second.
    pub fn rate(&self) -> f64 {
        self.pool.rate()
    }

    /// Adjusts the global rate to what an answer says; returns the new rate when it changed.
    pub fn feedback(&self, feedback: RateFeedback) -> Option<f64> {
        self.pool.feedback(feedback)
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
        Schedule::new(api, &polling, &DiscoverySettings::default())
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
        assert_eq!(s.pop_head(), Some(job(1)));
        assert!(!s.is_queued(&job(1)), "popped jobs are no longer queued");
        assert_eq!(s.pop_head(), Some(job(2)));
        assert_eq!(s.pop_head(), None, "job 1 was queued once, not twice");
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
        assert_eq!(s.pop_head(), Some(job(2)));
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
