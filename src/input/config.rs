//! Settings: the TOML config file merged with `FLOWWATCH_` environment overrides (figment), parsed
//! and validated once into typed values. Every problem is reported at once, with the file, line and
//! column it comes from, or the environment variable that set it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;
use toml_edit::Document;

use crate::input::aws;
use crate::input::diagnostic::{Diagnostic, Diagnostics, Location, SourceText};
use crate::input::duration::{self, DurationError};
use crate::input::instances::{self, InstanceSettings};
use crate::input::keys;
use crate::input::locate::{ENV_PREFIX, Locator};
use crate::input::number;
use crate::input::push::{self, PushSettings};
pub use crate::input::state::StateSettings;
use crate::input::state::{self, DynamoSettings};
use crate::input::watchlist::toml_message;
use crate::input::web::{self, BasicAuthUsers, TlsSettings, TlsVersion};

/// The default config path when neither `--config` nor `FLOWWATCH_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/flowwatch/flowwatch.toml";

/// Validated settings; nothing here is a raw string that still needs checking.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub config_path: PathBuf,
    /// Resolved relative to the config file's directory.
    pub watchlist: PathBuf,
    pub server: ServerSettings,
    pub aws: AwsSettings,
    pub polling: PollingSettings,
    pub discovery: DiscoverySettings,
    pub flow_health: FlowHealthSettings,
    /// `[push]`, when a queue is named.
    pub push: Option<PushSettings>,
    pub metrics: MetricsSettings,
    pub state: StateSettings,
    pub events: EventSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// `[server.tls]`: serve HTTPS.
    pub tls: Option<TlsSettings>,
    /// `[server.basic_auth_users]`: when any, every endpoint but the probes needs credentials.
    pub basic_auth_users: BasicAuthUsers,
    /// Open connections at most; more are turned away (logged and counted).
    pub max_connections: usize,
    /// Whether `POST /-/reload` works (as Prometheus's `--web.enable-lifecycle`).
    pub enable_lifecycle: bool,
}

/// The default of `server.max_connections`: idle connections are cheap and closed after the
/// header timeout, so a flood of them cannot hold every slot.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct AwsSettings {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    /// `[[aws.instance]]`: instances with a region, role or endpoint of their own. Any other
    /// instance goes through the settings above.
    pub instances: Vec<InstanceSettings>,
}

impl AwsSettings {
    /// The region flowwatch knows before the SDK resolves one: `aws.region`, else the region
    /// variable the SDK reads first. `None` leaves it to the AWS profile (or instance metadata).
    pub fn known_region(&self) -> Option<String> {
        self.region.clone().or_else(|| {
            aws::region_from_environment(|n| std::env::var_os(n)).map(|(_, region)| region)
        })
    }
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
    /// Poll running executions around the time runs of their flow end (see `forecast`).
    pub adaptive: bool,
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
            adaptive: true,
        }
    }
}

/// What `/metrics` exports.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSettings {
    /// The per-execution series (status, start and end time). Off, a large watchlist costs no
    /// series per execution; `flowwatch_execution_failure_info` stays, for alerts.
    pub per_execution: bool,
}

/// How `[[flow]]` entries are listed for new executions.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoverySettings {
    /// Time between two discovery rounds of one flow.
    pub interval: Duration,
    /// `maxResults` of each ListDataIntegrationFlowExecutions request (the model allows 1 to 20).
    pub page_size: i32,
    /// At most this many pages per flow and round; a longer backlog continues next round.
    pub max_pages_per_round: u32,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            page_size: 20,
            max_pages_per_round: 10,
        }
    }
}

/// What each flow's recent durations say about its running executions (see `flow_health`).
#[derive(Debug, Clone, PartialEq)]
pub struct FlowHealthSettings {
    /// Terminal durations kept per flow, in the store.
    pub history: usize,
    /// Durations a flow needs before its running executions get an expected end.
    pub min_history: usize,
    /// Overdue: running longer than this many times the flow's median duration...
    pub overdue_factor: f64,
    /// ...and longer than this.
    pub overdue_min: Duration,
}

impl Default for FlowHealthSettings {
    fn default() -> Self {
        Self {
            history: 20,
            min_history: 3,
            overdue_factor: 2.0,
            overdue_min: Duration::from_secs(600),
        }
    }
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

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The shortest poll interval and request timeout taken: below it a timer is all overhead.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// The longest wait between two polls of a running execution.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(86_400);
/// The longest a single call may take.
const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// The slowest request rate taken: one call every 100 s. Far below it the pacing's arithmetic
/// (the wait for one token) runs past what a clock can hold.
const MIN_REQUEST_RATE: f64 = 0.01;

/// A duration setting, read with the one [`duration::parse`].
#[derive(Clone, Copy)]
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        duration::parse(&text).map(HumanDuration).map_err(|e| {
            serde::de::Error::custom(match e {
                DurationError::Syntax(e) => format!(
                    "invalid duration {text:?}: {e} (write it like \"90s\", \"2m\" or \"1h 30m\")"
                ),
                DurationError::TooLong => format!(
                    "duration {text:?} is longer than the longest flowwatch takes (366 days)"
                ),
            })
        })
    }
}

impl Settings {
    /// Reads the config file, applies `FLOWWATCH_*` overrides from the process environment and
    /// validates the result. The watchlist file is not read here.
    pub fn load(config_path: &Path) -> Result<Self, Diagnostics> {
        let text = read_config_text(config_path)?;
        let src = SourceText::new(config_path, &text);
        if let Err(e) = Document::parse(text.as_str()) {
            return Err(Diagnostics(vec![
                src.at(e.span(), toml_message(e.message())),
            ]));
        }
        let figment = figment(config_path);
        let locator = Locator::new(config_path, &text);
        let mut reader = Reader {
            figment: &figment,
            locator: &locator,
            problems: Vec::new(),
            #[cfg(test)]
            read: Vec::new(),
        };
        let settings = reader.settings(config_path);
        match settings {
            Some(settings) if reader.problems.is_empty() => Ok(settings),
            _ => Err(Diagnostics(reader.problems)),
        }
    }
}

/// The config file with the environment merged over it.
fn figment(config_path: &Path) -> Figment {
    Figment::new()
        .merge(Toml::file_exact(config_path))
        .merge(Env::prefixed(ENV_PREFIX).ignore(&["config"]).split("__"))
}

fn read_config_text(config_path: &Path) -> Result<String, Diagnostics> {
    crate::input::read_text(config_path, crate::input::MAX_CONFIG_BYTES).map_err(|e| {
        Diagnostics(vec![Diagnostic::new(
            Location::Path(config_path.to_path_buf()),
            format!("cannot read config file: {e}"),
        )])
    })
}

/// Reads one key at a time, so that every bad key is reported, not only the first.
struct Reader<'a> {
    figment: &'a Figment,
    locator: &'a Locator<'a>,
    problems: Vec<Diagnostic>,
    /// Every key read, for the test that the reader reads exactly [`keys::KEYS`].
    #[cfg(test)]
    read: Vec<String>,
}

impl Reader<'_> {
    fn problem(&mut self, key: &str, message: String) {
        self.problem_at(key, false, message);
    }

    /// `at_key`: point at the key itself rather than its value (for unknown keys).
    fn problem_at(&mut self, key: &str, at_key: bool, message: String) {
        let parts: Vec<&str> = key.split('.').collect();
        let location = self.locator.locate(self.figment, &parts, at_key);
        self.problems.push(Diagnostic::new(location, message));
    }

    /// The key's value, `None` if it is absent; a value of the wrong type is reported.
    fn get<T: serde::de::DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        #[cfg(test)]
        self.read.push(key.to_string());
        let value = self.figment.find_value(key).ok()?;
        match value.deserialize::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                let message = describe(&e.kind, key);
                self.problem(key, message);
                None
            }
        }
    }

    fn or<T: serde::de::DeserializeOwned>(&mut self, key: &str, default: T) -> T {
        self.get(key).unwrap_or(default)
    }

    fn duration(&mut self, key: &str, default: Duration) -> Duration {
        self.get::<HumanDuration>(key).map_or(default, |d| d.0)
    }

    /// Reports keys and tables the config does not know ([`keys::KEYS`] says what it knows).
    fn unknown_keys(&mut self) {
        let Ok(root) = self.figment.extract::<figment::value::Dict>() else {
            return;
        };
        self.unknown_fields_of("", &root);
    }

    /// Reports the keys of `table` (`""`: the top level) the config does not know, and those of
    /// its known subtables.
    fn unknown_fields_of(&mut self, table: &str, fields: &figment::value::Dict) {
        let known = keys::fields_of(table);
        for (field, inner) in fields {
            let path = if table.is_empty() {
                field.clone()
            } else {
                format!("{table}.{field}")
            };
            if !known.contains(&field.as_str()) {
                let message = format!(
                    "unknown key `{path}` (expected one of: {})",
                    known.join(", ")
                );
                self.problem_at(&path, true, message);
            } else if keys::is_table(&path) {
                match inner.as_dict() {
                    Some(_) if keys::is_open(&path) => {}
                    Some(inner) => self.unknown_fields_of(&path, inner),
                    None => self.problem(&path, format!("`{path}` must be a table, like [{path}]")),
                }
            }
        }
    }

    /// `[server.tls]` and `[server.basic_auth_users]`, with their files and hashes checked.
    fn web(
        &mut self,
        relative: &dyn Fn(&Path) -> PathBuf,
    ) -> (Option<TlsSettings>, BasicAuthUsers) {
        let users: BasicAuthUsers = self.or("server.basic_auth_users", BasicAuthUsers::new());
        for (user, hash) in &users {
            if let Err(problem) = web::check_bcrypt_hash(user, hash) {
                self.problem(&format!("server.basic_auth_users.{user}"), problem);
            }
        }
        if self.figment.find_value("server.tls").is_err() {
            return (None, users);
        }
        let file = |reader: &mut Self, key: &str| -> Option<PathBuf> {
            let path: Option<PathBuf> = reader.get(key);
            reader.check_path(key, path.as_deref());
            if path.is_none() && reader.figment.find_value(key).is_err() {
                reader.problem("server.tls", format!("[server.tls] needs {key}"));
            }
            path.filter(|p| !p.as_os_str().is_empty())
                .map(|p| relative(&p))
        };
        let cert_file = file(self, "server.tls.cert_file");
        let key_file = file(self, "server.tls.key_file");
        let client_ca_file: Option<PathBuf> = self
            .get::<PathBuf>("server.tls.client_ca_file")
            .filter(|p| !p.as_os_str().is_empty());
        self.check_path("server.tls.client_ca_file", client_ca_file.as_deref());
        let client_ca_file = client_ca_file.map(|p| relative(&p));
        let min_version = self.or("server.tls.min_version", "TLS1.2".to_string());
        let min_version = match TlsVersion::parse(&min_version) {
            Ok(v) => v,
            Err(problem) => {
                self.problem("server.tls.min_version", problem);
                TlsVersion::Tls12
            }
        };
        let (Some(cert_file), Some(key_file)) = (cert_file, key_file) else {
            return (None, users);
        };
        let tls = TlsSettings {
            cert_file,
            key_file,
            client_ca_file,
            min_version,
        };
        for (key, problem) in web::check_tls_files(&tls) {
            self.problem(key, problem);
        }
        (Some(tls), users)
    }

    fn settings(&mut self, config_path: &Path) -> Option<Settings> {
        self.unknown_keys();
        let watchlist: Option<PathBuf> = self.get("watchlist");
        if self.figment.find_value("watchlist").is_err() {
            self.problem(
                "watchlist",
                "missing required key `watchlist`: the path of the watchlist file".into(),
            );
        }
        let listen = self.or("server.listen", SocketAddr::from(([0, 0, 0, 0], 9726)));
        let max_connections = self.or("server.max_connections", DEFAULT_MAX_CONNECTIONS);
        let enable_lifecycle = self.or("server.enable_lifecycle", false);
        if !(16..=65_536).contains(&max_connections) {
            self.problem(
                "server.max_connections",
                format!(
                    "server.max_connections must be between 16 and 65536, not {max_connections}"
                ),
            );
        }
        let region: Option<String> = self.get("aws.region");
        let endpoint_url: Option<String> = self.get("aws.endpoint_url");
        let profile: Option<String> = self.get("aws.profile");
        let polling = self.polling();
        let instances = self.instances(instances::Defaults {
            region: region
                .clone()
                .or_else(|| aws::region_from_environment(|n| std::env::var_os(n)).map(|(_, r)| r)),
            max_requests_per_second: polling.max_requests_per_second,
        });
        let metrics = MetricsSettings {
            per_execution: self.or("metrics.per_execution", true),
        };
        let discovery = self.discovery();
        let flow_health = self.flow_health();
        let push = self.push();
        let state_path: PathBuf = self.or("state.path", PathBuf::from("/var/lib/flowwatch"));
        let dynamodb = self.dynamodb();
        let events_stdout = self.or("events.stdout", true);
        let events_file: PathBuf = self.or(
            "events.file",
            PathBuf::from("/var/lib/flowwatch/events.jsonl"),
        );
        let log = LogSettings {
            level: self.or("log.level", "info".to_string()),
            format: self.or("log.format", LogFormat::Text),
        };

        self.check_polling(&polling);
        self.check_discovery(&discovery);
        self.check_flow_health(&flow_health);
        self.check_aws(&region, &endpoint_url, &profile);
        self.check_log(&log);
        for (key, path) in [
            ("watchlist", watchlist.as_deref()),
            ("state.path", Some(state_path.as_path())),
            ("events.file", Some(events_file.as_path())),
        ] {
            self.check_path(key, path);
        }
        if watchlist.as_ref().is_some_and(|w| w.as_os_str().is_empty()) {
            self.problem("watchlist", "watchlist must name a file".into());
        }
        if state_path.as_os_str().is_empty() {
            self.problem("state.path", "state.path must name a directory".into());
        }

        let base = config_path.parent().unwrap_or(Path::new("."));
        let relative_to_config = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let (tls, basic_auth_users) = self.web(&relative_to_config);
        Some(Settings {
            config_path: config_path.to_path_buf(),
            watchlist: relative_to_config(&watchlist?),
            server: ServerSettings {
                listen,
                tls,
                basic_auth_users,
                max_connections,
                enable_lifecycle,
            },
            aws: AwsSettings {
                region,
                endpoint_url,
                profile,
                instances,
            },
            polling,
            discovery,
            flow_health,
            push,
            metrics,
            state: StateSettings {
                path: relative_to_config(&state_path),
                dynamodb,
            },
            events: EventSettings {
                stdout: events_stdout,
                file: (!events_file.as_os_str().is_empty())
                    .then(|| relative_to_config(&events_file)),
            },
            log,
        })
    }

    /// `[[aws.instance]]`, read from the file itself: they have no environment overrides.
    fn instances(&mut self, defaults: instances::Defaults) -> Vec<InstanceSettings> {
        #[cfg(test)]
        self.read.push("aws.instance".to_string());
        let from_environment = self
            .figment
            .find_metadata("aws.instance")
            .is_some_and(|meta| meta.name.contains("environment"));
        if from_environment {
            self.problem(
                "aws.instance",
                "[[aws.instance]] tables are read from the config file only, not from the environment".into(),
            );
        }
        let Some(doc) = self.locator.document() else {
            return Vec::new();
        };
        let (found, problems) = instances::read(self.locator.source(), doc, &defaults);
        self.problems.extend(problems);
        found
    }

    fn polling(&mut self) -> PollingSettings {
        let d = PollingSettings::default();
        PollingSettings {
            initial_interval: self.duration("polling.initial_interval", d.initial_interval),
            max_interval: self.duration("polling.max_interval", d.max_interval),
            multiplier: self.or("polling.multiplier", d.multiplier),
            max_requests_per_second: self
                .or("polling.max_requests_per_second", d.max_requests_per_second),
            max_in_flight: self.or("polling.max_in_flight", d.max_in_flight),
            request_timeout: self.duration("polling.request_timeout", d.request_timeout),
            not_found_grace: self.duration("polling.not_found_grace", d.not_found_grace),
            retain_terminal: self.duration("polling.retain_terminal", d.retain_terminal),
            adaptive: self.or("polling.adaptive", d.adaptive),
        }
    }

    fn discovery(&mut self) -> DiscoverySettings {
        let d = DiscoverySettings::default();
        DiscoverySettings {
            interval: self.duration("discovery.interval", d.interval),
            page_size: self.or("discovery.page_size", d.page_size),
            max_pages_per_round: self.or("discovery.max_pages_per_round", d.max_pages_per_round),
        }
    }

    fn flow_health(&mut self) -> FlowHealthSettings {
        let d = FlowHealthSettings::default();
        FlowHealthSettings {
            history: self.or("flow_health.history", d.history),
            min_history: self.or("flow_health.min_history", d.min_history),
            overdue_factor: self.or("flow_health.overdue_factor", d.overdue_factor),
            overdue_min: self.duration("flow_health.overdue_min", d.overdue_min),
        }
    }

    /// `[push]`; `None` when `queue_url` is absent or empty (push is off).
    fn push(&mut self) -> Option<PushSettings> {
        let queue_url: String = self.or("push.queue_url", String::new());
        let settings = PushSettings {
            endpoint_url: self
                .get::<String>("push.endpoint_url")
                .filter(|url| !url.is_empty()),
            wait_time: self.duration("push.wait_time", PushSettings::DEFAULT_WAIT_TIME),
            reconcile_interval: self.duration(
                "push.reconcile_interval",
                PushSettings::DEFAULT_RECONCILE_INTERVAL,
            ),
            fetch_details: self.or("push.fetch_details", true),
            queue_url,
        };
        if settings.queue_url.is_empty() {
            return None;
        }
        for (key, problem) in push::check(&settings) {
            self.problem(key, problem);
        }
        Some(settings)
    }

    /// `[state.dynamodb]`, read when `state.backend = "dynamodb"`; with SQLite the table must
    /// not be there, so a config that meant HA never runs on one replica's files by mistake.
    fn dynamodb(&mut self) -> Option<DynamoSettings> {
        let backend = self.or("state.backend", "sqlite".to_string());
        let table_given = self.figment.find_value("state.dynamodb").is_ok();
        match backend.as_str() {
            "dynamodb" => {}
            "sqlite" => {
                if table_given {
                    self.problem_at(
                        "state.dynamodb",
                        true,
                        "[state.dynamodb] is read only with state.backend = \"dynamodb\"".into(),
                    );
                }
                return None;
            }
            other => {
                self.problem(
                    "state.backend",
                    format!(
                        "state.backend must be one of {}, not {:?}",
                        state::BACKENDS.join(", "),
                        crate::model::bounded(other, 80)
                    ),
                );
                return None;
            }
        }
        let settings = DynamoSettings {
            table: self.or(
                "state.dynamodb.table",
                DynamoSettings::DEFAULT_TABLE.to_string(),
            ),
            region: self
                .get::<String>("state.dynamodb.region")
                .filter(|r| !r.is_empty()),
            endpoint_url: self
                .get::<String>("state.dynamodb.endpoint_url")
                .filter(|u| !u.is_empty()),
            lease_duration: self.duration(
                "state.dynamodb.lease_duration",
                DynamoSettings::DEFAULT_LEASE,
            ),
            replica_id: match self.get::<String>("state.dynamodb.replica_id") {
                Some(id) if !id.is_empty() => id,
                _ => state::host_name().unwrap_or_default(),
            },
        };
        for (key, problem) in state::check(&settings) {
            self.problem(key, problem);
        }
        Some(settings)
    }

    fn check_aws(
        &mut self,
        region: &Option<String>,
        endpoint_url: &Option<String>,
        profile: &Option<String>,
    ) {
        if let Some(url) = endpoint_url
            && let Some(problem) = aws::http_url_problem(url)
        {
            self.problem(
                "aws.endpoint_url",
                format!(
                    "aws.endpoint_url must be an http:// or https:// URL, not {:?}: it {problem}",
                    crate::model::bounded(url, 200)
                ),
            );
        }
        if profile.as_deref().is_some_and(|v| v.trim().is_empty()) {
            self.problem(
                "aws.profile",
                "aws.profile must not be empty: leave it out to use the default provider chain"
                    .to_string(),
            );
        }
        match region {
            Some(region) if region.trim().is_empty() => self.problem(
                "aws.region",
                "aws.region must not be empty: leave it out to use the default provider chain"
                    .to_string(),
            ),
            Some(region) => {
                if let Some(problem) = aws::region_problem(region) {
                    self.problem("aws.region", format!("aws.region: {problem}"));
                }
            }
            // The SDK takes the region from the environment then: check it as strictly.
            None => {
                if let Some((var, value)) = aws::region_from_environment(|n| std::env::var_os(n))
                    && let Some(problem) = aws::region_problem(&value)
                {
                    self.problems.push(Diagnostic::new(
                        Location::Env(var.to_string()),
                        format!("{problem} (aws.region is not set, so the AWS SDK would use it)"),
                    ));
                }
            }
        }
    }

    /// A path the system cannot take is refused here, not where it is first opened.
    fn check_path(&mut self, key: &str, path: Option<&Path>) {
        if path.is_some_and(|p| p.as_os_str().as_encoded_bytes().contains(&0)) {
            self.problem(key, format!("{key} must not contain a NUL character"));
        }
    }

    fn check_log(&mut self, log: &LogSettings) {
        if tracing_subscriber::EnvFilter::builder()
            .parse(&log.level)
            .is_err()
        {
            self.problem(
                "log.level",
                format!(
                    "log.level {:?} is not a valid filter: use error, warn, info, debug or trace (or a directive like \"flowwatch=debug,info\")",
                    log.level
                ),
            );
        }
    }

    fn check_discovery(&mut self, d: &DiscoverySettings) {
        if d.interval < Duration::from_secs(1) {
            self.problem(
                "discovery.interval",
                format!(
                    "discovery.interval must be at least 1s, not {}",
                    humantime::format_duration(d.interval)
                ),
            );
        }
        if d.interval > MAX_POLL_INTERVAL {
            self.problem(
                "discovery.interval",
                format!(
                    "discovery.interval must be at most {}, not {}",
                    humantime::format_duration(MAX_POLL_INTERVAL),
                    humantime::format_duration(d.interval)
                ),
            );
        }
        if !(1..=20).contains(&d.page_size) {
            self.problem(
                "discovery.page_size",
                format!(
                    "discovery.page_size must be between 1 and 20 (the API's maxResults range), not {}",
                    d.page_size
                ),
            );
        }
        if !(1..=1000).contains(&d.max_pages_per_round) {
            self.problem(
                "discovery.max_pages_per_round",
                format!(
                    "discovery.max_pages_per_round must be between 1 and 1000, not {}",
                    d.max_pages_per_round
                ),
            );
        }
    }

    fn check_flow_health(&mut self, h: &FlowHealthSettings) {
        if !(1..=1000).contains(&h.history) {
            self.problem(
                "flow_health.history",
                format!(
                    "flow_health.history must be between 1 and 1000, not {}",
                    h.history
                ),
            );
        }
        if !(1..=h.history.max(1)).contains(&h.min_history) {
            self.problem(
                "flow_health.min_history",
                format!(
                    "flow_health.min_history must be between 1 and flow_health.history ({}), not {}",
                    h.history, h.min_history
                ),
            );
        }
        if !(h.overdue_factor.is_finite() && (1.0..=1000.0).contains(&h.overdue_factor)) {
            self.problem(
                "flow_health.overdue_factor",
                format!(
                    "flow_health.overdue_factor must be between 1.0 and 1000.0, not {}",
                    number(h.overdue_factor)
                ),
            );
        }
    }

    fn check_polling(&mut self, p: &PollingSettings) {
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        let checks = [
            (
                p.initial_interval.is_zero(),
                "polling.initial_interval",
                "polling.initial_interval must be greater than zero".to_string(),
            ),
            (
                !p.initial_interval.is_zero() && p.initial_interval < MIN_INTERVAL,
                "polling.initial_interval",
                format!(
                    "polling.initial_interval must be at least {}, not {}",
                    fmt(MIN_INTERVAL),
                    fmt(p.initial_interval)
                ),
            ),
            (
                p.max_interval > MAX_POLL_INTERVAL,
                "polling.max_interval",
                format!(
                    "polling.max_interval must be at most {}, not {}",
                    fmt(MAX_POLL_INTERVAL),
                    fmt(p.max_interval)
                ),
            ),
            (
                p.max_interval < p.initial_interval,
                "polling.max_interval",
                format!(
                    "polling.max_interval ({}) must not be shorter than polling.initial_interval ({})",
                    fmt(p.max_interval),
                    fmt(p.initial_interval)
                ),
            ),
            (
                !(p.multiplier.is_finite() && (1.0..=100.0).contains(&p.multiplier)),
                "polling.multiplier",
                format!(
                    "polling.multiplier must be between 1.0 and 100.0, not {}",
                    number(p.multiplier)
                ),
            ),
            (
                !(p.max_requests_per_second.is_finite()
                    && p.max_requests_per_second > 0.0
                    && p.max_requests_per_second <= 10_000.0),
                "polling.max_requests_per_second",
                format!(
                    "polling.max_requests_per_second must be greater than 0 and at most 10000, not {}",
                    number(p.max_requests_per_second)
                ),
            ),
            (
                p.max_requests_per_second > 0.0 && p.max_requests_per_second < MIN_REQUEST_RATE,
                "polling.max_requests_per_second",
                format!(
                    "polling.max_requests_per_second must be at least {MIN_REQUEST_RATE} (one request every 100s), not {}",
                    number(p.max_requests_per_second)
                ),
            ),
            (
                !(1..=1024).contains(&p.max_in_flight),
                "polling.max_in_flight",
                format!(
                    "polling.max_in_flight must be between 1 and 1024, not {}",
                    p.max_in_flight
                ),
            ),
            (
                p.request_timeout.is_zero(),
                "polling.request_timeout",
                "polling.request_timeout must be greater than zero".to_string(),
            ),
            (
                !p.request_timeout.is_zero()
                    && !(MIN_INTERVAL..=MAX_REQUEST_TIMEOUT).contains(&p.request_timeout),
                "polling.request_timeout",
                format!(
                    "polling.request_timeout must be between {} and {}, not {}",
                    fmt(MIN_INTERVAL),
                    fmt(MAX_REQUEST_TIMEOUT),
                    fmt(p.request_timeout)
                ),
            ),
        ];
        for (bad, key, message) in checks {
            if bad {
                self.problem(key, message);
            }
        }
    }
}

/// A message in our own words for a value figment could not convert, naming the dotted key.
fn describe(kind: &figment::error::Kind, key: &str) -> String {
    use figment::error::Kind;
    match kind {
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
        Kind::Message(message) => format!("{key}: {message}"),
        other => format!("{key}: {other}"),
    }
}

/// The watchlist path of a config that failed validation, when the file still names one, so
/// `check-config` can report the watchlist's problems in the same run.
pub fn watchlist_path_hint(config_path: &Path) -> Option<PathBuf> {
    // A FIFO or device in place of the config would never end reading.
    if !std::fs::metadata(config_path).is_ok_and(|m| m.is_file()) {
        return None;
    }
    let path: PathBuf = figment(config_path).extract_inner("watchlist").ok()?;
    let base = config_path.parent().unwrap_or(Path::new("."));
    Some(if path.is_absolute() {
        path
    } else {
        base.join(path)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::input::keys::{CHOSEN_NAME, EACH, KEYS, Key};

    /// Writes `text` as a config file beside an empty watchlist.
    fn config(dir: &Path, text: &str) -> PathBuf {
        std::fs::write(dir.join("watchlist.toml"), "").expect("watchlist");
        let path = dir.join("flowwatch.toml");
        std::fs::write(&path, text).expect("config");
        path
    }

    /// Every key the reader asked for while reading `path`, whatever it found.
    fn keys_read(path: &Path) -> BTreeSet<String> {
        let text = std::fs::read_to_string(path).expect("config");
        let figment = figment(path);
        let locator = Locator::new(path, &text);
        let mut reader = Reader {
            figment: &figment,
            locator: &locator,
            problems: Vec::new(),
            read: Vec::new(),
        };
        reader.settings(path);
        reader.read.into_iter().collect()
    }

    /// The declared keys, an open table's by the table's path.
    fn declared() -> BTreeSet<String> {
        KEYS.iter()
            .map(|k| {
                let open = k.path.strip_suffix(CHOSEN_NAME);
                let path = open.map_or(k.path, |table| table.trim_end_matches('.'));
                // The tables of an array are read whole.
                path.split_once(EACH)
                    .map_or(path, |(array, _)| array)
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn the_reader_reads_exactly_the_declared_keys() {
        let dir = tempfile::tempdir().expect("dir");
        // With [server.tls], whose keys are read only when the table is there, and the
        // DynamoDB backend, whose table's keys are read only with it.
        let path = config(
            dir.path(),
            "watchlist = \"watchlist.toml\"\n[server.tls]\ncert_file = \"c\"\nkey_file = \"k\"\n\
             [state]\nbackend = \"dynamodb\"\n",
        );
        assert_eq!(keys_read(&path), declared());
    }

    #[test]
    fn each_declared_default_is_the_reader_s_default() {
        let dir = tempfile::tempdir().expect("dir");
        let minimal = config(dir.path(), "watchlist = \"watchlist.toml\"\n");
        let defaults = Settings::load(&minimal).expect("the minimal config");
        let mut text = String::from("watchlist = \"watchlist.toml\"\n");
        // [server.tls] needs its files; its defaults are checked by the TLS tests. The keys of
        // [state.dynamodb] are read only with its backend: they are checked with it below.
        let dynamodb = |k: &&Key| k.path.starts_with("state.dynamodb.");
        for key in KEYS
            .iter()
            .filter(|k| !k.path.starts_with("server.tls.") && !dynamodb(k))
        {
            if let Some(value) = key.default.toml() {
                text.push_str(&format!("{} = {value}\n", key.path));
            }
        }
        let spelled_out = config(dir.path(), &text);
        let settings = Settings::load(&spelled_out).expect("every default, written out");
        assert_eq!(settings, defaults);

        let backend = "watchlist = \"watchlist.toml\"\nstate.backend = \"dynamodb\"\n";
        let minimal = Settings::load(&config(dir.path(), backend)).expect("minimal");
        let mut text = backend.to_string();
        for key in KEYS.iter().filter(dynamodb) {
            if let Some(value) = key.default.toml() {
                text.push_str(&format!("{} = {value}\n", key.path));
            }
        }
        let spelled_out = Settings::load(&config(dir.path(), &text)).expect("written out");
        assert_eq!(spelled_out.state, minimal.state);
        assert!(minimal.state.dynamodb.is_some());
    }

    #[test]
    fn docs_configuration_md_lists_exactly_the_declared_keys_with_their_defaults() {
        let doc = include_str!("../../docs/configuration.md");
        let section = doc
            .split("\n## ")
            .find(|s| s.starts_with("The configuration file"))
            .expect("docs/configuration.md has a section on the configuration file");
        let mut documented = BTreeMap::new();
        for row in section.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split(" | ").collect();
            let default = cells.get(1).map(|c| c.trim()).unwrap_or_default();
            for name in cells[0].trim_start_matches("| ").split(", ") {
                documented.insert(name.trim_matches('`').to_string(), default.to_string());
            }
        }
        let declared: BTreeMap<String, String> = KEYS
            .iter()
            .map(|k| (k.path.to_string(), k.default.shown()))
            .collect();
        assert_eq!(documented, declared);
    }
}
