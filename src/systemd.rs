//! The systemd notify protocol: `READY=1` once serving, `WATCHDOG=1` from the engine loop at
//! half the watchdog interval, `STOPPING=1` on shutdown. Without `NOTIFY_SOCKET` every call is a
//! no-op, so the daemon runs the same outside systemd.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::Instant;

/// Tells systemd the service is up, with a one-line status for `systemctl status`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the service is stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Pings the systemd watchdog at half its interval (`WATCHDOG_USEC`), when one is set.
#[derive(Debug)]
pub struct Watchdog {
    every: Option<Duration>,
    last: Option<Instant>,
}

impl Watchdog {
    pub fn from_env() -> Self {
        Self {
            every: sd_notify::watchdog_enabled().map(|d| d / 2),
            last: None,
        }
    }

    /// The ping period (half of `WATCHDOG_USEC`); the caller calls [`Watchdog::tick`] at least
    /// twice per period.
    pub fn period(&self) -> Option<Duration> {
        self.every
    }

    /// Called from the engine loop: a ping proves the loop is turning.
    pub fn tick(&mut self) {
        let Some(every) = self.every else { return };
        let now = Instant::now();
        if self.last.is_none_or(|t| now.duration_since(t) >= every) {
            self.last = Some(now);
            send(&[NotifyState::Watchdog]);
        }
    }
}
