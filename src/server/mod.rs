//! The HTTP server, and what serves operators at run time beside it.

pub mod http;
