//! Logging to stderr with `tracing`, in text or JSON. Standard output carries only events.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::input::config::{LogFormat, LogSettings};

const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// The filter for `log.level`. A bare level applies to flowwatch; dependencies (the AWS SDK,
/// hyper) are held at `info` at most, because their debug output carries request details.
/// A full directive (`"flowwatch=debug,aws_config=debug"`) is taken as written. `RUST_LOG`, when
/// set, wins.
pub fn filter(settings: &LogSettings) -> EnvFilter {
    if let Ok(from_env) = EnvFilter::try_from_default_env() {
        return from_env;
    }
    let level = settings.level.trim().to_ascii_lowercase();
    let directive = match LEVELS.iter().position(|l| *l == level) {
        Some(i) => format!("{},flowwatch={level}", LEVELS[i.min(2)]),
        None => settings.level.clone(),
    };
    EnvFilter::builder()
        .parse(&directive)
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber; later calls (in tests) are ignored. A log line that cannot
/// be written (stderr closed by whoever read it) is dropped: tracing-subscriber's own report of
/// that would be an `eprintln!`, which panics on a closed stderr and would take the engine down.
pub fn init(settings: &LogSettings) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(settings))
        .log_internal_errors(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
