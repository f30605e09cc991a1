//! The CloudEvents 1.0 encoding of what flowwatch announces: transitions, rejections and overdue
//! runs. The sinks that write them are in `sinks`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use crate::model::{
    ExecutionKey, ObservedVia, Overdue, SourceInfo, Status, Transition, rfc3339, rfc3339_from_secs,
};

/// The CloudEvents `type` of a status change.
pub const TRANSITION_TYPE: &str = "flowwatch.execution.transition";
/// The CloudEvents `type` sent when the API rejects an entry as invalid (ValidationException).
pub const REJECTED_TYPE: &str = "flowwatch.execution.rejected";
/// The CloudEvents `type` sent once when a running execution becomes overdue.
pub const OVERDUE_TYPE: &str = "flowwatch.execution.overdue";

/// The CloudEvents 1.0 envelope every flowwatch event shares, in its field order. The id is
/// deterministic (`<key>/<what>`), so a consumer can deduplicate, also across restarts.
#[derive(Serialize)]
struct Envelope<D> {
    specversion: &'static str,
    id: String,
    source: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    subject: String,
    datacontenttype: &'static str,
    data: D,
}

/// One event as one line of JSON (no newline).
fn envelope(
    key: &ExecutionKey,
    what: &str,
    kind: &'static str,
    at: SystemTime,
    data: impl Serialize,
) -> String {
    let event = Envelope {
        specversion: "1.0",
        id: format!("{key}/{what}"),
        source: "flowwatch",
        kind,
        time: rfc3339(at),
        subject: key.to_string(),
        datacontenttype: "application/json",
        data,
    };
    // Strings, numbers, maps with string keys: nothing here can fail to serialise.
    serde_json::to_string(&event).unwrap_or_default()
}

/// The ids every event's data starts with.
#[derive(Serialize)]
struct Ids<'a> {
    instance_id: &'a str,
    flow_name: &'a str,
    execution_id: &'a str,
    region: &'a str,
    account_id: &'a str,
}

impl<'a> Ids<'a> {
    fn of(key: &'a ExecutionKey, place: Place<'a>) -> Self {
        Self {
            instance_id: &key.instance_id,
            flow_name: &key.flow_name,
            execution_id: &key.execution_id,
            region: place.region,
            account_id: place.account_id,
        }
    }
}

/// Where an execution's instance is: the region and account its calls go to (`account_id` is
/// `""` for the base credentials').
#[derive(Debug, Clone, Copy, Default)]
pub struct Place<'a> {
    pub region: &'a str,
    pub account_id: &'a str,
}

#[derive(Serialize)]
struct TransitionData<'a> {
    #[serde(flatten)]
    ids: Ids<'a>,
    from_status: Status,
    to_status: Status,
    observed_via: ObservedVia,
    message: Option<&'a str>,
    start_time: Option<String>,
    end_time: Option<String>,
    source_info: Option<&'a SourceInfo>,
    diagnostic_reports_root_s3_uri: Option<&'a str>,
    labels: &'a BTreeMap<String, String>,
}

/// The event of a status change: one id per execution and target status.
pub fn transition_event(t: &Transition, place: Place<'_>) -> String {
    let obs = t.observation.as_ref();
    let data = TransitionData {
        ids: Ids::of(&t.key, place),
        from_status: t.from,
        to_status: t.to,
        observed_via: t.via,
        message: obs.and_then(|o| o.message.as_deref()),
        start_time: obs.and_then(|o| o.start_time).map(rfc3339_from_secs),
        end_time: obs.and_then(|o| o.end_time).map(rfc3339_from_secs),
        source_info: obs.and_then(|o| o.source_info.as_ref()),
        diagnostic_reports_root_s3_uri: obs
            .and_then(|o| o.diagnostic_reports_root_s3_uri.as_deref()),
        labels: &t.labels,
    };
    envelope(&t.key, t.to.as_str(), TRANSITION_TYPE, t.at, data)
}

#[derive(Serialize)]
struct RejectedData<'a> {
    #[serde(flatten)]
    ids: Ids<'a>,
    status: Status,
    message: &'a str,
    labels: &'a BTreeMap<String, String>,
}

/// The event sent when the API answers ValidationException: the entry is invalid and polling it
/// stops.
pub fn rejected_event(
    key: &ExecutionKey,
    status: Status,
    message: &str,
    at: SystemTime,
    labels: &BTreeMap<String, String>,
    place: Place<'_>,
) -> String {
    let data = RejectedData {
        ids: Ids::of(key, place),
        status,
        message,
        labels,
    };
    envelope(key, "REJECTED", REJECTED_TYPE, at, data)
}

#[derive(Serialize)]
struct OverdueData<'a> {
    #[serde(flatten)]
    ids: Ids<'a>,
    start_time: String,
    expected_end_time: String,
    median_duration_seconds: f64,
    overdue_after_seconds: f64,
    running_seconds: f64,
    labels: &'a BTreeMap<String, String>,
}

/// The event sent once when a running execution becomes overdue.
pub fn overdue_event(o: &Overdue, place: Place<'_>) -> String {
    let e = &o.expectation;
    let data = OverdueData {
        ids: Ids::of(&o.key, place),
        start_time: rfc3339_from_secs(o.start_time),
        expected_end_time: rfc3339_from_secs(e.expected_end),
        median_duration_seconds: e.median,
        overdue_after_seconds: e.overdue_after,
        running_seconds: o.running.round(),
        labels: &o.labels,
    };
    envelope(&o.key, "OVERDUE", OVERDUE_TYPE, o.at, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    use crate::model::{ApiStatus, Observation, S3Source};

    const PLACE: Place<'static> = Place {
        region: "eu-central-1",
        account_id: "222222222222",
    };

    #[test]
    fn absurd_api_times_are_written_as_the_epoch_not_a_panic() {
        for secs in [1e300, -5.0, f64::NAN, f64::INFINITY, 1e12] {
            assert_eq!(rfc3339_from_secs(secs), "1970-01-01T00:00:00Z", "{secs}");
        }
        assert_eq!(
            rfc3339_from_secs(1_764_061_200.5),
            "2025-11-25T09:00:00.500Z"
        );
    }

    #[test]
    fn a_transition_encodes_as_a_cloud_event_with_every_response_field() {
        let key = ExecutionKey::new(
            "8850c54e-e187-4fa7-89d4-6370f165174d",
            "daily-orders",
            "a1b2c3d4-0000-4000-8000-000000000001",
        )
        .expect("valid key");
        let t = Transition {
            key,
            from: Status::InProgress,
            to: Status::Failed,
            at: UNIX_EPOCH + Duration::from_secs(1_795_000_000),
            observation: Some(Observation {
                status: ApiStatus::Failed,
                source_info: Some(SourceInfo {
                    source_type: "S3".into(),
                    s3_source: Some(S3Source {
                        bucket_name: "bucket".into(),
                        key: "orders/day.csv".into(),
                    }),
                    dataset_source: None,
                }),
                message: Some("schema mismatch".into()),
                start_time: Some(1_794_999_000.0),
                end_time: Some(1_794_999_990.5),
                diagnostic_reports_root_s3_uri: Some("s3://bucket/diag/".into()),
            }),
            labels: BTreeMap::from([("team".to_string(), "planning".to_string())]),
            via: ObservedVia::Poll,
        };
        let line = transition_event(&t, PLACE);
        assert!(!line.contains('\n'), "one event, one line");
        let e: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(
            e["id"],
            "8850c54e-e187-4fa7-89d4-6370f165174d/daily-orders/a1b2c3d4-0000-4000-8000-000000000001/FAILED"
        );
        assert_eq!(e["type"], TRANSITION_TYPE);
        assert_eq!(e["time"], "2026-11-18T11:06:40Z");
        let d = &e["data"];
        assert_eq!(d["from_status"], "IN_PROGRESS");
        assert_eq!(d["to_status"], "FAILED");
        assert_eq!(d["message"], "schema mismatch");
        assert_eq!(d["start_time"], "2026-11-18T10:50:00Z");
        assert_eq!(d["end_time"], "2026-11-18T11:06:30.500Z");
        assert_eq!(d["source_info"]["s3_source"]["key"], "orders/day.csv");
        assert_eq!(d["diagnostic_reports_root_s3_uri"], "s3://bucket/diag/");
        assert_eq!(d["labels"]["team"], "planning");
        assert_eq!(d["observed_via"], "poll");
        assert_eq!(
            (d["region"].as_str(), d["account_id"].as_str()),
            (Some("eu-central-1"), Some("222222222222"))
        );
    }
}
