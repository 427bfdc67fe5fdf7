//! A subscription's own identity in the broker: the credentials its Secret carries are made to
//! work, with exactly the rights of its consumer, and the `Isolated` condition says what
//! isolation the subscription has.

use kube::runtime::events::EventType;

use crate::api::EventSubscription;
use crate::api::conditions::{ConditionType, Desired, Reason};
use crate::controller::context::Context;
use crate::controller::driver::publish;
use crate::controller::error::Error;
use crate::engine::{BrokerConnection, ConsumerSpec, Issued, SyncOutcome};

/// What making the identity came to.
pub struct Isolation {
    pub condition: Desired,
    /// `Ready=False` when the workload cannot connect with what its Secret holds.
    pub not_ready: Option<Desired>,
    /// A broker failure, returned after the status write so that it backs off.
    pub error: Option<Error>,
}

/// Makes the broker accept the issued credentials (or explains why there are none).
pub async fn ensure(
    obj: &EventSubscription,
    ctx: &Context,
    conn: &dyn BrokerConnection,
    spec: &ConsumerSpec,
    issued: &Issued,
) -> Isolation {
    let t = ConditionType::Isolated;
    let credentials = match issued {
        Issued::Credentials(c) => c,
        Issued::Unavailable(why) => {
            return Isolation {
                condition: Desired::is_false(t, Reason::IdentityUnavailable, why.clone()),
                not_ready: None,
                error: None,
            };
        }
    };
    let user = credentials.user();
    let rights = format!(
        "consumes as broker user {user}, which may only consume and acknowledge on consumer {}",
        spec.name
    );
    match conn.ensure_identity(spec, credentials).await {
        Ok(SyncOutcome::Created(())) => {
            let note = format!("created broker identity {user}");
            publish(ctx, obj, EventType::Normal, "IdentityCreated", note).await;
            isolated(rights)
        }
        Ok(SyncOutcome::Updated((), changed)) => {
            let note = format!("identity {user}: set {} back", changed.join(", "));
            publish(ctx, obj, EventType::Warning, "IdentityRepaired", note).await;
            isolated(rights)
        }
        Ok(SyncOutcome::Unchanged(())) => isolated(rights),
        Ok(SyncOutcome::Conflict(why)) => {
            let why = format!("{why}; Conveyor does not take it over");
            Isolation {
                condition: Desired::is_false(t, Reason::Conflict, why.clone()),
                not_ready: Some(Desired::is_false(
                    ConditionType::Ready,
                    Reason::Conflict,
                    why,
                )),
                error: None,
            }
        }
        Ok(SyncOutcome::Drifted(..) | SyncOutcome::Missing) => {
            let why = format!("the broker did not take identity {user}");
            Isolation {
                condition: Desired::is_false(t, Reason::UpdateRejected, why.clone()),
                not_ready: Some(Desired::is_false(
                    ConditionType::Ready,
                    Reason::UpdateRejected,
                    why,
                )),
                error: None,
            }
        }
        Err(e) => {
            let why = format!("identity {user}: {e}");
            Isolation {
                condition: Desired::is_false(t, Reason::UpdateRejected, why.clone()),
                not_ready: Some(Desired::is_false(
                    ConditionType::Ready,
                    Reason::UpdateRejected,
                    why,
                )),
                error: Some(Error::Engine(e)),
            }
        }
    }
}

fn isolated(rights: String) -> Isolation {
    Isolation {
        condition: Desired::is_true(ConditionType::Isolated, Reason::OwnIdentity, rights),
        not_ready: None,
        error: None,
    }
}
