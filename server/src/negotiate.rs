//! Text or JSON, decided once per request: `?format=json|text` wins, then an
//! `Accept` header naming `application/json`; plain text otherwise.
//!
//! The middleware here also renders every [`AppError`] in the request's format,
//! stamps `x-request-id` on every response, and writes the one access-log line.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{AppError, Failure};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fmt {
    Text,
    Json,
}

fn query_format(query: Option<&str>) -> Result<Option<Fmt>, String> {
    let Some(q) = query else { return Ok(None) };
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "format" {
            return match v {
                "json" => Ok(Some(Fmt::Json)),
                "text" | "txt" | "plain" => Ok(Some(Fmt::Text)),
                other => Err(other.chars().take(40).collect()),
            };
        }
    }
    Ok(None)
}

impl Fmt {
    pub fn of(parts: &Parts) -> Fmt {
        if let Ok(Some(f)) = query_format(parts.uri.query()) {
            return f;
        }
        let accept = parts
            .headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        if accept.contains("application/json") {
            Fmt::Json
        } else {
            Fmt::Text
        }
    }

    /// Builds the response; only the closure for the chosen format runs.
    pub fn reply<J: serde::Serialize>(
        self,
        status: StatusCode,
        text: impl FnOnce() -> String,
        json: impl FnOnce() -> J,
    ) -> Response {
        match self {
            Fmt::Text => text_response(status, text()),
            Fmt::Json => json_response(status, &json()),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Fmt {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // On a route marked by `extract::no_params`, the query is checked
        // here: handlers take `Fmt` after `Caller`, so a call that fails
        // authentication is a 401 whatever its query says.
        if parts.extensions.get::<crate::extract::NoParams>().is_some() {
            crate::extract::QueryPairs(crate::extract::decode_query(
                parts.uri.query().unwrap_or(""),
            )?)
            .only(&[])?;
        }
        Ok(Fmt::of(parts))
    }
}

pub fn text_response(status: StatusCode, body: String) -> Response {
    let mut res = (status, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

pub fn json_response<J: serde::Serialize + ?Sized>(status: StatusCode, v: &J) -> Response {
    let mut body = serde_json::to_string(v).unwrap_or_else(|_| "{}".into());
    body.push('\n');
    let mut res = (status, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn new_request_id() -> String {
    let bytes: [u8; 8] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Request id, error rendering, security headers and the access log.
pub async fn middleware(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = new_request_id();
    let method = req.method().clone();
    // The route template (`/contacts/{id}`) when matched, never the query string.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().chars().take(200).collect());
    let bad_format = query_format(req.uri().query()).err();
    // Non-UTF-8 in the query is refused everywhere, not only where it is read.
    let bad_query = crate::extract::decode_query(req.uri().query().unwrap_or("")).err();
    let (parts, body) = req.into_parts();
    let fmt = Fmt::of(&parts);
    let req = Request::from_parts(parts, body);

    let mut res = if let Some(e) = bad_query {
        e.into_response()
    } else if let Some(f) = bad_format {
        AppError::invalid(
            format!("format={f:?} is not a known output format"),
            "use format=json or format=text (or send Accept: application/json)",
        )
        .allowed(&["text", "json"])
        .into_response()
    } else {
        next.run(req).await
    };

    if let Some(Failure(err)) = res.extensions_mut().remove::<Failure>() {
        if let Some(detail) = &err.internal {
            tracing::error!(request_id = %id, code = err.code, "{detail}");
        }
        let mut rendered = match fmt {
            Fmt::Text => text_response(err.status, err.to_text()),
            Fmt::Json => json_response(err.status, &err.to_json()),
        };
        for (k, v) in res.headers() {
            if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
                rendered.headers_mut().insert(k.clone(), v.clone());
            }
        }
        if let Some(secs) = err.retry_after {
            rendered
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        for (k, v) in &err.headers {
            if let Ok(v) = HeaderValue::from_str(v) {
                rendered.headers_mut().insert(*k, v);
            }
        }
        res = rendered;
    }

    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert("x-request-id", v);
    }
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }

    let status = res.status().as_u16();
    let ms = format!("{:.1}", started.elapsed().as_secs_f64() * 1000.0);
    if route == "/healthz" || route == "/readyz" {
        tracing::debug!(request_id = %id, %method, route, status, %ms, "request");
    } else {
        tracing::info!(request_id = %id, %method, route, status, %ms, "request");
    }
    res
}

/// Unknown routes.
pub async fn no_route(req: Request<Body>) -> AppError {
    let path: String = req.uri().path().chars().take(200).collect();
    // The commonest slip: a record kind in the singular (/contact/c_…).
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let plural = match first {
        "contact" => Some("contacts"),
        "company" => Some("companies"),
        "deal" => Some("deals"),
        "activity" => Some("activities"),
        "workspace" => Some("workspaces"),
        "token" => Some("tokens"),
        _ => None,
    };
    let hint = match plural {
        Some(p) => format!(
            "did you mean /{p}{}? GET /help lists every endpoint",
            &path[1 + first.len()..]
        ),
        None => "GET /help lists every endpoint".to_owned(),
    };
    AppError::not_found(format!("no route {} {}", req.method(), path), hint)
}

/// Known route, wrong method.
pub async fn wrong_method(req: Request<Body>) -> AppError {
    let path: String = req.uri().path().chars().take(200).collect();
    let hint = if path == "/activities" && req.method() == axum::http::Method::POST {
        "log an activity on its contact: POST /contacts/{id}/activities (deal_id in the body adds a deal); GET /help lists the methods each endpoint takes"
    } else {
        "GET /help lists the methods each endpoint takes"
    };
    AppError::new(
        "method_not_allowed",
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), path),
        hint,
    )
}
