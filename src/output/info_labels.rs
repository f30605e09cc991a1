//! The watchlist's free-form labels as Prometheus labels, for the info series that alerts join
//! on to learn who owns an execution or a flow: `flowwatch_execution_labels` (written with the
//! other per-execution families, in `output::series`) and `flowwatch_flow_labels` (here).
//!
//! A key becomes `label_<key>` with every character outside `[a-zA-Z0-9_]` replaced by `_`, as
//! kube-state-metrics names `kube_pod_labels`. Keys that come out the same each get a suffix
//! `_conflict1`, `_conflict2`, … in the byte order of the original keys; a suffix already taken
//! by another label is skipped. So the same labels always give the same names.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType};

use crate::model::FlowKey;

/// `labels` as Prometheus label names and values, sorted by name.
pub fn metric_labels(labels: &BTreeMap<String, String>) -> Vec<(String, &str)> {
    let names: Vec<String> = labels.keys().map(|k| sanitised(k)).collect();
    let mut shared: BTreeMap<&str, usize> = BTreeMap::new();
    for name in &names {
        *shared.entry(name).or_default() += 1;
    }
    let mut taken: BTreeSet<String> = names
        .iter()
        .filter(|name| shared[name.as_str()] == 1)
        .cloned()
        .collect();
    let mut out = Vec::with_capacity(labels.len());
    for (name, value) in names.iter().zip(labels.values()) {
        if shared[name.as_str()] == 1 {
            out.push((name.clone(), value.as_str()));
            continue;
        }
        let unique = (1..)
            .map(|n| format!("{name}_conflict{n}"))
            .find(|candidate| !taken.contains(candidate))
            .unwrap_or_default();
        taken.insert(unique.clone());
        out.push((unique, value.as_str()));
    }
    out.sort();
    out
}

/// `label_` and the key, every character Prometheus does not allow in a label name as `_`.
fn sanitised(key: &str) -> String {
    let mut name = String::with_capacity("label_".len() + key.len());
    name.push_str("label_");
    name.extend(key.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    name
}

const FLOW_LABELS_NAME: &str = "flowwatch_flow_labels";
const FLOW_LABELS_HELP: &str = "Always 1 for each [[flow]] entry with labels: its watchlist labels as label_<name>, to join on in alerts.";

/// `flowwatch_flow_labels`: one series per `[[flow]]` entry that has labels. Its label names
/// differ from flow to flow, which a `GaugeVec` cannot hold, so it is a collector of its own.
/// Clones share their series: one is registered, the other is set.
#[derive(Clone)]
pub struct FlowLabelSeries {
    desc: Desc,
    flows: Arc<Mutex<BTreeMap<FlowKey, Vec<LabelPair>>>>,
}

impl FlowLabelSeries {
    pub fn new() -> prometheus::Result<Self> {
        let desc = Desc::new(
            FLOW_LABELS_NAME.into(),
            FLOW_LABELS_HELP.into(),
            vec!["instance_id".into(), "flow_name".into()],
            std::collections::HashMap::new(),
        )?;
        Ok(Self {
            desc,
            flows: Arc::default(),
        })
    }

    /// Sets the flow's labels; none removes its series.
    pub fn set(&self, flow: &FlowKey, labels: &BTreeMap<String, String>) {
        let mut flows = crate::model::lock(&self.flows);
        if labels.is_empty() {
            flows.remove(flow);
            return;
        }
        let mut pairs = vec![
            pair("flow_name", &flow.flow_name),
            pair("instance_id", &flow.instance_id),
        ];
        pairs.extend(
            metric_labels(labels)
                .into_iter()
                .map(|(name, value)| pair(&name, value)),
        );
        flows.insert(flow.clone(), pairs);
    }

    pub fn remove(&self, flow: &FlowKey) {
        crate::model::lock(&self.flows).remove(flow);
    }
}

fn pair(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_string());
    pair.set_value(value.to_string());
    pair
}

impl Collector for FlowLabelSeries {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let flows = crate::model::lock(&self.flows);
        let metrics = flows
            .values()
            .map(|pairs| {
                let mut gauge = Gauge::default();
                gauge.set_value(1.0);
                let mut metric = Metric::default();
                metric.set_label(pairs.clone());
                metric.set_gauge(gauge);
                metric
            })
            .collect();
        let mut family = MetricFamily::default();
        family.set_name(FLOW_LABELS_NAME.into());
        family.set_help(FLOW_LABELS_HELP.into());
        family.set_field_type(MetricType::GAUGE);
        family.set_metric(metrics);
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn names(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        metric_labels(&labels(pairs))
            .into_iter()
            .map(|(n, v)| (n, v.to_string()))
            .collect()
    }

    fn flow(instance_id: &str, flow_name: &str) -> FlowKey {
        FlowKey {
            instance_id: instance_id.into(),
            flow_name: flow_name.into(),
        }
    }

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn keys_become_label_names_prometheus_accepts() {
        assert_eq!(
            names(&[("team", "planning"), ("cost-centre", "42"), ("Ünit.3", "x")]),
            owned(&[
                ("label__nit_3", "x"),
                ("label_cost_centre", "42"),
                ("label_team", "planning"),
            ])
        );
        let valid = |n: &str| {
            n.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        for (name, _) in names(&[("9lives", "a"), ("__reserved", "b"), (" ", "c")]) {
            assert!(valid(&name), "{name}");
        }
    }

    #[test]
    fn keys_that_collide_get_numbered_suffixes_in_key_order() {
        // "team-a" < "team.a" < "team_a" in byte order.
        let expected = owned(&[
            ("label_team_a_conflict1", "dash"),
            ("label_team_a_conflict2", "dot"),
            ("label_team_a_conflict3", "underscore"),
        ]);
        assert_eq!(
            names(&[
                ("team_a", "underscore"),
                ("team.a", "dot"),
                ("team-a", "dash")
            ]),
            expected
        );
        // A suffix another key already has is skipped.
        assert_eq!(
            names(&[("a-b", "1"), ("a.b", "2"), ("a_b_conflict1", "3")]),
            owned(&[
                ("label_a_b_conflict1", "3"),
                ("label_a_b_conflict2", "1"),
                ("label_a_b_conflict3", "2"),
            ])
        );
    }

    #[test]
    fn flow_series_come_and_go_with_their_labels() {
        let series = FlowLabelSeries::new().expect("desc");
        let orders = flow("i-1", "orders");
        series.set(&orders, &labels(&[("team", "planning")]));
        series.set(&flow("i-1", "bare"), &BTreeMap::new());
        let families = series.collect();
        let metrics = families[0].get_metric();
        assert_eq!(metrics.len(), 1);
        let pairs: Vec<(&str, &str)> = metrics[0]
            .get_label()
            .iter()
            .map(|p| (p.name(), p.value()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("flow_name", "orders"),
                ("instance_id", "i-1"),
                ("label_team", "planning")
            ]
        );
        series.remove(&orders);
        assert!(series.collect()[0].get_metric().is_empty());
    }
}
