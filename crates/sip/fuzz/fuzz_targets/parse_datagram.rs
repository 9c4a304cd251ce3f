//! One UDP datagram: parse, read every typed header, apply the proxy's edits.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| switchboard_sip::fuzzing::datagram(data));
