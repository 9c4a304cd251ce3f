//! One conformance suite for both bus backends (ARCHITECTURE.md, principle 4).
//!
//! Every `async fn` below takes a [`Fixture`] and is run twice by the `suite!` macro: against an
//! [`EmbeddedBus`] in a temporary directory (with a [`ManualClock`], so idle times and lease
//! expiry move without sleeping) and against [`RedisBus`] on a real `redis-server` started for
//! the test (where time passes for real: the waits are short). Tests that only make sense for
//! one backend (the embedded bus's persistence and crash durability) come after the suite.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_bus::{
    Bus, BusError, EmbeddedBus, EmbeddedOptions, EntryId, GroupStart, ManualClock, RedisBus,
    SharedBus, Synchronous,
};
use switchboard_testkit::{require_program, RedisServer};

/// A bus under test and a way to let time pass on its clock.
struct Fixture {
    bus: SharedBus,
    /// The embedded bus's clock; `None` for Redis (real time).
    clock: Option<Arc<ManualClock>>,
    _guard: Guard,
}

#[allow(dead_code)] // held for their Drop
enum Guard {
    Dir(tempfile::TempDir),
    Redis(RedisServer),
}

impl Fixture {
    fn embedded() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let bus = EmbeddedBus::open_with(
            &dir.path().join("bus.db"),
            EmbeddedOptions {
                clock: clock.clone(),
                synchronous: Synchronous::Normal,
            },
        )
        .expect("open embedded bus");
        Fixture {
            bus: Arc::new(bus),
            clock: Some(clock),
            _guard: Guard::Dir(dir),
        }
    }

    /// `None` (after a loud SKIPPED line) when `redis-server` is not installed.
    async fn redis() -> Option<Fixture> {
        if !require_program("redis-server") {
            return None;
        }
        let server = tokio::task::spawn_blocking(RedisServer::spawn)
            .await
            .expect("spawn_blocking")
            .expect("redis-server starts");
        let bus = RedisBus::connect(&server.url())
            .await
            .expect("connect to redis");
        Some(Fixture {
            bus: Arc::new(bus),
            clock: None,
            _guard: Guard::Redis(server),
        })
    }

    /// Lets at least `ms` milliseconds pass on the backend's clock.
    async fn pass(&self, ms: u64) {
        match &self.clock {
            Some(clock) => clock.advance(ms),
            None => tokio::time::sleep(Duration::from_millis(ms + 5)).await,
        }
    }

    /// A lease ttl or idle time that a few round trips must fit in: on Redis, where time is
    /// real, long enough for a loaded 2-core machine.
    fn short_ttl(&self) -> Duration {
        match self.clock {
            Some(_) => Duration::from_millis(300),
            None => Duration::from_millis(1000),
        }
    }
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fx = super::Fixture::embedded();
                    super::$case(&fx).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(fx) = super::Fixture::redis().await else { return };
                    super::$case(&fx).await;
                }
            )*
        }
    };
}

suite!(
    publish_and_read_range_paging,
    ids_increase_and_last_id,
    unknown_stream_is_empty,
    streams_are_independent,
    group_splits_entries_between_consumers,
    group_delivers_in_stream_order_once,
    block_wait_is_woken_by_publish,
    block_wait_times_out,
    ack_removes_from_pending,
    claim_pending_after_min_idle,
    claim_pending_respects_count_and_order,
    group_start_beginning_end_after,
    create_group_is_idempotent,
    no_group_error,
    kv_get_set_delete,
    lease_acquire_renew_release,
    lease_expiry,
    lease_rejects_zero_ttl,
    concurrent_publishers_keep_every_entry,
    trim_before_removes_old_entries_of_every_stream,
);

fn payloads(entries: &[switchboard_bus::Entry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
        .collect()
}

async fn publish_n(bus: &SharedBus, stream: &str, n: usize) -> Vec<EntryId> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(
            bus.publish(stream, format!("m{i}").as_bytes())
                .await
                .expect("publish"),
        );
    }
    ids
}

async fn publish_and_read_range_paging(fx: &Fixture) {
    let bus = &fx.bus;
    let ids = publish_n(bus, "s", 25).await;
    let all = bus.read_range("s", None, 100).await.unwrap();
    assert_eq!(all.len(), 25);
    assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert_eq!(payloads(&all)[0], "m0");
    assert_eq!(payloads(&all)[24], "m24");

    // Pages of 10 by the last id of the previous page.
    let mut after = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = bus.read_range("s", after, 10).await.unwrap();
        if page.is_empty() {
            break;
        }
        pages += 1;
        assert!(page.len() <= 10);
        after = page.last().map(|e| e.id);
        seen.extend(page);
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, all);

    // `after` is exclusive, an id between entries works, count 0 is empty.
    let from_mid = bus.read_range("s", Some(ids[9]), 3).await.unwrap();
    assert_eq!(payloads(&from_mid), ["m10", "m11", "m12"]);
    assert!(bus
        .read_range("s", Some(ids[24]), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(bus.read_range("s", None, 0).await.unwrap().is_empty());
    let ids_round_trip: EntryId = ids[3].to_string().parse().unwrap();
    assert_eq!(
        bus.read_range("s", Some(ids_round_trip), 1).await.unwrap()[0].id,
        ids[4]
    );
    // Binary payloads pass unchanged.
    let bin: Vec<u8> = (0..=255u8).collect();
    let id = bus.publish("bin", &bin).await.unwrap();
    let back = bus.read_range("bin", None, 1).await.unwrap();
    assert_eq!(back[0].id, id);
    assert_eq!(back[0].payload, bin);
    let empty = bus.publish("bin", b"").await.unwrap();
    assert_eq!(
        bus.read_range("bin", Some(id), 1).await.unwrap()[0],
        switchboard_bus::Entry {
            id: empty,
            payload: Vec::new()
        }
    );
}

async fn ids_increase_and_last_id(fx: &Fixture) {
    let bus = &fx.bus;
    assert_eq!(bus.last_id("ids").await.unwrap(), None);
    let mut prev = EntryId::ZERO;
    for i in 0..50 {
        // Some entries in the same millisecond, some after the clock moved.
        if i % 10 == 0 {
            fx.pass(2).await;
        }
        let id = bus.publish("ids", b"x").await.unwrap();
        assert!(id > prev, "{id} after {prev}");
        prev = id;
    }
    assert_eq!(bus.last_id("ids").await.unwrap(), Some(prev));
    // Ids carry the backend's time in ms: within a day of now (embedded: its clock).
    let now_ms = match &fx.clock {
        Some(c) => switchboard_bus::Clock::now_ms(c.as_ref()),
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    };
    assert!(prev.ms.abs_diff(now_ms) < 86_400_000, "{prev} vs {now_ms}");
}

async fn unknown_stream_is_empty(fx: &Fixture) {
    let bus = &fx.bus;
    assert!(bus.read_range("nope", None, 10).await.unwrap().is_empty());
    assert_eq!(bus.last_id("nope").await.unwrap(), None);
    // A group created on a missing stream creates it, still without entries.
    bus.create_group("fresh", "g", GroupStart::End)
        .await
        .unwrap();
    assert_eq!(bus.last_id("fresh").await.unwrap(), None);
    assert!(bus
        .read_group("fresh", "g", "c", 10, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        bus.ack("nope", "g", &[EntryId::new(1, 0)]).await.unwrap(),
        0
    );
}

async fn streams_are_independent(fx: &Fixture) {
    let bus = &fx.bus;
    bus.publish("events:a", b"a1").await.unwrap();
    bus.publish("events:b", b"b1").await.unwrap();
    bus.publish("events:a", b"a2").await.unwrap();
    assert_eq!(
        payloads(&bus.read_range("events:a", None, 10).await.unwrap()),
        ["a1", "a2"]
    );
    assert_eq!(
        payloads(&bus.read_range("events:b", None, 10).await.unwrap()),
        ["b1"]
    );
    // Names with odd characters are fine.
    bus.publish("events:tenant with spaces/é", b"x")
        .await
        .unwrap();
    assert_eq!(
        bus.read_range("events:tenant with spaces/é", None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn group_splits_entries_between_consumers(fx: &Fixture) {
    let bus = &fx.bus;
    bus.create_group("split", "g", GroupStart::Beginning)
        .await
        .unwrap();
    let ids = publish_n(bus, "split", 10).await;
    let a = bus
        .read_group("split", "g", "alice", 4, Duration::ZERO)
        .await
        .unwrap();
    let b = bus
        .read_group("split", "g", "bob", 4, Duration::ZERO)
        .await
        .unwrap();
    let a2 = bus
        .read_group("split", "g", "alice", 100, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(a.len(), 4);
    assert_eq!(b.len(), 4);
    assert_eq!(a2.len(), 2);
    // Each entry went to exactly one consumer, in stream order.
    let mut all: Vec<EntryId> = a.iter().chain(&b).chain(&a2).map(|e| e.id).collect();
    assert_eq!(all, ids);
    all.dedup();
    assert_eq!(all.len(), 10);
    // Nothing left for anyone.
    assert!(bus
        .read_group("split", "g", "carol", 100, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
    // Another group sees everything again.
    bus.create_group("split", "g2", GroupStart::Beginning)
        .await
        .unwrap();
    let other = bus
        .read_group("split", "g2", "alice", 100, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(other.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
}

async fn group_delivers_in_stream_order_once(fx: &Fixture) {
    let bus = &fx.bus;
    bus.create_group("order", "g", GroupStart::Beginning)
        .await
        .unwrap();
    let ids = publish_n(bus, "order", 30).await;
    let mut got = Vec::new();
    loop {
        let batch = bus
            .read_group("order", "g", "c", 7, Duration::ZERO)
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 7);
        let n = bus
            .ack(
                "order",
                "g",
                &batch.iter().map(|e| e.id).collect::<Vec<_>>(),
            )
            .await
            .unwrap();
        assert_eq!(n, batch.len());
        got.extend(batch);
    }
    assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert_eq!(payloads(&got)[29], "m29");
}

async fn block_wait_is_woken_by_publish(fx: &Fixture) {
    let bus = fx.bus.clone();
    bus.create_group("wake", "g", GroupStart::End)
        .await
        .unwrap();
    let reader = {
        let bus = bus.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let got = bus
                .read_group("wake", "g", "c", 10, Duration::from_secs(10))
                .await;
            (got, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!reader.is_finished(), "read_group returned without entries");
    let id = bus.publish("wake", b"hello").await.unwrap();
    let (got, waited) = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the publish wakes the reader")
        .expect("reader task");
    let got = got.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, id);
    assert_eq!(got[0].payload, b"hello");
    assert!(waited >= Duration::from_millis(100), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");

    // A waiter on one stream is not woken (with entries) by another stream.
    let reader = {
        let bus = bus.clone();
        tokio::spawn(async move {
            bus.read_group("wake", "g", "c", 10, Duration::from_millis(400))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    bus.publish("elsewhere", b"x").await.unwrap();
    assert!(reader.await.unwrap().unwrap().is_empty());
}

async fn block_wait_times_out(fx: &Fixture) {
    let bus = &fx.bus;
    bus.create_group("quiet", "g", GroupStart::End)
        .await
        .unwrap();
    let started = Instant::now();
    let got = bus
        .read_group("quiet", "g", "c", 10, Duration::from_millis(200))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(got.is_empty());
    assert!(waited >= Duration::from_millis(180), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    // Block zero does not wait.
    let started = Instant::now();
    assert!(bus
        .read_group("quiet", "g", "c", 10, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
    assert!(started.elapsed() < Duration::from_millis(500));
}

async fn ack_removes_from_pending(fx: &Fixture) {
    let bus = &fx.bus;
    bus.create_group("acks", "g", GroupStart::Beginning)
        .await
        .unwrap();
    let ids = publish_n(bus, "acks", 5).await;
    let got = bus
        .read_group("acks", "g", "c", 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(got.len(), 5);
    // Ack two of them (and an unknown id, which does not count).
    assert_eq!(
        bus.ack("acks", "g", &[ids[0], ids[2], EntryId::new(1, 1)])
            .await
            .unwrap(),
        2
    );
    // Acking again counts zero; an unknown group counts zero.
    assert_eq!(bus.ack("acks", "g", &[ids[0]]).await.unwrap(), 0);
    assert_eq!(bus.ack("acks", "other", &[ids[1]]).await.unwrap(), 0);
    assert_eq!(bus.ack("acks", "g", &[]).await.unwrap(), 0);
    // What is still pending is exactly what was not acknowledged.
    fx.pass(50).await;
    let claimed = bus
        .claim_pending("acks", "g", "d", Duration::from_millis(10), 100)
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|e| e.id).collect::<Vec<_>>(),
        [ids[1], ids[3], ids[4]]
    );
    assert_eq!(payloads(&claimed), ["m1", "m3", "m4"]);
    // Acked entries stay in the stream (ack is not delete).
    assert_eq!(bus.read_range("acks", None, 10).await.unwrap().len(), 5);
}

async fn trim_before_removes_old_entries_of_every_stream(fx: &Fixture) {
    let bus = &fx.bus;
    bus.create_group("old-a", "g", GroupStart::Beginning)
        .await
        .unwrap();
    let a = publish_n(bus, "old-a", 3).await;
    let b = publish_n(bus, "old-b", 2).await;
    // Two of a's entries delivered, never acknowledged.
    let got = bus
        .read_group("old-a", "g", "c", 2, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    fx.pass(5).await;
    let keep_a = bus.publish("old-a", b"new-a").await.unwrap();
    let keep_b = bus.publish("old-b", b"new-b").await.unwrap();
    let cutoff = keep_a.min(keep_b);
    assert!(a.iter().chain(&b).all(|id| *id < cutoff));

    assert_eq!(bus.trim_before(cutoff).await.unwrap(), 5);
    let rest =
        |s: &'static str| async move { payloads(&bus.read_range(s, None, 10).await.unwrap()) };
    assert_eq!(rest("old-a").await, ["new-a"]);
    assert_eq!(rest("old-b").await, ["new-b"]);
    // The trimmed pending entries are gone for the group; the undelivered ones come next.
    fx.pass(fx.short_ttl().as_millis() as u64 + 50).await;
    let claimed = bus
        .claim_pending("old-a", "g", "heir", fx.short_ttl(), 10)
        .await
        .unwrap();
    assert!(claimed.is_empty(), "{:?}", payloads(&claimed));
    let next = bus
        .read_group("old-a", "g", "c", 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(payloads(&next), ["new-a"]);
    // Nothing more to trim; ids keep growing after a trim that emptied a stream.
    assert_eq!(bus.trim_before(cutoff).await.unwrap(), 0);
    let both = u64::from(keep_a < keep_b.next());
    assert_eq!(bus.trim_before(keep_b.next()).await.unwrap(), 1 + both);
    let after = bus.publish("old-b", b"later").await.unwrap();
    assert!(after > keep_b);
    assert_eq!(bus.last_id("old-b").await.unwrap(), Some(after));
}

async fn claim_pending_after_min_idle(fx: &Fixture) {
    let bus = &fx.bus;
    bus.create_group("claim", "g", GroupStart::Beginning)
        .await
        .unwrap();
    let ids = publish_n(bus, "claim", 3).await;
    let got = bus
        .read_group("claim", "g", "dead", 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    // Not idle long enough yet.
    let min_idle = fx.short_ttl();
    let past_idle = min_idle.as_millis() as u64 + 50;
    assert!(bus
        .claim_pending("claim", "g", "heir", min_idle, 10)
        .await
        .unwrap()
        .is_empty());
    fx.pass(past_idle).await;
    let claimed = bus
        .claim_pending("claim", "g", "heir", min_idle, 10)
        .await
        .unwrap();
    assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert_eq!(payloads(&claimed), ["m0", "m1", "m2"]);
    // The claim reset their idle time: a third consumer cannot take them at once.
    assert!(bus
        .claim_pending("claim", "g", "third", min_idle, 10)
        .await
        .unwrap()
        .is_empty());
    // They are pending for the heir now: its ack counts them.
    assert_eq!(bus.ack("claim", "g", &ids[..2]).await.unwrap(), 2);
    fx.pass(past_idle).await;
    let rest = bus
        .claim_pending("claim", "g", "third", min_idle, 10)
        .await
        .unwrap();
    assert_eq!(rest.iter().map(|e| e.id).collect::<Vec<_>>(), [ids[2]]);
    // New entries are not touched by claim_pending, and pending ones are not re-read by
    // read_group.
    let new = bus.publish("claim", b"new").await.unwrap();
    let read = bus
        .read_group("claim", "g", "third", 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(read.iter().map(|e| e.id).collect::<Vec<_>>(), [new]);
}

async fn claim_pending_respects_count_and_order(fx: &Fixture) {
    let bus = &fx.bus;
    bus.create_group("claimn", "g", GroupStart::Beginning)
        .await
        .unwrap();
    let ids = publish_n(bus, "claimn", 12).await;
    bus.read_group("claimn", "g", "a", 6, Duration::ZERO)
        .await
        .unwrap();
    bus.read_group("claimn", "g", "b", 6, Duration::ZERO)
        .await
        .unwrap();
    fx.pass(100).await;
    // count 0 claims nothing (and takes nothing away from the others).
    assert!(bus
        .claim_pending("claimn", "g", "c", Duration::ZERO, 0)
        .await
        .unwrap()
        .is_empty());
    let first = bus
        .claim_pending("claimn", "g", "c", Duration::from_millis(50), 5)
        .await
        .unwrap();
    assert_eq!(first.iter().map(|e| e.id).collect::<Vec<_>>(), ids[..5]);
    let second = bus
        .claim_pending("claimn", "g", "d", Duration::from_millis(50), 100)
        .await
        .unwrap();
    // Oldest first, across the consumers it was pending for.
    assert_eq!(second.iter().map(|e| e.id).collect::<Vec<_>>(), ids[5..]);
    // min_idle zero takes everything pending, whatever its age.
    let all = bus
        .claim_pending("claimn", "g", "e", Duration::ZERO, 100)
        .await
        .unwrap();
    assert_eq!(all.len(), 12);
}

async fn group_start_beginning_end_after(fx: &Fixture) {
    let bus = &fx.bus;
    let ids = publish_n(bus, "start", 6).await;
    bus.create_group("start", "from-0", GroupStart::Beginning)
        .await
        .unwrap();
    bus.create_group("start", "from-end", GroupStart::End)
        .await
        .unwrap();
    bus.create_group("start", "after-2", GroupStart::After(ids[2]))
        .await
        .unwrap();
    let read = |group: &'static str| async move {
        fx.bus
            .read_group("start", group, "c", 100, Duration::ZERO)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(read("from-0").await, ids);
    assert_eq!(read("from-end").await, []);
    assert_eq!(read("after-2").await, ids[3..]);
    let next = bus.publish("start", b"next").await.unwrap();
    assert_eq!(read("from-0").await, [next]);
    assert_eq!(read("from-end").await, [next]);
    assert_eq!(read("after-2").await, [next]);
}

async fn create_group_is_idempotent(fx: &Fixture) {
    let bus = &fx.bus;
    let ids = publish_n(bus, "idem", 4).await;
    bus.create_group("idem", "g", GroupStart::Beginning)
        .await
        .unwrap();
    let got = bus
        .read_group("idem", "g", "c", 2, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    // Creating it again, even with another start, keeps its position.
    bus.create_group("idem", "g", GroupStart::Beginning)
        .await
        .unwrap();
    bus.create_group("idem", "g", GroupStart::End)
        .await
        .unwrap();
    let rest = bus
        .read_group("idem", "g", "c", 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(rest.iter().map(|e| e.id).collect::<Vec<_>>(), ids[2..]);
}

async fn no_group_error(fx: &Fixture) {
    let bus = &fx.bus;
    let no_group = |r: Result<Vec<switchboard_bus::Entry>, BusError>| match r {
        Err(BusError::NoGroup { stream, group }) => (stream, group),
        other => panic!("expected NoGroup, got {other:?}"),
    };
    // Missing stream, then existing stream without that group.
    for stream in ["missing", "present"] {
        if stream == "present" {
            bus.publish("present", b"x").await.unwrap();
            bus.create_group("present", "other", GroupStart::Beginning)
                .await
                .unwrap();
        }
        for count in [0, 10] {
            assert_eq!(
                no_group(
                    bus.read_group(stream, "g", "c", count, Duration::ZERO)
                        .await
                ),
                (stream.to_string(), "g".to_string())
            );
            assert_eq!(
                no_group(
                    bus.claim_pending(stream, "g", "c", Duration::ZERO, count)
                        .await
                ),
                (stream.to_string(), "g".to_string())
            );
        }
        // Blocking does not wait for a group that is not there.
        let started = Instant::now();
        no_group(
            bus.read_group(stream, "g", "c", 10, Duration::from_secs(5))
                .await,
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    let e = BusError::NoGroup {
        stream: "s".into(),
        group: "g".into(),
    };
    assert!(e.to_string().contains("no consumer group"));
}

async fn kv_get_set_delete(fx: &Fixture) {
    let bus = &fx.bus;
    assert_eq!(bus.kv_get("k").await.unwrap(), None);
    bus.kv_set("k", b"one").await.unwrap();
    assert_eq!(bus.kv_get("k").await.unwrap().as_deref(), Some(&b"one"[..]));
    bus.kv_set("k", b"two").await.unwrap();
    assert_eq!(bus.kv_get("k").await.unwrap().as_deref(), Some(&b"two"[..]));
    bus.kv_set("empty", b"").await.unwrap();
    assert_eq!(bus.kv_get("empty").await.unwrap(), Some(Vec::new()));
    let bin: Vec<u8> = (0..=255u8).rev().collect();
    bus.kv_set("bin", &bin).await.unwrap();
    assert_eq!(bus.kv_get("bin").await.unwrap(), Some(bin));
    assert!(bus.kv_delete("k").await.unwrap());
    assert!(!bus.kv_delete("k").await.unwrap());
    assert_eq!(bus.kv_get("k").await.unwrap(), None);
    // kv and leases are separate namespaces; so are kv keys and stream names.
    bus.kv_set("shared-name", b"v").await.unwrap();
    assert!(bus
        .lease_acquire("shared-name", "me", Duration::from_secs(10))
        .await
        .unwrap());
    assert_eq!(
        bus.kv_get("shared-name").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
    bus.publish("shared-name", b"entry").await.unwrap();
    assert_eq!(
        bus.kv_get("shared-name").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
    assert!(bus.kv_delete("shared-name").await.unwrap());
    assert_eq!(
        bus.lease_owner("shared-name").await.unwrap().as_deref(),
        Some("me")
    );
}

async fn lease_acquire_renew_release(fx: &Fixture) {
    let bus = &fx.bus;
    let ttl = Duration::from_secs(30);
    assert_eq!(bus.lease_owner("lock").await.unwrap(), None);
    assert!(bus.lease_acquire("lock", "a", ttl).await.unwrap());
    assert_eq!(bus.lease_owner("lock").await.unwrap().as_deref(), Some("a"));
    // Nobody else gets it, and the owner does not re-take it (it renews).
    assert!(!bus.lease_acquire("lock", "b", ttl).await.unwrap());
    assert!(!bus.lease_acquire("lock", "a", ttl).await.unwrap());
    assert!(bus.lease_renew("lock", "a", ttl).await.unwrap());
    assert!(!bus.lease_renew("lock", "b", ttl).await.unwrap());
    // Only the owner releases.
    assert!(!bus.lease_release("lock", "b").await.unwrap());
    assert_eq!(bus.lease_owner("lock").await.unwrap().as_deref(), Some("a"));
    assert!(bus.lease_release("lock", "a").await.unwrap());
    assert!(!bus.lease_release("lock", "a").await.unwrap());
    assert_eq!(bus.lease_owner("lock").await.unwrap(), None);
    // Renewing a lease nobody holds fails; then it is free for the next one.
    assert!(!bus.lease_renew("lock", "a", ttl).await.unwrap());
    assert!(bus.lease_acquire("lock", "b", ttl).await.unwrap());
    assert_eq!(bus.lease_owner("lock").await.unwrap().as_deref(), Some("b"));
    // Leases are independent of each other.
    assert!(bus.lease_acquire("other", "a", ttl).await.unwrap());
}

async fn lease_expiry(fx: &Fixture) {
    let bus = &fx.bus;
    let ttl = fx.short_ttl();
    assert!(bus.lease_acquire("exp", "a", ttl).await.unwrap());
    // Renewal before expiry pushes it out: after 2/3 ttl, renew, then 2/3 ttl again.
    let two_thirds = ttl.as_millis() as u64 * 2 / 3;
    fx.pass(two_thirds).await;
    assert!(bus.lease_renew("exp", "a", ttl).await.unwrap());
    fx.pass(two_thirds).await;
    assert_eq!(bus.lease_owner("exp").await.unwrap().as_deref(), Some("a"));
    assert!(!bus.lease_acquire("exp", "b", ttl).await.unwrap());
    // Past the ttl it is gone: no owner, no renew, no release, and free for another.
    fx.pass(ttl.as_millis() as u64 + 50).await;
    assert_eq!(bus.lease_owner("exp").await.unwrap(), None);
    assert!(!bus.lease_renew("exp", "a", ttl).await.unwrap());
    assert!(!bus.lease_release("exp", "a").await.unwrap());
    assert!(bus
        .lease_acquire("exp", "b", Duration::from_secs(30))
        .await
        .unwrap());
    assert_eq!(bus.lease_owner("exp").await.unwrap().as_deref(), Some("b"));
    // The previous owner's late release does not free the new owner's lease.
    assert!(!bus.lease_release("exp", "a").await.unwrap());
    assert_eq!(bus.lease_owner("exp").await.unwrap().as_deref(), Some("b"));
    // An expired lease can be taken again by its old owner too.
    assert!(bus.lease_acquire("exp2", "a", ttl).await.unwrap());
    fx.pass(ttl.as_millis() as u64 + 50).await;
    assert!(bus.lease_acquire("exp2", "a", ttl).await.unwrap());
}

async fn lease_rejects_zero_ttl(fx: &Fixture) {
    let bus = &fx.bus;
    for r in [
        bus.lease_acquire("z", "a", Duration::ZERO).await,
        bus.lease_acquire("z", "a", Duration::from_micros(500))
            .await,
        bus.lease_renew("z", "a", Duration::ZERO).await,
    ] {
        assert!(matches!(r, Err(BusError::Invalid(_))), "{r:?}");
    }
    assert_eq!(bus.lease_owner("z").await.unwrap(), None);
}

async fn concurrent_publishers_keep_every_entry(fx: &Fixture) {
    let bus = &fx.bus;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..50 {
                let id = bus
                    .publish("conc", format!("{t}:{i}").as_bytes())
                    .await
                    .unwrap();
                ids.push(id);
            }
            ids
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        let ids = t.await.unwrap();
        // Each publisher sees its own ids increase.
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        acked.extend(ids);
    }
    let all = bus.read_range("conc", None, 1000).await.unwrap();
    assert_eq!(all.len(), 400);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    acked.sort();
    assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), acked);
    // Per-publisher order is kept in the stream.
    for t in 0..8 {
        let mine: Vec<String> = payloads(&all)
            .into_iter()
            .filter(|p| p.starts_with(&format!("{t}:")))
            .collect();
        let expected: Vec<String> = (0..50).map(|i| format!("{t}:{i}")).collect();
        assert_eq!(mine, expected);
    }
}

// ---------------------------------------------------------------------------------------------
// Embedded only: persistence across reopen, the exclusive lock, crash durability.

fn open_at(path: &std::path::Path, clock: Arc<ManualClock>) -> EmbeddedBus {
    EmbeddedBus::open_with(
        path,
        EmbeddedOptions {
            clock,
            synchronous: Synchronous::Normal,
        },
    )
    .expect("open embedded bus")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_reopen_keeps_entries_groups_pending_kv_and_leases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.db");
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let (ids, delivered) = {
        let bus = open_at(&path, clock.clone());
        let mut ids = Vec::new();
        for i in 0..10 {
            ids.push(bus.publish("p", format!("e{i}").as_bytes()).await.unwrap());
        }
        bus.create_group("p", "g", GroupStart::Beginning)
            .await
            .unwrap();
        let delivered = bus
            .read_group("p", "g", "c1", 6, Duration::ZERO)
            .await
            .unwrap();
        bus.ack("p", "g", &[delivered[0].id, delivered[1].id])
            .await
            .unwrap();
        bus.kv_set("k", b"v").await.unwrap();
        assert!(bus
            .lease_acquire("l", "owner", Duration::from_secs(60))
            .await
            .unwrap());
        (ids, delivered)
        // The bus is dropped here: its thread stops and the file is closed.
    };
    assert_eq!(delivered.len(), 6);
    let bus = open_at(&path, clock.clone());
    // Entries.
    let all = bus.read_range("p", None, 100).await.unwrap();
    assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert_eq!(bus.last_id("p").await.unwrap(), Some(ids[9]));
    // The group's position: the next read starts after the 6 delivered entries.
    let next = bus
        .read_group("p", "g", "c2", 100, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(next.iter().map(|e| e.id).collect::<Vec<_>>(), ids[6..]);
    // The pending list: the 4 delivered, unacknowledged entries can be claimed.
    clock.advance(1000);
    let claimed = bus
        .claim_pending("p", "g", "c2", Duration::from_millis(500), 100)
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|e| e.id).collect::<Vec<_>>(),
        [ids[2], ids[3], ids[4], ids[5], ids[6], ids[7], ids[8], ids[9]]
    );
    // New ids keep increasing after the reopen, even with the clock set back.
    clock.set(1_000);
    let after = bus.publish("p", b"later").await.unwrap();
    assert!(after > ids[9]);
    // kv and leases.
    assert_eq!(bus.kv_get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    clock.set(1_700_000_001_000);
    assert_eq!(
        bus.lease_owner("l").await.unwrap().as_deref(),
        Some("owner")
    );
    clock.advance(60_000);
    assert_eq!(bus.lease_owner("l").await.unwrap(), None);
}

#[tokio::test]
async fn embedded_file_is_owned_by_one_bus() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.db");
    let first = EmbeddedBus::open(&path).unwrap();
    first.publish("s", b"x").await.unwrap();
    let second = EmbeddedBus::open(&path);
    assert!(second.is_err(), "a second open of a bus file must fail");
    drop(first);
    let third = EmbeddedBus::open(&path).expect("free again once the first is closed");
    assert_eq!(third.read_range("s", None, 10).await.unwrap().len(), 1);
    // A path that cannot be a database is an error, not a panic.
    let bad = EmbeddedBus::open(dir.path());
    assert!(matches!(bad, Err(BusError::Backend(_))));
}

#[tokio::test]
async fn open_from_spec() {
    let dir = tempfile::tempdir().unwrap();
    let bus = switchboard_bus::open(&switchboard_bus::BusSpec::Embedded {
        path: dir.path().join("spec.db"),
    })
    .await
    .unwrap();
    bus.publish(&switchboard_bus::events_stream("demo"), b"{}")
        .await
        .unwrap();
    assert_eq!(
        bus.read_range("events:demo", None, 10).await.unwrap().len(),
        1
    );
    // A Redis URL nobody listens on fails to open (quickly), it does not hang.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let r = switchboard_bus::open(&switchboard_bus::BusSpec::Redis {
        url: format!("redis://127.0.0.1:{port}/"),
    })
    .await;
    assert!(matches!(r, Err(BusError::Backend(_))));
    assert!(started.elapsed() < Duration::from_secs(30));
    let r = switchboard_bus::open(&switchboard_bus::BusSpec::Redis {
        url: "not a url".into(),
    })
    .await;
    assert!(matches!(r, Err(BusError::Backend(_))));
}

/// The child half of the SIGKILL tests: when `BUS_SIGKILL_CHILD` names a bus file (or
/// `BUS_SIGKILL_REDIS` a Redis URL), publishes from 8 tasks as fast as it can and prints
/// `ACK <id> <payload>` for every publish that returned, until it is killed. Run normally, it
/// checks the same loop briefly on an embedded bus.
#[test]
fn sigkill_child_publisher() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = std::env::var("BUS_SIGKILL_REDIS").ok();
    let (path, forever) = match std::env::var_os("BUS_SIGKILL_CHILD") {
        Some(p) => (std::path::PathBuf::from(p), true),
        None => (tmp.path().join("bus.db"), redis.is_some()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        use std::io::Write;
        let bus: SharedBus = match redis {
            Some(url) => Arc::new(RedisBus::connect(&url).await.expect("child connects")),
            None => Arc::new(EmbeddedBus::open(&path).expect("child opens the bus")),
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(EntryId, String)>();
        for t in 0..8 {
            let (bus, tx) = (bus.clone(), tx.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                loop {
                    let payload = format!("{t}:{i}");
                    let id = bus.publish("crash", payload.as_bytes()).await.unwrap();
                    if tx.send((id, payload)).is_err() {
                        return;
                    }
                    i += 1;
                    if !forever && i == 20 {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut out = std::io::stdout().lock();
        let mut n = 0;
        while let Some((id, payload)) = rx.recv().await {
            writeln!(out, "ACK {id} {payload}").unwrap();
            out.flush().unwrap();
            n += 1;
        }
        assert_eq!(n, 160);
        assert_eq!(
            bus.read_range("crash", None, 1000).await.unwrap().len(),
            160
        );
    });
}

/// Runs [`sigkill_child_publisher`] in a child process with `env`, SIGKILLs it after 3000
/// acknowledged publishes, and returns every `(id, payload)` it reported as acknowledged.
fn publish_until_killed(env: (&str, &std::ffi::OsStr)) -> Vec<(EntryId, String)> {
    use std::io::BufRead;
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args([
            "--exact",
            "sigkill_child_publisher",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(env.0, env.1)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the child publisher");
    let stdout = child.stdout.take().unwrap();
    let mut acked: Vec<(EntryId, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = std::io::BufReader::new(stdout).lines();
    let parse = |line: &str| {
        let (id, payload) = line.strip_prefix("ACK ")?.split_once(' ')?;
        Some((id.parse().ok()?, payload.to_string()))
    };
    // Kill it mid-run, after a good number of acknowledged publishes.
    while acked.len() < 3000 && Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        // The test harness prints its own lines too.
        if line.starts_with("ACK ") {
            acked.push(parse(&line).expect("ACK <id> <payload>"));
        }
    }
    // std's kill is SIGKILL on Unix: no destructor, no flush, no clean close.
    child.kill().expect("SIGKILL the child");
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed: {status:?}");
    // What it printed before dying was acknowledged as well (a torn last line is not).
    acked.extend(lines.map_while(Result::ok).filter_map(|l| parse(&l)));
    assert!(
        acked.len() >= 3000,
        "only {} publishes before the deadline",
        acked.len()
    );
    acked
}

/// Every acknowledged publish is in the stream, and appends go on after the last id.
async fn check_acked(bus: &SharedBus, acked: &[(EntryId, String)]) {
    let mut stored = std::collections::HashMap::new();
    let mut after = None;
    loop {
        let page = bus.read_range("crash", after, 10_000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for e in page {
            stored.insert(e.id, String::from_utf8(e.payload).unwrap());
        }
    }
    for (id, payload) in acked {
        assert_eq!(
            stored.get(id),
            Some(payload),
            "acknowledged publish {id} ({payload}) lost after SIGKILL"
        );
    }
    assert!(stored.len() >= acked.len());
    let max = stored.keys().max().copied().unwrap();
    assert!(bus.publish("crash", b"after").await.unwrap() > max);
}

#[test]
fn embedded_publishes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.db");
    let acked = publish_until_killed(("BUS_SIGKILL_CHILD", path.as_os_str()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // The lock went with the killed process; the file opens and holds every entry.
        let bus: SharedBus = Arc::new(EmbeddedBus::open(&path).expect("reopen after SIGKILL"));
        check_acked(&bus, &acked).await;
    });
}

#[test]
fn redis_publishes_survive_a_killed_publisher() {
    if !require_program("redis-server") {
        return;
    }
    let server = RedisServer::spawn().expect("redis-server starts");
    let url = server.url();
    let acked = publish_until_killed(("BUS_SIGKILL_REDIS", std::ffi::OsStr::new(&url)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let bus: SharedBus = Arc::new(RedisBus::connect(&url).await.expect("connect"));
        check_acked(&bus, &acked).await;
    });
}
