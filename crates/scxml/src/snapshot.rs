//! Snapshot/restore of a whole session tree to a versioned byte format.
//!
//! The format is JSON inside an envelope `{"format": "switchboard-scxml", "version": 1, ...}`.
//! It holds, per session: the document source and base URI, configuration, history values,
//! internal and external queues, pending delayed sends with their due times, the invoked
//! children (recursively), undelivered outputs, counters, the last `_event`, and the data model
//! as tagged JSON of the global object's own properties (see `switchboard-ecma` for what a data
//! model snapshot keeps: functions are kept by source text; closures lose their captured
//! environment; shared references become copies). System variables (`_sessionid`, `_name`,
//! `_ioprocessors`, `_event`, `In`, host functions) are recreated, not stored.
//! `<data src>`/`<script src>` are fetched again when the document is reloaded at restore.

use crate::interp::{Child, Delayed, Event, Route, Session};
use crate::model::{Document, StateId};
use crate::Environment;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::rc::Rc;

const FORMAT: &str = "switchboard-scxml";
const VERSION: u32 = 1;

/// A snapshot could not be taken or restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("data model: {0}")]
    DataModel(String),
    #[error("bad snapshot: {0}")]
    Format(String),
    #[error("unsupported snapshot version {0}")]
    Version(u32),
    #[error("document no longer loads: {0}")]
    Document(String),
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    format: String,
    version: u32,
    session: Snap,
}

#[derive(Serialize, Deserialize)]
struct Snap {
    /// Empty in a compact snapshot (the host supplies the root document at restore).
    doc_source: String,
    #[serde(default)]
    doc_hash: u64,
    doc_base: Option<String>,
    id: String,
    parent_invokeid: Option<String>,
    ancestors: Vec<String>,
    config: Vec<StateId>,
    states_to_invoke: Vec<StateId>,
    history: Vec<(StateId, Vec<StateId>)>,
    internal: Vec<Event>,
    external: Vec<Event>,
    started: bool,
    running: bool,
    finished: bool,
    late_done: Vec<StateId>,
    delayed: Vec<Delayed>,
    children: Vec<ChildSnap>,
    outbox: Vec<Route>,
    now: u64,
    seq: u64,
    http_self_pending: u32,
    last_event: Option<Event>,
    params: Vec<(String, Json)>,
    final_state: Option<String>,
    #[serde(default)]
    cancelled: Vec<String>,
    globals: String,
}

#[derive(Serialize, Deserialize)]
struct ChildSnap {
    invokeid: String,
    state: StateId,
    index: usize,
    autoforward: bool,
    done: bool,
    session: Snap,
}

/// FNV-1a of the document source.
fn source_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Session {
    /// Serializes the whole session tree (see the module documentation of `snapshot`).
    pub fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        let env = Envelope {
            format: FORMAT.into(),
            version: VERSION,
            session: self.snap()?,
        };
        serde_json::to_vec(&env).map_err(|e| SnapshotError::Format(e.to_string()))
    }

    /// Like [`Session::snapshot`] but without the root document's source (invoked children
    /// keep theirs): restore it with [`Session::restore_with_document`] and the same document
    /// (checked by a hash of its source).
    pub fn snapshot_compact(&self) -> Result<Vec<u8>, SnapshotError> {
        let mut session = self.snap()?;
        session.doc_source = String::new();
        let env = Envelope {
            format: FORMAT.into(),
            version: VERSION,
            session,
        };
        serde_json::to_vec(&env).map_err(|e| SnapshotError::Format(e.to_string()))
    }

    fn snap(&self) -> Result<Snap, SnapshotError> {
        let globals = self
            .engine
            .snapshot_globals()
            .map_err(|e| SnapshotError::DataModel(e.to_string()))?;
        let mut children = Vec::new();
        for c in &self.children {
            children.push(ChildSnap {
                invokeid: c.invokeid.clone(),
                state: c.state,
                index: c.index,
                autoforward: c.autoforward,
                done: c.done,
                session: c.session.snap()?,
            });
        }
        let mut history: Vec<(StateId, Vec<StateId>)> =
            self.history.iter().map(|(k, v)| (*k, v.clone())).collect();
        history.sort();
        let mut late_done: Vec<StateId> = self.late_done.iter().copied().collect();
        late_done.sort_unstable();
        Ok(Snap {
            doc_source: self.doc.source.to_string(),
            doc_hash: source_hash(&self.doc.source),
            doc_base: self.doc.base.clone(),
            id: self.id.clone(),
            parent_invokeid: self.parent_invokeid.clone(),
            ancestors: self.ancestors.clone(),
            config: self.config.iter().copied().collect(),
            states_to_invoke: self.states_to_invoke.iter().copied().collect(),
            history,
            internal: self.internal.iter().cloned().collect(),
            external: self.external.iter().cloned().collect(),
            started: self.started,
            running: self.running,
            finished: self.finished,
            late_done,
            delayed: self.delayed.clone(),
            children,
            outbox: self.outbox.iter().cloned().collect(),
            now: self.now,
            seq: self.seq,
            http_self_pending: self.http_self_pending,
            last_event: self.last_event.clone(),
            params: self.params.clone(),
            final_state: self.final_state.clone(),
            cancelled: self.cancelled.iter().cloned().collect(),
            globals,
        })
    }

    /// Rebuilds a session tree from [`Session::snapshot`] bytes, with the host's environment
    /// (same extension elements, functions and fetcher as the original).
    pub fn restore(bytes: &[u8], env: crate::Environment) -> Result<Session, SnapshotError> {
        let e: Envelope =
            serde_json::from_slice(bytes).map_err(|e| SnapshotError::Format(e.to_string()))?;
        if e.format != FORMAT {
            return Err(SnapshotError::Format(format!("format '{}'", e.format)));
        }
        if e.version != VERSION {
            return Err(SnapshotError::Version(e.version));
        }
        Self::unsnap(e.session, &env, None)
    }

    /// Like [`Session::restore`], reusing an already loaded root document when its source is
    /// the one in the snapshot (saves re-parsing).
    pub fn restore_with_document(
        bytes: &[u8],
        env: crate::Environment,
        doc: std::sync::Arc<Document>,
    ) -> Result<Session, SnapshotError> {
        let e: Envelope =
            serde_json::from_slice(bytes).map_err(|e| SnapshotError::Format(e.to_string()))?;
        if e.format != FORMAT {
            return Err(SnapshotError::Format(format!("format '{}'", e.format)));
        }
        if e.version != VERSION {
            return Err(SnapshotError::Version(e.version));
        }
        Self::unsnap(e.session, &env, Some(doc))
    }

    fn unsnap(
        s: Snap,
        env: &Environment,
        doc: Option<std::sync::Arc<Document>>,
    ) -> Result<Session, SnapshotError> {
        let doc = match doc {
            Some(d) if source_hash(&d.source) == s.doc_hash => d,
            Some(_) if s.doc_source.is_empty() => {
                return Err(SnapshotError::Document(
                    "the supplied document is not the one of the snapshot".into(),
                ))
            }
            None if s.doc_source.is_empty() => {
                return Err(SnapshotError::Document(
                    "compact snapshot: supply the document with restore_with_document".into(),
                ))
            }
            _ => Document::load(&s.doc_source, s.doc_base.as_deref(), env)
                .map_err(|e| SnapshotError::Document(e.to_string()))?,
        };
        let n = doc.states.len();
        let check = |v: &[StateId]| -> Result<(), SnapshotError> {
            if v.iter().any(|&x| x >= n) {
                return Err(SnapshotError::Format("state index out of range".into()));
            }
            Ok(())
        };
        check(&s.config)?;
        check(&s.states_to_invoke)?;
        check(&s.late_done)?;
        for (k, v) in &s.history {
            check(&[*k])?;
            check(v)?;
        }
        let mut children = Vec::new();
        for c in s.children {
            check(&[c.state])?;
            if c.index >= doc.states[c.state].invokes.len() {
                return Err(SnapshotError::Format("invoke index out of range".into()));
            }
            children.push(Child {
                invokeid: c.invokeid,
                state: c.state,
                index: c.index,
                autoforward: c.autoforward,
                done: c.done,
                session: Box::new(Self::unsnap(c.session, env, None)?),
            });
        }
        let mut sess = Session::build(
            doc,
            env.clone(),
            s.id,
            s.parent_invokeid,
            s.ancestors,
            s.params,
        )
        .map_err(|e| SnapshotError::DataModel(e.to_string()))?;
        sess.engine
            .restore_globals(&s.globals)
            .map_err(|e| SnapshotError::DataModel(e.to_string()))?;
        sess.config = s.config.into_iter().collect::<BTreeSet<_>>();
        sess.states_to_invoke = s.states_to_invoke.into_iter().collect();
        sess.history = s.history.into_iter().collect::<HashMap<_, _>>();
        sess.internal = s.internal.into_iter().collect::<VecDeque<_>>();
        sess.external = s.external.into_iter().collect();
        sess.started = s.started;
        sess.running = s.running;
        sess.finished = s.finished;
        sess.late_done = s.late_done.into_iter().collect::<HashSet<_>>();
        sess.delayed = s.delayed;
        sess.children = children;
        sess.outbox = s.outbox.into_iter().collect();
        sess.now = s.now;
        sess.seq = s.seq;
        sess.http_self_pending = s.http_self_pending;
        sess.final_state = s.final_state;
        sess.cancelled = s.cancelled.into_iter().collect();
        if let Some(ev) = s.last_event {
            sess.set_event_pub(&ev);
        }
        let _: Rc<RefCell<HashSet<String>>> = sess.active_ids.clone();
        sess.refresh_active_ids();
        Ok(sess)
    }
}
