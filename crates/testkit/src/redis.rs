//! A throw-away `redis-server` on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::Output;
use crate::{error, Result};

/// A `redis-server` without persistence, killed when dropped.
pub struct RedisServer {
    child: Child,
    port: u16,
    output: Output,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it answers PING.
    ///
    /// Redis cannot listen on port 0, so a free port is found by binding `127.0.0.1:0` and
    /// releasing it; if another process takes the port in between, this retries with a new one.
    pub fn spawn() -> Result<RedisServer> {
        let mut last = String::new();
        for _ in 0..5 {
            match RedisServer::try_spawn() {
                Ok(server) => return Ok(server),
                Err(e) => last = e.to_string(),
            }
        }
        Err(error(format!(
            "redis-server did not start in 5 attempts; last: {last}"
        )))
    }

    fn try_spawn() -> Result<RedisServer> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::Builder::new().prefix("redis").tempdir()?;
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| error(format!("cannot start redis-server: {e}")))?;
        let (output, _threads) = Output::collect(&mut child, "redis");
        let mut server = RedisServer {
            child,
            port,
            output,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if server.ping() {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                return Err(error(format!(
                    "redis-server exited with {status}: {}",
                    server.output.text()
                )));
            }
            if Instant::now() >= deadline {
                return Err(error(format!(
                    "redis-server on port {port} did not answer PING within 10 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ping(&self) -> bool {
        let attempt = || -> std::io::Result<bool> {
            let mut stream = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(500))?;
            stream.set_read_timeout(Some(Duration::from_millis(500)))?;
            stream.write_all(b"PING\r\n")?;
            let mut buf = [0u8; 7];
            stream.read_exact(&mut buf)?;
            Ok(&buf == b"+PONG\r\n")
        };
        attempt().unwrap_or(false)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// What the server logged.
    pub fn logs(&self) -> String {
        self.output.text()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_and_answers() {
        if !crate::require_program("redis-server") {
            return;
        }
        let redis = RedisServer::spawn().expect("redis starts");
        assert!(redis.ping());
        assert!(redis.url().starts_with("redis://127.0.0.1:"));
    }
}
