//! Arbitrary input never panics the parser, and what we write parses back and writes the same.

use proptest::prelude::*;
use switchboard_sdp::SessionDescription;

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = SessionDescription::parse(&text);
    }

    #[test]
    fn sdp_shaped_lines_never_panic(lines in proptest::collection::vec(
        ("[vosictmabkzreupx]", "[ -~]{0,40}"), 0..20)) {
        let mut text = String::from("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n");
        for (k, v) in &lines {
            text.push_str(&format!("{k}={v}\r\n"));
        }
        if let Ok(sdp) = SessionDescription::parse(&text) {
            // what we write parses, and writing that again gives the same text
            let written = sdp.to_string();
            let again = SessionDescription::parse(&written);
            prop_assert!(again.is_ok(), "{written:?}: {again:?}");
            prop_assert_eq!(again.map(|s| s.to_string()).ok(), Some(written));
        }
    }
}
