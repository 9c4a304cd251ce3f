//! Transaction matching keys (RFC 3261 §17.1.3, §17.2.3). Keys are written into a reused
//! buffer so that looking up a retransmission or a response allocates nothing; only a new
//! transaction stores its key.

use crate::header::{Method, Via};
use crate::message::{Error, Message};
use std::fmt::Write;

const SEP: char = '\u{1f}';

/// The method a server transaction is keyed by: an ACK belongs to its INVITE transaction.
pub(crate) fn class(method: &Method) -> &str {
    match method {
        Method::Ack => "INVITE",
        m => m.as_str(),
    }
}

/// Writes the key of the server transaction `msg` belongs to, with `class` as its method.
///
/// Returns `None` for an RFC 3261 key (branch + sent-by + method) and, for an RFC 2543 key,
/// `Some(n)` where `out[..n]` is everything but the To tag, which comes last: the ACK for a
/// non-2xx response carries the response's To tag, so the INVITE transaction registers a
/// second key with that tag once it answers (see `alias_key`).
pub(crate) fn server_key(
    msg: &Message,
    via: &Via<'_>,
    class: &str,
    out: &mut String,
) -> Result<Option<usize>, Error> {
    out.clear();
    if via.is_rfc3261() {
        out.push('3');
        out.push(SEP);
        out.push_str(via.branch().unwrap_or(""));
        out.push(SEP);
        // Host names compare case-insensitively; the branch does not (we made it, or the
        // client did, and retransmissions repeat it byte for byte).
        for c in via.host.as_str().chars() {
            out.push(c.to_ascii_lowercase());
        }
        out.push(SEP);
        if let Some(p) = via.port {
            let _ = write!(out, "{p}");
        }
        out.push(SEP);
        out.push_str(class);
        return Ok(None);
    }
    // RFC 2543 (no branch, or the bare magic cookie): Request-URI, From tag, Call-ID, CSeq
    // number and the whole top Via; the To tag is checked by the caller.
    let uri = msg
        .request_uri_str()
        .ok_or(Error::Invalid("not a request"))?;
    let from = msg.from()?;
    let to = msg.to()?;
    let call_id = msg.call_id()?;
    let seq = msg.cseq()?.seq;
    out.push('2');
    out.push(SEP);
    out.push_str(class);
    out.push(SEP);
    out.push_str(uri);
    out.push(SEP);
    out.push_str(from.tag().unwrap_or(""));
    out.push(SEP);
    out.push_str(call_id);
    out.push(SEP);
    let _ = write!(out, "{seq}");
    out.push(SEP);
    write_via(out, via);
    out.push(SEP);
    let prefix = out.len();
    out.push_str(to.tag().unwrap_or(""));
    Ok(Some(prefix))
}

/// The RFC 2543 key an ACK carrying `to_tag` would have for the transaction keyed `key`.
pub(crate) fn alias_key(key: &str, prefix: usize, to_tag: &str) -> Box<str> {
    let mut s = String::with_capacity(prefix + to_tag.len());
    s.push_str(key.get(..prefix).unwrap_or(key));
    s.push_str(to_tag);
    s.into()
}

fn write_via(out: &mut String, via: &Via<'_>) {
    out.push_str(via.transport);
    out.push(' ');
    for c in via.host.as_str().chars() {
        out.push(c.to_ascii_lowercase());
    }
    if let Some(p) = via.port {
        let _ = write!(out, ":{p}");
    }
    out.push_str(via.params.raw().trim());
}

/// Writes the key of a client transaction: top Via branch + CSeq method.
pub(crate) fn client_key(branch: &str, method: &Method, out: &mut String) {
    out.clear();
    out.push_str(branch);
    out.push(SEP);
    out.push_str(method.as_str());
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(s: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    const OPT: &str = "OPTIONS sip:u@h SIP/2.0\r\nVia: SIP/2.0/UDP Host.Example:5070;branch=z9hG4bKabc\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:u@h>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n";

    #[test]
    fn rfc3261_key_folds_host_case_only() {
        let a = msg(OPT);
        let b = msg(&OPT.replace("Host.Example", "host.example"));
        let c = msg(&OPT.replace("z9hG4bKabc", "z9hG4bKABC"));
        let mut ka = String::new();
        let mut kb = String::new();
        let mut kc = String::new();
        server_key(&a, &a.top_via().unwrap(), "OPTIONS", &mut ka).unwrap();
        server_key(&b, &b.top_via().unwrap(), "OPTIONS", &mut kb).unwrap();
        server_key(&c, &c.top_via().unwrap(), "OPTIONS", &mut kc).unwrap();
        assert_eq!(ka, kb);
        assert_ne!(ka, kc);
    }

    #[test]
    fn bare_cookie_is_rfc2543() {
        let m = msg(&OPT.replace("z9hG4bKabc", "z9hG4bK"));
        let mut k = String::new();
        let prefix = server_key(&m, &m.top_via().unwrap(), "OPTIONS", &mut k)
            .unwrap()
            .unwrap();
        assert!(k.contains("sip:u@h"));
        assert_eq!(prefix, k.len());
        let tagged = msg(&OPT
            .replace("z9hG4bKabc", "z9hG4bK")
            .replace("To: <sip:u@h>", "To: <sip:u@h>;tag=9"));
        let mut k2 = String::new();
        server_key(&tagged, &tagged.top_via().unwrap(), "OPTIONS", &mut k2).unwrap();
        assert_eq!(&*alias_key(&k, prefix, "9"), k2);
    }
}
