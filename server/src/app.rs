//! The application: shared state and the router with its middleware.

use std::sync::Arc;

use axum::Router;
use axum::middleware;

use crate::config::Settings;
use crate::mail::Mailer;
use crate::negotiate;
use crate::routes;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: crate::db::Db,
    pub settings: Arc<Settings>,
    pub mailer: Mailer,
    /// The manual with the base URL filled in.
    pub manual: Arc<str>,
    /// Signs list cursors; shared by every process through the database.
    pub cursor_key: Arc<[u8]>,
    /// Recent token lookups (see `auth`).
    pub tokens: Arc<crate::auth::TokenCache>,
    /// When each client metadata document was last fetched (`mcp::cimd`).
    pub client_documents: Arc<crate::mcp::cimd::Cache>,
}

const MANUAL: &str = include_str!("../manual.txt");

impl AppState {
    pub fn new(
        db: crate::db::Db,
        settings: Settings,
        mailer: Mailer,
        cursor_key: Vec<u8>,
    ) -> AppState {
        let manual = MANUAL.replace("{base_url}", &settings.base_url);
        AppState {
            db,
            settings: Arc::new(settings),
            mailer,
            manual: manual.into(),
            cursor_key: cursor_key.into(),
            tokens: Arc::default(),
            client_documents: Arc::default(),
        }
    }
}

/// The whole HTTP API as one router: the CRM API, OAuth and the MCP connector,
/// whose `request` tool calls the CRM API router in-process.
pub fn app(state: AppState) -> Router {
    let api = finish(routes::router(), state.clone());
    let full = routes::router()
        .merge(crate::mcp::oauth::router())
        .merge(crate::mcp::router(state.clone(), api));
    finish(full, state)
}

/// Fallbacks, the negotiation middleware and panic catching around `routes`.
fn finish(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(negotiate::no_route)
        .method_not_allowed_fallback(negotiate::wrong_method)
        .layer(middleware::from_fn(finish_writes))
        .layer(middleware::from_fn(negotiate::middleware))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            use axum::response::IntoResponse;
            crate::error::AppError::internal("handler panicked").into_response()
        }))
        .with_state(state)
}

/// A request that may write runs to its end in a task of its own, even when
/// its client hangs up: dropping a handler halfway through a transaction
/// would leave the rollback to destructors, and a commit cut short would
/// leave the caller's outcome unknown to everyone else sharing the batch.
async fn finish_writes(
    req: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    ) {
        return next.run(req).await;
    }
    match tokio::spawn(next.run(req)).await {
        Ok(res) => res,
        Err(_) => crate::error::AppError::internal("handler panicked").into_response(),
    }
}
