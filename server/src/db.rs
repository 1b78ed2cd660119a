//! The database: connecting (SQLite or PostgreSQL), migrating under a lock,
//! write transactions, and the one timestamp type every table uses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crmkit_migrations::{Migrator, MigratorTrait};
use futures_util::StreamExt;
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteQueryResult, SqliteRow, SqliteSynchronous};
use sea_orm::sqlx::{self, Either, Executor};
use sea_orm::{
    ConnectOptions, ConnectionTrait, DatabaseBackend, DatabaseConnection, DatabaseTransaction,
    DbErr, DeriveValueType, RuntimeErr, SqliteTransactionMode, Statement, TransactionOptions,
    TransactionTrait, Value, Values,
};
use sea_query_sqlx::SqlxValues;
use time::OffsetDateTime;

use crate::config::Settings;
use crate::reader::{Cells, Readers};

mod submit;
pub use submit::{Row, submit};

/// A point in time as stored: UTC, microsecond precision.
///
/// SQLite keeps timestamps as RFC3339 text, and the text encoder drops trailing
/// zero digits of the fraction, so `…:00Z` would sort after `…:00.5Z`. Every
/// stored value therefore carries one extra nanosecond, which makes the fraction
/// always nine digits wide and text order equal to time order. PostgreSQL keeps
/// microseconds and drops that nanosecond on its own. Construct only through
/// [`Ts::new`] / [`Ts::now`], which is why the field is private.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, DeriveValueType)]
pub struct Ts(OffsetDateTime);

impl Ts {
    pub fn new(t: OffsetDateTime) -> Ts {
        let t = t.to_offset(time::UtcOffset::UTC);
        let micros = t.nanosecond() / 1000;
        let t = t.replace_nanosecond(micros * 1000 + 1).unwrap_or(t);
        Ts(t)
    }

    pub fn now() -> Ts {
        Ts::new(OffsetDateTime::now_utc())
    }

    /// The instant, at microsecond precision.
    pub fn get(self) -> OffsetDateTime {
        let micros = self.0.nanosecond() / 1000;
        self.0.replace_nanosecond(micros * 1000).unwrap_or(self.0)
    }

    pub fn plus(self, d: Duration) -> Ts {
        Ts::new(self.get() + d)
    }

    /// Microseconds since the Unix epoch (for cursors and comparisons).
    pub fn micros(self) -> i64 {
        (self.get().unix_timestamp_nanos() / 1000) as i64
    }

    pub fn from_micros(m: i64) -> Option<Ts> {
        OffsetDateTime::from_unix_timestamp_nanos(m as i128 * 1000)
            .ok()
            .map(Ts::new)
    }

    pub fn render(self) -> String {
        crate::wire::time_fmt::format(self.get())
    }
}

impl From<Ts> for OffsetDateTime {
    fn from(t: Ts) -> Self {
        t.get()
    }
}

/// The database handle every part of the server uses: the connection pool
/// and, on SQLite, the process's single writer with its group commit.
/// Reads through it go to the pool; on SQLite a write through it is a write
/// transaction of its own ([`Db::alone`]).
#[derive(Clone)]
pub struct Db {
    conn: DatabaseConnection,
    writer: Arc<Writer>,
    /// SQLite files: the hot paths' reads (see `reader`).
    readers: Option<Arc<Readers>>,
}

impl std::ops::Deref for Db {
    type Target = DatabaseConnection;
    fn deref(&self) -> &DatabaseConnection {
        &self.conn
    }
}

impl Db {
    pub fn new(conn: DatabaseConnection) -> Db {
        Db {
            conn,
            writer: Arc::default(),
            readers: None,
        }
    }

    /// Runs one read-only statement (`?` placeholders) and maps each row:
    /// on a SQLite file through a reader connection on this thread, else
    /// through the pool.
    pub async fn read<T, E: From<DbErr>>(
        &self,
        sql: &str,
        values: Vec<Value>,
        mut map: impl FnMut(&dyn Cells) -> Result<T, E>,
    ) -> Result<Vec<T>, E> {
        if let Some(r) = &self.readers {
            return r.rows(sql, &values, map);
        }
        let backend = self.conn.get_database_backend();
        let rows = self.conn.query_all_raw(stmt(backend, sql, values)).await?;
        rows.iter().map(|r| map(r)).collect()
    }

    /// Writers queued for the SQLite writer, and batches opened so far: for
    /// tests that put writers in one batch.
    #[cfg(test)]
    pub(crate) fn writer_queue(&self) -> (usize, u64) {
        (
            self.writer.waiting.load(Ordering::SeqCst),
            self.writer.next_id.load(Ordering::SeqCst),
        )
    }

    /// The SQLite file that [`submit`] writes to, where it can: not on
    /// PostgreSQL, nor on an in-memory database (which only the pool's
    /// connections share).
    pub fn submits(&self) -> Option<&std::path::Path> {
        self.readers.as_ref().map(|r| r.path())
    }

    pub async fn close(self) -> Result<(), DbErr> {
        // Every queued write runs first; the thread's connection closes.
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || submit::stop(&writer))
            .await
            .ok();
        // The pool's close waits for every connection to come back.
        self.writer.slot.lock().await.spare.take();
        self.conn.close().await
    }
}

/// How long a write made through [`Db`] waits for the writer slot before it
/// is answered 503: as long as the pool's busy timeout, which bounded the
/// same wait when such writes went to SQLite's busy handler.
const ALONE_WAIT: Duration = Duration::from_secs(10);

impl Db {
    /// On SQLite, a write made through the handle rather than a [`WriteTx`]
    /// (a sign-in code, a rate-limit count, a step-up or OAuth grant) runs in
    /// a write transaction of its own: it queues on the writer slot with the
    /// other writers and joins a group commit. On a pool connection it would
    /// wait in SQLite's busy handler (sleeps of up to 100 ms a try) while
    /// group commits hold the lock back to back, and under sustained creates
    /// that took seconds. `None` on PostgreSQL, whose writers do not queue.
    ///
    /// A caller holding a `WriteTx` must write through it, never through the
    /// handle: the handle would wait for that caller's own slot (and give up
    /// after [`ALONE_WAIT`]).
    async fn alone(&self) -> Result<Option<WriteTx>, DbErr> {
        if self.get_database_backend() != DatabaseBackend::Sqlite {
            return Ok(None);
        }
        match tokio::time::timeout(ALONE_WAIT, write_tx(self)).await {
            Ok(tx) => tx.map(Some),
            Err(_) => Err(DbErr::Conn(RuntimeErr::Internal(format!(
                "the database's writer stayed busy for {} s",
                ALONE_WAIT.as_secs()
            )))),
        }
    }
}

/// Commits a write made [alone](Db::alone) if it succeeded.
async fn settle<T>(tx: WriteTx, ran: Result<T, DbErr>) -> Result<T, DbErr> {
    match ran {
        Ok(v) => tx.commit().await.map(|()| v),
        Err(e) => {
            tx.rollback().await.ok();
            Err(e)
        }
    }
}

/// Whether a statement writes (reads through the handle stay on the pool).
fn writes(sql: &str) -> bool {
    let head = sql.trim_start().get(..7).unwrap_or_default();
    ["INSERT", "UPDATE", "DELETE", "REPLACE"]
        .iter()
        .any(|k| head.len() >= k.len() && head[..k.len()].eq_ignore_ascii_case(k))
}

/// Reads go to the pool; on SQLite, writes go through the writer slot (see
/// [`Db::alone`]).
#[async_trait::async_trait]
impl ConnectionTrait for Db {
    fn get_database_backend(&self) -> DatabaseBackend {
        self.conn.get_database_backend()
    }
    async fn execute_raw(&self, stmt: Statement) -> Result<sea_orm::ExecResult, DbErr> {
        match self.alone().await? {
            Some(tx) => {
                let ran = tx.execute_raw(stmt).await;
                settle(tx, ran).await
            }
            None => self.conn.execute_raw(stmt).await,
        }
    }
    async fn execute_unprepared(&self, sql: &str) -> Result<sea_orm::ExecResult, DbErr> {
        match self.alone().await? {
            Some(tx) => {
                let ran = tx.execute_unprepared(sql).await;
                settle(tx, ran).await
            }
            None => self.conn.execute_unprepared(sql).await,
        }
    }
    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<sea_orm::QueryResult>, DbErr> {
        if !writes(&stmt.sql) {
            return self.conn.query_one_raw(stmt).await;
        }
        match self.alone().await? {
            Some(tx) => {
                let ran = tx.query_one_raw(stmt).await;
                settle(tx, ran).await
            }
            None => self.conn.query_one_raw(stmt).await,
        }
    }
    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
        if !writes(&stmt.sql) {
            return self.conn.query_all_raw(stmt).await;
        }
        match self.alone().await? {
            Some(tx) => {
                let ran = tx.query_all_raw(stmt).await;
                settle(tx, ran).await
            }
            None => self.conn.query_all_raw(stmt).await,
        }
    }
    fn support_returning(&self) -> bool {
        self.conn.support_returning()
    }
}

/// Opens the pool with the settings the durability promises need.
pub async fn connect(settings: &Settings) -> Result<Db, DbErr> {
    let url = &settings.database_url;
    let sqlite = url.starts_with("sqlite:");
    let mut opt = ConnectOptions::new(url.clone());
    let max = settings
        .db_max_connections
        .unwrap_or(if sqlite { 8 } else { 10 });
    opt.max_connections(max)
        .min_connections(if sqlite { 1 } else { 0 })
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    if sqlite {
        opt.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10))
                // A page cache of 16 MiB per connection (SQLite's default is
                // 2 MiB): a search visiting a thousand scattered rows no longer
                // reads most of them back from the OS with a system call each.
                .pragma("cache_size", "-16384")
                // Savepoints keep the pages they change in a sub-journal, which
                // SQLite spills to a temporary file past 64 KiB: a group-commit
                // batch (one savepoint per writer) created, wrote and deleted a
                // file per batch. In memory it costs a batch's changed pages.
                .pragma("temp_store", "memory")
                // The driver's thread hands rows to the request one by one
                // through a channel of 50 by default; a page of 201 rows made
                // it stop and wait for the request four times (context
                // switches in every profile of long pages).
                .row_buffer_size(512)
        });
    }
    let mut db = Db::new(sea_orm::Database::connect(opt).await?);
    if sqlite {
        db.readers = Readers::for_url(url, max as usize).map(Arc::new);
    }
    Ok(db)
}

/// SQLite has one writer at a time, and with `synchronous=FULL` every commit
/// is an fsync. The writer of this process therefore does group commit:
///
/// - writers queue on `slot` in order, without sleeping (SQLite's busy
///   handler backs off up to 100 ms a try, which made the slowest writes slow);
/// - the first opens the batch with `BEGIN IMMEDIATE` and the batch's own
///   savepoint; each writer runs in a `SAVEPOINT crmkit_w` of its own inside
///   it, so its rollback or error undoes only its work;
/// - a writer that finishes while nobody waits commits the batch at once
///   (a lone writer commits as before); when others wait, it hands the commit
///   to a committer queued behind them, and every writer of the batch learns
///   the outcome of the one `COMMIT` (one fsync) before it answers.
///
/// Nothing is acknowledged before it is durable: `WriteTx::commit` returns Ok
/// only after the batch's COMMIT succeeded. A database error that may have
/// ended the transaction inside SQLite poisons the batch, which is then rolled
/// back and reported as failed to all of its writers.
///
/// Every statement of the batch goes to SQLite's driver thread and back, and
/// on a small machine those thread hops, not SQLite, were most of a write's
/// cost. So a writer's savepoint costs no call of its own: `SAVEPOINT
/// crmkit_w` rides in front of the writer's first statement, and a committed
/// writer's savepoint stays on SQLite's stack until the next writer's first
/// call releases it (`RELEASE crmkit_w; SAVEPOINT crmkit_w; …`) or the batch
/// commits. A rollback (`ROLLBACK TO crmkit_w`) always finds the writer's own
/// savepoint: the one before it was released in the same call that opened it.
///
/// Self-contained writes (creates on a SQLite file) skip all of this: the
/// writer thread ([`submit`]) takes its turn on `slot` like a writer, and
/// runs every queued write in a transaction of its own on its own connection.
#[derive(Default)]
struct Writer {
    slot: Arc<tokio::sync::Mutex<Lane>>,
    /// Writers (and committers) queued on `slot`.
    waiting: AtomicUsize,
    /// Batches opened so far (the writer thread's included).
    next_id: AtomicU64,
    /// Self-contained writes waiting for the writer thread (see [`submit`]).
    queue: std::sync::Mutex<submit::Queue>,
    /// Wakes the writer thread when writes are queued.
    ready: std::sync::Condvar,
    /// Wakes the checkpoint thread when a batch has committed.
    checkpoint_wake: std::sync::Condvar,
    checkpoints: submit::Checkpoints,
}

/// How a batch ended, as its writers learn it.
type Outcome = tokio::sync::watch::Receiver<Option<Result<(), String>>>;

type SqliteConn = sqlx::pool::PoolConnection<sqlx::Sqlite>;

/// What the writer slot guards: the open batch, if any, and between batches
/// the connection the last batch ended cleanly on. Every batch runs on that
/// one connection while it stays healthy: SQLite keeps a connection's page
/// cache across transactions only while no other connection has written, so
/// a batch on another pooled connection read every page it touched back
/// from the OS (about 16 `pread` calls per create, measured).
#[derive(Default)]
struct Lane {
    batch: Option<Batch>,
    spare: Option<SqliteConn>,
}

/// An open group commit: a pooled connection inside `BEGIN IMMEDIATE` and
/// `SAVEPOINT crmkit_batch` (from its first statement on), driven with plain statements (not sqlx's
/// transaction, whose bookkeeping cannot survive SQLite ending the
/// transaction on its own). Unless it ended cleanly, the connection is closed
/// rather than returned to the pool in an unknown state.
struct Batch {
    /// Only the holder of the slot uses it; the lock lets `&self` calls reach
    /// it. Taken back into `Lane::spare` when the batch ends cleanly.
    conn: tokio::sync::Mutex<Option<SqliteConn>>,
    ended_cleanly: bool,
    id: u64,
    /// `BEGIN IMMEDIATE; SAVEPOINT crmkit_batch` was sent: it rides in front
    /// of the batch's first statement, like a writer's savepoint.
    begun: AtomicBool,
    poisoned: AtomicBool,
    /// A committed writer's savepoint is still on SQLite's stack.
    release_pending: AtomicBool,
    committer_queued: bool,
    /// Committed writers' search-index statements, run in order just before
    /// the batch commits (see [`WriteTx::defer`]).
    deferred: std::sync::Mutex<Vec<Deferred>>,
    done: tokio::sync::watch::Sender<Option<Result<(), String>>>,
}

impl Batch {
    /// [`OPEN_BATCH`] and its number of statements if this call is the
    /// batch's first (marking it sent), else nothing.
    fn opening(&self) -> (&'static str, usize) {
        if self.begun.swap(true, Ordering::SeqCst) {
            ("", 0)
        } else {
            (OPEN_BATCH, 2)
        }
    }

    async fn conn(&self) -> tokio::sync::MappedMutexGuard<'_, SqliteConn> {
        tokio::sync::MutexGuard::map(self.conn.lock().await, |c| {
            c.as_mut()
                .expect("a batch holds its connection until it ends")
        })
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.get_mut()
            && !self.ended_cleanly
        {
            conn.close_on_drop();
        }
    }
}

type Slot = tokio::sync::OwnedMutexGuard<Lane>;

/// A statement held back until its batch commits (see [`WriteTx::defer`]).
#[derive(Debug, Clone)]
pub enum Deferred {
    /// SQL with `?` marks, and its values.
    Statement(String, Vec<Value>),
    /// One row for a statement that takes its rows as a JSON array bound to
    /// its one `?` (`… FROM json_each(?) …`, handling them in array order).
    /// Rows for the same statement held back one after another go to SQLite
    /// as one statement holding all of them (see [`send_order`]).
    Row(String, serde_json::Value),
}

/// The statements a batch's deferred list becomes, in order: each
/// `Statement` as it is, and each run of `Row`s for the same statement as
/// that statement once, with their rows in one JSON array.
///
/// FTS5 writes its pending entries out as a new segment of the index
/// whenever a statement that may need undoing on its own starts (one that
/// writes the rows of a SELECT does): with a statement per record, every
/// record of a batch made a segment, and the merges that follow. One
/// statement per batch makes one.
fn send_order(deferred: Vec<Deferred>) -> Vec<(String, Vec<Value>)> {
    fn flush(out: &mut Vec<(String, Vec<Value>)>, run: Option<(String, Vec<serde_json::Value>)>) {
        if let Some((sql, rows)) = run {
            out.push((sql, vec![serde_json::Value::Array(rows).to_string().into()]));
        }
    }
    let mut out = Vec::new();
    let mut run: Option<(String, Vec<serde_json::Value>)> = None;
    for d in deferred {
        match d {
            Deferred::Row(sql, row) => match &mut run {
                Some((same, rows)) if *same == sql => rows.push(row),
                _ => {
                    flush(&mut out, run.take());
                    run = Some((sql, vec![row]));
                }
            },
            Deferred::Statement(sql, values) => {
                flush(&mut out, run.take());
                out.push((sql, values));
            }
        }
    }
    flush(&mut out, run);
    out
}

/// The page cache of the writer's connection: SQLite's default 2 MiB, not
/// the 16 MiB the pool's connections get for reads. When a B-tree page splits
/// and SQLite reorders the new pages, it parks one under the lock-byte page
/// number (page 262,145 at 4 KiB pages), and the end of that transaction then
/// walks every page in the cache to drop pages past the end of the file:
/// under sustained creates that walk was most commits, 8% of the writer's
/// time with 16 MiB (profiled, confirmed under gdb). The pages a create
/// needs beyond the B-trees' upper levels are scattered leaves that a larger
/// cache seldom holds anyway; a miss is one `pread` from the OS's cache.
const WRITER_CACHE: &str = "PRAGMA cache_size = -2048";

/// What opens a batch's transaction; sent in front of its first statement.
const OPEN_BATCH: &str = "BEGIN IMMEDIATE; SAVEPOINT crmkit_batch; ";

const BATCH_FAILED: &str =
    "an earlier write in the same group commit failed; nothing of it will be kept";

/// Appends one statement to a multi-statement call and its values to the
/// call's (they bind in order).
fn push_statement(text: &mut String, values: &mut Vec<Value>, sql: &str, vals: &[Value]) {
    text.push_str(sql);
    text.push_str(";\n");
    values.extend(vals.iter().cloned());
}

/// Waits for the batch's COMMIT and says how it went.
async fn batch_outcome(mut done: Outcome) -> Result<(), DbErr> {
    let outcome = done
        .wait_for(Option::is_some)
        .await
        .map(|v| v.clone())
        .ok()
        .flatten();
    match outcome {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(DbErr::Custom(format!("commit failed: {e}"))),
        None => Err(DbErr::Custom("the write batch was lost".into())),
    }
}

/// Counts a writer as queued while it waits for the slot (and stops counting
/// it if it is cancelled while waiting).
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Queued(n)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Writer {
    async fn lock(&self) -> Slot {
        let _queued = Queued::new(&self.waiting);
        self.slot.clone().lock_owned().await
    }
}

/// Opens a batch on the writer's connection (or a pooled one) if none is open.
async fn open_batch(
    writer: &Writer,
    pool: &sqlx::SqlitePool,
    slot: &mut Slot,
) -> Result<(), DbErr> {
    if slot.batch.is_some() {
        return Ok(());
    }
    let conn = match slot.spare.take() {
        Some(conn) => conn,
        None => {
            let mut conn = pool.acquire().await.map_err(exec_err)?;
            sqlx::raw_sql(WRITER_CACHE)
                .execute(&mut *conn)
                .await
                .map_err(exec_err)?;
            conn
        }
    };
    slot.batch = Some(Batch {
        conn: tokio::sync::Mutex::new(Some(conn)),
        ended_cleanly: false,
        id: writer.next_id.fetch_add(1, Ordering::SeqCst),
        begun: AtomicBool::new(false),
        poisoned: AtomicBool::new(false),
        release_pending: AtomicBool::new(false),
        committer_queued: false,
        deferred: Default::default(),
        done: tokio::sync::watch::Sender::new(None),
    });
    Ok(())
}

/// Commits (or, when poisoned, rolls back) the open batch and tells its writers.
async fn finish_batch(slot: &mut Slot) {
    let Some(mut batch) = slot.batch.take() else {
        return;
    };
    let poisoned = batch.poisoned.load(Ordering::SeqCst);
    let deferred = std::mem::take(batch.deferred.get_mut().expect("never poisoned"));
    // Nothing sent and nothing held back: there is no transaction to end.
    let idle = !batch.begun.load(Ordering::SeqCst) && deferred.is_empty();
    let (open, _) = batch.opening();
    let conn = batch
        .conn
        .get_mut()
        .as_mut()
        .expect("a batch holds its connection until it ends");
    // The batch's own savepoint is gone if SQLite ended the transaction on
    // an error (disk full, I/O): then RELEASE fails, COMMIT does not run,
    // and nothing of the batch may be reported kept.
    let result = if poisoned {
        Err("an earlier write in the same group commit failed; nothing of it was kept".to_string())
    } else if idle {
        Ok(())
    } else {
        let mut text = open.to_string();
        let mut values = Vec::new();
        for (sql, vals) in &send_order(deferred) {
            push_statement(&mut text, &mut values, sql, vals);
        }
        text.push_str("RELEASE crmkit_batch; COMMIT");
        let query = sqlx::query_with(
            sqlx::AssertSqlSafe(text.as_str()),
            SqlxValues(Values(values)),
        );
        // Drained to the end: every statement runs, and the first error
        // stops the rest (COMMIT included).
        let mut results = (&mut **conn).fetch_many(query);
        let mut outcome = Ok(());
        while let Some(item) = results.next().await {
            if let Err(e) = item {
                outcome = Err(e.to_string());
                break;
            }
        }
        drop(results);
        outcome
    };
    if result.is_ok() {
        batch.ended_cleanly = true;
        slot.spare = batch.conn.get_mut().take();
    } else {
        // The connection is closed after this in any case (`Drop`).
        sqlx::raw_sql("ROLLBACK").execute(&mut **conn).await.ok();
    }
    batch.done.send_replace(Some(result));
}

/// After a writer leaves the batch: commit now if nobody waits, else make sure
/// one committer is queued behind the waiting writers. The COMMIT runs in a
/// task of its own, so a request cancelled by its client cannot cut it short.
fn leave_batch(writer: &Arc<Writer>, mut slot: Slot) {
    let Some(batch) = slot.batch.as_mut() else {
        return;
    };
    if writer.waiting.load(Ordering::SeqCst) == 0 {
        tokio::spawn(async move { finish_batch(&mut slot).await });
        return;
    }
    if batch.committer_queued {
        return;
    }
    batch.committer_queued = true;
    let id = batch.id;
    let w = writer.clone();
    drop(slot);
    // If the last waiting writer finds nobody behind it, it commits itself and
    // this committer finds its batch gone.
    tokio::spawn(async move {
        let mut slot = w.lock().await;
        if slot.batch.as_ref().is_some_and(|b| b.id == id) {
            finish_batch(&mut slot).await;
        }
    });
}

/// Marks the batch failed, saying why in the log.
fn poison(slot: &Slot, why: &dyn std::fmt::Display) {
    if let Some(b) = slot.batch.as_ref() {
        tracing::warn!(batch = b.id, "write batch will roll back: {why}");
        b.poisoned.store(true, Ordering::SeqCst);
    }
}

/// Where a writer's savepoint stands.
const NO_SAVEPOINT: u8 = 0;
const SAVEPOINT_OPEN: u8 = 1;
/// A call that opens the savepoint was sent but did not finish (cancelled):
/// whether the savepoint exists is unknown, so the batch must not be trusted.
const SAVEPOINT_UNSURE: u8 = 2;

/// Undoes a writer's work in the batch, leaving the batch as it was before.
async fn rollback_savepoint(slot: &Slot, state: u8) -> Result<(), DbErr> {
    match (state, slot.batch.as_ref()) {
        (NO_SAVEPOINT, _) => Ok(()),
        (SAVEPOINT_OPEN, Some(batch)) => {
            let mut conn = batch.conn().await;
            let r = sqlx::raw_sql("ROLLBACK TO crmkit_w; RELEASE crmkit_w")
                .execute(&mut **conn)
                .await;
            r.map(|_| ()).map_err(exec_err)
        }
        _ => Err(DbErr::Custom(
            "a write was cut short while it opened its savepoint".into(),
        )),
    }
}

fn exec_err(e: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(Arc::new(e)))
}

fn query_err(e: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(Arc::new(e)))
}

/// What one call on the batch's connection returned (the savepoint
/// statements in front of it left out).
struct Ran {
    done: SqliteQueryResult,
    rows: Vec<SqliteRow>,
}

/// A write transaction: on SQLite a savepoint in the writer's open batch
/// (see [`Writer`]), holding the writer slot until it ends; on PostgreSQL a
/// plain transaction.
pub struct WriteTx {
    pg: Option<DatabaseTransaction>,
    group: Option<(Arc<Writer>, Slot)>,
    savepoint: AtomicU8,
    /// This writer's deferred statements; they join the batch on commit.
    deferred: std::sync::Mutex<Vec<Deferred>>,
}

impl WriteTx {
    /// Makes the writes durable; on SQLite returns once the batch holding
    /// them is committed.
    pub async fn commit(mut self) -> Result<(), DbErr> {
        if let Some(tx) = self.pg.take() {
            return tx.commit().await;
        }
        let (writer, mut slot) = self.group.take().expect("open until commit or rollback");
        let Some(batch) = slot.batch.as_mut() else {
            return Err(DbErr::Custom("the write batch was lost".into()));
        };
        let mine = std::mem::take(&mut *self.deferred.lock().expect("never poisoned"));
        batch
            .deferred
            .get_mut()
            .expect("never poisoned")
            .extend(mine);
        let done = batch.done.subscribe();
        match self.savepoint.load(Ordering::SeqCst) {
            // Released by the next writer's first call, or by the batch's commit.
            SAVEPOINT_OPEN => batch.release_pending.store(true, Ordering::SeqCst),
            NO_SAVEPOINT => {}
            _ => poison(
                &slot,
                &"a write was cut short while it opened its savepoint",
            ),
        }
        leave_batch(&writer, slot);
        batch_outcome(done).await
    }

    pub async fn rollback(mut self) -> Result<(), DbErr> {
        if let Some(tx) = self.pg.take() {
            return tx.rollback().await;
        }
        let (writer, slot) = self.group.take().expect("open until commit or rollback");
        let result = rollback_savepoint(&slot, self.savepoint.load(Ordering::SeqCst)).await;
        if let Err(e) = &result {
            poison(&slot, e);
        }
        leave_batch(&writer, slot);
        result
    }

    /// Holds a statement back until the batch commits, on SQLite; runs it at
    /// once on PostgreSQL (where a `Row` is refused). For SQLite's FTS5
    /// search index: it writes its pending entries out as a new segment
    /// whenever a savepoint opens after a change, so each writer's savepoint
    /// made a segment (and merge work) per write. Held back, and with the
    /// batch's rows for one statement sent as one ([`send_order`]), a batch
    /// writes one. Deferred statements run in the order their writers
    /// committed, after every writer of the batch, and only for writers that
    /// committed; they must therefore carry their
    /// own values (no reads of rows a later writer may change) and be right
    /// whatever ran after them (see `records::store`). If one fails, the
    /// whole batch fails and nothing of it is acknowledged.
    pub async fn defer(&self, deferred: Deferred) -> Result<(), DbErr> {
        if let Some(tx) = &self.pg {
            let Deferred::Statement(sql, values) = deferred else {
                return Err(DbErr::Custom("deferred rows are for SQLite".into()));
            };
            tx.execute_raw(stmt(DatabaseBackend::Postgres, &sql, values))
                .await?;
            return Ok(());
        }
        self.deferred.lock().expect("never poisoned").push(deferred);
        Ok(())
    }

    /// Marks the batch failed when an error may have ended SQLite's transaction
    /// (anything but a constraint violation, which only aborts its statement).
    fn check<T>(&self, r: Result<T, DbErr>) -> Result<T, DbErr> {
        if let (Err(e), Some((_, slot))) = (&r, &self.group)
            && !statement_level(e)
        {
            poison(slot, e);
        }
        r
    }

    /// Runs `sql` (one or more statements) on the batch's connection, inside
    /// this writer's savepoint, opening it in the same call the first time.
    async fn run(&self, sql: &str, values: Option<Values>) -> Result<Ran, sqlx::Error> {
        let lost = || sqlx::Error::Protocol("the write batch was lost".into());
        let (_, slot) = self.group.as_ref().ok_or_else(lost)?;
        let batch = slot.batch.as_ref().ok_or_else(lost)?;
        if batch.poisoned.load(Ordering::SeqCst) {
            return Err(sqlx::Error::Protocol(BATCH_FAILED.into()));
        }
        // Taken before the savepoint state changes, so nothing is marked
        // unsure by a call that never reached the connection.
        let mut conn = batch.conn().await;
        // Unsure from here until the call returns, as the savepoint below.
        let (open, mut skip) = batch.opening();
        let mut text = open.to_string();
        if self.savepoint.load(Ordering::SeqCst) == NO_SAVEPOINT {
            if batch.release_pending.swap(false, Ordering::SeqCst) {
                text.push_str("RELEASE crmkit_w; ");
                skip += 1;
            }
            text.push_str("SAVEPOINT crmkit_w; ");
            skip += 1;
            self.savepoint.store(SAVEPOINT_UNSURE, Ordering::SeqCst);
        }
        text.push_str(sql);
        let query = sqlx::query_with(
            sqlx::AssertSqlSafe(text.as_str()),
            SqlxValues(values.unwrap_or(Values(Vec::new()))),
        );
        let mut results = (&mut **conn).fetch_many(query);
        let mut ran = Ran {
            done: SqliteQueryResult::default(),
            rows: Vec::new(),
        };
        let mut seen = 0;
        while let Some(item) = results.next().await {
            match item {
                Ok(Either::Left(_)) if seen < skip => {
                    seen += 1;
                    if seen == skip {
                        self.savepoint.store(SAVEPOINT_OPEN, Ordering::SeqCst);
                    }
                }
                Ok(Either::Left(done)) => ran.done.extend([done]),
                Ok(Either::Right(row)) => ran.rows.push(row),
                Err(e) => {
                    if seen < skip {
                        poison(slot, &e);
                    }
                    return Err(e);
                }
            }
        }
        Ok(ran)
    }
}

/// Errors after which the transaction is still intact.
fn statement_level(e: &DbErr) -> bool {
    if e.sql_err().is_some() {
        return true;
    }
    match e {
        DbErr::Exec(_) | DbErr::Query(_) | DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => {
            e.to_string().contains("constraint failed")
        }
        _ => true,
    }
}

impl Drop for WriteTx {
    /// Dropped without commit or rollback (an early return or a cancelled
    /// request): the writer's savepoint is rolled back in a task that holds
    /// the slot until then, and the batch is left for the next writer or
    /// committed.
    fn drop(&mut self) {
        let Some((writer, slot)) = self.group.take() else {
            return;
        };
        let state = self.savepoint.load(Ordering::SeqCst);
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(async move {
                if let Err(e) = rollback_savepoint(&slot, state).await {
                    poison(&slot, &e);
                }
                leave_batch(&writer, slot);
            });
        } else {
            poison(
                &slot,
                &"a write transaction was dropped outside the runtime",
            );
        }
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for WriteTx {
    fn get_database_backend(&self) -> DatabaseBackend {
        match &self.pg {
            Some(tx) => tx.get_database_backend(),
            None => DatabaseBackend::Sqlite,
        }
    }
    async fn execute_raw(&self, stmt: Statement) -> Result<sea_orm::ExecResult, DbErr> {
        if let Some(tx) = &self.pg {
            return tx.execute_raw(stmt).await;
        }
        let r = self.run(&stmt.sql, stmt.values).await;
        self.check(r.map(|r| r.done.into()).map_err(exec_err))
    }
    async fn execute_unprepared(&self, sql: &str) -> Result<sea_orm::ExecResult, DbErr> {
        if let Some(tx) = &self.pg {
            return tx.execute_unprepared(sql).await;
        }
        let r = self.run(sql, None).await;
        self.check(r.map(|r| r.done.into()).map_err(exec_err))
    }
    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<sea_orm::QueryResult>, DbErr> {
        if let Some(tx) = &self.pg {
            return tx.query_one_raw(stmt).await;
        }
        let r = self.run(&stmt.sql, stmt.values).await;
        self.check(
            r.map(|r| r.rows.into_iter().next().map(Into::into))
                .map_err(query_err),
        )
    }
    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
        if let Some(tx) = &self.pg {
            return tx.query_all_raw(stmt).await;
        }
        let r = self.run(&stmt.sql, stmt.values).await;
        self.check(
            r.map(|r| r.rows.into_iter().map(Into::into).collect())
                .map_err(query_err),
        )
    }
    fn support_returning(&self) -> bool {
        true
    }
}

/// Starts a write transaction. On SQLite: waits for the writer slot and opens
/// a batch if none is open, on the writer's connection. The batch's
/// `BEGIN IMMEDIATE` (the write lock taken up front, so no "database is
/// locked" when a reader would upgrade) and this writer's savepoint are sent
/// with its first statement, in the same call.
pub async fn write_tx(db: &Db) -> Result<WriteTx, DbErr> {
    if db.get_database_backend() != DatabaseBackend::Sqlite {
        let tx = db.conn.begin().await?;
        return Ok(WriteTx {
            pg: Some(tx),
            group: None,
            savepoint: AtomicU8::new(NO_SAVEPOINT),
            deferred: Default::default(),
        });
    }
    let writer = db.writer.clone();
    let mut slot = writer.lock().await;
    open_batch(&writer, db.conn.get_sqlite_connection_pool(), &mut slot).await?;
    Ok(WriteTx {
        pg: None,
        group: Some((writer, slot)),
        savepoint: AtomicU8::new(NO_SAVEPOINT),
        deferred: Default::default(),
    })
}

/// Runs statements (SQL with `?` marks, and their values) in order in the
/// write transaction and returns every row they RETURN. On SQLite they go to
/// the database as one call, a single trip to the driver's thread; on
/// PostgreSQL one by one. The first failing statement ends the script.
pub async fn script(
    tx: &WriteTx,
    parts: Vec<(String, Vec<Value>)>,
) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
    let backend = tx.get_database_backend();
    if backend == DatabaseBackend::Sqlite {
        let mut sql = String::new();
        let mut values = Vec::new();
        for (text, vals) in &parts {
            push_statement(&mut sql, &mut values, text, vals);
        }
        return tx
            .query_all_raw(Statement::from_sql_and_values(backend, sql, values))
            .await;
    }
    let mut rows = Vec::new();
    for (text, vals) in parts {
        rows.extend(tx.query_all_raw(stmt(backend, &text, vals)).await?);
    }
    Ok(rows)
}

/// Applies pending migrations, in one plain transaction outside the group
/// commit (on SQLite the writer slot is held meanwhile, so no batch runs
/// beside it). On PostgreSQL an advisory lock held for the transaction makes
/// processes that start together migrate exactly once; on SQLite the
/// immediate transaction is the lock.
pub async fn migrate(db: &Db) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let _slot = if backend == DatabaseBackend::Sqlite {
        let mut slot = db.writer.lock().await;
        finish_batch(&mut slot).await;
        Some(slot)
    } else {
        None
    };
    let tx = db
        .conn
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?;
    if backend == DatabaseBackend::Postgres {
        tx.execute_unprepared("SELECT pg_advisory_xact_lock(7346281190021)")
            .await?;
    }
    Migrator::up(&tx, None).await?;
    tx.commit().await
}

/// The key that signs list cursors: made once, kept in `settings`, so every
/// process sharing the database accepts every other's cursors.
pub async fn cursor_key(db: &DatabaseConnection) -> Result<Vec<u8>, DbErr> {
    let mut fresh = [0u8; 32];
    rand::fill(&mut fresh);
    let backend = db.get_database_backend();
    db.execute_raw(stmt(
        backend,
        "INSERT INTO settings (key, value) VALUES ('cursor_key', ?) ON CONFLICT (key) DO NOTHING",
        vec![crate::secrets::hex(&fresh).into()],
    ))
    .await?;
    let row = db
        .query_one_raw(stmt(
            backend,
            "SELECT value FROM settings WHERE key = 'cursor_key'",
            vec![],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("settings row missing".into()))?;
    let hex: String = row.try_get("", "value")?;
    Ok(hex.as_bytes().to_vec())
}

/// Names of the migrations not yet applied.
pub async fn pending_migrations(db: &DatabaseConnection) -> Result<Vec<String>, DbErr> {
    let pending = Migrator::get_pending_migrations_read_only(db).await?;
    Ok(pending.iter().map(|m| m.name().to_string()).collect())
}

/// A statement written with `?` placeholders, rewritten to `$1, $2, …` on
/// PostgreSQL. Only for the few statements sea-query cannot express; none of
/// them contain a literal `?`.
pub fn stmt(backend: DatabaseBackend, sql: &str, values: Vec<Value>) -> Statement {
    if backend == DatabaseBackend::Postgres {
        let mut out = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for ch in sql.chars() {
            if ch == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(ch);
            }
        }
        Statement::from_sql_and_values(backend, out, values)
    } else {
        Statement::from_sql_and_values(backend, sql, values)
    }
}

/// True when the error is a unique-constraint violation (an upsert race or a
/// taken email/domain).
pub fn is_unique_violation(e: &DbErr) -> bool {
    if let DbErr::Exec(RuntimeErr::SqlxError(x)) | DbErr::Query(RuntimeErr::SqlxError(x)) = e
        && let sqlx::Error::Database(d) = &**x
    {
        // The pool's drivers' errors and the writer thread's ([`submit`]).
        return d.is_unique_violation();
    }
    matches!(
        e.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_times_sort_as_text() {
        let a = Ts::new(time::macros::datetime!(2026-11-28 10:00:00 UTC));
        let b = Ts::new(time::macros::datetime!(2026-11-28 10:00:00.5 UTC));
        let c = Ts::new(time::macros::datetime!(2026-11-28 10:00:00.000001 UTC));
        let fmt = |t: Ts| {
            t.0.format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        assert!(fmt(a) < fmt(c) && fmt(c) < fmt(b));
        assert_eq!(a.get(), time::macros::datetime!(2026-11-28 10:00:00 UTC));
        assert_eq!(Ts::from_micros(a.micros()), Some(a));
    }

    async fn scratch_db() -> (Db, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "crmkit-writer-{}.db",
            crate::secrets::new_id(crate::wire::handle::Kind::Audit)
        ));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut opt = ConnectOptions::new(url.clone());
        opt.max_connections(4).sqlx_logging(false);
        opt.map_sqlx_sqlite_opts(|o| o.journal_mode(SqliteJournalMode::Wal));
        let mut db = Db::new(sea_orm::Database::connect(opt).await.unwrap());
        db.readers = Readers::for_url(&url, 2).map(Arc::new);
        db.execute_unprepared("CREATE TABLE t (k TEXT PRIMARY KEY)")
            .await
            .unwrap();
        (db, path)
    }

    async fn keys(db: &Db) -> Vec<String> {
        let rows = db
            .query_all_raw(Statement::from_string(
                DatabaseBackend::Sqlite,
                "SELECT k FROM t ORDER BY k",
            ))
            .await
            .unwrap();
        rows.iter().map(|r| r.try_get("", "k").unwrap()).collect()
    }

    /// A table `log (n, k, run)` whose `n` gives the order rows were written in.
    async fn make_log(db: &Db) {
        db.execute_unprepared(
            "CREATE TABLE log (n INTEGER PRIMARY KEY, k TEXT NOT NULL, run INTEGER)",
        )
        .await
        .unwrap();
    }

    fn insert(k: &str) -> Statement {
        Statement::from_sql_and_values(
            DatabaseBackend::Sqlite,
            "INSERT INTO t (k) VALUES (?)",
            vec![k.into()],
        )
    }

    /// Writers of one batch keep their own outcomes: a commit, an explicit
    /// rollback, a failed statement followed by a commit, a drop without
    /// commit, and a commit after them all, all in one group commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_in_one_batch_keep_their_own_outcomes() {
        let (db, path) = scratch_db().await;
        let first = write_tx(&db).await.unwrap();
        first.execute_raw(insert("a")).await.unwrap();
        let others = {
            let db = db.clone();
            tokio::spawn(async move {
                let rolled = write_tx(&db).await.unwrap();
                rolled.execute_raw(insert("b")).await.unwrap();
                rolled.rollback().await.unwrap();
                let failed = write_tx(&db).await.unwrap();
                let dup = failed.execute_raw(insert("a")).await;
                assert!(is_unique_violation(&dup.unwrap_err()));
                failed.execute_raw(insert("c")).await.unwrap();
                failed.commit().await.unwrap();
            })
        };
        let dropped = {
            let db = db.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let d = write_tx(&db).await.unwrap();
                d.execute_raw(insert("d")).await.unwrap();
                drop(d);
                let e = write_tx(&db).await.unwrap();
                e.execute_raw(insert("e")).await.unwrap();
                e.commit().await.unwrap();
            })
        };
        // Let the others queue behind `first`, so they join its batch.
        while db.writer.waiting.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let batch = db.writer.next_id.load(Ordering::SeqCst);
        first.commit().await.unwrap();
        others.await.unwrap();
        dropped.await.unwrap();
        assert_eq!(keys(&db).await, ["a", "c", "e"]);
        assert!(
            db.writer.next_id.load(Ordering::SeqCst) - batch <= 2,
            "the writers shared batches"
        );
        db.close().await.unwrap();
        std::fs::remove_file(&path).ok();
    }

    /// Deferred statements run after every writer of the batch, in the order
    /// the writers committed, and only for writers that committed; rows for
    /// the same statement held back one after another go as one statement
    /// (in order), and one that fails fails the whole batch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deferred_statements_run_last_for_committed_writers_in_order() {
        let (db, path) = scratch_db().await;
        make_log(&db).await;
        // `run`: how many rows the statement that logged the row held.
        let log = |k: &str, row: bool| {
            if row {
                Deferred::Row(
                    "INSERT INTO log (k, run) SELECT j.value, (SELECT count(*) FROM json_each(x.a)) \
                     FROM (SELECT ? AS a) AS x, json_each(x.a) AS j ORDER BY j.key"
                        .into(),
                    k.into(),
                )
            } else {
                Deferred::Statement("INSERT INTO log (k) VALUES (?)".into(), vec![k.into()])
            }
        };
        let first = write_tx(&db).await.unwrap();
        first.execute_raw(insert("a")).await.unwrap();
        first.defer(log("a", true)).await.unwrap();
        let mut queued = Vec::new();
        let writers = [
            ("b", true, false),
            ("c", true, true),
            ("d", false, true),
            ("e", true, true),
            ("f", true, true),
        ];
        for (i, (k, row, keep)) in writers.into_iter().enumerate() {
            let db = db.clone();
            queued.push(tokio::spawn(async move {
                // Queue in this order behind `first`.
                tokio::time::sleep(Duration::from_millis(20 * i as u64)).await;
                let tx = write_tx(&db).await.unwrap();
                tx.execute_raw(insert(k)).await.unwrap();
                tx.defer(log(k, row)).await.unwrap();
                if keep {
                    tx.commit().await.unwrap();
                } else {
                    tx.rollback().await.unwrap();
                }
            }));
        }
        while db.writer.waiting.load(Ordering::SeqCst) < writers.len() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let batch = db.writer.next_id.load(Ordering::SeqCst);
        first.commit().await.unwrap();
        for q in queued {
            q.await.unwrap();
        }
        assert_eq!(db.writer.next_id.load(Ordering::SeqCst), batch, "one batch");
        let logged = db
            .read("SELECT k, run FROM log ORDER BY n", vec![], |r| {
                Ok::<_, DbErr>((r.text(0)?.unwrap_or_default(), r.int(1)?))
            })
            .await
            .unwrap();
        // b rolled back; the statement d splits the rows into two runs.
        let expected = [
            ("a", Some(2)),
            ("c", Some(2)),
            ("d", None),
            ("e", Some(2)),
            ("f", Some(2)),
        ];
        let expected: Vec<_> = expected.iter().map(|(k, n)| (k.to_string(), *n)).collect();
        assert_eq!(logged, expected);

        let failing = write_tx(&db).await.unwrap();
        failing.execute_raw(insert("x")).await.unwrap();
        failing
            .defer(Deferred::Statement(
                "INSERT INTO missing VALUES (1)".into(),
                vec![],
            ))
            .await
            .unwrap();
        assert!(
            failing.commit().await.is_err(),
            "nothing may be acknowledged"
        );
        assert_eq!(keys(&db).await, ["a", "c", "d", "e", "f"]);
        db.close().await.unwrap();
        std::fs::remove_file(&path).ok();
    }

    /// Writes submitted while a write transaction holds the writer wait for
    /// it, then run together in one transaction of the writer thread, each
    /// keeping its own outcome: one
    /// whose statement breaks a constraint gets the error and keeps nothing
    /// (not even its statements before that one), and the ones after it still
    /// run. Deferred statements come with the writes that ran.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn submitted_writes_join_one_batch_and_keep_their_own_outcomes() {
        let (db, path) = scratch_db().await;
        make_log(&db).await;
        let put = |k: &str| {
            (
                format!("INSERT INTO t (k) VALUES ('{k}') RETURNING k"),
                vec![],
            )
        };
        let first = write_tx(&db).await.unwrap();
        first.execute_raw(insert("a")).await.unwrap();
        let jobs = [
            (vec![put("j1")], vec![]),
            (vec![put("j2"), put("a")], vec![]),
            (
                vec![put("j3")],
                vec![Deferred::Statement(
                    "INSERT INTO log (k) VALUES ('j3')".to_string(),
                    vec![],
                )],
            ),
        ];
        let mut answers = Vec::new();
        for (i, (parts, deferred)) in jobs.into_iter().enumerate() {
            let db = db.clone();
            answers.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20 * i as u64)).await;
                submit(&db, parts, deferred).await
            }));
        }
        while db.writer.queue.lock().unwrap().jobs.len() < 3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let batch = db.writer.next_id.load(Ordering::SeqCst);
        first.commit().await.unwrap();
        let mut got = Vec::new();
        for a in answers {
            got.push(a.await.unwrap());
        }
        let returned = |r: &Result<Vec<Row>, DbErr>| -> Vec<String> {
            r.as_ref()
                .unwrap()
                .iter()
                .map(|row| row.text("k").unwrap().to_string())
                .collect()
        };
        assert_eq!(returned(&got[0]), ["j1"]);
        assert!(is_unique_violation(got[1].as_ref().unwrap_err()));
        assert_eq!(returned(&got[2]), ["j3"]);
        assert_eq!(keys(&db).await, ["a", "j1", "j3"]);
        let logged = db
            .read("SELECT k FROM log", vec![], |r| r.text(0))
            .await
            .unwrap();
        assert_eq!(logged, [Some("j3".into())]);
        assert_eq!(
            db.writer.next_id.load(Ordering::SeqCst),
            batch + 1,
            "one batch after the transaction's"
        );
        db.close().await.unwrap();
        std::fs::remove_file(&path).ok();
    }

    /// A write made through the handle (a sign-in code, a rate-limit count)
    /// queues on the writer slot like a transaction and joins the next group
    /// commit, rather than waiting in SQLite's busy handler while another
    /// writer holds the lock; a read through the handle does not wait at all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_through_the_handle_queue_for_the_writer() {
        let (db, path) = scratch_db().await;
        let first = write_tx(&db).await.unwrap();
        first.execute_raw(insert("a")).await.unwrap();
        assert_eq!(keys(&db).await, Vec::<String>::new(), "reads do not wait");
        let alone = {
            let db = db.clone();
            tokio::spawn(async move {
                let returned = db
                    .query_one_raw(Statement::from_string(
                        DatabaseBackend::Sqlite,
                        "INSERT INTO t (k) VALUES ('b') RETURNING k",
                    ))
                    .await?;
                let executed = db.execute_raw(insert("c")).await?;
                Ok::<_, DbErr>((returned, executed.rows_affected()))
            })
        };
        let queued = async {
            while db.writer_queue().0 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), queued)
            .await
            .expect("the write did not queue for the writer slot");
        assert!(!alone.is_finished());
        first.commit().await.unwrap();
        let (returned, executed) = alone.await.unwrap().unwrap();
        assert_eq!(returned.unwrap().try_get::<String>("", "k").unwrap(), "b");
        assert_eq!(executed, 1);
        assert_eq!(keys(&db).await, ["a", "b", "c"]);
        // A failing write is undone alone and leaves the writer usable.
        let taken = db.execute_raw(insert("a")).await.unwrap_err();
        assert!(is_unique_violation(&taken), "{taken}");
        db.execute_raw(insert("d")).await.unwrap();
        assert_eq!(keys(&db).await, ["a", "b", "c", "d"]);
        db.close().await.unwrap();
        std::fs::remove_file(&path).ok();
    }

    /// A write through the handle waits for the writer slot at most
    /// [`ALONE_WAIT`], then fails as a connection error (a 503 `not_ready`
    /// with `Retry-After`), having written nothing.
    #[tokio::test]
    async fn a_write_through_the_handle_gives_up_on_a_busy_writer() {
        let (db, path) = scratch_db().await;
        let holder = write_tx(&db).await.unwrap();
        holder.execute_raw(insert("held")).await.unwrap();
        // Paused, the clock jumps ahead whenever every task waits, so the
        // ten seconds pass at once; nothing else here waits on a timer.
        tokio::time::pause();
        let started = tokio::time::Instant::now();
        let err = db.execute_raw(insert("late")).await.unwrap_err();
        let waited = started.elapsed();
        tokio::time::resume();
        assert!(waited >= ALONE_WAIT, "gave up after {waited:?}");
        assert!(matches!(err, DbErr::Conn(_)), "{err:?}");
        assert!(err.to_string().contains("stayed busy"), "{err}");
        let answer = crate::error::AppError::from(err);
        assert_eq!(answer.status.as_u16(), 503);
        assert_eq!(answer.code, "not_ready");
        assert_eq!(
            answer.retry_after,
            Some(crate::error::UNAVAILABLE_RETRY_AFTER)
        );
        // The holder is unaffected, and the write that gave up left nothing.
        holder.commit().await.unwrap();
        assert_eq!(keys(&db).await, ["held"]);
        db.execute_raw(insert("after")).await.unwrap();
        assert_eq!(keys(&db).await, ["after", "held"]);
        db.close().await.unwrap();
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn only_writing_statements_go_to_the_writer() {
        for sql in [
            "INSERT INTO t",
            "  update t SET",
            "\nDELETE FROM t",
            "replace INTO t",
        ] {
            assert!(writes(sql), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "",
            "PRAGMA x",
            "UPD",
        ] {
            assert!(!writes(sql), "{sql}");
        }
    }

    /// The writer thread checkpoints nothing itself, so the checkpoint thread
    /// must copy the WAL into the database file and have the writer start it
    /// over: without it the WAL would hold every page written here (~16 MiB).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_is_checkpointed_and_started_over_beside_the_writer() {
        let (db, path) = scratch_db().await;
        db.execute_unprepared("CREATE TABLE big (k TEXT PRIMARY KEY, body BLOB)")
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for task in 0..16 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..250 {
                    let put = (
                        "INSERT INTO big (k, body) VALUES (?, randomblob(4000))".to_string(),
                        vec![format!("{task}-{i}").into()],
                    );
                    submit(&db, vec![put], vec![]).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let wal = std::fs::metadata(path.with_extension("db-wal"))
            .unwrap()
            .len();
        let main = std::fs::metadata(&path).unwrap().len();
        assert!(wal < 12 << 20, "the WAL grew to {wal} bytes");
        assert!(
            main > 8 << 20,
            "only {main} bytes were copied into the database"
        );
        let n = db
            .read("SELECT count(*) FROM big", vec![], |r| r.int(0))
            .await
            .unwrap();
        assert_eq!(n, [Some(4000)]);
        db.close().await.unwrap();
        std::fs::remove_file(&path).ok();
    }

    /// The writer thread's connection keeps the durability promise
    /// (`synchronous=FULL`; it is per connection), enforces foreign keys like
    /// the pool's, and has the writer's page cache.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_thread_writes_with_the_pools_guarantees() {
        let (db, path) = scratch_db().await;
        let rows = submit(
            &db,
            vec![(
                "SELECT CAST(s.synchronous AS TEXT) AS sync, CAST(f.foreign_keys AS TEXT) AS fk, \
                 CAST(c.cache_size AS TEXT) AS cache \
                 FROM pragma_synchronous() AS s, pragma_foreign_keys() AS f, pragma_cache_size() AS c"
                    .into(),
                vec![],
            )],
            vec![],
        )
        .await
        .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].text("sync"), Some("2"), "synchronous=FULL");
        assert_eq!(rows[0].text("fk"), Some("1"));
        let cache = WRITER_CACHE.rsplit(' ').next().unwrap();
        assert_eq!(rows[0].text("cache"), Some(cache));
        db.close().await.unwrap();
        std::fs::remove_file(&path).ok();
    }

    /// A submitted write that fails other than on a constraint fails its
    /// whole batch: no write of it is acknowledged or kept. The write
    /// transaction they waited for is not theirs and keeps its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broken_submitted_write_fails_its_batch() {
        let (db, path) = scratch_db().await;
        let first = write_tx(&db).await.unwrap();
        first.execute_raw(insert("a")).await.unwrap();
        let mut answers = Vec::new();
        for (i, sql) in ["INSERT INTO t (k) VALUES ('b')", "SELECT * FROM missing"]
            .into_iter()
            .enumerate()
        {
            let db = db.clone();
            answers.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20 * i as u64)).await;
                submit(&db, vec![(sql.to_string(), vec![])], vec![]).await
            }));
        }
        while db.writer.queue.lock().unwrap().jobs.len() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        first.commit().await.unwrap();
        for a in answers {
            assert!(a.await.unwrap().is_err(), "nothing may be acknowledged");
        }
        assert_eq!(keys(&db).await, ["a"]);
        // The writer goes on with a fresh batch.
        submit(
            &db,
            vec![("INSERT INTO t (k) VALUES ('c')".into(), vec![])],
            vec![],
        )
        .await
        .unwrap();
        assert_eq!(keys(&db).await, ["a", "c"]);
        db.close().await.unwrap();
        std::fs::remove_file(&path).ok();
    }

    /// A submitted part that is not exactly one statement cannot be told
    /// apart from the next: the write fails, and so does its batch, rather
    /// than any of it being sent twice or kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_submitted_part_must_be_one_statement() {
        let (db, path) = scratch_db().await;
        for parts in [
            vec![
                ("INSERT INTO t (k) VALUES ('x')".to_string(), vec![]),
                (" ".to_string(), vec![]),
            ],
            vec![(
                "INSERT INTO t (k) VALUES ('y'); INSERT INTO t (k) VALUES ('z')".to_string(),
                vec![],
            )],
        ] {
            let r = tokio::time::timeout(Duration::from_secs(10), submit(&db, parts, vec![]))
                .await
                .expect("answered, not sent again and again");
            assert!(r.is_err());
        }
        assert!(keys(&db).await.is_empty());
        db.close().await.unwrap();
        std::fs::remove_file(&path).ok();
    }

    async fn cache_size(tx: &WriteTx) -> i64 {
        let sql = stmt(DatabaseBackend::Sqlite, "PRAGMA cache_size", vec![]);
        let row = tx.query_one_raw(sql).await.unwrap().unwrap();
        row.try_get_by_index::<i64>(0).unwrap()
    }

    /// Batch after batch runs on one connection (its page cache stays warm):
    /// a temporary table, private to the connection that made it, is still
    /// there for the next batch. A failed batch's connection is not reused.
    /// The writer's connections have the writer's page cache size.
    #[tokio::test]
    async fn the_writer_keeps_its_connection_between_batches() {
        let (db, path) = scratch_db().await;
        let tx = write_tx(&db).await.unwrap();
        assert_eq!(cache_size(&tx).await, -2048, "the writer's own cache size");
        tx.execute_unprepared("CREATE TEMP TABLE mark (x)")
            .await
            .unwrap();
        tx.commit().await.unwrap();
        for i in 0..5 {
            let tx = write_tx(&db).await.unwrap();
            tx.execute_unprepared("INSERT INTO temp.mark VALUES (1)")
                .await
                .unwrap_or_else(|e| panic!("batch {i} ran on another connection: {e}"));
            tx.commit().await.unwrap();
        }
        let broken = write_tx(&db).await.unwrap();
        assert!(
            broken
                .execute_unprepared("SELECT * FROM missing")
                .await
                .is_err()
        );
        assert!(broken.commit().await.is_err());
        let after = write_tx(&db).await.unwrap();
        assert_eq!(
            cache_size(&after).await,
            -2048,
            "the next connection is the writer's too"
        );
        assert!(
            after
                .execute_unprepared("INSERT INTO temp.mark VALUES (1)")
                .await
                .is_err(),
            "a failed batch's connection is closed, not reused"
        );
        after.rollback().await.unwrap();
        db.close().await.unwrap();
        std::fs::remove_file(&path).ok();
    }

    /// A batch that failed takes no more statements and is reported failed
    /// to its writers, and so is one whose transaction SQLite ended.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broken_batch_keeps_and_acknowledges_nothing() {
        let (db, path) = scratch_db().await;
        let first = write_tx(&db).await.unwrap();
        first.execute_raw(insert("a")).await.unwrap();
        // Not a constraint error: the batch can no longer be trusted.
        assert!(
            first
                .execute_unprepared("SELECT * FROM missing")
                .await
                .is_err()
        );
        let more = first.execute_raw(insert("b")).await;
        assert!(more.is_err(), "a broken batch takes no more statements");
        assert!(first.commit().await.is_err(), "nothing may be acknowledged");
        assert!(keys(&db).await.is_empty());

        let ended = write_tx(&db).await.unwrap();
        ended.execute_raw(insert("c")).await.unwrap();
        // Ends SQLite's transaction behind the batch's back.
        ended.execute_unprepared("ROLLBACK").await.unwrap();
        assert!(ended.commit().await.is_err(), "nothing may be acknowledged");
        assert!(keys(&db).await.is_empty());

        let next = write_tx(&db).await.unwrap();
        next.execute_raw(insert("d")).await.unwrap();
        next.commit().await.unwrap();
        assert_eq!(keys(&db).await, ["d"]);
        db.close().await.unwrap();
        std::fs::remove_file(&path).ok();
    }

    /// Reader connections (the hot paths' reads) see each commit as soon as
    /// it is acknowledged, compare bound timestamps with the stored text, and
    /// cannot write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_see_every_acknowledged_write_and_cannot_write() {
        let (db, path) = scratch_db().await;
        assert!(db.readers.is_some(), "a file database gets readers");
        assert!(Readers::for_url("sqlite::memory:", 2).is_none());
        db.execute_unprepared("CREATE TABLE ts (at TEXT NOT NULL)")
            .await
            .unwrap();
        let read_keys = |db: Db| async move {
            db.read("SELECT k FROM t ORDER BY k", vec![], |r| r.text(0))
                .await
                .map(|v| v.into_iter().flatten().collect::<Vec<String>>())
        };
        for k in ["a", "b", "c"] {
            let tx = write_tx(&db).await.unwrap();
            tx.execute_raw(insert(k)).await.unwrap();
            let at = Ts::now();
            tx.execute_raw(Statement::from_sql_and_values(
                DatabaseBackend::Sqlite,
                "INSERT INTO ts (at) VALUES (?)",
                vec![at.into()],
            ))
            .await
            .unwrap();
            tx.commit().await.unwrap();
            let seen = read_keys(db.clone()).await.unwrap();
            assert_eq!(seen.last().map(String::as_str), Some(k));
            let same = db
                .read("SELECT at FROM ts WHERE at = ?", vec![at.into()], |r| {
                    r.ts(0)
                })
                .await
                .unwrap();
            assert_eq!(same, [Some(at)], "a bound time matches its stored text");
        }
        let write: Result<Vec<()>, DbErr> = db
            .read("INSERT INTO t (k) VALUES ('z')", vec![], |_| Ok(()))
            .await;
        assert!(write.is_err(), "readers are query_only");
        assert_eq!(read_keys(db.clone()).await.unwrap(), ["a", "b", "c"]);
        db.close().await.unwrap();
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn placeholders_become_numbered_on_postgres() {
        let s = stmt(
            DatabaseBackend::Postgres,
            "SELECT ? + ?",
            vec![1.into(), 2.into()],
        );
        assert_eq!(s.sql, "SELECT $1 + $2");
    }
}
