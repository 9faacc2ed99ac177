//! What a guarded write expects, in either protocol: the version it must find (pinned in its
//! text, tracked for its row, or none), or a refusal by the table's policies ([`Plan`]); the
//! canonical key of the row it names; and whether it can go without version check at all.

use smallvec::SmallVec;

use super::checks::Plan;
use super::cx::Cx;
use super::rows::{canonical, param_canon};
use super::state::GuardState;
use crate::config::{BulkPolicy, UnversionedPolicy};
use crate::engine::replies::Pending;
use crate::events::Outcome;
use crate::guard::canon::{self, Canon};
use crate::guard::conflict::{ConflictInfo, Refusal};
use crate::guard::rewrite::{Bump, known_cap};
use crate::guard::{GuardSet, GuardedWrite, TableId, Target, ValueRef, WriteOp};
use crate::protocol::frontend::Bind;

impl GuardState {
    /// How a write of guard `guard` bumps its version in this session's database.
    pub(super) fn bump_for(&self, guard: usize) -> Bump {
        self.resolved.get(guard).map_or(Bump::Plain, |r| r.bump())
    }

    /// Decides what a guarded write expects: pinned, tracked, or the policies. In observe
    /// mode nothing is refused (a refusal is recorded as observed and the write goes as
    /// written, with its bump), and only a tracked version is checked, by an observed check
    /// that changes nothing (see [`crate::guard::rewrite::OBSERVED_SETTING`]).
    pub(super) fn plan_write(
        &mut self,
        cx: &mut Cx<'_>,
        guards: &GuardSet,
        w: &GuardedWrite,
        key: Option<Vec<String>>,
        pinned: Option<String>,
    ) -> Plan {
        let plan = self.enforced_plan(guards, w, key, pinned);
        if !guards.guards[w.guard].observes() {
            return plan;
        }
        match plan {
            Plan::Refuse(refusal) => {
                self.observe_refusal(cx, &guards.guards[w.guard], &refusal);
                Plan::Send {
                    expected: None,
                    key: None,
                }
            }
            // A pinned version is the client's own condition, a write inside WITH cannot
            // report what it finds: nothing to observe.
            Plan::Send { key, .. } if w.pinned.is_some() || w.splice.in_cte => Plan::Send {
                expected: None,
                key,
            },
            plan => plan,
        }
    }

    /// True when the known rows of the table may be checked against a write of `w` whose
    /// rows its text does not name: not for an observed write inside `WITH` or an observed
    /// upsert, which cannot report what they find (the rows an upsert inserts run no check,
    /// so their `RETURNING` would read another row's finding) and must not filter.
    pub(super) fn checks_known_rows(&self, guards: &GuardSet, w: &GuardedWrite) -> bool {
        !((w.splice.in_cte || w.op == WriteOp::Upsert) && guards.guards[w.guard].observes())
    }

    /// [`GuardState::plan_write`] as enforce mode decides it.
    fn enforced_plan(
        &mut self,
        guards: &GuardSet,
        w: &GuardedWrite,
        key: Option<Vec<String>>,
        pinned: Option<String>,
    ) -> Plan {
        let guard = &guards.guards[w.guard];
        if w.op == WriteOp::Upsert {
            return Plan::Send {
                expected: None,
                key: None,
            };
        }
        if w.target == Target::Bulk {
            return match guard.bulk {
                BulkPolicy::Bump => Plan::Send {
                    expected: None,
                    key: None,
                },
                BulkPolicy::Reject => Plan::Refuse(Refusal::Bulk),
            };
        }
        let expected = match pinned {
            Some(v) => Some(v),
            None => key.as_ref().and_then(|k| {
                let table = guards.table_ids[w.guard];
                self.tracker.expected(table, k).map(str::to_string)
            }),
        };
        if expected.is_none() && guard.unversioned == UnversionedPolicy::Reject {
            let row = ConflictInfo::of(guard, key.clone(), String::new()).key_text();
            return Plan::Refuse(Refusal::Unversioned(row));
        }
        Plan::Send { expected, key }
    }

    /// True when a write can expect no version, whatever row it names: no pinned version, a
    /// table the session tracks nothing of (and no reply still to come that may change that),
    /// and policies that let an unversioned write through.
    pub(super) fn expects_nothing(&self, cx: &Cx<'_>, guards: &GuardSet, w: &GuardedWrite) -> bool {
        let guard = &guards.guards[w.guard];
        w.pinned.is_none()
            && guard.unversioned == UnversionedPolicy::Allow
            && (matches!(w.target, Target::Key(_)) || guard.bulk == BulkPolicy::Bump)
            && !self.tracker.tracks_table(guards.table_ids[w.guard])
            && !self.rows_may_come(cx)
    }

    /// True when a run of `w` that matches no row changes nothing in the database: no call or
    /// subquery runs outside its `SET` list and `RETURNING`, and its table has no
    /// statement-level trigger or rule (as resolved for this session; unknown counts as
    /// having one). Such a write's 0-row conflict may be raised after its implicit
    /// transaction committed: there is nothing to undo.
    pub(super) fn quiet_without_rows(&self, w: &GuardedWrite) -> bool {
        !w.splice.in_cte
            && w.op != WriteOp::Upsert
            && !w.splice.may_act_without_rows
            && self
                .resolved
                .get(w.guard)
                .is_some_and(|r| !r.acts_without_rows)
    }

    /// True while a reply still to come may start tracking rows (a read earlier in the
    /// pipeline): a row untracked now may be tracked by the time a write of it runs, and only
    /// a write with its `RETURNING` then tells the session the row's new version.
    pub(super) fn rows_may_come(&self, cx: &Cx<'_>) -> bool {
        cx.out.replies.iter().any(|p| match p {
            Pending::Simple(_) => true,
            Pending::Execute(tag) => tag.is_some(),
            _ => false,
        })
    }

    /// The rows of `w`'s table the session knows (key parts and version, most recently used
    /// first, capped), for a write whose rows its text does not name: the server checks each
    /// row the write touches against them (see [`crate::guard::rewrite::Expected::Rows`]).
    /// Empty for a write that pins its own version.
    pub(super) fn known_rows(
        &self,
        guards: &GuardSet,
        w: &GuardedWrite,
    ) -> Vec<(Vec<String>, String)> {
        if w.pinned.is_some() || !self.checks_known_rows(guards, w) {
            return Vec::new();
        }
        let cap = known_cap(guards.guards[w.guard].key.len());
        self.tracker.table_rows(guards.table_ids[w.guard], cap)
    }

    /// True when the session tracks a version of the row with this key.
    pub(super) fn is_tracked(&mut self, table: TableId, key: Option<Vec<String>>) -> bool {
        let Some(key) = key else {
            return false;
        };
        self.tracker.expected(table, &key).is_some()
    }

    /// Canonical key text from literals and bound parameters (`None` when one is unknown).
    pub(super) fn key_text(
        &self,
        guard: usize,
        vals: &[ValueRef],
        bind: Option<(&Bind<'_>, &[u32])>,
    ) -> Option<Vec<String>> {
        let parts = self.key_parts(guard, vals, bind)?;
        Some(parts.iter().map(|p| p.as_ref().to_string()).collect())
    }

    /// [`Self::key_text`] without allocating where each part is canonical as written or bound.
    pub(super) fn key_parts<'v, 'm: 'v>(
        &self,
        guard: usize,
        vals: &'v [ValueRef],
        bind: Option<(&Bind<'m>, &[u32])>,
    ) -> Option<SmallVec<[Canon<'v>; 2]>> {
        let rg = self.resolved.get(guard);
        vals.iter()
            .enumerate()
            .map(|(i, v)| {
                let column_type = rg.and_then(|r| r.key_types.get(i).copied()).unwrap_or(0);
                match v {
                    ValueRef::Literal(s) => canon::canonical_plain(column_type, 0, s.as_bytes())
                        .or_else(|| canonical(column_type, 0, s.as_bytes()).map(Canon::Owned)),
                    ValueRef::Param(n) => {
                        let (b, declared) = bind?;
                        param_canon(b, declared, *n, column_type)
                    }
                }
            })
            .collect()
    }
}

/// What a write of `w` that checks no version (`checked` false) is counted as besides
/// rewritten: [`Outcome::Unversioned`] for a keyed write, [`Outcome::Bulk`] for one not
/// pinned to one key. None for a checked write, one that pins its own version, an upsert.
pub(super) fn unchecked_class(w: &GuardedWrite, checked: bool) -> Option<Outcome> {
    if checked || w.pinned.is_some() || w.op == WriteOp::Upsert {
        return None;
    }
    Some(match w.target {
        Target::Bulk => Outcome::Bulk,
        _ => Outcome::Unversioned,
    })
}

impl GuardState {
    /// Counts one guarded write sent to the server (and its class, if it checks nothing).
    pub(super) fn count_write(&self, cx: &Cx<'_>, table: TableId, class: Option<Outcome>) {
        cx.events.write_sent(table, class);
    }
}
