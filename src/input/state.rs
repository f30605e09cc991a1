//! `[state]`: where flowwatch keeps what it knows. SQLite in `state.path` by default; with
//! `backend = "dynamodb"`, replicas share a DynamoDB table (`[state.dynamodb]`) and one of them
//! leads under a lease kept in it. Checked here; read by the config.

use std::path::PathBuf;
use std::time::Duration;

use crate::input::aws::{http_url_problem, region_problem};

#[derive(Debug, Clone, PartialEq)]
pub struct StateSettings {
    /// The local files: the lock, the sinks' places and, with SQLite, the database (with
    /// DynamoDB, the leader's working copy of it).
    pub path: PathBuf,
    /// `Some` with `backend = "dynamodb"`.
    pub dynamodb: Option<DynamoSettings>,
}

/// `[state.dynamodb]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamoSettings {
    pub table: String,
    /// `None`: `aws.region` (or the provider chain's).
    pub region: Option<String>,
    /// `None`: the SDK's resolution (`AWS_ENDPOINT_URL_DYNAMODB` works).
    pub endpoint_url: Option<String>,
    pub lease_duration: Duration,
    /// This replica's name in the lease.
    pub replica_id: String,
}

impl DynamoSettings {
    pub const DEFAULT_TABLE: &str = "flowwatch";
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);
    /// The shortest lease: a renewal every second, with a margin of 1 s on each side.
    pub const MIN_LEASE: Duration = Duration::from_secs(3);
    pub const MAX_LEASE: Duration = Duration::from_secs(600);
    pub const MAX_REPLICA_ID: usize = 128;
}

/// The backends `state.backend` names.
pub const BACKENDS: [&str; 2] = ["sqlite", "dynamodb"];

/// The problems of `[state.dynamodb]`, each with its key.
pub fn check(settings: &DynamoSettings) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    let table = &settings.table;
    let table_ok = (3..=255).contains(&table.len())
        && table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !table_ok {
        problems.push((
            "state.dynamodb.table",
            format!(
                "state.dynamodb.table must be a DynamoDB table name (3 to 255 of a-z, A-Z, 0-9, _ . -), not {:?}",
                crate::model::bounded(table, 80)
            ),
        ));
    }
    if let Some(problem) = settings.region.as_deref().and_then(region_problem) {
        problems.push((
            "state.dynamodb.region",
            format!("state.dynamodb.region: {problem}"),
        ));
    }
    if let Some(problem) = settings.endpoint_url.as_deref().and_then(http_url_problem) {
        problems.push((
            "state.dynamodb.endpoint_url",
            format!("state.dynamodb.endpoint_url must be an http:// or https:// URL: it {problem}"),
        ));
    }
    let lease = settings.lease_duration;
    if !(DynamoSettings::MIN_LEASE..=DynamoSettings::MAX_LEASE).contains(&lease) {
        problems.push((
            "state.dynamodb.lease_duration",
            format!(
                "state.dynamodb.lease_duration must be between 3s and 10m, not {}",
                humantime::format_duration(lease)
            ),
        ));
    }
    if let Some(problem) = replica_id_problem(&settings.replica_id) {
        problems.push(("state.dynamodb.replica_id", problem));
    }
    problems
}

fn replica_id_problem(id: &str) -> Option<String> {
    let ok = !id.is_empty()
        && id.len() <= DynamoSettings::MAX_REPLICA_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    (!ok).then(|| {
        format!(
            "state.dynamodb.replica_id must be 1 to 128 of a-z, A-Z, 0-9, _ . -, not {:?}",
            crate::model::bounded(id, 80)
        )
    })
}

/// This host's name, the default `replica_id` (a pod's name on Kubernetes); `None` when it
/// cannot be read.
pub fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DynamoSettings {
        DynamoSettings {
            table: "flowwatch".into(),
            region: None,
            endpoint_url: None,
            lease_duration: DynamoSettings::DEFAULT_LEASE,
            replica_id: "flowwatch-0".into(),
        }
    }

    #[test]
    fn each_bad_value_is_named_with_its_key() {
        assert!(check(&settings()).is_empty());
        let bad = DynamoSettings {
            table: "a b".into(),
            region: Some("EU".into()),
            endpoint_url: Some("ftp://x".into()),
            lease_duration: Duration::from_secs(2),
            replica_id: "pod/0".into(),
        };
        let keys: Vec<&str> = check(&bad).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "state.dynamodb.table",
                "state.dynamodb.region",
                "state.dynamodb.endpoint_url",
                "state.dynamodb.lease_duration",
                "state.dynamodb.replica_id"
            ]
        );
        let long = DynamoSettings {
            lease_duration: Duration::from_secs(601),
            replica_id: "r".repeat(129),
            ..settings()
        };
        assert_eq!(check(&long).len(), 2);
    }
}
