//! SDP for Switchboard: a typed parser and builder (RFC 4566, with RFC 5118 IPv6 addresses) and
//! the RFC 3264 offer/answer model as a pure state machine.
//!
//! * [`SessionDescription::parse`] turns a body into typed values (origin, connection, media,
//!   `rtpmap`, `fmtp`, `ptime`, direction); unknown lines and attributes are kept and written back.
//!   Errors name the line number and what was wrong.
//! * [`SessionDescription`]'s `Display` writes it back (CRLF line ends).
//! * [`OfferAnswer`] creates offers, re-offers (with `o=` version increments) and holds, answers
//!   remote offers given our codecs, and reports the negotiated media. No common codec is a
//!   [`NegotiationError::NoCommonCodec`], which the SIP layer answers with 488.

mod model;
mod negotiate;
mod parse;
mod write;

pub use model::{
    AddrType, Attribute, Connection, Direction, Fmtp, Host, Line, MediaDescription, Origin, RtpMap,
    SessionDescription,
};
pub use negotiate::{
    Codec, HoldMode, LocalMedia, Negotiated, NegotiatedCodec, NegotiationError, OfferAnswer,
    OfferAnswerState,
};
pub use parse::ParseError;
