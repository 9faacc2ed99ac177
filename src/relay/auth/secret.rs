//! A user's secret as the proxy holds it (a password, an md5 hash or a SCRAM-SHA-256 secret,
//! in the forms `pg_authid.rolpassword` and PgBouncer's `auth_file` use), the SCRAM arithmetic
//! on it, and the reading of an `auth_file`.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest as _, Md5};
use rand::Rng;
use sha2::Sha256;

/// What the proxy knows of a user's password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Secret {
    /// The password itself.
    Plain(String),
    /// `md5` + hex(md5(password + user)): the 32 hex digits.
    Md5(String),
    /// A SCRAM-SHA-256 secret.
    Scram(ScramSecret),
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl Secret {
    /// Reads a stored secret: `md5…` (35 characters), `SCRAM-SHA-256$…`, or else a password.
    pub fn parse(text: &str) -> Secret {
        if let Some(hex) = text.strip_prefix("md5")
            && hex.len() == 32
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Secret::Md5(hex.to_ascii_lowercase());
        }
        if text.starts_with("SCRAM-SHA-256$")
            && let Some(s) = ScramSecret::parse(text)
        {
            return Secret::Scram(s);
        }
        Secret::Plain(text.to_string())
    }

    /// The SCRAM secret to check a SCRAM login against: a password gets one with a fresh salt;
    /// an md5 hash has none.
    pub fn scram(&self) -> Option<ScramSecret> {
        match self {
            Secret::Scram(s) => Some(s.clone()),
            Secret::Plain(p) => {
                ScramSecret::parse(&postgres_protocol::password::scram_sha_256(p.as_bytes()))
            }
            Secret::Md5(_) => None,
        }
    }

    /// hex(md5(password + user)), what an md5 login is checked against; a SCRAM secret has
    /// none.
    pub fn md5_hex(&self, user: &str) -> Option<String> {
        match self {
            Secret::Md5(h) => Some(h.clone()),
            Secret::Plain(p) => Some(md5_hex(&[p.as_bytes(), user.as_bytes()])),
            Secret::Scram(_) => None,
        }
    }
}

impl ScramSecret {
    fn parse(text: &str) -> Option<ScramSecret> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(ScramSecret {
            iterations: iterations.parse().ok()?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }

    /// A secret no password matches, for a user the proxy does not know (the login goes
    /// through every step and fails as a wrong password does, as PostgreSQL's does).
    pub fn mock() -> ScramSecret {
        let mut salt = vec![0u8; 16];
        let mut stored_key = [0u8; 32];
        let mut server_key = [0u8; 32];
        let mut rng = rand::rng();
        rng.fill_bytes(&mut salt);
        rng.fill_bytes(&mut stored_key);
        rng.fill_bytes(&mut server_key);
        ScramSecret {
            iterations: 4096,
            salt,
            stored_key,
            server_key,
        }
    }
}

/// HMAC-SHA-256.
pub fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// SHA-256.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    Sha256::digest(data).into()
}

/// Lower-case hex of the md5 of the parts, one after the other.
pub fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What an md5 login answers for the salt: `md5` + hex(md5(hex + salt)).
pub fn md5_answer(hex: &str, salt: [u8; 4]) -> String {
    format!("md5{}", md5_hex(&[hex.as_bytes(), &salt]))
}

/// Random bytes.
pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill_bytes(&mut b);
    b
}

/// Fills `buf` with random bytes.
pub fn fill_random(buf: &mut [u8]) {
    rand::rng().fill_bytes(buf);
}

pub fn b64(data: &[u8]) -> String {
    B64.encode(data)
}

pub fn unb64(text: &str) -> Option<Vec<u8>> {
    B64.decode(text).ok()
}

/// The secret an `auth_file` gives `user`: lines of `"user" "password or secret"` (PgBouncer's
/// format; `""` inside quotes is a quote, lines starting with `;` or `#` are comments).
pub fn from_auth_file(path: &Path, user: &str) -> Result<Option<Secret>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read auth_file {}: {e}", path.display()))?;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        let fields = quoted_fields(line);
        if fields.len() >= 2 && fields[0] == user {
            return Ok(Some(Secret::parse(&fields[1])));
        }
    }
    Ok(None)
}

/// The double-quoted fields of a line.
fn quoted_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut field = String::new();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    break;
                }
            } else {
                field.push(c);
            }
        }
        out.push(field);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_recognised() {
        assert_eq!(
            Secret::parse("md5ABCDEF0123456789abcdef0123456789"),
            Secret::Md5("abcdef0123456789abcdef0123456789".into())
        );
        assert_eq!(
            Secret::parse("md5 short"),
            Secret::Plain("md5 short".into())
        );
        let scram = postgres_protocol::password::scram_sha_256(b"pw");
        assert!(matches!(Secret::parse(&scram), Secret::Scram(s) if s.iterations == 4096));
    }

    #[test]
    fn md5_answer_matches_libpq() {
        let hex = Secret::Plain("password".into())
            .md5_hex("md5_user")
            .unwrap();
        let salt = [0x2a, 0x3d, 0x8f, 0xe0];
        assert_eq!(
            md5_answer(&hex, salt),
            postgres_protocol::authentication::md5_hash(b"md5_user", b"password", salt)
        );
    }

    #[test]
    fn auth_file_lines() {
        assert_eq!(
            quoted_fields(r#""al""ice" "pw x" "#),
            vec!["al\"ice".to_string(), "pw x".to_string()]
        );
    }
}
