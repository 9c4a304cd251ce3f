//! Switchboard's configuration: one TOML file, every key optional.
//!
//! * [`Config::from_toml_str`] parses and validates text; [`Config::load`] reads a file;
//!   [`Config::demo`] is the built-in demo (tenant `demo`, users 1001..=1010, password `secret`,
//!   everything on 127.0.0.1).
//! * Unknown keys are errors everywhere (`deny_unknown_fields`).
//! * Every error names the key path (`sip.udp`, `tenants[0].users[3].password`) and, for text,
//!   the line and column: see [`ConfigError`] and [`Problem`].
//!
//! The annotated reference file is [`EXAMPLE_TOML`] (`switchboard.example.toml` in this crate),
//! which parses to exactly [`Config::demo`].

mod entities;
mod error;
mod keys;
mod locate;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub use entities::{
    compile_regex, is_digits, is_login_id, is_name, is_number, is_strategy_url,
    parse_trunk_address, Agent, AgentGroup, DialRule, DidRange, Dn, DnKind, Mailbox, Replace,
    RoutePoint, RulePattern, RuleRoute, RuleScope, Skill, Trunk,
};
pub use error::{ConfigError, Problem};
pub use keys::{ApiKey, HttpAuth, KeyRole, MIN_KEY_LEN};
use locate::Locator;

/// The annotated example configuration; it is the built-in demo ([`Config::demo`]).
pub const EXAMPLE_TOML: &str = include_str!("../switchboard.example.toml");

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[sip]`: listen addresses, domain, timers.
    pub sip: SipConfig,
    /// `[http]`: the HTTP server (health, metrics, REST).
    pub http: HttpConfig,
    /// `[registrar]`: REGISTER handling and digest authentication.
    pub registrar: RegistrarConfig,
    /// `[proxy]`: the edge proxy and its routes to downstream nodes.
    pub proxy: ProxyConfig,
    /// `[drain]`: graceful shutdown.
    pub drain: DrainConfig,
    /// Directory of the data files (the config store, the embedded bus). Default `./data`.
    /// A relative path is relative to the directory of the configuration file when the
    /// configuration was loaded with [`Config::load`], else to the current directory.
    pub data_dir: PathBuf,
    /// `[store]`: the configuration store (tenants, DNs, agents, ...).
    pub store: StoreConfig,
    /// `[bus]`: the event bus and shared state backend.
    pub bus: BusConfig,
    /// `[sip_node]`: the SIP Server (B2BUA call control).
    pub sip_node: SipNodeConfig,
    /// `[mcp]`: the media server (RTP, prompts, recording, conferences, announcements).
    pub mcp: McpConfig,
    /// `[routing]`: queues and agent reservation (the `routing` role).
    pub routing: RoutingConfig,
    /// `[orchestrator]`: the SCXML strategy runner.
    pub orchestrator: OrchestratorConfig,
    /// `[voicemail]`: where messages are kept and how sip-node reaches the menus.
    pub voicemail: VoicemailConfig,
    /// `[[tenants]]`: tenants and their SIP users. Empty by default.
    pub tenants: Vec<Tenant>,
}

/// `[orchestrator]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrchestratorConfig {
    /// Lease of a strategy session (ms): renewed by the node running it; a session whose
    /// node died is taken over by another node once it expires. 100..=600000, default 5000.
    pub lease_ms: u64,
    /// A strategy session older than this ends (its call's end was never reported), s.
    /// At least 1, default 14400 (4 hours).
    pub max_session_s: u64,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            lease_ms: 5000,
            max_session_s: 14_400,
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The SQLite file of the configuration store; relative to `data_dir` unless absolute.
    /// Default `switchboard.db`.
    pub path: PathBuf,
}

/// `[bus]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// Which implementation carries events and shared state. Default `embedded`.
    pub backend: BusBackend,
    /// The SQLite file of the embedded bus; relative to `data_dir` unless absolute.
    /// Default `bus.db`. Used when `backend = "embedded"`.
    pub path: PathBuf,
    /// The Redis server, `redis://` or `rediss://`. Default `redis://127.0.0.1:6379`.
    /// Used when `backend = "redis"`.
    pub redis_url: String,
    /// Retention: stream entries older than this many seconds are removed (events, requests,
    /// replies), once a minute by every process. At least 60. Default 3600.
    pub retention_s: u64,
}

/// The bus implementation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusBackend {
    /// In-process, persisted to SQLite (one process).
    #[default]
    Embedded,
    /// Redis Streams and hashes (several processes).
    Redis,
}

impl BusBackend {
    /// The name used in the configuration (`embedded`, `redis`).
    pub fn as_str(self) -> &'static str {
        match self {
            BusBackend::Embedded => "embedded",
            BusBackend::Redis => "redis",
        }
    }
}

impl fmt::Display for BusBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("switchboard.db"),
        }
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            backend: BusBackend::Embedded,
            path: PathBuf::from("bus.db"),
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            retention_s: 3600,
        }
    }
}

/// The default `data_dir`.
pub const DEFAULT_DATA_DIR: &str = "./data";

/// `[sip]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// UDP listen address; `None` (written `""`) disables UDP. Default `127.0.0.1:5060`.
    #[serde(deserialize_with = "de_optional_addr")]
    pub udp: Option<SocketAddr>,
    /// TCP listen address; `None` (written `""`) disables TCP. Default `127.0.0.1:5060`.
    #[serde(deserialize_with = "de_optional_addr")]
    pub tcp: Option<SocketAddr>,
    /// Our SIP domain, the default realm. Default `switchboard`.
    pub domain: String,
    /// RFC 3261 T1 in milliseconds. Default 500.
    pub t1_ms: u64,
    /// RFC 3261 T2 in milliseconds. Default 4000.
    pub t2_ms: u64,
    /// RFC 3261 T4 in milliseconds. Default 5000.
    pub t4_ms: u64,
    /// Largest SIP message accepted, in bytes. Default 65535.
    pub max_message_bytes: usize,
}

/// `[http]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address of the HTTP server. Default `127.0.0.1:8080`.
    #[serde(deserialize_with = "de_addr")]
    pub listen: SocketAddr,
    /// Whether `/v1/` requests must present an API key. Default `api_keys`.
    pub auth: HttpAuth,
    /// Platform keys: admin of every tenant and of the routes outside `/v1/tenants/{t}`.
    pub admin_keys: Vec<String>,
}

/// `[registrar]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrarConfig {
    /// Smallest Expires accepted (seconds); smaller gets 423. Default 60.
    pub min_expires: u32,
    /// Largest Expires granted (seconds). Default 3600.
    pub max_expires: u32,
    /// Expires granted when the request names none (seconds). Default 3600.
    pub default_expires: u32,
    /// Lifetime of a digest nonce (seconds). Default 300.
    pub nonce_ttl_s: u64,
    /// Digest algorithms offered, in order. Default `["SHA-256", "MD5"]`.
    pub algorithms: Vec<DigestAlgorithm>,
}

/// A digest algorithm (RFC 7616).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum DigestAlgorithm {
    /// `MD5`
    #[serde(rename = "MD5")]
    Md5,
    /// `SHA-256`
    #[serde(rename = "SHA-256")]
    Sha256,
}

impl DigestAlgorithm {
    /// The token used in `WWW-Authenticate: Digest algorithm=...`.
    pub fn as_str(self) -> &'static str {
        match self {
            DigestAlgorithm::Md5 => "MD5",
            DigestAlgorithm::Sha256 => "SHA-256",
        }
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[sip_node]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipNodeConfig {
    /// UDP listen address of the SIP Server. Default `127.0.0.1:5070`; port 0 picks a free port.
    #[serde(deserialize_with = "de_addr")]
    pub udp: SocketAddr,
    /// Where legs to DNs are sent (the SIP edge). Default: `sip.udp`.
    #[serde(deserialize_with = "de_optional_addr")]
    pub edge: Option<SocketAddr>,
    /// Trunk gateways (IP:port): INVITEs from them are inbound calls; external numbers are
    /// dialled through the first. Empty by default (no external calls).
    #[serde(deserialize_with = "de_addrs")]
    pub trunks: Vec<SocketAddr>,
    /// Ring-no-answer timeout in milliseconds. Default 30000.
    pub ring_timeout_ms: u64,
    /// How long a call waits at a route point for a routing decision (RouteCall) before it
    /// takes the route point's default route, in milliseconds, unless the route point sets
    /// its own `timeout_s`. Default 10000.
    pub route_timeout_ms: u64,
    /// The media server (IP:port) treatments are played on. Default: the bound `mcp.udp` of
    /// this process when it runs the `mcp` role, else none (treatments then fail).
    #[serde(deserialize_with = "de_optional_addr")]
    pub mcp: Option<SocketAddr>,
}

impl Default for SipNodeConfig {
    fn default() -> Self {
        SipNodeConfig {
            udp: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5070),
            edge: None,
            trunks: Vec::new(),
            ring_timeout_ms: 30_000,
            route_timeout_ms: 10_000,
            mcp: None,
        }
    }
}

/// `[routing]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// How long an agent stays reserved for a call that was given the agent as target, until
    /// the agent's DN rings, in milliseconds (1..=600000). Default 10000.
    pub reservation_timeout_ms: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            reservation_timeout_ms: 10_000,
        }
    }
}

/// `[mcp]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpConfig {
    /// SIP UDP listen address of the media server. Default `127.0.0.1:5080`; port 0 picks a
    /// free port.
    #[serde(deserialize_with = "de_addr")]
    pub udp: SocketAddr,
    /// SIP TCP listen address; `""` (the default) disables TCP.
    #[serde(deserialize_with = "de_optional_addr")]
    pub tcp: Option<SocketAddr>,
    /// Address RTP sockets bind to and that goes into SDP. Default `127.0.0.1`.
    pub rtp_ip: std::net::IpAddr,
    /// Inclusive RTP port range (even ports are used). Default 20000..=29999.
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    /// Pacing worker threads (each drives its streams every 20 ms). Default 1.
    pub workers: u16,
    /// Directory of `file:` prompts; relative to `data_dir` unless absolute. Default `media`.
    pub media_dir: PathBuf,
    /// Directory recordings are written to; relative to `data_dir` unless absolute.
    /// Default `recordings`.
    pub recordings_dir: PathBuf,
    /// What is played when a prompt cannot be loaded (an unreachable URL, a broken file).
    /// Default `tone:440/500`.
    pub fallback_prompt: String,
    /// The TTS program and its arguments (`{voice}`, `{out}`, `{text}` are replaced; without
    /// `{text}` the text goes to standard input). Default espeak-ng.
    pub tts_command: Vec<String>,
    /// Default TTS voice. Default `en`.
    pub tts_voice: String,
    /// Timeout of HTTP prompt fetches and of the TTS program, ms. Default 10000.
    pub fetch_timeout_ms: u64,
    /// PEM file of certificates trusted for `https://` documents and audio besides the
    /// webpki (Mozilla) roots; relative to `data_dir` unless absolute. `""` (the default):
    /// none.
    pub extra_ca_file: PathBuf,
    /// Hang up a call that sent no RTP for this long, s; 0 never does. Default 60.
    pub rtp_timeout_s: u64,
    /// Longest recording, s. Default 300.
    pub max_record_s: u32,
    /// `SCHED_FIFO` priority (1..=99) of the media pacing threads; 0 (the default) keeps the
    /// normal scheduling policy.
    pub realtime_priority: u8,
    /// Where VoiceXML bridge and consultation transfers to `tel:` numbers go (IP:port, as
    /// `sip:NUMBER@gateway`). `""` (the default) means the SIP edge of this process when it
    /// runs one, else `tel:` transfers fail (`error.connection.baddestination`).
    #[serde(deserialize_with = "de_optional_addr")]
    pub transfer_gateway: Option<SocketAddr>,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            udp: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5080),
            tcp: None,
            rtp_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            rtp_port_min: 20000,
            rtp_port_max: 29999,
            workers: 1,
            media_dir: PathBuf::from("media"),
            recordings_dir: PathBuf::from("recordings"),
            fallback_prompt: "tone:440/500".to_owned(),
            tts_command: ["espeak-ng", "-v", "{voice}", "-w", "{out}", "--stdin"]
                .map(String::from)
                .to_vec(),
            tts_voice: "en".to_owned(),
            fetch_timeout_ms: 10_000,
            extra_ca_file: PathBuf::new(),
            rtp_timeout_s: 60,
            max_record_s: 300,
            transfer_gateway: None,
            realtime_priority: 0,
        }
    }
}

/// `[voicemail]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VoicemailConfig {
    /// Directory of the messages' audio (one WAV per message); relative to `data_dir` unless
    /// absolute. Default `voicemail`.
    pub dir: PathBuf,
    /// The media server that runs the deposit and access menus (its SIP UDP address). `""`
    /// (the default): `sip_node.mcp`, else the `mcp` role of this process.
    #[serde(deserialize_with = "de_optional_addr")]
    pub mcp: Option<SocketAddr>,
    /// The base URL (`http://host:port`) of the `voicemail` role's HTTP server, as the media
    /// server fetches the menus from it. `""` (the default): this process's `http.listen`.
    pub url: String,
    /// SIP UDP address of the message-waiting server (NOTIFY out, SUBSCRIBE in). Default
    /// `127.0.0.1:0`: any free port, since the SIP edge of the same process learns it and
    /// sends SUBSCRIBEs there; `""` turns message waiting off.
    #[serde(deserialize_with = "de_optional_addr")]
    pub udp: Option<SocketAddr>,
}

impl Default for VoicemailConfig {
    fn default() -> Self {
        VoicemailConfig {
            dir: PathBuf::from("voicemail"),
            mcp: None,
            url: String::new(),
            udp: Some(SocketAddr::new(
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                0,
            )),
        }
    }
}

/// `[proxy]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Insert Record-Route. Default true.
    pub record_route: bool,
    /// OPTIONS ping interval per downstream node (ms). Default 5000.
    pub health_interval_ms: u64,
    /// Time after which an unanswering node fails over (ms). Default 4000.
    pub node_timeout_ms: u64,
    /// `[[proxy.routes]]`: prefix routes. Empty by default.
    pub routes: Vec<Route>,
}

/// `[[proxy.routes]]`: calls to a user starting with `prefix` go to `nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Prefix of the called user; `""` matches every user. Required.
    pub prefix: String,
    /// Downstream nodes (IP:port), in failover order; at least one. Required.
    #[serde(deserialize_with = "de_addrs")]
    pub nodes: Vec<SocketAddr>,
}

/// `[drain]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// Upper bound for finishing open transactions after SIGTERM (ms). Default 10000.
    pub grace_ms: u64,
}

/// `[[tenants]]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Unique name. Required.
    pub name: String,
    /// SIP domain (realm) of the users. Optional in the file: defaults to `sip.domain`.
    #[serde(default)]
    pub domain: String,
    /// `[[tenants.users]]`
    #[serde(default)]
    pub users: Vec<User>,
    /// `[[tenants.skills]]`
    #[serde(default)]
    pub skills: Vec<Skill>,
    /// `[[tenants.agent_groups]]`
    #[serde(default)]
    pub agent_groups: Vec<AgentGroup>,
    /// `[[tenants.dns]]`
    #[serde(default)]
    pub dns: Vec<Dn>,
    /// `[[tenants.agents]]`
    #[serde(default)]
    pub agents: Vec<Agent>,
    /// `[[tenants.route_points]]`
    #[serde(default)]
    pub route_points: Vec<RoutePoint>,
    /// `[[tenants.trunks]]`
    #[serde(default)]
    pub trunks: Vec<Trunk>,
    /// `[[tenants.dialplan]]`
    #[serde(default)]
    pub dialplan: Vec<DialRule>,
    /// `[[tenants.mailboxes]]`
    #[serde(default)]
    pub mailboxes: Vec<Mailbox>,
    /// `[[tenants.api_keys]]`: keys of the REST API and event stream (kept in the file only).
    #[serde(default)]
    pub api_keys: Vec<ApiKey>,
}

impl Tenant {
    /// A tenant with no users and no entities.
    pub fn new(name: impl Into<String>, domain: impl Into<String>) -> Tenant {
        Tenant {
            name: name.into(),
            domain: domain.into(),
            users: Vec::new(),
            skills: Vec::new(),
            agent_groups: Vec::new(),
            dns: Vec::new(),
            agents: Vec::new(),
            route_points: Vec::new(),
            trunks: Vec::new(),
            dialplan: Vec::new(),
            mailboxes: Vec::new(),
            api_keys: Vec::new(),
        }
    }
}

/// `[[tenants.users]]`: a SIP user with digest credentials.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// User part of the address of record (`1001` in `sip:1001@switchboard`). Required.
    pub user: String,
    /// Digest password. Required, not empty.
    pub password: String,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

const LOCALHOST_SIP: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5060);

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            udp: Some(LOCALHOST_SIP),
            tcp: Some(LOCALHOST_SIP),
            domain: "switchboard".to_owned(),
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
            max_message_bytes: 65535,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080),
            auth: HttpAuth::ApiKeys,
            admin_keys: Vec::new(),
        }
    }
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            nonce_ttl_s: 300,
            algorithms: vec![DigestAlgorithm::Sha256, DigestAlgorithm::Md5],
        }
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            record_route: true,
            health_interval_ms: 5000,
            node_timeout_ms: 4000,
            routes: Vec::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sip: SipConfig::default(),
            http: HttpConfig::default(),
            registrar: RegistrarConfig::default(),
            proxy: ProxyConfig::default(),
            drain: DrainConfig::default(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            store: StoreConfig::default(),
            bus: BusConfig::default(),
            sip_node: SipNodeConfig::default(),
            mcp: McpConfig::default(),
            routing: RoutingConfig::default(),
            orchestrator: OrchestratorConfig::default(),
            voicemail: VoicemailConfig::default(),
            tenants: Vec::new(),
        }
    }
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig { grace_ms: 10_000 }
    }
}

impl SipConfig {
    /// T1 as a duration.
    pub fn t1(&self) -> Duration {
        Duration::from_millis(self.t1_ms)
    }
    /// T2 as a duration.
    pub fn t2(&self) -> Duration {
        Duration::from_millis(self.t2_ms)
    }
    /// T4 as a duration.
    pub fn t4(&self) -> Duration {
        Duration::from_millis(self.t4_ms)
    }
}

impl ProxyConfig {
    /// The route with the longest prefix matching `user`, if any.
    pub fn route_for(&self, user: &str) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|r| user.starts_with(&r.prefix))
            .max_by_key(|r| r.prefix.len())
    }
}

impl Config {
    /// The built-in demo, a small contact center: tenant `demo` in domain `switchboard` with
    /// SIP users `1001`..=`1010` (password `secret`) on extension DNs of the same numbers,
    /// agents `a1001`..=`a1010` on them (skills `sales`, `support`, `english`, `spanish`;
    /// groups `sales` and `support`), route point `5000` (strategy `builtin:demo-strategy`),
    /// queue `6000`, voicemail access `7000`, group mailboxes `8100` and `8200`, trunk
    /// `carrier` from 127.0.0.1 whose DIDs +15550000000..=+15550009999 reach route point 5000,
    /// and dial-plan rules for outbound calls (`9` + 10 digits, `00` international) and the
    /// operator (`0`). SIP on 127.0.0.1:5060 UDP and TCP, HTTP on 127.0.0.1:8080.
    pub fn demo() -> Config {
        let mut t = Tenant::new("demo", "switchboard");
        t.users = (1001..=1010)
            .map(|n| User {
                user: n.to_string(),
                password: "secret".to_owned(),
            })
            .collect();
        t.skills = [
            ("sales", "Sells plans and upgrades"),
            ("support", "Solves technical problems"),
            ("english", "Speaks English"),
            ("spanish", "Speaks Spanish"),
        ]
        .iter()
        .map(|(name, description)| Skill {
            name: (*name).to_owned(),
            description: (*description).to_owned(),
        })
        .collect();
        t.agent_groups = [("sales", "Sales team"), ("support", "Support team")]
            .iter()
            .map(|(name, description)| AgentGroup {
                name: (*name).to_owned(),
                description: (*description).to_owned(),
                after_call_work_s: 0,
            })
            .collect();
        t.dns = (1001..=1010)
            .map(|n| {
                let mut dn = Dn::new(n.to_string(), DnKind::Extension);
                dn.name = format!("Desk {n}");
                dn
            })
            .collect();
        let mut main = Dn::new("5000", DnKind::RoutePoint);
        main.name = "Main line".to_owned();
        let mut queue = Dn::new("6000", DnKind::Queue);
        queue.name = "Sales queue".to_owned();
        queue.agent_group = Some("sales".to_owned());
        queue.mailbox = Some("8100".to_owned());
        let mut vm = Dn::new("7000", DnKind::VoicemailAccess);
        vm.name = "Voicemail".to_owned();
        t.dns.extend([main, queue, vm]);
        // a1001..a1005 sell, a1006..a1010 support; every third also speaks Spanish.
        t.agents = (1001..=1010)
            .map(|n: u32| {
                let team = if n <= 1005 { "sales" } else { "support" };
                let mut skills = std::collections::BTreeMap::new();
                skills.insert(team.to_owned(), 5 + n % 5);
                skills.insert("english".to_owned(), 10);
                if n % 3 == 0 {
                    skills.insert("spanish".to_owned(), 8);
                }
                Agent {
                    login_id: format!("a{n}"),
                    name: format!("Agent {n}"),
                    dn: Some(n.to_string()),
                    skills,
                    groups: vec![team.to_owned()],
                }
            })
            .collect();
        t.route_points = vec![RoutePoint {
            number: "5000".to_owned(),
            strategy_url: "builtin:demo-strategy".to_owned(),
            description: "Inbound calls: IVR, then the sales queue".to_owned(),
            default_route: None,
            timeout_s: None,
        }];
        t.trunks = vec![Trunk {
            name: "carrier".to_owned(),
            addresses: vec!["127.0.0.1".to_owned()],
            dids: vec![DidRange {
                first: "+15550000000".to_owned(),
                last: "+15550009999".to_owned(),
                target: Some("5000".to_owned()),
            }],
        }];
        t.dialplan = vec![
            DialRule {
                name: "operator".to_owned(),
                priority: 10,
                applies_to: RuleScope::Internal,
                exact: None,
                prefix: None,
                range: None,
                regex: Some("^0$".to_owned()),
                strip: 1,
                replace: None,
                add_prefix: "5000".to_owned(),
                route: RuleRoute::Local,
                trunk: None,
            },
            DialRule {
                name: "international".to_owned(),
                priority: 20,
                applies_to: RuleScope::Internal,
                exact: None,
                prefix: Some("00".to_owned()),
                range: None,
                regex: None,
                strip: 0,
                replace: Some(Replace {
                    regex: "^00".to_owned(),
                    with: "+".to_owned(),
                }),
                add_prefix: String::new(),
                route: RuleRoute::External,
                trunk: Some("carrier".to_owned()),
            },
            DialRule {
                name: "national".to_owned(),
                priority: 30,
                applies_to: RuleScope::Internal,
                exact: None,
                prefix: None,
                range: None,
                regex: Some("^9[2-9][0-9]{9}$".to_owned()),
                strip: 1,
                replace: None,
                add_prefix: "+1".to_owned(),
                route: RuleRoute::External,
                trunk: Some("carrier".to_owned()),
            },
        ];
        t.mailboxes = vec![
            Mailbox {
                owner_group: Some("sales".to_owned()),
                ..Mailbox::new("8100", "1234")
            },
            Mailbox {
                owner_group: Some("support".to_owned()),
                ..Mailbox::new("8200", "1234")
            },
        ];
        // Demo keys, printed in the README: change them before the API leaves the machine.
        let key = |name: &str, key: &str, role: KeyRole, agent: Option<&str>| ApiKey {
            name: name.to_owned(),
            key: key.to_owned(),
            role,
            agent: agent.map(str::to_owned),
        };
        t.api_keys = vec![
            key(
                "demo-admin",
                "demo-admin-key-change-me",
                KeyRole::Admin,
                None,
            ),
            key(
                "demo-supervisor",
                "demo-supervisor-key-change-me",
                KeyRole::Supervisor,
                None,
            ),
            key(
                "a1001",
                "demo-agent-a1001-key",
                KeyRole::Agent,
                Some("a1001"),
            ),
            key(
                "a1006",
                "demo-agent-a1006-key",
                KeyRole::Agent,
                Some("a1006"),
            ),
        ];
        let mut config = Config {
            tenants: vec![t],
            ..Config::default()
        };
        config.http.admin_keys = vec!["demo-platform-key-change-me".to_owned()];
        // SIPp answers only the first challenge and knows only MD5; baresip 1.0 (libre)
        // refuses a 401 that offers any algorithm it does not know. The demo is loopback only.
        config.registrar.algorithms = vec![DigestAlgorithm::Md5];
        config
    }

    /// Parses and validates TOML text.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let locator = Locator::new(text);
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let mut problem = Problem {
                key: None,
                line: None,
                column: None,
                message: e.message().trim().to_owned(),
            };
            if let Some(span) = e.span() {
                let at = locator.line_col(span.start);
                problem.line = Some(at.line);
                problem.column = Some(at.column);
                problem.key = locator.key_at(span.start);
            }
            ConfigError::Invalid {
                file: None,
                problems: vec![problem],
            }
        })?;
        for (i, tenant) in config.tenants.iter_mut().enumerate() {
            if !locator.contains(&format!("tenants[{i}].domain")) {
                tenant.domain = config.sip.domain.clone();
            }
        }
        config.check(Some(&locator))?;
        Ok(config)
    }

    /// Reads, parses and validates a TOML file. Errors name the file. A relative `data_dir`
    /// is made relative to the file's directory (see [`Config::data_dir`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::from_toml_str(&text).map_err(|e| e.with_file(path.to_owned()))?;
        if config.data_dir.is_relative() {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                config.data_dir = dir.join(&config.data_dir);
            }
        }
        Ok(config)
    }

    /// The SQLite file of the configuration store: `store.path` under `data_dir`.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join(&self.store.path)
    }

    /// The directory of `file:` prompts: `mcp.media_dir` under `data_dir`.
    pub fn mcp_media_dir(&self) -> PathBuf {
        self.data_dir.join(&self.mcp.media_dir)
    }

    /// The PEM file of `mcp.extra_ca_file` (under `data_dir`), when one is set.
    pub fn mcp_extra_ca_file(&self) -> Option<PathBuf> {
        let f = &self.mcp.extra_ca_file;
        (!f.as_os_str().is_empty()).then(|| self.data_dir.join(f))
    }

    /// Where the media server writes recordings: `mcp.recordings_dir` under `data_dir`.
    pub fn mcp_recordings_dir(&self) -> PathBuf {
        self.data_dir.join(&self.mcp.recordings_dir)
    }

    /// Where voicemail audio is kept: `voicemail.dir` under `data_dir`.
    pub fn voicemail_dir(&self) -> PathBuf {
        self.data_dir.join(&self.voicemail.dir)
    }

    /// The SQLite file of the embedded bus: `bus.path` under `data_dir`.
    pub fn bus_path(&self) -> PathBuf {
        self.data_dir.join(&self.bus.path)
    }

    /// Semantic validation (also run by [`Config::from_toml_str`]). Use it after changing a
    /// configuration in code, e.g. after applying command-line overrides.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(None)
    }

    /// All users of all tenants, with their tenant.
    pub fn users(&self) -> impl Iterator<Item = (&Tenant, &User)> {
        self.tenants
            .iter()
            .flat_map(|t| t.users.iter().map(move |u| (t, u)))
    }

    /// The tenant serving `domain` (case-insensitive).
    pub fn tenant_by_domain(&self, domain: &str) -> Option<&Tenant> {
        self.tenants
            .iter()
            .find(|t| t.domain.eq_ignore_ascii_case(domain))
    }

    fn check(&self, locator: Option<&Locator>) -> Result<(), ConfigError> {
        let mut found = Vec::new();
        validate(self, &mut found);
        if found.is_empty() {
            return Ok(());
        }
        let problems = found
            .into_iter()
            .map(|f| {
                let mut problem = Problem::new(f.key.clone(), f.message);
                if let Some(at) = locator.and_then(|l| l.position_of_nearest(&f.key, f.at_value)) {
                    problem.line = Some(at.line);
                    problem.column = Some(at.column);
                }
                problem
            })
            .collect();
        Err(ConfigError::Invalid {
            file: None,
            problems,
        })
    }
}

/// A semantic problem before it is located in the text.
pub(crate) struct Found {
    pub(crate) key: String,
    /// Point at the value (true) or at the key (false) when locating.
    pub(crate) at_value: bool,
    pub(crate) message: String,
}

pub(crate) fn bad(out: &mut Vec<Found>, key: impl Into<String>, message: impl Into<String>) {
    out.push(Found {
        key: key.into(),
        at_value: true,
        message: message.into(),
    });
}

/// Characters that cannot appear in a SIP user part or domain as we accept them.
fn has_forbidden_char(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '@' | '<' | '>' | '"'))
}

fn validate(c: &Config, out: &mut Vec<Found>) {
    // [sip]
    let sip = &c.sip;
    if sip.domain.is_empty() {
        bad(out, "sip.domain", "must not be empty");
    } else if has_forbidden_char(&sip.domain) {
        bad(
            out,
            "sip.domain",
            format!("{:?} is not a valid SIP domain", sip.domain),
        );
    }
    if sip.t1_ms == 0 {
        bad(out, "sip.t1_ms", "must be at least 1");
    }
    if sip.t2_ms < sip.t1_ms {
        bad(
            out,
            "sip.t2_ms",
            format!("must be at least sip.t1_ms ({} < {})", sip.t2_ms, sip.t1_ms),
        );
    }
    if sip.t4_ms == 0 {
        bad(out, "sip.t4_ms", "must be at least 1");
    }
    if !(1024..=16 * 1024 * 1024).contains(&sip.max_message_bytes) {
        bad(
            out,
            "sip.max_message_bytes",
            format!(
                "must be between 1024 and 16777216, got {}",
                sip.max_message_bytes
            ),
        );
    }
    if let Some(tcp) = sip.tcp {
        if same_listener(tcp, c.http.listen) {
            bad(
                out,
                "http.listen",
                format!("{} is also sip.tcp: both are TCP listeners", c.http.listen),
            );
        }
    }

    // data_dir, [store], [bus]
    if c.data_dir.as_os_str().is_empty() {
        bad(
            out,
            "data_dir",
            "must not be empty (use \".\" for the current directory)",
        );
    }
    if c.store.path.as_os_str().is_empty() {
        bad(out, "store.path", "must not be empty");
    }
    if c.bus.path.as_os_str().is_empty() {
        bad(out, "bus.path", "must not be empty");
    }
    if c.bus.retention_s < 60 {
        bad(out, "bus.retention_s", "must be at least 60");
    }
    if c.bus.backend == BusBackend::Redis || c.bus.redis_url != BusConfig::default().redis_url {
        let url = c.bus.redis_url.as_str();
        let rest = url
            .strip_prefix("redis://")
            .or_else(|| url.strip_prefix("rediss://"))
            .or_else(|| url.strip_prefix("redis+unix://"))
            .or_else(|| url.strip_prefix("unix://"));
        if rest.map_or(true, str::is_empty) || url.chars().any(char::is_whitespace) {
            bad(
                out,
                "bus.redis_url",
                format!("{url:?} is not a Redis URL: expected redis://host:port, rediss://host:port or unix:///path"),
            );
        }
    }

    // [voicemail]
    if c.voicemail.dir.as_os_str().is_empty() {
        bad(out, "voicemail.dir", "must not be empty");
    }
    let url = c.voicemail.url.as_str();
    let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
    if !url.is_empty() && (!scheme_ok || url.chars().any(|ch| ch.is_whitespace() || ch == '?')) {
        bad(
            out,
            "voicemail.url",
            format!("{url:?} is not a base URL: expected http://host:port or https://host:port"),
        );
    }

    // [mcp]
    let m = &c.mcp;
    if m.rtp_port_min == 0 || m.rtp_port_min > m.rtp_port_max {
        bad(
            out,
            "mcp.rtp_port_min",
            format!(
                "must be at least 1 and not above mcp.rtp_port_max ({} > {})",
                m.rtp_port_min, m.rtp_port_max
            ),
        );
    } else if m.rtp_port_max - m.rtp_port_min < 1 {
        bad(
            out,
            "mcp.rtp_port_max",
            "the range must hold at least one even port",
        );
    }
    if !(1..=64).contains(&m.workers) {
        bad(out, "mcp.workers", "must be between 1 and 64");
    }
    if !m.tts_command.first().is_some_and(|p| !p.trim().is_empty()) {
        bad(out, "mcp.tts_command", "must name a program");
    }
    if m.fetch_timeout_ms == 0 {
        bad(out, "mcp.fetch_timeout_ms", "must be at least 1");
    }
    if m.max_record_s == 0 {
        bad(out, "mcp.max_record_s", "must be at least 1");
    }
    if m.realtime_priority > 99 {
        bad(
            out,
            "mcp.realtime_priority",
            "must be between 0 (off) and 99",
        );
    }
    if m.fallback_prompt.trim().is_empty() {
        bad(out, "mcp.fallback_prompt", "must not be empty");
    }

    // [routing]
    if !(1..=600_000).contains(&c.routing.reservation_timeout_ms) {
        bad(
            out,
            "routing.reservation_timeout_ms",
            "must be between 1 and 600000",
        );
    }

    // [sip_node]
    if c.sip_node.ring_timeout_ms == 0 {
        bad(out, "sip_node.ring_timeout_ms", "must be at least 1");
    }
    if !(100..=600_000).contains(&c.orchestrator.lease_ms) {
        bad(
            out,
            "orchestrator.lease_ms",
            "must be between 100 and 600000",
        );
    }
    if c.orchestrator.max_session_s == 0 {
        bad(out, "orchestrator.max_session_s", "must be at least 1");
    }
    if c.sip_node.route_timeout_ms == 0 {
        bad(out, "sip_node.route_timeout_ms", "must be at least 1");
    }
    for (i, t) in c.sip_node.trunks.iter().enumerate() {
        if t.port() == 0 {
            bad(
                out,
                format!("sip_node.trunks[{i}]"),
                "a trunk needs a port other than 0",
            );
        }
    }

    // [registrar]
    let r = &c.registrar;
    if r.min_expires == 0 {
        bad(out, "registrar.min_expires", "must be at least 1");
    }
    if r.min_expires > r.max_expires {
        bad(
            out,
            "registrar.min_expires",
            format!(
                "must not exceed registrar.max_expires ({} > {})",
                r.min_expires, r.max_expires
            ),
        );
    } else if !(r.min_expires..=r.max_expires).contains(&r.default_expires) {
        bad(
            out,
            "registrar.default_expires",
            format!(
                "must be between registrar.min_expires and registrar.max_expires ({}..={}), got {}",
                r.min_expires, r.max_expires, r.default_expires
            ),
        );
    }
    if r.nonce_ttl_s == 0 {
        bad(out, "registrar.nonce_ttl_s", "must be at least 1");
    }
    if r.algorithms.is_empty() {
        bad(
            out,
            "registrar.algorithms",
            "must offer at least one algorithm (\"SHA-256\", \"MD5\")",
        );
    }
    let mut seen_alg = HashSet::new();
    for (i, alg) in r.algorithms.iter().enumerate() {
        if !seen_alg.insert(*alg) {
            bad(
                out,
                format!("registrar.algorithms[{i}]"),
                format!("{alg} is listed twice"),
            );
        }
    }

    // [proxy]
    let p = &c.proxy;
    if p.health_interval_ms == 0 {
        bad(out, "proxy.health_interval_ms", "must be at least 1");
    }
    if p.node_timeout_ms == 0 {
        bad(out, "proxy.node_timeout_ms", "must be at least 1");
    }
    let mut seen_prefix = HashSet::new();
    for (i, route) in p.routes.iter().enumerate() {
        if has_forbidden_char(&route.prefix) {
            bad(
                out,
                format!("proxy.routes[{i}].prefix"),
                format!("{:?} is not a valid user prefix", route.prefix),
            );
        }
        if !seen_prefix.insert(route.prefix.as_str()) {
            bad(
                out,
                format!("proxy.routes[{i}].prefix"),
                format!("prefix {:?} has another route already", route.prefix),
            );
        }
        if route.nodes.is_empty() {
            bad(
                out,
                format!("proxy.routes[{i}].nodes"),
                "a route needs at least one node",
            );
        }
        let mut seen_node = HashSet::new();
        for (j, node) in route.nodes.iter().enumerate() {
            if !seen_node.insert(*node) {
                bad(
                    out,
                    format!("proxy.routes[{i}].nodes[{j}]"),
                    format!("node {node} is listed twice"),
                );
            }
            if node.port() == 0 {
                bad(
                    out,
                    format!("proxy.routes[{i}].nodes[{j}]"),
                    "a node needs a port other than 0",
                );
            }
        }
    }

    // [[tenants]]
    let mut seen_tenant = HashSet::new();
    let mut seen_domain = HashSet::new();
    for (i, t) in c.tenants.iter().enumerate() {
        if t.name.is_empty() {
            bad(out, format!("tenants[{i}].name"), "must not be empty");
        } else if !seen_tenant.insert(t.name.as_str()) {
            bad(
                out,
                format!("tenants[{i}].name"),
                format!("tenant {:?} is defined twice", t.name),
            );
        }
        if t.domain.is_empty() {
            bad(out, format!("tenants[{i}].domain"), "must not be empty");
        } else if has_forbidden_char(&t.domain) {
            bad(
                out,
                format!("tenants[{i}].domain"),
                format!("{:?} is not a valid SIP domain", t.domain),
            );
        } else if !seen_domain.insert(t.domain.to_ascii_lowercase()) {
            bad(
                out,
                format!("tenants[{i}].domain"),
                format!("domain {:?} already belongs to another tenant", t.domain),
            );
        }
        let mut seen_user = HashSet::new();
        for (j, u) in t.users.iter().enumerate() {
            let key = format!("tenants[{i}].users[{j}]");
            if u.user.is_empty() {
                bad(out, format!("{key}.user"), "must not be empty");
            } else if has_forbidden_char(&u.user) || u.user.contains(':') {
                bad(
                    out,
                    format!("{key}.user"),
                    format!("{:?} is not a valid SIP user", u.user),
                );
            } else if !seen_user.insert(u.user.as_str()) {
                bad(
                    out,
                    format!("{key}.user"),
                    format!("user {:?} is defined twice in tenant {:?}", u.user, t.name),
                );
            }
            if u.password.is_empty() {
                bad(out, format!("{key}.password"), "must not be empty");
            }
        }
        entities::validate_entities(t, &format!("tenants[{i}]."), out);
    }
    entities::validate_across_tenants(&c.tenants, |i, j| format!("tenants[{i}].trunks[{j}]"), out);
    keys::validate(c, out);
}

/// Whether two TCP listen addresses would collide.
fn same_listener(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("{s:?} is not a socket address: expected IP:port such as \"127.0.0.1:5060\" or \"[::1]:5060\"")
    })
}

/// Parses addresses inside the deserializer's visitor, so that `toml` attaches the value's
/// span to the error.
struct AddrVisitor {
    allow_empty: bool,
}

impl serde::de::Visitor<'_> for AddrVisitor {
    type Value = Option<SocketAddr>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.allow_empty {
            f.write_str("a socket address string such as \"127.0.0.1:5060\", or \"\" to disable")
        } else {
            f.write_str("a socket address string such as \"127.0.0.1:5060\"")
        }
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
        if self.allow_empty && s.trim().is_empty() {
            return Ok(None);
        }
        parse_addr(s).map(Some).map_err(E::custom)
    }
}

fn de_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    d.deserialize_str(AddrVisitor { allow_empty: false })?
        .ok_or_else(|| serde::de::Error::custom("a socket address is required here"))
}

fn de_optional_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    d.deserialize_str(AddrVisitor { allow_empty: true })
}

/// One address of a list, deserialized on its own so that errors point at the element.
struct Addr(SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_addr(d).map(Addr)
    }
}

fn de_addrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    let list = Vec::<Addr>::deserialize(d)?;
    Ok(list.into_iter().map(|a| a.0).collect())
}

#[cfg(test)]
mod tests;
