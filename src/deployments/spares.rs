//! Networks made ahead: a few deployment networks, each already named and labelled after the
//! id of the deployment that will use it, kept ready so that a create does not wait for
//! Docker to make one (70–110 ms of a cold start on this host).
//!
//! A create takes a ready network, or claims one still being made and waits for it (never
//! longer than making its own would take); without either it makes its own. A background
//! task ([`Deployments::keep_spares`]) refills the pool and removes what is left of it when
//! mcp-runner stops; reconciliation removes the ones a killed mcp-runner left.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use super::{DeployError, Deployments, new_id};
use crate::runtime::RuntimeError;

/// A network made ahead of its deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spare {
    /// The id the deployment that takes it gets (the network's name and label carry it).
    pub deployment_id: String,
    /// Docker network id.
    pub network_id: String,
    /// Its subnet of the pool.
    pub subnet: String,
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
    /// Subnets of the ready networks and of those being made (no create picks them), with
    /// the deployment id each network is made for.
    reserved: HashMap<String, String>,
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
        let waiter = {
            let mut s = self.lock();
            if let Some(spare) = s.ready.pop_front() {
                drop(s);
                self.wake.notify_one();
                return Some(spare);
            }
            if s.making <= s.waiting.len() {
                drop(s);
                // Perhaps the refill waits for a free subnet: let it look again.
                self.wake.notify_one();
                return None;
            }
            let (tx, rx) = oneshot::channel();
            s.waiting.push_back(tx);
            rx
        };
        self.wake.notify_one();
        waiter.await.ok().flatten()
    }

    /// The subnets no create may pick.
    pub(super) fn reserved(&self) -> HashSet<String> {
        self.lock().reserved.keys().cloned().collect()
    }

    /// The deployment ids of the networks ready, being made, or taken by a create that has
    /// not recorded its row yet.
    pub(super) fn reserved_ids(&self) -> HashSet<String> {
        self.lock().reserved.values().cloned().collect()
    }

    /// A subnet of a taken network is recorded in its row now (or the network is gone).
    pub(super) fn release(&self, subnet: &str) {
        self.lock().reserved.remove(subnet);
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

    /// Reserves a subnet for the network being made for `deployment_id`.
    fn reserve(&self, subnet: &str, deployment_id: &str) {
        self.lock()
            .reserved
            .insert(subnet.to_owned(), deployment_id.to_owned());
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
                if let Err(e) = self.inner.runtime.remove_network(&spare.network_id).await {
                    tracing::warn!(network.id = %spare.network_id, error = %e, "cannot remove a network made ahead; the next start removes it");
                }
                spares.release(&spare.subnet);
            }
        }
    }

    /// Makes the network counted by a successful `begin`, and hands it on.
    async fn make_spare(&self) -> Result<(), DeployError> {
        let made = self.make_spare_network().await;
        let spares = &self.inner.spares;
        match made {
            Ok(spare) => {
                tracing::debug!(deployment.id = %spare.deployment_id, network.id = %spare.network_id, subnet = %spare.subnet, "network made ahead");
                spares.finish(Some(spare));
                Ok(())
            }
            Err(e) => {
                spares.finish(None);
                Err(e)
            }
        }
    }

    /// A network for a new deployment id, on a free subnet (reserved while it is made).
    async fn make_spare_network(&self) -> Result<Spare, DeployError> {
        let spares = &self.inner.spares;
        let deployment_id = new_id();
        let mut avoid: HashSet<String> =
            self.inner.store.used_subnets().await?.into_iter().collect();
        for _ in 0..8 {
            avoid.extend(spares.reserved());
            let subnet = self
                .inner
                .pool
                .pick(&avoid)
                .ok_or(RuntimeError::SubnetsExhausted {
                    pool: self.inner.pool.to_string(),
                })?;
            spares.reserve(&subnet, &deployment_id);
            let made = self
                .inner
                .runtime
                .create_network(&deployment_id, Some(&subnet), true)
                .await;
            match made {
                Ok(network_id) => {
                    return Ok(Spare {
                        deployment_id,
                        network_id,
                        subnet,
                    });
                }
                Err(e) => {
                    spares.release(&subnet);
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
        }
    }

    #[tokio::test]
    async fn takes_ready_networks_in_order_and_none_when_empty() {
        let spares = Spares::default();
        assert!(spares.begin(2) && spares.begin(2));
        assert!(!spares.begin(2), "at most the target");
        spares.reserve("10.0.1.0/28", "dp_1");
        spares.reserve("10.0.2.0/28", "dp_2");
        spares.finish(Some(spare(1)));
        spares.finish(Some(spare(2)));
        assert_eq!(spares.ready(), 2);
        assert_eq!(spares.take().await, Some(spare(1)));
        assert_eq!(spares.take().await, Some(spare(2)));
        assert_eq!(spares.take().await, None);
        // Taken networks keep their subnets reserved until released.
        assert_eq!(spares.reserved().len(), 2);
        spares.release("10.0.1.0/28");
        assert_eq!(spares.reserved().len(), 1);
        assert_eq!(spares.reserved_ids(), HashSet::from(["dp_2".to_owned()]));
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
