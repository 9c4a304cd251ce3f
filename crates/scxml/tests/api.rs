//! The public API as the orchestrator uses it: load errors, extensions, limits, snapshots.

use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_scxml::{
    Document, Environment, Event, ExtensionCall, ExtensionElement, ExtensionEnv, Limits, Output,
    Session,
};

const NS: &str = "urn:switchboard:call";

fn doc(env: &Environment, body: &str) -> Result<Arc<Document>, switchboard_scxml::LoadError> {
    let src = format!(
        "<scxml xmlns=\"http://www.w3.org/2005/07/scxml\" xmlns:sb=\"{NS}\" version=\"1.0\" datamodel=\"ecmascript\">\n{body}\n</scxml>"
    );
    Document::load(&src, None, env)
}

fn drain(s: &mut Session) -> Vec<Output> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

fn final_of(outs: &[Output]) -> Option<String> {
    outs.iter().find_map(|o| match o {
        Output::Done { final_state, .. } => final_state.clone(),
        _ => None,
    })
}

#[test]
fn load_errors_name_the_line() {
    let env = Environment::default();
    let e = Document::load(
        "<scxml xmlns=\"http://www.w3.org/2005/07/scxml\">\n<state id=\"a\">\n</scxml>",
        None,
        &env,
    )
    .unwrap_err();
    assert_eq!(e.line, 3, "{e}");
    let e = doc(
        &env,
        "<state id=\"a\">\n<transition target=\"nowhere\"/>\n</state>",
    )
    .unwrap_err();
    assert_eq!(e.line, 3, "{e}");
    assert!(e.message.contains("nowhere"));
    let e = doc(&env, "<state id=\"a\" bogus=\"1\"/>").unwrap_err();
    assert_eq!(e.line, 2);
    let e = doc(
        &env,
        "<state id=\"a\"><onentry>\n<sb:route to=\"x\"/></onentry></state>",
    )
    .unwrap_err();
    assert_eq!(e.line, 3);
    assert!(e.message.contains("unknown element"), "{e}");
    let e = doc(
        &env,
        "<state id=\"a\"><onentry><send event=\"a\" eventexpr=\"'b'\"/></onentry></state>",
    )
    .unwrap_err();
    assert!(e.message.contains("mutually exclusive"));
    let e = doc(&env, "<state id=\"a\"/><state id=\"a\"/>").unwrap_err();
    assert!(e.message.contains("duplicate"));
    assert!(Document::load("<!DOCTYPE x [<!ENTITY a \"b\">]><scxml/>", None, &env).is_err());
}

struct Route {
    seen: Arc<Mutex<Vec<String>>>,
}

impl ExtensionElement for Route {
    fn execute(&self, call: &ExtensionCall, env: &mut dyn ExtensionEnv) -> Result<(), String> {
        let target = env.eval(call.attr("targetexpr").ok_or("targetexpr missing")?)?;
        self.seen
            .lock()
            .map_err(|e| e.to_string())?
            .push(format!("{target:?}"));
        env.emit(json!({ "route": target }));
        env.raise("routed", None);
        Ok(())
    }
}

#[test]
fn extension_elements_and_functions() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut env = Environment::default();
    env.register_element(NS, "route", Arc::new(Route { seen: seen.clone() }));
    env.register_function(
        "sb.agentsReady",
        Arc::new(|args| Ok(json!(args.len() as i64 + 2))),
    );
    let d = doc(
        &env,
        r#"<datamodel><data id="dn" expr="'5001'"/></datamodel>
        <state id="a">
          <onentry><sb:route targetexpr="'agent-' + dn"/></onentry>
          <transition event="routed" cond="sb.agentsReady(1) == 3" target="done"/>
          <transition event="routed" target="bad"/>
        </state>
        <final id="done"/><final id="bad"/>"#,
    )
    .unwrap();
    let mut s = Session::new(d, env, "x").unwrap();
    s.run(0);
    let outs = drain(&mut s);
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::Extension { name, payload, .. }
        if name == "route" && payload == &json!({"route": "agent-5001"}))));
    assert_eq!(final_of(&outs).as_deref(), Some("done"));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn runaway_script_is_stopped_in_its_session_only() {
    let mut env = Environment::default();
    env.limits = Limits {
        time_budget: Duration::from_millis(100),
        ..Limits::default()
    };
    let d = doc(
        &env,
        r#"<state id="a"><onentry><script>while(true){}</script></onentry>
           <transition event="error.execution" target="ok"/></state><final id="ok"/>"#,
    )
    .unwrap();
    let mut s = Session::new(d, env.clone(), "loop").unwrap();
    s.run(0);
    let outs = drain(&mut s);
    assert!(outs.iter().any(|o| matches!(o, Output::Error { .. })));
    assert_eq!(final_of(&outs).as_deref(), Some("ok"));
}

#[test]
fn snapshot_moves_a_session_with_pending_timer_and_functions() {
    let env = Environment::default();
    let d = doc(
        &env,
        r#"<datamodel><data id="n" expr="0"/></datamodel>
        <script>function bump(k) { n = n + k; return n; }</script>
        <state id="wait">
          <onentry><send id="t1" event="queue.timeout" delay="30s"/></onentry>
          <transition event="agent.ready" cond="bump(2) == 2"/>
          <transition event="queue.timeout" cond="bump(1) == 3" target="voicemail"/>
        </state>
        <final id="voicemail"/>"#,
    )
    .unwrap();
    let mut s = Session::new(d, env.clone(), "call-1").unwrap();
    s.run(1_000);
    s.push_event(Event::external("agent.ready", Some(json!({"agent": "a1"}))));
    s.run(2_000);
    assert_eq!(s.next_deadline(), Some(31_000));
    let compact = s.snapshot_compact().unwrap();
    let doc = s.document().clone();
    let bytes = s.snapshot().unwrap();
    assert!(compact.len() < bytes.len());
    drop(s);
    assert!(Session::restore(&compact, Environment::default()).is_err());
    let r2 = Session::restore_with_document(&compact, Environment::default(), doc).unwrap();
    assert_eq!(r2.next_deadline(), Some(31_000));
    let mut r = Session::restore(&bytes, env).unwrap();
    assert_eq!(r.configuration(), vec!["wait".to_string()]);
    assert_eq!(r.next_deadline(), Some(31_000));
    r.run(30_999);
    assert!(!r.is_done());
    r.run(31_000);
    assert_eq!(final_of(&drain(&mut r)).as_deref(), Some("voicemail"));
    assert!(Session::restore(b"{\"format\":\"x\"}", Environment::default()).is_err());
    assert!(Session::restore(b"garbage", Environment::default()).is_err());
}

#[test]
fn host_system_variables_are_read_only_and_redefined_after_restore() {
    let env = Environment::default();
    let d = doc(
        &env,
        r#"<datamodel><data id="ani" expr="_call.ani"/></datamodel>
        <state id="a">
          <onentry><assign location="_call" expr="1"/></onentry>
          <transition event="error.execution" cond="ani == '+1555'" target="b"/>
        </state>
        <state id="b">
          <transition event="go" cond="_call.ani == '+1666'" target="ok"/>
          <transition event="go" target="bad"/>
        </state>
        <final id="ok"/><final id="bad"/>"#,
    )
    .unwrap();
    let mut s = Session::new(d, env.clone(), "sys").unwrap();
    s.define_system_variable("_call", &json!({"ani": "+1555"}))
        .unwrap();
    s.run(0);
    assert_eq!(s.configuration(), vec!["b".to_string()]);
    let bytes = s.snapshot().unwrap();
    let mut r = Session::restore(&bytes, env).unwrap();
    r.define_system_variable("_call", &json!({"ani": "+1666"}))
        .unwrap();
    r.push_event(Event::external("go", None));
    r.run(1);
    assert_eq!(final_of(&drain(&mut r)).as_deref(), Some("ok"));
}
