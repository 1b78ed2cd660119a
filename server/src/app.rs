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
    let api = with_handles(finish(routes::router(), state.clone()));
    let full = routes::router()
        .merge(crate::mcp::oauth::router())
        .merge(crate::mcp::router(state.clone(), api));
    with_handles(finish(full, state))
}

/// Routes paths that carry whole handles (`/contacts/contact/c_…`) as if
/// each handle were one segment: the rewrite has to come before routing,
/// which a router's own layers run after.
fn with_handles(router: Router) -> Router {
    let rewrite = |mut req: axum::extract::Request| {
        if let Some(path) = crate::wire::handle::join_path_handles(req.uri().path()) {
            let pq = match req.uri().query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let mut parts = req.uri().clone().into_parts();
            if let Ok(pq) = pq.parse() {
                parts.path_and_query = Some(pq);
                if let Ok(uri) = axum::http::Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
        req
    };
    Router::new().fallback_service(
        tower::ServiceBuilder::new()
            .map_request(rewrite)
            .service(router),
    )
}

/// Fallbacks, the negotiation middleware and panic catching around `routes`.
fn finish(routes: Router<AppState>, state: AppState) -> Router {
    let routes = routes
        .fallback(negotiate::no_route)
        .method_not_allowed_fallback(negotiate::wrong_method)
        .with_state(state);
    layers(routes)
}

/// The middleware every route runs in. A panic is caught inside the
/// negotiation middleware, so that it too is answered as an `internal`
/// error with a hint and an `x-request-id`, and logged with that id.
fn layers(routes: Router) -> Router {
    routes
        .layer(middleware::from_fn(finish_writes))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |panic: Box<dyn std::any::Any + Send>| {
                use axum::response::IntoResponse;
                crate::error::AppError::internal(format!(
                    "handler panicked: {}",
                    panic_text(&*panic)
                ))
                .into_response()
            },
        ))
        .layer(middleware::from_fn(negotiate::middleware))
}

/// What a panic said, when it said it with a string.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
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
        Err(e) => {
            let why = match e.try_into_panic() {
                Ok(panic) => panic_text(&*panic).to_string(),
                Err(e) => e.to_string(),
            };
            crate::error::AppError::internal(format!("handler panicked: {why}")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;

    /// A handler that panics, on a read and on a write, is answered like any
    /// other failure: `internal`, with a hint and a request id, and without
    /// the panic's message.
    #[tokio::test]
    async fn a_panic_is_an_internal_error_with_a_hint_and_a_request_id() {
        async fn boom() -> &'static str {
            panic!("secret detail")
        }
        let app = super::layers(axum::Router::new().route("/boom", get(boom).post(boom)));
        for method in ["GET", "POST"] {
            for json in [false, true] {
                let mut req = Request::builder().method(method).uri("/boom");
                if json {
                    req = req.header("accept", "application/json");
                }
                let res = app
                    .clone()
                    .oneshot(req.body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR, "{method}");
                let id = res.headers().get("x-request-id").expect("x-request-id");
                assert_eq!(id.len(), 16);
                let body = axum::body::to_bytes(res.into_body(), 1 << 16)
                    .await
                    .unwrap();
                let body = String::from_utf8(body.to_vec()).unwrap();
                assert!(!body.contains("secret detail"), "{body}");
                if json {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                    assert_eq!(v["error"], "internal", "{body}");
                    assert!(
                        v["hint"]
                            .as_str()
                            .is_some_and(|h| h.contains("x-request-id")),
                        "{body}"
                    );
                } else {
                    assert!(body.starts_with("error: internal\n"), "{body}");
                    assert!(body.contains("\nhint: "), "{body}");
                }
            }
        }
    }
}
