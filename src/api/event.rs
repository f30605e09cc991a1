//! AWS Supply Chain's status-change events, as an EventBridge rule's SQS target receives them:
//! the raw EventBridge envelope, its `detail` read into an [`Observation`] of one execution.
//! Delivery is at least once and out of order, and every field may be missing; what cannot be
//! read at all is an error in words, and the message is left for the dead-letter queue.

use serde::Deserialize;
use serde_json::Value;

use crate::model::{
    ApiStatus, DatasetSource, ExecutionKey, Observation, S3Source, SourceInfo, bounded, bounds,
};

/// The envelope's `source` of AWS Supply Chain events.
pub const SOURCE: &str = "aws.supplychain";
/// The `detail-type` of a flow execution's status change.
pub const DETAIL_TYPE: &str = "AWS Supply Chain Data Integration Status Change";

/// One status change, as pushed.
#[derive(Debug, Clone, PartialEq)]
pub struct PushedEvent {
    pub key: ExecutionKey,
    pub observation: Observation,
    /// The envelope's `time` (unix seconds): when EventBridge received the change.
    pub time: Option<f64>,
    pub origin: Origin,
}

/// Where an event says it comes from: the account and region of its envelope, and those its
/// `flowArn` names. Anyone allowed to send to the queue can write any of them, so they only
/// catch an event that contradicts itself or the instance flowwatch reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Origin {
    pub envelope_account: Option<String>,
    pub envelope_region: Option<String>,
    pub arn_account: String,
    pub arn_region: String,
}

impl Origin {
    /// Why the event cannot come from its instance, if it cannot: its envelope's account or
    /// region is not its `flowArn`'s, or its `flowArn`'s region or account is not where flowwatch
    /// reads the instance (`region` and `account`, each when known).
    pub fn problem(&self, region: Option<&str>, account: Option<&str>) -> Option<String> {
        let differs = |envelope: &Option<String>, arn: &str| {
            envelope
                .as_deref()
                .is_some_and(|e| !e.is_empty() && e != arn)
        };
        if differs(&self.envelope_account, &self.arn_account) {
            return Some(format!(
                "the envelope's account {:?} is not the account of its flowArn ({:?})",
                bounded(self.envelope_account.as_deref().unwrap_or_default(), 40),
                bounded(&self.arn_account, 40)
            ));
        }
        if differs(&self.envelope_region, &self.arn_region) {
            return Some(format!(
                "the envelope's region {:?} is not the region of its flowArn ({:?})",
                bounded(self.envelope_region.as_deref().unwrap_or_default(), 40),
                bounded(&self.arn_region, 40)
            ));
        }
        if let Some(region) = region.filter(|r| *r != self.arn_region) {
            return Some(format!(
                "its flowArn's region {:?} is not {region:?}, where flowwatch reads the instance",
                bounded(&self.arn_region, 40)
            ));
        }
        match account {
            Some(account) if account != self.arn_account => Some(format!(
                "its flowArn's account {:?} is not {account:?}, the account of the instance's role",
                bounded(&self.arn_account, 40)
            )),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    source: Option<String>,
    #[serde(rename = "detail-type")]
    detail_type: Option<String>,
    time: Option<Value>,
    account: Option<String>,
    region: Option<String>,
    detail: Option<Detail>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Detail {
    instance_id: Option<String>,
    flow_arn: Option<String>,
    flow_execution_id: Option<String>,
    status: Option<String>,
    start_time: Option<Value>,
    end_time: Option<Value>,
    message: Option<String>,
    source_type: Option<String>,
    source_info: Option<WireSourceInfo>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSourceInfo {
    s3_source: Option<WireS3>,
    dataset_source: Option<WireDataset>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireS3 {
    bucket_name: Option<String>,
    key: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireDataset {
    dataset_identifier: Option<String>,
}

/// Reads one message body.
pub fn parse(body: &str) -> Result<PushedEvent, String> {
    let envelope: Envelope =
        serde_json::from_str(body).map_err(|e| format!("not an EventBridge event in JSON: {e}"))?;
    let (source, detail_type) = (envelope.source.as_deref(), envelope.detail_type.as_deref());
    if source != Some(SOURCE) || detail_type != Some(DETAIL_TYPE) {
        return Err(format!(
            "not an AWS Supply Chain status change: source {:?}, detail-type {:?}",
            bounded(source.unwrap_or_default(), 100),
            bounded(detail_type.unwrap_or_default(), 100)
        ));
    }
    let detail = envelope.detail.ok_or("the event has no detail")?;
    let (key, arn_region, arn_account) = key_of(&detail)?;
    let status = present(detail.status.as_deref())
        .ok_or("the event's detail has no status")?
        .to_string();
    let observation = Observation {
        status: ApiStatus::from(bounded(&status, bounds::STATUS)),
        source_info: source_info(detail.source_type.as_deref(), detail.source_info),
        message: present(detail.message.as_deref()).map(|m| bounded(m, bounds::MESSAGE)),
        start_time: time_of(detail.start_time.as_ref(), "startTime")?,
        end_time: time_of(detail.end_time.as_ref(), "endTime")?,
        diagnostic_reports_root_s3_uri: None,
    };
    Ok(PushedEvent {
        key,
        observation,
        time: time_of(envelope.time.as_ref(), "time")?,
        origin: Origin {
            envelope_account: envelope.account,
            envelope_region: envelope.region,
            arn_account,
            arn_region,
        },
    })
}

/// The execution: the flow's name from `flowArn`
/// (`arn:aws:scn:{region}:{account}:instance/{id}/data-integration-flows/{name}`), the
/// instance from `instanceId` or the ARN (which must agree), and `flowExecutionId`; with the
/// ARN's region and account.
fn key_of(detail: &Detail) -> Result<(ExecutionKey, String, String), String> {
    let arn = present(detail.flow_arn.as_deref()).ok_or("the event's detail has no flowArn")?;
    let fields: Vec<&str> = arn
        .strip_prefix("arn:")
        .map(|rest| rest.splitn(5, ':').collect())
        .unwrap_or_default();
    let [_partition, _service, region, account, resource] = fields.as_slice() else {
        return Err(format!("flowArn {:?} is not an ARN", bounded(arn, 200)));
    };
    let parts: Vec<&str> = resource.split('/').collect();
    let [
        "instance",
        arn_instance,
        "data-integration-flows",
        flow_name,
    ] = parts.as_slice()
    else {
        return Err(format!(
            "flowArn {:?} does not name a data integration flow",
            bounded(arn, 200)
        ));
    };
    let instance = present(detail.instance_id.as_deref()).unwrap_or(arn_instance);
    if instance != *arn_instance {
        return Err(format!(
            "instanceId {:?} is not the instance of flowArn {:?}",
            bounded(instance, 100),
            bounded(arn, 200)
        ));
    }
    let execution = present(detail.flow_execution_id.as_deref())
        .ok_or("the event's detail has no flowExecutionId")?;
    let key = ExecutionKey::new(instance, *flow_name, execution)
        .map_err(|e| format!("the event names no valid execution: {e}"))?;
    Ok((
        key,
        bounded(region, 40).to_string(),
        bounded(account, 40).to_string(),
    ))
}

/// `""` means absent, as the event writes a field that has no value yet.
fn present(text: Option<&str>) -> Option<&str> {
    text.filter(|t| !t.is_empty())
}

/// An ISO 8601 time (`2024-03-30T12:26:13Z`, with fractions or a `±HH:MM` offset too), or
/// epoch seconds, as unix seconds; `""` or absent is none.
fn time_of(value: Option<&Value>, field: &str) -> Result<Option<f64>, String> {
    let text = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => return Ok(n.as_f64().filter(|s| s.is_finite())),
        Some(Value::String(s)) if s.is_empty() => return Ok(None),
        Some(Value::String(s)) => s,
        Some(other) => return Err(format!("{field} is not a time: {other}")),
    };
    let (local, offset) = split_offset(text);
    let t = humantime::parse_rfc3339_weak(local.trim_end_matches('Z')).map_err(|e| {
        format!(
            "{field} {:?} is not an ISO 8601 time: {e}",
            bounded(text, 100)
        )
    })?;
    Ok(Some(crate::model::unix_seconds(t) - offset))
}

/// A time's text without its `±HH:MM` offset, and the offset in seconds (0 for `Z` or none).
fn split_offset(text: &str) -> (&str, f64) {
    let Some((base, offset)) = text
        .len()
        .checked_sub(6)
        .and_then(|i| text.split_at_checked(i))
    else {
        return (text, 0.0);
    };
    let bytes = offset.as_bytes();
    let digits = |r: std::ops::Range<usize>| offset.get(r).and_then(|d| d.parse::<f64>().ok());
    let sign = match bytes.first() {
        Some(b'+') => 1.0,
        Some(b'-') => -1.0,
        _ => return (text, 0.0),
    };
    match (digits(1..3), bytes.get(3), digits(4..6)) {
        (Some(hours), Some(b':'), Some(minutes)) if base.contains('T') => {
            (base, sign * (hours * 3600.0 + minutes * 60.0))
        }
        _ => (text, 0.0),
    }
}

fn source_info(source_type: Option<&str>, info: Option<WireSourceInfo>) -> Option<SourceInfo> {
    let info = info.unwrap_or(WireSourceInfo {
        s3_source: None,
        dataset_source: None,
    });
    let location = |text: Option<String>| bounded(&text.unwrap_or_default(), bounds::LOCATION);
    let s3_source = info.s3_source.map(|s| S3Source {
        bucket_name: location(s.bucket_name),
        key: location(s.key),
    });
    let dataset_source = info.dataset_source.map(|d| DatasetSource {
        dataset_identifier: location(d.dataset_identifier),
    });
    let source_type = present(source_type);
    if source_type.is_none() && s3_source.is_none() && dataset_source.is_none() {
        return None;
    }
    Some(SourceInfo {
        source_type: bounded(source_type.unwrap_or_default(), bounds::STATUS),
        s3_source,
        dataset_source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the AWS Supply Chain admin guide's event detail reference, as SQS holds it.
    const FAILED: &str = r#"{
      "version": "0", "id": "f1d5e1a2-1b2c-4d5e-8f90-0123456789ab",
      "detail-type": "AWS Supply Chain Data Integration Status Change",
      "source": "aws.supplychain", "account": "123456789012",
      "time": "2024-03-30T12:26:13Z", "region": "us-east-1", "resources": [],
      "detail": {
        "version": "1.0",
        "instanceId": "8850c54e-e187-4fa7-89d4-6370f165174d",
        "flowArn": "arn:aws:scn:us-east-1:123456789012:instance/8850c54e-e187-4fa7-89d4-6370f165174d/data-integration-flows/daily-orders",
        "flowExecutionId": "a1b2c3d4-0000-4000-8000-000000000001",
        "status": "FAILED",
        "startTime": "2024-03-30T12:20:00Z",
        "endTime": "2024-03-30T12:26:12.5Z",
        "message": "column order_id is missing",
        "sourceType": "S3",
        "sourceInfo": { "s3Source": { "bucketName": "orders", "key": "in/2024-03-30.csv" } }
      }
    }"#;

    #[test]
    fn a_status_change_becomes_an_observation_of_its_execution() {
        let event = parse(FAILED).expect("a valid event");
        assert_eq!(&*event.key.flow_name, "daily-orders");
        assert_eq!(
            &*event.key.execution_id,
            "a1b2c3d4-0000-4000-8000-000000000001"
        );
        let o = &event.observation;
        assert_eq!(o.status, ApiStatus::Failed);
        assert_eq!(o.message.as_deref(), Some("column order_id is missing"));
        assert_eq!(o.start_time, Some(1_711_801_200.0));
        assert_eq!(o.end_time, Some(1_711_801_572.5));
        assert_eq!(event.time, Some(1_711_801_573.0));
        let source = o.source_info.as_ref().expect("source");
        assert_eq!(source.source_type, "S3");
        assert_eq!(
            source.s3_source.as_ref().map(|s| s.key.as_str()),
            Some("in/2024-03-30.csv")
        );
        assert_eq!(o.diagnostic_reports_root_s3_uri, None);
    }

    #[test]
    fn empty_strings_are_absent_and_missing_fields_are_allowed() {
        let running = FAILED
            .replace(r#""status": "FAILED""#, r#""status": "IN_PROGRESS""#)
            .replace(r#""endTime": "2024-03-30T12:26:12.5Z""#, r#""endTime": """#)
            .replace(
                r#""message": "column order_id is missing""#,
                r#""message": """#,
            )
            .replace(r#""time": "2024-03-30T12:26:13Z", "#, "");
        let event = parse(&running).expect("a valid event");
        assert_eq!(event.observation.status, ApiStatus::InProgress);
        assert_eq!(event.observation.end_time, None);
        assert_eq!(event.observation.message, None);
        assert_eq!(event.time, None);
    }

    #[test]
    fn times_may_carry_an_offset_or_be_epoch_seconds() {
        let with_offset = FAILED.replace("2024-03-30T12:20:00Z", "2024-03-30T12:20:00+00:00");
        let event = parse(&with_offset).expect("a valid event");
        assert_eq!(event.observation.start_time, Some(1_711_801_200.0));
        let epoch = FAILED.replace(r#""2024-03-30T12:20:00Z""#, "1711801200.25");
        let event = parse(&epoch).expect("a valid event");
        assert_eq!(event.observation.start_time, Some(1_711_801_200.25));
        let east = FAILED.replace("2024-03-30T12:20:00Z", "2024-03-30T14:20:00+02:00");
        let event = parse(&east).expect("a valid event");
        assert_eq!(event.observation.start_time, Some(1_711_801_200.0));
        let west = FAILED.replace("2024-03-30T12:20:00Z", "2024-03-30T07:20:00.5-05:00");
        let event = parse(&west).expect("a valid event");
        assert_eq!(event.observation.start_time, Some(1_711_801_200.5));
    }

    #[test]
    fn an_envelope_that_contradicts_its_flow_arn_or_the_instance_region_is_named() {
        let event = parse(FAILED).expect("a valid event");
        assert_eq!(event.origin.problem(None, None), None);
        assert_eq!(event.origin.problem(Some("us-east-1"), None), None);
        let other_region = event
            .origin
            .problem(Some("eu-west-1"), None)
            .expect("refused");
        assert!(other_region.contains("not \"eu-west-1\""), "{other_region}");
        assert_eq!(
            event
                .origin
                .problem(Some("us-east-1"), Some("123456789012")),
            None
        );
        let other_account = event
            .origin
            .problem(Some("us-east-1"), Some("222222222222"))
            .expect("refused");
        assert!(
            other_account.contains("not \"222222222222\""),
            "{other_account}"
        );
        let forged = parse(&FAILED.replace(
            r#""account": "123456789012""#,
            r#""account": "666666666666""#,
        ))
        .expect("readable");
        let problem = forged.origin.problem(None, None).expect("refused");
        assert!(problem.contains("account \"666666666666\""), "{problem}");
        let moved = parse(&FAILED.replace(r#""region": "us-east-1""#, r#""region": "eu-west-1""#))
            .expect("readable");
        assert!(
            moved
                .origin
                .problem(None, None)
                .is_some_and(|p| p.contains("region \"eu-west-1\""))
        );
        let bare = parse(
            &FAILED
                .replace(r#""account": "123456789012","#, "")
                .replace(r#""region": "us-east-1", "#, ""),
        )
        .expect("readable");
        assert_eq!(
            bare.origin.problem(None, None),
            None,
            "an envelope without them names nothing"
        );
    }

    #[test]
    fn what_is_not_a_readable_status_change_is_refused_in_words() {
        let cases = [
            ("{", "not an EventBridge event"),
            (
                r#"{"source":"aws.s3","detail-type":"x"}"#,
                "not an AWS Supply Chain status change",
            ),
            (
                &FAILED.replace("data-integration-flows/", "flows/"),
                "does not name a data integration flow",
            ),
            (
                &FAILED.replace(r#""instanceId": "8850"#, r#""instanceId": "9950"#),
                "is not the instance of flowArn",
            ),
            (
                &FAILED.replace(r#""status": "FAILED","#, ""),
                "has no status",
            ),
            (
                &FAILED.replace("2024-03-30T12:20:00Z", "yesterday"),
                "startTime \"yesterday\"",
            ),
            (
                &FAILED.replace("a1b2c3d4-0000-4000-8000-000000000001", "../x"),
                "no valid execution",
            ),
        ];
        for (body, expected) in cases {
            let error = parse(body).expect_err(expected);
            assert!(
                error.contains(expected),
                "{error:?} should say {expected:?}"
            );
        }
    }
}
