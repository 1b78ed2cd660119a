//! OAuth 2.1 state for the MCP connector: registered clients, sign-in flows in
//! progress, authorization codes and refresh tokens. All of it lives here so
//! any `serve` process can continue a flow another one started.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("oauth_clients")
                .col(string("client_id").primary_key())
                .col(string("client_name"))
                .col(text("redirect_uris"))
                .col(timestamp_with_time_zone("created_at"))
                .col(timestamp_with_time_zone_null("last_used_at"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("oauth_flows")
                .col(string("id").primary_key())
                .col(string("csrf_hash"))
                .col(string("client_id"))
                .col(text("redirect_uri"))
                .col(text_null("state"))
                .col(string("code_challenge"))
                .col(text_null("resource"))
                .col(string_null("email"))
                .col(string_null("user_id"))
                .col(timestamp_with_time_zone("expires_at"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("oauth_codes")
                .col(string("code_hash").primary_key())
                .col(string("client_id"))
                .col(text("redirect_uri"))
                .col(string("code_challenge"))
                .col(text_null("resource"))
                .col(string("user_id"))
                .col(string("workspace_id"))
                .col(boolean("used").default(false))
                .col(string_null("token_id"))
                .col(timestamp_with_time_zone("expires_at"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("oauth_refresh")
                .col(string("token_hash").primary_key())
                .col(string("client_id"))
                .col(string("user_id"))
                .col(string("workspace_id"))
                .col(string("access_token_id"))
                .col(boolean("used").default(false))
                .col(timestamp_with_time_zone("expires_at"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("oauth_refresh_access")
                .table("oauth_refresh")
                .col("access_token_id")
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            "oauth_refresh",
            "oauth_codes",
            "oauth_flows",
            "oauth_clients",
        ] {
            m.drop_table(Table::drop().table(t).to_owned()).await?;
        }
        Ok(())
    }
}
