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

use std::sync::Arc;

use switchboard_config::Config;
use switchboard_store::{SharedStore, SqliteStore, Store};
use tokio::sync::OnceCell;

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
}
