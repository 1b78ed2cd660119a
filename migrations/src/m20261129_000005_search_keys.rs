//! SQLite search driven by its hits.
//!
//! The FTS5 tables become contentless (`content=''`, `contentless_delete=1`):
//! a match yields rowids straight from the index, with no lookup into a
//! content table per hit. The rowid stays the id's 60 random bits, now also
//! kept on the record as `search_key` with an index `(workspace_id,
//! search_key)`, so a search can go from each hit to its row with one index
//! seek instead of walking the sort index and testing every row it passes.
//! PostgreSQL is unchanged (its pg_trgm index is on an expression of the row).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The symbols of a record id after its `x_` prefix, 5 bits each.
pub const ID_ALPHABET: &str = "0123456789abcdefghjkmnpqrstvwxyz";

/// A record's search key: the 60 bits of its id (12 symbols after `_`).
pub fn search_key(id: &str) -> i64 {
    let body = id.split_once('_').map(|(_, b)| b).unwrap_or(id);
    body.bytes().fold(0i64, |acc, b| {
        let v = ID_ALPHABET.bytes().position(|c| c == b).unwrap_or(0) as i64;
        (acc << 5) | v
    })
}

/// The same key computed by SQLite from the `id` column.
pub fn sqlite_search_key_sql() -> String {
    (0..12)
        .map(|i| {
            format!(
                "((instr('{ID_ALPHABET}', substr(id, instr(id, '_') + {}, 1)) - 1) << {})",
                i + 1,
                5 * (11 - i)
            )
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

const TABLES: [&str; 3] = ["contacts", "companies", "deals"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() != DatabaseBackend::Sqlite {
            return Ok(());
        }
        let db = m.get_connection();
        for t in TABLES {
            db.execute_unprepared(&format!("ALTER TABLE {t} ADD COLUMN search_key INTEGER"))
                .await?;
            db.execute_unprepared(&format!(
                "UPDATE {t} SET search_key = {}",
                sqlite_search_key_sql()
            ))
            .await?;
            db.execute_unprepared(&format!(
                "CREATE INDEX {t}_search_key ON {t} (workspace_id, search_key)"
            ))
            .await?;
            db.execute_unprepared(&format!("ALTER TABLE {t}_fts RENAME TO {t}_fts_old"))
                .await?;
            db.execute_unprepared(&format!(
                "CREATE VIRTUAL TABLE {t}_fts USING fts5(body, content = '', contentless_delete = 1, tokenize = 'trigram')"
            ))
            .await?;
            db.execute_unprepared(&format!(
                "INSERT INTO {t}_fts (rowid, body) SELECT rowid, body FROM {t}_fts_old"
            ))
            .await?;
            db.execute_unprepared(&format!("DROP TABLE {t}_fts_old"))
                .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() != DatabaseBackend::Sqlite {
            return Ok(());
        }
        let db = m.get_connection();
        for t in TABLES {
            // The contentless index cannot give its text back: rebuild it from the rows.
            db.execute_unprepared(&format!("DROP TABLE {t}_fts"))
                .await?;
            db.execute_unprepared(&format!(
                "CREATE VIRTUAL TABLE {t}_fts USING fts5(workspace_id UNINDEXED, id UNINDEXED, body, tokenize = 'trigram')"
            ))
            .await?;
            db.execute_unprepared(&format!("DROP INDEX {t}_search_key"))
                .await?;
            db.execute_unprepared(&format!("ALTER TABLE {t} DROP COLUMN search_key"))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_ids_sixty_bits() {
        assert_eq!(search_key("c_000000000001"), 1);
        assert_eq!(search_key("c_z00000000000"), 31 << 55);
        assert_eq!(search_key("co_zzzzzzzzzzzz"), (1i64 << 60) - 1);
    }
}
