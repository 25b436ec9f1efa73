//! Spares: the network and host user of a few deployments to come, made ahead and named and
//! labelled after the id each deployment will get, so that a create waits neither for
//! Docker to make a network (70–110 ms on this host) nor for `useradd` (about 30 ms of CPU
//! that would compete with the container's create).
//!
//! A create takes a ready spare, or claims one still being made and waits for it (never
//! longer than making its own parts would take); without either it makes its own. A
//! background task ([`Deployments::keep_spares`]) refills the pool and removes what is left
//! of it when mcp-runner stops; start-up reconciliation and the sweep remove what a killed
//! mcp-runner left.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use super::{DeployError, Deployments, new_id, username_of};
use crate::runtime::RuntimeError;

/// The network and host user of a deployment to come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spare {
    /// The id the deployment that takes it gets (the network's name and labels and the
    /// user's name and comment carry it).
    pub deployment_id: String,
    /// Docker network id.
    pub network_id: String,
    /// Its subnet of the pool.
    pub subnet: String,
    /// The host user's UID (and GID).
    pub uid: u32,
    /// The running network holder on the network (see `runtime::netns`), when one could
    /// be started.
    pub holder: Option<String>,
}

/// What a spare holds before its deployment's row records it.
#[derive(Debug, Default, Clone)]
struct Reservation {
    subnet: Option<String>,
    uid: Option<u32>,
}

/// The pool of networks made ahead.
#[derive(Default)]
pub(super) struct Spares {
    state: std::sync::Mutex<State>,
    /// Wakes the refilling task (a network was taken, or a subnet freed).
    wake: Notify,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Spare>,
    /// Networks being made now.
    making: usize,
    /// Creates waiting for one of those, in order; each is owed the next one made.
    waiting: VecDeque<oneshot::Sender<Option<Spare>>>,
    /// By deployment id, the subnet and UID of every spare ready, being made, or taken by a
    /// create that has not written its row yet: no create picks them.
    reserved: HashMap<String, Reservation>,
    /// Set when mcp-runner stops: nothing more is made.
    closed: bool,
}

impl Spares {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A ready network, or the next one made when one is being made that no other create
    /// waits for; `None` when the create must make its own.
    pub(super) async fn take(&self) -> Option<Spare> {
        let taken = {
            let mut s = self.lock();
            if let Some(spare) = s.ready.pop_front() {
                Ok(Some(spare))
            } else if s.making <= s.waiting.len() {
                Ok(None)
            } else {
                let (tx, rx) = oneshot::channel();
                s.waiting.push_back(tx);
                Err(rx)
            }
        };
        // The refill replaces what was taken, or looks again for a free subnet.
        self.wake.notify_one();
        match taken {
            Ok(spare) => spare,
            Err(waiter) => waiter.await.ok().flatten(),
        }
    }

    /// The subnets no create may pick.
    pub(super) fn reserved_subnets(&self) -> HashSet<String> {
        let s = self.lock();
        s.reserved
            .values()
            .filter_map(|r| r.subnet.clone())
            .collect()
    }

    /// The UIDs no create may pick.
    pub(super) fn reserved_uids(&self) -> HashSet<u32> {
        self.lock()
            .reserved
            .values()
            .filter_map(|r| r.uid)
            .collect()
    }

    /// The deployment ids of the spares ready, being made, or taken by a create that has
    /// not written its row yet.
    pub(super) fn reserved_ids(&self) -> HashSet<String> {
        self.lock().reserved.keys().cloned().collect()
    }

    /// The spare of `deployment_id` is recorded in its row now (or its parts are gone).
    pub(super) fn release(&self, deployment_id: &str) {
        self.lock().reserved.remove(deployment_id);
    }

    /// Lets the refilling task look again (a subnet was freed).
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Networks ready now.
    pub(crate) fn ready(&self) -> usize {
        self.lock().ready.len()
    }

    /// Hands a finished network (or `None` after a failure) to the first waiting create,
    /// else keeps it ready.
    fn finish(&self, made: Option<Spare>) {
        let mut s = self.lock();
        s.making -= 1;
        let mut made = made;
        while let Some(waiter) = s.waiting.pop_front() {
            match waiter.send(made) {
                Ok(()) => return,
                // That create was cancelled: the next one gets it.
                Err(back) => made = back,
            }
        }
        if let Some(spare) = made {
            s.ready.push_back(spare);
        }
    }

    /// Counts a network about to be made (a create may claim it from now on), unless the
    /// pool is closed or holds `target` already.
    fn begin(&self, target: usize) -> bool {
        let mut s = self.lock();
        if s.closed || s.ready.len() + s.making >= target {
            return false;
        }
        s.making += 1;
        true
    }

    /// Reserves (`Some`) or gives back (`None`) the subnet of the spare being made for
    /// `deployment_id`.
    fn reserve_subnet(&self, deployment_id: &str, subnet: Option<&str>) {
        self.lock()
            .reserved
            .entry(deployment_id.to_owned())
            .or_default()
            .subnet = subnet.map(str::to_owned);
    }

    /// Reserves the UID of the spare being made for `deployment_id`.
    fn reserve_uid(&self, deployment_id: &str, uid: u32) {
        self.lock()
            .reserved
            .entry(deployment_id.to_owned())
            .or_default()
            .uid = Some(uid);
    }

    /// Closes the pool: creates that wait are told to make their own, and the ready
    /// networks are returned for removal.
    fn close(&self) -> Vec<Spare> {
        let mut s = self.lock();
        s.closed = true;
        s.waiting.clear();
        s.ready.drain(..).collect()
    }
}

/// How long the refilling task waits after Docker failed, at first and at most.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

impl Deployments {
    /// Keeps `target` networks made ahead until `stop` is cancelled, then removes those not
    /// taken; to be run as a background task. The first network counts as being made from
    /// this call on, so that a create right after start-up waits for it instead of racing
    /// it for a subnet.
    pub fn keep_spares(
        self,
        target: usize,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut begun = self.inner.spares.begin(target);
        async move {
            let spares = &self.inner.spares;
            let mut retry = RETRY_FIRST;
            while !stop.is_cancelled() {
                // Register interest first, so that a take in between is not missed.
                let woken = spares.wake.notified();
                if !std::mem::take(&mut begun) && !spares.begin(target) {
                    tokio::select! {
                        () = woken => {}
                        () = stop.cancelled() => {}
                    }
                    continue;
                }
                match self.make_spare().await {
                    Ok(()) => retry = RETRY_FIRST,
                    Err(DeployError::Runtime(RuntimeError::SubnetsExhausted { .. })) => {
                        // Wait for a delete (or the next take) instead of spinning.
                        tokio::select! {
                            () = woken => {}
                            () = stop.cancelled() => {}
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in_ms = retry.as_millis() as u64, "cannot make a network ahead");
                        tokio::select! {
                            () = tokio::time::sleep(retry) => {}
                            () = stop.cancelled() => {}
                        }
                        retry = (retry * 2).min(RETRY_MAX);
                    }
                }
            }
            for spare in spares.close() {
                self.discard(&spare).await;
            }
        }
    }

    /// Removes the parts of a spare no create will use, and its reservation.
    pub(super) async fn discard(&self, spare: &Spare) {
        let username = username_of(&spare.deployment_id);
        let rt = &self.inner.runtime;
        let network = async {
            if let Some(holder) = &spare.holder {
                rt.remove_container(holder).await?;
            }
            rt.remove_network(&spare.network_id).await
        };
        let (network, user) = tokio::join!(network, self.inner.users.delete(&username));
        if let Err(e) = network
            .map_err(DeployError::from)
            .and(user.map_err(DeployError::from))
        {
            tracing::warn!(deployment.id = %spare.deployment_id, error = %e, "cannot remove a spare's network or user; the sweep removes it later");
        }
        self.inner.spares.release(&spare.deployment_id);
    }

    /// Makes the spare counted by a successful `begin`, and hands it on.
    async fn make_spare(&self) -> Result<(), DeployError> {
        let deployment_id = new_id();
        let made = self.make_spare_parts(&deployment_id).await;
        let spares = &self.inner.spares;
        match made {
            Ok(spare) => {
                tracing::debug!(deployment.id = %spare.deployment_id, network.id = %spare.network_id, subnet = %spare.subnet, uid = spare.uid, "spare made");
                spares.finish(Some(spare));
                Ok(())
            }
            Err(e) => {
                spares.release(&deployment_id);
                spares.finish(None);
                Err(e)
            }
        }
    }

    /// The network and user of a spare for `deployment_id`, made together; whichever was
    /// made is removed when the other fails.
    async fn make_spare_parts(&self, deployment_id: &str) -> Result<Spare, DeployError> {
        let uid = self.pick_spare_uid(deployment_id).await?;
        let username = username_of(deployment_id);
        let (network, user) = tokio::join!(
            self.make_spare_network(deployment_id),
            self.inner.users.create(&username, uid, deployment_id)
        );
        match (network, user) {
            (Ok((network_id, subnet)), Ok(())) => {
                let holder = match self
                    .inner
                    .runtime
                    .start_holder(deployment_id, &network_id)
                    .await
                {
                    Ok(holder) => holder,
                    Err(e) => {
                        tracing::warn!(deployment.id = %deployment_id, error = %e, "cannot start a network holder; the deployment's first start joins its network the slow way");
                        None
                    }
                };
                Ok(Spare {
                    deployment_id: deployment_id.to_owned(),
                    network_id,
                    subnet,
                    uid,
                    holder,
                })
            }
            (Ok((network_id, _)), Err(e)) => {
                let _ = self.inner.runtime.remove_network(&network_id).await;
                Err(e.into())
            }
            (Err(e), Ok(())) => {
                let _ = self.inner.users.delete(&username).await;
                Err(e)
            }
            (Err(e), Err(_)) => Err(e),
        }
    }

    /// A free UID for a spare, reserved.
    async fn pick_spare_uid(&self, deployment_id: &str) -> Result<u32, DeployError> {
        let uid = self.free_uid().await?;
        self.inner.spares.reserve_uid(deployment_id, uid);
        Ok(uid)
    }

    /// A network for `deployment_id` on a free subnet (reserved while it is made); returns
    /// its id and subnet.
    async fn make_spare_network(
        &self,
        deployment_id: &str,
    ) -> Result<(String, String), DeployError> {
        let spares = &self.inner.spares;
        let mut avoid = self.taken_subnets().await?;
        for _ in 0..8 {
            avoid.extend(spares.reserved_subnets());
            let subnet = self.free_subnet(&avoid)?;
            spares.reserve_subnet(deployment_id, Some(&subnet));
            let made = self
                .inner
                .runtime
                .create_network(deployment_id, Some(&subnet), true)
                .await;
            match made {
                Ok(network_id) => return Ok((network_id, subnet)),
                Err(e) => {
                    spares.reserve_subnet(deployment_id, None);
                    if !e.is_subnet_overlap() {
                        return Err(e.into());
                    }
                    // Another Docker network holds it: avoid every subnet Docker knows.
                    avoid.insert(subnet);
                    avoid.extend(self.inner.runtime.docker_subnets().await?);
                }
            }
        }
        Err(RuntimeError::SubnetsExhausted {
            pool: self.inner.pool.to_string(),
        }
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spare(n: u8) -> Spare {
        Spare {
            deployment_id: format!("dp_{n}"),
            network_id: format!("net{n}"),
            subnet: format!("10.0.{n}.0/28"),
            uid: 5000 + u32::from(n),
            holder: None,
        }
    }

    #[tokio::test]
    async fn takes_ready_networks_in_order_and_none_when_empty() {
        let spares = Spares::default();
        assert!(spares.begin(2) && spares.begin(2));
        assert!(!spares.begin(2), "at most the target");
        spares.reserve_subnet("dp_1", Some("10.0.1.0/28"));
        spares.reserve_uid("dp_1", 5001);
        spares.reserve_subnet("dp_2", Some("10.0.2.0/28"));
        spares.reserve_uid("dp_2", 5002);
        spares.finish(Some(spare(1)));
        spares.finish(Some(spare(2)));
        assert_eq!(spares.ready(), 2);
        assert_eq!(spares.take().await, Some(spare(1)));
        assert_eq!(spares.take().await, Some(spare(2)));
        assert_eq!(spares.take().await, None);
        // Taken spares keep their subnets and UIDs reserved until released.
        assert_eq!(spares.reserved_subnets().len(), 2);
        spares.release("dp_1");
        assert_eq!(
            spares.reserved_subnets(),
            HashSet::from(["10.0.2.0/28".to_owned()])
        );
        assert_eq!(spares.reserved_uids(), HashSet::from([5002]));
        assert_eq!(spares.reserved_ids(), HashSet::from(["dp_2".to_owned()]));
        // A subnet given back (Docker refused it) leaves the UID reserved.
        spares.reserve_subnet("dp_2", None);
        assert!(spares.reserved_subnets().is_empty());
        assert_eq!(spares.reserved_uids(), HashSet::from([5002]));
    }

    #[tokio::test]
    async fn one_waiting_create_per_network_being_made() {
        let spares = std::sync::Arc::new(Spares::default());
        assert!(spares.begin(1));
        let first = tokio::spawn({
            let spares = spares.clone();
            async move { spares.take().await }
        });
        // Wait until the first create is registered as waiting.
        while spares.lock().waiting.is_empty() {
            tokio::task::yield_now().await;
        }
        // The one network being made is owed to the first create: the second makes its own.
        assert_eq!(spares.take().await, None);
        spares.finish(Some(spare(3)));
        assert_eq!(first.await.unwrap(), Some(spare(3)));
        assert_eq!(spares.ready(), 0);
    }

    #[tokio::test]
    async fn a_failed_network_sends_the_waiting_create_to_make_its_own() {
        let spares = std::sync::Arc::new(Spares::default());
        assert!(spares.begin(1));
        let waiting = tokio::spawn({
            let spares = spares.clone();
            async move { spares.take().await }
        });
        while spares.lock().waiting.is_empty() {
            tokio::task::yield_now().await;
        }
        spares.finish(None);
        assert_eq!(waiting.await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_passes_the_network_on() {
        let spares = Spares::default();
        assert!(spares.begin(1));
        let (tx, rx) = oneshot::channel();
        spares.lock().waiting.push_back(tx);
        drop(rx);
        spares.finish(Some(spare(5)));
        assert_eq!(spares.ready(), 1, "kept ready for the next create");
    }

    #[tokio::test]
    async fn a_closed_pool_makes_nothing_and_returns_its_networks() {
        let spares = Spares::default();
        assert!(spares.begin(1));
        spares.finish(Some(spare(6)));
        assert_eq!(spares.close(), vec![spare(6)]);
        assert!(!spares.begin(2));
        assert_eq!(spares.take().await, None);
    }
}
