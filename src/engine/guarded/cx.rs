//! What the guard may touch of its session while it handles one message: the output (bytes
//! for the server and for the client, the reply queue, whether the client is held) and what the
//! session knows of the server (settings, transaction status, parameters), plus where to report
//! events. The engine builds a [`Cx`] for each call into the guard; the guard never sees the
//! engine itself, so it cannot reach past what a `Cx` gives.

use std::sync::Arc;

use crate::guard::GuardSet;
use crate::guard::datestyle::DateStyle;
use crate::protocol::TxStatus;
use bytes::BytesMut;

use super::tag::StmtTag;
use crate::engine::replies::Replies;
use crate::engine::settings::Settings;
use crate::events::SessionEvents;

/// What the session sends, and what it awaits.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Bytes for the server, in order.
    pub to_server: BytesMut,
    /// Bytes for the client, in order.
    pub to_client: BytesMut,
    /// What each message sent to the server still awaits.
    pub replies: Replies<StmtTag>,
    /// Client messages stay unread while set (the guard awaits a reply first).
    pub hold_client: bool,
    /// The guard released the client: its waiting messages are handled once the current
    /// server message is.
    pub resume: bool,
    /// The session's guards changed (the relations of its database whose writes land in a
    /// guarded table were found): the session takes this set for what comes next.
    pub guards: Option<Arc<GuardSet>>,
}

impl Outbox {
    /// Releases the client and asks for its waiting messages to be handled.
    #[inline]
    pub fn release_client(&mut self) {
        self.hold_client = false;
        self.resume = true;
    }
}

/// Server parameters the session follows (from `ParameterStatus`).
#[derive(Debug, Clone)]
pub struct SessionParams {
    pub client_encoding: String,
    pub standard_conforming_strings: bool,
    /// How the server prints dates (`DateStyle`, `TimeZone`): result values are read in it.
    pub date_style: DateStyle,
}

impl SessionParams {
    /// The client's text is UTF-8: the server rejects a text that is not valid UTF-8 with
    /// its own error (22021) before it runs any of it, whatever the database's encoding.
    pub fn client_utf8(&self) -> bool {
        self.client_encoding.eq_ignore_ascii_case("UTF8")
            || self.client_encoding.eq_ignore_ascii_case("UTF-8")
    }
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            client_encoding: "UTF8".into(),
            standard_conforming_strings: true,
            date_style: DateStyle::default(),
        }
    }
}

/// The guard's view of its session for one call.
pub struct Cx<'a> {
    pub out: &'a mut Outbox,
    pub settings: &'a Settings,
    /// Transaction status from the last `ReadyForQuery`.
    pub tx_status: TxStatus,
    pub params: &'a SessionParams,
    /// Client bytes already received after the message being handled (read, never consumed).
    pub lookahead: &'a [u8],
    pub events: &'a dyn SessionEvents,
}
