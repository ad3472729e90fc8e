//! The SQLite schema, its migrations, and the checks that a file is ours before we write.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::error::{Result, StateError};

/// `PRAGMA application_id` of an xdr-relay state file: "XDRR". It tells our file apart
/// from any other SQLite database someone points `[state] path` at.
pub(crate) const APPLICATION_ID: i32 = 0x5844_5252;

/// Migration `i` takes the schema from version `i` to `i + 1`. Append only: a released
/// migration is never edited, since files in the field already ran it.
pub(crate) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5];

/// The schema version this build writes and reads.
pub(crate) const LATEST: i64 = MIGRATIONS.len() as i64;

// Times are i64 100-ns ticks since the Unix epoch (see ticks.rs). Names are bounded so a
// bug upstream (an empty sink name) fails the transaction instead of writing junk.
const V1: &str = r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE feeds (
    tenant           TEXT NOT NULL CHECK (length(tenant) BETWEEN 1 AND 256),
    feed             TEXT NOT NULL CHECK (length(feed) BETWEEN 1 AND 256),
    checkpoint_ticks INTEGER,
    last_poll_ticks  INTEGER,
    last_poll_ok     INTEGER CHECK (last_poll_ok IN (0, 1)),
    last_error       TEXT,
    last_error_ticks INTEGER,
    PRIMARY KEY (tenant, feed)
) WITHOUT ROWID;

-- Keyed by time after (tenant, feed) so both "seen since" and pruning are range scans.
CREATE TABLE seen (
    tenant        TEXT NOT NULL,
    feed          TEXT NOT NULL,
    version_ticks INTEGER NOT NULL,
    item_id       TEXT NOT NULL,
    PRIMARY KEY (tenant, feed, version_ticks, item_id)
) WITHOUT ROWID;

-- depth_rows / depth_bytes are kept by the triggers below, so the bound check on every
-- commit reads one row instead of summing a large outbox.
CREATE TABLE sinks (
    sink_id             INTEGER PRIMARY KEY,
    name                TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 256),
    depth_rows          INTEGER NOT NULL DEFAULT 0,
    depth_bytes         INTEGER NOT NULL DEFAULT 0,
    last_delivery_ticks INTEGER,
    last_error          TEXT,
    last_error_ticks    INTEGER
);

-- AUTOINCREMENT, not a plain rowid: a plain rowid reuses max+1 after the tail is deleted,
-- and a sink worker that acknowledged up to seq N must never see a new row numbered <= N.
CREATE TABLE outbox (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    sink_id        INTEGER NOT NULL REFERENCES sinks (sink_id),
    tenant         TEXT NOT NULL CHECK (length(tenant) BETWEEN 1 AND 256),
    enqueued_ticks INTEGER NOT NULL,
    bytes          INTEGER NOT NULL,
    payload        BLOB NOT NULL
);
CREATE INDEX outbox_by_sink ON outbox (sink_id, seq);

CREATE TRIGGER outbox_depth_append AFTER INSERT ON outbox BEGIN
    UPDATE sinks SET depth_rows = depth_rows + 1, depth_bytes = depth_bytes + NEW.bytes
    WHERE sink_id = NEW.sink_id;
END;
CREATE TRIGGER outbox_depth_ack AFTER DELETE ON outbox BEGIN
    UPDATE sinks SET depth_rows = depth_rows - 1, depth_bytes = depth_bytes - OLD.bytes
    WHERE sink_id = OLD.sink_id;
END;

-- refresh_token is [format][24-byte nonce][XChaCha20-Poly1305 ciphertext + tag], sealed
-- with the tenant name as associated data.
CREATE TABLE tenant_auth (
    tenant            TEXT PRIMARY KEY NOT NULL CHECK (length(tenant) BETWEEN 1 AND 256),
    state             TEXT CHECK (state IN ('ok', 'needs_consent', 'failing')),
    detail            TEXT,
    since_ticks       INTEGER,
    refresh_token     BLOB,
    token_saved_ticks INTEGER
) WITHOUT ROWID;
"#;

// V2: the outbox depth is kept by `commit_poll` and the acks in code, one UPDATE per sink
// per transaction, instead of by a trigger firing an UPDATE for every row appended or
// deleted (a 1,000-event poll ran 1,000 of them). The counts the triggers kept are exact,
// so they carry over as they are.
const V2: &str = r#"
DROP TRIGGER outbox_depth_append;
DROP TRIGGER outbox_depth_ack;
"#;

// V3: payloads move to append-only segment files beside the state file (segments.rs); a
// row keeps where its bytes are and their crc32, and an empty `payload`. Rows queued by
// V1/V2 keep their inline payload and `segment` NULL, and are read as before. The partial
// index finds the oldest referenced segment and whether a segment is still referenced, for
// deleting drained segment files, without indexing the inline rows.
const V3: &str = r#"
ALTER TABLE outbox ADD COLUMN segment INTEGER;
ALTER TABLE outbox ADD COLUMN segment_offset INTEGER;
ALTER TABLE outbox ADD COLUMN crc32 INTEGER;
CREATE INDEX outbox_by_segment ON outbox (segment) WHERE segment IS NOT NULL;
"#;

// V4: a tenant whose token requests fail is probed on a backoff; when the next probe is
// due is shown by `status` (NULL while the tenant is fine, and for states recorded by V3).
const V4: &str = r#"
ALTER TABLE tenant_auth ADD COLUMN next_probe_ticks INTEGER;
"#;

// V5: the response-action journal (store/actions.rs). The unique key is the idempotency
// key: a playbook acts once per (tenant, alert, device), whatever later versions say.
const V5: &str = r#"
CREATE TABLE actions (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    playbook          TEXT NOT NULL CHECK (length(playbook) BETWEEN 1 AND 256),
    tenant            TEXT NOT NULL CHECK (length(tenant) BETWEEN 1 AND 256),
    alert_id          TEXT NOT NULL CHECK (length(alert_id) BETWEEN 1 AND 1024),
    device_id         TEXT NOT NULL CHECK (length(device_id) BETWEEN 1 AND 256),
    action            TEXT NOT NULL,
    option            TEXT NOT NULL,
    mode              TEXT NOT NULL,
    state             TEXT NOT NULL,
    reason            TEXT,
    incident_id       TEXT,
    device_name       TEXT,
    alert_title       TEXT,
    feed              TEXT NOT NULL,
    machine_action_id TEXT,
    detail            TEXT,
    created_ticks     INTEGER NOT NULL,
    updated_ticks     INTEGER NOT NULL,
    UNIQUE (playbook, tenant, alert_id, device_id)
);
CREATE INDEX actions_by_created ON actions (created_ticks);
CREATE INDEX actions_by_state ON actions (state);
"#;

/// What the file header says about the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Identity {
    /// An empty database: no tables, no application id. Ours to initialise.
    Fresh,
    /// An xdr-relay state file at this schema version (≤ [`LATEST`]).
    Ours(i64),
}

/// Reads `application_id`, `user_version` and the table count without writing anything,
/// so a foreign file is refused before even its journal mode is touched.
pub(crate) fn identify(conn: &Connection, path: &Path) -> Result<Identity> {
    let read = |sql: &str| -> Result<i64> {
        conn.query_row(sql, [], |row| row.get(0))
            .map_err(|e| StateError::sqlite(path, "reading the file header", e))
    };
    let app_id = read("PRAGMA application_id")?;
    let version = read("PRAGMA user_version")?;
    let objects = read("SELECT count(*) FROM sqlite_schema")?;
    let app_id = i32::try_from(app_id).unwrap_or(i32::MIN);
    if app_id == APPLICATION_ID {
        if version > LATEST {
            return Err(StateError::NewerSchema {
                path: path.to_path_buf(),
                found: version,
                supported: LATEST,
            });
        }
        return Ok(Identity::Ours(version));
    }
    if app_id == 0 && version == 0 && objects == 0 {
        return Ok(Identity::Fresh);
    }
    Err(StateError::Foreign {
        path: path.to_path_buf(),
        found: app_id,
        expected: APPLICATION_ID,
    })
}

/// Brings the schema to [`LATEST`] in one transaction. Re-reads the version under the
/// write lock because another process may have migrated in between.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let sql = |e| StateError::sqlite(path, "migrating the schema", e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    let identity = identify(&tx, path)?;
    let from = match identity {
        Identity::Fresh => 0,
        Identity::Ours(version) => version,
    };
    if from == LATEST {
        return Ok(());
    }
    let start = usize::try_from(from).unwrap_or(0);
    for (step, migration) in MIGRATIONS.iter().enumerate().skip(start) {
        tx.execute_batch(migration).map_err(sql)?;
        tracing::info!(path = %path.display(), version = step + 1, "state schema migrated");
    }
    tx.pragma_update(None, "user_version", LATEST)
        .map_err(sql)?;
    tx.pragma_update(None, "application_id", APPLICATION_ID)
        .map_err(sql)?;
    tx.commit().map_err(sql)
}
