//! The bus (ARCHITECTURE.md, principle 4): append-only streams with consumer groups, and
//! key-value state with leases, behind one trait with two backends.
//!
//! * [`EmbeddedBus`]: in-process, persisted to SQLite (WAL). The default, for one machine.
//! * [`RedisBus`]: Redis Streams, strings and `SET NX PX` leases, for roles in separate processes.
//!
//! Both are driven through [`Bus`] (usually as a [`SharedBus`] = `Arc<dyn Bus>`) and pass the
//! same conformance suite (`tests/conformance.rs`).
//!
//! # Streams
//!
//! A stream is an append-only log of opaque payloads. [`Bus::publish`] returns the new entry's
//! [`EntryId`] once the entry is durable (committed to SQLite / `XADD` answered). Ids increase
//! strictly within a stream and have the Redis text form `<ms>-<seq>` on both backends, so an id
//! can be handed to a client (e.g. a WebSocket resume point) and given back to
//! [`Bus::read_range`] later.
//!
//! Consumer groups give at-least-once processing: [`Bus::read_group`] hands each new entry to
//! exactly one consumer of the group and records it as pending for that consumer until
//! [`Bus::ack`]; entries a consumer never acknowledged (it died) are taken over with
//! [`Bus::claim_pending`]. Entries are delivered in stream order.
//!
//! # Key-value state and leases
//!
//! [`Bus::kv_get`]/[`Bus::kv_set`]/[`Bus::kv_delete`] store byte values by key. Leases live in
//! their own namespace (a lease key and a kv key with the same name are different things):
//! [`Bus::lease_acquire`] has `SET NX PX` semantics, renew and release only work for the owner,
//! and a lease expires by the backend's clock (the Redis server's, or the embedded bus's
//! [`Clock`]).
//!
//! # Stream names and keys
//!
//! Any UTF-8 string. By convention call and agent events of a tenant go to `events:{tenant}`
//! (see [`events_stream`]).

mod clock;
mod embedded;
mod id;
mod redis_backend;

use std::sync::Arc;
use std::time::Duration;

pub use clock::{Clock, ManualClock, SystemClock};
pub use embedded::{EmbeddedBus, EmbeddedOptions, Synchronous};
pub use id::{EntryId, ParseEntryIdError};
pub use redis_backend::{RedisBus, RedisOptions};

/// One stream entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: EntryId,
    pub payload: Vec<u8>,
}

/// Where a new consumer group starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupStart {
    /// Every entry of the stream, from the first (Redis `0`).
    Beginning,
    /// Only entries published after the group is created (Redis `$`).
    End,
    /// Entries after this id.
    After(EntryId),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// `read_group`/`claim_pending` on a group that was never created.
    #[error("no consumer group {group:?} on stream {stream:?}")]
    NoGroup { stream: String, group: String },
    /// An argument the backend cannot take (e.g. a zero lease ttl).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The backend is gone (the embedded bus's worker thread stopped).
    #[error("the bus is closed")]
    Closed,
    /// Anything else the backend reported (SQLite or Redis error, connection lost...).
    #[error("bus backend error: {0}")]
    Backend(String),
}

pub type Result<T, E = BusError> = std::result::Result<T, E>;

/// The bus. Object safe: share it as [`SharedBus`] between tasks. Every method is cancel safe in
/// the sense that dropping the future never corrupts the bus; a `read_group` dropped while
/// waiting may still have delivered entries to the consumer, which then stay pending and are
/// recovered with `claim_pending` (at-least-once).
#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Appends `payload` to `stream` (created on first use) and returns its id. When this
    /// returns `Ok`, the entry survives the process being killed.
    async fn publish(&self, stream: &str, payload: &[u8]) -> Result<EntryId>;

    /// Up to `count` entries with ids greater than `after` (all entries when `None`), in order.
    /// Page by passing the last id of the previous page. An unknown stream is empty.
    async fn read_range(
        &self,
        stream: &str,
        after: Option<EntryId>,
        count: usize,
    ) -> Result<Vec<Entry>>;

    /// The id of the last entry of `stream`, `None` when it is empty or unknown.
    async fn last_id(&self, stream: &str) -> Result<Option<EntryId>>;

    /// Creates consumer group `group` on `stream` (creating the stream if needed). Idempotent:
    /// an existing group is kept as it is (its position is not moved to `start`).
    async fn create_group(&self, stream: &str, group: &str, start: GroupStart) -> Result<()>;

    /// Up to `count` entries never delivered to any consumer of `group`, now pending for
    /// `consumer`. When there are none, waits up to `block` for new ones (`Duration::ZERO`:
    /// does not wait). Errors with [`BusError::NoGroup`] when the group does not exist.
    async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry>>;

    /// Acknowledges entries: they leave the group's pending list. Returns how many were
    /// pending. Unknown ids, groups and streams count as zero.
    async fn ack(&self, stream: &str, group: &str, ids: &[EntryId]) -> Result<usize>;

    /// Takes over up to `count` pending entries of `group` that were delivered at least
    /// `min_idle` ago (to any consumer, this one included) and never acknowledged: they become
    /// pending for `consumer` with a fresh delivery time, and are returned in id order.
    async fn claim_pending(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Entry>>;

    async fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    async fn kv_set(&self, key: &str, value: &[u8]) -> Result<()>;
    /// Returns whether the key existed.
    async fn kv_delete(&self, key: &str) -> Result<bool>;

    /// Takes the lease `key` for `owner` for `ttl` if nobody holds it (`SET NX PX`): true when
    /// taken. A lease held by `owner` itself is not re-taken (false): renew it instead.
    /// `ttl` must be at least 1 ms.
    async fn lease_acquire(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool>;
    /// Extends the lease to `ttl` from now if `owner` holds it: false otherwise (someone else
    /// holds it, or it expired).
    async fn lease_renew(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool>;
    /// Gives the lease up if `owner` holds it: true when released.
    async fn lease_release(&self, key: &str, owner: &str) -> Result<bool>;
    /// The current holder, `None` when free or expired.
    async fn lease_owner(&self, key: &str) -> Result<Option<String>>;

    /// Retention: removes the entries of every stream with ids below `before`, and their
    /// pending deliveries. Streams keep their last id (new entries still get greater ids) and
    /// groups their positions. Returns how many entries went.
    async fn trim_before(&self, before: EntryId) -> Result<u64>;
}

/// The bus shared between tasks.
pub type SharedBus = Arc<dyn Bus>;

/// The stream of a tenant's call and agent events: `events:{tenant}`. Payloads are
/// `switchboard_events::Event::to_json()` bytes.
pub fn events_stream(tenant: &str) -> String {
    format!("events:{tenant}")
}

/// Which backend to open, as the `[bus]` configuration section says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusSpec {
    /// `backend = "embedded"`, `path = ".../bus.sqlite"`.
    Embedded { path: std::path::PathBuf },
    /// `backend = "redis"`, `redis_url = "redis://host:6379/"`.
    Redis { url: String },
}

/// Opens the bus a [`BusSpec`] names.
pub async fn open(spec: &BusSpec) -> Result<SharedBus> {
    Ok(match spec {
        BusSpec::Embedded { path } => {
            let path = path.clone();
            let bus = tokio::task::spawn_blocking(move || EmbeddedBus::open(&path))
                .await
                .map_err(|e| BusError::Backend(format!("opening the embedded bus: {e}")))??;
            Arc::new(bus)
        }
        BusSpec::Redis { url } => Arc::new(RedisBus::connect(url).await?),
    })
}

pub(crate) fn ttl_ms(ttl: Duration) -> Result<u64> {
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Err(BusError::Invalid(format!(
            "lease ttl {ttl:?} is under 1 ms"
        )));
    }
    Ok(ms.min(i64::MAX as u64 / 2))
}
