//! Lexical rules of RFC 3261 §25 over `&str`, with linear white space (LWS) that may span folded
//! lines. Header values handed to the cursor are the raw bytes between the colon and the end of the
//! (possibly folded) line, so a CR or LF seen here is always part of a fold and counts as space.

/// `token` characters (RFC 3261 §25.1).
pub fn is_token_char(c: u8) -> bool {
    TOKEN[c as usize]
}

const fn token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

pub fn is_lws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

/// Characters of a generic parameter value that is not quoted: token, host (IPv4, names, IPv6
/// references with or without brackets) and the URI punctuation that shows up in the wild.
pub fn is_param_value_char(c: u8) -> bool {
    PARAM_VALUE[c as usize]
}

const fn param_value_char(c: u8) -> bool {
    token_char(c)
        || matches!(
            c,
            b':' | b'['
                | b']'
                | b'/'
                | b'@'
                | b'&'
                | b'$'
                | b'?'
                | b'{'
                | b'}'
                | b'|'
                | b'^'
                | b'='
        )
        || c >= 0x80
}

/// Byte classes as tables: parameters are scanned a byte at a time in every Via, URI and
/// name-addr of every message, and a load beats a chain of comparisons.
macro_rules! byte_table {
    ($class:ident) => {{
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = $class(i as u8);
            i += 1;
        }
        t
    }};
}

static TOKEN: [bool; 256] = byte_table!(token_char);
static PARAM_VALUE: [bool; 256] = byte_table!(param_value_char);

/// A forward-only reader over one header value.
#[derive(Clone, Copy)]
pub struct Cursor<'a> {
    pub s: &'a str,
    pub pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(s: &'a str) -> Self {
        Cursor { s, pos: 0 }
    }

    pub fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    pub fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    /// Skips LWS; true if anything was skipped.
    pub fn ws(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_lws) {
            self.pos += 1;
        }
        self.pos > start
    }

    pub fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// `SWS c SWS`: a separator with optional space on both sides.
    pub fn sep(&mut self, c: u8) -> bool {
        let save = self.pos;
        self.ws();
        if self.eat(c) {
            self.ws();
            true
        } else {
            self.pos = save;
            false
        }
    }

    pub fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        let bytes = self.s.as_bytes();
        while self.pos < bytes.len() && f(bytes[self.pos]) {
            self.pos += 1;
        }
        // Every predicate used stops only on ASCII bytes, so the slice ends on a char boundary;
        // `get` keeps that an error instead of a panic should a caller break the rule.
        self.s.get(start..self.pos).unwrap_or("")
    }

    pub fn token(&mut self) -> Option<&'a str> {
        let t = self.take_while(is_token_char);
        (!t.is_empty()).then_some(t)
    }

    /// A quoted-string; returns the text between the quotes, escapes left in place.
    pub fn quoted(&mut self) -> Result<&'a str, &'static str> {
        if !self.eat(b'"') {
            return Err("expected a quoted string");
        }
        let bytes = self.s.as_bytes();
        let start = self.pos;
        while self.pos < bytes.len() {
            match bytes[self.pos] {
                b'\\' => self.pos += 2,
                b'"' => {
                    let inner = &self.s[start..self.pos];
                    self.pos += 1;
                    return Ok(inner);
                }
                _ => self.pos += 1,
            }
        }
        self.pos = bytes.len();
        Err("unterminated quoted string")
    }

    pub fn digits(&mut self) -> Option<&'a str> {
        let d = self.take_while(|c| c.is_ascii_digit());
        (!d.is_empty()).then_some(d)
    }
}

/// Parses a decimal into `u32`, refusing overflow instead of wrapping.
pub fn parse_u32(d: &str) -> Option<u32> {
    if d.is_empty() || d.len() > 12 || !d.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    d.parse::<u64>().ok().and_then(|v| u32::try_from(v).ok())
}

/// Walks `*( SEMI generic-param )` and checks its syntax, calling `f` for each parameter.
/// Stops (without consuming) at anything that is not `;` after optional space.
pub fn walk_params<'a>(
    c: &mut Cursor<'a>,
    mut f: impl FnMut(&'a str, Option<&'a str>),
) -> Result<(), &'static str> {
    while let Some((name, value)) = next_param(c)? {
        f(name, value);
    }
    Ok(())
}

/// Reads one `SEMI generic-param`; `None` (nothing consumed) if the next thing is not `;`.
fn next_param<'a>(c: &mut Cursor<'a>) -> Result<Option<(&'a str, Option<&'a str>)>, &'static str> {
    let save = c.pos;
    c.ws();
    if !c.eat(b';') {
        c.pos = save;
        return Ok(None);
    }
    c.ws();
    let name = c.token().ok_or("empty parameter name")?;
    let save = c.pos;
    c.ws();
    if !c.eat(b'=') {
        c.pos = save;
        return Ok(Some((name, None)));
    }
    c.ws();
    let value = if c.peek() == Some(b'"') {
        let start = c.pos;
        c.quoted()?;
        &c.s[start..c.pos]
    } else {
        c.take_while(is_param_value_char)
    };
    if value.is_empty() {
        return Err("empty parameter value");
    }
    Ok(Some((name, Some(value))))
}

/// Parameters kept as their raw text (starting at the first `;`), looked up on demand.
/// The text was checked by [`walk_params`] when the owning header was parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Params<'a> {
    raw: &'a str,
}

impl<'a> Params<'a> {
    pub(crate) fn parse(c: &mut Cursor<'a>) -> Result<Self, &'static str> {
        let start = c.pos;
        walk_params(c, |_, _| {})?;
        Ok(Params {
            raw: &c.s[start..c.pos],
        })
    }

    /// Wraps text already known to be `*(";" param)`.
    pub(crate) fn new_unchecked(raw: &'a str) -> Self {
        Params { raw }
    }

    pub fn raw(&self) -> &'a str {
        self.raw
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> {
        let mut list = Vec::new();
        let _ = walk_params(&mut Cursor::new(self.raw), |n, v| list.push((n, v)));
        list.into_iter()
    }

    /// The parameter's value (quotes removed); `Some("")` for a parameter without a value.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        let mut found = None;
        let _ = walk_params(&mut Cursor::new(self.raw), |n, v| {
            if found.is_none() && n.eq_ignore_ascii_case(name) {
                found = Some(v.map(unquote).unwrap_or(""));
            }
        });
        found
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// The byte range of `;name[=value]` (with the space before the `;`) in a raw parameter text.
pub fn param_span(raw: &str, name: &str) -> Option<std::ops::Range<usize>> {
    let mut c = Cursor::new(raw);
    loop {
        let start = c.pos;
        let (n, _) = next_param(&mut c).ok()??;
        if n.eq_ignore_ascii_case(name) {
            return Some(start..c.pos);
        }
    }
}

/// Strips surrounding quotes, leaving escapes (values here are compared, not displayed).
pub fn unquote(v: &str) -> &str {
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        &v[1..v.len() - 1]
    } else {
        v
    }
}

/// Resolves `\x` escapes of a quoted-string's content.
pub fn unescape_quoted(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(ch) = chars.next() {
        if ch == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// Decodes `%HH` escapes; `None` if an escape is broken.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_with_folding_and_spaces() {
        let mut c = Cursor::new(" ;   tag    = 1918181833n;lr ; x=\"a;b\"");
        let p = Params::parse(&mut c).unwrap();
        assert!(c.at_end());
        assert_eq!(p.get("TAG"), Some("1918181833n"));
        assert_eq!(p.get("lr"), Some(""));
        assert_eq!(p.get("x"), Some("a;b"));
        assert_eq!(p.get("nope"), None);
    }

    #[test]
    fn empty_param_name_is_an_error() {
        assert_eq!(
            Params::parse(&mut Cursor::new(";;,")),
            Err("empty parameter name")
        );
    }

    #[test]
    fn overflow_is_refused() {
        assert_eq!(parse_u32("4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32("4294967296"), None);
        assert_eq!(parse_u32("-1"), None);
        assert_eq!(parse_u32("0068"), Some(68));
    }

    #[test]
    fn quoted_escapes() {
        let mut c = Cursor::new(r#""J Rosenberg \\\"" x"#);
        assert_eq!(c.quoted().unwrap(), r#"J Rosenberg \\\""#);
        assert_eq!(unescape_quoted(r#"J Rosenberg \\\""#), r#"J Rosenberg \""#);
    }
}
