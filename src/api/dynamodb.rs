//! The state table on DynamoDB that replicas share: its client, the check of its key schema, and
//! what a failed call means to the lease (a condition that did not hold, or anything else).

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{KeySchemaElement, KeyType, ScalarAttributeType, TableDescription};
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::retry::ProvideErrorKind;

use super::body_limit::BodyLimit;
use super::sdk::{classify, local_config, timeouts};
use crate::model::{Operation, Outcome};

/// The partition key and sort key every item has, both strings.
pub const PARTITION_KEY: &str = "pk";
pub const SORT_KEY: &str = "sk";

/// The table and the client that reaches it.
#[derive(Debug, Clone)]
pub struct StateTable {
    client: Client,
    name: String,
    region: String,
    observer: Observer,
}

/// Told of every call to the table, with its outcome (for `flowwatch_api_requests_total`).
#[derive(Clone, Default)]
pub struct Observer(Option<Arc<dyn Fn(Operation, Outcome) + Send + Sync>>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Observer" } else { "None" })
    }
}

/// Why the table cannot be used; the daemon exits 3 with this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error(
        "DynamoDB table {table:?} does not exist in {region}: create it with deploy/aws/flowwatch-state.yaml, or set state.dynamodb.table"
    )]
    Missing { table: String, region: String },
    #[error(
        "DynamoDB table {table:?} in {region} has the key schema {found}, not pk (S, HASH) and sk (S, RANGE): it is not flowwatch's table"
    )]
    KeySchema {
        table: String,
        region: String,
        found: String,
    },
    #[error("cannot describe DynamoDB table {table:?} in {region}: {message}")]
    Unreadable {
        table: String,
        region: String,
        message: String,
    },
}

/// What a failed call means.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// A condition of the write did not hold: someone else changed the item first.
    #[error("a condition on the lease did not hold: another replica changed it first")]
    Conflict,
    /// Anything else (throttling, a timeout, no way to the table, refused access), in the SDK's
    /// words: tried again later.
    #[error("{0}")]
    Other(String),
}

impl StateTable {
    /// The table `name` on `shared`'s credentials, in `region` (else `shared`'s), at
    /// `endpoint_url` when set (`AWS_ENDPOINT_URL_DYNAMODB` works too, through `shared`).
    pub fn from_shared(
        shared: &aws_config::SdkConfig,
        name: &str,
        region: Option<&str>,
        endpoint_url: Option<&str>,
        request_timeout: Duration,
    ) -> Self {
        let mut config = aws_sdk_dynamodb::config::Builder::from(shared)
            .timeout_config(timeouts(request_timeout))
            .interceptor(BodyLimit::DYNAMODB);
        if let Some(region) = region {
            config = config.region(aws_config::Region::new(region.to_string()));
        }
        if let Some(url) = endpoint_url {
            config = config.endpoint_url(url);
        }
        let config = config.build();
        let region = config.region().map(|r| r.to_string()).unwrap_or_default();
        Self {
            client: Client::from_conf(config),
            name: name.to_string(),
            region,
            observer: Observer::default(),
        }
    }

    /// The same table, telling `observer` of every call from here on.
    pub fn observed(
        mut self,
        observer: impl Fn(Operation, Outcome) + Send + Sync + 'static,
    ) -> Self {
        self.observer = Observer(Some(Arc::new(observer)));
        self
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// A call's result as the lease and the replica see it, with its outcome told to the
    /// observer.
    pub fn judge<T, E>(
        &self,
        operation: Operation,
        result: Result<T, SdkError<E, HttpResponse>>,
    ) -> Result<T, Failure>
    where
        E: ProvideErrorMetadata + ProvideErrorKind + std::error::Error + 'static,
    {
        let (result, outcome) = match result {
            Ok(value) => (Ok(value), Outcome::Success),
            Err(error) => {
                let judged = failure(&error);
                let outcome = match (&judged, error.code()) {
                    (Failure::Conflict, _) => Outcome::Conflict,
                    (
                        _,
                        Some(
                            "ProvisionedThroughputExceededException"
                            | "RequestLimitExceeded"
                            | "ThrottlingException",
                        ),
                    ) => Outcome::Throttled,
                    _ => classify(error).outcome(),
                };
                (Err(judged), outcome)
            }
        };
        if let Some(observer) = &self.observer.0 {
            observer(operation, outcome);
        }
        result
    }

    /// The table `name` at a local `endpoint_url` with static test credentials: for tests and
    /// the benchmark, which talk to moto.
    pub fn local(endpoint_url: &str, name: &str, request_timeout: Duration) -> Self {
        let shared = local_config(request_timeout);
        Self::from_shared(&shared, name, None, Some(endpoint_url), request_timeout)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the table exists with flowwatch's key schema.
    pub async fn check(&self) -> Result<(), TableError> {
        let described = self
            .client
            .describe_table()
            .table_name(&self.name)
            .send()
            .await;
        if let Some(observer) = &self.observer.0 {
            let outcome = match &described {
                Ok(_) => Outcome::Success,
                Err(e) if e.code() == Some("ResourceNotFoundException") => Outcome::NotFound,
                Err(_) => Outcome::InternalError,
            };
            observer(Operation::DescribeTable, outcome);
        }
        let table = match described {
            Ok(answer) => answer.table,
            Err(e) if e.code() == Some("ResourceNotFoundException") => {
                return Err(TableError::Missing {
                    table: self.name.clone(),
                    region: self.region.clone(),
                });
            }
            Err(e) => {
                return Err(TableError::Unreadable {
                    table: self.name.clone(),
                    region: self.region.clone(),
                    message: DisplayErrorContext(&e).to_string(),
                });
            }
        };
        match table.as_ref().and_then(key_schema_problem) {
            None => Ok(()),
            Some(found) => Err(TableError::KeySchema {
                table: self.name.clone(),
                region: self.region.clone(),
                found,
            }),
        }
    }
}

/// The table's key schema as words, when it is not pk (S, HASH) with sk (S, RANGE).
fn key_schema_problem(table: &TableDescription) -> Option<String> {
    let kind = |name: &str| {
        table
            .attribute_definitions()
            .iter()
            .find(|a| a.attribute_name() == name)
            .map(|a| a.attribute_type().clone())
    };
    let keys = table.key_schema();
    let is = |key: &KeySchemaElement, name: &str, key_type: KeyType| {
        key.attribute_name() == name
            && *key.key_type() == key_type
            && kind(name) == Some(ScalarAttributeType::S)
    };
    let right = keys.len() == 2
        && keys.iter().any(|k| is(k, PARTITION_KEY, KeyType::Hash))
        && keys.iter().any(|k| is(k, SORT_KEY, KeyType::Range));
    (!right).then(|| {
        let found: Vec<String> = keys
            .iter()
            .map(|k| {
                let kind = kind(k.attribute_name()).map_or("?".to_string(), |t| t.to_string());
                format!("{} ({kind}, {})", k.attribute_name(), k.key_type())
            })
            .collect();
        found.join(" and ")
    })
}

/// What a failed call means: a condition that did not hold (alone, or as the reason a
/// transaction was cancelled), or anything else.
pub fn failure<E, R>(error: &SdkError<E, R>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let conflict = match error.code() {
        Some("ConditionalCheckFailedException") => true,
        Some("TransactionCanceledException") => error
            .message()
            .is_some_and(|m| m.contains("ConditionalCheckFailed")),
        _ => false,
    };
    if conflict {
        Failure::Conflict
    } else {
        Failure::Other(DisplayErrorContext(error).to_string())
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::types::AttributeDefinition;

    use super::*;

    fn table(keys: &[(&str, KeyType, ScalarAttributeType)]) -> TableDescription {
        let mut t = TableDescription::builder();
        for (name, key_type, kind) in keys {
            t = t
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name(*name)
                        .key_type(key_type.clone())
                        .build()
                        .expect("key"),
                )
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(*name)
                        .attribute_type(kind.clone())
                        .build()
                        .expect("definition"),
                );
        }
        t.build()
    }

    #[test]
    fn only_pk_and_sk_as_strings_is_flowwatch_s_key_schema() {
        use KeyType::{Hash, Range};
        use ScalarAttributeType::{N, S};
        let ours = table(&[("pk", Hash, S), ("sk", Range, S)]);
        assert_eq!(key_schema_problem(&ours), None);
        let cases = [
            (table(&[("pk", Hash, S)]), "pk (S, HASH)"),
            (
                table(&[("pk", Hash, S), ("sk", Range, N)]),
                "pk (S, HASH) and sk (N, RANGE)",
            ),
            (
                table(&[("id", Hash, S), ("sk", Range, S)]),
                "id (S, HASH) and sk (S, RANGE)",
            ),
        ];
        for (table, words) in cases {
            assert_eq!(key_schema_problem(&table).as_deref(), Some(words));
        }
    }
}
