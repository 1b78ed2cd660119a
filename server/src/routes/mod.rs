//! Every endpoint, one module per resource; merged here in one place.

use axum::Router;

use crate::app::AppState;

pub mod activities;
pub mod audit;
pub mod auth;
pub mod meta;
pub mod records;
pub mod workspaces;

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(meta::router())
        .merge(auth::router())
        .merge(records::router())
        .merge(activities::router())
        .merge(audit::router())
        .merge(workspaces::router())
}
