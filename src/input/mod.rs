//! What flowwatch reads from operators: the config file (with env overrides, and its web
//! settings: TLS and basic auth), the watchlist, and the located diagnostics
//! (`file:line:column: message`) both report their problems with; and the summary
//! `check-config` prints.

use std::io::Read;
use std::path::Path;

pub mod aws;
pub mod config;
pub mod diagnostic;
pub mod duration;
pub mod instances;
pub mod keys;
mod locate;
pub mod push;
pub mod state;
pub mod summary;
pub mod watchlist;
pub mod web;

/// The largest watchlist flowwatch reads: 100,000 entries take about 20 MiB.
pub const MAX_WATCHLIST_BYTES: u64 = 64 << 20;
/// The largest config file flowwatch reads.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A text file, read only up to `max` bytes. Anything but a regular file is refused before it
/// is opened: opening a FIFO waits for a writer, and a device such as `/dev/zero` never ends. An
/// absurdly large file is refused, not read until memory runs out.
pub fn read_text(path: &Path, max: u64) -> Result<String, String> {
    let metadata = std::fs::metadata(path).map_err(|e| crate::model::io_error_text(&e))?;
    if !metadata.is_file() {
        return Err(format!(
            "not a regular file ({})",
            crate::model::file_kind(&metadata)
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| crate::model::io_error_text(&e))?;
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .map_err(|e| crate::model::io_error_text(&e))?;
    if text.len() as u64 > max {
        return Err(format!("the file is larger than {} MiB", max >> 20));
    }
    Ok(text)
}

/// The longest a certificate, key or CA file may be.
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// A number as an operator would write it: `1e-300` rather than three hundred digits.
pub(crate) fn number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude != 0.0 && !(1e-4..1e15).contains(&magnitude) {
        format!("{value:e}")
    } else {
        value.to_string()
    }
}
