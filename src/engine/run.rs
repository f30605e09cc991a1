//! The engine's loop and its lifecycle: one task that waits for whichever comes first (an
//! answer, a command, a due request with a free slot and a rate token, a series to drop, a
//! flow-health sweep, the heartbeat), handles it, and ends every turn by committing what the turn
//! decided. Also what changes the watch set as a whole: a new watchlist, what comes back from the
//! store, and executions that join or leave.

use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};

use crate::api::FlowExecutions;
use crate::engine::budgets::{BudgetKey, BudgetPlan};
use crate::engine::discovery::FlowWatch;
use crate::engine::flow_health::FlowHealth;
use crate::engine::overview::{Overview, overview};
use crate::engine::pacing::startup_offset;
use crate::engine::pool::{Job, Request, Turn};
use crate::engine::receiver::PushNews;
use crate::engine::schedule::Schedule;
use crate::engine::staged::Staged;
use crate::engine::state::ExecutionState;
use crate::engine::views::{InstanceView, ReloadSummary, StatusQuery, StatusView};
use crate::engine::watch_set::{Kept, WatchSet};
use crate::engine::{Command, Engine, EngineSettings, ExitWhen, Finish};
use crate::input::watchlist::Watchlist;
use crate::model::{ExecutionKey, FlowEntry, WatchEntry, unix_seconds};
use crate::output::health::HEARTBEAT;
use crate::output::publisher::Publisher;
use crate::systemd::Watchdog;

/// How long requests still in flight at shutdown may take to finish.
const DRAIN_BOUND: Duration = Duration::from_secs(5);

/// The API lists a year of executions; what is known of older ones can go.
const LISTED_HISTORY: Duration = Duration::from_secs(366 * 24 * 3600);

impl<C: FlowExecutions> Engine<C> {
    pub fn new(
        client: std::sync::Arc<C>,
        settings: EngineSettings,
        watchlist: Watchlist,
        mut publisher: Publisher,
        exit_when: ExitWhen,
    ) -> Self {
        let EngineSettings {
            polling,
            discovery,
            flow_health,
            budgets,
        } = settings;
        let schedule = Schedule::new(client, &polling, &discovery, budgets);
        for (budget, rate) in schedule.rates() {
            budget_joined(&publisher, budget, rate);
        }
        let mut engine = Self {
            watch: WatchSet::new(polling.retain_terminal),
            schedule,
            health: FlowHealth::restore(flow_health, &mut publisher),
            polling,
            discovery,
            publisher,
            staged: Staged::default(),
            exit_when,
            watchdog: Watchdog::from_env(),
            push: None,
            push_news: None,
        };
        engine.replace(watchlist);
        engine
    }

    /// Runs until `stop` resolves, or until [`ExitWhen`] says the work is done.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        stop: impl Future<Output = ()>,
    ) -> Finish {
        let mut stop = std::pin::pin!(stop);
        self.publisher.health().set_state_restored();
        // The loop turns at least every half ping period, so a ping is never later than 1.5
        // periods (three quarters of WATCHDOG_USEC), even when a tick lands just short of one.
        let beat = self
            .watchdog
            .period()
            .map_or(HEARTBEAT, |p| (p / 2).min(HEARTBEAT));
        let mut push_news = self.push_news.take();
        let mut heartbeat = tokio::time::interval(beat);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let finish = loop {
            self.beat();
            if let Some(finish) = self.finished() {
                break finish;
            }
            let next_due = self.schedule.next_due();
            let next_drop = self.watch.next_series_drop();
            let commit_at = self.staged.commit_due();
            let turn = self.schedule.turn();
            tokio::select! {
                biased;
                () = &mut stop => break Finish::Shutdown,
                Some(answer) = self.schedule.next_answer(), if self.schedule.in_flight() > 0 => {
                    self.on_answer(answer);
                    while let Some(answer) = self.schedule.ready() {
                        self.on_answer(answer);
                    }
                }
                Some(command) = commands.recv() => self.on_command(command),
                Some(news) = next_news(&mut push_news), if push_news.is_some() => self.on_push(news),
                Some(turn) = turn, if next_due.is_some() => self.dispatch(turn),
                () = sleep_until(commit_at.unwrap_or_else(Instant::now)), if commit_at.is_some() => {}
                () = sleep_until(next_drop.unwrap_or_else(Instant::now)), if next_drop.is_some() => {
                    self.drop_expired_series();
                }
                () = sleep_until(self.health.next_sweep()) => {
                    let wall = SystemTime::now();
                    let running = self.watch.running_mut();
                    self.health.sweep(running, &mut self.staged, &self.publisher, wall);
                }
                _ = heartbeat.tick() => {
                    self.publisher.check_sinks();
                    self.publisher.sync_replica();
                }
            }
            self.end_turn(false);
        };
        self.drain().await;
        finish
    }

    /// Tells health, the systemd watchdog and the lag gauge that the loop turns.
    fn beat(&mut self) {
        let health = self.publisher.health();
        health.beat();
        health.set_polling(self.schedule.is_busy());
        self.watchdog.tick();
        let lag = self.schedule.lag(Instant::now());
        self.publisher.metrics().schedule_lag(lag);
    }

    /// As [`ExitWhen`] says: every execution is terminal and committed, nothing is in flight,
    /// and (for `AllDone`) no flow is watched.
    fn finished(&self) -> Option<Finish> {
        let flows_done = match self.exit_when {
            ExitWhen::Never => return None,
            ExitWhen::AllDone => !self.watch.has_flows(),
            ExitWhen::ExecutionsDone => true,
        };
        let done = flows_done
            && self.schedule.in_flight() == 0
            && self.staged.is_empty()
            && self.watch.all_done();
        done.then(|| Finish::AllDone {
            failed: self.watch.any_failed(),
        })
    }

    fn on_command(&mut self, command: Command) {
        // What is decided is durable before a reload changes the watch set or /status shows it.
        self.end_turn(true);
        match command {
            Command::Status(query, reply) => {
                let _ = reply.send(self.status_view(&query));
            }
            Command::Overview(offset, reply) => {
                let _ = reply.send(self.overview(offset));
            }
            Command::Replace(watchlist, budgets, reply) => {
                if let Some(plan) = budgets {
                    self.replan(plan);
                }
                let summary = self.replace(watchlist);
                let _ = reply.send(summary);
            }
            Command::ReopenSinks => self.publisher.reopen_sinks(),
        }
    }

    /// Sends the request at the head of the queue, and every other one already due while a slot
    /// and a rate token are free at once: a backlog goes out in bursts the bucket allows, not one
    /// loop turn per request.
    fn dispatch(&mut self, turn: Turn) {
        self.send_head(turn);
        while let Some(turn) = self.schedule.try_turn(Instant::now()) {
            self.send_head(turn);
        }
    }

    fn send_head(&mut self, turn: Turn) {
        let Some(job) = self.schedule.pop_head(turn.budget()) else {
            return;
        };
        let request = match job {
            Job::Get(key) => {
                let Some(state) = self.watch.get_mut(&key) else {
                    return;
                };
                state.polls.last_poll = Some(SystemTime::now());
                state.polls.next_poll = None;
                Request::Get(key)
            }
            Job::List(flow) => {
                let Some(watch) = self.watch.flow_mut(&flow) else {
                    return;
                };
                watch.lists.next_round = None;
                let token = watch.next_token();
                Request::List { flow, token }
            }
        };
        self.schedule.send(turn, request);
    }

    /// Lets in-flight requests finish for a bounded time so their transitions are not lost,
    /// then cancels the rest, commits, and flushes the sinks.
    async fn drain(&mut self) {
        self.publisher.health().set_stopped();
        let deadline = Instant::now() + self.polling.request_timeout.min(DRAIN_BOUND);
        while self.schedule.in_flight() > 0 {
            match tokio::time::timeout_at(deadline, self.schedule.next_answer()).await {
                Ok(Some(answer)) => self.on_answer(answer),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        in_flight = self.schedule.in_flight(),
                        "cancelling requests still in flight at shutdown"
                    );
                    self.schedule.cancel_all();
                    break;
                }
            }
        }
        self.end_turn(true);
        self.publisher.flush();
    }

    /// The `/status` document, with the executions `query` selects (the counts cover them all).
    fn status_view(&self, query: &StatusQuery) -> StatusView {
        let (total, executions) = self.watch.select(query);
        let next = query.offset + executions.len();
        StatusView {
            watched: self.watch.len(),
            flows: self.watch.flow_views(SystemTime::now()),
            by_status: self.watch.by_status(),
            in_flight: self.schedule.in_flight(),
            rate_limit_requests_per_second: self.schedule.rate(),
            executions_total: total,
            offset: query.offset,
            limit: query.limit,
            next_offset: (next < total).then_some(next),
            push: self.push.as_ref().map(|p| p.view()),
            instances: self.instance_views(),
            executions,
        }
    }

    /// Each watched instance as `/status` shows it.
    fn instance_views(&self) -> Vec<InstanceView> {
        self.publisher
            .health()
            .instances()
            .into_iter()
            .map(|health| {
                let budget = self.schedule.budget_of(&health.instance_id);
                InstanceView {
                    region: budget.region.clone(),
                    account_id: budget.account_id.clone(),
                    instance_id: health.instance_id,
                    up: health.up,
                    reason: health.reason,
                }
            })
            .collect()
    }

    /// Tells the publisher which Supply Chain instances the watch set holds now, with the
    /// region and account of each.
    fn watch_instances(&mut self) {
        let instances: Vec<(String, &BudgetKey)> = self
            .watch
            .instance_ids()
            .into_iter()
            .map(|id| {
                let budget = self.schedule.budget_of(&id);
                (id, budget)
            })
            .collect();
        self.publisher.instances_watched(
            instances
                .iter()
                .map(|(id, b)| (id.as_str(), b.region.as_str(), b.account_id.as_str())),
        );
    }

    /// The status page's content, from the flow at `offset`.
    fn overview(&self, offset: usize) -> Overview {
        overview(&self.watch, &self.health, offset)
    }

    /// Queues `job` at `at`, moving it if it was queued, and shows when in `/status`. Nothing is
    /// queued for an execution or flow that is not watched.
    pub(super) fn schedule(&mut self, job: Job, at: Instant) {
        let next = Some(SystemTime::now() + at.saturating_duration_since(Instant::now()));
        let watched = match &job {
            Job::Get(key) => self.watch.get_mut(key).map(|s| s.polls.next_poll = next),
            Job::List(flow) => self.watch.flow_mut(flow).map(|f| f.lists.next_round = next),
        };
        if watched.is_some() {
            self.schedule.put(job, at);
        }
    }

    /// Installs new request budgets (a reload changed the instances): queued jobs move to their
    /// instance's budget, and the series of budgets that went, or came, follow.
    fn replan(&mut self, plan: BudgetPlan) {
        let changes = self.schedule.replan(plan);
        for budget in &changes.left {
            self.publisher
                .metrics()
                .budget_left(&budget.account_id, &budget.region);
        }
        for (budget, rate) in &changes.joined {
            budget_joined(&self.publisher, budget, *rate);
        }
        tracing::info!(
            left = changes.left.len(),
            joined = changes.joined.len(),
            "request budgets changed with the instances"
        );
    }

    /// Installs a new watchlist. New entries' first polls are spread over `initial_interval`.
    /// Discovered executions stay while their flow does.
    fn replace(&mut self, watchlist: Watchlist) -> ReloadSummary {
        let now = Instant::now();
        let mut summary = ReloadSummary {
            removed: self.remove_unwanted(&watchlist),
            ..ReloadSummary::default()
        };
        let new: Vec<WatchEntry> = watchlist
            .entries
            .into_iter()
            .filter(|entry| match self.watch.keep(entry) {
                Kept::NotWatched => true,
                Kept::Same => {
                    summary.kept += 1;
                    false
                }
                Kept::Relabelled => {
                    summary.kept += 1;
                    self.publisher
                        .execution_relabelled(&entry.key, &entry.labels);
                    false
                }
            })
            .collect();
        summary.added = new.len();
        let mut index = 0;
        for entry in new {
            let offset = startup_offset(index, summary.added, self.polling.initial_interval);
            index += usize::from(self.restore_execution(entry, false, now + offset));
        }
        let (kept, new): (Vec<FlowEntry>, Vec<FlowEntry>) = watchlist
            .flows
            .into_iter()
            .partition(|f| self.watch.flow(&f.key).is_some());
        kept.into_iter().for_each(|entry| self.relabel_flow(entry));
        let count = new.len();
        for (i, entry) in new.into_iter().enumerate() {
            let offset = startup_offset(i, count, self.polling.initial_interval);
            self.watch_flow(entry, now, now + offset);
        }
        self.watch_instances();
        summary
    }

    /// Takes out of the watch set every execution and flow the new watchlist no longer has;
    /// returns how many executions left.
    fn remove_unwanted(&mut self, watchlist: &Watchlist) -> usize {
        let unwanted = self.watch.unwanted(watchlist);
        for key in &unwanted.executions {
            self.forget_execution(key);
        }
        for key in unwanted.flows {
            self.schedule.remove(&Job::List(key.clone()));
            self.watch.remove_flow(&key);
            self.publisher.flow_left(&key);
            tracing::info!(flow = %key, "flow no longer watched: its discovered executions left the watch set");
        }
        unwanted.executions.len()
    }

    /// A `[[flow]]` entry that stays takes its new labels (and so do its discovered executions)
    /// and its new `expect_success_within`.
    fn relabel_flow(&mut self, entry: FlowEntry) {
        let Some(flow) = self.watch.flow(&entry.key) else {
            return;
        };
        if flow.entry.expect_success_within != entry.expect_success_within {
            self.publisher
                .success_expected_within(&entry.key, entry.expect_success_within);
        }
        if flow.entry.labels != entry.labels {
            self.publisher.flow_relabelled(&entry.key, &entry.labels);
            for key in self.watch.relabel_discovered(&entry.key, &entry.labels) {
                self.publisher.execution_relabelled(&key, &entry.labels);
            }
        }
        if let Some(flow) = self.watch.flow_mut(&entry.key) {
            flow.entry = entry;
        }
    }

    /// Adds an execution to the watch set with what the store knows of it; it is polled from
    /// `first_poll` unless it is done. Returns whether it was scheduled.
    pub(super) fn restore_execution(
        &mut self,
        entry: WatchEntry,
        discovered: bool,
        first_poll: Instant,
    ) -> bool {
        let now = Instant::now();
        let key = entry.key.clone();
        let mut state = ExecutionState::new(entry, self.schedule.ladder());
        state.found_by_discovery = discovered;
        if let Some(restored) = self.publisher.restored(&key) {
            state.restore(restored, unix_seconds(SystemTime::now()));
        }
        let observation = state.observation.as_deref();
        self.publisher
            .execution_joined(&state.entry, state.status, observation);
        self.health.export_freshness_of(&key, &self.publisher);
        // Never observed, in a flow with no forecast yet, past its scouts: it waits for them
        // (at most max_interval). What the store knows is polled at once.
        let first_poll = if self.polling.adaptive
            && state.observation.is_none()
            && !state.is_done()
            && self.health.forecast_mut().spare_new(&key)
        {
            now + self.polling.max_interval
        } else {
            first_poll
        };
        let done = state.is_done();
        self.watch.insert(state);
        if done {
            // Known terminal from an earlier run: not polled again; its series stay for
            // retain_terminal from now.
            self.watch.drop_series_later(&key, now);
        } else {
            self.schedule(Job::Get(key), first_poll);
        }
        !done
    }

    /// Takes an execution out of the watch set, with its series. The caller takes it out of
    /// the series drops.
    pub(super) fn forget_execution(&mut self, key: &ExecutionKey) {
        self.schedule.remove(&Job::Get(key.clone()));
        self.health.forecast_mut().forget_execution(key);
        if let Some(state) = self.watch.remove(key) {
            self.publisher.execution_left(key, state.status);
        }
    }

    /// Starts watching a `[[flow]]` entry: its discovered executions come back from the store,
    /// and its first discovery round is due at `first_round`.
    fn watch_flow(&mut self, entry: FlowEntry, now: Instant, first_round: Instant) {
        let key = entry.key.clone();
        let wall = SystemTime::now();
        let first_seen = self.publisher.flow_first_seen(&key, wall);
        self.publisher.flow_joined(&entry);
        self.health
            .flow_watched_since(&key, first_seen, &self.publisher);
        let labels = entry.labels.clone();
        let flow = FlowWatch::new(entry, first_seen, self.schedule.ladder());
        self.watch.insert_flow(flow);
        let forget_before = wall.checked_sub(LISTED_HISTORY).unwrap_or(wall);
        let ended_after = unix_seconds(wall) - self.polling.retain_terminal.as_secs_f64();
        let restored = self
            .publisher
            .discovered_to_restore(&key, ended_after, forget_before);
        let count = restored.len();
        for (i, execution) in restored.into_iter().enumerate() {
            if self.watch.contains(&execution) {
                continue;
            }
            let entry = WatchEntry {
                key: execution,
                labels: labels.clone(),
            };
            let offset = startup_offset(i, count, self.polling.initial_interval);
            self.restore_execution(entry, true, now + offset);
        }
        if count > 0 {
            tracing::info!(flow = %key, executions = count, "discovered executions restored from the state database");
        }
        self.schedule(Job::List(key), first_round);
    }

    /// Series whose `retain_terminal` is over go; discovered executions leave the watch set with
    /// them (the store remembers them).
    fn drop_expired_series(&mut self) {
        self.end_turn(true);
        let now = Instant::now();
        while let Some(key) = self.watch.pop_expired(now) {
            if self.watch.get(&key).is_some_and(|s| s.found_by_discovery) {
                tracing::debug!(execution = %key, "a terminal discovered execution leaves the watch set");
                self.forget_execution(&key);
                continue;
            }
            tracing::debug!(execution = %key, "dropping the series of a terminal execution");
            self.publisher.series_expired(&key);
            self.watch.series_gone(key);
        }
    }
}

/// The next news of push; pending forever once the receiver has stopped.
async fn next_news(news: &mut Option<mpsc::Receiver<PushNews>>) -> Option<PushNews> {
    match news {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A budget's series start: its rate, and its request counters at zero.
fn budget_joined(publisher: &Publisher, budget: &BudgetKey, rate: f64) {
    let metrics = publisher.metrics();
    metrics.rate_changed(&budget.account_id, &budget.region, rate);
    metrics.preset_requests(&budget.account_id, &budget.region);
}
