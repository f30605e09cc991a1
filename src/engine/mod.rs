//! The engine: decides what to ask the API and when, turns every answer into a decision, and
//! hands whatever must become visible to the [`Publisher`]. Like kube-runtime's controller, it is
//! parts that own their state, and a loop that coordinates them:
//!
//! - [`watch_set`]: what is watched ([`state`] of each execution, [`discovery`] of each
//!   `[[flow]]`), and how long a terminal execution's series stay;
//! - [`schedule`]: when each Get and List is due ([`queue`]), and the [`pool`] of requests in
//!   flight, paced by [`pacing`];
//! - [`flow_health`]: each flow's recent durations ([`forecast`]) and freshness, and overdue runs;
//! - [`policy`]: the pure decisions (the error table, the verdict on an observed status, the
//!   delay after a success).
//!
//! The [`Engine`] only coordinates, in three places: `run` (the loop, and changes to the watch
//! set as a whole), `observe` (answers, and the one path every observation takes to a commit)
//! and `push` (pushed events). [`EngineHandle`] is how the rest of the daemon asks it something;
//! it answers with the typed [`views`] and the status page's [`Overview`].

mod budgets;
mod discovery;
mod flow_health;
mod forecast;
mod handle;
mod observe;
mod overview;
mod pacing;
mod policy;
mod pool;
mod push;
mod queue;
pub mod receiver;
mod run;
mod schedule;
mod seen;
mod staged;
mod state;
#[cfg(test)]
mod tests;
mod views;
mod watch_set;

pub use crate::engine::budgets::BudgetPlan;
use crate::engine::flow_health::FlowHealth;
pub use crate::engine::handle::{Command, EngineHandle, REPLY_TIMEOUT, Unanswered};
pub use crate::engine::overview::{FINISHED_SHOWN, FLOWS_PER_PAGE, Overview, RUNNING_SHOWN};
#[cfg(test)]
pub use crate::engine::overview::{Finished, FlowOverview, Running};
use crate::engine::schedule::Schedule;
use crate::engine::staged::Staged;
pub use crate::engine::views::{
    ExecutionView, FlowView, InstanceView, PushView, ReloadSummary, StatusQuery, StatusView,
};
use crate::engine::watch_set::WatchSet;
use crate::input::config::{DiscoverySettings, FlowHealthSettings, PollingSettings};
use crate::output::publisher::Publisher;
use crate::systemd::Watchdog;

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

/// The engine: it coordinates its parts, each of which owns its state. See the module doc.
/// What the engine is set up with: the settings it reads, and its request budgets.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub polling: PollingSettings,
    pub discovery: DiscoverySettings,
    pub flow_health: FlowHealthSettings,
    pub budgets: BudgetPlan,
}

pub struct Engine<C> {
    polling: PollingSettings,
    discovery: DiscoverySettings,
    /// What is watched, and what is known of it.
    watch: WatchSet,
    /// When each Get and List is due, and the requests in flight.
    schedule: Schedule<C>,
    /// Each flow's recent durations and freshness, and overdue runs.
    health: FlowHealth,
    publisher: Publisher,
    /// What the engine decided to commit, committed together (see `observe::end_turn`).
    staged: Staged,
    exit_when: ExitWhen,
    watchdog: Watchdog,
    /// Push, when `[push]` names a queue; its news arrive on `push_news`.
    push: Option<push::PushLink>,
    push_news: Option<tokio::sync::mpsc::Receiver<receiver::PushNews>>,
}
