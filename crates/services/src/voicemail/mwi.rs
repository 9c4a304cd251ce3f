//! Message waiting (RFC 3842): `NOTIFY` with `Event: message-summary` and an
//! `application/simple-message-summary` body to the phones of a mailbox's owner.
//!
//! [`MwiCore`] is a sans-I/O SIP core on the voicemail role's own UDP socket (driven by
//! `sip-net` like the other cores):
//! * [`MwiCommand::Update`] gives it what a DN's phones should show and where they are
//!   registered: it keeps the counts, and sends an unsolicited NOTIFY (out of dialog, the
//!   common practice of voicemail servers) to each contact, and an in-dialog NOTIFY to each
//!   subscription of that DN.
//! * `SUBSCRIBE` with `Event: message-summary` (the SIP edge sends them here, see
//!   `EdgeCommand::SetMwiServer`) is answered 200 and followed by a NOTIFY with the counts
//!   at once; `Expires: 0` ends the subscription (NOTIFY with `terminated`). Other events
//!   get 489, other methods 405.
//!
//! [`Mwi`] is the async handle the role uses: it turns a mailbox change into per-DN counts
//! (an agent's DN sees its own mailbox plus its groups' mailboxes) and the contacts from the
//! location service of the SIP edge in this process.

use crate::dialplan::role::DialplanCell;
use crate::dialplan::Dialplan;
use crate::sip::role::SharedLocation;
use crate::sip::target::uri_peer;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_sip::build::{response_to, Builder};
use switchboard_sip::transaction::{IdGen, Incoming, ServerTxId, Timers, Transactions, TxEvent};
use switchboard_sip::{HeaderName, Message, Method, Peer, Transmit};
use switchboard_sip_net::{Controlled, Core};
use switchboard_store::{Counts, SharedStore};
use tokio::sync::mpsc;

/// The body of a message-summary NOTIFY (RFC 3842 §5.2).
pub fn summary_body(account: &str, counts: Counts) -> String {
    let waiting = if counts.new > 0 { "yes" } else { "no" };
    format!(
        "Messages-Waiting: {waiting}\r\nMessage-Account: {account}\r\nVoice-Message: {}/{} (0/0)\r\n",
        counts.new, counts.saved
    )
}

/// What the phones of DN `dn` should show: the sum over the mailboxes it reaches.
pub fn dn_counts(per_mailbox: &BTreeMap<String, Counts>, mailboxes_of_dn: &[String]) -> Counts {
    mailboxes_of_dn
        .iter()
        .filter_map(|m| per_mailbox.get(m))
        .fold(Counts::default(), |acc, c| Counts {
            new: acc.new + c.new,
            saved: acc.saved + c.saved,
        })
}

/// The DNs whose phones show mailbox `number` of `tenant`: its agent's DN, or the DNs of
/// its group's agents.
pub fn dns_of_mailbox(plan: &Dialplan, tenant: &str, number: &str) -> Vec<String> {
    let Some(m) = plan.mailbox(tenant, number) else {
        return Vec::new();
    };
    let mut dns: Vec<String> = plan
        .agents(tenant)
        .iter()
        .filter(|a| {
            m.owner_agent.as_deref() == Some(a.login_id.as_str())
                || m.owner_group.as_ref().is_some_and(|g| a.groups.contains(g))
        })
        .filter_map(|a| a.dn.clone())
        .collect();
    dns.sort();
    dns.dedup();
    dns
}

/// Subscriptions last at most this long; a SUBSCRIBE without Expires gets it.
const DEFAULT_EXPIRES_S: u32 = 3600;

#[derive(Clone, Debug, PartialEq)]
pub enum MwiCommand {
    /// DN `user` of `domain` has `counts` now; its registered contacts (URI and where to
    /// send) get an unsolicited NOTIFY.
    Update {
        user: String,
        domain: String,
        counts: Counts,
        contacts: Vec<(String, Peer)>,
    },
}

/// A message-summary subscription (a dialog we are the notifier of).
#[derive(Clone, Debug)]
struct Subscription {
    aor: String,
    call_id: String,
    local_tag: String,
    /// The subscriber's From, as it wrote it (our To).
    remote: String,
    /// Our To as the subscriber wrote it, with our tag (our From).
    local: String,
    target: String,
    peer: Peer,
    routes: Vec<String>,
    cseq: u32,
    expires_at: Instant,
}

pub struct MwiCore {
    tx: Transactions,
    ids: IdGen,
    local: SocketAddr,
    counts: HashMap<String, Counts>,
    subs: HashMap<String, Subscription>,
    outputs: VecDeque<()>,
}

impl MwiCore {
    pub fn new(local: SocketAddr, timers: Timers, seed: u64) -> MwiCore {
        MwiCore {
            tx: Transactions::new(timers),
            ids: IdGen::new(seed),
            local,
            counts: HashMap::new(),
            subs: HashMap::new(),
            outputs: VecDeque::new(),
        }
    }

    /// Live subscriptions (tests, metrics).
    pub fn subscriptions(&self) -> usize {
        self.subs.len()
    }

    fn via(&mut self) -> String {
        format!("SIP/2.0/UDP {};branch={}", self.local, self.ids.branch())
    }

    /// The counts of `aor`; a phone that subscribes with an IP address as host (not our
    /// domain) gets those of the one DN with its user part, if there is only one.
    fn counts_of(&self, aor: &str) -> Counts {
        if let Some(c) = self.counts.get(aor) {
            return *c;
        }
        let user = aor.split('@').next().unwrap_or(aor);
        let mut same_user = self
            .counts
            .iter()
            .filter(|(k, _)| k.split('@').next() == Some(user));
        match (same_user.next(), same_user.next()) {
            (Some((_, c)), None) => *c,
            _ => Counts::default(),
        }
    }

    fn send(&mut self, bytes: bytes::Bytes, peer: Peer, now: Instant) {
        match Message::parse(bytes) {
            Ok(msg) => {
                if let Err(e) = self.tx.send_request(msg, peer, now) {
                    tracing::warn!(error = %e, "cannot send NOTIFY");
                    return;
                }
                metrics::counter!("voicemail_mwi_notifies_total").increment(1);
            }
            Err(e) => tracing::warn!(error = %e, "cannot build NOTIFY"),
        }
    }

    /// An unsolicited NOTIFY to one registered contact of `aor`.
    fn notify_contact(&mut self, aor: &str, contact: &str, peer: Peer, now: Instant) {
        let via = self.via();
        let tag = self.ids.tag();
        let call_id = format!("{}@voicemail", self.ids.call_id());
        let account = format!("sip:{aor}");
        let body = summary_body(&account, self.counts_of(aor));
        let bytes = Builder::request(&Method::Notify, contact)
            .header("Via", via)
            .header("Max-Forwards", 70)
            .header(
                "From",
                format_args!("<sip:voicemail@{}>;tag={tag}", self.local),
            )
            .header("To", format_args!("<{account}>"))
            .header("Call-ID", call_id)
            .header("CSeq", "1 NOTIFY")
            .header("Contact", format_args!("<sip:voicemail@{}>", self.local))
            .header("Event", "message-summary")
            .header("Subscription-State", "active")
            .body("application/simple-message-summary", body.as_bytes());
        self.send(bytes, peer, now);
    }

    /// A NOTIFY in subscription `call_id`'s dialog; `terminated` ends it.
    fn notify_subscription(&mut self, call_id: &str, now: Instant, terminated: bool) {
        let Some(mut sub) = self.subs.get(call_id).cloned() else {
            return;
        };
        sub.cseq += 1;
        let left = sub.expires_at.saturating_duration_since(now).as_secs();
        let state = if terminated || left == 0 {
            "terminated;reason=timeout".to_owned()
        } else {
            format!("active;expires={left}")
        };
        let body = summary_body(&format!("sip:{}", sub.aor), self.counts_of(&sub.aor));
        let via = self.via();
        let mut b = Builder::request(&Method::Notify, &sub.target)
            .header("Via", via)
            .header("Max-Forwards", 70);
        for r in &sub.routes {
            b = b.header("Route", r);
        }
        let bytes = b
            .header("From", &sub.local)
            .header("To", &sub.remote)
            .header("Call-ID", &sub.call_id)
            .header("CSeq", format_args!("{} NOTIFY", sub.cseq))
            .header("Contact", format_args!("<sip:voicemail@{}>", self.local))
            .header("Event", "message-summary")
            .header("Subscription-State", state)
            .body("application/simple-message-summary", body.as_bytes());
        let peer = sub.peer;
        if terminated || left == 0 {
            self.subs.remove(call_id);
        } else {
            self.subs.insert(call_id.to_owned(), sub);
        }
        self.send(bytes, peer, now);
    }

    fn on_request(&mut self, stx: ServerTxId, req: Message, from: Peer, now: Instant) {
        match req.method() {
            Some(Method::Subscribe) => self.on_subscribe(stx, &req, from, now),
            Some(Method::Ack) => {}
            _ => self.reply(stx, &req, 405, None, &[], now),
        }
    }

    fn reply(
        &mut self,
        stx: ServerTxId,
        req: &Message,
        code: u16,
        tag: Option<&str>,
        extra: &[(&str, String)],
        now: Instant,
    ) {
        let mut b = response_to(req, code, tag);
        for (k, v) in extra {
            b = b.header(k, v);
        }
        if let Ok(m) = Message::parse(b.finish()) {
            let _ = self.tx.send_response(stx, m, now);
        }
    }

    fn on_subscribe(&mut self, stx: ServerTxId, req: &Message, from: Peer, now: Instant) {
        let event = req.get(HeaderName::Event).unwrap_or("");
        let package = event.split(';').next().unwrap_or("").trim();
        if !package.eq_ignore_ascii_case("message-summary") {
            let allow = [("Allow-Events", "message-summary".to_owned())];
            return self.reply(stx, req, 489, None, &allow, now);
        }
        let Some(sub) = self.subscription(req, from, now) else {
            return self.reply(stx, req, 400, None, &[], now);
        };
        let expires = req
            .expires()
            .ok()
            .flatten()
            .unwrap_or(DEFAULT_EXPIRES_S)
            .min(DEFAULT_EXPIRES_S);
        let mut sub = sub;
        sub.expires_at = now + Duration::from_secs(u64::from(expires));
        let call_id = sub.call_id.clone();
        let tag = sub.local_tag.clone();
        let headers = [
            ("Expires", expires.to_string()),
            ("Contact", format!("<sip:voicemail@{}>", self.local)),
        ];
        self.reply(stx, req, 200, Some(&tag), &headers, now);
        tracing::info!(aor = sub.aor, expires, "message-summary subscription");
        // A refresh keeps the dialog's CSeq.
        if let Some(old) = self.subs.get(&call_id) {
            sub.cseq = old.cseq;
        }
        self.subs.insert(call_id.clone(), sub);
        self.notify_subscription(&call_id, now, expires == 0);
    }

    /// The dialog a SUBSCRIBE creates (or refreshes).
    fn subscription(&mut self, req: &Message, from: Peer, now: Instant) -> Option<Subscription> {
        let to = req.to().ok()?;
        let sip = to.uri.as_sip()?;
        let aor = format!("{}@{}", sip.user?, sip.host.as_str());
        let call_id = req.call_id().ok()?.to_owned();
        let existing = self.subs.get(&call_id);
        let local_tag = match (to.tag(), existing) {
            (Some(t), _) => t.to_owned(),
            (None, _) => self.ids.tag(),
        };
        let target = match req.contacts().ok()? {
            switchboard_sip::Contacts::List(list) => list.first()?.uri.to_string(),
            switchboard_sip::Contacts::Star => return None,
        };
        let routes: Vec<String> = req
            .record_routes()
            .ok()?
            .iter()
            .map(|r| format!("<{}>", r.uri))
            .collect();
        // Requests go to the first route, else to the Contact, else back to the source.
        let first = routes
            .first()
            .map(|r| r.trim_matches(['<', '>']).to_owned());
        let hop = first.unwrap_or_else(|| target.clone());
        let peer = switchboard_sip::Uri::parse(&hop)
            .ok()
            .and_then(|u| u.as_sip().and_then(uri_peer))
            .unwrap_or(from);
        let remote = req.get(HeaderName::From)?.to_owned();
        let to_raw = req.get(HeaderName::To)?;
        let local = match to.tag() {
            Some(_) => to_raw.to_owned(),
            None => format!("{to_raw};tag={local_tag}"),
        };
        Some(Subscription {
            aor,
            call_id,
            local_tag,
            remote,
            local,
            target,
            peer,
            routes,
            cseq: 0,
            expires_at: now,
        })
    }

    fn expire(&mut self, now: Instant) {
        let gone: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| s.expires_at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for call_id in gone {
            self.notify_subscription(&call_id, now, true);
        }
    }

    fn drain_tx_events(&mut self) {
        while let Some(ev) = self.tx.poll_event() {
            if let TxEvent::Timeout(_) | TxEvent::TransportError(_) = ev {
                metrics::counter!("voicemail_mwi_notify_failures_total").increment(1);
            }
        }
    }
}

impl Core for MwiCore {
    fn handle_message(&mut self, msg: Message, from: Peer, now: Instant) {
        match self.tx.handle_incoming(msg, from, now) {
            Incoming::Request { tx, msg } => self.on_request(tx, msg, from, now),
            Incoming::Response { msg, .. } => {
                let code = msg.status().unwrap_or(0);
                if code >= 300 {
                    tracing::debug!(code, "NOTIFY refused");
                    metrics::counter!("voicemail_mwi_notify_failures_total").increment(1);
                }
            }
            Incoming::Malformed { msg, error } => {
                if msg.is_request() && msg.method() != Some(&Method::Ack) {
                    let b = response_to(&msg, error.status(), Some("vm"));
                    self.tx.send_stateless(b.finish(), from);
                }
            }
            Incoming::Ack { .. } | Incoming::StrayResponse { .. } | Incoming::Absorbed => {}
        }
        self.drain_tx_events();
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.tx.handle_timeout(now);
        self.expire(now);
        self.drain_tx_events();
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.tx.poll_transmit()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let subs = self.subs.values().map(|s| s.expires_at).min();
        [self.tx.poll_timeout(), subs].into_iter().flatten().min()
    }

    fn start_drain(&mut self, _now: Instant) {}

    fn is_idle(&self, _now: Instant) -> bool {
        self.tx.is_empty()
    }
}

impl Controlled for MwiCore {
    type Command = MwiCommand;
    type Output = ();

    fn handle_command(&mut self, cmd: MwiCommand, now: Instant) {
        let MwiCommand::Update {
            user,
            domain,
            counts,
            contacts,
        } = cmd;
        let aor = format!("{user}@{domain}");
        self.counts.insert(aor.clone(), counts);
        for (contact, peer) in contacts {
            self.notify_contact(&aor, &contact, peer, now);
        }
        let subs: Vec<String> = self
            .subs
            .values()
            .filter(|s| s.aor == aor)
            .map(|s| s.call_id.clone())
            .collect();
        for call_id in subs {
            self.notify_subscription(&call_id, now, false);
        }
        self.drain_tx_events();
    }

    fn poll_output(&mut self) -> Option<()> {
        self.outputs.pop_front()
    }
}

/// The role's handle on the MWI core: mailbox changes in, per-DN updates out.
#[derive(Clone)]
pub struct Mwi {
    /// Changed mailboxes, handled one after the other by one task, so that the last
    /// NOTIFY sent for a DN always carries the counts read last.
    changes: mpsc::UnboundedSender<(String, String)>,
    plan: Arc<DialplanCell>,
}

/// What the worker of [`Mwi`] needs.
#[derive(Clone)]
struct Notifier {
    commands: mpsc::Sender<MwiCommand>,
    store: SharedStore,
    location: Option<SharedLocation>,
}

impl Mwi {
    /// Starts the worker (on the current runtime); it ends when the last handle is dropped.
    pub fn new(
        commands: mpsc::Sender<MwiCommand>,
        plan: Arc<DialplanCell>,
        store: SharedStore,
        location: Option<SharedLocation>,
    ) -> Mwi {
        let (changes, mut rx) = mpsc::unbounded_channel::<(String, String)>();
        let notifier = Notifier {
            commands,
            store,
            location,
        };
        let worker_plan = plan.clone();
        tokio::spawn(async move {
            while let Some((tenant, mailbox)) = rx.recv().await {
                let plan = worker_plan.current();
                for dn in dns_of_mailbox(&plan, &tenant, &mailbox) {
                    notifier.update_dn(&plan, &tenant, &dn).await;
                }
            }
        });
        Mwi { changes, plan }
    }

    /// Sends the counts of every mailbox's DNs (at start: the core learns what SUBSCRIBEs
    /// are answered with).
    pub fn prime(&self) {
        let plan = self.plan.current();
        for tenant in plan.tenant_names() {
            for m in plan.mailboxes(tenant) {
                self.changed(tenant, &m.number);
            }
        }
    }

    /// Mailbox `mailbox` of `tenant` changed: every DN that shows it is updated (its counts
    /// are the sum over all the mailboxes it shows, read from the store).
    pub fn changed(&self, tenant: &str, mailbox: &str) {
        if self
            .changes
            .send((tenant.to_owned(), mailbox.to_owned()))
            .is_err()
        {
            tracing::warn!("the message-waiting worker stopped");
        }
    }
}

impl Notifier {
    async fn update_dn(&self, plan: &Dialplan, tenant: &str, dn: &str) {
        let boxes =
            super::menu::mailboxes_of_caller(dn, plan.agents(tenant), plan.mailboxes(tenant));
        let store = self.store.clone();
        let (t, b) = (tenant.to_owned(), boxes.clone());
        let per_mailbox = tokio::task::spawn_blocking(move || {
            b.iter()
                .filter_map(|m| Some((m.clone(), store.message_counts(&t, m).ok()?)))
                .collect::<BTreeMap<_, _>>()
        })
        .await
        .unwrap_or_default();
        let counts = dn_counts(&per_mailbox, &boxes);
        let domain = plan.domain(tenant).unwrap_or("switchboard").to_owned();
        let contacts = self.contacts(dn, &domain);
        tracing::debug!(
            tenant,
            dn,
            new = counts.new,
            saved = counts.saved,
            phones = contacts.len(),
            "message waiting"
        );
        let cmd = MwiCommand::Update {
            user: dn.to_owned(),
            domain,
            counts,
            contacts,
        };
        if self.commands.send(cmd).await.is_err() {
            tracing::warn!("the MWI core stopped");
        }
    }

    /// The registered contacts of `dn@domain` and where to reach them (the REGISTER's
    /// source).
    fn contacts(&self, dn: &str, domain: &str) -> Vec<(String, Peer)> {
        let Some(location) = &self.location else {
            return Vec::new();
        };
        location
            .contacts(&format!("{dn}@{domain}"), Instant::now())
            .into_iter()
            .filter_map(|(contact, _, source)| Some((contact, Peer::udp(source.parse().ok()?))))
            .collect()
    }
}

/// A started MWI server.
pub struct MwiRunning {
    pub mwi: Mwi,
    pub udp: SocketAddr,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Binds `udp` and runs the MWI core on a thread of its own until `drain`.
pub async fn start(
    udp: SocketAddr,
    cfg: &switchboard_config::Config,
    plan: Arc<DialplanCell>,
    store: SharedStore,
    location: Option<SharedLocation>,
    drain: tokio_util::sync::CancellationToken,
) -> anyhow::Result<MwiRunning> {
    use anyhow::Context as _;
    let net = switchboard_sip_net::NetConfig {
        udp: Some(udp),
        tcp: None,
        max_message_bytes: cfg.sip.max_message_bytes,
        drain_grace: Duration::from_millis(cfg.drain.grace_ms),
    };
    let sockets = switchboard_sip_net::Sockets::bind(&net)
        .await
        .with_context(|| format!("cannot bind voicemail.udp {udp}"))?;
    let bound = sockets
        .local_udp
        .context("the voicemail SIP socket has no address")?;
    let timers = Timers {
        t1: Duration::from_millis(cfg.sip.t1_ms),
        t2: Duration::from_millis(cfg.sip.t2_ms),
        t4: Duration::from_millis(cfg.sip.t4_ms),
        ..Timers::default()
    };
    let core = MwiCore::new(bound, timers, rand::random());
    let (commands, commands_rx) = mpsc::channel(1024);
    let (outputs, mut outputs_rx) = mpsc::unbounded_channel::<()>();
    let driver = switchboard_sip_net::spawn_on_own_thread("voicemail-mwi", move || async move {
        switchboard_sip_net::Driver::new(core, sockets, net)?
            .run_controlled(drain, commands_rx, outputs)
            .await;
        Ok::<_, std::io::Error>(())
    })?;
    let task = tokio::spawn(async move {
        let driven = driver.await;
        while outputs_rx.recv().await.is_some() {}
        driven??;
        Ok(())
    });
    tracing::info!(udp = %bound, "message waiting (voicemail) listening");
    Ok(MwiRunning {
        mwi: Mwi::new(commands, plan, store, location),
        udp: bound,
        task,
    })
}

#[cfg(test)]
mod tests;
