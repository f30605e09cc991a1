//! flowwatch watches AWS Supply Chain data integration flow executions until each is terminal,
//! and makes every state change visible: Prometheus metrics, CloudEvents on stdout and in a file,
//! and health endpoints.
//!
//! # Layout
//!
//! Dependencies point one way: `model` ← `input`, `api` ← `engine` → `output`; `server` sits on
//! top, and this file wires them.
//!
//! - `model`: keys, statuses, observations, transitions, time helpers. Imports no other module.
//! - `input`: the config (with its TLS and basic auth settings), the watchlist, and the located
//!   diagnostics both report problems with.
//! - `api`: the `FlowExecutions` trait (Get and List), the SDK client with its bound on answers,
//!   error classification.
//! - `engine`: the loop, the due-time queue, the request pool, the pure decisions (`policy`),
//!   the watch set, discovery, the forecast and flow health, and the status page's content.
//!   Every observation takes one path.
//! - `output`: the `Publisher`, the only way a transition becomes visible (store first, then
//!   metrics and event sinks), the health state, and the checks and lock of the state files.
//! - `server`: HTTP routes and limits, TLS, basic auth, the status page, reloads, and the
//!   [`Shutdown`] every task listens for.
//! - `ha`: replicas on shared state: the DynamoDB table, the fenced lease in it, the replica of
//!   the state database, and the thread that drives them ([`ha::member::Member`]).
//! - `systemd`, `telemetry`: notifications to systemd, and logging.
//!
//! The binary (`main.rs`) only parses the command line and maps the result to an exit code.
//! Tests and the benchmark use the small surface re-exported here.

mod api;
#[cfg(feature = "demo")]
pub mod demo;
mod engine;
pub mod ha;
mod input;
mod model;
mod output;
mod server;
mod systemd;
mod telemetry;

pub use crate::api::sqs::PushQueue;
pub use crate::api::{ApiError, FlowExecutions};
pub use crate::engine::{ExitWhen, Finish};
pub use crate::input::config::{DEFAULT_CONFIG_PATH, Settings};
pub use crate::model::{ApiStatus, ExecutionKey, Observation, Outcome, Status};
pub use crate::server::shutdown::{Shutdown, on_signals};
pub use crate::telemetry::init as init_logging;

/// What tests reach that the daemon itself never uses.
#[doc(hidden)]
pub mod testing {
    pub use crate::api::{local_client, local_client_as, local_client_in_region};
    pub use crate::output::store::Store;
    pub use crate::server::http::limits;
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::api::InstanceClients;
use crate::engine::{BudgetPlan, Engine, EngineHandle, EngineSettings};
use crate::input::diagnostic::{Diagnostic, Diagnostics, Location};
use crate::input::watchlist::Watchlist;
use crate::output::files::{self, LockError, StateLock};
use crate::output::health::Health;
use crate::output::metrics::Metrics;
use crate::output::publisher::Publisher;
use crate::output::sinks::Sinks;
use crate::output::store::{self, Store};
use crate::server::auth::BasicAuth;
use crate::server::config_reload::ConfigReload;
use crate::server::http::AppState;
use crate::server::reload::{Reloader, digest};
use crate::server::tls::Tls;

/// How long the HTTP server may take to close its connections at shutdown.
const HTTP_SHUTDOWN_BOUND: Duration = Duration::from_secs(6);

/// How long the last deletes of applied pushed messages may take at shutdown.
const PUSH_DELETE_BOUND: Duration = Duration::from_secs(5);

/// Errors that end the daemon, each with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid config or watchlist: exit 2.
    #[error("{0}")]
    Config(#[from] Diagnostics),
    /// The daemon cannot run (cannot listen, cannot open the event file, another flowwatch
    /// holds the state directory): exit 3. `source` is the failure underneath, when there is one.
    #[error("{what}{}", .source.as_ref().map(|s| format!(": {s}")).unwrap_or_default())]
    Fatal { what: String, source: Option<Cause> },
}

/// What made the daemon unable to run.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error("{}", model::io_error_text(.0))]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Metrics(#[from] prometheus::Error),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => 2,
            Error::Fatal { .. } => 3,
        }
    }

    /// A fatal error with nothing underneath but its own words.
    fn fatal(what: impl Into<String>) -> Self {
        Error::Fatal {
            what: what.into(),
            source: None,
        }
    }

    fn fatal_because(what: impl Into<String>, cause: impl Into<Cause>) -> Self {
        Error::Fatal {
            what: what.into(),
            source: Some(cause.into()),
        }
    }
}

/// Options of one daemon run.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Whether the daemon stops by itself once its work is done.
    pub exit_when: ExitWhen,
    /// Reload the watchlist on SIGHUP (the binary sets this; in-process tests do not).
    pub reload_on_sighup: bool,
    /// Told the HTTP server's address once it is listening (useful with port 0).
    pub bound: Option<oneshot::Sender<SocketAddr>>,
    /// The push queue to read when `[push]` names one; `run` builds it from the AWS
    /// configuration when this is `None`.
    pub push_queue: Option<PushQueue>,
    /// Reload the config file's `[[aws.instance]]` tables with the watchlist (`run` sets this:
    /// it rebuilds the AWS clients).
    pub config_reload: Option<ConfigReload>,
    /// This run is one term of this replica as the leader of replicas sharing state.
    pub term: Option<LeaderTerm>,
}

/// One term of this replica as the leader of replicas sharing state (`[state] backend =
/// "dynamodb"`): it runs the daemon on the state the table holds, until the lease is lost.
#[derive(Debug)]
pub struct LeaderTerm {
    /// The state as the table held it at takeover; every commit is shipped under the lease.
    store: Store,
    replica: server::http::Replica,
    /// How often this replica took or lost the lead since the process started, this term's
    /// taking included.
    leader_changes: u64,
    /// The calls to the table, which this term's metrics count too.
    table_calls: Arc<ha::member::TableCalls>,
}

/// `flowwatch check-config`: validates the config, the watchlist and the state directory as
/// `run` would. Returns the summary, or every problem found, one per line.
pub async fn check_config(config: &std::path::Path) -> Result<String, String> {
    let settings = match Settings::load(config) {
        Ok(settings) => settings,
        Err(problems) => {
            // The watchlist is checked too when its path can still be read, so one run shows
            // every problem.
            let more = input::config::watchlist_path_hint(config)
                .map(|p| Watchlist::load(&p))
                .and_then(Result::err)
                .map(|more| format!("\n{more}"))
                .unwrap_or_default();
            return Err(format!("{problems}{more}"));
        }
    };
    let watchlist = Watchlist::load(&settings.watchlist);
    let store = check_files(&settings)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            Store::check(&settings.state.path)
                .map_err(|e| format!("{}: {}", e.path.display(), e.message))
        });
    let region = match profile_region_if_used(&settings.aws).await {
        Some(region) => check_resolved_region(&settings, Some(&region)).map_err(|e| e.to_string()),
        None => Ok(()),
    };
    let store = store.and(region);
    match (watchlist, store) {
        (Ok(watchlist), Ok(())) => Ok(input::summary::summary(&settings, &watchlist)),
        (Ok(_), Err(store)) => Err(store),
        (Err(problems), Ok(())) => Err(problems.to_string()),
        (Err(problems), Err(store)) => Err(format!("{store}\n{problems}")),
    }
}

/// Runs the daemon against AWS (or `aws.endpoint_url`) until `shutdown` is requested.
pub async fn run(
    mut settings: Settings,
    options: RunOptions,
    shutdown: Shutdown,
) -> Result<Finish, Error> {
    let shared = api::shared_config(&settings.aws, settings.polling.request_timeout)
        .await
        .map_err(Error::fatal)?;
    check_resolved_region(&settings, shared.region().map(|r| r.as_ref()))?;
    // As loaded: a reload compares the config file with this.
    let started = settings.clone();
    // The region the SDK resolved (from the profile, say) is the base budget's and the base
    // client's from here on.
    if settings.aws.region.is_none() {
        settings.aws.region = shared.region().map(|r| r.to_string());
    }
    let client = Arc::new(InstanceClients::build(&shared, &settings.aws).await);
    if let Some(dynamo) = settings.state.dynamodb.clone() {
        let replicas = Replicas::start(&settings, dynamo, shared, client, started).await?;
        return run_replicated(settings, replicas, options, shutdown).await;
    }
    let mut options = options;
    options.config_reload = Some(ConfigReload::new(
        started,
        settings.aws.known_region().unwrap_or_default(),
        client.clone(),
    ));
    if let Some(push) = &settings.push {
        options.push_queue.get_or_insert_with(|| {
            PushQueue::from_shared(&shared, push, settings.polling.request_timeout)
        });
    }
    // `run_with` builds the push queue the same way when it is not given one.
    run_with(settings, client, options, shutdown).await
}

/// What a replica of several sharing state keeps across its terms as leader.
struct Replicas {
    member: ha::member::Member,
    replica_id: String,
    shared: aws_config::SdkConfig,
    client: Arc<InstanceClients>,
    /// The config as loaded, for each term's reloads.
    started: Settings,
}

impl Replicas {
    /// This replica's thread for the lease and the table of `dynamo`, once the table is found
    /// to be flowwatch's.
    async fn start(
        settings: &Settings,
        dynamo: input::state::DynamoSettings,
        shared: aws_config::SdkConfig,
        client: Arc<InstanceClients>,
        started: Settings,
    ) -> Result<Self, Error> {
        let region = dynamo
            .region
            .clone()
            .or_else(|| settings.aws.region.clone());
        let table = ha::StateTable::from_shared(
            &shared,
            &dynamo.table,
            region.as_deref(),
            dynamo.endpoint_url.as_deref(),
            settings.polling.request_timeout,
        );
        let lease = ha::lease::LeaseSettings {
            replica_id: dynamo.replica_id.clone(),
            duration: dynamo.lease_duration,
        };
        let member = ha::member::Member::start(table, lease)
            .await
            .map_err(|e| Error::fatal(e.to_string()))?;
        Ok(Self {
            member,
            replica_id: dynamo.replica_id,
            shared,
            client,
            started,
        })
    }
}

/// Runs a replica of several sharing state: it stands by, and when it takes the lease it
/// restores the state the table holds and runs the daemon on it until the lease is lost (then
/// it stands by again) or shutdown is requested (then a leader releases the lease).
async fn run_replicated(
    settings: Settings,
    replicas: Replicas,
    mut options: RunOptions,
    shutdown: Shutdown,
) -> Result<Finish, Error> {
    let stopping = tokio::spawn(notify_stopping(shutdown.clone()));
    let replica = server::http::Replica {
        replica_id: replicas.replica_id.clone(),
        leadership: replicas.member.leadership(),
    };
    let mut changes = 0;
    let finish = loop {
        let calls = replicas.member.calls();
        let signals = options.reload_on_sighup;
        stand_by(
            &settings,
            &replica,
            (changes, calls),
            signals,
            &mut options.bound,
            &shutdown,
        )
        .await?;
        if shutdown.is_requested() {
            break Ok(Finish::Shutdown);
        }
        changes += 1;
        let term = match take_over(&settings, &replicas, &replica, changes).await {
            Ok(term) => term,
            Err(e) => break Err(e),
        };
        let finish = lead(&settings, &replicas, term, &options, &shutdown).await;
        if shutdown.is_requested() || finish.is_err() {
            break finish;
        }
        if matches!(finish, Ok(Finish::AllDone { .. })) {
            break finish;
        }
        changes += 1;
        tracing::warn!("the lease is lost: standing by");
    };
    let member = replicas.member;
    let _ = tokio::task::spawn_blocking(move || member.stop()).await;
    stopping.abort();
    finish
}

/// Serves a standby's endpoints (no engine; `/readyz` says `standby`) until this replica leads
/// or shutdown is requested.
///
/// `(changes, calls)`: how often this replica took or lost the lead, and its calls to the
/// table, which the standby's metrics count too.
async fn stand_by(
    settings: &Settings,
    replica: &server::http::Replica,
    (changes, calls): (u64, Arc<ha::member::TableCalls>),
    reload_on_sighup: bool,
    bound: &mut Option<oneshot::Sender<SocketAddr>>,
    shutdown: &Shutdown,
) -> Result<(), Error> {
    let metrics = Arc::new(
        Metrics::with_per_execution(settings.metrics.per_execution)
            .map_err(|e| Error::fatal_because("cannot create metrics", e))?,
    );
    metrics
        .enable_leadership(false, changes)
        .map_err(|e| Error::fatal_because("cannot create metrics", e))?;
    calls.count_into(metrics.clone());
    let health = Arc::new(Health::new());
    let (listener, addr) = listen(settings).await?;
    let (handle, commands) = EngineHandle::channel();
    let reloader = Reloader::new(settings.watchlist.clone(), handle.clone(), metrics.clone());
    let app = server::http::app(AppState {
        metrics: metrics.clone(),
        health: health.clone(),
        engine: handle,
        reload: reloader.clone(),
        lifecycle: settings.server.enable_lifecycle,
        status_gate: Arc::new(tokio::sync::Semaphore::new(1)),
        auth: BasicAuth::new(settings.server.basic_auth_users.clone(), metrics.clone()),
        replica: Some(replica.clone()),
    });
    let stop = shutdown.child();
    let server = tokio::spawn(server::http::serve(
        listener,
        app,
        settings.server.max_connections,
        tls_of(settings)?,
        metrics,
        stop.clone(),
    ));
    // SIGHUP's default is to end the process: a standby takes it too (the files are read again
    // at takeover).
    let sighup = reload_on_sighup.then(|| tokio::spawn(reloader.on_sighup(stop.clone())));
    if let Some(bound) = bound.take() {
        let _ = bound.send(addr);
        systemd::ready(&format!("standing by; serving on {addr}"));
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), %addr, replica = %replica.replica_id,
        "flowwatch is listening");
    tracing::info!(replica = %replica.replica_id, "standing by: another replica leads");
    let mut leadership = replica.leadership.clone();
    let until = async {
        tokio::select! {
            _ = leadership.wait_for(ha::lease::Leadership::is_leader) => {}
            () = shutdown.requested() => {}
        }
    };
    server::standby::answer(commands, health, settings.flow_health.clone(), until).await;
    stop.request();
    if let Some(task) = sighup {
        task.abort();
    }
    let _ = tokio::time::timeout(HTTP_SHUTDOWN_BOUND, server).await;
    Ok(())
}

/// The state the table holds, restored into this replica's database, for a term as leader.
async fn take_over(
    settings: &Settings,
    replicas: &Replicas,
    replica: &server::http::Replica,
    changes: u64,
) -> Result<LeaderTerm, Error> {
    let started = std::time::Instant::now();
    let rows = replicas
        .member
        .load()
        .await
        .map_err(|e| Error::fatal(format!("cannot read the state table: {e}")))?;
    let store = Store::restore(
        &settings.state.path,
        rows.iter().map(|(table, row)| (*table, row.as_str())),
        replicas.member.shipper(),
    )
    .map_err(|e| state_problem(settings, e.path, e.message))?;
    tracing::info!(
        rows = rows.len(),
        seconds = started.elapsed().as_secs_f64(),
        "took the lead: the state is restored from the table"
    );
    Ok(LeaderTerm {
        store,
        replica: replica.clone(),
        leader_changes: changes,
        table_calls: replicas.member.calls(),
    })
}

/// Runs the daemon for one term as leader: until the lease is lost, or shutdown.
async fn lead(
    settings: &Settings,
    replicas: &Replicas,
    term: LeaderTerm,
    options: &RunOptions,
    shutdown: &Shutdown,
) -> Result<Finish, Error> {
    let term_stop = shutdown.child();
    let mut leadership = term.replica.leadership.clone();
    let lost = tokio::spawn({
        let stop = term_stop.clone();
        async move {
            let _ = leadership.wait_for(|l| !l.is_leader()).await;
            stop.request();
        }
    });
    let push_queue = settings.push.as_ref().map(|push| {
        PushQueue::from_shared(&replicas.shared, push, settings.polling.request_timeout)
    });
    // The instances as the config file has them now: a reload in an earlier term changed them
    // for the process, as it does for a single replica. Every other key, as at start.
    let (mut settings, mut started) = (settings.clone(), replicas.started.clone());
    if let Ok(now) = Settings::load(&settings.config_path) {
        settings.aws.instances = now.aws.instances.clone();
        started.aws.instances = now.aws.instances;
    }
    replicas.client.install(&settings.aws.instances).await;
    let region = settings.aws.known_region().unwrap_or_default();
    let options = RunOptions {
        exit_when: options.exit_when,
        reload_on_sighup: options.reload_on_sighup,
        bound: None,
        push_queue,
        config_reload: Some(ConfigReload::new(started, region, replicas.client.clone())),
        term: Some(term),
    };
    let finish = run_with(settings, replicas.client.clone(), options, term_stop).await;
    lost.abort();
    finish
}

/// The listener of `server.listen`, and the address it got.
async fn listen(settings: &Settings) -> Result<(TcpListener, SocketAddr), Error> {
    let listener = TcpListener::bind(settings.server.listen)
        .await
        .map_err(|e| {
            Error::fatal_because(format!("cannot listen on {}", settings.server.listen), e)
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::fatal_because("cannot read the listening address", e))?;
    Ok((listener, addr))
}

fn tls_of(settings: &Settings) -> Result<Option<Arc<Tls>>, Error> {
    match &settings.server.tls {
        Some(tls) => Ok(Some(Arc::new(Tls::new(tls.clone()).map_err(Error::fatal)?))),
        None => Ok(None),
    }
}

/// The AWS profile's region, when the SDK would take the region from it: `aws.region` and the
/// region variables are not set.
async fn profile_region_if_used(aws: &input::config::AwsSettings) -> Option<String> {
    if aws.known_region().is_some() {
        return None;
    }
    api::profile_region(aws).await
}

/// Refuses a region the SDK resolved that is not a region name. `aws.region` and the region
/// variables were checked at load with their locations, so a bad one here comes from the AWS
/// profile (or, in principle, the instance metadata).
fn check_resolved_region(settings: &Settings, region: Option<&str>) -> Result<(), Error> {
    let Some(problem) = region.and_then(input::aws::region_problem) else {
        return Ok(());
    };
    let file = std::env::var_os("AWS_CONFIG_FILE").map_or_else(
        || std::path::PathBuf::from("~/.aws/config"),
        std::path::PathBuf::from,
    );
    let profile = settings
        .aws
        .profile
        .clone()
        .or_else(|| std::env::var("AWS_PROFILE").ok())
        .unwrap_or_else(|| "default".to_string());
    Err(Error::Config(Diagnostics(vec![Diagnostic::new(
        Location::Path(file),
        format!("the region of AWS profile {profile:?}: {problem}"),
    )])))
}

/// Runs the daemon with a given API client.
pub async fn run_with<C: FlowExecutions>(
    settings: Settings,
    client: Arc<C>,
    options: RunOptions,
    shutdown: Shutdown,
) -> Result<Finish, Error> {
    // Read before loading, so any change after this moment is seen by the file watch.
    let watched_digest = input::read_text(&settings.watchlist, input::MAX_WATCHLIST_BYTES)
        .ok()
        .map(|text| digest(text.as_bytes()));
    let watchlist = Watchlist::load(&settings.watchlist)?;
    if options.exit_when == ExitWhen::AllDone && !watchlist.flows.is_empty() {
        return Err(exit_when_done_with_flows(&settings, watchlist.flows.len()));
    }
    // The engine takes the watchlist; no 100,000-entry copy is kept for these counts.
    let (entry_count, flow_count) = (watchlist.entries.len(), watchlist.flows.len());
    check_files(&settings)?;
    // Held until the daemon stops: one daemon per state directory.
    let _state_lock = lock_state(&settings)?;
    if files::state_missing_beside_events(&settings.state.path, settings.events.file.as_deref()) {
        tracing::warn!(state = %settings.state.path.display(),
            "no state database, but the event file has events: starting afresh, so every transition seen now is announced again (same event ids)");
    }
    let tls = tls_of(&settings)?;
    server::open_files::raise_and_report(server::open_files::OpenFiles::needed(
        settings.server.max_connections,
        settings.polling.max_in_flight + usize::from(settings.push.is_some()) * 2,
    ));
    let (store, replica, leader) = match options.term {
        Some(term) => (
            Some(term.store),
            Some(term.replica),
            Some((term.leader_changes, term.table_calls)),
        ),
        None => (None, None, None),
    };
    let (publisher, metrics, health) = open_outputs(&settings, store)?;
    if let Some((changes, table_calls)) = leader {
        metrics
            .enable_leadership(true, changes)
            .map_err(|e| Error::fatal_because("cannot create metrics", e))?;
        table_calls.count_into(metrics.clone());
    }
    let (listener, addr) = listen(&settings).await?;

    let (handle, commands) = EngineHandle::channel();
    let mut reloader = Reloader::new(settings.watchlist.clone(), handle.clone(), metrics.clone());
    if let Some(config) = options.config_reload {
        reloader = reloader.with_config(config);
    }
    let region = settings.aws.known_region().unwrap_or_default();
    let engine_settings = EngineSettings {
        polling: settings.polling.clone(),
        discovery: settings.discovery.clone(),
        flow_health: settings.flow_health.clone(),
        budgets: BudgetPlan::of(
            &settings.aws,
            &region,
            settings.polling.max_requests_per_second,
        ),
    };
    let engine = Engine::new(
        client,
        engine_settings,
        watchlist,
        publisher,
        options.exit_when,
    );
    let (engine, deleter) = with_push(
        engine,
        &settings,
        options.push_queue,
        &metrics,
        &health,
        &shutdown,
    )
    .await?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), %addr, watchlist = %settings.watchlist.display(),
        executions = entry_count, flows = flow_count, "flowwatch is listening");

    let http_stop = shutdown.child();
    let metrics_for_server = metrics.clone();
    let auth = BasicAuth::new(settings.server.basic_auth_users.clone(), metrics.clone());
    let app = server::http::app(AppState {
        metrics,
        health,
        engine: handle,
        reload: reloader.clone(),
        lifecycle: settings.server.enable_lifecycle,
        status_gate: Arc::new(tokio::sync::Semaphore::new(1)),
        auth,
        replica: replica.clone(),
    });
    let server = tokio::spawn(server::http::serve(
        listener,
        app,
        settings.server.max_connections,
        tls,
        metrics_for_server,
        http_stop.clone(),
    ));
    if let Some(bound) = options.bound {
        let _ = bound.send(addr);
    }
    // A leader's term is not the service's life: the replicas' loop tells systemd.
    let term = replica.is_some();
    if !term {
        systemd::ready(&format!(
            "watching {entry_count} executions and {flow_count} flows; serving on {addr}"
        ));
    }
    let shutdown_for_systemd = shutdown.clone();
    let stopping = tokio::spawn(async move {
        if !term {
            notify_stopping(shutdown_for_systemd).await;
        }
    });
    let sighup = options
        .reload_on_sighup
        .then(|| tokio::spawn(reloader.clone().on_sighup(shutdown.clone())));
    let file_watch = tokio::spawn(reloader.on_change(watched_digest, shutdown.clone()));

    let finish = engine.run(commands, shutdown.requested()).await;
    if !shutdown.is_requested() && !term {
        // Every execution is terminal (--exit-when-done): stopping on our own.
        stopping.abort();
        systemd::stopping();
    }
    http_stop.request();
    if let Some(task) = sighup {
        task.abort();
    }
    file_watch.abort();
    if let Some(deleter) = deleter {
        await_deletes(deleter).await;
    }
    match tokio::time::timeout(HTTP_SHUTDOWN_BOUND, server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "http server task failed"),
        Err(_) => tracing::warn!("http connections still open at shutdown were closed"),
    }
    tracing::info!(finish = finish.describe(), "flowwatch stopped");
    Ok(finish)
}

/// The engine with push when `[push]` names a queue: the queue given (tests, the benchmark) or
/// one built on the AWS configuration, its receiver started. Returns the task that deletes
/// applied messages, which ends after the engine.
async fn with_push<C: FlowExecutions>(
    engine: Engine<C>,
    settings: &Settings,
    queue: Option<PushQueue>,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    shutdown: &Shutdown,
) -> Result<(Engine<C>, Option<tokio::task::JoinHandle<()>>), Error> {
    let Some(push) = &settings.push else {
        return Ok((engine, None));
    };
    let queue = match queue {
        Some(queue) => queue,
        None => {
            let shared = api::shared_config(&settings.aws, settings.polling.request_timeout)
                .await
                .map_err(Error::fatal)?;
            PushQueue::from_shared(&shared, push, settings.polling.request_timeout)
        }
    };
    let queue_region = push
        .queue_region()
        .or_else(|| settings.aws.known_region())
        .unwrap_or_default();
    metrics
        .enable_push(&push.queue_account().unwrap_or_default(), &queue_region)
        .map_err(|e| Error::fatal_because("cannot create metrics", e))?;
    let (channels, deleter) =
        engine::receiver::start(queue, metrics.clone(), health.clone(), shutdown.token());
    Ok((engine.with_push(channels, push.clone()), Some(deleter)))
}

/// Lets the last deletes of applied pushed messages finish, for a bounded time.
async fn await_deletes(deleter: tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(PUSH_DELETE_BOUND, deleter)
        .await
        .is_err()
    {
        tracing::warn!(
            "applied pushed messages not deleted at shutdown will be received again, and change nothing"
        );
    }
}

/// Opens everything that makes transitions visible; a bad event file or state directory stops
/// the start-up here, not at the first transition.
/// The file checks `run` and `check-config` share: what `run` would refuse, found before
/// anything is opened.
fn check_files(settings: &Settings) -> Result<(), Error> {
    let state = &settings.state.path;
    files::check_state_dir(state)
        .map_err(|(path, problem)| state_problem(settings, path, problem))?;
    if let Some(tls) = &settings.server.tls {
        server::tls::server_config(tls).map_err(|problem| {
            Error::Config(Diagnostics(vec![Diagnostic::new(
                Location::Path(settings.config_path.clone()),
                format!("server.tls: {problem}"),
            )]))
        })?;
    }
    if let Some(file) = &settings.events.file {
        files::check_events_file(file).map_err(|problem| {
            Error::Config(Diagnostics(vec![Diagnostic::new(
                Location::Path(file.clone()),
                problem,
            )]))
        })?;
    }
    Ok(())
}

/// Takes the state directory for this daemon alone: another daemon holding it is a fatal error
/// (exit 3) naming it; a directory that cannot hold the lock is a config error.
fn lock_state(settings: &Settings) -> Result<StateLock, Error> {
    let dir = &settings.state.path;
    StateLock::acquire(dir).map_err(|e| match e {
        LockError::Held(message) => Error::fatal(message),
        LockError::Io(e) => {
            let reason = store::why_not_writable(dir).unwrap_or_else(|| model::io_error_text(&e));
            state_problem(settings, dir.join(files::LOCK_FILE), reason)
        }
    })
}

fn state_problem(settings: &Settings, path: std::path::PathBuf, problem: String) -> Error {
    Error::Config(Diagnostics(vec![Diagnostic::new(
        Location::Path(path),
        format!("{problem} (state.path = {})", settings.state.path.display()),
    )]))
}

/// `store`: the state restored for a leader's term; else the database in `state.path`.
fn open_outputs(
    settings: &Settings,
    store: Option<Store>,
) -> Result<(Publisher, Arc<Metrics>, Arc<Health>), Error> {
    let metrics = Arc::new(
        Metrics::with_per_execution(settings.metrics.per_execution)
            .map_err(|e| Error::fatal_because("cannot create metrics", e))?,
    );
    let file = settings.events.file.as_deref();
    let mut store = match store {
        Some(store) => store,
        None => Store::open(&settings.state.path)
            .map_err(|e| state_problem(settings, e.path, e.message))?,
    };
    store
        .set_sinks(&Sinks::enabled(settings.events.stdout, file.is_some()))
        .map_err(|e| state_problem(settings, e.path, e.message))?;
    let sinks = Sinks::open(
        settings.events.stdout,
        file,
        &settings.state.path,
        metrics.clone(),
    )
    .map_err(|e| {
        let path = file.map(|p| p.display().to_string()).unwrap_or_default();
        Error::fatal_because(format!("cannot open event file {path}"), e)
    })?;
    let health = Arc::new(Health::new());
    let publisher = Publisher::new(
        store,
        sinks,
        metrics.clone(),
        health.clone(),
        settings.flow_health.history,
    );
    Ok((publisher, metrics, health))
}

fn exit_when_done_with_flows(settings: &Settings, flows: usize) -> Error {
    Error::Config(Diagnostics(vec![Diagnostic::new(
        Location::Path(settings.watchlist.clone()),
        format!(
            "--exit-when-done cannot be used with [[flow]] entries ({flows} in the watchlist): a watched flow never ends"
        ),
    )]))
}

async fn notify_stopping(shutdown: Shutdown) {
    shutdown.requested().await;
    systemd::stopping();
}
