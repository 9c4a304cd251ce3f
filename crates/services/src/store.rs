//! The process's configuration store, opened from `[store]` on first use and shared by every
//! role of the process (`config` writes it, `dialplan` and `sip-node` read it).
//!
//! ```ignore
//! let store = ctx.shared().get_or_init(StoreSlot::default).get_or_open(&ctx.config).await?;
//! ```
//!
//! Opening creates the file (and `data_dir`) when missing, applies the schema migrations and
//! seeds the tenants of the configuration file that the store does not have yet (the store
//! wins over the file for tenants it has: those are managed over REST).

use std::collections::HashMap;
use std::sync::Arc;

use switchboard_config::{Config, Tenant};
use switchboard_store::{SharedStore, SqliteStore, Store, StoreError};
use tokio::sync::{watch, OnceCell};
use tokio_util::sync::CancellationToken;

use crate::single_writer::TenantsFeed;

/// Holds the process's store once opened. Put one in the roles' shared state.
#[derive(Default)]
pub struct StoreSlot(OnceCell<SharedStore>);

impl StoreSlot {
    /// The store, opened and seeded from `config` by the first caller; later callers get the
    /// same store.
    pub async fn get_or_open(&self, config: &Config) -> anyhow::Result<SharedStore> {
        self.0.get_or_try_init(|| open(config)).await.cloned()
    }

    /// The store if some role opened it already.
    pub fn get(&self) -> Option<SharedStore> {
        self.0.get().cloned()
    }

    /// A slot holding `store` (tests).
    pub fn with(store: SharedStore) -> StoreSlot {
        StoreSlot(OnceCell::new_with(Some(store)))
    }
}

/// Opens `data_dir/store.path`, migrates it and seeds it from the configuration's tenants.
pub async fn open(config: &Config) -> anyhow::Result<SharedStore> {
    let path = config.store_path();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await.map_err(|e| {
            anyhow::anyhow!("cannot create the store directory {}: {e}", dir.display())
        })?;
    }
    let config = config.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<SharedStore> {
        let store = SqliteStore::open(&path)
            .map_err(|e| anyhow::anyhow!("configuration store {}: {e}", path.display()))?;
        let report = store.seed(&config).map_err(|e| {
            anyhow::anyhow!(
                "seeding the configuration store {} from the configuration: {e}",
                path.display()
            )
        })?;
        tracing::info!(
            path = %path.display(),
            seeded = ?report.created,
            kept = ?report.kept,
            "configuration store open"
        );
        Ok(Arc::new(store) as SharedStore)
    })
    .await?
}

/// Every tenant of `store`, those of the configuration file first in the file's order, then
/// the others by name; each keeps the file's SIP users (the store has none).
pub fn tenants(store: &dyn Store, config: &Config) -> Result<Vec<Tenant>, StoreError> {
    let mut tenants = store.load_all()?;
    let order: HashMap<&str, usize> = config
        .tenants
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    tenants.sort_by_key(|t| order.get(t.name.as_str()).copied().unwrap_or(usize::MAX));
    for t in &mut tenants {
        if let Some(file) = config.tenants.iter().find(|f| f.name == t.name) {
            t.users = file.users.clone();
        }
    }
    Ok(tenants)
}

async fn tenants_blocking(
    store: &SharedStore,
    config: &Arc<Config>,
) -> anyhow::Result<Vec<Tenant>> {
    let (store, config) = (store.clone(), config.clone());
    tokio::task::spawn_blocking(move || tenants(&*store, &config))
        .await?
        .map_err(|e| anyhow::anyhow!("loading the tenants: {e}"))
}

/// The store's tenants now and after every change (made over the REST API), until the
/// drain: what agent-state and routing serve.
pub async fn watch_tenants(
    store: SharedStore,
    config: Arc<Config>,
    drain: CancellationToken,
) -> anyhow::Result<TenantsFeed> {
    let mut changes = store.subscribe();
    let (tx, rx) = watch::channel(Arc::new(tenants_blocking(&store, &config).await?));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = drain.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            changes.mark_unchanged();
            match tenants_blocking(&store, &config).await {
                Ok(now) => {
                    // Only real changes wake the roles up (a change to a trunk reloads too).
                    tx.send_if_modified(|old| {
                        let differs = **old != now;
                        if differs {
                            *old = Arc::new(now);
                        }
                        differs
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, "tenants not reloaded; the roles keep the previous ones")
                }
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_once_and_seeds() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::demo();
        config.data_dir = dir.path().join("nested");
        let slot = StoreSlot::default();
        assert!(slot.get().is_none());
        let a = slot.get_or_open(&config).await.unwrap();
        let b = slot.get_or_open(&config).await.unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(a.tenant("demo").unwrap().is_some());
        assert!(config.data_dir.join("switchboard.db").exists());
    }

    #[tokio::test]
    async fn the_tenants_feed_follows_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::demo();
        config.data_dir = dir.path().to_path_buf();
        let config = Arc::new(config);
        let store = open(&config).await.unwrap();
        let drain = CancellationToken::new();
        let mut feed = watch_tenants(store.clone(), config.clone(), drain.clone())
            .await
            .unwrap();
        let first = feed.borrow_and_update().clone();
        assert_eq!(first.len(), 1);
        assert_eq!(
            first[0].users, config.tenants[0].users,
            "SIP users from the file"
        );
        let before = first[0].agents.len();
        let body = br#"{"login_id":"a2001","name":"New Agent","skills":{"sales":3}}"#;
        let agent = switchboard_store::Record::parse_json(switchboard_store::Kind::Agent, body)
            .expect("agent record");
        store.create("demo", agent).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), feed.changed())
            .await
            .expect("a change in time")
            .unwrap();
        let now = feed.borrow_and_update().clone();
        assert_eq!(now[0].agents.len(), before + 1);
        assert!(now[0].agents.iter().any(|a| a.login_id == "a2001"));
        drain.cancel();
    }
}
