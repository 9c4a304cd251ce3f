//! The transaction layer (RFC 3261 §17, with the Accepted states of RFC 6026), sans-I/O.
//!
//! [`Transactions`] holds every client and server transaction of a node. The runtime feeds it
//! messages ([`Transactions::handle_incoming`]) and the clock ([`Transactions::handle_timeout`]),
//! the transaction user (proxy core, B2BUA, registrar) sends through it
//! ([`Transactions::send_request`], [`Transactions::send_response`]), and everything to put on
//! the wire or to tell the TU is drained with [`Transactions::poll_transmit`] and
//! [`Transactions::poll_event`]. [`Transactions::poll_timeout`] says when to call back.
//!
//! All transactions share one deadline queue; a state change simply overwrites the deadline a
//! transaction expects, and stale queue entries are skipped when they come up.
//!
//! What the layer does on its own: retransmit requests (timers A, E) and final responses
//! (timer G) over UDP, answer request retransmissions with the last response, generate and
//! re-send the ACK for non-2xx final responses, send `100 Trying` for an INVITE the TU leaves
//! unanswered for 200 ms, and time transactions out (B, F, H, and Timer C for INVITEs stuck in
//! Proceeding). What it leaves to the TU: validating requests beyond what matching needs,
//! sending ACK for 2xx (see [`Transactions::send_stateless`]), answering CANCEL, and
//! synthesising a 408 on [`TxEvent::Timeout`].

mod client;
mod idgen;
mod key;
mod server;
mod timer;

pub use idgen::IdGen;

use crate::message::{Error, Message};
use crate::transport::{Peer, Transmit};
use bytes::Bytes;
use client::ClientTx;
use server::ServerTx;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use timer::{Due, Side, Slot, TimerQueue};

/// Protocol timer settings (RFC 3261 §17.1.1.1, Table 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    /// RTT estimate: first retransmission interval; 64*T1 bounds transaction lifetimes.
    pub t1: Duration,
    /// Cap on non-INVITE request and INVITE final-response retransmission intervals.
    pub t2: Duration,
    /// How long the network may hold a message: timers I and K over UDP.
    pub t4: Duration,
    /// Timer D: how long an INVITE client transaction absorbs final-response retransmissions
    /// over UDP (at least 32 s).
    pub d: Duration,
    /// Send `100 Trying` for an INVITE when the TU has not answered within this time
    /// (RFC 3261 §17.2.1); `None` leaves it to the TU.
    pub trying: Option<Duration>,
    /// Timer C (RFC 3261 §16.6 step 11): an INVITE client transaction with a provisional
    /// response but no final one after this long reports [`TxEvent::ProceedingTimeout`] and
    /// gives the TU's CANCEL 64*T1 to take effect before it times out. `None` waits forever.
    pub timer_c: Option<Duration>,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            d: Duration::from_secs(32),
            trying: Some(Duration::from_millis(200)),
            // "greater than 3 minutes"
            timer_c: Some(Duration::from_secs(181)),
        }
    }
}

impl Timers {
    /// 64*T1: timers B, F, H, J, L and M.
    pub fn t1x64(&self) -> Duration {
        self.t1 * 64
    }
}

/// A server transaction (a request we received). Ids are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerTxId(u64);

/// A client transaction (a request we sent). Ids are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientTxId(u64);

impl ServerTxId {
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl ClientTxId {
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// Transaction states; a terminated transaction is gone (its state queries return `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// INVITE client: request sent, nothing heard.
    Calling,
    /// Non-INVITE client or server: request sent / received, no response yet.
    Trying,
    /// A provisional response was received / sent.
    Proceeding,
    /// A final response (non-2xx for INVITE) was received / sent; absorbing retransmissions.
    Completed,
    /// INVITE server: the ACK for a non-2xx final response arrived.
    Confirmed,
    /// INVITE (RFC 6026): a 2xx was received / sent; further 2xx pass through.
    Accepted,
}

/// What [`Transactions::handle_incoming`] made of a message.
#[derive(Debug)]
pub enum Incoming {
    /// A new request for the TU (INVITE, non-INVITE or CANCEL), with its server transaction.
    Request { tx: ServerTxId, msg: Message },
    /// A response for the TU: provisional, final, or in Accepted a 2xx retransmission or a
    /// 2xx from another fork.
    Response { tx: ClientTxId, msg: Message },
    /// An ACK that no transaction absorbs: the ACK for a 2xx (its own transaction at the UAC),
    /// or one arriving at an INVITE server transaction in Accepted. A proxy forwards it
    /// statelessly; a UAS gives it to the dialog.
    Ack { msg: Message },
    /// A response matching no client transaction, or a 2xx arriving after a non-2xx final
    /// response. A proxy forwards it statelessly (RFC 3261 §16.7, §18.1.2) or drops it.
    StrayResponse { msg: Message },
    /// A retransmission the layer handled (possibly queueing a retransmitted response or ACK).
    Absorbed,
    /// The message lacks what matching needs (top Via, CSeq, and for RFC 2543 requests From,
    /// To, Call-ID) or its CSeq method differs from the request method. Answer a request with
    /// `error.status()` statelessly (never an ACK); drop a response.
    Malformed { msg: Message, error: Error },
}

/// Things the TU learns from the layer besides messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxEvent {
    /// Timer B or F fired, or Timer C's CANCEL grace ran out: act as if a 408 arrived.
    Timeout(ClientTxId),
    /// Timer C fired for an INVITE with a provisional response: send a CANCEL for it.
    ProceedingTimeout(ClientTxId),
    /// [`Transactions::transport_error`] for the client transaction's peer: act as if a 503
    /// arrived (RFC 3261 §8.1.3.1).
    TransportError(ClientTxId),
    /// Timer H: the ACK for our non-2xx final response never came.
    NoAck(ServerTxId),
    /// Responses could not be delivered to the server transaction's peer.
    ServerTransportError(ServerTxId),
    /// The server transaction is gone; its id will not be seen again.
    ServerTerminated(ServerTxId),
    /// The client transaction is gone; its id will not be seen again.
    ClientTerminated(ClientTxId),
}

/// Why the layer refused something the TU asked for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("no such transaction (terminated or never existed)")]
    NoTransaction,
    #[error("a final response was already sent; only 2xx may follow a 2xx to an INVITE")]
    AlreadyFinal,
    #[error("status code outside 100..=699")]
    BadStatus,
    #[error("not a request")]
    NotRequest,
    #[error("not a response")]
    NotResponse,
    #[error("an ACK is not sent in a client transaction; use send_stateless")]
    Ack,
    #[error("the request's top Via has no RFC 3261 branch")]
    NoBranch,
    #[error("a client transaction with this branch and method already exists")]
    DuplicateBranch,
    #[error(transparent)]
    Message(#[from] Error),
}

/// Every transaction of a node, and the queues the runtime drains.
pub struct Transactions {
    timers: Timers,
    servers: HashMap<u64, ServerTx>,
    clients: HashMap<u64, ClientTx>,
    /// Matching key -> server transaction; RFC 2543 INVITEs may hold two keys (see `key`).
    server_index: HashMap<Box<str>, u64>,
    client_index: HashMap<Box<str>, u64>,
    queue: TimerQueue,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TxEvent>,
    next_id: u64,
    /// Reused for lookup keys so that matching a retransmission or response allocates nothing.
    scratch: String,
}

impl Transactions {
    pub fn new(timers: Timers) -> Self {
        Transactions {
            timers,
            servers: HashMap::new(),
            clients: HashMap::new(),
            server_index: HashMap::new(),
            client_index: HashMap::new(),
            queue: TimerQueue::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_id: 1,
            scratch: String::with_capacity(128),
        }
    }

    pub fn timers(&self) -> &Timers {
        &self.timers
    }

    /// Feeds one framed message received from `from`.
    pub fn handle_incoming(&mut self, msg: Message, from: Peer, now: Instant) -> Incoming {
        let out = if msg.is_request() {
            self.incoming_request(msg, from, now)
        } else {
            self.incoming_response(msg, now)
        };
        self.prune();
        out
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(due) = self.queue.pop_due(now) {
            match due.side {
                Side::Server => self.server_timer(due, now),
                Side::Client => self.client_timer(due, now),
            }
        }
        self.prune();
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.events.pop_front()
    }

    /// When [`Transactions::handle_timeout`] should be called next. May be slightly early (a
    /// cancelled timer), never late.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.queue.next_deadline()
    }

    /// Live (server, client) transactions.
    pub fn len(&self) -> (usize, usize) {
        (self.servers.len(), self.clients.len())
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.clients.is_empty()
    }

    /// Queues bytes outside any transaction: the ACK for a 2xx, a 2xx retransmitted by a UAS
    /// core, stateless forwards and replies. Keeps one ordered output queue.
    pub fn send_stateless(&mut self, payload: Bytes, to: Peer) {
        self.transmits.push_back(Transmit { peer: to, payload });
    }

    /// The connection or route to `peer` failed (TCP connect refused or reset, TLS failure,
    /// ICMP unreachable): every transaction talking to it ends (RFC 3261 §17.1.4, §17.2.4).
    pub fn transport_error(&mut self, peer: Peer) {
        let mut ids: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, t)| t.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            self.events
                .push_back(TxEvent::TransportError(ClientTxId(id)));
            self.end_client(id);
        }
        let mut ids: Vec<u64> = self
            .servers
            .iter()
            .filter(|(_, t)| t.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            self.events
                .push_back(TxEvent::ServerTransportError(ServerTxId(id)));
            self.end_server(id);
        }
        self.prune();
    }

    fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn arm(&mut self, at: Instant, side: Side, id: u64, slot: Slot) {
        self.queue.arm(at, side, id, slot);
    }

    fn transmit(&mut self, peer: Peer, payload: Bytes) {
        self.transmits.push_back(Transmit { peer, payload });
    }

    /// Drops cancelled entries from the head of the queue so that `poll_timeout` does not wake
    /// the runtime for nothing, and compacts the queue when cancelled entries (a 3-minute
    /// Timer C left behind by every answered call) outnumber live ones; each transaction has
    /// at most two live entries, so the rebuild is amortised O(1) per entry.
    fn prune(&mut self) {
        let (servers, clients) = (&self.servers, &self.clients);
        self.queue
            .drop_stale_head(|due| is_live(servers, clients, due));
        let live_max = 2 * (self.servers.len() + self.clients.len());
        if self.queue.len() > 2 * live_max + 1024 {
            let (servers, clients) = (&self.servers, &self.clients);
            self.queue.retain(|due| is_live(servers, clients, due));
        }
    }

    /// Entries in the deadline queue, cancelled ones included (for tests and metrics).
    pub fn queued_timers(&self) -> usize {
        self.queue.len()
    }
}

/// True if the queue entry still matches what its transaction expects.
fn is_live(servers: &HashMap<u64, ServerTx>, clients: &HashMap<u64, ClientTx>, due: &Due) -> bool {
    let expected = match due.side {
        Side::Server => servers.get(&due.id).and_then(|t| t.deadline(due.slot)),
        Side::Client => clients.get(&due.id).and_then(|t| t.deadline(due.slot)),
    };
    expected == Some(due.at)
}

/// A transaction's timer slots: the deadline each is armed for, if any.
#[derive(Clone, Copy, Debug, Default)]
struct Deadlines {
    retransmit: Option<Instant>,
    lifetime: Option<Instant>,
}

impl Deadlines {
    fn get(&self, slot: Slot) -> Option<Instant> {
        match slot {
            Slot::Retransmit => self.retransmit,
            Slot::Lifetime => self.lifetime,
        }
    }

    /// Clears the slot if `due` is what it waits for; false for a stale queue entry.
    fn take(&mut self, due: &Due) -> bool {
        let s = match due.slot {
            Slot::Retransmit => &mut self.retransmit,
            Slot::Lifetime => &mut self.lifetime,
        };
        if *s == Some(due.at) {
            *s = None;
            true
        } else {
            false
        }
    }
}
