//! The embedded bus: SQLite (WAL) owned by one worker thread, in-process wakeups with
//! `tokio::sync::Notify`.
//!
//! # Durability
//!
//! `publish` returns after the transaction holding the entry committed. The database runs in
//! WAL mode with `synchronous = NORMAL` by default: a commit has written the WAL frames to the
//! file (the OS page cache) before it returns, so the entry survives the process being killed
//! at any point (SIGKILL, panic, OOM kill), which is the requirement: killing and restarting
//! the process loses no event that was acknowledged to a publisher. What NORMAL does not cover
//! is the machine losing power or the kernel crashing before the next WAL sync (at checkpoint):
//! the last transactions may then be rolled back, the database stays consistent.
//! [`Synchronous::Full`] fsyncs the WAL at every commit and covers that too, at the price of one
//! fsync per commit (shared by every request that arrived meanwhile: see below).
//!
//! # Threading
//!
//! One thread owns the connection and runs requests sent over a channel, so no SQLite call
//! ever runs on an async worker thread. It takes every request waiting in the channel (up to
//! 256) and runs them in one transaction, each inside its own savepoint (a failing request
//! rolls back only itself), then commits once and answers them all: group commit, so under load
//! many publishes share one commit (and one fsync with `Synchronous::Full`).
//!
//! The database is opened with `locking_mode = EXCLUSIVE`: one process owns a bus file, and a
//! second one gets an error at open instead of silently missing wakeups. The lock goes away
//! with the process, killed or not.

use crate::{ttl_ms, Bus, BusError, Clock, Entry, EntryId, GroupStart, Result, SystemClock};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};

/// How hard a commit pushes to disk (SQLite `PRAGMA synchronous` in WAL mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// Survives the process dying; the OS crashing may lose the last commits. The default.
    #[default]
    Normal,
    /// Also survives power loss: fsync at every commit.
    Full,
}

/// Options for [`EmbeddedBus::open_with`].
#[derive(Clone)]
pub struct EmbeddedOptions {
    /// The clock for entry ids, pending idle times and lease expiry.
    pub clock: Arc<dyn Clock>,
    pub synchronous: Synchronous,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            clock: Arc::new(SystemClock),
            synchronous: Synchronous::Normal,
        }
    }
}

type Done = Box<dyn FnOnce(&Result<()>) + Send>;
/// Runs on the worker with the connection and the clock's now, or with the error that kept the
/// transaction from starting; says whether it succeeded and how to answer after the commit.
type Job = Box<dyn FnOnce(Result<(&Connection, u64)>) -> (bool, Done) + Send>;

/// The embedded bus: a cheap clonable handle.
#[derive(Clone)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
    wakeups: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel stops the worker, which closes the database (and its lock).
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        if let Some(worker) = self.worker.lock().ok().and_then(|mut w| w.take()) {
            let _ = worker.join();
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS streams (
    name TEXT PRIMARY KEY, last_ms INTEGER NOT NULL, last_seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries (
    stream TEXT NOT NULL, ms INTEGER NOT NULL, seq INTEGER NOT NULL, payload BLOB NOT NULL,
    PRIMARY KEY (stream, ms, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS groups (
    stream TEXT NOT NULL, name TEXT NOT NULL, last_ms INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    PRIMARY KEY (stream, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    stream TEXT NOT NULL, grp TEXT NOT NULL, ms INTEGER NOT NULL, seq INTEGER NOT NULL,
    consumer TEXT NOT NULL, delivered_ms INTEGER NOT NULL, deliveries INTEGER NOT NULL,
    PRIMARY KEY (stream, grp, ms, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_ms INTEGER NOT NULL) WITHOUT ROWID;
";

const BATCH: usize = 256;

fn db_err(e: rusqlite::Error) -> BusError {
    BusError::Backend(format!("sqlite: {e}"))
}

/// SQLite integers are i64: clamp ids and times into them (order is kept below 2^63).
fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl EmbeddedBus {
    /// Opens (creating if needed) the bus stored at `path`, with the system clock and
    /// `synchronous = NORMAL`. Blocking (opens a file): call it before the runtime starts or
    /// inside `spawn_blocking` ([`crate::open`] does).
    pub fn open(path: &Path) -> Result<EmbeddedBus> {
        EmbeddedBus::open_with(path, EmbeddedOptions::default())
    }

    pub fn open_with(path: &Path, options: EmbeddedOptions) -> Result<EmbeddedBus> {
        let conn = Connection::open(path).map_err(|e| {
            BusError::Backend(format!("cannot open bus database {}: {e}", path.display()))
        })?;
        let sync = match options.synchronous {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        conn.busy_timeout(Duration::from_millis(200))
            .map_err(db_err)?;
        conn.execute_batch(&format!(
            "PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync};"
        ))
        .map_err(db_err)?;
        // The first write takes the exclusive lock: another process holding the file fails here.
        conn.execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA} COMMIT;"))
            .map_err(|e| {
                BusError::Backend(format!(
                    "cannot open bus database {} (is another process using it?): {e}",
                    path.display()
                ))
            })?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(db_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(BusError::Backend(format!(
                "bus database {} is not in WAL mode ({mode})",
                path.display()
            )));
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let clock = options.clock.clone();
        let worker = std::thread::Builder::new()
            .name("bus-sqlite".into())
            .spawn(move || worker(conn, rx, clock))
            .map_err(|e| BusError::Backend(format!("cannot start the bus thread: {e}")))?;
        Ok(EmbeddedBus {
            inner: Arc::new(Inner {
                jobs: Mutex::new(Some(tx)),
                worker: Mutex::new(Some(worker)),
                wakeups: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Runs `f` on the worker thread inside the next transaction; answers after the commit.
    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, u64) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |ctx: Result<(&Connection, u64)>| {
            let result = match ctx {
                Ok((conn, now)) => f(conn, now),
                Err(e) => Err(e),
            };
            let ok = result.is_ok();
            let done: Done = Box::new(move |commit: &Result<()>| {
                let _ = tx.send(match commit {
                    Ok(()) => result,
                    Err(e) => Err(e.clone()),
                });
            });
            (ok, done)
        });
        {
            let jobs = self.inner.jobs.lock().map_err(|_| BusError::Closed)?;
            jobs.as_ref()
                .ok_or(BusError::Closed)?
                .send(job)
                .map_err(|_| BusError::Closed)?;
        }
        rx.await.map_err(|_| BusError::Closed)?
    }

    fn wakeup(&self, stream: &str) -> Arc<Notify> {
        let mut map = match self.inner.wakeups.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(stream.to_string()).or_default().clone()
    }
}

fn worker(conn: Connection, rx: mpsc::Receiver<Job>, clock: Arc<dyn Clock>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let now = clock.now_ms();
        let mut dones = Vec::with_capacity(batch.len());
        let begin = conn.execute_batch("BEGIN IMMEDIATE").map_err(db_err);
        if let Err(e) = begin {
            tracing::error!(error = %e, jobs = batch.len(), "bus transaction did not start");
            for job in batch {
                let (_, done) = job(Err(e.clone()));
                done(&Err(e.clone()));
            }
            continue;
        }
        for job in batch {
            let sp = conn.execute_batch("SAVEPOINT job").map_err(db_err);
            let (ok, done) = job(Ok((&conn, now)));
            let end = match (sp, ok) {
                (Err(e), _) => Err(e),
                (Ok(()), true) => conn.execute_batch("RELEASE job").map_err(db_err),
                (Ok(()), false) => conn
                    .execute_batch("ROLLBACK TO job; RELEASE job")
                    .map_err(db_err),
            };
            if let Err(e) = end {
                tracing::error!(error = %e, "bus savepoint failed");
            }
            dones.push(done);
        }
        let commit = conn.execute_batch("COMMIT").map_err(db_err);
        metrics::histogram!("switchboard_bus_commit_batch", "backend" => "embedded")
            .record(dones.len() as f64);
        if let Err(e) = &commit {
            tracing::error!(error = %e, jobs = dones.len(), "bus commit failed");
            metrics::counter!("switchboard_bus_commit_errors_total", "backend" => "embedded")
                .increment(1);
            let _ = conn.execute_batch("ROLLBACK");
        }
        for done in dones {
            done(&commit);
        }
    }
}

fn stream_last(conn: &Connection, stream: &str) -> Result<Option<EntryId>> {
    conn.prepare_cached("SELECT last_ms, last_seq FROM streams WHERE name = ?1")
        .and_then(|mut st| {
            st.query_row([stream], |r| Ok(EntryId::new(u(r.get(0)?), u(r.get(1)?))))
                .optional()
        })
        .map_err(db_err)
}

fn group_pos(conn: &Connection, stream: &str, group: &str) -> Result<EntryId> {
    conn.prepare_cached("SELECT last_ms, last_seq FROM groups WHERE stream = ?1 AND name = ?2")
        .and_then(|mut st| {
            st.query_row([stream, group], |r| {
                Ok(EntryId::new(u(r.get(0)?), u(r.get(1)?)))
            })
            .optional()
        })
        .map_err(db_err)?
        .ok_or_else(|| BusError::NoGroup {
            stream: stream.to_string(),
            group: group.to_string(),
        })
}

fn range(conn: &Connection, stream: &str, after: EntryId, count: usize) -> Result<Vec<Entry>> {
    let mut st = conn
        .prepare_cached(
            "SELECT ms, seq, payload FROM entries WHERE stream = ?1 AND (ms, seq) > (?2, ?3)
             ORDER BY ms, seq LIMIT ?4",
        )
        .map_err(db_err)?;
    let rows = st
        .query_map(
            params![stream, i(after.ms), i(after.seq), i(count as u64)],
            |r| {
                Ok(Entry {
                    id: EntryId::new(u(r.get(0)?), u(r.get(1)?)),
                    payload: r.get(2)?,
                })
            },
        )
        .map_err(db_err)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
}

/// The live lease on `key`: `(owner, expires_ms)` when not expired at `now`.
fn live_lease(conn: &Connection, key: &str, now: u64) -> Result<Option<String>> {
    let row: Option<(String, i64)> = conn
        .prepare_cached("SELECT owner, expires_ms FROM leases WHERE key = ?1")
        .and_then(|mut st| {
            st.query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(db_err)?;
    Ok(row.and_then(|(owner, exp)| (exp > i(now)).then_some(owner)))
}

#[async_trait::async_trait]
impl Bus for EmbeddedBus {
    async fn publish(&self, stream: &str, payload: &[u8]) -> Result<EntryId> {
        let name = stream.to_string();
        let payload = payload.to_vec();
        let id = self
            .run(move |conn, now| {
                let last = stream_last(conn, &name)?.unwrap_or(EntryId::ZERO);
                let mut id = if now > last.ms {
                    EntryId::new(now, 0)
                } else {
                    last.next()
                };
                if id == EntryId::ZERO {
                    id = id.next();
                }
                conn.prepare_cached(
                    "INSERT INTO streams (name, last_ms, last_seq) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET last_ms = ?2, last_seq = ?3",
                )
                .and_then(|mut st| st.execute(params![name, i(id.ms), i(id.seq)]))
                .map_err(db_err)?;
                conn.prepare_cached(
                    "INSERT INTO entries (stream, ms, seq, payload) VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut st| st.execute(params![name, i(id.ms), i(id.seq), payload]))
                .map_err(db_err)?;
                Ok(id)
            })
            .await?;
        metrics::counter!("switchboard_bus_published_total", "backend" => "embedded").increment(1);
        self.wakeup(stream).notify_waiters();
        Ok(id)
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
        let name = stream.to_string();
        self.run(move |conn, _| range(conn, &name, after.unwrap_or(EntryId::ZERO), count))
            .await
    }

    async fn last_id(&self, stream: &str) -> Result<Option<EntryId>> {
        let name = stream.to_string();
        self.run(move |conn, _| {
            // A stream created by create_group but never written has no entry.
            Ok(stream_last(conn, &name)?.filter(|id| *id != EntryId::ZERO))
        })
        .await
    }

    async fn create_group(&self, stream: &str, group: &str, start: GroupStart) -> Result<()> {
        let (name, group) = (stream.to_string(), group.to_string());
        self.run(move |conn, _| {
            let last = match stream_last(conn, &name)? {
                Some(id) => id,
                None => {
                    conn.execute(
                        "INSERT INTO streams (name, last_ms, last_seq) VALUES (?1, 0, 0)",
                        [&name],
                    )
                    .map_err(db_err)?;
                    EntryId::ZERO
                }
            };
            let pos = match start {
                GroupStart::Beginning => EntryId::ZERO,
                GroupStart::End => last,
                GroupStart::After(id) => id,
            };
            conn.execute(
                "INSERT INTO groups (stream, name, last_ms, last_seq) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (stream, name) DO NOTHING",
                params![name, group, i(pos.ms), i(pos.seq)],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry>> {
        let deadline = tokio::time::Instant::now() + block;
        let wakeup = self.wakeup(stream);
        loop {
            // Register for the wakeup before looking, so a publish in between is not missed.
            let notified = wakeup.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (name, grp, cons) = (stream.to_string(), group.to_string(), consumer.to_string());
            let entries = self
                .run(move |conn, now| {
                    let pos = group_pos(conn, &name, &grp)?;
                    if count == 0 {
                        return Ok(Vec::new());
                    }
                    let entries = range(conn, &name, pos, count)?;
                    let Some(last) = entries.last() else {
                        return Ok(entries);
                    };
                    let mut st = conn
                        .prepare_cached(
                            "INSERT OR REPLACE INTO pending
                             (stream, grp, ms, seq, consumer, delivered_ms, deliveries)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)",
                        )
                        .map_err(db_err)?;
                    for e in &entries {
                        st.execute(params![name, grp, i(e.id.ms), i(e.id.seq), cons, i(now)])
                            .map_err(db_err)?;
                    }
                    conn.prepare_cached(
                        "UPDATE groups SET last_ms = ?3, last_seq = ?4
                         WHERE stream = ?1 AND name = ?2",
                    )
                    .and_then(|mut st| {
                        st.execute(params![name, grp, i(last.id.ms), i(last.id.seq)])
                    })
                    .map_err(db_err)?;
                    Ok(entries)
                })
                .await?;
            if !entries.is_empty() || block.is_zero() || count == 0 {
                return Ok(entries);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn ack(&self, stream: &str, group: &str, ids: &[EntryId]) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let (name, grp, ids) = (stream.to_string(), group.to_string(), ids.to_vec());
        self.run(move |conn, _| {
            let mut st = conn
                .prepare_cached(
                    "DELETE FROM pending WHERE stream = ?1 AND grp = ?2 AND ms = ?3 AND seq = ?4",
                )
                .map_err(db_err)?;
            let mut n = 0;
            for id in ids {
                n += st
                    .execute(params![name, grp, i(id.ms), i(id.seq)])
                    .map_err(db_err)?;
            }
            Ok(n)
        })
        .await
    }

    async fn trim_before(&self, before: EntryId) -> Result<u64> {
        self.run(move |conn, _| {
            let names = conn
                .prepare_cached("SELECT name FROM streams")
                .and_then(|mut st| {
                    st.query_map([], |r| r.get::<_, String>(0))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(db_err)?;
            let (ms, seq) = (i(before.ms), i(before.seq));
            let mut gone = 0;
            // Per stream, so that each delete walks the primary key's range.
            for name in names {
                gone += conn
                    .prepare_cached(
                        "DELETE FROM entries WHERE stream = ?1 AND (ms < ?2 OR (ms = ?2 AND seq < ?3))",
                    )
                    .and_then(|mut st| st.execute(params![name, ms, seq]))
                    .map_err(db_err)? as u64;
                conn.prepare_cached(
                    "DELETE FROM pending WHERE stream = ?1 AND (ms < ?2 OR (ms = ?2 AND seq < ?3))",
                )
                .and_then(|mut st| st.execute(params![name, ms, seq]))
                .map_err(db_err)?;
            }
            Ok(gone)
        })
        .await
    }

    async fn claim_pending(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Entry>> {
        let (name, grp, cons) = (stream.to_string(), group.to_string(), consumer.to_string());
        self.run(move |conn, now| {
            group_pos(conn, &name, &grp)?;
            if count == 0 {
                return Ok(Vec::new());
            }
            let idle_before = i(now).saturating_sub(ms(min_idle));
            let mut st = conn
                .prepare_cached(
                    "SELECT p.ms, p.seq, e.payload FROM pending p
                     JOIN entries e ON e.stream = p.stream AND e.ms = p.ms AND e.seq = p.seq
                     WHERE p.stream = ?1 AND p.grp = ?2 AND p.delivered_ms <= ?3
                     ORDER BY p.ms, p.seq LIMIT ?4",
                )
                .map_err(db_err)?;
            let entries = st
                .query_map(params![name, grp, idle_before, i(count as u64)], |r| {
                    Ok(Entry {
                        id: EntryId::new(u(r.get(0)?), u(r.get(1)?)),
                        payload: r.get(2)?,
                    })
                })
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            let mut up = conn
                .prepare_cached(
                    "UPDATE pending SET consumer = ?5, delivered_ms = ?6, deliveries = deliveries + 1
                     WHERE stream = ?1 AND grp = ?2 AND ms = ?3 AND seq = ?4",
                )
                .map_err(db_err)?;
            for e in &entries {
                up.execute(params![name, grp, i(e.id.ms), i(e.id.seq), cons, i(now)])
                    .map_err(db_err)?;
            }
            Ok(entries)
        })
        .await
    }

    async fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let key = key.to_string();
        self.run(move |conn, _| {
            conn.prepare_cached("SELECT value FROM kv WHERE key = ?1")
                .and_then(|mut st| st.query_row([key], |r| r.get(0)).optional())
                .map_err(db_err)
        })
        .await
    }

    async fn kv_set(&self, key: &str, value: &[u8]) -> Result<()> {
        let (key, value) = (key.to_string(), value.to_vec());
        self.run(move |conn, _| {
            conn.prepare_cached("INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)")
                .and_then(|mut st| st.execute(params![key, value]))
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn kv_delete(&self, key: &str) -> Result<bool> {
        let key = key.to_string();
        self.run(move |conn, _| {
            conn.prepare_cached("DELETE FROM kv WHERE key = ?1")
                .and_then(|mut st| st.execute([key]))
                .map(|n| n > 0)
                .map_err(db_err)
        })
        .await
    }

    async fn lease_acquire(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool> {
        let ttl = ttl_ms(ttl)?;
        let (key, owner) = (key.to_string(), owner.to_string());
        self.run(move |conn, now| {
            if live_lease(conn, &key, now)?.is_some() {
                return Ok(false);
            }
            conn.prepare_cached(
                "INSERT OR REPLACE INTO leases (key, owner, expires_ms) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut st| st.execute(params![key, owner, i(now.saturating_add(ttl))]))
            .map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    async fn lease_renew(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool> {
        let ttl = ttl_ms(ttl)?;
        let (key, owner) = (key.to_string(), owner.to_string());
        self.run(move |conn, now| {
            if live_lease(conn, &key, now)?.as_deref() != Some(owner.as_str()) {
                return Ok(false);
            }
            conn.prepare_cached("UPDATE leases SET expires_ms = ?2 WHERE key = ?1")
                .and_then(|mut st| st.execute(params![key, i(now.saturating_add(ttl))]))
                .map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    async fn lease_release(&self, key: &str, owner: &str) -> Result<bool> {
        let (key, owner) = (key.to_string(), owner.to_string());
        self.run(move |conn, now| {
            if live_lease(conn, &key, now)?.as_deref() != Some(owner.as_str()) {
                return Ok(false);
            }
            conn.prepare_cached("DELETE FROM leases WHERE key = ?1")
                .and_then(|mut st| st.execute([key]))
                .map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    async fn lease_owner(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_string();
        self.run(move |conn, now| live_lease(conn, &key, now)).await
    }
}
