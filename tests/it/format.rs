//! The wire format (SPEC §2): negotiation, errors with hints, request ids,
//! limits and hostile input (SECURITY R23, R24, R27, R31, R33).

use reqwest::Method;

use crate::harness::{Server, field};

#[tokio::test]
async fn json_on_request_text_by_default() {
    let s = Server::start().await;
    let t = s.login("fmt@example.com").await;
    let text = s.get("/whoami", &t).await;
    assert!(
        text.header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let a = s
        .send(
            Method::GET,
            "/whoami",
            Some(&t),
            None,
            &[("accept", "application/json")],
        )
        .await;
    assert!(
        a.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let q = s.get("/whoami?format=json", &t).await;
    assert_eq!(a.json()["data"]["email"], "fmt@example.com");
    assert_eq!(q.json()["data"]["handle"], a.json()["data"]["handle"]);
    // The same data in both formats.
    assert_eq!(
        field(text.text.lines().next().unwrap(), "workspace").unwrap(),
        q.json()["data"]["workspace"]
    );
    // Errors follow the requested format too.
    let e = s
        .send(Method::GET, "/whoami?format=json", None, None, &[])
        .await;
    assert_eq!(e.json()["error"], "auth_required");
    assert!(e.json()["hint"].as_str().unwrap().len() > 10);
    let bad = s.get("/whoami?format=xml", &t).await;
    bad.assert_error(400, "invalid_request");
}

#[tokio::test]
async fn every_response_has_a_request_id() {
    let s = Server::start().await;
    for path in ["/healthz", "/help", "/nope", "/whoami"] {
        let r = s.send(Method::GET, path, None, None, &[]).await;
        let id = r.header("x-request-id").unwrap_or_default();
        assert!(id.len() >= 16, "{path}: {id:?}");
    }
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_in_our_format() {
    let s = Server::start().await;
    let r = s.send(Method::GET, "/no/such/thing", None, None, &[]).await;
    r.assert_error(404, "not_found");
    let r = s
        .send(Method::PUT, "/auth/request", None, Some("{}"), &[])
        .await;
    r.assert_error(405, "method_not_allowed");
    let r = s.send(Method::GET, "/auth/verify", None, None, &[]).await;
    r.assert_error(405, "method_not_allowed");
    // TRACE is not echoed back.
    let r = s
        .send(
            Method::TRACE,
            "/healthz",
            None,
            Some("secret-body"),
            &[("x-probe", "echo-me")],
        )
        .await;
    assert!(r.status >= 400);
    assert!(!r.text.contains("echo-me") && !r.text.contains("secret-body"));
}

#[tokio::test]
async fn bodies_over_one_mebibyte_are_refused_r23() {
    let s = Server::start().await;
    let big = format!("{{\"email\":\"{}\"}}", "a".repeat(2 * 1024 * 1024));
    s.post("/auth/request", None, &big)
        .await
        .assert_error(413, "payload_too_large");
    // 10 MiB with Content-Length: refused from the header, with an answer, not
    // a reset connection.
    let r = s
        .http
        .post(s.url("/auth/request"))
        .body(vec![b' '; 10 * 1024 * 1024])
        .send()
        .await
        .unwrap_or_else(|e| panic!("10 MiB with Content-Length: no answer, {e:?}"));
    assert_eq!(r.status(), 413);
    assert!(r.headers().contains_key("x-request-id"));
    let text = r.text().await.unwrap();
    assert!(text.contains("error: payload_too_large"), "{text}");
    assert!(text.contains("\nhint: "), "no hint: {text}");
    assert_eq!(
        s.send(Method::GET, "/healthz", None, None, &[])
            .await
            .status,
        200
    );
    // Chunked, 10 MiB, no Content-Length.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..160).map(|_| Ok(vec![b' '; 64 * 1024])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    // The server reads and drops the rest (within bounds) before it answers,
    // so a client still sending gets the 413 rather than a broken pipe.
    let r = s
        .http
        .post(s.url("/auth/request"))
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("10 MiB chunked: no answer, {e:?}"));
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("\nhint: "));
    assert_eq!(
        s.send(Method::GET, "/healthz", None, None, &[])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn malformed_input_gets_a_4xx_never_a_5xx_r24() {
    let s = Server::start().await;
    let t = s.login("r24@example.com").await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    for body in [
        "{\"email\":\"a@example.com\"".to_string(),
        "\"just a string\"".into(),
        "42".into(),
        "null".into(),
        format!("{{\"email\":{deep}}}"),
        "{\"email\":1e400}".into(),
        "{\"email\":\"a@example.com\",\"email\":\"b@example.com\"}".into(),
        "{\"email\":\"nul\\u0000@example.com\"}".into(),
    ] {
        let r = s.post("/auth/request", None, &body).await;
        assert_eq!(r.status, 400, "{body:.50}: {}", r.text);
        assert!(r.text.contains("hint: "));
    }
    // Non-UTF-8 bytes in the body and the query.
    let r = s
        .http
        .post(s.url("/auth/request"))
        .body(vec![b'{', 0xff, 0xfe, b'}'])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s.get("/tokens?x=%ff%fe", &t).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = s.get("/tokens/%ff%fe", &t).await;
    assert!(
        r.status == 400 || r.status == 404 || r.status == 405,
        "{}",
        r.text
    );
    assert_eq!(
        s.send(Method::GET, "/healthz", None, None, &[])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn user_text_cannot_forge_lines_r27() {
    let s = Server::start().await;
    let code = s.request_code("r27@example.com").await;
    let name = "x contact/c_fake00000000 name=evil # next: abc";
    let r = s
        .post(
            "/auth/verify",
            None,
            &format!(r#"{{"email":"r27@example.com","code":"{code}","token_name":"{name}"}}"#),
        )
        .await;
    assert_eq!(r.status, 201);
    let t = field(r.text.lines().next().unwrap(), "token").unwrap();
    let r = s.get("/tokens", &t).await;
    for line in r.text.lines() {
        assert!(
            line.starts_with("token/") || line.starts_with("# "),
            "forged line: {line}"
        );
    }
    let line = r.text.lines().next().unwrap();
    assert_eq!(field(line, "name").as_deref(), Some(name));
}

#[tokio::test]
async fn security_headers_are_set_r33() {
    let s = Server::start().await;
    let code = s.request_code("r33@example.com").await;
    let r = s
        .post(
            "/auth/verify",
            None,
            &format!(r#"{{"email":"r33@example.com","code":"{code}"}}"#),
        )
        .await;
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(
        r.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
}

#[tokio::test]
async fn the_manual_documents_the_api_with_the_base_url() {
    let s = Server::builder()
        .env("CRMKIT_BASE_URL", "https://crm.example.com/")
        .start()
        .await;
    let r = s.send(Method::GET, "/help", None, None, &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.text.contains("Base URL: https://crm.example.com\n"),
        "{}",
        &r.text[..300]
    );
    for needle in [
        "POST /auth/request",
        "POST /auth/verify",
        "GET /whoami",
        "GET /tokens",
        "DELETE /tokens/{id}",
        "GET /healthz",
        "GET /readyz",
        "?format=json",
        "GET    /contacts",
        "POST   /contacts",
        "PATCH  /{kind}/{id}",
        "DELETE /{kind}/{id}",
        "POST /contacts/{id}/activities",
        "GET  /activities",
        "GET /reminders",
        "GET /audit",
        "POST   /workspaces/{id}/tokens",
        "POST   /workspaces/{id}/invites",
        "DELETE /workspaces/{id}/invites/{inviteId}",
        "POST   /workspaces/{id}/members/{userId}/role",
        "DELETE /workspaces/{id}/members/{userId}",
        "DELETE /workspaces/{id}",
        "is:null",
        "not:null",
        "like",
        "sort=",
        "cursor=",
        "search=",
        "custom.KEY",
    ] {
        assert!(r.text.contains(needle), "manual lacks {needle}");
    }
    for code in [
        "auth_required",
        "invalid_token",
        "token_expired",
        "invalid_request",
        "unknown_field",
        "not_found",
        "invalid_code",
        "payload_too_large",
        "rate_limited",
        "email_failed",
        "not_ready",
        "internal",
        "unknown_operator",
        "confirmation_required",
        "escalation_required",
        "admin_required",
        "last_admin",
        "plan_limit_reached",
        "conflict",
        "method_not_allowed",
    ] {
        assert!(r.text.contains(code), "manual lacks error code {code}");
    }
    let md = s
        .send(
            Method::GET,
            "/help",
            None,
            None,
            &[("accept", "text/markdown")],
        )
        .await;
    assert!(
        md.header("content-type")
            .unwrap()
            .starts_with("text/markdown")
    );
}

/// A query parameter the endpoint does not take is refused, not ignored
/// (SPEC §2 `unknown_field`), on reads, writes and workspace calls; the
/// parameters every endpoint takes still pass, and authentication still
/// comes first.
#[tokio::test]
async fn unknown_query_parameters_are_refused() {
    let s = Server::start().await;
    let t = s.login("params@example.com").await;
    let c = s
        .post("/contacts?format=json", Some(&t), r#"{"name":"P"}"#)
        .await
        .json()["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ws = s.get("/whoami?format=json", &t).await.json()["data"]["workspace"]
        .as_str()
        .unwrap()
        .to_string();
    for r in [
        s.get(&format!("/contacts/{c}?fields=name"), &t).await,
        s.patch(&format!("/contacts/{c}?dry_run=1"), &t, r#"{"name":"Q"}"#)
            .await,
        s.post("/contacts?upsert=false", Some(&t), r#"{"name":"R"}"#)
            .await,
        s.get("/whoami?verbose=1", &t).await,
        s.get("/tokens?limit=5", &t).await,
        s.get(&format!("/workspaces/{ws}/members?cod=123456"), &t)
            .await,
        s.post(
            "/auth/request?x=1",
            None,
            r#"{"email":"params@example.com"}"#,
        )
        .await,
    ] {
        r.assert_error(400, "unknown_field");
        assert!(r.text.contains("hint: "), "{}", r.text);
    }
    // Nothing was written by the refused calls.
    let r = s.get(&format!("/contacts/{c}?format=json"), &t).await;
    assert_eq!(r.json()["data"]["name"], "P");
    assert_eq!(
        s.get("/contacts?format=json", &t).await.json()["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // What every endpoint takes passes; no token is still a 401 first.
    assert_eq!(
        s.get(&format!("/contacts/{c}?format=text"), &t)
            .await
            .status,
        200
    );
    s.send(Method::GET, "/whoami?verbose=1", None, None, &[])
        .await
        .assert_error(401, "auth_required");
    // Probes ignore their query.
    assert_eq!(
        s.send(Method::GET, "/healthz?probe=lb", None, None, &[])
            .await
            .status,
        200
    );
}

/// Bodies are JSON whatever the Content-Type says (SPEC §2): `curl -d`
/// sends `application/x-www-form-urlencoded`, other clients `text/plain`.
#[tokio::test]
async fn bodies_are_json_whatever_the_content_type_says() {
    let s = Server::start().await;
    let t = s.login("ctype@example.com").await;
    for (i, ctype) in [
        "application/x-www-form-urlencoded",
        "text/plain",
        "text/plain; charset=utf-8",
    ]
    .into_iter()
    .enumerate()
    {
        let email = format!("form{i}@example.com");
        let body = format!(
            r#"{{"name":"Form {i}","email":"{email}","tags":["vip"],"custom":{{"via":"curl"}}}}"#
        );
        let r = s
            .send(
                Method::POST,
                "/contacts",
                Some(&t),
                Some(&body),
                &[("content-type", ctype)],
            )
            .await;
        assert_eq!(r.status, 201, "{ctype}: {}", r.text);
        assert!(r.text.contains("\n# created\n"), "{ctype}: {}", r.text);
        let id = r
            .text
            .split_whitespace()
            .next()
            .unwrap()
            .trim_start_matches("contact/")
            .to_string();
        // The fields were stored, not only echoed.
        let got = s.get(&format!("/contacts/{id}?format=json"), &t).await;
        assert_eq!(got.status, 200, "{ctype}: {}", got.text);
        let data = &got.json()["data"];
        assert_eq!(data["name"], format!("Form {i}"), "{ctype}: {data}");
        assert_eq!(data["email"], email.as_str(), "{ctype}: {data}");
        assert_eq!(data["tags"], serde_json::json!(["vip"]), "{ctype}: {data}");
        assert_eq!(data["custom"]["via"], "curl", "{ctype}: {data}");
        // A PATCH with the same content type is read as JSON too.
        let r = s
            .send(
                Method::PATCH,
                &format!("/contacts/{id}"),
                Some(&t),
                Some(r#"{"title":"CTO"}"#),
                &[("content-type", ctype)],
            )
            .await;
        assert_eq!(r.status, 200, "{ctype}: {}", r.text);
        let got = s.get(&format!("/contacts/{id}?format=json"), &t).await;
        assert_eq!(got.json()["data"]["title"], "CTO", "{ctype}: {}", got.text);
        assert_eq!(got.json()["data"]["name"], format!("Form {i}"));
    }
}

/// Slips an agent makes get a hint that names the fix.
#[tokio::test]
async fn common_slips_get_a_hint_that_names_the_fix() {
    let s = Server::start().await;
    let t = s.login("slips@example.com").await;
    let r = s.get("/contacts/jane@acme.com", &t).await;
    r.assert_error(404, "not_found");
    assert!(
        r.text.contains("GET /contacts?email=jane@acme.com"),
        "{}",
        r.text
    );
    let r = s.post("/activities", Some(&t), r#"{"kind":"note"}"#).await;
    r.assert_error(405, "method_not_allowed");
    assert!(
        r.text.contains("POST /contacts/{id}/activities"),
        "{}",
        r.text
    );
    s.request_code("slips@example.com").await;
    let r = s
        .post(
            "/auth/verify",
            None,
            r#"{"email":"slips@example.com","code":123456}"#,
        )
        .await;
    r.assert_error(400, "invalid_request");
    assert!(r.text.contains("as a JSON string"), "{}", r.text);
}
