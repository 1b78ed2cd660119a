//! The ceiling of the benchmark: the least an HTTP server can do to answer
//! `GET /contacts/{id}` from crmkit's SQLite file — axum, the same SQLite
//! driver and pool settings as crmkit, one primary-key SELECT, one line out.
//! No auth, no middleware, no negotiation: what crmkit's W2 is measured against.
//!
//! Usage: crmkit-bench-ceiling DATABASE_FILE PORT

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sea_orm::sqlx::{Row, SqlitePool};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone)]
struct Ceiling {
    pool: SqlitePool,
    workspace: String,
}

async fn contact(State(c): State<Ceiling>, Path(id): Path<String>) -> (StatusCode, String) {
    let row = sea_orm::sqlx::query(
        "SELECT id, name, email FROM contacts WHERE workspace_id = ? AND id = ?",
    )
    .bind(&c.workspace)
    .bind(&id)
    .fetch_optional(&c.pool)
    .await;
    match row {
        Ok(Some(r)) => {
            let name: Option<String> = r.get("name");
            let email: Option<String> = r.get("email");
            (
                StatusCode::OK,
                format!(
                    "contact/{id} name={:?} email={}\n",
                    name.unwrap_or_default(),
                    email.unwrap_or_default()
                ),
            )
        }
        Ok(None) => (StatusCode::NOT_FOUND, "not found\n".into()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(file), Some(port)) = (args.next(), args.next()) else {
        eprintln!("usage: crmkit-bench-ceiling DATABASE_FILE PORT");
        std::process::exit(2);
    };
    let opts = SqliteConnectOptions::new()
        .filename(&file)
        .journal_mode(SqliteJournalMode::Wal)
        .pragma("cache_size", "-16384");
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .min_connections(1)
        .connect_with(opts)
        .await
        .expect("open the database");
    let workspace: String = sea_orm::sqlx::query("SELECT workspace_id FROM contacts LIMIT 1")
        .fetch_one(&pool)
        .await
        .expect("a seeded database")
        .get(0);
    let app = Router::new()
        .route("/contacts/{id}", get(contact))
        .route("/readyz", get(|| async { "ok\n" }))
        .with_state(Ceiling { pool, workspace });
    let listener =
        tokio::net::TcpListener::bind(("127.0.0.1", port.parse::<u16>().expect("a port")))
            .await
            .expect("bind");
    axum::serve(listener, app).await.expect("serve");
}
