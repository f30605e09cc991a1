//! Everything flowwatch makes visible: the durable store, the event sinks, the Prometheus
//! metrics and the health state the probes read.

pub mod events;
pub mod health;
pub mod internal_events;
pub mod metrics;
pub mod publisher;
pub mod series;
pub mod store;
