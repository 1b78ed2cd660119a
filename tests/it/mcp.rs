//! The MCP connector and its OAuth 2.1 flow over real HTTP (issue: MCP
//! connector; SECURITY R33–R37).

use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::Server;

pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk-crmkit-test-verifier";

pub fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The value of a hidden input in the page.
fn input(html: &str, name: &str) -> String {
    let needle = format!("name=\"{name}\" value=\"");
    let i = html
        .find(&needle)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + needle.len();
    html[i..].split('"').next().unwrap().to_string()
}

pub async fn register(s: &Server, redirect: &str, name: &str) -> String {
    let r = s
        .post(
            "/oauth/register",
            None,
            &json!({"redirect_uris": [redirect], "client_name": name}).to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let v = r.json();
    assert!(v.get("client_secret").is_none());
    v["client_id"].as_str().unwrap().to_string()
}

pub fn authorize_url(
    s: &Server,
    client: &str,
    redirect: &str,
    verifier: &str,
    state: &str,
) -> String {
    s.url(&format!(
        "/oauth/authorize?response_type=code&client_id={}&redirect_uri={}&code_challenge={}&code_challenge_method=S256&state={state}&resource={}",
        enc(client),
        enc(redirect),
        challenge(verifier),
        enc(&s.url("/mcp"))
    ))
}

/// Walks the sign-in page as a browser would; returns the redirect Location.
pub async fn sign_in(s: &Server, client: &str, redirect: &str, email: &str) -> String {
    let http = no_redirects();
    let page = http
        .get(authorize_url(s, client, redirect, VERIFIER, "xyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert!(page.headers().get("access-control-allow-origin").is_none());
    let html = page.text().await.unwrap();
    let (flow, csrf) = (input(&html, "flow"), input(&html, "csrf"));
    let before = s.smtp().mails_to(email).len();
    let post = |body: String| {
        http.post(s.url("/oauth/authorize"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let r = post(format!(
        "flow={}&csrf={}&step=email&email={}",
        enc(&flow),
        enc(&csrf),
        enc(email)
    ))
    .await
    .unwrap();
    assert!(r.text().await.unwrap().contains("Enter your code"));
    let code = s.nth_code(email, before + 1).await;
    let r = post(format!(
        "flow={}&csrf={}&step=code&code={code}",
        enc(&flow),
        enc(&csrf)
    ))
    .await
    .unwrap();
    let consent = r.text().await.unwrap();
    assert!(consent.contains("Allow access?"), "{consent}");
    let i = consent.find("<option value=\"").unwrap() + 15;
    let ws = consent[i..].split('"').next().unwrap().to_string();
    let r = post(format!(
        "flow={}&csrf={}&step=consent&workspace={ws}&decision=allow",
        enc(&flow),
        enc(&csrf)
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 303, "no 307 after the code POST");
    r.headers()["location"].to_str().unwrap().to_string()
}

pub fn query_param(url: &str, key: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    q.split('&')
        .find_map(|p| p.strip_prefix(&format!("{key}=")))
        .map(percent_decode)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() + 1 {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

pub async fn token_request(s: &Server, form: &str) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = s
        .http
        .post(s.url("/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.json().await.unwrap_or(Value::Null), headers)
}

/// The token endpoint's form that redeems `code` (PKCE with [`VERIFIER`]).
pub fn code_form(code: &str, client: &str, redirect: &str) -> String {
    format!(
        "grant_type=authorization_code&code={}&client_id={}&redirect_uri={}&code_verifier={VERIFIER}",
        enc(code),
        enc(client),
        enc(redirect)
    )
}

/// POST /oauth/revoke for a token (always 200, RFC 7009).
pub async fn revoke(s: &Server, token: &str) {
    let r = s
        .http
        .post(s.url("/oauth/revoke"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", enc(token)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Registers a client, signs in, exchanges the code: (client_id, token response).
pub async fn connect(s: &Server, email: &str) -> (String, Value) {
    let redirect = "https://claude.ai/api/mcp/auth_callback";
    let client = register(s, redirect, "Claude").await;
    let location = sign_in(s, &client, redirect, email).await;
    assert!(location.starts_with(redirect), "{location}");
    assert_eq!(query_param(&location, "state").as_deref(), Some("xyz"));
    assert_eq!(
        query_param(&location, "iss").as_deref(),
        Some(s.base.as_str())
    );
    let code = query_param(&location, "code").unwrap();
    let (status, body, headers) = token_request(s, &code_form(&code, &client, redirect)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    (client, body)
}

pub async fn mcp(
    s: &Server,
    token: Option<&str>,
    body: Value,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut rb = s
        .http
        .post(s.url("/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .body(body.to_string());
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    assert!(status < 500, "{status}: {text}");
    // JSON, or one SSE `data:` event.
    let json_text = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .unwrap_or(text.clone());
    (
        status,
        serde_json::from_str(&json_text).unwrap_or(Value::String(text)),
        headers,
    )
}

fn call(path: &str, method: &str, body: Option<Value>) -> Value {
    let mut args = json!({"method": method, "path": path});
    if let Some(b) = body {
        args["body"] = b;
    }
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "request", "arguments": args}})
}

fn tool_text(v: &Value) -> String {
    v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn discovery_metadata_is_complete() {
    let s = Server::start().await;
    let (status, _, headers) = mcp(
        &s,
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    )
    .await;
    assert_eq!(status, 401);
    let challenge = headers["www-authenticate"].to_str().unwrap().to_string();
    assert_eq!(
        challenge,
        format!(
            "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource\"",
            s.base
        )
    );
    let (status, _, headers) = mcp(
        &s,
        Some("ck_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\"")
    );
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let v = s.send(Method::GET, path, None, None, &[]).await.json();
        assert_eq!(v["resource"], format!("{}/mcp", s.base));
        assert_eq!(v["authorization_servers"], json!([s.base]));
    }
    let v = s
        .send(
            Method::GET,
            "/.well-known/oauth-authorization-server",
            None,
            None,
            &[],
        )
        .await
        .json();
    assert_eq!(v["issuer"], s.base);
    assert_eq!(v["token_endpoint"], format!("{}/oauth/token", s.base));
    assert_eq!(v["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(v["token_endpoint_auth_methods_supported"], json!(["none"]));
    assert_eq!(v["client_id_metadata_document_supported"], true);
    assert_eq!(
        v["grant_types_supported"],
        json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(v["authorization_response_iss_parameter_supported"], true);
    let pre = s
        .http
        .request(Method::OPTIONS, s.url("/mcp"))
        .header("origin", "https://inspector.example")
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success());
    assert_eq!(pre.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn a_chat_client_connects_and_acts_as_the_user() {
    let s = Server::start().await;
    let (_, tok) = connect(&s, "chat@example.com").await;
    let access = tok["access_token"].as_str().unwrap().to_string();
    assert!(access.starts_with("ck_"));
    let (status, init, _) = mcp(
        &s,
        Some(&access),
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}),
    )
    .await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["result"]["serverInfo"]["name"], "crmkit");
    let (_, list, _) = mcp(
        &s,
        Some(&access),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    let tools = list["result"]["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0]["name"], "request");
    assert_eq!(tools[0]["annotations"]["destructiveHint"], true);
    assert!(
        tools[0]["description"]
            .as_str()
            .unwrap()
            .contains("GET /help")
    );

    let (_, who, _) = mcp(&s, Some(&access), call("/whoami", "GET", None)).await;
    assert!(tool_text(&who).contains("email=chat@example.com"), "{who}");
    assert!(tool_text(&who).contains("token_name=Claude"), "{who}");
    let (_, created, _) = mcp(
        &s,
        Some(&access),
        call("/contacts", "POST", Some(json!({"name": "From chat"}))),
    )
    .await;
    assert!(tool_text(&created).contains("# created"), "{created}");
    let (_, listed, _) = mcp(
        &s,
        Some(&access),
        call("/contacts?search=chat", "GET", None),
    )
    .await;
    assert!(
        tool_text(&listed).contains("name=\"From chat\""),
        "{listed}"
    );
    // API errors are tool errors with the same text.
    let (_, nf, _) = mcp(
        &s,
        Some(&access),
        call("/contacts/c_000000000000", "GET", None),
    )
    .await;
    assert_eq!(nf["result"]["isError"], true);
    assert!(tool_text(&nf).starts_with("error: not_found"));

    // The token is an ordinary crmkit token: listed, and revocable there.
    let tokens = s.get("/tokens", &access).await;
    let line = tokens
        .text
        .lines()
        .find(|l| l.contains("name=Claude"))
        .unwrap()
        .to_string();
    let id = line
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches("token/")
        .to_string();
    assert_eq!(
        s.delete(&format!("/tokens/{id}"), &access).await.status,
        200
    );
    let (status, _, _) = mcp(&s, Some(&access), call("/whoami", "GET", None)).await;
    assert_eq!(status, 401);
    // ... and its refresh token died with it.
    let (status, body, _) = token_request(
        &s,
        &format!(
            "grant_type=refresh_token&refresh_token={}&client_id=x",
            tok["refresh_token"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
}

#[tokio::test]
async fn the_tool_reaches_only_the_crm_api_as_the_caller_r37() {
    let s = Server::start().await;
    let (_, tok) = connect(&s, "r37a@example.com").await;
    let a = tok["access_token"].as_str().unwrap().to_string();
    let b = s.login("r37b@example.com").await;
    let theirs = s
        .post("/contacts?format=json", Some(&b), r#"{"name":"B secret"}"#)
        .await
        .json()["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, r, _) = mcp(
        &s,
        Some(&a),
        call(&format!("/contacts/{theirs}"), "GET", None),
    )
    .await;
    assert!(tool_text(&r).starts_with("error: not_found"), "{r}");
    // A local trap listener: the tool must never reach it.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = trap.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h2 = hits.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = trap.accept().await {
            h2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    for path in [
        format!("http://127.0.0.1:{port}/x"),
        format!("//127.0.0.1:{port}/x"),
        "/auth/request".into(),
        "/oauth/token".into(),
        "/mcp".into(),
        "/.well-known/oauth-authorization-server".into(),
        "contacts".into(),
    ] {
        let (status, r, _) = mcp(&s, Some(&a), call(&path, "GET", None)).await;
        assert_eq!(status, 200);
        assert_eq!(r["result"]["isError"], true, "{path}: {r}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the trap was reached"
    );
    // Bad tool calls: unknown tool, missing path, non-object body, garbage.
    for body in [
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "nope", "arguments": {}}}),
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "request", "arguments": {"method": "GET"}}}),
        json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "request", "arguments": {"method": "POST", "path": "/contacts", "body": [1]}}}),
    ] {
        let (status, r, _) = mcp(&s, Some(&a), body.clone()).await;
        assert!(status < 500);
        assert!(
            r.get("error").is_some() || r["result"]["isError"] == true,
            "{body}: {r}"
        );
    }
    let r = s
        .http
        .post(s.url("/mcp"))
        .bearer_auth(&a)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert!(r.status().as_u16() < 500);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("-32700") || text.contains("Parse error") || text.contains("error"),
        "{text}"
    );
}

#[tokio::test]
async fn registration_refuses_unsafe_redirects_r34() {
    let s = Server::start().await;
    for uris in [
        json!(["http://evil.example/cb"]),
        json!(["javascript:alert(1)"]),
        json!(["data:text/html,x"]),
        json!(["file:///etc/passwd"]),
        json!(["http://127.0.0.1@evil.example/cb"]),
        json!(["http://localhost.evil.example/cb"]),
        json!(["https://app.example/cb#frag"]),
        json!(["vbscript:/msgbox"]),
        json!(["JavaScript://%0aalert(1)"]),
        json!(["chrome-extension://abc/cb"]),
        json!([]),
    ] {
        let r = s
            .post(
                "/oauth/register",
                None,
                &json!({"redirect_uris": uris, "client_name": "x"}).to_string(),
            )
            .await;
        assert_eq!(r.status, 400, "{uris}: {}", r.text);
        assert!(
            r.json()["error"].as_str().unwrap().starts_with("invalid_"),
            "{}",
            r.text
        );
    }
    let r = s
        .post("/oauth/register", None, r#"{"client_name":"x"}"#)
        .await;
    assert_eq!(r.status, 400);
    let big = format!(
        r#"{{"redirect_uris":["https://a.example/cb"],"client_name":"{}"}}"#,
        "x".repeat(1024 * 1024)
    );
    assert_eq!(s.post("/oauth/register", None, &big).await.status, 413);
    for ok in [
        "https://chatgpt.com/connector_platform_oauth_redirect",
        "https://claude.com/api/mcp/auth_callback",
        "http://localhost:6274/oauth/callback",
    ] {
        register(&s, ok, "ok").await;
    }
    // A hostile name is shown escaped on the page.
    let redirect = "https://app.example/cb";
    let client = register(&s, redirect, "<script>alert(1)</script>").await;
    let page = s
        .http
        .get(authorize_url(&s, &client, redirect, VERIFIER, "s"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("<script>alert"), "unescaped name");
    assert!(page.contains("&lt;script&gt;"));
}

#[tokio::test]
async fn authorize_never_redirects_to_unregistered_places_r35() {
    let s = Server::start().await;
    let redirect = "http://127.0.0.1:9/cb";
    let client = register(&s, redirect, "t").await;
    let http = no_redirects();
    let base = |client: &str, redirect: &str| authorize_url(&s, client, redirect, VERIFIER, "st");
    for url in [
        base(&client, "http://127.0.0.1:9/cb/"),
        base(&client, "http://127.0.0.1:9/CB"),
        base(&client, "http://localhost:9/cb"),
        base(&client, "http://127.0.0.1:9/cb?x=1"),
        base(&client, "https://evil.example/cb"),
        base("mcp_unknown", redirect),
        format!(
            "{}&redirect_uri={}",
            base(&client, redirect),
            enc("https://evil.example/cb")
        ),
        format!("{}&client_id={}", base(&client, redirect), enc(&client)),
    ] {
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 400, "{url}");
        assert!(r.headers().get("location").is_none());
        assert!(r.text().await.unwrap().contains("Cannot continue"));
    }
    // A loopback redirect on another port is the same app (RFC 8252 §7.3):
    // the whole flow goes through on the port the app listens on now.
    let moved = "http://127.0.0.1:40000/cb";
    let loc = sign_in(&s, &client, moved, "r35@example.com").await;
    assert!(loc.starts_with(&format!("{moved}?")), "{loc}");
    let code = query_param(&loc, "code").unwrap();
    let (status, body, _) = token_request(&s, &code_form(&code, &client, moved)).await;
    assert_eq!(status, 200, "{body}");
    // A native app's own scheme (RFC 8252 §7.1), as desktop clients register.
    let native = "cursor://anysphere.cursor-retrieval/oauth/user-crmkit/callback";
    let app = register(&s, native, "Cursor").await;
    let loc = sign_in(&s, &app, native, "r35@example.com").await;
    assert!(loc.starts_with(&format!("{native}?code=")), "{loc}");
    // PKCE and response_type problems go back to the registered URI as errors.
    let good = base(&client, redirect);
    for url in [
        good.replace("&code_challenge_method=S256", ""),
        good.replace("code_challenge_method=S256", "code_challenge_method=plain"),
        good.replace(&format!("code_challenge={}&", challenge(VERIFIER)), ""),
        good.replace("response_type=code", "response_type=token"),
    ] {
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 303, "{url}");
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        assert!(loc.starts_with(redirect) && loc.contains("error="), "{loc}");
        assert!(loc.contains("error_description="), "{loc}");
    }
}

#[tokio::test]
async fn the_token_endpoint_binds_codes_r36() {
    let s = Server::start().await;
    let redirect = "https://claude.ai/api/mcp/auth_callback";
    let client = register(&s, redirect, "Claude").await;
    let other = register(&s, redirect, "Other").await;
    let exchange = |code: String, client: String, redirect: String, verifier: String| {
        let s = &s;
        async move {
            token_request(s, &format!("grant_type=authorization_code&code={}&client_id={}&redirect_uri={}&code_verifier={}", enc(&code), enc(&client), enc(&redirect), verifier)).await
        }
    };
    // Wrong verifier, other client, other redirect: each refused (and the code burnt).
    for (c, r, v) in [
        (client.clone(), redirect.to_string(), format!("{VERIFIER}x")),
        (other.clone(), redirect.to_string(), VERIFIER.to_string()),
        (
            client.clone(),
            "https://claude.com/api/mcp/auth_callback".to_string(),
            VERIFIER.to_string(),
        ),
    ] {
        let loc = sign_in(&s, &client, redirect, "r36@example.com").await;
        let code = query_param(&loc, "code").unwrap();
        let (status, body, _) = exchange(code, c, r, v).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant")),
            "{body}"
        );
    }
    // Five parallel redemptions: exactly one succeeds; the replay revokes it.
    let loc = sign_in(&s, &client, redirect, "r36@example.com").await;
    let code = query_param(&loc, "code").unwrap();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (http, url) = (s.http.clone(), s.url("/oauth/token"));
        let body = code_form(&code, &client, redirect);
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    let results: Vec<(u16, Value)> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let winners: Vec<&Value> = results
        .iter()
        .filter(|(st, _)| *st == 200)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for (status, body) in results.iter().filter(|(st, _)| *st != 200) {
        assert_eq!(
            (*status, body["error"].as_str()),
            (400, Some("invalid_grant")),
            "{results:?}"
        );
    }
    let access = winners[0]["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        s.get("/whoami", &access).await.status,
        401,
        "a replayed code must revoke the token it issued"
    );
    // Refresh rotation: the new pair works, the old access token is gone.
    let (_, tok) = connect(&s, "r36b@example.com").await;
    let rt = tok["refresh_token"].as_str().unwrap().to_string();
    let (status, fresh, _) = token_request(
        &s,
        &format!(
            "grant_type=refresh_token&refresh_token={rt}&client_id={}",
            enc(&latest_client(&s).await)
        ),
    )
    .await;
    assert_eq!(status, 200, "{fresh}");
    assert_eq!(
        s.get("/whoami", tok["access_token"].as_str().unwrap())
            .await
            .status,
        401
    );
    assert_eq!(
        s.get("/whoami", fresh["access_token"].as_str().unwrap())
            .await
            .status,
        200
    );
    // Revocation endpoint.
    revoke(&s, fresh["access_token"].as_str().unwrap()).await;
    assert_eq!(
        s.get("/whoami", fresh["access_token"].as_str().unwrap())
            .await
            .status,
        401
    );
}

/// The client id of the newest unused refresh token.
async fn latest_client(s: &Server) -> String {
    let db = crate::harness::open_db(s).await;
    use sea_orm::ConnectionTrait;
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(db.get_database_backend(), "SELECT client_id FROM oauth_refresh WHERE used = false ORDER BY expires_at DESC LIMIT 1".to_string()))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "client_id").unwrap()
}

#[tokio::test]
async fn the_sign_in_page_survives_bad_input() {
    let s = Server::start().await;
    let redirect = "https://app.example/cb";
    let client = register(&s, redirect, "App").await;
    let http = no_redirects();
    let html = http
        .get(authorize_url(&s, &client, redirect, VERIFIER, "s"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (flow, csrf) = (input(&html, "flow"), input(&html, "csrf"));
    let post = |body: String| {
        http.post(s.url("/oauth/authorize"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    // Forged CSRF token.
    let r = post(format!(
        "flow={}&csrf=forged&step=email&email=a%40example.com",
        enc(&flow)
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("CSRF"));
    // Bad email: the form again with a message.
    let r = post(format!(
        "flow={}&csrf={}&step=email&email=not-an-email",
        enc(&flow),
        enc(&csrf)
    ))
    .await
    .unwrap();
    assert!(r.text().await.unwrap().contains("class=\"err\""));
    let r = post(format!(
        "flow={}&csrf={}&step=email&email=page%40example.com",
        enc(&flow),
        enc(&csrf)
    ))
    .await
    .unwrap();
    assert!(r.text().await.unwrap().contains("Enter your code"));
    let code = s.nth_code("page@example.com", 1).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let r = post(format!(
        "flow={}&csrf={}&step=code&code={wrong}",
        enc(&flow),
        enc(&csrf)
    ))
    .await
    .unwrap();
    let t = r.text().await.unwrap();
    assert!(t.contains("wrong or expired"), "{t}");
    // Retry with the right code works.
    let r = post(format!(
        "flow={}&csrf={}&step=code&code={code}",
        enc(&flow),
        enc(&csrf)
    ))
    .await
    .unwrap();
    assert!(r.text().await.unwrap().contains("Allow access?"));
    // Deny goes back with access_denied.
    let r = post(format!(
        "flow={}&csrf={}&step=consent&workspace=w_x&decision=deny",
        enc(&flow),
        enc(&csrf)
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .contains("error=access_denied")
    );
}

#[tokio::test]
async fn both_protocol_generations_are_served() {
    let s = Server::start().await;
    let t = s.login("gen@example.com").await;
    // The stateless 2026-07-28 revision: server/discover, then a call with per-request metadata.
    let r = s
        .http
        .post(s.url("/mcp"))
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "server/discover")
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {}
            }}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("crmkit"), "{text}");
    // The handshake era.
    for version in ["2025-03-26", "2025-06-18", "2025-11-25"] {
        let r = s
            .http
            .post(s.url("/mcp"))
            .bearer_auth(&t)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}).to_string())
            .send()
            .await
            .unwrap();
        let text = r.text().await.unwrap();
        assert!(
            text.contains(&format!("\"protocolVersion\":\"{version}\"")),
            "{version}: {text}"
        );
    }
}

/// A web server for one client metadata document: every request gets the
/// status and body set last, and is counted.
struct DocServer {
    port: u16,
    reply: std::sync::Arc<std::sync::Mutex<(u16, String)>>,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl DocServer {
    async fn start() -> DocServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = DocServer {
            port: listener.local_addr().unwrap().port(),
            reply: std::sync::Arc::new(std::sync::Mutex::new((404, String::new()))),
            hits: std::sync::Arc::default(),
        };
        let (reply, hits) = (server.reply.clone(), server.hits.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (reply, hits) = (reply.clone(), hits.clone());
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let (status, body) = reply.lock().unwrap().clone();
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(body.as_bytes()).await;
                });
            }
        });
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn serve(&self, status: u16, body: &str) {
        *self.reply.lock().unwrap() = (status, body.to_string());
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The authorization page's text for a client and redirect.
async fn authorize_page(s: &Server, client: &str, redirect: &str) -> (u16, String) {
    let r = no_redirects()
        .get(authorize_url(s, client, redirect, VERIFIER, "xyz"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A client known only by its metadata document URL (no registration)
/// connects: the server fetches the document once, signs the user in,
/// and the code exchange names the same URL.
#[tokio::test]
async fn a_client_known_by_its_metadata_document_connects() {
    let s = Server::builder()
        .env("CRMKIT_TEST_CIMD_LOOPBACK", "1")
        .start()
        .await;
    let doc = DocServer::start().await;
    let client = doc.url("/oauth/client.json");
    let redirect = "https://chat.example/api/mcp/auth_callback";
    doc.serve(
        200,
        &json!({"client_id": client, "client_name": "Doc Chat", "redirect_uris": [redirect],
                "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
                "token_endpoint_auth_method": "none"})
        .to_string(),
    );
    let location = sign_in(&s, &client, redirect, "doc@example.com").await;
    assert!(location.starts_with(redirect), "{location}");
    assert_eq!(doc.hits(), 1);
    let code = query_param(&location, "code").unwrap();
    let (status, body, _) = token_request(&s, &code_form(&code, &client, redirect)).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap();
    let tokens = s.get("/tokens", token).await;
    assert_eq!(tokens.status, 200);
    assert!(tokens.text.contains("Doc Chat"), "{}", tokens.text);
    // Fetched documents are used for a while before being fetched again.
    assert_eq!(authorize_page(&s, &client, redirect).await.0, 200);
    assert_eq!(doc.hits(), 1);
    // The code is bound to the document's URL like any client id.
    let (status, _, _) = token_request(
        &s,
        &format!("grant_type=authorization_code&code={}&client_id={}&redirect_uri={}&code_verifier={VERIFIER}", enc(&code), enc(&doc.url("/other.json")), enc(redirect)),
    )
    .await;
    assert_eq!(status, 400);
}

/// Documents that are not used, each with a page that says why; and without
/// the test flag nothing on loopback (or over http) is ever fetched.
#[tokio::test]
async fn client_metadata_documents_that_are_refused() {
    let s = Server::builder()
        .env("CRMKIT_TEST_CIMD_LOOPBACK", "1")
        .start()
        .await;
    let doc = DocServer::start().await;
    let redirect = "https://chat.example/cb";
    let good = |client: &str| json!({"client_id": client, "redirect_uris": [redirect]});
    let cases: Vec<(&str, u16, String, &str, &str)> = vec![
        ("/a.json", 200, good(&doc.url("/elsewhere.json")).to_string(), redirect, "another client_id"),
        ("/b.json", 404, String::new(), redirect, "answered 404"),
        ("/c.json", 200, "<html>not json</html>".into(), redirect, "not JSON"),
        ("/d.json", 200, format!("{{\"pad\":\"{}\"}}", "x".repeat(20_000)), redirect, "larger than 16 KiB"),
        ("/e.json", 200, json!({"client_id": doc.url("/e.json"), "redirect_uris": ["http://evil.example/cb"]}).to_string(), redirect, "is not allowed"),
        ("/f.json", 200, good(&doc.url("/f.json")).to_string(), "https://chat.example/other", "does not match"),
        ("/g.json", 200, json!({"client_id": doc.url("/g.json"), "redirect_uris": [redirect], "token_endpoint_auth_method": "private_key_jwt"}).to_string(), redirect, "client secret"),
    ];
    for (path, status, body, redirect, why) in cases {
        doc.serve(status, &body);
        let (code, page) = authorize_page(&s, &doc.url(path), redirect).await;
        assert_eq!(code, 400, "{path}: {page}");
        assert!(page.contains(why), "{path}: {page}");
    }
    // A refused document is fetched again next time (nothing was kept).
    let before = doc.hits();
    authorize_page(&s, &doc.url("/b.json"), redirect).await;
    assert_eq!(doc.hits(), before + 1);

    // Without the test flag: http is refused, loopback is refused, unfetched.
    let strict = Server::start().await;
    doc.serve(200, &good(&doc.url("/h.json")).to_string());
    let before = doc.hits();
    for (client, why) in [
        (doc.url("/h.json"), "must use https"),
        (
            format!("https://127.0.0.1:{}/h.json", doc.port),
            "not a public address",
        ),
        (
            format!("https://localhost:{}/h.json", doc.port),
            "not a public address",
        ),
    ] {
        let (code, page) = authorize_page(&strict, &client, redirect).await;
        assert_eq!(code, 400, "{client}: {page}");
        assert!(page.contains(why), "{client}: {page}");
    }
    assert_eq!(doc.hits(), before);
}

/// A token that OAuth ends is audited like DELETE /tokens/{id}: a rotation,
/// a revocation and a replayed code each leave `token.revoke` saying which.
#[tokio::test]
async fn tokens_that_oauth_ends_are_audited() {
    let s = Server::start().await;
    let email = "ended@example.com";
    let (client, tok) = connect(&s, email).await;
    let rt = tok["refresh_token"].as_str().unwrap();
    let (status, fresh, _) = token_request(
        &s,
        &format!(
            "grant_type=refresh_token&refresh_token={rt}&client_id={}",
            enc(&client)
        ),
    )
    .await;
    assert_eq!(status, 200, "{fresh}");
    revoke(&s, fresh["access_token"].as_str().unwrap()).await;
    // A code redeemed twice: the second redemption ends the first's token.
    let redirect = "https://claude.ai/api/mcp/auth_callback";
    let location = sign_in(&s, &client, redirect, email).await;
    let code = query_param(&location, "code").unwrap();
    let form = code_form(&code, &client, redirect);
    let (status, body, _) = token_request(&s, &form).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = token_request(&s, &form).await;
    assert_eq!(status, 400);
    let t = s.login(email).await;
    let audit = s.get("/audit?format=json&limit=200", &t).await.json();
    let mut ended: Vec<String> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "token.revoke")
        .map(|e| e["changes"]["via"][1].as_str().unwrap_or("").to_string())
        .collect();
    ended.sort();
    assert_eq!(
        ended,
        ["oauth code replayed", "oauth refresh", "oauth revoke"],
        "{audit}"
    );
}

/// The transport's own refusals are crmkit errors with a hint; a JSON body
/// is taken whatever its Content-Type and Accept say (SPEC §2), since every
/// answer is one JSON body.
#[tokio::test]
async fn the_transport_is_lenient_and_its_refusals_have_hints() {
    let s = Server::start().await;
    let (_, tok) = connect(&s, "transport@example.com").await;
    let token = tok["access_token"].as_str().unwrap();
    let ping = r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#;
    for (ct, accept) in [
        ("text/plain", "application/json"),
        ("application/x-www-form-urlencoded", "*/*"),
        ("application/json", "text/html"),
    ] {
        let r = s
            .http
            .post(s.url("/mcp"))
            .bearer_auth(token)
            .header("content-type", ct)
            .header("accept", accept)
            .body(ping)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{ct} / {accept}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["id"], 7, "{v}");
        assert!(v["result"].is_object(), "{v}");
    }
    let refused = [
        s.http.get(s.url("/mcp")).bearer_auth(token),
        s.http.delete(s.url("/mcp")).bearer_auth(token),
        s.http
            .post(s.url("/mcp"))
            .bearer_auth(token)
            .header("host", "evil.example")
            .body(ping),
    ];
    for (rb, status) in refused.into_iter().zip([405, 405, 403]) {
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), status);
        assert!(r.headers().contains_key("x-request-id"));
        let text = r.text().await.unwrap();
        assert!(text.starts_with("error: invalid_request\n"), "{text}");
        assert!(text.contains("\nhint: "), "{text}");
    }
}

/// The refresh grant (RFC 9700 §4.14.2): another client's attempt does not
/// use a refresh token up; a used one presented again ends the grant's
/// current tokens, as does its authorization code replayed after a
/// rotation; a grant whose access token was revoked or idled out cannot be
/// refreshed back to life.
#[tokio::test]
async fn refresh_tokens_rotate_and_a_replay_ends_the_grant() {
    let s = Server::builder()
        .env("CRMKIT_TOKEN_IDLE_TTL", "3s")
        .start()
        .await;
    let redirect = "https://claude.ai/api/mcp/auth_callback";
    let client = register(&s, redirect, "Claude").await;
    let refresh = |rt: String, client: String| {
        let s = &s;
        async move {
            let (status, body, _) = token_request(
                s,
                &format!(
                    "grant_type=refresh_token&refresh_token={}&client_id={}",
                    enc(&rt),
                    enc(&client)
                ),
            )
            .await;
            (status, body)
        }
    };
    let loc = sign_in(&s, &client, redirect, "grant@example.com").await;
    let code = query_param(&loc, "code").unwrap();
    let redeem = code_form(&code, &client, redirect);
    let (status, first, _) = token_request(&s, &redeem).await;
    assert_eq!(status, 200, "{first}");
    let rt1 = first["refresh_token"].as_str().unwrap().to_string();
    // Another client_id: refused, and the token stays usable by its client.
    let (status, body) = refresh(rt1.clone(), "someone-else".into()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("another client"),
        "{body}"
    );
    let (status, second) = refresh(rt1.clone(), client.clone()).await;
    assert_eq!(status, 200, "{second}");
    let access2 = second["access_token"].as_str().unwrap().to_string();
    let rt2 = second["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(s.get("/whoami", &access2).await.status, 200);
    // Rotated once more; then the first refresh token comes back: the
    // grant's current tokens end.
    let (status, third) = refresh(rt2.clone(), client.clone()).await;
    assert_eq!(status, 200, "{third}");
    let access3 = third["access_token"].as_str().unwrap().to_string();
    let rt3 = third["refresh_token"].as_str().unwrap().to_string();
    let (status, body) = refresh(rt1, client.clone()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("connect again"),
        "{body}"
    );
    s.get("/whoami", &access3)
        .await
        .assert_error(401, "invalid_token");
    let (status, _) = refresh(rt3, client.clone()).await;
    assert_eq!(status, 400);
    // The authorization code replayed after rotations ends the grant too.
    let loc = sign_in(&s, &client, redirect, "grant@example.com").await;
    let code = query_param(&loc, "code").unwrap();
    let redeem = code_form(&code, &client, redirect);
    let (status, got, _) = token_request(&s, &redeem).await;
    assert_eq!(status, 200, "{got}");
    let (status, rotated) = refresh(
        got["refresh_token"].as_str().unwrap().into(),
        client.clone(),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let current = rotated["access_token"].as_str().unwrap().to_string();
    assert_eq!(s.get("/whoami", &current).await.status, 200);
    let (status, _, _) = token_request(&s, &redeem).await;
    assert_eq!(status, 400);
    s.get("/whoami", &current)
        .await
        .assert_error(401, "invalid_token");
    // A connection left idle past the idle TTL: its access token expired and
    // left GET /tokens, and its refresh token cannot bring it back.
    let (_, idle) = connect(&s, "idle-grant@example.com").await;
    let idle_client = latest_client(&s).await;
    let cli = s.login_named("idle-grant@example.com", "cli").await;
    for _ in 0..6 {
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        assert_eq!(s.get("/whoami", &cli).await.status, 200);
    }
    let listed = s.get("/tokens", &cli).await;
    assert!(!listed.text.contains("name=Claude"), "{}", listed.text);
    let (status, body) = refresh(idle["refresh_token"].as_str().unwrap().into(), idle_client).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    assert!(
        body["error_description"].as_str().unwrap().contains("idle"),
        "{body}"
    );
    let listed = s.get("/tokens", &cli).await;
    assert!(!listed.text.contains("name=Claude"), "{}", listed.text);
    // RFC 6749 §3.1: a parameter given twice is refused, not guessed.
    let (status, body, _) = token_request(
        &s,
        &format!(
            "grant_type=refresh_token&refresh_token=x&refresh_token=y&client_id={}",
            enc(&client)
        ),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    // RFC 7009: a revocation must name a token.
    let r = s
        .http
        .post(s.url("/oauth/revoke"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token_type_hint=access_token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_request", "{v}");
}

/// A chat client's connection acts only in the workspace the user chose at
/// consent (the personal one is offered first): it cannot mint tokens,
/// create workspaces or reach another workspace (403 not_granted), and it
/// sees only that workspace and its tokens. The user's own tokens are not
/// limited.
#[tokio::test]
async fn a_connection_stays_in_the_workspace_it_was_granted() {
    let s = Server::start().await;
    let own = s.login("scope@example.com").await;
    let personal = s.ws_of(&own).await;
    let r = s
        .post("/workspaces?format=json", Some(&own), r#"{"name":"Other"}"#)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let other = r.json()["data"]["id"].as_str().unwrap().to_string();
    let r = s
        .post(
            &format!("/workspaces/{other}/tokens?format=json"),
            Some(&own),
            r#"{"token_name":"cli-other"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let in_other = r.json()["data"]["token"].as_str().unwrap().to_string();
    let in_other_id = s.get("/whoami?format=json", &in_other).await.json()["data"]["token"]
        .as_str()
        .unwrap()
        .trim_start_matches("token/")
        .to_string();
    let (_, tok) = connect(&s, "scope@example.com").await;
    let conn = tok["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        s.ws_of(&conn).await,
        personal,
        "the personal workspace comes first"
    );
    // Its own workspace: as any token.
    assert_eq!(
        s.get(&format!("/workspaces/{personal}"), &conn)
            .await
            .status,
        200
    );
    assert_eq!(
        s.get(&format!("/workspaces/{personal}/members"), &conn)
            .await
            .status,
        200
    );
    // No tokens, no new workspaces, nothing of the other workspace.
    for ws in [&personal, &other] {
        s.post(&format!("/workspaces/{ws}/tokens"), Some(&conn), "{}")
            .await
            .assert_error(403, "not_granted");
    }
    s.post("/workspaces", Some(&conn), r#"{"name":"More"}"#)
        .await
        .assert_error(403, "not_granted");
    s.get(&format!("/workspaces/{other}"), &conn)
        .await
        .assert_error(403, "not_granted");
    s.get(&format!("/workspaces/{other}/members"), &conn)
        .await
        .assert_error(403, "not_granted");
    s.patch(
        &format!("/workspaces/{other}"),
        &conn,
        r#"{"name":"Mine now"}"#,
    )
    .await
    .assert_error(403, "not_granted");
    s.post(
        &format!("/workspaces/{other}/invites"),
        Some(&conn),
        r#"{"email":"friend@example.com"}"#,
    )
    .await
    .assert_error(403, "not_granted");
    s.delete(&format!("/workspaces/{other}"), &conn)
        .await
        .assert_error(403, "not_granted");
    // It sees its one workspace, and the tokens acting there.
    let list = s.get("/workspaces", &conn).await;
    assert!(list.text.contains(&personal), "{}", list.text);
    assert!(!list.text.contains(&other), "{}", list.text);
    let tokens = s.get("/tokens", &conn).await;
    assert!(!tokens.text.contains(&in_other_id), "{}", tokens.text);
    s.delete(&format!("/tokens/{in_other_id}"), &conn)
        .await
        .assert_error(404, "not_found");
    assert_eq!(s.get("/whoami", &in_other).await.status, 200);
    // Through the connector's tool, the same.
    let (_, v, _) = mcp(
        &s,
        Some(&conn),
        call(
            &format!("/workspaces/{other}/tokens"),
            "POST",
            Some(json!({})),
        ),
    )
    .await;
    assert_eq!(v["result"]["isError"], true, "{v}");
    assert!(tool_text(&v).contains("not_granted"), "{v}");
    // The user's own token is not limited, and the other workspace is unchanged.
    let list = s.get("/workspaces", &own).await;
    assert!(list.text.contains(&other), "{}", list.text);
    assert!(list.text.contains("name=Other"), "{}", list.text);
    let tokens = s.get("/tokens", &own).await;
    assert!(tokens.text.contains(&in_other_id), "{}", tokens.text);
}

/// The tool refuses arguments it does not have (a `headers` argument was
/// dropped silently, and the step-up code with it), and encodes a path as
/// the agent means it: spaces, `#` and non-ASCII reach the API as text.
#[tokio::test]
async fn the_tool_refuses_unknown_arguments_and_encodes_paths() {
    let s = Server::start().await;
    let (_, tok) = connect(&s, "paths@example.com").await;
    let t = tok["access_token"].as_str().unwrap().to_string();
    let mut bad = call("/whoami", "GET", None);
    bad["params"]["arguments"]["headers"] = json!({"X-Escalation-Code": "123456"});
    let (_, v, _) = mcp(&s, Some(&t), bad).await;
    let said = v.to_string();
    assert!(
        v["error"].is_object() || v["result"]["isError"] == true,
        "{said}"
    );
    assert!(
        said.contains("unknown field") && said.contains("headers"),
        "{said}"
    );
    let (_, v, _) = mcp(
        &s,
        Some(&t),
        call("/contacts", "POST", Some(json!({"name": "Bulk 01 #1 Zoë"}))),
    )
    .await;
    assert_ne!(v["result"]["isError"], true, "{v}");
    for path in [
        "/contacts?search=bulk 01",
        "/contacts?search=#1",
        "/contacts?search=zoë",
        "/contacts?name=Bulk 01 #1 Zoë",
    ] {
        let (_, v, _) = mcp(&s, Some(&t), call(path, "GET", None)).await;
        let text = tool_text(&v);
        assert_ne!(v["result"]["isError"], true, "{path}: {v}");
        assert!(text.contains("name=\"Bulk 01 #1 Zoë\""), "{path}: {text}");
    }
}
