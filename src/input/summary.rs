//! The summary `check-config` prints for valid settings: what flowwatch would do, in words.

use std::collections::BTreeSet;

use crate::input::config::Settings;
use crate::input::watchlist::Watchlist;

/// The `check-config` summary of valid settings.
pub fn summary(settings: &Settings, watchlist: &Watchlist) -> String {
    let flows: BTreeSet<_> = watchlist
        .entries
        .iter()
        .map(|e| (&*e.key.instance_id, &*e.key.flow_name))
        .chain(
            watchlist
                .flows
                .iter()
                .map(|f| (f.key.instance_id.as_str(), f.key.flow_name.as_str())),
        )
        .collect();
    let instances: BTreeSet<_> = flows.iter().map(|(instance, _)| *instance).collect();
    let p = &settings.polling;
    let or_default = |v: &Option<String>| {
        v.clone()
            .unwrap_or_else(|| "(default provider chain)".into())
    };
    let mut sinks = Vec::new();
    if settings.events.stdout {
        sinks.push("stdout".to_string());
    }
    if let Some(file) = &settings.events.file {
        sinks.push(file.display().to_string());
    }
    let text = format!(
        "config ok: {}\n\
         watchlist: {} (executions: {}, discovered flows: {}, flows: {}, instances: {})\n\
         listen: {}\n\
         aws: region {}, profile {}, endpoint {}\n\
         polling: every {} growing x{} to {}, at most {} requests/s and {} in flight, timeout {}, not-found grace {}, series kept {} after the end\n\
         discovery: every {}, pages of {}, at most {} pages per flow and round\n\
         flow health: {} durations kept per flow, expected end from {}, overdue past {}x the median and {}\n\
         push: {}\n\
         events: {}\n\
         state: {}\n\
         log: {} ({})",
        settings.config_path.display(),
        settings.watchlist.display(),
        watchlist.entries.len(),
        watchlist.flows.len(),
        flows.len(),
        instances.len(),
        settings.server.listen,
        or_default(&settings.aws.region),
        or_default(&settings.aws.profile),
        settings
            .aws
            .endpoint_url
            .as_deref()
            .map_or_else(|| "(AWS default)".into(), crate::model::without_userinfo),
        humantime::format_duration(p.initial_interval),
        p.multiplier,
        humantime::format_duration(p.max_interval),
        p.max_requests_per_second,
        p.max_in_flight,
        humantime::format_duration(p.request_timeout),
        humantime::format_duration(p.not_found_grace),
        humantime::format_duration(p.retain_terminal),
        humantime::format_duration(settings.discovery.interval),
        settings.discovery.page_size,
        settings.discovery.max_pages_per_round,
        settings.flow_health.history,
        settings.flow_health.min_history,
        settings.flow_health.overdue_factor,
        humantime::format_duration(settings.flow_health.overdue_min),
        push_summary(settings),
        if sinks.is_empty() {
            "(none)".to_string()
        } else {
            sinks.join(", ")
        },
        state_summary(settings),
        settings.log.level,
        settings.log.format.as_str(),
    );
    let instances = instances_summary(settings);
    match text.split_once("\npolling:") {
        Some((head, tail)) if !instances.is_empty() => {
            format!("{head}\n{instances}\npolling:{tail}")
        }
        _ => text,
    }
}

/// The state directory, and the shared table with the lease when replicas share state.
fn state_summary(settings: &Settings) -> String {
    let path = settings.state.path.display();
    match &settings.state.dynamodb {
        None => format!("{path} (SQLite)"),
        Some(d) => format!(
            "{path}, shared with other replicas in DynamoDB table {} (region {}), lease {} as replica {}",
            d.table,
            d.region
                .clone()
                .unwrap_or_else(|| "of aws.region".to_string()),
            humantime::format_duration(d.lease_duration),
            d.replica_id
        ),
    }
}

/// A line per `[[aws.instance]]`: its region, its account, and how it is signed.
fn instances_summary(settings: &Settings) -> String {
    let aws = &settings.aws;
    aws.instances
        .iter()
        .map(|i| {
            let region = i
                .region
                .clone()
                .or_else(|| aws.region.clone())
                .unwrap_or_else(|| "(default provider chain)".into());
            let signed = match &i.role {
                Some(role) => format!(
                    "account {}, assumes {}{}",
                    role.account_id,
                    role.arn,
                    if role.external_id.is_some() {
                        " with an external id"
                    } else {
                        ""
                    }
                ),
                None => "signed with the base credentials".into(),
            };
            let endpoint = i.endpoint_url.as_deref().map_or_else(String::new, |u| {
                format!(", endpoint {}", crate::model::without_userinfo(u))
            });
            let cap = i
                .max_requests_per_second
                .unwrap_or(settings.polling.max_requests_per_second);
            format!(
                "instance {}: region {region}, {signed}{endpoint}, at most {cap} requests/s",
                i.id
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn push_summary(settings: &Settings) -> String {
    let Some(push) = &settings.push else {
        return "off (no push.queue_url): every execution is polled at its own pace".to_string();
    };
    format!(
        "queue {} (region {}, endpoint {}), long poll {}, running executions polled every {} while it works, {}",
        crate::model::without_userinfo(&push.queue_url),
        push.queue_region()
            .unwrap_or_else(|| "as for the Supply Chain client".into()),
        push.endpoint_url
            .as_deref()
            .map_or_else(|| "(AWS default)".into(), crate::model::without_userinfo),
        humantime::format_duration(push.wait_time),
        humantime::format_duration(push.reconcile_interval),
        if push.fetch_details {
            "one GET for the details of a pushed end"
        } else {
            "no GET for details"
        }
    )
}
