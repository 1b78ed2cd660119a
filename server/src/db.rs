//! The database: connecting (SQLite or PostgreSQL), migrating under a lock,
//! write transactions, and the one timestamp type every table uses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crmkit_migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, DatabaseBackend, DatabaseConnection, DatabaseTransaction,
    DbErr, DeriveValueType, SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
    Value,
};
use time::OffsetDateTime;

use crate::config::Settings;

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
/// Derefs to the pool for reads and one-statement writes.
#[derive(Clone)]
pub struct Db {
    conn: DatabaseConnection,
    writer: Arc<Writer>,
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
        }
    }

    pub async fn close(self) -> Result<(), DbErr> {
        self.conn.close().await
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for Db {
    fn get_database_backend(&self) -> DatabaseBackend {
        self.conn.get_database_backend()
    }
    async fn execute_raw(&self, stmt: Statement) -> Result<sea_orm::ExecResult, DbErr> {
        self.conn.execute_raw(stmt).await
    }
    async fn execute_unprepared(&self, sql: &str) -> Result<sea_orm::ExecResult, DbErr> {
        self.conn.execute_unprepared(sql).await
    }
    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<sea_orm::QueryResult>, DbErr> {
        self.conn.query_one_raw(stmt).await
    }
    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
        self.conn.query_all_raw(stmt).await
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
        });
    }
    Ok(Db::new(sea_orm::Database::connect(opt).await?))
}

/// SQLite has one writer at a time, and with `synchronous=FULL` every commit
/// is an fsync. The writer of this process therefore does group commit:
///
/// - writers queue on `slot` in order, without sleeping (SQLite's busy
///   handler backs off up to 100 ms a try, which made the slowest writes slow);
/// - the first opens the batch with `BEGIN IMMEDIATE`; each writer runs in its
///   own `SAVEPOINT` inside it, so its rollback or error undoes only its work;
/// - a writer that finishes while nobody waits commits the batch at once
///   (a lone writer commits as before); when others wait, it hands the commit
///   to a committer queued behind them, and every writer of the batch learns
///   the outcome of the one `COMMIT` (one fsync) before it answers.
///
/// Nothing is acknowledged before it is durable: `WriteTx::commit` returns Ok
/// only after the batch's COMMIT succeeded. A database error that may have
/// ended the transaction inside SQLite poisons the batch, which is then rolled
/// back and reported as failed to all of its writers.
#[derive(Default)]
struct Writer {
    slot: Arc<tokio::sync::Mutex<Option<Batch>>>,
    /// Writers (and committers) queued on `slot`.
    waiting: AtomicUsize,
    next_id: AtomicU64,
}

struct Batch {
    outer: DatabaseTransaction,
    id: u64,
    poisoned: AtomicBool,
    committer_queued: bool,
    done: tokio::sync::watch::Sender<Option<Result<(), String>>>,
}

type Slot = tokio::sync::OwnedMutexGuard<Option<Batch>>;

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

/// Commits (or, when poisoned, rolls back) the open batch and tells its writers.
async fn finish_batch(slot: &mut Slot) {
    let Some(batch) = slot.take() else { return };
    // The batch's own savepoint is gone if SQLite ended the transaction on
    // an error (disk full, I/O): then nothing of the batch may be reported kept.
    let intact = !batch.poisoned.load(Ordering::SeqCst)
        && batch
            .outer
            .execute_unprepared("RELEASE crmkit_batch")
            .await
            .is_ok();
    let result = if !intact {
        batch.outer.rollback().await.ok();
        Err("an earlier write in the same group commit failed; nothing of it was kept".to_string())
    } else {
        batch.outer.commit().await.map_err(|e| e.to_string())
    };
    batch.done.send_replace(Some(result));
}

/// After a writer leaves the batch: commit now if nobody waits, else make sure
/// one committer is queued behind the waiting writers. The COMMIT runs in a
/// task of its own, so a request cancelled by its client cannot cut it short.
fn leave_batch(writer: &Arc<Writer>, mut slot: Slot) {
    let Some(batch) = slot.as_mut() else { return };
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
        if slot.as_ref().is_some_and(|b| b.id == id) {
            finish_batch(&mut slot).await;
        }
    });
}

/// Marks the batch failed, saying why in the log.
fn poison(slot: &Slot, why: &dyn std::fmt::Display) {
    if let Some(b) = slot.as_ref() {
        tracing::warn!(batch = b.id, "write batch will roll back: {why}");
        b.poisoned.store(true, Ordering::SeqCst);
    }
}

/// A write transaction: on SQLite a savepoint in the writer's open batch
/// (see [`Writer`]), holding the writer slot until it ends; on PostgreSQL a
/// plain transaction.
pub struct WriteTx {
    tx: Option<DatabaseTransaction>,
    group: Option<(Arc<Writer>, Slot)>,
}

impl WriteTx {
    fn tx(&self) -> &DatabaseTransaction {
        self.tx
            .as_ref()
            .expect("transaction is open until commit or rollback")
    }

    /// Makes the writes durable; on SQLite returns once the batch holding
    /// them is committed.
    pub async fn commit(mut self) -> Result<(), DbErr> {
        let tx = self.tx.take().expect("open");
        let mut done = match &self.group {
            None => return tx.commit().await,
            Some((_, slot)) => match slot.as_ref() {
                Some(batch) => batch.done.subscribe(),
                None => return Err(DbErr::Custom("the write batch was lost".into())),
            },
        };
        // If this await is cancelled, `Drop` still leaves the batch.
        let released = tx.commit().await;
        let (writer, slot) = self.group.take().expect("checked above");
        if let Err(e) = &released {
            poison(&slot, e);
        }
        leave_batch(&writer, slot);
        released?;
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

    pub async fn rollback(mut self) -> Result<(), DbErr> {
        let tx = self.tx.take().expect("open");
        let result = tx.rollback().await;
        if let Some((writer, slot)) = self.group.take() {
            if let Err(e) = &result {
                poison(&slot, e);
            }
            leave_batch(&writer, slot);
        }
        result
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
    /// request): the savepoint's own drop queues its rollback on the
    /// connection, and the batch is left for the next writer or committed.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some((writer, slot)) = self.group.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                leave_batch(&writer, slot);
            } else {
                poison(
                    &slot,
                    &"a write transaction was dropped outside the runtime",
                );
            }
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = DatabaseTransaction;
    fn deref(&self) -> &DatabaseTransaction {
        self.tx()
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for WriteTx {
    fn get_database_backend(&self) -> DatabaseBackend {
        self.tx().get_database_backend()
    }
    async fn execute_raw(&self, stmt: Statement) -> Result<sea_orm::ExecResult, DbErr> {
        self.check(self.tx().execute_raw(stmt).await)
    }
    async fn execute_unprepared(&self, sql: &str) -> Result<sea_orm::ExecResult, DbErr> {
        self.check(self.tx().execute_unprepared(sql).await)
    }
    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<sea_orm::QueryResult>, DbErr> {
        self.check(self.tx().query_one_raw(stmt).await)
    }
    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
        self.check(self.tx().query_all_raw(stmt).await)
    }
    fn support_returning(&self) -> bool {
        self.tx().support_returning()
    }
}

/// Starts a write transaction. On SQLite: waits for the writer slot, opens the
/// batch with `BEGIN IMMEDIATE` if none is open (the write lock taken up front,
/// so no "database is locked" when a reader would upgrade), and starts this
/// writer's savepoint in it.
pub async fn write_tx(db: &Db) -> Result<WriteTx, DbErr> {
    if db.get_database_backend() != DatabaseBackend::Sqlite {
        let tx = db.conn.begin().await?;
        return Ok(WriteTx {
            tx: Some(tx),
            group: None,
        });
    }
    let writer = db.writer.clone();
    let mut slot = writer.lock().await;
    if slot.is_none() {
        let outer = db
            .conn
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await?;
        outer.execute_unprepared("SAVEPOINT crmkit_batch").await?;
        *slot = Some(Batch {
            outer,
            id: writer.next_id.fetch_add(1, Ordering::SeqCst),
            poisoned: AtomicBool::new(false),
            committer_queued: false,
            done: tokio::sync::watch::Sender::new(None),
        });
    }
    // From here a cancelled request still leaves the batch (`Drop`).
    let mut wtx = WriteTx {
        tx: None,
        group: Some((writer, slot)),
    };
    let nested = match wtx.group.as_ref().and_then(|(_, slot)| slot.as_ref()) {
        Some(batch) => batch.outer.begin().await,
        None => Err(DbErr::Custom("the write batch was lost".into())),
    };
    match nested {
        Ok(tx) => {
            wtx.tx = Some(tx);
            Ok(wtx)
        }
        Err(e) => {
            if let Some((_, slot)) = &wtx.group {
                poison(slot, &e);
            }
            Err(e)
        }
    }
}

/// Applies pending migrations. On PostgreSQL an advisory lock held for the
/// transaction makes processes that start together migrate exactly once; on
/// SQLite the immediate transaction is the lock.
pub async fn migrate(db: &Db) -> Result<(), DbErr> {
    let tx = write_tx(db).await?;
    if tx.get_database_backend() == DatabaseBackend::Postgres {
        tx.execute_unprepared("SELECT pg_advisory_xact_lock(7346281190021)")
            .await?;
    }
    Migrator::up(&*tx, None).await?;
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
