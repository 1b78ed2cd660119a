//! The ceiling of the benchmark: the least an HTTP server can do to answer
//! `GET /contacts/{id}` from crmkit's SQLite file — axum and one primary-key
//! SELECT through the fastest path known here (rusqlite on the request's own
//! thread, a cached prepared statement, the same page cache size as crmkit),
//! one line out. No auth, no middleware, no negotiation: what crmkit's W2 is
//! measured against.
//!
//! Usage: crmkit-bench-ceiling DATABASE_FILE PORT

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Ceiling {
    file: String,
    idle: Mutex<Vec<Connection>>,
    workspace: String,
}

fn open(file: &str) -> Connection {
    let c = Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("open the database");
    c.execute_batch("PRAGMA query_only = 1; PRAGMA cache_size = -16384;")
        .expect("set the page cache");
    c
}

fn lookup(c: &Ceiling, id: &str) -> rusqlite::Result<Option<(Option<String>, Option<String>)>> {
    let conn = c.idle.lock().ok().and_then(|mut v| v.pop());
    let conn = conn.unwrap_or_else(|| open(&c.file));
    let row = conn
        .prepare_cached("SELECT name, email FROM contacts WHERE workspace_id = ? AND id = ?")?
        .query_row((&c.workspace, id), |r| Ok((r.get(0)?, r.get(1)?)))
        .optional();
    if let Ok(mut idle) = c.idle.lock() {
        idle.push(conn);
    }
    row
}

async fn contact(State(c): State<Arc<Ceiling>>, Path(id): Path<String>) -> (StatusCode, String) {
    match lookup(&c, &id) {
        Ok(Some((name, email))) => (
            StatusCode::OK,
            format!(
                "contact/{id} name={:?} email={}\n",
                name.unwrap_or_default(),
                email.unwrap_or_default()
            ),
        ),
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
    let workspace: String = open(&file)
        .query_row("SELECT workspace_id FROM contacts LIMIT 1", (), |r| {
            r.get(0)
        })
        .expect("a seeded database");
    let state = Arc::new(Ceiling {
        file,
        idle: Mutex::new(Vec::new()),
        workspace,
    });
    let app = Router::new()
        .route("/contacts/{id}", get(contact))
        .route("/readyz", get(|| async { "ok\n" }))
        .with_state(state);
    let listener =
        tokio::net::TcpListener::bind(("127.0.0.1", port.parse::<u16>().expect("a port")))
            .await
            .expect("bind");
    axum::serve(listener, app).await.expect("serve");
}
