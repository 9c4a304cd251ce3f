//! Server transactions: INVITE (RFC 3261 §17.2.1 with RFC 6026's Accepted state) and
//! non-INVITE (§17.2.2), matched by branch + sent-by + method or, for RFC 2543 peers, by the
//! request's identifying headers (§17.2.3).

use super::key::{alias_key, class, server_key};
use super::timer::{Due, Side, Slot};
use super::{Deadlines, Incoming, ServerTxId, State, Transactions, TxError, TxEvent};
use crate::build::response_to;
use crate::header::{Method, Via};
use crate::message::{Error, Message};
use crate::transport::Peer;
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub(super) struct ServerTx {
    invite: bool,
    state: State,
    /// Where responses go (RFC 3261 §18.2.2, RFC 3581).
    pub(super) peer: Peer,
    key: Box<str>,
    /// RFC 2543 matching: where the To tag starts in `key`.
    legacy_prefix: Option<usize>,
    /// RFC 2543 INVITE: the key an ACK carrying our final response's To tag has.
    ack_key: Option<Box<str>>,
    /// The INVITE, kept (as shared bytes) only while an automatic 100 may still be due.
    request: Option<Bytes>,
    /// Re-sent on request retransmissions and by Timer G.
    last_response: Option<Bytes>,
    /// The current G interval.
    interval: Duration,
    deadlines: Deadlines,
}

impl ServerTx {
    pub(super) fn deadline(&self, slot: Slot) -> Option<Instant> {
        self.deadlines.get(slot)
    }
}

/// Where responses to a request with this top Via go: over a connection, back on it; over
/// UDP, to the source address (`received`) and the `rport` source port if the client asked
/// for it, else the sent-by port.
fn response_peer(via: &Via<'_>, from: Peer) -> Peer {
    if from.transport.reliable() || via.rport().is_some() {
        return from;
    }
    Peer {
        addr: SocketAddr::new(from.addr.ip(), via.port.unwrap_or(5060)),
        transport: from.transport,
    }
}

/// What matching needs from a request, checked before anything else looks at it.
fn check_request(msg: &Message) -> Result<(), Error> {
    let method = msg.method().ok_or(Error::Invalid("not a request"))?;
    if msg.cseq()?.method != *method {
        return Err(Error::Header(
            "CSeq",
            "method does not match the request method",
        ));
    }
    Ok(())
}

impl Transactions {
    pub(super) fn incoming_request(&mut self, msg: Message, from: Peer, now: Instant) -> Incoming {
        if let Err(error) = check_request(&msg) {
            return Incoming::Malformed { msg, error };
        }
        let is_ack = msg.method() == Some(&Method::Ack);
        let invite = msg.method() == Some(&Method::Invite);
        let (found, legacy_prefix, peer) = {
            let via = match msg.top_via() {
                Ok(v) => v,
                Err(error) => return Incoming::Malformed { msg, error },
            };
            let class = class(msg.method().unwrap_or(&Method::Ack));
            let legacy = match server_key(&msg, &via, class, &mut self.scratch) {
                Ok(l) => l,
                Err(error) => return Incoming::Malformed { msg, error },
            };
            let found = self.server_index.get(self.scratch.as_str()).copied();
            (found, legacy, response_peer(&via, from))
        };
        match found {
            Some(id) if is_ack => self.ack_for(id, msg, now),
            Some(id) => self.retransmitted_request(id, &msg),
            None if is_ack => Incoming::Ack { msg },
            None => {
                let id = self.new_id();
                let key: Box<str> = self.scratch.as_str().into();
                let mut deadlines = Deadlines::default();
                let mut request = None;
                if let (true, Some(d)) = (invite, self.timers.trying) {
                    request = Some(msg.bytes());
                    deadlines.retransmit = Some(now + d);
                    self.arm(now + d, Side::Server, id, Slot::Retransmit);
                }
                self.server_index.insert(key.clone(), id);
                self.servers.insert(
                    id,
                    ServerTx {
                        invite,
                        state: if invite {
                            State::Proceeding
                        } else {
                            State::Trying
                        },
                        peer,
                        key,
                        legacy_prefix,
                        ack_key: None,
                        request,
                        last_response: None,
                        interval: self.timers.t1,
                        deadlines,
                    },
                );
                Incoming::Request {
                    tx: ServerTxId(id),
                    msg,
                }
            }
        }
    }

    fn ack_for(&mut self, id: u64, msg: Message, now: Instant) -> Incoming {
        let t4 = self.timers.t4;
        let Some(tx) = self.servers.get_mut(&id) else {
            return Incoming::Ack { msg };
        };
        match tx.state {
            State::Completed => {
                tx.state = State::Confirmed;
                tx.deadlines.retransmit = None;
                if tx.peer.transport.reliable() {
                    self.end_server(id); // Timer I = 0
                } else {
                    tx.deadlines.lifetime = Some(now + t4); // Timer I
                    self.arm(now + t4, Side::Server, id, Slot::Lifetime);
                }
                Incoming::Absorbed
            }
            State::Confirmed => Incoming::Absorbed,
            // RFC 6026 §7.1: the ACK for a 2xx goes to the TU. Also reached by an ACK that
            // precedes any final response, which only a TU can make sense of.
            _ => Incoming::Ack { msg },
        }
    }

    fn retransmitted_request(&mut self, id: u64, msg: &Message) -> Incoming {
        let auto_trying = self.timers.trying.is_some();
        let Some(tx) = self.servers.get_mut(&id) else {
            return Incoming::Absorbed;
        };
        let resend = match tx.state {
            State::Trying | State::Proceeding | State::Completed => {
                if tx.last_response.is_none() && tx.invite && auto_trying {
                    // The client is retransmitting and the TU has said nothing yet: the 100
                    // it was going to get anyway stops the retransmissions now.
                    let trying = response_to(msg, 100, None).finish();
                    tx.last_response = Some(trying);
                    tx.request = None;
                    tx.deadlines.retransmit = None;
                }
                tx.last_response.clone()
            }
            // Confirmed: the ACK came, nothing left to say. Accepted: the TU retransmits 2xx.
            State::Confirmed | State::Accepted | State::Calling => None,
        };
        if let Some(payload) = resend {
            let peer = tx.peer;
            self.transmit(peer, payload);
        }
        Incoming::Absorbed
    }

    /// Sends a response in a server transaction: provisional, final, or (INVITE in Accepted)
    /// another 2xx. The transaction keeps what it must retransmit.
    pub fn send_response(
        &mut self,
        tx: ServerTxId,
        msg: Message,
        now: Instant,
    ) -> Result<(), TxError> {
        let code = msg.status().ok_or(TxError::NotResponse)?;
        self.respond(tx, code, msg.bytes(), Some(&msg), now)
    }

    /// [`Transactions::send_response`] for a response already written out (a proxy's edited
    /// forward), saving a parse. `status` must be the response's status code.
    pub fn send_response_bytes(
        &mut self,
        tx: ServerTxId,
        status: u16,
        payload: Bytes,
        now: Instant,
    ) -> Result<(), TxError> {
        self.respond(tx, status, payload, None, now)
    }

    fn respond(
        &mut self,
        id: ServerTxId,
        code: u16,
        payload: Bytes,
        parsed: Option<&Message>,
        now: Instant,
    ) -> Result<(), TxError> {
        if !(100..=699).contains(&code) {
            return Err(TxError::BadStatus);
        }
        let t = self.timers;
        let id = id.0;
        let tx = self.servers.get_mut(&id).ok_or(TxError::NoTransaction)?;
        let reliable = tx.peer.transport.reliable();
        let peer = tx.peer;
        let mut arm: [Option<(Instant, Slot)>; 2] = [None, None];
        let mut end = false;
        match (tx.invite, tx.state, code) {
            (true, State::Proceeding, 100..=199) => {
                tx.last_response = Some(payload.clone());
                tx.request = None;
                tx.deadlines.retransmit = None;
            }
            (true, State::Proceeding, 200..=299) => {
                tx.state = State::Accepted;
                tx.request = None;
                tx.last_response = None;
                tx.deadlines.retransmit = None;
                tx.deadlines.lifetime = Some(now + t.t1x64()); // Timer L
                arm[1] = Some((now + t.t1x64(), Slot::Lifetime));
            }
            (true, State::Accepted, 200..=299) => {}
            (true, State::Proceeding, _) => {
                tx.state = State::Completed;
                tx.request = None;
                tx.last_response = Some(payload.clone());
                tx.deadlines.retransmit = None;
                if !reliable {
                    tx.interval = t.t1;
                    tx.deadlines.retransmit = Some(now + t.t1); // Timer G
                    arm[0] = Some((now + t.t1, Slot::Retransmit));
                }
                tx.deadlines.lifetime = Some(now + t.t1x64()); // Timer H
                arm[1] = Some((now + t.t1x64(), Slot::Lifetime));
                if let Some(prefix) = tx.legacy_prefix {
                    let tag = to_tag_of(parsed, &payload);
                    let alias = alias_key(&tx.key, prefix, tag.as_deref().unwrap_or(""));
                    if alias != tx.key {
                        self.server_index.insert(alias.clone(), id);
                        tx.ack_key = Some(alias);
                    }
                }
            }
            (false, State::Trying | State::Proceeding, 100..=199) => {
                tx.state = State::Proceeding;
                tx.last_response = Some(payload.clone());
            }
            (false, State::Trying | State::Proceeding, _) => {
                tx.state = State::Completed;
                tx.last_response = Some(payload.clone());
                if reliable {
                    end = true; // Timer J = 0
                } else {
                    tx.deadlines.lifetime = Some(now + t.t1x64()); // Timer J
                    arm[1] = Some((now + t.t1x64(), Slot::Lifetime));
                }
            }
            _ => return Err(TxError::AlreadyFinal),
        }
        self.transmit(peer, payload);
        for (at, slot) in arm.into_iter().flatten() {
            self.arm(at, Side::Server, id, slot);
        }
        if end {
            self.end_server(id);
        }
        self.prune();
        Ok(())
    }

    /// The INVITE server transaction a CANCEL targets (RFC 3261 §9.2): same matching as the
    /// INVITE's retransmissions would get, except for the method. `None`: answer 481.
    pub fn find_invite_for_cancel(&self, cancel: &Message) -> Option<ServerTxId> {
        let via = cancel.top_via().ok()?;
        let mut key = String::with_capacity(128);
        server_key(cancel, &via, "INVITE", &mut key).ok()?;
        let id = *self.server_index.get(key.as_str())?;
        // An RFC 2543 alias key carries the response's To tag, which a CANCEL never has.
        let tx = self.servers.get(&id)?;
        (tx.invite && *tx.key == *key).then_some(ServerTxId(id))
    }

    pub fn server_state(&self, tx: ServerTxId) -> Option<State> {
        self.servers.get(&tx.0).map(|t| t.state)
    }

    /// Where a server transaction sends its responses.
    pub fn server_peer(&self, tx: ServerTxId) -> Option<Peer> {
        self.servers.get(&tx.0).map(|t| t.peer)
    }

    pub(super) fn server_timer(&mut self, due: Due, now: Instant) {
        let t = self.timers;
        let id = due.id;
        let Some(tx) = self.servers.get_mut(&id) else {
            return;
        };
        if !tx.deadlines.take(&due) {
            return;
        }
        match (due.slot, tx.state) {
            (Slot::Retransmit, State::Proceeding) => {
                // The automatic 100 Trying: the TU has been quiet for `timers.trying`.
                let Some(req) = tx.request.take() else { return };
                if tx.last_response.is_some() {
                    return;
                }
                let Ok(req) = Message::parse(req) else { return };
                let trying = response_to(&req, 100, None).finish();
                tx.last_response = Some(trying.clone());
                let peer = tx.peer;
                self.transmit(peer, trying);
            }
            (Slot::Retransmit, State::Completed) => {
                // Timer G
                let next = (tx.interval * 2).min(t.t2);
                tx.interval = next;
                tx.deadlines.retransmit = Some(now + next);
                let peer = tx.peer;
                let payload = tx.last_response.clone();
                if let Some(p) = payload {
                    self.transmit(peer, p);
                }
                self.arm(now + next, Side::Server, id, Slot::Retransmit);
            }
            (Slot::Retransmit, _) => {}
            (Slot::Lifetime, State::Completed) if tx.invite => {
                // Timer H
                self.events.push_back(TxEvent::NoAck(ServerTxId(id)));
                self.end_server(id);
            }
            // I, J, L
            (Slot::Lifetime, _) => self.end_server(id),
        }
    }

    pub(super) fn end_server(&mut self, id: u64) {
        if let Some(tx) = self.servers.remove(&id) {
            self.server_index.remove(&tx.key);
            if let Some(k) = &tx.ack_key {
                self.server_index.remove(k);
            }
            self.events
                .push_back(TxEvent::ServerTerminated(ServerTxId(id)));
        }
    }
}

/// The To tag of a response we send, for RFC 2543 ACK matching.
fn to_tag_of(parsed: Option<&Message>, payload: &Bytes) -> Option<String> {
    let reparsed;
    let msg = match parsed {
        Some(m) => m,
        None => {
            reparsed = Message::parse(payload.clone()).ok()?;
            &reparsed
        }
    };
    msg.to().ok()?.tag().map(str::to_owned)
}
