//! Writing SDP back out (RFC 4566 line order, CRLF).

use std::fmt::{self, Display, Formatter, Write};

use crate::model::*;

impl Display for Connection {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "IN {} {}", self.addr_type.as_str(), self.address)?;
        if let Some(ttl) = self.ttl {
            write!(f, "/{ttl}")?;
        }
        if let Some(n) = self.count {
            write!(f, "/{n}")?;
        }
        Ok(())
    }
}

impl Display for Origin {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} IN {} {}",
            self.username,
            self.session_id,
            self.session_version,
            self.addr_type.as_str(),
            self.address
        )
    }
}

impl Display for Attribute {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "a={}:{}\r\n", self.name, v),
            None => write!(f, "a={}\r\n", self.name),
        }
    }
}

fn lines(f: &mut Formatter<'_>, lines: &[Line], kinds: &[char]) -> fmt::Result {
    for l in lines.iter().filter(|l| kinds.contains(&l.kind)) {
        write!(f, "{}={}\r\n", l.kind, l.value)?;
    }
    Ok(())
}

impl Display for MediaDescription {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "m={} {}", self.media, self.port)?;
        if let Some(n) = self.port_count {
            write!(f, "/{n}")?;
        }
        write!(f, " {}", self.protocol)?;
        for fmt in &self.formats {
            f.write_char(' ')?;
            f.write_str(fmt)?;
        }
        f.write_str("\r\n")?;
        lines(f, &self.other_lines, &['i'])?;
        if let Some(c) = &self.connection {
            write!(f, "c={c}\r\n")?;
        }
        let known = ['i', 'b', 'k'];
        lines(f, &self.other_lines, &['c', 'b', 'k'])?;
        // unknown line types last, still before attributes
        for l in self
            .other_lines
            .iter()
            .filter(|l| !known.contains(&l.kind) && l.kind != 'c')
        {
            write!(f, "{}={}\r\n", l.kind, l.value)?;
        }
        // rtpmap and fmtp in format order, then any for formats not listed
        let mut written_maps = 0;
        for fmt in &self.formats {
            for r in self
                .rtpmaps
                .iter()
                .filter(|r| fmt == &r.payload_type.to_string())
            {
                write_rtpmap(f, r)?;
                written_maps += 1;
            }
            for p in self.fmtps.iter().filter(|p| &p.format == fmt) {
                write!(f, "a=fmtp:{} {}\r\n", p.format, p.params)?;
            }
        }
        if written_maps < self.rtpmaps.len() {
            for r in &self.rtpmaps {
                if !self.formats.contains(&r.payload_type.to_string()) {
                    write_rtpmap(f, r)?;
                }
            }
        }
        for p in &self.fmtps {
            if !self.formats.contains(&p.format) {
                write!(f, "a=fmtp:{} {}\r\n", p.format, p.params)?;
            }
        }
        if let Some(p) = self.ptime {
            write!(f, "a=ptime:{p}\r\n")?;
        }
        if let Some(p) = self.maxptime {
            write!(f, "a=maxptime:{p}\r\n")?;
        }
        for a in &self.attributes {
            write!(f, "{a}")?;
        }
        if let Some(d) = self.direction {
            write!(f, "a={}\r\n", d.as_str())?;
        }
        Ok(())
    }
}

fn write_rtpmap(f: &mut Formatter<'_>, r: &RtpMap) -> fmt::Result {
    write!(
        f,
        "a=rtpmap:{} {}/{}",
        r.payload_type, r.encoding, r.clock_rate
    )?;
    if let Some(c) = r.channels {
        write!(f, "/{c}")?;
    }
    f.write_str("\r\n")
}

impl Display for SessionDescription {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str("v=0\r\n")?;
        write!(f, "o={}\r\n", self.origin)?;
        // RFC 4566: s= must not be empty; a single space is the convention
        let s = if self.session_name.is_empty() {
            "-"
        } else {
            &self.session_name
        };
        write!(f, "s={s}\r\n")?;
        lines(f, &self.other_lines, &['i', 'u', 'e', 'p'])?;
        if let Some(c) = &self.connection {
            write!(f, "c={c}\r\n")?;
        }
        lines(f, &self.other_lines, &['b'])?;
        write!(f, "t={} {}\r\n", self.timing.0, self.timing.1)?;
        lines(f, &self.other_lines, &['t', 'r', 'z', 'k'])?;
        let known = ['i', 'u', 'e', 'p', 'b', 't', 'r', 'z', 'k'];
        for l in self.other_lines.iter().filter(|l| !known.contains(&l.kind)) {
            write!(f, "{}={}\r\n", l.kind, l.value)?;
        }
        for a in &self.attributes {
            write!(f, "{a}")?;
        }
        if let Some(d) = self.direction {
            write!(f, "a={}\r\n", d.as_str())?;
        }
        for m in &self.media {
            write!(f, "{m}")?;
        }
        Ok(())
    }
}
