//! Operations: health, readiness, graceful shutdown, configuration errors,
//! migrations (SPEC §1; SECURITY R30, R38).

use std::process::Command;

use reqwest::Method;

use crate::harness::{Server, bin};

#[tokio::test]
async fn health_and_readiness_need_no_auth() {
    let s = Server::start().await;
    let h = s.send(Method::GET, "/healthz", None, None, &[]).await;
    assert_eq!((h.status, h.text.as_str()), (200, "ok\n"));
    let r = s.send(Method::GET, "/readyz", None, None, &[]).await;
    assert_eq!((r.status, r.text.as_str()), (200, "ready\n"));
}

#[tokio::test]
async fn sigterm_exits_zero_and_data_survives_a_restart() {
    let mut s = Server::start().await;
    let t = s.login("restart@example.com").await;
    let status = s.stop(false).expect("was running");
    assert!(status.success(), "{status:?}");
    let s = s.restart(false, &[]).await;
    assert_eq!(
        s.get("/whoami", &t).await.status,
        200,
        "token lost across restart"
    );
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_write_r30() {
    let s = Server::builder()
        .env("CRMKIT_LIMIT_CONTACTS", "100000")
        .start()
        .await;
    let t = s.login("r30@example.com").await;
    // 500 acknowledged creates, then a burst still in flight at the kill.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..5 {
        let (http, url, t, acked) = (
            s.http.clone(),
            s.url("/contacts?format=json"),
            t.clone(),
            acked.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                let r = http
                    .post(&url)
                    .bearer_auth(&t)
                    .body(format!(r#"{{"name":"d{w}-{i}"}}"#))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                let v: serde_json::Value = r.json().await.unwrap();
                acked
                    .lock()
                    .unwrap()
                    .push(v["data"]["id"].as_str().unwrap().to_string());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut burst = Vec::new();
    for w in 0..4 {
        let (http, url, t, acked) = (
            s.http.clone(),
            s.url("/contacts?format=json"),
            t.clone(),
            acked.clone(),
        );
        burst.push(tokio::spawn(async move {
            for i in 0..1000 {
                let Ok(r) = http
                    .post(&url)
                    .bearer_auth(&t)
                    .body(format!(r#"{{"name":"b{w}-{i}"}}"#))
                    .send()
                    .await
                else {
                    return;
                };
                if r.status() != 201 {
                    return;
                }
                let Ok(v) = r.json::<serde_json::Value>().await else {
                    return;
                };
                acked
                    .lock()
                    .unwrap()
                    .push(v["data"]["id"].as_str().unwrap().to_string());
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let s = s.restart(true, &[]).await;
    for b in burst {
        let _ = b.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 500);
    // Walking every page finds each acknowledged id exactly once.
    let mut seen = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/contacts?limit=200&cursor={c}"),
            None => "/contacts?limit=200".to_string(),
        };
        let r = s.get(&path, &t).await;
        assert_eq!(r.status, 200, "old token or listing failed: {}", r.text);
        for line in r.text.lines().filter(|l| l.starts_with("contact/")) {
            let id = line
                .split_whitespace()
                .next()
                .unwrap()
                .trim_start_matches("contact/")
                .to_string();
            assert!(seen.insert(id), "a row came twice");
        }
        cursor = r.next_cursor();
        if cursor.is_none() {
            break;
        }
    }
    for id in &acked {
        assert!(seen.contains(id), "acknowledged {id} was lost");
    }
    assert_eq!(
        s.post("/contacts", Some(&t), r#"{"name":"after"}"#)
            .await
            .status,
        201
    );
    if crate::BACKEND == crate::harness::Backend::Sqlite {
        use sea_orm::ConnectionTrait;
        let db = crate::harness::open_db(&s).await;
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "PRAGMA integrity_check".to_string(),
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.try_get::<String>("", "integrity_check").unwrap(), "ok");
    }
}

fn serve_with(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("serve").args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("CRMKIT_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn invalid_settings_stop_start_up_with_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("x.db").display());
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "bind = \"127.0.0.1:0\"\nsmtp_host = \"x\"\n").unwrap();
    let cfg = cfg.display().to_string();
    for (args, env, needle) in [
        (vec!["--bind", "nope"], vec![], "bind"),
        (
            vec!["--token-idle-ttl", "forever"],
            vec![],
            "token_idle_ttl",
        ),
        (
            vec![],
            vec![("CRMKIT_TOKEN_IDLE_TTL", "1 fortnight")],
            "token_idle_ttl",
        ),
        (vec!["--base-url", "crm.example.com"], vec![], "base_url"),
        (
            vec!["--smtp-url", "mail.example.com:25"],
            vec![],
            "smtp_url",
        ),
        (
            vec![],
            vec![("CRMKIT_LIMIT_CONTACTS", "lots")],
            "CRMKIT_LIMIT_CONTACTS",
        ),
        (vec!["--config", cfg.as_str()], vec![], "smtp_host"),
    ] {
        let mut all = vec!["--database-url", db.as_str()];
        all.extend(args);
        let (code, err) = serve_with(&all, &env);
        assert_eq!(code, 2, "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[test]
fn migrate_dry_run_lists_pending_steps_then_none() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    let run = |extra: &[&str]| {
        let out = Command::new(bin())
            .arg("migrate")
            .args(extra)
            .args(["--database-url", &db])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let dry = run(&["--dry-run"]);
    assert!(dry.contains("would apply m20261128_000001_init"), "{dry}");
    let again = run(&["--dry-run"]);
    assert_eq!(dry, again, "dry run changed something");
    assert!(run(&[]).contains("applied m20261128_000001_init"));
    assert!(run(&["--dry-run"]).contains("no pending migrations"));
}

#[test]
fn version_and_help_work_without_a_server() {
    let out = Command::new(bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("crmkit "));
    let out = Command::new(bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("serve") && help.contains("Exit codes"),
        "{help}"
    );
}

#[test]
fn a_malformed_postgres_url_is_a_start_up_error() {
    for url in [
        "postgres://user@host:notaport/db",
        "postgres://",
        "postgres://:5432/db",
    ] {
        let (code, err) = serve_with(&["--database-url", url], &[]);
        assert_eq!(code, 2, "{url}: {err}");
        assert!(err.contains("database_url"), "{err}");
    }
}

#[test]
fn an_unreachable_database_is_retried_then_reported() {
    let started = std::time::Instant::now();
    let (code, err) = serve_with(
        &[
            "--database-url",
            "postgres://postgres@127.0.0.1:1/none",
            "--bind",
            "127.0.0.1:0",
        ],
        &[("CRMKIT_DB_STARTUP_WAIT", "5s")],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach the database"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert!(err.contains("retrying"), "no retries: {err}");
}

/// Sustained parallel writes must not grow SQLite's WAL without bound (a read
/// held open across writes would block every checkpoint), nor the server's
/// memory: the second half of the writes leaves its resident size where the
/// first half brought it.
#[tokio::test]
async fn the_sqlite_wal_stays_small_under_sustained_writes() {
    if crate::BACKEND != crate::harness::Backend::Sqlite {
        return;
    }
    let s = Server::builder()
        .env("CRMKIT_LIMIT_CONTACTS", "100000")
        .start()
        .await;
    let t = s.login("wal@example.com").await;
    let mut rss = Vec::new();
    for half in 0..2 {
        write_burst(&s, &t, half * 125..(half + 1) * 125).await;
        rss.push(s.rss_kib());
    }
    assert!(
        rss[1] < rss[0] + 32 * 1024,
        "resident memory grew from {} to {} KiB over the second 1,000 creates",
        rss[0],
        rss[1]
    );
    let wal = s.dir.path().join("crmkit.db-wal");
    let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(
        size < 16 * 1024 * 1024,
        "WAL grew to {size} bytes after 2000 creates"
    );
    let db = crate::harness::open_db(&s).await;
    assert_eq!(
        crate::harness::count(&db, "SELECT COUNT(*) AS n FROM contacts").await,
        2000
    );
}

/// Eight writers, each creating one contact per `i` and reading between creates.
async fn write_burst(s: &Server, t: &str, range: std::ops::Range<usize>) {
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (http, url, t, range) = (
            s.http.clone(),
            s.url("/contacts"),
            t.to_string(),
            range.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for i in range {
                let body = format!(r#"{{"name":"Wal {w}-{i}","email":"w{w}-{i}@example.com","tags":["a","b"],"custom":{{"k":{i}}}}}"#);
                let r = http.post(&url).bearer_auth(&t).body(body).send().await.unwrap();
                assert_eq!(r.status(), 201);
                // Reads in between, as agents do.
                let _ = http.get(format!("{}?limit=5&search=wal", url)).bearer_auth(&t).send().await.unwrap().text().await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// 200 clients at once all get an answer (2xx, or 503 with Retry-After), none hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_connections_all_get_answers() {
    let s = Server::start().await;
    let t = s.login("crowd@example.com").await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (url, t) = (
            s.url(if i % 2 == 0 {
                "/contacts?limit=5"
            } else {
                "/contacts"
            }),
            t.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // A client (and so a connection) of its own each.
            let http = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .unwrap();
            let rb = if i % 2 == 0 {
                http.get(url)
            } else {
                http.post(url).body(format!(r#"{{"name":"c{i}"}}"#))
            };
            let r = rb.bearer_auth(t).send().await.expect("no answer");
            let status = r.status().as_u16();
            let retry = r.headers().contains_key("retry-after");
            (status, retry)
        }));
    }
    for task in tasks {
        let (status, retry) = task.await.unwrap();
        assert!(status < 300 || (status == 503 && retry), "{status}");
    }
    assert_eq!(
        s.send(Method::GET, "/healthz", None, None, &[])
            .await
            .status,
        200
    );
}

/// Concurrent writers share SQLite commits (group commit); each keeps its own
/// outcome: an upsert of a taken email updates, a full plan fails only that create, a client that
/// hangs up mid-request loses only its own write, and every 201 is kept with
/// its audit row and counted against the cap exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_keep_their_own_outcomes() {
    let s = Server::builder()
        .env("CRMKIT_LIMIT_CONTACTS", "300")
        .start()
        .await;
    let t = s.login("group@example.com").await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (http, url, t) = (s.http.clone(), s.url("/contacts?format=json"), t.clone());
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..60 {
                let email = if i % 3 == 2 {
                    "taken@example.com".to_string()
                } else {
                    format!("w{w}-{i}@example.com")
                };
                let r = http
                    .post(&url)
                    .bearer_auth(&t)
                    .body(format!(r#"{{"name":"kept {w}-{i}","email":"{email}"}}"#))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                statuses.push((status, text));
            }
            statuses
        }));
    }
    // Clients that give up after a millisecond, while the others write.
    let (http, url, tk) = (s.http.clone(), s.url("/contacts"), t.clone());
    let quitter = tokio::spawn(async move {
        for i in 0..60 {
            let _ = http
                .post(&url)
                .bearer_auth(&tk)
                .timeout(std::time::Duration::from_millis(1))
                .body(format!(r#"{{"name":"quit {i}"}}"#))
                .send()
                .await;
        }
    });
    let mut created = 0;
    for task in tasks {
        for (status, text) in task.await.unwrap() {
            // 200: the taken email upserts (updates) its contact.
            assert!(
                matches!(status, 200 | 201 | 403),
                "unexpected {status}: {text}\n{}",
                s.log_text()
            );
            if status == 201 {
                created += 1;
            }
        }
    }
    quitter.await.unwrap();
    let db = crate::harness::open_db(&s).await;
    let kept = crate::harness::count(
        &db,
        "SELECT COUNT(*) AS n FROM contacts WHERE name LIKE 'kept %'",
    )
    .await;
    let all = crate::harness::count(&db, "SELECT COUNT(*) AS n FROM contacts").await;
    assert_eq!(kept, created, "every 201, and nothing else, was kept");
    assert!(all <= 300, "the cap of 300 held: {all}");
    // 8×40 unique emails plus one first use of the taken one exceed the cap
    // of 300: the cap, not the input, is what stops the creates.
    assert!(created >= 300 - 60, "{created} created");
    let audited = crate::harness::count(
        &db,
        "SELECT COUNT(*) AS n FROM audit WHERE action = 'contact.create'",
    )
    .await;
    assert_eq!(audited, all, "one audit row per kept contact");
    let counted = crate::harness::count(&db, "SELECT contacts_count AS n FROM workspaces").await;
    assert_eq!(counted, all, "the cap counter matches the rows");
    if s.db_url.starts_with("sqlite") {
        // Each writer's search entry lives and dies with its savepoint.
        let indexed = crate::harness::count(&db, "SELECT COUNT(*) AS n FROM contacts_fts").await;
        assert_eq!(indexed, all, "one search entry per kept contact");
        let orphans = crate::harness::count(
            &db,
            "SELECT COUNT(*) AS n FROM contacts_fts f \
             WHERE NOT EXISTS (SELECT 1 FROM contacts c WHERE c.search_key = f.rowid)",
        )
        .await;
        assert_eq!(orphans, 0, "no search entry without its contact");
    }
    let taken = crate::harness::count(
        &db,
        "SELECT COUNT(*) AS n FROM contacts WHERE email = 'taken@example.com'",
    )
    .await;
    assert_eq!(taken, 1);
}

/// CRMKIT_BODY_LIMIT sets the largest body: over it is a 413 naming the
/// limit, under it is served.
#[tokio::test]
async fn the_body_limit_is_a_setting() {
    let s = Server::builder()
        .env("CRMKIT_BODY_LIMIT", "64KiB")
        .start()
        .await;
    let t = s.login("limit@example.com").await;
    let body = |n: usize| {
        serde_json::json!({"name": "Big", "custom": {"notes": "x".repeat(n)}}).to_string()
    };
    let r = s.post("/contacts", Some(&t), &body(100 * 1024)).await;
    r.assert_error(413, "payload_too_large");
    assert!(r.text.contains("64 KiB"), "{}", r.text);
    let r = s.post("/contacts", Some(&t), &body(32 * 1024)).await;
    assert_eq!(r.status, 201, "{}", r.text);
}

/// SIGTERM is graceful (SPEC §1): a request in flight when it arrives (here
/// one whose body is still coming) is answered and its write kept, and only
/// then does the process exit 0.
#[tokio::test]
async fn sigterm_lets_a_request_in_flight_finish() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = Server::start().await;
    let t = s.login("inflight@example.com").await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = r#"{"name":"In flight"}"#;
    let head = format!(
        "POST /contacts?format=json HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&body.as_bytes()[..5]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    s.terminate();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    sock.write_all(&body.as_bytes()[5..]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        sock.read_to_end(&mut answer),
    )
    .await
    .expect("the answer came")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let id = answer
        .split("\"id\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("an id")
        .to_string();
    let status = s.stop(false).expect("was running");
    assert!(status.success(), "{status:?}");
    let s = s.restart(false, &[]).await;
    assert_eq!(s.get(&format!("/contacts/{id}"), &t).await.status, 200);
}

/// With no configuration at all, `crmkit serve` makes its SQLite database in
/// the user's data directory and listens on 127.0.0.1:8080 in local mail
/// mode (SPEC §1). Should that port be taken on this machine, start-up must
/// instead fail with one line naming the address.
#[test]
fn zero_configuration_start_up() {
    use std::io::BufRead;
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    let mut cmd = Command::new(bin());
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("XDG_DATA_HOME", &data)
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let listening = loop {
        match rx.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains("listening on http://127.0.0.1:8080") {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    if !listening {
        // The port is someone else's here: the refusal names it.
        let status = child.wait().unwrap();
        assert!(!status.success(), "{seen}");
        assert!(seen.contains("127.0.0.1:8080"), "{seen}");
        return;
    }
    let health = std::process::Command::new("curl")
        .args(["-s", "http://127.0.0.1:8080/healthz"])
        .output();
    let db: Vec<_> = walk(&data)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "db"))
        .collect();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().unwrap();
    // The rest of the log, up to the exit.
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(5)) {
        seen.push_str(&line);
        seen.push('\n');
    }
    assert!(status.success(), "{status:?}\n{seen}");
    assert!(seen.to_lowercase().contains("local mail mode"), "{seen}");
    if let Ok(out) = health {
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    }
    assert_eq!(
        db.len(),
        1,
        "one database under the data dir: {db:?}\n{seen}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
