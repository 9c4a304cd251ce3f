//! The Redis bus: Streams (`XADD`, `XRANGE`, `XREADGROUP`, `XACK`, `XAUTOCLAIM`), strings for
//! key-value state, `SET NX PX` leases with Lua scripts for owner-checked renew and release.
//!
//! Keys: stream `s` is the Redis stream `{prefix}stream:{s}`, kv key `k` the string
//! `{prefix}kv:{k}`, lease `l` the string `{prefix}lease:{l}` (holding the owner). The prefix is
//! empty by default. Stream entries have one field, `p`, holding the payload.
//!
//! Commands go over one multiplexed, auto-reconnecting connection; a `read_group` that blocks
//! takes a connection of its own from a small pool, so it never stalls other commands.

use crate::{ttl_ms, Bus, BusError, Entry, EntryId, GroupStart, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Script, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Options for [`RedisBus::connect_with`].
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Put before every key, to share one Redis between deployments. Default empty.
    pub prefix: String,
    /// How long a (non-blocking) command may take before it fails. Default 5 s.
    pub response_timeout: Duration,
    /// How long connecting may take. Default 5 s.
    pub connection_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: String::new(),
            response_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(5),
        }
    }
}

/// The Redis bus: a cheap clonable handle.
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    conn: ConnectionManager,
    /// Idle connections for blocking reads.
    blocking: Mutex<Vec<MultiplexedConnection>>,
    options: RedisOptions,
    renew: Script,
    release: Script,
}

const MAX_IDLE_BLOCKING: usize = 16;

const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('DEL', KEYS[1]) else return 0 end";

fn err(e: redis::RedisError) -> BusError {
    BusError::Backend(format!("redis: {e}"))
}

fn bad_reply(what: &str, v: &Value) -> BusError {
    BusError::Backend(format!("redis: unexpected reply to {what}: {v:?}"))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// One `[id, [field, value, ...]]` entry; `None` for a deleted entry (nil).
fn parse_entry(what: &str, v: &Value) -> Result<Option<Entry>> {
    let Value::Array(parts) = v else {
        return match v {
            Value::Nil => Ok(None),
            _ => Err(bad_reply(what, v)),
        };
    };
    let [id, fields] = parts.as_slice() else {
        return Err(bad_reply(what, v));
    };
    let id: EntryId = text(id)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad_reply(what, v))?;
    let payload = match fields {
        Value::Array(kv) => kv
            .chunks(2)
            .find(|c| text(&c[0]).as_deref() == Some("p"))
            .and_then(|c| match c.get(1) {
                Some(Value::BulkString(b)) => Some(b.clone()),
                _ => None,
            }),
        Value::Map(kv) => kv.iter().find_map(|(k, v)| match (text(k).as_deref(), v) {
            (Some("p"), Value::BulkString(b)) => Some(b.clone()),
            _ => None,
        }),
        _ => None,
    };
    // An entry without our field was not written by us: hand it over empty, in order.
    Ok(Some(Entry {
        id,
        payload: payload.unwrap_or_default(),
    }))
}

fn parse_entries(what: &str, v: &Value) -> Result<Vec<Entry>> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                if let Some(e) = parse_entry(what, item)? {
                    out.push(e);
                }
            }
            Ok(out)
        }
        _ => Err(bad_reply(what, v)),
    }
}

/// `XREADGROUP` answers `[[stream, entries]]` (RESP2) or `{stream: entries}` (RESP3), or nil.
fn parse_read(v: &Value) -> Result<Vec<Entry>> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => match streams.first() {
            None => Ok(Vec::new()),
            Some(Value::Array(kv)) if kv.len() == 2 => parse_entries("XREADGROUP", &kv[1]),
            Some(other) => Err(bad_reply("XREADGROUP", other)),
        },
        Value::Map(streams) => match streams.first() {
            None => Ok(Vec::new()),
            Some((_, entries)) => parse_entries("XREADGROUP", entries),
        },
        _ => Err(bad_reply("XREADGROUP", v)),
    }
}

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}

impl RedisBus {
    /// Connects to `url` (`redis://host:port/db`) with default options.
    pub async fn connect(url: &str) -> Result<RedisBus> {
        RedisBus::connect_with(url, RedisOptions::default()).await
    }

    pub async fn connect_with(url: &str, options: RedisOptions) -> Result<RedisBus> {
        let client = Client::open(url)
            .map_err(|e| BusError::Backend(format!("bad redis url {url:?}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(options.response_timeout)
            .set_connection_timeout(options.connection_timeout)
            .set_number_of_retries(3)
            // Bounds each wait between reconnection attempts (without it the backoff grows to
            // minutes: a dead server would hang `open` for over three minutes).
            .set_max_delay(1000);
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| BusError::Backend(format!("cannot connect to redis at {url}: {e}")))?;
        Ok(RedisBus {
            inner: Arc::new(Inner {
                client,
                conn,
                blocking: Mutex::new(Vec::new()),
                options,
                renew: Script::new(RENEW),
                release: Script::new(RELEASE),
            }),
        })
    }

    fn stream_key(&self, stream: &str) -> String {
        format!("{}stream:{stream}", self.inner.options.prefix)
    }
    fn kv_key(&self, key: &str) -> String {
        format!("{}kv:{key}", self.inner.options.prefix)
    }
    fn lease_key(&self, key: &str) -> String {
        format!("{}lease:{key}", self.inner.options.prefix)
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    async fn blocking_conn(&self) -> Result<MultiplexedConnection> {
        let idle = match self.inner.blocking.lock() {
            Ok(mut pool) => pool.pop(),
            Err(_) => None,
        };
        if let Some(c) = idle {
            return Ok(c);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(self.inner.options.connection_timeout);
        self.inner
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(err)
    }

    fn give_back(&self, c: MultiplexedConnection) {
        if let Ok(mut pool) = self.inner.blocking.lock() {
            if pool.len() < MAX_IDLE_BLOCKING {
                pool.push(c);
            }
        }
    }

    /// `Ok` when `group` exists on `stream`, else [`BusError::NoGroup`].
    async fn check_group(&self, stream: &str, group: &str) -> Result<()> {
        let r: redis::RedisResult<Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(self.stream_key(stream))
            .query_async(&mut self.conn())
            .await;
        let no_group = || BusError::NoGroup {
            stream: stream.to_string(),
            group: group.to_string(),
        };
        let v = match r {
            Ok(v) => v,
            // A stream that does not exist has no group.
            Err(e) if e.to_string().to_ascii_lowercase().contains("no such key") => {
                return Err(no_group())
            }
            Err(e) => return Err(err(e)),
        };
        let is_group = |g: &Value| match g {
            Value::Array(kv) => kv.chunks(2).any(|c| {
                text(&c[0]).as_deref() == Some("name")
                    && c.get(1).and_then(text).as_deref() == Some(group)
            }),
            Value::Map(kv) => kv.iter().any(|(k, v)| {
                text(k).as_deref() == Some("name") && text(v).as_deref() == Some(group)
            }),
            _ => false,
        };
        match &v {
            Value::Array(groups) if groups.iter().any(is_group) => Ok(()),
            _ => Err(no_group()),
        }
    }

    fn map_group_err(e: redis::RedisError, stream: &str, group: &str) -> BusError {
        if is_nogroup(&e) {
            BusError::NoGroup {
                stream: stream.to_string(),
                group: group.to_string(),
            }
        } else {
            err(e)
        }
    }
}

#[async_trait::async_trait]
impl Bus for RedisBus {
    async fn publish(&self, stream: &str, payload: &[u8]) -> Result<EntryId> {
        let id: String = redis::cmd("XADD")
            .arg(self.stream_key(stream))
            .arg("*")
            .arg("p")
            .arg(payload)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| {
                metrics::counter!("switchboard_bus_publish_errors_total", "backend" => "redis")
                    .increment(1);
                tracing::warn!(stream, error = %e, "redis XADD failed");
                err(e)
            })?;
        metrics::counter!("switchboard_bus_published_total", "backend" => "redis").increment(1);
        id.parse()
            .map_err(|_| BusError::Backend(format!("redis: XADD answered a bad id {id:?}")))
    }

    async fn read_range(
        &self,
        stream: &str,
        after: Option<EntryId>,
        count: usize,
    ) -> Result<Vec<Entry>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let start = match after {
            Some(id) => format!("({id}"),
            None => "-".to_string(),
        };
        let v: Value = redis::cmd("XRANGE")
            .arg(self.stream_key(stream))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn())
            .await
            .map_err(err)?;
        parse_entries("XRANGE", &v)
    }

    async fn last_id(&self, stream: &str) -> Result<Option<EntryId>> {
        let v: Value = redis::cmd("XREVRANGE")
            .arg(self.stream_key(stream))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn())
            .await
            .map_err(err)?;
        Ok(parse_entries("XREVRANGE", &v)?.first().map(|e| e.id))
    }

    async fn create_group(&self, stream: &str, group: &str, start: GroupStart) -> Result<()> {
        let start = match start {
            GroupStart::Beginning => "0".to_string(),
            GroupStart::End => "$".to_string(),
            GroupStart::After(id) => id.to_string(),
        };
        let r: redis::RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.stream_key(stream))
            .arg(group)
            .arg(start)
            .arg("MKSTREAM")
            .query_async(&mut self.conn())
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") || e.to_string().contains("BUSYGROUP") => {
                Ok(())
            }
            Err(e) => Err(err(e)),
        }
    }

    async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count.max(1));
        let block_ms = ms(block);
        if block_ms > 0 {
            cmd.arg("BLOCK").arg(block_ms);
        }
        cmd.arg("STREAMS").arg(self.stream_key(stream)).arg(">");
        if count == 0 {
            // Still report a missing group, like the embedded bus.
            return self.check_group(stream, group).await.map(|()| Vec::new());
        }
        if block_ms == 0 {
            let v: Value = cmd
                .query_async(&mut self.conn())
                .await
                .map_err(|e| Self::map_group_err(e, stream, group))?;
            return parse_read(&v);
        }
        let mut c = self.blocking_conn().await?;
        c.set_response_timeout(block + self.inner.options.response_timeout);
        let v: Value = cmd
            .query_async(&mut c)
            .await
            .map_err(|e| Self::map_group_err(e, stream, group))?;
        self.give_back(c);
        parse_read(&v)
    }

    async fn ack(&self, stream: &str, group: &str, ids: &[EntryId]) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut cmd = redis::cmd("XACK");
        cmd.arg(self.stream_key(stream)).arg(group);
        for id in ids {
            cmd.arg(id.to_string());
        }
        let n: i64 = cmd.query_async(&mut self.conn()).await.map_err(err)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn trim_before(&self, before: EntryId) -> Result<u64> {
        let pattern = self.stream_key("*");
        let minid = before.to_string();
        let mut cursor = 0u64;
        let mut gone = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .arg("TYPE")
                .arg("stream")
                .query_async(&mut self.conn())
                .await
                .map_err(err)?;
            for key in keys {
                // Deleted entries leave the groups' pending lists at the next XAUTOCLAIM.
                let n: u64 = redis::cmd("XTRIM")
                    .arg(&key)
                    .arg("MINID")
                    .arg(&minid)
                    .query_async(&mut self.conn())
                    .await
                    .map_err(err)?;
                gone += n;
            }
            if next == 0 {
                return Ok(gone);
            }
            cursor = next;
        }
    }

    async fn claim_pending(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Entry>> {
        if count == 0 {
            // XAUTOCLAIM has no COUNT 0: it would claim an entry nobody gets to see.
            return self.check_group(stream, group).await.map(|()| Vec::new());
        }
        let key = self.stream_key(stream);
        let mut out = Vec::new();
        let mut cursor = "0-0".to_string();
        loop {
            let v: Value = redis::cmd("XAUTOCLAIM")
                .arg(&key)
                .arg(group)
                .arg(consumer)
                .arg(ms(min_idle))
                .arg(&cursor)
                .arg("COUNT")
                .arg((count - out.len()).max(1))
                .query_async(&mut self.conn())
                .await
                .map_err(|e| Self::map_group_err(e, stream, group))?;
            let Value::Array(parts) = &v else {
                return Err(bad_reply("XAUTOCLAIM", &v));
            };
            let (Some(next), Some(entries)) = (parts.first().and_then(text), parts.get(1)) else {
                return Err(bad_reply("XAUTOCLAIM", &v));
            };
            out.extend(parse_entries("XAUTOCLAIM", entries)?);
            if next == "0-0" || out.len() >= count {
                break;
            }
            cursor = next;
        }
        out.truncate(count);
        Ok(out)
    }

    async fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        redis::cmd("GET")
            .arg(self.kv_key(key))
            .query_async(&mut self.conn())
            .await
            .map_err(err)
    }

    async fn kv_set(&self, key: &str, value: &[u8]) -> Result<()> {
        redis::cmd("SET")
            .arg(self.kv_key(key))
            .arg(value)
            .query_async::<Value>(&mut self.conn())
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn kv_delete(&self, key: &str) -> Result<bool> {
        let n: i64 = redis::cmd("DEL")
            .arg(self.kv_key(key))
            .query_async(&mut self.conn())
            .await
            .map_err(err)?;
        Ok(n > 0)
    }

    async fn lease_acquire(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool> {
        let ttl = ttl_ms(ttl)?;
        let v: Value = redis::cmd("SET")
            .arg(self.lease_key(key))
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(ttl)
            .query_async(&mut self.conn())
            .await
            .map_err(err)?;
        Ok(!matches!(v, Value::Nil))
    }

    async fn lease_renew(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool> {
        let ttl = ttl_ms(ttl)?;
        let n: i64 = self
            .inner
            .renew
            .key(self.lease_key(key))
            .arg(owner)
            .arg(ttl)
            .invoke_async(&mut self.conn())
            .await
            .map_err(err)?;
        Ok(n == 1)
    }

    async fn lease_release(&self, key: &str, owner: &str) -> Result<bool> {
        let n: i64 = self
            .inner
            .release
            .key(self.lease_key(key))
            .arg(owner)
            .invoke_async(&mut self.conn())
            .await
            .map_err(err)?;
        Ok(n == 1)
    }

    async fn lease_owner(&self, key: &str) -> Result<Option<String>> {
        redis::cmd("GET")
            .arg(self.lease_key(key))
            .query_async(&mut self.conn())
            .await
            .map_err(err)
    }
}
