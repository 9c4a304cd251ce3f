//! The contact-center entities of a tenant: DNs, agents, skills, agent groups, route points,
//! trunks, dial-plan rules and mailboxes.
//!
//! The same types are the `[[tenants.*]]` sections of the TOML file, the rows of the
//! configuration store and the JSON bodies of the REST API (`/v1/tenants/{t}/...`), so there is
//! one schema and one validation: [`Tenant::entity_problems`] checks a tenant's entities, each
//! field on its own and the references between them, and names every bad field with a key
//! relative to the tenant (`dns[2].number`, `agents[0].skills.sales`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::{bad, Found, Problem, Tenant};

/// What a directory number is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DnKind {
    /// A phone (or softphone) where an agent or a user answers calls.
    Extension,
    /// A number whose calls are routed by a strategy (see [`RoutePoint`]).
    RoutePoint,
    /// A queue number: calls wait for an agent of the DN's `agent_group`.
    Queue,
    /// The number agents call to listen to their voicemail.
    VoicemailAccess,
    /// A number that stands for an external trunk: calls to it go out on `trunk`.
    Trunk,
}

impl DnKind {
    /// The name used in TOML and JSON (`extension`, `route_point`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DnKind::Extension => "extension",
            DnKind::RoutePoint => "route_point",
            DnKind::Queue => "queue",
            DnKind::VoicemailAccess => "voicemail_access",
            DnKind::Trunk => "trunk",
        }
    }
}

impl fmt::Display for DnKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[[tenants.dns]]`: a directory number of the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dn {
    /// The number, unique in the tenant: digits, `*` and `#`, optionally a leading `+`
    /// (1 to 32 characters). Required.
    pub number: String,
    /// What the number is. Required.
    pub kind: DnKind,
    /// Display name. Default empty.
    #[serde(default)]
    pub name: String,
    /// Mailbox (its number) that takes unanswered calls. Optional.
    #[serde(default)]
    pub mailbox: Option<String>,
    /// Seconds an extension rings before the call is unanswered (1..=600). Optional: the
    /// platform's default. For a `queue`: how long a call waits there before it goes to
    /// `forward_no_answer` (or is released); without it a queued call waits until routed.
    #[serde(default)]
    pub no_answer_timeout_s: Option<u32>,
    /// Number that unanswered calls are forwarded to (for a `queue`: where calls go that
    /// waited `no_answer_timeout_s`). Optional.
    #[serde(default)]
    pub forward_no_answer: Option<String>,
    /// Number that calls are forwarded to when the DN is busy (its phone answers 486 or 600).
    /// Optional.
    #[serde(default)]
    pub forward_busy: Option<String>,
    /// For a `queue`: the agent group whose agents take the queue's calls. Optional.
    #[serde(default)]
    pub agent_group: Option<String>,
    /// For a `trunk` DN: the trunk (its name). Required for that kind, refused for the others.
    #[serde(default)]
    pub trunk: Option<String>,
}

/// `[[tenants.agents]]`: a person who logs in on a DN and takes calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    /// Login id, unique in the tenant: letters, digits, `.`, `_`, `-`, `@` (1 to 64). Required.
    pub login_id: String,
    /// Full name. Default empty.
    #[serde(default)]
    pub name: String,
    /// The agent's default DN, an `extension`. Optional (the agent names one at login).
    #[serde(default)]
    pub dn: Option<String>,
    /// Skills (declared in `[[tenants.skills]]`) with their level, 0..=100.
    /// TOML: `skills = { sales = 8, english = 10 }`. Default none.
    #[serde(default)]
    pub skills: BTreeMap<String, u32>,
    /// Agent groups (declared in `[[tenants.agent_groups]]`) the agent belongs to.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `[[tenants.skills]]`: a skill agents can have, with a level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Skill {
    /// Name, unique in the tenant: letters, digits, `_`, `-` (1 to 64). Required.
    pub name: String,
    /// Free text. Default empty.
    #[serde(default)]
    pub description: String,
}

/// `[[tenants.agent_groups]]`: a named set of agents (a queue's target, a mailbox's owner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentGroup {
    /// Name, unique in the tenant: letters, digits, `_`, `-` (1 to 64). Required.
    pub name: String,
    /// Free text. Default empty.
    #[serde(default)]
    pub description: String,
    /// Seconds of after-call work the group's agents get when a call ends (0..=3600), before
    /// they are Ready again. Default 0: straight back to Ready. An agent in several groups
    /// gets the longest.
    #[serde(default)]
    pub after_call_work_s: u32,
}

/// `[[tenants.route_points]]`: the routing strategy of a `route_point` DN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePoint {
    /// The DN (of kind `route_point`). Required.
    pub number: String,
    /// The strategy to run for each call: `http://`, `https://`, `file://` or `builtin:`
    /// URL of an SCXML document. Required.
    pub strategy_url: String,
    /// Free text. Default empty.
    #[serde(default)]
    pub description: String,
    /// Where a call goes when nobody routes it within the timeout: a DN of the tenant or an
    /// external number (resolved by the dial plan as if the route point dialled it).
    /// Optional: without it an unrouted call is released (the caller gets 480).
    #[serde(default)]
    pub default_route: Option<String>,
    /// Seconds a call waits at the route point for a routing decision (1..=3600). Optional:
    /// the SIP Server's `sip_node.route_timeout_ms`.
    #[serde(default)]
    pub timeout_s: Option<u32>,
}

/// `[[tenants.trunks]]`: a carrier gateway or SBC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trunk {
    /// Name, unique across all tenants: letters, digits, `_`, `-` (1 to 64). Required.
    pub name: String,
    /// The gateway's addresses, `IP` or `IP:port`: calls coming from one of them come from this
    /// trunk (an address belongs to one trunk only); outbound calls go to the first. At least
    /// one. Required.
    pub addresses: Vec<String>,
    /// Inbound DID ranges of the trunk. Default none.
    #[serde(default)]
    pub dids: Vec<DidRange>,
}

/// A range of inbound numbers (DIDs) of a trunk.
/// TOML: `dids = [{ first = "+15550000000", last = "+15550009999", target = "5000" }]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DidRange {
    /// First number of the range: digits with an optional leading `+`. Required.
    pub first: String,
    /// Last number, as long as `first` and not below it. Required.
    pub last: String,
    /// The DN that calls to the range reach. Optional: without it the called number itself is
    /// looked up (DNs, then the inbound dial-plan rules).
    #[serde(default)]
    pub target: Option<String>,
}

/// Which calls a dial-plan rule applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleScope {
    /// Calls from devices and from trunks.
    #[default]
    Any,
    /// Calls from the tenant's devices.
    Internal,
    /// Calls from trunks.
    Inbound,
}

/// Where a dial-plan rule sends the translated number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleRoute {
    /// To the tenant's DN with the translated number.
    Local,
    /// Out on `trunk`, with the translated number.
    External,
}

/// A regex replacement: `replace = { regex = "^00", with = "+" }` (`$1`, `${name}` refer to
/// capture groups).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replace {
    /// The pattern (Rust `regex` syntax). Required.
    pub regex: String,
    /// The replacement of the first match. Required.
    pub with: String,
}

/// `[[tenants.dialplan]]`: a number translation rule. Rules are tried by ascending `priority`
/// (then by name); the first whose pattern matches the called number wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialRule {
    /// Name, unique in the tenant: letters, digits, `_`, `-` (1 to 64; not `resolve`). Required.
    pub name: String,
    /// Order of evaluation, lowest first. Required.
    pub priority: u32,
    /// `any` (default), `internal` (from devices) or `inbound` (from trunks).
    #[serde(default)]
    pub applies_to: RuleScope,
    /// Pattern: the called number is exactly this. Exactly one of `exact`, `prefix`, `range`,
    /// `regex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Pattern: the called number starts with this.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Pattern: `"2000-2999"`, numbers as long as the bounds and between them.
    #[serde(default)]
    pub range: Option<String>,
    /// Pattern: a regular expression the whole number must match (anchor it yourself).
    #[serde(default)]
    pub regex: Option<String>,
    /// Translation, step 1: remove this many leading characters. Default 0.
    #[serde(default)]
    pub strip: u32,
    /// Translation, step 2: a regex replacement. Optional.
    #[serde(default)]
    pub replace: Option<Replace>,
    /// Translation, step 3: put this in front. Default empty.
    #[serde(default)]
    pub add_prefix: String,
    /// `local` (a DN of the tenant) or `external` (out on `trunk`). Required.
    pub route: RuleRoute,
    /// The trunk of an `external` rule. Required for `external`, refused for `local`.
    #[serde(default)]
    pub trunk: Option<String>,
}

/// `[[tenants.mailboxes]]`: a voicemail box of an agent or of an agent group.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mailbox {
    /// Mailbox number, unique in the tenant (digits, 1 to 32). Required.
    pub number: String,
    /// The agent (login id) who owns it. Exactly one of `owner_agent`, `owner_group`.
    #[serde(default)]
    pub owner_agent: Option<String>,
    /// The agent group that owns it.
    #[serde(default)]
    pub owner_group: Option<String>,
    /// PIN of the access menu: 4 to 12 digits. Required.
    pub pin: String,
    /// Longest message, in seconds (1..=3600). Default 120.
    #[serde(default = "default_max_message_s")]
    pub max_message_s: u32,
    /// Most messages kept (1..=10000). Default 100.
    #[serde(default = "default_max_messages")]
    pub max_messages: u32,
    /// Days a message is kept (1..=3650). Default 30.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
}

fn default_max_message_s() -> u32 {
    120
}
fn default_max_messages() -> u32 {
    100
}
fn default_retention_days() -> u32 {
    30
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox")
            .field("number", &self.number)
            .field("owner_agent", &self.owner_agent)
            .field("owner_group", &self.owner_group)
            .field("pin", &"<redacted>")
            .field("max_message_s", &self.max_message_s)
            .field("max_messages", &self.max_messages)
            .field("retention_days", &self.retention_days)
            .finish()
    }
}

impl Mailbox {
    /// A mailbox with the default limits.
    pub fn new(number: impl Into<String>, pin: impl Into<String>) -> Mailbox {
        Mailbox {
            number: number.into(),
            owner_agent: None,
            owner_group: None,
            pin: pin.into(),
            max_message_s: default_max_message_s(),
            max_messages: default_max_messages(),
            retention_days: default_retention_days(),
        }
    }
}

impl Dn {
    /// A DN with no options.
    pub fn new(number: impl Into<String>, kind: DnKind) -> Dn {
        Dn {
            number: number.into(),
            kind,
            name: String::new(),
            mailbox: None,
            no_answer_timeout_s: None,
            forward_no_answer: None,
            forward_busy: None,
            agent_group: None,
            trunk: None,
        }
    }
}

/// The pattern of a rule, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulePattern<'a> {
    /// `exact`
    Exact(&'a str),
    /// `prefix`
    Prefix(&'a str),
    /// `range`, split into its bounds.
    Range(&'a str, &'a str),
    /// `regex`
    Regex(&'a str),
}

impl DialRule {
    /// The rule's pattern, when exactly one of `exact`, `prefix`, `range`, `regex` is set and
    /// a range is written `first-last`.
    pub fn pattern(&self) -> Option<RulePattern<'_>> {
        match (&self.exact, &self.prefix, &self.range, &self.regex) {
            (Some(e), None, None, None) => Some(RulePattern::Exact(e)),
            (None, Some(p), None, None) => Some(RulePattern::Prefix(p)),
            (None, None, Some(r), None) => {
                let (a, b) = r.split_once('-')?;
                Some(RulePattern::Range(a.trim(), b.trim()))
            }
            (None, None, None, Some(x)) => Some(RulePattern::Regex(x)),
            _ => None,
        }
    }
}

/// Whether `s` is a dialable number: digits, `*`, `#`, an optional leading `+`; 1 to 32.
pub fn is_number(s: &str) -> bool {
    let body = s.strip_prefix('+').unwrap_or(s);
    !body.is_empty()
        && s.len() <= 32
        && body
            .chars()
            .all(|c| c.is_ascii_digit() || c == '*' || c == '#')
}

/// Whether `s` is an E.164-like number: digits with an optional leading `+`; 1 to 32.
pub fn is_digits(s: &str) -> bool {
    let body = s.strip_prefix('+').unwrap_or(s);
    !body.is_empty() && s.len() <= 32 && body.chars().all(|c| c.is_ascii_digit())
}

/// Whether `s` is a name: letters, digits, `_`, `-`; 1 to 64.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Whether `s` is a login id: letters, digits, `.`, `_`, `-`, `@`; 1 to 64.
pub fn is_login_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

/// Parses a trunk address (`IP` or `IP:port`).
pub fn parse_trunk_address(s: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some((ip, None));
    }
    let sa = s.parse::<SocketAddr>().ok()?;
    (sa.port() != 0).then_some((sa.ip(), Some(sa.port())))
}

/// Whether `s` is a strategy URL we can fetch: `http(s)://`, `file://` or `builtin:` with
/// something after it and no whitespace.
pub fn is_strategy_url(s: &str) -> bool {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    ["http://", "https://", "file://", "builtin:"]
        .iter()
        .any(|scheme| s.strip_prefix(scheme).is_some_and(|rest| !rest.is_empty()))
}

/// Compiles a regex from the configuration with bounded size.
pub fn compile_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
        .map_err(|e| {
            // The regex crate's messages span several lines; keep the last, most precise one.
            let text = e.to_string();
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid");
            format!("{pattern:?} is not a valid regex: {}", last.trim())
        })
}

fn check_name(out: &mut Vec<Found>, key: String, value: &str, what: &str) {
    if value.is_empty() {
        bad(out, key, "must not be empty");
    } else if !is_name(value) {
        bad(
            out,
            key,
            format!("{value:?} is not a valid {what}: use 1 to 64 letters, digits, '_' or '-'"),
        );
    }
}

fn check_number(out: &mut Vec<Found>, key: String, value: &str) {
    if value.is_empty() {
        bad(out, key, "must not be empty");
    } else if !is_number(value) {
        bad(
            out,
            key,
            format!(
                "{value:?} is not a valid number: use 1 to 32 digits, '*' or '#', with an optional leading '+'"
            ),
        );
    }
}

fn check_range(out: &mut Vec<Found>, key: String, value: u32, lo: u32, hi: u32) {
    if !(lo..=hi).contains(&value) {
        bad(
            out,
            key,
            format!("must be between {lo} and {hi}, got {value}"),
        );
    }
}

/// Whether the numeric ranges `a` and `b` (same-length bounds) overlap.
fn ranges_overlap(a: (&str, &str), b: (&str, &str)) -> bool {
    a.0.len() == b.0.len() && a.0 <= b.1 && b.0 <= a.1
}

impl Tenant {
    /// Problems with the tenant's entities, keys relative to the tenant (`dns[0].number`).
    /// Does not look at other tenants (trunk names and addresses are unique across tenants:
    /// [`crate::Config::validate`] checks that).
    pub fn entity_problems(&self) -> Vec<Problem> {
        let mut found = Vec::new();
        validate_entities(self, "", &mut found);
        found
            .into_iter()
            .map(|f| Problem::new(f.key, f.message))
            .collect()
    }

    /// The DN `number`, if the tenant has it.
    pub fn dn(&self, number: &str) -> Option<&Dn> {
        self.dns.iter().find(|d| d.number == number)
    }
}

/// Checks one tenant's entities; `prefix` is `tenants[i].` or empty.
pub(crate) fn validate_entities(t: &Tenant, prefix: &str, out: &mut Vec<Found>) {
    let skills: HashSet<&str> = t.skills.iter().map(|s| s.name.as_str()).collect();
    let groups: HashSet<&str> = t.agent_groups.iter().map(|g| g.name.as_str()).collect();
    let trunks: HashSet<&str> = t.trunks.iter().map(|x| x.name.as_str()).collect();
    let mailboxes: HashSet<&str> = t.mailboxes.iter().map(|m| m.number.as_str()).collect();
    let agents: HashSet<&str> = t.agents.iter().map(|a| a.login_id.as_str()).collect();
    let dns: HashMap<&str, DnKind> = t.dns.iter().map(|d| (d.number.as_str(), d.kind)).collect();

    // Skills and agent groups.
    let mut seen = HashSet::new();
    for (i, s) in t.skills.iter().enumerate() {
        let key = format!("{prefix}skills[{i}].name");
        check_name(out, key.clone(), &s.name, "skill name");
        if !s.name.is_empty() && !seen.insert(s.name.as_str()) {
            bad(out, key, format!("skill {:?} is defined twice", s.name));
        }
    }
    let mut seen = HashSet::new();
    for (i, g) in t.agent_groups.iter().enumerate() {
        let key = format!("{prefix}agent_groups[{i}].name");
        check_name(out, key.clone(), &g.name, "agent group name");
        if !g.name.is_empty() && !seen.insert(g.name.as_str()) {
            bad(
                out,
                key,
                format!("agent group {:?} is defined twice", g.name),
            );
        }
        check_range(
            out,
            format!("{prefix}agent_groups[{i}].after_call_work_s"),
            g.after_call_work_s,
            0,
            3600,
        );
    }

    // DNs.
    let mut seen = HashSet::new();
    for (i, d) in t.dns.iter().enumerate() {
        let key = format!("{prefix}dns[{i}]");
        check_number(out, format!("{key}.number"), &d.number);
        if !d.number.is_empty() && !seen.insert(d.number.as_str()) {
            bad(
                out,
                format!("{key}.number"),
                format!("DN {:?} is defined twice", d.number),
            );
        }
        if let Some(m) = &d.mailbox {
            if !mailboxes.contains(m.as_str()) {
                bad(
                    out,
                    format!("{key}.mailbox"),
                    format!("no mailbox {m:?} in this tenant"),
                );
            }
        }
        if let Some(s) = d.no_answer_timeout_s {
            check_range(out, format!("{key}.no_answer_timeout_s"), s, 1, 600);
        }
        if let Some(n) = &d.forward_no_answer {
            check_number(out, format!("{key}.forward_no_answer"), n);
        }
        if let Some(n) = &d.forward_busy {
            check_number(out, format!("{key}.forward_busy"), n);
        }
        match (&d.agent_group, d.kind) {
            (Some(g), DnKind::Queue) => {
                if !groups.contains(g.as_str()) {
                    bad(
                        out,
                        format!("{key}.agent_group"),
                        format!("no agent group {g:?} in this tenant"),
                    );
                }
            }
            (Some(_), kind) => bad(
                out,
                format!("{key}.agent_group"),
                format!("only a queue DN has an agent group, this one is a {kind}"),
            ),
            (None, _) => {}
        }
        match (&d.trunk, d.kind) {
            (Some(x), DnKind::Trunk) => {
                if !trunks.contains(x.as_str()) {
                    bad(
                        out,
                        format!("{key}.trunk"),
                        format!("no trunk {x:?} in this tenant"),
                    );
                }
            }
            (None, DnKind::Trunk) => bad(
                out,
                format!("{key}.trunk"),
                "a trunk DN needs the name of its trunk",
            ),
            (Some(_), kind) => bad(
                out,
                format!("{key}.trunk"),
                format!("only a trunk DN names a trunk, this one is a {kind}"),
            ),
            (None, _) => {}
        }
    }

    // Agents.
    let mut seen = HashSet::new();
    for (i, a) in t.agents.iter().enumerate() {
        let key = format!("{prefix}agents[{i}]");
        if a.login_id.is_empty() {
            bad(out, format!("{key}.login_id"), "must not be empty");
        } else if !is_login_id(&a.login_id) {
            bad(
                out,
                format!("{key}.login_id"),
                format!(
                    "{:?} is not a valid login id: use 1 to 64 letters, digits, '.', '_', '-' or '@'",
                    a.login_id
                ),
            );
        } else if !seen.insert(a.login_id.as_str()) {
            bad(
                out,
                format!("{key}.login_id"),
                format!("agent {:?} is defined twice", a.login_id),
            );
        }
        if let Some(dn) = &a.dn {
            match dns.get(dn.as_str()) {
                None => bad(
                    out,
                    format!("{key}.dn"),
                    format!("no DN {dn:?} in this tenant"),
                ),
                Some(DnKind::Extension) => {}
                Some(kind) => bad(
                    out,
                    format!("{key}.dn"),
                    format!("DN {dn:?} is a {kind}, an agent's DN must be an extension"),
                ),
            }
        }
        for (skill, level) in &a.skills {
            if !skills.contains(skill.as_str()) {
                bad(
                    out,
                    format!("{key}.skills.{skill}"),
                    format!("no skill {skill:?} in this tenant (declare it in skills)"),
                );
            } else {
                check_range(out, format!("{key}.skills.{skill}"), *level, 0, 100);
            }
        }
        let mut seen_group = HashSet::new();
        for (j, g) in a.groups.iter().enumerate() {
            if !groups.contains(g.as_str()) {
                bad(
                    out,
                    format!("{key}.groups[{j}]"),
                    format!("no agent group {g:?} in this tenant"),
                );
            } else if !seen_group.insert(g.as_str()) {
                bad(
                    out,
                    format!("{key}.groups[{j}]"),
                    format!("group {g:?} is listed twice"),
                );
            }
        }
    }

    // Route points.
    let mut seen = HashSet::new();
    for (i, r) in t.route_points.iter().enumerate() {
        let key = format!("{prefix}route_points[{i}]");
        match dns.get(r.number.as_str()) {
            _ if r.number.is_empty() => bad(out, format!("{key}.number"), "must not be empty"),
            None => bad(
                out,
                format!("{key}.number"),
                format!(
                    "no DN {:?} in this tenant (add it to dns with kind route_point)",
                    r.number
                ),
            ),
            Some(DnKind::RoutePoint) => {
                if !seen.insert(r.number.as_str()) {
                    bad(
                        out,
                        format!("{key}.number"),
                        format!("route point {:?} is defined twice", r.number),
                    );
                }
            }
            Some(kind) => bad(
                out,
                format!("{key}.number"),
                format!("DN {:?} is a {kind}, not a route_point", r.number),
            ),
        }
        if let Some(n) = &r.default_route {
            check_number(out, format!("{key}.default_route"), n);
        }
        if let Some(s) = r.timeout_s {
            check_range(out, format!("{key}.timeout_s"), s, 1, 3600);
        }
        if !is_strategy_url(&r.strategy_url) {
            bad(
                out,
                format!("{key}.strategy_url"),
                format!(
                    "{:?} is not a strategy URL: expected http://, https://, file:// or builtin:",
                    r.strategy_url
                ),
            );
        }
    }

    // Trunks.
    let mut seen = HashSet::new();
    for (i, x) in t.trunks.iter().enumerate() {
        let key = format!("{prefix}trunks[{i}]");
        check_name(out, format!("{key}.name"), &x.name, "trunk name");
        if !x.name.is_empty() && !seen.insert(x.name.as_str()) {
            bad(
                out,
                format!("{key}.name"),
                format!("trunk {:?} is defined twice", x.name),
            );
        }
        if x.addresses.is_empty() {
            bad(
                out,
                format!("{key}.addresses"),
                "a trunk needs at least one address",
            );
        }
        for (j, addr) in x.addresses.iter().enumerate() {
            if parse_trunk_address(addr).is_none() {
                bad(
                    out,
                    format!("{key}.addresses[{j}]"),
                    format!("{addr:?} is not an address: expected IP or IP:port such as \"192.0.2.10\" or \"192.0.2.10:5060\""),
                );
            }
        }
        for (j, r) in x.dids.iter().enumerate() {
            let dkey = format!("{key}.dids[{j}]");
            let mut ok = true;
            for (field, value) in [("first", &r.first), ("last", &r.last)] {
                if !is_digits(value) {
                    bad(
                        out,
                        format!("{dkey}.{field}"),
                        format!("{value:?} is not a DID: use digits with an optional leading '+'"),
                    );
                    ok = false;
                }
            }
            if ok {
                if r.first.len() != r.last.len()
                    || r.first.starts_with('+') != r.last.starts_with('+')
                {
                    bad(
                        out,
                        format!("{dkey}.last"),
                        format!(
                            "{:?} must be written like first ({:?}): same length",
                            r.last, r.first
                        ),
                    );
                } else if r.last < r.first {
                    bad(
                        out,
                        format!("{dkey}.last"),
                        format!("{:?} is below first ({:?})", r.last, r.first),
                    );
                } else if x.dids[..j]
                    .iter()
                    .any(|o| ranges_overlap((&o.first, &o.last), (&r.first, &r.last)))
                {
                    bad(
                        out,
                        format!("{dkey}.first"),
                        "overlaps another DID range of this trunk",
                    );
                }
            }
            if let Some(target) = &r.target {
                if !dns.contains_key(target.as_str()) {
                    bad(
                        out,
                        format!("{dkey}.target"),
                        format!("no DN {target:?} in this tenant"),
                    );
                }
            }
        }
    }

    // Dial-plan rules.
    let mut seen = HashSet::new();
    for (i, r) in t.dialplan.iter().enumerate() {
        let key = format!("{prefix}dialplan[{i}]");
        check_name(out, format!("{key}.name"), &r.name, "rule name");
        if r.name == "resolve" {
            bad(
                out,
                format!("{key}.name"),
                "\"resolve\" is reserved (GET /v1/tenants/{t}/dialplan/resolve)",
            );
        } else if !r.name.is_empty() && !seen.insert(r.name.as_str()) {
            bad(
                out,
                format!("{key}.name"),
                format!("rule {:?} is defined twice", r.name),
            );
        }
        let set = [
            r.exact.is_some(),
            r.prefix.is_some(),
            r.range.is_some(),
            r.regex.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            let field = if r.range.is_some() {
                "range"
            } else if r.regex.is_some() {
                "regex"
            } else if r.exact.is_some() {
                "exact"
            } else {
                "prefix"
            };
            bad(
                out,
                format!("{key}.{field}"),
                "a rule needs exactly one pattern: exact, prefix, range or regex",
            );
        } else if let Some(e) = &r.exact {
            check_number(out, format!("{key}.exact"), e);
        } else if let Some(p) = &r.prefix {
            if !p.is_empty() && !is_number(p) {
                bad(
                    out,
                    format!("{key}.prefix"),
                    format!("{p:?} is not a number prefix: digits, '*', '#', optional leading '+'"),
                );
            }
        } else if let Some(range) = &r.range {
            match r.pattern() {
                Some(RulePattern::Range(a, b))
                    if is_digits(a)
                        && is_digits(b)
                        && !a.starts_with('+')
                        && !b.starts_with('+')
                        && a.len() == b.len()
                        && a <= b => {}
                _ => bad(
                    out,
                    format!("{key}.range"),
                    format!("{range:?} is not a range: expected \"first-last\" with digits of the same length, first <= last, e.g. \"2000-2999\""),
                ),
            }
        } else if let Some(x) = &r.regex {
            if let Err(e) = compile_regex(x) {
                bad(out, format!("{key}.regex"), e);
            }
        }
        if r.strip > 32 {
            bad(
                out,
                format!("{key}.strip"),
                format!("must be between 0 and 32, got {}", r.strip),
            );
        }
        if let Some(rep) = &r.replace {
            if let Err(e) = compile_regex(&rep.regex) {
                bad(out, format!("{key}.replace.regex"), e);
            }
        }
        if !r.add_prefix.is_empty() && !is_number(&r.add_prefix) {
            bad(
                out,
                format!("{key}.add_prefix"),
                format!(
                    "{:?} is not a number prefix: digits, '*', '#', optional leading '+'",
                    r.add_prefix
                ),
            );
        }
        match (r.route, &r.trunk) {
            (RuleRoute::External, Some(x)) => {
                if !trunks.contains(x.as_str()) {
                    bad(
                        out,
                        format!("{key}.trunk"),
                        format!("no trunk {x:?} in this tenant"),
                    );
                }
            }
            (RuleRoute::External, None) => bad(
                out,
                format!("{key}.trunk"),
                "an external rule needs a trunk",
            ),
            (RuleRoute::Local, Some(_)) => bad(
                out,
                format!("{key}.trunk"),
                "a local rule does not use a trunk",
            ),
            (RuleRoute::Local, None) => {}
        }
    }

    // Mailboxes.
    let mut seen = HashSet::new();
    for (i, m) in t.mailboxes.iter().enumerate() {
        let key = format!("{prefix}mailboxes[{i}]");
        if m.number.is_empty() {
            bad(out, format!("{key}.number"), "must not be empty");
        } else if !is_digits(&m.number) || m.number.starts_with('+') {
            bad(
                out,
                format!("{key}.number"),
                format!("{:?} is not a mailbox number: use 1 to 32 digits", m.number),
            );
        } else if !seen.insert(m.number.as_str()) {
            bad(
                out,
                format!("{key}.number"),
                format!("mailbox {:?} is defined twice", m.number),
            );
        }
        match (&m.owner_agent, &m.owner_group) {
            (Some(a), None) => {
                if !agents.contains(a.as_str()) {
                    bad(
                        out,
                        format!("{key}.owner_agent"),
                        format!("no agent {a:?} in this tenant"),
                    );
                }
            }
            (None, Some(g)) => {
                if !groups.contains(g.as_str()) {
                    bad(
                        out,
                        format!("{key}.owner_group"),
                        format!("no agent group {g:?} in this tenant"),
                    );
                }
            }
            (Some(_), Some(_)) => bad(
                out,
                format!("{key}.owner_group"),
                "a mailbox has one owner: set owner_agent or owner_group, not both",
            ),
            (None, None) => bad(
                out,
                format!("{key}.owner_agent"),
                "a mailbox needs an owner: set owner_agent or owner_group",
            ),
        }
        if !(4..=12).contains(&m.pin.len()) || !m.pin.chars().all(|c| c.is_ascii_digit()) {
            bad(out, format!("{key}.pin"), "must be 4 to 12 digits");
        }
        check_range(
            out,
            format!("{key}.max_message_s"),
            m.max_message_s,
            1,
            3600,
        );
        check_range(
            out,
            format!("{key}.max_messages"),
            m.max_messages,
            1,
            10_000,
        );
        check_range(
            out,
            format!("{key}.retention_days"),
            m.retention_days,
            1,
            3650,
        );
    }
}

/// Checks what must be unique across tenants: trunk names and trunk addresses. `key_of(i, j)`
/// is the key prefix of trunk `j` of tenant `i`.
pub(crate) fn validate_across_tenants(
    tenants: &[Tenant],
    key_of: impl Fn(usize, usize) -> String,
    out: &mut Vec<Found>,
) {
    let mut names: HashMap<&str, &str> = HashMap::new();
    // (ip, port, tenant, trunk)
    let mut addrs: Vec<(IpAddr, Option<u16>, &str, &str)> = Vec::new();
    for (i, t) in tenants.iter().enumerate() {
        for (j, x) in t.trunks.iter().enumerate() {
            if let Some(other) = names.get(x.name.as_str()) {
                if *other != t.name {
                    bad(
                        out,
                        format!("{}.name", key_of(i, j)),
                        format!("trunk {:?} already belongs to tenant {other:?}", x.name),
                    );
                }
            } else {
                names.insert(&x.name, &t.name);
            }
            for (k, a) in x.addresses.iter().enumerate() {
                let Some((ip, port)) = parse_trunk_address(a) else {
                    continue;
                };
                let clash = addrs.iter().find(|(oip, oport, _, _)| {
                    *oip == ip && (oport.is_none() || port.is_none() || *oport == port)
                });
                match clash {
                    Some((_, _, tenant, trunk)) if *trunk != x.name || *tenant != t.name => bad(
                        out,
                        format!("{}.addresses[{k}]", key_of(i, j)),
                        format!(
                            "{a:?} is already an address of trunk {trunk:?} (tenant {tenant:?})"
                        ),
                    ),
                    Some(_) => bad(
                        out,
                        format!("{}.addresses[{k}]", key_of(i, j)),
                        format!("{a:?} is listed twice"),
                    ),
                    None => addrs.push((ip, port, &t.name, &x.name)),
                }
            }
        }
    }
}
