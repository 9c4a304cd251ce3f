//! SIP transports on tokio. The [`Driver`] owns the UDP socket and the TCP connection table and
//! feeds every message to one sans-I/O [`Core`], then writes whatever the core wants sent. The
//! core holds all protocol state; this crate only moves bytes, reads the clock and sleeps until
//! the core's next deadline (one timer for every transaction).
//!
//! TLS and WebSocket will be further connection kinds behind the same connection table: a
//! connection task turns a byte stream into framed messages and takes bytes to write.

mod tcp;

use bytes::Bytes;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_sip::{Message, Peer, Transmit, Transport};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The protocol side of a SIP node: proxy, registrar, B2BUA, media server.
pub trait Core: Send {
    /// A framed message (not yet validated) from `from`.
    fn handle_message(&mut self, msg: Message, from: Peer, now: Instant);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_transmit(&mut self) -> Option<Transmit>;
    fn poll_timeout(&self) -> Option<Instant>;
    /// Stop taking new transactions (SIGTERM); open ones finish.
    fn start_drain(&mut self, now: Instant);
    /// True when nothing is left to finish (during a drain).
    fn is_idle(&self, now: Instant) -> bool;
}

/// A core that also takes commands from the rest of the process (REST call control, a media
/// engine's events...) and produces outputs for it (events to publish...). The driver feeds
/// commands between messages and forwards outputs after each step.
pub trait Controlled: Core {
    type Command: Send + 'static;
    type Output: Send + 'static;
    fn handle_command(&mut self, cmd: Self::Command, now: Instant);
    fn poll_output(&mut self) -> Option<Self::Output>;
}

#[derive(Clone, Debug)]
pub struct NetConfig {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub max_message_bytes: usize,
    /// How long to wait for open transactions after a drain starts.
    pub drain_grace: Duration,
}

/// Bound sockets; `local_*` tell the real ports when 0 was asked for. They are plain
/// non-blocking std sockets until a [`Driver`] takes them, so the driver may run on another
/// runtime than the one that bound them (see [`spawn_on_own_thread`]).
pub struct Sockets {
    udp: Option<std::net::UdpSocket>,
    tcp: Option<std::net::TcpListener>,
    pub local_udp: Option<SocketAddr>,
    pub local_tcp: Option<SocketAddr>,
}

/// Socket buffer size asked for the SIP UDP socket, both ways.
const UDP_BUFFER_BYTES: usize = 4 << 20;

impl Sockets {
    pub async fn bind(cfg: &NetConfig) -> io::Result<Sockets> {
        let udp = match cfg.udp {
            Some(a) => Some(UdpSocket::bind(a).await?),
            None => None,
        };
        if let Some(u) = &udp {
            // A burst that arrives while the driver is busy waits in the kernel: the default
            // buffer (~200 KB, some 400 messages) overflows within a few ms at 10k messages/s,
            // and every datagram lost there costs a retransmission 500 ms later. The kernel
            // caps the request at net.core.rmem_max / wmem_max.
            let sock = socket2::SockRef::from(u);
            sock.set_recv_buffer_size(UDP_BUFFER_BYTES)?;
            sock.set_send_buffer_size(UDP_BUFFER_BYTES)?;
        }
        // With port 0 for both, let TCP take the same port as UDP when it is free, so a single
        // "host:port" reaches both transports like a classic SIP server.
        let tcp_addr = match (cfg.tcp, &udp) {
            (Some(t), Some(u)) if t.port() == 0 && cfg.udp.is_some_and(|a| a.port() == 0) => {
                let port = u.local_addr()?.port();
                Some(SocketAddr::new(t.ip(), port))
            }
            (t, _) => t,
        };
        let tcp = match tcp_addr {
            Some(a) => match TcpListener::bind(a).await {
                Ok(l) => Some(l),
                Err(_) if cfg.tcp.is_some_and(|t| t.port() == 0) => {
                    Some(TcpListener::bind(cfg.tcp.unwrap_or(a)).await?)
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        Ok(Sockets {
            local_udp: udp.as_ref().map(|u| u.local_addr()).transpose()?,
            local_tcp: tcp.as_ref().map(|t| t.local_addr()).transpose()?,
            udp: udp.map(|u| u.into_std()).transpose()?,
            tcp: tcp.map(|t| t.into_std()).transpose()?,
        })
    }
}

/// Runs the future `make()` returns on a thread of its own with a single-threaded runtime, and
/// resolves when it is done. A SIP driver is one task that sleeps in `epoll_wait` between
/// datagrams: on its own thread each datagram wakes exactly that thread, where on the shared
/// multi-threaded runtime it also wakes idle workers looking for work to steal (measured: a
/// third less CPU per proxied call). `make` runs on the new thread, so the sockets and tasks it
/// creates belong to that runtime.
pub fn spawn_on_own_thread<F, Fut>(
    name: &str,
    make: F,
) -> io::Result<impl std::future::Future<Output = io::Result<Fut::Output>>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            // Spawned rather than run as block_on's own future: a task woken by the I/O
            // driver on its own thread is queued locally, where waking the root future writes
            // to the runtime's eventfd every time.
            let task =
                runtime.block_on(async move { tokio::spawn(async move { make().await }).await });
            if let Ok(out) = task {
                let _ = done_tx.send(out);
            }
        })?;
    let name = name.to_string();
    Ok(async move {
        done_rx
            .await
            .map_err(|_| io::Error::other(format!("thread {name} panicked")))
    })
}

/// What connection tasks tell the driver.
pub(crate) enum NetEvent {
    Message(Bytes, Peer),
    Connected(SocketAddr, mpsc::Sender<Bytes>),
    ConnectFailed(SocketAddr),
    Closed(SocketAddr),
}

/// Wakes the driver thread, which sleeps in a blocking `recv_from` on its wake socket (the SIP
/// UDP socket, or a private loopback one when there is none), by sending it an empty datagram.
/// The driver drops empty datagrams (like keep-alive CRLFs) and then looks at its queues. One
/// nudge is in flight at a time: later ones are folded into it until the driver has woken.
pub(crate) struct Nudge {
    socket: std::net::UdpSocket,
    target: SocketAddr,
    pending: AtomicBool,
}

impl Nudge {
    fn new(target: SocketAddr) -> io::Result<Nudge> {
        let target = match target.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), target.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), target.port())
            }
            _ => target,
        };
        let local: SocketAddr = if target.is_ipv4() {
            (Ipv4Addr::LOCALHOST, 0).into()
        } else {
            (Ipv6Addr::LOCALHOST, 0).into()
        };
        Ok(Nudge {
            socket: std::net::UdpSocket::bind(local)?,
            target,
            pending: AtomicBool::new(false),
        })
    }

    pub(crate) fn wake(&self) {
        if !self.pending.swap(true, Ordering::SeqCst) {
            if let Err(e) = self.socket.send_to(&[], self.target) {
                tracing::warn!(error = %e, "cannot wake the SIP driver");
            }
        }
    }

    /// Called by the driver before it looks at its queues. A plain load first: this runs for
    /// every datagram, and a nudge is rarely pending.
    fn rearm(&self) {
        if self.pending.load(Ordering::Relaxed) {
            self.pending.store(false, Ordering::SeqCst);
        }
    }
}

/// The sending half connection tasks use to reach the driver.
#[derive(Clone)]
pub(crate) struct Inbox {
    tx: mpsc::Sender<NetEvent>,
    nudge: Arc<Nudge>,
}

impl Inbox {
    /// False when the driver is gone.
    pub(crate) async fn send(&self, ev: NetEvent) -> bool {
        let ok = self.tx.send(ev).await.is_ok();
        self.nudge.wake();
        ok
    }
}

/// Drives a [`Core`]: UDP and the core's timers on a thread of its own in a blocking
/// `recv_from` (one system call per datagram in, one per datagram out, which is what a
/// Kamailio worker does; the readiness loop of an async socket costs two more per wake-up:
/// `epoll_wait` and the `recv_from` that finds the socket empty). TCP connections are tasks on
/// the tokio runtime that created the driver; they and the rest of the process reach the thread
/// through queues and a [`Nudge`].
pub struct Driver<C: Core> {
    core: C,
    udp: Option<std::net::UdpSocket>,
    /// What the thread sleeps on: `udp`, or a private socket when there is no UDP.
    wake: std::net::UdpSocket,
    nudge: Arc<Nudge>,
    inbox: Inbox,
    events: mpsc::Receiver<NetEvent>,
    conns: HashMap<SocketAddr, mpsc::Sender<Bytes>>,
    connecting: HashMap<SocketAddr, Vec<Bytes>>,
    runtime: tokio::runtime::Handle,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    cfg: NetConfig,
    counters: Counters,
}

/// The per-message counters, looked up once rather than per message.
struct Counters {
    received: metrics::Counter,
    sent: metrics::Counter,
    malformed: metrics::Counter,
}

impl Counters {
    fn new() -> Counters {
        Counters {
            received: metrics::counter!("sip_messages_received_total"),
            sent: metrics::counter!("sip_messages_sent_total"),
            malformed: metrics::counter!("sip_malformed_total"),
        }
    }
}

/// Timers fire within this much of their deadline: the receive timeout is kept in whole steps
/// of it so that it is not reset for every message.
const TIMER_STEP: Duration = Duration::from_millis(2);
/// The longest the thread sleeps without looking at the clock.
const MAX_SLEEP: Duration = Duration::from_secs(1);

impl<C: Core + 'static> Driver<C> {
    /// Takes the sockets; must be called from within a tokio runtime, which then runs the TCP
    /// connection tasks.
    pub fn new(core: C, sockets: Sockets, cfg: NetConfig) -> io::Result<Self> {
        let runtime = tokio::runtime::Handle::current();
        let udp = sockets.udp;
        let wake = match &udp {
            Some(u) => u.try_clone()?,
            None => std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?,
        };
        wake.set_nonblocking(false)?;
        let nudge = Arc::new(Nudge::new(wake.local_addr()?)?);
        let (tx, events) = mpsc::channel(4096);
        let inbox = Inbox {
            tx,
            nudge: nudge.clone(),
        };
        let mut tasks = Vec::new();
        if let Some(listener) = sockets.tcp {
            tasks.push(runtime.spawn(tcp::accept_loop(
                TcpListener::from_std(listener)?,
                inbox.clone(),
                cfg.max_message_bytes,
            )));
        }
        Ok(Driver {
            core,
            udp,
            wake,
            nudge,
            inbox,
            events,
            conns: HashMap::new(),
            connecting: HashMap::new(),
            runtime,
            tasks,
            cfg,
            counters: Counters::new(),
        })
    }

    /// Runs until `drain` is cancelled and the core is idle (or the grace time is over).
    pub async fn run(self, drain: CancellationToken) -> C {
        self.spawn(drain, Never).await
    }

    /// Starts the thread and resolves with the core when it ends.
    async fn spawn<S: Side<C> + 'static>(mut self, drain: CancellationToken, side: S) -> C {
        let nudge = self.nudge.clone();
        let on_drain = drain.clone();
        self.tasks.push(self.runtime.spawn(async move {
            on_drain.cancelled().await;
            nudge.wake();
        }));
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("sip-driver".into())
            .spawn(move || {
                let _ = done_tx.send(self.run_blocking(drain, side));
            });
        if let Err(e) = spawned {
            // Without a thread there is no SIP: the role fails to start rather than run deaf.
            panic!("cannot start the SIP driver thread: {e}");
        }
        match done_rx.await {
            Ok(core) => core,
            Err(_) => panic!("the SIP driver thread panicked"),
        }
    }

    fn run_blocking<S: Side<C>>(mut self, drain: CancellationToken, mut side: S) -> C {
        let mut buf = vec![0u8; 65_536];
        let mut drain_deadline: Option<Instant> = None;
        let mut sleep: Option<Duration> = None;
        loop {
            self.flush();
            side.forward(&mut self.core);
            let now = Instant::now();
            if let Some(d) = drain_deadline {
                if self.core.is_idle(now) || now >= d {
                    break;
                }
            } else if drain.is_cancelled() {
                tracing::info!("draining: no new transactions");
                self.core.start_drain(now);
                drain_deadline = Some(now + self.cfg.drain_grace);
                continue;
            }
            self.nudge.rearm();
            let mut busy = false;
            while let Ok(ev) = self.events.try_recv() {
                self.net_event(ev);
                busy = true;
            }
            busy |= side.take(&mut self.core);
            if busy {
                continue;
            }
            let wake = earliest(self.core.poll_timeout(), drain_deadline);
            if wake.is_some_and(|w| w <= now) {
                self.core.handle_timeout(now);
                continue;
            }
            self.set_sleep(&mut sleep, wake.map(|w| w - now));
            match self.wake.recv_from(&mut buf) {
                Ok((n, from)) => self.datagram(&buf[..n], from),
                Err(e) if is_timeout(&e) => {}
                // ICMP port unreachable from an earlier send shows up here on some systems.
                Err(e) => tracing::trace!(error = %e, "UDP receive error"),
            }
        }
        for t in &self.tasks {
            t.abort();
        }
        self.core
    }

    /// Sets the receive timeout to `until` rounded up to a [`TIMER_STEP`], when that changed.
    fn set_sleep(&self, current: &mut Option<Duration>, until: Option<Duration>) {
        let step = TIMER_STEP.as_nanos();
        let want = until.map_or(MAX_SLEEP, |d| {
            let steps = d.as_nanos().div_ceil(step).max(1);
            MAX_SLEEP.min(Duration::from_nanos((steps * step) as u64))
        });
        if *current != Some(want) {
            if let Err(e) = self.wake.set_read_timeout(Some(want)) {
                tracing::warn!(error = %e, "cannot set the SIP socket's receive timeout");
            }
            *current = Some(want);
        }
    }

    fn datagram(&mut self, data: &[u8], from: SocketAddr) {
        // Keep-alive CRLFs (RFC 5626), stray empty datagrams and our own nudges carry no
        // message.
        if data.iter().all(|&c| c == b'\r' || c == b'\n') {
            return;
        }
        if self.udp.is_none() {
            // The private wake socket takes nothing but nudges.
            return;
        }
        self.message(Bytes::copy_from_slice(data), Peer::udp(from));
    }

    fn message(&mut self, data: Bytes, from: Peer) {
        self.counters.received.increment(1);
        match Message::parse(data) {
            Ok(msg) => self.core.handle_message(msg, from, Instant::now()),
            Err(e) => {
                self.counters.malformed.increment(1);
                tracing::debug!(peer = %from, error = %e, "dropped unparseable message");
            }
        }
    }

    fn net_event(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Message(data, from) => self.message(data, from),
            NetEvent::Connected(addr, tx) => {
                for data in self.connecting.remove(&addr).unwrap_or_default() {
                    let _ = tx.try_send(data);
                }
                self.conns.insert(addr, tx);
                metrics::gauge!("sip_tcp_connections").set(self.conns.len() as f64);
            }
            NetEvent::ConnectFailed(addr) => {
                let lost = self.connecting.remove(&addr).map_or(0, |v| v.len());
                tracing::warn!(%addr, lost, "TCP connect failed");
            }
            NetEvent::Closed(addr) => {
                self.conns.remove(&addr);
                metrics::gauge!("sip_tcp_connections").set(self.conns.len() as f64);
            }
        }
    }

    fn flush(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            self.counters.sent.increment(1);
            match t.peer.transport {
                Transport::Udp => self.send_udp(t),
                _ => self.send_stream(t),
            }
        }
    }

    /// A blocking send: it waits only when the 4 MiB send buffer is full.
    fn send_udp(&self, t: Transmit) {
        let Some(udp) = &self.udp else {
            tracing::warn!(peer = %t.peer, "no UDP socket to send on");
            return;
        };
        if let Err(e) = udp.send_to(&t.payload, t.peer.addr) {
            metrics::counter!("sip_send_errors_total").increment(1);
            tracing::debug!(peer = %t.peer, error = %e, "UDP send failed");
        }
    }

    fn send_stream(&mut self, t: Transmit) {
        let addr = t.peer.addr;
        if let Some(tx) = self.conns.get(&addr) {
            if tx.try_send(t.payload.clone()).is_ok() {
                return;
            }
            self.conns.remove(&addr);
        }
        if let Some(queue) = self.connecting.get_mut(&addr) {
            queue.push(t.payload);
            return;
        }
        self.connecting.insert(addr, vec![t.payload]);
        self.runtime.spawn(tcp::connect(
            addr,
            self.inbox.clone(),
            self.cfg.max_message_bytes,
        ));
    }
}

impl<C: Controlled + 'static> Driver<C> {
    /// Like [`Driver::run`], also feeding `commands` to the core and sending its outputs to
    /// `outputs` (dropped outputs are counted if the receiver is gone).
    pub async fn run_controlled(
        mut self,
        drain: CancellationToken,
        mut commands: mpsc::Receiver<C::Command>,
        outputs: mpsc::UnboundedSender<C::Output>,
    ) -> C {
        // Whoever sends commands does not know the driver sleeps in a system call: a task
        // moves them to a queue of the thread's and wakes it.
        let (tx, rx) = mpsc::unbounded_channel();
        let nudge = self.nudge.clone();
        self.tasks.push(self.runtime.spawn(async move {
            while let Some(cmd) = commands.recv().await {
                if tx.send(cmd).is_err() {
                    break;
                }
                nudge.wake();
            }
        }));
        self.spawn(
            drain,
            Commands {
                commands: rx,
                outputs,
            },
        )
        .await
    }
}

/// What the driver does besides SIP: nothing, or commands and outputs of a [`Controlled`] core.
trait Side<C: Core>: Send {
    /// Hands the core the commands that are waiting; true if there were any.
    fn take(&mut self, core: &mut C) -> bool;
    fn forward(&mut self, core: &mut C);
}

struct Never;

impl<C: Core> Side<C> for Never {
    fn take(&mut self, _core: &mut C) -> bool {
        false
    }

    fn forward(&mut self, _core: &mut C) {}
}

struct Commands<C: Controlled> {
    commands: mpsc::UnboundedReceiver<C::Command>,
    outputs: mpsc::UnboundedSender<C::Output>,
}

impl<C: Controlled> Side<C> for Commands<C> {
    fn take(&mut self, core: &mut C) -> bool {
        let mut any = false;
        while let Ok(cmd) = self.commands.try_recv() {
            core.handle_command(cmd, Instant::now());
            any = true;
        }
        any
    }

    fn forward(&mut self, core: &mut C) {
        while let Some(out) = core.poll_output() {
            if self.outputs.send(out).is_err() {
                metrics::counter!("sip_core_outputs_dropped_total").increment(1);
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
