//! In-place edits for forwarding: the output is the original bytes with a few spans replaced,
//! so untouched headers are copied, never re-serialized (one allocation per forwarded message).

use crate::header::{HeaderName, NameAddr, Via};
use crate::message::{Error, HeaderField, Message};
use crate::text::Cursor;
use bytes::{BufMut, Bytes, BytesMut};
use std::net::SocketAddr;

struct Op {
    at: usize,
    delete_to: usize,
    insert: std::ops::Range<usize>,
}

/// A set of edits against one message; `finish` writes the result.
pub struct Edit<'m> {
    msg: &'m Message,
    ops: Vec<Op>,
    text: Vec<u8>,
}

impl Message {
    pub fn edit(&self) -> Edit<'_> {
        Edit {
            msg: self,
            ops: Vec::with_capacity(4),
            text: Vec::with_capacity(256),
        }
    }
}

impl<'m> Edit<'m> {
    fn op(&mut self, at: usize, delete_to: usize, parts: &[&[u8]]) {
        let start = self.text.len();
        for p in parts {
            self.text.extend_from_slice(p);
        }
        self.ops.push(Op {
            at,
            delete_to,
            insert: start..self.text.len(),
        });
    }

    fn line_start_of_first(&self, name: HeaderName) -> Option<usize> {
        self.msg.field(name).map(|h| h.line_span.start as usize)
    }

    /// Inserts `Via: <value>` above the topmost Via.
    pub fn prepend_via(mut self, value: &str) -> Self {
        let at = self
            .line_start_of_first(HeaderName::Via)
            .or_else(|| {
                self.msg
                    .fields()
                    .first()
                    .map(|h| h.line_span.start as usize)
            })
            .unwrap_or(self.msg.head_end());
        self.op(at, at, &[b"Via: ", value.as_bytes(), b"\r\n"]);
        self
    }

    /// Records where a request really came from in its top Via (RFC 3261 §18.2.1, RFC 3581):
    /// `received` when the sent-by host differs from the source address, and `rport` filled in
    /// (with `received`) when the client asked for it.
    pub fn mark_received(mut self, source: SocketAddr) -> Result<Self, Error> {
        let h = *self
            .msg
            .field(HeaderName::Via)
            .ok_or(Error::Missing("Via"))?;
        let value = self.msg.value(&h)?;
        let mut c = Cursor::new(value);
        let via = Via::parse(&mut c).map_err(|e| Error::Header("Via", e))?;
        let wants_rport = via.params.has("rport");
        if !wants_rport && via.host.ip() == Some(source.ip()) {
            return Ok(self);
        }
        let base = h.value_span.start as usize;
        let params = via.params.raw();
        let params_at = base + (params.as_ptr() as usize - value.as_ptr() as usize);
        for name in ["received", "rport"] {
            if let Some(r) = crate::text::param_span(params, name) {
                self.op(params_at + r.start, params_at + r.end, &[]);
            }
        }
        let ip = source.ip().to_string();
        let at = base + c.pos;
        if wants_rport {
            let port = source.port().to_string();
            self.op(
                at,
                at,
                &[b";received=", ip.as_bytes(), b";rport=", port.as_bytes()],
            );
        } else {
            self.op(at, at, &[b";received=", ip.as_bytes()]);
        }
        Ok(self)
    }

    /// Removes the topmost Via value (the whole line if it holds one value).
    pub fn remove_top_via(mut self) -> Result<Self, Error> {
        let h = *self
            .msg
            .field(HeaderName::Via)
            .ok_or(Error::Missing("Via"))?;
        let (at, to) = self.first_value_extent(&h, |c| Via::parse(c).map(|_| ()))?;
        self.op(at, to, &[]);
        Ok(self)
    }

    /// Removes the topmost Route value (loose routing: the route that named us).
    pub fn pop_route(mut self) -> Result<Self, Error> {
        let h = *self
            .msg
            .field(HeaderName::Route)
            .ok_or(Error::Missing("Route"))?;
        let (at, to) = self.first_value_extent(&h, |c| NameAddr::parse(c).map(|_| ()))?;
        self.op(at, to, &[]);
        Ok(self)
    }

    /// The byte range to delete to remove a header's first comma-separated value: the whole
    /// line when it is the only value, else the value and the comma after it.
    fn first_value_extent(
        &self,
        h: &HeaderField,
        parse: impl Fn(&mut Cursor<'_>) -> Result<(), &'static str>,
    ) -> Result<(usize, usize), Error> {
        let label = h.name.as_str().unwrap_or("header");
        let value = self.msg.value(h)?;
        let mut c = Cursor::new(value);
        parse(&mut c).map_err(|e| Error::Header(label, e))?;
        c.ws();
        if c.at_end() {
            return Ok((h.line_span.start as usize, h.line_span.end as usize));
        }
        if !c.eat(b',') {
            return Err(Error::Header(
                label,
                "unexpected text after the first value",
            ));
        }
        c.ws();
        let start = h.value_span.start as usize;
        Ok((start, start + c.pos))
    }

    /// Sets Max-Forwards to one less (70 - 1 when absent). The caller answers 483 for zero first.
    pub fn decrement_max_forwards(mut self) -> Result<Self, Error> {
        match self.msg.field(HeaderName::MaxForwards).copied() {
            Some(h) => {
                let n = self.msg.max_forwards()?.unwrap_or(0);
                if n == 0 {
                    return Err(Error::Header("Max-Forwards", "is zero: too many hops"));
                }
                let mut buf = [0u8; 3];
                let digits = u8_digits(n - 1, &mut buf);
                self.op(
                    h.value_span.start as usize,
                    h.value_span.end as usize,
                    &[digits],
                );
            }
            None => {
                let at = self.msg.head_end();
                self.op(at, at, &[b"Max-Forwards: 69\r\n"]);
            }
        }
        Ok(self)
    }

    /// Inserts `Record-Route: <value>` above the topmost Record-Route.
    pub fn add_record_route(mut self, value: &str) -> Self {
        let at = self
            .line_start_of_first(HeaderName::RecordRoute)
            .unwrap_or(self.msg.head_end());
        self.op(at, at, &[b"Record-Route: ", value.as_bytes(), b"\r\n"]);
        self
    }

    pub fn set_request_uri(mut self, uri: &str) -> Self {
        if let Some(span) = self.msg.request_uri_span() {
            self.op(span.start as usize, span.end as usize, &[uri.as_bytes()]);
        }
        self
    }

    /// Appends a header at the end of the header section.
    pub fn add_header(mut self, name: &str, value: &str) -> Self {
        let at = self.msg.head_end();
        self.op(at, at, &[name.as_bytes(), b": ", value.as_bytes(), b"\r\n"]);
        self
    }

    /// Removes every header of that name.
    pub fn remove_headers(mut self, name: HeaderName) -> Self {
        let spans: Vec<_> = self.msg.fields_named(name).map(|h| h.line_span).collect();
        for s in spans {
            self.op(s.start as usize, s.end as usize, &[]);
        }
        self
    }

    /// Writes the edited message.
    pub fn finish(mut self) -> Bytes {
        let src = self.msg.as_bytes();
        self.ops.sort_by_key(|o| o.at);
        let mut out = BytesMut::with_capacity(src.len() + self.text.len());
        let mut cur = 0;
        for op in &self.ops {
            let at = op.at.max(cur);
            out.put_slice(&src[cur..at]);
            out.put_slice(&self.text[op.insert.clone()]);
            cur = op.delete_to.max(at);
        }
        out.put_slice(&src[cur..]);
        out.freeze()
    }
}

/// Where a response to a request with this top Via goes (RFC 3261 §18.2.2, RFC 3581 §4):
/// `received` (else the sent-by host) and `rport` (else the sent-by port, else 5060).
pub fn response_target<'a>(via: &Via<'a>) -> (&'a str, u16) {
    let host = via.received().unwrap_or(via.host.as_str());
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = via.rport().flatten().or(via.port).unwrap_or(5060);
    (host, port)
}

/// Decimal digits of a `u8`, without a heap allocation on the forwarding path.
fn u8_digits(n: u8, buf: &mut [u8; 3]) -> &[u8] {
    let mut i = 3;
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + n % 10;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &str = "INVITE sip:bob@b.example SIP/2.0\r\n\
Via: SIP/2.0/UDP p1.example;branch=z9hG4bK1, SIP/2.0/UDP a.example;branch=z9hG4bKa\r\n\
Route: <sip:p2.example;lr>,<sip:p3.example;lr>\r\n\
Max-Forwards: 10\r\n\
To: <sip:bob@b.example>\r\n\
From: <sip:alice@a.example>;tag=1\r\n\
Call-ID: c1\r\n\
CSeq: 1 INVITE\r\n\
X-Odd:   keep   this  \r\n\
Content-Length: 0\r\n\r\n";

    fn msg(s: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    #[test]
    fn forward_edits_leave_other_bytes_alone() {
        let m = msg(REQ);
        let out = m
            .edit()
            .prepend_via("SIP/2.0/UDP p2.example;branch=z9hG4bK2")
            .decrement_max_forwards()
            .unwrap()
            .pop_route()
            .unwrap()
            .add_record_route("<sip:p2.example;lr>")
            .finish();
        let f = msg(std::str::from_utf8(&out).unwrap());
        f.validate().unwrap();
        assert_eq!(f.top_via().unwrap().branch(), Some("z9hG4bK2"));
        assert_eq!(f.via_count().unwrap(), 3);
        assert_eq!(f.max_forwards().unwrap(), Some(9));
        let routes = f.routes().unwrap();
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].uri.to_string(), "sip:p3.example;lr");
        assert_eq!(f.record_routes().unwrap().len(), 1);
        assert!(std::str::from_utf8(&out)
            .unwrap()
            .contains("X-Odd:   keep   this  \r\n"));
    }

    #[test]
    fn response_via_removal() {
        let resp = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP p1.example;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP a.example;branch=z9hG4bKa\r\nTo: <sip:b@b>;tag=2\r\nFrom: <sip:a@a>;tag=1\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let out = msg(resp).edit().remove_top_via().unwrap().finish();
        let f = msg(std::str::from_utf8(&out).unwrap());
        assert_eq!(f.vias().unwrap().len(), 1);
        assert_eq!(f.top_via().unwrap().branch(), Some("z9hG4bKa"));
        // Comma-separated values: only the first goes.
        let out = msg(REQ).edit().remove_top_via().unwrap().finish();
        let f = msg(std::str::from_utf8(&out).unwrap());
        assert_eq!(f.top_via().unwrap().branch(), Some("z9hG4bKa"));
    }

    #[test]
    fn received_and_rport() {
        let m = msg(&REQ.replace(
            "p1.example;branch=z9hG4bK1",
            "p1.example;rport;branch=z9hG4bK1",
        ));
        let out = m
            .edit()
            .mark_received("192.0.2.7:7777".parse().unwrap())
            .unwrap()
            .finish();
        let f = msg(std::str::from_utf8(&out).unwrap());
        let v = f.top_via().unwrap();
        assert_eq!(v.received(), Some("192.0.2.7"));
        assert_eq!(v.rport(), Some(Some(7777)));
        assert_eq!(v.branch(), Some("z9hG4bK1"));
        assert_eq!(f.via_count().unwrap(), 2);
        assert_eq!(crate::edit::response_target(&v), ("192.0.2.7", 7777));
        // Same host, no rport: nothing to add.
        let m = msg(&REQ.replace("p1.example", "192.0.2.7"));
        let out = m
            .edit()
            .mark_received("192.0.2.7:5060".parse().unwrap())
            .unwrap()
            .finish();
        assert_eq!(&out[..], m.as_bytes());
    }

    #[test]
    fn zero_max_forwards_is_refused() {
        let m = msg(&REQ.replace("Max-Forwards: 10", "Max-Forwards: 0"));
        assert!(m.edit().decrement_max_forwards().is_err());
        let m = msg(&REQ.replace("Max-Forwards: 10\r\n", ""));
        let out = m.edit().decrement_max_forwards().unwrap().finish();
        assert_eq!(
            msg(std::str::from_utf8(&out).unwrap())
                .max_forwards()
                .unwrap(),
            Some(69)
        );
    }
}
