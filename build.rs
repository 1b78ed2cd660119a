//! Marks the PostgreSQL half of the end-to-end suite (`tests/it_pg.rs`) for
//! compilation when `CRMKIT_TEST_POSTGRES_URL` is set; without it that half is
//! one test that reports the skip.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(crmkit_test_pg)");
    println!("cargo::rerun-if-env-changed=CRMKIT_TEST_POSTGRES_URL");
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("CRMKIT_TEST_POSTGRES_URL").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=crmkit_test_pg");
    }
}
