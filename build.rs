//! Marks the PostgreSQL half of the end-to-end suite (`tests/it_pg.rs`) for
//! compilation when `CRMKIT_TEST_POSTGRES_URL` is set; without it that half is
//! one test that reports the skip.
//!
//! On Linux with glibc the `crmkit` binary is linked with packed relative
//! relocations (`-z pack-relative-relocs`, DT_RELR): the loader then reads
//! 9 KiB of relocations at every start instead of 800 KiB, which took a
//! sixth off `crmkit --version` (4.0 → 3.4 ms, hyperfine). The binary needs
//! glibc 2.36 or later where it runs (the loader refuses it cleanly before).
//! `CRMKIT_NO_RELR=1` builds without it, e.g. for older systems.
fn main() {
    println!("cargo::rerun-if-env-changed=CRMKIT_NO_RELR");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if linux_gnu && std::env::var_os("CRMKIT_NO_RELR").is_none() {
        println!("cargo::rustc-link-arg-bin=crmkit=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo::rustc-check-cfg=cfg(crmkit_test_pg)");
    println!("cargo::rerun-if-env-changed=CRMKIT_TEST_POSTGRES_URL");
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("CRMKIT_TEST_POSTGRES_URL").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=crmkit_test_pg");
    }
}
