//! The embedded store: one SQLite file, migrated at open.
//!
//! Tables: `tenants(name, domain)` and `entities(tenant, kind, key, position, body)`, the body
//! being the entity's JSON (the configuration types); the primary key `(tenant, kind, key)`
//! refuses duplicates, deleting a tenant cascades to its entities, trunk names are unique
//! across tenants and domains are unique. Writes are serialized on one connection; each is a
//! transaction that validates the whole tenant before it commits.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use switchboard_config::{parse_trunk_address, Config, Tenant, Trunk};
use tokio::sync::watch;

use crate::{
    problems_to_error, Change, Kind, Op, Record, SeedReport, Store, StoreError, TenantInfo,
};

/// One step of the schema. Versions ascend from 1; the database's `user_version` is the last
/// one applied.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The schema, oldest first. Append new steps; never edit a released one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "tenants and entities",
        sql: "
            CREATE TABLE tenants (
                name   TEXT PRIMARY KEY NOT NULL,
                domain TEXT NOT NULL
            );
            CREATE TABLE entities (
                tenant   TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
                kind     TEXT NOT NULL,
                key      TEXT NOT NULL,
                position INTEGER NOT NULL,
                body     TEXT NOT NULL,
                PRIMARY KEY (tenant, kind, key)
            );
        ",
    },
    Migration {
        version: 2,
        name: "unique domains and trunk names",
        sql: "
            CREATE UNIQUE INDEX tenants_domain ON tenants(domain);
            CREATE UNIQUE INDEX trunk_names ON entities(key) WHERE kind = 'trunk';
            CREATE INDEX entities_kind ON entities(kind);
        ",
    },
    Migration {
        version: 3,
        name: "voicemail messages",
        sql: "
            CREATE TABLE voicemail_messages (
                tenant      TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
                mailbox     TEXT NOT NULL,
                id          TEXT NOT NULL,
                caller      TEXT,
                conn_id     TEXT,
                received_ms INTEGER NOT NULL,
                duration_ms INTEGER NOT NULL,
                file        TEXT NOT NULL,
                user_data   TEXT NOT NULL,
                state       TEXT NOT NULL,
                heard_by    TEXT NOT NULL,
                PRIMARY KEY (tenant, id)
            );
            CREATE INDEX voicemail_messages_box ON voicemail_messages(tenant, mailbox, received_ms);
        ",
    },
];

/// The embedded configuration store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    changes: watch::Sender<u64>,
}

pub(crate) fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

impl SqliteStore {
    /// Opens (creating it when missing) the store at `path` and migrates it.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Db(format!("cannot open {}: {e}", path.display())))?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .map_err(db_err)?;
        SqliteStore::with_connection(conn, MIGRATIONS)
    }

    /// A store in memory (tests, tools).
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        SqliteStore::with_connection(Connection::open_in_memory().map_err(db_err)?, MIGRATIONS)
    }

    /// Migrates `conn` with `migrations` and wraps it.
    pub(crate) fn with_connection(
        mut conn: Connection,
        migrations: &[Migration],
    ) -> Result<SqliteStore, StoreError> {
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;")
            .map_err(db_err)?;
        let version = migrate(&mut conn, migrations)?;
        tracing::debug!(schema_version = version, "configuration store open");
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            changes: watch::channel(0).0,
        })
    }

    /// The schema version of the database (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db_err)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` in an immediate transaction; commits when it returns `Ok`.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let value = f(&tx)?;
        tx.commit().map_err(db_err)?;
        Ok(value)
    }

    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(&self.lock())
    }

    /// Counts a committed change and wakes up subscribers.
    fn committed(&self, tenant: &str, kind: Option<Kind>, key: &str, op: Op) -> Change {
        self.changes.send_modify(|r| *r += 1);
        let revision = *self.changes.borrow();
        let kind_name = kind.map(Kind::as_str).unwrap_or("tenant");
        metrics::counter!("switchboard_store_changes_total", "kind" => kind_name, "op" => op_name(op))
            .increment(1);
        tracing::info!(
            tenant,
            kind = kind_name,
            key,
            op = op_name(op),
            revision,
            "configuration changed"
        );
        Change {
            revision,
            tenant: tenant.to_owned(),
            kind,
            key: key.to_owned(),
            op,
        }
    }
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Created => "created",
        Op::Updated => "updated",
        Op::Deleted => "deleted",
    }
}

/// Applies the migrations newer than the database's version in one transaction.
fn migrate(conn: &mut Connection, migrations: &[Migration]) -> Result<u32, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let current: u32 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(db_err)?;
    let latest = migrations.last().map_or(0, |m| m.version);
    if current > latest {
        return Err(StoreError::Db(format!(
            "the database has schema version {current}, newer than this build knows ({latest})"
        )));
    }
    let mut last = current;
    for m in migrations.iter().filter(|m| m.version > current) {
        if m.version <= last {
            return Err(StoreError::Db(format!(
                "migration {} ({}) is out of order",
                m.version, m.name
            )));
        }
        tx.execute_batch(m.sql).map_err(|e| {
            StoreError::Db(format!("migration {} ({}) failed: {e}", m.version, m.name))
        })?;
        tx.pragma_update(None, "user_version", m.version)
            .map_err(db_err)?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "configuration store migrated"
        );
        last = m.version;
    }
    tx.commit().map_err(db_err)?;
    Ok(last)
}

fn tenant_row(conn: &Connection, name: &str) -> Result<Option<TenantInfo>, StoreError> {
    conn.query_row(
        "SELECT name, domain FROM tenants WHERE name = ?1",
        [name],
        |r| {
            Ok(TenantInfo {
                name: r.get(0)?,
                domain: r.get(1)?,
            })
        },
    )
    .optional()
    .map_err(db_err)
}

fn parse_stored(kind: Kind, key: &str, body: &str) -> Result<Record, StoreError> {
    Record::parse_json(kind, body.as_bytes())
        .map_err(|e| StoreError::Db(format!("stored {kind} {key:?} does not parse: {e}")))
}

/// The tenant with all its entities.
fn load_tenant(conn: &Connection, name: &str) -> Result<Option<Tenant>, StoreError> {
    let Some(info) = tenant_row(conn, name)? else {
        return Ok(None);
    };
    let mut tenant = Tenant::new(info.name, info.domain);
    let mut stmt = conn
        .prepare_cached(
            "SELECT kind, key, body FROM entities WHERE tenant = ?1 ORDER BY kind, position",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map([name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(db_err)?;
    for row in rows {
        let (kind, key, body) = row.map_err(db_err)?;
        let kind = Kind::from_db(&kind)
            .ok_or_else(|| StoreError::Db(format!("unknown entity kind {kind:?} in the store")))?;
        parse_stored(kind, &key, &body)?.put_into(&mut tenant, None);
    }
    Ok(Some(tenant))
}

fn require_tenant(conn: &Connection, name: &str) -> Result<Tenant, StoreError> {
    load_tenant(conn, name)?.ok_or_else(|| StoreError::NoTenant(name.to_owned()))
}

/// Refuses the tenant as it would be after a change when it is not valid.
fn validate(after: &Tenant, changed: Option<(Kind, usize)>) -> Result<(), StoreError> {
    match problems_to_error(after, changed, &after.entity_problems()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Trunk names are unique across tenants, and an address belongs to one trunk.
fn check_trunk_elsewhere(conn: &Connection, tenant: &str, trunk: &Trunk) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT tenant, key, body FROM entities WHERE kind = 'trunk' AND NOT (tenant = ?1 AND key = ?2)",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map(params![tenant, trunk.name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(db_err)?;
    for row in rows {
        let (other_tenant, key, body) = row.map_err(db_err)?;
        let Record::Trunk(other) = parse_stored(Kind::Trunk, &key, &body)? else {
            continue;
        };
        if other.name == trunk.name {
            return Err(StoreError::Duplicate {
                kind: Kind::Trunk,
                key: trunk.name.clone(),
            });
        }
        for (k, a) in trunk.addresses.iter().enumerate() {
            let Some((ip, port)) = parse_trunk_address(a) else {
                continue;
            };
            let clash = other.addresses.iter().any(|o| {
                parse_trunk_address(o).is_some_and(|(oip, oport)| {
                    oip == ip && (oport.is_none() || port.is_none() || oport == port)
                })
            });
            if clash {
                return Err(StoreError::Conflict {
                    field: format!("addresses[{k}]"),
                    message: format!(
                        "{a:?} is already an address of trunk {:?} (tenant {other_tenant:?})",
                        other.name
                    ),
                });
            }
        }
    }
    Ok(())
}

fn check_domain_free(conn: &Connection, name: &str, domain: &str) -> Result<(), StoreError> {
    let owner: Option<String> = conn
        .query_row(
            "SELECT name FROM tenants WHERE domain = ?1 AND name != ?2",
            params![domain, name],
            |r| r.get(0),
        )
        .optional()
        .map_err(db_err)?;
    match owner {
        Some(other) => Err(StoreError::Conflict {
            field: "domain".to_owned(),
            message: format!("domain {domain:?} belongs to tenant {other:?}"),
        }),
        None => Ok(()),
    }
}

fn insert_entity(conn: &Connection, tenant: &str, record: &Record) -> Result<(), StoreError> {
    let body = serde_json::to_string(record).map_err(|e| StoreError::Db(e.to_string()))?;
    conn.prepare_cached(
        "INSERT INTO entities (tenant, kind, key, position, body)
         VALUES (?1, ?2, ?3,
                 (SELECT COALESCE(MAX(position), 0) + 1 FROM entities WHERE tenant = ?1 AND kind = ?2),
                 ?4)",
    )
    .and_then(|mut s| s.execute(params![tenant, record.kind().as_str(), record.key(), body]))
    .map_err(db_err)?;
    Ok(())
}

impl Store for SqliteStore {
    fn tenants(&self) -> Result<Vec<TenantInfo>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT name, domain FROM tenants ORDER BY name")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(TenantInfo {
                        name: r.get(0)?,
                        domain: r.get(1)?,
                    })
                })
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
    }

    fn tenant(&self, name: &str) -> Result<Option<TenantInfo>, StoreError> {
        self.read(|conn| tenant_row(conn, name))
    }

    fn create_tenant(&self, tenant: &TenantInfo) -> Result<Change, StoreError> {
        self.write(|tx| {
            if tenant_row(tx, &tenant.name)?.is_some() {
                return Err(StoreError::TenantExists(tenant.name.clone()));
            }
            check_domain_free(tx, &tenant.name, &tenant.domain)?;
            tx.execute(
                "INSERT INTO tenants (name, domain) VALUES (?1, ?2)",
                params![tenant.name, tenant.domain],
            )
            .map_err(db_err)?;
            Ok(())
        })?;
        Ok(self.committed(&tenant.name, None, &tenant.name, Op::Created))
    }

    fn update_tenant(&self, tenant: &TenantInfo) -> Result<Change, StoreError> {
        self.write(|tx| {
            if tenant_row(tx, &tenant.name)?.is_none() {
                return Err(StoreError::NoTenant(tenant.name.clone()));
            }
            check_domain_free(tx, &tenant.name, &tenant.domain)?;
            tx.execute(
                "UPDATE tenants SET domain = ?2 WHERE name = ?1",
                params![tenant.name, tenant.domain],
            )
            .map_err(db_err)?;
            Ok(())
        })?;
        Ok(self.committed(&tenant.name, None, &tenant.name, Op::Updated))
    }

    fn delete_tenant(&self, name: &str) -> Result<Change, StoreError> {
        self.write(|tx| {
            let n = tx
                .execute("DELETE FROM tenants WHERE name = ?1", [name])
                .map_err(db_err)?;
            if n == 0 {
                return Err(StoreError::NoTenant(name.to_owned()));
            }
            Ok(())
        })?;
        Ok(self.committed(name, None, name, Op::Deleted))
    }

    fn list(&self, tenant: &str, kind: Kind) -> Result<Vec<Record>, StoreError> {
        self.read(|conn| {
            if tenant_row(conn, tenant)?.is_none() {
                return Err(StoreError::NoTenant(tenant.to_owned()));
            }
            let mut stmt = conn
                .prepare_cached(
                    "SELECT key, body FROM entities WHERE tenant = ?1 AND kind = ?2 ORDER BY position",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![tenant, kind.as_str()], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(db_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (key, body) = row.map_err(db_err)?;
                out.push(parse_stored(kind, &key, &body)?);
            }
            Ok(out)
        })
    }

    fn get(&self, tenant: &str, kind: Kind, key: &str) -> Result<Option<Record>, StoreError> {
        self.read(|conn| {
            if tenant_row(conn, tenant)?.is_none() {
                return Err(StoreError::NoTenant(tenant.to_owned()));
            }
            let body: Option<String> = conn
                .query_row(
                    "SELECT body FROM entities WHERE tenant = ?1 AND kind = ?2 AND key = ?3",
                    params![tenant, kind.as_str(), key],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            body.map(|b| parse_stored(kind, key, &b)).transpose()
        })
    }

    fn create(&self, tenant: &str, record: Record) -> Result<Change, StoreError> {
        let kind = record.kind();
        let key = record.key().to_owned();
        self.write(|tx| {
            let mut after = require_tenant(tx, tenant)?;
            if Record::index_in(&after, kind, &key).is_some() {
                return Err(StoreError::Duplicate {
                    kind,
                    key: key.clone(),
                });
            }
            if let Record::Trunk(trunk) = &record {
                check_trunk_elsewhere(tx, tenant, trunk)?;
            }
            let at = record.clone().put_into(&mut after, None);
            validate(&after, Some((kind, at)))?;
            insert_entity(tx, tenant, &record)
        })?;
        Ok(self.committed(tenant, Some(kind), &key, Op::Created))
    }

    fn replace(&self, tenant: &str, key: &str, record: Record) -> Result<Change, StoreError> {
        let kind = record.kind();
        if record.key() != key {
            return Err(StoreError::Invalid {
                field: kind.key_field().to_owned(),
                message: format!(
                    "{:?} differs from {key:?} in the path (to rename, delete and create)",
                    record.key()
                ),
            });
        }
        self.write(|tx| {
            let mut after = require_tenant(tx, tenant)?;
            let Some(at) = Record::index_in(&after, kind, key) else {
                return Err(StoreError::NotFound {
                    tenant: tenant.to_owned(),
                    kind,
                    key: key.to_owned(),
                });
            };
            if let Record::Trunk(trunk) = &record {
                check_trunk_elsewhere(tx, tenant, trunk)?;
            }
            record.clone().put_into(&mut after, Some(at));
            validate(&after, Some((kind, at)))?;
            let body = serde_json::to_string(&record).map_err(|e| StoreError::Db(e.to_string()))?;
            tx.execute(
                "UPDATE entities SET body = ?4 WHERE tenant = ?1 AND kind = ?2 AND key = ?3",
                params![tenant, kind.as_str(), key, body],
            )
            .map_err(db_err)?;
            Ok(())
        })?;
        Ok(self.committed(tenant, Some(kind), key, Op::Updated))
    }

    fn delete(&self, tenant: &str, kind: Kind, key: &str) -> Result<Change, StoreError> {
        self.write(|tx| {
            let mut after = require_tenant(tx, tenant)?;
            let Some(at) = Record::index_in(&after, kind, key) else {
                return Err(StoreError::NotFound {
                    tenant: tenant.to_owned(),
                    kind,
                    key: key.to_owned(),
                });
            };
            Record::remove_from(&mut after, kind, at);
            validate(&after, None)?;
            tx.execute(
                "DELETE FROM entities WHERE tenant = ?1 AND kind = ?2 AND key = ?3",
                params![tenant, kind.as_str(), key],
            )
            .map_err(db_err)?;
            Ok(())
        })?;
        Ok(self.committed(tenant, Some(kind), key, Op::Deleted))
    }

    fn load(&self, tenant: &str) -> Result<Option<Tenant>, StoreError> {
        self.read(|conn| load_tenant(conn, tenant))
    }

    fn seed(&self, config: &Config) -> Result<SeedReport, StoreError> {
        let report = self.write(|tx| {
            let mut report = SeedReport::default();
            for (i, t) in config.tenants.iter().enumerate() {
                if tenant_row(tx, &t.name)?.is_some() {
                    report.kept.push(t.name.clone());
                    continue;
                }
                let in_tenant = |e: StoreError| match e {
                    StoreError::Conflict { field, message }
                    | StoreError::Invalid { field, message } => StoreError::Conflict {
                        field: format!("tenants[{i}].{field}"),
                        message,
                    },
                    other => other,
                };
                check_domain_free(tx, &t.name, &t.domain).map_err(in_tenant)?;
                tx.execute(
                    "INSERT INTO tenants (name, domain) VALUES (?1, ?2)",
                    params![t.name, t.domain],
                )
                .map_err(db_err)?;
                validate(t, None).map_err(in_tenant)?;
                for kind in Kind::ALL {
                    for record in Record::all_of(t, kind) {
                        if let Record::Trunk(trunk) = &record {
                            check_trunk_elsewhere(tx, &t.name, trunk).map_err(in_tenant)?;
                        }
                        insert_entity(tx, &t.name, &record)?;
                    }
                }
                report.created.push(t.name.clone());
            }
            Ok(report)
        })?;
        for name in &report.created {
            self.committed(name, None, name, Op::Created);
        }
        Ok(report)
    }

    fn revision(&self) -> u64 {
        *self.changes.borrow()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
