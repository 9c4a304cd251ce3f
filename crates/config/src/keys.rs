//! API keys: who may call the REST API and the event WebSocket, and as what.
//!
//! A key belongs to one tenant (`[[tenants.api_keys]]`) with a role, or to the platform
//! (`http.admin_keys`: admin of every tenant and of the platform routes). Keys stay in the file
//! (like SIP users): the configuration store does not hold them.

use crate::{bad, entities, Config, Found};
use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;

/// Shortest key accepted: a guessable key is no key.
pub const MIN_KEY_LEN: usize = 16;

/// What the HTTP server asks of callers of `/v1/...` (`http.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpAuth {
    /// Every `/v1/` request presents an API key (the default).
    #[default]
    ApiKeys,
    /// No authentication: for a lab or a process behind a gateway that authenticates.
    None,
}

/// What a tenant key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyRole {
    /// One agent's desktop: its own agent requests, calls on its DN, its own event stream.
    Agent,
    /// Reads everything of the tenant, acts for any agent and call, streams every event.
    Supervisor,
    /// Everything of the tenant, including its configuration.
    Admin,
}

impl KeyRole {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Agent => "agent",
            KeyRole::Supervisor => "supervisor",
            KeyRole::Admin => "admin",
        }
    }
}

/// `[[tenants.api_keys]]`
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// A name for logs (never the key itself). Required, unique in the tenant.
    pub name: String,
    /// The secret, at least 16 characters, unique across the whole configuration. Required.
    pub key: String,
    /// `agent`, `supervisor` or `admin`. Required.
    pub role: KeyRole,
    /// For role `agent`: the agent's login id. Required for that role, refused for the others.
    #[serde(default)]
    pub agent: Option<String>,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .field("role", &self.role)
            .field("agent", &self.agent)
            .finish()
    }
}

fn check_secret(out: &mut Vec<Found>, key: String, secret: &str, seen: &mut HashSet<String>) {
    if secret.chars().count() < MIN_KEY_LEN {
        bad(
            out,
            key,
            format!("must be at least {MIN_KEY_LEN} characters"),
        );
    } else if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bad(out, key, "must not contain spaces or control characters");
    } else if !seen.insert(secret.to_owned()) {
        bad(
            out,
            key,
            "is used more than once: every API key must be unique",
        );
    }
}

/// Checks every API key: lengths, uniqueness across tenants, agent keys naming an agent.
pub(crate) fn validate(c: &Config, out: &mut Vec<Found>) {
    let mut secrets = HashSet::new();
    for (i, k) in c.http.admin_keys.iter().enumerate() {
        check_secret(out, format!("http.admin_keys[{i}]"), k, &mut secrets);
    }
    for (i, t) in c.tenants.iter().enumerate() {
        let agents: HashSet<&str> = t.agents.iter().map(|a| a.login_id.as_str()).collect();
        let mut names = HashSet::new();
        for (j, k) in t.api_keys.iter().enumerate() {
            let at = format!("tenants[{i}].api_keys[{j}]");
            if k.name.is_empty() || !entities::is_name(&k.name) {
                bad(
                    out,
                    format!("{at}.name"),
                    format!(
                        "{:?} is not a valid key name: use 1 to 64 letters, digits, '_' or '-'",
                        k.name
                    ),
                );
            } else if !names.insert(k.name.as_str()) {
                bad(
                    out,
                    format!("{at}.name"),
                    format!("key name {:?} is defined twice", k.name),
                );
            }
            check_secret(out, format!("{at}.key"), &k.key, &mut secrets);
            match (k.role, k.agent.as_deref()) {
                (KeyRole::Agent, None) => bad(
                    out,
                    format!("{at}.agent"),
                    "an agent key names its agent (login id)",
                ),
                (KeyRole::Agent, Some(a)) if !agents.contains(a) => bad(
                    out,
                    format!("{at}.agent"),
                    format!("agent {a:?} is not an agent of tenant {:?}", t.name),
                ),
                (KeyRole::Supervisor | KeyRole::Admin, Some(_)) => bad(
                    out,
                    format!("{at}.agent"),
                    format!(
                        "only agent keys name an agent, this is a {} key",
                        k.role.as_str()
                    ),
                ),
                _ => {}
            }
        }
    }
}
