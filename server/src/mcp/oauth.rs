//! OAuth 2.1 for the MCP connector; crmkit is both the resource server and the
//! authorization server.
//!
//! Discovery (RFC 9728, RFC 8414), open dynamic client registration (RFC 7591),
//! `/oauth/authorize` with a plain-HTML sign-in page (email -> emailed code ->
//! consent with a workspace picker), `/oauth/token` (authorization code with
//! mandatory PKCE S256, refresh tokens with rotation) and `/oauth/revoke`
//! (RFC 7009). The access token is an ordinary crmkit token named after the
//! client, listed in `GET /tokens` and revocable there. Every piece of state is
//! in the database, and every single-use rule is one conditional statement.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::auth::ClientIp;
use crate::db::{Ts, stmt, write_tx};
use crate::error::{AppError, AppResult};
use crate::extract::{RawBody, decode_query};
use crate::mail::html_escape;
use crate::routes::audit;
use crate::routes::auth::{mint_token, redeem_login_code, send_login_code};
use crate::wire::handle::{Kind, handle};
use crate::{ratelimit, secrets, validate};

const CODE_TTL: std::time::Duration = std::time::Duration::from_secs(600);
const FLOW_TTL: std::time::Duration = std::time::Duration::from_secs(1800);
const REFRESH_TTL: std::time::Duration = std::time::Duration::from_secs(90 * 24 * 3600);

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/.well-known/oauth-protected-resource",
            get(protected_resource),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(protected_resource),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(authorization_server),
        )
        .route(
            "/.well-known/oauth-authorization-server/mcp",
            get(authorization_server),
        )
        .route("/oauth/register", post(register).options(preflight))
        .route("/oauth/authorize", get(authorize).post(authorize_step))
        .route("/oauth/token", post(token).options(preflight))
        .route("/oauth/revoke", post(revoke).options(preflight))
}

fn with_cors(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("authorization, content-type, mcp-protocol-version"),
    );
    res
}

async fn preflight() -> Response {
    with_cors(StatusCode::NO_CONTENT.into_response())
}

fn json_reply(status: StatusCode, v: Value) -> Response {
    with_cors(crate::negotiate::json_response(status, &v))
}

/// An OAuth error answer (`{"error","error_description"}`) with our hint too.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_reply(
        status,
        json!({"error": error, "error_description": description, "hint": description}),
    )
}

async fn protected_resource(State(state): State<AppState>) -> Response {
    let base = &state.settings.base_url;
    json_reply(
        StatusCode::OK,
        json!({
            "resource": format!("{base}/mcp"),
            "authorization_servers": [base],
            "bearer_methods_supported": ["header"],
            "resource_name": "crmkit",
            "resource_documentation": format!("{base}/help"),
        }),
    )
}

async fn authorization_server(State(state): State<AppState>) -> Response {
    let base = &state.settings.base_url;
    json_reply(
        StatusCode::OK,
        json!({
            "issuer": base,
            "authorization_endpoint": format!("{base}/oauth/authorize"),
            "token_endpoint": format!("{base}/oauth/token"),
            "registration_endpoint": format!("{base}/oauth/register"),
            "revocation_endpoint": format!("{base}/oauth/revoke"),
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "client_id_metadata_document_supported": true,
            "authorization_response_iss_parameter_supported": true,
            "scopes_supported": ["crm"],
            "service_documentation": format!("{base}/help"),
        }),
    )
}

/// Schemes a redirect may never use: they run or read something in the
/// browser, or name no app.
const NEVER_SCHEMES: &[&str] = &[
    "javascript",
    "data",
    "file",
    "vbscript",
    "about",
    "blob",
    "filesystem",
    "view-source",
    "ftp",
    "ws",
    "wss",
    "mailto",
    "tel",
    "sms",
    "chrome",
    "chrome-extension",
    "intent",
];

/// Redirect URI policy: `https://host/…`; loopback `http://127.0.0.1|localhost|[::1]`
/// on any port; or a native app's own scheme (RFC 8252 §7.1: `cursor://…`,
/// `com.example.app:/cb`), never one of [`NEVER_SCHEMES`]; no user info, no
/// fragment.
pub fn redirect_uri_ok(uri: &str) -> bool {
    if let Some((scheme, rest)) = uri.split_once(':')
        && !matches!(scheme, "http" | "https")
    {
        let named = scheme.len() <= 64
            && scheme.starts_with(|c: char| c.is_ascii_lowercase())
            && scheme
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c));
        return named
            && !NEVER_SCHEMES.contains(&scheme)
            && rest.starts_with('/')
            && rest.len() > 1
            && uri.len() <= 2000
            && !uri.contains('#')
            && !uri.contains('@')
            && !uri.chars().any(|c| c.is_whitespace() || c.is_control());
    }
    if uri.len() > 2000
        || uri.contains('#')
        || uri.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return false;
    }
    if uri.len() > 2000
        || uri.contains('#')
        || uri.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return false;
    }
    let (scheme, rest) = match uri.split_once("://") {
        Some(x) => x,
        None => return false,
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return false;
    }
    let host = if authority.starts_with('[') {
        authority
            .split(']')
            .next()
            .map(|h| format!("{h}]"))
            .unwrap_or_default()
    } else {
        authority
            .split(':')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    match scheme {
        "https" => {
            !host.is_empty()
                && host.chars().all(|c| {
                    c.is_ascii_alphanumeric()
                        || c == '.'
                        || c == '-'
                        || c == '['
                        || c == ']'
                        || c == ':'
                })
        }
        "http" => matches!(host.as_str(), "127.0.0.1" | "localhost" | "[::1]"),
        _ => false,
    }
}

/// A loopback redirect without its port: (host, path and query).
fn loopback_without_port(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix("http://")?;
    let cut = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(cut);
    let host = if authority.starts_with('[') {
        &authority[..authority.find(']')? + 1]
    } else {
        authority.split(':').next()?
    };
    matches!(host, "127.0.0.1" | "localhost" | "[::1]").then_some((host, tail))
}

/// Whether a redirect URI sent to /oauth/authorize is one the client
/// registered: exactly, or for a loopback one on any port (RFC 8252 §7.3:
/// a native app listens on whatever port it gets).
fn redirect_registered(registered: &str, sent: &str) -> bool {
    registered == sent
        || matches!(
            (loopback_without_port(registered), loopback_without_port(sent)),
            (Some(a), Some(b)) if a == b
        )
}

async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    RawBody(body): RawBody,
) -> Response {
    if let Err(e) = ratelimit::hit(
        &state.db,
        &format!("oauth-register:{ip}"),
        30,
        state.settings.rate_window,
        "client registrations from this address",
    )
    .await
    {
        // The OAuth way, as every other refusal here, with Retry-After.
        let retry = e
            .into_response()
            .headers()
            .get(header::RETRY_AFTER)
            .cloned();
        let mut res = oauth_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many client registrations from this address; wait Retry-After seconds",
        );
        if let Some(v) = retry {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return res;
    }
    let meta: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_client_metadata",
                "send the client metadata as a JSON object",
            );
        }
    };
    let uris: Vec<String> = match meta.get("redirect_uris").and_then(Value::as_array) {
        Some(a) if !a.is_empty() && a.len() <= 20 => {
            let mut out = Vec::new();
            for u in a {
                match u.as_str() {
                    Some(s) if redirect_uri_ok(s) => out.push(s.to_string()),
                    _ => {
                        return oauth_error(
                            StatusCode::BAD_REQUEST,
                            "invalid_redirect_uri",
                            "redirect_uris must be https:// URLs or loopback http://127.0.0.1, http://localhost or http://[::1] URLs, without fragments or user info",
                        );
                    }
                }
            }
            out
        }
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_redirect_uri",
                "send redirect_uris: a non-empty array (at most 20)",
            );
        }
    };
    if let Some(m) = meta
        .get("token_endpoint_auth_method")
        .and_then(Value::as_str)
        && m != "none"
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_client_metadata",
            "only public clients are supported: token_endpoint_auth_method must be \"none\" (use PKCE)",
        );
    }
    let name = match meta.get("client_name") {
        None | Some(Value::Null) => "MCP client".to_string(),
        Some(Value::String(s)) => match validate::label("client_name", s, 200) {
            Ok(n) => n,
            Err(e) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_client_metadata",
                    &e.message,
                );
            }
        },
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_client_metadata",
                "client_name must be a string",
            );
        }
    };
    let client_id = secrets::new_secret("mcp_");
    let db = &state.db;
    let backend = db.get_database_backend();
    let now = Ts::now();
    let prune_before = Ts::new(now.get() - time::Duration::hours(24));
    // Clients that never got a token are pruned after a day.
    let res = async {
        db.execute_raw(stmt(backend, "DELETE FROM oauth_clients WHERE last_used_at IS NULL AND created_at < ?", vec![prune_before.into()])).await?;
        db.execute_raw(stmt(
            backend,
            "INSERT INTO oauth_clients (client_id, client_name, redirect_uris, created_at) VALUES (?, ?, ?, ?)",
            vec![client_id.clone().into(), name.clone().into(), serde_json::to_string(&uris).unwrap_or_default().into(), now.into()],
        ))
        .await?;
        Ok::<(), sea_orm::DbErr>(())
    }
    .await;
    if let Err(e) = res {
        return with_cors(AppError::from(e).into_response());
    }
    json_reply(
        StatusCode::CREATED,
        json!({
            "client_id": client_id,
            "client_id_issued_at": now.get().unix_timestamp(),
            "client_name": name,
            "redirect_uris": uris,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        }),
    )
}

struct Client {
    name: String,
    redirect_uris: Vec<String>,
}

/// A client known by its metadata document (`client_id` is its URL): fetched
/// when none was in the last [`super::cimd::FRESH_FOR`], and kept with the
/// registered clients, so the rest of the flow treats both alike.
async fn client_document(
    state: &AppState,
    client_id: &str,
) -> AppResult<Result<Client, super::cimd::Refused>> {
    let cache = &state.client_documents;
    if cache.is_fresh(client_id)
        && let Some(client) = load_client(state, client_id).await?
    {
        return Ok(Ok(client));
    }
    let doc = match super::cimd::fetch(client_id, state.settings.cimd_loopback).await {
        Ok(doc) => doc,
        Err(refused) => return Ok(Err(refused)),
    };
    let uris = serde_json::to_string(&doc.redirect_uris).unwrap_or_default();
    state
        .db
        .execute_raw(stmt(
            state.db.get_database_backend(),
            "INSERT INTO oauth_clients (client_id, client_name, redirect_uris, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (client_id) DO UPDATE SET client_name = excluded.client_name, redirect_uris = excluded.redirect_uris",
            vec![client_id.into(), doc.name.clone().into(), uris.into(), Ts::now().into()],
        ))
        .await?;
    cache.mark(client_id);
    Ok(Ok(Client {
        name: doc.name,
        redirect_uris: doc.redirect_uris,
    }))
}

async fn load_client(state: &AppState, client_id: &str) -> AppResult<Option<Client>> {
    let row = state
        .db
        .query_one_raw(stmt(
            state.db.get_database_backend(),
            "SELECT client_name, redirect_uris FROM oauth_clients WHERE client_id = ?",
            vec![client_id.into()],
        ))
        .await?;
    Ok(match row {
        Some(r) => Some(Client {
            name: r.try_get("", "client_name")?,
            redirect_uris: serde_json::from_str(&r.try_get::<String>("", "redirect_uris")?)
                .unwrap_or_default(),
        }),
        None => None,
    })
}

// ---------------------------------------------------------------- the page

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem;color:#111}\
h1{font-size:1.4rem}label{display:block;margin:.8rem 0 .3rem;font-weight:600}\
input,select{font:inherit;width:100%;padding:.5rem;box-sizing:border-box}\
button{font:inherit;padding:.5rem 1.2rem;margin:1rem .5rem 0 0;cursor:pointer}\
.err{color:#a00;background:#fee;padding:.5rem;border-radius:4px}.muted{color:#555;font-size:.9rem}";

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{t} · crmkit</title><style>{STYLE}</style></head><body><main><h1>{t}</h1>{body}</main></body></html>",
        t = html_escape(title)
    );
    let mut res = (status, html).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    res
}

fn error_page(message: &str) -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Cannot continue",
        &format!(
            "<p class=\"err\">{}</p><p class=\"muted\">Go back to the app you came from and connect again.</p>",
            html_escape(message)
        ),
    )
}

fn hidden(flow: &str, csrf: &str, step: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"flow\" value=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"step\" value=\"{}\">",
        html_escape(flow),
        html_escape(csrf),
        step
    )
}

fn email_form(flow: &str, csrf: &str, client: &str, error: Option<&str>) -> Response {
    let err = error
        .map(|e| format!("<p class=\"err\">{}</p>", html_escape(e)))
        .unwrap_or_default();
    page(
        StatusCode::OK,
        "Sign in to crmkit",
        &format!(
            "<p><b>{}</b> wants to use your crmkit CRM.</p>{err}<form method=\"post\" action=\"/oauth/authorize\">{}\
             <label for=\"email\">Your email</label><input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"email\" required autofocus>\
             <button type=\"submit\">Email me a code</button></form>",
            html_escape(client),
            hidden(flow, csrf, "email")
        ),
    )
}

fn code_form(flow: &str, csrf: &str, email: &str, error: Option<&str>) -> Response {
    let err = error
        .map(|e| format!("<p class=\"err\">{}</p>", html_escape(e)))
        .unwrap_or_default();
    page(
        StatusCode::OK,
        "Enter your code",
        &format!(
            "<p>We emailed a 6-digit code to <b>{}</b>. It expires in 10 minutes.</p>{err}<form method=\"post\" action=\"/oauth/authorize\">{}\
             <label for=\"code\">Code</label><input id=\"code\" name=\"code\" inputmode=\"numeric\" pattern=\"[0-9]{{6}}\" maxlength=\"6\" autocomplete=\"one-time-code\" required autofocus>\
             <button type=\"submit\">Continue</button></form>",
            html_escape(&validate::mask_email(email)),
            hidden(flow, csrf, "code")
        ),
    )
}

fn host_of(uri: &str) -> String {
    uri.split("://")
        .nth(1)
        .and_then(|r| r.split(['/', '?']).next())
        .unwrap_or("")
        .to_string()
}

fn consent_form(
    flow: &str,
    csrf: &str,
    client: &str,
    redirect: &str,
    workspaces: &[(String, String)],
) -> Response {
    let options: String = workspaces
        .iter()
        .map(|(id, name)| {
            format!(
                "<option value=\"{}\">{}</option>",
                html_escape(id),
                html_escape(name)
            )
        })
        .collect();
    page(
        StatusCode::OK,
        "Allow access?",
        &format!(
            "<p><b>{}</b> will be able to read and change the CRM data of the workspace you choose, as you, \
             and nothing of your other workspaces. \
             It will be sent back to <b>{}</b>.</p><form method=\"post\" action=\"/oauth/authorize\">{}\
             <label for=\"workspace\">Workspace</label><select id=\"workspace\" name=\"workspace\">{options}</select>\
             <button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
             <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>\
             <p class=\"muted\">You can revoke it any time: GET /tokens, then DELETE /tokens/{{id}}.</p>",
            html_escape(client),
            html_escape(&host_of(redirect)),
            hidden(flow, csrf, "consent")
        ),
    )
}

/// Everything but RFC 3986 unreserved characters is percent-encoded.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn redirect_to(uri: &str, params: &[(&str, &str)]) -> Response {
    let mut url = uri.to_string();
    let mut sep = if url.contains('?') { '&' } else { '?' };
    for (k, v) in params {
        url.push(sep);
        sep = '&';
        url.push_str(k);
        url.push('=');
        url.push_str(&percent_encoding::utf8_percent_encode(v, QUERY_VALUE).to_string());
    }
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(&url) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

async fn authorize(State(state): State<AppState>, uri: axum::http::Uri) -> Response {
    match authorize_start(&state, uri.query().unwrap_or("")).await {
        Ok(r) => r,
        Err(e) => {
            if let Some(detail) = &e.internal {
                tracing::error!("authorize: {detail}");
            }
            error_page(&e.message)
        }
    }
}

/// The first parameter name that occurs more than once, if any.
fn repeated(pairs: &[(String, String)]) -> Option<String> {
    pairs
        .iter()
        .enumerate()
        .find(|(i, (k, _))| pairs[..*i].iter().any(|(p, _)| p == k))
        .map(|(_, (k, _))| k.chars().take(40).collect())
}

async fn authorize_start(state: &AppState, query: &str) -> AppResult<Response> {
    let q = decode_query(query)?;
    // RFC 6749 §3.1: no parameter more than once (which value would count?).
    if let Some(k) = repeated(&q) {
        return Ok(error_page(&format!(
            "The request names {k} more than once; the app must send each parameter once."
        )));
    }
    let get = |k: &str| q.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let client_id = get("client_id").unwrap_or("");
    let client = if super::cimd::is_document_url(client_id) {
        match client_document(state, client_id).await? {
            Ok(client) => Some(client),
            Err(refused) => return Ok(error_page(&refused.0)),
        }
    } else {
        load_client(state, client_id).await?
    };
    let Some(client) = client else {
        return Ok(error_page(
            "Unknown client: the app must register first (client_id not found).",
        ));
    };
    let redirect = get("redirect_uri").unwrap_or("");
    if !client
        .redirect_uris
        .iter()
        .any(|u| redirect_registered(u, redirect))
    {
        return Ok(error_page(
            "The redirect address does not match one the app registered.",
        ));
    }
    let st = get("state").unwrap_or("");
    let iss = state.settings.base_url.clone();
    let fail = |error: &str, why: &str| {
        redirect_to(
            redirect,
            &[
                ("error", error),
                ("error_description", why),
                ("state", st),
                ("iss", &iss),
            ],
        )
    };
    if get("response_type") != Some("code") {
        return Ok(fail(
            "unsupported_response_type",
            "response_type must be code",
        ));
    }
    let challenge = get("code_challenge").unwrap_or("");
    if get("code_challenge_method") != Some("S256") {
        return Ok(fail(
            "invalid_request",
            "PKCE is required: send code_challenge_method=S256 with code_challenge",
        ));
    }
    if challenge.len() < 43 || challenge.len() > 128 {
        return Ok(fail(
            "invalid_request",
            "code_challenge must be the base64url SHA-256 of the code_verifier (43 characters)",
        ));
    }
    let resource = get("resource").map(|r| r.trim_end_matches('/').to_string());
    let base = &state.settings.base_url;
    if let Some(r) = &resource
        && r != &format!("{base}/mcp")
        && r != base
    {
        return Ok(fail(
            "invalid_target",
            "resource must be this server's MCP URL ({base_url}/mcp)",
        ));
    }
    let flow = secrets::new_secret("fl_");
    let csrf = secrets::new_secret("");
    let backend = state.db.get_database_backend();
    state
        .db
        .execute_raw(stmt(
            backend,
            "DELETE FROM oauth_flows WHERE expires_at < ?",
            vec![Ts::now().into()],
        ))
        .await?;
    state
        .db
        .execute_raw(stmt(
            backend,
            "INSERT INTO oauth_flows (id, csrf_hash, client_id, redirect_uri, state, code_challenge, resource, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            vec![
                secrets::hash(&flow).into(),
                secrets::hash(&csrf).into(),
                client_id.into(),
                redirect.into(),
                get("state").map(str::to_string).into(),
                challenge.into(),
                resource.into(),
                Ts::now().plus(FLOW_TTL).into(),
            ],
        ))
        .await?;
    Ok(email_form(&flow, &csrf, &client.name, None))
}

struct Flow {
    key: String,
    client_id: String,
    redirect_uri: String,
    state: Option<String>,
    code_challenge: String,
    resource: Option<String>,
    email: Option<String>,
    user_id: Option<String>,
}

async fn authorize_step(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    RawBody(body): RawBody,
) -> Response {
    match authorize_step_inner(&state, &ip, &body).await {
        Ok(r) => r,
        Err(e) => {
            if let Some(detail) = &e.internal {
                tracing::error!("authorize: {detail}");
            }
            error_page(&e.message)
        }
    }
}

async fn authorize_step_inner(state: &AppState, ip: &str, body: &[u8]) -> AppResult<Response> {
    let text =
        std::str::from_utf8(body).map_err(|_| AppError::invalid("The form was not UTF-8.", ""))?;
    let form = decode_query(text)?;
    let get = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let flow_secret = get("flow");
    let csrf = get("csrf");
    let key = secrets::hash(flow_secret);
    let backend = state.db.get_database_backend();
    let row = state
        .db
        .query_one_raw(stmt(
            backend,
            "SELECT csrf_hash, client_id, redirect_uri, state, code_challenge, resource, email, user_id FROM oauth_flows WHERE id = ? AND expires_at > ?",
            vec![key.clone().into(), Ts::now().into()],
        ))
        .await?;
    let Some(row) = row else {
        return Ok(error_page(
            "This sign-in has expired or is not valid. Start again from the app.",
        ));
    };
    let csrf_hash: String = row.try_get("", "csrf_hash")?;
    if !secrets::ct_eq(&csrf_hash, &secrets::hash(csrf)) {
        return Ok(error_page(
            "The form could not be verified (CSRF check failed). Start again from the app.",
        ));
    }
    let flow = Flow {
        key,
        client_id: row.try_get("", "client_id")?,
        redirect_uri: row.try_get("", "redirect_uri")?,
        state: row.try_get("", "state")?,
        code_challenge: row.try_get("", "code_challenge")?,
        resource: row.try_get("", "resource")?,
        email: row.try_get("", "email")?,
        user_id: row.try_get("", "user_id")?,
    };
    let client = load_client(state, &flow.client_id)
        .await?
        .ok_or_else(|| AppError::invalid("The app is no longer registered.", ""))?;
    match (get("step"), &flow.email, &flow.user_id) {
        ("email", _, None) => {
            let email = match validate::email("email", get("email")) {
                Ok(e) => e,
                Err(e) => {
                    return Ok(email_form(
                        flow_secret,
                        csrf,
                        &client.name,
                        Some(&e.message),
                    ));
                }
            };
            if let Err(e) = send_login_code(state, &email, ip).await {
                return Ok(email_form(
                    flow_secret,
                    csrf,
                    &client.name,
                    Some(&format!("{} {}", e.message, e.hint)),
                ));
            }
            state
                .db
                .execute_raw(stmt(
                    backend,
                    "UPDATE oauth_flows SET email = ? WHERE id = ?",
                    vec![email.clone().into(), flow.key.clone().into()],
                ))
                .await?;
            Ok(code_form(flow_secret, csrf, &email, None))
        }
        ("code", Some(email), None) => {
            let code = get("code").trim().to_string();
            if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
                return Ok(code_form(
                    flow_secret,
                    csrf,
                    email,
                    Some("Enter the 6 digits from the email."),
                ));
            }
            let (tx, user_id, _, _) = match redeem_login_code(state, email, &code, ip).await {
                Ok(x) => x,
                Err(e) if e.code == "invalid_code" || e.code == "rate_limited" => {
                    return Ok(code_form(
                        flow_secret,
                        csrf,
                        email,
                        Some(
                            "That code is wrong or expired. Check the newest email and try again (5 tries per code).",
                        ),
                    ));
                }
                Err(e) => return Err(e),
            };
            tx.execute_raw(stmt(
                backend,
                "UPDATE oauth_flows SET user_id = ? WHERE id = ?",
                vec![user_id.clone().into(), flow.key.clone().into()],
            ))
            .await?;
            tx.commit().await?;
            let workspaces = user_workspaces(state, &user_id).await?;
            Ok(consent_form(
                flow_secret,
                csrf,
                &client.name,
                &flow.redirect_uri,
                &workspaces,
            ))
        }
        ("consent", _, Some(user_id)) => {
            let iss = state.settings.base_url.clone();
            let st = flow.state.clone().unwrap_or_default();
            // The flow is used up whatever the decision.
            let gone = state
                .db
                .execute_raw(stmt(
                    backend,
                    "DELETE FROM oauth_flows WHERE id = ?",
                    vec![flow.key.clone().into()],
                ))
                .await?;
            if gone.rows_affected() != 1 {
                return Ok(error_page(
                    "This sign-in was already completed. Start again from the app.",
                ));
            }
            if get("decision") != "allow" {
                return Ok(redirect_to(
                    &flow.redirect_uri,
                    &[("error", "access_denied"), ("state", &st), ("iss", &iss)],
                ));
            }
            let ws = get("workspace");
            let member = state
                .db
                .query_one_raw(stmt(
                    backend,
                    "SELECT 1 AS one FROM memberships WHERE workspace_id = ? AND user_id = ?",
                    vec![ws.into(), user_id.clone().into()],
                ))
                .await?;
            if member.is_none() {
                return Ok(error_page("That workspace is not one of yours."));
            }
            let code = secrets::new_secret("oc_");
            state
                .db
                .execute_raw(stmt(
                    backend,
                    "INSERT INTO oauth_codes (code_hash, client_id, redirect_uri, code_challenge, resource, user_id, workspace_id, used, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    vec![
                        secrets::hash(&code).into(),
                        flow.client_id.clone().into(),
                        flow.redirect_uri.clone().into(),
                        flow.code_challenge.clone().into(),
                        flow.resource.clone().into(),
                        user_id.clone().into(),
                        ws.into(),
                        false.into(),
                        Ts::now().plus(CODE_TTL).into(),
                    ],
                ))
                .await?;
            let mut params = vec![("code", code.as_str()), ("iss", iss.as_str())];
            if flow.state.is_some() {
                params.push(("state", st.as_str()));
            }
            Ok(redirect_to(&flow.redirect_uri, &params))
        }
        _ => Ok(error_page(
            "This step does not fit the sign-in in progress. Start again from the app.",
        )),
    }
}

async fn user_workspaces(state: &AppState, user_id: &str) -> AppResult<Vec<(String, String)>> {
    let rows = state
        .db
        .query_all_raw(stmt(
            state.db.get_database_backend(),
            "SELECT w.id, w.name, w.personal_of FROM memberships m JOIN workspaces w ON w.id = m.workspace_id WHERE m.user_id = ? \
             ORDER BY CASE WHEN w.personal_of = ? THEN 0 ELSE 1 END, w.created_at, w.id",
            vec![user_id.into(), user_id.into()],
        ))
        .await?;
    let mut out = Vec::new();
    for r in rows {
        out.push((r.try_get("", "id")?, r.try_get("", "name")?));
    }
    Ok(out)
}

// ---------------------------------------------------------------- token

fn pkce_ok(verifier: &str, challenge: &str) -> bool {
    if !(43..=128).contains(&verifier.len())
        || !verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    {
        return false;
    }
    let digest = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    secrets::ct_eq(&digest, challenge)
}

fn form_or_json(headers: &HeaderMap, body: &[u8]) -> Option<Vec<(String, String)>> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("json"));
    if is_json {
        let v: Value = serde_json::from_slice(body).ok()?;
        Some(
            v.as_object()?
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect(),
        )
    } else {
        decode_query(std::str::from_utf8(body).ok()?).ok()
    }
}

fn grant_error(description: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let Some(form) = form_or_json(&headers, &body) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send an application/x-www-form-urlencoded body",
        );
    };
    if let Some(k) = repeated(&form) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("{k} is given more than once; send each parameter once"),
        );
    }
    let get = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let res = match get("grant_type") {
        "authorization_code" => {
            exchange_code(
                &state,
                get("code"),
                get("client_id"),
                get("redirect_uri"),
                get("code_verifier"),
            )
            .await
        }
        "refresh_token" => refresh(&state, get("refresh_token"), get("client_id")).await,
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be authorization_code or refresh_token",
            );
        }
    };
    match res {
        Ok(r) => r,
        Err(e) => with_cors(e.into_response()),
    }
}

/// Whether a token came from this flow: a chat client's connection, which
/// the user granted one workspace at consent (every access token issued
/// here has its refresh token until both end).
pub async fn is_connection(state: &AppState, token_id: &str) -> AppResult<bool> {
    let row = state
        .db
        .query_one_raw(stmt(
            state.db.get_database_backend(),
            "SELECT 1 AS one FROM oauth_refresh WHERE access_token_id = ? LIMIT 1",
            vec![token_id.into()],
        ))
        .await?;
    Ok(row.is_some())
}

/// Mints the access token (a crmkit token named after the client) and a refresh token.
async fn issue(
    state: &AppState,
    tx: &crate::db::WriteTx,
    client_id: &str,
    user_id: &str,
    ws: &str,
) -> AppResult<Option<(String, Value)>> {
    let backend = tx.get_database_backend();
    let member = tx
        .query_one_raw(stmt(
            backend,
            "SELECT 1 AS one FROM memberships WHERE workspace_id = ? AND user_id = ?",
            vec![ws.into(), user_id.into()],
        ))
        .await?;
    if member.is_none() {
        return Ok(None);
    }
    let name_row = tx
        .query_one_raw(stmt(
            backend,
            "SELECT client_name FROM oauth_clients WHERE client_id = ?",
            vec![client_id.into()],
        ))
        .await?;
    let name: String = match name_row {
        Some(r) => r.try_get("", "client_name")?,
        None => "MCP client".into(),
    };
    let minted = mint_token(tx, state, user_id, ws, &name).await?;
    let refresh = secrets::new_secret("rt_");
    tx.execute_raw(stmt(
        backend,
        "INSERT INTO oauth_refresh (token_hash, client_id, user_id, workspace_id, access_token_id, used, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        vec![secrets::hash(&refresh).into(), client_id.into(), user_id.into(), ws.into(), minted.id.clone().into(), false.into(), Ts::now().plus(REFRESH_TTL).into()],
    ))
    .await?;
    tx.execute_raw(stmt(
        backend,
        "UPDATE oauth_clients SET last_used_at = ? WHERE client_id = ?",
        vec![Ts::now().into(), client_id.into()],
    ))
    .await?;
    audit::record(
        tx,
        ws,
        user_id,
        &name,
        "token.create",
        &handle(Kind::Token, &minted.id),
        Some(json!({"name": [null, name], "via": [null, "oauth"]})),
    )
    .await?;
    let body = json!({
        "access_token": minted.secret,
        "token_type": "Bearer",
        "expires_in": state.settings.token_idle_ttl.as_secs(),
        "refresh_token": refresh,
        "scope": "crm",
    });
    Ok(Some((minted.id, body)))
}

/// Deletes a crmkit token that OAuth ends (a revocation, a rotation, a
/// replayed code) with its refresh tokens, and audits it as `token.revoke`
/// like DELETE /tokens/{id}, in the same transaction; the actor is the
/// token's own user, `why` says which OAuth step ended it.
async fn end_token(
    tx: &crate::db::WriteTx,
    column: &str,
    value: String,
    why: &str,
) -> AppResult<Option<String>> {
    let backend = tx.get_database_backend();
    let Some(row) = tx
        .query_one_raw(stmt(
            backend,
            &format!(
                "DELETE FROM tokens WHERE {column} = ? RETURNING id, workspace_id, user_id, name"
            ),
            vec![value.into()],
        ))
        .await?
    else {
        return Ok(None);
    };
    let id: String = row.try_get("", "id")?;
    let ws: String = row.try_get("", "workspace_id")?;
    let user: String = row.try_get("", "user_id")?;
    let name: String = row.try_get("", "name")?;
    tx.execute_raw(stmt(
        backend,
        "DELETE FROM oauth_refresh WHERE access_token_id = ?",
        vec![id.clone().into()],
    ))
    .await?;
    audit::record(
        tx,
        &ws,
        &user,
        &name,
        "token.revoke",
        &handle(Kind::Token, &id),
        Some(json!({"name": [name, null], "via": [null, why]})),
    )
    .await?;
    Ok(Some(id))
}

async fn exchange_code(
    state: &AppState,
    code: &str,
    client_id: &str,
    redirect_uri: &str,
    verifier: &str,
) -> AppResult<Response> {
    let tx = write_tx(&state.db).await?;
    let backend = tx.get_database_backend();
    let hash = secrets::hash(code);
    // Single use: only the redemption that flips `used` goes on.
    let row = tx
        .query_one_raw(stmt(
            backend,
            "UPDATE oauth_codes SET used = ? WHERE code_hash = ? AND used = ? AND expires_at > ? \
             RETURNING client_id, redirect_uri, code_challenge, user_id, workspace_id",
            vec![
                true.into(),
                hash.clone().into(),
                false.into(),
                Ts::now().into(),
            ],
        ))
        .await?;
    let Some(row) = row else {
        // A replayed code revokes what it issued.
        let issued = tx
            .query_one_raw(stmt(
                backend,
                "SELECT token_id FROM oauth_codes WHERE code_hash = ? AND used = ?",
                vec![hash.clone().into(), true.into()],
            ))
            .await?;
        if let Some(r) = issued
            && let Some(token_id) = r.try_get::<Option<String>>("", "token_id")?
        {
            end_token(&tx, "id", token_id, "oauth code replayed").await?;
            tx.commit().await?;
            state.tokens.forget_all();
        }
        return Ok(grant_error(
            "the authorization code is invalid, expired or already used",
        ));
    };
    let c_client: String = row.try_get("", "client_id")?;
    let c_redirect: String = row.try_get("", "redirect_uri")?;
    let challenge: String = row.try_get("", "code_challenge")?;
    if c_client != client_id || c_redirect != redirect_uri || !pkce_ok(verifier, &challenge) {
        // The code stays used: a wrong attempt burns it.
        tx.commit().await?;
        state.tokens.forget_all();
        return Ok(grant_error(
            "client_id, redirect_uri or code_verifier does not match the authorization request",
        ));
    }
    let user_id: String = row.try_get("", "user_id")?;
    let ws: String = row.try_get("", "workspace_id")?;
    let Some((token_id, body)) = issue(state, &tx, client_id, &user_id, &ws).await? else {
        tx.commit().await?;
        state.tokens.forget_all();
        return Ok(grant_error(
            "the user is no longer a member of that workspace",
        ));
    };
    tx.execute_raw(stmt(
        backend,
        "UPDATE oauth_codes SET token_id = ? WHERE code_hash = ?",
        vec![token_id.into(), hash.into()],
    ))
    .await?;
    tx.commit().await?;
    state.tokens.forget_all();
    Ok(json_reply(StatusCode::OK, body))
}

/// The refresh grant, with rotation and reuse detection (RFC 9700 §4.14.2):
/// - a refresh token works once, for the client it was issued to; one sent
///   by another client is refused without being used up;
/// - a used one presented again means it leaked: the grant's current access
///   token and refresh token end, and the client must connect again;
/// - the grant lives as long as its access token: one revoked (GET /tokens,
///   DELETE /tokens/{id}) or idle longer than the idle TTL cannot be
///   refreshed, so a connection the user can no longer see in GET /tokens
///   cannot come back.
async fn refresh(state: &AppState, refresh_token: &str, client_id: &str) -> AppResult<Response> {
    let tx = write_tx(&state.db).await?;
    let backend = tx.get_database_backend();
    let hash = secrets::hash(refresh_token);
    let row = tx
        .query_one_raw(stmt(
            backend,
            "SELECT client_id, user_id, workspace_id, access_token_id, used, expires_at FROM oauth_refresh WHERE token_hash = ?",
            vec![hash.clone().into()],
        ))
        .await?;
    let Some(row) = row else {
        return Ok(grant_error(
            "the refresh token is invalid, expired or already used",
        ));
    };
    let access: String = row.try_get("", "access_token_id")?;
    if row.try_get::<bool>("", "used")? {
        end_token(&tx, "id", access, "oauth refresh token replayed").await?;
        tx.commit().await?;
        state.tokens.forget_all();
        return Ok(grant_error(
            "the refresh token was already used, so it may have leaked: this connection is revoked; connect again",
        ));
    }
    if row.try_get::<String>("", "client_id")? != client_id {
        // Nothing is written: the rightful client's token stays usable.
        tx.rollback().await?;
        return Ok(grant_error(
            "the refresh token was issued to another client_id",
        ));
    }
    let now = Ts::now();
    let alive = tx
        .query_one_raw(stmt(
            backend,
            "SELECT 1 AS one FROM tokens WHERE id = ? AND expires_at > ?",
            vec![access.clone().into(), now.into()],
        ))
        .await?;
    if row.try_get::<Ts>("", "expires_at")? <= now || alive.is_none() {
        end_token(&tx, "id", access, "oauth refresh after expiry").await?;
        tx.commit().await?;
        state.tokens.forget_all();
        return Ok(grant_error(
            "the connection expired or was revoked (its access token was idle longer than the idle TTL, or revoked in GET /tokens): connect again",
        ));
    }
    let used = tx
        .query_one_raw(stmt(
            backend,
            "UPDATE oauth_refresh SET used = ? WHERE token_hash = ? AND used = ? RETURNING user_id",
            vec![true.into(), hash.into(), false.into()],
        ))
        .await?;
    if used.is_none() {
        tx.rollback().await?;
        return Ok(grant_error(
            "the refresh token is invalid, expired or already used",
        ));
    }
    let user_id: String = row.try_get("", "user_id")?;
    let ws: String = row.try_get("", "workspace_id")?;
    let Some((new_id, body)) = issue(state, &tx, client_id, &user_id, &ws).await? else {
        end_token(&tx, "id", access, "oauth refresh").await?;
        tx.commit().await?;
        state.tokens.forget_all();
        return Ok(grant_error(
            "the user is no longer a member of that workspace",
        ));
    };
    // The grant's used refresh tokens and its authorization code now point
    // at the new access token, so that presenting any of them again ends it.
    tx.execute_raw(stmt(
        backend,
        "UPDATE oauth_refresh SET access_token_id = ? WHERE access_token_id = ? AND used = ?",
        vec![new_id.clone().into(), access.clone().into(), true.into()],
    ))
    .await?;
    tx.execute_raw(stmt(
        backend,
        "UPDATE oauth_codes SET token_id = ? WHERE token_id = ?",
        vec![new_id.into(), access.clone().into()],
    ))
    .await?;
    // Rotation replaces the session: the previous access token goes.
    end_token(&tx, "id", access, "oauth refresh").await?;
    tx.commit().await?;
    state.tokens.forget_all();
    Ok(json_reply(StatusCode::OK, body))
}

/// RFC 7009: 200 for any token, known or not (400 only when none is sent);
/// an access token takes its refresh tokens with it and a refresh token
/// takes its access token.
async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let Some(form) = form_or_json(&headers, &body) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send token=… as a form body",
        );
    };
    let Some(t) = form
        .iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.clone())
        .filter(|t| !t.is_empty())
    else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send token=… (the access or refresh token to revoke) as a form body",
        );
    };
    let hash = secrets::hash(&t);
    let res: AppResult<()> = async {
        let tx = write_tx(&state.db).await?;
        if secrets::looks_like_token(&t) {
            end_token(&tx, "hash", hash, "oauth revoke").await?;
        } else if let Some(r) = tx
            .query_one_raw(stmt(
                tx.get_database_backend(),
                "DELETE FROM oauth_refresh WHERE token_hash = ? RETURNING access_token_id",
                vec![hash.into()],
            ))
            .await?
        {
            let id: String = r.try_get("", "access_token_id")?;
            end_token(&tx, "id", id, "oauth revoke").await?;
        }
        tx.commit().await?;
        Ok(())
    }
    .await;
    state.tokens.forget_all();
    match res {
        Ok(()) => with_cors(StatusCode::OK.into_response()),
        Err(e) => with_cors(e.into_response()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_follow_the_policy() {
        for ok in [
            "https://claude.ai/api/mcp/auth_callback",
            "https://claude.com/api/mcp/auth_callback",
            "https://chatgpt.com/connector_platform_oauth_redirect",
            "https://chatgpt.com/connector/oauth/abc123",
            "http://127.0.0.1:33418/callback",
            "http://localhost:6274/oauth/callback",
            "http://[::1]:8080/cb",
        ] {
            assert!(redirect_uri_ok(ok), "{ok}");
        }
        for bad in [
            "http://evil.example/cb",
            "javascript:alert(1)",
            "data:text/html,hi",
            "file:///etc/passwd",
            "http://127.0.0.1@evil.example/cb",
            "http://localhost.evil.example/cb",
            "https://app.example/cb#frag",
            "https://user:pw@app.example/cb",
            "JavaScript://x/%0aalert(1)",
            "vbscript:/x",
            "ws://127.0.0.1/cb",
            "chrome-extension://abc/cb",
            "cursor:",
            "cursor:nothing",
            "cursor://x/cb#frag",
            "cursor://user@host/cb",
            "",
        ] {
            assert!(!redirect_uri_ok(bad), "{bad}");
        }
        // A native app's own scheme (RFC 8252 §7.1).
        for ok in [
            "cursor://anysphere.cursor-retrieval/oauth/user-crmkit/callback",
            "com.example.app:/oauth2redirect",
        ] {
            assert!(redirect_uri_ok(ok), "{ok}");
        }
    }

    #[test]
    fn loopback_redirects_match_on_any_port() {
        let reg = "http://127.0.0.1:33418/callback";
        assert!(redirect_registered(reg, "http://127.0.0.1:40000/callback"));
        assert!(redirect_registered(reg, "http://127.0.0.1/callback"));
        assert!(redirect_registered(
            "http://[::1]:1/cb?x=1",
            "http://[::1]:2/cb?x=1"
        ));
        for bad in [
            "http://127.0.0.1:40000/callback/x",
            "http://127.0.0.1:40000/callbacK",
            "http://localhost:33418/callback",
            "http://127.0.0.1:40000/callback?x=1",
            "https://127.0.0.1:33418/callback",
            "http://127.0.0.1.evil.example:33418/callback",
        ] {
            assert!(!redirect_registered(reg, bad), "{bad}");
        }
        let https = "https://claude.ai/api/mcp/auth_callback";
        assert!(redirect_registered(https, https));
        assert!(!redirect_registered(
            https,
            "https://claude.ai:444/api/mcp/auth_callback"
        ));
    }

    #[test]
    fn pkce_s256_matches_rfc7636_example() {
        assert!(pkce_ok(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(!pkce_ok(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXx",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
    }
}
