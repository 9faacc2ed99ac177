//! optlock: a PostgreSQL wire-protocol proxy that enforces optimistic concurrency on guarded
//! tables and passes everything else through untouched.

pub mod catalog;
pub mod config;
pub mod guard;
