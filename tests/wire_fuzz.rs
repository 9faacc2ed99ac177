//! A differential wire fuzzer: generated (and mutated) client sessions are replayed byte for
//! byte against a throwaway PostgreSQL cluster, once directly and once through the proxy
//! (guarding the invoice table), and the two reply streams are compared.
//!
//! Each session is a login (sometimes with a mutated startup packet), 1 to 12 frontend
//! messages drawn from a vocabulary (simple queries, valid and failing, guarded writes,
//! transaction control, the extended protocol with valid and invalid names, FunctionCall,
//! COPY), then, with some probability, mutations (bad and huge lengths, lengths off by one,
//! truncated frames, unknown tags, random bytes, a message split over several writes, a large
//! pipeline the client does not read for a while) and an ending (Terminate, Terminate and more
//! bytes, close, half-close, or stop sending and close later).
//!
//! Per side the replies are reduced to tags (ErrorResponse and NoticeResponse with severity
//! and SQLSTATE, CommandComplete with its tag; BackendKeyData and parameter values masked; EOF
//! and reset both read as the end). Reported: hangs (no end within the session timeout),
//! leaked backends (a backend of the fuzz database still there 1 s after the client left) and
//! reply differences, classified as explained (see [`classify`]) or not. The run ends with a
//! summary line and assertions: no proxy-only hang, no leaked backend, no unexplained
//! difference, no panic, and the proxy's `optlock_client_errors_total` counters consistent
//! with the refusals the sessions provoked.
//!
//! Known proxy bugs the fuzzer found are listed in [`KNOWN_ISSUES`] (issue 24), each with the
//! signature that recognises it; sessions failing only by one of them are counted and shown
//! (one shrunk reproduction per label), not asserted.
//!
//! Only a throwaway cluster is fuzzed: some sequences crash a PostgreSQL 15 backend by
//! themselves (the postmaster then restarts every backend), which must never hit the shared
//! server. A session during which the server crashed is skipped ("server fault").
//!
//! Environment: `OPTLOCK_FUZZ_SESSIONS` (150), `OPTLOCK_FUZZ_SEED` (a fixed seed),
//! `OPTLOCK_FUZZ_WORKERS` (4 sessions at a time, each worker on a database of its own),
//! `OPTLOCK_FUZZ_TIMEOUT_MS` (5000, per side), `OPTLOCK_FUZZ_ONLY` (comma-separated session
//! numbers: replay just those), `OPTLOCK_FUZZ_VERBOSE=1` (print every session's messages and
//! replies), `OPTLOCK_FUZZ_LIST=1` (print every failing session's number and label, known
//! issues included), `OPTLOCK_FUZZ_MINIMIZE` (how many failing sessions, one per kind, to shrink to a
//! minimal message sequence at the end; 2), `OPTLOCK_FUZZ_MINIMIZE_KNOWN=1` (shrink sessions
//! failing by a known issue too, not only the others).

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::guards::{INVOICE, invoice_table};
use common::wire::{
    bind, close, copy_data, copy_done, copy_fail, describe, execute, flush, function_call, parse,
    query, ssl_request, startup, startup_version, sync, terminate,
};
use common::{Proxy, TestDb, connect_direct_to, http_get, sample};
use optlock::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// The proxy's `max_message_size` in this test: small, so that oversize frames are cheap.
const MAX_MESSAGE: usize = 65536;
/// How long a side may stay quiet before a "stop sending and close" ending closes.
const LEAK_PATIENCE: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// A small deterministic PRNG (xorshift64*, seeded through splitmix64).

struct Rng(u64);

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(splitmix(seed) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions: what the client sends, as items that can be dropped one by one when shrinking.

/// The startup of a session.
#[derive(Clone, Debug, PartialEq)]
enum Startup {
    Normal,
    /// `SSLRequest` first; the startup once the answer ('N': no TLS here) is read.
    SslFirst,
    /// `SSLRequest` and the startup in one write, without waiting for the answer.
    SslPipelined,
    /// The length field replaced (the rest of a normal packet follows).
    BadLength(i32),
    /// A valid startup padded (application_name) to exactly this many bytes.
    Padded(usize),
    /// A protocol version other than 3.x.
    BadVersion(i32),
    /// No `user` parameter.
    NoUser,
    /// The final terminating NUL left out (length adjusted).
    Unterminated,
    /// Only the first bytes of the packet are sent.
    Truncated(usize),
    /// A `CancelRequest` with a random key.
    Cancel(u32, u32),
}

impl Startup {
    fn render(&self, db: &str) -> Vec<u8> {
        let normal = || startup(&[("user", "postgres"), ("database", db)]);
        match self {
            Startup::Normal => normal(),
            // The SSLRequest itself is written first by the client (see run_side).
            Startup::SslFirst => normal(),
            Startup::SslPipelined => [ssl_request(), normal()].concat(),
            Startup::BadLength(len) => {
                let mut b = normal();
                b[..4].copy_from_slice(&len.to_be_bytes());
                b
            }
            Startup::Padded(total) => {
                let base = startup(&[
                    ("user", "postgres"),
                    ("database", db),
                    ("application_name", ""),
                ])
                .len();
                let pad = "p".repeat(total.saturating_sub(base));
                startup(&[
                    ("user", "postgres"),
                    ("database", db),
                    ("application_name", &pad),
                ])
            }
            Startup::BadVersion(v) => {
                startup_version(*v, &[("user", "postgres"), ("database", db)])
            }
            Startup::NoUser => startup(&[("database", db)]),
            Startup::Unterminated => {
                let mut b = normal();
                b.pop();
                let len = b.len() as i32;
                b[..4].copy_from_slice(&len.to_be_bytes());
                b
            }
            Startup::Truncated(n) => {
                let b = normal();
                b[..(*n).min(b.len() - 1)].to_vec()
            }
            Startup::Cancel(pid, key) => {
                let mut b = vec![0, 0, 0, 16];
                b.extend_from_slice(&80877102i32.to_be_bytes());
                b.extend_from_slice(&pid.to_be_bytes());
                b.extend_from_slice(&key.to_be_bytes());
                b
            }
        }
    }

    /// Whether the proxy refuses this startup with `client_errors_total{reason="protocol"}`.
    fn refused_by_proxy(&self) -> bool {
        match self {
            Startup::BadLength(len) => *len < 8 || *len > 10_000,
            Startup::Padded(total) => *total > 10_000,
            Startup::BadVersion(_) | Startup::NoUser | Startup::Unterminated => true,
            _ => false,
        }
    }

    fn logs_in(&self) -> bool {
        match self {
            Startup::Normal | Startup::SslFirst => true,
            // PostgreSQL takes startup packets up to 10004 bytes (10000 after the length).
            Startup::Padded(total) => *total <= 10_004,
            _ => false,
        }
    }

    fn ssl(&self) -> bool {
        matches!(self, Startup::SslFirst | Startup::SslPipelined)
    }
}

/// A mutation of the byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mutation {
    /// Length field below 4.
    BadLength,
    /// Length field above `max_message_size` (header only, or a real oversize Query).
    Oversize,
    /// Length field one more or one less than the frame.
    OffByOne,
    /// The frame cut short (the rest never sent).
    Truncated,
    /// A tag no frontend message has (the length stays right).
    UnknownTag,
    /// Random bytes between two messages.
    RandomBytes,
    /// A message split over several writes with small sleeps (valid).
    Split,
    /// A large pipeline written while the client does not read for a while (valid).
    UnreadPipeline,
}

impl Mutation {
    /// Whether the bytes stay a valid message stream.
    fn benign(self) -> bool {
        matches!(self, Mutation::Split | Mutation::UnreadPipeline)
    }
}

#[derive(Clone, Debug)]
enum Item {
    Startup(Startup),
    /// Waits (up to the session timeout) for the end of the login before going on.
    WaitLogin,
    Write {
        desc: String,
        bytes: Vec<u8>,
        msgs: usize,
        mutation: Option<Mutation>,
    },
    Split {
        desc: String,
        chunks: Vec<Vec<u8>>,
        sleep_ms: u64,
        msgs: usize,
    },
    /// The client stops reading for this long (what it is sent meanwhile piles up).
    Pause(u64),
}

#[derive(Clone, Debug, PartialEq)]
enum Ending {
    Terminate,
    TerminateTrailing(Vec<u8>),
    Close,
    HalfClose,
    /// Stops sending, keeps reading this many ms, then closes.
    StopAndClose(u64),
}

#[derive(Clone, Debug)]
struct Plan {
    index: usize,
    items: Vec<Item>,
    ending: Ending,
}

/// A framing refusal the proxy counts, by reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    Protocol,
    TooLarge,
    /// One of the two: an oversize frame PostgreSQL itself ends the session on (a type whose
    /// limit is 10000 bytes, or a length above 1 GB) goes to the server and counts
    /// `protocol`, except during COPY, where the proxy refuses it (`message_too_large`).
    Either,
}

/// What an oversize frame counts: `message_too_large` for a type PostgreSQL reads up to 1 GB
/// of (the proxy refuses what it will not buffer), else either (see [`Refusal::Either`]).
fn oversize_refusal(bytes: &[u8]) -> Refusal {
    let len = i32::from_be_bytes(bytes[1..5].try_into().unwrap());
    let large = matches!(bytes[0], b'Q' | b'F' | b'B' | b'P' | b'd');
    if large && (4..=0x3fff_fffe).contains(&len) {
        Refusal::TooLarge
    } else {
        Refusal::Either
    }
}

impl Plan {
    fn startup(&self) -> Startup {
        self.items
            .iter()
            .find_map(|i| match i {
                Item::Startup(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or(Startup::Normal)
    }

    fn ssl_first(&self) -> bool {
        self.startup().ssl()
    }

    /// Frontend messages sent (startup packets and the ending's Terminate included).
    fn messages(&self) -> usize {
        let items: usize = self
            .items
            .iter()
            .map(|i| match i {
                Item::Startup(s) if s.ssl() => 2,
                Item::Startup(_) => 1,
                Item::Write { msgs, .. } | Item::Split { msgs, .. } => *msgs,
                _ => 0,
            })
            .sum();
        let ending = match self.ending {
            Ending::Terminate | Ending::TerminateTrailing(_) => 1,
            _ => 0,
        };
        items + ending
    }

    fn mutations(&self) -> Vec<Mutation> {
        let mut out: Vec<Mutation> = self
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Write { mutation, .. } => *mutation,
                Item::Split { .. } => Some(Mutation::Split),
                Item::Pause(_) => Some(Mutation::UnreadPipeline),
                _ => None,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether the stream holds a mutation that breaks the framing (anything but a split
    /// message or an unread pipeline).
    fn framing_mutated(&self) -> bool {
        self.mutations().iter().any(|m| !m.benign())
    }

    /// The refusal the proxy must count for this session, when it is certain: a normal login,
    /// then valid messages up to a frame with a bad or oversize length, and a client that stays
    /// to read (after a plain close the proxy may end the session on a failed write first).
    fn certain_refusal(&self) -> Option<Refusal> {
        if !self.startup().logs_in() || matches!(self.ending, Ending::Close) {
            return None;
        }
        for item in &self.items {
            if let Item::Write {
                mutation: Some(m),
                bytes,
                ..
            } = item
            {
                return match m {
                    Mutation::BadLength => Some(Refusal::Protocol),
                    Mutation::Oversize => Some(oversize_refusal(bytes)),
                    m if m.benign() => continue,
                    _ => None,
                };
            }
        }
        None
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        for item in &self.items {
            match item {
                Item::Startup(st) => {
                    let _ = write!(s, "startup {st:?}; ");
                }
                Item::WaitLogin => s.push_str("(wait for login); "),
                Item::Write { desc, .. } => {
                    let _ = write!(s, "{desc}; ");
                }
                Item::Split { desc, sleep_ms, .. } => {
                    let _ = write!(s, "{desc} (split, {sleep_ms} ms apart); ");
                }
                Item::Pause(ms) => {
                    let _ = write!(s, "(stop reading {ms} ms); ");
                }
            }
        }
        let _ = write!(s, "end {:?}", self.ending);
        s
    }
}

/// Simple-protocol statements: valid, failing, guarded, transaction control, COPY, and some
/// the guard refuses by policy.
const SIMPLE: &[&str] = &[
    "SELECT 1",
    "SELECT id, total, version FROM invoice WHERE id = 3",
    "SELECT * FROM invoice ORDER BY id",
    "UPDATE invoice SET total = total + 1 WHERE id = 2",
    "UPDATE invoice SET total = total + 1 WHERE id = 11",
    "UPDATE invoice SET total = total WHERE total < -1000000",
    "UPDATE invoice SET version = version + 1 WHERE id = 4",
    "UPDATE invoice SET total = 7 WHERE id = 1 RETURNING id, version",
    "DELETE FROM invoice WHERE id = 99",
    "INSERT INTO invoice (id, total) VALUES (3, 1)",
    "INSERT INTO invoice (id, total) VALUES (5, 1) ON CONFLICT (id) DO UPDATE SET total = excluded.total",
    "SELECT 1/0",
    "SELEC 1",
    "SELECT * FROM no_such_table",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT s1",
    "ROLLBACK TO SAVEPOINT s1",
    "RELEASE SAVEPOINT s1",
    "BEGIN; UPDATE invoice SET total = total + 1 WHERE id = 1; COMMIT",
    "BEGIN; SELECT 1/0; COMMIT",
    "BEGIN; SAVEPOINT a; UPDATE invoice SET total = total + 1 WHERE id = 6; ROLLBACK TO a; COMMIT",
    "SELECT id, version FROM invoice WHERE id = 6; UPDATE invoice SET total = total + 1 WHERE id = 6",
    "SELECT 1; SELECT 2",
    "",
    ";",
    "DISCARD ALL",
    "SELECT 'é', 'ü', '日本'",
    "COPY audit FROM STDIN",
    "COPY (SELECT id FROM invoice) TO STDOUT",
    "SET application_name = 'fuzz'",
    "RESET ALL",
    "SELECT pg_sleep(0.005)",
    "LISTEN fuzz; NOTIFY fuzz",
    "SELECT version FROM invoice WHERE id = 8 FOR UPDATE",
    "BEGIN ISOLATION LEVEL SERIALIZABLE",
    "CREATE TEMP TABLE IF NOT EXISTS t (n int)",
    "DEALLOCATE ALL",
    // Refused by the guard's policy (0A000 through the proxy): explained differences.
    "MERGE INTO invoice i USING (SELECT 1 AS id) s ON i.id = s.id WHEN MATCHED THEN UPDATE SET total = 1",
    "EXPLAIN ANALYZE UPDATE invoice SET total = total WHERE id = 9",
    "PREPARE pw AS UPDATE invoice SET total = 1 WHERE id = 9",
    "EXECUTE pw",
];

/// The statements of [`SIMPLE`] the guard refuses by policy, and the start of its message.
const POLICY_REFUSALS: &[(&str, &str)] = &[
    ("MERGE INTO invoice", "MERGE cannot carry a version check"),
    (
        "EXPLAIN ANALYZE UPDATE invoice",
        "EXPLAIN ANALYZE runs the write",
    ),
    (
        "PREPARE pw AS UPDATE invoice",
        "SQL-level PREPARE cannot carry a version check",
    ),
];

/// Statements for `Parse`.
const PARSED: &[&str] = &[
    "SELECT $1::int + 1",
    "SELECT id, total, version FROM invoice WHERE id = $1",
    "UPDATE invoice SET total = total + 1 WHERE id = $1",
    "UPDATE invoice SET total = $2 WHERE id = $1 RETURNING version",
    "DELETE FROM invoice WHERE id = $1 + 100",
    "SELECT 1/0",
    "SELEC",
    "BEGIN",
    "COMMIT",
    "SELECT * FROM invoice",
    "SELECT 'é', 'ü'",
    "DISCARD ALL",
    "INSERT INTO audit VALUES ($1)",
    "",
];

const STMT_NAMES: &[&str] = &["", "", "s1", "s2", "nope"];
const PORTAL_NAMES: &[&str] = &["", "", "p1", "nope"];
const PARAMS: &[&str] = &["1", "2", "11", "x", "-3"];

/// One frontend message (or a short valid group of them): description, bytes, message count.
fn message(rng: &mut Rng) -> (String, Vec<u8>, usize) {
    let r = rng.below(100);
    if r < 30 {
        let sql = *rng.pick(SIMPLE);
        return (format!("Q({sql:?})"), query(sql), 1);
    }
    if r < 70 {
        return match rng.below(9) {
            0 | 1 => {
                let name = *rng.pick(STMT_NAMES);
                let sql = *rng.pick(PARSED);
                (format!("P({name:?}, {sql:?})"), parse(name, sql, &[]), 1)
            }
            2 | 3 => {
                let portal = *rng.pick(PORTAL_NAMES);
                let stmt = *rng.pick(STMT_NAMES);
                let n = rng.below(3);
                let params: Vec<&str> = (0..n).map(|_| *rng.pick(PARAMS)).collect();
                let values: Vec<Option<&[u8]>> =
                    params.iter().map(|p| Some(p.as_bytes())).collect();
                (
                    format!("B({portal:?}, {stmt:?}, {params:?})"),
                    bind(portal, stmt, &values, &[]),
                    1,
                )
            }
            4 => {
                let kind = *rng.pick(b"SP");
                let name = if kind == b'S' {
                    *rng.pick(STMT_NAMES)
                } else {
                    *rng.pick(PORTAL_NAMES)
                };
                (
                    format!("D({}, {name:?})", kind as char),
                    describe(kind, name),
                    1,
                )
            }
            5 => {
                let portal = *rng.pick(PORTAL_NAMES);
                let max = *rng.pick(&[0, 0, 1, 2]);
                (format!("E({portal:?}, {max})"), execute(portal, max), 1)
            }
            6 => {
                let kind = *rng.pick(b"SP");
                let name = if kind == b'S' {
                    *rng.pick(STMT_NAMES)
                } else {
                    *rng.pick(PORTAL_NAMES)
                };
                (
                    format!("C({}, {name:?})", kind as char),
                    close(kind, name),
                    1,
                )
            }
            7 => ("S".into(), sync(), 1),
            _ => ("H".into(), flush(), 1),
        };
    }
    if r < 75 {
        // int4pl (OID 177) with two, one or no arguments; OID 0 does not exist.
        let oid = *rng.pick(&[177u32, 177, 0]);
        let n = rng.below(3);
        let args: Vec<[u8; 4]> = (0..n).map(|i| (i as i32 + 1).to_be_bytes()).collect();
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
        return (format!("F({oid}, {n} args)"), function_call(oid, &refs), 1);
    }
    if r < 85 {
        return match rng.below(5) {
            0 => (
                "Q(\"COPY audit FROM STDIN\")".into(),
                query("COPY audit FROM STDIN"),
                1,
            ),
            1 => ("d(\"1\\n\")".into(), copy_data(b"1\n"), 1),
            2 => ("d(\"x\\n\")".into(), copy_data(b"x\n"), 1),
            3 => ("c".into(), copy_done(), 1),
            _ => ("f(\"fuzz\")".into(), copy_fail("fuzz"), 1),
        };
    }
    // A whole extended batch: Parse, Bind, (Describe,) Execute, Sync.
    let sql = *rng.pick(PARSED);
    let params: Vec<&str> = (0..sql.matches('$').count().min(2))
        .map(|_| *rng.pick(PARAMS))
        .collect();
    let values: Vec<Option<&[u8]>> = params.iter().map(|p| Some(p.as_bytes())).collect();
    let describe_too = rng.chance(50);
    let mut bytes = [parse("", sql, &[]), bind("", "", &values, &[])].concat();
    if describe_too {
        bytes.extend(describe(b'P', ""));
    }
    bytes.extend(execute("", 0));
    bytes.extend(sync());
    (
        format!(
            "P+B{}+E+S({sql:?}, {params:?})",
            if describe_too { "+D" } else { "" }
        ),
        bytes,
        4 + describe_too as usize,
    )
}

const FRONTEND_TAGS: &[u8] = b"QPBDECSHXFdcfp";

/// Applies one mutation to the messages (items after the login).
fn mutate(rng: &mut Rng, items: &mut Vec<Item>) {
    let n = items.len();
    let at = rng.below(n);
    let kind = match rng.below(100) {
        0..=11 => Mutation::BadLength,
        12..=23 => Mutation::Oversize,
        24..=29 => Mutation::OffByOne,
        30..=39 => Mutation::Truncated,
        40..=51 => Mutation::UnknownTag,
        52..=63 => Mutation::RandomBytes,
        64..=85 => Mutation::Split,
        _ => Mutation::UnreadPipeline,
    };
    match kind {
        Mutation::RandomBytes => {
            let len = rng.range(1, 40);
            let bytes = rng.bytes(len);
            items.insert(
                at,
                Item::Write {
                    desc: format!("random bytes {bytes:02x?}"),
                    bytes,
                    msgs: 0,
                    mutation: Some(kind),
                },
            );
        }
        Mutation::UnreadPipeline => {
            let copies = rng.range(20, 200);
            let q = query("SELECT g, repeat('x', 100) FROM generate_series(1, 200) g");
            let bytes = q.repeat(copies);
            let ms = rng.range(100, 400) as u64;
            items.insert(at, Item::Pause(ms));
            items.insert(
                at + 1,
                Item::Write {
                    desc: format!(
                        "{copies} x Q(\"SELECT g, repeat('x', 100) FROM generate_series(1, 200) g\")"
                    ),
                    bytes,
                    msgs: copies,
                    mutation: Some(kind),
                },
            );
        }
        Mutation::Oversize if rng.chance(25) => {
            // A real Query longer than max_message_size: PostgreSQL runs it.
            let len = MAX_MESSAGE + rng.range(1, 8192);
            let sql = format!("SELECT length('{}')", "x".repeat(len));
            items.insert(
                at,
                Item::Write {
                    desc: format!("Q(\"SELECT length('x' * {len})\") [oversize]"),
                    bytes: query(sql),
                    msgs: 1,
                    mutation: Some(kind),
                },
            );
        }
        _ => {
            let Item::Write {
                desc,
                bytes,
                msgs,
                mutation,
            } = &mut items[at]
            else {
                return;
            };
            if bytes.len() < 5 || mutation.is_some() {
                return;
            }
            // A group of messages: mutate the first.
            let first = i32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize + 1;
            if kind == Mutation::Split {
                let cuts = rng.range(1, 3);
                let mut points: Vec<usize> =
                    (0..cuts).map(|_| rng.range(1, bytes.len() - 1)).collect();
                points.sort();
                points.dedup();
                let mut chunks = Vec::new();
                let mut from = 0;
                for p in points {
                    chunks.push(bytes[from..p].to_vec());
                    from = p;
                }
                chunks.push(bytes[from..].to_vec());
                let sleep_ms = rng.range(1, 5) as u64;
                items[at] = Item::Split {
                    desc: desc.clone(),
                    chunks,
                    sleep_ms,
                    msgs: *msgs,
                };
                return;
            }
            let len_field = |b: &mut Vec<u8>, v: i32| b[1..5].copy_from_slice(&v.to_be_bytes());
            let note = match kind {
                Mutation::BadLength => {
                    let v = *rng.pick(&[-1, 0, 1, 2, 3, i32::MIN]);
                    len_field(bytes, v);
                    format!("length {v}")
                }
                Mutation::Oversize => {
                    let v = *rng.pick(&[
                        MAX_MESSAGE as i32 + 1,
                        MAX_MESSAGE as i32 + 4096,
                        1 << 20,
                        0x3fff_ffff,
                        i32::MAX,
                    ]);
                    len_field(bytes, v);
                    format!("length {v}")
                }
                Mutation::OffByOne => {
                    let v = first as i32 - 1 + *rng.pick(&[-1, 1]);
                    len_field(bytes, v);
                    format!("length {v} (frame {})", first - 1)
                }
                Mutation::Truncated => {
                    let keep = rng.range(1, first - 1);
                    bytes.drain(keep..first);
                    format!("cut to {keep} of {first} bytes")
                }
                Mutation::UnknownTag => {
                    let tag = loop {
                        let t = rng.next() as u8;
                        if !FRONTEND_TAGS.contains(&t) {
                            break t;
                        }
                    };
                    bytes[0] = tag;
                    format!("tag 0x{tag:02x}")
                }
                _ => unreachable!(),
            };
            *desc = format!("{desc} [{kind:?}: {note}]");
            *mutation = Some(kind);
        }
    }
}

/// The session numbered `index` of the campaign seeded with `seed`.
fn generate(seed: u64, index: usize) -> Plan {
    let mut rng = Rng::new(seed ^ splitmix(index as u64 + 1));
    let start = if rng.chance(10) {
        match rng.below(10) {
            0 => Startup::SslFirst,
            8 => Startup::SslPipelined,
            1 => Startup::BadLength(*rng.pick(&[0, 4, 7, -1, 10_005, 100_000])),
            2 => Startup::Padded(*rng.pick(&[9_999, 10_000, 10_001, 10_004, 10_005])),
            3 => Startup::BadVersion(*rng.pick(&[2 << 16, 4 << 16, (1234 << 16) | 5678, 0])),
            4 => Startup::NoUser,
            5 => Startup::Unterminated,
            6 => Startup::Truncated(rng.range(1, 20)),
            7 => Startup::Cancel(rng.next() as u32, rng.next() as u32),
            _ => Startup::Normal,
        }
    } else {
        Startup::Normal
    };
    let mut items = vec![Item::Startup(start.clone())];
    if start.logs_in() && rng.chance(95) {
        items.push(Item::WaitLogin);
    }
    let mut body = Vec::new();
    for _ in 0..rng.range(1, 12) {
        let (desc, bytes, msgs) = message(&mut rng);
        body.push(Item::Write {
            desc,
            bytes,
            msgs,
            mutation: None,
        });
    }
    if rng.chance(45) {
        for _ in 0..rng.range(1, 2) {
            mutate(&mut rng, &mut body);
        }
    }
    items.extend(body);
    let ending = match rng.below(100) {
        0..=34 => Ending::Terminate,
        35..=44 => {
            let n = rng.range(1, 30);
            Ending::TerminateTrailing(rng.bytes(n))
        }
        45..=69 => Ending::HalfClose,
        70..=84 => Ending::Close,
        _ => Ending::StopAndClose(rng.range(20, 300) as u64),
    };
    Plan {
        index,
        items,
        ending,
    }
}

// ---------------------------------------------------------------------------------------------
// Running one side: the client writes its items while a reader takes every reply.

/// One backend message reduced to what is compared; `text` (the message of an error) is kept
/// for classification and reports only.
#[derive(Clone, Debug)]
struct Tok {
    t: String,
    text: Option<String>,
}

impl PartialEq for Tok {
    fn eq(&self, other: &Tok) -> bool {
        self.t == other.t
    }
}

fn field(body: &[u8], code: u8) -> Option<String> {
    let mut rest = body;
    while let Some((&c, after)) = rest.split_first() {
        if c == 0 {
            return None;
        }
        let end = after.iter().position(|&b| b == 0)?;
        if c == code {
            return Some(String::from_utf8_lossy(&after[..end]).into_owned());
        }
        rest = &after[end + 1..];
    }
    None
}

fn reduce(msg: &[u8]) -> Tok {
    let tag = msg[0];
    let body = &msg[5..];
    let cstr = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let t = match tag {
        b'R' if body.len() >= 4 => {
            format!("R{}", i32::from_be_bytes(body[..4].try_into().unwrap()))
        }
        b'S' => format!("S:{}", cstr(body)),
        b'K' => "K".into(),
        b'Z' if !body.is_empty() => format!("Z{}", body[0] as char),
        b'E' | b'N' => {
            let tok = format!(
                "{}:{}:{}",
                tag as char,
                field(body, b'S').unwrap_or_default(),
                field(body, b'C').unwrap_or_default()
            );
            return Tok {
                t: tok,
                text: field(body, b'M'),
            };
        }
        b'C' => format!("C:{}", cstr(body)),
        b'T' if body.len() >= 2 => format!("T{}", i16::from_be_bytes([body[0], body[1]])),
        t if t.is_ascii_graphic() => (t as char).to_string(),
        t => format!("0x{t:02x}"),
    };
    Tok { t, text: None }
}

/// The reply stream as tokens: the SSL answer byte, whole messages, then what is left of an
/// unfinished one (as PostgreSQL's pre-3.0 error format, without a length, reads).
fn tokenize(buf: &[u8], ssl_first: bool) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut rest = buf;
    if ssl_first {
        match rest.split_first() {
            Some((&b, r)) => {
                out.push(Tok {
                    t: format!("ssl:{}", b as char),
                    text: None,
                });
                rest = r;
            }
            None => return out,
        }
    }
    while !rest.is_empty() {
        let len = if rest.len() >= 5 {
            i32::from_be_bytes(rest[1..5].try_into().unwrap())
        } else {
            -1
        };
        if len < 4 || rest.len() < len as usize + 1 {
            out.push(Tok {
                t: format!("partial:{}", rest[0] as char),
                text: Some(String::from_utf8_lossy(&rest[..rest.len().min(200)]).into_owned()),
            });
            break;
        }
        let (msg, r) = rest.split_at(len as usize + 1);
        // NotificationResponse is asynchronous: the server sends it whenever the backend is
        // idle, so where it falls among the replies depends on timing. Not compared.
        if msg[0] != b'A' {
            out.push(reduce(msg));
        }
        rest = r;
    }
    out
}

/// Whether the login has ended (a ReadyForQuery or an error) in what was read so far.
fn login_over(buf: &[u8], ssl_first: bool) -> bool {
    let mut rest = if ssl_first && !buf.is_empty() {
        &buf[1..]
    } else {
        buf
    };
    while rest.len() >= 5 {
        let len = i32::from_be_bytes(rest[1..5].try_into().unwrap());
        if len < 4 || rest.len() < len as usize + 1 {
            return false;
        }
        if matches!(rest[0], b'Z' | b'E') {
            return true;
        }
        rest = &rest[len as usize + 1..];
    }
    false
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SideEnd {
    /// The other end closed (or reset) the connection.
    Eof,
    /// No end within the session timeout (or the client's writes blocked that long).
    Hang,
    /// The client closed first: what it read is cut at a moment that depends on timing.
    Closed,
    /// The connection could not be made.
    NoConnect,
}

#[derive(Clone, Debug)]
struct Side {
    toks: Vec<Tok>,
    end: SideEnd,
    elapsed: Duration,
}

struct ReadState {
    buf: Mutex<Vec<u8>>,
    pause_until: Mutex<Option<Instant>>,
}

async fn run_side(addr: &str, db: &str, plan: &Plan, limit: Duration) -> Side {
    let started = Instant::now();
    let ssl_first = plan.ssl_first();
    let stream = match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        _ => {
            return Side {
                toks: Vec::new(),
                end: SideEnd::NoConnect,
                elapsed: started.elapsed(),
            };
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let state = Arc::new(ReadState {
        buf: Mutex::new(Vec::new()),
        pause_until: Mutex::new(None),
    });
    let (login_tx, mut login_rx) = watch::channel(false);
    let (got_tx, mut got_rx) = watch::channel(0usize);
    let reader = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut chunk = vec![0u8; 64 * 1024];
            let mut logged_in = false;
            loop {
                let pause = *state.pause_until.lock().unwrap();
                if let Some(until) = pause
                    && until > Instant::now()
                {
                    tokio::time::sleep_until(until.into()).await;
                    continue;
                }
                match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut buf = state.buf.lock().unwrap();
                        buf.extend_from_slice(&chunk[..n]);
                        let _ = got_tx.send(buf.len());
                        if !logged_in && login_over(&buf, ssl_first) {
                            logged_in = true;
                            let _ = login_tx.send(true);
                        }
                    }
                }
            }
            let _ = login_tx.send(true);
            let _ = got_tx.send(usize::MAX);
        })
    };
    let writes = async {
        for item in &plan.items {
            let ok = match item {
                Item::Startup(Startup::SslFirst) => {
                    // As clients do: the answer to the SSLRequest, then the startup.
                    wr.write_all(&ssl_request()).await.is_ok() && {
                        let _ = got_rx.wait_for(|n| *n >= 1).await;
                        wr.write_all(&Startup::SslFirst.render(db)).await.is_ok()
                    }
                }
                Item::Startup(s) => wr.write_all(&s.render(db)).await.is_ok(),
                Item::WaitLogin => {
                    let _ = login_rx.wait_for(|v| *v).await;
                    true
                }
                Item::Write { bytes, .. } => wr.write_all(bytes).await.is_ok(),
                Item::Split {
                    chunks, sleep_ms, ..
                } => {
                    let mut ok = true;
                    for c in chunks {
                        ok = wr.write_all(c).await.is_ok();
                        if !ok {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(*sleep_ms)).await;
                    }
                    ok
                }
                Item::Pause(ms) => {
                    *state.pause_until.lock().unwrap() =
                        Some(Instant::now() + Duration::from_millis(*ms));
                    true
                }
            };
            if !ok {
                // The other end went away; what follows cannot be sent either.
                break;
            }
        }
    };
    let wrote = tokio::time::timeout(limit, writes).await.is_ok();
    let end = if !wrote {
        reader.abort();
        SideEnd::Hang
    } else {
        match &plan.ending {
            Ending::Terminate => {
                let _ = wr.write_all(&terminate()).await;
                wait_end(reader, limit).await
            }
            Ending::TerminateTrailing(more) => {
                let _ = wr.write_all(&terminate()).await;
                let _ = wr.write_all(more).await;
                wait_end(reader, limit).await
            }
            Ending::HalfClose => {
                let _ = wr.shutdown().await;
                wait_end(reader, limit).await
            }
            Ending::Close => {
                drop(wr);
                reader.abort();
                SideEnd::Closed
            }
            Ending::StopAndClose(ms) => {
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                drop(wr);
                reader.abort();
                SideEnd::Closed
            }
        }
    };
    let buf = std::mem::take(&mut *state.buf.lock().unwrap());
    Side {
        toks: tokenize(&buf, ssl_first),
        end,
        elapsed: started.elapsed(),
    }
}

async fn wait_end(mut reader: tokio::task::JoinHandle<()>, limit: Duration) -> SideEnd {
    match tokio::time::timeout(limit, &mut reader).await {
        Ok(_) => SideEnd::Eof,
        Err(_) => {
            reader.abort();
            SideEnd::Hang
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Comparing the two sides.

#[derive(Clone, Debug, PartialEq)]
enum Verdict {
    Same,
    /// The client closed first on a side: the replies read depend on timing.
    NotCompared,
    /// A difference the proxy means to make (why: see [`classify`]).
    Explained(&'static str),
    /// A difference nothing explains: `kind` names the two replies where the streams part
    /// (tokens only, to group sessions), `detail` adds the messages.
    Unexplained {
        kind: String,
        detail: String,
    },
}

/// The proxy's own FATAL for a frame it refuses (bad length, or above `max_message_size`).
fn proxy_frame_fatal(t: &Tok) -> bool {
    t.t == "E:FATAL:08P01"
        && t.text.as_deref().is_some_and(|m| {
            m.starts_with("invalid message: type") || m.contains("exceeds max_message_size")
        })
}

/// Classifies the first place where the two reply streams part.
///
/// Explained differences, and why they are legitimate:
/// - "proxy refuses the frame": at the parting point the proxy sends its own FATAL 08P01 for
///   a frame with a length below 4 or above `max_message_size`, in a session whose byte
///   stream was mutated (or holds a real Query above the limit). PostgreSQL closes silently on
///   an impossible length (it only logs a COMMERROR), waits for up to 1 GB of a Query, Parse,
///   Bind, FunctionCall or CopyData frame (so the direct side may hang there), or runs the
///   oversize Query; the proxy refuses what it will not buffer and says why (tests
///   relay_faults::oversize_message_is_refused; frames PostgreSQL ends the session on go to it
///   unread, relay_faults::frames_postgresql_ends_the_session_on_end_it_as_directly). Everything after that point differs as a consequence.
/// - "guard refusal": at the parting point the proxy answers ERROR 0A000 from optlock, for a
///   statement its guard refuses by policy (MERGE, EXPLAIN ANALYZE, SQL-level PREPARE of a
///   guarded write). What follows may differ as a consequence (an aborted transaction block).
///
/// - "the server's reset cut the direct replies": PostgreSQL closes with client bytes unread
///   (after a FATAL, a Terminate followed by more bytes, or a length it refuses), which resets
///   the connection and may drop replies it had not yet transmitted (its last FATAL among
///   them); the direct stream is then a prefix of the proxy's, which delivers them all.
///
/// Conflict errors (40001) would be expected only with a concurrent writer in the same
/// database; sessions here run one at a time per database, so none is explained.
fn classify(plan: &Plan, direct: &Side, proxy: &Side) -> Verdict {
    if matches!(direct.end, SideEnd::Closed | SideEnd::NoConnect)
        || matches!(proxy.end, SideEnd::Closed | SideEnd::NoConnect)
    {
        return Verdict::NotCompared;
    }
    let parting = direct
        .toks
        .iter()
        .zip(&proxy.toks)
        .position(|(d, p)| d != p)
        .unwrap_or(direct.toks.len().min(proxy.toks.len()));
    let d = direct.toks.get(parting);
    let p = proxy.toks.get(parting);
    if d.is_none() && p.is_none() {
        return Verdict::Same;
    }
    if let Some(p) = p {
        if proxy_frame_fatal(p) && plan.framing_mutated() {
            return Verdict::Explained("proxy refuses the frame");
        }
        if p.t == "E:ERROR:0A000"
            && p.text
                .as_deref()
                .is_some_and(|m| POLICY_REFUSALS.iter().any(|(_, text)| m.contains(text)))
            && plan.items.iter().any(|i| match i {
                Item::Write { desc, .. } | Item::Split { desc, .. } => {
                    POLICY_REFUSALS.iter().any(|(sql, _)| desc.contains(sql))
                }
                _ => false,
            })
        {
            return Verdict::Explained("guard refusal");
        }
    }
    // PostgreSQL resets a connection it leaves with client bytes unread (after a FATAL, or a
    // Terminate followed by more bytes): replies not yet transmitted are lost, how many
    // depends on timing. The direct stream cut inside a message, and the proxy's agreeing up
    // to there, is that.
    let cut_inside = direct
        .toks
        .last()
        .is_some_and(|t| t.t.starts_with("partial:"))
        && is_prefix(&direct.toks[..direct.toks.len() - 1], &proxy.toks);
    // Cut between two messages: only where a reset is likely (a pipeline piled up unread, or
    // bytes the server ends the session on with more behind them), and not after a plain
    // half-close, where the proxy's extra replies are issue 24/K4. The server's last FATAL
    // lost to its reset is that too.
    // Bytes behind a Terminate always make it reset: what it sent last may be lost.
    let reset_likely = (plan.items.iter().any(|i| matches!(i, Item::Pause(_)))
        && (plan.ending != Ending::HalfClose || plan.framing_mutated()))
        || matches!(plan.ending, Ending::TerminateTrailing(_));
    // The server's own FATAL, and the replies just before it, lost to the reset (one
    // message, or, when the client sent bytes it ends the session on with more behind them,
    // any number).
    let server_fatal_last = proxy.toks.last().is_some_and(|t| {
        t.t.starts_with("E:FATAL") && !proxy_frame_fatal(t) && !t.t.ends_with(":08006")
    });
    // A message out of place during COPY FROM STDIN makes the server send an ERROR, then a
    // FATAL ("protocol synchronization was lost"): both lost to the reset when only errors
    // follow what the direct side read.
    let only_errors_lost = proxy
        .toks
        .get(direct.toks.len()..)
        .is_some_and(|tail| tail.iter().all(|t| t.t.starts_with("E:")));
    let fatal_lost = server_fatal_last
        && (proxy.toks.len() == direct.toks.len() + 1
            || plan.framing_mutated()
            || only_errors_lost);
    let cut_between = direct.end == SideEnd::Eof
        && direct.toks.len() < proxy.toks.len()
        && is_prefix(&direct.toks, &proxy.toks)
        && (reset_likely || fatal_lost);
    if cut_inside || cut_between {
        return Verdict::Explained("the server's reset cut the direct replies");
    }
    // The same reset on the proxy's server leg: the server ended the session with its own
    // FATAL while client bytes were still unread, and what it had not transmitted yet was
    // lost on the way to the proxy (which relays everything it received, then ends the session
    // as the server did). How much is lost depends on timing: a reader that paused lets the
    // server run further ahead through the proxy's buffers than directly.
    let direct_fatal_last = direct
        .toks
        .last()
        .is_some_and(|t| t.t.starts_with("E:FATAL"));
    let proxy_read = match proxy.toks.last() {
        Some(t) if t.t.starts_with("partial:") => &proxy.toks[..proxy.toks.len() - 1],
        _ => &proxy.toks[..],
    };
    let paused = plan.items.iter().any(|i| matches!(i, Item::Pause(_)));
    if proxy.end == SideEnd::Eof
        && direct_fatal_last
        && paused
        && proxy_read.len() < direct.toks.len()
        && is_prefix(proxy_read, &direct.toks)
    {
        return Verdict::Explained("the server's reset cut the proxy's replies");
    }
    // A side that hung read less than the other: that is a hang, counted as such, not a
    // difference, when what it read matches.
    if (p.is_none() && proxy.end == SideEnd::Hang) || (d.is_none() && direct.end == SideEnd::Hang) {
        return Verdict::Same;
    }
    let short = |t: Option<&Tok>| t.map_or("(end)".to_string(), |t| t.t.clone());
    let long = |t: Option<&Tok>| match t {
        None => "(end)".to_string(),
        Some(t) => match &t.text {
            Some(m) => format!("{} {m:?}", t.t),
            None => t.t.clone(),
        },
    };
    Verdict::Unexplained {
        kind: format!("direct {} / proxy {}", short(d), short(p)),
        detail: format!("at reply {parting}: direct {} / proxy {}", long(d), long(p)),
    }
}

/// At most 1500 characters of a long report line.
fn clip(s: String) -> String {
    match s.char_indices().nth(1500) {
        Some((at, _)) => format!("{} ...", &s[..at]),
        None => s,
    }
}

/// Tokens with runs collapsed (`D x200`), for reports.
fn compact(toks: &[Tok]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let mut j = i;
        while j < toks.len() && toks[j].t == toks[i].t {
            j += 1;
        }
        let t = if toks[i].t.starts_with("S:") {
            "S".to_string()
        } else {
            toks[i].t.clone()
        };
        if j - i > 1 {
            out.push(format!("{t} x{}", j - i));
        } else {
            out.push(t);
        }
        i = j;
    }
    out.join(" ")
}

// ---------------------------------------------------------------------------------------------
// The server around the sessions: leaked backends, crashes.

/// A superuser connection to the cluster's `postgres` database that reconnects after a crash.
struct Admin {
    addr: String,
    client: Option<tokio_postgres::Client>,
}

impl Admin {
    async fn client(&mut self) -> &tokio_postgres::Client {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
                return self.client.as_ref().unwrap();
            }
            let (host, port) = common::split_addr(&self.addr);
            let conninfo = format!("host={host} port={port} user=postgres dbname=postgres");
            match tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    self.client = Some(c);
                }
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "the cluster did not come back: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// The client backends of `db`: (pid, state, query).
    async fn backends(&mut self, db: &str) -> Option<Vec<(i32, String, String)>> {
        let rows = self
            .client()
            .await
            .query(
                "SELECT pid, coalesce(state, ''), coalesce(query, '') FROM pg_stat_activity \
                 WHERE datname = $1 AND backend_type = 'client backend'",
                &[&db],
            )
            .await
            .ok()?;
        Some(
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect(),
        )
    }

    /// None when no backend of `db` is left within [`LEAK_PATIENCE`]; otherwise what is left
    /// (terminated then, so that the next session starts clean).
    async fn leak(&mut self, db: &str) -> Option<String> {
        let deadline = Instant::now() + LEAK_PATIENCE;
        loop {
            let Some(left) = self.backends(db).await else {
                // The server went away (a crash): the crash check skips the session.
                return None;
            };
            if left.is_empty() {
                return None;
            }
            if Instant::now() > deadline {
                let desc = left
                    .iter()
                    .map(|(pid, state, q)| format!("pid {pid} {state} {q:?}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                for (pid, _, _) in &left {
                    let _ = self
                        .client()
                        .await
                        .execute("SELECT pg_terminate_backend($1)", &[pid])
                        .await;
                }
                return Some(desc);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Counts the server's crash restarts in its log ("terminating any other active server
/// processes" follows every backend crash).
struct CrashWatch {
    log: std::path::PathBuf,
    offset: u64,
    crashes: usize,
}

impl CrashWatch {
    fn poll(&mut self) -> usize {
        use std::io::{Read, Seek, SeekFrom};
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let mut text = Vec::new();
            if f.seek(SeekFrom::Start(self.offset)).is_ok() && f.read_to_end(&mut text).is_ok() {
                // Only whole lines: a line being written is read next time.
                let upto = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                let lines = String::from_utf8_lossy(&text[..upto]);
                self.crashes += lines
                    .matches("terminating any other active server processes")
                    .count();
                self.offset += upto as u64;
            }
        }
        self.crashes
    }
}

// ---------------------------------------------------------------------------------------------
// The campaign.

#[derive(Debug)]
struct Outcome {
    plan: Plan,
    direct: Side,
    proxy: Side,
    verdict: Verdict,
    leak_direct: Option<String>,
    leak_proxy: Option<String>,
    server_fault: bool,
    /// Whether the client through the proxy read the proxy's FATAL for a refused frame.
    proxy_refusal_seen: bool,
    facts: Facts,
    /// [`Outcome::label`], [`known_issue`] and [`Outcome::unknown_failure`], kept when the
    /// replies and the plan are dropped.
    cached: Option<(Option<String>, Option<&'static str>, bool)>,
    /// [`Outcome::report`] of a failing session kept for the summary, its replies dropped.
    kept_report: Option<String>,
}

/// What the summary needs of a session's plan (the plan itself is dropped unless it failed).
#[derive(Debug, Clone, Copy)]
struct Facts {
    messages: usize,
    startup_refused: bool,
    certain: Option<Refusal>,
    /// A normal login and a framing mutation: the proxy may refuse one frame.
    possible: bool,
}

impl Outcome {
    fn proxy_only_hang(&self) -> bool {
        self.proxy.end == SideEnd::Hang && self.direct.end != SideEnd::Hang
    }

    fn direct_only_hang(&self) -> bool {
        self.direct.end == SideEnd::Hang && self.proxy.end != SideEnd::Hang
    }

    /// What is wrong with the proxy in this session, if anything (one class per session).
    fn failure(&self) -> Option<String> {
        if self.server_fault {
            return None;
        }
        if self.leak_proxy.is_some() {
            return Some("leaked backend (proxy)".into());
        }
        if self.proxy_only_hang() {
            return Some("proxy-only hang".into());
        }
        if self.proxy.end == SideEnd::NoConnect {
            return Some("proxy refused a connection".into());
        }
        if let Verdict::Unexplained { kind, .. } = &self.verdict {
            return Some(format!("reply difference: {kind}"));
        }
        None
    }

    /// The failure's label: its known issue, or what is wrong.
    fn label(&self) -> Option<String> {
        if let Some((label, _, _)) = &self.cached {
            return label.clone();
        }
        known_issue(self)
            .map(str::to_string)
            .or_else(|| self.failure())
    }

    /// A failure that is not a known issue.
    fn unknown_failure(&self) -> bool {
        if let Some((_, _, unknown)) = self.cached {
            return unknown;
        }
        self.failure().is_some() && known_issue(self).is_none()
    }

    fn known(&self) -> Option<&'static str> {
        match self.cached {
            Some((_, known, _)) => known,
            None => known_issue(self),
        }
    }

    fn report(&self) -> String {
        if let Some(report) = &self.kept_report {
            return report.clone();
        }
        format!(
            "session {}: {}\n    direct ({:?}, {} ms): {}\n    proxy  ({:?}, {} ms): {}\n    verdict {:?}{}{}",
            self.plan.index,
            self.plan.describe(),
            self.direct.end,
            self.direct.elapsed.as_millis(),
            clip(compact(&self.direct.toks)),
            self.proxy.end,
            self.proxy.elapsed.as_millis(),
            clip(compact(&self.proxy.toks)),
            self.verdict,
            self.leak_direct
                .as_ref()
                .map(|l| format!("\n    left directly: {l}"))
                .unwrap_or_default(),
            self.leak_proxy
                .as_ref()
                .map(|l| format!("\n    left through the proxy: {l}"))
                .unwrap_or_default(),
        )
    }
}

/// Known proxy bugs this fuzzer found, tracked as issue 24: each is recognised by what the
/// session sent and what came back. A session whose only failure is one of these is counted
/// and listed under its label, not asserted; any other failure fails the test. Every label
/// has a minimal reproduction in issue 24 (and the run prints one, shrunk, per label).
const KNOWN_ISSUES: &[(&str, &str)] = &[
    (
        "issue 24/K1 pipelined login",
        "messages sent behind the startup packet, before the login ended: the login's \
         ReadyForQuery arrives late, replies of the proxy's own catalog queries reach the \
         client, the client's replies are lost or shifted, and statements PostgreSQL would skip \
         after an error run",
    ),
    (
        "issue 24/K2 half-close before login",
        "a client that half-closes before its login ended gets nothing (PostgreSQL logs it in \
         and answers everything sent)",
    ),
    (
        "issue 24/K4 replies flushed after a half-close",
        "a client that half-closes mid extended batch (no Sync) reads replies PostgreSQL never \
         sends: the proxy's Flush on client EOF makes the server answer, and they are relayed",
    ),
    (
        "issue 24/K5 startup refusal codes",
        "refused startups answer FATAL 08P01 where PostgreSQL says 28000 (no user), 0A000 \
         (unsupported protocol; for 2.0 in the pre-3.0 format) or refuses a startup pipelined \
         behind an SSLRequest (08P01 \"received unencrypted data after SSL request\")",
    ),
    (
        "issue 24/K8 malformed frame run by the guard",
        "a Query (or Parse) frame with bytes after the SQL's terminating NUL (or cut short) is \
         refused by PostgreSQL (08P01 invalid message format), but a guarded one is rewritten \
         and run (or refused with 0A000) by the proxy, which then waits on the rest of the \
         stream",
    ),
    (
        "issue 24/K10 COPY FROM STDIN ended by a half-close",
        "a client that half-closes during COPY FROM STDIN reads ERROR 08P01 \"unexpected \
         message type 0x58 during COPY from stdin\" (the proxy's Terminate) where PostgreSQL \
         reports 08006 \"unexpected EOF on client connection with an open transaction\"",
    ),
    (
        "issue 24/K11 per-type length limits",
        "PostgreSQL closes the connection (silently, a COMMERROR) when a message other than \
         Query, Parse, Bind, FunctionCall or CopyData claims more than 10000 bytes; the proxy \
         accepts up to max_message_size and waits for bytes that never come",
    ),
    (
        "issue 24/K12 startup packet limit",
        "PostgreSQL takes a startup packet of up to 10004 bytes (10000 after the length \
         field); the proxy closes on anything above 10000 without a word",
    ),
    (
        "issue 24/K13 half-close after a held Query and a Parse",
        "extended messages without Sync, a Query the proxy holds for their replies, then a \
         Parse of a guarded statement, and the client half-closes: the proxy never ends the \
         session, and its backend stays (active, the Parse's statement) after the client left",
    ),
    (
        "issue 24/K9 the proxy's 08006 at the server's FATAL",
        "when the server ends the session with its own FATAL and the connection is reset (or \
         the proxy's next write fails), the client gets the proxy's FATAL 08006 \"lost the \
         upstream server\" after the server's FATAL, or instead of the replies and FATAL the \
         server sent last",
    ),
    (
        "issue 24/K14 refusal written inside a message",
        "the proxy's FATAL for a refused frame is written after a server message it sent only \
         in part: the client reads a corrupt stream (and the replies still buffered are lost)",
    ),
];

fn known(label: &str) -> &'static str {
    KNOWN_ISSUES
        .iter()
        .find(|(l, _)| l.contains(&format!("/{label} ")))
        .map(|(l, _)| *l)
        .expect("a known issue label")
}

fn is_prefix(short: &[Tok], long: &[Tok]) -> bool {
    short.len() <= long.len() && short == &long[..short.len()]
}

/// The known issue (see [`KNOWN_ISSUES`]) a failing session shows, if it shows one.
fn known_issue(o: &Outcome) -> Option<&'static str> {
    o.failure()?;
    let plan = &o.plan;
    let (d, p) = (&o.direct.toks, &o.proxy.toks);
    let descs: Vec<&str> = plan
        .items
        .iter()
        .filter_map(|i| match i {
            Item::Write { desc, .. } | Item::Split { desc, .. } => Some(desc.as_str()),
            _ => None,
        })
        .collect();
    let pipelined =
        plan.startup().logs_in() && !plan.items.iter().any(|i| matches!(i, Item::WaitLogin));
    let leak = o.leak_proxy.is_some();
    let difference = matches!(o.verdict, Verdict::Unexplained { .. });
    let waits_login = plan.items.iter().any(|i| matches!(i, Item::WaitLogin));
    if !waits_login
        && plan.ending == Ending::HalfClose
        && p.iter().all(|t| t.t.starts_with("ssl:"))
        && d.len() > p.len()
    {
        return Some(known("K2"));
    }
    if matches!(plan.startup(), Startup::Padded(t) if t > 10_000)
        && p.is_empty()
        && d.first().is_some_and(|t| t.t == "R0")
    {
        return Some(known("K12"));
    }
    if leak
        && plan.ending == Ending::HalfClose
        && o.proxy_only_hang()
        && descs.iter().any(|d| d.starts_with("P("))
    {
        return Some(known("K13"));
    }
    if leak {
        return None;
    }
    fn first(toks: &[Tok], i: usize) -> &str {
        toks.get(i).map_or("", |t| t.t.as_str())
    }
    if difference
        && ((matches!(first(d, 0), "E:FATAL:0A000" | "E:FATAL:28000" | "partial:E")
            && first(p, 0) == "E:FATAL:08P01")
            || (plan.startup() == Startup::SslPipelined
                && first(d, 1) == "E:FATAL:08P01"
                && first(p, 1) == "R0"))
    {
        return Some(known("K5"));
    }
    if difference
        && plan.ending == Ending::HalfClose
        && d.iter().zip(p.iter()).any(|(d, p)| {
            d.t == "E:ERROR:08006"
                && p.t == "E:ERROR:08P01"
                && p.text
                    .as_deref()
                    .is_some_and(|m| m.starts_with("unexpected message type 0x58 during COPY"))
        })
    {
        return Some(known("K10"));
    }
    if let Some(last) = p.last()
        && last.t == "E:FATAL:08006"
        && last
            .text
            .as_deref()
            .is_some_and(|m| m.starts_with("lost the upstream server"))
        && d.last().is_some_and(|t| t.t.starts_with("E:FATAL"))
        && is_prefix(&p[..p.len() - 1], d)
    {
        return Some(known("K9"));
    }
    if p.iter().any(|t| {
        t.t.starts_with("partial:")
            && t.text.as_deref().is_some_and(|m| {
                m.contains("exceeds max_message_size") || m.contains("invalid message: type")
            })
    }) {
        return Some(known("K14"));
    }
    if plan.ending == Ending::HalfClose
        && o.direct.end == SideEnd::Eof
        && p.len() > d.len()
        && is_prefix(d, p)
        && p[d.len()..]
            .iter()
            .all(|t| !t.t.starts_with('Z') && !t.t.starts_with("E:FATAL"))
    {
        return Some(known("K4"));
    }
    let malformed_query = descs.iter().any(|d| {
        (d.starts_with("Q(") || d.starts_with("P") || d.starts_with("B("))
            && d.contains("invoice")
            && (d.contains("[Truncated") || d.contains("[OffByOne"))
    });
    if malformed_query
        && d.iter()
            .any(|t| t.t == "E:ERROR:08P01" && t.text.as_deref() == Some("invalid message format"))
    {
        return Some(known("K8"));
    }
    // After a guard refusal (explained) the streams differ before the hang; the hang is still
    // the one of K11.
    let refused = o.verdict == Verdict::Explained("guard refusal");
    if o.proxy_only_hang()
        && plan.framing_mutated()
        && (p == d || refused)
        && !d.last().is_some_and(|t| t.t.starts_with("E:FATAL"))
    {
        return Some(known("K11"));
    }
    if pipelined {
        return Some(known("K1"));
    }
    None
}

struct Env {
    cluster_addr: String,
    proxy_addr: String,
    limit: Duration,
    crashes: Mutex<CrashWatch>,
}

impl Env {
    fn crashes(&self) -> usize {
        self.crashes.lock().unwrap().poll()
    }
}

/// Runs one session directly, then through the proxy, checking for leaked backends after
/// each side.
async fn run_session(env: &Env, admin: &mut Admin, db: &str, plan: Plan) -> Outcome {
    let crashes_before = env.crashes();
    let direct = run_side(&env.cluster_addr, db, &plan, env.limit).await;
    let leak_direct = admin.leak(db).await;
    let proxy = run_side(&env.proxy_addr, db, &plan, env.limit).await;
    let leak_proxy = admin.leak(db).await;
    let mut crashed = env.crashes() != crashes_before;
    let suspicious = |s: &Side| {
        s.toks
            .iter()
            .any(|t| matches!(t.t.as_str(), "E:FATAL:57P02" | "E:FATAL:57P03"))
    };
    if !crashed && (suspicious(&direct) || suspicious(&proxy)) {
        // The postmaster may not have written its log line yet.
        tokio::time::sleep(Duration::from_millis(500)).await;
        crashed = env.crashes() != crashes_before;
    }
    if crashed {
        // Wait for the restarted server before going on.
        admin.client = None;
        admin.client().await;
    }
    let verdict = classify(&plan, &direct, &proxy);
    let proxy_refusal_seen = proxy.toks.iter().any(proxy_frame_fatal);
    let facts = Facts {
        messages: plan.messages(),
        startup_refused: plan.startup().refused_by_proxy(),
        certain: plan.certain_refusal(),
        possible: plan.startup().logs_in() && plan.framing_mutated(),
    };
    Outcome {
        facts,
        plan,
        direct,
        proxy,
        verdict,
        leak_direct,
        leak_proxy,
        server_fault: crashed,
        proxy_refusal_seen,
        cached: None,
        kept_report: None,
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn status_kb(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
}

async fn client_errors(metrics: std::net::SocketAddr) -> BTreeMap<&'static str, f64> {
    let (_, body) = http_get(metrics, "/metrics").await;
    let mut out = BTreeMap::new();
    for reason in ["protocol", "message_too_large", "login_timeout", "tls"] {
        out.insert(
            reason,
            sample(
                &body,
                &format!("optlock_client_errors_total{{reason=\"{reason}\"}}"),
            ),
        );
    }
    out.insert("sessions_active", sample(&body, "optlock_sessions_active"));
    out
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Shrinks a failing session: drops items one at a time (and tries simpler endings) while the
/// same failure stays. Returns the smallest plan found and its outcome.
async fn minimize(
    env: &Env,
    admin: &mut Admin,
    db: &str,
    failing: &Outcome,
    budget: Duration,
) -> Option<Outcome> {
    let want = failing.label()?;
    let same = |o: &Outcome| o.label().as_ref() == Some(&want);
    let deadline = Instant::now() + budget;
    let mut best = run_session(env, admin, db, failing.plan.clone()).await;
    if !same(&best) {
        return None;
    }
    loop {
        let mut shrunk = false;
        let mut i = 0;
        while i < best.plan.items.len() && Instant::now() < deadline {
            if matches!(best.plan.items[i], Item::Startup(_)) {
                i += 1;
                continue;
            }
            let mut plan = best.plan.clone();
            plan.items.remove(i);
            let o = run_session(env, admin, db, plan).await;
            if same(&o) {
                best = o;
                shrunk = true;
            } else {
                i += 1;
            }
        }
        for ending in [Ending::Terminate, Ending::HalfClose, Ending::Close] {
            if best.plan.ending == ending || Instant::now() >= deadline {
                continue;
            }
            let mut plan = best.plan.clone();
            plan.ending = ending;
            let o = run_session(env, admin, db, plan).await;
            if same(&o) {
                best = o;
                shrunk = true;
                break;
            }
        }
        if !shrunk || Instant::now() >= deadline {
            return Some(best);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn differential_wire_fuzz() {
    if !Cluster::available() {
        eprintln!("wire_fuzz: skipped, no PostgreSQL server binaries for a throwaway cluster");
        return;
    }
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));

    let sessions = env_num("OPTLOCK_FUZZ_SESSIONS", 150) as usize;
    let seed = env_num("OPTLOCK_FUZZ_SEED", 0x5eed_2024);
    let workers = env_num("OPTLOCK_FUZZ_WORKERS", 4).max(1) as usize;
    let limit = Duration::from_millis(env_num("OPTLOCK_FUZZ_TIMEOUT_MS", 5000));
    let verbose = env_num("OPTLOCK_FUZZ_VERBOSE", 0) != 0;
    let list = env_num("OPTLOCK_FUZZ_LIST", 0) != 0;
    let minimize_n = env_num("OPTLOCK_FUZZ_MINIMIZE", 2) as usize;
    let minimize_known = env_num("OPTLOCK_FUZZ_MINIMIZE_KNOWN", 0) != 0;
    let only: Option<Vec<usize>> = std::env::var("OPTLOCK_FUZZ_ONLY")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect());
    let indices: Vec<usize> = only.clone().unwrap_or_else(|| (0..sessions).collect());
    eprintln!(
        "wire_fuzz: seed {seed} ({seed:#x}), {} sessions, {workers} workers, timeout {limit:?} \
         (replay: OPTLOCK_FUZZ_SEED={seed} OPTLOCK_FUZZ_ONLY=<session>)",
        indices.len()
    );

    let cluster = Cluster::start_with(
        &["host all all 127.0.0.1/32 trust"],
        &["max_connections = 100"],
    );
    let cluster_addr = cluster.addr();
    let mut dbs = Vec::new();
    for _ in 0..workers {
        let db = TestDb::on(&cluster_addr, "fuzz").await;
        connect_direct_to(&cluster_addr, &db.name)
            .await
            .batch_execute(&format!(
                "{}\nCREATE TABLE audit (n int);",
                invoice_table(10)
            ))
            .await
            .unwrap();
        dbs.push(db);
    }
    let mut config = Config::parse(
        &format!("metrics_listen = \"127.0.0.1:0\"\nmax_message_size = {MAX_MESSAGE}\n{INVOICE}"),
        "wire_fuzz.toml",
    )
    .unwrap();
    config.upstream = cluster_addr.clone();
    let proxy = Proxy::start(config).await;
    let metrics = proxy.metrics.expect("metrics listener");
    let errors_before = client_errors(metrics).await;
    let rss_before = status_kb("VmRSS:");

    let env = Arc::new(Env {
        cluster_addr: cluster_addr.clone(),
        proxy_addr: proxy.addr.to_string(),
        limit,
        crashes: Mutex::new(CrashWatch {
            log: cluster.socket_dir().join("server.log"),
            offset: 0,
            crashes: 0,
        }),
    });
    env.crashes();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let indices = Arc::new(indices);
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let rss_peak = Arc::new(Mutex::new(rss_before.unwrap_or(0)));
    let kept = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let mut tasks = Vec::new();
    for db in &dbs {
        let (env, next, indices, outcomes, rss_peak, kept) = (
            env.clone(),
            next.clone(),
            indices.clone(),
            outcomes.clone(),
            rss_peak.clone(),
            kept.clone(),
        );
        let db = db.name.clone();
        tasks.push(tokio::spawn(async move {
            let mut admin = Admin {
                addr: env.cluster_addr.clone(),
                client: None,
            };
            loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(&index) = indices.get(k) else {
                    break;
                };
                let plan = generate(seed, index);
                let mut o = run_session(&env, &mut admin, &db, plan).await;
                if verbose || o.unknown_failure() {
                    eprintln!("{}", o.report());
                }
                let label = o.label();
                if list && let Some(label) = &label {
                    eprintln!("wire_fuzz failing: session {index}: {label}");
                }
                o.cached = Some((label.clone(), known_issue(&o), o.unknown_failure()));
                // Only the first few failing sessions of each kind keep their report and plan
                // (for the summary and the shrinking), and none its replies: a long campaign
                // would otherwise hold hundreds of megabytes of them, in the process whose
                // memory is measured (the proxy's).
                let keep = label.is_some_and(|l| {
                    let mut kept = kept.lock().unwrap();
                    let n = kept.entry(l).or_insert(0usize);
                    *n += 1;
                    *n <= 5
                });
                if keep {
                    o.kept_report = Some(o.report());
                } else {
                    o.plan.items = Vec::new();
                }
                o.direct.toks = Vec::new();
                o.proxy.toks = Vec::new();
                if k % 50 == 0 {
                    if let Some(rss) = status_kb("VmRSS:") {
                        let mut peak = rss_peak.lock().unwrap();
                        *peak = (*peak).max(rss);
                    }
                }
                if k % 1000 == 999 {
                    eprintln!(
                        "wire_fuzz: {} sessions in {:.0} s",
                        k + 1,
                        started.elapsed().as_secs_f64()
                    );
                }
                outcomes.lock().unwrap().push(o);
            }
        }));
    }
    for t in tasks {
        t.await.expect("a fuzz worker panicked");
    }
    let elapsed = started.elapsed();
    let mut outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    outcomes.sort_by_key(|o| o.plan.index);

    // The proxy's sessions drain, then its memory and counters are read.
    let mut errors_after = client_errors(metrics).await;
    for _ in 0..100 {
        if errors_after["sessions_active"] == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        errors_after = client_errors(metrics).await;
    }
    let rss_after = status_kb("VmRSS:");
    let rss_hwm = status_kb("VmHWM:");

    // Shrink the first failing session of each kind to a minimal message sequence.
    let mut admin = Admin {
        addr: cluster_addr.clone(),
        client: None,
    };
    let mut minimized = Vec::new();
    let mut seen_kinds = Vec::new();
    for o in &outcomes {
        if minimized.len() >= minimize_n {
            break;
        }
        let Some(kind) = o.label() else { continue };
        if (!minimize_known && !o.unknown_failure()) || o.plan.items.is_empty() {
            continue;
        }
        if seen_kinds.contains(&kind) {
            continue;
        }
        seen_kinds.push(kind.clone());
        if let Some(m) = minimize(&env, &mut admin, &dbs[0].name, o, Duration::from_secs(60)).await
        {
            minimized.push((kind, m));
        }
    }

    // The summary.
    let run: Vec<&Outcome> = outcomes.iter().filter(|o| !o.server_fault).collect();
    let skipped = outcomes.len() - run.len();
    let messages: usize = outcomes.iter().map(|o| o.facts.messages).sum();
    let hangs_direct = run.iter().filter(|o| o.direct.end == SideEnd::Hang).count();
    let hangs_proxy = run.iter().filter(|o| o.proxy.end == SideEnd::Hang).count();
    let proxy_only_all = run.iter().filter(|o| o.proxy_only_hang()).count();
    let proxy_only: Vec<&&Outcome> = run
        .iter()
        .filter(|o| o.proxy_only_hang() && o.known().is_none())
        .collect();
    let direct_only = run.iter().filter(|o| o.direct_only_hang()).count();
    let leaks_direct = run.iter().filter(|o| o.leak_direct.is_some()).count();
    let leaks_proxy_all = run.iter().filter(|o| o.leak_proxy.is_some()).count();
    let leaks_proxy: Vec<&&Outcome> = run
        .iter()
        .filter(|o| o.leak_proxy.is_some() && o.known().is_none())
        .collect();
    let no_connect = run
        .iter()
        .filter(|o| o.proxy.end == SideEnd::NoConnect)
        .count();
    let compared = run
        .iter()
        .filter(|o| o.verdict != Verdict::NotCompared)
        .count();
    let mut explained: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &run {
        if let Verdict::Explained(why) = o.verdict {
            *explained.entry(why).or_default() += 1;
        }
    }
    let unexplained_all = run
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Unexplained { .. }))
        .count();
    let unexplained: Vec<&&Outcome> = run
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Unexplained { .. }) && o.known().is_none())
        .collect();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for o in &run {
        if let Some(f) = o.label() {
            *kinds.entry(f).or_default() += 1;
        }
    }
    let known_total: usize = run.iter().filter(|o| o.known().is_some()).count();

    // What the counters must show. Exact: every startup the proxy refuses counts `protocol`
    // once. Certain: a bad-length (or oversize) frame after valid messages, read by a client
    // that stays, counts `protocol` (or `message_too_large`) once. At most: one refusal per
    // session with a framing mutation (a refused frame ends the session).
    let startup_refused = outcomes.iter().filter(|o| o.facts.startup_refused).count() as f64;
    let certain = |r: Refusal| {
        outcomes
            .iter()
            .filter(|o| o.facts.certain == Some(r))
            .count() as f64
    };
    let certain_protocol = certain(Refusal::Protocol);
    let certain_too_large = certain(Refusal::TooLarge);
    let certain_either = certain(Refusal::Either);
    let possible = outcomes.iter().filter(|o| o.facts.possible).count() as f64;
    let seen_fatal = run.iter().filter(|o| o.proxy_refusal_seen).count();
    let delta = |k: &str| errors_after[k] - errors_before[k];
    let (protocol, too_large) = (delta("protocol"), delta("message_too_large"));
    let panics = PANICS.load(Ordering::SeqCst);

    let kb = |v: Option<u64>| v.map_or("?".to_string(), |v| format!("{v} kB"));
    eprintln!(
        "wire_fuzz summary: seed {seed:#x}; sessions {} ({} run, {skipped} skipped for a server \
         crash), messages {messages}, {:.0} s; hangs direct {hangs_direct}, proxy {hangs_proxy}, \
         proxy-only {proxy_only_all} ({} not a known issue), direct-only {direct_only}; leaked \
         backends direct {leaks_direct}, proxy {leaks_proxy_all} ({} not a known issue); proxy \
         connect failures {no_connect}; compared {compared}, explained differences \
         {explained:?}, unexplained {unexplained_all} ({} not a known issue); sessions failing \
         only by a known issue (issue 24) {known_total}; proxy panics {panics}; RSS of the test process (the proxy runs in it) before {}, peak {} (sampled; \
         VmHWM {}), after {}; client_errors protocol {protocol} (startup refusals {startup_refused} \
         + certain frame refusals {certain_protocol}, at most {}), message_too_large {too_large} \
         (certain {certain_too_large}), login_timeout {}, tls {}; proxy FATALs for refused frames \
         seen by clients {seen_fatal}; sessions active after {}",
        outcomes.len(),
        run.len(),
        elapsed.as_secs_f64(),
        proxy_only.len(),
        leaks_proxy.len(),
        unexplained.len(),
        kb(rss_before),
        kb(Some(*rss_peak.lock().unwrap())),
        kb(rss_hwm),
        kb(rss_after),
        startup_refused + possible,
        delta("login_timeout"),
        delta("tls"),
        errors_after["sessions_active"],
    );
    if !kinds.is_empty() {
        eprintln!("wire_fuzz failures by kind (known issues by their label):");
        for (k, n) in &kinds {
            eprintln!("  {n:6}  {k}");
        }
        for (label, what) in KNOWN_ISSUES {
            if kinds.contains_key(*label) {
                eprintln!("  {label}: {what}");
            }
        }
    }
    for o in unexplained.iter().take(5) {
        eprintln!("wire_fuzz difference: {}", o.report());
    }
    for (kind, m) in &minimized {
        eprintln!(
            "wire_fuzz minimal reproduction of \"{kind}\": {}",
            m.report()
        );
    }

    assert_eq!(panics, 0, "the proxy (or the test) panicked");
    assert!(
        !proxy.task.is_finished(),
        "the proxy's server task ended during the campaign"
    );
    assert_eq!(no_connect, 0, "the proxy refused connections");
    assert!(
        proxy_only.is_empty(),
        "{} proxy-only hangs (not a known issue), first: {}",
        proxy_only.len(),
        proxy_only[0].report()
    );
    assert!(
        leaks_proxy.is_empty(),
        "{} backends left behind by the proxy (not a known issue), first: {}",
        leaks_proxy.len(),
        leaks_proxy[0].report()
    );
    assert!(
        unexplained.is_empty(),
        "{} unexplained reply differences (not a known issue), first: {}",
        unexplained.len(),
        unexplained[0].report()
    );
    assert_eq!(errors_after["sessions_active"], 0.0, "proxy sessions left");
    assert!(
        protocol >= startup_refused + certain_protocol && protocol <= startup_refused + possible,
        "client_errors protocol {protocol}: expected between {} and {}",
        startup_refused + certain_protocol,
        startup_refused + possible
    );
    assert!(
        too_large >= certain_too_large && protocol + too_large <= startup_refused + possible,
        "client_errors message_too_large {too_large}: expected at least {certain_too_large}"
    );
    assert!(
        protocol + too_large
            >= startup_refused + certain_protocol + certain_too_large + certain_either,
        "client_errors protocol {protocol} + message_too_large {too_large}: expected at least {}",
        startup_refused + certain_protocol + certain_too_large + certain_either
    );
    assert!(
        (seen_fatal as f64) <= protocol + too_large,
        "more refusals seen by clients ({seen_fatal}) than counted"
    );
    assert_eq!(delta("login_timeout"), 0.0);
    assert_eq!(delta("tls"), 0.0);
    drop(dbs);
}
