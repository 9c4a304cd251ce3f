//! How fast `call-state` folds events.
//!
//! * `fold/reducer`: the pure reducer alone, a 6-event call (ringing, established, attached
//!   data, held, retrieved, released) per iteration.
//! * `consume/embedded`: the role end to end on an embedded bus: the events of 200 such calls
//!   published, then the time until the role has folded them all (read from the group, JSON
//!   parse, fold, ack).
//!
//! `cargo bench -p switchboard-services --bench call_state`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchboard_bus::{EmbeddedBus, SharedBus};
use switchboard_config::{Config, Tenant};
use switchboard_events::{CallAttrs, CallType, ConnId, Event, PartyRole};
use switchboard_services::call_state::{self, CallBook, Limits, Options};
use tokio_util::sync::CancellationToken;

fn call_events(conn: u64, ts: u64) -> Vec<Event> {
    let attrs = |dt: u64| CallAttrs {
        tenant: "demo".into(),
        conn_id: Some(ConnId(conn)),
        call_id: Some(format!("{conn:x}@carrier")),
        this_dn: "1002".into(),
        other_dn: Some("+15551234567".into()),
        this_role: Some(PartyRole::Destination),
        other_role: Some(PartyRole::Origination),
        call_type: Some(CallType::Inbound),
        ts_ms: ts + dt,
        ..Default::default()
    };
    let mut data = attrs(2);
    data.user_data
        .insert("account".into(), serde_json::json!("4711"));
    vec![
        Event::EventRinging(attrs(0)),
        Event::EventEstablished(attrs(1)),
        Event::EventAttachedDataChanged(data),
        Event::EventHeld(attrs(3)),
        Event::EventRetrieved(attrs(4)),
        Event::EventReleased(attrs(5)),
    ]
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn fold(c: &mut Criterion) {
    let mut g = c.benchmark_group("fold");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(6));
    let mut book = CallBook::new(Limits::default());
    let mut conn = 0u64;
    let base = now_ms();
    g.bench_function("reducer", |b| {
        b.iter(|| {
            conn += 1;
            for e in call_events(conn, base + conn) {
                book.apply(&e);
            }
        })
    });
    g.finish();
}

fn consume(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let bus: SharedBus =
        Arc::new(EmbeddedBus::open(&dir.path().join("bench.db")).expect("embedded bus"));
    let config = Arc::new(Config {
        tenants: vec![Tenant::new("demo", "switchboard")],
        ..Config::default()
    });
    let drain = CancellationToken::new();
    let options = Options {
        limits: Limits {
            max_released: 1_000_000,
            ..Limits::default()
        },
        snapshot_every: 0,
        consumer: "bench".into(),
    };
    let role = rt
        .block_on(call_state::start_with(
            config,
            bus.clone(),
            drain.clone(),
            options,
        ))
        .expect("call-state starts");
    const CALLS: u64 = 200;
    let mut next = 1u64;
    let mut g = c.benchmark_group("consume");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(CALLS * 6));
    g.bench_function("embedded", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let first = next;
                next += CALLS;
                let events: Vec<Vec<u8>> = (first..next)
                    .flat_map(|n| call_events(n, now_ms()))
                    .map(|e| e.to_json().into_bytes())
                    .collect();
                let state = role.state.clone();
                total += rt.block_on(async {
                    let started = Instant::now();
                    // Published by 8 tasks at once, as several SIP Server legs would.
                    let mut set = tokio::task::JoinSet::new();
                    for chunk in events.chunks(events.len().div_ceil(8)) {
                        let (bus, chunk) = (bus.clone(), chunk.to_vec());
                        set.spawn(async move {
                            for p in chunk {
                                bus.publish("events:demo", &p).await.expect("publish");
                            }
                        });
                    }
                    while set.join_next().await.is_some() {}
                    let last = bus.last_id("events:demo").await.expect("last_id");
                    let deadline = Instant::now() + Duration::from_secs(60);
                    // Per-stream order: the last entry folded means all of them are.
                    while state.position("demo") != last {
                        assert!(Instant::now() < deadline, "never folded up to {last:?}");
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    let released = state.call("demo", ConnId(next - 1)).flatten();
                    assert_eq!(
                        released.map(|c| c.state),
                        Some(switchboard_services::call_state::CallStatus::Released)
                    );
                    started.elapsed()
                });
            }
            total
        })
    });
    g.finish();
    drain.cancel();
    let _ = rt.block_on(role.task);
}

criterion_group!(benches, fold, consume);
criterion_main!(benches);
