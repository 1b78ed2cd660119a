//! The database: connecting (SQLite or PostgreSQL), migrating under a lock,
//! write transactions, and the one timestamp type every table uses.

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

/// Opens the pool with the settings the durability promises need.
pub async fn connect(settings: &Settings) -> Result<DatabaseConnection, DbErr> {
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
        });
    }
    sea_orm::Database::connect(opt).await
}

/// SQLite has one writer at a time. Writers of this process queue here, in
/// order and without sleeping, instead of in SQLite's busy handler, whose
/// back-off sleeps (up to 100 ms a try) make the slowest writes very slow.
static SQLITE_WRITER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A write transaction, holding this process's SQLite writer slot until it ends.
pub struct WriteTx {
    tx: DatabaseTransaction,
    _writer: Option<tokio::sync::MutexGuard<'static, ()>>,
}

impl WriteTx {
    pub async fn commit(self) -> Result<(), DbErr> {
        self.tx.commit().await
    }

    pub async fn rollback(self) -> Result<(), DbErr> {
        self.tx.rollback().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = DatabaseTransaction;
    fn deref(&self) -> &DatabaseTransaction {
        &self.tx
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for WriteTx {
    fn get_database_backend(&self) -> DatabaseBackend {
        self.tx.get_database_backend()
    }
    async fn execute_raw(&self, stmt: Statement) -> Result<sea_orm::ExecResult, DbErr> {
        self.tx.execute_raw(stmt).await
    }
    async fn execute_unprepared(&self, sql: &str) -> Result<sea_orm::ExecResult, DbErr> {
        self.tx.execute_unprepared(sql).await
    }
    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<sea_orm::QueryResult>, DbErr> {
        self.tx.query_one_raw(stmt).await
    }
    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
        self.tx.query_all_raw(stmt).await
    }
    fn support_returning(&self) -> bool {
        self.tx.support_returning()
    }
}

/// Starts a write transaction. On SQLite it is `BEGIN IMMEDIATE`, so the write
/// lock is taken up front (no "database is locked" when a reader would have to
/// upgrade), after the writer slot of this process.
pub async fn write_tx(db: &DatabaseConnection) -> Result<WriteTx, DbErr> {
    let writer = match db.get_database_backend() {
        DatabaseBackend::Sqlite => Some(SQLITE_WRITER.lock().await),
        _ => None,
    };
    let tx = db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?;
    Ok(WriteTx {
        tx,
        _writer: writer,
    })
}

/// Applies pending migrations. On PostgreSQL an advisory lock held for the
/// transaction makes processes that start together migrate exactly once; on
/// SQLite the immediate transaction is the lock.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
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
