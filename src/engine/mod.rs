//! The engine: decides when to ask the API about what, turns every answer into a decision, and
//! hands what must become visible to the [`crate::output::Publisher`].

pub mod discovery;
pub mod forecast;
pub mod pacing;
pub mod scheduler;
pub mod state;
