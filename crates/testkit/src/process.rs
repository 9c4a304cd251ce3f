//! Child processes: finding programs, collecting their output, signals.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{error, Result};

/// Debian packages that provide the programs tests use (installed by `scripts/test`).
const PACKAGES: &[(&str, &str)] = &[
    ("sipp", "sip-tester"),
    ("redis-server", "redis-server"),
    ("baresip", "baresip"),
    ("espeak-ng", "espeak-ng"),
    ("sox", "sox"),
];

/// The path of `program` if it is an executable file in `PATH`.
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether `program` is in `PATH`. When it is not, prints a loud `SKIPPED` line and returns
/// false, so a test can `if !require_program("sipp") { return; }`.
///
/// When `SWITCHBOARD_REQUIRE_PROGRAMS=1` (set by `scripts/test` once it installed everything),
/// a missing program panics instead: under CI a test must never skip silently.
pub fn require_program(program: &str) -> bool {
    if which(program).is_some() {
        return true;
    }
    let package = PACKAGES
        .iter()
        .find(|(p, _)| *p == program)
        .map_or(program, |(_, pkg)| pkg);
    let message = format!(
        "`{program}` is not in PATH; install the Debian package `{package}` (scripts/test does)"
    );
    if std::env::var("SWITCHBOARD_REQUIRE_PROGRAMS").is_ok_and(|v| v == "1") {
        panic!("{message} (SWITCHBOARD_REQUIRE_PROGRAMS=1 forbids skipping)");
    }
    eprintln!("\n**********************************************************************");
    eprintln!("*** SKIPPED: {message}");
    eprintln!("**********************************************************************\n");
    false
}

/// Finds a binary built by this workspace.
///
/// Looks at `$SWITCHBOARD_BIN` (for `switchboard`) or `$TESTKIT_BIN_<NAME>` first, then next
/// to the running test executable: tests live in `target/<profile>/deps/`, binaries in
/// `target/<profile>/`. Inside the `switchboard` package prefer `env!("CARGO_BIN_EXE_switchboard")`.
pub fn find_binary(name: &str) -> Result<PathBuf> {
    let var = if name == "switchboard" {
        "SWITCHBOARD_BIN".to_owned()
    } else {
        format!(
            "TESTKIT_BIN_{}",
            name.to_ascii_uppercase().replace('-', "_")
        )
    };
    if let Some(path) = std::env::var_os(&var) {
        let path = PathBuf::from(path);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(error(format!(
                "${var} is {} which is not an executable file",
                path.display()
            )))
        };
    }
    let exe = std::env::current_exe()?;
    let mut looked = Vec::new();
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        looked.push(candidate.display().to_string());
    }
    Err(error(format!(
        "binary `{name}` not found (looked at {}); build it first with \
         `cargo build -p <package> --bins` (scripts/test does), or set ${var}",
        looked.join(", ")
    )))
}

/// Sends `signal` (e.g. `libc::SIGTERM`) to process `pid`.
pub fn send_signal(pid: u32, signal: i32) -> Result<()> {
    let pid = i32::try_from(pid).map_err(|_| error(format!("pid {pid} out of range")))?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The output of a child process, collected line by line by background threads.
#[derive(Clone, Default)]
pub struct Output {
    inner: Arc<(Mutex<String>, Condvar)>,
}

impl Output {
    /// Starts collecting `child`'s stdout and stderr (which must be piped). Every line is also
    /// echoed to the test's stderr with `prefix`, so failing tests show it.
    pub(crate) fn collect(child: &mut Child, prefix: &str) -> (Output, Vec<JoinHandle<()>>) {
        let output = Output::default();
        let mut threads = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            threads.push(output.reader(stdout, prefix.to_owned()));
        }
        if let Some(stderr) = child.stderr.take() {
            threads.push(output.reader(stderr, prefix.to_owned()));
        }
        (output, threads)
    }

    fn reader(&self, stream: impl Read + Send + 'static, prefix: String) -> JoinHandle<()> {
        let output = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{prefix}] {line}");
                let (text, changed) = &*output.inner;
                let mut text = text.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
                changed.notify_all();
            }
        })
    }

    /// Everything collected so far.
    pub fn text(&self) -> String {
        self.inner
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until a line satisfies `pred` and returns it; `None` on timeout.
    pub fn wait_for_line(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (text, changed) = &*self.inner;
        let mut guard = text.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(line) = guard.lines().find(|l| pred(l)) {
                return Some(line.to_owned());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            // Wake up regularly so callers can notice a dead child via their own checks.
            let wait = left.min(Duration::from_millis(100));
            guard = changed
                .wait_timeout(guard, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
            if Instant::now() >= deadline {
                return guard.lines().find(|l| pred(l)).map(str::to_owned);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh() {
        assert!(which("sh").is_some());
        assert!(which("surely-not-a-program-xyz").is_none());
        assert!(require_program("sh"));
    }
}
