//! Bad input never panics: truncated and mangled documents, and random inputs at any time.

mod common;

use common::Host;
use switchboard_vxml::{FetchError, Input};

const START: &str = "http://app/start.vxml";

const PAGE: &str = "<?xml version='1.0'?><vxml version='2.1' xmlns='http://www.w3.org/2001/vxml'>\
  <var name='n' expr='0'/><link dtmf='0' next='#b'/>\
  <menu id='m' dtmf='true'><prompt><enumerate/></prompt><choice next='#a'>a</choice><choice next='#b'>b</choice>\
  <nomatch count='6'><exit/></nomatch></menu>\
  <form id='a'><field name='f' type='digits?maxlength=3'><prompt count='1'>x</prompt>\
    <grammar mode='dtmf' root='r'><rule id='r'><item repeat='1-'><one-of><item>*</item><item>#<tag>out='h'</tag></item></one-of></item></rule></grammar>\
    <filled><assign name='n' expr='n+1'/><if cond='n &lt; 3'><clear namelist='f'/><else/><submit next='b.vxml' namelist='f n'/></if></filled>\
    <catch event='noinput nomatch'><reprompt/></catch></field></form>\
  <form id='b'><record name='r'/><transfer name='t' dest='sip:x' bridge='true'/><subdialog name='s' src='#a'/>\
    <block><foreach array='[1,2]' item='i'><value expr='i'/></foreach><data name='d' src='d.xml'/><exit namelist='n'/></block></form>\
</vxml>";

/// A small deterministic generator (no dependency needed for this).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn random_input(rng: &mut Rng) -> Option<Input> {
    let keys = ['0', '1', '2', '3', '9', '*', '#', 'A', 'x'];
    Some(match rng.next() % 9 {
        0..=3 => Input::Dtmf(keys[(rng.next() % keys.len() as u64) as usize]),
        4 => Input::PromptsDone,
        5 => Input::RecordingDone {
            url: (rng.next() & 1 == 0).then(|| "file:///r.wav".to_string()),
            duration_ms: 5,
            termchar: None,
        },
        6 => Input::TransferResult {
            duration_ms: 1000,
            status: "busy".into(),
        },
        7 => Input::DocumentFetched {
            url: "http://app/stray".into(),
            result: Err(FetchError {
                status: None,
                reason: "stray".into(),
            }),
        },
        _ => return None,
    })
}

#[test]
fn truncated_documents_end_cleanly() {
    let mut cut = 0;
    while cut < PAGE.len() {
        let h = Host::new(START, &[(START, &PAGE[..cut])]);
        assert!(h.vx.is_done() || h.vx.next_deadline().is_some() || !h.log.is_empty());
        cut += 11;
    }
}

#[test]
fn random_inputs_never_panic_and_calls_end() {
    for seed in 1..60u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let docs = [
            (START, PAGE),
            ("http://app/b.vxml", PAGE),
            ("http://app/d.xml", "<d><e/></d>"),
        ];
        let mut h = Host::new(START, &docs);
        for _ in 0..300 {
            if h.vx.is_done() {
                break;
            }
            match random_input(&mut rng) {
                Some(i) => h.input(i),
                None if h.vx.next_deadline().is_some() => h.timeout(),
                None => {}
            }
        }
        h.input(Input::Hangup);
        assert!(h.vx.is_done(), "seed {seed}: a hang-up ends the call");
    }
}
