//! One embedding of QuickJS (through `rquickjs`) shared by the SCXML and VoiceXML interpreters.
//!
//! An [`Engine`] is one JavaScript runtime + context, owned by one session. It offers:
//! - evaluation of expressions ([`Engine::eval_json`], [`Engine::eval_bool`], [`Engine::eval_string`])
//!   and of scripts ([`Engine::run_script`]) in the global scope;
//! - scopes as chained objects ([`Engine::new_scope`], [`Engine::eval_in_scope`]): a scope is a
//!   plain object; evaluation inside a scope resolves names innermost-first through the chain of
//!   parents up to the global object;
//! - JSON in and out ([`Engine::set_global_json`], [`Engine::eval_json`]);
//! - host functions callable from scripts, with JSON arguments and results
//!   ([`Engine::register_function`]);
//! - per-session limits: a memory limit and a time budget per evaluation, enforced by the
//!   interrupt handler, so `while(true){}` fails with [`EcmaError::Timeout`] in that session only;
//! - a snapshot of the global object's own (non-builtin) properties as tagged JSON, and its
//!   restoration ([`Engine::snapshot_globals`], [`Engine::restore_globals`]).
//!
//! What a snapshot keeps: JSON values, `undefined`, NaN/±Infinity/-0, `Date`, `RegExp`, and
//! functions by their source text (re-evaluated at restore; closures lose their captured
//! environment, top-level functions that use globals behave the same). Shared references between
//! two globals become two copies; cycles are cut (the back edge becomes `undefined`); class
//! instances become plain objects; symbols, Map/Set contents and native functions are dropped.
//!
//! The time budget is the only place where this crate reads the clock (an interrupt handler has
//! no other way to bound a loop).

use rquickjs::context::EvalOptions;
use rquickjs::{Context, Ctx, Function, Object, Runtime, Value};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

pub use serde_json::Value as Json;

/// The key that marks a non-JSON value in tagged JSON.
pub const TAG: &str = "\u{1}t";

/// Per-session limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Maximum heap size of the runtime in bytes.
    pub memory_bytes: usize,
    /// Maximum wall time of one evaluation (expression or script).
    pub time_budget: Duration,
    /// Maximum native stack used by the interpreter in bytes.
    pub max_stack_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 32 * 1024 * 1024,
            time_budget: Duration::from_secs(2),
            max_stack_bytes: 512 * 1024,
        }
    }
}

/// An error raised by an evaluation.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum EcmaError {
    /// The script threw (syntax error, reference error, explicit `throw`, ...).
    #[error("script error: {0}")]
    Script(String),
    /// The time budget of the evaluation ran out.
    #[error("script interrupted: time budget exceeded")]
    Timeout,
    /// The memory limit was reached.
    #[error("script ran out of memory")]
    OutOfMemory,
    /// The engine itself could not be created or used.
    #[error("engine error: {0}")]
    Engine(String),
}

/// A host function: JSON arguments in, JSON result or error message out.
pub type HostFn = Box<dyn Fn(&[Json]) -> Result<Json, String>>;

/// A scope handle (see [`Engine::new_scope`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scope(u32);

/// One JavaScript engine for one session.
pub struct Engine {
    // Field order matters: the context must be dropped before the runtime.
    ctx: Context,
    _rt: Runtime,
    deadline: Rc<Cell<Option<Instant>>>,
    timed_out: Rc<Cell<bool>>,
    limits: Limits,
    host_fns: Rc<RefCell<HashMap<String, HostFn>>>,
    scope_parents: RefCell<HashMap<u32, Option<u32>>>,
    next_scope: Cell<u32>,
}

const PRELUDE: &str = include_str!("prelude.js");

fn engine_err(e: rquickjs::Error) -> EcmaError {
    EcmaError::Engine(e.to_string())
}

impl Engine {
    /// Creates a runtime and a context with the given limits.
    pub fn new(limits: Limits) -> Result<Engine, EcmaError> {
        let rt = Runtime::new().map_err(engine_err)?;
        rt.set_memory_limit(limits.memory_bytes);
        rt.set_max_stack_size(limits.max_stack_bytes);
        let deadline: Rc<Cell<Option<Instant>>> = Rc::new(Cell::new(None));
        let timed_out = Rc::new(Cell::new(false));
        {
            let deadline = deadline.clone();
            let timed_out = timed_out.clone();
            rt.set_interrupt_handler(Some(Box::new(move || match deadline.get() {
                Some(d) if Instant::now() >= d => {
                    timed_out.set(true);
                    true
                }
                _ => false,
            })));
        }
        let ctx = Context::full(&rt).map_err(engine_err)?;
        let host_fns: Rc<RefCell<HashMap<String, HostFn>>> = Rc::new(RefCell::new(HashMap::new()));
        let engine = Engine {
            ctx,
            _rt: rt,
            deadline,
            timed_out,
            limits,
            host_fns: host_fns.clone(),
            scope_parents: RefCell::new(HashMap::new()),
            next_scope: Cell::new(1),
        };
        engine.ctx.with(|ctx| -> Result<(), EcmaError> {
            let fns = host_fns.clone();
            let call = Function::new(ctx.clone(), move |name: String, args: String| -> String {
                let args: Vec<Json> = serde_json::from_str(&args).unwrap_or_default();
                let map = fns.borrow();
                let out = match map.get(&name) {
                    Some(f) => match f(&args) {
                        Ok(v) => serde_json::json!({ "ok": v }),
                        Err(e) => serde_json::json!({ "err": e }),
                    },
                    None => serde_json::json!({ "err": format!("no host function {name}") }),
                };
                out.to_string()
            })
            .map_err(engine_err)?;
            ctx.globals()
                .set("__sb_host_call", call)
                .map_err(engine_err)?;
            let opts = non_strict();
            ctx.eval_with_options::<(), _>(PRELUDE, opts)
                .map_err(|e| EcmaError::Engine(format!("prelude: {e}")))?;
            Ok(())
        })?;
        Ok(engine)
    }

    fn guarded<T>(&self, f: impl FnOnce(&Ctx<'_>) -> Result<T, EcmaError>) -> Result<T, EcmaError> {
        self.timed_out.set(false);
        self.deadline
            .set(Some(Instant::now() + self.limits.time_budget));
        let r = self.ctx.with(|ctx| f(&ctx));
        self.deadline.set(None);
        if self.timed_out.get() {
            self.timed_out.set(false);
            return Err(EcmaError::Timeout);
        }
        r
    }

    /// Evaluates an expression and returns its value as JSON (`undefined` and functions give
    /// `None`).
    pub fn eval_json(&self, expr: &str) -> Result<Option<Json>, EcmaError> {
        self.guarded(|ctx| {
            let v = eval_expr(ctx, expr)?;
            to_json(ctx, v)
        })
    }

    /// Evaluates an expression and converts it with the ECMAScript `ToBoolean`.
    pub fn eval_bool(&self, expr: &str) -> Result<bool, EcmaError> {
        self.guarded(|ctx| {
            let v = eval_expr(ctx, expr)?;
            let f: Function = ctx.globals().get("Boolean").map_err(engine_err)?;
            f.call::<_, bool>((v,)).map_err(|e| exception(ctx, e))
        })
    }

    /// Evaluates an expression and converts it with the ECMAScript `String()`.
    pub fn eval_string(&self, expr: &str) -> Result<String, EcmaError> {
        self.guarded(|ctx| {
            let v = eval_expr(ctx, expr)?;
            js_string(ctx, v)
        })
    }

    /// Evaluates an expression; returns `Some(items)` (a shallow copy, as JSON-free handles kept
    /// in the engine) when it is an array-like collection, `None` otherwise. The items are stored
    /// in the hidden slot `slot` and can be read back with the expression returned by
    /// [`Engine::slot_item_expr`].
    pub fn eval_collection_into_slot(
        &self,
        expr: &str,
        slot: &str,
    ) -> Result<Option<usize>, EcmaError> {
        self.guarded(|ctx| {
            let v = eval_expr(ctx, expr)?;
            let sb: Object = ctx.globals().get("__sb").map_err(engine_err)?;
            let f: Function = sb.get("toSlot").map_err(engine_err)?;
            let n: i64 = f
                .call((slot.to_string(), v))
                .map_err(|e| exception(ctx, e))?;
            Ok(if n < 0 { None } else { Some(n as usize) })
        })
    }

    /// The expression that reads item `i` of slot `slot` (see [`Engine::eval_collection_into_slot`]).
    pub fn slot_item_expr(slot: &str, i: usize) -> String {
        format!("__sb.slots[{}][{}]", Json::String(slot.to_string()), i)
    }

    /// Runs a script at global level (non-strict): `var` and function declarations become
    /// properties of the global object.
    pub fn run_script(&self, src: &str) -> Result<(), EcmaError> {
        self.guarded(|ctx| {
            ctx.eval_with_options::<Value, _>(src, non_strict())
                .map(|_| ())
                .map_err(|e| exception(ctx, e))
        })
    }

    /// Runs a script in strict mode (an assignment to an undeclared or read-only name throws).
    pub fn run_strict(&self, src: &str) -> Result<(), EcmaError> {
        self.guarded(|ctx| {
            let mut opts = non_strict();
            opts.strict = true;
            ctx.eval_with_options::<Value, _>(src, opts)
                .map(|_| ())
                .map_err(|e| exception(ctx, e))
        })
    }

    /// Sets a global to a JSON value (`None` sets `undefined`).
    pub fn set_global_json(&self, name: &str, value: Option<&Json>) -> Result<(), EcmaError> {
        self.guarded(|ctx| {
            let v = from_json(ctx, value)?;
            ctx.globals().set(name, v).map_err(|e| exception(ctx, e))
        })
    }

    /// Defines a read-only, non-enumerable global (replacing a previous definition) that is not
    /// part of snapshots; used for system variables such as `_event`.
    pub fn define_system(&self, name: &str, value: Option<&Json>) -> Result<(), EcmaError> {
        self.guarded(|ctx| {
            let v = from_json(ctx, value)?;
            let sb: Object = ctx.globals().get("__sb").map_err(engine_err)?;
            let f: Function = sb.get("defineSystem").map_err(engine_err)?;
            f.call::<_, ()>((name.to_string(), v))
                .map_err(|e| exception(ctx, e))
        })
    }

    /// Whether the global object has a property `name`.
    pub fn is_defined_global(&self, name: &str) -> Result<bool, EcmaError> {
        self.guarded(|ctx| {
            ctx.globals()
                .contains_key(name)
                .map_err(|e| exception(ctx, e))
        })
    }

    /// Registers a host function callable from scripts as the global `name` (a dotted name such
    /// as `ns.fn` creates the intermediate objects). Arguments and result cross as JSON; an `Err`
    /// is thrown as an `Error` with that message.
    pub fn register_function(&self, name: &str, f: HostFn) -> Result<(), EcmaError> {
        self.host_fns.borrow_mut().insert(name.to_string(), f);
        self.guarded(|ctx| {
            let sb: Object = ctx.globals().get("__sb").map_err(engine_err)?;
            let f: Function = sb.get("defineHost").map_err(engine_err)?;
            f.call::<_, ()>((name.to_string(),))
                .map_err(|e| exception(ctx, e))
        })
    }

    /// Creates a scope object whose parent is `parent` (or the global object).
    pub fn new_scope(&self, parent: Option<Scope>) -> Result<Scope, EcmaError> {
        let id = self.next_scope.get();
        self.next_scope.set(id + 1);
        self.scope_parents
            .borrow_mut()
            .insert(id, parent.map(|p| p.0));
        self.guarded(|ctx| {
            let sb: Object = ctx.globals().get("__sb").map_err(engine_err)?;
            let f: Function = sb.get("newScope").map_err(engine_err)?;
            f.call::<_, ()>((id,)).map_err(|e| exception(ctx, e))
        })?;
        Ok(Scope(id))
    }

    /// Drops a scope (its variables become unreachable).
    pub fn drop_scope(&self, scope: Scope) {
        self.scope_parents.borrow_mut().remove(&scope.0);
        let _ = self.guarded(|ctx| {
            let sb: Object = ctx.globals().get("__sb").map_err(engine_err)?;
            let f: Function = sb.get("dropScope").map_err(engine_err)?;
            f.call::<_, ()>((scope.0,)).map_err(|e| exception(ctx, e))
        });
    }

    /// Makes `name` inside `scope` a reference to the scope object itself, so that a scope can
    /// be named from expressions (VoiceXML's `document.x`, `dialog.x`, `application.x`).
    pub fn alias_scope(&self, scope: Scope, name: &str) -> Result<(), EcmaError> {
        let src = format!(
            "__sb.scopes[{id}][{n}] = __sb.scopes[{id}]",
            id = scope.0,
            n = Json::String(name.to_string())
        );
        self.run_script(&src)
    }

    fn chain(&self, scope: Scope) -> Vec<u32> {
        let parents = self.scope_parents.borrow();
        let mut out = vec![scope.0];
        let mut cur = scope.0;
        while let Some(Some(p)) = parents.get(&cur) {
            out.push(*p);
            cur = *p;
            if out.len() > 1000 {
                break;
            }
        }
        out.reverse();
        out
    }

    /// Declares (or overwrites) variable `name` in `scope` with a JSON value.
    pub fn declare_in_scope(
        &self,
        scope: Scope,
        name: &str,
        value: Option<&Json>,
    ) -> Result<(), EcmaError> {
        self.guarded(|ctx| {
            let v = from_json(ctx, value)?;
            let sb: Object = ctx.globals().get("__sb").map_err(engine_err)?;
            let scopes: Object = sb.get("scopes").map_err(engine_err)?;
            let o: Object = scopes.get(scope.0).map_err(engine_err)?;
            o.set(name, v).map_err(|e| exception(ctx, e))
        })
    }

    /// Evaluates code (an expression or statements; the value of the last one is returned as
    /// JSON) with names resolved through `scope`, its ancestors, then the global object.
    pub fn eval_in_scope(&self, scope: Scope, code: &str) -> Result<Option<Json>, EcmaError> {
        let chain = self.chain(scope);
        self.guarded(|ctx| {
            let sb: Object = ctx.globals().get("__sb").map_err(engine_err)?;
            let f: Function = sb.get("evalIn").map_err(engine_err)?;
            let v: Value = f
                .call((chain, code.to_string()))
                .map_err(|e| exception(ctx, e))?;
            to_json(ctx, v)
        })
    }

    fn call_sb<'js, A: rquickjs::function::IntoArgs<'js>, R: rquickjs::FromJs<'js>>(
        ctx: &Ctx<'js>,
        name: &str,
        args: A,
    ) -> Result<R, EcmaError> {
        let sb: Object = ctx.globals().get("__sb").map_err(engine_err)?;
        let f: Function = sb.get(name).map_err(engine_err)?;
        f.call(args).map_err(|e| exception(ctx, e))
    }

    /// Evaluates an expression and returns its value as *tagged JSON*: plain JSON except that
    /// `undefined`, non-finite numbers, dates, regexps, functions and XML DOM nodes are encoded
    /// as objects with the key `"\u{1}t"` (see [`TAG`]). Tagged JSON round-trips through
    /// [`Engine::set_global_tagged`] and friends.
    pub fn eval_tagged(&self, expr: &str) -> Result<Json, EcmaError> {
        self.guarded(|ctx| {
            let v = eval_expr(ctx, expr)?;
            let s: String = Self::call_sb(ctx, "encode", (v,))?;
            serde_json::from_str(&s).map_err(|e| EcmaError::Engine(e.to_string()))
        })
    }

    /// Sets a global from tagged JSON.
    pub fn set_global_tagged(&self, name: &str, value: &Json) -> Result<(), EcmaError> {
        self.guarded(|ctx| {
            Self::call_sb::<_, ()>(ctx, "setTagged", (name.to_string(), value.to_string()))
        })
    }

    /// Defines a read-only system variable (see [`Engine::define_system`]) from tagged JSON.
    pub fn define_system_tagged(&self, name: &str, value: &Json) -> Result<(), EcmaError> {
        self.guarded(|ctx| {
            Self::call_sb::<_, ()>(
                ctx,
                "defineSystemTagged",
                (name.to_string(), value.to_string()),
            )
        })
    }

    /// Assigns tagged JSON to a location expression (`a.b[0]`), in strict mode: an undeclared
    /// or read-only location is an error.
    pub fn assign_tagged(&self, location: &str, value: &Json) -> Result<(), EcmaError> {
        self.guarded(|ctx| {
            Self::call_sb::<_, ()>(ctx, "setSlot", ("__assign".to_string(), value.to_string()))?;
            assign_slot(ctx, location)
        })
    }

    /// Assigns the value of `expr` to a location expression, in strict mode.
    pub fn assign_expr(&self, location: &str, expr: &str) -> Result<(), EcmaError> {
        self.guarded(|ctx| {
            let v = eval_expr(ctx, expr)?;
            let slots: Object = ctx
                .globals()
                .get::<_, Object>("__sb")
                .and_then(|o| o.get("slots"))
                .map_err(engine_err)?;
            slots.set("__assign", v).map_err(engine_err)?;
            assign_slot(ctx, location)
        })
    }

    /// Serializes the global object's own non-builtin, non-system properties (see the crate
    /// documentation for what survives).
    pub fn snapshot_globals(&self) -> Result<String, EcmaError> {
        self.guarded(|ctx| {
            let sb: Object = ctx.globals().get("__sb").map_err(engine_err)?;
            let f: Function = sb.get("snapshot").map_err(engine_err)?;
            f.call::<_, String>(()).map_err(|e| exception(ctx, e))
        })
    }

    /// Restores globals saved by [`Engine::snapshot_globals`].
    pub fn restore_globals(&self, snapshot: &str) -> Result<(), EcmaError> {
        self.guarded(|ctx| {
            let sb: Object = ctx.globals().get("__sb").map_err(engine_err)?;
            let f: Function = sb.get("restore").map_err(engine_err)?;
            f.call::<_, ()>((snapshot.to_string(),))
                .map_err(|e| exception(ctx, e))
        })
    }

    /// Current heap usage in bytes.
    pub fn memory_used(&self) -> i64 {
        self._rt.memory_usage().memory_used_size
    }
}

fn non_strict() -> EvalOptions {
    let mut o = EvalOptions::default();
    o.global = true;
    o.strict = false;
    o
}

/// Evaluates an expression through a cache of compiled functions (QuickJS would otherwise parse
/// the expression text on every evaluation).
fn eval_expr<'js>(ctx: &Ctx<'js>, expr: &str) -> Result<Value<'js>, EcmaError> {
    let expr = expr.trim_end().trim_end_matches(';');
    let sb: Object = ctx.globals().get("__sb").map_err(engine_err)?;
    let f: Function = sb.get("ev").map_err(engine_err)?;
    f.call((expr.to_string(),)).map_err(|e| exception(ctx, e))
}

/// Assigns `__sb.slots.__assign` to `location` with a cached strict-mode function.
fn assign_slot(ctx: &Ctx<'_>, location: &str) -> Result<(), EcmaError> {
    let sb: Object = ctx.globals().get("__sb").map_err(engine_err)?;
    let f: Function = sb.get("assign").map_err(engine_err)?;
    f.call::<_, ()>((location.to_string(),))
        .map_err(|e| exception(ctx, e))
}

fn exception(ctx: &Ctx<'_>, e: rquickjs::Error) -> EcmaError {
    match e {
        rquickjs::Error::Exception => {
            let v = ctx.catch();
            let msg = if let Some(o) = v.as_object() {
                let name: String = o.get("name").unwrap_or_default();
                let message: String = o.get("message").unwrap_or_default();
                format!("{name}: {message}")
            } else {
                js_string(ctx, v).unwrap_or_else(|_| "exception".into())
            };
            if msg.contains("out of memory") {
                EcmaError::OutOfMemory
            } else {
                EcmaError::Script(msg)
            }
        }
        rquickjs::Error::Allocation => EcmaError::OutOfMemory,
        other => EcmaError::Script(other.to_string()),
    }
}

fn js_string<'js>(ctx: &Ctx<'js>, v: Value<'js>) -> Result<String, EcmaError> {
    let f: Function = ctx.globals().get("String").map_err(engine_err)?;
    f.call::<_, String>((v,)).map_err(|e| exception(ctx, e))
}

fn to_json<'js>(ctx: &Ctx<'js>, v: Value<'js>) -> Result<Option<Json>, EcmaError> {
    if v.is_undefined() || v.is_function() {
        return Ok(None);
    }
    let s = ctx.json_stringify(v).map_err(|e| exception(ctx, e))?;
    match s {
        None => Ok(None),
        Some(s) => {
            let s = s.to_string().map_err(engine_err)?;
            serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| EcmaError::Engine(e.to_string()))
        }
    }
}

fn from_json<'js>(ctx: &Ctx<'js>, value: Option<&Json>) -> Result<Value<'js>, EcmaError> {
    match value {
        None => Ok(Value::new_undefined(ctx.clone())),
        Some(j) => ctx.json_parse(j.to_string()).map_err(|e| exception(ctx, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expressions_and_scripts() {
        let e = Engine::new(Limits::default()).unwrap();
        e.run_script("var x = 1; function f(a) { return a + x; }")
            .unwrap();
        assert_eq!(e.eval_json("f(2)").unwrap(), Some(json!(3)));
        assert!(e.eval_bool("x === 1").unwrap());
        assert_eq!(e.eval_string("{a:1}.a").unwrap(), "1");
        assert!(matches!(e.eval_json("nope"), Err(EcmaError::Script(_))));
        assert!(e.run_strict("undeclared = 3").is_err());
        assert_eq!(e.eval_json("undefined").unwrap(), None);
    }

    #[test]
    fn infinite_loop_is_interrupted_and_engine_survives() {
        let e = Engine::new(Limits {
            time_budget: Duration::from_millis(50),
            ..Limits::default()
        })
        .unwrap();
        assert_eq!(e.run_script("while(true){}"), Err(EcmaError::Timeout));
        assert_eq!(e.eval_json("1+1").unwrap(), Some(json!(2)));
    }

    #[test]
    fn memory_limit() {
        let e = Engine::new(Limits {
            memory_bytes: 4 * 1024 * 1024,
            ..Limits::default()
        })
        .unwrap();
        let r = e.run_script(
            "var a = []; while(true) { a.push('xxxxxxxxxxxxxxxxxxxxxxxx' + a.length); }",
        );
        assert_eq!(r, Err(EcmaError::OutOfMemory));
        e.run_script("a = null").unwrap();
    }

    #[test]
    fn host_functions_and_system_vars() {
        let e = Engine::new(Limits::default()).unwrap();
        e.register_function(
            "ext.add",
            Box::new(|a| Ok(json!(a[0].as_i64().unwrap_or(0) + 1))),
        )
        .unwrap();
        assert_eq!(e.eval_json("ext.add(41)").unwrap(), Some(json!(42)));
        e.register_function("boom", Box::new(|_| Err("bad".into())))
            .unwrap();
        assert!(e.eval_json("boom()").is_err());
        e.define_system("_sessionid", Some(&json!("abc"))).unwrap();
        assert!(e.run_strict("_sessionid = 1").is_err());
        assert_eq!(e.eval_json("_sessionid").unwrap(), Some(json!("abc")));
    }

    #[test]
    fn scopes_chain() {
        let e = Engine::new(Limits::default()).unwrap();
        e.run_script("var g = 1").unwrap();
        let a = e.new_scope(None).unwrap();
        let b = e.new_scope(Some(a)).unwrap();
        e.declare_in_scope(a, "x", Some(&json!(10))).unwrap();
        e.declare_in_scope(b, "y", Some(&json!(5))).unwrap();
        assert_eq!(e.eval_in_scope(b, "x + y + g").unwrap(), Some(json!(16)));
        e.eval_in_scope(b, "x = 11").unwrap();
        assert_eq!(e.eval_in_scope(a, "x").unwrap(), Some(json!(11)));
        assert!(e.eval_in_scope(a, "y").is_err());
        e.alias_scope(a, "outer").unwrap();
        e.eval_in_scope(b, "outer.x = 12").unwrap();
        assert_eq!(e.eval_in_scope(b, "x").unwrap(), Some(json!(12)));
    }

    #[test]
    fn snapshot_roundtrip() {
        let e = Engine::new(Limits::default()).unwrap();
        e.define_system("_name", Some(&json!("n"))).unwrap();
        e.run_script(
            "var a = {b: [1, 'x', null], c: undefined, d: NaN}; function inc(v) { return v + a.b[0]; } var t = new Date(5);",
        )
        .unwrap();
        let snap = e.snapshot_globals().unwrap();
        let e2 = Engine::new(Limits::default()).unwrap();
        e2.restore_globals(&snap).unwrap();
        assert_eq!(e2.eval_json("inc(1)").unwrap(), Some(json!(2)));
        assert!(e2
            .eval_bool("isNaN(a.d) && 'c' in a && a.c === undefined")
            .unwrap());
        assert!(e2
            .eval_bool("t instanceof Date && t.getTime() === 5")
            .unwrap());
        assert!(!e2.is_defined_global("_name").unwrap());
    }
}
