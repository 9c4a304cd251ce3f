//! The VoiceXML browser of the media server (RFC 5552), end to end: `switchboard run --roles
//! mcp` on port 0, SIPp as the caller (signalling, and the DTMF pcaps of the `sip-tester`
//! package), and a small HTTP server of the test on a random loopback port serving the
//! application and recording every request it gets.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use switchboard_testkit::{free_udp_port, require_program, Sipp, SippOutcome, Switchboard};

const PCAPS: &str = "/usr/share/sip-tester";
const PCMA_TE: (&str, &str) = (
    "8 101",
    "a=rtpmap:8 PCMA/8000\na=rtpmap:101 telephone-event/8000\na=fmtp:101 0-16",
);

/// A request the application server got.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Path and query.
    target: String,
    body: String,
    /// The body as sent (binary parts included).
    raw: Vec<u8>,
    at: Instant,
}

/// What the application server answers for a path (without the query): status, extra
/// headers, body.
type Page = (u16, Vec<(String, String)>, Vec<u8>);
type Handler = dyn Fn(&Seen) -> Page + Send + Sync;

/// A minimal HTTP/1.1 server on 127.0.0.1 (one thread per connection, `Connection: close`).
struct AppServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl AppServer {
    fn start(handler: Arc<Handler>) -> AppServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let handler = handler.clone();
                let log = log.clone();
                thread::spawn(move || serve(conn, &*handler, &log));
            }
        });
        AppServer { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// The requests whose target starts with `prefix`.
    fn requests(&self, prefix: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.target.starts_with(prefix))
            .collect()
    }
}

fn serve(conn: TcpStream, handler: &Handler, log: &Mutex<Vec<Seen>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    let _ = reader.read_exact(&mut body);
    let seen = Seen {
        method,
        target,
        body: String::from_utf8_lossy(&body).into_owned(),
        raw: body.clone(),
        at: Instant::now(),
    };
    log.lock().expect("lock").push(seen.clone());
    let (status, headers, body) = handler(&seen);
    let mut out = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut conn = conn;
    let _ = conn.write_all(out.as_bytes());
    let _ = conn.write_all(&body);
}

fn vxml(body: &str) -> Vec<u8> {
    format!("<?xml version=\"1.0\"?>\n<vxml version=\"2.1\" xmlns=\"http://www.w3.org/2001/vxml\">{body}</vxml>")
        .into_bytes()
}

fn page(body: Vec<u8>, cache: Option<&str>) -> Page {
    let mut headers = vec![(
        "Content-Type".to_owned(),
        "application/voicexml+xml".to_owned(),
    )];
    if let Some(c) = cache {
        headers.push(("Cache-Control".to_owned(), c.to_owned()));
    }
    (200, headers, body)
}

/// `ms` of a sine at `freq` Hz as an 8 kHz WAV.
fn tone_wav(freq: f64, ms: usize) -> Vec<u8> {
    let n = ms * 8;
    let s: Vec<i16> = (0..n)
        .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * freq * i as f64 / 8000.0).sin()) as i16)
        .collect();
    switchboard_media::audio::write_wav(&s, 8000)
}

struct Mcp {
    sb: Switchboard,
    _dir: tempfile::TempDir,
}

impl Mcp {
    fn addr(&self) -> SocketAddr {
        self.sb
            .addr("mcp_udp")
            .expect("mcp_udp in the listening line")
    }

    fn json(&self, path: &str) -> (u16, serde_json::Value, Option<String>) {
        let r = self.sb.get(path).expect("GET");
        let ct = r.header("content-type").map(str::to_owned);
        (
            r.status,
            serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null),
            ct,
        )
    }

    /// The ended calls of a VoiceXML URL, waiting up to 5 s for `n` of them.
    fn ended(&self, url: &str, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, calls, _) = self.json("/v1/mcp/calls");
            let found: Vec<_> = calls["ended"]
                .as_array()
                .map(|a| a.iter().filter(|c| c["voicexml"] == url).cloned().collect())
                .unwrap_or_default();
            if found.len() >= n || Instant::now() > deadline {
                return found;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The dialog log of a call.
    fn log(&self, call_id: &str) -> serde_json::Value {
        let (status, body, _) = self.json(&format!("/v1/mcp/sessions/{call_id}/log"));
        assert_eq!(status, 200, "{body}");
        body
    }

    fn metric(&self, name_and_labels: &str) -> f64 {
        let page = self.sb.get("/metrics").expect("metrics").body;
        page.lines()
            .filter(|l| l.starts_with(name_and_labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

fn mcp() -> Option<Mcp> {
    mcp_with("")
}

/// [`mcp`] with more `[mcp]` keys.
fn mcp_with(mcp_keys: &str) -> Option<Mcp> {
    if !require_program("sipp") {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "data_dir = {:?}\n[mcp]\nfallback_prompt = \"tone:440/300\"\n{mcp_keys}",
        dir.path().display().to_string()
    );
    let sb = Switchboard::builder()
        .config(&config)
        .roles(&["mcp"])
        .log("info,switchboard_services=debug")
        .spawn()
        .expect("switchboard starts");
    Some(Mcp { sb, _dir: dir })
}

fn scenario(during: &str, bye_checks: &str, ruri: &str) -> String {
    // The variables the checks assign (SIPp wants each referenced).
    let all = format!("{during}{bye_checks}");
    let vars: Vec<&str> = all
        .split("assign_to=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .collect();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sipp/mcp_dialog.xml");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace("{{RURI}}", ruri)
        .replace("{{SDP_PORT}}", "[media_port]")
        .replace("{{PTS}}", PCMA_TE.0)
        .replace("{{RTPMAPS}}", PCMA_TE.1)
        .replace("{{DURING}}", during)
        .replace("{{BYE_CHECKS}}", bye_checks)
        .replace("{{VARS}}", &vars.join(","))
}

/// `calls` calls from SIPp to `sip:dialog@mcp;voicexml=<url>` (%-escaped), doing `during`
/// after the ACK, then waiting for mcp's BYE and checking it with `bye_checks`.
fn dialog_calls(m: &Mcp, url: &str, calls: u32, during: &str, bye_checks: &str) -> SippOutcome {
    run_dialog_at(m.addr(), url, calls, during, bye_checks)
}

/// [`dialog_calls`] to the media server at `mcp`.
fn run_dialog_at(
    mcp: SocketAddr,
    url: &str,
    calls: u32,
    during: &str,
    bye_checks: &str,
) -> SippOutcome {
    let escaped = url
        .replace('%', "%25")
        .replace(';', "%3B")
        .replace('?', "%3F");
    let ruri = format!("dialog@{mcp};voicexml={escaped}");
    let sip_port = free_udp_port().expect("free port");
    let media_port = free_udp_port().expect("free port");
    Sipp::scenario(&scenario(during, bye_checks, &ruri))
        .remote(mcp)
        .calls(calls)
        .arg("-p")
        .arg(&sip_port.to_string())
        .arg("-mp")
        .arg(&media_port.to_string())
        .timeout(Duration::from_secs(30))
        .run()
        .expect("sipp runs")
}

fn pause(ms: u64) -> String {
    format!("  <pause milliseconds=\"{ms}\"/>\n")
}

fn play_pcap(digit: &str) -> String {
    let path = Path::new(PCAPS).join(format!("dtmf_2833_{digit}.pcap"));
    assert!(
        path.exists(),
        "{} is missing although sipp is installed (package sip-tester ships it)",
        path.display()
    );
    format!(
        "  <nop><action><exec play_pcap_audio=\"{}\"/></action></nop>\n",
        path.display()
    )
}

/// An ereg on the BYE that fails the call unless it matches.
fn bye_must_match(search_in: &str, header: Option<&str>, regexp: &str, var: &str) -> String {
    let header = header
        .map(|h| format!(" header=\"{h}\""))
        .unwrap_or_default();
    format!(
        "      <ereg regexp=\"{regexp}\" search_in=\"{search_in}\"{header} check_it=\"true\" assign_to=\"{var}\"/>\n"
    )
}

/// The menu application: `menu.vxml` (cacheable for 60 s) plays `menu.wav` (3 s, barged in)
/// and collects two
/// digits, submits them to `next.vxml`, which plays `next.wav` and exits with them.
fn menu_app() -> AppServer {
    let menu = vxml(
        "<form id='main'><field name='choice' type='digits?length=2'>\
           <prompt><audio src='menu.wav'/></prompt>\
           <filled><log label='menu' expr=\"'chose ' + choice\"/>\
             <submit next='next.vxml' namelist='choice' method='get'/></filled>\
           <noinput><log>no input</log><reprompt/></noinput>\
         </field></form>",
    );
    let menu_wav = tone_wav(440.0, 3000);
    let next_wav = tone_wav(1000.0, 1200);
    AppServer::start(Arc::new(move |req: &Seen| {
        let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
        let params: HashMap<&str, &str> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        match path {
            "/menu.vxml" => page(menu.clone(), Some("max-age=60")),
            "/next.vxml" => {
                let choice: String = params
                    .get("choice")
                    .unwrap_or(&"")
                    .chars()
                    .filter(char::is_ascii_digit)
                    .collect();
                page(
                    vxml(&format!(
                        "<form><var name='result' expr=\"'{choice}'\"/><var name='via' expr=\"'menu'\"/>\
                         <block><prompt><audio src='next.wav'/></prompt><exit namelist='result via'/></block></form>"
                    )),
                    None,
                )
            }
            "/menu.wav" => (200, vec![], menu_wav.clone()),
            "/next.wav" => (200, vec![], next_wav.clone()),
            _ => (404, vec![], b"not found".to_vec()),
        }
    }))
}

#[test]
fn menu_collects_dtmf_submits_it_plays_the_next_page_and_reports_the_exit_in_the_bye() {
    let Some(m) = mcp() else { return };
    let app = menu_app();
    let url = app.url("/menu.vxml");
    let during = pause(300) + &play_pcap("1") + &pause(500) + &play_pcap("2") + &pause(200);
    // RFC 5552: the namelist comes back in mcp's BYE as multipart/form-data.
    let checks = bye_must_match(
        "hdr",
        Some("Content-Type:"),
        "multipart/form-data; boundary=",
        "ct",
    ) + &bye_must_match(
        "body",
        None,
        "form-data; name=.result.[[:space:]]+12[[:space:]]",
        "result",
    ) + &bye_must_match(
        "body",
        None,
        "form-data; name=.via.[[:space:]]+menu[[:space:]]",
        "via",
    );
    let started = Instant::now();
    let out = dialog_calls(&m, &url, 2, &during, &checks);
    let ended = started.elapsed();
    assert!(
        out.success(),
        "both calls end with mcp's BYE carrying the exit namelist:\n{}\n--- switchboard ---\n{}",
        out.report(),
        m.sb.logs()
    );

    // The application server saw each call submit the digits, and the next page and its
    // prompt were fetched for each.
    let submits = app.requests("/next.vxml");
    assert_eq!(submits.len(), 2, "{:?}", app.seen());
    for s in &submits {
        assert_eq!(s.method, "GET");
        assert!(s.body.is_empty(), "{s:?}");
        assert_eq!(s.target, "/next.vxml?choice=12", "{s:?}");
    }
    // The BYE follows the next page's 1.2 s prompt.
    let last_submit = submits.iter().map(|s| s.at).max().expect("a submit");
    assert!(
        started + ended >= last_submit + Duration::from_millis(1100),
        "the BYE came {:?} after the last submit, before the next prompt could play",
        (started + ended).saturating_duration_since(last_submit)
    );
    // The menu page is cacheable (max-age=60): fetched once for both calls.
    assert_eq!(app.requests("/menu.vxml").len(), 1, "{:?}", app.seen());
    assert!(m.metric("vxml_documents_fetched_total{cache=\"hit\"}") >= 1.0);
    assert!(m.metric("vxml_documents_fetched_total{cache=\"miss\"}") >= 3.0);

    // The per-call log: the <log>, the FIA's steps, the outcome.
    let calls = m.ended(&url, 2);
    assert_eq!(calls.len(), 2, "{calls:?}");
    for c in &calls {
        assert_eq!(c["digits"], "12", "{c}");
        let log = m.log(c["call_id"].as_str().expect("call id"));
        let entries = log["entries"].as_array().expect("entries");
        assert!(
            entries
                .iter()
                .any(|e| e["kind"] == "log" && e["label"] == "menu" && e["text"] == "chose 12"),
            "{log}"
        );
        assert!(
            entries.iter().any(|e| e["kind"] == "fia"
                && e["text"].as_str().is_some_and(|t| t.contains("next.vxml"))),
            "{log}"
        );
        // The first key stopped the 3 s menu prompt.
        assert!(
            entries
                .iter()
                .any(|e| e["kind"] == "fia" && e["text"] == "barge-in 1"),
            "{log}"
        );
        assert_eq!(log["outcome"]["end"], "exit", "{log}");
        assert_eq!(log["outcome"]["values"]["result"], "12", "{log}");
        assert_eq!(log["active"], false);
    }
    // An unknown call: 404 as problem+json.
    let (status, body, ct) = m.json("/v1/mcp/sessions/no-such-call/log");
    assert_eq!(status, 404, "{body}");
    assert_eq!(ct.as_deref(), Some("application/problem+json"));
    assert_eq!(m.metric("vxml_sessions_active"), 0.0);
}

#[test]
fn broken_pages_end_their_own_call_while_another_call_completes() {
    let Some(m) = mcp() else { return };
    let long_wav = tone_wav(700.0, 3500);
    let app = AppServer::start(Arc::new(move |req: &Seen| {
        match req.target.as_str() {
        "/broken.vxml" => page(b"<vxml version='2.1'><form><block>hi</form></vxml>".to_vec(), None),
        "/loop.vxml" => page(
            vxml("<form><block><script>while (true) {}</script><exit expr=\"'unreachable'\"/></block></form>"),
            None,
        ),
        "/good.vxml" => page(
            vxml("<form><block><prompt><audio src='long.wav'/></prompt><exit expr=\"'good'\"/></block></form>"),
            None,
        ),
        "/long.wav" => (200, vec![], long_wav.clone()),
        _ => (404, vec![], b"not found".to_vec()),
    }
    }));
    let error_bye = bye_must_match("hdr", Some("Reason:"), "dialog error", "reason");
    let good_bye = bye_must_match(
        "body",
        None,
        "form-data; name=.expr.[[:space:]]+good[[:space:]]",
        "result",
    );
    let good_url = app.url("/good.vxml");
    let good_started = Instant::now();
    let good_thread = {
        let url = good_url.clone();
        let checks = good_bye.clone();
        let addr = m.addr();
        thread::spawn(move || run_dialog_at(addr, &url, 1, &pause(100), &checks))
    };
    thread::sleep(Duration::from_millis(300));
    let mut bad = Vec::new();
    for path in ["/missing.vxml", "/broken.vxml", "/loop.vxml"] {
        let url = app.url(path);
        let checks = error_bye.clone();
        let addr = m.addr();
        bad.push((
            path,
            thread::spawn(move || run_dialog_at(addr, &url, 1, "", &checks)),
        ));
    }
    for (path, t) in bad {
        let out = t.join().expect("sipp thread");
        assert!(
            out.success(),
            "{path}: mcp ends the call with BYE (Reason: dialog error):\n{}\n--- switchboard ---\n{}",
            out.report(),
            m.sb.logs()
        );
    }
    let out = good_thread.join().expect("sipp thread");
    assert!(
        out.success(),
        "the good call completes with its result:\n{}\n--- switchboard ---\n{}",
        out.report(),
        m.sb.logs()
    );
    assert!(
        good_started.elapsed() >= Duration::from_millis(3400),
        "the good call's prompt played to its end"
    );

    // Each failure is in its call's log, with the event thrown.
    let expect = [
        ("/missing.vxml", "error.badfetch.http.404"),
        ("/broken.vxml", "error.badfetch"),
        ("/loop.vxml", "error.semantic"),
    ];
    for (path, event) in expect {
        let calls = m.ended(&app.url(path), 1);
        assert_eq!(calls.len(), 1, "{path}: {calls:?}");
        let log = m.log(calls[0]["call_id"].as_str().expect("call id"));
        assert_eq!(log["outcome"]["end"], "error", "{path}: {log}");
        assert!(
            log["entries"]
                .as_array()
                .expect("entries")
                .iter()
                .any(|e| e["kind"] == "event"
                    && e["text"].as_str().is_some_and(|t| t.starts_with(event))),
            "{path}: {log}"
        );
    }
    let good_calls = m.ended(&good_url, 1);
    let log = m.log(good_calls[0]["call_id"].as_str().expect("call id"));
    assert_eq!(log["outcome"]["values"], "good", "{log}");
    assert!(m.metric("vxml_errors_total{event=\"error.badfetch.http.404\"}") >= 1.0);
    assert!(m.metric("vxml_errors_total{event=\"error.semantic\"}") >= 1.0);
    // mcp is still healthy.
    assert_eq!(m.sb.get("/healthz").expect("healthz").status, 200);
}

#[test]
fn disconnect_reports_its_namelist_in_the_bye_and_the_hangup_handler_still_runs() {
    let Some(m) = mcp() else { return };
    let app = AppServer::start(Arc::new(move |req: &Seen| {
        match req.target.split('?').next().unwrap_or("") {
            "/bye.vxml" => page(
                vxml(
                    "<form><var name='reason' expr=\"'done here'\"/>\
                     <catch event='connection.disconnect.hangup'>\
                       <submit next='after.vxml' namelist='reason' method='post'/></catch>\
                     <block><disconnect namelist='reason'/></block></form>",
                ),
                None,
            ),
            "/after.vxml" => page(vxml("<form><block><exit/></block></form>"), None),
            _ => (404, vec![], b"not found".to_vec()),
        }
    }));
    let url = app.url("/bye.vxml");
    let checks = bye_must_match("hdr", Some("Reason:"), "dialog disconnect", "why")
        + &bye_must_match(
            "body",
            None,
            "form-data; name=.reason.[[:space:]]+done here[[:space:]]",
            "reason",
        );
    let out = dialog_calls(&m, &url, 1, "", &checks);
    assert!(
        out.success(),
        "mcp's BYE carries the disconnect namelist:\n{}\n--- switchboard ---\n{}",
        out.report(),
        m.sb.logs()
    );
    // After the BYE the application's hangup handler ran and posted to the server.
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.requests("/after.vxml").is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let after = app.requests("/after.vxml");
    assert_eq!(after.len(), 1, "{:?}", app.seen());
    assert_eq!(after[0].method, "POST");
    assert_eq!(after[0].body, "reason=done+here");
    let calls = m.ended(&url, 1);
    let log = m.log(calls[0]["call_id"].as_str().expect("call id"));
    assert_eq!(log["outcome"]["end"], "disconnect", "{log}");
    assert_eq!(log["outcome"]["values"]["reason"], "done here", "{log}");
}

#[test]
fn a_caller_hanging_up_mid_menu_runs_the_applications_hangup_handler() {
    let Some(m) = mcp() else { return };
    let app = AppServer::start(Arc::new(move |req: &Seen| {
        match req.target.split('?').next().unwrap_or("") {
            "/wait.vxml" => page(
                vxml(
                    "<form><field name='pin' type='digits'><property name='timeout' value='30s'/>\
                       <prompt><break time='200ms'/></prompt></field>\
                     <catch event='connection.disconnect.hangup'>\
                       <submit next='gone.vxml' namelist='pin' method='get'/></catch></form>",
                ),
                None,
            ),
            "/gone.vxml" => page(vxml("<form><block><exit/></block></form>"), None),
            _ => (404, vec![], b"not found".to_vec()),
        }
    }));
    let url = app.url("/wait.vxml");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sipp/mcp_call.xml");
    let xml = std::fs::read_to_string(&path)
        .expect("scenario")
        .replace("{{RURI}}", &format!("dialog@{};voicexml={url}", m.addr()))
        .replace("{{SDP_PORT}}", "[media_port]")
        .replace("{{PTS}}", PCMA_TE.0)
        .replace("{{RTPMAPS}}", PCMA_TE.1)
        .replace("{{DURING}}", &(play_pcap("7") + &pause(800)));
    let out = Sipp::scenario(&xml)
        .remote(m.addr())
        .arg("-p")
        .arg(&free_udp_port().expect("port").to_string())
        .arg("-mp")
        .arg(&free_udp_port().expect("port").to_string())
        .timeout(Duration::from_secs(20))
        .run()
        .expect("sipp runs");
    assert!(out.success(), "{}", out.report());
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.requests("/gone.vxml").is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    // The field had heard "7" but not its end; the handler submits what it has (nothing).
    let gone = app.requests("/gone.vxml");
    assert_eq!(
        gone.len(),
        1,
        "the hangup handler's submit: {:?}",
        app.seen()
    );
    let calls = m.ended(&url, 1);
    assert_eq!(calls[0]["digits"], "7", "{}", calls[0]);
    let log = m.log(calls[0]["call_id"].as_str().expect("call id"));
    assert!(
        log["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["kind"] == "event" && e["text"] == "connection.disconnect.hangup"),
        "{log}"
    );
    assert_eq!(m.metric("vxml_sessions_active"), 0.0);
}

/// SIPp's side of a REFER: check its Refer-To, answer `status`.
fn answer_refer(status: &str) -> String {
    format!(
        r#"  <recv request="REFER">
    <action>
      <ereg regexp="Refer-To: &lt;sip:agent@example.com&gt;" search_in="msg" check_it="true" assign_to="rt"/>
    </action>
  </recv>
  <send><![CDATA[
SIP/2.0 {status}
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:caller@[local_ip]:[local_port]>
Content-Length: 0

]]></send>
"#
    )
}

#[test]
fn blind_transfer_is_a_refer_then_the_bye() {
    let Some(m) = mcp() else { return };
    let app = AppServer::start(Arc::new(move |req: &Seen| {
        match req.target.split('?').next().unwrap_or("") {
            "/transfer.vxml" => page(
                vxml(
                    "<form><transfer name='t' dest='sip:agent@example.com' bridge='false'/>\
                     <catch event='connection.disconnect.transfer'>\
                       <var name='how' expr=\"'transferred'\"/><exit namelist='how'/></catch></form>",
                ),
                None,
            ),
            _ => (404, vec![], b"not found".to_vec()),
        }
    }));
    let url = app.url("/transfer.vxml");
    for (n, (status, logged)) in [
        ("202 Accepted", "transfer accepted (202)"),
        ("403 Forbidden", "transfer refused (403)"),
    ]
    .into_iter()
    .enumerate()
    {
        let checks = bye_must_match("hdr", Some("Reason:"), "dialog exit", "why")
            + &bye_must_match(
                "body",
                None,
                "form-data; name=.how.[[:space:]]+transferred[[:space:]]",
                "how",
            );
        let out = dialog_calls(&m, &url, 1, &answer_refer(status), &checks);
        assert!(
            out.success(),
            "{status}: REFER to the target, then BYE with the exit namelist:\n{}\n--- switchboard ---\n{}",
            out.report(),
            m.sb.logs()
        );
        let calls = m.ended(&url, n + 1);
        assert_eq!(calls.len(), n + 1, "{calls:?}");
        let call = calls.last().expect("a call");
        let log = m.log(call["call_id"].as_str().expect("call id"));
        assert!(
            log["entries"]
                .as_array()
                .expect("entries")
                .iter()
                .any(|e| e["text"] == logged),
            "{status}: {log}"
        );
        assert_eq!(log["outcome"]["values"]["how"], "transferred", "{log}");
    }
    assert!(m.metric("vxml_transfers_total{result=\"accepted\"}") >= 1.0);
    assert!(m.metric("vxml_transfers_total{result=\"refused\"}") >= 1.0);
}

#[test]
fn record_saves_the_callers_audio_and_session_variables_come_from_the_invite() {
    let Some(m) = mcp() else { return };
    let pcap = Path::new(PCAPS).join("g711a.pcap");
    assert!(pcap.exists(), "{} is missing", pcap.display());
    let app = AppServer::start(Arc::new(move |req: &Seen| {
        match req.target.split('?').next().unwrap_or("") {
            "/record.vxml" => page(
                vxml(
                    "<form><record name='msg' maxtime='3s' finalsilence='5s' dtmfterm='false'/>\
                     <block><var name='file' expr='msg'/><var name='ms' expr='msg$.duration'/>\
                       <var name='aai' expr='session.connection.aai'/>\
                       <var name='ani' expr='session.telephone.ani'/>\
                       <var name='proto' expr=\"session.connection.protocol.name + '/' + session.connection.protocol.version\"/>\
                       <var name='callid' expr=\"session.connection.protocol.sip.headers['call-id']\"/>\
                       <exit namelist='file ms aai ani proto callid'/></block></form>",
                ),
                None,
            ),
            _ => (404, vec![], b"not found".to_vec()),
        }
    }));
    let url = format!("{};aai=case-42", app.url("/record.vxml"));
    let checks = bye_must_match(
        "body",
        None,
        "name=.file.[[:space:]]+file://[^[:space:]]+vxml-[^[:space:]]+-1\\.wav[[:space:]]",
        "file",
    ) + &bye_must_match(
        "body",
        None,
        "name=.aai.[[:space:]]+case-42[[:space:]]",
        "aai",
    ) + &bye_must_match(
        "body",
        None,
        "name=.ani.[[:space:]]+caller[[:space:]]",
        "ani",
    ) + &bye_must_match(
        "body",
        None,
        "name=.proto.[[:space:]]+sip/2.0[[:space:]]",
        "proto",
    ) + &bye_must_match(
        "body",
        None,
        "name=.callid.[[:space:]]+[0-9]+-[0-9]+@",
        "callid",
    );
    let out = {
        // The voicexml URL and aai are two Request-URI parameters: the ';' is not escaped.
        let ruri = format!("dialog@{};voicexml={url}", m.addr());
        let sip_port = free_udp_port().expect("free port");
        let media_port = free_udp_port().expect("free port");
        Sipp::scenario(&scenario(
            &format!(
                "  <nop><action><exec play_pcap_audio=\"{}\"/></action></nop>\n",
                pcap.display()
            ),
            &checks,
            &ruri,
        ))
        .remote(m.addr())
        .arg("-p")
        .arg(&sip_port.to_string())
        .arg("-mp")
        .arg(&media_port.to_string())
        .timeout(Duration::from_secs(20))
        .run()
        .expect("sipp runs")
    };
    assert!(
        out.success(),
        "the recording's file and the session variables come back in the BYE:\n{}\n--- switchboard ---\n{}",
        out.report(),
        m.sb.logs()
    );
    let calls = m.ended(&app.url("/record.vxml"), 1);
    assert_eq!(calls.len(), 1, "{calls:?}");
    let log = m.log(calls[0]["call_id"].as_str().expect("call id"));
    let values = &log["outcome"]["values"];
    let file = values["file"]
        .as_str()
        .expect("file")
        .trim_start_matches("file://");
    let wav = std::fs::read(file).unwrap_or_else(|e| panic!("{file}: {e}"));
    let ms: f64 = values["ms"].as_f64().expect("duration");
    // maxtime 3 s of 8 kHz 16-bit audio.
    assert!((2900.0..=3100.0).contains(&ms), "{values}");
    assert!(wav.len() > 40_000, "{} bytes", wav.len());
}

#[test]
fn the_request_uri_can_post_the_first_fetch_and_bypass_the_cache() {
    let Some(m) = mcp() else { return };
    let app = AppServer::start(Arc::new(move |req: &Seen| {
        match req.target.split('?').next().unwrap_or("") {
            "/start.vxml" => page(
                vxml("<form><block><exit expr=\"'ok'\"/></block></form>"),
                Some("max-age=600"),
            ),
            _ => (404, vec![], b"not found".to_vec()),
        }
    }));
    let checks = bye_must_match("body", None, "name=.expr.[[:space:]]+ok[[:space:]]", "r");
    let run = |params: &str| {
        let ruri = format!(
            "dialog@{};voicexml={}{params}",
            m.addr(),
            app.url("/start.vxml")
        );
        Sipp::scenario(&scenario("", &checks, &ruri))
            .remote(m.addr())
            .arg("-p")
            .arg(&free_udp_port().expect("port").to_string())
            .arg("-mp")
            .arg(&free_udp_port().expect("port").to_string())
            .timeout(Duration::from_secs(20))
            .run()
            .expect("sipp runs")
    };
    // RFC 5552 method=post with a postbody.
    let out = run(";method=post;postbody=case%3D42%26lang%3Den");
    assert!(out.success(), "{}", out.report());
    let seen = app.requests("/start.vxml");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].body, "case=42&lang=en");
    // GET twice: the second from the cache (max-age=600), then maxage=0 fetches again.
    for params in ["", "", ";maxage=0"] {
        let out = run(params);
        assert!(out.success(), "{params}: {}", out.report());
    }
    let gets: Vec<_> = app
        .requests("/start.vxml")
        .into_iter()
        .filter(|s| s.method == "GET")
        .collect();
    assert_eq!(gets.len(), 2, "{:?}", app.seen());
}

/// The far end of a transfer, played by SIPp on `port`: takes the INVITE (which must carry
/// mcp's offer and the caller as From), then `answer` (SIPp XML).
fn transfer_target(answer: &str) -> String {
    transfer_target_checking("", answer)
}

/// [`transfer_target`] with more SIPp actions on the INVITE (`extra`).
fn transfer_target_checking(extra: &str, answer: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="transfer target">
  <recv request="INVITE">
    <action>
      <ereg regexp="m=audio [0-9]+ RTP/AVP 0 8 9 96 101" search_in="body" check_it="true" assign_to="offer"/>
      <ereg regexp="sip:caller@" search_in="hdr" header="From:" check_it="true" assign_to="caller"/>
      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="remote"/>
      <ereg regexp="sip:[^&gt;]*" search_in="hdr" header="Contact:" assign_to="contact"/>
{extra}    </action>
  </recv>
{answer}
  <Reference variables="offer,caller,remote,contact"/>
</scenario>
"#
    )
}

/// Rings 500 ms, answers with its audio going to `rtp_port`, stays `stay_ms`, hangs up.
fn answers_then_hangs_up(rtp_port: u16, stay_ms: u64) -> String {
    format!(
        r#"  <send><![CDATA[
SIP/2.0 180 Ringing
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:agent@[local_ip]:[local_port]>
Content-Length: 0

]]></send>
  <pause milliseconds="500"/>
  <send retrans="500"><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:agent@[local_ip]:[local_port]>
Content-Type: application/sdp
Content-Length: [len]

v=0
o=agent 1 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio {rtp_port} RTP/AVP 0
a=rtpmap:0 PCMU/8000

]]></send>
  <recv request="ACK"/>
  <pause milliseconds="{stay_ms}"/>
  <send retrans="500"><![CDATA[
BYE [$contact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:agent@[local_ip]:[local_port]>;tag=[pid]SIPpTag01[call_number]
To:[$remote]
Call-ID: [call_id]
CSeq: 1 BYE
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
"#
    )
}

const BUSY: &str = r#"  <send retrans="500"><![CDATA[
SIP/2.0 486 Busy Here
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
  <recv request="ACK"/>
"#;

/// RTP packets received, those carrying sound, and RFC 4733 events (payload type 101).
type RtpCounts = Arc<Mutex<(usize, usize, usize)>>;

/// Counts the RTP packets arriving on a socket, and those whose PCMU payload is not silence
/// (a segment above 2, i.e. louder than about -50 dBm0), until `stop`.
fn rtp_sink() -> (u16, RtpCounts, Arc<std::sync::atomic::AtomicBool>) {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = sock.local_addr().expect("addr").port();
    let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
    let counts = Arc::new(Mutex::new((0usize, 0usize, 0usize)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (c, s) = (counts.clone(), stop.clone());
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok(n) = sock.recv(&mut buf) else { continue };
            if n < 12 || buf[0] >> 6 != 2 {
                continue;
            }
            let cc = usize::from(buf[0] & 0x0f);
            let payload = &buf[(12 + 4 * cc).min(n)..n];
            // PCMU: the segment is bits 4-6 of the inverted byte.
            let loud = payload.iter().filter(|&&b| ((!b) >> 4) & 7 > 2).count();
            let mut g = c.lock().expect("lock");
            g.0 += 1;
            if buf[1] & 0x7f == 101 {
                g.2 += 1;
            }
            if buf[1] & 0x7f == 0 && loud * 4 > payload.len() {
                g.1 += 1;
            }
        }
    });
    (port, counts, stop)
}

fn transfer_app(target: SocketAddr) -> AppServer {
    AppServer::start(Arc::new(move |req: &Seen| {
        match req.target.split('?').next().unwrap_or("") {
            "/bridge.vxml" => page(
                vxml(&format!(
                    "<form><transfer name='t' dest='sip:agent@{target}' bridge='true' \
                       connecttimeout='10s' transferaudio='tone:ringback'/>\
                     <block><var name='how' expr='t'/><var name='secs' expr='t$.duration'/>\
                       <exit namelist='how secs'/></block></form>"
                )),
                None,
            ),
            _ => (404, vec![], b"not found".to_vec()),
        }
    }))
}

#[test]
fn bridge_transfer_connects_the_caller_to_the_far_end_until_it_hangs_up() {
    let Some(m) = mcp() else { return };
    let pcap = Path::new(PCAPS).join("g711a.pcap");
    assert!(pcap.exists(), "{} is missing", pcap.display());
    let (rtp_port, counts, stop) = rtp_sink();
    let agent_port = free_udp_port().expect("free port");
    let agent_addr: SocketAddr = format!("127.0.0.1:{agent_port}").parse().expect("addr");
    let agent_xml = transfer_target(&answers_then_hangs_up(rtp_port, 1500));
    let agent = thread::spawn(move || {
        Sipp::scenario(&agent_xml)
            .arg("-p")
            .arg(&agent_port.to_string())
            .timeout(Duration::from_secs(30))
            .run()
            .expect("sipp runs")
    });
    thread::sleep(Duration::from_millis(400));
    let app = transfer_app(agent_addr);
    let url = app.url("/bridge.vxml");
    let during = format!(
        "  <nop><action><exec play_pcap_audio=\"{}\"/></action></nop>\n",
        pcap.display()
    );
    let checks = bye_must_match(
        "body",
        None,
        "name=.how.[[:space:]]+far_end_disconnect[[:space:]]",
        "how",
    ) + &bye_must_match(
        "body",
        None,
        "name=.secs.[[:space:]]+[12][[:space:]]",
        "secs",
    );
    let out = dialog_calls(&m, &url, 1, &during, &checks);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let agent = agent.join().expect("agent thread");
    assert!(
        agent.success(),
        "the far end got the INVITE with mcp's offer and the caller as From, was ACKed and its BYE answered:\n{}\n--- switchboard ---\n{}",
        agent.report(),
        m.sb.logs()
    );
    assert!(
        out.success(),
        "the caller's BYE says far_end_disconnect after 1-2 s:\n{}\n--- switchboard ---\n{}",
        out.report(),
        m.sb.logs()
    );
    let (packets, loud, _) = *counts.lock().expect("lock");
    eprintln!("far end: {packets} RTP packets, {loud} with the caller's audio");
    // 1.5 s bridged: about 75 packets; the caller's speech in at least some of them.
    assert!(packets >= 40, "{packets} RTP packets reached the far end");
    assert!(
        loud >= 10,
        "{loud} of {packets} packets carried the caller's audio"
    );
    let calls = m.ended(&url, 1);
    let log = m.log(calls[0]["call_id"].as_str().expect("call id"));
    let texts: Vec<&str> = log["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["text"].as_str())
        .collect();
    for step in ["transfer ringing", "transfer answered"] {
        assert!(texts.contains(&step), "{step}: {log}");
    }
    assert!(m.metric("vxml_transfers_total{kind=\"bridge\",result=\"far_end_disconnect\"}") >= 1.0);
    assert_eq!(m.metric("mcp_sessions"), 0.0, "both calls are gone");
}

#[test]
fn bridge_transfer_to_a_busy_far_end_says_busy() {
    let Some(m) = mcp() else { return };
    let agent_port = free_udp_port().expect("free port");
    let agent_addr: SocketAddr = format!("127.0.0.1:{agent_port}").parse().expect("addr");
    let agent_xml = transfer_target(BUSY);
    let agent = thread::spawn(move || {
        Sipp::scenario(&agent_xml)
            .arg("-p")
            .arg(&agent_port.to_string())
            .timeout(Duration::from_secs(30))
            .run()
            .expect("sipp runs")
    });
    thread::sleep(Duration::from_millis(400));
    let app = transfer_app(agent_addr);
    let url = app.url("/bridge.vxml");
    let checks = bye_must_match("body", None, "name=.how.[[:space:]]+busy[[:space:]]", "how")
        + &bye_must_match("body", None, "name=.secs.[[:space:]]+0[[:space:]]", "secs");
    let out = dialog_calls(&m, &url, 1, "", &checks);
    let agent = agent.join().expect("agent thread");
    assert!(agent.success(), "486 ACKed:\n{}", agent.report());
    assert!(
        out.success(),
        "the caller's BYE says busy:\n{}\n--- switchboard ---\n{}",
        out.report(),
        m.sb.logs()
    );
    assert!(m.metric("vxml_transfers_total{kind=\"bridge\",result=\"busy\"}") >= 1.0);
}

/// Answers at once (its audio going to a port nobody reads) and waits for mcp's BYE.
const ANSWERS_AND_WAITS: &str = r#"  <send retrans="500"><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:agent@[local_ip]:[local_port]>
Content-Type: application/sdp
Content-Length: [len]

v=0
o=agent 1 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000

]]></send>
  <recv request="ACK"/>
  <recv request="BYE" timeout="15000"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
"#;

#[test]
fn a_caller_hanging_up_during_a_bridge_ends_the_far_call_and_leaves_the_item_unfilled() {
    let Some(m) = mcp() else { return };
    let agent_port = free_udp_port().expect("free port");
    let agent_addr: SocketAddr = format!("127.0.0.1:{agent_port}").parse().expect("addr");
    let agent_xml = transfer_target(ANSWERS_AND_WAITS);
    let agent = thread::spawn(move || {
        Sipp::scenario(&agent_xml)
            .arg("-p")
            .arg(&agent_port.to_string())
            .arg("-mp")
            .arg(&free_udp_port().expect("port").to_string())
            .timeout(Duration::from_secs(30))
            .run()
            .expect("sipp runs")
    });
    thread::sleep(Duration::from_millis(400));
    let app = AppServer::start(Arc::new(move |req: &Seen| {
        match req.target.split('?').next().unwrap_or("") {
            "/bridge.vxml" => page(
                vxml(&format!(
                    "<form><transfer name='t' dest='sip:agent@{agent_addr}' type='bridge'>\
                       <filled><submit next='filled.vxml'/></filled></transfer>\
                     <catch event='connection.disconnect.hangup'>\
                       <var name='t_is' expr='typeof t'/>\
                       <submit next='gone.vxml' namelist='t_is' method='get'/></catch></form>"
                )),
                None,
            ),
            "/gone.vxml" => page(vxml("<form><block><exit/></block></form>"), None),
            _ => (404, vec![], b"not found".to_vec()),
        }
    }));
    let url = app.url("/bridge.vxml");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sipp/mcp_call.xml");
    let xml = std::fs::read_to_string(&path)
        .expect("scenario")
        .replace("{{RURI}}", &format!("dialog@{};voicexml={url}", m.addr()))
        .replace("{{SDP_PORT}}", "[media_port]")
        .replace("{{PTS}}", PCMA_TE.0)
        .replace("{{RTPMAPS}}", PCMA_TE.1)
        .replace("{{DURING}}", &pause(1500));
    let out = Sipp::scenario(&xml)
        .remote(m.addr())
        .arg("-p")
        .arg(&free_udp_port().expect("port").to_string())
        .arg("-mp")
        .arg(&free_udp_port().expect("port").to_string())
        .timeout(Duration::from_secs(20))
        .run()
        .expect("sipp runs");
    assert!(out.success(), "{}", out.report());
    let agent = agent.join().expect("agent thread");
    assert!(
        agent.success(),
        "the far end gets mcp's BYE when the caller hangs up:\n{}\n--- switchboard ---\n{}",
        agent.report(),
        m.sb.logs()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.requests("/gone.vxml").is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let gone = app.requests("/gone.vxml");
    assert_eq!(
        gone.len(),
        1,
        "the hangup handler's submit: {:?}",
        app.seen()
    );
    assert!(
        gone[0].target.contains("t_is=undefined"),
        "the transfer item stays unfilled: {}",
        gone[0].target
    );
    assert!(app.requests("/filled.vxml").is_empty());
    assert!(
        m.metric("vxml_transfers_total{kind=\"bridge\",result=\"near_end_disconnect\"}") >= 1.0
    );
    assert_eq!(m.metric("mcp_sessions"), 0.0, "both calls are gone");
}

/// A bridge to a far end that answers and stays, ended by mcp: `transfer_attrs` and
/// `grammar` go in the `<transfer>`, `during` is what the caller does, and the caller's BYE
/// must match `checks`.
fn bridge_ended_by_mcp(transfer_attrs: &str, grammar: &str, during: &str, checks: &str) {
    let Some(m) = mcp() else { return };
    let agent_port = free_udp_port().expect("free port");
    let agent_addr: SocketAddr = format!("127.0.0.1:{agent_port}").parse().expect("addr");
    let agent_xml = transfer_target(ANSWERS_AND_WAITS);
    let agent = thread::spawn(move || {
        Sipp::scenario(&agent_xml)
            .arg("-p")
            .arg(&agent_port.to_string())
            .arg("-mp")
            .arg(&free_udp_port().expect("port").to_string())
            .timeout(Duration::from_secs(30))
            .run()
            .expect("sipp runs")
    });
    thread::sleep(Duration::from_millis(400));
    let doc = vxml(&format!(
        "<form><transfer name='t' dest='sip:agent@{agent_addr}' bridge='true' {transfer_attrs}>{grammar}</transfer>\
         <block><var name='how' expr='t'/><var name='secs' expr='t$.duration'/>\
           <var name='mode' expr='t$.inputmode'/><var name='keys' expr='t$.utterance'/>\
           <exit namelist='how secs mode keys'/></block></form>"
    ));
    let app = AppServer::start(Arc::new(move |req: &Seen| {
        match req.target.split('?').next().unwrap_or("") {
            "/bridge.vxml" => page(doc.clone(), None),
            _ => (404, vec![], b"not found".to_vec()),
        }
    }));
    let url = app.url("/bridge.vxml");
    let out = dialog_calls(&m, &url, 1, during, checks);
    let agent = agent.join().expect("agent thread");
    assert!(
        agent.success(),
        "the far end gets mcp's BYE:\n{}\n--- switchboard ---\n{}",
        agent.report(),
        m.sb.logs()
    );
    assert!(
        out.success(),
        "the caller's BYE has the result:\n{}\n--- switchboard ---\n{}",
        out.report(),
        m.sb.logs()
    );
    assert_eq!(m.metric("mcp_sessions"), 0.0, "both calls are gone");
}

#[test]
fn bridge_transfer_ends_at_maxtime() {
    let checks = bye_must_match(
        "body",
        None,
        "name=.how.[[:space:]]+maxtime_disconnect[[:space:]]",
        "how",
    ) + &bye_must_match("body", None, "name=.secs.[[:space:]]+1[[:space:]]", "secs");
    bridge_ended_by_mcp("maxtime='1500ms'", "", "", &checks);
}

#[test]
fn a_key_matching_the_transfer_grammar_ends_the_bridge_as_near_end_disconnect() {
    let grammar =
        "<grammar mode='dtmf' version='1.0' root='r'><rule id='r'><item>5</item></rule></grammar>";
    let during = pause(1500) + &play_pcap("5");
    let checks = bye_must_match(
        "body",
        None,
        "name=.how.[[:space:]]+near_end_disconnect[[:space:]]",
        "how",
    ) + &bye_must_match(
        "body",
        None,
        "name=.mode.[[:space:]]+dtmf[[:space:]]",
        "mode",
    ) + &bye_must_match("body", None, "name=.keys.[[:space:]]+5[[:space:]]", "keys");
    bridge_ended_by_mcp("maxtime='20s'", grammar, &during, &checks);
}

#[test]
fn a_tel_destination_goes_to_the_transfer_gateway_and_without_one_is_a_bad_destination() {
    let agent_port = free_udp_port().expect("free port");
    let Some(m) = mcp_with(&format!("transfer_gateway = \"127.0.0.1:{agent_port}\"\n")) else {
        return;
    };
    let ruri = format!(
        "      <ereg regexp=\"^INVITE sip:\\+15550100@127\\.0\\.0\\.1:{agent_port} SIP/2\\.0\" search_in=\"msg\" check_it=\"true\" assign_to=\"ruri\"/>\n"
    );
    let agent_xml = transfer_target_checking(&ruri, BUSY).replace(
        "<Reference variables=\"offer,",
        "<Reference variables=\"ruri,offer,",
    );
    let agent = thread::spawn(move || {
        Sipp::scenario(&agent_xml)
            .arg("-p")
            .arg(&agent_port.to_string())
            .timeout(Duration::from_secs(30))
            .run()
            .expect("sipp runs")
    });
    thread::sleep(Duration::from_millis(400));
    let app = AppServer::start(Arc::new(move |req: &Seen| {
        match req.target.split('?').next().unwrap_or("") {
            "/tel.vxml" => page(
                vxml(
                    "<form><transfer name='t' dest='tel:+1-555-0100' type='bridge'/>\
                     <block><var name='how' expr='t'/><exit namelist='how'/></block>\
                     <catch event='error.connection.baddestination'>\
                       <var name='how' expr='_event'/><exit namelist='how'/></catch></form>",
                ),
                None,
            ),
            _ => (404, vec![], b"not found".to_vec()),
        }
    }));
    let url = app.url("/tel.vxml");
    let busy = bye_must_match("body", None, "name=.how.[[:space:]]+busy[[:space:]]", "how");
    let out = dialog_calls(&m, &url, 1, "", &busy);
    let agent = agent.join().expect("agent thread");
    assert!(
        agent.success(),
        "the gateway gets sip:+15550100@gateway:\n{}",
        agent.report()
    );
    assert!(out.success(), "busy:\n{}\n{}", out.report(), m.sb.logs());

    // `run --roles mcp` without the key and without a SIP edge: no route to a number.
    let Some(m) = mcp() else { return };
    let bad = bye_must_match(
        "body",
        None,
        "name=.how.[[:space:]]+error\\.connection\\.baddestination[[:space:]]",
        "how",
    );
    let out = dialog_calls(&m, &url, 1, "", &bad);
    assert!(
        out.success(),
        "baddestination:\n{}\n{}",
        out.report(),
        m.sb.logs()
    );
}

#[test]
fn consultation_transfer_refers_the_caller_to_the_answered_far_end_with_replaces() {
    let Some(m) = mcp() else { return };
    let agent_port = free_udp_port().expect("free port");
    let agent_addr: SocketAddr = format!("127.0.0.1:{agent_port}").parse().expect("addr");
    // The far end answers, and hangs up 1.5 s later (as once replaced by the caller's call).
    let agent_xml = transfer_target(&answers_then_hangs_up(free_udp_port().expect("port"), 1500));
    let agent = thread::spawn(move || {
        Sipp::scenario(&agent_xml)
            .arg("-p")
            .arg(&agent_port.to_string())
            .timeout(Duration::from_secs(30))
            .run()
            .expect("sipp runs")
    });
    thread::sleep(Duration::from_millis(400));
    let app = AppServer::start(Arc::new(move |req: &Seen| {
        match req.target.split('?').next().unwrap_or("") {
            "/consult.vxml" => page(
                vxml(&format!(
                    "<catch event='connection.disconnect.transfer'>\
                       <var name='how' expr=\"'transferred'\"/><exit namelist='how'/></catch>\
                     <form><transfer name='t' dest='sip:agent@{agent_addr}' type='consultation'/>\
                       <block><var name='how' expr='t'/><exit namelist='how'/></block></form>"
                )),
                None,
            ),
            _ => (404, vec![], b"not found".to_vec()),
        }
    }));
    let url = app.url("/consult.vxml");
    // The caller gets a REFER to the far end's Contact replacing mcp's call to it.
    let refer = format!(
        r#"  <recv request="REFER">
    <action>
      <ereg regexp="Refer-To: &lt;sip:agent@127\.0\.0\.1:{agent_port}\?Replaces=[^&gt;;]+%3Bto-tag%3D[^&gt;;]+%3Bfrom-tag%3D[^&gt;;]+&gt;" search_in="msg" check_it="true" assign_to="rt"/>
    </action>
  </recv>
  <send><![CDATA[
SIP/2.0 202 Accepted
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:caller@[local_ip]:[local_port]>
Content-Length: 0

]]></send>
"#
    );
    let checks = bye_must_match(
        "body",
        None,
        "name=.how.[[:space:]]+transferred[[:space:]]",
        "how",
    );
    let out = dialog_calls(&m, &url, 1, &refer, &checks);
    let agent = agent.join().expect("agent thread");
    assert!(
        out.success(),
        "REFER with Replaces, then the BYE after connection.disconnect.transfer:\n{}\n--- switchboard ---\n{}",
        out.report(),
        m.sb.logs()
    );
    assert!(
        agent.success(),
        "the far end's call stays until it hangs up:\n{}\n--- switchboard ---\n{}",
        agent.report(),
        m.sb.logs()
    );
    assert!(m.metric("vxml_transfers_total{kind=\"consultation\",result=\"transferred\"}") >= 1.0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while m.metric("mcp_sessions") > 0.0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(m.metric("mcp_sessions"), 0.0, "both calls are gone");
}

#[test]
fn the_callers_rfc4733_keys_reach_the_far_end_of_a_bridge_without_grammars() {
    let Some(m) = mcp() else { return };
    let (rtp_port, counts, stop) = rtp_sink();
    let agent_port = free_udp_port().expect("free port");
    let agent_addr: SocketAddr = format!("127.0.0.1:{agent_port}").parse().expect("addr");
    let answer = ANSWERS_AND_WAITS
        .replace("m=audio [media_port] RTP/AVP 0\na=rtpmap:0 PCMU/8000", &format!(
            "m=audio {rtp_port} RTP/AVP 0 101\na=rtpmap:0 PCMU/8000\na=rtpmap:101 telephone-event/8000"
        ));
    assert!(answer.contains("telephone-event"), "{answer}");
    let agent_xml = transfer_target(&answer);
    let agent = thread::spawn(move || {
        Sipp::scenario(&agent_xml)
            .arg("-p")
            .arg(&agent_port.to_string())
            .timeout(Duration::from_secs(30))
            .run()
            .expect("sipp runs")
    });
    thread::sleep(Duration::from_millis(400));
    let doc = vxml(&format!(
        "<form><transfer name='t' dest='sip:agent@{agent_addr}' bridge='true' maxtime='3s'/>\
         <block><var name='how' expr='t'/><exit namelist='how'/></block></form>"
    ));
    let app = AppServer::start(Arc::new(move |req: &Seen| {
        match req.target.split('?').next().unwrap_or("") {
            "/bridge.vxml" => page(doc.clone(), None),
            _ => (404, vec![], b"not found".to_vec()),
        }
    }));
    let url = app.url("/bridge.vxml");
    let during = pause(1000) + &play_pcap("5");
    let checks = bye_must_match(
        "body",
        None,
        "name=.how.[[:space:]]+maxtime_disconnect[[:space:]]",
        "how",
    );
    let out = dialog_calls(&m, &url, 1, &during, &checks);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let agent = agent.join().expect("agent thread");
    assert!(agent.success(), "{}\n{}", agent.report(), m.sb.logs());
    assert!(out.success(), "{}\n{}", out.report(), m.sb.logs());
    let (packets, _, events) = *counts.lock().expect("lock");
    eprintln!("far end: {packets} RTP packets, {events} RFC 4733 event packets");
    assert!(
        events >= 3,
        "{events} telephone-event packets reached the far end"
    );
}

/// The values of the exit of the one ended call of `url`, from its dialog log.
fn exit_value(m: &Mcp, url: &str) -> (serde_json::Value, serde_json::Value) {
    let calls = m.ended(url, 1);
    assert_eq!(calls.len(), 1, "{url}: {calls:?}");
    let log = m.log(calls[0]["call_id"].as_str().expect("call id"));
    (log["outcome"]["values"].clone(), log)
}

#[test]
fn fetchtimeout_and_maxage_from_the_document_are_honoured() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let Some(m) = mcp() else { return };
    let cached_served = Arc::new(AtomicUsize::new(0));
    let again_served = Arc::new(AtomicUsize::new(0));
    let (c, a) = (cached_served.clone(), again_served.clone());
    let app = AppServer::start(Arc::new(move |req: &Seen| {
        match req.target.split('?').next().unwrap_or("") {
            // fetchtimeout 300 ms (a property) against a page taking 3 s: error.badfetch.
            "/timeout.vxml" => page(
                vxml(
                    "<property name='fetchtimeout' value='300ms'/>\
                      <catch event='error.badfetch'><exit expr=\"'timed out'\"/></catch>\
                      <form><block><goto next='slow.vxml'/></block></form>",
                ),
                None,
            ),
            "/slow.vxml" => {
                thread::sleep(Duration::from_secs(3));
                page(
                    vxml("<form><block><exit expr=\"'too late'\"/></block></form>"),
                    None,
                )
            }
            // cached.vxml may be cached for 600 s; its second version is only seen when
            // again.vxml's goto says maxage='0' (else the cached first version goes to
            // again.vxml a second time, which ends the call with 'stale').
            "/cached.vxml" => {
                let body = if c.fetch_add(1, Ordering::SeqCst) == 0 {
                    "<form><block><goto next='again.vxml'/></block></form>"
                } else {
                    "<form><block><exit expr=\"'fresh'\"/></block></form>"
                };
                page(vxml(body), Some("max-age=600"))
            }
            "/again.vxml" => {
                let body = if a.fetch_add(1, Ordering::SeqCst) == 0 {
                    "<form><block><goto next='cached.vxml' maxage='0'/></block></form>"
                } else {
                    "<form><block><exit expr=\"'stale'\"/></block></form>"
                };
                page(vxml(body), None)
            }
            _ => (404, vec![], b"not found".to_vec()),
        }
    }));
    let checks = bye_must_match("hdr", Some("Reason:"), "dialog exit", "r");
    let started = Instant::now();
    let out = dialog_calls(&m, &app.url("/timeout.vxml"), 1, "", &checks);
    assert!(out.success(), "{}\n{}", out.report(), m.sb.logs());
    let (values, log) = exit_value(&m, &app.url("/timeout.vxml"));
    assert_eq!(values, "timed out", "{log}");
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "the fetch did not wait for the slow page: {:?}",
        started.elapsed()
    );

    let out = dialog_calls(&m, &app.url("/cached.vxml"), 1, "", &checks);
    assert!(out.success(), "{}\n{}", out.report(), m.sb.logs());
    let (values, log) = exit_value(&m, &app.url("/cached.vxml"));
    assert_eq!(values, "fresh", "{log}");
    assert_eq!(cached_served.load(Ordering::SeqCst), 2);
}

#[test]
fn fetchaudio_plays_after_its_delay_for_at_least_its_minimum() {
    let Some(m) = mcp() else { return };
    let hold_wav = tone_wav(500.0, 400);
    let app = AppServer::start(Arc::new(move |req: &Seen| {
        match req.target.split('?').next().unwrap_or("") {
            "/start.vxml" => page(
                vxml(
                    "<property name='fetchaudio' value='hold.wav'/>\
                      <property name='fetchaudiodelay' value='200ms'/>\
                      <property name='fetchaudiominimum' value='1500ms'/>\
                      <form><block><goto next='slow.vxml'/></block></form>",
                ),
                None,
            ),
            // Takes 700 ms: the fetchaudio starts after 200 ms and holds the page until it
            // has played 1.5 s.
            "/slow.vxml" => {
                thread::sleep(Duration::from_millis(700));
                page(
                    vxml("<form><block><goto next='after.vxml' fetchaudio='unused.wav'/></block></form>"),
                    None,
                )
            }
            // Answered at once: its fetchaudio (default delay 2 s) never starts.
            "/after.vxml" => page(
                vxml("<form><block><exit expr=\"'done'\"/></block></form>"),
                None,
            ),
            "/hold.wav" => (200, vec![], hold_wav.clone()),
            "/unused.wav" => (200, vec![], hold_wav.clone()),
            _ => (404, vec![], b"not found".to_vec()),
        }
    }));
    let checks = bye_must_match("hdr", Some("Reason:"), "dialog exit", "r");
    let out = dialog_calls(&m, &app.url("/start.vxml"), 1, "", &checks);
    assert!(out.success(), "{}\n{}", out.report(), m.sb.logs());
    let (values, log) = exit_value(&m, &app.url("/start.vxml"));
    assert_eq!(values, "done", "{log}");
    let at = |path: &str| {
        let r = app.requests(path);
        assert_eq!(r.len(), 1, "{path}: {:?}", app.seen());
        r[0].at
    };
    let (slow, hold, after) = (at("/slow.vxml"), at("/hold.wav"), at("/after.vxml"));
    let delay = hold.duration_since(slow);
    assert!(
        delay >= Duration::from_millis(180) && delay < Duration::from_millis(650),
        "fetchaudio loaded {delay:?} after the fetch began"
    );
    let held = after.duration_since(hold);
    assert!(
        held >= Duration::from_millis(1400),
        "the page waited for fetchaudiominimum: {held:?}"
    );
    assert!(app.requests("/unused.wav").is_empty(), "{:?}", app.seen());
    let texts: Vec<String> = log["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["text"].as_str().map(str::to_owned))
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("fetchaudio http://") && t.ends_with("/hold.wav")),
        "{texts:?}"
    );
    let played: u64 = texts
        .iter()
        .find_map(|t| {
            t.strip_prefix("fetchaudio stopped after ")?
                .strip_suffix(" ms")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{texts:?}"));
    assert!((1450..3000).contains(&played), "{played}");
}

/// A loopback HTTPS server (rustls over std sockets) with a self-signed certificate for
/// 127.0.0.1 made by rcgen, answering `/start.vxml` with a page exiting with `'secure'`;
/// returns its address and the certificate's PEM.
fn https_app() -> (SocketAddr, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .expect("server config"),
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let config = config.clone();
            thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let Ok(tls) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut s = rustls::StreamOwned::new(tls, conn);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                // The request head (a client that does not trust us fails here).
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let body = if head.starts_with(b"GET /start.vxml ") {
                    vxml("<form><block><exit expr=\"'secure'\"/></block></form>")
                } else {
                    b"not found".to_vec()
                };
                let status = if head.starts_with(b"GET /start.vxml ") {
                    200
                } else {
                    404
                };
                let out = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(out.as_bytes());
                let _ = s.write_all(&body);
                s.conn.send_close_notify();
                let _ = s.flush();
            });
        }
    });
    (addr, ck.cert.pem())
}

#[test]
fn https_documents_with_an_extra_trusted_certificate_and_badfetch_without() {
    let (addr, pem) = https_app();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).expect("write ca");
    let Some(m) = mcp_with(&format!("extra_ca_file = {:?}\n", ca.display().to_string())) else {
        return;
    };
    let url = format!("https://{addr}/start.vxml");
    let checks = bye_must_match(
        "body",
        None,
        "name=.expr.[[:space:]]+secure[[:space:]]",
        "r",
    );
    let out = dialog_calls(&m, &url, 1, "", &checks);
    assert!(out.success(), "{}\n{}", out.report(), m.sb.logs());
    let (values, log) = exit_value(&m, &url);
    assert_eq!(values, "secure", "{log}");
    // Without the extra certificate the same page is error.badfetch.
    let Some(plain) = mcp() else { return };
    let checks = bye_must_match("hdr", Some("Reason:"), "dialog error", "r");
    let out = dialog_calls(&plain, &url, 1, "", &checks);
    assert!(out.success(), "{}\n{}", out.report(), plain.sb.logs());
    let calls = plain.ended(&url, 1);
    assert_eq!(calls.len(), 1, "{calls:?}");
    let log = plain.log(calls[0]["call_id"].as_str().expect("call id"));
    assert!(
        log["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["kind"] == "event"
                && e["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("error.badfetch"))
                && e["text"]
                    .as_str()
                    .is_some_and(|t| t.to_ascii_lowercase().contains("certificate"))),
        "{log}"
    );
}

#[test]
fn a_multipart_submit_sends_the_recording_as_a_wav_part() {
    let Some(m) = mcp() else { return };
    let pcap = Path::new(PCAPS).join("g711a.pcap");
    assert!(pcap.exists(), "{} is missing", pcap.display());
    let app = AppServer::start(Arc::new(move |req: &Seen| {
        match req.target.split('?').next().unwrap_or("") {
            "/record.vxml" => page(
                vxml(
                    "<form><var name='who' expr=\"'ann'\"/>\
                     <record name='msg' maxtime='2s' finalsilence='5s' dtmfterm='false'/>\
                     <block><submit next='save' method='post' enctype='multipart/form-data' namelist='msg who'/></block></form>",
                ),
                None,
            ),
            "/save" => page(
                vxml("<form><block><exit expr=\"'saved'\"/></block></form>"),
                None,
            ),
            _ => (404, vec![], b"not found".to_vec()),
        }
    }));
    let url = app.url("/record.vxml");
    let checks = bye_must_match("body", None, "name=.expr.[[:space:]]+saved[[:space:]]", "r");
    let during = format!(
        "  <nop><action><exec play_pcap_audio=\"{}\"/></action></nop>\n",
        pcap.display()
    );
    let out = dialog_calls(&m, &url, 1, &during, &checks);
    assert!(out.success(), "{}\n{}", out.report(), m.sb.logs());
    let posts = app.requests("/save");
    assert_eq!(posts.len(), 1, "{:?}", app.seen());
    let post = &posts[0];
    assert_eq!(post.method, "POST");
    let raw = &post.raw;
    let head = String::from_utf8_lossy(&raw[..raw.len().min(300)]).into_owned();
    assert!(
        head.starts_with("--switchboard-vxml-submit\r\nContent-Disposition: form-data; name=\"msg\"; filename=\"vxml-"),
        "{head}"
    );
    assert!(
        head.contains(".wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF"),
        "{head}"
    );
    assert!(
        post.body.ends_with("\r\n--switchboard-vxml-submit\r\nContent-Disposition: form-data; name=\"who\"\r\n\r\nann\r\n--switchboard-vxml-submit--\r\n"),
        "{}",
        &post.body[post.body.len().saturating_sub(200)..]
    );
    // The part is the WAV saved for the recording, byte for byte.
    let wav_start = raw.windows(4).position(|w| w == b"RIFF").expect("RIFF");
    let saved = std::fs::read_dir(m._dir.path().join("recordings"))
        .expect("recordings dir")
        .filter_map(|e| e.ok())
        .map(|e| std::fs::read(e.path()).expect("read recording"))
        .find(|w| raw[wav_start..].starts_with(w))
        .expect("the submitted WAV is a saved recording");
    // 2 s of 8 kHz 16-bit audio.
    assert!(saved.len() > 30_000, "{} bytes", saved.len());
}

#[test]
fn mcp_refuses_to_start_with_an_unusable_extra_ca_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "not a certificate").expect("write");
    for (file, why) in [
        (
            dir.path().join("missing.pem"),
            "cannot read mcp.extra_ca_file",
        ),
        (not_pem, "mcp.extra_ca_file: no CERTIFICATE"),
    ] {
        let config = format!(
            "data_dir = {:?}\n[mcp]\nextra_ca_file = {:?}\n",
            dir.path().display().to_string(),
            file.display().to_string()
        );
        let err = match Switchboard::builder()
            .config(&config)
            .roles(&["mcp"])
            .spawn()
        {
            Ok(_) => panic!("mcp started with {}", file.display()),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(why), "{err}");
    }
}
