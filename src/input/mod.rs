//! What flowwatch reads from operators: the config file (with env overrides, and its web
//! settings: TLS and basic auth), the watchlist, and the located diagnostics
//! (`file:line:column: message`) both report their problems with; and the summary
//! `check-config` prints.

pub mod config;
pub mod diagnostic;
pub mod duration;
pub mod summary;
pub mod watchlist;
pub mod web;
