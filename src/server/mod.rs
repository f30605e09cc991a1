//! What serves operators at run time: the HTTP routes and their limits, TLS and basic auth, the
//! status page, reloads (the watchlist and the config's instances), and the shutdown every task
//! listens for.

pub mod auth;
pub mod config_reload;
pub mod http;
pub mod open_files;
mod page;
pub mod reload;
pub mod shutdown;
pub mod standby;
mod status_json;
pub mod tls;
