//! The dial plan, pure: built from the tenants' entities, it answers where a number goes.
//! No I/O, no clock; lookups only read memory.
//!
//! Resolution of a called number, given the calling number and the ingress:
//! 1. The tenant: the owner of the trunk the call came in on; for the node's unnamed gateways
//!    (`sip_node.trunks`) the tenant one of whose trunks has a DID range holding the number;
//!    else the tenant of the request (its domain), else the first tenant.
//! 2. The scope: `internal` when the call comes from a device (not a trunk) and the calling
//!    number is a DN of the tenant, else `inbound`.
//! 3. Inbound calls to a DID range with a `target` go to that DN.
//! 4. A DN of the tenant with the number: that DN (a `trunk` DN goes out on its trunk); else
//!    a mailbox of the tenant with the number: a deposit in it (`mailbox`).
//! 5. The tenant's rules of the scope (`any` or the same), by ascending priority then name:
//!    the first whose pattern matches translates the number (strip, replace, prefix) and
//!    sends it to a DN of the tenant (`local`) or out on a trunk (`external`).
//! 6. Internal callers only, when the node has a default gateway: a number of five or more
//!    digits (optionally with `+`) goes out through it.
//! 7. Else there is no route.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use regex::Regex;
use serde::Serialize;
use switchboard_config::{
    compile_regex, parse_trunk_address, Agent, Dn, DnKind, Mailbox, RoutePoint, RulePattern,
    RuleRoute, RuleScope, Tenant,
};

/// Where a call comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress<'a> {
    /// A device of a tenant (a phone through the SIP edge, or a REST request for a DN).
    Device,
    /// A named trunk of a tenant.
    Trunk(&'a str),
    /// One of the node's unnamed gateways (`sip_node.trunks`).
    Gateway,
}

/// A question for the dial plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query<'a> {
    /// The tenant the request names (its domain, or the REST path); `None`: the first tenant.
    pub tenant: Option<&'a str>,
    /// The called number (the Request-URI user).
    pub called: &'a str,
    /// The calling number (the From user).
    pub calling: &'a str,
    pub ingress: Ingress<'a>,
    /// Whether the node has an unnamed gateway for external numbers no rule routes (step 6).
    pub default_gateway: bool,
}

/// How a call is classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Internal,
    Inbound,
}

/// Where a call goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    Extension,
    RoutePoint,
    Queue,
    Voicemail,
    /// A mailbox (not a DN): the caller leaves a message there.
    Mailbox,
    /// Out on `trunk`; `None` is the node's default gateway.
    External {
        trunk: Option<String>,
    },
}

impl Target {
    fn of_dn(dn: &Dn) -> Target {
        match dn.kind {
            DnKind::Extension => Target::Extension,
            DnKind::RoutePoint => Target::RoutePoint,
            DnKind::Queue => Target::Queue,
            DnKind::VoicemailAccess => Target::Voicemail,
            DnKind::Trunk => Target::External {
                trunk: dn.trunk.clone(),
            },
        }
    }

    /// Whether the target is a DN of the tenant (not external).
    pub fn is_local(&self) -> bool {
        !matches!(self, Target::External { .. })
    }
}

/// The answer to a [`Query`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolution {
    pub tenant: String,
    pub scope: Scope,
    /// The calling number is a DN of the tenant and the call comes from a device.
    pub caller_internal: bool,
    pub target: Target,
    /// The number to call: the DN, or the translated external number.
    pub number: String,
    /// The rule that matched, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The trunk whose DID range held the called number, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub did_trunk: Option<String>,
}

/// Why a number has no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// No such tenant (or no tenant at all).
    UnknownTenant(String),
    /// The trunk named as ingress is not a trunk (of the tenant).
    UnknownTrunk(String),
    /// The number goes nowhere in `tenant`; the text says why.
    NoRoute { tenant: String, why: String },
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::UnknownTenant(t) if t.is_empty() => {
                f.write_str("no tenant is configured")
            }
            ResolveError::UnknownTenant(t) => write!(f, "no tenant {t:?}"),
            ResolveError::UnknownTrunk(t) => write!(f, "no trunk {t:?}"),
            ResolveError::NoRoute { why, .. } => f.write_str(why),
        }
    }
}

impl std::error::Error for ResolveError {}

/// A device (DN) as the dial plan knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub tenant: String,
    /// Where calls to the DN are sent: its address of record (the edge forks to the
    /// registered contacts).
    pub contact: String,
    /// The DN with its options (kind, name, mailbox, forwarding, ...).
    pub dn: Dn,
    /// The agent whose DN this is, when the configuration names one.
    pub agent: Option<String>,
}

#[derive(Debug, Clone)]
enum Pattern {
    Exact(String),
    Prefix(String),
    Range(String, String),
    Regex(Regex),
}

impl Pattern {
    fn matches(&self, n: &str) -> bool {
        match self {
            Pattern::Exact(e) => n == e,
            Pattern::Prefix(p) => n.starts_with(p.as_str()),
            Pattern::Range(lo, hi) => {
                n.len() == lo.len()
                    && n.bytes().all(|b| b.is_ascii_digit())
                    && n >= lo.as_str()
                    && n <= hi.as_str()
            }
            Pattern::Regex(r) => r.is_match(n),
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    priority: u32,
    scope: RuleScope,
    pattern: Pattern,
    strip: usize,
    replace: Option<(Regex, String)>,
    add_prefix: String,
    /// `None`: local; `Some(trunk)`: external.
    trunk: Option<String>,
}

impl Rule {
    fn applies(&self, scope: Scope) -> bool {
        match self.scope {
            RuleScope::Any => true,
            RuleScope::Internal => scope == Scope::Internal,
            RuleScope::Inbound => scope == Scope::Inbound,
        }
    }

    fn translate(&self, n: &str) -> String {
        let stripped: String = n.chars().skip(self.strip).collect();
        let replaced = match &self.replace {
            Some((re, with)) => re.replacen(&stripped, 1, with.as_str()).into_owned(),
            None => stripped,
        };
        format!("{}{replaced}", self.add_prefix)
    }
}

#[derive(Debug, Clone)]
struct Did {
    first: String,
    last: String,
    target: Option<String>,
}

impl Did {
    fn holds(&self, n: &str) -> bool {
        n.len() == self.first.len()
            && n.starts_with('+') == self.first.starts_with('+')
            && n >= self.first.as_str()
            && n <= self.last.as_str()
    }
}

#[derive(Debug, Clone)]
struct TrunkPlan {
    name: String,
    gateway: Option<SocketAddr>,
    dids: Vec<Did>,
}

#[derive(Debug, Clone)]
struct TenantPlan {
    name: String,
    domain: String,
    dns: HashMap<String, Dn>,
    agent_of_dn: HashMap<String, String>,
    route_points: HashMap<String, RoutePoint>,
    mailboxes: HashMap<String, Mailbox>,
    agents: Vec<Agent>,
    rules: Vec<Rule>,
    trunks: Vec<TrunkPlan>,
}

/// Problems found while compiling (entities the store accepted always compile; these are
/// reported and the rule skipped rather than failing the whole plan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileProblem {
    pub tenant: String,
    pub rule: String,
    pub message: String,
}

/// The compiled dial plan of every tenant.
#[derive(Debug, Clone, Default)]
pub struct Dialplan {
    tenants: Vec<TenantPlan>,
    /// (ip, port, tenant index, trunk name)
    trunk_addresses: Vec<(IpAddr, Option<u16>, usize, String)>,
    problems: Vec<CompileProblem>,
}

/// The SIP port a trunk address without one uses.
const SIP_PORT: u16 = 5060;

impl Dialplan {
    /// Compiles the tenants, in order (the first is the default tenant).
    pub fn build<'a>(tenants: impl IntoIterator<Item = &'a Tenant>) -> Dialplan {
        let mut plan = Dialplan::default();
        for t in tenants {
            let idx = plan.tenants.len();
            let mut rules = Vec::with_capacity(t.dialplan.len());
            for r in &t.dialplan {
                match compile_rule(r) {
                    Ok(rule) => rules.push(rule),
                    Err(message) => plan.problems.push(CompileProblem {
                        tenant: t.name.clone(),
                        rule: r.name.clone(),
                        message,
                    }),
                }
            }
            rules.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
            let mut trunks = Vec::new();
            for x in &t.trunks {
                let mut gateway = None;
                for a in &x.addresses {
                    if let Some((ip, port)) = parse_trunk_address(a) {
                        plan.trunk_addresses.push((ip, port, idx, x.name.clone()));
                        gateway.get_or_insert(SocketAddr::new(ip, port.unwrap_or(SIP_PORT)));
                    }
                }
                trunks.push(TrunkPlan {
                    name: x.name.clone(),
                    gateway,
                    dids: x
                        .dids
                        .iter()
                        .map(|d| Did {
                            first: d.first.clone(),
                            last: d.last.clone(),
                            target: d.target.clone(),
                        })
                        .collect(),
                });
            }
            let mut dns: HashMap<String, Dn> = t
                .dns
                .iter()
                .map(|d| (d.number.clone(), d.clone()))
                .collect();
            // SIP users without a DN of their own are extensions (their phones register).
            for u in &t.users {
                dns.entry(u.user.clone())
                    .or_insert_with(|| Dn::new(u.user.clone(), DnKind::Extension));
            }
            let agent_of_dn = t
                .agents
                .iter()
                .filter_map(|a| Some((a.dn.clone()?, a.login_id.clone())))
                .collect();
            plan.tenants.push(TenantPlan {
                name: t.name.clone(),
                domain: t.domain.clone(),
                dns,
                agent_of_dn,
                route_points: t
                    .route_points
                    .iter()
                    .map(|r| (r.number.clone(), r.clone()))
                    .collect(),
                mailboxes: t
                    .mailboxes
                    .iter()
                    .map(|m| (m.number.clone(), m.clone()))
                    .collect(),
                agents: t.agents.clone(),
                rules,
                trunks,
            });
        }
        plan
    }

    /// Rules that did not compile (skipped).
    pub fn problems(&self) -> &[CompileProblem] {
        &self.problems
    }

    /// Number of rules over all tenants.
    pub fn rule_count(&self) -> usize {
        self.tenants.iter().map(|t| t.rules.len()).sum()
    }

    fn tenant(&self, name: &str) -> Option<(usize, &TenantPlan)> {
        self.tenants
            .iter()
            .enumerate()
            .find(|(_, t)| t.name == name)
    }

    pub fn has_tenant(&self, tenant: &str) -> bool {
        self.tenant(tenant).is_some()
    }

    /// The tenant names, the default first.
    pub fn tenant_names(&self) -> impl Iterator<Item = &str> {
        self.tenants.iter().map(|t| t.name.as_str())
    }

    /// Whether `dn` is a DN of `tenant`.
    pub fn is_dn(&self, tenant: &str, dn: &str) -> bool {
        self.tenant(tenant)
            .is_some_and(|(_, t)| t.dns.contains_key(dn))
    }

    pub fn domain(&self, tenant: &str) -> Option<&str> {
        self.tenant(tenant).map(|(_, t)| t.domain.as_str())
    }

    /// The tenant of a Request-URI host: by domain, else the default tenant.
    pub fn tenant_for_host(&self, host: &str) -> Option<&str> {
        self.tenants
            .iter()
            .find(|t| t.domain.eq_ignore_ascii_case(host))
            .or_else(|| self.tenants.first())
            .map(|t| t.name.as_str())
    }

    /// The named trunk a packet from `addr` comes from: `(tenant, trunk)`.
    pub fn trunk_at(&self, addr: SocketAddr) -> Option<(&str, &str)> {
        self.trunk_addresses
            .iter()
            .find(|(ip, port, _, _)| *ip == addr.ip() && port.is_none_or(|p| p == addr.port()))
            .map(|(_, _, t, name)| (self.tenants[*t].name.as_str(), name.as_str()))
    }

    /// Whether `trunk` is a trunk of `tenant`.
    pub fn has_trunk(&self, tenant: &str, trunk: &str) -> bool {
        self.tenant(tenant)
            .is_some_and(|(_, t)| t.trunks.iter().any(|x| x.name == trunk))
    }

    /// Where calls out on `trunk` of `tenant` go: its first address (port 5060 when none).
    pub fn trunk_gateway(&self, tenant: &str, trunk: &str) -> Option<SocketAddr> {
        let (_, t) = self.tenant(tenant)?;
        t.trunks.iter().find(|x| x.name == trunk)?.gateway
    }

    /// The DN `dn` of `tenant` with its contact and agent.
    pub fn device(&self, tenant: &str, dn: &str) -> Option<Device> {
        let (_, t) = self.tenant(tenant)?;
        let d = t.dns.get(dn)?;
        Some(Device {
            tenant: t.name.clone(),
            contact: format!("sip:{dn}@{}", t.domain),
            dn: d.clone(),
            agent: t.agent_of_dn.get(dn).cloned(),
        })
    }

    /// The agent whose DN `dn` of `tenant` is, when the configuration names one.
    pub fn agent(&self, tenant: &str, dn: &str) -> Option<&str> {
        let (_, t) = self.tenant(tenant)?;
        t.agent_of_dn.get(dn).map(String::as_str)
    }

    /// The DN `dn` of `tenant` with its options.
    pub fn dn(&self, tenant: &str, dn: &str) -> Option<&Dn> {
        self.tenant(tenant)?.1.dns.get(dn)
    }

    /// The routing settings of route point `dn` of `tenant` (`[[tenants.route_points]]`),
    /// when it has an entry there.
    pub fn route_point(&self, tenant: &str, dn: &str) -> Option<&RoutePoint> {
        self.tenant(tenant)?.1.route_points.get(dn)
    }

    /// Mailbox `number` of `tenant`.
    pub fn mailbox(&self, tenant: &str, number: &str) -> Option<&Mailbox> {
        self.tenant(tenant)?.1.mailboxes.get(number)
    }

    /// The mailboxes of `tenant`.
    pub fn mailboxes(&self, tenant: &str) -> impl Iterator<Item = &Mailbox> {
        self.tenant(tenant)
            .into_iter()
            .flat_map(|(_, t)| t.mailboxes.values())
    }

    /// The agents of `tenant`.
    pub fn agents(&self, tenant: &str) -> &[Agent] {
        self.tenant(tenant)
            .map_or(&[], |(_, t)| t.agents.as_slice())
    }

    /// Resolves a call; see the module documentation for the steps.
    pub fn resolve(&self, q: &Query<'_>) -> Result<Resolution, ResolveError> {
        let (ti, t) = self.pick_tenant(q)?;
        let scope = match q.ingress {
            Ingress::Device if t.dns.contains_key(q.calling) => Scope::Internal,
            _ => Scope::Inbound,
        };
        let mut number = q.called.to_owned();
        let mut did_trunk = None;
        if scope == Scope::Inbound {
            if let Some((trunk, did)) = self.did_of(ti, q) {
                did_trunk = Some(trunk.to_owned());
                if let Some(target) = &did.target {
                    number = target.clone();
                }
            }
        }
        let done = |target: Target, number: String, rule: Option<String>| Resolution {
            tenant: t.name.clone(),
            scope,
            caller_internal: scope == Scope::Internal,
            target,
            number,
            rule,
            did_trunk: did_trunk.clone(),
        };
        if let Some(dn) = t.dns.get(&number) {
            return Ok(done(Target::of_dn(dn), number, None));
        }
        if t.mailboxes.contains_key(&number) {
            return Ok(done(Target::Mailbox, number, None));
        }
        if let Some(rule) = t
            .rules
            .iter()
            .find(|r| r.applies(scope) && r.pattern.matches(&number))
        {
            let translated = rule.translate(&number);
            return match &rule.trunk {
                Some(trunk) => Ok(done(
                    Target::External {
                        trunk: Some(trunk.clone()),
                    },
                    translated,
                    Some(rule.name.clone()),
                )),
                None => match t.dns.get(&translated) {
                    Some(dn) => Ok(done(Target::of_dn(dn), translated, Some(rule.name.clone()))),
                    None => Err(ResolveError::NoRoute {
                        tenant: t.name.clone(),
                        why: format!(
                            "rule {:?} translated {number:?} to {translated:?}, which is not a DN of tenant {}",
                            rule.name, t.name
                        ),
                    }),
                },
            };
        }
        if scope == Scope::Internal && q.default_gateway && looks_external(&number) {
            return Ok(done(Target::External { trunk: None }, number, None));
        }
        Err(ResolveError::NoRoute {
            tenant: t.name.clone(),
            why: format!(
                "{number:?} is not a DN of tenant {} and no dial-plan rule matches",
                t.name
            ),
        })
    }

    fn pick_tenant(&self, q: &Query<'_>) -> Result<(usize, &TenantPlan), ResolveError> {
        let named = |name: &str| {
            self.tenant(name)
                .ok_or_else(|| ResolveError::UnknownTenant(name.to_owned()))
        };
        match q.ingress {
            Ingress::Trunk(trunk) => {
                let owner = self
                    .tenants
                    .iter()
                    .position(|t| t.trunks.iter().any(|x| x.name == trunk))
                    .ok_or_else(|| ResolveError::UnknownTrunk(trunk.to_owned()))?;
                if let Some(name) = q.tenant {
                    if self.tenants[owner].name != name {
                        named(name)?;
                        return Err(ResolveError::UnknownTrunk(format!(
                            "{trunk} (of tenant {name})"
                        )));
                    }
                }
                Ok((owner, &self.tenants[owner]))
            }
            Ingress::Gateway => {
                let by_did = self.tenants.iter().position(|t| {
                    t.trunks
                        .iter()
                        .any(|x| x.dids.iter().any(|d| d.holds(q.called)))
                });
                match (by_did, q.tenant) {
                    (Some(i), _) => Ok((i, &self.tenants[i])),
                    (None, Some(name)) => named(name),
                    (None, None) => self.default_tenant(),
                }
            }
            Ingress::Device => match q.tenant {
                Some(name) => named(name),
                None => self.default_tenant(),
            },
        }
    }

    fn default_tenant(&self) -> Result<(usize, &TenantPlan), ResolveError> {
        self.tenants
            .first()
            .map(|t| (0, t))
            .ok_or_else(|| ResolveError::UnknownTenant(String::new()))
    }

    /// The DID range holding the called number: the ingress trunk's first, then the tenant's.
    fn did_of(&self, ti: usize, q: &Query<'_>) -> Option<(&str, &Did)> {
        let t = &self.tenants[ti];
        let first = match q.ingress {
            Ingress::Trunk(name) => t.trunks.iter().find(|x| x.name == name),
            _ => None,
        };
        first.into_iter().chain(t.trunks.iter()).find_map(|x| {
            x.dids
                .iter()
                .find(|d| d.holds(q.called))
                .map(|d| (x.name.as_str(), d))
        })
    }
}

/// Digits (at least five) with an optional leading `+`.
fn looks_external(n: &str) -> bool {
    let digits = n.strip_prefix('+').unwrap_or(n);
    digits.len() >= 5 && digits.bytes().all(|b| b.is_ascii_digit())
}

fn compile_rule(r: &switchboard_config::DialRule) -> Result<Rule, String> {
    let pattern = match r.pattern() {
        Some(RulePattern::Exact(e)) => Pattern::Exact(e.to_owned()),
        Some(RulePattern::Prefix(p)) => Pattern::Prefix(p.to_owned()),
        Some(RulePattern::Range(a, b)) => Pattern::Range(a.to_owned(), b.to_owned()),
        Some(RulePattern::Regex(x)) => Pattern::Regex(compile_regex(x)?),
        None => return Err("the rule needs exactly one pattern".to_owned()),
    };
    let replace = match &r.replace {
        Some(rep) => Some((compile_regex(&rep.regex)?, rep.with.clone())),
        None => None,
    };
    let trunk = match (r.route, &r.trunk) {
        (RuleRoute::External, Some(x)) => Some(x.clone()),
        (RuleRoute::External, None) => return Err("an external rule needs a trunk".to_owned()),
        (RuleRoute::Local, _) => None,
    };
    Ok(Rule {
        name: r.name.clone(),
        priority: r.priority,
        scope: r.applies_to,
        pattern,
        strip: r.strip as usize,
        replace,
        add_prefix: r.add_prefix.clone(),
        trunk,
    })
}
