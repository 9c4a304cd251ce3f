//! RTP packets (RFC 3550 §5.1): a zero-copy parsed view and a header writer.

use thiserror::Error;

/// The fixed header length (no CSRCs, no extension).
pub const RTP_HEADER_LEN: usize = 12;

/// Why a datagram is not a valid RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtpError {
    /// Shorter than the 12-byte fixed header, or than the CSRC list / extension it announces.
    #[error("packet too short: {len} bytes, need {need}")]
    TooShort { len: usize, need: usize },
    /// The version field is not 2.
    #[error("RTP version {0}, expected 2")]
    BadVersion(u8),
    /// The padding count is zero or larger than the space after the header.
    #[error("invalid padding length {0}")]
    BadPadding(u8),
    /// The second byte looks like an RTCP packet type (RFC 5761 §4: 72..=76 with the marker bit).
    #[error("payload type {0} collides with RTCP")]
    RtcpPayloadType(u8),
    /// The output buffer cannot hold the packet.
    #[error("output buffer too small: need {need} bytes, have {have}")]
    BufferTooSmall { need: usize, have: usize },
}

/// A parsed RTP packet borrowing the datagram. Parsing checks every length, so the accessors
/// cannot fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    buf: &'a [u8],
    /// Offset of the payload.
    payload_start: usize,
    /// End of the payload (before padding).
    payload_end: usize,
    /// Offset and length of the header extension body, if any.
    extension: Option<(u16, usize, usize)>,
}

impl<'a> RtpPacket<'a> {
    /// Parses a datagram. Rejects anything that is not a well-formed RTP version 2 packet.
    pub fn parse(buf: &'a [u8]) -> Result<RtpPacket<'a>, RtpError> {
        if buf.len() < RTP_HEADER_LEN {
            return Err(RtpError::TooShort {
                len: buf.len(),
                need: RTP_HEADER_LEN,
            });
        }
        let version = buf[0] >> 6;
        if version != 2 {
            return Err(RtpError::BadVersion(version));
        }
        // RFC 5761: with the marker bit these byte values are RTCP SR/RR/SDES/BYE/APP.
        if (200..=204).contains(&buf[1]) {
            return Err(RtpError::RtcpPayloadType(buf[1] & 0x7f));
        }
        let cc = (buf[0] & 0x0f) as usize;
        let mut pos = RTP_HEADER_LEN + 4 * cc;
        if buf.len() < pos {
            return Err(RtpError::TooShort {
                len: buf.len(),
                need: pos,
            });
        }
        let mut extension = None;
        if buf[0] & 0x10 != 0 {
            if buf.len() < pos + 4 {
                return Err(RtpError::TooShort {
                    len: buf.len(),
                    need: pos + 4,
                });
            }
            let profile = u16::from_be_bytes([buf[pos], buf[pos + 1]]);
            let words = u16::from_be_bytes([buf[pos + 2], buf[pos + 3]]) as usize;
            let start = pos + 4;
            let end = start + 4 * words;
            if buf.len() < end {
                return Err(RtpError::TooShort {
                    len: buf.len(),
                    need: end,
                });
            }
            extension = Some((profile, start, end));
            pos = end;
        }
        let mut payload_end = buf.len();
        if buf[0] & 0x20 != 0 {
            let pad = buf[buf.len() - 1];
            if pad == 0 || (pad as usize) > buf.len() - pos {
                return Err(RtpError::BadPadding(pad));
            }
            payload_end -= pad as usize;
        }
        Ok(RtpPacket {
            buf,
            payload_start: pos,
            payload_end,
            extension,
        })
    }

    /// The whole datagram.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }
    /// The padding bit.
    pub fn padding(&self) -> bool {
        self.buf[0] & 0x20 != 0
    }
    /// The marker bit (start of a talkspurt for audio, RFC 3551 §4.1).
    pub fn marker(&self) -> bool {
        self.buf[1] & 0x80 != 0
    }
    /// The payload type (0..=127).
    pub fn payload_type(&self) -> u8 {
        self.buf[1] & 0x7f
    }
    /// The sequence number.
    pub fn sequence(&self) -> u16 {
        u16::from_be_bytes([self.buf[2], self.buf[3]])
    }
    /// The media timestamp.
    pub fn timestamp(&self) -> u32 {
        u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]])
    }
    /// The synchronisation source.
    pub fn ssrc(&self) -> u32 {
        u32::from_be_bytes([self.buf[8], self.buf[9], self.buf[10], self.buf[11]])
    }
    /// The contributing sources.
    pub fn csrcs(&self) -> impl Iterator<Item = u32> + 'a {
        let cc = (self.buf[0] & 0x0f) as usize;
        self.buf[RTP_HEADER_LEN..RTP_HEADER_LEN + 4 * cc]
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
    /// The header extension: the profile-defined 16 bits and the extension body.
    pub fn extension(&self) -> Option<(u16, &'a [u8])> {
        self.extension
            .map(|(profile, start, end)| (profile, &self.buf[start..end]))
    }
    /// The payload without padding.
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[self.payload_start..self.payload_end]
    }
    /// The header length including CSRCs and extension.
    pub fn header_len(&self) -> usize {
        self.payload_start
    }
    /// The header fields as a value.
    pub fn header(&self) -> RtpHeader {
        RtpHeader {
            marker: self.marker(),
            payload_type: self.payload_type(),
            sequence: self.sequence(),
            timestamp: self.timestamp(),
            ssrc: self.ssrc(),
        }
    }
}

/// True when a datagram on a muxed port is RTCP rather than RTP (RFC 5761 §4: second byte in
/// 192..=223).
pub fn is_rtcp(buf: &[u8]) -> bool {
    buf.len() >= 2 && (192..=223).contains(&buf[1])
}

/// The fields of an outgoing RTP header (no CSRCs, no extension, no padding: what a media server
/// sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

impl RtpHeader {
    /// Writes the 12-byte header at the start of `out`, so the payload can be encoded straight
    /// into `out[12..]`. Returns 12.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, RtpError> {
        if out.len() < RTP_HEADER_LEN {
            return Err(RtpError::BufferTooSmall {
                need: RTP_HEADER_LEN,
                have: out.len(),
            });
        }
        out[0] = 0x80;
        out[1] = (self.payload_type & 0x7f) | if self.marker { 0x80 } else { 0 };
        out[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        out[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        Ok(RTP_HEADER_LEN)
    }

    /// Writes header and payload. Returns the packet length.
    pub fn write_with_payload(&self, payload: &[u8], out: &mut [u8]) -> Result<usize, RtpError> {
        let need = RTP_HEADER_LEN + payload.len();
        if out.len() < need {
            return Err(RtpError::BufferTooSmall {
                need,
                have: out.len(),
            });
        }
        self.write(out)?;
        out[RTP_HEADER_LEN..need].copy_from_slice(payload);
        Ok(need)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = RtpHeader {
            marker: true,
            payload_type: 101,
            sequence: 0xfffe,
            timestamp: 0xdead_beef,
            ssrc: 0x0102_0304,
        };
        let mut buf = [0u8; 64];
        let n = h.write_with_payload(&[1, 2, 3], &mut buf).unwrap();
        assert_eq!(n, 15);
        let p = RtpPacket::parse(&buf[..n]).unwrap();
        assert_eq!(p.header(), h);
        assert_eq!(p.payload(), &[1, 2, 3]);
        assert_eq!(p.csrcs().count(), 0);
        assert!(p.extension().is_none());
        assert!(!is_rtcp(&buf[..n]));
        assert_eq!(
            h.write_with_payload(&[0; 60], &mut buf),
            Err(RtpError::BufferTooSmall { need: 72, have: 64 })
        );
    }

    #[test]
    fn csrc_extension_and_padding() {
        let mut buf = vec![0xb2u8, 0x00, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        buf.extend_from_slice(&[0, 0, 0, 10, 0, 0, 0, 11]); // 2 CSRCs
        buf.extend_from_slice(&[0xbe, 0xde, 0, 1, 9, 9, 9, 9]); // extension, 1 word
        buf.extend_from_slice(&[0xaa, 0xbb, 0, 0, 3]); // payload + 3 bytes padding
        let p = RtpPacket::parse(&buf).unwrap();
        assert_eq!(p.csrcs().collect::<Vec<_>>(), vec![10, 11]);
        assert_eq!(p.extension(), Some((0xbede, &[9u8, 9, 9, 9][..])));
        assert_eq!(p.payload(), &[0xaa, 0xbb]);
        assert_eq!(p.header_len(), 28);
    }

    #[test]
    fn malformed_packets_are_errors() {
        assert!(matches!(
            RtpPacket::parse(&[0x80; 11]),
            Err(RtpError::TooShort { .. })
        ));
        let mut h = [0x80u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        h[0] = 0x40;
        assert_eq!(RtpPacket::parse(&h), Err(RtpError::BadVersion(1)));
        h[0] = 0x81; // one CSRC announced, none present
        assert!(matches!(
            RtpPacket::parse(&h),
            Err(RtpError::TooShort { need: 16, .. })
        ));
        h[0] = 0xa0; // padding bit, padding count 0
        assert_eq!(RtpPacket::parse(&h), Err(RtpError::BadPadding(0)));
        h[0] = 0x80;
        h[1] = 200; // SR on a muxed port
        assert!(matches!(
            RtpPacket::parse(&h),
            Err(RtpError::RtcpPayloadType(_))
        ));
        assert!(is_rtcp(&h));
        let mut p = [0x80u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 200];
        p[0] = 0xa0; // padding longer than the payload
        assert_eq!(RtpPacket::parse(&p), Err(RtpError::BadPadding(200)));
    }
}
