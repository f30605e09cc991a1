//! Every configuration key, declared once: its dotted path and its default as the reference
//! shows it. The unknown-key check reads this table; tests prove that the config reader reads
//! exactly these keys, that each default here is the reader's, and that `docs/configuration.md`
//! lists exactly these keys with these defaults.

/// One key of the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// `polling.max_interval` for `max_interval` in `[polling]`.
    pub path: &'static str,
    pub default: KeyDefault,
}

/// A key's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDefault {
    /// A TOML string.
    Text(&'static str),
    /// Any other TOML value, as written (`2.0`, `true`, `16`).
    Value(&'static str),
    /// No value: what happens instead, in words (`provider chain`, `none`).
    Words(&'static str),
}

#[cfg(test)]
impl KeyDefault {
    /// As the reference's table shows it: a value in backticks, words as they are.
    pub fn shown(self) -> String {
        match self {
            KeyDefault::Text(t) => format!("`{}`", if t.is_empty() { "\"\"" } else { t }),
            KeyDefault::Value(v) => format!("`{v}`"),
            KeyDefault::Words(w) => w.to_string(),
        }
    }

    /// As a TOML value, when there is one.
    pub fn toml(self) -> Option<String> {
        match self {
            KeyDefault::Text(t) => Some(format!("{t:?}")),
            KeyDefault::Value(v) => Some(v.to_string()),
            KeyDefault::Words(_) => None,
        }
    }
}

/// The last segment of a key whose table's keys are names the operator chooses.
pub const CHOSEN_NAME: &str = "<name>";

/// Marks an array of tables in a key's path: `aws.instance[].id` is `id` in each
/// `[[aws.instance]]`.
pub const EACH: &str = "[]";

const fn text(path: &'static str, default: &'static str) -> Key {
    Key {
        path,
        default: KeyDefault::Text(default),
    }
}

const fn value(path: &'static str, default: &'static str) -> Key {
    Key {
        path,
        default: KeyDefault::Value(default),
    }
}

const fn words(path: &'static str, default: &'static str) -> Key {
    Key {
        path,
        default: KeyDefault::Words(default),
    }
}

pub const KEYS: &[Key] = &[
    words("watchlist", "(required)"),
    text("server.listen", "0.0.0.0:9726"),
    value("server.max_connections", "1024"),
    value("server.enable_lifecycle", "false"),
    words("server.tls.cert_file", "none"),
    words("server.tls.key_file", "none"),
    text("server.tls.client_ca_file", ""),
    text("server.tls.min_version", "TLS1.2"),
    words("server.basic_auth_users.<name>", "none"),
    words("aws.region", "provider chain"),
    words("aws.endpoint_url", "AWS default"),
    words("aws.profile", "provider chain"),
    words("aws.instance[].id", "(required)"),
    words("aws.instance[].region", "`aws.region`"),
    words("aws.instance[].role_arn", "none: the base credentials"),
    words("aws.instance[].external_id", "none"),
    words("aws.instance[].endpoint_url", "`aws.endpoint_url`"),
    words(
        "aws.instance[].max_requests_per_second",
        "`polling.max_requests_per_second`",
    ),
    text("polling.initial_interval", "5s"),
    text("polling.max_interval", "2m"),
    value("polling.multiplier", "2.0"),
    value("polling.max_requests_per_second", "5.0"),
    value("polling.max_in_flight", "16"),
    text("polling.request_timeout", "10s"),
    text("polling.not_found_grace", "10m"),
    text("polling.retain_terminal", "1h"),
    value("polling.adaptive", "true"),
    value("metrics.per_execution", "true"),
    text("discovery.interval", "1m"),
    value("discovery.page_size", "20"),
    value("discovery.max_pages_per_round", "10"),
    value("flow_health.history", "20"),
    value("flow_health.min_history", "3"),
    value("flow_health.overdue_factor", "2.0"),
    text("flow_health.overdue_min", "10m"),
    text("push.queue_url", ""),
    words("push.endpoint_url", "SDK's resolution"),
    text("push.wait_time", "20s"),
    text("push.reconcile_interval", "5m"),
    value("push.fetch_details", "true"),
    text("state.path", "/var/lib/flowwatch"),
    text("state.backend", "sqlite"),
    text("state.dynamodb.table", "flowwatch"),
    words("state.dynamodb.region", "aws.region"),
    words("state.dynamodb.endpoint_url", "SDK's resolution"),
    text("state.dynamodb.lease_duration", "15s"),
    words("state.dynamodb.replica_id", "the host name"),
    value("events.stdout", "true"),
    text("events.file", "/var/lib/flowwatch/events.jsonl"),
    text("log.level", "info"),
    text("log.format", "text"),
];

/// Whether `path` is a table of the config (`polling`, `server.tls`).
pub fn is_table(path: &str) -> bool {
    KEYS.iter().any(|k| {
        k.path
            .strip_prefix(path)
            .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// Whether the keys of table `path` are names the operator chooses.
pub fn is_open(path: &str) -> bool {
    KEYS.iter()
        .any(|k| k.path.strip_suffix(CHOSEN_NAME) == Some(&format!("{path}.")))
}

/// The keys and subtables of table `path` (`""`: the top level), in declaration order.
pub fn fields_of(path: &str) -> Vec<&'static str> {
    let mut fields: Vec<&'static str> = Vec::new();
    for key in KEYS {
        let rest = if path.is_empty() {
            Some(key.path)
        } else {
            key.path
                .strip_prefix(path)
                .and_then(|r| r.strip_prefix('.'))
        };
        if let Some(field) = rest.and_then(|r| r.split('.').next())
            && let field = field.trim_end_matches(EACH)
            && !fields.contains(&field)
        {
            fields.push(field);
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_fields_follow_from_the_keys() {
        assert!(is_table("polling") && is_table("server.tls") && is_table("server"));
        assert!(!is_table("polling.max_interval") && !is_table("poll"));
        assert!(is_open("server.basic_auth_users") && !is_open("server.tls"));
        assert_eq!(
            fields_of("flow_health"),
            ["history", "min_history", "overdue_factor", "overdue_min"]
        );
        assert_eq!(
            fields_of(""),
            [
                "watchlist",
                "server",
                "aws",
                "polling",
                "metrics",
                "discovery",
                "flow_health",
                "push",
                "state",
                "events",
                "log"
            ]
        );
        assert!(fields_of("server").contains(&"basic_auth_users"));
        assert_eq!(
            fields_of("aws"),
            ["region", "endpoint_url", "profile", "instance"]
        );
    }

    #[test]
    fn defaults_show_as_the_reference_writes_them() {
        assert_eq!(KeyDefault::Text("5s").shown(), "`5s`");
        assert_eq!(KeyDefault::Text("").shown(), "`\"\"`");
        assert_eq!(KeyDefault::Value("2.0").toml().as_deref(), Some("2.0"));
        assert_eq!(KeyDefault::Text("5s").toml().as_deref(), Some("\"5s\""));
        assert_eq!(KeyDefault::Words("none").toml(), None);
    }
}
