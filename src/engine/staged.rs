//! What one turn of the engine decided to make visible, waiting to be committed together: the
//! changes of answers that arrive close together share one SQLite transaction and one write per
//! event sink, and the receipts of pushed messages go once those changes are durable.

use std::time::Duration;

use tokio::time::Instant;

use crate::output::publisher::Change;

/// How long a staged change may wait for others to commit with it: the changes of answers that
/// arrive close together share one SQLite transaction and one write per event sink.
const COMMIT_WINDOW: Duration = Duration::from_millis(100);
/// This many staged changes commit at once, whatever their window.
const COMMIT_BATCH: usize = 512;

/// Changes decided but not committed yet.
#[derive(Debug, Default)]
pub struct Staged {
    changes: Vec<Change>,
    /// Receipts of pushed messages, deleted once the changes are committed.
    receipts: Vec<String>,
    /// When the first of them was staged.
    since: Option<Instant>,
}

impl Staged {
    pub fn push(&mut self, change: Change) {
        self.since.get_or_insert_with(Instant::now);
        self.changes.push(change);
    }

    /// A pushed message goes once this turn's changes are committed.
    pub fn ack(&mut self, receipt: String) {
        if !receipt.is_empty() {
            self.since.get_or_insert_with(Instant::now);
            self.receipts.push(receipt);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.receipts.is_empty()
    }

    /// Whether to commit at `now`: something is staged, and its window is over, it is
    /// [`COMMIT_BATCH`] changes or more, or `force` asks for it now.
    pub fn ready(&self, force: bool, now: Instant) -> bool {
        let due = self.commit_due().is_some_and(|at| at <= now);
        let many = self.changes.len() >= COMMIT_BATCH;
        !self.is_empty() && (force || due || many)
    }

    /// When the staged changes must be committed: [`COMMIT_WINDOW`] after the first of them.
    pub fn commit_due(&self) -> Option<Instant> {
        self.since.map(|since| since + COMMIT_WINDOW)
    }

    pub fn take(&mut self) -> (Vec<Change>, Vec<String>) {
        self.since = None;
        (
            std::mem::take(&mut self.changes),
            std::mem::take(&mut self.receipts),
        )
    }
}
