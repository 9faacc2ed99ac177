//! SCRAM channel binding across the proxy.
//!
//! With `SCRAM-SHA-256-PLUS` the client signs a hash of the certificate its TLS connection
//! shows it (`tls-server-end-point`), and the server compares it with the hash of its own;
//! the server offers it only over TLS. The proxy never sees the password and cannot mend a
//! signed message, so:
//!
//! - client in plain text, server over TLS: the offer is taken out of the server's
//!   `AuthenticationSASL` (libpq refuses a server that offers it over a plain connection,
//!   as a sign of TLS stripped by a proxy). The client then signs `n` (no binding), which the
//!   server accepts.
//! - TLS on both legs: the client's TLS connection ends at optlock. The binding matches only
//!   when optlock shows clients the server's own certificate, and then it passes untouched.
//!   With another certificate, a client that binds (`p=`), or says it could (`y`, which a
//!   server over TLS refuses as a downgrade), is refused at once with an error that says why
//!   and what to change, instead of the server's "channel binding check failed". A client that
//!   does not bind (`n`: `channel_binding=disable`) logs in as usual.
//! - server in plain text: it offers no binding; nothing to do.

use bytes::BytesMut;

use crate::protocol::{backend as be, frontend as fe};

const PLUS: &[u8] = b"SCRAM-SHA-256-PLUS";
/// `AuthenticationSASL`'s code.
const SASL: [u8; 4] = 10i32.to_be_bytes();

/// The refusal a client gets (FATAL, `08P01`, as the server's own channel-binding errors).
pub const REFUSAL: &str = "SCRAM channel binding cannot pass through optlock: the client's TLS \
    connection ends at optlock, whose certificate is not the server's. Connect with \
    channel_binding=disable, or to optlock without TLS, or give optlock the server's own \
    certificate and key (tls_cert, tls_key) so that the binding passes through";

/// What a session logging in does about channel binding.
#[derive(Debug, PartialEq, Eq)]
pub enum BindingCheck {
    /// Client in plain text, server over TLS: the offer of binding is taken out.
    HideOffer,
    /// TLS on both legs with different certificates: a client that binds is refused.
    RefuseBinding,
}

impl BindingCheck {
    /// The check a session needs, from the certificate its client was shown (`None` in plain
    /// text) and the one the server showed the proxy (`None` in plain text).
    pub fn needed(client: Option<&[u8]>, server: Option<&[u8]>) -> Option<BindingCheck> {
        match (client, server) {
            (None, Some(_)) => Some(BindingCheck::HideOffer),
            (Some(c), Some(s)) if c != s => Some(BindingCheck::RefuseBinding),
            _ => None,
        }
    }

    /// Looks at the complete server messages in `input` (the engine has not handled them
    /// yet) and takes the offer of binding out of an `AuthenticationSASL`. True once that
    /// message passed: the check is over.
    pub fn server_input(&self, input: &mut BytesMut) -> bool {
        if *self != BindingCheck::HideOffer {
            return false;
        }
        let mut at = 0;
        while let Some(end) = complete(input, at) {
            if input[at] == be::AUTHENTICATION && input[at + 5..end].starts_with(&SASL) {
                if let Some(msg) = without_plus(&input[at..end]) {
                    let mut out = BytesMut::with_capacity(input.len());
                    out.extend_from_slice(&input[..at]);
                    out.extend_from_slice(&msg);
                    out.extend_from_slice(&input[end..]);
                    *input = out;
                }
                return true;
            }
            at = end;
        }
        false
    }

    /// Looks at the complete client messages in `input` (the engine has not handled them
    /// yet). `Err` when the client's first SCRAM message binds or says it could, and binding
    /// cannot pass; `Ok(true)` once its first password message passed: the check is over.
    pub fn client_input(&self, input: &BytesMut) -> Result<bool, &'static str> {
        if *self != BindingCheck::RefuseBinding {
            return Ok(false);
        }
        let mut at = 0;
        while let Some(end) = complete(input, at) {
            if input[at] == fe::PASSWORD {
                return match scram_first(&input[at + 5..end]) {
                    Some((mechanism, data)) if mechanism == PLUS || data.first() == Some(&b'y') => {
                        Err(REFUSAL)
                    }
                    // No binding, or a password or md5 answer.
                    _ => Ok(true),
                };
            }
            at = end;
        }
        Ok(false)
    }
}

/// The end of the complete message starting at `at`, if it is all there.
fn complete(input: &[u8], at: usize) -> Option<usize> {
    let len = u32::from_be_bytes(input.get(at + 1..at + 5)?.try_into().ok()?) as usize;
    let end = at + 1 + len;
    (len >= 4 && input.len() >= end).then_some(end)
}

/// An `AuthenticationSASL` message without `SCRAM-SHA-256-PLUS` among its mechanisms, when
/// it offered it.
pub fn without_plus(msg: &[u8]) -> Option<Vec<u8>> {
    if msg.first() != Some(&be::AUTHENTICATION) || msg.get(5..9)? != SASL {
        return None;
    }
    let body = &msg[9..];
    let mut out = msg[..9].to_vec();
    let mut found = false;
    for name in body.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name == PLUS {
            found = true;
        } else {
            out.extend_from_slice(name);
            out.push(0);
        }
    }
    out.push(0);
    let len = (out.len() - 1) as u32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    found.then_some(out)
}

/// The mechanism and data of a `SASLInitialResponse` body, when it is one of SCRAM.
fn scram_first(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = body.iter().position(|&b| b == 0)?;
    let mechanism = &body[..nul];
    if !mechanism.starts_with(b"SCRAM-") {
        return None;
    }
    let rest = body.get(nul + 1..)?;
    let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let data = rest.get(4..)?;
    Some((mechanism, if len < 0 { &[] } else { data }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn initial(mechanism: &str, data: &[u8]) -> BytesMut {
        let mut body = mechanism.as_bytes().to_vec();
        body.push(0);
        body.extend_from_slice(&(data.len() as i32).to_be_bytes());
        body.extend_from_slice(data);
        let mut m = BytesMut::new();
        m.extend_from_slice(b"p");
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(&body);
        m
    }

    fn sasl(names: &[&str]) -> BytesMut {
        let mut body = 10i32.to_be_bytes().to_vec();
        for n in names {
            body.extend_from_slice(n.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut m = BytesMut::from(&b"R"[..]);
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn what_each_pair_of_legs_needs() {
        use BindingCheck::*;
        assert_eq!(BindingCheck::needed(None, None), None);
        assert_eq!(BindingCheck::needed(Some(b"c"), None), None);
        assert_eq!(BindingCheck::needed(Some(b"s"), Some(b"s")), None);
        assert_eq!(BindingCheck::needed(None, Some(b"s")), Some(HideOffer));
        assert_eq!(
            BindingCheck::needed(Some(b"c"), Some(b"s")),
            Some(RefuseBinding)
        );
    }

    #[test]
    fn a_plain_client_is_not_offered_binding() {
        let check = BindingCheck::HideOffer;
        let ok = b"R\0\0\0\x08\0\0\0\0";
        let mut input = BytesMut::from(&ok[..]);
        input.extend_from_slice(&sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]));
        // Until the whole message is in, nothing changes.
        let mut partial = BytesMut::from(&input[..input.len() - 2]);
        assert!(!check.server_input(&mut partial));
        assert_eq!(partial, input[..input.len() - 2]);
        input.extend_from_slice(b"S\0\0");
        assert!(check.server_input(&mut input));
        let mut want = BytesMut::from(&ok[..]);
        want.extend_from_slice(&sasl(&["SCRAM-SHA-256"]));
        want.extend_from_slice(b"S\0\0");
        assert_eq!(input, want);
        // Without binding on offer, the message stays as it is.
        let mut plain = sasl(&["SCRAM-SHA-256"]);
        assert!(check.server_input(&mut plain));
        assert_eq!(plain, sasl(&["SCRAM-SHA-256"]));
    }

    #[test]
    fn a_client_that_binds_or_could_is_refused() {
        let c = BindingCheck::RefuseBinding;
        let plus = initial("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc");
        assert_eq!(c.client_input(&plus), Err(REFUSAL));
        let c = BindingCheck::RefuseBinding;
        assert_eq!(
            c.client_input(&initial("SCRAM-SHA-256", b"y,,n=,r=abc")),
            Err(REFUSAL)
        );
    }

    #[test]
    fn a_client_that_does_not_bind_passes_and_ends_the_check() {
        let c = BindingCheck::RefuseBinding;
        let msg = initial("SCRAM-SHA-256", b"n,,n=,r=abc");
        // Half a message: nothing to decide yet.
        assert_eq!(c.client_input(&BytesMut::from(&msg[..7])), Ok(false));
        assert_eq!(c.client_input(&msg), Ok(true));
        // An md5 or cleartext password.
        let c = BindingCheck::RefuseBinding;
        let pw = BytesMut::from(&b"p\0\0\0\x0bsecret\0"[..]);
        assert_eq!(c.client_input(&pw), Ok(true));
    }
}
