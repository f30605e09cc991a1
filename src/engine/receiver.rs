//! The two tasks of push that talk to SQS: one long-polls the queue and hands each batch of
//! messages to the engine, the other deletes the messages whose effect the store holds.
//!
//! Both are effects only. What a message means is decided by the engine (`engine::push`), which
//! also says when a message may go: after the commit of what it changed. A message received
//! again after a crash between that commit and its deletion changes nothing the second time.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::ApiError;
use crate::api::sqs::{BATCH, PushQueue, Received};
use crate::model::{Operation, Outcome};
use crate::output::health::Health;
use crate::output::internal_events::{
    InternalEvent, PushDeleteFailed, PushFailing, PushWorking, QueueCall,
};
use crate::output::metrics::Metrics;

/// Batches of messages waiting for the engine: while it is busy, the receiver waits and messages
/// stay in the queue.
const NEWS_DEPTH: usize = 4;
/// Batches of receipts waiting to be deleted; when full, a batch is left to be received again.
pub const ACK_DEPTH: usize = 256;
/// The pause after a failed receive grows from this...
const RETRY_MIN: Duration = Duration::from_secs(1);
/// ...to this.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// What the receiving task tells the engine.
#[derive(Debug)]
pub enum PushNews {
    /// Receiving works (for the first time, or again).
    Working,
    /// Receiving fails, for this reason.
    Failing(String),
    Messages(Vec<Received>),
}

/// The engine's end of push: news to read, and where receipts go once committed.
#[derive(Debug)]
pub struct PushChannels {
    pub news: mpsc::Receiver<PushNews>,
    pub acks: mpsc::Sender<Vec<String>>,
}

/// Starts receiving and deleting; receiving stops at `shutdown`, deleting once the engine drops
/// its sender. The task returned ends once every receipt sent has been dealt with.
pub fn start(
    queue: PushQueue,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> (PushChannels, tokio::task::JoinHandle<()>) {
    let queue = Arc::new(queue);
    let (news_tx, news) = mpsc::channel(NEWS_DEPTH);
    let (acks, acks_rx) = mpsc::channel(ACK_DEPTH);
    let out = Outlet { metrics, health };
    tokio::spawn(receive(queue.clone(), news_tx, out.clone(), shutdown));
    let deleter = tokio::spawn(delete(queue, acks_rx, out));
    (PushChannels { news, acks }, deleter)
}

/// Where the tasks' internal events go.
#[derive(Clone)]
struct Outlet {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Outlet {
    fn emit(&self, event: impl InternalEvent) {
        event.emit(&self.metrics, &self.health);
    }

    /// Counts one call to the queue, started at `started`, by its outcome.
    fn counted<T>(&self, operation: Operation, result: &Result<T, ApiError>, started: Instant) {
        self.emit(QueueCall {
            operation,
            outcome: result
                .as_ref()
                .map_or_else(ApiError::outcome, |_| Outcome::Success),
            elapsed: started.elapsed(),
        });
    }
}

/// Long-polls until shutdown. Until receiving is known to work (at start, and after failures)
/// a receive answers at once, so the engine learns that push works without waiting out a long
/// poll of an empty queue. A failure is reported once per run of failures and retried with a
/// jittered exponential pause.
async fn receive(
    queue: Arc<PushQueue>,
    news: mpsc::Sender<PushNews>,
    out: Outlet,
    shutdown: CancellationToken,
) {
    let pauses = || {
        ExponentialBuilder::default()
            .with_min_delay(RETRY_MIN)
            .with_max_delay(RETRY_MAX)
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut retry = pauses();
    let mut working: Option<bool> = None;
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            result = queue.receive(working == Some(true)) => result,
        };
        out.counted(Operation::ReceiveMessage, &result, started);
        let report = match result {
            Ok(messages) => {
                let again = working == Some(false);
                if working != Some(true) {
                    working = Some(true);
                    retry = pauses();
                    out.emit(PushWorking {
                        queue_url: queue.shown_url(),
                        again,
                    });
                    if !send(&news, PushNews::Working, &shutdown).await {
                        return;
                    }
                }
                (!messages.is_empty()).then_some(PushNews::Messages(messages))
            }
            Err(error) => {
                let pause = retry.next().unwrap_or(RETRY_MAX);
                let first = working != Some(false);
                working = Some(false);
                out.emit(PushFailing {
                    queue_url: queue.shown_url(),
                    error: &error,
                    first,
                    retry_in: pause,
                });
                if first && !send(&news, PushNews::Failing(error.to_string()), &shutdown).await {
                    return;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => None,
                }
            }
        };
        if let Some(report) = report
            && !send(&news, report, &shutdown).await
        {
            return;
        }
    }
}

/// Hands `report` to the engine; false once shutdown comes first or the engine has stopped
/// (receiving more would only hide messages until their visibility timeout).
async fn send(
    news: &mpsc::Sender<PushNews>,
    report: PushNews,
    shutdown: &CancellationToken,
) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        sent = news.send(report) => sent.is_ok(),
    }
}

/// Deletes committed messages, [`BATCH`] at a time, until the engine drops its sender.
async fn delete(queue: Arc<PushQueue>, mut acks: mpsc::Receiver<Vec<String>>, out: Outlet) {
    let mut batches = Vec::new();
    while acks.recv_many(&mut batches, ACK_DEPTH).await > 0 {
        let receipts: Vec<String> = batches.drain(..).flatten().collect();
        for chunk in receipts.chunks(BATCH) {
            let started = Instant::now();
            let result = queue.delete(chunk).await;
            out.counted(Operation::DeleteMessageBatch, &result, started);
            match result {
                Ok(0) => {}
                Ok(failed) => out.emit(PushDeleteFailed {
                    messages: failed,
                    error: &"SQS refused some entries of the batch",
                }),
                Err(error) => out.emit(PushDeleteFailed {
                    messages: chunk.len(),
                    error: &error,
                }),
            }
        }
    }
}
