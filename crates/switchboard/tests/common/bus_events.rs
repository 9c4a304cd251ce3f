//! The demo tenant's event stream (`events:demo`) on a test's Redis, read in order: the
//! tests of treatments and of the orchestrator's failover wait on it and publish requests.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use switchboard_bus::{EntryId, RedisBus, SharedBus};
use switchboard_events::Event;
use switchboard_testkit::RedisServer;

pub struct Events {
    pub rt: tokio::runtime::Runtime,
    pub bus: SharedBus,
    last: Option<EntryId>,
    /// Every event read so far, in stream order.
    pub seen: Vec<Event>,
}

impl Events {
    pub fn new(redis: &RedisServer) -> Events {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let bus: SharedBus = Arc::new(rt.block_on(RedisBus::connect(&redis.url())).expect("redis"));
        Events {
            rt,
            bus,
            last: None,
            seen: Vec::new(),
        }
    }

    /// Reads what is new up to the first event matching `pred`, and returns it; the events
    /// after it are read by the next call.
    pub fn poll(&mut self, pred: &dyn Fn(&Event) -> bool) -> Option<Event> {
        let entries = self
            .rt
            .block_on(self.bus.read_range("events:demo", self.last, 100))
            .expect("read events");
        for e in entries {
            self.last = Some(e.id);
            let ev = Event::from_json(&String::from_utf8_lossy(&e.payload)).expect("event");
            self.seen.push(ev.clone());
            if pred(&ev) {
                return Some(ev);
            }
        }
        None
    }

    /// The first event from now on for which `pred` holds.
    pub fn wait(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.poll(&pred) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no {what}; events so far: {}",
                self.summary()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    // Not every test that reads events publishes requests.
    #[allow(dead_code)]
    pub fn publish(&self, stream: &str, payload: &str) {
        self.rt
            .block_on(self.bus.publish(stream, payload.as_bytes()))
            .expect("publish");
    }

    /// The events seen, a line each: name@DN.
    pub fn summary(&self) -> String {
        self.seen
            .iter()
            .map(|e| {
                let dn = e.call().map(|c| c.this_dn.as_str()).unwrap_or("-");
                format!("\n{}@{dn}", e.name())
            })
            .collect()
    }
}
