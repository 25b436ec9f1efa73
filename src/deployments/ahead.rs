//! Places provisioned ahead: the place and identity of a few deployments to come, made
//! ahead by the backend and named after the id each deployment will get, so that a create
//! waits for neither (Docker: a network, 70–110 ms on this host, a host account, about 30 ms
//! of CPU that would compete with the container's create, and a network holder whose
//! namespace the first start joins).
//!
//! A create takes a ready place, or claims one still being made and waits for it (never
//! longer than making its own would take); without either it makes its own. A background
//! task ([`Deployments::keep_ahead`]) refills the pool to the backend's
//! [`Capacity::ahead`](crate::runtime::Capacity) and removes what is left of it when
//! mcp-runner stops; start-up reconciliation and the sweep remove what a killed mcp-runner
//! left. Until its deployment's row records it, a place's UID is reserved here.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use super::spec::{identity_of, new_id};
use super::{DeployError, Deployments};
use crate::runtime::{Identity, Place, RuntimeError};

/// A place and identity made ahead for the deployment that takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// The identity (its deployment id is the one the deployment that takes it gets).
    pub identity: Identity,
    /// The place.
    pub place: Place,
}

/// The pool of places made ahead.
#[derive(Default)]
pub(super) struct Ahead {
    state: std::sync::Mutex<State>,
    /// Wakes the refilling task (a place was taken, or one was freed).
    wake: Notify,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Provisioned>,
    /// Places being made now.
    making: usize,
    /// Creates waiting for one of those, in order; each is owed the next one made.
    waiting: VecDeque<oneshot::Sender<Option<Provisioned>>>,
    /// By deployment id, the UID of every place ready, being made, or taken by a create
    /// that has not written its row yet: no create picks them.
    reserved: HashMap<String, u32>,
    /// Set when mcp-runner stops: nothing more is made.
    closed: bool,
}

impl Ahead {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A ready place, or the next one made when one is being made that no other create
    /// waits for; `None` when the create must make its own.
    pub(super) async fn take(&self) -> Option<Provisioned> {
        let taken = {
            let mut s = self.lock();
            if let Some(place) = s.ready.pop_front() {
                Ok(Some(place))
            } else if s.making <= s.waiting.len() {
                Ok(None)
            } else {
                let (tx, rx) = oneshot::channel();
                s.waiting.push_back(tx);
                Err(rx)
            }
        };
        // The refill replaces what was taken, or looks again for room.
        self.wake.notify_one();
        match taken {
            Ok(place) => place,
            Err(waiter) => waiter.await.ok().flatten(),
        }
    }

    /// The UIDs no create may pick.
    pub(super) fn reserved_uids(&self) -> HashSet<u32> {
        self.lock().reserved.values().copied().collect()
    }

    /// The deployment ids of the places ready, being made, or taken by a create that has
    /// not written its row yet.
    pub(super) fn reserved_ids(&self) -> HashSet<String> {
        self.lock().reserved.keys().cloned().collect()
    }

    /// The place of `deployment_id` is recorded in its row now (or its parts are gone).
    pub(super) fn release(&self, deployment_id: &str) {
        self.lock().reserved.remove(deployment_id);
    }

    /// Lets the refilling task look again (a place was freed).
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Places ready now.
    pub(super) fn ready(&self) -> usize {
        self.lock().ready.len()
    }

    /// Hands a finished place (or `None` after a failure) to the first waiting create, else
    /// keeps it ready.
    fn finish(&self, made: Option<Provisioned>) {
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
        if let Some(place) = made {
            s.ready.push_back(place);
        }
    }

    /// Counts a place about to be made (a create may claim it from now on), unless the pool
    /// is closed or holds `target` already.
    fn begin(&self, target: usize) -> bool {
        let mut s = self.lock();
        if s.closed || s.ready.len() + s.making >= target {
            return false;
        }
        s.making += 1;
        true
    }

    /// Reserves the UID of the place being made for `deployment_id`.
    fn reserve_uid(&self, deployment_id: &str, uid: u32) {
        self.lock().reserved.insert(deployment_id.to_owned(), uid);
    }

    /// Closes the pool: creates that wait are told to make their own, and the ready places
    /// are returned for removal.
    fn close(&self) -> Vec<Provisioned> {
        let mut s = self.lock();
        s.closed = true;
        s.waiting.clear();
        s.ready.drain(..).collect()
    }
}

/// How long the refilling task waits after the backend failed, at first and at most.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

impl Deployments {
    /// Keeps the backend's number of places provisioned ahead until `stop` is cancelled,
    /// then removes those not taken; to be run as a background task. The first place counts
    /// as being made from this call on, so that a create right after start-up waits for it
    /// instead of racing it.
    pub fn keep_ahead(
        self,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let target = self.inner.backend.capacity().ahead;
        let mut begun = self.inner.ahead.begin(target);
        async move {
            let ahead = &self.inner.ahead;
            let mut retry = RETRY_FIRST;
            while !stop.is_cancelled() {
                // Register interest first, so that a take in between is not missed.
                let woken = ahead.wake.notified();
                if !std::mem::take(&mut begun) && !ahead.begin(target) {
                    tokio::select! {
                        () = woken => {}
                        () = stop.cancelled() => {}
                    }
                    continue;
                }
                match self.make_ahead().await {
                    Ok(()) => retry = RETRY_FIRST,
                    Err(DeployError::Runtime(RuntimeError::Exhausted { .. })) => {
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
            for place in ahead.close() {
                self.discard(&place).await;
            }
        }
    }

    /// Places provisioned ahead and ready now.
    pub fn ahead_ready(&self) -> usize {
        self.inner.ahead.ready()
    }

    /// Removes a place made ahead that no create will use, and its reservation.
    pub(super) async fn discard(&self, place: &Provisioned) {
        let backend = &self.inner.backend;
        if let Err(e) = backend.discard(&place.identity, &place.place).await {
            tracing::warn!(deployment.id = %place.identity.deployment_id, error = %e, "cannot remove a spare's network or user; the sweep removes it later");
        }
        self.inner.ahead.release(&place.identity.deployment_id);
    }

    /// Makes the place counted by a successful `begin`, and hands it on.
    async fn make_ahead(&self) -> Result<(), DeployError> {
        let deployment_id = new_id();
        let made = self.provision(&deployment_id).await;
        let ahead = &self.inner.ahead;
        match made {
            Ok(place) => {
                tracing::debug!(deployment.id = %deployment_id, network.id = %place.place.network, uid = place.identity.uid, "spare made");
                ahead.finish(Some(place));
                Ok(())
            }
            Err(e) => {
                ahead.release(&deployment_id);
                ahead.finish(None);
                Err(e)
            }
        }
    }

    /// A free UID, reserved, and the place of `deployment_id` made with it.
    async fn provision(&self, deployment_id: &str) -> Result<Provisioned, DeployError> {
        let uid = self.free_uid().await?;
        self.inner.ahead.reserve_uid(deployment_id, uid);
        let identity = identity_of(deployment_id, uid);
        let place = self.inner.backend.provision(&identity).await?;
        Ok(Provisioned { identity, place })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spare(n: u8) -> Provisioned {
        Provisioned {
            identity: identity_of(&format!("dp_{n}"), 5000 + u32::from(n)),
            place: Place {
                network: format!("net{n}"),
            },
        }
    }

    #[tokio::test]
    async fn takes_ready_networks_in_order_and_none_when_empty() {
        let spares = Ahead::default();
        assert!(spares.begin(2) && spares.begin(2));
        assert!(!spares.begin(2), "at most the target");
        spares.reserve_uid("dp_1", 5001);
        spares.reserve_uid("dp_2", 5002);
        spares.finish(Some(spare(1)));
        spares.finish(Some(spare(2)));
        assert_eq!(spares.ready(), 2);
        assert_eq!(spares.take().await, Some(spare(1)));
        assert_eq!(spares.take().await, Some(spare(2)));
        assert_eq!(spares.take().await, None);
        // Taken places keep their UIDs reserved until released.
        assert_eq!(spares.reserved_uids(), HashSet::from([5001, 5002]));
        spares.release("dp_1");
        assert_eq!(spares.reserved_uids(), HashSet::from([5002]));
        assert_eq!(spares.reserved_ids(), HashSet::from(["dp_2".to_owned()]));
    }

    #[tokio::test]
    async fn one_waiting_create_per_network_being_made() {
        let spares = std::sync::Arc::new(Ahead::default());
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
        let spares = std::sync::Arc::new(Ahead::default());
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
        let spares = Ahead::default();
        assert!(spares.begin(1));
        let (tx, rx) = oneshot::channel();
        spares.lock().waiting.push_back(tx);
        drop(rx);
        spares.finish(Some(spare(5)));
        assert_eq!(spares.ready(), 1, "kept ready for the next create");
    }

    #[tokio::test]
    async fn a_closed_pool_makes_nothing_and_returns_its_networks() {
        let spares = Ahead::default();
        assert!(spares.begin(1));
        spares.finish(Some(spare(6)));
        assert_eq!(spares.close(), vec![spare(6)]);
        assert!(!spares.begin(2));
        assert_eq!(spares.take().await, None);
    }
}
