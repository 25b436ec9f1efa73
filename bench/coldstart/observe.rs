//! What the cold-start benchmark watches besides its own clock: the in-process server's log
//! events (mcp-runner at `info`, bollard's request lines at `debug`) and Docker's event
//! stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::query_parameters::EventsOptionsBuilder;
use futures_util::StreamExt;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// One log event of the server.
#[derive(Debug, Clone)]
pub struct LogEvent {
    /// When it was emitted.
    pub at: Instant,
    /// Its target (`bollard::docker`, `mcp_runner::deployments`, …).
    pub target: String,
    /// Its message (for bollard's request lines: the request URI).
    pub message: String,
}

/// A tracing layer that keeps every event it is given (filter it per layer).
#[derive(Clone, Default)]
pub struct Recorder {
    events: Arc<Mutex<Vec<LogEvent>>>,
}

impl Recorder {
    /// Forgets what was recorded so far.
    pub fn clear(&self) {
        self.events.lock().expect("lock").clear();
    }

    /// What was recorded since the last `clear`.
    pub fn take(&self) -> Vec<LogEvent> {
        std::mem::take(&mut *self.events.lock().expect("lock"))
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    /// The target of an event that came from the `log` crate (bollard logs through it).
    log_target: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "log.target" => self.log_target = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "log.target" => self.log_target = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recorder {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let at = Instant::now();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let target = fields
            .log_target
            .unwrap_or_else(|| event.metadata().target().to_owned());
        self.events.lock().expect("lock").push(LogEvent {
            at,
            target,
            message: fields.message,
        });
    }
}

/// One Docker event of a container or network.
#[derive(Debug, Clone)]
pub struct DockerEvent {
    /// `container` or `network`.
    pub kind: String,
    /// `create`, `attach`, `start`, `connect`, …
    pub action: String,
    /// The object's name (`name` attribute).
    pub name: String,
    /// The daemon's timestamp.
    pub at: SystemTime,
}

/// Docker's container and network events since the watcher started, as they arrive.
pub struct DockerEvents {
    seen: Arc<Mutex<Vec<DockerEvent>>>,
    task: tokio::task::JoinHandle<()>,
}

impl DockerEvents {
    /// Subscribes to the daemon's event stream from now on.
    pub fn watch() -> anyhow::Result<DockerEvents> {
        let docker = Docker::connect_with_defaults()?;
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let filters = HashMap::from([("type", vec!["container", "network"])]);
        let options = EventsOptionsBuilder::new()
            // Events from the start, even when the stream connects a moment later.
            .since(&since.to_string())
            .filters(&filters)
            .build();
        let seen: Arc<Mutex<Vec<DockerEvent>>> = Arc::default();
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let mut stream = docker.events(Some(options));
            while let Some(Ok(ev)) = stream.next().await {
                let attributes = ev.actor.as_ref().and_then(|a| a.attributes.as_ref());
                let name = attributes
                    .and_then(|a| a.get("name"))
                    .cloned()
                    .unwrap_or_default();
                let nanos = ev.time_nano.unwrap_or(0).max(0) as u64;
                sink.lock().expect("lock").push(DockerEvent {
                    kind: ev.typ.map(|t| t.to_string()).unwrap_or_default(),
                    action: ev.action.unwrap_or_default(),
                    name,
                    at: UNIX_EPOCH + std::time::Duration::from_nanos(nanos),
                });
            }
        });
        Ok(DockerEvents { seen, task })
    }

    /// The events so far of the object named `name`.
    pub fn of(&self, name: &str) -> Vec<DockerEvent> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|e| e.name == name)
            .cloned()
            .collect()
    }

    /// Forgets the events so far.
    pub fn clear(&self) {
        self.seen.lock().expect("lock").clear();
    }
}

impl Drop for DockerEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}
