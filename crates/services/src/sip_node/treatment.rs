//! Treatments as the media server understands them, without I/O: a contract [`Treatment`]
//! becomes the Request-URI of the leg to `mcp` ([`media_service`]), and the body of the BYE
//! that ends a VoiceXML dialog becomes the treatment's results ([`exit_results`]).
//!
//! | treatment | Request-URI (`sip_node.mcp` the host) |
//! |---|---|
//! | `play_application` | `sip:dialog@MCP;voicexml=URL` (RFC 5552), `params` appended to the URL's query |
//! | `music` | `sip:annc@MCP;play=URL;repeat=forever` (RFC 4240) |
//! | `play_announcement` | `sip:annc@MCP;play=URL;repeat=N` |
//! | `collect_digits` | `sip:dialog@MCP;voicexml=builtin:collect-digits?prompt=..&max_digits=..&timeout_s=..` (a document the media server makes itself, [`crate::mcp::builtin`]; its exit namelist is `digits`) |
//!
//! URLs are %-escaped into the parameter value (the media server %-decodes it).

use super::model::MediaService;
use crate::mcp::builtin;
use serde_json::Value;
use switchboard_events::requests::Treatment;
use switchboard_events::UserData;

/// Longest treatment URL accepted (with its parameters).
const MAX_URL: usize = 2048;
/// Most repetitions of an announcement (the media server's own limit).
const MAX_REPEAT: u32 = 10_000;

/// The media-server service for `t`, or why it cannot be played.
pub fn media_service(t: &Treatment) -> Result<MediaService, String> {
    let (user, params) = match t {
        Treatment::PlayApplication { url, params } => {
            let url = with_query(url_of(url)?, params);
            if url.len() > MAX_URL {
                return Err(format!("the URL with its params exceeds {MAX_URL} bytes"));
            }
            ("dialog", format!(";voicexml={}", escape(&url)))
        }
        Treatment::Music { url } => (
            "annc",
            format!(";play={};repeat=forever", escape(url_of(url)?)),
        ),
        Treatment::PlayAnnouncement { url, repeat } => {
            if !(1..=MAX_REPEAT).contains(repeat) {
                return Err(format!("\"repeat\" must be 1 to {MAX_REPEAT}"));
            }
            (
                "annc",
                format!(";play={};repeat={repeat}", escape(url_of(url)?)),
            )
        }
        Treatment::CollectDigits {
            prompt,
            max_digits,
            timeout_s,
        } => {
            if !(1..=builtin::MAX_DIGITS).contains(max_digits) {
                return Err(format!(
                    "\"max_digits\" must be 1 to {}",
                    builtin::MAX_DIGITS
                ));
            }
            if !(1..=builtin::MAX_TIMEOUT_S).contains(timeout_s) {
                return Err(format!(
                    "\"timeout_s\" must be 1 to {}",
                    builtin::MAX_TIMEOUT_S
                ));
            }
            let url = format!(
                "{}?prompt={}&max_digits={max_digits}&timeout_s={timeout_s}",
                builtin::COLLECT_DIGITS,
                escape(prompt.trim())
            );
            ("dialog", format!(";voicexml={}", escape(&url)))
        }
    };
    Ok(MediaService {
        user: user.into(),
        params,
    })
}

fn url_of(url: &str) -> Result<&str, String> {
    let url = url.trim();
    if url.is_empty() {
        return Err("\"url\" is required".into());
    }
    if url.len() > MAX_URL {
        return Err(format!("\"url\" exceeds {MAX_URL} bytes"));
    }
    Ok(url)
}

/// `url` with `params` appended to its query (`application/x-www-form-urlencoded`): strings
/// as they are, other values as JSON.
fn with_query(url: &str, params: &UserData) -> String {
    if params.is_empty() {
        return url.to_string();
    }
    let pairs: Vec<String> = params
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!("{}={}", escape(k), escape(&v))
        })
        .collect();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{}", pairs.join("&"))
}

/// %-escapes every byte but letters, digits and `-._~/:` (safe in a SIP URI parameter value
/// and in a URL query).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The results of a VoiceXML dialog from the body of its BYE: a `multipart/form-data` body
/// (RFC 7578, what the media server's `bye_body` writes for an `<exit namelist>`) gives one
/// entry per part, named after it, its value the part's text. Anything else (no body, another
/// type, a broken body) gives no results.
pub fn exit_results(content_type: &str, body: &[u8]) -> UserData {
    let mut out = UserData::new();
    let Some(boundary) = boundary_of(content_type) else {
        return out;
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return out;
    };
    let delimiter = format!("--{boundary}");
    for part in text.split(delimiter.as_str()).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let part = part.strip_prefix("\r\n").unwrap_or(part);
        let Some((head, value)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let Some(name) = head.lines().find_map(disposition_name) else {
            continue;
        };
        let value = value.strip_suffix("\r\n").unwrap_or(value);
        out.insert(name, Value::String(value.to_string()));
    }
    out
}

/// The boundary of a `multipart/form-data` content type.
fn boundary_of(content_type: &str) -> Option<&str> {
    let mut parts = content_type.split(';');
    let mime = parts.next()?.trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        let v = v.trim().trim_matches('"');
        (k.trim().eq_ignore_ascii_case("boundary") && !v.is_empty()).then_some(v)
    })
}

/// The `name` of a `Content-Disposition: form-data; name="x"` header line.
fn disposition_name(line: &str) -> Option<String> {
    let (header, value) = line.split_once(':')?;
    if !header.trim().eq_ignore_ascii_case("content-disposition") {
        return None;
    }
    value.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("name")).then(|| v.trim().trim_matches('"').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::rfc5552::bye_body;
    use serde_json::json;

    fn service(t: Treatment) -> String {
        let s = media_service(&t).expect("a service");
        format!("sip:{}@mcp{}", s.user, s.params)
    }

    #[test]
    fn request_uris_by_treatment() {
        let mut params = UserData::new();
        params.insert("lang".into(), json!("en us"));
        params.insert("tries".into(), json!(3));
        assert_eq!(
            service(Treatment::PlayApplication {
                url: "http://127.0.0.1:8080/menu.vxml?x=1".into(),
                params,
            }),
            "sip:dialog@mcp;voicexml=http://127.0.0.1:8080/menu.vxml%3Fx%3D1%26lang%3Den%2520us%26tries%3D3"
        );
        assert_eq!(
            service(Treatment::PlayApplication {
                url: "http://as/a.vxml".into(),
                params: UserData::new(),
            }),
            "sip:dialog@mcp;voicexml=http://as/a.vxml"
        );
        assert_eq!(
            service(Treatment::Music {
                url: "file:/srv/moh.wav".into()
            }),
            "sip:annc@mcp;play=file:/srv/moh.wav;repeat=forever"
        );
        assert_eq!(
            service(Treatment::PlayAnnouncement {
                url: "tts:Please hold; thanks".into(),
                repeat: 2
            }),
            "sip:annc@mcp;play=tts:Please%20hold%3B%20thanks;repeat=2"
        );
    }

    #[test]
    fn the_media_server_reads_back_what_we_wrote() {
        use crate::mcp::service::{parse, Service};
        use switchboard_sip::Uri;
        let mut params = UserData::new();
        params.insert("who".into(), json!("a&b=c"));
        let uri = service(Treatment::PlayApplication {
            url: "http://127.0.0.1:1/m.vxml".into(),
            params,
        });
        let parsed = parse(&Uri::parse(&uri).expect("uri")).expect("service");
        assert_eq!(
            parsed,
            Service::Dialog {
                voicexml: "http://127.0.0.1:1/m.vxml?who=a%26b%3Dc".into()
            }
        );
        let uri = service(Treatment::Music {
            url: "tts:hold on".into(),
        });
        match parse(&Uri::parse(&uri).expect("uri")).expect("service") {
            Service::Announcement(a) => {
                assert_eq!((a.play.as_str(), a.repeat), ("tts:hold on", None))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn collect_digits_is_the_media_servers_built_in_document() {
        use crate::mcp::service::{parse, Service};
        use switchboard_sip::Uri;
        let uri = service(Treatment::CollectDigits {
            prompt: "tone:440/300".into(),
            max_digits: 4,
            timeout_s: 3,
        });
        let Ok(Service::Dialog { voicexml }) = parse(&Uri::parse(&uri).expect("uri")) else {
            panic!("{uri}")
        };
        assert_eq!(
            voicexml,
            "builtin:collect-digits?prompt=tone:440/300&max_digits=4&timeout_s=3"
        );
        let doc = builtin::document(&voicexml)
            .expect("built in")
            .expect("a document");
        assert!(doc.contains("maxlength=4"), "{doc}");
        assert!(doc.contains("<audio src=\"tone:440/300\"/>"), "{doc}");
    }

    #[test]
    fn bad_treatments_are_refused() {
        let err = |t| media_service(&t).unwrap_err();
        assert!(err(Treatment::Music { url: " ".into() }).contains("url"));
        assert!(err(Treatment::PlayAnnouncement {
            url: "a.wav".into(),
            repeat: 0
        })
        .contains("repeat"));
        assert!(err(Treatment::Music {
            url: "x".repeat(MAX_URL + 1)
        })
        .contains("exceeds"));
        assert!(err(Treatment::CollectDigits {
            prompt: "tts:hi".into(),
            max_digits: 0,
            timeout_s: 5
        })
        .contains("max_digits"));
        assert!(err(Treatment::CollectDigits {
            prompt: "tts:hi".into(),
            max_digits: 4,
            timeout_s: 61
        })
        .contains("timeout_s"));
    }

    #[test]
    fn exit_namelists_from_bye_bodies() {
        let (ct, body) = bye_body(&json!({"choice": "2", "n": 3})).expect("body");
        let r = exit_results(&ct, &body);
        assert_eq!(
            serde_json::Value::Object(r),
            json!({"choice": "2", "n": "3"})
        );
        let (ct, body) = bye_body(&json!({"x": "--switchboard-vxml-exit--"})).expect("body");
        assert_eq!(
            serde_json::Value::Object(exit_results(&ct, &body)),
            json!({"x": "--switchboard-vxml-exit--"})
        );
        let (ct, body) = bye_body(&json!("done")).expect("body");
        assert_eq!(
            serde_json::Value::Object(exit_results(&ct, &body)),
            json!({"expr": "done"})
        );
        // A quoted boundary and a multi-line value.
        let body = "--b1\r\ncontent-disposition: form-data; name=\"note\"\r\n\r\nline 1\r\nline 2\r\n--b1--\r\n";
        assert_eq!(
            serde_json::Value::Object(exit_results(
                "Multipart/Form-Data; boundary=\"b1\"",
                body.as_bytes()
            )),
            json!({"note": "line 1\r\nline 2"})
        );
    }

    #[test]
    fn anything_else_gives_no_results() {
        assert!(exit_results("", b"").is_empty());
        assert!(exit_results("application/sdp", b"v=0").is_empty());
        assert!(exit_results("multipart/form-data", b"--x\r\n").is_empty());
        assert!(exit_results("multipart/form-data; boundary=x", &[0xff, 0xfe]).is_empty());
        assert!(
            exit_results("multipart/form-data; boundary=x", b"--x\r\nno headers--x--").is_empty()
        );
        assert!(exit_results(
            "multipart/form-data; boundary=x",
            b"--x\r\nX-Other: 1\r\n\r\nv\r\n--x--\r\n"
        )
        .is_empty());
    }
}
