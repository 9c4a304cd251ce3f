//! Sans-I/O SIP for Switchboard: messages over `bytes::Bytes` with lazily parsed headers, URIs,
//! in-place edits for forwarding, builders, the transaction layer, dialogs and digest
//! authentication. No sockets, no tasks, no clock reads: callers pass `now`.

pub mod auth;
pub mod build;
pub mod dialog;
pub mod edit;
pub mod framing;
#[doc(hidden)]
pub mod fuzzing;
pub mod header;
pub mod message;
pub mod text;
pub mod transaction;
pub mod transport;
pub mod uri;

pub use build::{reason_phrase, response_to, Builder};
pub use dialog::{Dialog, DialogError, DialogId, DialogState};
pub use header::{CSeq, HeaderName, Method, NameAddr, Via};
pub use message::{Contacts, Error, HeaderField, Message, Span, StartLine};
pub use transaction::{
    ClientTxId, IdGen, Incoming, ServerTxId, State as TxState, Timers, Transactions, TxError,
    TxEvent,
};
pub use transport::{Peer, Transmit, Transport};
pub use uri::{Host, SipUri, TelUri, Uri};
