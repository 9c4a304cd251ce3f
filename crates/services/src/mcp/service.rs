//! What a call to the media server asks for, read from its Request-URI.
//!
//! * `sip:annc@host;play=<url>[;repeat=N][;delay=ms][;duration=ms][;locale=xx]` (RFC 4240):
//!   play the prompt, then hang up. `repeat=forever` plays until the caller hangs up.
//! * `sip:conf=<id>@host` (RFC 4240 conference URI convention): join conference `<id>`.
//! * `sip:record@host[;max=<s>][;beep][;dtmfterm][;silence=<ms>]`: record the caller's audio
//!   until BYE or `max` seconds (with a beep first, ended by a DTMF digit, or by `silence` ms
//!   of silence); a recording that ends by itself hangs the call up.
//! * `sip:dialog@host;voicexml=<url>` (RFC 5552): hand the call to the VoiceXML dialog runner.

use switchboard_media::prompt::percent_decode;
use switchboard_sip::{SipUri, Uri};

/// An RFC 4240 announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// Prompt URL, %-decoded.
    pub play: String,
    /// How many times; `None` repeats until the caller hangs up.
    pub repeat: Option<u32>,
    /// Silence between repetitions, ms.
    pub delay_ms: u32,
    /// Upper bound of the whole play, ms.
    pub duration_ms: Option<u32>,
    /// TTS voice / language.
    pub locale: Option<String>,
}

/// Options of `sip:record@`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordOptions {
    pub max_s: Option<u32>,
    pub beep: bool,
    pub dtmf_term: bool,
    pub final_silence_ms: Option<u32>,
}

/// The service a call asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    Announcement(Announcement),
    Conference(String),
    Record(RecordOptions),
    Dialog {
        voicexml: String,
    },
    /// Not asked for by a Request-URI: a call mcp places itself (the far leg of a VoiceXML
    /// bridge or consultation transfer), which runs no service of its own.
    Outgoing,
}

impl Service {
    /// A short name for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Service::Announcement(_) => "annc",
            Service::Conference(_) => "conf",
            Service::Record(_) => "record",
            Service::Dialog { .. } => "dialog",
            Service::Outgoing => "outgoing",
        }
    }
}

/// Why a Request-URI names no service we offer; `status` is the SIP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    pub status: u16,
    pub reason: String,
}

fn err(status: u16, reason: impl Into<String>) -> ServiceError {
    ServiceError {
        status,
        reason: reason.into(),
    }
}

/// Longest RFC 4240 repeat count accepted.
const MAX_REPEAT: u32 = 10_000;

/// Conference ids: what a REST path segment and a log field can carry safely.
pub fn valid_conference_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn number(u: &SipUri<'_>, name: &str, max: u32) -> Result<Option<u32>, ServiceError> {
    match u.param(name) {
        None => Ok(None),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if n <= max => Ok(Some(n)),
            _ => Err(err(400, format!("bad {name} parameter {v:?}"))),
        },
    }
}

/// Reads the service from a Request-URI.
pub fn parse(uri: &Uri<'_>) -> Result<Service, ServiceError> {
    let Some(u) = uri.as_sip() else {
        return Err(err(416, "the media server takes sip: URIs"));
    };
    let user = u.user_unescaped().unwrap_or_default();
    if let Some(id) = user.strip_prefix("conf=") {
        if !valid_conference_id(id) {
            return Err(err(
                404,
                "conference ids are 1 to 64 letters, digits, '-', '_' or '.'",
            ));
        }
        return Ok(Service::Conference(id.to_owned()));
    }
    match user.as_str() {
        "annc" => {
            let play = u
                .param("play")
                .map(percent_decode)
                .filter(|p| !p.is_empty())
                .ok_or_else(|| err(400, "annc needs a play= parameter (RFC 4240)"))?;
            let repeat = match u.param("repeat") {
                None => Some(1),
                Some(v) if v.eq_ignore_ascii_case("forever") => None,
                Some(_) => match number(u, "repeat", MAX_REPEAT)? {
                    Some(0) => return Err(err(400, "repeat must be at least 1")),
                    r => r,
                },
            };
            Ok(Service::Announcement(Announcement {
                play,
                repeat,
                delay_ms: number(u, "delay", 600_000)?.unwrap_or(0),
                duration_ms: number(u, "duration", 3_600_000)?,
                locale: u.param("locale").map(percent_decode),
            }))
        }
        "record" => Ok(Service::Record(RecordOptions {
            max_s: number(u, "max", 86_400)?,
            beep: u.params.has("beep"),
            dtmf_term: u.params.has("dtmfterm"),
            final_silence_ms: number(u, "silence", 600_000)?,
        })),
        "dialog" => {
            let voicexml = u
                .param("voicexml")
                .map(percent_decode)
                .filter(|p| !p.is_empty())
                .ok_or_else(|| err(400, "dialog needs a voicexml= parameter (RFC 5552)"))?;
            Ok(Service::Dialog { voicexml })
        }
        "" => Err(err(404, "no service named in the Request-URI")),
        other => Err(err(404, format!("no media service named {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Service, ServiceError> {
        parse(&Uri::parse(s).expect("uri"))
    }

    #[test]
    fn announcements() {
        assert_eq!(
            p("sip:annc@mcp;play=http://127.0.0.1:8000/a.wav;repeat=3;delay=500").unwrap(),
            Service::Announcement(Announcement {
                play: "http://127.0.0.1:8000/a.wav".into(),
                repeat: Some(3),
                delay_ms: 500,
                duration_ms: None,
                locale: None,
            })
        );
        match p("sip:annc@mcp;play=tts:Hello%20there;repeat=forever;locale=fr").unwrap() {
            Service::Announcement(a) => {
                assert_eq!(a.play, "tts:Hello there");
                assert_eq!(a.repeat, None);
                assert_eq!(a.locale.as_deref(), Some("fr"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p("sip:annc@mcp").unwrap_err().status, 400);
        assert_eq!(
            p("sip:annc@mcp;play=x.wav;repeat=0").unwrap_err().status,
            400
        );
        assert_eq!(
            p("sip:annc@mcp;play=x.wav;repeat=-1").unwrap_err().status,
            400
        );
        assert_eq!(
            p("sip:annc@mcp;play=x.wav;repeat=99999999999")
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn conferences_records_dialogs_and_unknowns() {
        assert_eq!(
            p("sip:conf=room-1@127.0.0.1:5080").unwrap(),
            Service::Conference("room-1".into())
        );
        assert_eq!(p("sip:conf=@mcp").unwrap_err().status, 404);
        assert_eq!(p("sip:conf=a%2Fb@mcp").unwrap_err().status, 404);
        assert_eq!(
            p("sip:record@mcp;max=30").unwrap(),
            Service::Record(RecordOptions {
                max_s: Some(30),
                ..RecordOptions::default()
            })
        );
        assert_eq!(
            p("sip:record@mcp;beep;dtmfterm;silence=3000").unwrap(),
            Service::Record(RecordOptions {
                max_s: None,
                beep: true,
                dtmf_term: true,
                final_silence_ms: Some(3000),
            })
        );
        assert_eq!(p("sip:record@mcp;silence=x").unwrap_err().status, 400);
        assert_eq!(
            p("sip:dialog@mcp;voicexml=http://as/app.vxml").unwrap(),
            Service::Dialog {
                voicexml: "http://as/app.vxml".into()
            }
        );
        assert_eq!(p("sip:dialog@mcp").unwrap_err().status, 400);
        assert_eq!(p("sip:bob@mcp").unwrap_err().status, 404);
        assert_eq!(p("sip:mcp").unwrap_err().status, 404);
        assert_eq!(p("tel:+123").unwrap_err().status, 416);
    }
}
