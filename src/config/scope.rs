//! Roll-out settings of a guard: its `mode` (enforce, or observe: count what would have
//! conflicted and change nothing) and its `scope`, the rules that pick a mode per session by
//! `application_name` and user (`*` and `?` globs; the first rule that matches decides, and
//! a session no rule matches gets the guard's own `mode`).
//!
//! ```toml
//! [[guard]]
//! table = "public.item"
//! key = ["id"]
//! mode = "observe"                  # everyone else: observed
//! [[guard.scope]]
//! application_name = ["pos-*"]      # the POS backend: enforced
//! mode = "enforce"
//! [[guard.scope]]
//! application_name = ["pg_dump", "pg_restore"]
//! mode = "skip"                     # not guarded at all (no check, no bump)
//! ```

use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

/// How a guard treats the writes of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardMode {
    /// Check versions: a stale write is a conflict error, a refused write an error.
    Enforce,
    /// Run every write with the client's own effect plus the version bump; a write that
    /// would have conflicted or been refused is logged and counted as `observed`.
    Observe,
    /// Not guarded for this session: writes pass as written (no check, no bump, no capture).
    Skip,
}

impl GuardMode {
    pub fn as_str(self) -> &'static str {
        match self {
            GuardMode::Enforce => "enforce",
            GuardMode::Observe => "observe",
            GuardMode::Skip => "skip",
        }
    }
}

impl fmt::Display for GuardMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule of a guard's scope: sessions whose `application_name` and user match get `mode`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ScopeRule {
    /// Globs on `application_name`; empty: any.
    pub application_name: Vec<String>,
    /// Globs on the user name; empty: any.
    pub user: Vec<String>,
    pub mode: GuardMode,
}

impl ScopeRule {
    /// True when a session of `user` named `application` falls under this rule.
    pub fn matches(&self, application: &str, user: &str) -> bool {
        let any = |globs: &[String], s: &str| globs.is_empty() || globs.iter().any(|g| glob(g, s));
        any(&self.application_name, application) && any(&self.user, user)
    }
}

/// The mode a guard with default `mode` and rules `scope` has for a session.
pub fn mode_for(mode: GuardMode, scope: &[ScopeRule], application: &str, user: &str) -> GuardMode {
    scope
        .iter()
        .find(|r| r.matches(application, user))
        .map_or(mode, |r| r.mode)
}

/// The rules as `SHOW GUARDS` lists them: `application_name pos-*: enforce; user batch,
/// etl: skip` (empty when the guard has none).
pub fn scope_text(scope: &[ScopeRule]) -> String {
    let mut out = String::new();
    for r in scope {
        if !out.is_empty() {
            out.push_str("; ");
        }
        if !r.application_name.is_empty() {
            out.push_str("application_name ");
            out.push_str(&r.application_name.join(","));
        }
        if !r.user.is_empty() {
            if !r.application_name.is_empty() {
                out.push_str(" and ");
            }
            out.push_str("user ");
            out.push_str(&r.user.join(","));
        }
        out.push_str(": ");
        out.push_str(r.mode.as_str());
    }
    out
}

/// `*` matches any run of characters, `?` one character; everything else itself (case
/// sensitive, as PostgreSQL compares names).
pub fn glob(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    // Greedy with backtracking to the last `*`: linear for the patterns people write.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < t.len() {
        if i < p.len() && (p[i] == '?' || p[i] == t[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// A `[[guard.scope]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScopeRule {
    application_name: Option<Vec<String>>,
    user: Option<Vec<String>>,
    mode: Spanned<GuardMode>,
}

/// The rules of one guard, checked: each names at least one list, and an empty glob or an
/// empty list matches nothing anyone would mean.
pub(super) fn build_scope(
    table: &str,
    raw: Vec<Spanned<RawScopeRule>>,
) -> Result<Vec<ScopeRule>, (Option<Range<usize>>, String)> {
    let mut rules = Vec::with_capacity(raw.len());
    for r in raw {
        let span = r.span();
        let r = r.into_inner();
        if r.application_name.is_none() && r.user.is_none() {
            return Err((
                Some(span),
                format!(
                    "guard {table}: a scope rule needs application_name or user (a list of globs, e.g. application_name = [\"pos-*\"]); for every session set the guard's own mode"
                ),
            ));
        }
        for (what, list) in [("application_name", &r.application_name), ("user", &r.user)] {
            if let Some(list) = list
                && (list.is_empty() || list.iter().any(String::is_empty))
            {
                return Err((
                    Some(span.clone()),
                    format!(
                        "guard {table}: scope {what}: an empty list or an empty name matches no session; leave it out to match any"
                    ),
                ));
            }
        }
        rules.push(ScopeRule {
            application_name: r.application_name.unwrap_or_default(),
            user: r.user.unwrap_or_default(),
            mode: r.mode.into_inner(),
        });
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_shells_do() {
        assert!(glob("pos-*", "pos-till-3"));
        assert!(glob("pos-*", "pos-"));
        assert!(!glob("pos-*", "xpos-1"));
        assert!(glob("*dump", "pg_dump"));
        assert!(glob("pg_?ump", "pg_dump"));
        assert!(!glob("pg_?ump", "pg_ump"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(glob("exact", "exact"));
        assert!(!glob("Exact", "exact"));
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let rules = vec![
            ScopeRule {
                application_name: vec!["pos-*".into()],
                user: vec![],
                mode: GuardMode::Enforce,
            },
            ScopeRule {
                application_name: vec!["pg_dump".into()],
                user: vec![],
                mode: GuardMode::Skip,
            },
            ScopeRule {
                application_name: vec![],
                user: vec!["batch".into()],
                mode: GuardMode::Skip,
            },
        ];
        let m = |app, user| mode_for(GuardMode::Observe, &rules, app, user);
        assert_eq!(m("pos-1", "batch"), GuardMode::Enforce);
        assert_eq!(m("pg_dump", "postgres"), GuardMode::Skip);
        assert_eq!(m("psql", "batch"), GuardMode::Skip);
        assert_eq!(m("psql", "postgres"), GuardMode::Observe);
    }
}
