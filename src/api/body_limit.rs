//! A bound on the size of an API answer: each response body is read through [`Limited`], which
//! fails the read past its limit ([`MAX_BODY_BYTES`] for Supply Chain, [`MAX_SQS_BODY_BYTES`]
//! for SQS, [`MAX_DYNAMODB_BODY_BYTES`] for DynamoDB) without keeping the excess. The SDK then drops the
//! connection, and the call counts as `internal_error`: one huge (or endless) answer cannot
//! grow flowwatch's memory, an event, a database row or `/status`.

use std::pin::Pin;
use std::task::{Context, Poll};

use aws_sdk_supplychain::config::interceptors::BeforeDeserializationInterceptorContextMut;
use aws_sdk_supplychain::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// The largest Supply Chain answer body flowwatch reads. An execution or a List page of 20 is a
/// few KiB.
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;
/// The largest SQS answer body flowwatch reads: ten messages of SQS's largest size (1 MiB),
/// escaped in JSON. An EventBridge event is at most 256 KiB.
pub const MAX_SQS_BODY_BYTES: u64 = 24 * 1024 * 1024;

/// The largest DynamoDB answer body flowwatch reads: a Query page holds at most 1 MB of items,
/// which their JSON encoding can about double.
pub const MAX_DYNAMODB_BODY_BYTES: u64 = 4 * 1024 * 1024;

/// The read of an answer stopped at its limit.
#[derive(Debug, thiserror::Error)]
#[error("the answer is larger than {0} bytes; it was not read further")]
pub struct BodyTooLarge(pub u64);

/// The interceptor that puts every response body behind [`Limited`].
#[derive(Debug)]
pub struct BodyLimit(u64);

impl BodyLimit {
    pub const API: BodyLimit = BodyLimit(MAX_BODY_BYTES);
    pub const SQS: BodyLimit = BodyLimit(MAX_SQS_BODY_BYTES);
    pub const DYNAMODB: BodyLimit = BodyLimit(MAX_DYNAMODB_BODY_BYTES);
}

impl Intercept for BodyLimit {
    fn name(&self) -> &'static str {
        "flowwatch-body-limit"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let limit = self.0;
        let body = context.response_mut().take_body();
        *context.response_mut().body_mut() = body.map(move |inner| {
            SdkBody::from_body_1_x(Limited {
                inner,
                read: 0,
                limit,
            })
        });
        Ok(())
    }
}

/// A body that fails once more than `limit` bytes came.
struct Limited {
    inner: SdkBody,
    read: u64,
    limit: u64,
}

impl Body for Limited {
    type Data = Bytes;
    type Error = aws_smithy_runtime_api::box_error::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            self.read += data.len() as u64;
            if self.read > self.limit {
                return Poll::Ready(Some(Err(Box::new(BodyTooLarge(self.limit)))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The [`BodyTooLarge`] that `error` is, or comes from.
pub fn too_large<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTooLarge> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<BodyTooLarge>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}
