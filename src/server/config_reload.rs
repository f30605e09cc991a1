//! The part of the config file a reload applies: the `[[aws.instance]]` tables. Each reload
//! reads the config file again; instances that joined, left or changed get their clients and
//! request budgets without a restart. Every other key takes effect at restart, and a reload that
//! finds one changed says which.

use std::path::Path;
use std::sync::Arc;

use crate::api::InstanceClients;
use crate::engine::BudgetPlan;
use crate::input::config::{AwsSettings, Settings};
use crate::input::instances::InstanceSettings;

/// The config as the daemon started with it, and the instances installed since.
#[derive(Debug)]
pub struct ConfigReload {
    started: Settings,
    /// The base region the SDK resolved: the budget of every instance without a region.
    region: String,
    clients: Arc<InstanceClients>,
    installed: Vec<InstanceSettings>,
}

/// What a reload changed in the instances, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl InstanceChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl std::fmt::Display for InstanceChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "instances: {} added, {} removed, {} changed",
            self.added.len(),
            self.removed.len(),
            self.changed.len()
        )
    }
}

impl ConfigReload {
    /// `started` is the config as loaded, before the SDK resolved a region; `region` is the
    /// resolved one.
    pub fn new(started: Settings, region: String, clients: Arc<InstanceClients>) -> Self {
        Self {
            installed: started.aws.instances.clone(),
            started,
            region,
            clients,
        }
    }

    pub fn path(&self) -> &Path {
        &self.started.config_path
    }

    /// Installs the instances of `settings` (the config file read again and validated): the
    /// clients first, then the budgets the engine is to take, returned. `None` when the
    /// instances stay as they are.
    pub async fn apply(&mut self, settings: &Settings) -> (InstanceChanges, Option<BudgetPlan>) {
        let restart = restart_needed(&self.started, settings);
        if !restart.is_empty() {
            tracing::warn!(
                changed = restart.join(", "),
                "the config file changed outside [[aws.instance]]: those changes take effect at restart"
            );
        }
        let changes = instance_changes(&self.installed, &settings.aws.instances);
        if changes.is_empty() {
            return (changes, None);
        }
        self.clients.install(&settings.aws.instances).await;
        self.installed = settings.aws.instances.clone();
        let plan = BudgetPlan::of(
            &settings.aws,
            &self.region,
            self.started.polling.max_requests_per_second,
        );
        (changes, Some(plan))
    }
}

/// The instances added, removed and changed from `old` to `new`, by id.
fn instance_changes(old: &[InstanceSettings], new: &[InstanceSettings]) -> InstanceChanges {
    let find = |list: &[InstanceSettings], id: &str| list.iter().find(|i| i.id == id).cloned();
    let ids = |list: &[InstanceSettings]| list.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
    InstanceChanges {
        added: ids(new)
            .into_iter()
            .filter(|id| find(old, id).is_none())
            .collect(),
        removed: ids(old)
            .into_iter()
            .filter(|id| find(new, id).is_none())
            .collect(),
        changed: new
            .iter()
            .filter(|i| find(old, &i.id).is_some_and(|o| o != **i))
            .map(|i| i.id.clone())
            .collect(),
    }
}

/// The parts of the config outside `[[aws.instance]]` that differ: a reload leaves them as they
/// were.
fn restart_needed(started: &Settings, now: &Settings) -> Vec<&'static str> {
    let aws = |s: &Settings| AwsSettings {
        instances: Vec::new(),
        ..s.aws.clone()
    };
    [
        ("watchlist", started.watchlist != now.watchlist),
        ("[server]", started.server != now.server),
        ("[aws]", aws(started) != aws(now)),
        ("[polling]", started.polling != now.polling),
        ("[discovery]", started.discovery != now.discovery),
        ("[flow_health]", started.flow_health != now.flow_health),
        ("[push]", started.push != now.push),
        ("[metrics]", started.metrics != now.metrics),
        ("[state]", started.state != now.state),
        ("[events]", started.events != now.events),
        ("[log]", started.log != now.log),
    ]
    .into_iter()
    .filter_map(|(part, differs)| differs.then_some(part))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, region: &str) -> InstanceSettings {
        InstanceSettings {
            id: id.into(),
            region: Some(region.into()),
            role: None,
            endpoint_url: None,
            max_requests_per_second: None,
        }
    }

    #[test]
    fn changes_name_the_instances_added_removed_and_changed() {
        let old = [instance("a", "eu-west-1"), instance("b", "eu-west-1")];
        let new = [instance("b", "eu-central-1"), instance("c", "eu-west-1")];
        assert_eq!(
            instance_changes(&old, &new),
            InstanceChanges {
                added: vec!["c".into()],
                removed: vec!["a".into()],
                changed: vec!["b".into()],
            }
        );
        assert!(instance_changes(&old, &old).is_empty());
    }

    #[test]
    fn only_changes_outside_the_instances_need_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("flowwatch.toml");
        let load = |text: &str| {
            std::fs::write(&path, format!("watchlist = \"w.toml\"\n{text}")).expect("write");
            Settings::load(&path).expect("valid")
        };
        let table = "[[aws.instance]]\nid = \"8850c54e-e187-4fa7-89d4-6370f165174d\"\n";
        let started = load("[aws]\nregion = \"us-east-1\"\n");
        let instances = load(&format!("[aws]\nregion = \"us-east-1\"\n{table}"));
        assert_eq!(restart_needed(&started, &instances), Vec::<&str>::new());
        let polling = load(&format!(
            "[aws]\nregion = \"eu-west-1\"\n{table}[polling]\nmax_interval = \"1m\"\n"
        ));
        assert_eq!(restart_needed(&started, &polling), ["[aws]", "[polling]"]);
    }
}
