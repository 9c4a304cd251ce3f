//! DTMF grammars: the builtin `digits` and `boolean` types, SRGS XML DTMF grammars and menu
//! choices, matched against the digits collected so far.

use crate::dom::{Elem, Node};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::rc::Rc;

/// A compiled DTMF grammar.
#[derive(Debug, Clone)]
pub enum Grammar {
    /// `builtin:dtmf/digits` with its length limits.
    Digits { min: usize, max: usize },
    /// `builtin:dtmf/boolean`: 1 is true, 2 is false.
    Boolean,
    /// `builtin:dtmf/number`: digits with `*` as the decimal point; the value is a number.
    Number,
    /// `builtin:dtmf/date`: `yyyymmdd`.
    Date,
    /// `builtin:dtmf/phone`: digits with `*` before an extension (`x` in the value).
    Phone,
    /// `builtin:dtmf/time`: `hhmm`; the value is `hhmmx` with `x` = `h` (unambiguously
    /// 24-hour) or `?` (could be a.m. or p.m.).
    Time,
    /// `builtin:dtmf/currency`: digits with `*` as the decimal point; the value is `d.cc`
    /// (no currency indicator: keys cannot give one).
    Currency,
    /// An SRGS grammar in DTMF mode.
    Srgs(Rc<Srgs>),
    /// One fixed key sequence with the value it yields (a menu `<choice dtmf>`).
    Sequence { keys: String, value: Json },
}

/// How far the collected digits match a grammar.
#[derive(Debug, Clone, PartialEq)]
pub enum Match {
    /// No continuation of the input can match.
    Dead,
    /// The input is a prefix of a match.
    Prefix,
    /// The input matches; `more` says whether longer input could match too.
    Complete { value: Json, more: bool },
}

/// SRGS rules by id and the root rule.
#[derive(Debug)]
pub struct Srgs {
    rules: HashMap<String, Rc<Elem>>,
    root: Rc<Elem>,
    /// `tag-format="semantics/1.0-literals"`: a tag is a string value, not a script.
    literals: bool,
}

impl Grammar {
    /// A builtin type such as `digits?minlength=2;maxlength=4` or `boolean`.
    pub fn builtin(spec: &str) -> Option<Grammar> {
        let spec = spec
            .trim()
            .trim_start_matches("builtin:")
            .trim_start_matches("dtmf/");
        let (name, params) = match spec.find('?') {
            Some(i) => (&spec[..i], &spec[i + 1..]),
            None => (spec, ""),
        };
        match name {
            "digits" => Some(digits(params)),
            "boolean" => Some(Grammar::Boolean),
            "number" => Some(Grammar::Number),
            "date" => Some(Grammar::Date),
            "phone" => Some(Grammar::Phone),
            "time" => Some(Grammar::Time),
            "currency" => Some(Grammar::Currency),
            _ => None,
        }
    }

    /// Compiles an SRGS `<grammar>` element; `None` when it is not a DTMF grammar.
    pub fn srgs(grammar: &Rc<Elem>) -> Result<Option<Grammar>, String> {
        if grammar.attr("mode").unwrap_or("voice") != "dtmf" {
            return Ok(None);
        }
        let mut rules = HashMap::new();
        for r in grammar.children("rule") {
            if let Some(id) = r.attr("id") {
                rules.insert(id.to_string(), r.clone());
            }
        }
        let root = match grammar.attr("root") {
            Some(id) => rules.get(id).cloned(),
            None => grammar.children("rule").next().cloned(),
        }
        .ok_or("grammar has no root rule")?;
        let literals = grammar
            .attr("tag-format")
            .is_some_and(|f| f.contains("literals"));
        Ok(Some(Grammar::Srgs(Rc::new(Srgs {
            rules,
            root,
            literals,
        }))))
    }

    /// A short description for the Listen command.
    pub fn describe(&self) -> String {
        match self {
            Grammar::Digits { min, max } => format!("digits({min}..{max})"),
            Grammar::Boolean => "boolean".into(),
            Grammar::Number => "number".into(),
            Grammar::Date => "date".into(),
            Grammar::Phone => "phone".into(),
            Grammar::Time => "time".into(),
            Grammar::Currency => "currency".into(),
            Grammar::Srgs(_) => "srgs".into(),
            Grammar::Sequence { keys, .. } => format!("dtmf {keys}"),
        }
    }

    /// The ECMAScript program giving the semantic interpretation of a complete `input`, for
    /// SRGS grammars whose parse runs tags.
    pub fn semantics(&self, input: &str) -> Option<String> {
        match self {
            Grammar::Srgs(g) => g.semantics(input),
            _ => None,
        }
    }

    /// Matches the digits collected so far.
    pub fn check(&self, input: &str) -> Match {
        match self {
            Grammar::Digits { min, max } => check_digits(input, *min, *max),
            Grammar::Boolean => match input {
                "1" => complete(Json::Bool(true), false),
                "2" => complete(Json::Bool(false), false),
                "" => Match::Prefix,
                _ => Match::Dead,
            },
            Grammar::Number => check_star_number(input, '.').map_or(Match::Dead, |v| match v {
                Some(t) => match t.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                    Some(n) => complete(Json::Number(n), true),
                    None => Match::Dead,
                },
                None => Match::Prefix,
            }),
            Grammar::Phone => check_star_number(input, 'x').map_or(Match::Dead, |v| match v {
                Some(t) => complete(Json::String(t), true),
                None => Match::Prefix,
            }),
            Grammar::Date => check_date(input),
            Grammar::Time => check_time(input),
            Grammar::Currency => check_star_number(input, '.').map_or(Match::Dead, |v| match v {
                Some(t) => currency(&t),
                None => Match::Prefix,
            }),
            Grammar::Sequence { keys, value } => {
                if keys == input {
                    complete(value.clone(), false)
                } else if keys.starts_with(input) {
                    Match::Prefix
                } else {
                    Match::Dead
                }
            }
            Grammar::Srgs(g) => g.check(input),
        }
    }
}

fn complete(value: Json, more: bool) -> Match {
    Match::Complete { value, more }
}

fn digits(params: &str) -> Grammar {
    let (mut min, mut max) = (1, usize::MAX);
    for p in params.split(';') {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let n: usize = v.trim().parse().unwrap_or(0);
        match k.trim() {
            "minlength" => min = n,
            "maxlength" => max = n,
            "length" => (min, max) = (n, n),
            _ => {}
        }
    }
    Grammar::Digits { min, max }
}

fn check_digits(input: &str, min: usize, max: usize) -> Match {
    if !input.chars().all(|c| c.is_ascii_digit()) || input.len() > max {
        return Match::Dead;
    }
    if input.len() >= min.max(1) {
        complete(Json::String(input.to_string()), input.len() < max)
    } else {
        Match::Prefix
    }
}

/// Digits with at most one `*` (written as `star_as` in the value): `None` outside the
/// language, `Some(None)` for a prefix, `Some(Some(text))` when complete.
fn check_star_number(input: &str, star_as: char) -> Option<Option<String>> {
    let ok_chars = input.chars().all(|c| c.is_ascii_digit() || c == '*');
    if !ok_chars || input.matches('*').count() > 1 || input.starts_with('*') {
        return None;
    }
    if input.is_empty() || input.ends_with('*') {
        return Some(None);
    }
    Some(Some(input.replace('*', &star_as.to_string())))
}

fn check_time(input: &str) -> Match {
    if !input.chars().all(|c| c.is_ascii_digit()) || input.len() > 4 {
        return Match::Dead;
    }
    if input.len() < 4 {
        return Match::Prefix;
    }
    let hh: u32 = input[..2].parse().unwrap_or(99);
    let mm: u32 = input[2..].parse().unwrap_or(99);
    if hh > 23 || mm > 59 {
        return Match::Dead;
    }
    let x = if (1..=12).contains(&hh) { '?' } else { 'h' };
    complete(Json::String(format!("{input}{x}")), false)
}

/// At most two decimals, written with two (`12.5` is `12.50`).
fn currency(t: &str) -> Match {
    let (units, cents) = t.split_once('.').unwrap_or((t, ""));
    if cents.len() > 2 {
        return Match::Dead;
    }
    let value = format!("{units}.{cents:0<2}");
    complete(Json::String(value), cents.len() < 2)
}

fn check_date(input: &str) -> Match {
    if !input.chars().all(|c| c.is_ascii_digit()) || input.len() > 8 {
        return Match::Dead;
    }
    if input.len() < 8 {
        return Match::Prefix;
    }
    let month: u32 = input[4..6].parse().unwrap_or(0);
    let day: u32 = input[6..8].parse().unwrap_or(0);
    if (1..=12).contains(&month) && (1..=31).contains(&day) {
        complete(Json::String(input.to_string()), false)
    } else {
        Match::Dead
    }
}

/// Keys as SRGS tokens: DTMF grammars write `1`, `*`, `#` or `star`/`pound`.
fn token_keys(tok: &str) -> String {
    tok.split_whitespace()
        .map(|t| match t {
            "star" => "*".to_string(),
            "pound" => "#".to_string(),
            other => other.to_string(),
        })
        .collect()
}

/// What a parse did, in order: the semantic side of a match (SISR tags and rule boundaries).
#[derive(Debug, Clone)]
enum Ev {
    Tag(String),
    Enter,
    /// Leaving rule `id` whose match started at key `from`.
    Leave {
        id: String,
        from: usize,
    },
}

/// End positions reached, each with the trace of the first parse that reached it.
type Ends = Vec<(usize, Vec<Ev>)>;

fn push_end(out: &mut Ends, pos: usize, trace: Vec<Ev>) {
    if !out.iter().any(|(p, _)| *p == pos) {
        out.push((pos, trace));
    }
}

/// The matcher walks expansions over the input keys, collecting every end position reached;
/// `hungry` records that some path wanted more keys than were given (so a longer input could
/// still match).
struct Walk<'a> {
    g: &'a Srgs,
    keys: Vec<char>,
    hungry: bool,
    depth: usize,
    /// Work left: a grammar whose rules branch into each other could take exponential time.
    budget: u32,
}

impl Srgs {
    fn walk(&self, input: &str) -> (Ends, bool, usize) {
        let mut w = Walk {
            g: self,
            keys: input.chars().collect(),
            hungry: false,
            depth: 0,
            budget: 200_000,
        };
        let root_id = self.root.attr("id").unwrap_or("root").to_string();
        let ends = w.rule(&self.root, &root_id, 0, Vec::new());
        (ends, w.hungry, w.keys.len())
    }

    fn check(&self, input: &str) -> Match {
        let (ends, hungry, n) = self.walk(input);
        if ends.iter().any(|(p, _)| *p == n) {
            complete(Json::String(input.to_string()), hungry)
        } else if hungry {
            Match::Prefix
        } else {
            Match::Dead
        }
    }

    /// An ECMAScript program computing the semantic interpretation of `input` from the tags
    /// on its parse (a subset of SISR 1.0: `out` per rule, `rules.id`, `rules.latest()`, a rule
    /// without tags yields the keys it matched); `None` when the parse ran no tags.
    fn semantics(&self, input: &str) -> Option<String> {
        let (ends, _, n) = self.walk(input);
        let (_, trace) = ends.into_iter().find(|(p, _)| *p == n)?;
        if !trace.iter().any(|e| matches!(e, Ev::Tag(_))) {
            return None;
        }
        let keys: Vec<char> = input.chars().collect();
        let mut js = String::from(
            "(function () { var __st = [], __v, out = {}, __tagged = false, rules = {};\n\
             function __latest() { return rules.__latest; }\n",
        );
        for e in trace {
            js.push_str(&ev_js(&e, &keys, self.literals));
        }
        // The last rule left is the root: its value is the interpretation.
        js.push_str("return __v; })()");
        Some(js)
    }
}

/// One trace step as ECMAScript.
fn ev_js(e: &Ev, keys: &[char], literals: bool) -> String {
    match e {
        Ev::Enter => "__st.push([out, __tagged, rules]); out = {}; __tagged = false; \
                      rules = { latest: __latest };\n"
            .into(),
        Ev::Tag(t) if literals => format!(
            "out = {}; __tagged = true;\n",
            Json::String(t.trim().to_string())
        ),
        Ev::Tag(t) => format!("__tagged = true; {t}\n;\n"),
        Ev::Leave { id, from } => {
            let text: String = keys.iter().skip(*from).collect();
            format!(
                "var __v = __tagged ? out : {text}; var __p = __st.pop(); out = __p[0]; \
                 __tagged = __p[1]; rules = __p[2]; rules[{id}] = __v; rules.__latest = __v;\n",
                text = Json::String(text),
                id = Json::String(id.clone()),
            )
        }
    }
}

impl Walk<'_> {
    fn rule(&mut self, rule: &Elem, id: &str, pos: usize, trace: Vec<Ev>) -> Ends {
        // Recursive rules are cut off rather than overflowing the stack.
        if self.depth > 64 {
            return Vec::new();
        }
        self.depth += 1;
        let mut start = trace;
        start.push(Ev::Enter);
        let ends = self.seq(&rule.kids, pos, start);
        self.depth -= 1;
        ends.into_iter()
            .map(|(p, mut t)| {
                t.push(Ev::Leave {
                    id: id.to_string(),
                    from: pos,
                });
                (p, t)
            })
            .collect()
    }

    /// A sequence of nodes: each one continues from every end position of the previous.
    fn seq(&mut self, nodes: &[Node], pos: usize, trace: Vec<Ev>) -> Ends {
        let mut cur = vec![(pos, trace)];
        for n in nodes {
            let mut next = Vec::new();
            for (p, t) in cur {
                for (e, t2) in self.node(n, p, t) {
                    push_end(&mut next, e, t2);
                }
            }
            if next.is_empty() {
                return next;
            }
            cur = next;
        }
        cur
    }

    fn node(&mut self, n: &Node, pos: usize, trace: Vec<Ev>) -> Ends {
        if self.budget == 0 {
            return Vec::new();
        }
        self.budget -= 1;
        match n {
            Node::Text(t) => self.tokens(&token_keys(t), pos, trace),
            Node::Elem(e) => match e.name.as_str() {
                "item" => self.item(e, pos, trace),
                "one-of" => {
                    let mut out = Vec::new();
                    for alt in e.children("item") {
                        for (p, t) in self.item(alt, pos, trace.clone()) {
                            push_end(&mut out, p, t);
                        }
                    }
                    out
                }
                "ruleref" => self.ruleref(e, pos, trace),
                "token" => self.tokens(&token_keys(&e.text()), pos, trace),
                "tag" => {
                    let mut t = trace;
                    t.push(Ev::Tag(e.text()));
                    vec![(pos, t)]
                }
                _ => vec![(pos, trace)],
            },
        }
    }

    fn tokens(&mut self, keys: &str, pos: usize, trace: Vec<Ev>) -> Ends {
        let mut p = pos;
        for k in keys.chars() {
            if p == self.keys.len() {
                self.hungry = true;
                return Vec::new();
            }
            if self.keys[p] != k {
                return Vec::new();
            }
            p += 1;
        }
        vec![(p, trace)]
    }

    fn ruleref(&mut self, e: &Elem, pos: usize, trace: Vec<Ev>) -> Ends {
        let target = e.attr("uri").unwrap_or("").trim_start_matches('#');
        match self.g.rules.get(target).cloned() {
            Some(r) => self.rule(&r, target, pos, trace),
            None => Vec::new(),
        }
    }

    /// An item, repeated per its `repeat` attribute (`n`, `m-n`, `m-`).
    fn item(&mut self, e: &Elem, pos: usize, trace: Vec<Ev>) -> Ends {
        let (min, max) = repeat_bounds(e.attr("repeat"));
        // More repetitions than keys cannot consume anything new.
        let max = max.min(self.keys.len() - pos.min(self.keys.len()) + 1);
        let mut out = Vec::new();
        let mut cur = vec![(pos, trace)];
        for i in 0..=max {
            if i >= min {
                for (p, t) in &cur {
                    push_end(&mut out, *p, t.clone());
                }
            }
            if i == max {
                break;
            }
            let mut next = Vec::new();
            for (p, t) in cur {
                for (q, t2) in self.seq(&e.kids, p, t) {
                    // an empty repetition would loop forever
                    if q > p {
                        push_end(&mut next, q, t2);
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            cur = next;
        }
        out
    }
}

fn repeat_bounds(r: Option<&str>) -> (usize, usize) {
    let Some(r) = r else { return (1, 1) };
    let r = r.trim();
    match r.split_once('-') {
        Some((a, b)) => {
            let min = a.trim().parse().unwrap_or(0);
            let max = b.trim().parse().unwrap_or(usize::MAX);
            (min, max)
        }
        None => {
            let n = r.parse().unwrap_or(1);
            (n, n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dom::parse;

    #[test]
    fn digits_lengths() {
        let g = Grammar::builtin("digits?maxlength=3").unwrap();
        assert!(matches!(g.check("12"), Match::Complete { more: true, .. }));
        assert!(matches!(
            g.check("123"),
            Match::Complete { more: false, .. }
        ));
        assert_eq!(g.check("1234"), Match::Dead);
        let g = Grammar::builtin("builtin:dtmf/digits?length=2").unwrap();
        assert_eq!(g.check("1"), Match::Prefix);
    }

    #[test]
    fn number_date_phone() {
        let n = Grammar::builtin("number").unwrap();
        assert_eq!(n.check("12*5"), complete(serde_json::json!(12.5), true));
        assert_eq!(n.check("12*"), Match::Prefix);
        assert_eq!(n.check("1**"), Match::Dead);
        let d = Grammar::builtin("date").unwrap();
        assert_eq!(d.check("2026120"), Match::Prefix);
        assert!(matches!(
            d.check("20261203"),
            Match::Complete { more: false, .. }
        ));
        assert_eq!(d.check("20261303"), Match::Dead);
        let t = Grammar::builtin("time").unwrap();
        assert_eq!(
            t.check("0930"),
            complete(Json::String("0930?".into()), false)
        );
        assert_eq!(
            t.check("1745"),
            complete(Json::String("1745h".into()), false)
        );
        assert_eq!(t.check("2460"), Match::Dead);
        let c = Grammar::builtin("currency").unwrap();
        assert_eq!(
            c.check("12*5"),
            complete(Json::String("12.50".into()), true)
        );
        assert_eq!(c.check("12*505"), Match::Dead);
        let p = Grammar::builtin("phone").unwrap();
        assert_eq!(
            p.check("555*12"),
            complete(Json::String("555x12".into()), true)
        );
    }

    #[test]
    fn srgs_repeat_and_ruleref() {
        let x = parse(
            "<grammar mode='dtmf' root='r'><rule id='d'><one-of><item>1</item><item>2</item></one-of></rule>\
             <rule id='r'><item repeat='2-3'><ruleref uri='#d'/></item><item>#</item></rule></grammar>",
        )
        .unwrap();
        let g = Grammar::srgs(&x).unwrap().unwrap();
        assert_eq!(g.check("1"), Match::Prefix);
        assert_eq!(g.check("12"), Match::Prefix);
        assert!(matches!(g.check("12#"), Match::Complete { .. }));
        assert_eq!(g.check("3"), Match::Dead);
    }

    #[test]
    fn tags_build_a_program() {
        let x = parse(
            "<grammar mode='dtmf' root='r'><rule id='d'><one-of><item>1<tag>out = 'one';</tag></item>\
             <item>2</item></one-of></rule><rule id='r'><ruleref uri='#d'/><ruleref uri='#d'/>\
             <tag>out.a = rules.d; out.b = rules.latest();</tag></rule></grammar>",
        )
        .unwrap();
        let g = Grammar::srgs(&x).unwrap().unwrap();
        assert!(g.semantics("12").unwrap().contains("out = 'one'"));
        let plain = Grammar::builtin("digits").unwrap();
        assert_eq!(plain.semantics("12"), None);
    }

    #[test]
    fn branching_recursive_rules_end() {
        let x = parse(
            "<grammar mode='dtmf' root='r'><rule id='r'><one-of><item><ruleref uri='#r'/></item>\
             <item><ruleref uri='#r'/></item><item>1</item></one-of></rule></grammar>",
        )
        .unwrap();
        let g = Grammar::srgs(&x).unwrap().unwrap();
        assert!(matches!(g.check("1"), Match::Complete { .. }));
    }
}
