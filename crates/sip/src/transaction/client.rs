//! Client transactions: INVITE (RFC 3261 §17.1.1 with RFC 6026's Accepted state) and
//! non-INVITE (§17.1.2).

use super::key::client_key;
use super::timer::{Due, Side, Slot};
use super::{ClientTxId, Deadlines, Incoming, State, Transactions, TxError, TxEvent};
use crate::build::ack_for_non_2xx;
use crate::header::Method;
use crate::message::Message;
use crate::transport::Peer;
use bytes::Bytes;
use std::time::{Duration, Instant};

pub(super) struct ClientTx {
    invite: bool,
    state: State,
    /// Kept whole: retransmissions send its bytes, the ACK and a CANCEL copy its headers.
    request: Message,
    pub(super) peer: Peer,
    key: Box<str>,
    /// The current A or E interval.
    interval: Duration,
    deadlines: Deadlines,
    /// Timer C fired and the lifetime slot now runs the CANCEL grace period.
    timer_c_fired: bool,
    /// The ACK sent for a non-2xx final response, re-sent on its retransmissions.
    ack: Option<Bytes>,
}

impl ClientTx {
    pub(super) fn deadline(&self, slot: Slot) -> Option<Instant> {
        self.deadlines.get(slot)
    }
}

impl Transactions {
    /// Sends a request in a new client transaction. The top Via must carry a unique RFC 3261
    /// branch (see [`super::IdGen`]); with the CSeq method it identifies the transaction, so a
    /// CANCEL (same branch as its INVITE) gets its own.
    pub fn send_request(
        &mut self,
        msg: Message,
        to: Peer,
        now: Instant,
    ) -> Result<ClientTxId, TxError> {
        let method = msg.method().ok_or(TxError::NotRequest)?;
        if *method == Method::Ack {
            return Err(TxError::Ack);
        }
        let invite = *method == Method::Invite;
        {
            let via = msg.top_via()?;
            if !via.is_rfc3261() {
                return Err(TxError::NoBranch);
            }
            client_key(via.branch().unwrap_or(""), method, &mut self.scratch);
        }
        if self.client_index.contains_key(self.scratch.as_str()) {
            return Err(TxError::DuplicateBranch);
        }
        let key: Box<str> = self.scratch.as_str().into();
        let id = self.new_id();
        self.transmit(to, msg.bytes());
        let t = self.timers;
        let mut deadlines = Deadlines::default();
        if !to.transport.reliable() {
            deadlines.retransmit = Some(now + t.t1);
            self.arm(now + t.t1, Side::Client, id, Slot::Retransmit);
        }
        // Timers B and F run on every transport.
        deadlines.lifetime = Some(now + t.t1x64());
        self.arm(now + t.t1x64(), Side::Client, id, Slot::Lifetime);
        self.client_index.insert(key.clone(), id);
        self.clients.insert(
            id,
            ClientTx {
                invite,
                state: if invite {
                    State::Calling
                } else {
                    State::Trying
                },
                request: msg,
                peer: to,
                key,
                interval: t.t1,
                deadlines,
                timer_c_fired: false,
                ack: None,
            },
        );
        Ok(ClientTxId(id))
    }

    /// The request a client transaction sent: what `build::cancel_for` needs.
    pub fn client_request(&self, tx: ClientTxId) -> Option<&Message> {
        self.clients.get(&tx.0).map(|t| &t.request)
    }

    pub fn client_state(&self, tx: ClientTxId) -> Option<State> {
        self.clients.get(&tx.0).map(|t| t.state)
    }

    pub fn client_peer(&self, tx: ClientTxId) -> Option<Peer> {
        self.clients.get(&tx.0).map(|t| t.peer)
    }

    pub(super) fn incoming_response(&mut self, msg: Message, now: Instant) -> Incoming {
        let found = {
            let via = match msg.top_via() {
                Ok(v) => v,
                Err(error) => return Incoming::Malformed { msg, error },
            };
            let method = match msg.cseq() {
                Ok(c) => c.method,
                Err(error) => return Incoming::Malformed { msg, error },
            };
            match via.branch() {
                Some(branch) => {
                    client_key(branch, &method, &mut self.scratch);
                    self.client_index.get(self.scratch.as_str()).copied()
                }
                None => None,
            }
        };
        let Some(id) = found else {
            return Incoming::StrayResponse { msg };
        };
        let code = msg.status().unwrap_or(0);
        let t = self.timers;
        let Some(tx) = self.clients.get_mut(&id) else {
            return Incoming::StrayResponse { msg };
        };
        let reliable = tx.peer.transport.reliable();
        let mut arm: Option<Instant> = None;
        let mut end = false;
        let out = match (tx.invite, tx.state, code) {
            (true, State::Calling | State::Proceeding, 100..=199) => {
                tx.state = State::Proceeding;
                tx.deadlines.retransmit = None;
                // Timer B only guards Calling; in Proceeding Timer C (re)starts with every
                // provisional, unless it already fired and the CANCEL grace is running.
                if !tx.timer_c_fired {
                    tx.deadlines.lifetime = t.timer_c.map(|c| now + c);
                    arm = tx.deadlines.lifetime;
                }
                Incoming::Response {
                    tx: ClientTxId(id),
                    msg,
                }
            }
            (true, State::Calling | State::Proceeding, 200..=299) => {
                tx.state = State::Accepted;
                tx.deadlines.retransmit = None;
                tx.deadlines.lifetime = Some(now + t.t1x64()); // Timer M
                arm = tx.deadlines.lifetime;
                Incoming::Response {
                    tx: ClientTxId(id),
                    msg,
                }
            }
            (true, State::Calling | State::Proceeding, _) => {
                tx.state = State::Completed;
                tx.deadlines.retransmit = None;
                let ack = ack_for_non_2xx(&tx.request, &msg);
                let peer = tx.peer;
                tx.ack = Some(ack.clone());
                if reliable {
                    end = true; // Timer D = 0
                } else {
                    tx.deadlines.lifetime = Some(now + t.d);
                    arm = tx.deadlines.lifetime;
                }
                self.transmits
                    .push_back(crate::transport::Transmit { peer, payload: ack });
                Incoming::Response {
                    tx: ClientTxId(id),
                    msg,
                }
            }
            (true, State::Accepted, 200..=299) => Incoming::Response {
                tx: ClientTxId(id),
                msg,
            },
            (true, State::Completed, 200..=299) => Incoming::StrayResponse { msg },
            (true, State::Completed, 300..) => {
                if let Some(ack) = tx.ack.clone() {
                    let peer = tx.peer;
                    self.transmits
                        .push_back(crate::transport::Transmit { peer, payload: ack });
                }
                Incoming::Absorbed
            }
            (false, State::Trying | State::Proceeding, 100..=199) => {
                tx.state = State::Proceeding;
                Incoming::Response {
                    tx: ClientTxId(id),
                    msg,
                }
            }
            (false, State::Trying | State::Proceeding, _) => {
                tx.state = State::Completed;
                tx.deadlines.retransmit = None;
                if reliable {
                    end = true; // Timer K = 0
                } else {
                    tx.deadlines.lifetime = Some(now + t.t4);
                    arm = tx.deadlines.lifetime;
                }
                Incoming::Response {
                    tx: ClientTxId(id),
                    msg,
                }
            }
            // Provisionals after a final response, anything in Completed for non-INVITE.
            _ => Incoming::Absorbed,
        };
        if let Some(at) = arm {
            self.arm(at, Side::Client, id, Slot::Lifetime);
        }
        if end {
            self.end_client(id);
        }
        out
    }

    pub(super) fn client_timer(&mut self, due: Due, now: Instant) {
        let t = self.timers;
        let Some(tx) = self.clients.get_mut(&due.id) else {
            return;
        };
        if !tx.deadlines.take(&due) {
            return;
        }
        let id = due.id;
        match due.slot {
            Slot::Retransmit => {
                let next = match (tx.invite, tx.state) {
                    // Timer A doubles without a cap; Timer B ends it.
                    (true, State::Calling) => tx.interval * 2,
                    (false, State::Trying) => (tx.interval * 2).min(t.t2),
                    (false, State::Proceeding) => t.t2,
                    _ => return,
                };
                tx.interval = next;
                tx.deadlines.retransmit = Some(now + next);
                let (peer, payload) = (tx.peer, tx.request.bytes());
                self.transmit(peer, payload);
                self.arm(now + next, Side::Client, id, Slot::Retransmit);
            }
            Slot::Lifetime => match (tx.invite, tx.state) {
                (true, State::Proceeding) if !tx.timer_c_fired => {
                    tx.timer_c_fired = true;
                    tx.deadlines.lifetime = Some(now + t.t1x64());
                    self.arm(now + t.t1x64(), Side::Client, id, Slot::Lifetime);
                    self.events
                        .push_back(TxEvent::ProceedingTimeout(ClientTxId(id)));
                }
                (_, State::Calling | State::Trying | State::Proceeding) => {
                    self.events.push_back(TxEvent::Timeout(ClientTxId(id)));
                    self.end_client(id);
                }
                _ => self.end_client(id),
            },
        }
    }

    pub(super) fn end_client(&mut self, id: u64) {
        if let Some(tx) = self.clients.remove(&id) {
            self.client_index.remove(&tx.key);
            self.events
                .push_back(TxEvent::ClientTerminated(ClientTxId(id)));
        }
    }
}
