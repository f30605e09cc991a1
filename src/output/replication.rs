//! The state database's row changes, for a replica of it kept elsewhere (the DynamoDB table that
//! replicas share). Temporary triggers on the store's own connection note the key of every row
//! an insert, update or delete touches; [`take_changes`] turns those keys into the rows as they
//! are now (or their absence), and [`restore`] writes such rows into an empty database.
//!
//! A replica is therefore a set of rows keyed by (table, key): applying each change as a put or a
//! delete, in any order within one batch, leaves it equal to the database. Two tables are not
//! mirrored: `meta` (each database's own schema version and upgrades) and the outbox's per-sink
//! marks (`outbox_sinks`): each replica's sinks are its own, and an event still in the outbox
//! after a restore is pending for every sink. Rows the sinks' own connections
//! delete from the outbox are seen by [`outbox_gone`], not by the triggers.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, params_from_iter};

/// A mirrored table and the columns of its primary key.
#[derive(Debug, Clone, Copy)]
pub struct Mirrored {
    pub table: &'static str,
    pub key: &'static [&'static str],
}

/// Every table a replica holds, with its key; the order restores foreign-free, so any will do.
pub const MIRRORED: &[Mirrored] = &[
    Mirrored {
        table: "executions",
        key: &["instance_id", "flow_name", "execution_id"],
    },
    Mirrored {
        table: "outbox",
        key: &["seq"],
    },
    Mirrored {
        table: "flows",
        key: &["instance_id", "flow_name"],
    },
    Mirrored {
        table: "discovered",
        key: &["instance_id", "flow_name", "execution_id"],
    },
    Mirrored {
        table: "transition_counts",
        key: &["instance_id", "flow_name", "to_status"],
    },
    Mirrored {
        table: "flow_durations",
        key: &["instance_id", "flow_name", "execution_id"],
    },
    Mirrored {
        table: "flow_outcomes",
        key: &["instance_id", "flow_name"],
    },
    Mirrored {
        table: "overdue",
        key: &["instance_id", "flow_name", "execution_id"],
    },
];

/// The table the triggers write the touched keys to.
const CHANGES: &str = "temp.replication_changes";

/// One changed row: its table, its key (a JSON array of the key's values), and the row as it is
/// now (a JSON object of every column), `None` when it was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChange {
    pub table: &'static str,
    pub key: String,
    pub row: Option<String>,
}

/// Notes from now on the key of every row of a mirrored table that `conn` changes.
pub fn install_triggers(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS replication_changes (
             tbl TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (tbl, key)) WITHOUT ROWID;",
    )?;
    for mirrored in MIRRORED {
        let table = mirrored.table;
        let key = |row: &str| {
            let values: Vec<String> = mirrored.key.iter().map(|c| format!("{row}.{c}")).collect();
            format!("json_array({})", values.join(", "))
        };
        // A trigger's body may not name a database (the temporary table is found first), and
        // its OR IGNORE would yield to the outer statement's conflict clause: hence NOT EXISTS.
        let note = |row: &str| {
            let key = key(row);
            format!(
                "INSERT INTO replication_changes (tbl, key) SELECT '{table}', {key}
                 WHERE NOT EXISTS (SELECT 1 FROM replication_changes
                                   WHERE tbl = '{table}' AND key = {key});"
            )
        };
        conn.execute_batch(&format!(
            "CREATE TEMP TRIGGER IF NOT EXISTS replicate_{table}_insert AFTER INSERT ON main.{table}
                 BEGIN {new} END;
             CREATE TEMP TRIGGER IF NOT EXISTS replicate_{table}_update AFTER UPDATE ON main.{table}
                 BEGIN {old} {new} END;
             CREATE TEMP TRIGGER IF NOT EXISTS replicate_{table}_delete AFTER DELETE ON main.{table}
                 BEGIN {old} END;",
            new = note("NEW"),
            old = note("OLD"),
        ))?;
    }
    Ok(())
}

/// Every row changed since the last call, as it is now, and forgets them. Within a transaction,
/// the rows are those of the transaction so far.
pub fn take_changes(conn: &Connection) -> rusqlite::Result<Vec<RowChange>> {
    let touched: Vec<(String, String)> = conn
        .prepare_cached(&format!("SELECT tbl, key FROM {CHANGES} ORDER BY tbl, key"))?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut changes = Vec::with_capacity(touched.len());
    for (table, key) in touched {
        let Some(mirrored) = MIRRORED.iter().find(|m| m.table == table) else {
            continue;
        };
        changes.push(RowChange {
            table: mirrored.table,
            row: row_now(conn, mirrored, &key)?,
            key,
        });
    }
    conn.execute(&format!("DELETE FROM {CHANGES}"), [])?;
    Ok(changes)
}

/// The row with `key` as a JSON object of every column, if it exists.
fn row_now(conn: &Connection, mirrored: &Mirrored, key: &str) -> rusqlite::Result<Option<String>> {
    let matches: Vec<String> = mirrored
        .key
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} = json_extract(?1, '$[{i}]')"))
        .collect();
    let sql = format!(
        "SELECT {} FROM main.{} WHERE {}",
        row_as_json(conn, mirrored.table)?,
        mirrored.table,
        matches.join(" AND ")
    );
    use rusqlite::OptionalExtension;
    conn.prepare_cached(&sql)?
        .query_row([key], |r| r.get(0))
        .optional()
}

/// The SQL of a row of `table` as a JSON object of every column.
fn row_as_json(conn: &Connection, table: &str) -> rusqlite::Result<String> {
    let object: Vec<String> = columns_of(conn, table)?
        .iter()
        .map(|c| format!("'{c}', {c}"))
        .collect();
    Ok(format!("json_object({})", object.join(", ")))
}

/// Every mirrored row of the database, as JSON objects, in order, by table: what a replica
/// holds of it (an operator's check, and the tests' comparison of two databases).
pub fn mirrored_rows(
    conn: &Connection,
) -> rusqlite::Result<std::collections::BTreeMap<&'static str, Vec<String>>> {
    let mut tables = std::collections::BTreeMap::new();
    for mirrored in MIRRORED {
        let sql = format!(
            "SELECT {} FROM main.{} ORDER BY 1",
            row_as_json(conn, mirrored.table)?,
            mirrored.table
        );
        let rows = conn
            .prepare(&sql)?
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        tables.insert(mirrored.table, rows);
    }
    Ok(tables)
}

/// The columns of `table`, in order.
pub fn columns_of(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    conn.prepare_cached("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?
        .query_map([table], |r| r.get(0))?
        .collect()
}

/// The columns of `table`'s primary key, in key order.
pub fn key_of(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    conn.prepare_cached("SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk")?
        .query_map([table], |r| r.get(0))?
        .collect()
}

/// Which of the outbox sequence numbers `seqs` are no longer in the outbox (every sink wrote
/// them): the replica can let them go.
pub fn outbox_gone(conn: &Connection, seqs: &[i64]) -> rusqlite::Result<Vec<i64>> {
    let mut gone = Vec::new();
    let mut stmt = conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM outbox WHERE seq = ?1)")?;
    for seq in seqs {
        if !stmt.query_row([seq], |r| r.get::<_, bool>(0))? {
            gone.push(*seq);
        }
    }
    Ok(gone)
}

/// Writes rows a replica holds into `conn`'s tables (which the caller has emptied): each is
/// `table` and a JSON object of its columns. A row of a table not mirrored, or one that is not
/// an object of plain values, is an error naming it: the replica was not written by flowwatch.
pub fn restore<'a>(
    conn: &Connection,
    rows: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<usize, String> {
    let mut count = 0;
    for (table, row) in rows {
        let Some(mirrored) = MIRRORED.iter().find(|m| m.table == table) else {
            return Err(format!("a row of an unknown table {table:?}"));
        };
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(row)
            .map_err(|e| format!("a row of {table} is not a JSON object: {e}"))?;
        let known = columns_of(conn, mirrored.table).map_err(|e| e.to_string())?;
        let mut columns = Vec::with_capacity(object.len());
        let mut values = Vec::with_capacity(object.len());
        for (column, value) in &object {
            if !known.contains(column) {
                return Err(format!("a row of {table} has an unknown column {column:?}"));
            }
            columns.push(column.as_str());
            values.push(sql_value(value).ok_or_else(|| {
                format!("a row of {table} has a value that is not plain in {column:?}")
            })?);
        }
        let marks = vec!["?"; columns.len()].join(", ");
        let sql = format!(
            "INSERT OR REPLACE INTO main.{} ({}) VALUES ({marks})",
            mirrored.table,
            columns.join(", ")
        );
        conn.prepare_cached(&sql)
            .and_then(|mut s| s.execute(params_from_iter(values)))
            .map_err(|e| format!("a row of {table}: {e}"))?;
        count += 1;
    }
    Ok(count)
}

fn sql_value(value: &serde_json::Value) -> Option<SqlValue> {
    use serde_json::Value;
    Some(match value {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => SqlValue::Real(n.as_f64()?),
        },
        Value::String(s) => SqlValue::Text(s.clone()),
        Value::Array(_) | Value::Object(_) => return None,
    })
}

/// Ships a set of row changes to the replica, all or nothing as far as the caller knows: an
/// error leaves the caller to send them again. The HA layer provides it (`ha::replica`).
pub type Ship = Box<dyn FnMut(&[RowChange]) -> Result<(), String> + Send>;

/// What the store keeps for its replica: changes not shipped yet (from writes outside a batch),
/// and the outbox rows shipped, so their leaving the outbox is shipped too.
pub struct Replica {
    ship: Ship,
    pending: std::collections::BTreeMap<(&'static str, String), Option<String>>,
    outbox: std::collections::BTreeSet<i64>,
}

impl Replica {
    pub fn new(ship: Ship) -> Self {
        Self {
            ship,
            pending: Default::default(),
            outbox: Default::default(),
        }
    }

    /// Keeps `changes` for the next shipment; a later change of a row replaces an earlier one.
    pub fn hold(&mut self, changes: Vec<RowChange>) {
        for change in changes {
            self.pending.insert((change.table, change.key), change.row);
        }
    }

    /// Ships what is held, `batch` (the rows of a transaction not committed yet), and the outbox
    /// rows gone from `conn` since they were shipped. On failure what was held stays held and
    /// `batch` is dropped: its transaction rolls back, and its rows as committed are noted again.
    pub fn ship(&mut self, conn: &Connection, batch: Vec<RowChange>) -> Result<(), String> {
        let mut all = self.pending.clone();
        for change in batch {
            all.insert((change.table, change.key), change.row);
        }
        let shipped: Vec<i64> = self.outbox.iter().copied().collect();
        for seq in outbox_gone(conn, &shipped).map_err(|e| e.to_string())? {
            all.insert(("outbox", format!("[{seq}]")), None);
        }
        if all.is_empty() {
            return Ok(());
        }
        let changes: Vec<RowChange> = all
            .into_iter()
            .map(|((table, key), row)| RowChange { table, key, row })
            .collect();
        (self.ship)(&changes)?;
        for change in changes.iter().filter(|c| c.table == "outbox") {
            let Ok(seq) = change.key.trim_matches(['[', ']']).parse::<i64>() else {
                continue;
            };
            if change.row.is_some() {
                self.outbox.insert(seq);
            } else {
                self.outbox.remove(&seq);
            }
        }
        self.pending.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::model::{ExecutionKey, FlowKey, Status};
    use crate::output::store::{DB_FILE, Store};

    fn key(n: u32) -> ExecutionKey {
        ExecutionKey::new(
            "8850c54e-e187-4fa7-89d4-6370f165174d",
            "orders",
            format!("a1b2c3d4-0000-4000-8000-{n:012}"),
        )
        .expect("a valid key")
    }

    fn contents(conn: &Connection) -> BTreeMap<&'static str, Vec<String>> {
        mirrored_rows(conn).expect("rows")
    }

    #[test]
    fn each_mirrored_key_is_its_table_s_primary_key() {
        let dir = tempfile::tempdir().expect("dir");
        drop(Store::open(dir.path()).expect("store"));
        let conn = Connection::open(dir.path().join(DB_FILE)).expect("db");
        let tables: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .expect("tables")
            .query_map([], |r| r.get(0))
            .expect("tables")
            .collect::<Result<_, _>>()
            .expect("tables");
        for table in tables {
            match MIRRORED.iter().find(|m| m.table == table) {
                Some(m) => assert_eq!(key_of(&conn, &table).expect("key"), m.key, "{table}"),
                None => assert!(
                    ["meta", "outbox_sinks"].contains(&table.as_str()),
                    "{table} is neither mirrored nor named as local"
                ),
            }
        }
    }

    #[test]
    fn a_replica_fed_the_changes_restores_to_the_same_database() {
        let dir = tempfile::tempdir().expect("dir");
        let mut store = Store::open(dir.path()).expect("store");
        store.set_sinks(&["stdout"]).expect("sinks");
        let conn = Connection::open(dir.path().join(DB_FILE)).expect("db");
        install_triggers(store.connection()).expect("triggers");
        let mut replica: BTreeMap<(&'static str, String), String> = BTreeMap::new();
        let mut apply = |changes: Vec<RowChange>| {
            for change in changes {
                match change.row {
                    Some(row) => replica.insert((change.table, change.key), row),
                    None => replica.remove(&(change.table, change.key)),
                };
            }
        };

        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let flow = FlowKey {
            instance_id: key(1).instance_id.to_string(),
            flow_name: key(1).flow_name.to_string(),
        };
        store.flow_first_seen(&flow, now).expect("first seen");
        store
            .record_discovered(&key(2), now, Some(1_799_999_000.0))
            .expect("discovered");
        for n in 1..=3 {
            let batch = store.batch().expect("batch");
            batch
                .transition(&key(n), Status::InProgress, None, &format!("started {n}"))
                .expect("transition");
            batch.commit().expect("commit");
        }
        let batch = store.batch().expect("batch");
        batch
            .transition(&key(1), Status::Succeeded, None, "ended 1")
            .expect("transition");
        batch
            .finished(&key(1), Status::Succeeded, 1_800_000_100.0, Some(100.0), 20)
            .expect("finished");
        batch.overdue(&key(3), "overdue 3").expect("overdue");
        apply(batch.changes().expect("changes"));
        batch.commit().expect("commit");
        store.forget_flow(&flow).expect("forget");
        apply(take_changes(store.connection()).expect("changes"));
        assert!(take_changes(store.connection()).expect("none").is_empty());

        let fresh = tempfile::tempdir().expect("dir");
        drop(Store::open(fresh.path()).expect("store"));
        let restored = Connection::open(fresh.path().join(DB_FILE)).expect("db");
        let rows: Vec<(&str, &str)> = replica
            .iter()
            .map(|((table, _), row)| (*table, row.as_str()))
            .collect();
        assert_eq!(restore(&restored, rows).expect("restore"), replica.len());
        let (restored, original) = (contents(&restored), contents(&conn));
        for m in MIRRORED {
            assert_eq!(restored[m.table], original[m.table], "{}", m.table);
        }
        assert_eq!(contents(&conn)["outbox"].len(), 5, "every event, pending");
    }

    #[test]
    fn rows_flowwatch_did_not_write_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("dir");
        drop(Store::open(dir.path()).expect("store"));
        let conn = Connection::open(dir.path().join(DB_FILE)).expect("db");
        let refused = |table: &str, row: &str| restore(&conn, [(table, row)]).expect_err("refused");
        assert!(refused("invoices", "{}").contains("\"invoices\""));
        assert!(refused("meta", "{}").contains("\"meta\""), "not mirrored");
        assert!(refused("flows", "[1]").contains("not a JSON object"));
        assert!(refused("flows", r#"{"flow_name": "a", "colour": 1}"#).contains("\"colour\""));
        assert!(
            refused("flows", r#"{"flow_name": "a", "first_seen": [1]}"#).contains("\"first_seen\"")
        );
    }
}
