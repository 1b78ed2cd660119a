//! The workspace audit log: every mutation appends one entry in the same
//! transaction as the change it records; `GET /audit` reads it newest first.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use sea_orm::{ConnectionTrait, QueryResult};
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::Caller;
use crate::db::{Ts, stmt};
use crate::error::AppResult;
use crate::extract::QueryPairs;
use crate::negotiate::Fmt;
use crate::query::{make_time_cursor, read_time_cursor};
use crate::records::store::Sql;
use crate::routes::records::list_reply;
use crate::secrets;
use crate::wire::handle::{Kind, handle};
use crate::wire::line::LineBuilder;
use crate::wire::query::parse_limit;

pub fn router() -> Router<AppState> {
    Router::new().route("/audit", get(list))
}

/// Appends an audit entry. `changes` maps field -> [before, after].
pub async fn record(
    tx: &crate::db::WriteTx,
    workspace_id: &str,
    user_id: &str,
    token_name: &str,
    action: &str,
    target: &str,
    changes: Option<Value>,
) -> AppResult<()> {
    let e = entry(workspace_id, user_id, token_name, action, target, changes);
    tx.execute_raw(e.stmt(tx.get_database_backend())).await?;
    Ok(())
}

/// The statement that appends an audit entry: an `INSERT … SELECT` without a
/// WHERE, so a caller may add one (see `records::store::create`).
pub fn entry(
    workspace_id: &str,
    user_id: &str,
    token_name: &str,
    action: &str,
    target: &str,
    changes: Option<Value>,
) -> Sql {
    let at = Ts::now();
    Sql {
        text: "INSERT INTO audit (workspace_id, id, at, user_id, token_name, action, target, changes) \
               SELECT ?, ?, ?, ?, ?, ?, ?, ?"
            .into(),
        vals: vec![
            workspace_id.into(),
            secrets::new_audit_id(at).into(),
            at.into(),
            user_id.into(),
            token_name.into(),
            action.into(),
            target.into(),
            sea_orm::Value::Json(changes.map(Box::new)),
        ],
    }
}

struct Entry {
    id: String,
    at: Ts,
    user_id: String,
    token_name: String,
    action: String,
    target: String,
    changes: Option<Value>,
}

impl Entry {
    fn from_row(r: &QueryResult) -> AppResult<Entry> {
        Ok(Entry {
            id: r.try_get("", "id")?,
            at: r.try_get("", "at")?,
            user_id: r.try_get("", "user_id")?,
            token_name: r.try_get("", "token_name")?,
            action: r.try_get("", "action")?,
            target: r.try_get("", "target")?,
            changes: r.try_get("", "changes")?,
        })
    }

    fn line(&self) -> String {
        let mut l = LineBuilder::new(&handle(Kind::Audit, &self.id));
        l.field("at", &self.at.render())
            .field("user", &handle(Kind::User, &self.user_id))
            .field("agent", &self.token_name)
            .field("action", &self.action)
            .field("target", &self.target);
        if let Some(c) = &self.changes {
            l.field("changes", &c.to_string());
        }
        l.finish()
    }

    fn to_json(&self) -> Value {
        json!({
            "handle": handle(Kind::Audit, &self.id), "id": self.id, "at": self.at.render(),
            "user": handle(Kind::User, &self.user_id), "agent": self.token_name, "action": self.action,
            "target": self.target, "changes": self.changes.clone().unwrap_or(json!({})),
        })
    }
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
    q: QueryPairs,
) -> AppResult<Response> {
    q.only(&["limit", "cursor"])?;
    let limit = match q.get("limit") {
        None => 50,
        Some(v) => parse_limit(v).map_err(|e| {
            crate::error::AppError::new(
                e.code,
                axum::http::StatusCode::BAD_REQUEST,
                e.message,
                e.hint,
            )
        })?,
    };
    let ws = caller.workspace_id.as_str();
    let mut sql = "SELECT id, at, user_id, token_name, action, target, changes FROM audit WHERE workspace_id = ?".to_string();
    let mut vals: Vec<sea_orm::Value> = vec![ws.into()];
    if let Some(c) = q.get("cursor") {
        let (at, id) = read_time_cursor(&state.cursor_key, ws, "audit", c)?;
        sql.push_str(" AND (at < ? OR (at = ? AND id < ?))");
        vals.extend([at.into(), at.into(), id.into()]);
    }
    sql.push_str(&format!(" ORDER BY at DESC, id DESC LIMIT {}", limit + 1));
    let rows = state
        .db
        .query_all_raw(stmt(state.db.get_database_backend(), &sql, vals))
        .await?;
    let mut items = rows
        .iter()
        .map(Entry::from_row)
        .collect::<AppResult<Vec<_>>>()?;
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next = if more {
        items
            .last()
            .map(|e| make_time_cursor(&state.cursor_key, ws, "audit", e.at, &e.id))
    } else {
        None
    };
    Ok(list_reply(
        fmt,
        "audit entries",
        &items,
        next,
        Entry::line,
        Entry::to_json,
    ))
}
