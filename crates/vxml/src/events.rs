//! Events: finding the catch element from the form item outwards to the application root
//! (with counts and conds), running it, and the default handlers of the spec.

use crate::dom::Elem;
use crate::exec::Jump;
use crate::interp::{Interpreter, Step, Wait, MAX_EVENTS_IN_A_ROW};
use crate::Command;
use serde_json::Value as Json;
use std::rc::Rc;

impl Interpreter {
    /// Throws an event: the best catch from the item outwards to the application root, or the
    /// default handler.
    pub(crate) fn throw(&mut self, event: &str, message: &str) -> Step {
        self.trace(|| format!("event {event} {message}").trim_end().to_string());
        self.wait = Wait::Nothing;
        self.events_in_a_row += 1;
        if self.events_in_a_row > MAX_EVENTS_IN_A_ROW {
            self.log_error(&format!("event loop stopped at {event}"));
            self.exit(Json::Null);
            return Step::Wait;
        }
        let count = self.bump_event_count(event);
        match self.find_catch(event, count) {
            Ok(Some(handler)) => self.run_catch(&handler, event, message),
            Ok(None) => self.default_handler(event, message),
            Err(j) => match j {
                // A failing cond in a catch is itself an error; avoid recursing on it.
                Jump::Throw { event: e, .. } if e == event => self.default_handler(event, message),
                j => Step::Jump(j),
            },
        }
    }

    pub(crate) fn bump_event_count(&mut self, event: &str) -> u32 {
        let Some(f) = self.form.as_mut() else {
            return 1;
        };
        let c = f
            .event_counts
            .entry((f.current, event.to_string()))
            .or_insert(0);
        *c = c.saturating_add(1);
        *c
    }

    /// The scopes searched for a catch, innermost first.
    pub(crate) fn catch_levels(&self) -> Vec<Rc<Elem>> {
        let mut out = Vec::new();
        if let Some(f) = &self.form {
            if let Some(i) = f.current {
                if !Rc::ptr_eq(&f.items[i].elem, &f.elem) {
                    out.push(f.items[i].elem.clone());
                }
            }
            out.push(f.elem.clone());
        }
        out.extend(self.doc_root.clone());
        out.extend(self.app_root.clone());
        out
    }

    pub(crate) fn find_catch(&mut self, event: &str, count: u32) -> Result<Option<Rc<Elem>>, Jump> {
        let scope = self
            .form
            .as_ref()
            .map(|f| f.scope)
            .unwrap_or(self.doc_scope);
        for level in self.catch_levels() {
            let mut best: Option<(u32, Rc<Elem>)> = None;
            for h in level.elems() {
                let Some(names) = catch_events(h) else {
                    continue;
                };
                if !names.is_empty() && !names.iter().any(|n| event_matches(n, event)) {
                    continue;
                }
                let c: u32 = h.attr("count").and_then(|c| c.parse().ok()).unwrap_or(1);
                if c > count || best.as_ref().is_some_and(|(b, _)| *b >= c) {
                    continue;
                }
                if let Some(x) = h.attr("cond") {
                    if !self.cond(scope, x)? {
                        continue;
                    }
                }
                best = Some((c, h.clone()));
            }
            if let Some((_, h)) = best {
                return Ok(Some(h));
            }
        }
        Ok(None)
    }

    pub(crate) fn run_catch(&mut self, handler: &Elem, event: &str, message: &str) -> Step {
        let scope = self
            .form
            .as_ref()
            .map(|f| f.scope)
            .unwrap_or(self.doc_scope);
        self.reprompt = false;
        let vars = [
            ("_event", Json::String(event.to_string())),
            ("_message", Json::String(message.to_string())),
        ];
        match self.exec_in_anon(&handler.kids, scope, &vars) {
            Ok(()) => self.after_catch(),
            Err(j) => Step::Jump(j),
        }
    }

    /// A catch ended without a transition: the FIA goes on, without prompts unless it reprompted.
    pub(crate) fn after_catch(&mut self) -> Step {
        if self.form.is_none() {
            self.exit(Json::Null);
            return Step::Wait;
        }
        self.suppress_prompts = !std::mem::take(&mut self.reprompt);
        Step::Select
    }

    /// The default handlers of VoiceXML 2.0 §5.2.5.
    pub(crate) fn default_handler(&mut self, event: &str, message: &str) -> Step {
        let reprompting = ["noinput", "nomatch", "help", "maxspeechtimeout"];
        if reprompting.iter().any(|e| event_matches(e, event)) && self.form.is_some() {
            self.suppress_prompts = false;
            return Step::Select;
        }
        if event_matches("cancel", event) && self.form.is_some() {
            self.suppress_prompts = true;
            return Step::Select;
        }
        if !event_matches("connection.disconnect", event) && !event_matches("exit", event) {
            self.log_error(&format!("{event}: {message}"));
        }
        self.exit(Json::Null);
        Step::Wait
    }

    pub(crate) fn log_error(&mut self, text: &str) {
        self.cmds.push_back(Command::Log {
            label: Some("error".into()),
            text: text.to_string(),
        });
    }
}

/// The event names a handler element catches (empty: all); `None` when it is not a handler.
fn catch_events(h: &Elem) -> Option<Vec<String>> {
    match h.name.as_str() {
        "catch" => Some(
            h.attr("event")
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        ),
        "noinput" | "nomatch" | "help" | "error" => Some(vec![h.name.clone()]),
        _ => None,
    }
}

/// Prefix matching on whole name components: `error` catches `error.badfetch.http.404`.
pub(crate) fn event_matches(handler: &str, event: &str) -> bool {
    let h = handler.trim_end_matches('.');
    h == "." || event == h || (event.starts_with(h) && event[h.len()..].starts_with('.'))
}
