//! What an instance has left: containers, networks, host users and database rows, with or
//! without the spares a running server keeps (a network made ahead, its holder and its host
//! user each, for a deployment id that has no row yet).

use std::collections::HashSet;
use std::path::Path;

use crate::docker::{self, made_ahead_deployments_of, objects, users_of};

/// Spares a server keeps by default (`NETWORK_SPARES`).
pub const SPARES: usize = 2;

/// Every row of a database file: (id, status, username).
pub async fn rows(db_path: &Path) -> Vec<(String, String, String)> {
    let store = mcp_runner::store::Store::open(db_path)
        .await
        .expect("open db");
    let rows = store
        .list()
        .await
        .expect("list rows")
        .into_iter()
        .map(|d| (d.id, d.status.as_str().to_owned(), d.username))
        .collect();
    store.close().await;
    rows
}

/// Number of rows in a database file.
pub async fn row_count(db_path: &Path) -> usize {
    rows(db_path).await.len()
}

/// The deployment id a host user name stands for (`mcp-<x>` → `dp_<x>`).
fn user_deployment(user: &str) -> Option<String> {
    Some(format!("dp_{}", user.strip_prefix("mcp-")?))
}

/// The ids of the instance's spares: deployment ids that a network made ahead or a host user
/// carries but no row has (a spare being made may have its user before its network). Asserts
/// that there are no more than the server keeps: anything beyond that is left over, and the
/// check after the server stops finds it.
pub async fn spare_ids(instance: &str, db_path: &Path) -> HashSet<String> {
    let rows: HashSet<String> = rows(db_path).await.into_iter().map(|(id, ..)| id).collect();
    let spares: HashSet<String> = made_ahead_deployments_of(instance)
        .into_iter()
        .chain(users_of(instance).iter().filter_map(|u| user_deployment(u)))
        .filter(|d| !rows.contains(d))
        .collect();
    assert!(
        spares.len() <= SPARES,
        "{} deployment ids with a network made ahead or a user but no row (at most {SPARES} \
         spares are kept): {spares:?}",
        spares.len()
    );
    spares
}

/// The `mcp-runner.deployment` labels of the instance's networks, its spares' left out.
pub async fn deployment_networks(instance: &str, db_path: &Path) -> Vec<String> {
    let networks = docker::labelled("network", instance);
    let spares = spare_ids(instance, db_path).await;
    networks
        .into_iter()
        .filter(|d| !spares.contains(d))
        .collect()
}

/// The instance's host users, its spares' left out.
pub async fn deployment_users(instance: &str, db_path: &Path) -> Vec<String> {
    let users = users_of(instance);
    let spares = spare_ids(instance, db_path).await;
    users
        .into_iter()
        .filter(|u| !is_spare_user(&spares, u))
        .collect()
}

/// Whether host user `user` belongs to one of `spares`.
fn is_spare_user(spares: &HashSet<String>, user: &str) -> bool {
    user_deployment(user).is_some_and(|d| spares.contains(&d))
}

/// Containers, networks and host users of an instance.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Container ids (network holders included).
    pub containers: Vec<String>,
    /// Network ids.
    pub networks: Vec<String>,
    /// Host user names.
    pub users: Vec<String>,
    /// Spares left out (see [`Leftovers::besides_spares`]).
    pub spares: usize,
}

impl Leftovers {
    /// Everything of `instance`.
    pub fn of(instance: &str) -> Leftovers {
        Leftovers {
            containers: docker::containers_of(instance),
            networks: docker::networks_of(instance),
            users: users_of(instance),
            spares: 0,
        }
    }

    /// What is left of `instance` while its server runs, its spares (networks, their holders
    /// and host users) left out; see [`spare_ids`].
    pub async fn besides_spares(instance: &str, db_path: &Path) -> Leftovers {
        let spares = spare_ids(instance, db_path).await;
        let not_spare = |o: &docker::Object| !spares.contains(&o.deployment);
        let ids = |kind| -> Vec<String> {
            objects(kind, instance, &[])
                .into_iter()
                .filter(not_spare)
                .map(|o| o.id)
                .collect()
        };
        Leftovers {
            containers: ids("container"),
            networks: ids("network"),
            users: users_of(instance)
                .into_iter()
                .filter(|u| !is_spare_user(&spares, u))
                .collect(),
            spares: spares.len(),
        }
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.networks.is_empty() && self.users.is_empty()
    }

    /// "N containers, N networks, N host users".
    pub fn describe(&self) -> String {
        format!(
            "{} containers, {} networks, {} host users",
            self.containers.len(),
            self.networks.len(),
            self.users.len()
        )
    }
}

/// Asserts that nothing of `instance` exists: containers, networks, host users, rows.
pub async fn assert_nothing_left(instance: &str, db_path: &Path) {
    let left = Leftovers::of(instance);
    assert_eq!(left.containers, Vec::<String>::new(), "containers left");
    assert_eq!(left.networks, Vec::<String>::new(), "networks left");
    assert_eq!(left.users, Vec::<String>::new(), "host users left");
    assert_eq!(row_count(db_path).await, 0, "rows left");
}
