//! The first schema: accounts, sessions, one-time codes, workspaces and the CRM
//! records themselves.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// A workspace-owned table: `workspace_id` + `id`, both text, as the primary key.
fn owned(name: &'static str) -> TableCreateStatement {
    Table::create()
        .table(name)
        .col(string("workspace_id"))
        .col(string("id"))
        .primary_key(Index::create().col("workspace_id").col("id"))
        .to_owned()
}

fn index(table: &'static str, name: &'static str, cols: &[&'static str]) -> IndexCreateStatement {
    let mut idx = Index::create();
    idx.name(name).table(table);
    for c in cols {
        idx.col(*c);
    }
    idx.to_owned()
}

fn unique(table: &'static str, name: &'static str, cols: &[&'static str]) -> IndexCreateStatement {
    let mut idx = index(table, name, cols);
    idx.unique();
    idx
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // Server-wide settings, e.g. the key that signs list cursors. Shared by
        // every `serve` process because it lives here and nowhere else.
        m.create_table(
            Table::create()
                .table("settings")
                .col(string("key").primary_key())
                .col(text("value"))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("users")
                .col(string("id").primary_key())
                .col(string("email"))
                .col(string("plan").default("default"))
                .col(integer("workspaces_count").default(0))
                .col(timestamp_with_time_zone("created_at"))
                .to_owned(),
        )
        .await?;
        m.create_index(unique("users", "users_email", &["email"]))
            .await?;

        m.create_table(
            Table::create()
                .table("workspaces")
                .col(string("id").primary_key())
                .col(string("name"))
                .col(string("plan").default("default"))
                .col(string_null("personal_of"))
                .col(string("created_by"))
                .col(big_integer("contacts_count").default(0))
                .col(big_integer("companies_count").default(0))
                .col(big_integer("deals_count").default(0))
                .col(integer("members_count").default(0))
                .col(timestamp_with_time_zone("created_at"))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("memberships")
                .col(string("workspace_id"))
                .col(string("user_id"))
                .col(string("role"))
                .col(timestamp_with_time_zone("created_at"))
                .primary_key(Index::create().col("workspace_id").col("user_id"))
                .to_owned(),
        )
        .await?;
        m.create_index(index("memberships", "memberships_user", &["user_id"]))
            .await?;

        m.create_table(
            owned("invites")
                .col(string("email"))
                .col(string("role"))
                .col(string("invited_by"))
                .col(timestamp_with_time_zone("created_at"))
                .to_owned(),
        )
        .await?;
        m.create_index(unique(
            "invites",
            "invites_ws_email",
            &["workspace_id", "email"],
        ))
        .await?;
        m.create_index(index("invites", "invites_email", &["email"]))
            .await?;

        // Bearer tokens: only a SHA-256 of the secret is kept.
        m.create_table(
            Table::create()
                .table("tokens")
                .col(string("id").primary_key())
                .col(string("hash"))
                .col(string("user_id"))
                .col(string("workspace_id"))
                .col(string("name"))
                .col(timestamp_with_time_zone("created_at"))
                .col(timestamp_with_time_zone("last_used_at"))
                .col(timestamp_with_time_zone("expires_at"))
                .to_owned(),
        )
        .await?;
        m.create_index(unique("tokens", "tokens_hash", &["hash"]))
            .await?;
        m.create_index(index("tokens", "tokens_user", &["user_id"]))
            .await?;
        m.create_index(index(
            "tokens",
            "tokens_workspace_user",
            &["workspace_id", "user_id"],
        ))
        .await?;

        // One live login code per address; a new request replaces it.
        m.create_table(
            Table::create()
                .table("login_codes")
                .col(string("email").primary_key())
                .col(string("code_hash"))
                .col(integer("attempts").default(0))
                .col(timestamp_with_time_zone("expires_at"))
                .to_owned(),
        )
        .await?;

        // Step-up codes, bound to user + action + target.
        m.create_table(
            Table::create()
                .table("escalations")
                .col(string("user_id"))
                .col(string("action"))
                .col(string("target"))
                .col(string("code_hash"))
                .col(integer("attempts").default(0))
                .col(timestamp_with_time_zone("expires_at"))
                .primary_key(Index::create().col("user_id").col("action").col("target"))
                .to_owned(),
        )
        .await?;

        // Two-step delete confirmations, bound to record + user + workspace.
        m.create_table(
            Table::create()
                .table("confirmations")
                .col(string("token_hash").primary_key())
                .col(string("workspace_id"))
                .col(string("user_id"))
                .col(string("target"))
                .col(timestamp_with_time_zone("expires_at"))
                .to_owned(),
        )
        .await?;

        // Fixed-window rate-limit counters, keyed e.g. `auth-email:<addr>`.
        m.create_table(
            Table::create()
                .table("rate_limits")
                .col(string("key").primary_key())
                .col(big_integer("window_start"))
                .col(integer("count"))
                .to_owned(),
        )
        .await?;

        m.create_table(
            owned("contacts")
                .col(string_null("name"))
                .col(string_null("email"))
                .col(string_null("email_key"))
                .col(string_null("phone"))
                .col(string_null("title"))
                .col(string_null("company_id"))
                .col(string_null("stage"))
                .col(text_null("tags"))
                .col(json_binary_null("custom"))
                .col(timestamp_with_time_zone_null("follow_up_at"))
                .col(text_null("follow_up_note"))
                .col(timestamp_with_time_zone("created_at"))
                .col(timestamp_with_time_zone("updated_at"))
                .to_owned(),
        )
        .await?;
        m.create_index(unique(
            "contacts",
            "contacts_email",
            &["workspace_id", "email_key"],
        ))
        .await?;
        m.create_index(index(
            "contacts",
            "contacts_created",
            &["workspace_id", "created_at", "id"],
        ))
        .await?;
        m.create_index(index(
            "contacts",
            "contacts_updated",
            &["workspace_id", "updated_at", "id"],
        ))
        .await?;
        m.create_index(index(
            "contacts",
            "contacts_name",
            &["workspace_id", "name", "id"],
        ))
        .await?;
        m.create_index(index(
            "contacts",
            "contacts_stage",
            &["workspace_id", "stage", "id"],
        ))
        .await?;
        m.create_index(index(
            "contacts",
            "contacts_company",
            &["workspace_id", "company_id"],
        ))
        .await?;
        m.create_index(index(
            "contacts",
            "contacts_follow_up",
            &["workspace_id", "follow_up_at"],
        ))
        .await?;

        m.create_table(
            owned("companies")
                .col(string_null("name"))
                .col(string_null("domain"))
                .col(string_null("industry"))
                .col(text_null("tags"))
                .col(json_binary_null("custom"))
                .col(timestamp_with_time_zone("created_at"))
                .col(timestamp_with_time_zone("updated_at"))
                .to_owned(),
        )
        .await?;
        m.create_index(unique(
            "companies",
            "companies_domain",
            &["workspace_id", "domain"],
        ))
        .await?;
        m.create_index(index(
            "companies",
            "companies_created",
            &["workspace_id", "created_at", "id"],
        ))
        .await?;
        m.create_index(index(
            "companies",
            "companies_name",
            &["workspace_id", "name", "id"],
        ))
        .await?;

        m.create_table(
            owned("deals")
                .col(string("title"))
                .col(big_integer_null("amount_cents"))
                .col(string_null("currency"))
                .col(string_null("stage"))
                .col(string("status").default("open"))
                .col(string_null("contact_id"))
                .col(string_null("company_id"))
                .col(text_null("tags"))
                .col(json_binary_null("custom"))
                .col(timestamp_with_time_zone_null("follow_up_at"))
                .col(text_null("follow_up_note"))
                .col(timestamp_with_time_zone("created_at"))
                .col(timestamp_with_time_zone("updated_at"))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "deals",
            "deals_created",
            &["workspace_id", "created_at", "id"],
        ))
        .await?;
        m.create_index(index(
            "deals",
            "deals_stage",
            &["workspace_id", "stage", "id"],
        ))
        .await?;
        m.create_index(index(
            "deals",
            "deals_amount",
            &["workspace_id", "amount_cents", "id"],
        ))
        .await?;
        m.create_index(index(
            "deals",
            "deals_contact",
            &["workspace_id", "contact_id"],
        ))
        .await?;
        m.create_index(index(
            "deals",
            "deals_company",
            &["workspace_id", "company_id"],
        ))
        .await?;
        m.create_index(index(
            "deals",
            "deals_follow_up",
            &["workspace_id", "follow_up_at"],
        ))
        .await?;

        m.create_table(
            owned("activities")
                .col(string("kind"))
                .col(text_null("body"))
                .col(timestamp_with_time_zone("occurred_at"))
                .col(string_null("contact_id"))
                .col(string_null("deal_id"))
                .col(string("author_id"))
                .col(string("author_token"))
                .col(timestamp_with_time_zone("created_at"))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "activities",
            "activities_occurred",
            &["workspace_id", "occurred_at", "id"],
        ))
        .await?;
        m.create_index(index(
            "activities",
            "activities_contact",
            &["workspace_id", "contact_id", "occurred_at"],
        ))
        .await?;
        m.create_index(index(
            "activities",
            "activities_deal",
            &["workspace_id", "deal_id", "occurred_at"],
        ))
        .await?;

        m.create_table(
            owned("audit")
                .col(timestamp_with_time_zone("at"))
                .col(string("user_id"))
                .col(string("token_name"))
                .col(string("action"))
                .col(string("target"))
                .col(json_binary_null("changes"))
                .to_owned(),
        )
        .await?;
        m.create_index(index("audit", "audit_at", &["workspace_id", "at", "id"]))
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            "audit",
            "activities",
            "deals",
            "companies",
            "contacts",
            "rate_limits",
            "confirmations",
            "escalations",
            "login_codes",
            "tokens",
            "invites",
            "memberships",
            "workspaces",
            "users",
            "settings",
        ] {
            m.drop_table(Table::drop().table(t).to_owned()).await?;
        }
        Ok(())
    }
}
