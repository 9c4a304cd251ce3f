//! The process's one bus, opened from `[bus]` on first use and shared by every role of the
//! process (`sip-node` publishes on it, `call-state` consumes from it).
//!
//! The binary keeps one [`BusSlot`] in its shared state; each role asks it for the bus:
//!
//! ```ignore
//! let slot = ctx.shared().get_or_init(BusSlot::default);
//! let bus = slot.get_or_open(&ctx.config).await?;
//! bus.publish(&switchboard_bus::events_stream(tenant), event.to_json().as_bytes()).await?;
//! ```
//!
//! Opening twice would be wrong for the embedded bus (its SQLite file is locked by the first
//! opener and wakeups are in-process), so the slot opens once and hands out clones of the same
//! [`SharedBus`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use switchboard_bus::BusSpec;
use switchboard_config::{BusBackend, Config};
use tokio::sync::OnceCell;

pub use switchboard_bus::{events_stream, Bus, BusError, EntryId, SharedBus};

/// Holds the process's bus once opened. Put one in the roles' shared state.
#[derive(Default)]
pub struct BusSlot(OnceCell<SharedBus>);

impl BusSlot {
    /// The bus, opened from `config` by the first caller; later callers get the same bus
    /// (whatever config they pass). Concurrent first callers wait for one open.
    pub async fn get_or_open(&self, config: &Config) -> anyhow::Result<SharedBus> {
        self.0
            .get_or_try_init(|| async {
                let bus = open(config).await?;
                spawn_retention(&bus, Duration::from_secs(config.bus.retention_s));
                Ok(bus)
            })
            .await
            .cloned()
    }

    /// The bus if some role opened it already.
    pub fn get(&self) -> Option<SharedBus> {
        self.0.get().cloned()
    }

    /// A slot holding `bus` (tests, or a process that opened its bus itself).
    pub fn with(bus: SharedBus) -> BusSlot {
        BusSlot(OnceCell::new_with(Some(bus)))
    }
}

/// Appends `event` to its tenant's stream (`events:{tenant}`) in the one JSON form; returns
/// once the bus made it durable. What `sip-node` and the other publishers call.
pub async fn publish_event(
    bus: &dyn Bus,
    event: &switchboard_events::Event,
) -> Result<EntryId, BusError> {
    bus.publish(&events_stream(event.tenant()), event.to_json().as_bytes())
        .await
}

/// A request and its answer over the bus: publishes `payload` on `to`, then reads `answers`
/// from where it ended before the publication (so the answer cannot be missed) until `pick`
/// recognises an entry as the answer, or `timeout` passes (`Ok(None)`).
pub async fn request_reply<T>(
    bus: &dyn Bus,
    to: &str,
    payload: &[u8],
    answers: &str,
    timeout: Duration,
    mut pick: impl FnMut(&[u8]) -> Option<T>,
) -> Result<Option<T>, BusError> {
    let mut after = bus.last_id(answers).await?;
    bus.publish(to, payload).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        let page = bus.read_range(answers, after, 256).await?;
        if let Some(found) = page.iter().find_map(|e| pick(&e.payload)) {
            return Ok(Some(found));
        }
        match page.last() {
            Some(last) => after = Some(last.id),
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    Ok(None)
}

/// How often the retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Removes stream entries older than `keep`, every minute, until the bus is dropped. Every
/// process sharing a Redis bus does it: trimming is idempotent.
fn spawn_retention(bus: &SharedBus, keep: Duration) {
    let weak = Arc::downgrade(bus);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(RETENTION_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(bus) = weak.upgrade() else { return };
            trim(bus.as_ref(), keep).await;
        }
    });
}

/// One retention pass: entries older than `keep` go.
pub async fn trim(bus: &dyn Bus, keep: Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let cutoff = EntryId::new(now.saturating_sub(keep).as_millis() as u64, 0);
    let started = std::time::Instant::now();
    match bus.trim_before(cutoff).await {
        Ok(n) => {
            metrics::counter!("switchboard_bus_trimmed_entries_total").increment(n);
            if n > 0 {
                tracing::info!(entries = n, cutoff = %cutoff, took_ms = started.elapsed().as_millis() as u64, "bus retention: old entries removed");
            }
        }
        Err(e) => {
            metrics::counter!("switchboard_bus_errors_total", "op" => "trim").increment(1);
            tracing::warn!(error = %e, "bus retention failed; next try in a minute");
        }
    }
}

/// What `[bus]` selects: the embedded bus at `data_dir/bus.path`, or Redis at `bus.redis_url`.
pub fn spec(config: &Config) -> BusSpec {
    match config.bus.backend {
        BusBackend::Embedded => BusSpec::Embedded {
            path: config.bus_path(),
        },
        BusBackend::Redis => BusSpec::Redis {
            url: config.bus.redis_url.clone(),
        },
    }
}

/// Opens the bus `[bus]` selects, creating the embedded bus's directory when missing.
pub async fn open(config: &Config) -> anyhow::Result<SharedBus> {
    let spec = spec(config);
    if let BusSpec::Embedded { path } = &spec {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_dir(dir).await?;
        }
    }
    let bus = switchboard_bus::open(&spec)
        .await
        .map_err(|e| anyhow::anyhow!("bus ({}): {e}", config.bus.backend))?;
    match &spec {
        BusSpec::Embedded { path } => {
            tracing::info!(backend = "embedded", path = %path.display(), "bus open")
        }
        BusSpec::Redis { url } => {
            tracing::info!(backend = "redis", url = %redact(url), "bus open")
        }
    }
    Ok(bus)
}

async fn create_dir(dir: &Path) -> anyhow::Result<()> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the bus directory {}: {e}", dir.display()))
}

/// The URL without a password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retention_removes_only_entries_older_than_it_keeps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bus = switchboard_bus::EmbeddedBus::open(&dir.path().join("bus.db")).expect("bus");
        bus.publish("events:demo", b"old").await.unwrap();
        trim(&bus, Duration::from_secs(3600)).await;
        assert_eq!(
            bus.read_range("events:demo", None, 10).await.unwrap().len(),
            1
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        trim(&bus, Duration::ZERO).await;
        assert!(bus
            .read_range("events:demo", None, 10)
            .await
            .unwrap()
            .is_empty());
        let next = bus.publish("events:demo", b"new").await.unwrap();
        assert_eq!(bus.last_id("events:demo").await.unwrap(), Some(next));
    }

    #[test]
    fn spec_follows_the_config() {
        let mut config = Config::demo();
        config.data_dir = "/var/lib/sb".into();
        assert_eq!(
            spec(&config),
            BusSpec::Embedded {
                path: "/var/lib/sb/bus.db".into()
            }
        );
        config.bus.backend = BusBackend::Redis;
        config.bus.redis_url = "redis://10.0.0.1:6380/2".into();
        assert_eq!(
            spec(&config),
            BusSpec::Redis {
                url: "redis://10.0.0.1:6380/2".into()
            }
        );
        assert_eq!(redact("redis://user:pw@h:1/"), "redis://***@h:1/");
        assert_eq!(redact("redis://h:1/"), "redis://h:1/");
    }

    #[tokio::test]
    async fn one_bus_per_slot() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::demo();
        config.data_dir = dir.path().join("nested/data");
        let slot = BusSlot::default();
        assert!(slot.get().is_none());
        let a = slot.get_or_open(&config).await.unwrap();
        let b = slot.get_or_open(&config).await.unwrap();
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        a.publish("s", b"x").await.unwrap();
        assert_eq!(b.read_range("s", None, 10).await.unwrap().len(), 1);
        let event = switchboard_events::Event::EventDNBackInService(switchboard_events::DnAttrs {
            tenant: "demo".into(),
            this_dn: "1001".into(),
            ts_ms: 1,
        });
        let id = publish_event(a.as_ref(), &event).await.unwrap();
        let stored = b.read_range("events:demo", None, 10).await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].id, id);
        let back = std::str::from_utf8(&stored[0].payload).unwrap();
        assert_eq!(switchboard_events::Event::from_json(back).unwrap(), event);
        assert!(slot.get().is_some());
    }
}
