//! The `deployments` table.

use std::collections::BTreeMap;

use sqlx::FromRow;

use super::{Store, StoreError, query_err};
use crate::domain::{Deployment, Millis, SessionMode, Status, Transport};

/// A row as SQLite returns it.
#[derive(Debug, FromRow)]
struct Row {
    id: String,
    status: String,
    container_id: Option<String>,
    network_id: Option<String>,
    image: String,
    username: String,
    uid: i64,
    gid: i64,
    max_memory: Option<i64>,
    max_cpus: Option<f64>,
    args: String,
    env: String,
    metadata: String,
    transport: String,
    stderr: String,
    pause_after_seconds: Option<i64>,
    delete_after_seconds: Option<i64>,
    pause_at: Option<i64>,
    delete_at: Option<i64>,
    created_at: i64,
    last_interaction_at: i64,
    session_mode: String,
}

impl Row {
    fn into_domain(self) -> Result<Deployment, StoreError> {
        let id = self.id;
        let corrupt = |what: String| StoreError::Corrupt {
            id: id.clone(),
            what,
        };
        let json = |col: &str, text: &str| -> Result<serde_json::Value, StoreError> {
            serde_json::from_str(text).map_err(|e| corrupt(format!("{col}: {e}")))
        };
        let args: Option<Vec<String>> = serde_json::from_value(json("args", &self.args)?)
            .map_err(|e| corrupt(format!("args: {e}")))?;
        let env: BTreeMap<String, String> = serde_json::from_value(json("env", &self.env)?)
            .map_err(|e| corrupt(format!("env: {e}")))?;
        let transport: Transport = serde_json::from_value(json("transport", &self.transport)?)
            .map_err(|e| corrupt(format!("transport: {e}")))?;
        let unsigned = |v: i64, col: &str| -> Result<u64, StoreError> {
            u64::try_from(v).map_err(|_| corrupt(format!("{col} is negative")))
        };
        let uid32 = |v: i64, col: &str| -> Result<u32, StoreError> {
            u32::try_from(v).map_err(|_| corrupt(format!("{col} out of range")))
        };
        Ok(Deployment {
            status: Status::parse(&self.status)
                .ok_or_else(|| corrupt(format!("unknown status {}", self.status)))?,
            container_id: self.container_id,
            network_id: self.network_id,
            image: self.image,
            username: self.username,
            uid: uid32(self.uid, "uid")?,
            gid: uid32(self.gid, "gid")?,
            max_memory: self
                .max_memory
                .map(|v| unsigned(v, "max_memory"))
                .transpose()?,
            max_cpus: self.max_cpus,
            args,
            env,
            metadata: json("metadata", &self.metadata)?,
            transport,
            session_mode: SessionMode::parse(&self.session_mode)
                .ok_or_else(|| corrupt(format!("unknown session mode {}", self.session_mode)))?,
            stderr: self.stderr,
            pause_after_seconds: self
                .pause_after_seconds
                .map(|v| unsigned(v, "pause_after_seconds"))
                .transpose()?,
            delete_after_seconds: self
                .delete_after_seconds
                .map(|v| unsigned(v, "delete_after_seconds"))
                .transpose()?,
            pause_at: self.pause_at,
            delete_at: self.delete_at,
            created_at: self.created_at,
            last_interaction_at: self.last_interaction_at,
            id,
        })
    }
}

/// What the reaper needs to know of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueRow {
    /// Deployment id.
    pub id: String,
    /// Current status.
    pub status: Status,
    /// Idle stop deadline.
    pub pause_at: Option<Millis>,
    /// Idle deletion deadline.
    pub delete_at: Option<Millis>,
}

/// The column list, as a macro so that queries stay `&'static str` literals.
macro_rules! columns {
    () => {
        "id, status, container_id, network_id, image, username, uid, gid, max_memory, \
         max_cpus, args, env, metadata, transport, stderr, pause_after_seconds, \
         delete_after_seconds, pause_at, delete_at, created_at, last_interaction_at, session_mode"
    };
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Inserts a new row (status `creating`). A uid or username already in use is
    /// `StoreError::Taken`, so concurrent creates can never share a UID.
    pub async fn insert(&self, d: &Deployment) -> Result<(), StoreError> {
        let ser = |v: &dyn erased::Ser| v.to_json();
        let result = sqlx::query(concat!(
            "INSERT INTO deployments (",
            columns!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&d.id)
        .bind(d.status.as_str())
        .bind(&d.container_id)
        .bind(&d.network_id)
        .bind(&d.image)
        .bind(&d.username)
        .bind(i64::from(d.uid))
        .bind(i64::from(d.gid))
        .bind(d.max_memory.map(to_i64))
        .bind(d.max_cpus)
        .bind(ser(&d.args))
        .bind(ser(&d.env))
        .bind(ser(&d.metadata))
        .bind(ser(&d.transport))
        .bind(&d.stderr)
        .bind(d.pause_after_seconds.map(to_i64))
        .bind(d.delete_after_seconds.map(to_i64))
        .bind(d.pause_at)
        .bind(d.delete_at)
        .bind(d.created_at)
        .bind(d.last_interaction_at)
        .bind(d.session_mode.as_str())
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                let msg = e.message();
                Err(StoreError::Taken(if msg.contains("uid") {
                    "uid"
                } else if msg.contains("username") {
                    "username"
                } else {
                    "id"
                }))
            }
            Err(e) => Err(query_err("insert deployment")(e)),
        }
    }

    /// One row by id, whatever its status.
    pub async fn get(&self, id: &str) -> Result<Option<Deployment>, StoreError> {
        let row: Option<Row> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM deployments WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_err("get deployment"))?;
        row.map(Row::into_domain).transpose()
    }

    /// Every row, oldest first.
    pub async fn list(&self) -> Result<Vec<Deployment>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM deployments ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("list deployments"))?;
        rows.into_iter().map(Row::into_domain).collect()
    }

    /// Every UID held by a row.
    pub async fn used_uids(&self) -> Result<Vec<u32>, StoreError> {
        let uids: Vec<i64> = sqlx::query_scalar("SELECT uid FROM deployments")
            .fetch_all(&self.pool)
            .await
            .map_err(query_err("list uids"))?;
        Ok(uids
            .into_iter()
            .filter_map(|u| u32::try_from(u).ok())
            .collect())
    }

    /// The number of rows in each status.
    pub async fn count_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        sqlx::query_as("SELECT status, COUNT(*) FROM deployments GROUP BY status")
            .fetch_all(&self.pool)
            .await
            .map_err(query_err("count deployments"))
    }

    /// Records the container and network of a freshly made deployment and its status.
    pub async fn set_resources(
        &self,
        id: &str,
        container_id: &str,
        network_id: &str,
        status: Status,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE deployments SET container_id = ?, network_id = ?, status = ? WHERE id = ?",
        )
        .bind(container_id)
        .bind(network_id)
        .bind(status.as_str())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(query_err("record resources"))?;
        Ok(())
    }

    /// Records a deployment's new container unless its row is being deleted (or made);
    /// returns whether a row changed.
    pub async fn set_container(&self, id: &str, container_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE deployments SET container_id = ? WHERE id = ? AND status NOT IN ('deleting', 'creating')",
        )
        .bind(container_id)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(query_err("record the container"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Sets the status of a row unless it is being deleted; returns whether a row changed.
    pub async fn set_status(&self, id: &str, status: Status) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE deployments SET status = ? WHERE id = ? AND status NOT IN ('deleting', 'creating')",
        )
        .bind(status.as_str())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(query_err("set status"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Marks a row for deletion. Returns the row as it was, or `None` when there is none.
    /// A row still `creating` is not touched (its create will finish or be undone).
    pub async fn mark_deleting(&self, id: &str) -> Result<Option<Deployment>, StoreError> {
        let Some(d) = self.get(id).await? else {
            return Ok(None);
        };
        if d.status == Status::Creating {
            return Ok(None);
        }
        sqlx::query(
            "UPDATE deployments SET status = 'deleting' WHERE id = ? AND status != 'creating'",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(query_err("mark deleting"))?;
        Ok(Some(d))
    }

    /// Marks a row for deletion whatever its status: the undo of a failed create hands its
    /// row to the reaper this way. Returns whether there was a row.
    pub async fn set_deleting(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE deployments SET status = 'deleting' WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(query_err("mark a failed create for deletion"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Saves the stderr tail of a deployment.
    pub async fn set_stderr(&self, id: &str, stderr: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE deployments SET stderr = ? WHERE id = ?")
            .bind(stderr)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(query_err("save stderr"))?;
        Ok(())
    }

    /// Records an MCP interaction: `last_interaction_at` and the idle deadlines slide.
    pub async fn touch(&self, id: &str, at: Millis) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE deployments SET last_interaction_at = ?1, \
             pause_at = CASE WHEN pause_after_seconds IS NULL THEN NULL ELSE ?1 + pause_after_seconds * 1000 END, \
             delete_at = CASE WHEN delete_after_seconds IS NULL THEN NULL ELSE ?1 + delete_after_seconds * 1000 END \
             WHERE id = ?2 AND last_interaction_at < ?1",
        )
        .bind(at)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(query_err("record interaction"))?;
        Ok(())
    }

    /// Deletes a row; returns whether there was one.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM deployments WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(query_err("delete deployment"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Rows the reaper may have to act on at `now`: a passed deadline, or a pending deletion.
    pub async fn due(&self, now: Millis) -> Result<Vec<DueRow>, StoreError> {
        let rows: Vec<(String, String, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT id, status, pause_at, delete_at FROM deployments \
             WHERE status = 'deleting' \
                OR (status = 'running' AND pause_at <= ?1) \
                OR (status IN ('running', 'stopped') AND delete_at <= ?1)",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("find due deployments"))?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, status, pause_at, delete_at)| {
                Some(DueRow {
                    status: Status::parse(&status)?,
                    id,
                    pause_at,
                    delete_at,
                })
            })
            .collect())
    }
}

/// Serializes the JSON columns. Serialization of these types cannot fail (string keys only),
/// so a failure would be a bug; it is stored as `null` and reported by the read path.
mod erased {
    pub trait Ser {
        fn to_json(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_json(&self) -> String {
            serde_json::to_string(self).unwrap_or_else(|_| "null".to_owned())
        }
    }
}
