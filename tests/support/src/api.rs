//! A client of mcp-runner's HTTP API: the management routes (`/api/deployment`), the probes,
//! and raw requests with the API key for whatever a test wants to send itself.
//!
//! The test-facing calls answer `(status, JSON)` and fail the test when the request cannot be
//! made at all; the `try_` calls answer errors instead, for benchmarks and clean-up code that
//! must go on after a failure.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use crate::API_KEY;

/// A request that takes longer than this fails (a delete stops a container with a 10 s grace
/// period, on a daemon that may be busy with hundreds of others).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Deletes in flight at once in [`Api::delete_all`].
const DELETES_IN_FLIGHT: usize = 8;

/// The HTTP API of a running mcp-runner.
#[derive(Clone)]
pub struct Api {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// HTTP client.
    pub http: reqwest::Client,
}

/// A deployment as a create answered it.
#[derive(Debug, Clone)]
pub struct Created {
    /// Deployment id.
    pub id: String,
    /// Docker id of its container.
    pub container_id: String,
    /// `running` or `stopped`.
    pub status: String,
}

/// How long a probe may take to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Status and JSON body of a response (the text as a JSON string when it is not JSON).
pub async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    answer(resp).await.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Status and JSON body of a response; an error when the body was cut off.
async fn answer(resp: reqwest::Response) -> anyhow::Result<(u16, Value)> {
    let status = resp.status().as_u16();
    let text = resp.text().await.context("read the body")?;
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, json))
}

impl Api {
    /// The API at `url`.
    pub fn new(url: String) -> Api {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("an HTTP client");
        Api { url, http }
    }

    /// The Streamable HTTP endpoint of deployment `id`.
    pub fn mcp_url(&self, id: &str) -> String {
        format!("{}/mcp-server/{id}/mcp", self.url)
    }

    /// A request with the API key.
    pub fn authed(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .header("x-api-key", API_KEY)
    }

    /// An authenticated request with an optional JSON body: status and JSON; an error only when
    /// no whole answer came.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self.authed(method.clone(), path);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        answer(resp)
            .await
            .with_context(|| format!("the answer to {method} {path}"))
    }

    async fn must(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.call(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `POST /api/deployment` with `body`.
    pub async fn create(&self, body: &Value) -> (u16, Value) {
        self.must(Method::POST, "/api/deployment", Some(body)).await
    }

    /// Creates a stdio deployment of the tests' fixture image, `extra` merged into the body,
    /// and returns its data, asserting 201.
    pub async fn create_fixture(&self, extra: Value) -> Value {
        let mut body =
            json!({"image": crate::fixture::test_image().await, "transport": {"type": "stdio"}});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let (status, json) = self.create(&body).await;
        assert_eq!(status, 201, "create failed: {json}");
        json["deployment"].clone()
    }

    /// `GET /api/deployment/{id}`.
    pub async fn get(&self, id: &str) -> (u16, Value) {
        self.must(Method::GET, &format!("/api/deployment/{id}"), None)
            .await
    }

    /// `GET /api/deployment`, asserting 200.
    pub async fn list(&self) -> Vec<Value> {
        self.try_list().await.unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `DELETE /api/deployment/{id}`.
    pub async fn delete(&self, id: &str) -> (u16, Value) {
        self.must(Method::DELETE, &format!("/api/deployment/{id}"), None)
            .await
    }

    /// `GET /api/deployment/{id}/logs?tail={tail}`.
    pub async fn logs(&self, id: &str, tail: usize) -> (u16, Value) {
        let path = format!("/api/deployment/{id}/logs?tail={tail}");
        self.must(Method::GET, &path, None).await
    }

    /// Deletes deployments `ids` a few at a time, asserting 200 for each.
    pub async fn delete_all(&self, ids: &[String]) {
        futures_util::stream::iter(ids)
            .for_each_concurrent(DELETES_IN_FLIGHT, |id| async move {
                let (status, body) = self.delete(id).await;
                assert_eq!(status, 200, "delete {id}: {body}");
            })
            .await;
    }

    /// The ids of every deployment the server lists, in its order.
    pub async fn list_ids(&self) -> Vec<String> {
        self.list()
            .await
            .iter()
            .map(|d| d["id"].as_str().expect("id").to_owned())
            .collect()
    }

    /// Deletes every deployment the server lists (see [`Api::delete_all`]).
    pub async fn delete_everything(&self) {
        self.delete_all(&self.list_ids().await).await;
    }

    /// Creates a deployment; an error unless the answer is 201.
    pub async fn try_create(&self, body: &Value) -> anyhow::Result<Created> {
        let (status, body) = self
            .call(Method::POST, "/api/deployment", Some(body))
            .await?;
        if status != 201 {
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

    /// Every deployment; an error unless the answer is 200 with a list.
    pub async fn try_list(&self) -> anyhow::Result<Vec<Value>> {
        let (status, body) = self.call(Method::GET, "/api/deployment", None).await?;
        if status != 200 {
            bail!("listing deployments failed ({status}): {body}");
        }
        body.as_array()
            .cloned()
            .ok_or_else(|| anyhow!("the list is no array: {body}"))
    }

    /// Deletes a deployment; an error unless the answer is a success.
    pub async fn try_delete(&self, id: &str) -> anyhow::Result<()> {
        let path = format!("/api/deployment/{id}");
        let (status, body) = self.call(Method::DELETE, &path, None).await?;
        if !(200..300).contains(&status) {
            bail!("deleting {id} failed ({status}): {body}");
        }
        Ok(())
    }

    /// `GET` of a probe (`/readyz`, `/healthz`) without the key: status and body; an error
    /// when no answer came within `timeout`.
    pub async fn probe(&self, path: &str, timeout: Duration) -> anyhow::Result<(u16, Value)> {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .timeout(timeout)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        answer(resp).await
    }

    /// `GET /readyz`: status and body.
    pub async fn readyz(&self) -> (u16, Value) {
        self.probe("/readyz", PROBE_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `GET /healthz` status.
    pub async fn healthz(&self) -> u16 {
        self.probe("/healthz", PROBE_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
            .0
    }
}
