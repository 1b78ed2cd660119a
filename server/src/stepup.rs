//! Step-up: sensitive calls (promote to admin, delete a workspace) need a code
//! emailed to the caller, bound to the user, the action and its target.
//!
//! The first call answers `escalation_required` and mails a code; the same call
//! repeated with `?code=` or `X-Escalation-Code:` performs it. Codes are single
//! use, live 10 minutes and survive 5 wrong tries, checked with atomic updates.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use sea_orm::ConnectionTrait;

use crate::app::AppState;
use crate::auth::Caller;
use crate::db::{Ts, stmt};
use crate::error::{AppError, AppResult};
use crate::extract::decode_query;
use crate::mail::{Mail, html_escape};
use crate::{secrets, validate};

pub const ESCALATION_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// The step-up code sent with a request, if any (`?code=` or the header).
pub struct OfferedCode(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for OfferedCode {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(v) = parts.headers.get("x-escalation-code") {
            let v = v.to_str().map_err(|_| {
                AppError::invalid(
                    "X-Escalation-Code is not text",
                    "send the 6-digit code from the email",
                )
            })?;
            return Ok(OfferedCode(Some(v.trim().to_string())));
        }
        let pairs = decode_query(parts.uri.query().unwrap_or(""))?;
        Ok(OfferedCode(
            pairs
                .into_iter()
                .find(|(k, _)| k == "code")
                .map(|(_, v)| v.trim().to_string()),
        ))
    }
}

fn binding(user: &str, action: &str, target: &str) -> String {
    format!("{user}\n{action}\n{target}")
}

fn refused() -> AppError {
    AppError::new(
        "invalid_code",
        StatusCode::FORBIDDEN,
        "the step-up code is wrong, used, expired, or was issued for another action or target",
        "check the code with the user and repeat with it (5 tries per code); only if it was lost or expired, repeat the request without a code to have a fresh one emailed",
    )
}

/// Passes when `offered` is the live code for (caller, action, target);
/// otherwise mails a fresh code (no code offered) or refuses (wrong code).
pub async fn require(
    state: &AppState,
    caller: &Caller,
    action: &str,
    target: &str,
    describe: &str,
    offered: Option<String>,
) -> AppResult<()> {
    let db = &state.db;
    let backend = db.get_database_backend();
    let bind = binding(&caller.user_id, action, target);
    if let Some(code) = offered.filter(|c| !c.is_empty()) {
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refused());
        }
        let row = db
            .query_one_raw(stmt(
                backend,
                "UPDATE escalations SET attempts = attempts + 1 WHERE user_id = ? AND action = ? AND target = ? \
                 AND expires_at > ? AND attempts < 5 RETURNING code_hash",
                vec![caller.user_id.clone().into(), action.into(), target.into(), Ts::now().into()],
            ))
            .await?
            .ok_or_else(refused)?;
        let stored: String = row.try_get("", "code_hash")?;
        if !secrets::ct_eq(&stored, &secrets::code_hash(&bind, &code)) {
            return Err(refused());
        }
        let used = db
            .execute_raw(stmt(
                backend,
                "DELETE FROM escalations WHERE user_id = ? AND action = ? AND target = ? AND code_hash = ?",
                vec![caller.user_id.clone().into(), action.into(), target.into(), stored.into()],
            ))
            .await?;
        return if used.rows_affected() == 1 {
            Ok(())
        } else {
            Err(refused())
        };
    }

    // Each fresh code is a mail and five more tries: as many as sign-in
    // codes per address and window.
    crate::ratelimit::hit(
        db,
        &format!("stepup:{}", caller.user_id),
        state.settings.auth_per_email,
        state.settings.rate_window,
        "confirmation codes requested",
    )
    .await?;
    let code = secrets::new_code();
    let hash = secrets::code_hash(&bind, &code);
    db.execute_raw(stmt(
        backend,
        "INSERT INTO escalations (user_id, action, target, code_hash, attempts, expires_at) VALUES (?, ?, ?, ?, 0, ?) \
         ON CONFLICT (user_id, action, target) DO UPDATE SET code_hash = excluded.code_hash, attempts = 0, expires_at = excluded.expires_at",
        vec![caller.user_id.clone().into(), action.into(), target.into(), hash.clone().into(), Ts::now().plus(ESCALATION_TTL).into()],
    ))
    .await?;
    let mail = Mail {
        to: caller.email.clone(),
        subject: format!("crmkit confirmation code: {code}"),
        text: format!(
            "Someone using your crmkit session \"{}\" asked to {describe}.\n\nThe confirmation code is {code}. It works once, for that action only, for 10 minutes.\nIf this was not you, do not share it, and revoke the session (GET /tokens, DELETE /tokens/{{id}}).\n",
            caller.token_name
        ),
        html: format!(
            "<p>Someone using your crmkit session <b>{}</b> asked to {}.</p><p>The confirmation code is <b style=\"font-size:1.4em\">{code}</b>. It works once, for that action only, for 10 minutes.</p><p>If this was not you, do not share it.</p>",
            html_escape(&caller.token_name),
            html_escape(describe)
        ),
        local_line: format!(
            "to={} step-up code={code} to {describe} (expires in 10 minutes)",
            caller.email
        ),
    };
    if let Err(e) = state.mailer.send(mail).await {
        db.execute_raw(stmt(
            backend,
            "DELETE FROM escalations WHERE user_id = ? AND action = ? AND target = ? AND code_hash = ?",
            vec![caller.user_id.clone().into(), action.into(), target.into(), hash.into()],
        ))
        .await?;
        return Err(e);
    }
    Err(AppError::new(
        "escalation_required",
        StatusCode::FORBIDDEN,
        format!(
            "to {describe}, a confirmation code was emailed to {}",
            validate::mask_email(&caller.email)
        ),
        "ask the user for the 6-digit code from that email, then repeat the same request with ?code=CODE or header X-Escalation-Code: CODE (valid 10 minutes)",
    ))
}
