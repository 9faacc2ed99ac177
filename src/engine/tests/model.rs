//! A model of PostgreSQL's side of the protocol, small enough to reason about: it answers
//! every frontend message as the server does (the reply of each kind, errors, skipping to
//! `Sync` after an extended-protocol error, transaction status, statements and portals by
//! name), over a database where every statement succeeds unless its text says otherwise
//! (`1/0` fails, `SELEC` does not parse, a `DO` block raises 40001). During COPY FROM STDIN
//! `Flush` and `Sync` are ignored and any type byte but a copy message's ends the session
//! (ERROR, then FATAL 08P01), as PostgreSQL reads it. The fuzz tests run the
//! same client messages against it directly and through the engine.

use std::collections::HashMap;

use bytes::{BufMut, BytesMut};

use crate::protocol::{self, TxStatus, backend as be, frontend as fe};

/// The server's side of one connection.
#[derive(Default)]
pub struct Model {
    input: BytesMut,
    started: bool,
    statements: HashMap<Vec<u8>, String>,
    portals: HashMap<Vec<u8>, String>,
    /// `I`, `T` or `E`.
    tx: u8,
    /// After an extended-protocol error: every message up to `Sync` is ignored.
    skipping: bool,
    /// The client said goodbye, or the server closed.
    pub closed: bool,
    copy_in: bool,
}

type Failure = (&'static str, &'static str);

impl Model {
    pub fn new() -> Model {
        Model {
            tx: b'I',
            ..Model::default()
        }
    }

    /// Takes bytes the client (or the proxy) sent; returns the server's answer to every
    /// complete message among them.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.input.extend_from_slice(bytes);
        let mut out = BytesMut::new();
        if !self.started {
            if self.input.len() < 4 {
                return Vec::new();
            }
            let len = u32::from_be_bytes(self.input[..4].try_into().unwrap()) as usize;
            if self.input.len() < len {
                return Vec::new();
            }
            let _ = self.input.split_to(len);
            self.started = true;
            message(&mut out, be::AUTHENTICATION, &0u32.to_be_bytes());
            message(&mut out, be::PARAMETER_STATUS, b"client_encoding\0UTF8\0");
            message(&mut out, be::BACKEND_KEY_DATA, &[0, 0, 0, 7, 0, 0, 0, 9]);
            be::write_ready(&mut out, TxStatus::Idle);
        }
        while !self.closed {
            if self.copy_in
                && self.input.first().is_some_and(|&t| {
                    !matches!(
                        t,
                        fe::COPY_DATA | fe::COPY_DONE | fe::COPY_FAIL | fe::FLUSH | fe::SYNC
                    )
                })
            {
                // COPY judges a message on its type byte alone, and the session ends there.
                let text = format!(
                    "unexpected message type 0x{:02X} during COPY from stdin",
                    self.input[0]
                );
                be::write_error(&mut out, "ERROR", "08P01", &text);
                be::write_error(
                    &mut out,
                    "FATAL",
                    "08P01",
                    "terminating connection because protocol synchronization was lost",
                );
                self.closed = true;
                break;
            }
            let Ok(Some(h)) = protocol::peek_header(&self.input, usize::MAX) else {
                break;
            };
            if self.input.len() < h.size {
                break;
            }
            let msg = self.input.split_to(h.size);
            self.on_message(h.tag, &msg[5..], &mut out);
        }
        out.to_vec()
    }

    fn on_message(&mut self, tag: u8, body: &[u8], out: &mut BytesMut) {
        if self.copy_in {
            match tag {
                fe::COPY_DATA | fe::FLUSH | fe::SYNC => {}
                fe::COPY_DONE => {
                    self.copy_in = false;
                    complete(out, "COPY 1");
                    be::write_ready(out, TxStatus::from_ready(&[self.tx]));
                }
                _ => {
                    // CopyFail (any other type ends the session before it is framed).
                    self.copy_in = false;
                    self.error(out, ("57014", "COPY from stdin failed"));
                    be::write_ready(out, TxStatus::from_ready(&[self.tx]));
                }
            }
            return;
        }
        if tag == fe::TERMINATE {
            self.closed = true;
            return;
        }
        if self.skipping && tag != fe::SYNC {
            return;
        }
        match tag {
            fe::QUERY => self.simple_query(body, out),
            fe::PARSE => self.parse(body, out),
            fe::BIND => self.bind(body, out),
            fe::DESCRIBE => self.describe(body, out),
            fe::EXECUTE => self.execute(body, out),
            fe::CLOSE => {
                if let Some((kind, name)) = fe::target(body) {
                    let map = if kind == b'S' {
                        &mut self.statements
                    } else {
                        &mut self.portals
                    };
                    map.remove(name);
                }
                message(out, be::CLOSE_COMPLETE, &[]);
            }
            fe::SYNC => {
                self.skipping = false;
                self.portals_end_with_transaction();
                be::write_ready(out, TxStatus::from_ready(&[self.tx]));
            }
            fe::FLUSH => {}
            fe::FUNCTION_CALL => {
                message(out, be::FUNCTION_CALL_RESPONSE, &(-1i32).to_be_bytes());
                be::write_ready(out, TxStatus::from_ready(&[self.tx]));
            }
            _ => {
                be::write_error(out, "FATAL", "08P01", "invalid frontend message type");
                self.closed = true;
            }
        }
    }

    fn portals_end_with_transaction(&mut self) {
        if self.tx == b'I' {
            self.portals.clear();
        }
    }

    fn error(&mut self, out: &mut BytesMut, (code, text): Failure) {
        be::write_error(out, "ERROR", code, text);
        if self.tx == b'T' {
            self.tx = b'E';
        }
    }

    fn simple_query(&mut self, body: &[u8], out: &mut BytesMut) {
        let sql = String::from_utf8_lossy(fe::query_text(body).unwrap_or_default()).into_owned();
        self.statements.remove(&b""[..]);
        let parts: Vec<&str> = sql.split(';').filter(|s| !s.trim().is_empty()).collect();
        if parts.is_empty() {
            message(out, be::EMPTY_QUERY, &[]);
        }
        for part in parts {
            if let Err(e) = parse_check(part) {
                self.error(out, e);
                break;
            }
            match self.run(part) {
                Ok((rows, tag)) => {
                    if rows > 0 || tag.starts_with("SELECT") {
                        row_description(out);
                    }
                    data_rows(out, rows);
                    if part.trim_start().to_ascii_uppercase().starts_with("COPY") {
                        message(out, be::COPY_IN_RESPONSE, &[0, 0, 0]);
                        self.copy_in = true;
                        return;
                    }
                    complete(out, &tag);
                }
                Err(e) => {
                    self.error(out, e);
                    break;
                }
            }
        }
        self.portals_end_with_transaction();
        be::write_ready(out, TxStatus::from_ready(&[self.tx]));
    }

    fn fail_extended(&mut self, out: &mut BytesMut, e: Failure) {
        self.error(out, e);
        self.skipping = true;
    }

    fn parse(&mut self, body: &[u8], out: &mut BytesMut) {
        let Some(p) = fe::parse(body) else {
            return self.fail_extended(out, ("08P01", "invalid Parse"));
        };
        let sql = String::from_utf8_lossy(p.query).into_owned();
        if let Err(e) = parse_check(&sql) {
            return self.fail_extended(out, e);
        }
        if self.tx == b'E' && !ends_transaction(&sql) {
            return self.fail_extended(out, ("25P02", "current transaction is aborted"));
        }
        if !p.name.is_empty() && self.statements.contains_key(p.name) {
            return self.fail_extended(out, ("42P05", "prepared statement already exists"));
        }
        self.statements.insert(p.name.to_vec(), sql);
        message(out, be::PARSE_COMPLETE, &[]);
    }

    fn bind(&mut self, body: &[u8], out: &mut BytesMut) {
        let Some((portal, statement)) = fe::bind_names(body) else {
            return self.fail_extended(out, ("08P01", "invalid Bind"));
        };
        let Some(sql) = self.statements.get(statement).cloned() else {
            return self.fail_extended(out, ("26000", "prepared statement does not exist"));
        };
        if self.tx == b'E' && !ends_transaction(&sql) {
            return self.fail_extended(out, ("25P02", "current transaction is aborted"));
        }
        self.portals.insert(portal.to_vec(), sql);
        message(out, be::BIND_COMPLETE, &[]);
    }

    fn describe(&mut self, body: &[u8], out: &mut BytesMut) {
        let Some((kind, name)) = fe::target(body) else {
            return self.fail_extended(out, ("08P01", "invalid Describe"));
        };
        let found = if kind == b'S' {
            self.statements.get(name)
        } else {
            self.portals.get(name)
        };
        let Some(sql) = found.cloned() else {
            return self.fail_extended(out, ("26000", "does not exist"));
        };
        if kind == b'S' {
            message(out, be::PARAMETER_DESCRIPTION, &[0, 0]);
        }
        if returns_rows(&sql) {
            row_description(out);
        } else {
            message(out, be::NO_DATA, &[]);
        }
    }

    fn execute(&mut self, body: &[u8], out: &mut BytesMut) {
        let Some((portal, _)) = fe::execute(body) else {
            return self.fail_extended(out, ("08P01", "invalid Execute"));
        };
        let Some(sql) = self.portals.get(portal).cloned() else {
            return self.fail_extended(out, ("34000", "portal does not exist"));
        };
        if sql.trim().is_empty() {
            return message(out, be::EMPTY_QUERY, &[]);
        }
        match self.run(&sql) {
            Ok((rows, tag)) => {
                data_rows(out, rows);
                complete(out, &tag);
            }
            Err(e) => self.fail_extended(out, e),
        }
    }

    /// Runs one statement: the rows it returns and its command tag.
    fn run(&mut self, sql: &str) -> Result<(usize, String), Failure> {
        let upper = sql.trim().to_ascii_uppercase();
        let word = upper.split_whitespace().next().unwrap_or("").to_string();
        if self.tx == b'E' && !ends_transaction(sql) {
            return Err(("25P02", "current transaction is aborted"));
        }
        if upper.contains("1/0") {
            return Err(("22012", "division by zero"));
        }
        Ok(match word.as_str() {
            "DO" => return Err(("40001", "optimistic lock conflict")),
            "BEGIN" | "START" => {
                self.tx = b'T';
                (0, "BEGIN".into())
            }
            "COMMIT" | "END" => {
                let tag = if self.tx == b'E' {
                    "ROLLBACK"
                } else {
                    "COMMIT"
                };
                self.tx = b'I';
                (0, tag.into())
            }
            "ROLLBACK" if upper.contains(" TO ") => {
                if self.tx == b'E' {
                    self.tx = b'T';
                }
                (0, "ROLLBACK".into())
            }
            "ROLLBACK" => {
                self.tx = b'I';
                (0, "ROLLBACK".into())
            }
            "SELECT" if upper == "SELECT 1" => (1, "SELECT 1".into()),
            "SELECT" => (0, "SELECT 0".into()),
            "UPDATE" => (0, "UPDATE 1".into()),
            "DELETE" => (0, "DELETE 1".into()),
            "INSERT" => (0, "INSERT 0 1".into()),
            other => (0, other.to_string()),
        })
    }
}

fn parse_check(sql: &str) -> Result<(), Failure> {
    if sql.to_ascii_uppercase().contains("SELEC ") {
        return Err(("42601", "syntax error"));
    }
    Ok(())
}

fn ends_transaction(sql: &str) -> bool {
    let upper = sql.trim().to_ascii_uppercase();
    ["COMMIT", "ROLLBACK", "END"]
        .iter()
        .any(|w| upper.starts_with(w))
}

fn returns_rows(sql: &str) -> bool {
    let upper = sql.to_ascii_uppercase();
    upper.trim_start().starts_with("SELECT") || upper.contains("RETURNING")
}

fn message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_u32(body.len() as u32 + 4);
    out.extend_from_slice(body);
}

fn complete(out: &mut BytesMut, tag: &str) {
    let mut body = tag.as_bytes().to_vec();
    body.push(0);
    message(out, be::COMMAND_COMPLETE, &body);
}

/// One int4 column named `x` (no table).
fn row_description(out: &mut BytesMut) {
    let mut body = Vec::new();
    body.extend(1u16.to_be_bytes());
    body.extend(b"x\0");
    body.extend(0u32.to_be_bytes());
    body.extend(0u16.to_be_bytes());
    body.extend(23u32.to_be_bytes());
    body.extend(4i16.to_be_bytes());
    body.extend((-1i32).to_be_bytes());
    body.extend(0u16.to_be_bytes());
    message(out, be::ROW_DESCRIPTION, &body);
}

fn data_rows(out: &mut BytesMut, rows: usize) {
    for _ in 0..rows {
        message(out, be::DATA_ROW, &[0, 1, 0, 0, 0, 1, b'1']);
    }
}
