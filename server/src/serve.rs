//! Start-up and shutdown: settings, logging, database, migrations, listener.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::app::{AppState, app};
use crate::config::{ConfigError, MailMode, ServeArgs, Settings, redact_url};
use crate::db;
use crate::mail::Mailer;

/// Why `serve` stopped with an error: bad configuration (exit 2) or a runtime
/// failure such as an unreachable database (exit 1).
#[derive(Debug)]
pub enum ServeError {
    Config(ConfigError),
    Runtime(String),
    NotFound(String),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Config(e) => write!(f, "{e}"),
            ServeError::Runtime(e) | ServeError::NotFound(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for ServeError {}

impl ServeError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::Config(_) => 2,
            ServeError::Runtime(_) => 1,
            ServeError::NotFound(_) => 3,
        }
    }
}

fn init_logging(filter: &str) {
    // sqlx logs every statement at INFO, and rmcp each MCP call (with what
    // the client says of itself); keep them at DEBUG unless asked.
    let filter = format!("sqlx=warn,sea_orm=warn,rmcp=warn,{filter}");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .with_target(false)
        .try_init();
}

/// `crmkit serve`: runs until SIGTERM or SIGINT, then finishes in-flight requests.
pub async fn run(args: ServeArgs) -> Result<(), ServeError> {
    let settings = Settings::resolve(&args).map_err(ServeError::Config)?;
    init_logging(&settings.log);
    let mailer = Mailer::new(&settings).map_err(ServeError::Config)?;
    let conn = connect_with_retry(&settings).await?;
    db::migrate(&conn)
        .await
        .map_err(|e| ServeError::Runtime(format!("migration failed: {e}")))?;
    let listener = TcpListener::bind(settings.bind)
        .await
        .map_err(|e| ServeError::Runtime(format!("cannot listen on {}: {e}", settings.bind)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Runtime(e.to_string()))?;
    // With port 0 the real port is known only now.
    let mut settings = settings;
    if settings.bind.port() == 0 && settings.base_url == format!("http://{}", settings.bind) {
        settings.base_url = format!("http://{addr}");
    }
    tracing::info!(
        "crmkit {} listening on http://{addr} (base URL {}; database {})",
        env!("CARGO_PKG_VERSION"),
        settings.base_url,
        redact_url(&settings.database_url)
            .split('?')
            .next()
            .unwrap_or("")
    );
    if settings.mail == MailMode::Local {
        tracing::warn!(
            "local mail mode: no CRMKIT_SMTP_URL set, so sign-in codes are written to this log on lines marked LOCAL-MAIL (fine for one person on their own machine)"
        );
    }
    let key = db::cursor_key(&conn)
        .await
        .map_err(|e| ServeError::Runtime(format!("cannot read the server key: {e}")))?;
    let state = AppState::new(conn.clone(), settings, mailer, key);
    serve_on(listener, state, shutdown_signal())
        .await
        .map_err(|e| ServeError::Runtime(format!("server error: {e}")))?;
    conn.close().await.ok();
    tracing::info!("stopped");
    Ok(())
}

/// Opens the database, retrying with backoff while it is unreachable (a
/// database that starts after the server is normal in a deployment), up to
/// `db_startup_wait`.
async fn connect_with_retry(settings: &Settings) -> Result<db::Db, ServeError> {
    let started = std::time::Instant::now();
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        let left = settings
            .db_startup_wait
            .saturating_sub(started.elapsed())
            .max(std::time::Duration::from_millis(500));
        let attempt =
            match tokio::time::timeout(left.min(std::time::Duration::from_secs(2)), async {
                let conn = db::connect(settings).await?;
                conn.ping().await.map(|_| conn)
            })
            .await
            {
                Ok(r) => r,
                Err(_) => Err(sea_orm::DbErr::Custom(
                    "connection attempt timed out".into(),
                )),
            };
        match attempt {
            Ok(conn) => return Ok(conn),
            Err(e) if started.elapsed() + delay < settings.db_startup_wait => {
                tracing::warn!(
                    "database not reachable yet ({e}); retrying in {} ms",
                    delay.as_millis()
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => {
                return Err(ServeError::Runtime(format!(
                    "cannot reach the database {} after {:?}: {e}",
                    redact_url(&settings.database_url),
                    settings.db_startup_wait
                )));
            }
        }
    }
}

/// How long a connection may take to send a request's headers, and may sit
/// idle between requests, before it is closed. Without it a client that
/// opened connections and never finished a request held them forever, until
/// the process ran out of file descriptors (a slowloris).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves `state` on `listener` until `shutdown` resolves (test seam): HTTP/1.1
/// with keep-alive and a [`HEADER_READ_TIMEOUT`]; on shutdown the listener
/// closes, requests in flight finish, and idle connections close.
pub async fn serve_on(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, app(state), shutdown, HEADER_READ_TIMEOUT).await
}

/// The accept loop behind [`serve_on`], for any router.
async fn serve_router(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    header_read_timeout: std::time::Duration,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait for some
                    // to close rather than spin.
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                    ) {
                        tracing::error!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let service =
            router
                .clone()
                .map_request(move |req: axum::http::Request<hyper::body::Incoming>| {
                    let mut req = req.map(axum::body::Body::new);
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo::<SocketAddr>(addr));
                    req
                });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .serve_connection(
                TokioIo::new(stream),
                hyper_util::service::TowerToHyperService::new(service),
            );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

/// `crmkit migrate [--dry-run]`.
pub async fn migrate(args: ServeArgs, dry_run: bool) -> Result<Vec<String>, ServeError> {
    let settings = Settings::resolve(&args).map_err(ServeError::Config)?;
    init_logging(&settings.log);
    let conn = db::connect(&settings)
        .await
        .map_err(|e| ServeError::Runtime(format!("cannot open the database: {e}")))?;
    let pending = db::pending_migrations(&conn)
        .await
        .map_err(|e| ServeError::Runtime(format!("cannot read migrations: {e}")))?;
    if !dry_run {
        db::migrate(&conn)
            .await
            .map_err(|e| ServeError::Runtime(format!("migration failed: {e}")))?;
    }
    conn.close().await.ok();
    Ok(pending)
}

/// `crmkit admin set-plan`: puts a workspace (`w_…`) or a user (by email, for
/// the workspaces cap) on a configured plan, straight in the database.
pub async fn set_plan(args: ServeArgs, target: String, plan: String) -> Result<String, ServeError> {
    let settings = Settings::resolve(&args).map_err(ServeError::Config)?;
    if !settings.plans.contains_key(&plan) {
        let known: Vec<&str> = settings.plans.keys().map(String::as_str).collect();
        return Err(ServeError::Config(ConfigError(format!(
            "no plan {plan:?} is configured (known: {}); add a [plans.{plan}] table to the config file",
            known.join(", ")
        ))));
    }
    let conn = db::connect(&settings)
        .await
        .map_err(|e| ServeError::Runtime(format!("cannot open the database: {e}")))?;
    db::migrate(&conn)
        .await
        .map_err(|e| ServeError::Runtime(format!("migration failed: {e}")))?;
    let (sql, key, label) = if target.contains('@') {
        (
            "UPDATE users SET plan = ? WHERE email = ?",
            target.to_ascii_lowercase(),
            format!("user {target}"),
        )
    } else {
        let id = crate::wire::handle::parse_ref(crate::wire::handle::Kind::Workspace, &target)
            .map_err(|e| {
                ServeError::Config(ConfigError(format!(
                    "{target:?}: {e}; pass a workspace id (w_…) or a user's email"
                )))
            })?;
        (
            "UPDATE workspaces SET plan = ? WHERE id = ?",
            id.clone(),
            format!("workspace/{id}"),
        )
    };
    use sea_orm::ConnectionTrait;
    let res = conn
        .execute_raw(db::stmt(
            conn.get_database_backend(),
            sql,
            vec![plan.clone().into(), key.into()],
        ))
        .await
        .map_err(|e| ServeError::Runtime(format!("cannot update: {e}")))?;
    conn.close().await.ok();
    if res.rows_affected() == 0 {
        return Err(ServeError::NotFound(format!("no {label} in this database")));
    }
    Ok(format!("{label} plan={plan}"))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads until the server closes the connection; how long that took.
    async fn until_closed(stream: &mut tokio::net::TcpStream) -> (Duration, String) {
        let start = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => panic!("the connection stayed open for 10 s"),
            }
        }
        (start.elapsed(), String::from_utf8_lossy(&got).into_owned())
    }

    /// A connection that never finishes its headers, or sits idle after a
    /// request, is closed after the header read timeout; requests sent in
    /// time are answered, on the same connection too.
    #[tokio::test]
    async fn slow_and_idle_connections_are_closed() {
        let router = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(super::serve_router(
            listener,
            router,
            async {
                stopped.await.ok();
            },
            Duration::from_millis(400),
        ));
        // Headers that never end.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        // Two requests in time on one connection, then silence.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        for _ in 0..2 {
            idle.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 512];
            let n = idle.read(&mut buf).await.unwrap();
            let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(
                answer.starts_with("HTTP/1.1 200") && answer.ends_with("pong"),
                "{answer}"
            );
        }
        let (took, said) = until_closed(&mut slow).await;
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert!(!said.contains("pong"), "{said}");
        let (took, _) = until_closed(&mut idle).await;
        assert!(took < Duration::from_secs(3), "{took:?}");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
