//! Liveness and readiness, fed by the engine and read by `/livez` and `/readyz`.

use std::collections::{BTreeMap, VecDeque};
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
    /// Each watched Supply Chain instance's recent calls.
    instances: BTreeMap<String, InstanceCalls>,
    /// A replica standing by while another leads.
    standby: bool,
}

/// An instance's recent outcomes, and why its last failure failed.
#[derive(Debug, Default)]
struct InstanceCalls {
    recent: VecDeque<Outcome>,
    reason: String,
}

impl InstanceCalls {
    /// Up unless every recent call failed for want of credentials, access, a buildable
    /// request or a way to the API. An instance not called yet is up.
    fn up(&self) -> bool {
        !self.recent.iter().all(|o| is_down(*o)) || self.recent.is_empty()
    }
}

/// Outcomes that say this instance cannot be reached with what flowwatch has, as against
/// answers of the API (a throttle, a missing execution), which prove it can.
fn is_down(outcome: Outcome) -> bool {
    matches!(
        outcome,
        Outcome::CredentialsError
            | Outcome::AccessDenied
            | Outcome::TransportError
            | Outcome::Timeout
            | Outcome::LocalError
    )
}

/// What `/status` shows of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceHealth {
    pub instance_id: String,
    pub up: bool,
    /// Why it is down, in the SDK's (or STS's) words; empty while it is up.
    pub reason: String,
}

/// Why the service is not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// A replica that stands by while another leads: ready to take over, and so ready.
    Standby,
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
                instances: BTreeMap::new(),
                standby: false,
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

    /// A call's outcome, of `instance`; returns whether the instance is up after it, or `None`
    /// for an instance not watched (it left while the call was in flight).
    pub fn record(
        &self,
        instance: &str,
        outcome: Outcome,
        detail: impl FnOnce() -> String,
    ) -> Option<bool> {
        let mut inner = self.lock();
        let detail = detail();
        let up = match inner.instances.get_mut(instance) {
            Some(calls) => {
                if calls.recent.len() == RECENT {
                    calls.recent.pop_front();
                }
                calls.recent.push_back(outcome);
                if is_down(outcome) {
                    calls.reason.clone_from(&detail);
                }
                Some(calls.up())
            }
            None => None,
        };
        if inner.recent.len() == RECENT {
            inner.recent.pop_front();
        }
        inner.recent.push_back((outcome, detail));
        up
    }

    /// The Supply Chain instances watched now: those that stay keep their recent calls.
    pub fn set_instances<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        let mut inner = self.lock();
        let mut kept = BTreeMap::new();
        for id in ids {
            let calls = inner.instances.remove(id).unwrap_or_default();
            kept.insert(id.to_string(), calls);
        }
        inner.instances = kept;
    }

    /// Each watched instance: up or not, and why not.
    pub fn instances(&self) -> Vec<InstanceHealth> {
        self.lock()
            .instances
            .iter()
            .map(|(id, calls)| {
                let up = calls.up();
                InstanceHealth {
                    instance_id: id.clone(),
                    up,
                    reason: if up {
                        String::new()
                    } else {
                        calls.reason.clone()
                    },
                }
            })
            .collect()
    }

    /// 200 on `/livez` while the engine loop is beating.
    /// This replica stands by while another leads: it runs no engine, and is ready.
    pub fn set_standby(&self) {
        self.lock().standby = true;
    }

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
        if inner.standby {
            return Readiness::Standby;
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
        // Ready while any instance is up: one account's trouble is its own alert.
        if inner.instances.values().any(InstanceCalls::up) {
            return Readiness::Ready;
        }
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
        if inner.instances.is_empty() {
            return Readiness::Ready;
        }
        let reasons: Vec<String> = inner
            .instances
            .iter()
            .map(|(id, calls)| format!("{id}: {}", calls.reason))
            .collect();
        Readiness::NotReady(format!("no instance is up: {}", reasons.join("; ")))
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
        h.record("i", Outcome::AccessDenied, || "denied".into());
        assert!(matches!(h.readiness(), Readiness::NotReady(r) if r.contains("denied access")));
        h.record("i", Outcome::Success, String::new);
        assert_eq!(h.readiness(), Readiness::Ready);
        for _ in 0..RECENT {
            h.record("i", Outcome::AccessDenied, || "denied".into());
        }
        assert!(matches!(h.readiness(), Readiness::NotReady(_)));
        h.record("i", Outcome::Throttled, String::new);
        assert_eq!(
            h.readiness(),
            Readiness::Ready,
            "throttled still proves access"
        );
        for _ in 0..RECENT {
            h.record("i", Outcome::LocalError, || "invalid region".into());
        }
        assert!(
            matches!(h.readiness(), Readiness::NotReady(r) if r.contains("no request could be built"))
        );
        for _ in 0..RECENT {
            h.record("i", Outcome::CredentialsError, || {
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

    #[tokio::test(start_paused = true)]
    async fn one_instance_down_leaves_the_service_ready_and_all_down_does_not() {
        let h = Health::new();
        h.set_state_restored();
        h.beat();
        h.set_instances(["a", "b"].into_iter());
        assert_eq!(
            h.record("a", Outcome::CredentialsError, || "sts refused".into()),
            Some(false)
        );
        assert_eq!(h.readiness(), Readiness::Ready, "b has not failed");
        assert_eq!(h.record("b", Outcome::Throttled, String::new), Some(true));
        assert_eq!(h.readiness(), Readiness::Ready);
        for _ in 1..RECENT {
            h.record("b", Outcome::TransportError, || "reset".into());
        }
        assert_eq!(
            h.record("b", Outcome::TransportError, || "reset".into()),
            Some(false),
            "every recent call failed"
        );
        assert_eq!(h.record("z", Outcome::Success, String::new), None);
        assert!(
            matches!(h.readiness(), Readiness::NotReady(r) if r == "no instance is up: a: sts refused; b: reset")
        );
        let instances = h.instances();
        assert_eq!(instances[0].reason, "sts refused");
        assert!(!instances[1].up);
        assert_eq!(h.record("a", Outcome::Success, String::new), Some(true));
        assert_eq!(h.readiness(), Readiness::Ready);
        assert_eq!(h.instances()[0].reason, "", "no reason while up");
        h.set_instances(["b"].into_iter());
        assert_eq!(h.instances().len(), 1);
        assert!(
            !h.instances()[0].up,
            "an instance that stays keeps its calls"
        );
    }
}
