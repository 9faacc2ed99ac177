//! Statement analysis: splits a SQL text into top-level statements, decides with sqlparser's AST
//! which of them write a guarded table, and locates with the tokenizer's positions the clauses a
//! rewrite splices into.
//!
//! The AST decides, the tokens locate: the rewritten text is always the client's own text with
//! insertions, never SQL re-rendered from the AST.

use std::ops::{ControlFlow, Range};
use std::sync::Arc;

use sqlparser::ast::{
    self, AssignmentTarget, BinaryOperator, Expr, FromTable, Ident, ObjectName, ObjectNamePart,
    OnConflictAction, OnInsert, SetExpr, TableFactor, TableObject, UnaryOperator, Value, Visit,
    Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer, Whitespace};

use super::rewrite::Splice;
use super::{
    Action, Analysis, GuardSet, GuardedWrite, PinnedRead, Statement, Target, ValueRef, WriteOp,
};
use crate::config::TableName;

/// Analyses a SQL text (a simple `Query` string or one `Parse` statement).
pub fn analyze(sql: &str, guards: &GuardSet) -> Analysis {
    let lexed = match Lexed::new(sql) {
        Ok(lexed) => lexed,
        Err(()) => return untokenizable(sql, guards),
    };
    let mut statements = Vec::new();
    for segment in lexed.split() {
        let Some(toks) = lexed.trim(segment) else {
            continue;
        };
        let range = lexed.spans[toks.start].start..lexed.spans[toks.end - 1].end;
        let action = analyze_statement(&lexed, toks, guards);
        statements.push(Statement { range, action });
    }
    let mut reads = Vec::new();
    let mut read_unparsed = false;
    for (i, st) in statements.iter().enumerate() {
        let text = &sql[st.range.clone()];
        if st.action == (Action::Pass { tx_control: false })
            && guards.prefilter.names_guarded(text.as_bytes())
        {
            match super::reads::parse_pinned_read(text, guards) {
                Ok(Some(read)) => reads.push(PinnedRead {
                    statement: i,
                    ..read
                }),
                Ok(None) => {}
                Err(_) => read_unparsed = true,
            }
        }
    }
    Analysis {
        statements,
        reads,
        read_unparsed,
    }
}

/// The text's tokens with their byte ranges.
struct Lexed<'a> {
    text: &'a str,
    toks: Vec<TokenWithSpan>,
    spans: Vec<Range<usize>>,
}

impl<'a> Lexed<'a> {
    fn new(text: &'a str) -> Result<Lexed<'a>, ()> {
        let toks = Tokenizer::new(&PostgreSqlDialect {}, text)
            .tokenize_with_location()
            .map_err(|_| ())?;
        let spans = byte_spans(text, &toks).ok_or(())?;
        Ok(Lexed { text, toks, spans })
    }

    fn token(&self, i: usize) -> &Token {
        &self.toks[i].token
    }

    /// Token index ranges of the top-level statements (separators excluded).
    fn split(&self) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let (mut start, mut depth, mut block) = (0usize, 0i32, 0i32);
        for i in 0..self.toks.len() {
            match self.token(i) {
                Token::LParen | Token::LBracket => depth += 1,
                Token::RParen | Token::RBracket => depth -= 1,
                Token::SemiColon if depth <= 0 && block <= 0 => {
                    out.push(start..i);
                    start = i + 1;
                    depth = 0;
                    block = 0;
                }
                // `BEGIN ATOMIC ... END` (SQL-standard function bodies) holds `;`s; `CASE ... END`
                // nests inside it.
                Token::Word(_)
                    if self.is_word(i, "begin")
                        && self
                            .next_sig(i + 1, self.toks.len())
                            .is_some_and(|j| self.is_word(j, "atomic")) =>
                {
                    block += 1
                }
                Token::Word(_) if block > 0 && self.is_word(i, "case") => block += 1,
                Token::Word(_) if block > 0 && self.is_word(i, "end") => block -= 1,
                _ => {}
            }
        }
        out.push(start..self.toks.len());
        out
    }

    /// Drops surrounding whitespace (not comments); `None` when nothing but comments remain.
    fn trim(&self, r: Range<usize>) -> Option<Range<usize>> {
        let toks = &self.toks[r.clone()];
        toks.iter().position(|t| !is_trivia(&t.token))?;
        let first = toks.iter().position(|t| !is_space(&t.token))?;
        let mut last = r.start + toks.iter().rposition(|t| !is_space(&t.token))?;
        // A trailing `--` comment keeps the newline that ends it: whatever follows the
        // statement must not land inside the comment.
        if matches!(
            self.token(last),
            Token::Whitespace(Whitespace::SingleLineComment { .. })
        ) && last + 1 < r.end
            && matches!(self.token(last + 1), Token::Whitespace(Whitespace::Newline))
        {
            last += 1;
        }
        Some(r.start + first..last + 1)
    }

    fn is_word(&self, i: usize, word: &str) -> bool {
        matches!(self.token(i), Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
    }

    /// First token at or after `i` (before `end`) that is not whitespace or a comment.
    fn next_sig(&self, i: usize, end: usize) -> Option<usize> {
        (i..end).find(|&j| !is_trivia(self.token(j)))
    }

    /// Last token before `i` (at or after `lo`) that is not whitespace or a comment.
    fn prev_sig(&self, i: usize, lo: usize) -> Option<usize> {
        (lo..i).rev().find(|&j| !is_trivia(self.token(j)))
    }

    /// Transaction control, decided from the first words.
    fn tx_control(&self, r: &Range<usize>) -> bool {
        let Some(first) = self.next_sig(r.start, r.end) else {
            return false;
        };
        let second = self.next_sig(first + 1, r.end);
        let second_is = |w: &str| second.is_some_and(|j| self.is_word(j, w));
        if self.is_word(first, "start") || self.is_word(first, "prepare") {
            return second_is("transaction");
        }
        if self.is_word(first, "begin") {
            return !second_is("atomic");
        }
        ["commit", "end", "rollback", "abort", "savepoint", "release"]
            .iter()
            .any(|w| self.is_word(first, w))
    }

    /// Highest `$n` among the tokens.
    fn max_param(&self, r: &Range<usize>) -> u16 {
        r.clone()
            .filter_map(|i| match self.token(i) {
                Token::Placeholder(p) => param_number(p),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// The tokens the parser sees: `ONLY` and a `*` after the target name (PostgreSQL syntax
    /// sqlparser does not accept) become spaces, so every position stays where it was.
    fn parser_tokens(&self, r: &Range<usize>) -> Vec<TokenWithSpan> {
        let mut out: Vec<TokenWithSpan> = self.toks[r.clone()].to_vec();
        let blank = |t: &mut TokenWithSpan| t.token = Token::Whitespace(Whitespace::Space);
        for i in r.clone() {
            if !self.is_word(i, "only") {
                continue;
            }
            let Some(p) = self.prev_sig(i, r.start) else {
                continue;
            };
            if ["update", "from", "join", "using"]
                .iter()
                .any(|w| self.is_word(p, w))
                || matches!(self.token(p), Token::Comma)
            {
                blank(&mut out[i - r.start]);
                // `ONLY (name)`: the parentheses only group the name; sqlparser would read them
                // as a nested join and miss the target.
                if let Some(open) = self.next_sig(i + 1, r.end)
                    && matches!(self.token(open), Token::LParen)
                    && let Some(name) = self.next_sig(open + 1, r.end)
                    && let Some(last) = self.name_end(name, r.end)
                    && let Some(close) = self.next_sig(last + 1, r.end)
                    && matches!(self.token(close), Token::RParen)
                {
                    blank(&mut out[open - r.start]);
                    blank(&mut out[close - r.start]);
                    continue;
                }
                // `ONLY name *`: the `*` is a legacy spelling of the default.
                if let Some(name) = self.next_sig(i + 1, r.end)
                    && let Some(last) = self.name_end(name, r.end)
                    && let Some(star) = self.next_sig(last + 1, r.end)
                    && matches!(self.token(star), Token::Mul)
                {
                    blank(&mut out[star - r.start]);
                }
            }
        }
        // `UPDATE name * SET` / `DELETE FROM name * ...` without ONLY.
        for i in r.clone() {
            let delete_from = self.is_word(i, "from")
                && self
                    .prev_sig(i, r.start)
                    .is_some_and(|p| self.is_word(p, "delete"));
            if !(self.is_word(i, "update") || delete_from) {
                continue;
            }
            if let Some(name) = self.next_sig(i + 1, r.end)
                && let Some(last) = self.name_end(name, r.end)
                && let Some(star) = self.next_sig(last + 1, r.end)
                && matches!(self.token(star), Token::Mul)
                && self
                    .next_sig(star + 1, r.end)
                    .is_none_or(|a| matches!(self.token(a), Token::Word(_) | Token::RParen))
            {
                blank(&mut out[star - r.start]);
            }
        }
        // `ON CONFLICT (cols) WHERE predicate DO ...`: the index predicate only picks the
        // arbiter index, and sqlparser does not accept it.
        for i in r.clone() {
            if !(self.is_word(i, "conflict")
                && self
                    .prev_sig(i, r.start)
                    .is_some_and(|p| self.is_word(p, "on")))
            {
                continue;
            }
            let Some(open) = self.next_sig(i + 1, r.end) else {
                continue;
            };
            if !matches!(self.token(open), Token::LParen) {
                continue;
            }
            let mut depth = 0;
            let Some(close) = (open..r.end).find(|&j| {
                match self.token(j) {
                    Token::LParen => depth += 1,
                    Token::RParen => depth -= 1,
                    _ => {}
                }
                depth == 0
            }) else {
                continue;
            };
            let Some(where_kw) = self.next_sig(close + 1, r.end) else {
                continue;
            };
            if !self.is_word(where_kw, "where") {
                continue;
            }
            let mut depth = 0;
            let Some(do_kw) = (where_kw..r.end).find(|&j| {
                match self.token(j) {
                    Token::LParen => depth += 1,
                    Token::RParen => depth -= 1,
                    _ => {}
                }
                depth == 0 && self.is_word(j, "do")
            }) else {
                continue;
            };
            for t in &mut out[where_kw - r.start..do_kw - r.start] {
                if !is_trivia(&t.token) {
                    blank(t);
                }
            }
        }
        out
    }
}

impl Lexed<'_> {
    /// The last token of a (qualified) name starting at token `i`: `word (. word)*`.
    fn name_end(&self, i: usize, end: usize) -> Option<usize> {
        if !matches!(self.token(i), Token::Word(_)) {
            return None;
        }
        let mut last = i;
        while let Some(dot) = self.next_sig(last + 1, end)
            && matches!(self.token(dot), Token::Period)
            && let Some(word) = self.next_sig(dot + 1, end)
            && matches!(self.token(word), Token::Word(_))
        {
            last = word;
        }
        Some(last)
    }
}

fn is_space(t: &Token) -> bool {
    matches!(
        t,
        Token::Whitespace(Whitespace::Space | Whitespace::Newline | Whitespace::Tab)
    )
}

fn is_trivia(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_))
}

fn param_number(p: &str) -> Option<u16> {
    let digits = p.strip_prefix('$')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        digits
            .parse::<u32>()
            .map_or(u16::MAX, |n| n.min(u16::MAX as u32) as u16),
    )
}

/// Byte ranges of the tokens. Locations count lines from `\n` and columns in chars; tokens are
/// contiguous, so one forward walk over the text converts them all.
fn byte_spans(text: &str, toks: &[TokenWithSpan]) -> Option<Vec<Range<usize>>> {
    let mut chars = text.char_indices();
    let (mut pos, mut line, mut col) = (0usize, 1u64, 1u64);
    let mut advance_to = |loc: Location| -> Option<usize> {
        while (line, col) < (loc.line, loc.column) {
            let (i, c) = chars.next()?;
            pos = i + c.len_utf8();
            if c == '\n' {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
        }
        ((line, col) == (loc.line, loc.column)).then_some(pos)
    };
    let mut out = Vec::with_capacity(toks.len());
    for t in toks {
        let start = advance_to(t.span.start)?;
        let end = advance_to(t.span.end)?;
        out.push(start..end);
    }
    Some(out)
}

/// A text the tokenizer rejects: one statement, refused when it may write a guarded table.
fn untokenizable(sql: &str, guards: &GuardSet) -> Analysis {
    let start = sql.len() - sql.trim_start().len();
    let end = sql.trim_end().len();
    if start >= end {
        return Analysis {
            statements: vec![],
            reads: Vec::new(),
            read_unparsed: false,
        };
    }
    let action = if guards.prefilter.may_write_guarded(sql.as_bytes()) {
        let lower = sql.to_ascii_lowercase();
        let guard = guards
            .guards
            .iter()
            .find(|g| lower.contains(&g.table.name.to_ascii_lowercase()))
            .unwrap_or(&guards.guards[0]);
        Action::Refuse {
            table: guard.table.clone(),
            reason: cannot_parse(&guard.table),
        }
    } else {
        let word: String = sql[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect::<String>()
            .to_ascii_lowercase();
        Action::Pass {
            tx_control: matches!(
                word.as_str(),
                "begin" | "commit" | "end" | "rollback" | "abort" | "savepoint" | "release"
            ),
        }
    };
    Analysis {
        statements: vec![Statement {
            range: start..end,
            action,
        }],
        reads: Vec::new(),
        read_unparsed: false,
    }
}

fn cannot_parse(table: &TableName) -> String {
    format!("optlock cannot parse this statement, and it may write guarded table {table}")
}

fn analyze_statement(lexed: &Lexed, r: Range<usize>, guards: &GuardSet) -> Action {
    let tx_control = lexed.tx_control(&r);
    let text = &lexed.text[lexed.spans[r.start].start..lexed.spans[r.end - 1].end];
    if !guards.prefilter.may_write_guarded(text.as_bytes()) {
        return Action::Pass { tx_control };
    }
    let parsed = Parser::new(&PostgreSqlDialect {})
        .with_tokens_with_locations(lexed.parser_tokens(&r))
        .parse_statements();
    match parsed {
        Ok(mut stmts) if stmts.len() == 1 => {
            let stmt = stmts.pop().expect("one statement");
            decide(&stmt, lexed, &r, guards, tx_control)
        }
        _ => unparsed(lexed, &r, guards, tx_control),
    }
}

/// A statement the parser rejects: refused when it names a guarded table and a write.
fn unparsed(lexed: &Lexed, r: &Range<usize>, guards: &GuardSet, tx_control: bool) -> Action {
    // DDL does not write rows: function and procedure bodies (`BEGIN ATOMIC ...`) and trigger
    // definitions run later, out of reach. A rule is refused: its actions would run unguarded.
    let mut words = r.clone().filter(|&i| !is_trivia(lexed.token(i))).take(4);
    if let Some(first) = words.next()
        && ["create", "alter", "drop", "comment", "grant", "revoke"]
            .iter()
            .any(|w| lexed.is_word(first, w))
    {
        let rule = words
            .filter(|&i| !(lexed.is_word(i, "or") || lexed.is_word(i, "replace")))
            .take(1)
            .any(|i| lexed.is_word(i, "rule"));
        if !rule {
            return Action::Pass { tx_control };
        }
    }
    let scan = lexed.scan_writes(r.clone(), guards);
    match scan.table {
        Some(g) if scan.writes => Action::Refuse {
            table: g.table.clone(),
            reason: if scan.current_of {
                format!(
                    "WHERE CURRENT OF cannot carry a version check; optlock refuses it on guarded table {}",
                    g.table
                )
            } else {
                cannot_parse(&g.table)
            },
        },
        _ => Action::Pass { tx_control },
    }
}

/// What the words of an unparsed statement say about guarded writes.
struct Scan<'g> {
    /// The first guarded table named.
    table: Option<&'g crate::config::Guard>,
    /// A write word (`UPDATE`, `DELETE`, `MERGE`, `INSERT`) that is not a row lock or a
    /// foreign-key action.
    writes: bool,
    current_of: bool,
}

impl Lexed<'_> {
    fn scan_writes<'g>(&self, r: Range<usize>, guards: &'g GuardSet) -> Scan<'g> {
        let mut scan = Scan {
            table: None,
            writes: false,
            current_of: false,
        };
        for i in r.clone() {
            let Token::Word(w) = self.token(i) else {
                continue;
            };
            if scan.table.is_none() {
                let folded = match self.unicode_ident(i) {
                    Some(decoded) => decoded,
                    None => fold(&w.value, w.quote_style),
                };
                scan.table = guards.guards.iter().find(|g| g.table.name == folded);
                // `U&"..." UESCAPE '?'`: escapes this scan does not decode may spell any name.
                if scan.table.is_none() && self.is_word(i, "uescape") {
                    scan.table = guards.guards.first();
                }
            }
            if w.quote_style.is_some() {
                continue;
            }
            if ["update", "delete", "merge", "insert"]
                .iter()
                .any(|k| w.value.eq_ignore_ascii_case(k))
            {
                // `FOR [NO KEY] UPDATE` locks rows, `ON UPDATE/DELETE` is a foreign-key action.
                let locking = self
                    .prev_sig(i, r.start)
                    .is_some_and(|p| ["for", "key", "on"].iter().any(|k| self.is_word(p, k)));
                scan.writes |= !locking;
            }
            if self.is_word(i, "current")
                && self
                    .next_sig(i + 1, r.end)
                    .is_some_and(|j| self.is_word(j, "of"))
            {
                scan.current_of = true;
            }
        }
        scan
    }

    /// The name a `U&"..."` identifier spells (the tokenizer splits it into `U`, `&` and a
    /// quoted word), with the default `\` escapes decoded. `None` for any other token.
    fn unicode_ident(&self, i: usize) -> Option<String> {
        let Token::Word(w) = self.token(i) else {
            return None;
        };
        w.quote_style?;
        let amp = i.checked_sub(1)?;
        let u = i.checked_sub(2)?;
        if !matches!(self.token(amp), Token::Ampersand) || !self.is_word(u, "u") {
            return None;
        }
        // No space between `U`, `&` and the quote.
        if self.spans[u].end != self.spans[amp].start || self.spans[amp].end != self.spans[i].start
        {
            return None;
        }
        decode_unicode_escapes(&w.value)
    }
}

/// `\XXXX`, `\+XXXXXX` and `\\` of a `U&` identifier; `None` when malformed.
fn decode_unicode_escapes(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let digits = match chars.peek() {
            Some('\\') => {
                chars.next();
                out.push('\\');
                continue;
            }
            Some('+') => {
                chars.next();
                6
            }
            _ => 4,
        };
        let hex: String = (0..digits).filter_map(|_| chars.next()).collect();
        if hex.len() != digits {
            return None;
        }
        out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
    }
    Some(out)
}

/// PostgreSQL's identifier folding: unquoted names fold to lower case (ASCII only).
fn fold(value: &str, quote_style: Option<char>) -> String {
    match quote_style {
        Some(_) => value.to_string(),
        None => value.to_ascii_lowercase(),
    }
}

pub(super) fn fold_ident(i: &Ident) -> String {
    fold(&i.value, i.quote_style)
}

/// An identifier as the client wrote it (quoted again when it was quoted).
fn written(i: &Ident) -> String {
    match i.quote_style {
        Some(q) => {
            let qq: String = [q, q].iter().collect();
            format!("{q}{}{q}", i.value.replace(q, &qq))
        }
        None => i.value.clone(),
    }
}

fn name_parts(name: &ObjectName) -> Option<Vec<&Ident>> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(i),
            _ => None,
        })
        .collect()
}

/// The guard of a table reference: schema and name when schema-qualified, else the first guard
/// with that name.
pub(super) fn resolve(name: &ObjectName, guards: &GuardSet) -> Option<usize> {
    let parts: Vec<String> = name_parts(name)?.into_iter().map(fold_ident).collect();
    match parts.as_slice() {
        [] => None,
        [name] => guards.guards.iter().position(|g| &g.table.name == name),
        [.., schema, name] => guards
            .guards
            .iter()
            .position(|g| &g.table.schema == schema && &g.table.name == name),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FoundOp {
    Write(WriteOp),
    Merge,
}

/// A write to a guarded table somewhere in a statement.
struct Found {
    guard: usize,
    op: FoundOp,
    /// Where its first keyword (`UPDATE`, `DELETE`, `INSERT`, `MERGE`) starts.
    at: Location,
    stmt: ast::Statement,
}

struct Collector<'g> {
    guards: &'g GuardSet,
    found: Vec<Found>,
}

impl Visitor for Collector<'_> {
    type Break = ();

    fn pre_visit_statement(&mut self, stmt: &ast::Statement) -> ControlFlow<()> {
        let hit = match stmt {
            ast::Statement::Update(u) => match &u.table.relation {
                TableFactor::Table { name, .. } => resolve(name, self.guards).map(|g| {
                    (
                        g,
                        FoundOp::Write(WriteOp::Update),
                        u.update_token.0.span.start,
                    )
                }),
                _ => None,
            },
            ast::Statement::Delete(d) => delete_target(d)
                .and_then(|(name, _)| resolve(name, self.guards))
                .map(|g| {
                    (
                        g,
                        FoundOp::Write(WriteOp::Delete),
                        d.delete_token.0.span.start,
                    )
                }),
            ast::Statement::Insert(i) => match (&i.table, &i.on) {
                (
                    TableObject::TableName(name),
                    Some(OnInsert::OnConflict(ast::OnConflict {
                        action: OnConflictAction::DoUpdate(_),
                        ..
                    })),
                ) => resolve(name, self.guards).map(|g| {
                    (
                        g,
                        FoundOp::Write(WriteOp::Upsert),
                        i.insert_token.0.span.start,
                    )
                }),
                _ => None,
            },
            ast::Statement::Merge(m) => match &m.table {
                TableFactor::Table { name, .. } => resolve(name, self.guards)
                    .map(|g| (g, FoundOp::Merge, m.merge_token.0.span.start)),
                _ => None,
            },
            _ => None,
        };
        if let Some((guard, op, at)) = hit {
            self.found.push(Found {
                guard,
                op,
                at,
                stmt: stmt.clone(),
            });
        }
        ControlFlow::Continue(())
    }
}

fn delete_target(d: &ast::Delete) -> Option<(&ObjectName, Option<&ast::TableAlias>)> {
    let from = match &d.from {
        FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
    };
    match &from.first()?.relation {
        TableFactor::Table { name, alias, .. } => Some((name, alias.as_ref())),
        _ => None,
    }
}

/// Where the write of a (sub)statement starts, when it is an UPDATE, DELETE or INSERT.
fn write_start(stmt: &ast::Statement) -> Option<Location> {
    match stmt {
        ast::Statement::Update(u) => Some(u.update_token.0.span.start),
        ast::Statement::Delete(d) => Some(d.delete_token.0.span.start),
        ast::Statement::Insert(i) => Some(i.insert_token.0.span.start),
        _ => None,
    }
}

fn body_write_start(body: &SetExpr) -> Option<Location> {
    match body {
        SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Insert(s) => write_start(s),
        _ => None,
    }
}

/// Whether a write at `at` can be rewritten: `Some(false)` for the statement itself (also
/// after a `WITH`), `Some(true)` for a data-modifying CTE of the top-level `WITH`.
fn rewritable_position(top: &ast::Statement, at: Location) -> Option<bool> {
    if write_start(top) == Some(at) {
        return Some(false);
    }
    let ast::Statement::Query(q) = top else {
        return None;
    };
    if body_write_start(&q.body) == Some(at) {
        return Some(false);
    }
    let with = q.with.as_ref()?;
    with.cte_tables
        .iter()
        .any(|cte| body_write_start(&cte.query.body) == Some(at))
        .then_some(true)
}

fn explain_analyzes(analyze: bool, options: &Option<Vec<ast::UtilityOption>>) -> bool {
    analyze
        || options.iter().flatten().any(|o| {
            o.name.value.eq_ignore_ascii_case("analyze")
                && !matches!(&o.arg, Some(Expr::Value(v)) if matches!(&v.value,
                    Value::Boolean(false))
                    || matches!(&v.value, Value::Number(n, _) if n == "0"))
                && !matches!(&o.arg, Some(Expr::Identifier(i))
                    if i.value.eq_ignore_ascii_case("off") || i.value.eq_ignore_ascii_case("false"))
        })
}

fn decide(
    top: &ast::Statement,
    lexed: &Lexed,
    r: &Range<usize>,
    guards: &GuardSet,
    tx_control: bool,
) -> Action {
    let pass = Action::Pass { tx_control };
    let mut in_explain = false;
    match top {
        // Writes inside function, procedure and trigger bodies run on the server, out of reach.
        ast::Statement::CreateFunction(_)
        | ast::Statement::CreateProcedure { .. }
        | ast::Statement::CreateTrigger(_) => return pass,
        ast::Statement::Explain {
            analyze, options, ..
        } => {
            if !explain_analyzes(*analyze, options) {
                return pass;
            }
            in_explain = true;
        }
        _ => {}
    }
    let mut collector = Collector {
        guards,
        found: Vec::new(),
    };
    let _ = top.visit(&mut collector);
    let found = collector.found;
    let Some(first) = found.first() else {
        return pass;
    };
    let table = |f: &Found| guards.guards[f.guard].table.clone();
    if let Some(m) = found.iter().find(|f| f.op == FoundOp::Merge) {
        return Action::Refuse {
            table: table(m),
            reason: format!(
                "MERGE cannot carry a version check; optlock refuses it on guarded table {}",
                table(m)
            ),
        };
    }
    if found.len() > 1 {
        let names: Vec<String> = found.iter().map(|f| table(f).to_string()).collect();
        return Action::Refuse {
            table: table(first),
            reason: format!(
                "several guarded writes in one statement ({}); optlock checks one per statement",
                names.join(", ")
            ),
        };
    }
    if in_explain {
        return Action::Refuse {
            table: table(first),
            reason: format!(
                "EXPLAIN ANALYZE runs the write without a version check; optlock refuses it on guarded table {}",
                table(first)
            ),
        };
    }
    if matches!(top, ast::Statement::Prepare { .. }) {
        return Action::Refuse {
            table: table(first),
            reason: format!(
                "a guarded write in SQL-level PREPARE cannot carry a version check (use the protocol's Parse instead); guarded table {}",
                table(first)
            ),
        };
    }
    let Some(in_cte) = rewritable_position(top, first.at) else {
        return Action::Refuse {
            table: table(first),
            reason: format!(
                "optlock cannot rewrite a write to guarded table {} in this position",
                table(first)
            ),
        };
    };
    match build_write(first, in_cte, lexed, r, guards) {
        Some(w) => Action::Write(Arc::new(w)),
        None => Action::Refuse {
            table: table(first),
            reason: format!(
                "optlock cannot locate the clauses of this write to guarded table {}",
                table(first)
            ),
        },
    }
}

/// The target of a write as the client named it, for matching column qualifiers.
pub(super) struct TargetName {
    /// Folded alias.
    pub(super) alias: Option<String>,
    /// Folded table name (last part) and the guard's schema.
    pub(super) name: String,
    pub(super) schema: String,
}

impl TargetName {
    /// The column a reference names when it is a column of the target.
    fn column(&self, e: &Expr) -> Option<String> {
        match e {
            Expr::Identifier(i) => Some(fold_ident(i)),
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                let (col, qual) = parts.split_last()?;
                let qual: Vec<String> = qual.iter().map(fold_ident).collect();
                let ok = match &self.alias {
                    Some(a) => qual.len() == 1 && &qual[0] == a,
                    None => {
                        qual.len() <= 3
                            && qual.last() == Some(&self.name)
                            && (qual.len() < 2 || qual[qual.len() - 2] == self.schema)
                    }
                };
                ok.then(|| fold_ident(col))
            }
            Expr::Nested(inner) => self.column(inner),
            _ => None,
        }
    }
}

/// A literal or parameter: numbers as written (a leading `-` kept), strings unquoted, casts
/// looked through.
fn value_ref(e: &Expr) -> Option<ValueRef> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => Some(ValueRef::Literal(n.to_string())),
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => {
                Some(ValueRef::Literal(s.clone()))
            }
            Value::DollarQuotedString(d) => Some(ValueRef::Literal(d.value.clone())),
            Value::Placeholder(p) => param_number(p).map(ValueRef::Param),
            _ => None,
        },
        Expr::UnaryOp {
            op: op @ (UnaryOperator::Minus | UnaryOperator::Plus),
            expr,
        } => match expr.as_ref() {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) if *op == UnaryOperator::Minus => {
                    Some(ValueRef::Literal(format!("-{n}")))
                }
                Value::Number(n, _) => Some(ValueRef::Literal(n.to_string())),
                _ => None,
            },
            _ => None,
        },
        Expr::Cast { expr, .. } => value_ref(expr),
        Expr::Nested(inner) => value_ref(inner),
        Expr::TypedString(t) => match &t.value.value {
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => {
                Some(ValueRef::Literal(s.clone()))
            }
            _ => None,
        },
        _ => None,
    }
}

fn conjuncts<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        Expr::Nested(inner) => conjuncts(inner, out),
        _ => out.push(e),
    }
}

/// The key and pinned version a WHERE clause fixes with `column = value` conjuncts.
pub(super) fn key_and_pin(
    selection: Option<&Expr>,
    target: &TargetName,
    key: &[String],
    version: &str,
) -> (Target, Option<ValueRef>) {
    let Some(selection) = selection else {
        return (Target::Bulk, None);
    };
    let mut parts = Vec::new();
    conjuncts(selection, &mut parts);
    // Per column: the value, or `None` once two different values were seen.
    let mut seen: Vec<(String, Option<ValueRef>)> = Vec::new();
    for part in parts {
        let Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } = part
        else {
            continue;
        };
        let pair = match (target.column(left), value_ref(right)) {
            (Some(c), Some(v)) => Some((c, v)),
            _ => match (target.column(right), value_ref(left)) {
                (Some(c), Some(v)) => Some((c, v)),
                _ => None,
            },
        };
        let Some((col, value)) = pair else {
            continue;
        };
        match seen.iter_mut().find(|(c, _)| *c == col) {
            Some((_, v)) => {
                if v.as_ref() != Some(&value) {
                    *v = None;
                }
            }
            None => seen.push((col, Some(value))),
        }
    }
    let get = |col: &str| {
        seen.iter()
            .find(|(c, _)| c == col)
            .and_then(|(_, v)| v.clone())
    };
    let values: Option<Vec<ValueRef>> = key.iter().map(|k| get(k)).collect();
    let target = values.map_or(Target::Bulk, Target::Key);
    (target, get(version))
}

fn assigns(assignments: &[ast::Assignment], column: &str) -> bool {
    let names = |n: &ObjectName| {
        name_parts(n)
            .and_then(|p| p.last().map(|i| fold_ident(i)))
            .is_some_and(|c| c == column)
    };
    assignments.iter().any(|a| match &a.target {
        AssignmentTarget::ColumnName(n) => names(n),
        AssignmentTarget::Tuple(ns) => ns.iter().any(names),
    })
}

fn qualifier(name: &ObjectName, alias: Option<&Ident>) -> Option<String> {
    if let Some(a) = alias {
        return Some(written(a));
    }
    let parts = name_parts(name)?;
    Some(
        parts
            .iter()
            .map(|i| written(i))
            .collect::<Vec<_>>()
            .join("."),
    )
}

fn build_write(
    found: &Found,
    in_cte: bool,
    lexed: &Lexed,
    r: &Range<usize>,
    guards: &GuardSet,
) -> Option<GuardedWrite> {
    let guard = &guards.guards[found.guard];
    let FoundOp::Write(op) = found.op else {
        return None;
    };
    // The write's first keyword, its paren depth, and where it ends.
    let k = r.start
        + lexed.toks[r.clone()]
            .binary_search_by_key(&found.at, |t| t.span.start)
            .ok()?;
    let mut depths = Vec::with_capacity(r.len());
    let mut depth = 0i32;
    for i in r.clone() {
        depths.push(depth);
        match lexed.token(i) {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth -= 1,
            _ => {}
        }
    }
    let depth_at = |i: usize| depths[i - r.start];
    let d = depth_at(k);
    let end = (k + 1..r.end)
        .find(|&i| depth_at(i) == d && matches!(lexed.token(i), Token::RParen | Token::RBracket))
        .unwrap_or(r.end);
    let find =
        |from: usize, word: &str| (from..end).find(|&i| depth_at(i) == d && lexed.is_word(i, word));
    let end_of = |i: usize| lexed.spans[i].end;
    let start_of = |i: usize| lexed.spans[i].start;
    // End of the last significant token before token `i`.
    let before = |i: usize| lexed.prev_sig(i, k).map(end_of);

    let (target_name, set_kw, selection, from_present, returning_present, sets_version) =
        match (op, &found.stmt) {
            (WriteOp::Update, ast::Statement::Update(u)) => {
                let TableFactor::Table { name, alias, .. } = &u.table.relation else {
                    return None;
                };
                let set = find(k + 1, "set")?;
                (
                    (name, alias.as_ref().map(|a| &a.name)),
                    Some(set),
                    u.selection.as_ref(),
                    u.from.is_some(),
                    u.returning.is_some(),
                    assigns(&u.assignments, &guard.version),
                )
            }
            (WriteOp::Delete, ast::Statement::Delete(del)) => {
                let (name, alias) = delete_target(del)?;
                (
                    (name, alias.map(|a| &a.name)),
                    None,
                    del.selection.as_ref(),
                    false,
                    del.returning.is_some(),
                    false,
                )
            }
            (WriteOp::Upsert, ast::Statement::Insert(ins)) => {
                let TableObject::TableName(name) = &ins.table else {
                    return None;
                };
                let Some(OnInsert::OnConflict(ast::OnConflict {
                    action: OnConflictAction::DoUpdate(du),
                    ..
                })) = &ins.on
                else {
                    return None;
                };
                // `DO UPDATE SET` at the write's own depth (DO is reserved: nothing else uses it).
                let set = (k + 1..end).find(|&i| {
                    depth_at(i) == d
                        && lexed.is_word(i, "do")
                        && lexed
                            .next_sig(i + 1, end)
                            .filter(|&j| lexed.is_word(j, "update"))
                            .and_then(|j| lexed.next_sig(j + 1, end))
                            .is_some_and(|j| lexed.is_word(j, "set"))
                })?;
                let set = lexed.next_sig(lexed.next_sig(set + 1, end)? + 1, end)?;
                (
                    (name, ins.table_alias.as_ref().map(|a| &a.alias)),
                    Some(set),
                    du.selection.as_ref(),
                    false,
                    ins.returning.is_some(),
                    assigns(&du.assignments, &guard.version),
                )
            }
            _ => return None,
        };

    // Clause keywords at the write's depth, after SET (or after DELETE).
    let after = set_kw.unwrap_or(k) + 1;
    let from_kw = if op == WriteOp::Update {
        (after..end).find(|&i| {
            depth_at(i) == d
                && lexed.is_word(i, "from")
                && !lexed
                    .prev_sig(i, k)
                    .is_some_and(|p| lexed.is_word(p, "distinct"))
        })
    } else {
        None
    };
    let where_kw = find(after, "where");
    let returning_kw = find(where_kw.unwrap_or(after), "returning");
    // The AST and the tokens must agree on which clauses exist.
    if from_kw.is_some() != from_present
        || where_kw.is_some() != selection.is_some()
        || returning_kw.is_some() != returning_present
    {
        return None;
    }
    if where_kw.is_some_and(|w| {
        lexed
            .next_sig(w + 1, end)
            .is_some_and(|j| lexed.is_word(j, "current"))
    }) {
        return None;
    }
    let body_end = returning_kw.unwrap_or(end);
    let set_end = match set_kw {
        Some(_) => Some(before(from_kw.or(where_kw).unwrap_or(body_end))?),
        None => None,
    };
    let condition = match where_kw {
        Some(w) => {
            let first = lexed.next_sig(w + 1, body_end)?;
            Some(start_of(first)..before(body_end)?)
        }
        None => None,
    };
    // Insertions go in text order.
    let points = [
        set_end,
        condition.as_ref().map(|c| c.start),
        condition.as_ref().map(|c| c.end),
        Some(before(body_end)?),
        Some(before(end)?),
    ];
    if !points.iter().flatten().is_sorted() {
        return None;
    }
    let has_paren = |tokens: Range<usize>| {
        tokens
            .into_iter()
            .any(|i| matches!(lexed.token(i), Token::LParen))
    };
    let may_act_without_rows = match set_kw {
        Some(set) => {
            has_paren(r.start..set) || has_paren(from_kw.or(where_kw).unwrap_or(body_end)..body_end)
        }
        None => has_paren(r.start..body_end),
    };
    let splice = Splice {
        statement: lexed.spans[r.start].start..lexed.spans[r.end - 1].end,
        set_end,
        condition,
        where_at: before(body_end)?,
        returning_at: before(end)?,
        qualifier: qualifier(target_name.0, target_name.1)?,
        in_cte,
        may_act_without_rows,
    };

    let target = TargetName {
        alias: target_name.1.map(fold_ident),
        name: name_parts(target_name.0)?.last().map(|i| fold_ident(i))?,
        schema: guard.table.schema.clone(),
    };
    let (target, pinned) = match op {
        WriteOp::Upsert => (Target::Bulk, None),
        _ => key_and_pin(selection, &target, &guard.key, &guard.version),
    };
    Some(GuardedWrite {
        guard: found.guard,
        op,
        target,
        pinned,
        sets_version,
        client_returning: returning_present,
        max_param: lexed.max_param(r),
        splice,
    })
}

/// True when sqlparser parses `sql` (with the same allowances as the analysis: `ONLY`).
#[cfg(test)]
pub(crate) fn parses(sql: &str) -> bool {
    let Ok(lexed) = Lexed::new(sql) else {
        return false;
    };
    let all = 0..lexed.toks.len();
    Parser::new(&PostgreSqlDialect {})
        .with_tokens_with_locations(lexed.parser_tokens(&all))
        .parse_statements()
        .is_ok_and(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::config::Config;

    use crate::guard::fixtures::guards;

    fn one(sql: &str) -> Action {
        let a = analyze(sql, &guards());
        assert_eq!(a.statements.len(), 1, "{sql}: {a:?}");
        a.statements.into_iter().next().unwrap().action
    }

    fn write(sql: &str) -> GuardedWrite {
        match one(sql) {
            Action::Write(w) => Arc::unwrap_or_clone(w),
            other => panic!("{sql}: expected a guarded write, got {other:?}"),
        }
    }

    #[test]
    fn tells_writes_that_may_act_without_rows() {
        for (sql, acts) in [
            ("UPDATE invoice SET total = 1 WHERE id = 42", false),
            (
                "UPDATE invoice SET total = round(2.5), note = now() WHERE id = 42",
                false,
            ),
            (
                "UPDATE invoice SET total = 1 WHERE id = 42 RETURNING upper(note)",
                false,
            ),
            (
                "UPDATE invoice i SET total = c.x FROM customer c WHERE i.id = 42",
                false,
            ),
            (
                "UPDATE invoice SET total = 1 WHERE id = 42 AND note = 'a(b'",
                false,
            ),
            ("DELETE FROM invoice WHERE id = 42", false),
            (
                "UPDATE invoice SET total = 1 WHERE id = 42 AND audit()",
                true,
            ),
            ("UPDATE invoice SET total = 1 WHERE id IN (SELECT 42)", true),
            (
                "UPDATE invoice i SET total = 1 FROM f() c WHERE i.id = 42",
                true,
            ),
            (
                "WITH c AS (SELECT 1) UPDATE invoice SET total = 1 WHERE id = 42",
                true,
            ),
            (
                "DELETE FROM invoice USING f() c WHERE invoice.id = 42",
                true,
            ),
            ("DELETE FROM invoice WHERE id = 42 AND audit()", true),
        ] {
            assert_eq!(write(sql).splice.may_act_without_rows, acts, "{sql}");
        }
    }

    fn refused(sql: &str) -> (TableName, String) {
        match one(sql) {
            Action::Refuse { table, reason } => (table, reason),
            other => panic!("{sql}: expected a refusal, got {other:?}"),
        }
    }

    fn passes(sql: &str) {
        assert_eq!(one(sql), Action::Pass { tx_control: false }, "{sql}");
    }

    fn lit(s: &str) -> ValueRef {
        ValueRef::Literal(s.into())
    }

    fn key(values: &[ValueRef]) -> Target {
        Target::Key(values.to_vec())
    }

    /// The statements of a text as (text, tx_control, is a write).
    fn split(sql: &str) -> Vec<(&str, bool, bool)> {
        analyze(sql, &guards())
            .statements
            .into_iter()
            .map(|s| {
                let (tx, w) = match s.action {
                    Action::Pass { tx_control } => (tx_control, false),
                    Action::Write(_) => (false, true),
                    Action::Refuse { .. } => panic!("{sql}: refused"),
                };
                (&sql[s.range], tx, w)
            })
            .collect()
    }

    #[test]
    fn splits_top_level_statements_with_exact_ranges() {
        let sql = "BEGIN;\n  UPDATE invoice SET total = 1 WHERE id = 1 ;COMMIT  ";
        assert_eq!(
            split(sql),
            vec![
                ("BEGIN", true, false),
                ("UPDATE invoice SET total = 1 WHERE id = 1", false, true),
                ("COMMIT", true, false),
            ]
        );
    }

    #[test]
    fn semicolons_in_strings_comments_and_dollar_quotes_do_not_split() {
        let sql = "SELECT 'a;b', E'c\\';d', \"x;y\" FROM t -- e;f\n; /* g; /* h; */ i; */ SELECT $$j;k$$, $fn$ ; $$ ; $fn$ ;";
        assert_eq!(
            split(sql),
            vec![
                (
                    "SELECT 'a;b', E'c\\';d', \"x;y\" FROM t -- e;f\n",
                    false,
                    false
                ),
                (
                    "/* g; /* h; */ i; */ SELECT $$j;k$$, $fn$ ; $$ ; $fn$",
                    false,
                    false
                ),
            ]
        );
    }

    #[test]
    fn semicolons_inside_parentheses_do_not_split() {
        let sql = "SELECT (SELECT 1 ; ); SELECT 2";
        let st = analyze(sql, &guards()).statements;
        assert_eq!(st.len(), 2);
        assert_eq!(&sql[st[0].range.clone()], "SELECT (SELECT 1 ; )");
    }

    #[test]
    fn each_pinned_read_names_its_statement() {
        let sql = "BEGIN;; SELECT total FROM invoice WHERE id = 4; SELECT 1; \
                   select * from invoice i where i.id = 5; SELECT * FROM invoice";
        let a = analyze(sql, &guards());
        let reads: Vec<(usize, Vec<ValueRef>)> = a
            .reads
            .iter()
            .map(|r| (r.statement, r.key.clone()))
            .collect();
        assert_eq!(
            reads,
            vec![
                (1, vec![ValueRef::Literal("4".into())]),
                (3, vec![ValueRef::Literal("5".into())]),
            ]
        );
        assert_eq!(a.lone_read(), None, "a lone read is one statement");
        let lone = analyze("SELECT version FROM invoice WHERE id = $1", &guards());
        assert_eq!(lone.lone_read().map(|r| r.statement), Some(0));
    }

    #[test]
    fn empty_statements_and_comment_only_texts_produce_nothing() {
        assert!(analyze("", &guards()).statements.is_empty());
        assert!(analyze(" ;; ;\n", &guards()).statements.is_empty());
        assert!(
            analyze("-- only a comment\n; /* and another */", &guards())
                .statements
                .is_empty()
        );
        assert_eq!(split(";;SELECT 1;;"), vec![("SELECT 1", false, false)]);
    }

    #[test]
    fn begin_atomic_bodies_stay_in_one_statement() {
        let sql = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT 2; END; SELECT 3";
        let st = split(sql);
        assert_eq!(st.len(), 2, "{st:?}");
        assert!(st[0].0.ends_with("SELECT 2; END"));
        assert_eq!(st[1].0, "SELECT 3");
    }

    #[test]
    fn transaction_control_is_recognised() {
        for sql in [
            "BEGIN",
            "begin transaction isolation level serializable",
            "START TRANSACTION",
            "COMMIT",
            "commit and chain",
            "END",
            "ROLLBACK",
            "ABORT",
            "SAVEPOINT s1",
            "RELEASE SAVEPOINT s1",
            "ROLLBACK TO SAVEPOINT s1",
            "PREPARE TRANSACTION 'tx1'",
            "COMMIT PREPARED 'tx1'",
            "ROLLBACK PREPARED 'tx1'",
            "/* leading comment */ COMMIT",
        ] {
            assert_eq!(
                one(sql),
                Action::Pass { tx_control: true },
                "{sql} is transaction control"
            );
        }
        for sql in [
            "SELECT 1",
            "PREPARE p AS SELECT 1",
            "START",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SELECT 'BEGIN'",
            "\"begin\"",
        ] {
            assert_eq!(one(sql), Action::Pass { tx_control: false }, "{sql}");
        }
    }

    #[test]
    fn tx_control_also_for_guarded_texts() {
        // The prefilter matches the whole text; each statement is still judged on its own.
        assert_eq!(
            split("BEGIN; UPDATE invoice SET total = 2 WHERE id = 9; END"),
            vec![
                ("BEGIN", true, false),
                ("UPDATE invoice SET total = 2 WHERE id = 9", false, true),
                ("END", true, false),
            ]
        );
    }

    #[test]
    fn byte_ranges_survive_multibyte_text() {
        let sql = "SELECT 'héllo wörld ✓ 😀';\nUPDATE invoice SET note = 'naïve ☃' WHERE id = 'ключ'; SELECT 'ß'";
        assert_eq!(
            split(sql),
            vec![
                ("SELECT 'héllo wörld ✓ 😀'", false, false),
                (
                    "UPDATE invoice SET note = 'naïve ☃' WHERE id = 'ключ'",
                    false,
                    true
                ),
                ("SELECT 'ß'", false, false),
            ]
        );
        let w = write("/* ✓ */ UPDATE invoice SET note = '☃' WHERE id = 'ключ'");
        assert_eq!(w.target, key(&[lit("ключ")]));
    }

    #[test]
    fn plain_updates_and_deletes_with_every_spelling_of_the_table() {
        for sql in [
            "UPDATE invoice SET total = 1 WHERE id = 42",
            "update INVOICE set total = 1 where ID = 42",
            "UPDATE public.invoice SET total = 1 WHERE id = 42",
            "UPDATE Public.Invoice SET total = 1 WHERE invoice.id = 42",
            "UPDATE \"public\".\"invoice\" SET total = 1 WHERE \"id\" = 42",
            "UPDATE ONLY invoice SET total = 1 WHERE id = 42",
            "UPDATE ONLY public.invoice SET total = 1 WHERE public.invoice.id = 42",
            "UPDATE ONLY (invoice) SET total = 1 WHERE id = 42",
            "UPDATE ONLY ( public.invoice ) AS i SET total = 1 WHERE i.id = 42",
            "UPDATE invoice * SET total = 1 WHERE id = 42",
            "UPDATE invoice AS i SET total = 1 WHERE i.id = 42",
            "UPDATE invoice i SET total = 1 WHERE i.id = 42",
            "UPDATE invoice i SET total = c.x FROM customer c WHERE c.id = i.customer_id AND i.id = 42",
            "WITH c AS (SELECT 1) UPDATE invoice SET total = 1 WHERE id = 42",
            "UPDATE invoice SET total = 1 WHERE id = 42 RETURNING *",
            "-- why\nUPDATE invoice SET total = 1 WHERE id = 42 -- done",
        ] {
            let w = write(sql);
            assert_eq!((w.guard, w.op), (0, WriteOp::Update), "{sql}");
            assert_eq!(w.target, key(&[lit("42")]), "{sql}");
            assert!(!w.splice.in_cte, "{sql}");
        }
        for sql in [
            "DELETE FROM invoice WHERE id = 42",
            "DELETE FROM ONLY public.invoice WHERE id = 42",
            "DELETE FROM ONLY (invoice) WHERE id = 42",
            "delete from Invoice AS i where i.id = 42",
            "DELETE FROM invoice i USING customer c WHERE i.customer_id = c.id AND i.id = 42 RETURNING i.*",
        ] {
            let w = write(sql);
            assert_eq!((w.guard, w.op), (0, WriteOp::Delete), "{sql}");
            assert_eq!(w.target, key(&[lit("42")]), "{sql}");
        }
    }

    #[test]
    fn quoted_names_keep_their_case() {
        let g = GuardSet::new(
            &Config::parse(
                "[[guard]]\ntable = 'public.\"Invoice\"'\nkey = [\"id\"]\n",
                "t.toml",
            )
            .unwrap(),
        );
        let action = |sql: &str| analyze(sql, &g).statements.remove(0).action;
        assert!(matches!(
            action("UPDATE \"Invoice\" SET a = 1 WHERE id = 1"),
            Action::Write(_)
        ));
        assert_eq!(
            action("UPDATE Invoice SET a = 1 WHERE id = 1"),
            Action::Pass { tx_control: false },
            "unquoted Invoice folds to invoice, another table"
        );
        // And the reverse: `"invoice"` is public.invoice, `"INVOICE"` is not.
        assert!(matches!(
            one("UPDATE \"invoice\" SET a = 1 WHERE id = 1"),
            Action::Write(_)
        ));
        passes("UPDATE \"INVOICE\" SET a = 1 WHERE id = 1");
        passes("UPDATE other.invoice SET a = 1 WHERE id = 1");
    }

    #[test]
    fn the_erp_case_resolves_the_quoted_table_with_a_space() {
        let w = write("UPDATE \"tabSales Invoice\" SET grand_total = 10 WHERE name = 'SINV-0001'");
        assert_eq!((w.guard, w.op), (1, WriteOp::Update));
        assert_eq!(w.target, key(&[lit("SINV-0001")]));
        assert_eq!(w.pinned, None);
        assert!(!w.sets_version);
        assert_eq!(w.splice.qualifier, "\"tabSales Invoice\"");
        let w = write("UPDATE \"tabSales Invoice\" SET x = 1");
        assert_eq!(w.target, Target::Bulk);
        // Frappe's own `modified` check pins the version.
        let w = write(
            "UPDATE \"tabSales Invoice\" SET grand_total = 10, modified = now() WHERE name = 'SINV-0002' AND modified = '2024-05-01 10:00:00.123456'",
        );
        assert_eq!(w.target, key(&[lit("SINV-0002")]));
        assert_eq!(w.pinned, Some(lit("2024-05-01 10:00:00.123456")));
        assert!(w.sets_version);
    }

    #[test]
    fn key_values_from_literals_strings_params_and_casts() {
        let cases: &[(&str, ValueRef)] = &[
            ("id = 42", lit("42")),
            ("42 = id", lit("42")),
            ("id = -7", lit("-7")),
            ("id = 'A''B'", lit("A'B")),
            ("id = E'a\\\\b\\'c'", lit("a\\b'c")),
            ("id = '42'::int", lit("42")),
            ("id = CAST('43' AS bigint)", lit("43")),
            ("id = $1", ValueRef::Param(1)),
            ("id = $2::text", ValueRef::Param(2)),
            ("(id = ($3))", ValueRef::Param(3)),
            ("id = 1.50", lit("1.50")),
            ("invoice.id = 9", lit("9")),
            ("id = $$dollar$$", lit("dollar")),
        ];
        for (cond, value) in cases {
            let sql = format!("UPDATE invoice SET total = 1 WHERE {cond}");
            assert_eq!(
                write(&sql).target,
                key(std::slice::from_ref(value)),
                "{sql}"
            );
        }
    }

    #[test]
    fn anything_but_one_key_is_bulk() {
        for cond in [
            "",
            " WHERE id IN (1, 2)",
            " WHERE id = 1 OR id = 2",
            " WHERE id > 5",
            " WHERE id = other_id",
            " WHERE id = 1 + 1",
            " WHERE id = 1 AND id = 2",
            " WHERE NOT (id = 1)",
            " WHERE customer.id = 1",
            " WHERE total = 1",
            " WHERE (id = 1 OR total = 2) AND total = 3",
        ] {
            let sql = format!("UPDATE invoice SET total = 1{cond}");
            assert_eq!(write(&sql).target, Target::Bulk, "{sql}");
        }
        // Parentheses and extra conjuncts do not hide the key.
        let w = write("UPDATE invoice SET total = 1 WHERE (total > 0 AND (id = 5)) AND (a OR b)");
        assert_eq!(w.target, key(&[lit("5")]));
        // The same value twice is still one key.
        let w = write("UPDATE invoice SET total = 1 WHERE id = 5 AND id = 5");
        assert_eq!(w.target, key(&[lit("5")]));
    }

    #[test]
    fn composite_keys_come_in_guard_order() {
        let w = write("UPDATE shop.line SET qty = 2 WHERE line_no = 3 AND invoice_id = $1");
        assert_eq!(w.guard, 2);
        assert_eq!(w.target, key(&[ValueRef::Param(1), lit("3")]));
        let w = write("UPDATE shop.line SET qty = 2 WHERE line_no = 3");
        assert_eq!(w.target, Target::Bulk);
        // No schema: the name alone resolves.
        assert_eq!(
            write("DELETE FROM line WHERE invoice_id = 1 AND line_no = 1").guard,
            2
        );
        passes("UPDATE public.line SET qty = 2");
    }

    #[test]
    fn pinned_versions_and_set_version() {
        let w = write("UPDATE invoice SET total = 1 WHERE id = 1 AND version = 7");
        assert_eq!(w.pinned, Some(lit("7")));
        assert!(!w.sets_version);
        let w = write("UPDATE invoice SET total = $1, version = $3 WHERE id = $2 AND version = $4");
        assert_eq!(w.target, key(&[ValueRef::Param(2)]));
        assert_eq!(w.pinned, Some(ValueRef::Param(4)));
        assert!(w.sets_version);
        assert_eq!(w.max_param, 4);
        let w = write("UPDATE invoice SET (total, version) = (1, 8) WHERE version = 7");
        assert_eq!(
            (w.target.clone(), w.pinned.clone()),
            (Target::Bulk, Some(lit("7")))
        );
        assert!(w.sets_version);
        let w = write("UPDATE invoice SET total = 1 WHERE id = 1 OR version = 7");
        assert_eq!(w.pinned, None);
        let w = write("UPDATE invoice SET total = 1 WHERE id = 1 AND version = version");
        assert_eq!(w.pinned, None);
        // xmin pins too.
        let w = write("UPDATE accounts SET abalance = 0 WHERE aid = 1 AND xmin = '1234'");
        assert_eq!((w.guard, w.pinned), (3, Some(lit("1234"))));
        let w = write("UPDATE accounts SET abalance = 0 WHERE aid = $1 AND xmin = $2");
        assert_eq!(w.pinned, Some(ValueRef::Param(2)));
    }

    #[test]
    fn returning_and_max_param() {
        assert!(write("UPDATE invoice SET total = 1 RETURNING id").client_returning);
        assert!(!write("UPDATE invoice SET total = 1 WHERE id = 1").client_returning);
        assert!(write("DELETE FROM invoice RETURNING *").client_returning);
        let w = write("UPDATE invoice SET note = '$9' WHERE id = $1 AND total = $12 -- $13");
        assert_eq!(w.max_param, 12);
        assert_eq!(write("UPDATE invoice SET total = 1").max_param, 0);
    }

    #[test]
    fn data_modifying_ctes() {
        let w = write(
            "WITH x AS (UPDATE invoice SET total = 1 WHERE id = 3 RETURNING *) SELECT * FROM x",
        );
        assert_eq!(
            (w.op, w.target.clone()),
            (WriteOp::Update, key(&[lit("3")]))
        );
        assert!(w.splice.in_cte);
        assert!(w.client_returning);
        let w = write("WITH d AS MATERIALIZED (DELETE FROM invoice WHERE id = 3) SELECT 1");
        assert_eq!(w.op, WriteOp::Delete);
        assert!(w.splice.in_cte);
        // An unguarded write beside it is fine.
        let w = write(
            "WITH a AS (UPDATE customer SET n = 1 RETURNING id), b AS (UPDATE invoice SET total = 0 WHERE id = 1) SELECT * FROM a",
        );
        assert!(w.splice.in_cte);
    }

    #[test]
    fn upserts_are_bumped_never_checked() {
        let w = write(
            "INSERT INTO invoice (id, total) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET total = EXCLUDED.total",
        );
        assert_eq!((w.guard, w.op), (0, WriteOp::Upsert));
        assert_eq!((w.target.clone(), w.pinned.clone()), (Target::Bulk, None));
        assert!(!w.sets_version && !w.client_returning);
        let w = write(
            "INSERT INTO invoice AS t (id, version) VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET version = t.version + 1 WHERE t.id = $1 RETURNING t.id",
        );
        assert!(w.sets_version && w.client_returning);
        assert_eq!(w.splice.qualifier, "t");
        passes("INSERT INTO invoice (id) VALUES (1)");
        passes("INSERT INTO invoice (id) VALUES (1) ON CONFLICT DO NOTHING");
        passes("INSERT INTO invoice SELECT * FROM staging WHERE x");
    }

    #[test]
    fn refuses_what_it_cannot_rewrite() {
        let (t, r) = refused(
            "MERGE INTO invoice t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET total = s.total",
        );
        assert_eq!(t.to_string(), "public.invoice");
        assert!(r.contains("MERGE"), "{r}");
        let (_, r) = refused("UPDATE invoice SET total = 1 WHERE CURRENT OF c1");
        assert!(
            r.contains("CURRENT OF") && r.contains("public.invoice"),
            "{r}"
        );
        let (_, r) = refused("DELETE FROM invoice WHERE CURRENT OF c1");
        assert!(r.contains("CURRENT OF"), "{r}");
        let (t, r) = refused("UPDATE \"tabSales Invoice\" SET x = 1 WHERE name = 'a' FROBNICATE");
        assert_eq!(t.name, "tabSales Invoice");
        assert_eq!(
            r,
            "optlock cannot parse this statement, and it may write guarded table public.\"tabSales Invoice\""
        );
        let (_, r) = refused(
            "WITH a AS (UPDATE invoice SET total = 1 WHERE id = 1), b AS (DELETE FROM shop.line WHERE line_no = 1) SELECT 1",
        );
        assert!(r.contains("several guarded writes"), "{r}");
        assert!(
            r.contains("public.invoice") && r.contains("shop.line"),
            "{r}"
        );
        let (_, r) =
            refused("WITH a AS (UPDATE invoice SET total = 1) DELETE FROM invoice WHERE id = 2");
        assert!(r.contains("several guarded writes"), "{r}");
        let (_, r) = refused("EXPLAIN ANALYZE UPDATE invoice SET total = 1");
        assert!(r.contains("EXPLAIN ANALYZE"), "{r}");
        refused("EXPLAIN (ANALYZE, BUFFERS) DELETE FROM invoice WHERE id = 1");
        refused("PREPARE p (int) AS UPDATE invoice SET total = 1 WHERE id = $1");
        refused("CREATE RULE r AS ON INSERT TO invoice DO ALSO UPDATE invoice SET total = 0");
        refused("CREATE OR REPLACE RULE r AS ON INSERT TO invoice DO ALSO DELETE FROM invoice");
        // Not a position PostgreSQL runs a rewritable write from.
        refused("COPY (DELETE FROM invoice WHERE id = 1 RETURNING *) TO STDOUT");
        // The tokenizer itself gives up: still refused.
        refused("UPDATE invoice SET note = 'unterminated WHERE id = 1");
    }

    #[test]
    fn passes_reads_unguarded_writes_and_mere_mentions() {
        passes("SELECT * FROM invoice WHERE id = 1");
        passes("SELECT * FROM invoice WHERE id = 1 FOR UPDATE");
        passes("SELECT * FROM invoice FOR NO KEY UPDATE SKIP LOCKED");
        passes("UPDATE customer SET total = (SELECT sum(total) FROM invoice) WHERE id = 1");
        passes("DELETE FROM customer WHERE id NOT IN (SELECT customer_id FROM invoice)");
        passes("SELECT 1 -- UPDATE invoice SET total = 0");
        passes("SELECT 'UPDATE invoice SET total = 0'");
        passes("/* delete from invoice */ SELECT 1");
        passes("COPY invoice FROM STDIN");
        passes("COPY invoice (id, total) TO STDOUT WITH (FORMAT csv)");
        passes("EXPLAIN UPDATE invoice SET total = 1");
        passes("EXPLAIN (ANALYZE false) UPDATE invoice SET total = 1");
        passes(
            "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ UPDATE invoice SET total = 0 $$",
        );
        passes("DO $$ BEGIN UPDATE invoice SET total = 0; END $$");
        passes("CREATE TABLE note (invoice_id int REFERENCES invoice ON DELETE CASCADE)");
        passes("GRANT UPDATE ON invoice TO clerk");
        passes(
            "CREATE FUNCTION f() RETURNS void LANGUAGE sql BEGIN ATOMIC UPDATE invoice SET total = 0; END",
        );
        passes(
            "CREATE TRIGGER t BEFORE UPDATE OR DELETE ON invoice FOR EACH ROW EXECUTE FUNCTION f()",
        );
        passes(
            "ALTER TABLE line ADD FOREIGN KEY (inv) REFERENCES invoice ON UPDATE CASCADE ON DELETE CASCADE NOT VALID FROBNICATE",
        );
        // Unparseable, names the table, but only reads (row locks are no write).
        passes("SELECT * FROM invoice FOR UPDATE OF invoice FROBNICATE");
        passes("SELECT 'unterminated FROM invoice");
    }

    #[test]
    fn no_guards_means_everything_passes() {
        let g = GuardSet::new(&Config::default());
        let a = analyze("UPDATE invoice SET total = 1; BEGIN", &g);
        assert_eq!(
            a.statements
                .iter()
                .map(|s| s.action.clone())
                .collect::<Vec<_>>(),
            vec![
                Action::Pass { tx_control: false },
                Action::Pass { tx_control: true }
            ]
        );
        assert!(a.passes_unchanged());
    }

    #[test]
    fn unicode_escaped_names_are_refused_when_they_spell_a_guarded_table() {
        let (t, reason) = refused("UPDATE U&\"\\0069nvoice\" SET total = 1 WHERE id = 1");
        assert_eq!(t.to_string(), "public.invoice");
        assert!(reason.contains("cannot parse"), "{reason}");
        refused("DELETE FROM public.U&\"inv\\+00006Fice\" WHERE id = 1");
        refused("UPDATE U&\"!0069nvoice\" UESCAPE '!' SET total = 1");
        passes("UPDATE U&\"\\0063ustomer\" SET total = 1 WHERE id = 1");
    }

    #[test]
    fn only_is_masked_only_where_it_names_a_table() {
        assert!(parses("UPDATE ONLY invoice SET a = 1"));
        assert!(parses(
            "DELETE FROM ONLY invoice i USING ONLY x WHERE i.id = x.id"
        ));
        assert!(parses("SELECT * FROM t FETCH FIRST 1 ROWS ONLY"));
        assert!(parses("BEGIN READ ONLY"));
        assert!(!parses("UPDATE invoice SET a = 1 WHERE"));
    }
}
