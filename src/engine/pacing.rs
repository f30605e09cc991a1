//! How fast flowwatch talks to the API: the per-execution backoff ladder and the one global,
//! self-adjusting token bucket that every request passes through.

use std::sync::Mutex;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;

use crate::input::config::PollingSettings;

/// The longest pause a server's `x-amz-retry-after` hint can impose.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The shape of every execution's backoff: from `initial` by `multiplier` up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
}

impl BackoffPolicy {
    pub fn from_settings(p: &PollingSettings) -> Self {
        Self {
            initial: p.initial_interval,
            max: p.max_interval,
            multiplier: p.multiplier,
        }
    }

    pub fn start(&self) -> Backoff {
        Backoff::new(*self)
    }

    fn builder(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.initial)
            .with_max_delay(self.max)
            .with_factor(self.multiplier as f32)
            .without_max_times()
    }
}

/// One execution's position on the backoff ladder.
///
/// backon computes the capped exponential ladder. Its own jitter adds up to 100 % on top of each
/// step, which would overshoot `max_interval`, so the jitter here is the Smithy-waiter form
/// instead: a uniform delay in `[initial, step]`. A poll is never sooner than `initial_interval`
/// and never later than `max_interval`.
#[derive(Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    /// Steps climbed. The step's ceiling is read from backon's ladder each time, so no execution
    /// keeps a backon iterator of its own.
    steps: u32,
    ceiling: Duration,
}

/// A bound on the ladder's walk, far past any ladder's reach of `max_interval`.
const MAX_STEPS: u32 = 2_000;

impl Backoff {
    fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            steps: 0,
            ceiling: policy.initial,
        }
    }

    /// Climbs one step and returns a jittered delay for the next poll.
    pub fn next_delay(&mut self, rng: &mut fastrand::Rng) -> Duration {
        if self.ceiling < self.policy.max && self.steps < MAX_STEPS {
            let next = self
                .policy
                .builder()
                .build()
                .nth(self.steps as usize)
                .unwrap_or(self.policy.max)
                .clamp(self.policy.initial, self.policy.max);
            // A ladder that stopped growing (a multiplier of 1) stays on its step.
            if self.steps == 0 || next > self.ceiling {
                self.steps += 1;
            }
            self.ceiling = next;
        }
        self.jittered(rng)
    }

    /// A jittered delay at the current step, without climbing (for polls that do not count as
    /// attempts, such as throttled ones).
    pub fn jittered(&self, rng: &mut fastrand::Rng) -> Duration {
        let span = self.ceiling.saturating_sub(self.policy.initial);
        self.policy.initial + span.mul_f64(rng.f64())
    }

    /// The current step before jitter.
    #[cfg(test)]
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }

    /// Back to the first step, after the execution changed status.
    pub fn reset(&mut self) {
        *self = Self::new(self.policy);
    }
}

/// Start-up polls are spread evenly over `initial_interval`, so a restart with 10,000 entries is
/// not a burst: entry `i` of `n` is first due at `i / n` of the interval.
pub fn startup_offset(index: usize, count: usize, initial_interval: Duration) -> Duration {
    if count == 0 {
        return Duration::ZERO;
    }
    initial_interval.mul_f64(index as f64 / count as f64)
}

/// The token bucket of one budget (an account and region). Its rate is cut in half on throttling (at most once a second, so
/// a burst of throttled in-flight requests counts as one signal) and grows back additively, by a
/// twentieth of the configured maximum per successful call. An `x-amz-retry-after` hint pauses it.
#[derive(Debug)]
pub struct RateLimiter {
    max_rate: f64,
    min_rate: f64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    refilled_at: Instant,
    paused_until: Option<Instant>,
    last_cut: Option<Instant>,
}

/// The bucket paces, it does not save up: it holds one token, or what the rate earns in
/// [`TIMER_SLACK`] when that is more. Timers fire on a 1 ms grid, so a bucket of one token could
/// never pass more than about 1,000 requests a second, whatever the rate.
const TIMER_SLACK: Duration = Duration::from_millis(5);

fn capacity(rate: f64) -> f64 {
    (rate * TIMER_SLACK.as_secs_f64()).max(1.0)
}
const DECREASE_FACTOR: f64 = 0.5;
const DECREASE_COOLDOWN: Duration = Duration::from_secs(1);
const INCREASE_STEPS: f64 = 20.0;

impl RateLimiter {
    pub fn new(max_rate: f64) -> Self {
        Self {
            max_rate,
            min_rate: max_rate.min(0.1),
            bucket: Mutex::new(Bucket {
                rate: max_rate,
                tokens: 1.0,
                refilled_at: Instant::now(),
                paused_until: None,
                last_cut: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        crate::model::lock(&self.bucket)
    }

    /// The current rate in requests per second.
    /// The cap the rate climbs back to.
    pub fn max_rate(&self) -> f64 {
        self.max_rate
    }

    pub fn rate(&self) -> f64 {
        self.lock().rate
    }

    /// Waits for a token. Cancel-safe: a token is only taken when this returns.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut b = self.lock();
                let now = Instant::now();
                b.refill(now);
                match b.paused_until {
                    Some(until) if until > now => until - now,
                    _ if b.tokens >= 1.0 => {
                        b.tokens -= 1.0;
                        return;
                    }
                    _ => Duration::from_secs_f64((1.0 - b.tokens) / b.rate),
                }
            };
            tokio::time::sleep(wait.max(Duration::from_micros(100))).await;
        }
    }

    /// When a token will be there: now, the end of a pause, or when the rate has earned one.
    pub fn ready_at(&self) -> Instant {
        let mut b = self.lock();
        let now = Instant::now();
        b.refill(now);
        let earned = if b.tokens >= 1.0 {
            now
        } else {
            now + Duration::from_secs_f64((1.0 - b.tokens) / b.rate)
        };
        b.paused_until.map_or(earned, |until| until.max(earned))
    }

    /// Takes a token if one is there now, without waiting.
    pub fn try_acquire(&self) -> bool {
        let mut b = self.lock();
        let now = Instant::now();
        b.refill(now);
        if b.paused_until.is_some_and(|until| until > now) || b.tokens < 1.0 {
            return false;
        }
        b.tokens -= 1.0;
        true
    }

    /// A call went through: grow the rate back additively.
    pub fn on_success(&self) {
        let mut b = self.lock();
        let now = Instant::now();
        b.refill(now);
        b.rate = (b.rate + self.max_rate / INCREASE_STEPS).min(self.max_rate);
    }

    /// The API said slow down: halve the rate, and pause for the server's hint if it gave one.
    pub fn on_throttle(&self, retry_after: Option<Duration>) {
        let mut b = self.lock();
        let now = Instant::now();
        b.refill(now);
        if b.last_cut
            .is_none_or(|t| now.duration_since(t) >= DECREASE_COOLDOWN)
        {
            b.rate = (b.rate * DECREASE_FACTOR).max(self.min_rate);
            b.last_cut = Some(now);
            // A throttle means the API saw too much: do not spend a saved token right away.
            b.tokens = b.tokens.min(0.0);
        }
        if let Some(hint) = retry_after {
            let until = now + hint.min(MAX_RETRY_AFTER);
            b.paused_until = Some(b.paused_until.map_or(until, |p| p.max(until)));
        }
    }
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(capacity(self.rate));
        self.refilled_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BackoffPolicy {
        BackoffPolicy {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(120),
            multiplier: 2.0,
        }
    }

    /// Tokens taken in one second at `rate`.
    async fn tokens_in_a_second(rate: f64) -> usize {
        let limiter = RateLimiter::new(rate);
        let start = Instant::now();
        let mut n = 0;
        loop {
            limiter.acquire().await;
            if start.elapsed() >= Duration::from_secs(1) {
                return n;
            }
            n += 1;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_high_rate_is_reached_on_the_millisecond_timer_and_a_low_one_is_not_exceeded() {
        let fast = tokens_in_a_second(2000.0).await;
        assert!((1950..=2010).contains(&fast), "{fast} tokens at 2,000/s");
        let slow = tokens_in_a_second(5.0).await;
        assert!((4..=5).contains(&slow), "{slow} tokens at 5/s");
    }

    #[test]
    fn backoff_ceilings_grow_from_initial_to_max() {
        let mut b = policy().start();
        let mut rng = fastrand::Rng::with_seed(7);
        let ceilings: Vec<u64> = (0..8)
            .map(|_| {
                b.next_delay(&mut rng);
                b.ceiling().as_secs()
            })
            .collect();
        assert_eq!(ceilings, vec![5, 10, 20, 40, 80, 120, 120, 120]);
        b.reset();
        b.next_delay(&mut rng);
        assert_eq!(b.ceiling(), Duration::from_secs(5));
    }

    #[test]
    fn a_multiplier_of_one_stays_on_the_first_step_without_walking_the_ladder() {
        let mut b = BackoffPolicy {
            multiplier: 1.0,
            ..policy()
        }
        .start();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..10_000 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(5));
        assert_eq!(
            b.steps, 1,
            "a flat ladder is not walked again on every poll"
        );
    }

    #[test]
    fn jitter_stays_between_initial_and_the_current_step() {
        let mut rng = fastrand::Rng::with_seed(42);
        let mut b = policy().start();
        for _ in 0..5 {
            b.next_delay(&mut rng);
        }
        let ceiling = b.ceiling();
        let samples: Vec<Duration> = (0..2000).map(|_| b.jittered(&mut rng)).collect();
        assert!(
            samples
                .iter()
                .all(|d| *d >= policy().initial && *d <= ceiling)
        );
        let low = samples.iter().filter(|d| d.as_secs_f64() < 20.0).count();
        let high = samples.iter().filter(|d| d.as_secs_f64() > 65.0).count();
        // Uniform over [5s, 80s]: both ends are well populated.
        assert!(low > 200 && high > 200, "low={low} high={high}");
    }

    #[test]
    fn startup_polls_are_spread_evenly() {
        let interval = Duration::from_secs(10);
        let offsets: Vec<Duration> = (0..4).map(|i| startup_offset(i, 4, interval)).collect();
        assert_eq!(
            offsets,
            vec![
                Duration::ZERO,
                Duration::from_millis(2500),
                Duration::from_secs(5),
                Duration::from_millis(7500)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_paces_requests_at_its_rate() {
        let limiter = RateLimiter::new(4.0);
        let start = Instant::now();
        for _ in 0..9 {
            limiter.acquire().await;
        }
        // One token is there at once, the other eight come at 4 per second.
        let elapsed = start.elapsed().as_secs_f64();
        assert!((1.99..2.1).contains(&elapsed), "elapsed {elapsed}");
    }

    #[tokio::test(start_paused = true)]
    async fn try_acquire_takes_only_tokens_that_are_there_and_respects_a_pause() {
        let limiter = RateLimiter::new(4.0);
        assert!(limiter.try_acquire(), "the first token is there at once");
        assert!(!limiter.try_acquire(), "the next one is 250 ms away");
        tokio::time::advance(Duration::from_millis(250)).await;
        assert!(limiter.try_acquire());
        tokio::time::advance(Duration::from_secs(1)).await;
        limiter.on_throttle(Some(Duration::from_secs(2)));
        assert!(!limiter.try_acquire(), "a retry-after hint pauses it too");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(limiter.try_acquire());
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_halves_the_rate_once_per_second_and_successes_restore_it() {
        let limiter = RateLimiter::new(4.0);
        limiter.on_throttle(None);
        limiter.on_throttle(None);
        assert_eq!(limiter.rate(), 2.0, "a burst of throttles counts once");
        tokio::time::advance(Duration::from_secs(1)).await;
        limiter.on_throttle(None);
        assert_eq!(limiter.rate(), 1.0);
        for _ in 0..10 {
            limiter.on_success();
        }
        assert!((limiter.rate() - 3.0).abs() < 1e-9, "{}", limiter.rate());
        for _ in 0..10 {
            limiter.on_success();
        }
        assert_eq!(limiter.rate(), 4.0, "never above the configured maximum");
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(1)).await;
            limiter.on_throttle(None);
        }
        assert_eq!(limiter.rate(), 0.1, "never below the floor");
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_hint_pauses_every_request() {
        let limiter = RateLimiter::new(100.0);
        limiter.on_throttle(Some(Duration::from_millis(1500)));
        let start = Instant::now();
        limiter.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(1500));
        limiter.on_throttle(Some(Duration::from_secs(3600)));
        let start = Instant::now();
        limiter.acquire().await;
        assert!(start.elapsed() <= MAX_RETRY_AFTER + Duration::from_secs(1));
    }
}
