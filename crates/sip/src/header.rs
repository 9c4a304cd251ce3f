//! Header names (with compact forms) and the typed header values parsed on demand.

use crate::text::{is_token_char, parse_u32, unescape_quoted, Cursor, Params};
use crate::uri::{Host, Uri};
use std::fmt;

macro_rules! header_names {
    ($( $variant:ident = $canon:literal $(| $compact:literal)? ),* $(,)?) => {
        /// A header field name. Matching is case-insensitive and compact forms map to the long
        /// form; any other name is `Other` and is kept byte for byte in the message.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum HeaderName { $($variant,)* Other }

        impl HeaderName {
            /// The canonical spelling; `None` for `Other`.
            pub fn as_str(self) -> Option<&'static str> {
                match self { $(HeaderName::$variant => Some($canon),)* HeaderName::Other => None }
            }

            pub fn from_bytes(name: &[u8]) -> HeaderName {
                // Called for every header line of every message: no allocation, and a compact
                // form is one byte so it is looked up by that byte alone.
                if let [c] = name {
                    let c = c.to_ascii_lowercase();
                    $($(
                        if c == $compact.as_bytes()[0] {
                            return HeaderName::$variant;
                        }
                    )?)*
                    return HeaderName::Other;
                }
                $(
                    if name.eq_ignore_ascii_case($canon.as_bytes()) {
                        return HeaderName::$variant;
                    }
                )*
                HeaderName::Other
            }
        }
    };
}

header_names! {
    Via = "Via" | "v",
    From = "From" | "f",
    To = "To" | "t",
    CallId = "Call-ID" | "i",
    CSeq = "CSeq",
    MaxForwards = "Max-Forwards",
    Contact = "Contact" | "m",
    ContentLength = "Content-Length" | "l",
    ContentType = "Content-Type" | "c",
    Route = "Route",
    RecordRoute = "Record-Route",
    Expires = "Expires",
    MinExpires = "Min-Expires",
    WwwAuthenticate = "WWW-Authenticate",
    Authorization = "Authorization",
    ProxyAuthenticate = "Proxy-Authenticate",
    ProxyAuthorization = "Proxy-Authorization",
    AuthenticationInfo = "Authentication-Info",
    Require = "Require",
    ProxyRequire = "Proxy-Require",
    Supported = "Supported" | "k",
    Unsupported = "Unsupported",
    Allow = "Allow",
    Accept = "Accept",
    Event = "Event" | "o",
    AllowEvents = "Allow-Events" | "u",
    SubscriptionState = "Subscription-State",
    ReferTo = "Refer-To" | "r",
    ReferredBy = "Referred-By" | "b",
    Replaces = "Replaces",
    Reason = "Reason",
    Subject = "Subject" | "s",
    Date = "Date",
    UserAgent = "User-Agent",
    Server = "Server",
    Warning = "Warning",
    RetryAfter = "Retry-After",
    Timestamp = "Timestamp",
    ContentEncoding = "Content-Encoding" | "e",
    CallInfo = "Call-Info",
    AlertInfo = "Alert-Info",
    SessionExpires = "Session-Expires" | "x",
    Path = "Path",
}

/// Request methods. Extension methods keep their exact spelling (methods are case-sensitive).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Info,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    Other(Box<str>),
}

impl Method {
    pub fn parse(s: &str) -> Result<Method, &'static str> {
        Ok(match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "REGISTER" => Method::Register,
            "OPTIONS" => Method::Options,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "REFER" => Method::Refer,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other if crate::uri::is_token(other) => Method::Other(other.into()),
            _ => return Err("method is not a token"),
        })
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One Via value (RFC 3261 §20.42).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Via<'a> {
    /// e.g. `UDP`, `TCP`, `TLS`, `WS`, or an unknown transport token.
    pub transport: &'a str,
    pub host: Host<'a>,
    pub port: Option<u16>,
    pub params: Params<'a>,
}

impl<'a> Via<'a> {
    pub fn branch(&self) -> Option<&'a str> {
        self.params.get("branch")
    }

    /// True if the branch carries the RFC 3261 magic cookie and an identifier after it; a bare
    /// cookie falls back to RFC 2543 matching (RFC 4475 §3.2.1).
    pub fn is_rfc3261(&self) -> bool {
        self.branch()
            .is_some_and(|b| b.len() > 7 && b.starts_with("z9hG4bK"))
    }

    pub fn received(&self) -> Option<&'a str> {
        self.params.get("received")
    }

    /// `Some(None)` for a bare `;rport`, `Some(Some(port))` once filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params.get("rport").map(|v| v.parse().ok())
    }

    /// Parses one via-parm at the cursor.
    pub(crate) fn parse(c: &mut Cursor<'a>) -> Result<Self, &'static str> {
        c.ws();
        let name = c.token().ok_or("missing protocol name")?;
        if !c.sep(b'/') {
            return Err("missing '/' in sent-protocol");
        }
        let version = c.token().ok_or("missing protocol version")?;
        if !c.sep(b'/') {
            return Err("missing '/' in sent-protocol");
        }
        let transport = c.token().ok_or("missing transport")?;
        if !name.eq_ignore_ascii_case("SIP") || version != "2.0" {
            return Err("sent-protocol is not SIP/2.0");
        }
        if !c.ws() {
            return Err("missing space before sent-by");
        }
        let host = Host::parse(c)?;
        let save = c.pos;
        c.ws();
        let port = if c.eat(b':') {
            c.ws();
            let d = c.digits().ok_or("bad port")?;
            Some(d.parse::<u16>().map_err(|_| "bad port")?)
        } else {
            c.pos = save;
            None
        };
        let params = Params::parse(c)?;
        Ok(Via {
            transport,
            host,
            port,
            params,
        })
    }
}

/// Iterates over the comma-separated values of one Via header.
pub fn parse_via_list<'a>(
    value: &'a str,
    out: &mut impl FnMut(Via<'a>),
) -> Result<(), &'static str> {
    let mut c = Cursor::new(value);
    loop {
        out(Via::parse(&mut c)?);
        c.ws();
        if c.at_end() {
            return Ok(());
        }
        if !c.eat(b',') {
            return Err("unexpected text after Via value");
        }
    }
}

/// `name-addr` or `addr-spec` with header parameters: From, To, Contact, Route, Record-Route,
/// Refer-To, Reply-To, P-Asserted-Identity...
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// The display name as written: quoted (quotes removed, escapes kept) or tokens.
    pub display: Option<&'a str>,
    pub display_quoted: bool,
    pub uri: Uri<'a>,
    pub params: Params<'a>,
}

impl<'a> NameAddr<'a> {
    pub fn tag(&self) -> Option<&'a str> {
        self.params.get("tag")
    }

    /// Display name with quoted-string escapes resolved.
    pub fn display_name(&self) -> Option<String> {
        self.display.map(|d| {
            if self.display_quoted {
                unescape_quoted(d)
            } else {
                d.to_string()
            }
        })
    }

    /// Parses one name-addr / addr-spec with its parameters at the cursor.
    pub(crate) fn parse(c: &mut Cursor<'a>) -> Result<Self, &'static str> {
        c.ws();
        let (display, display_quoted) = match c.peek() {
            Some(b'"') => {
                let d = c.quoted()?;
                c.ws();
                if c.peek() != Some(b'<') {
                    return Err("expected '<' after display name");
                }
                (Some(d), true)
            }
            Some(b'<') => (None, false),
            _ => {
                let start = c.pos;
                let mut probe = *c;
                while probe.token().is_some() {
                    probe.ws();
                }
                if probe.peek() == Some(b'<') {
                    let d = c.s[start..probe.pos].trim_end();
                    *c = probe;
                    (Some(d), false)
                } else {
                    (None, false)
                }
            }
        };
        let uri = if c.eat(b'<') {
            if c.peek().is_some_and(crate::text::is_lws) {
                return Err("white space after '<'");
            }
            let rest = c.rest();
            let end = rest.find('>').ok_or("missing '>'")?;
            let text = &rest[..end];
            c.pos += end + 1;
            Uri::parse(text)?
        } else {
            // Without brackets the URI ends at the first ';' (those are header parameters)
            // and may not carry URI headers or commas.
            let text = c.take_while(|b| !matches!(b, b';' | b',' | b' ' | b'\t' | b'\r' | b'\n'));
            if text.contains('?') {
                return Err("URI with headers must be enclosed in '<>'");
            }
            if text.is_empty() {
                return Err(if c.at_end() {
                    "missing URI"
                } else {
                    "unexpected character before URI"
                });
            }
            Uri::parse(text)?
        };
        let params = Params::parse(c)?;
        Ok(NameAddr {
            display,
            display_quoted,
            uri,
            params,
        })
    }

    /// Parses a header value that holds exactly one name-addr (From, To).
    pub fn parse_single(value: &'a str) -> Result<Self, &'static str> {
        let mut c = Cursor::new(value);
        let na = NameAddr::parse(&mut c)?;
        c.ws();
        if !c.at_end() {
            return Err("unexpected text after address");
        }
        Ok(na)
    }
}

/// Parses a comma-separated list of name-addrs (Contact, Route, Record-Route).
pub fn parse_name_addr_list<'a>(
    value: &'a str,
    out: &mut impl FnMut(NameAddr<'a>),
) -> Result<(), &'static str> {
    let mut c = Cursor::new(value);
    loop {
        out(NameAddr::parse(&mut c)?);
        c.ws();
        if c.at_end() {
            return Ok(());
        }
        if !c.eat(b',') {
            return Err("unexpected text after address");
        }
    }
}

/// CSeq (RFC 3261 §20.16): the number must be below 2**31.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    pub fn parse(value: &str) -> Result<CSeq, &'static str> {
        let mut c = Cursor::new(value);
        c.ws();
        let seq = c
            .digits()
            .and_then(parse_u32)
            .ok_or("sequence number is not a 32-bit number")?;
        if seq >= 1 << 31 {
            return Err("sequence number is not below 2**31");
        }
        if !c.ws() {
            return Err("missing method");
        }
        let m = c.token().ok_or("missing method")?;
        c.ws();
        if !c.at_end() {
            return Err("unexpected text after method");
        }
        Ok(CSeq {
            seq,
            method: Method::parse(m)?,
        })
    }
}

/// A single unsigned number value (Expires, Min-Expires, Content-Length).
pub fn parse_number(value: &str) -> Result<u32, &'static str> {
    parse_u32(value.trim_matches(|c: char| c.is_ascii_whitespace()))
        .ok_or("not a 32-bit unsigned number")
}

/// Max-Forwards: 0 to 255.
pub fn parse_max_forwards(value: &str) -> Result<u8, &'static str> {
    parse_number(value)
        .ok()
        .and_then(|n| u8::try_from(n).ok())
        .ok_or("not a number from 0 to 255")
}

/// A comma-separated token list (Require, Supported, Allow, Proxy-Require...).
pub fn tokens(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(',')
        .map(|t| t.trim_matches(|c: char| c.is_ascii_whitespace()))
        .filter(|t| !t.is_empty())
}

/// Checks a Call-ID: `word ["@" word]`, no white space.
pub fn parse_call_id(value: &str) -> Result<&str, &'static str> {
    let v = value.trim_matches(|c: char| c.is_ascii_whitespace());
    if v.is_empty() {
        return Err("empty");
    }
    if v.bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err("contains white space");
    }
    Ok(v)
}

/// Date (RFC 3261 §20.17): an RFC 1123 date that must be in GMT.
pub fn check_date(value: &str) -> Result<(), &'static str> {
    let v = value.trim_matches(|c: char| c.is_ascii_whitespace());
    let parts: Vec<&str> = v.split_ascii_whitespace().collect();
    if parts.len() != 6 || !parts[0].ends_with(',') {
        return Err("not an RFC 1123 date");
    }
    if parts[5] != "GMT" {
        return Err("time zone must be GMT");
    }
    Ok(())
}

/// True for a byte that may start a header name.
pub(crate) fn is_header_name_char(c: u8) -> bool {
    is_token_char(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_case() {
        assert_eq!(HeaderName::from_bytes(b"v"), HeaderName::Via);
        assert_eq!(
            HeaderName::from_bytes(b"MaX-fOrWaRdS"),
            HeaderName::MaxForwards
        );
        assert_eq!(HeaderName::from_bytes(b"i"), HeaderName::CallId);
        assert_eq!(HeaderName::from_bytes(b"X-Custom"), HeaderName::Other);
        assert_eq!(HeaderName::CallId.as_str(), Some("Call-ID"));
    }

    #[test]
    fn folded_via_list() {
        let v = "  SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8  ,\r\n SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239";
        let mut vias = Vec::new();
        parse_via_list(v, &mut |x| vias.push(x)).unwrap();
        assert_eq!(vias.len(), 2);
        assert_eq!(vias[0].transport, "TCP");
        assert_eq!(vias[0].host.as_str(), "spindle.example.com");
        assert_eq!(vias[0].branch(), Some("z9hG4bK9ikj8"));
        assert_eq!(vias[1].branch(), Some("z9hG4bK30239"));
    }

    #[test]
    fn via_port_and_rport() {
        let mut vias = Vec::new();
        parse_via_list(
            "SIP/2.0/UDP [2001:db8::9:1]:5061;rport;branch=z9hG4bKx",
            &mut |x| vias.push(x),
        )
        .unwrap();
        assert_eq!(vias[0].port, Some(5061));
        assert_eq!(vias[0].rport(), Some(None));
        assert!(vias[0].is_rfc3261());
    }

    #[test]
    fn stray_separators_in_via_are_an_error() {
        assert!(parse_via_list("SIP/2.0/UDP 192.0.2.15;;,;,,", &mut |_| {}).is_err());
    }

    #[test]
    fn name_addr_forms() {
        let na =
            NameAddr::parse_single(" sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n")
                .unwrap();
        assert_eq!(na.tag(), Some("1918181833n"));
        let na = NameAddr::parse_single("\"caller\"<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(na.display, Some("caller"));
        let na = NameAddr::parse_single("token1~` token2'+_ <sip:m@example.com>;tag=x").unwrap();
        assert_eq!(na.display, Some("token1~` token2'+_"));
        assert!(NameAddr::parse_single("Bell, Alexander <sip:a@example.com>").is_err());
        assert!(NameAddr::parse_single("\"Watson\" < sip:t@example.org >").is_err());
        assert!(NameAddr::parse_single("\"unterminated <sip:a@b>").is_err());
        assert!(NameAddr::parse_single("sip:user@example.com?Route=%3Csip:x%3E").is_err());
    }

    #[test]
    fn contact_list_with_params() {
        let mut list = Vec::new();
        parse_name_addr_list("<sip:a@h>;expires=60, sip:b@h;q=0.5", &mut |n| list.push(n)).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].params.get("expires"), Some("60"));
        assert_eq!(list[1].params.get("q"), Some("0.5"));
    }

    #[test]
    fn cseq_rules() {
        assert_eq!(
            CSeq::parse("0009\r\n  INVITE").unwrap(),
            CSeq {
                seq: 9,
                method: Method::Invite
            }
        );
        assert!(CSeq::parse("36893488147419103232 REGISTER").is_err());
        assert!(CSeq::parse("2147483648 INVITE").is_err());
        assert!(CSeq::parse("1").is_err());
    }

    #[test]
    fn max_forwards_range() {
        assert_eq!(parse_max_forwards(" 0068"), Ok(68));
        assert!(parse_max_forwards("300").is_err());
    }

    #[test]
    fn dates() {
        assert!(check_date("Sat, 13 Nov 2010 23:29:00 GMT").is_ok());
        assert!(check_date("Fri, 01 Jan 2010 16:00:00 EST").is_err());
    }
}
