//! Where a config key was set, for located diagnostics: a line and column in the config file,
//! or the environment variable that overrode it.

use std::path::Path;

use figment::Figment;
use toml_edit::{Document, Item};

/// The prefix of environment overrides; `__` separates nesting levels.
pub const ENV_PREFIX: &str = "FLOWWATCH_";
use crate::input::diagnostic::{Location, SourceText};

/// Finds where a key path was set: a line and column in the config file, or an environment
/// variable.
pub struct Locator<'a> {
    src: SourceText<'a>,
    doc: Option<Document<&'a str>>,
}

impl<'a> Locator<'a> {
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        Self {
            src: SourceText::new(path, text),
            doc: Document::parse(text).ok(),
        }
    }

    /// The config file's text, for located diagnostics.
    pub fn source(&self) -> &SourceText<'a> {
        &self.src
    }

    /// The config file as parsed, with spans; `None` when it does not parse.
    pub fn document(&self) -> Option<&Document<&'a str>> {
        self.doc.as_ref()
    }

    /// Where `key` was set; for a key that is not in the file, its nearest enclosing table.
    pub fn locate(&self, figment: &Figment, key: &[&str], at_key: bool) -> Location {
        let dotted = key.join(".");
        if let Some(meta) = figment.find_metadata(&dotted)
            && meta.name.contains("environment")
        {
            return Location::Env(format!(
                "{ENV_PREFIX}{}",
                key.iter()
                    .map(|p| p.to_ascii_uppercase())
                    .collect::<Vec<_>>()
                    .join("__")
            ));
        }
        let Some(doc) = &self.doc else {
            return self.src.location(0);
        };
        let mut table = doc.as_table();
        let mut span = None;
        for (i, part) in key.iter().enumerate() {
            let last = i + 1 == key.len();
            match table.get(part) {
                Some(item) if last => {
                    let key_span = table.key(part).and_then(|k| k.span());
                    span = if at_key {
                        key_span.or(item.span())
                    } else {
                        item.span().or(key_span)
                    };
                }
                Some(Item::Table(t)) => {
                    span = t.span().or(span);
                    table = t;
                }
                Some(item) => {
                    span = item.span();
                    break;
                }
                None => break,
            }
        }
        self.src.location(span.map_or(0, |s| s.start))
    }
}
