//! The SIP message: framing (start line, header lines, body) over one `Bytes` buffer. Header
//! values stay raw slices; typed values are parsed on demand, so forwarding a request costs one
//! pass over its lines plus the few headers a proxy reads.

use crate::header::{
    check_date, is_header_name_char, parse_call_id, parse_max_forwards, parse_name_addr_list,
    parse_number, parse_via_list, CSeq, HeaderName, Method, NameAddr, Via,
};
use crate::text::{parse_u32, Cursor};
use crate::uri::Uri;
use bytes::Bytes;
use std::fmt;

/// A byte range in the message buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }

    pub fn len(self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(self) -> bool {
        self.end == self.start
    }
}

/// One header line (with its folded continuation lines).
#[derive(Clone, Copy, Debug)]
pub struct HeaderField {
    pub name: HeaderName,
    /// The name as written.
    pub name_span: Span,
    /// The value, trimmed of leading and trailing white space; may contain folds.
    pub value_span: Span,
    /// The whole line(s) including the final line break: what removing the header removes.
    pub line_span: Span,
}

#[derive(Clone, Debug)]
pub enum StartLine {
    Request {
        method: Method,
        uri: Span,
        version: Span,
    },
    Response {
        code: u16,
        reason: Span,
    },
}

/// Why a message was refused. The text names the header (or part) and the fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("malformed start line: {0}")]
    StartLine(&'static str),
    #[error("unsupported SIP version {0:?}")]
    Version(String),
    #[error("malformed message: {0}")]
    Framing(&'static str),
    #[error("{0}: {1}")]
    Header(&'static str, &'static str),
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("{0}")]
    Invalid(&'static str),
}

impl Error {
    /// The status a UAS or proxy answers a request with this fault with.
    pub fn status(&self) -> u16 {
        match self {
            Error::Version(_) => 505,
            _ => 400,
        }
    }
}

#[derive(Clone)]
pub struct Message {
    buf: Bytes,
    start: StartLine,
    headers: Vec<HeaderField>,
    body: Span,
    /// Offset of the blank line that ends the header section: where new headers go.
    head_end: u32,
    /// A Content-Length problem found while framing; reported by `validate`.
    body_error: Option<&'static str>,
}

/// The Contact header set of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contacts<'a> {
    /// `Contact: *` (only valid in REGISTER with Expires: 0).
    Star,
    List(Vec<NameAddr<'a>>),
}

fn find_line_end(buf: &[u8], from: usize) -> Option<usize> {
    memchr::memchr(b'\n', &buf[from..]).map(|i| from + i)
}

/// Trims `\r` before a `\n` at `end` (the index of `\n`).
fn trim_cr(buf: &[u8], start: usize, end: usize) -> usize {
    if end > start && buf[end - 1] == b'\r' {
        end - 1
    } else {
        end
    }
}

fn trim_ws(buf: &[u8], mut start: usize, mut end: usize) -> (usize, usize) {
    while start < end && crate::text::is_lws(buf[start]) {
        start += 1;
    }
    while end > start && crate::text::is_lws(buf[end - 1]) {
        end -= 1;
    }
    (start, end)
}

impl Message {
    /// Frames one message from a datagram or an already delimited stream chunk. Trailing octets
    /// after Content-Length bytes of body are ignored (RFC 3261 §18.3).
    pub fn parse(buf: Bytes) -> Result<Message, Error> {
        let b: &[u8] = &buf;
        // Tolerate leading CRLFs (keep-alives) before the start line.
        let mut pos = 0;
        while pos < b.len() && (b[pos] == b'\r' || b[pos] == b'\n') {
            pos += 1;
        }
        let sl_end = find_line_end(b, pos).ok_or(Error::Framing("no end of start line"))?;
        let start = parse_start_line(b, pos, trim_cr(b, pos, sl_end))?;
        let mut headers: Vec<HeaderField> = Vec::with_capacity(16);
        let mut line = sl_end + 1;
        let (blank_line, header_end) = loop {
            let end = find_line_end(b, line)
                .ok_or(Error::Framing("no blank line ending the header section"))?;
            let content_end = trim_cr(b, line, end);
            if content_end == line {
                break (line, end + 1);
            }
            if b[line] == b' ' || b[line] == b'\t' {
                let last = headers
                    .last_mut()
                    .ok_or(Error::Framing("continuation line before the first header"))?;
                let (_, vend) = trim_ws(b, line, content_end);
                if vend > line {
                    if last.value_span.is_empty() {
                        let (vs, _) = trim_ws(b, line, content_end);
                        last.value_span.start = vs as u32;
                    }
                    last.value_span.end = vend as u32;
                }
                last.line_span.end = (end + 1) as u32;
            } else {
                headers.push(parse_header_line(b, line, content_end, end + 1)?);
            }
            line = end + 1;
        };
        let mut msg = Message {
            buf: Bytes::new(),
            start,
            headers,
            body: Span::new(header_end, b.len()),
            head_end: blank_line as u32,
            body_error: None,
        };
        msg.frame_body(b, header_end);
        let total = msg.body.end as usize;
        msg.buf = if total < buf.len() {
            buf.slice(..total)
        } else {
            buf
        };
        Ok(msg)
    }

    fn frame_body(&mut self, b: &[u8], header_end: usize) {
        let mut lengths = self
            .headers
            .iter()
            .filter(|h| h.name == HeaderName::ContentLength);
        let Some(first) = lengths.next() else { return };
        if lengths.next().is_some() {
            self.body_error = Some("more than one Content-Length header");
            return;
        }
        let value = std::str::from_utf8(&b[first.value_span.range()]).unwrap_or("");
        match parse_u32(value) {
            None => self.body_error = Some("not a non-negative 32-bit number"),
            Some(n) if header_end + n as usize > b.len() => {
                self.body_error = Some("larger than the message")
            }
            Some(n) => self.body = Span::new(header_end, header_end + n as usize),
        }
    }

    /// Checks everything the transaction and proxy layers rely on (RFC 3261 §8.2, §16.3):
    /// start line, the mandatory headers (exactly once where single-valued), the syntax of
    /// every header this crate gives a typed view of, and CSeq method = request method.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(e) = self.body_error {
            return Err(Error::Header("Content-Length", e));
        }
        if let StartLine::Request {
            method,
            uri,
            version,
        } = &self.start
        {
            let v = self.str_at(*version);
            if v != "SIP/2.0" {
                return Err(Error::Version(v.to_string()));
            }
            let uri = Uri::parse(self.str_at(*uri)).map_err(|e| Error::Header("Request-URI", e))?;
            if uri.as_sip().is_some_and(|u| u.headers.is_some()) {
                return Err(Error::Header("Request-URI", "must not contain URI headers"));
            }
            let cseq = self.cseq()?;
            if &cseq.method != method {
                return Err(Error::Header(
                    "CSeq",
                    "method does not match the request method",
                ));
            }
        } else {
            self.cseq()?;
        }
        self.check_counts()?;
        self.for_each_via(|_| {})?;
        self.from()?;
        self.to()?;
        self.call_id()?;
        self.max_forwards()?;
        self.contacts()?;
        self.routes()?;
        self.record_routes()?;
        self.expires()?;
        if let Some(d) = self.field(HeaderName::Date) {
            check_date(self.value(d)?).map_err(|e| Error::Header("Date", e))?;
        }
        Ok(())
    }

    fn check_counts(&self) -> Result<(), Error> {
        let single = [
            HeaderName::From,
            HeaderName::To,
            HeaderName::CallId,
            HeaderName::CSeq,
            HeaderName::MaxForwards,
        ];
        let mut counts = [0u8; 5];
        let mut vias = 0;
        for h in &self.headers {
            if let Some(i) = single.iter().position(|n| *n == h.name) {
                counts[i] = counts[i].saturating_add(1);
            } else if h.name == HeaderName::Via {
                vias += 1;
            }
        }
        for (name, count) in single.iter().zip(counts) {
            let label = name.as_str().unwrap_or("header");
            if count > 1 {
                return Err(Error::Header(label, "appears more than once"));
            }
            if count == 0 && *name != HeaderName::MaxForwards {
                return Err(Error::Missing(label));
            }
        }
        if vias == 0 {
            return Err(Error::Missing("Via"));
        }
        Ok(())
    }

    // ---- raw access ----

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The message bytes (cheap clone of the shared buffer).
    pub fn bytes(&self) -> Bytes {
        self.buf.clone()
    }

    pub fn start_line(&self) -> &StartLine {
        &self.start
    }

    pub fn fields(&self) -> &[HeaderField] {
        &self.headers
    }

    pub fn str_at(&self, span: Span) -> &str {
        std::str::from_utf8(&self.buf[span.range()]).unwrap_or("")
    }

    /// A header's value as text; header values are UTF-8 by RFC 3261 §7.3.1.
    pub fn value(&self, h: &HeaderField) -> Result<&str, Error> {
        std::str::from_utf8(&self.buf[h.value_span.range()])
            .map_err(|_| Error::Header(h.name.as_str().unwrap_or("header"), "value is not UTF-8"))
    }

    pub fn name_of(&self, h: &HeaderField) -> &str {
        self.str_at(h.name_span)
    }

    pub fn field(&self, name: HeaderName) -> Option<&HeaderField> {
        self.headers.iter().find(|h| h.name == name)
    }

    pub fn fields_named(&self, name: HeaderName) -> impl Iterator<Item = &HeaderField> {
        self.headers.iter().filter(move |h| h.name == name)
    }

    /// First value of a header by enum, as text (None if absent or not UTF-8).
    pub fn get(&self, name: HeaderName) -> Option<&str> {
        self.field(name).and_then(|h| self.value(h).ok())
    }

    /// First value of any header by its name as written (case-insensitive).
    pub fn get_by_name(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| self.name_of(h).eq_ignore_ascii_case(name))
            .and_then(|h| self.value(h).ok())
    }

    pub fn body(&self) -> &[u8] {
        &self.buf[self.body.range()]
    }

    pub fn body_bytes(&self) -> Bytes {
        self.buf.slice(self.body.range())
    }

    pub fn body_span(&self) -> Span {
        self.body
    }

    /// Offset of the blank line ending the headers.
    pub fn head_end(&self) -> usize {
        self.head_end as usize
    }

    // ---- start line ----

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self.start {
            StartLine::Response { reason, .. } => Some(self.str_at(reason)),
            StartLine::Request { .. } => None,
        }
    }

    pub fn request_uri_span(&self) -> Option<Span> {
        match self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    pub fn request_uri_str(&self) -> Option<&str> {
        self.request_uri_span().map(|s| self.str_at(s))
    }

    pub fn request_uri(&self) -> Result<Uri<'_>, Error> {
        let s = self
            .request_uri_str()
            .ok_or(Error::Invalid("not a request"))?;
        Uri::parse(s).map_err(|e| Error::Header("Request-URI", e))
    }

    // ---- typed headers ----

    fn required(&self, name: HeaderName) -> Result<(&HeaderField, &str), Error> {
        let label = name.as_str().unwrap_or("header");
        let h = self.field(name).ok_or(Error::Missing(label))?;
        Ok((h, self.value(h)?))
    }

    pub fn call_id(&self) -> Result<&str, Error> {
        let (_, v) = self.required(HeaderName::CallId)?;
        parse_call_id(v).map_err(|e| Error::Header("Call-ID", e))
    }

    pub fn cseq(&self) -> Result<CSeq, Error> {
        let (_, v) = self.required(HeaderName::CSeq)?;
        CSeq::parse(v).map_err(|e| Error::Header("CSeq", e))
    }

    pub fn from(&self) -> Result<NameAddr<'_>, Error> {
        let (_, v) = self.required(HeaderName::From)?;
        NameAddr::parse_single(v).map_err(|e| Error::Header("From", e))
    }

    pub fn to(&self) -> Result<NameAddr<'_>, Error> {
        let (_, v) = self.required(HeaderName::To)?;
        NameAddr::parse_single(v).map_err(|e| Error::Header("To", e))
    }

    /// The topmost Via value.
    pub fn top_via(&self) -> Result<Via<'_>, Error> {
        let (_, v) = self.required(HeaderName::Via)?;
        Via::parse(&mut Cursor::new(v)).map_err(|e| Error::Header("Via", e))
    }

    /// Calls `f` for every Via value, top first.
    pub fn for_each_via<'a>(&'a self, mut f: impl FnMut(Via<'a>)) -> Result<(), Error> {
        for h in self.fields_named(HeaderName::Via) {
            parse_via_list(self.value(h)?, &mut f).map_err(|e| Error::Header("Via", e))?;
        }
        Ok(())
    }

    pub fn vias(&self) -> Result<Vec<Via<'_>>, Error> {
        let mut out = Vec::new();
        self.for_each_via(|v| out.push(v))?;
        Ok(out)
    }

    pub fn via_count(&self) -> Result<usize, Error> {
        let mut n = 0;
        self.for_each_via(|_| n += 1)?;
        Ok(n)
    }

    pub fn max_forwards(&self) -> Result<Option<u8>, Error> {
        match self.field(HeaderName::MaxForwards) {
            None => Ok(None),
            Some(h) => parse_max_forwards(self.value(h)?)
                .map(Some)
                .map_err(|e| Error::Header("Max-Forwards", e)),
        }
    }

    pub fn expires(&self) -> Result<Option<u32>, Error> {
        self.number(HeaderName::Expires)
    }

    pub fn min_expires(&self) -> Result<Option<u32>, Error> {
        self.number(HeaderName::MinExpires)
    }

    fn number(&self, name: HeaderName) -> Result<Option<u32>, Error> {
        match self.field(name) {
            None => Ok(None),
            Some(h) => parse_number(self.value(h)?)
                .map(Some)
                .map_err(|e| Error::Header(name.as_str().unwrap_or("header"), e)),
        }
    }

    fn name_addrs(&self, name: HeaderName) -> Result<Vec<NameAddr<'_>>, Error> {
        let label = name.as_str().unwrap_or("header");
        let mut out = Vec::new();
        for h in self.fields_named(name) {
            parse_name_addr_list(self.value(h)?, &mut |n| out.push(n))
                .map_err(|e| Error::Header(label, e))?;
        }
        Ok(out)
    }

    pub fn routes(&self) -> Result<Vec<NameAddr<'_>>, Error> {
        self.name_addrs(HeaderName::Route)
    }

    pub fn record_routes(&self) -> Result<Vec<NameAddr<'_>>, Error> {
        self.name_addrs(HeaderName::RecordRoute)
    }

    pub fn contacts(&self) -> Result<Contacts<'_>, Error> {
        let fields: Vec<&HeaderField> = self.fields_named(HeaderName::Contact).collect();
        if let [h] = fields.as_slice() {
            if self.value(h)? == "*" {
                return Ok(Contacts::Star);
            }
        }
        let list = self.name_addrs(HeaderName::Contact)?;
        if fields.iter().any(|h| self.value(h).is_ok_and(|v| v == "*")) {
            return Err(Error::Header("Contact", "'*' mixed with other contacts"));
        }
        Ok(Contacts::List(list))
    }

    /// Option tags of Require / Proxy-Require / Supported headers.
    pub fn option_tags(&self, name: HeaderName) -> impl Iterator<Item = &str> {
        self.fields_named(name)
            .filter_map(|h| self.value(h).ok())
            .flat_map(crate::header::tokens)
    }

    pub fn content_type(&self) -> Option<&str> {
        self.get(HeaderName::ContentType)
    }
}

fn parse_start_line(b: &[u8], start: usize, end: usize) -> Result<StartLine, Error> {
    let line = std::str::from_utf8(&b[start..end]).map_err(|_| Error::StartLine("not UTF-8"))?;
    if let Some(rest) = line.strip_prefix("SIP/") {
        // SIP-Version SP Status-Code SP Reason-Phrase
        let mut parts = rest.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if version != "2.0" {
            return Err(Error::Version(format!("SIP/{version}")));
        }
        let code = parts.next().unwrap_or("");
        if code.len() != 3 || !code.bytes().all(|c| c.is_ascii_digit()) {
            return Err(Error::StartLine("status code is not three digits"));
        }
        let code: u16 = code
            .parse()
            .map_err(|_| Error::StartLine("bad status code"))?;
        if !(100..700).contains(&code) {
            return Err(Error::StartLine("status code out of range"));
        }
        let reason_start = start + "SIP/2.0 123 ".len().min(end - start);
        return Ok(StartLine::Response {
            code,
            reason: Span::new(reason_start, end),
        });
    }
    // Method SP Request-URI SP SIP-Version: exactly single spaces (RFC 4475 §3.1.2.9/10).
    let mut parts = line.split(' ');
    let (Some(m), Some(u), Some(v), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::StartLine(
            "request line is not 'Method SP Request-URI SP SIP-Version'",
        ));
    };
    if m.is_empty() || u.is_empty() || v.is_empty() {
        return Err(Error::StartLine(
            "request line is not 'Method SP Request-URI SP SIP-Version'",
        ));
    }
    if !v.starts_with("SIP/") {
        return Err(Error::StartLine(
            "request line does not end with a SIP version",
        ));
    }
    let method = Method::parse(m).map_err(Error::StartLine)?;
    let uri_start = start + m.len() + 1;
    let version_start = uri_start + u.len() + 1;
    Ok(StartLine::Request {
        method,
        uri: Span::new(uri_start, uri_start + u.len()),
        version: Span::new(version_start, end),
    })
}

fn parse_header_line(
    b: &[u8],
    start: usize,
    end: usize,
    next: usize,
) -> Result<HeaderField, Error> {
    let mut i = start;
    while i < end && is_header_name_char(b[i]) {
        i += 1;
    }
    if i == start {
        return Err(Error::Framing("header line does not start with a name"));
    }
    let name_end = i;
    while i < end && (b[i] == b' ' || b[i] == b'\t') {
        i += 1;
    }
    if i >= end || b[i] != b':' {
        return Err(Error::Framing("header line without ':' after the name"));
    }
    let (vs, ve) = trim_ws(b, i + 1, end);
    Ok(HeaderField {
        name: HeaderName::from_bytes(&b[start..name_end]),
        name_span: Span::new(start, name_end),
        value_span: Span::new(vs, ve),
        line_span: Span::new(start, next),
    })
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
Content-Length: 4\r\n\r\nv=0\nEXTRA";

    #[test]
    fn parses_request_and_ignores_trailing_octets() {
        let m = Message::parse(Bytes::from_static(INVITE.as_bytes())).unwrap();
        m.validate().unwrap();
        assert_eq!(m.method(), Some(&Method::Invite));
        assert_eq!(m.request_uri_str(), Some("sip:bob@biloxi.example.com"));
        assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bK776asdhds"));
        assert_eq!(m.from().unwrap().tag(), Some("1928301774"));
        assert_eq!(m.to().unwrap().tag(), None);
        assert_eq!(m.cseq().unwrap().seq, 314159);
        assert_eq!(m.body(), b"v=0\n");
        assert!(m.as_bytes().ends_with(b"v=0\n"));
    }

    #[test]
    fn response_with_empty_reason() {
        let m = Message::parse(Bytes::from_static(
            b"SIP/2.0 100 \r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        ))
        .unwrap();
        m.validate().unwrap();
        assert_eq!(m.status(), Some(100));
        assert_eq!(m.reason(), Some(""));
    }

    #[test]
    fn missing_blank_line_is_framing_error() {
        let e = Message::parse(Bytes::from_static(b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n"))
            .unwrap_err();
        assert!(matches!(e, Error::Framing(_)));
    }
}
