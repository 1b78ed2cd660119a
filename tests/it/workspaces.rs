//! Workspaces, members, invites, roles, step-up and plan caps (SPEC §4;
//! SECURITY R06–R08, R21, R28).

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Server, field};
use crate::records::create;
use crate::smtp::Mode;

async fn ws_of(s: &Server, t: &str) -> String {
    s.ws_of(t).await
}

async fn user_of(s: &Server, t: &str) -> String {
    s.get("/whoami?format=json", t).await.json()["data"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A signs in, invites M as a member, M signs in and switches to A's workspace.
async fn team(s: &Server) -> (String, String, String, String) {
    let a = s.login("admin@example.com").await;
    let (ws, m, m_personal) = s.join_as_member(&a, "member@example.com", "m-in-a").await;
    (a, m, m_personal, ws)
}

/// A new workspace named `name`, made by the user behind `admin`: its id.
async fn new_workspace(s: &Server, admin: &str, name: &str) -> String {
    let body = json!({ "name": name }).to_string();
    let r = s.post("/workspaces?format=json", Some(admin), &body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.json()["data"]["id"].as_str().unwrap().to_string()
}

/// A token of `member`'s user for workspace `ws` (to read its audit log).
async fn token_in(s: &Server, member: &str, ws: &str) -> String {
    let r = s
        .post(
            &format!("/workspaces/{ws}/tokens?format=json"),
            Some(member),
            r#"{"token_name":"there"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.json()["data"]["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn invite_login_member_journey() {
    let s = Server::start().await;
    let (a, m, _, ws) = team(&s).await;
    let invite_mail = &s.smtp().mails_to("member@example.com")[0].data;
    assert!(invite_mail.contains("/auth/request"), "{invite_mail}");
    // People are told the CLI and chat-assistant ways in too.
    assert!(invite_mail.contains("crmkit login"), "{invite_mail}");
    assert!(invite_mail.contains("/mcp"), "{invite_mail}");
    let members = s.get(&format!("/workspaces/{ws}/members"), &a).await;
    assert_eq!(
        members
            .text
            .lines()
            .filter(|l| l.starts_with("user/"))
            .count(),
        2,
        "{}",
        members.text
    );
    assert!(
        !members.text.contains("invite/"),
        "invite still pending: {}",
        members.text
    );
    let who = s.get("/whoami?format=json", &m).await.json();
    assert_eq!(who["data"]["role"], "member");
    assert_eq!(who["data"]["workspace"], format!("workspace/{ws}"));
    // M works in A's workspace; A sees it.
    let c = create(&s, &m, "contacts", json!({"name": "From M"})).await;
    assert_eq!(s.get(&format!("/contacts/{c}"), &a).await.status, 200);
    let list = s.get("/workspaces", &m).await;
    assert_eq!(
        list.text
            .lines()
            .filter(|l| l.starts_with("workspace/"))
            .count(),
        2,
        "{}",
        list.text
    );
    // Re-inviting a pending address updates the role; withdrawing frees the seat.
    let r = s
        .post(
            &format!("/workspaces/{ws}/invites?format=json"),
            Some(&a),
            r#"{"email":"later@example.com","role":"member"}"#,
        )
        .await;
    let inv = r.json()["data"]["id"].as_str().unwrap().to_string();
    // Making the invite an admin's takes the emailed step-up code.
    let n = s.smtp().mails_to("admin@example.com").len();
    let as_admin = r#"{"email":"later@example.com","role":"admin"}"#;
    s.post(&format!("/workspaces/{ws}/invites"), Some(&a), as_admin)
        .await
        .assert_error(403, "escalation_required");
    let code = step_up_code(&s, "admin@example.com", n).await;
    let r = s
        .post(
            &format!("/workspaces/{ws}/invites?code={code}"),
            Some(&a),
            as_admin,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        s.get("/whoami", &a)
            .await
            .text
            .contains("# members: 3 / 10")
    );
    let r = s
        .delete(&format!("/workspaces/{ws}/invites/{inv}"), &a)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        s.get("/whoami", &a)
            .await
            .text
            .contains("# members: 2 / 10")
    );
    // Inviting a member again is a conflict.
    s.post(
        &format!("/workspaces/{ws}/invites"),
        Some(&a),
        r#"{"email":"member@example.com"}"#,
    )
    .await
    .assert_error(409, "conflict");
}

#[tokio::test]
async fn members_cannot_do_admin_work_and_trigger_no_mail_r07() {
    let s = Server::start().await;
    let (a, m, _, ws) = team(&s).await;
    let a_id = user_of(&s, &a).await;
    let m_id = user_of(&s, &m).await;
    let mails_before = s.smtp().all().len();
    let calls = [
        (
            Method::POST,
            format!("/workspaces/{ws}/invites"),
            Some(r#"{"email":"x@example.com","role":"member"}"#),
        ),
        (
            Method::POST,
            format!("/workspaces/{ws}/members/{m_id}/role"),
            Some(r#"{"role":"admin"}"#),
        ),
        (
            Method::POST,
            format!("/workspaces/{ws}/members/{a_id}/role"),
            Some(r#"{"role":"member"}"#),
        ),
        (
            Method::DELETE,
            format!("/workspaces/{ws}/members/{a_id}"),
            None,
        ),
        (Method::DELETE, format!("/workspaces/{ws}"), None),
    ];
    for (method, path, body) in calls {
        let r = s.send(method, &path, Some(&m), body, &[]).await;
        r.assert_error(403, "admin_required");
    }
    assert_eq!(
        s.smtp().all().len(),
        mails_before,
        "a member triggered a mail"
    );
    assert_eq!(
        s.post("/contacts", Some(&m), r#"{"name":"still works"}"#)
            .await
            .status,
        201
    );
    // The last admin can neither be demoted nor removed (here the workspace
    // is also the admin's personal one, which is never left; a team
    // workspace's last admin: `a_member_can_leave_a_workspace`).
    s.post(
        &format!("/workspaces/{ws}/members/{a_id}/role"),
        Some(&a),
        r#"{"role":"member"}"#,
    )
    .await
    .assert_error(409, "last_admin");
    s.delete(&format!("/workspaces/{ws}/members/{a_id}"), &a)
        .await
        .assert_error(409, "conflict");
}

#[tokio::test]
async fn removal_applies_at_once_r08() {
    let s = Server::start().await;
    let (a, m, m_personal, ws) = team(&s).await;
    let m_id = user_of(&s, &m).await;
    let r = s
        .delete(&format!("/workspaces/{ws}/members/{m_id}"), &a)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    s.get("/contacts", &m)
        .await
        .assert_error(401, "invalid_token");
    s.post(&format!("/workspaces/{ws}/tokens"), Some(&m_personal), "{}")
        .await
        .assert_error(404, "not_found");
    assert_eq!(s.get("/contacts", &m_personal).await.status, 200);
}

async fn step_up_code(s: &Server, email: &str, before: usize) -> String {
    s.nth_code(email, before + 1).await
}

#[tokio::test]
async fn step_up_codes_are_bound_to_user_action_and_target_r21() {
    let s = Server::start().await;
    let (a, m, _, ws) = team(&s).await;
    let m_id = user_of(&s, &m).await;
    // A third member to try the code on.
    s.post(
        &format!("/workspaces/{ws}/invites"),
        Some(&a),
        r#"{"email":"third@example.com"}"#,
    )
    .await;
    let third = s.login("third@example.com").await;
    let third_id = user_of(&s, &third).await;
    let b = s.login("outsider@example.com").await;
    let b_ws = ws_of(&s, &b).await;

    let n = s.smtp().mails_to("admin@example.com").len();
    let promote = format!("/workspaces/{ws}/members/{m_id}/role");
    let r = s.post(&promote, Some(&a), r#"{"role":"admin"}"#).await;
    r.assert_error(403, "escalation_required");
    let code = step_up_code(&s, "admin@example.com", n).await;
    assert!(
        s.smtp()
            .mails_to("member@example.com")
            .iter()
            .all(|m| !m.data.contains(&code)),
        "code mailed to the target"
    );
    // Not for another member, not for deleting the workspace, not for B.
    s.post(
        &format!("/workspaces/{ws}/members/{third_id}/role?code={code}"),
        Some(&a),
        r#"{"role":"admin"}"#,
    )
    .await
    .assert_error(403, "invalid_code");
    s.send(
        Method::DELETE,
        &format!("/workspaces/{ws}"),
        Some(&a),
        None,
        &[("x-escalation-code", &code)],
    )
    .await
    .assert_error(403, "invalid_code");
    let b_id = user_of(&s, &b).await;
    let r = s
        .post(
            &format!("/workspaces/{b_ws}/members/{b_id}/role?code={code}"),
            Some(&b),
            r#"{"role":"admin"}"#,
        )
        .await;
    assert_ne!(r.status, 200);
    // The legitimate use works once (header form).
    let r = s
        .send(
            Method::POST,
            &promote,
            Some(&a),
            Some(r#"{"role":"admin"}"#),
            &[("x-escalation-code", &code)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        field(r.text.lines().next().unwrap(), "role").as_deref(),
        Some("admin")
    );
    s.post(
        &format!("{promote}?code={code}"),
        Some(&a),
        r#"{"role":"admin"}"#,
    )
    .await
    .assert_error(403, "invalid_code");
    // Query form, for the third member.
    let n = s.smtp().mails_to("admin@example.com").len();
    let p3 = format!("/workspaces/{ws}/members/{third_id}/role");
    s.post(&p3, Some(&a), r#"{"role":"admin"}"#)
        .await
        .assert_error(403, "escalation_required");
    let code = step_up_code(&s, "admin@example.com", n).await;
    assert_eq!(
        s.post(
            &format!("{p3}?code={code}"),
            Some(&a),
            r#"{"role":"admin"}"#
        )
        .await
        .status,
        200
    );
    // Demoting needs no code; ?code= on it is ignored.
    assert_eq!(
        s.post(
            &format!("{p3}?code=000000"),
            Some(&a),
            r#"{"role":"member"}"#
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn bad_workspace_input_gets_a_4xx_with_a_hint() {
    let s = Server::start().await;
    let (a, m, _, ws) = team(&s).await;
    let m_id = user_of(&s, &m).await;
    let cases: Vec<(Method, String, Option<String>, u16, &str)> = vec![
        (
            Method::POST,
            format!("/workspaces/{ws}/invites"),
            Some(r#"{"email":"x@example.com","role":"owner"}"#.into()),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            format!("/workspaces/{ws}/invites"),
            Some(r#"{"email":"not an email"}"#.into()),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            format!("/workspaces/{ws}/invites"),
            Some("{\"email\":\"\u{212a}@example.com\"}".into()),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            format!("/workspaces/{ws}/members/{m_id}/role"),
            Some(r#"{"role":"boss"}"#.into()),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            format!("/workspaces/{ws}/members/u_000000000000/role"),
            Some(r#"{"role":"member"}"#.into()),
            404,
            "not_found",
        ),
        (
            Method::DELETE,
            format!("/workspaces/{ws}/members/u_000000000000"),
            None,
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/workspaces/w_000000000000/members".into(),
            None,
            404,
            "not_found",
        ),
        (
            Method::POST,
            "/workspaces".into(),
            Some(r#"{"name":""}"#.into()),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/workspaces".into(),
            Some(format!("{{\"name\":\"{}\"}}", "x".repeat(500))),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/workspaces".into(),
            Some(r#"{"name":"x","plan":"enterprise"}"#.into()),
            400,
            "unknown_field",
        ),
        (
            Method::POST,
            format!("/workspaces/{ws}/tokens"),
            Some(r#"{"workspace_id":"w_000000000000"}"#.into()),
            400,
            "unknown_field",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let r = s.send(method, &path, Some(&a), body.as_deref(), &[]).await;
        assert_eq!(r.status, status, "{path}: {}", r.text);
        assert_eq!(r.error_code(), code, "{path}: {}", r.text);
    }
    // A wrong step-up code.
    let r = s
        .send(
            Method::DELETE,
            &format!("/workspaces/{ws}?code=123456"),
            Some(&a),
            None,
            &[],
        )
        .await;
    r.assert_error(403, "invalid_code");
}

#[tokio::test]
async fn non_members_cannot_touch_a_workspace_r06() {
    let s = Server::start().await;
    let (a, m, _, ws) = team(&s).await;
    let m_id = user_of(&s, &m).await;
    let b = s.login("stranger@example.com").await;
    let mails = s.smtp().mails_to("stranger@example.com").len();
    for (method, path, body) in [
        (Method::GET, format!("/workspaces/{ws}/members"), None),
        (Method::POST, format!("/workspaces/{ws}/tokens"), Some("{}")),
        (
            Method::POST,
            format!("/workspaces/{ws}/invites"),
            Some(r#"{"email":"x@example.com"}"#),
        ),
        (
            Method::POST,
            format!("/workspaces/{ws}/members/{m_id}/role"),
            Some(r#"{"role":"admin"}"#),
        ),
        (
            Method::DELETE,
            format!("/workspaces/{ws}/members/{m_id}"),
            None,
        ),
        (Method::DELETE, format!("/workspaces/{ws}"), None),
    ] {
        let r = s.send(method, &path, Some(&b), body, &[]).await;
        r.assert_error(404, "not_found");
    }
    assert_eq!(
        s.smtp().mails_to("stranger@example.com").len(),
        mails,
        "escalation mail to a stranger"
    );
    let members = s.get(&format!("/workspaces/{ws}/members"), &a).await;
    assert_eq!(
        members
            .text
            .lines()
            .filter(|l| l.starts_with("user/"))
            .count(),
        2
    );
}

#[tokio::test]
async fn deleting_a_workspace_leaves_nothing_behind() {
    let s = Server::start().await;
    let (a, m, _, ws) = team(&s).await;
    let c = create(
        &s,
        &a,
        "contacts",
        json!({"name": "gone", "email": "gone@x.com"}),
    )
    .await;
    create(&s, &a, "companies", json!({"name": "gone co"})).await;
    create(
        &s,
        &a,
        "deals",
        json!({"title": "gone deal", "contact_id": c}),
    )
    .await;
    s.post(
        &format!("/contacts/{c}/activities"),
        Some(&a),
        r#"{"kind":"note"}"#,
    )
    .await;
    s.post(
        &format!("/workspaces/{ws}/invites"),
        Some(&a),
        r#"{"email":"pending@example.com"}"#,
    )
    .await;
    let n = s.smtp().mails_to("admin@example.com").len();
    s.delete(&format!("/workspaces/{ws}"), &a)
        .await
        .assert_error(403, "escalation_required");
    let code = s.nth_code("admin@example.com", n + 1).await;
    let r = s.delete(&format!("/workspaces/{ws}?code={code}"), &a).await;
    assert_eq!(r.status, 200, "{}", r.text);
    s.get("/contacts", &a)
        .await
        .assert_error(401, "invalid_token");
    s.get("/contacts", &m)
        .await
        .assert_error(401, "invalid_token");
    let db = crate::harness::open_db(&s).await;
    for table in [
        "contacts",
        "companies",
        "deals",
        "activities",
        "audit",
        "invites",
        "memberships",
        "tokens",
        "confirmations",
    ] {
        let n = crate::harness::count(
            &db,
            &format!("SELECT COUNT(*) AS n FROM {table} WHERE workspace_id = '{ws}'"),
        )
        .await;
        assert_eq!(n, 0, "{table} still has rows of the deleted workspace");
    }
    if crate::BACKEND == crate::harness::Backend::Sqlite {
        // The search index holds exactly the rows still there (it knows rows
        // by search key only, so leftovers would be entries without a row).
        for t in ["contacts", "companies", "deals"] {
            let indexed =
                crate::harness::count(&db, &format!("SELECT COUNT(*) AS n FROM {t}_fts")).await;
            let rows = crate::harness::count(
                &db,
                &format!(
                    "SELECT COUNT(*) AS n FROM {t}_fts WHERE rowid IN (SELECT search_key FROM {t})"
                ),
            )
            .await;
            assert_eq!(indexed, rows, "{t}_fts still indexes the deleted workspace");
        }
    }
    assert_eq!(
        crate::harness::count(
            &db,
            &format!("SELECT COUNT(*) AS n FROM workspaces WHERE id = '{ws}'")
        )
        .await,
        0
    );
    // The owner gets a new personal workspace at next sign-in.
    let again = s.login("admin@example.com").await;
    assert_ne!(ws_of(&s, &again).await, ws);
}

/// Every answer of a parallel burst that is not a 201 is the cap's own refusal.
fn assert_refused_by_the_cap(answers: &[(u16, String)]) {
    for (status, text) in answers.iter().filter(|(s, _)| *s != 201) {
        assert_eq!(*status, 403, "{text}");
        assert!(text.contains("error: plan_limit_reached\n"), "{text}");
        assert!(text.contains("\nhint: "), "no hint: {text}");
    }
}

#[tokio::test]
async fn plan_caps_hold_under_parallel_creates_r28() {
    let s = Server::builder()
        .env("CRMKIT_LIMIT_CONTACTS", "10")
        .env("CRMKIT_LIMIT_COMPANIES", "10")
        .env("CRMKIT_LIMIT_DEALS", "10")
        .env("CRMKIT_LIMIT_MEMBERS", "4")
        .env("CRMKIT_LIMIT_WORKSPACES", "3")
        .start()
        .await;
    let t = s.login("cap@example.com").await;
    for kind in ["contacts", "companies", "deals"] {
        let mut tasks = Vec::new();
        for i in 0..40 {
            let (http, url, t) = (s.http.clone(), s.url(&format!("/{kind}")), t.clone());
            let body = match kind {
                "contacts" => json!({"email": format!("p{i}@x.com")}),
                "companies" => json!({"domain": format!("p{i}.com")}),
                _ => json!({"title": format!("p{i}")}),
            };
            tasks.push(tokio::spawn(async move {
                let r = http
                    .post(url)
                    .bearer_auth(t)
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }));
        }
        let mut ok = 0;
        for task in tasks {
            let (status, text) = task.await.unwrap();
            match status {
                201 => ok += 1,
                403 => assert!(
                    text.contains("plan_limit_reached") && text.contains("do not retry"),
                    "{text}"
                ),
                other => panic!("{kind}: {other} {text}"),
            }
        }
        assert_eq!(ok, 10, "{kind}");
        let r = s.get(&format!("/{kind}?limit=200"), &t).await;
        assert_eq!(r.text.lines().filter(|l| !l.starts_with('#')).count(), 10);
    }
    // An upsert that updates is not a create.
    let existing = s.get("/contacts?limit=1&format=json", &t).await.json()["data"][0]["email"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .post(
            "/contacts",
            Some(&t),
            &json!({"email": existing, "name": "fine"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let who = s.get("/whoami", &t).await;
    assert!(who.text.contains("# contacts: 10 / 10"), "{}", who.text);
    // Invites and workspaces in parallel.
    let ws = ws_of(&s, &t).await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (http, url, t) = (
            s.http.clone(),
            s.url(&format!("/workspaces/{ws}/invites")),
            t.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(t)
                .body(format!(r#"{{"email":"inv{i}@x.com"}}"#))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }));
    }
    let created: Vec<(u16, String)> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        created.iter().filter(|(s, _)| *s == 201).count(),
        3,
        "{created:?}"
    );
    assert_refused_by_the_cap(&created);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (http, url, t) = (s.http.clone(), s.url("/workspaces"), t.clone());
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(t)
                .body(format!(r#"{{"name":"w{i}"}}"#))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }));
    }
    let made: Vec<(u16, String)> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        made.iter().filter(|(s, _)| *s == 201).count(),
        2,
        "{made:?}"
    );
    assert_refused_by_the_cap(&made);
    // The workspaces cap is the user's, and says what frees a slot.
    let refused = &made.iter().find(|(s, _)| *s == 403).unwrap().1;
    assert!(
        refused.contains("message: you have 3 of 3 workspaces"),
        "{refused}"
    );
    assert!(
        refused.contains("deleting a workspace they created"),
        "{refused}"
    );
    let list: Value = s.get("/workspaces?format=json", &t).await.json();
    assert_eq!(list["data"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn operators_change_plans_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[plans.pro]\ncontacts = 5000\n\n[plans.tiny]\ncontacts = 2\n",
    )
    .unwrap();
    let s = Server::builder()
        .env("CRMKIT_CONFIG", cfg.to_str().unwrap())
        .start()
        .await;
    let t = s.login("ops@example.com").await;
    let ws = ws_of(&s, &t).await;
    let db = s.db_url.clone();
    let out = std::process::Command::new(crate::harness::bin())
        .args([
            "admin",
            "set-plan",
            &ws,
            "pro",
            "--database-url",
            &db,
            "--config",
            cfg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        s.get("/whoami", &t)
            .await
            .text
            .contains("# contacts: 0 / 5000")
    );
    // A configured plan's cap is the one a create counts against.
    let set = |plan: &str| {
        std::process::Command::new(crate::harness::bin())
            .args(["admin", "set-plan", &ws, plan, "--database-url", &db])
            .args(["--config", cfg.to_str().unwrap()])
            .output()
            .unwrap()
    };
    assert!(set("tiny").status.success());
    for i in 0..2 {
        let r = s
            .post("/contacts", Some(&t), &format!(r#"{{"name":"t{i}"}}"#))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let r = s.post("/contacts", Some(&t), r#"{"name":"t3"}"#).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(
        r.text.contains("2 of 2 contacts") && r.text.contains("tiny"),
        "{}",
        r.text
    );
    assert!(set("pro").status.success());
    let r = s.post("/contacts", Some(&t), r#"{"name":"t3"}"#).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let out = std::process::Command::new(crate::harness::bin())
        .args(["admin", "set-plan", &ws, "platinum", "--database-url", &db])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = std::process::Command::new(crate::harness::bin())
        .args([
            "admin",
            "set-plan",
            "w_000000000000",
            "default",
            "--database-url",
            &db,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
}

/// The pending invites' lines of the members list.
async fn pending_invites(s: &Server, t: &str, ws: &str) -> Vec<String> {
    let members = s.get(&format!("/workspaces/{ws}/members"), t).await;
    members
        .text
        .lines()
        .filter(|l| l.starts_with("invite/"))
        .map(str::to_string)
        .collect()
}

/// The workspace's audit actions, newest first.
async fn audit_actions(s: &Server, t: &str) -> Vec<String> {
    let audit = s.get("/audit?format=json", t).await.json();
    audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn an_invite_whose_mail_fails_is_taken_back() {
    let s = Server::start().await;
    let a = s.login("admin@example.com").await;
    let ws = ws_of(&s, &a).await;
    let (s, a) = (&s, a.as_str());
    let path = format!("/workspaces/{ws}/invites");
    let path = path.as_str();
    let invite = |email: &str, role: &str| {
        let body = json!({"email": email, "role": role}).to_string();
        async move { s.post(path, Some(a), &body).await }
    };
    let n = s.smtp().mails_to("admin@example.com").len();
    invite("later@example.com", "admin")
        .await
        .assert_error(403, "escalation_required");
    let code = step_up_code(s, "admin@example.com", n).await;
    // A new invite: answered 502, no invite left, no seat taken.
    s.smtp().set_mode(Mode::Refuse);
    invite("bounce@example.com", "member")
        .await
        .assert_error(502, "email_failed");
    assert_eq!(pending_invites(s, a, &ws).await, Vec::<String>::new());
    assert!(s.get("/whoami", a).await.text.contains("# members: 1 / 10"));
    // A re-invite that changes the role: the pending invite keeps its role.
    s.smtp().set_mode(Mode::Accept);
    let as_admin = json!({"email": "later@example.com", "role": "admin"}).to_string();
    let r = s
        .post(&format!("{path}?code={code}"), Some(a), &as_admin)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    s.smtp().set_mode(Mode::RefuseAfterData);
    invite("later@example.com", "member")
        .await
        .assert_error(502, "email_failed");
    let pending = pending_invites(s, a, &ws).await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert!(
        field(&pending[0], "role").as_deref() == Some("admin"),
        "{pending:?}"
    );
    assert!(s.get("/whoami", a).await.text.contains("# members: 2 / 10"));
    // The audit log tells what happened.
    let actions = audit_actions(s, a).await;
    assert_eq!(
        actions[..4],
        [
            "invite.update",
            "invite.update",
            "invite.create",
            "invite.withdraw"
        ],
        "{actions:?}"
    );
    // The re-invite names the role it changed, and the take-back undoes it.
    let audit = s.get("/audit?format=json", a).await.json();
    assert_eq!(
        audit["data"][1]["changes"]["role"],
        json!(["admin", "member"])
    );
    assert_eq!(
        audit["data"][0]["changes"]["role"],
        json!(["member", "admin"])
    );
    // Mail works again: the invite goes through.
    s.smtp().set_mode(Mode::Accept);
    assert_eq!(invite("bounce@example.com", "member").await.status, 201);
    assert_eq!(pending_invites(s, a, &ws).await.len(), 2);
}

/// Waits until the test SMTP server holds a message back; fails if the
/// request (pinned) is answered first.
async fn until_mail_is_held<F: std::future::Future<Output = crate::harness::Resp>>(
    s: &Server,
    request: &mut std::pin::Pin<&mut F>,
) {
    let held = async {
        while s.smtp().held.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        r = request.as_mut() => panic!("answered with the mail held: {}", r.text),
        _ = held => {}
    }
}

/// The invitee signs in (and so joins) while the invite's mail is still on
/// its way; the mail then fails. The invite is answered 502 as usual, but
/// taking it back must not touch the membership it has become.
#[tokio::test]
async fn an_invite_accepted_before_its_mail_fails_stays_accepted() {
    let s = Server::start().await;
    let a = s.login("admin@example.com").await;
    let ws = ws_of(&s, &a).await;
    s.smtp().hold_next_to("racer@example.com");
    let path = format!("/workspaces/{ws}/invites");
    let invite = s.post(&path, Some(&a), r#"{"email":"racer@example.com"}"#);
    tokio::pin!(invite);
    until_mail_is_held(&s, &mut invite).await;
    // The invite is committed: the invitee's sign-in accepts it.
    let racer = tokio::select! {
        r = &mut invite => panic!("answered with the mail held: {}", r.text),
        t = s.login("racer@example.com") => t,
    };
    s.smtp().set_mode(Mode::Refuse);
    s.smtp().release();
    invite.await.assert_error(502, "email_failed");
    // Still a member, in the seat the invite took; nothing was withdrawn.
    let members = s.get(&format!("/workspaces/{ws}/members"), &a).await.text;
    assert!(
        members.lines().any(|l| l.starts_with("user/")
            && l.contains("racer@example.com")
            && l.contains("role=member")),
        "{members}"
    );
    assert_eq!(pending_invites(&s, &a, &ws).await, Vec::<String>::new());
    assert!(
        s.get("/whoami", &a)
            .await
            .text
            .contains("# members: 2 / 10")
    );
    let actions = audit_actions(&s, &a).await;
    assert!(
        !actions.iter().any(|x| x == "invite.withdraw"),
        "{actions:?}"
    );
    assert!(actions.iter().any(|x| x == "invite.create"), "{actions:?}");
    // And the new member can work in the workspace.
    let r = s
        .post(&format!("/workspaces/{ws}/tokens"), Some(&racer), "{}")
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

#[tokio::test]
async fn a_slow_mail_server_holds_up_no_other_write() {
    let s = Server::start().await;
    let a = s.login("admin@example.com").await;
    let ws = ws_of(&s, &a).await;
    s.smtp().set_mode(Mode::Hold);
    let path = format!("/workspaces/{ws}/invites");
    let invite = s.post(&path, Some(&a), r#"{"email":"slow@example.com"}"#);
    tokio::pin!(invite);
    // The invite request is waiting on the mail server.
    until_mail_is_held(&s, &mut invite).await;
    // Other writes go on meanwhile: a create, an update, a delete.
    let writes = async {
        let id = create(&s, &a, "contacts", json!({"name": "During the invite"})).await;
        let r = s
            .patch(&format!("/contacts/{id}"), &a, r#"{"name":"Renamed"}"#)
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        id
    };
    let id = tokio::select! {
        r = &mut invite => panic!("answered with the mail held: {}", r.text),
        r = tokio::time::timeout(std::time::Duration::from_secs(10), writes) => r.expect("writes waited for the mail server"),
    };
    s.smtp().set_mode(Mode::Accept);
    let r = invite.await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(s.smtp().mails_to("slow@example.com").len(), 1);
    assert_eq!(s.get(&format!("/contacts/{id}"), &a).await.status, 200);
}

/// An invite as admin makes an admin, so it takes the step-up code as a
/// promotion does; the code is bound to the workspace and the address.
#[tokio::test]
async fn inviting_as_admin_needs_the_step_up_code() {
    let s = Server::start().await;
    let (a, m, _, ws) = team(&s).await;
    let path = format!("/workspaces/{ws}/invites");
    let body = |email: &str| json!({"email": email, "role": "admin"}).to_string();
    let n = s.smtp().mails_to("admin@example.com").len();
    s.post(&path, Some(&a), &body("boss@example.com"))
        .await
        .assert_error(403, "escalation_required");
    assert_eq!(pending_invites(&s, &a, &ws).await, Vec::<String>::new());
    assert!(s.smtp().mails_to("boss@example.com").is_empty());
    let code = step_up_code(&s, "admin@example.com", n).await;
    // Not for another address, nor for a promotion.
    s.post(
        &format!("{path}?code={code}"),
        Some(&a),
        &body("other@example.com"),
    )
    .await
    .assert_error(403, "invalid_code");
    let m_id = user_of(&s, &m).await;
    s.post(
        &format!("/workspaces/{ws}/members/{m_id}/role?code={code}"),
        Some(&a),
        r#"{"role":"admin"}"#,
    )
    .await
    .assert_error(403, "invalid_code");
    // The wrong tries left the code alive: it works once, for its address.
    let r = s
        .post(
            &format!("{path}?code={code}"),
            Some(&a),
            &body("boss@example.com"),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    s.post(
        &format!("{path}?code={code}"),
        Some(&a),
        &body("boss@example.com"),
    )
    .await
    .assert_error(403, "invalid_code");
    // An existing member is refused before any code is mailed.
    let before = s.smtp().mails_to("admin@example.com").len();
    s.post(&path, Some(&a), &body("member@example.com"))
        .await
        .assert_error(409, "conflict");
    assert_eq!(s.smtp().mails_to("admin@example.com").len(), before);
    // The invitee signs in as an admin.
    let boss = s.login("boss@example.com").await;
    let r = s
        .post(
            &format!("/workspaces/{ws}/tokens?format=json"),
            Some(&boss),
            r#"{"token_name":"boss"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let t = r.json()["data"]["token"].as_str().unwrap().to_string();
    assert_eq!(
        s.get("/whoami?format=json", &t).await.json()["data"]["role"],
        "admin"
    );
}

/// A handle or id of the wrong kind in a workspace path is a 400 naming the
/// kind expected, as on record paths; an unknown one stays a 404.
#[tokio::test]
async fn wrong_kinds_in_workspace_paths_are_400() {
    let s = Server::start().await;
    let (a, m, _, ws) = team(&s).await;
    let m_id = user_of(&s, &m).await;
    let c = "c_7k2m9q4x1d3f";
    let r = s.get(&format!("/workspaces/{c}/members"), &a).await;
    r.assert_error(400, "invalid_request");
    assert!(r.text.contains("workspace"), "{}", r.text);
    s.get(&format!("/workspaces/contact/{c}/members"), &a)
        .await
        .assert_error(400, "invalid_request");
    let r = s
        .post(
            &format!("/workspaces/{ws}/members/invite%2Fi_7k2m9q4x1d3f/role"),
            Some(&a),
            r#"{"role":"member"}"#,
        )
        .await;
    r.assert_error(400, "invalid_request");
    assert!(r.text.contains("user"), "{}", r.text);
    s.delete(&format!("/workspaces/{ws}/invites/{m_id}"), &a)
        .await
        .assert_error(400, "invalid_request");
    // Unknown, not of another kind: 404 as before.
    s.get("/workspaces/w_7k2m9q4x1d3f/members", &a)
        .await
        .assert_error(404, "not_found");
    s.get("/workspaces/nonsense/members", &a)
        .await
        .assert_error(404, "not_found");
    s.delete(&format!("/workspaces/{ws}/members/u_7k2m9q4x1d3f"), &a)
        .await
        .assert_error(404, "not_found");
}

/// A personal workspace made again at sign-in (the old one was deleted)
/// counts against the workspaces cap like any other: at the cap the
/// sign-in goes to the newest workspace the user belongs to instead.
#[tokio::test]
async fn a_recreated_personal_workspace_respects_the_cap() {
    let s = Server::builder()
        .env("CRMKIT_LIMIT_WORKSPACES", "2")
        .start()
        .await;
    let email = "capped@example.com";
    let a = s.login(email).await;
    let personal = ws_of(&s, &a).await;
    let make = async |t: &str, name: &str| {
        let r = s
            .post(
                "/workspaces?format=json",
                Some(t),
                &json!({"name": name}).to_string(),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.json()["data"]["id"].as_str().unwrap().to_string()
    };
    let team = make(&a, "Team").await;
    let r = s
        .post(
            &format!("/workspaces/{team}/tokens?format=json"),
            Some(&a),
            r#"{"token_name":"team"}"#,
        )
        .await;
    let in_team = r.json()["data"]["token"].as_str().unwrap().to_string();
    // Delete the personal workspace (step-up), then fill the cap again.
    let n = s.smtp().mails_to(email).len();
    s.delete(&format!("/workspaces/{personal}"), &a)
        .await
        .assert_error(403, "escalation_required");
    let code = step_up_code(&s, email, n).await;
    let r = s
        .delete(&format!("/workspaces/{personal}?code={code}"), &a)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let newest = make(&in_team, "Team 2").await;
    // Signing in makes no third workspace: the token acts in the newest.
    let t = s.login(email).await;
    assert_eq!(ws_of(&s, &t).await, newest);
    let mine = s.get("/workspaces?format=json", &t).await.json();
    assert_eq!(mine["data"].as_array().unwrap().len(), 2, "{mine}");
    let who = s.get("/whoami", &t).await.text;
    assert!(who.contains("# workspaces: 2 / 2"), "{who}");
    // Below the cap again, sign-in makes a personal workspace as before.
    let n = s.smtp().mails_to(email).len();
    s.delete(&format!("/workspaces/{team}"), &in_team)
        .await
        .assert_error(403, "escalation_required");
    let code = step_up_code(&s, email, n).await;
    let r = s
        .delete(&format!("/workspaces/{team}?code={code}"), &in_team)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let t = s.login(email).await;
    let fresh = ws_of(&s, &t).await;
    assert!(fresh != newest && fresh != personal, "{fresh}");
    let mine = s.get("/workspaces?format=json", &t).await.json();
    assert_eq!(mine["data"].as_array().unwrap().len(), 2, "{mine}");
}

/// An invite as admin that the members cap has no seat for is refused
/// before any step-up code is mailed.
#[tokio::test]
async fn an_admin_invite_without_a_seat_mails_no_code() {
    let s = Server::builder()
        .env("CRMKIT_LIMIT_MEMBERS", "2")
        .start()
        .await;
    let (a, _, _, ws) = team(&s).await;
    let n = s.smtp().mails_to("admin@example.com").len();
    s.post(
        &format!("/workspaces/{ws}/invites"),
        Some(&a),
        r#"{"email":"boss@example.com","role":"admin"}"#,
    )
    .await
    .assert_error(403, "plan_limit_reached");
    assert_eq!(s.smtp().mails_to("admin@example.com").len(), n);
    assert_eq!(pending_invites(&s, &a, &ws).await, Vec::<String>::new());
}

/// The sign-in that accepts invites says which workspaces it joined, and
/// how to work there; a later sign-in says nothing of it.
#[tokio::test]
async fn a_sign_in_says_which_workspaces_it_joined() {
    let s = Server::start().await;
    let a = s.login("admin@example.com").await;
    let ws = ws_of(&s, &a).await;
    let r = s
        .post(
            &format!("/workspaces/{ws}/invites"),
            Some(&a),
            r#"{"email":"newbie@example.com","role":"member"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let code = s.request_code("newbie@example.com").await;
    let r = s
        .post(
            "/auth/verify?format=json",
            None,
            &json!({"email": "newbie@example.com", "code": code}).to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        r.json()["joined"],
        json!([{"workspace": format!("workspace/{ws}"), "role": "member"}])
    );
    let code = s.request_code("newbie@example.com").await;
    let r = s
        .post(
            "/auth/verify",
            None,
            &json!({"email": "newbie@example.com", "code": code}).to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(!r.text.contains("# joined"), "{}", r.text);
    // In text, the joining sign-in's line names the next step.
    let r = s
        .post(
            &format!("/workspaces/{ws}/invites"),
            Some(&a),
            r#"{"email":"second@example.com","role":"member"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let code = s.request_code("second@example.com").await;
    let r = s
        .post(
            "/auth/verify",
            None,
            &json!({"email": "second@example.com", "code": code}).to_string(),
        )
        .await;
    assert!(
        r.text.contains(&format!(
            "# joined workspace/{ws} as member (invited); to work there: POST /workspaces/{ws}/tokens"
        )),
        "{}",
        r.text
    );
}

/// A deleted workspace takes its audit log with it, so the deletion is
/// recorded in the personal workspace of each of its members.
#[tokio::test]
async fn a_workspace_deletion_is_audited_where_its_members_can_see_it() {
    let s = Server::start().await;
    let a = s.login("admin@example.com").await;
    let r = s
        .post("/workspaces?format=json", Some(&a), r#"{"name":"Doomed"}"#)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let doomed = r.json()["data"]["id"].as_str().unwrap().to_string();
    let r = s
        .post(
            &format!("/workspaces/{doomed}/tokens?format=json"),
            Some(&a),
            r#"{"token_name":"in-doomed"}"#,
        )
        .await;
    let in_doomed = r.json()["data"]["token"].as_str().unwrap().to_string();
    let (_, _, m_personal) = s
        .join_as_member(&in_doomed, "member@example.com", "m")
        .await;
    let n = s.smtp().mails_to("admin@example.com").len();
    s.delete(&format!("/workspaces/{doomed}"), &a)
        .await
        .assert_error(403, "escalation_required");
    let code = step_up_code(&s, "admin@example.com", n).await;
    let r = s
        .delete(&format!("/workspaces/{doomed}?code={code}"), &a)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let a_id = user_of(&s, &a).await;
    for t in [&a, &m_personal] {
        let audit = s.get("/audit?format=json", t).await.json();
        let e = &audit["data"][0];
        assert_eq!(e["action"], "workspace.delete", "{audit}");
        assert_eq!(e["target"], format!("workspace/{doomed}"), "{audit}");
        assert_eq!(e["changes"]["name"], json!(["Doomed", null]), "{audit}");
        assert_eq!(e["user"], format!("user/{a_id}"), "{audit}");
    }
}

/// Someone already signed in sees an invite in GET /workspaces and joins by
/// taking a token there, without signing in again; nobody else can.
#[tokio::test]
async fn a_signed_in_invitee_joins_by_taking_a_token() {
    let s = Server::start().await;
    let a = s.login("admin@example.com").await;
    let ws = ws_of(&s, &a).await;
    let x = s.login("already@example.com").await;
    let outsider = s.login("outsider@example.com").await;
    let r = s
        .post(
            &format!("/workspaces/{ws}/invites"),
            Some(&a),
            r#"{"email":"already@example.com","role":"member"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    // A second invite, from the outsider's workspace: taking a token in the
    // first says nothing of it.
    let other = ws_of(&s, &outsider).await;
    let r = s
        .post(
            &format!("/workspaces/{other}/invites"),
            Some(&outsider),
            r#"{"email":"already@example.com","role":"member"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let mine = s.get("/workspaces", &x).await;
    assert!(
        mine.text
            .lines()
            .any(|l| l.starts_with(&format!("workspace/{ws} ")) && l.contains("status=invited")),
        "{}",
        mine.text
    );
    // Its members are not listed before joining; the 404 says how to join.
    let r = s.get(&format!("/workspaces/{ws}/members"), &x).await;
    r.assert_error(404, "not_found");
    assert!(
        r.text
            .contains("status=invited is joined with POST /workspaces/{id}/tokens"),
        "{}",
        r.text
    );
    // Not for someone else.
    s.post(&format!("/workspaces/{ws}/tokens"), Some(&outsider), "{}")
        .await
        .assert_error(404, "not_found");
    let r = s
        .post(
            &format!("/workspaces/{ws}/tokens"),
            Some(&x),
            r#"{"token_name":"joined"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    // The token answered is the one for that workspace: no hint to mint
    // another.
    assert!(
        r.text.contains(&format!(
            "# joined workspace/{ws} as member (invited); this token works there"
        )),
        "{}",
        r.text
    );
    let t = r
        .text
        .split("token=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(ws_of(&s, &t).await, ws);
    let mine = s.get("/workspaces", &x).await;
    assert!(
        mine.text
            .lines()
            .any(|l| l.starts_with(&format!("workspace/{ws} ")) && l.contains("status=member")),
        "{}",
        mine.text
    );
    assert!(pending_invites(&s, &a, &ws).await.is_empty());
    assert!(
        mine.text
            .lines()
            .any(|l| l.starts_with(&format!("workspace/{other} ")) && l.contains("status=invited")),
        "the other invite stays pending: {}",
        mine.text
    );
    assert_eq!(pending_invites(&s, &outsider, &other).await.len(), 1);
    assert_eq!(audit_actions(&s, &a).await[0], "token.create");
    assert!(
        audit_actions(&s, &a)
            .await
            .contains(&"member.join".to_string())
    );
}

/// A member may leave a workspace without an admin: their tokens for it die
/// at once, the audit says member.leave, and an admin can invite them back.
/// Leaving another member out is still admin work; the last admin cannot
/// leave, nor can anyone leave their personal workspace.
#[tokio::test]
async fn a_member_can_leave_a_workspace() {
    let s = Server::start().await;
    let (a, m, m_personal, ws) = team(&s).await;
    let me = user_of(&s, &m).await;
    let admin = user_of(&s, &a).await;
    // Removing someone else still takes an admin.
    s.delete(&format!("/workspaces/{ws}/members/{admin}"), &m)
        .await
        .assert_error(403, "admin_required");
    // Not one's personal workspace.
    let personal = ws_of(&s, &m_personal).await;
    let r = s
        .delete(
            &format!("/workspaces/{personal}/members/user/{me}"),
            &m_personal,
        )
        .await;
    r.assert_error(409, "conflict");
    assert!(r.text.contains("personal workspace"), "{}", r.text);
    // Leaving, with the token for that workspace.
    let r = s
        .delete(&format!("/workspaces/{ws}/members/{me}"), &m)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.text.contains(&format!("# you left workspace/{ws}")),
        "{}",
        r.text
    );
    assert!(r.text.contains("this one included"), "{}", r.text);
    assert_eq!(s.get("/whoami", &m).await.status, 401);
    let members = s.get(&format!("/workspaces/{ws}/members"), &a).await.text;
    assert!(!members.contains("member@example.com"), "{members}");
    let audit = s.get("/audit?action=member.leave", &a).await.text;
    assert!(audit.contains(&format!("target=user/{me}")), "{audit}");
    // The entry still says who it was, now that they are gone.
    assert!(audit.contains("email=member@example.com"), "{audit}");
    // The last admin cannot leave (a team workspace: the admin's first is
    // their personal one).
    let team_ws = new_workspace(&s, &a, "Team").await;
    s.delete(&format!("/workspaces/{team_ws}/members/{admin}"), &a)
        .await
        .assert_error(409, "last_admin");
}

/// An admin renames a workspace (audited with the old and new name); a
/// member cannot, and a bad name is a 400 that changes nothing.
#[tokio::test]
async fn an_admin_renames_a_workspace() {
    let s = Server::start().await;
    let (a, m, _, _) = team(&s).await;
    let ws = new_workspace(&s, &a, "Old name").await;
    let r = s
        .send(
            Method::PATCH,
            &format!("/workspaces/{ws}"),
            Some(&a),
            Some(r#"{"name":"New name"}"#),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("name=\"New name\""), "{}", r.text);
    let list = s.get("/workspaces", &a).await.text;
    assert!(
        list.contains("New name") && !list.contains("Old name"),
        "{list}"
    );
    let there = token_in(&s, &a, &ws).await;
    let audit = s
        .get("/audit?action=workspace.update&format=json", &there)
        .await
        .json();
    assert_eq!(
        audit["data"][0]["changes"]["name"],
        json!(["Old name", "New name"]),
        "{audit}"
    );
    for (body, code, status) in [
        (r#"{"name":""}"#, "invalid_request", 400),
        (r#"{}"#, "invalid_request", 400),
        (r#"{"title":"x"}"#, "unknown_field", 400),
    ] {
        let r = s
            .send(
                Method::PATCH,
                &format!("/workspaces/{ws}"),
                Some(&a),
                Some(body),
                &[],
            )
            .await;
        r.assert_error(status, code);
    }
    // A member (of the admin's personal workspace) cannot rename it.
    let personal = ws_of(&s, &a).await;
    s.send(
        Method::PATCH,
        &format!("/workspaces/{personal}"),
        Some(&m),
        Some(r#"{"name":"Mine"}"#),
        &[],
    )
    .await
    .assert_error(403, "admin_required");
    assert!(s.get("/workspaces", &a).await.text.contains("New name"));
}

/// The invitee may decline an invite (listed with its handle in their
/// GET /workspaces); nobody else but an admin can remove it.
#[tokio::test]
async fn an_invitee_can_decline() {
    let s = Server::start().await;
    let a = s.login("inviter@example.com").await;
    let ws = new_workspace(&s, &a, "Club").await;
    // Signed in before the invite (a sign-in accepts pending invites).
    let x = s.login("maybe@example.com").await;
    let r = s
        .post(
            &format!("/workspaces/{ws}/invites?format=json"),
            Some(&a),
            r#"{"email":"maybe@example.com","role":"member"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let invite = r.json()["data"]["handle"].as_str().unwrap().to_string();
    let mine = s.get("/workspaces", &x).await.text;
    assert!(
        mine.contains(&format!("status=invited invite={invite}")),
        "{mine}"
    );
    // Someone else, signed in, cannot decline it for them.
    let other = s.login("nosy@example.com").await;
    s.delete(&format!("/workspaces/{ws}/invites/{invite}"), &other)
        .await
        .assert_error(404, "not_found");
    let r = s
        .delete(&format!("/workspaces/{ws}/invites/{invite}"), &x)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.text.contains(&format!("# declined {invite}")),
        "{}",
        r.text
    );
    assert!(!s.get("/workspaces", &x).await.text.contains(&ws));
    let members = s.get(&format!("/workspaces/{ws}/members"), &a).await.text;
    assert!(!members.contains("maybe@example.com"), "{members}");
    // Audited in the workspace.
    let there = token_in(&s, &a, &ws).await;
    let audit = s.get("/audit?action=invite.decline", &there).await.text;
    assert!(audit.contains(&format!("target={invite}")), "{audit}");
}

/// `GET /workspaces/{id}`: a member reads a workspace's role, plan and usage
/// without switching to it; to anyone else it does not exist (R06).
#[tokio::test]
async fn one_workspace_with_its_usage() {
    let s = Server::start().await;
    let (a, m, m_personal, ws) = team(&s).await;
    create(&s, &a, "contacts", json!({"name": "One"})).await;
    create(&s, &m, "contacts", json!({"name": "Two"})).await;
    create(&s, &a, "companies", json!({"name": "Co"})).await;
    let r = s.get(&format!("/workspaces/{ws}?format=json"), &m).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let d = &r.json()["data"];
    assert_eq!(d["handle"], format!("workspace/{ws}"));
    assert_eq!(
        (
            d["role"].as_str(),
            d["current"].as_bool(),
            d["personal"].as_bool()
        ),
        (Some("member"), Some(true), Some(false)),
        "{d}"
    );
    assert_eq!(d["usage"]["contacts"]["used"], 2, "{d}");
    assert_eq!(d["usage"]["companies"]["used"], 1, "{d}");
    assert_eq!(d["usage"]["deals"]["used"], 0, "{d}");
    assert_eq!(d["usage"]["members"]["used"], 2, "{d}");
    assert!(d["usage"]["contacts"]["cap"].as_i64().unwrap() > 2, "{d}");
    // The workspaces cap is the user's (GET /whoami), not the workspace's.
    assert!(d["usage"].get("workspaces").is_none(), "{d}");
    // The same workspace as the admin sees it, as text.
    let t = s.get(&format!("/workspaces/{ws}"), &a).await;
    assert_eq!(t.status, 200, "{}", t.text);
    let first = t.text.lines().next().unwrap_or("");
    assert!(first.starts_with(&format!("workspace/{ws} ")), "{}", t.text);
    assert_eq!(field(first, "role").as_deref(), Some("admin"), "{}", t.text);
    assert!(t.text.contains("\n# contacts: 2 / "), "{}", t.text);
    // M's own personal workspace, read with the token for A's.
    let personal = s.ws_of(&m_personal).await;
    let p = s
        .get(&format!("/workspaces/{personal}?format=json"), &m)
        .await;
    assert_eq!(p.status, 200, "{}", p.text);
    let d = &p.json()["data"];
    assert_eq!(
        (
            d["role"].as_str(),
            d["current"].as_bool(),
            d["personal"].as_bool()
        ),
        (Some("admin"), Some(false), Some(true)),
        "{d}"
    );
    assert_eq!(d["usage"]["contacts"]["used"], 0, "{d}");
    // Someone else's workspace is a workspace that does not exist.
    let b = s.login("outsider@example.com").await;
    s.get(&format!("/workspaces/{ws}"), &b)
        .await
        .assert_error(404, "not_found");
    s.get("/workspaces/w_nosuchplace", &b)
        .await
        .assert_error(404, "not_found");
}

/// Mail that a signed-in account can cause is limited like sign-in codes:
/// fresh step-up codes (each one a mail and five more tries) and invites to
/// one address, 5 per window; the rest are 429 rate_limited and mail
/// nothing. A resent invite without a role keeps the one it has.
#[tokio::test]
async fn step_up_codes_and_invites_are_rate_limited() {
    let s = Server::start().await;
    let (a, m, _, ws) = team(&s).await;
    let m_id = user_of(&s, &m).await;
    let before = s.smtp().mails_to("admin@example.com").len();
    let promote = format!("/workspaces/{ws}/members/{m_id}/role");
    for _ in 0..5 {
        s.post(&promote, Some(&a), r#"{"role":"admin"}"#)
            .await
            .assert_error(403, "escalation_required");
    }
    let r = s.post(&promote, Some(&a), r#"{"role":"admin"}"#).await;
    r.assert_error(429, "rate_limited");
    assert!(r.headers.get("retry-after").is_some(), "{}", r.text);
    assert_eq!(s.smtp().mails_to("admin@example.com").len(), before + 5);
    // The code last mailed still works.
    let code = s.nth_code("admin@example.com", before + 5).await;
    let r = s
        .post(
            &format!("{promote}?code={code}"),
            Some(&a),
            r#"{"role":"admin"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Invites to one address: 5 mails, then 429.
    let invite = format!("/workspaces/{ws}/invites");
    for _ in 0..5 {
        let r = s
            .post(&invite, Some(&a), r#"{"email":"target@example.org"}"#)
            .await;
        assert!(r.status == 201 || r.status == 200, "{}", r.text);
    }
    s.post(&invite, Some(&a), r#"{"email":"target@example.org"}"#)
        .await
        .assert_error(429, "rate_limited");
    assert_eq!(s.smtp().mails_to("target@example.org").len(), 5);
}

/// A pending admin invite resent without a role stays an admin's (it asks
/// for the step-up code again); only an explicit role changes it.
#[tokio::test]
async fn a_resent_invite_keeps_its_role() {
    let s = Server::start().await;
    let (a, _, _, ws) = team(&s).await;
    let invite = format!("/workspaces/{ws}/invites");
    let as_admin = r#"{"email":"boss2@example.com","role":"admin"}"#;
    let before = s.smtp().mails_to("admin@example.com").len();
    s.post(&invite, Some(&a), as_admin)
        .await
        .assert_error(403, "escalation_required");
    let code = step_up_code(&s, "admin@example.com", before).await;
    let r = s
        .post(&format!("{invite}?code={code}"), Some(&a), as_admin)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let role_of_invite = || async {
        let members = s.get(&format!("/workspaces/{ws}/members"), &a).await;
        let line = members
            .text
            .lines()
            .find(|l| l.contains("boss2@example.com"))
            .unwrap_or_default()
            .to_string();
        field(&line, "role").unwrap_or_default()
    };
    assert_eq!(role_of_invite().await, "admin");
    s.post(&invite, Some(&a), r#"{"email":"boss2@example.com"}"#)
        .await
        .assert_error(403, "escalation_required");
    assert_eq!(role_of_invite().await, "admin");
    let r = s
        .post(
            &invite,
            Some(&a),
            r#"{"email":"boss2@example.com","role":"member"}"#,
        )
        .await;
    assert!(r.status == 200 || r.status == 201, "{}", r.text);
    assert_eq!(role_of_invite().await, "member");
}

/// Invites that wait for a step-up code mail nothing to the invited
/// address, so they do not count against its invite limit.
#[tokio::test]
async fn invites_count_only_when_mailed() {
    let s = Server::start().await;
    let (a, _, _, ws) = team(&s).await;
    let invite = format!("/workspaces/{ws}/invites");
    for _ in 0..4 {
        s.post(
            &invite,
            Some(&a),
            r#"{"email":"waits@x.example","role":"admin"}"#,
        )
        .await
        .assert_error(403, "escalation_required");
    }
    assert_eq!(s.smtp().mails_to("waits@x.example").len(), 0);
    for _ in 0..5 {
        let r = s
            .post(
                &invite,
                Some(&a),
                r#"{"email":" waits@x.example ","role":"member"}"#,
            )
            .await;
        assert!(r.status == 200 || r.status == 201, "{}", r.text);
    }
    assert_eq!(s.smtp().mails_to("waits@x.example").len(), 5);
}
