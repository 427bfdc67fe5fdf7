//! The Broker reconciler: resolve -> validate -> status. Provisioning managed brokers and
//! connecting to external ones come with the broker engine; until then the Broker reports
//! honestly that it is not serving.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::context::Context;
use super::driver::Reconcile;
use super::error::Result;
use super::refs::{self, Resolved};
use super::status::{api_for, apply_status};
use crate::api::conditions::{ConditionType, Desired, Reason, merge};
use crate::api::{Broker, BrokerStatus};

impl Reconcile for Broker {
    async fn apply(obj: Arc<Self>, ctx: Arc<Context>) -> Result<Action> {
        let refs = resolve(&obj, &ctx).await?;
        let ready = match &refs {
            Err(unresolved) => Desired::is_false(
                ConditionType::Ready,
                unresolved.reason,
                unresolved.message.clone(),
            ),
            Ok(()) => Desired::is_false(
                ConditionType::Ready,
                Reason::NotSupported,
                not_serving_message(&obj),
            ),
        };
        let refs = refs.err().unwrap_or_else(refs::resolved);
        let old = obj.status.as_ref();
        let generation = obj.metadata.generation;
        let new = BrokerStatus {
            observed_generation: generation,
            conditions: merge(
                old.map(|s| &s.conditions[..]).unwrap_or_default(),
                &[refs, ready],
                generation,
                Timestamp::now(),
            ),
            ..old.cloned().unwrap_or_default()
        };
        apply_status(&api_for(&ctx.client, &*obj), &*obj, old, &new).await?;
        Ok(Action::requeue(ctx.config.resync))
    }
}

/// Checks the Secrets an external Broker names.
async fn resolve(obj: &Broker, ctx: &Context) -> Result<Resolved<()>> {
    let ns = obj.namespace().unwrap_or_default();
    let Some(external) = &obj.spec.external else {
        return Ok(Ok(()));
    };
    let secrets = [
        (
            external.credentials_secret_ref.as_ref(),
            "spec.external.credentialsSecretRef",
        ),
        (
            external.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()),
            "spec.external.tls.caSecretRef",
        ),
    ];
    for (secret, field) in secrets {
        let Some(secret) = secret else { continue };
        if let Err(c) = refs::secret(&ctx.client, &ns, &secret.name, field).await? {
            return Ok(Err(c));
        }
    }
    Ok(Ok(()))
}

fn not_serving_message(obj: &Broker) -> String {
    if obj.spec.managed.is_some() {
        "this build of Conveyor does not provision managed brokers yet".into()
    } else {
        "this build of Conveyor does not connect to external brokers yet".into()
    }
}
