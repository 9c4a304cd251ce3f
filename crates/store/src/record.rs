//! One entity of any kind, parsed from JSON with errors that name the field.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Agent, AgentGroup, DialRule, Dn, Kind, Mailbox, RoutePoint, Skill, Tenant, Trunk};

/// A field that is missing, malformed or not valid, and why. `field` is a path relative to
/// the entity (`number`, `dids[0].first`); empty when the body as a whole is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Deserializes `body`, naming the field at fault: a type error names its path, a missing or
/// unknown field names that field.
pub(crate) fn from_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, FieldError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let text = inner.to_string();
        // serde_json appends " at line L column C"; the field path says more.
        let message = match text.rfind(" at line ") {
            Some(i) => text[..i].to_owned(),
            None => text,
        };
        // The path of a missing field is its parent's; an unknown field's path ends with it.
        let field = match backticked(&message) {
            Some(name) if message.starts_with("missing field") => join(&path, name),
            _ if path == "." || path == "?" => String::new(),
            _ => path,
        };
        FieldError::new(field, message)
    })?;
    de.end().map_err(|e| {
        FieldError::new("", format!("trailing characters after the JSON value: {e}"))
    })?;
    Ok(value)
}

fn backticked(s: &str) -> Option<&str> {
    let start = s.find('`')? + 1;
    let len = s[start..].find('`')?;
    Some(&s[start..start + len])
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() || path == "." {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// An entity of one of the [`Kind`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Record {
    Skill(Skill),
    AgentGroup(AgentGroup),
    Dn(Dn),
    Agent(Agent),
    RoutePoint(RoutePoint),
    Trunk(Trunk),
    DialRule(DialRule),
    Mailbox(Mailbox),
}

impl Record {
    /// Parses a JSON body as an entity of `kind`. Only the shape is checked here (types,
    /// required and unknown fields); the values and references are checked by the store
    /// against the tenant.
    pub fn parse_json(kind: Kind, body: &[u8]) -> Result<Record, FieldError> {
        Ok(match kind {
            Kind::Skill => Record::Skill(from_json(body)?),
            Kind::AgentGroup => Record::AgentGroup(from_json(body)?),
            Kind::Dn => Record::Dn(from_json(body)?),
            Kind::Agent => Record::Agent(from_json(body)?),
            Kind::RoutePoint => Record::RoutePoint(from_json(body)?),
            Kind::Trunk => Record::Trunk(from_json(body)?),
            Kind::DialRule => Record::DialRule(from_json(body)?),
            Kind::Mailbox => Record::Mailbox(from_json(body)?),
        })
    }

    /// The kind of the entity.
    pub fn kind(&self) -> Kind {
        match self {
            Record::Skill(_) => Kind::Skill,
            Record::AgentGroup(_) => Kind::AgentGroup,
            Record::Dn(_) => Kind::Dn,
            Record::Agent(_) => Kind::Agent,
            Record::RoutePoint(_) => Kind::RoutePoint,
            Record::Trunk(_) => Kind::Trunk,
            Record::DialRule(_) => Kind::DialRule,
            Record::Mailbox(_) => Kind::Mailbox,
        }
    }

    /// The entity's key in its tenant (name, number or login id).
    pub fn key(&self) -> &str {
        match self {
            Record::Skill(x) => &x.name,
            Record::AgentGroup(x) => &x.name,
            Record::Dn(x) => &x.number,
            Record::Agent(x) => &x.login_id,
            Record::RoutePoint(x) => &x.number,
            Record::Trunk(x) => &x.name,
            Record::DialRule(x) => &x.name,
            Record::Mailbox(x) => &x.number,
        }
    }

    /// The JSON form (the REST body; mailbox PINs included).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The entities of `kind` in `tenant`.
    pub fn all_of(tenant: &Tenant, kind: Kind) -> Vec<Record> {
        match kind {
            Kind::Skill => tenant.skills.iter().cloned().map(Record::Skill).collect(),
            Kind::AgentGroup => tenant
                .agent_groups
                .iter()
                .cloned()
                .map(Record::AgentGroup)
                .collect(),
            Kind::Dn => tenant.dns.iter().cloned().map(Record::Dn).collect(),
            Kind::Agent => tenant.agents.iter().cloned().map(Record::Agent).collect(),
            Kind::RoutePoint => tenant
                .route_points
                .iter()
                .cloned()
                .map(Record::RoutePoint)
                .collect(),
            Kind::Trunk => tenant.trunks.iter().cloned().map(Record::Trunk).collect(),
            Kind::DialRule => tenant
                .dialplan
                .iter()
                .cloned()
                .map(Record::DialRule)
                .collect(),
            Kind::Mailbox => tenant
                .mailboxes
                .iter()
                .cloned()
                .map(Record::Mailbox)
                .collect(),
        }
    }

    /// The key of the `index`th entity of `kind` in `tenant`.
    pub(crate) fn key_at(tenant: &Tenant, kind: Kind, index: usize) -> Option<&str> {
        Some(match kind {
            Kind::Skill => &tenant.skills.get(index)?.name,
            Kind::AgentGroup => &tenant.agent_groups.get(index)?.name,
            Kind::Dn => &tenant.dns.get(index)?.number,
            Kind::Agent => &tenant.agents.get(index)?.login_id,
            Kind::RoutePoint => &tenant.route_points.get(index)?.number,
            Kind::Trunk => &tenant.trunks.get(index)?.name,
            Kind::DialRule => &tenant.dialplan.get(index)?.name,
            Kind::Mailbox => &tenant.mailboxes.get(index)?.number,
        })
    }

    /// Where the entity `key` of `kind` is in `tenant`.
    pub(crate) fn index_in(tenant: &Tenant, kind: Kind, key: &str) -> Option<usize> {
        (0..)
            .map_while(|i| Record::key_at(tenant, kind, i))
            .position(|k| k == key)
    }

    /// Puts the entity into `tenant`: replaces the one at `at`, or appends.
    pub(crate) fn put_into(self, tenant: &mut Tenant, at: Option<usize>) -> usize {
        fn put<T>(list: &mut Vec<T>, item: T, at: Option<usize>) -> usize {
            match at {
                Some(i) if i < list.len() => {
                    list[i] = item;
                    i
                }
                _ => {
                    list.push(item);
                    list.len() - 1
                }
            }
        }
        match self {
            Record::Skill(x) => put(&mut tenant.skills, x, at),
            Record::AgentGroup(x) => put(&mut tenant.agent_groups, x, at),
            Record::Dn(x) => put(&mut tenant.dns, x, at),
            Record::Agent(x) => put(&mut tenant.agents, x, at),
            Record::RoutePoint(x) => put(&mut tenant.route_points, x, at),
            Record::Trunk(x) => put(&mut tenant.trunks, x, at),
            Record::DialRule(x) => put(&mut tenant.dialplan, x, at),
            Record::Mailbox(x) => put(&mut tenant.mailboxes, x, at),
        }
    }

    /// Removes the `index`th entity of `kind` from `tenant`.
    pub(crate) fn remove_from(tenant: &mut Tenant, kind: Kind, index: usize) {
        fn rm<T>(list: &mut Vec<T>, i: usize) {
            if i < list.len() {
                list.remove(i);
            }
        }
        match kind {
            Kind::Skill => rm(&mut tenant.skills, index),
            Kind::AgentGroup => rm(&mut tenant.agent_groups, index),
            Kind::Dn => rm(&mut tenant.dns, index),
            Kind::Agent => rm(&mut tenant.agents, index),
            Kind::RoutePoint => rm(&mut tenant.route_points, index),
            Kind::Trunk => rm(&mut tenant.trunks, index),
            Kind::DialRule => rm(&mut tenant.dialplan, index),
            Kind::Mailbox => rm(&mut tenant.mailboxes, index),
        }
    }
}
