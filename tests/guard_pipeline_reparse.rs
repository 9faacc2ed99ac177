//! A `Bind` or `Describe` pipelined behind a `Parse` of the same name in an earlier batch, not
//! answered yet, reaches the statement that `Parse` leaves: the new one when it succeeds, the
//! one the server had when it fails (a named statement the server has stays; a failed `Parse`
//! of the unnamed statement leaves none). Through the proxy the client reads exactly what it
//! reads directly, although the proxy prepares reads of the guarded table with key and version
//! columns added: none of them shows, and none is hidden from a statement that has none.

mod common;
use common::Proxy;
use common::guards::*;
use common::wire::*;

/// One step of a script: bytes to send, then how many `ReadyForQuery` to read (0: read to the
/// end of the connection).
type Step = (Vec<u8>, usize);

async fn play(mut raw: Raw, steps: &[Step]) -> Vec<Vec<Reply>> {
    let mut out = Vec::new();
    for (bytes, readies) in steps {
        raw.send(bytes).await;
        if *readies == 0 {
            out.push(
                raw.read_to_end()
                    .await
                    .iter()
                    .filter_map(Msg::reply)
                    .collect(),
            );
            continue;
        }
        for _ in 0..*readies {
            out.push(raw.until_ready().await);
        }
    }
    out
}

/// Plays `steps` directly and through a proxy guarding `invoice`; returns both transcripts
/// after checking they are equal.
async fn same_through_proxy(prefix: &str, steps: &[Step]) -> Vec<Vec<Reply>> {
    let db = invoice_db(prefix, 3, AUDIT).await;
    let proxy = Proxy::with_guards(INVOICE).await;
    let direct = play(db.raw().await, steps).await;
    let proxied = play(proxy.raw(&db.name).await, steps).await;
    assert_eq!(direct, proxied, "direct, then through the proxy");
    direct
}

fn columns(batch: &[Reply]) -> Vec<usize> {
    batch
        .iter()
        .filter_map(|r| match r {
            Reply::RowDescription(n) => Some(*n),
            _ => None,
        })
        .collect()
}

const READ: &str = "SELECT * FROM invoice WHERE id = 1";

/// A named read of the guarded table, then a `Parse` of the same name that fails (the server
/// has it), then a `Describe` of it in the next batch, sent before the failure is read: the
/// description is the read's, without the proxy's columns.
#[tokio::test]
async fn describe_behind_a_failed_reparse_shows_the_statement_the_server_kept() {
    let t = same_through_proxy(
        "rp_describe",
        &[
            ([parse("s", READ, &[]), sync()].concat(), 1),
            (
                [
                    parse("s", "SELECT 1", &[]),
                    sync(),
                    describe(b'S', "s"),
                    sync(),
                ]
                .concat(),
                2,
            ),
        ],
    )
    .await;
    assert!(
        matches!(&t[1][0], Reply::Error(code, _) if code == "42P05"),
        "{t:?}"
    );
    assert_eq!(columns(&t[2]), vec![3], "{t:?}");
}

/// The `Bind` twin: a portal of the statement the server kept returns its rows (and its
/// description) without the proxy's columns.
#[tokio::test]
async fn bind_behind_a_failed_reparse_reaches_the_statement_the_server_kept() {
    let t = same_through_proxy(
        "rp_bind",
        &[
            ([parse("s", READ, &[]), sync()].concat(), 1),
            (
                [
                    parse("s", "SELECT 1", &[]),
                    sync(),
                    bind("", "s", &[], &[1]),
                    describe(b'P', ""),
                    execute("", 0),
                    sync(),
                    bind_text("", "s", &[]),
                    execute("", 0),
                    sync(),
                ]
                .concat(),
                3,
            ),
        ],
    )
    .await;
    assert!(
        matches!(&t[1][0], Reply::Error(code, _) if code == "42P05"),
        "{t:?}"
    );
    assert_eq!(columns(&t[2]), vec![3], "{t:?}");
    assert!(
        t[3].iter()
            .any(|r| matches!(r, Reply::DataRow(v) if v.len() == 3)),
        "{t:?}"
    );
}

/// The other way round: the server has a statement that reads nothing guarded, and a `Parse`
/// of its name for a read of the guarded table fails: the `Describe` and `Bind` behind it
/// reach the server's statement, whose columns the proxy leaves alone.
#[tokio::test]
async fn a_failed_reparse_as_a_guarded_read_leaves_the_plain_statement() {
    let t = same_through_proxy(
        "rp_plain",
        &[
            (
                [parse("s", "SELECT 1 AS one, 2 AS two", &[]), sync()].concat(),
                1,
            ),
            (
                [
                    parse("s", READ, &[]),
                    sync(),
                    describe(b'S', "s"),
                    bind_text("", "s", &[]),
                    execute("", 0),
                    sync(),
                ]
                .concat(),
                2,
            ),
        ],
    )
    .await;
    assert_eq!(columns(&t[2]), vec![2], "{t:?}");
}

/// A `Parse` of the name that succeeds (the statement was closed first) is what the messages
/// behind it reach, and so is the read prepared again under the unnamed statement after a
/// failed `Parse` of it left none.
#[tokio::test]
async fn messages_behind_a_reparse_that_succeeds_reach_the_new_statement() {
    let t = same_through_proxy(
        "rp_new",
        &[
            (
                [parse("s", READ, &[]), parse("", READ, &[]), sync()].concat(),
                1,
            ),
            (
                [
                    close(b'S', "s"),
                    parse("s", "SELECT 1", &[]),
                    sync(),
                    describe(b'S', "s"),
                    sync(),
                    parse("", "SELEC 1", &[]),
                    sync(),
                    describe(b'S', ""),
                    sync(),
                    parse("", READ, &[]),
                    sync(),
                    describe(b'S', ""),
                    sync(),
                ]
                .concat(),
                6,
            ),
        ],
    )
    .await;
    assert_eq!(columns(&t[2]), vec![1], "{t:?}");
    assert!(
        matches!(&t[3][0], Reply::Error(code, _) if code == "42601"),
        "{t:?}"
    );
    assert!(
        matches!(&t[4][0], Reply::Error(code, _) if code == "26000"),
        "{t:?}"
    );
    assert_eq!(columns(&t[6]), vec![3], "{t:?}");
}

/// The unnamed statement read the guarded table, a simple `Query` dropped it, and a new one
/// (an unguarded read) is described behind a `Sync`, with no `Sync` after it: its one column
/// shows, none hidden for the read an earlier `Parse` of the name prepared.
#[tokio::test]
async fn the_unnamed_statement_after_a_query_is_described_as_itself() {
    let t = same_through_proxy(
        "rp_unnamed",
        &[(
            [
                parse("", "SELECT * FROM invoice", &[]),
                bind_text("", "", &[]),
                describe(b'P', ""),
                execute("", 0),
                sync(),
                query("BEGIN"),
                parse("", "SELECT $1::int + 1", &[]),
                bind_text("", "", &["1"]),
                describe(b'P', ""),
                execute("", 0),
                sync(),
                describe(b'S', ""),
                describe(b'P', "nope"),
                terminate(),
            ]
            .concat(),
            0,
        )],
    )
    .await;
    assert_eq!(columns(&t[0]), vec![3, 1, 1], "{t:?}");
}

/// A `Parse` of the unnamed statement that the server skips (after an error earlier in its
/// batch) leaves the statement the server had; a `Parse` of the unnamed statement in a later
/// batch then replaces that one whatever the skipped `Parse` did: the `Bind` behind it reaches
/// the new statement, not the guarded write (a `DELETE` whose full form has two more
/// parameters) the skipped `Parse` would have left in place.
#[tokio::test]
async fn an_unnamed_parse_after_a_skipped_one_replaces_the_statement_it_left() {
    let pbe = |sql: &str, params: &[&str], describe_too: bool| {
        let mut m = [parse("", sql, &[]), bind_text("", "", params)].concat();
        if describe_too {
            m.extend(describe(b'P', ""));
        }
        [m, execute("", 0), sync()].concat()
    };
    let t = same_through_proxy(
        "rp_skipped",
        &[(
            [
                pbe("DELETE FROM invoice WHERE id = $1 + 100", &["11"], true),
                execute("", 1),
                pbe("INSERT INTO audit VALUES ($1)", &["11"], false),
                pbe("COMMIT", &[], false),
            ]
            .concat(),
            3,
        )],
    )
    .await;
    assert!(
        matches!(&t[1][0], Reply::Error(code, _) if code == "34000"),
        "{t:?}"
    );
    assert_eq!(t[2].last(), Some(&Reply::Ready('I')), "{t:?}");
    assert!(t[2].contains(&cc("COMMIT")), "{t:?}");
}

/// The same with a captured read left in place by the skipped `Parse`: the portal of the new
/// unnamed statement is described with its own two columns (none hidden), and with a guarded
/// write that adds a parameter, the new statement's `Bind` goes as the client wrote it.
#[tokio::test]
async fn a_read_or_write_left_by_a_skipped_parse_is_not_the_new_unnamed_statement() {
    let pbe = |sql: &str, params: &[&str], describe_too: bool| {
        let mut m = [parse("", sql, &[]), bind_text("", "", params)].concat();
        if describe_too {
            m.extend(describe(b'P', ""));
        }
        [m, execute("", 0), sync()].concat()
    };
    let t = same_through_proxy(
        "rp_skipped_read",
        &[(
            [
                pbe("SELECT * FROM invoice", &[], false),
                bind_text("", "s2", &["-3"]),
                pbe("SELECT 1/0", &[], false),
                pbe("SELECT 'é', 'ü'", &[], true),
            ]
            .concat(),
            3,
        )],
    )
    .await;
    assert_eq!(columns(&t[2]), vec![2], "{t:?}");
    let t = same_through_proxy(
        "rp_skipped_write",
        &[
            (
                query("SELECT id, version FROM invoice WHERE id = 2; UPDATE invoice SET total = total + 1 WHERE id = 2"),
                1,
            ),
            (
                [
                    pbe(
                        "UPDATE invoice SET total = $2 WHERE id = $1 RETURNING version",
                        &["x", "11"],
                        false,
                    ),
                    bind_text("", "", &["x", "-3"]),
                    pbe("SELECT 'é', 'ü'", &[], true),
                    pbe("SELECT 1/0", &[], true),
                ]
                .concat(),
                3,
            ),
        ],
    )
    .await;
    assert!(
        matches!(&t[3][1], Reply::Error(code, _) if code == "22012"),
        "{t:?}"
    );
}
