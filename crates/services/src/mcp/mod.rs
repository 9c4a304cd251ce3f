//! The media server role (`mcp`): a SIP user agent that answers calls with real media from
//! `switchboard-media`. RFC 4240 announcements, conferences, recordings, and VoiceXML dialogs
//! (RFC 5552) behind [`dialog::DialogRunner`], run by the built-in browser [`vxml::VxmlRunner`].
//!
//! * [`service`]: what a call asks for, read from its Request-URI.
//! * [`ua`]: the sans-I/O SIP UA core (INVITE with offer/answer, re-INVITE, BYE, CANCEL,
//!   REFER for a dialog's blind transfer, outgoing calls for its bridge and consultation
//!   transfers).
//! * [`rfc5552`]: the session variables of a dialog and the body of the BYE that ends it.
//! * [`dialog`]: the seam between the glue and a dialog runner, and the per-call log.
//! * [`vxml`]: the VoiceXML browser (the interpreter of `switchboard-vxml` on the media engine).
//! * [`fetch`]: the browser's document fetches and their shared cache.
//! * [`role`]: the async glue: sockets, the media engine, prompts, REST, metrics.

pub mod builtin;
pub mod dialog;
pub mod fetch;
pub mod rfc5552;
pub mod role;
pub mod service;
pub mod ua;
pub mod vxml;
