//! What serves operators at run time: the HTTP routes and their limits, the status page,
//! watchlist reloads, and the shutdown every task listens for.

pub mod http;
mod page;
pub mod reload;
pub mod shutdown;
