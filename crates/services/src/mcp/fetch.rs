//! Document fetches of the VoiceXML browser: HTTP GET and POST through the prompt cache's
//! HTTP client (its timeout and size limit), with a shared cache of GET answers kept for the
//! `max-age` their `Cache-Control` gives (so a menu page is fetched once per max-age, whatever
//! the number of calls running it).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_media::{HttpRequest, PromptCache};
use switchboard_vxml::{FetchError, FetchOptions, Method};

/// Documents kept at most; the cache is emptied of expired entries, then cleared, when full.
const MAX_CACHED: usize = 1024;

/// The shared cache of fetched documents.
#[derive(Default)]
pub struct DocumentCache {
    /// By URL: when fetched, when it expires, the text.
    entries: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    fetched: Instant,
    expires: Instant,
    text: String,
}

/// What a fetch accepts from the cache (VoiceXML `maxage`/`maxstale`, RFC 5552's Request-URI
/// parameters of the same names): a copy at most `maxage` old, used up to `maxstale` past
/// its expiry. The default takes any fresh copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Freshness {
    pub maxage: Option<Duration>,
    pub maxstale: Option<Duration>,
}

impl Freshness {
    /// The `maxage`/`maxstale` of an interpreter's fetch (attributes or properties).
    pub fn of(options: &FetchOptions) -> Freshness {
        Freshness {
            maxage: options.maxage_s.map(Duration::from_secs),
            maxstale: options.maxstale_s.map(Duration::from_secs),
        }
    }
}

/// Whether a fetch was answered from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cached {
    Hit,
    Miss,
}

impl Cached {
    pub fn label(self) -> &'static str {
        match self {
            Cached::Hit => "hit",
            Cached::Miss => "miss",
        }
    }
}

/// How long a response may be reused: `max-age` (or `s-maxage`) of its `Cache-Control`;
/// `None` for `no-store`, `no-cache`, a zero or missing max-age.
pub fn max_age(cache_control: Option<&str>) -> Option<Duration> {
    let cc = cache_control?;
    let mut age = None;
    for d in cc.split(',') {
        let d = d.trim().to_ascii_lowercase();
        if d == "no-store" || d == "no-cache" {
            return None;
        }
        let value = d
            .strip_prefix("max-age=")
            .or_else(|| d.strip_prefix("s-maxage="));
        if let Some(v) = value {
            if let Ok(n) = v.trim_matches('"').parse::<u64>() {
                age = Some(n);
            }
        }
    }
    age.filter(|&n| n > 0).map(Duration::from_secs)
}

/// `application/x-www-form-urlencoded` (spaces as `+`).
pub fn form_encode(params: &[(String, String)]) -> String {
    fn enc(s: &str, out: &mut String) {
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        enc(k, &mut out);
        out.push('=');
        enc(v, &mut out);
    }
    out
}

/// The HTTP request for a VoiceXML fetch: GET with the parameters in the query, POST with
/// them as a form body. The fragment is dropped. Only `http:` and `https:` are fetched.
pub fn request_for(
    url: &str,
    method: Method,
    params: &[(String, String)],
) -> Result<HttpRequest, FetchError> {
    let url = url.split('#').next().unwrap_or(url);
    let scheme_ok = |scheme: &str| {
        url.get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
    };
    if !scheme_ok("http://") && !scheme_ok("https://") {
        return Err(FetchError {
            status: None,
            reason: format!("cannot fetch {url:?}: only http:// and https:// URLs are fetched"),
        });
    }
    Ok(match method {
        Method::Get => {
            let mut u = url.to_owned();
            if !params.is_empty() {
                u.push(if u.contains('?') { '&' } else { '?' });
                u.push_str(&form_encode(params));
            }
            HttpRequest {
                post: false,
                url: u,
                body: None,
            }
        }
        Method::Post => HttpRequest {
            post: true,
            url: url.to_owned(),
            body: Some((
                "application/x-www-form-urlencoded".to_owned(),
                Bytes::from(form_encode(params)),
            )),
        },
    })
}

impl DocumentCache {
    fn lookup(&self, key: &str, now: Instant, f: Freshness) -> Option<String> {
        let c = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let e = c.get(key)?;
        let usable_until = e.expires + f.maxstale.unwrap_or_default();
        let young_enough = f
            .maxage
            .is_none_or(|age| now.saturating_duration_since(e.fetched) <= age);
        (usable_until > now && young_enough).then(|| e.text.clone())
    }

    fn store(&self, key: String, text: String, expires: Instant, now: Instant) {
        let mut c = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if c.len() >= MAX_CACHED {
            c.retain(|_, e| e.expires > now);
            if c.len() >= MAX_CACHED {
                c.clear();
            }
        }
        c.insert(
            key,
            Entry {
                fetched: now,
                expires,
                text,
            },
        );
    }

    /// Fetches a document (from the cache when a GET's answer is still fresh). A non-2xx
    /// answer is an error with its status (the interpreter throws
    /// `error.badfetch.http.<status>`); a body that is not UTF-8 is an error too. `timeout`
    /// (VoiceXML `fetchtimeout`) bounds the HTTP exchange below the client's own timeout
    /// (`mcp.fetch_timeout_ms`), which bounds it anyway.
    pub async fn fetch(
        &self,
        http: &PromptCache,
        url: &str,
        method: Method,
        params: &[(String, String)],
        freshness: Freshness,
        timeout: Option<Duration>,
    ) -> (Result<String, FetchError>, Cached) {
        // A document the browser makes itself (`builtin:`), e.g. the SIP Server's
        // CollectDigits treatment.
        if let Some(doc) = super::builtin::document(url) {
            return (doc, Cached::Miss);
        }
        let req = match request_for(url, method, params) {
            Ok(r) => r,
            Err(e) => return (Err(e), Cached::Miss),
        };
        let cacheable = !req.post;
        if cacheable {
            if let Some(text) = self.lookup(&req.url, Instant::now(), freshness) {
                return (Ok(text), Cached::Hit);
            }
        }
        let key = req.url.clone();
        let (text, cache_control) = match exchange(http, req, timeout).await {
            Ok(r) => r,
            Err(e) => return (Err(e), Cached::Miss),
        };
        if cacheable {
            if let Some(age) = max_age(cache_control.as_deref()) {
                let now = Instant::now();
                self.store(key, text.clone(), now + age, now);
            }
        }
        (Ok(text), Cached::Miss)
    }

    /// A `<submit enctype="multipart/form-data">` (a POST, never cached): `params` as a
    /// `multipart/form-data` body in which a value found in `files` is sent as that file.
    pub async fn submit_multipart(
        &self,
        http: &PromptCache,
        url: &str,
        params: &[(String, String)],
        files: &HashMap<String, FilePart>,
        timeout: Option<Duration>,
    ) -> Result<String, FetchError> {
        let mut req = request_for(url, Method::Post, &[])?;
        req.body = Some(multipart_body(params, files));
        exchange(http, req, timeout).await.map(|(text, _)| text)
    }
}

/// Makes the request (within `timeout` when given): the body of a 2xx answer as text and its
/// `Cache-Control`, else an error with the status.
async fn exchange(
    http: &PromptCache,
    req: HttpRequest,
    timeout: Option<Duration>,
) -> Result<(String, Option<String>), FetchError> {
    let key = req.url.clone();
    let answer = match timeout {
        Some(t) => tokio::time::timeout(t, http.http(req))
            .await
            .map_err(|_| FetchError {
                status: None,
                reason: format!("fetch of {key} timed out (fetchtimeout {t:?})"),
            })?,
        None => http.http(req).await,
    };
    let resp = answer.map_err(|e| FetchError {
        status: None,
        reason: e.to_string(),
    })?;
    if !(200..300).contains(&resp.status) {
        return Err(FetchError {
            status: Some(resp.status),
            reason: format!("HTTP status {} from {key}", resp.status),
        });
    }
    let text = String::from_utf8(resp.body.to_vec()).map_err(|_| FetchError {
        status: None,
        reason: format!("{key} is not UTF-8 text"),
    })?;
    Ok((text, resp.cache_control))
}

/// A file of a `multipart/form-data` submit: the audio of a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePart {
    pub file_name: String,
    pub content_type: String,
    pub data: Bytes,
}

/// The boundary of submitted multipart bodies (lengthened while found in the content).
const SUBMIT_BOUNDARY: &str = "switchboard-vxml-submit";

/// A `multipart/form-data` body (RFC 7578) and its content type: one part per parameter,
/// named after it; a parameter whose value is a key of `files` carries that file (with its
/// `filename` and `Content-Type`), the others their value as text.
pub fn multipart_body(
    params: &[(String, String)],
    files: &HashMap<String, FilePart>,
) -> (String, Bytes) {
    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }
    let mut boundary = SUBMIT_BOUNDARY.to_owned();
    while params.iter().any(|(k, v)| {
        k.contains(&boundary)
            || match files.get(v) {
                Some(f) => contains(&f.data, boundary.as_bytes()),
                None => v.contains(&boundary),
            }
    }) {
        boundary.push('x');
    }
    // Names and file names come from the application: quotes and line breaks would break
    // the framing.
    let clean = |s: &str| s.replace(['"', '\r', '\n'], "_");
    let mut body = Vec::new();
    for (name, value) in params {
        let name = clean(name);
        match files.get(value) {
            Some(f) => {
                body.extend_from_slice(
                    format!(
                        "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{}\"\r\nContent-Type: {}\r\n\r\n",
                        clean(&f.file_name),
                        clean(&f.content_type)
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(&f.data);
            }
            None => body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}"
                )
                .as_bytes(),
            ),
        }
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (
        format!("multipart/form-data; boundary={boundary}"),
        Bytes::from(body),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_of_cache_control() {
        assert_eq!(max_age(None), None);
        assert_eq!(
            max_age(Some("public, max-age=60")),
            Some(Duration::from_secs(60))
        );
        assert_eq!(max_age(Some("s-maxage=5")), Some(Duration::from_secs(5)));
        assert_eq!(max_age(Some("max-age=0")), None);
        assert_eq!(max_age(Some("max-age=60, no-store")), None);
        assert_eq!(max_age(Some("no-cache")), None);
        assert_eq!(max_age(Some("max-age=soon")), None);
    }

    #[test]
    fn requests_for_get_and_post() {
        let p = vec![
            ("pin".to_owned(), "12 3#".to_owned()),
            ("a&b".to_owned(), "é".to_owned()),
        ];
        let r = request_for("http://as/next.vxml#f", Method::Get, &p).unwrap();
        assert!(!r.post);
        assert_eq!(r.url, "http://as/next.vxml?pin=12+3%23&a%26b=%C3%A9");
        let r = request_for("http://as/n?x=1", Method::Get, &p[..1]).unwrap();
        assert_eq!(r.url, "http://as/n?x=1&pin=12+3%23");
        let r = request_for("http://as/n", Method::Post, &p[..1]).unwrap();
        assert!(r.post);
        assert_eq!(r.url, "http://as/n");
        let (ct, body) = r.body.unwrap();
        assert_eq!(ct, "application/x-www-form-urlencoded");
        assert_eq!(&body[..], b"pin=12+3%23");
        let r = request_for("HTTPS://as/n#x", Method::Get, &[]).unwrap();
        assert_eq!(r.url, "HTTPS://as/n");
        let e = request_for("ftp://x", Method::Get, &[]).unwrap_err();
        assert_eq!(e.status, None);
        assert!(request_for("file:///etc/passwd", Method::Get, &[]).is_err());
    }

    /// A loopback HTTP server answering `/page` (cacheable for 60 s), `/nocache`, `/slow`
    /// (never) and anything else with 404; returns its address and the request lines seen.
    async fn server() -> (
        std::net::SocketAddr,
        std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = c.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let line = req.lines().next().unwrap_or("").to_owned();
                    log.lock().unwrap().push(line.clone());
                    let (status, extra, body) = if line.starts_with("GET /page ") {
                        ("200 OK", "Cache-Control: max-age=60\r\n", "<vxml/>")
                    } else if line.starts_with("GET /nocache ") {
                        ("200 OK", "Cache-Control: no-cache\r\n", "<vxml/>")
                    } else if line.starts_with("GET /slow ") {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        ("200 OK", "", "")
                    } else {
                        ("404 Not Found", "", "no")
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = c.write_all(resp.as_bytes()).await;
                });
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn fetches_are_cached_for_max_age_and_fail_with_status_or_timeout() {
        let (addr, seen) = server().await;
        let http = PromptCache::new(switchboard_media::PromptSettings {
            timeout: Duration::from_millis(300),
            ..Default::default()
        });
        let docs = DocumentCache::default();
        let url = |p: &str| format!("http://{addr}{p}");
        let count = |p: &str| {
            seen.lock()
                .unwrap()
                .iter()
                .filter(|l| l.starts_with(&format!("GET {p} ")))
                .count()
        };
        for expect in [Cached::Miss, Cached::Hit, Cached::Hit] {
            let (r, c) = docs
                .fetch(
                    &http,
                    &url("/page#f"),
                    Method::Get,
                    &[],
                    Freshness::default(),
                    None,
                )
                .await;
            assert_eq!(r.unwrap(), "<vxml/>");
            assert_eq!(c, expect);
        }
        assert_eq!(count("/page"), 1, "fetched once per max-age");
        // maxage=0 (RFC 5552's Request-URI parameter) asks for a fresh copy.
        let zero = Freshness {
            maxage: Some(Duration::ZERO),
            maxstale: None,
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (r, c) = docs
            .fetch(&http, &url("/page"), Method::Get, &[], zero, None)
            .await;
        assert!(r.is_ok());
        assert_eq!(c, Cached::Miss);
        assert_eq!(count("/page"), 2);
        for _ in 0..2 {
            let (r, c) = docs
                .fetch(
                    &http,
                    &url("/nocache"),
                    Method::Get,
                    &[],
                    Freshness::default(),
                    None,
                )
                .await;
            assert!(r.is_ok());
            assert_eq!(c, Cached::Miss);
        }
        assert_eq!(count("/nocache"), 2);
        let (r, _) = docs
            .fetch(
                &http,
                &url("/missing"),
                Method::Get,
                &[],
                Freshness::default(),
                None,
            )
            .await;
        assert_eq!(r.unwrap_err().status, Some(404));
        let started = Instant::now();
        let (r, _) = docs
            .fetch(
                &http,
                &url("/slow"),
                Method::Get,
                &[],
                Freshness::default(),
                None,
            )
            .await;
        let e = r.unwrap_err();
        assert_eq!(e.status, None);
        assert!(e.reason.contains("timed out"), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn fetchtimeout_and_maxage_of_the_interpreter_are_honoured() {
        let (addr, seen) = server().await;
        // The client's own timeout is long: the fetch's `fetchtimeout` ends it first.
        let http = PromptCache::new(switchboard_media::PromptSettings {
            timeout: Duration::from_secs(20),
            ..Default::default()
        });
        let docs = DocumentCache::default();
        let started = Instant::now();
        let (r, c) = docs
            .fetch(
                &http,
                &format!("http://{addr}/slow"),
                Method::Get,
                &[],
                Freshness::default(),
                Some(Duration::from_millis(200)),
            )
            .await;
        let e = r.unwrap_err();
        assert_eq!((e.status, c), (None, Cached::Miss));
        assert!(e.reason.contains("fetchtimeout"), "{e:?}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(3),
            "{took:?}"
        );
        // A fetch within its timeout succeeds.
        let page = format!("http://{addr}/page");
        let (r, _) = docs
            .fetch(
                &http,
                &page,
                Method::Get,
                &[],
                Freshness::default(),
                Some(Duration::from_secs(5)),
            )
            .await;
        assert_eq!(r.unwrap(), "<vxml/>");
        // `maxage="0"` from a document's attribute or property: fetched again.
        let opts = FetchOptions {
            maxage_s: Some(0),
            ..Default::default()
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (_, c) = docs
            .fetch(&http, &page, Method::Get, &[], Freshness::of(&opts), None)
            .await;
        assert_eq!(c, Cached::Miss);
        let (_, c) = docs
            .fetch(
                &http,
                &page,
                Method::Get,
                &[],
                Freshness::of(&FetchOptions::default()),
                None,
            )
            .await;
        assert_eq!(c, Cached::Hit);
        let n = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("GET /page "))
            .count();
        assert_eq!(n, 2);
    }

    #[test]
    fn multipart_bodies_carry_recordings_as_files() {
        let wav = Bytes::from_static(b"RIFF....WAVEdata\x00\x01");
        let files = HashMap::from([(
            "file:///r/vxml-c-1.wav".to_owned(),
            FilePart {
                file_name: "vxml-c-1.wav".into(),
                content_type: "audio/wav".into(),
                data: wav.clone(),
            },
        )]);
        let params = vec![
            ("msg".to_owned(), "file:///r/vxml-c-1.wav".to_owned()),
            ("who\"x".to_owned(), "ann".to_owned()),
        ];
        let (ct, body) = multipart_body(&params, &files);
        assert_eq!(ct, "multipart/form-data; boundary=switchboard-vxml-submit");
        let mut expect = b"--switchboard-vxml-submit\r\nContent-Disposition: form-data; name=\"msg\"; filename=\"vxml-c-1.wav\"\r\nContent-Type: audio/wav\r\n\r\n".to_vec();
        expect.extend_from_slice(&wav);
        expect.extend_from_slice(b"\r\n--switchboard-vxml-submit\r\nContent-Disposition: form-data; name=\"who_x\"\r\n\r\nann\r\n--switchboard-vxml-submit--\r\n");
        assert_eq!(&body[..], &expect[..]);
        // Content holding the boundary gets a longer one.
        let params = vec![("a".to_owned(), "--switchboard-vxml-submit".to_owned())];
        let (ct, _) = multipart_body(&params, &HashMap::new());
        assert_eq!(ct, "multipart/form-data; boundary=switchboard-vxml-submitx");
        // An empty namelist is just the closing delimiter.
        let (_, body) = multipart_body(&[], &HashMap::new());
        assert_eq!(&body[..], b"--switchboard-vxml-submit--\r\n");
    }

    #[test]
    fn the_cache_serves_fresh_entries_only() {
        let c = DocumentCache::default();
        let now = Instant::now();
        let any = Freshness::default();
        let s = Duration::from_secs;
        c.store("u".into(), "doc".into(), now + s(5), now);
        assert_eq!(c.lookup("u", now, any).as_deref(), Some("doc"));
        assert_eq!(c.lookup("u", now + s(6), any), None);
        assert_eq!(c.lookup("v", now, any), None);
        let stale_ok = Freshness {
            maxage: None,
            maxstale: Some(s(10)),
        };
        assert_eq!(c.lookup("u", now + s(6), stale_ok).as_deref(), Some("doc"));
        assert_eq!(c.lookup("u", now + s(16), stale_ok), None);
        let young = Freshness {
            maxage: Some(s(2)),
            maxstale: None,
        };
        assert_eq!(c.lookup("u", now + s(1), young).as_deref(), Some("doc"));
        assert_eq!(c.lookup("u", now + s(3), young), None);
    }
}
