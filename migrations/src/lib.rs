//! crmkit's database schema as an ordered list of sea-orm migrations.
//!
//! Every migration runs on SQLite and PostgreSQL alike: tables are described
//! with sea-query's schema builder, and the few backend-specific pieces (search
//! indexes) are written once per backend side by side in the same file. Files are
//! named by timestamp and never renamed: the name is the migration's identity in
//! the `seaql_migrations` table.
//!
//! Every table a workspace owns has `workspace_id` as the first column of its
//! primary key and of each of its indexes, so the schema can be distributed by
//! workspace without change.

pub use sea_orm_migration::prelude::*;

mod m20261128_000001_init;
pub mod m20261128_000002_search;
mod m20261128_000003_oauth;
mod m20261128_000004_filter_indexes;
pub mod m20261129_000005_search_keys;
pub mod m20261129_000006_ordered_search_keys;
mod m20261129_000007_drop_stage_indexes;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_init::Migration),
            Box::new(m20261128_000002_search::Migration),
            Box::new(m20261128_000003_oauth::Migration),
            Box::new(m20261128_000004_filter_indexes::Migration),
            Box::new(m20261129_000005_search_keys::Migration),
            Box::new(m20261129_000006_ordered_search_keys::Migration),
            Box::new(m20261129_000007_drop_stage_indexes::Migration),
        ]
    }
}
