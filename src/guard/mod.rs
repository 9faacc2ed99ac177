//! The guard: decides which statements write a guarded table and how to rewrite them.
//!
//! Pure and synchronous: the relay hands it SQL text and gets back an [`Analysis`] that says,
//! statement by statement, what to pass, what to refuse and how to rewrite a guarded write.
//! Nothing here touches the network.
//!
//! Files, one job each:
//!
//! - `mod.rs`: the types the jobs share ([`GuardSet`], [`Analysis`], [`Action`],
//!   [`GuardedWrite`], ...).
//! - `prefilter.rs` ([`prefilter`]): a cheap scan that keeps statements which cannot touch a
//!   guarded table away from the parser.
//! - `analyze.rs` ([`analyze`]): the entry point; splits a text into statements and puts the
//!   analysis files below together.
//!   - `lex.rs`: the tokens with their byte ranges, statement splitting, token navigation,
//!     and the tokens the parser is given.
//!   - `keywords.rs`: identifier folding and quoting, `U&` escapes, the reserved-word table.
//!   - `decide.rs`: sqlparser's AST decides which statements are guarded writes, and which of
//!     those are refused.
//!   - `explain.rs`: whether an `EXPLAIN` runs its statement (`ANALYZE` in any spelling).
//!   - `locate.rs`: where a guarded write's clauses sit in the text (the splice points).
//!   - `resolve.rs`: which guard a table name means, which target column a reference names.
//!   - `predicate.rs`: the key and version a `WHERE` clause fixes.
//!   - `unparsed.rs`: statements the tokenizer or parser rejects, decided from their words.
//! - `rewrite.rs` ([`rewrite`]): renders a guarded write with its version predicate, bump and
//!   `RETURNING`.
//! - `reads.rs` ([`reads`]): which row a `SELECT` pins, for versions read without their key.
//! - `capture.rs` ([`capture`]): which guarded table instances of a `SELECT` get their key and
//!   version columns added to its output (read capture), and where they go in its text.
//! - `cache.rs` ([`cache`]): the analysis of each statement text, computed once.
//! - `shape.rs` ([`shape`]): simple-protocol texts with their constants taken out, so texts
//!   that differ only in constants share one analysis; `shape/instantiate.rs` maps that
//!   analysis back onto each text.
//! - `values.rs` ([`values`]): canonical text of key and version values from text or binary
//!   wire formats.
//! - `datestyle.rs` ([`datestyle`]): dates and timestamps as the session's `DateStyle` and
//!   `TimeZone` print them, made canonical.
//! - `track.rs` ([`track`]): the versions one session has seen, bounded (LRU), with the
//!   journal that undoes what a transaction that did not commit taught.
//! - `txcontrol.rs` ([`txcontrol`]): the transaction-control statements of a text, with
//!   savepoint names as PostgreSQL folds them (where the journal's transactions end).
//! - `txkind.rs` ([`txkind`]): what one transaction-control statement does to the implicit
//!   transaction block of a multi-statement `Query` (how a script runs it).
//! - `conflict.rs` ([`conflict`]): the conflict error and the server-side `DO` block that
//!   raises it.
//!
//! The larger unit-test modules have their own files: `analyze/tests.rs` (with
//! `analyze/tests/writes.rs`), `rewrite/tests.rs` and `shape/tests.rs`.

pub mod analyze;
pub mod cache;
pub mod canon;
pub mod capture;
pub mod conflict;
pub mod cursors;
pub mod datestyle;
mod decide;
mod explain;
mod keywords;
mod lex;
mod locate;
mod predicate;
pub mod prefilter;
pub mod reads;
mod resolve;
pub mod rewrite;
pub mod shape;
pub mod track;
pub mod txcontrol;
pub mod txkind;
mod unparsed;
pub mod values;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use crate::config::{Config, Guard, GuardMode, TableName};

/// The guards of one config, ready for analysis. Cheap to share (`Arc`).
///
/// A session's set may hold more entries than the config's guards: the relations of its
/// database whose writes land in a guarded table ([`Alias`]), after the config's, each with
/// the table id and column names of the guard it reaches.
#[derive(Debug)]
pub struct GuardSet {
    pub guards: Vec<Guard>,
    pub prefilter: prefilter::Prefilter,
    /// A process-wide id of each guard's table, the same in every config generation, so
    /// tracked versions survive a reload that reorders or adds guards.
    pub table_ids: Vec<TableId>,
    /// Each guard's column names as SQL, quoted where needed, for the rewrite.
    pub sql_names: Vec<rewrite::SqlNames>,
    /// Why writes through an entry are refused (an alias that cannot carry a version check);
    /// `None` for every config guard.
    pub refusals: Vec<Option<String>>,
    /// The config guard each entry reaches (its own index for a config guard).
    pub roots: Vec<usize>,
    /// How many entries are the config's guards (the rest are aliases).
    pub config_len: usize,
    /// The config's own set, when this one holds aliases.
    base: Option<Arc<GuardSet>>,
    /// The set of the config as written, when this one is a session's scoped view of it
    /// (see [`GuardSet::scoped`]).
    origin: Option<Arc<GuardSet>>,
}

/// A relation whose writes land in the table of config guard `guard` (a partition, a parent,
/// an auto-updatable view): its writes are checked as that guard's, or refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Alias {
    pub table: TableName,
    pub guard: usize,
    /// Why writes through it cannot be checked; `None`: checked like the guard's.
    pub refusal: Option<String>,
}

impl GuardSet {
    pub fn new(config: &Config) -> Arc<GuardSet> {
        Arc::new(GuardSet::of_guards(config.guards.clone(), None))
    }

    /// A set of config guards only (no aliases); `origin` is the set it scopes, if any.
    fn of_guards(guards: Vec<Guard>, origin: Option<Arc<GuardSet>>) -> GuardSet {
        let n = guards.len();
        GuardSet {
            prefilter: prefilter::Prefilter::new(&guards),
            table_ids: guards.iter().map(|g| table_id(&g.table)).collect(),
            sql_names: guards.iter().map(rewrite::SqlNames::of).collect(),
            guards,
            refusals: vec![None; n],
            roots: (0..n).collect(),
            config_len: n,
            base: None,
            origin,
        }
    }

    /// The set as it applies to a session of `user` named `application`: each guard in the
    /// mode its scope gives that session, without the guards the session skips. The set
    /// itself (no copy) when every guard has its own mode for it, as always when no guard has
    /// a scope. Sets are shared: sessions that get the same modes share one.
    pub fn scoped(self: &Arc<GuardSet>, application: &str, user: &str) -> Arc<GuardSet> {
        let origin = self.config_set();
        let origin = origin.origin.clone().unwrap_or(origin);
        let modes: Vec<GuardMode> = origin
            .config_guards()
            .iter()
            .map(|g| g.mode_for(application, user))
            .collect();
        if origin
            .config_guards()
            .iter()
            .zip(&modes)
            .all(|(g, m)| g.mode == *m)
        {
            return origin;
        }
        type Shared = HashMap<(usize, Vec<GuardMode>), std::sync::Weak<GuardSet>>;
        static SETS: OnceLock<Mutex<Shared>> = OnceLock::new();
        let key = (Arc::as_ptr(&origin) as usize, modes);
        let mut sets = SETS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(set) = sets.get(&key).and_then(std::sync::Weak::upgrade) {
            return set;
        }
        sets.retain(|_, w| w.strong_count() > 0);
        let guards: Vec<Guard> = origin
            .config_guards()
            .iter()
            .zip(&key.1)
            .filter(|(_, m)| **m != GuardMode::Skip)
            .map(|(g, m)| Guard {
                mode: *m,
                ..g.clone()
            })
            .collect();
        let set = Arc::new(GuardSet::of_guards(guards, Some(origin.clone())));
        sets.insert(key, Arc::downgrade(&set));
        set
    }

    /// The set of config guards this one extends with aliases (itself when it has none).
    pub fn config_set(self: &Arc<GuardSet>) -> Arc<GuardSet> {
        self.base.clone().unwrap_or_else(|| self.clone())
    }

    /// The address of [`GuardSet::config_set`], without touching reference counts: what tells
    /// one session's guards from another's.
    pub fn config_set_id(&self) -> usize {
        self.base
            .as_ref()
            .map_or(self as *const GuardSet, Arc::as_ptr) as usize
    }

    /// Each config guard's table and the mode it has in this set (a session's scoped set
    /// leaves out the guards the session skips): `public.item=enforce, public.acct=observe`.
    pub fn modes_text(&self) -> String {
        let mut out = String::new();
        for g in self.config_guards() {
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(&g.table.to_string());
            out.push('=');
            out.push_str(g.mode.as_str());
        }
        out
    }

    /// This set's config guards with `aliases` after them (a set already holding aliases
    /// gets the new ones instead). Sets are shared: the sessions of one database that find
    /// the same aliases under one config share one.
    pub fn with_aliases(self: &Arc<GuardSet>, aliases: Vec<Alias>) -> Arc<GuardSet> {
        let base = self.base.clone().unwrap_or_else(|| self.clone());
        if aliases.is_empty() {
            return base;
        }
        // Keyed by the base set's address: a derived set holds its base, so the address is
        // not reused while the entry can be upgraded.
        type Shared = HashMap<(usize, Vec<Alias>), std::sync::Weak<GuardSet>>;
        static SETS: OnceLock<Mutex<Shared>> = OnceLock::new();
        let key = (Arc::as_ptr(&base) as usize, aliases);
        let mut sets = SETS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(set) = sets.get(&key).and_then(std::sync::Weak::upgrade) {
            return set;
        }
        sets.retain(|_, w| w.strong_count() > 0);
        let set = Arc::new(base.extended(&key.1, base.clone()));
        sets.insert(key, Arc::downgrade(&set));
        set
    }

    fn extended(&self, aliases: &[Alias], base: Arc<GuardSet>) -> GuardSet {
        let n = self.config_len;
        let mut guards = self.guards[..n].to_vec();
        let mut table_ids = self.table_ids[..n].to_vec();
        let mut sql_names = self.sql_names[..n].to_vec();
        let mut refusals = vec![None; n];
        let mut roots: Vec<usize> = (0..n).collect();
        for a in aliases {
            let mut g = self.guards[a.guard].clone();
            g.table = a.table.clone();
            guards.push(g);
            table_ids.push(self.table_ids[a.guard]);
            sql_names.push(self.sql_names[a.guard].clone());
            refusals.push(a.refusal.clone());
            roots.push(a.guard);
        }
        GuardSet {
            prefilter: prefilter::Prefilter::new(&guards),
            guards,
            table_ids,
            sql_names,
            refusals,
            roots,
            config_len: n,
            base: Some(base),
            origin: None,
        }
    }

    /// The config's guards (without the session's aliases).
    pub fn config_guards(&self) -> &[Guard] {
        &self.guards[..self.config_len]
    }

    pub fn is_empty(&self) -> bool {
        self.guards.is_empty()
    }

    /// Each guard's table with its process-wide id, in guard order: what the metrics count
    /// guarded writes by ([`crate::admin::Metrics::set_tables`]).
    pub fn tables(&self) -> Vec<(TableId, String)> {
        let names = self.config_guards().iter().map(|g| g.table.to_string());
        self.table_ids.iter().copied().zip(names).collect()
    }
}

/// The process-wide id of a guarded table: what tracked versions are keyed by (never a guard's
/// index in one config, which a reload may change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableId(pub usize);

static TABLE_IDS: OnceLock<Mutex<HashMap<TableName, TableId>>> = OnceLock::new();

/// The process-wide id of a table name (assigned on first use, never reused).
pub fn table_id(table: &TableName) -> TableId {
    let mut ids = TABLE_IDS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let next = TableId(ids.len());
    *ids.entry(table.clone()).or_insert(next)
}

/// The table name of a process-wide id (a scan: for reports, not the hot path).
pub fn table_name(id: TableId) -> Option<TableName> {
    let ids = TABLE_IDS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    ids.iter().find(|(_, i)| **i == id).map(|(t, _)| t.clone())
}

/// What the guard says about one SQL text (a simple `Query` string, or a `Parse` statement).
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// Top-level statements in text order. A text with no statement (empty, comments only)
    /// has none.
    pub statements: Vec<Statement>,
    /// The `SELECT`s that pin one row of a guarded table (see [`reads`]), in text order.
    pub reads: Vec<PinnedRead>,
    /// A statement naming a guarded table that sqlparser could not parse as a read: whether
    /// it pins a row is unknown.
    pub read_unparsed: bool,
    /// Guards (indexes) whose table a read of the text names more than once (a self-join, the
    /// table again in a subquery): its rows cannot tell the instances apart, so they teach
    /// nothing of that table.
    pub shared: Vec<usize>,
    /// The `SELECT`s whose output the proxy may add key and version columns to (see
    /// [`capture`]), in text order.
    pub captures: Vec<Capture>,
}

/// A `SELECT` that reads guarded tables in a form whose output columns can be added to
/// without changing its result (see [`capture`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// Index of the statement in [`Analysis::statements`].
    pub statement: usize,
    /// Where the added columns go: the end of the statement's select list (a byte offset in
    /// the analysed text).
    pub at: usize,
    /// The guarded table instances of the statement's `FROM`, in text order.
    pub tables: Vec<CaptureTable>,
    /// The functions the select list and `ORDER BY` call (folded names, last part, each
    /// once): the capture holds only when the session knows none of them is an aggregate
    /// or a window function.
    pub calls: Vec<String>,
    /// The `SELECT` is the query of a `COPY (...) TO STDOUT` in this format: its rows come
    /// as `CopyData`, not `DataRow`s.
    pub copy: Option<CopyFormat>,
    /// The `SELECT` is the query of `DECLARE <name> CURSOR FOR ...`: its rows come from the
    /// `FETCH`es of that cursor.
    pub cursor: Option<CursorDecl>,
}

/// A cursor declared with a captured query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorDecl {
    /// The name as PostgreSQL folds it.
    pub name: String,
    /// `WITH HOLD`: it outlives its transaction.
    pub hold: bool,
}

/// The format of a captured `COPY (SELECT ...) TO STDOUT` (those the proxy can take columns
/// off: text with the tab delimiter and no header, and binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Binary,
}

/// One guarded table instance of a captured `SELECT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureTable {
    /// Index of the guard in [`GuardSet::guards`] (an alias when it names a view or a
    /// partition).
    pub guard: usize,
    /// SQL that qualifies the instance's columns: its alias, or its name as written.
    pub qualifier: String,
    /// The name is written without a schema: in a database where another relation has the
    /// same name, the name may mean that one, and the instance is not captured.
    pub unqualified: bool,
}

/// A read of one row of a guarded table: `SELECT ... FROM t WHERE key = value`. Its result
/// tells the version of that row even when it does not list the key columns, and a read of
/// the row that shows no version means the session no longer knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedRead {
    /// Index of the statement in [`Analysis::statements`]: the reply to a text of several
    /// statements holds one result per statement, in order.
    pub statement: usize,
    /// Index of the guard in [`GuardSet::guards`].
    pub guard: usize,
    /// One value per key column, in the guard's key order.
    pub key: Vec<ValueRef>,
    /// The select list may show the version column (it spells the column's name, or has a
    /// `*`). A read that cannot show it, of a table the session tracks nothing of, needs no
    /// following.
    pub shows_version: bool,
}

impl Analysis {
    /// The pinned read of a text that is one statement (a `Parse`).
    pub fn lone_read(&self) -> Option<&PinnedRead> {
        match self.reads.as_slice() {
            [read] if self.statements.len() == 1 => Some(read),
            _ => None,
        }
    }

    /// True when every statement passes unchanged: the relay forwards the original bytes.
    pub fn passes_unchanged(&self) -> bool {
        self.statements
            .iter()
            .all(|s| matches!(s.action, Action::Pass { .. }))
    }
}

/// One top-level statement of a text.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// Byte range of the statement in the analysed text, without the separating `;`.
    pub range: Range<usize>,
    pub action: Action,
}

/// What to do with one statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Not a guarded write: send it as written.
    Pass {
        /// Transaction control (`BEGIN`, `COMMIT`, `ROLLBACK`, `SAVEPOINT`, ...).
        tx_control: bool,
    },
    /// A write to a guarded table that cannot be rewritten safely: refuse it (fail closed).
    /// `unparsed`: refused because the parser rejects the text (the server may reject it too,
    /// in its own words).
    Refuse {
        table: TableName,
        reason: String,
        unparsed: bool,
    },
    /// A guarded write: rewrite it. Shared: a prepared statement keeps its write without a
    /// copy.
    Write(Arc<GuardedWrite>),
}

/// The statement kind of a guarded write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOp {
    Update,
    Delete,
    /// `INSERT ... ON CONFLICT DO UPDATE`: bumped in its `DO UPDATE`, never checked.
    Upsert,
}

/// Where a key or version value of a write comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueRef {
    /// A literal in the SQL text, unquoted (the string's content, or the number's text).
    Literal(String),
    /// An extended-protocol parameter, 1-based (`$1` is 1).
    Param(u16),
}

/// Which rows a guarded write touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Exactly one key: one value per key column, in the guard's key order.
    Key(Vec<ValueRef>),
    /// Anything else (`IN (...)`, ranges, no key predicate, joins that pick the rows): `bulk`.
    Bulk,
}

/// A write to a guarded table and everything needed to rewrite and check it.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardedWrite {
    /// Index of the guard in [`GuardSet::guards`].
    pub guard: usize,
    pub op: WriteOp,
    pub target: Target,
    /// `WHERE version = <literal or $n>` already in the statement (Hibernate style).
    pub pinned: Option<ValueRef>,
    /// The statement already assigns the version column in its `SET`: no bump is added.
    pub sets_version: bool,
    /// The statement has its own `RETURNING` list (the proxy appends its columns after it).
    pub client_returning: bool,
    /// Highest `$n` used in the statement text (0 when none).
    pub max_param: u16,
    /// The pieces the renderer splices into the original text (see [`rewrite`]).
    pub splice: rewrite::Splice,
}

/// The guards the unit tests of this module analyse and rewrite against.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::sync::Arc;

    use super::GuardSet;
    use crate::config::Config;

    pub const CONFIG: &str = r#"
[[guard]]
table = "public.invoice"
key = ["id"]

[[guard]]
table = 'public."tabSales Invoice"'
key = ["name"]
version = "modified"
kind = "timestamp"

[[guard]]
table = "shop.line"
key = ["invoice_id", "line_no"]

[[guard]]
table = "public.accounts"
key = ["aid"]
version = "xmin"

[[guard]]
table = "public.orders"
key = ['"Order ID"']
version = "order"
"#;

    pub fn guards() -> Arc<GuardSet> {
        GuardSet::new(&Config::parse(CONFIG, "test.toml").expect("test config"))
    }
}
