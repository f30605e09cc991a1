//! Shutdown as a type: requested once (by a signal, by `--exit-when-done`, or by whoever runs
//! the library), and seen by every task that holds a clone. It is passed in, never global.

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every holder to stop. Idempotent.
    pub fn request(&self) {
        self.token.cancel();
    }

    pub fn is_requested(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown is requested.
    pub async fn requested(&self) {
        self.token.cancelled().await;
    }

    /// The token under it, for tasks below the server that must not depend on this type.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// A shutdown that follows this one, and can also be requested on its own (the HTTP server
    /// stops after the engine, which stops on this one).
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
        }
    }
}

/// Requests `shutdown` at the first SIGTERM or SIGINT, and exits the process (code 0) at the
/// second, without waiting for the drain.
pub async fn on_signals(shutdown: Shutdown) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "shutting down (a second SIGTERM or SIGINT exits at once)"
        );
        shutdown.request();
        // A second signal does not wait for the drain: what is committed is in the state
        // database, and events not delivered yet are delivered at the next start.
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::warn!(signal = name, "second signal: exiting at once");
        std::process::exit(0);
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.request();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_reaches_every_clone_and_child_but_a_child_stops_alone() {
        let shutdown = Shutdown::new();
        let (clone, child) = (shutdown.clone(), shutdown.child());
        child.request();
        assert!(child.is_requested() && !shutdown.is_requested());
        shutdown.request();
        clone.requested().await;
        assert!(clone.is_requested());
    }
}
