//! Spawning the `switchboard` binary.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::http::{http_get, HttpResponse};
use crate::process::{find_binary, send_signal, Output};
use crate::{error, Result};

/// A running `switchboard` process, killed when dropped.
///
/// ```no_run
/// let sb = switchboard_testkit::Switchboard::spawn("[drain]\ngrace_ms = 2000\n")?;
/// assert_eq!(sb.get("/healthz")?.status, 200);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Switchboard {
    child: Child,
    output: Output,
    addrs: BTreeMap<String, SocketAddr>,
    exit: Option<ExitStatus>,
    _dir: tempfile::TempDir,
}

/// Options for [`Switchboard`]; start with [`Switchboard::builder`].
#[derive(Debug, Clone)]
pub struct SwitchboardBuilder {
    binary: Option<PathBuf>,
    config: String,
    roles: Option<Vec<String>>,
    port_zero: bool,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: String,
    ready_timeout: Duration,
    wait_ready: bool,
    api_keys: bool,
}

impl Switchboard {
    /// `switchboard up` with `config_toml`, every listener moved to `127.0.0.1:0`, waiting until
    /// `/readyz` answers 200. The binary is found with [`find_binary`].
    pub fn spawn(config_toml: &str) -> Result<Switchboard> {
        Switchboard::builder().config(config_toml).spawn()
    }

    /// Like [`Switchboard::spawn`] with an explicit binary (e.g.
    /// `env!("CARGO_BIN_EXE_switchboard")`).
    pub fn spawn_with_binary(binary: impl Into<PathBuf>, config_toml: &str) -> Result<Switchboard> {
        Switchboard::builder()
            .binary(binary)
            .config(config_toml)
            .spawn()
    }

    /// All options.
    pub fn builder() -> SwitchboardBuilder {
        SwitchboardBuilder {
            binary: None,
            config: String::new(),
            roles: None,
            port_zero: true,
            args: Vec::new(),
            env: Vec::new(),
            log: "info".to_owned(),
            ready_timeout: Duration::from_secs(20),
            wait_ready: true,
            api_keys: false,
        }
    }

    /// The HTTP address actually bound.
    pub fn http_addr(&self) -> SocketAddr {
        // `spawn` fails when the listening line has no http address, so this is always set.
        self.addrs
            .get("http")
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The SIP UDP address bound, when a role bound one.
    pub fn sip_udp_addr(&self) -> Option<SocketAddr> {
        self.addr("sip_udp")
    }

    /// The SIP TCP address bound, when a role bound one.
    pub fn sip_tcp_addr(&self) -> Option<SocketAddr> {
        self.addr("sip_tcp")
    }

    /// Any address from the `listening` line, by key (`http`, `sip_udp`, `sip_tcp`, ...).
    pub fn addr(&self, key: &str) -> Option<SocketAddr> {
        self.addrs.get(key).copied()
    }

    /// Every address from the `listening` line.
    pub fn addrs(&self) -> &BTreeMap<String, SocketAddr> {
        &self.addrs
    }

    /// `GET path` on the HTTP server.
    pub fn get(&self, path: &str) -> Result<HttpResponse> {
        http_get(self.http_addr(), path)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process logged so far (stdout and stderr).
    pub fn logs(&self) -> String {
        self.output.text()
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        self.output.wait_for_line(timeout, |l| l.contains(needle))
    }

    /// Sends SIGTERM (graceful drain).
    pub fn terminate(&self) -> Result<()> {
        send_signal(self.pid(), libc::SIGTERM)
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait()?;
        }
        Ok(self.exit)
    }
}

impl Drop for Switchboard {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl SwitchboardBuilder {
    /// The binary to run (default: [`find_binary`]`("switchboard")`).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// The TOML configuration (default: empty, i.e. all defaults and no tenants).
    pub fn config(mut self, toml: &str) -> Self {
        self.config = toml.to_owned();
        self
    }

    /// `run --roles <roles>` instead of `up`.
    pub fn roles(mut self, roles: &[&str]) -> Self {
        self.roles = Some(roles.iter().map(|r| (*r).to_owned()).collect());
        self
    }

    /// Keep the addresses of the configuration instead of moving every listener to
    /// `127.0.0.1:0`.
    pub fn keep_config_addresses(mut self) -> Self {
        self.port_zero = false;
        self
    }

    /// Keep `http.auth` as the configuration says (API keys by default). Without this the
    /// process runs with `--http-auth none`, so tests of other things need no keys.
    pub fn api_keys(mut self) -> Self {
        self.api_keys = true;
        self
    }

    /// An extra command-line argument.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// An environment variable for the process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// `--log` filter (default `info`).
    pub fn log(mut self, filter: &str) -> Self {
        self.log = filter.to_owned();
        self
    }

    /// How long to wait for the `listening` line and `/readyz` (default 20 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Return as soon as the `listening` line is logged, without waiting for `/readyz`.
    pub fn no_wait_ready(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    /// Starts the process and waits until it is ready.
    pub fn spawn(self) -> Result<Switchboard> {
        let binary = match self.binary {
            Some(path) => path,
            None => find_binary("switchboard")?,
        };
        let dir = tempfile::Builder::new()
            .prefix("switchboard-test")
            .tempdir()?;
        let config_path = dir.path().join("switchboard.toml");
        std::fs::write(&config_path, &self.config)?;

        let mut cmd = Command::new(&binary);
        match &self.roles {
            Some(roles) => cmd.arg("run").arg("--roles").arg(roles.join(",")),
            None => cmd.arg("up"),
        };
        cmd.arg("--config").arg(&config_path);
        if self.port_zero {
            for flag in [
                "--sip-udp",
                "--sip-tcp",
                "--http",
                "--mcp-udp",
                "--sip-node-udp",
            ] {
                cmd.arg(flag).arg("127.0.0.1:0");
            }
        }
        cmd.arg("--log").arg(&self.log);
        if !self.api_keys {
            cmd.arg("--http-auth").arg("none");
        }
        cmd.args(&self.args);
        cmd.env_remove("SWITCHBOARD_CONFIG");
        cmd.env_remove("SWITCHBOARD_LOG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| error(format!("cannot start {}: {e}", binary.display())))?;
        let (output, _threads) = Output::collect(&mut child, "switchboard");
        let mut sb = Switchboard {
            child,
            output,
            addrs: BTreeMap::new(),
            exit: None,
            _dir: dir,
        };

        let deadline = Instant::now() + self.ready_timeout;
        let line = loop {
            if let Some(line) = sb
                .output
                .wait_for_line(Duration::from_millis(200), |l| listening_part(l).is_some())
            {
                break line;
            }
            if let Some(status) = sb.try_exit()? {
                return Err(error(format!(
                    "switchboard exited with {status} before listening; its log:\n{}",
                    sb.logs()
                )));
            }
            if Instant::now() >= deadline {
                return Err(error(format!(
                    "switchboard logged no `listening` line within {:?}; its log:\n{}",
                    self.ready_timeout,
                    sb.logs()
                )));
            }
        };
        sb.addrs = parse_listening(&line)?;
        if !sb.addrs.contains_key("http") {
            return Err(error(format!("no http address in {line:?}")));
        }
        if self.wait_ready {
            loop {
                if matches!(sb.get("/readyz"), Ok(r) if r.status == 200) {
                    break;
                }
                if let Some(status) = sb.try_exit()? {
                    return Err(error(format!(
                        "switchboard exited with {status} before ready; its log:\n{}",
                        sb.logs()
                    )));
                }
                if Instant::now() >= deadline {
                    return Err(error(format!(
                        "/readyz not 200 within {:?}; log:\n{}",
                        self.ready_timeout,
                        sb.logs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(sb)
    }
}

/// The `key=addr ...` part of a `listening` log line.
fn listening_part(line: &str) -> Option<&str> {
    let at = line.find("listening ")?;
    let rest = &line[at + "listening ".len()..];
    rest.starts_with("http=").then_some(rest)
}

/// Parses `... listening http=127.0.0.1:8080 sip_udp=127.0.0.1:5060 ...`.
pub(crate) fn parse_listening(line: &str) -> Result<BTreeMap<String, SocketAddr>> {
    let part =
        listening_part(line).ok_or_else(|| error(format!("not a listening line: {line:?}")))?;
    part.split_whitespace()
        .map(|token| {
            let (key, value) = token
                .split_once('=')
                .ok_or_else(|| error(format!("bad token {token:?} in {line:?}")))?;
            let addr = value
                .parse()
                .map_err(|_| error(format!("bad address {value:?} in {line:?}")))?;
            Ok((key.to_owned(), addr))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_listening_line() {
        let line = "2026-01-01T00:00:00Z  INFO switchboard: listening http=127.0.0.1:41234 sip_udp=127.0.0.1:5060 sip_tcp=[::1]:5061";
        let addrs = parse_listening(line).expect("parses");
        assert_eq!(addrs["http"].port(), 41234);
        assert_eq!(addrs["sip_udp"].port(), 5060);
        assert_eq!(addrs["sip_tcp"], "[::1]:5061".parse().expect("addr"));
        assert!(listening_part("INFO role listening soon").is_none());
    }
}
