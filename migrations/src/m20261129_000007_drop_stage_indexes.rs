//! Drops `contacts_stage` and `deals_stage`, `(workspace_id, stage, id)`:
//! every query they served is served as well by `{t}_stage_created`,
//! `(workspace_id, stage, created_at, id)` (migration 000004), which leads
//! with the same columns. Each was one more b-tree every create and every
//! stage change wrote, at a random leaf (ids are random).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const TABLES: [&str; 2] = ["contacts", "deals"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in TABLES {
            m.drop_index(Index::drop().name(format!("{t}_stage")).table(t).to_owned())
                .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in TABLES {
            m.create_index(
                Index::create()
                    .name(format!("{t}_stage"))
                    .table(t)
                    .col("workspace_id")
                    .col("stage")
                    .col("id")
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
