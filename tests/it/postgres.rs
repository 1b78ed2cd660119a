//! PostgreSQL-only behaviour: several stateless `serve` processes sharing one
//! database, concurrent migrations, readiness that recovers (issue: PostgreSQL
//! and horizontal scale).

use std::time::Duration;

use reqwest::Method;
use sea_orm::ConnectionTrait;
use serde_json::json;

use crate::harness::{Server, create_pg_database, drop_pg_database, field, postgres_admin_url};
use crate::records::create;

fn verify(email: &str, code: &str) -> String {
    format!(r#"{{"email":"{email}","code":"{code}","token_name":"n"}}"#)
}

#[tokio::test]
async fn two_serve_processes_share_all_state() {
    let a = Server::builder()
        .env("CRMKIT_LIMIT_CONTACTS", "10")
        .start()
        .await;
    let b = a.another(&[]).await;
    assert_ne!(a.base, b.base);

    // A login code requested through one node verifies through the other.
    let code = a.request_code("nodes@example.com").await;
    let r = b
        .post(
            "/auth/verify?format=json",
            None,
            &verify("nodes@example.com", &code),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let t = r.json()["data"]["token"].as_str().unwrap().to_string();

    // Created through one, read through the other.
    let c = create(&a, &t, "contacts", json!({"name": "Shared"})).await;
    let got = b.get(&format!("/contacts/{c}"), &t).await;
    assert_eq!(
        field(got.text.lines().next().unwrap(), "name").as_deref(),
        Some("Shared")
    );

    // A delete confirmed on the other node.
    let confirm = a
        .delete(&format!("/contacts/{c}?format=json"), &t)
        .await
        .json()["confirm"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        b.delete(&format!("/contacts/{c}?confirm={confirm}"), &t)
            .await
            .status,
        200
    );
    a.get(&format!("/contacts/{c}"), &t)
        .await
        .assert_error(404, "not_found");

    // Cursors minted by one node page on the other.
    for i in 0..3 {
        create(&a, &t, "contacts", json!({"name": format!("p{i}")})).await;
    }
    let page = a.get("/contacts?limit=1", &t).await;
    let cursor = page
        .text
        .lines()
        .find_map(|l| l.strip_prefix("# next: "))
        .unwrap()
        .to_string();
    assert_eq!(
        b.get(&format!("/contacts?limit=1&cursor={cursor}"), &t)
            .await
            .status,
        200
    );

    // One rate limit across both nodes (5 code requests per address).
    let mut statuses = Vec::new();
    for i in 0..8 {
        let node = if i % 2 == 0 { &a } else { &b };
        statuses.push(
            node.post(
                "/auth/request",
                None,
                r#"{"email":"shared-limit@example.com"}"#,
            )
            .await
            .status,
        );
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert!(statuses.contains(&429));

    // Plan caps hold when creates race across both nodes.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let node = if i % 2 == 0 { &a } else { &b };
        let (http, url, t) = (node.http.clone(), node.url("/contacts"), t.clone());
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .bearer_auth(t)
                .body(format!(r#"{{"email":"race{i}@x.com"}}"#))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let statuses: Vec<u16> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 403),
        "{statuses:?}"
    );
    // 3 contacts existed already; the cap is 10.
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        7,
        "{statuses:?}"
    );
    assert!(
        b.get("/whoami", &t)
            .await
            .text
            .contains("# contacts: 10 / 10")
    );
}

#[tokio::test]
async fn processes_starting_together_migrate_exactly_once() {
    let (name, url) = create_pg_database().await;
    let mut children = Vec::new();
    for _ in 0..4 {
        children.push(
            std::process::Command::new(crate::harness::bin())
                .args(["migrate", "--database-url", &url])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    let mut applied = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        applied += String::from_utf8_lossy(&out.stdout)
            .matches("applied m2026")
            .count();
    }
    assert!(applied >= 3, "nobody applied the migrations");
    let db = sea_orm::Database::connect(&url).await.unwrap();
    let n = crate::harness::count(&db, "SELECT COUNT(*) AS n FROM seaql_migrations").await;
    assert_eq!(n, 3);
    let dry = std::process::Command::new(crate::harness::bin())
        .args(["migrate", "--dry-run", "--database-url", &url])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&dry.stdout).contains("no pending migrations"));
    db.close().await.ok();
    drop_pg_database(name);
}

#[tokio::test]
async fn readiness_fails_while_the_database_is_away_and_recovers() {
    let s = Server::start().await;
    let t = s.login("ready@example.com").await;
    let name = s.db_url.rsplit('/').next().unwrap().to_string();
    let admin = sea_orm::Database::connect(&postgres_admin_url())
        .await
        .unwrap();
    admin
        .execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .await
        .unwrap();
    admin
        .execute_unprepared(&format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"))
        .await
        .unwrap();
    let mut saw_503 = false;
    for _ in 0..50 {
        let r = s.send(Method::GET, "/readyz", None, None, &[]).await;
        if r.status == 503 {
            r.assert_error(503, "not_ready");
            saw_503 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_503, "readyz stayed 200 with the database away");
    // Other calls fail cleanly meanwhile (never a 500 with internals).
    let r = s.get("/whoami", &t).await;
    assert!(r.status == 503 || r.status == 500, "{}", r.text);
    assert!(
        !r.text.contains("sqlx") && !r.text.contains("postgres"),
        "{}",
        r.text
    );
    admin
        .execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    admin.close().await.ok();
    let mut back = false;
    for _ in 0..100 {
        if s.send(Method::GET, "/readyz", None, None, &[]).await.status == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "readyz did not recover without a restart");
    assert_eq!(s.get("/whoami", &t).await.status, 200);
}
