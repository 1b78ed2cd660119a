//! Reads of the hot paths (a record by id, list and search pages) on SQLite,
//! run on the request's own thread through rusqlite instead of through
//! sqlx's per-connection driver thread.
//!
//! sqlx hands every SQLite statement to a thread of its own and every row
//! back through a channel: on a two-core machine those thread hops cost
//! several times what SQLite itself spends on a primary-key read (profiles
//! of `GET /contacts/{id}`). Here a read takes an idle connection, runs one
//! cached prepared statement and maps each row in place. Both drivers link
//! the one SQLite library of the process, so these connections see every
//! commit of the writer (WAL) exactly as the pool's connections do.
//!
//! Reader connections are opened `query_only`: nothing can write through
//! them. A read is one statement in autocommit mode, a consistent snapshot of
//! its own, as on the pool. Reads are short by construction (index lookups,
//! a page of at most 200 rows); they run on the request's thread, which SQLite
//! never holds for longer than that statement. PostgreSQL, and SQLite in
//! memory (one private database per connection), read through the pool.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::types::{Value as Lite, ValueRef};
use rusqlite::{Connection, OpenFlags};
use sea_orm::sqlx::sqlite::SqliteConnectOptions;
use sea_orm::{DbErr, QueryResult, RuntimeErr, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::db::Ts;

/// The cells of one result row, whichever driver produced it.
pub trait Cells {
    fn int(&self, i: usize) -> Result<Option<i64>, DbErr>;
    fn text(&self, i: usize) -> Result<Option<String>, DbErr>;
    fn ts(&self, i: usize) -> Result<Option<Ts>, DbErr>;
    fn json(&self, i: usize) -> Result<Option<serde_json::Value>, DbErr>;
}

impl Cells for QueryResult {
    fn int(&self, i: usize) -> Result<Option<i64>, DbErr> {
        self.try_get_by_index(i)
    }
    fn text(&self, i: usize) -> Result<Option<String>, DbErr> {
        self.try_get_by_index(i)
    }
    fn ts(&self, i: usize) -> Result<Option<Ts>, DbErr> {
        self.try_get_by_index(i)
    }
    fn json(&self, i: usize) -> Result<Option<serde_json::Value>, DbErr> {
        self.try_get_by_index(i)
    }
}

/// A database that is busy or cannot be opened is unavailable (503 with
/// Retry-After, as when the pool is exhausted); anything else is a fault.
fn lite_err(e: rusqlite::Error) -> DbErr {
    use rusqlite::ErrorCode::{CannotOpen, DatabaseBusy, DatabaseLocked};
    let text = format!("sqlite read: {e}");
    match e.sqlite_error_code() {
        Some(DatabaseBusy | DatabaseLocked | CannotOpen) => DbErr::Conn(RuntimeErr::Internal(text)),
        _ => DbErr::Custom(text),
    }
}

fn cell_err(i: usize, what: &str) -> DbErr {
    DbErr::Type(format!("column {i}: {what}"))
}

impl Cells for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> Result<Option<i64>, DbErr> {
        self.get(i).map_err(lite_err)
    }
    fn text(&self, i: usize) -> Result<Option<String>, DbErr> {
        self.get(i).map_err(lite_err)
    }
    /// Timestamps are RFC 3339 text, as the writer's driver stores them.
    fn ts(&self, i: usize) -> Result<Option<Ts>, DbErr> {
        match self.get_ref(i).map_err(lite_err)? {
            ValueRef::Null => Ok(None),
            ValueRef::Text(t) => parse_stored_time(t)
                .map(|t| Some(Ts::new(t)))
                .ok_or_else(|| cell_err(i, "not an RFC 3339 timestamp")),
            _ => Err(cell_err(i, "a timestamp stored as other than text")),
        }
    }
    fn json(&self, i: usize) -> Result<Option<serde_json::Value>, DbErr> {
        match self.get_ref(i).map_err(lite_err)? {
            ValueRef::Null => Ok(None),
            ValueRef::Text(t) | ValueRef::Blob(t) => serde_json::from_slice(t)
                .map(Some)
                .map_err(|e| cell_err(i, &format!("not JSON: {e}"))),
            _ => Err(cell_err(i, "JSON stored as a number")),
        }
    }
}

/// A stored timestamp. Every one the server writes is UTC with nine fraction
/// digits (`2026-11-28T10:00:00.000000001Z`, see `Ts`), read digit by digit
/// here (two per record on every page); anything else goes through the full
/// RFC 3339 parser.
fn parse_stored_time(b: &[u8]) -> Option<OffsetDateTime> {
    fn num(b: &[u8]) -> Option<u32> {
        b.iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    }
    let fixed = b.len() == 30
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[29] == b'Z';
    if fixed {
        let month = time::Month::try_from(num(&b[5..7])? as u8).ok()?;
        let date =
            time::Date::from_calendar_date(num(&b[0..4])? as i32, month, num(&b[8..10])? as u8)
                .ok()?;
        let t = time::Time::from_hms_nano(
            num(&b[11..13])? as u8,
            num(&b[14..16])? as u8,
            num(&b[17..19])? as u8,
            num(&b[20..29])?,
        )
        .ok()?;
        return Some(date.with_time(t).assume_utc());
    }
    OffsetDateTime::parse(std::str::from_utf8(b).ok()?, &Rfc3339).ok()
}

/// Idle reader connections to one SQLite file.
pub struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    keep: usize,
}

impl Readers {
    /// Readers for the database at `url`, or `None` where connections cannot
    /// share it (in-memory databases).
    pub fn for_url(url: &str, keep: usize) -> Option<Readers> {
        let opts = SqliteConnectOptions::from_str(url).ok()?;
        let path = opts.get_filename();
        let name = path.to_string_lossy();
        if url.contains(":memory:") || url.contains("mode=memory") || name.starts_with("file:") {
            return None;
        }
        Some(Readers {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
            keep,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(path: &Path) -> Result<Connection, DbErr> {
        // In WAL mode a reader waits only while a checkpoint resets the log
        // or after a crash, for a few milliseconds at most.
        open_file(
            path,
            Duration::from_secs(2),
            "PRAGMA query_only = 1; PRAGMA cache_size = -16384; PRAGMA temp_store = memory;",
        )
        .map_err(lite_err)
    }

    /// Runs one read-only statement and maps each row.
    pub fn rows<T, E: From<DbErr>>(
        &self,
        sql: &str,
        values: &[Value],
        mut map: impl FnMut(&dyn Cells) -> Result<T, E>,
    ) -> Result<Vec<T>, E> {
        let taken = self.idle.lock().map(|mut v| v.pop()).unwrap_or(None);
        let conn = match taken {
            Some(c) => c,
            None => Readers::open(&self.path)?,
        };
        let out = run(&conn, sql, values, &mut map);
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.keep
        {
            idle.push(conn);
        }
        out
    }
}

/// A connection to the database file for one thread at a time (SQLite's
/// own mutexes off): it waits up to `busy` for a lock, runs `pragmas` first,
/// and keeps 64 prepared statements (list queries differ by filters and
/// sort; the common shapes stay). For readers and the writer thread.
pub(crate) fn open_file(
    path: &Path,
    busy: Duration,
    pragmas: &str,
) -> Result<Connection, rusqlite::Error> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(busy)?;
    c.execute_batch(pragmas)?;
    c.set_prepared_statement_cache_capacity(64);
    Ok(c)
}

fn run<T, E: From<DbErr>>(
    conn: &Connection,
    sql: &str,
    values: &[Value],
    map: &mut impl FnMut(&dyn Cells) -> Result<T, E>,
) -> Result<Vec<T>, E> {
    let mut st = conn.prepare_cached(sql).map_err(lite_err)?;
    let params = values.iter().map(lite).collect::<Result<Vec<_>, _>>()?;
    let mut rows = st
        .query(rusqlite::params_from_iter(params))
        .map_err(lite_err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(lite_err)? {
        out.push(map(row)?);
    }
    Ok(out)
}

/// A statement value as SQLite stores it through the pool's driver (so that
/// comparisons with stored text, timestamps above all, hold).
pub(crate) fn lite(v: &Value) -> Result<Lite, DbErr> {
    fn or_null<T>(v: &Option<T>, f: impl Fn(&T) -> Lite) -> Lite {
        v.as_ref().map(f).unwrap_or(Lite::Null)
    }
    Ok(match v {
        Value::Bool(b) => or_null(b, |b| Lite::Integer(i64::from(*b))),
        Value::TinyInt(n) => or_null(n, |n| Lite::Integer(i64::from(*n))),
        Value::SmallInt(n) => or_null(n, |n| Lite::Integer(i64::from(*n))),
        Value::Int(n) => or_null(n, |n| Lite::Integer(i64::from(*n))),
        Value::BigInt(n) => or_null(n, |n| Lite::Integer(*n)),
        Value::TinyUnsigned(n) => or_null(n, |n| Lite::Integer(i64::from(*n))),
        Value::SmallUnsigned(n) => or_null(n, |n| Lite::Integer(i64::from(*n))),
        Value::Unsigned(n) => or_null(n, |n| Lite::Integer(i64::from(*n))),
        Value::Double(n) => or_null(n, |n| Lite::Real(*n)),
        Value::Float(n) => or_null(n, |n| Lite::Real(f64::from(*n))),
        Value::String(s) => or_null(s, |s| Lite::Text(s.clone())),
        Value::Bytes(b) => or_null(b, |b| Lite::Blob(b.clone())),
        Value::Json(j) => or_null(j, |j| Lite::Text(j.to_string())),
        Value::TimeDateTimeWithTimeZone(t) => match t {
            Some(t) => Lite::Text(
                t.format(&Rfc3339)
                    .map_err(|e| DbErr::Type(format!("timestamp: {e}")))?,
            ),
            None => Lite::Null,
        },
        other => {
            return Err(DbErr::Type(format!(
                "no SQLite reader binding for {other:?}"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The digit-by-digit path reads what the writer's driver stores,
        /// exactly as the full parser does.
        #[test]
        fn stored_times_parse_like_the_reference(secs in 0i64..253_402_300_000i64, nanos in 0u32..1_000_000_000) {
            let t = OffsetDateTime::from_unix_timestamp(secs).unwrap().replace_nanosecond(nanos).unwrap();
            let text = t.format(&Rfc3339).unwrap();
            let want = OffsetDateTime::parse(&text, &Rfc3339).ok();
            proptest::prop_assert_eq!(parse_stored_time(text.as_bytes()), want);
        }
    }

    #[test]
    fn a_busy_database_is_unavailable_not_a_fault() {
        let busy = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(5), None);
        assert!(matches!(lite_err(busy), DbErr::Conn(_)));
        let bad = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(1), None);
        assert!(matches!(lite_err(bad), DbErr::Custom(_)));
    }

    #[test]
    fn malformed_stored_times_are_errors_not_guesses() {
        for bad in [
            "2026-13-01T00:00:00.000000001Z",
            "2026-02-30T00:00:00.000000001Z",
            "2026-01-01T24:00:00.000000001Z",
            "2026-01-01T00:00:00.00000000aZ",
            "",
        ] {
            assert_eq!(parse_stored_time(bad.as_bytes()), None, "{bad}");
        }
        let offset = "2026-01-01T01:00:00.5+01:00";
        assert_eq!(
            parse_stored_time(offset.as_bytes()),
            Some(time::macros::datetime!(2026-01-01 00:00:00.5 UTC))
        );
    }
}
