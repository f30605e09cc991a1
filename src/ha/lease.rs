//! The leader lease: one item in the state table (`pk` = `sk` = `"lease"`) with the leader's
//! replica id (`holder`), its `term` and a heartbeat count (`beat`), taken and renewed only by
//! conditional writes.
//!
//! No two clocks are compared. The leader renews every third of `lease_duration` and counts
//! its lease from the moment it *sent* the last renewal that succeeded; it stops acting a
//! margin before that lease could end by its own clock. A standby takes the lease only after
//! it has seen the same `beat` for `lease_duration` and the margin, by its own clock, counted
//! from its first read of that beat, which came after the leader sent it. So the two overlap
//! only if the clocks' rates differ by more than the margin over one lease (two margins of 10 %
//! of the lease, or 1 s). Every write of the leader's state carries a condition on `holder`
//! and `term` ([`Fence`]): a leader that lost its lease, however late it notices, commits
//! nothing.

use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, TransactWriteItem};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until, timeout_at};

use crate::api::dynamodb::{Failure, PARTITION_KEY, SORT_KEY, StateTable};
use crate::model::Operation;

/// The lease item's `pk` and `sk`.
pub const LEASE_KEY: &str = "lease";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// This replica's name in the lease (the host name by default).
    pub replica_id: String,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
}

impl LeaseSettings {
    /// How often the leader renews: a third of the lease.
    pub fn renew_every(&self) -> Duration {
        self.duration / 3
    }

    /// The safety margin on each side: a tenth of the lease, at least 1 s, at most a third.
    pub fn margin(&self) -> Duration {
        (self.duration / 10)
            .max(Duration::from_secs(1))
            .min(self.duration / 3)
    }

    /// Until when a leader whose last successful renewal was sent at `sent` may act.
    pub fn leading_until(&self, sent: Instant) -> Instant {
        sent + self.duration - self.margin()
    }
}

/// The lease item as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `""` when the last leader released it.
    pub holder: String,
    pub term: u64,
    pub beat: u64,
}

/// What the leader's writes carry: they commit only while `holder` holds the lease in `term`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub holder: String,
    pub term: u64,
}

/// Who this replica is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    Standby,
    /// Leading in `fence.term` until `until` by this host's clock, unless renewed before.
    Leader {
        fence: Fence,
        until: Instant,
        since: SystemTime,
    },
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        matches!(self, Leadership::Leader { .. })
    }
}

/// What a standby has seen of the lease: the item as last read, and since when unchanged.
#[derive(Debug, Default)]
pub struct Watch {
    seen: Option<(Record, Instant)>,
}

/// What a standby does after reading the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Wait,
    /// There is no lease item: create it, as the first leader.
    Create,
    /// The lease is released, or has not changed for a whole lease: take it over.
    TakeOver(Record),
}

impl Watch {
    /// What to do on reading `read` at `now`.
    pub fn observe(&mut self, read: Option<Record>, now: Instant, lease: &LeaseSettings) -> Next {
        let Some(record) = read else {
            return Next::Create;
        };
        if record.holder.is_empty() {
            return Next::TakeOver(record);
        }
        match &self.seen {
            Some((seen, since)) if *seen == record => {
                if now.saturating_duration_since(*since) >= lease.duration + lease.margin() {
                    Next::TakeOver(record)
                } else {
                    Next::Wait
                }
            }
            _ => {
                self.seen = Some((record, now));
                Next::Wait
            }
        }
    }
}

/// The lease's side of one replica: reads, takes, renews and releases the item, and tells
/// everyone who listens whether this replica leads.
pub struct Lease {
    table: StateTable,
    settings: LeaseSettings,
    leadership: watch::Sender<Leadership>,
    rng: fastrand::Rng,
}

impl Lease {
    pub fn new(table: StateTable, settings: LeaseSettings) -> (Self, watch::Receiver<Leadership>) {
        let (leadership, listen) = watch::channel(Leadership::Standby);
        let lease = Self {
            table,
            settings,
            leadership,
            rng: fastrand::Rng::new(),
        };
        (lease, listen)
    }

    /// Stands by and leads in turn until `stop` resolves; a leader then releases the lease, so
    /// a standby takes over at its next read rather than after a whole lease.
    pub async fn run(mut self, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        loop {
            let (fence, sent) = tokio::select! {
                () = &mut stop => return,
                acquired = self.stand_by() => acquired,
            };
            tokio::select! {
                () = &mut stop => return self.release(&fence).await,
                () = self.lead(fence.clone(), sent) => {}
            }
        }
    }

    /// Reads the lease at jittered intervals until this replica holds it; returns its fence and
    /// when the winning write was sent.
    async fn stand_by(&mut self) -> (Fence, Instant) {
        let mut watch = Watch::default();
        loop {
            let now = Instant::now();
            let next = match self.read().await {
                Ok(read) => watch.observe(read, now, &self.settings),
                Err(e) => {
                    tracing::debug!(error = ?e, "the lease could not be read");
                    Next::Wait
                }
            };
            let sent = Instant::now();
            let won = match &next {
                Next::Wait => None,
                Next::Create => Some((self.create().await, 1)),
                Next::TakeOver(record) => Some((self.take_over(record).await, record.term + 1)),
            };
            match won {
                Some((Ok(()), term)) => {
                    let fence = Fence {
                        holder: self.settings.replica_id.clone(),
                        term,
                    };
                    return (fence, sent);
                }
                Some((Err(Failure::Conflict), _)) => watch = Watch::default(),
                Some((Err(Failure::Other(e)), _)) => {
                    tracing::warn!(error = %e, "the lease could not be taken");
                }
                None => {}
            }
            let every = self.settings.renew_every();
            sleep(every.mul_f64(0.5 + 0.5 * self.rng.f64())).await;
        }
    }

    /// Leads while renewals succeed; returns when the lease is lost, or when it could end
    /// before a renewal gets through.
    async fn lead(&mut self, fence: Fence, mut sent: Instant) {
        tracing::info!(term = fence.term, replica = %fence.holder, "this replica leads");
        self.publish_leader(&fence, sent);
        let mut next = sent + self.settings.renew_every();
        loop {
            let until = self.settings.leading_until(sent);
            sleep_until(next.min(until)).await;
            if Instant::now() >= until {
                return self.step_down("the lease could not be renewed in time");
            }
            let attempt = Instant::now();
            match timeout_at(until, self.renew(&fence)).await {
                Ok(Ok(())) => {
                    sent = attempt;
                    next = sent + self.settings.renew_every();
                    self.publish_leader(&fence, sent);
                }
                Ok(Err(Failure::Conflict)) => {
                    return self.step_down("another replica holds the lease");
                }
                Ok(Err(Failure::Other(e))) => {
                    tracing::warn!(error = %e, "the lease was not renewed: trying again");
                    let soon = self.settings.renew_every() / 4;
                    next = Instant::now() + soon.mul_f64(0.5 + 0.5 * self.rng.f64());
                }
                Err(_) => return self.step_down("the lease could not be renewed in time"),
            }
        }
    }

    fn publish_leader(&self, fence: &Fence, sent: Instant) {
        let until = self.settings.leading_until(sent);
        self.leadership.send_modify(|now| match now {
            Leadership::Leader {
                fence: held,
                until: held_until,
                ..
            } if held == fence => *held_until = until,
            _ => {
                *now = Leadership::Leader {
                    fence: fence.clone(),
                    until,
                    since: SystemTime::now(),
                }
            }
        });
    }

    fn step_down(&self, why: &str) {
        tracing::warn!(reason = why, "this replica stops leading");
        self.leadership.send_replace(Leadership::Standby);
    }

    async fn read(&self) -> Result<Option<Record>, Failure> {
        let answer = self
            .table
            .client()
            .get_item()
            .table_name(self.table.name())
            .set_key(Some(lease_key()))
            .consistent_read(true)
            .send()
            .await;
        let answer = self.table.judge(Operation::GetItem, answer)?;
        answer.item.map(|item| record_of(&item)).transpose()
    }

    async fn create(&self) -> Result<(), Failure> {
        let mut item = lease_key();
        item.insert("holder".into(), s(&self.settings.replica_id));
        item.insert("term".into(), n(1));
        item.insert("beat".into(), n(0));
        let created = self
            .table
            .client()
            .put_item()
            .table_name(self.table.name())
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        self.table.judge(Operation::PutItem, created).map(drop)
    }

    async fn take_over(&self, from: &Record) -> Result<(), Failure> {
        let taken = self
            .table
            .client()
            .update_item()
            .table_name(self.table.name())
            .set_key(Some(lease_key()))
            .update_expression("SET holder = :me, term = :next, beat = :zero")
            .condition_expression("term = :term AND beat = :beat")
            .expression_attribute_values(":me", s(&self.settings.replica_id))
            .expression_attribute_values(":next", n(from.term + 1))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":term", n(from.term))
            .expression_attribute_values(":beat", n(from.beat))
            .send()
            .await;
        self.table.judge(Operation::UpdateItem, taken).map(drop)
    }

    async fn renew(&self, fence: &Fence) -> Result<(), Failure> {
        self.update_held(fence, "SET beat = beat + :one", ":one", n(1))
            .await
    }

    /// Stops leading and gives the lease up, while it still holds: `holder` empties, and the
    /// next standby to read it takes it.
    async fn release(&self, fence: &Fence) {
        let until = match &*self.leadership.borrow() {
            Leadership::Leader { until, .. } => *until,
            Leadership::Standby => return,
        };
        self.step_down("shutting down");
        let release = self.update_held(fence, "SET holder = :nobody", ":nobody", s(""));
        if let Ok(Err(Failure::Other(e))) = timeout_at(until, release).await {
            tracing::warn!(error = %e, "the lease was not released: a standby takes over when it ends");
        }
    }

    async fn update_held(
        &self,
        fence: &Fence,
        update: &str,
        name: &str,
        value: AttributeValue,
    ) -> Result<(), Failure> {
        let updated = self
            .table
            .client()
            .update_item()
            .table_name(self.table.name())
            .set_key(Some(lease_key()))
            .update_expression(update)
            .condition_expression("holder = :me AND term = :term")
            .expression_attribute_values(":me", s(&fence.holder))
            .expression_attribute_values(":term", n(fence.term))
            .expression_attribute_values(name, value)
            .send()
            .await;
        self.table.judge(Operation::UpdateItem, updated).map(drop)
    }
}

/// The transaction item that makes a write of the leader's state fenced: the transaction
/// commits only while `fence` holds the lease.
pub fn fence_check(table: &str, fence: &Fence) -> Result<TransactWriteItem, Failure> {
    let check = ConditionCheck::builder()
        .table_name(table)
        .set_key(Some(lease_key()))
        .condition_expression("holder = :me AND term = :term")
        .expression_attribute_values(":me", s(&fence.holder))
        .expression_attribute_values(":term", n(fence.term))
        .build()
        .map_err(|e| Failure::Other(e.to_string()))?;
    Ok(TransactWriteItem::builder().condition_check(check).build())
}

type Item = std::collections::HashMap<String, AttributeValue>;

fn lease_key() -> Item {
    Item::from([
        (PARTITION_KEY.to_string(), s(LEASE_KEY)),
        (SORT_KEY.to_string(), s(LEASE_KEY)),
    ])
}

fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_string())
}

fn n(number: u64) -> AttributeValue {
    AttributeValue::N(number.to_string())
}

/// The lease item's fields; an item someone else wrote is reported, never trusted.
fn record_of(item: &Item) -> Result<Record, Failure> {
    let text = |name: &str| match item.get(name) {
        Some(AttributeValue::S(text)) => Ok(text.clone()),
        _ => Err(Failure::Other(format!(
            "the lease item has no string {name:?}: it was not written by flowwatch"
        ))),
    };
    let number = |name: &str| match item.get(name) {
        Some(AttributeValue::N(number)) => number.parse::<u64>().map_err(|_| {
            Failure::Other(format!(
                "the lease item's {name:?} is not a count: {number:?}"
            ))
        }),
        _ => Err(Failure::Other(format!(
            "the lease item has no number {name:?}: it was not written by flowwatch"
        ))),
    };
    Ok(Record {
        holder: text("holder")?,
        term: number("term")?,
        beat: number("beat")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> LeaseSettings {
        LeaseSettings {
            replica_id: "b".into(),
            duration: Duration::from_secs(15),
        }
    }

    fn held(beat: u64) -> Option<Record> {
        Some(Record {
            holder: "a".into(),
            term: 4,
            beat,
        })
    }

    #[test]
    fn the_margin_is_a_tenth_of_the_lease_at_least_a_second_at_most_a_third() {
        let margin = |secs: f64| {
            LeaseSettings {
                duration: Duration::from_secs_f64(secs),
                ..lease()
            }
            .margin()
        };
        assert_eq!(margin(15.0), Duration::from_millis(1500));
        assert_eq!(margin(5.0), Duration::from_secs(1));
        assert_eq!(margin(2.0), Duration::from_secs(2) / 3);
        let start = Instant::now();
        assert_eq!(
            lease().leading_until(start),
            start + Duration::from_millis(13_500)
        );
    }

    #[test]
    fn a_standby_takes_over_only_a_lease_and_a_margin_after_it_first_saw_the_beat() {
        let (lease, start) = (lease(), Instant::now());
        let at = |secs: f64| start + Duration::from_secs_f64(secs);
        let mut watch = Watch::default();
        assert_eq!(watch.observe(held(7), at(0.0), &lease), Next::Wait);
        assert_eq!(watch.observe(held(7), at(16.4), &lease), Next::Wait);
        assert_eq!(
            watch.observe(held(8), at(16.6), &lease),
            Next::Wait,
            "renewed: counting starts again"
        );
        assert_eq!(watch.observe(held(8), at(33.0), &lease), Next::Wait);
        assert_eq!(
            watch.observe(held(8), at(33.1), &lease),
            Next::TakeOver(Record {
                holder: "a".into(),
                term: 4,
                beat: 8
            })
        );
    }

    #[test]
    fn no_lease_item_is_created_and_a_released_one_is_taken_at_once() {
        let (lease, now) = (lease(), Instant::now());
        assert_eq!(Watch::default().observe(None, now, &lease), Next::Create);
        let released = Record {
            holder: String::new(),
            term: 4,
            beat: 9,
        };
        assert_eq!(
            Watch::default().observe(Some(released.clone()), now, &lease),
            Next::TakeOver(released)
        );
    }

    #[test]
    fn a_leader_stops_acting_before_a_standby_can_take_over() {
        // The leader sends its last renewal at 0; the standby reads that beat at the earliest
        // right after, and takes over no sooner than a lease and a margin later.
        let lease = lease();
        let sent = Instant::now();
        let leader_stops = lease.leading_until(sent);
        let standby_takes = sent + lease.duration + lease.margin();
        assert_eq!(
            standby_takes - leader_stops,
            lease.margin() * 2,
            "two margins apart"
        );
    }

    #[test]
    fn an_item_flowwatch_did_not_write_is_reported_not_trusted() {
        let mut item = lease_key();
        item.insert("holder".into(), s("a"));
        item.insert("term".into(), s("four"));
        item.insert("beat".into(), n(1));
        assert!(matches!(record_of(&item), Err(Failure::Other(m)) if m.contains("\"term\"")));
        item.insert("term".into(), n(4));
        assert_eq!(
            record_of(&item),
            Ok(Record {
                holder: "a".into(),
                term: 4,
                beat: 1
            })
        );
    }
}
