//! SRGS ABNF form (SRGS 1.0 §4), turned into the same element tree as the XML form so that one
//! matcher serves both: `$r = a | b c;` becomes `<rule id="r"><one-of><item>a</item><item>b
//! c</item></one-of></rule>`. Covered: the header and declarations (`mode`, `root`,
//! `tag-format`; others skipped), public/private rules, alternatives (weights skipped),
//! sequences, tokens (bare or quoted), `$rule` references, `$NULL`, `$VOID`, `$GARBAGE`,
//! groups, `[optional]`, repeats `<n>`, `<m-n>`, `<m->`, tags `{...}` / `{!{...}!}` and
//! language attachments (skipped). `$<uri>` references to other grammars parse but match
//! nothing.

use crate::dom::{Elem, Node};
use std::rc::Rc;

/// Parses an ABNF grammar into a `<grammar>` element.
pub fn parse(text: &str) -> Result<Rc<Elem>, String> {
    let mut p = Parser {
        c: text.chars().collect(),
        i: 0,
    };
    p.skip();
    if !p.eat_word("#ABNF") {
        return Err("not an ABNF grammar (no #ABNF header)".into());
    }
    p.until(';')?;
    let mut attrs = Vec::new();
    let mut kids = Vec::new();
    loop {
        p.skip();
        if p.done() {
            break;
        }
        if p.peek() == Some('$') || p.at_word("public") || p.at_word("private") {
            kids.push(Node::Elem(p.rule()?));
        } else {
            p.declaration(&mut attrs)?;
        }
    }
    Ok(Rc::new(Elem {
        name: "grammar".into(),
        attrs,
        kids,
    }))
}

struct Parser {
    c: Vec<char>,
    i: usize,
}

/// Nesting of groups past which a grammar is refused (the parser recurses).
const MAX_NESTING: usize = 50;

fn elem(name: &str, attrs: Vec<(String, String)>, kids: Vec<Node>) -> Node {
    Node::Elem(Rc::new(Elem {
        name: name.into(),
        attrs,
        kids,
    }))
}

impl Parser {
    fn done(&self) -> bool {
        self.i >= self.c.len()
    }

    fn peek(&self) -> Option<char> {
        self.c.get(self.i).copied()
    }

    /// Skips white space and comments.
    fn skip(&mut self) {
        loop {
            while self.peek().is_some_and(char::is_whitespace) {
                self.i += 1;
            }
            if self.starts("//") {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.i += 1;
                }
            } else if self.starts("/*") {
                self.i += 2;
                while !self.done() && !self.starts("*/") {
                    self.i += 1;
                }
                self.i = (self.i + 2).min(self.c.len());
            } else {
                return;
            }
        }
    }

    fn starts(&self, s: &str) -> bool {
        s.chars()
            .enumerate()
            .all(|(k, ch)| self.c.get(self.i + k) == Some(&ch))
    }

    fn at_word(&self, w: &str) -> bool {
        self.starts(w)
            && !self
                .c
                .get(self.i + w.chars().count())
                .is_some_and(|c| c.is_alphanumeric() || *c == '_')
    }

    fn eat_word(&mut self, w: &str) -> bool {
        if self.at_word(w) {
            self.i += w.chars().count();
            true
        } else {
            false
        }
    }

    /// The text up to `end` (consumed, not returned).
    fn until(&mut self, end: char) -> Result<String, String> {
        let start = self.i;
        while self.peek().is_some_and(|c| c != end) {
            self.i += 1;
        }
        if self.done() {
            return Err(format!("missing '{end}'"));
        }
        let s: String = self.c[start..self.i].iter().collect();
        self.i += 1;
        Ok(s)
    }

    fn name(&mut self) -> String {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '.' || c == ':')
        {
            self.i += 1;
        }
        self.c[start..self.i].iter().collect()
    }

    /// The text up to an unquoted `;` (consumed): declarations such as `meta "a" is "b;c";`.
    fn until_semicolon(&mut self) -> Result<String, String> {
        let start = self.i;
        let mut quote: Option<char> = None;
        while let Some(c) = self.peek() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' => quote = Some(c),
                None if c == ';' => break,
                None => {}
            }
            self.i += 1;
        }
        if self.done() {
            return Err("missing ';'".into());
        }
        let s: String = self.c[start..self.i].iter().collect();
        self.i += 1;
        Ok(s)
    }

    /// `mode dtmf;`, `root $r;`, `tag-format <...>;`; other declarations are skipped.
    fn declaration(&mut self, attrs: &mut Vec<(String, String)>) -> Result<(), String> {
        let key = self.name();
        let value = self.until_semicolon()?;
        let value = value.trim().trim_start_matches('$');
        let value = value.trim_start_matches('<').trim_end_matches('>');
        if matches!(key.as_str(), "mode" | "root" | "tag-format") {
            attrs.push((key, value.trim().to_string()));
        } else if key.is_empty() {
            return Err(format!("unexpected '{}'", self.c[self.i - 1]));
        }
        Ok(())
    }

    /// `[public|private] $name = expansion ;`
    fn rule(&mut self) -> Result<Rc<Elem>, String> {
        let _ = self.eat_word("public") || self.eat_word("private");
        self.skip();
        if self.peek() != Some('$') {
            return Err("a rule starts with $name".into());
        }
        self.i += 1;
        let id = self.name();
        self.skip();
        if self.peek() != Some('=') {
            return Err(format!("rule ${id}: '=' expected"));
        }
        self.i += 1;
        let body = self.alternatives(0)?;
        self.skip();
        if self.peek() != Some(';') {
            return Err(format!("rule ${id}: ';' expected"));
        }
        self.i += 1;
        Ok(Rc::new(Elem {
            name: "rule".into(),
            attrs: vec![("id".into(), id)],
            kids: vec![body],
        }))
    }

    /// `seq | seq | ...` as a one-of (or the single sequence).
    fn alternatives(&mut self, depth: usize) -> Result<Node, String> {
        if depth > MAX_NESTING {
            return Err("groups nested too deep".into());
        }
        let mut alts = vec![self.sequence(depth)?];
        loop {
            self.skip();
            if self.peek() != Some('|') {
                break;
            }
            self.i += 1;
            alts.push(self.sequence(depth)?);
        }
        if alts.len() == 1 {
            return Ok(alts.remove(0));
        }
        Ok(elem("one-of", Vec::new(), alts))
    }

    /// Items up to `|`, `;`, `)` or `]`, as one `<item>`.
    fn sequence(&mut self, depth: usize) -> Result<Node, String> {
        let mut kids = Vec::new();
        loop {
            self.skip();
            // a weight `/w/` before an alternative
            if self.peek() == Some('/') {
                self.i += 1;
                self.until('/')?;
                continue;
            }
            match self.peek() {
                None | Some('|') | Some(';') | Some(')') | Some(']') => break,
                _ => {
                    let unit = self.unit(depth)?;
                    kids.push(self.repeat(unit)?);
                }
            }
        }
        Ok(elem("item", Vec::new(), kids))
    }

    fn unit(&mut self, depth: usize) -> Result<Node, String> {
        match self.peek() {
            Some('(') => self.group(')', depth, None),
            Some('[') => self.group(']', depth, Some("0-1")),
            Some('{') => self.tag(),
            Some('$') => self.reference(),
            Some('"') => {
                self.i += 1;
                Ok(Node::Text(self.until('"')?))
            }
            Some(_) => {
                let start = self.i;
                while self
                    .peek()
                    .is_some_and(|c| !c.is_whitespace() && !"|;()[]{}<>\"$/!".contains(c))
                {
                    self.i += 1;
                }
                if self.i == start {
                    return Err(format!("unexpected '{}'", self.c[self.i]));
                }
                Ok(Node::Text(self.c[start..self.i].iter().collect()))
            }
            None => Err("unexpected end".into()),
        }
    }

    /// A language attachment (`!en-US`) says nothing about DTMF keys.
    fn skip_language(&mut self) {
        if self.peek() == Some('!') && self.c.get(self.i + 1).is_some_and(|c| c.is_alphabetic()) {
            self.i += 1;
            self.name();
        }
    }

    fn group(&mut self, close: char, depth: usize, repeat: Option<&str>) -> Result<Node, String> {
        self.i += 1;
        let inner = self.alternatives(depth + 1)?;
        self.skip();
        if self.peek() != Some(close) {
            return Err(format!("'{close}' expected"));
        }
        self.i += 1;
        let attrs = repeat
            .map(|r| vec![("repeat".to_string(), r.to_string())])
            .unwrap_or_default();
        Ok(elem("item", attrs, vec![inner]))
    }

    /// `{ script }` or `{!{ script }!}`.
    fn tag(&mut self) -> Result<Node, String> {
        let body = if self.starts("{!{") {
            self.i += 3;
            let start = self.i;
            while !self.done() && !self.starts("}!}") {
                self.i += 1;
            }
            let s: String = self.c[start..self.i].iter().collect();
            self.i = (self.i + 3).min(self.c.len());
            s
        } else {
            self.i += 1;
            self.until('}')?
        };
        Ok(elem("tag", Vec::new(), vec![Node::Text(body)]))
    }

    /// `$name`, `$<uri>`, `$NULL` (matches nothing), `$VOID` (never matches), `$GARBAGE`.
    fn reference(&mut self) -> Result<Node, String> {
        self.i += 1;
        if self.peek() == Some('<') {
            // A reference to another grammar parses, but only local rules are matched.
            self.i += 1;
            let uri = self.until('>')?;
            return Ok(elem("ruleref", vec![("uri".into(), uri)], Vec::new()));
        }
        let name = self.name();
        Ok(match name.as_str() {
            "NULL" | "GARBAGE" => elem("item", Vec::new(), Vec::new()),
            "VOID" => elem("one-of", Vec::new(), Vec::new()),
            _ => elem(
                "ruleref",
                vec![("uri".into(), format!("#{name}"))],
                Vec::new(),
            ),
        })
    }

    /// A `<m-n>` suffix wraps the unit in a repeated item; a `!lang` attachment is skipped.
    fn repeat(&mut self, unit: Node) -> Result<Node, String> {
        self.skip_language();
        self.skip();
        if self.peek() != Some('<') {
            return Ok(unit);
        }
        self.i += 1;
        let spec = self.until('>')?;
        // a repeat probability `/p/` is not used for DTMF
        let spec = spec.split('/').next().unwrap_or("").trim().to_string();
        Ok(elem("item", vec![("repeat".into(), spec)], vec![unit]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grammar::{Grammar, Match};

    #[test]
    fn abnf_matches_like_xml() {
        let g = parse(
            "#ABNF 1.0 UTF-8; mode dtmf; root $pin; // comment\n\
             public $pin = $d <2-3> [#] {out = 'ok'};\n\
             $d = 1 | 2 | /5/ 3 | \"4\";",
        )
        .unwrap();
        let g = Grammar::srgs(&g).unwrap().unwrap();
        assert_eq!(g.check("1"), Match::Prefix);
        assert!(matches!(g.check("12"), Match::Complete { more: true, .. }));
        assert!(matches!(
            g.check("124#"),
            Match::Complete { more: false, .. }
        ));
        assert_eq!(g.check("5"), Match::Dead);
        assert!(g.semantics("12").is_some());
    }

    /// The SRGS 1.0 conformance grammars in ABNF (speech grammars: only parsing is checked).
    #[test]
    fn srgs_conformance_abnf_grammars_parse() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/conformance/vxml-w3c/jvoicexml-irp/irp_srgs10"
        );
        let Ok(rd) = std::fs::read_dir(dir) else {
            println!("!!!!!!!! SKIPPING the SRGS ABNF grammars: {dir} is absent !!!!!!!!");
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "gram") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                if let Err(m) = parse(&text) {
                    panic!("{}: {m}", p.display());
                }
            }
        }
    }

    #[test]
    fn bad_abnf_is_an_error() {
        assert!(parse("#ABNF 1.0; mode dtmf; $r = 1").is_err());
        assert!(parse("nope").is_err());
        assert!(parse(&format!(
            "#ABNF 1.0; $r = {}1{};",
            "(".repeat(80),
            ")".repeat(80)
        ))
        .is_err());
    }
}
