//! The manual, health checks, `whoami` and the caller's tokens.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::Caller;
use crate::db::{Ts, stmt, write_tx};
use crate::error::{AppError, AppResult};
use crate::extract::PathIds;
use crate::mcp::oauth::is_connection;
use crate::negotiate::{Fmt, text_response};
use crate::routes::audit;
use crate::wire::handle::{Kind, handle, parse_ref};
use crate::wire::line::{LineBuilder, comment};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/whoami", get(whoami))
        .route("/tokens", get(list_tokens))
        .route("/tokens/{id}", delete(revoke_token))
        .route_layer(axum::middleware::from_fn(crate::extract::no_params))
        // Probes and the manual ignore their query: a load balancer's or
        // a browser's parameters are no error.
        .route("/help", get(help))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn help(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let mut res = text_response(StatusCode::OK, state.manual.to_string());
    let wants_md = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/markdown"));
    if wants_md {
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/markdown; charset=utf-8"),
        );
    }
    res
}

async fn healthz(fmt: Fmt) -> Response {
    fmt.reply(StatusCode::OK, || "ok\n".into(), || json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>, fmt: Fmt) -> AppResult<Response> {
    let ping = tokio::time::timeout(std::time::Duration::from_secs(3), state.db.ping()).await;
    match ping {
        Ok(Ok(())) => Ok(fmt.reply(
            StatusCode::OK,
            || "ready\n".into(),
            || json!({"status": "ready"}),
        )),
        Ok(Err(e)) => Err(AppError::unavailable(e)),
        Err(_) => Err(AppError::unavailable("database ping timed out")),
    }
}

/// Plan usage of the caller's workspace (and the caller's workspace count).
/// A workspace's name, plan and usage against its plan's caps (contacts,
/// companies, deals, members), then the user's workspaces against theirs.
pub async fn usage(
    state: &AppState,
    workspace_id: &str,
    user_id: &str,
) -> AppResult<(String, String, Vec<(&'static str, i64, i64)>)> {
    let db = &state.db;
    let backend = db.get_database_backend();
    let ws = db
        .query_one_raw(stmt(
            backend,
            "SELECT w.name, w.plan, w.contacts_count, w.companies_count, w.deals_count, w.members_count, \
                    u.workspaces_count, u.plan AS user_plan \
             FROM workspaces w, users u WHERE w.id = ? AND u.id = ?",
            vec![workspace_id.into(), user_id.into()],
        ))
        .await?
        .ok_or_else(AppError::invalid_token)?;
    let name: String = ws.try_get("", "name")?;
    let plan_name: String = ws.try_get("", "plan")?;
    let user_plan: String = ws.try_get("", "user_plan")?;
    let plan = state.settings.plan(&plan_name);
    let user_caps = state.settings.plan(&user_plan);
    let members: i32 = ws.try_get("", "members_count")?;
    let workspaces: i32 = ws.try_get("", "workspaces_count")?;
    let rows = vec![
        (
            "contacts",
            ws.try_get::<i64>("", "contacts_count")?,
            plan.contacts,
        ),
        (
            "companies",
            ws.try_get::<i64>("", "companies_count")?,
            plan.companies,
        ),
        ("deals", ws.try_get::<i64>("", "deals_count")?, plan.deals),
        ("members", i64::from(members), plan.members),
        ("workspaces", i64::from(workspaces), user_caps.workspaces),
    ];
    Ok((name, plan_name, rows))
}

/// Usage rows as `# kind: used / cap` comment lines.
pub fn usage_lines(rows: &[(&str, i64, i64)]) -> String {
    let mut out = String::new();
    for (kind, used, cap) in rows {
        out.push_str(&comment(&format!("{kind}: {used} / {cap}")));
        out.push('\n');
    }
    out
}

/// Usage rows as `{"kind": {"used": n, "cap": n}}`.
pub fn usage_json(rows: &[(&str, i64, i64)]) -> Value {
    Value::Object(
        rows.iter()
            .map(|(k, used, cap)| (k.to_string(), json!({"used": used, "cap": cap})))
            .collect(),
    )
}

async fn whoami(State(state): State<AppState>, caller: Caller, fmt: Fmt) -> AppResult<Response> {
    let (ws_name, plan, rows) = usage(&state, &caller.workspace_id, &caller.user_id).await?;
    Ok(fmt.reply(
        StatusCode::OK,
        || {
            let mut line = LineBuilder::new(&handle(Kind::User, &caller.user_id));
            line.field("email", &caller.email)
                .field("workspace", &handle(Kind::Workspace, &caller.workspace_id))
                .field("workspace_name", &ws_name)
                .field("role", &caller.role)
                .field("token", &handle(Kind::Token, &caller.token_id))
                .field("token_name", &caller.token_name)
                .field("plan", &plan);
            let mut out = line.finish();
            out.push('\n');
            out.push_str(&usage_lines(&rows));
            out
        },
        || {
            let usage = usage_json(&rows);
            json!({"data": {
                "handle": handle(Kind::User, &caller.user_id), "id": caller.user_id,
                "email": caller.email, "workspace": handle(Kind::Workspace, &caller.workspace_id),
                "workspace_name": ws_name, "role": caller.role,
                "token": handle(Kind::Token, &caller.token_id), "token_name": caller.token_name,
                "plan": plan, "usage": usage,
            }})
        },
    ))
}

async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
) -> AppResult<Response> {
    let db = &state.db;
    let rows = db
        .query_all_raw(stmt(
            db.get_database_backend(),
            "SELECT id, name, workspace_id, created_at, last_used_at, expires_at FROM tokens \
             WHERE user_id = ? AND expires_at > ? ORDER BY created_at DESC, id DESC",
            vec![caller.user_id.clone().into(), Ts::now().into()],
        ))
        .await?;
    // A chat client's connection sees the tokens of its one workspace.
    let granted_only = is_connection(&state, &caller.token_id).await?;
    let mut tokens = Vec::with_capacity(rows.len());
    for r in rows {
        if granted_only && r.try_get::<String>("", "workspace_id")? != caller.workspace_id {
            continue;
        }
        let id: String = r.try_get("", "id")?;
        tokens.push(json!({
            "handle": handle(Kind::Token, &id),
            "current": id == caller.token_id,
            "id": id,
            "name": r.try_get::<String>("", "name")?,
            "workspace": handle(Kind::Workspace, &r.try_get::<String>("", "workspace_id")?),
            "created_at": r.try_get::<Ts>("", "created_at")?.render(),
            "last_used_at": r.try_get::<Ts>("", "last_used_at")?.render(),
            "expires_at": r.try_get::<Ts>("", "expires_at")?.render(),
        }));
    }
    Ok(fmt.reply(
        StatusCode::OK,
        || {
            let mut out = String::new();
            for t in &tokens {
                let mut line = LineBuilder::new(t["handle"].as_str().unwrap_or(""));
                for key in [
                    "name",
                    "workspace",
                    "created_at",
                    "last_used_at",
                    "expires_at",
                ] {
                    line.field(key, t[key].as_str().unwrap_or(""));
                }
                if t["current"] == true {
                    line.field("current", "true");
                }
                out.push_str(&line.finish());
                out.push('\n');
            }
            out.push_str(&comment(&format!("{} tokens", tokens.len())));
            out.push('\n');
            out
        },
        || json!({"data": tokens, "next_cursor": null}),
    ))
}

async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
    PathIds(ids): PathIds,
) -> AppResult<Response> {
    let raw = ids.first().map(String::as_str).unwrap_or("");
    let not_found = || {
        AppError::not_found(
            "no such token of yours",
            "GET /tokens lists your tokens and their ids",
        )
    };
    let id = parse_ref(Kind::Token, raw).map_err(|e| {
        AppError::invalid(e.to_string(), "send a token id like t_… from GET /tokens")
    })?;
    let db = &state.db;
    // A chat client's connection revokes only tokens of its one workspace.
    let only_in = if is_connection(&state, &caller.token_id).await? {
        caller.workspace_id.clone()
    } else {
        String::new()
    };
    let tx = write_tx(db).await?;
    let backend = tx.get_database_backend();
    let row = tx
        .query_one_raw(stmt(
            backend,
            "DELETE FROM tokens WHERE id = ? AND user_id = ? AND (? = '' OR workspace_id = ?) RETURNING workspace_id, name",
            vec![id.clone().into(), caller.user_id.clone().into(), only_in.clone().into(), only_in.into()],
        ))
        .await?
        .ok_or_else(not_found)?;
    let ws: String = row.try_get("", "workspace_id")?;
    let name: String = row.try_get("", "name")?;
    audit::record(
        &tx,
        &ws,
        &caller.user_id,
        &caller.token_name,
        "token.revoke",
        &handle(Kind::Token, &id),
        Some(json!({"name": [name, null]})),
    )
    .await?;
    tx.commit().await?;
    state.tokens.forget_all();
    let own = id == caller.token_id;
    Ok(fmt.reply(
        StatusCode::OK,
        || {
            let mut out = comment(&format!("revoked {}", handle(Kind::Token, &id)));
            if own {
                out.push('\n');
                out.push_str(&comment("that was this session's token: you are signed out"));
            }
            out.push('\n');
            out
        },
        || json!({"data": {"handle": handle(Kind::Token, &id), "id": id, "current": own}, "result": "revoked"}),
    )
    .into_response())
}
