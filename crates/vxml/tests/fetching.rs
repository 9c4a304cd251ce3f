//! Fetch attributes and properties (VoiceXML 2.0 §6.1, §6.3.5) in the interpreter's Fetch
//! commands: fetchtimeout, maxage/maxstale per kind of resource, fetchaudio.

mod common;

use common::Host;
use switchboard_vxml::{Command, FetchAudio, FetchOptions, Input, Method};

const START: &str = "http://app/start.vxml";

fn vxml(body: &str) -> String {
    format!("<?xml version='1.0'?><vxml version='2.1' xmlns='http://www.w3.org/2001/vxml'>{body}</vxml>")
}

const NEXT: &str =
    "<?xml version='1.0'?><vxml version='2.1'><form><block>next<exit/></block></form></vxml>";

/// The options of the fetch of `url`.
fn options_of(h: &Host, url: &str) -> FetchOptions {
    h.fetches()
        .into_iter()
        .find_map(|c| match c {
            Command::Fetch {
                url: u, options, ..
            } if u == url => Some(options),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no fetch of {url}: {:?}", h.fetches()))
}

#[test]
fn the_first_document_has_no_options() {
    let doc = vxml("<form><block>hi<exit/></block></form>");
    let h = Host::new(START, &[(START, &doc)]);
    assert_eq!(options_of(&h, START), FetchOptions::default());
}

#[test]
fn document_properties_apply_to_a_goto() {
    let doc = vxml(
        "<property name='fetchtimeout' value='3s'/>\
         <property name='documentmaxage' value='0'/>\
         <property name='documentmaxstale' value='10'/>\
         <property name='scriptmaxage' value='99'/>\
         <form><block><goto next='next.vxml'/></block></form>",
    );
    let h = Host::new(START, &[(START, &doc), ("http://app/next.vxml", NEXT)]);
    assert_eq!(
        options_of(&h, "http://app/next.vxml"),
        FetchOptions {
            timeout_ms: Some(3000),
            maxage_s: Some(0),
            maxstale_s: Some(10),
            fetch_audio: None,
            multipart: false,
        }
    );
    assert_eq!(h.spoken(), "next");
}

#[test]
fn attributes_win_over_properties_and_inner_properties_over_outer() {
    let doc = vxml(
        "<property name='fetchtimeout' value='3s'/>\
         <property name='documentmaxage' value='60'/>\
         <form><property name='documentmaxage' value='30'/>\
           <block><if cond='true'><goto next='a.vxml' fetchtimeout='500ms' maxstale='5'/></if></block></form>",
    );
    let h = Host::new(START, &[(START, &doc), ("http://app/a.vxml", NEXT)]);
    assert_eq!(
        options_of(&h, "http://app/a.vxml"),
        FetchOptions {
            timeout_ms: Some(500),
            maxage_s: Some(30),
            maxstale_s: Some(5),
            fetch_audio: None,
            multipart: false,
        }
    );
}

#[test]
fn submit_and_subdialog_carry_their_attributes() {
    let doc = vxml(
        "<form><subdialog name='s' src='sub.vxml' maxage='1' fetchtimeout='2s'>\
           <filled><submit next='done' method='post' namelist='s' maxage='0' maxstale='0'/></filled>\
         </subdialog></form>",
    );
    let sub = vxml("<form><block><return/></block></form>");
    let h = Host::new(
        START,
        &[
            (START, &doc),
            ("http://app/sub.vxml", &sub),
            ("http://app/done", NEXT),
        ],
    );
    assert_eq!(
        options_of(&h, "http://app/sub.vxml"),
        FetchOptions {
            timeout_ms: Some(2000),
            maxage_s: Some(1),
            maxstale_s: None,
            fetch_audio: None,
            multipart: false,
        }
    );
    assert_eq!(
        options_of(&h, "http://app/done"),
        FetchOptions {
            timeout_ms: None,
            maxage_s: Some(0),
            maxstale_s: Some(0),
            fetch_audio: None,
            multipart: false,
        }
    );
}

#[test]
fn scripts_grammars_and_data_use_their_own_properties() {
    let doc = vxml(
        "<property name='fetchtimeout' value='4s'/>\
         <property name='scriptmaxage' value='11'/>\
         <property name='grammarmaxstale' value='12'/>\
         <property name='datamaxage' value='13'/>\
         <property name='documentmaxage' value='14'/>\
         <property name='fetchaudio' value='wait.wav'/>\
         <script src='lib.js'/>\
         <script src='lib2.js' maxage='0' fetchtimeout='1s'/>\
         <form><block><data name='d' src='d.xml'/><exit/></block>\
           <field name='f'><grammar src='g.grxml'/></field></form>",
    );
    let grammar = "<grammar xmlns='http://www.w3.org/2001/06/grammar' mode='dtmf' root='r'>\
                   <rule id='r'><item>1</item></rule></grammar>";
    let h = Host::new(
        START,
        &[
            (START, &doc),
            ("http://app/lib.js", "var a = 1;"),
            ("http://app/lib2.js", "var b = 2;"),
            ("http://app/d.xml", "<d/>"),
            ("http://app/g.grxml", grammar),
        ],
    );
    let script = options_of(&h, "http://app/lib.js");
    assert_eq!(script.timeout_ms, Some(4000));
    assert_eq!(script.maxage_s, Some(11));
    assert_eq!(script.fetch_audio, None, "no fetchaudio for scripts");
    let script2 = options_of(&h, "http://app/lib2.js");
    assert_eq!(
        (script2.timeout_ms, script2.maxage_s),
        (Some(1000), Some(0))
    );
    let grammar = options_of(&h, "http://app/g.grxml");
    assert_eq!((grammar.maxage_s, grammar.maxstale_s), (None, Some(12)));
    assert_eq!(grammar.fetch_audio, None);
    let data = options_of(&h, "http://app/d.xml");
    assert_eq!(data.maxage_s, Some(13));
    assert_eq!(
        data.fetch_audio.map(|a| a.url),
        Some("http://app/wait.wav".to_string())
    );
}

#[test]
fn fetchaudio_with_its_delay_and_minimum() {
    let doc = vxml(
        "<property name='fetchaudio' value='http://media/hold.wav'/>\
         <property name='fetchaudiodelay' value='500ms'/>\
         <property name='fetchaudiominimum' value='3s'/>\
         <form><block><goto next='a.vxml'/></block></form>",
    );
    let a = vxml("<form><block><submit next='b.vxml' fetchaudio='music/own.wav'/></block></form>");
    let b = vxml("<form><block><goto next='c.vxml' fetchaudio=''/></block></form>");
    let h = Host::new(
        START,
        &[
            (START, &doc),
            ("http://app/a.vxml", &a),
            ("http://app/b.vxml", &b),
            ("http://app/c.vxml", NEXT),
        ],
    );
    assert_eq!(
        options_of(&h, "http://app/a.vxml").fetch_audio,
        Some(FetchAudio {
            url: "http://media/hold.wav".into(),
            delay_ms: 500,
            minimum_ms: 3000,
        })
    );
    // a.vxml has no properties of its own: the platform's defaults (2 s, 5 s).
    assert_eq!(
        options_of(&h, "http://app/b.vxml").fetch_audio,
        Some(FetchAudio {
            url: "http://app/music/own.wav".into(),
            delay_ms: 2000,
            minimum_ms: 5000,
        })
    );
    // An empty attribute: no fetchaudio.
    assert_eq!(options_of(&h, "http://app/c.vxml").fetch_audio, None);
    assert_eq!(h.spoken(), "next");
}

#[test]
fn an_application_root_is_fetched_with_the_leafs_properties() {
    let leaf = vxml(
        "<property name='documentmaxstale' value='30'/><form><block>leaf<exit/></block></form>",
    )
    .replace(
        "<vxml version='2.1'",
        "<vxml version='2.1' application='root.vxml'",
    );
    let root = vxml("<var name='x' expr='1'/>");
    let h = Host::new(START, &[(START, &leaf), ("http://app/root.vxml", &root)]);
    assert_eq!(options_of(&h, "http://app/root.vxml").maxstale_s, Some(30));
    assert_eq!(h.spoken(), "leaf");
}

#[test]
fn bad_values_are_ignored() {
    let doc = vxml(
        "<property name='fetchtimeout' value='soon'/>\
         <property name='fetchaudiodelay' value='-1s'/>\
         <form><block><goto next='a.vxml' maxage='-3' maxstale='1e9999' fetchaudio='  '/></block></form>",
    );
    let h = Host::new(START, &[(START, &doc), ("http://app/a.vxml", NEXT)]);
    assert_eq!(options_of(&h, "http://app/a.vxml"), FetchOptions::default());
    assert_eq!(h.spoken(), "next");
}

#[test]
fn multipart_submit_with_a_recording() {
    let doc = vxml(
        "<form><record name='msg' maxtime='5s'>\
           <filled><submit next='save' method='post' enctype='multipart/form-data' namelist='msg'/></filled>\
         </record></form>",
    );
    let mut h = Host::new(START, &[(START, &doc), ("http://app/save", NEXT)]);
    h.input(Input::PromptsDone);
    assert!(h.log.iter().any(|c| matches!(c, Command::Record { .. })));
    h.input(Input::RecordingDone {
        url: Some("file:///rec/vxml-1.wav".into()),
        duration_ms: 1200,
        termchar: None,
    });
    let Some(Command::Fetch {
        method,
        params,
        options,
        ..
    }) = h.fetches().into_iter().last()
    else {
        panic!("{:?}", h.log)
    };
    assert_eq!(method, Method::Post);
    assert_eq!(
        params,
        vec![("msg".into(), "file:///rec/vxml-1.wav".into())]
    );
    assert!(options.multipart);
    assert_eq!(h.spoken(), "next");
}

#[test]
fn multipart_only_for_post() {
    let doc = vxml(
        "<form><block><submit next='a' method='get' enctype='multipart/form-data'/></block></form>",
    );
    let h = Host::new(START, &[(START, &doc), ("http://app/a", NEXT)]);
    assert!(!options_of(&h, "http://app/a").multipart);
    let doc = vxml("<form><block><submit next='a' method='post'/></block></form>");
    let h = Host::new(START, &[(START, &doc), ("http://app/a", NEXT)]);
    assert!(!options_of(&h, "http://app/a").multipart);
}

#[test]
fn a_menu_choice_carries_its_fetch_attributes() {
    let doc = vxml(
        "<menu dtmf='true'><prompt>pick</prompt>\
           <choice next='one.vxml' maxage='0' fetchaudio='wait.wav' fetchtimeout='2s'>one</choice></menu>",
    );
    let mut h = Host::new(START, &[(START, &doc), ("http://app/one.vxml", NEXT)]);
    h.input(Input::PromptsDone);
    h.keys("1");
    let o = options_of(&h, "http://app/one.vxml");
    assert_eq!((o.maxage_s, o.timeout_ms), (Some(0), Some(2000)));
    assert_eq!(
        o.fetch_audio.map(|a| a.url),
        Some("http://app/wait.wav".to_string())
    );
    assert!(h.spoken().ends_with("next"), "{}", h.spoken());
}
