//! Problems found in operator input (config, watchlist, environment), each with the place it came
//! from, so that every message can be acted on without reading code.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Where a problem sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A position in a file; line and column are 1-based, the column counts characters.
    File {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    /// A whole file (it is missing or unreadable, so there is no line to point at).
    Path(PathBuf),
    /// An environment variable override.
    Env(String),
}

/// One problem, rendered as `path:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub location: Location,
    pub message: String,
}

impl Diagnostic {
    pub fn new(location: Location, message: impl Into<String>) -> Self {
        Self {
            location,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Location::File { path, line, column } => {
                write!(f, "{}:{line}:{column}: {}", path.display(), self.message)
            }
            Location::Path(path) => write!(f, "{}: {}", path.display(), self.message),
            Location::Env(var) => write!(f, "environment variable {var}: {}", self.message),
        }
    }
}

/// Every problem found in one pass over the input; `check-config` prints them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Turns byte offsets of one source text into file locations.
pub struct SourceText<'a> {
    path: &'a Path,
    text: &'a str,
    /// The byte offset where each line starts, so a location costs a binary search, not a scan
    /// from the top (a 100,000-entry watchlist has 500,000 lines).
    line_starts: std::rc::Rc<[usize]>,
    /// Added to every offset: the start of the part of `text` that offsets are relative to.
    base: usize,
}

impl<'a> SourceText<'a> {
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            path,
            text,
            line_starts,
            base: 0,
        }
    }

    /// The same text, for offsets relative to byte `base` (a part of it parsed on its own).
    pub fn shifted(&self, base: usize) -> Self {
        Self {
            path: self.path,
            text: self.text,
            line_starts: self.line_starts.clone(),
            base,
        }
    }

    /// The location of a byte offset (clamped to the text, and to a character boundary).
    pub fn location(&self, offset: usize) -> Location {
        let mut offset = (self.base + offset).min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        // The last line start at or before the offset.
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let line_start = self.line_starts[line.saturating_sub(1)];
        let column = self.text[line_start..offset].chars().count() + 1;
        Location::File {
            path: self.path.to_path_buf(),
            line,
            column,
        }
    }

    /// A diagnostic at the start of `span`, or at the top of the file when there is no span.
    pub fn at(&self, span: Option<Range<usize>>, message: impl Into<String>) -> Diagnostic {
        let offset = span.map_or(0, |s| s.start);
        Diagnostic::new(self.location(offset), message)
    }
}

/// The line of a location, when it has one.
pub fn line_of(location: &Location) -> Option<usize> {
    match location {
        Location::File { line, .. } => Some(*line),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_one_based_lines_and_character_columns() {
        let text = "a = 1\nbé = \"x\"\n";
        let src = SourceText::new(Path::new("f.toml"), text);
        assert_eq!(src.at(Some(0..1), "m").to_string(), "f.toml:1:1: m");
        let eq = text.find('=').unwrap_or(0);
        assert_eq!(src.at(Some(eq..eq), "m").to_string(), "f.toml:1:3: m");
        let second_eq = text.rfind('=').unwrap_or(0);
        // "bé " is three characters but four bytes.
        assert_eq!(
            src.at(Some(second_eq..second_eq), "m").to_string(),
            "f.toml:2:4: m"
        );
        assert_eq!(src.at(None, "m").to_string(), "f.toml:1:1: m");
        assert_eq!(src.at(Some(999..1000), "m").to_string(), "f.toml:3:1: m");
    }
}
