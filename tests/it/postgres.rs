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
    let cursor = page.next_cursor().unwrap();
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
    use crmkit_migrations::MigratorTrait;
    let total = crmkit_migrations::Migrator::migrations().len();
    assert!(applied >= total, "nobody applied the migrations");
    let db = sea_orm::Database::connect(&url).await.unwrap();
    let n = crate::harness::count(&db, "SELECT COUNT(*) AS n FROM seaql_migrations").await;
    assert_eq!(n, total as i64);
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

fn migrate_data(from: &str, to: &str) -> (i32, String, String) {
    let out = std::process::Command::new(crate::harness::bin())
        .args(["migrate-data", "--from", from, "--to", to])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test]
async fn a_workspace_moves_from_sqlite_to_postgresql_and_back() {
    use crate::harness::Backend;
    let mut old = Server::builder().backend(Backend::Sqlite).start().await;
    let t = old.login("mover@example.com").await;
    let co = create(
        &old,
        &t,
        "companies",
        json!({"name": "Acme", "domain": "acme.com"}),
    )
    .await;
    let c = create(&old, &t, "contacts", json!({"name": "Jane Mover", "email": "jane@acme.com", "company_id": co, "tags": ["vip"], "custom": {"tier": "gold"}})).await;
    create(
        &old,
        &t,
        "deals",
        json!({"title": "Big", "amount_cents": 100, "currency": "USD", "contact_id": c}),
    )
    .await;
    old.post(
        &format!("/contacts/{c}/activities"),
        Some(&t),
        r#"{"kind":"call","body":"hello"}"#,
    )
    .await;
    let sqlite_url = old.db_url.clone();
    assert!(old.stop(false).unwrap().success());

    let (pg_name, pg_url) = create_pg_database().await;
    let (code, out, err) = migrate_data(&sqlite_url, &pg_url);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("contacts: 1 rows") && out.contains("# copied and verified"),
        "{out}"
    );
    // Into a target that is no longer empty: refused.
    let (code, _, err) = migrate_data(&sqlite_url, &pg_url);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not empty"), "{err}");

    let pg = Server::builder().database(&pg_url).start().await;
    assert_eq!(
        pg.get("/whoami", &t).await.status,
        200,
        "tokens travel with the data"
    );
    let found = pg
        .get("/contacts?search=mover&tags=vip&custom.tier=gold", &t)
        .await;
    assert!(
        found.text.contains(&format!("contact/{c} ")),
        "{}",
        found.text
    );
    assert!(
        pg.get("/audit", &t)
            .await
            .text
            .contains("action=contact.create")
    );
    assert!(
        pg.get(&format!("/activities?contact={c}"), &t)
            .await
            .text
            .contains("body=hello")
    );
    drop(pg);

    // And back into a new SQLite file: the search index is rebuilt.
    let back = format!(
        "sqlite://{}?mode=rwc",
        old.dir.path().join("back.db").display()
    );
    let (code, _, err) = migrate_data(&pg_url, &back);
    assert_eq!(code, 0, "{err}");
    let again = Server::builder().database(&back).start().await;
    let found = again.get("/contacts?search=mover", &t).await;
    assert!(
        found.text.contains(&format!("contact/{c} ")),
        "{}",
        found.text
    );
    drop(again);
    drop_pg_database(pg_name);
}

#[tokio::test]
async fn a_failed_migration_leaves_the_schema_as_it_was() {
    let (name, url) = create_pg_database().await;
    let db = sea_orm::Database::connect(&url).await.unwrap();
    // A table in the way makes the first migration fail half-way.
    db.execute_unprepared("CREATE TABLE audit (x int)")
        .await
        .unwrap();
    let out = std::process::Command::new(crate::harness::bin())
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = crate::harness::count(&db, "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = 'public' AND table_name IN ('users', 'contacts', 'seaql_migrations')").await;
    assert_eq!(n, 0, "tables of the failed migration were left behind");
    db.close().await.ok();
    drop_pg_database(name);
}

/// The plan cap's race on PostgreSQL, made to happen: another transaction
/// holds the workspace row with the last slot taken. A create then waits on
/// that row (its `UPDATE … WHERE n < cap` after its INSERT); when the other
/// transaction commits, the create re-checks, finds no room and is rolled
/// back whole (403); when it rolls back instead, the create takes the slot.
#[tokio::test]
async fn a_create_waiting_for_the_last_slot_rechecks_the_cap() {
    let s = Server::builder()
        .env("CRMKIT_LIMIT_CONTACTS", "3")
        .start()
        .await;
    let t = s.login("race@example.com").await;
    let ws = s.ws_of(&t).await;
    create(&s, &t, "contacts", json!({"name": "One"})).await;
    create(&s, &t, "contacts", json!({"name": "Two"})).await;
    let db = sea_orm::Database::connect(&s.db_url).await.unwrap();
    let rows = format!("SELECT COUNT(*) AS n FROM contacts WHERE workspace_id = '{ws}'");
    let counter = format!("SELECT contacts_count AS n FROM workspaces WHERE id = '{ws}'");
    let waiting = "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'";
    for commit in [true, false] {
        use sea_orm::TransactionTrait;
        let other = db.begin().await.unwrap();
        other
            .execute_unprepared(&format!(
                "UPDATE workspaces SET contacts_count = contacts_count + 1 WHERE id = '{ws}'"
            ))
            .await
            .unwrap();
        let racer = {
            let (base, http, t) = (s.base.clone(), s.http.clone(), t.clone());
            tokio::spawn(async move {
                let r = http
                    .post(format!("{base}/contacts?format=json"))
                    .bearer_auth(t)
                    .body(r#"{"name":"Racer"}"#)
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            })
        };
        // The create is waiting for the workspace row.
        let started = std::time::Instant::now();
        while crate::harness::count(&db, waiting).await == 0 {
            assert!(!racer.is_finished(), "the create did not wait for the row");
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the create never waited"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if commit {
            other.commit().await.unwrap();
            let (status, body) = racer.await.unwrap();
            assert_eq!(status, 403, "{body}");
            assert!(body.contains("plan_limit_reached"), "{body}");
            // Its row was rolled back with it; the slot is the other's.
            assert_eq!(crate::harness::count(&db, &rows).await, 2);
            assert_eq!(crate::harness::count(&db, &counter).await, 3);
            // Give the slot back for the second half.
            db.execute_unprepared(&format!(
                "UPDATE workspaces SET contacts_count = 2 WHERE id = '{ws}'"
            ))
            .await
            .unwrap();
        } else {
            other.rollback().await.unwrap();
            let (status, body) = racer.await.unwrap();
            assert_eq!(status, 201, "{body}");
            assert_eq!(crate::harness::count(&db, &rows).await, 3);
            assert_eq!(crate::harness::count(&db, &counter).await, 3);
        }
    }
    db.close().await.ok();
}
