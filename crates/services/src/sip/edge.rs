//! The SIP edge core: a transaction-stateful proxy (RFC 3261 §16) with the registrar behind it.
//! Sans-I/O: `switchboard-sip-net` feeds it messages and the clock and sends what it queues.
//!
//! Requests for a registered user fork to all of the user's contacts (first 2xx wins, the
//! others are cancelled); requests matching a route prefix go to one downstream node, sticky
//! by Call-ID, with failover on 503, timeout or transport error, and OPTIONS health probes.

use super::registrar::Registrar;
use super::routes::{NodeId, Routes};
use super::target::{host_ip, uri_peer, Identity};
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switchboard_sip::build::{cancel_for, response_to, Builder};
use switchboard_sip::transaction::{
    ClientTxId, IdGen, Incoming, ServerTxId, Timers, Transactions, TxEvent,
};
use switchboard_sip::{HeaderName, Message, Method, Peer, Transmit, Transport, Uri};
use switchboard_sip_net::Core;

#[derive(Clone, Debug)]
pub struct EdgeSettings {
    pub identity: Identity,
    pub record_route: bool,
    pub health_interval: Duration,
    /// No answer at all from a downstream node within this time: fail over.
    pub node_timeout: Duration,
    pub timers: Timers,
}

/// RFC 3261 §16 response context of one forwarded request.
struct Context {
    request: Message,
    source: Peer,
    is_invite: bool,
    branches: Vec<Branch>,
    best: Option<Message>,
    final_sent: bool,
    cancelled: bool,
    /// For node routes: the route's prefix and the nodes tried so far.
    nodes: Option<(String, Vec<NodeId>)>,
}

struct Branch {
    client: ClientTxId,
    node: Option<NodeId>,
    provisional: bool,
    done: bool,
}

pub struct SipEdge {
    tx: Transactions,
    ids: IdGen,
    registrar: Registrar,
    routes: Routes,
    settings: EdgeSettings,
    contexts: HashMap<ServerTxId, Context>,
    owner: HashMap<ClientTxId, ServerTxId>,
    probes: HashMap<ClientTxId, NodeId>,
    /// (deadline, client tx) for the "node answers at all" timer.
    node_timers: BTreeSet<(Instant, u64)>,
    node_timer_of: HashMap<u64, ClientTxId>,
    next_probe: Instant,
    next_purge: Instant,
    draining: bool,
    /// When a 2xx to an INVITE was last relayed (drain waits for its ACK).
    last_2xx: Option<Instant>,
    /// `sip_requests_total`, looked up once.
    requests: metrics::Counter,
}

/// Commands from the rest of the process.
#[derive(Clone, Debug)]
pub enum EdgeCommand {
    /// The SIP Server nodes (B2BUA) that take new calls: INVITEs that do not come from one of
    /// them are sent to one of them (sticky by Call-ID, with failover); the B2BUA's own legs
    /// come back through us to the registered phones.
    SetCallControl(Vec<std::net::SocketAddr>),
    /// The message-waiting server (the voicemail role's SIP socket): new SUBSCRIBEs with
    /// `Event: message-summary` that no Route directs elsewhere go there (RFC 3842).
    SetMwiServer(Vec<std::net::SocketAddr>),
}

/// The route name of the call-control nodes in the route table.
const CALL_CONTROL: &str = "call-control";
/// The event package of a request's `Event` header (without parameters).
fn req_event(req: &Message) -> String {
    let event = req.get(HeaderName::Event).unwrap_or("");
    event.split(';').next().unwrap_or("").trim().to_owned()
}

fn is_message_summary(package: &str) -> bool {
    package.eq_ignore_ascii_case("message-summary")
}

/// The route name of the message-waiting server.
const MWI: &str = "mwi";

/// Marker in our branches, followed by the request's loop hash (RFC 3261 §16.6 step 8).
const BRANCH_MARK: &str = "z9hG4bKsb";

impl SipEdge {
    pub fn new(
        settings: EdgeSettings,
        registrar: Registrar,
        routes: Routes,
        seed: u64,
        now: Instant,
    ) -> SipEdge {
        SipEdge {
            tx: Transactions::new(settings.timers),
            ids: IdGen::new(seed),
            registrar,
            routes,
            contexts: HashMap::new(),
            owner: HashMap::new(),
            probes: HashMap::new(),
            node_timers: BTreeSet::new(),
            node_timer_of: HashMap::new(),
            next_probe: now + settings.health_interval,
            next_purge: now + Duration::from_secs(10),
            draining: false,
            last_2xx: None,
            requests: metrics::counter!("sip_requests_total"),
            settings,
        }
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    fn reply(
        &mut self,
        stx: ServerTxId,
        req: &Message,
        code: u16,
        extra: &[(&str, String)],
        now: Instant,
    ) {
        let tag = self.ids.tag();
        let mut b = response_to(req, code, Some(&tag));
        for (n, v) in extra {
            b = b.header(n, v);
        }
        if let Err(e) = self.tx.send_response_bytes(stx, code, b.finish(), now) {
            tracing::debug!(error = %e, code, "response not sent");
        }
    }

    fn on_request(&mut self, stx: ServerTxId, req: Message, from: Peer, now: Instant) {
        self.requests.increment(1);
        if let Err(e) = req.validate() {
            metrics::counter!("sip_bad_requests_total").increment(1);
            tracing::debug!(peer = %from, error = %e, "refusing malformed request");
            let warning = format!("399 switchboard \"{}\"", e.to_string().replace('"', "'"));
            return self.reply(stx, &req, e.status(), &[("Warning", warning)], now);
        }
        let method = req.method().cloned().unwrap_or(Method::Ack);
        let in_dialog = req.to().is_ok_and(|t| t.tag().is_some());
        if self.draining && !in_dialog && !matches!(method, Method::Cancel) {
            return self.reply(stx, &req, 503, &[("Retry-After", "5".into())], now);
        }
        if method == Method::Cancel {
            return self.on_cancel(stx, &req, now);
        }
        let uri = match req.request_uri() {
            Ok(u @ (Uri::Sip(_) | Uri::Tel(_))) => u,
            _ => return self.reply(stx, &req, 416, &[], now),
        };
        let unsupported: Vec<String> = req
            .option_tags(HeaderName::ProxyRequire)
            .map(str::to_string)
            .collect();
        if !unsupported.is_empty() {
            return self.reply(
                stx,
                &req,
                420,
                &[("Unsupported", unsupported.join(", "))],
                now,
            );
        }
        let to_us = self.settings.identity.is_us_uri(&uri);
        let routes = req.routes().unwrap_or_default();
        // Our own Route entries (one, or two after a transport change) go; a remaining Route
        // decides the next hop (loose routing, §16.4, §16.6 step 7).
        let pop_route = self.own_routes(&routes);
        let next_hop = match routes.get(pop_route) {
            Some(r) => Some(r.uri.as_sip().and_then(uri_peer)),
            None if !to_us => Some(uri.as_sip().and_then(uri_peer)),
            None => None,
        };
        let user = uri
            .as_sip()
            .and_then(|u| u.user_unescaped())
            .or_else(|| uri.user().map(str::to_string));
        let host = uri
            .as_sip()
            .map(|u| u.host.as_str().to_string())
            .unwrap_or_default();
        drop(routes);
        if method == Method::Register && next_hop.is_none() {
            let tag = self.ids.tag();
            let resp = self.registrar.handle(&req, from, now, unix_now(), &tag);
            let code = Message::parse(resp.clone())
                .ok()
                .and_then(|m| m.status())
                .unwrap_or(500);
            let _ = self.tx.send_response_bytes(stx, code, resp, now);
            return;
        }
        if req.max_forwards().ok().flatten() == Some(0) {
            return self.reply(stx, &req, 483, &[], now);
        }
        if self.is_loop(&req) {
            return self.reply(stx, &req, 482, &[], now);
        }
        if method == Method::Invite {
            self.reply(stx, &req, 100, &[], now);
        }
        // A number with a route of its own in `proxy.routes` goes where the operator sent
        // it; call control (the SIP Server) takes every other new call.
        let to_call_control = method == Method::Invite
            && !in_dialog
            && next_hop.is_none()
            && user
                .as_deref()
                .is_none_or(|u| self.routes.route_for(u).is_none())
            && self.needs_call_control(from);
        let mut ctx = Context {
            request: req,
            source: from,
            is_invite: method == Method::Invite,
            branches: Vec::new(),
            best: None,
            final_sent: false,
            cancelled: false,
            nodes: None,
        };
        let to_mwi = method == Method::Subscribe
            && !in_dialog
            && next_hop.is_none()
            && self.routes.named(MWI).is_some_and(|r| !r.nodes.is_empty())
            && is_message_summary(&req_event(&ctx.request));
        if to_call_control || to_mwi {
            let name = if to_mwi { MWI } else { CALL_CONTROL };
            ctx.nodes = Some((name.to_string(), Vec::new()));
            self.next_node(stx, &mut ctx, pop_route, now);
            if ctx.branches.is_empty() {
                return self.reply(stx, &ctx.request, 503, &[], now);
            }
            self.contexts.insert(stx, ctx);
            return;
        }
        match next_hop {
            Some(Some(peer)) => {
                self.fork(stx, &mut ctx, peer, None, None, pop_route, now);
            }
            Some(None) => return self.reply(stx, &ctx.request, 404, &[], now),
            None => {
                if !self.route_to_users(stx, &mut ctx, user, &host, pop_route, now) {
                    return;
                }
            }
        }
        if ctx.branches.is_empty() {
            let code = if ctx.nodes.is_some() { 503 } else { 480 };
            return self.reply(stx, &ctx.request, code, &[], now);
        }
        self.contexts.insert(stx, ctx);
    }

    /// Requests for our domain: registered contacts, else a downstream route, else 480/404.
    /// Returns false when it already answered.
    fn route_to_users(
        &mut self,
        stx: ServerTxId,
        ctx: &mut Context,
        user: Option<String>,
        host: &str,
        pop: usize,
        now: Instant,
    ) -> bool {
        let Some(user) = user else {
            // Addressed to the proxy itself: answer OPTIONS (keep-alive and capability probes).
            let code = if ctx.request.method() == Some(&Method::Options) {
                200
            } else {
                404
            };
            let allow = ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, REFER, NOTIFY, SUBSCRIBE, MESSAGE".to_string());
            self.reply(stx, &ctx.request, code, &[allow], now);
            return false;
        };
        let (contacts, known) = self.user_contacts(&user, host, now);
        if !contacts.is_empty() {
            for (contact, peer) in contacts {
                self.fork(stx, ctx, peer, Some(&contact), None, pop, now);
            }
            return true;
        }
        if let Some(route) = self.routes.route_for(&user) {
            ctx.nodes = Some((route.prefix.clone(), Vec::new()));
            self.next_node(stx, ctx, pop, now);
            return true;
        }
        let code = if known { 480 } else { 404 };
        self.reply(stx, &ctx.request, code, &[], now);
        false
    }

    /// Registered contacts of `user` in the tenant of `host` (URI and where to send), and
    /// whether the user is configured at all.
    fn user_contacts(&self, user: &str, host: &str, now: Instant) -> (Vec<(String, Peer)>, bool) {
        let Some(t) = self.registrar.tenant_for_host(host) else {
            return (Vec::new(), false);
        };
        let aor = super::registrar::aor_key(user, t);
        let contacts = match self.registrar.location().lock() {
            Ok(loc) => loc
                .lookup(&aor, now)
                .into_iter()
                .map(|b| (b.contact.clone(), contact_peer(&b.contact, b.source)))
                .collect(),
            Err(_) => Vec::new(),
        };
        (contacts, self.registrar.user_exists(t, user))
    }

    /// Where a stateless request for one of our users goes: the first registered contact, else
    /// the node the route's sticky selection gives for this Call-ID.
    fn stateless_target(
        &self,
        user: &str,
        host: &str,
        call_id: &str,
    ) -> Option<(Option<String>, Peer)> {
        if let Some((contact, peer)) = self
            .user_contacts(user, host, Instant::now())
            .0
            .into_iter()
            .next()
        {
            return Some((Some(contact), peer));
        }
        let route = self.routes.route_for(user)?;
        let node = self.routes.pick(route, call_id, &[])?;
        Some((None, Peer::udp(self.routes.node(node).addr)))
    }

    /// Forwards to the next untried node of the context's route; false if none is left.
    fn next_node(&mut self, stx: ServerTxId, ctx: &mut Context, pop: usize, now: Instant) -> bool {
        let Some((prefix, tried)) = ctx.nodes.clone() else {
            return false;
        };
        let route = match prefix.as_str() {
            CALL_CONTROL => self.routes.named(CALL_CONTROL).cloned(),
            MWI => self.routes.named(MWI).cloned(),
            p => self.routes.route_for(p).cloned(),
        };
        let Some(route) = route else {
            return false;
        };
        let call_id = ctx.request.call_id().unwrap_or("").to_string();
        let Some(node) = self.routes.pick(&route, &call_id, &tried) else {
            return false;
        };
        if let Some((_, t)) = ctx.nodes.as_mut() {
            t.push(node);
        }
        let peer = Peer::udp(self.routes.node(node).addr);
        self.fork(stx, ctx, peer, None, Some(node), pop, now)
    }

    /// Creates one branch (client transaction) of the context.
    #[allow(clippy::too_many_arguments)]
    fn fork(
        &mut self,
        stx: ServerTxId,
        ctx: &mut Context,
        peer: Peer,
        new_uri: Option<&str>,
        node: Option<NodeId>,
        pop_route: usize,
        now: Instant,
    ) -> bool {
        let Some(local) = self.settings.identity.local(peer.transport) else {
            tracing::warn!(%peer, "no local socket for the transport of this destination");
            return false;
        };
        let branch = format!(
            "{BRANCH_MARK}{:016x}.{:x}",
            loop_hash(&ctx.request),
            self.ids.next_u64()
        );
        let via = format!(
            "SIP/2.0/{} {};branch={branch}",
            peer.transport.via_token(),
            local
        );
        let creates_dialog = matches!(
            ctx.request.method(),
            Some(Method::Invite | Method::Subscribe | Method::Refer)
        );
        let in_dialog = ctx.request.to().is_ok_and(|t| t.tag().is_some());
        let rr = match self.settings.record_route && creates_dialog && !in_dialog {
            true => record_routes(
                &self.settings.identity,
                ctx.source.transport,
                peer.transport,
            ),
            false => Vec::new(),
        };
        let hop = Hop {
            via: &via,
            source: ctx.source,
            pop_route,
            record_routes: &rr,
            new_uri,
        };
        let out = match forward_bytes(&ctx.request, &hop).and_then(Message::parse) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "request could not be forwarded");
                return false;
            }
        };
        match self.tx.send_request(out, peer, now) {
            Ok(client) => {
                self.owner.insert(client, stx);
                ctx.branches.push(Branch {
                    client,
                    node,
                    provisional: false,
                    done: false,
                });
                if node.is_some() {
                    self.arm_node_timer(client, now);
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not start client transaction");
                false
            }
        }
    }

    fn arm_node_timer(&mut self, client: ClientTxId, now: Instant) {
        let key = (now + self.settings.node_timeout, client.as_u64());
        self.node_timers.insert(key);
        self.node_timer_of.insert(client.as_u64(), client);
    }

    fn disarm_node_timer(&mut self, client: ClientTxId) {
        if self.node_timer_of.remove(&client.as_u64()).is_some() {
            self.node_timers.retain(|(_, id)| *id != client.as_u64());
        }
    }

    /// True when call control is on and the request does not come from a call-control node.
    fn needs_call_control(&self, from: Peer) -> bool {
        let Some(route) = self.routes.named(CALL_CONTROL) else {
            return false;
        };
        !route.nodes.is_empty()
            && !route
                .nodes
                .iter()
                .any(|n| self.routes.node(*n).addr == from.addr)
    }

    /// How many leading Route entries name us.
    fn own_routes(&self, routes: &[switchboard_sip::NameAddr<'_>]) -> usize {
        routes
            .iter()
            .take_while(|r| self.settings.identity.is_us_uri(&r.uri))
            .count()
    }

    fn is_loop(&self, req: &Message) -> bool {
        let mark = format!("{BRANCH_MARK}{:016x}.", loop_hash(req));
        let mut looped = false;
        let _ = req.for_each_via(|v| {
            if self
                .settings
                .identity
                .sent_by_is_us(v.host.as_str(), v.port)
                && v.branch().is_some_and(|b| b.starts_with(&mark))
            {
                looped = true;
            }
        });
        looped
    }

    fn on_cancel(&mut self, stx: ServerTxId, cancel: &Message, now: Instant) {
        let Some(invite) = self.tx.find_invite_for_cancel(cancel) else {
            return self.reply(stx, cancel, 481, &[], now);
        };
        self.reply(stx, cancel, 200, &[], now);
        let Some(mut ctx) = self.contexts.remove(&invite) else {
            return;
        };
        ctx.cancelled = true;
        for i in 0..ctx.branches.len() {
            if ctx.branches[i].provisional && !ctx.branches[i].done {
                self.cancel_branch(ctx.branches[i].client, None, now);
            }
        }
        self.contexts.insert(invite, ctx);
    }

    fn cancel_branch(&mut self, client: ClientTxId, reason: Option<&str>, now: Instant) {
        let Some(req) = self.tx.client_request(client) else {
            return;
        };
        let Some(peer) = self.tx.client_peer(client) else {
            return;
        };
        let mut bytes = cancel_for(req);
        if let Some(r) = reason {
            if let Ok(m) = Message::parse(bytes.clone()) {
                bytes = m.edit().add_header("Reason", r).finish();
            }
        }
        if let Ok(m) = Message::parse(bytes) {
            if let Err(e) = self.tx.send_request(m, peer, now) {
                tracing::debug!(error = %e, "CANCEL not sent");
            }
        }
    }

    /// Records the outcome of an OPTIONS probe; false if `client` was not a probe.
    fn probe_result(&mut self, client: ClientTxId, up: bool, now: Instant) -> bool {
        let Some(node) = self.probes.remove(&client) else {
            return false;
        };
        if self.routes.set_up(node, up, now) {
            let addr = self.routes.node(node).addr;
            match up {
                true => tracing::info!(node = %addr, "downstream node is up"),
                false => {
                    tracing::warn!(node = %addr, "downstream node is down (no OPTIONS answer)")
                }
            }
        }
        true
    }

    fn on_response(&mut self, client: ClientTxId, resp: Message, now: Instant) {
        self.disarm_node_timer(client);
        if self.probe_result(client, true, now) {
            return;
        }
        let Some(&stx) = self.owner.get(&client) else {
            return self.forward_response_statelessly(resp);
        };
        let Some(mut ctx) = self.contexts.remove(&stx) else {
            return self.forward_response_statelessly(resp);
        };
        self.branch_response(stx, &mut ctx, client, resp, now);
        self.finish_if_done(stx, &mut ctx, now);
        self.contexts.insert(stx, ctx);
    }

    fn branch_response(
        &mut self,
        stx: ServerTxId,
        ctx: &mut Context,
        client: ClientTxId,
        resp: Message,
        now: Instant,
    ) {
        let code = resp.status().unwrap_or(500);
        let Some(bi) = ctx.branches.iter().position(|b| b.client == client) else {
            return;
        };
        if code < 200 {
            ctx.branches[bi].provisional = true;
            if ctx.cancelled && !ctx.branches[bi].done {
                self.cancel_branch(client, None, now);
            }
            if code > 100 && !ctx.final_sent {
                self.relay(stx, &ctx.request, code, &resp, now);
            }
            return;
        }
        ctx.branches[bi].done = true;
        if (200..300).contains(&code) {
            self.relay(stx, &ctx.request, code, &resp, now);
            if ctx.is_invite {
                self.last_2xx = Some(now);
            }
            ctx.final_sent = true;
            self.cancel_others(
                ctx,
                client,
                "SIP;cause=200;text=\"Call completed elsewhere\"",
                now,
            );
            return;
        }
        if ctx.final_sent {
            return;
        }
        let node = ctx.branches[bi].node;
        if let (Some(n), true) = (node, code == 503 || code == 408) {
            if code == 408 && self.routes.set_up(n, false, now) {
                tracing::warn!(node = %self.routes.node(n).addr, "downstream node timed out; marked down");
            }
            if !ctx.cancelled && self.next_node(stx, ctx, 0, now) {
                metrics::counter!("proxy_failovers_total").increment(1);
                return;
            }
        }
        if code >= 600 {
            self.cancel_others(ctx, client, "SIP;cause=600", now);
        }
        if better(&resp, ctx.best.as_ref()) {
            ctx.best = Some(resp);
        }
    }

    fn cancel_others(&mut self, ctx: &mut Context, winner: ClientTxId, reason: &str, now: Instant) {
        let losers: Vec<ClientTxId> = ctx
            .branches
            .iter_mut()
            .filter(|b| b.client != winner && !b.done)
            .map(|b| {
                b.done = true;
                b.client
            })
            .collect();
        if ctx.is_invite {
            for client in losers {
                self.disarm_node_timer(client);
                self.cancel_branch(client, Some(reason), now);
            }
        }
    }

    /// When every branch has a final response, sends the best one (§16.7 step 6).
    fn finish_if_done(&mut self, stx: ServerTxId, ctx: &mut Context, now: Instant) {
        if ctx.final_sent || ctx.branches.iter().any(|b| !b.done) {
            return;
        }
        ctx.final_sent = true;
        match ctx.best.take() {
            Some(best) if !ctx.cancelled || best.status() == Some(487) => {
                let code = best.status().unwrap_or(500);
                if code == 503 {
                    // A 503 from downstream means that node is unavailable, not us (§16.7).
                    let req = ctx.request.clone();
                    self.reply(stx, &req, 500, &[], now);
                } else {
                    let req = ctx.request.clone();
                    self.relay(stx, &req, code, &best, now);
                }
            }
            _ => {
                let req = ctx.request.clone();
                let code = if ctx.cancelled { 487 } else { 408 };
                self.reply(stx, &req, code, &[], now);
            }
        }
    }

    /// Sends a downstream response upstream, minus our Via. A response that carried only our
    /// Via was meant for us (§16.7 step 3) and is not forwarded: the caller gets the same status
    /// from us instead.
    fn relay(
        &mut self,
        stx: ServerTxId,
        request: &Message,
        code: u16,
        resp: &Message,
        now: Instant,
    ) {
        if resp.via_count().unwrap_or(0) < 2 {
            return self.reply(stx, request, code, &[], now);
        }
        match resp.edit().remove_top_via() {
            Ok(e) => {
                if let Err(err) = self.tx.send_response_bytes(stx, code, e.finish(), now) {
                    tracing::debug!(error = %err, code, "response not relayed");
                }
            }
            Err(e) => tracing::debug!(error = %e, "response without a Via to remove"),
        }
    }

    fn forward_response_statelessly(&mut self, resp: Message) {
        let ours = resp.top_via().is_ok_and(|v| {
            v.branch().is_some_and(|b| b.starts_with(BRANCH_MARK))
                && self
                    .settings
                    .identity
                    .sent_by_is_us(v.host.as_str(), v.port)
        });
        if !ours {
            metrics::counter!("sip_stray_responses_dropped_total").increment(1);
            return;
        }
        let Ok(out) = resp.edit().remove_top_via().map(|e| e.finish()) else {
            return;
        };
        let Ok(next) = Message::parse(out.clone()) else {
            return;
        };
        let Ok(via) = next.top_via() else { return };
        let (host, port) = switchboard_sip::edit::response_target(&via);
        let transport = Transport::from_via_token(via.transport).unwrap_or(Transport::Udp);
        if let Some(ip) = host_ip(host) {
            // A broadcast or unspecified "received" is never a place to send (RFC 4475 §3.3.10).
            let bad =
                matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast()) || ip.is_unspecified();
            if !bad {
                self.tx.send_stateless(
                    out,
                    Peer {
                        addr: std::net::SocketAddr::new(ip, port),
                        transport,
                    },
                );
            }
        }
    }

    /// ACK for a 2xx and other requests outside transactions: routed like any request, no state.
    fn forward_ack(&mut self, ack: Message, from: Peer) {
        if ack.validate().is_err() || ack.max_forwards().ok().flatten() == Some(0) {
            return;
        }
        let routes = ack.routes().unwrap_or_default();
        let pop = self.own_routes(&routes);
        let next = routes.get(pop).and_then(|r| r.uri.as_sip().copied());
        let Ok(uri) = ack.request_uri() else { return };
        let mut new_uri = None;
        let target = match next {
            Some(n) => uri_peer(&n),
            None if self.settings.identity.is_us_uri(&uri) => {
                // A UA that ignores Record-Route/Contact sends the ACK to us: deliver it where
                // the INVITE went (first contact of the user, or the sticky downstream node).
                let user = uri
                    .as_sip()
                    .and_then(|u| u.user_unescaped())
                    .unwrap_or_default();
                let host = uri
                    .as_sip()
                    .map(|u| u.host.as_str().to_string())
                    .unwrap_or_default();
                let call_id = ack.call_id().unwrap_or("").to_string();
                self.stateless_target(&user, &host, &call_id)
                    .map(|(contact, peer)| {
                        new_uri = contact;
                        peer
                    })
            }
            None => uri.as_sip().and_then(uri_peer),
        };
        let Some(peer) = target else { return };
        let Some(local) = self.settings.identity.local(peer.transport) else {
            return;
        };
        let via = format!(
            "SIP/2.0/{} {};branch={}",
            peer.transport.via_token(),
            local,
            self.ids.branch()
        );
        let hop = Hop {
            via: &via,
            source: from,
            pop_route: pop,
            record_routes: &[],
            new_uri: new_uri.as_deref(),
        };
        if let Ok(out) = forward_bytes(&ack, &hop) {
            self.tx.send_stateless(out, peer);
        }
    }

    fn on_event(&mut self, ev: TxEvent, now: Instant) {
        match ev {
            TxEvent::Timeout(c) | TxEvent::TransportError(c) => self.branch_failed(c, now),
            TxEvent::ProceedingTimeout(c) => self.cancel_branch(c, Some("SIP;cause=408"), now),
            TxEvent::ClientTerminated(c) => {
                self.owner.remove(&c);
                self.probes.remove(&c);
                self.disarm_node_timer(c);
            }
            TxEvent::ServerTerminated(s) => {
                if let Some(ctx) = self.contexts.remove(&s) {
                    for b in ctx.branches {
                        self.owner.remove(&b.client);
                    }
                }
            }
            TxEvent::NoAck(_) | TxEvent::ServerTransportError(_) => {}
        }
    }

    /// A branch got no answer (timer or transport): for probes the node is down; for requests
    /// it is a 408 (§16.7 step 2), which may trigger failover.
    fn branch_failed(&mut self, client: ClientTxId, now: Instant) {
        self.disarm_node_timer(client);
        if self.probe_result(client, false, now) {
            return;
        }
        let Some(&stx) = self.owner.get(&client) else {
            return;
        };
        let Some(mut ctx) = self.contexts.remove(&stx) else {
            return;
        };
        if let Some(b) = ctx.branches.iter().find(|b| b.client == client) {
            if !b.done {
                let timeout = response_to(&ctx.request, 408, Some("timeout")).finish();
                if let Ok(m) = Message::parse(timeout) {
                    // Give it our Via on top so `relay` can strip it like a real response.
                    let via = self
                        .tx
                        .client_request(client)
                        .and_then(|r| r.get(HeaderName::Via).map(str::to_string));
                    let m = match via {
                        Some(v) => Message::parse(m.edit().prepend_via(&v).finish()).unwrap_or(m),
                        None => m,
                    };
                    self.branch_response(stx, &mut ctx, client, m, now);
                }
            }
        }
        self.finish_if_done(stx, &mut ctx, now);
        self.contexts.insert(stx, ctx);
    }

    fn node_timeouts(&mut self, now: Instant) {
        while let Some(&(due, id)) = self.node_timers.first() {
            if due > now {
                break;
            }
            self.node_timers.pop_first();
            if let Some(client) = self.node_timer_of.remove(&id) {
                metrics::counter!("proxy_node_timeouts_total").increment(1);
                self.branch_failed(client, now);
            }
        }
    }

    fn probe_nodes(&mut self, now: Instant) {
        if now < self.next_probe {
            return;
        }
        self.next_probe = now + self.settings.health_interval;
        let Some(local) = self.settings.identity.udp else {
            return;
        };
        for id in 0..self.routes.nodes().len() {
            let addr = self.routes.node(id).addr;
            let req = Builder::request(&Method::Options, &format!("sip:{addr}"))
                .header(
                    "Via",
                    format_args!("SIP/2.0/UDP {local};branch={}", self.ids.branch()),
                )
                .header("Max-Forwards", 70)
                .header(
                    "From",
                    format_args!("<sip:switchboard@{local}>;tag={}", self.ids.tag()),
                )
                .header("To", format_args!("<sip:{addr}>"))
                .header("Call-ID", self.ids.call_id())
                .header("CSeq", "1 OPTIONS")
                .finish();
            let Ok(m) = Message::parse(req) else { continue };
            if let Ok(client) = self.tx.send_request(m, Peer::udp(addr), now) {
                self.probes.insert(client, id);
                self.arm_node_timer(client, now);
            }
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        self.node_timeouts(now);
        self.probe_nodes(now);
        if now >= self.next_purge {
            self.next_purge = now + Duration::from_secs(10);
            if let Ok(mut loc) = self.registrar.location().lock() {
                loc.purge(now);
            }
        }
        while let Some(ev) = self.tx.poll_event() {
            self.on_event(ev, now);
        }
    }
}

impl switchboard_sip_net::Controlled for SipEdge {
    type Command = EdgeCommand;
    type Output = std::convert::Infallible;

    fn handle_command(&mut self, cmd: EdgeCommand, _now: Instant) {
        match cmd {
            EdgeCommand::SetCallControl(addrs) => {
                tracing::info!(nodes = ?addrs, "call control: new INVITEs go to the SIP Server");
                self.routes.set_named(CALL_CONTROL, &addrs);
            }
            EdgeCommand::SetMwiServer(addrs) => {
                tracing::info!(servers = ?addrs, "message-summary SUBSCRIBEs go to voicemail");
                self.routes.set_named(MWI, &addrs);
            }
        }
    }

    fn poll_output(&mut self) -> Option<std::convert::Infallible> {
        None
    }
}

impl Core for SipEdge {
    fn handle_message(&mut self, msg: Message, from: Peer, now: Instant) {
        match self.tx.handle_incoming(msg, from, now) {
            Incoming::Request { tx, msg } => self.on_request(tx, msg, from, now),
            Incoming::Response { tx, msg } => self.on_response(tx, msg, now),
            Incoming::Ack { msg } => self.forward_ack(msg, from),
            Incoming::StrayResponse { msg } => self.forward_response_statelessly(msg),
            Incoming::Absorbed => {}
            Incoming::Malformed { msg, error } => {
                // Full validation names the first fault in RFC order (version before headers).
                let error = msg.validate().err().unwrap_or(error);
                metrics::counter!("sip_malformed_total").increment(1);
                tracing::debug!(peer = %from, %error, "malformed message");
                // Answer at the source address even when the Via is what is broken.
                if msg.is_request() && msg.method() != Some(&Method::Ack) {
                    let resp = response_to(&msg, error.status(), Some(&self.ids.tag()))
                        .header(
                            "Warning",
                            format_args!(
                                "399 switchboard \"{}\"",
                                error.to_string().replace('"', "'")
                            ),
                        )
                        .finish();
                    self.tx.send_stateless(resp, from);
                }
            }
        }
        self.housekeeping(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.tx.handle_timeout(now);
        self.housekeeping(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.tx.poll_transmit()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_probe.min(self.next_purge);
        if let Some(x) = self.tx.poll_timeout() {
            t = t.min(x);
        }
        if let Some(&(x, _)) = self.node_timers.first() {
            t = t.min(x);
        }
        Some(t)
    }

    fn start_drain(&mut self, _now: Instant) {
        self.draining = true;
    }

    /// Idle once every forwarded request has its final response and the ACK of the last 2xx
    /// (end to end, not in a transaction) has had time to pass through.
    fn is_idle(&self, now: Instant) -> bool {
        let ack_window = self.settings.timers.t1 * 4;
        self.contexts.values().all(|c| c.final_sent)
            && self
                .last_2xx
                .is_none_or(|t| now.duration_since(t) >= ack_window)
    }
}

/// Where to send a request for a registered contact: the Contact URI's address (RFC 3261
/// §16.5), unless the contact is a private address other than the one the REGISTER came from
/// (the phone is behind NAT): then the REGISTER's source, where its NAT binding is open.
fn contact_peer(contact: &str, source: Peer) -> Peer {
    let Ok(Uri::Sip(u)) = Uri::parse(contact) else {
        return source;
    };
    match uri_peer(&u) {
        Some(p) if p.addr.ip() == source.addr.ip() || !is_private(p.addr.ip()) => p,
        _ => source,
    }
}

fn is_private(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v) => {
            v.is_private()
                || v.is_link_local()
                || (v.octets()[0] == 100 && (v.octets()[1] & 0xc0) == 64)
        }
        std::net::IpAddr::V6(v) => (v.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Our Record-Route entries for a request arriving on `inbound` and leaving on `outbound`:
/// one, or two when the transports differ (RFC 5658), the outbound side on top so that each
/// side of the dialog reaches us on its own transport.
fn record_routes(id: &Identity, inbound: Transport, outbound: Transport) -> Vec<String> {
    let uri = |t: Transport| {
        id.local(t).map(|a| match t {
            Transport::Udp => format!("<sip:{a};lr>"),
            _ => format!(
                "<sip:{a};transport={};lr>",
                t.via_token().to_ascii_lowercase()
            ),
        })
    };
    let same_side = inbound == outbound
        || id.local(inbound) == id.local(outbound) && inbound.reliable() == outbound.reliable();
    match (uri(outbound), uri(inbound)) {
        (Some(out), Some(_)) if same_side => vec![out],
        (Some(out), Some(inb)) => vec![out, inb],
        (Some(out), None) => vec![out],
        _ => Vec::new(),
    }
}

/// What one forwarding hop changes in a request (§16.6 steps 2-8).
struct Hop<'a> {
    via: &'a str,
    source: Peer,
    /// How many leading Route entries are ours and go.
    pop_route: usize,
    /// Record-Route values to add, in this order (the last added ends on top).
    record_routes: &'a [String],
    new_uri: Option<&'a str>,
}

fn forward_bytes(req: &Message, hop: &Hop<'_>) -> Result<Bytes, switchboard_sip::Error> {
    let mut e = req
        .edit()
        .mark_received(hop.source.addr)?
        .prepend_via(hop.via)
        .decrement_max_forwards()?;
    for _ in 0..hop.pop_route {
        e = e.pop_route()?;
    }
    for rr in hop.record_routes {
        e = e.add_record_route(rr);
    }
    if let Some(u) = hop.new_uri {
        e = e.set_request_uri(u);
    }
    Ok(e.finish())
}

/// RFC 3261 §16.7 step 6 preference: any 6xx, else the lowest class; 503 last among 5xx.
fn better(new: &Message, old: Option<&Message>) -> bool {
    let Some(old) = old else { return true };
    let rank = |m: &Message| match m.status().unwrap_or(500) {
        600..=699 => 0,
        503 => 1000,
        c => c,
    };
    rank(new) < rank(old)
}

/// The loop-detection hash of §16.6 step 8: what identifies the request at this hop.
fn loop_hash(req: &Message) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    req.request_uri_str().hash(&mut h);
    req.call_id().ok().hash(&mut h);
    req.cseq().ok().map(|c| c.seq).hash(&mut h);
    req.from().ok().and_then(|f| f.tag()).hash(&mut h);
    req.to().ok().and_then(|t| t.tag()).hash(&mut h);
    for name in [
        HeaderName::ProxyRequire,
        HeaderName::ProxyAuthorization,
        HeaderName::Route,
    ] {
        for f in req.fields_named(name) {
            req.value(f).ok().hash(&mut h);
        }
    }
    h.finish()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// For the HTTP API: a clone-friendly peek at registrations.
pub fn registrations_json(loc: &super::location::Location, now: Instant) -> serde_json::Value {
    serde_json::json!({ "registrations": loc.views(now) })
}
