//! Switchboard's configuration store: per-tenant contact-center entities (skills, agent groups,
//! DNs, agents, route points, trunks, dial-plan rules, mailboxes) behind the [`Store`] trait, so
//! that a clustered backend can follow the embedded one ([`SqliteStore`]).
//!
//! The entities are the types of `switchboard-config` (the `[[tenants.*]]` sections), so the
//! TOML file, the store rows and the REST bodies share one schema and one validation
//! ([`switchboard_config::Tenant::entity_problems`]). Every write runs in one transaction:
//! the tenant is loaded, the change applied in memory, the whole tenant validated (fields and
//! references), and only then written. A refused change names the field
//! ([`StoreError::Invalid`]) or what refers to the entity ([`StoreError::Conflict`]).
//!
//! [`Store::seed`] creates the tenants of the configuration file that the store does not have
//! yet, with all their entities; tenants already in the store are left alone (the store wins,
//! the file only seeds).

mod messages;
mod record;
mod sqlite;

#[cfg(test)]
mod tests;

use std::fmt;

use serde::{Deserialize, Serialize};
use switchboard_config::{is_name, Config};
pub use switchboard_config::{
    Agent, AgentGroup, DialRule, DidRange, Dn, DnKind, Mailbox, Replace, RoutePoint, RuleRoute,
    RuleScope, Skill, Tenant, Trunk,
};

pub use messages::{Counts, Heard, MessageState, MessageStore, NewMessage, StoredMessage};
pub use record::{FieldError, Record};
pub use sqlite::{Migration, SqliteStore, MIGRATIONS};

/// The kinds of per-tenant entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Skill,
    AgentGroup,
    Dn,
    Agent,
    RoutePoint,
    Trunk,
    DialRule,
    Mailbox,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 8] = [
        Kind::Skill,
        Kind::AgentGroup,
        Kind::Dn,
        Kind::Agent,
        Kind::RoutePoint,
        Kind::Trunk,
        Kind::DialRule,
        Kind::Mailbox,
    ];

    /// The name stored in the database and used in events (`dn`, `dial_rule`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Skill => "skill",
            Kind::AgentGroup => "agent_group",
            Kind::Dn => "dn",
            Kind::Agent => "agent",
            Kind::RoutePoint => "route_point",
            Kind::Trunk => "trunk",
            Kind::DialRule => "dial_rule",
            Kind::Mailbox => "mailbox",
        }
    }

    /// The collection's path segment under `/v1/tenants/{tenant}/`.
    pub fn path_segment(self) -> &'static str {
        match self {
            Kind::Skill => "skills",
            Kind::AgentGroup => "agent-groups",
            Kind::Dn => "dns",
            Kind::Agent => "agents",
            Kind::RoutePoint => "route-points",
            Kind::Trunk => "trunks",
            Kind::DialRule => "dialplan",
            Kind::Mailbox => "mailboxes",
        }
    }

    /// The kind whose collection is `segment`.
    pub fn from_path_segment(segment: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.path_segment() == segment)
    }

    fn from_db(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The key of the kind's list in a `[[tenants]]` table (`dns`, `agent_groups`, ...).
    pub fn config_key(self) -> &'static str {
        match self {
            Kind::Skill => "skills",
            Kind::AgentGroup => "agent_groups",
            Kind::Dn => "dns",
            Kind::Agent => "agents",
            Kind::RoutePoint => "route_points",
            Kind::Trunk => "trunks",
            Kind::DialRule => "dialplan",
            Kind::Mailbox => "mailboxes",
        }
    }

    fn from_config_key(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.config_key() == s)
    }

    /// The field that identifies an entity of the kind in its tenant.
    pub fn key_field(self) -> &'static str {
        match self {
            Kind::Skill | Kind::AgentGroup | Kind::Trunk | Kind::DialRule => "name",
            Kind::Dn | Kind::RoutePoint | Kind::Mailbox => "number",
            Kind::Agent => "login_id",
        }
    }

    /// Words for messages (`DN`, `dial-plan rule`).
    pub fn title(self) -> &'static str {
        match self {
            Kind::Skill => "skill",
            Kind::AgentGroup => "agent group",
            Kind::Dn => "DN",
            Kind::Agent => "agent",
            Kind::RoutePoint => "route point",
            Kind::Trunk => "trunk",
            Kind::DialRule => "dial-plan rule",
            Kind::Mailbox => "mailbox",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.title())
    }
}

/// A tenant as the store keeps it: its name and SIP domain (the entities are separate rows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantInfo {
    /// Unique name: letters, digits, `_`, `-` (1 to 64).
    pub name: String,
    /// SIP domain (realm) of the tenant's users and devices; unique across tenants.
    pub domain: String,
}

impl TenantInfo {
    /// A checked tenant: the name is a name, the domain a host name.
    pub fn new(
        name: impl Into<String>,
        domain: impl Into<String>,
    ) -> Result<TenantInfo, FieldError> {
        let t = TenantInfo {
            name: name.into(),
            domain: domain.into(),
        };
        t.check()?;
        Ok(t)
    }

    /// Parses and checks a JSON body (`{"name", "domain"}`).
    pub fn parse_json(body: &[u8]) -> Result<TenantInfo, FieldError> {
        let t = TenantInfo::from_json(body)?;
        t.check()?;
        Ok(t)
    }

    /// Parses a JSON body, checking only its shape (types, required and unknown fields).
    pub fn from_json(body: &[u8]) -> Result<TenantInfo, FieldError> {
        record::from_json(body)
    }

    /// Checks the values: the name is a name, the domain a host name.
    pub fn check(&self) -> Result<(), FieldError> {
        if !is_name(&self.name) {
            return Err(FieldError::new(
                "name",
                format!(
                    "{:?} is not a valid tenant name: use 1 to 64 letters, digits, '_' or '-'",
                    self.name
                ),
            ));
        }
        if !is_domain(&self.domain) {
            return Err(FieldError::new(
                "domain",
                format!(
                    "{:?} is not a SIP domain: use 1 to 253 letters, digits, '.' and '-'",
                    self.domain
                ),
            ));
        }
        Ok(())
    }
}

/// Whether `s` is a host name or an IP address we accept as a SIP domain.
pub fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

/// Why a store operation was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No such tenant.
    #[error("no tenant {0:?}")]
    NoTenant(String),
    /// No such entity in the tenant.
    #[error("no {kind} {key:?} in tenant {tenant:?}")]
    NotFound {
        tenant: String,
        kind: Kind,
        key: String,
    },
    /// A tenant of that name exists.
    #[error("tenant {0:?} already exists")]
    TenantExists(String),
    /// An entity with that key exists (trunk names are unique across tenants).
    #[error("{kind} {key:?} already exists")]
    Duplicate { kind: Kind, key: String },
    /// A field of the entity is not valid (`field` is relative to the entity: `number`,
    /// `skills.sales`, `dids[0].first`).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The change is valid on its own but clashes with other entities: something refers to
    /// what is deleted or changed, or another tenant uses the same trunk address or domain.
    /// `field` names the other entity's field (`agents/a1001.dn`) or the own field.
    #[error("{field}: {message}")]
    Conflict { field: String, message: String },
    /// The database failed.
    #[error("store database: {0}")]
    Db(String),
}

impl From<FieldError> for StoreError {
    fn from(e: FieldError) -> Self {
        StoreError::Invalid {
            field: e.field,
            message: e.message,
        }
    }
}

/// What [`Store::seed`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedReport {
    /// Tenants created from the configuration, with all their entities.
    pub created: Vec<String>,
    /// Tenants of the configuration the store had already (left as they are).
    pub kept: Vec<String>,
}

/// A change that was committed, for listeners (events on the bus, caches).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The store's revision after the change.
    pub revision: u64,
    pub tenant: String,
    /// `None` for a change of the tenant itself.
    pub kind: Option<Kind>,
    /// The entity's key (the tenant's name for tenant changes).
    pub key: String,
    pub op: Op,
}

/// What a [`Change`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Created,
    Updated,
    Deleted,
}

/// The configuration store. Calls block on the database: call them from blocking threads
/// (`tokio::task::spawn_blocking`) or where a short wait is fine.
pub trait Store: MessageStore + Send + Sync {
    /// Every tenant, by name.
    fn tenants(&self) -> Result<Vec<TenantInfo>, StoreError>;
    /// One tenant.
    fn tenant(&self, name: &str) -> Result<Option<TenantInfo>, StoreError>;
    /// Creates a tenant without entities.
    fn create_tenant(&self, tenant: &TenantInfo) -> Result<Change, StoreError>;
    /// Changes a tenant's domain (`tenant.name` names it).
    fn update_tenant(&self, tenant: &TenantInfo) -> Result<Change, StoreError>;
    /// Deletes a tenant and all its entities.
    fn delete_tenant(&self, name: &str) -> Result<Change, StoreError>;

    /// The entities of `kind` in `tenant`, in creation order.
    fn list(&self, tenant: &str, kind: Kind) -> Result<Vec<Record>, StoreError>;
    /// One entity.
    fn get(&self, tenant: &str, kind: Kind, key: &str) -> Result<Option<Record>, StoreError>;
    /// Adds an entity; refused when the key exists or the tenant would not be valid.
    fn create(&self, tenant: &str, record: Record) -> Result<Change, StoreError>;
    /// Replaces the entity `key` (the record's own key must be `key`).
    fn replace(&self, tenant: &str, key: &str, record: Record) -> Result<Change, StoreError>;
    /// Deletes an entity; refused while other entities refer to it.
    fn delete(&self, tenant: &str, kind: Kind, key: &str) -> Result<Change, StoreError>;

    /// The whole tenant with its entities, as the configuration types (SIP users empty: they
    /// stay in the configuration file).
    fn load(&self, tenant: &str) -> Result<Option<Tenant>, StoreError>;
    /// Every tenant with its entities.
    fn load_all(&self) -> Result<Vec<Tenant>, StoreError> {
        let mut out = Vec::new();
        for t in self.tenants()? {
            if let Some(full) = self.load(&t.name)? {
                out.push(full);
            }
        }
        Ok(out)
    }

    /// Creates the configuration's tenants the store does not have (idempotent).
    fn seed(&self, config: &Config) -> Result<SeedReport, StoreError>;

    /// Increases with every committed change (starts at 0 for each process).
    fn revision(&self) -> u64;
    /// Wakes up on every committed change; the value is the revision.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// A store shared by the roles of a process.
pub type SharedStore = std::sync::Arc<dyn Store>;

/// Maps problems of a validated tenant to a [`StoreError`]: a problem with the entity `changed`
/// (kind and index) becomes [`StoreError::Invalid`] with the field relative to it; a problem of
/// another entity becomes [`StoreError::Conflict`] naming it (`agents/a1001.dn`).
pub(crate) fn problems_to_error(
    tenant: &Tenant,
    changed: Option<(Kind, usize)>,
    problems: &[switchboard_config::Problem],
) -> Option<StoreError> {
    let mut conflict = None;
    for p in problems {
        let key = p.key.as_deref().unwrap_or("");
        let Some((kind, index, rest)) = split_key(key) else {
            conflict.get_or_insert(StoreError::Conflict {
                field: key.to_owned(),
                message: p.message.clone(),
            });
            continue;
        };
        if changed == Some((kind, index)) {
            return Some(StoreError::Invalid {
                field: rest.to_owned(),
                message: p.message.clone(),
            });
        }
        let name = Record::key_at(tenant, kind, index).unwrap_or("?");
        conflict.get_or_insert(StoreError::Conflict {
            field: format!("{}/{name}.{rest}", kind.path_segment()),
            message: p.message.clone(),
        });
    }
    conflict
}

/// `dns[2].number` -> (Dn, 2, "number").
fn split_key(key: &str) -> Option<(Kind, usize, &str)> {
    let (list, after) = key.split_once('[')?;
    let (index, rest) = after.split_once(']')?;
    let kind = Kind::from_config_key(list)?;
    let index = index.parse().ok()?;
    Some((kind, index, rest.strip_prefix('.').unwrap_or(rest)))
}
