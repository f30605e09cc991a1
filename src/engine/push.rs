//! Pushed events in the engine. Each message is read ([`event::parse`]), judged against what is
//! known of its execution by the pure [`policy::push_outcome`], and applied through the one
//! observation path with `observed_via = "push"`. Its receipt is staged with the turn's changes,
//! so the message is deleted only once the store holds what it changed.
//!
//! While receiving works, running executions are polled only every `reconcile_interval`, to find
//! changes whose events were lost; when it fails, polling returns to its normal pace at once.

use std::time::SystemTime;

use crate::engine::views::PushView;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::api::FlowExecutions;
use crate::api::event::{self, PushedEvent};
use crate::api::sqs::Received;
use crate::engine::Engine;
use crate::engine::policy::{self, Verdict};
use crate::engine::pool::Job;
use crate::engine::receiver::{PushChannels, PushNews};
use crate::engine::seen::Seen;
use crate::engine::state::HeldPush;
use crate::input::push::PushSettings;
use crate::model::{ExecutionKey, FlowKey, Observation, ObservedVia, PushOutcome, WatchEntry};
use crate::output::internal_events::{PushMalformed, PushMessage, PushRefused};

/// What is remembered as logged of refused messages (malformed message ids, executions whose
/// end was contradicted, origin problems).
const LOGGED_REMEMBERED: usize = 10_000;

/// The engine's end of push.
#[derive(Debug)]
pub struct PushLink {
    acks: mpsc::Sender<Vec<String>>,
    settings: PushSettings,
    /// Receiving works: running executions are polled only to reconcile.
    working: bool,
    /// Why receiving fails, while it does.
    failing: Option<String>,
    logged: Seen,
}

impl PushLink {
    /// The reconcile interval while receiving works; `None` when polling keeps its own pace.
    pub(super) fn reconcile_every(&self) -> Option<std::time::Duration> {
        self.working.then_some(self.settings.reconcile_interval)
    }

    /// What `/status` shows of push.
    pub(super) fn view(&self) -> PushView {
        let reason = self
            .failing
            .as_deref()
            .or((!self.working).then_some("no answer from the queue yet"));
        PushView {
            queue_url: crate::model::without_userinfo(&self.settings.queue_url),
            healthy: self.working,
            reason: reason.map(str::to_string),
            reconcile_interval: self.settings.reconcile_interval,
            fetch_details: self.settings.fetch_details,
        }
    }
}

impl<C: FlowExecutions> Engine<C> {
    /// Takes pushed events from `channels`, as `settings` says. An event must come from the
    /// region (and, with a role, the account) its instance's budget names.
    pub fn with_push(mut self, channels: PushChannels, settings: PushSettings) -> Self {
        self.push_news = Some(channels.news);
        self.push = Some(PushLink {
            acks: channels.acks,
            settings,
            working: false,
            failing: None,
            logged: Seen::new(LOGGED_REMEMBERED),
        });
        self
    }

    pub(super) fn on_push(&mut self, news: PushNews) {
        match news {
            PushNews::Working => self.push_working(true, None),
            PushNews::Failing(reason) => self.push_working(false, Some(reason)),
            PushNews::Messages(messages) => {
                for message in messages {
                    self.pushed(message);
                }
            }
        }
    }

    /// Receiving started working or failing: every running execution's next poll is planned
    /// again, to reconcile only, or at the normal pace.
    fn push_working(&mut self, working: bool, reason: Option<String>) {
        let Some(link) = self.push.as_mut() else {
            return;
        };
        let was = std::mem::replace(&mut link.working, working);
        link.failing = reason;
        if was == working {
            return;
        }
        let (now, wall) = (Instant::now(), SystemTime::now());
        let running = self.watch.in_progress();
        for key in running {
            if !self.schedule.is_queued(&Job::Get(key.clone())) {
                continue;
            }
            self.plan_next_poll(&key, now, wall);
        }
    }

    fn pushed(&mut self, message: Received) {
        let event = match event::parse(&message.body) {
            Ok(event) => event,
            Err(problem) => return self.malformed(&message.message_id, &problem),
        };
        if let Some(link) = self.push.as_mut() {
            let budget = self.schedule.budget_of(&event.key.instance_id);
            let known = |s: &str| (!s.is_empty()).then(|| s.to_string());
            let (region, account) = (known(&budget.region), known(&budget.account_id));
            let problem = event.origin.problem(region.as_deref(), account.as_deref());
            if let Some(problem) = problem {
                let first = link.logged.first(&problem);
                self.publisher.emit(PushRefused {
                    outcome: PushOutcome::Unwatched,
                    execution: &event.key,
                    problem: &problem,
                    first,
                });
                return self.staged.ack(message.receipt_handle);
            }
        }
        let time = event.time;
        if let Some(outcome) = self.apply_pushed(event, message.receipt_handle) {
            self.count_pushed(outcome, time);
        }
    }

    fn malformed(&mut self, message_id: &str, problem: &str) {
        let Some(link) = self.push.as_mut() else {
            return;
        };
        let first = link.logged.first(&format!("malformed {message_id}"));
        self.publisher.emit(PushMalformed {
            message_id,
            problem,
            first,
        });
    }

    fn count_pushed(&self, outcome: PushOutcome, time: Option<f64>) {
        let now = crate::model::unix_seconds(SystemTime::now());
        // An envelope time outside the believable window says nothing of the delay.
        let delay = (outcome == PushOutcome::Applied)
            .then(|| time.filter(|t| crate::model::believable(*t, now)))
            .flatten()
            .map(|t| now - t);
        self.publisher.emit(PushMessage { outcome, delay });
    }

    /// Applies one event; returns its outcome, or `None` when it waits for its GET (it is
    /// counted once applied).
    fn apply_pushed(&mut self, event: PushedEvent, receipt: String) -> Option<PushOutcome> {
        let wall = SystemTime::now();
        let key = event.key.clone();
        let joined = !self.watch.contains(&key);
        if joined && !self.join_pushed(&event, wall) {
            let outcome = self.outside_watch_set(&event);
            if outcome.is_some() {
                self.staged.ack(receipt);
            }
            return outcome;
        }
        let state = self.watch.get_mut(&key)?;
        let verdict = policy::judge(state.status, &event.observation.status);
        let outcome = policy::push_outcome(verdict, state.lacks_times_of(&event.observation));
        if outcome != PushOutcome::Applied {
            self.staged.ack(receipt);
            return Some(outcome);
        }
        if let Some(held) = state.held_push.as_mut() {
            // A repeat of the end that waits for its GET: counted now, deleted with it.
            held.receipts.push(receipt);
            return Some(PushOutcome::Duplicate);
        }
        let fetch = self.push.as_ref().is_some_and(|p| p.settings.fetch_details);
        let terminal = matches!(verdict, Verdict::Transition(to) if to.is_terminal());
        let queued = self.schedule.is_queued(&Job::Get(key.clone()));
        if fetch && terminal && queued {
            let held = state.held_push.get_or_insert_with(|| {
                Box::new(HeldPush {
                    observation: event.observation.clone(),
                    receipts: Vec::new(),
                    time: event.time,
                })
            });
            held.receipts.push(receipt);
            self.schedule(Job::Get(key), Instant::now());
            return None;
        }
        self.observe(&key, event.observation, ObservedVia::Push, wall);
        self.staged.ack(receipt);
        if joined {
            self.plan_next_poll(&key, Instant::now(), wall);
        }
        Some(PushOutcome::Applied)
    }

    /// An event of an execution that is not watched: it joins when its flow is watched through
    /// `[[flow]]` (a known one only while it still runs), and is due for a poll at once, which
    /// the event's own observation usually replaces. Returns whether it is watched now.
    fn join_pushed(&mut self, event: &PushedEvent, wall: SystemTime) -> bool {
        let key = &event.key;
        let Some(labels) = self
            .watch
            .flow(&FlowKey::of(key))
            .map(|f| f.entry.labels.clone())
        else {
            return false;
        };
        let entry = WatchEntry {
            key: key.clone(),
            labels,
        };
        if self.publisher.is_known(key) {
            self.adopt(entry, &event.observation);
            return self.watch.contains(key);
        }
        if !self.join_discovered(entry, event.observation.start_time, wall) {
            return false;
        }
        tracing::info!(execution = %key, status = event.observation.status.as_str(), via = "push",
            "discovered a new execution");
        self.schedule(Job::Get(key.clone()), Instant::now());
        true
    }

    /// An event of an execution still outside the watch set after `join_pushed`: `unwatched`
    /// when its flow is not watched; judged against what the store knows when its flow is (a
    /// finished run that has left the watch set); `None` when the store did not take a new one
    /// (the message is left, to come back).
    fn outside_watch_set(&mut self, event: &PushedEvent) -> Option<PushOutcome> {
        if self.watch.flow(&FlowKey::of(&event.key)).is_none() {
            return Some(PushOutcome::Unwatched);
        }
        let known = self.publisher.restored(&event.key)?;
        Some(
            match policy::judge(known.status, &event.observation.status) {
                Verdict::Stale => PushOutcome::Stale,
                _ => PushOutcome::Duplicate,
            },
        )
    }

    /// Settles the held pushed end of `key`, if any, by its GET's answer (`None`: the GET
    /// failed), as [`policy::settle_held_end`] judges: returns the observation to apply as
    /// pushed, or `None` when nothing was held or the API contradicts the end (its answer is
    /// then applied as a poll's). Either way the held messages' receipts are staged.
    pub(super) fn release_held(
        &mut self,
        key: &ExecutionKey,
        fetched: Option<&Observation>,
    ) -> Option<Observation> {
        let state = self.watch.get_mut(key)?;
        let held = state.held_push.take()?;
        // Settled meanwhile (a poll already on its way saw the end): a repeat, not news.
        let applied = if state.status.is_terminal() {
            PushOutcome::Duplicate
        } else {
            PushOutcome::Applied
        };
        let HeldPush {
            observation,
            receipts,
            time,
        } = *held;
        for receipt in receipts {
            self.staged.ack(receipt);
        }
        match policy::settle_held_end(fetched.map(|f| &f.status)) {
            policy::HeldEnd::Fetched => {
                self.count_pushed(applied, time);
                fetched.cloned()
            }
            policy::HeldEnd::Pushed => {
                self.count_pushed(applied, time);
                Some(observation)
            }
            policy::HeldEnd::Contradicted => {
                let problem = format!(
                    "the event says {}, but the API still answers {}",
                    observation.status.as_str(),
                    fetched.map_or("", |f| f.status.as_str())
                );
                let first = self
                    .push
                    .as_mut()
                    .is_some_and(|link| link.logged.first(&format!("contradicted {key}")));
                self.publisher.emit(PushRefused {
                    outcome: PushOutcome::Contradicted,
                    execution: key,
                    problem: &problem,
                    first,
                });
                None
            }
        }
    }

    /// Receipts whose messages' changes are committed (or changed nothing) go to be deleted.
    /// When the deleter is that far behind, they are left: the messages come back, and change
    /// nothing then.
    pub(super) fn ack(&mut self, receipts: Vec<String>) {
        let Some(link) = self.push.as_ref() else {
            return;
        };
        if receipts.is_empty() {
            return;
        }
        if link.acks.try_send(receipts).is_err() {
            tracing::debug!(
                "the deleter of pushed messages is behind: some applied messages will be received again"
            );
        }
    }
}
