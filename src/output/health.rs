//! Liveness and readiness, fed by the engine and read by `/livez` and `/readyz`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::Outcome;

/// How many recent API outcomes readiness looks at.
const RECENT: usize = 10;
/// The engine loop beats at least this often; three missed beats mean it is stuck.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
const STALE_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Health {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    heartbeat: Option<Instant>,
    stopped: bool,
    state_restored: bool,
    recent: VecDeque<(Outcome, String)>,
    /// Whether there is anything left to poll: with nothing to poll, no API answer is awaited.
    polling: bool,
    /// Why the state database cannot be written, while it cannot.
    store_error: Option<String>,
    /// An event sink stuck in a write, in words.
    stalled_sink: Option<String>,
}

/// Why the service is not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady(String),
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                heartbeat: None,
                stopped: false,
                state_restored: false,
                recent: VecDeque::with_capacity(RECENT),
                polling: true,
                store_error: None,
                stalled_sink: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::model::lock(&self.inner)
    }

    pub fn beat(&self) {
        self.lock().heartbeat = Some(Instant::now());
    }

    pub fn set_stopped(&self) {
        self.lock().stopped = true;
    }

    pub fn set_state_restored(&self) {
        self.lock().state_restored = true;
    }

    pub fn set_polling(&self, polling: bool) {
        self.lock().polling = polling;
    }

    /// An event sink stuck in a write (`None` once none is).
    pub fn set_stalled_sink(&self, stalled: Option<String>) {
        self.lock().stalled_sink = stalled;
    }

    pub fn set_store_error(&self, error: Option<String>) {
        self.lock().store_error = error;
    }

    pub fn record(&self, outcome: Outcome, detail: impl FnOnce() -> String) {
        let mut inner = self.lock();
        if inner.recent.len() == RECENT {
            inner.recent.pop_front();
        }
        inner.recent.push_back((outcome, detail()));
    }

    /// 200 on `/livez` while the engine loop is beating.
    pub fn is_live(&self) -> bool {
        let inner = self.lock();
        !inner.stopped && inner.heartbeat.is_some_and(|t| t.elapsed() < STALE_AFTER)
    }

    /// Ready once state is restored and the API has answered with the given credentials; not
    /// ready while every recent call was denied, or could not reach the API at all.
    pub fn readiness(&self) -> Readiness {
        let inner = self.lock();
        if inner.stopped {
            return Readiness::NotReady("shutting down".into());
        }
        if !inner.state_restored || inner.heartbeat.is_none() {
            return Readiness::NotReady("starting: state not restored yet".into());
        }
        if let Some(error) = &inner.store_error {
            return Readiness::NotReady(format!("cannot write state: {error}"));
        }
        if let Some(stalled) = &inner.stalled_sink {
            return Readiness::NotReady(stalled.clone());
        }
        let Some((_, last_detail)) = inner.recent.back() else {
            return if inner.polling {
                Readiness::NotReady("starting: waiting for the first API response".into())
            } else {
                Readiness::Ready
            };
        };
        let all = |pred: fn(Outcome) -> bool| inner.recent.iter().all(|(o, _)| pred(*o));
        if all(|o| o == Outcome::AccessDenied) {
            return Readiness::NotReady(format!(
                "the API denied access on the last {} calls: {last_detail}",
                inner.recent.len()
            ));
        }
        if all(|o| o == Outcome::CredentialsError) {
            return Readiness::NotReady(format!(
                "no usable AWS credentials on the last {} calls: {last_detail}",
                inner.recent.len()
            ));
        }
        if all(|o| o == Outcome::LocalError) {
            return Readiness::NotReady(format!(
                "no request could be built on the last {} calls: {last_detail}",
                inner.recent.len()
            ));
        }
        if all(|o| matches!(o, Outcome::Timeout | Outcome::TransportError)) {
            return Readiness::NotReady(format!(
                "the API was unreachable on the last {} calls: {last_detail}",
                inner.recent.len()
            ));
        }
        Readiness::Ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn readiness_follows_recent_outcomes() {
        let h = Health::new();
        assert!(matches!(h.readiness(), Readiness::NotReady(r) if r.contains("state")));
        h.set_state_restored();
        h.beat();
        assert!(
            matches!(h.readiness(), Readiness::NotReady(r) if r.contains("first API response"))
        );
        h.record(Outcome::AccessDenied, || "denied".into());
        assert!(matches!(h.readiness(), Readiness::NotReady(r) if r.contains("denied access")));
        h.record(Outcome::Success, String::new);
        assert_eq!(h.readiness(), Readiness::Ready);
        for _ in 0..RECENT {
            h.record(Outcome::AccessDenied, || "denied".into());
        }
        assert!(matches!(h.readiness(), Readiness::NotReady(_)));
        h.record(Outcome::Throttled, String::new);
        assert_eq!(
            h.readiness(),
            Readiness::Ready,
            "throttled still proves access"
        );
        for _ in 0..RECENT {
            h.record(Outcome::LocalError, || "invalid region".into());
        }
        assert!(
            matches!(h.readiness(), Readiness::NotReady(r) if r.contains("no request could be built"))
        );
        for _ in 0..RECENT {
            h.record(Outcome::CredentialsError, || {
                "sts:AssumeRole refused".into()
            });
        }
        assert!(
            matches!(h.readiness(), Readiness::NotReady(r) if r.contains("no usable AWS credentials") && r.contains("sts:AssumeRole refused"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_needs_a_recent_heartbeat() {
        let h = Health::new();
        assert!(!h.is_live());
        h.beat();
        assert!(h.is_live());
        tokio::time::advance(STALE_AFTER).await;
        assert!(!h.is_live());
        h.beat();
        h.set_stopped();
        assert!(!h.is_live());
    }
}
