//! The guard in the relay: rewrites guarded writes on their way to the server and reads their
//! replies on the way back.
//!
//! - [`reads`]: versions tracked from result rows (any `SELECT`, text or binary).
//! - [`pinned`]: versions read by a `SELECT` that pins one row without selecting its key.
//! - [`simple`]: a simple `Query` holding guarded writes runs as a script of steps, so that a
//!   conflict stops the rest of the text exactly as a server error would.
//! - [`extended`]: `Parse`/`Bind`/`Describe`/`Execute` of guarded statements (an extra
//!   parameter carries the expected version; the batch waits for the row count).
//! - [`kept`]: unnamed guarded writes kept prepared under names of the proxy's.
//! - [`raise`]: the `DO` blocks that make the server itself raise conflicts and refusals.
//! - [`stale`]: statements prepared before a reload that guards their table.
//!
//! With no guard configured none of this runs: every hook returns at its first test.

mod catalog;
mod cx;
mod extended;
mod kept;
mod pinned;
mod raise;
mod reads;
mod simple;
mod stale;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tracing::debug;

use crate::catalog::resolve::ResolvedGuards;
use crate::engine::replies::{Pending, Step};
use crate::guard::cache::AnalysisCache;
use crate::guard::prefilter::{Found, Prefilter};
use crate::guard::track::Tracker;
use crate::guard::{GuardedWrite, WriteOp};
use crate::protocol::{backend as be, frontend as fe};

pub use cx::{Cx, Outbox, SessionParams};
pub use extended::{Portal, Prepared};
pub use raise::RaiseCtx;
pub use reads::ReadPlan;
pub use simple::{Script, WriteCheck};

/// What the guard attaches to a pending reply.
pub type StmtTag = Option<Box<Tag>>;

/// Why the guard follows a reply.
#[derive(Debug)]
pub enum Tag {
    /// The `Execute` of the guard resolution run after login and after a reload (see
    /// [`catalog`]).
    Resolve { rows: Vec<Vec<Option<String>>> },
    /// The `Execute` of the listing of the session's prepared statements after a reload.
    Listing { rows: Vec<Vec<Option<String>>> },
    /// Any other message of a catalog batch: every reply hidden, errors included.
    Catalog,
    /// The `Sync` ending a catalog batch: its `ReadyForQuery` is hidden, the client's
    /// messages go on when `release`, and the client gets `login_ready` (its first
    /// `ReadyForQuery`, held for the resolution at login) when there is one.
    CatalogEnd {
        release: bool,
        login_ready: Option<BytesMut>,
    },
    /// A message of the proxy's own: every reply is swallowed (in the extended protocol an
    /// error still reaches the client).
    Hidden,
    /// One step of a simple-Query script; a guarded write when `check` is set.
    Step(Option<Box<WriteCheck>>),
    /// A `DO` block raising a conflict or a refusal.
    Raise(Box<RaiseCtx>),
    /// The hidden `COMMIT`/`ROLLBACK` ending a wrapped script: its error and `ReadyForQuery`
    /// go to the client.
    Final,
    /// `Describe` of a statement the guard rewrote or reads from.
    DescribeStatement(Arc<Prepared>),
    /// `Describe` of a portal the guard rewrote or reads from.
    DescribePortal(Arc<Portal>),
    /// `Execute` of a portal whose rows or row count the guard needs.
    Execute(Arc<Portal>),
    /// A simple `Query` (or script step) holding `SELECT`s that pin one guarded row each.
    Read(Box<pinned::Reads>),
    /// A `Parse` that changed what the session knows of a statement name (the client's, or
    /// the proxy's own, hidden), undone if the server skips it or fails it.
    Parsed(Arc<extended::ParseUndo>),
}

/// True for an entry the client's batch waits for (a checked write's `Execute`, or the
/// proxy's raise): when the server skips it after an error, the batch must go on.
pub fn held_batch_for(p: &Pending<StmtTag>) -> bool {
    matches!(p, Pending::Execute(Some(t)) if t.holds_batch() || matches!(**t, Tag::Raise(_)))
}

/// What an entry the server skipped after an error leaves to undo (see [`Tag::Parsed`]).
pub fn skipped_parse(p: &Pending<StmtTag>) -> Option<Arc<extended::ParseUndo>> {
    match p {
        Pending::Parse(Some(t)) => match t.as_ref() {
            Tag::Parsed(undo) => Some(undo.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// Who the session is, for conflict logs.
#[derive(Debug, Clone)]
pub struct Ident {
    pub client: SocketAddr,
    pub user: String,
    pub database: String,
    pub application_name: String,
}

/// `Parse` texts whose prefilter result a session remembers (forgotten all at once beyond).
const FOUND_TEXTS: usize = 1024;

/// A map keyed by statement or portal names (or statement texts), looked up on every `Parse`,
/// `Bind` and `Execute`: hashed with foldhash (fast on short keys, seeded per process) rather
/// than SipHash.
type NameMap<V> = HashMap<Box<[u8]>, V, foldhash::fast::RandomState>;

/// Per-session guard state.
pub struct GuardState {
    pub ident: Ident,
    cache: AnalysisCache,
    /// What the prefilter found in each `Parse` text (the extended protocol sends the same
    /// texts again and again; scanning one costs more than looking it up).
    found: NameMap<Found>,
    resolved: Arc<ResolvedGuards>,
    tracker: Tracker,
    statements: NameMap<Arc<Prepared>>,
    /// Statements prepared before a reload that now write a guarded table.
    stale: NameMap<stale::StaleStatement>,
    portals: NameMap<Arc<Portal>>,
    /// Columns of the result being read in a simple query (set by its `RowDescription`).
    row_plan: Option<Arc<ReadPlan>>,
    script: Option<Script>,
    /// The guards changed: resolve them again before the next statement.
    need_resolve: bool,
    /// The catalog batch under way.
    catalog: catalog::CatalogState,
    /// How many full variants of named statements the proxy prepared (it names them).
    full_variants: u64,
    /// Unnamed guarded writes kept prepared, by the client's text.
    kept: NameMap<Arc<kept::Kept>>,
    /// Texts of unnamed guarded writes seen once (not kept yet).
    seen_once: NameMap<()>,
    /// Full variants of statements the client deallocated with SQL `DEALLOCATE`: closed at
    /// the start of its next extended-protocol batch.
    deallocated: Vec<Box<[u8]>>,
    /// Where a checked write inside a transaction block stands when its `Sync` goes right
    /// behind it (see [`GuardState::check_after_sync`]).
    after_sync: AfterSync,
}

/// A checked write whose batch's `Sync` was sent without waiting for its row count.
#[derive(Debug, Default)]
enum AfterSync {
    #[default]
    None,
    /// The write's `Sync` is next from the client: hold what comes after it.
    SyncNext,
    /// The `Sync` went out: the write's row count is awaited.
    Sent,
    /// The write matched 0 rows: its conflict is raised when the `Sync`'s `ReadyForQuery`
    /// arrives, instead of forwarding it.
    Raise(String, Box<raise::RaiseCtx>),
}

impl GuardState {
    pub fn new(ident: Ident, track_limit: usize) -> GuardState {
        GuardState {
            ident,
            cache: AnalysisCache::new(),
            found: NameMap::default(),
            resolved: Arc::new(ResolvedGuards::default()),
            tracker: Tracker::new(track_limit),
            statements: NameMap::default(),
            stale: NameMap::default(),
            portals: NameMap::default(),
            row_plan: None,
            script: None,
            need_resolve: false,
            catalog: catalog::CatalogState::default(),
            full_variants: 0,
            kept: NameMap::default(),
            seen_once: NameMap::default(),
            deallocated: Vec::new(),
            after_sync: AfterSync::None,
        }
    }

    /// The conflict waiting for a batch's `ReadyForQuery`, if any (any other state stays).
    fn take_raise(&mut self) -> Option<(String, Box<raise::RaiseCtx>)> {
        if !matches!(self.after_sync, AfterSync::Raise(..)) {
            return None;
        }
        match std::mem::take(&mut self.after_sync) {
            AfterSync::Raise(block, ctx) => Some((block, ctx)),
            _ => None,
        }
    }

    /// What the prefilter finds in `text`, remembered for the texts of `Parse` messages.
    fn found_in_parse(&mut self, text: &[u8], prefilter: &Prefilter) -> Found {
        if let Some(found) = self.found.get(text) {
            return *found;
        }
        let found = prefilter.scan(text);
        if self.found.len() >= FOUND_TEXTS {
            self.found.clear();
        }
        self.found.insert(text.into(), found);
        found
    }

    /// True when full forms of deallocated statements wait to be closed.
    #[inline]
    pub fn has_deallocated(&self) -> bool {
        !self.deallocated.is_empty()
    }

    /// Number of row versions this session tracks.
    pub fn tracked(&self) -> usize {
        self.tracker.len()
    }

    /// Notes session commands in a text sent to the server: `DISCARD ALL`, `RESET ALL`,
    /// `DEALLOCATE`. Called for texts in which the prefilter found one of those words.
    /// Forgetting more than needed is safe (a forgotten version reads as "nothing known"), so
    /// the scan is simple: every `;`-separated part, comments skipped. In an aborted
    /// transaction a `DEALLOCATE` fails: the statement stays, and so does what the proxy
    /// knows of it.
    pub fn on_session_command(&mut self, sql: &[u8], aborted: bool) {
        for part in String::from_utf8_lossy(sql).split(';') {
            let words: Vec<&str> = skip_comments(part).split_whitespace().take(3).collect();
            let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
            let w: Vec<&str> = upper.iter().map(String::as_str).collect();
            match w.as_slice() {
                ["DISCARD", "ALL", ..] => {
                    self.forget_kept(false);
                    self.tracker.clear();
                    self.statements.clear();
                    self.stale.clear();
                    self.portals.clear();
                    self.deallocated.clear();
                }
                ["RESET", "ALL", ..] => self.tracker.clear(),
                ["DEALLOCATE", "ALL", ..] | ["DEALLOCATE", "PREPARE", "ALL", ..] if !aborted => {
                    self.forget_kept(false);
                    self.statements.clear();
                    self.stale.clear();
                    self.deallocated.clear();
                }
                ["DEALLOCATE", "PREPARE", _, ..] | ["DEALLOCATE", _, ..] if !aborted => {
                    let raw = words.last().copied().unwrap_or("");
                    let name = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
                        Some(quoted) => quoted.to_string(),
                        None => raw.to_lowercase(),
                    };
                    let full = self
                        .statements
                        .remove(name.as_bytes())
                        .and_then(|p| p.write.as_ref()?.full.as_ref().map(|f| f.name.clone()));
                    self.deallocated.extend(full);
                    self.stale.remove(name.as_bytes());
                }
                _ => {}
            }
        }
    }

    /// True when the rows of the front reply must be read whole (not streamed).
    pub fn inspects_rows(&self, front: Option<&Pending<StmtTag>>) -> bool {
        match front {
            Some(Pending::Simple(t)) => t.is_some() || self.row_plan.is_some(),
            Some(Pending::Execute(t)) => t.is_some(),
            _ => false,
        }
    }
}

impl GuardState {
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

    fn guards_active(&self, cx: &Cx<'_>) -> bool {
        !cx.settings.guards.is_empty()
    }

    /// The session took a reloaded config (before a client's `Query`, `Parse` or `Bind`): new
    /// guards for what comes next, the analysis cache dropped. The guards are resolved again
    /// at the next batch boundary ([`GuardState::resolve_at_boundary`]).
    pub fn on_new_settings(&mut self, cx: &mut Cx<'_>) {
        self.forget_kept(true);
        self.cache.clear();
        self.found.clear();
        self.resolved = Arc::new(ResolvedGuards::default());
        self.need_resolve = self.guards_active(cx);
        if !self.guards_active(cx) {
            self.unguard_statements();
        }
        debug!(
            generation = cx.settings.generation,
            "session follows the reloaded config"
        );
    }

    /// After a reload, at the first batch boundary: the guards are resolved again in this
    /// database and the statements the session prepared before are listed (see [`stale`]).
    /// Also behind client batches still running: a client that pipelines may never wait for
    /// its replies. Returns true when those queries were just sent: the client's message must
    /// then wait for their replies.
    pub fn resolve_at_boundary(&mut self, cx: &mut Cx<'_>, at_boundary: bool) -> bool {
        if self.need_resolve && at_boundary && cx.tx_status != b'E' {
            self.need_resolve = false;
            self.send_resolve(cx, true, None);
            return true;
        }
        false
    }

    /// The first `ReadyForQuery`: resolve the guards before the client may send anything.
    /// Returns true when the message was kept back.
    pub fn on_login(&mut self, cx: &mut Cx<'_>, ready: &[u8]) -> bool {
        if !self.guards_active(cx) {
            return false;
        }
        self.send_resolve(cx, false, Some(BytesMut::from(ready)));
        true
    }

    pub fn guard_query(&mut self, cx: &mut Cx<'_>, msg: &[u8]) -> Result<bool, String> {
        // The query drops the server's unnamed statement.
        if self.keeps_statements() {
            self.take_kept_unnamed();
        }
        if !self.stale.is_empty() {
            self.stale.remove(&b""[..]);
        }
        if !self.guards_active(cx) {
            return Ok(false);
        }
        let Some(sql) = fe::query_text(&msg[5..]) else {
            return Ok(false);
        };
        let found = cx.settings.guards.prefilter.scan(sql);
        if found.session {
            self.on_session_command(sql, cx.tx_status == b'E');
        }
        self.simple_query(cx, msg, sql, found)
    }

    /// True when [`GuardState::guard_server_message`] has nothing to do with a server message:
    /// it is not a `ReadyForQuery`, and the entry it answers carries no tag and is not a simple
    /// `Query` (whose rows may be tracked). Checked first because it is the common case.
    #[inline]
    pub fn guard_ignores(
        &self,
        cx: &Cx<'_>,
        tag: u8,
        step: Step,
        popped: Option<&Pending<StmtTag>>,
    ) -> bool {
        let plain = |p: &Pending<StmtTag>| {
            !matches!(p, Pending::Simple(_)) && p.guard().is_none_or(|g| g.is_none())
        };
        tag != be::READY_FOR_QUERY
            && match step {
                Step::Completes => popped.is_none_or(plain),
                Step::Within => cx.out.replies.front().is_none_or(plain),
                Step::Unrelated => true,
            }
    }

    /// A server message, given the entry it answers. Returns true when the guard took care of
    /// it (forwarded a changed form, or kept it from the client).
    pub fn guard_server_message(
        &mut self,
        cx: &mut Cx<'_>,
        tag: u8,
        msg: &[u8],
        step: Step,
        popped: Option<Pending<StmtTag>>,
    ) -> Result<bool, String> {
        if tag == be::READY_FOR_QUERY {
            self.on_ready(cx, &msg[5..]);
            if let Some((block, ctx)) = self.take_raise() {
                // The batch's `ReadyForQuery` (inside the transaction block) gives way to the
                // conflict's own.
                self.send_simple_raise(cx, &block, *ctx);
                return Ok(true);
            }
        }
        match (step, popped) {
            (Step::Completes, Some(p)) => self.on_reply_completing(cx, tag, msg, p),
            (Step::Within, _) => self.on_reply_within(cx, tag, msg),
            _ => Ok(false),
        }
    }

    /// A reply that leaves its entry at the front of the queue.
    fn on_reply_within(&mut self, cx: &mut Cx<'_>, tag: u8, msg: &[u8]) -> Result<bool, String> {
        let Some(front) = cx.out.replies.front_mut() else {
            return Ok(false);
        };
        match front {
            Pending::Execute(Some(t)) | Pending::Sync(Some(t)) if t.is_catalog() => {
                Ok(GuardState::on_catalog_within(tag, msg, t))
            }
            Pending::Simple(Some(t)) => match t.as_mut() {
                Tag::Hidden => Ok(true),
                Tag::Step(_) => self.on_step_reply(cx, tag, msg),
                Tag::Raise(_) => self.on_raise_reply(cx, tag, msg),
                Tag::Final => Ok(tag != be::ERROR_RESPONSE),
                Tag::Read(_) => {
                    // Taken out of the queue while the session works with it, then put back.
                    let Tag::Read(mut reads) = std::mem::replace(t.as_mut(), Tag::Hidden) else {
                        unreachable!("matched Tag::Read");
                    };
                    if tag == be::ERROR_RESPONSE && reads.step {
                        self.fail_script();
                    }
                    self.follow_reads(cx, tag, msg, &mut reads);
                    if let Some(Pending::Simple(Some(t))) = cx.out.replies.front_mut() {
                        **t = Tag::Read(reads);
                    }
                    Ok(false)
                }
                Tag::DescribeStatement(_)
                | Tag::DescribePortal(_)
                | Tag::Execute(_)
                | Tag::Parsed(_)
                | Tag::Resolve { .. }
                | Tag::Listing { .. }
                | Tag::Catalog
                | Tag::CatalogEnd { .. } => Ok(false),
            },
            Pending::Simple(None) => {
                self.track_simple_rows(cx, tag, msg);
                Ok(false)
            }
            Pending::Execute(Some(_)) | Pending::DescribeStatement(Some(_)) => {
                self.on_extended_within(cx, tag, msg)
            }
            _ => Ok(false),
        }
    }

    /// A reply that completes its entry (already popped).
    fn on_reply_completing(
        &mut self,
        cx: &mut Cx<'_>,
        tag: u8,
        msg: &[u8],
        p: Pending<StmtTag>,
    ) -> Result<bool, String> {
        match p {
            Pending::Parse(Some(t))
            | Pending::Bind(Some(t))
            | Pending::Close(Some(t))
            | Pending::Execute(Some(t))
            | Pending::Sync(Some(t))
                if t.is_catalog() =>
            {
                self.on_catalog_complete(cx, tag, msg, *t)
            }
            Pending::Simple(Some(t)) => match *t {
                Tag::Hidden => Ok(true),
                Tag::Step(check) => self.on_step_done(cx, msg, check),
                Tag::Raise(ctx) => {
                    self.on_raise_done(cx, msg, ctx)?;
                    Ok(true)
                }
                Tag::Final => {
                    self.script = None;
                    cx.out.release_client();
                    cx.out.to_client.extend_from_slice(msg);
                    Ok(true)
                }
                Tag::Read(reads) if reads.step => self.on_step_done(cx, msg, None),
                Tag::Read(_)
                | Tag::DescribeStatement(_)
                | Tag::DescribePortal(_)
                | Tag::Execute(_)
                | Tag::Parsed(_)
                | Tag::Resolve { .. }
                | Tag::Listing { .. }
                | Tag::Catalog
                | Tag::CatalogEnd { .. } => Ok(false),
            },
            Pending::Simple(None) => {
                self.row_plan = None;
                Ok(false)
            }
            other => self.on_extended_complete(cx, tag, msg, other),
        }
    }

    /// Every `ReadyForQuery`: transaction ends forget portals (and, with
    /// `track = "transaction"`, tracked versions).
    fn on_ready(&mut self, cx: &mut Cx<'_>, body: &[u8]) {
        if be::ready_status(body) == b'I' {
            if !self.portals.is_empty() {
                self.portals.clear();
            }
            if cx.settings.config.track == crate::config::TrackScope::Transaction {
                self.tracker.clear();
            }
        }
    }
}

/// The text after leading white space and comments.
fn skip_comments(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, after)| after);
        } else {
            return s;
        }
    }
}
