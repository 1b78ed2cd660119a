//! Indexes for the commonest list query: one stage, newest first. With
//! `(workspace_id, stage, created_at, id)` the rows come out of the index
//! already in order, so a page reads about `limit` rows instead of sorting
//! every record of that stage.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in ["contacts", "deals"] {
            m.create_index(
                Index::create()
                    .name(format!("{t}_stage_created"))
                    .table(t)
                    .col("workspace_id")
                    .col("stage")
                    .col("created_at")
                    .col("id")
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in ["contacts", "deals"] {
            m.drop_index(
                Index::drop()
                    .name(format!("{t}_stage_created"))
                    .table(t)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
