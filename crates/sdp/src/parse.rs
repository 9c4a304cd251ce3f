//! The SDP parser: lines in, typed values out, errors naming the line.

use std::fmt;
use std::net::IpAddr;

use crate::model::*;

/// A parse error: which line (1-based), which line type, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    /// The line's type letter (`m`, `a`, ...), or `None` when the line has no `x=` shape.
    pub kind: Option<char>,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Some(k) => write!(f, "SDP line {} ({k}=): {}", self.line, self.message),
            None => write!(f, "SDP line {}: {}", self.line, self.message),
        }
    }
}

impl std::error::Error for ParseError {}

struct Ctx {
    line: usize,
    kind: char,
}

impl Ctx {
    fn err(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            line: self.line,
            kind: Some(self.kind),
            message: message.into(),
        }
    }
}

fn number<T: std::str::FromStr>(ctx: &Ctx, what: &str, s: &str) -> Result<T, ParseError> {
    s.parse::<T>()
        .map_err(|_| ctx.err(format!("{what} {s:?} is not a valid number")))
}

fn addr_type(ctx: &Ctx, s: &str) -> Result<AddrType, ParseError> {
    match s {
        "IP4" => Ok(AddrType::Ip4),
        "IP6" => Ok(AddrType::Ip6),
        _ => Err(ctx.err(format!("address type {s:?} is neither IP4 nor IP6"))),
    }
}

/// An address of the given type: an IP literal of that family, or a host name.
fn host(ctx: &Ctx, at: AddrType, s: &str) -> Result<Host, ParseError> {
    if s.is_empty() {
        return Err(ctx.err("missing address"));
    }
    match s.parse::<IpAddr>() {
        Ok(ip @ IpAddr::V4(_)) if at == AddrType::Ip4 => Ok(Host::Ip(ip)),
        Ok(ip @ IpAddr::V6(_)) if at == AddrType::Ip6 => Ok(Host::Ip(ip)),
        Ok(_) => Err(ctx.err(format!(
            "address {s:?} does not match address type {}",
            at.as_str()
        ))),
        Err(_) => {
            // a host name's last label is not all digits (RFC 1123 §2.1), and has no ':'
            let last_label = s.rsplit('.').next().unwrap_or(s);
            let looks_like_ip = s.contains(':')
                || last_label.is_empty()
                || last_label.bytes().all(|b| b.is_ascii_digit());
            let name_ok = s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
            if looks_like_ip || !name_ok {
                Err(ctx.err(format!("{s:?} is not a valid {} address", at.as_str())))
            } else {
                Ok(Host::Name(s.to_string()))
            }
        }
    }
}

fn origin(ctx: &Ctx, v: &str) -> Result<Origin, ParseError> {
    let f: Vec<&str> = v.split(' ').filter(|s| !s.is_empty()).collect();
    if f.len() != 6 {
        return Err(ctx.err(format!(
            "expected 6 fields (username sess-id sess-version nettype addrtype address), found {}",
            f.len()
        )));
    }
    if f[3] != "IN" {
        return Err(ctx.err(format!("network type {:?} is not IN", f[3])));
    }
    let at = addr_type(ctx, f[4])?;
    Ok(Origin {
        username: f[0].to_string(),
        session_id: number(ctx, "session id", f[1])?,
        session_version: number(ctx, "session version", f[2])?,
        addr_type: at,
        address: host(ctx, at, f[5])?,
    })
}

fn connection(ctx: &Ctx, v: &str) -> Result<Connection, ParseError> {
    let f: Vec<&str> = v.split(' ').filter(|s| !s.is_empty()).collect();
    if f.len() != 3 {
        return Err(ctx.err(format!(
            "expected 3 fields (nettype addrtype address), found {}",
            f.len()
        )));
    }
    if f[0] != "IN" {
        return Err(ctx.err(format!("network type {:?} is not IN", f[0])));
    }
    let at = addr_type(ctx, f[1])?;
    let mut parts = f[2].split('/');
    let addr = parts.next().unwrap_or("");
    let address = host(ctx, at, addr)?;
    let (mut ttl, mut count) = (None, None);
    match (at, parts.next(), parts.next(), parts.next()) {
        (_, None, _, _) => {}
        (AddrType::Ip4, Some(t), c, None) => {
            ttl = Some(number(ctx, "multicast TTL", t)?);
            if let Some(c) = c {
                count = Some(number(ctx, "address count", c)?);
            }
        }
        (AddrType::Ip6, Some(c), None, None) => count = Some(number(ctx, "address count", c)?),
        _ => return Err(ctx.err(format!("bad multicast suffix in {:?}", f[2]))),
    }
    Ok(Connection {
        addr_type: at,
        address,
        ttl,
        count,
    })
}

fn media(ctx: &Ctx, v: &str) -> Result<MediaDescription, ParseError> {
    let f: Vec<&str> = v.split(' ').filter(|s| !s.is_empty()).collect();
    if f.len() < 3 {
        return Err(ctx.err("expected <media> <port> <proto> <fmt> ..."));
    }
    let (port, port_count) = match f[1].split_once('/') {
        Some((p, n)) => (
            number::<u16>(ctx, "port", p)?,
            Some(number::<u16>(ctx, "port count", n)?),
        ),
        None => (number::<u16>(ctx, "port", f[1])?, None),
    };
    let mut m = MediaDescription::new(f[0], port, f[2]);
    m.port_count = port_count;
    m.formats = f[3..].iter().map(|s| s.to_string()).collect();
    if m.is_rtp() {
        for fmt in &m.formats {
            match fmt.parse::<u8>() {
                Ok(pt) if pt < 128 => {}
                _ => return Err(ctx.err(format!("RTP payload type {fmt:?} is not 0-127"))),
            }
        }
    }
    Ok(m)
}

fn rtpmap(ctx: &Ctx, v: &str) -> Result<RtpMap, ParseError> {
    let (pt, rest) = v
        .split_once(' ')
        .ok_or_else(|| ctx.err("rtpmap needs \"<payload type> <encoding>/<clock rate>\""))?;
    let payload_type: u8 = number(ctx, "rtpmap payload type", pt)?;
    if payload_type > 127 {
        return Err(ctx.err(format!("rtpmap payload type {payload_type} is not 0-127")));
    }
    let mut parts = rest.trim().split('/');
    let encoding = parts.next().unwrap_or("");
    if encoding.is_empty() {
        return Err(ctx.err("rtpmap without encoding name"));
    }
    let clock = parts
        .next()
        .ok_or_else(|| ctx.err(format!("rtpmap for {encoding} has no clock rate")))?;
    let clock_rate = number(ctx, "rtpmap clock rate", clock)?;
    let channels = parts
        .next()
        .map(|c| number(ctx, "rtpmap channel count", c))
        .transpose()?;
    if parts.next().is_some() {
        return Err(ctx.err("rtpmap has extra fields"));
    }
    Ok(RtpMap {
        payload_type,
        encoding: encoding.to_string(),
        clock_rate,
        channels,
    })
}

fn ptime(ctx: &Ctx, name: &str, v: &str) -> Result<u32, ParseError> {
    // some stacks write "20.0"
    let whole = v.split_once('.').map_or(v, |(w, _)| w);
    number(ctx, name, whole.trim())
}

impl SessionDescription {
    /// Parses an SDP body (CRLF or LF line ends; trailing blank lines ignored).
    pub fn parse(text: &str) -> Result<SessionDescription, ParseError> {
        let mut origin = None;
        let mut session_name = None;
        let mut connection = None;
        let mut timing = None;
        let mut direction = None;
        let mut attributes = Vec::new();
        let mut other_lines = Vec::new();
        let mut media: Vec<MediaDescription> = Vec::new();
        let mut saw_version = false;

        let lines: Vec<&str> = text.split('\n').collect();
        let last_nonempty = lines
            .iter()
            .rposition(|l| !l.trim_end_matches('\r').is_empty())
            .map_or(0, |i| i + 1);
        for (i, raw) in lines[..last_nonempty].iter().enumerate() {
            let line_no = i + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            let b = line.as_bytes();
            if b.len() < 2 || b[1] != b'=' || !b[0].is_ascii_lowercase() {
                return Err(ParseError {
                    line: line_no,
                    kind: None,
                    message: format!("expected <type>=<value>, found {line:?}"),
                });
            }
            let kind = b[0] as char;
            let value = &line[2..];
            let ctx = Ctx {
                line: line_no,
                kind,
            };
            if !saw_version {
                if kind != 'v' {
                    return Err(ctx.err("the first line must be v=0"));
                }
                if value != "0" {
                    return Err(ctx.err(format!("unsupported version {value:?}")));
                }
                saw_version = true;
                continue;
            }
            match (kind, media.last_mut()) {
                ('v', _) => return Err(ctx.err("repeated v= line")),
                ('o', None) => {
                    if origin.is_some() {
                        return Err(ctx.err("repeated o= line"));
                    }
                    origin = Some(self::origin(&ctx, value)?);
                }
                ('s', None) => {
                    if session_name.is_some() {
                        return Err(ctx.err("repeated s= line"));
                    }
                    session_name = Some(value.to_string());
                }
                ('t', None) => {
                    let mut f = value.split(' ').filter(|s| !s.is_empty());
                    let (Some(a), Some(b), None) = (f.next(), f.next(), f.next()) else {
                        return Err(ctx.err("expected <start> <stop>"));
                    };
                    let t = (
                        number(&ctx, "start time", a)?,
                        number(&ctx, "stop time", b)?,
                    );
                    // several t= lines are legal; keep the first, preserve the others
                    if timing.is_none() {
                        timing = Some(t);
                    } else {
                        other_lines.push(Line {
                            kind,
                            value: value.to_string(),
                        });
                    }
                }
                ('c', None) => {
                    if connection.is_some() {
                        return Err(ctx.err("repeated session-level c= line"));
                    }
                    connection = Some(self::connection(&ctx, value)?);
                }
                ('c', Some(m)) => {
                    // RFC 4566 allows several (multicast); the first is the one used
                    let c = self::connection(&ctx, value)?;
                    if m.connection.is_none() {
                        m.connection = Some(c);
                    } else {
                        m.other_lines.push(Line {
                            kind,
                            value: value.to_string(),
                        });
                    }
                }
                ('m', _) => {
                    if origin.is_none() {
                        return Err(ctx.err("m= before o="));
                    }
                    media.push(self::media(&ctx, value)?);
                }
                ('a', m) => {
                    let (name, val) = match value.split_once(':') {
                        Some((n, v)) => (n, Some(v)),
                        None => (value, None),
                    };
                    if name.is_empty() {
                        return Err(ctx.err("attribute without a name"));
                    }
                    let dir = Direction::from_attr(name).filter(|_| val.is_none());
                    match m {
                        None => match dir {
                            Some(d) => direction = Some(d),
                            None => attributes.push(Attribute::new(name, val)),
                        },
                        Some(m) => match (name, val, dir) {
                            (_, _, Some(d)) => m.direction = Some(d),
                            ("rtpmap", Some(v), _) => {
                                let r = rtpmap(&ctx, v)?;
                                if m.rtpmap(r.payload_type).is_some() {
                                    return Err(ctx.err(format!(
                                        "second rtpmap for payload type {}",
                                        r.payload_type
                                    )));
                                }
                                m.rtpmaps.push(r);
                            }
                            ("fmtp", Some(v), _) => {
                                let (format, params) = v.split_once(' ').unwrap_or((v, ""));
                                if format.is_empty() {
                                    return Err(ctx.err("fmtp without a format"));
                                }
                                m.fmtps.push(Fmtp {
                                    format: format.to_string(),
                                    params: params.trim().to_string(),
                                });
                            }
                            ("ptime", Some(v), _) => m.ptime = Some(ptime(&ctx, "ptime", v)?),
                            ("maxptime", Some(v), _) => {
                                m.maxptime = Some(ptime(&ctx, "maxptime", v)?)
                            }
                            _ => m.attributes.push(Attribute::new(name, val)),
                        },
                    }
                }
                (_, Some(m)) => m.other_lines.push(Line {
                    kind,
                    value: value.to_string(),
                }),
                (_, None) => other_lines.push(Line {
                    kind,
                    value: value.to_string(),
                }),
            }
        }
        let end = |message: &str| ParseError {
            line: last_nonempty.max(1),
            kind: None,
            message: message.to_string(),
        };
        if !saw_version {
            return Err(end("empty SDP (no v=0 line)"));
        }
        let origin = origin.ok_or_else(|| end("missing o= line"))?;
        Ok(SessionDescription {
            origin,
            // RFC 4566 requires s=; some peers send none or an empty one: accept
            session_name: session_name.unwrap_or_default(),
            connection,
            timing: timing.unwrap_or((0, 0)),
            direction,
            attributes,
            other_lines,
            media,
        })
    }
}

impl std::str::FromStr for SessionDescription {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionDescription::parse(s)
    }
}
