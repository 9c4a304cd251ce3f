//! The little SDP editing a relaying B2BUA needs, on text: each leg gets its own `o=` line
//! (session id fixed per leg, version raised whenever the content changes, RFC 3264 §8) and
//! re-offers for hold/retrieve change the media direction attribute.

use super::model::Direction;
use bytes::Bytes;

/// Our origin for one leg and the last body we sent on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LegSdp {
    pub sess_id: u64,
    pub version: u64,
    /// The last SDP we sent on the leg, as sent.
    pub last: Option<Bytes>,
}

impl LegSdp {
    pub fn new(sess_id: u64) -> LegSdp {
        LegSdp {
            sess_id,
            version: 1,
            last: None,
        }
    }

    /// The body to send on this leg for `sdp` (another leg's SDP, or our last one), with our
    /// origin and, if given, the direction. Records it as the last one sent.
    pub fn prepare(&mut self, sdp: &[u8], direction: Option<Direction>) -> Bytes {
        let text = String::from_utf8_lossy(sdp);
        let body = match direction {
            Some(d) => set_direction(&text, d),
            None => text.into_owned(),
        };
        let unchanged = self
            .last
            .as_ref()
            .is_some_and(|l| without_origin(&String::from_utf8_lossy(l)) == without_origin(&body));
        if self.last.is_some() && !unchanged {
            self.version += 1;
        }
        let out = Bytes::from(set_origin(&body, self.sess_id, self.version));
        self.last = Some(out.clone());
        out
    }
}

fn lines(s: &str) -> impl Iterator<Item = &str> {
    s.split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty())
}

fn without_origin(s: &str) -> Vec<&str> {
    lines(s).filter(|l| !l.starts_with("o=")).collect()
}

/// Replaces the session id and version of the `o=` line, keeping user name and address.
pub fn set_origin(sdp: &str, sess_id: u64, version: u64) -> String {
    let mut out = String::with_capacity(sdp.len() + 16);
    for l in lines(sdp) {
        if let Some(rest) = l.strip_prefix("o=") {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.len() >= 6 {
                out.push_str(&format!(
                    "o={} {sess_id} {version} {} {} {}\r\n",
                    f[0], f[3], f[4], f[5]
                ));
                continue;
            }
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    out
}

/// Sets the direction of every media section (and drops session-level direction lines).
pub fn set_direction(sdp: &str, d: Direction) -> String {
    let attr = match d {
        Direction::SendRecv => "a=sendrecv",
        Direction::SendOnly => "a=sendonly",
        Direction::RecvOnly => "a=recvonly",
        Direction::Inactive => "a=inactive",
    };
    let is_dir = |l: &str| matches!(l, "a=sendrecv" | "a=sendonly" | "a=recvonly" | "a=inactive");
    let mut out = String::with_capacity(sdp.len() + 32);
    let mut in_media = false;
    for l in lines(sdp) {
        if l.starts_with("m=") {
            if in_media {
                out.push_str(attr);
                out.push_str("\r\n");
            }
            in_media = true;
        }
        if is_dir(l) {
            continue;
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    if in_media {
        out.push_str(attr);
        out.push_str("\r\n");
    }
    out
}

/// The direction of the first media section (sendrecv when none is written).
pub fn direction_of(sdp: &[u8]) -> Direction {
    let text = String::from_utf8_lossy(sdp);
    let mut found = Direction::SendRecv;
    let mut in_media = false;
    for l in lines(&text) {
        if l.starts_with("m=") {
            if in_media {
                break;
            }
            in_media = true;
        }
        match l {
            "a=sendonly" => found = Direction::SendOnly,
            "a=recvonly" => found = Direction::RecvOnly,
            "a=inactive" => found = Direction::Inactive,
            _ => {}
        }
    }
    found
}

/// The direction an answer takes for an offer's direction (RFC 3264 §6.1): a device that
/// holds us (sendonly) gets recvonly back.
pub fn answer_direction(offer: Direction) -> Direction {
    match offer {
        Direction::SendOnly => Direction::RecvOnly,
        Direction::RecvOnly => Direction::SendOnly,
        d => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDP: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n";

    #[test]
    fn origin_is_ours_and_version_rises_only_on_change() {
        let mut leg = LegSdp::new(42);
        let a = leg.prepare(SDP.as_bytes(), None);
        let a = String::from_utf8_lossy(&a).into_owned();
        assert!(a.contains("o=user1 42 1 IN IP4 127.0.0.1\r\n"), "{a}");
        let b = leg.prepare(SDP.as_bytes(), None);
        assert!(String::from_utf8_lossy(&b).contains("o=user1 42 1 "));
        let held = leg.prepare(SDP.as_bytes(), Some(Direction::SendOnly));
        let held = String::from_utf8_lossy(&held).into_owned();
        assert!(held.contains("o=user1 42 2 "), "{held}");
        assert!(held.contains("a=sendonly\r\n") && !held.contains("a=sendrecv"));
        assert_eq!(direction_of(held.as_bytes()), Direction::SendOnly);
        let back = leg.prepare(held.as_bytes(), Some(Direction::SendRecv));
        assert!(String::from_utf8_lossy(&back).contains("o=user1 42 3 "));
        assert_eq!(direction_of(&back), Direction::SendRecv);
    }

    #[test]
    fn answers_mirror_the_offered_direction() {
        let off = set_direction(SDP, Direction::SendOnly);
        assert_eq!(
            answer_direction(direction_of(off.as_bytes())),
            Direction::RecvOnly
        );
        let off = set_direction(SDP, Direction::RecvOnly);
        assert_eq!(direction_of(off.as_bytes()), Direction::RecvOnly);
        assert_eq!(answer_direction(Direction::Inactive), Direction::Inactive);
        assert_eq!(direction_of(SDP.as_bytes()), Direction::SendRecv);
    }

    #[test]
    fn direction_goes_into_every_media_section() {
        let two = "v=0\r\nm=audio 1 RTP/AVP 0\r\na=sendrecv\r\nm=video 2 RTP/AVP 96\r\n";
        let s = set_direction(two, Direction::Inactive);
        assert_eq!(s.matches("a=inactive").count(), 2, "{s}");
        assert!(!s.contains("sendrecv"));
    }
}
