//! The engine: decides what to ask the API and when, turns every answer into a decision, and
//! hands whatever must become visible to the [`Publisher`].
//!
//! - [`policy`]: the pure decisions (the error table, the verdict on an observed status).
//! - [`queue`]: the due-time queue; [`pool`]: the requests in flight, paced by [`pacing`].
//! - [`state`] and [`discovery`]: what is known of each execution and each watched flow.
//! - [`forecast`]: when runs of a flow tend to end, for adaptive polling; [`flow_health`]: what
//!   that says about running executions (expected end, overdue) and each flow's freshness.
//!
//! The [`Engine`]'s own work is split by concern: `run` (the loop), `watch` (the watch set:
//! reloads, restores, series lifetimes, `/status`), `observe` (polls, and the one path every
//! observation takes), `pages` (List pages of watched flows), `overview` (the status page).

mod discovery;
mod flow_health;
mod forecast;
mod handle;
mod observe;
mod overview;
mod pacing;
mod pages;
mod policy;
mod pool;
mod push;
mod queue;
pub mod receiver;
mod run;
mod seen;
mod state;
#[cfg(test)]
mod tests;
mod views;
mod watch;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::api::FlowExecutions;
use crate::engine::discovery::FlowWatch;
use crate::engine::flow_health::FreshnessByFlow;
use crate::engine::forecast::Forecast;
pub use crate::engine::handle::{EngineHandle, REPLY_TIMEOUT, Unanswered};
use crate::engine::observe::Staged;
pub use crate::engine::overview::{FINISHED_SHOWN, FLOWS_PER_PAGE, Overview, RUNNING_SHOWN};
#[cfg(test)]
pub use crate::engine::overview::{Finished, FlowOverview, Running};
use crate::engine::pacing::BackoffPolicy;
use crate::engine::pool::{Job, RequestPool};
use crate::engine::queue::DueQueue;
use crate::engine::state::ExecutionState;
pub use crate::engine::views::{
    ExecutionView, FlowView, PushView, ReloadSummary, StatusQuery, StatusView,
};
use crate::input::config::{DiscoverySettings, FlowHealthSettings, PollingSettings};
use crate::input::watchlist::Watchlist;
use crate::model::{ExecutionKey, FlowKey};
use crate::output::publisher::Publisher;
use crate::systemd::Watchdog;

/// Requests to the engine, sent through an [`EngineHandle`].
#[derive(Debug)]
pub enum Command {
    /// The `/status` document, with the executions the query selects.
    Status(StatusQuery, oneshot::Sender<StatusView>),
    /// The status page's content, from the flow at this offset.
    Overview(usize, oneshot::Sender<Overview>),
    /// Replace the watchlist: entries that stay keep their state and schedule.
    Replace(Watchlist, oneshot::Sender<ReloadSummary>),
    /// Reopen the event file by its path (SIGHUP, after log rotation).
    ReopenSinks,
}

/// When the engine stops by itself, besides at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExitWhen {
    #[default]
    Never,
    /// Every execution is terminal and no `[[flow]]` is watched (flows never end).
    AllDone,
    /// Every execution it knows is terminal, though flows are watched (the demo, whose flows
    /// start nothing new after their scripted runs).
    ExecutionsDone,
}

/// Why the engine stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The shutdown token was cancelled.
    Shutdown,
    /// Every execution is terminal (see [`ExitWhen`]); `failed` if any is FAILED,
    /// NOT_FOUND or rejected.
    AllDone { failed: bool },
}

impl Finish {
    /// The process exit code of this finish (DESIGN §4).
    pub fn exit_code(self) -> u8 {
        match self {
            Finish::Shutdown | Finish::AllDone { failed: false } => 0,
            Finish::AllDone { failed: true } => 1,
        }
    }

    /// In words, for logs and the demo.
    pub fn describe(self) -> &'static str {
        match self {
            Finish::Shutdown => "stopped on request",
            Finish::AllDone { failed: false } => "every execution succeeded",
            Finish::AllDone { failed: true } => {
                "every execution is done, and at least one failed, was not found or was rejected"
            }
        }
    }
}

pub struct Engine<C> {
    polling: PollingSettings,
    discovery: DiscoverySettings,
    backoff: BackoffPolicy,
    pool: RequestPool<C>,
    /// Boxed: the map's nodes stay small (a B-tree leaf holds eleven entries, often half used).
    executions: BTreeMap<ExecutionKey, Box<ExecutionState>>,
    flows: BTreeMap<FlowKey, FlowWatch>,
    /// Polls and List pages, by when they are due.
    due: DueQueue<Job>,
    /// Terminal executions whose series go when `retain_terminal` is over.
    series_drops: DueQueue<ExecutionKey>,
    series_dropped: HashSet<ExecutionKey>,
    forecast: Forecast,
    flow_health: FlowHealthSettings,
    /// When each flow last succeeded and failed.
    freshness: FreshnessByFlow,
    /// When running executions are next compared with their flow's durations.
    next_sweep: tokio::time::Instant,
    publisher: Publisher,
    /// What the engine decided to commit, committed together (see `observe::end_turn`).
    staged: Staged,
    rng: fastrand::Rng,
    exit_when: ExitWhen,
    watchdog: Watchdog,
    /// Push, when `[push]` names a queue; its news arrive on `push_news`.
    push: Option<push::PushLink>,
    push_news: Option<tokio::sync::mpsc::Receiver<receiver::PushNews>>,
}

impl<C: FlowExecutions> Engine<C> {
    pub fn new(
        client: Arc<C>,
        polling: PollingSettings,
        discovery: DiscoverySettings,
        flow_health: FlowHealthSettings,
        watchlist: Watchlist,
        publisher: Publisher,
        exit_when: ExitWhen,
    ) -> Self {
        let pool = RequestPool::new(
            client,
            polling.max_requests_per_second,
            polling.max_in_flight,
            polling.request_timeout,
            discovery.page_size,
        );
        publisher.metrics().rate_changed(pool.rate());
        let mut engine = Self {
            backoff: BackoffPolicy::from_settings(&polling),
            polling,
            discovery,
            pool,
            executions: BTreeMap::new(),
            flows: BTreeMap::new(),
            due: DueQueue::default(),
            series_drops: DueQueue::default(),
            series_dropped: HashSet::new(),
            forecast: Forecast::new(flow_health.history),
            flow_health,
            freshness: FreshnessByFlow::new(),
            next_sweep: tokio::time::Instant::now(),
            publisher,
            staged: Staged::default(),
            rng: fastrand::Rng::new(),
            exit_when,
            watchdog: Watchdog::from_env(),
            push: None,
            push_news: None,
        };
        engine.restore_flow_history();
        engine.replace(watchlist);
        engine
    }
}
