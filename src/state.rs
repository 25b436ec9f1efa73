//! `AppState`: what the management API's handlers share. The deployments service and the
//! bridge appear once start-up has connected the sandbox backend and reconciled; until then
//! the API answers 503.

use std::ops::Deref;
use std::sync::Arc;

use tokio::sync::OnceCell;

use crate::bridge::{Bridge, BridgeSlot};
use crate::deployments::{Deployments, Limits};
use crate::error::ApiError;
use crate::lockout::Lockout;
use crate::runtime::backend_title;
use crate::store::Store;

/// Everything the handlers share.
pub struct App {
    /// The management key.
    pub api_key: String,
    /// Failed-authentication bookkeeping.
    pub lockout: Lockout,
    /// Bounds of create requests.
    pub limits: Limits,
    /// Whether `GET /metrics` needs the API key.
    pub metrics_require_key: bool,
    /// The sandbox backend's name (the readiness check names it before it answers).
    pub backend: &'static str,
    /// Set once the backend answered and reconciliation finished.
    deployments: OnceCell<Deployments>,
    bridge: BridgeSlot,
    store: Store,
}

impl App {
    /// The shared state of a server over `store`, not ready yet.
    pub fn new(
        api_key: String,
        limits: Limits,
        metrics_require_key: bool,
        backend: &'static str,
        store: Store,
    ) -> App {
        App {
            api_key,
            lockout: Lockout::default(),
            limits,
            metrics_require_key,
            backend,
            deployments: OnceCell::new(),
            bridge: BridgeSlot::new(backend),
            store,
        }
    }

    /// Start-up is done: the API and the MCP routes serve from now on. False when it was
    /// done already.
    pub fn ready(&self, deployments: Deployments, bridge: Arc<Bridge>) -> bool {
        self.bridge.set(bridge);
        self.deployments.set(deployments).is_ok()
    }

    /// The deployments service; 503 until start-up reconciliation has finished.
    pub fn deployments(&self) -> Result<&Deployments, ApiError> {
        self.deployments.get().ok_or_else(|| {
            ApiError::Unavailable(format!(
                "mcp-runner is starting: waiting for {} and reconciling deployments",
                backend_title(self.backend)
            ))
        })
    }

    /// The MCP bridge, once start-up has finished.
    pub fn bridge(&self) -> Option<Arc<Bridge>> {
        self.bridge.get()
    }

    /// Where the MCP routes find the bridge.
    pub fn bridge_slot(&self) -> BridgeSlot {
        self.bridge.clone()
    }

    /// Whether start-up reconciliation has finished.
    pub fn is_ready(&self) -> bool {
        self.deployments.initialized()
    }

    /// The store (the readiness probe, the state gauges, and tests).
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// Cheap handle on the shared `App`.
#[derive(Clone)]
pub struct AppState(pub Arc<App>);

impl Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}
