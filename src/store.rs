//! Embedded SQLite store: client keys and usage records, behind a schema managed by
//! migrations compiled into the binary.
//!
//! Atomicity: each call is one statement or one transaction; [`UsageWriter::insert`] writes
//! a whole batch or nothing.
//!
//! Usage rows are written by the accounting thread through a connection of its own
//! ([`UsageDb`], rusqlite, synchronous); everything else goes through sqlx's pool.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::accounting::UsageRecord;

/// The schema, in order. Never edit an entry that has shipped: add a new one.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "upstreams",
        include_str!("../migrations/sqlite/0002_upstreams.sql"),
    ),
    (
        3,
        "key_models",
        include_str!("../migrations/sqlite/0003_key_models.sql"),
    ),
    (
        4,
        "usage_attempts",
        include_str!("../migrations/sqlite/0004_usage_attempts.sql"),
    ),
];

#[derive(Debug)]
struct Embedded;

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, name, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*name),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// A client key as stored (never the secret itself).
#[derive(Clone, Debug, Serialize)]
pub struct KeyRow {
    pub id: i64,
    pub name: String,
    pub key_prefix: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Allowed models: comma-separated patterns (`*` wildcard); `None` = any.
    pub models: Option<String>,
    /// Replaces the model the client asks for.
    pub force_model: Option<String>,
    /// How reasoning is shown: passthrough | think_tags | strip.
    pub reasoning: Option<String>,
}

/// A key to store (its hash, never the secret).
pub struct NewKey<'a> {
    pub name: &'a str,
    pub key_hash: &'a str,
    pub key_prefix: &'a str,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub models: Option<&'a str>,
    pub force_model: Option<&'a str>,
    pub reasoning: Option<&'a str>,
}

/// Totals for one key, as `GET /stats` shows them.
#[derive(Debug, Default, Serialize)]
pub struct KeyStats {
    pub requests: i64,
    pub errors: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub reasoning_tokens: i64,
    pub by_model: Vec<ModelStats>,
}

#[derive(Debug, Serialize)]
pub struct ModelStats {
    pub model: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> anyhow::Result<Store> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open store {}: {e}", path.display()))?;
        Migrator::new(Embedded).await?.run(&pool).await?;
        Ok(Store {
            pool,
            path: path.to_path_buf(),
        })
    }

    /// A connection that writes usage records, for the one thread that does.
    pub fn usage_db(&self) -> anyhow::Result<UsageDb> {
        UsageDb::open(&self.path)
    }

    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    pub async fn insert_key(&self, k: &NewKey<'_>) -> sqlx::Result<i64> {
        let row = sqlx::query(
            "INSERT INTO client_keys (name, key_hash, key_prefix, created_at, expires_at,
                                      models, force_model, reasoning)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(k.name)
        .bind(k.key_hash)
        .bind(k.key_prefix)
        .bind(k.created_at)
        .bind(k.expires_at)
        .bind(k.models)
        .bind(k.force_model)
        .bind(k.reasoning)
        .fetch_one(&self.pool)
        .await?;
        row.try_get(0)
    }

    pub async fn find_key(&self, key_hash: &str) -> sqlx::Result<Option<KeyRow>> {
        let row = sqlx::query(
            "SELECT id, name, key_prefix, created_at, expires_at, revoked_at, models, force_model,
                    reasoning
             FROM client_keys WHERE key_hash = ?",
        )
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| key_row(&r)).transpose()
    }

    pub async fn list_keys(&self) -> sqlx::Result<Vec<KeyRow>> {
        let rows = sqlx::query(
            "SELECT id, name, key_prefix, created_at, expires_at, revoked_at, models, force_model,
                    reasoning
             FROM client_keys ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_row).collect()
    }

    /// Revokes the key whose id, name or prefix is `which`; returns how many were revoked.
    pub async fn revoke_key(&self, which: &str, now: i64) -> sqlx::Result<u64> {
        let done = sqlx::query(
            "UPDATE client_keys SET revoked_at = ?
             WHERE revoked_at IS NULL AND (CAST(id AS TEXT) = ? OR name = ? OR key_prefix = ?)",
        )
        .bind(now)
        .bind(which)
        .bind(which)
        .bind(which)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn key_stats(&self, key_id: i64) -> sqlx::Result<KeyStats> {
        let rows = sqlx::query(
            "SELECT model, COUNT(*), SUM(outcome <> 'ok'), SUM(input_tokens), SUM(output_tokens),
                    SUM(cached_tokens), SUM(reasoning_tokens)
             FROM usage_records WHERE key_id = ? GROUP BY model ORDER BY model",
        )
        .bind(key_id)
        .fetch_all(&self.pool)
        .await?;
        let mut stats = KeyStats::default();
        for row in rows {
            let m = ModelStats {
                model: row.try_get(0)?,
                requests: row.try_get(1)?,
                input_tokens: row.try_get(3)?,
                output_tokens: row.try_get(4)?,
                cached_tokens: row.try_get(5)?,
            };
            stats.requests += m.requests;
            stats.errors += row.try_get::<i64, _>(2)?;
            stats.input_tokens += m.input_tokens;
            stats.output_tokens += m.output_tokens;
            stats.cached_tokens += m.cached_tokens;
            stats.reasoning_tokens += row.try_get::<i64, _>(6)?;
            stats.by_model.push(m);
        }
        Ok(stats)
    }

    /// All usage rows, oldest first, as JSON (what the integration tests inspect).
    pub async fn usage_rows(&self) -> sqlx::Result<Vec<serde_json::Value>> {
        let rows = sqlx::query(
            "SELECT request_id, key_id, api, model, stream, status, outcome, input_tokens,
                    output_tokens, cached_tokens, reasoning_tokens, estimated, upstream,
                    attempts
             FROM usage_records ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(serde_json::json!({
                    "request_id": r.try_get::<String, _>(0)?,
                    "key_id": r.try_get::<i64, _>(1)?,
                    "api": r.try_get::<String, _>(2)?,
                    "model": r.try_get::<String, _>(3)?,
                    "stream": r.try_get::<bool, _>(4)?,
                    "status": r.try_get::<i64, _>(5)?,
                    "outcome": r.try_get::<String, _>(6)?,
                    "input_tokens": r.try_get::<i64, _>(7)?,
                    "output_tokens": r.try_get::<i64, _>(8)?,
                    "cached_tokens": r.try_get::<i64, _>(9)?,
                    "reasoning_tokens": r.try_get::<i64, _>(10)?,
                    "estimated": r.try_get::<bool, _>(11)?,
                    "upstream": r.try_get::<Option<String>, _>(12)?,
                    "attempts": r.try_get::<i64, _>(13)?,
                }))
            })
            .collect()
    }

    /// Learned upstream concurrency limits: `(account, model) → limit`.
    pub async fn load_limits(&self) -> sqlx::Result<HashMap<(String, String), f64>> {
        let rows = sqlx::query("SELECT account, model, limit_value FROM upstream_limits")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(((r.try_get(0)?, r.try_get(1)?), r.try_get(2)?)))
            .collect()
    }

    /// Saves (or, with `None`, forgets) a learned limit.
    pub async fn save_limit(
        &self,
        account: &str,
        model: &str,
        limit: Option<f64>,
        now_ms: i64,
    ) -> sqlx::Result<()> {
        match limit {
            Some(l) => {
                sqlx::query(
                    "INSERT INTO upstream_limits (account, model, limit_value, updated_ms)
                     VALUES (?, ?, ?, ?)
                     ON CONFLICT (account, model) DO UPDATE
                     SET limit_value = excluded.limit_value, updated_ms = excluded.updated_ms",
                )
                .bind(account)
                .bind(model)
                .bind(l)
                .bind(now_ms)
                .execute(&self.pool)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM upstream_limits WHERE account = ? AND model = ?")
                    .bind(account)
                    .bind(model)
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// How long a statement waits for a lock held by another connection (the pool's, the usage
/// writer's, another process's) before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The usage table's own SQLite connection, used synchronously by the accounting thread,
/// with no thread hand-off per statement (through sqlx, a batch took some sixty context
/// switches between its runtime and its SQLite thread).
pub struct UsageDb {
    conn: rusqlite::Connection,
}

impl UsageDb {
    /// Opens the store's database (already migrated by [`Store::open`]) for writing usage.
    pub fn open(path: &Path) -> anyhow::Result<UsageDb> {
        let conn = rusqlite::Connection::open(path)
            .map_err(|e| anyhow::anyhow!("cannot open store {}: {e}", path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // The pool's journal settings. It only appends, which touches the last pages of the
        // table and its index: a 256 KB page cache, not SQLite's default 2 MB, which it would
        // otherwise fill as the table grows. Foreign keys are not checked on this connection:
        // a row's key id comes from a key just authenticated, and keys are revoked, never
        // deleted (the check cost 1.1k instructions a row, a look-up in `client_keys`).
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
             PRAGMA foreign_keys = OFF; PRAGMA cache_size = -256;",
        )?;
        Ok(UsageDb { conn })
    }

    /// The writer, whose statements are prepared on first use and kept while it lives.
    pub fn writer(&self) -> UsageWriter<'_> {
        UsageWriter {
            conn: &self.conn,
            inserts: Default::default(),
        }
    }
}

/// Writes batches of usage records through its [`UsageDb`]'s connection.
pub struct UsageWriter<'c> {
    conn: &'c rusqlite::Connection,
    /// The INSERTs of 1, 4, 16 and 64 rows. Kept here rather than in rusqlite's statement
    /// cache, which looks a statement up by hashing its text (about 1.5 KB for 64 rows) and
    /// clears every binding when it is handed back (1.2k instructions a row).
    inserts: [Option<Insert<'c>>; 4],
}

/// A prepared multi-row INSERT, and what each of its rows was last bound to in the columns
/// that mostly repeat from one request to the next.
///
/// SQLite keeps a statement's bindings from one execution to the next, so a value equal to
/// the one its parameter already holds is not bound again. Binding costs about 150
/// instructions for a number and 600 for a text, which SQLite copies: skipping the eleven
/// repeating columns took a request's insert from about 10.4k instructions to 7k (callgrind).
struct Insert<'c> {
    statement: rusqlite::Statement<'c>,
    /// One entry per row of the statement.
    held: Vec<Held>,
}

/// The repeating columns' values as bound in one row of an [`Insert`]; `None` where nothing
/// is known to be bound (before the first bind, and while a bind is being tried).
#[derive(Default)]
struct Held {
    key_id: Option<i64>,
    api: Option<&'static str>,
    model: Option<String>,
    stream: Option<bool>,
    status: Option<u16>,
    outcome: Option<&'static str>,
    cached_tokens: Option<i64>,
    reasoning_tokens: Option<i64>,
    estimated: Option<bool>,
    account: Option<Option<Arc<str>>>,
    attempts: Option<u32>,
}

/// Binds `value` to parameter `column` unless `held` says it already is bound there.
fn bind_changed<T: PartialEq + Clone + rusqlite::ToSql>(
    statement: &mut rusqlite::Statement<'_>,
    column: usize,
    value: &T,
    held: &mut Option<T>,
) -> rusqlite::Result<()> {
    if held.as_ref() != Some(value) {
        *held = None;
        statement.raw_bind_parameter(column, value)?;
        *held = Some(value.clone());
    }
    Ok(())
}

impl UsageWriter<'_> {
    /// Writes a batch of usage records in one transaction: all of them or none. Rows go in
    /// multi-row statements of 1, 4, 16 or 64 rows, each prepared once and then reused: a
    /// row costs SQLite 6.7k instructions that way, 14.9k as a single-row INSERT.
    pub fn insert(&mut self, batch: &[UsageRecord]) -> rusqlite::Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        let mut rest = batch;
        while !rest.is_empty() {
            let size = statement_rows(rest.len());
            let (rows, tail) = rest.split_at(size);
            rest = tail;
            let insert = match &mut self.inserts[size_index(size)] {
                Some(prepared) => prepared,
                empty => empty.insert(Insert {
                    statement: self.conn.prepare(&usage_insert_sql(size))?,
                    held: (0..size).map(|_| Held::default()).collect(),
                }),
            };
            let statement = &mut insert.statement;
            for (i, (r, held)) in rows.iter().zip(&mut insert.held).enumerate() {
                // Parameters are numbered from 1, row after row, in the INSERT's column order.
                let column = |c: usize| i * USAGE_COLUMNS + c;
                statement.raw_bind_parameter(column(1), r.ts_ms)?;
                statement.raw_bind_parameter(column(2), &r.request_id)?;
                bind_changed(statement, column(3), &r.key_id, &mut held.key_id)?;
                bind_changed(statement, column(4), &r.api, &mut held.api)?;
                bind_changed(statement, column(5), &r.model, &mut held.model)?;
                bind_changed(statement, column(6), &r.stream, &mut held.stream)?;
                bind_changed(statement, column(7), &r.status, &mut held.status)?;
                bind_changed(statement, column(8), &r.outcome.as_str(), &mut held.outcome)?;
                statement.raw_bind_parameter(column(9), r.usage.input_tokens as i64)?;
                statement.raw_bind_parameter(column(10), r.usage.output_tokens as i64)?;
                let cached = r.usage.cached_tokens as i64;
                bind_changed(statement, column(11), &cached, &mut held.cached_tokens)?;
                let reasoning = r.usage.reasoning_tokens as i64;
                bind_changed(
                    statement,
                    column(12),
                    &reasoning,
                    &mut held.reasoning_tokens,
                )?;
                bind_changed(statement, column(13), &r.estimated, &mut held.estimated)?;
                statement.raw_bind_parameter(column(14), (r.latency_us / 1000) as i64)?;
                statement.raw_bind_parameter(column(15), r.ttfb_us.map(|v| (v / 1000) as i64))?;
                bind_changed(statement, column(16), &r.account, &mut held.account)?;
                bind_changed(statement, column(17), &r.attempts, &mut held.attempts)?;
            }
            statement.raw_execute()?;
        }
        tx.commit()
    }
}

fn key_row(r: &sqlx::sqlite::SqliteRow) -> sqlx::Result<KeyRow> {
    Ok(KeyRow {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        key_prefix: r.try_get(2)?,
        created_at: r.try_get(3)?,
        expires_at: r.try_get(4)?,
        revoked_at: r.try_get(5)?,
        models: r.try_get(6)?,
        force_model: r.try_get(7)?,
        reasoning: r.try_get(8)?,
    })
}

const USAGE_COLUMNS: usize = 17;

/// The text of the usage INSERT for `rows` rows (1, 4, 16 or 64); built when the writer
/// first prepares that size.
fn usage_insert_sql(rows: usize) -> String {
    let row = format!("({})", vec!["?"; USAGE_COLUMNS].join(", "));
    format!(
        "INSERT INTO usage_records (ts_ms, request_id, key_id, api, model, stream, status, \
         outcome, input_tokens, output_tokens, cached_tokens, reasoning_tokens, estimated, \
         latency_ms, ttfb_ms, upstream, attempts) VALUES {}",
        vec![row; rows].join(", ")
    )
}

/// Which of the four statement sizes (1, 4, 16, 64 rows) `rows` is.
fn size_index(rows: usize) -> usize {
    (rows.ilog2() / 2) as usize
}

/// Rows in the next usage INSERT for `left` rows still to write: the largest power of four
/// not above `left`, at most 64 (17 bound values a row).
fn statement_rows(left: usize) -> usize {
    const MAX_ROWS: usize = 64;
    if left >= MAX_ROWS {
        MAX_ROWS
    } else {
        1 << (left.ilog2() / 2 * 2)
    }
}

/// Fixtures for tests of the store and of what writes to it.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::accounting::{Outcome, UsageRecord};

    /// A store in a temporary directory (kept while the returned directory lives) with one
    /// client key, whose id is returned.
    pub(crate) async fn store_with_key() -> (tempfile::TempDir, Store, i64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("t.db")).await.expect("open");
        let key_id = store
            .insert_key(&NewKey {
                name: "t",
                key_hash: "h",
                key_prefix: "p",
                created_at: 0,
                expires_at: None,
                models: None,
                force_model: None,
                reasoning: None,
            })
            .await
            .expect("key");
        (dir, store, key_id)
    }

    /// The `i`-th usage record of a test: request id `r{i}`, `i` input tokens.
    pub(crate) fn usage_record(key_id: i64, i: usize) -> UsageRecord {
        UsageRecord {
            ts_ms: i as i64,
            request_id: format!("r{i}"),
            key_id,
            api: "openai",
            model: "glm-4.7".into(),
            stream: false,
            status: 200,
            outcome: Outcome::Ok,
            usage: crate::meter::Usage {
                input_tokens: i as u64,
                ..Default::default()
            },
            estimated: false,
            latency_us: 1000,
            ttfb_us: None,
            account: None,
            attempts: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::UsageRecord;

    #[test]
    fn usage_statements_come_in_few_sizes() {
        assert_eq!(statement_rows(1), 1);
        assert_eq!(statement_rows(3), 1);
        assert_eq!(statement_rows(7), 4);
        assert_eq!(statement_rows(16), 16);
        assert_eq!(statement_rows(63), 16);
        assert_eq!(statement_rows(64), 64);
        assert_eq!(statement_rows(10_000), 64);
        for rows in [1, 4, 16, 64] {
            let sql = usage_insert_sql(rows);
            assert_eq!(
                sql.matches('?').count(),
                USAGE_COLUMNS * rows,
                "{rows} rows"
            );
            assert_eq!(sql.matches("), (").count(), rows - 1, "{rows} rows");
        }
    }

    /// Rows are written through the same statement rows again and again, the repeating
    /// columns bound only when they change: what lands must still be each record's values.
    #[tokio::test]
    async fn repeated_values_are_stored_though_not_bound_again() {
        use crate::accounting::Outcome;
        let (_dir, store, key_id) = testing::store_with_key().await;
        let db = store.usage_db().expect("usage db");
        let mut writer = db.writer();
        let vary = |i: usize, round: usize| {
            let mut r = testing::usage_record(key_id, i);
            // Each column changes in some rounds and rows and not in others, and comes back.
            let odd = (i + round) % 2 == 1;
            if odd {
                r.key_id = key_id + 1;
                r.api = "anthropic";
                r.model = format!("model-{}", round % 3);
                r.stream = true;
                r.status = 429;
                r.outcome = Outcome::UpstreamError;
                r.usage.cached_tokens = round as u64;
                r.usage.reasoning_tokens = 7;
                r.estimated = true;
                r.account = Some(format!("p/{}", round % 2).into());
                r.attempts = 3;
            }
            if round == 2 && i == 0 {
                r.account = Some("p/0".into());
            }
            r
        };
        let mut expected = Vec::new();
        for round in 0..5 {
            // 4 rows: one statement of 4; 5 rows: 4 and 1.
            let n = 4 + round % 2;
            let batch: Vec<UsageRecord> = (0..n).map(|i| vary(i, round)).collect();
            writer.insert(&batch).expect("insert");
            expected.extend(batch);
        }
        let rows = store.usage_rows().await.expect("rows");
        assert_eq!(rows.len(), expected.len());
        for (row, r) in rows.iter().zip(&expected) {
            let want = serde_json::json!({
                "request_id": r.request_id,
                "key_id": r.key_id,
                "api": r.api,
                "model": r.model,
                "stream": r.stream,
                "status": r.status,
                "outcome": r.outcome.as_str(),
                "input_tokens": r.usage.input_tokens,
                "output_tokens": r.usage.output_tokens,
                "cached_tokens": r.usage.cached_tokens,
                "reasoning_tokens": r.usage.reasoning_tokens,
                "estimated": r.estimated,
                "upstream": r.account.as_deref(),
                "attempts": r.attempts,
            });
            assert_eq!(row, &want);
        }
    }

    #[tokio::test]
    async fn a_batch_of_any_size_is_written_whole_or_not_at_all() {
        let (_dir, store, key_id) = testing::store_with_key().await;
        let record = |i| testing::usage_record(key_id, i);
        let db = store.usage_db().expect("usage db");
        let mut writer = db.writer();
        let mut written = 0;
        for n in [1usize, 3, 300, 1000] {
            let batch: Vec<UsageRecord> = (written..written + n).map(record).collect();
            writer.insert(&batch).expect("insert");
            written += n;
        }
        // A batch with a row the database refuses leaves nothing behind.
        sqlx::query(
            "CREATE TRIGGER refuse BEFORE INSERT ON usage_records WHEN NEW.request_id = 'bad'
             BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .execute(&store.pool)
        .await
        .expect("trigger");
        let mut bad: Vec<UsageRecord> = (written..written + 3).map(record).collect();
        bad[2].request_id = "bad".into();
        assert!(writer.insert(&bad).is_err(), "a refused row");
        let rows = store.usage_rows().await.expect("rows");
        assert_eq!(rows.len(), written);
        let mut ids: Vec<String> = rows
            .iter()
            .map(|r| r["request_id"].as_str().unwrap_or_default().to_string())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), written, "every record once");
    }
}
