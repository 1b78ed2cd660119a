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
use crate::error::{AppError, AppResult};
use crate::extract::QueryPairs;
use crate::negotiate::Fmt;
use crate::query::{make_time_cursor, read_time_cursor, sql_op};
use crate::records::store::Sql;
use crate::routes::records::list_reply;
use crate::secrets;
use crate::wire::handle::{Kind, handle, parse_ref};
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
    /// The user's address (none once the account itself is gone).
    email: Option<String>,
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
            email: r.try_get("", "email")?,
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
            .opt("email", self.email.as_deref())
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
            "user": handle(Kind::User, &self.user_id), "email": self.email, "agent": self.token_name, "action": self.action,
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
    q.only(&["target", "action", "user", "at", "limit", "cursor"])?;
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
    // The user's email is joined in, so an entry still says who it was
    // after that user has left the workspace.
    let mut sql =
        "SELECT a.id, a.at, a.user_id, u.email, a.token_name, a.action, a.target, a.changes \
                   FROM audit a LEFT JOIN users u ON u.id = a.user_id WHERE a.workspace_id = ?"
            .to_string();
    let mut vals: Vec<sea_orm::Value> = vec![ws.into()];
    // A cursor is bound to the filters it was made with.
    let mut scope = "audit".to_string();
    if let Some(v) = q.nonempty(
        "target",
        "send target= a handle as the log prints it, e.g. target=deal/d_…",
    )? {
        let target = target_of(v)?;
        sql.push_str(" AND a.target = ?");
        scope.push_str(&format!("|target={target}"));
        vals.push(target.into());
    }
    if let Some(v) = q.nonempty(
        "action",
        "send action= an action or a record kind, e.g. action=deal.update or action=deal",
    )? {
        let (clause, values) = actions_of(v)?;
        sql.push_str(&clause);
        scope.push_str(&format!("|action={}", values.join(",")));
        vals.extend(values.into_iter().map(Into::into));
    }
    if let Some(v) = q.nonempty("user", "send user= a user id or handle, e.g. user=u_…")? {
        let id = parse_ref(Kind::User, v).map_err(|e| {
            AppError::invalid(
                format!("user: {e}"),
                "send user= a user id or handle as the log prints it, e.g. user=user/u_…",
            )
        })?;
        sql.push_str(" AND a.user_id = ?");
        scope.push_str(&format!("|user={id}"));
        vals.push(id.into());
    }
    for (op, t) in q.time_conditions("at")? {
        sql.push_str(&format!(" AND a.at{}?", sql_op(op)));
        scope.push_str(&format!("|at={}:{}", op.name(), t.render()));
        vals.push(t.into());
    }
    if let Some(c) = q.get("cursor") {
        let (at, id) = read_time_cursor(&state.cursor_key, ws, &scope, c)?;
        sql.push_str(" AND (a.at < ? OR (a.at = ? AND a.id < ?))");
        vals.extend([at.into(), at.into(), id.into()]);
    }
    sql.push_str(&format!(
        " ORDER BY a.at DESC, a.id DESC LIMIT {}",
        limit + 1
    ));
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
            .map(|e| make_time_cursor(&state.cursor_key, ws, &scope, e.at, &e.id))
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

/// The record kinds and other things audit entries name, as the first part
/// of their actions (`deal.update`) and targets (`deal/d_…`).
/// Every action the log records (the manual lists them too).
pub const ACTIONS: &[&str] = &[
    "contact.create",
    "contact.upsert",
    "contact.update",
    "contact.delete",
    "company.create",
    "company.upsert",
    "company.update",
    "company.delete",
    "deal.create",
    "deal.update",
    "deal.delete",
    "activity.create",
    "token.create",
    "token.revoke",
    "member.join",
    "member.role",
    "member.remove",
    "member.leave",
    "invite.create",
    "invite.update",
    "invite.withdraw",
    "invite.decline",
    "workspace.create",
    "workspace.update",
    "workspace.delete",
];

const ACTION_SUBJECTS: &[&str] = &[
    "contact",
    "company",
    "deal",
    "activity",
    "token",
    "member",
    "invite",
    "workspace",
];

/// `target=`: a handle as the log prints it (`deal/d_…`), or a bare id whose
/// prefix names its kind (`d_…`).
fn target_of(v: &str) -> AppResult<String> {
    let kind = match v.split_once('/') {
        Some((name, _)) => Kind::from_name(name),
        None => v.split_once('_').and_then(|(p, _)| Kind::from_prefix(p)),
    };
    let bad = || {
        AppError::invalid(
            format!(
                "target {:?} is not a handle",
                v.chars().take(60).collect::<String>()
            ),
            "send target= a handle as the log prints it, e.g. target=deal/d_… or target=contact/c_…",
        )
    };
    let kind = kind.ok_or_else(bad)?;
    let id = parse_ref(kind, v).map_err(|_| bad())?;
    Ok(handle(kind, &id))
}

/// `action=`: comma-separated actions (`deal.update`) or kinds (`deal`, all
/// of its actions). The SQL condition and its values.
fn actions_of(v: &str) -> AppResult<(String, Vec<String>)> {
    let mut exact = Vec::new();
    let mut kinds = Vec::new();
    for a in v.split(',').map(str::trim) {
        let known = if a.contains('.') {
            ACTIONS.contains(&a)
        } else {
            ACTION_SUBJECTS.contains(&a)
        };
        if !known {
            let near = crate::wire::suggest::did_you_mean(a, ACTIONS)
                .map(|s| format!(" (did you mean {s}?)"))
                .unwrap_or_default();
            return Err(AppError::invalid(
                format!(
                    "action {:?} is not an audit action{near}",
                    a.chars().take(60).collect::<String>()
                ),
                "send action= actions as the log prints them (deal.update) or kinds (deal), comma-separated",
            )
            .allowed(ACTIONS));
        }
        if a.contains('.') {
            exact.push(a.to_owned());
        } else {
            kinds.push(format!("{a}.%"));
        }
    }
    let mut parts = Vec::new();
    if !exact.is_empty() {
        parts.push(format!(
            "a.action IN ({})",
            vec!["?"; exact.len()].join(", ")
        ));
    }
    parts.extend(kinds.iter().map(|_| "a.action LIKE ?".to_owned()));
    let clause = format!(" AND ({})", parts.join(" OR "));
    exact.extend(kinds);
    Ok((clause, exact))
}
