//! FIA collect and process phases for input: DTMF against the active grammars, timers,
//! recognition results, recordings, transfers and hang-ups, and the `<filled>` actions.

use crate::dom::Elem;
use crate::exec::{self, Jump};
use crate::grammar::{Grammar, Match};
use crate::interp::{Eval, Interpreter, Step, Wait};
use crate::{Command, TransferKind};
use serde_json::{json, Value as Json};
use std::rc::Rc;
use switchboard_ecma::Scope;

/// Keys kept while no input is being collected.
const MAX_TYPEAHEAD: usize = 32;

impl Interpreter {
    pub(crate) fn on_prompts_done(&mut self) -> Step {
        if let Wait::Input(c) = &mut self.wait {
            c.playing = false;
            if c.deadline.is_none() && c.buf.is_empty() {
                c.deadline = Some(self.now.saturating_add(c.timeout));
            }
        }
        Step::Wait
    }

    pub(crate) fn on_dtmf(&mut self, key: char) -> Step {
        let now = self.now;
        if let Wait::Transfer(t) = &mut self.wait {
            return Self::transfer_key(t, key, now, &mut self.cmds);
        }
        let Wait::Input(c) = &mut self.wait else {
            // Type-ahead: keys pressed while fetching or playing without a listen wait for the
            // next input collection.
            if self.typeahead.chars().count() < MAX_TYPEAHEAD {
                self.typeahead.push(key);
            }
            return Step::Wait;
        };
        if c.playing && !c.bargein {
            return Step::Wait;
        }
        // The termchar ends the input, unless a grammar spells it out (`12#`).
        if Some(key) == c.termchar
            && matches!(
                evaluate(&c.grammars, &format!("{}{key}", c.buf)),
                Eval::Dead
            )
        {
            return self.finish_input();
        }
        c.buf.push(key);
        match evaluate(&c.grammars, &c.buf) {
            Eval::Dead => self.end_input_with("nomatch"),
            Eval::Complete { more: false, .. } if c.termchar.is_none() || c.termtimeout == 0 => {
                self.finish_input()
            }
            Eval::Complete { more: false, .. } => {
                c.deadline = Some(now.saturating_add(c.termtimeout));
                Step::Wait
            }
            Eval::Complete { .. } | Eval::Prefix => {
                c.deadline = Some(now.saturating_add(c.interdigit));
                Step::Wait
            }
        }
    }

    pub(crate) fn on_timeout(&mut self) -> Step {
        match &mut self.wait {
            Wait::Input(c) if c.buf.is_empty() => self.end_input_with("noinput"),
            Wait::Input(_) => self.finish_input(),
            Wait::Transfer(t) => {
                t.deadline = None;
                if t.hotword.is_none()
                    && matches!(evaluate(&t.grammars, &t.buf), Eval::Complete { .. })
                {
                    t.hotword = Some(t.buf.clone());
                    self.cmds.push_back(Command::EndTransfer);
                } else {
                    t.buf.clear();
                }
                Step::Wait
            }
            _ => Step::Wait,
        }
    }

    /// A key during a bridge or consultation transfer: only the transfer's grammars listen
    /// (hotword: a key that matches nothing starts over, no nomatch is thrown); a complete
    /// match ends the transfer.
    fn transfer_key(
        t: &mut crate::interp::Transferring,
        key: char,
        now: u64,
        cmds: &mut std::collections::VecDeque<Command>,
    ) -> Step {
        if t.grammars.is_empty() || t.hotword.is_some() {
            return Step::Wait;
        }
        t.buf.push(key);
        match evaluate(&t.grammars, &t.buf) {
            Eval::Dead => {
                t.buf.clear();
                t.buf.push(key);
                if matches!(evaluate(&t.grammars, &t.buf), Eval::Dead) {
                    t.buf.clear();
                    t.deadline = None;
                }
            }
            Eval::Complete { more: false, .. } => {
                t.deadline = None;
                t.hotword = Some(std::mem::take(&mut t.buf));
                cmds.push_back(Command::EndTransfer);
                return Step::Wait;
            }
            Eval::Complete { .. } | Eval::Prefix => {}
        }
        if !t.buf.is_empty() {
            t.deadline = Some(now.saturating_add(t.interdigit));
        }
        Step::Wait
    }

    /// Input ended (termchar, timeout or a complete match): recognize or nomatch.
    pub(crate) fn finish_input(&mut self) -> Step {
        let Wait::Input(c) = std::mem::replace(&mut self.wait, Wait::Nothing) else {
            return Step::Wait;
        };
        self.cmds.push_back(Command::StopListening);
        match evaluate(&c.grammars, &c.buf) {
            Eval::Complete { grammar, .. } if grammar >= c.link_base => {
                match c.links.get(grammar - c.link_base).cloned() {
                    Some(link) => self.link_chosen(&link),
                    None => self.throw("nomatch", ""),
                }
            }
            Eval::Complete { grammar, value, .. } => {
                let value = match c.grammars.get(grammar).and_then(|g| g.semantics(&c.buf)) {
                    Some(js) => match self.interpret(&js) {
                        Ok(v) => v,
                        Err(j) => return Step::Jump(j),
                    },
                    None => value,
                };
                if grammar >= c.form_base {
                    return self.form_recognized(value, &c.buf);
                }
                self.recognized(c.item, grammar, value, &c.buf)
            }
            _ => self.throw("nomatch", ""),
        }
    }

    pub(crate) fn end_input_with(&mut self, event: &str) -> Step {
        self.wait = Wait::Nothing;
        self.cmds.push_back(Command::StopListening);
        self.throw(event, "")
    }

    /// A form-level grammar matched: its interpretation's properties fill the fields whose
    /// slot they name, and the `<initial>` items are done.
    fn form_recognized(&mut self, value: Json, utterance: &str) -> Step {
        let Some(form) = &self.form else {
            return Step::Wait;
        };
        let Json::Object(m) = &value else {
            return self.throw("nomatch", "no field slot in the interpretation");
        };
        let scope = form.scope;
        let mut filled = Vec::new();
        let mut initials = Vec::new();
        for (i, it) in form.items.iter().enumerate() {
            let slot = it.elem.attr("slot").unwrap_or(&it.var);
            match it.elem.name.as_str() {
                "field" => {
                    if let Some(v) = m.get(slot) {
                        filled.push((i, it.var.clone(), v.clone()));
                    }
                }
                "initial" => initials.push(it.var.clone()),
                _ => {}
            }
        }
        if filled.is_empty() {
            return self.throw("nomatch", "no field slot in the interpretation");
        }
        let shadow = json!({
            "utterance": utterance, "interpretation": value.clone(),
            "inputmode": "dtmf", "confidence": 1.0,
        });
        let r = self.set_form_slots(scope, &filled, &initials, &shadow);
        if let Err(j) = r {
            return Step::Jump(j);
        }
        let idx: Vec<usize> = filled.iter().map(|(i, _, _)| *i).collect();
        match self.run_filled_many(&idx) {
            Ok(()) => Step::Select,
            Err(j) => Step::Jump(j),
        }
    }

    fn set_form_slots(
        &mut self,
        scope: Scope,
        filled: &[(usize, String, Json)],
        initials: &[String],
        shadow: &Json,
    ) -> Result<(), Jump> {
        let app = self.app_scope;
        self.engine
            .declare_in_scope(app, "lastresult$", Some(&json!([shadow])))
            .map_err(exec::semantic)?;
        for (_, var, v) in filled {
            self.declare(scope, var, Some(v))?;
            self.declare(scope, &format!("{var}$"), Some(shadow))?;
        }
        for var in initials {
            self.declare(scope, var, Some(&Json::Bool(true)))?;
        }
        Ok(())
    }

    /// Feeds the type-ahead keys to the collection that just started; keys after the one that
    /// ended it stay buffered.
    pub(crate) fn replay_typeahead(&mut self) -> Step {
        let keys: Vec<char> = std::mem::take(&mut self.typeahead).chars().collect();
        for (n, k) in keys.iter().enumerate() {
            let step = self.on_dtmf(*k);
            if !matches!(step, Step::Wait) || !matches!(self.wait, Wait::Input(_)) {
                self.typeahead = keys[n + 1..].iter().collect();
                return step;
            }
        }
        Step::Wait
    }

    /// Runs a grammar's tags (see `Grammar::semantics`) in the dialog scope.
    fn interpret(&self, js: &str) -> Result<Json, Jump> {
        let scope = self
            .form
            .as_ref()
            .map(|f| f.scope)
            .unwrap_or(self.doc_scope);
        Ok(self.eval(scope, js)?.unwrap_or(Json::Null))
    }

    /// FIA process phase for recognized input.
    pub(crate) fn recognized(
        &mut self,
        i: usize,
        grammar: usize,
        value: Json,
        utterance: &str,
    ) -> Step {
        let Some(form) = &self.form else {
            return Step::Wait;
        };
        let (scope, item, var) = (
            form.scope,
            form.items[i].elem.clone(),
            form.items[i].var.clone(),
        );
        let result = json!({
            "utterance": utterance, "interpretation": value.clone(),
            "inputmode": "dtmf", "confidence": 1.0,
        });
        let app = self.app_scope;
        if let Err(e) = self
            .engine
            .declare_in_scope(app, "lastresult$", Some(&json!([result])))
        {
            return Step::Jump(exec::semantic(e));
        }
        if item.name == "menu" {
            return self.menu_choice(&item, grammar);
        }
        // An interpretation with a property named after the field's slot fills it with that.
        let slot = item.attr("slot").unwrap_or(&var).to_string();
        let value = match value {
            Json::Object(mut m) if m.contains_key(&slot) => m.remove(&slot).unwrap_or(Json::Null),
            v => v,
        };
        self.fill(i, scope, &var, Some(value), result)
    }

    /// Sets an item's variable and its shadow `name$`, then runs the `<filled>` actions.
    pub(crate) fn fill(
        &mut self,
        i: usize,
        scope: Scope,
        var: &str,
        value: Option<Json>,
        shadow: Json,
    ) -> Step {
        let r = self
            .declare(scope, var, value.as_ref())
            .and_then(|_| self.declare(scope, &format!("{var}$"), Some(&shadow)));
        if let Err(j) = r {
            return Step::Jump(j);
        }
        match self.run_filled(i) {
            Ok(()) => Step::Select,
            Err(j) => Step::Jump(j),
        }
    }

    /// The DTMF grammars of the `<link>`s in scope (item, form, document, application root),
    /// appended to `out`; returns the links in the same order.
    pub(crate) fn link_grammars(
        &mut self,
        item: &Elem,
        out: &mut Vec<Grammar>,
    ) -> Result<Vec<Rc<Elem>>, Jump> {
        let mut links = Vec::new();
        for level in self.catch_levels() {
            if !std::ptr::eq(level.as_ref(), item)
                && level.name != "form"
                && level.name != "menu"
                && level.name != "vxml"
            {
                continue;
            }
            for l in level.children("link") {
                if let Some(keys) = l.attr("dtmf") {
                    let keys = keys.replace(' ', "");
                    out.push(Grammar::Sequence {
                        value: Json::String(keys.clone()),
                        keys,
                    });
                    links.push(l.clone());
                }
                for g in l.children("grammar") {
                    let g = self.grammar_element(g)?;
                    if let Some(c) =
                        Grammar::srgs(&g).map_err(|m| exec::throw("error.badfetch", &m))?
                    {
                        out.push(c);
                        links.push(l.clone());
                    }
                }
            }
        }
        Ok(links)
    }

    /// A `<link>` matched: it goes where it says or throws its event, from anywhere.
    pub(crate) fn link_chosen(&mut self, link: &Elem) -> Step {
        let scope = self
            .form
            .as_ref()
            .map(|f| f.scope)
            .unwrap_or(self.doc_scope);
        match exec::choice_target(self, link, scope) {
            Ok(j) | Err(j) => Step::Jump(j),
        }
    }

    pub(crate) fn menu_choice(&mut self, menu: &Elem, grammar: usize) -> Step {
        let Some(choice) = menu.children("choice").nth(grammar).cloned() else {
            return self.throw("nomatch", "");
        };
        let scope = self
            .form
            .as_ref()
            .map(|f| f.scope)
            .unwrap_or(self.doc_scope);
        match exec::choice_target(self, &choice, scope) {
            Ok(j) | Err(j) => Step::Jump(j),
        }
    }

    /// Runs the item's `<filled>` then the form-level ones whose mode and namelist apply.
    pub(crate) fn run_filled(&mut self, i: usize) -> Result<(), Jump> {
        self.run_filled_many(&[i])
    }

    /// `<filled>` after one input filled several items: each item's own, then the form's whose
    /// namelist includes one of them.
    fn run_filled_many(&mut self, filled: &[usize]) -> Result<(), Jump> {
        let Some(form) = &self.form else {
            return Ok(());
        };
        let (scope, felem) = (form.scope, form.elem.clone());
        let just: Vec<(Rc<Elem>, String)> = filled
            .iter()
            .filter_map(|i| form.items.get(*i))
            .map(|it| (it.elem.clone(), it.var.clone()))
            .collect();
        let inputs: Vec<String> = form
            .items
            .iter()
            .filter(|it| it.elem.name != "block")
            .map(|it| it.var.clone())
            .collect();
        for (item, _) in &just {
            for f in item.children("filled") {
                self.exec_in_anon(&f.kids, scope, &[])?;
            }
        }
        for f in felem.children("filled") {
            let names: Vec<String> = match f.attr("namelist") {
                Some(n) => n.split_whitespace().map(str::to_string).collect(),
                None => inputs.clone(),
            };
            if !just.iter().any(|(_, v)| names.contains(v)) {
                continue;
            }
            if f.attr("mode") != Some("any") && !self.all_filled(scope, &names)? {
                continue;
            }
            self.exec_in_anon(&f.kids, scope, &[])?;
        }
        Ok(())
    }

    pub(crate) fn all_filled(&self, scope: Scope, names: &[String]) -> Result<bool, Jump> {
        for n in names {
            if self.guard_free(scope, n)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub(crate) fn on_recording(
        &mut self,
        url: Option<String>,
        duration: u64,
        term: Option<char>,
    ) -> Step {
        let Wait::Record(i) = self.wait else {
            return Step::Wait;
        };
        self.wait = Wait::Nothing;
        let Some(url) = url else {
            return self.throw("noinput", "");
        };
        let Some((scope, var)) = self.item_var(i) else {
            return Step::Wait;
        };
        let shadow =
            json!({"duration": duration, "termchar": term.map(String::from), "maxtime": false});
        self.fill(i, scope, &var, Some(Json::String(url)), shadow)
    }

    pub(crate) fn on_transfer(&mut self, status: String, duration_ms: u64) -> Step {
        let Wait::Transfer(t) = std::mem::replace(&mut self.wait, Wait::Nothing) else {
            return Step::Wait;
        };
        if status.starts_with("error.") {
            // The platform could not transfer (e.g. error.connection.baddestination): the
            // event is thrown in the transfer item (VoiceXML 2.0 §2.3.7.2.3).
            return self.throw(&status, "");
        }
        if status == "near_party_disconnect" {
            // The caller hung up during the bridge: the item stays unfilled (VoiceXML 2.0
            // §2.3.7.2.2); the host may say so with this status or with `Input::Hangup`.
            return self.on_hangup();
        }
        if status == "transferred" && t.kind == TransferKind::Consultation {
            // The far end answered and the caller was handed over (VoiceXML 2.1 §2.3.7):
            // like a blind transfer, the session has left the call.
            self.hung_up = true;
            return self.throw("connection.disconnect.transfer", "");
        }
        let Some((scope, var)) = self.item_var(t.item) else {
            return Step::Wait;
        };
        let mut shadow = json!({ "duration": duration_ms / 1000 });
        if let Some(keys) = t.hotword.filter(|_| status == "near_end_disconnect") {
            // VoiceXML 2.0 §2.3.7.2.2: a grammar match ended the transfer.
            shadow["inputmode"] = json!("dtmf");
            shadow["utterance"] = json!(keys);
        }
        self.fill(t.item, scope, &var, Some(Json::String(status)), shadow)
    }

    pub(crate) fn item_var(&self, i: usize) -> Option<(Scope, String)> {
        let f = self.form.as_ref()?;
        Some((f.scope, f.items.get(i)?.var.clone()))
    }

    /// VoiceXML 2.0 §2.3.6: a caller who hangs up during `<record>` leaves the recording in
    /// the item's variable (its `<filled>` does not run), then the hangup event is thrown.
    pub(crate) fn on_hangup_recording(
        &mut self,
        url: Option<String>,
        duration: u64,
        size: u64,
    ) -> Step {
        if let (Wait::Record(i), Some(url)) = (&self.wait, url) {
            if let Some((scope, var)) = self.item_var(*i) {
                let shadow =
                    json!({"duration": duration, "size": size, "termchar": null, "maxtime": false});
                let r = self
                    .declare(scope, &var, Some(&Json::String(url)))
                    .and_then(|_| self.declare(scope, &format!("{var}$"), Some(&shadow)));
                if let Err(j) = r {
                    self.hung_up = true;
                    self.wait = Wait::Nothing;
                    return Step::Jump(j);
                }
            }
        }
        self.on_hangup()
    }

    pub(crate) fn on_hangup(&mut self) -> Step {
        self.hung_up = true;
        if matches!(self.wait, Wait::Input(_)) {
            self.cmds.push_back(Command::StopListening);
        }
        self.wait = Wait::Nothing;
        self.throw("connection.disconnect.hangup", "")
    }
}

fn evaluate(grammars: &[Grammar], buf: &str) -> Eval {
    let mut prefix = false;
    let mut first: Option<(usize, Json, bool)> = None;
    for (i, g) in grammars.iter().enumerate() {
        match g.check(buf) {
            Match::Dead => {}
            Match::Prefix => prefix = true,
            Match::Complete { value, more } => {
                prefix |= more;
                if first.is_none() {
                    first = Some((i, value, more));
                }
            }
        }
    }
    match first {
        Some((grammar, value, _)) => Eval::Complete {
            grammar,
            value,
            more: prefix,
        },
        None if prefix => Eval::Prefix,
        None => Eval::Dead,
    }
}
