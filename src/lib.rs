//! optlock: a PostgreSQL wire-protocol proxy that enforces optimistic concurrency on guarded
//! tables and passes everything else through untouched.
//!
//! - [`config`]: the TOML config and its validation.
//! - [`protocol`]: framing and the few message fields the proxy reads or writes.
//! - [`events`]: what sessions report, and the traits through which they report it.
//! - [`engine`]: the protocol of one session as a state machine with no IO (the guard inside).
//! - [`relay`]: the IO: client sessions, each relayed to its own upstream connection.
//! - [`guard`]: which statements write guarded tables, and how they are rewritten.
//! - [`catalog`]: guards checked and resolved against a live database; `check`, `suggest`.
//! - [`admin`]: metrics, the admin console, the session registry and the conflict log.
//! - [`server`]: accept loop, reload and graceful shutdown.

pub mod admin;
pub mod catalog;
pub mod config;
pub mod engine;
pub mod events;
pub mod guard;
pub mod protocol;
pub mod relay;
pub mod server;
pub mod tasks;
