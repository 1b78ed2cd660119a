//! Isolation between workspaces (SECURITY R01–R04, R06).

use serde_json::json;

use crate::harness::Server;
use crate::records::create;

struct World {
    s: Server,
    a: String,
    b: String,
    contact: String,
    company: String,
    deal: String,
}

async fn world() -> World {
    let s = Server::start().await;
    let a = s.login("tenant-a@example.com").await;
    let b = s.login("tenant-b@example.com").await;
    let company = create(
        &s,
        &a,
        "companies",
        json!({"name": "MarkerCo", "domain": "marker-a.com"}),
    )
    .await;
    let contact = create(&s, &a, "contacts", json!({"name": "Marker Person", "email": "marker@a-only.com", "company_id": company, "follow_up_at": "2020-01-01T00:00:00Z"})).await;
    let deal = create(&s, &a, "deals", json!({"title": "Marker deal", "contact_id": contact, "follow_up_at": "2020-01-01T00:00:00Z"})).await;
    s.post(
        &format!("/contacts/{contact}/activities"),
        Some(&a),
        r#"{"kind":"note","body":"Marker note"}"#,
    )
    .await;
    World {
        s,
        a,
        b,
        contact,
        company,
        deal,
    }
}

#[tokio::test]
async fn other_workspaces_records_do_not_exist_r01() {
    let w = world().await;
    let s = &w.s;
    for (kind, id, prefix) in [
        ("contacts", &w.contact, "contact"),
        ("companies", &w.company, "company"),
        ("deals", &w.deal, "deal"),
    ] {
        for path in [format!("/{kind}/{id}"), format!("/{kind}/{prefix}%2F{id}")] {
            s.get(&path, &w.b).await.assert_error(404, "not_found");
            s.patch(&path, &w.b, r#"{"tags":["pwned"]}"#)
                .await
                .assert_error(404, "not_found");
            let d = s.delete(&path, &w.b).await;
            d.assert_error(404, "not_found");
            assert!(
                !d.text.contains("confirm"),
                "a confirm token for a foreign record"
            );
        }
    }
    s.get(&format!("/contacts/{}/activities", w.contact), &w.b)
        .await
        .assert_error(404, "not_found");
    s.post(
        &format!("/contacts/{}/activities", w.contact),
        Some(&w.b),
        r#"{"kind":"note"}"#,
    )
    .await
    .assert_error(404, "not_found");
    // A's records are unchanged.
    let c = s.get(&format!("/contacts/{}", w.contact), &w.a).await;
    assert_eq!(c.status, 200);
    assert!(!c.text.contains("pwned"));
}

#[tokio::test]
async fn lists_and_feeds_never_show_another_workspace_r02() {
    let w = world().await;
    let s = &w.s;
    for path in [
        "/contacts?email=marker@a-only.com".to_string(),
        format!("/contacts?company_id={}", w.company),
        format!("/deals?contact_id={}", w.contact),
        "/contacts?search=marker".to_string(),
        "/companies?search=marker".to_string(),
        "/deals?search=marker".to_string(),
        format!("/contacts?id={}", w.contact),
        format!("/activities?contact={}", w.contact),
        format!("/activities?deal={}", w.deal),
        "/activities".to_string(),
        "/reminders?days=30".to_string(),
        "/audit".to_string(),
    ] {
        let r = s.get(&path, &w.b).await;
        assert!(r.status == 200 || r.status == 400, "{path}: {}", r.text);
        assert!(
            !r.text.to_lowercase().contains("marker"),
            "{path} leaks A's data: {}",
            r.text
        );
        assert!(
            !r.text.contains(&w.contact) && !r.text.contains(&w.deal),
            "{path} leaks A's ids"
        );
    }
}

#[tokio::test]
async fn upsert_keys_never_reach_another_workspace_r03() {
    let w = world().await;
    let s = &w.s;
    let r = s
        .post(
            "/contacts",
            Some(&w.b),
            r#"{"email":"marker@a-only.com","name":"B's own"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.text.contains("# created"));
    let r = s
        .post(
            "/companies",
            Some(&w.b),
            r#"{"domain":"marker-a.com","name":"B's co"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let a = s.get(&format!("/contacts/{}", w.contact), &w.a).await;
    assert!(a.text.contains("name=\"Marker Person\""), "{}", a.text);
}

#[tokio::test]
async fn foreign_references_are_refused_like_missing_ones_r04() {
    let w = world().await;
    let s = &w.s;
    // B's records, so B can try to point them at A's.
    let bc = create(s, &w.b, "contacts", json!({"name": "b"})).await;
    let bd = create(s, &w.b, "deals", json!({"title": "b"})).await;
    let cases = [
        (
            "POST",
            "/contacts".to_string(),
            json!({"company_id": w.company}),
        ),
        (
            "POST",
            "/deals".to_string(),
            json!({"title": "x", "contact_id": w.contact}),
        ),
        (
            "POST",
            "/deals".to_string(),
            json!({"title": "x", "company_id": w.company}),
        ),
        (
            "PATCH",
            format!("/contacts/{bc}"),
            json!({"company_id": w.company}),
        ),
        (
            "PATCH",
            format!("/deals/{bd}"),
            json!({"contact_id": w.contact}),
        ),
        (
            "POST",
            format!("/contacts/{bc}/activities"),
            json!({"kind": "note", "deal_id": w.deal}),
        ),
    ];
    for (method, path, body) in cases {
        let r = if method == "POST" {
            s.post(&path, Some(&w.b), &body.to_string()).await
        } else {
            s.patch(&path, &w.b, &body.to_string()).await
        };
        let missing_body = body
            .to_string()
            .replace(&w.company, "co_000000000000")
            .replace(&w.contact, "c_000000000000")
            .replace(&w.deal, "d_000000000000");
        let m = if method == "POST" {
            s.post(&path, Some(&w.b), &missing_body).await
        } else {
            s.patch(&path, &w.b, &missing_body).await
        };
        assert_eq!(
            (r.status, r.error_code()),
            (m.status, m.error_code()),
            "{path}: {} vs {}",
            r.text,
            m.text
        );
        assert_eq!(r.status, 404);
    }
    let b_deals = s.get("/deals", &w.b).await;
    assert!(!b_deals.text.contains(&w.contact));
}
