//! A client of mcp-runner's management API (`/api/deployment`) and its probes.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};

use super::setup::{API_KEY, CPUS, FIXTURE_IMAGE, MEMORY_MB};

/// A request that takes longer than this fails (a delete stops a container with a 10 s
/// grace period, on a daemon that may be busy with hundreds of others).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// The management API of one mcp-runner.
#[derive(Clone)]
pub struct Api {
    /// Base URL (`http://127.0.0.1:port`).
    pub url: String,
    http: reqwest::Client,
}

/// A deployment as the create call answered it.
#[derive(Debug, Clone)]
pub struct Created {
    /// Deployment id.
    pub id: String,
    /// Docker id of its container.
    pub container_id: String,
    /// `running` or `stopped`.
    pub status: String,
}

/// A stdio deployment of the fixture image with the direct container's limits. `auto_start`
/// `None` leaves `autoStart` out (the default: started by the create).
pub fn fixture_deployment(auto_start: Option<bool>) -> Value {
    let mut body = json!({
        "image": FIXTURE_IMAGE,
        "transport": {"type": "stdio"},
        "maxMemory": MEMORY_MB,
        "maxCpus": CPUS,
        "pauseAfterSeconds": 3600,
        "deleteAfterSeconds": 7200,
    });
    if let Some(start) = auto_start {
        body["autoStart"] = Value::Bool(start);
    }
    body
}

impl Api {
    /// A client of the server at `url`, with the benchmarks' API key.
    pub fn new(url: String) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("HTTP client")?;
        Ok(Api { url, http })
    }

    /// Creates a deployment (`POST /api/deployment`).
    pub async fn create(&self, body: &Value) -> anyhow::Result<Created> {
        let resp = self
            .http
            .post(format!("{}/api/deployment", self.url))
            .header("x-api-key", API_KEY)
            .json(body)
            .send()
            .await
            .context("POST /api/deployment")?;
        let status = resp.status();
        let body: Value = resp.json().await.context("create answer")?;
        if status.as_u16() != 201 {
            bail!("creating the deployment failed ({status}): {body}");
        }
        let field = |name: &str| {
            body.pointer(&format!("/deployment/{name}"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("no {name} in {body}"))
        };
        Ok(Created {
            id: field("id")?,
            container_id: field("container_id")?,
            status: field("status")?,
        })
    }

    /// Every deployment (`GET /api/deployment`).
    pub async fn list(&self) -> anyhow::Result<Vec<Value>> {
        let resp = self
            .http
            .get(format!("{}/api/deployment", self.url))
            .header("x-api-key", API_KEY)
            .send()
            .await
            .context("GET /api/deployment")?;
        let status = resp.status();
        if !status.is_success() {
            bail!("listing deployments failed: {status}");
        }
        resp.json().await.context("list answer")
    }

    /// Deletes a deployment (`DELETE /api/deployment/{id}`).
    pub async fn delete(&self, id: &str) -> anyhow::Result<()> {
        let resp = self
            .http
            .delete(format!("{}/api/deployment/{id}", self.url))
            .header("x-api-key", API_KEY)
            .send()
            .await
            .context("DELETE /api/deployment")?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            bail!("deleting {id} failed ({status}): {text}");
        }
        Ok(())
    }

    /// Whether `/readyz` answers 200 (Docker reachable, reconciliation done).
    pub async fn ready(&self) -> bool {
        match self.http.get(format!("{}/readyz", self.url)).send().await {
            Ok(resp) => resp.status().is_success(),
            Err(_) => false,
        }
    }

    /// The Streamable HTTP URL of a deployment.
    pub fn mcp_url(&self, deployment: &str) -> String {
        format!("{}/mcp-server/{deployment}/mcp", self.url)
    }
}
