//! End-to-end tests: each starts the real `crmkit serve` binary on a free
//! loopback port with a fresh SQLite file and a real SMTP listener, and talks
//! to it over real HTTP.

mod auth;
mod format;
mod harness;
mod ops;
mod query;
mod records;
mod smtp;
mod tenancy;
mod workspaces;

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
