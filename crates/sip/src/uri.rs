//! SIP, SIPS and TEL URIs (RFC 3261 §19.1, RFC 3966), borrowed from the message text.
//! Other schemes are kept as scheme + opaque text so that a proxy can still route on them or
//! answer 416.

use crate::text::{is_token_char, walk_params, Cursor, Params};
use std::fmt;
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uri<'a> {
    Sip(SipUri<'a>),
    Tel(TelUri<'a>),
    Other { scheme: &'a str, rest: &'a str },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SipUri<'a> {
    pub secure: bool,
    /// The user part as written (escapes kept); see [`SipUri::user_unescaped`].
    pub user: Option<&'a str>,
    pub password: Option<&'a str>,
    pub host: Host<'a>,
    pub port: Option<u16>,
    pub params: Params<'a>,
    /// The `?h=v&...` part without the `?`.
    pub headers: Option<&'a str>,
    pub raw: &'a str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TelUri<'a> {
    pub number: &'a str,
    pub params: Params<'a>,
    pub raw: &'a str,
}

/// A host as written: a name, an IPv4 address, or an IPv6 reference including its brackets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Host<'a>(pub &'a str);

impl<'a> Host<'a> {
    pub fn as_str(&self) -> &'a str {
        self.0
    }

    pub fn is_ipv6_reference(&self) -> bool {
        self.0.starts_with('[')
    }

    /// The address, if the host is an IP literal (IPv6 without brackets).
    pub fn ip(&self) -> Option<IpAddr> {
        let s = self
            .0
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(self.0);
        s.parse().ok()
    }

    /// Parses `host` at the cursor (no port).
    pub(crate) fn parse(c: &mut Cursor<'a>) -> Result<Self, &'static str> {
        let start = c.pos;
        if c.eat(b'[') {
            c.take_while(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            if !c.eat(b']') {
                return Err("unterminated IPv6 reference");
            }
            if c.pos - start < 4 {
                return Err("empty IPv6 reference");
            }
        } else {
            let h = c.take_while(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if h.is_empty() {
                return Err("missing host");
            }
        }
        Ok(Host(&c.s[start..c.pos]))
    }
}

impl fmt::Display for Host<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Parses `[":" port]`.
pub(crate) fn parse_port(c: &mut Cursor<'_>) -> Result<Option<u16>, &'static str> {
    if !c.eat(b':') {
        return Ok(None);
    }
    let d = c.digits().ok_or("bad port")?;
    if d.len() > 5 {
        return Err("bad port");
    }
    d.parse::<u16>().map(Some).map_err(|_| "bad port")
}

fn is_uri_char(c: u8) -> bool {
    c.is_ascii_graphic()
        && !matches!(
            c,
            b'<' | b'>' | b'"' | b'\\' | b'{' | b'}' | b'|' | b'^' | b'`'
        )
}

fn check_escapes(s: &str) -> Result<(), &'static str> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let ok = b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
            if !ok {
                return Err("broken %-escape");
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

impl<'a> Uri<'a> {
    /// Parses a whole URI; the text must contain nothing else.
    pub fn parse(s: &'a str) -> Result<Self, &'static str> {
        if s.is_empty() {
            return Err("empty URI");
        }
        if !s.bytes().all(is_uri_char) {
            return Err("URI contains white space or a character that must be escaped");
        }
        let colon = s.find(':').ok_or("URI has no scheme")?;
        let scheme = &s[..colon];
        let scheme_ok = scheme
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_alphabetic)
            && scheme
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'));
        if !scheme_ok {
            return Err("bad URI scheme");
        }
        let rest = &s[colon + 1..];
        if scheme.eq_ignore_ascii_case("sip") {
            SipUri::parse_after_scheme(s, rest, false).map(Uri::Sip)
        } else if scheme.eq_ignore_ascii_case("sips") {
            SipUri::parse_after_scheme(s, rest, true).map(Uri::Sip)
        } else if scheme.eq_ignore_ascii_case("tel") {
            TelUri::parse_after_scheme(s, rest).map(Uri::Tel)
        } else if rest.is_empty() {
            Err("empty URI after scheme")
        } else {
            Ok(Uri::Other { scheme, rest })
        }
    }

    pub fn as_sip(&self) -> Option<&SipUri<'a>> {
        match self {
            Uri::Sip(u) => Some(u),
            _ => None,
        }
    }

    pub fn scheme(&self) -> &'a str {
        match self {
            Uri::Sip(u) if u.secure => "sips",
            Uri::Sip(_) => "sip",
            Uri::Tel(_) => "tel",
            Uri::Other { scheme, .. } => scheme,
        }
    }

    /// The user for routing: a SIP URI's user part or a TEL URI's number.
    pub fn user(&self) -> Option<&'a str> {
        match self {
            Uri::Sip(u) => u.user,
            Uri::Tel(t) => Some(t.number),
            Uri::Other { .. } => None,
        }
    }
}

impl<'a> SipUri<'a> {
    pub fn parse(s: &'a str) -> Result<Self, &'static str> {
        match Uri::parse(s)? {
            Uri::Sip(u) => Ok(u),
            _ => Err("not a SIP or SIPS URI"),
        }
    }

    fn parse_after_scheme(raw: &'a str, rest: &'a str, secure: bool) -> Result<Self, &'static str> {
        // A user part may hold ';', '?', ',' and '/', but never an unescaped '@': the first '@'
        // ends the userinfo.
        let (user, password, hostpart) = match rest.find('@') {
            Some(at) => {
                let info = &rest[..at];
                check_escapes(info)?;
                let (user, password) = match info.find(':') {
                    Some(c) => (&info[..c], Some(&info[c + 1..])),
                    None => (info, None),
                };
                if user.is_empty() {
                    return Err("empty user part");
                }
                (Some(user), password, &rest[at + 1..])
            }
            None => (None, None, rest),
        };
        let mut c = Cursor::new(hostpart);
        let host = Host::parse(&mut c)?;
        let port = parse_port(&mut c)?;
        let pstart = c.pos;
        while c.eat(b';') {
            let name = c.take_while(is_uri_param_char);
            if name.is_empty() {
                return Err("empty URI parameter");
            }
            if c.eat(b'=') && c.take_while(is_uri_param_char).is_empty() {
                return Err("empty URI parameter value");
            }
        }
        let pend = c.pos;
        let headers = if c.eat(b'?') {
            let h = c.rest();
            c.pos = hostpart.len();
            if h.is_empty() {
                return Err("empty URI headers");
            }
            Some(h)
        } else {
            None
        };
        if !c.at_end() {
            return Err("unexpected character in URI host part");
        }
        check_escapes(&hostpart[pstart..])?;
        Ok(SipUri {
            secure,
            user,
            password,
            host,
            port,
            params: Params::from_raw(&hostpart[pstart..pend]),
            headers,
            raw,
        })
    }

    /// The user part with %-escapes resolved.
    pub fn user_unescaped(&self) -> Option<String> {
        self.user
            .and_then(crate::text::percent_decode)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.params.get(name)
    }

    /// `sip:user@host` in lower case host, escapes resolved: the key of a registration (AOR).
    pub fn aor(&self) -> String {
        let scheme = if self.secure { "sips" } else { "sip" };
        match self.user_unescaped() {
            Some(u) => format!("{scheme}:{u}@{}", self.host.0.to_ascii_lowercase()),
            None => format!("{scheme}:{}", self.host.0.to_ascii_lowercase()),
        }
    }
}

fn is_uri_param_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-_.!~*'()%[]/:&+$".contains(&c)
}

impl<'a> TelUri<'a> {
    fn parse_after_scheme(raw: &'a str, rest: &'a str) -> Result<Self, &'static str> {
        let mut c = Cursor::new(rest);
        let number = c.take_while(|b| b.is_ascii_hexdigit() || b"+-.()*#".contains(&b));
        if number.is_empty() {
            return Err("empty telephone number");
        }
        let pstart = c.pos;
        walk_params(&mut c, |_, _| {})?;
        if !c.at_end() {
            return Err("unexpected character in tel URI");
        }
        Ok(TelUri {
            number,
            params: Params::from_raw(&rest[pstart..]),
            raw,
        })
    }
}

impl Params<'_> {
    pub(crate) fn from_raw(raw: &str) -> Params<'_> {
        Params::new_unchecked(raw)
    }
}

impl fmt::Display for Uri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uri::Sip(u) => f.write_str(u.raw),
            Uri::Tel(t) => f.write_str(t.raw),
            Uri::Other { scheme, rest } => write!(f, "{scheme}:{rest}"),
        }
    }
}

/// True if `s` is a valid `token` (used for method names and similar).
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uri_parts() {
        let u =
            SipUri::parse("sip:alice:pw@[2001:db8::10]:5070;transport=tcp;lr?subject=x").unwrap();
        assert_eq!(u.user, Some("alice"));
        assert_eq!(u.password, Some("pw"));
        assert_eq!(u.host.as_str(), "[2001:db8::10]");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.param("transport"), Some("tcp"));
        assert!(u.params.has("lr"));
        assert_eq!(u.headers, Some("subject=x"));
        assert_eq!(u.host.ip(), "2001:db8::10".parse().ok());
    }

    #[test]
    fn user_with_semicolons_and_escapes() {
        let u = SipUri::parse("sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.user, Some("user;par=u%40example.net"));
        assert_eq!(
            u.user_unescaped().as_deref(),
            Some("user;par=u@example.net")
        );
        assert_eq!(u.host.as_str(), "example.com");
        assert_eq!(u.aor(), "sip:user;par=u@example.net@example.com");
    }

    #[test]
    fn unbracketed_ipv6_is_rejected() {
        assert_eq!(SipUri::parse("sip:user@2001:db8::10"), Err("bad port"));
    }

    #[test]
    fn bracketed_port_is_part_of_address() {
        let u = SipUri::parse("sip:user@[2001:db8::10:5070]").unwrap();
        assert_eq!(u.port, None);
    }

    #[test]
    fn tel_and_other_schemes() {
        match Uri::parse("tel:+1-201-555-0123;phone-context=example.com").unwrap() {
            Uri::Tel(t) => {
                assert_eq!(t.number, "+1-201-555-0123");
                assert_eq!(t.params.get("phone-context"), Some("example.com"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Uri::parse("isbn:2983792873").unwrap(),
            Uri::Other {
                scheme: "isbn",
                rest: "2983792873"
            }
        );
    }

    #[test]
    fn bad_uris() {
        assert!(Uri::parse("sip:user@example.com; lr").is_err());
        assert!(Uri::parse("sip:us%zzer@example.com").is_err());
        assert!(Uri::parse("sip:@example.com").is_err());
        assert!(Uri::parse("nocolon").is_err());
        assert!(Uri::parse("sip:user@exa_mple.com").is_err());
    }
}
