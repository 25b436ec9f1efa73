//! [`LifecycleListener`]: how `deployments` tells the bridge what happened to a deployment.
//! A direct call on the task that made it happen, so that no event is lost, late or out of
//! order, however busy the process is.

use crate::domain::Deployment;
use crate::runtime::Attached;

/// Told of what happens to deployments (the bridge implements it).
pub trait LifecycleListener: Send + Sync {
    /// Deployment `id` is being deleted: its sessions end and what is kept about it goes.
    fn deleting(&self, id: &str);

    /// Deployment `id` was paused for idleness: its sessions end.
    fn paused(&self, id: &str);

    /// The stdio process of `d` was started attached by `deployments` (a create): the listener
    /// takes over its pipes from the first byte.
    fn stdio_started(&self, d: &Deployment, attached: Attached);
}
