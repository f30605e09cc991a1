//! How the rest of the daemon asks the running engine something: the HTTP server (`/status`,
//! the status page, `/-/reload`), the reloader and the signal handlers. The handle owns the
//! channel and how long an answer may take; the engine answers with typed views.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::engine::budgets::BudgetPlan;
use crate::engine::overview::Overview;
use crate::engine::views::{ReloadSummary, StatusQuery, StatusView};
use crate::input::watchlist::Watchlist;

/// Requests to the engine, sent through an [`EngineHandle`].
#[derive(Debug)]
pub enum Command {
    /// The `/status` document, with the executions the query selects.
    Status(StatusQuery, oneshot::Sender<StatusView>),
    /// The status page's content, from the flow at this offset.
    Overview(usize, oneshot::Sender<Overview>),
    /// Replace the watchlist, and the request budgets when the instances changed: entries that
    /// stay keep their state and schedule.
    Replace(
        Watchlist,
        Option<BudgetPlan>,
        oneshot::Sender<ReloadSummary>,
    ),
    /// Reopen the event file by its path (SIGHUP, after log rotation).
    ReopenSinks,
}

/// At most this many requests wait for the engine; one more waits for room, within its bound.
const WAITING: usize = 16;

/// How long a view may take: the engine answers between two turns, so far sooner unless it is
/// stuck.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the engine gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unanswered {
    #[error("the engine is not running")]
    NotRunning,
    #[error("the engine did not answer in time")]
    TooSlow,
}

/// A cheap, cloneable way to ask the engine; see the module doc.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
}

impl EngineHandle {
    /// A handle and the receiving end the engine's loop reads ([`crate::engine::Engine::run`]).
    pub fn channel() -> (Self, mpsc::Receiver<Command>) {
        let (commands, receiver) = mpsc::channel(WAITING);
        (Self { commands }, receiver)
    }

    /// The `/status` document for `query`, within [`REPLY_TIMEOUT`].
    pub async fn status(&self, query: StatusQuery) -> Result<StatusView, Unanswered> {
        self.ask(|tx| Command::Status(query, tx), Some(REPLY_TIMEOUT))
            .await
    }

    /// The status page's content from the flow at `offset`, within [`REPLY_TIMEOUT`].
    pub async fn overview(&self, offset: usize) -> Result<Overview, Unanswered> {
        self.ask(|tx| Command::Overview(offset, tx), Some(REPLY_TIMEOUT))
            .await
    }

    /// Installs `watchlist`, with `budgets` when the instances changed. Waits as long as the
    /// engine takes: a reload is applied whole or not at all, and the caller needs to know which.
    pub async fn replace(
        &self,
        watchlist: Watchlist,
        budgets: Option<BudgetPlan>,
    ) -> Result<ReloadSummary, Unanswered> {
        self.ask(|tx| Command::Replace(watchlist, budgets, tx), None)
            .await
    }

    /// Asks the sinks to reopen their files (after log rotation); does not wait for it.
    pub async fn reopen_sinks(&self) -> Result<(), Unanswered> {
        self.commands
            .send(Command::ReopenSinks)
            .await
            .map_err(|_| Unanswered::NotRunning)
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
        within: Option<Duration>,
    ) -> Result<T, Unanswered> {
        let exchange = async {
            let (tx, rx) = oneshot::channel();
            self.commands
                .send(command(tx))
                .await
                .map_err(|_| Unanswered::NotRunning)?;
            rx.await.map_err(|_| Unanswered::NotRunning)
        };
        match within {
            Some(bound) => tokio::time::timeout(bound, exchange)
                .await
                .map_err(|_| Unanswered::TooSlow)?,
            None => exchange.await,
        }
    }
}
