//! Observe mode: a guard that only watches. Its writes run with the client's own effect plus
//! the version bump; what enforce mode would have raised is logged, counted with the outcome
//! `observed` and recorded in the conflict log instead.
//!
//! - A refusal (fail closed, `unversioned = "reject"`, `bulk = "reject"`) is recorded when
//!   the write is planned, and the write goes as written (with its bump where it has one).
//! - A stale write is found by the write itself: its observed check records, for each row it
//!   writes, the version it replaces when that is not the one the session read, and the first
//!   column the proxy appends to its `RETURNING` carries that to the proxy
//!   ([`crate::guard::rewrite::OBSERVED_SETTING`]), hidden from the client with the rest.
//!   Evaluated on the row version the write replaces, so under contention each stale write
//!   is counted once, and only those.

use tracing::warn;

use super::checks::WriteCheck;
use super::cx::Cx;
use super::state::GuardState;
use crate::config::Guard;
use crate::events::{Conflict, Outcome};
use crate::guard::conflict::{ConflictInfo, Refusal};
use crate::guard::table_id;
use crate::protocol::backend as be;

impl GuardState {
    /// A write enforce mode would have refused: logged and counted as observed.
    pub(super) fn observe_refusal(&mut self, cx: &mut Cx<'_>, guard: &Guard, refusal: &Refusal) {
        let reason = match refusal {
            Refusal::Unsupported(reason) => reason.clone(),
            Refusal::Unversioned(row) => {
                format!("unversioned = \"reject\": no expected version is known for {row}")
            }
            Refusal::Bulk => "bulk = \"reject\": the write is not pinned to one key".to_string(),
        };
        let ident = &self.ident;
        warn!(
            table = %guard.table,
            reason = %reason,
            client = %ident.client,
            user = %ident.user,
            application_name = %ident.application_name,
            "guarded write would have been refused (observe mode)"
        );
        cx.events.guarded(table_id(&guard.table), Outcome::Observed);
        cx.events.conflict(Conflict {
            at: std::time::SystemTime::now(),
            table: guard.table.to_string(),
            key: String::new(),
            expected: String::new(),
            found: None,
            client_addr: ident.client,
            user: ident.user.clone(),
            application_name: ident.application_name.clone(),
            outcome: Outcome::Observed,
            reason: Some(reason),
        });
    }

    /// A row an observed write returned (`body`, its `DataRow`): when its check found the row
    /// at another version than the one expected, the stale write is logged and counted.
    pub(super) fn observe_row(&mut self, cx: &mut Cx<'_>, check: &WriteCheck, body: &[u8]) {
        if let Some((info, found)) = observed_in_row(check, body) {
            self.log_observed(cx, &info, found);
        }
    }

    /// Logs, counts and records a stale write that went through; `found` is the version it
    /// replaced.
    pub(super) fn log_observed(
        &mut self,
        cx: &mut Cx<'_>,
        info: &ConflictInfo,
        found: Option<String>,
    ) {
        self.record_conflict(cx, info, found, Outcome::Observed);
    }
}

/// The stale write a row of an observed write reports (`body`, its `DataRow`): the row, the
/// version expected of it and the version found. None when the row was as expected.
pub(super) fn observed_in_row(
    check: &WriteCheck,
    body: &[u8],
) -> Option<(ConflictInfo, Option<String>)> {
    let expected = check.observed.as_ref()?;
    let vals = be::data_row(body)?;
    let value = vals[vals.len().checked_sub(check.added)?]?;
    let (found, row) = parse_observed(value)?;
    let guard = check.guards.guards.get(check.guard)?;
    let info = match row.and_then(|i| check.known.get(i)) {
        Some((key, expected)) => ConflictInfo::of(guard, Some(key.clone()), expected.clone()),
        None => ConflictInfo::of(
            guard,
            check.key.clone(),
            expected.clone().unwrap_or_default(),
        ),
    };
    Some((info, found))
}

/// What an observed check recorded: nothing (empty: the row was as expected), or the version
/// found (`None` for NULL) and, for a check of the known rows, the row's index in their list.
fn parse_observed(value: &[u8]) -> Option<(Option<String>, Option<usize>)> {
    if value.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(value);
    let mut parts = text.splitn(3, '#');
    let found = parts.next().filter(|f| !f.is_empty()).map(str::to_string);
    let row = parts
        .next()
        .and_then(|p| p.parse::<usize>().ok())
        .and_then(|p| p.checked_sub(1));
    Some((found, row))
}

#[cfg(test)]
mod tests {
    use super::parse_observed;

    #[test]
    fn observed_values_read_back() {
        assert_eq!(parse_observed(b""), None);
        assert_eq!(parse_observed(b"7#"), Some((Some("7".into()), None)));
        assert_eq!(parse_observed(b"#"), Some((None, None)));
        assert_eq!(parse_observed(b"8#3#"), Some((Some("8".into()), Some(2))));
        assert_eq!(
            parse_observed(b"2026-01-01 00:00:00+00#"),
            Some((Some("2026-01-01 00:00:00+00".into()), None))
        );
    }
}
