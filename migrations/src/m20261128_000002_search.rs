//! Indexed substring search for `search=`.
//!
//! SQLite: one FTS5 table per record kind with the trigram tokenizer (substring
//! match, case-insensitive), rowid = the record id's 60 random bits, written by
//! the server in the same transaction as the row.
//! PostgreSQL: pg_trgm GIN indexes on the same lowercase text, computed from the
//! row, so nothing needs to be kept in sync.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The searched text per table; the server's PostgreSQL search uses the same
/// expressions (`records::search::PG_EXPR`), which is what lets the index serve it.
pub const PG_SEARCH: &[(&str, &str)] = &[
    (
        "contacts",
        "lower(coalesce(name, '') || ' ' || coalesce(email, '') || ' ' || coalesce(title, '') || ' ' || coalesce(phone, '') || ' ' || coalesce(tags, ''))",
    ),
    (
        "companies",
        "lower(coalesce(name, '') || ' ' || coalesce(domain, ''))",
    ),
    ("deals", "lower(coalesce(title, ''))"),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        match m.get_database_backend() {
            DatabaseBackend::Sqlite => {
                for t in ["contacts", "companies", "deals"] {
                    db.execute_unprepared(&format!(
                        "CREATE VIRTUAL TABLE {t}_fts USING fts5(workspace_id UNINDEXED, id UNINDEXED, body, tokenize = 'trigram')"
                    ))
                    .await?;
                }
            }
            DatabaseBackend::Postgres => {
                db.execute_unprepared("CREATE EXTENSION IF NOT EXISTS pg_trgm")
                    .await?;
                for (t, expr) in PG_SEARCH {
                    db.execute_unprepared(&format!(
                        "CREATE INDEX {t}_search ON {t} USING gin (({expr}) gin_trgm_ops)"
                    ))
                    .await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        for t in ["contacts", "companies", "deals"] {
            match m.get_database_backend() {
                DatabaseBackend::Sqlite => {
                    db.execute_unprepared(&format!("DROP TABLE {t}_fts"))
                        .await?
                }
                _ => {
                    db.execute_unprepared(&format!("DROP INDEX IF EXISTS {t}_search"))
                        .await?
                }
            };
        }
        Ok(())
    }
}
