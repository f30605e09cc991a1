//! One Supply Chain client per signer (credentials, region and endpoint), and the
//! [`FlowExecutions`] that sends each call through its instance's client: an instance with a
//! `[[aws.instance]]` table through its own, any other through the base client. A reload installs
//! a new set of instances; a signer that stays keeps its client, and so its cached credentials.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use aws_config::SdkConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_sdk_supplychain::config::SharedCredentialsProvider;

use super::{ApiError, FlowExecutions, ListPage, SdkFlowExecutions};
use crate::input::config::AwsSettings;
use crate::input::instances::InstanceSettings;
use crate::model::{ExecutionKey, FlowKey, Observation};

/// The session name of every assumed role: CloudTrail shows `flowwatch` as the caller.
pub const SESSION_NAME: &str = "flowwatch";

/// The clients of every instance.
#[derive(Debug)]
pub struct InstanceClients {
    shared: SdkConfig,
    /// `aws.endpoint_url`: the endpoint of an instance that names none.
    endpoint_url: Option<String>,
    base: SdkFlowExecutions,
    routes: RwLock<Routes>,
}

/// Which client serves each listed instance, and the client of each signer.
#[derive(Debug, Default)]
struct Routes {
    by_instance: HashMap<String, SdkFlowExecutions>,
    by_signer: HashMap<Signer, SdkFlowExecutions>,
}

/// What makes two instances share a client: the same role (and external id), region and
/// endpoint.
type Signer = (
    Option<(String, Option<String>)>,
    Option<String>,
    Option<String>,
);

impl InstanceClients {
    /// The base client on `shared`, and one client per signer of `aws.instances`. A role is
    /// assumed with `shared`'s credentials (its provider chain) through STS as the SDK resolves
    /// it (`AWS_ENDPOINT_URL_STS` works); the client's identity cache refreshes the assumed
    /// credentials before they expire. Nothing is called here: a refused role shows at the
    /// first call, as `credentials_error`.
    pub async fn build(shared: &SdkConfig, aws: &AwsSettings) -> Self {
        let clients = Self {
            shared: shared.clone(),
            endpoint_url: aws.endpoint_url.clone(),
            base: SdkFlowExecutions::from_shared(shared, aws),
            routes: RwLock::default(),
        };
        clients.install(&aws.instances).await;
        clients
    }

    /// Serves `instances` from now on (a reload): each through a client of its signer, the one
    /// already built when its signer stays. Calls in flight finish on the client they started
    /// with.
    pub async fn install(&self, instances: &[InstanceSettings]) {
        let built = self.read().by_signer.clone();
        let mut routes = Routes::default();
        for instance in instances {
            let signer = signer_of(instance);
            let known = routes.by_signer.get(&signer).or_else(|| built.get(&signer));
            let client = match known {
                Some(client) => client.clone(),
                None => self.client_of(instance).await,
            };
            routes.by_signer.insert(signer, client.clone());
            routes.by_instance.insert(instance.id.clone(), client);
        }
        *self.routes.write().unwrap_or_else(PoisonError::into_inner) = routes;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Routes> {
        self.routes.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn client(&self, instance_id: &str) -> SdkFlowExecutions {
        self.read()
            .by_instance
            .get(instance_id)
            .unwrap_or(&self.base)
            .clone()
    }

    /// The client of one instance: the shared configuration with its region, its role's
    /// credentials and its endpoint, each where it sets one.
    async fn client_of(&self, instance: &InstanceSettings) -> SdkFlowExecutions {
        let shared = &self.shared;
        let mut config = shared.clone().into_builder();
        if let Some(region) = &instance.region {
            config = config.region(aws_config::Region::new(region.clone()));
        }
        if let Some(role) = &instance.role {
            let mut provider = AssumeRoleProvider::builder(role.arn.clone())
                .session_name(SESSION_NAME)
                .configure(shared);
            if let Some(external_id) = &role.external_id {
                provider = provider.external_id(external_id.clone());
            }
            let provider = provider.build().await;
            config = config.credentials_provider(SharedCredentialsProvider::new(provider));
        }
        let settings = AwsSettings {
            endpoint_url: instance
                .endpoint_url
                .clone()
                .or_else(|| self.endpoint_url.clone()),
            ..AwsSettings::default()
        };
        SdkFlowExecutions::from_shared(&config.build(), &settings)
    }
}

fn signer_of(instance: &InstanceSettings) -> Signer {
    (
        instance
            .role
            .as_ref()
            .map(|r| (r.arn.clone(), r.external_id.clone())),
        instance.region.clone(),
        instance.endpoint_url.clone(),
    )
}

impl FlowExecutions for InstanceClients {
    async fn get(&self, key: &ExecutionKey) -> Result<Observation, ApiError> {
        self.client(&key.instance_id).get(key).await
    }

    async fn list(
        &self,
        flow: &FlowKey,
        next_token: Option<&str>,
        page_size: i32,
    ) -> Result<ListPage, ApiError> {
        self.client(&flow.instance_id)
            .list(flow, next_token, page_size)
            .await
    }
}
