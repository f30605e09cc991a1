//! The event sinks: stdout and the event file. Each is written by a thread of its own, fed
//! through a bounded queue, so a sink that blocks (a stdout nobody reads) or fails never holds up
//! the engine, and one sink's trouble never touches the other.
//!
//! Each sink keeps its own place in the outbox (`output::outbox`). Its thread writes an event,
//! then marks it written in its place file; what it wrote leaves the outbox in one transaction
//! at most [`FORGET_EVERY`] later (an event's row goes once every sink has it). So a crash
//! between a write and its mark repeats that one event on that sink, and a sink that failed or
//! fell behind (its queue was full) catches up from the outbox, in order, without writing
//! anything twice.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::output::metrics::Metrics;
use crate::output::outbox::Delivery;

/// Events waiting for one sink's thread; past it, the sink falls behind and catches up later.
pub const QUEUE: usize = 4096;
/// A sink whose write has not returned for this long is reported stalled (`/readyz`).
pub const STALLED_AFTER: Duration = Duration::from_secs(5);
/// How often a sink that failed or fell behind tries again.
const RETRY_EVERY: Duration = Duration::from_secs(5);
/// How long events written stay in the outbox at most, so a burst leaves it in a few
/// transactions rather than one per event.
pub const FORGET_EVERY: Duration = Duration::from_millis(100);

/// The names of the sinks, as `flowwatch_events_total{sink}` and the outbox know them.
pub const STDOUT: &str = "stdout";
pub const FILE: &str = "file";

/// What the engine asks of a sink's thread.
enum Order {
    Write { seq: i64, line: Arc<str> },
    Reopen,
    Flush(std::sync::mpsc::Sender<()>),
}

/// What the engine's side knows of a sink's thread.
#[derive(Default)]
struct SinkState {
    /// Events were not queued (the queue was full) or not written: catch up from the outbox.
    behind: AtomicBool,
    /// When the write in progress began (milliseconds since [`epoch`] + 1), or 0.
    busy_since: AtomicU64,
}

struct Worker {
    name: &'static str,
    jobs: SyncSender<Order>,
    status: Arc<SinkState>,
}

/// Every enabled sink.
pub struct Sinks {
    workers: Vec<Worker>,
}

impl Sinks {
    /// Opens the event file (creating its directory) so a bad path fails at start-up, and starts
    /// one thread per sink. Each catches up at once with what the outbox holds for it.
    pub fn open(
        stdout: bool,
        file: Option<&Path>,
        db: &Path,
        metrics: Arc<Metrics>,
    ) -> io::Result<Self> {
        let mut writers: Vec<(&'static str, Writer)> = Vec::new();
        if stdout {
            writers.push((STDOUT, Writer::Stdout));
        }
        if let Some(path) = file {
            let file = open_append(path)?;
            writers.push((
                FILE,
                Writer::File(FileSink {
                    path: path.to_path_buf(),
                    file: Some(file),
                }),
            ));
        }
        let mut workers = Vec::new();
        for (name, writer) in writers {
            let delivery = Delivery::open(db, name)?;
            // Read now, before the engine commits anything: see `Delivery::resume`.
            let last = delivery.resume();
            let (jobs, queue) = std::sync::mpsc::sync_channel(QUEUE);
            let status = Arc::new(SinkState::default());
            status.behind.store(true, Ordering::Relaxed);
            let thread = SinkThread {
                name,
                writer,
                delivery,
                status: status.clone(),
                metrics: metrics.clone(),
                last,
                // Events written before a crash may still be in the outbox: taken out at once.
                forgotten: 0,
                forget_at: (last > 0).then(Instant::now),
                forget_failing: false,
                failing: false,
            };
            std::thread::Builder::new()
                .name(format!("sink-{name}"))
                .spawn(move || thread.run(queue))?;
            workers.push(Worker { name, jobs, status });
        }
        Ok(Self { workers })
    }

    /// The sinks `stdout` and `file` enable, whose outbox places the store keeps. Set them in
    /// the store before [`Sinks::open`]: each sink's thread reads its place at once.
    pub fn enabled(stdout: bool, file: bool) -> Vec<&'static str> {
        [stdout.then_some(STDOUT), file.then_some(FILE)]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Hands a committed event to every sink. A sink whose queue is full counts a failure and
    /// takes the event from the outbox later.
    pub fn deliver(&self, seq: i64, line: &str, metrics: &Metrics) {
        let line: Arc<str> = Arc::from(line);
        for w in &self.workers {
            let job = Order::Write {
                seq,
                line: line.clone(),
            };
            match w.jobs.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    if !w.status.behind.swap(true, Ordering::Relaxed) {
                        tracing::error!(
                            sink = w.name,
                            queue = QUEUE,
                            "event sink is not keeping up: its events wait in the outbox"
                        );
                    }
                    metrics.event_written(w.name, false);
                }
                Err(TrySendError::Disconnected(_)) => metrics.event_written(w.name, false),
            }
        }
    }

    /// The sinks stuck in one write for longer than [`STALLED_AFTER`], in words.
    pub fn stalled(&self) -> Option<String> {
        let now = since_epoch();
        let stuck: Vec<String> = self
            .workers
            .iter()
            .filter_map(|w| {
                let since = w.status.busy_since.load(Ordering::Relaxed);
                let secs = (since > 0)
                    .then(|| now.saturating_sub(since - 1) / 1000)
                    .filter(|s| *s >= STALLED_AFTER.as_secs())?;
                Some(format!(
                    "event sink {} has been blocked in a write for {secs} s",
                    w.name
                ))
            })
            .collect();
        (!stuck.is_empty()).then(|| stuck.join("; "))
    }

    /// Reopens the event file by its path (SIGHUP after log rotation).
    pub fn reopen(&self) {
        for w in &self.workers {
            let _ = w.jobs.try_send(Order::Reopen);
        }
    }

    /// Waits, at most `within` in all, for every sink to write what it was given and sync it. A
    /// stalled sink is given up on: its events stay in the outbox for the next start. Every sink
    /// is asked before any is waited for, so a stalled one does not use up the others' time.
    pub fn flush(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let left = || deadline.saturating_duration_since(Instant::now());
        let asked: Vec<_> = self
            .workers
            .iter()
            .map(|w| {
                let (ack, done) = std::sync::mpsc::channel();
                let unsent = match w.jobs.try_send(Order::Flush(ack)) {
                    Err(TrySendError::Full(job)) => Some(job),
                    // Sent, or the thread is gone: its answer never comes.
                    _ => None,
                };
                (w, unsent, done)
            })
            .collect();
        for (w, unsent, done) in asked {
            // A full queue (a stalled sink) takes the flush once there is room, if in time.
            let sent = unsent.is_none_or(|job| w.jobs.send_timeout_compat(job, left()));
            if !sent || done.recv_timeout(left()).is_err() {
                tracing::warn!(
                    sink = w.name,
                    "event sink did not finish in time; its events stay in the outbox"
                );
            }
        }
    }
}

/// `SyncSender::send` with a deadline: tries until `within` is over.
trait SendTimeout {
    fn send_timeout_compat(&self, job: Order, within: Duration) -> bool;
}

impl SendTimeout for SyncSender<Order> {
    fn send_timeout_compat(&self, mut job: Order, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            match self.try_send(job) {
                Ok(()) => return true,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    job = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TrySendError::Full(_)) => return false,
            }
        }
    }
}

/// One sink's thread.
struct SinkThread {
    name: &'static str,
    writer: Writer,
    delivery: Delivery,
    status: Arc<SinkState>,
    metrics: Arc<Metrics>,
    /// The last event written, by outbox sequence number.
    last: i64,
    /// Events up to this one have left the outbox for this sink.
    forgotten: i64,
    /// When to take the events written out of the outbox, while some are still in it.
    forget_at: Option<Instant>,
    /// The last attempt to take them out failed (logged once until it works again).
    forget_failing: bool,
    failing: bool,
}

impl SinkThread {
    fn run(mut self, queue: Receiver<Order>) {
        self.catch_up();
        loop {
            let wait = self.forget_at.map_or(RETRY_EVERY, |at| {
                at.saturating_duration_since(Instant::now())
            });
            match queue.recv_timeout(wait) {
                Ok(Order::Write { seq, line }) => {
                    if self.status.behind.load(Ordering::Relaxed) {
                        self.catch_up();
                    } else if seq > self.last && !self.write(seq, &line) {
                        self.status.behind.store(true, Ordering::Relaxed);
                    }
                }
                Ok(Order::Reopen) => self.writer.reopen(),
                Ok(Order::Flush(ack)) => {
                    if self.status.behind.load(Ordering::Relaxed) {
                        self.catch_up();
                    }
                    self.writer.flush();
                    self.forget();
                    let _ = ack.send(());
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.status.behind.load(Ordering::Relaxed) {
                        self.catch_up();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.writer.flush();
                    self.forget();
                    return;
                }
            }
            if self.forget_at.is_some_and(|at| at <= Instant::now()) {
                self.forget();
            }
        }
    }

    /// Takes what this sink wrote out of the outbox, in one transaction.
    fn forget(&mut self) {
        if self.last <= self.forgotten {
            return;
        }
        match self.delivery.forget_through(self.last) {
            Ok(()) => {
                self.forgotten = self.last;
                self.forget_at = None;
                if std::mem::take(&mut self.forget_failing) {
                    tracing::info!(sink = self.name, "written events leave the outbox again");
                }
            }
            Err(e) => {
                // The place file still says what was written, so nothing is written twice; the
                // outbox only keeps those rows longer.
                if !std::mem::replace(&mut self.forget_failing, true) {
                    tracing::error!(sink = self.name, error = %e,
                        "cannot take written events out of the outbox; trying again every 5 s");
                }
                self.forget_at = Some(Instant::now() + RETRY_EVERY);
            }
        }
    }

    /// Writes, in order, what the outbox holds for this sink past the last event written.
    fn catch_up(&mut self) {
        self.status.behind.store(false, Ordering::Relaxed);
        loop {
            let pending = match self.delivery.pending(self.last) {
                Ok(pending) => pending,
                Err(e) => {
                    tracing::error!(sink = self.name, error = %e, "cannot read the outbox");
                    self.status.behind.store(true, Ordering::Relaxed);
                    return;
                }
            };
            if pending.is_empty() {
                return;
            }
            for (seq, line) in pending {
                if !self.write(seq, &line) {
                    self.status.behind.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    /// Writes one event and marks it written for this sink; false when the write failed.
    fn write(&mut self, seq: i64, event: &str) -> bool {
        let mut line = String::with_capacity(event.len() + 1);
        line.push_str(event);
        line.push('\n');
        self.status
            .busy_since
            .store(since_epoch() + 1, Ordering::Relaxed);
        let result = self.writer.write(line.as_bytes());
        self.status.busy_since.store(0, Ordering::Relaxed);
        self.metrics.event_written(self.name, result.is_ok());
        match result {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    tracing::info!(sink = self.name, "event sink works again");
                }
                if let Err(e) = self.delivery.mark(seq, event) {
                    // Written but not marked: written again after a crash (same id).
                    tracing::error!(sink = self.name, error = %e, "cannot mark an event written");
                }
                self.last = seq;
                self.forget_at
                    .get_or_insert_with(|| Instant::now() + FORGET_EVERY);
                true
            }
            Err(e) => {
                if !self.failing {
                    self.failing = true;
                    tracing::error!(sink = self.name, error = %e,
                        "cannot write events; they wait in the outbox and are written again every 5 s");
                }
                false
            }
        }
    }
}

/// Milliseconds since the first call: a clock the threads share.
fn since_epoch() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

enum Writer {
    Stdout,
    File(FileSink),
}

impl Writer {
    fn write(&mut self, line: &[u8]) -> io::Result<()> {
        match self {
            Writer::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(line).and_then(|()| out.flush())
            }
            Writer::File(sink) => sink.write(line),
        }
    }

    fn reopen(&mut self) {
        if let Writer::File(sink) = self {
            sink.file = open_append(&sink.path)
                .inspect_err(|e| tracing::error!(path = %sink.path.display(), error = %e, "cannot reopen the event file"))
                .ok();
        }
    }

    fn flush(&mut self) {
        match self {
            Writer::Stdout => {
                let _ = io::stdout().lock().flush();
            }
            Writer::File(FileSink {
                file: Some(f),
                path,
            }) => {
                if let Err(e) = f.sync_data() {
                    tracing::warn!(path = %path.display(), error = %e, "cannot sync event file");
                }
            }
            Writer::File(_) => {}
        }
    }
}

struct FileSink {
    path: PathBuf,
    file: Option<File>,
}

/// Which file an open handle or a path is: device and inode.
fn identity(metadata: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (metadata.dev(), metadata.ino())
}

impl FileSink {
    /// Whether the file open is no longer the one at the path: renamed or deleted by log
    /// rotation. Writing on would put events where nobody reads them.
    fn rotated(&self) -> bool {
        let Some(open) = self.file.as_ref().and_then(|f| f.metadata().ok()) else {
            return false;
        };
        std::fs::metadata(&self.path).map_or(true, |at_path| identity(&at_path) != identity(&open))
    }

    fn write(&mut self, line: &[u8]) -> io::Result<()> {
        if self.rotated() {
            tracing::info!(path = %self.path.display(), "the event file was renamed or deleted: reopening it by its path");
            self.file = None;
        }
        if self.file.is_none() {
            self.file = Some(open_append(&self.path)?);
        }
        let result = match &mut self.file {
            Some(f) => f.write_all(line),
            None => Ok(()),
        };
        if result.is_err() {
            // Reopen next time: the file may have been rotated away or its disk replaced.
            self.file = None;
        }
        result
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    // A process killed in the middle of a line leaves it unterminated: end it, so the next event
    // starts on a line of its own and readers can skip the torn one.
    if ends_mid_line(&mut file)? {
        file.write_all(b"\n")?;
    }
    Ok(file)
}

fn ends_mid_line(file: &mut File) -> io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}
