//! Search keys in page order (SQLite).
//!
//! A record's `search_key` (the rowid of its FTS5 entry) becomes
//! `created_at` in microseconds, shifted left 8 bits, with the top 8 bits of
//! the id's 60 below: the keys sort like `(created_at, id)`, the default list
//! order. A search sorted by `created_at` then reads its hits from the FTS5
//! index newest (or oldest) first with `ORDER BY rowid` and stops after one
//! page, whatever the size of the table, instead of fetching and sorting
//! every hit. The key is unique per table (the FTS5 rowid space is the whole
//! table's), so its index is `UNIQUE (search_key)`; a create that would
//! collide (same microsecond, same 8 bits) takes another id.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend, Statement};

use crate::m20261129_000005_search_keys::ID_ALPHABET;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The searched text of a row of `table`, as SQL (the fields the server's
/// search covers, lowercased, tags as words).
pub fn sqlite_body_sql(table: &str) -> &'static str {
    match table {
        "contacts" => {
            "lower(concat_ws(' ', name, email, title, phone, nullif(trim(replace(tags, ',', ' ')), '')))"
        }
        "companies" => "lower(concat_ws(' ', name, domain))",
        _ => "lower(concat_ws(' ', title))",
    }
}

/// A record's search key from its creation time (µs since the epoch) and id.
pub fn ordered_key(created_micros: i64, id: &str) -> i64 {
    let body = id.split_once('_').map(|(_, b)| b).unwrap_or(id);
    let sym = |i: usize| {
        body.as_bytes()
            .get(i)
            .and_then(|b| ID_ALPHABET.bytes().position(|c| c == *b))
            .unwrap_or(0) as i64
    };
    let top8 = (sym(0) << 3) | (sym(1) >> 2);
    (created_micros << 8) | top8
}

/// The same key computed by SQLite from `created_at` (stored as RFC3339 text
/// with a nine-digit fraction) and `id`.
pub fn sqlite_ordered_key_sql() -> String {
    let sym =
        |i: usize| format!("(instr('{ID_ALPHABET}', substr(id, instr(id, '_') + {i}, 1)) - 1)");
    format!(
        "(((unixepoch(substr(created_at, 1, 19)) * 1000000 + CAST(substr(created_at, 21, 6) AS INTEGER)) << 8) | ({} << 3) | ({} >> 2))",
        sym(1),
        sym(2)
    )
}

/// Recomputes every search key of `table` and rebuilds its FTS5 index from
/// the rows. Keys that collide (rows created in the same microsecond with the
/// same top id bits, possible only in data from elsewhere) move to the next
/// free key. Used by this migration and by `crmkit migrate-data`.
pub async fn rebuild_sqlite_search<C: ConnectionTrait>(db: &C, table: &str) -> Result<(), DbErr> {
    let t = table;
    db.execute_unprepared(&format!("DROP INDEX IF EXISTS {t}_search_key"))
        .await?;
    db.execute_unprepared(&format!(
        "UPDATE {t} SET search_key = {}",
        sqlite_ordered_key_sql()
    ))
    .await?;
    loop {
        let dup = db
            .query_one_raw(Statement::from_string(
                DatabaseBackend::Sqlite,
                format!(
                    "SELECT a.rowid AS r, a.search_key AS k FROM {t} a JOIN {t} b ON b.search_key = a.search_key AND b.rowid < a.rowid LIMIT 1"
                ),
            ))
            .await?;
        let Some(dup) = dup else { break };
        let rowid: i64 = dup.try_get("", "r")?;
        let mut key: i64 = dup.try_get("", "k")?;
        loop {
            key += 1;
            let taken = db
                .query_one_raw(Statement::from_sql_and_values(
                    DatabaseBackend::Sqlite,
                    format!("SELECT 1 AS one FROM {t} WHERE search_key = ?"),
                    [key.into()],
                ))
                .await?;
            if taken.is_none() {
                break;
            }
        }
        db.execute_raw(Statement::from_sql_and_values(
            DatabaseBackend::Sqlite,
            format!("UPDATE {t} SET search_key = ? WHERE rowid = ?"),
            [key.into(), rowid.into()],
        ))
        .await?;
    }
    db.execute_unprepared(&format!(
        "CREATE UNIQUE INDEX {t}_search_key ON {t} (search_key)"
    ))
    .await?;
    db.execute_unprepared(&format!("DROP TABLE IF EXISTS {t}_fts"))
        .await?;
    db.execute_unprepared(&format!(
        "CREATE VIRTUAL TABLE {t}_fts USING fts5(body, content = '', contentless_delete = 1, tokenize = 'trigram')"
    ))
    .await?;
    db.execute_unprepared(&format!(
        "INSERT INTO {t}_fts (rowid, body) SELECT search_key, {} FROM {t}",
        sqlite_body_sql(t)
    ))
    .await?;
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() != DatabaseBackend::Sqlite {
            return Ok(());
        }
        for t in ["contacts", "companies", "deals"] {
            rebuild_sqlite_search(m.get_connection(), t).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() != DatabaseBackend::Sqlite {
            return Ok(());
        }
        let db = m.get_connection();
        for t in ["contacts", "companies", "deals"] {
            db.execute_unprepared(&format!("DROP INDEX {t}_search_key"))
                .await?;
            db.execute_unprepared(&format!(
                "UPDATE {t} SET search_key = {}",
                crate::m20261129_000005_search_keys::sqlite_search_key_sql()
            ))
            .await?;
            db.execute_unprepared(&format!(
                "CREATE INDEX {t}_search_key ON {t} (workspace_id, search_key)"
            ))
            .await?;
            db.execute_unprepared(&format!("DELETE FROM {t}_fts"))
                .await?;
            db.execute_unprepared(&format!(
                "INSERT INTO {t}_fts (rowid, body) SELECT search_key, {} FROM {t}",
                sqlite_body_sql(t)
            ))
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_like_created_at_then_id() {
        let a = ordered_key(1_000_000, "c_000000000000");
        let b = ordered_key(1_000_000, "c_100000000000");
        let c = ordered_key(1_000_001, "c_000000000000");
        assert!(a < b && b < c);
        assert_eq!(ordered_key(1, "c_zz0000000000"), (1 << 8) | 255);
    }
}
