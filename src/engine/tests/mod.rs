//! Engine-level tests: the real engine loop on tokio's paused clock, against [`Scripted`], an
//! in-memory Supply Chain API that answers as each test scripts it. No HTTP, no SDK: a scripted
//! hour of polling runs in milliseconds. What the HTTP tests (`tests/it`) prove over the wire,
//! these prove of the engine's decisions: backoff, NOT_FOUND grace, throttling, discovery windows,
//! push against polls, overdue runs, `retain_terminal` and reload.
//!
//! [`Scripted`]: scripted::Scripted

mod rig;
pub(super) mod scripted;

mod budgets;
mod discovery;
mod flow_health;
mod polling;
mod push;
mod watch_set;
