//! What the session knows of prepared statements and portals: [`Prepared`] (a statement that
//! writes or reads a guarded table, [`PreparedWrite`] and its [`FullVariant`]), the
//! [`ReadPrep`] a read's text is prepared from again, [`Portal`], the [`ParseUndo`] of a
//! `Parse` the server may not carry out, a [`Kept`] unnamed write and
//! a [`StaleStatement`] to prepare again after a reload.
//!
//! Plain data: the messages that change it are handled in [`super::parse`], [`super::bind`],
//! [`super::describe`], [`super::close`], [`super::kept`] and [`super::stale`].

use std::sync::{Arc, OnceLock};

use smallvec::SmallVec;

use super::checks::WriteCheck;
use super::rows::{CapturedCursor, Col, Layout, ReadCheck, ReadPlan};
use crate::catalog::resolve::ResolvedGuards;
use crate::guard::cursors::CursorTouch;
use crate::guard::{GuardSet, GuardedWrite, PinnedRead};

/// What [`super::GuardState::parse_guarded`] did with a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not a guarded write: nothing sent.
    Passed,
    /// Sent rewritten.
    Rewritten,
    /// Replaced by a refusal raised on the server.
    Refused,
}

/// What a `Describe` told of a result: the guarded rows it carries, and where a pinned read's
/// version column is.
#[derive(Debug, Clone, Default)]
pub struct Described {
    pub reads: Option<ReadPlan>,
    pub version: Option<Col>,
}

/// What the guard knows of a prepared statement that writes or reads a guarded table.
#[derive(Debug, Default)]
pub struct Prepared {
    pub write: Option<PreparedWrite>,
    /// A `SELECT` that pins one guarded row.
    pub pinned: Option<Arc<PinnedRead>>,
    /// Guards the statement reads in more than one instance: its rows teach nothing of them.
    pub shared: Vec<usize>,
    /// A read prepared with the proxy's columns added to its output (read capture).
    pub capture: Option<Arc<PreparedCapture>>,
    /// Set by the reply to a `Describe` of the statement, or of its first described portal
    /// (each portal applies its own result formats).
    pub described: OnceLock<Described>,
    /// Parameter types: as the client declared them, completed by a `ParameterDescription`.
    pub declared_types: Vec<u32>,
    pub described_types: OnceLock<Vec<u32>>,
    /// A `DECLARE` whose query is captured: what the cursor's `FETCH`es carry, remembered
    /// when the statement is bound.
    pub cursor: Option<CapturedCursor>,
    /// The cursor names the statement declares or closes: forgotten when it is bound.
    pub touches: Vec<CursorTouch>,
}

impl Prepared {
    /// The type of each parameter, as far as known (0 = unknown).
    pub(super) fn param_types(&self) -> SmallVec<[u32; 8]> {
        let described = self.described_types.get().map_or(&[][..], Vec::as_slice);
        let n = self.declared_types.len().max(described.len());
        (0..n)
            .map(|i| match self.declared_types.get(i) {
                Some(&t) if t != 0 => t,
                _ => described.get(i).copied().unwrap_or(0),
            })
            .collect()
    }
}

/// A read prepared with key and version columns added to its output (see
/// [`crate::guard::capture`]).
#[derive(Debug)]
pub struct PreparedCapture {
    /// How many columns the proxy added at the end of the statement's output.
    pub added: usize,
    /// Each table instance's table and number of key columns, in column order.
    pub layout: Layout,
    /// Reads the added columns: in text, and in binary (a portal's `Bind` may ask either
    /// for every column).
    pub plans: [Arc<ReadPlan>; 2],
    /// The client's own text: what the statement is prepared from again when no guard is
    /// left to read its replies.
    pub text: String,
    /// A `FETCH` from a cursor declared with a captured query: the name may since have come
    /// to mean another cursor, so a portal's rows lose the added columns only once a
    /// `Describe` shows them ([`Portal::fetch_shown`]).
    pub fetch: bool,
}

/// What a read's `Parse` made of its text (see [`super::read_parse`]), kept
/// with the text's prefilter result: the same text prepared again (libpq's `PQexecParams`
/// prepares the unnamed statement for every execution) reuses it while the guards and what
/// the database resolved are the ones it was made with.
#[derive(Debug)]
pub struct ReadPrep {
    pub(super) guards: Arc<GuardSet>,
    pub(super) resolved: Arc<ResolvedGuards>,
    /// Whether the database's aggregate names were known (capture waits for them).
    pub(super) aggregates: bool,
    /// The text sent instead of the client's: its columns added (read capture).
    pub(super) sent: Option<Arc<str>>,
    pub(super) pinned: Option<Arc<PinnedRead>>,
    pub(super) shared: Vec<usize>,
    pub(super) capture: Option<Arc<PreparedCapture>>,
    pub(super) touches: Vec<CursorTouch>,
}

impl ReadPrep {
    /// True when it was made under these guards and this resolution.
    pub(super) fn fits(
        &self,
        guards: &Arc<GuardSet>,
        resolved: &Arc<ResolvedGuards>,
        aggregates: bool,
    ) -> bool {
        Arc::ptr_eq(&self.guards, guards)
            && Arc::ptr_eq(&self.resolved, resolved)
            && self.aggregates == aggregates
    }

    /// What the session knows of a statement prepared from it, with `types` declared.
    pub(super) fn prepared(&self, types: Vec<u32>) -> Prepared {
        Prepared {
            pinned: self.pinned.clone(),
            shared: self.shared.clone(),
            capture: self.capture.clone(),
            declared_types: types,
            touches: self.touches.clone(),
            ..Prepared::default()
        }
    }
}

/// A rewritten guarded write.
#[derive(Debug)]
pub struct PreparedWrite {
    /// The guards the statement was analysed with.
    pub guards: Arc<GuardSet>,
    pub write: Arc<GuardedWrite>,
    /// The parameter the proxy added for the expected version (1-based).
    pub extra: Option<u16>,
    pub added: usize,
    /// The client's own text: what the statement is prepared from again (after a reload,
    /// or in full after going lean).
    pub text: String,
    /// The statement went to the server without version check or `RETURNING` (see
    /// [`super::GuardState::lean_parse`]): a `Bind` of a row the session tracks prepares it
    /// again in full first.
    pub lean: bool,
    /// A named statement goes to the server as the client wrote it (bumped where the version
    /// kind needs it), and its full form with version check and `RETURNING` under a name of
    /// the proxy's: a `Bind` that checks a version, or must learn the row's new one, is bound
    /// to the full form; any other goes to the client's statement untouched.
    pub full: Option<FullVariant>,
    /// The name the server has the statement under when it is not the client's: an unnamed
    /// statement kept prepared (see [`super::kept`]).
    pub server_name: Option<Box<[u8]>>,
}

/// A `Parse` that changed what the session knows of a statement name, and how to take the
/// change back if the server does not carry it out: skipped after an earlier error in its
/// batch, or failed itself (a named statement the server has stays; a failed `Parse` of the
/// unnamed statement leaves none). A `Bind` then finds the statement the server really has.
#[derive(Debug)]
pub struct ParseUndo {
    pub(super) name: Box<[u8]>,
    pub(super) before: Option<Arc<Prepared>>,
    /// What the `Parse` left under the name (unset: nothing).
    pub(super) after: OnceLock<Arc<Prepared>>,
    /// The proxy's own `Parse` (a statement prepared again in full): its reply is swallowed.
    pub hidden: bool,
    /// The kept statement this `Parse` prepares, usable once the server answered it.
    pub kept: OnceLock<Arc<Kept>>,
    /// Set when a message of a later batch replaced or dropped the statement whatever this
    /// `Parse` does (a `Parse` of the unnamed statement, a simple `Query` for it, a `Close` of
    /// the name): what the session knows of the name then follows that message, and this
    /// `Parse` skipped or failed restores nothing.
    pub(super) superseded: OnceLock<()>,
}

/// The full form of a named statement that went lean.
#[derive(Debug)]
pub struct FullVariant {
    pub name: Box<[u8]>,
    /// The parameter the proxy added for the expected version (1-based).
    pub extra: u16,
    pub added: usize,
}

/// The names the proxy gives the full forms of named statements.
pub const FULL_VARIANT_PREFIX: &str = "optlock_full_";

/// What the guard knows of a portal.
#[derive(Debug, Default)]
pub struct Portal {
    pub write: Option<WriteCheck>,
    /// The statement bound, for reads.
    pub statement: Option<Arc<Prepared>>,
    /// A pinned read with its key bound.
    pub pinned: Option<ReadCheck>,
    /// The body of the `Bind` of a captured read that pins one row: its rows teach their key
    /// and version themselves, so the row's key is read from it only when the read finds no
    /// row (see [`super::GuardState::forget_unfound`]).
    pub pinned_bind: Option<SmallVec<[u8; 64]>>,
    /// The columns read capture added at the end of each row (how many), and the plan that
    /// reads them in the portal's format.
    pub capture: Option<(usize, Arc<ReadPlan>)>,
    /// The raw result-format section of the `Bind` (inline for up to three codes).
    pub result_formats: SmallVec<[u8; 8]>,
    /// Set by the reply to a `Describe` of the portal (formats as bound).
    pub described: OnceLock<Described>,
    /// The statement's description with this portal's formats, made on first use.
    pub(super) bound: OnceLock<Described>,
    /// The portal of a captured `FETCH`: set by the proxy's own `Describe` of it, true when
    /// its result ends with the proxy's columns.
    pub fetch_shown: Option<OnceLock<bool>>,
}

impl Portal {
    /// The result's description, from a `Describe` of the portal or of its statement. The
    /// `Describe` reply may come after the `Execute` was sent (pipelining): this is read when
    /// the rows arrive.
    pub fn described(&self) -> Option<&Described> {
        if let Some(d) = self.described.get() {
            return Some(d);
        }
        let s = self.statement.as_ref()?.described.get()?;
        Some(self.bound.get_or_init(|| {
            Described {
                reads: s
                    .reads
                    .as_ref()
                    .map(|p| p.with_formats(&self.result_formats)),
                version: s.version.map(|c| c.with_format(&self.result_formats)),
            }
        }))
    }
}

/// The full form of an unnamed guarded write, prepared under a name of the proxy's.
#[derive(Debug)]
pub struct Kept {
    /// The client's text (the key it is kept under).
    pub(super) text: Box<[u8]>,
    pub(super) types: Box<[u32]>,
    /// What the unnamed statement is while it stands for this one (its write carries the
    /// server-side name).
    pub(super) prepared: Arc<Prepared>,
    /// Set when the server answered the `Parse`: until then it is not used.
    pub(super) ready: OnceLock<()>,
}

impl Kept {
    /// The server answered its `Parse`.
    pub fn prepared_on_server(&self) {
        let _ = self.ready.set(());
    }

    /// The name the server has it under.
    pub(super) fn name(&self) -> Option<&[u8]> {
        self.prepared.write.as_ref()?.server_name.as_deref()
    }
}

/// A statement the client prepared before the guards changed, to be prepared again.
#[derive(Debug, Clone)]
pub struct StaleStatement {
    pub(super) text: String,
    pub(super) types: Vec<u32>,
    /// What the proxy knew of it before.
    pub(super) old: Option<Arc<Prepared>>,
}

impl StaleStatement {
    /// A statement to prepare again from the client's text and parameter types.
    pub fn new(text: String, types: Vec<u32>) -> StaleStatement {
        StaleStatement {
            text,
            types,
            old: None,
        }
    }
}
