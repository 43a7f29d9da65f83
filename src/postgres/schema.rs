//! The database layout of the central trail, in the schema `jupyter_audit`.
//!
//! - `stores`: one row per store: `store_id` (uuid, made with the store and kept in it),
//!   `host`, the checkpoint `public_key` (hex) and its `key_id`.
//! - `records`: one row per stored record, keyed by (`store_id`, `sequence`): `line` is
//!   the stored line exactly as in the segment (without its `\n`), `prev`/`hash` its chain
//!   fields (32 bytes each); `time`, `action`, `user_name`, `user_id`, `session_id`,
//!   `kernel_id`, `msg_id` and `parent_msg_id` are copies of fields of the line for the
//!   review queries (see [`super::columns`]). Only `line`, `prev` and `hash` are checked
//!   by `verify`; the copies are conveniences.
//! - `checkpoints`: every signed checkpoint, keyed by (`store_id`, `sequence`), its
//!   fields as the store wrote them (`time` as signed, text).

/// The schema every table lives in.
pub const SCHEMA: &str = "jupyter_audit";

/// Tables (idempotent).
pub const TABLES: &str = r#"
CREATE SCHEMA IF NOT EXISTS jupyter_audit;

CREATE TABLE IF NOT EXISTS jupyter_audit.stores (
    store_id    uuid PRIMARY KEY,
    host        text NOT NULL,
    public_key  text NOT NULL,
    key_id      text NOT NULL,
    registered  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS jupyter_audit.records (
    store_id      uuid NOT NULL,
    sequence      bigint NOT NULL,
    time          timestamptz,
    action        text NOT NULL,
    user_name     text,
    user_id       text,
    session_id    text,
    kernel_id     text,
    msg_id        text,
    parent_msg_id text,
    line          text NOT NULL,
    prev          bytea NOT NULL,
    hash          bytea NOT NULL,
    forwarded     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (store_id, sequence)
);

CREATE TABLE IF NOT EXISTS jupyter_audit.checkpoints (
    store_id    uuid NOT NULL,
    sequence    bigint NOT NULL,
    chain_hash  text NOT NULL,
    time        text NOT NULL,
    segment     text NOT NULL,
    key_id      text NOT NULL,
    signature   text NOT NULL,
    forwarded   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (store_id, sequence)
);
"#;

/// Indexes for the review queries (idempotent).
///
/// - `records_time`: records of several stores come in time order, `--since`/`--until`.
/// - `records_user_name`, `records_user_id`: `--user` (and `sessions --user` reads just
///   that user's records).
/// - `records_session`, `records_kernel`: `--session`/`--kernel` prefixes (`LIKE 'p%'`).
/// - `records_code`: code search, `log --action execute_request --grep TEXT`: a trigram
///   index (pg_trgm, a trusted extension shipped with PostgreSQL) on the lines of
///   requests only, which keeps it small and forwarding fast; a `--grep` over every
///   action reads the whole table.
pub const INDEXES: &str = r#"
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX IF NOT EXISTS records_time ON jupyter_audit.records (time);
CREATE INDEX IF NOT EXISTS records_user_name ON jupyter_audit.records (user_name, time);
CREATE INDEX IF NOT EXISTS records_user_id ON jupyter_audit.records (user_id, time);
CREATE INDEX IF NOT EXISTS records_session ON jupyter_audit.records (session_id text_pattern_ops);
CREATE INDEX IF NOT EXISTS records_kernel ON jupyter_audit.records (kernel_id text_pattern_ops);
CREATE INDEX IF NOT EXISTS records_code ON jupyter_audit.records
    USING gin (line gin_trgm_ops) WHERE action = 'execute_request';
"#;
