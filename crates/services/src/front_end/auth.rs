//! Who may call what: API keys (from the configuration) to principals, and the access policy of
//! the `/v1/` routes, without I/O. The HTTP layer in [`super::gate`] applies it to every
//! request of the process.
//!
//! | path | admin | supervisor | agent |
//! |---|---|---|---|
//! | outside `/v1/` (health, metrics, documents for the media server) | open | open | open |
//! | `/v1/tenants/{t}/...`, other tenant | 403 | 403 | 403 |
//! | `/v1/tenants/{t}/agents/{id}/{request}` (login, ready...) | yes | yes | its own id only |
//! | `/v1/tenants/{t}/agent-states[/{id}]` (GET) | yes | yes | its own id only |
//! | `/v1/tenants/{t}/calls/...` | yes | yes | requests whose `dn` is its DN; GET of one call |
//! | `/v1/tenants/{t}/events` (WebSocket) | yes | yes | with `agent=` its own id only |
//! | `/v1/tenants/{t}/queues...` (GET) | yes | yes | yes |
//! | `/v1/tenants/{t}/mailboxes/{n}/...` | yes | yes | mailboxes of the agent or its groups |
//! | other `/v1/tenants/{t}/...` (configuration, dial plan) | yes | GET only | no |
//! | other `/v1/...` (`/v1/tenants`, the media server's API) | platform keys (`http.admin_keys`) only |||
//!
//! Keys are looked up by their SHA-256, so the table never holds a secret in clear.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use switchboard_config::{Config, HttpAuth, KeyRole, Tenant};

/// Who presented a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A key of `http.admin_keys`.
    Platform,
    Tenant(TenantKey),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantKey {
    pub tenant: String,
    /// The key's `name` (for logs).
    pub name: String,
    pub role: KeyRole,
    pub agent: Option<AgentScope>,
}

/// What an agent key covers: the agent, its DN and its mailboxes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentScope {
    pub login_id: String,
    pub dn: Option<String>,
    pub mailboxes: Vec<String>,
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    /// 401: no key, or a key nobody has.
    Unauthenticated(&'static str),
    /// 403: a valid key that may not do this.
    Forbidden(String),
}

/// The keys of a process's configuration, by SHA-256.
#[derive(Clone, Debug, Default)]
pub struct KeyBook {
    enabled: bool,
    keys: HashMap<[u8; 32], Principal>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn agent_scope(t: &Tenant, login_id: &str) -> AgentScope {
    let agent = t.agents.iter().find(|a| a.login_id == login_id);
    let groups: &[String] = agent.map(|a| a.groups.as_slice()).unwrap_or(&[]);
    let mailboxes = t
        .mailboxes
        .iter()
        .filter(|m| {
            m.owner_agent.as_deref() == Some(login_id)
                || m.owner_group.as_ref().is_some_and(|g| groups.contains(g))
        })
        .map(|m| m.number.clone())
        .collect();
    AgentScope {
        login_id: login_id.to_owned(),
        dn: agent.and_then(|a| a.dn.clone()),
        mailboxes,
    }
}

impl KeyBook {
    pub fn from_config(c: &Config) -> KeyBook {
        let mut keys = HashMap::new();
        for k in &c.http.admin_keys {
            keys.insert(digest(k), Principal::Platform);
        }
        for t in &c.tenants {
            for k in &t.api_keys {
                let agent = k.agent.as_deref().map(|a| agent_scope(t, a));
                let p = TenantKey {
                    tenant: t.name.clone(),
                    name: k.name.clone(),
                    role: k.role,
                    agent,
                };
                keys.insert(digest(&k.key), Principal::Tenant(p));
            }
        }
        KeyBook {
            enabled: c.http.auth == HttpAuth::ApiKeys,
            keys,
        }
    }

    /// Whether requests are checked at all (`http.auth`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn lookup(&self, key: &str) -> Option<&Principal> {
        self.keys.get(&digest(key))
    }
}

/// What the policy needs to know of a request.
#[derive(Clone, Copy, Debug)]
pub struct Access<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The `dn` of the JSON body, for agents' call requests.
    pub body_dn: Option<&'a str>,
}

/// Whether a request needs a key at all.
pub fn protected(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// Whether the policy reads the body's `dn` for this principal and request.
pub fn needs_body_dn(p: &Principal, method: &str, path: &str) -> bool {
    matches!(p, Principal::Tenant(k) if k.role == KeyRole::Agent)
        && method != "GET"
        && tenant_path(path).is_some_and(|(_, rest)| rest.first() == Some(&"calls"))
}

/// `/v1/tenants/{t}/rest...` -> (t, rest).
fn tenant_path(path: &str) -> Option<(&str, Vec<&str>)> {
    let rest = path.strip_prefix("/v1/tenants/")?;
    let mut segs = rest.split('/').filter(|s| !s.is_empty());
    let tenant = segs.next()?;
    Some((tenant, segs.collect()))
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The policy in the module's table.
pub fn authorize(p: &Principal, a: &Access<'_>) -> Result<(), Denied> {
    let key = match p {
        Principal::Platform => return Ok(()),
        Principal::Tenant(k) => k,
    };
    let refuse = |why: &str| {
        Err(Denied::Forbidden(format!(
            "the {} key {:?} of tenant {:?} may not {} {}: {why}",
            key.role.as_str(),
            key.name,
            key.tenant,
            a.method,
            a.path
        )))
    };
    let Some((tenant, rest)) = tenant_path(a.path) else {
        return refuse(
            "only platform keys (http.admin_keys) reach routes outside /v1/tenants/{tenant}/",
        );
    };
    if tenant != key.tenant {
        return refuse("the key belongs to another tenant");
    }
    let section = rest.first().copied().unwrap_or("");
    let read = a.method == "GET" || a.method == "HEAD";
    match key.role {
        KeyRole::Admin => Ok(()),
        KeyRole::Supervisor => {
            let agent_request = section == "agents" && rest.len() >= 3;
            if read || agent_request || matches!(section, "calls" | "queues" | "mailboxes") {
                Ok(())
            } else {
                refuse("supervisors act on agents, calls and mailboxes, not the configuration")
            }
        }
        KeyRole::Agent => {
            let Some(me) = &key.agent else {
                return refuse("the agent key names no agent");
            };
            agent_may(me, section, &rest, read, a).or_else(refuse)
        }
    }
}

fn agent_may(
    me: &AgentScope,
    section: &str,
    rest: &[&str],
    read: bool,
    a: &Access<'_>,
) -> Result<(), &'static str> {
    match section {
        "agents" | "agent-states" if rest.get(1) != Some(&me.login_id.as_str()) => {
            Err("an agent acts for itself only")
        }
        // Its requests (login, ready...) and reading its entry and state, not editing them.
        "agents" if (read && rest.len() == 2) || (!read && rest.len() == 3) => Ok(()),
        "agent-states" if read => Ok(()),
        "agents" | "agent-states" => Err("an agent does not change its configuration"),
        "calls" if read && rest.len() >= 2 => Ok(()),
        "calls" if read => Err("an agent reads the calls it is in, not the list"),
        "calls" => match (a.body_dn, me.dn.as_deref()) {
            (Some(dn), Some(mine)) if dn == mine => Ok(()),
            _ => Err("an agent's call requests name its own DN in \"dn\""),
        },
        "events" if query_param(a.query, "agent") == Some(me.login_id.as_str()) => Ok(()),
        "events" => Err("an agent streams its own events only (?agent=ITS_ID)"),
        "queues" if read => Ok(()),
        "mailboxes"
            if rest
                .get(1)
                .is_some_and(|n| me.mailboxes.iter().any(|m| m == n)) =>
        {
            Ok(())
        }
        "mailboxes" => Err("an agent reaches its own and its groups' mailboxes only"),
        _ => Err("not an agent's request"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> KeyBook {
        let mut c = Config::demo();
        c.http.admin_keys = vec!["platform-admin-key-1".into()];
        KeyBook::from_config(&c)
    }

    fn check(
        key: &str,
        method: &str,
        path: &str,
        query: Option<&str>,
        dn: Option<&str>,
    ) -> Result<(), Denied> {
        let b = book();
        let p = b.lookup(key).expect("known key");
        authorize(
            p,
            &Access {
                method,
                path,
                query,
                body_dn: dn,
            },
        )
    }

    fn forbidden(r: Result<(), Denied>) -> bool {
        matches!(r, Err(Denied::Forbidden(_)))
    }

    const ADMIN: &str = "demo-admin-key-change-me";
    const SUP: &str = "demo-supervisor-key-change-me";
    const AGENT: &str = "demo-agent-a1001-key";

    #[test]
    fn lookup_and_switch() {
        let b = book();
        assert!(b.enabled());
        assert!(b.lookup("nope-nope-nope-nope").is_none());
        assert_eq!(b.lookup("platform-admin-key-1"), Some(&Principal::Platform));
        let Some(Principal::Tenant(k)) = b.lookup(AGENT) else {
            panic!()
        };
        let scope = k.agent.as_ref().expect("agent scope");
        assert_eq!(
            (scope.login_id.as_str(), scope.dn.as_deref()),
            ("a1001", Some("1001"))
        );
        assert_eq!(
            scope.mailboxes,
            vec!["8100".to_string()],
            "a1001 is in the sales group"
        );
        let mut c = Config::demo();
        c.http.auth = HttpAuth::None;
        assert!(!KeyBook::from_config(&c).enabled());
        assert!(protected("/v1/tenants") && protected("/v1/mcp/calls"));
        assert!(!protected("/healthz") && !protected("/v1x") && !protected("/demo/strategy.scxml"));
    }

    #[test]
    fn tenant_isolation_and_platform_routes() {
        for key in [ADMIN, SUP, AGENT] {
            assert!(
                forbidden(check(
                    key,
                    "GET",
                    "/v1/tenants/other/agents/a1001",
                    Some("agent=a1001"),
                    None
                )),
                "{key}"
            );
            assert!(
                forbidden(check(key, "GET", "/v1/tenants", None, None)),
                "{key}"
            );
            assert!(
                forbidden(check(key, "GET", "/v1/mcp/calls", None, None)),
                "{key}"
            );
        }
        assert_eq!(
            check("platform-admin-key-1", "POST", "/v1/tenants", None, None),
            Ok(())
        );
        assert_eq!(
            check(
                "platform-admin-key-1",
                "DELETE",
                "/v1/tenants/demo/dns/1001",
                None,
                None
            ),
            Ok(())
        );
    }

    #[test]
    fn roles() {
        assert_eq!(
            check(ADMIN, "PUT", "/v1/tenants/demo/dns/1001", None, None),
            Ok(())
        );
        assert!(forbidden(check(
            SUP,
            "PUT",
            "/v1/tenants/demo/dns/1001",
            None,
            None
        )));
        assert_eq!(
            check(SUP, "GET", "/v1/tenants/demo/dns", None, None),
            Ok(())
        );
        assert_eq!(
            check(
                SUP,
                "POST",
                "/v1/tenants/demo/agents/a1003/ready",
                None,
                None
            ),
            Ok(())
        );
        assert_eq!(
            check(SUP, "GET", "/v1/tenants/demo/events", None, None),
            Ok(())
        );
        // An agent: itself, its DN, its stream, its mailboxes.
        assert_eq!(
            check(
                AGENT,
                "POST",
                "/v1/tenants/demo/agents/a1001/ready",
                None,
                None
            ),
            Ok(())
        );
        assert!(forbidden(check(
            AGENT,
            "POST",
            "/v1/tenants/demo/agents/a1002/ready",
            None,
            None
        )));
        assert!(forbidden(check(
            AGENT,
            "GET",
            "/v1/tenants/demo/agents",
            None,
            None
        )));
        assert_eq!(
            check(
                AGENT,
                "POST",
                "/v1/tenants/demo/calls/0001000000000001/answer",
                None,
                Some("1001")
            ),
            Ok(())
        );
        assert!(forbidden(check(
            AGENT,
            "POST",
            "/v1/tenants/demo/calls/0001000000000001/answer",
            None,
            Some("1002")
        )));
        assert!(forbidden(check(
            AGENT,
            "POST",
            "/v1/tenants/demo/calls",
            None,
            None
        )));
        assert_eq!(
            check(
                AGENT,
                "GET",
                "/v1/tenants/demo/calls/0001000000000001",
                None,
                None
            ),
            Ok(())
        );
        assert!(forbidden(check(
            AGENT,
            "GET",
            "/v1/tenants/demo/calls",
            None,
            None
        )));
        assert_eq!(
            check(
                AGENT,
                "GET",
                "/v1/tenants/demo/events",
                Some("agent=a1001&from=1-0"),
                None
            ),
            Ok(())
        );
        assert!(forbidden(check(
            AGENT,
            "GET",
            "/v1/tenants/demo/events",
            None,
            None
        )));
        assert!(forbidden(check(
            AGENT,
            "GET",
            "/v1/tenants/demo/events",
            Some("agent=a1002"),
            None
        )));
        assert_eq!(
            check(AGENT, "GET", "/v1/tenants/demo/queues", None, None),
            Ok(())
        );
        assert_eq!(
            check(
                AGENT,
                "GET",
                "/v1/tenants/demo/mailboxes/8100/messages",
                None,
                None
            ),
            Ok(())
        );
        assert!(forbidden(check(
            AGENT,
            "GET",
            "/v1/tenants/demo/mailboxes/8200/messages",
            None,
            None
        )));
        assert!(forbidden(check(
            AGENT,
            "GET",
            "/v1/tenants/demo/dns",
            None,
            None
        )));
        let b = book();
        let agent = b.lookup(AGENT).unwrap();
        assert!(needs_body_dn(
            agent,
            "POST",
            "/v1/tenants/demo/calls/x/answer"
        ));
        assert!(!needs_body_dn(agent, "GET", "/v1/tenants/demo/calls/x"));
        assert!(!needs_body_dn(
            b.lookup(SUP).unwrap(),
            "POST",
            "/v1/tenants/demo/calls/x/answer"
        ));
    }

    #[test]
    fn conference_requests_follow_the_call_policy() {
        let base = "/v1/tenants/demo/calls/0001000000000001";
        let routes = [
            ("POST", format!("{base}/conference")),
            ("POST", format!("{base}/conference/complete")),
            ("POST", format!("{base}/conference/single-step")),
            ("DELETE", format!("{base}/conference/parties/1002")),
        ];
        let b = book();
        for (method, path) in &routes {
            assert!(
                needs_body_dn(b.lookup(AGENT).unwrap(), method, path),
                "{path}"
            );
            assert_eq!(
                check(AGENT, method, path, None, Some("1001")),
                Ok(()),
                "{path}"
            );
            assert!(
                forbidden(check(AGENT, method, path, None, Some("1002"))),
                "{path}"
            );
            assert!(forbidden(check(AGENT, method, path, None, None)), "{path}");
            assert_eq!(check(SUP, method, path, None, None), Ok(()), "{path}");
        }
    }
}
