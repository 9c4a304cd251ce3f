//! The media engine: worker threads, each owning a slab of RTP streams (their UDP sockets, RTP
//! state, player, recorder, DTMF detectors) and the conferences among them, all driven by one
//! 20 ms pacing clock per worker. No task or timer per stream: a tick mixes the conferences,
//! sends one frame per stream, then drains the sockets, from buffers owned by the worker.
//!
//! Which sockets a tick reads: the RTP socket of a stream that receives is read every tick
//! until `EAGAIN` (for a socket that gets a datagram per tick that is the cheapest: watching it
//! with epoll would cost as much per datagram, plus a wake-up of the epoll instance on every
//! packet sent from it). An RTP socket that has stayed empty for [`IDLE_TICKS`] (hold, one-way
//! media, a silent peer) and every RTCP socket (a report every few seconds) are instead watched
//! by the worker's epoll instance and read only when it reports them.
//!
//! Control goes in as commands on a channel (read at each tick), events come out on a tokio
//! channel. Sockets are bound by [`MediaEngine::create_stream`] in the caller's thread, so the
//! caller learns the local port at once (for its SDP answer).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use slab::Slab;
use switchboard_rtp::dtmf::DtmfDetector;
use switchboard_rtp::rtcp::NtpTime;
use switchboard_rtp::telephone_event::DtmfReceiver;
use switchboard_rtp::tone::{ToneGenerator, ToneSpec};
use switchboard_rtp::{is_rtcp, Dropped, Latch, RtpReceiver, RtpSender, RtpSession};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::audio::{FRAME, RATE};
use crate::coder::Coder;
use crate::dtmf_out::{valid_digits, DtmfOut, DtmfTick};
use crate::mixer::{mix, MixSlot, ParticipantMode, Playout};
use crate::peer::PeerSocket;
use crate::player::{Player, Playlist};
use crate::poller::Poller;
use crate::recorder::{RecordEnd, RecordParams, Recorder, Recording};
use crate::reorder::{Next, PushResult, Reorder};

/// The pacing interval (and packetisation time of everything we send).
pub const PTIME: Duration = Duration::from_millis(20);

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Address RTP sockets bind to (and that goes into SDP).
    pub bind_ip: IpAddr,
    /// Inclusive RTP port range; even ports are used.
    pub port_min: u16,
    pub port_max: u16,
    /// Worker threads (pacing loops). Streams are spread over them.
    pub workers: usize,
    /// Report [`MediaEventKind::RtpTimeout`] after this long without RTP (`None`: never).
    pub rtp_timeout: Option<Duration>,
    /// A packet sent more than this after its tick's deadline counts as late.
    pub late_threshold: Duration,
    /// Conference playout delay, ms.
    pub playout_delay_ms: u32,
    /// Run the pacing threads with the real-time `SCHED_FIFO` policy at this priority (1..=99)
    /// so that other work on the machine does not delay the ticks; `None` keeps the normal
    /// policy. Where the system refuses (no CAP_SYS_NICE, not Linux), a warning is logged and
    /// the thread runs normally. The kernel's RT throttling still leaves other threads 5%.
    pub realtime_priority: Option<u8>,
    /// Mean interval of each stream's RTCP reports (RFC 3550 §6.2: 5 s; randomised by
    /// ±50% per stream so that reports do not bunch up).
    pub rtcp_interval: Duration,
    /// CNAME in our RTCP reports.
    pub cname: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            port_min: 20000,
            port_max: 29999,
            workers: 1,
            rtp_timeout: Some(Duration::from_secs(60)),
            late_threshold: Duration::from_millis(10),
            playout_delay_ms: 60,
            realtime_priority: None,
            rtcp_interval: Duration::from_secs(5),
            cname: "switchboard-mcp".into(),
        }
    }
}

/// A stream's identity; stable for its life, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// Audio encodings the engine sends and receives. All have an 8 kHz RTP clock; the engine's
/// audio is 8 kHz, which G.722 streams carry converted to and from its 16 kHz.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Pcmu,
    Pcma,
    /// `L16/8000` mono, big-endian.
    L16,
    /// `G722/8000` (RFC 3551 §4.5.2: 16 kHz audio, an 8000 Hz RTP clock).
    G722,
}

/// The negotiated audio codec of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Codec {
    pub encoding: Encoding,
    pub payload_type: u8,
}

impl Codec {
    pub const PCMU: Codec = Codec {
        encoding: Encoding::Pcmu,
        payload_type: 0,
    };
    pub const PCMA: Codec = Codec {
        encoding: Encoding::Pcma,
        payload_type: 8,
    };
    pub const G722: Codec = Codec {
        encoding: Encoding::G722,
        payload_type: 9,
    };

    /// The codec for an SDP `rtpmap` (encoding name, clock rate, channels), if supported.
    pub fn from_sdp(name: &str, clock_rate: u32, channels: u8, payload_type: u8) -> Option<Codec> {
        if clock_rate != RATE || channels != 1 {
            return None;
        }
        let encoding = if name.eq_ignore_ascii_case("PCMU") {
            Encoding::Pcmu
        } else if name.eq_ignore_ascii_case("PCMA") {
            Encoding::Pcma
        } else if name.eq_ignore_ascii_case("L16") {
            Encoding::L16
        } else if name.eq_ignore_ascii_case("G722") {
            Encoding::G722
        } else {
            return None;
        };
        Some(Codec {
            encoding,
            payload_type,
        })
    }
}

/// How to set up (or change) a stream.
#[derive(Debug, Clone)]
pub struct StreamParams {
    /// Where to send (from SDP); symmetric RTP latching may move it.
    pub remote: Option<SocketAddr>,
    pub codec: Codec,
    /// RFC 4733 payload type, when negotiated.
    pub telephone_event: Option<u8>,
    /// Run the in-band (Goertzel) DTMF detector on received audio.
    pub inband_dtmf: bool,
    /// Send media (false on hold / recvonly).
    pub send: bool,
    /// Accept media (false when inactive / sendonly).
    pub receive: bool,
    /// Streams with the same affinity share a worker (needed to mix them together);
    /// `None` spreads streams round-robin.
    pub affinity: Option<u64>,
}

impl StreamParams {
    pub fn new(remote: Option<SocketAddr>, codec: Codec) -> StreamParams {
        StreamParams {
            remote,
            codec,
            telephone_event: None,
            inband_dtmf: false,
            send: true,
            receive: true,
            affinity: None,
        }
    }
}

/// How a DTMF digit arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DtmfSource {
    Rfc4733,
    InBand,
}

/// Something that happened on a stream.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaEventKind {
    Dtmf {
        digit: char,
        source: DtmfSource,
    },
    /// A play ended: `completed` is false when it was stopped or replaced.
    PlayDone {
        play: u64,
        completed: bool,
    },
    RecordDone(Recording),
    /// No RTP received for the configured time.
    RtpTimeout,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MediaEvent {
    pub stream: StreamId,
    pub kind: MediaEventKind,
}

/// Engine-wide counters (also exported as metrics).
#[derive(Debug, Default)]
pub struct EngineStats {
    pub streams: AtomicU64,
    pub packets_in: AtomicU64,
    pub packets_out: AtomicU64,
    /// Packets sent later than `late_threshold` after their tick's deadline.
    pub late_out: AtomicU64,
    /// Received packets older than one already received (reordered).
    pub late_in: AtomicU64,
    pub malformed_in: AtomicU64,
    /// Other drops: wrong payload type, source, SSRC, sequence.
    pub dropped_in: AtomicU64,
    pub dtmf: AtomicU64,
    pub rtcp_in: AtomicU64,
    pub rtcp_out: AtomicU64,
    pub ticks: AtomicU64,
    /// Ticks skipped because a worker fell more than 100 ms behind.
    pub skipped_ticks: AtomicU64,
}

/// A snapshot of [`EngineStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub streams: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub late_out: u64,
    pub late_in: u64,
    pub malformed_in: u64,
    pub dropped_in: u64,
    pub dtmf: u64,
    pub rtcp_in: u64,
    pub rtcp_out: u64,
    pub ticks: u64,
    pub skipped_ticks: u64,
}

impl EngineStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            streams: l(&self.streams),
            packets_in: l(&self.packets_in),
            packets_out: l(&self.packets_out),
            late_out: l(&self.late_out),
            late_in: l(&self.late_in),
            malformed_in: l(&self.malformed_in),
            dropped_in: l(&self.dropped_in),
            dtmf: l(&self.dtmf),
            rtcp_in: l(&self.rtcp_in),
            rtcp_out: l(&self.rtcp_out),
            ticks: l(&self.ticks),
            skipped_ticks: l(&self.skipped_ticks),
        }
    }
}

/// Why a command could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no free RTP port in {0}-{1}")]
    NoPort(u16, u16),
    #[error("cannot bind RTP socket: {0}")]
    Bind(io::Error),
    #[error("the media engine has stopped")]
    Stopped,
    #[error("streams {0} and {1} run on different workers; create them with the same affinity")]
    DifferentWorkers(StreamId, StreamId),
    #[error("bad DTMF digits: {0}")]
    BadDigits(String),
}

enum Command {
    Add(u64, Box<Stream>),
    Update(u64, StreamParams),
    Play(u64, u64, Playlist),
    StopPlay(u64),
    Record(u64, RecordParams),
    StopRecord(u64),
    Join(u64, Arc<str>, ParticipantMode),
    SetMode(u64, ParticipantMode),
    SendDtmf(u64, Box<str>),
    Leave(u64),
    Remove(u64),
    Shutdown,
}

struct Inner {
    cfg: EngineConfig,
    workers: Vec<mpsc::Sender<Command>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_id: AtomicU64,
    next_port: Mutex<u16>,
    stats: Arc<EngineStats>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for w in &self.workers {
            let _ = w.send(Command::Shutdown);
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// The engine handle; cheap to clone, thread-safe. Dropping the last clone stops the workers.
#[derive(Clone)]
pub struct MediaEngine {
    inner: Arc<Inner>,
}

const WORKER_BITS: u32 = 8;

impl MediaEngine {
    /// Starts the worker threads. Events of every stream come out of the returned receiver.
    pub fn start(cfg: EngineConfig) -> io::Result<(MediaEngine, UnboundedReceiver<MediaEvent>)> {
        // A stream per even port of the range.
        raise_open_files_limit(u64::from(cfg.port_max.saturating_sub(cfg.port_min)) / 2 + 1);
        let (events_tx, events_rx) = unbounded_channel();
        let stats = Arc::new(EngineStats::default());
        let n = cfg.workers.clamp(1, 1 << WORKER_BITS);
        let mut workers = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = mpsc::channel();
            let worker = Worker::new(cfg.clone(), rx, events_tx.clone(), stats.clone());
            let t = std::thread::Builder::new()
                .name(format!("media-{i}"))
                .spawn(move || worker.run())?;
            workers.push(tx);
            threads.push(t);
        }
        let first = cfg.port_min + (cfg.port_min & 1);
        Ok((
            MediaEngine {
                inner: Arc::new(Inner {
                    cfg,
                    workers,
                    threads: Mutex::new(threads),
                    next_id: AtomicU64::new(1),
                    next_port: Mutex::new(first),
                    stats,
                }),
            },
            events_rx,
        ))
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.cfg
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    fn worker_of(&self, id: u64) -> usize {
        (id & ((1 << WORKER_BITS) - 1)) as usize % self.inner.workers.len()
    }

    fn send(&self, id: u64, cmd: Command) -> Result<(), EngineError> {
        self.inner.workers[self.worker_of(id)]
            .send(cmd)
            .map_err(|_| EngineError::Stopped)
    }

    /// Binds an even RTP port from the range and starts the stream (silent until told to
    /// play). Returns its id and local address.
    pub fn create_stream(
        &self,
        params: StreamParams,
    ) -> Result<(StreamId, SocketAddr), EngineError> {
        let (socket, rtcp) = self.bind()?;
        let local = socket.local_addr().map_err(EngineError::Bind)?;
        let seq = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let n = self.inner.workers.len() as u64;
        let worker = params.affinity.unwrap_or(seq) % n;
        let id = (seq << WORKER_BITS) | worker;
        let stream = Stream::new(id, socket, rtcp, &params, &self.inner.cfg);
        self.send(id, Command::Add(id, Box::new(stream)))?;
        Ok((StreamId(id), local))
    }

    /// Binds an even port for RTP and the odd one above it for RTCP (RFC 3550 §11).
    fn bind(&self) -> Result<(UdpSocket, UdpSocket), EngineError> {
        let cfg = &self.inner.cfg;
        let (min, max) = (cfg.port_min + (cfg.port_min & 1), cfg.port_max);
        if min > max {
            return Err(EngineError::NoPort(cfg.port_min, cfg.port_max));
        }
        let count = (max - min) / 2 + 1;
        let mut next = self
            .inner
            .next_port
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut last_err = None;
        for _ in 0..count {
            let port = *next;
            *next = if port as u32 + 2 > max as u32 {
                min
            } else {
                port + 2
            };
            let pair = UdpSocket::bind(SocketAddr::new(cfg.bind_ip, port)).and_then(|rtp| {
                let rtcp = UdpSocket::bind(SocketAddr::new(cfg.bind_ip, port.wrapping_add(1)))?;
                Ok((rtp, rtcp))
            });
            match pair {
                Ok((rtp, rtcp)) => {
                    rtp.set_nonblocking(true).map_err(EngineError::Bind)?;
                    rtcp.set_nonblocking(true).map_err(EngineError::Bind)?;
                    return Ok((rtp, rtcp));
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => last_err = Some(e),
            }
        }
        Err(match last_err {
            Some(e) => EngineError::Bind(e),
            None => EngineError::NoPort(cfg.port_min, cfg.port_max),
        })
    }

    /// New remote address, codec or direction (re-INVITE).
    pub fn update_stream(&self, id: StreamId, params: StreamParams) -> Result<(), EngineError> {
        self.send(id.0, Command::Update(id.0, params))
    }

    /// Plays `list`, replacing what is playing. `play` is echoed in [`MediaEventKind::PlayDone`].
    pub fn play(&self, id: StreamId, play: u64, list: Playlist) -> Result<(), EngineError> {
        self.send(id.0, Command::Play(id.0, play, list))
    }

    pub fn stop_play(&self, id: StreamId) -> Result<(), EngineError> {
        self.send(id.0, Command::StopPlay(id.0))
    }

    /// Starts recording the stream's received audio; ends with [`MediaEventKind::RecordDone`].
    pub fn record(&self, id: StreamId, params: RecordParams) -> Result<(), EngineError> {
        self.send(id.0, Command::Record(id.0, params))
    }

    pub fn stop_record(&self, id: StreamId) -> Result<(), EngineError> {
        self.send(id.0, Command::StopRecord(id.0))
    }

    /// Sends DTMF `digits` (`0-9 * # A-D`, at most 64) on the stream, after any digits still
    /// being sent: as RFC 4733 events when telephone-event was negotiated, else as in-band
    /// tones in place of the stream's audio. 100 ms per digit, 100 ms apart.
    pub fn send_dtmf(&self, id: StreamId, digits: &str) -> Result<(), EngineError> {
        valid_digits(digits).map_err(EngineError::BadDigits)?;
        self.send(id.0, Command::SendDtmf(id.0, digits.into()))
    }

    /// Joins the conference `name` (created on first join, gone with its last participant).
    /// Participants of one conference must share a worker: give their streams one affinity.
    pub fn join(&self, id: StreamId, name: &str, mode: ParticipantMode) -> Result<(), EngineError> {
        self.send(id.0, Command::Join(id.0, name.into(), mode))
    }

    pub fn set_mode(&self, id: StreamId, mode: ParticipantMode) -> Result<(), EngineError> {
        self.send(id.0, Command::SetMode(id.0, mode))
    }

    pub fn leave(&self, id: StreamId) -> Result<(), EngineError> {
        self.send(id.0, Command::Leave(id.0))
    }

    /// The affinity to create a stream with so that it shares `id`'s worker (and can be
    /// bridged or conferenced with it).
    pub fn affinity_of(&self, id: StreamId) -> u64 {
        self.worker_of(id.0) as u64
    }

    /// Bridges two streams: each hears the other (a two-party conference named after them).
    pub fn bridge(&self, a: StreamId, b: StreamId) -> Result<(), EngineError> {
        if self.worker_of(a.0) != self.worker_of(b.0) {
            return Err(EngineError::DifferentWorkers(a, b));
        }
        let name = format!("bridge:{a}:{b}");
        self.join(a, &name, ParticipantMode::Normal)?;
        self.join(b, &name, ParticipantMode::Normal)
    }

    /// Stops and frees the stream (a running recording ends with `Stopped`).
    pub fn remove_stream(&self, id: StreamId) -> Result<(), EngineError> {
        self.send(id.0, Command::Remove(id.0))
    }
}

struct Stream {
    id: u64,
    socket: UdpSocket,
    rtcp: UdpSocket,
    /// Where RTCP goes: the source of the peer's RTCP once heard, else the RTP address + 1.
    rtcp_remote: Option<SocketAddr>,
    next_report: Instant,
    /// This stream's report interval (the configured one, randomised once).
    report_interval: Duration,
    session: RtpSession,
    codec: Codec,
    coder: Coder,
    /// Received audio back in sequence order, for the in-band detector and for everything
    /// received in G.722 (whose decoder needs the packets in order).
    reorder: Reorder,
    /// Digits being sent.
    dtmf_out: Option<DtmfOut>,
    telephone_event: Option<u8>,
    inband_dtmf: bool,
    send: bool,
    receive: bool,
    dtmf_rx: DtmfReceiver,
    inband: DtmfDetector,
    saw_rfc4733: bool,
    player: Option<(u64, Player)>,
    recorder: Option<Recorder>,
    beep: Option<ToneGenerator>,
    playout: Option<Playout>,
    conference: Option<Arc<str>>,
    mix_out: [i16; FRAME],
    last_rx: Instant,
    timeout_reported: bool,
    /// The RTCP socket is watched by the worker's poller (else it is read every
    /// [`RTCP_POLL_TICKS`]).
    rtcp_watched: bool,
    /// The RTP socket is watched by the poller (it was idle), not read every tick.
    rtp_watched: bool,
    /// Ticks in a row the RTP socket was found empty.
    idle_ticks: u32,
    /// A socket on the same port connected to where this stream sends (see [`crate::peer`]);
    /// while there is one, `socket` gets only strays and is watched by the poller.
    peer: Option<PeerSocket>,
    /// A packet latched the remote address anew: the peer socket is brought in line after the
    /// receive (signalling brings it in line at once).
    relatched: bool,
    /// Datagrams read from the RTP socket in the last tick.
    last_read: u8,
}

fn payload_types(p: &StreamParams) -> Vec<u8> {
    let mut v = vec![p.codec.payload_type];
    v.extend(p.telephone_event);
    v
}

impl Stream {
    fn new(
        id: u64,
        socket: UdpSocket,
        rtcp: UdpSocket,
        p: &StreamParams,
        cfg: &EngineConfig,
    ) -> Stream {
        let r = rand_u64(id);
        // 0.5 to 1.5 times the interval (RFC 3550 §6.3.1), fixed per stream.
        let report_interval = cfg
            .rtcp_interval
            .mul_f64(0.5 + (r >> 11) as f64 / (1u64 << 53) as f64);
        let sender = RtpSender::new(r as u32, (r >> 32) as u16, (r >> 48) as u32 * 7919, RATE);
        let receiver = RtpReceiver::new(RATE, &payload_types(p), None, Latch::new(p.remote, 5));
        Stream {
            id,
            socket,
            rtcp,
            rtcp_remote: None,
            next_report: Instant::now() + report_interval,
            report_interval,
            session: RtpSession::new(sender, receiver),
            codec: p.codec,
            coder: Coder::new(p.codec),
            reorder: Reorder::new(),
            dtmf_out: None,
            telephone_event: p.telephone_event,
            inband_dtmf: p.inband_dtmf,
            send: p.send,
            receive: p.receive,
            dtmf_rx: DtmfReceiver::new(),
            inband: DtmfDetector::default(),
            saw_rfc4733: false,
            player: None,
            recorder: None,
            beep: None,
            playout: None,
            conference: None,
            mix_out: [0; FRAME],
            last_rx: Instant::now(),
            timeout_reported: false,
            rtcp_watched: false,
            rtp_watched: false,
            idle_ticks: 0,
            peer: None,
            relatched: false,
            last_read: 0,
        }
    }

    /// Whether this tick reads the RTP socket until it is empty. A stream that got exactly one
    /// packet last tick (a peer sending every 20 ms, the usual case) reads just one: finding
    /// the socket empty afterwards costs a syscall, a tenth of what the stream costs a tick.
    /// A packet that waits meanwhile adds at most [`DRAIN_TICKS`] ticks of delay, which only
    /// the detectors see: a stream in a conference, bridge or recording drains every tick, as
    /// does one that got none or several last tick (a late packet is followed by a burst; a
    /// peer with 10 ms packets sends two a tick).
    fn must_drain(&self, tick_no: u64, key: usize) -> bool {
        self.last_read != 1
            || self.playout.is_some()
            || self.recorder.is_some()
            || (tick_no + key as u64).is_multiple_of(DRAIN_TICKS)
    }

    /// The socket the remote's RTP comes in on: the peer socket when there is one.
    fn rtp_in(&self) -> &UdpSocket {
        self.peer.as_ref().map_or(&self.socket, PeerSocket::socket)
    }

    /// The in-band detector listens (the peer has not shown it sends RFC 4733 events).
    fn detecting(&self) -> bool {
        self.inband_dtmf && !self.saw_rfc4733
    }

    /// A received audio packet. Stateless codecs are decoded at once for the recorder and
    /// the conference (both place audio by timestamp, so order does not matter to them); the
    /// detector, and everything for G.722 (whose decoder needs the packets in order), gets
    /// the audio through the reorder buffer.
    fn on_audio(&mut self, rx: Rx<'_>, scratch: &mut ReceiveScratch<'_>) {
        let stateful = self.coder.is_stateful();
        if !stateful && (self.recorder.is_some() || self.playout.is_some()) {
            let n = self.coder.decode(rx.payload, scratch.pcm);
            self.feed_sinks(rx.ssrc, rx.timestamp, &scratch.pcm[..n]);
        }
        if !stateful && !self.detecting() {
            return;
        }
        if self.reorder.pass(rx.ssrc, rx.seq, rx.payload.len()) {
            self.in_order(rx.ssrc, rx.timestamp, rx.payload, scratch);
            return;
        }
        let mut pushed = self.reorder.push(rx.ssrc, rx.seq, rx.timestamp, rx.payload);
        if pushed == PushResult::NewSource {
            self.drain_received(true, scratch);
            pushed = self.reorder.push(rx.ssrc, rx.seq, rx.timestamp, rx.payload);
        }
        if pushed != PushResult::Held {
            self.in_order(rx.ssrc, rx.timestamp, rx.payload, scratch);
            return;
        }
        // At once, not after the whole receive batch: a late tick may find more packets
        // waiting on the socket than the buffer holds, and overflowing it loses audio.
        self.drain_received(false, scratch);
    }

    /// Hands on what the reorder buffer lets out (everything, with `flush`). A lost packet
    /// is simply skipped: the recorder and the conference leave silence at its place, and
    /// the detector hears a tone go on across the gap rather than a break that would split
    /// one digit into two.
    fn drain_received(&mut self, flush: bool, scratch: &mut ReceiveScratch<'_>) {
        while let Some(next) = self.reorder.pop(&mut scratch.bytes[..], flush) {
            if let Next::Packet {
                ssrc,
                timestamp,
                len,
            } = next
            {
                let bytes = std::mem::take(&mut scratch.bytes);
                self.in_order(ssrc, timestamp, &bytes[..len], scratch);
                scratch.bytes = bytes;
            }
        }
    }

    /// Audio in sequence order.
    fn in_order(
        &mut self,
        ssrc: u32,
        timestamp: u32,
        payload: &[u8],
        scratch: &mut ReceiveScratch<'_>,
    ) {
        let n = self.coder.decode(payload, scratch.pcm);
        let pcm = &scratch.pcm[..n];
        if self.coder.is_stateful() {
            self.feed_sinks(ssrc, timestamp, pcm);
        }
        if self.detecting() {
            let digits = &mut *scratch.digits;
            self.inband
                .process(pcm, |d| digits.push((d.digit, DtmfSource::InBand)));
        }
    }

    /// One datagram received on the RTP port.
    fn on_datagram(
        &mut self,
        data: &[u8],
        from: SocketAddr,
        now: Instant,
        scratch: &mut ReceiveScratch<'_>,
        counts: &mut TickCounts,
    ) {
        if !self.receive {
            return;
        }
        if is_rtcp(data) {
            // RTCP multiplexed on the RTP port (RFC 5761).
            match self.session.handle_rtcp(data, now) {
                Ok(_) => counts.rtcp_in += 1,
                Err(_) => counts.malformed_in += 1,
            }
            return;
        }
        let r = match self.session.receiver.handle_datagram(data, from, now) {
            Ok(r) => r,
            Err(Dropped::Malformed(e)) => {
                counts.malformed_in += 1;
                tracing::debug!(stream = self.id, %from, error = ?e, "malformed RTP dropped");
                return;
            }
            Err(d) => {
                counts.dropped_in += 1;
                tracing::trace!(stream = self.id, %from, reason = ?d, "RTP dropped");
                return;
            }
        };
        counts.packets_in += 1;
        if r.latched.is_some() {
            self.relatched = true;
        }
        if r.late {
            counts.late_in += 1;
        }
        self.last_rx = now;
        self.timeout_reported = false;
        let pt = r.packet.payload_type();
        let payload = r.packet.payload();
        let ts = r.packet.timestamp();
        let ssrc = r.packet.ssrc();
        if Some(pt) == self.telephone_event {
            self.saw_rfc4733 = true;
            if let Ok(Some(rep)) = self.dtmf_rx.on_packet(ts, payload, now) {
                if rep.is_new_digit() {
                    if let Some(d) = rep.digit() {
                        scratch.digits.push((d, DtmfSource::Rfc4733));
                    }
                }
            }
        } else if pt == self.codec.payload_type {
            let rx = Rx {
                ssrc,
                seq: r.packet.sequence(),
                timestamp: ts,
                payload,
            };
            self.on_audio(rx, scratch);
        }
    }

    /// The recorder and the conference.
    fn feed_sinks(&mut self, ssrc: u32, timestamp: u32, pcm: &[i16]) {
        if let Some(rec) = self.recorder.as_mut() {
            rec.on_audio(ssrc, timestamp, pcm);
        }
        if let Some(p) = self.playout.as_mut() {
            p.write(ssrc, timestamp, pcm);
        }
    }

    fn update(&mut self, p: StreamParams) {
        if self.session.receiver.latch().remote() != p.remote || p.remote.is_none() {
            self.session.receiver.latch_mut().reset(p.remote);
        }
        self.session.receiver.set_payload_types(&payload_types(&p));
        self.codec = p.codec;
        self.coder.set_codec(p.codec);
        self.telephone_event = p.telephone_event;
        self.inband_dtmf = p.inband_dtmf;
        self.send = p.send;
        self.receive = p.receive;
    }
}

/// Sockets a stream holds: RTP, RTCP, and the RTP socket connected to its peer.
const SOCKETS_PER_STREAM: u64 = 3;

/// Lifts the soft limit of open files to the hard one (systemd's default soft limit, 1,024,
/// would stop the engine at about 300 streams), and warns when the limit allows fewer streams
/// than the port range (`ports`).
#[cfg(target_os = "linux")]
fn raise_open_files_limit(ports: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain FFI calls with a valid rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above; raising the soft limit up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            lim.rlim_cur = before;
        }
    }
    let streams = lim.rlim_cur / SOCKETS_PER_STREAM;
    if lim.rlim_cur != libc::RLIM_INFINITY && streams < ports {
        tracing::warn!(
            open_files = lim.rlim_cur,
            streams,
            ports,
            "the open files limit allows fewer media streams than the RTP port range (3 sockets each); raise the hard limit (LimitNOFILE=, ulimit -Hn)"
        );
    } else {
        tracing::debug!(open_files = lim.rlim_cur, streams, "open files limit");
    }
}

#[cfg(not(target_os = "linux"))]
fn raise_open_files_limit(_ports: u64) {}

/// Puts the calling thread under `SCHED_FIFO` at `priority`; logs when that is refused.
#[cfg(target_os = "linux")]
fn set_realtime(priority: u8) {
    let param = libc::sched_param {
        sched_priority: i32::from(priority.clamp(1, 99)),
    };
    // SAFETY: plain FFI call with a valid pointer to an initialised sched_param; pid 0 is the
    // calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc == 0 {
        tracing::info!(priority, "media pacing thread runs with SCHED_FIFO");
    } else {
        let e = io::Error::last_os_error();
        tracing::warn!(priority, error = %e, "cannot use SCHED_FIFO for the media pacing thread; running with the normal policy");
    }
}

#[cfg(not(target_os = "linux"))]
fn set_realtime(priority: u8) {
    tracing::warn!(
        priority,
        "real-time scheduling of the media pacing thread is only supported on Linux"
    );
}

/// SplitMix64 over the stream id and the clock: SSRC, initial sequence and timestamp.
fn rand_u64(seed: u64) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ t;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Conference {
    slots: Vec<MixSlot>,
}

/// Per-tick counters, added to the shared stats once per tick.
#[derive(Default)]
struct TickCounts {
    packets_in: u64,
    packets_out: u64,
    late_out: u64,
    late_in: u64,
    malformed_in: u64,
    dropped_in: u64,
    dtmf: u64,
    rtcp_in: u64,
    rtcp_out: u64,
}

/// RTCP reports are looked at every this many ticks (0.5 s), staggered over the streams (and
/// the RTCP sockets the poller cannot watch read).
const RTCP_POLL_TICKS: u64 = 25;
/// Datagrams read from one socket in one tick at most (a flood must not stall the tick); the
/// rest wait for the next tick.
const MAX_READ_PER_TICK: usize = 64;
/// A stream that reads one packet a tick reads its socket until empty every this many ticks.
const DRAIN_TICKS: u64 = 4;
/// An RTP socket found empty this many ticks in a row (0.5 s) is handed to the poller.
const IDLE_TICKS: u32 = 25;

/// Which of a stream's sockets a poller token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    /// The socket the stream's RTP comes in on (its peer socket when it has one), idle.
    Rtp = 0,
    Rtcp = 1,
    /// The stream's own RTP socket while a peer socket takes the remote's datagrams: only
    /// strays (and a peer's new address) arrive there.
    Strays = 2,
}

/// The poller token of one of a stream's sockets: its slab key, and which socket.
fn token(key: usize, which: Watched) -> u64 {
    ((key as u64) << 2) | which as u64
}

/// The slab key and socket of a poller token.
fn untoken(t: u64) -> (usize, Watched) {
    let which = match t & 3 {
        0 => Watched::Rtp,
        1 => Watched::Rtcp,
        _ => Watched::Strays,
    };
    ((t >> 2) as usize, which)
}

fn ntp_now() -> NtpTime {
    NtpTime::from_unix(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// Where a stream's RTCP goes: the peer's RTCP source once heard, else its RTP address + 1.
fn rtcp_target(s: &Stream) -> Option<SocketAddr> {
    s.rtcp_remote.or_else(|| {
        s.session
            .receiver
            .latch()
            .remote()
            .map(|a| SocketAddr::new(a.ip(), a.port().wrapping_add(1)))
    })
}

/// This tick's audio for a stream: its conference mix, then the recording beep or its player
/// (added to the mix, or alone).
fn fill_frame(s: &mut Stream, frame: &mut [i16; FRAME], events: &UnboundedSender<MediaEvent>) {
    if s.conference.is_some() {
        *frame = s.mix_out;
    } else {
        frame.fill(0);
    }
    if let Some(beep) = s.beep.as_mut() {
        // The recording beep takes the whole frame.
        let n = beep.fill(&mut frame[..]);
        frame[n..].fill(0);
        if beep.is_done() {
            s.beep = None;
            if let Some(r) = s.recorder.as_mut() {
                r.beeping = false;
            }
        }
    } else if let Some((play, player)) = s.player.as_mut() {
        if s.conference.is_some() {
            let mut own = [0i16; FRAME];
            player.fill(&mut own);
            for (f, p) in frame.iter_mut().zip(own) {
                *f = f.saturating_add(p);
            }
        } else {
            player.fill(frame);
        }
        if player.is_done() {
            let play = *play;
            s.player = None;
            let _ = events.send(MediaEvent {
                stream: StreamId(s.id),
                kind: MediaEventKind::PlayDone {
                    play,
                    completed: true,
                },
            });
        }
    }
}

struct Scratch {
    rbuf: Box<[u8; 2048]>,
    sbuf: Box<[u8; 1500]>,
    pcm: Box<[i16; 2048]>,
    frame: [i16; FRAME],
    digits: Vec<(char, DtmfSource)>,
}

impl Scratch {
    /// The buffers the receive path decodes into; `sbuf` is free while receiving (it holds
    /// packets coming out of the reorder buffer).
    fn receive(&mut self) -> ReceiveScratch<'_> {
        ReceiveScratch {
            pcm: &mut self.pcm[..],
            bytes: &mut self.sbuf[..],
            digits: &mut self.digits,
        }
    }
}

/// Worker buffers lent to a stream's receive path.
struct ReceiveScratch<'a> {
    pcm: &'a mut [i16],
    bytes: &'a mut [u8],
    digits: &'a mut Vec<(char, DtmfSource)>,
}

/// A received audio packet.
#[derive(Clone, Copy)]
struct Rx<'a> {
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    payload: &'a [u8],
}

struct Worker {
    cfg: EngineConfig,
    rx: mpsc::Receiver<Command>,
    events: UnboundedSender<MediaEvent>,
    stats: Arc<EngineStats>,
    streams: Slab<Stream>,
    index: HashMap<u64, usize>,
    conferences: HashMap<Arc<str>, Conference>,
    scratch: Scratch,
    counts: TickCounts,
    tick_no: u64,
    /// The slab key the next tick's receive round starts at (where this one stopped).
    receive_from: usize,
    poller: Poller,
    /// Tokens of the sockets to read in this round.
    ready: Vec<u64>,
}

impl Worker {
    fn new(
        cfg: EngineConfig,
        rx: mpsc::Receiver<Command>,
        events: UnboundedSender<MediaEvent>,
        stats: Arc<EngineStats>,
    ) -> Worker {
        Worker {
            cfg,
            rx,
            events,
            stats,
            streams: Slab::with_capacity(256),
            index: HashMap::with_capacity(256),
            conferences: HashMap::new(),
            scratch: Scratch {
                rbuf: Box::new([0; 2048]),
                sbuf: Box::new([0; 1500]),
                pcm: Box::new([0; 2048]),
                frame: [0; FRAME],
                digits: Vec::with_capacity(16),
            },
            counts: TickCounts::default(),
            tick_no: 0,
            receive_from: 0,
            poller: Poller::new(),
            ready: Vec::with_capacity(256),
        }
    }

    fn run(mut self) {
        if let Some(priority) = self.cfg.realtime_priority {
            set_realtime(priority);
        }
        // `due`: when the current tick should start. Each tick's lateness (how long after
        // `due` it started) shifts every packet of the tick alike, so the change of lateness
        // from one tick to the next is the spacing error of the packets a stream sends.
        let mut due = Instant::now();
        let mut last_lateness: Option<Duration> = None;
        loop {
            loop {
                match self.rx.try_recv() {
                    Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => {
                        self.shutdown();
                        return;
                    }
                    Ok(cmd) => self.command(cmd),
                    Err(TryRecvError::Empty) => break,
                }
            }
            let lateness = Instant::now().saturating_duration_since(due);
            if !self.streams.is_empty() {
                metrics::histogram!("media_tick_lateness_seconds").record(lateness.as_secs_f64());
                if let Some(prev) = last_lateness {
                    let err = lateness.abs_diff(prev);
                    metrics::histogram!("media_tick_spacing_error_seconds")
                        .record(err.as_secs_f64());
                }
                last_lateness = Some(lateness);
            } else {
                last_lateness = None;
            }
            self.tick(due);
            due += PTIME;
            let now = Instant::now();
            if now > due + Duration::from_millis(100) {
                // Far behind (machine stalled): do not burst; start again from now.
                let behind = (now - due).as_millis() / PTIME.as_millis();
                self.stats
                    .skipped_ticks
                    .fetch_add(behind as u64, Ordering::Relaxed);
                metrics::counter!("media_skipped_ticks_total").increment(behind as u64);
                due = now;
                last_lateness = None;
            }
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }

    fn shutdown(&mut self) {
        let ids: Vec<u64> = self.index.keys().copied().collect();
        for id in ids {
            self.remove(id);
        }
    }

    fn emit(&self, id: u64, kind: MediaEventKind) {
        let _ = self.events.send(MediaEvent {
            stream: StreamId(id),
            kind,
        });
    }

    fn stream_mut(&mut self, id: u64) -> Option<&mut Stream> {
        let key = *self.index.get(&id)?;
        self.streams.get_mut(key)
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Add(id, stream) => {
                let key = self.streams.insert(*stream);
                self.index.insert(id, key);
                let s = &mut self.streams[key];
                s.rtcp_watched = match self.poller.add(&s.rtcp, token(key, Watched::Rtcp)) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::debug!(stream = id, error = %e, "RTCP socket not watched; read every 25 ticks");
                        false
                    }
                };
                self.sync_peer(key);
                self.stats.streams.fetch_add(1, Ordering::Relaxed);
                metrics::gauge!("media_streams").increment(1.0);
            }
            Command::Update(id, p) => {
                if let Some(&key) = self.index.get(&id) {
                    self.streams[key].update(p);
                    self.sync_peer(key);
                }
            }
            Command::Play(id, play, list) => {
                let old = self.stream_mut(id).and_then(|s| {
                    let old = s.player.take();
                    s.player = Some((play, Player::new(list)));
                    old
                });
                if let Some((old, _)) = old {
                    self.emit(
                        id,
                        MediaEventKind::PlayDone {
                            play: old,
                            completed: false,
                        },
                    );
                }
            }
            Command::StopPlay(id) => {
                if let Some((old, _)) = self.stream_mut(id).and_then(|s| s.player.take()) {
                    self.emit(
                        id,
                        MediaEventKind::PlayDone {
                            play: old,
                            completed: false,
                        },
                    );
                }
            }
            Command::Record(id, params) => {
                let old = self.stream_mut(id).and_then(|s| {
                    s.beep = params
                        .beep
                        .then(|| ToneGenerator::new(ToneSpec::BEEP, RATE));
                    s.recorder.replace(Recorder::new(params))
                });
                if let Some(r) = old {
                    self.emit(id, MediaEventKind::RecordDone(r.finish(RecordEnd::Stopped)));
                }
            }
            Command::StopRecord(id) => {
                self.flush_received(id);
                if let Some(r) = self.stream_mut(id).and_then(|s| s.recorder.take()) {
                    self.emit(id, MediaEventKind::RecordDone(r.finish(RecordEnd::Stopped)));
                }
            }
            Command::Join(id, name, mode) => self.join(id, name, mode),
            Command::SetMode(id, mode) => {
                let conf = self.stream_mut(id).and_then(|s| s.conference.clone());
                if let Some(c) = conf.and_then(|n| self.conferences.get_mut(&n)) {
                    for slot in c.slots.iter_mut().filter(|s| s.stream == id) {
                        slot.mode = mode;
                    }
                }
            }
            Command::SendDtmf(id, digits) => {
                if let Some(s) = self.stream_mut(id) {
                    match s.dtmf_out.as_mut() {
                        Some(d) => d.append(&digits),
                        None => {
                            let rfc4733 = s.telephone_event.is_some();
                            s.dtmf_out = Some(DtmfOut::new(&digits, rfc4733));
                        }
                    }
                }
            }
            Command::Leave(id) => self.leave(id),
            Command::Remove(id) => self.remove(id),
            Command::Shutdown => {}
        }
    }

    fn join(&mut self, id: u64, name: Arc<str>, mode: ParticipantMode) {
        self.leave(id);
        let delay = self.cfg.playout_delay_ms * RATE / 1000;
        let Some(s) = self.stream_mut(id) else { return };
        s.conference = Some(name.clone());
        s.playout = Some(Playout::new(delay));
        self.conferences
            .entry(name)
            .or_insert_with(|| Conference { slots: Vec::new() })
            .slots
            .push(MixSlot::new(id, mode));
    }

    fn leave(&mut self, id: u64) {
        let Some(s) = self.stream_mut(id) else { return };
        s.playout = None;
        let Some(name) = s.conference.take() else {
            return;
        };
        if let Some(c) = self.conferences.get_mut(&name) {
            c.slots.retain(|s| s.stream != id);
            if c.slots.is_empty() {
                self.conferences.remove(&name);
            }
        }
    }

    /// Hands on everything the stream's reorder buffer holds (before a recording ends), and
    /// reports the digits heard in it.
    fn flush_received(&mut self, id: u64) {
        let Some(&key) = self.index.get(&id) else {
            return;
        };
        let Some(s) = self.streams.get_mut(key) else {
            return;
        };
        self.scratch.digits.clear();
        s.drain_received(true, &mut self.scratch.receive());
        for &(digit, source) in &self.scratch.digits {
            self.counts.dtmf += 1;
            let _ = self.events.send(MediaEvent {
                stream: StreamId(id),
                kind: MediaEventKind::Dtmf { digit, source },
            });
        }
    }

    fn remove(&mut self, id: u64) {
        self.flush_received(id);
        self.leave(id);
        let Some(key) = self.index.remove(&id) else {
            return;
        };
        let mut s = self.streams.remove(key);
        if s.rtp_watched {
            self.poller.delete(s.rtp_in());
        }
        if s.peer.is_some() {
            self.poller.delete(&s.socket);
        }
        if s.rtcp_watched {
            self.poller.delete(&s.rtcp);
        }
        if let Some(to) = rtcp_target(&s) {
            let mut buf = [0u8; 256];
            if let Ok(n) = s.session.write_bye(&self.cfg.cname, None, &mut buf) {
                if s.rtcp.send_to(&buf[..n], to).is_ok() {
                    self.counts.rtcp_out += 1;
                }
            }
        }
        self.stats.streams.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("media_streams").decrement(1.0);
        if let Some((play, _)) = s.player {
            self.emit(
                id,
                MediaEventKind::PlayDone {
                    play,
                    completed: false,
                },
            );
        }
        if let Some(r) = s.recorder {
            self.emit(id, MediaEventKind::RecordDone(r.finish(RecordEnd::Stopped)));
        }
    }

    /// One tick, due to start at `due`.
    fn tick(&mut self, due: Instant) {
        let now = Instant::now();
        self.stats.ticks.fetch_add(1, Ordering::Relaxed);
        let keys: usize = self.streams.capacity();
        // 1. Mix the conferences from what the playout rings hold (written by the previous
        //    ticks' receive; their playout delay absorbs the one-tick lag).
        for conf in self.conferences.values_mut() {
            for slot in conf.slots.iter_mut() {
                let s = self
                    .index
                    .get(&slot.stream)
                    .and_then(|&k| self.streams.get_mut(k));
                match s.and_then(|s| s.playout.as_mut()) {
                    Some(p) => p.read(&mut slot.input),
                    None => slot.input.fill(0),
                }
            }
            mix(&mut conf.slots);
            for slot in conf.slots.iter() {
                if let Some(s) = self
                    .index
                    .get(&slot.stream)
                    .and_then(|&k| self.streams.get_mut(k))
                {
                    s.mix_out = slot.output;
                }
            }
        }
        // 2. Send one frame per stream first, so that how much arrived (the receive work)
        //    does not shift the send times: each stream's packets leave at the same offset
        //    from the tick every 20 ms.
        let mut late = false;
        let mut n = 0u32;
        for key in 0..keys {
            if !self.streams.contains(key) {
                continue;
            }
            if n.is_multiple_of(32) && !late {
                late = Instant::now().saturating_duration_since(due) > self.cfg.late_threshold;
            }
            n += 1;
            self.send_frame(key, late);
        }
        // 3. What the poller reports: RTCP, and idle RTP sockets that got something again
        //    (they go back to being read every tick, below).
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        if let Err(e) = self.poller.ready(&mut ready) {
            tracing::warn!(error = %e, "epoll_wait failed");
        }
        for &t in &ready {
            match untoken(t) {
                (key, Watched::Rtcp) => self.rtcp_read(key, now),
                (key, Watched::Strays) => self.receive(key, now, true),
                (key, Watched::Rtp) => {
                    if let Some(s) = self.streams.get_mut(key) {
                        if s.rtp_watched {
                            self.poller.delete(s.rtp_in());
                            s.rtp_watched = false;
                            s.idle_ticks = 0;
                        }
                    }
                }
            }
        }
        self.ready = ready;
        // 4. Receive on every stream whose RTP socket is not idle, then run the recorders' and
        //    RTP timeout clocks; RTCP reports (and RTCP reads where the poller cannot watch)
        //    for a 25th of the streams. The round starts where the last one stopped receiving:
        //    once the next tick is due (a burst of work, the machine busy elsewhere), the rest
        //    of the streams receive after the next tick's sends, so that those leave on time;
        //    their packets wait in the sockets meanwhile.
        self.tick_no = self.tick_no.wrapping_add(1);
        let next_due = due + PTIME;
        let start = std::mem::take(&mut self.receive_from);
        let mut receiving = true;
        let mut deferred = 0u64;
        for i in 0..keys {
            let key = (start + i) % keys;
            if receiving && i > 0 && i % 32 == 0 && Instant::now() >= next_due {
                receiving = false;
                self.receive_from = key;
            }
            let Some(s) = self.streams.get(key) else {
                continue;
            };
            let rtcp_watched = s.rtcp_watched;
            if !s.rtp_watched {
                if receiving {
                    self.receive(key, now, false);
                } else {
                    deferred += 1;
                }
            }
            self.clocks(key, now);
            if (self.tick_no + key as u64).is_multiple_of(RTCP_POLL_TICKS) {
                if !rtcp_watched {
                    self.rtcp_read(key, now);
                }
                self.rtcp_report(key, now);
            }
        }
        if deferred > 0 {
            metrics::counter!("media_receives_deferred_total").increment(deferred);
        }
        self.flush_counts();
    }

    fn flush_counts(&mut self) {
        let c = std::mem::take(&mut self.counts);
        let st = &self.stats;
        let add = |a: &AtomicU64, v: u64| {
            if v > 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        };
        add(&st.packets_in, c.packets_in);
        add(&st.packets_out, c.packets_out);
        add(&st.late_out, c.late_out);
        add(&st.late_in, c.late_in);
        add(&st.malformed_in, c.malformed_in);
        add(&st.dropped_in, c.dropped_in);
        add(&st.dtmf, c.dtmf);
        add(&st.rtcp_in, c.rtcp_in);
        add(&st.rtcp_out, c.rtcp_out);
        if c.rtcp_in > 0 {
            metrics::counter!("rtcp_packets_in_total").increment(c.rtcp_in);
        }
        if c.rtcp_out > 0 {
            metrics::counter!("rtcp_packets_out_total").increment(c.rtcp_out);
        }
        if c.packets_in > 0 {
            metrics::counter!("rtp_packets_in_total").increment(c.packets_in);
        }
        if c.packets_out > 0 {
            metrics::counter!("rtp_packets_out_total").increment(c.packets_out);
        }
        if c.late_out > 0 {
            metrics::counter!("rtp_packets_sent_late_total").increment(c.late_out);
        }
        if c.late_in > 0 {
            metrics::counter!("rtp_packets_received_late_total").increment(c.late_in);
        }
        if c.malformed_in > 0 {
            metrics::counter!("rtp_malformed_total").increment(c.malformed_in);
        }
        if c.dropped_in > 0 {
            metrics::counter!("rtp_dropped_total").increment(c.dropped_in);
        }
        if c.dtmf > 0 {
            metrics::counter!("dtmf_detected_total").increment(c.dtmf);
        }
    }

    /// Reads the datagrams waiting on a stream's RTP socket (at most [`MAX_READ_PER_TICK`]);
    /// hands the socket to the poller when it has been empty for [`IDLE_TICKS`].
    /// With `strays`, reads the stream's own socket while a peer socket has the remote's
    /// datagrams.
    fn receive(&mut self, key: usize, now: Instant, strays: bool) {
        self.read_rtp(key, now, strays);
        if self.streams.get(key).is_some_and(|s| s.relatched) {
            self.sync_peer(key);
        }
    }

    fn read_rtp(&mut self, key: usize, now: Instant, strays: bool) {
        let Worker {
            streams,
            scratch,
            counts,
            events,
            poller,
            tick_no,
            ..
        } = self;
        let Some(s) = streams.get_mut(key) else {
            return;
        };
        scratch.digits.clear();
        let limit = if strays || s.must_drain(*tick_no, key) {
            MAX_READ_PER_TICK
        } else {
            1
        };
        let mut read = 0;
        while read < limit {
            let socket = if strays { &s.socket } else { s.rtp_in() };
            let (len, from) = match socket.recv_from(&mut scratch.rbuf[..]) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // A pending socket error (reported once).
                    tracing::trace!(stream = s.id, error = %e, "RTP receive error");
                    break;
                }
            };
            read += 1;
            let mut rs = ReceiveScratch {
                pcm: &mut scratch.pcm[..],
                bytes: &mut scratch.sbuf[..],
                digits: &mut scratch.digits,
            };
            s.on_datagram(&scratch.rbuf[..len], from, now, &mut rs, counts);
        }
        if !strays {
            s.last_read = read.min(u8::MAX as usize) as u8;
        }
        if read == 0 && strays {
            return;
        }
        if read == 0 {
            s.idle_ticks = s.idle_ticks.saturating_add(1);
            // Level-triggered: a datagram that came in since the read above is reported at
            // once, so handing the socket over loses nothing.
            if s.idle_ticks >= IDLE_TICKS
                && poller.add(s.rtp_in(), token(key, Watched::Rtp)).is_ok()
            {
                s.rtp_watched = true;
            }
            return;
        }
        if !strays {
            s.idle_ticks = 0;
        }
        s.drain_received(false, &mut scratch.receive());
        for &(digit, source) in &scratch.digits {
            counts.dtmf += 1;
            tracing::debug!(stream = s.id, %digit, ?source, "DTMF");
            let _ = events.send(MediaEvent {
                stream: StreamId(s.id),
                kind: MediaEventKind::Dtmf { digit, source },
            });
            if let Some(end) = s.recorder.as_mut().and_then(|r| r.on_dtmf(digit)) {
                if let Some(r) = s.recorder.take() {
                    let _ = events.send(MediaEvent {
                        stream: StreamId(s.id),
                        kind: MediaEventKind::RecordDone(r.finish(end)),
                    });
                }
            }
        }
    }

    /// Reads the peer's RTCP (at most [`MAX_READ_PER_TICK`] datagrams).
    fn rtcp_read(&mut self, key: usize, now: Instant) {
        let Worker {
            streams,
            scratch,
            counts,
            ..
        } = self;
        let Some(s) = streams.get_mut(key) else {
            return;
        };
        for _ in 0..MAX_READ_PER_TICK {
            let (len, from) = match s.rtcp.recv_from(&mut scratch.rbuf[..]) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::trace!(stream = s.id, error = %e, "RTCP receive error");
                    break;
                }
            };
            match s.session.handle_rtcp(&scratch.rbuf[..len], now) {
                Ok(summary) => {
                    counts.rtcp_in += 1;
                    s.rtcp_remote = Some(from);
                    if let Some(r) = summary.report_about_us {
                        tracing::trace!(
                            stream = s.id,
                            lost = r.fraction_lost,
                            jitter = r.jitter,
                            "RTCP report about our stream"
                        );
                    }
                }
                Err(e) => {
                    counts.malformed_in += 1;
                    tracing::debug!(stream = s.id, %from, error = ?e, "malformed RTCP dropped");
                }
            }
        }
    }

    /// Sends our RTCP report when it is due.
    fn rtcp_report(&mut self, key: usize, now: Instant) {
        let Worker {
            streams,
            scratch,
            counts,
            cfg,
            ..
        } = self;
        let Some(s) = streams.get_mut(key) else {
            return;
        };
        if now < s.next_report {
            return;
        }
        s.next_report = now + s.report_interval;
        let Some(to) = rtcp_target(s) else {
            return;
        };
        let Ok(n) = s
            .session
            .write_report(&cfg.cname, ntp_now(), now, &mut scratch.sbuf[..])
        else {
            return;
        };
        match s.rtcp.send_to(&scratch.sbuf[..n], to) {
            Ok(_) => counts.rtcp_out += 1,
            Err(e) => tracing::trace!(stream = s.id, error = %e, "RTCP send failed"),
        }
    }

    fn send_frame(&mut self, key: usize, late: bool) {
        let Worker {
            streams,
            scratch,
            counts,
            events,
            ..
        } = self;
        let Some(s) = streams.get_mut(key) else {
            return;
        };
        let frame = &mut scratch.frame;
        fill_frame(s, frame, events);
        let dtmf = match s.dtmf_out.as_mut() {
            Some(d) => {
                let t = d.tick(s.session.sender.timestamp(), frame);
                if d.is_done() {
                    s.dtmf_out = None;
                }
                t
            }
            None => DtmfTick::Audio,
        };
        let remote = s.session.receiver.latch().remote();
        let Some(remote) = remote.filter(|_| s.send) else {
            s.session.sender.skip(FRAME as u32);
            return;
        };
        let now = Instant::now();
        let sender = &mut s.session.sender;
        let written = match (dtmf, s.telephone_event) {
            (DtmfTick::Event(event), Some(pt)) => {
                // The event packet stands in for this tick's audio (RFC 4733 §2.5.1.1).
                let r = sender.write_event(pt, &event, &mut scratch.sbuf[..], now);
                sender.skip(FRAME as u32);
                r
            }
            _ => {
                let coder = &mut s.coder;
                sender.write_audio_with(
                    s.codec.payload_type,
                    FRAME as u32,
                    &mut scratch.sbuf[..],
                    now,
                    |b| coder.encode(frame, b),
                )
            }
        };
        let Ok(len) = written else {
            return;
        };
        let packet = &scratch.sbuf[..len];
        let sent = match &s.peer {
            Some(p) if p.to() == remote => p.socket().send(packet),
            _ => s.socket.send_to(packet, remote),
        };
        match sent {
            Ok(_) => {
                counts.packets_out += 1;
                if late {
                    counts.late_out += 1;
                }
            }
            Err(e) => tracing::trace!(stream = s.id, error = %e, "RTP send failed"),
        }
    }

    /// Brings the stream's peer socket in line with where the stream sends: connected there,
    /// or closed when there is no address (the stream's own socket then takes everything).
    fn sync_peer(&mut self, key: usize) {
        let Worker {
            streams, poller, ..
        } = self;
        let Some(s) = streams.get_mut(key) else {
            return;
        };
        s.relatched = false;
        let to = s.session.receiver.latch().remote();
        if let (Some(p), Some(to)) = (s.peer.as_mut(), to) {
            if p.to() == to || p.retarget(to).is_ok() {
                return;
            }
        }
        if s.rtp_watched {
            poller.delete(s.rtp_in());
            s.rtp_watched = false;
            s.idle_ticks = 0;
        }
        if s.peer.take().is_some() {
            poller.delete(&s.socket);
        }
        let Some(to) = to else {
            return;
        };
        match PeerSocket::open(&s.socket, to) {
            // Strays must still be heard: without a watch on the stream's socket, no peer.
            Ok(p) => match poller.add(&s.socket, token(key, Watched::Strays)) {
                Ok(()) => s.peer = Some(p),
                Err(e) => {
                    tracing::debug!(stream = s.id, error = %e, "no connected RTP socket: strays could not be watched")
                }
            },
            Err(e) => {
                tracing::debug!(stream = s.id, %to, error = %e, "no connected RTP socket; sending unconnected")
            }
        }
    }

    fn clocks(&mut self, key: usize, now: Instant) {
        let Some(s) = self.streams.get_mut(key) else {
            return;
        };
        let id = s.id;
        s.dtmf_rx.handle_timeout(now);
        let mut out = None;
        if let Some(end) = s.recorder.as_mut().and_then(|r| r.on_tick()) {
            if let Some(r) = s.recorder.take() {
                out = Some(MediaEventKind::RecordDone(r.finish(end)));
            }
        }
        let mut timeout = false;
        if let Some(t) = self.cfg.rtp_timeout {
            if s.receive && !s.timeout_reported && now.saturating_duration_since(s.last_rx) > t {
                s.timeout_reported = true;
                timeout = true;
            }
        }
        if let Some(k) = out {
            self.emit(id, k);
        }
        if timeout {
            self.emit(id, MediaEventKind::RtpTimeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_rtp::RtpHeader;

    fn bound() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_nonblocking(true).expect("nonblocking");
        s
    }

    #[test]
    fn a_tick_that_runs_late_leaves_receives_to_the_next_which_starts_with_them() {
        let (_commands, rx) = mpsc::channel();
        let (events, _events) = unbounded_channel();
        let stats = Arc::new(EngineStats::default());
        let mut w = Worker::new(EngineConfig::default(), rx, events, stats.clone());
        let phone = bound();
        let params = StreamParams::new(Some(phone.local_addr().expect("addr")), Codec::PCMU);
        let mut ports = Vec::new();
        for id in 0..40 {
            let (rtp, rtcp) = (bound(), bound());
            ports.push(rtp.local_addr().expect("addr"));
            let s = Stream::new(id, rtp, rtcp, &params, &w.cfg);
            w.command(Command::Add(id, Box::new(s)));
        }
        let mut packet = [0u8; 200];
        let header = RtpHeader {
            marker: false,
            payload_type: 0,
            sequence: 1,
            timestamp: 160,
            ssrc: 7,
        };
        let n = header
            .write_with_payload(&[0xff; 160], &mut packet)
            .expect("packet");
        for to in &ports {
            phone.send_to(&packet[..n], to).expect("send");
        }
        let packets_in = || stats.packets_in.load(Ordering::Relaxed);
        // Due a second ago: the next tick is due before this one starts receiving, so it
        // receives one batch (32 streams) and stops.
        w.tick(Instant::now() - Duration::from_secs(1));
        assert_eq!(packets_in(), 32);
        assert_eq!(w.receive_from, 32);
        // On time: it starts with the 8 left over, and takes the whole round.
        w.tick(Instant::now());
        assert_eq!(packets_in(), 40);
        assert_eq!(w.receive_from, 0);
    }
}
