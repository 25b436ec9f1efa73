//! The only module with SQL: `Store { pool }` over SQLite (WAL), migrations at start-up.
//!
//! The `subnet` column (migration 0003) is no longer written: the Docker backend keeps a
//! deployment network's subnet on the network itself (see `runtime::docker::subnet`).

mod deployments;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use deployments::DueRow;

/// Errors of the store, one variant per kind of failure, with the operation named.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or created.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// Database path.
        path: String,
        /// Cause.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database {op} failed: {source}")]
    Query {
        /// What was being done.
        op: &'static str,
        /// Cause.
        source: sqlx::Error,
    },
    /// A unique column (uid, username, id) already holds the value.
    #[error("{0} already taken")]
    Taken(&'static str),
    /// A row holds data this version cannot read.
    #[error("corrupt row {id}: {what}")]
    Corrupt {
        /// Row id.
        id: String,
        /// What is wrong.
        what: String,
    },
}

/// Attaches the operation name to a sqlx error.
pub(crate) fn query_err(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { op, source }
}

/// Handle to the database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating when missing) the database at `path` and runs the migrations.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| open_err(sqlx::Error::Io(e)))?;
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(open_err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(open_err)?;
        restrict_permissions(path);
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool })
    }

    /// Whether the database takes a write lock (used by the readiness probe); nothing is
    /// written.
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(query_err("get a connection"))?;
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *conn)
            .await
            .map_err(query_err("take the write lock"))?;
        sqlx::query("ROLLBACK")
            .execute(&mut *conn)
            .await
            .map_err(query_err("release the write lock"))?;
        Ok(())
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The database holds the deployments' environment values: keep it private to root.
fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot restrict database permissions");
    }
}
