//! The wire layer shared by the server and the CLI, free of heavy dependencies:
//! record ids and handles, the time format, the plain-text record line, and
//! the list query language. Nothing here touches HTTP, a database or an RNG.

pub mod handle;
pub mod line;
pub mod query;
pub mod suggest;
pub mod time_fmt;

pub use handle::{Kind, RefError, id_from_random, parse_ref};
pub use line::{LineBuilder, ParsedLine, comment, parse_line, quote};
pub use query::{
    Filter, ListQuery, Op, Operand, QueryError, Scalar, Schema, Sort, Target,
    canonical_fingerprint, parse_limit, parse_list_query,
};
