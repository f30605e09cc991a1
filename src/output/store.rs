//! The durable store in `state.path`: per execution, the last known status and API fields, an
//! outbox of events, and the transition counts behind `flowwatch_transitions_total`; per flow,
//! the durations of its recent runs and when it last succeeded and failed (flow health).
//!
//! It is SQLite in WAL mode, for three reasons: a transition's new state and its event commit in
//! one transaction, so a crash can never keep one without the other; a process killed at any
//! moment leaves a consistent database (WAL recovery), with nothing to repair by hand; and
//! operators can read it with the `sqlite3` shell. `synchronous = NORMAL` makes commits survive
//! a process crash; on a power loss the last commits may be lost, and then the next poll simply
//! sees the transition again (the API still has the status), with the same event id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::model::{ExecutionKey, FlowKey, Observation, Status};
use crate::output::replication::{self, Replica, Ship};

/// The database file inside `state.path`.
pub const DB_FILE: &str = "flowwatch.db";
const SCHEMA_VERSION: i64 = 1;
/// `PRAGMA application_id` of a flowwatch database ("FlWt"), so `file(1)` and flowwatch itself
/// can tell it from another application's SQLite file.
const APPLICATION_ID: i64 = 0x466C_5774;

/// Sets what every connection to the database needs: commits durable across a process crash
/// without an fsync each (`synchronous` is per connection, and SQLite's default, FULL, syncs
/// the WAL on every commit), and a wait of 5 s for a lock the other connection holds.
pub fn tune(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(Duration::from_secs(5))
}

/// A store failure, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state database {path}: {message}")]
pub struct StoreError {
    pub path: PathBuf,
    pub message: String,
}

/// A flow's latest success and failure (end times) as the store holds them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlowOutcomes {
    pub last_success: Option<f64>,
    pub last_failure: Option<f64>,
}

/// What the store knew of an execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    pub status: Status,
    pub observation: Option<Observation>,
    pub rejected: Option<String>,
    /// Its overdue event was committed.
    pub overdue: bool,
}

/// What the store knows of a flow's finished runs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FlowHistory {
    /// (end time, duration in seconds) of its most recent runs, oldest first.
    pub durations: Vec<(f64, f64)>,
    pub last_success: Option<f64>,
    pub last_failure: Option<f64>,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The enabled event sinks: each keeps its own place in the outbox.
    sinks: Vec<&'static str>,
    /// The replica of the database in the shared table, with `[state] backend = "dynamodb"`:
    /// every change is shipped to it before it commits here.
    replica: Option<Replica>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database in `dir`, and checks that it is sound.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(DB_FILE);
        let fail = |message: String| StoreError {
            path: path.clone(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| {
            fail(format!(
                "cannot create the state directory {}: {}",
                dir.display(),
                crate::model::io_error_text(&e)
            ))
        })?;
        let conn = Connection::open(&path)
            .map_err(|e| fail(why_not_writable(dir).unwrap_or_else(|| describe(&e))))?;
        let store = Self {
            conn,
            path,
            sinks: Vec::new(),
            replica: None,
        };
        store.init().map_err(|e| store.error(&e))?;
        Ok(store)
    }

    /// A new database in `dir` holding exactly `rows` (table, row as JSON), read from the shared
    /// table when this replica takes the lead: what the database held before is gone, and every
    /// change from here on is shipped through `ship` before it commits.
    pub fn restore<'a>(
        dir: &Path,
        rows: impl IntoIterator<Item = (&'a str, &'a str)>,
        ship: Ship,
    ) -> Result<Self, StoreError> {
        let path = dir.join(DB_FILE);
        for file in [DB_FILE, "flowwatch.db-wal", "flowwatch.db-shm"] {
            match std::fs::remove_file(dir.join(file)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StoreError {
                        path,
                        message: format!("cannot replace it: {}", crate::model::io_error_text(&e)),
                    });
                }
                _ => {}
            }
        }
        let mut store = Self::open(dir)?;
        let tx = store
            .conn
            .unchecked_transaction()
            .map_err(|e| store.error(&e))?;
        replication::restore(&tx, rows).map_err(|message| StoreError {
            path: path.clone(),
            message: format!("the shared table: {message}"),
        })?;
        tx.commit().map_err(|e| store.error(&e))?;
        replication::install_triggers(&store.conn).map_err(|e| store.error(&e))?;
        store.replica = Some(Replica::new(ship));
        Ok(store)
    }

    /// Keeps the rows a write outside a batch changed, for the next shipment.
    fn hold_changes(&mut self) -> Result<(), StoreError> {
        let Some(replica) = &mut self.replica else {
            return Ok(());
        };
        let changes = replication::take_changes(&self.conn).map_err(|e| StoreError {
            path: self.path.clone(),
            message: describe(&e),
        })?;
        replica.hold(changes);
        Ok(())
    }

    /// Ships what writes outside a batch changed, and the outbox rows every sink has written
    /// since: the replica's own commit, between the engine's.
    pub fn sync_replica(&mut self) -> Result<(), StoreError> {
        self.hold_changes()?;
        let Some(replica) = &mut self.replica else {
            return Ok(());
        };
        replica
            .ship(&self.conn, Vec::new())
            .map_err(|message| StoreError {
                path: self.path.clone(),
                message: format!("the shared table did not take the changes: {message}"),
            })
    }

    /// Checks an existing database without changing it (for `check-config`). A missing one is
    /// fine: it is created at start-up.
    pub fn check(dir: &Path) -> Result<(), StoreError> {
        let path = dir.join(DB_FILE);
        if !path.exists() {
            return Ok(());
        }
        let conn =
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| {
                StoreError {
                    path: path.clone(),
                    message: describe(&e),
                }
            })?;
        quick_check(&conn)
            .and_then(|()| refuse_foreign(&conn))
            .and_then(|()| check_schema_version(&conn))
            .map_err(|e| StoreError {
                path,
                message: describe(&e),
            })
    }

    /// The connection, for the tests of the replication of its row changes.
    #[cfg(test)]
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    fn error(&self, e: &rusqlite::Error) -> StoreError {
        StoreError {
            path: self.path.clone(),
            message: describe(e),
        }
    }

    fn init(&self) -> rusqlite::Result<()> {
        quick_check(&self.conn)?;
        refuse_foreign(&self.conn)?;
        self.conn.pragma_update(None, "journal_mode", "WAL")?;
        tune(&self.conn)?;
        self.conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS executions (
                 instance_id TEXT NOT NULL,
                 flow_name TEXT NOT NULL,
                 execution_id TEXT NOT NULL,
                 status TEXT NOT NULL,
                 observation TEXT,
                 rejected TEXT,
                 PRIMARY KEY (instance_id, flow_name, execution_id)
             );
             CREATE TABLE IF NOT EXISTS outbox (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 event TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS flows (
                 instance_id TEXT NOT NULL,
                 flow_name TEXT NOT NULL,
                 first_seen REAL NOT NULL,
                 PRIMARY KEY (instance_id, flow_name)
             );
             CREATE TABLE IF NOT EXISTS discovered (
                 instance_id TEXT NOT NULL,
                 flow_name TEXT NOT NULL,
                 execution_id TEXT NOT NULL,
                 discovered_at REAL NOT NULL,
                 start_time REAL,
                 PRIMARY KEY (instance_id, flow_name, execution_id)
             );
             CREATE TABLE IF NOT EXISTS transition_counts (
                 instance_id TEXT NOT NULL,
                 flow_name TEXT NOT NULL,
                 to_status TEXT NOT NULL,
                 count INTEGER NOT NULL,
                 PRIMARY KEY (instance_id, flow_name, to_status)
             );
             CREATE TABLE IF NOT EXISTS flow_durations (
                 instance_id TEXT NOT NULL,
                 flow_name TEXT NOT NULL,
                 execution_id TEXT NOT NULL,
                 ended REAL NOT NULL,
                 seconds REAL NOT NULL,
                 PRIMARY KEY (instance_id, flow_name, execution_id)
             );
             -- A flow's most recent runs, newest first, without sorting: what trimming reads.
             CREATE INDEX IF NOT EXISTS flow_durations_by_end
                 ON flow_durations (instance_id, flow_name, ended);
             CREATE TABLE IF NOT EXISTS flow_outcomes (
                 instance_id TEXT NOT NULL,
                 flow_name TEXT NOT NULL,
                 last_success REAL,
                 last_failure REAL,
                 PRIMARY KEY (instance_id, flow_name)
             );
             CREATE TABLE IF NOT EXISTS outbox_sinks (
                 seq INTEGER NOT NULL,
                 sink TEXT NOT NULL,
                 PRIMARY KEY (seq, sink)
             );
             CREATE TABLE IF NOT EXISTS overdue (
                 instance_id TEXT NOT NULL,
                 flow_name TEXT NOT NULL,
                 execution_id TEXT NOT NULL,
                 PRIMARY KEY (instance_id, flow_name, execution_id)
             );",
        )?;
        check_schema_version(&self.conn)?;
        self.conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?1)",
            [SCHEMA_VERSION],
        )?;
        // Marks the file as flowwatch's; databases written before the mark get it here.
        self.conn
            .pragma_update(None, "application_id", APPLICATION_ID)?;
        self.backfill_flow_history()?;
        self.forget_unbelievable_times(crate::model::unix_seconds(SystemTime::now()))?;
        self.lift_local_rejections()
    }

    /// Forgets flow history an earlier version took from times outside the believable window
    /// ([`crate::model::believable`]): a last success in the year 9999 would keep the freshness
    /// alert quiet for good, and a duration of 1e19 s would never leave the kept history.
    fn forget_unbelievable_times(&self, now: f64) -> rusqlite::Result<()> {
        // A clock before 2000 cannot judge what lies ahead of it: nothing is forgotten then.
        if !crate::model::clock_is_set(now) {
            return Ok(());
        }
        let (earliest, latest) = (
            crate::model::EARLIEST_BELIEVED,
            now + crate::model::AHEAD_BELIEVED,
        );
        let tx = self.conn.unchecked_transaction()?;
        let mut forgotten = tx.execute(
            "DELETE FROM flow_durations WHERE NOT (ended BETWEEN ?1 AND ?2)
                 OR NOT (seconds > 0 AND seconds <= ended - ?1)",
            params![earliest, latest],
        )?;
        for column in ["last_success", "last_failure"] {
            forgotten += tx.execute(
                &format!(
                    "UPDATE flow_outcomes SET {column} = NULL
                     WHERE {column} IS NOT NULL AND NOT ({column} BETWEEN ?1 AND ?2)"
                ),
                params![earliest, latest],
            )?;
        }
        tx.commit()?;
        if forgotten > 0 {
            tracing::warn!(values = forgotten, path = %self.path.display(),
                "forgot flow history taken from times before 2000 or more than a day ahead of this clock");
        }
        Ok(())
    }

    /// Lifts rejections that were never the API's. Earlier versions took a request the SDK could
    /// not build (an invalid region, say) for a ValidationException, and stopped polling the
    /// execution for good. The SDK words each such failure "failed to construct request", which
    /// no answer of the API carries, so those executions are polled again.
    fn lift_local_rejections(&self) -> rusqlite::Result<()> {
        let lifted = self.conn.execute(
            "UPDATE executions SET rejected = NULL WHERE rejected LIKE 'failed to construct request%'",
            [],
        )?;
        if lifted > 0 {
            tracing::warn!(executions = lifted, path = %self.path.display(),
                "polling again executions an earlier version rejected for a request it could not build");
        }
        Ok(())
    }

    /// A value of the `meta` table.
    fn meta(&self, key: &str) -> rusqlite::Result<Option<i64>> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
    }

    /// Fills the flow tables from the terminal executions a store written before flow health
    /// holds, once, so an upgrade keeps what was known of each flow's runs.
    fn backfill_flow_history(&self) -> rusqlite::Result<()> {
        if self.meta("flow_history_backfilled")?.is_some() {
            return Ok(());
        }
        self.conn.execute_batch(
            "BEGIN;
             INSERT OR IGNORE INTO flow_durations (instance_id, flow_name, execution_id, ended, seconds)
               SELECT instance_id, flow_name, execution_id, json_extract(observation, '$.end_time'),
                      json_extract(observation, '$.end_time') - json_extract(observation, '$.start_time')
               FROM executions
               WHERE status IN ('SUCCEEDED', 'FAILED')
                 AND json_extract(observation, '$.end_time') > json_extract(observation, '$.start_time');
             INSERT OR IGNORE INTO flow_outcomes (instance_id, flow_name, last_success, last_failure)
               SELECT instance_id, flow_name,
                      max(CASE status WHEN 'SUCCEEDED' THEN json_extract(observation, '$.end_time') END),
                      max(CASE status WHEN 'FAILED' THEN json_extract(observation, '$.end_time') END)
               FROM executions WHERE status IN ('SUCCEEDED', 'FAILED')
               GROUP BY instance_id, flow_name;
             INSERT INTO meta (key, value) VALUES ('flow_history_backfilled', 1);
             COMMIT;",
        )
    }

    /// What the store knows of every flow's finished runs: at most `history` durations each.
    pub fn flow_history(
        &self,
        history: usize,
    ) -> Result<BTreeMap<FlowKey, FlowHistory>, StoreError> {
        let mut flows: BTreeMap<FlowKey, FlowHistory> = BTreeMap::new();
        let flow = |r: &rusqlite::Row<'_>| -> rusqlite::Result<FlowKey> {
            Ok(FlowKey {
                instance_id: r.get(0)?,
                flow_name: r.get(1)?,
            })
        };
        let mut stmt = self
            .conn
            .prepare(
                "SELECT instance_id, flow_name, ended, seconds FROM (
                     SELECT *, row_number() OVER (PARTITION BY instance_id, flow_name ORDER BY ended DESC) AS n
                     FROM flow_durations)
                 WHERE n <= ?1 ORDER BY instance_id, flow_name, ended",
            )
            .map_err(|e| self.error(&e))?;
        let rows = stmt
            .query_map([history as i64], |r| Ok((flow(r)?, r.get(2)?, r.get(3)?)))
            .and_then(|rows| rows.collect::<Result<Vec<(FlowKey, f64, f64)>, _>>())
            .map_err(|e| self.error(&e))?;
        for (key, ended, seconds) in rows {
            flows
                .entry(key)
                .or_default()
                .durations
                .push((ended, seconds));
        }
        let mut stmt = self
            .conn
            .prepare("SELECT instance_id, flow_name, last_success, last_failure FROM flow_outcomes")
            .map_err(|e| self.error(&e))?;
        let rows = stmt
            .query_map([], |r| Ok((flow(r)?, r.get(2)?, r.get(3)?)))
            .and_then(|rows| rows.collect::<Result<Vec<(FlowKey, Option<f64>, Option<f64>)>, _>>())
            .map_err(|e| self.error(&e))?;
        for (key, last_success, last_failure) in rows {
            let flow = flows.entry(key).or_default();
            flow.last_success = last_success;
            flow.last_failure = last_failure;
        }
        Ok(flows)
    }

    /// What the store knows of one execution.
    pub fn execution(&self, key: &ExecutionKey) -> Result<Option<Restored>, StoreError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT status, observation, rejected, EXISTS (SELECT 1 FROM overdue o
                     WHERE o.instance_id = ?1 AND o.flow_name = ?2 AND o.execution_id = ?3)
                 FROM executions
                 WHERE instance_id = ?1 AND flow_name = ?2 AND execution_id = ?3",
            )
            .and_then(|mut stmt| {
                stmt.query_row(
                    params![key.instance_id, key.flow_name, key.execution_id],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Option<String>>(1)?,
                            r.get::<_, Option<String>>(2)?,
                            r.get::<_, bool>(3)?,
                        ))
                    },
                )
                .optional()
            })
            .map_err(|e| self.error(&e))?;
        let Some((status, observation, rejected, overdue)) = row else {
            return Ok(None);
        };
        let status = Status::parse(&status).ok_or_else(|| StoreError {
            path: self.path.clone(),
            message: format!("unknown status {status:?} stored for {key}"),
        })?;
        // An unreadable observation loses only the API's extra fields, not the status.
        let observation = observation.and_then(|text| serde_json::from_str(&text).ok());
        Ok(Some(Restored {
            status,
            observation,
            rejected,
            overdue,
        }))
    }

    /// When flowwatch first watched `flow`, recording `now` if this is the first time.
    pub fn flow_first_seen(
        &mut self,
        flow: &FlowKey,
        now: SystemTime,
    ) -> Result<SystemTime, StoreError> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO flows (instance_id, flow_name, first_seen) VALUES (?1, ?2, ?3)",
                params![flow.instance_id, flow.flow_name, crate::model::unix_seconds(now)],
            )
            .map_err(|e| self.error(&e))?;
        self.hold_changes()?;
        let first_seen: f64 = self
            .conn
            .query_row(
                "SELECT first_seen FROM flows WHERE instance_id = ?1 AND flow_name = ?2",
                params![flow.instance_id, flow.flow_name],
                |r| r.get(0),
            )
            .map_err(|e| self.error(&e))?;
        // A damaged value falls back to now rather than panicking.
        Ok(Duration::try_from_secs_f64(first_seen)
            .ok()
            .and_then(|d| UNIX_EPOCH.checked_add(d))
            .unwrap_or(now))
    }

    /// Forgets when a flow was first watched (its `[[flow]]` entry was removed): watching it
    /// again starts from then. What was discovered stays known, so nothing is announced twice.
    pub fn forget_flow(&mut self, flow: &FlowKey) -> Result<(), StoreError> {
        self.conn
            .execute(
                "DELETE FROM flows WHERE instance_id = ?1 AND flow_name = ?2",
                params![flow.instance_id, flow.flow_name],
            )
            .map_err(|e| self.error(&e))?;
        self.hold_changes()
    }

    /// Whether flowwatch has seen this execution: it has a state, or it was discovered.
    pub fn is_known(&self, key: &ExecutionKey) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM discovered
                     WHERE instance_id = ?1 AND flow_name = ?2 AND execution_id = ?3)
                  OR EXISTS (SELECT 1 FROM executions
                     WHERE instance_id = ?1 AND flow_name = ?2 AND execution_id = ?3)",
            )
            .and_then(|mut stmt| {
                stmt.query_row(
                    params![key.instance_id, key.flow_name, key.execution_id],
                    |r| r.get(0),
                )
            })
            .map_err(|e| self.error(&e))
    }

    /// Records a discovered execution, so it is never announced again and comes back to the
    /// watch set after a restart.
    pub fn record_discovered(
        &mut self,
        key: &ExecutionKey,
        now: SystemTime,
        start_time: Option<f64>,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO discovered (instance_id, flow_name, execution_id, discovered_at, start_time)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key.instance_id, key.flow_name, key.execution_id, crate::model::unix_seconds(now), start_time],
            )
            .map_err(|e| self.error(&e))?;
        self.hold_changes()
    }

    /// The discovered executions of `flow` that belong in the watch set after a restart: those
    /// not finished, and those that finished at or after `ended_after` (unix seconds), whose
    /// series are still retained. Their state is read when each joins the watch set.
    pub fn discovered_to_restore(
        &self,
        flow: &FlowKey,
        ended_after: f64,
    ) -> Result<Vec<ExecutionKey>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT d.execution_id FROM discovered d LEFT JOIN executions e
                   ON e.instance_id = d.instance_id AND e.flow_name = d.flow_name AND e.execution_id = d.execution_id
                 WHERE d.instance_id = ?1 AND d.flow_name = ?2
                   AND (e.status IS NULL
                        OR (e.status NOT IN ('SUCCEEDED', 'FAILED', 'NOT_FOUND') AND e.rejected IS NULL)
                        OR coalesce(json_extract(e.observation, '$.end_time'), d.discovered_at) >= ?3)
                 ORDER BY d.discovered_at",
            )
            .map_err(|e| self.error(&e))?;
        let ids: Vec<String> = stmt
            .query_map(
                params![flow.instance_id, flow.flow_name, ended_after],
                |r| r.get(0),
            )
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.error(&e))?;
        Ok(ids
            .into_iter()
            .map(|execution_id| {
                ExecutionKey::from_checked(
                    flow.instance_id.as_str(),
                    flow.flow_name.as_str(),
                    execution_id,
                )
            })
            .collect())
    }

    /// Deletes what is kept of discovered executions of `flow` that started before
    /// `started_before` (unix seconds) and are finished: the API no longer lists them (it keeps a
    /// year), so they cannot be announced again. Returns how many went.
    pub fn prune_discovered(
        &mut self,
        flow: &FlowKey,
        started_before: f64,
    ) -> Result<usize, StoreError> {
        let path = self.path.clone();
        let run = |conn: &mut Connection| -> rusqlite::Result<usize> {
            let tx = conn.transaction()?;
            tx.execute(
                "DELETE FROM executions WHERE (instance_id, flow_name, execution_id) IN (
                     SELECT instance_id, flow_name, execution_id FROM discovered
                     WHERE instance_id = ?1 AND flow_name = ?2 AND start_time < ?3)
                   AND status IN ('SUCCEEDED', 'FAILED', 'NOT_FOUND')",
                params![flow.instance_id, flow.flow_name, started_before],
            )?;
            let n = tx.execute(
                "DELETE FROM discovered WHERE instance_id = ?1 AND flow_name = ?2 AND start_time < ?3
                   AND NOT EXISTS (SELECT 1 FROM executions e WHERE e.instance_id = discovered.instance_id
                       AND e.flow_name = discovered.flow_name AND e.execution_id = discovered.execution_id)",
                params![flow.instance_id, flow.flow_name, started_before],
            )?;
            tx.execute(
                "DELETE FROM overdue WHERE instance_id = ?1 AND flow_name = ?2
                   AND NOT EXISTS (SELECT 1 FROM executions e WHERE e.instance_id = overdue.instance_id
                       AND e.flow_name = overdue.flow_name AND e.execution_id = overdue.execution_id)",
                params![flow.instance_id, flow.flow_name],
            )?;
            tx.commit()?;
            Ok(n)
        };
        let pruned = run(&mut self.conn).map_err(|e| StoreError {
            path,
            message: describe(&e),
        })?;
        self.hold_changes()?;
        Ok(pruned)
    }

    /// Every stored transition count: (instance_id, flow_name, to_status, count).
    pub fn transition_counts(&self) -> Result<Vec<(String, String, String, u64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT instance_id, flow_name, to_status, count FROM transition_counts")
            .map_err(|e| self.error(&e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get::<_, i64>(3)?.max(0) as u64,
                ))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.error(&e))?;
        Ok(rows)
    }

    /// How many events wait in the outbox for at least one sink.
    pub fn undelivered(&self) -> Result<usize, StoreError> {
        self.conn
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get::<_, i64>(0))
            .map(|n| n.max(0) as usize)
            .map_err(|e| self.error(&e))
    }

    /// Sets the enabled event sinks. Events left in the outbox by a flowwatch that kept one place
    /// for all sinks are pending for each; places of sinks no longer enabled go.
    pub fn set_sinks(&mut self, sinks: &[&'static str]) -> Result<(), StoreError> {
        self.sinks = sinks.to_vec();
        let path = self.path.clone();
        let run = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for sink in sinks {
                tx.execute(
                    "INSERT OR IGNORE INTO outbox_sinks (seq, sink)
                     SELECT seq, ?1 FROM outbox o
                     WHERE NOT EXISTS (SELECT 1 FROM outbox_sinks s WHERE s.seq = o.seq)",
                    [sink],
                )?;
            }
            let enabled: Vec<String> = sinks.iter().map(|s| format!("'{s}'")).collect();
            tx.execute_batch(&format!(
                "DELETE FROM outbox_sinks WHERE sink NOT IN ({});
                 DELETE FROM outbox WHERE NOT EXISTS (SELECT 1 FROM outbox_sinks s WHERE s.seq = outbox.seq);",
                if enabled.is_empty() { "''".to_string() } else { enabled.join(", ") }
            ))?;
            tx.commit()
        };
        run(&mut self.conn).map_err(|e| StoreError {
            path,
            message: describe(&e),
        })?;
        self.hold_changes()
    }

    /// Starts a batch: everything written through it commits in one transaction, or not at all.
    pub fn batch(&mut self) -> Result<Batch<'_>, StoreError> {
        let path = self.path.as_path();
        let tx = self.conn.transaction().map_err(|e| StoreError {
            path: path.to_path_buf(),
            message: describe(&e),
        })?;
        Ok(Batch {
            tx,
            path,
            sinks: &self.sinks,
            replica: self.replica.as_mut(),
        })
    }
}

/// Writes of one engine turn, committed together: an execution's new state and its event can
/// never be kept one without the other, and a turn of many transitions costs one commit.
pub struct Batch<'a> {
    tx: rusqlite::Transaction<'a>,
    path: &'a Path,
    sinks: &'a [&'static str],
    replica: Option<&'a mut Replica>,
}

impl Batch<'_> {
    fn error(&self, e: &rusqlite::Error) -> StoreError {
        StoreError {
            path: self.path.to_path_buf(),
            message: describe(e),
        }
    }

    /// An execution's new status and the API's answer that showed it, its transition counted,
    /// and its event put in the outbox. Returns the event's outbox sequence number.
    pub fn transition(
        &self,
        key: &ExecutionKey,
        to: Status,
        observation: Option<&Observation>,
        event: &str,
    ) -> Result<i64, StoreError> {
        self.upsert(key, to, observation, None)?;
        self.tx
            .prepare_cached(
                "INSERT INTO transition_counts (instance_id, flow_name, to_status, count) VALUES (?1, ?2, ?3, 1)
                 ON CONFLICT (instance_id, flow_name, to_status) DO UPDATE SET count = count + 1",
            )
            .and_then(|mut s| s.execute(params![key.instance_id, key.flow_name, to.as_str()]))
            .map_err(|e| self.error(&e))?;
        self.outbox(event)
    }

    /// An execution the API rejected as invalid (ValidationException), with its event.
    pub fn rejection(
        &self,
        key: &ExecutionKey,
        status: Status,
        observation: Option<&Observation>,
        message: &str,
        event: &str,
    ) -> Result<i64, StoreError> {
        self.upsert(key, status, observation, Some(message))?;
        self.outbox(event)
    }

    /// A run of `key`'s flow ended with `status` at `ended` (unix seconds), after `seconds` when
    /// its start is known: the flow's last success or failure moves, and the duration joins its
    /// `history` most recent ones.
    pub fn finished(
        &self,
        key: &ExecutionKey,
        status: Status,
        ended: f64,
        seconds: Option<f64>,
        history: usize,
    ) -> Result<Option<FlowOutcomes>, StoreError> {
        let outcome = match status {
            Status::Succeeded => {
                "INSERT INTO flow_outcomes (instance_id, flow_name, last_success) VALUES (?1, ?2, ?3)
                 ON CONFLICT (instance_id, flow_name)
                 DO UPDATE SET last_success = max(coalesce(last_success, excluded.last_success), excluded.last_success)
                 RETURNING last_success, last_failure"
            }
            Status::Failed => {
                "INSERT INTO flow_outcomes (instance_id, flow_name, last_failure) VALUES (?1, ?2, ?3)
                 ON CONFLICT (instance_id, flow_name)
                 DO UPDATE SET last_failure = max(coalesce(last_failure, excluded.last_failure), excluded.last_failure)
                 RETURNING last_success, last_failure"
            }
            _ => return Ok(None),
        };
        let run = || -> rusqlite::Result<FlowOutcomes> {
            let outcomes = self.tx.prepare_cached(outcome)?.query_row(
                params![key.instance_id, key.flow_name, ended],
                |row| {
                    Ok(FlowOutcomes {
                        last_success: row.get(0)?,
                        last_failure: row.get(1)?,
                    })
                },
            )?;
            let Some(seconds) = seconds.filter(|s| s.is_finite() && *s > 0.0) else {
                return Ok(outcomes);
            };
            self.tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO flow_durations (instance_id, flow_name, execution_id, ended, seconds)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![key.instance_id, key.flow_name, key.execution_id, ended, seconds])?;
            self.tx
                .prepare_cached(
                    "DELETE FROM flow_durations WHERE instance_id = ?1 AND flow_name = ?2
                       AND ended < (SELECT ended FROM flow_durations WHERE instance_id = ?1 AND flow_name = ?2
                                    ORDER BY ended DESC LIMIT 1 OFFSET ?3 - 1)",
                )?
                .execute(params![key.instance_id, key.flow_name, history as i64])?;
            Ok(outcomes)
        };
        run().map(Some).map_err(|e| self.error(&e))
    }

    /// A running execution became overdue: marked, so its event is never emitted twice.
    pub fn overdue(&self, key: &ExecutionKey, event: &str) -> Result<i64, StoreError> {
        self.tx
            .prepare_cached(
                "INSERT OR IGNORE INTO overdue (instance_id, flow_name, execution_id) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![key.instance_id, key.flow_name, key.execution_id]))
            .map_err(|e| self.error(&e))?;
        self.outbox(event)
    }

    /// A newer answer about an execution whose status did not change (its times did).
    pub fn observation(
        &self,
        key: &ExecutionKey,
        status: Status,
        observation: &Observation,
    ) -> Result<(), StoreError> {
        self.upsert(key, status, Some(observation), None)
    }

    /// The rows this batch changed so far, for a replica (see `output::replication`).
    #[cfg(test)]
    pub fn changes(&self) -> Result<Vec<replication::RowChange>, StoreError> {
        replication::take_changes(&self.tx).map_err(|e| self.error(&e))
    }

    /// Commits, after shipping the batch to the replica when there is one: what the replica
    /// refused is not committed here either.
    pub fn commit(self) -> Result<(), StoreError> {
        let Batch {
            tx, path, replica, ..
        } = self;
        let fail = |message: String| StoreError {
            path: path.to_path_buf(),
            message,
        };
        if let Some(replica) = replica {
            let changes = replication::take_changes(&tx).map_err(|e| fail(describe(&e)))?;
            replica.ship(&tx, changes).map_err(|message| {
                fail(format!(
                    "the shared table did not take the commit: {message}"
                ))
            })?;
        }
        tx.commit().map_err(|e| fail(describe(&e)))
    }

    fn upsert(
        &self,
        key: &ExecutionKey,
        status: Status,
        observation: Option<&Observation>,
        rejected: Option<&str>,
    ) -> Result<(), StoreError> {
        let observation = observation.and_then(|o| serde_json::to_string(o).ok());
        self.tx
            .prepare_cached(
                "INSERT INTO executions (instance_id, flow_name, execution_id, status, observation, rejected)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (instance_id, flow_name, execution_id)
                 DO UPDATE SET status = excluded.status, observation = excluded.observation, rejected = excluded.rejected",
            )
            .and_then(|mut s| {
                s.execute(params![
                    key.instance_id,
                    key.flow_name,
                    key.execution_id,
                    status.as_str(),
                    observation,
                    rejected
                ])
            })
            .map(|_| ())
            .map_err(|e| self.error(&e))
    }

    /// Puts an event in the outbox, pending for every enabled sink.
    fn outbox(&self, event: &str) -> Result<i64, StoreError> {
        self.tx
            .prepare_cached("INSERT INTO outbox (event) VALUES (?1)")
            .and_then(|mut s| s.execute([event]))
            .map_err(|e| self.error(&e))?;
        let seq = self.tx.last_insert_rowid();
        for sink in self.sinks {
            self.tx
                .prepare_cached("INSERT INTO outbox_sinks (seq, sink) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(params![seq, sink]))
                .map_err(|e| self.error(&e))?;
        }
        Ok(seq)
    }
}

/// The file-system reason a directory cannot take a new file, if there is one: SQLite's own
/// "unable to open database file" does not say.
pub fn why_not_writable(dir: &Path) -> Option<String> {
    let probe = dir.join(".flowwatch-write-probe");
    match std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem => Some(format!(
            "the state directory {} is on a read-only file system",
            dir.display()
        )),
        Err(e) => Some(format!(
            "cannot write in the state directory {}: {}",
            dir.display(),
            crate::model::io_error_text(&e)
        )),
    }
}

/// Refuses another application's SQLite file, so that a wrong `state.path` never adds
/// flowwatch's tables to it. A flowwatch database carries its application id, or (written
/// before the mark) its `meta` table; a new one has no tables at all.
fn refuse_foreign(conn: &Connection) -> rusqlite::Result<()> {
    let id: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let ours = id == APPLICATION_ID
        || (id == 0 && (tables.is_empty() || tables.iter().any(|t| t == "meta")));
    if ours {
        return Ok(());
    }
    Err(rusqlite::Error::InvalidParameterName(format!(
        "the file is another application's SQLite database (application id {id}, tables {}), \
         not flowwatch's: point state.path at a directory of flowwatch's own",
        crate::model::bounded(&tables.join(", "), 200)
    )))
}

/// Refuses a schema version other than this flowwatch's: a newer one, or a damaged value. A
/// database without one yet (new) passes.
fn check_schema_version(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::types::Value;
    let has_meta: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
        [],
        |r| r.get(0),
    )?;
    if !has_meta {
        return Ok(());
    }
    let value: Option<Value> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let problem = match value {
        Some(Value::Integer(SCHEMA_VERSION)) => return Ok(()),
        Some(Value::Integer(v)) => format!(
            "schema version {v} is not the {SCHEMA_VERSION} this flowwatch understands (written by a newer flowwatch?)"
        ),
        Some(Value::Text(text)) => format!(
            "schema version {:?} is not a number: the database is damaged; move it aside to start afresh",
            crate::model::bounded(&text, 40)
        ),
        Some(Value::Null) | None => return Ok(()),
        Some(_) => "the schema version is not a number: the database is damaged; move it aside to start afresh".to_string(),
    };
    Err(rusqlite::Error::InvalidParameterName(problem))
}

fn quick_check(conn: &Connection) -> rusqlite::Result<()> {
    let result: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if result == "ok" {
        Ok(())
    } else {
        Err(rusqlite::Error::InvalidParameterName(format!(
            "the database is damaged ({result})"
        )))
    }
}

/// SQLite's errors in words, with what to do about the common ones.
pub(crate) fn describe(e: &rusqlite::Error) -> String {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => {
            "the file is not a flowwatch state database (corrupted?): move it aside to start afresh"
                .to_string()
        }
        Some(ErrorCode::DatabaseCorrupt) => {
            "the database is corrupted: move it aside to start afresh".to_string()
        }
        Some(ErrorCode::ReadOnly) => "the state directory or database is read-only".to_string(),
        Some(ErrorCode::DiskFull) => "the disk is full".to_string(),
        Some(ErrorCode::CannotOpen) => {
            "cannot open the database file (missing directory or permission denied?)".to_string()
        }
        Some(ErrorCode::PermissionDenied) => "permission denied".to_string(),
        _ => match e {
            rusqlite::Error::InvalidParameterName(message) => message.clone(),
            other => other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ApiStatus;
    use crate::output::outbox::Delivery;

    fn key() -> ExecutionKey {
        ExecutionKey::new(
            "8850c54e-e187-4fa7-89d4-6370f165174d",
            "daily-orders",
            "a1b2c3d4-0000-4000-8000-000000000001",
        )
        .expect("valid key")
    }

    #[test]
    fn a_commit_survives_reopening_with_its_event_pending_until_delivered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let observation = Observation {
            status: ApiStatus::Failed,
            source_info: None,
            message: Some("boom".into()),
            start_time: Some(1.5),
            end_time: None,
            diagnostic_reports_root_s3_uri: None,
        };
        let seq = {
            let mut store = Store::open(dir.path()).expect("open");
            store.set_sinks(&["stdout", "file"]).expect("sinks");
            let batch = store.batch().expect("batch");
            let seq = batch
                .transition(
                    &key(),
                    Status::Failed,
                    Some(&observation),
                    &serde_json::json!({"id": "x"}).to_string(),
                )
                .expect("transition");
            batch.commit().expect("commit");
            seq
        };
        let store = Store::open(dir.path()).expect("reopen");
        let restored = store.execution(&key()).expect("read").expect("known");
        assert_eq!(restored.status, Status::Failed);
        assert_eq!(restored.observation, Some(observation));
        assert_eq!(
            store.transition_counts().expect("counts"),
            vec![(
                key().instance_id.to_string(),
                key().flow_name.to_string(),
                "FAILED".to_string(),
                1
            )]
        );
        // Each sink has its own place: written by one, the event waits for the other.
        let (mut stdout, mut file) = (
            Delivery::open(dir.path(), "stdout").expect("stdout"),
            Delivery::open(dir.path(), "file").expect("file"),
        );
        let event = (seq, serde_json::json!({"id": "x"}).to_string());
        assert_eq!(stdout.pending(0).expect("pending"), vec![event.clone()]);
        stdout.forget_through(seq).expect("forget");
        assert!(stdout.pending(0).expect("pending").is_empty());
        assert_eq!(file.pending(0).expect("pending"), vec![event]);
        file.forget_through(seq).expect("forget");
        let rows: i64 = store
            .conn
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 0, "gone once every sink wrote it");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_with_advice() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(DB_FILE), "this is not sqlite ".repeat(100)).expect("write");
        let error = Store::open(dir.path()).expect_err("corrupt");
        assert!(
            error.to_string().contains("not a flowwatch state database"),
            "{error}"
        );
        assert!(Store::check(dir.path()).is_err());
    }

    #[test]
    fn another_application_s_database_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        Connection::open(&path)
            .and_then(|c| c.execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY);"))
            .expect("a foreign database");
        let error = Store::open(dir.path()).expect_err("foreign");
        assert!(
            error
                .message
                .contains("another application's SQLite database"),
            "{error}"
        );
        assert!(error.message.contains("invoices"), "{error}");
        assert!(Store::check(dir.path()).is_err());
        let tables: i64 = Connection::open(&path)
            .and_then(|c| c.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0)))
            .expect("count");
        assert_eq!(tables, 1, "no table of flowwatch's was added");
    }

    #[test]
    fn a_schema_version_that_is_newer_or_not_a_number_is_refused_by_open_and_check() {
        for (value, expected) in [
            ("999", "schema version 999 is not the 1"),
            ("'abc'", "schema version \"abc\" is not a number"),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            drop(Store::open(dir.path()).expect("new"));
            Connection::open(dir.path().join(DB_FILE))
                .and_then(|c| {
                    c.execute_batch(&format!(
                        "UPDATE meta SET value = {value} WHERE key = 'schema_version'"
                    ))
                })
                .expect("as a newer or damaged flowwatch left it");
            let open = Store::open(dir.path()).expect_err("refused");
            assert!(open.message.contains(expected), "{open}");
            let check = Store::check(dir.path()).expect_err("refused");
            assert!(check.message.contains(expected), "{check}");
        }
    }

    #[test]
    fn a_flow_keeps_its_most_recent_durations_and_latest_outcomes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("open");
        let run = |n: usize| {
            ExecutionKey::from_checked(
                key().instance_id.clone(),
                key().flow_name.clone(),
                format!("e{n}"),
            )
        };
        let batch = store.batch().expect("batch");
        for n in 0..5 {
            let ended = 1000.0 + n as f64 * 100.0;
            batch
                .finished(&run(n), Status::Succeeded, ended, Some(10.0 + n as f64), 3)
                .expect("finished");
        }
        batch
            .finished(&run(9), Status::Failed, 900.0, None, 3)
            .expect("no duration");
        batch
            .finished(&run(2), Status::Succeeded, 1200.0, Some(12.0), 3)
            .expect("repeat");
        batch.commit().expect("commit");
        let flows = store.flow_history(3).expect("read");
        let history = &flows[&FlowKey::of(&key())];
        assert_eq!(
            history.durations,
            vec![(1200.0, 12.0), (1300.0, 13.0), (1400.0, 14.0)]
        );
        assert_eq!(history.last_success, Some(1400.0));
        assert_eq!(history.last_failure, Some(900.0));
        assert_eq!(
            store.flow_history(1).expect("read")[&FlowKey::of(&key())].durations,
            vec![(1400.0, 14.0)]
        );
    }

    #[test]
    fn an_overdue_mark_comes_back_with_its_execution() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = Store::open(dir.path()).expect("open");
            let batch = store.batch().expect("batch");
            batch
                .observation(&key(), Status::InProgress, &running())
                .expect("row");
            batch.overdue(&key(), "{}").expect("overdue");
            batch.commit().expect("commit");
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert!(
            store
                .execution(&key())
                .expect("read")
                .expect("known")
                .overdue
        );
    }

    #[test]
    fn a_store_from_before_flow_health_is_backfilled_from_its_terminal_executions() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = Store::open(dir.path()).expect("open");
            let batch = store.batch().expect("batch");
            // Times after 2000: older ones are forgotten at open as unbelievable.
            let done = Observation {
                status: ApiStatus::Succeeded,
                start_time: Some(1_700_001_000.0),
                end_time: Some(1_700_001_060.0),
                ..running()
            };
            batch
                .transition(&key(), Status::Succeeded, Some(&done), "{}")
                .expect("transition");
            batch.commit().expect("commit");
            store
                .conn
                .execute_batch(
                    "DELETE FROM flow_durations; DELETE FROM flow_outcomes;
                 DELETE FROM meta WHERE key = 'flow_history_backfilled';",
                )
                .expect("as an older flowwatch left it");
        }
        let store = Store::open(dir.path()).expect("reopen");
        let flows = store.flow_history(20).expect("read");
        let history = &flows[&FlowKey::of(&key())];
        assert_eq!(history.durations, vec![(1_700_001_060.0, 60.0)]);
        assert_eq!(history.last_success, Some(1_700_001_060.0));
    }

    #[test]
    fn a_rejection_for_a_request_that_could_not_be_built_is_lifted_and_the_api_s_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let other = ExecutionKey::from_checked(
            key().instance_id.clone(),
            key().flow_name.clone(),
            "a1b2c3d4-0000-4000-8000-000000000002".to_string(),
        );
        {
            let mut store = Store::open(dir.path()).expect("open");
            let batch = store.batch().expect("batch");
            // As an earlier version stored a region it could not build a request for.
            batch
                .rejection(&key(), Status::Unknown, None,
                    "failed to construct request: endpoint params could not be built: invalid value for field: `region`", "{}")
                .expect("local rejection");
            batch
                .rejection(
                    &other,
                    Status::Unknown,
                    None,
                    "1 validation error detected",
                    "{}",
                )
                .expect("the API's rejection");
            batch.commit().expect("commit");
        }
        let store = Store::open(dir.path()).expect("reopen");
        let lifted = store.execution(&key()).expect("read").expect("known");
        assert_eq!((lifted.status, lifted.rejected), (Status::Unknown, None));
        let kept = store.execution(&other).expect("read").expect("known");
        assert_eq!(
            kept.rejected.as_deref(),
            Some("1 validation error detected")
        );
    }

    #[test]
    fn flow_history_from_unbelievable_times_is_forgotten_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = |n: usize| {
            ExecutionKey::from_checked(
                key().instance_id.clone(),
                key().flow_name.clone(),
                format!("e{n}"),
            )
        };
        {
            let mut store = Store::open(dir.path()).expect("open");
            let batch = store.batch().expect("batch");
            batch
                .finished(&run(1), Status::Succeeded, 1_700_000_600.0, Some(600.0), 20)
                .expect("a real run");
            // As an earlier version took an end time of 1e300 (saturated by the SDK).
            batch
                .finished(&run(2), Status::Succeeded, 9.2e18, Some(1e19), 20)
                .expect("a hostile run");
            batch
                .finished(&run(3), Status::Failed, 253_402_300_799.0, None, 20)
                .expect("year 9999");
            batch.commit().expect("commit");
        }
        let store = Store::open(dir.path()).expect("reopen");
        store
            .forget_unbelievable_times(3_600.0)
            .expect("a clock left at 1970");
        assert_eq!(
            store.flow_history(20).expect("read")[&FlowKey::of(&key())]
                .durations
                .len(),
            1,
            "a wrong clock forgets nothing more"
        );
        let history = &store.flow_history(20).expect("read")[&FlowKey::of(&key())];
        assert_eq!(history.durations, vec![(1_700_000_600.0, 600.0)]);
        assert_eq!(history.last_success, None, "9.2e18 is forgotten");
        assert_eq!(history.last_failure, None);
    }

    fn running() -> Observation {
        Observation {
            status: ApiStatus::InProgress,
            source_info: None,
            message: None,
            start_time: Some(1000.0),
            end_time: None,
            diagnostic_reports_root_s3_uri: None,
        }
    }
}
