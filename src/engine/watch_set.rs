//! The watch set: the executions and `[[flow]]` entries the engine watches, what is known of
//! each, and how long a terminal execution's series stay (`retain_terminal`). It answers what a
//! new watchlist changes and what `/status` shows; the engine decides when, and tells the
//! schedule and the publisher.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::engine::discovery::FlowWatch;
use crate::engine::queue::DueQueue;
use crate::engine::state::{ExecutionState, executions_by_status};
use crate::engine::views::{ExecutionView, FlowView, StatusQuery};
use crate::input::watchlist::Watchlist;
use crate::model::{ExecutionKey, FlowKey, Status, WatchEntry};

#[derive(Debug)]
pub struct WatchSet {
    /// Boxed: the map's nodes stay small (a B-tree leaf holds eleven entries, often half used).
    executions: BTreeMap<ExecutionKey, Box<ExecutionState>>,
    flows: BTreeMap<FlowKey, FlowWatch>,
    /// Terminal executions whose series go when `retain_terminal` is over.
    series_drops: DueQueue<ExecutionKey>,
    /// Executions whose series are gone (still watched, still in `/status`).
    series_dropped: HashSet<ExecutionKey>,
    retain_terminal: Duration,
}

/// What a new watchlist takes out of the watch set.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unwanted {
    pub executions: Vec<ExecutionKey>,
    pub flows: Vec<FlowKey>,
}

/// What keeping a watchlist entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// It is not watched: it is new.
    NotWatched,
    /// Watched, with the same labels.
    Same,
    /// Watched, and its labels changed.
    Relabelled,
}

impl WatchSet {
    pub fn new(retain_terminal: Duration) -> Self {
        Self {
            executions: BTreeMap::new(),
            flows: BTreeMap::new(),
            series_drops: DueQueue::default(),
            series_dropped: HashSet::new(),
            retain_terminal,
        }
    }

    pub fn get(&self, key: &ExecutionKey) -> Option<&ExecutionState> {
        self.executions.get(key).map(|s| &**s)
    }

    pub fn get_mut(&mut self, key: &ExecutionKey) -> Option<&mut ExecutionState> {
        self.executions.get_mut(key).map(|s| &mut **s)
    }

    pub fn contains(&self, key: &ExecutionKey) -> bool {
        self.executions.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.executions.len()
    }

    /// Every watched execution, in key order (one flow's together).
    pub fn executions(&self) -> impl Iterator<Item = &ExecutionState> {
        self.executions.values().map(|s| &**s)
    }

    /// Every running execution, to compare with its flow's durations.
    pub fn running_mut(&mut self) -> impl Iterator<Item = (&ExecutionKey, &mut ExecutionState)> {
        self.executions
            .iter_mut()
            .map(|(k, s)| (k, &mut **s))
            .filter(|(_, s)| s.status == Status::InProgress)
    }

    /// The keys of the executions the API reports running.
    pub fn in_progress(&self) -> Vec<ExecutionKey> {
        self.executions()
            .filter(|s| s.status == Status::InProgress)
            .map(|s| s.entry.key.clone())
            .collect()
    }

    pub fn insert(&mut self, state: ExecutionState) {
        self.executions
            .insert(state.entry.key.clone(), Box::new(state));
    }

    /// Takes an execution out, with what is known of its series.
    pub fn remove(&mut self, key: &ExecutionKey) -> Option<Box<ExecutionState>> {
        self.series_dropped.remove(key);
        self.executions.remove(key)
    }

    pub fn flow(&self, key: &FlowKey) -> Option<&FlowWatch> {
        self.flows.get(key)
    }

    pub fn flow_mut(&mut self, key: &FlowKey) -> Option<&mut FlowWatch> {
        self.flows.get_mut(key)
    }

    pub fn has_flows(&self) -> bool {
        !self.flows.is_empty()
    }

    pub fn flow_keys(&self) -> impl Iterator<Item = &FlowKey> {
        self.flows.keys()
    }

    pub fn insert_flow(&mut self, flow: FlowWatch) {
        self.flows.insert(flow.entry.key.clone(), flow);
    }

    pub fn remove_flow(&mut self, key: &FlowKey) -> Option<FlowWatch> {
        self.flows.remove(key)
    }

    /// What `watchlist` no longer has: listed executions it leaves out (unless their flow stays
    /// watched and found them) and flows it leaves out. Their pending series drops are forgotten.
    pub fn unwanted(&mut self, watchlist: &Watchlist) -> Unwanted {
        let wanted: HashSet<&ExecutionKey> = watchlist.entries.iter().map(|e| &e.key).collect();
        let wanted_flows: HashSet<&FlowKey> = watchlist.flows.iter().map(|f| &f.key).collect();
        let executions: Vec<ExecutionKey> = self
            .executions
            .iter()
            .filter(|(k, s)| {
                let listed = wanted.contains(k);
                let flow_stays = s.found_by_discovery && wanted_flows.contains(&FlowKey::of(k));
                !(listed || flow_stays)
            })
            .map(|(k, _)| k.clone())
            .collect();
        if !executions.is_empty() {
            let gone: HashSet<&ExecutionKey> = executions.iter().collect();
            self.series_drops.retain(|k| !gone.contains(k));
        }
        let flows = self
            .flows
            .keys()
            .filter(|k| !wanted_flows.contains(k))
            .cloned()
            .collect();
        Unwanted { executions, flows }
    }

    /// The Supply Chain instances of the watched executions and `[[flow]]` entries.
    pub fn instance_ids(&self) -> std::collections::BTreeSet<String> {
        let mut ids: std::collections::BTreeSet<String> =
            self.flows.keys().map(|f| f.instance_id.clone()).collect();
        let mut last: Option<&str> = None;
        for key in self.executions.keys() {
            // Keys come in instance order: look each instance up once.
            if last != Some(&*key.instance_id) {
                ids.insert(key.instance_id.to_string());
                last = Some(&key.instance_id);
            }
        }
        ids
    }

    /// A watchlist entry already watched keeps its state and takes the entry's labels; it is
    /// listed now, no longer only discovered.
    pub fn keep(&mut self, entry: &WatchEntry) -> Kept {
        let Some(state) = self.executions.get_mut(&entry.key) else {
            return Kept::NotWatched;
        };
        state.found_by_discovery = false;
        if state.entry.labels == entry.labels {
            return Kept::Same;
        }
        state.entry.labels = entry.labels.clone();
        Kept::Relabelled
    }

    /// The executions `flow` discovered take its new labels; returns them.
    pub fn relabel_discovered(
        &mut self,
        flow: &FlowKey,
        labels: &BTreeMap<String, String>,
    ) -> Vec<ExecutionKey> {
        let mut relabelled = Vec::new();
        for state in self.executions.values_mut() {
            if state.found_by_discovery && FlowKey::of(&state.entry.key) == *flow {
                state.entry.labels = labels.clone();
                relabelled.push(state.entry.key.clone());
            }
        }
        relabelled
    }

    /// `key`'s series go `retain_terminal` after `now`.
    pub fn drop_series_later(&mut self, key: &ExecutionKey, now: Instant) {
        self.series_drops
            .push(now + self.retain_terminal, key.clone());
    }

    /// When the next series drop is due.
    pub fn next_series_drop(&self) -> Option<Instant> {
        self.series_drops.next_due()
    }

    /// An execution whose `retain_terminal` is over at `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Option<ExecutionKey> {
        self.series_drops.pop_due(now)
    }

    /// `key`'s series are gone, though it stays watched.
    pub fn series_gone(&mut self, key: ExecutionKey) {
        self.series_dropped.insert(key);
    }

    /// Every execution is done (terminal or rejected).
    pub fn all_done(&self) -> bool {
        self.executions().all(ExecutionState::is_done)
    }

    /// Some execution FAILED, was NOT_FOUND or was rejected.
    pub fn any_failed(&self) -> bool {
        self.executions()
            .any(|s| matches!(s.status, Status::Failed | Status::NotFound) || s.rejected.is_some())
    }

    /// How many watched executions have each status, every status listed.
    pub fn by_status(&self) -> BTreeMap<Status, i64> {
        executions_by_status(self.executions())
    }

    /// The executions `query` selects: how many match, and the slice it asks for.
    pub fn select(&self, query: &StatusQuery) -> (usize, Vec<ExecutionView>) {
        let selected = self.executions().filter(|s| {
            query.flow.as_ref().is_none_or(|f| {
                *s.entry.key.instance_id == *f.instance_id && *s.entry.key.flow_name == *f.flow_name
            })
        });
        let mut total = 0;
        let mut views = Vec::new();
        for (i, s) in selected.enumerate() {
            total += 1;
            if i >= query.offset && views.len() < query.limit {
                views.push(s.view(!self.series_dropped.contains(&s.entry.key)));
            }
        }
        (total, views)
    }

    /// Each watched flow as `/status` shows it, with how many executions it found are watched.
    pub fn flow_views(&self, now: SystemTime) -> Vec<FlowView> {
        let mut per_flow: HashMap<FlowKey, usize> = HashMap::new();
        for state in self.executions().filter(|s| s.found_by_discovery) {
            *per_flow.entry(FlowKey::of(&state.entry.key)).or_default() += 1;
        }
        self.flows
            .iter()
            .map(|(k, f)| f.view(per_flow.get(k).copied().unwrap_or(0), now))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::pacing::BackoffPolicy;
    use crate::input::config::PollingSettings;
    use crate::model::FlowEntry;

    fn entry(flow: &str, n: u32) -> WatchEntry {
        WatchEntry {
            key: ExecutionKey::from_checked("i", flow, format!("e{n}")),
            labels: BTreeMap::new(),
        }
    }

    fn state(entry: WatchEntry, discovered: bool) -> ExecutionState {
        let ladder = BackoffPolicy::from_settings(&PollingSettings::default()).start();
        let mut state = ExecutionState::new(entry, ladder);
        state.found_by_discovery = discovered;
        state
    }

    fn flow(name: &str) -> FlowEntry {
        FlowEntry {
            key: FlowKey {
                instance_id: "i".into(),
                flow_name: name.into(),
            },
            since: None,
            expect_success_within: None,
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn a_new_watchlist_drops_what_it_leaves_out_but_keeps_what_a_kept_flow_found() {
        let mut set = WatchSet::new(Duration::from_secs(60));
        set.insert(state(entry("orders", 1), false));
        set.insert(state(entry("orders", 2), true));
        set.insert(state(entry("invoices", 3), true));
        set.insert(state(entry("orders", 4), false));
        let policy = BackoffPolicy::from_settings(&PollingSettings::default());
        for name in ["orders", "invoices"] {
            set.insert_flow(FlowWatch::new(
                flow(name),
                SystemTime::now(),
                policy.start(),
            ));
        }
        let next = Watchlist {
            entries: vec![entry("orders", 4)],
            flows: vec![flow("orders")],
        };
        let unwanted = set.unwanted(&next);
        assert_eq!(
            unwanted.executions,
            [entry("invoices", 3).key, entry("orders", 1).key],
            "listed 1 is left out; 2 stays with its flow; 3's flow goes"
        );
        assert_eq!(unwanted.flows, [flow("invoices").key]);
    }

    #[tokio::test(start_paused = true)]
    async fn series_expire_retain_terminal_after_the_end_and_the_execution_stays() {
        let mut set = WatchSet::new(Duration::from_secs(60));
        let e = entry("orders", 1);
        set.insert(state(e.clone(), false));
        let now = Instant::now();
        set.drop_series_later(&e.key, now);
        assert_eq!(set.next_series_drop(), Some(now + Duration::from_secs(60)));
        assert_eq!(set.pop_expired(now + Duration::from_secs(59)), None);
        let expired = set.pop_expired(now + Duration::from_secs(60));
        assert_eq!(expired.as_ref(), Some(&e.key));
        set.series_gone(e.key.clone());
        let query = StatusQuery {
            flow: None,
            offset: 0,
            limit: 10,
        };
        let (total, views) = set.select(&query);
        assert_eq!(total, 1);
        assert!(!views[0].retained);
    }

    #[test]
    fn a_kept_entry_takes_its_new_labels_and_is_listed_from_then_on() {
        let mut set = WatchSet::new(Duration::from_secs(60));
        set.insert(state(entry("orders", 1), true));
        let mut relabelled = entry("orders", 1);
        relabelled.labels.insert("team".into(), "billing".into());
        assert_eq!(set.keep(&relabelled), Kept::Relabelled);
        let kept = set.get(&relabelled.key).expect("kept");
        assert_eq!(kept.entry.labels["team"], "billing");
        assert!(!kept.found_by_discovery);
        assert!(
            set.keep(&entry("orders", 2)) == Kept::NotWatched,
            "not watched: nothing to keep"
        );
    }
}
