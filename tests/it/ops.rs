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
async fn kill_9_loses_no_acknowledged_sign_in_r30() {
    let s = Server::start().await;
    let mut tokens = Vec::new();
    for i in 0..5 {
        tokens.push(s.login(&format!("r30-{i}@example.com")).await);
    }
    let s = s.restart(true, &[]).await;
    for t in &tokens {
        assert_eq!(s.get("/whoami", t).await.status, 200);
    }
    assert_eq!(s.login("r30-new@example.com").await.len(), 46);
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
/// held open across writes would block every checkpoint).
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
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (http, url, t) = (s.http.clone(), s.url("/contacts"), t.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..250 {
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
