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
            .with_writer(|| Escaped::text(io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .with_writer(|| Escaped::json(io::stderr()))
            .json()
            .flatten_event(true)
            .try_init(),
    };
}

/// A writer of whole log lines that escapes, inside a line, every character a log reader could
/// take for a line break or that could drive a terminal or reorder text: ASCII controls (`\n`,
/// `\r`, `\t`, others as `\xNN`), C1 controls (U+0080 to U+009F, NEL among them), the line
/// and paragraph separators U+2028 and U+2029, and the bidirectional overrides and isolates
/// (U+202A to U+202E, U+2066 to U+2069), those as `\u{XXXX}`. The newline that ends the line
/// stays. In JSON lines the Unicode ones are written `\uXXXX`, the JSON escape of the same
/// character, so each line still parses to the same value.
struct Escaped<W> {
    out: W,
    json: bool,
}

impl<W> Escaped<W> {
    fn text(out: W) -> Self {
        Self { out, json: false }
    }

    fn json(out: W) -> Self {
        Self { out, json: true }
    }
}

/// Whether `c` (not ASCII) must not reach a log line raw.
fn is_unsafe_unicode(c: char) -> bool {
    matches!(c, '\u{80}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

impl<W: Write> Write for Escaped<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, &b"\n"[..]),
            None => (buf, &b""[..]),
        };
        // Every character escaped below starts with an ASCII control, 0xC2 (U+0080 to U+009F)
        // or 0xE2 (U+2028 to U+2069) in UTF-8: a line without those bytes is written as it is.
        if !body
            .iter()
            .any(|&b| b.is_ascii_control() || b == 0xc2 || b == 0xe2)
        {
            self.out.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut line = String::with_capacity(buf.len() + 16);
        for chunk in body.utf8_chunks() {
            for c in chunk.valid().chars() {
                self.push_escaped(&mut line, c);
            }
            for b in chunk.invalid() {
                line.push_str(&format!("\\x{b:02x}"));
            }
        }
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(end)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<W> Escaped<W> {
    fn push_escaped(&self, line: &mut String, c: char) {
        match c {
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if c.is_ascii_control() => line.push_str(&format!("\\x{:02x}", c as u32)),
            c if is_unsafe_unicode(c) && self.json => {
                line.push_str(&format!("\\u{:04x}", c as u32));
            }
            c if is_unsafe_unicode(c) => line.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => line.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_inside_a_line_are_escaped_and_its_end_is_kept() {
        let mut out = Escaped::text(Vec::new());
        out.write_all(b"status=\"OK\n2026-01-01 ERROR forged\x1b[31m\ttab\r\"\n")
            .expect("write");
        assert_eq!(
            String::from_utf8(out.out).expect("utf-8"),
            "status=\"OK\\n2026-01-01 ERROR forged\\x1b[31m\\ttab\\r\"\n"
        );
        let mut plain = Escaped::text(Vec::new());
        plain
            .write_all("naïve line — “quoted” €\n".as_bytes())
            .expect("write");
        assert_eq!(plain.out, "naïve line — “quoted” €\n".as_bytes());
    }

    #[test]
    fn unicode_line_breaks_c1_controls_and_bidi_overrides_are_escaped() {
        let forged =
            "message=\"a\u{85}b\u{2028}c\u{2029}d\u{9b}31m\u{202e}txt.exe\u{2066}e\u{2069}\"\n";
        let mut text = Escaped::text(Vec::new());
        text.write_all(forged.as_bytes()).expect("write");
        assert_eq!(
            String::from_utf8(text.out).expect("utf-8"),
            "message=\"a\\u{0085}b\\u{2028}c\\u{2029}d\\u{009b}31m\\u{202e}txt.exe\\u{2066}e\\u{2069}\"\n"
        );
        let line = serde_json::json!({ "message": forged.trim_end() }).to_string() + "\n";
        let mut json = Escaped::json(Vec::new());
        json.write_all(line.as_bytes()).expect("write");
        let written = String::from_utf8(json.out).expect("utf-8");
        assert!(written.is_ascii(), "{written}");
        assert_eq!(written.lines().count(), 1);
        let back: serde_json::Value = serde_json::from_str(&written).expect("still JSON");
        assert_eq!(back["message"], forged.trim_end(), "the same value");
        let mut broken = Escaped::text(Vec::new());
        broken.write_all(b"bytes \xe2\x80 end\n").expect("write");
        assert_eq!(broken.out, b"bytes \\xe2\\x80 end\n");
    }
}
