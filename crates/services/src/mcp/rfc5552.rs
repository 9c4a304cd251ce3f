//! RFC 5552 (SIP Interface to VoiceXML Media Services), the parts that are pure data: the
//! `session.connection` variables a dialog sees, read from the initial INVITE, and the body of
//! the BYE that carries an `<exit>`'s (or `<disconnect>`'s) namelist back to the caller.

use serde_json::{json, Map, Value};
use switchboard_media::prompt::percent_decode;
use switchboard_sip::{Message, Uri};

/// Longest header value copied into `session.connection.protocol.sip.headers`.
const MAX_HEADER_VALUE: usize = 4096;

/// The `session` variables of a dialog started by `invite` (RFC 5552 §2.3):
///
/// * `connection.local.uri` (the To URI), `connection.remote.uri` (the From URI),
///   `connection.originator` (`"remote"`), `connection.protocol.name` (`"sip"`),
///   `connection.protocol.version` (`"2.0"`);
/// * `connection.protocol.sip.requesturi`: the Request-URI's parameters, names lower-cased and
///   values %-decoded (`voicexml`, `aai`, ...);
/// * `connection.protocol.sip.headers`: every header of the INVITE under its full lower-case
///   name, repeated headers joined with `", "`;
/// * `connection.aai`: the Request-URI's `aai` parameter when present;
/// * `telephone.ani` / `telephone.dnis`: the user parts of the From and To URIs (the names
///   PSTN-minded applications use for the caller's and the called number).
pub fn session_variables(invite: &Message) -> Value {
    let uri_of = |r: Result<switchboard_sip::NameAddr<'_>, _>| {
        r.ok().map(|n| {
            let user = n
                .uri
                .as_sip()
                .and_then(|u| u.user_unescaped())
                .unwrap_or_default();
            (n.uri.to_string(), user)
        })
    };
    let (remote, ani) = uri_of(invite.from()).unwrap_or_default();
    let (local, dnis) = uri_of(invite.to()).unwrap_or_default();

    let mut requesturi = Map::new();
    if let Ok(Uri::Sip(u)) = invite.request_uri() {
        for (name, value) in u.params.iter() {
            requesturi.insert(
                name.to_ascii_lowercase(),
                Value::String(value.map(percent_decode).unwrap_or_default()),
            );
        }
    }
    let aai = requesturi.get("aai").cloned();

    let mut headers = Map::new();
    for h in invite.fields() {
        let name = match h.name.as_str() {
            Some(canon) => canon.to_ascii_lowercase(),
            None => invite.name_of(h).to_ascii_lowercase(),
        };
        let Ok(value) = invite.value(h) else { continue };
        let value: String = value.chars().take(MAX_HEADER_VALUE).collect();
        match headers.get_mut(&name) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&value);
            }
            _ => {
                headers.insert(name, Value::String(value));
            }
        }
    }

    let mut connection = json!({
        "local": { "uri": local },
        "remote": { "uri": remote },
        "originator": "remote",
        "protocol": {
            "name": "sip",
            "version": "2.0",
            "sip": { "requesturi": requesturi, "headers": headers },
        },
    });
    if let Some(aai) = aai {
        connection["aai"] = aai;
    }
    json!({
        "connection": connection,
        "telephone": { "ani": ani, "dnis": dnis },
    })
}

/// `session.connection.protocol.sip.media`: the call's one audio stream as negotiated from
/// the offer, `[{"type": "audio", "direction", "format"}]`; `direction` is the SDP direction
/// from the media server's side (`sendrecv`, `sendonly`, `recvonly`, `inactive`), `format`
/// the media type of the codec (`audio/PCMU`, `audio/PCMA`, `audio/G722`, `audio/L16`), with
/// `audio/telephone-event` when DTMF events were negotiated.
pub fn media_variable(
    codec: switchboard_media::Encoding,
    send: bool,
    receive: bool,
    telephone_event: bool,
) -> Value {
    use switchboard_media::Encoding;
    let format = match codec {
        Encoding::Pcmu => "audio/PCMU",
        Encoding::Pcma => "audio/PCMA",
        Encoding::G722 => "audio/G722",
        Encoding::L16 => "audio/L16",
    };
    let direction = match (send, receive) {
        (true, true) => "sendrecv",
        (true, false) => "sendonly",
        (false, true) => "recvonly",
        (false, false) => "inactive",
    };
    let mut formats = vec![format];
    if telephone_event {
        formats.push("audio/telephone-event");
    }
    json!([{ "type": "audio", "direction": direction, "format": formats.join(" ") }])
}

/// How the first document is fetched, from the Request-URI parameters of RFC 5552 §2.1:
/// `method` (`get` or `post`), `postbody` (the POST's `application/x-www-form-urlencoded`
/// body), `maxage` and `maxstale` (seconds: how old a cached copy may be, how long past its
/// expiry it may still be used).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InitialFetch {
    pub post: bool,
    pub params: Vec<(String, String)>,
    pub maxage: Option<u64>,
    pub maxstale: Option<u64>,
}

/// Reads [`InitialFetch`] from the `session` variables of [`session_variables`]. Values that
/// do not parse are ignored (a GET with the server's caching).
pub fn initial_fetch(session_vars: &Value) -> InitialFetch {
    let p = &session_vars["connection"]["protocol"]["sip"]["requesturi"];
    let text = |k: &str| p[k].as_str().map(str::trim);
    let post = text("method").is_some_and(|m| m.eq_ignore_ascii_case("post"));
    let params = match (post, text("postbody")) {
        (true, Some(body)) => body
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                let dec = |s: &str| percent_decode(&s.replace('+', " "));
                (dec(k), dec(v))
            })
            .collect(),
        _ => Vec::new(),
    };
    InitialFetch {
        post,
        params,
        maxage: text("maxage").and_then(|v| v.parse().ok()),
        maxstale: text("maxstale").and_then(|v| v.parse().ok()),
    }
}

/// The boundary of BYE bodies (not found in values: they are checked).
const BOUNDARY: &str = "switchboard-vxml-exit";

/// The body of the BYE that ends a dialog, for the values of its `<exit>` or `<disconnect>`:
/// `None` when there is nothing to report (no namelist, no expr). The values are encoded as
/// `multipart/form-data` (RFC 7578), the encoding `<submit>` uses for namelists: one part per
/// variable of a namelist (an object), named after it; an `expr` value (anything that is not
/// an object) is one part named `expr`. Strings are sent as they are, other values as JSON.
pub fn bye_body(values: &Value) -> Option<(String, Vec<u8>)> {
    let parts: Vec<(String, String)> = match values {
        Value::Null => return None,
        Value::Object(m) if m.is_empty() => return None,
        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), text_of(v))).collect(),
        other => vec![("expr".to_owned(), text_of(other))],
    };
    let mut boundary = BOUNDARY.to_owned();
    while parts
        .iter()
        .any(|(k, v)| k.contains(&boundary) || v.contains(&boundary))
    {
        boundary.push('x');
    }
    let mut body = String::new();
    for (name, value) in &parts {
        // A name is an ECMAScript variable name; quotes and line breaks cannot occur, but
        // are escaped anyway so that nothing from the application can break the framing.
        let name = name.replace(['"', '\r', '\n'], "_");
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    Some((
        format!("multipart/form-data; boundary={boundary}"),
        body.into_bytes(),
    ))
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn invite() -> Message {
        let text = "INVITE sip:dialog@127.0.0.1:5080;voicexml=http://as/app.vxml%3Fx%3D1;aai=case%3D42 SIP/2.0\r\n\
            Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK1\r\n\
            f: \"Alice\" <sip:+15551234@carrier.example>;tag=a1\r\n\
            To: <sip:5000@switchboard.example>\r\n\
            Call-ID: c1@x\r\nCSeq: 1 INVITE\r\n\
            X-Case: 1\r\nX-Case: 2\r\n\
            Contact: <sip:alice@127.0.0.1:5062>\r\nContent-Length: 0\r\n\r\n";
        Message::parse(Bytes::from(text)).expect("invite")
    }

    #[test]
    fn session_variables_of_an_invite() {
        let s = session_variables(&invite());
        let c = &s["connection"];
        assert_eq!(c["remote"]["uri"], "sip:+15551234@carrier.example");
        assert_eq!(c["local"]["uri"], "sip:5000@switchboard.example");
        assert_eq!(c["protocol"]["name"], "sip");
        assert_eq!(c["protocol"]["version"], "2.0");
        let sip = &c["protocol"]["sip"];
        assert_eq!(sip["requesturi"]["voicexml"], "http://as/app.vxml?x=1");
        assert_eq!(sip["requesturi"]["aai"], "case=42");
        assert_eq!(c["aai"], "case=42");
        assert_eq!(sip["headers"]["call-id"], "c1@x");
        assert_eq!(
            sip["headers"]["from"], "\"Alice\" <sip:+15551234@carrier.example>;tag=a1",
            "compact names are given in full"
        );
        assert_eq!(sip["headers"]["x-case"], "1, 2");
        assert_eq!(s["telephone"]["ani"], "+15551234");
        assert_eq!(s["telephone"]["dnis"], "5000");
    }

    #[test]
    fn initial_fetch_from_the_request_uri() {
        let s = session_variables(&invite());
        assert_eq!(initial_fetch(&s), InitialFetch::default());
        let vars = |params: &str| {
            let text = format!(
                "INVITE sip:dialog@mcp;voicexml=http://as/a.vxml{params} SIP/2.0\r\n\
                 Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n\
                 To: <sip:dialog@mcp>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
            );
            session_variables(&Message::parse(Bytes::from(text)).expect("invite"))
        };
        assert_eq!(
            initial_fetch(&vars(
                ";method=POST;postbody=case%3D42%26who%3Da%2Bb%2520c;maxage=0;maxstale=30"
            )),
            InitialFetch {
                post: true,
                params: vec![("case".into(), "42".into()), ("who".into(), "a b c".into())],
                maxage: Some(0),
                maxstale: Some(30),
            }
        );
        // A postbody without method=post is not sent; bad numbers are ignored.
        assert_eq!(
            initial_fetch(&vars(";postbody=a%3D1;maxage=soon")),
            InitialFetch::default()
        );
    }

    #[test]
    fn media_of_a_call() {
        assert_eq!(
            media_variable(switchboard_media::Encoding::Pcma, true, true, true),
            json!([{"type": "audio", "direction": "sendrecv", "format": "audio/PCMA audio/telephone-event"}])
        );
        assert_eq!(
            media_variable(switchboard_media::Encoding::G722, false, true, false)[0]["direction"],
            "recvonly"
        );
    }

    #[test]
    fn bye_bodies() {
        assert_eq!(bye_body(&Value::Null), None);
        assert_eq!(bye_body(&json!({})), None);
        let (ct, body) = bye_body(&json!({"pin": "1234", "n": 3})).expect("body");
        assert_eq!(ct, "multipart/form-data; boundary=switchboard-vxml-exit");
        let body = String::from_utf8(body).unwrap();
        assert!(
            body.contains("Content-Disposition: form-data; name=\"pin\"\r\n\r\n1234\r\n"),
            "{body}"
        );
        assert!(body.contains("name=\"n\"\r\n\r\n3\r\n"), "{body}");
        assert!(body.ends_with("--switchboard-vxml-exit--\r\n"));
        let (_, body) = bye_body(&json!("done")).expect("body");
        assert!(String::from_utf8(body)
            .unwrap()
            .contains("name=\"expr\"\r\n\r\ndone\r\n"));
        // A value holding the boundary gets another boundary.
        let (ct, body) = bye_body(&json!({"x": "--switchboard-vxml-exit--"})).expect("body");
        assert_eq!(ct, "multipart/form-data; boundary=switchboard-vxml-exitx");
        assert!(String::from_utf8(body)
            .unwrap()
            .ends_with("--switchboard-vxml-exitx--\r\n"));
    }
}
