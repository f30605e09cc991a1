//! flowwatch's integration tests: one crate, one module per area, so the SDK stack is linked
//! once. Each module starts what it needs itself (the fake Supply Chain API on port 0, the
//! daemon in-process or as the real binary, and for some areas real Prometheus, Alertmanager,
//! moto or Chromium); `bash .ci/test` installs those tools.

mod alerting;
mod api_errors;
mod cli;
mod corpus;
mod crash;
mod daemon;
mod dashboard;
mod discovery;
mod flow_health;
mod forecast;
mod ha;
mod http_limits;
mod instances;
mod lease;
mod push;
mod reload;
mod replica;
mod restart;
mod soak;
mod state_faults;
mod status_page;
mod tls;
