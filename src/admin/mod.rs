//! Operating the proxy: Prometheus metrics and their HTTP endpoint, the registry of live
//! sessions, the log of recent conflicts, and the admin console served on the virtual
//! database `optlock`.
//!
//! - [`metrics`]: `optlock_*` counters, gauge and histogram; hot-path updates are atomics.

pub mod metrics;

pub use metrics::{ClientError, Direction, GuardCounters, Metrics, OpenSession, Outcome};
