//! Events per second through a 20-state routing-like chart, and snapshot size/time.
//! Run: `cargo bench -p switchboard-scxml --bench routing`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::json;
use std::sync::Arc;
use switchboard_scxml::{Document, Environment, Event, Session};

/// A routing strategy shape: 20 states (IVR menu, queueing, agent reservation, ringing,
/// connected, wrap-up), conditions and assignments on every transition, a parallel timer
/// region, and events with data.
fn chart() -> String {
    let names = [
        "arrive",
        "classify",
        "greeting",
        "menu",
        "menu_retry",
        "collect",
        "validate",
        "vip_check",
        "select_queue",
        "queued",
        "wait_agent",
        "reserve",
        "ringing",
        "connected",
        "hold",
        "resume",
        "transfer_check",
        "wrapup",
        "survey",
    ];
    let mut s = String::from(
        r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript" initial="call">
<datamodel><data id="hops" expr="0"/><data id="ud" expr="({tenant: 'demo', skill: 'sales', priority: 1})"/></datamodel>
<parallel id="call">
<state id="flow" initial="arrive">
"#,
    );
    for (i, n) in names.iter().enumerate() {
        let next = names[(i + 1) % names.len()];
        s.push_str(&format!(
            r#"<state id="{n}">
  <onentry><assign location="ud.last" expr="'{n}'"/></onentry>
  <transition event="route.step" cond="_event.data.n &gt;= 0 &amp;&amp; ud.skill == 'sales'" target="{next}">
    <assign location="hops" expr="hops + 1"/>
  </transition>
  <transition event="route.abandon" target="gone"/>
</state>
"#
        ));
    }
    s.push_str(
        r#"<final id="gone"/>
</state>
<state id="timers"><state id="t_idle"><transition event="route.tick" target="t_idle"/></state></state>
</parallel>
</scxml>"#,
    );
    s
}

fn bench(c: &mut Criterion) {
    let env = Environment::default();
    let doc: Arc<Document> = Document::load(&chart(), None, &env).expect("chart loads");
    let mut g = c.benchmark_group("scxml");
    g.throughput(Throughput::Elements(1));
    g.bench_function("event_through_20_state_chart", |b| {
        let mut s = Session::new(doc.clone(), env.clone(), "bench").expect("session");
        s.run(0);
        let mut now = 0u64;
        let mut n = 0i64;
        b.iter(|| {
            n += 1;
            now += 1;
            s.push_event(Event::external("route.step", Some(json!({ "n": n }))));
            s.run(now);
            while s.poll_output().is_some() {}
        });
    });

    let mut s = Session::new(doc.clone(), env.clone(), "bench").expect("session");
    s.run(0);
    for i in 0..7 {
        s.push_event(Event::external("route.step", Some(json!({ "n": i }))));
    }
    s.run(1);
    let bytes = s.snapshot().expect("snapshot");
    eprintln!(
        "snapshot size: {} bytes (document source {} bytes included)",
        bytes.len(),
        doc.source().len()
    );
    let compact = s.snapshot_compact().expect("snapshot");
    eprintln!(
        "compact snapshot size (document supplied at restore): {} bytes",
        compact.len()
    );
    g.bench_function("snapshot", |b| b.iter(|| s.snapshot().expect("snapshot")));
    g.bench_function("snapshot_compact", |b| {
        b.iter(|| s.snapshot_compact().expect("snapshot"))
    });
    g.bench_function("restore_reusing_document", |b| {
        b.iter_batched(
            || compact.clone(),
            |b| Session::restore_with_document(&b, env.clone(), doc.clone()).expect("restore"),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("restore_parsing_document", |b| {
        b.iter(|| Session::restore(&bytes, env.clone()).expect("restore"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
