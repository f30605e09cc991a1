//! The SQS queue push reads: long-polled ReceiveMessage and DeleteMessageBatch through
//! aws-sdk-sqs, built on the same AWS configuration as the Supply Chain client, with failures
//! classified into the same [`ApiError`]s.

use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;

use super::ApiError;
use crate::api::body_limit::BodyLimit;
use crate::api::sdk::{classify, local_config, timeouts};
use crate::input::push::PushSettings;
use crate::model::{bounded, bounds};

/// Messages one ReceiveMessage asks for, and receipts one DeleteMessageBatch takes (SQS's most).
pub const BATCH: usize = 10;

/// One message as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub message_id: String,
    /// What deletes it; empty when SQS sent none (it cannot be deleted then).
    pub receipt_handle: String,
    pub body: String,
}

/// The queue of `[push]`.
#[derive(Debug, Clone)]
pub struct PushQueue {
    client: Client,
    url: String,
    /// `url` without any `user:password@`: what logs and `/status` show.
    shown_url: String,
    wait: Duration,
}

impl PushQueue {
    /// The queue on the shared AWS configuration: its region is the queue URL's when that names
    /// one; its endpoint is `push.endpoint_url`, else the SDK's resolution (which honours
    /// `AWS_ENDPOINT_URL_SQS`). A long poll may take `wait_time` plus `request_timeout`.
    pub fn from_shared(
        shared: &aws_config::SdkConfig,
        push: &PushSettings,
        request_timeout: Duration,
    ) -> Self {
        let mut config = aws_sdk_sqs::config::Builder::from(shared)
            .timeout_config(timeouts(push.wait_time + request_timeout))
            .interceptor(BodyLimit::SQS);
        if let Some(region) = push.queue_region() {
            config = config.region(aws_config::Region::new(region));
        }
        if let Some(url) = &push.endpoint_url {
            config = config.endpoint_url(url);
        }
        Self::new(Client::from_conf(config.build()), push)
    }

    /// A queue at `push.endpoint_url` on [`local_config`], bypassing the provider chain: for
    /// tests and the benchmark, which talk to a local SQS.
    pub fn local_queue(push: &PushSettings, request_timeout: Duration) -> Self {
        Self::from_shared(&local_config(request_timeout), push, request_timeout)
    }

    fn new(client: Client, push: &PushSettings) -> Self {
        Self {
            client,
            url: push.queue_url.clone(),
            shown_url: crate::model::without_userinfo(&push.queue_url),
            wait: push.wait_time,
        }
    }

    /// The queue's URL without credentials, for logs and `/status`.
    pub fn shown_url(&self) -> &str {
        &self.shown_url
    }

    /// Up to [`BATCH`] messages: a long poll (`wait`), or else one that answers at once.
    pub async fn receive(&self, wait: bool) -> Result<Vec<Received>, ApiError> {
        let wait = if wait { self.wait.as_secs() } else { 0 };
        let output = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(BATCH as i32)
            .wait_time_seconds(i32::try_from(wait).unwrap_or(20))
            .send()
            .await
            .map_err(classify_sqs)?;
        Ok(output
            .messages()
            .iter()
            .map(|m| Received {
                message_id: bounded(m.message_id().unwrap_or_default(), 128),
                receipt_handle: m.receipt_handle().unwrap_or_default().to_string(),
                body: m.body().unwrap_or_default().to_string(),
            })
            .collect())
    }

    /// Deletes up to [`BATCH`] messages by receipt handle; returns how many SQS did not delete
    /// (they come back after their visibility timeout, and applying them again changes nothing).
    pub async fn delete(&self, receipts: &[String]) -> Result<usize, ApiError> {
        let entries: Vec<DeleteMessageBatchRequestEntry> = receipts
            .iter()
            .enumerate()
            .filter_map(|(n, receipt)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(n.to_string())
                    .receipt_handle(receipt)
                    .build()
                    .ok()
            })
            .collect();
        if entries.is_empty() {
            return Ok(0);
        }
        let output = self
            .client
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(classify_sqs)?;
        Ok(output.failed().len())
    }
}

/// SQS's own error codes first (its JSON protocol names them without the `Exception` suffix the
/// Supply Chain table knows), then the common classification.
fn classify_sqs<E>(error: SdkError<E, aws_sdk_sqs::config::http::HttpResponse>) -> ApiError
where
    E: ProvideErrorMetadata
        + aws_smithy_types::retry::ProvideErrorKind
        + std::error::Error
        + 'static,
{
    if let SdkError::ServiceError(service) = &error {
        let err = service.err();
        let message = || {
            bounded(
                err.message()
                    .or(ProvideErrorMetadata::code(err))
                    .unwrap_or_default(),
                bounds::MESSAGE,
            )
        };
        match ProvideErrorMetadata::code(err) {
            Some("QueueDoesNotExist" | "AWS.SimpleQueueService.NonExistentQueue") => {
                return ApiError::NotFound { message: message() };
            }
            Some("AccessDenied" | "KmsAccessDenied" | "InvalidSecurity") => {
                return ApiError::AccessDenied { message: message() };
            }
            Some("RequestThrottled" | "OverLimit" | "KmsThrottled") => {
                return ApiError::Throttled {
                    message: message(),
                    retry_after: None,
                };
            }
            _ => {}
        }
    }
    classify(error)
}
