//! Errors the server raises for the guard.
//!
//! A conflict or a refusal must behave exactly like an error raised by PostgreSQL: abort the
//! transaction, stop the rest of the batch. So the proxy does not make up an ErrorResponse; it
//! sends a hidden `DO` block whose `RAISE` produces it, then removes the PL/pgSQL context
//! before the client sees it.

use crate::protocol::TxStatus;
use tracing::warn;

use super::checks::RaiseCtx;
use super::cx::Cx;
use super::state::GuardState;
use super::tag::Tag;
use crate::config::TableName;
use crate::engine::replies::Pending;
use crate::events::{Conflict, Outcome};
use crate::guard::conflict::{self, ConflictInfo, Refusal};
use crate::guard::values::quote_literal;
use crate::guard::{GuardSet, GuardedWrite, table_id};
use crate::protocol::{Frame, backend as be, frontend as fe};

/// Statement and portal name of the proxy's own raise in the extended protocol.
const RAISE_NAME: &[u8] = b"optlock_raise";

/// A `DO` block raising an error with these fields (code, value) as `RAISE ... USING`.
pub fn raise_fields_block(fields: &[(u8, String)]) -> String {
    let mut using = Vec::new();
    for (code, value) in fields {
        let option = match code {
            b'C' => "ERRCODE",
            b'M' => "MESSAGE",
            b'D' => "DETAIL",
            b'H' => "HINT",
            b's' => "SCHEMA",
            b't' => "TABLE",
            b'n' => "CONSTRAINT",
            _ => continue,
        };
        using.push(format!("{option} = {}", quote_literal(value)));
    }
    let body = format!("BEGIN RAISE EXCEPTION USING {}; END", using.join(", "));
    let mut tag = String::from("optlock");
    while body.contains(&format!("${tag}$")) {
        tag.push('x');
    }
    format!("DO ${tag}${body}${tag}$")
}

impl GuardState {
    /// A refused write to `table`: the block that raises the refusal, and its context.
    pub(super) fn refusal(&self, table: &TableName, refusal: Refusal) -> (String, RaiseCtx) {
        let block = raise_fields_block(&conflict::refusal_fields(table, &refusal));
        (block, RaiseCtx::refusal(table, refusal))
    }

    /// The refusal of a text that is not UTF-8, in a session whose client encoding is not
    /// UTF-8 either, and that may write a guarded table (the first one whose name it seems
    /// to hold).
    pub(super) fn not_utf8_refusal(&self, cx: &Cx<'_>, sql: &[u8]) -> (String, RaiseCtx) {
        let lower = String::from_utf8_lossy(sql).to_lowercase();
        let guards = &cx.settings.guards.guards;
        let table = guards
            .iter()
            .find(|g| lower.contains(&g.table.name.to_lowercase()))
            .unwrap_or(&guards[0])
            .table
            .clone();
        let refusal = Refusal::Unsupported(format!(
            "the statement text is not valid UTF-8 (client_encoding {}), so optlock cannot analyse it; use client_encoding UTF8",
            cx.params.client_encoding
        ));
        self.refusal(&table, refusal)
    }

    /// The check that goes before a write inside a data-modifying `WITH` that expects a
    /// version: the statement's row count is not the write's, so 0 rows cannot be told from
    /// success afterwards. The block raises the conflict now if the row changed, or locks it at
    /// the expected version for the rest of the transaction (the caller makes sure there is
    /// one). None when the write is not in a `WITH`, expects nothing, names no single row, or
    /// the transaction is already aborted (the write fails on its own there).
    pub(super) fn cte_lock_check(
        &self,
        cx: &Cx<'_>,
        guards: &GuardSet,
        w: &GuardedWrite,
        expected: Option<&str>,
        key: Option<&[String]>,
    ) -> Option<(String, RaiseCtx)> {
        if !w.splice.in_cte || cx.tx_status == TxStatus::Failed {
            return None;
        }
        let info = ConflictInfo::of(
            &guards.guards[w.guard],
            Some(key?.to_vec()),
            expected?.to_string(),
        );
        let block = conflict::lock_or_raise_block(&info, &cx.settings.config.conflict_sqlstate);
        Some((block, RaiseCtx::conflict(info, None)))
    }

    /// Queues a raise in the extended protocol: the block runs as the proxy's own statement and
    /// portal, and the batch waits for its outcome.
    pub(super) fn send_extended_raise(&mut self, cx: &mut Cx<'_>, block: &str, ctx: RaiseCtx) {
        fe::write_run(&mut cx.out.to_server, RAISE_NAME, block.as_bytes());
        fe::write_simple(&mut cx.out.to_server, fe::FLUSH);
        for _ in 0..2 {
            cx.out.replies.push(Pending::Close(Some(Tag::Hidden)));
        }
        cx.out.replies.push(Pending::Parse(Some(Tag::Hidden)));
        cx.out.replies.push(Pending::Bind(Some(Tag::Hidden)));
        cx.out
            .replies
            .push(Pending::Execute(Some(Tag::Raise(Box::new(ctx)))));
        cx.out.hold_client = true;
    }

    /// Queues a raise as a simple query (inside a simple-Query script).
    pub(super) fn send_simple_raise(&mut self, cx: &mut Cx<'_>, block: &str, ctx: RaiseCtx) {
        fe::write_query(&mut cx.out.to_server, block.as_bytes());
        cx.out
            .replies
            .push(Pending::Simple(Some(Tag::Raise(Box::new(ctx)))));
    }

    /// The reply to a raise in the extended protocol: the error goes to the client (or, when
    /// the block raised nothing, the write's held `CommandComplete`), and the batch goes on.
    pub(super) fn on_extended_raise_done(
        &mut self,
        cx: &mut Cx<'_>,
        tag: u8,
        msg: Frame<'_>,
        ctx: &RaiseCtx,
    ) {
        if tag == be::ERROR_RESPONSE {
            self.deliver_raised_error(cx, msg, ctx);
        } else if let Some(held) = &ctx.held {
            // The block raised nothing: the write's own conditions matched no row.
            cx.out.to_client.extend_from_slice(held);
        }
        cx.out.release_client();
    }

    /// A keyed write found its row at another version and failed on the spot: the client
    /// gets the conflict error in place of the server's, logged and counted as any conflict.
    pub(super) fn deliver_conflict(
        &mut self,
        cx: &mut Cx<'_>,
        (info, raised): (ConflictInfo, conflict::RaisedInWrite),
    ) {
        let fields =
            conflict::conflict_fields(&info, &raised, &cx.settings.config.conflict_sqlstate);
        be::write_error_fields(&mut cx.out.to_client, fields);
        self.log_conflict(cx, &info, Some(raised.found));
    }

    /// The raise's error reached the proxy: forward it without the PL/pgSQL context, log it,
    /// count it.
    pub(super) fn deliver_raised_error(&mut self, cx: &mut Cx<'_>, msg: Frame<'_>, ctx: &RaiseCtx) {
        let body = msg.body();
        be::write_without_fields(
            &mut cx.out.to_client,
            be::ERROR_RESPONSE,
            body,
            conflict::HIDDEN_FIELDS,
        );
        let field =
            |c| String::from_utf8_lossy(be::error_field(body, c).unwrap_or(b"")).into_owned();
        if let Some(info) = &ctx.conflict {
            let found = field(b'D')
                .rsplit_once("found ")
                .map(|(_, f)| f.trim().to_string());
            self.log_conflict(cx, info, found);
        } else {
            let ident = &self.ident;
            warn!(
                table = %ctx.table,
                reason = %field(b'M'),
                client = %ident.client,
                user = %ident.user,
                application_name = %ident.application_name,
                "guarded write refused"
            );
            cx.events.guarded(table_id(&ctx.table), Outcome::Refused);
        }
    }

    /// Logs, counts and records a conflict the client was given; `found` is the version the
    /// row was found at (None: the row is gone).
    fn log_conflict(&mut self, cx: &mut Cx<'_>, info: &ConflictInfo, found: Option<String>) {
        self.record_conflict(cx, info, found, Outcome::Conflict);
    }

    /// Logs, counts and records a conflict: raised to the client ([`Outcome::Conflict`]) or,
    /// in observe mode, let through ([`Outcome::Observed`]).
    pub(super) fn record_conflict(
        &mut self,
        cx: &mut Cx<'_>,
        info: &ConflictInfo,
        found: Option<String>,
        outcome: Outcome,
    ) {
        let table = info.table.to_string();
        let key = info.key_text();
        let ident = &self.ident;
        let shown = found.as_deref();
        if outcome == Outcome::Observed {
            warn!(
                table = %table, key = %key, expected = %info.expected,
                found = %shown.unwrap_or("NULL"), client = %ident.client, user = %ident.user,
                application_name = %ident.application_name,
                "optimistic lock conflict observed (observe mode: the write went through)"
            );
        } else {
            warn!(
                table = %table, key = %key, expected = %info.expected,
                found = %shown.unwrap_or("(row gone)"), client = %ident.client,
                user = %ident.user, application_name = %ident.application_name,
                "optimistic lock conflict"
            );
        }
        cx.events.guarded(table_id(&info.table), outcome);
        cx.events.conflict(Conflict {
            at: std::time::SystemTime::now(),
            table,
            key,
            expected: info.expected.clone(),
            found,
            client_addr: ident.client,
            user: ident.user.clone(),
            application_name: ident.application_name.clone(),
            outcome,
            reason: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_quotes_values_and_picks_a_free_tag() {
        let b = raise_fields_block(&[
            (b'C', "0A000".into()),
            (b'M', "it's $optlock$ here".into()),
            (b'S', "ERROR".into()),
        ]);
        assert!(b.starts_with("DO $optlockx$BEGIN RAISE EXCEPTION USING ERRCODE = E'0A000', MESSAGE = E'it''s $optlock$ here'; END$optlockx$"), "{b}");
    }
}
