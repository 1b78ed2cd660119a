//! Contacts, companies, deals, activities, reminders and audit (SPEC §5;
//! SECURITY R01–R04, R09, R22, R24–R27, R29).

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::harness::{Resp, Server, field};

/// Creates a record and returns its bare id.
pub async fn create(s: &Server, t: &str, kind: &str, body: Value) -> String {
    let r = s
        .post(&format!("/{kind}?format=json"), Some(t), &body.to_string())
        .await;
    assert!(
        r.status == 201 || r.status == 200,
        "{kind} {body}: {}",
        r.text
    );
    r.json()["data"]["id"].as_str().unwrap().to_string()
}

fn first_line(r: &Resp) -> &str {
    r.text.lines().next().unwrap_or("")
}

#[tokio::test]
async fn a_whole_pipeline_from_the_manual() {
    let s = Server::start().await;
    let t = s.login("pipe@example.com").await;
    let co = create(
        &s,
        &t,
        "companies",
        json!({"name": "Acme", "domain": "https://www.ACME.com/about"}),
    )
    .await;
    let r = s.get(&format!("/companies/{co}"), &t).await;
    assert_eq!(field(first_line(&r), "domain").as_deref(), Some("acme.com"));

    let c = s
        .post("/contacts", Some(&t), &json!({"name": "Jane Doe", "email": "Jane@Acme.com", "company_id": format!("company/{co}"), "stage": "lead", "tags": ["vip", "renewal"], "custom": {"tier": "gold", "seats": 12}}).to_string())
        .await;
    assert_eq!(c.status, 201, "{}", c.text);
    assert!(c.text.contains("\n# created\n"));
    let line = first_line(&c).to_string();
    assert!(line.starts_with("contact/c_"), "{line}");
    assert_eq!(field(&line, "name").as_deref(), Some("Jane Doe"));
    assert_eq!(field(&line, "company"), Some(format!("company/{co}")));
    assert_eq!(field(&line, "tags").as_deref(), Some("vip,renewal"));
    assert_eq!(field(&line, "custom.tier").as_deref(), Some("gold"));
    assert_eq!(field(&line, "custom.seats").as_deref(), Some("12"));
    let cid = line
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches("contact/")
        .to_string();

    // Upsert by email, case-insensitively: merges, keeps what was not sent.
    let u = s.post("/contacts", Some(&t), &json!({"email": " jane@acme.com ", "title": "CTO", "custom": {"seats": null, "region": "EU"}}).to_string()).await;
    assert_eq!(u.status, 200, "{}", u.text);
    assert!(u.text.contains("\n# updated\n"));
    let line = first_line(&u);
    assert!(line.starts_with(&format!("contact/{cid} ")), "{line}");
    assert_eq!(field(line, "name").as_deref(), Some("Jane Doe"));
    assert_eq!(field(line, "title").as_deref(), Some("CTO"));
    assert_eq!(field(line, "custom.seats"), None);
    assert_eq!(field(line, "custom.region").as_deref(), Some("EU"));
    assert_eq!(field(line, "custom.tier").as_deref(), Some("gold"));

    let d = s
        .post("/deals", Some(&t), &json!({"title": "Acme renewal", "amount_cents": 129900, "currency": "USD", "contact_id": cid, "company_id": co, "stage": "proposal"}).to_string())
        .await;
    assert_eq!(d.status, 201, "{}", d.text);
    let dl = first_line(&d);
    assert_eq!(field(dl, "amount").as_deref(), Some("1299.00 USD"));
    assert_eq!(field(dl, "amount_cents").as_deref(), Some("129900"));
    assert_eq!(field(dl, "status").as_deref(), Some("open"), "{dl}");
    let did = dl
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches("deal/")
        .to_string();

    let a = s
        .post(
            &format!("/contacts/{cid}/activities"),
            Some(&t),
            &json!({"kind": "call", "body": "Discussed renewal\nNext: send quote", "deal_id": did})
                .to_string(),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(field(first_line(&a), "agent").as_deref(), Some("test"));
    assert_eq!(
        field(first_line(&a), "body").as_deref(),
        Some("Discussed renewal\nNext: send quote")
    );

    let p = s
        .patch(
            &format!("/deals/{did}"),
            &t,
            &json!({"status": "won", "stage": null}).to_string(),
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.text);
    assert_eq!(field(first_line(&p), "status").as_deref(), Some("won"));
    assert_eq!(field(first_line(&p), "stage"), None);

    let found = s.get("/contacts?search=acme", &t).await;
    assert!(
        found.text.contains(&format!("contact/{cid} ")),
        "{}",
        found.text
    );
    let acts = s.get(&format!("/activities?deal={did}"), &t).await;
    assert_eq!(
        acts.text
            .lines()
            .filter(|l| l.starts_with("activity/"))
            .count(),
        1
    );

    let audit = s.get("/audit", &t).await;
    for action in [
        "company.create",
        "contact.create",
        "contact.upsert",
        "deal.create",
        "deal.update",
        "activity.create",
    ] {
        assert!(
            audit.text.contains(&format!("action={action} ")),
            "audit lacks {action}: {}",
            audit.text
        );
    }
    let upd = audit
        .text
        .lines()
        .find(|l| l.contains("action=deal.update"))
        .unwrap();
    let changes: Value = serde_json::from_str(&field(upd, "changes").unwrap()).unwrap();
    assert_eq!(changes["status"], json!(["open", "won"]));
    assert_eq!(changes["stage"], json!(["proposal", null]));
    assert_eq!(field(upd, "agent").as_deref(), Some("test"));
}

#[tokio::test]
async fn json_records_carry_handle_id_and_every_field() {
    let s = Server::start().await;
    let t = s.login("json@example.com").await;
    let r = s
        .post(
            "/deals?format=json",
            Some(&t),
            r#"{"title":"Big","amount_cents":5,"currency":"EUR"}"#,
        )
        .await;
    let v = r.json();
    assert_eq!(v["result"], "created");
    let d = &v["data"];
    assert!(d["handle"].as_str().unwrap().starts_with("deal/d_"));
    assert_eq!(d["amount"], "0.05 EUR");
    for key in [
        "title",
        "amount_cents",
        "currency",
        "stage",
        "status",
        "contact_id",
        "company_id",
        "tags",
        "custom",
        "follow_up_at",
        "follow_up_note",
        "created_at",
        "updated_at",
    ] {
        assert!(d.get(key).is_some(), "missing {key}: {d}");
    }
    let list = s.get("/deals?format=json", &t).await.json();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(list["next_cursor"].is_null());
}

#[tokio::test]
async fn parallel_upserts_of_one_email_make_one_contact_r29() {
    let s = Server::start().await;
    let t = s.login("r29@example.com").await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (http, url, t) = (s.http.clone(), s.url("/contacts"), t.clone());
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(t)
                .body(format!(r#"{{"email":"same@acme.com","title":"t{i}"}}"#))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }));
    }
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            201 => created += 1,
            200 => {}
            other => panic!("status {other}"),
        }
    }
    assert_eq!(created, 1);
    let list = s.get("/contacts?email=same@acme.com", &t).await;
    assert_eq!(
        list.text
            .lines()
            .filter(|l| l.starts_with("contact/"))
            .count(),
        1,
        "{}",
        list.text
    );
}

#[tokio::test]
async fn patch_to_a_taken_email_or_domain_is_a_conflict_naming_the_owner() {
    let s = Server::start().await;
    let t = s.login("conflict@example.com").await;
    let a = create(&s, &t, "contacts", json!({"email": "a@x.com"})).await;
    let b = create(&s, &t, "contacts", json!({"email": "b@x.com"})).await;
    let r = s
        .patch(&format!("/contacts/{b}"), &t, r#"{"email":"A@X.com"}"#)
        .await;
    r.assert_error(409, "conflict");
    assert!(r.text.contains(&format!("contact/{a}")), "{}", r.text);
    let c1 = create(&s, &t, "companies", json!({"domain": "one.com"})).await;
    let c2 = create(&s, &t, "companies", json!({"domain": "two.com"})).await;
    let r = s
        .patch(
            &format!("/companies/{c2}"),
            &t,
            r#"{"domain":"https://ONE.com"}"#,
        )
        .await;
    r.assert_error(409, "conflict");
    assert!(r.text.contains(&format!("company/{c1}")));
    // Changing to a free email works; clearing works.
    assert_eq!(
        s.patch(&format!("/contacts/{b}"), &t, r#"{"email":"c@x.com"}"#)
            .await
            .status,
        200
    );
    let r = s
        .patch(&format!("/contacts/{b}"), &t, r#"{"email":null}"#)
        .await;
    assert_eq!(field(first_line(&r), "email"), None);
}

#[tokio::test]
async fn delete_takes_two_steps_and_clears_links_r22() {
    let s = Server::start().await;
    let t = s.login("r22@example.com").await;
    let b = s.login("r22b@example.com").await;
    // M: a member of A's workspace, working there with a token of its own.
    let (_, m, _) = s.join_as_member(&t, "r22m@example.com", "m").await;
    let c = create(&s, &t, "contacts", json!({"name": "X"})).await;
    let y = create(&s, &t, "contacts", json!({"name": "Y"})).await;
    let co = create(&s, &t, "companies", json!({"name": "Co"})).await;
    let d1 = create(&s, &t, "deals", json!({"title": "D1", "contact_id": c})).await;
    create(&s, &t, "deals", json!({"title": "D2", "contact_id": c})).await;
    s.post(
        &format!("/contacts/{c}/activities"),
        Some(&t),
        r#"{"kind":"note"}"#,
    )
    .await;

    let first = s.delete(&format!("/contacts/{c}?format=json"), &t).await;
    assert_eq!(first.status, 409);
    let j = first.json();
    assert_eq!(j["error"], "confirmation_required");
    assert!(
        j["message"]
            .as_str()
            .unwrap()
            .contains("2 deals and 1 activities link to it"),
        "{j}"
    );
    let token = j["confirm"].as_str().unwrap().to_string();

    // Not on another record, not on a company, not injected.
    for path in [
        format!("/contacts/{y}?confirm={token}"),
        format!("/companies/{co}?confirm={token}"),
        format!("/contacts/{c}?confirm=%27%20OR%201%3D1%20--"),
    ] {
        let r = s.delete(&path, &t).await;
        r.assert_error(409, "confirmation_required");
    }
    // Not given twice (which one would count?), and the record stays.
    s.delete(
        &format!("/contacts/{c}?confirm={token}&confirm={token}"),
        &t,
    )
    .await
    .assert_error(400, "invalid_request");
    assert_eq!(s.get(&format!("/contacts/{c}"), &t).await.status, 200);
    // Not by M, who sees X in the same workspace but did not ask for the token.
    assert_eq!(s.get(&format!("/contacts/{c}"), &m).await.status, 200);
    let r = s
        .delete(&format!("/contacts/{c}?confirm={token}"), &m)
        .await;
    r.assert_error(409, "confirmation_required");
    assert_eq!(s.get(&format!("/contacts/{c}"), &t).await.status, 200);
    // Not by B, for whom X does not exist.
    let r = s
        .delete(&format!("/contacts/{c}?confirm={token}"), &b)
        .await;
    r.assert_error(404, "not_found");
    assert_eq!(s.get(&format!("/contacts/{c}"), &t).await.status, 200);
    assert_eq!(s.get(&format!("/contacts/{y}"), &t).await.status, 200);
    assert_eq!(s.get(&format!("/companies/{co}"), &t).await.status, 200);

    // Twice in parallel: exactly one deletes.
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (http, url, t) = (
            s.http.clone(),
            s.url(&format!("/contacts/{c}?confirm={token}")),
            t.clone(),
        );
        tasks.push(tokio::spawn(async move {
            http.delete(url)
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut codes = Vec::new();
    for task in tasks {
        codes.push(task.await.unwrap());
    }
    codes.sort();
    assert_eq!(codes[0], 200, "{codes:?}");
    assert_ne!(codes[1], 200, "{codes:?}");
    s.get(&format!("/contacts/{c}"), &t)
        .await
        .assert_error(404, "not_found");
    let deal = s.get(&format!("/deals/{d1}"), &t).await;
    assert_eq!(deal.status, 200);
    assert_eq!(
        field(first_line(&deal), "contact"),
        None,
        "link not cleared: {}",
        deal.text
    );
    let audit = s.get("/audit", &t).await;
    assert!(
        audit
            .text
            .contains(&format!("action=contact.delete target=contact/{c}")),
        "{}",
        audit.text
    );
}

#[tokio::test]
async fn reminders_show_due_follow_ups_soonest_first() {
    let s = Server::start().await;
    let t = s.login("remind@example.com").await;
    let now = time::OffsetDateTime::now_utc();
    let fmt = |d: time::Duration| {
        (now + d)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let late = create(&s, &t, "contacts", json!({"name": "Late", "follow_up_at": fmt(time::Duration::days(-2)), "follow_up_note": "call back"})).await;
    let soon = create(
        &s,
        &t,
        "deals",
        json!({"title": "Soon", "follow_up_at": fmt(time::Duration::days(3))}),
    )
    .await;
    let far = create(
        &s,
        &t,
        "contacts",
        json!({"name": "Far", "follow_up_at": fmt(time::Duration::days(30))}),
    )
    .await;
    let due = s.get("/reminders", &t).await;
    let lines: Vec<&str> = due.text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 1, "{}", due.text);
    assert!(
        lines[0].starts_with(&format!("contact/{late} due=overdue")),
        "{}",
        lines[0]
    );
    let week = s.get("/reminders?days=7", &t).await;
    let lines: Vec<&str> = week.text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[1].starts_with(&format!("deal/{soon} due=upcoming")));
    // The record's own fields follow: a deal says whether it is still open.
    assert!(
        lines[1].contains("status=open") && lines[1].contains("title=Soon"),
        "{}",
        lines[1]
    );
    assert!(!week.text.contains(&far));
    assert!(!week.text.contains("more are due"), "{}", week.text);
    // A limit that leaves some out gives a cursor: the next page has the
    // rest, in the same order, contacts and deals together.
    let cut = s.get("/reminders?days=7&limit=1", &t).await;
    let lines: Vec<&str> = cut.text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 1, "{}", cut.text);
    assert!(
        lines[0].starts_with(&format!("contact/{late} ")),
        "{}",
        cut.text
    );
    let cursor = cut.next_cursor().expect("a next page");
    let rest = s
        .get(&format!("/reminders?days=7&limit=1&cursor={cursor}"), &t)
        .await;
    let lines: Vec<&str> = rest.text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 1, "{}", rest.text);
    assert!(
        lines[0].starts_with(&format!("deal/{soon} due=upcoming")),
        "{}",
        rest.text
    );
    assert!(rest.next_cursor().is_none(), "{}", rest.text);
    // The cursor is bound to days=.
    s.get(&format!("/reminders?days=8&limit=1&cursor={cursor}"), &t)
        .await
        .assert_error(400, "invalid_request");
    let cut = s
        .get("/reminders?days=7&limit=1&format=json", &t)
        .await
        .json();
    assert!(cut["next_cursor"].as_str().is_some(), "{cut}");
    let all = s.get("/reminders?days=7&format=json", &t).await.json();
    assert!(all.get("note").is_none(), "{all}");
    s.patch(&format!("/contacts/{late}"), &t, r#"{"follow_up_at":null}"#)
        .await;
    assert!(
        s.get("/reminders", &t)
            .await
            .text
            .contains("# 0 reminders match")
    );
    // Clearing the reminder took its note with it; a note sent with the
    // clear stays.
    let v = s
        .get(&format!("/contacts/{late}?format=json"), &t)
        .await
        .json();
    assert_eq!(v["data"]["follow_up_note"], Value::Null, "{v}");
    let r = s
        .patch(
            &format!("/deals/{soon}?format=json"),
            &t,
            r#"{"follow_up_at":null,"follow_up_note":"keep this"}"#,
        )
        .await;
    assert_eq!(
        r.json()["data"]["follow_up_note"],
        "keep this",
        "{}",
        r.text
    );
    s.get("/reminders?days=-1", &t)
        .await
        .assert_error(400, "invalid_request");
    s.get("/reminders?days=abc", &t)
        .await
        .assert_error(400, "invalid_request");
}

#[tokio::test]
async fn bad_record_input_gets_a_4xx_with_a_hint() {
    let s = Server::start().await;
    let t = s.login("badrec@example.com").await;
    let other = s.login("badrec-other@example.com").await;
    let foreign_co = create(&s, &other, "companies", json!({"name": "Theirs"})).await;
    let deal = create(&s, &t, "deals", json!({"title": "Mine"})).await;
    let deep = (0..10).fold(json!(1), |acc, _| json!({"k": acc}));
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "deals",
            json!({"title": "x", "amount_cents": 1.5, "currency": "USD"}),
            400,
            "invalid_request",
        ),
        (
            "deals",
            json!({"title": "x", "amount_cents": "100", "currency": "USD"}),
            400,
            "invalid_request",
        ),
        (
            "deals",
            json!({"title": "x", "amount_cents": -5, "currency": "USD"}),
            400,
            "invalid_request",
        ),
        (
            "deals",
            json!({"title": "x", "amount_cents": 10_000_000_000_000_000i64, "currency": "USD"}),
            400,
            "invalid_request",
        ),
        (
            "deals",
            json!({"title": "x", "amount_cents": 100}),
            400,
            "invalid_request",
        ),
        (
            "deals",
            json!({"title": "x", "amount_cents": 100, "currency": "usd"}),
            400,
            "invalid_request",
        ),
        (
            "deals",
            json!({"title": "x", "amount_cents": 100, "currency": "DOLLARS"}),
            400,
            "invalid_request",
        ),
        (
            "deals",
            json!({"title": "x", "status": "maybe"}),
            400,
            "invalid_request",
        ),
        (
            "deals",
            json!({"amount_cents": 100, "currency": "USD"}),
            400,
            "invalid_request",
        ),
        (
            "contacts",
            json!({"company_id": format!("deal/{deal}")}),
            400,
            "invalid_request",
        ),
        (
            "contacts",
            json!({"company_id": foreign_co}),
            404,
            "not_found",
        ),
        (
            "contacts",
            json!({"company_id": "co_000000000000"}),
            404,
            "not_found",
        ),
        (
            "contacts",
            json!({"custom": "not an object"}),
            400,
            "invalid_request",
        ),
        ("contacts", json!({"custom": deep}), 400, "invalid_request"),
        (
            "contacts",
            json!({"custom": {"big": "x".repeat(70_000)}}),
            400,
            "invalid_request",
        ),
        ("contacts", json!({"tags": [1, 2]}), 400, "invalid_request"),
        ("contacts", json!({"tags": "vip"}), 400, "invalid_request"),
        (
            "contacts",
            json!({"tags": (0..51).map(|i| format!("t{i}")).collect::<Vec<_>>()}),
            400,
            "invalid_request",
        ),
        (
            "contacts",
            json!({"tags": ["x".repeat(101)]}),
            400,
            "invalid_request",
        ),
        (
            "contacts",
            json!({"name": "x".repeat(501)}),
            400,
            "invalid_request",
        ),
        (
            "contacts",
            json!({"name": "two\nlines"}),
            400,
            "invalid_request",
        ),
        (
            "contacts",
            json!({"email": "not-an-email"}),
            400,
            "invalid_request",
        ),
        (
            "contacts",
            json!({"follow_up_at": "tomorrow"}),
            400,
            "invalid_request",
        ),
        (
            "contacts",
            json!({"id": "c_000000000000"}),
            400,
            "unknown_field",
        ),
        (
            "contacts",
            json!({"workspace_id": "w_x"}),
            400,
            "unknown_field",
        ),
        (
            "contacts",
            json!({"created_at": "2020-01-01T00:00:00Z"}),
            400,
            "unknown_field",
        ),
        (
            "contacts",
            json!({"handle": "contact/c_x"}),
            400,
            "unknown_field",
        ),
        (
            "companies",
            json!({"domain": "not a domain"}),
            400,
            "invalid_request",
        ),
    ];
    for (kind, body, status, code) in cases {
        let r = s
            .post(&format!("/{kind}"), Some(&t), &body.to_string())
            .await;
        assert_eq!(
            r.status,
            status,
            "{kind} {:.80}: {}",
            body.to_string(),
            r.text
        );
        assert_eq!(
            r.error_code(),
            code,
            "{kind} {:.80}: {}",
            body.to_string(),
            r.text
        );
        assert!(r.text.contains("\nhint: "));
    }
    let r = s
        .post("/contacts", Some(&t), r#"{"name":"a","name":"b"}"#)
        .await;
    r.assert_error(400, "invalid_request");
    let c = create(&s, &t, "contacts", json!({"name": "ok"})).await;
    let r = s
        .post(
            &format!("/contacts/{c}/activities"),
            Some(&t),
            r#"{"kind":"fax"}"#,
        )
        .await;
    r.assert_error(400, "invalid_request");
    let r = s
        .post(
            &format!("/contacts/{c}/activities"),
            Some(&t),
            r#"{"body":"no kind"}"#,
        )
        .await;
    r.assert_error(400, "invalid_request");
    // Nothing was created by the refused requests.
    let list = s.get("/contacts", &t).await;
    assert_eq!(
        list.text
            .lines()
            .filter(|l| l.starts_with("contact/"))
            .count(),
        1,
        "{}",
        list.text
    );
}

#[tokio::test]
async fn mass_assignment_never_takes_effect_r09() {
    let s = Server::start().await;
    let t = s.login("r09@example.com").await;
    let c = create(&s, &t, "contacts", json!({"name": "Keep"})).await;
    for body in [
        json!({"id": "c_000000000000"}),
        json!({"author": "u_x"}),
        json!({"updated_at": "2000-01-01T00:00:00Z"}),
    ] {
        let r = s
            .patch(&format!("/contacts/{c}"), &t, &body.to_string())
            .await;
        r.assert_error(400, "unknown_field");
    }
    let r = s
        .post(
            &format!("/contacts/{c}/activities"),
            Some(&t),
            r#"{"kind":"note","author":"u_x"}"#,
        )
        .await;
    r.assert_error(400, "unknown_field");
    let got = s.get(&format!("/contacts/{c}"), &t).await;
    assert!(!got.text.contains("2000-01-01"));
}

#[tokio::test]
async fn user_text_never_forges_lines_r27() {
    let s = Server::start().await;
    let t = s.login("r27r@example.com").await;
    let evil = "x\ncontact/c_fake00000000 name=evil\r\n# next: abc";
    create(
        &s,
        &t,
        "contacts",
        json!({"name": "ok", "custom": {"note": evil, "k k=\"x": 1}, "follow_up_note": evil}),
    )
    .await;
    let r = s
        .post(
            "/contacts",
            Some(&t),
            &json!({"custom": {"k\nk": 1}}).to_string(),
        )
        .await;
    r.assert_error(400, "invalid_request");
    create(
        &s,
        &t,
        "deals",
        json!({"title": "contact/c_fake00000000 # next: x"}),
    )
    .await;
    for path in ["/contacts", "/deals", "/audit", "/reminders?days=3650"] {
        let r = s.get(path, &t).await;
        for line in r.text.lines() {
            assert!(
                !line.starts_with("contact/c_fake"),
                "{path}: forged record line {line}"
            );
            assert!(
                !line.starts_with("# next: abc") && !line.starts_with("# next: x"),
                "{path}: forged trailer"
            );
        }
    }
    let r = s.get("/contacts", &t).await;
    let line = r.text.lines().next().unwrap();
    assert_eq!(field(line, "custom.note").as_deref(), Some(evil));
    assert_eq!(field(line, "follow_up_note").as_deref(), Some(evil));
}

#[tokio::test]
async fn counts_and_empty_trailers() {
    let s = Server::start().await;
    let t = s.login("trail@example.com").await;
    assert!(
        s.get("/contacts", &t)
            .await
            .text
            .contains("# 0 contacts match\n")
    );
    for i in 0..3 {
        create(&s, &t, "contacts", json!({"name": format!("n{i}")})).await;
    }
    let r = s.get("/contacts?limit=2", &t).await;
    assert!(r.text.contains("\n# 2 contacts\n# next: "), "{}", r.text);
    let ids: HashSet<&str> = r
        .text
        .lines()
        .filter(|l| l.starts_with("contact/"))
        .collect();
    assert_eq!(ids.len(), 2);
}

/// Paths take the whole handle as well as the bare id (SPEC §2), written
/// with its slash as it is printed; a handle of the wrong kind is a 400.
#[tokio::test]
async fn paths_take_whole_handles() {
    let s = Server::start().await;
    let t = s.login("handles@example.com").await;
    let c = create(&s, &t, "contacts", json!({"name": "Whole"})).await;
    let d = create(&s, &t, "deals", json!({"title": "Big"})).await;
    let r = s.get(&format!("/contacts/contact/{c}"), &t).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.starts_with(&format!("contact/{c} ")), "{}", r.text);
    let r = s
        .patch(
            &format!("/contacts/contact/{c}?format=json"),
            &t,
            r#"{"stage":"lead"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["data"]["stage"], "lead");
    let r = s
        .post(
            &format!("/contacts/contact/{c}/activities"),
            Some(&t),
            r#"{"kind":"note","body":"via handle"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s
        .get(&format!("/contacts/contact/{c}/activities"), &t)
        .await;
    assert!(r.text.contains("via handle"), "{}", r.text);
    // A singular kind first is no route, shown as sent, with the fix.
    let r = s.get(&format!("/contact/{c}"), &t).await;
    r.assert_error(404, "not_found");
    assert!(
        r.text.contains(&format!("no route GET /contact/{c}")),
        "{}",
        r.text
    );
    assert!(
        r.text.contains(&format!("did you mean /contacts/{c}?")),
        "{}",
        r.text
    );
    // The query string survives the handle.
    let r = s
        .get(&format!("/contacts/contact/{c}?format=json"), &t)
        .await;
    assert_eq!(r.json()["data"]["id"], c.as_str());
    // A deal's handle where a contact's belongs: 400 naming the kind.
    let r = s.get(&format!("/contacts/deal/{d}"), &t).await;
    r.assert_error(400, "invalid_request");
    assert!(r.text.contains("got a deal handle"), "{}", r.text);
    // Workspace paths too.
    let ws = format!("workspace/{}", s.ws_of(&t).await);
    let r = s.get(&format!("/workspaces/{ws}/members"), &t).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("role=admin"), "{}", r.text);
    // Delete takes two steps, by handle as by id.
    let r = s
        .delete(&format!("/contacts/contact/{c}?format=json"), &t)
        .await;
    let confirm = r.json()["confirm"].as_str().unwrap().to_string();
    let r = s
        .delete(&format!("/contacts/contact/{c}?confirm={confirm}"), &t)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(s.get(&format!("/contacts/{c}"), &t).await.status, 404);
}

/// An activity's audit entry carries what was logged, not only its links.
#[tokio::test]
async fn an_activity_is_audited_with_its_body_and_time() {
    let s = Server::start().await;
    let t = s.login("logged@example.com").await;
    let c = create(&s, &t, "contacts", json!({"name": "Logged"})).await;
    let r = s
        .post(
            &format!("/contacts/{c}/activities?format=json"),
            Some(&t),
            r#"{"kind":"call","body":"discussed renewal","occurred_at":"2026-06-10T09:00:00Z"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let audit = s.get("/audit?format=json", &t).await.json();
    let entry = &audit["data"][0];
    assert_eq!(entry["action"], "activity.create", "{audit}");
    let changes = &entry["changes"];
    assert_eq!(
        changes["body"],
        json!([null, "discussed renewal"]),
        "{entry}"
    );
    assert_eq!(
        changes["occurred_at"],
        json!([null, "2026-06-10T09:00:00Z"]),
        "{entry}"
    );
    assert_eq!(changes["contact_id"], json!([null, c]), "{entry}");
    // No deal: no `deal_id: [null, null]` that would read as a change.
    assert!(changes.get("deal_id").is_none(), "{entry}");
}

/// Walks every page of `path` three items at a time, following `# next:`
/// (text) or `next_cursor` (JSON), and returns the handles in the order seen.
/// Every page but the last is full and ends with its cursor; the last has none.
async fn walk_by_threes(s: &Server, t: &str, path: &str, as_json: bool) -> Vec<String> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..50 {
        let mut url = format!("{path}{sep}limit=3");
        if as_json {
            url.push_str("&format=json");
        }
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = s.get(&url, t).await;
        assert_eq!(r.status, 200, "{url}: {}", r.text);
        let (items, next) = if as_json {
            let v = r.json();
            assert!(
                v.as_object().unwrap().contains_key("next_cursor"),
                "{url}: no next_cursor: {v}"
            );
            let items: Vec<String> = v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["handle"].as_str().unwrap().to_string())
                .collect();
            (items, v["next_cursor"].as_str().map(str::to_string))
        } else {
            let items: Vec<String> = r
                .text
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| l.split_whitespace().next().unwrap().to_string())
                .collect();
            let next = r.next_cursor();
            if next.is_some() {
                assert!(
                    r.text.lines().last().unwrap().starts_with("# next: "),
                    "{url}: the page does not end with its cursor: {}",
                    r.text
                );
            }
            (items, next)
        };
        match next {
            Some(c) => {
                assert_eq!(items.len(), 3, "{url}: a short page with a cursor");
                seen.extend(items);
                cursor = Some(c);
            }
            None => {
                assert!(items.len() <= 3, "{url}: {items:?}");
                seen.extend(items);
                return seen;
            }
        }
    }
    panic!("{path}: the walk never ended");
}

/// GET /audit, /activities and /contacts/{id}/activities page by cursor,
/// newest first, each item exactly once (SPEC §5, §6).
#[tokio::test]
async fn audit_and_activities_page_by_cursor_newest_first() {
    let s = Server::start().await;
    let t = s.login("pages@example.com").await;
    let a = create(&s, &t, "contacts", json!({"name": "Paged A"})).await;
    let b = create(&s, &t, "contacts", json!({"name": "Paged B"})).await;
    let mut more = Vec::new();
    for i in 0..5 {
        more.push(create(&s, &t, "contacts", json!({"name": format!("Paged {i}")})).await);
    }
    // Seven activities on A and two on B, each later than the one before.
    let mut all_acts = Vec::new();
    let mut a_acts = Vec::new();
    for i in 0..9 {
        let on = if i == 2 || i == 6 { &b } else { &a };
        let r = s
            .post(
                &format!("/contacts/{on}/activities?format=json"),
                Some(&t),
                &json!({"kind": "note", "body": format!("step {i}"), "occurred_at": format!("2026-03-0{}T10:00:00Z", i + 1)})
                    .to_string(),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let h = r.json()["data"]["handle"].as_str().unwrap().to_string();
        if on == &a {
            a_acts.push(h.clone());
        }
        all_acts.push(h);
    }
    assert_eq!(a_acts.len(), 7);
    all_acts.reverse();
    a_acts.reverse();
    for as_json in [false, true] {
        assert_eq!(
            walk_by_threes(&s, &t, "/activities", as_json).await,
            all_acts,
            "/activities (json: {as_json})"
        );
        assert_eq!(
            walk_by_threes(&s, &t, &format!("/contacts/{a}/activities"), as_json).await,
            a_acts,
            "/contacts/{{id}}/activities (json: {as_json})"
        );
        assert_eq!(
            walk_by_threes(&s, &t, &format!("/activities?contact={a}"), as_json).await,
            a_acts,
            "/activities?contact= (json: {as_json})"
        );
    }

    // The audit log: the walk matches one big page, and the contacts come
    // newest first.
    let full = s.get("/audit?limit=200&format=json", &t).await.json();
    assert!(full["next_cursor"].is_null(), "{full}");
    let entries = full["data"].as_array().unwrap();
    assert!(entries.len() >= 16, "{full}");
    let handles: Vec<String> = entries
        .iter()
        .map(|e| e["handle"].as_str().unwrap().to_string())
        .collect();
    let distinct: HashSet<&String> = handles.iter().collect();
    assert_eq!(distinct.len(), handles.len(), "an audit entry came twice");
    let created: Vec<String> = entries
        .iter()
        .filter(|e| e["action"] == "contact.create")
        .map(|e| e["target"].as_str().unwrap().to_string())
        .collect();
    let mut want: Vec<String> = [a.clone(), b.clone()]
        .into_iter()
        .chain(more)
        .map(|id| format!("contact/{id}"))
        .collect();
    want.reverse();
    assert_eq!(created, want, "contact.create entries are not newest first");
    assert_eq!(
        entries[0]["action"], "activity.create",
        "the newest entry is not first: {full}"
    );
    for as_json in [false, true] {
        assert_eq!(
            walk_by_threes(&s, &t, "/audit", as_json).await,
            handles,
            "/audit (json: {as_json})"
        );
    }
}

/// Unknown names are all reported at once, each with what it was probably
/// meant to be, in bodies, filters and query parameters.
#[tokio::test]
async fn unknown_names_come_with_a_guess() {
    let s = Server::start().await;
    let t = s.login("typos@example.com").await;
    let r = s
        .post(
            "/contacts",
            Some(&t),
            r#"{"nmae":"Typo","emial":"t@example.com","company":"co_7k2m9q4x1d3f","zzz":1}"#,
        )
        .await;
    r.assert_error(400, "unknown_field");
    for name in ["nmae", "emial", "company", "zzz"] {
        assert!(r.text.contains(&format!("{name:?}")), "{name}: {}", r.text);
    }
    assert!(r.text.contains("hint: did you mean "), "{}", r.text);
    for guess in [
        r#""name" for "nmae""#,
        r#""email" for "emial""#,
        r#""company_id" for "company""#,
    ] {
        assert!(r.text.contains(guess), "{guess}: {}", r.text);
    }
    assert!(!r.text.contains(r#"for "zzz""#), "{}", r.text);
    // Nothing was created.
    let list = s.get("/contacts?format=json", &t).await.json();
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    let r = s.get("/contacts?company=co_7k2m9q4x1d3f", &t).await;
    r.assert_error(400, "unknown_field");
    assert!(
        r.text.contains(r#"did you mean "company_id"?"#),
        "{}",
        r.text
    );
    let r = s.get("/activities?contact_id=c_7k2m9q4x1d3f", &t).await;
    r.assert_error(400, "unknown_field");
    assert!(
        r.text
            .contains(r#"did you mean "contact" for "contact_id"?"#),
        "{}",
        r.text
    );
    let r = s
        .post("/deals", Some(&t), r#"{"title":"T","amount":1299}"#)
        .await;
    assert!(
        r.text.contains(r#""amount_cents" for "amount""#),
        "{}",
        r.text
    );
}

/// Deleting a record clears the links to it, and the records whose link was
/// cleared count as changed: their updated_at moves, so a sync by
/// `updated_at=gt:` sees them.
#[tokio::test]
async fn cleared_links_move_updated_at() {
    let s = Server::start().await;
    let t = s.login("sync@example.com").await;
    let co = create(&s, &t, "companies", json!({"name": "Gone Co"})).await;
    let c = create(
        &s,
        &t,
        "contacts",
        json!({"name": "Stays", "company_id": co}),
    )
    .await;
    let d = create(
        &s,
        &t,
        "deals",
        json!({"title": "Stays too", "company_id": co}),
    )
    .await;
    // The latest change before the delete: the deal, made last.
    let before = s.get(&format!("/deals/{d}?format=json"), &t).await.json()["data"]["updated_at"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let confirm = s
        .delete(&format!("/companies/{co}?format=json"), &t)
        .await
        .json()["confirm"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .delete(&format!("/companies/{co}?confirm={confirm}"), &t)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let after = s
        .get(&format!("/contacts/{c}?format=json"), &t)
        .await
        .json();
    assert!(after["data"]["company_id"].is_null(), "{after}");
    assert!(
        after["data"]["updated_at"].as_str().unwrap() > before.as_str(),
        "{after}"
    );
    for kind in ["contacts", "deals"] {
        let changed = s
            .get(&format!("/{kind}?updated_at=gt:{before}&format=json"), &t)
            .await
            .json();
        let ids: Vec<&str> = changed["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        let want = if kind == "contacts" { &c } else { &d };
        assert!(ids.contains(&want.as_str()), "{kind}: {changed}");
    }
}

/// Logs an activity on contact `c`.
async fn log_activity(s: &Server, t: &str, c: &str, body: Value) {
    let r = s
        .post(
            &format!("/contacts/{c}/activities"),
            Some(t),
            &body.to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

/// One field of each activity a JSON list at `path` answers with, in order.
async fn activity_fields(s: &Server, t: &str, path: String, field: &str) -> Vec<String> {
    let v = s.get(&path, t).await.json();
    v["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{path}: {v}"))
        .iter()
        .map(|a| a[field].as_str().unwrap().to_string())
        .collect()
}

/// Activities can be listed by when they happened: one bound or a range,
/// offsets honoured, with the cursor bound to the range; bad conditions are
/// 400s that name the parameter.
#[tokio::test]
async fn activities_filter_by_when_they_happened() {
    let s = Server::start().await;
    let t = s.login("when@example.com").await;
    let c = create(&s, &t, "contacts", json!({"name": "When"})).await;
    for day in 1..=6 {
        let at = format!("2026-06-0{day}T12:00:00Z");
        log_activity(
            &s,
            &t,
            &c,
            json!({"kind": "call", "body": format!("day {day}"), "occurred_at": at}),
        )
        .await;
    }
    let bodies = |path: String| activity_fields(&s, &t, path, "body");
    assert_eq!(
        bodies("/activities?occurred_at=gte:2026-06-05T00:00:00Z&format=json".into()).await,
        ["day 6", "day 5"]
    );
    // 14:00+02:00 is 12:00Z: gt excludes day 2 itself.
    assert_eq!(
        bodies(format!(
            "/contacts/{c}/activities?occurred_at=gt:2026-06-02T14:00:00%2B02:00&occurred_at=lt:2026-06-05T00:00:00Z&format=json"
        ))
        .await,
        ["day 4", "day 3"]
    );
    assert_eq!(
        bodies("/activities?occurred_at=2026-06-03T12:00:00Z&format=json".into()).await,
        ["day 3"]
    );
    // Paged through a range; the cursor does not serve another range.
    let range = "occurred_at=gte:2026-06-02T00:00:00Z&occurred_at=lt:2026-06-06T00:00:00Z";
    let r = s.get(&format!("/activities?{range}&limit=3"), &t).await;
    let cursor = r.next_cursor().expect("a next page");
    assert_eq!(
        bodies(format!(
            "/activities?{range}&limit=3&cursor={cursor}&format=json"
        ))
        .await,
        ["day 2"]
    );
    s.get(
        &format!("/activities?occurred_at=gte:2026-06-01T00:00:00Z&limit=3&cursor={cursor}"),
        &t,
    )
    .await
    .assert_error(400, "invalid_request");
    for (query, code, needle) in [
        (
            "occurred_at=gte:yesterday",
            "invalid_request",
            "occurred_at needs a time",
        ),
        (
            "occurred_at=gte:2026-06-01T00:00:00+02:00",
            "invalid_request",
            "%2B",
        ),
        (
            "occurred_at=in:2026-06-01T00:00:00Z",
            "unknown_operator",
            "allowed: eq, ne, gt, gte, lt, lte",
        ),
        (
            "occurred_at=after:2026-06-01T00:00:00Z",
            "unknown_operator",
            "occurred_at=op:",
        ),
        ("occurred_at=gte:", "invalid_request", "occurred_at="),
        (
            "occurred_at=gt:2026-06-01T00:00:00Z&occurred_at=gt:2026-06-01T00:00:00Z&occurred_at=gt:2026-06-01T00:00:00Z&occurred_at=gt:2026-06-01T00:00:00Z&occurred_at=gt:2026-06-01T00:00:00Z",
            "invalid_request",
            "at most 4",
        ),
        (
            "occured_at=gte:2026-06-01T00:00:00Z",
            "unknown_field",
            "occurred_at",
        ),
    ] {
        let r = s.get(&format!("/activities?{query}"), &t).await;
        r.assert_error(400, code);
        assert!(r.text.contains(needle), "{query}: {}", r.text);
    }
    // Oldest first, paged, the cursor bound to the order.
    assert_eq!(
        bodies("/activities?sort=occurred_at&format=json".into()).await,
        ["day 1", "day 2", "day 3", "day 4", "day 5", "day 6"]
    );
    let r = s.get("/activities?sort=occurred_at&limit=4", &t).await;
    let cursor = r.next_cursor().expect("a next page");
    assert_eq!(
        bodies(format!(
            "/activities?sort=occurred_at&limit=4&cursor={cursor}&format=json"
        ))
        .await,
        ["day 5", "day 6"]
    );
    s.get(&format!("/activities?limit=4&cursor={cursor}"), &t)
        .await
        .assert_error(400, "invalid_request");
    s.get("/activities?sort=kind", &t)
        .await
        .assert_error(400, "invalid_request");
    // By author: all six are this user's; another user's id finds none.
    let me = s.get("/whoami?format=json", &t).await.json()["data"]["handle"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        bodies(format!("/activities?author={me}&format=json"))
            .await
            .len(),
        6
    );
    assert!(
        bodies("/activities?author=u_000000000000&format=json".into())
            .await
            .is_empty()
    );
    s.get("/activities?author=c_000000000000", &t)
        .await
        .assert_error(400, "invalid_request");
    // Nothing was lost to the refusals.
    assert_eq!(bodies("/activities?format=json".into()).await.len(), 6);
}

/// Activities can be listed by kind, one or several, and the cursor stays
/// bound to that filter.
#[tokio::test]
async fn activities_filter_by_kind() {
    let s = Server::start().await;
    let t = s.login("kinds@example.com").await;
    let c = create(&s, &t, "contacts", json!({"name": "Kinds"})).await;
    for (i, kind) in ["call", "note", "call", "meeting", "call"]
        .iter()
        .enumerate()
    {
        let body = json!({"kind": kind, "body": format!("#{i}"), "occurred_at": format!("2026-06-10T09:0{i}:00Z")});
        log_activity(&s, &t, &c, body).await;
    }
    let kinds = |path: String| activity_fields(&s, &t, path, "kind");
    assert_eq!(
        kinds("/activities?kind=call&format=json".into()).await,
        ["call"; 3]
    );
    assert_eq!(
        kinds(format!(
            "/contacts/{c}/activities?kind=meeting,note&format=json"
        ))
        .await,
        ["meeting", "note"]
    );
    // Paged: two calls, then the third; the cursor of a kind= walk
    // is refused on a walk without it.
    let r = s.get("/activities?kind=call&limit=2", &t).await;
    let cursor = r.next_cursor().expect("a next page");
    let r = s
        .get(
            &format!("/activities?kind=call&limit=2&cursor={cursor}&format=json"),
            &t,
        )
        .await;
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 1, "{}", r.text);
    s.get(&format!("/activities?limit=2&cursor={cursor}"), &t)
        .await
        .assert_error(400, "invalid_request");
    let r = s.get("/activities?kind=calls", &t).await;
    r.assert_error(400, "invalid_request");
    assert!(
        r.text.contains("allowed: call, email, meeting, note, task"),
        "{}",
        r.text
    );
}

/// Parameters that would widen or quietly narrow an answer are refused: an
/// empty `contact=`, `deal=` or `kind=`, and a parameter given twice where
/// only one value can apply.
#[tokio::test]
async fn empty_and_repeated_parameters_are_refused_not_guessed() {
    let s = Server::start().await;
    let t = s.login("params@example.com").await;
    let c = create(&s, &t, "contacts", json!({"name": "Params"})).await;
    log_activity(&s, &t, &c, json!({"kind": "call"})).await;
    for query in [
        "/activities?contact=",
        "/activities?deal=",
        "/activities?kind=",
        "/activities?kind=%20",
    ] {
        let r = s.get(query, &t).await;
        r.assert_error(400, "invalid_request");
        assert!(r.text.contains("has no value"), "{query}: {}", r.text);
    }
    let r = s.get(&format!("/contacts/{c}/activities?kind="), &t).await;
    r.assert_error(400, "invalid_request");
    for query in [
        format!("/activities?contact={c}&contact={c}"),
        "/activities?kind=call&kind=note".to_string(),
        "/audit?limit=1&limit=2".to_string(),
        "/reminders?days=1&days=100".to_string(),
    ] {
        let r = s.get(&query, &t).await;
        r.assert_error(400, "invalid_request");
        assert!(r.text.contains("more than once"), "{query}: {}", r.text);
    }
    let r = s.get("/reminders?limit=201", &t).await;
    r.assert_error(400, "invalid_request");
    // An endpoint without parameters says so, rather than pointing to a
    // list of them.
    let r = s.get("/whoami?x=1", &t).await;
    r.assert_error(400, "unknown_field");
    assert!(r.text.contains("takes no query parameters"), "{}", r.text);
}

/// Writes that would quietly lose or distort data are refused: clearing a
/// deal's status (which put `open` back), an activity dated far ahead or
/// long ago (the log cannot be edited), and a custom object merged past its
/// 64 KiB. Tags differing only in case are one tag.
#[tokio::test]
async fn writes_that_would_distort_data_are_refused() {
    let s = Server::start().await;
    let t = s.login("distort@example.com").await;
    let d = create(&s, &t, "deals", json!({"title": "Won", "status": "won"})).await;
    let r = s
        .patch(&format!("/deals/{d}"), &t, r#"{"status":null}"#)
        .await;
    r.assert_error(400, "invalid_request");
    assert!(r.text.contains("\"status\": \"open\""), "{}", r.text);
    let v = s.get(&format!("/deals/{d}?format=json"), &t).await.json();
    assert_eq!(v["data"]["status"], "won");

    let c = create(&s, &t, "contacts", json!({"name": "Log"})).await;
    let path = format!("/contacts/{c}/activities");
    let soon = time::OffsetDateTime::now_utc() + time::Duration::hours(2);
    let soon = soon
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    for (at, needle) in [
        ("9999-12-31T23:59:59Z", "more than a day ahead"),
        ("1800-01-01T00:00:00Z", "before 1900"),
        ("2026-11-30 10:00", "leave it out (or null) for now"),
    ] {
        let body = json!({"kind": "call", "occurred_at": at}).to_string();
        let r = s.post(&path, Some(&t), &body).await;
        r.assert_error(400, "invalid_request");
        assert!(r.text.contains(needle), "{at}: {}", r.text);
        assert!(!r.text.contains("null to clear"), "{at}: {}", r.text);
    }
    // A follow-up in year 1 is a typo too; the record keeps its old one.
    let r = s
        .patch(
            &format!("/contacts/{c}"),
            &t,
            r#"{"follow_up_at":"0001-01-01T00:00:00Z"}"#,
        )
        .await;
    r.assert_error(400, "invalid_request");
    assert!(
        r.text
            .contains("follow_up_at 0001-01-01T00:00:00Z is before 1900"),
        "{}",
        r.text
    );
    let body = json!({"kind": "call", "occurred_at": soon}).to_string();
    assert_eq!(s.post(&path, Some(&t), &body).await.status, 201);
    let logged = activity_fields(&s, &t, format!("{path}?format=json"), "kind").await;
    assert_eq!(logged.len(), 1, "only the plausible one is logged");

    let big = "x".repeat(40 * 1024);
    let r = s
        .patch(
            &format!("/contacts/{c}"),
            &t,
            &json!({"custom": {"a": big}}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = s
        .patch(
            &format!("/contacts/{c}"),
            &t,
            &json!({"custom": {"b": big}}).to_string(),
        )
        .await;
    r.assert_error(400, "invalid_request");
    assert!(r.text.contains("once merged"), "{}", r.text);
    let v = s
        .get(&format!("/contacts/{c}?format=json"), &t)
        .await
        .json();
    assert!(
        v["data"]["custom"].get("b").is_none(),
        "nothing of the refused merge kept"
    );
    assert_eq!(
        v["data"]["custom"]["a"].as_str().map(str::len),
        Some(40 * 1024)
    );

    let r = s
        .patch(
            &format!("/contacts/{c}?format=json"),
            &t,
            r#"{"tags":["vip","VIP"," vip ","Renewal","renewal"]}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["data"]["tags"], json!(["vip", "Renewal"]));
}

/// A delete's confirm token holds for what the user was told links to the
/// record: a deal linked since makes it void, and the record stays.
#[tokio::test]
async fn a_confirm_token_lapses_when_links_change() {
    let s = Server::start().await;
    let t = s.login("lapse@example.com").await;
    let c = create(&s, &t, "contacts", json!({"name": "Linked later"})).await;
    let r = s.delete(&format!("/contacts/{c}?format=json"), &t).await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.json()["error"], "confirmation_required");
    assert!(r.text.contains("nothing links to it"), "{}", r.text);
    let token = r.json()["confirm"].as_str().unwrap().to_string();
    create(&s, &t, "deals", json!({"title": "Big", "contact_id": c})).await;
    let r = s
        .delete(&format!("/contacts/{c}?confirm={token}"), &t)
        .await;
    r.assert_error(409, "confirmation_required");
    assert!(
        r.text.contains("has changed since that confirm token"),
        "{}",
        r.text
    );
    assert!(r.text.contains("1 deals link to it"), "{}", r.text);
    assert_eq!(s.get(&format!("/contacts/{c}"), &t).await.status, 200);
    // The fresh token, issued with the deal counted, works.
    let fresh = s
        .delete(&format!("/contacts/{c}?format=json"), &t)
        .await
        .json()["confirm"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .delete(&format!("/contacts/{c}?confirm={fresh}"), &t)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// "Who changed deal X, and when": the audit log filters by target, action
/// (or a kind's actions), user and time, with the cursor bound to the
/// filters; a delete's entry counts the links it cleared.
#[tokio::test]
async fn the_audit_log_filters_by_target_action_user_and_time() {
    let s = Server::start().await;
    let t = s.login("history@example.com").await;
    let c = create(&s, &t, "contacts", json!({"name": "History"})).await;
    let d = create(
        &s,
        &t,
        "deals",
        json!({"title": "Renewal", "contact_id": c}),
    )
    .await;
    for stage in ["proposal", "negotiation", "closing"] {
        let body = json!({"stage": stage}).to_string();
        assert_eq!(s.patch(&format!("/deals/{d}"), &t, &body).await.status, 200);
    }
    let entries = |query: String| {
        let (s, t) = (&s, t.clone());
        async move {
            let v = s
                .get(&format!("/audit?{query}&format=json"), &t)
                .await
                .json();
            v["data"]
                .as_array()
                .unwrap_or_else(|| panic!("{query}: {v}"))
                .iter()
                .map(|e| {
                    format!(
                        "{} {}",
                        e["action"].as_str().unwrap(),
                        e["target"].as_str().unwrap()
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let deal = format!("deal/{d}");
    assert_eq!(
        entries(format!("target={deal}")).await,
        [
            format!("deal.update {deal}"),
            format!("deal.update {deal}"),
            format!("deal.update {deal}"),
            format!("deal.create {deal}")
        ]
    );
    // A bare id names its kind by its prefix.
    assert_eq!(
        entries(format!("target={d}&action=deal.create"))
            .await
            .len(),
        1
    );
    assert_eq!(
        entries("action=contact".into()).await,
        [format!("contact.create contact/{c}")]
    );
    assert_eq!(
        entries("action=deal.create,contact.create".into())
            .await
            .len(),
        2
    );
    let me = s.get("/whoami?format=json", &t).await.json()["data"]["handle"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        entries(format!("user={me}&action=deal,contact"))
            .await
            .len(),
        5
    );
    assert!(
        entries("at=lt:2000-01-01T00:00:00Z".into())
            .await
            .is_empty()
    );
    assert_eq!(
        entries("at=gte:2000-01-01T00:00:00Z&at=lt:2999-01-01T00:00:00Z&action=deal.update".into())
            .await
            .len(),
        3
    );
    // Paged: the cursor serves only the same filters.
    let r = s.get(&format!("/audit?target={deal}&limit=2"), &t).await;
    let cursor = r.next_cursor().expect("a next page");
    assert_eq!(
        entries(format!("target={deal}&limit=2&cursor={cursor}"))
            .await
            .len(),
        2
    );
    s.get(&format!("/audit?limit=2&cursor={cursor}"), &t)
        .await
        .assert_error(400, "invalid_request");
    for (query, needle) in [
        ("target=deal", "not a handle"),
        ("target=nonsense/x_1", "not a handle"),
        ("action=deals.update", "not an audit action"),
        ("action=deal.", "not an audit action"),
        ("action=deal.updat", "did you mean deal.update?"),
        ("action=deal.upsert", "not an audit action"),
        ("user=c_000000000000", "user"),
        ("at=yesterday", "at needs a time"),
        ("target=", "has no value"),
    ] {
        let r = s.get(&format!("/audit?{query}"), &t).await;
        r.assert_error(400, "invalid_request");
        assert!(r.text.contains(needle), "{query}: {}", r.text);
    }
    // A delete's entry counts what it unlinked.
    let r = s.delete(&format!("/contacts/{c}?format=json"), &t).await;
    let token = r.json()["confirm"].as_str().unwrap().to_string();
    assert_eq!(
        s.delete(&format!("/contacts/{c}?confirm={token}"), &t)
            .await
            .status,
        200
    );
    let v = s
        .get(
            &format!("/audit?target=contact/{c}&action=contact.delete&format=json"),
            &t,
        )
        .await
        .json();
    assert_eq!(
        v["data"][0]["changes"]["links"],
        json!([{"deals": 1}, null]),
        "{v}"
    );
}

/// Text keeps a custom value's JSON type: a string that would read as a
/// number, boolean or null is quoted; a deal without an amount still has
/// the `amount` key in JSON.
#[tokio::test]
async fn text_keeps_custom_types_and_json_keeps_every_key() {
    let s = Server::start().await;
    let t = s.login("types@example.com").await;
    let c = create(
        &s,
        &t,
        "contacts",
        json!({"name": "Types", "custom": {"n": "12", "m": 12, "s": "true", "b": true, "z": "null", "x": "text", "o": "010", "p": "+5"}}),
    )
    .await;
    let line = s.get(&format!("/contacts/{c}"), &t).await.text;
    for field in [
        "custom.n=\"12\"",
        "custom.m=12",
        "custom.s=\"true\"",
        "custom.b=true",
        "custom.z=\"null\"",
        "custom.x=text",
        "custom.o=\"010\"",
        "custom.p=\"+5\"",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    let d = create(&s, &t, "deals", json!({"title": "No amount"})).await;
    let v = s.get(&format!("/deals/{d}?format=json"), &t).await.json();
    assert!(v["data"].as_object().unwrap().contains_key("amount"), "{v}");
    assert_eq!(v["data"]["amount"], Value::Null);
}

/// "The open pipeline by stage": a summary counts the filtered records per
/// group, and for deals sums the amounts per currency, never across them.
#[tokio::test]
async fn summaries_count_and_sum_per_group() {
    let s = Server::start().await;
    let t = s.login("pipeline@example.com").await;
    for (title, stage, status, cents, cur) in [
        ("A", "proposal", "open", 100_000, "USD"),
        ("B", "proposal", "open", 50_000, "USD"),
        ("C", "proposal", "open", 70_000, "EUR"),
        ("D", "closing", "open", 10_000, "USD"),
        ("E", "closing", "won", 999_999, "USD"),
    ] {
        create(&s, &t, "deals", json!({"title": title, "stage": stage, "status": status, "amount_cents": cents, "currency": cur})).await;
    }
    create(&s, &t, "deals", json!({"title": "No stage"})).await;
    let r = s.get("/deals/summary?status=open&by=stage", &t).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let lines: Vec<&str> = r.text.lines().collect();
    assert_eq!(
        lines,
        [
            "summary stage=closing currency=USD count=1 amount_cents=10000 amount=\"100.00 USD\"",
            "summary stage=proposal currency=EUR count=1 amount_cents=70000 amount=\"700.00 EUR\"",
            "summary stage=proposal currency=USD count=2 amount_cents=150000 amount=\"1500.00 USD\"",
            "summary count=1",
            "# 4 groups, 5 deals in all",
        ],
        "{}",
        r.text
    );
    // JSON, the default grouping (status, stage), a search.
    let v = s.get("/deals/summary?format=json", &t).await.json();
    assert_eq!(v["by"], json!(["status", "stage", "currency"]));
    assert_eq!(v["count"], 6);
    let won = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["status"] == "won")
        .unwrap();
    assert_eq!(won["amount"], "9999.99 USD");
    let v = s
        .get("/deals/summary?search=No%20stage&format=json", &t)
        .await
        .json();
    assert_eq!(v["count"], 1, "{v}");
    assert_eq!(v["data"][0]["amount"], Value::Null, "{v}");
    // Contacts count by stage.
    create(&s, &t, "contacts", json!({"name": "L", "stage": "lead"})).await;
    create(&s, &t, "contacts", json!({"name": "M", "stage": "lead"})).await;
    let r = s.get("/contacts/summary", &t).await;
    assert!(
        r.text.starts_with("summary stage=lead count=2\n"),
        "{}",
        r.text
    );
    // Bad input: 400s that say what to send; nothing changes.
    for (query, code, needle) in [
        (
            "/deals/summary?by=title",
            "invalid_request",
            "cannot group deals by \"title\"",
        ),
        (
            "/deals/summary?by=stage&by=status",
            "invalid_request",
            "more than once",
        ),
        (
            "/deals/summary?limit=5",
            "unknown_field",
            "a summary takes no limit",
        ),
        (
            "/deals/summary?stage=equals:x",
            "unknown_operator",
            "unknown operator",
        ),
        (
            "/deals/summary?titel=A",
            "unknown_field",
            "did you mean \"title\"",
        ),
        (
            "/companies/summary?by=stage",
            "invalid_request",
            "allowed: industry",
        ),
    ] {
        let r = s.get(query, &t).await;
        r.assert_error(400, code);
        assert!(r.text.contains(needle), "{query}: {}", r.text);
    }
}

/// An activity handle opens (`GET /activities/{id}`), and a deal has a log
/// of its own (`GET /deals/{id}/activities`), 404 for a deal that is not in
/// the workspace, as a contact's; neither reaches another workspace.
#[tokio::test]
async fn an_activity_opens_and_a_deal_has_its_log() {
    let s = Server::start().await;
    let t = s.login("opens@example.com").await;
    let c = create(&s, &t, "contacts", json!({"name": "Opens"})).await;
    let d = create(
        &s,
        &t,
        "deals",
        json!({"title": "Big one", "contact_id": c}),
    )
    .await;
    log_activity(&s, &t, &c, json!({"kind": "call", "body": "no deal"})).await;
    log_activity(
        &s,
        &t,
        &c,
        json!({"kind": "meeting", "body": "on the deal", "deal_id": d}),
    )
    .await;
    log_activity(
        &s,
        &t,
        &c,
        json!({"kind": "note", "body": "deal note", "deal_id": d}),
    )
    .await;
    let bodies = |path: String| activity_fields(&s, &t, path, "body");
    assert_eq!(
        bodies(format!("/deals/{d}/activities?format=json")).await,
        ["deal note", "on the deal"]
    );
    assert_eq!(
        bodies(format!("/deals/{d}/activities?kind=meeting&format=json")).await,
        ["on the deal"]
    );
    s.get("/deals/d_000000000000/activities", &t)
        .await
        .assert_error(404, "not_found");
    s.get(&format!("/deals/{d}/activities?contact={c}"), &t)
        .await
        .assert_error(400, "unknown_field");
    // One activity, by id or handle, as text and JSON.
    let v = s.get("/activities?format=json", &t).await.json();
    let id = v["data"][0]["id"].as_str().unwrap().to_string();
    let one = s.get(&format!("/activities/{id}"), &t).await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert!(
        one.text.starts_with(&format!("activity/{id} kind=note ")),
        "{}",
        one.text
    );
    assert!(one.text.contains(&format!("deal=deal/{d}")), "{}", one.text);
    let j = s
        .get(&format!("/activities/activity%2F{id}?format=json"), &t)
        .await;
    assert_eq!(j.status, 200, "{}", j.text);
    assert_eq!(j.json()["data"]["body"], "deal note", "{}", j.text);
    s.get(&format!("/activities/{id}?kind=call"), &t)
        .await
        .assert_error(400, "unknown_field");
    s.get(&format!("/activities/{d}"), &t)
        .await
        .assert_error(400, "invalid_request");
    s.get("/activities/a_000000000000", &t)
        .await
        .assert_error(404, "not_found");
    // Another workspace sees neither.
    let other = s.login("elsewhere@example.com").await;
    s.get(&format!("/activities/{id}"), &other)
        .await
        .assert_error(404, "not_found");
    s.get(&format!("/deals/{d}/activities"), &other)
        .await
        .assert_error(404, "not_found");
}

/// Every action the log records is one `action=` accepts: each entry a
/// session of ordinary work leaves can be asked for by its own action.
#[tokio::test]
async fn every_logged_action_can_be_filtered_on() {
    let s = Server::start().await;
    let (a, m, _, ws) = {
        let a = s.login("acts@example.com").await;
        let (ws, m, mp) = s.join_as_member(&a, "acts-m@example.com", "m").await;
        (a, m, mp, ws)
    };
    let c = create(
        &s,
        &a,
        "contacts",
        json!({"name": "C", "email": "c@x.example"}),
    )
    .await;
    s.post(
        "/contacts",
        Some(&a),
        r#"{"email":"c@x.example","title":"CEO"}"#,
    )
    .await;
    let co = create(
        &s,
        &a,
        "companies",
        json!({"name": "Co", "domain": "co.example"}),
    )
    .await;
    s.patch(&format!("/companies/{co}"), &a, r#"{"name":"Co2"}"#)
        .await;
    let d = create(&s, &a, "deals", json!({"title": "D"})).await;
    s.patch(&format!("/deals/{d}"), &a, r#"{"title":"D2"}"#)
        .await;
    log_activity(&s, &a, &c, json!({"kind": "note"})).await;
    let r = s
        .post(
            &format!("/workspaces/{ws}/invites?format=json"),
            Some(&a),
            r#"{"email":"later@x.example"}"#,
        )
        .await;
    let inv = r.json()["data"]["id"].as_str().unwrap().to_string();
    s.delete(&format!("/workspaces/{ws}/invites/{inv}"), &a)
        .await;
    s.patch(&format!("/workspaces/{ws}"), &a, r#"{"name":"Renamed"}"#)
        .await;
    let m_id = s.get("/whoami?format=json", &m).await.json()["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.delete(&format!("/workspaces/{ws}/members/{m_id}"), &a)
        .await;
    for (kind, body) in [
        ("contacts", json!({"name": "Gone"})),
        ("companies", json!({"name": "Gone"})),
        ("deals", json!({"title": "Gone"})),
    ] {
        let id = create(&s, &a, kind, body).await;
        let r = s.delete(&format!("/{kind}/{id}?format=json"), &a).await;
        if r.status == 409 {
            let t = r.json()["confirm"].as_str().unwrap().to_string();
            s.delete(&format!("/{kind}/{id}?confirm={t}"), &a).await;
        }
    }
    let log = s.get("/audit?limit=200&format=json", &a).await.json();
    let mut seen: Vec<String> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    seen.sort();
    seen.dedup();
    assert!(seen.len() >= 12, "{seen:?}");
    for action in &seen {
        let r = s
            .get(&format!("/audit?action={action}&format=json"), &a)
            .await;
        assert_eq!(r.status, 200, "{action}: {}", r.text);
        assert!(!r.json()["data"].as_array().unwrap().is_empty(), "{action}");
    }
}
