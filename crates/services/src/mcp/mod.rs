//! The media server role (`mcp`): a SIP user agent that answers calls with real media from
//! `switchboard-media`. RFC 4240 announcements, conferences, recordings, and the hook for the
//! VoiceXML browser ([`dialog::DialogRunner`]).
//!
//! * [`service`]: what a call asks for, read from its Request-URI.
//! * [`ua`]: the sans-I/O SIP UA core (INVITE with offer/answer, re-INVITE, BYE, CANCEL).
//! * [`role`]: the async glue: sockets, the media engine, prompts, REST, metrics.

pub mod dialog;
pub mod fetch;
pub mod rfc5552;
pub mod role;
pub mod service;
pub mod ua;
pub mod vxml;
