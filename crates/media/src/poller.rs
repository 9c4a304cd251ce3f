//! Which of a worker's quiet sockets (RTCP, idle RTP, a stream's own RTP socket while its
//! connected socket takes the peer's datagrams) have datagrams waiting: one
//! level-triggered epoll instance per worker, so that a tick pays no syscall for a socket with
//! nothing waiting. Level-triggered: a socket is reported for as long as it holds datagrams,
//! and one that already holds some when it is added is reported at once. Elsewhere than on
//! Linux nothing is watched (the engine reads every socket).

use std::io;
use std::net::UdpSocket;

#[cfg(target_os = "linux")]
pub(crate) use linux::Poller;
#[cfg(not(target_os = "linux"))]
pub(crate) use portable::Poller;

#[cfg(target_os = "linux")]
mod linux {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// One epoll instance, level-triggered, tokens chosen by the caller.
    pub(crate) struct Poller {
        epoll: Option<OwnedFd>,
        /// Room for an event per watched socket, so that one call reports them all.
        events: Vec<libc::epoll_event>,
        watched: usize,
    }

    impl Poller {
        /// A poller; when the system refuses an epoll instance, one that registers nothing (the
        /// caller then reads every socket itself).
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
                events: Vec::new(),
                watched: 0,
            }
        }

        /// Watches `socket` for input; its events carry `token`. An error means the socket is
        /// not watched: the caller must read it itself.
        pub(crate) fn add(&mut self, socket: &UdpSocket, token: u64) -> io::Result<()> {
            let Some(ep) = &self.epoll else {
                return Err(io::ErrorKind::Unsupported.into());
            };
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
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
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            self.watched += 1;
            if self.events.len() < self.watched {
                // Grows with the sockets (in steps), never per packet.
                let len = self.watched.next_power_of_two().max(64);
                self.events
                    .resize(len, libc::epoll_event { events: 0, u64: 0 });
            }
            Ok(())
        }

        /// Stops watching `socket` (closing it would too; this keeps a stray token from ever
        /// being reported for a reused slot).
        pub(crate) fn delete(&mut self, socket: &UdpSocket) {
            if let Some(ep) = &self.epoll {
                let mut ev = libc::epoll_event { events: 0, u64: 0 };
                // SAFETY: both descriptors are open; `ev` is ignored for EPOLL_CTL_DEL but must
                // be non-null on old kernels.
                let rc = unsafe {
                    libc::epoll_ctl(
                        ep.as_raw_fd(),
                        libc::EPOLL_CTL_DEL,
                        socket.as_raw_fd(),
                        &mut ev,
                    )
                };
                if rc == 0 {
                    self.watched -= 1;
                }
            }
        }

        /// Appends the tokens of the sockets that have something to read (or a pending error);
        /// does not block.
        pub(crate) fn ready(&mut self, out: &mut Vec<u64>) -> io::Result<()> {
            let Some(ep) = &self.epoll else {
                return Ok(());
            };
            if self.events.is_empty() {
                return Ok(());
            }
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
                out.extend(self.events[..n as usize].iter().map(|e| e.u64));
                return Ok(());
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod portable {
    use super::*;

    /// No readiness here: nothing is ever registered, so the engine reads every socket.
    pub(crate) struct Poller;

    impl Poller {
        pub(crate) fn new() -> Poller {
            Poller
        }

        pub(crate) fn add(&mut self, _socket: &UdpSocket, _token: u64) -> io::Result<()> {
            Err(io::ErrorKind::Unsupported.into())
        }

        pub(crate) fn delete(&mut self, _socket: &UdpSocket) {}

        pub(crate) fn ready(&mut self, _out: &mut Vec<u64>) -> io::Result<()> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reports_a_socket_while_it_holds_datagrams() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let quiet = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut poller = Poller::new();
        if poller.add(&rx, 7).is_err() {
            return; // nothing is watched here
        }
        poller.add(&quiet, 8).unwrap();
        let mut ready = Vec::new();
        poller.ready(&mut ready).unwrap();
        assert!(ready.is_empty());
        tx.send_to(b"one", rx.local_addr().unwrap()).unwrap();
        tx.send_to(b"two", rx.local_addr().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut buf = [0u8; 16];
        for expect in [&b"one"[..], b"two"] {
            ready.clear();
            poller.ready(&mut ready).unwrap();
            assert_eq!(ready, [7]);
            let (n, from) = rx.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (expect, tx.local_addr().unwrap()));
        }
        ready.clear();
        poller.ready(&mut ready).unwrap();
        assert!(ready.is_empty());
        poller.delete(&rx);
        tx.send_to(b"after", rx.local_addr().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        poller.ready(&mut ready).unwrap();
        assert!(ready.is_empty());
    }
}
