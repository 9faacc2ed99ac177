//! Property tests: generated client message sequences run against the [`Model`] server
//! directly and through the engine. With no guard configured the client must read exactly
//! what it reads directly, byte for byte. With a guard, the engine must never panic, never
//! stall (every `Sync` and `Query` the server answers is answered to the client), keep its
//! reply queue bounded, and end idle when the client's last batch is answered.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use proptest::prelude::*;

use super::model::Model;
use crate::config::Config;
use crate::engine::{Engine, FixedSettings, Ident, Settings};
use crate::events::NoEvents;
use crate::protocol::{backend as be, frontend as fe};

const GUARDED: &str = r#"
[[guard]]
table = "public.item"
key = ["id"]
version = "version"
"#;

/// Statement texts the generator picks from: guarded and unguarded writes, reads, pinned
/// versions, transaction control, failures, session commands.
const TEXTS: &[&str] = &[
    "SELECT 1",
    "SELECT 1/0",
    "SELEC 1",
    "SELECT id, version FROM item WHERE id = 1",
    "UPDATE item SET qty = 1 WHERE id = 1",
    "UPDATE item SET qty = $1 WHERE id = $2",
    "UPDATE item SET qty = 2 WHERE id = 1 AND version = 3",
    "DELETE FROM item WHERE id = 2",
    "UPDATE item SET qty = 3 WHERE id = 1 RETURNING qty",
    "UPDATE other SET x = 1",
    "INSERT INTO item (id) VALUES (5)",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT s",
    "ROLLBACK TO s",
    "DISCARD ALL",
    "DEALLOCATE ALL",
    "",
];

const NAMES: &[&[u8]] = &[b"", b"s1", b"s2"];

/// One client message, as generated.
#[derive(Debug, Clone)]
enum Step {
    Query(Vec<usize>),
    Parse(usize, usize),
    Bind(usize, usize, usize),
    Describe(bool, usize),
    Execute(usize, i32),
    Close(bool, usize),
    Sync,
    Flush,
}

fn step() -> impl Strategy<Value = Step> {
    let text = 0..TEXTS.len();
    let name = 0..NAMES.len();
    prop_oneof![
        prop::collection::vec(text.clone(), 1..4).prop_map(Step::Query),
        (name.clone(), text).prop_map(|(n, t)| Step::Parse(n, t)),
        (name.clone(), name.clone(), 0..3usize).prop_map(|(p, s, n)| Step::Bind(p, s, n)),
        (any::<bool>(), name.clone()).prop_map(|(s, n)| Step::Describe(s, n)),
        (name.clone(), prop_oneof![Just(0), Just(1)]).prop_map(|(p, m)| Step::Execute(p, m)),
        (any::<bool>(), name).prop_map(|(s, n)| Step::Close(s, n)),
        Just(Step::Sync),
        Just(Step::Flush),
    ]
}

fn encode(steps: &[Step]) -> BytesMut {
    let mut out = BytesMut::new();
    for s in steps {
        match s {
            Step::Query(texts) => {
                let sql: Vec<&str> = texts.iter().map(|&t| TEXTS[t]).collect();
                fe::write_query(&mut out, sql.join("; ").as_bytes());
            }
            Step::Parse(n, t) => fe::write_parse(&mut out, NAMES[*n], TEXTS[*t].as_bytes(), &[]),
            Step::Bind(p, st, params) => {
                let mut body = Vec::new();
                body.extend_from_slice(NAMES[*p]);
                body.push(0);
                body.extend_from_slice(NAMES[*st]);
                body.push(0);
                body.extend(0u16.to_be_bytes());
                body.extend((*params as u16).to_be_bytes());
                for _ in 0..*params {
                    body.extend(1u32.to_be_bytes());
                    body.push(b'1');
                }
                body.extend(0u16.to_be_bytes());
                out.extend_from_slice(&[fe::BIND]);
                out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
                out.extend_from_slice(&body);
            }
            Step::Describe(statement, n) => {
                fe::write_describe(&mut out, if *statement { b'S' } else { b'P' }, NAMES[*n])
            }
            Step::Execute(p, max) => fe::write_execute(&mut out, NAMES[*p], *max),
            Step::Close(statement, n) => {
                fe::write_close(&mut out, if *statement { b'S' } else { b'P' }, NAMES[*n])
            }
            Step::Sync => fe::write_simple(&mut out, fe::SYNC),
            Step::Flush => fe::write_simple(&mut out, fe::FLUSH),
        }
    }
    out
}

fn startup() -> Vec<u8> {
    let mut p = Vec::new();
    p.extend(8u32.to_be_bytes());
    p.extend(196608u32.to_be_bytes());
    p
}

/// What the client reads directly from the model: its login, then the replies to `input`.
fn direct(input: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut model = Model::new();
    let login = model.feed(&startup());
    (login, model.feed(input))
}

/// What the client reads through the engine (login, then the replies to `input`), with the
/// model behind it; the engine's state at the end.
fn through(toml: &str, input: &[u8], chunk: usize) -> (Vec<u8>, Vec<u8>, Engine) {
    let (mut engine, mut model) = logged_in(toml);
    let login = engine.to_client().split().to_vec();
    // The client's bytes arrive in chunks of `chunk` bytes, each handled before the next.
    for part in input.chunks(chunk.max(1)) {
        engine.client_input().extend_from_slice(part);
        engine
            .process_client(&NoEvents)
            .expect("client input is well framed");
        pump(&mut engine, &mut model);
    }
    let replies = engine.to_client().split().to_vec();
    (login, replies, engine)
}

/// An engine with `toml`'s guards, logged in to a fresh model server.
fn logged_in(toml: &str) -> (Engine, Model) {
    let config = Config::parse(toml, "fuzz.toml").expect("config");
    let settings = Arc::new(Settings::new(config, 1));
    let ident = Ident {
        client: "127.0.0.1:1".parse::<SocketAddr>().unwrap(),
        user: "fuzz".into(),
        database: "fuzz".into(),
        application_name: String::new(),
    };
    let source = Arc::new(FixedSettings(settings.clone()));
    let mut engine = Engine::new(source, settings, ident, &startup());
    let mut model = Model::new();
    pump(&mut engine, &mut model);
    (engine, model)
}

/// Lets the engine and the model talk until neither has anything more to say.
fn pump(engine: &mut Engine, model: &mut Model) {
    for _ in 0..10_000 {
        let to_server = engine.to_server().split();
        if to_server.is_empty() {
            return;
        }
        let reply = model.feed(&to_server);
        engine.server_input().extend_from_slice(&reply);
        engine
            .process_server(&NoEvents)
            .expect("server output is well framed");
    }
    panic!("the engine and the server never went quiet");
}

/// The tags of the messages in `bytes`; panics on a broken frame.
fn tags(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        assert!(rest.len() >= 5, "a truncated message to the client");
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        assert!(len >= 4 && rest.len() > len, "a broken frame to the client");
        out.push(rest[0]);
        rest = &rest[1 + len..];
    }
    out
}

fn ready_statuses(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        if rest[0] == be::READY_FOR_QUERY {
            out.push(rest[5]);
        }
        rest = &rest[1 + len..];
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// With no guard the proxy is a byte-for-byte relay, whatever the sequence and however
    /// the bytes are split.
    #[test]
    fn unguarded_sessions_read_exactly_what_they_read_directly(
        steps in prop::collection::vec(step(), 1..24),
        chunk in 1usize..200,
    ) {
        let input = encode(&steps);
        let (login, replies) = direct(&input);
        let (p_login, p_replies, _) = through("", &input, chunk);
        prop_assert_eq!(p_login, login);
        prop_assert_eq!(p_replies, replies);
    }

    /// With a guard the replies may differ (rewrites, conflicts), but every frame is whole,
    /// every `ReadyForQuery` the server sends for the client's batches reaches the client
    /// with the same transaction status, and a session whose last batch ended is idle.
    #[test]
    fn guarded_sessions_never_stall_and_keep_transaction_state(
        steps in prop::collection::vec(step(), 1..24),
        chunk in 1usize..200,
    ) {
        let input = encode(&steps);
        let (_, replies) = direct(&input);
        let (_, p_replies, engine) = through(GUARDED, &input, chunk);
        tags(&p_replies);
        prop_assert_eq!(ready_statuses(&p_replies), ready_statuses(&replies));
        if matches!(steps.last(), Some(Step::Sync | Step::Query(_))) {
            prop_assert!(engine.nothing_in_flight(), "replies still awaited at the end");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Arbitrary bytes from a client, framed or not, after a well-formed start: the engine
    /// either handles them or reports a client fault; it never panics, and what it sends the
    /// client stays well framed.
    #[test]
    fn arbitrary_client_bytes_never_panic(
        steps in prop::collection::vec(step(), 0..8),
        noise in prop::collection::vec(any::<u8>(), 0..64),
        tag in prop::sample::select(vec![b'Q', b'P', b'B', b'D', b'E', b'C', b'S', b'H', b'F', b'd', b'c', b'f', b'X', b'p', 0u8, 0xff]),
    ) {
        let mut input = encode(&steps);
        // A frame of a real kind with a body of noise (lengths may lie), then raw noise.
        input.extend_from_slice(&[tag]);
        input.extend_from_slice(&((noise.len() as u32 + 4).to_be_bytes()));
        input.extend_from_slice(&noise);
        input.extend_from_slice(&noise);
        for toml in ["", GUARDED] {
            let (mut engine, mut model) = logged_in(toml);
            engine.client_input().extend_from_slice(&input);
            if engine.process_client(&NoEvents).is_ok() {
                pump_lenient(&mut engine, &mut model);
            }
            tags(&engine.to_client().split());
        }
    }
}

/// Like [`pump`], but a server fault (the model's answer to nonsense) ends the exchange.
fn pump_lenient(engine: &mut Engine, model: &mut Model) {
    for _ in 0..10_000 {
        let to_server = engine.to_server().split();
        if to_server.is_empty() || model.closed {
            return;
        }
        let reply = model.feed(&to_server);
        engine.server_input().extend_from_slice(&reply);
        if engine.process_server(&NoEvents).is_err() {
            return;
        }
    }
    panic!("the engine and the server never went quiet");
}

/// A guarded query right after an extended-protocol `BEGIN` with no `Sync` (so no
/// `ReadyForQuery` told the status): it runs in the client's block, which stays open.
#[test]
fn a_query_after_an_unsynced_begin_runs_in_the_client_s_block() {
    let steps = vec![
        Step::Parse(1, 11),
        Step::Bind(2, 1, 0),
        Step::Execute(2, 0),
        Step::Query(vec![0, 4]),
    ];
    let input = encode(&steps);
    let (_, replies) = direct(&input);
    let (_, p_replies, _) = through(GUARDED, &input, 1);
    assert_eq!(ready_statuses(&p_replies), ready_statuses(&replies));
}

/// During COPY FROM STDIN, the type byte of a message COPY refuses, with the rest still to
/// come: the server ends the session on that byte alone, so the engine must not wait for the
/// rest (a client that sends no more would wait for ever).
#[test]
fn a_message_copy_refuses_goes_on_its_type_byte_alone() {
    let mut copy = BytesMut::new();
    fe::write_query(&mut copy, b"COPY audit FROM STDIN");
    let mut part = BytesMut::new();
    fe::write_describe(&mut part, b'P', b"");
    for toml in ["", GUARDED] {
        let (_, replies) = direct(&[&copy[..], &part[..4]].concat());
        let (_, p_replies, _) = through(toml, &[&copy[..], &part[..4]].concat(), 1000);
        assert_eq!(p_replies, replies);
        assert!(tags(&replies).ends_with(&[be::ERROR_RESPONSE, be::ERROR_RESPONSE]));
    }
}
