//! End-to-end tests: each starts the real `crmkit serve` binary on a free
//! loopback port with a fresh SQLite file and a real SMTP listener, and talks
//! to it over real HTTP.

mod auth;
mod browser;
mod cli;
mod format;
#[allow(dead_code)] // some helpers serve only the PostgreSQL half
mod harness;
mod mcp;
mod mcp_sdk;
mod ops;
mod query;
mod records;
mod smtp;
mod tenancy;
mod workspaces;

/// This binary runs the suite on SQLite (`it_pg` runs it on PostgreSQL).
pub const BACKEND: harness::Backend = harness::Backend::Sqlite;

pub use harness::require;

/// The token the CLI stored in its file (tests run with the keyring off).
pub fn cli_token(dir: &tempfile::TempDir) -> String {
    let text = std::fs::read_to_string(dir.path().join("tokens.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}
