//! The protocol logic of the Basic HTTP Event I/O Processor (SCXML 1.0 §D.2): encoding of
//! outgoing sends as HTTP POST bodies and decoding of incoming requests into events. The host
//! owns the sockets.

use crate::interp::{Event, EventKind};
use crate::BASICHTTP_IOPROCESSOR;
use serde_json::{Map, Value as Json};

/// The parameter that carries the event name.
pub const EVENT_NAME_PARAM: &str = "_scxmleventname";

/// An HTTP request, as received by the host's listener or to be sent by its client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HttpRequest {
    pub method: String,
    /// Request target (path and query), e.g. `/scxml?x=1`.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpRequest {
    /// Parses a complete HTTP/1.1 request (head and body; the body is taken as is).
    pub fn parse(raw: &[u8]) -> Option<HttpRequest> {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = match text.find("\r\n\r\n") {
            Some(i) => (&text[..i], &text[i + 4..]),
            None => (&text[..], ""),
        };
        let mut lines = head.split("\r\n");
        let mut first = lines.next()?.split_whitespace();
        let method = first.next()?.to_string();
        let target = first.next()?.to_string();
        let headers = lines
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_string(), v.trim().to_string()))
            })
            .collect();
        Some(HttpRequest {
            method,
            target,
            headers,
            body: body.to_string(),
        })
    }

    /// The value of a header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The request as text (what `_event.raw` shows).
    pub fn raw(&self) -> String {
        let mut s = format!("{} {} HTTP/1.1\r\n", self.method, self.target);
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        s.push_str("\r\n");
        s.push_str(&self.body);
        s
    }

    /// Converts the request into an external event.
    pub(crate) fn to_event(&self) -> Event {
        let query = self.target.split_once('?').map(|(_, q)| q).unwrap_or("");
        let mut name = None;
        for (k, v) in form_decode(query) {
            if k == EVENT_NAME_PARAM {
                name = Some(v);
            }
        }
        let is_form = self
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        let mut data = None;
        if is_form && self.body.contains('=') {
            let mut map = Map::new();
            for (k, v) in form_decode(&self.body) {
                if k == EVENT_NAME_PARAM {
                    name = Some(v);
                } else {
                    map.insert(k, Json::String(v));
                }
            }
            if !map.is_empty() {
                data = Some(Json::Object(map));
            }
        } else if !self.body.is_empty() {
            let decoded = if is_form {
                percent_decode(&self.body)
            } else {
                self.body.clone()
            };
            data = Some(crate::model::text_value(&decoded));
        }
        Event {
            name: name.unwrap_or_else(|| format!("HTTP.{}", self.method.to_ascii_uppercase())),
            kind: EventKind::External,
            sendid: None,
            origin: self.header("x-scxml-origin").map(str::to_string),
            origintype: Some(BASICHTTP_IOPROCESSOR.to_string()),
            invokeid: None,
            data,
            raw: Some(self.raw()),
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `application/x-www-form-urlencoded` text.
pub fn form_decode(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// Encodes pairs as `application/x-www-form-urlencoded`.
pub fn form_encode(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Builds the POST for a `<send type="basichttp">`: the event name and key-value data go in a
/// form body; other content is sent percent-encoded with the name in the query.
pub(crate) fn encode_send(
    url: &str,
    name: Option<&str>,
    data: Option<&Json>,
    origin: &str,
) -> (String, HttpRequest) {
    let mut pairs = Vec::new();
    if let Some(n) = name {
        pairs.push((EVENT_NAME_PARAM.to_string(), n.to_string()));
    }
    let mut url = url.to_string();
    let body = match data {
        Some(Json::Object(m)) if !m.contains_key(crate::model::TAG) => {
            for (k, v) in m {
                pairs.push((k.clone(), scalar_text(v)));
            }
            form_encode(&pairs)
        }
        Some(other) => {
            if let Some(n) = name {
                let sep = if url.contains('?') { '&' } else { '?' };
                url = format!("{url}{sep}{EVENT_NAME_PARAM}={}", percent_encode(n));
            }
            percent_encode(&scalar_text(other))
        }
        None => form_encode(&pairs),
    };
    let target = match url.find("://") {
        Some(i) => match url[i + 3..].find('/') {
            Some(j) => url[i + 3 + j..].to_string(),
            None => "/".to_string(),
        },
        None => "/".to_string(),
    };
    (
        url,
        HttpRequest {
            method: "POST".into(),
            target,
            headers: vec![
                (
                    "Content-Type".into(),
                    "application/x-www-form-urlencoded".into(),
                ),
                ("X-SCXML-Origin".into(), origin.to_string()),
            ],
            body,
        },
    )
}

fn scalar_text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_roundtrip() {
        let p = vec![("a b".to_string(), "c&d=é".to_string())];
        assert_eq!(form_decode(&form_encode(&p)), p);
    }

    #[test]
    fn request_to_event() {
        let raw = b"POST /x?_scxmleventname=ev1 HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\nparam1=2";
        let r = HttpRequest::parse(raw).unwrap();
        let e = r.to_event();
        assert_eq!(e.name, "ev1");
        assert_eq!(e.data, Some(serde_json::json!({"param1": "2"})));
        let r = HttpRequest::parse(b"POST / HTTP/1.1\r\n\r\nhello").unwrap();
        assert_eq!(r.to_event().name, "HTTP.POST");
    }
}
