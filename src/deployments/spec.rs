//! What a deployment is made of before it exists: the validated create request, the bounds a
//! request must respect, its id, and the sandbox spec derived from a row.

use std::collections::{BTreeMap, HashSet};

use rand::seq::IndexedRandom;

use crate::config::UidRange;
use crate::domain::{Deployment, SessionMode, Status, Transport};
use crate::runtime::{Identity, Place, SandboxSpec, Teardown};

/// A validated create request.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    /// Image reference.
    pub image: String,
    /// Container command.
    pub args: Option<Vec<String>>,
    /// Container environment.
    pub env: BTreeMap<String, String>,
    /// Memory limit in MB.
    pub max_memory: Option<u64>,
    /// CPU limit in cores.
    pub max_cpus: Option<f64>,
    /// Idle time before stop.
    pub pause_after_seconds: Option<u64>,
    /// Idle time before deletion.
    pub delete_after_seconds: Option<u64>,
    /// Start the container now.
    pub auto_start: bool,
    /// Caller's metadata.
    pub metadata: serde_json::Value,
    /// Upstream transport.
    pub transport: Transport,
    /// How sessions share the server.
    pub session_mode: SessionMode,
}

/// Bounds a create request must respect, and the defaults of what it leaves out.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Smallest idle time, seconds.
    pub min_idle_seconds: u64,
    /// Largest memory limit, MB.
    pub max_memory_mb: u64,
    /// Largest CPU limit, cores.
    pub max_cpus: f64,
    /// Memory limit when none is asked (None: unlimited).
    pub default_memory_mb: Option<u64>,
    /// CPU limit when none is asked (None: unlimited).
    pub default_cpus: Option<f64>,
}

/// `dp_` + 24 random characters of `[a-z0-9]` (about 124 bits): unguessable, since the id is
/// the capability in the MCP URLs.
pub fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut id = String::with_capacity(27);
    id.push_str("dp_");
    for _ in 0..24 {
        id.push(char::from(*ALPHABET.choose(&mut rng).unwrap_or(&b'a')));
    }
    id
}

/// The account name of deployment `id`.
pub(super) fn username_of(id: &str) -> String {
    format!("mcp-{}", id.strip_prefix("dp_").unwrap_or(id))
}

/// The identity of deployment `id` with UID (and GID) `uid`.
pub(super) fn identity_of(id: &str, uid: u32) -> Identity {
    Identity {
        deployment_id: id.to_owned(),
        username: username_of(id),
        uid,
        gid: uid,
    }
}

/// A random free UID of the range.
pub(super) fn pick_uid(range: UidRange, used: &HashSet<u32>) -> Option<u32> {
    crate::domain::pick_free(
        range.len(),
        |i| range.first + i as u32,
        |uid| used.contains(uid),
    )
}

/// The sandbox of a deployment (or of one of its sessions).
pub(super) fn spec_of(d: &Deployment, session: Option<String>) -> SandboxSpec {
    SandboxSpec {
        deployment_id: d.id.clone(),
        image: d.image.clone(),
        args: d.args.clone(),
        env: d.env.clone(),
        username: d.username.clone(),
        uid: d.uid,
        gid: d.gid,
        memory_mb: d.max_memory,
        cpus: d.max_cpus,
        stdin: d.transport.is_stdio(),
        session,
    }
}

/// The place a row records.
pub(super) fn place_of(d: &Deployment) -> Option<Place> {
    d.network_id.clone().map(|network| Place { network })
}

/// Everything a row knows of its deployment's parts, for their removal.
pub(super) fn teardown_of(d: &Deployment) -> Teardown {
    Teardown {
        identity: Identity {
            deployment_id: d.id.clone(),
            username: d.username.clone(),
            uid: d.uid,
            gid: d.gid,
        },
        sandbox: d.container_id.clone(),
        place: place_of(d),
        sessions: d.session_mode == SessionMode::Isolated,
    }
}

/// Whether the API shows a row (running or stopped).
pub(super) fn visible(d: &Deployment) -> bool {
    matches!(d.status, Status::Running | Status::Stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_and_random() {
        let a = new_id();
        let b = new_id();
        assert!(a.starts_with("dp_") && a.len() == 27);
        assert!(
            a[3..]
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_ne!(a, b);
        assert_eq!(username_of(&a), format!("mcp-{}", &a[3..]));
    }

    #[test]
    fn picks_only_free_uids_and_reports_exhaustion() {
        let range = UidRange {
            first: 5000,
            last: 5009,
        };
        let used: HashSet<u32> = (5000..=5008).collect();
        assert_eq!(pick_uid(range, &used), Some(5009));
        let all: HashSet<u32> = (5000..=5009).collect();
        assert_eq!(pick_uid(range, &all), None);
    }
}
