//! Who is calling: the bearer-token extractor with its sliding idle expiry.
//!
//! A token is looked up by the SHA-256 of its secret together with the caller's
//! membership of the token's workspace. Each use pushes the idle expiry
//! forward, but the write happens at most once per `renew_every` per token.
//!
//! Lookups are cached in-process for [`CACHE_TTL`] so a busy agent does not pay
//! a database round trip per request. Every mutation of tokens or memberships
//! in this process empties the cache after it commits (revocation, removal and
//! role changes apply at once here); other processes sharing a PostgreSQL
//! database see such changes within `CACHE_TTL`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sea_orm::ConnectionTrait;

use crate::app::AppState;
use crate::db::{Ts, stmt};
use crate::error::AppError;
use crate::secrets;

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user_id: String,
    pub email: String,
    pub workspace_id: String,
    pub role: String,
    pub token_id: String,
    pub token_name: String,
}

fn expired() -> AppError {
    AppError::new(
        "token_expired",
        StatusCode::UNAUTHORIZED,
        "the bearer token expired after being idle too long",
        "sign in again with POST /auth/request then POST /auth/verify; tokens stay alive while they are used",
    )
}

/// How long a cached token lookup is trusted (the staleness bound across processes).
pub const CACHE_TTL: Duration = Duration::from_secs(2);
const CACHE_MAX: usize = 10_000;

struct Cached {
    caller: Caller,
    last_used_at: Ts,
    expires_at: Ts,
    at: Instant,
}

/// In-process cache of token lookups, keyed by token hash.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<String, Cached>>,
    /// Bumped by every invalidation, so a lookup that raced one is not cached.
    generation: AtomicU64,
}

impl TokenCache {
    /// Forgets everything: call after committing any change to tokens or memberships.
    pub fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut m) = self.entries.lock() {
            m.clear();
        }
    }

    fn get(&self, hash: &str) -> Option<(Caller, Ts, Ts)> {
        let m = self.entries.lock().ok()?;
        let c = m.get(hash)?;
        (c.at.elapsed() < CACHE_TTL).then(|| (c.caller.clone(), c.last_used_at, c.expires_at))
    }

    fn put(&self, hash: String, generation: u64, caller: Caller, last_used_at: Ts, expires_at: Ts) {
        if let Ok(mut m) = self.entries.lock() {
            if self.generation.load(Ordering::SeqCst) != generation {
                return;
            }
            if m.len() >= CACHE_MAX {
                m.clear();
            }
            m.insert(
                hash,
                Cached {
                    caller,
                    last_used_at,
                    expires_at,
                    at: Instant::now(),
                },
            );
        }
    }
}

/// Pulls the token out of the `Authorization` header(s).
pub fn bearer(parts: &Parts) -> Result<String, AppError> {
    let mut values = parts.headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AppError::auth_required());
    };
    if values.next().is_some() {
        return Err(AppError::invalid(
            "more than one Authorization header",
            "send exactly one: Authorization: Bearer ck_…",
        )
        .with_code_status("invalid_token", StatusCode::UNAUTHORIZED));
    }
    let Ok(value) = value.to_str() else {
        return Err(AppError::invalid_token());
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(AppError::auth_required());
    }
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        let mut e = AppError::invalid_token();
        e.hint = "use the Bearer scheme: Authorization: Bearer ck_…".into();
        return Err(e);
    }
    let token = rest.trim();
    if !secrets::looks_like_token(token) {
        let mut e = AppError::invalid_token();
        e.hint = "crmkit tokens look like ck_ followed by 43 characters; sign in with POST /auth/request then POST /auth/verify".into();
        return Err(e);
    }
    Ok(token.to_string())
}

impl AppError {
    fn with_code_status(mut self, code: &'static str, status: StatusCode) -> Self {
        self.code = code;
        self.status = status;
        self
    }
}

/// How often a token's idle expiry is written: at most once a minute, and
/// often enough that a short TTL still slides.
fn renew_every(ttl: Duration) -> Duration {
    (ttl / 4).min(Duration::from_secs(60))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(c) = parts.extensions.get::<Caller>() {
            return Ok(c.clone());
        }
        let token = bearer(parts)?;
        let caller = authenticate(state, &token).await?;
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

pub async fn authenticate(state: &AppState, token: &str) -> Result<Caller, AppError> {
    let hash = secrets::hash(token);
    let now = Ts::now();
    let ttl = state.settings.token_idle_ttl;
    if let Some((caller, last_used_at, expires_at)) = state.tokens.get(&hash)
        && expires_at > now
    {
        if now.get() - last_used_at.get() >= renew_every(ttl) {
            renew(state, &caller.token_id, now).await?;
            let generation = state.tokens.generation.load(Ordering::SeqCst);
            state
                .tokens
                .put(hash, generation, caller.clone(), now, now.plus(ttl));
        }
        return Ok(caller);
    }
    let generation = state.tokens.generation.load(Ordering::SeqCst);
    let db = &state.db;
    let backend = db.get_database_backend();
    let row = db
        .query_one_raw(stmt(
            backend,
            "SELECT t.id, t.user_id, t.workspace_id, t.name, t.last_used_at, t.expires_at, \
                    u.email, m.role \
             FROM tokens t JOIN users u ON u.id = t.user_id \
             LEFT JOIN memberships m ON m.workspace_id = t.workspace_id AND m.user_id = t.user_id \
             WHERE t.hash = ?",
            vec![hash.clone().into()],
        ))
        .await?
        .ok_or_else(AppError::invalid_token)?;
    let role: Option<String> = row.try_get("", "role")?;
    let Some(role) = role else {
        // The membership is gone: the token died with it.
        return Err(AppError::invalid_token());
    };
    let expires_at: Ts = row.try_get("", "expires_at")?;
    let mut last_used_at: Ts = row.try_get("", "last_used_at")?;
    if expires_at <= now {
        return Err(expired());
    }
    let caller = Caller {
        token_id: row.try_get("", "id")?,
        user_id: row.try_get("", "user_id")?,
        workspace_id: row.try_get("", "workspace_id")?,
        token_name: row.try_get("", "name")?,
        email: row.try_get("", "email")?,
        role,
    };
    let mut expires_at = expires_at;
    if now.get() - last_used_at.get() >= renew_every(ttl) {
        renew(state, &caller.token_id, now).await?;
        last_used_at = now;
        expires_at = now.plus(ttl);
    }
    state
        .tokens
        .put(hash, generation, caller.clone(), last_used_at, expires_at);
    Ok(caller)
}

/// Slides a token's idle expiry. Conditional on it not having expired
/// meanwhile, so a race never revives a dead token.
async fn renew(state: &AppState, token_id: &str, now: Ts) -> Result<(), AppError> {
    // On SQLite this queues for the writer like any write made through `Db`
    // (see `Db::alone`): on a pool connection of its own it waited in SQLite's
    // busy handler while group commits followed one another, and stalled
    // requests for up to 1.5 s under sustained creates (measured).
    let db = &state.db;
    db.execute_raw(stmt(
        db.get_database_backend(),
        "UPDATE tokens SET last_used_at = ?, expires_at = ? WHERE id = ? AND expires_at > ?",
        vec![
            now.into(),
            now.plus(state.settings.token_idle_ttl).into(),
            token_id.into(),
            now.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// The client's address for rate limits: the socket peer, or the last
/// `X-Forwarded-For` hop when the operator says a proxy sits in front.
pub struct ClientIp(pub String);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if state.settings.trust_proxy
            && let Some(hop) = parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .rfind(|s| s.parse::<std::net::IpAddr>().is_ok())
        {
            return Ok(ClientIp(hop.to_string()));
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip().to_string())
            .unwrap_or_else(|| "in-process".into());
        Ok(ClientIp(peer))
    }
}
