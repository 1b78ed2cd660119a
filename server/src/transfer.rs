//! `crmkit migrate-data --from URL --to URL`: copies every table from one
//! database to another (SQLite to PostgreSQL, or back) in one pass, then checks
//! the row counts.
//!
//! The source is read inside one transaction (a consistent snapshot), the
//! target written inside one transaction, so a failed copy leaves the target
//! as empty as it was. The target must be freshly migrated and empty. Search
//! indexes are rebuilt on the target (SQLite's FTS5 tables are not copied).

use sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseTransaction, QueryResult, TransactionTrait, Value,
};

use crate::config::{ServeArgs, Settings};
use crate::db::{self, Ts, stmt};
use crate::records::{COMPANY, CONTACT, DEAL};
use crate::serve::ServeError;

#[derive(Clone, Copy)]
enum Col {
    Text,
    I32,
    I64,
    Ts,
    Json,
    Bool,
}

use Col::*;

/// A table: name, how many leading columns form its primary key, columns.
type Table = (&'static str, usize, &'static [(&'static str, Col)]);

/// Every table and column of the schema, with its key columns first.
const TABLES: &[Table] = &[
    ("settings", 1, &[("key", Text), ("value", Text)]),
    (
        "users",
        1,
        &[
            ("id", Text),
            ("email", Text),
            ("plan", Text),
            ("workspaces_count", I32),
            ("created_at", Ts),
        ],
    ),
    (
        "workspaces",
        1,
        &[
            ("id", Text),
            ("name", Text),
            ("plan", Text),
            ("personal_of", Text),
            ("created_by", Text),
            ("contacts_count", I64),
            ("companies_count", I64),
            ("deals_count", I64),
            ("members_count", I32),
            ("created_at", Ts),
        ],
    ),
    (
        "memberships",
        2,
        &[
            ("workspace_id", Text),
            ("user_id", Text),
            ("role", Text),
            ("created_at", Ts),
        ],
    ),
    (
        "invites",
        2,
        &[
            ("workspace_id", Text),
            ("id", Text),
            ("email", Text),
            ("role", Text),
            ("invited_by", Text),
            ("created_at", Ts),
        ],
    ),
    (
        "tokens",
        1,
        &[
            ("id", Text),
            ("hash", Text),
            ("user_id", Text),
            ("workspace_id", Text),
            ("name", Text),
            ("created_at", Ts),
            ("last_used_at", Ts),
            ("expires_at", Ts),
        ],
    ),
    (
        "login_codes",
        1,
        &[
            ("email", Text),
            ("code_hash", Text),
            ("attempts", I32),
            ("expires_at", Ts),
        ],
    ),
    (
        "escalations",
        3,
        &[
            ("user_id", Text),
            ("action", Text),
            ("target", Text),
            ("code_hash", Text),
            ("attempts", I32),
            ("expires_at", Ts),
        ],
    ),
    (
        "confirmations",
        1,
        &[
            ("token_hash", Text),
            ("workspace_id", Text),
            ("user_id", Text),
            ("target", Text),
            ("expires_at", Ts),
        ],
    ),
    (
        "rate_limits",
        1,
        &[("key", Text), ("window_start", I64), ("count", I32)],
    ),
    (
        "contacts",
        2,
        &[
            ("workspace_id", Text),
            ("id", Text),
            ("name", Text),
            ("email", Text),
            ("email_key", Text),
            ("phone", Text),
            ("title", Text),
            ("company_id", Text),
            ("stage", Text),
            ("tags", Text),
            ("custom", Json),
            ("follow_up_at", Ts),
            ("follow_up_note", Text),
            ("created_at", Ts),
            ("updated_at", Ts),
        ],
    ),
    (
        "companies",
        2,
        &[
            ("workspace_id", Text),
            ("id", Text),
            ("name", Text),
            ("domain", Text),
            ("industry", Text),
            ("tags", Text),
            ("custom", Json),
            ("created_at", Ts),
            ("updated_at", Ts),
        ],
    ),
    (
        "deals",
        2,
        &[
            ("workspace_id", Text),
            ("id", Text),
            ("title", Text),
            ("amount_cents", I64),
            ("currency", Text),
            ("stage", Text),
            ("status", Text),
            ("contact_id", Text),
            ("company_id", Text),
            ("tags", Text),
            ("custom", Json),
            ("follow_up_at", Ts),
            ("follow_up_note", Text),
            ("created_at", Ts),
            ("updated_at", Ts),
        ],
    ),
    (
        "activities",
        2,
        &[
            ("workspace_id", Text),
            ("id", Text),
            ("kind", Text),
            ("body", Text),
            ("occurred_at", Ts),
            ("contact_id", Text),
            ("deal_id", Text),
            ("author_id", Text),
            ("author_token", Text),
            ("created_at", Ts),
        ],
    ),
    (
        "audit",
        2,
        &[
            ("workspace_id", Text),
            ("id", Text),
            ("at", Ts),
            ("user_id", Text),
            ("token_name", Text),
            ("action", Text),
            ("target", Text),
            ("changes", Json),
        ],
    ),
    (
        "oauth_clients",
        1,
        &[
            ("client_id", Text),
            ("client_name", Text),
            ("redirect_uris", Text),
            ("created_at", Ts),
            ("last_used_at", Ts),
        ],
    ),
    (
        "oauth_flows",
        1,
        &[
            ("id", Text),
            ("csrf_hash", Text),
            ("client_id", Text),
            ("redirect_uri", Text),
            ("state", Text),
            ("code_challenge", Text),
            ("resource", Text),
            ("email", Text),
            ("user_id", Text),
            ("expires_at", Ts),
        ],
    ),
    (
        "oauth_codes",
        1,
        &[
            ("code_hash", Text),
            ("client_id", Text),
            ("redirect_uri", Text),
            ("code_challenge", Text),
            ("resource", Text),
            ("user_id", Text),
            ("workspace_id", Text),
            ("used", Bool),
            ("token_id", Text),
            ("expires_at", Ts),
        ],
    ),
    (
        "oauth_refresh",
        1,
        &[
            ("token_hash", Text),
            ("client_id", Text),
            ("user_id", Text),
            ("workspace_id", Text),
            ("access_token_id", Text),
            ("used", Bool),
            ("expires_at", Ts),
        ],
    ),
];

const BATCH: usize = 200;

fn value(row: &QueryResult, name: &str, col: Col) -> Result<Value, sea_orm::DbErr> {
    Ok(match col {
        Text => Value::String(row.try_get::<Option<String>>("", name)?),
        I32 => Value::Int(row.try_get::<Option<i32>>("", name)?),
        I64 => Value::BigInt(row.try_get::<Option<i64>>("", name)?),
        Ts => row.try_get::<Option<Ts>>("", name)?.into(),
        Json => Value::Json(
            row.try_get::<Option<serde_json::Value>>("", name)?
                .map(Box::new),
        ),
        Bool => Value::Bool(row.try_get::<Option<bool>>("", name)?),
    })
}

async fn count<C: ConnectionTrait>(db: &C, table: &str) -> Result<i64, sea_orm::DbErr> {
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            &format!("SELECT COUNT(*) AS n FROM {table}"),
            vec![],
        ))
        .await?;
    Ok(row
        .map(|r| r.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or(0))
}

async fn copy_table(
    src: &DatabaseTransaction,
    dst: &db::WriteTx,
    table: &str,
    keys: usize,
    cols: &[(&str, Col)],
) -> Result<u64, sea_orm::DbErr> {
    let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
    let key_names = &names[..keys];
    let mut after: Option<Vec<Value>> = None;
    let mut copied = 0u64;
    loop {
        let mut sql = format!("SELECT {} FROM {table}", names.join(", "));
        let mut vals = Vec::new();
        if let Some(last) = &after {
            // Keyset on the primary key (row values work on both backends).
            sql.push_str(&format!(
                " WHERE ({}) > ({})",
                key_names.join(", "),
                vec!["?"; keys].join(", ")
            ));
            vals.extend(last.iter().cloned());
        }
        sql.push_str(&format!(" ORDER BY {} LIMIT {BATCH}", key_names.join(", ")));
        let rows = src
            .query_all_raw(stmt(src.get_database_backend(), &sql, vals))
            .await?;
        if rows.is_empty() {
            return Ok(copied);
        }
        let mut insert = format!("INSERT INTO {table} ({}) VALUES ", names.join(", "));
        let mut ins_vals = Vec::with_capacity(rows.len() * cols.len());
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                insert.push_str(", ");
            }
            insert.push('(');
            insert.push_str(&vec!["?"; cols.len()].join(", "));
            insert.push(')');
            for (name, col) in cols {
                ins_vals.push(value(row, name, *col)?);
            }
        }
        dst.execute_raw(stmt(dst.get_database_backend(), &insert, ins_vals))
            .await?;
        copied += rows.len() as u64;
        let last = rows.last().expect("non-empty");
        after = Some(
            cols[..keys]
                .iter()
                .map(|(n, c)| value(last, n, *c))
                .collect::<Result<_, _>>()?,
        );
        if rows.len() < BATCH {
            return Ok(copied);
        }
    }
}

async fn open(url: &str) -> Result<db::Db, ServeError> {
    let args = ServeArgs {
        database_url: Some(url.to_string()),
        ..Default::default()
    };
    let settings = Settings::resolve(&args).map_err(ServeError::Config)?;
    let conn = db::connect(&settings).await.map_err(|e| {
        ServeError::Runtime(format!(
            "cannot open {}: {e}",
            crate::config::redact_url(url)
        ))
    })?;
    db::migrate(&conn).await.map_err(|e| {
        ServeError::Runtime(format!(
            "migration failed on {}: {e}",
            crate::config::redact_url(url)
        ))
    })?;
    Ok(conn)
}

/// Copies everything; returns one line per table with its row count.
pub async fn migrate_data(from: &str, to: &str) -> Result<Vec<String>, ServeError> {
    let fail = |e: sea_orm::DbErr| {
        ServeError::Runtime(format!("copy failed, the target is unchanged: {e}"))
    };
    let source = open(from).await?;
    let target = open(to).await?;
    if count(&target, "users").await.map_err(fail)? > 0
        || count(&target, "workspaces").await.map_err(fail)? > 0
    {
        return Err(ServeError::Config(crate::config::ConfigError(
            "the target database is not empty; copy into a new database".into(),
        )));
    }
    let src = source.begin().await.map_err(fail)?;
    let dst = db::write_tx(&target).await.map_err(fail)?;
    let mut report = Vec::new();
    for (table, keys, cols) in TABLES {
        let n = copy_table(&src, &dst, table, *keys, cols)
            .await
            .map_err(fail)?;
        report.push((table, n));
    }
    if dst.get_database_backend() == DatabaseBackend::Sqlite {
        // Search keys and the search index are SQLite's own; rebuild them.
        for def in [&CONTACT, &COMPANY, &DEAL] {
            crmkit_migrations::m20261129_000006_ordered_search_keys::rebuild_sqlite_search(
                &dst, def.plural,
            )
            .await
            .map_err(fail)?;
        }
    }
    // Verify inside the target transaction, before committing.
    let mut lines = Vec::new();
    for (table, n) in report {
        let src_n = count(&src, table).await.map_err(fail)?;
        let dst_n = count(&dst, table).await.map_err(fail)?;
        if src_n != dst_n || dst_n != n as i64 {
            return Err(ServeError::Runtime(format!(
                "{table}: source has {src_n} rows, target {dst_n}; nothing was committed"
            )));
        }
        lines.push(format!("{table}: {dst_n} rows"));
    }
    dst.commit().await.map_err(fail)?;
    src.rollback().await.ok();
    Ok(lines)
}
