//! Unit tests of the engine, driven by message sequences with no server: the test plays both
//! the client and the server, and checks what the engine sends each way and when it holds the
//! client.

mod block;
mod fuzz;
mod model;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, BytesMut};

use super::{Engine, Ident, Settings, SettingsSource};
use crate::config::Config;
use crate::events::{Conflict, NoEvents, Outcome, SessionEvents};
use crate::guard::TableId;
use crate::protocol::{TxStatus, backend as be, frontend as fe};

const GUARDED: &str = r#"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:5432"

[[guard]]
table = "public.item"
key = ["id"]
version = "version"
kind = "counter"
"#;

const UNGUARDED: &str = r#"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:5432"
"#;

/// Settings a test can replace, as a reload does.
struct Reloadable(Mutex<Arc<Settings>>);

impl Reloadable {
    fn new(toml: &str) -> Arc<Reloadable> {
        let config = Config::parse(toml, "test.toml").expect("test config");
        Arc::new(Reloadable(Mutex::new(Arc::new(Settings::new(config, 1)))))
    }

    fn reload(&self, toml: &str) {
        let config = Config::parse(toml, "test.toml").expect("test config");
        let mut slot = self.0.lock().unwrap();
        let generation = slot.generation + 1;
        *slot = Arc::new(Settings::new(config, generation));
    }
}

impl SettingsSource for Reloadable {
    fn generation(&self) -> u64 {
        self.0.lock().unwrap().generation
    }

    fn settings(&self) -> Arc<Settings> {
        self.0.lock().unwrap().clone()
    }
}

/// Events recorded for the assertions.
#[derive(Default)]
struct Recorded {
    statements: Mutex<u32>,
    outcomes: Mutex<Vec<Outcome>>,
    conflicts: Mutex<Vec<Conflict>>,
}

impl SessionEvents for Recorded {
    fn statement(&self) {
        *self.statements.lock().unwrap() += 1;
    }
    fn guarded(&self, _: TableId, outcome: Outcome) {
        self.outcomes.lock().unwrap().push(outcome);
    }
    fn conflict(&self, conflict: Conflict) {
        self.conflicts.lock().unwrap().push(conflict);
    }
    fn ready_for_query(&self, _: TxStatus, _: usize) {}
    fn backend_pid(&self, _: i32) {}
    fn application_name(&self, _: &str) {}
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn query(sql: &str) -> Vec<u8> {
    message(fe::QUERY, &cstr(sql))
}

fn ready(status: u8) -> Vec<u8> {
    message(be::READY_FOR_QUERY, &[status])
}

fn complete(tag: &str) -> Vec<u8> {
    message(be::COMMAND_COMPLETE, &cstr(tag))
}

fn auth_ok() -> Vec<u8> {
    message(be::AUTHENTICATION, &0u32.to_be_bytes())
}

/// The tags of the messages in `bytes`, in order.
fn tags(bytes: &[u8]) -> Vec<char> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        out.push(rest[0] as char);
        rest = &rest[1 + len..];
    }
    out
}

/// A session driven by the test.
/// The catalog queries of a resolution: the guards' columns, the relations whose writes
/// land in a guarded table (with JIT turned off around it), and the aggregate functions.
const LOGIN_QUERIES: usize = 5;

struct Driver {
    engine: Engine,
    events: Arc<Recorded>,
    source: Arc<Reloadable>,
}

impl Driver {
    fn new(toml: &str) -> Driver {
        let source = Reloadable::new(toml);
        let settings = source.settings();
        let ident = Ident {
            client: "127.0.0.1:50000".parse::<SocketAddr>().unwrap(),
            user: "pos".into(),
            database: "shop".into(),
            application_name: "till-1".into(),
        };
        let mut startup = BytesMut::new();
        startup.put_u32(8);
        startup.put_u32(196608);
        let engine = Engine::new(source.clone(), settings, ident, &startup);
        Driver {
            engine,
            events: Arc::new(Recorded::default()),
            source,
        }
    }

    fn client(&mut self, bytes: &[u8]) {
        self.engine.client_input().extend_from_slice(bytes);
        self.engine
            .process_client(&*self.events)
            .expect("client input");
    }

    fn server(&mut self, bytes: &[u8]) {
        self.engine.server_input().extend_from_slice(bytes);
        self.engine
            .process_server(&*self.events)
            .expect("server input");
    }

    /// Everything sent to the server since the last call.
    fn sent(&mut self) -> BytesMut {
        self.engine.to_server().split()
    }

    /// Everything sent to the client since the last call.
    fn delivered(&mut self) -> BytesMut {
        self.engine.to_client().split()
    }

    /// Answers the proxy's catalog batch in flight as a server with no such table would:
    /// every part completes, the resolution has no row.
    fn answer_catalog(&mut self, queries: usize) {
        let sent = self.sent();
        assert!(
            sent.windows(15).any(|w| w == b"optlock_catalog"),
            "a catalog batch was sent: {:?}",
            tags(&sent)
        );
        let mut reply = Vec::new();
        for _ in 0..queries {
            reply.extend(message(b'3', &[]));
            reply.extend(message(b'3', &[]));
            reply.extend(message(b'1', &[]));
            reply.extend(message(b'2', &[]));
            reply.extend(complete("SELECT 0"));
        }
        reply.extend(message(b'3', &[]));
        reply.extend(message(b'3', &[]));
        reply.extend(ready(b'I'));
        self.server(&reply);
    }

    /// Logs in; with guards, the first `ReadyForQuery` waits for the catalog batch.
    fn log_in(&mut self) {
        let startup = self.sent();
        assert_eq!(&startup[4..8], &196608u32.to_be_bytes());
        let mut login = auth_ok();
        login.extend(message(
            be::PARAMETER_STATUS,
            &[cstr("client_encoding"), cstr("UTF8")].concat(),
        ));
        login.extend(ready(b'I'));
        self.server(&login);
        assert!(self.engine.logged_in());
        if !self.engine.settings().guards.is_empty() {
            assert_eq!(
                tags(&self.delivered()),
                ['R', 'S'],
                "ReadyForQuery held back"
            );
            assert!(
                !self.engine.wants_client_input(),
                "client held during resolution"
            );
            self.answer_catalog(LOGIN_QUERIES);
        }
        assert_eq!(tags(&self.delivered()).last(), Some(&'Z'));
        assert!(self.engine.wants_client_input());
        assert!(self.engine.is_idle());
    }
}

#[test]
fn an_unguarded_query_and_its_reply_pass_byte_for_byte() {
    let mut d = Driver::new(UNGUARDED);
    d.log_in();
    let q = query("UPDATE item SET qty = 1 WHERE id = 1");
    d.client(&q);
    assert_eq!(&d.sent()[..], &q[..]);
    assert!(!d.engine.is_idle(), "a reply is awaited");
    let reply = [complete("UPDATE 1"), ready(b'I')].concat();
    d.server(&reply);
    assert_eq!(&d.delivered()[..], &reply[..]);
    assert!(d.engine.is_idle());
    assert_eq!(*d.events.statements.lock().unwrap(), 1);
}

#[test]
fn a_guarded_update_gets_its_version_bump_and_keeps_its_tag() {
    let mut d = Driver::new(GUARDED);
    d.log_in();
    d.client(&query("UPDATE item SET qty = 1 WHERE id = 1"));
    let sent = d.sent();
    let text = String::from_utf8_lossy(&sent);
    assert!(text.contains("version"), "bump added: {text}");
    assert_ne!(
        text.trim_end_matches('\0'),
        "QUPDATE item SET qty = 1 WHERE id = 1"
    );
    // Whatever steps the proxy sent, the client sees one UPDATE 1 and one ReadyForQuery.
    d.engine.to_server().extend_from_slice(&sent);
    let to_client = serve_simple(&mut d, 1);
    assert_eq!(tags(&to_client), ['C', 'Z']);
    assert_eq!(be::command_tag(&to_client[5..]), b"UPDATE 1");
    // A row the session never read: counted as unversioned too.
    assert_eq!(
        *d.events.outcomes.lock().unwrap(),
        [Outcome::Rewritten, Outcome::Unversioned]
    );
}

impl Driver {
    /// The simple queries in `sent` (the test answers each as one successful statement).
    fn sent_tags_pending(&mut self, sent: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = sent;
        while rest.len() >= 5 {
            let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
            if rest[0] == fe::QUERY {
                out.push(String::from_utf8_lossy(&rest[5..len]).into_owned());
            }
            rest = &rest[1 + len..];
        }
        out
    }
}

/// Plays a server for simple queries until the client has a `ReadyForQuery`: `BEGIN`,
/// `COMMIT` and `ROLLBACK` succeed, an `UPDATE` matches `rows` rows, a `DO` block raises
/// 40001. Returns what the client got.
fn serve_simple(d: &mut Driver, rows: u64) -> BytesMut {
    let mut in_tx = false;
    let mut failed = false;
    let mut to_client = BytesMut::new();
    for _ in 0..16 {
        let sent = d.sent();
        let queries = d.sent_tags_pending(&sent);
        assert!(
            !queries.is_empty(),
            "the engine stalled; client got {:?}",
            tags(&to_client)
        );
        for q in queries {
            let word = q
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            let mut reply = Vec::new();
            match word.as_str() {
                "BEGIN" => {
                    in_tx = true;
                    reply.extend(complete("BEGIN"));
                }
                "COMMIT" | "ROLLBACK" => {
                    let tag = if failed { "ROLLBACK" } else { word.as_str() };
                    reply.extend(complete(tag));
                    in_tx = false;
                    failed = false;
                }
                "DO" => {
                    let mut e = BytesMut::new();
                    be::write_error(&mut e, "ERROR", "40001", "optimistic lock conflict");
                    reply.extend_from_slice(&e);
                    failed = in_tx;
                }
                _ => reply.extend(complete(&format!("UPDATE {rows}"))),
            }
            reply.extend(ready(match (in_tx, failed) {
                (false, _) => b'I',
                (true, false) => b'T',
                (true, true) => b'E',
            }));
            d.server(&reply);
            to_client.extend_from_slice(&d.delivered());
        }
        if tags(&to_client).last() == Some(&'Z') && d.engine.is_idle() {
            return to_client;
        }
    }
    panic!("no end after 16 rounds: client got {:?}", tags(&to_client));
}

#[test]
fn a_pinned_version_that_matches_nothing_becomes_a_conflict_error() {
    let mut d = Driver::new(GUARDED);
    d.log_in();
    d.client(&query(
        "UPDATE item SET qty = 1 WHERE id = 1 AND version = 3",
    ));
    let out = serve_simple(&mut d, 0);
    // Exactly what PostgreSQL says when a statement of an implicit transaction fails.
    assert_eq!(tags(&out), ['E', 'Z']);
    assert_eq!(be::error_field(&out[5..], b'C'), Some(&b"40001"[..]));
    assert_eq!(out[out.len() - 1], b'I');
    let conflicts = d.events.conflicts.lock().unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].expected, "3");
}

#[test]
fn a_pinned_version_that_matches_keeps_the_tag() {
    let mut d = Driver::new(GUARDED);
    d.log_in();
    d.client(&query(
        "UPDATE item SET qty = 1 WHERE id = 1 AND version = 3",
    ));
    let out = serve_simple(&mut d, 1);
    assert_eq!(tags(&out), ['C', 'Z']);
    assert_eq!(be::command_tag(&out[5..]), b"UPDATE 1");
    assert!(d.events.conflicts.lock().unwrap().is_empty());
}

#[test]
fn an_extended_guarded_write_holds_the_client_until_its_row_count() {
    let mut d = Driver::new(GUARDED);
    d.log_in();
    let mut batch = BytesMut::new();
    fe::write_parse(
        &mut batch,
        b"",
        b"UPDATE item SET qty = $1 WHERE id = $2 AND version = $3",
        &[],
    );
    batch.extend_from_slice(&bind(&[b"5", b"1", b"3"]));
    fe::write_execute(&mut batch, b"", 0);
    d.client(&batch);
    let sent = d.sent();
    assert_eq!(
        tags(&sent),
        ['P', 'B', 'E', 'H'],
        "flushed to learn the row count"
    );
    assert!(
        !d.engine.wants_client_input(),
        "the batch waits for the row count"
    );
    // The Sync the client sends meanwhile waits in the input.
    let mut sync = BytesMut::new();
    fe::write_simple(&mut sync, fe::SYNC);
    d.engine.client_input().extend_from_slice(&sync);
    d.engine.process_client(&*d.events).unwrap();
    assert!(d.sent().is_empty(), "nothing goes while held");
    d.server(&[message(b'1', &[]), message(b'2', &[]), complete("UPDATE 1")].concat());
    assert!(d.engine.wants_client_input(), "released by the row count");
    assert_eq!(tags(&d.sent()), ['S'], "the held Sync went on");
    d.server(&ready(b'I'));
    assert_eq!(tags(&d.delivered()), ['1', '2', 'C', 'Z']);
}

fn bind(params: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(cstr(""));
    body.extend(cstr(""));
    body.extend(0u16.to_be_bytes());
    body.extend((params.len() as u16).to_be_bytes());
    for p in params {
        body.extend((p.len() as u32).to_be_bytes());
        body.extend_from_slice(p);
    }
    body.extend(0u16.to_be_bytes());
    message(fe::BIND, &body)
}

/// A `Bind` of statement `stmt` (unnamed portal, text parameters, no result formats).
fn bind_to(stmt: &str, params: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(cstr(""));
    body.extend(cstr(stmt));
    body.extend(0u16.to_be_bytes());
    body.extend((params.len() as u16).to_be_bytes());
    for p in params {
        body.extend((p.len() as u32).to_be_bytes());
        body.extend_from_slice(p);
    }
    body.extend(0u16.to_be_bytes());
    message(fe::BIND, &body)
}

/// A `Parse` of a name the server has fails there, and the statement it had stays: a `Bind`
/// of the name pipelined behind that `Parse`'s `Sync` waits for its reply, then reaches the
/// guarded write the server kept, checked as the guard checks it.
#[test]
fn a_bind_behind_an_unanswered_reparse_waits_for_its_reply() {
    let mut d = Driver::new(GUARDED);
    d.log_in();
    let mut first = BytesMut::new();
    fe::write_parse(
        &mut first,
        b"w",
        b"UPDATE item SET qty = $1 WHERE id = $2 AND version = $3",
        &[],
    );
    fe::write_simple(&mut first, fe::SYNC);
    d.client(&first);
    assert_eq!(tags(&d.sent()), ['P', 'S']);
    d.server(&[message(b'1', &[]), ready(b'I')].concat());
    assert_eq!(tags(&d.delivered()), ['1', 'Z']);
    // The same name again, then a Bind of it behind the Sync, before any reply.
    let mut batch = BytesMut::new();
    fe::write_parse(&mut batch, b"w", b"SELECT 1", &[]);
    fe::write_simple(&mut batch, fe::SYNC);
    batch.extend_from_slice(&bind_to("w", &[b"5", b"1", b"3"]));
    fe::write_execute(&mut batch, b"", 0);
    fe::write_simple(&mut batch, fe::SYNC);
    d.client(&batch);
    assert_eq!(
        tags(&d.sent()),
        ['P', 'S'],
        "the Bind waits for the Parse's reply"
    );
    assert!(!d.engine.wants_client_input());
    let mut error = BytesMut::new();
    be::write_error(
        &mut error,
        "ERROR",
        "42P05",
        "prepared statement \"w\" already exists",
    );
    d.server(&[&error[..], &ready(b'I')].concat());
    assert_eq!(tags(&d.delivered()), ['E', 'Z']);
    // The write the server kept is checked: its row count is awaited before the Sync goes.
    assert_eq!(
        tags(&d.sent()),
        ['B', 'E', 'H'],
        "bound as the guarded write the server kept"
    );
    assert!(!d.engine.wants_client_input());
    d.server(&[message(b'2', &[]), complete("UPDATE 1")].concat());
    assert_eq!(tags(&d.sent()), ['S']);
    d.server(&ready(b'I'));
    assert_eq!(tags(&d.delivered()), ['2', 'C', 'Z']);
    assert!(d.engine.is_idle());
}

#[test]
fn an_error_in_a_batch_skips_to_its_sync_as_the_server_does() {
    let mut d = Driver::new(UNGUARDED);
    d.log_in();
    let mut batch = BytesMut::new();
    fe::write_parse(&mut batch, b"", b"SELECT 1/0", &[]);
    batch.extend_from_slice(&bind(&[]));
    fe::write_execute(&mut batch, b"", 0);
    d.client(&batch);
    d.sent();
    let mut error = BytesMut::new();
    be::write_error(&mut error, "ERROR", "22012", "division by zero");
    d.server(&[&message(b'1', &[])[..], &message(b'2', &[]), &error].concat());
    // Messages after the error and before Sync are skipped by the server: none awaits a reply.
    let mut rest = BytesMut::new();
    fe::write_describe(&mut rest, b'S', b"nope");
    fe::write_simple(&mut rest, fe::SYNC);
    d.client(&rest);
    assert_eq!(&d.sent()[..], &rest[..]);
    d.server(&ready(b'I'));
    assert_eq!(tags(&d.delivered()), ['1', '2', 'E', 'Z']);
    assert!(d.engine.is_idle());
}

#[test]
fn a_reload_between_parse_and_bind_resolves_the_new_guards_first() {
    let mut d = Driver::new(UNGUARDED);
    d.log_in();
    let mut parse = BytesMut::new();
    fe::write_parse(
        &mut parse,
        b"upd",
        b"UPDATE item SET qty = $1 WHERE id = $2",
        &[],
    );
    fe::write_simple(&mut parse, fe::SYNC);
    d.client(&parse);
    assert_eq!(&d.sent()[..], &parse[..], "unguarded: as written");
    d.server(&[message(b'1', &[]), ready(b'I')].concat());
    d.delivered();
    d.source.reload(GUARDED);
    let b = bind(&[b"5", b"1"]);
    let mut b_named = b.clone();
    // The statement is "upd": portal "", statement "upd".
    b_named.splice(6..7, b"upd\0".iter().copied());
    let len = (b_named.len() - 1) as u32;
    b_named[1..5].copy_from_slice(&len.to_be_bytes());
    d.client(&b_named);
    assert!(
        !d.engine.wants_client_input(),
        "the Bind waits for the catalog"
    );
    // The guards are resolved and the session's statements listed before the Bind goes.
    d.answer_catalog(LOGIN_QUERIES + 1);
    let after = d.sent();
    assert!(
        tags(&after).contains(&'B'),
        "the Bind went after the catalog: {:?}",
        tags(&after)
    );
    assert!(d.delivered().is_empty(), "the catalog's replies are hidden");
}

#[test]
fn no_events_is_a_silent_sink() {
    let mut d = Driver::new(UNGUARDED);
    d.log_in();
    d.engine
        .client_input()
        .extend_from_slice(&query("SELECT 1"));
    d.engine.process_client(&NoEvents).unwrap();
    assert_eq!(tags(&d.sent()), ['Q']);
}
