//! SIP header parsing: name-addrs, `sip:`/`sips:` URIs (rsip), `tel:` URIs (RFC 3966) and E.164.
//!
//! The input is the `data.sip_headers[]` array of a `realtime.call.incoming` webhook (OpenAPI
//! schema `WebhookRealtimeCallIncoming`;
//! <https://developers.openai.com/api/docs/guides/realtime-sip>): the INVITE's headers as `{name,
//! value}` strings, in order, repeated entries kept, authorization headers removed. Everything here
//! treats those values as **untrusted caller metadata**: they pick a prompt profile and fill the
//! call record, they never authorize anything. Parsing never panics; the header helpers and
//! [`CallParties::from_headers`] turn anything unparseable into `None` instead of an error.
//!
//! What lives where:
//! - [`E164`], [`normalize_number`]: phone numbers (ITU-T E.164, RFC 3966 visual separators).
//! - [`SipUri`], [`NameAddr`], [`parse_name_addr`]: RFC 3261 §19.1/§20.10/§25.1 and RFC 3966 §3.
//! - [`SipHeader`], [`header`], [`headers_named`]: header lookup with RFC 3261 §7.3.3 compact
//!   forms and comma-separated header lists.
//! - [`CallParties`]: caller / dialed / diverted-from numbers and the SIP Call-ID.
//! - [`TransferTarget`]: a validated `Refer-To` target for `/refer` (OpenAPI
//!   `RealtimeCallReferRequest`; OpenAI developer forum reports).

mod headers;
mod number;
mod parties;
mod transfer;
mod uri;

pub use headers::{SipHeader, header, headers_named};
pub use number::{E164, normalize_number};
pub use parties::CallParties;
pub use transfer::TransferTarget;
pub use uri::{NameAddr, SipUri, parse_name_addr};

/// Errors from the SIP parsers. Each variant carries the offending input and a human reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SipError {
    /// Not an E.164 number (`+` then 1 to 15 digits, the first not `0`).
    #[error("invalid E.164 number {input:?}: {reason}")]
    InvalidE164 {
        /// The rejected input.
        input: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A URI whose scheme is not `sip:`, `sips:` or `tel:`.
    #[error("unsupported URI scheme in {input:?}: expected sip:, sips: or tel:")]
    UnsupportedScheme {
        /// The rejected input.
        input: String,
    },
    /// A `sip:`/`sips:` or `tel:` URI that does not follow RFC 3261 §25.1 / RFC 3966 §3.
    #[error("invalid URI {input:?}: {reason}")]
    InvalidUri {
        /// The rejected input.
        input: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A header value that is not a name-addr or addr-spec (RFC 3261 §20.10).
    #[error("invalid name-addr {input:?}: {reason}")]
    InvalidNameAddr {
        /// The rejected input.
        input: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A transfer target that is neither `tel:+E164` nor a `sip:`/`sips:` URI with a host.
    #[error("invalid transfer target {input:?}: {reason}")]
    InvalidTransferTarget {
        /// The rejected input.
        input: String,
        /// Why it was rejected.
        reason: String,
    },
}
