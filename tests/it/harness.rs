//! Test harness: runs the real `crmkit` binary as a server on a free loopback
//! port with a fresh SQLite file and a real SMTP listener, and talks to it over
//! real HTTP.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::smtp::{Mode, Security, SmtpServer, code_in};

pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Resp {
    /// The cursor of a text page's `# next:` line, if it has one.
    pub fn next_cursor(&self) -> Option<String> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix("# next: "))
            .map(str::to_string)
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
    /// The `error:` code of a plain-text error answer.
    pub fn error_code(&self) -> String {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix("error: "))
            .unwrap_or("")
            .to_string()
    }
    /// Asserts status and error code, and that a hint is present.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(self.error_code(), code, "{}", self.text);
        assert!(self.text.contains("\nhint: "), "no hint: {}", self.text);
    }
}

/// Which database the servers of this test binary use: `it` runs the suite on
/// SQLite, `it_pg` runs the same files on PostgreSQL.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server that test databases are created on.
pub fn postgres_admin_url() -> String {
    std::env::var("CRMKIT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh, uniquely named database on the test PostgreSQL server.
pub async fn create_pg_database() -> (String, String) {
    use sea_orm::ConnectionTrait;
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let name = format!(
        "crmkit_t{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
        rand_suffix()
    );
    let admin = postgres_admin_url();
    let db = sea_orm::Database::connect(&admin)
        .await
        .expect("connect to CRMKIT_TEST_POSTGRES_URL");
    db.execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    db.close().await.ok();
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .unwrap_or(admin);
    (name.clone(), format!("{base}/{name}"))
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

/// Drops a test database (from Drop, so on a thread with its own runtime).
pub fn drop_pg_database(name: String) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use sea_orm::ConnectionTrait;
            if let Ok(db) = sea_orm::Database::connect(&postgres_admin_url()).await {
                let _ = db
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
                db.close().await.ok();
            }
        });
    })
    .join();
}

pub struct Builder {
    env: Vec<(String, String)>,
    smtp: Option<Mode>,
    smtp_security: Security,
    /// The server trusts the test SMTP server's certificate (`CRMKIT_SMTP_CA_FILE`).
    smtp_ca: bool,
    backend: Option<Backend>,
    database: Option<String>,
}

pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub log: Arc<Mutex<String>>,
    pub smtp: Option<SmtpServer>,
    /// The server's database URL (SQLite file or PostgreSQL database).
    pub db_url: String,
    /// The PostgreSQL database to drop at the end, if any.
    pg_name: Option<String>,
    pub dir: Arc<tempfile::TempDir>,
    pub http: reqwest::Client,
    env: Vec<(String, String)>,
}

impl Builder {
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    /// Runs this server on another backend than the binary's.
    pub fn backend(mut self, b: Backend) -> Self {
        self.backend = Some(b);
        self
    }
    /// Runs this server on an existing database (not dropped afterwards).
    pub fn database(mut self, url: &str) -> Self {
        self.database = Some(url.to_string());
        self
    }
    pub fn local_mail(mut self) -> Self {
        self.smtp = None;
        self
    }
    pub fn smtp(mut self, mode: Mode) -> Self {
        self.smtp = Some(mode);
        self
    }
    /// The test SMTP server speaks STARTTLS or TLS; with `trusted`, the
    /// server is given its certificate as `CRMKIT_SMTP_CA_FILE`.
    pub fn smtp_security(mut self, security: Security, trusted: bool) -> Self {
        self.smtp_security = security;
        self.smtp_ca = trusted;
        self
    }
    pub async fn start(self) -> Server {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let (db_url, pg_name) = match (
            self.database.clone(),
            self.backend.unwrap_or(crate::BACKEND),
        ) {
            (Some(url), _) => (url, None),
            (None, b) => match b {
                Backend::Sqlite => (
                    format!(
                        "sqlite://{}?mode=rwc",
                        dir.path().join("crmkit.db").display()
                    ),
                    None,
                ),
                Backend::Postgres => {
                    let (name, url) = create_pg_database().await;
                    (url, Some(name))
                }
            },
        };
        let smtp = match self.smtp {
            Some(mode) => Some(SmtpServer::start_with(mode, self.smtp_security).await),
            None => None,
        };
        let mut env = self.env;
        if let Some(s) = &smtp {
            env.push(("CRMKIT_SMTP_URL".into(), s.url()));
            if let (true, Some(pem)) = (self.smtp_ca, &s.ca_pem) {
                let path = dir.path().join("smtp-ca.pem");
                std::fs::write(&path, pem).unwrap();
                env.push(("CRMKIT_SMTP_CA_FILE".into(), path.display().to_string()));
            }
        }
        Server::spawn(dir, db_url, pg_name, smtp, env).await
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_crmkit")
}

impl Server {
    pub fn builder() -> Builder {
        Builder {
            env: Vec::new(),
            smtp: Some(Mode::Accept),
            smtp_security: Security::Plain,
            smtp_ca: true,
            backend: None,
            database: None,
        }
    }

    pub async fn start() -> Server {
        Server::builder().start().await
    }

    async fn spawn(
        dir: Arc<tempfile::TempDir>,
        db_url: String,
        pg_name: Option<String>,
        smtp: Option<SmtpServer>,
        env: Vec<(String, String)>,
    ) -> Server {
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--bind")
            .arg("127.0.0.1:0")
            .arg("--database-url")
            .arg(&db_url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("CRMKIT_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("CRMKIT_LOG", "info").env("NO_COLOR", "1");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn crmkit serve");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stderr = child.stderr.take().unwrap();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("listening on http://") {
                    let addr: String = line[i + "listening on ".len()..]
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let _ = tx.send(addr);
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start; log:\n{}", log.lock().unwrap());
            }
        };
        Server {
            child: Some(child),
            base,
            log,
            smtp,
            db_url,
            pg_name,
            dir,
            http: reqwest::Client::builder().build().unwrap(),
            env,
        }
    }

    /// Stops this process (SIGKILL when `hard`) and starts a new one on the same
    /// database with the same settings plus `extra_env`.
    pub async fn restart(mut self, hard: bool, extra_env: &[(&str, &str)]) -> Server {
        self.stop(hard);
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .filter(|(k, _)| k != "CRMKIT_SMTP_URL")
            .cloned()
            .collect();
        if let Some(s) = &self.smtp {
            env.push(("CRMKIT_SMTP_URL".into(), s.url()));
        }
        for (k, v) in extra_env {
            env.push((k.to_string(), v.to_string()));
        }
        Server::spawn(
            self.dir.clone(),
            self.db_url.clone(),
            self.pg_name.take(),
            self.smtp.clone(),
            env,
        )
        .await
    }

    /// The server process's resident memory in KiB (Linux `VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Sends SIGTERM and returns at once (see [`Server::stop`] to wait).
    pub fn terminate(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
    }

    /// Stops the process; returns its exit status.
    pub fn stop(&mut self, hard: bool) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        if hard {
            let _ = child.kill();
        } else {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut rb = self.http.request(method, self.url(path));
        if let Some(t) = token {
            rb = rb.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.body(b.to_string());
        }
        let res = rb.send().await.expect("request failed");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap_or_default();
        assert!(
            status < 500 || status == 502 || status == 503,
            "server error {status}: {text}"
        );
        if status >= 400 {
            assert!(
                headers.contains_key("x-request-id"),
                "no x-request-id on error: {text}"
            );
        }
        Resp {
            status,
            headers,
            text,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.send(Method::GET, path, Some(token), None, &[]).await
    }
    pub async fn post(&self, path: &str, token: Option<&str>, body: &str) -> Resp {
        self.send(Method::POST, path, token, Some(body), &[]).await
    }
    pub async fn patch(&self, path: &str, token: &str, body: &str) -> Resp {
        self.send(Method::PATCH, path, Some(token), Some(body), &[])
            .await
    }
    pub async fn delete(&self, path: &str, token: &str) -> Resp {
        self.send(Method::DELETE, path, Some(token), None, &[])
            .await
    }

    pub fn smtp(&self) -> &SmtpServer {
        self.smtp
            .as_ref()
            .expect("this server has no SMTP listener")
    }

    /// Waits for the `n`-th (1-based) mail to `email` and returns its code.
    pub async fn nth_code(&self, email: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mails = self.smtp().mails_to(email);
            if mails.len() >= n {
                return code_in(&mails[n - 1].data).expect("no code in mail");
            }
            assert!(Instant::now() < deadline, "no mail #{n} to {email}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Requests a code and returns it (the newest mail to that address).
    pub async fn request_code(&self, email: &str) -> String {
        let before = self.smtp().mails_to(email).len();
        let r = self
            .post("/auth/request", None, &format!("{{\"email\":\"{email}\"}}"))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        self.nth_code(email, before + 1).await
    }

    /// Signs in and returns the bearer token.
    pub async fn login(&self, email: &str) -> String {
        self.login_named(email, "test").await
    }

    pub async fn login_named(&self, email: &str, name: &str) -> String {
        let code = self.request_code(email).await;
        let r = self
            .send(
                Method::POST,
                "/auth/verify?format=json",
                None,
                Some(&format!(
                    "{{\"email\":\"{email}\",\"code\":\"{code}\",\"token_name\":\"{name}\"}}"
                )),
                &[],
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.json()["data"]["token"].as_str().unwrap().to_string()
    }

    /// The bare id of the workspace a token acts in.
    pub async fn ws_of(&self, token: &str) -> String {
        self.get("/whoami?format=json", token).await.json()["data"]["workspace"]
            .as_str()
            .unwrap()
            .trim_start_matches("workspace/")
            .to_string()
    }

    /// The admin behind `admin` invites `email` as a member of the workspace
    /// `admin` acts in; the member signs in and mints a token there named
    /// `token_name`. Returns (workspace id, the member's token there, the
    /// member's token for their personal workspace).
    pub async fn join_as_member(
        &self,
        admin: &str,
        email: &str,
        token_name: &str,
    ) -> (String, String, String) {
        let ws = self.ws_of(admin).await;
        let invite = format!("{{\"email\":\"{email}\",\"role\":\"member\"}}");
        let r = self
            .post(&format!("/workspaces/{ws}/invites"), Some(admin), &invite)
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let personal = self.login(email).await;
        let r = self
            .post(
                &format!("/workspaces/{ws}/tokens?format=json"),
                Some(&personal),
                &format!("{{\"token_name\":\"{token_name}\"}}"),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let member = r.json()["data"]["token"].as_str().unwrap().to_string();
        (ws, member, personal)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(name) = self.pg_name.take() {
            drop_pg_database(name);
        }
    }
}

/// An HTTP client whose connections leave from another loopback address
/// (`127.0.0.2`, …), so the server sees another client IP.
pub fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().expect("an IP address"))
        .build()
        .unwrap()
}

/// The value of `key` on a plain-text record line.
pub fn field(line: &str, key: &str) -> Option<String> {
    crmkit_server::wire::line::parse_line(line)?
        .get(key)
        .map(str::to_string)
}

/// Opens the server's SQLite file directly (for checks no endpoint shows).
pub async fn open_db(s: &Server) -> sea_orm::DatabaseConnection {
    sea_orm::Database::connect(s.db_url.replace("mode=rwc", "mode=rw"))
        .await
        .unwrap()
}

pub async fn count(db: &sea_orm::DatabaseConnection, sql: &str) -> i64 {
    use sea_orm::ConnectionTrait;
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            sql.to_string(),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "n").unwrap()
}

/// An outside part (libfaketime, PostgreSQL, …) a test needs. When it is
/// missing the test prints one line and passes, unless `CRMKIT_TEST_STRICT=1`
/// (as in CI), where a missing part fails the test.
pub fn require(part: &str, available: bool) -> bool {
    if available {
        return true;
    }
    if std::env::var("CRMKIT_TEST_STRICT").is_ok_and(|v| v == "1") {
        panic!("{part} is required (CRMKIT_TEST_STRICT=1) but missing");
    }
    eprintln!("SKIPPED: {part} is not installed here; this test needs it");
    false
}

impl Server {
    /// Another `crmkit serve` process on the same database and SMTP listener,
    /// with the same settings (plus `extra_env`): a second stateless node.
    pub async fn another(&self, extra_env: &[(&str, &str)]) -> Server {
        let mut env = self.env.clone();
        for (k, v) in extra_env {
            env.push((k.to_string(), v.to_string()));
        }
        Server::spawn(
            self.dir.clone(),
            self.db_url.clone(),
            None,
            self.smtp.clone(),
            env,
        )
        .await
    }
}
