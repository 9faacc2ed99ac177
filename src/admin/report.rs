//! The roll-out report (`SHOW REPORT`): per guarded table and per `application_name`, the
//! guarded writes seen and what became of them (conflicts, would-be conflicts and refusals
//! observed, refusals, writes that checked no version), so that a DBA can tell which
//! applications to enforce a table for and which policies to tighten.
//!
//! Each session counts into a [`Tally`] of its own (an uncontended lock, taken once per
//! guarded write); a tally is folded into the process's [`Report`] when the session ends or
//! changes its `application_name`. The report shows both, so its numbers always add up to
//! the metrics' `optlock_guarded_writes_total`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::events::Outcome;
use crate::guard::TableId;

/// Counts by [`Outcome`], in [`Outcome::ALL`] order.
pub type Counts = [u64; Outcome::ALL.len()];

/// One session's counts since it last folded them, under its current `application_name`.
#[derive(Debug, Default)]
pub struct Tally {
    pub application_name: String,
    counts: Vec<(TableId, Counts)>,
}

impl Tally {
    pub fn new(application_name: &str) -> Tally {
        Tally {
            application_name: application_name.to_string(),
            counts: Vec::new(),
        }
    }

    /// Counts one guarded write's outcome.
    pub fn add(&mut self, table: TableId, outcome: Outcome) {
        let i = match self.counts.iter().position(|(t, _)| *t == table) {
            Some(i) => i,
            None => {
                self.counts.push((table, [0; Outcome::ALL.len()]));
                self.counts.len() - 1
            }
        };
        self.counts[i].1[outcome as usize] += 1;
    }
}

/// The counts of sessions that ended or moved to another `application_name`.
#[derive(Debug, Default)]
pub struct Report {
    done: Mutex<BTreeMap<(TableId, String), Counts>>,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRow {
    pub table: TableId,
    pub application_name: String,
    pub counts: Counts,
}

impl ReportRow {
    pub fn get(&self, outcome: Outcome) -> u64 {
        self.counts[outcome as usize]
    }
}

impl Report {
    /// Moves a tally's counts into the report (the tally is left empty).
    pub fn fold(&self, tally: &mut Tally) {
        if tally.counts.is_empty() {
            return;
        }
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        for (table, counts) in tally.counts.drain(..) {
            let entry = done
                .entry((table, tally.application_name.clone()))
                .or_insert([0; Outcome::ALL.len()]);
            for (a, b) in entry.iter_mut().zip(counts) {
                *a += b;
            }
        }
    }

    /// The report's lines with the live sessions' tallies added, by table then application.
    pub fn rows<'a>(&self, live: impl IntoIterator<Item = &'a Tally>) -> Vec<ReportRow> {
        let mut all = self.done.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for tally in live {
            for (table, counts) in &tally.counts {
                let entry = all
                    .entry((*table, tally.application_name.clone()))
                    .or_insert([0; Outcome::ALL.len()]);
                for (a, b) in entry.iter_mut().zip(counts) {
                    *a += b;
                }
            }
        }
        all.into_iter()
            .map(|((table, application_name), counts)| ReportRow {
                table,
                application_name,
                counts,
            })
            .collect()
    }
}

/// The report as `SHOW REPORT` answers it: its columns, and one row per table and
/// application (`writes` counts every guarded write; the other columns, what became of them).
pub fn table(rows: Vec<ReportRow>) -> (Vec<&'static str>, Vec<Vec<Option<String>>>) {
    const SHOWN: [(&str, Outcome); 6] = [
        ("writes", Outcome::Rewritten),
        ("conflicts", Outcome::Conflict),
        ("observed", Outcome::Observed),
        ("refused", Outcome::Refused),
        ("unversioned", Outcome::Unversioned),
        ("bulk", Outcome::Bulk),
    ];
    let mut columns = vec!["table", "application_name"];
    columns.extend(SHOWN.iter().map(|(c, _)| *c));
    let lines = rows
        .into_iter()
        .map(|r| {
            let table = crate::guard::table_name(r.table)
                .map_or_else(|| format!("#{}", r.table.0), |t| t.to_string());
            let mut line = vec![Some(table), Some(r.application_name.clone())];
            line.extend(SHOWN.iter().map(|(_, o)| Some(r.get(*o).to_string())));
            line
        })
        .collect();
    (columns, lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_and_folded_counts_add_up_by_table_and_application() {
        let report = Report::default();
        let mut a = Tally::new("pos-1");
        a.add(TableId(1), Outcome::Rewritten);
        a.add(TableId(1), Outcome::Observed);
        report.fold(&mut a);
        a.add(TableId(1), Outcome::Rewritten);
        let mut b = Tally::new("report");
        b.add(TableId(2), Outcome::Refused);
        let rows = report.rows([&a, &b]);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].application_name, "pos-1");
        assert_eq!(rows[0].get(Outcome::Rewritten), 2);
        assert_eq!(rows[0].get(Outcome::Observed), 1);
        assert_eq!(rows[1].table, TableId(2));
        assert_eq!(rows[1].get(Outcome::Refused), 1);
        // Folding an empty tally changes nothing.
        report.fold(&mut a);
        report.fold(&mut a);
        assert_eq!(report.rows([]).len(), 1);
    }
}
