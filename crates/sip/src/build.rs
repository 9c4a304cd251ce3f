//! Writing new messages: responses to a request, ACK for a non-2xx final response, CANCEL, and
//! requests from scratch. Content-Length is always written.

use crate::header::{HeaderName, Method};
use crate::message::Message;
use bytes::{BufMut, Bytes, BytesMut};
use std::fmt::Display;

/// A message being written; headers go out in the order they are added.
pub struct Builder {
    buf: BytesMut,
}

impl Builder {
    pub fn request(method: &Method, uri: &str) -> Builder {
        let mut buf = BytesMut::with_capacity(512);
        buf.put_slice(method.as_str().as_bytes());
        buf.put_u8(b' ');
        buf.put_slice(uri.as_bytes());
        buf.put_slice(b" SIP/2.0\r\n");
        Builder { buf }
    }

    pub fn response(code: u16, reason: &str) -> Builder {
        let mut buf = BytesMut::with_capacity(512);
        buf.put_slice(format!("SIP/2.0 {code} {reason}\r\n").as_bytes());
        Builder { buf }
    }

    pub fn header(mut self, name: &str, value: impl Display) -> Self {
        use std::fmt::Write;
        let mut line = String::with_capacity(name.len() + 32);
        let _ = write!(line, "{name}: {value}\r\n");
        self.buf.put_slice(line.as_bytes());
        self
    }

    /// Copies a header line of another message verbatim (name, value and folding as written).
    pub fn copy_lines(mut self, from: &Message, name: HeaderName) -> Self {
        for h in from.fields_named(name) {
            self.buf.put_slice(&from.as_bytes()[h.line_span.range()]);
        }
        self
    }

    pub fn body(mut self, content_type: &str, body: &[u8]) -> Bytes {
        self = self.header("Content-Type", content_type);
        self.buf
            .put_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        self.buf.put_slice(body);
        self.buf.freeze()
    }

    pub fn finish(mut self) -> Bytes {
        self.buf.put_slice(b"Content-Length: 0\r\n\r\n");
        self.buf.freeze()
    }
}

/// Starts a response to `req` (RFC 3261 §8.2.6): all Via lines, From, Call-ID, CSeq copied, and
/// To with `to_tag` added when the request's To has none and the status is above 100.
pub fn response_to(req: &Message, code: u16, to_tag: Option<&str>) -> Builder {
    let mut b = Builder::response(code, reason_phrase(code))
        .copy_lines(req, HeaderName::Via)
        .copy_lines(req, HeaderName::From);
    let to = req.get(HeaderName::To).unwrap_or("");
    let has_tag = req.to().map(|t| t.tag().is_some()).unwrap_or(false);
    b = match to_tag {
        Some(tag) if !has_tag && code > 100 => b.header("To", format_args!("{to};tag={tag}")),
        _ => b.header("To", to),
    };
    b.copy_lines(req, HeaderName::CallId)
        .copy_lines(req, HeaderName::CSeq)
}

/// The ACK a client transaction sends for a non-2xx final response (RFC 3261 §17.1.1.3).
pub fn ack_for_non_2xx(req: &Message, resp: &Message) -> Bytes {
    let uri = req.request_uri_str().unwrap_or("");
    let seq = req.cseq().map(|c| c.seq).unwrap_or(0);
    let mut b = Builder::request(&Method::Ack, uri);
    if let Some(via) = req.field(HeaderName::Via) {
        b = b.header("Via", top_value(req, via));
    }
    b.header("Max-Forwards", 70)
        .copy_lines(req, HeaderName::Route)
        .copy_lines(req, HeaderName::From)
        .header("To", resp.get(HeaderName::To).unwrap_or(""))
        .copy_lines(req, HeaderName::CallId)
        .header("CSeq", format_args!("{seq} ACK"))
        .finish()
}

/// CANCEL for a pending request (RFC 3261 §9.1): same R-URI, top Via, Call-ID, From, To, Route
/// and CSeq number.
pub fn cancel_for(req: &Message) -> Bytes {
    let uri = req.request_uri_str().unwrap_or("");
    let seq = req.cseq().map(|c| c.seq).unwrap_or(0);
    let mut b = Builder::request(&Method::Cancel, uri);
    if let Some(via) = req.field(HeaderName::Via) {
        b = b.header("Via", top_value(req, via));
    }
    b.header("Max-Forwards", 70)
        .copy_lines(req, HeaderName::Route)
        .copy_lines(req, HeaderName::From)
        .copy_lines(req, HeaderName::To)
        .copy_lines(req, HeaderName::CallId)
        .header("CSeq", format_args!("{seq} CANCEL"))
        .finish()
}

/// The first value of a (possibly comma-separated) Via header as written.
fn top_value<'a>(msg: &'a Message, h: &crate::message::HeaderField) -> &'a str {
    let v = msg.value(h).unwrap_or("");
    let mut c = crate::text::Cursor::new(v);
    match crate::header::Via::parse(&mut c) {
        Ok(_) => v[..c.pos].trim_end(),
        Err(_) => v,
    }
}

pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => match code / 100 {
            1 => "Progress",
            2 => "OK",
            3 => "Redirect",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Global Failure",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &str = "INVITE sip:bob@b.example SIP/2.0\r\n\
Via: SIP/2.0/UDP a.example:5060;branch=z9hG4bKa;rport\r\n\
Route: <sip:p.example;lr>\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@b.example>\r\n\
From: <sip:alice@a.example>;tag=1\r\n\
Call-ID: c1\r\n\
CSeq: 7 INVITE\r\n\
Content-Length: 0\r\n\r\n";

    fn msg(b: Bytes) -> Message {
        let m = Message::parse(b).unwrap();
        m.validate().unwrap();
        m
    }

    #[test]
    fn response_copies_dialog_headers_and_adds_tag() {
        let req = msg(Bytes::from_static(REQ.as_bytes()));
        let r = msg(response_to(&req, 486, Some("xyz")).finish());
        assert_eq!(r.status(), Some(486));
        assert_eq!(r.reason(), Some("Busy Here"));
        assert_eq!(r.to().unwrap().tag(), Some("xyz"));
        assert_eq!(r.top_via().unwrap().branch(), Some("z9hG4bKa"));
        assert_eq!(r.cseq().unwrap().seq, 7);
        let trying = msg(response_to(&req, 100, Some("xyz")).finish());
        assert_eq!(trying.to().unwrap().tag(), None);
    }

    #[test]
    fn ack_and_cancel() {
        let req = msg(Bytes::from_static(REQ.as_bytes()));
        let resp = msg(response_to(&req, 486, Some("xyz")).finish());
        let ack = msg(ack_for_non_2xx(&req, &resp));
        assert_eq!(ack.method(), Some(&Method::Ack));
        assert_eq!(ack.to().unwrap().tag(), Some("xyz"));
        assert_eq!(ack.cseq().unwrap().seq, 7);
        assert_eq!(ack.routes().unwrap().len(), 1);
        let cancel = msg(cancel_for(&req));
        assert_eq!(cancel.cseq().unwrap().method, Method::Cancel);
        assert_eq!(cancel.top_via().unwrap().branch(), Some("z9hG4bKa"));
        assert_eq!(cancel.request_uri_str(), Some("sip:bob@b.example"));
    }
}
