//! The interpreter driven by a scripted host: fetches from a map, DTMF, timers.

mod common;

use common::Host;
use serde_json::json;
use std::time::Duration;
use switchboard_vxml::{
    transfer_failure, Command, Input, Limits, Method, TransferKind, TransferOutcome,
};

const START: &str = "http://app/start.vxml";

fn vxml(body: &str) -> String {
    format!("<?xml version='1.0'?><vxml version='2.1' xmlns='http://www.w3.org/2001/vxml'>{body}</vxml>")
}

#[test]
fn menu_dtmf_choice_goes_to_the_right_form() {
    let doc = vxml(
        "<menu id='main' dtmf='true'><prompt>Say one of <enumerate/></prompt>\
           <choice next='#sales'>sales</choice><choice next='#support'>support</choice></menu>\
         <form id='sales'><block>welcome to sales<exit expr=\"'sales'\"/></block></form>\
         <form id='support'><block>welcome to support<exit expr=\"'support'\"/></block></form>",
    );
    let mut h = Host::new(START, &[(START, &doc)]);
    assert!(
        h.spoken().contains("Say one of sales support"),
        "{}",
        h.spoken()
    );
    assert!(h.log.iter().any(|c| matches!(c, Command::Listen { .. })));
    h.input(Input::PromptsDone);
    h.keys("2");
    assert!(h.spoken().ends_with("welcome to support"), "{}", h.spoken());
    assert_eq!(h.exit_values(), Some(json!("support")));
    assert!(h.vx.is_done());
}

fn digits_doc() -> String {
    vxml(
        "<form><field name='pin' type='digits?maxlength=4'><prompt>pin please</prompt>\
           <filled><exit namelist='pin'/></filled></field></form>",
    )
}

#[test]
fn digits_field_completes_on_termchar() {
    let mut h = Host::new(START, &[(START, &digits_doc())]);
    h.input(Input::PromptsDone);
    h.keys("12#");
    assert_eq!(h.exit_values(), Some(json!({"pin": "12"})));
}

#[test]
fn digits_field_completes_on_interdigit_timeout() {
    let mut h = Host::new(START, &[(START, &digits_doc())]);
    h.input(Input::PromptsDone);
    h.keys("123");
    assert_eq!(h.exit_values(), None);
    let before = h.now;
    h.timeout();
    assert_eq!(h.now - before, 3000, "default interdigittimeout");
    assert_eq!(h.exit_values(), Some(json!({"pin": "123"})));
}

#[test]
fn digits_field_completes_at_maxlength() {
    let mut h = Host::new(START, &[(START, &digits_doc())]);
    h.input(Input::PromptsDone);
    h.keys("1234");
    assert_eq!(h.exit_values(), Some(json!({"pin": "1234"})));
}

#[test]
fn nomatch_noinput_counters_reprompt_and_third_strike() {
    let doc = vxml(
        "<form><property name='timeout' value='2s'/>\
           <field name='ok' type='boolean'><prompt count='1'>first</prompt><prompt count='2'>second</prompt>\
           <nomatch>bad key<reprompt/></nomatch>\
           <noinput>nothing heard<reprompt/></noinput>\
           <catch event='nomatch noinput' count='3'>goodbye<exit expr=\"'strikes'\"/></catch>\
           <filled><exit namelist='ok'/></filled></field></form>",
    );
    let mut h = Host::new(START, &[(START, &doc)]);
    h.input(Input::PromptsDone);
    h.keys("7");
    assert_eq!(h.spoken(), "first|bad key second");
    h.input(Input::PromptsDone);
    h.timeout();
    assert_eq!(h.spoken(), "first|bad key second|nothing heard second");
    h.input(Input::PromptsDone);
    h.keys("9");
    // nomatch counter is 2 (below 3): still the nomatch handler
    assert!(h.spoken().ends_with("bad key second"), "{}", h.spoken());
    h.input(Input::PromptsDone);
    h.keys("8");
    assert!(h.spoken().ends_with("goodbye"), "{}", h.spoken());
    assert_eq!(h.exit_values(), Some(json!("strikes")));
}

#[test]
fn default_nomatch_handler_reprompts_and_filled_gets_value() {
    let doc = vxml(
        "<form><field name='ok' type='boolean'><prompt>yes or no</prompt>\
           <filled><exit namelist='ok'/></filled></field></form>",
    );
    let mut h = Host::new(START, &[(START, &doc)]);
    h.input(Input::PromptsDone);
    h.keys("5");
    assert_eq!(h.spoken(), "yes or no|yes or no");
    h.input(Input::PromptsDone);
    h.keys("2");
    assert_eq!(h.exit_values(), Some(json!({"ok": false})));
}

#[test]
fn submit_produces_a_fetch_with_the_namelist() {
    let doc = vxml(
        "<form><var name='lang' expr=\"'en'\"/><field name='acct' type='digits?length=3'>\
           <filled><submit next='/cgi/acct' method='post' namelist='acct lang'/></filled></field></form>",
    );
    let next = vxml("<form><block>thanks<exit/></block></form>");
    let mut h = Host::new(START, &[(START, &doc), ("http://app/cgi/acct", &next)]);
    h.input(Input::PromptsDone);
    h.keys("123");
    let f = h.fetches();
    assert_eq!(
        f[1],
        Command::Fetch {
            url: "http://app/cgi/acct".into(),
            method: Method::Post,
            params: vec![("acct".into(), "123".into()), ("lang".into(), "en".into())],
            options: Default::default(),
        }
    );
    assert_eq!(h.spoken(), "thanks");
    assert!(h.vx.is_done());
}

#[test]
fn exit_returns_namelist_values_and_scopes_chain() {
    let app = vxml("<var name='tenant' expr=\"'demo'\"/><script>function twice(x) { return 2 * x; } var seen = 1;</script>");
    let doc = vxml(
        "<form><var name='n' expr='twice(21)'/><block>\
           <assign name='application.seen' expr='seen + 1'/>\
           <var name='t' expr='application.tenant + document.d'/>\
           <exit namelist='n t seen'/></block></form><var name='d' expr=\"'!'\"/>",
    )
    .replace("<vxml ", "<vxml application='root.vxml' ");
    let h = Host::new(START, &[(START, &doc), ("http://app/root.vxml", &app)]);
    assert_eq!(h.fetches().len(), 2, "{:?}", h.log);
    assert_eq!(
        h.exit_values(),
        Some(json!({"n": 42, "t": "demo!", "seen": 2})),
        "{:?}",
        h.log
    );
}

#[test]
fn fetch_failure_raises_badfetch_caught_by_the_document() {
    let doc = vxml(
        "<catch event='error.badfetch'><exit expr='_event + \":\" + _message'/></catch>\
         <form><block><goto next='missing.vxml'/></block></form>",
    );
    let h = Host::new(START, &[(START, &doc)]);
    assert_eq!(
        h.exit_values(),
        Some(json!("error.badfetch.http.404:HTTP 404: Not Found"))
    );
}

#[test]
fn unfetchable_or_broken_first_page_ends_with_default_error_handling() {
    let h = Host::new(START, &[]);
    assert!(h.vx.is_done());
    assert!(h.logs()[0].starts_with("error.badfetch"), "{:?}", h.logs());
    assert_eq!(h.exit_values(), Some(serde_json::Value::Null));

    let h = Host::new(
        START,
        &[(START, "<vxml><form><block>unclosed</form></vxml>")],
    );
    assert!(h.vx.is_done());
    assert!(h.logs()[0].starts_with("error.badfetch"));
}

#[test]
fn bad_expression_raises_error_semantic() {
    let doc = vxml(
        "<error>oops <value expr='_event'/><exit/></error>\
         <form><block><assign name='undeclared' expr='1'/></block></form>",
    );
    let h = Host::new(START, &[(START, &doc)]);
    assert_eq!(h.spoken(), "oops error.semantic");
}

#[test]
fn looping_script_raises_an_error_in_that_interpreter_only() {
    let looping = vxml(
        "<catch event='error'><exit expr='_event'/></catch>\
         <form><block><script>while(true){}</script></block></form>",
    );
    let fine = vxml("<form><block><exit expr='1+1'/></block></form>");
    let limits = Limits {
        time_budget: Duration::from_millis(100),
        ..Limits::default()
    };
    let mut a = Host::with_limits(START, &[(START, &looping)], limits);
    let mut b = Host::new(START, &[(START, &fine)]);
    a.pump();
    b.pump();
    assert_eq!(a.exit_values(), Some(json!("error.semantic")));
    assert_eq!(b.exit_values(), Some(json!(2)));
}

#[test]
fn srgs_dtmf_grammar_and_goto_nextitem() {
    let doc = vxml(
        "<form><field name='code'><grammar mode='dtmf' root='r' version='1.0' xmlns='http://www.w3.org/2001/06/grammar'>\
           <rule id='r'><item repeat='2'><ruleref uri='#d'/></item><item>*</item></rule>\
           <rule id='d'><one-of><item>4</item><item>5</item></one-of></rule></grammar>\
           <filled><if cond=\"code == '45*'\"><goto nextitem='done'/><else/><exit expr=\"'wrong'\"/></if></filled></field>\
           <block name='skipped'>never</block>\
           <block name='done'><exit expr='code$.utterance'/></block></form>",
    );
    let mut h = Host::new(START, &[(START, &doc)]);
    h.keys("45*");
    assert_eq!(h.exit_values(), Some(json!("45*")));
    assert!(!h.spoken().contains("never"));
}

#[test]
fn audio_with_fallback_break_and_log() {
    let doc = vxml(
        "<form><block><prompt><audio src='hello.wav'>hello</audio><break time='300ms'/>\
           <value expr='1+2'/></prompt><log label='trace'>n=<value expr='7'/></log><var name='x' expr='7'/><disconnect namelist='x'/></block></form>",
    );
    let h = Host::new(START, &[(START, &doc)]);
    assert_eq!(h.spoken(), "[http://app/hello.wav:hello] <300> 3");
    assert!(h.log.contains(&Command::Log {
        label: Some("trace".into()),
        text: "n=7".into()
    }));
    assert!(h.log.contains(&Command::Hangup {
        values: json!({"x": 7})
    }));
    assert!(h.vx.is_done());
}

#[test]
fn record_and_transfer_are_handed_to_the_host() {
    let doc = vxml(
        "<form><record name='msg' maxtime='10s'><prompt>speak</prompt></record>\
           <transfer name='xfer' dest='sip:agent@x' bridge='true' connecttimeout='5s'/>\
           <block><exit namelist='msg xfer'/></block></form>",
    );
    let mut h = Host::new(START, &[(START, &doc)]);
    assert!(h.log.iter().any(|c| matches!(
        c,
        Command::Record {
            maxtime_ms: 10_000,
            ..
        }
    )));
    h.input(Input::RecordingDone {
        url: Some("file:///r.wav".into()),
        duration_ms: 1200,
        termchar: None,
    });
    assert!(h.log.iter().any(
        |c| matches!(c, Command::Transfer { dest, connect_timeout_ms: 5000, .. } if dest == "sip:agent@x")
    ));
    h.input(Input::TransferResult {
        duration_ms: 0,
        status: "busy".into(),
    });
    assert_eq!(
        h.exit_values(),
        Some(json!({"msg": "file:///r.wav", "xfer": "busy"}))
    );
}

#[test]
fn a_transfer_the_platform_cannot_do_throws_its_error_event() {
    let doc = vxml(
        "<form><transfer name='xfer' dest='sip:agent@x' bridge='false'>\
           <catch event='error.unsupported.transfer.blind'><exit expr=\"'no blind: ' + _event\"/></catch>\
           <filled><exit expr=\"'filled'\"/></filled></transfer></form>",
    );
    let mut cfg = switchboard_vxml::Config::new(START);
    cfg.blind_transfer = false;
    let h = Host::with_config(cfg, &[(START, &doc)]);
    assert!(!h.log.iter().any(|c| matches!(c, Command::Transfer { .. })));
    assert_eq!(
        h.exit_values(),
        Some(json!("no blind: error.unsupported.transfer.blind")),
        "{:?}",
        h.log
    );
}

#[test]
fn a_host_may_fail_a_bridge_transfer_with_an_error_event() {
    let doc = vxml(
        "<form><transfer name='xfer' dest='sip:agent@x' bridge='true'>\
           <catch event='error.connection.baddestination'><exit expr=\"'bad: ' + _event\"/></catch>\
           <filled><exit expr=\"'filled'\"/></filled></transfer></form>",
    );
    let mut h = Host::new(START, &[(START, &doc)]);
    h.input(Input::TransferResult {
        duration_ms: 0,
        status: "error.connection.baddestination".into(),
    });
    assert_eq!(
        h.exit_values(),
        Some(json!("bad: error.connection.baddestination"))
    );
}

#[test]
fn the_first_document_may_be_posted() {
    let mut cfg = switchboard_vxml::Config::new(START);
    cfg.method = Method::Post;
    cfg.params = vec![("case".into(), "42".into())];
    let mut vx = switchboard_vxml::Interpreter::new(cfg).expect("engine");
    assert_eq!(
        vx.poll_command(),
        Some(Command::Fetch {
            url: START.into(),
            method: Method::Post,
            params: vec![("case".into(), "42".into())],
            options: Default::default(),
        })
    );
}

#[test]
fn session_variables_from_the_host_are_readable() {
    let mut cfg = switchboard_vxml::Config::new(START);
    cfg.session = json!({
        "connection": {
            "local": {"uri": "sip:dialog@mcp"},
            "remote": {"uri": "sip:alice@example.com"},
            "protocol": {"name": "sip", "version": "2.0",
                         "sip": {"headers": {"call-id": "c1"}, "requesturi": {"aai": "x"}}},
            "aai": "x"
        }
    });
    let doc = vxml(
        "<form><block><exit expr=\"session.connection.protocol.name + ' ' + session.connection.remote.uri + ' ' \
           + session.connection.protocol.sip.headers['call-id'] + ' ' + session.connection.aai\"/></block></form>",
    );
    let mut vx = switchboard_vxml::Interpreter::new(cfg).expect("engine");
    let Some(Command::Fetch { url, .. }) = vx.poll_command() else {
        panic!("no fetch")
    };
    vx.handle(
        Input::DocumentFetched {
            url,
            result: Ok(doc),
        },
        0,
    );
    let mut exit = None;
    while let Some(c) = vx.poll_command() {
        if let Command::Exit { values } = c {
            exit = Some(values);
        }
    }
    assert_eq!(exit, Some(json!("sip sip:alice@example.com c1 x")));
}

#[test]
fn caller_hangup_throws_disconnect_and_ends() {
    let mut h = Host::new(START, &[(START, &digits_doc())]);
    h.input(Input::Hangup);
    assert!(h.vx.is_done());
    assert_eq!(h.vx.next_deadline(), None);
}

#[test]
fn subdialog_gets_params_and_returns_values() {
    let doc = vxml(
        "<var name='x' expr='1'/><form><subdialog name='r' src='sub.vxml'><param name='n' expr='20'/>\
           <filled><exit expr='r.doubled + x'/></filled></subdialog></form>",
    );
    let sub = vxml(
        "<form><var name='n' expr='0'/><block><if cond='typeof x == \"undefined\"'>\
           <var name='doubled' expr='n * 2'/><return namelist='doubled'/></if><exit expr=\"'leaked'\"/></block></form>",
    );
    let h = Host::new(START, &[(START, &doc), ("http://app/sub.vxml", &sub)]);
    assert_eq!(h.exit_values(), Some(json!(41)));
}

#[test]
fn external_script_and_grammar_are_fetched_before_use() {
    let doc = vxml(
        "<script src='lib.js'/><form><field name='k'><grammar src='keys.grxml'/>\
           <filled><exit expr='label(k)'/></filled></field></form>",
    );
    let lib = "function label(k) { return 'key ' + k; }";
    let grxml =
        "<grammar xmlns='http://www.w3.org/2001/06/grammar' mode='dtmf' root='r' version='1.0'>\
                 <rule id='r'><one-of><item>7</item><item>9</item></one-of></rule></grammar>";
    let mut h = Host::new(
        START,
        &[
            (START, &doc),
            ("http://app/lib.js", lib),
            ("http://app/keys.grxml", grxml),
        ],
    );
    assert_eq!(h.fetches().len(), 3);
    h.keys("9");
    assert_eq!(h.exit_values(), Some(json!("key 9")));
}

#[test]
fn script_function_declarations_and_expressions() {
    let doc = vxml(
        "<error><exit expr='_message'/></error><form><block><script><![CDATA[
        application.funct = function sum(n) { return (n == 0)? 0 : n + sum(n-1); }
        function sum2(n) { return (n == 0)? 0 : n + sum2(n-1); }
        application.funct2 = sum2;
    ]]></script></block><block><exit expr='application.funct2(4)'/></block></form>",
    );
    let h = Host::new(START, &[(START, &doc)]);
    assert_eq!(h.exit_values(), Some(json!(10)));
}

#[test]
fn applications_that_loop_on_their_own_are_ended() {
    let rethrow = vxml(
        "<catch event='error'><throw event='error.again'/></catch><form><block><throw event='error.x'/></block></form>",
    );
    let h = Host::new(START, &[(START, &rethrow)]);
    assert!(h.vx.is_done());
    let selfloop =
        vxml("<form><block name='b'><clear namelist='b'/><goto nextitem='b'/></block></form>");
    let h = Host::new(START, &[(START, &selfloop)]);
    assert!(h.vx.is_done());
    assert!(h.logs()[0].contains("loops"), "{:?}", h.logs());
}

#[test]
fn document_link_is_active_in_every_field() {
    let doc = vxml(
        "<link dtmf='0' next='#operator'/><link dtmf='9' event='help'/>\
         <form><field name='pin' type='digits?length=4'><prompt>pin</prompt><help>no help<reprompt/></help>\
           <filled><exit namelist='pin'/></filled></field></form>\
         <form id='operator'><block><exit expr=\"'operator'\"/></block></form>",
    );
    let mut h = Host::new(START, &[(START, &doc)]);
    // "9" could also start a pin: the link wins when the interdigit timeout ends the input
    h.keys("9");
    h.timeout();
    assert_eq!(h.spoken(), "pin|no help pin");
    h.keys("0");
    h.timeout();
    assert_eq!(h.exit_values(), Some(json!("operator")));
}

#[test]
fn foreach_in_prompts_and_executable_content() {
    let doc = vxml(
        "<form><var name='sum' expr='0'/><block><prompt><foreach array='[1, 2]' item='n'>item <value expr='n'/></foreach></prompt>\
           <foreach array='[10, 20, 30]' item='v'><assign name='sum' expr='sum + v'/></foreach>\
           <exit namelist='sum'/></block></form>",
    );
    let h = Host::new(START, &[(START, &doc)]);
    assert_eq!(h.spoken(), "item 1 item 2");
    assert_eq!(h.exit_values(), Some(json!({"sum": 60})));
}

#[test]
fn session_variables_and_termchar_property() {
    let mut cfg = switchboard_vxml::Config::new(START);
    cfg.session = json!({"connection": {"remote": {"uri": "sip:alice@x"}}});
    let mut vx = switchboard_vxml::Interpreter::new(cfg).unwrap();
    let Some(Command::Fetch { url, .. }) = vx.poll_command() else {
        panic!("first command is the fetch")
    };
    let doc = vxml(
        "<property name='termchar' value='*'/><form><field name='d' type='digits'>\
           <filled><exit expr='session.connection.remote.uri + \" \" + d'/></filled></field></form>",
    );
    vx.handle(
        Input::DocumentFetched {
            url,
            result: Ok(doc),
        },
        0,
    );
    for k in "42*".chars() {
        vx.handle(Input::Dtmf(k), 10);
    }
    let exit = std::iter::from_fn(|| vx.poll_command()).find(|c| matches!(c, Command::Exit { .. }));
    assert_eq!(
        exit,
        Some(Command::Exit {
            values: json!("sip:alice@x 42")
        })
    );
}

#[test]
fn data_exposes_fetched_xml() {
    let doc = vxml(
        "<form><block><data name='q' src='queue.xml'/>\
           <exit expr=\"q.documentElement.getAttribute('name') + ':' + q.getElementsByTagName('agent').length + ':' + q.documentElement.getElementsByTagName('agent')[1].textContent\"/>\
         </block></form>",
    );
    let xml = "<queue name='sales'><agent>ann</agent><agent>bob</agent></queue>";
    let h = Host::new(START, &[(START, &doc), ("http://app/queue.xml", xml)]);
    assert_eq!(h.exit_values(), Some(json!("sales:2:bob")));
}

#[test]
fn enumerate_template_and_bargein_false() {
    let doc = vxml(
        "<menu dtmf='true'><prompt bargein='false'><enumerate>for <value expr='_prompt'/> press <value expr='_dtmf'/>,</enumerate></prompt>\
           <choice next='#a'>sales</choice><choice next='#b'>support</choice></menu>\
         <form id='a'><block><exit expr=\"'a'\"/></block></form><form id='b'><block><exit expr=\"'b'\"/></block></form>",
    );
    let mut h = Host::new(START, &[(START, &doc)]);
    assert_eq!(h.spoken(), "for sales press 1 , for support press 2 ,");
    assert!(matches!(h.log[1], Command::Play { bargein: false, .. }));
    h.keys("2"); // dropped: the prompt cannot be interrupted
    assert_eq!(h.exit_values(), None);
    h.input(Input::PromptsDone);
    h.keys("2");
    assert_eq!(h.exit_values(), Some(json!("b")));
}

#[test]
fn srgs_tags_give_the_interpretation() {
    let doc = vxml(
        "<form><field name='dept'><grammar mode='dtmf' root='r' version='1.0' xmlns='http://www.w3.org/2001/06/grammar'>\
           <rule id='r'><one-of><item>1<tag>out.dept = 'sales';</tag></item><item>2<tag>out.dept = 'support';</tag></item></one-of>\
           <ruleref uri='#n'/><tag>out.n = rules.n;</tag></rule>\
           <rule id='n'><item repeat='1-2'><one-of><item>0</item><item>5</item></one-of></item></rule></grammar>\
           <filled><exit expr=\"dept + ' ' + dept$.interpretation.n\"/></filled></field></form>",
    );
    let mut h = Host::new(START, &[(START, &doc)]);
    h.keys("205#");
    assert_eq!(h.exit_values(), Some(json!("support 05")));
}

#[test]
fn form_grammar_fills_several_fields() {
    let doc = vxml(
        "<form><grammar mode='dtmf' root='r' version='1.0' xmlns='http://www.w3.org/2001/06/grammar'>\
           <rule id='r'><item repeat='2'><ruleref uri='#d'/></item><tag>out.from = rules.latest(); out.to = 'B';</tag></rule>\
           <rule id='d'><one-of><item>1</item><item>2</item></one-of></rule></grammar>\
           <initial name='start'><prompt>from and to?</prompt></initial>\
           <field name='from' type='digits'><prompt>from?</prompt></field>\
           <field name='to' type='digits'><prompt>to?</prompt></field>\
           <filled mode='all'><exit namelist='start from to'/></filled></form>",
    );
    let mut h = Host::new(START, &[(START, &doc)]);
    assert_eq!(h.spoken(), "from and to?");
    h.keys("12");
    assert_eq!(
        h.exit_values(),
        Some(json!({"start": true, "from": "2", "to": "B"}))
    );
}

#[test]
fn clear_of_an_undeclared_name_is_error_semantic() {
    let doc = vxml(
        "<catch event='error.semantic'><exit expr='typeof nosuch'/></catch>\
         <form><block><clear namelist='nosuch'/></block></form>",
    );
    let h = Host::new(START, &[(START, &doc)]);
    assert_eq!(h.exit_values(), Some(json!("undefined")));
}

#[test]
fn abnf_grammar_inline() {
    let doc = vxml(
        "<form><field name='c'><grammar mode='dtmf' type='application/srgs'>#ABNF 1.0; root $r; $r = 7 (8 | 9) {out = 'ok'};</grammar>\
           <filled><exit expr='c'/></filled></field></form>",
    );
    let mut h = Host::new(START, &[(START, &doc)]);
    h.keys("79");
    assert_eq!(h.exit_values(), Some(json!("ok")));
}

#[test]
fn trace_logs_the_fia_steps() {
    let mut cfg = switchboard_vxml::Config::new(START);
    cfg.trace = true;
    let mut vx = switchboard_vxml::Interpreter::new(cfg).unwrap();
    let doc = vxml("<form id='f'><field name='b' type='boolean'/></form>");
    vx.handle(
        Input::DocumentFetched {
            url: START.into(),
            result: Ok(doc),
        },
        0,
    );
    vx.handle(Input::Dtmf('7'), 0);
    let trace: Vec<String> = std::iter::from_fn(|| vx.poll_command())
        .filter_map(|c| match c {
            Command::Log {
                label: Some(l),
                text,
            } if l == "fia" => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(
        trace,
        [
            "fetch http://app/start.vxml",
            "document http://app/start.vxml",
            "form f",
            "collect <field> b",
            "event nomatch",
            "collect <field> b"
        ]
    );
}

#[test]
fn typeahead_during_a_fetch_and_prompt_timeout() {
    let first = vxml("<form><block>one moment<goto next='menu.vxml'/></block></form>");
    let menu = vxml(
        "<form><field name='a' type='digits?length=2'><prompt timeout='7s'>code?</prompt>\
           <filled><exit namelist='a'/></filled></field></form>",
    );
    let mut vx = switchboard_vxml::Interpreter::new(switchboard_vxml::Config::new(START)).unwrap();
    vx.handle(
        Input::DocumentFetched {
            url: START.into(),
            result: Ok(first),
        },
        0,
    );
    // the caller types while the next page is being fetched
    vx.handle(Input::Dtmf('4'), 0);
    vx.handle(Input::Dtmf('2'), 0);
    let url = "http://app/menu.vxml".to_string();
    vx.handle(
        Input::DocumentFetched {
            url,
            result: Ok(menu),
        },
        0,
    );
    let cmds: Vec<Command> = std::iter::from_fn(|| vx.poll_command()).collect();
    assert!(cmds.iter().any(|c| matches!(
        c,
        Command::Listen {
            timeout_ms: 7000,
            ..
        }
    )));
    assert!(cmds.contains(&Command::Exit {
        values: json!({"a": "42"})
    }));
}

#[test]
fn a_grammar_that_spells_the_termchar_gets_it() {
    let doc = vxml(
        "<form><field name='k'><grammar mode='dtmf' root='r'><rule id='r'>1 #</rule></grammar>\
           <filled><exit expr='k'/></filled></field></form>",
    );
    let mut h = Host::new(START, &[(START, &doc)]);
    h.keys("1#");
    assert_eq!(h.exit_values(), Some(json!("1#")));
}

#[test]
fn inputmodes_voice_disables_keys() {
    let doc = vxml(
        "<property name='inputmodes' value='voice'/><form><field name='b' type='boolean'>\
           <nomatch><exit expr=\"'nomatch'\"/></nomatch></field></form>",
    );
    let mut h = Host::new(START, &[(START, &doc)]);
    h.keys("1");
    assert_eq!(h.exit_values(), Some(json!("nomatch")));
}

#[test]
fn caller_hangup_during_a_bridge_leaves_the_transfer_unfilled() {
    let doc = vxml(
        "<catch event='connection.disconnect.hangup'><exit expr='typeof x'/></catch>\
         <form><transfer name='x' dest='sip:agent@x' bridge='true'><filled><exit expr=\"'filled'\"/></filled></transfer></form>",
    );
    let mut h = Host::new(START, &[(START, &doc)]);
    h.input(Input::TransferResult {
        status: "near_party_disconnect".into(),
        duration_ms: 3000,
    });
    assert_eq!(h.exit_values(), Some(json!("undefined")));
}

#[test]
fn a_bridge_transfer_says_what_the_host_needs_and_fills_the_result_with_its_duration() {
    let doc = vxml(
        "<form><transfer name='x' destexpr=\"'sip:agent@' + 'x'\" type='bridge' connecttimeout='7s' \
           maxtime='60s' transferaudio='tone:ringback' aai='case=42'>\
           <filled><exit expr=\"x + '/' + x$.duration\"/></filled></transfer></form>",
    );
    let mut h = Host::new(START, &[(START, &doc)]);
    let cmd = h
        .log
        .iter()
        .find(|c| matches!(c, Command::Transfer { .. }))
        .cloned();
    assert_eq!(
        cmd,
        Some(Command::Transfer {
            dest: "sip:agent@x".into(),
            kind: TransferKind::Bridge,
            connect_timeout_ms: 7000,
            maxtime_ms: 60_000,
            transfer_audio: Some("tone:ringback".into()),
            aai: Some("case=42".into()),
            grammars: vec![],
        })
    );
    // Keys during a bridge without grammars of its own are not input.
    h.keys("12");
    assert!(!h.log.iter().any(|c| matches!(c, Command::EndTransfer)));
    h.input(Input::TransferResult {
        status: "far_end_disconnect".into(),
        duration_ms: 12_400,
    });
    assert_eq!(h.exit_values(), Some(json!("far_end_disconnect/12")));
}

#[test]
fn a_key_matching_the_transfer_grammar_ends_the_bridge_as_near_end_disconnect() {
    let doc = vxml(
        "<form><transfer name='x' dest='sip:agent@x' bridge='true'>\
           <grammar mode='dtmf' version='1.0' root='r'><rule id='r'><item>*9</item></rule></grammar>\
           <filled><exit expr=\"[x, x$.inputmode, x$.utterance, x$.duration].join('/')\"/></filled></transfer></form>",
    );
    let mut h = Host::new(START, &[(START, &doc)]);
    assert!(h
        .log
        .iter()
        .any(|c| matches!(c, Command::Transfer { grammars, .. } if grammars.len() == 1)));
    // A key that matches nothing starts over without a nomatch.
    h.keys("5*");
    assert!(!h.log.iter().any(|c| matches!(c, Command::EndTransfer)));
    h.keys("9");
    assert!(h.log.iter().any(|c| matches!(c, Command::EndTransfer)));
    assert_eq!(h.exit_values(), None, "waits for the host to end the call");
    h.input(Input::TransferResult {
        status: "near_end_disconnect".into(),
        duration_ms: 3000,
    });
    assert_eq!(
        h.exit_values(),
        Some(json!("near_end_disconnect/dtmf/*9/3"))
    );
}

#[test]
fn a_consultation_transfer_disconnects_once_transferred_and_reports_failures() {
    let doc = vxml(
        "<catch event='connection.disconnect.transfer'><exit expr=\"'gone: ' + typeof x\"/></catch>\
         <form><transfer name='x' dest='sip:agent@x' type='consultation'>\
           <filled><exit namelist='x'/></filled></transfer></form>",
    );
    let mut h = Host::new(START, &[(START, &doc)]);
    assert!(h.log.iter().any(|c| matches!(
        c,
        Command::Transfer {
            kind: TransferKind::Consultation,
            ..
        }
    )));
    h.input(Input::TransferResult {
        status: "transferred".into(),
        duration_ms: 0,
    });
    assert_eq!(h.exit_values(), Some(json!("gone: undefined")));

    let mut h = Host::new(START, &[(START, &doc)]);
    h.input(Input::TransferResult {
        status: transfer_failure(486).into(),
        duration_ms: 0,
    });
    assert_eq!(h.exit_values(), Some(json!({"x": "busy"})));
}

#[test]
fn sip_failures_map_to_the_voicexml_transfer_results() {
    assert_eq!(transfer_failure(486), "busy");
    assert_eq!(transfer_failure(600), "busy");
    assert_eq!(transfer_failure(408), "noanswer");
    assert_eq!(transfer_failure(480), "noanswer");
    assert_eq!(transfer_failure(503), "network_busy");
    assert_eq!(transfer_failure(404), "network_busy");
    assert_eq!(transfer_failure(302), "unknown");
    assert_eq!(transfer_failure(0), "unknown");
}

#[test]
fn an_unknown_transfer_type_is_a_badfetch() {
    let doc = vxml(
        "<catch event='error.badfetch'><exit expr=\"'bad'\"/></catch>\
         <form><transfer name='x' dest='sip:agent@x' type='sideways'/></form>",
    );
    let h = Host::new(START, &[(START, &doc)]);
    assert_eq!(h.exit_values(), Some(json!("bad")));
}

#[test]
fn a_transfer_the_platform_ends_keeps_its_first_reason() {
    let mut o = TransferOutcome::default();
    assert!(!o.ending());
    assert_eq!(o.failed(486), "busy");
    assert_eq!(o.ended(true), "far_end_disconnect");
    assert_eq!(o.ended(false), "network_disconnect");
    o.end_as("maxtime_disconnect");
    o.end_as("near_end_disconnect");
    assert!(o.ending());
    // The far end's answer to our hang-up (a BYE, or 487 to our CANCEL) does not change it.
    assert_eq!(o.ended(true), "maxtime_disconnect");
    assert_eq!(o.failed(487), "maxtime_disconnect");
}

fn deposit_doc() -> String {
    vxml(
        "<form><catch event='connection.disconnect.hangup'>\
           <if cond='msg != undefined'>\
             <log>kept <value expr=\"msg$.duration + ',' + msg$.size + ',' + msg$.termchar + ',' + msg$.maxtime\"/></log>\
             <submit next='/save' method='post' enctype='multipart/form-data' namelist='msg'/>\
           <else/><log>nothing</log><exit/></if></catch>\
         <record name='msg' maxtime='60s'><prompt>speak</prompt>\
           <filled><log>filled</log></filled></record></form>",
    )
}

#[test]
fn a_hangup_during_record_leaves_the_recording_to_the_hangup_handler() {
    let saved = vxml("<form><block><log>saved</log><exit/></block></form>");
    let mut h = Host::new(
        START,
        &[(START, &deposit_doc()), ("http://app/save", &saved)],
    );
    h.input(Input::PromptsDone);
    h.input(Input::HangupDuringRecording {
        url: Some("file:///r.wav".into()),
        duration_ms: 3200,
        size: 51_244,
    });
    let logs = h.logs();
    assert!(
        logs.iter().any(|l| l.contains("kept3200,51244,null,false")),
        "{logs:?}"
    );
    assert!(!logs.iter().any(|l| l.contains("filled")), "{logs:?}");
    let f = h.fetches();
    assert!(
        matches!(
            &f[1],
            Command::Fetch { url, method: Method::Post, params, options }
                if url == "http://app/save"
                    && params == &vec![("msg".to_string(), "file:///r.wav".to_string())]
                    && options.multipart
        ),
        "{f:?}"
    );
    // The answer is fetched; with the caller gone the session then ends.
    assert!(h.vx.is_done());
}

#[test]
fn a_hangup_during_record_with_nothing_recorded_leaves_the_variable_undefined() {
    let mut h = Host::new(START, &[(START, &deposit_doc())]);
    h.input(Input::PromptsDone);
    h.input(Input::HangupDuringRecording {
        url: None,
        duration_ms: 0,
        size: 0,
    });
    let logs = h.logs();
    assert!(logs.iter().any(|l| l.contains("nothing")), "{logs:?}");
    assert_eq!(h.fetches().len(), 1);
    assert!(h.vx.is_done());
}
