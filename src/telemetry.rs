//! Logging to stderr with `tracing`, in text or JSON. Standard output carries only events.
//! Text lines escape control characters as logfmt does: a string from the API (a status, a
//! message) can neither start a forged log line nor send escape sequences to a terminal.

use std::io::{self, Write};

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
        .with_target(false);
    let _ = match settings.format {
        LogFormat::Text => builder
            .with_ansi(false)
            .with_writer(|| Escaped(io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .with_writer(io::stderr)
            .json()
            .flatten_event(true)
            .try_init(),
    };
}

/// A writer of whole log lines that escapes the control characters inside a line (`\n`, `\r`,
/// `\t`, others as `\xNN`); the newline that ends the line stays.
struct Escaped<W>(W);

impl<W: Write> Write for Escaped<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, &b"\n"[..]),
            None => (buf, &b""[..]),
        };
        if !body.iter().any(|b| b.is_ascii_control()) {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut line = Vec::with_capacity(buf.len() + 16);
        for &b in body {
            match b {
                b'\n' => line.extend_from_slice(b"\\n"),
                b'\r' => line.extend_from_slice(b"\\r"),
                b'\t' => line.extend_from_slice(b"\\t"),
                b if b.is_ascii_control() => {
                    line.extend_from_slice(format!("\\x{b:02x}").as_bytes())
                }
                b => line.push(b),
            }
        }
        line.extend_from_slice(end);
        self.0.write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_inside_a_line_are_escaped_and_its_end_is_kept() {
        let mut out = Escaped(Vec::new());
        out.write_all(b"status=\"OK\n2026-01-01 ERROR forged\x1b[31m\ttab\r\"\n")
            .expect("write");
        assert_eq!(
            String::from_utf8(out.0).expect("utf-8"),
            "status=\"OK\\n2026-01-01 ERROR forged\\x1b[31m\\ttab\\r\"\n"
        );
        let mut plain = Escaped(Vec::new());
        plain.write_all("naïve line\n".as_bytes()).expect("write");
        assert_eq!(plain.0, "naïve line\n".as_bytes());
    }
}
