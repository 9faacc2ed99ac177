//! A script's implicit transaction block (see `engine::guarded::block`): the queries the
//! engine sends for the client's transaction control, and what the client gets back, with
//! the test playing a server that answers each query as PostgreSQL would in that state.

use super::*;

const WRITE: &str = "UPDATE item SET qty = 1 WHERE id = 1 AND version = 3";

fn notice(code: &str, text: &str) -> Vec<u8> {
    let body = [
        cstr("SWARNING"),
        cstr(&format!("C{code}")),
        cstr(&format!("M{text}")),
        vec![0],
    ]
    .concat();
    message(be::NOTICE_RESPONSE, &body)
}

/// Runs `text` through the engine, answering each query it sends with `answer`; returns the
/// queries (their first word for the guarded write) and what the client got.
fn run(text: &str, mut answer: impl FnMut(&str) -> Vec<u8>) -> (Vec<String>, BytesMut) {
    let mut d = Driver::new(GUARDED);
    d.log_in();
    d.client(&query(text));
    let mut sent = Vec::new();
    let mut to_client = BytesMut::new();
    for _ in 0..16 {
        let queries = {
            let bytes = d.sent();
            d.sent_tags_pending(&bytes)
        };
        for q in queries {
            let q = q.trim_end_matches('\0').to_string();
            let reply = answer(&q);
            sent.push(if q.starts_with("UPDATE") {
                "UPDATE".to_string()
            } else {
                q
            });
            d.server(&reply);
            to_client.extend_from_slice(&d.delivered());
        }
        if tags(&to_client).last() == Some(&'Z') && d.engine.wants_client_input() {
            return (sent, to_client);
        }
    }
    panic!("no end: sent {sent:?}, client got {:?}", tags(&to_client));
}

fn codes(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        let body = &rest[5..1 + len];
        out.push(match rest[0] {
            b'C' => String::from_utf8_lossy(be::command_tag(body)).into_owned(),
            b'N' | b'E' => format!(
                "{} {}",
                rest[0] as char,
                String::from_utf8_lossy(be::error_field(body, b'C').unwrap_or_default())
            ),
            b'Z' => format!("Z {}", body[0] as char),
            t => (t as char).to_string(),
        });
        rest = &rest[1 + len..];
    }
    out
}

#[test]
fn rollback_in_the_proxy_s_block_rolls_it_back_first() {
    let (sent, got) = run(&format!("{WRITE}; ROLLBACK"), |q| match q {
        "BEGIN" => [complete("BEGIN"), ready(b'T')].concat(),
        "ROLLBACK" => [complete("ROLLBACK"), ready(b'I')].concat(),
        _ => [complete("UPDATE 1"), ready(b'T')].concat(),
    });
    assert_eq!(sent, ["BEGIN", "UPDATE", "ROLLBACK", "ROLLBACK"]);
    assert_eq!(codes(&got), ["UPDATE 1", "ROLLBACK", "Z I"]);
}

#[test]
fn commit_in_the_proxy_s_block_waits_for_the_implicit_block_s_warning() {
    let (sent, got) = run(&format!("{WRITE}; COMMIT"), |q| match q {
        "BEGIN" => [complete("BEGIN"), ready(b'T')].concat(),
        // A deferred trigger's notice, then the commit.
        "COMMIT" => [notice("00000", "checked"), complete("COMMIT"), ready(b'I')].concat(),
        "COMMIT; SELECT WHERE false" => [
            notice("25P01", "there is no transaction in progress"),
            complete("COMMIT"),
            message(b'T', &[0, 0]),
            complete("SELECT 0"),
            ready(b'I'),
        ]
        .concat(),
        _ => [complete("UPDATE 1"), ready(b'T')].concat(),
    });
    assert_eq!(
        sent,
        ["BEGIN", "UPDATE", "COMMIT", "COMMIT; SELECT WHERE false"]
    );
    assert_eq!(
        codes(&got),
        ["UPDATE 1", "N 25P01", "N 00000", "COMMIT", "Z I"]
    );
}

#[test]
fn a_failed_commit_comes_after_the_warning_and_ends_the_script() {
    let (sent, got) = run(&format!("{WRITE}; COMMIT; SELECT 1"), |q| match q {
        "BEGIN" => [complete("BEGIN"), ready(b'T')].concat(),
        "COMMIT" => {
            let mut e = BytesMut::new();
            be::write_error(&mut e, "ERROR", "23505", "duplicate key value");
            [e.to_vec(), ready(b'I')].concat()
        }
        "COMMIT; SELECT WHERE false" => [
            notice("25P01", "there is no transaction in progress"),
            complete("COMMIT"),
            complete("SELECT 0"),
            ready(b'I'),
        ]
        .concat(),
        _ => [complete("UPDATE 1"), ready(b'T')].concat(),
    });
    assert_eq!(
        sent,
        ["BEGIN", "UPDATE", "COMMIT", "COMMIT; SELECT WHERE false"]
    );
    assert_eq!(codes(&got), ["UPDATE 1", "N 25P01", "E 23505", "Z I"]);
}

#[test]
fn begin_in_the_proxy_s_block_hands_it_to_the_client() {
    let mut begins = 0;
    let (sent, got) = run(&format!("{WRITE}; BEGIN; SELECT 2"), |q| match q {
        "BEGIN"
            if {
                begins += 1;
                begins == 1
            } =>
        {
            [complete("BEGIN"), ready(b'T')].concat()
        }
        "BEGIN" => [
            notice("25001", "there is already a transaction in progress"),
            complete("BEGIN"),
            ready(b'T'),
        ]
        .concat(),
        "SELECT 2" => [complete("SELECT 1"), ready(b'T')].concat(),
        _ => [complete("UPDATE 1"), ready(b'T')].concat(),
    });
    // No COMMIT of the proxy's: the block is the client's now.
    assert_eq!(sent, ["BEGIN", "UPDATE", "BEGIN", "SELECT 2"]);
    assert_eq!(codes(&got), ["UPDATE 1", "BEGIN", "SELECT 1", "Z T"]);
}

#[test]
fn savepoints_run_where_the_server_fails_them_as_in_an_implicit_block() {
    let failing = "SAVEPOINT x\n;SELECT WHERE false";
    let (sent, got) = run(&format!("{WRITE}; SAVEPOINT x"), |q| match q {
        "BEGIN" => [complete("BEGIN"), ready(b'T')].concat(),
        "ROLLBACK" => [complete("ROLLBACK"), ready(b'I')].concat(),
        q if q == failing => {
            let mut e = BytesMut::new();
            be::write_error(&mut e, "ERROR", "25P01", "SAVEPOINT can only be used");
            [e.to_vec(), ready(b'I')].concat()
        }
        _ => [complete("UPDATE 1"), ready(b'T')].concat(),
    });
    assert_eq!(sent, ["BEGIN", "UPDATE", "ROLLBACK", failing]);
    assert_eq!(codes(&got), ["UPDATE 1", "E 25P01", "Z I"]);
}

#[test]
fn inside_the_client_s_block_transaction_control_goes_as_written() {
    let (sent, got) = run(
        &format!("BEGIN; {WRITE}; SAVEPOINT x; COMMIT"),
        |q| match q {
            "BEGIN" => [complete("BEGIN"), ready(b'T')].concat(),
            "SAVEPOINT x" => [complete("SAVEPOINT"), ready(b'T')].concat(),
            "COMMIT" => [complete("COMMIT"), ready(b'I')].concat(),
            _ => [complete("UPDATE 1"), ready(b'T')].concat(),
        },
    );
    assert_eq!(sent, ["BEGIN", "UPDATE", "SAVEPOINT x", "COMMIT"]);
    assert_eq!(
        codes(&got),
        ["BEGIN", "UPDATE 1", "SAVEPOINT", "COMMIT", "Z I"]
    );
}

#[test]
fn the_last_statement_s_tag_comes_after_the_block_committed() {
    let (sent, got) = run(&format!("{WRITE}; SELECT 1"), |q| match q {
        "BEGIN" => [complete("BEGIN"), ready(b'T')].concat(),
        "SELECT 1" => [complete("SELECT 1"), ready(b'T')].concat(),
        // A deferred trigger's notice at commit.
        "COMMIT" => [notice("00000", "checked"), complete("COMMIT"), ready(b'I')].concat(),
        _ => [complete("UPDATE 1"), ready(b'T')].concat(),
    });
    assert_eq!(sent, ["BEGIN", "UPDATE", "SELECT 1", "COMMIT"]);
    assert_eq!(codes(&got), ["UPDATE 1", "N 00000", "SELECT 1", "Z I"]);
}

#[test]
fn a_failed_commit_replaces_the_last_statement_s_tag() {
    let (_, got) = run(&format!("SELECT 1; SELECT 2; {WRITE}"), |q| match q {
        "BEGIN" => [complete("BEGIN"), ready(b'T')].concat(),
        "SELECT 1; SELECT 2" => [complete("SELECT 1"), complete("SELECT 1"), ready(b'T')].concat(),
        "COMMIT" => {
            let mut e = BytesMut::new();
            be::write_error(&mut e, "ERROR", "23505", "duplicate key value");
            [e.to_vec(), ready(b'I')].concat()
        }
        _ => [complete("UPDATE 1"), ready(b'T')].concat(),
    });
    assert_eq!(codes(&got), ["SELECT 1", "SELECT 1", "E 23505", "Z I"]);
}
