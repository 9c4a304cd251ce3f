//! Skill expressions: which agents may take a call.
//!
//! ```text
//! expr    := and ('|' and)*
//! and     := unary ('&' unary)*
//! unary   := '!' unary | '(' expr ')' | skill [op level]
//! op      := '>' | '>=' | '<' | '<=' | '=' | '!='
//! skill   := letters, digits, '_', '-'
//! level   := digits (0..=100000)
//! ```
//!
//! A bare skill means `skill >= 1`. A comparison on a skill the agent lacks is false (whatever
//! the operator), so `!spanish` matches agents without Spanish. The empty expression matches
//! every agent. Errors name the byte position (from 0) where the parser gave up.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Cmp {
    fn holds(self, have: u32, want: u32) -> bool {
        match self {
            Cmp::Gt => have > want,
            Cmp::Ge => have >= want,
            Cmp::Lt => have < want,
            Cmp::Le => have <= want,
            Cmp::Eq => have == want,
            Cmp::Ne => have != want,
        }
    }
}

/// A parsed skill expression.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expr {
    /// Matches everyone (the empty expression).
    Any,
    Skill {
        name: String,
        cmp: Cmp,
        level: u32,
    },
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

/// Why an expression does not parse, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExprError {
    /// Byte offset in the expression.
    pub position: usize,
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at position {}: {}", self.position, self.message)
    }
}

impl std::error::Error for ExprError {}

/// Deeper nesting than this is refused (the parser recurses).
const MAX_DEPTH: usize = 64;
/// Longer expressions are refused.
const MAX_LEN: usize = 4096;

impl Expr {
    pub fn parse(text: &str) -> Result<Expr, ExprError> {
        if text.len() > MAX_LEN {
            return Err(ExprError {
                position: MAX_LEN,
                message: format!("longer than {MAX_LEN} bytes"),
            });
        }
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
            depth: 0,
        };
        p.skip_ws();
        if p.i == p.s.len() {
            return Ok(Expr::Any);
        }
        let e = p.or()?;
        p.skip_ws();
        if p.i < p.s.len() {
            return Err(p.error(format!("unexpected {:?}", p.s[p.i] as char)));
        }
        Ok(e)
    }

    /// Whether an agent with these skills matches.
    pub fn matches(&self, skills: &BTreeMap<String, u32>) -> bool {
        match self {
            Expr::Any => true,
            Expr::Skill { name, cmp, level } => skills
                .get(name)
                .is_some_and(|have| cmp.holds(*have, *level)),
            Expr::Not(e) => !e.matches(skills),
            Expr::And(es) => es.iter().all(|e| e.matches(skills)),
            Expr::Or(es) => es.iter().any(|e| e.matches(skills)),
        }
    }
}

/// An expression with its skill names resolved to indexes in the tenant's skill table, and
/// agents' skills as levels by index: matching compares numbers, not strings (the hot path of
/// selection).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compiled {
    Any,
    /// `None`: a skill the tenant does not have (no agent has it).
    Skill {
        index: Option<usize>,
        cmp: Cmp,
        level: u32,
    },
    Not(Box<Compiled>),
    And(Vec<Compiled>),
    Or(Vec<Compiled>),
}

impl Expr {
    /// Resolves skill names with `index`.
    pub fn compile(&self, index: &dyn Fn(&str) -> Option<usize>) -> Compiled {
        match self {
            Expr::Any => Compiled::Any,
            Expr::Skill { name, cmp, level } => Compiled::Skill {
                index: index(name),
                cmp: *cmp,
                level: *level,
            },
            Expr::Not(e) => Compiled::Not(Box::new(e.compile(index))),
            Expr::And(es) => Compiled::And(es.iter().map(|e| e.compile(index)).collect()),
            Expr::Or(es) => Compiled::Or(es.iter().map(|e| e.compile(index)).collect()),
        }
    }
}

impl Compiled {
    /// Whether an agent with these levels (by skill index; `None`: lacks the skill) matches;
    /// the same answers as [`Expr::matches`].
    pub fn matches(&self, levels: &[Option<u32>]) -> bool {
        match self {
            Compiled::Any => true,
            Compiled::Skill { index, cmp, level } => index
                .and_then(|i| levels.get(i).copied().flatten())
                .is_some_and(|have| cmp.holds(have, *level)),
            Compiled::Not(e) => !e.matches(levels),
            Compiled::And(es) => es.iter().all(|e| e.matches(levels)),
            Compiled::Or(es) => es.iter().any(|e| e.matches(levels)),
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    fn error(&self, message: impl Into<String>) -> ExprError {
        ExprError {
            position: self.i,
            message: message.into(),
        }
    }

    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    /// Consumes `c` (after blanks) if it is next.
    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        let mut parts = vec![self.and()?];
        while self.eat(b'|') {
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::Or(parts)
        })
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut parts = vec![self.unary()?];
        while self.eat(b'&') {
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::And(parts)
        })
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(format!("nested deeper than {MAX_DEPTH}")));
        }
        let e = self.unary_inner();
        self.depth -= 1;
        e
    }

    fn unary_inner(&mut self) -> Result<Expr, ExprError> {
        self.skip_ws();
        match self.s.get(self.i) {
            None => Err(self.error("expected a skill, '!' or '('")),
            Some(b'!') => {
                self.i += 1;
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            Some(b'(') => {
                self.i += 1;
                let e = self.or()?;
                if !self.eat(b')') {
                    return Err(self.error("expected ')'"));
                }
                Ok(e)
            }
            Some(_) => self.skill(),
        }
    }

    fn skill(&mut self) -> Result<Expr, ExprError> {
        let start = self.i;
        while self
            .s
            .get(self.i)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
        {
            self.i += 1;
        }
        if self.i == start {
            return Err(self.error(format!(
                "expected a skill name, found {:?}",
                self.s[self.i] as char
            )));
        }
        // Only ASCII was consumed, so the slice is valid UTF-8.
        let name = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        let Some(cmp) = self.cmp() else {
            return Ok(Expr::Skill {
                name,
                cmp: Cmp::Ge,
                level: 1,
            });
        };
        self.skip_ws();
        let digits = self.i;
        while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        if self.i == digits {
            return Err(self.error("expected a level (a number)"));
        }
        let text = String::from_utf8_lossy(&self.s[digits..self.i]);
        let level = text
            .parse::<u32>()
            .ok()
            .filter(|l| *l <= 100_000)
            .ok_or_else(|| ExprError {
                position: digits,
                message: format!("level {text} is too large"),
            })?;
        Ok(Expr::Skill { name, cmp, level })
    }

    fn cmp(&mut self) -> Option<Cmp> {
        self.skip_ws();
        let rest = &self.s[self.i..];
        let (cmp, len) = if rest.starts_with(b">=") {
            (Cmp::Ge, 2)
        } else if rest.starts_with(b"<=") {
            (Cmp::Le, 2)
        } else if rest.starts_with(b"!=") {
            (Cmp::Ne, 2)
        } else if rest.starts_with(b">") {
            (Cmp::Gt, 1)
        } else if rest.starts_with(b"<") {
            (Cmp::Lt, 1)
        } else if rest.starts_with(b"=") {
            (Cmp::Eq, 1)
        } else {
            return None;
        };
        self.i += len;
        Some(cmp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skills(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn m(expr: &str, pairs: &[(&str, u32)]) -> bool {
        Expr::parse(expr).expect(expr).matches(&skills(pairs))
    }

    #[test]
    fn comparisons_and_bare_skills() {
        let a = [("sales", 5), ("english", 10), ("zero", 0)];
        assert!(m("sales >= 5 & english", &a));
        assert!(!m("sales > 5", &a));
        assert!(m("sales<6", &a));
        assert!(m("sales <= 5", &a));
        assert!(m("sales = 5", &a));
        assert!(!m("sales != 5", &a));
        assert!(!m("zero", &a), "a bare skill needs level 1");
        assert!(m("zero = 0", &a));
        assert!(!m("spanish < 5", &a), "missing skills compare false");
        assert!(m("!spanish", &a));
        assert!(m("", &a));
        assert!(m("   ", &[]));
    }

    #[test]
    fn compiled_matches_like_the_expression() {
        let table = ["sales", "english", "spanish", "zero"];
        let index = |n: &str| table.iter().position(|t| *t == n);
        let agents = [
            vec![("sales", 5), ("english", 10), ("zero", 0)],
            vec![("spanish", 3)],
            vec![],
        ];
        for expr in [
            "sales >= 5 & english",
            "!spanish | sales < 2",
            "zero = 0",
            "(sales > 4 | spanish) & !english",
            "unknown < 3",
            "!unknown",
            "",
        ] {
            let e = Expr::parse(expr).unwrap();
            let c = e.compile(&index);
            for a in &agents {
                let levels: Vec<Option<u32>> = table
                    .iter()
                    .map(|t| a.iter().find(|(n, _)| n == t).map(|(_, l)| *l))
                    .collect();
                assert_eq!(c.matches(&levels), e.matches(&skills(a)), "{expr} {a:?}");
            }
        }
    }

    #[test]
    fn precedence_and_parentheses() {
        let a = [("sales", 5)];
        // & binds tighter than |.
        assert!(m("support | sales & !english", &a));
        assert!(!m("(support | sales) & english", &a));
        assert!(m("!(support | english)", &a));
        assert!(m("!!sales", &a));
        assert_eq!(
            Expr::parse("a | b & c").unwrap(),
            Expr::Or(vec![
                Expr::Skill {
                    name: "a".into(),
                    cmp: Cmp::Ge,
                    level: 1
                },
                Expr::And(vec![
                    Expr::Skill {
                        name: "b".into(),
                        cmp: Cmp::Ge,
                        level: 1
                    },
                    Expr::Skill {
                        name: "c".into(),
                        cmp: Cmp::Ge,
                        level: 1
                    },
                ]),
            ])
        );
    }

    #[test]
    fn errors_name_the_position() {
        let cases = [
            ("sales >=", 8, "expected a level"),
            ("sales & ", 8, "expected a skill"),
            ("(sales", 6, "expected ')'"),
            ("sales)", 5, "unexpected ')'"),
            ("sales >= x", 9, "expected a level"),
            ("& sales", 0, "expected a skill name"),
            ("sales >= 99999999999", 9, "too large"),
            ("sales english", 6, "unexpected 'e'"),
            ("é", 0, "expected a skill name"),
        ];
        for (text, position, message) in cases {
            let e = Expr::parse(text).expect_err(text);
            assert_eq!(e.position, position, "{text}: {e}");
            assert!(e.message.contains(message), "{text}: {e}");
            assert!(e
                .to_string()
                .starts_with(&format!("at position {position}")));
        }
        let deep = "(".repeat(100) + "a" + &")".repeat(100);
        assert!(Expr::parse(&deep).unwrap_err().message.contains("nested"));
        assert!(Expr::parse(&"a|".repeat(3000)).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let alphabet = b"ab1 ()!&|<>=-_\xc3\xa9";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let len = (seed % 12) as usize;
            let mut text = Vec::new();
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let text = String::from_utf8_lossy(&text);
            if let Ok(e) = Expr::parse(&text) {
                e.matches(&skills(&[("a", 1)]));
            }
        }
    }
}
