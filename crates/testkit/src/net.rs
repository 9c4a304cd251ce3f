//! Ports for programs that cannot bind port 0 themselves (SIPp, redis-server).

use std::net::UdpSocket;
use std::time::{Duration, Instant};

/// A loopback UDP port that was free a moment ago.
///
/// Racy by nature: another process may take it before the program under test binds it. Prefer
/// port 0 wherever the program can report what it bound (the `switchboard` binary does); use
/// this only for programs like a SIPp UAS, and [`wait_udp_bound`] before talking to them.
pub fn free_udp_port() -> std::io::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until some process has bound loopback UDP `port` (our own bind attempt fails), e.g.
/// a SIPp UAS started in the background. Returns false on timeout.
pub fn wait_udp_bound(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if UdpSocket::bind(("127.0.0.1", port)).is_err() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_bound_port() {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = socket.local_addr().expect("addr").port();
        assert!(wait_udp_bound(port, Duration::from_millis(50)));
        assert_ne!(free_udp_port().expect("port"), 0);
    }
}
