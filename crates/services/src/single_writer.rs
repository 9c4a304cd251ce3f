//! The glue shared by `agent-state` and `routing`: one writer per tenant, chosen by a bus
//! lease, folding a request stream (consumer group) and the tenant's event stream into a pure
//! reducer, publishing what the reducer says, and keeping the reducer in a kv snapshot so
//! that a restart or another process resumes where it stopped.
//!
//! Per tenant:
//! * Standby: tries the lease `{role}:{tenant}` every [`Timing::standby_poll`]; meanwhile the
//!   state served over REST is the last snapshot.
//! * Writer: loads the snapshot (kv key `{role}:{tenant}`: the reducer and the position in
//!   `events:{tenant}`), catches up with the events after that position, takes over the
//!   requests its group delivered but nobody acknowledged, then loops: events
//!   (`read_range` from the position), requests (`read_group`, waiting up to
//!   [`Timing::idle_wait`] when nothing happened), timers; publishes the outputs, saves the
//!   snapshot when something changed, then acknowledges the requests. A crash between the
//!   publication and the snapshot repeats outputs (at-least-once), never loses an input; a
//!   bus error while publishing or saving ends the writer's turn (standby, lease given up), so
//!   the next writer redoes the unacknowledged inputs from the last snapshot.
//! * The lease is renewed every [`Timing::renew`]; a writer that fails to renew goes back to
//!   standby, so at most one process writes once the lease ran out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use switchboard_bus::{BusError, Entry, EntryId, GroupStart, SharedBus};
use switchboard_config::{Config, Tenant};
use switchboard_events::Event;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The tenants a role serves, as they are now: the configuration store's (changes made over
/// the REST API included, see [`crate::store::watch_tenants`]), or the file's.
pub type TenantsFeed = watch::Receiver<Arc<Vec<Tenant>>>;

/// A feed of the configuration file's tenants that never changes (tests, benchmarks).
pub fn fixed_tenants(config: &Config) -> TenantsFeed {
    watch::channel(Arc::new(config.tenants.clone())).1
}

fn find(tenants: &[Tenant], name: &str) -> Option<Tenant> {
    tenants.iter().find(|t| t.name == name).cloned()
}

/// What a reducer asks the glue to do.
// Events are the common case; boxing them would allocate for each one.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Emit {
    /// Publish on `events:{tenant}`.
    Event(Event),
    /// Append `payload` to `stream` (a reply).
    To { stream: String, payload: Vec<u8> },
}

/// A per-tenant reducer the glue can drive.
pub trait Core: Serialize + DeserializeOwned + Send + 'static {
    /// The payload of the request stream.
    type Request: DeserializeOwned;
    fn request(&mut self, req: &Self::Request, now: u64) -> Vec<Emit>;
    fn event(&mut self, event: &Event, now: u64) -> Vec<Emit>;
    fn tick(&mut self, now: u64) -> Vec<Emit>;
    fn next_deadline(&self) -> Option<u64>;
    /// Applies the configuration after a snapshot was loaded.
    fn configure(&mut self, config: &Config, tenant: &Tenant);
}

/// Where a role's streams and keys are.
#[derive(Clone, Debug)]
pub struct Names {
    /// The role: the lease and snapshot key prefix and the consumer group name.
    pub role: &'static str,
    pub tenant: String,
    pub requests: String,
    /// This process's name, as lease owner and consumer.
    pub consumer: String,
}

impl Names {
    fn key(&self) -> String {
        format!("{}:{}", self.role, self.tenant)
    }
}

/// Timing of the loop; [`Timing::default`] is what the binary uses.
#[derive(Clone, Debug)]
pub struct Timing {
    pub lease_ttl: Duration,
    pub renew: Duration,
    pub standby_poll: Duration,
    /// How long a request read waits when there was nothing to do (also the latency of
    /// events, which are read with `read_range`).
    pub idle_wait: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_ttl: Duration::from_secs(3),
            renew: Duration::from_millis(750),
            standby_poll: Duration::from_millis(500),
            idle_wait: Duration::from_millis(20),
        }
    }
}

/// The state of one tenant, shared with the REST handlers.
pub struct Slot<C> {
    pub core: C,
    /// The last entry of `events:{tenant}` folded in.
    pub position: Option<EntryId>,
    /// Whether this process is the tenant's writer.
    pub writer: bool,
}

pub type Shared<C> = Arc<Mutex<Slot<C>>>;

pub fn lock<C>(slot: &Mutex<Slot<C>>) -> MutexGuard<'_, Slot<C>> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Serialize, Deserialize)]
struct Snapshot<C> {
    version: u32,
    position: Option<EntryId>,
    core: C,
}

const SNAPSHOT_VERSION: u32 = 1;
const BATCH: usize = 256;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The last snapshot of a tenant, when there is a readable one.
pub(crate) async fn load<C: Core>(
    bus: &SharedBus,
    names: &Names,
) -> Result<Option<(C, Option<EntryId>)>, BusError> {
    let Some(bytes) = bus.kv_get(&names.key()).await? else {
        return Ok(None);
    };
    match serde_json::from_slice::<Snapshot<C>>(&bytes) {
        Ok(s) if s.version == SNAPSHOT_VERSION => Ok(Some((s.core, s.position))),
        Ok(s) => {
            tracing::warn!(role = names.role, tenant = %names.tenant, version = s.version,
                "snapshot of another version; starting from the configuration");
            Ok(None)
        }
        Err(e) => {
            tracing::warn!(role = names.role, tenant = %names.tenant, error = %e,
                "snapshot unreadable; starting from the configuration");
            Ok(None)
        }
    }
}

/// Loads the last snapshot into `slot` (at start, and while on standby).
pub async fn restore<C: Core>(
    bus: &SharedBus,
    names: &Names,
    config: &Config,
    tenant: &Tenant,
    slot: &Shared<C>,
) -> Result<(), BusError> {
    if let Some((mut core, position)) = load::<C>(bus, names).await? {
        core.configure(config, tenant);
        let mut s = lock(slot);
        s.core = core;
        s.position = position;
    }
    Ok(())
}

/// Writes the snapshot; an error is counted, logged and returned.
async fn save<C: Core>(bus: &SharedBus, names: &Names, slot: &Shared<C>) -> Result<(), BusError> {
    let bytes = {
        let s = lock(slot);
        serde_json::to_vec(&Snapshot {
            version: SNAPSHOT_VERSION,
            position: s.position,
            core: &s.core,
        })
    };
    let result = match bytes {
        Ok(b) => bus.kv_set(&names.key(), &b).await,
        Err(e) => Err(BusError::Invalid(e.to_string())),
    };
    if let Err(e) = &result {
        metrics::counter!("switchboard_single_writer_errors_total", "role" => names.role, "op" => "snapshot").increment(1);
        tracing::warn!(role = names.role, tenant = %names.tenant, error = %e, "snapshot not saved");
    }
    result
}

/// Publishes outputs in order. On an error the writer stops (the caller returns it): its
/// inputs stay unacknowledged and the state unsaved, so the next writer redoes them from the
/// last snapshot rather than losing an output.
async fn emit(bus: &SharedBus, names: &Names, out: Vec<Emit>) -> Result<(), BusError> {
    for e in out {
        let result = match &e {
            Emit::Event(event) => crate::bus::publish_event(bus.as_ref(), event).await,
            Emit::To { stream, payload } => bus.publish(stream, payload).await,
        };
        if let Err(err) = result {
            metrics::counter!("switchboard_single_writer_errors_total", "role" => names.role, "op" => "publish").increment(1);
            tracing::warn!(role = names.role, tenant = %names.tenant, error = %err, "output not published");
            return Err(err);
        }
    }
    Ok(())
}

/// Runs one tenant until the drain or until the tenant is deleted: standby, writer,
/// standby...
pub async fn run<C: Core>(
    bus: SharedBus,
    names: Names,
    config: Arc<Config>,
    mut feed: TenantsFeed,
    slot: Shared<C>,
    timing: Timing,
    drain: CancellationToken,
) -> anyhow::Result<()> {
    let key = names.key();
    while !drain.is_cancelled() {
        let Some(tenant) = find(&feed.borrow_and_update(), &names.tenant) else {
            break;
        };
        match bus
            .lease_acquire(&key, &names.consumer, timing.lease_ttl)
            .await
        {
            Ok(true) => {
                tracing::info!(role = names.role, tenant = %names.tenant, consumer = %names.consumer, "writer for the tenant");
                metrics::counter!("switchboard_single_writer_takeovers_total", "role" => names.role).increment(1);
                let result = write(&bus, &names, &config, &mut feed, &slot, &timing, &drain).await;
                lock(&slot).writer = false;
                if let Err(e) = result {
                    tracing::warn!(role = names.role, tenant = %names.tenant, error = %e, "writer stopped; standing by");
                    // Give the lease up so that this process or another takes over at once.
                    let _ = bus.lease_release(&key, &names.consumer).await;
                }
                if drain.is_cancelled() {
                    // Best effort: the error is logged, and the stream positions say what to redo.
                    let _ = save(&bus, &names, &slot).await;
                    let _ = bus.lease_release(&key, &names.consumer).await;
                    break;
                }
            }
            Ok(false) => {
                if let Err(e) = restore(&bus, &names, &config, &tenant, &slot).await {
                    tracing::debug!(role = names.role, tenant = %names.tenant, error = %e, "standby refresh failed");
                }
            }
            Err(e) => {
                tracing::warn!(role = names.role, tenant = %names.tenant, error = %e, "lease request failed");
            }
        }
        tokio::select! {
            _ = drain.cancelled() => {}
            _ = tokio::time::sleep(timing.standby_poll) => {}
        }
    }
    // A deleted tenant: another process's writer for it stops too.
    let _ = bus.lease_release(&key, &names.consumer).await;
    Ok(())
}

fn parse<T: DeserializeOwned>(names: &Names, what: &str, entry: &Entry) -> Option<T> {
    match serde_json::from_slice(&entry.payload) {
        Ok(v) => Some(v),
        Err(e) => {
            metrics::counter!("switchboard_single_writer_invalid_total", "role" => names.role, "stream" => what.to_string()).increment(1);
            tracing::warn!(role = names.role, tenant = %names.tenant, entry = %entry.id, error = %e, "{what} entry skipped");
            None
        }
    }
}

/// Folds events after the position; returns how many were folded.
async fn fold_events<C: Core>(
    bus: &SharedBus,
    names: &Names,
    slot: &Shared<C>,
) -> Result<usize, BusError> {
    let stream = switchboard_bus::events_stream(&names.tenant);
    let position = lock(slot).position;
    let page = bus.read_range(&stream, position, BATCH).await?;
    if page.is_empty() {
        return Ok(0);
    }
    let now = now_ms();
    let mut out = Vec::new();
    {
        let mut s = lock(slot);
        for entry in &page {
            s.position = Some(entry.id);
            if let Some(event) = parse::<Event>(names, "event", entry) {
                out.extend(s.core.event(&event, now));
            }
        }
    }
    emit(bus, names, out).await?;
    Ok(page.len())
}

/// Handles requests; returns their ids, to acknowledge once the snapshot is saved.
async fn handle_requests<C: Core>(
    bus: &SharedBus,
    names: &Names,
    slot: &Shared<C>,
    entries: &[Entry],
) -> Result<Vec<EntryId>, BusError> {
    let now = now_ms();
    let mut out = Vec::new();
    {
        let mut s = lock(slot);
        for entry in entries {
            if let Some(req) = parse::<C::Request>(names, "request", entry) {
                out.extend(s.core.request(&req, now));
            }
        }
    }
    emit(bus, names, out).await?;
    Ok(entries.iter().map(|e| e.id).collect())
}

async fn write<C: Core>(
    bus: &SharedBus,
    names: &Names,
    config: &Config,
    feed: &mut TenantsFeed,
    slot: &Shared<C>,
    timing: &Timing,
    drain: &CancellationToken,
) -> Result<(), BusError> {
    let Some(tenant) = find(&feed.borrow_and_update(), &names.tenant) else {
        return Ok(());
    };
    restore(bus, names, config, &tenant, slot).await?;
    lock(slot).writer = true;
    while fold_events(bus, names, slot).await? > 0 {}
    bus.create_group(&names.requests, names.role, GroupStart::Beginning)
        .await?;
    loop {
        let pending = bus
            .claim_pending(
                &names.requests,
                names.role,
                &names.consumer,
                Duration::ZERO,
                BATCH,
            )
            .await?;
        if pending.is_empty() {
            break;
        }
        let ids = handle_requests(bus, names, slot, &pending).await?;
        save(bus, names, slot).await?;
        bus.ack(&names.requests, names.role, &ids).await?;
    }
    save(bus, names, slot).await?;
    let mut renewed = tokio::time::Instant::now();
    loop {
        if renewed.elapsed() >= timing.renew {
            if !bus
                .lease_renew(&names.key(), &names.consumer, timing.lease_ttl)
                .await?
            {
                tracing::warn!(role = names.role, tenant = %names.tenant, "lease lost");
                return Ok(());
            }
            renewed = tokio::time::Instant::now();
        }
        let mut changed = fold_events(bus, names, slot).await? > 0;
        if feed.has_changed().unwrap_or(false) {
            // Agents, groups or skills changed over the REST API.
            let Some(tenant) = find(&feed.borrow_and_update(), &names.tenant) else {
                save(bus, names, slot).await?;
                return Ok(());
            };
            lock(slot).core.configure(config, &tenant);
            tracing::info!(role = names.role, tenant = %names.tenant, "configuration changed");
            changed = true;
        }
        let now = now_ms();
        let due = lock(slot).core.next_deadline().is_some_and(|d| d <= now);
        if due {
            let out = lock(slot).core.tick(now);
            emit(bus, names, out).await?;
            changed = true;
        }
        let wait = if changed {
            Duration::ZERO
        } else {
            timing.idle_wait
        };
        let entries = tokio::select! {
            _ = drain.cancelled() => return Ok(()),
            r = bus.read_group(&names.requests, names.role, &names.consumer, BATCH, wait) => r,
        };
        let entries = match entries {
            Ok(e) => e,
            Err(BusError::NoGroup { .. }) => {
                bus.create_group(&names.requests, names.role, GroupStart::Beginning)
                    .await?;
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let ids = handle_requests(bus, names, slot, &entries).await?;
        if changed || !ids.is_empty() {
            save(bus, names, slot).await?;
        }
        if !ids.is_empty() {
            bus.ack(&names.requests, names.role, &ids).await?;
        }
    }
}

/// This process's name among the writers: `{host}-{pid}`.
pub fn consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_string());
    format!("{host}-{}", std::process::id())
}

/// The tenants a role runs, shared with its REST handlers; tenants created over the REST API
/// join, deleted ones leave.
pub struct Tenants<C>(Arc<RwLock<HashMap<String, Shared<C>>>>);

impl<C> Clone for Tenants<C> {
    fn clone(&self) -> Self {
        Tenants(self.0.clone())
    }
}

impl<C> Tenants<C> {
    pub fn get(&self, name: &str) -> Option<Shared<C>> {
        self.read().get(name).cloned()
    }

    /// Every tenant, by name.
    pub fn all(&self) -> Vec<(String, Shared<C>)> {
        let mut all: Vec<_> = self
            .read()
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Shared<C>>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Shared<C>>> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where a role's REST handlers read a tenant's state: the tenants this process runs, or,
/// in a process without the role (a front-end on its own), the role's last snapshot on the
/// bus, read again for each request.
pub enum View<C> {
    Local(Tenants<C>),
    Remote(Arc<Remote<C>>),
}

impl<C> Clone for View<C> {
    fn clone(&self) -> Self {
        match self {
            View::Local(t) => View::Local(t.clone()),
            View::Remote(r) => View::Remote(r.clone()),
        }
    }
}

/// A role's state as another process sees it: the kv snapshot `{role}:{tenant}` of the
/// tenants of `tenants`, or a fresh reducer (`new`) while there is none. Never the writer.
pub struct Remote<C> {
    pub role: &'static str,
    pub bus: SharedBus,
    pub config: Arc<Config>,
    pub tenants: TenantsFeed,
    pub new: Box<dyn Fn(&Tenant) -> C + Send + Sync>,
}

impl<C: Core> View<C> {
    /// The tenant's state; `None` for an unknown tenant.
    pub async fn get(&self, tenant: &str) -> Result<Option<Shared<C>>, BusError> {
        match self {
            View::Local(t) => Ok(t.get(tenant)),
            View::Remote(r) => r.read(tenant).await,
        }
    }
}

impl<C: Core> Remote<C> {
    async fn read(&self, name: &str) -> Result<Option<Shared<C>>, BusError> {
        let Some(tenant) = find(&self.tenants.borrow(), name) else {
            return Ok(None);
        };
        let slot: Shared<C> = Arc::new(Mutex::new(Slot {
            core: (self.new)(&tenant),
            position: None,
            writer: false,
        }));
        let names = Names {
            role: self.role,
            tenant: tenant.name.clone(),
            requests: String::new(),
            consumer: String::new(),
        };
        restore(&self.bus, &names, &self.config, &tenant, &slot).await?;
        Ok(Some(slot))
    }
}

/// The tenants of a role started by [`start_tenants`]: their shared state, and the task that
/// runs their loops and `gauges` every second until the drain.
pub struct Started<C> {
    pub tenants: Tenants<C>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// How a role's tenants are made and run (what [`start_tenants`] needs for a new tenant).
struct Spawner<C, N> {
    role: &'static str,
    requests: fn(&str) -> String,
    new: N,
    config: Arc<Config>,
    bus: SharedBus,
    consumer: String,
    timing: Timing,
    feed: TenantsFeed,
    _core: std::marker::PhantomData<fn() -> C>,
}

impl<C: Core, N: Fn(&Tenant) -> C> Spawner<C, N> {
    /// A reducer for `t`, its last snapshot restored (so a restart serves the old state at
    /// once), and the writer-or-standby loop, until `stop`.
    async fn add(
        &self,
        t: &Tenant,
        tenants: &Tenants<C>,
        tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let slot: Shared<C> = Arc::new(Mutex::new(Slot {
            core: (self.new)(t),
            position: None,
            writer: false,
        }));
        let names = Names {
            role: self.role,
            tenant: t.name.clone(),
            requests: (self.requests)(&t.name),
            consumer: self.consumer.clone(),
        };
        restore(&self.bus, &names, &self.config, t, &slot)
            .await
            .map_err(|e| anyhow::anyhow!("{}: tenant {}: {e}", self.role, t.name))?;
        tenants.write().insert(t.name.clone(), slot.clone());
        tasks.spawn(run(
            self.bus.clone(),
            names,
            self.config.clone(),
            self.feed.clone(),
            slot,
            self.timing.clone(),
            stop,
        ));
        Ok(())
    }
}

/// For every tenant of `feed`: a reducer made by `new`, its last snapshot restored, and a
/// writer-or-standby loop on `requests(tenant)`. Tenants that appear later are started the
/// same way; a deleted tenant's loop ends. `gauges` is called every second with the tenants.
#[allow(clippy::too_many_arguments)]
pub async fn start_tenants<C: Core>(
    role: &'static str,
    requests: fn(&str) -> String,
    new: impl Fn(&Tenant) -> C + Send + Sync + 'static,
    config: Arc<Config>,
    bus: SharedBus,
    consumer: &str,
    timing: &Timing,
    drain: CancellationToken,
    mut feed: TenantsFeed,
    gauges: impl Fn(&[(String, Shared<C>)]) + Send + 'static,
) -> anyhow::Result<Started<C>> {
    let spawner = Spawner {
        role,
        requests,
        new,
        config,
        bus,
        consumer: consumer.to_owned(),
        timing: timing.clone(),
        feed: feed.clone(),
        _core: std::marker::PhantomData,
    };
    let tenants = Tenants(Arc::default());
    let mut tasks = tokio::task::JoinSet::new();
    let mut stops: HashMap<String, CancellationToken> = HashMap::new();
    let initial = feed.borrow_and_update().clone();
    for t in initial.iter() {
        let stop = drain.child_token();
        spawner.add(t, &tenants, &mut tasks, stop.clone()).await?;
        stops.insert(t.name.clone(), stop);
    }
    let watched = tenants.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // A feed whose source is gone (a fixed feed, or the store's watcher drained): the
        // tenants stay as they are.
        let mut open = true;
        loop {
            tokio::select! {
                _ = drain.cancelled() => break,
                _ = tick.tick() => gauges(&watched.all()),
                changed = feed.changed(), if open => {
                    if changed.is_err() {
                        open = false;
                        continue;
                    }
                    let now = feed.borrow_and_update().clone();
                    follow(&spawner, &now, &watched, &mut tasks, &mut stops, &drain).await;
                }
                Some(done) = tasks.join_next() => {
                    done.map_err(|e| anyhow::anyhow!("{role} task: {e}"))??;
                }
            }
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| anyhow::anyhow!("{role} task: {e}"))??;
        }
        Ok(())
    });
    Ok(Started { tenants, task })
}

/// Starts the tenants of `now` that do not run yet, stops those that are gone.
async fn follow<C: Core, N: Fn(&Tenant) -> C>(
    spawner: &Spawner<C, N>,
    now: &[Tenant],
    tenants: &Tenants<C>,
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
    stops: &mut HashMap<String, CancellationToken>,
    drain: &CancellationToken,
) {
    let new: Vec<&Tenant> = now
        .iter()
        .filter(|t| !stops.contains_key(&t.name))
        .collect();
    for t in new {
        let stop = drain.child_token();
        match spawner.add(t, tenants, tasks, stop.clone()).await {
            Ok(()) => {
                tracing::info!(role = spawner.role, tenant = %t.name, "new tenant");
                stops.insert(t.name.clone(), stop);
            }
            // The next change tries again.
            Err(e) => {
                tracing::warn!(role = spawner.role, tenant = %t.name, error = %e, "new tenant not started")
            }
        }
    }
    let gone: Vec<String> = stops
        .keys()
        .filter(|n| !now.iter().any(|t| &t.name == *n))
        .cloned()
        .collect();
    for name in gone {
        if let Some(stop) = stops.remove(&name) {
            stop.cancel();
        }
        tenants.write().remove(&name);
        tracing::info!(role = spawner.role, tenant = %name, "tenant deleted");
    }
}
