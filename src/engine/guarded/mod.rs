//! The guard in the relay: rewrites guarded writes on their way to the server and reads their
//! replies on the way back.
//!
//! Plain data, each file importing only the ones above it:
//!
//! - [`rows`]: where a result's guarded keys and versions are, and pinned reads in flight.
//! - [`copy_out`]: the rows of a captured `COPY (SELECT ...) TO STDOUT`, taken apart.
//! - [`checks`]: what is checked of a guarded write, its plan, raises, simple-Query scripts.
//! - [`names`]: the map by statement or portal name that the state's maps use.
//! - [`statements`]: prepared statements, portals, kept and stale statements, `Parse` undos.
//! - [`tag`]: what the guard attaches to a reply it follows.
//! - [`cx`]: what the guard may touch of its session for one call.
//! - [`txn`]: what the session follows of the server's transactions and savepoints.
//! - [`state`]: the per-session [`GuardState`] and the session's [`Ident`].
//!
//! Behaviour, each file an `impl GuardState` block importing only the data files:
//!
//! - [`dispatch`]: routes each server reply to the file that follows its kind.
//! - [`session`]: a reloaded config, and session commands (`DISCARD ALL`, `DEALLOCATE`).
//! - [`catalog`]: the proxy's own queries: guard resolution, statement listing.
//! - [`reads`]: versions tracked from result rows (any `SELECT`, text or binary).
//! - [`pinned`]: versions read by a `SELECT` that pins one row without selecting its key.
//! - [`capture`]: reads sent with key and version columns added to their output (read
//!   capture), and the portals that strip them.
//! - [`plan`]: what a guarded write expects (a version, nothing, or a refusal).
//! - [`simple`]: a simple `Query` holding guarded writes becomes a script of steps.
//! - [`script`]: runs that script, so that a conflict stops the rest of the text exactly as a
//!   server error would.
//! - [`block`]: the implicit transaction block of that script, and the client's transaction
//!   control inside it, as PostgreSQL runs them.
//! - [`parse`], [`bind`], [`describe`], [`execute`], [`close`]: the extended protocol's
//!   messages for guarded statements (an extra parameter carries the expected version; the
//!   batch waits for the row count); [`read_parse`]: the `Parse` of a read, planned once per
//!   text.
//! - [`counts`]: a `Bind` whose counts the server rejects gets the server's error in the
//!   client's terms.
//! - [`kept`]: unnamed guarded writes kept prepared under names of the proxy's.
//! - [`stale`]: statements prepared before a reload that guards their table.
//! - [`raise`]: the `DO` blocks that make the server itself raise conflicts and refusals.
//! - [`observe`]: observe mode: refusals and stale writes recorded instead of raised.
//! - [`tx_ends`]: where each transaction or savepoint ends, applied to the tracked versions,
//!   so that what a session learned in one that did not commit is undone.
//!
//! With no guard configured none of this runs: every hook returns at its first test.

mod checks;
mod copy_out;
mod cx;
mod names;
mod rows;
mod state;
mod statements;
mod tag;

mod bind;
mod block;
mod capture;
mod catalog;
mod close;
mod counts;
mod cursors;
mod describe;
mod dispatch;
mod execute;
mod kept;
mod observe;
mod parse;
mod pinned;
mod plan;
mod raise;
mod read_parse;
mod reads;
mod script;
mod session;
mod simple;
mod stale;
mod tx_ends;
mod txn;

pub use checks::{RaiseCtx, Script, WriteCheck};
pub use cx::{Cx, Outbox, SessionParams};
pub use raise::raise_fields_block;
pub use rows::ReadPlan;
pub use state::{GuardState, Ident};
pub use statements::{Portal, Prepared};
pub use tag::{StmtTag, Tag, held_batch_for, skipped_parse};
