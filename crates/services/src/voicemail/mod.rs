//! The `voicemail` role: agent and group mailboxes, the deposit and access menus, message
//! waiting.
//!
//! * How calls get here: `sip-node` sends legs to a mailbox number (a DN's `mailbox` when
//!   nobody answers, a queue's on its timeout, or the number dialled or routed directly) and
//!   to a `voicemail_access` DN to the media server as
//!   `sip:dialog@MCP;voicexml=BASE/voicemail/v1/tenants/{tenant}/deposit/{mailbox}?...` or
//!   `.../access?caller=...` (see `sip_node::core::VoicemailRoute`). The media server runs
//!   the VoiceXML documents this role serves ([`docs`]), built from the pure decisions of
//!   [`menu`].
//! * A deposit is acknowledged (the submit answered) only once the WAV is fsynced under
//!   `voicemail.dir` and the row is committed in the store ([`role`]).
//! * Message waiting: [`mwi`].

pub mod docs;
pub mod menu;
pub mod multipart;
pub mod mwi;
pub mod role;
