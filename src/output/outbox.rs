//! One event sink's own view of the outbox: what waits for it, and the marks of what it wrote.
//! Each sink's thread holds its own connection (`output::sinks`); the engine's store writes the
//! outbox (`output::store`).

use std::path::Path;

use rusqlite::{Connection, params};

use crate::output::store::{DB_FILE, describe, tune};

/// One event sink's own connection to the store: what the outbox holds for it, and the marks of
/// what it wrote. A sink's thread owns it.
pub struct Delivery {
    conn: Connection,
    sink: &'static str,
}

impl Delivery {
    /// Events read from the outbox at a time.
    const PAGE: i64 = 1000;

    /// Opens the database in the state directory `dir` for `sink`.
    pub fn open(dir: &Path, sink: &'static str) -> std::io::Result<Self> {
        let conn =
            Connection::open(dir.join(DB_FILE)).map_err(|e| std::io::Error::other(describe(&e)))?;
        tune(&conn).map_err(|e| std::io::Error::other(describe(&e)))?;
        Ok(Self { conn, sink })
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

    /// This sink wrote event `seq`; the event leaves the outbox once every sink has.
    pub fn mark(&self, seq: i64) -> Result<(), String> {
        self.conn
            .prepare_cached("DELETE FROM outbox_sinks WHERE seq = ?1 AND sink = ?2")
            .and_then(|mut s| s.execute(params![seq, self.sink]))
            .and_then(|_| {
                self.conn
                    .prepare_cached(
                        "DELETE FROM outbox WHERE seq = ?1
                           AND NOT EXISTS (SELECT 1 FROM outbox_sinks WHERE seq = ?1)",
                    )?
                    .execute([seq])
            })
            .map(|_| ())
            .map_err(|e| describe(&e))
    }
}
