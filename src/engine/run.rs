//! The engine's loop: one task that waits for whichever comes first (an answer, a command, a due
//! request with a free slot and a rate token, a series to drop, a flow-health sweep, the
//! heartbeat), handles it, and
//! ends every turn by committing what the turn decided.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};

use crate::api::FlowExecutions;
use crate::engine::pool::{Job, Request, Turn};
use crate::engine::{Command, Engine, ExitWhen, Finish};
use crate::model::Status;
use crate::output::health::HEARTBEAT;

/// How long requests still in flight at shutdown may take to finish.
const DRAIN_BOUND: Duration = Duration::from_secs(5);

impl<C: FlowExecutions> Engine<C> {
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
            let next_due = self.due.next_due();
            let next_drop = self.series_drops.next_due();
            let commit_at = self.commit_due();
            let turn = self.pool.turn(next_due);
            tokio::select! {
                biased;
                () = &mut stop => break Finish::Shutdown,
                Some(answer) = self.pool.next(), if self.pool.in_flight() > 0 => {
                    self.on_answer(answer);
                    while let Some(answer) = self.pool.ready() {
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
                () = sleep_until(self.next_sweep) => self.sweep_flow_health(std::time::SystemTime::now()),
                _ = heartbeat.tick() => self.publisher.check_sinks(),
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
        health.set_polling(!self.due.is_empty() || self.pool.in_flight() > 0);
        self.watchdog.tick();
        let lag = self.due.next_due().map_or(0.0, |at| {
            Instant::now().saturating_duration_since(at).as_secs_f64()
        });
        self.publisher.metrics().schedule_lag(lag);
    }

    /// As [`ExitWhen`] says: every execution is terminal and committed, nothing is in flight,
    /// and (for `AllDone`) no flow is watched.
    fn finished(&self) -> Option<Finish> {
        let flows_done = match self.exit_when {
            ExitWhen::Never => return None,
            ExitWhen::AllDone => self.flows.is_empty(),
            ExitWhen::ExecutionsDone => true,
        };
        let done = flows_done
            && self.pool.in_flight() == 0
            && self.staged.is_empty()
            && self.executions.values().all(|s| s.is_done());
        done.then(|| Finish::AllDone {
            failed: self.executions.values().any(|s| {
                matches!(s.status, Status::Failed | Status::NotFound) || s.rejected.is_some()
            }),
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
            Command::Replace(watchlist, reply) => {
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
        let now = Instant::now();
        while self.due.next_due().is_some_and(|at| at <= now) {
            let Some(turn) = self.pool.try_turn() else {
                break;
            };
            self.send_head(turn);
        }
    }

    fn send_head(&mut self, turn: Turn) {
        let Some(job) = self.due.pop_first() else {
            return;
        };
        let request = match job {
            Job::Get(key) => {
                let Some(state) = self.executions.get_mut(&key) else {
                    return;
                };
                state.slot = None;
                state.last_poll = Some(std::time::SystemTime::now());
                state.next_poll = None;
                Request::Get(key)
            }
            Job::List(flow) => {
                let Some(watch) = self.flows.get_mut(&flow) else {
                    return;
                };
                watch.slot = None;
                watch.next_round = None;
                let token = watch.next_token();
                Request::List { flow, token }
            }
        };
        self.pool.send(turn, request);
    }

    /// Lets in-flight requests finish for a bounded time so their transitions are not lost,
    /// then cancels the rest, commits, and flushes the sinks.
    async fn drain(&mut self) {
        self.publisher.health().set_stopped();
        let deadline = Instant::now() + self.polling.request_timeout.min(DRAIN_BOUND);
        while self.pool.in_flight() > 0 {
            match tokio::time::timeout_at(deadline, self.pool.next()).await {
                Ok(Some(answer)) => self.on_answer(answer),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        in_flight = self.pool.in_flight(),
                        "cancelling requests still in flight at shutdown"
                    );
                    self.pool.cancel_all();
                    break;
                }
            }
        }
        self.end_turn(true);
        self.publisher.flush();
    }
}

/// The next news of push; pending forever once the receiver has stopped.
async fn next_news(
    news: &mut Option<mpsc::Receiver<crate::engine::receiver::PushNews>>,
) -> Option<crate::engine::receiver::PushNews> {
    match news {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
