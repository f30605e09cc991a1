//! Settings: the TOML config file merged with `FLOWWATCH_` environment overrides (figment), parsed
//! and validated once into typed values. Every problem is reported at once, with the file, line and
//! column it comes from, or the environment variable that set it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;
use toml_edit::{Document, Item};

use crate::diagnostic::{Diagnostic, Diagnostics, Location, SourceText};
use crate::watchlist::toml_message;

/// The default config path when neither `--config` nor `FLOWWATCH_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/flowwatch/flowwatch.toml";
/// The prefix of environment overrides; `__` separates nesting levels.
pub const ENV_PREFIX: &str = "FLOWWATCH_";

/// Validated settings; nothing here is a raw string that still needs checking.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub config_path: PathBuf,
    /// Resolved relative to the config file's directory.
    pub watchlist: PathBuf,
    pub server: ServerSettings,
    pub aws: AwsSettings,
    pub polling: PollingSettings,
    pub state: StateSettings,
    pub events: EventSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct AwsSettings {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PollingSettings {
    pub initial_interval: Duration,
    pub max_interval: Duration,
    pub multiplier: f64,
    pub max_requests_per_second: f64,
    pub max_in_flight: usize,
    pub request_timeout: Duration,
    pub not_found_grace: Duration,
    pub retain_terminal: Duration,
}

impl Default for PollingSettings {
    fn default() -> Self {
        Self {
            initial_interval: Duration::from_secs(5),
            max_interval: Duration::from_secs(120),
            multiplier: 2.0,
            max_requests_per_second: 5.0,
            max_in_flight: 16,
            request_timeout: Duration::from_secs(10),
            not_found_grace: Duration::from_secs(600),
            retain_terminal: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StateSettings {
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventSettings {
    pub stdout: bool,
    /// `None` when `events.file = ""` turns the file sink off.
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogSettings {
    /// A `tracing` filter directive such as `info` or `flowwatch=debug,warn`.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

// What serde reads; defaults are applied here, checks that need several fields happen later.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    watchlist: PathBuf,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    aws: RawAws,
    #[serde(default)]
    polling: RawPolling,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    events: RawEvents,
    #[serde(default)]
    log: RawLog,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: SocketAddr,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9726)),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawAws {
    region: Option<String>,
    endpoint_url: Option<String>,
    profile: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPolling {
    initial_interval: HumanDuration,
    max_interval: HumanDuration,
    multiplier: f64,
    max_requests_per_second: f64,
    max_in_flight: usize,
    request_timeout: HumanDuration,
    not_found_grace: HumanDuration,
    retain_terminal: HumanDuration,
}

impl Default for RawPolling {
    fn default() -> Self {
        let d = PollingSettings::default();
        Self {
            initial_interval: HumanDuration(d.initial_interval),
            max_interval: HumanDuration(d.max_interval),
            multiplier: d.multiplier,
            max_requests_per_second: d.max_requests_per_second,
            max_in_flight: d.max_in_flight,
            request_timeout: HumanDuration(d.request_timeout),
            not_found_grace: HumanDuration(d.not_found_grace),
            retain_terminal: HumanDuration(d.retain_terminal),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawState {
    path: PathBuf,
}

impl Default for RawState {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/flowwatch"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawEvents {
    stdout: bool,
    file: PathBuf,
}

impl Default for RawEvents {
    fn default() -> Self {
        Self {
            stdout: true,
            file: PathBuf::from("/var/lib/flowwatch/events.jsonl"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    level: String,
    format: LogFormat,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: "info".to_string(),
            format: LogFormat::Text,
        }
    }
}

/// A duration written the humantime way: `"90s"`, `"2m"`, `"1h 30m"`.
#[derive(Clone, Copy)]
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {text:?}: {e} (write it like \"90s\", \"2m\" or \"1h 30m\")"
                ))
            })
    }
}

impl Settings {
    /// Reads the config file, applies `FLOWWATCH_*` overrides from the process environment and
    /// validates the result. The watchlist file is not read here.
    pub fn load(config_path: &Path) -> Result<Self, Diagnostics> {
        Self::load_with_env(config_path, Env::prefixed(ENV_PREFIX))
    }

    fn load_with_env(config_path: &Path, env: Env) -> Result<Self, Diagnostics> {
        let figment = base_figment(config_path)?.merge(env.ignore(&["config"]).split("__"));
        extract(config_path, figment)
    }
}

/// Reads the file once ourselves first: a syntax error is then reported with our own location
/// format, and figment only sees text that parses.
fn base_figment(config_path: &Path) -> Result<Figment, Diagnostics> {
    let text = read_config_text(config_path)?;
    let src = SourceText::new(config_path, &text);
    if let Err(e) = Document::parse(text.as_str()) {
        return Err(Diagnostics(vec![
            src.at(e.span(), toml_message(e.message())),
        ]));
    }
    Ok(Figment::new().merge(Toml::file_exact(config_path)))
}

fn read_config_text(config_path: &Path) -> Result<String, Diagnostics> {
    std::fs::read_to_string(config_path).map_err(|e| {
        Diagnostics(vec![Diagnostic::new(
            Location::Path(config_path.to_path_buf()),
            format!("cannot read config file: {}", crate::io_error_text(&e)),
        )])
    })
}

fn extract(config_path: &Path, figment: Figment) -> Result<Settings, Diagnostics> {
    let text = read_config_text(config_path)?;
    let locator = Locator::new(config_path, &text);
    let raw: RawSettings = match figment.extract() {
        Ok(raw) => raw,
        Err(errors) => {
            let diagnostics = errors
                .into_iter()
                .map(|e| locator.figment_error(&figment, e))
                .collect();
            return Err(Diagnostics(diagnostics));
        }
    };
    validate(config_path, raw, &locator, &figment)
}

fn validate(
    config_path: &Path,
    raw: RawSettings,
    locator: &Locator<'_>,
    figment: &Figment,
) -> Result<Settings, Diagnostics> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, key: &[&str], message: String| {
        if !ok {
            problems.push(Diagnostic::new(locator.locate(figment, key), message));
        }
    };
    let p = &raw.polling;
    check(
        !p.initial_interval.0.is_zero(),
        &["polling", "initial_interval"],
        "polling.initial_interval must be greater than zero".into(),
    );
    check(
        p.max_interval.0 >= p.initial_interval.0,
        &["polling", "max_interval"],
        format!(
            "polling.max_interval ({}) must not be shorter than polling.initial_interval ({})",
            humantime::format_duration(p.max_interval.0),
            humantime::format_duration(p.initial_interval.0)
        ),
    );
    check(
        p.multiplier.is_finite() && p.multiplier >= 1.0 && p.multiplier <= 100.0,
        &["polling", "multiplier"],
        format!(
            "polling.multiplier must be between 1.0 and 100.0, not {}",
            p.multiplier
        ),
    );
    check(
        p.max_requests_per_second.is_finite()
            && p.max_requests_per_second > 0.0
            && p.max_requests_per_second <= 10_000.0,
        &["polling", "max_requests_per_second"],
        format!(
            "polling.max_requests_per_second must be greater than 0 and at most 10000, not {}",
            p.max_requests_per_second
        ),
    );
    check(
        (1..=1024).contains(&p.max_in_flight),
        &["polling", "max_in_flight"],
        format!(
            "polling.max_in_flight must be between 1 and 1024, not {}",
            p.max_in_flight
        ),
    );
    check(
        !p.request_timeout.0.is_zero(),
        &["polling", "request_timeout"],
        "polling.request_timeout must be greater than zero".into(),
    );
    let endpoint_ok = raw.aws.endpoint_url.as_deref().is_none_or(|url| {
        (url.starts_with("http://") || url.starts_with("https://"))
            && url.len() > "https://".len()
            && !url.contains(char::is_whitespace)
    });
    check(
        endpoint_ok,
        &["aws", "endpoint_url"],
        format!(
            "aws.endpoint_url must be an http:// or https:// URL, not {:?}",
            raw.aws.endpoint_url.as_deref().unwrap_or_default()
        ),
    );
    for (name, value) in [("region", &raw.aws.region), ("profile", &raw.aws.profile)] {
        check(
            value.as_deref().is_none_or(|v| !v.trim().is_empty()),
            &["aws", name],
            format!("aws.{name} must not be empty: leave it out to use the default provider chain"),
        );
    }
    check(
        tracing_subscriber::EnvFilter::builder()
            .parse(&raw.log.level)
            .is_ok(),
        &["log", "level"],
        format!(
            "log.level {:?} is not a valid filter: use error, warn, info, debug or trace (or a directive like \"flowwatch=debug,info\")",
            raw.log.level
        ),
    );
    check(
        !raw.watchlist.as_os_str().is_empty(),
        &["watchlist"],
        "watchlist must name a file".into(),
    );
    check(
        !raw.state.path.as_os_str().is_empty(),
        &["state", "path"],
        "state.path must name a directory".into(),
    );
    if !problems.is_empty() {
        return Err(Diagnostics(problems));
    }

    let base = config_path.parent().unwrap_or(Path::new("."));
    let relative_to_config = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    Ok(Settings {
        config_path: config_path.to_path_buf(),
        watchlist: relative_to_config(&raw.watchlist),
        server: ServerSettings {
            listen: raw.server.listen,
        },
        aws: AwsSettings {
            region: raw.aws.region,
            endpoint_url: raw.aws.endpoint_url,
            profile: raw.aws.profile,
        },
        polling: PollingSettings {
            initial_interval: p.initial_interval.0,
            max_interval: p.max_interval.0,
            multiplier: p.multiplier,
            max_requests_per_second: p.max_requests_per_second,
            max_in_flight: p.max_in_flight,
            request_timeout: p.request_timeout.0,
            not_found_grace: p.not_found_grace.0,
            retain_terminal: p.retain_terminal.0,
        },
        state: StateSettings {
            path: relative_to_config(&raw.state.path),
        },
        events: EventSettings {
            stdout: raw.events.stdout,
            file: (!raw.events.file.as_os_str().is_empty())
                .then(|| relative_to_config(&raw.events.file)),
        },
        log: LogSettings {
            level: raw.log.level,
            format: raw.log.format,
        },
    })
}

/// Finds where a key path was set: a line and column in the config file, or an environment
/// variable.
struct Locator<'a> {
    src: SourceText<'a>,
    doc: Option<Document<&'a str>>,
}

impl<'a> Locator<'a> {
    fn new(path: &'a Path, text: &'a str) -> Self {
        Self {
            src: SourceText::new(path, text),
            doc: Document::parse(text).ok(),
        }
    }

    fn figment_error(&self, figment: &Figment, e: figment::Error) -> Diagnostic {
        let mut path: Vec<String> = e.path.clone();
        if let figment::error::Kind::UnknownField(field, _) = &e.kind {
            path.push(field.clone());
        }
        let from_env = e
            .metadata
            .as_ref()
            .is_some_and(|m| m.name.contains("environment"));
        let message = describe(&e.kind, &path);
        if from_env {
            let var = format!(
                "{ENV_PREFIX}{}",
                path.iter()
                    .map(|p| p.to_ascii_uppercase())
                    .collect::<Vec<_>>()
                    .join("__")
            );
            return Diagnostic::new(Location::Env(var), message);
        }
        let keys: Vec<&str> = path.iter().map(String::as_str).collect();
        Diagnostic::new(self.locate(figment, &keys), message)
    }

    /// Where `key` was set; for a key that is not in the file, its nearest enclosing table.
    fn locate(&self, figment: &Figment, key: &[&str]) -> Location {
        let dotted = key.join(".");
        if let Some(meta) = figment.find_metadata(&dotted) {
            if meta.name.contains("environment") {
                return Location::Env(format!(
                    "{ENV_PREFIX}{}",
                    key.iter()
                        .map(|p| p.to_ascii_uppercase())
                        .collect::<Vec<_>>()
                        .join("__")
                ));
            }
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
                    span = item
                        .span()
                        .or_else(|| table.key(part).and_then(|k| k.span()));
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

/// A message in our own words for each kind of figment error, naming the dotted key.
fn describe(kind: &figment::error::Kind, path: &[String]) -> String {
    use figment::error::Kind;
    let key = path.join(".");
    match kind {
        Kind::UnknownField(field, expected) => {
            let known = if expected.is_empty() {
                String::new()
            } else {
                format!(" (expected one of: {})", expected.join(", "))
            };
            format!("unknown key `{field}`{known}")
        }
        Kind::MissingField(field) => {
            let full = if key.is_empty() {
                field.to_string()
            } else {
                format!("{key}.{field}")
            };
            format!("missing required key `{full}`")
        }
        Kind::InvalidType(actual, expected) => {
            format!("{key}: expected {expected}, found {actual}")
        }
        Kind::InvalidValue(actual, expected) => {
            format!("{key}: invalid value {actual}, expected {expected}")
        }
        Kind::UnknownVariant(variant, expected) => format!(
            "{key}: unknown value {variant:?}, expected one of: {}",
            expected.join(", ")
        ),
        Kind::Message(message) if key.is_empty() => message.clone(),
        Kind::Message(message) => format!("{key}: {message}"),
        other => format!("{key}: {other}"),
    }
}

/// The watchlist path of a config that failed validation, when the file still names one, so
/// `check-config` can report the watchlist's problems in the same run.
pub fn watchlist_path_hint(config_path: &Path) -> Option<PathBuf> {
    let figment = Figment::new()
        .merge(Toml::file_exact(config_path))
        .merge(Env::prefixed(ENV_PREFIX).ignore(&["config"]).split("__"));
    let path: PathBuf = figment.extract_inner("watchlist").ok()?;
    let base = config_path.parent().unwrap_or(Path::new("."));
    Some(if path.is_absolute() {
        path
    } else {
        base.join(path)
    })
}

/// The `check-config` summary of valid settings.
pub fn summary(settings: &Settings, watchlist: &crate::watchlist::Watchlist) -> String {
    use std::collections::BTreeSet;
    let flows: BTreeSet<_> = watchlist
        .entries
        .iter()
        .map(|e| (&e.key.instance_id, &e.key.flow_name))
        .collect();
    let instances: BTreeSet<_> = watchlist
        .entries
        .iter()
        .map(|e| &e.key.instance_id)
        .collect();
    let p = &settings.polling;
    let or_default = |v: &Option<String>| {
        v.clone()
            .unwrap_or_else(|| "(default provider chain)".into())
    };
    let mut sinks = Vec::new();
    if settings.events.stdout {
        sinks.push("stdout".to_string());
    }
    if let Some(file) = &settings.events.file {
        sinks.push(file.display().to_string());
    }
    format!(
        "config ok: {}\n\
         watchlist: {} ({} executions, {} flows, {} instances)\n\
         listen: {}\n\
         aws: region {}, profile {}, endpoint {}\n\
         polling: every {} growing x{} to {}, at most {} requests/s and {} in flight, timeout {}, not-found grace {}, series kept {} after the end\n\
         events: {}\n\
         state: {}\n\
         log: {} ({:?})",
        settings.config_path.display(),
        settings.watchlist.display(),
        watchlist.entries.len(),
        flows.len(),
        instances.len(),
        settings.server.listen,
        or_default(&settings.aws.region),
        or_default(&settings.aws.profile),
        settings
            .aws
            .endpoint_url
            .clone()
            .unwrap_or_else(|| "(AWS default)".into()),
        humantime::format_duration(p.initial_interval),
        p.multiplier,
        humantime::format_duration(p.max_interval),
        p.max_requests_per_second,
        p.max_in_flight,
        humantime::format_duration(p.request_timeout),
        humantime::format_duration(p.not_found_grace),
        humantime::format_duration(p.retain_terminal),
        if sinks.is_empty() {
            "(none)".to_string()
        } else {
            sinks.join(", ")
        },
        settings.state.path.display(),
        settings.log.level,
        settings.log.format,
    )
}
