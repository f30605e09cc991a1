//! The AWS SDK implementation of [`FlowExecutions`]: client set-up (retries off, timeouts,
//! endpoint override), the mapping of answers to [`Observation`]s, and of SDK errors to
//! [`ApiError`]s.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_supplychain::Client;
use aws_sdk_supplychain::config::SharedCredentialsProvider;
use aws_sdk_supplychain::config::http::HttpResponse;
use aws_sdk_supplychain::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_supplychain::types::DataIntegrationFlowExecution;
use aws_smithy_types::retry::{ErrorKind, ProvideErrorKind};

use super::{ApiError, FlowExecutions, ListPage};
use crate::api::body_limit::{BodyLimit, too_large};
use crate::input::config::AwsSettings;
use crate::model::{
    ApiStatus, DatasetSource, ExecutionKey, FlowKey, Observation, S3Source, SourceInfo, bounded,
    bounds,
};

/// The SDK implementation of [`FlowExecutions`].
#[derive(Clone, Debug)]
pub struct SdkFlowExecutions {
    client: Client,
}

impl SdkFlowExecutions {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// The Supply Chain client on `shared`, with `aws.endpoint_url` when set. SDK retries are
    /// off: flowwatch's own pacing is the single source of retries.
    pub fn from_shared(shared: &aws_config::SdkConfig, settings: &AwsSettings) -> Self {
        let mut config =
            aws_sdk_supplychain::config::Builder::from(shared).interceptor(BodyLimit::API);
        if let Some(url) = &settings.endpoint_url {
            config = config.endpoint_url(url);
        }
        Self::new(Client::from_conf(config.build()))
    }
}

/// The AWS configuration every client shares: aws-config's default provider chain
/// (environment, profile, SSO, web identity, IMDS) with the region and profile of `settings`,
/// SDK retries off, and `request_timeout` per call. The endpoint override of each service is
/// set on its own client, so `aws.endpoint_url` never sends SQS calls to Supply Chain.
pub async fn shared_config(
    settings: &AwsSettings,
    request_timeout: Duration,
) -> Result<aws_config::SdkConfig, String> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
        .timeout_config(timeouts(request_timeout));
    if let Some(region) = &settings.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(profile) = &settings.profile {
        loader = loader.profile_name(profile);
    }
    let config = loader.load().await;
    if config.region().is_none() {
        return Err("no AWS region configured: set aws.region in the config, \
                    FLOWWATCH_AWS__REGION, AWS_REGION, or a region in the AWS profile"
            .to_string());
    }
    if config.credentials_provider().is_none() {
        return Err("no AWS credentials provider is available".to_string());
    }
    Ok(config)
}

/// The region the AWS profile names, read from the profile files alone (no instance metadata):
/// what the SDK would use when neither `aws.region` nor the environment sets one.
pub async fn profile_region(settings: &AwsSettings) -> Option<String> {
    use aws_config::meta::region::ProvideRegion;
    let mut provider = aws_config::profile::ProfileFileRegionProvider::builder();
    if let Some(profile) = &settings.profile {
        provider = provider.profile_name(profile);
    }
    provider.build().region().await.map(|r| r.to_string())
}

/// The per-request timeout covers the whole call; connecting gets a tighter bound of its own.
/// With SDK retries off a call is one attempt, so no attempt timeout (a second timer per call)
/// is set beside it. The SDK's stalled-stream protection, a throughput monitor on every body
/// (meant for long downloads), is turned off too: a stalled answer is cut by this timeout.
pub fn timeouts(request_timeout: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .operation_timeout(request_timeout)
        .connect_timeout(request_timeout.min(Duration::from_secs(5)))
        .build()
}

impl FlowExecutions for SdkFlowExecutions {
    async fn get(&self, key: &ExecutionKey) -> Result<Observation, ApiError> {
        let result = self
            .client
            .get_data_integration_flow_execution()
            .instance_id(&*key.instance_id)
            .flow_name(&*key.flow_name)
            .execution_id(&*key.execution_id)
            .send()
            .await;
        match result {
            Ok(output) => observation_from(key, output.flow_execution()),
            Err(e) => Err(classify(e)),
        }
    }

    async fn list(
        &self,
        flow: &FlowKey,
        next_token: Option<&str>,
        page_size: i32,
    ) -> Result<ListPage, ApiError> {
        let result = self
            .client
            .list_data_integration_flow_executions()
            .instance_id(&flow.instance_id)
            .flow_name(&flow.flow_name)
            .max_results(page_size)
            .set_next_token(next_token.map(str::to_string))
            .send()
            .await;
        let output = result.map_err(classify)?;
        let mut page = ListPage {
            next_token: output
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string),
            ..ListPage::default()
        };
        if page.next_token.as_deref() == next_token && next_token.is_some() {
            // A token that leads back to itself would page forever.
            return Err(ApiError::InvalidResponse {
                message: "the response's nextToken is the token of the request".to_string(),
            });
        }
        for fe in output.flow_executions() {
            let key = ExecutionKey::new(fe.instance_id(), fe.flow_name(), fe.execution_id())
                .map_err(|e| format!("an item with {e}"))
                .and_then(|key| {
                    if FlowKey::of(&key) == *flow {
                        Ok(key)
                    } else {
                        Err(format!("an item of another flow ({key})"))
                    }
                });
            match key.and_then(|key| {
                observation_of(fe)
                    .map(|o| (key, o))
                    .map_err(|e| e.to_string())
            }) {
                Ok(item) => page.executions.push(item),
                Err(problem) => page.invalid.push(problem),
            }
        }
        Ok(page)
    }
}

fn observation_from(
    key: &ExecutionKey,
    execution: Option<&DataIntegrationFlowExecution>,
) -> Result<Observation, ApiError> {
    let Some(fe) = execution else {
        return Err(ApiError::InvalidResponse {
            message: "the response has no flowExecution".to_string(),
        });
    };
    // A `{}` body parses into empty ids rather than failing, so check what the answer is about.
    if fe.instance_id().is_empty() && fe.execution_id().is_empty() {
        return Err(ApiError::InvalidResponse {
            message: "the response's flowExecution has no instanceId or executionId".to_string(),
        });
    }
    if fe.instance_id() != &*key.instance_id
        || fe.flow_name() != &*key.flow_name
        || fe.execution_id() != &*key.execution_id
    {
        return Err(ApiError::InvalidResponse {
            message: format!(
                "the response describes {}/{}/{}, not the execution asked for",
                fe.instance_id(),
                fe.flow_name(),
                fe.execution_id()
            ),
        });
    }
    observation_of(fe)
}

/// The fields of one flow execution, whose ids the caller has checked.
fn observation_of(fe: &DataIntegrationFlowExecution) -> Result<Observation, ApiError> {
    let status = match fe.status().map(|s| s.as_str()) {
        Some("IN_PROGRESS") => ApiStatus::InProgress,
        Some("SUCCEEDED") => ApiStatus::Succeeded,
        Some("FAILED") => ApiStatus::Failed,
        Some(other) => ApiStatus::Unrecognised(bounded(other, bounds::STATUS)),
        None => {
            return Err(ApiError::InvalidResponse {
                message: "the response's flowExecution has no status".to_string(),
            });
        }
    };
    let location = |text: &str| bounded(text, bounds::LOCATION);
    let source_info = fe.source_info().map(|si| SourceInfo {
        source_type: bounded(si.source_type().as_str(), bounds::STATUS),
        s3_source: si.s3_source().map(|s| S3Source {
            bucket_name: location(s.bucket_name()),
            key: location(s.key()),
        }),
        dataset_source: si.dataset_source().map(|d| DatasetSource {
            dataset_identifier: location(d.dataset_identifier()),
        }),
    });
    Ok(Observation {
        status,
        source_info,
        message: fe.message().map(|m| bounded(m, bounds::MESSAGE)),
        start_time: fe.start_time().map(|t| t.as_secs_f64()),
        end_time: fe.end_time().map(|t| t.as_secs_f64()),
        diagnostic_reports_root_s3_uri: fe
            .output_metadata()
            .and_then(|m| m.diagnostic_reports_root_s3_uri())
            .map(location),
    })
}

/// `x-amz-retry-after` carries milliseconds, as the AWS SDKs read it.
fn retry_after(response: &HttpResponse) -> Option<Duration> {
    response
        .headers()
        .get("x-amz-retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// Classifies by the error code first, then the SDK's retry kind, then the HTTP status.
pub fn classify<E>(error: SdkError<E, HttpResponse>) -> ApiError
where
    E: ProvideErrorMetadata + ProvideErrorKind + std::error::Error + 'static,
{
    if let Some(too_large) = too_large(&error) {
        return ApiError::Internal {
            message: too_large.to_string(),
        };
    }
    if credentials_failure(&error).is_some() {
        return ApiError::Credentials {
            message: bounded(&DisplayErrorContext(&error).to_string(), bounds::MESSAGE),
        };
    }
    match &error {
        SdkError::TimeoutError(_) => return ApiError::Timeout,
        SdkError::DispatchFailure(failure) => {
            if failure.is_timeout() {
                return ApiError::Timeout;
            }
            return ApiError::Transport {
                message: DisplayErrorContext(&error).to_string(),
            };
        }
        // Not the API's verdict: the request never left this process.
        SdkError::ConstructionFailure(_) => {
            return ApiError::Local {
                message: DisplayErrorContext(&error).to_string(),
            };
        }
        _ => {}
    }
    let raw = error.raw_response();
    let status = raw.map(|r| r.status().as_u16());
    let hint = raw.and_then(retry_after);
    if let SdkError::ServiceError(service) = &error {
        let err = service.err();
        let code = ProvideErrorMetadata::code(err);
        let message = err
            .message()
            .map(|m| bounded(m, bounds::MESSAGE))
            .unwrap_or_else(|| match code {
                Some(code) => code.to_string(),
                None => format!(
                    "unexpected response (HTTP {})",
                    status.map_or("?".to_string(), |s| s.to_string())
                ),
            });
        if code.is_none()
            && matches!(
                ProvideErrorKind::retryable_error_kind(err),
                Some(ErrorKind::ThrottlingError)
            )
        {
            return ApiError::Throttled {
                message,
                retry_after: hint,
            };
        }
        if let Some(classified) = ApiError::from_code(code, status, message, hint) {
            return classified;
        }
    }
    if let SdkError::ResponseError(_) = &error {
        let message = format!(
            "unreadable response (HTTP {}): {}",
            status.map_or("?".to_string(), |s| s.to_string()),
            DisplayErrorContext(&error)
        );
        return match status {
            Some(s) if (200..300).contains(&s) => ApiError::InvalidResponse { message },
            _ => ApiError::Internal { message },
        };
    }
    ApiError::Transport {
        message: DisplayErrorContext(&error).to_string(),
    }
}

/// The credentials provider's failure behind `error`, when that is why the call failed: no
/// credentials found, expired ones, or an AssumeRole that STS refused. The SDK reports it as a
/// failed dispatch, though the request never left this process.
fn credentials_failure<'e>(
    error: &'e (dyn std::error::Error + 'static),
) -> Option<&'e CredentialsError> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<CredentialsError>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// The AWS configuration of local endpoints: fixed credentials and region, bypassing the
/// provider chain, with the same retries (none) and timeouts as [`shared_config`]. For
/// `flowwatch demo`, the tests and the benchmark, which talk to fakes and moto.
pub fn local_config(request_timeout: Duration) -> aws_config::SdkConfig {
    let credentials = aws_sdk_supplychain::config::Credentials::new(
        "AKIDFLOWWATCHLOCAL",
        "local-fake-secret-not-a-real-key",
        None,
        None,
        "flowwatch-static",
    );
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .retry_config(RetryConfig::disabled())
        .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
        .timeout_config(timeouts(request_timeout))
        .build()
}

/// A client for a local endpoint, on [`local_config`].
pub fn local_client(endpoint_url: &str, request_timeout: Duration) -> SdkFlowExecutions {
    let settings = AwsSettings {
        endpoint_url: Some(endpoint_url.to_string()),
        ..AwsSettings::default()
    };
    SdkFlowExecutions::from_shared(&local_config(request_timeout), &settings)
}

/// A client for a local endpoint in `region`, unchecked: for tests of a request the SDK cannot
/// build, which the config's checks keep out of the daemon.
pub fn local_client_in_region(
    endpoint_url: &str,
    request_timeout: Duration,
    region: &str,
) -> SdkFlowExecutions {
    local_client_as(endpoint_url, request_timeout, "AKIDFLOWWATCHLOCAL", region)
}

/// A client for a local endpoint that signs with `access_key` for `region`: for tests of what
/// a fake sees of several accounts and regions.
pub fn local_client_as(
    endpoint_url: &str,
    request_timeout: Duration,
    access_key: &str,
    region: &str,
) -> SdkFlowExecutions {
    let settings = AwsSettings {
        endpoint_url: Some(endpoint_url.to_string()),
        ..AwsSettings::default()
    };
    let credentials = aws_sdk_supplychain::config::Credentials::new(
        access_key,
        "local-fake-secret-not-a-real-key",
        None,
        None,
        "flowwatch-static",
    );
    let shared = local_config(request_timeout)
        .into_builder()
        .region(aws_config::Region::new(region.to_string()))
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .build();
    SdkFlowExecutions::from_shared(&shared, &settings)
}
