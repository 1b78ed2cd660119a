//! One error type for every endpoint: a stable code, a status, a message that
//! names what was wrong and a hint that says what to do next.
//!
//! Handlers return `AppError`; its `IntoResponse` only tags the response, and the
//! negotiation middleware renders it as text or JSON for the request (so the
//! same error reads right in both formats). Internal details are logged there
//! with the request id and never reach the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

/// An API error. Boxed, so `Result<T, AppError>` stays small on the happy path.
#[derive(Debug, Clone)]
pub struct AppError(Box<ErrorBody>);

#[derive(Debug, Clone)]
pub struct ErrorBody {
    pub code: &'static str,
    pub status: StatusCode,
    pub message: String,
    pub hint: String,
    /// Extra JSON fields (`allowed`, `confirm`, …), also printed as text lines.
    pub extra: Map<String, Value>,
    pub retry_after: Option<u64>,
    /// What went wrong inside, for the log only.
    pub internal: Option<String>,
    /// Extra headers (e.g. `WWW-Authenticate`).
    pub headers: Vec<(&'static str, String)>,
}

impl std::ops::Deref for AppError {
    type Target = ErrorBody;
    fn deref(&self) -> &ErrorBody {
        &self.0
    }
}

impl std::ops::DerefMut for AppError {
    fn deref_mut(&mut self) -> &mut ErrorBody {
        &mut self.0
    }
}

impl AppError {
    pub fn new(
        code: &'static str,
        status: StatusCode,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        AppError(Box::new(ErrorBody {
            code,
            status,
            message: message.into(),
            hint: hint.into(),
            extra: Map::new(),
            retry_after: None,
            internal: None,
            headers: Vec::new(),
        }))
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    pub fn allowed<S: AsRef<str>>(self, allowed: &[S]) -> Self {
        let list: Vec<Value> = allowed.iter().map(|s| Value::from(s.as_ref())).collect();
        self.with("allowed", list)
    }

    pub fn invalid(message: impl Into<String>, hint: impl Into<String>) -> Self {
        AppError::new("invalid_request", StatusCode::BAD_REQUEST, message, hint)
    }

    pub fn not_found(message: impl Into<String>, hint: impl Into<String>) -> Self {
        AppError::new("not_found", StatusCode::NOT_FOUND, message, hint)
    }

    pub fn auth_required() -> Self {
        AppError::new(
            "auth_required",
            StatusCode::UNAUTHORIZED,
            "this endpoint needs a bearer token",
            "send Authorization: Bearer ck_…; get a token with POST /auth/request then POST /auth/verify (GET /help)",
        )
    }

    pub fn invalid_token() -> Self {
        AppError::new(
            "invalid_token",
            StatusCode::UNAUTHORIZED,
            "the bearer token is unknown, malformed or revoked (signing out, a revocation, a deleted workspace or removal from the workspace ends a token)",
            "do not retry with this token; sign in again with POST /auth/request then POST /auth/verify (a member removed from a workspace needs a new invite to work there again)",
        )
    }

    pub fn rate_limited(what: &str, retry_after: u64) -> Self {
        let mut e = AppError::new(
            "rate_limited",
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many {what}"),
            format!("wait {retry_after} seconds (Retry-After) before trying again"),
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// A chat client's connection (an OAuth token) reaching past the one
    /// workspace the user granted it at consent.
    pub fn not_granted(message: impl Into<String>) -> Self {
        AppError::new(
            "not_granted",
            StatusCode::FORBIDDEN,
            message,
            "this connection works only in the workspace the user chose when connecting it (GET /whoami); to work in another, the user connects the client again and chooses it, or uses the crmkit CLI",
        )
    }

    pub fn admin_required() -> Self {
        AppError::new(
            "admin_required",
            StatusCode::FORBIDDEN,
            "only an admin of this workspace can do this",
            "do not retry; ask an admin of the workspace (GET /workspaces/{id}/members lists them)",
        )
    }

    /// A bug or an outage: the client sees a generic message; the detail is logged.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        let mut e = AppError::new(
            "internal",
            StatusCode::INTERNAL_SERVER_ERROR,
            "the server failed to handle this request",
            "retry later; if it keeps failing, report the x-request-id of this response",
        );
        e.internal = Some(detail.to_string());
        e
    }

    /// The database is unreachable, or its writer stayed busy too long
    /// (a write through `db::Db` gives up after 10 s).
    pub fn unavailable(detail: impl std::fmt::Display) -> Self {
        let mut e = AppError::new(
            "not_ready",
            StatusCode::SERVICE_UNAVAILABLE,
            "the database is unreachable or too busy",
            format!(
                "retry after {UNAVAILABLE_RETRY_AFTER} seconds (Retry-After); GET /readyz answers 200 when the server is ready"
            ),
        );
        e.retry_after = Some(UNAVAILABLE_RETRY_AFTER);
        e.internal = Some(detail.to_string());
        e
    }

    /// The plain-text rendering (SPEC §2): `error:`, `message:`, `hint:` then
    /// extra fields, each on one line with newlines escaped.
    pub fn to_text(&self) -> String {
        let one = |s: &str| crate::wire::line::escape_inline(s);
        let mut out = format!(
            "error: {}\nmessage: {}\nhint: {}\n",
            self.code,
            one(&self.message),
            one(&self.hint)
        );
        for (k, v) in &self.extra {
            if v.as_array().is_some_and(|a| a.is_empty()) {
                // Nothing to list: no line (JSON keeps the empty list).
                continue;
            }
            let v = match v {
                Value::String(s) => one(s),
                Value::Array(items) => items
                    .iter()
                    .map(|i| match i {
                        Value::String(s) => one(s),
                        other => one(&other.to_string()),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                other => one(&other.to_string()),
            };
            out.push_str(&format!("{k}: {v}\n"));
        }
        out
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("error".into(), self.code.into());
        m.insert("message".into(), self.message.clone().into());
        m.insert("hint".into(), self.hint.clone().into());
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl From<sea_orm::DbErr> for AppError {
    fn from(e: sea_orm::DbErr) -> Self {
        if crate::db::is_unique_violation(&e) {
            // Checked answers come first (upserts, PATCH to a taken email);
            // this covers the request that lost a race between check and write.
            return AppError::new(
                "conflict",
                StatusCode::CONFLICT,
                "another request just took this unique value (email, domain, …)",
                "fetch the record that has it and retry your change",
            );
        }
        match &e {
            sea_orm::DbErr::ConnectionAcquire(_) | sea_orm::DbErr::Conn(_) => {
                AppError::unavailable(e)
            }
            _ => AppError::internal(e),
        }
    }
}

/// Seconds a 503 `not_ready` asks the client to wait (its `Retry-After`).
pub const UNAVAILABLE_RETRY_AFTER: u64 = 2;

impl From<sea_orm::TransactionError<AppError>> for AppError {
    fn from(e: sea_orm::TransactionError<AppError>) -> Self {
        match e {
            sea_orm::TransactionError::Connection(db) => db.into(),
            sea_orm::TransactionError::Transaction(app) => app,
        }
    }
}

/// Marks a response as an error for the negotiation middleware to render.
#[derive(Clone)]
pub struct Failure(pub std::sync::Arc<AppError>);

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut res = self.status.into_response();
        res.extensions_mut()
            .insert(Failure(std::sync::Arc::new(self)));
        res
    }
}

pub type AppResult<T> = Result<T, AppError>;
