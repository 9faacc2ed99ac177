//! The differential two-session harness: a scenario is a table, a guard, and a list of steps for
//! sessions A, B and C (simple queries, or extended-protocol batches up to their `Sync`); it runs once directly against PostgreSQL and once
//! through the proxy, each time in a fresh database, and the replies of every step (tags,
//! errors with their SQLSTATE, rows) and the final table are compared. The only difference
//! allowed is a conflict the proxy adds where a step is marked [`Expect::Conflict`]: the stale
//! write gets 40001 through the proxy, and the final state must then equal the one given.

use super::wire::{Raw, Reply, query};
use super::{Proxy, TestDb};

/// Who runs a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    A,
    B,
    C,
}

/// What a step must do through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Exactly what it does directly.
    Same,
    /// A conflict (40001) where directly it succeeds: it writes a row another session changed
    /// since this one read it.
    Conflict,
}

/// One step: a simple query of one session, or the messages of an extended-protocol batch
/// (`wire`, ending with one `Sync`; `sql` then only names the step).
#[derive(Debug, Clone)]
pub struct Step {
    pub who: Who,
    pub sql: String,
    pub expect: Expect,
    pub wire: Option<Vec<u8>>,
}

/// `who` runs `sql`, which must behave as directly.
pub fn same(who: Who, sql: impl Into<String>) -> Step {
    Step {
        who,
        sql: sql.into(),
        expect: Expect::Same,
        wire: None,
    }
}

/// `who` runs `sql`, a stale write the proxy must turn into a conflict.
pub fn conflict(who: Who, sql: impl Into<String>) -> Step {
    Step {
        expect: Expect::Conflict,
        ..same(who, sql)
    }
}

/// `who` sends the extended-protocol `messages` (one batch ending with its `Sync`), named
/// `label`, which must behave as directly.
pub fn same_batch(who: Who, label: &str, messages: &[Vec<u8>]) -> Step {
    Step {
        wire: Some(messages.concat()),
        ..same(who, label)
    }
}

/// A scenario: set-up SQL (run directly), the guard config, the steps, and the query whose
/// rows are the final state (version columns left out: the proxy bumps them by design).
pub struct Scenario<'a> {
    pub name: &'a str,
    pub setup: &'a str,
    pub guards: &'a str,
    pub steps: Vec<Step>,
    pub state: &'a str,
    /// The final state through the proxy when it differs from the direct one (conflicts
    /// stopped writes); `None`: the same as directly.
    pub proxy_state: Option<Vec<Vec<Option<String>>>>,
}

/// What one run saw: the replies of every step, and the final rows.
#[derive(Debug)]
pub struct Run {
    pub replies: Vec<Vec<Reply>>,
    pub state: Vec<Vec<Option<String>>>,
}

impl Scenario<'_> {
    /// Runs the scenario directly and through a proxy, and asserts that they agree.
    pub async fn check(&self) {
        let direct = self.run(None).await;
        let proxy = Proxy::with_guards(self.guards).await;
        let through = self.run(Some(&proxy)).await;
        for (i, step) in self.steps.iter().enumerate() {
            let (d, p) = (&direct.replies[i], &through.replies[i]);
            match step.expect {
                Expect::Same => assert_eq!(
                    p, d,
                    "{}: step {i} ({:?}: {}) differs through the proxy",
                    self.name, step.who, step.sql
                ),
                Expect::Conflict => {
                    assert!(
                        !has_error(d),
                        "{}: step {i} ({}) fails directly: {d:?}",
                        self.name,
                        step.sql
                    );
                    assert!(
                        p.iter()
                            .any(|r| matches!(r, Reply::Error(code, _) if code == "40001")),
                        "{}: step {i} ({:?}: {}) must conflict through the proxy: {p:?}",
                        self.name,
                        step.who,
                        step.sql
                    );
                }
            }
        }
        let expected = self.proxy_state.as_ref().unwrap_or(&direct.state);
        assert_eq!(
            &through.state, expected,
            "{}: final state through the proxy",
            self.name
        );
    }

    /// Runs the steps in a fresh database, directly or through `proxy`.
    pub async fn run(&self, proxy: Option<&Proxy>) -> Run {
        let db = TestDb::new("scenario").await;
        db.direct().await.batch_execute(self.setup).await.unwrap();
        let addr = match proxy {
            Some(p) => p.addr.to_string(),
            None => super::upstream(),
        };
        let mut sessions = [
            Raw::open(&addr, &db.name).await,
            Raw::open(&addr, &db.name).await,
            Raw::open(&addr, &db.name).await,
        ];
        let mut replies = Vec::new();
        for step in &self.steps {
            let raw = &mut sessions[step.who as usize];
            match &step.wire {
                Some(wire) => raw.send(wire).await,
                None => raw.send(&query(&step.sql)).await,
            }
            replies.push(raw.until_ready().await);
        }
        drop(sessions);
        let rows = db.direct().await.simple_query(self.state).await.unwrap();
        Run {
            replies,
            state: super::rows(&rows),
        }
    }
}

fn has_error(replies: &[Reply]) -> bool {
    replies.iter().any(|r| matches!(r, Reply::Error(..)))
}

/// Rows written as text, for [`Scenario::proxy_state`].
pub fn rows_of(rows: &[&[&str]]) -> Vec<Vec<Option<String>>> {
    rows.iter()
        .map(|r| r.iter().map(|v| Some(v.to_string())).collect())
        .collect()
}
