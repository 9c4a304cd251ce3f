//! Sans-I/O RTP for Switchboard.
//!
//! Everything here is bytes and timestamps in, bytes and events out: no sockets, no tasks, no clock
//! reads (callers pass `now`). The receive and send paths work on caller-provided buffers and do
//! not allocate per packet.
//!
//! * [`packet`]: RTP header parse (zero-copy view) and write (RFC 3550 §5).
//! * [`rtcp`]: RTCP SR/RR/SDES/BYE parse and build, compound packets (RFC 3550 §6).
//! * [`stats`]: receiver statistics (extended highest sequence, loss, fraction lost, jitter).
//! * [`session`]: the sender (sequence/timestamp continuity across source changes), the receiver
//!   side with symmetric-RTP latching and drop counters.
//! * [`codec`]: G.711 µ-law/A-law, L16, G.722, and 8 <-> 16 kHz conversion for G.722.
//! * [`telephone_event`]: RFC 4733 DTMF events: payload codec, sender and receiver state machines.
//! * [`dtmf`]: in-band DTMF detection (Goertzel, ITU-T Q.24 timing and twist).
//! * [`tone`]: tone generators (ringback, busy, beep, DTMF).
//! * [`jitter`]: a reordering jitter buffer with playout delay and a loss-concealment hook.

pub mod codec;
pub mod dtmf;
pub mod jitter;
pub mod packet;
pub mod rtcp;
pub mod session;
pub mod stats;
pub mod telephone_event;
pub mod tone;

pub use packet::{is_rtcp, RtpError, RtpHeader, RtpPacket};
pub use session::{Dropped, Latch, LatchDecision, Received, RtpReceiver, RtpSender, RtpSession};
