//! Sign-in by emailed code, tokens and sessions (SPEC §3; SECURITY R10–R20, R32).

use std::collections::HashSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::harness::{Server, client_from, field};
use crate::mcp::{VERIFIER, enc, mcp, query_param, register, sign_in, token_request};
use crate::records::create;
use crate::smtp::{Mode, Security, code_in};

fn verify_body(email: &str, code: &str) -> String {
    format!("{{\"email\":\"{email}\",\"code\":\"{code}\",\"token_name\":\"t\"}}")
}

#[tokio::test]
async fn readme_flow_works_in_local_mail_mode() {
    let s = Server::builder().local_mail().start().await;
    assert!(s.log_text().contains("local mail mode"), "{}", s.log_text());
    let r = s
        .post("/auth/request", None, r#"{"email":"me@example.com"}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The code is on one marked line of the log.
    let mut code = None;
    for _ in 0..100 {
        code = s
            .log_text()
            .lines()
            .find(|l| l.contains("LOCAL-MAIL to=me@example.com"))
            .and_then(|l| {
                let i = l.find("code=")? + 5;
                Some(l[i..i + 6].to_string())
            });
        if code.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let code = code.expect("no LOCAL-MAIL line");
    let r = s
        .post(
            "/auth/verify",
            None,
            &format!(r#"{{"email":"me@example.com","code":"{code}","token_name":"my-agent"}}"#),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let first = r.text.lines().next().unwrap();
    assert!(first.starts_with("token/t_"), "{first}");
    let token = field(first, "token").unwrap();
    let r = s.get("/whoami", &token).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.starts_with("user/u_"), "{}", r.text);
    assert_eq!(
        field(r.text.lines().next().unwrap(), "email").as_deref(),
        Some("me@example.com")
    );
    assert_eq!(
        field(r.text.lines().next().unwrap(), "token_name").as_deref(),
        Some("my-agent")
    );
    assert_eq!(
        field(r.text.lines().next().unwrap(), "role").as_deref(),
        Some("admin")
    );
    for kind in [
        "contacts: 0 / 1000",
        "companies: 0 / 1000",
        "deals: 0 / 1000",
        "members: 1 / 10",
        "workspaces: 1 / 5",
    ] {
        assert!(
            r.text.contains(&format!("# {kind}\n")),
            "missing {kind}: {}",
            r.text
        );
    }
}

#[tokio::test]
async fn mail_has_text_and_html_parts_and_sender() {
    let s = Server::builder()
        .env("CRMKIT_MAIL_FROM", "CRM <crm@example.org>")
        .start()
        .await;
    s.request_code("parts@example.com").await;
    let mail = &s.smtp().mails_to("parts@example.com")[0].data;
    assert!(mail.contains("text/plain"), "{mail}");
    assert!(mail.contains("text/html"), "{mail}");
    assert!(mail.contains("From: CRM <crm@example.org>"), "{mail}");
}

#[tokio::test]
async fn codes_are_six_random_digits_r10() {
    let s = Server::start().await;
    let mut codes = Vec::new();
    for i in 0..20 {
        let email = format!("r10-{i}@example.com");
        codes.push(s.request_code(&email).await);
    }
    for c in &codes {
        assert!(c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit()), "{c}");
    }
    let distinct: HashSet<_> = codes.iter().collect();
    assert!(
        distinct.len() >= codes.len() - 1,
        "repeated codes: {codes:?}"
    );
    let nums: Vec<i64> = codes.iter().map(|c| c.parse().unwrap()).collect();
    let diffs: HashSet<i64> = nums.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        diffs.len() > 1,
        "codes form an arithmetic progression: {codes:?}"
    );
}

#[tokio::test]
async fn five_wrong_codes_kill_the_code_r11() {
    let s = Server::start().await;
    let email = "r11@example.com";
    let code = s.request_code(email).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..5 {
        let r = s
            .post("/auth/verify", None, &verify_body(email, wrong))
            .await;
        r.assert_error(401, "invalid_code");
    }
    let r = s
        .post("/auth/verify", None, &verify_body(email, &code))
        .await;
    r.assert_error(401, "invalid_code");
    // A fresh code works.
    s.login(email).await;
}

#[tokio::test]
async fn parallel_wrong_codes_then_the_right_one_is_refused_r11() {
    let s = Server::start().await;
    let email = "r11p@example.com";
    let code = s.request_code(email).await;
    let wrong = if code == "999999" { "123456" } else { "999999" };
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (http, url) = (s.http.clone(), s.url("/auth/verify"));
        let body = verify_body(email, wrong);
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        let st = t.await.unwrap();
        assert!(st == 401 || st == 429, "{st}");
    }
    // Refused because the code is dead, not because of a rate limit: the 52
    // tries are well under the 100 per client address in 10 minutes, and a
    // 429 would not say whether the code still works.
    let r = s
        .post("/auth/verify", None, &verify_body(email, &code))
        .await;
    r.assert_error(401, "invalid_code");
    // Nothing blocks the address itself: a fresh code works.
    s.login(email).await;
}

/// Whether the server sees `ip`'s connections as coming from `ip`.
async fn check_client_address(ip: &str) {
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", trap.local_addr().unwrap());
    let peer = tokio::spawn(async move { trap.accept().await.unwrap().1.ip() });
    let _ = client_from(ip)
        .get(url)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert_eq!(peer.await.unwrap().to_string(), ip);
}

#[tokio::test]
async fn wrong_codes_from_two_client_addresses_add_up_r11() {
    let s = Server::start().await;
    let email = "r11ip@example.com";
    let code = s.request_code(email).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    // 3 wrong from one address and 3 from another: 6 tries on one code.
    for ip in ["127.0.0.2", "127.0.0.3"] {
        check_client_address(ip).await;
        let http = client_from(ip);
        for _ in 0..3 {
            let r = http
                .post(s.url("/auth/verify"))
                .body(verify_body(email, wrong))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401);
            let text = r.text().await.unwrap();
            assert!(text.contains("error: invalid_code"), "{text}");
        }
    }
    // The right code is refused, from either address and from a third.
    for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.1"] {
        let r = client_from(ip)
            .post(s.url("/auth/verify"))
            .body(verify_body(email, &code))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "from {ip}");
        let text = r.text().await.unwrap();
        assert!(text.contains("error: invalid_code"), "from {ip}: {text}");
        assert!(text.contains("\nhint: "), "no hint: {text}");
    }
    // A fresh code works.
    s.login(email).await;
}

#[tokio::test]
async fn codes_are_single_use_replaced_and_bound_to_the_address_r13() {
    let s = Server::start().await;
    let a = "r13a@example.com";
    // Single use.
    let code = s.request_code(a).await;
    assert_eq!(
        s.post("/auth/verify", None, &verify_body(a, &code))
            .await
            .status,
        201
    );
    s.post("/auth/verify", None, &verify_body(a, &code))
        .await
        .assert_error(401, "invalid_code");
    // A new request replaces the previous code.
    let first = s.request_code(a).await;
    let second = s.request_code(a).await;
    if first != second {
        s.post("/auth/verify", None, &verify_body(a, &first))
            .await
            .assert_error(401, "invalid_code");
    }
    assert_eq!(
        s.post("/auth/verify", None, &verify_body(a, &second))
            .await
            .status,
        201
    );
    // A's code with B's address.
    let code = s.request_code(a).await;
    s.request_code("r13b@example.com").await;
    s.post(
        "/auth/verify",
        None,
        &verify_body("r13b@example.com", &code),
    )
    .await
    .assert_error(401, "invalid_code");
}

#[tokio::test]
async fn parallel_verifies_of_one_code_mint_exactly_one_token_r13() {
    let s = Server::start().await;
    let email = "r13p@example.com";
    let code = s.request_code(email).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (http, url) = (s.http.clone(), s.url("/auth/verify"));
        let body = verify_body(email, &code);
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            201 => created += 1,
            401 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 1);
}

#[tokio::test]
async fn request_answer_is_the_same_for_known_and_unknown_addresses_r14() {
    let s = Server::start().await;
    s.login("known@example.com").await;
    let known = s
        .post("/auth/request", None, r#"{"email":"known@example.com"}"#)
        .await;
    let unknown = s
        .post("/auth/request", None, r#"{"email":"nobody@example.com"}"#)
        .await;
    assert_eq!(known.status, unknown.status);
    assert_eq!(
        known.text.replace("k***", "X"),
        unknown.text.replace("n***", "X")
    );
    assert!(
        !known.text.contains("known@example.com"),
        "address not masked: {}",
        known.text
    );
    // Mail is sent in both cases.
    s.nth_code("nobody@example.com", 1).await;
    let wrong_known = s
        .post(
            "/auth/verify",
            None,
            &verify_body("known@example.com", "000001"),
        )
        .await;
    let wrong_unknown = s
        .post(
            "/auth/verify",
            None,
            &verify_body("nobody@example.com", "000001"),
        )
        .await;
    assert_eq!(wrong_known.status, wrong_unknown.status);
    assert_eq!(wrong_known.error_code(), wrong_unknown.error_code());
}

#[tokio::test]
async fn code_requests_are_rate_limited_per_address_r15() {
    let s = Server::start().await;
    let mut limited = None;
    for _ in 0..25 {
        let r = s
            .post("/auth/request", None, r#"{"email":"bombed@example.com"}"#)
            .await;
        if r.status == 429 {
            limited = Some(r);
        }
    }
    let r = limited.expect("never rate limited");
    r.assert_error(429, "rate_limited");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 600);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.smtp().mails_to("bombed@example.com").len() <= 10);
    // Another address is unaffected.
    assert_eq!(
        s.post("/auth/request", None, r#"{"email":"calm@example.com"}"#)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn code_requests_are_rate_limited_per_client_address_r15() {
    let s = Server::start().await;
    let mut statuses = Vec::new();
    for i in 0..150 {
        let r = s
            .post(
                "/auth/request",
                None,
                &format!(r#"{{"email":"spray{i}@example.com"}}"#),
            )
            .await;
        statuses.push(r.status);
    }
    assert!(
        statuses.contains(&429),
        "no 429 over 150 addresses from one IP"
    );
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429));
}

#[tokio::test]
async fn tokens_are_secret_long_and_distinct_r17() {
    let s = Server::start().await;
    let mut tokens = Vec::new();
    for i in 0..5 {
        tokens.push(s.login_named("r17@example.com", &format!("agent{i}")).await);
    }
    for t in &tokens {
        let body = t.strip_prefix("ck_").expect("ck_ prefix");
        assert!(body.len() >= 43, "{t}");
    }
    let distinct: HashSet<_> = tokens.iter().collect();
    assert_eq!(distinct.len(), tokens.len());
    let prefixes: HashSet<_> = tokens.iter().map(|t| &t[3..7]).collect();
    assert!(prefixes.len() > 1, "shared prefix after ck_");
    let t = &tokens[0];
    // A revocation leaves one more audit entry about a token.
    let id = s.get("/tokens?format=json", t).await.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "agent4")
        .expect("agent4 in /tokens")["id"]
        .as_str()
        .unwrap()
        .trim_start_matches("token/")
        .to_string();
    assert_eq!(s.delete(&format!("/tokens/{id}"), t).await.status, 200);
    for path in [
        "/tokens",
        "/whoami",
        "/audit",
        "/tokens?format=json",
        "/whoami?format=json",
        "/audit?format=json&limit=200",
    ] {
        let r = s.get(path, t).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        if path.starts_with("/audit") {
            assert!(r.text.contains("token.create"), "{path}: {}", r.text);
        }
        for tok in &tokens {
            assert!(!r.text.contains(tok.as_str()), "{path} leaks a token");
        }
    }
    // Tokens in the query string never authenticate.
    for q in ["access_token", "token"] {
        let r = s
            .send(Method::GET, &format!("/whoami?{q}={t}"), None, None, &[])
            .await;
        r.assert_error(401, "auth_required");
    }
}

#[tokio::test]
async fn idle_tokens_expire_and_stay_dead_r18() {
    let s = Server::builder()
        .env("CRMKIT_TOKEN_IDLE_TTL", "2s")
        .start()
        .await;
    let idle = s.login_named("r18@example.com", "idle").await;
    let busy = s.login_named("r18@example.com", "busy").await;
    assert_eq!(s.get("/whoami", &idle).await.status, 200);
    // The busy token is used every 0.6 s for 3.6 s: it stays alive.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(s.get("/whoami", &busy).await.status, 200, "busy token died");
    }
    s.get("/whoami", &idle)
        .await
        .assert_error(401, "token_expired");
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.get("/whoami", &idle)
        .await
        .assert_error(401, "token_expired");
}

#[tokio::test]
async fn revocation_applies_at_once_and_only_to_own_tokens_r19() {
    let s = Server::start().await;
    let a1 = s.login_named("r19a@example.com", "one").await;
    let a2 = s.login_named("r19a@example.com", "two").await;
    let b = s.login("r19b@example.com").await;
    let list = s.get("/tokens", &a1).await;
    let lines: Vec<&str> = list
        .text
        .lines()
        .filter(|l| l.starts_with("token/"))
        .collect();
    assert_eq!(lines.len(), 2, "{}", list.text);
    let current: Vec<&&str> = lines
        .iter()
        .filter(|l| field(l, "current").as_deref() == Some("true"))
        .collect();
    assert_eq!(current.len(), 1);
    assert_eq!(field(current[0], "name").as_deref(), Some("one"));
    let two = lines
        .iter()
        .find(|l| field(l, "name").as_deref() == Some("two"))
        .unwrap();
    let two_id = two.split_whitespace().next().unwrap().to_string();

    // B cannot revoke A's token, by id or handle.
    let bare = two_id.trim_start_matches("token/");
    s.delete(&format!("/tokens/{bare}"), &b)
        .await
        .assert_error(404, "not_found");
    s.delete(&format!("/tokens/{}", two_id.replace('/', "%2F")), &b)
        .await
        .assert_error(404, "not_found");
    assert_eq!(s.get("/whoami", &a2).await.status, 200);

    // A revokes the second session: dead at once; the first still works.
    let r = s.delete(&format!("/tokens/{bare}"), &a1).await;
    assert_eq!(r.status, 200, "{}", r.text);
    s.get("/whoami", &a2)
        .await
        .assert_error(401, "invalid_token");
    assert_eq!(s.get("/whoami", &a1).await.status, 200);

    // Self-revoke is a logout.
    let mine = s.get("/whoami?format=json", &a1).await.json()["data"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .delete(
            &format!("/tokens/{}", mine.trim_start_matches("token/")),
            &a1,
        )
        .await;
    assert_eq!(r.status, 200);
    s.get("/whoami", &a1)
        .await
        .assert_error(401, "invalid_token");
    assert_eq!(s.get("/whoami", &b).await.status, 200);
}

#[tokio::test]
async fn authorization_headers_are_parsed_strictly_r20() {
    let s = Server::start().await;
    let t = s.login("r20@example.com").await;
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "auth_required"),
        ("Bearer".into(), "invalid_token"),
        ("Bearer ".into(), "invalid_token"),
        ("Bearer garbage".into(), "invalid_token"),
        (format!("Bearer {}", &t[..t.len() - 1]), "invalid_token"),
        (format!("Bearer {t}x"), "invalid_token"),
        (format!("Bearer {}", t.to_uppercase()), "invalid_token"),
        (format!("Bearer {}", "a".repeat(16 * 1024)), "invalid_token"),
        (format!("Basic {t}"), "invalid_token"),
        (
            "Bearer ghp_0123456789abcdefghijklmnopqrstuvwxyzAB".into(),
            "invalid_token",
        ),
    ];
    for (value, code) in cases {
        let r = s
            .send(
                Method::GET,
                "/whoami",
                None,
                None,
                &[("authorization", &value)],
            )
            .await;
        assert_eq!(r.status, 401, "{value:.40}: {}", r.text);
        assert_eq!(r.error_code(), code, "{value:.40}: {}", r.text);
    }
    // No header at all.
    s.send(Method::GET, "/whoami", None, None, &[])
        .await
        .assert_error(401, "auth_required");
    // Non-ASCII bytes in the header.
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        "authorization",
        reqwest::header::HeaderValue::from_bytes(b"Bearer ck_\xc3\xa9t\xc3\xa9").unwrap(),
    );
    let r = s
        .http
        .get(s.url("/whoami"))
        .headers(h)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Lowercase scheme and a double space are accepted.
    for value in [format!("bearer {t}"), format!("Bearer  {t}")] {
        let r = s
            .send(
                Method::GET,
                "/whoami",
                None,
                None,
                &[("authorization", &value)],
            )
            .await;
        assert_eq!(r.status, 200, "{value:.12}: {}", r.text);
    }
    // Two Authorization headers are refused.
    let r = s
        .http
        .get(s.url("/whoami"))
        .header("authorization", format!("Bearer {t}"))
        .header("authorization", format!("Bearer {t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn bad_auth_bodies_get_a_4xx_with_a_hint() {
    let s = Server::start().await;
    let long = format!("{}@example.com", "a".repeat(250));
    let cases: Vec<(&str, String, &str)> = vec![
        ("/auth/request", "{\"email\":".into(), "invalid_request"),
        (
            "/auth/request",
            "[\"a@example.com\"]".into(),
            "invalid_request",
        ),
        ("/auth/request", "{\"email\":5}".into(), "invalid_request"),
        (
            "/auth/request",
            "{\"email\":\"a@example.com\",\"admin\":true}".into(),
            "unknown_field",
        ),
        ("/auth/request", "{}".into(), "invalid_request"),
        ("/auth/request", "".into(), "invalid_request"),
        (
            "/auth/request",
            "{\"email\":\"a b@example.com\"}".into(),
            "invalid_request",
        ),
        (
            "/auth/request",
            "{\"email\":\"a\\u0007@example.com\"}".into(),
            "invalid_request",
        ),
        (
            "/auth/request",
            "{\"email\":\"Jane <j@example.com>\"}".into(),
            "invalid_request",
        ),
        (
            "/auth/request",
            format!("{{\"email\":\"{long}\"}}"),
            "invalid_request",
        ),
        (
            "/auth/request",
            "{\"email\":\"a@example.com\\r\\nBcc: evil@example.net\"}".into(),
            "invalid_request",
        ),
        (
            "/auth/request",
            "{\"email\":\"a@example.com,evil@example.net\"}".into(),
            "invalid_request",
        ),
        (
            "/auth/request",
            "{\"email\":\"\u{212a}nown@example.com\"}".into(),
            "invalid_request",
        ),
        (
            "/auth/verify",
            "{\"email\":\"a@example.com\"}".into(),
            "invalid_request",
        ),
        (
            "/auth/verify",
            "{\"code\":\"123456\"}".into(),
            "invalid_request",
        ),
        (
            "/auth/verify",
            "{\"email\":\"a@example.com\",\"code\":\"12345\"}".into(),
            "invalid_request",
        ),
        (
            "/auth/verify",
            "{\"email\":\"a@example.com\",\"code\":\"12345a\"}".into(),
            "invalid_request",
        ),
        (
            "/auth/verify",
            "{\"email\":\"a@example.com\",\"code\":123456}".into(),
            "invalid_request",
        ),
        (
            "/auth/verify",
            "{\"email\":\"a@example.com\",\"code\":\"123456\",\"workspace_id\":\"w_x\"}".into(),
            "unknown_field",
        ),
        (
            "/auth/verify",
            "{\"email\":\"a@example.com\",\"code\":\"123456\",\"token_name\":\"a\\nb\"}".into(),
            "invalid_request",
        ),
    ];
    for (path, body, code) in cases {
        let r = s.post(path, None, &body).await;
        assert_eq!(r.status, 400, "{path} {body:.60}: {}", r.text);
        assert_eq!(r.error_code(), code, "{path} {body:.60}: {}", r.text);
        assert!(r.text.contains("\nhint: "), "{}", r.text);
    }
    // Nothing was mailed to the injected or listed addresses.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(s.smtp().mails_to("evil@example.net").is_empty());
    // unknown_field lists what is allowed.
    let r = s
        .send(
            Method::POST,
            "/auth/verify?format=json",
            None,
            Some("{\"email\":\"a@example.com\",\"x\":1}"),
            &[],
        )
        .await;
    let allowed = r.json()["allowed"].clone();
    assert_eq!(allowed, serde_json::json!(["email", "code", "token_name"]));
}

/// Mail over STARTTLS and over TLS (`smtp+starttls://`, `smtps://`) reaches
/// a mail server whose certificate comes from a private CA given as
/// `CRMKIT_SMTP_CA_FILE`, and arrives encrypted: the test server answers
/// 530 to anything but STARTTLS before the handshake.
#[tokio::test]
async fn sign_in_mail_goes_over_starttls_and_tls_to_a_private_ca() {
    for security in [Security::StartTls, Security::Tls] {
        let s = Server::builder()
            .smtp_security(security, true)
            .start()
            .await;
        let t = s.login("tls@example.com").await;
        assert_eq!(s.get("/whoami", &t).await.status, 200, "{security:?}");
        let mails = s.smtp().mails_to("tls@example.com");
        assert_eq!(mails.len(), 1, "{security:?}");
        assert!(mails[0].tls, "{security:?}: the mail came in the clear");
    }
}

/// The server verifies the mail server's certificate: one that nothing it
/// trusts vouches for gets no mail, and the request is answered 502.
#[tokio::test]
async fn a_mail_server_with_an_untrusted_certificate_gets_nothing() {
    for security in [Security::StartTls, Security::Tls] {
        let s = Server::builder()
            .smtp_security(security, false)
            .start()
            .await;
        s.post("/auth/request", None, r#"{"email":"tls@example.com"}"#)
            .await
            .assert_error(502, "email_failed");
        assert!(s.smtp().all().is_empty(), "{security:?}");
    }
}

#[tokio::test]
async fn a_failed_send_answers_502_and_leaves_no_usable_code() {
    let s = Server::builder().smtp(Mode::RefuseAfterData).start().await;
    let r = s
        .post("/auth/request", None, r#"{"email":"bounce@example.com"}"#)
        .await;
    r.assert_error(502, "email_failed");
    let mails = s.smtp().mails_to("bounce@example.com");
    let code = code_in(&mails[0].data).unwrap();
    s.post(
        "/auth/verify",
        None,
        &verify_body("bounce@example.com", &code),
    )
    .await
    .assert_error(401, "invalid_code");
    // Refused at RCPT: also 502.
    s.smtp().set_mode(Mode::Refuse);
    s.post("/auth/request", None, r#"{"email":"bounce2@example.com"}"#)
        .await
        .assert_error(502, "email_failed");
    // Mail works again: sign-in works.
    s.smtp().set_mode(Mode::Accept);
    s.login("bounce@example.com").await;
}

#[tokio::test]
async fn secrets_are_never_logged_r32() {
    let s = Server::start().await;
    let mut secrets = Vec::new();
    for i in 0..3 {
        let email = format!("r32-{i}@example.com");
        secrets.push(s.request_code(&email).await);
        let t = s.login(&email).await;
        s.get("/whoami", &t).await;
        s.send(Method::GET, &format!("/whoami?token={t}"), None, None, &[])
            .await;
        secrets.push(t);
    }
    let t = secrets.last().unwrap().clone();
    s.get("/tokens", &t).await;
    // A delete-confirm token, sent back in the query string.
    let c = create(&s, &t, "contacts", json!({"name": "gone"})).await;
    let r = s.delete(&format!("/contacts/{c}?format=json"), &t).await;
    assert_eq!(r.status, 409, "{}", r.text);
    let confirm = r.json()["confirm"].as_str().unwrap().to_string();
    let r = s
        .delete(&format!("/contacts/{c}?confirm={confirm}"), &t)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    secrets.push(confirm);
    // OAuth: the sign-in code, the authorization code (in the redirect and at
    // the token endpoint), the verifier, the access and refresh tokens.
    let redirect = "https://claude.ai/api/mcp/auth_callback";
    let client = register(&s, redirect, "R32").await;
    let email = "r32-oauth@example.com";
    let location = sign_in(&s, &client, redirect, email).await;
    secrets.push(s.nth_code(email, 1).await);
    let code = query_param(&location, "code").unwrap();
    let exchange = format!(
        "grant_type=authorization_code&code={}&client_id={}&redirect_uri={}&code_verifier={VERIFIER}",
        enc(&code),
        enc(&client),
        enc(redirect)
    );
    let (status, tok, _) = token_request(&s, &exchange).await;
    assert_eq!(status, 200, "{tok}");
    let access = tok["access_token"].as_str().unwrap().to_string();
    let refresh = tok["refresh_token"].as_str().unwrap().to_string();
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "request", "arguments": {"method": "GET", "path": "/whoami"}}});
    let (status, who, _) = mcp(&s, Some(&access), call).await;
    assert_eq!(status, 200, "{who}");
    let (status, fresh, _) = token_request(
        &s,
        &format!(
            "grant_type=refresh_token&refresh_token={refresh}&client_id={}",
            enc(&client)
        ),
    )
    .await;
    assert_eq!(status, 200, "{fresh}");
    let fresh_access = fresh["access_token"].as_str().unwrap().to_string();
    assert_eq!(s.get("/whoami", &fresh_access).await.status, 200);
    // Refused uses go through the error paths: a replayed code, a used refresh token.
    assert_eq!(token_request(&s, &exchange).await.0, 400);
    let (status, _, _) = token_request(
        &s,
        &format!(
            "grant_type=refresh_token&refresh_token={refresh}&client_id={}",
            enc(&client)
        ),
    )
    .await;
    assert_eq!(status, 400);
    secrets.extend([
        code,
        VERIFIER.to_string(),
        access,
        refresh,
        fresh_access,
        fresh["refresh_token"].as_str().unwrap().to_string(),
    ]);
    // A step-up code, mailed to the caller and sent in the query string.
    let email = "r32-2@example.com";
    let ws = s.ws_of(&t).await;
    let n = s.smtp().mails_to(email).len();
    s.delete(&format!("/workspaces/{ws}"), &t)
        .await
        .assert_error(403, "escalation_required");
    let step_up = s.nth_code(email, n + 1).await;
    let r = s
        .delete(&format!("/workspaces/{ws}?code={step_up}"), &t)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    secrets.push(step_up);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = s.log_text();
    assert!(log.contains("request"), "no access log: {log}");
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "log contains a secret {secret}"
        );
    }
    assert!(
        !log.contains("r32-0@example.com"),
        "full address in the info log"
    );
}

/// R12 for login codes: restart on the same database with the clock 12
/// minutes ahead (libfaketime); the code is refused, a fresh one works.
#[tokio::test]
async fn login_codes_expire_after_ten_minutes_r12() {
    let lib = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists());
    if !crate::require("libfaketime (apt-get install faketime)", lib.is_some()) {
        return;
    }
    let s = Server::start().await;
    let t = s.login("r12@example.com").await;
    // A delete confirmation and a step-up code, both issued now.
    let c = s
        .post("/contacts?format=json", Some(&t), r#"{"name":"keep"}"#)
        .await
        .json()["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let confirm = s
        .delete(&format!("/contacts/{c}?format=json"), &t)
        .await
        .json()["confirm"]
        .as_str()
        .unwrap()
        .to_string();
    let ws = s.ws_of(&t).await;
    let n = s.smtp().mails_to("r12@example.com").len();
    s.delete(&format!("/workspaces/{ws}"), &t)
        .await
        .assert_error(403, "escalation_required");
    let step_up = s.nth_code("r12@example.com", n + 1).await;
    // An OAuth authorization code.
    let redirect = "https://claude.ai/api/mcp/auth_callback";
    let client = crate::mcp::register(&s, redirect, "Claude").await;
    let location = crate::mcp::sign_in(&s, &client, redirect, "r12@example.com").await;
    let oauth_code = location
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    // The login code comes last: the OAuth sign-in above mailed one to the
    // same address, which replaced any code requested before it.
    let code = s.request_code("r12@example.com").await;
    let s = s
        .restart(
            false,
            &[
                ("LD_PRELOAD", lib.unwrap()),
                ("FAKETIME", "+12m"),
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ],
        )
        .await;
    s.post("/auth/verify", None, &verify_body("r12@example.com", &code))
        .await
        .assert_error(401, "invalid_code");
    s.delete(&format!("/contacts/{c}?confirm={confirm}"), &t)
        .await
        .assert_error(409, "confirmation_required");
    s.delete(&format!("/workspaces/{ws}?code={step_up}"), &t)
        .await
        .assert_error(403, "invalid_code");
    assert_eq!(s.get(&format!("/contacts/{c}"), &t).await.status, 200);
    let (status, body, _) = crate::mcp::token_request(
        &s,
        &format!(
            "grant_type=authorization_code&code={oauth_code}&client_id={client}&redirect_uri={}&code_verifier={}",
            redirect.replace(':', "%3A").replace('/', "%2F"),
            crate::mcp::VERIFIER
        ),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    // Control: fresh codes under the shifted clock work.
    s.login("r12@example.com").await;
}

#[tokio::test]
async fn address_look_alikes_never_reach_another_account_r16() {
    let s = Server::start().await;
    let victim = s.login("kate@example.com").await;
    let ws = s.ws_of(&victim).await;
    let long = format!("{}@example.com", "k".repeat(290));
    for email in [
        "\u{212a}ate@example.com",
        "kat\u{0435}@example.com",
        "kate@example.com\r\nBcc: thief@example.net",
        "kate@example.com, thief@example.net",
        "\"kate@example.com\" <thief@example.net>",
        long.as_str(),
    ] {
        let body = serde_json::json!({ "email": email }).to_string();
        s.post("/auth/request", None, &body)
            .await
            .assert_error(400, "invalid_request");
        let r = s
            .post(&format!("/workspaces/{ws}/invites"), Some(&victim), &body)
            .await;
        r.assert_error(400, "invalid_request");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        s.smtp().mails_to("thief@example.net").is_empty(),
        "mail reached an injected address"
    );
    // Only the literal address ever receives its code.
    let before = s.smtp().all().len();
    s.request_code("KATE@Example.com").await;
    let mails = s.smtp().all();
    assert_eq!(mails.len(), before + 1);
    assert_eq!(
        mails.last().unwrap().rcpt,
        vec!["kate@example.com".to_string()]
    );
}

#[tokio::test]
async fn errors_never_leak_internals_r31() {
    let s = Server::start().await;
    let t = s.login("r31@example.com").await;
    let probes: Vec<(Method, String, Option<&str>)> = vec![
        (Method::GET, "/contacts?cursor=garbage".into(), None),
        (Method::GET, "/contacts?sort=nope".into(), None),
        (Method::POST, "/contacts".into(), Some("{\"custom\":")),
        (Method::POST, "/deals".into(), Some("{\"title\":1}")),
        (Method::GET, "/contacts/c_000000000000".into(), None),
        (Method::DELETE, "/tokens/t_000000000000".into(), None),
        (Method::GET, "/nope".into(), None),
        (Method::PATCH, "/contacts/%ff".into(), Some("{}")),
        (
            Method::POST,
            "/workspaces/w_000000000000/invites".into(),
            Some("{\"email\":\"x@example.com\"}"),
        ),
    ];
    for (method, path, body) in probes {
        let r = s.send(method, &path, Some(&t), body, &[]).await;
        assert!((400..500).contains(&r.status), "{path}: {}", r.text);
        assert!(r.header("x-request-id").is_some());
        let all = format!("{:?} {}", r.headers, r.text).to_lowercase();
        for leak in [
            "sqlx", "sea_orm", "sea-orm", "select ", "insert ", "/work/", "/root/", "panicked",
            ".rs:", "stack",
        ] {
            assert!(!all.contains(leak), "{path} leaks {leak:?}: {}", r.text);
        }
    }
    assert_eq!(
        s.send(Method::GET, "/healthz", None, None, &[])
            .await
            .status,
        200
    );
}

/// `token_name` labels the session and defaults to `default` (SPEC §3).
#[tokio::test]
async fn a_token_without_a_name_is_named_default() {
    let s = Server::start().await;
    let named = s.login_named("unnamed@example.com", "named").await;
    let code = s.request_code("unnamed@example.com").await;
    let r = s
        .post(
            "/auth/verify?format=json",
            None,
            &format!(r#"{{"email":"unnamed@example.com","code":"{code}"}}"#),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let t = r.json()["data"]["token"].as_str().unwrap().to_string();
    let who = s.get("/whoami?format=json", &t).await.json();
    assert_eq!(who["data"]["token_name"], "default", "{who}");
    // GET /tokens lists it as `default`, and it is the current one.
    let list = s.get("/tokens?format=json", &t).await.json();
    let tokens = list["data"].as_array().unwrap();
    assert_eq!(tokens.len(), 2, "{list}");
    let current: Vec<&serde_json::Value> = tokens.iter().filter(|k| k["current"] == true).collect();
    assert_eq!(current.len(), 1, "{list}");
    assert_eq!(current[0]["name"], "default", "{list}");
    // The named session keeps its own name.
    let other = tokens.iter().find(|k| k["current"] != true).unwrap();
    assert_eq!(other["name"], "named", "{list}");
    // The same in text.
    let text = s.get("/tokens", &named).await;
    let line = text
        .text
        .lines()
        .find(|l| l.starts_with("token/") && field(l, "current").is_none())
        .unwrap_or_else(|| panic!("{}", text.text));
    assert_eq!(field(line, "name").as_deref(), Some("default"), "{line}");
}
