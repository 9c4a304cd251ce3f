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
use std::net::SocketAddr;
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

pub struct Driver<C: Core> {
    core: C,
    udp: Option<Arc<UdpSocket>>,
    events_tx: mpsc::Sender<NetEvent>,
    events: mpsc::Receiver<NetEvent>,
    conns: HashMap<SocketAddr, mpsc::Sender<Bytes>>,
    connecting: HashMap<SocketAddr, Vec<Bytes>>,
    cfg: NetConfig,
}

impl<C: Core> Driver<C> {
    /// Takes the sockets into the current runtime; must be called from within it.
    pub fn new(core: C, sockets: Sockets, cfg: NetConfig) -> io::Result<Self> {
        let (events_tx, events) = mpsc::channel(4096);
        if let Some(listener) = sockets.tcp {
            tokio::spawn(tcp::accept_loop(
                TcpListener::from_std(listener)?,
                events_tx.clone(),
                cfg.max_message_bytes,
            ));
        }
        let udp = sockets.udp.map(UdpSocket::from_std).transpose()?;
        Ok(Driver {
            core,
            udp: udp.map(Arc::new),
            events_tx,
            events,
            conns: HashMap::new(),
            connecting: HashMap::new(),
            cfg,
        })
    }

    /// Runs until `drain` is cancelled and the core is idle (or the grace time is over).
    pub async fn run(self, drain: CancellationToken) -> C {
        self.run_inner(drain, Never).await
    }

    async fn run_inner<S: Side<C>>(mut self, drain: CancellationToken, mut side: S) -> C {
        let mut buf = vec![0u8; 65_536];
        let mut drain_deadline: Option<Instant> = None;
        loop {
            self.flush().await;
            side.forward(&mut self.core);
            if let Some(d) = drain_deadline {
                let now = Instant::now();
                if self.core.is_idle(now) || now >= d {
                    break;
                }
            }
            let wake = earliest(self.core.poll_timeout(), drain_deadline);
            let sleep = tokio::time::sleep_until(
                wake.map(tokio::time::Instant::from_std)
                    .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600)),
            );
            let udp = self.udp.clone();
            tokio::select! {
                r = recv(udp.as_deref(), &mut buf) => {
                    if let Some((n, from)) = r {
                        self.datagram(&buf[..n], from);
                        self.drain_ready_datagrams(&mut buf);
                    }
                }
                Some(ev) = self.events.recv() => self.net_event(ev),
                Some(()) = side.next(&mut self.core) => {}
                _ = sleep => self.core.handle_timeout(Instant::now()),
                _ = drain.cancelled(), if drain_deadline.is_none() => {
                    let now = Instant::now();
                    tracing::info!("draining: no new transactions");
                    self.core.start_drain(now);
                    drain_deadline = Some(now + self.cfg.drain_grace);
                }
            }
        }
        self.core
    }

    /// Reads what is already queued on the socket before writing, to batch the work.
    fn drain_ready_datagrams(&mut self, buf: &mut [u8]) {
        let Some(udp) = self.udp.clone() else { return };
        for _ in 0..32 {
            match udp.try_recv_from(buf) {
                Ok((n, from)) => self.datagram(&buf[..n], from),
                Err(_) => break,
            }
        }
    }

    fn datagram(&mut self, data: &[u8], from: SocketAddr) {
        // Keep-alive CRLFs (RFC 5626) and stray empty datagrams carry no message.
        if data.iter().all(|&c| c == b'\r' || c == b'\n') {
            return;
        }
        self.message(Bytes::copy_from_slice(data), Peer::udp(from));
    }

    fn message(&mut self, data: Bytes, from: Peer) {
        metrics::counter!("sip_messages_received_total").increment(1);
        match Message::parse(data) {
            Ok(msg) => self.core.handle_message(msg, from, Instant::now()),
            Err(e) => {
                metrics::counter!("sip_malformed_total").increment(1);
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

    async fn flush(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            metrics::counter!("sip_messages_sent_total").increment(1);
            match t.peer.transport {
                Transport::Udp => self.send_udp(t).await,
                _ => self.send_stream(t),
            }
        }
    }

    async fn send_udp(&self, t: Transmit) {
        let Some(udp) = &self.udp else {
            tracing::warn!(peer = %t.peer, "no UDP socket to send on");
            return;
        };
        let r = match udp.try_send_to(&t.payload, t.peer.addr) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                udp.send_to(&t.payload, t.peer.addr).await
            }
            other => other,
        };
        if let Err(e) = r {
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
        tokio::spawn(tcp::connect(
            addr,
            self.events_tx.clone(),
            self.cfg.max_message_bytes,
        ));
    }
}

impl<C: Controlled> Driver<C> {
    /// Like [`Driver::run`], also feeding `commands` to the core and sending its outputs to
    /// `outputs` (dropped outputs are counted if the receiver is gone).
    pub async fn run_controlled(
        self,
        drain: CancellationToken,
        commands: mpsc::Receiver<C::Command>,
        outputs: mpsc::UnboundedSender<C::Output>,
    ) -> C {
        self.run_inner(drain, Commands { commands, outputs }).await
    }
}

/// What the driver does besides SIP: nothing, or commands and outputs of a [`Controlled`] core.
trait Side<C: Core> {
    /// Waits for the next command and hands it to the core; `None` when there will be none.
    fn next(&mut self, core: &mut C) -> impl std::future::Future<Output = Option<()>> + Send;
    fn forward(&mut self, core: &mut C);
}

struct Never;

impl<C: Core> Side<C> for Never {
    async fn next(&mut self, _core: &mut C) -> Option<()> {
        std::future::pending().await
    }

    fn forward(&mut self, _core: &mut C) {}
}

struct Commands<C: Controlled> {
    commands: mpsc::Receiver<C::Command>,
    outputs: mpsc::UnboundedSender<C::Output>,
}

impl<C: Controlled> Side<C> for Commands<C> {
    async fn next(&mut self, core: &mut C) -> Option<()> {
        match self.commands.recv().await {
            Some(cmd) => {
                core.handle_command(cmd, Instant::now());
                Some(())
            }
            None => std::future::pending().await,
        }
    }

    fn forward(&mut self, core: &mut C) {
        while let Some(out) = core.poll_output() {
            if self.outputs.send(out).is_err() {
                metrics::counter!("sip_core_outputs_dropped_total").increment(1);
            }
        }
    }
}

async fn recv(udp: Option<&UdpSocket>, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
    match udp {
        Some(u) => match u.recv_from(buf).await {
            Ok(r) => Some(r),
            // ICMP port unreachable from an earlier send shows up here on some systems.
            Err(e) => {
                tracing::trace!(error = %e, "UDP receive error");
                None
            }
        },
        None => std::future::pending().await,
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
