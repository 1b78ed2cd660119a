//! The end-to-end suite of `tests/it/` again, with every server on a fresh
//! PostgreSQL database (created per server on `CRMKIT_TEST_POSTGRES_URL`, dropped
//! after). Without that variable this half is a single test that says it was
//! skipped (and fails under `CRMKIT_TEST_STRICT=1`).

#[cfg(crmkit_test_pg)]
#[path = "it/auth.rs"]
mod auth;
#[cfg(crmkit_test_pg)]
#[path = "it/format.rs"]
mod format;
#[allow(dead_code)]
#[path = "it/harness.rs"]
mod harness;
#[cfg(crmkit_test_pg)]
#[path = "it/mcp.rs"]
mod mcp;
#[cfg(crmkit_test_pg)]
#[path = "it/ops.rs"]
mod ops;
#[cfg(crmkit_test_pg)]
#[path = "it/postgres.rs"]
mod postgres;
#[cfg(crmkit_test_pg)]
#[path = "it/query.rs"]
mod query;
#[cfg(crmkit_test_pg)]
#[path = "it/records.rs"]
mod records;
#[allow(dead_code)]
#[path = "it/smtp.rs"]
mod smtp;
#[cfg(crmkit_test_pg)]
#[path = "it/tenancy.rs"]
mod tenancy;
#[cfg(crmkit_test_pg)]
#[path = "it/workspaces.rs"]
mod workspaces;

pub const BACKEND: harness::Backend = harness::Backend::Postgres;

#[allow(unused_imports)]
pub use harness::require;

#[cfg(not(crmkit_test_pg))]
#[test]
fn postgres_half_is_skipped_without_crmkit_test_postgres_url() {
    let ran = harness::require(
        "PostgreSQL (set CRMKIT_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres to run the suite on it)",
        false,
    );
    assert!(!ran);
}
