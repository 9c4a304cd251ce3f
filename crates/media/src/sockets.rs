//! A worker's socket I/O below the engine: which sockets have datagrams waiting (one
//! edge-triggered epoll instance per worker, so a tick reads only the sockets that received
//! something and never pays a syscall for an empty one) and batched receive (`recvmmsg`: one
//! syscall returns every datagram waiting on a socket, up to [`BATCH`]).
//!
//! Edge-triggered readiness is reported once per arrival, so a socket reported readable must be
//! read until it is empty: [`RecvBatch::recv`] returning fewer than [`BATCH`] datagrams means
//! the socket was drained. Elsewhere than on Linux there is no readiness (every socket is read
//! every tick) and the batch is filled by `recv_from` until `WouldBlock`.

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// Datagrams one receive call returns at most.
pub(crate) const BATCH: usize = 8;
/// Largest datagram read whole (longer ones are truncated, and then fail to parse).
const BUF: usize = 2048;

#[cfg(target_os = "linux")]
pub(crate) use linux::{Poller, RecvBatch};
#[cfg(not(target_os = "linux"))]
pub(crate) use portable::{Poller, RecvBatch};

#[cfg(target_os = "linux")]
mod linux {
    use super::*;
    use std::mem::{size_of, zeroed};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// Readiness events fetched per `epoll_wait`.
    const EVENTS: usize = 512;

    /// One epoll instance, edge-triggered, tokens chosen by the caller.
    pub(crate) struct Poller {
        epoll: Option<OwnedFd>,
        events: Box<[libc::epoll_event]>,
    }

    impl Poller {
        /// A poller; when the system refuses an epoll instance, one that registers nothing (the
        /// caller then reads every socket every tick).
        pub(crate) fn new() -> Poller {
            // SAFETY: plain FFI call; a non-negative return is a new descriptor we own.
            let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            let epoll = if fd >= 0 {
                // SAFETY: `fd` was just returned by epoll_create1 and is owned by nobody else.
                Some(unsafe { OwnedFd::from_raw_fd(fd) })
            } else {
                let e = io::Error::last_os_error();
                tracing::warn!(error = %e, "no epoll instance: media sockets are polled every tick");
                None
            };
            Poller {
                epoll,
                events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS].into_boxed_slice(),
            }
        }

        /// Watches `socket` for input (edge-triggered); its events carry `token`. An error means
        /// the socket is not watched: the caller must read it every tick.
        pub(crate) fn add(&self, socket: &UdpSocket, token: u64) -> io::Result<()> {
            let Some(ep) = &self.epoll else {
                return Err(io::ErrorKind::Unsupported.into());
            };
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLET) as u32,
                u64: token,
            };
            // SAFETY: both descriptors are open; `ev` is a valid epoll_event.
            let rc = unsafe {
                libc::epoll_ctl(
                    ep.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    socket.as_raw_fd(),
                    &mut ev,
                )
            };
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }

        /// Stops watching `socket` (closing it would too; this keeps a stray token from ever
        /// being reported for a reused slot).
        pub(crate) fn delete(&self, socket: &UdpSocket) {
            if let Some(ep) = &self.epoll {
                let mut ev = libc::epoll_event { events: 0, u64: 0 };
                // SAFETY: both descriptors are open; `ev` is ignored for EPOLL_CTL_DEL but must
                // be non-null on old kernels.
                unsafe {
                    libc::epoll_ctl(
                        ep.as_raw_fd(),
                        libc::EPOLL_CTL_DEL,
                        socket.as_raw_fd(),
                        &mut ev,
                    )
                };
            }
        }

        /// Appends the tokens of the sockets that received something since they were last
        /// reported; does not block.
        pub(crate) fn ready(&mut self, out: &mut Vec<u64>) -> io::Result<()> {
            let Some(ep) = &self.epoll else {
                return Ok(());
            };
            loop {
                // SAFETY: `events` is a valid buffer of `len` epoll_events; timeout 0.
                let n = unsafe {
                    libc::epoll_wait(
                        ep.as_raw_fd(),
                        self.events.as_mut_ptr(),
                        self.events.len() as i32,
                        0,
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                let n = n as usize;
                out.extend(self.events[..n].iter().map(|e| e.u64));
                // Edge-triggered: what was reported has left the ready list, so another call
                // returns the rest.
                if n < self.events.len() {
                    return Ok(());
                }
            }
        }
    }

    /// Buffers for one `recvmmsg` (the headers pointing into them are built on the stack for
    /// each call, so that nothing here points into itself).
    pub(crate) struct RecvBatch {
        bufs: Box<[[u8; BUF]; BATCH]>,
        addrs: [libc::sockaddr_storage; BATCH],
        lens: [usize; BATCH],
    }

    impl RecvBatch {
        pub(crate) fn new() -> RecvBatch {
            RecvBatch {
                bufs: Box::new([[0; BUF]; BATCH]),
                // SAFETY: all-zero is a valid sockaddr_storage (family AF_UNSPEC).
                addrs: unsafe { zeroed() },
                lens: [0; BATCH],
            }
        }

        /// Receives the datagrams waiting on `socket`, at most [`BATCH`], without blocking;
        /// `Ok(0)` when there are none. Fewer than [`BATCH`] means the socket is now empty.
        pub(crate) fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
            // SAFETY: all-zero is a valid value of these plain C structs (null pointers
            // included); the pointers are set below.
            let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
            for (iov, buf) in iovs.iter_mut().zip(self.bufs.iter_mut()) {
                iov.iov_base = buf.as_mut_ptr().cast();
                iov.iov_len = BUF;
            }
            for ((h, iov), addr) in hdrs.iter_mut().zip(&mut iovs).zip(&mut self.addrs) {
                let h = &mut h.msg_hdr;
                h.msg_name = (addr as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_iov = iov;
                h.msg_iovlen = 1;
            }
            loop {
                // SAFETY: every header points to an iovec and a sockaddr_storage that outlive
                // the call, and each iovec to a buffer of BUF bytes owned by `self`; no timeout.
                let n = unsafe {
                    libc::recvmmsg(
                        socket.as_raw_fd(),
                        hdrs.as_mut_ptr(),
                        BATCH as libc::c_uint,
                        libc::MSG_DONTWAIT,
                        std::ptr::null_mut(),
                    )
                };
                if n >= 0 {
                    let n = n as usize;
                    for (len, h) in self.lens.iter_mut().zip(&hdrs[..n]) {
                        *len = (h.msg_len as usize).min(BUF);
                    }
                    return Ok(n);
                }
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => return Ok(0),
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                }
            }
        }

        /// Datagram `i` of the last [`recv`](Self::recv) and its source (`None`: not IP).
        pub(crate) fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
            (&self.bufs[i][..self.lens[i]], sockaddr(&self.addrs[i]))
        }
    }

    fn sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
        match i32::from(s.ss_family) {
            libc::AF_INET => {
                // SAFETY: the kernel wrote a sockaddr_in (family AF_INET); sockaddr_storage is
                // large and aligned enough for it.
                let a =
                    unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: as above, for sockaddr_in6.
                let a =
                    unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    u32::from_be(a.sin6_flowinfo),
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod portable {
    use super::*;

    /// No readiness here: nothing is ever registered, so every socket is read every tick.
    pub(crate) struct Poller;

    impl Poller {
        pub(crate) fn new() -> Poller {
            Poller
        }

        pub(crate) fn add(&self, _socket: &UdpSocket, _token: u64) -> io::Result<()> {
            Err(io::ErrorKind::Unsupported.into())
        }

        pub(crate) fn delete(&self, _socket: &UdpSocket) {}

        pub(crate) fn ready(&mut self, _out: &mut Vec<u64>) -> io::Result<()> {
            Ok(())
        }
    }

    pub(crate) struct RecvBatch {
        bufs: Box<[[u8; BUF]; BATCH]>,
        meta: [(usize, Option<SocketAddr>); BATCH],
    }

    impl RecvBatch {
        pub(crate) fn new() -> RecvBatch {
            RecvBatch {
                bufs: Box::new([[0; BUF]; BATCH]),
                meta: [(0, None); BATCH],
            }
        }

        pub(crate) fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
            for i in 0..BATCH {
                match socket.recv_from(&mut self.bufs[i]) {
                    Ok((len, from)) => self.meta[i] = (len, Some(from)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(i),
                    Err(e) if i == 0 => return Err(e),
                    Err(_) => return Ok(i),
                }
            }
            Ok(BATCH)
        }

        pub(crate) fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
            let (len, from) = self.meta[i];
            (&self.bufs[i][..len], from)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_drains_the_socket_and_reports_sources() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut poller = Poller::new();
        let registered = poller.add(&rx, 7).is_ok();
        let mut batch = RecvBatch::new();
        assert_eq!(batch.recv(&rx).unwrap(), 0);
        for i in 0..(BATCH + 3) as u8 {
            tx.send_to(&[i; 12], rx.local_addr().unwrap()).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut ready = Vec::new();
        poller.ready(&mut ready).unwrap();
        if registered {
            assert_eq!(ready, [7]);
        }
        assert_eq!(batch.recv(&rx).unwrap(), BATCH);
        let (data, from) = batch.get(1);
        assert_eq!(data, &[1; 12]);
        assert_eq!(from, Some(tx.local_addr().unwrap()));
        assert_eq!(batch.recv(&rx).unwrap(), 3);
        assert_eq!(batch.get(2).0, &[(BATCH + 2) as u8; 12]);
        assert_eq!(batch.recv(&rx).unwrap(), 0);
        // Edge-triggered: reported once per arrival, not again while unread.
        ready.clear();
        poller.ready(&mut ready).unwrap();
        assert!(ready.is_empty());
        tx.send_to(b"again", rx.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        poller.ready(&mut ready).unwrap();
        if registered {
            assert_eq!(ready, [7]);
        }
        poller.delete(&rx);
        tx.send_to(b"after", rx.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        ready.clear();
        poller.ready(&mut ready).unwrap();
        assert!(ready.is_empty());
    }
}
