//! This replica's part in high availability: the lease and every call to the shared table run on
//! a thread of their own, with a runtime of their own. The engine's store ships its commits
//! from the engine's thread and waits for the answer ([`Member::shipper`]); that wait never
//! holds up the lease's renewals, and lasts at most [`SHIP_WAIT`] a transaction, never past the
//! lease.

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, timeout_at};

use crate::api::dynamodb::{Failure, StateTable, TableError};
use crate::ha::lease::{Fence, Leadership, Lease, LeaseSettings};
use crate::ha::replica;
use crate::model::{Operation, Outcome};
use crate::output::metrics::Metrics;
use crate::output::replication::{RowChange, Ship};

/// How long a commit waits for each of its transactions at most. The engine's thread waits with
/// it, so a slow table holds up the engine (and the HTTP server on its runtime) no longer than
/// this; a commit not answered by then fails here, and the engine makes it again next turn
/// (every row is whole, so a shipment that still lands is harmless).
pub const SHIP_WAIT: Duration = Duration::from_secs(2);

/// Rows as the table holds them: (table, row as JSON).
pub type Rows = Vec<(&'static str, String)>;

enum Job {
    Ship {
        changes: Vec<RowChange>,
        fence: Fence,
        until: Instant,
        reply: std_mpsc::Sender<Result<(), Failure>>,
    },
    Load(oneshot::Sender<Result<Rows, Failure>>),
}

/// Every call to the table since the process started, by operation and outcome; and the
/// metrics of the phase (standing by, or a term as leader) that count them now. Each phase has
/// metrics of its own, which start from these counts, so the counters never go back.
#[derive(Default)]
pub struct TableCalls {
    inner: Mutex<Calls>,
}

#[derive(Default)]
struct Calls {
    counts: HashMap<(Operation, Outcome), u64>,
    /// Write units of the commits ([`replica::write_units`]) and the lease's writes.
    write_units: u64,
    metrics: Option<Arc<Metrics>>,
    region: String,
}

impl std::fmt::Debug for TableCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TableCalls")
    }
}

impl TableCalls {
    fn note(&self, operation: Operation, outcome: Outcome) {
        let mut calls = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        *calls.counts.entry((operation, outcome)).or_default() += 1;
        // The lease's own writes: one small item each, 1 write unit.
        if outcome == Outcome::Success
            && matches!(operation, Operation::PutItem | Operation::UpdateItem)
        {
            calls.write_units += 1;
            if let Some(metrics) = &calls.metrics {
                metrics.state_write_units(1);
            }
        }
        if let Some(metrics) = &calls.metrics {
            metrics.table_calls(operation, outcome, &calls.region, 1);
        }
    }

    fn charged(&self, units: u64) {
        let mut calls = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        calls.write_units += units;
        if let Some(metrics) = &calls.metrics {
            metrics.state_write_units(units);
        }
    }

    /// Counts into `metrics` from now on, starting from every call so far.
    pub fn count_into(&self, metrics: Arc<Metrics>) {
        let mut calls = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for ((operation, outcome), n) in &calls.counts {
            metrics.table_calls(*operation, *outcome, &calls.region, *n);
        }
        metrics.state_write_units(calls.write_units);
        calls.metrics = Some(metrics);
    }
}

/// The thread that holds the lease and talks to the table.
pub struct Member {
    jobs: mpsc::UnboundedSender<Job>,
    calls: Arc<TableCalls>,
    leadership: watch::Receiver<Leadership>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Member {
    /// Starts the thread, which checks the table and then runs the lease: it stands by and
    /// leads in turn until [`Member::stop`]. A table that is missing or not flowwatch's is an
    /// error here.
    pub async fn start(table: StateTable, settings: LeaseSettings) -> Result<Self, TableError> {
        let name = table.name().to_string();
        let unusable = |message: String| TableError::Unreadable {
            table: name.clone(),
            region: String::new(),
            message,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| unusable(format!("cannot start a runtime for it: {e}")))?;
        let calls = Arc::new(TableCalls::default());
        calls
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .region = table.region().to_string();
        let (noted, charged) = (calls.clone(), calls.clone());
        let table = table.observed(move |operation, outcome| noted.note(operation, outcome));
        let (lease, leadership) = Lease::new(table.clone(), settings);
        let (jobs, queue) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let (checked, check) = oneshot::channel();
        let work = async move {
            let usable = table.check().await;
            let go = usable.is_ok();
            let _ = checked.send(usable);
            if go {
                serve(table, lease, queue, stopped, charged).await;
            }
        };
        let thread = std::thread::Builder::new()
            .name("flowwatch-ha".into())
            .spawn(move || runtime.block_on(work))
            .map_err(|e| unusable(format!("cannot start its thread: {e}")))?;
        let member = Self {
            jobs,
            calls,
            leadership,
            stop: Some(stop),
            thread: Some(thread),
        };
        match check.await {
            Ok(Ok(())) => Ok(member),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(unusable("its thread stopped".into())),
        }
    }

    /// The calls to the table, for each phase's metrics.
    pub fn calls(&self) -> Arc<TableCalls> {
        self.calls.clone()
    }

    /// Whether this replica leads, as it changes.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    /// Every row the table holds.
    pub async fn load(&self) -> Result<Rows, Failure> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Load(reply))
            .map_err(|_| Failure::Other("the HA thread has stopped".into()))?;
        answer
            .await
            .map_err(|_| Failure::Other("the HA thread has stopped".into()))?
    }

    /// How the store ships its commits: under the lease held now, waiting at most until the
    /// lease could end. Not leading, it ships nothing.
    pub fn shipper(&self) -> Ship {
        let (jobs, leadership) = (self.jobs.clone(), self.leadership.clone());
        Box::new(move |changes: &[RowChange]| {
            let (fence, until) = match &*leadership.borrow() {
                Leadership::Leader { fence, until, .. } => (fence.clone(), *until),
                Leadership::Standby => return Err("this replica does not lead".to_string()),
            };
            if until <= Instant::now() {
                return Err("the lease could have ended: this replica stops leading".into());
            }
            let (reply, answer) = std_mpsc::channel();
            let job = Job::Ship {
                changes: changes.to_vec(),
                fence,
                until,
                reply,
            };
            jobs.send(job)
                .map_err(|_| "the HA thread has stopped".to_string())?;
            let transactions = changes.len().div_ceil(replica::WRITES_PER_TRANSACTION);
            let wait = until
                .saturating_duration_since(Instant::now())
                .min(SHIP_WAIT * u32::try_from(transactions).unwrap_or(u32::MAX));
            match answer.recv_timeout(wait) {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(Failure::Conflict)) => Err("another replica holds the lease".into()),
                Ok(Err(Failure::Other(e))) => Err(e),
                Err(_) => Err(format!(
                    "the table did not answer within {} s",
                    wait.as_secs_f64()
                )),
            }
        })
    }

    /// Stops the thread; a leader releases the lease first.
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread's work: the lease, and each job as it comes.
async fn serve(
    table: StateTable,
    lease: Lease,
    mut queue: mpsc::UnboundedReceiver<Job>,
    stopped: oneshot::Receiver<()>,
    calls: Arc<TableCalls>,
) {
    let lease = tokio::spawn(lease.run(async {
        let _ = stopped.await;
    }));
    // One job at a time, in the order sent: a shipment the engine gave up waiting for may
    // still land, and must land before the next one, or older rows would overwrite newer.
    let jobs = async {
        while let Some(job) = queue.recv().await {
            run(&table, job, &calls).await;
        }
    };
    tokio::select! {
        _ = lease => {}
        () = jobs => {}
    }
}

async fn run(table: &StateTable, job: Job, calls: &TableCalls) {
    match job {
        Job::Ship {
            changes,
            fence,
            until,
            reply,
        } => {
            let charged = |units| calls.charged(units);
            let shipped = timeout_at(until, replica::ship(table, &fence, &changes, charged))
                .await
                .unwrap_or_else(|_| Err(Failure::Other("the table did not answer in time".into())));
            let _ = reply.send(shipped);
        }
        Job::Load(reply) => {
            let _ = reply.send(replica::load(table).await);
        }
    }
}
