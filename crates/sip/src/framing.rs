//! Stream framing (RFC 3261 §18.3): messages on TCP/TLS are delimited by the blank line and
//! Content-Length. Bytes go in as they arrive; whole messages come out. Leading CRLFs are
//! keep-alives (RFC 5626 §3.5.1) and are skipped.

use bytes::{Buf, Bytes, BytesMut};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    #[error("stream message without a valid Content-Length")]
    BadContentLength,
}

pub struct StreamFramer {
    buf: BytesMut,
    max: usize,
}

impl StreamFramer {
    pub fn new(max_message_bytes: usize) -> Self {
        StreamFramer {
            buf: BytesMut::with_capacity(4096),
            max: max_message_bytes,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole message, if one has arrived. An error means the stream cannot be framed
    /// any more and the connection should be closed.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, FramingError> {
        while self.buf.first().is_some_and(|&c| c == b'\r' || c == b'\n') {
            self.buf.advance(1);
        }
        let Some(head_end) = memchr::memmem::find(&self.buf, b"\r\n\r\n").map(|i| i + 4) else {
            if self.buf.len() > self.max {
                return Err(FramingError::TooLarge(self.max));
            }
            return Ok(None);
        };
        let body_len =
            content_length(&self.buf[..head_end]).ok_or(FramingError::BadContentLength)?;
        let total = head_end + body_len;
        if total > self.max {
            return Err(FramingError::TooLarge(self.max));
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        Ok(Some(self.buf.split_to(total).freeze()))
    }
}

/// Finds Content-Length (or `l`) in a header block; folded values are not expected for it.
fn content_length(head: &[u8]) -> Option<usize> {
    let mut found = None;
    for line in head.split(|&c| c == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii_end();
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let v = std::str::from_utf8(line[colon + 1..].trim_ascii()).ok()?;
            let n = v.parse::<usize>().ok()?;
            if found.is_some_and(|f| f != n) {
                return None;
            }
            found = Some(n);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nl: 3\r\n\r\nabc";

    #[test]
    fn frames_across_chunks_and_keepalives() {
        let mut f = StreamFramer::new(1000);
        f.push(b"\r\n\r\n");
        f.push(&MSG[..10]);
        assert_eq!(f.next_message(), Ok(None));
        f.push(&MSG[10..]);
        f.push(MSG);
        assert_eq!(f.next_message().unwrap().as_deref(), Some(MSG));
        assert_eq!(f.next_message().unwrap().as_deref(), Some(MSG));
        assert_eq!(f.next_message(), Ok(None));
    }

    #[test]
    fn refuses_missing_length_and_oversize() {
        let mut f = StreamFramer::new(1000);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n");
        assert_eq!(f.next_message(), Err(FramingError::BadContentLength));
        let mut f = StreamFramer::new(40);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 100\r\n\r\n");
        assert_eq!(f.next_message(), Err(FramingError::TooLarge(40)));
        let mut f = StreamFramer::new(10);
        f.push(b"OPTIONS sip:a@b SIP/2.0 no end in sight");
        assert_eq!(f.next_message(), Err(FramingError::TooLarge(10)));
    }
}
