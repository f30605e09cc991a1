//! What flowwatch reads from operators: the config file (with env overrides), the watchlist, and
//! the located diagnostics (`file:line:column: message`) both report their problems with.

pub mod config;
pub mod diagnostic;
pub mod duration;
pub mod watchlist;
