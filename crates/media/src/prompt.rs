//! Turning prompt URLs into playable items: WAV files under the media directory, WAV fetched
//! over HTTP (cached), text spoken by a TTS program (espeak-ng by default, run as a separate
//! process; cached by text and voice, in memory and on disk), tones and silence.
//!
//! URL forms (as in RFC 4240 `play=`, %-escapes allowed):
//! * `http://host/path.wav`: fetched once, then served from the cache.
//! * `file:///name.wav`, `file:name.wav` or `name.wav`: a file in the media directory (no `..`).
//! * `tts:<text>`: spoken with the default voice, or the voice given to [`PromptCache::load`].
//! * `tone:<f1>[+<f2>][/<ms>]`: one or two frequencies at -10 dBm0 (default 1000 ms).
//! * `tone:<name>[/<ms>]`: a call-progress tone with its cadence, for `ms` (default: one
//!   cadence cycle): `ringback` (North American, 440+480 Hz, 2 s on 4 s off), `ringback-eu`
//!   (425 Hz, 1 s on 4 s off), `ringback-uk` (400+450 Hz, 0.4/0.2/0.4 s on, 2 s off), `busy`
//!   (North American, 480+620 Hz, 0.5 s on 0.5 s off) and `busy-eu` (425 Hz, the same cadence).
//! * `dtmf:<digits>`: DTMF tones, 100 ms on, 100 ms off.
//! * `silence:<ms>`.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;
use switchboard_rtp::tone::{ToneSpec, MAX_CADENCE};

use crate::audio::Audio;
use crate::player::PlayItem;

/// A parsed prompt URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptSource {
    Http(String),
    File(PathBuf),
    Tts(String),
    Tone {
        freqs: [u32; 2],
        ms: u32,
    },
    /// A named call-progress tone (see [`CALL_PROGRESS_TONES`]).
    CallProgress {
        name: &'static str,
        ms: u32,
    },
    Dtmf(String),
    Silence(u32),
}

/// The call-progress tones `tone:<name>` plays, by name.
pub const CALL_PROGRESS_TONES: [(&str, ToneSpec); 5] = [
    ("ringback", ToneSpec::RINGBACK_US),
    ("ringback-eu", ToneSpec::RINGBACK_EU),
    ("ringback-uk", ToneSpec::RINGBACK_UK),
    ("busy", ToneSpec::BUSY_US),
    ("busy-eu", ToneSpec::BUSY_EU),
];

fn call_progress(name: &str) -> Option<(&'static str, ToneSpec)> {
    CALL_PROGRESS_TONES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .copied()
}

/// One on/off cycle of a cadence, ms.
fn cycle_ms(spec: &ToneSpec) -> u32 {
    spec.cadence[..spec.cadence_len.min(MAX_CADENCE)]
        .iter()
        .map(|(on, off)| on + off)
        .sum()
}

/// Why a prompt could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("bad prompt URL {0:?}: {1}")]
    BadUrl(String, &'static str),
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("cannot fetch {0}: {1}")]
    Fetch(String, String),
    #[error("not a usable WAV file ({0}): {1}")]
    Wav(String, crate::audio::WavError),
    #[error("TTS failed: {0}")]
    Tts(String),
}

/// Percent-decodes `s` (invalid escapes are kept as written).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl PromptSource {
    /// Parses a prompt URL (already %-decoded).
    pub fn parse(url: &str) -> Result<PromptSource, PromptError> {
        let bad = |why| PromptError::BadUrl(url.to_owned(), why);
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return Ok(PromptSource::Http(url.to_owned()));
        }
        if let Some(text) = strip_scheme(url, "tts:") {
            if text.trim().is_empty() {
                return Err(bad("empty text"));
            }
            return Ok(PromptSource::Tts(text.to_owned()));
        }
        if let Some(spec) = strip_scheme(url, "tone:") {
            let (freqs, ms) = match spec.split_once('/') {
                Some((f, ms)) => (f, Some(ms.parse().map_err(|_| bad("bad tone duration"))?)),
                None => (spec, None),
            };
            if freqs.starts_with(|c: char| c.is_ascii_alphabetic()) {
                let (name, tone) = call_progress(freqs).ok_or_else(|| {
                    bad("unknown tone name (ringback, ringback-eu, ringback-uk, busy, busy-eu)")
                })?;
                let ms = ms.unwrap_or_else(|| cycle_ms(&tone));
                if ms > 600_000 {
                    return Err(bad("tone longer than 10 minutes"));
                }
                return Ok(PromptSource::CallProgress { name, ms });
            }
            let ms = ms.unwrap_or(1000);
            let mut fs = [0u32; 2];
            for (i, f) in freqs.split('+').enumerate() {
                let slot = fs
                    .get_mut(i)
                    .ok_or_else(|| bad("at most two frequencies"))?;
                *slot = f.parse().map_err(|_| bad("bad tone frequency"))?;
                if !(20..=3900).contains(slot) {
                    return Err(bad("tone frequency outside 20..3900 Hz"));
                }
            }
            if ms > 600_000 {
                return Err(bad("tone longer than 10 minutes"));
            }
            return Ok(PromptSource::Tone { freqs: fs, ms });
        }
        if let Some(d) = strip_scheme(url, "dtmf:") {
            if d.is_empty() || !d.chars().all(|c| ToneSpec::dtmf(c, 1, 1).is_some()) {
                return Err(bad("DTMF digits are 0-9 * # A-D"));
            }
            return Ok(PromptSource::Dtmf(d.to_owned()));
        }
        if let Some(ms) = strip_scheme(url, "silence:") {
            let ms: u32 = ms.parse().map_err(|_| bad("bad silence duration"))?;
            if ms > 600_000 {
                return Err(bad("silence longer than 10 minutes"));
            }
            return Ok(PromptSource::Silence(ms));
        }
        let path = strip_scheme(url, "file://")
            .or_else(|| strip_scheme(url, "file:"))
            .unwrap_or(url);
        let rel = Path::new(path.trim_start_matches('/'));
        if rel.as_os_str().is_empty() {
            return Err(bad("empty file name"));
        }
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(bad("file names may not contain '..'"));
        }
        if url.contains(':') && !lower.starts_with("file:") {
            return Err(bad("unknown URL scheme"));
        }
        Ok(PromptSource::File(rel.to_owned()))
    }
}

fn strip_scheme<'a>(url: &'a str, scheme: &str) -> Option<&'a str> {
    let head = url.get(..scheme.len())?;
    head.eq_ignore_ascii_case(scheme)
        .then(|| &url[scheme.len()..])
}

/// Settings of a [`PromptCache`].
#[derive(Debug, Clone)]
pub struct PromptSettings {
    /// Where `file:` prompts live.
    pub media_dir: PathBuf,
    /// Where TTS output is cached (created when needed).
    pub cache_dir: PathBuf,
    /// TTS command and arguments. `{voice}` and `{out}` (the WAV file to write) are replaced;
    /// `{text}` too when present, else the text goes to the program's standard input.
    pub tts_command: Vec<String>,
    pub tts_voice: String,
    /// Timeout of HTTP fetches and of the TTS program.
    pub timeout: Duration,
    /// Largest HTTP body accepted, bytes.
    pub max_fetch_bytes: usize,
    /// Clips kept in memory (HTTP and TTS); the cache is cleared when it is full.
    pub max_cached: usize,
    /// Certificates (PEM) trusted for `https://` besides the webpki roots (Mozilla's), e.g.
    /// a private CA or a test server's self-signed certificate.
    pub extra_ca_pem: Option<Vec<u8>>,
}

impl Default for PromptSettings {
    fn default() -> Self {
        PromptSettings {
            media_dir: PathBuf::from("media"),
            cache_dir: std::env::temp_dir().join("switchboard-tts"),
            tts_command: ["espeak-ng", "-v", "{voice}", "-w", "{out}", "--stdin"]
                .map(String::from)
                .to_vec(),
            tts_voice: "en".into(),
            timeout: Duration::from_secs(10),
            max_fetch_bytes: 32 << 20,
            max_cached: 1024,
            extra_ca_pem: None,
        }
    }
}

/// An HTTP request made with [`PromptCache::http`] (the VoiceXML browser's document fetches).
#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    /// `GET` or `POST`.
    pub post: bool,
    /// An `http://` or `https://` URL (no fragment).
    pub url: String,
    /// Request body and its content type (POST).
    pub body: Option<(String, Bytes)>,
}

/// The answer to an [`HttpRequest`], whatever its status.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// `Cache-Control`, when present.
    pub cache_control: Option<String>,
    pub body: Bytes,
}

/// Loads prompts, caching HTTP and TTS results.
pub struct PromptCache {
    settings: PromptSettings,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    cache: Mutex<HashMap<String, Audio>>,
}

/// The TLS settings of the HTTP client: the webpki roots and the certificates of `extra_pem`
/// (an error when it holds none or a bad one), TLS 1.2 and 1.3 with the ring provider.
fn tls_config(extra_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("bad PEM: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("bad CA certificate: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("no CERTIFICATE in the PEM".into());
        }
    }
    // ring rather than aws-lc-rs: it builds without cmake; rustls 0.23.48 deprecates it
    // only for lacking post-quantum key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn client(tls: rustls::ClientConfig) -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(https)
}

/// An error and its causes, `: `-separated (hyper's client error alone says only
/// `client error (Connect)`; the cause says e.g. that a certificate is not trusted).
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// FNV-1a: stable across runs, for TTS file names.
fn fnv64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.as_bytes().iter().chain(&[0xff]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl PromptCache {
    /// A cache whose client trusts the webpki roots and `extra_ca_pem`; fails when
    /// `extra_ca_pem` holds no usable certificate.
    pub fn try_new(settings: PromptSettings) -> Result<PromptCache, String> {
        let tls = tls_config(settings.extra_ca_pem.as_deref())?;
        Ok(PromptCache {
            settings,
            client: client(tls),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// [`PromptCache::try_new`]; when `extra_ca_pem` is unusable (logged) only the webpki
    /// roots are trusted.
    pub fn new(settings: PromptSettings) -> PromptCache {
        let tls = tls_config(settings.extra_ca_pem.as_deref()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "extra CA certificates ignored");
            // Without extra certificates nothing comes from outside: the ring provider
            // always has the cipher suites of TLS 1.2 and 1.3.
            tls_config(None).expect("the ring provider supports TLS 1.2 and 1.3")
        });
        PromptCache {
            settings,
            client: client(tls),
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &PromptSettings {
        &self.settings
    }

    fn cached(&self, key: &str) -> Option<Audio> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    fn remember(&self, key: String, audio: Audio) {
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.len() >= self.settings.max_cached {
            c.clear();
        }
        c.insert(key, audio);
    }

    /// Parses and loads a prompt URL; `voice` overrides the TTS voice (RFC 4240 `locale`).
    pub async fn load_url(&self, url: &str, voice: Option<&str>) -> Result<PlayItem, PromptError> {
        let src = PromptSource::parse(url)?;
        self.load(&src, voice).await
    }

    pub async fn load(
        &self,
        src: &PromptSource,
        voice: Option<&str>,
    ) -> Result<PlayItem, PromptError> {
        match src {
            PromptSource::Silence(ms) => Ok(PlayItem::Silence { ms: *ms }),
            PromptSource::Tone { freqs, ms } => Ok(PlayItem::Tone {
                spec: ToneSpec {
                    freqs: freqs.map(|f| f as f32),
                    levels_dbm0: [-10.0, -10.0],
                    cadence: [(*ms, 0), (0, 0), (0, 0), (0, 0)],
                    cadence_len: 1,
                    repeat: false,
                },
                ms: *ms,
            }),
            PromptSource::CallProgress { name, ms } => {
                let (_, spec) = call_progress(name)
                    .ok_or(PromptError::BadUrl((*name).to_owned(), "unknown tone name"))?;
                Ok(PlayItem::Tone { spec, ms: *ms })
            }
            PromptSource::Dtmf(digits) => {
                let mut samples = Vec::new();
                for c in digits.chars() {
                    if let Some(spec) = ToneSpec::dtmf(c, 100, 100) {
                        let mut g = switchboard_rtp::tone::ToneGenerator::new(spec, 8000);
                        let mut buf = [0i16; 1600];
                        let n = g.fill(&mut buf);
                        samples.extend_from_slice(&buf[..n]);
                    }
                }
                Ok(PlayItem::Audio(Audio::from_samples(samples)))
            }
            PromptSource::File(rel) => {
                let path = self.settings.media_dir.join(rel);
                let bytes = tokio::fs::read(&path)
                    .await
                    .map_err(|e| PromptError::Read(path.clone(), e))?;
                let audio = Audio::from_wav(&bytes)
                    .map_err(|e| PromptError::Wav(path.display().to_string(), e))?;
                Ok(PlayItem::Audio(audio))
            }
            PromptSource::Http(url) => {
                if let Some(a) = self.cached(url) {
                    return Ok(PlayItem::Audio(a));
                }
                let bytes = self.fetch(url).await?;
                let audio =
                    Audio::from_wav(&bytes).map_err(|e| PromptError::Wav(url.clone(), e))?;
                self.remember(url.clone(), audio.clone());
                Ok(PlayItem::Audio(audio))
            }
            PromptSource::Tts(text) => {
                let voice = voice.unwrap_or(&self.settings.tts_voice);
                let key = format!("tts\0{voice}\0{text}");
                if let Some(a) = self.cached(&key) {
                    return Ok(PlayItem::Audio(a));
                }
                let audio = self.speak(text, voice).await?;
                self.remember(key, audio.clone());
                Ok(PlayItem::Audio(audio))
            }
        }
    }

    async fn fetch(&self, url: &str) -> Result<Bytes, PromptError> {
        let resp = self
            .http(HttpRequest {
                url: url.to_owned(),
                ..HttpRequest::default()
            })
            .await?;
        if !(200..300).contains(&resp.status) {
            return Err(PromptError::Fetch(
                url.to_owned(),
                format!("HTTP status {}", resp.status),
            ));
        }
        Ok(resp.body)
    }

    /// Makes an HTTP/1.1 request with this cache's client, timeout and body size limit, and
    /// returns the response whatever its status.
    pub async fn http(&self, req: HttpRequest) -> Result<HttpResponse, PromptError> {
        let url = req.url.as_str();
        let err = |e: String| PromptError::Fetch(url.to_owned(), e);
        let uri: hyper::Uri = url.parse().map_err(|e| err(format!("{e}")))?;
        let mut builder = hyper::Request::builder()
            .method(if req.post {
                hyper::Method::POST
            } else {
                hyper::Method::GET
            })
            .uri(uri);
        let body = match req.body {
            Some((content_type, bytes)) => {
                builder = builder.header(hyper::header::CONTENT_TYPE, content_type);
                Full::new(bytes)
            }
            None => Full::new(Bytes::new()),
        };
        let request = builder.body(body).map_err(|e| err(format!("{e}")))?;
        let work = async {
            let resp = self
                .client
                .request(request)
                .await
                .map_err(|e| err(with_sources(&e)))?;
            let status = resp.status().as_u16();
            let cache_control = resp
                .headers()
                .get(hyper::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = Limited::new(resp.into_body(), self.settings.max_fetch_bytes);
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .map_err(|e| err(format!("{e}")))?;
            Ok(HttpResponse {
                status,
                cache_control,
                body,
            })
        };
        tokio::time::timeout(self.settings.timeout, work)
            .await
            .map_err(|_| err("timed out".into()))?
    }

    async fn speak(&self, text: &str, voice: &str) -> Result<Audio, PromptError> {
        if voice.is_empty()
            || !voice
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+'))
        {
            return Err(PromptError::Tts(format!("bad voice name {voice:?}")));
        }
        let dir = &self.settings.cache_dir;
        let out = dir.join(format!("tts-{:016x}.wav", fnv64(&[voice, text])));
        if let Ok(bytes) = tokio::fs::read(&out).await {
            if let Ok(a) = Audio::from_wav(&bytes) {
                return Ok(a);
            }
        }
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| PromptError::Tts(format!("cannot create {}: {e}", dir.display())))?;
        let tmp = out.with_extension(format!("{}.tmp", std::process::id()));
        let Some((program, args)) = self.settings.tts_command.split_first() else {
            return Err(PromptError::Tts("no TTS command configured".into()));
        };
        let mut text_in_args = false;
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if a.contains("{text}") {
                    text_in_args = true;
                }
                a.replace("{voice}", voice)
                    .replace("{out}", &tmp.to_string_lossy())
                    .replace("{text}", text)
            })
            .collect();
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| PromptError::Tts(format!("cannot run {program}: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            if !text_in_args {
                use tokio::io::AsyncWriteExt as _;
                let _ = stdin.write_all(text.as_bytes()).await;
            }
        }
        let output = tokio::time::timeout(self.settings.timeout, child.wait_with_output())
            .await
            .map_err(|_| PromptError::Tts(format!("{program} timed out")))?
            .map_err(|e| PromptError::Tts(format!("{program}: {e}")))?;
        if !output.status.success() {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(PromptError::Tts(format!(
                "{program} exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let bytes = tokio::fs::read(&tmp)
            .await
            .map_err(|e| PromptError::Tts(format!("no output from {program}: {e}")))?;
        let audio =
            Audio::from_wav(&bytes).map_err(|e| PromptError::Wav("TTS output".into(), e))?;
        let _ = tokio::fs::rename(&tmp, &out).await;
        Ok(audio)
    }
}

// Keep the cadence array length in sync with the tone module.
const _: () = assert!(MAX_CADENCE == 4);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prompt_urls() {
        assert_eq!(
            PromptSource::parse("http://x/a.wav").unwrap(),
            PromptSource::Http("http://x/a.wav".into())
        );
        assert_eq!(
            PromptSource::parse("file:///hello.wav").unwrap(),
            PromptSource::File("hello.wav".into())
        );
        assert_eq!(
            PromptSource::parse("sub/hello.wav").unwrap(),
            PromptSource::File("sub/hello.wav".into())
        );
        assert!(PromptSource::parse("../etc/passwd").is_err());
        assert!(PromptSource::parse("file:///a/../../b.wav").is_err());
        assert!(PromptSource::parse("ftp://x/y").is_err());
        assert_eq!(
            PromptSource::parse("HTTPS://x/y.wav").unwrap(),
            PromptSource::Http("HTTPS://x/y.wav".into())
        );
        assert_eq!(
            PromptSource::parse("tone:440+480/2000").unwrap(),
            PromptSource::Tone {
                freqs: [440, 480],
                ms: 2000
            }
        );
        assert_eq!(
            PromptSource::parse("tone:1000").unwrap(),
            PromptSource::Tone {
                freqs: [1000, 0],
                ms: 1000
            }
        );
        assert_eq!(
            PromptSource::parse("tone:ringback").unwrap(),
            PromptSource::CallProgress {
                name: "ringback",
                ms: 6000
            }
        );
        assert_eq!(
            PromptSource::parse("tone:Busy-EU/2500").unwrap(),
            PromptSource::CallProgress {
                name: "busy-eu",
                ms: 2500
            }
        );
        assert_eq!(
            PromptSource::parse("tone:ringback-uk").unwrap(),
            PromptSource::CallProgress {
                name: "ringback-uk",
                ms: 3000
            }
        );
        assert!(PromptSource::parse("tone:dialtone").is_err());
        assert!(PromptSource::parse("tone:busy/x").is_err());
        assert!(PromptSource::parse("tone:1+2+3").is_err());
        assert!(PromptSource::parse("tone:5000").is_err());
        assert_eq!(
            PromptSource::parse("silence:500").unwrap(),
            PromptSource::Silence(500)
        );
        assert_eq!(
            PromptSource::parse("dtmf:12#").unwrap(),
            PromptSource::Dtmf("12#".into())
        );
        assert!(PromptSource::parse("dtmf:x").is_err());
        assert_eq!(
            PromptSource::parse("TTS:Hello world").unwrap(),
            PromptSource::Tts("Hello world".into())
        );
        assert_eq!(percent_decode("Hello%20world%2"), "Hello world%2");
        assert_eq!(percent_decode("a%3ab"), "a:b");
    }

    #[tokio::test]
    async fn loads_files_tones_and_reports_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.wav"),
            crate::audio::write_wav(&[5; 800], 8000),
        )
        .unwrap();
        let cache = PromptCache::new(PromptSettings {
            media_dir: dir.path().to_owned(),
            cache_dir: dir.path().join("tts"),
            timeout: Duration::from_secs(2),
            ..PromptSettings::default()
        });
        match cache.load_url("a.wav", None).await.unwrap() {
            PlayItem::Audio(a) => assert_eq!(a.len(), 800),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            cache.load_url("missing.wav", None).await,
            Err(PromptError::Read(..))
        ));
        match cache.load_url("dtmf:12", None).await.unwrap() {
            PlayItem::Audio(a) => assert_eq!(a.len(), 3200),
            other => panic!("{other:?}"),
        }
        // Busy: 480+620 Hz, 0.5 s on, 0.5 s off, for the 2 s asked.
        let busy = cache.load_url("tone:busy/2000", None).await.unwrap();
        let mut player = crate::player::Player::new(crate::player::Playlist::once(vec![busy]));
        let mut on = Vec::new();
        while !player.is_done() {
            let mut frame = [0i16; crate::audio::FRAME];
            player.fill(&mut frame);
            on.push(frame.iter().any(|&x| x.abs() > 1000));
            assert!(on.len() <= 100);
        }
        let expect: Vec<bool> = (0..100).map(|i| (i / 25) % 2 == 0).collect();
        assert_eq!(on, expect);
        // Nothing listens on port 9 of loopback (discard is never enabled in test hosts).
        assert!(matches!(
            cache.load_url("http://127.0.0.1:9/x.wav", None).await,
            Err(PromptError::Fetch(..))
        ));
    }

    /// A loopback HTTPS server with a self-signed certificate for 127.0.0.1 (made by rcgen),
    /// answering every request with a WAV; returns its port and the certificate's PEM.
    async fn tls_server() -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that does not trust the certificate ends the handshake.
                    let Ok(mut s) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 2048];
                    let _ = s.read(&mut buf).await;
                    let wav = crate::audio::write_wav(&[7; 800], 8000);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nCache-Control: max-age=5\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        wav.len()
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&wav).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        (port, ck.cert.pem())
    }

    #[tokio::test]
    async fn https_with_an_extra_trusted_certificate() {
        let (port, pem) = tls_server().await;
        let url = format!("https://127.0.0.1:{port}/p.wav");
        let settings = PromptSettings {
            timeout: Duration::from_secs(5),
            ..PromptSettings::default()
        };
        // Trusted through extra_ca_pem: fetched over TLS.
        let trusting = PromptCache::try_new(PromptSettings {
            extra_ca_pem: Some(pem.clone().into_bytes()),
            ..settings.clone()
        })
        .unwrap();
        match trusting.load_url(&url, None).await.unwrap() {
            PlayItem::Audio(a) => assert_eq!(a.len(), 800),
            other => panic!("{other:?}"),
        }
        let resp = trusting
            .http(HttpRequest {
                url: url.clone(),
                ..HttpRequest::default()
            })
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.cache_control.as_deref(), Some("max-age=5"));
        // The webpki roots alone do not trust a self-signed certificate.
        let plain = PromptCache::try_new(settings.clone()).unwrap();
        match plain.load_url(&url, None).await {
            Err(PromptError::Fetch(u, why)) => {
                assert_eq!(u, url);
                assert!(why.to_ascii_lowercase().contains("certificate"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // Unusable extra certificates are refused by try_new; new trusts the roots only.
        for bad in [
            &b""[..],
            b"not a pem",
            b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
        ] {
            let s = PromptSettings {
                extra_ca_pem: Some(bad.to_vec()),
                ..settings.clone()
            };
            assert!(PromptCache::try_new(s.clone()).is_err(), "{bad:?}");
            let fallback = PromptCache::new(s);
            assert!(fallback.load_url(&url, None).await.is_err());
        }
    }

    #[tokio::test]
    async fn fetches_over_http_once() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let wav = crate::audio::write_wav(&[9; 1600], 8000);
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                wav.len()
            );
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(&wav).await.unwrap();
        });
        let cache = PromptCache::new(PromptSettings::default());
        let url = format!("http://{addr}/p.wav");
        for _ in 0..2 {
            // The second load is served from the cache (the server accepts only once).
            match cache.load_url(&url, None).await.unwrap() {
                PlayItem::Audio(a) => assert_eq!(a.len(), 1600),
                other => panic!("{other:?}"),
            }
        }
        server.await.unwrap();
    }
}
