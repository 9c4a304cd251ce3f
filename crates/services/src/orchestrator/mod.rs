//! `orchestrator`: runs the SCXML strategy of a route point for each call that reaches it
//! (what Genesys Orchestration Server does), and survives the loss of the node running it.
//!
//! * [`core`]: the sans-I/O core. Sessions by (tenant, ConnID); inputs: the route request
//!   with its loaded strategy, call events, routing replies, fetch results, the clock;
//!   outputs: [`core::Action`]s (call requests, routing requests, HTTP fetches, snapshots,
//!   session end).
//! * [`elements`]: the `sb:` extension elements.
//! * [`role`]: the bus glue (consumer group, leases, snapshots, takeover) and HTTP routes.
//! * [`demo`]: the demo strategy of route point 5000 and its VoiceXML menu.
//!
//! # Strategies
//!
//! An SCXML 1.0 document with the ECMAScript data model, fetched from the route point's
//! `strategy_url` (`http(s)://`, `file://` under `data_dir`, or `builtin:demo-strategy`) and
//! cached. Relative URLs in `src`/`prompt`/`url` are resolved against the strategy's URL
//! (for `builtin:` and `file:` strategies, against `http://{http.listen}/orchestrator/builtin/`,
//! where the role serves the built-in documents).
//!
//! ## The call context: `_genesys`
//!
//! A read-only system variable: `_genesys.tenant`, `conn_id` (16 hex digits), `ani`,
//! `dnis`, `other_dn`, `route_point`, `user_data` (kept current by EventAttachedDataChanged)
//! and `strategy_url`.
//!
//! ## Elements (namespace `http://switchboard.dev/scxml/1.0`, prefix `sb` below)
//!
//! Every attribute `x` may be given as an expression `xexpr` instead; `params`, `data` and
//! `body` are always expressions. A missing required attribute raises `error.execution`.
//!
//! | element | does | events |
//! |---|---|---|
//! | `<sb:play type="application\|music\|announcement" src params repeat>` | ApplyTreatment: a VoiceXML application (`params`: an object, passed as URL query parameters), music until cancelled or routed, or an announcement played `repeat` times | `play.started`; `play.done` (`_event.data.reason`, `_event.data.results`: the VoiceXML exit namelist); `play.error` |
//! | `<sb:collect prompt max timeout>` | ApplyTreatment CollectDigits: plays `prompt` (URL or `tts:TEXT`), collects up to `max` digits | `collect.started`; `collect.done` (`_event.data.digits`); `collect.error` |
//! | `<sb:queue queue skills group priority timeout>` | RoutingRequest::Submit to virtual queue `queue` with a skill expression (`sales >= 5 & english`), agent group, priority and timeout (seconds; none: waits). Queuing again (after a failed route) keeps the call's first `enqueued_ms`. | `queue.target` (`_event.data.agent_id`, `dn`); `queue.timeout`; `queue.error` (`reason`) |
//! | `<sb:route to wait="answer\|divert">` | RouteCall to a DN or an external number | `route.done` (EventEstablished at `to`: `dn`, `agent_id`; with `wait="divert"`, e.g. for external numbers, once the call left the route point for `to`); `route.error` (EventError: `error_code`, `reason`; or `error_code` `no_answer` when `to` released or forwarded the call unanswered) |
//! | `<sb:attach data mode="update\|attach">` | UpdateUserData (default) or AttachUserData with the object `data` | `attach.done`; `attach.error` |
//! | `<sb:release/>` | Release | `release.done`; `release.error` |
//! | `<sb:voicemail mailbox>` | RouteCall to the mailbox's number | `voicemail.done` (the call left the route point for it); `voicemail.error` |
//! | `<sb:cancel what="treatment\|queue">` | CancelTreatment (the treatment then ends with `play.done`/`collect.done`, `reason` `cancelled`), or RoutingRequest::Cancel | `cancel.error` (treatment); `queue.cancelled` at once (queue) |
//! | `<sb:fetch url method="get\|post" body>` | HTTP request to a customer system; `body` is sent as JSON | `fetch.done` (`_event.data.status`, `_event.data.body`: the JSON answer, `null` when not JSON); `fetch.error` (`status` when there was one, `reason`) |
//!
//! Call events: `call.abandoned` (the caller hung up while waiting) and `call.released`
//! (`_event.data.this_dn`, `reason`). After them the session ends whatever state it is in.
//! A session also ends in a top-level final state; a submission still waiting is then
//! cancelled (RoutingRequest::Cancel).
//!
//! # Failover
//!
//! See [`role`]: snapshots after every macrostep, a lease per session, an index of live
//! sessions, replies on a per-tenant stream, replay from the snapshot's stream positions.

pub mod core;
pub mod demo;
pub mod elements;
pub mod role;

pub use self::core::{
    replies_stream, Action, FetchRequest, FetchResult, Orchestrator, SessionKey, Strategy,
};
pub use elements::NS;

#[cfg(test)]
mod tests;
