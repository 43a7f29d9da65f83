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
//!
//! `postgres init` ([`init`], [`init_sql`]) is run by a database admin, who owns what it
//! creates: the writer role (the forwarders) may INSERT and SELECT, the reader role
//! SELECT, PUBLIC nothing; triggers refuse UPDATE, DELETE and TRUNCATE to every role but
//! the tables' owner (so that an owner can still apply retention). The same script runs
//! twice to the same state.

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
///   that user's records), in review order across stores: the rows stream unsorted.
/// - `records_session`, `records_kernel`: `--session`/`--kernel` prefixes (`LIKE 'p%'`).
/// - `records_code`: code search, `log --action execute_request --grep TEXT`: a trigram
///   index (pg_trgm, a trusted extension shipped with PostgreSQL) on the lines of
///   requests only, which keeps it small. It is what costs forwarding most (see the
///   forward benchmark); its pending list stays at the default size, since the insert
///   that merges a larger one waits longer than the forwarder's batch timeout. A
///   `--grep` over every action reads the whole table.
pub const INDEXES: &str = r#"
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX IF NOT EXISTS records_time ON jupyter_audit.records (time);
CREATE INDEX IF NOT EXISTS records_user_name ON jupyter_audit.records (user_name, time, store_id, sequence);
CREATE INDEX IF NOT EXISTS records_user_id ON jupyter_audit.records (user_id, time, store_id, sequence);
CREATE INDEX IF NOT EXISTS records_session ON jupyter_audit.records (session_id text_pattern_ops);
CREATE INDEX IF NOT EXISTS records_kernel ON jupyter_audit.records (kernel_id text_pattern_ops);
CREATE INDEX IF NOT EXISTS records_code ON jupyter_audit.records
    USING gin (line gin_trgm_ops) WHERE action = 'execute_request';
"#;

/// The tables `postgres init` guards, in the order the script handles them.
pub const TABLE_NAMES: [&str; 3] = ["stores", "records", "checkpoints"];

/// Why `postgres init` could not set the database up.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("role name {name:?}: {reason}")]
    RoleName { name: String, reason: &'static str },
    #[error("the writer and the reader must be two different roles (both are {0:?})")]
    SameRoles(String),
    /// The admin running init would hand its own tables to the writer or reader.
    #[error(
        "the {which} role {name:?} is the role running init, which owns the tables and may \
         change them: run init as a database admin and give the {which} another role"
    )]
    RoleIsOwner { which: &'static str, name: String },
    #[error(
        "the database {database:?} is encoded in {encoding}; jupyter-audit keeps every stored \
         line byte for byte and needs a UTF8 database (CREATE DATABASE … ENCODING 'UTF8')"
    )]
    Encoding { database: String, encoding: String },
    #[error(transparent)]
    Postgres(#[from] super::PostgresError),
}

/// A role name, checked and ready to be quoted as an identifier or a literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleName(String);

/// PostgreSQL cuts longer names to 63 bytes: the role made would not be the one named.
const MAX_NAME_BYTES: usize = 63;

impl RoleName {
    pub fn new(name: &str) -> Result<Self, InitError> {
        let refuse = |reason| InitError::RoleName {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() {
            return Err(refuse("empty"));
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(refuse("longer than 63 bytes"));
        }
        if name.contains('\0') {
            return Err(refuse("holds a NUL character"));
        }
        if name.starts_with("pg_") {
            return Err(refuse("names starting with pg_ are reserved by PostgreSQL"));
        }
        Ok(RoleName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `"name"`, with inner quotes doubled.
    fn identifier(&self) -> String {
        format!("\"{}\"", self.0.replace('"', "\"\""))
    }

    /// `'name'`, with inner quotes doubled (standard_conforming_strings is on since 9.1).
    fn literal(&self) -> String {
        format!("'{}'", self.0.replace('\'', "''"))
    }
}

impl std::fmt::Display for RoleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `body` as a dollar-quoted string whose tag does not occur in it (a role name could
/// hold `$body$`).
fn dollar_quoted(body: &str) -> String {
    let mut tag = String::from("$body$");
    let mut n = 0;
    while body.contains(&tag) {
        n += 1;
        tag = format!("$body{n}$");
    }
    format!("{tag}\n{body}\n{tag}")
}

/// The whole `postgres init` script: what `--print` shows and what init runs, in one
/// transaction. Run twice, it ends in the same state.
pub fn init_sql(writer: &RoleName, reader: &RoleName) -> String {
    let (w, r) = (writer.identifier(), reader.identifier());
    let (wl, rl) = (writer.literal(), reader.literal());
    let tables = TABLE_NAMES
        .iter()
        .map(|t| format!("{SCHEMA}.{t}"))
        .collect::<Vec<_>>()
        .join(", ");

    let checks = dollar_quoted(&format!(
        r#"DECLARE
    db_encoding text := (SELECT pg_catalog.pg_encoding_to_char(d.encoding)
                         FROM pg_catalog.pg_database d WHERE d.datname = current_database());
BEGIN
    IF db_encoding <> 'UTF8' THEN
        RAISE EXCEPTION 'the database % is encoded in %; jupyter-audit needs UTF8', current_database(), db_encoding;
    END IF;
    IF current_user IN ({wl}, {rl}) THEN
        RAISE EXCEPTION 'the writer and the reader must not be the role running init (%), which owns the tables', current_user;
    END IF;
    IF {wl} = {rl} THEN
        RAISE EXCEPTION 'the writer and the reader must be two different roles';
    END IF;
    -- Tables made earlier by another admin: their owner passes the triggers.
    IF EXISTS (SELECT FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_catalog.pg_roles o ON o.oid = c.relowner
               WHERE n.nspname = '{SCHEMA}' AND o.rolname IN ({wl}, {rl})) THEN
        RAISE EXCEPTION 'the writer or the reader owns tables of {SCHEMA}, and the owner may change them: give the tables to the admin (ALTER TABLE … OWNER TO) or choose other roles';
    END IF;
END"#
    ));
    let roles = dollar_quoted(&format!(
        r#"BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {wl}) THEN
        CREATE ROLE {w} LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {rl}) THEN
        CREATE ROLE {r} LOGIN;
    END IF;
END"#
    ));
    let refuse_change = dollar_quoted(
        r#"BEGIN
    -- The owner (the admin who ran init) may still change rows: retention, repairs.
    IF EXISTS (SELECT FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_roles o ON o.oid = c.relowner
               WHERE c.oid = TG_RELID AND o.rolname = current_user) THEN
        IF TG_OP = 'DELETE' THEN
            RETURN OLD;
        END IF;
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'jupyter_audit.% is append-only: % refused for role %', TG_TABLE_NAME, TG_OP, current_user
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'only the owner of the table may change or remove rows';
END"#,
    );
    let triggers = TABLE_NAMES
        .iter()
        .map(|t| {
            format!(
                "DROP TRIGGER IF EXISTS refuse_update_delete ON {SCHEMA}.{t};\n\
                 CREATE TRIGGER refuse_update_delete BEFORE UPDATE OR DELETE ON {SCHEMA}.{t}\n    \
                 FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.refuse_change();\n\
                 DROP TRIGGER IF EXISTS refuse_truncate ON {SCHEMA}.{t};\n\
                 CREATE TRIGGER refuse_truncate BEFORE TRUNCATE ON {SCHEMA}.{t}\n    \
                 FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.refuse_change();\n"
            )
        })
        .collect::<String>();

    format!(
        r#"-- jupyter-audit postgres init: run as a database admin, who owns what it creates.
BEGIN;
SET LOCAL client_min_messages = warning;

-- The database must keep every stored line byte for byte; the roles must not be ours.
DO {checks};

-- The forwarders' role and the reviewers' role, created when missing.
DO {roles};

-- Tables and indexes.
{TABLES}
{INDEXES}
-- UPDATE, DELETE and TRUNCATE are refused to all but the owner, whatever the grants.
CREATE OR REPLACE FUNCTION {SCHEMA}.refuse_change() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog AS {refuse_change};

{triggers}
-- Privileges: set from scratch, so that a second run ends in the same state.
REVOKE ALL ON SCHEMA {SCHEMA} FROM PUBLIC, {w}, {r};
GRANT USAGE ON SCHEMA {SCHEMA} TO {w}, {r};
REVOKE ALL ON TABLE {tables} FROM PUBLIC, {w}, {r};
GRANT SELECT, INSERT ON TABLE {tables} TO {w};
GRANT SELECT ON TABLE {tables} TO {r};
REVOKE ALL ON FUNCTION {SCHEMA}.refuse_change() FROM PUBLIC, {w}, {r};

COMMIT;
"#
    )
}

/// What `postgres init` needs: the server, and the two role names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitOptions {
    pub server: super::connect::PostgresOptions,
    pub writer: String,
    pub reader: String,
}

/// What init found and did, for the admin to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    pub database: String,
    /// The role that ran init and owns the tables.
    pub owner: String,
    pub writer: RoleName,
    pub reader: RoleName,
    /// Every object init is responsible for (`role x`, `table jupyter_audit.records`,
    /// …) and whether this run created it.
    pub objects: Vec<(String, bool)>,
    /// Things the admin should know (a role that is a superuser, …).
    pub warnings: Vec<String>,
}

impl std::fmt::Display for InitReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "database {} (owner of the jupyter_audit tables: {})",
            self.database, self.owner
        )?;
        for (object, created) in &self.objects {
            let state = if *created { "created" } else { "already there" };
            writeln!(f, "  {object}: {state}")?;
        }
        writeln!(
            f,
            "grants: {} INSERT, SELECT; {} SELECT; PUBLIC nothing",
            self.writer, self.reader
        )?;
        writeln!(
            f,
            "UPDATE, DELETE, TRUNCATE: refused to every role but {}",
            self.owner
        )?;
        for warning in &self.warnings {
            writeln!(f, "warning: {warning}")?;
        }
        Ok(())
    }
}

/// Every object init makes, with a sort key, as the catalogs show them now.
const OBJECTS_QUERY: &str = r#"
SELECT 0, 'role ' || rolname FROM pg_catalog.pg_roles WHERE rolname::text IN ($1, $2)
UNION ALL
SELECT 1, 'schema ' || nspname FROM pg_catalog.pg_namespace WHERE nspname = 'jupyter_audit'
UNION ALL
SELECT CASE c.relkind WHEN 'i' THEN 3 ELSE 2 END,
       CASE c.relkind WHEN 'i' THEN 'index ' ELSE 'table ' END || n.nspname || '.' || c.relname
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'jupyter_audit' AND c.relkind IN ('r', 'p', 'i')
UNION ALL
SELECT 4, 'function ' || n.nspname || '.' || p.proname || '()'
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'jupyter_audit'
UNION ALL
SELECT 5, 'trigger ' || t.tgname || ' on ' || n.nspname || '.' || c.relname
FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'jupyter_audit' AND NOT t.tgisinternal
ORDER BY 1, 2
"#;

async fn objects(
    client: &tokio_postgres::Client,
    writer: &RoleName,
    reader: &RoleName,
) -> Result<Vec<String>, super::PostgresError> {
    let rows = client
        .query(OBJECTS_QUERY, &[&writer.as_str(), &reader.as_str()])
        .await
        .map_err(super::PostgresError::query("listing what init made"))?;
    Ok(rows.iter().map(|row| row.get(1)).collect())
}

/// Checks the roles and the database, runs [`init_sql`] in one transaction, and says
/// what it created.
pub async fn init_with(
    client: &tokio_postgres::Client,
    writer: &RoleName,
    reader: &RoleName,
) -> Result<InitReport, InitError> {
    use super::PostgresError;
    if writer == reader {
        return Err(InitError::SameRoles(writer.to_string()));
    }
    let row = client
        .query_one(
            "SELECT current_user::text, current_database()::text, \
             pg_catalog.pg_encoding_to_char(encoding)::text \
             FROM pg_catalog.pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(PostgresError::query("reading the database's encoding"))?;
    let (owner, database, encoding): (String, String, String) =
        (row.get(0), row.get(1), row.get(2));
    if encoding != "UTF8" {
        return Err(InitError::Encoding { database, encoding });
    }
    for (which, role) in [("writer", writer), ("reader", reader)] {
        if role.as_str() == owner {
            return Err(InitError::RoleIsOwner { which, name: owner });
        }
    }
    let before = objects(client, writer, reader).await?;
    client
        .batch_execute(&init_sql(writer, reader))
        .await
        .map_err(PostgresError::query("running the init script"))?;
    let after = objects(client, writer, reader).await?;
    let objects = after
        .into_iter()
        .map(|object| {
            let created = !before.contains(&object);
            (object, created)
        })
        .collect();

    let mut warnings = Vec::new();
    let rows = client
        .query(
            "SELECT rolname::text, rolsuper, rolbypassrls, rolcanlogin \
             FROM pg_catalog.pg_roles WHERE rolname::text IN ($1, $2) ORDER BY rolname",
            &[&writer.as_str(), &reader.as_str()],
        )
        .await
        .map_err(PostgresError::query("reading the roles"))?;
    for row in rows {
        let (name, superuser, bypass, login): (String, bool, bool, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if superuser {
            warnings.push(format!(
                "role {name} is a superuser: grants do not bind it and it can switch the triggers off"
            ));
        } else if bypass {
            warnings.push(format!("role {name} has BYPASSRLS"));
        }
        if !login {
            warnings.push(format!("role {name} cannot log in (ALTER ROLE … LOGIN)"));
        }
    }
    Ok(InitReport {
        database,
        owner,
        writer: writer.clone(),
        reader: reader.clone(),
        objects,
        warnings,
    })
}

/// The script `postgres init --print` shows, for the roles the options name.
pub fn init_script(options: &InitOptions) -> Result<String, InitError> {
    let (writer, reader) = role_names(options)?;
    Ok(init_sql(&writer, &reader))
}

fn role_names(options: &InitOptions) -> Result<(RoleName, RoleName), InitError> {
    let writer = RoleName::new(&options.writer)?;
    let reader = RoleName::new(&options.reader)?;
    if writer == reader {
        return Err(InitError::SameRoles(writer.to_string()));
    }
    Ok((writer, reader))
}

/// `postgres init`: connects as the admin the options name and sets the database up.
pub async fn init(options: &InitOptions) -> Result<InitReport, InitError> {
    let (writer, reader) = role_names(options)?;
    let target = super::connect::PostgresTarget::new(&options.server)?;
    let client = target.connect().await?;
    init_with(&client, &writer, &reader).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_quoted_as_identifiers_and_literals() {
        let role = RoleName::new(r#"we"ird' $body$ ; DROP TABLE x"#).unwrap();
        assert_eq!(role.identifier(), r#""we""ird' $body$ ; DROP TABLE x""#);
        assert_eq!(role.literal(), r#"'we"ird'' $body$ ; DROP TABLE x'"#);
        let sql = init_sql(&role, &RoleName::new("reader").unwrap());
        // The name's `$body$` does not close the dollar-quoted DO bodies.
        assert!(sql.contains("DO $body1$"));
        assert!(sql.contains(r#"CREATE ROLE "we""ird' $body$ ; DROP TABLE x" LOGIN;"#));
    }

    #[test]
    fn unusable_role_names_are_refused() {
        for name in ["", "pg_monitor", "a\0b", &"x".repeat(64)] {
            assert!(RoleName::new(name).is_err(), "{name:?}");
        }
        assert!(RoleName::new(&"x".repeat(63)).is_ok());
    }

    #[test]
    fn the_script_grants_the_writer_insert_and_select_only() {
        let sql = init_sql(
            &RoleName::new("fwd").unwrap(),
            &RoleName::new("audit").unwrap(),
        );
        assert!(sql.contains(
            "GRANT SELECT, INSERT ON TABLE jupyter_audit.stores, jupyter_audit.records, \
             jupyter_audit.checkpoints TO \"fwd\";"
        ));
        assert!(sql.contains("GRANT SELECT ON TABLE jupyter_audit.stores, jupyter_audit.records, jupyter_audit.checkpoints TO \"audit\";"));
        assert!(!sql.contains("GRANT UPDATE") && !sql.contains("GRANT DELETE"));
        for table in TABLE_NAMES {
            assert!(sql.contains(&format!(
                "BEFORE TRUNCATE ON jupyter_audit.{table}\n    FOR EACH STATEMENT"
            )));
        }
    }
}
