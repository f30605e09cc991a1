//! A due-time queue: items ordered by when they are due, ties broken by insertion order. The
//! engine keeps two, one of requests (polls and List pages) and one of series to drop. Whoever
//! queues an item keeps the [`Slot`] it got, so moving or removing it needs no index beside the
//! queue.

use std::collections::BTreeMap;

use tokio::time::Instant;

/// An item's place in a [`DueQueue`].
pub type Slot = (Instant, u64);

#[derive(Debug)]
pub struct DueQueue<T> {
    items: BTreeMap<Slot, T>,
    seq: u64,
}

impl<T> Default for DueQueue<T> {
    fn default() -> Self {
        Self {
            items: BTreeMap::new(),
            seq: 0,
        }
    }
}

impl<T> DueQueue<T> {
    /// Queues `item` at `at`; returns its slot.
    pub fn push(&mut self, at: Instant, item: T) -> Slot {
        self.seq += 1;
        let slot = (at, self.seq);
        self.items.insert(slot, item);
        slot
    }

    pub fn remove(&mut self, slot: &Slot) -> Option<T> {
        self.items.remove(slot)
    }

    /// When the first item is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.items.first_key_value().map(|(slot, _)| slot.0)
    }

    /// Takes the first item, due or not.
    pub fn pop_first(&mut self) -> Option<T> {
        self.items.pop_first().map(|(_, item)| item)
    }

    /// Takes the first item if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        match self.next_due() {
            Some(at) if at <= now => self.pop_first(),
            _ => None,
        }
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.items.retain(|_, item| keep(item));
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Every item with its slot, in order.
    pub fn into_items(self) -> impl Iterator<Item = (Slot, T)> {
        self.items.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn items_come_out_by_due_time_then_by_insertion_order() {
        let now = Instant::now();
        let mut q = DueQueue::default();
        q.push(now + Duration::from_secs(2), "late");
        q.push(now, "first");
        q.push(now, "second");
        assert_eq!(q.next_due(), Some(now));
        assert_eq!(q.pop_due(now), Some("first"));
        assert_eq!(q.pop_due(now), Some("second"));
        assert_eq!(q.pop_due(now), None, "not due yet");
        assert_eq!(q.pop_first(), Some("late"));
        assert!(q.is_empty());
    }

    #[test]
    fn a_slot_removes_exactly_its_item() {
        let now = Instant::now();
        let mut q = DueQueue::default();
        let a = q.push(now, 1);
        q.push(now, 2);
        assert_eq!(q.remove(&a), Some(1));
        assert_eq!(q.remove(&a), None);
        assert_eq!(q.pop_first(), Some(2));
    }
}
