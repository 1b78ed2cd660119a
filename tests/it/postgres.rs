//! PostgreSQL-only behaviour: several stateless `serve` processes sharing one
//! database, concurrent migrations, readiness that recovers (issue: PostgreSQL
//! and horizontal scale).
