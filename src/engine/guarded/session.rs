//! What the session does that is not one statement: it took a reloaded config
//! ([`GuardState::on_new_settings`]), or sent a session command (`DISCARD ALL`, `RESET ALL`,
//! `DEALLOCATE`) that drops what the proxy knows of its statements and rows.

use std::sync::Arc;

use tracing::debug;

use super::cx::Cx;
use super::state::GuardState;
use crate::catalog::resolve::ResolvedGuards;

impl GuardState {
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
                    self.cursors.clear();
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
