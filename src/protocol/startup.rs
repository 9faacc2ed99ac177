//! The untagged startup packets a client sends first: `StartupMessage`, `SSLRequest`,
//! `GSSENCRequest` and `CancelRequest`.

use super::{be_i32, cstr};

pub const SSL_REQUEST: i32 = 80877103;
pub const GSSENC_REQUEST: i32 = 80877104;
pub const CANCEL_REQUEST: i32 = 80877102;

/// Largest startup packet accepted: PostgreSQL takes 10000 bytes after the length word.
pub const MAX_STARTUP_PACKET: usize = 10_000 + 4;

/// A decoded startup packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    Ssl,
    GssEnc,
    /// Forwarded as is to the server, which knows the key.
    Cancel,
    /// Protocol `major.minor` and the parameters (`user`, `database`, `application_name`, ...).
    Startup {
        major: u16,
        minor: u16,
        params: Vec<(String, String)>,
    },
}

/// Size of the startup packet at the front of `buf`, once its length is buffered.
pub fn packet_size(buf: &[u8]) -> Result<Option<usize>, String> {
    let Some((len, _)) = be_i32(buf) else {
        return Ok(None);
    };
    if len < 8 || len as usize > MAX_STARTUP_PACKET {
        return Err(format!("invalid startup packet length {len}"));
    }
    Ok(Some(len as usize))
}

/// A startup packet PostgreSQL refuses: its SQLSTATE and words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: &'static str,
    pub message: String,
    /// The client asked for a protocol before 3.0: PostgreSQL answers in that protocol's
    /// format (an `E`, the text, a NUL), see [`write_v2_error`].
    pub before_v3: bool,
}

impl From<&str> for Refused {
    fn from(message: &str) -> Refused {
        Refused {
            code: "08P01",
            message: message.to_string(),
            before_v3: false,
        }
    }
}

/// An error as a client of a protocol before 3.0 reads it.
pub fn write_v2_error(out: &mut Vec<u8>, message: &str) {
    out.push(b'E');
    out.extend_from_slice(format!("FATAL:  {message}\n").as_bytes());
    out.push(0);
}

/// Decodes one complete startup packet (length field included).
pub fn parse(packet: &[u8]) -> Result<StartupPacket, Refused> {
    let (code, mut rest) = be_i32(&packet[4..]).ok_or("startup packet too short")?;
    match code {
        SSL_REQUEST => return Ok(StartupPacket::Ssl),
        GSSENC_REQUEST => return Ok(StartupPacket::GssEnc),
        CANCEL_REQUEST => return Ok(StartupPacket::Cancel),
        _ => {}
    }
    let major = (code >> 16) as u16;
    let minor = (code & 0xffff) as u16;
    if major != 3 {
        return Err(Refused {
            code: "0A000",
            message: format!(
                "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"
            ),
            // A protocol word of 0 is how PostgreSQL marks "not known yet": its errors then go
            // in the 3.0 format.
            before_v3: major < 3 && code != 0,
        });
    }
    // As PostgreSQL reads it: name and value pairs up to an empty name, which must be the
    // packet's last byte.
    const LAYOUT: &str = "invalid startup packet layout: expected terminator as last byte";
    let mut params = Vec::new();
    loop {
        let (key, after) = cstr(rest).ok_or(LAYOUT)?;
        if key.is_empty() {
            if !after.is_empty() {
                return Err(LAYOUT.into());
            }
            break;
        }
        let (value, after) = cstr(after).ok_or(LAYOUT)?;
        params.push((
            String::from_utf8_lossy(key).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
        rest = after;
    }
    if !params.iter().any(|(k, _)| k == "user") {
        return Err(Refused {
            code: "28000",
            message: "no PostgreSQL user name specified in startup packet".into(),
            before_v3: false,
        });
    }
    Ok(StartupPacket::Startup {
        major,
        minor,
        params,
    })
}

/// Encodes a startup message with the given protocol code and parameters.
pub fn encode_startup(code: i32, params: &[(String, String)]) -> Vec<u8> {
    let mut out = vec![0, 0, 0, 0];
    out.extend_from_slice(&code.to_be_bytes());
    for (k, v) in params {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out.push(0);
    let len = out.len() as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_round_trips() {
        let params = vec![
            ("user".to_string(), "alice".to_string()),
            ("database".to_string(), "shop".to_string()),
        ];
        let pkt = encode_startup(196608, &params);
        assert_eq!(packet_size(&pkt).unwrap(), Some(pkt.len()));
        assert_eq!(
            parse(&pkt).unwrap(),
            StartupPacket::Startup {
                major: 3,
                minor: 0,
                params
            }
        );
    }

    #[test]
    fn special_requests_and_errors() {
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert_eq!(parse(&ssl).unwrap(), StartupPacket::Ssl);
        assert!(packet_size(&[0, 0, 0, 4]).is_err());
        assert!(packet_size(&[0, 1, 0, 0]).is_err());
        let no_user = encode_startup(196608, &[("database".into(), "x".into())]);
        let e = parse(&no_user).unwrap_err();
        assert!(e.message.contains("user") && e.code == "28000", "{e:?}");
        let v2 = encode_startup(2 << 16, &[("user".into(), "x".into())]);
        let e = parse(&v2).unwrap_err();
        assert!(
            e.message.contains("unsupported") && e.code == "0A000" && e.before_v3,
            "{e:?}"
        );
    }
}
