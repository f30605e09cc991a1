//! A bounded memory of what was logged, so that a thing seen again and again (the same
//! malformed message, invalid listed item or contradicted end) is logged once, not every time.

use std::collections::HashSet;

/// What was logged, at most `capacity` of it; past that it starts over, so a flood of distinct
/// things costs bounded memory and is logged again at most once per `capacity`.
#[derive(Debug)]
pub struct Seen {
    logged: HashSet<String>,
    capacity: usize,
}

impl Seen {
    pub fn new(capacity: usize) -> Self {
        Self {
            logged: HashSet::new(),
            capacity,
        }
    }

    /// Whether `what` is seen for the first time (and is to be logged).
    pub fn first(&mut self, what: &str) -> bool {
        if self.logged.contains(what) {
            return false;
        }
        if self.logged.len() >= self.capacity {
            self.logged.clear();
        }
        self.logged.insert(what.to_string())
    }

    /// How many things are remembered.
    #[cfg(test)]
    pub fn remembered(&self) -> usize {
        self.logged.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thing_is_first_once_and_the_memory_stays_bounded() {
        let mut seen = Seen::new(3);
        assert!(seen.first("a"));
        assert!(!seen.first("a"));
        assert!(seen.first("b") && seen.first("c"));
        assert!(
            !seen.first("c"),
            "a known one does not start the memory over"
        );
        assert!(seen.first("d"), "past the capacity the memory starts over");
        assert!(seen.remembered() <= 3);
    }
}
