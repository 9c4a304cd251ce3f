//! The seam through which roles plug into the binary.
//!
//! A role is anything implementing [`Role`]; any `Fn(RoleContext) -> impl Future<Output =
//! anyhow::Result<RoleHandle>>` does. The supervisor ([`crate::run`]) starts the requested roles
//! one after the other, in the order of [`RoleKind`], then marks the process ready.
//!
//! Contract for a role:
//! * `start` binds its sockets, adds its HTTP routes with [`RoleContext::add_routes`], spawns its
//!   tasks and returns a [`RoleHandle`] with the addresses it bound. An error aborts startup.
//! * The task in the handle runs until [`RoleContext::drain`] is cancelled; then the role stops
//!   taking new transactions, finishes the open ones and returns `Ok(())`. The supervisor waits
//!   at most `drain.grace_ms` for that.
//! * A task that ends before the drain (with `Ok` or `Err`, or by panicking) is a failure: the
//!   supervisor drains the other roles and the process exits non-zero.
//!
//! Crates below the binary (e.g. `switchboard-services`) do not need to depend on this one:
//! their start functions can take `Arc<Config>` and a `CancellationToken` and return a router,
//! addresses and a `JoinHandle`; a closure here adapts them.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};

use axum::Router;
use switchboard_config::Config;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The roles of the product (see ARCHITECTURE.md). `up` runs all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum RoleKind {
    /// Edge proxy: balances SIP across sip-nodes, relays REGISTER, record-routes.
    SipProxy,
    /// SIP REGISTER with digest authentication; device contacts.
    Registrar,
    /// Media server: RTP, prompts, recording, conferences, VoiceXML. Starts before the SIP
    /// Server, which plays its treatments on it.
    Mcp,
    /// SIP Server: B2BUA call control and the call model.
    SipNode,
    /// Tenant and device resolution for a number, number translation.
    Dialplan,
    /// Tenants, DNs, agents, skills, ... over REST.
    Config,
    /// Runs SCXML routing strategies per call.
    Orchestrator,
    /// Queues, skill-based target selection, agent reservation.
    Routing,
    /// Agent login / ready / not ready / after-call work.
    AgentState,
    /// Call-thread state and user data.
    CallState,
    /// Desktop API: REST + WebSocket event stream.
    FrontEnd,
    /// Mailboxes, deposit and access menus, MWI.
    Voicemail,
}

impl RoleKind {
    /// Every role, in start order.
    pub const ALL: [RoleKind; 12] = [
        RoleKind::SipProxy,
        RoleKind::Registrar,
        RoleKind::Mcp,
        RoleKind::SipNode,
        RoleKind::Dialplan,
        RoleKind::Config,
        RoleKind::Orchestrator,
        RoleKind::Routing,
        RoleKind::AgentState,
        RoleKind::CallState,
        RoleKind::FrontEnd,
        RoleKind::Voicemail,
    ];

    /// The name used on the command line (`sip-proxy`, `agent-state`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RoleKind::SipProxy => "sip-proxy",
            RoleKind::Registrar => "registrar",
            RoleKind::SipNode => "sip-node",
            RoleKind::Dialplan => "dialplan",
            RoleKind::Config => "config",
            RoleKind::Orchestrator => "orchestrator",
            RoleKind::Routing => "routing",
            RoleKind::AgentState => "agent-state",
            RoleKind::CallState => "call-state",
            RoleKind::FrontEnd => "front-end",
            RoleKind::Mcp => "mcp",
            RoleKind::Voicemail => "voicemail",
        }
    }
}

impl fmt::Display for RoleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a role gets when it starts.
#[derive(Clone)]
pub struct RoleContext {
    /// Which role is being started: the first of [`RoleContext::kinds`].
    pub kind: RoleKind,
    /// Every requested kind this implementation serves (see [`Registry::register_many`]),
    /// in start order; never empty.
    pub kinds: Vec<RoleKind>,
    /// The validated configuration, command-line overrides applied.
    pub config: Arc<Config>,
    /// Cancelled when the process starts draining (SIGTERM/SIGINT, or another role failed).
    pub drain: CancellationToken,
    routes: Arc<RwLock<Router>>,
    shared: Shared,
}

impl RoleContext {
    /// Creates a context for `kind`. The supervisor does this; tests of a role may too.
    pub fn new(
        kind: RoleKind,
        config: Arc<Config>,
        drain: CancellationToken,
        routes: Arc<RwLock<Router>>,
        shared: Shared,
    ) -> Self {
        RoleContext {
            kind,
            kinds: vec![kind],
            config,
            drain,
            routes,
            shared,
        }
    }

    /// Sets [`RoleContext::kinds`] (and `kind` to its first element); ignored when empty.
    pub fn with_kinds(mut self, kinds: Vec<RoleKind>) -> Self {
        if let Some(first) = kinds.first() {
            self.kind = *first;
            self.kinds = kinds;
        }
        self
    }

    /// Serves `router`'s routes on the HTTP server (e.g. `GET /v1/registrations`). Apply
    /// `with_state` first. Routes are live as soon as this returns. Panics, like
    /// [`Router::merge`], if a path is already routed: two roles must not claim the same path.
    pub fn add_routes(&self, router: Router) {
        let mut guard = self.routes.write().unwrap_or_else(|e| e.into_inner());
        let current = std::mem::take(&mut *guard);
        *guard = current.merge(router);
    }

    /// State shared by the roles of this process (e.g. the SIP transport or the location
    /// store used by both `registrar` and `sip-proxy`).
    pub fn shared(&self) -> &Shared {
        &self.shared
    }
}

/// The address the process's HTTP server listens on (in [`Shared`] before any role starts),
/// for roles that hand out URLs of their own routes (the orchestrator's built-in documents).
#[derive(Debug, Clone, Copy)]
pub struct HttpAddr(pub SocketAddr);

/// Every role this process runs (in [`Shared`] before any role starts), for a role that
/// serves another's routes over the bus when that one runs elsewhere (the front-end).
#[derive(Debug, Clone)]
pub struct ProcessRoles(pub Vec<RoleKind>);

impl ProcessRoles {
    pub fn runs(&self, kind: RoleKind) -> bool {
        self.0.contains(&kind)
    }
}

/// A type map of values shared by the roles running in one process.
#[derive(Clone, Default)]
pub struct Shared {
    values: Arc<Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>>,
}

impl Shared {
    /// The value of type `T`, created by `init` the first time it is asked for.
    pub fn get_or_init<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Arc<T> {
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        let entry = values
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(init()) as Arc<dyn Any + Send + Sync>)
            .clone();
        drop(values);
        match entry.downcast::<T>() {
            Ok(value) => value,
            // The map is keyed by TypeId, so the entry for T always holds a T.
            Err(_) => unreachable!("Shared entry of the wrong type"),
        }
    }

    /// The value of type `T`, if some role created it.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        values.get(&TypeId::of::<T>())?.clone().downcast::<T>().ok()
    }
}

/// What a started role gives back.
#[derive(Debug, Default)]
pub struct RoleHandle {
    pub(crate) task: Option<JoinHandle<anyhow::Result<()>>>,
    pub(crate) bound: Vec<(String, SocketAddr)>,
}

impl RoleHandle {
    /// A role with no task of its own (its work happens in routes or shared state). It counts
    /// as finished as soon as the drain starts.
    pub fn idle() -> Self {
        RoleHandle::default()
    }

    /// A role whose work runs in `task`; the task must return once the drain is finished.
    pub fn from_task(task: JoinHandle<anyhow::Result<()>>) -> Self {
        RoleHandle {
            task: Some(task),
            bound: Vec::new(),
        }
    }

    /// Spawns `future` on the runtime as the role's task.
    pub fn spawn(future: impl Future<Output = anyhow::Result<()>> + Send + 'static) -> Self {
        RoleHandle::from_task(tokio::spawn(future))
    }

    /// Reports a bound address for the startup line `listening http=... <key>=<addr>`.
    /// Keys in use: `sip_udp`, `sip_tcp`, `sip_node_udp`, `mcp_udp`, `mcp_tcp`; keys are `[a-z0-9_]+`.
    pub fn bound(mut self, key: impl Into<String>, addr: SocketAddr) -> Self {
        self.bound.push((key.into(), addr));
        self
    }
}

/// A boxed start future.
pub type StartFuture = Pin<Box<dyn Future<Output = anyhow::Result<RoleHandle>> + Send>>;

/// Something that can start a role.
pub trait Role: Send + Sync {
    /// Starts the role; see the module documentation for the contract.
    fn start(&self, ctx: RoleContext) -> StartFuture;
}

impl<F, Fut> Role for F
where
    F: Fn(RoleContext) -> Fut + Send + Sync,
    Fut: Future<Output = anyhow::Result<RoleHandle>> + Send + 'static,
{
    fn start(&self, ctx: RoleContext) -> StartFuture {
        Box::pin(self(ctx))
    }
}

/// The role implementations compiled into this binary.
#[derive(Default)]
pub struct Registry {
    roles: HashMap<RoleKind, Arc<dyn Role>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// The implementations shipped in this build (see `builtin.rs`); `up` says in its log
    /// which roles have none yet.
    pub fn builtin() -> Self {
        crate::builtin::registry()
    }

    /// Adds (or replaces) the implementation of `kind`.
    pub fn register(&mut self, kind: RoleKind, role: impl Role + 'static) -> &mut Self {
        self.roles.insert(kind, Arc::new(role));
        self
    }

    /// One implementation serving several kinds, e.g. the SIP edge for `sip-proxy` and
    /// `registrar`: it is started once when any of them is requested, with all the requested
    /// ones in [`RoleContext::kinds`].
    pub fn register_many(&mut self, kinds: &[RoleKind], role: impl Role + 'static) -> &mut Self {
        let role: Arc<dyn Role> = Arc::new(role);
        for kind in kinds {
            self.roles.insert(*kind, role.clone());
        }
        self
    }

    /// The implementation of `kind`, if any.
    pub fn get(&self, kind: RoleKind) -> Option<Arc<dyn Role>> {
        self.roles.get(&kind).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn names_match_clap() {
        for kind in RoleKind::ALL {
            let value = kind.to_possible_value().map(|v| v.get_name().to_owned());
            assert_eq!(value.as_deref(), Some(kind.as_str()));
        }
        assert_eq!(RoleKind::value_variants().len(), RoleKind::ALL.len());
    }

    #[test]
    fn shared_is_a_type_map() {
        let shared = Shared::default();
        assert!(shared.get::<u32>().is_none());
        let a = shared.get_or_init(|| 7u32);
        let b = shared.get_or_init(|| 9u32);
        assert_eq!((*a, *b), (7, 7));
        assert_eq!(shared.get::<u32>().map(|v| *v), Some(7));
    }
}
