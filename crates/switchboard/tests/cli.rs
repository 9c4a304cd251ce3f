//! The binary, end to end: health, readiness, metrics, SIGTERM drain, `config check`.

use std::process::Command;
use std::time::{Duration, Instant};

use switchboard_testkit::Switchboard;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

const CONFIG: &str = r#"
[drain]
grace_ms = 3000

[[tenants]]
name = "demo"
[[tenants.users]]
user = "1001"
password = "secret"
"#;

#[test]
fn serves_health_ready_metrics_and_drains_on_sigterm() {
    let mut sb = Switchboard::spawn_with_binary(BIN, CONFIG).expect("switchboard starts");
    assert_ne!(sb.http_addr().port(), 0, "the real port is read back");

    let health = sb.get("/healthz").expect("GET /healthz");
    assert_eq!(health.status, 200);
    assert_eq!(health.body.trim(), "ok");

    let ready = sb.get("/readyz").expect("GET /readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);
    // `up` runs the SIP Server too: ready means it is bound.
    assert!(
        sb.addr("sip_node_udp").is_some_and(|a| a.port() != 0),
        "{:?}",
        sb.addrs()
    );

    let metrics = sb.get("/metrics").expect("GET /metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        metrics.headers
    );
    assert!(
        metrics.body.contains("# TYPE switchboard_ready gauge"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("switchboard_ready 1"),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .all(|l| l
                .rsplit_once(' ')
                .is_some_and(|(_, v)| v.parse::<f64>().is_ok())),
        "every sample line is `name{{labels}} value`:\n{}",
        metrics.body
    );

    assert_eq!(sb.get("/no-such-path").expect("GET").status, 404);

    let asked = Instant::now();
    sb.terminate().expect("SIGTERM");
    let status = sb
        .wait_exit(Duration::from_millis(3000 + 2000))
        .expect("wait")
        .unwrap_or_else(|| panic!("still running after the grace period; log:\n{}", sb.logs()));
    assert_eq!(status.code(), Some(0), "log:\n{}", sb.logs());
    assert!(asked.elapsed() < Duration::from_millis(3000 + 2000));
    let logs = sb.logs();
    assert!(logs.contains("draining"), "{logs}");
    let (started, missing) = ready_line(&logs);
    let mut all: Vec<String> = started.into_iter().chain(missing).collect();
    all.sort();
    let mut expected: Vec<String> = switchboard::RoleKind::ALL
        .iter()
        .map(|k| k.as_str().to_owned())
        .collect();
    expected.sort();
    assert_eq!(all, expected, "`up` accounts for every role:\n{logs}");
}

/// The roles of the `ready started=... not_implemented=...` log line.
fn ready_line(logs: &str) -> (Vec<String>, Vec<String>) {
    let line = logs
        .lines()
        .find(|l| l.contains(" ready ") && l.contains("started="))
        .unwrap_or_else(|| panic!("no ready line:\n{logs}"));
    let field = |name: &str| -> Vec<String> {
        line.split_whitespace()
            .find_map(|t| t.strip_prefix(name))
            .filter(|v| *v != "none")
            .map(|v| v.split(',').map(str::to_owned).collect())
            .unwrap_or_default()
    };
    (field("started="), field("not_implemented="))
}

#[test]
fn run_starts_only_the_given_roles() {
    let sb = Switchboard::builder()
        .binary(BIN)
        .config(CONFIG)
        .roles(&["sip-proxy", "registrar"])
        .spawn()
        .expect("switchboard starts");
    assert_eq!(sb.get("/readyz").expect("GET").status, 200);
    // The line is logged before /readyz turns 200, but the test reads the process's stderr on
    // a thread of its own: wait for it rather than race that thread.
    sb.wait_for_log("started=", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no ready line:\n{}", sb.logs()));
    let (started, missing) = ready_line(&sb.logs());
    let mut all: Vec<String> = started.into_iter().chain(missing).collect();
    all.sort();
    assert_eq!(all, vec!["registrar", "sip-proxy"], "{}", sb.logs());
}

#[test]
fn run_rejects_unknown_roles() {
    let out = Command::new(BIN)
        .args(["run", "--roles", "sip-proxy,bogus"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bogus"), "{stderr}");
    assert!(
        stderr.contains("sip-proxy"),
        "lists the valid roles: {stderr}"
    );
}

#[test]
fn config_check_names_key_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[sip]\ndomain = \"x\"\nudp_port = 5060\n").expect("write");
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(stderr.contains("sip.udp_port"), "{stderr}");
    assert!(stderr.contains("bad.toml"), "{stderr}");

    let semantic = dir.path().join("semantic.toml");
    std::fs::write(&semantic, "[registrar]\nmin_expires = 7200\n").expect("write");
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&semantic)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("registrar.min_expires"),
        "{stderr}"
    );

    let good = dir.path().join("good.toml");
    std::fs::write(&good, CONFIG).expect("write");
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&good)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

#[test]
fn config_example_is_valid() {
    let out = Command::new(BIN)
        .args(["config", "example"])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let config = switchboard_config::Config::from_toml_str(&text).expect("example is valid");
    assert_eq!(config, switchboard_config::Config::demo());
}

#[test]
fn bad_config_file_stops_startup() {
    let out = Command::new(BIN)
        .args([
            "up",
            "--http",
            "127.0.0.1:0",
            "--config",
            "/nonexistent/switchboard.toml",
        ])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/switchboard.toml"), "{stderr}");
}
