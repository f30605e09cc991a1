//! [`Rig`]: one engine on the paused clock, with a real store and event file in a temporary
//! directory, asked through its [`EngineHandle`] as the server asks it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::scripted::Scripted;
use crate::api::sqs::Received;
use crate::engine::receiver::{PushChannels, PushNews};
use crate::engine::{
    BudgetPlan, Engine, EngineHandle, EngineSettings, ExecutionView, ExitWhen, Finish, StatusQuery,
    StatusView,
};
use crate::input::config::{DiscoverySettings, FlowHealthSettings, PollingSettings};
use crate::input::push::PushSettings;
use crate::input::watchlist::Watchlist;
use crate::model::{ExecutionKey, FlowEntry, FlowKey, WatchEntry, unix_seconds};
use crate::output::health::Health;
use crate::output::metrics::Metrics;
use crate::output::publisher::Publisher;
use crate::output::sinks::Sinks;
use crate::output::store::Store;

pub const INSTANCE: &str = "8850c54e-e187-4fa7-89d4-6370f165174d";
/// The base region of the engine's budgets.
pub const REGION: &str = "us-east-1";

/// The `n`-th execution of flow `flow`.
pub fn key(flow: &str, n: u32) -> ExecutionKey {
    ExecutionKey::new(INSTANCE, flow, format!("a1b2c3d4-0000-4000-8000-{n:012}"))
        .expect("a valid key")
}

pub fn flow_key(flow: &str) -> FlowKey {
    FlowKey {
        instance_id: INSTANCE.into(),
        flow_name: flow.into(),
    }
}

/// A watchlist of these executions, and these flows (`[[flow]]`).
pub fn watchlist(executions: &[&ExecutionKey], flows: &[FlowEntry]) -> Watchlist {
    Watchlist {
        entries: executions
            .iter()
            .map(|k| WatchEntry {
                key: (*k).clone(),
                labels: Default::default(),
            })
            .collect(),
        flows: flows.to_vec(),
    }
}

/// A `[[flow]]` entry watching `flow` since `since` ago.
pub fn watched_flow(flow: &str, since: Option<Duration>) -> FlowEntry {
    FlowEntry {
        key: flow_key(flow),
        since,
        expect_success_within: None,
        labels: Default::default(),
    }
}

/// This host's time in seconds since the epoch (not paused: the wall clock stands still in
/// these tests, so times from the API are given relative to it).
pub fn wall() -> f64 {
    unix_seconds(SystemTime::now())
}

/// The settings an engine starts with; `Default` is the shipped configuration.
#[derive(Clone, Default)]
pub struct Setup {
    pub polling: PollingSettings,
    pub discovery: DiscoverySettings,
    pub flow_health: FlowHealthSettings,
    pub exit_when: ExitWhen,
    pub push: Option<PushSettings>,
    /// `None`: one budget, in [`REGION`], at `polling.max_requests_per_second`.
    pub budgets: Option<BudgetPlan>,
}

impl Setup {
    /// The shipped settings without adaptive polling: every poll follows the backoff ladder.
    pub fn ladder() -> Self {
        let mut setup = Self::default();
        setup.polling.adaptive = false;
        setup
    }

    /// Push set up, reconciling every `reconcile`.
    pub fn push(reconcile: Duration, fetch_details: bool) -> Self {
        Self {
            push: Some(PushSettings {
                queue_url: "https://sqs.us-east-1.amazonaws.com/123456789012/events".into(),
                endpoint_url: None,
                wait_time: PushSettings::DEFAULT_WAIT_TIME,
                reconcile_interval: reconcile,
                fetch_details,
            }),
            ..Self::ladder()
        }
    }
}

/// A running engine and what the test reaches of it.
pub struct Rig {
    pub api: Arc<Scripted>,
    pub engine: EngineHandle,
    pub metrics: Arc<Metrics>,
    /// When the engine started.
    pub start: Instant,
    pub dir: tempfile::TempDir,
    push_news: Option<mpsc::Sender<PushNews>>,
    pub push_acks: Option<mpsc::Receiver<Vec<String>>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Finish>,
    setup: Setup,
}

impl Rig {
    pub async fn start(api: Arc<Scripted>, watchlist: Watchlist, setup: Setup) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        Self::start_in(dir, api, watchlist, setup).await
    }

    /// Stops this engine and starts another on the same state directory.
    pub async fn restart(self, watchlist: Watchlist) -> Self {
        let (api, setup) = (self.api.clone(), self.setup.clone());
        let (_, dir) = self.halt().await;
        Self::start_in(dir, api, watchlist, setup).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        api: Arc<Scripted>,
        watchlist: Watchlist,
        setup: Setup,
    ) -> Self {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        if setup.push.is_some() {
            metrics
                .enable_push("123456789012", REGION)
                .expect("push metrics");
        }
        let publisher = publisher(dir.path(), &metrics, &setup);
        let settings = EngineSettings {
            polling: setup.polling.clone(),
            discovery: setup.discovery.clone(),
            flow_health: setup.flow_health.clone(),
            budgets: setup.budgets.clone().unwrap_or_else(|| {
                BudgetPlan::single(REGION, setup.polling.max_requests_per_second)
            }),
        };
        let mut engine = Engine::new(api.clone(), settings, watchlist, publisher, setup.exit_when);
        let (mut push_news, mut push_acks) = (None, None);
        if let Some(settings) = setup.push.clone() {
            let (news_tx, news) = mpsc::channel(16);
            let (acks, acks_rx) = mpsc::channel(16);
            engine = engine.with_push(PushChannels { news, acks }, settings);
            (push_news, push_acks) = (Some(news_tx), Some(acks_rx));
        }
        let (handle, commands) = EngineHandle::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(engine.run(commands, async move {
            let _ = stopped.await;
        }));
        Self {
            api,
            engine: handle,
            metrics,
            start: Instant::now(),
            dir,
            push_news,
            push_acks,
            stop,
            task,
            setup,
        }
    }

    /// Lets `d` of paused time pass.
    pub async fn wait(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Waits until `at` after the engine started.
    pub async fn until(&self, at: Duration) {
        tokio::time::sleep_until(self.start + at).await;
    }

    pub async fn status(&self) -> StatusView {
        let query = StatusQuery {
            flow: None,
            offset: 0,
            limit: StatusQuery::MAX_LIMIT,
        };
        self.engine.status(query).await.expect("the engine answers")
    }

    pub async fn execution(&self, key: &ExecutionKey) -> Option<ExecutionView> {
        let status = self.status().await;
        status.executions.into_iter().find(|e| e.entry.key == *key)
    }

    /// Sends pushed messages, as the receiver would after a ReceiveMessage.
    pub async fn push(&self, news: PushNews) {
        let sender = self
            .push_news
            .as_ref()
            .expect("the rig was set up with push");
        sender.send(news).await.expect("the engine takes push news");
    }

    /// One pushed EventBridge status change of `key`, as SQS delivers it.
    pub fn pushed(key: &ExecutionKey, status: &str, start: &str, end: Option<&str>) -> PushNews {
        Self::pushed_from(key, status, start, end, ("123456789012", REGION))
    }

    /// [`Self::pushed`] from an instance in `account` and `region`.
    pub fn pushed_from(
        key: &ExecutionKey,
        status: &str,
        start: &str,
        end: Option<&str>,
        (account, region): (&str, &str),
    ) -> PushNews {
        let end = end.map_or(String::new(), |e| format!(r#""endTime": "{e}","#));
        let body = format!(
            r#"{{"version": "0", "id": "{id}", "detail-type": "AWS Supply Chain Data Integration Status Change",
            "source": "aws.supplychain", "account": "{account}", "time": "{start}", "region": "{region}",
            "resources": [], "detail": {{"version": "1.0", "instanceId": "{instance}",
            "flowArn": "arn:aws:scn:{region}:{account}:instance/{instance}/data-integration-flows/{flow}",
            "flowExecutionId": "{execution}", "status": "{status}", {end} "startTime": "{start}"}}}}"#,
            id = fastrand::u64(..),
            instance = key.instance_id,
            flow = key.flow_name,
            execution = key.execution_id,
        );
        PushNews::Messages(vec![Received {
            message_id: format!("m-{}", fastrand::u64(..)),
            receipt_handle: format!("r-{}", fastrand::u64(..)),
            body,
        }])
    }

    /// The value of one exported sample, by its name and labels as the exposition writes them
    /// (`flowwatch_x{a="b"}`); `None` when it is not exported.
    pub fn sample(&self, series: &str) -> Option<f64> {
        let text = self.metrics.render();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Stops the engine; returns how it finished and the events it wrote.
    pub async fn stop(self) -> (Finish, Vec<serde_json::Value>) {
        let (finish, dir) = self.halt().await;
        (finish, events(dir.path()))
    }

    /// Stops the engine and hands back its state directory.
    async fn halt(self) -> (Finish, tempfile::TempDir) {
        let _ = self.stop.send(());
        let finish = self.task.await.expect("the engine does not panic");
        (finish, self.dir)
    }

    /// Waits for the engine to finish by itself (an [`ExitWhen`] other than `Never`).
    pub async fn finished(self) -> (Finish, Vec<serde_json::Value>) {
        let finish = self.task.await.expect("the engine does not panic");
        (finish, events(self.dir.path()))
    }
}

fn publisher(dir: &Path, metrics: &Arc<Metrics>, setup: &Setup) -> Publisher {
    let mut store = Store::open(dir).expect("a store");
    store
        .set_sinks(&Sinks::enabled(false, true))
        .expect("sinks");
    let sinks = Sinks::open(false, Some(&dir.join("events.jsonl")), dir, metrics.clone())
        .expect("the event file");
    Publisher::new(
        store,
        sinks,
        metrics.clone(),
        Arc::new(Health::new()),
        setup.flow_health.history,
    )
}

/// The events in the rig's event file.
pub fn events(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// The events of type `kind` of `key`.
pub fn events_of<'a>(
    events: &'a [serde_json::Value],
    kind: &str,
    key: &ExecutionKey,
) -> Vec<&'a serde_json::Value> {
    events
        .iter()
        .filter(|e| e["type"] == kind && e["data"]["execution_id"] == *key.execution_id)
        .collect()
}
