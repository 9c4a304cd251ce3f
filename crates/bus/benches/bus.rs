//! Bus throughput, embedded (SQLite, `synchronous = NORMAL`) vs Redis (a `redis-server` started
//! here, no persistence), through the same `SharedBus` trait object the roles use.
//!
//! * `publish/<backend>/sequential`: one publisher, one `publish` awaited at a time (the
//!   latency of a durable append, inverted).
//! * `publish/<backend>/concurrent64`: 64 publishes in flight (the embedded bus commits them in
//!   groups; Redis pipelines them over its multiplexed connection).
//! * `read_group_ack/<backend>`: a consumer taking 100 entries with `read_group` and acking
//!   them with one `ack`.
//!
//! `cargo bench -p switchboard-bus --bench bus`. Redis runs are skipped (loudly) when
//! `redis-server` is missing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchboard_bus::{EmbeddedBus, GroupStart, RedisBus, SharedBus};
use switchboard_testkit::{require_program, RedisServer};
use tokio::runtime::Runtime;

const PAYLOAD: &[u8] = br#"{"event":"EventRinging","tenant":"demo","conn_id":"00a1b2c3d4e5f601","this_dn":"1002","other_dn":"+15551234567","this_role":"destination","other_role":"origination","call_type":"inbound","user_data":{},"ts_ms":1795311466916}"#;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn publish_concurrently(bus: &SharedBus, stream: &str, n: usize) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (bus, stream) = (bus.clone(), stream.to_string());
        set.spawn(async move { bus.publish(&stream, PAYLOAD).await });
    }
    while let Some(r) = set.join_next().await {
        r.expect("publish task").expect("publish");
    }
}

fn bench_backend(c: &mut Criterion, name: &str, rt: &Runtime, bus: SharedBus) {
    let mut g = c.benchmark_group("publish");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    g.bench_function(format!("{name}/sequential"), |b| {
        b.iter(|| {
            rt.block_on(bus.publish("bench:seq", PAYLOAD))
                .expect("publish")
        })
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function(format!("{name}/concurrent64"), |b| {
        b.iter(|| rt.block_on(publish_concurrently(&bus, "bench:conc", 64)))
    });
    g.finish();

    let mut g = c.benchmark_group("read_group_ack");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(100));
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                // A fresh group per sample, over entries published beforehand (not timed).
                let stream = "bench:rg";
                let group = format!("g{}", rand_suffix());
                bus.create_group(stream, &group, GroupStart::End)
                    .await
                    .expect("create_group");
                let total = iters as usize * 100;
                let mut left = total;
                while left > 0 {
                    let n = left.min(256);
                    publish_concurrently(&bus, stream, n).await;
                    left -= n;
                }
                let started = Instant::now();
                let mut read = 0;
                for _ in 0..iters {
                    let entries = bus
                        .read_group(stream, &group, "c", 100, Duration::ZERO)
                        .await
                        .expect("read_group");
                    let ids: Vec<_> = entries.iter().map(|e| e.id).collect();
                    read += bus.ack(stream, &group, &ids).await.expect("ack");
                }
                let elapsed = started.elapsed();
                assert_eq!(read, total, "every entry read and acked once");
                elapsed
            })
        })
    });
    g.finish();
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn benches(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let embedded: SharedBus =
        Arc::new(EmbeddedBus::open(&dir.path().join("bench.db")).expect("open embedded bus"));
    bench_backend(c, "embedded", &rt, embedded);

    if require_program("redis-server") {
        let server = RedisServer::spawn().expect("redis-server starts");
        let redis: SharedBus = Arc::new(
            rt.block_on(RedisBus::connect(&server.url()))
                .expect("connect to redis"),
        );
        bench_backend(c, "redis", &rt, redis);
    }
}

criterion_group!(bus, benches);
criterion_main!(bus);
