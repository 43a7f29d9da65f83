//! Reading forwarded records back for review: the stores a reviewer selects, and their
//! records streamed in review order, with the query's exact conditions done by the
//! server as a prefilter (the review code still checks every record itself).
//!
//! Order: one store's records by sequence (as the store holds them); records of several
//! stores by time, then store, then sequence. Rows come through a portal in batches, so
//! memory stays bounded however many match. The review commands are synchronous: a
//! [`ReviewReader`] owns a small runtime and blocks on each batch.

use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::PostgresError;
use super::connect::PostgresTarget;

/// Rows fetched per round trip.
const BATCH_ROWS: i32 = 2000;

/// Which stores to read (all when both are unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreSelection {
    pub store_id: Option<Uuid>,
    pub host: Option<String>,
}

/// A store the database holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedStore {
    pub store_id: Uuid,
    pub host: String,
    /// Hex Ed25519 public key, as the forwarder registered it.
    pub public_key: String,
    pub key_id: String,
}

/// Conditions the server applies before rows are sent; each one only drops rows the
/// review filter would drop too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordQuery {
    /// `user_name` or `user_id` equals it.
    pub user: Option<String>,
    /// `session_id` starts with it.
    pub session_prefix: Option<String>,
    /// `kernel_id` starts with it.
    pub kernel_prefix: Option<String>,
    /// RFC 3339 bounds on `time`, inclusive.
    pub since: Option<String>,
    pub until: Option<String>,
    /// `action` is one of them (empty: any).
    pub actions: Vec<String>,
    /// Texts the stored line must contain.
    pub line_contains: Vec<String>,
}

/// One forwarded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedLine {
    pub store_id: Uuid,
    pub sequence: i64,
    pub line: String,
}

/// One forwarded record with its chain columns, for `verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRow {
    pub sequence: i64,
    pub line: String,
    pub prev: Vec<u8>,
    pub hash: Vec<u8>,
}

/// One forwarded checkpoint, its fields as the store signed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedCheckpoint {
    pub sequence: i64,
    pub chain_hash: String,
    pub time: String,
    pub segment: String,
    pub key_id: String,
    pub signature: String,
}

/// `text` for a LIKE pattern that matches it literally.
pub fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The SQL and parameters of a records query.
struct Sql {
    text: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

/// Which columns `--user` compares. Either needs a sort of every matching row; one
/// column reads its index in review order, so rows stream at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UserColumns {
    Either,
    NameOnly,
    IdOnly,
}

/// Whether one column gives exactly the rows of `user_name = U OR user_id = U`: run in
/// the query's transaction, so that both see the same rows.
const USER_PROBE: &str = "SELECT \
    EXISTS (SELECT 1 FROM jupyter_audit.records WHERE user_id = $1 AND user_name IS DISTINCT FROM $1), \
    EXISTS (SELECT 1 FROM jupyter_audit.records WHERE user_name = $1)";

impl Sql {
    fn param(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }
}

/// The query for `stores` (empty: every store) and `query`.
fn records_sql(stores: &[Uuid], query: &RecordQuery, user_columns: UserColumns) -> Sql {
    let mut sql = Sql {
        text: String::from("SELECT store_id, sequence, line FROM jupyter_audit.records WHERE true"),
        params: Vec::new(),
    };
    let and = |sql: &mut Sql, condition: String| {
        sql.text.push_str(" AND ");
        sql.text.push_str(&condition);
    };
    match stores {
        [] => {}
        [one] => {
            let p = sql.param(*one);
            and(&mut sql, format!("store_id = {p}"));
        }
        several => {
            let p = sql.param(several.to_vec());
            and(&mut sql, format!("store_id = ANY({p})"));
        }
    }
    if let Some(user) = &query.user {
        let p = sql.param(user.clone());
        and(
            &mut sql,
            match user_columns {
                UserColumns::Either => format!("(user_name = {p} OR user_id = {p})"),
                UserColumns::NameOnly => format!("user_name = {p}"),
                UserColumns::IdOnly => format!("user_id = {p}"),
            },
        );
    }
    for (column, prefix) in [
        ("session_id", &query.session_prefix),
        ("kernel_id", &query.kernel_prefix),
    ] {
        if let Some(prefix) = prefix {
            let p = sql.param(format!("{}%", like_escape(prefix)));
            and(&mut sql, format!("{column} LIKE {p}"));
        }
    }
    if let Some(since) = &query.since {
        let p = sql.param(since.clone());
        and(&mut sql, format!("time >= {p}::text::timestamptz"));
    }
    if let Some(until) = &query.until {
        let p = sql.param(until.clone());
        and(&mut sql, format!("time <= {p}::text::timestamptz"));
    }
    if !query.actions.is_empty() {
        let p = sql.param(query.actions.clone());
        and(&mut sql, format!("action = ANY({p}::text[])"));
    }
    for text in &query.line_contains {
        let p = sql.param(format!("%{}%", like_escape(text)));
        and(&mut sql, format!("line LIKE {p}"));
    }
    sql.text.push_str(if stores.len() == 1 {
        " ORDER BY sequence"
    } else {
        " ORDER BY time, store_id, sequence"
    });
    sql
}

/// A connection for review, with the runtime that drives it.
pub struct ReviewReader {
    runtime: tokio::runtime::Runtime,
    /// Lent to the task that reads a query's rows ahead while the caller works on them.
    client: Option<tokio_postgres::Client>,
}

type Params = Vec<Box<dyn ToSql + Sync + Send>>;

impl ReviewReader {
    /// Connects to `target`.
    pub fn connect(target: &PostgresTarget) -> Result<Self, PostgresError> {
        // One worker: it fetches the next rows while this thread handles the last ones.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|error| PostgresError::Url(format!("cannot start a runtime: {error}")))?;
        let client = runtime.block_on(target.connect())?;
        Ok(ReviewReader {
            runtime,
            client: Some(client),
        })
    }

    fn client(&self) -> Result<&tokio_postgres::Client, PostgresError> {
        self.client
            .as_ref()
            .ok_or_else(|| PostgresError::NotInitialised("the connection was lost".into()))
    }

    /// The stores `selection` names, by store id.
    pub fn stores(
        &mut self,
        selection: &StoreSelection,
    ) -> Result<Vec<ForwardedStore>, PostgresError> {
        let rows = self
            .runtime
            .block_on(self.client()?.query(
                "SELECT store_id, host, public_key, key_id FROM jupyter_audit.stores \
                 WHERE ($1::uuid IS NULL OR store_id = $1) AND ($2::text IS NULL OR host = $2) \
                 ORDER BY store_id",
                &[&selection.store_id, &selection.host],
            ))
            .map_err(not_initialised_or("list the stores"))?;
        rows.iter()
            .map(|row| {
                Ok(ForwardedStore {
                    store_id: row
                        .try_get(0)
                        .map_err(PostgresError::query("read a store"))?,
                    host: row
                        .try_get(1)
                        .map_err(PostgresError::query("read a store"))?,
                    public_key: row
                        .try_get(2)
                        .map_err(PostgresError::query("read a store"))?,
                    key_id: row
                        .try_get(3)
                        .map_err(PostgresError::query("read a store"))?,
                })
            })
            .collect()
    }

    /// Calls `each` with every record of `stores` (empty: all stores) that passes
    /// `query`, in review order; `each` may stop by returning an error.
    pub fn for_each_record<E: From<PostgresError>>(
        &mut self,
        stores: &[Uuid],
        query: &RecordQuery,
        mut each: impl FnMut(ForwardedLine) -> Result<(), E>,
    ) -> Result<(), E> {
        let sql = records_sql(stores, query, UserColumns::Either);
        // Across stores, one user's records stream from its index in time order when
        // `--user` names only names or only ids (as it does but for a name that is
        // another user's id).
        let by_one_column = match (&query.user, stores.len()) {
            (Some(user), count) if count != 1 => Some(UserChoice {
                user: user.clone(),
                name_only: records_sql(stores, query, UserColumns::NameOnly).text,
                id_only: records_sql(stores, query, UserColumns::IdOnly).text,
            }),
            _ => None,
        };
        tracing::debug!(sql = %sql.text, "review query");
        self.stream(
            sql.text,
            sql.params,
            by_one_column,
            forwarded_line,
            &mut each,
        )
    }

    /// Every record of one store with its chain columns, by sequence.
    pub fn for_each_chain_row<E: From<PostgresError>>(
        &mut self,
        store_id: Uuid,
        mut each: impl FnMut(ChainRow) -> Result<(), E>,
    ) -> Result<(), E> {
        self.stream(
            "SELECT sequence, line, prev, hash FROM jupyter_audit.records \
             WHERE store_id = $1 ORDER BY sequence"
                .to_owned(),
            vec![Box::new(store_id)],
            None,
            chain_row,
            &mut each,
        )
    }

    /// The checkpoints of one store, by sequence. Each is small; a store forwards at
    /// most one a second, so even years of them fit in memory.
    pub fn checkpoints(
        &mut self,
        store_id: Uuid,
    ) -> Result<Vec<ForwardedCheckpoint>, PostgresError> {
        let doing = "read the checkpoints";
        let rows = self
            .runtime
            .block_on(self.client()?.query(
                "SELECT sequence, chain_hash, time, segment, key_id, signature \
                 FROM jupyter_audit.checkpoints WHERE store_id = $1 ORDER BY sequence",
                &[&store_id],
            ))
            .map_err(not_initialised_or(doing))?;
        rows.iter()
            .map(|row| {
                Ok(ForwardedCheckpoint {
                    sequence: row.try_get(0).map_err(PostgresError::query(doing))?,
                    chain_hash: row.try_get(1).map_err(PostgresError::query(doing))?,
                    time: row.try_get(2).map_err(PostgresError::query(doing))?,
                    segment: row.try_get(3).map_err(PostgresError::query(doing))?,
                    key_id: row.try_get(4).map_err(PostgresError::query(doing))?,
                    signature: row.try_get(5).map_err(PostgresError::query(doing))?,
                })
            })
            .collect()
    }

    /// Every store and its last forwarded sequence (0: none yet), by store id. Each
    /// maximum is read from the primary key's end.
    pub fn last_sequences(&mut self) -> Result<Vec<(Uuid, i64)>, PostgresError> {
        let doing = "read the stores' last sequences";
        let rows = self
            .runtime
            .block_on(self.client()?.query(
                "SELECT s.store_id, coalesce((SELECT max(r.sequence) FROM jupyter_audit.records r \
                 WHERE r.store_id = s.store_id), 0) FROM jupyter_audit.stores s ORDER BY s.store_id",
                &[],
            ))
            .map_err(not_initialised_or(doing))?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get(0).map_err(PostgresError::query(doing))?,
                    row.try_get(1).map_err(PostgresError::query(doing))?,
                ))
            })
            .collect()
    }

    /// At most `limit` records of `store_id` after sequence `after`, by sequence.
    pub fn lines_after(
        &mut self,
        store_id: Uuid,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ForwardedLine>, PostgresError> {
        let rows = self
            .runtime
            .block_on(self.client()?.query(
                "SELECT store_id, sequence, line FROM jupyter_audit.records \
                 WHERE store_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
                &[&store_id, &after, &limit],
            ))
            .map_err(not_initialised_or("read the records"))?;
        rows.iter().map(forwarded_line).collect()
    }

    /// The line of `store_id` at `sequence`, if forwarded.
    pub fn line_at(
        &mut self,
        store_id: Uuid,
        sequence: i64,
    ) -> Result<Option<String>, PostgresError> {
        let row = self
            .runtime
            .block_on(self.client()?.query_opt(
                "SELECT line FROM jupyter_audit.records WHERE store_id = $1 AND sequence = $2",
                &[&store_id, &sequence],
            ))
            .map_err(not_initialised_or("read a record"))?;
        row.map(|row| {
            row.try_get(0)
                .map_err(PostgresError::query("read a record"))
        })
        .transpose()
    }

    /// The records of `store_id` from `first` to `last` by sequence (the primary key's
    /// range), only those of `session_id` when given.
    pub fn for_each_line_between<E: From<PostgresError>>(
        &mut self,
        store_id: Uuid,
        first: i64,
        last: i64,
        session_id: Option<&str>,
        mut each: impl FnMut(ForwardedLine) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut params: Params = vec![Box::new(store_id), Box::new(first), Box::new(last)];
        let mut sql = String::from(
            "SELECT store_id, sequence, line FROM jupyter_audit.records \
             WHERE store_id = $1 AND sequence BETWEEN $2 AND $3",
        );
        if let Some(session_id) = session_id {
            params.push(Box::new(session_id.to_owned()));
            sql.push_str(" AND session_id = $4");
        }
        sql.push_str(" ORDER BY sequence");
        self.stream(sql, params, None, forwarded_line, &mut each)
    }

    /// Runs `sql` in a read-only transaction and hands its rows to `each` in order. A
    /// task reads them through a portal, a batch at a time and at most two batches
    /// ahead, so memory stays bounded and the server works while `each` does.
    fn stream<T: Send + 'static, E: From<PostgresError>>(
        &mut self,
        sql: String,
        params: Params,
        user_choice: Option<UserChoice>,
        convert: fn(&tokio_postgres::Row) -> Result<T, PostgresError>,
        each: &mut dyn FnMut(T) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut client = self
            .client
            .take()
            .ok_or_else(|| PostgresError::NotInitialised("the connection was lost".into()))?;
        let (batches, mut received) =
            tokio::sync::mpsc::channel::<Result<Vec<T>, PostgresError>>(2);
        let reading = self.runtime.spawn(async move {
            let outcome =
                read_batches(&mut client, sql, &params, user_choice, convert, &batches).await;
            if let Err(error) = outcome {
                let _ = batches.send(Err(error)).await;
            }
            client
        });
        let mut outcome: Result<(), E> = Ok(());
        while let Some(batch) = received.blocking_recv() {
            let handled = batch
                .map_err(E::from)
                .and_then(|rows| rows.into_iter().try_for_each(&mut *each));
            if let Err(error) = handled {
                outcome = Err(error);
                break;
            }
        }
        // Stops the task at its next batch when `each` gave up early.
        drop(received);
        match self.runtime.block_on(reading) {
            Ok(client) => self.client = Some(client),
            Err(error) => tracing::warn!(%error, "the PostgreSQL reader task failed"),
        }
        outcome
    }
}

/// The same query with `--user` on one column, used when that gives the same rows.
struct UserChoice {
    user: String,
    name_only: String,
    id_only: String,
}

/// Reads the rows of `sql` into `batches` until the end, or until nobody listens.
async fn read_batches<T>(
    client: &mut tokio_postgres::Client,
    mut sql: String,
    params: &Params,
    user_choice: Option<UserChoice>,
    convert: fn(&tokio_postgres::Row) -> Result<T, PostgresError>,
    batches: &tokio::sync::mpsc::Sender<Result<Vec<T>, PostgresError>>,
) -> Result<(), PostgresError> {
    let params: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let transaction = client
        .build_transaction()
        .read_only(true)
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .map_err(PostgresError::query("start a transaction"))?;
    if let Some(choice) = user_choice {
        let probe = transaction
            .query_one(USER_PROBE, &[&choice.user])
            .await
            .map_err(not_initialised_or("look the user up"))?;
        let id_of_another_name: bool = probe
            .try_get(0)
            .map_err(PostgresError::query("look the user up"))?;
        let some_name: bool = probe
            .try_get(1)
            .map_err(PostgresError::query("look the user up"))?;
        if !id_of_another_name {
            sql = choice.name_only;
        } else if !some_name {
            sql = choice.id_only;
        }
    }
    let portal = transaction
        .bind(sql.as_str(), &params)
        .await
        .map_err(not_initialised_or("query the records"))?;
    loop {
        let rows = transaction
            .query_portal(&portal, BATCH_ROWS)
            .await
            .map_err(PostgresError::query("read the records"))?;
        let done = rows.len() < BATCH_ROWS as usize;
        let converted = rows.iter().map(convert).collect::<Result<Vec<T>, _>>()?;
        if batches.send(Ok(converted)).await.is_err() || done {
            break;
        }
    }
    transaction
        .commit()
        .await
        .map_err(PostgresError::query("end the transaction"))
}

fn forwarded_line(row: &tokio_postgres::Row) -> Result<ForwardedLine, PostgresError> {
    let doing = "read a record";
    Ok(ForwardedLine {
        store_id: row.try_get(0).map_err(PostgresError::query(doing))?,
        sequence: row.try_get(1).map_err(PostgresError::query(doing))?,
        line: row.try_get(2).map_err(PostgresError::query(doing))?,
    })
}

fn chain_row(row: &tokio_postgres::Row) -> Result<ChainRow, PostgresError> {
    let doing = "read a record";
    Ok(ChainRow {
        sequence: row.try_get(0).map_err(PostgresError::query(doing))?,
        line: row.try_get(1).map_err(PostgresError::query(doing))?,
        prev: row.try_get(2).map_err(PostgresError::query(doing))?,
        hash: row.try_get(3).map_err(PostgresError::query(doing))?,
    })
}

/// A query error, or "not initialised" when the schema or a table is missing.
fn not_initialised_or(doing: &'static str) -> impl FnOnce(tokio_postgres::Error) -> PostgresError {
    move |source| {
        let missing = source.code().is_some_and(|code| {
            *code == tokio_postgres::error::SqlState::UNDEFINED_TABLE
                || *code == tokio_postgres::error::SqlState::INVALID_SCHEMA_NAME
        });
        if missing {
            PostgresError::NotInitialised(source.to_string())
        } else {
            PostgresError::Query { doing, source }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_match_wildcards_literally() {
        assert_eq!(like_escape(r"50%_a\b"), r"50\%\_a\\b");
    }

    #[test]
    fn one_store_reads_in_sequence_order_and_several_by_time() {
        let query = RecordQuery {
            user: Some("alice".into()),
            session_prefix: Some("ab_".into()),
            actions: vec!["stream".into()],
            line_contains: vec!["import os".into()],
            ..RecordQuery::default()
        };
        let one = records_sql(&[Uuid::nil()], &query, UserColumns::Either);
        assert!(one.text.ends_with("ORDER BY sequence"), "{}", one.text);
        assert!(one.text.contains("store_id = $1"));
        assert!(one.text.contains("(user_name = $2 OR user_id = $2)"));
        assert!(one.text.contains("session_id LIKE $3"));
        assert_eq!(one.params.len(), 5);
        let by_name = records_sql(&[], &query, UserColumns::NameOnly);
        assert!(
            by_name.text.contains("AND user_name = $1 AND"),
            "{}",
            by_name.text
        );
        let all = records_sql(&[], &RecordQuery::default(), UserColumns::Either);
        assert!(all.text.ends_with("ORDER BY time, store_id, sequence"));
        assert!(all.params.is_empty());
    }
}
