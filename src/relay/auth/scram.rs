//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, both ways: the proxy checking a
//! client's login against a stored secret ([`Verifier`]), and the proxy logging in to the
//! server with the `ClientKey` a client's proof revealed ([`PassThrough`]), which is how a
//! secret read from `pg_shadow` lets the proxy open server connections without the password
//! (PgBouncer's SCRAM pass-through). Channel binding is not offered (no `-PLUS`).

use super::secret::{ScramSecret, b64, hmac, random, sha256, unb64};

/// The proxy's side of one client's SCRAM exchange.
pub struct Verifier {
    secret: ScramSecret,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

/// Why a client's SCRAM message is refused: a malformed message (`08P01`) or a wrong proof
/// (`28P01`, as a wrong password).
#[derive(Debug)]
pub enum ScramError {
    Protocol(String),
    WrongProof,
}

impl Verifier {
    /// Reads the client-first message and returns the verifier and the server-first message.
    pub fn start(
        secret: ScramSecret,
        client_first: &[u8],
    ) -> Result<(Verifier, String), ScramError> {
        let text = std::str::from_utf8(client_first)
            .map_err(|_| ScramError::Protocol("invalid SCRAM message (not UTF-8)".into()))?;
        let bad = |what: &str| ScramError::Protocol(format!("malformed SCRAM message ({what})"));
        let (cbind, rest) = text.split_once(',').ok_or_else(|| bad("no GS2 header"))?;
        match cbind {
            "n" | "y" => {}
            _ if cbind.starts_with("p=") => {
                return Err(ScramError::Protocol(
                    "channel binding was not offered: SCRAM-SHA-256-PLUS is not supported".into(),
                ));
            }
            _ => return Err(bad("unexpected channel-binding flag")),
        }
        let (authzid, bare) = rest.split_once(',').ok_or_else(|| bad("no GS2 header"))?;
        let gs2_header = format!("{cbind},{authzid},");
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("no nonce"))?;
        let nonce = format!("{client_nonce}{}", b64(&random::<18>()));
        let server_first = format!("r={nonce},s={},i={}", b64(&secret.salt), secret.iterations);
        Ok((
            Verifier {
                secret,
                gs2_header,
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                nonce,
            },
            server_first,
        ))
    }

    /// Checks the client-final message; on success returns the server-final message and the
    /// client's `ClientKey`.
    pub fn finish(&self, client_final: &[u8]) -> Result<(String, [u8; 32]), ScramError> {
        let bad = |what: &str| ScramError::Protocol(format!("malformed SCRAM message ({what})"));
        let text = std::str::from_utf8(client_final).map_err(|_| bad("not UTF-8"))?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or_else(|| bad("no proof"))?;
        let mut cbind = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                cbind = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        if cbind.and_then(unb64).as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(bad("channel binding data does not match"));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(bad("nonce does not match"));
        }
        let proof: [u8; 32] = unb64(proof)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| bad("proof of the wrong size"))?;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        let client_key: [u8; 32] = std::array::from_fn(|i| proof[i] ^ signature[i]);
        if sha256(&client_key) != self.secret.stored_key {
            return Err(ScramError::WrongProof);
        }
        let server_signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        Ok((format!("v={}", b64(&server_signature)), client_key))
    }
}

/// The proxy logging in to the server with a user's `ClientKey` and SCRAM secret instead of
/// the password.
pub struct PassThrough {
    client_key: [u8; 32],
    secret: ScramSecret,
    client_first_bare: String,
    auth_message: String,
}

impl PassThrough {
    /// The client-first message to send.
    pub fn start(client_key: [u8; 32], secret: ScramSecret) -> (PassThrough, String) {
        let bare = format!("n=,r={}", b64(&random::<18>()));
        let first = format!("n,,{bare}");
        (
            PassThrough {
                client_key,
                secret,
                client_first_bare: bare,
                auth_message: String::new(),
            },
            first,
        )
    }

    /// The client-final message for the server-first one; fails when the server holds
    /// another secret than the one the client's login was checked against.
    pub fn answer(&mut self, server_first: &[u8]) -> Result<String, String> {
        let text = std::str::from_utf8(server_first).map_err(|_| "server-first not UTF-8")?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for attr in text.split(',') {
            if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = attr.strip_prefix("s=") {
                salt = unb64(v);
            } else if let Some(v) = attr.strip_prefix("i=") {
                iterations = v.parse::<u32>().ok();
            }
        }
        let nonce = nonce.ok_or("the server's SCRAM message has no nonce")?;
        let mine = self
            .client_first_bare
            .strip_prefix("n=,r=")
            .unwrap_or_default();
        if !nonce.starts_with(mine) {
            return Err("the server's SCRAM nonce does not extend the proxy's".into());
        }
        if salt.as_deref() != Some(&self.secret.salt[..])
            || iterations != Some(self.secret.iterations)
        {
            return Err(
                "the server's SCRAM secret differs from the one the login was checked \
                        against (the password changed?)"
                    .into(),
            );
        }
        let without_proof = format!("c=biws,r={nonce}");
        self.auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let signature = hmac(&self.secret.stored_key, self.auth_message.as_bytes());
        let proof: [u8; 32] = std::array::from_fn(|i| self.client_key[i] ^ signature[i]);
        Ok(format!("{without_proof},p={}", b64(&proof)))
    }

    /// Checks the server-final message (the server knows the secret too).
    pub fn verify(&self, server_final: &[u8]) -> Result<(), String> {
        let expected = hmac(&self.secret.server_key, self.auth_message.as_bytes());
        let text = std::str::from_utf8(server_final).unwrap_or_default();
        match text.strip_prefix("v=").and_then(unb64) {
            Some(v) if v == expected => Ok(()),
            _ => Err("the server's SCRAM signature is wrong".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::auth::secret::Secret;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// libpq's side (postgres-protocol's) against the proxy's verifier, then the key it
    /// revealed against a second verifier (as the server would check the proxy).
    #[test]
    fn verifier_accepts_the_right_password_and_passes_its_key_on() {
        let secret = Secret::Plain("pencil".into()).scram().unwrap();
        let mut client = ScramSha256::new(b"pencil", ChannelBinding::unsupported());
        let (v, server_first) = Verifier::start(secret.clone(), client.message()).unwrap();
        client.update(server_first.as_bytes()).unwrap();
        let (server_final, key) = v.finish(client.message()).unwrap();
        client.finish(server_final.as_bytes()).unwrap();

        let (mut pass, first) = PassThrough::start(key, secret.clone());
        let (v2, server_first) = Verifier::start(secret, first.as_bytes()).unwrap();
        let last = pass.answer(server_first.as_bytes()).unwrap();
        let (server_final, _) = v2.finish(last.as_bytes()).unwrap();
        pass.verify(server_final.as_bytes()).unwrap();
    }

    #[test]
    fn verifier_refuses_a_wrong_password() {
        let secret = Secret::Plain("pencil".into()).scram().unwrap();
        let mut client = ScramSha256::new(b"crayon", ChannelBinding::unsupported());
        let (v, server_first) = Verifier::start(secret, client.message()).unwrap();
        client.update(server_first.as_bytes()).unwrap();
        assert!(matches!(
            v.finish(client.message()),
            Err(ScramError::WrongProof)
        ));
    }
}
