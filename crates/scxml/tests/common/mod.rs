//! Test harness: a file fetcher, a tiny loopback HTTP server/client for the Basic HTTP Event I/O
//! Processor, and a driver that runs a session on a virtual clock.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_scxml::{Document, Environment, Fetcher, HttpRequest, Output, Session};

// Number of snapshot/restore round trips made by [`run_file`] (per thread).
thread_local! {
    pub static SNAPSHOTS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Fetches `file:` and relative URIs below one directory.
pub struct DirFetcher {
    pub dir: PathBuf,
}

impl Fetcher for DirFetcher {
    fn fetch(&self, _base: Option<&str>, uri: &str) -> Result<(String, String), String> {
        let rel = uri.strip_prefix("file:").unwrap_or(uri);
        if rel.is_empty()
            || rel.contains("..")
            || rel.contains(':')
            || rel.contains('\\')
            || rel.starts_with('/')
        {
            return Err(format!("refusing '{uri}'"));
        }
        let p = self.dir.join(rel);
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok((format!("file:{rel}"), text))
    }
}

/// A loopback HTTP listener on a random port; each request is answered 200 and handed over.
pub struct HttpServer {
    pub url: String,
    pub rx: Receiver<HttpRequest>,
}

fn read_request(s: &mut TcpStream) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let n = s.read(&mut tmp).ok()?;
        if n == 0 {
            return Some(buf);
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < i + 4 + len {
                let n = s.read(&mut tmp).ok()?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            return Some(buf);
        }
    }
}

impl HttpServer {
    pub fn start() -> HttpServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = l.local_addr().expect("addr").port();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let Some(raw) = read_request(&mut s) else {
                    continue;
                };
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                if let Some(r) = HttpRequest::parse(&raw) {
                    if tx.send(r).is_err() {
                        return;
                    }
                }
            }
        });
        HttpServer {
            url: format!("http://127.0.0.1:{port}/scxml"),
            rx,
        }
    }
}

/// POSTs a request to a loopback URL in a thread; reports `(session, sendid, ok)`.
pub fn http_post(
    url: &str,
    req: HttpRequest,
    session: String,
    sendid: Option<String>,
    done: Sender<(String, Option<String>, bool)>,
) {
    let url = url.to_string();
    std::thread::spawn(move || {
        let ok = (|| -> Option<()> {
            let rest = url.strip_prefix("http://")?;
            let hostport = rest.split('/').next()?;
            if !hostport.starts_with("127.0.0.1:") {
                return None;
            }
            let mut s = TcpStream::connect(hostport).ok()?;
            let mut head = format!(
                "{} {} HTTP/1.1\r\nHost: {hostport}\r\n",
                req.method, req.target
            );
            for (k, v) in &req.headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str(&format!(
                "Content-Length: {}\r\nConnection: close\r\n\r\n",
                req.body.len()
            ));
            s.write_all(head.as_bytes()).ok()?;
            s.write_all(req.body.as_bytes()).ok()?;
            let mut resp = Vec::new();
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            let _ = s.read_to_end(&mut resp);
            if resp.starts_with(b"HTTP/1.1 2") || resp.starts_with(b"HTTP/1.0 2") {
                Some(())
            } else {
                None
            }
        })()
        .is_some();
        let _ = done.send((session, sendid, ok));
    });
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass,
    Fail(String),
}

pub struct RunOptions {
    pub snapshot_every_step: bool,
    pub virtual_limit_ms: u64,
    pub wall_limit: Duration,
}

/// Loads `file` from `dir` and runs it to completion. Pass = top-level final state `pass`.
pub fn run_file(dir: &Path, file: &str, opts: &RunOptions) -> Verdict {
    let server = HttpServer::start();
    let mut env = Environment::default().with_fetcher(Arc::new(DirFetcher {
        dir: dir.to_path_buf(),
    }));
    env.basichttp_location = Some(server.url.clone());
    let text = match std::fs::read_to_string(dir.join(file)) {
        Ok(t) => t,
        Err(e) => return Verdict::Fail(format!("read: {e}")),
    };
    let doc = match Document::load(&text, Some(&format!("file:{file}")), &env) {
        Ok(d) => d,
        Err(e) => return Verdict::Fail(format!("load error: {e}")),
    };
    let mut session = match Session::new(doc, env.clone(), "s1") {
        Ok(s) => s,
        Err(e) => return Verdict::Fail(format!("session: {e}")),
    };
    let (done_tx, done_rx) = channel();
    let mut in_flight = 0usize;
    let mut now = 0u64;
    let started = Instant::now();
    loop {
        if started.elapsed() > opts.wall_limit {
            return Verdict::Fail("wall-clock timeout".into());
        }
        let mut progressed = false;
        while session.step(now) {
            progressed = true;
            if opts.snapshot_every_step {
                let bytes = match session.snapshot() {
                    Ok(b) => b,
                    Err(e) => return Verdict::Fail(format!("snapshot: {e}")),
                };
                SNAPSHOTS.with(|c| c.set(c.get() + 1));
                // From the self-contained bytes alone (the document is parsed again), as
                // another process taking the session over would.
                session = match Session::restore(&bytes, env.clone()) {
                    Ok(s) => s,
                    Err(e) => return Verdict::Fail(format!("restore: {e}")),
                };
            }
            while let Some(o) = session.poll_output() {
                if std::env::var("SCXML_DEBUG").is_ok() {
                    eprintln!("[{now}] {o:?} config={:?}", session.configuration());
                }
                match o {
                    Output::Done { final_state, .. } => {
                        return if final_state.as_deref() == Some("pass") {
                            Verdict::Pass
                        } else {
                            Verdict::Fail(format!("final state {final_state:?}"))
                        };
                    }
                    Output::HttpSend {
                        session: sid,
                        sendid,
                        url,
                        request,
                    } => {
                        in_flight += 1;
                        http_post(&url, request, sid, sendid, done_tx.clone());
                    }
                    _ => {}
                }
            }
            if started.elapsed() > opts.wall_limit {
                return Verdict::Fail("wall-clock timeout (busy)".into());
            }
        }
        while let Ok((sid, sendid, ok)) = done_rx.try_recv() {
            in_flight = in_flight.saturating_sub(1);
            if !ok {
                session.http_send_failed(&sid, sendid.as_deref(), true);
            }
            progressed = true;
        }
        while let Ok(req) = server.rx.try_recv() {
            session.handle_http(&req);
            progressed = true;
        }
        if progressed {
            continue;
        }
        if in_flight > 0 || session.waiting_for_http() {
            if let Ok(req) = server.rx.recv_timeout(Duration::from_millis(200)) {
                session.handle_http(&req);
            }
            continue;
        }
        match session.next_deadline() {
            Some(d) if d <= opts.virtual_limit_ms => now = now.max(d),
            Some(_) => return Verdict::Fail("virtual timeout".into()),
            None => return Verdict::Fail(format!("stuck in {:?}", session.configuration())),
        }
    }
}

/// The conformance folder, or `None` (with a loud message) when it is absent.
pub fn conformance_dir() -> Option<PathBuf> {
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/conformance/scxml-w3c"
    ));
    if p.join("tests").is_dir() {
        Some(p)
    } else {
        eprintln!(
            "\n!!!!!!!! SCXML W3C conformance folder {} is absent: SKIPPING the suite !!!!!!!!\n",
            p.display()
        );
        None
    }
}

#[derive(Debug, Clone)]
pub struct TestCase {
    pub id: String,
    pub files: Vec<String>,
    pub mandatory: bool,
}

/// Automatic tests from INDEX.md (mandatory and optional, manual ones excluded).
pub fn automatic_tests(root: &Path) -> Vec<TestCase> {
    let index = std::fs::read_to_string(root.join("INDEX.md")).unwrap_or_default();
    let mut out = Vec::new();
    for line in index.lines() {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        if cols.len() < 8 || cols[1].parse::<u32>().is_err() {
            continue;
        }
        let manual = cols[6] == "yes";
        if manual {
            continue;
        }
        let mandatory = match cols[5] {
            "mandatory" => true,
            "optional" => false,
            _ => continue,
        };
        let files: Vec<String> = cols[2].split_whitespace().map(str::to_string).collect();
        out.push(TestCase {
            id: cols[1].to_string(),
            files,
            mandatory,
        });
    }
    out
}
