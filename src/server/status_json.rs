//! The `/status` document as JSON, from the engine's typed [`StatusView`]. Field names are part
//! of the contract (docs/http.md).

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::engine::{ExecutionView, FlowView, InstanceView, PushView, StatusView};
use crate::model::{Outcome, rfc3339, rfc3339_from_secs};

/// The whole document.
pub fn document(view: &StatusView) -> Value {
    let places: HashMap<&str, &InstanceView> = view
        .instances
        .iter()
        .map(|i| (i.instance_id.as_str(), i))
        .collect();
    let by_status: Map<String, Value> = view
        .by_status
        .iter()
        .map(|(status, n)| (status.as_str().to_string(), json!(n)))
        .collect();
    json!({
        "watched": view.watched,
        "flows": view.flows.iter().map(flow).collect::<Vec<_>>(),
        "by_status": by_status,
        "in_flight": view.in_flight,
        "rate_limit_requests_per_second": view.rate_limit_requests_per_second,
        "executions_total": view.executions_total,
        "offset": view.offset,
        "limit": view.limit,
        "next_offset": view.next_offset,
        "push": view.push.as_ref().map(push),
        "instances": view.instances.iter().map(instance).collect::<Vec<_>>(),
        "executions": view.executions.iter().map(|e| execution(e, &places)).collect::<Vec<_>>(),
    })
}

fn instance(i: &InstanceView) -> Value {
    json!({
        "instance_id": i.instance_id,
        "region": i.region,
        "account_id": i.account_id,
        "up": i.up,
        "reason": i.reason,
    })
}

fn execution(e: &ExecutionView, places: &HashMap<&str, &InstanceView>) -> Value {
    let key = &e.entry.key;
    let obs = e.observation.as_ref();
    let place = places.get(&*key.instance_id);
    json!({
        "instance_id": key.instance_id,
        "flow_name": key.flow_name,
        "execution_id": key.execution_id,
        "region": place.map(|i| i.region.as_str()),
        "account_id": place.map(|i| i.account_id.as_str()),
        "status": e.status,
        "origin": if e.discovered { "discovered" } else { "watchlist" },
        "observed_via": e.observed_via,
        "polling": e.polling,
        "attempts": e.attempts,
        "last_poll": e.last_poll.map(rfc3339),
        "next_poll": e.next_poll.map(rfc3339),
        "last_outcome": e.last_outcome.map(Outcome::metric_label),
        "last_error": e.last_error,
        "rejected": e.rejected,
        "metrics_retained": e.retained,
        "api_status": obs.map(|o| o.status.as_str()),
        "message": obs.and_then(|o| o.message.clone()),
        "start_time": obs.and_then(|o| o.start_time).map(rfc3339_from_secs),
        "end_time": obs.and_then(|o| o.end_time).map(rfc3339_from_secs),
        "expected_end_time": e.expected_end.map(rfc3339_from_secs),
        "overdue": e.overdue,
        "source_info": obs.and_then(|o| o.source_info.clone()),
        "diagnostic_reports_root_s3_uri": obs.and_then(|o| o.diagnostic_reports_root_s3_uri.clone()),
        "labels": e.entry.labels,
    })
}

fn flow(f: &FlowView) -> Value {
    json!({
        "instance_id": f.key.instance_id,
        "flow_name": f.key.flow_name,
        "since": f.since.map(|d| humantime::format_duration(d).to_string()),
        "window_start": rfc3339(f.window_start),
        "labels": f.labels,
        "discovered": f.discovered,
        "watched_executions": f.watched_executions,
        "flow_not_found": f.flow_not_found,
        "round_in_progress": f.round_in_progress,
        "last_round_pages": f.last_round_pages,
        "resume_token_pending": f.resume_token_pending,
        "last_success": f.last_success.map(rfc3339),
        "next_round": f.next_round.map(rfc3339),
        "last_outcome": f.last_outcome.map(Outcome::metric_label),
        "last_error": f.last_error,
    })
}

fn push(p: &PushView) -> Value {
    json!({
        "queue_url": p.queue_url,
        "healthy": p.healthy,
        "reason": p.reason,
        "reconcile_interval_seconds": p.reconcile_interval.as_secs(),
        "fetch_details": p.fetch_details,
    })
}
