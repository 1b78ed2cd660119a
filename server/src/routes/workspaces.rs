//! Workspaces, members, invites and roles (SPEC §4).
//!
//! A workspace you do not belong to does not exist for you: every path here
//! answers 404 for it. Checks run in the order membership -> role -> input ->
//! step-up, so a member never triggers a code email.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, post};
use sea_orm::ConnectionTrait;
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::auth::Caller;
use crate::db::{Ts, stmt, write_tx};
use crate::error::{AppError, AppResult};
use crate::extract::{BodyFields, JsonBody, PathIds, RawBody};
use crate::mail::{Mail, html_escape};
use crate::mcp::oauth::is_connection;
use crate::negotiate::Fmt;
use crate::records::store::plan_limit;
use crate::routes::audit;
use crate::routes::auth::{mint_token, token_reply};
use crate::routes::records::{list_reply, path_ref};
use crate::stepup::{self, OfferedCode};
use crate::wire::handle::{Kind, handle, parse_ref};
use crate::wire::line::{LineBuilder, comment};
use crate::{ratelimit, secrets, validate};

pub const ROLES: &[&str] = &["admin", "member"];

/// Invites one user may send per rate window (each one is a mail).
const INVITES_PER_WINDOW: i64 = 50;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/workspaces", get(list).post(create))
        .route(
            "/workspaces/{id}",
            get(show).delete(delete_workspace).patch(rename),
        )
        .route("/workspaces/{id}/tokens", post(switch))
        .route("/workspaces/{id}/members", get(members))
        .route("/workspaces/{id}/invites", post(invite))
        .route("/workspaces/{id}/invites/{invite}", delete(withdraw))
        .route("/workspaces/{id}/members/{user}/role", post(set_role))
        .route("/workspaces/{id}/members/{user}", delete(remove_member))
        .route_layer(axum::middleware::from_fn(crate::extract::no_params))
}

fn ws_not_found(raw: &str) -> AppError {
    let shown: String = raw.chars().take(60).collect();
    AppError::not_found(
        format!("no workspace {shown:?} of yours"),
        "GET /workspaces lists the workspaces you belong to; one listed with status=invited is joined with POST /workspaces/{id}/tokens",
    )
}

/// The workspace id from the path, and the caller's role in it (404 when the
/// caller is not a member, whatever the workspace's existence).
async fn membership(state: &AppState, caller: &Caller, raw: &str) -> AppResult<(String, String)> {
    let id = path_ref(Kind::Workspace, raw, || ws_not_found(raw))?;
    if id != caller.workspace_id && is_connection(state, &caller.token_id).await? {
        return Err(AppError::not_granted(format!(
            "this connection may not act in {}",
            handle(Kind::Workspace, &id)
        )));
    }
    let row = state
        .db
        .query_one_raw(stmt(
            state.db.get_database_backend(),
            "SELECT role FROM memberships WHERE workspace_id = ? AND user_id = ?",
            vec![id.clone().into(), caller.user_id.clone().into()],
        ))
        .await?
        .ok_or_else(|| ws_not_found(raw))?;
    Ok((id, row.try_get("", "role")?))
}

async fn require_admin(state: &AppState, caller: &Caller, raw: &str) -> AppResult<String> {
    let (id, role) = membership(state, caller, raw).await?;
    if role != "admin" {
        return Err(AppError::admin_required());
    }
    Ok(id)
}

fn role_of(raw: Option<String>) -> AppResult<String> {
    let r = raw.ok_or_else(|| {
        AppError::invalid("role is required", "send \"role\": \"admin\" or \"member\"")
            .allowed(ROLES)
    })?;
    if !ROLES.contains(&r.as_str()) {
        return Err(AppError::invalid(
            format!(
                "role {:?} is not admin or member",
                r.chars().take(40).collect::<String>()
            ),
            "send \"role\": \"admin\" or \"member\"",
        )
        .allowed(ROLES));
    }
    Ok(r)
}

async fn list(State(state): State<AppState>, caller: Caller, fmt: Fmt) -> AppResult<Response> {
    // A chat client's connection sees the one workspace it was granted.
    let granted_only = is_connection(&state, &caller.token_id).await?;
    let rows = state
        .db
        .query_all_raw(stmt(
            state.db.get_database_backend(),
            "SELECT w.id, w.name, w.plan, w.personal_of, m.role FROM memberships m JOIN workspaces w ON w.id = m.workspace_id \
             WHERE m.user_id = ? ORDER BY w.created_at, w.id",
            vec![caller.user_id.clone().into()],
        ))
        .await?;
    let mut items = Vec::new();
    for r in rows {
        let id: String = r.try_get("", "id")?;
        if granted_only && id != caller.workspace_id {
            continue;
        }
        let personal: Option<String> = r.try_get("", "personal_of")?;
        items.push(json!({
            "handle": handle(Kind::Workspace, &id), "id": id, "name": r.try_get::<String>("", "name")?,
            "role": r.try_get::<String>("", "role")?, "plan": r.try_get::<String>("", "plan")?,
            "status": "member",
            "personal": personal.as_deref() == Some(caller.user_id.as_str()), "current": id == caller.workspace_id,
        }));
    }
    // Invites to the caller's address: POST /workspaces/{id}/tokens joins.
    let invites = state
        .db
        .query_all_raw(stmt(
            state.db.get_database_backend(),
            "SELECT w.id, w.name, w.plan, i.role, i.id AS invite_id FROM invites i JOIN workspaces w ON w.id = i.workspace_id \
             WHERE i.email = ? ORDER BY i.created_at, w.id",
            vec![caller.email.clone().into()],
        ))
        .await?;
    for r in invites.into_iter().filter(|_| !granted_only) {
        let id: String = r.try_get("", "id")?;
        items.push(json!({
            "handle": handle(Kind::Workspace, &id), "id": id, "name": r.try_get::<String>("", "name")?,
            "role": r.try_get::<String>("", "role")?, "plan": r.try_get::<String>("", "plan")?,
            "status": "invited", "personal": false, "current": false,
            "invite": handle(Kind::Invite, &r.try_get::<String>("", "invite_id")?),
        }));
    }
    let line = |v: &serde_json::Value| {
        let mut l = LineBuilder::new(v["handle"].as_str().unwrap_or(""));
        for k in ["name", "role", "plan", "status", "invite"] {
            l.field(k, v[k].as_str().unwrap_or(""));
        }
        if v["personal"] == true {
            l.field("personal", "true");
        }
        if v["current"] == true {
            l.field("current", "true");
        }
        l.finish()
    };
    Ok(list_reply(fmt, "workspaces", &items, None, line, |v| {
        v.clone()
    }))
}

/// One workspace you belong to: your role in it, its plan, and its usage
/// against the plan's caps (what `/whoami` says of the token's workspace).
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
    PathIds(ids): PathIds,
) -> AppResult<Response> {
    let (id, role) = membership(&state, &caller, &ids[0]).await?;
    let row = state
        .db
        .query_one_raw(stmt(
            state.db.get_database_backend(),
            "SELECT personal_of, created_at FROM workspaces WHERE id = ?",
            vec![id.clone().into()],
        ))
        .await?
        .ok_or_else(|| ws_not_found(&ids[0]))?;
    let personal = row.try_get::<Option<String>>("", "personal_of")?.as_deref()
        == Some(caller.user_id.as_str());
    let created_at = row.try_get::<Ts>("", "created_at")?.render();
    let (name, plan, mut rows) = crate::routes::meta::usage(&state, &id, &caller.user_id).await?;
    // The workspaces cap is the user's, not this workspace's (see /whoami).
    rows.retain(|(kind, _, _)| *kind != "workspaces");
    let current = id == caller.workspace_id;
    let h = handle(Kind::Workspace, &id);
    Ok(fmt.reply(
        StatusCode::OK,
        || {
            let mut l = LineBuilder::new(&h);
            l.field("name", &name)
                .field("role", &role)
                .field("plan", &plan)
                .field("created_at", &created_at);
            if personal {
                l.field("personal", "true");
            }
            if current {
                l.field("current", "true");
            }
            let mut out = l.finish();
            out.push('\n');
            out.push_str(&crate::routes::meta::usage_lines(&rows));
            out
        },
        || {
            json!({"data": {
                "handle": h, "id": id, "name": name, "role": role, "plan": plan,
                "personal": personal, "current": current, "created_at": created_at,
                "usage": crate::routes::meta::usage_json(&rows),
            }})
        },
    ))
}

#[derive(Deserialize)]
struct NameBody {
    name: Option<String>,
}
impl BodyFields for NameBody {
    const FIELDS: &'static [&'static str] = &["name"];
}

impl NameBody {
    /// A workspace's name: required, one line, at most 100 characters.
    fn checked_name(self) -> AppResult<String> {
        let name = self.name.ok_or_else(|| {
            AppError::invalid("name is required", "send {\"name\": \"Sales team\"}")
        })?;
        validate::label("name", &name, 100)
    }
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
    JsonBody(body): JsonBody<NameBody>,
) -> AppResult<Response> {
    let name = body.checked_name()?;
    if is_connection(&state, &caller.token_id).await? {
        return Err(AppError::not_granted(
            "a chat client's connection cannot create workspaces",
        ));
    }
    let tx = write_tx(&state.db).await?;
    let backend = tx.get_database_backend();
    let plan_row = tx
        .query_one_raw(stmt(
            backend,
            "SELECT plan FROM users WHERE id = ?",
            vec![caller.user_id.clone().into()],
        ))
        .await?
        .ok_or_else(AppError::invalid_token)?;
    let plan: String = plan_row.try_get("", "plan")?;
    let cap = state.settings.plan(&plan).workspaces;
    let took = tx
        .execute_raw(stmt(
            backend,
            "UPDATE users SET workspaces_count = workspaces_count + 1 WHERE id = ? AND workspaces_count < ?",
            vec![caller.user_id.clone().into(), cap.into()],
        ))
        .await?;
    if took.rows_affected() != 1 {
        return Err(plan_limit("workspaces", cap, cap, &plan));
    }
    let id = insert_workspace(&tx, &name, None, &caller.user_id).await?;
    audit::record(
        &tx,
        &id,
        &caller.user_id,
        &caller.token_name,
        "workspace.create",
        &handle(Kind::Workspace, &id),
        Some(json!({"name": [null, name]})),
    )
    .await?;
    tx.commit().await?;
    let h = handle(Kind::Workspace, &id);
    Ok(fmt.reply(
        StatusCode::CREATED,
        || {
            let mut l = LineBuilder::new(&h);
            l.field("name", &name).field("role", "admin").field("plan", "default");
            format!("{}\n{}\n{}\n", l.finish(), comment("created"), comment(&format!("to work in it: POST /workspaces/{id}/tokens {{\"token_name\":\"…\"}}")))
        },
        || json!({"data": {"handle": h, "id": id, "name": name, "role": "admin", "plan": "default"}, "result": "created"}),
    ))
}

/// `PATCH /workspaces/{id} {"name"}`: an admin renames the workspace
/// (audited workspace.update).
async fn rename(
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
    PathIds(ids): PathIds,
    JsonBody(body): JsonBody<NameBody>,
) -> AppResult<Response> {
    let ws = require_admin(&state, &caller, &ids[0]).await?;
    let name = body.checked_name()?;
    let tx = write_tx(&state.db).await?;
    let backend = tx.get_database_backend();
    let old: String = tx
        .query_one_raw(stmt(
            backend,
            "SELECT name FROM workspaces WHERE id = ?",
            vec![ws.clone().into()],
        ))
        .await?
        .ok_or_else(|| ws_not_found(&ids[0]))?
        .try_get("", "name")?;
    tx.execute_raw(stmt(
        backend,
        "UPDATE workspaces SET name = ? WHERE id = ?",
        vec![name.clone().into(), ws.clone().into()],
    ))
    .await?;
    audit::record(
        &tx,
        &ws,
        &caller.user_id,
        &caller.token_name,
        "workspace.update",
        &handle(Kind::Workspace, &ws),
        Some(json!({"name": [old, name]})),
    )
    .await?;
    tx.commit().await?;
    let h = handle(Kind::Workspace, &ws);
    Ok(fmt.reply(
        StatusCode::OK,
        || {
            let mut l = LineBuilder::new(&h);
            l.field("name", &name);
            format!("{}\n{}\n", l.finish(), comment("updated"))
        },
        || json!({"data": {"handle": h, "id": ws, "name": name}, "result": "updated"}),
    ))
}

#[derive(Deserialize)]
struct TokenBody {
    token_name: Option<String>,
}
impl BodyFields for TokenBody {
    const FIELDS: &'static [&'static str] = &["token_name"];
}

/// Mints a token scoped to another workspace the caller belongs to.
async fn switch(
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
    PathIds(ids): PathIds,
    RawBody(body): RawBody,
) -> AppResult<Response> {
    // A token minted here would outlive the connection's revocation and
    // reach past the workspace it was granted.
    if is_connection(&state, &caller.token_id).await? {
        return Err(AppError::not_granted(
            "a chat client's connection cannot mint tokens",
        ));
    }
    // A workspace with a pending invite to the caller's address is joined
    // here, as a sign-in would (the token proves the address).
    let (ws, invited) = match membership(&state, &caller, &ids[0]).await {
        Ok((ws, _)) => (ws, false),
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            match invited_to(&state, &caller, &ids[0]).await? {
                Some(ws) => (ws, true),
                None => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    let body: TokenBody = if body.iter().all(u8::is_ascii_whitespace) {
        TokenBody { token_name: None }
    } else {
        crate::extract::parse_body(&body)?
    };
    let name = match body.token_name {
        Some(n) => validate::label("token_name", &n, 100)?,
        None => caller.token_name.clone(),
    };
    let tx = write_tx(&state.db).await?;
    let joined = if invited {
        // Only this workspace's invite: taking a token here says nothing of
        // the others.
        let joined = accept_invites(&tx, &caller.user_id, &caller.email, Some(&ws)).await?;
        if !joined.iter().any(|(w, _)| *w == ws) {
            // Withdrawn meanwhile.
            return Err(ws_not_found(&ids[0]));
        }
        joined
    } else {
        Vec::new()
    };
    let minted = mint_token(&tx, &state, &caller.user_id, &ws, &name).await?;
    audit::record(
        &tx,
        &ws,
        &caller.user_id,
        &caller.token_name,
        "token.create",
        &handle(Kind::Token, &minted.id),
        Some(json!({"name": [null, name]})),
    )
    .await?;
    tx.commit().await?;
    Ok(token_reply(fmt, &minted, &caller.email, &joined))
}

/// The workspace `raw` names, if it holds a pending invite to the caller's
/// address.
async fn invited_to(state: &AppState, caller: &Caller, raw: &str) -> AppResult<Option<String>> {
    let Ok(id) = parse_ref(Kind::Workspace, raw) else {
        return Ok(None);
    };
    let row = state
        .db
        .query_one_raw(stmt(
            state.db.get_database_backend(),
            "SELECT 1 AS one FROM invites WHERE workspace_id = ? AND email = ?",
            vec![id.clone().into(), caller.email.clone().into()],
        ))
        .await?;
    Ok(row.map(|_| id))
}

async fn members(
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
    PathIds(ids): PathIds,
) -> AppResult<Response> {
    let (ws, _) = membership(&state, &caller, &ids[0]).await?;
    let backend = state.db.get_database_backend();
    let mut items = Vec::new();
    for r in state
        .db
        .query_all_raw(stmt(
            backend,
            "SELECT u.id, u.email, m.role, m.created_at FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.workspace_id = ? ORDER BY m.created_at, u.id",
            vec![ws.clone().into()],
        ))
        .await?
    {
        let id: String = r.try_get("", "id")?;
        items.push(json!({"handle": handle(Kind::User, &id), "id": id, "email": r.try_get::<String>("", "email")?,
            "role": r.try_get::<String>("", "role")?, "status": "member", "since": r.try_get::<Ts>("", "created_at")?.render()}));
    }
    for r in state
        .db
        .query_all_raw(stmt(
            backend,
            "SELECT id, email, role, invited_by, created_at FROM invites WHERE workspace_id = ? ORDER BY created_at, id",
            vec![ws.clone().into()],
        ))
        .await?
    {
        let id: String = r.try_get("", "id")?;
        items.push(json!({"handle": handle(Kind::Invite, &id), "id": id, "email": r.try_get::<String>("", "email")?,
            "role": r.try_get::<String>("", "role")?, "status": "invited",
            "invited_by": handle(Kind::User, &r.try_get::<String>("", "invited_by")?), "since": r.try_get::<Ts>("", "created_at")?.render()}));
    }
    let line = |v: &serde_json::Value| {
        let mut l = LineBuilder::new(v["handle"].as_str().unwrap_or(""));
        for k in ["email", "role", "status", "invited_by", "since"] {
            if let Some(s) = v[k].as_str() {
                l.field(k, s);
            }
        }
        l.finish()
    };
    Ok(list_reply(
        fmt,
        "members and invites",
        &items,
        None,
        line,
        |v| v.clone(),
    ))
}

#[derive(Deserialize)]
struct InviteBody {
    email: Option<String>,
    role: Option<String>,
}
impl BodyFields for InviteBody {
    const FIELDS: &'static [&'static str] = &["email", "role"];
}

async fn ws_plan(tx: &crate::db::WriteTx, ws: &str) -> AppResult<(String, String)> {
    let row = tx
        .query_one_raw(stmt(
            tx.get_database_backend(),
            "SELECT name, plan FROM workspaces WHERE id = ?",
            vec![ws.into()],
        ))
        .await?
        .ok_or_else(|| ws_not_found(ws))?;
    Ok((row.try_get("", "name")?, row.try_get("", "plan")?))
}

/// Refuses to invite an address that is already a member (409, naming them).
async fn already_member(db: &impl ConnectionTrait, ws: &str, email: &str) -> AppResult<()> {
    let already = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT u.id FROM users u JOIN memberships m ON m.user_id = u.id WHERE u.email = ? AND m.workspace_id = ?",
            vec![email.into(), ws.into()],
        ))
        .await?;
    let Some(row) = already else {
        return Ok(());
    };
    let uid: String = row.try_get("", "id")?;
    Err(AppError::new(
        "conflict",
        StatusCode::CONFLICT,
        format!(
            "{} is already a member ({})",
            validate::mask_email(email),
            handle(Kind::User, &uid)
        ),
        "change their role with POST /workspaces/{id}/members/{userId}/role instead",
    )
    .with("existing", handle(Kind::User, &uid)))
}

/// Refuses an invite that the members cap has no seat for (a pending
/// invite to the address already holds one): checked before a step-up code
/// is mailed; the invite's own UPDATE re-checks it atomically.
async fn seat_for(state: &AppState, ws: &str, email: &str) -> AppResult<()> {
    let db = &*state.db;
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT w.plan, w.members_count, EXISTS (SELECT 1 FROM invites i WHERE i.workspace_id = w.id AND i.email = ?) AS pending \
             FROM workspaces w WHERE w.id = ?",
            vec![email.into(), ws.into()],
        ))
        .await?
        .ok_or_else(|| ws_not_found(ws))?;
    let plan: String = row.try_get("", "plan")?;
    let used = i64::from(row.try_get::<i32>("", "members_count")?);
    let pending: bool = row.try_get("", "pending")?;
    let cap = state.settings.plan(&plan).members;
    if !pending && used >= cap {
        return Err(plan_limit("members", used, cap, &plan));
    }
    Ok(())
}

async fn invite(
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
    PathIds(ids): PathIds,
    OfferedCode(code): OfferedCode,
    JsonBody(body): JsonBody<InviteBody>,
) -> AppResult<Response> {
    let ws = require_admin(&state, &caller, &ids[0]).await?;
    let email = validate::email(
        "email",
        body.email.as_deref().map(str::trim).ok_or_else(|| {
            AppError::invalid(
                "email is required",
                "send {\"email\":\"jane@example.com\",\"role\":\"member\"}",
            )
        })?,
    )?;
    // Without a role, a pending invite keeps its own (a resend must not
    // quietly make an admin's invite a member's); a new one is a member's.
    let role = match body.role {
        Some(r) => role_of(Some(r))?,
        None => state
            .db
            .query_one_raw(stmt(
                state.db.get_database_backend(),
                "SELECT role FROM invites WHERE workspace_id = ? AND email = ?",
                vec![ws.clone().into(), email.clone().into()],
            ))
            .await?
            .map(|r| r.try_get::<String>("", "role"))
            .transpose()?
            .unwrap_or_else(|| "member".into()),
    };
    if role == "admin" {
        // Inviting as admin makes an admin, as a promotion does: the same
        // step-up, bound to this workspace and this address. A member is
        // refused first, before any code is mailed.
        already_member(&*state.db, &ws, &email).await?;
        seat_for(&state, &ws, &email).await?;
        stepup::require(
            &state,
            &caller,
            "invite_admin",
            &format!("{}/{email}", handle(Kind::Workspace, &ws)),
            &format!(
                "invite {} as an admin of workspace {ws}",
                validate::mask_email(&email)
            ),
            code,
        )
        .await?;
    }
    // Every invite mails its address: an account must not become a way to
    // mail anyone any number of times. Counted once it will be mailed (not
    // for one that waits for a step-up code).
    let s = &state.settings;
    ratelimit::hit(
        &state.db,
        &format!("invite-to:{email}"),
        s.auth_per_email,
        s.rate_window,
        "invites mailed to this address",
    )
    .await?;
    ratelimit::hit(
        &state.db,
        &format!("invite-by:{}", caller.user_id),
        INVITES_PER_WINDOW,
        s.rate_window,
        "invites you sent",
    )
    .await?;
    let tx = write_tx(&state.db).await?;
    let backend = tx.get_database_backend();
    already_member(&tx, &ws, &email).await?;
    let (ws_name, plan) = ws_plan(&tx, &ws).await?;
    let now = Ts::now();
    // Re-inviting a pending address updates its role and takes no new seat.
    let pending = tx
        .query_one_raw(stmt(
            backend,
            "SELECT id, role FROM invites WHERE workspace_id = ? AND email = ?",
            vec![ws.clone().into(), email.clone().into()],
        ))
        .await?;
    let mut previous_role = None;
    let (invite_id, result) = match pending {
        Some(row) => {
            let id: String = row.try_get("", "id")?;
            previous_role = Some(row.try_get::<String>("", "role")?);
            tx.execute_raw(stmt(
                backend,
                "UPDATE invites SET role = ? WHERE workspace_id = ? AND id = ?",
                vec![role.clone().into(), ws.clone().into(), id.clone().into()],
            ))
            .await?;
            (id, "updated")
        }
        None => {
            let cap = state.settings.plan(&plan).members;
            let took = tx
                .execute_raw(stmt(
                    backend,
                    "UPDATE workspaces SET members_count = members_count + 1 WHERE id = ? AND members_count < ?",
                    vec![ws.clone().into(), cap.into()],
                ))
                .await?;
            if took.rows_affected() != 1 {
                return Err(plan_limit("members", cap, cap, &plan));
            }
            let id = secrets::new_id(Kind::Invite);
            tx.execute_raw(stmt(
                backend,
                "INSERT INTO invites (workspace_id, id, email, role, invited_by, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                vec![ws.clone().into(), id.clone().into(), email.clone().into(), role.clone().into(), caller.user_id.clone().into(), now.into()],
            ))
            .await?;
            (id, "created")
        }
    };
    // A re-invite changes the pending invite's role: audited as an update
    // from the role it had.
    let (action, changes) = match &previous_role {
        Some(old) => ("invite.update", json!({"role": [old, role]})),
        None => (
            "invite.create",
            json!({"email": [null, email], "role": [null, role]}),
        ),
    };
    audit::record(
        &tx,
        &ws,
        &caller.user_id,
        &caller.token_name,
        action,
        &handle(Kind::Invite, &invite_id),
        Some(changes),
    )
    .await?;
    let base = &state.settings.base_url;
    let mail = Mail {
        to: email.clone(),
        subject: format!("You are invited to the crmkit workspace \"{ws_name}\""),
        text: format!(
            "{} invited you to the crmkit workspace \"{ws_name}\" as {role}.\n\nTo join, sign in with this address, in one of these ways:\n- the crmkit CLI: crmkit login --server {base} --email {email} --workspace {ws}\n- a chat assistant (Claude, ChatGPT, Cursor): connect {base}/mcp and choose the workspace when asked\n- the HTTP API: POST {base}/auth/request {{\"email\":\"{email}\"}}, then POST {base}/auth/verify {{\"email\":\"{email}\",\"code\":\"<the code we email you>\"}}, then POST {base}/workspaces/{ws}/tokens to work in it (signed in already? that call alone joins)\nThe manual: {base}/help\n",
            caller.email
        ),
        html: format!(
            "<p>{} invited you to the crmkit workspace <b>{}</b> as {role}.</p><p>To join, sign in with this address: with the crmkit CLI, <code>crmkit login --server {} --email {} --workspace {ws}</code>; with a chat assistant, connect <code>{}/mcp</code> and choose the workspace; or with the HTTP API, <code>POST {}/auth/request</code>, then <code>POST {}/auth/verify</code> with the emailed code. The manual: {}/help</p>",
            html_escape(&caller.email),
            html_escape(&ws_name),
            html_escape(base),
            html_escape(&email),
            html_escape(base),
            html_escape(base),
            html_escape(base),
            html_escape(base)
        ),
        local_line: format!(
            "to={email} invite to workspace {ws} as {role}: sign in with POST {base}/auth/request, or signed in already POST {base}/workspaces/{ws}/tokens"
        ),
    };
    // Commit, then mail: a transaction held across SMTP would hold the
    // database's one writer (every write of the server) for as long as the
    // mail server takes. A failed send takes the invite back.
    tx.commit().await?;
    if let Err(e) = state.mailer.send(mail).await {
        let taken_back = TakenBack {
            ws: &ws,
            id: &invite_id,
            email: &email,
            role: &role,
            previous_role: previous_role.as_deref(),
        };
        if let Err(undo) = take_back_invite(&state, &caller, taken_back).await {
            tracing::error!(invite = %invite_id, error = %undo.message, "an invite whose mail failed could not be taken back");
        }
        return Err(e);
    }
    let h = handle(Kind::Invite, &invite_id);
    let status = if result == "created" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(fmt.reply(
        status,
        || {
            let mut l = LineBuilder::new(&h);
            l.field("email", &email).field("role", &role).field("status", "invited").field("workspace", &handle(Kind::Workspace, &ws));
            format!("{}\n{}\n{}\n", l.finish(), comment(result), comment("they join at their next sign-in with that address"))
        },
        || json!({"data": {"handle": h, "id": invite_id, "email": email, "role": role, "status": "invited", "workspace": handle(Kind::Workspace, &ws)}, "result": result}),
    ))
}

/// An invite whose mail failed, as the invite request left it.
struct TakenBack<'a> {
    ws: &'a str,
    id: &'a str,
    email: &'a str,
    role: &'a str,
    /// The role of the pending invite that the request updated, if any.
    previous_role: Option<&'a str>,
}

/// Undoes an invite whose mail failed, unless it changed since: a new
/// invite is withdrawn and frees its seat, an updated one gets its role back.
/// An invite accepted meanwhile stays accepted.
async fn take_back_invite(state: &AppState, caller: &Caller, t: TakenBack<'_>) -> AppResult<()> {
    let tx = write_tx(&state.db).await?;
    let backend = tx.get_database_backend();
    let target = handle(Kind::Invite, t.id);
    match t.previous_role {
        None => {
            let gone = tx
                .query_one_raw(stmt(
                    backend,
                    "DELETE FROM invites WHERE workspace_id = ? AND id = ? AND role = ? RETURNING id",
                    vec![t.ws.into(), t.id.into(), t.role.into()],
                ))
                .await?;
            if gone.is_some() {
                tx.execute_raw(stmt(backend, "UPDATE workspaces SET members_count = members_count - 1 WHERE id = ? AND members_count > 0", vec![t.ws.into()])).await?;
                let change = json!({"email": [t.email, null]});
                audit::record(
                    &tx,
                    t.ws,
                    &caller.user_id,
                    &caller.token_name,
                    "invite.withdraw",
                    &target,
                    Some(change),
                )
                .await?;
            }
        }
        Some(previous) => {
            let back = tx
                .execute_raw(stmt(
                    backend,
                    "UPDATE invites SET role = ? WHERE workspace_id = ? AND id = ? AND role = ?",
                    vec![previous.into(), t.ws.into(), t.id.into(), t.role.into()],
                ))
                .await?;
            if back.rows_affected() == 1 {
                let change = json!({"role": [t.role, previous]});
                audit::record(
                    &tx,
                    t.ws,
                    &caller.user_id,
                    &caller.token_name,
                    "invite.update",
                    &target,
                    Some(change),
                )
                .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

async fn withdraw(
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
    PathIds(ids): PathIds,
) -> AppResult<Response> {
    let raw = ids.get(1).map(String::as_str).unwrap_or("");
    let nf = || {
        AppError::not_found(
            "no such pending invite in this workspace",
            "GET /workspaces/{id}/members lists pending invites",
        )
    };
    let id = path_ref(Kind::Invite, raw, nf)?;
    // An admin withdraws any invite; the invitee may decline their own
    // (GET /workspaces shows it). Anyone else gets the admin check's answer.
    let (ws, declining) =
        match require_admin(&state, &caller, &ids[0]).await {
            Ok(ws) => (ws, false),
            Err(refused) => {
                let ws = path_ref(Kind::Workspace, &ids[0], || ws_not_found(&ids[0]))?;
                let theirs = state
                .db
                .query_one_raw(stmt(
                    state.db.get_database_backend(),
                    "SELECT 1 AS one FROM invites WHERE workspace_id = ? AND id = ? AND email = ?",
                    vec![ws.clone().into(), id.clone().into(), caller.email.clone().into()],
                ))
                .await?;
                match theirs {
                    Some(_) => (ws, true),
                    None => return Err(refused),
                }
            }
        };
    let tx = write_tx(&state.db).await?;
    let backend = tx.get_database_backend();
    let row = tx
        .query_one_raw(stmt(
            backend,
            "DELETE FROM invites WHERE workspace_id = ? AND id = ? RETURNING email",
            vec![ws.clone().into(), id.clone().into()],
        ))
        .await?
        .ok_or_else(nf)?;
    let email: String = row.try_get("", "email")?;
    tx.execute_raw(stmt(backend, "UPDATE workspaces SET members_count = members_count - 1 WHERE id = ? AND members_count > 0", vec![ws.clone().into()])).await?;
    audit::record(
        &tx,
        &ws,
        &caller.user_id,
        &caller.token_name,
        if declining {
            "invite.decline"
        } else {
            "invite.withdraw"
        },
        &handle(Kind::Invite, &id),
        Some(json!({"email": [email, null]})),
    )
    .await?;
    tx.commit().await?;
    let h = handle(Kind::Invite, &id);
    let done = if declining { "declined" } else { "withdrew" };
    Ok(fmt.reply(
        StatusCode::OK,
        || format!("{}\n", comment(&format!("{done} {h}"))),
        || json!({"data": {"handle": h, "id": id}, "result": "deleted"}),
    ))
}

/// The member's current role, or 404 when the user is not a member.
async fn member_role(tx: &crate::db::WriteTx, ws: &str, raw: &str) -> AppResult<(String, String)> {
    let nf = || {
        AppError::not_found(
            "no such member in this workspace",
            "GET /workspaces/{id}/members lists members and their user ids",
        )
    };
    let uid = path_ref(Kind::User, raw, nf)?;
    let backend = tx.get_database_backend();
    let lock = if backend == sea_orm::DatabaseBackend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    let row = tx
        .query_one_raw(stmt(
            backend,
            &format!("SELECT role FROM memberships WHERE workspace_id = ? AND user_id = ?{lock}"),
            vec![ws.into(), uid.clone().into()],
        ))
        .await?
        .ok_or_else(nf)?;
    Ok((uid, row.try_get("", "role")?))
}

/// Other admins than `uid`, counted under a lock on the workspace row so two
/// demotions cannot both pass.
async fn other_admins(tx: &crate::db::WriteTx, ws: &str, uid: &str) -> AppResult<i64> {
    let backend = tx.get_database_backend();
    if backend == sea_orm::DatabaseBackend::Postgres {
        tx.execute_raw(stmt(
            backend,
            "SELECT id FROM workspaces WHERE id = ? FOR UPDATE",
            vec![ws.into()],
        ))
        .await?;
    }
    let row = tx
        .query_one_raw(stmt(backend, "SELECT COUNT(*) AS n FROM memberships WHERE workspace_id = ? AND role = 'admin' AND user_id <> ?", vec![ws.into(), uid.into()]))
        .await?;
    Ok(row
        .map(|r| r.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or(0))
}

fn last_admin() -> AppError {
    AppError::new(
        "last_admin",
        StatusCode::CONFLICT,
        "this would leave the workspace without an admin",
        "promote another member to admin first (POST /workspaces/{id}/members/{userId}/role {\"role\":\"admin\"})",
    )
}

#[derive(Deserialize)]
struct RoleBody {
    role: Option<String>,
}
impl BodyFields for RoleBody {
    const FIELDS: &'static [&'static str] = &["role"];
}

async fn set_role(
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
    PathIds(ids): PathIds,
    OfferedCode(code): OfferedCode,
    JsonBody(body): JsonBody<RoleBody>,
) -> AppResult<Response> {
    let ws = require_admin(&state, &caller, &ids[0]).await?;
    let role = role_of(body.role)?;
    let raw_user = ids.get(1).map(String::as_str).unwrap_or("");
    {
        // Validate the target before any step-up mail goes out.
        let tx = write_tx(&state.db).await?;
        member_role(&tx, &ws, raw_user).await?;
        tx.rollback().await?;
    }
    let uid = parse_ref(Kind::User, raw_user).unwrap_or_default();
    let target = format!(
        "{}/{}",
        handle(Kind::Workspace, &ws),
        handle(Kind::User, &uid)
    );
    if role == "admin" {
        stepup::require(
            &state,
            &caller,
            "promote",
            &target,
            &format!(
                "make {} an admin of workspace {ws}",
                handle(Kind::User, &uid)
            ),
            code,
        )
        .await?;
    }
    let tx = write_tx(&state.db).await?;
    let (uid, old) = member_role(&tx, &ws, raw_user).await?;
    if old == "admin" && role == "member" && other_admins(&tx, &ws, &uid).await? == 0 {
        return Err(last_admin());
    }
    if old != role {
        tx.execute_raw(stmt(
            tx.get_database_backend(),
            "UPDATE memberships SET role = ? WHERE workspace_id = ? AND user_id = ?",
            vec![role.clone().into(), ws.clone().into(), uid.clone().into()],
        ))
        .await?;
        audit::record(
            &tx,
            &ws,
            &caller.user_id,
            &caller.token_name,
            "member.role",
            &handle(Kind::User, &uid),
            Some(json!({"role": [old, role]})),
        )
        .await?;
    }
    tx.commit().await?;
    state.tokens.forget_all();
    let h = handle(Kind::User, &uid);
    Ok(fmt.reply(
        StatusCode::OK,
        || {
            let mut l = LineBuilder::new(&h);
            l.field("role", &role).field("workspace", &handle(Kind::Workspace, &ws));
            format!("{}\n{}\n", l.finish(), comment("updated"))
        },
        || json!({"data": {"handle": h, "id": uid, "role": role, "workspace": handle(Kind::Workspace, &ws)}, "result": "updated"}),
    ))
}

async fn remove_member(
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
    PathIds(ids): PathIds,
) -> AppResult<Response> {
    // Anyone may leave (remove themself); removing another takes an admin.
    let raw_user = ids.get(1).map(String::as_str).unwrap_or("");
    let leaving = parse_ref(Kind::User, raw_user).is_ok_and(|u| u == caller.user_id);
    let ws = if leaving {
        membership(&state, &caller, &ids[0]).await?.0
    } else {
        require_admin(&state, &caller, &ids[0]).await?
    };
    let tx = write_tx(&state.db).await?;
    let backend = tx.get_database_backend();
    let (uid, role) = member_role(&tx, &ws, raw_user).await?;
    if leaving {
        let personal = tx
            .query_one_raw(stmt(
                backend,
                "SELECT 1 AS one FROM workspaces WHERE id = ? AND personal_of = ?",
                vec![ws.clone().into(), uid.clone().into()],
            ))
            .await?;
        if personal.is_some() {
            return Err(AppError::new(
                "conflict",
                StatusCode::CONFLICT,
                "your personal workspace cannot be left: a sign-in always has it to land in",
                "to end its data, delete it (DELETE /workspaces/{id} with the emailed code); it is made again, empty, at your next sign-in",
            ));
        }
    }
    if role == "admin" && other_admins(&tx, &ws, &uid).await? == 0 {
        return Err(last_admin());
    }
    tx.execute_raw(stmt(
        backend,
        "DELETE FROM memberships WHERE workspace_id = ? AND user_id = ?",
        vec![ws.clone().into(), uid.clone().into()],
    ))
    .await?;
    // Their tokens for this workspace die with the membership.
    let killed = tx
        .execute_raw(stmt(
            backend,
            "DELETE FROM tokens WHERE workspace_id = ? AND user_id = ?",
            vec![ws.clone().into(), uid.clone().into()],
        ))
        .await?;
    tx.execute_raw(stmt(backend, "UPDATE workspaces SET members_count = members_count - 1 WHERE id = ? AND members_count > 0", vec![ws.clone().into()])).await?;
    audit::record(
        &tx,
        &ws,
        &caller.user_id,
        &caller.token_name,
        if leaving {
            "member.leave"
        } else {
            "member.remove"
        },
        &handle(Kind::User, &uid),
        Some(json!({"role": [role, null]})),
    )
    .await?;
    tx.commit().await?;
    state.tokens.forget_all();
    let h = handle(Kind::User, &uid);
    let n = killed.rows_affected();
    Ok(fmt.reply(
        StatusCode::OK,
        || {
            if leaving {
                format!(
                    "{}\n{}\n",
                    comment(&format!("you left {}", handle(Kind::Workspace, &ws))),
                    comment(&if ws == caller.workspace_id {
                        format!("{n} of your tokens for it revoked, this one included: continue with a token for another workspace, or sign in again")
                    } else {
                        format!("{n} of your tokens for it revoked")
                    })
                )
            } else {
                format!(
                    "{}\n{}\n",
                    comment(&format!("removed {h}")),
                    comment(&format!("{n} of their tokens for this workspace revoked"))
                )
            }
        },
        || json!({"data": {"handle": h, "id": uid, "tokens_revoked": n}, "result": "deleted"}),
    ))
}

/// Tables holding a workspace's data, all keyed by `workspace_id`.
const OWNED: &[&str] = &[
    "activities",
    "deals",
    "contacts",
    "companies",
    "audit",
    "invites",
    "confirmations",
    "tokens",
    "memberships",
];

async fn delete_workspace(
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
    PathIds(ids): PathIds,
    OfferedCode(code): OfferedCode,
) -> AppResult<Response> {
    let ws = require_admin(&state, &caller, &ids[0]).await?;
    let target = handle(Kind::Workspace, &ws);
    stepup::require(
        &state,
        &caller,
        "delete-workspace",
        &target,
        &format!("delete workspace {ws} and all its data"),
        code,
    )
    .await?;
    let tx = write_tx(&state.db).await?;
    let backend = tx.get_database_backend();
    let owner = tx
        .query_one_raw(stmt(
            backend,
            "SELECT created_by, name FROM workspaces WHERE id = ?",
            vec![ws.clone().into()],
        ))
        .await?
        .ok_or_else(|| ws_not_found(&ws))?;
    let created_by: String = owner.try_get("", "created_by")?;
    let name: String = owner.try_get("", "name")?;
    // The workspace's own audit log goes with it: the deletion is recorded
    // in the personal workspace of each of its members instead (the
    // caller's included), so everyone who lost it can see who deleted it.
    let personal = tx
        .query_all_raw(stmt(
            backend,
            "SELECT p.id FROM memberships m JOIN workspaces p ON p.personal_of = m.user_id \
             WHERE m.workspace_id = ? AND p.id <> ?",
            vec![ws.clone().into(), ws.clone().into()],
        ))
        .await?
        .iter()
        .map(|r| r.try_get::<String>("", "id"))
        .collect::<Result<Vec<_>, _>>()?;
    if backend == sea_orm::DatabaseBackend::Sqlite {
        // The search index knows rows by search key only: clear it first.
        for t in ["contacts", "companies", "deals"] {
            tx.execute_raw(stmt(
                backend,
                &format!("DELETE FROM {t}_fts WHERE rowid IN (SELECT search_key FROM {t} WHERE workspace_id = ?)"),
                vec![ws.clone().into()],
            ))
            .await?;
        }
    }
    for table in OWNED {
        tx.execute_raw(stmt(
            backend,
            &format!("DELETE FROM {table} WHERE workspace_id = ?"),
            vec![ws.clone().into()],
        ))
        .await?;
    }
    tx.execute_raw(stmt(
        backend,
        "DELETE FROM escalations WHERE target LIKE ?",
        vec![format!("{target}%").into()],
    ))
    .await?;
    tx.execute_raw(stmt(
        backend,
        "DELETE FROM workspaces WHERE id = ?",
        vec![ws.clone().into()],
    ))
    .await?;
    tx.execute_raw(stmt(backend, "UPDATE users SET workspaces_count = workspaces_count - 1 WHERE id = ? AND workspaces_count > 0", vec![created_by.into()])).await?;
    for p in &personal {
        audit::record(
            &tx,
            p,
            &caller.user_id,
            &caller.token_name,
            "workspace.delete",
            &target,
            Some(json!({"name": [name, null]})),
        )
        .await?;
    }
    tx.commit().await?;
    state.tokens.forget_all();
    tracing::info!(workspace = %target, "workspace deleted");
    Ok(fmt.reply(
        StatusCode::OK,
        || format!("{}\n{}\n", comment(&format!("deleted {target} with all its records, members, invites and tokens")), comment("its tokens are revoked, the one you used too if it acted there: continue with a token for another workspace (GET /workspaces, then POST /workspaces/{id}/tokens), or sign in again")),
        || json!({"data": {"handle": target, "id": ws}, "result": "deleted"}),
    ))
}

/// A new workspace on the default plan with `creator` as its admin.
async fn insert_workspace(
    tx: &crate::db::WriteTx,
    name: &str,
    personal_of: Option<&str>,
    creator: &str,
) -> AppResult<String> {
    let backend = tx.get_database_backend();
    let id = secrets::new_id(Kind::Workspace);
    let now = Ts::now();
    tx.execute_raw(stmt(
        backend,
        "INSERT INTO workspaces (id, name, plan, personal_of, created_by, contacts_count, companies_count, deals_count, members_count, created_at) \
         VALUES (?, ?, 'default', ?, ?, 0, 0, 0, 1, ?)",
        vec![id.clone().into(), name.into(), personal_of.map(str::to_string).into(), creator.into(), now.into()],
    ))
    .await?;
    tx.execute_raw(stmt(
        backend,
        "INSERT INTO memberships (workspace_id, user_id, role, created_at) VALUES (?, ?, 'admin', ?)",
        vec![id.clone().into(), creator.into(), now.into()],
    ))
    .await?;
    Ok(id)
}

/// Turns every pending invite for `email` into a membership.
/// Turns the pending invites to `email` (all, or only the one to workspace
/// `only`) into memberships; returns the workspaces joined now, with the
/// role.
pub async fn accept_invites(
    tx: &crate::db::WriteTx,
    user_id: &str,
    email: &str,
    only: Option<&str>,
) -> AppResult<Vec<(String, String)>> {
    let mut joined_now = Vec::new();
    let backend = tx.get_database_backend();
    let (filter, mut values) = match only {
        Some(ws) => (" AND workspace_id = ?", vec![ws.into()]),
        None => ("", Vec::new()),
    };
    values.insert(0, email.into());
    let invites = tx
        .query_all_raw(stmt(
            backend,
            &format!("SELECT workspace_id, id, role FROM invites WHERE email = ?{filter}"),
            values,
        ))
        .await?;
    for inv in invites {
        let ws: String = inv.try_get("", "workspace_id")?;
        let id: String = inv.try_get("", "id")?;
        let role: String = inv.try_get("", "role")?;
        let joined = tx
            .execute_raw(stmt(
                backend,
                "INSERT INTO memberships (workspace_id, user_id, role, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (workspace_id, user_id) DO NOTHING",
                vec![ws.clone().into(), user_id.into(), role.clone().into(), Ts::now().into()],
            ))
            .await?;
        tx.execute_raw(stmt(
            backend,
            "DELETE FROM invites WHERE workspace_id = ? AND id = ?",
            vec![ws.clone().into(), id.into()],
        ))
        .await?;
        if joined.rows_affected() == 0 {
            // Already a member: the invite's seat is freed.
            tx.execute_raw(stmt(
                backend,
                "UPDATE workspaces SET members_count = members_count - 1 WHERE id = ?",
                vec![ws.clone().into()],
            ))
            .await?;
        } else {
            audit::record(
                tx,
                &ws,
                user_id,
                "-",
                "member.join",
                &handle(Kind::User, user_id),
                Some(json!({"role": [null, role]})),
            )
            .await?;
            joined_now.push((ws, role));
        }
    }
    Ok(joined_now)
}

/// The workspace a sign-in acts in: the user's personal workspace, created
/// on first sign-in (and again after the user deleted it, if the workspaces
/// cap has room; else the newest workspace the user belongs to).
pub async fn ensure_personal(
    tx: &crate::db::WriteTx,
    settings: &crate::config::Settings,
    user_id: &str,
    email: &str,
) -> AppResult<String> {
    let backend = tx.get_database_backend();
    if let Some(row) = tx
        .query_one_raw(stmt(
            backend,
            "SELECT id FROM workspaces WHERE personal_of = ?",
            vec![user_id.into()],
        ))
        .await?
    {
        return Ok(row.try_get("", "id")?);
    }
    // A new personal workspace counts against the user's cap like any
    // other (a user who deleted theirs may have created others since).
    let plan: String = tx
        .query_one_raw(stmt(
            backend,
            "SELECT plan FROM users WHERE id = ?",
            vec![user_id.into()],
        ))
        .await?
        .map(|r| r.try_get("", "plan"))
        .transpose()?
        .unwrap_or_else(|| "default".into());
    let cap = settings.plan(&plan).workspaces;
    let took = tx
        .execute_raw(stmt(
            backend,
            "UPDATE users SET workspaces_count = workspaces_count + 1 WHERE id = ? AND workspaces_count < ?",
            vec![user_id.into(), cap.into()],
        ))
        .await?;
    if took.rows_affected() != 1 {
        // At the cap: the sign-in goes to the newest workspace the user
        // belongs to; with none, there is nowhere for a token to act.
        let newest = tx
            .query_one_raw(stmt(
                backend,
                "SELECT workspace_id FROM memberships WHERE user_id = ? ORDER BY created_at DESC, workspace_id LIMIT 1",
                vec![user_id.into()],
            ))
            .await?;
        return match newest {
            Some(row) => Ok(row.try_get("", "workspace_id")?),
            None => Err(plan_limit("workspaces", cap, cap, &plan)),
        };
    }
    let local = email.split('@').next().unwrap_or("my");
    let name = format!("{local}'s workspace");
    let id = insert_workspace(tx, &name, Some(user_id), user_id).await?;
    audit::record(
        tx,
        &id,
        user_id,
        "-",
        "workspace.create",
        &handle(Kind::Workspace, &id),
        Some(json!({"name": [null, name]})),
    )
    .await?;
    Ok(id)
}
