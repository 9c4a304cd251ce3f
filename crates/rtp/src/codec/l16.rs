//! L16: 16-bit linear PCM in network byte order (RFC 3551 §4.5.11).

/// Encodes samples as big-endian 16-bit words. Returns the bytes written (always even).
pub fn encode(samples: &[i16], out: &mut [u8]) -> usize {
    let n = samples.len().min(out.len() / 2);
    for (s, o) in samples[..n].iter().zip(out.chunks_exact_mut(2)) {
        o.copy_from_slice(&s.to_be_bytes());
    }
    n * 2
}

/// Decodes big-endian 16-bit words. A trailing odd byte is ignored. Returns the samples written.
pub fn decode(payload: &[u8], out: &mut [i16]) -> usize {
    let n = (payload.len() / 2).min(out.len());
    for (o, b) in out[..n].iter_mut().zip(payload.chunks_exact(2)) {
        *o = i16::from_be_bytes([b[0], b[1]]);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_byte_order_round_trip() {
        let s = [0i16, 1, -1, i16::MAX, i16::MIN, 0x1234];
        let mut b = [0u8; 12];
        assert_eq!(encode(&s, &mut b), 12);
        assert_eq!(&b[10..], &[0x12, 0x34]);
        assert_eq!(&b[4..6], &[0xff, 0xff]);
        let mut d = [0i16; 6];
        assert_eq!(decode(&b, &mut d), 6);
        assert_eq!(d, s);
        // odd trailing byte ignored, short output respected
        assert_eq!(decode(&b[..5], &mut d), 2);
        assert_eq!(encode(&s, &mut b[..5]), 4);
    }
}
