//! Operating the proxy: Prometheus metrics and their HTTP endpoint, the registry of live
//! sessions, the log of recent conflicts, and the admin console served on the virtual
//! database `optlock`.
//!
//! - [`metrics`]: `optlock_*` counters, gauge and histogram; hot-path updates are atomics.
//! - [`http`]: a minimal HTTP/1.1 server answering `GET /metrics`.
//! - [`registry`]: who is connected, and what each session is doing.
//! - [`conflicts`]: a bounded ring of the most recent conflicts.
//! - [`report`]: the roll-out report, per table and application.
//! - [`console`]: `SHOW ...` and `RELOAD`, answered as encoded backend messages.
//! - [`session`]: a console session: the login checked upstream, then commands.
//! - [`state`]: all of the above as one cloneable value.
//! - [`operator`]: the relay's [`crate::relay::Operator`], implemented over all of the above.

pub mod conflicts;
pub mod console;
pub mod http;
pub mod metrics;
pub mod operator;
pub mod registry;
pub mod report;
pub mod session;
pub mod state;

pub use crate::events::{ClientError, Conflict, Direction, Outcome, SessionStart};
pub use conflicts::ConflictLog;
pub use console::{AdminContext, execute};
pub use http::serve_metrics;
pub use metrics::{Metrics, OpenSession};
pub use registry::{SessionHandle, SessionInfo, SessionRegistry, SessionState};
pub use state::{ADMIN_DATABASE, AdminState};

use std::time::{SystemTime, UNIX_EPOCH};

use crate::guard::values::civil_from_days;

/// Formats a time as UTC the way PostgreSQL prints a `timestamptz` in UTC, to the millisecond:
/// `2024-05-01 12:34:56.789+00`.
pub fn format_utc(t: SystemTime) -> String {
    let (secs, millis) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_millis()),
        Err(e) => {
            let d = e.duration();
            let ms = d.as_millis() as i64;
            (-((ms + 999) / 1000), ((1000 - ms % 1000) % 1000) as u32)
        }
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{millis:03}+00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(UNIX_EPOCH), "1970-01-01 00:00:00.000+00");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789); // leap day 2024
        assert_eq!(format_utc(t), "2024-02-29 12:34:56.789+00");
        let t = UNIX_EPOCH + Duration::from_secs(951_868_800); // 2000-03-01
        assert_eq!(format_utc(t), "2000-03-01 00:00:00.000+00");
        let t = UNIX_EPOCH - Duration::from_millis(1);
        assert_eq!(format_utc(t), "1969-12-31 23:59:59.999+00");
    }
}
