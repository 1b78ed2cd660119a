//! CRM records — contacts, companies, deals — described once as data
//! ([`KindDef`]) and handled by one generic store, renderer and router.
//!
//! A record is a map from field name to [`Val`]; each kind lists its writable
//! fields with their types and limits, which drives body validation, SQL,
//! rendering and the manual alike.

pub mod kinds;
pub mod model;
pub mod store;

pub use kinds::{COMPANY, CONTACT, DEAL, KindDef};
pub use model::Record;
