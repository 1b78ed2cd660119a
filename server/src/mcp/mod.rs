//! The MCP connector: `POST /mcp`, a stateless Streamable HTTP MCP server (rmcp)
//! with one tool, `request`, that performs an HTTP API call in-process, as the
//! caller, through the same router the HTTP API uses.
//!
//! The bearer check runs before rmcp sees the request: without a valid token
//! the answer is 401 with `WWW-Authenticate` pointing at the protected-resource
//! metadata, which is how chat clients discover the OAuth flow (`oauth.rs`).

pub mod cimd;
pub mod oauth;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use tower::ServiceExt;

use crate::app::AppState;
use crate::auth;
use crate::error::AppError;

/// Paths the tool may not reach: sign-in, OAuth, the connector itself.
const FORBIDDEN: &[&str] = &["/auth", "/oauth", "/mcp", "/.well-known"];

/// The tool's arguments. Unknown ones are refused (there is no `headers`:
/// a step-up code goes in the path as `?code=`).
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestArgs {
    /// GET, POST, PATCH or DELETE
    pub method: String,
    /// Path with query string, e.g. `/contacts?stage=lead&limit=20` or `/contacts/c_7k2m9q4x1d3f`;
    /// characters a URL cannot hold (spaces, quotes, `#`, non-ASCII) are percent-encoded for you
    pub path: String,
    /// JSON body for POST and PATCH
    pub body: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The MCP server: the API router it forwards to, and its one tool.
#[derive(Clone)]
pub struct Connector {
    api: Router,
}

const TOOL_DESCRIPTION: &str = "Call the crmkit CRM HTTP API as the signed-in user and get its plain-text answer. \
Records are one line each: `contact/c_… name=\"Jane Doe\" email=… stage=lead`; lists end with `# N contacts` and `# next: CURSOR`. \
Endpoints: GET/POST /contacts, /companies, /deals (POST upserts contacts by email, companies by domain); GET/PATCH/DELETE /{kind}/{id}; \
GET /{kind}/summary?by=stage (counts, and deal amounts per currency, over the filtered records); \
GET/POST /contacts/{id}/activities {kind: call|email|meeting|note|task, body, deal_id?}; GET /deals/{id}/activities, /activities/{id}, /activities?occurred_at=gte:TIME, /reminders?days=N, \
/audit?target=deal/d_…&action=deal.update, /whoami, /tokens, /workspaces. \
Filters: field=[op:]value with ops eq ne gt gte lt lte like in is:null not:null, plus custom.KEY, tags=vip, search=TEXT, sort=-field, limit<=200, cursor=. \
Delete is two-step: the first DELETE answers confirmation_required with a confirm token; repeat with ?confirm=TOKEN only if the user agrees. \
Promoting to admin, inviting as admin and deleting a workspace answer escalation_required and email the user a code: ask them for it and repeat with ?code=CODE. \
Errors carry a hint saying what to do next. GET /help returns the whole manual.";

#[tool_router]
impl Connector {
    pub fn new(api: Router) -> Self {
        Connector { api }
    }

    #[tool(
        name = "request",
        description = TOOL_DESCRIPTION,
        annotations(title = "crmkit API request", read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false)
    )]
    async fn request(
        &self,
        Parameters(args): Parameters<RequestArgs>,
        Extension(parts): Extension<axum::http::request::Parts>,
    ) -> Result<CallToolResult, McpError> {
        let refuse = |msg: String| Ok(CallToolResult::error(vec![ContentBlock::text(msg)]));
        let method = match args.method.to_ascii_uppercase().as_str() {
            "GET" => Method::GET,
            "POST" => Method::POST,
            "PATCH" => Method::PATCH,
            "DELETE" => Method::DELETE,
            other => {
                return refuse(format!(
                    "error: invalid_request\nmessage: method {other:?} is not allowed\nhint: use GET, POST, PATCH or DELETE\n"
                ));
            }
        };
        let path = encode_path(args.path.trim());
        let path = path.as_str();
        let path_only = path.split(['?', '#']).next().unwrap_or("");
        let reachable = path.starts_with('/')
            && !path.starts_with("//")
            && !path.contains('\\')
            && !path.contains("://")
            && !FORBIDDEN
                .iter()
                .any(|p| path_only == *p || path_only.starts_with(&format!("{p}/")));
        if !reachable {
            return refuse(format!(
                "error: invalid_request\nmessage: path {:?} is not an API path this tool can call\nhint: send a path of the CRM API starting with /, e.g. /contacts?search=acme (not /auth, /oauth, /mcp or a full URL); GET /help lists them\n",
                path.chars().take(100).collect::<String>()
            ));
        }
        if path.len() > 16 * 1024 {
            return refuse(format!(
                "error: invalid_request\nmessage: the path is {} bytes long; at most 16384 are allowed\nhint: shorten the query: page with limit= and cursor= rather than listing ids\n",
                path.len()
            ));
        }
        let mut builder = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::ACCEPT, "text/plain");
        if let Some(auth) = parts.headers.get(header::AUTHORIZATION) {
            builder = builder.header(header::AUTHORIZATION, auth.clone());
        }
        let body = match &args.body {
            Some(b) => Body::from(serde_json::to_vec(b).unwrap_or_default()),
            None => Body::empty(),
        };
        let req = match builder.body(body) {
            Ok(r) => r,
            Err(_) => return refuse("error: invalid_request\nmessage: the path is not a valid URL path\nhint: percent-encode special characters in the path\n".into()),
        };
        let res = self
            .api
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 16 * 1024 * 1024)
            .await
            .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(if status.is_client_error() || status.is_server_error() {
            CallToolResult::error(vec![ContentBlock::text(text)])
        } else {
            CallToolResult::success(vec![ContentBlock::text(text)])
        })
    }
}

/// Percent-encodes what a URL cannot hold, so that an agent may write a
/// path as it reads (`/contacts?search=bulk 01`, `search=#1`): whitespace,
/// quotes, `#` (an API call has no fragment), the characters < > \\ ^ { | }
/// and the backtick, controls and non-ASCII. A `%` followed by two hex
/// digits is taken as already encoded.
fn encode_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    for (i, &b) in bytes.iter().enumerate() {
        let encoded_already = b == b'%'
            && bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
        let keep = encoded_already || (b.is_ascii_graphic() && !b"\"#<>\\^`{|}%".contains(&b));
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[tool_handler]
impl ServerHandler for Connector {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build());
        info.server_info = Implementation::new("crmkit", env!("CARGO_PKG_VERSION"));
        info.instructions = Some(
            "crmkit is a CRM. Use the `request` tool to call its HTTP API; start with GET /whoami or GET /help.".into(),
        );
        info
    }
}

/// Hosts rmcp accepts in `Host:` (it defaults to loopback only).
fn allowed_hosts(base_url: &str) -> Vec<String> {
    let mut hosts = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Some(rest) = base_url.split("://").nth(1) {
        let authority = rest.split('/').next().unwrap_or("");
        hosts.push(authority.to_string());
        if let Some((host, _)) = authority.rsplit_once(':') {
            hosts.push(host.to_string());
        }
    }
    hosts
}

/// `/mcp`: CORS preflight, then the bearer check, then rmcp.
pub fn router(state: AppState, api: Router) -> Router<AppState> {
    // Stateless: no session lives in this process, so any node can answer.
    let mut config = StreamableHttpServerConfig::default();
    config.legacy_session_mode = false;
    config.json_response = true;
    config.allowed_hosts = allowed_hosts(&state.settings.base_url);
    config.max_request_body_bytes = state.settings.body_limit;
    let connector = Connector::new(api);
    let service = StreamableHttpService::new(
        move || Ok(connector.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    Router::new()
        .route_service("/mcp", service)
        .layer(axum::middleware::from_fn_with_state(state, guard))
}

/// The MCP transport's own refusals (a wrong method, a Host outside the base
/// URL's) are one line of plain text: answered instead as crmkit errors, with
/// a hint and in the format asked for. JSON-RPC answers pass as they are.
async fn transport_error(res: Response) -> Response {
    let status = res.status();
    let json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/event-stream"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return res;
    }
    let said = axum::body::to_bytes(res.into_body(), 4096)
        .await
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim()
                .chars()
                .take(200)
                .collect::<String>()
        })
        .unwrap_or_default();
    let hint = match status {
        StatusCode::FORBIDDEN => {
            "this server answers MCP only on its own host name (the one in CRMKIT_BASE_URL); connect to that URL"
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            "POST JSON-RPC messages to /mcp; this stateless server offers no GET stream and no session to DELETE"
        }
        _ => {
            "POST one JSON-RPC message to /mcp with a bearer token; GET /help describes the connector"
        }
    };
    let message = if said.is_empty() {
        status.canonical_reason().unwrap_or("refused").to_string()
    } else {
        said
    };
    let code = if status.is_server_error() {
        "internal"
    } else {
        "invalid_request"
    };
    AppError::new(code, status, message, hint).into_response()
}

fn cors(res: &mut Response) {
    let h = res.headers_mut();
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("authorization, content-type, accept, mcp-protocol-version, mcp-method, mcp-name, mcp-session-id, last-event-id"),
    );
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static("www-authenticate, mcp-session-id, mcp-protocol-version"),
    );
}

/// Answers preflights, and 401 with the OAuth discovery pointer when the
/// bearer token is missing or bad.
async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() == Method::OPTIONS {
        let mut res = StatusCode::NO_CONTENT.into_response();
        cors(&mut res);
        return res;
    }
    let (parts, body) = req.into_parts();
    let metadata = format!(
        "{}/.well-known/oauth-protected-resource",
        state.settings.base_url
    );
    let result = match auth::bearer(&parts) {
        Ok(token) => auth::authenticate(&state, &token)
            .await
            .map_err(|e| (e, true)),
        Err(e) => Err((e, parts.headers.contains_key(header::AUTHORIZATION))),
    };
    let mut res = match result {
        Ok(_) if parts.method == Method::POST => {
            // JSON-RPC garbage gets a JSON-RPC parse error, not a transport message.
            match crate::extract::body_bytes(
                Request::from_parts(parts.clone(), body),
                state.settings.body_limit,
            )
            .await
            {
                Ok(bytes) if serde_json::from_slice::<serde_json::Value>(&bytes).is_ok() => {
                    // A JSON body is JSON whatever its Content-Type says, as on
                    // the rest of the API, and the answer is JSON (the service
                    // answers every POST with one JSON body), so the transport
                    // gets the headers it insists on.
                    let mut parts = parts;
                    parts.headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    parts.headers.insert(
                        header::ACCEPT,
                        HeaderValue::from_static("application/json, text/event-stream"),
                    );
                    transport_error(
                        next.run(Request::from_parts(parts, Body::from(bytes)))
                            .await,
                    )
                    .await
                }
                Ok(_) => {
                    let v = serde_json::json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "Parse error: the body is not JSON"}});
                    crate::negotiate::json_response(StatusCode::BAD_REQUEST, &v)
                }
                Err(e) => e.into_response(),
            }
        }
        Ok(_) => transport_error(next.run(Request::from_parts(parts, body)).await).await,
        Err((mut e, sent)) => {
            if e.status == StatusCode::UNAUTHORIZED {
                let challenge = if sent {
                    format!("Bearer resource_metadata=\"{metadata}\", error=\"invalid_token\"")
                } else {
                    format!("Bearer resource_metadata=\"{metadata}\"")
                };
                e.headers.push(("www-authenticate", challenge));
                e.hint = format!("connect through OAuth: see {metadata}");
            }
            let e: AppError = e;
            e.into_response()
        }
    };
    cors(&mut res);
    res
}

#[cfg(test)]
mod tests {
    use super::encode_path;

    #[test]
    fn paths_are_encoded_as_an_agent_means_them() {
        assert_eq!(
            encode_path("/contacts?search=bulk 01"),
            "/contacts?search=bulk%2001"
        );
        assert_eq!(encode_path("/contacts?search=#1"), "/contacts?search=%231");
        assert_eq!(
            encode_path("/contacts?name=\"Zoë\""),
            "/contacts?name=%22Zo%C3%AB%22"
        );
        assert_eq!(
            encode_path("/contacts?search=a%20b"),
            "/contacts?search=a%20b"
        );
        assert_eq!(
            encode_path("/contacts?search=100%"),
            "/contacts?search=100%25"
        );
        assert_eq!(
            encode_path("/contacts?search=%zz"),
            "/contacts?search=%25zz"
        );
        assert_eq!(
            encode_path("/a?x={|}^`<>\\\t"),
            "/a?x=%7B%7C%7D%5E%60%3C%3E%5C%09"
        );
        assert_eq!(
            encode_path("/contacts?stage=lead&limit=20"),
            "/contacts?stage=lead&limit=20"
        );
    }
}
