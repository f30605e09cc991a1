//! The Supply Chain API as flowwatch sees it: the [`FlowExecutions`] trait (Get and List), and
//! every way a call can fail, classified into an [`ApiError`] with a bounded metric label. The
//! SDK implementation lives in [`sdk`]. For push: the SQS queue ([`sqs`]) and the status-change
//! events it holds ([`event`]).

mod body_limit;
pub mod dynamodb;
pub mod event;
mod instances;
mod sdk;
pub mod sqs;

use std::future::Future;
use std::time::Duration;

use crate::model::{ExecutionKey, FlowKey, Observation, Outcome};

pub use instances::InstanceClients;
pub use sdk::{
    SdkFlowExecutions, local_client, local_client_as, local_client_in_region, profile_region,
    shared_config,
};

/// The two calls flowwatch makes. The SDK implements them for real; the fake server answers
/// them over HTTP in tests and the demo.
pub trait FlowExecutions: Send + Sync + 'static {
    /// Reads the state of one flow execution.
    fn get(&self, key: &ExecutionKey)
    -> impl Future<Output = Result<Observation, ApiError>> + Send;

    /// Reads one page of a flow's executions.
    fn list(
        &self,
        flow: &FlowKey,
        next_token: Option<&str>,
        page_size: i32,
    ) -> impl Future<Output = Result<ListPage, ApiError>> + Send;
}

/// One page of ListDataIntegrationFlowExecutions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListPage {
    pub executions: Vec<(ExecutionKey, Observation)>,
    /// Items that break the wire format (bad ids, another flow, no status), in words: they are
    /// skipped and logged, the rest of the page counts.
    pub invalid: Vec<String>,
    pub next_token: Option<String>,
}

/// A failed call, classified by what flowwatch should do about it (DESIGN §3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("throttled (ThrottlingException): {message}")]
    Throttled {
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("service quota exceeded (ServiceQuotaExceededException): {message}")]
    QuotaExceeded {
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("not found (ResourceNotFoundException): {message}")]
    NotFound { message: String },
    #[error("access denied (AccessDeniedException): {message}")]
    AccessDenied { message: String },
    #[error("rejected as invalid (ValidationException): {message}")]
    Validation { message: String },
    #[error("conflict (ConflictException): {message}")]
    Conflict { message: String },
    #[error("server error: {message}")]
    Internal { message: String },
    /// A response that does not follow the wire format: not JSON, HTML, no `flowExecution`,
    /// or an answer about another execution. Counted as `internal_error`: it is the server's fault.
    #[error("invalid response: {message}")]
    InvalidResponse { message: String },
    #[error("request timed out")]
    Timeout,
    #[error("transport error: {message}")]
    Transport { message: String },
    /// The request could not be built here, so the API never saw it: an invalid region or
    /// endpoint, say. A fault of this process's configuration, never a verdict on the execution.
    #[error("the request could not be built: {message}")]
    Local { message: String },
    /// No credentials to sign the request with: none found, expired, or an AssumeRole that STS
    /// refused (`message` carries STS's words). The API never saw the request.
    #[error("no usable AWS credentials: {message}")]
    Credentials { message: String },
}

impl ApiError {
    pub fn outcome(&self) -> Outcome {
        match self {
            ApiError::Throttled { .. } => Outcome::Throttled,
            ApiError::QuotaExceeded { .. } => Outcome::QuotaExceeded,
            ApiError::NotFound { .. } => Outcome::NotFound,
            ApiError::AccessDenied { .. } => Outcome::AccessDenied,
            ApiError::Validation { .. } => Outcome::Validation,
            ApiError::Conflict { .. } => Outcome::Conflict,
            ApiError::Internal { .. } | ApiError::InvalidResponse { .. } => Outcome::InternalError,
            ApiError::Timeout => Outcome::Timeout,
            ApiError::Transport { .. } => Outcome::TransportError,
            ApiError::Local { .. } => Outcome::LocalError,
            ApiError::Credentials { .. } => Outcome::CredentialsError,
        }
    }

    /// The server's `x-amz-retry-after` hint, for throttling errors.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Throttled { retry_after, .. }
            | ApiError::QuotaExceeded { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The error's kind and the status code or error type it carries, for matching from a
    /// service error's code (after the SDK has cleaned it) and the HTTP status.
    pub(crate) fn from_code(
        code: Option<&str>,
        status: Option<u16>,
        message: String,
        retry_after: Option<Duration>,
    ) -> Option<Self> {
        let by_code = match code {
            Some("ThrottlingException") => Some(ApiError::Throttled {
                message: message.clone(),
                retry_after,
            }),
            Some("ServiceQuotaExceededException") => Some(ApiError::QuotaExceeded {
                message: message.clone(),
                retry_after,
            }),
            Some("ResourceNotFoundException") => Some(ApiError::NotFound {
                message: message.clone(),
            }),
            Some("AccessDeniedException") => Some(ApiError::AccessDenied {
                message: message.clone(),
            }),
            Some("ValidationException") => Some(ApiError::Validation {
                message: message.clone(),
            }),
            Some("ConflictException") => Some(ApiError::Conflict {
                message: message.clone(),
            }),
            Some("InternalServerException") => Some(ApiError::Internal {
                message: message.clone(),
            }),
            _ => None,
        };
        by_code.or_else(|| {
            Some(match status? {
                429 => ApiError::Throttled {
                    message,
                    retry_after,
                },
                402 => ApiError::QuotaExceeded {
                    message,
                    retry_after,
                },
                403 => ApiError::AccessDenied { message },
                404 => ApiError::NotFound { message },
                409 => ApiError::Conflict { message },
                400 => ApiError::Validation { message },
                200..=299 => ApiError::InvalidResponse { message },
                _ => ApiError::Internal { message },
            })
        })
    }
}
