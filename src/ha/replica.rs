//! The state database's replica in the shared table: one item per mirrored row (`pk` = the
//! table's name, `sk` = the row's key as a JSON array, `row` = the row as a JSON object; outbox
//! rows also carry `expires_at`, the table's time to live). The leader ships each batch of row
//! changes as puts and deletes in `TransactWriteItems`, 99 to a transaction beside the lease's
//! condition check; a new leader reads every row back, a page at a time.

use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem};

use crate::api::dynamodb::{Failure, PARTITION_KEY, SORT_KEY, StateTable};
use crate::ha::lease::{Fence, fence_check};
use crate::model::Operation;
use crate::output::replication::{MIRRORED, RowChange};

/// Writes per transaction: DynamoDB takes 100 actions, one of which is the lease's check.
pub const WRITES_PER_TRANSACTION: usize = 99;
/// How long an outbox row outlives its last write in the table: a leader that never marks its
/// events published leaves them there no longer than this.
pub const OUTBOX_TTL: Duration = Duration::from_secs(14 * 24 * 3600);

/// The attribute that holds a row.
const ROW: &str = "row";

/// Ships `changes` under `fence`, calling `charged` with each transaction's write units as it
/// commits. A transaction the lease's check refused is [`Failure::Conflict`]: this replica no
/// longer leads. Transactions before a failed one stay committed; every change is a whole row,
/// so shipping them again is harmless.
pub async fn ship(
    table: &StateTable,
    fence: &Fence,
    changes: &[RowChange],
    charged: impl Fn(u64),
) -> Result<(), Failure> {
    let now = SystemTime::now();
    for chunk in changes.chunks(WRITES_PER_TRANSACTION) {
        let mut request = table
            .client()
            .transact_write_items()
            .transact_items(fence_check(table.name(), fence)?);
        for change in chunk {
            request = request.transact_items(write_of(table.name(), change, now)?);
        }
        let sent = request.send().await;
        table.judge(Operation::TransactWriteItems, sent)?;
        charged(CHECK_UNITS + chunk.iter().map(write_units).sum::<u64>());
    }
    Ok(())
}

/// The lease's condition check in a transaction: its item is far under 1 KB.
const CHECK_UNITS: u64 = 2;

/// What DynamoDB charges a change in a transaction: 2 write units per KB of the item (its
/// attributes' names and values), at least one KB. A delete is charged by the item it removes,
/// which this replica does not read back: counted as one KB.
pub fn write_units(change: &RowChange) -> u64 {
    let key = PARTITION_KEY.len() + change.table.len() + SORT_KEY.len() + change.key.len();
    let size = match &change.row {
        Some(row) => {
            let ttl = if change.table == "outbox" {
                "expires_at".len() + 11
            } else {
                0
            };
            key + ROW.len() + row.len() + ttl
        }
        None => 0,
    };
    2 * (size as u64).div_ceil(1024).max(1)
}

/// Every mirrored row the table holds, as (table, row), read a page at a time with strongly
/// consistent reads.
pub async fn load(table: &StateTable) -> Result<Vec<(&'static str, String)>, Failure> {
    let mut rows = Vec::new();
    for mirrored in MIRRORED {
        let mut start = None;
        loop {
            let page = table
                .client()
                .query()
                .table_name(table.name())
                .key_condition_expression("pk = :table")
                .expression_attribute_values(":table", AttributeValue::S(mirrored.table.into()))
                .projection_expression("#row")
                .expression_attribute_names("#row", ROW)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await;
            let page = table.judge(Operation::Query, page)?;
            for item in page.items() {
                match item.get(ROW) {
                    Some(AttributeValue::S(row)) => rows.push((mirrored.table, row.clone())),
                    _ => {
                        return Err(Failure::Other(format!(
                            "an item of {} has no string {ROW:?}: it was not written by flowwatch",
                            mirrored.table
                        )));
                    }
                }
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
    }
    Ok(rows)
}

fn write_of(
    table: &str,
    change: &RowChange,
    now: SystemTime,
) -> Result<TransactWriteItem, Failure> {
    let key = |name: &str, value: &str| (name.to_string(), AttributeValue::S(value.to_string()));
    let built = |e: aws_sdk_dynamodb::error::BuildError| Failure::Other(e.to_string());
    let Some(row) = &change.row else {
        let delete = Delete::builder()
            .table_name(table)
            .set_key(Some(
                [key(PARTITION_KEY, change.table), key(SORT_KEY, &change.key)].into(),
            ))
            .build()
            .map_err(built)?;
        return Ok(TransactWriteItem::builder().delete(delete).build());
    };
    let mut put = Put::builder()
        .table_name(table)
        .item(PARTITION_KEY, AttributeValue::S(change.table.into()))
        .item(SORT_KEY, AttributeValue::S(change.key.clone()))
        .item(ROW, AttributeValue::S(row.clone()));
    if change.table == "outbox" {
        let expires = now + OUTBOX_TTL;
        let seconds = expires
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        put = put.item("expires_at", AttributeValue::N(seconds.to_string()));
    }
    Ok(TransactWriteItem::builder()
        .put(put.build().map_err(built)?)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(table: &'static str, row: Option<usize>) -> RowChange {
        RowChange {
            table,
            key: r#"["a"]"#.into(),
            row: row.map(|n| "x".repeat(n)),
        }
    }

    #[test]
    fn a_transactional_write_costs_two_units_a_kilobyte_of_item_at_least_one() {
        assert_eq!(write_units(&change("executions", Some(300))), 2);
        assert_eq!(
            write_units(&change("executions", Some(1010))),
            4,
            "past 1 KB with its key"
        );
        assert_eq!(write_units(&change("outbox", Some(2100))), 6);
        assert_eq!(write_units(&change("outbox", None)), 2);
    }
}
