//! Running SIPp (Debian package `sip-tester`) against a switchboard.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::process::Output;
use crate::{error, Result};

/// A SIPp run. Build it, then [`Sipp::run`] it (blocking).
///
/// ```no_run
/// # let addr: std::net::SocketAddr = "127.0.0.1:5060".parse().unwrap();
/// let out = switchboard_testkit::Sipp::builtin("uac").remote(addr).service("1001").calls(1).run()?;
/// assert!(out.success(), "{}", out.report());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Sipp {
    scenario: Scenario,
    remote: Option<SocketAddr>,
    tcp: bool,
    calls: u32,
    timeout: Duration,
    trace_messages: bool,
    args: Vec<String>,
}

#[derive(Debug, Clone)]
enum Scenario {
    Xml(String),
    Builtin(String),
}

/// How a SIPp run ended.
#[derive(Debug)]
pub struct SippOutcome {
    /// SIPp's exit status: 0 when every call succeeded, 1 when some failed, 99 when no call
    /// was processed, other values for fatal errors.
    pub status: ExitStatus,
    /// Everything SIPp printed (stdout and stderr).
    pub output: String,
    /// The `-trace_err` log: unexpected messages and errors.
    pub errors: String,
    /// The `-trace_msg` log (every message sent and received), when asked for with
    /// [`Sipp::trace_messages`].
    pub messages: String,
}

impl SippOutcome {
    /// Whether every call succeeded.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Status, error log and output, for assertion messages.
    pub fn report(&self) -> String {
        let mut report = format!(
            "sipp exit: {}\n--- sipp error log ---\n{}\n--- sipp output ---\n{}",
            self.status, self.errors, self.output
        );
        if !self.messages.is_empty() {
            report.push_str("\n--- sipp messages ---\n");
            report.push_str(&self.messages);
        }
        report
    }
}

impl Sipp {
    /// A scenario given as XML text (written to a temporary file).
    pub fn scenario(xml: &str) -> Sipp {
        Sipp::new(Scenario::Xml(xml.to_owned()))
    }

    /// One of SIPp's embedded scenarios (`-sn uac`, `-sn uas`, ...).
    pub fn builtin(name: &str) -> Sipp {
        Sipp::new(Scenario::Builtin(name.to_owned()))
    }

    fn new(scenario: Scenario) -> Sipp {
        Sipp {
            scenario,
            remote: None,
            tcp: false,
            calls: 1,
            timeout: Duration::from_secs(30),
            trace_messages: false,
            args: Vec::new(),
        }
    }

    /// The remote host (the switchboard's SIP address).
    pub fn remote(mut self, addr: SocketAddr) -> Sipp {
        self.remote = Some(addr);
        self
    }

    /// Use TCP (`-t t1`) instead of UDP.
    pub fn tcp(mut self) -> Sipp {
        self.tcp = true;
        self
    }

    /// Stop after this many calls (`-m`, default 1).
    pub fn calls(mut self, calls: u32) -> Sipp {
        self.calls = calls;
        self
    }

    /// The request-URI user (`-s`).
    pub fn service(self, user: &str) -> Sipp {
        self.arg("-s").arg(user)
    }

    /// Global timeout (`-timeout`, default 30 s); reaching it fails the run.
    pub fn timeout(mut self, timeout: Duration) -> Sipp {
        self.timeout = timeout;
        self
    }

    /// Keep every SIP message sent and received (`-trace_msg`) for the report.
    pub fn trace_messages(mut self) -> Sipp {
        self.trace_messages = true;
        self
    }

    /// Any other SIPp argument, e.g. `.arg("-set").arg("user").arg("1001")`.
    pub fn arg(mut self, arg: &str) -> Sipp {
        self.args.push(arg.to_owned());
        self
    }

    /// Runs SIPp to completion; it is killed 10 s after its own timeout if it hangs.
    pub fn run(self) -> Result<SippOutcome> {
        let dir = tempfile::Builder::new().prefix("sipp").tempdir()?;
        let errors_path = dir.path().join("errors.log");
        let mut cmd = Command::new("sipp");
        if let Some(remote) = self.remote {
            cmd.arg(remote.to_string());
        }
        match &self.scenario {
            Scenario::Xml(xml) => {
                let path = dir.path().join("scenario.xml");
                std::fs::write(&path, xml)?;
                cmd.arg("-sf").arg(path);
            }
            Scenario::Builtin(name) => {
                cmd.arg("-sn").arg(name);
            }
        }
        let local_ip = match self.remote {
            Some(SocketAddr::V6(_)) => "::1",
            _ => "127.0.0.1",
        };
        cmd.arg("-i").arg(local_ip);
        if self.tcp {
            cmd.arg("-t").arg("t1");
        }
        cmd.arg("-m").arg(self.calls.to_string());
        cmd.arg("-trace_err").arg("-error_file").arg(&errors_path);
        let messages_path = dir.path().join("messages.log");
        if self.trace_messages {
            cmd.arg("-trace_msg")
                .arg("-message_file")
                .arg(&messages_path);
        }
        cmd.arg("-timeout")
            .arg(format!("{}s", self.timeout.as_secs().max(1)))
            .arg("-timeout_error");
        cmd.arg("-nostdin");
        cmd.args(&self.args);
        cmd.current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| error(format!("cannot start sipp: {e}")))?;
        let (output, threads) = Output::collect(&mut child, "sipp");
        let deadline = Instant::now() + self.timeout + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let status = child.wait()?;
                return Err(error(format!(
                    "sipp hung past its timeout and was killed ({status}); output:\n{}",
                    output.text()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for thread in threads {
            let _ = thread.join();
        }
        let errors = std::fs::read_to_string(&errors_path).unwrap_or_default();
        let messages = std::fs::read_to_string(&messages_path).unwrap_or_default();
        Ok(SippOutcome {
            status,
            output: output.text(),
            errors,
            messages,
        })
    }
}

/// The scenario file `dir/NAME.xml` with each `{{key}}` placeholder replaced by its value.
pub fn scenario_file(dir: &Path, name: &str, vars: &[(&str, &str)]) -> Result<String> {
    let path = dir.join(format!("{name}.xml"));
    let mut xml =
        std::fs::read_to_string(&path).map_err(|e| error(format!("{}: {e}", path.display())))?;
    for (k, v) in vars {
        xml = xml.replace(&format!("{{{{{k}}}}}"), v);
    }
    Ok(xml)
}
