//! A stream's connected socket (Linux). Sending on an unconnected UDP socket makes the kernel
//! look up the route for every datagram; a connected one keeps it. But a stream's own RTP
//! socket cannot be connected: latching (symmetric RTP) and the counting of stray packets need
//! datagrams from any address. So the stream opens a second socket on the same local port,
//! connected to the address it sends to (`SO_REUSEPORT` on both): the kernel delivers what
//! comes from that address to the connected socket (a connected socket is the better match)
//! and everything else to the stream's own socket, which the worker's poller watches. When the
//! remote address changes (re-INVITE, a re-latch), the socket is connected again.
//!
//! The port stays the stream's alone: it is bound first without `SO_REUSEPORT`, so a plain
//! bind elsewhere still fails with "address in use", and nothing but this module binds to it
//! with the option.

use std::io;
use std::net::{SocketAddr, UdpSocket};

pub(crate) struct PeerSocket {
    socket: UdpSocket,
    to: SocketAddr,
}

impl PeerSocket {
    /// A socket on `rtp`'s local address, connected to `to`.
    #[cfg(target_os = "linux")]
    pub(crate) fn open(rtp: &UdpSocket, to: SocketAddr) -> io::Result<PeerSocket> {
        use socket2::{Domain, Protocol, SockRef, Socket, Type};
        if !usable(to) {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let local = rtp.local_addr()?;
        SockRef::from(rtp).set_reuse_port(true)?;
        let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&local.into())?;
        socket.connect(&to.into())?;
        Ok(PeerSocket {
            socket: socket.into(),
            to,
        })
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn open(_rtp: &UdpSocket, _to: SocketAddr) -> io::Result<PeerSocket> {
        // SO_REUSEPORT does not prefer the connected socket everywhere.
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Connects the socket to a new address.
    pub(crate) fn retarget(&mut self, to: SocketAddr) -> io::Result<()> {
        if !usable(to) {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        self.socket.connect(to)?;
        self.to = to;
        Ok(())
    }

    pub(crate) fn to(&self) -> SocketAddr {
        self.to
    }

    pub(crate) fn socket(&self) -> &UdpSocket {
        &self.socket
    }
}

/// An address a socket can be connected to (SDP's `0.0.0.0` for hold, port 0: no).
fn usable(to: SocketAddr) -> bool {
    !to.ip().is_unspecified() && to.port() != 0
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::Duration;

    fn recv_all(s: &UdpSocket) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok((n, _)) = s.recv_from(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }

    #[test]
    fn the_peer_gets_its_own_datagrams_and_the_stream_socket_the_rest() {
        let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
        rtp.set_nonblocking(true).unwrap();
        let local = rtp.local_addr().unwrap();
        let (x, y) = (
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
        );
        let mut peer = PeerSocket::open(&rtp, x.local_addr().unwrap()).unwrap();
        // Nobody else can take the port.
        assert_eq!(
            UdpSocket::bind(local).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        x.send_to(b"x", local).unwrap();
        y.send_to(b"y", local).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(recv_all(peer.socket()), vec![b"x".to_vec()]);
        assert_eq!(recv_all(&rtp), vec![b"y".to_vec()]);
        // What the peer socket sends leaves from the stream's port.
        peer.socket().send(b"out").unwrap();
        let mut buf = [0u8; 8];
        x.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let (n, from) = x.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"out"[..], local));
        // Connected again: now y's datagrams are the peer's.
        peer.retarget(y.local_addr().unwrap()).unwrap();
        x.send_to(b"x", local).unwrap();
        y.send_to(b"y", local).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(recv_all(peer.socket()), vec![b"y".to_vec()]);
        assert_eq!(recv_all(&rtp), vec![b"x".to_vec()]);
        // Hold's 0.0.0.0 is no address to connect to.
        assert!(peer.retarget("0.0.0.0:4000".parse().unwrap()).is_err());
    }
}
