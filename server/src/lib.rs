//! crmkit's server: the HTTP API behind `crmkit serve`, and the wire types its
//! client shares.
//!
//! `wire` is always compiled and depends on nothing heavy, so the CLI can use the
//! same handles, query grammar and line format. Everything else sits behind the
//! `service` feature.
#![forbid(unsafe_code)]

pub mod wire;

#[cfg(feature = "service")]
mod app;
#[cfg(feature = "service")]
mod auth;
#[cfg(feature = "service")]
pub mod config;
#[cfg(feature = "service")]
pub mod db;
#[cfg(feature = "service")]
mod error;
#[cfg(feature = "service")]
mod extract;
#[cfg(feature = "service")]
mod mail;
#[cfg(feature = "service")]
mod mcp;
#[cfg(feature = "service")]
mod negotiate;
#[cfg(feature = "service")]
mod query;
#[cfg(feature = "service")]
mod ratelimit;
#[cfg(feature = "service")]
mod reader;
#[cfg(feature = "service")]
mod records;
#[cfg(feature = "service")]
mod routes;
#[cfg(feature = "service")]
mod secrets;
#[cfg(feature = "service")]
mod serve;
#[cfg(feature = "service")]
mod stepup;
#[cfg(feature = "service")]
mod transfer;
#[cfg(feature = "service")]
mod validate;

#[cfg(feature = "service")]
pub use app::{AppState, app};
#[cfg(feature = "service")]
pub use serve::{ServeError, migrate, run, serve_on, set_plan};
#[cfg(feature = "service")]
pub use transfer::migrate_data;
