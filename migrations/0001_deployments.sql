-- One row per deployment. The row is the truth: containers, networks and host users that
-- have no row are removed at start-up, and rows whose container vanished are cleaned up.
--
-- Times are Unix milliseconds (UTC). JSON columns hold serde_json text.
CREATE TABLE deployments (
    id                   TEXT PRIMARY KEY NOT NULL,
    -- creating: resources are being made (a crash leaves it for reconciliation to undo)
    -- running / stopped: what the API shows
    -- deleting: teardown started; the reaper finishes it if it fails part-way
    status               TEXT NOT NULL CHECK (status IN ('creating', 'running', 'stopped', 'deleting')),
    container_id         TEXT,
    network_id           TEXT,
    image                TEXT NOT NULL,
    username             TEXT NOT NULL UNIQUE,
    uid                  INTEGER NOT NULL UNIQUE,
    gid                  INTEGER NOT NULL,
    max_memory           INTEGER,
    max_cpus             REAL,
    args                 TEXT NOT NULL DEFAULT '[]',
    env                  TEXT NOT NULL DEFAULT '{}',
    metadata             TEXT NOT NULL DEFAULT '{}',
    transport            TEXT NOT NULL,
    stderr               TEXT NOT NULL DEFAULT '',
    pause_after_seconds  INTEGER,
    delete_after_seconds INTEGER,
    pause_at             INTEGER,
    delete_at            INTEGER,
    created_at           INTEGER NOT NULL,
    last_interaction_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX deployments_pause_at ON deployments (pause_at) WHERE pause_at IS NOT NULL;
CREATE INDEX deployments_delete_at ON deployments (delete_at) WHERE delete_at IS NOT NULL;
CREATE INDEX deployments_created_at ON deployments (created_at);
