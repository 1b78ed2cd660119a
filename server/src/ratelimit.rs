//! Fixed-window rate limits kept in the database, so every `serve` process
//! shares them. One atomic upsert per hit; no read-then-write.

use std::time::Duration;

use sea_orm::ConnectionTrait;

use crate::db::{Db, stmt};
use crate::error::AppError;

/// Counts one hit on `key`; `Err(rate_limited)` once more than `limit` hits fall
/// in the current window.
pub async fn hit(
    db: &Db,
    key: &str,
    limit: i64,
    window: Duration,
    what: &str,
) -> Result<(), AppError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let win = window.as_secs() as i64;
    let stale = now - win;
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "INSERT INTO rate_limits (key, window_start, count) VALUES (?, ?, 1) \
             ON CONFLICT (key) DO UPDATE SET \
               count = CASE WHEN rate_limits.window_start <= ? THEN 1 ELSE rate_limits.count + 1 END, \
               window_start = CASE WHEN rate_limits.window_start <= ? THEN ? ELSE rate_limits.window_start END \
             RETURNING count, window_start",
            vec![key.into(), now.into(), stale.into(), stale.into(), now.into()],
        ))
        .await?
        .ok_or_else(|| AppError::internal("rate limit upsert returned no row"))?;
    let count: i32 = row.try_get("", "count")?;
    let start: i64 = row.try_get("", "window_start")?;
    if i64::from(count) > limit {
        let retry = (start + win - now).max(1) as u64;
        return Err(AppError::rate_limited(what, retry));
    }
    Ok(())
}

/// Drops counters whose window has passed.
pub async fn sweep(db: &Db, window: Duration) -> Result<(), AppError> {
    let stale = time::OffsetDateTime::now_utc().unix_timestamp() - window.as_secs() as i64;
    db.execute_raw(stmt(
        db.get_database_backend(),
        "DELETE FROM rate_limits WHERE window_start <= ?",
        vec![stale.into()],
    ))
    .await?;
    Ok(())
}
