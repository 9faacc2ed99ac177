//! `Bind` messages whose counts PostgreSQL rejects: parameters the statement does not
//! require, parameter formats that do not match the parameters, result formats that do not
//! match the columns. The server must reject them exactly as it would directly, in its own
//! words and with the client's own counts, although the proxy binds another statement (the
//! full form, a kept statement) with one more parameter and more result columns.
//!
//! Where the server has the client's statement as written, the `Bind` goes there as it is.
//! Otherwise it goes to the proxy's statement, and the error that comes back is given the
//! client's statement name and counts ([`BindFix`]).

use bytes::BytesMut;

use super::checks::BindFix;
use super::cx::Cx;
use super::parse::extra_params;
use super::state::GuardState;
use super::statements::{Prepared, PreparedWrite};
use super::tag::Tag;
use crate::engine::replies::Pending;
use crate::protocol::{Frame, backend as be, frontend as fe};

impl GuardState {
    /// A `Bind` of a guarded write whose parameter or parameter format count the server
    /// rejects. Returns true when the guard sent it (so that the server's error is what the
    /// client gets directly).
    pub(super) fn bind_counts_wrong(
        &mut self,
        cx: &mut Cx<'_>,
        msg: Frame<'_>,
        b: &fe::Bind<'_>,
        prepared: &Prepared,
        pw: &PreparedWrite,
    ) -> bool {
        let (n, nf) = (b.params.len(), b.param_formats.len());
        let required = usize::from(pw.write.max_param).max(prepared.declared_types.len());
        let formats_wrong = nf > 1 && nf != n;
        if !formats_wrong && n == required {
            return false;
        }
        let server_statement = pw.server_name.as_deref().unwrap_or(b.statement);
        if pw.full.is_some() || (pw.extra.is_none() && pw.server_name.is_none()) {
            // The server has the client's statement as written.
            cx.out.to_server.extend_from_slice(msg.bytes());
        } else if formats_wrong {
            // The server names no statement in this error and counts what it was sent.
            write_bind_to(&mut cx.out.to_server, b, server_statement, msg.body());
        } else {
            // One parameter more than the client sent: never the count of the proxy's
            // statement, which has one more than the client's.
            let rewritten = b.renamed(server_statement);
            let extra = extra_params(pw);
            fe::write_bind_rewritten(&mut cx.out.to_server, &rewritten, &[None, None][..extra], 0);
            let fix = BindFix {
                shift: extra,
                names: (server_statement != b.statement)
                    .then(|| (server_statement.into(), b.statement.into())),
            };
            cx.out
                .replies
                .push(Pending::Bind(Some(Tag::BindFix(Box::new(fix)))));
            return true;
        }
        cx.out.replies.push(Pending::Bind(None));
        true
    }

    /// The reply to a `Bind` tagged with a [`BindFix`]: an error the client gets in its own
    /// terms. Returns true when the guard forwarded it changed.
    pub(super) fn on_bind_fix(cx: &mut Cx<'_>, tag: u8, body: &[u8], fix: &BindFix) -> bool {
        if tag != be::ERROR_RESPONSE {
            return false;
        }
        let Some(message) = be::error_field(body, b'M') else {
            return false;
        };
        let Some(fixed) = fix_message(&String::from_utf8_lossy(message), fix) else {
            return false;
        };
        let mut fields = Vec::new();
        let mut rest = body;
        while let Some((&code, after)) = rest.split_first()
            && code != 0
            && let Some(end) = after.iter().position(|&b| b == 0)
        {
            let value = match code {
                b'M' => fixed.clone(),
                _ => String::from_utf8_lossy(&after[..end]).into_owned(),
            };
            fields.push((code, value));
            rest = &after[end + 1..];
        }
        be::write_error_fields(&mut cx.out.to_client, fields);
        true
    }
}

/// Writes the client's `Bind` (`body`) as it is, bound to `statement` instead.
fn write_bind_to(out: &mut BytesMut, b: &fe::Bind<'_>, statement: &[u8], body: &[u8]) {
    let rest = &body[b.portal.len() + 1 + b.statement.len() + 1..];
    let len = 4 + b.portal.len() + 1 + statement.len() + 1 + rest.len();
    out.extend_from_slice(&[fe::BIND]);
    out.extend_from_slice(&(len as i32).to_be_bytes());
    out.extend_from_slice(b.portal);
    out.extend_from_slice(&[0]);
    out.extend_from_slice(statement);
    out.extend_from_slice(&[0]);
    out.extend_from_slice(rest);
}

/// A server message about counts told in the client's terms: the proxy's statement name (in
/// double quotes) replaced by the client's, and each of the two numbers outside it lowered by
/// `fix.shift`. None when the message does not read so (another error, another wording).
pub fn fix_message(message: &str, fix: &BindFix) -> Option<String> {
    let (text, name_at) = match &fix.names {
        Some((server, client)) => {
            let quoted = format!("\"{}\"", String::from_utf8_lossy(server));
            let at = message.find(&quoted)?;
            let client = format!("\"{}\"", String::from_utf8_lossy(client));
            let text = format!(
                "{}{client}{}",
                &message[..at],
                &message[at + quoted.len()..]
            );
            (text, Some(at..at + client.len()))
        }
        None => (message.to_string(), None),
    };
    let outside = |i: usize| name_at.as_ref().is_none_or(|r| !r.contains(&i));
    let bytes = text.as_bytes();
    let mut runs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() && outside(i) {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            runs.push(start..i);
        } else {
            i += 1;
        }
    }
    if runs.len() != 2 {
        return None;
    }
    let mut out = text.clone();
    for r in runs.iter().rev() {
        let n: usize = text[r.clone()].parse().ok()?;
        out.replace_range(r.clone(), &n.checked_sub(fix.shift)?.to_string());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(shift: usize, names: Option<(&str, &str)>) -> BindFix {
        BindFix {
            shift,
            names: names.map(|(s, c)| (s.as_bytes().into(), c.as_bytes().into())),
        }
    }

    #[test]
    fn counts_and_names_are_told_in_the_clients_terms() {
        assert_eq!(
            fix_message(
                "bind message supplies 2 parameters, but prepared statement \"optlock_full_1\" requires 3",
                &fix(1, Some(("optlock_full_1", "s7")))
            )
            .as_deref(),
            Some("bind message supplies 1 parameters, but prepared statement \"s7\" requires 2")
        );
        assert_eq!(
            fix_message(
                "bind message supplies 12 parameters, but prepared statement \"\" requires 3",
                &fix(1, None)
            )
            .as_deref(),
            Some("bind message supplies 11 parameters, but prepared statement \"\" requires 2")
        );
        assert_eq!(
            fix_message(
                "bind message has 4 result formats but query has 5 columns",
                &fix(2, None)
            )
            .as_deref(),
            Some("bind message has 2 result formats but query has 3 columns")
        );
        // Not the message this was for: left as it is.
        assert_eq!(
            fix_message("unnamed prepared statement does not exist", &fix(1, None)),
            None
        );
        assert_eq!(fix_message("a 1 b 2 c 3", &fix(1, None)), None);
        assert_eq!(
            fix_message("statement \"x\" requires 3 of 4", &fix(1, Some(("y", "x")))),
            None
        );
    }
}
