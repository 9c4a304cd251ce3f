//! A TCP byte stream split at a fuzzed chunk size: framing, then each message as a datagram.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&chunk, rest)) = data.split_first() {
        switchboard_sip::fuzzing::stream(rest, usize::from(chunk));
    }
});
