//! What serves operators at run time: the HTTP routes and their limits, watchlist reloads, and
//! the shutdown every task listens for.

pub mod http;
pub mod reload;
pub mod shutdown;
