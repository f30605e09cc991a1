//! One event sink's own view of the outbox: what waits for it, and the marks of what it wrote.
//! Each sink's thread holds its own connection (`output::sinks`); the engine's store writes the
//! outbox (`output::store`).
//!
//! A sink marks each event written in its place file (`outbox-<sink>.place` in the state
//! directory): one small write, no transaction, so a crash between an event's write and its mark
//! repeats that one event. The events it wrote leave the outbox later, in batches
//! ([`Delivery::forget_through`]). At start-up the place is trusted only if the outbox still holds
//! that very event for the sink (same sequence number, same text); otherwise the sink writes
//! everything the outbox holds for it. So a place that outlived its database, or a database that
//! lost its last commits on a power cut, can repeat events but never skip one.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest as _, Sha256};

use crate::output::store::{DB_FILE, describe, tune};

/// One event sink's own connection to the store and its place file: what the outbox holds for
/// it, and the marks of what it wrote. A sink's thread owns it.
pub struct Delivery {
    conn: Connection,
    sink: &'static str,
    place: File,
}

/// What the place file holds: the last event written, by sequence number and the first 64 bits of
/// its text's SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    seq: i64,
    hash: u64,
}

impl Place {
    /// Fixed width, so each write replaces the whole record in one small write at offset 0.
    const LEN: usize = 38;

    fn of(seq: i64, event: &str) -> Self {
        let digest = Sha256::digest(event.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Self {
            seq,
            hash: u64::from_be_bytes(first),
        }
    }

    fn encode(self) -> String {
        format!("{:020} {:016x}\n", self.seq, self.hash)
    }

    fn decode(text: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(text.get(..Self::LEN)?).ok()?;
        let (seq, hash) = text.trim_end().split_once(' ')?;
        Some(Self {
            seq: seq.parse().ok()?,
            hash: u64::from_str_radix(hash, 16).ok()?,
        })
    }
}

impl Delivery {
    /// Events read from the outbox at a time.
    const PAGE: i64 = 1000;

    /// Opens the database in the state directory `dir`, and `sink`'s place file there.
    pub fn open(dir: &Path, sink: &'static str) -> std::io::Result<Self> {
        let conn =
            Connection::open(dir.join(DB_FILE)).map_err(|e| std::io::Error::other(describe(&e)))?;
        tune(&conn).map_err(|e| std::io::Error::other(describe(&e)))?;
        let path = dir.join(format!("outbox-{sink}.place"));
        let place = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("{}: {}", path.display(), crate::model::io_error_text(&e)),
                )
            })?;
        Ok(Self { conn, sink, place })
    }

    /// The sequence number of the last event this sink wrote, when the outbox still holds that
    /// event for it; else 0 (everything the outbox holds for it is written). Call it before the
    /// engine commits anything, so a new event can never take the place of the one marked.
    pub fn resume(&self) -> i64 {
        let mut text = [0u8; Place::LEN];
        let Some(place) = self
            .place
            .read_exact_at(&mut text, 0)
            .ok()
            .and_then(|()| Place::decode(&text))
        else {
            return 0;
        };
        let held: Option<String> = self
            .conn
            .query_row(
                "SELECT o.event FROM outbox o JOIN outbox_sinks s ON s.seq = o.seq
                 WHERE s.sink = ?1 AND o.seq = ?2",
                params![self.sink, place.seq],
                |r| r.get(0),
            )
            .optional()
            .ok()
            .flatten();
        match held {
            Some(event) if Place::of(place.seq, &event) == place => place.seq,
            _ => 0,
        }
    }

    /// Events pending for this sink after outbox sequence number `after`, in order.
    pub fn pending(&self, after: i64) -> Result<Vec<(i64, String)>, String> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT o.seq, o.event FROM outbox o JOIN outbox_sinks s ON s.seq = o.seq
                 WHERE s.sink = ?1 AND o.seq > ?2 ORDER BY o.seq LIMIT ?3",
            )
            .map_err(|e| describe(&e))?;
        stmt.query_map(params![self.sink, after, Self::PAGE], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| describe(&e))
    }

    /// This sink wrote `event`, number `seq`: its place moves there.
    pub fn mark(&self, seq: i64, event: &str) -> std::io::Result<()> {
        self.place
            .write_all_at(Place::of(seq, event).encode().as_bytes(), 0)
    }

    /// This sink wrote every event up to `seq`: they are no longer pending for it, and each
    /// leaves the outbox once every sink has written it. One transaction.
    pub fn forget_through(&mut self, seq: i64) -> Result<(), String> {
        let run = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            tx.prepare_cached("DELETE FROM outbox_sinks WHERE sink = ?1 AND seq <= ?2")?
                .execute(params![self.sink, seq])?;
            tx.prepare_cached(
                "DELETE FROM outbox WHERE seq <= ?1
                   AND NOT EXISTS (SELECT 1 FROM outbox_sinks s WHERE s.seq = outbox.seq)",
            )?
            .execute([seq])?;
            tx.commit()
        };
        run(&mut self.conn).map_err(|e| describe(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ExecutionKey, Status};
    use crate::output::store::Store;

    /// An outbox holding `events` for the stdout sink; their sequence numbers.
    fn outbox_with(dir: &Path, events: &[&str]) -> Vec<i64> {
        let mut store = Store::open(dir).expect("store");
        store.set_sinks(&["stdout"]).expect("sinks");
        let batch = store.batch().expect("batch");
        let seqs = events
            .iter()
            .enumerate()
            .map(|(n, event)| {
                let key = ExecutionKey::new(
                    "8850c54e-e187-4fa7-89d4-6370f165174d",
                    "daily-orders",
                    format!("a1b2c3d4-0000-4000-8000-{n:012}"),
                )
                .expect("key");
                batch
                    .transition(&key, Status::InProgress, None, event)
                    .expect("transition")
            })
            .collect();
        batch.commit().expect("commit");
        seqs
    }

    #[test]
    fn a_place_resumes_only_on_the_very_event_it_marks() {
        let dir = tempfile::tempdir().expect("dir");
        let seqs = outbox_with(dir.path(), &["one", "two", "three"]);
        let delivery = Delivery::open(dir.path(), "stdout").expect("open");
        assert_eq!(delivery.resume(), 0, "no place yet");
        delivery.mark(seqs[1], "two").expect("mark");
        assert_eq!(delivery.resume(), seqs[1]);
        let after: Vec<String> = delivery
            .pending(seqs[1])
            .expect("pending")
            .into_iter()
            .map(|(_, event)| event)
            .collect();
        assert_eq!(after, ["three"]);

        delivery
            .mark(seqs[1], "not what the outbox holds")
            .expect("mark");
        assert_eq!(delivery.resume(), 0, "another event at that number");
        delivery.mark(seqs[2] + 10, "three").expect("mark");
        assert_eq!(delivery.resume(), 0, "a number the outbox never had");
        std::fs::write(dir.path().join("outbox-stdout.place"), "torn").expect("write");
        assert_eq!(delivery.resume(), 0, "a torn place");
    }

    #[test]
    fn a_place_whose_event_left_the_outbox_resumes_from_what_is_left() {
        let dir = tempfile::tempdir().expect("dir");
        let seqs = outbox_with(dir.path(), &["one", "two"]);
        let mut delivery = Delivery::open(dir.path(), "stdout").expect("open");
        delivery.mark(seqs[0], "one").expect("mark");
        delivery.forget_through(seqs[0]).expect("forget");
        assert_eq!(delivery.resume(), 0);
        assert_eq!(
            delivery.pending(0).expect("pending"),
            [(seqs[1], "two".to_string())],
            "nothing written is pending, nothing unwritten is skipped"
        );
    }
}
