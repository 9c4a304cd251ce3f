//! Entry points shared by the cargo-fuzz targets (`crates/sip/fuzz`) and the property tests, so
//! both drive the parser the same way a proxy does. Not part of the stable API.

use crate::auth::{Challenge, Credentials};
use crate::framing::StreamFramer;
use crate::header::HeaderName;
use crate::message::Message;
use bytes::Bytes;
use std::net::SocketAddr;

/// Parses `data` as one datagram and, when it parses, reads every typed value and applies every
/// forwarding edit, re-parsing what the edits produce. Must never panic, whatever `data` is.
pub fn datagram(data: &[u8]) {
    let Ok(m) = Message::parse(Bytes::copy_from_slice(data)) else {
        return;
    };
    read_everything(&m);
    if m.validate().is_ok() {
        forward(&m);
    }
}

/// Feeds `data` to a TCP stream framer in chunks of `chunk` bytes and parses every framed message.
pub fn stream(data: &[u8], chunk: usize) {
    let mut framer = StreamFramer::new(4096);
    for piece in data.chunks(chunk.max(1)) {
        framer.push(piece);
        while let Ok(Some(msg)) = framer.next_message() {
            datagram(&msg);
        }
    }
}

fn read_everything(m: &Message) {
    let _ = m.request_uri();
    let _ = m.call_id();
    let _ = m.cseq();
    let _ = m.from().map(|f| (f.tag(), f.display_name()));
    let _ = m.to().map(|t| t.tag());
    let _ = m.vias().map(|vs| {
        for v in vs {
            let _ = (v.branch(), v.received(), v.rport(), v.is_rfc3261());
            let _ = crate::edit::response_target(&v);
        }
    });
    let _ = m.max_forwards();
    let _ = m.expires();
    let _ = m.min_expires();
    let _ = m.routes();
    let _ = m.record_routes();
    let _ = m.contacts();
    let _ = m.option_tags(HeaderName::Require).count();
    let _ = m.option_tags(HeaderName::Supported).count();
    for name in [HeaderName::WwwAuthenticate, HeaderName::ProxyAuthenticate] {
        if let Some(v) = m.get(name) {
            let _ = Challenge::parse(v);
        }
    }
    for name in [HeaderName::Authorization, HeaderName::ProxyAuthorization] {
        if let Some(v) = m.get(name) {
            let _ = Credentials::parse(v);
        }
    }
    for h in m.fields() {
        let _ = (m.name_of(h), m.value(h));
    }
}

fn forward(m: &Message) {
    let source: SocketAddr = ([192, 0, 2, 9], 5070).into();
    let mut edit = m
        .edit()
        .prepend_via("SIP/2.0/UDP 203.0.113.5;branch=z9hG4bKfuzz");
    if m.is_request() {
        edit = match edit.decrement_max_forwards() {
            Ok(e) => e.add_record_route("<sip:203.0.113.5;lr>"),
            Err(_) => return,
        };
    }
    if let Ok(out) = Message::parse(edit.finish()) {
        read_everything(&out);
    }
    if let Ok(e) = m.edit().mark_received(source) {
        let _ = Message::parse(e.finish());
    }
    if let Ok(e) = m.edit().remove_top_via() {
        let _ = Message::parse(e.finish());
    }
    if let Ok(e) = m.edit().pop_route() {
        let _ = Message::parse(e.finish());
    }
}
