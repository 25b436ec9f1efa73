//! The fake's [`SandboxBackend`] implementation: each operation records its call, fails or
//! waits when the test asked for it, then changes the in-memory world.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use tokio::sync::mpsc;

use super::{FakeBackend, FakePlace, FakeSandbox, Op, stream_of};
use crate::runtime::{
    Capacity, Created, Identity, Owned, OwnedKind, Place, Replacement, RuntimeError,
    SandboxBackend, SandboxSpec, SandboxState, Started, Teardown,
};

#[async_trait::async_trait]
impl SandboxBackend for FakeBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        self.enter(Op::Ping, "").await
    }

    fn capacity(&self) -> Capacity {
        Capacity {
            places: None,
            ahead: self.world().ahead,
        }
    }

    fn requests_made(&self) -> u64 {
        self.world().requests
    }

    async fn taken_ids(&self) -> Result<HashSet<u32>, RuntimeError> {
        let w = self.world();
        let mut ids = w.taken_ids.clone();
        ids.extend(w.identities.values().map(|i| i.uid));
        Ok(ids)
    }

    async fn provision(&self, identity: &Identity) -> Result<Place, RuntimeError> {
        self.enter(Op::Provision, &identity.deployment_id).await?;
        let mut w = self.world();
        let network = w.new_id("net");
        w.places.insert(
            network.clone(),
            FakePlace {
                deployment_id: identity.deployment_id.clone(),
                ahead: true,
            },
        );
        w.identities
            .insert(identity.username.clone(), identity.clone());
        Ok(Place { network })
    }

    async fn discard(&self, identity: &Identity, place: &Place) -> Result<(), RuntimeError> {
        self.enter(Op::Discard, &identity.deployment_id).await?;
        let mut w = self.world();
        w.places.remove(&place.network);
        w.identities.remove(&identity.username);
        Ok(())
    }

    async fn create(
        &self,
        spec: &SandboxSpec,
        place: Option<&Place>,
        _starts_soon: bool,
    ) -> Result<Created, RuntimeError> {
        self.enter(Op::Create, &spec.deployment_id).await?;
        let mut w = self.world();
        if w.missing_images.contains(&spec.image) {
            return Err(RuntimeError::Pull {
                image: spec.image.clone(),
                reason: "manifest unknown".into(),
                not_found: true,
            });
        }
        let network = match place {
            Some(p) => p.network.clone(),
            None => {
                let network = w.new_id("net");
                w.places.insert(
                    network.clone(),
                    FakePlace {
                        deployment_id: spec.deployment_id.clone(),
                        ahead: false,
                    },
                );
                w.identities.insert(spec.username.clone(), spec.identity());
                network
            }
        };
        let sandbox = w.new_id("sbx");
        w.sandboxes.insert(
            sandbox.clone(),
            FakeSandbox {
                deployment_id: spec.deployment_id.clone(),
                session: spec.session.clone(),
                network: network.clone(),
                image: spec.image.clone(),
                running: false,
                exited: false,
                exit_code: None,
                starts: 0,
            },
        );
        Ok(Created {
            sandbox,
            place: Place { network },
        })
    }

    async fn start(
        &self,
        spec: &SandboxSpec,
        sandbox: &str,
        _place: &Place,
        attach: bool,
    ) -> Result<Option<Started>, RuntimeError> {
        self.enter(Op::Start, sandbox).await?;
        let mut w = self.world();
        let Some(s) = w.sandboxes.get_mut(sandbox) else {
            return Ok(None);
        };
        if s.running && !attach {
            return Ok(Some(Started {
                sandbox: sandbox.to_owned(),
                attached: None,
                replacement: None,
            }));
        }
        // A backend that cannot start the sandbox as made starts an equivalent one instead
        // (Docker, when a network holder is gone); the old one waits for the commit.
        let copy = s.clone();
        let replace = w.replace_on_start && !copy.running;
        let (target, replacement) = if replace {
            let new = w.new_id("sbx");
            w.sandboxes
                .insert(new.clone(), FakeSandbox { starts: 0, ..copy });
            let r = Replacement {
                deployment_id: spec.deployment_id.clone(),
                old: sandbox.to_owned(),
                new: new.clone(),
            };
            (new, Some(r))
        } else {
            (sandbox.to_owned(), None)
        };
        if let Some(s) = w.sandboxes.get_mut(&target) {
            s.running = true;
            s.starts += 1;
        }
        w.running.remove(&target);
        let attached = self.start_streams(&mut w, &target, attach);
        Ok(Some(Started {
            sandbox: target,
            attached,
            replacement,
        }))
    }

    async fn pause(
        &self,
        spec: &SandboxSpec,
        sandbox: &str,
        _place: &Place,
    ) -> Result<Option<Replacement>, RuntimeError> {
        self.enter(Op::Pause, sandbox).await?;
        let mut w = self.world();
        w.running.remove(sandbox);
        let Some(s) = w.sandboxes.get_mut(sandbox) else {
            return Ok(None);
        };
        s.running = false;
        s.exited = true;
        s.exit_code = Some(0);
        if !w.replace_on_pause {
            return Ok(None);
        }
        let copy = w.sandboxes[sandbox].clone();
        let new = w.new_id("sbx");
        w.sandboxes.insert(
            new.clone(),
            FakeSandbox {
                exited: false,
                exit_code: None,
                starts: 0,
                ..copy
            },
        );
        Ok(Some(Replacement {
            deployment_id: spec.deployment_id.clone(),
            old: sandbox.to_owned(),
            new,
        }))
    }

    async fn commit(&self, replacement: &Replacement) -> Result<(), RuntimeError> {
        self.enter(Op::Commit, &replacement.deployment_id).await?;
        self.world().sandboxes.remove(&replacement.old);
        Ok(())
    }

    async fn abort(&self, replacement: &Replacement) {
        let mut w = self.world();
        w.calls.push((Op::Abort, replacement.deployment_id.clone()));
        w.sandboxes.remove(&replacement.new);
    }

    async fn remove_sandbox(&self, sandbox: &str) -> Result<(), RuntimeError> {
        self.enter(Op::RemoveSandbox, sandbox).await?;
        let mut w = self.world();
        w.running.remove(sandbox);
        w.sandboxes.remove(sandbox);
        Ok(())
    }

    async fn state(&self, sandbox: &str) -> Result<Option<SandboxState>, RuntimeError> {
        Ok(self.world().sandboxes.get(sandbox).map(|s| SandboxState {
            running: s.running,
            exited: s.exited,
            exit_code: s.exit_code,
            oom_killed: false,
        }))
    }

    async fn address(&self, sandbox: &str, _place: &Place) -> Result<Option<IpAddr>, RuntimeError> {
        let w = self.world();
        Ok(w.sandboxes
            .get(sandbox)
            .filter(|s| s.running)
            .map(|_| IpAddr::V4(Ipv4Addr::LOCALHOST)))
    }

    fn stderr(
        &self,
        sandbox: &str,
        _since: i64,
    ) -> BoxStream<'static, Result<Bytes, RuntimeError>> {
        let mut w = self.world();
        let (tx, rx) = mpsc::unbounded_channel();
        match w.running.get_mut(sandbox) {
            Some(r) => r.stderr = Some(tx),
            // Not running: the stream ends at once.
            None => drop(tx),
        }
        stream_of(rx)
    }

    async fn teardown(&self, teardown: &Teardown) -> Result<(), RuntimeError> {
        let id = &teardown.identity.deployment_id;
        self.enter(Op::Teardown, id).await?;
        let mut w = self.world();
        let sandboxes: Vec<String> = w
            .sandboxes
            .iter()
            .filter(|(_, s)| &s.deployment_id == id)
            .map(|(k, _)| k.clone())
            .collect();
        for s in sandboxes {
            w.running.remove(&s);
            w.sandboxes.remove(&s);
        }
        w.places.retain(|_, p| &p.deployment_id != id);
        w.identities.remove(&teardown.identity.username);
        Ok(())
    }

    async fn list_owned(&self) -> Result<Vec<Owned>, RuntimeError> {
        self.enter(Op::ListOwned, "").await?;
        let w = self.world();
        let sandboxes = w.sandboxes.iter().map(|(id, s)| Owned {
            kind: OwnedKind::Sandbox {
                session: s.session.clone(),
            },
            id: id.clone(),
            deployment_id: s.deployment_id.clone(),
        });
        let places = w.places.iter().map(|(id, p)| Owned {
            kind: OwnedKind::Place { ahead: p.ahead },
            id: id.clone(),
            deployment_id: p.deployment_id.clone(),
        });
        let identities = w.identities.iter().map(|(name, i)| Owned {
            kind: OwnedKind::Identity,
            id: name.clone(),
            deployment_id: i.deployment_id.clone(),
        });
        Ok(sandboxes.chain(places).chain(identities).collect())
    }

    async fn remove_owned(&self, owned: &Owned) -> Result<(), RuntimeError> {
        let mut w = self.world();
        match owned.kind {
            OwnedKind::Sandbox { .. } => {
                w.running.remove(&owned.id);
                w.sandboxes.remove(&owned.id);
            }
            OwnedKind::Place { .. } => {
                w.places.remove(&owned.id);
            }
            OwnedKind::Identity => {
                w.identities.remove(&owned.id);
            }
        }
        Ok(())
    }
}
