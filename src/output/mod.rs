//! Everything flowwatch makes visible: the durable store, the event sinks, the Prometheus
//! metrics and the health state the probes read; and the checks and lock of their files.

pub mod events;
pub mod files;
pub mod health;
pub mod info_labels;
pub mod internal_events;
pub mod metrics;
pub mod outbox;
pub mod publisher;
pub mod push_metrics;
pub mod replication;
pub mod series;
pub mod sinks;
pub mod store;
