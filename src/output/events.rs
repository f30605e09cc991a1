//! The CloudEvents 1.0 encoding of what flowwatch announces: transitions, rejections and overdue
//! runs. The sinks that write them are in `sinks`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::model::{ExecutionKey, Overdue, Status, Transition, rfc3339, rfc3339_from_secs};

/// The CloudEvents `type` of a status change.
pub const TRANSITION_TYPE: &str = "flowwatch.execution.transition";
/// The CloudEvents `type` sent when the API rejects an entry as invalid (ValidationException).
pub const REJECTED_TYPE: &str = "flowwatch.execution.rejected";
/// The CloudEvents `type` sent once when a running execution becomes overdue.
pub const OVERDUE_TYPE: &str = "flowwatch.execution.overdue";

/// The CloudEvents 1.0 envelope every flowwatch event shares. The id is deterministic
/// (`<key>/<what>`), so a consumer can deduplicate, also across restarts.
fn envelope(key: &ExecutionKey, what: &str, kind: &str, at: SystemTime, data: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": format!("{key}/{what}"),
        "source": "flowwatch",
        "type": kind,
        "time": rfc3339(at),
        "subject": key.to_string(),
        "datacontenttype": "application/json",
        "data": data,
    })
}

/// The event of a status change: one id per execution and target status.
pub fn transition_event(t: &Transition) -> Value {
    let obs = t.observation.as_ref();
    let data = json!({
        "instance_id": t.key.instance_id,
        "flow_name": t.key.flow_name,
        "execution_id": t.key.execution_id,
        "from_status": t.from,
        "to_status": t.to,
        "observed_via": t.via,
        "message": obs.and_then(|o| o.message.clone()),
        "start_time": obs.and_then(|o| o.start_time).map(rfc3339_from_secs),
        "end_time": obs.and_then(|o| o.end_time).map(rfc3339_from_secs),
        "source_info": obs.and_then(|o| o.source_info.clone()),
        "diagnostic_reports_root_s3_uri": obs.and_then(|o| o.diagnostic_reports_root_s3_uri.clone()),
        "labels": t.labels,
    });
    envelope(&t.key, t.to.as_str(), TRANSITION_TYPE, t.at, data)
}

/// The event sent when the API answers ValidationException: the entry is invalid and polling it
/// stops.
pub fn rejected_event(
    key: &ExecutionKey,
    status: Status,
    message: &str,
    at: SystemTime,
    labels: &BTreeMap<String, String>,
) -> Value {
    let data = json!({
        "instance_id": key.instance_id,
        "flow_name": key.flow_name,
        "execution_id": key.execution_id,
        "status": status,
        "message": message,
        "labels": labels,
    });
    envelope(key, "REJECTED", REJECTED_TYPE, at, data)
}

/// The event sent once when a running execution becomes overdue.
pub fn overdue_event(o: &Overdue) -> Value {
    let e = &o.expectation;
    let data = json!({
        "instance_id": o.key.instance_id,
        "flow_name": o.key.flow_name,
        "execution_id": o.key.execution_id,
        "start_time": rfc3339_from_secs(o.start_time),
        "expected_end_time": rfc3339_from_secs(e.expected_end),
        "median_duration_seconds": e.median,
        "overdue_after_seconds": e.overdue_after,
        "running_seconds": o.running.round(),
        "labels": o.labels,
    });
    envelope(&o.key, "OVERDUE", OVERDUE_TYPE, o.at, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    use crate::model::{ApiStatus, Observation, ObservedVia, S3Source, SourceInfo};

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
        let e = transition_event(&t);
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
        assert!(!e.to_string().contains('\n'), "one event, one line");
    }
}
