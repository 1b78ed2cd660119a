//! The query language over real HTTP (SPEC §6; SECURITY R05, R25, R26).

use std::collections::HashSet;

use serde_json::json;

use crate::harness::{Server, field};
use crate::records::create;

fn handles(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

async fn seeded() -> (Server, String, Vec<String>) {
    let s = Server::start().await;
    let t = s.login("q@example.com").await;
    let co = create(
        &s,
        &t,
        "companies",
        json!({"name": "Acme", "domain": "acme.com", "custom": {"tier": "gold"}}),
    )
    .await;
    let mut ids = Vec::new();
    let rows = [
        json!({"name": "Ann Lee", "email": "ann@acme.com", "stage": "lead", "tags": ["vip"], "company_id": co, "custom": {"score": 10, "src": "web"}, "follow_up_at": "2026-01-10T09:00:00Z"}),
        json!({"name": "Bob Roy", "email": "bob@beta.io", "stage": "customer", "tags": ["renewal", "vip"], "custom": {"score": 3}}),
        json!({"name": "Cy 50%_off", "email": "cy@gamma.org", "stage": "lead", "title": "CTO", "custom": {"score": "99"}}),
        json!({"name": "Dee", "phone": "+1 555 0100", "custom": {"score": true}}),
    ];
    for r in rows {
        ids.push(create(&s, &t, "contacts", r).await);
    }
    (s, t, ids)
}

#[tokio::test]
async fn every_operator_filters_as_documented() {
    let (s, t, ids) = seeded().await;
    let q = |path: &str| {
        let (s, t) = (&s, &t);
        let path = path.to_string();
        async move {
            let r = s.get(&path, t).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text);
            let mut h: Vec<String> = handles(&r.text)
                .into_iter()
                .map(|h| h.trim_start_matches("contact/").to_string())
                .collect();
            h.sort();
            h
        }
    };
    let sorted = |v: &[usize]| {
        let mut x: Vec<String> = v.iter().map(|i| ids[*i].clone()).collect();
        x.sort();
        x
    };
    assert_eq!(q("/contacts?stage=lead").await, sorted(&[0, 2]));
    assert_eq!(q("/contacts?stage=eq:lead").await, sorted(&[0, 2]));
    assert_eq!(q("/contacts?stage=ne:lead").await, sorted(&[1, 3]));
    assert_eq!(
        q("/contacts?stage=in:lead,customer").await,
        sorted(&[0, 1, 2])
    );
    assert_eq!(q("/contacts?stage=is:null").await, sorted(&[3]));
    assert_eq!(q("/contacts?title=not:null").await, sorted(&[2]));
    assert_eq!(q("/contacts?name=like:ann").await, sorted(&[0]));
    assert_eq!(q("/contacts?name=like:A*").await, sorted(&[0]));
    assert_eq!(q("/contacts?email=like:*@acme.com").await, sorted(&[0]));
    assert_eq!(q("/contacts?email=ANN@ACME.COM").await, sorted(&[0]));
    assert_eq!(
        q("/contacts?name=gte:Bob&name=lt:Dee").await,
        sorted(&[1, 2])
    );
    assert_eq!(q("/contacts?tags=vip").await, sorted(&[0, 1]));
    assert_eq!(q("/contacts?tags=ne:vip").await, sorted(&[2, 3]));
    assert_eq!(q("/contacts?tags=in:renewal,none").await, sorted(&[1]));
    assert_eq!(q("/contacts?tags=is:null").await, sorted(&[2, 3]));
    assert_eq!(q("/contacts?custom.score=gt:5").await, sorted(&[0]));
    assert_eq!(q("/contacts?custom.score=lte:10").await, sorted(&[0, 1]));
    // Numeric comparisons take JSON numbers only: not "99", not true.
    assert_eq!(q("/contacts?custom.score=gte:0").await, sorted(&[0, 1]));
    assert_eq!(q("/contacts?custom.score=lt:2").await, sorted(&[]));
    assert_eq!(q("/contacts?custom.score=99").await, sorted(&[2]));
    assert_eq!(q("/contacts?custom.src=web").await, sorted(&[0]));
    assert_eq!(q("/contacts?custom.src=is:null").await, sorted(&[1, 2, 3]));
    assert_eq!(
        q("/contacts?follow_up_at=lt:2026-02-01T00:00:00Z").await,
        sorted(&[0])
    );
    assert_eq!(q(&format!("/contacts?id={}", ids[1])).await, sorted(&[1]));
    assert_eq!(
        q(&format!("/contacts?id=contact%2F{}", ids[1])).await,
        sorted(&[1])
    );
    assert_eq!(q("/contacts?search=ACME").await, sorted(&[0]));
    assert_eq!(q("/contacts?search=555").await, sorted(&[3]));
    assert_eq!(q("/contacts?search=cy").await, sorted(&[2]));
    assert_eq!(q("/contacts?stage=lead&tags=vip").await, sorted(&[0]));
    // % and _ are literal in like and search.
    assert_eq!(q("/contacts?name=like:50%25_").await, sorted(&[2]));
    assert_eq!(q("/contacts?name=like:%25").await, sorted(&[2]));
    assert_eq!(q("/contacts?name=like:_").await, sorted(&[2]));
    assert_eq!(q("/contacts?search=%25_o").await, sorted(&[2]));
    assert_eq!(
        q("/companies?custom.tier=gold&domain=not:null").await.len(),
        1
    );
}

#[tokio::test]
async fn sort_is_stable_with_id_ties_and_empty_values_last() {
    let (s, t, ids) = seeded().await;
    let r = s.get("/contacts?sort=stage", &t).await;
    let h = handles(&r.text);
    assert_eq!(h.len(), 4);
    assert!(h[0].contains(&ids[1]), "customer first: {h:?}");
    assert!(h[3].contains(&ids[3]), "no stage last: {h:?}");
    let r = s.get("/contacts?sort=-stage", &t).await;
    let h = handles(&r.text);
    assert!(
        h[3].contains(&ids[3]),
        "no stage last when descending too: {h:?}"
    );
    let default = handles(&s.get("/contacts", &t).await.text);
    assert!(default[0].contains(&ids[3]), "newest first by default");
}

#[tokio::test]
async fn walking_cursors_sees_every_row_once_while_rows_are_added() {
    let s = Server::start().await;
    let t = s.login("walk@example.com").await;
    for i in 0..45 {
        create(&s, &t, "contacts", json!({"name": format!("n{:02}", i % 7), "stage": if i % 2 == 0 { "lead" } else { "customer" }})).await;
    }
    for sort in ["-created_at", "name", "-name", "stage", "id", "-updated_at"] {
        let mut seen = HashSet::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let path = match &cursor {
                Some(c) => format!("/contacts?sort={sort}&limit=7&cursor={c}"),
                None => format!("/contacts?sort={sort}&limit=7"),
            };
            let r = s.get(&path, &t).await;
            assert_eq!(r.status, 200, "{}", r.text);
            for h in handles(&r.text) {
                assert!(seen.insert(h.clone()), "{sort}: {h} seen twice");
            }
            // Rows added mid-walk never cause repeats.
            if pages == 1 {
                create(&s, &t, "contacts", json!({"name": "n03"})).await;
            }
            pages += 1;
            cursor = r.next_cursor();
            if cursor.is_none() {
                break;
            }
        }
        assert!(seen.len() >= 45, "{sort}: saw {}", seen.len());
    }
}

#[tokio::test]
async fn cursors_are_tamper_evident_and_bound_r05() {
    let s = Server::start().await;
    let a = s.login("r05a@example.com").await;
    let b = s.login("r05b@example.com").await;
    for i in 0..3 {
        create(
            &s,
            &a,
            "contacts",
            json!({"name": format!("a{i}"), "stage": "lead"}),
        )
        .await;
        create(&s, &b, "contacts", json!({"name": format!("b{i}")})).await;
    }
    let page = s.get("/contacts?limit=1&stage=lead", &a).await;
    let cursor = page.next_cursor().unwrap();
    let bpage = s.get("/contacts?limit=1", &b).await;
    let bcursor = bpage.next_cursor().unwrap();
    // A contacts cursor does not page companies (same sort, no filter).
    for i in 0..3 {
        create(&s, &a, "companies", json!({"name": format!("co{i}")})).await;
    }
    let contacts = s.get("/contacts?limit=1", &a).await.next_cursor().unwrap();
    let r = s
        .get(&format!("/companies?limit=1&cursor={contacts}"), &a)
        .await;
    r.assert_error(400, "invalid_request");
    assert!(r.text.contains("another list"), "{}", r.text);
    let mut edited = cursor.clone().into_bytes();
    edited[3] = if edited[3] == b'A' { b'B' } else { b'A' };
    let edited = String::from_utf8(edited).unwrap();
    for c in [
        bcursor.as_str(),
        edited.as_str(),
        &cursor[..cursor.len() - 2],
        "garbage",
        "e30.AAAA",
        "%00",
    ] {
        let r = s
            .get(&format!("/contacts?limit=1&stage=lead&cursor={c}"), &a)
            .await;
        r.assert_error(400, "invalid_request");
    }
    // Same cursor with other filters.
    let r = s
        .get(&format!("/contacts?limit=1&cursor={cursor}"), &a)
        .await;
    r.assert_error(400, "invalid_request");
    assert!(r.text.contains("filters"), "{}", r.text);
    // B's cursor in B's own listing works; in A's, on exactly the query B
    // ran (so the filters match), only the workspace binding can refuse it.
    assert_eq!(
        s.get(&format!("/contacts?limit=1&cursor={bcursor}"), &b)
            .await
            .status,
        200
    );
    let own = s.get("/contacts?limit=1", &a).await;
    let acursor = own.next_cursor().unwrap();
    assert_eq!(
        s.get(&format!("/contacts?limit=1&cursor={acursor}"), &a)
            .await
            .status,
        200
    );
    let r = s
        .get(&format!("/contacts?limit=1&cursor={bcursor}"), &a)
        .await;
    r.assert_error(400, "invalid_request");
    assert!(r.text.contains("another workspace"), "{}", r.text);
    assert!(!r.text.contains("contact/"), "{}", r.text);
}

#[tokio::test]
async fn bad_queries_are_400_with_the_allowed_list() {
    let (s, t, _) = seeded().await;
    for (q, code) in [
        ("nope=1", "unknown_field"),
        ("stage=between:a", "unknown_operator"),
        ("stage=is:maybe", "unknown_operator"),
        ("stage=equals:lead", "unknown_operator"),
        ("email=regex:a", "unknown_operator"),
        ("tags=nin:a,b", "unknown_operator"),
        ("stage=in:", "invalid_request"),
        ("tags=gte:a", "unknown_operator"),
        ("created_at=gte:yesterday", "invalid_request"),
        ("sort=nope", "unknown_field"),
        ("limit=0", "invalid_request"),
        ("limit=-1", "invalid_request"),
        ("limit=201", "invalid_request"),
        ("limit=100000", "invalid_request"),
        ("limit=abc", "invalid_request"),
        ("limit=1.5", "invalid_request"),
        ("limit=9223372036854775808", "invalid_request"),
        ("company_id=deal/d_000000000000", "invalid_request"),
        ("custom.bad%20key=1", "unknown_field"),
    ] {
        let r = s.get(&format!("/contacts?{q}"), &t).await;
        assert_eq!(r.status, 400, "{q}: {}", r.text);
        assert_eq!(r.error_code(), code, "{q}: {}", r.text);
        assert!(r.text.contains("\nhint: "), "{q}");
        // SPEC §6: every such 400 lists what is valid there.
        let r = s.get(&format!("/contacts?{q}&format=json"), &t).await;
        let allowed = r.json()["allowed"].clone();
        assert!(
            allowed.as_array().is_some_and(|a| !a.is_empty()),
            "{q}: no allowed list: {}",
            r.text
        );
    }
    // An unencoded + in an offset arrives as a space: the hint says so.
    let r = s
        .get("/contacts?created_at=gte:2026-06-10T09:00:00+01:00", &t)
        .await;
    r.assert_error(400, "invalid_request");
    assert!(r.text.contains("%2B"), "{}", r.text);
    for q in ["cursor=garbage", "amount_cents=gte:abc"] {
        let path = if q.starts_with("amount") {
            "/deals"
        } else {
            "/contacts"
        };
        let r = s.get(&format!("{path}?{q}&format=json"), &t).await;
        assert_eq!(r.status, 400, "{q}: {}", r.text);
        assert!(
            r.json()["allowed"]
                .as_array()
                .is_some_and(|a| !a.is_empty()),
            "{q}: no allowed list: {}",
            r.text
        );
    }
    let r = s.get("/contacts?nope=1&format=json", &t).await;
    let allowed = r.json()["allowed"].as_array().unwrap().clone();
    assert!(allowed.iter().any(|v| v == "email"), "{allowed:?}");
    let r = s.get("/deals?amount_cents=gte:abc", &t).await;
    r.assert_error(400, "invalid_request");
    let r = s.get("/contacts?limit=200", &t).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn injection_is_data_never_sql_r25() {
    let (s, t, ids) = seeded().await;
    let long = "x".repeat(10_000);
    for v in [
        "'",
        "' OR 1=1 --",
        "; DROP TABLE contacts; --",
        "--",
        "\\",
        "🦀",
        "%",
        "_",
        "\"",
        long.as_str(),
    ] {
        let enc: String = url_encode(v);
        for q in [
            format!("name={enc}"),
            format!("name=like:{enc}"),
            format!("search={enc}"),
            format!("custom.k={enc}"),
            format!("sort={enc}"),
            format!("cursor={enc}"),
            format!("{enc}=1"),
            format!("custom.{enc}=1"),
        ] {
            let r = s.get(&format!("/contacts?{q}"), &t).await;
            assert!(r.status == 200 || r.status == 400, "{q:.60}: {}", r.text);
            if r.status == 200 {
                assert!(
                    r.text.lines().filter(|l| !l.starts_with('#')).count() <= 1,
                    "{q:.60}: {}",
                    r.text
                );
            }
        }
    }
    let r = s.get("/contacts?name=x%00y", &t).await;
    assert_eq!(r.status, 400);
    let all = s.get("/contacts", &t).await;
    assert_eq!(
        handles(&all.text).len(),
        ids.len(),
        "rows lost: {}",
        all.text
    );
    assert!(field(all.text.lines().next().unwrap(), "name").is_some());
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn page_bounds_are_enforced_r26() {
    let (s, t, _) = seeded().await;
    for limit in [
        "0",
        "-1",
        "201",
        "100000",
        "abc",
        "1.5",
        "9223372036854775808",
        "18446744073709551616",
        "",
    ] {
        for path in ["/contacts", "/activities", "/audit", "/reminders"] {
            let r = s.get(&format!("{path}?limit={limit}"), &t).await;
            assert_eq!(r.status, 400, "{path}?limit={limit}: {}", r.text);
        }
    }
    let r = s.get("/contacts?limit=200", &t).await;
    assert!(r.text.lines().filter(|l| !l.starts_with('#')).count() <= 200);
}

/// Search pages sorted by creation come straight off the search index in
/// page order: walking them returns every hit of this workspace exactly once,
/// in order, with filters applied, while new rows arrive, and nothing of
/// another workspace.
#[tokio::test]
async fn search_pages_walk_every_hit_once_in_order() {
    let s = Server::start().await;
    let t = s.login("walker@example.com").await;
    let other = s.login("neighbour@example.com").await;
    for i in 0..15 {
        let r = s
            .post(
                "/contacts",
                Some(&other),
                &format!(r#"{{"name":"Hitchcock B{i}"}}"#),
            )
            .await;
        assert_eq!(r.status, 201);
    }
    let mut hits = HashSet::new();
    let mut leads = HashSet::new();
    for i in 0..90 {
        let name = if i % 3 == 0 {
            format!("Miss {i}")
        } else {
            format!("Hitchcock {i}")
        };
        let stage = if i % 2 == 0 { "lead" } else { "customer" };
        let r = s
            .post(
                "/contacts?format=json",
                Some(&t),
                &format!(r#"{{"name":"{name}","stage":"{stage}"}}"#),
            )
            .await;
        assert_eq!(r.status, 201);
        let id = r.json()["data"]["id"].as_str().unwrap().to_string();
        if i % 3 != 0 {
            hits.insert(id.clone());
            if stage == "lead" {
                leads.insert(id);
            }
        }
    }
    let mut late = HashSet::new();
    for (query, want) in [
        ("search=HITCH&limit=7", &hits),
        ("search=hitch&sort=created_at&limit=7", &hits),
        ("search=hitch&stage=lead&limit=5", &leads),
    ] {
        let mut seen: Vec<(String, String)> = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let path = match &cursor {
                Some(c) => format!("/contacts?{query}&format=json&cursor={c}"),
                None => format!("/contacts?{query}&format=json"),
            };
            let r = s.get(&path, &t).await;
            assert_eq!(r.status, 200, "{query}: {}", r.text);
            let v = r.json();
            for row in v["data"].as_array().unwrap() {
                seen.push((
                    row["created_at"].as_str().unwrap().to_string(),
                    row["id"].as_str().unwrap().to_string(),
                ));
            }
            pages += 1;
            if pages == 2 {
                // Rows added mid-walk sort before the walk (newest first) or
                // after it (oldest first); either way no row repeats.
                let r = s
                    .post(
                        "/contacts?format=json",
                        Some(&t),
                        r#"{"name":"Hitchcock late","stage":"lead"}"#,
                    )
                    .await;
                assert_eq!(r.status, 201);
                late.insert(r.json()["data"]["id"].as_str().unwrap().to_string());
            }
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        let ids: HashSet<String> = seen.iter().map(|(_, id)| id.clone()).collect();
        assert_eq!(ids.len(), seen.len(), "{query}: a row came twice");
        for id in want {
            assert!(ids.contains(id), "{query}: {id} missing");
        }
        for id in &ids {
            assert!(
                want.contains(id) || late.contains(id),
                "{query}: {id} is not a hit of this workspace"
            );
        }
        let mut sorted = seen.clone();
        sorted.sort();
        if !query.contains("sort=created_at") {
            sorted.reverse();
        }
        assert_eq!(seen, sorted, "{query}: not in (created_at, id) order");
    }
    // A cursor is bound to its query.
    let r = s
        .get("/contacts?search=hitch&limit=2&format=json", &t)
        .await;
    let c = r.json()["next_cursor"].as_str().unwrap().to_string();
    let r = s
        .get(
            &format!("/contacts?search=hitch&sort=name&limit=2&cursor={c}"),
            &t,
        )
        .await;
    assert_eq!(r.status, 400);
}

/// A domain filter compared whole is normalised as writes are, so the
/// spelling an agent has at hand (a URL, www., capitals) finds the company.
#[tokio::test]
async fn domain_filters_normalise_like_writes() {
    let s = Server::start().await;
    let t = s.login("domains@example.com").await;
    let r = s
        .post(
            "/companies?format=json",
            Some(&t),
            r#"{"name":"Acme","domain":"https://www.Acme.com/about"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let other = s
        .post(
            "/companies?format=json",
            Some(&t),
            r#"{"name":"Other","domain":"other.org"}"#,
        )
        .await;
    assert_eq!(other.status, 201, "{}", other.text);
    let names = |q: &'static str| {
        let (s, t) = (&s, t.clone());
        async move {
            let v = s
                .get(&format!("/companies?{q}&format=json"), &t)
                .await
                .json();
            v["data"]
                .as_array()
                .unwrap_or_else(|| panic!("{q}: {v}"))
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    for q in [
        "domain=acme.com",
        "domain=www.acme.com",
        "domain=https://acme.com",
        "domain=https%3A%2F%2Fwww.ACME.com%2Fpricing",
        "domain=ACME.COM",
        "domain=in:https://acme.com,nothing.net",
    ] {
        assert_eq!(names(q).await, ["Acme"], "{q}");
    }
    assert_eq!(names("domain=ne:www.acme.com").await, ["Other"]);
    assert_eq!(names("domain=like:acme").await, ["Acme"]);
}
