//! High availability on shared state: replicas share one DynamoDB table ([`StateTable`]), and
//! one of them leads under a fenced lease kept in it ([`lease`]). Only the leader acts; every
//! write of its state carries the lease's [`lease::Fence`].

pub mod lease;
pub mod member;
pub mod replica;

pub use crate::output::replication;

pub use crate::api::dynamodb::{Failure, StateTable, TableError, failure};
