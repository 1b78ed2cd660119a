//! Email one-time-code sign-in: `POST /auth/request` and `POST /auth/verify`.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use sea_orm::ConnectionTrait;
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::auth::ClientIp;
use crate::db::{Ts, stmt, write_tx};
use crate::error::{AppError, AppResult};
use crate::extract::{BodyFields, JsonBody};
use crate::mail::{Mail, html_escape};
use crate::negotiate::Fmt;
use crate::routes::audit;
use crate::wire::handle::{Kind, handle};
use crate::wire::line::{LineBuilder, comment};
use crate::{ratelimit, secrets, validate};

/// How long a login code lives.
pub const CODE_TTL: std::time::Duration = std::time::Duration::from_secs(600);
/// Wrong tries a code survives.
pub const CODE_TRIES: i32 = 5;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/request", post(request_code))
        .route("/auth/verify", post(verify_code))
        .route_layer(axum::middleware::from_fn(crate::extract::no_params))
}

#[derive(Deserialize)]
struct RequestBody {
    email: Option<String>,
}
impl BodyFields for RequestBody {
    const FIELDS: &'static [&'static str] = &["email"];
}

fn required<T>(v: Option<T>, field: &str, example: &str) -> AppResult<T> {
    v.ok_or_else(|| {
        AppError::invalid(
            format!("{field} is required"),
            format!("send {{\"{field}\": {example}}}"),
        )
    })
}

async fn request_code(
    State(state): State<AppState>,
    fmt: Fmt,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<RequestBody>,
) -> AppResult<Response> {
    let email = validate::email(
        "email",
        &required(body.email, "email", "\"jane@example.com\"")?,
    )?;
    send_login_code(&state, &email, &ip).await?;
    let masked = validate::mask_email(&email);
    Ok(fmt.reply(
        StatusCode::OK,
        || {
            format!(
                "{}\n{}\n",
                comment(&format!("code sent to {masked} if it can receive mail; it expires in 10 minutes")),
                comment("next: POST /auth/verify {\"email\":…,\"code\":\"123456\",\"token_name\":\"my-agent\"}")
            )
        },
        || json!({"data": {"sent_to": masked, "expires_in": 600}, "result": "sent"}),
    ))
}

#[derive(Deserialize)]
struct VerifyBody {
    email: Option<String>,
    code: Option<String>,
    token_name: Option<String>,
}
impl BodyFields for VerifyBody {
    const FIELDS: &'static [&'static str] = &["email", "code", "token_name"];
}

pub fn invalid_code(status: StatusCode) -> AppError {
    AppError::new(
        "invalid_code",
        status,
        "the code is wrong, used, expired or has had too many tries",
        "do not guess: check the code with the user and send it again (5 tries per code); if it is lost, expired or used up, request a fresh one (POST /auth/request) and use the newest",
    )
}

async fn verify_code(
    State(state): State<AppState>,
    fmt: Fmt,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<VerifyBody>,
) -> AppResult<Response> {
    let email = validate::email(
        "email",
        &required(body.email, "email", "\"jane@example.com\"")?,
    )?;
    let code = required(body.code, "code", "\"123456\"")?;
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AppError::invalid(
            "code must be exactly 6 digits",
            "send the 6-digit code from the email as a string, e.g. \"042917\"",
        ));
    }
    let token_name = match body.token_name {
        Some(n) => validate::label("token_name", &n, 100)?,
        None => "default".to_string(),
    };
    let (tx, user_id, workspace_id, joined) = redeem_login_code(&state, &email, &code, &ip).await?;
    let minted = mint_token(&tx, &state, &user_id, &workspace_id, &token_name).await?;
    audit::record(
        &tx,
        &workspace_id,
        &user_id,
        &token_name,
        "token.create",
        &handle(Kind::Token, &minted.id),
        Some(json!({"name": [null, token_name]})),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(user = %handle(Kind::User, &user_id), "signed in");
    Ok(token_reply(fmt, &minted, &email, &joined))
}

/// Rate-limits, stores and mails a fresh login code for `email` (shared by
/// `/auth/request` and the OAuth sign-in page).
pub async fn send_login_code(state: &AppState, email: &str, ip: &str) -> AppResult<()> {
    let email = email.to_string();
    let s = &state.settings;
    ratelimit::hit(
        &state.db,
        &format!("auth-ip:{ip}"),
        s.auth_per_ip,
        s.rate_window,
        "sign-in requests from this address",
    )
    .await?;
    ratelimit::hit(
        &state.db,
        &format!("auth-email:{email}"),
        s.auth_per_email,
        s.rate_window,
        "codes requested for this email address",
    )
    .await?;
    if rand::random_range(0..50u32) == 0 {
        ratelimit::sweep(&state.db, s.rate_window).await?;
    }

    let code = secrets::new_code();
    let code_hash = secrets::code_hash(&email, &code);
    let db = &state.db;
    let backend = db.get_database_backend();
    // A new request replaces the previous code and resets its tries.
    db.execute_raw(stmt(
        backend,
        "INSERT INTO login_codes (email, code_hash, attempts, expires_at) VALUES (?, ?, 0, ?) \
         ON CONFLICT (email) DO UPDATE SET code_hash = excluded.code_hash, attempts = 0, \
         expires_at = excluded.expires_at",
        vec![
            email.clone().into(),
            code_hash.clone().into(),
            Ts::now().plus(CODE_TTL).into(),
        ],
    ))
    .await?;

    let base = &s.base_url;
    let mail = Mail {
        to: email.clone(),
        subject: format!("Your crmkit sign-in code: {code}"),
        text: format!(
            "Your crmkit sign-in code is {code}\n\nIt works once and expires in 10 minutes.\n\
             Send it with: POST {base}/auth/verify {{\"email\":\"{email}\",\"code\":\"{code}\"}}\n\n\
             If you did not ask for it, ignore this mail.\n"
        ),
        html: format!(
            "<p>Your crmkit sign-in code is <b style=\"font-size:1.4em\">{code}</b></p>\
             <p>It works once and expires in 10 minutes.</p>\
             <p>If you did not ask for it, ignore this mail.</p><p>{}</p>",
            html_escape(base)
        ),
        local_line: format!("to={email} sign-in code={code} (expires in 10 minutes)"),
    };
    if let Err(e) = state.mailer.send(mail).await {
        // Never leave a code behind that its owner cannot have received.
        db.execute_raw(stmt(
            backend,
            "DELETE FROM login_codes WHERE email = ? AND code_hash = ?",
            vec![email.clone().into(), code_hash.into()],
        ))
        .await?;
        return Err(e);
    }
    Ok(())
}

/// Checks a login code (atomically: tries counted first, single use) and, in
/// the returned open transaction, signs the user in: creates the account on
/// first use, accepts pending invites, ensures the personal workspace.
pub async fn redeem_login_code(
    state: &AppState,
    email: &str,
    code: &str,
    ip: &str,
) -> AppResult<(crate::db::WriteTx, String, String, Vec<(String, String)>)> {
    let email = email.to_string();
    let s = &state.settings;
    ratelimit::hit(
        &state.db,
        &format!("auth-ip:{ip}"),
        s.auth_per_ip,
        s.rate_window,
        "sign-in attempts from this address",
    )
    .await?;

    let db = &state.db;
    let backend = db.get_database_backend();
    let now = Ts::now();
    // Count the try first, atomically; a code past its tries or time yields no row.
    let row = db
        .query_one_raw(stmt(
            backend,
            "UPDATE login_codes SET attempts = attempts + 1 \
             WHERE email = ? AND expires_at > ? AND attempts < ? RETURNING code_hash",
            vec![email.clone().into(), now.into(), CODE_TRIES.into()],
        ))
        .await?;
    let Some(row) = row else {
        return Err(invalid_code(StatusCode::UNAUTHORIZED));
    };
    let stored: String = row.try_get("", "code_hash")?;
    let offered = secrets::code_hash(&email, code);
    if !secrets::ct_eq(&stored, &offered) {
        return Err(invalid_code(StatusCode::UNAUTHORIZED));
    }

    let tx = write_tx(db).await?;
    // Single use: of parallel verifications only the one that deletes the row wins.
    let used = tx
        .execute_raw(stmt(
            backend,
            "DELETE FROM login_codes WHERE email = ? AND code_hash = ?",
            vec![email.clone().into(), stored.into()],
        ))
        .await?;
    if used.rows_affected() != 1 {
        return Err(invalid_code(StatusCode::UNAUTHORIZED));
    }
    let user_id = find_or_create_user(&tx, &email).await?;
    let joined = crate::routes::workspaces::accept_invites(&tx, &user_id, &email, None).await?;
    let workspace_id =
        crate::routes::workspaces::ensure_personal(&tx, &state.settings, &user_id, &email).await?;
    Ok((tx, user_id, workspace_id, joined))
}

pub struct Minted {
    pub id: String,
    pub secret: String,
    pub user_id: String,
    pub workspace_id: String,
    pub name: String,
    pub expires_at: Ts,
}

/// Creates a token for `user` in `workspace`; only its hash is stored.
pub async fn mint_token(
    tx: &crate::db::WriteTx,
    state: &AppState,
    user_id: &str,
    workspace_id: &str,
    name: &str,
) -> AppResult<Minted> {
    let id = secrets::new_id(Kind::Token);
    let secret = secrets::new_token();
    let now = Ts::now();
    let expires_at = now.plus(state.settings.token_idle_ttl);
    tx.execute_raw(stmt(
        tx.get_database_backend(),
        "INSERT INTO tokens (id, hash, user_id, workspace_id, name, created_at, last_used_at, expires_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        vec![
            id.clone().into(),
            secrets::hash(&secret).into(),
            user_id.into(),
            workspace_id.into(),
            name.into(),
            now.into(),
            now.into(),
            expires_at.into(),
        ],
    ))
    .await?;
    Ok(Minted {
        id,
        secret,
        user_id: user_id.to_string(),
        workspace_id: workspace_id.to_string(),
        name: name.to_string(),
        expires_at,
    })
}

/// The answer that hands a new token to its owner (the only time it is shown).
/// A minted token's answer; `joined` are the workspaces (and roles) that
/// pending invites made this sign-in join.
pub fn token_reply(fmt: Fmt, t: &Minted, email: &str, joined: &[(String, String)]) -> Response {
    fmt.reply(
        StatusCode::CREATED,
        || {
            let mut line = LineBuilder::new(&handle(Kind::Token, &t.id));
            line.field("token", &t.secret)
                .field("name", &t.name)
                .field("user", &handle(Kind::User, &t.user_id))
                .field("workspace", &handle(Kind::Workspace, &t.workspace_id))
                .field("expires_at", &t.expires_at.render());
            let mut out = format!(
                "{}\n{}\n{}\n",
                line.finish(),
                comment("created"),
                comment(&format!(
                    "signed in as {email}; send Authorization: Bearer <token> on every request; it expires when idle"
                ))
            );
            for (ws, role) in joined {
                let there = if *ws == t.workspace_id {
                    "this token works there".to_owned()
                } else {
                    format!("to work there: POST /workspaces/{ws}/tokens")
                };
                out.push_str(&comment(&format!(
                    "joined {} as {role} (invited); {there}",
                    handle(Kind::Workspace, ws)
                )));
                out.push('\n');
            }
            out
        },
        || {
            json!({"data": {
                "handle": handle(Kind::Token, &t.id), "id": t.id, "token": t.secret, "name": t.name,
                "user": handle(Kind::User, &t.user_id), "email": email,
                "workspace": handle(Kind::Workspace, &t.workspace_id),
                "expires_at": t.expires_at.render(),
            }, "result": "created",
            "joined": joined.iter().map(|(ws, role)| json!({"workspace": handle(Kind::Workspace, ws), "role": role})).collect::<Vec<_>>()})
        },
    )
}

async fn find_or_create_user(tx: &crate::db::WriteTx, email: &str) -> AppResult<String> {
    let backend = tx.get_database_backend();
    let new_id = secrets::new_id(Kind::User);
    tx.execute_raw(stmt(
        backend,
        "INSERT INTO users (id, email, plan, workspaces_count, created_at) VALUES (?, ?, 'default', 0, ?) \
         ON CONFLICT (email) DO NOTHING",
        vec![new_id.into(), email.into(), Ts::now().into()],
    ))
    .await?;
    let row = tx
        .query_one_raw(stmt(
            backend,
            "SELECT id FROM users WHERE email = ?",
            vec![email.into()],
        ))
        .await?
        .ok_or_else(|| AppError::internal("user vanished after insert"))?;
    Ok(row.try_get("", "id")?)
}
